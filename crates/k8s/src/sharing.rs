//! A node's sharing mode from its labels, so a nos cluster moves over without relabelling.
//!
//! nos marks each GPU node with `nos.nebuly.com/gpu-partitioning=mig|mps` ([`NOS_LABEL`]) and
//! its node agents run the node's GPUs that way; tessera's own label is
//! `tessera.dev/gpu-sharing=mig|mps` ([`SHARING_LABEL`]), which wins when both are set. The
//! controller plans a labelled node's GPUs in the label's mode ([`plan_mode`]); an unlabelled
//! node's GPUs in the mode their `TesseraNode` status reports.
//!
//! A label never makes the controller take a slice away: a GPU whose observed state belongs
//! to the other mode (MIG instances on a GPU labelled `mps`, MPS shares on one labelled `mig`)
//! is left out of the plan, with the reason, until the node is in the labelled mode.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use crate::crd::{GpuStatus, SliceMode};

/// nos's node label: `mig` or `mps`.
pub const NOS_LABEL: &str = "nos.nebuly.com/gpu-partitioning";
/// tessera's node label: `mig` or `mps` (wins over [`NOS_LABEL`]).
pub const SHARING_LABEL: &str = "tessera.dev/gpu-sharing";

/// A node's sharing mode as its labels say, or why a label was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelledMode {
    /// The node's GPUs are shared this way.
    Mode(SliceMode),
    /// A label with a value other than `mig` or `mps`; the status decides instead.
    Invalid {
        /// The label.
        label: &'static str,
        /// Its value.
        value: String,
    },
}

/// Why a labelled node's GPU is left out of the plan: its slices belong to the other mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeConflict {
    /// Labelled `mps`, but MIG is on with instances.
    #[error("node {node} GPU {gpu}: labelled mps, but MIG is on with {instances} instance(s); the GPU is not planned until its instances are gone and MIG is off (or label the node mig)")]
    MigOnMpsNode {
        /// The node.
        node: String,
        /// The GPU.
        gpu: u32,
        /// Its MIG instances.
        instances: usize,
    },
    /// Labelled `mig`, but the node runs the GPU without MIG.
    #[error("node {node} GPU {gpu}: labelled mig, but the node runs it as {runs}; the GPU is not planned until MIG is on (or label the node mps)")]
    NotMigOnMigNode {
        /// The node.
        node: String,
        /// The GPU.
        gpu: u32,
        /// How it runs: `MPS (MIG off)` or `time-slices`.
        runs: &'static str,
    },
}

/// The sharing mode each labelled node asks for, by node name.
pub fn labelled_modes(nodes: &[Node]) -> BTreeMap<String, LabelledMode> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let (Some(name), Some(labels)) = (n.metadata.name.as_ref(), n.metadata.labels.as_ref())
        else {
            continue;
        };
        for label in [SHARING_LABEL, NOS_LABEL] {
            let Some(value) = labels.get(label) else {
                continue;
            };
            let m = match value.to_ascii_lowercase().as_str() {
                "mig" => LabelledMode::Mode(SliceMode::Mig),
                "mps" => LabelledMode::Mode(SliceMode::Mps),
                _ => {
                    tracing::warn!(
                        "node {name}: label {label}=`{value}` is neither `mig` nor `mps`; ignored (the node's status decides)"
                    );
                    LabelledMode::Invalid {
                        label,
                        value: value.clone(),
                    }
                }
            };
            out.insert(name.clone(), m);
            break;
        }
    }
    out
}

/// The mode the controller plans GPU `g` of a node in: the label's (when valid and the GPU
/// can take it), else the status's. [`ModeConflict`] says why the GPU is left out of the
/// plan: its observed slices belong to the other mode.
///
/// A GPU the status reports as MIG with no instances takes the `mps` label: an empty GPU
/// shows nothing of its MIG state (older node agents report a MIG-off GPU that way).
pub fn plan_mode(
    node: &str,
    label: Option<&LabelledMode>,
    g: &GpuStatus,
) -> Result<SliceMode, ModeConflict> {
    let want = match label {
        Some(LabelledMode::Mode(m)) => *m,
        Some(LabelledMode::Invalid { .. }) | None => return Ok(g.mode),
    };
    match (want, g.mode) {
        (w, s) if w == s => Ok(w),
        (SliceMode::Mps, SliceMode::Mig) if g.instances.is_empty() => Ok(SliceMode::Mps),
        (SliceMode::Mps, _) => Err(ModeConflict::MigOnMpsNode {
            node: node.to_string(),
            gpu: g.index,
            instances: g.instances.len(),
        }),
        (SliceMode::Mig, _) => Err(ModeConflict::NotMigOnMigNode {
            node: node.to_string(),
            gpu: g.index,
            runs: match g.mode {
                SliceMode::Mps => "MPS (MIG off)",
                _ => "time-slices",
            },
        }),
        (SliceMode::Timeslice, _) => Ok(g.mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ObservedInstance;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn gpu(mode: SliceMode, instances: usize) -> GpuStatus {
        GpuStatus {
            index: 0,
            model: "h100-80gb".into(),
            uuid: "GPU-0".into(),
            mode,
            instances: (0..instances)
                .map(|i| ObservedInstance {
                    profile: "1g.10gb".into(),
                    start: i as u8,
                    uuid: Some(format!("MIG-{i}")),
                    busy: false,
                })
                .collect(),
            mps: Vec::new(),
        }
    }

    #[test]
    fn tessera_label_wins_over_nos_and_bad_values_are_reported() {
        let m = labelled_modes(&[
            node("a", json!({NOS_LABEL: "mps"})),
            node("b", json!({NOS_LABEL: "mps", SHARING_LABEL: "mig"})),
            node("c", json!({NOS_LABEL: "hami"})),
            node("d", json!({"kubernetes.io/hostname": "d"})),
        ]);
        assert_eq!(m["a"], LabelledMode::Mode(SliceMode::Mps));
        assert_eq!(m["b"], LabelledMode::Mode(SliceMode::Mig));
        assert!(matches!(&m["c"], LabelledMode::Invalid { value, .. } if value == "hami"));
        assert!(!m.contains_key("d"));
    }

    #[test]
    fn a_label_never_takes_the_slices_of_the_other_mode() {
        let mps = LabelledMode::Mode(SliceMode::Mps);
        let mig = LabelledMode::Mode(SliceMode::Mig);
        assert_eq!(
            plan_mode("n", None, &gpu(SliceMode::Mig, 2)),
            Ok(SliceMode::Mig)
        );
        assert_eq!(
            plan_mode("n", Some(&mps), &gpu(SliceMode::Mig, 0)),
            Ok(SliceMode::Mps)
        );
        let e = plan_mode("n", Some(&mps), &gpu(SliceMode::Mig, 2)).unwrap_err();
        assert!(e.to_string().contains("MIG is on with 2 instance"), "{e}");
        assert!(plan_mode("n", Some(&mig), &gpu(SliceMode::Mps, 0)).is_err());
        assert_eq!(
            plan_mode("n", Some(&mig), &gpu(SliceMode::Mig, 0)),
            Ok(SliceMode::Mig)
        );
    }
}
