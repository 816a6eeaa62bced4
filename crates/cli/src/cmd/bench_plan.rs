//! `tessera bench plan` (planning time and result on a generated cluster) and
//! `tessera bench quality` (each policy against the exact optimum on small random instances).

use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;
use tessera_planner::gen::{bench_input, BenchSpec, ContendedSpec};
use tessera_planner::quality::{contended_quality, mean_range, nos_phases, quality, NosPhase};
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
    /// Median wall time of one `plan` call, in milliseconds; for nos without the first-fit
    /// binding step it lacks (`nos_phases_ms` has it).
    pub median_ms: f64,
    /// Fastest call, in milliseconds (nos: without the binding step).
    pub min_ms: f64,
    /// nos only: median milliseconds of each phase of the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nos_phases_ms: Option<NosPhasesMs>,
    /// Requests served by the plan.
    pub served: usize,
    /// Their summed priority.
    pub served_priority: u64,
}

/// Median milliseconds of each phase of a nos `plan` call.
#[derive(Debug, Serialize)]
pub struct NosPhasesMs {
    /// Input read and problem built (as for every policy).
    pub setup: f64,
    /// nos's algorithm: tracker, node forks, geometries, layouts.
    pub algorithm: f64,
    /// First-fit binding of pods to the new layouts (ours; nos has no such step).
    pub binding: f64,
    /// Plan written out (as for every policy).
    pub output: f64,
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    }
}

fn ms3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
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
    // nos: per phase (setup, algorithm, binding, output) of every run.
    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut last = None;
    for _ in 0..args.runs {
        let t = Instant::now();
        let p = if args.policy == Policy::Nos {
            let mut at = [0f64; 4];
            let mut prev = t;
            let (p, _) = nos_phases(&ctx.catalog, &cluster, &requests, &mut |ph| {
                let now = Instant::now();
                let i = match ph {
                    NosPhase::Setup => 0,
                    NosPhase::Algorithm => 1,
                    NosPhase::Binding => 2,
                    NosPhase::Output => 3,
                };
                at[i] = (now - prev).as_secs_f64() * 1e3;
                prev = now;
            })
            .map_err(|e| CliError::Usage(e.to_string()))?;
            for (v, x) in phases.iter_mut().zip(at) {
                v.push(x);
            }
            // The time nos's own planning takes: the whole call less the binding it lacks.
            times.push(t.elapsed().as_secs_f64() * 1e3 - at[2]);
            p
        } else {
            let p = plan(&ctx.catalog, &cluster, &requests, &opts)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            p
        };
        // Dropping the previous plan is not part of the measurement.
        last = Some(p);
    }
    let p = last.expect("at least one run");
    let med = median(&mut times);
    let nos_phases_ms = (args.policy == Policy::Nos).then(|| {
        let [a, b, c, d] = &mut phases;
        NosPhasesMs {
            setup: ms3(median(a)),
            algorithm: ms3(median(b)),
            binding: ms3(median(c)),
            output: ms3(median(d)),
        }
    });
    let out = PlanBench {
        policy: args.policy,
        nodes: args.nodes,
        gpus: args.nodes * args.gpus_per_node,
        pending: args.pending,
        median_ms: ms3(med),
        min_ms: ms3(times[0]),
        nos_phases_ms,
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
        let mut s = format!("{t}\n");
        if let Some(ph) = &out.nos_phases_ms {
            s.push_str(&format!(
                "nos times exclude the first-fit binding it lacks; medians per phase: setup {:.1} ms, \
                 nos algorithm {:.1} ms, binding {:.1} ms (not timed), output {:.1} ms\n",
                ph.setup, ph.algorithm, ph.binding, ph.output
            ));
        }
        s
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
        s.push_str(&nos_over_seeds(
            &r.nos_by_tie_seed,
            &r.nos_ops_by_tie_seed,
            3,
        ));
        s.push_str(&nos_default_lists(
            &r.nos_default_lists_by_tie_seed,
            &r.nos_default_lists_per_gpu_by_tie_seed,
            3,
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
        s.push_str(&nos_over_seeds(
            &r.nos_by_tie_seed,
            &r.nos_ops_by_tie_seed,
            2,
        ));
        s.push_str(&nos_default_lists(
            &r.nos_default_lists_by_tie_seed,
            &r.nos_default_lists_per_gpu_by_tie_seed,
            2,
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

/// The line on nos over the seeds of its random choices: mean share of the optimum with its
/// range and each seed's, mean operations with their range.
fn nos_over_seeds(shares: &[f64], ops: &[u64], digits: usize) -> String {
    if shares.is_empty() {
        return String::new();
    }
    let (m, lo, hi) = mean_range(shares);
    let opsf: Vec<f64> = ops.iter().map(|&o| o as f64).collect();
    let (om, olo, ohi) = mean_range(&opsf);
    let each: Vec<String> = shares
        .iter()
        .map(|x| format!("{:.d$}", x * 100.0, d = digits))
        .collect();
    format!(
        "nos with its random choices (GPU order, geometry ties) from seeds 0-{}: mean {:.d$} % of \
         the optimum (range {:.d$}-{:.d$} %; each: {} %), operations mean {om:.0} (range {olo:.0}-{ohi:.0})\n",
        shares.len() - 1,
        m * 100.0,
        lo * 100.0,
        hi * 100.0,
        each.join(", "),
        d = digits
    )
}

/// The line on nos with its own default geometry lists: as nos runs (another MIG model fails
/// its round) and leaving only such GPUs alone.
fn nos_default_lists(strict: &[f64], per_gpu: &[f64], digits: usize) -> String {
    if strict.is_empty() || per_gpu.is_empty() {
        return String::new();
    }
    let (m, lo, hi) = mean_range(strict);
    let (pm, plo, phi) = mean_range(per_gpu);
    format!(
        "nos with its own default geometry lists (A30, A100 40/80GB), same seeds: mean {:.d$} % \
         (range {:.d$}-{:.d$} %; a MIG GPU of another model stops nos's round); with only such GPUs \
         left alone: mean {:.d$} % (range {:.d$}-{:.d$} %)\n",
        m * 100.0,
        lo * 100.0,
        hi * 100.0,
        pm * 100.0,
        plo * 100.0,
        phi * 100.0,
        d = digits
    )
}
