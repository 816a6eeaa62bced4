//! The tessera planner: given a cluster's GPUs (their mode, current slices, and which slices are
//! busy) and the requests that wait, decide every GPU's new layout and which request gets which
//! slice. Pure and deterministic: no I/O, no clock, randomness only from an explicit seed
//! ([`gen`]); the same input gives the same [`Plan`] byte for byte.
//!
//! # Semantics
//! - A GPU is in one mode, `mig`, `mps` or `timeslice`; the planner never changes modes.
//! - **MIG**: a request names a profile exactly (`1g.10gb`; names compare without case and
//!   match any model that has the profile). The plan may destroy idle instances and create new
//!   ones at exact placements; it never destroys or moves a busy (`used`) instance. A request is
//!   assigned only an instance that is free (not busy) in the GPU's final layout, and every final
//!   layout satisfies the model's layout rules (`GpuModel::validate`).
//! - **MPS**: a request asks for device memory (MiB) and an SM share (percent). A GPU takes
//!   clients while their memory fits in the GPU's memory minus [`PlanOptions::mps_reserve_mib`],
//!   their SM percentages add up to at most `100 ×` [`PlanOptions::mps_sm_oversubscription`],
//!   and there are at most [`PlanOptions::mps_max_clients`] clients.
//! - **Time-slicing**: a request takes one replica; a GPU offers `replicas` (default
//!   [`PlanOptions::timeslice_replicas`]).
//!
//! # Objective
//! Plans are compared lexicographically:
//! 1. **maximise the total priority of served requests** (priority defaults to 1);
//! 2. then **minimise the operations**: MIG instances created plus MIG instances destroyed;
//! 3. then **maximise the free score** `Σ L²` over MIG GPUs, where `L` measures the largest
//!    profile of the GPU's model that has an allowed placement lying entirely on slices held by
//!    no busy or assigned instance (idle instances count as free space, since they can be
//!    destroyed at no risk): `L = 16 × memory slices + compute slices` of that profile, so size
//!    decides and compute slices break ties (an H100 that can still take `4g.40gb` beats one that
//!    can only take `3g.40gb`). Squaring rewards keeping whole GPUs and large contiguous ranges
//!    free, able to serve the largest profiles.
//!
//! MPS and time-slice placements add no operations and no free score; among equal plans the
//! policies put them best-fit (on the GPU with the least room that still fits).
//!
//! # Policies
//! See [`Policy`]: `tessera` (ours: two best-fit greedy runs, then an exact re-solve of single
//! GPUs and GPU pairs, never below first-fit), `nos` (a re-implementation of the nos algorithm),
//! `first-fit` and `exact` (exhaustive, small inputs only).
//!
//! # Entry points
//! [`plan_typed`] plans a [`typed::Problem`] (models, placements, profile indices, the
//! caller's request ids, held regions) into a [`typed::Outcome`]; [`plan()`] (and
//! [`plan_with_objective`]) is the same planner on the YAML/JSON documents of `tessera plan`; [`plan_explained`] adds why each
//! waiting request waits ([`Waiting`]); [`check_plan`] verifies any plan
//! against its input and computes its [`Objective`]; [`gen`] makes seeded inputs; [`quality`]
//! compares the policies with the optimum.

mod check;
mod columns;
mod dp;
mod error;
mod exact;
mod explain;
mod firstfit;
pub mod gen;
mod holds;
pub mod ilp;
pub mod input;
mod memo;
mod mps;
mod nos;
pub mod plan;
mod problem;
pub use problem::SolutionError;
pub mod quality;
mod tables;
mod tessera;
pub mod typed;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tessera_model::Catalog;

pub use check::check_plan;
pub use error::PlanError;
pub use explain::{WaitReason, Waiting};
pub use holds::{choose_hold, same_profile};
pub use input::{
    ClusterSpec, GpuMode, GpuSpec, InstanceSpec, MpsClientSpec, MpsRequest, NodeSpec, PlanDocument,
    RequestKind, RequestShapeError, RequestSpec, RequestsFile, UnknownMode,
};
pub use plan::{AssignedSlice, Assignment, GpuPlan, InstanceRef, Name, Plan, PlanStats};

/// A planning algorithm.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Ours: reuse free matching instances, then create in free space, then destroy idle
    /// instances only where that serves more; GPUs chosen best-fit by the free score; then an
    /// exact re-solve of single GPUs and GPU pairs; never serves less than first-fit.
    #[default]
    Tessera,
    /// The nos algorithm (per-profile geometries, node-name order, lacking-vector scoring),
    /// with our placements used only to turn its counts into a valid layout.
    Nos,
    /// Requests by priority, each to the first GPU (input order) that has a free matching
    /// instance or room to create one; never destroys.
    FirstFit,
    /// Exhaustive search for the optimum of the objective; refuses large inputs.
    Exact,
}

impl Policy {
    /// Every policy, in a fixed order.
    pub const ALL: [Policy; 4] = [
        Policy::Tessera,
        Policy::Nos,
        Policy::FirstFit,
        Policy::Exact,
    ];

    /// The policy's name (`tessera`, `nos`, `first-fit`, `exact`).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Tessera => "tessera",
            Policy::Nos => "nos",
            Policy::FirstFit => "first-fit",
            Policy::Exact => "exact",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let name = match name.as_str() {
            "firstfit" | "first_fit" => "first-fit",
            other => other,
        };
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| UnknownPolicy {
                name: s.trim().to_string(),
                choices: Policy::ALL.map(Policy::as_str).to_vec(),
            })
    }
}

/// A policy name that is not among the choices of the command or library that parsed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy `{name}`; use {}", choices.join(", "))]
pub struct UnknownPolicy {
    /// The name given.
    pub name: String,
    /// The names accepted there.
    pub choices: Vec<&'static str>,
}

/// The most the `exact` policy takes on; larger inputs are refused with these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactLimit {
    /// Most GPUs (all modes together).
    pub max_gpus: usize,
    /// Most pending requests.
    pub max_requests: usize,
    /// Most search steps (dynamic-programming transitions plus MPS search nodes), estimated
    /// before searching.
    pub max_steps: u64,
}

impl Default for ExactLimit {
    fn default() -> Self {
        ExactLimit {
            max_gpus: 12,
            max_requests: 24,
            max_steps: 50_000_000,
        }
    }
}

/// Options of a planning run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    /// The algorithm.
    pub policy: Policy,
    /// MiB of each MPS GPU's memory kept for the driver and MPS server (default 512).
    pub mps_reserve_mib: u64,
    /// Factor on the 100 % SM budget of an MPS GPU (default 1.0: no oversubscription).
    pub mps_sm_oversubscription: f64,
    /// Most MPS clients per GPU (default 48, the Volta+ limit).
    pub mps_max_clients: u32,
    /// Replicas of a time-slice GPU whose `replicas` is not given (default 4).
    pub timeslice_replicas: u32,
    /// Size limits of the `exact` policy.
    pub exact_limit: ExactLimit,
    /// List in [`Plan::gpus`] only the GPUs the plan changes or gives a request to (default
    /// `false`: every GPU). For callers that plan often on large clusters: building thousands
    /// of unchanged entries is most of the cost of a plan with few requests.
    pub only_changed: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            policy: Policy::Tessera,
            mps_reserve_mib: 512,
            mps_sm_oversubscription: 1.0,
            mps_max_clients: 48,
            timeslice_replicas: 4,
            exact_limit: ExactLimit::default(),
            only_changed: false,
        }
    }
}

impl PlanOptions {
    /// Default options with another policy.
    pub fn with_policy(policy: Policy) -> Self {
        PlanOptions {
            policy,
            ..PlanOptions::default()
        }
    }
}

/// How good a plan is, in the terms of the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Objective {
    /// Requests served.
    pub served: usize,
    /// Sum of served priorities (maximised first).
    pub served_priority: u64,
    /// MIG creates plus destroys (minimised second).
    pub operations: u64,
    /// `Σ L²` over MIG GPUs (maximised third).
    pub free_score: u64,
}

impl Objective {
    /// A key whose natural order is the objective's: greater is better.
    pub fn key(&self) -> (u64, std::cmp::Reverse<u64>, u64) {
        (
            self.served_priority,
            std::cmp::Reverse(self.operations),
            self.free_score,
        )
    }

    /// Whether `self` is strictly better than `other`.
    pub fn better_than(&self, other: &Objective) -> bool {
        self.key() > other.key()
    }
}

/// Plan `requests` on `cluster` with `opts.policy`: the file-format entry point of
/// `tessera plan`. The documents are converted to a [`typed::Problem`] and the typed plan back
/// to names in one place each; [`plan_typed`] is the same planner without names. Errors are bad
/// input only (unknown model or profile, invalid current layout, duplicate ids, bad limits) or,
/// for `exact`, an input too large to search.
pub fn plan(
    catalog: &Catalog,
    cluster: &ClusterSpec,
    requests: &[RequestSpec],
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let (input, labels) = input::resolve(catalog, cluster, requests)?;
    let (problem, sol) = solve_input(&input, opts, Some(cluster))?;
    Ok(labels.plan(&problem, &sol, opts.policy, opts.only_changed))
}

/// Plan and also return the objective of the plan (what `bench quality` compares).
pub fn plan_with_objective(
    catalog: &Catalog,
    cluster: &ClusterSpec,
    requests: &[RequestSpec],
    opts: &PlanOptions,
) -> Result<(Plan, Objective), PlanError> {
    let (input, labels) = input::resolve(catalog, cluster, requests)?;
    let (problem, sol) = solve_input(&input, opts, Some(cluster))?;
    Ok((
        labels.plan(&problem, &sol, opts.policy, opts.only_changed),
        problem.objective(&sol),
    ))
}

/// Plan a typed problem: the planner's own entry point, for callers that hold models,
/// placements and profile indices (the daemon's scheduler, the simulator). Same semantics,
/// objective and determinism as [`plan()`], plus held regions ([`typed::Hold`]).
pub fn plan_typed<'c>(
    input: &typed::Problem<'c>,
    opts: &PlanOptions,
) -> Result<typed::Outcome<'c>, PlanError> {
    let (problem, sol) = solve_input(input, opts, None)?;
    Ok(problem.to_outcome(&sol, opts.only_changed))
}

/// Plan, then say why each request left waiting waits ([`Waiting`], in input order): the
/// reasons are computed from the plan's final state, after planning, so the plan itself is the
/// one [`plan()`] returns, byte for byte.
pub fn plan_explained(
    catalog: &Catalog,
    cluster: &ClusterSpec,
    requests: &[RequestSpec],
    opts: &PlanOptions,
) -> Result<(Plan, Vec<Waiting>), PlanError> {
    let (input, labels) = input::resolve(catalog, cluster, requests)?;
    let (problem, sol) = solve_input(&input, opts, Some(cluster))?;
    Ok((
        labels.plan(&problem, &sol, opts.policy, opts.only_changed),
        explain::explain(&problem, &sol, opts.policy, &labels),
    ))
}

/// Resolve and solve a typed input: directly, or through the view of its held regions.
fn solve_input<'c>(
    input: &typed::Problem<'c>,
    opts: &PlanOptions,
    names: Option<&ClusterSpec>,
) -> Result<(problem::Problem<'c>, problem::Solution), PlanError> {
    let problem = problem::Problem::new(input, opts, names, &[])?;
    if !holds::any(input) {
        let sol = solve(&problem, opts)?;
        debug_assert_eq!(problem.check(&sol), Ok(()));
        return Ok((problem, sol));
    }
    let v = holds::view(input, &problem);
    let view = problem::Problem::new(&v.input, opts, names, &v.phantoms)?;
    let view_sol = solve(&view, opts)?;
    debug_assert_eq!(view.check(&view_sol), Ok(()));
    let sol = holds::back(&problem, &v, &view_sol);
    debug_assert_eq!(problem.check(&sol), Ok(()));
    Ok((problem, sol))
}

fn solve(p: &problem::Problem<'_>, opts: &PlanOptions) -> Result<problem::Solution, PlanError> {
    Ok(match opts.policy {
        Policy::Tessera => tessera::solve(p),
        Policy::Nos => nos::solve(p),
        Policy::FirstFit => firstfit::solve(p),
        Policy::Exact => exact::solve(p, &opts.exact_limit)?,
    })
}
