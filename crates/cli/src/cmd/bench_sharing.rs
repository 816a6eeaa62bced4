//! `tessera bench sharing`: measure what time-slicing, MPS and MIG give each tenant of a GPU,
//! idle and loaded, as the seed study did on an A30 (library: `tessera_bench`). Also the hidden
//! `tessera bench tenant`, the entry point of the tenant processes the benchmark starts.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tessera_bench::{
    run_sharing, write_outputs, Backend, Config, Limits, Mode, Progress, TenantCommand, Workload,
};

use crate::output::{emit, CliError, Ctx};

/// Arguments of `tessera bench sharing`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tenants (separate processes) sharing the GPU in the loaded runs.
    #[arg(long, default_value_t = 4)]
    pub tenants: u32,
    /// Sharing modes to measure, comma-separated: timeslice, mps, mig.
    #[arg(long, default_value = "timeslice,mps,mig")]
    pub modes: String,
    /// Workloads, comma-separated: htod, dtoh, dtod, gemm-small, gemm-large.
    #[arg(long, default_value = "htod,dtoh,dtod,gemm-small,gemm-large")]
    pub workloads: String,
    /// Seconds each run (idle or loaded) measures.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Directory for report.json, report.csv, table.md, table.txt and one PNG per workload.
    #[arg(long, default_value = "tessera-bench-sharing", value_name = "DIR")]
    pub out: PathBuf,
    /// Scale each dimension of the large GEMM (8192×8192×16400) by this factor in (0, 1], for
    /// GPUs or slices too small for it (0.5 → 4096×4096×8200).
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    pub gemm_large_scale: f64,
    /// Never change the compute mode, MIG mode or any other GPU setting: MPS starts in the
    /// current compute mode. Use it on machines you do not own.
    #[arg(long)]
    pub keep_gpu_settings: bool,
    /// The GPU to measure (nvidia-smi index).
    #[arg(long, default_value_t = 0, value_name = "INDEX")]
    pub gpu: u32,
    /// Testing: run CPU stand-in workloads instead of CUDA (no GPU needed; not GPU numbers).
    #[arg(long, hide = true)]
    pub cpu_standin: bool,
    /// Testing: read `nvidia-smi -L` output from FILE instead of running nvidia-smi.
    #[arg(long, hide = true, value_name = "FILE")]
    pub listing: Option<PathBuf>,
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Bar {
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        Bar { bar }
    }
}

impl Progress for Bar {
    fn begin(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn start(&self, what: &str) {
        self.bar.set_message(what.to_string());
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn warn(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("warning: {msg}");
        } else {
            self.bar.println(format!("warning: {msg}"));
        }
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn usage(e: tessera_bench::BenchError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Run the benchmark.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    // Parse: validation only.
    let modes = Mode::parse_list(&args.modes).map_err(usage)?;
    let workloads = Workload::parse_list(&args.workloads).map_err(usage)?;
    let listing = match &args.listing {
        Some(p) => Some(crate::output::read_file(p)?),
        None => None,
    };
    let cfg = Config {
        tenants: args.tenants,
        modes,
        workloads,
        duration_s: args.duration,
        gemm_large_scale: args.gemm_large_scale,
        keep_gpu_settings: args.keep_gpu_settings,
        backend: if args.cpu_standin {
            Backend::CpuStandin
        } else {
            Backend::Cuda
        },
        gpu_index: args.gpu,
        listing,
        limits: Limits::default(),
    };
    cfg.validate().map_err(usage)?;
    // Resolve: the tenants are this very binary.
    let program = std::env::current_exe().map_err(|e| {
        CliError::Other(format!("cannot find this executable to start tenants: {e}"))
    })?;
    let cmd = TenantCommand {
        program,
        args: vec!["bench".into(), "tenant".into()],
    };
    // Run. Ctrl-C stops the tenants and the MPS daemon cleanly instead of killing this process.
    tessera_bench::interrupt::install();
    let bar = Bar::new();
    let report = run_sharing(&cfg, &cmd, &bar).map_err(|e| {
        bar.finish();
        CliError::Other(e.to_string())
    })?;
    let files = write_outputs(&report, &args.out).map_err(|e| CliError::Other(e.to_string()))?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    eprintln!("wrote {}: {}", args.out.display(), names.join(", "));
    // Render.
    emit(ctx.output, &report, || report.text_table())?;
    if report.results.is_empty() {
        eprintln!(
            "error: none of the requested modes can run on this machine (see the notes above)"
        );
        return Ok(ExitCode::from(1));
    }
    if report.has_failures() {
        eprintln!(
            "error: some runs failed; their cells say `failed` and report.json has the reasons"
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// The hidden `tessera bench tenant`: one tenant process, driven by its parent over stdin/stdout.
pub fn run_tenant() -> Result<ExitCode, CliError> {
    let code = tessera_bench::tenant_main();
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
