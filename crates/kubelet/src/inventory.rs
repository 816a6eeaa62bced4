//! The node's slices as the plugins serve them: whole GPUs, MIG instances and MPS shares,
//! read from a [`GpuBackend`] after each change and handed to the plugins through a
//! `tokio::sync::watch` channel, so a new layout reaches the kubelet on the open streams.

use serde::{Deserialize, Serialize};
use tessera_gpu::{GpuBackend, GpuError};
use tessera_model::Catalog;

use crate::ledger::AllocPath;
use crate::partition::{self, GpuPartitions};

/// Everything the node offers, by GPU index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInventory {
    /// The GPUs, by index.
    pub gpus: Vec<InvGpu>,
    /// In `--mode both`: device ID → the kubelet path that holds it ([`crate::ledger`]); the
    /// other path does not offer it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub allocated: std::collections::BTreeMap<String, AllocPath>,
}

/// How a GPU is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Handed out whole (MIG off, no MPS shares).
    Whole,
    /// Split into MIG instances.
    Mig,
    /// Shared through MPS clients with memory and thread limits.
    Mps,
}

/// One physical GPU and its slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvGpu {
    /// NVML index.
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Catalog model key, when known.
    pub model: Option<String>,
    /// Device memory in MiB.
    pub memory_mib: u64,
    /// How it is shared now.
    pub sharing: Sharing,
    /// Whether it is healthy: no device XID seen (set by the node runner from XID events;
    /// [`NodeInventory::observe`] alone says `true`).
    pub healthy: bool,
    /// MIG instances (sharing `Mig`), by start.
    pub mig: Vec<MigSlice>,
    /// MPS shares (sharing `Mps`).
    pub mps: Vec<MpsShare>,
    /// With partitionable devices on: the GPU's counter set and every placement it can take
    /// now, which the DRA plugin publishes and creates on demand ([`crate::partition`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<GpuPartitions>,
}

/// One MIG instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigSlice {
    /// `MIG-…` UUID; instances without a compute instance (no UUID yet) are not listed.
    pub uuid: String,
    /// Profile, e.g. `1g.10gb`.
    pub profile: String,
    /// Placement start.
    pub start: u8,
    /// GPU-instance ID.
    pub gi_id: u32,
    /// Compute-instance ID of the MIG device the UUID names (its GI's first CI).
    #[serde(default)]
    pub ci_id: u32,
    /// Memory in MiB from the catalog, when known.
    pub memory_mib: Option<u64>,
    /// Compute slices from the catalog, when known.
    pub compute_slices: Option<u8>,
    /// Whether processes run on it.
    pub busy: bool,
}

/// One MPS client share of a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpsShare {
    /// Stable ID on its GPU, e.g. `0` (device IDs are built from it).
    pub id: String,
    /// Pinned device memory limit in MiB (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`).
    pub memory_mib: u64,
    /// Active thread percentage (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`), 1–100.
    pub thread_percent: u8,
    /// The MPS pipe directory clients use (`CUDA_MPS_PIPE_DIRECTORY`), when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipe_dir: Option<String>,
}

impl NodeInventory {
    /// Read the node from a backend: every GPU, its MIG instances (with their busy state),
    /// and the MPS shares given for GPUs that run MPS (`mps`: GPU index → shares; a GPU with
    /// MIG on ignores them).
    pub fn observe(
        backend: &mut dyn GpuBackend,
        catalog: &Catalog,
        mps: &std::collections::BTreeMap<u32, Vec<MpsShare>>,
    ) -> Result<NodeInventory, GpuError> {
        let mut gpus = Vec::new();
        for g in backend.gpus()? {
            let mig_on = g.mig.is_some_and(|m| m.current);
            let model = g.model.as_deref().and_then(|k| catalog.get(k));
            let mut slices = Vec::new();
            if mig_on {
                for i in backend.instances(g.index)? {
                    let Some(uuid) = i.uuid.clone() else { continue };
                    let prof = model.and_then(|m| m.profiles.iter().find(|p| p.name == i.profile));
                    let ci_id = i
                        .compute_instances
                        .iter()
                        .find(|c| c.uuid.as_deref() == Some(uuid.as_str()))
                        .or(i.compute_instances.first())
                        .map_or(0, |c| c.ci_id);
                    slices.push(MigSlice {
                        busy: i.is_busy(),
                        uuid,
                        memory_mib: prof.and_then(|p| p.memory_mib),
                        compute_slices: prof.map(|p| p.compute_slices),
                        profile: i.profile,
                        start: i.start,
                        gi_id: i.gi_id,
                        ci_id,
                    });
                }
                slices.sort_by_key(|s| s.start);
            }
            let shares = if mig_on {
                Vec::new()
            } else {
                mps.get(&g.index).cloned().unwrap_or_default()
            };
            let sharing = if mig_on {
                Sharing::Mig
            } else if shares.is_empty() {
                Sharing::Whole
            } else {
                Sharing::Mps
            };
            gpus.push(InvGpu {
                index: g.index,
                uuid: g.uuid,
                model: g.model,
                memory_mib: g.memory_mib,
                sharing,
                healthy: true,
                mig: slices,
                mps: shares,
                partitions: None,
            });
        }
        gpus.sort_by_key(|g| g.index);
        Ok(NodeInventory {
            gpus,
            allocated: Default::default(),
        })
    }

    /// Fill in [`InvGpu::partitions`] for every MIG GPU of a catalog model that is not in
    /// `skip` (GPUs a desired layout manages); clear it on the others.
    pub fn add_partitions(&mut self, catalog: &Catalog, skip: &std::collections::BTreeSet<u32>) {
        for g in &mut self.gpus {
            let model = g.model.as_deref().and_then(|k| catalog.get(k));
            g.partitions = match model {
                Some(m) if g.sharing == Sharing::Mig && !skip.contains(&g.index) => {
                    let existing: Vec<(String, u8)> =
                        g.mig.iter().map(|s| (s.profile.clone(), s.start)).collect();
                    Some(partition::partitions(g.index, m, &existing))
                }
                _ => None,
            };
        }
    }

    /// The MIG instance with this `MIG-…` UUID, with its GPU.
    pub fn mig_by_uuid(&self, uuid: &str) -> Option<(&InvGpu, &MigSlice)> {
        self.gpus
            .iter()
            .find_map(|g| g.mig.iter().find(|m| m.uuid == uuid).map(|m| (g, m)))
    }
}
