//! Running every (policy, seed) pair in parallel and aggregating the runs into reports: the
//! mean over seeds of each headline number and of each point of the curves.

use serde::Serialize;

use crate::policy::{PolicyKind, SimError};
use crate::replay::{self, ReplayRun};
use crate::saturate::{self, SaturateRun, MAX_PCT};
use crate::static_layout::LayoutCount;
use crate::workload::saturate_sequence;
use crate::{parallel, Cluster, Progress, SimContext};

/// What was simulated (shared by both reports).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setup {
    /// The mode, `saturate` or `replay`.
    pub mode: &'static str,
    /// The GPU model every trace GPU became.
    pub gpu_model: String,
    /// GPU nodes.
    pub nodes: u64,
    /// GPUs.
    pub gpus: u64,
    /// Compute slices of the cluster.
    pub capacity_slices: u64,
    /// Pods in the trace.
    pub trace_pods: u64,
    /// The `static-mig` partition (GPUs per layout), when that policy ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_mig_partition: Option<Vec<LayoutCount>>,
}

/// Mean (and spread) over seeds of one curve point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanPoint {
    /// Arrived workload, % of capacity.
    pub arrived_pct: u32,
    /// Mean allocated share, %.
    pub allocated_pct: f64,
    /// Standard deviation of the allocated share over seeds.
    pub allocated_pct_sd: f64,
    /// Mean served share of the arrived `gpu_milli`, %.
    pub milli_served_pct: f64,
    /// Mean GPU pods failed so far.
    pub failed_gpu_pods: f64,
}

/// One policy's saturate results, mean over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaturateSummary {
    /// The policy.
    pub policy: PolicyKind,
    /// Allocated share of the GPU compute slices at 100 % arrived, %.
    pub allocated_pct_at_100: f64,
    /// `100 − allocated_pct_at_100`.
    pub unallocated_pct_at_100: f64,
    /// GPU pods that failed by 100 % arrived.
    pub failed_pods: f64,
    /// Attempts to destroy a busy instance, summed over seeds (must be 0).
    pub busy_destroyed: u64,
    /// Standard deviation over seeds of the allocated share at 100 %.
    pub allocated_pct_at_100_sd: f64,
    /// Served share of the requested `gpu_milli` at 100 % arrived, %.
    pub milli_served_pct_at_100: f64,
    /// Allocated share at 130 % arrived (the end), %.
    pub allocated_pct_at_130: f64,
    /// GPU pods that failed over the whole sequence.
    pub failed_pods_total: f64,
    /// CPU-only pods that failed over the whole sequence.
    pub failed_cpu_pods_total: f64,
    /// Instances created per run.
    pub creates: f64,
    /// Instances destroyed per run.
    pub destroys: f64,
    /// Re-partitions per run.
    pub repartitions: f64,
    /// Planner calls per run (`tessera`, `nos`).
    pub planner_calls: f64,
    /// Mean over seeds of the hole floor at 100 % arrived (the same for every policy; see
    /// [`crate::saturate::hole_floor_pct`]).
    pub hole_floor_pct_at_100: f64,
    /// The mean curve (in the CSV output, not in JSON).
    #[serde(skip)]
    pub curve: Vec<MeanPoint>,
}

/// The saturate report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaturateReport {
    /// What was simulated.
    #[serde(flatten)]
    pub setup: Setup,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Per policy, in the order asked.
    pub policies: Vec<SaturateSummary>,
    /// Every run (in the CSV output, not in JSON).
    #[serde(skip)]
    pub runs: Vec<SaturateRun>,
}

/// One policy's replay results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// The policy.
    pub policy: PolicyKind,
    /// Mean queueing delay of GPU pods, seconds.
    pub delay_mean_s: f64,
    /// 95th percentile queueing delay of GPU pods, seconds.
    pub delay_p95_s: f64,
    /// Longest queueing delay, seconds.
    pub delay_max_s: u64,
    /// GPU pods that waited at all.
    pub delayed_gpu_pods: u64,
    /// Delay per pod class (`shared`, `whole`, `multi`).
    pub delay_by_class: Vec<crate::replay::ClassDelay>,
    /// GPU pods that started.
    pub started_gpu_pods: u64,
    /// Pods never started.
    pub never_started: u64,
    /// Pods rejected at arrival (no empty node could hold them).
    pub rejected_pods: u64,
    /// Time-weighted mean allocated share, %.
    pub allocated_mean_pct: f64,
    /// Peak allocated share, %.
    pub allocated_peak_pct: f64,
    /// Re-partitions.
    pub repartitions: u64,
    /// Instances created.
    pub creates: u64,
    /// Instances destroyed.
    pub destroys: u64,
    /// Attempts to destroy a busy instance (must be 0).
    pub busy_destroyed: u64,
    /// Planner calls (`tessera`, `nos`).
    pub planner_calls: u64,
}

/// The replay report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayReport {
    /// What was simulated.
    #[serde(flatten)]
    pub setup: Setup,
    /// Factor dividing the arrival times.
    pub speedup: f64,
    /// Per policy, in the order asked.
    pub policies: Vec<ReplaySummary>,
    /// Every run with its timeline (in the CSV output, not in JSON).
    #[serde(skip)]
    pub runs: Vec<ReplayRun>,
}

fn setup(ctx: &SimContext, mode: &'static str, policies: &[PolicyKind]) -> Setup {
    let cluster = Cluster::new(ctx.model(), &ctx.trace.nodes);
    Setup {
        mode,
        gpu_model: ctx.model().key.clone(),
        nodes: ctx.trace.nodes.len() as u64,
        gpus: cluster.gpu_count(),
        capacity_slices: cluster.capacity_slices(),
        trace_pods: ctx.pods.len() as u64,
        static_mig_partition: policies
            .contains(&PolicyKind::StaticMig)
            .then(|| ctx.static_partition().mix.clone()),
    }
}

/// Pods a saturate run of these seeds and policies will process (for a progress bar).
pub fn saturate_work(ctx: &SimContext, policies: &[PolicyKind], seeds: &[u64]) -> u64 {
    let capacity = Cluster::new(ctx.model(), &ctx.trace.nodes).capacity_slices();
    let per_policy: u64 = seeds
        .iter()
        .map(|&s| {
            saturate_sequence(&ctx.pods, capacity, f64::from(MAX_PCT) / 100.0, s).len() as u64
        })
        .sum();
    per_policy * policies.len() as u64
}

/// Run saturate mode for every policy and seed on `threads` threads.
pub fn run_saturate(
    ctx: &SimContext,
    policies: &[PolicyKind],
    seeds: &[u64],
    threads: usize,
    progress: &dyn Progress,
) -> Result<SaturateReport, SimError> {
    let setup = setup(ctx, "saturate", policies);
    // Slow policies first so the threads finish together.
    let mut jobs: Vec<(usize, PolicyKind, u64)> = Vec::new();
    for (pi, &p) in policies.iter().enumerate() {
        for &s in seeds {
            jobs.push((pi, p, s));
        }
    }
    let cost = |p: PolicyKind| match p {
        PolicyKind::Planned(_) => 0,
        _ => 1,
    };
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| (cost(jobs[j].1), j));
    let ordered: Vec<(usize, PolicyKind, u64)> = order.iter().map(|&j| jobs[j]).collect();
    let results = parallel(&ordered, threads, |&(_, p, s)| {
        saturate::run(ctx, p, s, progress)
    });
    let mut runs: Vec<((usize, u64), SaturateRun)> = Vec::new();
    for ((pi, _, s), r) in ordered.iter().zip(results) {
        runs.push(((*pi, *s), r?));
    }
    runs.sort_by_key(|((pi, s), _)| (*pi, seeds.iter().position(|x| x == s)));
    let runs: Vec<SaturateRun> = runs.into_iter().map(|(_, r)| r).collect();
    let summaries = policies
        .iter()
        .map(|&p| {
            let mine: Vec<&SaturateRun> = runs.iter().filter(|r| r.policy == p).collect();
            summarize(p, &mine)
        })
        .collect();
    Ok(SaturateReport {
        setup,
        seeds: seeds.to_vec(),
        policies: summaries,
        runs,
    })
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn sd(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.len() < 2 {
        return 0.0;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Round to 3 decimals (stable, readable output).
pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn summarize(policy: PolicyKind, runs: &[&SaturateRun]) -> SaturateSummary {
    let at = |pct: u32| mean(runs.iter().map(|r| r.at(pct).allocated_pct));
    let counter = |f: &dyn Fn(&SaturateRun) -> u64| mean(runs.iter().map(|r| f(r) as f64));
    let curve = (0..=MAX_PCT)
        .map(|pct| MeanPoint {
            arrived_pct: pct,
            allocated_pct: r3(at(pct)),
            allocated_pct_sd: r3(sd(runs.iter().map(|r| r.at(pct).allocated_pct))),
            milli_served_pct: r3(mean(runs.iter().map(|r| r.at(pct).milli_served_pct))),
            failed_gpu_pods: r3(mean(runs.iter().map(|r| r.at(pct).failed_gpu_pods as f64))),
        })
        .collect();
    SaturateSummary {
        policy,
        allocated_pct_at_100: r3(at(100)),
        unallocated_pct_at_100: r3(100.0 - at(100)),
        failed_pods: r3(mean(runs.iter().map(|r| r.at(100).failed_gpu_pods as f64))),
        busy_destroyed: runs.iter().map(|r| r.counters.busy_destroyed).sum(),
        allocated_pct_at_100_sd: r3(sd(runs.iter().map(|r| r.at(100).allocated_pct))),
        milli_served_pct_at_100: r3(mean(runs.iter().map(|r| r.at(100).milli_served_pct))),
        allocated_pct_at_130: r3(at(MAX_PCT)),
        failed_pods_total: r3(counter(&|r| r.failed_gpu_pods)),
        failed_cpu_pods_total: r3(counter(&|r| r.failed_cpu_pods)),
        creates: r3(counter(&|r| r.counters.creates)),
        destroys: r3(counter(&|r| r.counters.destroys)),
        repartitions: r3(counter(&|r| r.counters.repartitions)),
        planner_calls: r3(counter(&|r| r.planner.calls)),
        hole_floor_pct_at_100: r3(mean(runs.iter().map(|r| r.hole_floor_pct))),
        curve,
    }
}

/// Run replay mode for every policy on `threads` threads.
pub fn run_replay(
    ctx: &SimContext,
    policies: &[PolicyKind],
    speedup: f64,
    threads: usize,
    progress: &dyn Progress,
) -> Result<ReplayReport, SimError> {
    let setup = setup(ctx, "replay", policies);
    let runs: Vec<ReplayRun> = parallel(policies, threads, |&p| {
        replay::run(ctx, p, speedup, progress)
    })
    .into_iter()
    .collect::<Result<_, _>>()?;
    let policies = runs
        .iter()
        .map(|r| ReplaySummary {
            policy: r.policy,
            delay_mean_s: r3(r.delay_mean_s),
            delay_p95_s: r3(r.delay_p95_s),
            delay_max_s: r.delay_max_s,
            delayed_gpu_pods: r.delayed_gpu_pods,
            delay_by_class: r
                .delay_by_class
                .iter()
                .map(|c| crate::replay::ClassDelay {
                    mean_s: r3(c.mean_s),
                    ..c.clone()
                })
                .collect(),
            started_gpu_pods: r.started_gpu_pods,
            never_started: r.never_started,
            rejected_pods: r.rejected_pods,
            allocated_mean_pct: r3(r.allocated_mean_pct),
            allocated_peak_pct: r3(r.allocated_peak_pct),
            repartitions: r.counters.repartitions,
            creates: r.counters.creates,
            destroys: r.counters.destroys,
            busy_destroyed: r.counters.busy_destroyed,
            planner_calls: r.planner.calls,
        })
        .collect();
    Ok(ReplayReport {
        setup,
        speedup,
        policies,
        runs,
    })
}
