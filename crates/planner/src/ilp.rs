//! The integer-programming reference: the optimum of the first objective (served priority) of a
//! MIG-only input, for inputs far beyond the `exact` policy's reach (hundreds of GPUs).
//!
//! # Model
//! - GPUs of one model with the same busy instances are one **group** (what else a GPU holds
//!   does not matter: idle instances may be destroyed at will). For each group every valid
//!   layout that keeps the busy instances is enumerated, adding only instances of requested
//!   profiles (an instance nobody asked for serves nothing, and dropping an instance keeps a
//!   layout valid). A layout is reduced to its **column**: how many free instances of each
//!   requested profile it offers. Equal columns are kept once, and columns another column
//!   dominates (at least as many of every profile) are dropped: they never serve more.
//! - Variables: `y[g][k]` (integer, `0..=n_g`): how many GPUs of group `g` take column `k`, with
//!   `Σ_k y[g][k] = n_g`; `z[p][c]` (integer, `0..=count`): how many requests of profile `p` and
//!   priority class `c` are served. Requests of one profile differ only in priority, so serving
//!   `z` of a class means serving any `z` of its requests.
//! - Capacity per requested profile `p`: `Σ_c z[p][c] ≤ Σ_{g,k} y[g][k] · column[g][k][p]`.
//! - Objective: maximise `Σ prio_c · z[p][c]`, the planner's first objective. Operations and the
//!   free score are not optimised (the reference measures how much is served).
//!
//! The program is solved by CBC (COIN-OR branch and cut) through `good_lp`; the solution is
//! turned back into a plan (layouts per GPU in group order, requests of each profile by
//! priority onto the free instances) and checked like any policy's plan, so the reported
//! optimum is a plan that exists, not only a bound.

// Without the `ilp` feature only the types and a refusing `optimum` are compiled.
#![cfg_attr(not(feature = "ilp"), allow(dead_code, unused_imports))]

use std::collections::BTreeMap;

#[cfg(feature = "ilp")]
use good_lp::solvers::coin_cbc::coin_cbc;
#[cfg(feature = "ilp")]
use good_lp::{
    constraint, variable, Expression, ProblemVariables, ResolutionError, Solution as _,
    SolutionStatus, SolverModel, Variable,
};
use tessera_model::Catalog;

use crate::input::{ClusterSpec, GpuMode, RequestSpec};
use crate::problem::{Problem, ReqKind, Slot, Solution};
use crate::tables::bits;
use crate::{Objective, Plan, PlanError, PlanOptions, Policy};

/// Why the reference could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum IlpError {
    /// The input itself is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The reference covers MIG only, without held regions.
    #[error("the integer-programming reference covers MIG only, without held regions; {what} (leave those out of the input)")]
    NotMig {
        /// What is not MIG.
        what: String,
    },
    /// This build has no solver.
    #[error("this tessera was built without the integer-programming reference; rebuild with `--features ilp` (needs CBC: Debian `coinor-libcbc-dev`)")]
    NotBuilt,
    /// The solver's solution breaks an invariant of the problem (a bug in the model
    /// building).
    #[error("the solution does not make a valid plan: {0}")]
    InvalidSolution(#[from] crate::problem::SolutionError),
    /// The solver failed or stopped without a proven optimum.
    #[error("the solver gave no proven optimum: {message}")]
    Solver {
        /// The solver's words.
        message: String,
    },
}

/// Size and outcome of one reference solve.
#[derive(Debug, Clone)]
pub struct IlpOptimum {
    /// The optimal plan (policy `exact`), checked against the input.
    pub plan: Plan,
    /// Its objective; `served_priority` is the optimum.
    pub objective: Objective,
    /// GPU groups (model and busy instances alike).
    pub groups: usize,
    /// Layout columns over all groups, after dropping dominated ones.
    pub columns: usize,
}

/// One group of alike GPUs and its undominated columns.
struct Group {
    gpus: Vec<usize>,
    /// (column per requested profile, a layout that gives it).
    columns: Vec<(Vec<u32>, u64)>,
}

/// Solve the reference for a MIG-only input: without the `ilp` feature,
/// [`IlpError::NotBuilt`].
#[cfg(not(feature = "ilp"))]
pub fn optimum(
    _catalog: &Catalog,
    _cluster: &ClusterSpec,
    _requests: &[RequestSpec],
) -> Result<IlpOptimum, IlpError> {
    Err(IlpError::NotBuilt)
}

/// Solve the reference for a MIG-only input.
#[cfg(feature = "ilp")]
pub fn optimum(
    catalog: &Catalog,
    cluster: &ClusterSpec,
    requests: &[RequestSpec],
) -> Result<IlpOptimum, IlpError> {
    for n in &cluster.nodes {
        for (i, g) in n.gpus.iter().enumerate() {
            if g.mode != GpuMode::Mig {
                return Err(IlpError::NotMig {
                    what: format!("node `{}` GPU {i} is in {} mode", n.name, g.mode.as_str()),
                });
            }
        }
    }
    let opts = PlanOptions::with_policy(Policy::Exact);
    let (input, labels) = crate::input::resolve(catalog, cluster, requests)?;
    if crate::holds::any(&input) {
        return Err(IlpError::NotMig {
            what: "the input holds regions, which the reference does not model".into(),
        });
    }
    let p = Problem::new(&input, &opts, Some(cluster), &[])?;
    if let Some((i, _)) = p
        .reqs
        .iter()
        .enumerate()
        .find(|(_, r)| !matches!(r.kind, ReqKind::Mig(_)))
    {
        return Err(IlpError::NotMig {
            what: format!("request `{}` is not a MIG request", requests[i].id),
        });
    }
    // Requested profiles: their priority classes (priority -> count).
    let mut classes: Vec<BTreeMap<u64, u32>> = vec![BTreeMap::new(); p.profiles.len()];
    for r in &p.reqs {
        if let ReqKind::Mig(gp) = r.kind {
            *classes[gp].entry(r.prio).or_default() += 1;
        }
    }
    let dims: Vec<usize> = (0..p.profiles.len())
        .filter(|&gp| !classes[gp].is_empty())
        .collect();
    let groups = groups(&p, &dims);
    let sol = solve(&p, &dims, &classes, &groups)?;
    p.check(&sol)?;
    Ok(IlpOptimum {
        plan: labels.plan(&p, &sol, Policy::Exact, false),
        objective: p.objective(&sol),
        groups: groups.len(),
        columns: groups.iter().map(|g| g.columns.len()).sum(),
    })
}

/// Group the MIG GPUs by (model tables, busy instances) and enumerate each group's columns.
fn groups(p: &Problem<'_>, dims: &[usize]) -> Vec<Group> {
    let mut by_state: BTreeMap<(usize, u64), Vec<usize>> = BTreeMap::new();
    for (m, g) in p.mig.iter().enumerate() {
        by_state.entry((g.t, g.busy)).or_default().push(m);
    }
    by_state
        .into_iter()
        .map(|((t, busy), gpus)| {
            let tables = &p.tables[t];
            let local: Vec<Option<usize>> = dims.iter().map(|&gp| p.local[t][gp]).collect();
            let extra = local
                .iter()
                .flatten()
                .fold(0u64, |acc, &lp| acc | tables.by_profile[lp]);
            let mut seen: BTreeMap<Vec<u32>, u64> = BTreeMap::new();
            tables.for_each_superset(busy, extra, &mut |layout| {
                let free = layout & !busy;
                let col: Vec<u32> = local
                    .iter()
                    .map(|lp| lp.map_or(0, |lp| (free & tables.by_profile[lp]).count_ones()))
                    .collect();
                seen.entry(col).or_insert(layout);
                true
            });
            let all: Vec<(Vec<u32>, u64)> = seen.into_iter().collect();
            let dominated = |a: &[u32], b: &[u32]| a != b && a.iter().zip(b).all(|(x, y)| x <= y);
            let columns = all
                .iter()
                .filter(|(a, _)| !all.iter().any(|(b, _)| dominated(a, b)))
                .cloned()
                .collect();
            Group { gpus, columns }
        })
        .collect()
}

#[cfg(feature = "ilp")]
fn solver_error(e: ResolutionError) -> IlpError {
    IlpError::Solver {
        message: e.to_string(),
    }
}

/// Build and solve the program; turn its values into a solution.
#[cfg(feature = "ilp")]
fn solve(
    p: &Problem<'_>,
    dims: &[usize],
    classes: &[BTreeMap<u64, u32>],
    groups: &[Group],
) -> Result<Solution, IlpError> {
    let mut vars = ProblemVariables::new();
    let y: Vec<Vec<Variable>> = groups
        .iter()
        .map(|g| {
            g.columns
                .iter()
                .map(|_| vars.add(variable().integer().min(0).max(g.gpus.len() as f64)))
                .collect()
        })
        .collect();
    let z: Vec<Vec<(u64, Variable)>> = dims
        .iter()
        .map(|&gp| {
            classes[gp]
                .iter()
                .map(|(&prio, &n)| (prio, vars.add(variable().integer().min(0).max(n))))
                .collect()
        })
        .collect();
    let objective: Expression = z.iter().flatten().map(|&(prio, v)| prio as f64 * v).sum();
    let mut model = vars.maximise(objective).using(coin_cbc);
    model.set_parameter("log", "0");
    model.set_parameter("slogLevel", "0");
    for (g, ys) in groups.iter().zip(&y) {
        let total: Expression = ys.iter().copied().sum();
        model = model.with(constraint!(total == g.gpus.len() as f64));
    }
    for (d, zs) in z.iter().enumerate() {
        let served: Expression = zs.iter().map(|&(_, v)| v).sum();
        let mut cap = Expression::from(0.0);
        for (g, ys) in groups.iter().zip(&y) {
            for ((col, _), &v) in g.columns.iter().zip(ys) {
                if col[d] > 0 {
                    cap += f64::from(col[d]) * v;
                }
            }
        }
        model = model.with(constraint!(served <= cap));
    }
    let values = model.solve().map_err(solver_error)?;
    if !matches!(values.status(), SolutionStatus::Optimal) {
        return Err(IlpError::Solver {
            message: format!("stopped with status {:?}", values.status()),
        });
    }
    let count = |v: Variable| values.value(v).round().max(0.0) as usize;
    let mut sol = p.empty_solution();
    for (g, ys) in groups.iter().zip(&y) {
        let mut gpus = g.gpus.iter();
        for ((_, layout), &v) in g.columns.iter().zip(ys) {
            for &m in gpus.by_ref().take(count(v)) {
                sol.layouts[m] = *layout;
            }
        }
        // Rounding can only leave GPUs over when the solver's values do not add up; they
        // take the first column (any column is a valid layout).
        for &m in gpus {
            sol.layouts[m] = g.columns[0].1;
        }
    }
    // Requests of each profile, by priority (then input order), onto free instances in GPU
    // order, as many as the program serves.
    for (d, &gp) in dims.iter().enumerate() {
        let mut serve: usize = z[d].iter().map(|&(_, v)| count(v)).sum();
        let mut reqs: Vec<usize> = (0..p.reqs.len())
            .filter(|&i| p.reqs[i].kind == ReqKind::Mig(gp))
            .collect();
        reqs.sort_by_key(|&i| std::cmp::Reverse(p.reqs[i].prio));
        let mut reqs = reqs.into_iter();
        'gpus: for m in 0..p.mig.len() {
            let Some(lp) = p.local[p.mig[m].t][gp] else {
                continue;
            };
            for c in bits(p.free_of(m, sol.layouts[m], lp)) {
                if serve == 0 {
                    break 'gpus;
                }
                let Some(i) = reqs.next() else {
                    break 'gpus;
                };
                sol.slots[i] = Some(Slot::Mig(m, c));
                serve -= 1;
            }
        }
    }
    Ok(sol)
}

#[cfg(all(test, feature = "ilp"))]
mod tests {
    use super::*;
    use crate::gen;
    use crate::input::NodeSpec;

    /// `gen::small_instance` with only its MIG GPUs and MIG requests.
    fn small_mig(c: &Catalog, seed: u64) -> (ClusterSpec, Vec<RequestSpec>) {
        let (cluster, requests) = gen::small_instance(c, seed);
        let nodes = cluster
            .nodes
            .into_iter()
            .map(|n| NodeSpec {
                name: n.name,
                gpus: n
                    .gpus
                    .into_iter()
                    .filter(|g| g.mode == GpuMode::Mig)
                    .collect(),
            })
            .filter(|n| !n.gpus.is_empty())
            .collect();
        let requests = requests
            .into_iter()
            .filter(|r| matches!(r.kind, crate::RequestKind::Mig(_)))
            .collect();
        (ClusterSpec { nodes }, requests)
    }

    #[test]
    fn the_program_finds_the_exact_optimum_on_small_instances() {
        let c = Catalog::builtin();
        let opts = PlanOptions::with_policy(Policy::Exact);
        let mut compared = 0;
        let mut nontrivial = 0;
        for seed in 0..150 {
            let (cluster, requests) = small_mig(c, seed);
            if cluster.nodes.is_empty() {
                continue;
            }
            let Ok((_, exact)) = crate::plan_with_objective(c, &cluster, &requests, &opts) else {
                continue;
            };
            let ilp = optimum(c, &cluster, &requests).unwrap();
            assert_eq!(
                ilp.objective.served_priority, exact.served_priority,
                "seed {seed}"
            );
            // The reference is a real plan: the public checker accepts it.
            let checked = crate::check_plan(c, &cluster, &requests, &opts, &ilp.plan).unwrap();
            assert_eq!(checked.served_priority, exact.served_priority);
            compared += 1;
            if exact.served < requests.len() && exact.served > 0 {
                nontrivial += 1;
            }
        }
        assert!(compared >= 100, "{compared} instances compared");
        assert!(nontrivial >= 10, "{nontrivial} instances where some wait");
    }

    #[test]
    fn the_program_is_at_least_every_policy_on_a_contended_instance() {
        let c = Catalog::builtin();
        let spec = gen::ContendedSpec::new((16, 24));
        let (cluster, requests) = gen::contended_instance(c, &spec, 3);
        let ilp = optimum(c, &cluster, &requests).unwrap();
        for policy in [Policy::Tessera, Policy::Nos, Policy::FirstFit] {
            let (_, o) = crate::plan_with_objective(
                c,
                &cluster,
                &requests,
                &PlanOptions::with_policy(policy),
            )
            .unwrap();
            assert!(
                o.served_priority <= ilp.objective.served_priority,
                "{policy}"
            );
        }
        assert!(ilp.groups >= 1 && ilp.columns >= ilp.groups);
    }

    #[test]
    fn non_mig_input_is_refused_with_its_place() {
        let c = Catalog::builtin();
        let cluster = ClusterSpec {
            nodes: vec![NodeSpec {
                name: "n0".into(),
                gpus: vec![crate::GpuSpec {
                    mode: GpuMode::Timeslice,
                    ..crate::GpuSpec::mig("a100-40gb", Vec::new())
                }],
            }],
        };
        let err = optimum(c, &cluster, &[]).unwrap_err();
        assert!(err.to_string().contains("node `n0` GPU 0"), "{err}");
    }
}
