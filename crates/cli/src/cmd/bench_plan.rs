//! `tessera bench plan` (planning time and result on a generated cluster) and
//! `tessera bench quality` (each policy against the exact optimum on small random instances).

use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;
use tessera_planner::gen::{bench_input, BenchSpec};
use tessera_planner::quality::quality;
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
    /// Random small instances to plan.
    #[arg(long, default_value_t = 1000)]
    pub instances: u64,
    /// Seed of the first instance (instance k uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Run `bench quality`.
pub fn run_quality(args: &QualityArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let r = quality(&ctx.catalog, args.instances, args.seed);
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
