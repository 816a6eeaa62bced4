//! `tessera serve`: run the daemon that queues slice requests and leases GPU slices.

use std::path::PathBuf;
use std::process::ExitCode;

use tessera_server::config::{BackendChoice, Config};

use crate::backend::{parse_backend, Backend};
use crate::output::{CliError, Ctx};

/// Arguments of `tessera serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// GPU backend: `auto` (NVML when it finds a GPU, else simulated), `nvml`, `sim` (simulated
    /// GPUs in <state dir>/sim-gpus.json) or `sim:STATE` (simulated GPUs in the file STATE).
    /// The same syntax as `tessera agent --backend`.
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    pub backend: Option<Backend>,
    /// Simulated fleet (`--backend sim`, or `auto` without a GPU), made when its state file
    /// does not exist yet: `MODEL:COUNT[,MODEL:COUNT]`.
    #[arg(long, value_name = "LIST")]
    pub sim_gpus: Option<String>,
    /// State directory (SQLite database, simulated GPUs, MPS pipes).
    /// Default: $XDG_RUNTIME_DIR/tessera/state, else /tmp/tessera/state.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Unix socket of the API (mode 0660).
    /// Default: $TESSERA_SOCKET, else $XDG_RUNTIME_DIR/tessera/tessera.sock, else /tmp/tessera/tessera.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Also serve the API, /metrics and the web view (/) over HTTP on this address (needs a
    /// bearer token: $TESSERA_TOKEN, or token_file in the config).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// YAML configuration (per-GPU modes, scheduler and lease settings); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Delete the state database's journal at start: the recovery when it fails its
    /// checksums (layouts are then taken from the GPUs as they are).
    #[arg(long)]
    pub discard_journal: bool,
    /// Log format on stderr: `text` (human, the default) or `json` (one object per line, for
    /// journald or a log shipper). `RUST_LOG` sets the levels (default `info`; e.g.
    /// `RUST_LOG=tessera_server=debug`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// How `tessera serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (`timestamp`, `level`, `fields.message`, the event's fields,
    /// the spans).
    Json,
}

/// The configuration the flags describe (file first, flags on top).
pub fn resolve_config(args: &Args) -> Result<Config, CliError> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path).map_err(|e| CliError::Usage(e.to_string()))?,
        None => Config::default(),
    };
    if let Some(b) = &args.backend {
        cfg.backend = match b {
            Backend::Auto => BackendChoice::Auto,
            Backend::Nvml => BackendChoice::Nvml,
            Backend::Sim(state) => {
                if state.is_some() {
                    cfg.sim_state.clone_from(state);
                }
                BackendChoice::Sim
            }
        };
    }
    if let Some(s) = &args.sim_gpus {
        tessera_server::config::parse_sim_gpus(s)
            .map_err(|e| CliError::Usage(format!("--sim-gpus: {e}")))?;
        cfg.sim_gpus = s.clone();
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = Some(d.clone());
    }
    if let Some(s) = &args.socket {
        cfg.socket = Some(s.clone());
    }
    if let Some(l) = &args.listen {
        cfg.listen = Some(l.clone());
    }
    cfg.discard_journal = args.discard_journal;
    Ok(cfg)
}

/// Log to stderr in `format`; `RUST_LOG` overrides the default level (info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let cfg = resolve_config(args)?;
    init_logging(args.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(tessera_server::serve::serve(cfg, ctx.catalog.clone()))?;
    Ok(ExitCode::SUCCESS)
}
