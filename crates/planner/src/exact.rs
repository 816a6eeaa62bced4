//! The `exact` policy: the true optimum of the objective, for small inputs.
//!
//! **MIG** is the dynamic program of [`crate::dp`] over every MIG GPU and every MIG request.
//!
//! **MPS** is a branch-and-bound search over each request's GPU (or none), skipping GPUs whose
//! room equals one already tried. **Time-slicing** is optimal greedily.
//!
//! Before searching, the input's size and the number of search steps are checked against
//! [`ExactLimit`]; larger inputs are refused with the numbers.

use crate::problem::{MpsRoom, Problem, ReqKind, Slot, Solution};
use crate::{dp, mps};
use crate::{ExactLimit, PlanError};

/// Plan with the exhaustive search.
pub(crate) fn solve(p: &Problem<'_>, lim: &ExactLimit) -> Result<Solution, PlanError> {
    if p.gpus.len() > lim.max_gpus {
        return Err(PlanError::ExactTooLarge {
            detail: format!(
                "{} GPUs (limit {}), {} requests (limit {})",
                p.gpus.len(),
                lim.max_gpus,
                p.reqs.len(),
                lim.max_requests
            ),
        });
    }
    if p.reqs.len() > lim.max_requests {
        return Err(PlanError::ExactTooLarge {
            detail: format!(
                "{} requests (limit {}) on {} GPUs (limit {})",
                p.reqs.len(),
                lim.max_requests,
                p.gpus.len(),
                lim.max_gpus
            ),
        });
    }
    let mig_gpus: Vec<usize> = (0..p.mig.len()).collect();
    let mig_reqs: Vec<usize> = (0..p.reqs.len())
        .filter(|&i| matches!(p.reqs[i].kind, ReqKind::Mig(_)))
        .collect();
    let mig = dp::Search::prepare(p, &mig_gpus, &mig_reqs, lim.max_steps).map_err(|e| {
        PlanError::ExactTooLarge {
            detail: match e {
                dp::TooLarge::States(n) => format!(
                    "{n} combinations of served MIG requests (limit {})",
                    lim.max_steps
                ),
                dp::TooLarge::Steps(n) => format!(
                    "the search needs more than {} steps ({} MIG GPUs, {} MIG requests; reached {n})",
                    lim.max_steps,
                    p.mig.len(),
                    mig_reqs.len()
                ),
            },
        }
    })?;
    let mps_order = mps::order_by_priority(p, |k| matches!(k, ReqKind::Mps { .. }));
    let mps_steps = (p.mps.len() as u64 + 1)
        .checked_pow(mps_order.len() as u32)
        .unwrap_or(u64::MAX);
    if !mps_order.is_empty() && mig.steps.saturating_add(mps_steps) > lim.max_steps {
        return Err(PlanError::ExactTooLarge {
            detail: format!(
                "the search needs up to {} steps (limit {}): {} MPS requests on {} MPS GPUs, {} MIG steps",
                mig.steps.saturating_add(mps_steps),
                lim.max_steps,
                mps_order.len(),
                p.mps.len(),
                mig.steps
            ),
        });
    }
    let mut sol = p.empty_solution();
    let out = mig.run(p);
    for (k, &m) in mig_gpus.iter().enumerate() {
        sol.layouts[m] = out.layouts[k];
    }
    for (i, k, c) in out.assign {
        sol.slots[i] = Some(Slot::Mig(mig_gpus[k], c));
    }
    mps_search(p, &mps_order, &mut sol.slots);
    mps::timeslice(p, true, &mut sol.slots);
    Ok(sol)
}

/// Branch and bound over MPS requests (given in priority order).
fn mps_search(p: &Problem<'_>, order: &[usize], slots: &mut [Option<Slot>]) {
    if order.is_empty() || p.mps.is_empty() {
        return;
    }
    let reqs: Vec<(u64, u64, u32)> = order
        .iter()
        .map(|&i| match p.reqs[i].kind {
            ReqKind::Mps { mem, sm } => (p.reqs[i].prio, mem, sm),
            _ => unreachable!("order holds MPS requests only"),
        })
        .collect();
    let mut suffix = vec![0u64; reqs.len() + 1];
    for k in (0..reqs.len()).rev() {
        suffix[k] = suffix[k + 1] + reqs[k].0;
    }
    struct S<'r> {
        reqs: &'r [(u64, u64, u32)],
        suffix: Vec<u64>,
        room: Vec<MpsRoom>,
        cur: Vec<Option<usize>>,
        best_value: u64,
        best: Vec<Option<usize>>,
        found: bool,
    }
    fn rec(s: &mut S<'_>, k: usize, value: u64) {
        if k == s.reqs.len() {
            if !s.found || value > s.best_value {
                s.best_value = value;
                s.best = s.cur.clone();
                s.found = true;
            }
            return;
        }
        if s.found && value + s.suffix[k] <= s.best_value {
            return;
        }
        let (prio, mem, sm) = s.reqs[k];
        let mut tried: Vec<MpsRoom> = Vec::new();
        for g in 0..s.room.len() {
            let r = s.room[g];
            if r.0 >= mem && r.1 >= sm && r.2 > 0 && !tried.contains(&r) {
                tried.push(r);
                s.room[g] = (r.0 - mem, r.1 - sm, r.2 - 1);
                s.cur[k] = Some(g);
                rec(s, k + 1, value + prio);
                s.cur[k] = None;
                s.room[g] = r;
            }
        }
        rec(s, k + 1, value);
    }
    let mut s = S {
        reqs: &reqs,
        suffix,
        room: p.mps_room(),
        cur: vec![None; reqs.len()],
        best_value: 0,
        best: vec![None; reqs.len()],
        found: false,
    };
    rec(&mut s, 0, 0);
    for (k, &i) in order.iter().enumerate() {
        if let Some(g) = s.best[k] {
            slots[i] = Some(Slot::Mps(g));
        }
    }
}
