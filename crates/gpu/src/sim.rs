//! A simulated machine of MIG GPUs with NVML's semantics, for tests, demos and the trace
//! simulator.
//!
//! What it refuses, and with which [`GpuError`] (the same as NVML):
//! - MIG mode off → `NotSupported`; a profile the model lacks → `NotSupported`;
//! - a start that is not a placement of the profile → `InvalidArgument`;
//! - a placement that overlaps an instance, or exhausted compute slices, instance count or
//!   media engines → `InsufficientResources`;
//! - destroying an instance with processes → `InUse` (nothing destroyed);
//! - disabling MIG mode while instances exist → `InUse`.
//!
//! Simulated processes are PIDs attached to an instance ([`SimBackend::set_busy`]). UUIDs are
//! deterministic: a hash of the state's seed and a counter kept in the state.
//!
//! **Faults** ([`SimConfig::faults`]): each call draws from a generator seeded with
//! [`SimConfig::fault_seed`]; with probability `faults` it fails with [`GpuError::Transient`].
//! Reads always fail *before* doing anything. Mutating calls fail before taking effect with
//! [`FaultTiming::Before`] (the default), after taking effect with [`FaultTiming::After`]
//! (like a timeout on a call that did complete), or either, by coin flip, with
//! [`FaultTiming::Mixed`].
//!
//! **Crash points** ([`CrashPoint`]): named places inside the mutating calls. A
//! [`CrashPlan`] stops the backend at the n-th point reached: the state stays exactly as it
//! was there (a GI without its compute instance, say), the call returns
//! [`GpuError::Crashed`], and every later call does too. Open a new backend on the same state
//! to play the restarted agent.
//!
//! **Shared state file** (`sim:STATE`): [`SimBackend::open`] takes an exclusive `flock` on
//! `STATE.lock` for the backend's lifetime (so CLI processes take turns) and writes the state
//! after every change, atomically (temp file, fsync, rename). The file is JSON with a
//! `format` and `version` ([`SIM_FORMAT`], [`SIM_VERSION`]).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_model::{Catalog, GpuModel, LayoutState, Placed};

use crate::backend::{
    Capabilities, ComputeInstance, ComputeMode, GpuBackend, GpuEvent, GpuInfo, GpuInstance,
    HeldInstance, IdleInstance, MigMode,
};
use crate::checks;
use crate::error::GpuError;
use crate::profiles::{catalog_profiles, ProfileInfo};

/// The `format` field of a sim state file.
pub const SIM_FORMAT: &str = "tessera-sim-gpu";
/// The state file version this build reads and writes.
pub const SIM_VERSION: u32 = 1;
/// First PID handed out by [`SimBackend::set_busy`] when none is given.
pub const FIRST_SIM_PID: u32 = 4000;

/// The whole simulated machine; what the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimState {
    /// Always [`SIM_FORMAT`].
    pub format: String,
    /// Always [`SIM_VERSION`].
    pub version: u32,
    /// Seed of the UUIDs.
    pub seed: u64,
    /// Counter of UUIDs handed out.
    pub next_id: u64,
    /// Next PID for [`SimBackend::set_busy`].
    pub next_pid: u32,
    /// The GPUs, by index.
    pub gpus: Vec<SimGpu>,
    /// XID events not yet polled.
    #[serde(default)]
    pub events: Vec<GpuEvent>,
}

/// One simulated GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimGpu {
    /// Index.
    pub index: u32,
    /// Catalog key of its model.
    pub model: String,
    /// Product name (the model's first NVML name).
    pub name: String,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Device memory in MiB.
    pub memory_mib: u64,
    /// MIG mode.
    pub mig: MigMode,
    /// Compute mode.
    pub compute_mode: ComputeMode,
    /// GPU instances, by start.
    pub instances: Vec<SimGi>,
}

/// One simulated GPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimGi {
    /// GI ID.
    pub gi_id: u32,
    /// Profile name.
    pub profile: String,
    /// Placement start.
    pub start: u8,
    /// Compute instances (empty after a crash between GI and CI creation).
    pub cis: Vec<SimCi>,
    /// Simulated processes.
    pub pids: Vec<u32>,
    /// Compute mode of the GI's MIG device(s): with MIG on, compute mode is per MIG device.
    #[serde(default)]
    pub compute_mode: ComputeMode,
    /// Held by something NVML does not list as a compute process (DCGM, persistenced): the
    /// instance looks idle, but destroying it is refused with `InUse` and no PIDs, as on NVML.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_unlisted: bool,
}

/// One simulated compute instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCi {
    /// CI ID.
    pub ci_id: u32,
    /// MIG device UUID.
    pub uuid: String,
}

/// Why a `MODEL:COUNT[,MODEL:COUNT...]` GPU list cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuListError {
    /// The count after `:` is not a whole number.
    #[error("`{part}`: the count after `:` must be a whole number, e.g. h100-80gb:2")]
    BadCount {
        /// The list item.
        part: String,
        /// Why the count does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A count of 0.
    #[error("`{part}`: the count must be at least 1")]
    ZeroCount {
        /// The list item.
        part: String,
    },
    /// Nothing but commas and spaces.
    #[error("no GPUs given; write MODEL:COUNT[,MODEL:COUNT...], e.g. h100-80gb:2")]
    Empty,
}

/// Parse `h100-80gb:2,a100-40gb:1` (a count of 1 may be left out) into (model, count) pairs.
pub fn parse_gpu_list(spec: &str) -> Result<Vec<(String, u32)>, GpuListError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (model, count) = match part.rsplit_once(':') {
            Some((m, c)) => {
                let n: u32 = c.trim().parse().map_err(|source| GpuListError::BadCount {
                    part: part.to_string(),
                    source,
                })?;
                (m.trim().to_string(), n)
            }
            None => (part.to_string(), 1),
        };
        if count == 0 {
            return Err(GpuListError::ZeroCount {
                part: part.to_string(),
            });
        }
        out.push((model, count));
    }
    if out.is_empty() {
        return Err(GpuListError::Empty);
    }
    Ok(out)
}

impl SimState {
    /// A machine with `count` GPUs of each model, in order, MIG mode `mig`, no instances.
    pub fn new(
        catalog: &Catalog,
        gpus: &[(String, u32)],
        seed: u64,
        mig: bool,
    ) -> Result<SimState, GpuError> {
        let mut st = SimState {
            format: SIM_FORMAT.into(),
            version: SIM_VERSION,
            seed,
            next_id: 0,
            next_pid: FIRST_SIM_PID,
            gpus: Vec::new(),
            events: Vec::new(),
        };
        for (query, count) in gpus {
            let model = catalog.lookup(query).map_err(|e| GpuError::NotFound {
                op: "sim: add GPU".into(),
                detail: e.to_string(),
            })?;
            for _ in 0..*count {
                let uuid = st.new_uuid("GPU");
                st.gpus.push(SimGpu {
                    index: st.gpus.len() as u32,
                    model: model.key.clone(),
                    name: model
                        .names
                        .first()
                        .cloned()
                        .unwrap_or_else(|| model.key.clone()),
                    uuid,
                    memory_mib: model.memory_mib().unwrap_or(0),
                    mig: MigMode::steady(mig),
                    compute_mode: ComputeMode::Default,
                    instances: Vec::new(),
                });
            }
        }
        Ok(st)
    }

    /// A fresh deterministic UUID `PREFIX-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    fn new_uuid(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        let mut r = SplitMix64::new(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a = r.next_u64();
        let b = r.next_u64();
        format!(
            "{prefix}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

/// When an injected fault strikes a mutating call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultTiming {
    /// Before the call changes anything.
    #[default]
    Before,
    /// After the call took effect (the caller sees an error for a change that happened).
    After,
    /// Either, by a coin flip from the fault generator.
    Mixed,
}

/// A named place inside a mutating call where the simulator can crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CrashPoint {
    /// `create_gi:before`: nothing done yet.
    CreateGiBefore,
    /// `create_gi:after_gi`: the GI exists, its compute instance does not.
    CreateGiAfterGi,
    /// `create_gi:after`: GI and CI exist, the call has not returned.
    CreateGiAfter,
    /// `create_ci:after`: the compute instance exists, the call has not returned.
    CreateCiAfter,
    /// `destroy_gi:after_ci`: the compute instances are gone, the GI is not.
    DestroyGiAfterCi,
    /// `destroy_gi:after`: the GI is gone, the call has not returned.
    DestroyGiAfter,
}

impl CrashPoint {
    /// Every crash point.
    pub const ALL: [CrashPoint; 6] = [
        CrashPoint::CreateGiBefore,
        CrashPoint::CreateGiAfterGi,
        CrashPoint::CreateGiAfter,
        CrashPoint::CreateCiAfter,
        CrashPoint::DestroyGiAfterCi,
        CrashPoint::DestroyGiAfter,
    ];

    /// The point's name, e.g. `create_gi:after_gi`.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::CreateGiBefore => "create_gi:before",
            CrashPoint::CreateGiAfterGi => "create_gi:after_gi",
            CrashPoint::CreateGiAfter => "create_gi:after",
            CrashPoint::CreateCiAfter => "create_ci:after",
            CrashPoint::DestroyGiAfterCi => "destroy_gi:after_ci",
            CrashPoint::DestroyGiAfter => "destroy_gi:after",
        }
    }

    /// The point with this name.
    pub fn parse(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Where the simulator crashes: the `nth` (1-based) time `point` is reached, or the `nth`
/// crash point of any kind when `point` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashPlan {
    /// Which point, or any.
    pub point: Option<CrashPoint>,
    /// Which time it is reached, from 1.
    pub nth: u32,
}

/// Fault and crash injection for a [`SimBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SimConfig {
    /// Probability in `[0, 1]` that a call fails with a transient error.
    pub faults: f64,
    /// Seed of the fault generator.
    pub fault_seed: u64,
    /// When faults strike mutating calls.
    pub fault_timing: FaultTiming,
    /// Where to crash, if anywhere.
    pub crash: Option<CrashPlan>,
}

/// Counters of what happened, for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimStats {
    /// Backend calls made.
    pub calls: u64,
    /// Faults injected.
    pub faults: u64,
    /// Mutating calls that changed the state.
    pub mutations: u64,
    /// `destroy_gi` calls on an instance with processes (refused with `InUse`). A correct
    /// agent never makes one.
    pub busy_destroy_attempts: u64,
}

/// The simulated backend. See the module docs for its semantics.
#[derive(Debug)]
pub struct SimBackend {
    state: SimState,
    catalog: Catalog,
    file: Option<StateFile>,
    config: SimConfig,
    rng: SplitMix64,
    reached: u32,
    reached_by_point: BTreeMap<CrashPoint, u32>,
    crashed: Option<&'static str>,
    stats: SimStats,
    unprivileged: bool,
}

#[derive(Debug)]
struct StateFile {
    path: PathBuf,
    _lock: File,
}

impl SimBackend {
    /// An in-memory backend (nothing is written anywhere).
    pub fn new(state: SimState, catalog: Catalog, config: SimConfig) -> Result<Self, GpuError> {
        for g in &state.gpus {
            catalog.lookup(&g.model).map_err(|e| GpuError::State {
                path: PathBuf::from("(memory)"),
                detail: format!("GPU {}: {e}", g.index),
            })?;
        }
        Ok(SimBackend {
            rng: SplitMix64::new(config.fault_seed),
            state,
            catalog,
            file: None,
            config,
            reached: 0,
            reached_by_point: BTreeMap::new(),
            crashed: None,
            stats: SimStats::default(),
            unprivileged: false,
        })
    }

    /// Write a new state file (replacing any), e.g. for `tessera sim-gpu init`.
    pub fn create(path: &Path, state: SimState, catalog: Catalog) -> Result<Self, GpuError> {
        let lock = lock_file(path)?;
        let mut b = SimBackend::new(state, catalog, SimConfig::default())?;
        b.file = Some(StateFile {
            path: path.to_path_buf(),
            _lock: lock,
        });
        b.persist()?;
        Ok(b)
    }

    /// Open a state file, holding its lock until the backend is dropped (waits while another
    /// process holds it).
    pub fn open(path: &Path, catalog: Catalog, config: SimConfig) -> Result<Self, GpuError> {
        Self::check_exists(path)?;
        let lock = lock_file(path)?;
        Self::load(path, catalog, config, Some(lock))
    }

    /// Like [`SimBackend::open`], but `Ok(None)` at once when another process holds the lock
    /// (a running `tessera serve` holds its state file's lock for its whole life).
    pub fn try_open(
        path: &Path,
        catalog: Catalog,
        config: SimConfig,
    ) -> Result<Option<Self>, GpuError> {
        Self::check_exists(path)?;
        match lock_file_with(path, false)? {
            Some(lock) => Self::load(path, catalog, config, Some(lock)).map(Some),
            None => Ok(None),
        }
    }

    /// A read-only snapshot of a state file, without its lock: the file is always replaced
    /// atomically, so it is whole, but it may be out of date a moment later. Changes made on
    /// the returned backend are never written.
    pub fn snapshot(path: &Path, catalog: Catalog, config: SimConfig) -> Result<Self, GpuError> {
        Self::check_exists(path)?;
        Self::load(path, catalog, config, None)
    }

    fn check_exists(path: &Path) -> Result<(), GpuError> {
        if !path.is_file() {
            return Err(GpuError::State {
                path: path.to_path_buf(),
                detail:
                    "no such file; create it with `tessera sim-gpu init STATE --gpus h100-80gb:1`"
                        .into(),
            });
        }
        Ok(())
    }

    /// Read and check the state file; with `lock`, changes are written back to it.
    fn load(
        path: &Path,
        catalog: Catalog,
        config: SimConfig,
        lock: Option<File>,
    ) -> Result<Self, GpuError> {
        let bad = |detail: String| GpuError::State {
            path: path.to_path_buf(),
            detail,
        };
        let text = fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                bad(
                    "no such file; create it with `tessera sim-gpu init STATE --gpus h100-80gb:1`"
                        .into(),
                )
            } else {
                bad(format!("cannot read: {e}"))
            }
        })?;
        let state: SimState = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "not a sim state file ({e}); re-create it with `tessera sim-gpu init`"
            ))
        })?;
        if state.format != SIM_FORMAT || state.version != SIM_VERSION {
            return Err(bad(format!(
                "format `{}` version {} is not supported (this build reads `{SIM_FORMAT}` version {SIM_VERSION})",
                state.format, state.version
            )));
        }
        let mut b = SimBackend::new(state, catalog, config).map_err(|e| match e {
            GpuError::State { detail, .. } => bad(detail),
            other => other,
        })?;
        b.file = lock.map(|lock| StateFile {
            path: path.to_path_buf(),
            _lock: lock,
        });
        Ok(b)
    }

    /// The current state.
    pub fn state(&self) -> &SimState {
        &self.state
    }

    /// Counters of calls, faults and refused destroys.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Change fault and crash injection (the crash counter restarts).
    pub fn set_config(&mut self, config: SimConfig) {
        self.rng = SplitMix64::new(config.fault_seed);
        self.config = config;
        self.reached = 0;
        self.reached_by_point.clear();
    }

    /// Attach a process to the instance that starts at `start` (a new PID when `pid` is
    /// `None`); returns the PID. `NotFound` when no instance starts there,
    /// `InvalidArgument` when it has no compute instance to run on.
    pub fn set_busy(&mut self, gpu: u32, start: u8, pid: Option<u32>) -> Result<u32, GpuError> {
        let what = format!("start a process on the instance at {start}");
        let next = self.state.next_pid;
        let gi = self.gi_at_mut(gpu, start, &what)?;
        if gi.cis.is_empty() {
            return Err(GpuError::InvalidArgument {
                op: format!("GPU {gpu}: {what}"),
                detail: "the GPU instance has no compute instance to run on".into(),
            });
        }
        let pid = pid.unwrap_or(next);
        if !gi.pids.contains(&pid) {
            gi.pids.push(pid);
            gi.pids.sort_unstable();
        }
        if pid >= next {
            self.state.next_pid = pid + 1;
        }
        self.persist()?;
        Ok(pid)
    }

    /// Remove every process from the instance that starts at `start`; returns the PIDs removed.
    pub fn set_idle(&mut self, gpu: u32, start: u8) -> Result<Vec<u32>, GpuError> {
        let what = format!("stop the processes on the instance at {start}");
        let gi = self.gi_at_mut(gpu, start, &what)?;
        let pids = std::mem::take(&mut gi.pids);
        self.persist()?;
        Ok(pids)
    }

    /// Queue an XID event for [`GpuBackend::poll_events`].
    pub fn inject_xid(&mut self, gpu: u32, xid: u64, gi_id: Option<u32>) -> Result<(), GpuError> {
        self.gpu_ref(gpu, "inject XID")?;
        self.state.events.push(GpuEvent {
            gpu,
            xid,
            gi_id,
            ci_id: None,
        });
        self.persist()
    }

    /// The catalog model of a GPU.
    pub fn model_of(&self, gpu: u32) -> Result<&GpuModel, GpuError> {
        let g = self.gpu_ref(gpu, "look up model")?;
        self.catalog.lookup(&g.model).map_err(|e| GpuError::State {
            path: self.path_or_memory(),
            detail: e.to_string(),
        })
    }

    fn path_or_memory(&self) -> PathBuf {
        self.file
            .as_ref()
            .map(|f| f.path.clone())
            .unwrap_or_else(|| PathBuf::from("(memory)"))
    }

    /// Write the state file now (a no-op in memory).
    pub fn persist(&self) -> Result<(), GpuError> {
        let Some(f) = &self.file else { return Ok(()) };
        let mut text = serde_json::to_string_pretty(&self.state).expect("sim state serializes");
        text.push('\n');
        write_atomic(&f.path, text.as_bytes()).map_err(|e| GpuError::State {
            path: f.path.clone(),
            detail: format!("cannot write: {e}"),
        })
    }

    fn gpu_ref(&self, gpu: u32, what: &str) -> Result<&SimGpu, GpuError> {
        self.state
            .gpus
            .iter()
            .find(|g| g.index == gpu)
            .ok_or_else(|| not_found_gpu(gpu, what, self.state.gpus.len()))
    }

    fn gpu_mut(&mut self, gpu: u32, what: &str) -> Result<&mut SimGpu, GpuError> {
        let n = self.state.gpus.len();
        self.state
            .gpus
            .iter_mut()
            .find(|g| g.index == gpu)
            .ok_or_else(|| not_found_gpu(gpu, what, n))
    }

    /// The instance that starts at `start`, for [`SimBackend::set_busy`] and
    /// [`SimBackend::set_idle`]; `NotFound` when the GPU or the instance is missing.
    /// `what` is the action, without the `GPU N:` prefix that errors get.
    fn gi_at_mut(&mut self, gpu: u32, start: u8, what: &str) -> Result<&mut SimGi, GpuError> {
        self.gpu_mut(gpu, what)?
            .instances
            .iter_mut()
            .find(|i| i.start == start)
            .ok_or_else(|| GpuError::NotFound {
                op: format!("GPU {gpu}: {what}"),
                detail: format!("no GPU instance starts at memory slice {start}"),
            })
    }

    /// Act as an unprivileged caller (not root): on a MIG-enabled GPU NVML then answers
    /// `NO_PERMISSION` for the parent's memory info, the instance and placement lists, and
    /// every change. Not stored in the state file: it is a property of the caller.
    pub fn set_unprivileged(&mut self, unprivileged: bool) {
        self.unprivileged = unprivileged;
    }

    /// Mark the instance at `start` as held by something NVML does not list as a compute
    /// process (a monitoring agent, the persistence daemon), or release it.
    pub fn set_held_unlisted(&mut self, gpu: u32, start: u8, held: bool) -> Result<(), GpuError> {
        self.gi_at_mut(gpu, start, "hold the GPU instance")?
            .held_unlisted = held;
        self.persist()
    }

    /// `NO_PERMISSION` for an unprivileged caller: `always` for changes, else only on a
    /// MIG-enabled GPU (the privileged MIG queries).
    fn privileged(&self, gpu: u32, op: &str, always: bool) -> Result<(), GpuError> {
        if !self.unprivileged {
            return Ok(());
        }
        let mig_on = self
            .gpu_ref(gpu, op)
            .map(|g| g.mig.current)
            .unwrap_or(false);
        if always || mig_on {
            return Err(GpuError::NoPermission { op: op.to_string() });
        }
        Ok(())
    }

    /// The GI `gi_id` of a MIG-enabled GPU that has a compute instance, for the per-MIG-device
    /// compute mode.
    fn mig_device_gi(&mut self, gpu: u32, gi_id: u32, op: &str) -> Result<&mut SimGi, GpuError> {
        let g = self.gpu_mut(gpu, op)?;
        if !g.mig.current {
            return Err(GpuError::NotSupported {
                op: op.to_string(),
                reason: "MIG mode is disabled: there are no MIG devices; use the GPU's own \
                         compute mode"
                    .into(),
            });
        }
        match g.instances.iter_mut().find(|i| i.gi_id == gi_id) {
            Some(gi) if !gi.cis.is_empty() => Ok(gi),
            Some(_) => Err(GpuError::NotFound {
                op: op.to_string(),
                detail: format!("GPU instance {gi_id} has no compute instance (no MIG device)"),
            }),
            None => Err(checks::no_such_gi(op.to_string(), gpu, gi_id)),
        }
    }

    /// A GPU instance that this call has already found or made.
    fn known_gi_mut(&mut self, gpu: u32, gi_id: u32) -> Result<&mut SimGi, GpuError> {
        Ok(self
            .gpu_mut(gpu, "")?
            .instances
            .iter_mut()
            .find(|i| i.gi_id == gi_id)
            .expect("found or made earlier in the same call"))
    }

    /// Give a GPU instance its default compute instance, with a fresh MIG device UUID.
    fn push_default_ci(&mut self, gpu: u32, gi_id: u32) -> Result<(), GpuError> {
        let uuid = self.state.new_uuid("MIG");
        self.known_gi_mut(gpu, gi_id)?
            .cis
            .push(SimCi { ci_id: 0, uuid });
        Ok(())
    }

    /// Start of every call: refuse after a crash, count, maybe inject a fault.
    /// `Ok(true)`: a mutating call must fail *after* taking effect.
    fn enter(&mut self, op: &str, mutating: bool) -> Result<bool, GpuError> {
        if let Some(point) = self.crashed {
            return Err(GpuError::Crashed {
                point: point.into(),
            });
        }
        self.stats.calls += 1;
        if self.config.faults <= 0.0 || self.rng.next_f64() >= self.config.faults {
            return Ok(false);
        }
        self.stats.faults += 1;
        let after = mutating
            && match self.config.fault_timing {
                FaultTiming::Before => false,
                FaultTiming::After => true,
                FaultTiming::Mixed => self.rng.next_u64() & 1 == 1,
            };
        if after {
            return Ok(true);
        }
        Err(GpuError::Transient {
            op: op.into(),
            detail: "injected fault before the call took effect".into(),
        })
    }

    /// A fault that strikes after the change (see [`FaultTiming::After`]).
    fn fault_after(op: &str) -> GpuError {
        GpuError::Transient {
            op: op.into(),
            detail: "injected fault after the call took effect".into(),
        }
    }

    /// Reached a crash point: persist and stop if the plan says so.
    fn crash_point(&mut self, point: CrashPoint) -> Result<(), GpuError> {
        self.persist()?;
        let Some(plan) = self.config.crash else {
            return Ok(());
        };
        let n = match plan.point {
            None => {
                self.reached += 1;
                self.reached
            }
            Some(p) if p == point => {
                let c = self.reached_by_point.entry(point).or_default();
                *c += 1;
                *c
            }
            Some(_) => return Ok(()),
        };
        if n == plan.nth {
            self.crashed = Some(point.name());
            return Err(GpuError::Crashed {
                point: point.name().into(),
            });
        }
        Ok(())
    }

    fn observe_gi(&self, g: &SimGpu, gi: &SimGi) -> GpuInstance {
        let model = self.catalog.lookup(&g.model).expect("checked at open");
        let (profile_id, size, ci_profile) = match model.profile_named(&gi.profile) {
            Some(idx) => {
                let p = model.profile(idx);
                let ci = model
                    .compute_profiles
                    .get(&p.name)
                    .and_then(|cs| cs.iter().find(|c| c.default))
                    .and_then(|c| c.id)
                    .unwrap_or(u32::from(p.compute_slices.saturating_sub(1)));
                (p.id.unwrap_or(u32::from(idx.0)), p.memory_slices, ci)
            }
            None => (u32::MAX, 1, 0),
        };
        let mut pids = gi.pids.clone();
        pids.sort_unstable();
        GpuInstance {
            gpu: g.index,
            gi_id: gi.gi_id,
            profile: gi.profile.clone(),
            profile_id,
            start: gi.start,
            size,
            uuid: gi.cis.first().map(|c| c.uuid.clone()),
            compute_instances: gi
                .cis
                .iter()
                .map(|c| ComputeInstance {
                    ci_id: c.ci_id,
                    profile_id: ci_profile,
                    uuid: Some(c.uuid.clone()),
                })
                .collect(),
            pids,
        }
    }

    fn instance_by_id(&self, gpu: u32, gi_id: u32) -> Option<GpuInstance> {
        let g = self.gpu_ref(gpu, "").ok()?;
        let gi = g.instances.iter().find(|i| i.gi_id == gi_id)?;
        Some(self.observe_gi(g, gi))
    }
}

fn not_found_gpu(gpu: u32, what: &str, n: usize) -> GpuError {
    GpuError::NotFound {
        op: format!("GPU {gpu}: {what}"),
        detail: format!("the machine has {n} GPU(s), indices 0..{}", n.max(1) - 1),
    }
}

impl GpuBackend for SimBackend {
    fn describe(&self) -> String {
        match &self.file {
            Some(f) => format!("sim:{}", f.path.display()),
            None => "sim:(memory)".into(),
        }
    }

    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        self.enter("list GPUs", false)?;
        let unprivileged = self.unprivileged;
        Ok(self
            .state
            .gpus
            .iter()
            .map(|g| {
                // As NVML: the parent's memory info needs privileges on a MIG-enabled GPU, and
                // the compute mode belongs to the MIG devices there.
                let hide_memory = unprivileged && g.mig.current;
                let mut unreadable = Vec::new();
                if hide_memory {
                    unreadable.push(
                        "memory: NVML_ERROR_NO_PERMISSION (the whole GPU's memory on a \
                         MIG-enabled GPU needs root)"
                            .to_string(),
                    );
                }
                GpuInfo {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    name: g.name.clone(),
                    model: Some(g.model.clone()),
                    memory_mib: if hide_memory { 0 } else { g.memory_mib },
                    mig: Some(g.mig),
                    compute_mode: (!g.mig.current).then_some(g.compute_mode),
                    unreadable,
                }
            })
            .collect())
    }

    fn profiles(&mut self, gpu: u32) -> Result<Vec<ProfileInfo>, GpuError> {
        let op = format!("GPU {gpu}: read the profile table");
        self.enter(&op, false)?;
        self.privileged(gpu, &op, false)?;
        let model = self.model_of(gpu)?;
        let mut t = catalog_profiles(model);
        t.sort_by_key(|p| p.nvml_index);
        Ok(t)
    }

    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        let op = format!("GPU {gpu}: list GPU instances");
        self.enter(&op, false)?;
        self.privileged(gpu, &op, false)?;
        let g = self.gpu_ref(gpu, "list GPU instances")?;
        if !g.mig.current {
            return Err(checks::mig_off_for_list(op));
        }
        let mut out: Vec<GpuInstance> = g
            .instances
            .iter()
            .map(|gi| self.observe_gi(g, gi))
            .collect();
        out.sort_by_key(|i| (i.start, i.gi_id));
        Ok(out)
    }

    fn create_gi(&mut self, gpu: u32, profile: &str, start: u8) -> Result<GpuInstance, GpuError> {
        let op = format!("GPU {gpu}: create GPU instance {profile}@{start}");
        let fail_after = self.enter(&op, true)?;
        self.privileged(gpu, &op, true)?;
        let g = self.gpu_ref(gpu, &format!("create GPU instance {profile}@{start}"))?;
        if !g.mig.current {
            return Err(checks::mig_off_for_create(op));
        }
        let model = self.catalog.lookup(&g.model).expect("checked at open");
        let Some(idx) = model.profile_named(profile) else {
            return Err(GpuError::NotSupported {
                op,
                reason: format!(
                    "{} has no profile `{profile}`; its profiles: {}",
                    model.key,
                    model.profile_names().join(", ")
                ),
            });
        };
        let prof = model.profile(idx);
        checks::check_placement(&op, &prof.name, &prof.placements, start)?;
        let new = Placed::new(idx, start);
        let existing: Vec<(Placed, &SimGi)> = g
            .instances
            .iter()
            .filter_map(|gi| {
                model
                    .profile_named(&gi.profile)
                    .map(|i| (Placed::new(i, gi.start), gi))
            })
            .collect();
        if let Some((_, other)) = existing
            .iter()
            .find(|(p, _)| model.mask(*p) & model.mask(new) != 0)
        {
            return Err(GpuError::InsufficientResources {
                op,
                detail: format!(
                    "the placement overlaps {}@{} (GI {})",
                    other.profile, other.start, other.gi_id
                ),
            });
        }
        let placed: Vec<Placed> = existing.iter().map(|(p, _)| *p).collect();
        if !LayoutState::of(model, &placed).fits(model, new) {
            let mut all = placed.clone();
            all.push(new);
            let why: Vec<String> = model.validate(&all).iter().map(|v| v.to_string()).collect();
            return Err(GpuError::InsufficientResources {
                op,
                detail: why.join("; "),
            });
        }
        let gi_id = (1..)
            .find(|id| !g.instances.iter().any(|i| i.gi_id == *id))
            .expect("a free id");
        let name = prof.name.clone();
        self.crash_point(CrashPoint::CreateGiBefore)?;
        let g = self.gpu_mut(gpu, "")?;
        g.instances.push(SimGi {
            gi_id,
            profile: name,
            start,
            cis: Vec::new(),
            pids: Vec::new(),
            compute_mode: ComputeMode::Default,
            held_unlisted: false,
        });
        g.instances.sort_by_key(|i| i.start);
        self.stats.mutations += 1;
        self.crash_point(CrashPoint::CreateGiAfterGi)?;
        self.push_default_ci(gpu, gi_id)?;
        self.crash_point(CrashPoint::CreateGiAfter)?;
        if fail_after {
            return Err(Self::fault_after(&op));
        }
        Ok(self.instance_by_id(gpu, gi_id).expect("just made"))
    }

    fn create_default_ci(&mut self, gpu: u32, gi_id: u32) -> Result<GpuInstance, GpuError> {
        let op = format!("GPU {gpu}: create the compute instance of GI {gi_id}");
        let fail_after = self.enter(&op, true)?;
        let g = self.gpu_ref(gpu, &format!("create the compute instance of GI {gi_id}"))?;
        let Some(gi) = g.instances.iter().find(|i| i.gi_id == gi_id) else {
            return Err(checks::no_such_gi(op, gpu, gi_id));
        };
        if !gi.cis.is_empty() {
            return Err(GpuError::InsufficientResources {
                op,
                detail: "the GPU instance already has a compute instance using its slices".into(),
            });
        }
        self.push_default_ci(gpu, gi_id)?;
        self.stats.mutations += 1;
        self.crash_point(CrashPoint::CreateCiAfter)?;
        if fail_after {
            return Err(Self::fault_after(&op));
        }
        Ok(self.instance_by_id(gpu, gi_id).expect("exists"))
    }

    fn destroy_gi(&mut self, instance: &IdleInstance) -> Result<(), GpuError> {
        let gpu = instance.gpu();
        let op = checks::destroy_op(instance);
        let fail_after = self.enter(&op, true)?;
        self.privileged(gpu, &op, true)?;
        let g = self.gpu_ref(gpu, &format!("destroy GPU instance {}", instance.spec()))?;
        let now = g
            .instances
            .iter()
            .find(|i| i.gi_id == instance.gi_id())
            .map(|gi| (gi.profile.as_str(), gi.start, gi.pids.as_slice()));
        if let Err(e) = checks::check_destroyable(&op, instance, now) {
            if matches!(e, GpuError::InUse { .. }) {
                self.stats.busy_destroy_attempts += 1;
            }
            return Err(e);
        }
        if self.known_gi_mut(gpu, instance.gi_id())?.held_unlisted {
            self.stats.busy_destroy_attempts += 1;
            return Err(GpuError::InUse { op, pids: vec![] });
        }
        let gi = self.known_gi_mut(gpu, instance.gi_id())?;
        let had_ci = !gi.cis.is_empty();
        gi.cis.clear();
        self.stats.mutations += 1;
        if had_ci {
            self.crash_point(CrashPoint::DestroyGiAfterCi)?;
        }
        let g = self.gpu_mut(gpu, "")?;
        g.instances.retain(|i| i.gi_id != instance.gi_id());
        self.crash_point(CrashPoint::DestroyGiAfter)?;
        if fail_after {
            return Err(Self::fault_after(&op));
        }
        Ok(())
    }

    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode, GpuError> {
        self.enter(&format!("GPU {gpu}: read MIG mode"), false)?;
        Ok(self.gpu_ref(gpu, "read MIG mode")?.mig)
    }

    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode, GpuError> {
        let op = format!(
            "GPU {gpu}: {} MIG mode",
            if enabled { "enable" } else { "disable" }
        );
        let fail_after = self.enter(&op, true)?;
        let g = self.gpu_mut(gpu, "set MIG mode")?;
        if g.mig.current && !enabled && !g.instances.is_empty() {
            return Err(GpuError::InUse {
                op: format!(
                    "{op} ({} GPU instance(s) exist; destroy them first)",
                    g.instances.len()
                ),
                pids: g.instances.iter().flat_map(|i| i.pids.clone()).collect(),
            });
        }
        g.mig = MigMode::steady(enabled);
        let mode = g.mig;
        self.stats.mutations += 1;
        self.persist()?;
        if fail_after {
            return Err(Self::fault_after(&op));
        }
        Ok(mode)
    }

    fn compute_mode(&mut self, gpu: u32) -> Result<ComputeMode, GpuError> {
        let op = format!("GPU {gpu}: read compute mode");
        self.enter(&op, false)?;
        let g = self.gpu_ref(gpu, "read compute mode")?;
        if g.mig.current {
            return Err(checks::compute_mode_is_per_mig_device(op));
        }
        Ok(g.compute_mode)
    }

    fn set_compute_mode(&mut self, gpu: u32, mode: ComputeMode) -> Result<(), GpuError> {
        let op = format!("GPU {gpu}: set compute mode {mode}");
        let fail_after = self.enter(&op, true)?;
        self.privileged(gpu, &op, true)?;
        let g = self.gpu_mut(gpu, "set compute mode")?;
        if g.mig.current {
            return Err(checks::compute_mode_is_per_mig_device(op));
        }
        g.compute_mode = mode;
        self.stats.mutations += 1;
        self.persist()?;
        if fail_after {
            return Err(Self::fault_after(&op));
        }
        Ok(())
    }

    fn instance_compute_mode(&mut self, gpu: u32, gi_id: u32) -> Result<ComputeMode, GpuError> {
        let op = format!("GPU {gpu}: read the compute mode of GPU instance {gi_id}");
        self.enter(&op, false)?;
        Ok(self.mig_device_gi(gpu, gi_id, &op)?.compute_mode)
    }

    fn set_instance_compute_mode(
        &mut self,
        gpu: u32,
        gi_id: u32,
        mode: ComputeMode,
    ) -> Result<(), GpuError> {
        let op = format!("GPU {gpu}: set the compute mode of GPU instance {gi_id} to {mode}");
        let fail_after = self.enter(&op, true)?;
        self.privileged(gpu, &op, true)?;
        self.mig_device_gi(gpu, gi_id, &op)?.compute_mode = mode;
        self.stats.mutations += 1;
        self.persist()?;
        if fail_after {
            return Err(Self::fault_after(&op));
        }
        Ok(())
    }

    fn poll_events(&mut self, _timeout_ms: u32) -> Result<Vec<GpuEvent>, GpuError> {
        self.enter("poll XID events", false)?;
        let events = std::mem::take(&mut self.state.events);
        if !events.is_empty() {
            self.persist()?;
        }
        Ok(events)
    }

    /// Simulated GPUs: "processes" are marks only the caller sets, there are no device nodes,
    /// and MIG mode may be switched to match a configuration.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            observes_processes: false,
            device_nodes: false,
            switches_mig_mode: true,
        }
    }

    /// Marks the instance busy with `pid` (or a fresh simulated PID), as [`SimBackend::set_busy`].
    fn attach_work(&mut self, gpu: u32, start: u8, pid: Option<u32>) -> Result<(), GpuError> {
        self.set_busy(gpu, start, pid).map(|_| ())
    }

    fn sync_work(&mut self, gpu: u32, held: &[HeldInstance]) -> Result<bool, GpuError> {
        let mut next = self.state.next_pid;
        let g = self.gpu_mut(gpu, "record which instances hold work")?;
        let mut changed = false;
        for gi in &mut g.instances {
            match held.iter().find(|h| h.start == gi.start) {
                Some(h) if gi.pids.is_empty() && !gi.cis.is_empty() => {
                    let pid = h.pid.unwrap_or(next);
                    next = next.max(pid + 1);
                    gi.pids.push(pid);
                    changed = true;
                }
                None if !gi.pids.is_empty() => {
                    gi.pids.clear();
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            self.state.next_pid = next;
            self.persist()?;
        }
        Ok(changed)
    }
}

/// Take an exclusive advisory lock on `PATH.lock` (released when the file is closed,
/// including when the process dies), waiting while another process holds it.
pub(crate) fn lock_file(path: &Path) -> Result<File, GpuError> {
    lock_file_with(path, true)?.ok_or_else(|| GpuError::State {
        path: path.to_path_buf(),
        detail: "a blocking lock returned without the lock".into(),
    })
}

/// Like [`lock_file`]; with `wait` false, `Ok(None)` when another process holds the lock.
fn lock_file_with(path: &Path, wait: bool) -> Result<Option<File>, GpuError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| GpuError::State {
            path: lock_path.clone(),
            detail: format!("cannot open the lock file: {e}"),
        })?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a valid, open file descriptor owned by `f`.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if !wait && e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(GpuError::State {
                path: lock_path,
                detail: format!("cannot lock: {e}"),
            });
        }
    }
    Ok(Some(f))
}

/// Write `bytes` to `path` atomically: a temp file in the same directory, fsync, rename, then
/// fsync the directory (best effort).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// SplitMix64: a small, seedable, deterministic generator (no dependency, same output on
/// every platform).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(spec: &str) -> SimBackend {
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &parse_gpu_list(spec).unwrap(), 7, true).unwrap();
        SimBackend::new(st, c, SimConfig::default()).unwrap()
    }

    #[test]
    fn gpu_lists_parse_and_reject_nonsense() {
        assert_eq!(
            parse_gpu_list("h100-80gb:2, a30").unwrap(),
            vec![("h100-80gb".to_string(), 2), ("a30".to_string(), 1)]
        );
        let e = parse_gpu_list("h100-80gb:x").unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(
            parse_gpu_list("h100-80gb:0"),
            Err(GpuListError::ZeroCount { .. })
        ));
        assert_eq!(parse_gpu_list(" "), Err(GpuListError::Empty));
    }

    #[test]
    fn busy_and_idle_errors_name_the_gpu_once() {
        let mut s = sim("h100-80gb:1");
        let e = s.set_busy(7, 0, None).unwrap_err().to_string();
        assert!(
            e.starts_with("GPU 7: start a process on the instance at 0")
                && e.matches("GPU 7").count() == 1,
            "{e}"
        );
        let e = s.set_idle(0, 4).unwrap_err().to_string();
        assert!(
            e.starts_with("GPU 0: stop the processes on the instance at 4")
                && e.contains("no GPU instance starts at memory slice 4"),
            "{e}"
        );
    }

    /// The attachment seam: the caller's list of held instances becomes the marks (listed
    /// idle ones busy, unlisted busy ones idle), and a second identical sync changes nothing.
    #[test]
    fn sync_work_makes_the_marks_equal_to_the_held_list() {
        let mut s = sim("h100-80gb:1");
        s.create_gi(0, "1g.10gb", 0).unwrap();
        s.create_gi(0, "1g.10gb", 1).unwrap();
        s.create_gi(0, "1g.10gb", 2).unwrap();
        s.set_busy(0, 2, Some(500)).unwrap();
        assert!(!s.capabilities().observes_processes);
        let held = [
            HeldInstance {
                start: 0,
                pid: Some(42),
            },
            HeldInstance {
                start: 1,
                pid: None,
            },
        ];
        assert!(s.sync_work(0, &held).unwrap());
        let pids: Vec<(u8, Vec<u32>)> = s
            .instances(0)
            .unwrap()
            .into_iter()
            .map(|i| (i.start, i.pids))
            .collect();
        assert_eq!(pids[0], (0, vec![42]));
        assert_eq!(pids[1].0, 1);
        assert_eq!(pids[1].1.len(), 1, "a held instance without a PID gets one");
        assert_eq!(pids[2], (2, vec![]), "an unlisted busy instance is idle");
        assert!(!s.sync_work(0, &held).unwrap(), "nothing left to change");
        s.attach_work(0, 2, Some(7)).unwrap();
        assert!(s.instances(0).unwrap()[2].is_busy());
        assert!(
            s.attach_work(0, 5, None).is_err(),
            "no instance starts at 5"
        );
    }

    #[test]
    fn uuids_are_deterministic_and_distinct() {
        let a = sim("h100-80gb:2");
        let b = sim("h100-80gb:2");
        assert_eq!(a.state().gpus[0].uuid, b.state().gpus[0].uuid);
        assert_ne!(a.state().gpus[0].uuid, a.state().gpus[1].uuid);
        assert!(a.state().gpus[0].uuid.starts_with("GPU-"));
        assert_eq!(a.state().gpus[0].uuid.len(), 40);
    }

    #[test]
    fn nvml_semantics_for_create_and_destroy() {
        let mut s = sim("h100-80gb:1");
        let gi = s.create_gi(0, "3g.40gb", 0).unwrap();
        assert!(gi.uuid.as_deref().unwrap().starts_with("MIG-"));
        assert!(matches!(
            s.create_gi(0, "2g.20gb", 2),
            Err(GpuError::InsufficientResources { .. })
        ));
        assert!(matches!(
            s.create_gi(0, "3g.40gb", 1),
            Err(GpuError::InvalidArgument { .. })
        ));
        assert!(matches!(
            s.create_gi(0, "5g.50gb", 0),
            Err(GpuError::NotSupported { .. })
        ));
        assert!(matches!(
            s.create_gi(3, "3g.40gb", 4),
            Err(GpuError::NotFound { .. })
        ));
        s.set_busy(0, 0, Some(42)).unwrap();
        let obs = s.instances(0).unwrap();
        assert!(obs[0].idle().is_none());
        // A stale idle proof is refused by the backend itself.
        let stale = GpuInstance {
            pids: vec![],
            ..obs[0].clone()
        }
        .idle()
        .unwrap();
        assert!(
            matches!(s.destroy_gi(&stale), Err(GpuError::InUse { pids, .. }) if pids == vec![42])
        );
        assert_eq!(s.stats().busy_destroy_attempts, 1);
        assert_eq!(s.set_idle(0, 0).unwrap(), vec![42]);
        s.destroy_gi(&stale).unwrap();
        assert!(matches!(
            s.destroy_gi(&stale),
            Err(GpuError::NotFound { .. })
        ));
        assert!(s.instances(0).unwrap().is_empty());
    }

    #[test]
    fn mig_off_refuses_instances_and_busy_mig_cannot_be_disabled() {
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &[("a100-40gb".into(), 1)], 1, false).unwrap();
        let mut s = SimBackend::new(st, c, SimConfig::default()).unwrap();
        assert!(matches!(s.instances(0), Err(GpuError::NotSupported { .. })));
        assert!(matches!(
            s.create_gi(0, "7g.40gb", 0),
            Err(GpuError::NotSupported { .. })
        ));
        s.set_mig_mode(0, true).unwrap();
        s.create_gi(0, "7g.40gb", 0).unwrap();
        assert!(matches!(
            s.set_mig_mode(0, false),
            Err(GpuError::InUse { .. })
        ));
    }

    #[test]
    fn a_crash_between_gi_and_ci_leaves_a_gi_without_compute_instance() {
        let mut s = sim("a100-40gb:1");
        s.set_config(SimConfig {
            crash: Some(CrashPlan {
                point: Some(CrashPoint::CreateGiAfterGi),
                nth: 1,
            }),
            ..SimConfig::default()
        });
        assert!(matches!(
            s.create_gi(0, "3g.20gb", 4),
            Err(GpuError::Crashed { .. })
        ));
        assert!(matches!(s.gpus(), Err(GpuError::Crashed { .. })));
        let st = s.state().clone();
        let mut s = SimBackend::new(st, Catalog::builtin().clone(), SimConfig::default()).unwrap();
        let obs = s.instances(0).unwrap();
        assert_eq!(obs.len(), 1);
        assert!(obs[0].uuid.is_none() && obs[0].compute_instances.is_empty());
        let done = s.create_default_ci(0, obs[0].gi_id).unwrap();
        assert!(done.uuid.is_some());
    }

    #[test]
    fn faults_are_seeded_and_timed_as_configured() {
        let run = |timing| {
            let mut s = sim("h100-80gb:1");
            s.set_config(SimConfig {
                faults: 1.0,
                fault_seed: 3,
                fault_timing: timing,
                crash: None,
            });
            let r = s.create_gi(0, "7g.80gb", 0);
            assert!(r.unwrap_err().is_transient());
            s.set_config(SimConfig::default());
            s.instances(0).unwrap().len()
        };
        assert_eq!(run(FaultTiming::Before), 0);
        assert_eq!(run(FaultTiming::After), 1);
    }

    #[test]
    fn state_files_round_trip_and_name_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &[("h100-80gb".into(), 1)], 9, true).unwrap();
        {
            let mut b = SimBackend::create(&path, st, c.clone()).unwrap();
            b.create_gi(0, "1g.10gb", 6).unwrap();
        }
        let mut b = SimBackend::open(&path, c.clone(), SimConfig::default()).unwrap();
        assert_eq!(b.instances(0).unwrap()[0].spec(), "1g.10gb@6");
        drop(b);
        let missing = dir.path().join("nope.json");
        let e = SimBackend::open(&missing, c.clone(), SimConfig::default()).unwrap_err();
        assert!(e.to_string().contains("sim-gpu init"), "{e}");
        fs::write(&path, "{\"format\":\"x\"}").unwrap();
        let e = SimBackend::open(&path, c, SimConfig::default()).unwrap_err();
        assert!(e.to_string().contains("not a sim state file"), "{e}");
    }

    #[test]
    fn a_held_lock_gives_none_at_once_and_a_snapshot_reads_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let c = Catalog::builtin().clone();
        let st = SimState::new(&c, &[("h100-80gb".into(), 1)], 9, true).unwrap();
        let mut holder = SimBackend::create(&path, st, c.clone()).unwrap();
        holder.create_gi(0, "3g.40gb", 4).unwrap();
        // flock conflicts between open file descriptions, even in one process.
        assert!(SimBackend::try_open(&path, c.clone(), SimConfig::default())
            .unwrap()
            .is_none());
        let mut snap = SimBackend::snapshot(&path, c.clone(), SimConfig::default()).unwrap();
        assert_eq!(snap.instances(0).unwrap()[0].spec(), "3g.40gb@4");
        // Changes on a snapshot are never written.
        snap.create_gi(0, "1g.10gb", 0).unwrap();
        drop(holder);
        // Another test of this binary may be between fork and exec with a copy of the
        // descriptor (and so of the lock): allow that window to close.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut b = loop {
            match SimBackend::try_open(&path, c.clone(), SimConfig::default()).unwrap() {
                Some(b) => break b,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                None => panic!("the lock is still held 10 s after its holder was dropped"),
            }
        };
        assert_eq!(b.instances(0).unwrap().len(), 1);
    }
}
