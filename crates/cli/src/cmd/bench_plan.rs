//! `tessera bench plan` (planning time and result on a generated cluster) and
//! `tessera bench quality` (each policy against the exact optimum on small random instances).

use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;
use tessera_planner::gen::{bench_input, BenchSpec, ContendedSpec};
use tessera_planner::quality::{contended_quality, quality};
use tessera_planner::{plan, PlanOptions, Policy};

use crate::cmd::plan::parse_policy;
use crate::output::{emit, table, CliError, Ctx};

/// Arguments of `tessera bench plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Nodes of the generated cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: usize,
    /// Pending requests.
    #[arg(long, default_value_t = 10_000)]
    pub pending: usize,
    /// Seed of the cluster and the requests (the same seed gives the same input to every policy).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Planning algorithm: tessera, nos, first-fit or exact.
    #[arg(long, default_value = "tessera", value_parser = parse_policy)]
    pub policy: Policy,
    /// Timed runs (the median and the minimum are reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// The `bench plan` result (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct PlanBench {
    /// Policy measured.
    pub policy: Policy,
    /// Nodes of the cluster.
    pub nodes: usize,
    /// GPUs of the cluster.
    pub gpus: usize,
    /// Pending requests.
    pub pending: usize,
    /// Median wall time of one `plan` call, in milliseconds.
    pub median_ms: f64,
    /// Fastest call, in milliseconds.
    pub min_ms: f64,
    /// Requests served by the plan.
    pub served: usize,
    /// Their summed priority.
    pub served_priority: u64,
}

/// Run `bench plan`.
pub fn run_plan(args: &PlanArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if args.runs == 0 {
        return Err(CliError::Usage("--runs must be at least 1".into()));
    }
    let spec = BenchSpec {
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        pending: args.pending,
        seed: args.seed,
    };
    let (cluster, requests) = bench_input(&ctx.catalog, &spec);
    let opts = PlanOptions::with_policy(args.policy);
    let mut times = Vec::with_capacity(args.runs);
    let mut last = None;
    for _ in 0..args.runs {
        let t = Instant::now();
        let p = plan(&ctx.catalog, &cluster, &requests, &opts)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        // Dropping the previous plan is not part of the measurement.
        last = Some(p);
    }
    let p = last.expect("at least one run");
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let out = PlanBench {
        policy: args.policy,
        nodes: args.nodes,
        gpus: args.nodes * args.gpus_per_node,
        pending: args.pending,
        median_ms: (median * 1000.0).round() / 1000.0,
        min_ms: (times[0] * 1000.0).round() / 1000.0,
        served: p.stats.served,
        served_priority: p.stats.served_priority,
    };
    emit(ctx.output, &out, || {
        let mut t = table(&[
            "POLICY", "NODES", "GPUS", "PENDING", "MEDIAN", "MIN", "SERVED", "PRIORITY",
        ]);
        t.add_row(vec![
            out.policy.to_string(),
            out.nodes.to_string(),
            out.gpus.to_string(),
            out.pending.to_string(),
            format!("{:.1} ms", out.median_ms),
            format!("{:.1} ms", out.min_ms),
            out.served.to_string(),
            out.served_priority.to_string(),
        ]);
        format!("{t}\n")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `tessera bench quality`.
#[derive(Debug, clap::Args)]
pub struct QualityArgs {
    /// Instances to plan (default: 1000 small ones, 20 contended ones).
    #[arg(long)]
    pub instances: Option<u64>,
    /// Seed of the first instance (instance k uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Instance shape: `small` (1-6 GPUs of every mode, against the exhaustive `exact` policy)
    /// or `contended` (MIG clusters of mixed A30/A100/H100/H100 NVL GPUs, a third of the
    /// instances busy, more demand than fits, against an integer-programming optimum).
    #[arg(long, default_value = "small", value_parser = ["small", "contended"])]
    pub shape: String,
    /// Contended: GPUs per instance, `A-B` (or one number).
    #[arg(long, default_value = "16-48", value_parser = parse_range)]
    pub gpus: (usize, usize),
    /// Contended: pending requests per instance, `A-B` (default: 2-4 per GPU).
    #[arg(long, value_parser = parse_range)]
    pub requests: Option<(usize, usize)>,
    /// Contended: share of the existing instances that are busy (0-1).
    #[arg(long, default_value_t = 1.0 / 3.0)]
    pub busy: f64,
    /// Contended: demand skew s; a profile of g compute slices is asked for with weight g^-s.
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
}

/// A `--sizes`-style range that does not parse.
#[derive(Debug, thiserror::Error)]
enum RangeError {
    /// Not `A-B` or one number.
    #[error("`{text}` is not a range; write A-B (e.g. 16-48) or one number")]
    NotARange {
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    /// Starts at 0 or ends below its start.
    #[error("`{text}`: the range must start at 1 or more and not end below its start")]
    Bounds { text: String },
}

/// Parse `A-B` or `N` into an inclusive range.
fn parse_range(s: &str) -> Result<(usize, usize), RangeError> {
    let num = |x: &str| {
        x.trim()
            .parse::<usize>()
            .map_err(|source| RangeError::NotARange {
                text: s.to_string(),
                source,
            })
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(s)?;
            (n, n)
        }
    };
    if a == 0 || a > b {
        return Err(RangeError::Bounds {
            text: s.to_string(),
        });
    }
    Ok((a, b))
}

/// Run `bench quality`.
pub fn run_quality(args: &QualityArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if args.shape == "contended" {
        return run_contended(args, ctx);
    }
    let r = quality(&ctx.catalog, args.instances.unwrap_or(1000), args.seed);
    emit(ctx.output, &r, || {
        let mut t = table(&[
            "POLICY",
            "SERVED",
            "PRIORITY",
            "OF OPTIMUM",
            "OPTIMAL INSTANCES",
            "OPERATIONS",
        ]);
        for row in &r.policies {
            t.add_row(vec![
                row.policy.to_string(),
                row.served.to_string(),
                row.served_priority.to_string(),
                format!("{:.3} %", row.share_of_optimum * 100.0),
                format!("{} / {}", row.optimal_instances, r.instances - r.skipped),
                row.operations.to_string(),
            ]);
        }
        let mut s = format!("{t}\n");
        s.push_str(&format!(
            "{} instances from seed {} ({} skipped: too large for exact); optimum: {} requests, priority {}\n",
            r.instances, r.seed, r.skipped, r.optimum_served, r.optimum_priority
        ));
        s
    })?;
    let broken: u64 = r.policies.iter().map(|p| p.invalid_plans).sum();
    if broken > 0 {
        return Err(CliError::Other(format!(
            "{broken} plans broke a guarantee; this is a planner bug"
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `bench quality --shape contended`.
fn run_contended(args: &QualityArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if !(0.0..=1.0).contains(&args.busy) {
        return Err(CliError::Usage(format!(
            "--busy {} is not a share; give a number from 0 to 1",
            args.busy
        )));
    }
    if !args.skew.is_finite() || args.skew < 0.0 {
        return Err(CliError::Usage(format!(
            "--skew {} must be 0 or more",
            args.skew
        )));
    }
    let spec = ContendedSpec {
        gpus: args.gpus,
        requests: args.requests,
        busy: args.busy,
        skew: args.skew,
    };
    let instances = args.instances.unwrap_or(20);
    let r = contended_quality(&ctx.catalog, &spec, instances, args.seed)
        .map_err(|e| CliError::Other(e.to_string()))?;
    emit(ctx.output, &r, || {
        let mut t = table(&[
            "POLICY",
            "SERVED",
            "PRIORITY",
            "OF OPTIMUM",
            "WORST INSTANCE",
            "OPTIMAL INSTANCES",
            "OPERATIONS",
        ]);
        for row in &r.policies {
            t.add_row(vec![
                row.policy.to_string(),
                row.served.to_string(),
                row.served_priority.to_string(),
                format!("{:.2} %", row.share_of_optimum * 100.0),
                format!("{:.2} %", row.worst_share * 100.0),
                format!("{} / {}", row.optimal_instances, r.instances),
                row.operations.to_string(),
            ]);
        }
        let mut s = format!("{t}\n");
        s.push_str(&format!(
            "{} contended instances from seed {} ({} GPUs, {} requests in all; {:.0} % busy, skew {}); \
             optimum (integer program, {} GPU groups, {} layout columns): {} requests, priority {}\n",
            r.instances,
            r.seed,
            r.gpus,
            r.requests,
            args.busy * 100.0,
            args.skew,
            r.groups,
            r.columns,
            r.optimum_served,
            r.optimum_priority
        ));
        let shares: Vec<String> = r
            .nos_by_tie_seed
            .iter()
            .map(|x| format!("{:.2} %", x * 100.0))
            .collect();
        s.push_str(&format!(
            "nos with geometry ties from seeds 0-{}: {} of the optimum\n",
            r.nos_by_tie_seed.len().saturating_sub(1),
            shares.join(", ")
        ));
        s
    })?;
    let broken: u64 = r.policies.iter().map(|p| p.invalid_plans).sum();
    if broken > 0 {
        return Err(CliError::Other(format!(
            "{broken} plans broke a guarantee; this is a planner bug"
        )));
    }
    Ok(ExitCode::SUCCESS)
}
