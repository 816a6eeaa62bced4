//! `tessera agent status|apply|mig-mode`: the node agent on a real GPU (`--backend nvml`) or on
//! a simulated machine (`--backend sim:STATE`, or `sim` for the daemon's simulated GPUs); the
//! `--backend` syntax is `tessera serve`'s.
//!
//! A simulated state file is locked by whoever uses it, and a running `tessera serve` holds
//! its lock for its whole life: `status` then reads a snapshot without the lock (and says
//! so); `apply` and `mig-mode` wait `--lock-wait` for it with a message, then give up.
//!
//! Exit codes of `apply`: 0 every GPU matches its desired layout; 1 a GPU was refused because
//! busy instances are in the way (or MIG mode is off), nothing changed on it; 2 bad input or
//! an error. `--crash-after N` (hidden, for tests) exits with 137 right after the N-th op.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_agent::{
    read_desired, resolve, ApplyResult, FileJournal, GpuReport, Journal, MemJournal, Reconciler,
    Refusal, RetryPolicy, TargetGpu, ThreadSleeper,
};
use tessera_gpu::sim::SimBackend;
use tessera_gpu::{
    catalog_diff, open_backend, BackendSpec, FaultTiming, GpuBackend, GpuError, GpuInfo,
    GpuInstance, Health, HealthTracker, MigMode, ProfileDiff, SimConfig,
};
use tessera_model::Placed;
use tessera_server::wire::{format_ms, parse_duration_ms};

use crate::backend::{parse_backend, Backend};
use crate::output::{emit, escape_cell, read_file, table, CliError, Ctx, Format};
use crate::render::draw_layout;

/// `tessera agent` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCmd {
    /// Show each GPU: MIG mode, health, instances (profile, start, UUID, busy, PIDs), and for
    /// NVML the differences between the GPU's profile table and the catalog.
    Status(StatusArgs),
    /// Reconcile GPUs to desired layouts: keep what matches, destroy idle extras, create what
    /// is missing; refuse a GPU whose busy instances are in the way.
    Apply(ApplyArgs),
    /// Report MIG mode, or change it with --enable/--disable (Ampere needs a GPU reset).
    MigMode(MigModeArgs),
}

/// Arguments of `agent status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Backend: `auto`, `nvml`, `sim` (the daemon's simulated GPUs) or `sim:STATE`.
    #[arg(long, env = "TESSERA_BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: Backend,
    /// Wait this long for XID events before reporting health.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub watch_ms: u32,
}

/// Arguments of `agent apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Backend: `auto`, `nvml`, `sim` (the daemon's simulated GPUs) or `sim:STATE`.
    #[arg(long, env = "TESSERA_BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: Backend,
    /// The GPU to reconcile to SPEC... (no SPEC: an empty layout).
    #[arg(long, required_unless_present = "desired", conflicts_with = "desired")]
    pub gpu: Option<u32>,
    /// Desired instances as PROFILE@START, e.g. `3g.40gb@0 2g.20gb@4`.
    #[arg(value_name = "SPEC", requires = "gpu")]
    pub specs: Vec<String>,
    /// Desired layouts of many GPUs (YAML/JSON: `gpus: {0: [3g.40gb@0], 1: []}`), or an NVIDIA
    /// mig-parted config file or a nos knownMigGeometries file with --select.
    #[arg(long, value_name = "FILE")]
    pub desired: Option<PathBuf>,
    /// With a mig-parted file: the config to apply; with a nos file: the geometry number
    /// (1-based) of each GPU's model.
    #[arg(long, value_name = "NAME")]
    pub select: Option<String>,
    /// Directory of the operation journal (default: none kept).
    #[arg(long, value_name = "DIR")]
    pub journal: Option<PathBuf>,
    /// Simulated backend only: probability that a call fails with a transient error.
    #[arg(long, value_name = "RATE")]
    pub faults: Option<f64>,
    /// Simulated backend only: seed of the fault generator.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub fault_seed: u64,
    /// Simulated backend only: whether faults strike before or after a change takes effect.
    #[arg(long, value_enum, default_value_t = Timing::Before)]
    pub fault_timing: Timing,
    /// How long to wait for a simulated state file that another process (a running
    /// `tessera serve`) has locked.
    #[arg(long, value_name = "DUR", default_value = "10s")]
    pub lock_wait: String,
    /// Consecutive retryable failures before giving up on a GPU.
    #[arg(long, default_value_t = 6)]
    pub max_retries: u32,
    /// First retry delay in milliseconds (doubles per retry, capped at 3 s).
    #[arg(long, default_value_t = 100, hide = true)]
    pub backoff_ms: u64,
    /// Exit abruptly (status 137) right after the N-th operation (crash test hook).
    #[arg(long, value_name = "N", hide = true)]
    pub crash_after: Option<u32>,
}

/// When injected faults strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Timing {
    /// Before the call takes effect.
    Before,
    /// After the call took effect.
    After,
    /// Either, at random.
    Mixed,
}

/// Arguments of `agent mig-mode`.
#[derive(Debug, clap::Args)]
pub struct MigModeArgs {
    /// Backend: `auto`, `nvml`, `sim` (the daemon's simulated GPUs) or `sim:STATE`.
    #[arg(long, env = "TESSERA_BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: Backend,
    /// GPU index.
    #[arg(long)]
    pub gpu: u32,
    /// Turn MIG mode on.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Turn MIG mode off (every GPU instance must be gone).
    #[arg(long)]
    pub disable: bool,
    /// How long to wait for a simulated state file that another process (a running
    /// `tessera serve`) has locked.
    #[arg(long, value_name = "DUR", default_value = "10s")]
    pub lock_wait: String,
}

/// Run an `agent` subcommand.
pub fn run(cmd: &AgentCmd, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match cmd {
        AgentCmd::Status(a) => status(a, ctx),
        AgentCmd::Apply(a) => apply(a, ctx),
        AgentCmd::MigMode(a) => mig_mode(a, ctx),
    }
}

/// How a command uses the GPUs.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Reading only: a locked simulated state file is read as a snapshot.
    Read,
    /// Changing them: wait this long for a locked state file.
    Write(Duration),
}

fn lock_wait(text: &str) -> Result<Duration, CliError> {
    parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| CliError::Usage(format!("--lock-wait: {e}")))
}

/// The daemon's simulated GPUs with the default state directory (`--backend sim`).
fn default_sim_state() -> PathBuf {
    tessera_server::fleet::sim_state_path(&tessera_server::config::Config::default().state_dir())
}

/// Resolve `--backend` to NVML or a state file. `auto` takes NVML when it finds a GPU, else
/// the daemon's simulated GPUs when their file exists.
fn resolve_backend(ctx: &Ctx, backend: &Backend) -> Result<BackendSpec, CliError> {
    let sim_default = |why: &str| -> Result<BackendSpec, CliError> {
        let path = default_sim_state();
        if path.is_file() {
            Ok(BackendSpec::Sim(path))
        } else {
            Err(CliError::Usage(format!(
                "{why}, and there are no simulated GPUs at {} (`tessera serve --backend sim` \
                 makes them there); give --backend sim:STATE for a state file made by \
                 `tessera sim-gpu init STATE --gpus h100-80gb:1`",
                path.display()
            )))
        }
    };
    match backend {
        Backend::Nvml => Ok(BackendSpec::Nvml),
        Backend::Sim(Some(p)) => Ok(BackendSpec::Sim(p.clone())),
        Backend::Sim(None) => sim_default("--backend sim"),
        Backend::Auto => match open_backend(&BackendSpec::Nvml, &ctx.catalog, SimConfig::default())
            .and_then(|mut b| b.gpus())
        {
            Ok(g) if !g.is_empty() => Ok(BackendSpec::Nvml),
            Ok(_) => sim_default("--backend auto: NVML found no GPU"),
            Err(e) => sim_default(&format!("--backend auto: NVML is not usable ({e})")),
        },
    }
}

/// Open the backend; with `Access::Read` on a locked state file, a snapshot: then the second
/// value describes it for the output.
fn open(
    ctx: &Ctx,
    spec: &BackendSpec,
    sim: SimConfig,
    access: Access,
) -> Result<(Box<dyn GpuBackend>, Option<String>), CliError> {
    let gpu_err = |e: GpuError| match e {
        GpuError::State { .. } => CliError::Usage(e.to_string()),
        other => CliError::Other(other.to_string()),
    };
    let BackendSpec::Sim(path) = spec else {
        return Ok((
            open_backend(spec, &ctx.catalog, sim).map_err(gpu_err)?,
            None,
        ));
    };
    if let Some(b) = SimBackend::try_open(path, ctx.catalog.clone(), sim).map_err(gpu_err)? {
        return Ok((Box::new(b), None));
    }
    let who = "another process holds its lock (a running `tessera serve` keeps its simulated \
               GPUs' file locked while it runs)";
    match access {
        Access::Read => {
            eprintln!(
                "note: {}: {who}; showing a snapshot read without the lock",
                path.display()
            );
            let b = SimBackend::snapshot(path, ctx.catalog.clone(), sim).map_err(gpu_err)?;
            let shown = format!("sim:{} (a snapshot, read without the lock)", path.display());
            Ok((Box::new(b), Some(shown)))
        }
        Access::Write(wait) => {
            eprintln!(
                "tessera: {}: {who}; waiting up to {} for it",
                path.display(),
                format_ms(wait.as_millis() as u64)
            );
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100).min(wait));
                if let Some(b) =
                    SimBackend::try_open(path, ctx.catalog.clone(), sim).map_err(gpu_err)?
                {
                    return Ok((Box::new(b), None));
                }
            }
            Err(CliError::Other(format!(
                "{}: still locked after {}; {who}. Stop the daemon first, or change its GPUs \
                 through it (`tessera status`, `tessera drain`)",
                path.display(),
                format_ms(wait.as_millis() as u64)
            )))
        }
    }
}

// ---------------------------------------------------------------------------------- status

/// `agent status` output (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct StatusOut {
    /// The backend used (`nvml`, `sim:PATH`).
    pub backend: String,
    /// Every GPU.
    pub gpus: Vec<GpuStatus>,
}

/// One GPU in `agent status`: what the backend reports of it (its fields inline), then
/// health, instances and notes.
#[derive(Debug, Serialize)]
pub struct GpuStatus {
    /// Index, UUID, name, catalog model, memory, MIG mode (`null`: the GPU cannot do MIG)
    /// and compute mode.
    #[serde(flatten)]
    pub gpu: GpuInfo,
    /// Health from XID events (every instance shares it).
    pub health: Health,
    /// GPU instances, by start.
    pub instances: Vec<InstanceRow>,
    /// NVML only: differences between the GPU's profile table and the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog_diff: Option<Vec<ProfileDiff>>,
    /// Why something could not be read, if anything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One GPU instance in `agent status`.
#[derive(Debug, Serialize)]
pub struct InstanceRow {
    /// Profile name.
    pub profile: String,
    /// Placement start.
    pub start: u8,
    /// GPU-instance ID.
    pub gi_id: u32,
    /// MIG device UUID (`null` while the GI has no compute instance).
    pub uuid: Option<String>,
    /// Whether processes run on it.
    pub busy: bool,
    /// The processes.
    pub pids: Vec<u32>,
    /// `healthy` or `unhealthy` (an XID anywhere on the GPU marks every instance).
    pub health: String,
}

fn status(a: &StatusArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let spec = resolve_backend(ctx, &a.backend)?;
    let (mut b, snapshot) = open(ctx, &spec, SimConfig::default(), Access::Read)?;
    let gpus = b.gpus().map_err(|e| CliError::Other(e.to_string()))?;
    let mut health = HealthTracker::default();
    let mut event_note = None;
    match b.poll_events(a.watch_ms) {
        Ok(events) => {
            for e in &events {
                health.observe(e);
            }
        }
        Err(e) => event_note = Some(format!("XID events not available: {e}")),
    }
    let mut out = StatusOut {
        backend: snapshot.unwrap_or_else(|| b.describe()),
        gpus: Vec::new(),
    };
    let mut failed = false;
    for g in gpus {
        let h = health.gpu(g.index);
        let mut notes: Vec<String> = event_note.iter().cloned().collect();
        let mut instances = Vec::new();
        if g.mig.is_some_and(|m| m.current) {
            match b.instances(g.index) {
                Ok(list) => {
                    instances = list
                        .iter()
                        .map(|i| InstanceRow {
                            profile: i.profile.clone(),
                            start: i.start,
                            gi_id: i.gi_id,
                            uuid: i.uuid.clone(),
                            busy: i.is_busy(),
                            pids: i.pids.clone(),
                            health: if h.is_healthy() {
                                "healthy"
                            } else {
                                "unhealthy"
                            }
                            .into(),
                        })
                        .collect()
                }
                Err(e) => {
                    failed = true;
                    notes.push(format!("instances: {e}"));
                }
            }
        }
        let catalog_diff = if spec == BackendSpec::Nvml {
            match catalog_diff(b.as_mut(), &ctx.catalog, &g) {
                Ok(Some(d)) => Some(d),
                Ok(None) => {
                    notes.push(format!(
                        "`{}` matches no catalog model; import its tables with `tessera catalog import`",
                        g.name
                    ));
                    None
                }
                Err(e) => {
                    notes.push(format!("catalog diff not available: {e}"));
                    None
                }
            }
        } else {
            None
        };
        out.gpus.push(GpuStatus {
            gpu: g,
            health: h,
            instances,
            catalog_diff,
            notes,
        });
    }
    emit(ctx.output, &out, || status_table(ctx, &out))?;
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn health_text(h: &Health) -> String {
    match h {
        Health::Healthy => "healthy".into(),
        Health::Unhealthy { xids } => {
            let x: Vec<String> = xids.iter().map(|x| x.to_string()).collect();
            format!("UNHEALTHY (XID {})", x.join(", "))
        }
    }
}

fn status_table(ctx: &Ctx, out: &StatusOut) -> String {
    let mut s = format!("backend: {}\n", out.backend);
    for g in &out.gpus {
        let info = &g.gpu;
        s.push_str(&format!(
            "\nGPU {}  {}  {}\n  {}\n  memory {} MiB, MIG {}, compute mode {}, {}\n",
            info.index,
            info.model.as_deref().unwrap_or("(not in catalog)"),
            escape_cell(&info.name),
            escape_cell(&info.uuid),
            info.memory_mib,
            info.mig
                .map(|m| m.to_string())
                .unwrap_or_else(|| "not supported".into()),
            info.compute_mode
                .map(|m| m.to_string())
                .unwrap_or_else(|| "?".into()),
            health_text(&g.health),
        ));
        if info.mig.is_some_and(|m| m.current) {
            if g.instances.is_empty() {
                s.push_str("  no GPU instances\n");
            } else {
                // The GPU-instance ID only with -o wide, so the whole UUIDs fit 80 columns.
                let wide = ctx.output == Format::Wide;
                let mut header = vec!["PROFILE", "START"];
                if wide {
                    header.push("GI");
                }
                header.extend(["UUID", "BUSY", "PIDS"]);
                let mut t = table(&header);
                for i in &g.instances {
                    let mut row = vec![i.profile.clone(), i.start.to_string()];
                    if wide {
                        row.push(i.gi_id.to_string());
                    }
                    row.extend([
                        uuid_cell(i.uuid.as_deref()),
                        if i.busy { "busy" } else { "idle" }.into(),
                        pid_list(&i.pids),
                    ]);
                    t.add_row(row);
                }
                t.keep_whole(header.len() - 3).narrower(2);
                s.push_str(&indent(&t.to_string()));
                s.push('\n');
                if let Some(m) = info.model.as_deref().and_then(|k| ctx.catalog.get(k)) {
                    let drawn: Vec<(Placed, String)> = g
                        .instances
                        .iter()
                        .filter_map(|i| {
                            let p = m.profile_named(&i.profile)?;
                            let label = if i.busy { "busy" } else { "" };
                            Some((Placed::new(p, i.start), label.to_string()))
                        })
                        .collect();
                    s.push_str(&indent(&draw_layout(m, &drawn)));
                }
            }
        }
        if let Some(diff) = &g.catalog_diff {
            if diff.is_empty() {
                s.push_str("  profile table matches the catalog\n");
            } else {
                s.push_str("  profile table differs from the catalog:\n");
                for d in diff {
                    s.push_str(&format!("    - {d}\n"));
                }
            }
        }
        for n in &g.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
    }
    s
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect::<String>()
}

/// The UUID column of an instance table.
fn uuid_cell(uuid: Option<&str>) -> String {
    uuid.unwrap_or("(no compute instance)").to_string()
}

/// PIDs as `1,2,3`.
fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

// ----------------------------------------------------------------------------------- apply

/// `agent apply` output (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct ApplyOut {
    /// The backend used.
    pub backend: String,
    /// One entry per GPU, in index order.
    pub gpus: Vec<ApplyGpu>,
}

/// One GPU's apply result.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ApplyGpu {
    /// Converged or refused (see [`GpuReport`]).
    Report(Box<GpuReport>),
    /// Stopped with an error.
    Error {
        /// The GPU.
        gpu: u32,
        /// Always `error`.
        status: String,
        /// The message.
        error: String,
    },
}

/// The machine's GPUs as counted configs need them: model, MIG mode, current instances.
fn targets(backend: &mut dyn GpuBackend) -> Result<Vec<TargetGpu>, CliError> {
    let err = |e: GpuError| CliError::Other(e.to_string());
    let mut out = Vec::new();
    for g in backend.gpus().map_err(err)? {
        let mig_enabled = g.mig.is_some_and(|m| m.current || m.pending);
        let instances = if g.mig.is_some_and(|m| m.current) {
            backend
                .instances(g.index)
                .map_err(err)?
                .into_iter()
                .map(|i| (i.profile, i.start))
                .collect()
        } else {
            Vec::new()
        };
        out.push(TargetGpu {
            index: g.index,
            name: g.name,
            model: g.model,
            mig_enabled,
            instances,
        });
    }
    Ok(out)
}

fn apply(a: &ApplyArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let spec = resolve_backend(ctx, &a.backend)?;
    let wait = lock_wait(&a.lock_wait)?;
    if let Some(rate) = a.faults {
        if !(0.0..=1.0).contains(&rate) {
            return Err(CliError::Usage(format!(
                "--faults {rate}: give a probability between 0 and 1"
            )));
        }
        if spec == BackendSpec::Nvml {
            return Err(CliError::Usage(
                "--faults works only with --backend sim:STATE; real GPUs fail on their own".into(),
            ));
        }
    }
    if let (Some(sel), None) = (&a.select, &a.desired) {
        return Err(CliError::Usage(format!(
            "--select {sel} picks a config of a --desired FILE (mig-parted or nos); give --desired FILE"
        )));
    }
    let doc = match &a.desired {
        Some(path) => Some(
            read_desired(&read_file(path)?)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let sim = SimConfig {
        faults: a.faults.unwrap_or(0.0),
        fault_seed: a.fault_seed,
        fault_timing: match a.fault_timing {
            Timing::Before => FaultTiming::Before,
            Timing::After => FaultTiming::After,
            Timing::Mixed => FaultTiming::Mixed,
        },
        crash: None,
    };
    let (mut backend, _) = open(ctx, &spec, sim, Access::Write(wait))?;
    let desired = match (doc, a.gpu) {
        (Some(doc), _) => {
            let path = a.desired.as_deref().unwrap_or(std::path::Path::new("-"));
            let gpus = if matches!(doc, tessera_agent::DesiredDoc::Layouts(_)) {
                Vec::new()
            } else {
                targets(backend.as_mut())?
            };
            resolve(&doc, a.select.as_deref(), &gpus, &ctx.catalog)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
        }
        (None, Some(gpu)) => [(gpu, a.specs.clone())].into_iter().collect(),
        (None, None) => {
            return Err(CliError::Usage(
                "give --gpu N [SPEC...] or --desired FILE".into(),
            ))
        }
    };
    let mut file_journal;
    let mut mem_journal = MemJournal::new();
    let journal: &mut dyn Journal = match &a.journal {
        Some(dir) => {
            file_journal = FileJournal::open(dir).map_err(|e| CliError::Other(e.to_string()))?;
            &mut file_journal
        }
        None => &mut mem_journal,
    };
    let policy = RetryPolicy {
        max_failures: a.max_retries,
        base_delay: Duration::from_millis(a.backoff_ms),
        ..RetryPolicy::default()
    };
    let mut sleeper = ThreadSleeper;
    let results = Reconciler::new(backend.as_mut(), journal, &ctx.catalog, &mut sleeper)
        .with_policy(policy)
        .crash_after(a.crash_after)
        .apply_all(&desired);
    if results
        .iter()
        .any(|(_, r)| matches!(r, Err(e) if e.is_crash()))
    {
        // The test hook: die as abruptly as a killed agent would, printing nothing.
        std::process::exit(137);
    }
    let mut code = 0u8;
    let mut gpus = Vec::new();
    for (gpu, r) in results {
        match r {
            Ok(report) => {
                if let ApplyResult::Refused { refusal } = &report.result {
                    code = code.max(match refusal {
                        Refusal::InvalidLayout { .. } => 2,
                        Refusal::Busy { .. } | Refusal::MigDisabled { .. } => 1,
                    });
                }
                gpus.push(ApplyGpu::Report(Box::new(report)));
            }
            Err(e) => {
                code = 2;
                gpus.push(ApplyGpu::Error {
                    gpu,
                    status: "error".into(),
                    error: e.to_string(),
                });
            }
        }
    }
    let out = ApplyOut {
        backend: backend.describe(),
        gpus,
    };
    emit(ctx.output, &out, || apply_table(&out))?;
    Ok(ExitCode::from(code))
}

fn instance_table(instances: &[GpuInstance]) -> String {
    if instances.is_empty() {
        return "  no GPU instances\n".into();
    }
    let mut t = table(&["PROFILE", "START", "GI", "UUID", "BUSY"]);
    for i in instances {
        t.add_row(vec![
            i.profile.clone(),
            i.start.to_string(),
            i.gi_id.to_string(),
            uuid_cell(i.uuid.as_deref()),
            if i.is_busy() {
                format!("busy ({})", pid_list(&i.pids))
            } else {
                "idle".into()
            },
        ]);
    }
    t.keep_whole(3).narrower(2);
    indent(&t.to_string())
}

fn apply_table(out: &ApplyOut) -> String {
    let mut s = String::new();
    for g in &out.gpus {
        match g {
            ApplyGpu::Report(r) => {
                match &r.result {
                    ApplyResult::Converged => s.push_str(&format!(
                        "GPU {} ({}): matches the desired layout ({} op(s) applied)\n",
                        r.gpu,
                        r.model,
                        r.applied.len()
                    )),
                    ApplyResult::Refused { refusal } => s.push_str(&format!("{refusal}\n")),
                }
                for rec in &r.recovered {
                    s.push_str(&format!(
                        "  recovered from a crash: {} ({})\n",
                        rec.op,
                        if rec.applied {
                            "had taken effect"
                        } else {
                            "had not taken effect"
                        }
                    ));
                }
                for op in &r.applied {
                    s.push_str(&format!("  done: {op}\n"));
                }
                if !r.retried.is_empty() {
                    s.push_str(&format!("  retried {} time(s)\n", r.retried.len()));
                }
                s.push_str(&instance_table(&r.instances));
            }
            ApplyGpu::Error { gpu, error, .. } => {
                s.push_str(&format!("GPU {gpu}: error: {error}\n"));
            }
        }
    }
    s
}

// -------------------------------------------------------------------------------- mig-mode

/// `agent mig-mode` output (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct MigModeOut {
    /// GPU index.
    pub gpu: u32,
    /// MIG mode before the command.
    pub before: MigMode,
    /// MIG mode after the command.
    pub after: MigMode,
    /// Whether a GPU reset is needed for the change to take effect.
    pub reset_required: bool,
    /// Advice for people.
    pub note: Option<String>,
}

/// Why MIG mode stays on: each instance (and who uses it) and the commands that free the GPU.
fn instances_in_the_way(gpu: u32, backend: &Backend, instances: &[GpuInstance]) -> String {
    let list: Vec<String> = instances
        .iter()
        .map(|i| {
            if i.pids.is_empty() {
                format!("{} (idle)", i.spec())
            } else {
                let pids: Vec<String> = i.pids.iter().map(u32::to_string).collect();
                format!("{} (in use by PID {})", i.spec(), pids.join(", "))
            }
        })
        .collect();
    let busy = instances.iter().any(|i| !i.pids.is_empty());
    format!(
        "GPU {gpu}: MIG mode cannot be turned off while it has GPU instances: {}. Remove them \
         first with `tessera agent apply --backend {backend} --gpu {gpu}` (an empty layout{}), \
         then run this again",
        list.join(", "),
        if busy {
            "; it refuses instances in use, so stop their processes first"
        } else {
            ""
        }
    )
}

fn mig_mode(a: &MigModeArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let spec = resolve_backend(ctx, &a.backend)?;
    let wait = lock_wait(&a.lock_wait)?;
    let (mut b, _) = open(ctx, &spec, SimConfig::default(), Access::Write(wait))?;
    let before = b
        .mig_mode(a.gpu)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let want = if a.enable {
        Some(true)
    } else if a.disable {
        Some(false)
    } else {
        None
    };
    if want == Some(false) && before.pending {
        // MIG mode cannot go off while GPU instances exist: name them and the command that
        // removes them, rather than the driver's "in use".
        let instances = b
            .instances(a.gpu)
            .map_err(|e| CliError::Other(e.to_string()))?;
        if !instances.is_empty() {
            eprintln!(
                "tessera: {}",
                instances_in_the_way(a.gpu, &a.backend, &instances)
            );
            return Ok(ExitCode::from(1));
        }
    }
    let after = match want {
        Some(on) if on != before.pending => b
            .set_mig_mode(a.gpu, on)
            .map_err(|e| CliError::Other(e.to_string()))?,
        _ => before,
    };
    let reset_required = after.current != after.pending;
    let note = if reset_required {
        Some(format!(
            "the change is pending: Ampere GPUs (A100, A30) apply it only after a GPU reset with no \
             process on the GPU (`nvidia-smi -r -i {}`); Hopper and newer switch at once but lose the \
             mode on driver reload",
            a.gpu
        ))
    } else if want.is_none() {
        Some("report only; pass --enable or --disable to change it (on Ampere that needs a GPU reset)".into())
    } else {
        None
    };
    let out = MigModeOut {
        gpu: a.gpu,
        before,
        after,
        reset_required,
        note,
    };
    emit(ctx.output, &out, || {
        let mut s = if want.is_some() && before != after {
            format!(
                "GPU {}: MIG mode {} -> {}\n",
                out.gpu, out.before, out.after
            )
        } else {
            format!("GPU {}: MIG mode {}\n", out.gpu, out.after)
        };
        if let Some(n) = &out.note {
            s.push_str(&format!("note: {n}\n"));
        }
        s
    })?;
    Ok(ExitCode::SUCCESS)
}
