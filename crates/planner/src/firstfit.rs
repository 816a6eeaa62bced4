//! The `first-fit` baseline: requests by priority (then input order), each to the first GPU in
//! input order that has a free instance of its profile or room to create one at the lowest
//! allowed start. It never destroys anything.

use crate::mps;
use crate::problem::{Problem, ReqKind, Slot, Solution};

/// Plan with first-fit.
pub(crate) fn solve(p: &Problem<'_>) -> Solution {
    let mut sol = p.empty_solution();
    mig(p, &mut sol, 0);
    let order = mps::order_by_priority(p, |k| matches!(k, ReqKind::Mps { .. }));
    mps::assign_mps(&mps::mps_first_fit(p, &order), &mut sol.slots);
    mps::timeslice(p, false, &mut sol.slots);
    sol
}

/// The MIG part of first-fit. Gives up (returns `false`, leaving a partial plan) as soon as
/// the MIG priority it can still serve falls below `give_up_below`: a caller that only wants
/// a plan serving at least that much learns early that this one cannot. With `0` it always
/// completes.
pub(crate) fn mig(p: &Problem<'_>, sol: &mut Solution, give_up_below: u64) -> bool {
    let mut held: Vec<u64> = p.mig.iter().map(|g| g.busy).collect();
    let mut compute: Vec<u32> = p
        .mig
        .iter()
        .zip(&sol.layouts)
        .map(|(g, &l)| p.tables[g.t].compute_of(l))
        .collect();
    // Without destroys a GPU that cannot take a profile now never can: skip it for good.
    let mut cursor = vec![0usize; p.profiles.len()];
    let order = mps::order_by_priority(p, |k| matches!(k, ReqKind::Mig(_)));
    // The most priority this plan can still reach: all, less what it failed to serve.
    let mut reachable: u64 = order.iter().map(|&i| p.reqs[i].prio).sum();
    for i in order {
        if reachable < give_up_below {
            return false;
        }
        let ReqKind::Mig(gp) = p.reqs[i].kind else {
            continue;
        };
        #[allow(clippy::needless_range_loop)] // `m` indexes parallel vectors
        for m in cursor[gp]..p.mig.len() {
            let tix = p.mig[m].t;
            let t = &p.tables[tix];
            let choice = p.local[tix][gp].and_then(|lp| {
                let layout = sol.layouts[m];
                let idle = layout & !held[m] & t.by_profile[lp];
                if idle != 0 {
                    Some(idle.trailing_zeros() as usize)
                } else {
                    crate::tables::bits(t.by_profile[lp])
                        .find(|&c| t.fits_with(layout, compute[m], c))
                }
            });
            match choice {
                Some(c) => {
                    if sol.layouts[m] & (1 << c) == 0 {
                        compute[m] += u32::from(t.compute[c]);
                    }
                    sol.layouts[m] |= 1 << c;
                    held[m] |= 1 << c;
                    sol.slots[i] = Some(Slot::Mig(m, c));
                    break;
                }
                // Every GPU before the first that fits is dead for this profile.
                None => cursor[gp] = m + 1,
            }
        }
        if sol.slots[i].is_none() {
            reachable -= p.reqs[i].prio;
        }
    }
    true
}
