//! Fractional-mode reports: every (policy, seed) run in parallel, aggregated per policy (mean
//! and standard deviation over seeds), beside the FGD paper's published values.

use serde::Serialize;

use crate::fractional::{run, FracContext, FracRun, Policy, MAX_PCT};
use crate::parallel;

/// What was simulated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FracSetup {
    /// `fractional`.
    pub sharing: &'static str,
    /// The pod list file.
    pub pod_list: String,
    /// GPU nodes.
    pub nodes: u64,
    /// GPUs.
    pub gpus: u64,
    /// GPUs per model of the trace, by model name.
    pub gpu_models: Vec<(String, u64)>,
    /// Pods in the pod list.
    pub trace_pods: u64,
    /// FGD's typical pods (kinds that cover 95 % of the pods).
    pub typical_pods: u64,
}

/// Mean over seeds of one curve point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FracPoint {
    /// Arrived workload, % of GPU capacity.
    pub arrived_pct: u32,
    /// Mean allocated share, %.
    pub allocated_pct: f64,
    /// Its standard deviation over seeds.
    pub allocated_pct_sd: f64,
    /// Mean GPU pods failed so far.
    pub failed_gpu_pods: f64,
}

/// One policy's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FracSummary {
    /// The policy.
    pub policy: Policy,
    /// Allocated GPU share at 100 % arrived, % (mean over seeds).
    pub allocated_pct_at_100: f64,
    /// `100 − allocated_pct_at_100`.
    pub unallocated_pct_at_100: f64,
    /// Standard deviation over seeds of the allocated share at 100 %.
    pub allocated_pct_at_100_sd: f64,
    /// Allocated GPU share at 130 % arrived, %.
    pub allocated_pct_at_130: f64,
    /// GPU pods failed by 100 % arrived (mean over seeds).
    pub failed_pods: f64,
    /// GPU pods failed over the whole run (to 130 %).
    pub failed_pods_total: f64,
    /// The paper's published allocation at 100 % arrived (`openb_pod_list_default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paper_allocated_pct_at_100: Option<f64>,
    /// The paper's published allocation at 130 % arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paper_allocated_pct_at_130: Option<f64>,
    /// Unallocated share at 100 % relative to `fgd`'s, % (negative: fewer), when fgd ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unallocated_vs_fgd_pct: Option<f64>,
    /// Seeds in which this policy left fewer unallocated at 100 % than `fgd`, when fgd ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds_better_than_fgd: Option<u64>,
    /// The sliver floor at 100 % arrived (mean over seeds, %): unallocated share no policy that
    /// places every shared pod can avoid.
    pub floor_pct_at_100: f64,
    /// The mean curve, 0–130 % arrived.
    pub curve: Vec<FracPoint>,
}

/// One run's headline numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FracRunSummary {
    /// The policy.
    pub policy: Policy,
    /// The seed.
    pub seed: u64,
    /// Allocated at 100 % arrived, %.
    pub allocated_pct_at_100: f64,
    /// Allocated at 130 % arrived, %.
    pub allocated_pct_at_130: f64,
    /// GPU pods failed by 100 % arrived.
    pub failed_gpu_pods_at_100: u64,
    /// Pods in the arrival sequence.
    pub pods: u64,
    /// The seed's sliver floor at 100 % arrived, %.
    pub floor_pct_at_100: f64,
}

/// The fractional-mode report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FracReport {
    /// What was simulated.
    pub setup: FracSetup,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Per policy, in the order asked.
    pub policies: Vec<FracSummary>,
    /// Every run.
    pub runs: Vec<FracRunSummary>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Sample standard deviation (0 for fewer than two values).
fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Run every policy with every seed on `threads` threads and aggregate.
pub fn run_fractional(
    ctx: &FracContext,
    pod_list: &str,
    policies: &[Policy],
    seeds: &[u64],
    threads: usize,
) -> FracReport {
    let jobs: Vec<(Policy, u64)> = policies
        .iter()
        .flat_map(|&p| seeds.iter().map(move |&s| (p, s)))
        .collect();
    let runs: Vec<FracRun> = parallel(&jobs, threads, |&(p, s)| run(ctx, p, s));
    let of = |p: Policy| runs.iter().filter(move |r| r.policy == p);
    let fgd: Option<Vec<f64>> = policies
        .contains(&Policy::Fgd)
        .then(|| of(Policy::Fgd).map(|r| r.at(100).allocated_pct).collect());
    let summaries = policies
        .iter()
        .map(|&p| {
            let rs: Vec<&FracRun> = of(p).collect();
            let at =
                |pct: u32| -> Vec<f64> { rs.iter().map(|r| r.at(pct).allocated_pct).collect() };
            let a100 = at(100);
            let alloc = mean(&a100);
            let (vs, better) = match &fgd {
                Some(f) => {
                    let fu = 100.0 - mean(f);
                    let vs = if fu > 0.0 {
                        Some(r3(((100.0 - alloc) - fu) / fu * 100.0))
                    } else {
                        None
                    };
                    let better = a100.iter().zip(f).filter(|(a, b)| a > b).count() as u64;
                    (vs, Some(better))
                }
                None => (None, None),
            };
            let curve = (0..=MAX_PCT)
                .map(|pct| {
                    let v = at(pct);
                    FracPoint {
                        arrived_pct: pct,
                        allocated_pct: r3(mean(&v)),
                        allocated_pct_sd: r3(sd(&v)),
                        failed_gpu_pods: r3(mean(
                            &rs.iter()
                                .map(|r| r.at(pct).failed_gpu_pods as f64)
                                .collect::<Vec<_>>(),
                        )),
                    }
                })
                .collect();
            FracSummary {
                policy: p,
                allocated_pct_at_100: r3(alloc),
                unallocated_pct_at_100: r3(100.0 - alloc),
                allocated_pct_at_100_sd: r3(sd(&a100)),
                allocated_pct_at_130: r3(mean(&at(MAX_PCT))),
                failed_pods: r3(mean(
                    &rs.iter()
                        .map(|r| r.at(100).failed_gpu_pods as f64)
                        .collect::<Vec<_>>(),
                )),
                failed_pods_total: r3(mean(
                    &rs.iter()
                        .map(|r| r.failed_gpu_pods as f64)
                        .collect::<Vec<_>>(),
                )),
                paper_allocated_pct_at_100: p.published().map(|x| x.0),
                paper_allocated_pct_at_130: p.published().map(|x| x.1),
                unallocated_vs_fgd_pct: vs,
                seeds_better_than_fgd: better,
                floor_pct_at_100: r3(mean(&rs.iter().map(|r| r.floor_pct).collect::<Vec<_>>())),
                curve,
            }
        })
        .collect();
    let mut models: Vec<(String, u64)> = ctx.models.iter().map(|m| (m.clone(), 0)).collect();
    for n in &ctx.nodes {
        models[n.model as usize].1 += u64::from(n.gpus);
    }
    models.retain(|m| m.1 > 0);
    FracReport {
        setup: FracSetup {
            sharing: "fractional",
            pod_list: pod_list.to_string(),
            nodes: ctx.nodes.len() as u64,
            gpus: ctx.gpus,
            gpu_models: models,
            trace_pods: ctx.pods.len() as u64,
            typical_pods: ctx.typical.len() as u64,
        },
        seeds: seeds.to_vec(),
        policies: summaries,
        runs: runs
            .iter()
            .map(|r| FracRunSummary {
                policy: r.policy,
                seed: r.seed,
                allocated_pct_at_100: r3(r.at(100).allocated_pct),
                allocated_pct_at_130: r3(r.at(MAX_PCT).allocated_pct),
                failed_gpu_pods_at_100: r.at(100).failed_gpu_pods,
                pods: r.pods,
                floor_pct_at_100: r3(r.floor_pct),
            })
            .collect(),
    }
}
