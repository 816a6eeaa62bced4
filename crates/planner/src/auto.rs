//! Mode choice for `mode: auto` GPUs: which of `mig`, `mps` and `timeslice` an idle GPU is
//! given, from what waits. The policies themselves never change a mode; this rule runs around
//! them, planning the problem once per candidate and keeping the best.
//!
//! # The rule
//! 1. Plan the problem with every GPU in its current mode (the *baseline*).
//! 2. Walk the `auto` GPUs in input order (node, then GPU index). For each, the candidate
//!    modes are the other modes that some request left waiting by the best plan so far asks
//!    for (`mig` only on a model with MIG profiles), in the order `mig`, `mps`, `timeslice`.
//!    Each candidate is planned with that GPU emptied into the candidate mode (no instances,
//!    clients or replicas in use) and every other GPU as chosen so far.
//! 3. The best candidate, by the plan's objective (served priority, then operations, then free
//!    score; ties to the earlier candidate), is kept only if it serves **strictly more
//!    priority** than the best plan so far: a mode changes only for work it serves.
//!    - An idle GPU (no busy instance, no client, no replica in use) that can switch takes
//!      the new mode; the walk continues from that plan.
//!    - A busy GPU, or one that cannot switch (`can_switch: false`), keeps its mode, and the
//!      change is reported as blocked ([`ModeBlock`]); the walk continues from the unchanged
//!      plan. For a busy GPU the candidate is planned as if its work had ended: the report
//!      says what it would serve once idle.
//!
//! A GPU whose mode no waiting request needs is never looked at again, so with nothing of
//! another kind waiting the cost is the baseline alone. At most `1 + 2·A` plans are made for
//! `A` auto GPUs (each plan costs what the policy costs), instead of the `3^A` of trying every
//! assignment. Since a change is kept only when it serves more, the result never serves less
//! than the baseline, and a busy GPU's mode never changes. Deterministic: fixed order, fixed
//! tie-breaks, deterministic policies.

use std::collections::HashMap;

use crate::input::{ClusterSpec, GpuMode};
use crate::plan::{GpuPlan, ModeBlock, ModeChange, Name, Plan};
use crate::typed::{self, Ask, Outcome, RequestId, Sharing};
use crate::{Objective, PlanError, PlanOptions};

/// An `auto` GPU of a typed [`typed::Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoGpu {
    /// Node index.
    pub node: usize,
    /// GPU index on the node.
    pub gpu: usize,
    /// Whether its mode can be changed now (`false`: the change is reported as blocked).
    pub can_switch: bool,
    /// Replicas it offers once time-sliced (default [`PlanOptions::timeslice_replicas`]).
    pub replicas: Option<u32>,
}

/// A mode change of one auto GPU, planned or blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoChange {
    /// Node index.
    pub node: usize,
    /// GPU index on the node.
    pub gpu: usize,
    /// The change.
    pub change: ModeChange,
}

/// A typed plan with its mode changes.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoOutcome<'c> {
    /// The plan, made with every planned change applied (the changed GPUs appear in their new
    /// mode, with empty state before the plan).
    pub outcome: Outcome<'c>,
    /// Planned and blocked changes, in input order.
    pub changes: Vec<AutoChange>,
}

/// Whether nothing runs on a GPU: no busy MIG instance, no MPS client, no replica in use.
pub fn is_idle(s: &Sharing) -> bool {
    match s {
        Sharing::Mig { instances, .. } => instances.iter().all(|i| !i.busy),
        Sharing::Mps { clients } => clients.is_empty(),
        Sharing::Timeslice { used, .. } => *used == 0,
    }
}

/// An empty GPU in `mode`.
pub(crate) fn emptied(mode: GpuMode, replicas: Option<u32>) -> Sharing {
    match mode {
        GpuMode::Mig => Sharing::mig(Vec::new()),
        GpuMode::Mps => Sharing::Mps {
            clients: Vec::new(),
        },
        GpuMode::Timeslice => Sharing::Timeslice { replicas, used: 0 },
    }
}

fn ask_mode(a: &Ask<'_>) -> GpuMode {
    match a {
        Ask::Mig { .. } => GpuMode::Mig,
        Ask::Mps(_) => GpuMode::Mps,
        Ask::Timeslice => GpuMode::Timeslice,
    }
}

/// One evaluated plan: its objective and, per mode, the waiting requests asking for it.
struct Eval {
    obj: Objective,
    waiting: [usize; 3],
}

fn mode_ix(m: GpuMode) -> usize {
    match m {
        GpuMode::Mig => 0,
        GpuMode::Mps => 1,
        GpuMode::Timeslice => 2,
    }
}

const MODES: [GpuMode; 3] = [GpuMode::Mig, GpuMode::Mps, GpuMode::Timeslice];

fn eval(
    input: &typed::Problem<'_>,
    opts: &PlanOptions,
    names: Option<&ClusterSpec>,
    kinds: &HashMap<RequestId, GpuMode>,
) -> Result<Eval, PlanError> {
    let quick = PlanOptions {
        only_changed: true,
        ..*opts
    };
    let (problem, sol) = crate::solve_input(input, &quick, names)?;
    let obj = problem.objective(&sol);
    let mut waiting = [0; 3];
    for id in problem.to_outcome(&sol, true).unassigned {
        if let Some(m) = kinds.get(&id) {
            waiting[mode_ix(*m)] += 1;
        }
    }
    Ok(Eval { obj, waiting })
}

/// Check the auto list against the problem: every entry names a GPU, none twice.
fn check_list(input: &typed::Problem<'_>, auto: &[AutoGpu]) -> Result<Vec<AutoGpu>, PlanError> {
    let mut list = auto.to_vec();
    list.sort_by_key(|a| (a.node, a.gpu));
    for (i, a) in list.iter().enumerate() {
        let bad = |problem: &str| PlanError::BadGpu {
            node: format!("#{}", a.node),
            gpu: a.gpu,
            problem: problem.to_string(),
        };
        if input
            .nodes
            .get(a.node)
            .and_then(|n| n.gpus.get(a.gpu))
            .is_none()
        {
            return Err(bad("an auto GPU that is not in the problem"));
        }
        if i > 0 && list[i - 1].node == a.node && list[i - 1].gpu == a.gpu {
            return Err(bad("listed twice as an auto GPU"));
        }
    }
    Ok(list)
}

/// Apply the rule: the problem with every planned change made, and the changes (planned and
/// blocked) in input order.
pub(crate) fn choose<'c>(
    input: &typed::Problem<'c>,
    auto: &[AutoGpu],
    opts: &PlanOptions,
    names: Option<&ClusterSpec>,
) -> Result<(typed::Problem<'c>, Vec<AutoChange>), PlanError> {
    let list = check_list(input, auto)?;
    let mut best = input.clone();
    let mut changes = Vec::new();
    if list.is_empty() {
        return Ok((best, changes));
    }
    let kinds: HashMap<RequestId, GpuMode> = input
        .requests
        .iter()
        .map(|r| (r.id, ask_mode(&r.ask)))
        .collect();
    let mut base = eval(&best, opts, names, &kinds)?;
    for a in list {
        let g = &best.nodes[a.node].gpus[a.gpu];
        let from = g.sharing.mode();
        let mig_capable = !g.model.profiles.is_empty();
        let mut winner: Option<(GpuMode, typed::Problem<'c>, Eval)> = None;
        for to in MODES {
            if to == from || base.waiting[mode_ix(to)] == 0 || (to == GpuMode::Mig && !mig_capable)
            {
                continue;
            }
            let mut trial = best.clone();
            trial.nodes[a.node].gpus[a.gpu].sharing = emptied(to, a.replicas);
            let e = eval(&trial, opts, names, &kinds)?;
            if e.obj.served_priority <= base.obj.served_priority {
                continue;
            }
            if winner
                .as_ref()
                .is_none_or(|(_, _, w)| e.obj.key() > w.obj.key())
            {
                winner = Some((to, trial, e));
            }
        }
        let Some((to, trial, e)) = winner else {
            continue;
        };
        let gain = e.obj.served_priority - base.obj.served_priority;
        let (was, now) = (base.obj.served, e.obj.served);
        let idle = is_idle(&best.nodes[a.node].gpus[a.gpu].sharing);
        let blocked = if !idle {
            Some(ModeBlock::Busy)
        } else if !a.can_switch {
            Some(ModeBlock::CannotSwitch)
        } else {
            None
        };
        let waiting = base.waiting[mode_ix(to)];
        let reason = match blocked {
            None => format!(
                "idle, and {waiting} waiting request(s) ask for {to}: as {to} the plan serves {now} request(s) instead of {was} (priority +{gain})"
            ),
            Some(ModeBlock::Busy) => format!(
                "{waiting} waiting request(s) ask for {to}: as {to} the plan would serve {now} request(s) instead of {was} (priority +{gain}), but work runs on it; it can switch once idle"
            ),
            Some(ModeBlock::CannotSwitch) => format!(
                "{waiting} waiting request(s) ask for {to}: as {to} the plan would serve {now} request(s) instead of {was} (priority +{gain}), but its mode cannot be changed now (it would need a GPU reset, or the backend cannot switch it)"
            ),
        };
        changes.push(AutoChange {
            node: a.node,
            gpu: a.gpu,
            change: ModeChange {
                from,
                to,
                reason,
                gain,
                blocked,
            },
        });
        if blocked.is_none() {
            best = trial;
            base = e;
        }
    }
    Ok((best, changes))
}

/// Plan a typed problem whose `auto` GPUs may change mode (see the module docs for the rule).
/// The outcome is the plan of the problem with every planned change made; with
/// [`PlanOptions::only_changed`] a GPU whose mode changes may be absent from
/// [`Outcome::gpus`] (when it gets no request): its change is in [`AutoOutcome::changes`].
pub fn plan_auto<'c>(
    input: &typed::Problem<'c>,
    auto: &[AutoGpu],
    opts: &PlanOptions,
) -> Result<AutoOutcome<'c>, PlanError> {
    let (chosen, changes) = choose(input, auto, opts, None)?;
    let outcome = crate::plan_typed(&chosen, opts)?;
    Ok(AutoOutcome { outcome, changes })
}

/// The auto GPUs of a cluster document.
pub(crate) fn auto_gpus(cluster: &ClusterSpec) -> Vec<AutoGpu> {
    let mut v = Vec::new();
    for (ni, n) in cluster.nodes.iter().enumerate() {
        for (gi, g) in n.gpus.iter().enumerate() {
            if let Some(a) = g.auto {
                v.push(AutoGpu {
                    node: ni,
                    gpu: gi,
                    can_switch: a.can_switch,
                    replicas: g.replicas,
                });
            }
        }
    }
    v
}

/// Put the changes into a named plan: on the GPU's entry, or (with `only_changed`, when the GPU
/// is not listed) on a new entry at its place in input order.
pub(crate) fn annotate(
    plan: &mut Plan,
    cluster: &ClusterSpec,
    input: &typed::Problem<'_>,
    changes: &[AutoChange],
) {
    // Input position of a listed GPU.
    let pos = |node: &str, gpu: usize| -> (usize, usize) {
        let n = cluster
            .nodes
            .iter()
            .position(|x| x.name == node)
            .unwrap_or(usize::MAX);
        (n, gpu)
    };
    for c in changes {
        let node = &cluster.nodes[c.node];
        if let Some(g) = plan
            .gpus
            .iter_mut()
            .find(|g| g.node == node.name && g.gpu == c.gpu)
        {
            g.mode_change = Some(c.change.clone());
            continue;
        }
        let at = plan
            .gpus
            .iter()
            .position(|g| pos(&g.node, g.gpu) > (c.node, c.gpu))
            .unwrap_or(plan.gpus.len());
        let key = &input.nodes[c.node].gpus[c.gpu].model.key;
        let model = plan
            .gpus
            .iter()
            .find(|g| g.model == *key)
            .map_or_else(|| Name::from(key), |g| g.model.clone());
        plan.gpus.insert(
            at,
            GpuPlan {
                node: Name::from(&node.name),
                gpu: c.gpu,
                model,
                mode: if c.change.blocked.is_none() {
                    c.change.to
                } else {
                    c.change.from
                },
                layout: Vec::new(),
                create: Vec::new(),
                destroy: Vec::new(),
                mode_change: Some(c.change.clone()),
            },
        );
    }
}
