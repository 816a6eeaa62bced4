//! Incremental planning: a persistent planner state that places one MIG arrival at a time
//! without reading the whole cluster.
//!
//! [`Incremental::new`] builds the state once from the nodes of a [`typed::Problem`]: per MIG
//! GPU its layout and busy instances, and per (model, profile) an ordered index of the GPUs
//! that can serve that profile, keyed by the tessera policy's own option key: operations (reuse
//! an idle instance 0, create in free space 1, destroy idle instances and create 1 + destroyed),
//! then the drop of the GPU's free score `L²` (best fit), then the GPU's position. An arrival
//! ([`Incremental::place`]) takes the first key of its profile's indices, changes that one GPU
//! and re-keys it: `O(profiles × log GPUs)`, independent of the cluster's size otherwise.
//! Departures ([`Incremental::release`]), what an agent observed ([`Incremental::observe`]) and
//! the result of a full plan ([`Incremental::apply`]) update the state the same way, one GPU at
//! a time.
//!
//! # What it agrees with
//! For one MIG request on a cluster without held regions, the full tessera plan
//! ([`crate::plan_typed`]) takes exactly this option (its greedy step picks the least key over
//! the same indices, and its later steps only act when a request waits), so an answer of
//! [`Incremental::place`] is the full plan's grant, GPU layout, creates and destroys, byte for
//! byte; and when `place` finds no candidate, the full plan serves nothing either (a property
//! test checks both over random clusters and event sequences).
//!
//! # What falls back
//! `place` answers [`Fallback`] — plan in full with [`crate::plan_typed`] (still the source of
//! truth), then [`Incremental::apply`] its outcome — when:
//! - the request is not a MIG request (MPS and time-slice GPUs are not indexed);
//! - the request holds a region somewhere (its region is placed by the full plan);
//! - no indexed GPU can serve it, even by destroying idle instances. GPUs that carry held
//!   regions are not indexed at all, so nothing is ever placed on them here: a held region is
//!   never handed to a non-holder, and the full plan decides what fits next to it;
//! - the state has drifted: an observation or outcome did not fit it ([`Incremental::rebuild`]
//!   starts afresh);
//! - [`Incremental::place_batch`] got more than [`BATCH_LIMIT`] requests (the full plan orders
//!   and repacks a batch; one arrival at a time cannot).
//!
//! Busy instances are never destroyed or moved: an option only destroys idle instances, and a
//! placed instance is busy from then on, until [`Incremental::release`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use tessera_model::{GpuModel, Placed};

use crate::tables::Tables;
use crate::tessera::{option, View};
use crate::typed::{self, Ask, GpuOutcome, Grant, Hold, Instance, RequestId, Sharing, Slice};
use crate::{GpuMode, PlanError};

/// The most requests [`Incremental::place_batch`] takes one by one; larger batches fall back.
pub const BATCH_LIMIT: usize = 8;

/// No option (a GPU that cannot serve a profile).
const NONE: u64 = u64::MAX;

/// The option key of the tessera policy: operations, then free-score drop, then GPU.
fn key(ops: u32, loss: u32, m: usize) -> u64 {
    (u64::from(ops.min(0xffff)) << 48) | (u64::from(loss) << 32) | m as u64
}

/// Why [`Incremental::place`] leaves a request to the full plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// An MPS or time-slice request: those GPUs are not indexed.
    NotMig,
    /// The request holds a region; the full plan places holders.
    Holder,
    /// No indexed GPU can serve it, even by destroying idle instances (GPUs with held regions
    /// are not indexed).
    NoCandidate,
    /// An observation or outcome did not fit the state; rebuild it.
    Drifted,
    /// A batch larger than [`BATCH_LIMIT`].
    LargeBatch,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fallback::NotMig => "not a MIG request",
            Fallback::Holder => "the request holds a region",
            Fallback::NoCandidate => "no GPU serves it without a full plan",
            Fallback::Drifted => "the incremental state drifted from the cluster",
            Fallback::LargeBatch => "the batch is too large for one-by-one placement",
        })
    }
}

/// A placement made by [`Incremental::place`]: the grant and what changes on its GPU, in the
/// types of a full plan's [`typed::Outcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct Placement<'c> {
    /// The request and its slice.
    pub grant: Grant<'c>,
    /// The GPU's new layout, creates and destroys.
    pub gpu: GpuOutcome<'c>,
}

/// The result of [`Incremental::place_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<'c> {
    /// Requests placed, in the order they were taken (priority, then input order).
    pub placed: Vec<Placement<'c>>,
    /// Requests left to the full plan (from the first that fell back on), in input order.
    pub rest: Vec<RequestId>,
    /// Why the rest fell back, if any did.
    pub fallback: Option<Fallback>,
}

/// An event the state cannot take; the state is marked drifted (every `place` falls back
/// until [`Incremental::rebuild`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncrementalError {
    /// No such GPU in the state.
    #[error("node {node} GPU {gpu} is not in the incremental state; rebuild it from the cluster")]
    UnknownGpu {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
    },
    /// The GPU's mode or model changed.
    #[error("node {node} GPU {gpu} changed mode or model; rebuild the incremental state")]
    Changed {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
    },
    /// A departure named an instance that is not busy on that GPU.
    #[error("node {node} GPU {gpu} has no busy instance {placed:?}; rebuild the incremental state from what the agent reports")]
    NotBusy {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
        /// The instance named.
        placed: Placed,
    },
    /// An observed GPU or an outcome is invalid.
    #[error("the observed state is invalid: {0}")]
    Invalid(#[source] PlanError),
}

/// One MIG GPU of the state.
#[derive(Debug, Clone)]
struct Gpu {
    node: usize,
    gpu: usize,
    /// Index into `tables`.
    t: usize,
    /// Current instances (candidate set).
    layout: u64,
    /// Busy instances (never destroyed).
    busy: u64,
    /// The GPU's held regions; a GPU with any is not indexed.
    holds: Vec<Hold>,
}

/// The persistent planner state (see the module docs).
#[derive(Debug, Clone)]
pub struct Incremental<'c> {
    /// One per model, in first-use order.
    tables: Vec<Tables<'c>>,
    /// Per node: the flat index of its first GPU.
    node_start: Vec<usize>,
    /// Per flat GPU: its model and its MIG index (MIG) or its sharing as given (other modes).
    flat: Vec<(&'c GpuModel, Result<usize, Sharing>)>,
    gpus: Vec<Gpu>,
    /// Keys per MIG GPU (the most profiles any model has).
    stride: usize,
    /// Per MIG GPU, per local profile: its current key (`NONE`: no option), at `m * stride + lp`.
    keys: Vec<u64>,
    /// Per tables, per local profile: the keys of the GPUs that can serve it.
    index: Vec<Vec<BTreeSet<u64>>>,
    /// Holders of held regions, with how many regions each holds.
    holders: BTreeMap<RequestId, u32>,
    drifted: bool,
}

impl<'c> Incremental<'c> {
    /// Build the state from the nodes of `problem` (its requests are ignored). Errors are the
    /// full planner's for the same input (invalid layouts, held regions that do not fit).
    pub fn new(problem: &typed::Problem<'c>) -> Result<Self, PlanError> {
        let mut s = Incremental {
            tables: Vec::new(),
            node_start: Vec::with_capacity(problem.nodes.len()),
            flat: Vec::new(),
            gpus: Vec::new(),
            stride: 0,
            keys: Vec::new(),
            index: Vec::new(),
            holders: BTreeMap::new(),
            drifted: false,
        };
        for (ni, node) in problem.nodes.iter().enumerate() {
            s.node_start.push(s.flat.len());
            for (gi, g) in node.gpus.iter().enumerate() {
                let m = match &g.sharing {
                    Sharing::Mig { instances, holds } => {
                        let t = s.tables_of(g.model)?;
                        let (layout, busy) = resolve_gpu(&s.tables[t], ni, gi, instances, holds)?;
                        for h in holds {
                            *s.holders.entry(h.holder).or_default() += 1;
                        }
                        s.gpus.push(Gpu {
                            node: ni,
                            gpu: gi,
                            t,
                            layout,
                            busy,
                            holds: holds.clone(),
                        });
                        Ok(s.gpus.len() - 1)
                    }
                    other => Err(other.clone()),
                };
                s.flat.push((g.model, m));
            }
        }
        s.stride = s.tables.iter().map(Tables::profiles).max().unwrap_or(0);
        s.keys = vec![NONE; s.gpus.len() * s.stride];
        // Options depend only on (model, layout, busy): compute them once per state.
        let mut memo: HashMap<(usize, u64, u64), Vec<u64>> = HashMap::new();
        let mut init: Vec<Vec<Vec<u64>>> = s
            .tables
            .iter()
            .map(|t| vec![Vec::new(); t.profiles()])
            .collect();
        for (m, g) in s.gpus.iter().enumerate() {
            if !g.holds.is_empty() {
                continue;
            }
            let t = &s.tables[g.t];
            let opts = memo
                .entry((g.t, g.layout, g.busy))
                .or_insert_with(|| options(t, g.layout, g.busy));
            for (lp, &o) in opts.iter().enumerate() {
                if o != NONE {
                    let k = o | m as u64;
                    s.keys[m * s.stride + lp] = k;
                    init[g.t][lp].push(k);
                }
            }
        }
        // Keys were pushed in GPU order, so each list is sorted by GPU only; sort, then bulk
        // build.
        s.index = init
            .into_iter()
            .map(|per| {
                per.into_iter()
                    .map(|mut v| {
                        v.sort_unstable();
                        v.into_iter().collect()
                    })
                    .collect()
            })
            .collect();
        Ok(s)
    }

    /// Build the state afresh (after drift, or when GPUs were added or removed).
    pub fn rebuild(&mut self, problem: &typed::Problem<'c>) -> Result<(), PlanError> {
        *self = Incremental::new(problem)?;
        Ok(())
    }

    /// Whether an event did not fit the state (every `place` falls back until a rebuild).
    pub fn drifted(&self) -> bool {
        self.drifted
    }

    /// MIG GPUs in the state.
    pub fn mig_gpus(&self) -> usize {
        self.gpus.len()
    }

    fn tables_of(&mut self, model: &'c GpuModel) -> Result<usize, PlanError> {
        if let Some(t) = self
            .tables
            .iter()
            .position(|t| std::ptr::eq(t.model, model))
        {
            return Ok(t);
        }
        self.tables.push(Tables::new(model)?);
        Ok(self.tables.len() - 1)
    }

    fn flat_index(&self, node: usize, gpu: usize) -> Result<usize, IncrementalError> {
        let unknown = IncrementalError::UnknownGpu { node, gpu };
        let start = *self.node_start.get(node).ok_or(unknown.clone())?;
        let end = self
            .node_start
            .get(node + 1)
            .copied()
            .unwrap_or(self.flat.len());
        if start + gpu >= end {
            return Err(unknown);
        }
        Ok(start + gpu)
    }

    fn mig_index(&self, node: usize, gpu: usize) -> Result<usize, IncrementalError> {
        let f = self.flat_index(node, gpu)?;
        self.flat[f]
            .1
            .as_ref()
            .map(|&m| m)
            .map_err(|_| IncrementalError::Changed { node, gpu })
    }

    /// Bring GPU `m`'s keys up to date with its state.
    fn rekey(&mut self, m: usize) {
        let g = &self.gpus[m];
        let t = &self.tables[g.t];
        let new: Vec<u64> = if g.holds.is_empty() {
            options(t, g.layout, g.busy)
                .into_iter()
                .map(|o| if o == NONE { NONE } else { o | m as u64 })
                .collect()
        } else {
            vec![NONE; t.profiles()]
        };
        let base = m * self.stride;
        for (lp, k) in new.into_iter().enumerate() {
            let old = std::mem::replace(&mut self.keys[base + lp], k);
            if old == k {
                continue;
            }
            let set = &mut self.index[g.t][lp];
            if old != NONE {
                set.remove(&old);
            }
            if k != NONE {
                set.insert(k);
            }
        }
    }

    /// Place one arrival: the tessera policy's choice for it alone (see the module docs), or
    /// why the full plan must decide. A placement is applied to the state at once (its
    /// instance is busy from now on).
    pub fn place(&mut self, req: &typed::Request<'c>) -> Result<Placement<'c>, Fallback> {
        if self.drifted {
            return Err(Fallback::Drifted);
        }
        let Ask::Mig { model, profile } = req.ask else {
            return Err(Fallback::NotMig);
        };
        if self.holders.contains_key(&req.id) {
            return Err(Fallback::Holder);
        }
        let mut best: Option<(u64, usize, usize)> = None;
        for (t, tables) in self.tables.iter().enumerate() {
            let Some(lp) = crate::holds::same_profile(model, profile, tables.model) else {
                continue;
            };
            let lp = usize::from(lp.0);
            if let Some(&k) = self.index[t][lp].first() {
                if best.is_none_or(|b| k < b.0) {
                    best = Some((k, t, lp));
                }
            }
        }
        let (k, t, lp) = best.ok_or(Fallback::NoCandidate)?;
        let m = (k & 0xffff_ffff) as usize;
        let tables = &self.tables[t];
        let g = &self.gpus[m];
        let o = option(tables, &View::new(tables, g.layout, g.busy), lp)
            .expect("an indexed option exists");
        let old = g.layout;
        let layout = (old & !o.destroy) | 1 << o.cand;
        let placed = |set: u64| -> Vec<Placed> {
            tables.in_start_order(set).map(|c| tables.cand[c]).collect()
        };
        let placement = Placement {
            grant: Grant {
                request: req.id,
                node: g.node,
                gpu: g.gpu,
                model: tables.model,
                slice: Slice::Mig(tables.cand[o.cand]),
            },
            gpu: GpuOutcome {
                node: g.node,
                gpu: g.gpu,
                model: tables.model,
                mode: GpuMode::Mig,
                layout: placed(layout),
                create: placed(layout & !old),
                destroy: placed(old & !layout),
            },
        };
        let g = &mut self.gpus[m];
        g.layout = layout;
        g.busy |= 1 << o.cand;
        self.rekey(m);
        Ok(placement)
    }

    /// Place up to [`BATCH_LIMIT`] arrivals one by one, higher priority first (then input
    /// order), stopping at the first that falls back: it and the ones after it (input order)
    /// are left to the full plan, planned on the state with the placements made.
    pub fn place_batch(&mut self, reqs: &[typed::Request<'c>]) -> Batch<'c> {
        let mut batch = Batch {
            placed: Vec::new(),
            rest: Vec::new(),
            fallback: None,
        };
        if reqs.len() > BATCH_LIMIT {
            batch.rest = reqs.iter().map(|r| r.id).collect();
            batch.fallback = Some(Fallback::LargeBatch);
            return batch;
        }
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(reqs[i].priority));
        let mut left = vec![false; reqs.len()];
        for &i in &order {
            if batch.fallback.is_some() {
                left[i] = true;
                continue;
            }
            match self.place(&reqs[i]) {
                Ok(p) => batch.placed.push(p),
                Err(f) => {
                    batch.fallback = Some(f);
                    left[i] = true;
                }
            }
        }
        batch.rest = reqs
            .iter()
            .zip(&left)
            .filter(|(_, &l)| l)
            .map(|(r, _)| r.id)
            .collect();
        batch
    }

    /// A request ended: its instance on (node, GPU) becomes idle, or is gone when `destroyed`.
    pub fn release(
        &mut self,
        node: usize,
        gpu: usize,
        placed: Placed,
        destroyed: bool,
    ) -> Result<(), IncrementalError> {
        let m = self
            .mig_index(node, gpu)
            .inspect_err(|_| self.drifted = true)?;
        let g = &mut self.gpus[m];
        let c = self.tables[g.t]
            .cand_index(placed)
            .filter(|&c| g.busy & 1 << c != 0);
        let Some(c) = c else {
            self.drifted = true;
            return Err(IncrementalError::NotBusy { node, gpu, placed });
        };
        g.busy &= !(1 << c);
        if destroyed {
            g.layout &= !(1 << c);
        }
        self.rekey(m);
        Ok(())
    }

    /// What an agent observed on one GPU: its instances (busy or not) and held regions now.
    /// A change of mode or model, or an invalid layout, is an error and marks the state
    /// drifted.
    pub fn observe(
        &mut self,
        node: usize,
        gpu: usize,
        now: &typed::Gpu<'c>,
    ) -> Result<(), IncrementalError> {
        let r = self.observe_inner(node, gpu, now);
        if r.is_err() {
            self.drifted = true;
        }
        r
    }

    fn observe_inner(
        &mut self,
        node: usize,
        gpu: usize,
        now: &typed::Gpu<'c>,
    ) -> Result<(), IncrementalError> {
        let Sharing::Mig { instances, holds } = &now.sharing else {
            // A GPU that is not MIG: kept as observed, for `to_problem`.
            let f = self.flat_index(node, gpu)?;
            let (model, slot) = &mut self.flat[f];
            if !std::ptr::eq(*model, now.model)
                || !matches!(slot, Err(s) if s.mode() == now.sharing.mode())
            {
                return Err(IncrementalError::Changed { node, gpu });
            }
            *slot = Err(now.sharing.clone());
            return Ok(());
        };
        let m = self.mig_index(node, gpu)?;
        let t = self.gpus[m].t;
        if !std::ptr::eq(self.tables[t].model, now.model) {
            return Err(IncrementalError::Changed { node, gpu });
        }
        let (layout, busy) = resolve_gpu(&self.tables[t], node, gpu, instances, holds)
            .map_err(IncrementalError::Invalid)?;
        for h in std::mem::take(&mut self.gpus[m].holds) {
            if let Some(n) = self.holders.get_mut(&h.holder) {
                *n -= 1;
                if *n == 0 {
                    self.holders.remove(&h.holder);
                }
            }
        }
        for h in holds {
            *self.holders.entry(h.holder).or_default() += 1;
        }
        let g = &mut self.gpus[m];
        g.layout = layout;
        g.busy = busy;
        g.holds = holds.clone();
        self.rekey(m);
        Ok(())
    }

    /// Take in the outcome of a full plan of this state: every listed MIG GPU gets its new
    /// layout (busy instances kept), every MIG grant's instance is busy.
    pub fn apply(&mut self, outcome: &typed::Outcome<'c>) -> Result<(), IncrementalError> {
        let r = self.apply_inner(outcome);
        if r.is_err() {
            self.drifted = true;
        }
        r
    }

    fn apply_inner(&mut self, outcome: &typed::Outcome<'c>) -> Result<(), IncrementalError> {
        let mut touched = BTreeSet::new();
        for go in outcome.gpus.iter().filter(|g| g.mode == GpuMode::Mig) {
            let m = self.mig_index(go.node, go.gpu)?;
            let t = &self.tables[self.gpus[m].t];
            let mut layout = 0u64;
            for &p in &go.layout {
                let c = t.cand_index(p).ok_or(IncrementalError::Changed {
                    node: go.node,
                    gpu: go.gpu,
                })?;
                layout |= 1 << c;
            }
            let g = &mut self.gpus[m];
            if g.busy & !layout != 0 {
                return Err(IncrementalError::Changed {
                    node: go.node,
                    gpu: go.gpu,
                });
            }
            g.layout = layout;
            touched.insert(m);
        }
        for grant in &outcome.grants {
            let p = match grant.slice {
                Slice::Mig(p) => p,
                other => {
                    let f = self.flat_index(grant.node, grant.gpu)?;
                    match (&mut self.flat[f].1, other) {
                        (Err(Sharing::Mps { clients }), Slice::Mps(r)) => {
                            clients.push(crate::MpsClientSpec {
                                memory_mib: r.memory_mib,
                                sm_percent: r.sm_percent,
                            })
                        }
                        (Err(Sharing::Timeslice { used, .. }), Slice::Timeslice) => *used += 1,
                        _ => {
                            return Err(IncrementalError::Changed {
                                node: grant.node,
                                gpu: grant.gpu,
                            })
                        }
                    }
                    continue;
                }
            };
            let m = self.mig_index(grant.node, grant.gpu)?;
            let g = &mut self.gpus[m];
            match self.tables[g.t].cand_index(p) {
                Some(c) if g.layout & 1 << c != 0 => g.busy |= 1 << c,
                _ => {
                    return Err(IncrementalError::NotBusy {
                        node: grant.node,
                        gpu: grant.gpu,
                        placed: p,
                    })
                }
            }
            touched.insert(m);
        }
        for m in touched {
            self.rekey(m);
        }
        Ok(())
    }

    /// The state as a typed problem without requests: what a full plan of it starts from
    /// (MIG GPUs as the state has them, other GPUs as last given).
    pub fn to_problem(&self) -> typed::Problem<'c> {
        let nodes = self
            .node_start
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let end = self
                    .node_start
                    .get(n + 1)
                    .copied()
                    .unwrap_or(self.flat.len());
                let gpus = self.flat[start..end]
                    .iter()
                    .map(|(model, slot)| {
                        let sharing = match slot {
                            Ok(m) => {
                                let g = &self.gpus[*m];
                                let t = &self.tables[g.t];
                                Sharing::Mig {
                                    instances: t
                                        .in_start_order(g.layout)
                                        .map(|c| Instance {
                                            placed: t.cand[c],
                                            busy: g.busy & 1 << c != 0,
                                        })
                                        .collect(),
                                    holds: g.holds.clone(),
                                }
                            }
                            Err(other) => other.clone(),
                        };
                        typed::Gpu { model, sharing }
                    })
                    .collect();
                typed::Node { gpus }
            })
            .collect();
        typed::Problem {
            nodes,
            requests: Vec::new(),
        }
    }
}

/// Per local profile: the option key of a GPU in this state without its GPU part (`NONE`:
/// none).
fn options(t: &Tables<'_>, layout: u64, busy: u64) -> Vec<u64> {
    let view = View::new(t, layout, busy);
    (0..t.profiles())
        .map(|lp| option(t, &view, lp).map_or(NONE, |o| key(o.ops, o.loss, 0)))
        .collect()
}

/// A MIG GPU's instances as (layout, busy) candidate sets, checked as the full planner checks
/// them.
fn resolve_gpu(
    t: &Tables<'_>,
    node: usize,
    gpu: usize,
    instances: &[Instance],
    holds: &[typed::Hold],
) -> Result<(u64, u64), PlanError> {
    let mut layout = 0u64;
    let mut busy = 0u64;
    let mut compute = 0u32;
    for inst in instances {
        match t.cand_index(inst.placed) {
            Some(c) if t.fits_with(layout, compute, c) => {
                layout |= 1 << c;
                compute += u32::from(t.compute[c]);
                if inst.busy {
                    busy |= 1 << c;
                }
            }
            _ => {
                let placed: Vec<Placed> = instances.iter().map(|i| i.placed).collect();
                let mut problems: Vec<String> = t
                    .model
                    .validate(&placed)
                    .iter()
                    .map(|v| v.to_string())
                    .collect();
                if problems.is_empty() {
                    problems.push("an instance is listed twice or names an unknown profile".into());
                }
                return Err(PlanError::InvalidLayout {
                    node: node.to_string(),
                    gpu,
                    model: t.model.key.clone(),
                    problems,
                });
            }
        }
    }
    if !holds.is_empty() {
        crate::holds::check(t.model, t, instances, holds).map_err(|e| PlanError::BadGpu {
            node: node.to_string(),
            gpu,
            problem: e.to_string(),
        })?;
    }
    Ok((layout, busy))
}
