//! The [`GpuBackend`] trait and the values it speaks in: GPUs, GPU instances (GIs), compute
//! instances (CIs), processes, MIG and compute modes, and XID events.
//!
//! Two implementations: [`crate::sim::SimBackend`] (in memory or in a shared state file) and
//! [`crate::nvml::NvmlBackend`] (the real driver). Both refuse the same things with the same
//! [`GpuError`] variant; the contract suite in `tests/contract.rs` checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::GpuError;
use crate::profiles::ProfileInfo;

/// MIG mode of a GPU: what is active now and what becomes active after the next reset
/// (they differ on Ampere between `set_mig_mode` and the reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigMode {
    /// MIG mode in force now.
    pub current: bool,
    /// MIG mode after the next GPU reset (equal to `current` when nothing is pending).
    pub pending: bool,
}

impl MigMode {
    /// Both current and pending set to `on`.
    pub fn steady(on: bool) -> Self {
        MigMode {
            current: on,
            pending: on,
        }
    }
}

impl fmt::Display for MigMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |b: bool| if b { "enabled" } else { "disabled" };
        if self.current == self.pending {
            f.write_str(word(self.current))
        } else {
            write!(
                f,
                "{} ({} after GPU reset)",
                word(self.current),
                word(self.pending)
            )
        }
    }
}

/// The compute mode of a GPU (`nvidia-smi -c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeMode {
    /// Many contexts from many processes (`DEFAULT`).
    #[default]
    Default,
    /// Removed by NVIDIA; reported only by old drivers (`EXCLUSIVE_THREAD`).
    ExclusiveThread,
    /// No contexts (`PROHIBITED`).
    Prohibited,
    /// One process at a time; what MPS wants (`EXCLUSIVE_PROCESS`).
    ExclusiveProcess,
}

impl fmt::Display for ComputeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputeMode::Default => "default",
            ComputeMode::ExclusiveThread => "exclusive_thread",
            ComputeMode::Prohibited => "prohibited",
            ComputeMode::ExclusiveProcess => "exclusive_process",
        })
    }
}

/// One physical GPU as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// NVML index (`nvidia-smi -i N`).
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Product name as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Catalog key of the matching model (by product name or PCI device ID), if any.
    pub model: Option<String>,
    /// Total device memory in MiB.
    pub memory_mib: u64,
    /// MIG mode; `None` when the GPU cannot do MIG.
    pub mig: Option<MigMode>,
    /// Compute mode, when the backend can read it. `None` on a MIG-enabled GPU, where the
    /// compute mode belongs to each MIG device ([`GpuBackend::instance_compute_mode`]).
    pub compute_mode: Option<ComputeMode>,
    /// What this caller could not read, with NVML's reason (e.g. `memory: no permission` for
    /// an unprivileged caller on a MIG-enabled GPU); the fields concerned hold 0 / `None`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// A compute instance inside a GPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeInstance {
    /// Compute-instance ID within its GI.
    pub ci_id: u32,
    /// NVML compute-instance profile ID.
    pub profile_id: u32,
    /// `MIG-…` UUID of the MIG device (GI + CI) that CUDA sees, when known.
    pub uuid: Option<String>,
}

/// A GPU instance with its placement, compute instances and processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInstance {
    /// The GPU's index.
    pub gpu: u32,
    /// GPU-instance ID (unique on its GPU while it exists; NVML reuses freed IDs).
    pub gi_id: u32,
    /// Profile name without the `MIG ` prefix, e.g. `3g.40gb`.
    pub profile: String,
    /// NVML GPU-instance profile ID (the `-lgip` ID).
    pub profile_id: u32,
    /// Placement start on the memory-slice grid.
    pub start: u8,
    /// Placement size in memory slices.
    pub size: u8,
    /// `MIG-…` UUID of the first compute instance's MIG device (what `CUDA_VISIBLE_DEVICES`
    /// takes); `None` while the GI has no compute instance.
    pub uuid: Option<String>,
    /// Compute instances, by ID.
    pub compute_instances: Vec<ComputeInstance>,
    /// PIDs of the compute processes on this instance, sorted.
    pub pids: Vec<u32>,
}

impl GpuInstance {
    /// Whether any process runs on the instance.
    pub fn is_busy(&self) -> bool {
        !self.pids.is_empty()
    }

    /// `PROFILE@START`, e.g. `3g.40gb@4`.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.profile, self.start)
    }

    /// The memory slices the instance covers, as a bit mask.
    pub fn mask(&self) -> u64 {
        let bits = if self.size >= 64 {
            u64::MAX
        } else {
            (1u64 << self.size) - 1
        };
        bits.checked_shl(u32::from(self.start)).unwrap_or(0)
    }

    /// Proof that this observed instance was idle, which [`GpuBackend::destroy_gi`] requires.
    /// `None` when processes run on it. The backend checks again before destroying.
    pub fn idle(&self) -> Option<IdleInstance> {
        if self.is_busy() {
            return None;
        }
        Some(IdleInstance {
            gpu: self.gpu,
            gi_id: self.gi_id,
            profile: self.profile.clone(),
            start: self.start,
            uuid: self.uuid.clone(),
        })
    }
}

/// An instance that was observed without processes. Only [`GpuInstance::idle`] makes one, so
/// code that holds one has looked at the hardware; the backend still checks for processes
/// again and answers [`GpuError::InUse`] if one started since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdleInstance {
    gpu: u32,
    gi_id: u32,
    profile: String,
    start: u8,
    uuid: Option<String>,
}

impl IdleInstance {
    /// The GPU's index.
    pub fn gpu(&self) -> u32 {
        self.gpu
    }
    /// The GPU-instance ID observed.
    pub fn gi_id(&self) -> u32 {
        self.gi_id
    }
    /// The profile name observed.
    pub fn profile(&self) -> &str {
        &self.profile
    }
    /// The placement start observed.
    pub fn start(&self) -> u8 {
        self.start
    }
    /// The MIG device UUID observed, if any.
    pub fn uuid(&self) -> Option<&str> {
        self.uuid.as_deref()
    }
    /// `PROFILE@START`.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.profile, self.start)
    }
}

/// Something the GPU reported asynchronously.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuEvent {
    /// The GPU's index.
    pub gpu: u32,
    /// XID error number (`nvmlEventTypeXidCriticalError` event data).
    pub xid: u64,
    /// The GPU instance NVML attributed it to, if any.
    pub gi_id: Option<u32>,
    /// The compute instance NVML attributed it to, if any.
    pub ci_id: Option<u32>,
}

/// What a backend is, as far as a server driving it must know; asked instead of testing the
/// backend's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend sees the processes on each MIG instance itself (NVML lists them). When
    /// false it knows which instances hold work only from [`GpuBackend::attach_work`] and
    /// [`GpuBackend::sync_work`] (the simulator, whose "processes" are marks).
    pub observes_processes: bool,
    /// The GPUs are device nodes of this host (`/dev/nvidiaN`, `/dev/nvidia-caps/…`), so
    /// per-lease device isolation and real MPS control daemons apply to them.
    pub device_nodes: bool,
    /// A server may switch MIG mode itself to match its configuration: no reset is needed
    /// and no one else's work can be lost (simulated GPUs). Real GPUs are switched by their
    /// administrator.
    pub switches_mig_mode: bool,
}

impl Capabilities {
    /// Real GPUs driven through the driver: processes observed, device nodes present, MIG
    /// mode left to the administrator.
    pub const HARDWARE: Capabilities = Capabilities {
        observes_processes: true,
        device_nodes: true,
        switches_mig_mode: false,
    };
}

/// One MIG instance that holds work according to the caller (a leased instance), for
/// [`GpuBackend::sync_work`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldInstance {
    /// Placement start of the instance.
    pub start: u8,
    /// The process the work runs as, when the caller knows it.
    pub pid: Option<u32>,
}

/// One machine's GPUs: inventory, MIG instances, processes, modes and events.
///
/// Every method names what fails and when. In all methods an unknown `gpu` index is
/// [`GpuError::NotFound`], a transient driver hiccup (or an injected fault on the simulator) is
/// [`GpuError::Transient`], and an unexplained NVML code is [`GpuError::Unknown`].
/// Methods take `&mut self` because reading may register event sets or draw from a fault
/// generator. Implementations must be `Send` so that a server can own one.
pub trait GpuBackend: Send {
    /// A short description: `nvml` or `sim:PATH`.
    fn describe(&self) -> String;

    /// Every GPU, by index. Fails only with the common errors.
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError>;

    /// The GPU-instance profile table the GPU itself reports (on NVML: profile info and
    /// possible placements for every NVML profile index), in profile-index order.
    /// [`GpuError::NotSupported`] when the GPU has no MIG.
    fn profiles(&mut self, gpu: u32) -> Result<Vec<ProfileInfo>, GpuError>;

    /// The GPU instances, sorted by placement start, with their compute instances and the
    /// PIDs on each. [`GpuError::NotSupported`] when MIG mode is off;
    /// [`GpuError::NoPermission`] when processes cannot be listed (an instance must never
    /// look idle just because we may not see its processes).
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError>;

    /// Create a GPU instance of `profile` (name as in the catalog, e.g. `3g.40gb`) at
    /// placement `start`, then its default compute instance (the one spanning the whole GI).
    /// Errors, in the order they are checked:
    /// - MIG mode off, or a profile this GPU does not offer → [`GpuError::NotSupported`];
    /// - `start` not a placement of the profile → [`GpuError::InvalidArgument`];
    /// - placement overlaps an instance, or compute slices / instance count / media engines
    ///   exhausted → [`GpuError::InsufficientResources`];
    /// - compute-instance creation failing after the GI was made: the GI is destroyed again
    ///   (best effort) and that error is returned. If the process dies in between, a GI
    ///   without compute instance remains; [`GpuBackend::create_default_ci`] completes it.
    fn create_gi(&mut self, gpu: u32, profile: &str, start: u8) -> Result<GpuInstance, GpuError>;

    /// Create the default compute instance of an existing GI that has none.
    /// [`GpuError::NotFound`] when no GI has this ID; [`GpuError::InsufficientResources`]
    /// when the GI already has compute instances using its slices.
    fn create_default_ci(&mut self, gpu: u32, gi_id: u32) -> Result<GpuInstance, GpuError>;

    /// Destroy an idle GPU instance: its compute instances first, then the GI.
    /// - no GI with that ID, or it no longer has the observed profile and start (the ID was
    ///   reused) → [`GpuError::NotFound`];
    /// - a process runs on it now → [`GpuError::InUse`], nothing destroyed.
    fn destroy_gi(&mut self, instance: &IdleInstance) -> Result<(), GpuError>;

    /// MIG mode; [`GpuError::NotSupported`] when the GPU cannot do MIG.
    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode, GpuError>;

    /// Ask for MIG mode on or off; returns the mode after the call. On Ampere the change stays
    /// pending until a GPU reset (`current != pending`). [`GpuError::InUse`] when instances
    /// or processes exist, [`GpuError::NoPermission`] without root.
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode, GpuError>;

    /// The compute mode of a whole GPU. With MIG enabled the compute mode belongs to each MIG
    /// device (nvml.h), so this is [`GpuError::NotSupported`] there; use
    /// [`GpuBackend::instance_compute_mode`].
    fn compute_mode(&mut self, gpu: u32) -> Result<ComputeMode, GpuError>;

    /// Set the compute mode of a whole GPU. [`GpuError::NoPermission`] without root;
    /// [`GpuError::NotSupported`] with MIG enabled (set it per MIG device instead).
    fn set_compute_mode(&mut self, gpu: u32, mode: ComputeMode) -> Result<(), GpuError>;

    /// The compute mode of the MIG device of GPU instance `gi_id` (its first compute instance,
    /// by ID). [`GpuError::NotSupported`] when MIG mode is off; [`GpuError::NotFound`] when the
    /// GI does not exist or has no compute instance yet.
    fn instance_compute_mode(&mut self, gpu: u32, gi_id: u32) -> Result<ComputeMode, GpuError> {
        Err(GpuError::NotSupported {
            op: format!("GPU {gpu}: read the compute mode of GPU instance {gi_id}"),
            reason: format!(
                "the {} backend has no per-MIG-device compute mode",
                self.describe()
            ),
        })
    }

    /// Set the compute mode of every MIG device (compute instance) of GPU instance `gi_id`.
    /// Errors as [`GpuBackend::instance_compute_mode`], and [`GpuError::NoPermission`] without
    /// root.
    fn set_instance_compute_mode(
        &mut self,
        gpu: u32,
        gi_id: u32,
        mode: ComputeMode,
    ) -> Result<(), GpuError> {
        Err(GpuError::NotSupported {
            op: format!("GPU {gpu}: set the compute mode of GPU instance {gi_id} to {mode}"),
            reason: format!(
                "the {} backend has no per-MIG-device compute mode",
                self.describe()
            ),
        })
    }

    /// XID events since the last poll, waiting up to `timeout_ms` for the first one
    /// (0: do not wait). Events come in the order the GPUs reported them.
    fn poll_events(&mut self, timeout_ms: u32) -> Result<Vec<GpuEvent>, GpuError>;

    /// What this backend is (see [`Capabilities`]). Default: real hardware.
    fn capabilities(&self) -> Capabilities {
        Capabilities::HARDWARE
    }

    /// The caller started work (process `pid`, when known) on the MIG instance of `gpu` that
    /// starts at `start`. A backend that observes processes ignores it (the work's own CUDA
    /// context makes the instance busy); one that does not marks the instance busy, so that
    /// nothing destroys it. [`GpuError::NotFound`] when no instance starts there.
    fn attach_work(&mut self, gpu: u32, start: u8, pid: Option<u32>) -> Result<(), GpuError> {
        let _ = (gpu, start, pid);
        Ok(())
    }

    /// The caller's full list of the MIG instances of `gpu` that hold work now. A backend
    /// that observes processes ignores it; one that does not makes its marks equal to the
    /// list: listed instances without work become busy, unlisted busy ones idle. Returns
    /// whether anything changed (then [`GpuBackend::instances`] reads differently).
    fn sync_work(&mut self, gpu: u32, held: &[HeldInstance]) -> Result<bool, GpuError> {
        let _ = (gpu, held);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(pids: Vec<u32>) -> GpuInstance {
        GpuInstance {
            gpu: 1,
            gi_id: 5,
            profile: "2g.20gb".into(),
            profile_id: 14,
            start: 4,
            size: 2,
            uuid: Some("MIG-x".into()),
            compute_instances: vec![],
            pids,
        }
    }

    #[test]
    fn only_an_idle_observation_yields_an_idle_instance() {
        assert!(inst(vec![42]).idle().is_none());
        let idle = inst(vec![]).idle().unwrap();
        assert_eq!(
            (idle.gpu(), idle.gi_id(), idle.spec()),
            (1, 5, "2g.20gb@4".to_string())
        );
        assert_eq!(inst(vec![]).mask(), 0b0011_0000);
    }

    #[test]
    fn mig_mode_display_shows_pending_changes() {
        assert_eq!(MigMode::steady(true).to_string(), "enabled");
        let m = MigMode {
            current: false,
            pending: true,
        };
        assert_eq!(m.to_string(), "disabled (enabled after GPU reset)");
    }
}
