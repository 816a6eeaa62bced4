//! MPS and time-slice placement shared by the policies: best-fit (the GPU with the least room
//! that still fits) and first-fit (the first GPU in input order).

use std::collections::BTreeSet;

use crate::problem::{MpsRoom, Problem, ReqKind, Slot};

/// Request indices of one kind, sorted by priority (highest first), then by `tie`, then input
/// order.
pub(crate) fn order_by<K: Ord>(
    p: &Problem<'_>,
    want: impl Fn(&ReqKind) -> bool,
    tie: impl Fn(&ReqKind) -> K,
) -> Vec<usize> {
    // Keys computed once; a stable sort keeps input order among equal keys.
    let mut v: Vec<((std::cmp::Reverse<u64>, K), usize)> = p
        .reqs
        .iter()
        .enumerate()
        .filter(|(_, r)| want(&r.kind))
        .map(|(i, r)| ((std::cmp::Reverse(r.prio), tie(&r.kind)), i))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(_, i)| i).collect()
}

/// Request indices of one kind, sorted by priority (highest first), then input order: one
/// packed integer key per request (priority above index), so a plain sort gives the order.
pub(crate) fn order_by_priority(p: &Problem<'_>, want: impl Fn(&ReqKind) -> bool) -> Vec<usize> {
    if p.reqs.len() > u32::MAX as usize {
        return order_by(p, want, |_| 0u8);
    }
    let mut keys: Vec<u64> = p
        .reqs
        .iter()
        .enumerate()
        .filter(|(_, r)| want(&r.kind))
        .map(|(i, r)| ((u64::from(u32::MAX) - r.prio.min(u64::from(u32::MAX))) << 32) | i as u64)
        .collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|k| (k & 0xffff_ffff) as usize)
        .collect()
}

/// Place MPS requests in `order`, each on the fitting GPU with the least free memory; returns
/// the (request, MPS GPU) placements.
pub(crate) fn mps_best_fit(p: &Problem<'_>, order: &[usize]) -> Vec<(usize, usize)> {
    let mut picks = Vec::new();
    let mut room = p.mps_room();
    // GPUs without room for the smallest SM share asked for are left out of the search.
    let min_sm = order
        .iter()
        .filter_map(|&i| match p.reqs[i].kind {
            ReqKind::Mps { sm, .. } => Some(sm),
            _ => None,
        })
        .min()
        .unwrap_or(0);
    let usable = |r: &MpsRoom| r.2 > 0 && r.1 >= min_sm;
    let mut by_mem: BTreeSet<(u64, usize)> = room
        .iter()
        .enumerate()
        .filter(|(_, r)| usable(r))
        .map(|(g, r)| (r.0, g))
        .collect();
    for &i in order {
        let ReqKind::Mps { mem, sm } = p.reqs[i].kind else {
            continue;
        };
        let found = by_mem
            .range((mem, 0)..)
            .find(|&&(_, g)| room[g].1 >= sm && room[g].2 > 0)
            .copied();
        if let Some((free, g)) = found {
            by_mem.remove(&(free, g));
            room[g].0 -= mem;
            room[g].1 -= sm;
            room[g].2 -= 1;
            if usable(&room[g]) {
                by_mem.insert((room[g].0, g));
            }
            picks.push((i, g));
        }
    }
    picks
}

/// Place MPS requests in `order`, each on the first GPU (input order) where it fits; returns
/// the (request, MPS GPU) placements.
pub(crate) fn mps_first_fit(p: &Problem<'_>, order: &[usize]) -> Vec<(usize, usize)> {
    const BLOCK: usize = 32;
    let mut picks = Vec::new();
    let mut room = p.mps_room();
    // Per block of GPUs, the most memory and SM any one of them has left: whole blocks that
    // cannot fit a request are skipped (same answer as a plain scan, fewer checks).
    let block_max = |room: &[MpsRoom], b: usize| -> (u64, u32) {
        room[b * BLOCK..((b + 1) * BLOCK).min(room.len())]
            .iter()
            .filter(|r| r.2 > 0)
            .fold((0, 0), |(m, s), r| (m.max(r.0), s.max(r.1)))
    };
    let nblocks = room.len().div_ceil(BLOCK);
    let mut maxes: Vec<(u64, u32)> = (0..nblocks).map(|b| block_max(&room, b)).collect();
    for &i in order {
        let ReqKind::Mps { mem, sm } = p.reqs[i].kind else {
            continue;
        };
        let hit = (0..nblocks)
            .filter(|&b| maxes[b].0 >= mem && maxes[b].1 >= sm)
            .find_map(|b| {
                (b * BLOCK..((b + 1) * BLOCK).min(room.len()))
                    .find(|&g| room[g].0 >= mem && room[g].1 >= sm && room[g].2 > 0)
            });
        if let Some(g) = hit {
            room[g].0 -= mem;
            room[g].1 -= sm;
            room[g].2 -= 1;
            maxes[g / BLOCK] = block_max(&room, g / BLOCK);
            picks.push((i, g));
        }
    }
    picks
}

/// Write MPS placements into `slots`.
pub(crate) fn assign_mps(picks: &[(usize, usize)], slots: &mut [Option<Slot>]) {
    for &(i, g) in picks {
        slots[i] = Some(Slot::Mps(g));
    }
}

/// Place time-slice requests by priority: best-fit (fewest free replicas first) or first-fit.
pub(crate) fn timeslice(p: &Problem<'_>, best_fit: bool, slots: &mut [Option<Slot>]) {
    let order = order_by_priority(p, |k| *k == ReqKind::Ts);
    let mut free: Vec<u32> = p.ts.iter().map(|g| g.free).collect();
    let mut set: BTreeSet<(u32, usize)> = free
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 0)
        .map(|(g, &f)| (if best_fit { f } else { 0 }, g))
        .collect();
    for i in order {
        let Some(&(k, g)) = set.iter().next() else {
            break;
        };
        set.remove(&(k, g));
        free[g] -= 1;
        if free[g] > 0 {
            set.insert((if best_fit { free[g] } else { 0 }, g));
        }
        slots[i] = Some(Slot::Ts(g));
    }
}

/// Served priority of MPS placements.
fn mps_value(p: &Problem<'_>, picks: &[(usize, usize)]) -> u64 {
    picks.iter().map(|&(i, _)| p.reqs[i].prio).sum()
}

/// Tessera's MPS step. Two candidate plans, the better kept (ties: the first): by priority and
/// then the smaller dominant share (the larger of the memory and SM fractions) first, each on
/// the fitting GPU with the least free memory; and the first-fit plan (priority, then input
/// order, first GPU that fits), so tessera never serves less than first-fit on MPS.
pub(crate) fn mps_tessera(p: &Problem<'_>, slots: &mut [Option<Slot>]) {
    if p.mps.is_empty() {
        return;
    }
    let is_mps = |k: &ReqKind| matches!(k, ReqKind::Mps { .. });
    let mem_ref = p.mps.iter().map(|g| g.mem_total).max().unwrap_or(1).max(1);
    let share = |k: &ReqKind| match k {
        ReqKind::Mps { mem, sm } => {
            (u128::from(*mem) * 10_000 / u128::from(mem_ref)).max(u128::from(*sm) * 100)
        }
        _ => 0,
    };
    let a = mps_best_fit(p, &order_by(p, is_mps, share));
    let b = mps_first_fit(p, &order_by_priority(p, is_mps));
    let best = if mps_value(p, &b) > mps_value(p, &a) {
        b
    } else {
        a
    };
    assign_mps(&best, slots);
}
