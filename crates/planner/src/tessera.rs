//! The `tessera` policy.
//!
//! **MIG** runs in five steps:
//! 1. *Greedy, twice.* Requests are taken in groups of equal priority, highest first. Inside a
//!    group one run takes larger profiles first, the other smaller first (as a fraction of a
//!    GPU; loose clusters favour the first order, tight ones the second), then input order. Each
//!    request takes the cheapest option over all GPUs: reuse an idle instance of its profile (0
//!    operations), else create one in free space (1), and only after the whole group had its
//!    chance, destroy the fewest idle instances that make room (1 + destroyed). Among GPUs with
//!    the same cost the one whose free score `L²` drops least wins (best fit: nearly full GPUs
//!    fill up first, whole GPUs and large free ranges stay whole), then the GPU that comes
//!    first. Each (GPU, profile) pair keeps its best option as a key in a per-profile heap,
//!    updated when that GPU changes, so a request costs a few heap operations, not a scan of
//!    the cluster. Options depend only on a GPU's state (model, layout, held instances), and a
//!    busy cluster has far fewer states than GPUs, so they are computed once per state
//!    ([`crate::memo`]) and shared by both runs. The better run by the objective is kept.
//! 2. *Improvement.* Sets of one and two GPUs that hold requests placed by this plan are
//!    re-solved exactly ([`crate::dp`]: every valid layout that keeps the busy instances, every
//!    choice of which instances serve) with their own requests plus the best waiting requests
//!    of their profiles as candidates; a result replaces the GPUs' plan when it serves more
//!    priority, or as much with fewer operations. Displaced requests wait again and may be taken
//!    by a later set. Every pair is tried on clusters of up to 64 MIG GPUs, each GPU with its
//!    next 8 otherwise, for up to 4 passes and within a fixed step budget, so large inputs stay
//!    fast and the result deterministic.
//! 3. *Repacking* (clusters of up to [`crate::columns::COLUMNS_UP_TO`] MIG GPUs, when some
//!    MIG request still waits): a search over each GPU's *layout columns* (how many free
//!    instances of each requested profile a valid layout offers) for the choice that serves the
//!    most priority, realised GPU by GPU with the fewest operations and improved as in step 2;
//!    kept when better ([`crate::columns`]). This is what frees whole placements for waiting
//!    large profiles on contended clusters.
//! 4. *Floor.* When some MIG request still waits, first-fit's plan is computed too (and
//!    improved) and kept if it is better: tessera never serves less than first-fit. First-fit
//!    stops early once the priority it can still serve is below the plan's.
//!
//! **MPS**: by priority, smaller dominant share (memory or SM fraction) first, best fit by free
//! memory; first-fit's placement is kept instead when it serves more. **Time-slicing** serves
//! the highest priorities on the fullest GPUs first (optimal: every replica is alike).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use crate::memo::StateMemo;
use crate::mps;
use crate::problem::{Problem, ReqKind, Slot, Solution};
use crate::tables::{bits, Tables};

/// Layout visits the improvement step may spend per plan.
const IMPROVE_BUDGET: u64 = 400_000;
/// Passes of the improvement step over the GPUs.
const IMPROVE_PASSES: usize = 4;
/// Up to this many MIG GPUs, the improvement step tries every pair of GPUs.
const ALL_PAIRS_UP_TO: usize = 64;
/// Beyond that, each GPU is paired with this many following GPUs.
const PAIR_WINDOW: usize = 8;

const NONE: u64 = u64::MAX;
/// No state (a transition not taken yet).
const NO_STATE: u32 = u32::MAX;

/// Plan with the tessera policy.
pub(crate) fn solve(p: &Problem<'_>) -> Solution {
    let mut sol = p.empty_solution();
    mig(p, &mut sol);
    mps::mps_tessera(p, &mut sol.slots);
    mps::timeslice(p, true, &mut sol.slots);
    sol
}

fn sq(x: u32) -> u32 {
    x * x
}

/// One way to serve a request on one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opt {
    /// Operations: 0 reuse, 1 create, 1 + destroyed.
    pub ops: u32,
    /// Drop of the GPU's free score `L²`.
    pub loss: u32,
    /// The candidate that serves the request.
    pub cand: usize,
    /// Idle instances to destroy first.
    pub destroy: u64,
}

impl Opt {
    fn rank(&self) -> (u32, u32, usize) {
        (self.ops, self.loss, self.cand)
    }
}

/// What option search needs to know about one GPU, computed once per change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    layout: u64,
    held: u64,
    held_mem: u32,
    /// `L²` now.
    cur: u32,
    /// Compute slices of `layout`.
    compute: u32,
}

impl View {
    pub(crate) fn new(t: &Tables<'_>, layout: u64, held: u64) -> Self {
        let held_mem = t.mem_of(held);
        View {
            layout,
            held,
            held_mem,
            cur: sq(t.largest_free(held_mem)),
            compute: t.compute_of(layout),
        }
    }
}

/// The best option for profile `lp` on a GPU (see [`View`]): reuse beats create beats
/// destroy-and-create; then the smallest free-score drop; then the lowest candidate.
pub(crate) fn option(t: &Tables<'_>, v: &View, lp: usize) -> Option<Opt> {
    let loss = |c: usize| v.cur - sq(t.largest_free(v.held_mem | t.mask[c]));
    let idle = v.layout & !v.held;
    let mine = t.by_profile[lp];
    let mut best: Option<Opt> = None;
    let consider = |best: &mut Option<Opt>, o: Opt| {
        if best.is_none_or(|b| o.rank() < b.rank()) {
            *best = Some(o);
        }
    };
    for c in bits(idle & mine) {
        consider(
            &mut best,
            Opt {
                ops: 0,
                loss: loss(c),
                cand: c,
                destroy: 0,
            },
        );
    }
    if best.is_some() {
        return best;
    }
    let room = t.room_for(v.layout, v.compute, lp);
    for c in bits(mine) {
        if room && v.layout & t.conflict[c] == 0 {
            consider(
                &mut best,
                Opt {
                    ops: 1,
                    loss: loss(c),
                    cand: c,
                    destroy: 0,
                },
            );
        }
    }
    if best.is_some() || idle == 0 {
        return best;
    }
    for c in bits(mine) {
        if t.conflict[c] & v.held != 0 {
            continue;
        }
        let d0 = idle & t.conflict[c];
        let rest = v.layout & !d0;
        let rest_compute = v.compute - t.compute_of(d0);
        let d = if t.fits_with(rest, rest_compute, c) {
            d0
        } else {
            // Counts or compute slices still block: destroy the fewest further idle instances.
            let others = idle & !d0;
            match fewest_to_remove(t, rest, rest_compute, others, c) {
                Some(s) => d0 | s,
                None => continue,
            }
        };
        consider(
            &mut best,
            Opt {
                ops: 1 + d.count_ones(),
                loss: loss(c),
                cand: c,
                destroy: d,
            },
        );
    }
    best
}

/// The smallest subset of `others` (instances of `layout`, whose compute slices are
/// `compute`) whose removal from `layout` lets `c` fit (ties: the numerically smallest set).
fn fewest_to_remove(
    t: &Tables<'_>,
    layout: u64,
    compute: u32,
    others: u64,
    c: usize,
) -> Option<u64> {
    let fits_without = |sub: u64| t.fits_with(layout & !sub, compute - t.compute_of(sub), c);
    if others.count_ones() > 12 {
        return fits_without(others).then_some(others);
    }
    let mut best: Option<u64> = None;
    let mut sub = others;
    loop {
        if fits_without(sub) && best.is_none_or(|b| (sub.count_ones(), sub) < (b.count_ones(), b)) {
            best = Some(sub);
        }
        if sub == 0 {
            break;
        }
        sub = (sub - 1) & others;
    }
    best
}

fn key_of(o: &Opt, m: usize) -> u64 {
    (u64::from(o.ops.min(0xffff)) << 48) | (u64::from(o.loss) << 32) | m as u64
}

/// The greedy's best options per distinct GPU state ([`StateMemo`]): GPUs of one model with
/// the same layout and held instances have the same options, so each state's are computed once
/// and shared by its GPUs and by both greedy runs.
struct States {
    /// Per tables: the requested (local profile, global profile) pairs, the *slots*.
    slots_of: Vec<Vec<(usize, usize)>>,
    /// Per state, per slot of its tables: the best option ([`option`]) and, once known, the
    /// state that taking it leads to.
    memo: StateMemo<Entry>,
}

/// One memo entry, packed into 16 bytes so a state's row spans few cache lines.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// [`Opt::destroy`].
    destroy: u64,
    /// The state that taking the option leads to (`NO_STATE` until known).
    next: u32,
    /// [`Opt::loss`] (at most 255², since `L` fits a byte).
    loss: u16,
    /// [`Opt::ops`] (at most 65), or `u8::MAX` when there is no option.
    ops: u8,
    /// [`Opt::cand`] (below 64).
    cand: u8,
}

impl Entry {
    fn new(o: Option<Opt>) -> Self {
        match o {
            Some(o) => Entry {
                destroy: o.destroy,
                next: NO_STATE,
                loss: o.loss as u16,
                ops: o.ops as u8,
                cand: o.cand as u8,
            },
            None => Entry {
                destroy: 0,
                next: NO_STATE,
                loss: 0,
                ops: u8::MAX,
                cand: 0,
            },
        }
    }

    fn opt(&self) -> Option<Opt> {
        (self.ops != u8::MAX).then_some(Opt {
            ops: u32::from(self.ops),
            loss: u32::from(self.loss),
            cand: usize::from(self.cand),
            destroy: self.destroy,
        })
    }
}

impl States {
    fn new(p: &Problem<'_>, demand: &[u32]) -> Self {
        let mut slots_of = vec![Vec::new(); p.tables.len()];
        for (t, loc) in p.local.iter().enumerate() {
            for (gp, lp) in loc.iter().enumerate() {
                if let (Some(lp), true) = (lp, demand[gp] > 0) {
                    slots_of[t].push((*lp, gp));
                }
            }
        }
        States {
            slots_of,
            memo: StateMemo::with_capacity(p.mig.len()),
        }
    }

    /// The id of the state (tables `t`, `layout`, `held`), its options computed on first use.
    fn id(&mut self, p: &Problem<'_>, t: usize, layout: u64, held: u64) -> u32 {
        let slots = &self.slots_of[t];
        self.memo.id(t, layout, held, |row| {
            let tables = &p.tables[t];
            let view = View::new(tables, layout, held);
            row.extend(
                slots
                    .iter()
                    .map(|&(lp, _)| Entry::new(option(tables, &view, lp))),
            );
        })
    }

    /// The best option of state `id` for its tables' slot `s`.
    fn opt(&self, id: u32, s: usize) -> Option<Opt> {
        self.memo.get(id, s).opt()
    }

    /// The state after a GPU in state `id` (of tables `t`, with `layout` and `held`) takes
    /// its best option for slot `s`, and that option.
    fn take(
        &mut self,
        p: &Problem<'_>,
        id: u32,
        t: usize,
        s: usize,
        layout: u64,
        held: u64,
    ) -> (u32, Opt) {
        let e = self.memo.get(id, s);
        let o = e.opt().expect("an indexed option exists");
        if e.next != NO_STATE {
            return (e.next, o);
        }
        let layout = (layout & !o.destroy) | 1 << o.cand;
        let next = self.id(p, t, layout, held | 1 << o.cand);
        self.memo.get_mut(id, s).next = next;
        (next, o)
    }
}

/// The greedy engine's state.
#[derive(Clone)]
struct Greedy<'p, 'a> {
    p: &'p Problem<'a>,
    layout: Vec<u64>,
    held: Vec<u64>,
    /// Per MIG GPU: the id of its current state in [`States`].
    state: Vec<u32>,
    /// Per global profile: (tables, slot) pairs that offer it.
    where_gp: Vec<Vec<(usize, usize)>>,
    /// Keys per MIG GPU (the most slots any tables has).
    stride: usize,
    /// Per MIG GPU, per slot of its tables: its current option key (`NONE`: no option), at
    /// `m * stride + slot`.
    keys: Vec<u64>,
    /// Per tables, per slot: a min-heap of option keys; an entry is live only while it equals
    /// the GPU's current key for the slot (stale entries are dropped when they surface).
    index: Vec<Vec<BinaryHeap<Reverse<u64>>>>,
    /// (request, slot) of each placement so far.
    placed: Vec<(usize, Slot)>,
}

impl<'p, 'a> Greedy<'p, 'a> {
    fn new(p: &'p Problem<'a>, st: &mut States) -> Self {
        let mut where_gp = vec![Vec::new(); p.profiles.len()];
        for (t, slots) in st.slots_of.iter().enumerate() {
            for (s, &(_, gp)) in slots.iter().enumerate() {
                where_gp[gp].push((t, s));
            }
        }
        let stride = st.slots_of.iter().map(Vec::len).max().unwrap_or(0);
        let n = p.mig.len() * stride;
        let state: Vec<u32> = p
            .mig
            .iter()
            .map(|g| st.id(p, g.t, g.existing, g.busy))
            .collect();
        let mut keys = vec![NONE; n];
        // Initial keys, heapified in bulk.
        let mut init: Vec<Vec<Vec<Reverse<u64>>>> = st
            .slots_of
            .iter()
            .map(|s| vec![Vec::new(); s.len()])
            .collect();
        for (m, g) in p.mig.iter().enumerate() {
            for s in 0..st.slots_of[g.t].len() {
                if let Some(o) = st.opt(state[m], s) {
                    let k = key_of(&o, m);
                    keys[m * stride + s] = k;
                    init[g.t][s].push(Reverse(k));
                }
            }
        }
        Greedy {
            p,
            layout: p.mig.iter().map(|g| g.existing).collect(),
            held: p.mig.iter().map(|g| g.busy).collect(),
            state,
            where_gp,
            stride,
            keys,
            index: init
                .into_iter()
                .map(|v| v.into_iter().map(BinaryHeap::from).collect())
                .collect(),
            placed: Vec::new(),
        }
    }

    /// GPU `m` changed state: bring its keys up to date, indexing the ones that changed.
    fn update(&mut self, st: &States, m: usize) {
        let t = self.p.mig[m].t;
        let base = m * self.stride;
        let id = self.state[m];
        for (s, heap) in self.index[t].iter_mut().enumerate() {
            let new = st.opt(id, s).map_or(NONE, |o| key_of(&o, m));
            let old = self.keys[base + s];
            if old == new {
                continue;
            }
            self.keys[base + s] = new;
            // When the old key leads the heap (the GPU just served was the best), replace it
            // rather than leave a stale entry on top to pop later.
            let on_top = heap.peek() == Some(&Reverse(old));
            match (on_top, new) {
                (true, NONE) => {
                    heap.pop();
                }
                (true, _) => {
                    if let Some(mut top) = heap.peek_mut() {
                        *top = Reverse(new);
                    }
                }
                (false, NONE) => {}
                (false, _) => heap.push(Reverse(new)),
            }
        }
    }

    /// Serve request `r` with the best option of at most `max_ops` operations.
    fn place(&mut self, st: &mut States, r: usize, gp: usize, max_ops: u32) -> bool {
        let mut best: Option<(u64, usize, usize)> = None;
        for &(t, s) in &self.where_gp[gp] {
            let heap = &mut self.index[t][s];
            // Drop stale entries until the top is some GPU's current key.
            while let Some(&Reverse(k)) = heap.peek() {
                let m = (k & 0xffff_ffff) as usize;
                if self.keys[m * self.stride + s] == k {
                    if best.is_none_or(|b| k < b.0) {
                        best = Some((k, t, s));
                    }
                    break;
                }
                heap.pop();
            }
        }
        let Some((k, t, s)) = best else {
            return false;
        };
        if (k >> 48) as u32 > max_ops {
            return false;
        }
        let m = (k & 0xffff_ffff) as usize;
        let (next, o) = st.take(self.p, self.state[m], t, s, self.layout[m], self.held[m]);
        self.layout[m] = (self.layout[m] & !o.destroy) | 1 << o.cand;
        self.held[m] |= 1 << o.cand;
        self.state[m] = next;
        self.placed.push((r, Slot::Mig(m, o.cand)));
        self.update(st, m);
        true
    }

    /// Run over request groups: in each group first without destroying, then with.
    fn run(mut self, st: &mut States, groups: &[Vec<usize>]) -> (Vec<u64>, Vec<(usize, Slot)>) {
        for group in groups {
            let mut deferred = Vec::new();
            for &r in group {
                let ReqKind::Mig(gp) = self.p.reqs[r].kind else {
                    continue;
                };
                if !self.place(st, r, gp, 1) {
                    deferred.push((r, gp));
                }
            }
            for (r, gp) in deferred {
                self.place(st, r, gp, u32::MAX);
            }
        }
        (self.layout, self.placed)
    }
}

/// MIG requests in groups of equal priority (highest first), twice: inside a group larger
/// profiles first (as a fraction of a GPU), and smaller first; then input order. Returns
/// (larger first, smaller first).
fn request_groups(p: &Problem<'_>) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let w: Vec<u64> = (0..p.profiles.len())
        .map(|gp| p.profile_weight(gp))
        .collect();
    // One packed key per request: priority (descending), then size (ascending); a stable sort
    // keeps input order among equal keys.
    let mut keys: Vec<(u64, usize)> = p
        .reqs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.kind {
            ReqKind::Mig(gp) => Some((
                ((u64::from(u32::MAX) - r.prio) << 32) | (w[gp] & 0xffff_ffff),
                i,
            )),
            _ => None,
        })
        .collect();
    keys.sort_by_key(|k| k.0);
    let mut small: Vec<Vec<usize>> = Vec::new();
    let mut large: Vec<Vec<usize>> = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let prio = keys[start].0 >> 32;
        let end = start + keys[start..].partition_point(|k| k.0 >> 32 == prio);
        let group = &keys[start..end];
        small.push(group.iter().map(|&(_, i)| i).collect());
        // Larger first: the same runs of equal size, in reverse order, each in input order.
        let mut rev = Vec::with_capacity(group.len());
        let mut run_end = group.len();
        while run_end > 0 {
            let size = group[run_end - 1].0;
            let run_start = group[..run_end].partition_point(|k| k.0 < size);
            rev.extend(group[run_start..run_end].iter().map(|&(_, i)| i));
            run_end = run_start;
        }
        large.push(rev);
        start = end;
    }
    (large, small)
}

fn mig(p: &Problem<'_>, sol: &mut Solution) {
    let mut demand = vec![0u32; p.profiles.len()];
    for r in &p.reqs {
        if let ReqKind::Mig(gp) = r.kind {
            demand[gp] += 1;
        }
    }
    if p.mig.is_empty() || demand.iter().all(|&d| d == 0) {
        return;
    }
    // Two greedy runs, larger profiles first and smaller first; the better plan wins (ties:
    // larger first). Loose clusters favour the first, tight ones the second. When both orders
    // are the same (one request, or one size), one run does.
    let mut states = States::new(p, &demand);
    let start = Greedy::new(p, &mut states);
    let (large, small) = request_groups(p);
    let to_solution = |(layouts, placed): (Vec<u64>, Vec<(usize, Slot)>)| {
        let mut slots = vec![None; p.reqs.len()];
        for (r, slot) in placed {
            slots[r] = Some(slot);
        }
        Solution { layouts, slots }
    };
    let mut s = if small == large {
        to_solution(start.run(&mut states, &large))
    } else {
        let a = to_solution(start.clone().run(&mut states, &large));
        let b = to_solution(start.run(&mut states, &small));
        if p.better(&b, &a) {
            b
        } else {
            a
        }
    };
    improve(p, &mut s);
    // Contended clusters: repack by layout columns when some MIG request still waits.
    let waits = p
        .reqs
        .iter()
        .zip(&s.slots)
        .any(|(r, slot)| matches!(r.kind, ReqKind::Mig(_)) && slot.is_none());
    if waits {
        if let Some(mut r) = crate::columns::repack(p, &s) {
            improve(p, &mut r);
            if p.better(&r, &s) {
                s = r;
            }
        }
    }
    // First-fit's plan is the fallback, so tessera never serves less than first-fit. It can
    // only serve more when some MIG request waits.
    let served_all = p
        .reqs
        .iter()
        .zip(&s.slots)
        .all(|(r, slot)| !matches!(r.kind, ReqKind::Mig(_)) || slot.is_some());
    if !served_all {
        // First-fit is only of use if it serves at least as much priority: it gives up as
        // soon as it cannot.
        let value: u64 = p
            .reqs
            .iter()
            .zip(&s.slots)
            .filter(|(_, slot)| slot.is_some())
            .map(|(r, _)| r.prio)
            .sum();
        let mut ff = p.empty_solution();
        if crate::firstfit::mig(p, &mut ff, value) && p.better(&ff, &s) {
            improve(p, &mut ff);
            s = ff;
        }
    }
    sol.layouts = s.layouts;
    for (i, slot) in s.slots.into_iter().enumerate() {
        if slot.is_some() {
            sol.slots[i] = slot;
        }
    }
}

/// The improvement step (see the module docs).
fn improve(p: &Problem<'_>, sol: &mut Solution) {
    let mut imp = Improver::new(p, sol);
    if imp.waiting.iter().all(BTreeSet::is_empty) {
        return;
    }
    let n = p.mig.len();
    // Small clusters try every pair of GPUs; large ones pair each GPU with its next neighbours
    // (the same node, mostly), within the step budget.
    let window = if n <= ALL_PAIRS_UP_TO { n } else { PAIR_WINDOW };
    for _ in 0..IMPROVE_PASSES {
        let mut changed = false;
        for g in 0..n {
            match imp.try_set(&[g], sol) {
                Step::Improved => changed = true,
                Step::Same => {}
                Step::OutOfBudget => return,
            }
        }
        for g in 0..n {
            for h in g + 1..n.min(g + 1 + window) {
                match imp.try_set(&[g, h], sol) {
                    Step::Improved => changed = true,
                    Step::Same => {}
                    Step::OutOfBudget => return,
                }
            }
        }
        if !changed {
            break;
        }
    }
}

enum Step {
    Improved,
    Same,
    OutOfBudget,
}

/// No request (end of a list in [`Improver`]).
const NIL: u32 = u32::MAX;

/// State of the improvement step: requests per GPU and the waiting ones per profile.
struct Improver<'p, 'a> {
    p: &'p Problem<'a>,
    /// Per MIG GPU: the first request it serves (a list linked through `next`; order is
    /// irrelevant, every use sums or sorts).
    head: Vec<u32>,
    /// Per request: the next request on the same GPU.
    next: Vec<u32>,
    waiting: Vec<BTreeSet<(Reverse<u64>, usize)>>,
    budget: u64,
    /// Reused buffers: per-profile capacity and candidate requests of a set.
    cap: Vec<usize>,
    cands: Vec<usize>,
}

impl<'p, 'a> Improver<'p, 'a> {
    fn new(p: &'p Problem<'a>, sol: &Solution) -> Self {
        let mut head = vec![NIL; p.mig.len()];
        let mut next = vec![NIL; p.reqs.len()];
        let mut waiting = vec![BTreeSet::new(); p.profiles.len()];
        for (i, r) in p.reqs.iter().enumerate() {
            let ReqKind::Mig(gp) = r.kind else { continue };
            match sol.slots[i] {
                Some(Slot::Mig(m, _)) => {
                    next[i] = head[m];
                    head[m] = i as u32;
                }
                _ => {
                    waiting[gp].insert((Reverse(r.prio), i));
                }
            }
        }
        Improver {
            p,
            head,
            next,
            waiting,
            budget: IMPROVE_BUDGET,
            cap: vec![0; p.profiles.len()],
            cands: Vec::new(),
        }
    }

    /// The requests GPU `g` serves.
    fn on(&self, g: usize) -> impl Iterator<Item = usize> + '_ {
        let mut i = self.head[g];
        std::iter::from_fn(move || {
            (i != NIL).then(|| {
                let r = i as usize;
                i = self.next[r];
                r
            })
        })
    }

    /// Re-solve the GPUs `set` exactly with their requests plus the best waiting ones; keep the
    /// result when it serves more priority, or as much with fewer operations.
    fn try_set(&mut self, set: &[usize], sol: &mut Solution) -> Step {
        let p = self.p;
        if set.iter().all(|&g| self.head[g] == NIL) {
            return Step::Same;
        }
        // Candidates: the set's requests plus, per profile, as many waiting ones as fit.
        let mut cap = std::mem::take(&mut self.cap);
        cap.iter_mut().for_each(|c| *c = 0);
        for &g in set {
            let t = p.t(g);
            for (gp, lp) in p.local[p.mig[g].t].iter().enumerate() {
                if let Some(lp) = lp {
                    cap[gp] += usize::from(t.prof_max[*lp]);
                }
            }
        }
        let mut cands = std::mem::take(&mut self.cands);
        cands.clear();
        for &g in set {
            cands.extend(self.on(g));
        }
        let mut any_waiting = false;
        for (gp, &c) in cap.iter().enumerate() {
            for &(_, i) in self.waiting[gp].iter().take(c) {
                cands.push(i);
                any_waiting = true;
            }
        }
        self.cap = cap;
        let prepared = if any_waiting {
            Some(crate::dp::Search::prepare(p, set, &cands, self.budget))
        } else {
            None
        };
        self.cands = cands;
        let search = match prepared {
            None => return Step::Same,
            Some(Ok(s)) => s,
            Some(Err(_)) => {
                self.budget = 0;
                return Step::OutOfBudget;
            }
        };
        self.budget -= search.steps.min(self.budget);
        let out = search.run(p);
        let cur_value: u64 = set
            .iter()
            .flat_map(|&g| self.on(g))
            .map(|i| p.reqs[i].prio)
            .sum();
        let cur_ops: u32 = set
            .iter()
            .map(|&g| (sol.layouts[g] ^ p.mig[g].existing).count_ones())
            .sum();
        if (out.value, Reverse(out.ops)) <= (cur_value, Reverse(cur_ops)) {
            return Step::Same;
        }
        for &g in set {
            let mut i = std::mem::replace(&mut self.head[g], NIL);
            while i != NIL {
                let r = i as usize;
                i = self.next[r];
                sol.slots[r] = None;
                let ReqKind::Mig(gp) = p.reqs[r].kind else {
                    unreachable!()
                };
                self.waiting[gp].insert((Reverse(p.reqs[r].prio), r));
            }
        }
        for (k, &g) in set.iter().enumerate() {
            sol.layouts[g] = out.layouts[k];
        }
        for (i, k, c) in out.assign {
            let g = set[k];
            let ReqKind::Mig(gp) = p.reqs[i].kind else {
                unreachable!()
            };
            self.waiting[gp].remove(&(Reverse(p.reqs[i].prio), i));
            sol.slots[i] = Some(Slot::Mig(g, c));
            self.next[i] = self.head[g];
            self.head[g] = i as u32;
        }
        Step::Improved
    }
}
