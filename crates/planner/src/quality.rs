//! `bench quality`: each policy against the exact optimum on many small random instances.

use serde::{Deserialize, Serialize};
use tessera_model::Catalog;

use crate::{check_plan, gen, plan, Objective, PlanOptions, Policy};

pub use crate::nos::NosLists;

/// One policy's totals over the instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyQuality {
    /// The policy.
    pub policy: Policy,
    /// Requests served, summed.
    pub served: u64,
    /// Served priority, summed.
    pub served_priority: u64,
    /// `served_priority` over the optimum's, summed over instances.
    pub share_of_optimum: f64,
    /// Instances where the policy reached the optimum's served priority.
    pub optimal_instances: u64,
    /// Operations, summed.
    pub operations: u64,
    /// Plans that broke a guarantee (always 0 unless there is a bug).
    pub invalid_plans: u64,
}

/// The report of a quality run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Instances generated.
    pub instances: u64,
    /// Seed of the first instance (instance `k` uses `seed + k`).
    pub seed: u64,
    /// Instances skipped because `exact` refused them.
    pub skipped: u64,
    /// The optimum's served priority, summed.
    pub optimum_priority: u64,
    /// The optimum's served requests, summed.
    pub optimum_served: u64,
    /// Per policy, in the order tessera, nos, first-fit, exact.
    pub policies: Vec<PolicyQuality>,
    /// nos's share of the optimum with its random choices drawn from each of the seeds
    /// `0..NOS_TIE_SEEDS` ([`nos_seeded`]), in seed order; the `nos` row uses the policy's one
    /// fixed seed.
    pub nos_by_tie_seed: Vec<f64>,
    /// nos's operations (creates + destroys) with each of those seeds.
    pub nos_ops_by_tie_seed: Vec<u64>,
    /// nos's share of the optimum with its own default geometry lists
    /// ([`NosLists::NosDefault`]) instead of the catalog's, per seed as above.
    pub nos_default_lists_by_tie_seed: Vec<f64>,
    /// The same with GPUs of other models only left alone ([`NosLists::NosDefaultPerGpu`]).
    pub nos_default_lists_per_gpu_by_tie_seed: Vec<f64>,
}

/// Generate `instances` small instances from `seed` ([`gen::small_instance`]), plan each with
/// every policy, check every plan, and total the results against `exact`.
pub fn quality(catalog: &Catalog, instances: u64, seed: u64) -> QualityReport {
    let mut rows: Vec<PolicyQuality> = Policy::ALL
        .iter()
        .map(|&policy| PolicyQuality {
            policy,
            served: 0,
            served_priority: 0,
            share_of_optimum: 0.0,
            optimal_instances: 0,
            operations: 0,
            invalid_plans: 0,
        })
        .collect();
    let mut skipped = 0;
    let mut opt_total = 0u64;
    let mut opt_served = 0u64;
    let mut nos_prio = vec![0u64; NOS_TIE_SEEDS as usize];
    let mut nos_ops = vec![0u64; NOS_TIE_SEEDS as usize];
    let mut nos_default = vec![0u64; NOS_TIE_SEEDS as usize];
    let mut nos_lenient = vec![0u64; NOS_TIE_SEEDS as usize];
    for k in 0..instances {
        let (cluster, requests) = gen::small_instance(catalog, seed.wrapping_add(k));
        let exact_opts = PlanOptions::with_policy(Policy::Exact);
        let Ok(best) = plan(catalog, &cluster, &requests, &exact_opts) else {
            skipped += 1;
            continue;
        };
        opt_total += best.stats.served_priority;
        opt_served += best.stats.served as u64;
        for tie in 0..NOS_TIE_SEEDS as usize {
            // An input nos refuses is counted as an invalid nos plan below.
            if let Ok((_, o)) = nos_seeded(catalog, &cluster, &requests, tie as u64) {
                nos_prio[tie] += o.served_priority;
                nos_ops[tie] += o.operations;
            }
            let lists = NosLists::NosDefault;
            if let Ok((_, o)) = nos_seeded_with(catalog, &cluster, &requests, tie as u64, lists) {
                nos_default[tie] += o.served_priority;
            }
            let lists = NosLists::NosDefaultPerGpu;
            if let Ok((_, o)) = nos_seeded_with(catalog, &cluster, &requests, tie as u64, lists) {
                nos_lenient[tie] += o.served_priority;
            }
        }
        for row in rows.iter_mut() {
            let opts = PlanOptions::with_policy(row.policy);
            let obj = plan(catalog, &cluster, &requests, &opts)
                .map_err(|e| vec![e.to_string()])
                .and_then(|pl| check_plan(catalog, &cluster, &requests, &opts, &pl));
            match obj {
                Ok(Objective {
                    served,
                    served_priority,
                    operations,
                    ..
                }) => {
                    row.served += served as u64;
                    row.served_priority += served_priority;
                    row.operations += operations;
                    if served_priority >= best.stats.served_priority {
                        row.optimal_instances += 1;
                    }
                }
                Err(_) => row.invalid_plans += 1,
            }
        }
    }
    for row in &mut rows {
        row.share_of_optimum = if opt_total == 0 {
            1.0
        } else {
            row.served_priority as f64 / opt_total as f64
        };
    }
    QualityReport {
        instances,
        seed,
        skipped,
        optimum_priority: opt_total,
        optimum_served: opt_served,
        policies: rows,
        nos_by_tie_seed: nos_prio.iter().map(|&v| share(v, opt_total)).collect(),
        nos_ops_by_tie_seed: nos_ops,
        nos_default_lists_by_tie_seed: nos_default.iter().map(|&v| share(v, opt_total)).collect(),
        nos_default_lists_per_gpu_by_tie_seed: nos_lenient
            .iter()
            .map(|&v| share(v, opt_total))
            .collect(),
    }
}

/// One policy's totals on contended instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContendedPolicy {
    /// The policy.
    pub policy: Policy,
    /// Requests served, summed.
    pub served: u64,
    /// Served priority, summed.
    pub served_priority: u64,
    /// `served_priority` over the optimum's, summed over instances.
    pub share_of_optimum: f64,
    /// The lowest share of the optimum on one instance.
    pub worst_share: f64,
    /// Instances where the policy reached the optimum's served priority.
    pub optimal_instances: u64,
    /// Operations, summed.
    pub operations: u64,
    /// Plans that broke a guarantee (always 0 unless there is a bug).
    pub invalid_plans: u64,
}

/// The report of a contended quality run ([`contended_quality`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContendedReport {
    /// Instances generated.
    pub instances: u64,
    /// Seed of the first instance (instance `k` uses `seed + k`).
    pub seed: u64,
    /// GPUs, summed over instances.
    pub gpus: u64,
    /// Pending requests, summed over instances.
    pub requests: u64,
    /// GPU groups of the reference program, summed over instances.
    pub groups: u64,
    /// Layout columns of the reference program, summed over instances.
    pub columns: u64,
    /// The optimum's served priority, summed.
    pub optimum_priority: u64,
    /// The optimum's served requests, summed.
    pub optimum_served: u64,
    /// Per policy: tessera, nos, first-fit.
    pub policies: Vec<ContendedPolicy>,
    /// nos's share of the optimum with its random choices drawn from each of the seeds
    /// `0..NOS_TIE_SEEDS` ([`nos_seeded`]), in seed order; the `nos` row uses the policy's one
    /// fixed seed.
    pub nos_by_tie_seed: Vec<f64>,
    /// nos's operations (creates + destroys) with each of those seeds.
    pub nos_ops_by_tie_seed: Vec<u64>,
    /// nos's share of the optimum with its own default geometry lists
    /// ([`NosLists::NosDefault`]) instead of the catalog's, per seed as above.
    pub nos_default_lists_by_tie_seed: Vec<f64>,
    /// The same with GPUs of other models only left alone ([`NosLists::NosDefaultPerGpu`]).
    pub nos_default_lists_per_gpu_by_tie_seed: Vec<f64>,
}

/// Tie seeds [`contended_quality`] runs nos with.
pub const NOS_TIE_SEEDS: u64 = 5;

/// Generate `instances` contended instances ([`gen::contended_instance`]) from `seed`, plan
/// each with tessera, nos and first-fit, check every plan, and total the results against the
/// integer-programming optimum ([`crate::ilp::optimum`]).
pub fn contended_quality(
    catalog: &Catalog,
    spec: &gen::ContendedSpec,
    instances: u64,
    seed: u64,
) -> Result<ContendedReport, crate::ilp::IlpError> {
    let mut rows: Vec<ContendedPolicy> = [Policy::Tessera, Policy::Nos, Policy::FirstFit]
        .into_iter()
        .map(|policy| ContendedPolicy {
            policy,
            served: 0,
            served_priority: 0,
            share_of_optimum: 0.0,
            worst_share: 1.0,
            optimal_instances: 0,
            operations: 0,
            invalid_plans: 0,
        })
        .collect();
    let mut r = ContendedReport {
        instances,
        seed,
        gpus: 0,
        requests: 0,
        groups: 0,
        columns: 0,
        optimum_priority: 0,
        optimum_served: 0,
        policies: Vec::new(),
        nos_by_tie_seed: Vec::new(),
        nos_ops_by_tie_seed: Vec::new(),
        nos_default_lists_by_tie_seed: Vec::new(),
        nos_default_lists_per_gpu_by_tie_seed: Vec::new(),
    };
    let mut nos_default = vec![0u64; NOS_TIE_SEEDS as usize];
    let mut nos_lenient = vec![0u64; NOS_TIE_SEEDS as usize];
    let mut nos_seeds = vec![0u64; NOS_TIE_SEEDS as usize];
    let mut nos_ops = vec![0u64; NOS_TIE_SEEDS as usize];
    for k in 0..instances {
        let (cluster, requests) = gen::contended_instance(catalog, spec, seed.wrapping_add(k));
        let best = crate::ilp::optimum(catalog, &cluster, &requests)?;
        r.gpus += cluster
            .nodes
            .iter()
            .map(|n| n.gpus.len() as u64)
            .sum::<u64>();
        r.requests += requests.len() as u64;
        r.groups += best.groups as u64;
        r.columns += best.columns as u64;
        let opt = best.objective.served_priority;
        r.optimum_priority += opt;
        r.optimum_served += best.objective.served as u64;
        for (tie, total) in nos_seeds.iter_mut().enumerate() {
            let (_, o) = nos_seeded(catalog, &cluster, &requests, tie as u64)?;
            *total += o.served_priority;
            nos_ops[tie] += o.operations;
            let lists = NosLists::NosDefault;
            let (_, o) = nos_seeded_with(catalog, &cluster, &requests, tie as u64, lists)?;
            nos_default[tie] += o.served_priority;
            let lists = NosLists::NosDefaultPerGpu;
            let (_, o) = nos_seeded_with(catalog, &cluster, &requests, tie as u64, lists)?;
            nos_lenient[tie] += o.served_priority;
        }
        for row in rows.iter_mut() {
            let opts = PlanOptions::with_policy(row.policy);
            let obj = plan(catalog, &cluster, &requests, &opts)
                .map_err(|e| vec![e.to_string()])
                .and_then(|pl| check_plan(catalog, &cluster, &requests, &opts, &pl));
            match obj {
                Ok(o) => {
                    row.served += o.served as u64;
                    row.served_priority += o.served_priority;
                    row.operations += o.operations;
                    if o.served_priority >= opt {
                        row.optimal_instances += 1;
                    }
                    if opt > 0 {
                        row.worst_share =
                            row.worst_share.min(o.served_priority as f64 / opt as f64);
                    }
                }
                Err(_) => row.invalid_plans += 1,
            }
        }
    }
    for row in &mut rows {
        row.share_of_optimum = if r.optimum_priority == 0 {
            1.0
        } else {
            row.served_priority as f64 / r.optimum_priority as f64
        };
    }
    r.policies = rows;
    r.nos_by_tie_seed = nos_seeds
        .iter()
        .map(|&v| share(v, r.optimum_priority))
        .collect();
    r.nos_ops_by_tie_seed = nos_ops;
    r.nos_default_lists_by_tie_seed = nos_default
        .iter()
        .map(|&v| share(v, r.optimum_priority))
        .collect();
    r.nos_default_lists_per_gpu_by_tie_seed = nos_lenient
        .iter()
        .map(|&v| share(v, r.optimum_priority))
        .collect();
    Ok(r)
}

/// `part` over `whole`; 1 when the optimum serves nothing.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// Mean, lowest and highest of a non-empty list (for nos over its seeds).
pub fn mean_range(xs: &[f64]) -> (f64, f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, lo, hi)
}

/// Plan with the nos algorithm, its random choices (the order of a node's GPUs with instances,
/// geometry score keys and ties) drawn from `seed` (the `nos` policy uses one fixed seed): for
/// measurements averaged over seeds, as real nos's fall in Go's random map order.
pub fn nos_seeded(
    catalog: &Catalog,
    cluster: &crate::ClusterSpec,
    requests: &[crate::RequestSpec],
    seed: u64,
) -> Result<(crate::Plan, Objective), crate::PlanError> {
    nos_seeded_with(catalog, cluster, requests, seed, NosLists::Catalog)
}

/// [`nos_seeded`] with the given allowed geometries: the catalog's (as the `nos` policy) or
/// nos's own default lists.
pub fn nos_seeded_with(
    catalog: &Catalog,
    cluster: &crate::ClusterSpec,
    requests: &[crate::RequestSpec],
    seed: u64,
    lists: NosLists,
) -> Result<(crate::Plan, Objective), crate::PlanError> {
    nos_phases_seeded(catalog, cluster, requests, seed, lists, &mut |_| {})
}

/// The phases of one nos plan ([`nos_phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NosPhase {
    /// The input read and the problem built (as for every policy).
    Setup,
    /// nos's algorithm: tracker, node forks, geometries, layouts.
    Algorithm,
    /// Pods bound first-fit to the new layouts: ours, nos has no such step.
    Binding,
    /// The plan written out (as for every policy).
    Output,
}

/// Plan with the `nos` policy exactly as [`crate::plan`] does (the same plan, byte for byte),
/// calling `mark` at the end of each [`NosPhase`], so that a benchmark can time nos's
/// algorithm apart from the binding step it lacks. The planner reads no clock; `mark` may.
pub fn nos_phases(
    catalog: &Catalog,
    cluster: &crate::ClusterSpec,
    requests: &[crate::RequestSpec],
    mark: &mut dyn FnMut(NosPhase),
) -> Result<(crate::Plan, Objective), crate::PlanError> {
    nos_phases_seeded(
        catalog,
        cluster,
        requests,
        crate::nos::NOS_SEED,
        NosLists::Catalog,
        mark,
    )
}

fn nos_phases_seeded(
    catalog: &Catalog,
    cluster: &crate::ClusterSpec,
    requests: &[crate::RequestSpec],
    seed: u64,
    lists: NosLists,
    mark: &mut dyn FnMut(NosPhase),
) -> Result<(crate::Plan, Objective), crate::PlanError> {
    use crate::nos;
    use crate::problem::Problem;
    let opts = PlanOptions::with_policy(Policy::Nos);
    let (input, labels) = crate::input::resolve(catalog, cluster, requests)?;
    let p = Problem::new(&input, &opts, Some(cluster), &[])?;
    let sol = if crate::holds::any(&input) {
        let v = crate::holds::view(&input, &p);
        let view = Problem::new(&v.input, &opts, Some(cluster), &v.phantoms)?;
        mark(NosPhase::Setup);
        let planned = nos::algorithm(&view, seed, lists);
        mark(NosPhase::Algorithm);
        let sol = crate::holds::back(&p, &v, &nos::bind(&view, planned));
        mark(NosPhase::Binding);
        sol
    } else {
        mark(NosPhase::Setup);
        let planned = nos::algorithm(&p, seed, lists);
        mark(NosPhase::Algorithm);
        let sol = nos::bind(&p, planned);
        mark(NosPhase::Binding);
        sol
    };
    let plan = labels.plan(&p, &sol, Policy::Nos, false);
    mark(NosPhase::Output);
    Ok((plan, p.objective(&sol)))
}
