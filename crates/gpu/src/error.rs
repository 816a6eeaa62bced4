//! The backend error type. Its variants mirror NVML's return codes so that the simulated GPU
//! and the real one fail the same way, and the reconciler can decide from the variant alone
//! whether to retry ([`GpuError::is_transient`]), re-observe (`InUse`, `InsufficientResources`)
//! or stop.

use std::path::PathBuf;

/// What a [`crate::GpuBackend`] call can fail with. `op` names the GPU and the call,
/// e.g. `GPU 0: create GPU instance 3g.40gb@4`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// The placement overlaps an existing instance, or the GPU lacks the compute slices,
    /// instance slots or media engines (`NVML_ERROR_INSUFFICIENT_RESOURCES`).
    #[error("{op}: insufficient resources ({detail}); destroy what is in the way, or create larger profiles first")]
    InsufficientResources {
        /// The call and its object.
        op: String,
        /// What is in the way.
        detail: String,
    },
    /// Processes run on the instance (`NVML_ERROR_IN_USE`).
    #[error("{op}: in use by process(es) {}; stop them, or keep the instance in the layout", fmt_pids(.pids))]
    InUse {
        /// The call and its object.
        op: String,
        /// The processes found (may be empty when the hardware did not say which).
        pids: Vec<u32>,
    },
    /// The GPU cannot do this: MIG mode off, unknown profile, old driver (`NVML_ERROR_NOT_SUPPORTED`).
    #[error("{op}: not supported: {reason}")]
    NotSupported {
        /// The call and its object.
        op: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The GPU, instance or compute instance does not exist (`NVML_ERROR_NOT_FOUND`).
    #[error("{op}: not found: {detail}")]
    NotFound {
        /// The call and its object.
        op: String,
        /// What was looked for.
        detail: String,
    },
    /// The caller may not change the GPU (`NVML_ERROR_NO_PERMISSION`).
    #[error("{op}: permission denied; listing MIG instances and placements, and every MIG or compute-mode change, need root (or CAP_SYS_ADMIN)")]
    NoPermission {
        /// The call and its object.
        op: String,
    },
    /// An argument NVML rejects, e.g. a start that is not one of the profile's placements
    /// (`NVML_ERROR_INVALID_ARGUMENT`).
    #[error("{op}: invalid argument: {detail}")]
    InvalidArgument {
        /// The call and its object.
        op: String,
        /// What is wrong.
        detail: String,
    },
    /// The GPU needs a reset before the change takes effect (`NVML_ERROR_RESET_REQUIRED`).
    #[error(
        "{op}: the GPU must be reset first (stop every process on it, then `nvidia-smi -r -i N`)"
    )]
    ResetRequired {
        /// The call and its object.
        op: String,
    },
    /// A failure that may pass on retry: timeout, not ready, IRQ issue, or an injected fault.
    #[error("{op}: transient failure ({detail}); retrying may succeed")]
    Transient {
        /// The call and its object.
        op: String,
        /// What happened.
        detail: String,
    },
    /// An error NVML does not explain (`NVML_ERROR_UNKNOWN` or an unexpected code); retried a
    /// bounded number of times.
    #[error("{op}: unknown NVML error ({detail})")]
    Unknown {
        /// The call and its object.
        op: String,
        /// The code or text NVML gave.
        detail: String,
    },
    /// libnvidia-ml.so.1 cannot be loaded.
    #[error("NVML library libnvidia-ml.so.1 not found: no NVIDIA driver on this machine; use --backend sim:STATE ({detail})")]
    LibraryNotFound {
        /// What the loader said.
        detail: String,
    },
    /// The library loaded but the kernel driver is not running (`NVML_ERROR_DRIVER_NOT_LOADED`).
    #[error("NVML: the NVIDIA kernel driver is not loaded; load it (`modprobe nvidia`) or use --backend sim:STATE")]
    DriverNotLoaded,
    /// The NVML library and the loaded kernel module are of different driver versions
    /// (`NVML_ERROR_LIB_RM_VERSION_MISMATCH`): the driver was updated without reloading the
    /// module. Retrying cannot help.
    #[error("{op}: the NVML library and the NVIDIA kernel module are from different driver versions (updated without a reboot?); reload the module (`rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && modprobe nvidia`) or reboot")]
    DriverMismatch {
        /// The call and its object.
        op: String,
    },
    /// The GPU fell off the bus or is otherwise lost (`NVML_ERROR_GPU_IS_LOST`); needs an operator.
    #[error(
        "{op}: the GPU is lost (fell off the bus?); check `dmesg` and reset or reboot the node"
    )]
    GpuLost {
        /// The call and its object.
        op: String,
    },
    /// The simulated backend stopped at a crash point (fault injection for tests). The state
    /// is left exactly as it was at that point; open a new backend to continue.
    #[error("simulated crash at `{point}`")]
    Crashed {
        /// The crash point's name.
        point: String,
    },
    /// The simulator's state file is missing, unreadable or of an unknown format.
    #[error("sim state {}: {detail}", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        detail: String,
    },
}

fn fmt_pids(pids: &[u32]) -> String {
    if pids.is_empty() {
        // NVML answers IN_USE without listing a compute process when something else holds the
        // instance: a monitoring agent, the persistence daemon, or a process NVML cannot see.
        return "(none listed: a holder NVML does not list as a compute process, such as \
                DCGM / nv-hostengine, dcgm-exporter, nvidia-persistenced, an MPS server, or a \
                process in another container; find it with `fuser -v /dev/nvidia*`)"
            .into();
    }
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl GpuError {
    /// Whether retrying the same call later may succeed: `Transient` and `Unknown`.
    /// `InUse` and `InsufficientResources` are not transient: they describe the GPU's
    /// state, so the caller must observe again and decide anew.
    pub fn is_transient(&self) -> bool {
        matches!(self, GpuError::Transient { .. } | GpuError::Unknown { .. })
    }

    /// A short stable name of the variant, for JSON output and journals (`in_use`, `transient`...).
    pub fn kind(&self) -> &'static str {
        match self {
            GpuError::InsufficientResources { .. } => "insufficient_resources",
            GpuError::InUse { .. } => "in_use",
            GpuError::NotSupported { .. } => "not_supported",
            GpuError::NotFound { .. } => "not_found",
            GpuError::NoPermission { .. } => "no_permission",
            GpuError::InvalidArgument { .. } => "invalid_argument",
            GpuError::ResetRequired { .. } => "reset_required",
            GpuError::Transient { .. } => "transient",
            GpuError::Unknown { .. } => "unknown",
            GpuError::LibraryNotFound { .. } => "library_not_found",
            GpuError::DriverNotLoaded => "driver_not_loaded",
            GpuError::DriverMismatch { .. } => "driver_mismatch",
            GpuError::GpuLost { .. } => "gpu_lost",
            GpuError::Crashed { .. } => "crashed",
            GpuError::State { .. } => "state",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_and_unknown_are_retryable() {
        let t = GpuError::Transient {
            op: "x".into(),
            detail: "y".into(),
        };
        assert!(t.is_transient());
        let u = GpuError::InUse {
            op: "GPU 0: destroy 1g.10gb@0".into(),
            pids: vec![4242, 7],
        };
        assert!(!u.is_transient());
        assert_eq!(
            u.to_string(),
            "GPU 0: destroy 1g.10gb@0: in use by process(es) 4242, 7; stop them, or keep the instance in the layout"
        );
    }

    #[test]
    fn in_use_without_pids_says_who_may_hold_it() {
        let u = GpuError::InUse {
            op: "GPU 0: destroy 1g.10gb@0".into(),
            pids: vec![],
        };
        let text = u.to_string();
        assert!(
            text.contains("DCGM") && text.contains("nvidia-persistenced"),
            "{text}"
        );
        assert!(text.contains("fuser -v /dev/nvidia*"), "{text}");
    }

    #[test]
    fn missing_library_message_names_the_fix() {
        let e = GpuError::LibraryNotFound {
            detail: "dlopen failed".into(),
        };
        assert!(e.to_string().starts_with(
            "NVML library libnvidia-ml.so.1 not found: no NVIDIA driver on this machine; use --backend sim:STATE"
        ));
    }
}
