//! The MPS daemon of the `mps` mode, driven through the agent's MPS control
//! ([`tessera_gpu::mps::MpsControl`]): started at the beginning of the mode, stopped at its end,
//! with its pipe and log directories under a private temporary state directory, so it never
//! touches a daemon someone else runs.
//!
//! With `keep_gpu_settings` the control is told to leave the compute mode alone
//! (`leave_compute_mode`): the daemon starts in the GPU's current mode (MPS works in `Default`
//! mode) and no GPU setting is read or written. Without it, `MpsControl` records the compute
//! mode, sets `EXCLUSIVE_PROCESS` through NVML and restores the recorded mode on stop.
//! The CPU stand-in uses the control's simulated runner, so the same start/limit/stop code runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera_gpu::mps::{ClientLimits, MpsControl, MpsError, MpsOptions, MpsTarget};
use tessera_gpu::nvml::NvmlBackend;
use tessera_gpu::GpuBackend;
use tessera_model::Catalog;

use crate::error::BenchError;
use crate::slots::Target;

/// A started MPS daemon (real, or simulated for the stand-in).
pub struct MpsDaemon {
    control: MpsControl,
    target: MpsTarget,
    backend: Option<NvmlBackend>,
    real: bool,
    stopped: bool,
    pipe_dir: PathBuf,
    // Removed (with the pipe and log directories) when the daemon is dropped.
    _state: tempfile::TempDir,
}

fn state_dir() -> Result<tempfile::TempDir, BenchError> {
    // Short prefix: the daemon's socket path must fit in a Unix socket address.
    tempfile::Builder::new()
        .prefix("tsb-mps-")
        .tempdir()
        .map_err(|e| BenchError::io(std::env::temp_dir(), e))
}

fn mps_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Mps(e.to_string())
}

impl MpsDaemon {
    fn begin(target: &Target, real: bool, keep_gpu_settings: bool) -> Result<Self, BenchError> {
        let state = state_dir()?;
        let mut opts = MpsOptions::new(state.path());
        opts.leave_compute_mode = keep_gpu_settings || !real;
        let control = if real {
            MpsControl::real(opts)
        } else {
            MpsControl::sim(opts)
        };
        let mps_target = MpsTarget::gpu(target.index, target.visible_devices());
        let pipe_dir = control.pipe_dir(&mps_target);
        let backend = if real && !keep_gpu_settings {
            Some(NvmlBackend::open(Catalog::builtin().clone()).map_err(|e| {
                BenchError::Mps(format!(
                    "managing the compute mode needs NVML: {e}; pass --keep-gpu-settings to \
                     start MPS in the current compute mode"
                ))
            })?)
        } else {
            None
        };
        let mut d = MpsDaemon {
            control,
            target: mps_target,
            backend,
            real,
            stopped: false,
            pipe_dir,
            _state: state,
        };
        let backend = d.backend.as_mut().map(|b| b as &mut dyn GpuBackend);
        d.control.start(&d.target, backend).map_err(mps_err)?;
        if real {
            d.wait_for_socket(true)?;
        }
        Ok(d)
    }

    /// Start a real daemon for the target GPU.
    pub fn start(target: &Target, keep_gpu_settings: bool) -> Result<Self, BenchError> {
        MpsDaemon::begin(target, true, keep_gpu_settings)
    }

    /// A simulated daemon: the CPU stand-in exercises the MPS plumbing with it.
    pub fn pretend(target: &Target) -> Result<Self, BenchError> {
        MpsDaemon::begin(target, false, true)
    }

    /// `nvidia-cuda-mps-control -d` returns before the daemon listens; clients started too early
    /// would silently run without MPS. Wait until its control socket appears (or, on stop, goes).
    fn wait_for_socket(&self, present: bool) -> Result<(), BenchError> {
        let control = self.pipe_dir.join("control");
        let deadline = Instant::now() + Duration::from_secs(15);
        while control.exists() != present {
            if Instant::now() > deadline {
                return Err(BenchError::Mps(format!(
                    "the MPS control socket {} did not {} within 15 s",
                    control.display(),
                    if present { "appear" } else { "go away" }
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether a real daemon runs.
    pub fn is_running(&self) -> bool {
        self.real && !self.stopped
    }

    /// The environment of a client limited to `percentage` % of the SMs and `memory_mib`.
    pub fn client_env(
        &self,
        percentage: u32,
        memory_mib: Option<u64>,
    ) -> Result<BTreeMap<String, String>, MpsError> {
        let limits = ClientLimits {
            active_thread_percentage: Some(percentage.clamp(1, 100) as u8),
            pinned_mem_limit_mib: memory_mib.filter(|m| *m > 0),
        };
        self.control.client_env(&self.target, &limits)
    }

    /// Stop the daemon, wait for it to go, and restore the compute mode if it was changed.
    pub fn stop(mut self) -> Result<(), BenchError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), BenchError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let backend = self.backend.as_mut().map(|b| b as &mut dyn GpuBackend);
        let report = self.control.stop(&self.target, backend).map_err(mps_err)?;
        if self.real {
            self.wait_for_socket(false)?;
        }
        match report.quit_error {
            Some(e) => Err(BenchError::Mps(e)),
            None => Ok(()),
        }
    }
}

impl Drop for MpsDaemon {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
