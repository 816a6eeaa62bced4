//! Resource names, device IDs and what `Allocate` returns, in the names existing pod specs
//! use: NVIDIA's mixed MIG strategy (`nvidia.com/mig-1g.10gb`, `+` in a profile becomes `.`),
//! `nvidia.com/gpu` for whole GPUs, and nos's MPS names (`nvidia.com/gpu-10gb`: an MPS share
//! with that many GiB of pinned memory).

use std::collections::BTreeMap;

use crate::error::KubeletError;
use crate::inventory::{InvGpu, MpsShare, NodeInventory, Sharing};

/// The resource domain of the NVIDIA-compatible names.
pub const NVIDIA_DOMAIN: &str = "nvidia.com";
/// The resource name of a whole GPU.
pub const WHOLE_GPU: &str = "nvidia.com/gpu";
/// A device's health as the device-plugin API spells it.
pub const HEALTHY: &str = "Healthy";
/// An unhealthy device.
pub const UNHEALTHY: &str = "Unhealthy";

/// `nvidia.com/mig-<profile>` with `+` replaced by `.` (NVIDIA's mixed strategy).
pub fn mig_resource(profile: &str) -> String {
    format!("{NVIDIA_DOMAIN}/mig-{}", profile.replace('+', "."))
}

/// nos's MPS name: `nvidia.com/gpu-<GiB>gb`, the share's memory rounded down to whole GiB.
pub fn mps_resource(memory_mib: u64) -> String {
    format!("{NVIDIA_DOMAIN}/gpu-{}gb", memory_mib / 1024)
}

/// The plugin socket's file name for a resource: `nvidia-<name>.sock`, e.g.
/// `nvidia-mig-1g.10gb.sock`, `nvidia-gpu.sock`.
pub fn socket_name(resource: &str) -> String {
    let short = resource.rsplit('/').next().unwrap_or(resource);
    format!("nvidia-{short}.sock")
}

/// The device ID of an MPS share: `<GPU-uuid>::mps-<id>`.
pub fn mps_device_id(gpu_uuid: &str, share: &MpsShare) -> String {
    format!("{gpu_uuid}::mps-{}", share.id)
}

/// What a device ID stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slice {
    /// A whole GPU, by UUID.
    Whole {
        /// `GPU-…` UUID.
        uuid: String,
    },
    /// A MIG instance.
    Mig {
        /// `MIG-…` UUID.
        uuid: String,
        /// Its GPU's index.
        gpu: u32,
    },
    /// An MPS share.
    Mps {
        /// Its GPU's `GPU-…` UUID.
        gpu_uuid: String,
        /// The share.
        share: MpsShare,
    },
}

/// One device as a plugin lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpDevice {
    /// The ID sent in ListAndWatch and received in Allocate.
    pub id: String,
    /// Whether it is healthy.
    pub healthy: bool,
    /// What it is.
    pub slice: Slice,
}

/// Every resource the inventory offers, with its devices in a stable order.
pub fn resources(inv: &NodeInventory) -> BTreeMap<String, Vec<DpDevice>> {
    let mut out: BTreeMap<String, Vec<DpDevice>> = BTreeMap::new();
    for g in &inv.gpus {
        match g.sharing {
            Sharing::Whole => out
                .entry(WHOLE_GPU.to_string())
                .or_default()
                .push(DpDevice {
                    id: g.uuid.clone(),
                    healthy: g.healthy,
                    slice: Slice::Whole {
                        uuid: g.uuid.clone(),
                    },
                }),
            Sharing::Mig => {
                for m in &g.mig {
                    out.entry(mig_resource(&m.profile))
                        .or_default()
                        .push(DpDevice {
                            id: m.uuid.clone(),
                            healthy: g.healthy,
                            slice: Slice::Mig {
                                uuid: m.uuid.clone(),
                                gpu: g.index,
                            },
                        });
                }
            }
            Sharing::Mps => {
                for s in &g.mps {
                    out.entry(mps_resource(s.memory_mib))
                        .or_default()
                        .push(mps_device(g, s));
                }
            }
        }
    }
    out
}

fn mps_device(g: &InvGpu, s: &MpsShare) -> DpDevice {
    DpDevice {
        id: mps_device_id(&g.uuid, s),
        healthy: g.healthy,
        slice: Slice::Mps {
            gpu_uuid: g.uuid.clone(),
            share: s.clone(),
        },
    }
}

/// What one container gets for its devices: environment, CDI device names and mounts
/// (host path, container path, read-only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerEdits {
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Fully qualified CDI device names (`<kind>=<name>`).
    pub cdi_devices: Vec<String>,
    /// Host directories to mount: (host, container, read-only).
    pub mounts: Vec<(String, String, bool)>,
}

/// The edits for one container's devices. `cdi_kind` names the CDI kind whose specs name
/// devices by UUID (e.g. `nvidia.com/gpu` from `nvidia-ctk cdi generate
/// --device-name-strategy=uuid`). An MPS share must be the container's only device.
pub fn container_edits(
    devices: &[&DpDevice],
    cdi_kind: &str,
) -> Result<ContainerEdits, KubeletError> {
    let mut edits = ContainerEdits::default();
    let mps: Vec<&MpsShare> = devices
        .iter()
        .filter_map(|d| match &d.slice {
            Slice::Mps { share, .. } => Some(share),
            _ => None,
        })
        .collect();
    if !mps.is_empty() && devices.len() > 1 {
        return Err(KubeletError::Invalid(format!(
            "a container gets at most one MPS share, and this request has {} devices; ask for one larger share (nvidia.com/gpu-<GiB>gb) instead",
            devices.len()
        )));
    }
    let mut visible = Vec::new();
    for d in devices {
        let uuid = match &d.slice {
            Slice::Whole { uuid } | Slice::Mig { uuid, .. } => uuid,
            Slice::Mps { gpu_uuid, .. } => gpu_uuid,
        };
        visible.push(uuid.clone());
        edits.cdi_devices.push(format!("{cdi_kind}={uuid}"));
    }
    edits
        .env
        .insert("NVIDIA_VISIBLE_DEVICES".into(), visible.join(","));
    if let Some(share) = mps.first() {
        // The container sees one GPU, CUDA ordinal 0.
        edits.env.insert(
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(),
            format!("0={}M", share.memory_mib),
        );
        edits.env.insert(
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(),
            share.thread_percent.to_string(),
        );
        if let Some(dir) = &share.pipe_dir {
            edits
                .env
                .insert("CUDA_MPS_PIPE_DIRECTORY".into(), dir.clone());
            edits.mounts.push((dir.clone(), dir.clone(), false));
        }
    }
    Ok(edits)
}

/// The DRA device name of a MIG instance (a DNS label): `gpu-<index>-mig-<profile>-<start>`
/// with the profile's `+` as `-plus-` and `.` as `-`, e.g. `gpu-0-mig-1g-10gb-0`,
/// `gpu-0-mig-1g-24gb-plus-me-0` (distinct from `1g.24gb-me`'s `gpu-0-mig-1g-24gb-me-0`).
pub fn dra_mig_name(gpu: u32, profile: &str, start: u8) -> String {
    format!(
        "gpu-{gpu}-mig-{}-{start}",
        dns_part(&profile.replace('+', "-plus-"))
    )
}

/// The DRA device name of a whole GPU: `gpu-<index>`.
pub fn dra_gpu_name(gpu: u32) -> String {
    format!("gpu-{gpu}")
}

/// The DRA device name of an MPS share: `gpu-<index>-mps-<id>`.
pub fn dra_mps_name(gpu: u32, id: &str) -> String {
    format!("gpu-{gpu}-mps-{}", dns_part(id))
}

fn dns_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nvidia_and_nos() {
        assert_eq!(mig_resource("1g.10gb"), "nvidia.com/mig-1g.10gb");
        assert_eq!(mig_resource("1g.10gb+me"), "nvidia.com/mig-1g.10gb.me");
        assert_eq!(mps_resource(10 * 1024), "nvidia.com/gpu-10gb");
        assert_eq!(mps_resource(10 * 1024 + 500), "nvidia.com/gpu-10gb");
        assert_eq!(
            socket_name("nvidia.com/mig-1g.10gb"),
            "nvidia-mig-1g.10gb.sock"
        );
        assert_eq!(socket_name(WHOLE_GPU), "nvidia-gpu.sock");
        assert_eq!(
            dra_mig_name(1, "1g.10gb+me", 6),
            "gpu-1-mig-1g-10gb-plus-me-6"
        );
        assert_eq!(dra_mps_name(0, "2"), "gpu-0-mps-2");
    }

    #[test]
    fn mps_edits_carry_limits_and_refuse_two_shares() {
        let share = MpsShare {
            id: "0".into(),
            memory_mib: 10240,
            thread_percent: 25,
            pipe_dir: Some("/run/mps/0".into()),
        };
        let d = DpDevice {
            id: "GPU-a::mps-0".into(),
            healthy: true,
            slice: Slice::Mps {
                gpu_uuid: "GPU-a".into(),
                share,
            },
        };
        let e = container_edits(&[&d], "k8s.tessera.dev/gpu").unwrap();
        assert_eq!(e.env["NVIDIA_VISIBLE_DEVICES"], "GPU-a");
        assert_eq!(e.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=10240M");
        assert_eq!(e.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        assert_eq!(e.env["CUDA_MPS_PIPE_DIRECTORY"], "/run/mps/0");
        assert_eq!(e.cdi_devices, ["k8s.tessera.dev/gpu=GPU-a"]);
        let err = container_edits(&[&d, &d], "x/y").unwrap_err().to_string();
        assert!(err.contains("at most one MPS share"), "{err}");
    }
}
