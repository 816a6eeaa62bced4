//! The pod-spec convention: which pods wait for tessera, what slice each asks for, and the
//! marks the controller puts on them.
//!
//! - A pod that wants a tessera slice carries the **scheduling gate** [`GATE`]
//!   (`spec.schedulingGates: [{name: tessera.dev/slice}]`), added by the pod's author (or by a
//!   mutating admission policy; see `docs/kubernetes.md`). kube-scheduler ignores a gated pod.
//! - It asks for **one** slice through a resource limit of one container:
//!   `nvidia.com/mig-<profile>: 1` (NVIDIA's mixed-strategy names; `.me` stands for `+me`) or
//!   nos's `nvidia.com/gpu-<N>gb: 1` (an MPS client with `N` GiB; its SM share is the
//!   annotation [`SM_PERCENT_ANNOTATION`], default [`DEFAULT_MPS_SM_PERCENT`]).
//! - The controller **earmarks** a slice for the pod with the annotation [`SLICE_ANNOTATION`]
//!   (`NODE/GPU/PROFILE@START` or `NODE/GPU/mps:MIB:PERCENT`) and the node selector
//!   `kubernetes.io/hostname: NODE`, and removes the gate once the node reports the slice.
//!   Bad requests get the annotation [`ERROR_ANNOTATION`] and stay gated.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tessera_planner::{MpsRequest, RequestKind};

/// The scheduling gate of pods waiting for a tessera slice.
pub const GATE: &str = "tessera.dev/slice";
/// Annotation: the slice earmarked for the pod.
pub const SLICE_ANNOTATION: &str = "tessera.dev/slice";
/// Annotation: why the controller cannot serve the pod.
pub const ERROR_ANNOTATION: &str = "tessera.dev/error";
/// Annotation: SM percentage of an MPS request (`nvidia.com/gpu-<N>gb`).
pub const SM_PERCENT_ANNOTATION: &str = "tessera.dev/sm-percent";
/// SM percentage of an MPS request without [`SM_PERCENT_ANNOTATION`].
pub const DEFAULT_MPS_SM_PERCENT: u32 = 10;
/// The node label the controller pins earmarked pods to.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Why a gated pod's request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodRequestError {
    /// No `nvidia.com/mig-*` or `nvidia.com/gpu-<N>gb` limit.
    #[error("the pod carries the `{GATE}` scheduling gate but asks for no slice; add a limit `nvidia.com/mig-<profile>: 1` or `nvidia.com/gpu-<N>gb: 1`, or remove the gate")]
    NoSlice,
    /// More than one slice (several resources, or a count above 1).
    #[error("the pod asks for {0}; tessera gives one slice per pod: ask for exactly one `nvidia.com/mig-<profile>: 1` or `nvidia.com/gpu-<N>gb: 1`")]
    SeveralSlices(String),
    /// A bad SM-percent annotation.
    #[error("annotation {SM_PERCENT_ANNOTATION}=`{0}` is not a percentage from 1 to 100")]
    BadSmPercent(String),
}

/// The slice a pod asks for.
pub fn requested_slice(pod: &Pod) -> Result<RequestKind, PodRequestError> {
    let mut found: Vec<(RequestKind, String)> = Vec::new();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for c in containers {
        let Some(limits) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) else {
            continue;
        };
        for (name, q) in limits {
            let Some(kind) = slice_resource(name, pod)? else {
                continue;
            };
            found.push((kind, format!("{name}: {}", q.0)));
            if !is_one(q) {
                return Err(PodRequestError::SeveralSlices(format!("{name}: {}", q.0)));
            }
        }
    }
    match found.len() {
        0 => Err(PodRequestError::NoSlice),
        1 => Ok(found.remove(0).0),
        _ => Err(PodRequestError::SeveralSlices(
            found
                .into_iter()
                .map(|(_, s)| s)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

fn is_one(q: &Quantity) -> bool {
    q.0.trim() == "1"
}

/// `nvidia.com/mig-1g.10gb` → MIG `1g.10gb`; `nvidia.com/gpu-10gb` → MPS 10 GiB; others: none.
fn slice_resource(name: &str, pod: &Pod) -> Result<Option<RequestKind>, PodRequestError> {
    let Some(rest) = name.strip_prefix("nvidia.com/") else {
        return Ok(None);
    };
    if let Some(profile) = rest.strip_prefix("mig-") {
        let profile = match profile.strip_suffix(".me") {
            Some(p) => format!("{p}+me"),
            None => profile.to_string(),
        };
        return Ok(Some(RequestKind::Mig(profile)));
    }
    if let Some(gb) = rest
        .strip_prefix("gpu-")
        .and_then(|s| s.strip_suffix("gb"))
        .and_then(|s| s.parse::<u64>().ok())
    {
        let sm = match pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SM_PERCENT_ANNOTATION))
        {
            None => DEFAULT_MPS_SM_PERCENT,
            Some(s) => s
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| PodRequestError::BadSmPercent(s.clone()))?,
        };
        return Ok(Some(RequestKind::Mps(MpsRequest {
            memory_mib: gb * 1024,
            sm_percent: sm,
        })));
    }
    Ok(None)
}

/// Whether the pod still carries [`GATE`].
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.name == GATE))
}

/// Whether the pod has ended or is being deleted (its slice is no longer held).
pub fn is_finished(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
}

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// A slice earmarked for a pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Earmark {
    /// Node name.
    pub node: String,
    /// GPU index on the node.
    pub gpu: u32,
    /// The slice.
    pub slice: EarmarkedSlice,
}

/// The slice part of an [`Earmark`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EarmarkedSlice {
    /// A MIG instance.
    Mig {
        /// Profile name.
        profile: String,
        /// Placement start.
        start: u8,
    },
    /// An MPS client share.
    Mps {
        /// Memory limit in MiB.
        memory_mib: u64,
        /// SM percentage.
        sm_percent: u32,
    },
}

impl fmt::Display for Earmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.slice {
            EarmarkedSlice::Mig { profile, start } => {
                write!(f, "{}/{}/{profile}@{start}", self.node, self.gpu)
            }
            EarmarkedSlice::Mps {
                memory_mib,
                sm_percent,
            } => write!(
                f,
                "{}/{}/mps:{memory_mib}:{sm_percent}",
                self.node, self.gpu
            ),
        }
    }
}

impl Earmark {
    /// Parse the annotation's value; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Earmark> {
        let mut parts = s.splitn(3, '/');
        let node = parts.next()?.to_string();
        let gpu = parts.next()?.parse().ok()?;
        let slice = parts.next()?;
        let slice = if let Some(mps) = slice.strip_prefix("mps:") {
            let (m, p) = mps.split_once(':')?;
            EarmarkedSlice::Mps {
                memory_mib: m.parse().ok()?,
                sm_percent: p.parse().ok()?,
            }
        } else {
            let (profile, start) = slice.rsplit_once('@')?;
            EarmarkedSlice::Mig {
                profile: profile.to_string(),
                start: start.parse().ok()?,
            }
        };
        (!node.is_empty()).then_some(Earmark { node, gpu, slice })
    }

    /// The earmark on a pod, if any.
    pub fn of(pod: &Pod) -> Option<Earmark> {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SLICE_ANNOTATION))
            .and_then(|s| Earmark::parse(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(limits: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
            "spec": {"schedulingGates": [{"name": GATE}],
                     "containers": [{"name": "c", "resources": {"limits": limits}}]}
        }))
        .unwrap()
    }

    #[test]
    fn nvidia_and_nos_resource_names_become_requests() {
        let p = pod(
            json!({"nvidia.com/mig-1g.10gb": "1", "cpu": "2"}),
            json!({}),
        );
        assert!(is_gated(&p));
        assert_eq!(requested_slice(&p), Ok(RequestKind::Mig("1g.10gb".into())));
        let p = pod(json!({"nvidia.com/mig-1g.10gb.me": "1"}), json!({}));
        assert_eq!(
            requested_slice(&p),
            Ok(RequestKind::Mig("1g.10gb+me".into()))
        );
        let p = pod(
            json!({"nvidia.com/gpu-10gb": "1"}),
            json!({SM_PERCENT_ANNOTATION: "25"}),
        );
        assert_eq!(
            requested_slice(&p),
            Ok(RequestKind::Mps(MpsRequest {
                memory_mib: 10240,
                sm_percent: 25
            }))
        );
    }

    #[test]
    fn several_slices_or_none_are_refused_with_the_fix() {
        let p = pod(json!({"nvidia.com/mig-1g.10gb": "2"}), json!({}));
        assert!(matches!(
            requested_slice(&p),
            Err(PodRequestError::SeveralSlices(_))
        ));
        let p = pod(
            json!({"nvidia.com/mig-1g.10gb": "1", "nvidia.com/gpu-5gb": "1"}),
            json!({}),
        );
        assert!(matches!(
            requested_slice(&p),
            Err(PodRequestError::SeveralSlices(_))
        ));
        let p = pod(json!({"cpu": "1"}), json!({}));
        let e = requested_slice(&p).unwrap_err();
        assert!(e.to_string().contains("nvidia.com/mig-<profile>: 1"));
        let p = pod(
            json!({"nvidia.com/gpu-5gb": "1"}),
            json!({SM_PERCENT_ANNOTATION: "0"}),
        );
        assert!(matches!(
            requested_slice(&p),
            Err(PodRequestError::BadSmPercent(_))
        ));
    }

    #[test]
    fn earmarks_round_trip() {
        for s in ["node-a/3/1g.10gb@6", "n/0/mps:10240:25", "n/1/1g.10gb+me@0"] {
            assert_eq!(Earmark::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Earmark::parse("n/x/1g.10gb@0"), None);
        assert_eq!(Earmark::parse("garbage"), None);
    }
}
