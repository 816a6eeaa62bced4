//! The whole benchmark: check the machine, find the GPU and its slots, then for each mode and
//! workload run one tenant alone (idle) and all tenants at once (loaded), and build the
//! [`Report`]. [`write_outputs`] then writes JSON, CSV, the Markdown table and the charts.
//!
//! Order: modes outermost (the MPS daemon starts once per run of the `mps` mode and stops at
//! its end), then workloads in the seed's order, idle before loaded. A failed run is recorded
//! in its cell and the benchmark goes on; a mode that cannot run here is skipped with a reason.

use std::path::{Path, PathBuf};

use crate::error::BenchError;
use crate::group::{run_group, run_probe, Limits, TenantCommand};
use crate::inventory::{parse_listing, read_listing, read_states};
use crate::mps::MpsDaemon;
use crate::peaks;
use crate::protocol::{Backend, DeviceInfo, Role, TenantSpec};
use crate::report::{
    aggregate, failed, CellReport, GpuReport, ModeReport, ModeStatus, PeaksReport, Report,
    REPORT_FORMAT,
};
use crate::slots::{
    mps_precheck, plan_mig, plan_mps, plan_timeslice, Mode, Slot, SlotError, Target,
};
use crate::workload::{check_scale, Workload};

/// Most tenants a run accepts (MPS serves at most 48 clients per GPU on many drivers).
pub const MAX_TENANTS: u32 = 48;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Tenants in the loaded runs.
    pub tenants: u32,
    /// Modes, in report order.
    pub modes: Vec<Mode>,
    /// Workloads, in the seed's order.
    pub workloads: Vec<Workload>,
    /// Seconds per run.
    pub duration_s: f64,
    /// Scale of each dimension of the large GEMM, in (0, 1].
    pub gemm_large_scale: f64,
    /// Never change compute mode, MIG mode or any other GPU setting.
    pub keep_gpu_settings: bool,
    /// GPU kernels or the CPU stand-in.
    pub backend: Backend,
    /// nvidia-smi index of the GPU.
    pub gpu_index: u32,
    /// `nvidia-smi -L` text to use instead of running nvidia-smi (tests, offline planning).
    pub listing: Option<String>,
    /// Time limits per tenant group.
    pub limits: Limits,
}

impl Config {
    /// Check the values a user gave.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.tenants == 0 || self.tenants > MAX_TENANTS {
            return Err(BenchError::Invalid {
                what: "--tenants",
                value: self.tenants.to_string(),
                reason: format!("expected 1 to {MAX_TENANTS}"),
            });
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= 3600.0) {
            return Err(BenchError::Invalid {
                what: "--duration",
                value: self.duration_s.to_string(),
                reason: "expected seconds in (0, 3600]".into(),
            });
        }
        check_scale(self.gemm_large_scale)?;
        Ok(())
    }
}

/// Progress callbacks; the CLI draws a bar with them. All default to nothing.
pub trait Progress {
    /// The number of runs (mode × workload × idle/loaded) that will be attempted.
    fn begin(&self, _total: u64) {}
    /// A run starts.
    fn start(&self, _what: &str) {}
    /// `n` runs are done (or skipped).
    fn advance(&self, _n: u64) {}
    /// Something the user should know now (a skipped mode, a failed run).
    fn warn(&self, _msg: &str) {}
    /// All done.
    fn finish(&self) {}
}

/// Progress that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Find the GPU and what it offers, changing nothing.
fn observe(
    cfg: &Config,
    cmd: &TenantCommand,
    notes: &mut Vec<String>,
) -> Result<(Target, Option<DeviceInfo>), BenchError> {
    let listing = match (&cfg.listing, cfg.backend) {
        (Some(text), _) => Ok(parse_listing(text)),
        (None, Backend::Cuda) => read_listing(),
        (None, Backend::CpuStandin) => Ok(Vec::new()),
    };
    let listing = listing.unwrap_or_else(|e| {
        notes.push(format!(
            "GPU listing unavailable ({e}); the mig mode has nothing to use"
        ));
        Vec::new()
    });
    let gpu = listing.iter().find(|g| g.index == cfg.gpu_index);
    if gpu.is_none() && !listing.is_empty() {
        let have: Vec<String> = listing.iter().map(|g| g.index.to_string()).collect();
        return Err(BenchError::Invalid {
            what: "--gpu",
            value: cfg.gpu_index.to_string(),
            reason: format!("nvidia-smi lists GPUs {}", have.join(", ")),
        });
    }
    let state = if cfg.backend == Backend::Cuda && cfg.listing.is_none() {
        read_states()
            .map(|mut s| s.remove(&cfg.gpu_index).unwrap_or_default())
            .unwrap_or_default()
    } else {
        Default::default()
    };
    let mut target = Target {
        index: cfg.gpu_index,
        name: gpu.map(|g| g.name.clone()).unwrap_or_default(),
        uuid: gpu.map(|g| g.uuid.clone()).filter(|u| !u.is_empty()),
        memory_mib: None,
        mig_enabled: state.mig_enabled,
        compute_mode: state.compute_mode,
        mig_devices: gpu.map(|g| g.mig_devices.clone()).unwrap_or_default(),
    };
    if target.mig_enabled.is_none()
        && cfg.backend == Backend::Cuda
        && !target.mig_devices.is_empty()
    {
        target.mig_enabled = Some(true);
    }
    // Probe the whole GPU (in a child, so this process never holds a CUDA context); a GPU in
    // MIG mode cannot be opened whole, so its first MIG device is probed instead.
    let probe_visible = match (target.mig_enabled, target.mig_devices.first()) {
        (Some(true), Some(d)) => Some(d.uuid.clone()),
        (Some(true), None) => None,
        _ => Some(target.visible_devices()),
    };
    let mut info = None;
    if let Some(visible) = probe_visible {
        let mut slot = Slot {
            label: format!("probe of {visible}"),
            env: Default::default(),
        };
        slot.env.insert("CUDA_VISIBLE_DEVICES".into(), visible);
        slot.env
            .insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
        let d = run_probe(
            cmd,
            &TenantSpec::new(0, cfg.backend, Role::Probe),
            &slot,
            cfg.limits,
        )?;
        if target.name.is_empty() {
            target.name = peaks::board_name(&d.name).to_string();
        }
        if target.mig_enabled != Some(true) {
            target.memory_mib = d.memory_mib;
        }
        info = Some(d);
    }
    if cfg.backend == Backend::CpuStandin {
        target.name = match gpu {
            Some(g) => format!("CPU stand-in (MIG slots from a listing of {})", g.name),
            None => "CPU stand-in".into(),
        };
    }
    Ok((target, info))
}

/// Run the benchmark and build the report.
pub fn run_sharing(
    cfg: &Config,
    cmd: &TenantCommand,
    progress: &dyn Progress,
) -> Result<Report, BenchError> {
    cfg.validate()?;
    if cfg.backend == Backend::Cuda {
        crate::cuda::preflight(cfg.workloads.iter().any(|w| w.is_gemm()))?;
    }
    let mut notes = Vec::new();
    let (target, info) = observe(cfg, cmd, &mut notes)?;
    let peaks = match cfg.backend {
        Backend::Cuda => peaks::lookup(&target.name).map(PeaksReport::from),
        Backend::CpuStandin => None,
    };
    if peaks.is_none() && cfg.backend == Backend::Cuda {
        notes.push(format!(
            "{} is not in the peaks table: no efficiencies",
            target.name
        ));
    }
    if cfg.backend == Backend::CpuStandin {
        notes.push(
            "CPU stand-in: host memcpy and a naive matrix multiply, not GPU numbers; it tests the \
             orchestration only"
                .into(),
        );
    }
    let n = cfg.tenants;
    let runs_per_mode = cfg.workloads.len() as u64 * 2;
    progress.begin(runs_per_mode * cfg.modes.len() as u64);

    let mut modes = Vec::new();
    let mut results = Vec::new();
    let no_mps = tempfile::Builder::new()
        .prefix("tessera-bench-nomps-")
        .tempdir()
        .map_err(|e| BenchError::io(std::env::temp_dir(), e))?;
    for &mode in &cfg.modes {
        let mut daemon = None;
        let plan = match mode {
            Mode::Timeslice => plan_timeslice(&target, n, no_mps.path()),
            Mode::Mig => plan_mig(&target, n, no_mps.path()),
            Mode::Mps => match mps_precheck(&target) {
                Err(reason) => Err(reason),
                Ok(()) => {
                    let started = if cfg.backend == Backend::Cuda {
                        MpsDaemon::start(&target, cfg.keep_gpu_settings)
                    } else {
                        MpsDaemon::pretend(&target)
                    };
                    match started {
                        Ok(d) => {
                            let note = if d.is_running() {
                                ""
                            } else {
                                " (stand-in: simulated daemon)"
                            };
                            let p = plan_mps(&target, n, &|pct, mem| d.client_env(pct, mem), note);
                            daemon = Some(d);
                            p
                        }
                        Err(e) => Err(SlotError::MpsDaemon(Box::new(e))),
                    }
                }
            },
        };
        let slots = match plan {
            Ok(s) => s,
            Err(reason) => {
                let reason = reason.to_string();
                progress.warn(&format!("{}: skipped: {reason}", mode.name()));
                progress.advance(runs_per_mode);
                modes.push(ModeReport {
                    mode,
                    status: ModeStatus::Skipped,
                    reason: Some(reason),
                    slots: Vec::new(),
                });
                continue;
            }
        };
        let labels: Vec<String> = slots.iter().map(|s| s.label.clone()).collect();
        for &w in &cfg.workloads {
            let shape = match cfg.backend {
                Backend::Cuda => w.gpu_shape(cfg.gemm_large_scale),
                Backend::CpuStandin => w.cpu_shape(),
            };
            let peak = peaks.as_ref().map(|p| p.for_workload(w));
            let role = Role::Measure {
                workload: w,
                shape,
                duration_s: cfg.duration_s,
            };
            let phase = |count: u32, load: &str| {
                progress.start(&format!("{} {} {load}", mode.name(), w.name()));
                let specs: Vec<TenantSpec> = (0..count)
                    .map(|i| TenantSpec::new(i, cfg.backend, role.clone()))
                    .collect();
                let used = &slots[..count as usize];
                let r = match run_group(cmd, &specs, used, cfg.duration_s, cfg.limits) {
                    Ok(outs) => aggregate(&outs, &labels[..count as usize], peak),
                    // Stop everything; guards stop the tenants and the MPS daemon.
                    Err(BenchError::Interrupted) => return Err(BenchError::Interrupted),
                    Err(e) => {
                        progress.warn(&format!("{} {} {load}: {e}", mode.name(), w.name()));
                        failed(e.to_string())
                    }
                };
                progress.advance(1);
                Ok(r)
            };
            let idle = phase(1, "idle")?;
            let loaded = phase(n, "loaded")?;
            if let Some(ov) = loaded.overlap_s {
                if ov < 0.9 * cfg.duration_s {
                    notes.push(format!(
                        "{} {}: the tenants measured together for only {ov:.2} s of {} s (late \
                         starts or slow batches); the loaded figures are optimistic",
                        mode.name(),
                        w.name(),
                        cfg.duration_s
                    ));
                }
            }
            results.push(CellReport {
                workload: w,
                mode,
                unit: w.unit(),
                size: shape.describe(),
                idle,
                loaded,
            });
        }
        if let Some(d) = daemon {
            if let Err(e) = d.stop() {
                notes.push(format!("stopping the MPS daemon: {e}"));
            }
        }
        modes.push(ModeReport {
            mode,
            status: ModeStatus::Ran,
            reason: None,
            slots: labels,
        });
    }
    progress.finish();
    if cfg.keep_gpu_settings {
        notes.push("GPU settings were left as found (--keep-gpu-settings)".into());
    }
    let info = info.unwrap_or_default();
    Ok(Report {
        format: REPORT_FORMAT,
        backend: cfg.backend,
        gpu: GpuReport {
            index: target.index,
            name: target.name.clone(),
            uuid: target.uuid.clone(),
            memory_mib: target.memory_mib,
            sm_count: info.sm_count,
            compute_capability: info.compute_capability,
            mig_enabled: target.mig_enabled,
            compute_mode: target.compute_mode.clone(),
        },
        peaks,
        tenants: n,
        duration_s: cfg.duration_s,
        keep_gpu_settings: cfg.keep_gpu_settings,
        modes,
        results,
        notes,
    })
}

/// Write `report.json`, `report.csv`, `table.md`, `table.txt` and one `<workload>.png` per
/// workload into `dir` (created if missing). Returns the files written, in that order.
pub fn write_outputs(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> Result<(), BenchError> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::io(&p, e))?;
        written.push(p);
        Ok(())
    };
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| BenchError::Protocol(format!("cannot encode the report: {e}")))?;
    put("report.json", json + "\n")?;
    put("report.csv", report.csv())?;
    put("table.md", report.markdown())?;
    put("table.txt", report.text_table())?;
    for w in report.workloads() {
        let p = dir.join(format!("{}.png", w.name()));
        crate::chart::draw(report, w, &p)?;
        written.push(p);
    }
    Ok(written)
}
