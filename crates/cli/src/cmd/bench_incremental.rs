//! `tessera bench incremental`: the incremental planner (`tessera_planner::incremental`) on a
//! generated cluster: the time to build its state, the time of each single arrival and
//! departure, and for comparison the full typed plan of the same one-arrival problem (whose
//! placement must be the incremental one).

use std::process::ExitCode;
use std::time::Instant;

use rand::Rng;
use serde::Serialize;
use tessera_planner::gen::{bench_input, rng, BenchSpec};
use tessera_planner::incremental::{Fallback, Incremental};
use tessera_planner::typed::{self, Ask, Slice};
use tessera_planner::{plan_typed, resolve_typed, PlanOptions};

use crate::output::{emit, table, CliError, Ctx};

/// Arguments of `tessera bench incremental`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Nodes of the generated cluster (the `bench plan` generator: busy, mixed A100/H100).
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    pub gpus_per_node: usize,
    /// Arrivals (each may be followed by a departure of an earlier placement).
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Share of arrivals followed by a departure (0-1).
    #[arg(long, default_value_t = 0.5)]
    pub departures: f64,
    /// Arrivals also planned in full (timed, and their placements compared).
    #[arg(long, default_value_t = 5)]
    pub full: usize,
    /// Seed of the cluster, the requests and the departures.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Per-event times in microseconds.
#[derive(Debug, Serialize)]
pub struct Times {
    /// Events timed.
    pub count: usize,
    /// Median.
    pub median_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Times {
    fn of(mut v: Vec<f64>) -> Times {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                let i = ((v.len() as f64 - 1.0) * q).round() as usize;
                (v[i] * 100.0).round() / 100.0
            }
        };
        Times {
            count: v.len(),
            median_us: at(0.5),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}

/// The `bench incremental` result (JSON/YAML wire format).
#[derive(Debug, Serialize)]
pub struct IncrementalBench {
    /// Nodes of the cluster.
    pub nodes: usize,
    /// GPUs of the cluster.
    pub gpus: usize,
    /// MIG GPUs (the ones the state indexes).
    pub mig_gpus: usize,
    /// Time to build the state, in milliseconds.
    pub build_ms: f64,
    /// MIG arrivals the state placed.
    pub arrivals: Times,
    /// Departures (half keep the instance idle, half destroy it).
    pub departures: Times,
    /// MIG arrivals with no candidate (left to the full plan).
    pub no_candidate: usize,
    /// MPS and time-slice arrivals (left to the full plan, not timed).
    pub not_mig: usize,
    /// Median time of the full typed plan of one arrival on the same state, in milliseconds.
    pub full_plan_median_ms: f64,
    /// Arrivals planned in full.
    pub full_plans: usize,
    /// Of those, how many the incremental state placed exactly as the full plan did.
    pub agree: usize,
}

/// Run `bench incremental`.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if args.nodes == 0 || args.gpus_per_node == 0 {
        return Err(CliError::Usage(
            "--nodes and --gpus-per-node must be at least 1: the benchmark needs GPUs to place on"
                .into(),
        ));
    }
    if !(0.0..=1.0).contains(&args.departures) {
        return Err(CliError::Usage(
            "--departures is a share between 0 and 1".into(),
        ));
    }
    let spec = BenchSpec {
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        pending: args.events,
        seed: args.seed,
    };
    let (cluster, requests) = bench_input(&ctx.catalog, &spec);
    let problem = resolve_typed(&ctx.catalog, &cluster, &requests)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let t = Instant::now();
    let mut inc = Incremental::new(&problem).map_err(|e| CliError::Usage(e.to_string()))?;
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let opts = PlanOptions {
        only_changed: true,
        ..PlanOptions::default()
    };
    let mut rng = rng(args.seed.wrapping_add(1));
    let mut arrivals = Vec::with_capacity(args.events);
    let mut departures = Vec::new();
    let mut placed: Vec<(usize, usize, tessera_model::Placed)> = Vec::new();
    let (mut no_candidate, mut not_mig) = (0, 0);
    let mut full_times = Vec::new();
    let mut agree = 0;
    for req in &problem.requests {
        let full = if full_times.len() < args.full && matches!(req.ask, Ask::Mig { .. }) {
            let one = typed::Problem {
                nodes: inc.to_problem().nodes,
                requests: vec![*req],
            };
            let t = Instant::now();
            let o = plan_typed(&one, &opts).map_err(|e| CliError::Usage(e.to_string()))?;
            full_times.push(t.elapsed().as_secs_f64() * 1e3);
            Some(o)
        } else {
            None
        };
        let t = Instant::now();
        let r = inc.place(req);
        let us = t.elapsed().as_secs_f64() * 1e6;
        match r {
            Ok(p) => {
                arrivals.push(us);
                if let Some(o) = &full {
                    if o.grants == [p.grant] && o.gpus == [p.gpu.clone()] {
                        agree += 1;
                    }
                }
                if let Slice::Mig(s) = p.grant.slice {
                    placed.push((p.grant.node, p.grant.gpu, s));
                }
            }
            Err(Fallback::NotMig) => not_mig += 1,
            Err(_) => {
                no_candidate += 1;
                if full.as_ref().is_some_and(|o| o.grants.is_empty()) {
                    agree += 1;
                }
            }
        }
        if !placed.is_empty() && rng.random_bool(args.departures) {
            let (n, g, s) = placed.swap_remove(rng.random_range(0..placed.len()));
            let destroy = rng.random_bool(0.5);
            let t = Instant::now();
            inc.release(n, g, s, destroy)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            departures.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let full_median = Times::of(full_times.iter().map(|ms| ms * 1e3).collect()).median_us / 1e3;
    let out = IncrementalBench {
        nodes: args.nodes,
        gpus: args.nodes * args.gpus_per_node,
        mig_gpus: inc.mig_gpus(),
        build_ms: (build_ms * 1000.0).round() / 1000.0,
        arrivals: Times::of(arrivals),
        departures: Times::of(departures),
        no_candidate,
        not_mig,
        full_plan_median_ms: (full_median * 1000.0).round() / 1000.0,
        full_plans: full_times.len(),
        agree,
    };
    emit(ctx.output, &out, || {
        let mut t = table(&["EVENT", "COUNT", "MEDIAN", "P99", "MAX"]);
        for (name, x) in [("arrival", &out.arrivals), ("departure", &out.departures)] {
            t.add_row(vec![
                name.to_string(),
                x.count.to_string(),
                format!("{:.1} µs", x.median_us),
                format!("{:.1} µs", x.p99_us),
                format!("{:.1} µs", x.max_us),
            ]);
        }
        format!(
            "{t}\n{} GPUs ({} MIG) on {} nodes; state built in {:.1} ms; {} MIG arrivals without a candidate, {} MPS/time-slice arrivals left to the full plan\nfull plan of one arrival: {:.1} ms median over {}; same placement: {}/{}\n",
            out.gpus,
            out.mig_gpus,
            out.nodes,
            out.build_ms,
            out.no_candidate,
            out.not_mig,
            out.full_plan_median_ms,
            out.full_plans,
            out.agree,
            out.full_plans
        )
    })?;
    if out.agree < out.full_plans {
        eprintln!(
            "error: the incremental placement differed from the full plan on {} of {} arrivals",
            out.full_plans - out.agree,
            out.full_plans
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
