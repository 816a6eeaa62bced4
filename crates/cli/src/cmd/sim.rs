//! `tessera sim --trace DIR`: replay a GPU cluster trace under each slicing policy and report how
//! much of the cluster each one hands out (saturate mode) or how long pods wait (replay mode).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tessera_sim::report::{run_replay, run_saturate, saturate_work, ReplayReport, SaturateReport};
use tessera_sim::{output, PolicyKind, Progress, SimContext, Trace};

use crate::output::{emit, table, CliError, Ctx};

/// Simulation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// FGD protocol: shuffled pods arrive until 130 % of capacity, never leave.
    Saturate,
    /// Pods arrive and leave at their trace times, waiting in a queue when they do not fit.
    Replay,
}

/// How GPUs are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sharing {
    /// MIG instances of one model (`--gpu-model`), the default.
    Mig,
    /// The FGD paper's model: GPU fractions (`gpu_milli`) on the trace's own GPUs.
    Fractional,
    /// Each GPU MIG (pods that need isolation) or MPS (the rest), chosen when it is idle.
    Hybrid,
}

/// Arguments of `tessera sim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Trace directory holding openb_node_list_gpu_node.csv and openb_pod_list_default.csv.
    #[arg(long, value_name = "DIR")]
    pub trace: PathBuf,
    /// Policies to compare, comma-separated (default: every policy of the sharing mode; mig:
    /// tessera,nos,best-fit,static-mig,whole-gpu; fractional: tessera,fgd,best-fit,gpu-packing,
    /// gpu-clustering,dot-product,random).
    #[arg(long = "policy", value_delimiter = ',')]
    pub policies: Vec<String>,
    /// How GPUs are shared: MIG instances, or GPU fractions as in the FGD paper.
    #[arg(long, value_enum, default_value_t = Sharing::Mig)]
    pub sharing: Sharing,
    /// The pod list inside the trace directory (fractional mode).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "openb_pod_list_default.csv"
    )]
    pub pod_list: String,
    /// Hybrid mode: the share of shared pods that need isolation (0 to 1), drawn per pod.
    #[arg(long, default_value_t = 0.5, value_name = "F")]
    pub isolation_share: f64,
    /// The MIG model every trace GPU becomes.
    #[arg(long, default_value = "a100-80gb", value_name = "KEY")]
    pub gpu_model: String,
    /// Simulation mode.
    #[arg(long, value_enum, default_value_t = Mode::Saturate)]
    pub mode: Mode,
    /// Seeds (saturate mode): `A..B` (inclusive), a comma list, or one number.
    #[arg(long, default_value = "42..51")]
    pub seeds: String,
    /// Write CSV files and plots (PNG, SVG) into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Use only the first N nodes of the trace.
    #[arg(long, value_name = "N")]
    pub max_nodes: Option<usize>,
    /// Use only the first N pods of the trace.
    #[arg(long, value_name = "N")]
    pub max_pods: Option<usize>,
    /// Keep an evenly spread fraction of the nodes (0 < F ≤ 1), e.g. 0.02 for a cluster small
    /// enough that the real arrival times queue in replay mode.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub node_fraction: f64,
    /// Replay mode: divide arrival times by this factor (lifetimes unchanged), raising the load.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub speedup: f64,
    /// Worker threads (default: the available cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Parse `A..B` (inclusive), `A,B,C` or `A`.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--seeds `{text}` is not a seed list; write a range such as 42..51 (inclusive), a list such as 1,2,3, or one number"
        ))
    };
    let t = text.trim();
    if let Some((a, b)) = t.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b
            .trim()
            .trim_start_matches('=')
            .parse()
            .map_err(|_| bad())?;
        if b < a || b - a >= 10_000 {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    let seeds: Vec<u64> = t
        .split(',')
        .map(|s| s.trim().parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if seeds.is_empty() {
        return Err(bad());
    }
    Ok(seeds)
}

pub(crate) struct Bar(pub(crate) ProgressBar);

impl Progress for Bar {
    fn advance(&self, pods: u64) {
        self.0.inc(pods);
    }
}

pub(crate) fn bar(total: u64) -> Bar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} pods ({eta} left)",
    ) {
        pb.set_style(style);
    }
    Bar(pb)
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if args.sharing != Sharing::Mig {
        return crate::cmd::sim_fractional::run(args, ctx);
    }
    if args.pod_list != tessera_sim::trace::POD_FILE {
        return Err(CliError::Usage(
            "--pod-list applies to --sharing fractional; MIG mode reads openb_pod_list_default.csv"
                .into(),
        ));
    }
    let model = ctx.model(&args.gpu_model)?;
    let mut policies = Vec::new();
    let defaults: Vec<String> = ["tessera", "nos", "best-fit", "static-mig", "whole-gpu"]
        .map(String::from)
        .to_vec();
    let names = if args.policies.is_empty() {
        &defaults
    } else {
        &args.policies
    };
    for p in names {
        let p: PolicyKind = p
            .parse()
            .map_err(|e: tessera_planner::UnknownPolicy| CliError::Usage(e.to_string()))?;
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    if !(args.speedup > 0.0 && args.speedup.is_finite()) {
        return Err(CliError::Usage(format!(
            "--speedup {} must be a positive number",
            args.speedup
        )));
    }
    if !(args.node_fraction > 0.0 && args.node_fraction <= 1.0) {
        return Err(CliError::Usage(format!(
            "--node-fraction {} must be above 0 and at most 1",
            args.node_fraction
        )));
    }
    let seeds = parse_seeds(&args.seeds)?;
    let threads = args
        .threads
        .unwrap_or_else(tessera_sim::default_threads)
        .max(1);
    let trace = Trace::load(&args.trace)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .truncate(args.max_nodes, args.max_pods)
        .sample_nodes(args.node_fraction);
    if trace.nodes.is_empty() || trace.gpu_count() == 0 {
        return Err(CliError::Usage(format!(
            "{}: the trace has no GPU nodes to simulate (check --max-nodes)",
            args.trace.display()
        )));
    }
    let sim = SimContext::new(model, trace).map_err(|e| CliError::Usage(e.to_string()))?;
    let started = Instant::now();
    match args.mode {
        Mode::Saturate => {
            let progress = bar(saturate_work(&sim, &policies, &seeds));
            let report = run_saturate(&sim, &policies, &seeds, threads, &progress)
                .map_err(|e| CliError::Other(e.to_string()))?;
            progress.0.finish_and_clear();
            write_files(args, |dir| output::write_saturate(&report, dir))?;
            emit(ctx.output, &report, || saturate_table(&report))?;
        }
        Mode::Replay => {
            let progress = bar(sim.pods.len() as u64 * policies.len() as u64);
            let report = run_replay(&sim, &policies, args.speedup, threads, &progress)
                .map_err(|e| CliError::Other(e.to_string()))?;
            progress.0.finish_and_clear();
            write_files(args, |dir| output::write_replay(&report, dir))?;
            emit(ctx.output, &report, || replay_table(&report))?;
        }
    }
    eprintln!(
        "simulated in {:.1} s on {threads} thread(s)",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_files(
    args: &Args,
    write: impl FnOnce(&std::path::Path) -> Result<Vec<PathBuf>, output::OutputError>,
) -> Result<(), CliError> {
    if let Some(dir) = &args.out {
        let files = write(dir).map_err(|e| CliError::Other(e.to_string()))?;
        eprintln!("wrote {} files to {}", files.len(), dir.display());
    }
    Ok(())
}

fn header(s: &tessera_sim::report::Setup) -> String {
    let mut out = format!(
        "{} GPUs on {} nodes, each an {} ({} compute slices); {} trace pods.\n",
        s.gpus, s.nodes, s.gpu_model, s.capacity_slices, s.trace_pods
    );
    if let Some(mix) = &s.static_mig_partition {
        let parts: Vec<String> = mix
            .iter()
            .map(|m| format!("{} × {}", m.gpus, m.layout))
            .collect();
        out.push_str(&format!("static-mig partition: {}\n", parts.join(", ")));
    }
    out
}

fn saturate_table(r: &SaturateReport) -> String {
    let mut t = table(&[
        "POLICY",
        "ALLOCATED@100%",
        "UNALLOCATED@100%",
        "SD",
        "MILLI SERVED@100%",
        "ALLOCATED@130%",
        "FAILED@100%",
        "CREATES",
        "DESTROYS",
        "REPARTITIONS",
        "BUSY DESTROYED",
    ]);
    for p in &r.policies {
        t.add_row(vec![
            p.policy.to_string(),
            format!("{:.2} %", p.allocated_pct_at_100),
            format!("{:.2} %", p.unallocated_pct_at_100),
            format!("{:.2}", p.allocated_pct_at_100_sd),
            format!("{:.2} %", p.milli_served_pct_at_100),
            format!("{:.2} %", p.allocated_pct_at_130),
            format!("{:.1}", p.failed_pods),
            format!("{:.0}", p.creates),
            format!("{:.0}", p.destroys),
            format!("{:.0}", p.repartitions),
            p.busy_destroyed.to_string(),
        ]);
    }
    // A comparison report: every column matters, and wrapped it is unreadable.
    t.no_wrap();
    let seeds = match (r.seeds.first(), r.seeds.last()) {
        (Some(a), Some(b)) if r.seeds.len() > 1 => format!("{} seeds ({a}..{b})", r.seeds.len()),
        _ => format!("seed {}", r.seeds.first().copied().unwrap_or(0)),
    };
    let floor = r
        .policies
        .first()
        .map(|p| {
            format!(
                "hole floor at 100 %: {:.2} % (unallocated that no policy placing every sub-GPU pod can avoid)\n",
                p.hole_floor_pct_at_100
            )
        })
        .unwrap_or_default();
    format!(
        "{}saturate mode, mean over {seeds}; shares are % of the cluster's compute slices\n{t}\n{floor}",
        header(&r.setup)
    )
}

fn replay_table(r: &ReplayReport) -> String {
    let mut t = table(&[
        "POLICY",
        "DELAY MEAN",
        "P95",
        "MAX",
        "DELAYED",
        "MEAN SHARED/WHOLE/MULTI",
        "NEVER STARTED",
        "ALLOC MEAN",
        "ALLOC PEAK",
        "REPARTITIONS",
        "CREATES",
        "DESTROYS",
        "BUSY DESTROYED",
    ]);
    for p in &r.policies {
        t.add_row(vec![
            p.policy.to_string(),
            format!("{:.0} s", p.delay_mean_s),
            format!("{:.0} s", p.delay_p95_s),
            format!("{} s", p.delay_max_s),
            p.delayed_gpu_pods.to_string(),
            p.delay_by_class
                .iter()
                .map(|c| format!("{:.0}", c.mean_s))
                .collect::<Vec<_>>()
                .join(" / ")
                + " s",
            p.never_started.to_string(),
            format!("{:.2} %", p.allocated_mean_pct),
            format!("{:.2} %", p.allocated_peak_pct),
            p.repartitions.to_string(),
            p.creates.to_string(),
            p.destroys.to_string(),
            p.busy_destroyed.to_string(),
        ]);
    }
    t.no_wrap();
    format!(
        "{}replay mode, arrivals sped up ×{}; delays are of GPU pods\n{t}\n",
        header(&r.setup),
        r.speedup
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_inclusive_ranges_and_lists() {
        assert_eq!(
            parse_seeds("42..51").unwrap(),
            (42..=51).collect::<Vec<_>>()
        );
        assert_eq!(parse_seeds("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("7").unwrap(), vec![7]);
        assert_eq!(parse_seeds("3, 1").unwrap(), vec![3, 1]);
        assert!(parse_seeds("5..1").is_err());
        assert!(parse_seeds("x").is_err());
    }
}
