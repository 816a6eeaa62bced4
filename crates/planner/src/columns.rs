//! Repacking by layout columns: the tessera policy's answer to contended clusters, where the
//! greedy spreads small requests so that larger profiles no longer fit anywhere.
//!
//! A GPU's **column** is how many free instances of each requested profile one valid layout
//! of it offers (keeping its busy instances). Whatever else a plan decides, it serves at most,
//! per profile, the sum of its GPUs' columns, and exactly the best requests up to that sum can
//! be served. So the served priority of a choice of one column per GPU is
//! `Σ_p prefix_p(min(capacity_p, demand_p))`, where `prefix_p` sums profile `p`'s priorities,
//! highest first.
//!
//! 1. *Columns.* GPUs of one model with the same busy instances share their columns: every
//!    valid layout that keeps the busy instances and adds only requested profiles is
//!    enumerated once per such state; equal columns are kept once, dominated ones dropped.
//! 2. *Search.* Starting from the columns of the plan so far (so the result never serves less),
//!    each GPU in turn moves to the column that raises the served priority most, until no move
//!    does. Then *kicks*: a GPU drawn at random takes a column with more of a profile still
//!    short of its demand, and single moves repair around it; the result stays when it serves
//!    at least as much (drifting over plateaus), else it is undone; the best state seen wins.
//!    The draws come from a fixed seed and the work from a fixed budget of column evaluations:
//!    deterministic.
//! 3. *Realisation.* The best requests of each profile up to its capacity are handed to GPUs
//!    with room in their columns, those already serving the request first; every GPU whose
//!    requests changed is re-solved exactly on its own ([`crate::dp`]: the fewest operations
//!    that serve them, then the best free score).
//!
//! The caller keeps the result only when it is better by the objective, and improves it like
//! any plan.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::problem::{Problem, ReqKind, Slot, Solution};

/// Up to this many MIG GPUs the repacking runs (beyond, its cost would break the speed target
/// of large clusters; their greedy plan stands).
pub(crate) const COLUMNS_UP_TO: usize = 1024;
/// Layouts the column enumeration may visit per plan.
const ENUM_BUDGET: u64 = 2_000_000;
/// Passes of single moves before the kicks.
const PASSES: usize = 6;
/// Column evaluations the kicks may spend per plan.
const KICK_BUDGET: u64 = 1_500_000;
/// Seed of the kicks' random choices (fixed: the same input gives the same plan).
const KICK_SEED: u64 = 0x7e55_e7a0;

/// The repacked solution, when the search found columns that serve more than `sol`.
pub(crate) fn repack(p: &Problem<'_>, sol: &Solution) -> Option<Solution> {
    let n = p.mig.len();
    if n == 0 || n > COLUMNS_UP_TO {
        return None;
    }
    // Requested profiles (dimensions), their requests best first, prefix sums of priorities.
    let mut dim_of = vec![usize::MAX; p.profiles.len()];
    let mut reqs: Vec<Vec<usize>> = Vec::new();
    for (i, r) in p.reqs.iter().enumerate() {
        if let ReqKind::Mig(gp) = r.kind {
            if dim_of[gp] == usize::MAX {
                dim_of[gp] = reqs.len();
                reqs.push(Vec::new());
            }
            reqs[dim_of[gp]].push(i);
        }
    }
    let dims = reqs.len();
    if dims == 0 {
        return None;
    }
    let gp_of: Vec<usize> = {
        let mut v = vec![0; dims];
        for (gp, &d) in dim_of.iter().enumerate() {
            if d != usize::MAX {
                v[d] = gp;
            }
        }
        v
    };
    for v in &mut reqs {
        v.sort_by_key(|&i| (Reverse(p.reqs[i].prio), i));
    }
    let prefix: Vec<Vec<u64>> = reqs
        .iter()
        .map(|v| {
            let mut acc = vec![0u64];
            for &i in v {
                acc.push(acc.last().copied().unwrap_or(0) + p.reqs[i].prio);
            }
            acc
        })
        .collect();
    let f = |d: usize, c: i64| -> u64 {
        let c = c.clamp(0, reqs[d].len() as i64) as usize;
        prefix[d][c]
    };

    // 1. Columns per state.
    let mut group_of: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    let mut columns: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut group_dims: Vec<Vec<usize>> = Vec::new();
    let mut gpu_group = vec![0usize; n];
    let mut budget = ENUM_BUDGET;
    for (m, g) in p.mig.iter().enumerate() {
        let key = (g.t, g.busy);
        if let Some(&k) = group_of.get(&key) {
            gpu_group[m] = k;
            continue;
        }
        let t = &p.tables[g.t];
        let local: Vec<Option<usize>> = gp_of.iter().map(|&gp| p.local[g.t][gp]).collect();
        let extra = local
            .iter()
            .flatten()
            .fold(0u64, |acc, &lp| acc | t.by_profile[lp]);
        let mut seen: BTreeMap<Vec<u32>, ()> = BTreeMap::new();
        let mut out_of_budget = false;
        t.for_each_superset(g.busy, extra, &mut |layout| {
            if budget == 0 {
                out_of_budget = true;
                return false;
            }
            budget -= 1;
            let free = layout & !g.busy;
            let col: Vec<u32> = local
                .iter()
                .map(|lp| lp.map_or(0, |lp| (free & t.by_profile[lp]).count_ones()))
                .collect();
            seen.insert(col, ());
            true
        });
        if out_of_budget {
            return None;
        }
        let all: Vec<Vec<u32>> = seen.into_keys().collect();
        let dominated = |a: &[u32], b: &[u32]| a != b && a.iter().zip(b).all(|(x, y)| x <= y);
        let undominated: Vec<Vec<u32>> = all
            .iter()
            .filter(|a| !all.iter().any(|b| dominated(a, b)))
            .cloned()
            .collect();
        group_of.insert(key, columns.len());
        gpu_group[m] = columns.len();
        columns.push(undominated);
        group_dims.push((0..dims).filter(|&d| local[d].is_some()).collect());
    }

    // 2. Search, from the current plan's columns.
    let col: Vec<Vec<u32>> = (0..n)
        .map(|m| {
            let t = p.t(m);
            let free = sol.layouts[m] & !p.mig[m].busy;
            gp_of
                .iter()
                .map(|&gp| {
                    p.local[p.mig[m].t][gp].map_or(0, |lp| (free & t.by_profile[lp]).count_ones())
                })
                .collect()
        })
        .collect();
    let mut s = Search::new(&prefix, &columns, &group_dims, &gpu_group, col);
    let start_value = s.value();
    for _ in 0..PASSES {
        if !s.singles(None) {
            break;
        }
    }
    s.kicks();
    let (col, cap) = (s.best_col, s.best_cap);
    let value: u64 = (0..dims).map(|d| f(d, cap[d])).sum();
    if value <= start_value {
        return None;
    }

    // 3. Realisation: the best requests up to capacity, to GPUs with room; a request already
    // served keeps its GPU where that GPU's column still has room for its profile.
    let mut room = col;
    let mut on: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (d, list) in reqs.iter().enumerate() {
        let serve = (cap[d].max(0) as usize).min(list.len());
        let mut rest = Vec::new();
        for &i in &list[..serve] {
            match sol.slots[i] {
                Some(Slot::Mig(m, _)) if room[m][d] > 0 => {
                    room[m][d] -= 1;
                    on[m].push(i);
                }
                _ => rest.push(i),
            }
        }
        let mut m = 0;
        for i in rest {
            while m < n && room[m][d] == 0 {
                m += 1;
            }
            if m == n {
                break;
            }
            room[m][d] -= 1;
            on[m].push(i);
        }
    }
    let mut out = sol.clone();
    for s in out.slots.iter_mut() {
        if matches!(s, Some(Slot::Mig(..))) {
            *s = None;
        }
    }
    for (m, list) in on.iter_mut().enumerate() {
        list.sort_unstable();
        let mut before: Vec<usize> = sol
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Some(Slot::Mig(g, _)) if *g == m))
            .map(|(i, _)| i)
            .collect();
        before.sort_unstable();
        if *list == before {
            for &i in list.iter() {
                out.slots[i] = sol.slots[i];
            }
            continue;
        }
        if list.is_empty() {
            out.layouts[m] = p.mig[m].existing;
            continue;
        }
        let search = crate::dp::Search::prepare(p, &[m], list, u64::MAX).ok()?;
        let o = search.run(p);
        out.layouts[m] = o.layouts[0];
        for (i, _, c) in o.assign {
            out.slots[i] = Some(Slot::Mig(m, c));
        }
    }
    Some(out)
}

/// The column search's state: each GPU's column, the capacities, the best found.
struct Search<'s> {
    prefix: &'s [Vec<u64>],
    columns: &'s [Vec<Vec<u32>>],
    /// Per group: the dimensions its model has (its columns are 0 elsewhere).
    group_dims: &'s [Vec<usize>],
    group: &'s [usize],
    col: Vec<Vec<u32>>,
    cap: Vec<i64>,
    best_col: Vec<Vec<u32>>,
    best_cap: Vec<i64>,
    best_value: u64,
    /// Changes since the last accepted state: (GPU, its column before).
    log: Vec<(usize, Vec<u32>)>,
    delta: Vec<i64>,
}

impl<'s> Search<'s> {
    fn new(
        prefix: &'s [Vec<u64>],
        columns: &'s [Vec<Vec<u32>>],
        group_dims: &'s [Vec<usize>],
        group: &'s [usize],
        col: Vec<Vec<u32>>,
    ) -> Self {
        let dims = prefix.len();
        let mut cap = vec![0i64; dims];
        for c in &col {
            for (d, &x) in c.iter().enumerate() {
                cap[d] += i64::from(x);
            }
        }
        let mut s = Search {
            prefix,
            columns,
            group_dims,
            group,
            best_col: col.clone(),
            best_cap: cap.clone(),
            col,
            cap,
            best_value: 0,
            log: Vec::new(),
            delta: vec![0; dims],
        };
        s.best_value = s.value();
        s
    }

    fn f(&self, d: usize, c: i64) -> u64 {
        let c = c.clamp(0, self.prefix[d].len() as i64 - 1) as usize;
        self.prefix[d][c]
    }

    fn value(&self) -> u64 {
        (0..self.cap.len()).map(|d| self.f(d, self.cap[d])).sum()
    }

    /// The change of the served priority when the capacities change by `delta` (0 outside
    /// `dims`).
    fn gain_on(&self, dims: &[usize], delta: &[i64]) -> i64 {
        let mut g = 0i64;
        for &d in dims {
            let x = delta[d];
            if x != 0 {
                g += self.f(d, self.cap[d] + x) as i64 - self.f(d, self.cap[d]) as i64;
            }
        }
        g
    }

    /// Give GPU `m` column `c`.
    fn set(&mut self, m: usize, c: Vec<u32>) {
        for (d, (&new, &old)) in c.iter().zip(&self.col[m]).enumerate() {
            self.cap[d] += i64::from(new) - i64::from(old);
        }
        let old = std::mem::replace(&mut self.col[m], c);
        self.log.push((m, old));
    }

    /// Keep the current state as the best when it is better.
    fn note(&mut self) {
        let v = self.value();
        if v > self.best_value {
            self.best_value = v;
            self.best_col.clone_from(&self.col);
            self.best_cap.clone_from(&self.cap);
        }
    }

    /// One pass of single moves: each GPU to its best column when that serves more. Counts
    /// the evaluations into `spent`. Whether anything moved.
    fn singles(&mut self, mut spent: Option<&mut u64>) -> bool {
        let mut moved = false;
        let mut delta = std::mem::take(&mut self.delta);
        for m in 0..self.col.len() {
            let cols = &self.columns[self.group[m]];
            let gd = &self.group_dims[self.group[m]];
            if let Some(s) = spent.as_deref_mut() {
                *s += cols.len() as u64;
            }
            let mut best: Option<(i64, usize)> = None;
            for (k, c) in cols.iter().enumerate() {
                for &d in gd {
                    delta[d] = i64::from(c[d]) - i64::from(self.col[m][d]);
                }
                let g = self.gain_on(gd, &delta);
                if g > 0 && best.is_none_or(|(b, _)| g > b) {
                    best = Some((g, k));
                }
            }
            if let Some((_, k)) = best {
                self.set(m, cols[k].clone());
                moved = true;
            }
        }
        self.delta = delta;
        self.note();
        moved
    }

    /// Kicks: a seeded random GPU takes a random column that adds to a profile still short of
    /// its demand, single moves repair the rest; the result stays when it serves at least as
    /// much (so the search drifts over plateaus), otherwise it is undone.
    fn kicks(&mut self) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(KICK_SEED);
        let n = self.col.len();
        let mut spent = 0u64;
        let mut current = self.value();
        // The most any choice could serve: every profile at the sum of its GPUs' largest
        // column entries. Reaching it ends the search.
        let mut most = vec![0i64; self.cap.len()];
        for m in 0..n {
            for &d in &self.group_dims[self.group[m]] {
                let top = self.columns[self.group[m]].iter().map(|c| c[d]).max();
                most[d] += i64::from(top.unwrap_or(0));
            }
        }
        let bound: u64 = (0..most.len()).map(|d| self.f(d, most[d])).sum();
        // Kicks without a new best before giving up.
        let patience = 20 * n + 200;
        let mut stale = 0;
        while spent < KICK_BUDGET && self.best_value < bound && stale < patience {
            stale += 1;
            let before = self.best_value;
            let short: Vec<usize> = (0..self.cap.len())
                .filter(|&d| self.cap[d] < self.prefix[d].len() as i64 - 1)
                .collect();
            if short.is_empty() {
                break;
            }
            let d = short[rng.random_range(0..short.len())];
            let m = rng.random_range(0..n);
            let cols = &self.columns[self.group[m]];
            spent += cols.len() as u64;
            let more: Vec<usize> = (0..cols.len())
                .filter(|&k| cols[k][d] > self.col[m][d])
                .collect();
            if more.is_empty() {
                continue;
            }
            self.log.clear();
            let k = more[rng.random_range(0..more.len())];
            self.set(m, cols[k].clone());
            while self.singles(Some(&mut spent)) && spent < KICK_BUDGET {}
            let v = self.value();
            if self.best_value > before {
                stale = 0;
            }
            if v >= current {
                current = v;
            } else {
                while let Some((g, old)) = self.log.pop() {
                    for (d, (&new, &was)) in old.iter().zip(&self.col[g]).enumerate() {
                        self.cap[d] += i64::from(new) - i64::from(was);
                    }
                    self.col[g] = old;
                }
            }
        }
    }
}
