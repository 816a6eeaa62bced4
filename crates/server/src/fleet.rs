//! The machine's GPUs as the daemon drives them: the backend (NVML or the simulator), each
//! GPU's sharing mode and limits, the MPS daemons, and layout changes through the agent.
//!
//! Backend choice (`--backend`): `nvml` opens the driver and fails without one; `sim` opens (or
//! creates) `<state dir>/sim-gpus.json`; `auto` tries NVML and falls back to the simulator when
//! no driver or no GPU is found, saying so in the daemon's first log line.
//!
//! Modes: a GPU's configured mode, or for `auto`: at start, MIG when the GPU can do MIG (on
//! NVML: when its MIG mode is already on, since tessera never switches MIG mode on real GPUs),
//! else time-slicing; then the scheduler may change an idle `auto` GPU's mode from what waits
//! ([`Fleet::switch_mode`], docs/mode-auto.md). The simulator's GPUs are put in the MIG mode
//! their configured mode needs when the state file is first created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_agent::{ApplyResult, Journal, OpRecord, Reconciler, RetryPolicy, ThreadSleeper};
use tessera_gpu::mps::{ClientLimits, MpsControl, MpsError, MpsOptions, MpsTarget};
use tessera_gpu::sim::{SimBackend, SimConfig, SimState};
use tessera_gpu::{
    Capabilities, GpuBackend, GpuError, GpuInstance, Health, HealthTracker, HeldInstance, MigMode,
};
use tessera_model::{Catalog, GpuModel, Placed};
use tessera_planner::GpuMode;

use crate::config::{parse_sim_gpus, BackendChoice, Config, ModeChoice, MpsSettings};
use crate::error::ServerError;

/// One GPU's fixed facts, resolved at start.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuFacts {
    /// NVML index.
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Catalog key of its model.
    pub model: String,
    /// Sharing mode (of an `auto` GPU: the mode it is in now).
    pub mode: GpuMode,
    /// Configured `mode: auto`: the scheduler may change its mode while it is idle.
    pub auto: bool,
    /// The GPU can do MIG (NVML reports a MIG mode for it).
    pub mig_capable: bool,
    /// Device memory, MiB.
    pub memory_mib: u64,
    /// MPS settings (mode MPS).
    pub mps: MpsSettings,
    /// Replicas offered (mode timeslice).
    pub replicas: u32,
}

impl GpuFacts {
    /// MPS: memory clients may take, MiB.
    pub fn mps_usable_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.mps.reserve_mib)
    }
}

/// What applying a layout did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Instances destroyed (`PROFILE@START`).
    pub destroyed: Vec<String>,
    /// Instances created.
    pub created: Vec<String>,
    /// Operations a crash had cut short, found on this apply.
    pub recovered: usize,
}

impl ApplyReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        !self.destroyed.is_empty() || !self.created.is_empty()
    }
}

/// Why a layout could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The agent refused (a busy instance in the way, an invalid layout, MIG off); nothing
    /// was changed on the GPU.
    #[error("{message}")]
    Refused {
        /// Whether it was about busy instances.
        busy: bool,
        /// The agent's message (names the instance and its processes).
        message: String,
    },
    /// A backend call failed (after the agent's retries), or the journal failed.
    #[error(transparent)]
    Backend(#[from] tessera_agent::AgentError),
    /// The desired layout could not be recorded first, so nothing was changed.
    #[error("cannot record GPU {gpu}'s desired layout: {source}")]
    Desired {
        /// The GPU.
        gpu: u32,
        /// The store's error.
        #[source]
        source: Box<ServerError>,
    },
}

/// The GPUs, the backend and MPS control, owned by the scheduler thread.
pub struct Fleet {
    backend: Box<dyn GpuBackend>,
    caps: Capabilities,
    mps: MpsControl,
    health: HealthTracker,
    catalog: Catalog,
    /// Every GPU, by index.
    pub gpus: Vec<GpuFacts>,
    describe: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("backend", &self.describe)
            .field("gpus", &self.gpus)
            .finish()
    }
}

/// The root of the MPS pipe and log directories: beside the state directory (`STATE-mps`), not
/// inside it, since the state directory is `0700` and each GPU's MPS directories must be
/// reachable by the one user whose clients it serves (see `MpsControl::open_to`).
pub fn mps_root(state_dir: &Path) -> PathBuf {
    match state_dir.file_name() {
        Some(name) => state_dir.with_file_name(format!("{}-mps", name.to_string_lossy())),
        None => state_dir.join("mps"),
    }
}

/// The simulator's state file inside a state directory.
pub fn sim_state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("sim-gpus.json")
}

impl Fleet {
    /// Open the backend the configuration asks for. Returns the fleet and the sentence the
    /// daemon logs first (which backend, and why).
    pub fn open(
        cfg: &Config,
        state_dir: &Path,
        catalog: &Catalog,
    ) -> Result<(Fleet, String), ServerError> {
        let (backend, why): (Box<dyn GpuBackend>, String) = match cfg.backend {
            BackendChoice::Sim => sim_fleet(cfg, state_dir, catalog, None, " (--backend sim)")?,
            BackendChoice::Nvml => {
                let mut b = tessera_gpu::nvml::NvmlBackend::open(catalog.clone())
                    .map_err(|e| ServerError::backend("open NVML", e))?;
                let n = b
                    .gpus()
                    .map_err(|e| ServerError::backend("list GPUs", e))?
                    .len();
                if n == 0 {
                    return Err(ServerError::NoGpu);
                }
                (Box::new(b), format!("NVML with {n} GPU(s)"))
            }
            BackendChoice::Auto => match tessera_gpu::nvml::NvmlBackend::open(catalog.clone()) {
                Ok(mut b) => match b.gpus() {
                    Ok(g) if !g.is_empty() => {
                        let n = g.len();
                        (
                            Box::new(b),
                            format!("NVML with {n} GPU(s) (--backend auto)"),
                        )
                    }
                    Ok(_) => {
                        drop(b);
                        sim_fleet(
                            cfg,
                            state_dir,
                            catalog,
                            Some("no GPU found by NVML"),
                            " — pass --backend nvml to insist on real GPUs",
                        )?
                    }
                    Err(e) => {
                        drop(b);
                        let reason = format!("NVML cannot list GPUs ({e})");
                        sim_fleet(cfg, state_dir, catalog, Some(&reason), "")?
                    }
                },
                Err(e) => {
                    let reason = format!("no NVIDIA driver ({})", short_reason(&e));
                    sim_fleet(cfg, state_dir, catalog, Some(&reason), "")?
                }
            },
        };
        let fleet = Fleet::build(backend, cfg, state_dir, catalog)?;
        Ok((fleet, why))
    }

    /// A fleet over a backend built by the caller (the demo's in-memory simulator, tests).
    pub fn with_backend(
        backend: Box<dyn GpuBackend>,
        cfg: &Config,
        state_dir: &Path,
        catalog: &Catalog,
    ) -> Result<Fleet, ServerError> {
        Fleet::build(backend, cfg, state_dir, catalog)
    }

    fn build(
        backend: Box<dyn GpuBackend>,
        cfg: &Config,
        state_dir: &Path,
        catalog: &Catalog,
    ) -> Result<Fleet, ServerError> {
        let mps_opts = MpsOptions::new(mps_root(state_dir));
        let caps = backend.capabilities();
        // MPS control daemons run only for GPUs that are device nodes of this host.
        let mps = if caps.device_nodes {
            MpsControl::real(mps_opts)
        } else {
            MpsControl::sim(mps_opts)
        };
        let describe = backend.describe();
        let mut fleet = Fleet {
            backend,
            caps,
            mps,
            health: HealthTracker::default(),
            catalog: catalog.clone(),
            gpus: Vec::new(),
            describe,
        };
        fleet.resolve(cfg)?;
        Ok(fleet)
    }

    fn resolve(&mut self, cfg: &Config) -> Result<(), ServerError> {
        let infos = self
            .backend
            .as_mut()
            .gpus()
            .map_err(|e| ServerError::backend("list GPUs", e))?;
        // The daemon addresses GPUs by index everywhere (API paths, the database, the
        // config): index N must be the N-th GPU.
        for (pos, info) in infos.iter().enumerate() {
            if info.index as usize != pos {
                let fix = match self.describe.strip_prefix("sim:") {
                    Some(file) => format!(
                        "set `gpus[{pos}].index` to {pos} in {file}, or move the file away to create a fresh simulated fleet"
                    ),
                    None => "the backend numbers its GPUs out of order; report this with `nvidia-smi -L`".into(),
                };
                return Err(ServerError::fleet(format!(
                    "{}: GPU number {} in the list has index {}, but indices must run 0, 1, 2, … in list order; {fix}",
                    self.describe,
                    pos + 1,
                    info.index
                )));
            }
        }
        for info in infos {
            let settings = cfg.gpu(info.index);
            let model_key = info.model.clone().ok_or_else(|| {
                ServerError::fleet(format!(
                    "GPU {} ({}) is not in the catalog; add it with `tessera catalog import` and --catalog",
                    info.index, info.name
                ))
            })?;
            let mig_on = info.mig.map(|m| m.current).unwrap_or(false);
            let mig_capable = info.mig.is_some();
            let mode = match settings.mode {
                ModeChoice::Auto if mig_capable && (self.caps.switches_mig_mode || mig_on) => {
                    GpuMode::Mig
                }
                ModeChoice::Auto => GpuMode::Timeslice,
                ModeChoice::Mig => GpuMode::Mig,
                ModeChoice::Mps => GpuMode::Mps,
                ModeChoice::Timeslice => GpuMode::Timeslice,
            };
            let want_mig = mode == GpuMode::Mig;
            if want_mig && !mig_capable {
                return Err(ServerError::fleet(format!(
                    "GPU {} ({}) cannot do MIG; set `mode: mps` or `mode: timeslice` for it in the config",
                    info.index, info.name
                )));
            }
            if mig_capable && want_mig != mig_on {
                if self.caps.switches_mig_mode {
                    self.switch_mig(info.index, want_mig)?;
                } else {
                    return Err(ServerError::fleet(format!(
                        "GPU {}: configured mode {} needs MIG mode {}, but it is {}; change it with `nvidia-smi -i {} -mig {}` (Ampere: then reset the GPU), or change the GPU's mode in the config",
                        info.index,
                        mode,
                        if want_mig { "on" } else { "off" },
                        if mig_on { "on" } else { "off" },
                        info.index,
                        u8::from(want_mig)
                    )));
                }
            }
            let memory_mib = self
                .catalog
                .get(&model_key)
                .and_then(|m| m.memory_mib())
                .filter(|_| info.memory_mib == 0)
                .unwrap_or(info.memory_mib);
            let facts = GpuFacts {
                index: info.index,
                uuid: info.uuid.clone(),
                model: model_key,
                mode,
                auto: settings.mode == ModeChoice::Auto,
                mig_capable,
                memory_mib,
                mps: settings.mps,
                replicas: settings.replicas,
            };
            if mode == GpuMode::Mps {
                let target = MpsTarget::gpu(facts.index, facts.uuid.clone());
                self.mps
                    .start(&target, Some(self.backend.as_mut()))
                    .map_err(|source| ServerError::Mps {
                        gpu: facts.index,
                        source,
                    })?;
            }
            self.gpus.push(facts);
        }
        for g in &cfg.gpus {
            if !self.gpus.iter().any(|f| f.index == g.index) {
                return Err(ServerError::fleet(format!(
                    "the config sets GPU {} but the machine has GPUs 0..{}",
                    g.index,
                    self.gpus.len().saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    fn switch_mig(&mut self, gpu: u32, on: bool) -> Result<(), ServerError> {
        let m = self
            .backend
            .set_mig_mode(gpu, on)
            .map_err(|e| ServerError::Fleet {
                problem: format!(
                    "simulated GPU {gpu}: {e}; delete the sim state file to start afresh"
                ),
                source: Some(e),
            })?;
        if m != MigMode::steady(on) {
            return Err(ServerError::fleet(format!(
                "simulated GPU {gpu}: MIG mode is {m} after the change"
            )));
        }
        Ok(())
    }

    /// Whether the mode of `gpu` may be changed by the daemon now, given what the backend can
    /// do: MIG mode is switched only where [`Capabilities::switches_mig_mode`] (no reset, no one
    /// else's work: the simulator); a GPU without MIG changes between MPS and time-slicing
    /// anywhere. The caller checks that nothing runs on it.
    pub fn can_switch(&self, gpu: u32) -> bool {
        self.gpus
            .get(gpu as usize)
            .is_some_and(|f| f.auto && (self.caps.switches_mig_mode || !f.mig_capable))
    }

    /// Whether MIG mode is on now on `gpu` (`false` when the GPU cannot do MIG or the backend
    /// cannot tell).
    pub fn mig_on(&mut self, gpu: u32) -> bool {
        self.backend.mig_mode(gpu).is_ok_and(|m| m.current)
    }

    /// Change an idle `auto` GPU's mode (the caller checked it is idle and, for MIG, destroyed
    /// its instances through [`Fleet::apply`] first): stop its MPS daemon when it leaves MPS,
    /// switch MIG mode on or off when it enters or leaves MIG, start the MPS daemon when it
    /// enters MPS. Each step is idempotent, so a switch cut short is finished by calling this
    /// again. Refused, changing nothing, where [`Fleet::can_switch`] is false.
    pub fn switch_mode(&mut self, gpu: u32, to: GpuMode) -> Result<(), ServerError> {
        if !self.can_switch(gpu) {
            return Err(ServerError::fleet(format!(
                "GPU {gpu}: its mode cannot be changed by the daemon (it is not `mode: auto`, or its MIG mode needs the administrator: `nvidia-smi -i {gpu} -mig 0|1`)"
            )));
        }
        let f = self.gpus[gpu as usize].clone();
        let target = MpsTarget::gpu(f.index, f.uuid.clone());
        if to != GpuMode::Mps {
            self.mps
                .stop(&target, Some(self.backend.as_mut()))
                .map_err(|source| ServerError::Mps { gpu, source })?;
        }
        if f.mig_capable {
            let want = to == GpuMode::Mig;
            let now = self
                .backend
                .mig_mode(gpu)
                .map_err(|e| ServerError::backend("read MIG mode", e))?;
            if now != MigMode::steady(want) {
                self.switch_mig(gpu, want)?;
            }
        }
        if to == GpuMode::Mps {
            self.mps
                .start(&target, Some(self.backend.as_mut()))
                .map_err(|source| ServerError::Mps { gpu, source })?;
        }
        self.gpus[gpu as usize].mode = to;
        Ok(())
    }

    /// `nvml` or `sim:PATH`.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// What the backend is (see [`Capabilities`]).
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The catalog model of a GPU.
    pub fn model(&self, gpu: u32) -> &GpuModel {
        let key = &self.gpus[gpu as usize].model;
        self.catalog
            .get(key)
            .expect("GPU models were resolved from the catalog at start")
    }

    /// Read the GPUs' XID events (without waiting) and return each GPU's health. An XID that
    /// is not an application error marks the whole GPU unhealthy until the daemon restarts
    /// (every slice of it, not just the instance NVML names).
    pub fn poll_health(&mut self) -> BTreeMap<u32, Health> {
        match self.backend.as_mut().poll_events(0) {
            Ok(events) => {
                for e in events {
                    if self.health.observe(&e) {
                        tracing::error!(
                            "GPU {}: XID {} — no new leases on it until the daemon restarts",
                            e.gpu,
                            e.xid
                        );
                    }
                }
            }
            Err(GpuError::NotSupported { .. }) => {}
            Err(e) => tracing::debug!("cannot read GPU events: {e}"),
        }
        self.gpus
            .iter()
            .map(|g| (g.index, self.health.gpu(g.index)))
            .collect()
    }

    /// The GPU instances of a MIG GPU now.
    pub fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        let b = self.backend.as_mut();
        retry(|| b.instances(gpu))
    }

    /// A lease's work starts on the instance at `start` (see [`GpuBackend::attach_work`]:
    /// the simulator marks it busy, NVML sees the work's processes itself).
    pub fn attach(&mut self, gpu: u32, start: u8, pid: Option<u32>) {
        if let Err(e) = self.backend.attach_work(gpu, start, pid) {
            tracing::warn!("GPU {gpu}: cannot record work on the instance at {start}: {e}");
        }
    }

    /// The leased instances of a MIG GPU, for backends that learn work only from the daemon
    /// (see [`GpuBackend::sync_work`]). Returns whether the backend's view changed.
    pub fn sync_work(&mut self, gpu: u32, held: &[HeldInstance]) -> bool {
        match self.backend.sync_work(gpu, held) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!("GPU {gpu}: cannot record which instances hold work: {e}");
                false
            }
        }
    }

    /// The environment of an MPS client of `uid` on `gpu` with these limits; first the GPU's
    /// MPS pipe and log directories are handed to `uid` (one user's server at a time).
    pub fn mps_env(
        &self,
        gpu: u32,
        uid: u32,
        memory_mib: u64,
        sm_percent: u8,
    ) -> Result<BTreeMap<String, String>, MpsError> {
        let f = &self.gpus[gpu as usize];
        let target = MpsTarget::gpu(gpu, f.uuid.clone());
        self.mps.open_to(&target, uid)?;
        self.mps.client_env(
            &target,
            &ClientLimits {
                active_thread_percentage: Some(sm_percent),
                pinned_mem_limit_mib: Some(memory_mib),
            },
        )
    }

    /// Change a MIG GPU to exactly `desired` through the agent's reconciler: destroy the idle
    /// instances not in it, create the missing ones at their placements, keep every instance
    /// that matches (same UUID). Operations cut short by a crash are recovered first. Refused,
    /// changing nothing, when the layout is invalid or would remove a busy instance. Each
    /// operation is journalled (intent before, outcome after) in `journal`.
    pub fn apply(
        &mut self,
        gpu: u32,
        desired: &[Placed],
        journal: &mut dyn Journal,
    ) -> Result<ApplyReport, ApplyError> {
        let catalog = self.catalog.clone();
        let mut sleeper = ThreadSleeper;
        let mut rec = Reconciler::new(self.backend.as_mut(), journal, &catalog, &mut sleeper)
            .with_policy(RetryPolicy {
                max_failures: 4,
                base_delay: std::time::Duration::from_millis(20),
                max_delay: std::time::Duration::from_millis(500),
                max_rounds: 32,
            });
        // `apply_gpu` first recovers the intents a crash left without outcome.
        let report = rec.apply_gpu(gpu, desired)?;
        if let ApplyResult::Refused { refusal } = &report.result {
            return Err(ApplyError::Refused {
                busy: refusal.is_busy(),
                message: refusal.to_string(),
            });
        }
        let mut out = ApplyReport {
            recovered: report.recovered.len(),
            ..ApplyReport::default()
        };
        for op in &report.applied {
            match op {
                OpRecord::DestroyGi { profile, start, .. } => {
                    out.destroyed.push(format!("{profile}@{start}"))
                }
                OpRecord::CreateGi { profile, start, .. } => {
                    out.created.push(format!("{profile}@{start}"))
                }
                OpRecord::CreateCi { .. } => {}
            }
        }
        Ok(out)
    }
}

/// Retry transient backend errors a few times.
fn retry<T>(mut f: impl FnMut() -> Result<T, GpuError>) -> Result<T, GpuError> {
    let mut last = None;
    for attempt in 0..5u32 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("the loop ran"))
}

fn short_reason(e: &GpuError) -> String {
    match e {
        GpuError::LibraryNotFound { .. } => "libnvidia-ml.so.1 not found".into(),
        GpuError::DriverNotLoaded => "the kernel driver is not loaded".into(),
        other => other.to_string(),
    }
}

fn sim_counts(b: &SimBackend) -> Vec<(String, u32)> {
    let mut counts: Vec<(String, u32)> = Vec::new();
    for g in &b.state().gpus {
        match counts.iter_mut().find(|(m, _)| *m == g.model) {
            Some((_, n)) => *n += 1,
            None => counts.push((g.model.clone(), 1)),
        }
    }
    counts
}

fn describe_sim(b: &SimBackend) -> String {
    let list: Vec<String> = sim_counts(b)
        .iter()
        .map(|(m, n)| format!("{n}× {m}"))
        .collect();
    format!(
        "{}, state in {}",
        list.join(" + "),
        b.describe().trim_start_matches("sim:")
    )
}

/// A note when the simulated fleet in the state file is not the one `sim_gpus` asks for.
fn sim_mismatch(cfg: &Config, catalog: &Catalog, b: &SimBackend) -> String {
    let Ok(want) = parse_sim_gpus(&cfg.sim_gpus) else {
        return String::new();
    };
    let want: Vec<(String, u32)> = want
        .into_iter()
        .map(|(m, n)| (catalog.get(&m).map_or(m, |x| x.key.clone()), n))
        .collect();
    if want == sim_counts(b) {
        String::new()
    } else {
        format!(
            "; NOTE: the state directory already holds this simulated fleet, so sim_gpus `{}` is ignored (delete {} to start afresh)",
            cfg.sim_gpus,
            b.describe().trim_start_matches("sim:")
        )
    }
}

/// The simulated fleet and the sentence naming it: `simulated fleet (...)` with `hint`, after
/// `REASON; using a ` when it stands in for real GPUs.
fn sim_fleet(
    cfg: &Config,
    state_dir: &Path,
    catalog: &Catalog,
    reason: Option<&str>,
    hint: &str,
) -> Result<(Box<dyn GpuBackend>, String), ServerError> {
    let s = open_sim(cfg, state_dir, catalog)?;
    let fleet = format!(
        "simulated fleet ({}){hint}{}",
        describe_sim(&s),
        sim_mismatch(cfg, catalog, &s)
    );
    let why = match reason {
        Some(r) => format!("{r}; using a {fleet}"),
        None => fleet,
    };
    Ok((Box::new(s), why))
}

/// Open `sim_state` (default `<state dir>/sim-gpus.json`), creating it from `sim_gpus` when
/// it does not exist.
fn open_sim(cfg: &Config, state_dir: &Path, catalog: &Catalog) -> Result<SimBackend, ServerError> {
    let path = cfg
        .sim_state
        .clone()
        .unwrap_or_else(|| sim_state_path(state_dir));
    if path.exists() {
        return SimBackend::open(&path, catalog.clone(), SimConfig::default())
            .map_err(|e| ServerError::backend("open the simulated fleet", e));
    }
    let list = parse_sim_gpus(&cfg.sim_gpus).map_err(|p| ServerError::Config {
        path: PathBuf::from("--sim-gpus"),
        problem: p.to_string(),
    })?;
    let state = SimState::new(catalog, &list, 0x7e55e7a, true)
        .map_err(|e| ServerError::backend("create the simulated fleet", e))?;
    SimBackend::create(&path, state, catalog.clone())
        .map_err(|e| ServerError::backend("create the simulated fleet", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_log_line_names_the_simulated_fleet_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            backend: BackendChoice::Sim,
            sim_gpus: "h100-80gb:1".into(),
            ..Config::default()
        };
        let catalog = Catalog::builtin();
        let (_, why) = Fleet::open(&cfg, dir.path(), catalog).unwrap();
        assert!(why.starts_with("simulated fleet ("), "{why}");
        assert!(why.ends_with(") (--backend sim)"), "{why}");
        let (_, why) = sim_fleet(
            &cfg,
            dir.path(),
            catalog,
            Some("no GPU found by NVML"),
            " — pass --backend nvml to insist on real GPUs",
        )
        .unwrap();
        assert!(
            why.starts_with("no GPU found by NVML; using a simulated fleet ("),
            "{why}"
        );
        assert!(
            why.ends_with(") — pass --backend nvml to insist on real GPUs"),
            "{why}"
        );
        // Another fleet in the state file than sim_gpus asks for is noted last.
        let other = Config {
            sim_gpus: "h100-80gb:2".into(),
            ..cfg
        };
        let (_, why) = sim_fleet(
            &other,
            dir.path(),
            catalog,
            Some("no NVIDIA driver (x)"),
            "",
        )
        .unwrap();
        assert!(
            why.starts_with("no NVIDIA driver (x); using a simulated fleet (")
                && why.contains("); NOTE: the state directory already holds"),
            "{why}"
        );
    }
}
