//! `tessera sim-gpu init|busy|idle|xid`: create and poke a simulated machine of MIG GPUs kept
//! in a state file, which `--backend sim:STATE` then uses (for tests and demos).

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{GpuBackend, GpuError, MigMode, SimBackend, SimConfig, SimState};

use crate::output::{emit, table, CliError, Ctx};

/// `tessera sim-gpu` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SimGpuCmd {
    /// Create a simulated machine: `tessera sim-gpu init STATE --gpus h100-80gb:2,a100-40gb:1`.
    Init(InitArgs),
    /// Attach a simulated process to the instance that starts at START.
    Busy(BusyArgs),
    /// Remove every simulated process from the instance that starts at START.
    Idle(IdleArgs),
    /// Queue an XID error event on a GPU (read by `agent status`).
    Xid(XidArgs),
}

/// Arguments of `sim-gpu init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// State file to create.
    pub state: PathBuf,
    /// GPUs as MODEL:COUNT[,MODEL:COUNT...], e.g. `h100-80gb:2,a100-40gb:1`.
    #[arg(long)]
    pub gpus: String,
    /// Seed of the simulated UUIDs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Start with MIG mode disabled (it is enabled by default).
    #[arg(long)]
    pub mig_disabled: bool,
    /// Replace an existing state file.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `sim-gpu busy`.
#[derive(Debug, clap::Args)]
pub struct BusyArgs {
    /// State file.
    pub state: PathBuf,
    /// GPU index.
    #[arg(long)]
    pub gpu: u32,
    /// Placement start of the instance.
    #[arg(long)]
    pub start: u8,
    /// PID to attach (default: the next free simulated PID).
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Arguments of `sim-gpu idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// State file.
    pub state: PathBuf,
    /// GPU index.
    #[arg(long)]
    pub gpu: u32,
    /// Placement start of the instance.
    #[arg(long)]
    pub start: u8,
}

/// Arguments of `sim-gpu xid`.
#[derive(Debug, clap::Args)]
pub struct XidArgs {
    /// State file.
    pub state: PathBuf,
    /// GPU index.
    #[arg(long)]
    pub gpu: u32,
    /// XID number, e.g. 79 (fallen off the bus) or 48 (double-bit ECC).
    #[arg(long)]
    pub xid: u64,
    /// GPU instance the event names, if any.
    #[arg(long)]
    pub gi: Option<u32>,
}

/// One simulated GPU as `sim-gpu init` prints it (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct SimGpuRow {
    /// GPU index.
    pub index: u32,
    /// Catalog key.
    pub model: String,
    /// Simulated UUID.
    pub uuid: String,
    /// MIG mode.
    pub mig: MigMode,
}

/// What `busy`/`idle`/`xid` did (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct SimChange {
    /// GPU index.
    pub gpu: u32,
    /// Placement start of the instance (absent for `xid`).
    pub start: Option<u8>,
    /// PIDs attached (`busy`) or removed (`idle`).
    pub pids: Vec<u32>,
    /// One line for people.
    pub message: String,
}

fn gpu_err(e: GpuError) -> CliError {
    match e {
        GpuError::NotFound { .. } | GpuError::InvalidArgument { .. } | GpuError::State { .. } => {
            CliError::Usage(e.to_string())
        }
        other => CliError::Other(other.to_string()),
    }
}

fn open(ctx: &Ctx, state: &std::path::Path) -> Result<SimBackend, CliError> {
    SimBackend::open(state, ctx.catalog.clone(), SimConfig::default()).map_err(gpu_err)
}

/// Run a `sim-gpu` subcommand.
pub fn run(cmd: &SimGpuCmd, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match cmd {
        SimGpuCmd::Init(a) => init(a, ctx),
        SimGpuCmd::Busy(a) => {
            let mut b = open(ctx, &a.state)?;
            let pid = b.set_busy(a.gpu, a.start, a.pid).map_err(gpu_err)?;
            let spec = spec_at(&mut b, a.gpu, a.start);
            change(
                ctx,
                a.gpu,
                Some(a.start),
                vec![pid],
                format!("GPU {}: process {pid} now runs on {spec}", a.gpu),
            )
        }
        SimGpuCmd::Idle(a) => {
            let mut b = open(ctx, &a.state)?;
            let pids = b.set_idle(a.gpu, a.start).map_err(gpu_err)?;
            let spec = spec_at(&mut b, a.gpu, a.start);
            let msg = if pids.is_empty() {
                format!("GPU {}: {spec} was already idle", a.gpu)
            } else {
                let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                format!(
                    "GPU {}: stopped process(es) {} on {spec}",
                    a.gpu,
                    list.join(", ")
                )
            };
            change(ctx, a.gpu, Some(a.start), pids, msg)
        }
        SimGpuCmd::Xid(a) => {
            let mut b = open(ctx, &a.state)?;
            b.inject_xid(a.gpu, a.xid, a.gi).map_err(gpu_err)?;
            change(
                ctx,
                a.gpu,
                None,
                vec![],
                format!("GPU {}: queued XID {}", a.gpu, a.xid),
            )
        }
    }
}

fn spec_at(b: &mut SimBackend, gpu: u32, start: u8) -> String {
    b.instances(gpu)
        .ok()
        .and_then(|v| v.into_iter().find(|i| i.start == start))
        .map(|i| i.spec())
        .unwrap_or_else(|| format!("the instance at {start}"))
}

fn change(
    ctx: &Ctx,
    gpu: u32,
    start: Option<u8>,
    pids: Vec<u32>,
    message: String,
) -> Result<ExitCode, CliError> {
    let out = SimChange {
        gpu,
        start,
        pids,
        message,
    };
    emit(ctx.output, &out, || format!("{}\n", out.message))?;
    Ok(ExitCode::SUCCESS)
}

fn init(a: &InitArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let list = parse_gpu_list(&a.gpus).map_err(|e| CliError::Usage(format!("--gpus: {e}")))?;
    if a.state.exists() && !a.force {
        return Err(CliError::Usage(format!(
            "{} exists; pass --force to replace it",
            a.state.display()
        )));
    }
    let state =
        SimState::new(&ctx.catalog, &list, a.seed, !a.mig_disabled).map_err(|e| match e {
            GpuError::NotFound { detail, .. } => CliError::Usage(format!("--gpus: {detail}")),
            other => gpu_err(other),
        })?;
    let b = SimBackend::create(&a.state, state, ctx.catalog.clone()).map_err(gpu_err)?;
    let rows: Vec<SimGpuRow> = b
        .state()
        .gpus
        .iter()
        .map(|g| SimGpuRow {
            index: g.index,
            model: g.model.clone(),
            uuid: g.uuid.clone(),
            mig: g.mig,
        })
        .collect();
    emit(ctx.output, &rows, || {
        let mut t = table(&["GPU", "MODEL", "UUID", "MIG"]);
        for r in &rows {
            t.add_row(vec![
                r.index.to_string(),
                r.model.clone(),
                r.uuid.clone(),
                r.mig.to_string(),
            ]);
        }
        format!("{t}\nsimulated machine written to {}\n", a.state.display())
    })?;
    Ok(ExitCode::SUCCESS)
}
