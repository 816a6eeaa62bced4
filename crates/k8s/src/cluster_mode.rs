//! Cluster mode of `tessera k8s node`: the kubelet crate's node runner reads its desired
//! layout from the node's `TesseraNode` spec ([`CrdDesired`], a
//! [`tessera_kubelet::node::DesiredSource`]) and reports to its status subresource
//! ([`CrdStatus`], a [`tessera_kubelet::node::StatusSink`]).
//!
//! The source registers the node (creates its `TesseraNode` with an empty spec when there is
//! none), answers the spec at once, then answers again each time `metadata.generation`
//! changes (polled every `poll`). The sink writes the runner's inventory as the observed layout
//! (an instance is busy when it has processes or a pod or prepared claim holds it),
//! `observedGeneration` (the generation the source last answered) and the `Converged`
//! condition from the per-GPU outcomes; with DRA it also publishes the node's ResourceSlices
//! (the kubelet crate's builder) and reads ResourceClaims from the apiserver ([`ApiClaims`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tessera_kubelet::dra::{resource_slices, ClaimReader};
use tessera_kubelet::node::{DesiredLayout, DesiredSource, GpuOutcome, NodeStatus, StatusSink};
use tessera_kubelet::{KubeletError, Sharing};

use crate::crd::{
    GpuStatus, MpsShare, NodeCondition, ObservedInstance, SliceMode, TesseraNode, TesseraNodeSpec,
    TesseraNodeStatus,
};

fn api_error(what: &str, e: kube::Error) -> KubeletError {
    KubeletError::Invalid(format!("apiserver: {what}: {e}"))
}

/// The spec as the runner's desired layout: MIG GPUs as `PROFILE@START` specs, MPS GPUs as
/// shares (`mps-<n>` ids, in spec order).
pub fn desired_of(spec: &TesseraNodeSpec) -> DesiredLayout {
    let mut d = DesiredLayout::default();
    for g in &spec.gpus {
        match g.mode {
            SliceMode::Mig => {
                d.gpus
                    .insert(g.index, g.instances.iter().map(|i| i.spec()).collect());
            }
            SliceMode::Mps => {
                d.mps.insert(
                    g.index,
                    g.mps
                        .iter()
                        .enumerate()
                        .map(|(n, s)| tessera_kubelet::MpsShare {
                            id: format!("mps-{n}"),
                            memory_mib: s.memory_mib,
                            thread_percent: u8::try_from(s.sm_percent.min(100)).unwrap_or(100),
                            pipe_dir: None,
                        })
                        .collect(),
                );
            }
            SliceMode::Timeslice => {}
        }
    }
    d
}

/// The runner's status as the `TesseraNode` status (without `observedGeneration`).
pub fn status_of(s: &NodeStatus) -> TesseraNodeStatus {
    let held: std::collections::BTreeSet<&str> = s.held.iter().map(|h| h.device.as_str()).collect();
    let gpus: Vec<GpuStatus> = s
        .inventory
        .gpus
        .iter()
        .map(|g| GpuStatus {
            index: g.index,
            model: g.model.clone().unwrap_or_default(),
            uuid: g.uuid.clone(),
            // MIG off: the only slices the controller can place there are MPS shares.
            mode: match g.sharing {
                Sharing::Mps | Sharing::Whole => SliceMode::Mps,
                Sharing::Mig => SliceMode::Mig,
            },
            instances: g
                .mig
                .iter()
                .map(|m| ObservedInstance {
                    profile: m.profile.clone(),
                    start: m.start,
                    uuid: (!m.uuid.is_empty()).then(|| m.uuid.clone()),
                    busy: m.busy || held.contains(m.uuid.as_str()),
                })
                .collect(),
            mps: g
                .mps
                .iter()
                .map(|m| MpsShare {
                    memory_mib: m.memory_mib,
                    sm_percent: u32::from(m.thread_percent),
                })
                .collect(),
        })
        .collect();
    let mut problems: Vec<String> = s
        .gpus
        .iter()
        .filter_map(|o| match o {
            GpuOutcome::Converged { .. } => None,
            GpuOutcome::Refused { gpu, reason } => Some(format!("GPU {gpu} refused: {reason}")),
            GpuOutcome::Failed { gpu, error } => Some(format!("GPU {gpu} failed: {error}")),
        })
        .collect();
    if let Some(e) = &s.desired_error {
        problems.push(format!(
            "the spec could not be read (the last good one is applied): {e}"
        ));
    }
    let refused = s
        .gpus
        .iter()
        .any(|o| matches!(o, GpuOutcome::Refused { .. }));
    TesseraNodeStatus {
        observed_generation: None,
        gpu_count: u32::try_from(gpus.len()).unwrap_or(u32::MAX),
        gpus,
        conditions: vec![NodeCondition {
            type_: "Converged".into(),
            status: if problems.is_empty() { "True" } else { "False" }.into(),
            reason: if problems.is_empty() {
                "Converged"
            } else if refused {
                "BusyInstanceInTheWay"
            } else {
                "ApplyFailed"
            }
            .into(),
            message: if problems.is_empty() {
                "every GPU matches the spec".into()
            } else {
                problems.join("; ")
            },
        }],
    }
}

/// Desired layouts from the node's `TesseraNode` spec.
pub struct CrdDesired {
    api: Api<TesseraNode>,
    node: String,
    poll: Duration,
    seen: Option<i64>,
    generation: Arc<AtomicI64>,
}

impl CrdDesired {
    /// The source of node `node`, checking for a new generation every `poll`.
    pub fn new(api: Api<TesseraNode>, node: &str, poll: Duration) -> Self {
        CrdDesired {
            api,
            node: node.to_string(),
            poll,
            seen: None,
            generation: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The status sink that reports the generations this source answered.
    pub fn sink(&self) -> CrdStatus {
        CrdStatus {
            api: self.api.clone(),
            node: self.node.clone(),
            generation: Arc::clone(&self.generation),
            slices: None,
        }
    }

    async fn get_or_register(&self) -> Result<TesseraNode, KubeletError> {
        if let Some(o) = self
            .api
            .get_opt(&self.node)
            .await
            .map_err(|e| api_error("get TesseraNode", e))?
        {
            return Ok(o);
        }
        let o = TesseraNode::new(&self.node, TesseraNodeSpec::default());
        match self.api.create(&PostParams::default(), &o).await {
            Ok(o) => Ok(o),
            Err(kube::Error::Api(s)) if s.code == 409 => self
                .api
                .get(&self.node)
                .await
                .map_err(|e| api_error("get TesseraNode", e)),
            Err(e) => Err(api_error("register TesseraNode", e)),
        }
    }
}

#[tessera_kubelet::async_trait]
impl DesiredSource for CrdDesired {
    async fn next(&mut self) -> Result<DesiredLayout, KubeletError> {
        loop {
            let o = self.get_or_register().await?;
            let g = o.metadata.generation.unwrap_or(0);
            if self.seen != Some(g) {
                self.seen = Some(g);
                self.generation.store(g, Ordering::SeqCst);
                return Ok(desired_of(&o.spec));
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

/// Status reports to the node's `TesseraNode` status subresource (and, for DRA, the node's
/// ResourceSlices to the apiserver).
pub struct CrdStatus {
    api: Api<TesseraNode>,
    node: String,
    generation: Arc<AtomicI64>,
    slices: Option<SlicePublisher>,
}

/// Publishes the node's ResourceSlices (DRA) after each report.
struct SlicePublisher {
    api: Api<ResourceSlice>,
    driver: String,
    pool_generation: i64,
}

impl CrdStatus {
    /// Also publish the node's ResourceSlices for DRA driver `driver` after each report:
    /// create or replace each slice of the new pool generation, delete the node's older ones.
    pub fn with_resource_slices(mut self, api: Api<ResourceSlice>, driver: &str) -> Self {
        self.slices = Some(SlicePublisher {
            api,
            driver: driver.to_string(),
            pool_generation: 0,
        });
        self
    }
}

impl SlicePublisher {
    async fn publish(&mut self, node: &str, status: &NodeStatus) -> Result<(), KubeletError> {
        self.pool_generation += 1;
        let want = resource_slices(&self.driver, node, &status.inventory, self.pool_generation);
        let mut names = std::collections::BTreeSet::new();
        for mut s in want {
            let name = s.metadata.name.clone().unwrap_or_default();
            names.insert(name.clone());
            match self
                .api
                .get_opt(&name)
                .await
                .map_err(|e| api_error("get ResourceSlice", e))?
            {
                Some(old) => {
                    s.metadata.resource_version = old.metadata.resource_version;
                    self.api
                        .replace(&name, &PostParams::default(), &s)
                        .await
                        .map_err(|e| api_error("replace ResourceSlice", e))?;
                }
                None => {
                    self.api
                        .create(&PostParams::default(), &s)
                        .await
                        .map_err(|e| api_error("create ResourceSlice", e))?;
                }
            }
        }
        let all = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("list ResourceSlices", e))?;
        for s in all.items {
            let name = s.metadata.name.clone().unwrap_or_default();
            let mine = s.spec.driver == self.driver && s.spec.node_name.as_deref() == Some(node);
            if mine && !names.contains(&name) {
                self.api
                    .delete(&name, &DeleteParams::default())
                    .await
                    .map_err(|e| api_error("delete ResourceSlice", e))?;
            }
        }
        Ok(())
    }
}

/// ResourceClaims read from the apiserver (for the DRA plugin's NodePrepareResources).
pub struct ApiClaims(pub kube::Client);

#[tessera_kubelet::async_trait]
impl ClaimReader for ApiClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<ResourceClaim, KubeletError> {
        Api::<ResourceClaim>::namespaced(self.0.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| api_error(&format!("get ResourceClaim {namespace}/{name}"), e))
    }
}

#[tessera_kubelet::async_trait]
impl StatusSink for CrdStatus {
    async fn report(&mut self, status: &NodeStatus) -> Result<(), KubeletError> {
        let mut s = status_of(status);
        let g = self.generation.load(Ordering::SeqCst);
        s.observed_generation = (g > 0).then_some(g);
        self.api
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": s})),
            )
            .await
            .map_err(|e| api_error("write TesseraNode status", e))?;
        if let Some(p) = &mut self.slices {
            p.publish(&self.node, status).await?;
        }
        Ok(())
    }
}
