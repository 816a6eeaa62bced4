//! Cluster mode of the node agent: the `TesseraNode` spec is the source of the desired layout
//! and its status subresource is where the observed layout goes.
//!
//! [`NodeAgent::round`] registers the node (creates its `TesseraNode` with an empty spec when
//! there is none), takes each MIG GPU listed in the spec to its layout with the agent's
//! [`Reconciler`] (journaled, crash-safe, never destroying a busy instance: a GPU whose layout
//! would remove one is refused and left as it was), then reports every GPU's instances (UUIDs,
//! busy or not), the generation acted on, and the `Converged` condition. MPS shares need no
//! carving: the agent reports the spec's shares for MPS GPUs, and the node's plugin hands their
//! limits to the pods.

use std::collections::BTreeMap;

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tessera_agent::{AgentError, ApplyResult, Journal, Reconciler, Sleeper};
use tessera_gpu::{GpuBackend, GpuError};
use tessera_model::Catalog;

use crate::crd::{
    GpuStatus, NodeCondition, ObservedInstance, SliceMode, TesseraNode, TesseraNodeSpec,
    TesseraNodeStatus,
};

/// Why a node round failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The apiserver refused or could not be reached.
    #[error("apiserver request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The agent stopped (a crash, a journal failure or a permanent backend error).
    #[error("node agent: {0}")]
    Agent(#[from] AgentError),
    /// The GPUs could not be observed.
    #[error("observing the GPUs failed: {0}")]
    Gpu(#[from] GpuError),
}

/// What a node round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRound {
    /// Ops applied (creates and destroys), over all GPUs.
    pub ops: usize,
    /// GPUs refused (a busy instance in the way), with the reason.
    pub refused: Vec<(u32, String)>,
    /// The status written.
    pub status: TesseraNodeStatus,
}

/// The node agent of one Kubernetes node, in cluster mode.
pub struct NodeAgent<B: GpuBackend> {
    name: String,
    api: Api<TesseraNode>,
    catalog: Catalog,
    backend: B,
    journal: Box<dyn Journal + Send>,
    sleeper: Box<dyn Sleeper + Send>,
    modes: BTreeMap<u32, SliceMode>,
}

impl<B: GpuBackend> NodeAgent<B> {
    /// The agent of node `name`; GPUs are MIG unless `modes` says otherwise.
    pub fn new(
        name: &str,
        api: Api<TesseraNode>,
        catalog: Catalog,
        backend: B,
        journal: Box<dyn Journal + Send>,
        sleeper: Box<dyn Sleeper + Send>,
    ) -> Self {
        NodeAgent {
            name: name.to_string(),
            api,
            catalog,
            backend,
            journal,
            sleeper,
            modes: BTreeMap::new(),
        }
    }

    /// Set a GPU's sharing mode (as the node's configuration says); a GPU without one runs
    /// in the mode its spec layout names (MIG when the spec does not list it).
    pub fn with_mode(mut self, gpu: u32, mode: SliceMode) -> Self {
        self.modes.insert(gpu, mode);
        self
    }

    /// Set a GPU's sharing mode in place.
    pub fn set_mode(&mut self, gpu: u32, mode: SliceMode) {
        self.modes.insert(gpu, mode);
    }

    /// The GPU backend, read-only.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The GPU backend (tests and the demo mark instances busy through it).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Take the GPUs towards the spec and report the status.
    pub async fn round(&mut self) -> Result<NodeRound, NodeError> {
        let obj = match self.api.get_opt(&self.name).await? {
            Some(o) => o,
            None => {
                let o = TesseraNode::new(&self.name, TesseraNodeSpec::default());
                match self.api.create(&PostParams::default(), &o).await {
                    Ok(o) => o,
                    Err(kube::Error::Api(s)) if s.code == 409 => self.api.get(&self.name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let generation = obj.metadata.generation;
        let (round, status) = self.apply(&obj.spec)?;
        let status = TesseraNodeStatus {
            observed_generation: generation,
            ..status
        };
        self.api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
        Ok(NodeRound { status, ..round })
    }

    /// The hardware half of a round (no I/O to the apiserver).
    fn apply(
        &mut self,
        spec: &TesseraNodeSpec,
    ) -> Result<(NodeRound, TesseraNodeStatus), NodeError> {
        let mut round = NodeRound::default();
        let infos = self.backend.gpus()?;
        {
            let mut rec = Reconciler::new(
                &mut self.backend,
                &mut *self.journal,
                &self.catalog,
                &mut *self.sleeper,
            );
            for layout in &spec.gpus {
                let mode = mode_of(&self.modes, spec, layout.index);
                if mode != SliceMode::Mig || layout.mode != SliceMode::Mig {
                    continue;
                }
                let specs: Vec<String> = layout.instances.iter().map(|i| i.spec()).collect();
                let r = rec.apply_specs(layout.index, &specs)?;
                round.ops += r.applied.len();
                if let ApplyResult::Refused { refusal } = r.result {
                    round.refused.push((layout.index, refusal.to_string()));
                }
            }
        }
        let mut gpus = Vec::new();
        let mut converged = round.refused.is_empty();
        for info in &infos {
            let mode = mode_of(&self.modes, spec, info.index);
            let model = info
                .model
                .as_deref()
                .and_then(|m| self.catalog.get(m))
                .map(|m| m.key.clone())
                .unwrap_or_else(|| info.name.clone());
            let mut g = GpuStatus {
                index: info.index,
                model,
                uuid: info.uuid.clone(),
                mode,
                instances: Vec::new(),
                mps: Vec::new(),
            };
            match mode {
                SliceMode::Mig => {
                    g.instances = self
                        .backend
                        .instances(info.index)?
                        .into_iter()
                        .map(|i| ObservedInstance {
                            busy: i.is_busy(),
                            profile: i.profile,
                            start: i.start,
                            uuid: i.uuid,
                        })
                        .collect();
                    if let Some(want) = spec.gpus.iter().find(|l| l.index == info.index) {
                        let mut have: Vec<(String, u8)> = g
                            .instances
                            .iter()
                            .map(|i| (i.profile.clone(), i.start))
                            .collect();
                        let mut w: Vec<(String, u8)> = want
                            .instances
                            .iter()
                            .map(|i| (i.profile.clone(), i.start))
                            .collect();
                        have.sort();
                        w.sort();
                        converged &= have == w;
                    }
                }
                SliceMode::Mps | SliceMode::Timeslice => {
                    g.mps = spec
                        .gpus
                        .iter()
                        .find(|l| l.index == info.index)
                        .map(|l| l.mps.clone())
                        .unwrap_or_default();
                }
            }
            gpus.push(g);
        }
        let message = if round.refused.is_empty() {
            if converged {
                "every GPU matches the spec".to_string()
            } else {
                "some GPUs are still being changed".to_string()
            }
        } else {
            round
                .refused
                .iter()
                .map(|(g, r)| format!("GPU {g}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let status = TesseraNodeStatus {
            observed_generation: None,
            gpu_count: u32::try_from(gpus.len()).unwrap_or(u32::MAX),
            gpus,
            conditions: vec![NodeCondition {
                type_: "Converged".into(),
                status: if converged { "True" } else { "False" }.into(),
                reason: if !round.refused.is_empty() {
                    "BusyInstanceInTheWay"
                } else if converged {
                    "Converged"
                } else {
                    "Applying"
                }
                .into(),
                message,
            }],
        };
        Ok((round, status))
    }
}

/// A GPU's mode: the node's configuration, else the spec's layout for it, else MIG.
fn mode_of(modes: &BTreeMap<u32, SliceMode>, spec: &TesseraNodeSpec, gpu: u32) -> SliceMode {
    modes
        .get(&gpu)
        .copied()
        .or_else(|| spec.gpus.iter().find(|l| l.index == gpu).map(|l| l.mode))
        .unwrap_or_default()
}
