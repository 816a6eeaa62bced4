//! The resolved problem every policy works on, the solution they return, and the translation of
//! a solution into the typed [`Outcome`].
//!
//! Resolution checks the typed input once (layouts, request ids and limits) and turns it into
//! indices: each MIG GPU gets its model's [`Tables`] and its current layout as a candidate set;
//! each MIG request gets a *global profile* index (profiles of the same catalog name are one
//! target, so `1g.10gb` on an A100 40GB and on an H100 are the same request target).

use std::collections::{BTreeMap, HashSet};

use tessera_model::{GpuModel, Placed, ProfileIdx};

use crate::input::{ClusterSpec, GpuMode, MpsRequest};
use crate::plan::PlanStats;
use crate::tables::Tables;
use crate::typed::{self, Ask, GpuOutcome, Grant, Outcome, RequestId, Sharing, Slice};
use crate::{Objective, PlanError, PlanOptions};

/// A broken invariant of a planner solution, found by the planner's own check after solving
/// (a bug in a policy or in the reference solver's model, never the input's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SolutionError {
    /// A MIG GPU's layout lost an instance that holds work.
    #[error("MIG GPU {gpu}: a busy instance was removed")]
    BusyRemoved {
        /// Index of the MIG GPU in the problem.
        gpu: usize,
    },
    /// A MIG GPU's layout breaks a placement rule.
    #[error("MIG GPU {gpu}: the layout is invalid")]
    InvalidLayout {
        /// Index of the MIG GPU in the problem.
        gpu: usize,
    },
    /// Two requests got the same MIG instance.
    #[error("request {request}: its slot is given twice")]
    SlotTwice {
        /// Index of the request in the problem.
        request: usize,
    },
    /// A request got an instance that is busy or not in the final layout.
    #[error("request {request}: its instance is not free in the final layout")]
    InstanceNotFree {
        /// Index of the request in the problem.
        request: usize,
    },
    /// A request got an instance of another profile.
    #[error("request {request}: wrong profile")]
    WrongProfile {
        /// Index of the request in the problem.
        request: usize,
    },
    /// A request got a slot of another sharing mode.
    #[error("request {request}: slot of the wrong mode")]
    WrongMode {
        /// Index of the request in the problem.
        request: usize,
    },
    /// An MPS GPU's clients ask for more memory, SMs or client slots than it has free.
    #[error("MPS GPU {gpu}: over capacity")]
    MpsOverCapacity {
        /// Index of the MPS GPU in the problem.
        gpu: usize,
    },
    /// A time-sliced GPU got more replicas than it has free.
    #[error("time-slice GPU {gpu}: over capacity")]
    TsOverCapacity {
        /// Index of the time-sliced GPU in the problem.
        gpu: usize,
    },
}

/// Where a GPU sits and which per-mode list holds its state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuAt {
    /// Node index in the cluster spec.
    pub node: usize,
    /// GPU index on the node.
    pub index: usize,
    /// Index into `Problem::models`.
    pub model: usize,
    /// Index into the mode's list (`mig`, `mps` or `ts`).
    pub slot: usize,
    /// Mode.
    pub mode: GpuMode,
}

/// A MIG GPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MigGpu {
    /// Index into `Problem::gpus`.
    pub gpu: usize,
    /// Index into `Problem::tables`.
    pub t: usize,
    /// Busy instances (never destroyed or moved).
    pub busy: u64,
    /// Every current instance.
    pub existing: u64,
}

/// An MPS GPU's room.
#[derive(Debug, Clone)]
pub(crate) struct MpsGpu {
    /// Index into `Problem::gpus`.
    pub gpu: usize,
    /// Free memory in MiB (after the reserve and the current clients).
    pub mem_free: u64,
    /// Free SM percentage (capacity is 100 × the oversubscription factor).
    pub sm_free: u32,
    /// Clients that may still join.
    pub clients_free: u32,
    /// Memory for clients when the GPU is empty (MiB, after the reserve).
    pub mem_total: u64,
    /// Memory of the current clients (MiB), for policies that re-derive the room.
    pub mem_used: Vec<u64>,
}

/// What an MPS GPU has left for new clients: free memory (MiB), free SM percentage, client
/// places; the policies and the checker count it down as they place requests.
pub(crate) type MpsRoom = (u64, u32, u32);

/// A time-slice GPU's room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TsGpu {
    /// Index into `Problem::gpus`.
    pub gpu: usize,
    /// Replicas still free.
    pub free: u32,
}

/// A request, resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Req {
    /// Priority (at least 1).
    pub prio: u64,
    /// What it wants.
    pub kind: ReqKind,
}

/// A resolved request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ReqKind {
    /// A MIG instance of this global profile.
    Mig(usize),
    /// An MPS client.
    Mps {
        /// MiB.
        mem: u64,
        /// Percent.
        sm: u32,
    },
    /// A time-slice replica.
    Ts,
}

/// Where a served request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Slot {
    /// MIG GPU `m`, candidate `c` of its model.
    Mig(usize, usize),
    /// MPS GPU.
    Mps(usize),
    /// Time-slice GPU.
    Ts(usize),
}

/// What a policy decides: each MIG GPU's final layout and each request's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Solution {
    /// Final layout per MIG GPU (candidate set).
    pub layouts: Vec<u64>,
    /// Slot per request (`None`: unassigned).
    pub slots: Vec<Option<Slot>>,
}

/// One GPU a plan lists: where it is and, for MIG, its tables index and the final, created
/// and destroyed candidate sets (all 0 for other modes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listed {
    pub at: GpuAt,
    pub t: usize,
    pub layout: u64,
    pub create: u64,
    pub destroy: u64,
}

/// A held region as the view solved under holds sees it (see `holds.rs`): a phantom busy
/// instance at `region` on GPU `gpu` (index into `Problem::gpus`) standing for the region and
/// for `aside`, the current instances that overlap it, which the view leaves out.
#[derive(Debug, Clone)]
pub(crate) struct Phantom {
    /// Index into `Problem::gpus`.
    pub gpu: usize,
    /// The held placement.
    pub region: Placed,
    /// Current instances in conflict with the region (left out of the view).
    pub aside: Vec<Placed>,
}

/// The resolved input.
pub(crate) struct Problem<'a> {
    pub tables: Vec<Tables<'a>>,
    pub gpus: Vec<GpuAt>,
    pub mig: Vec<MigGpu>,
    pub mps: Vec<MpsGpu>,
    pub ts: Vec<TsGpu>,
    /// Global profiles: lowercase names of every profile some MIG request names.
    pub profiles: Vec<String>,
    /// `local[t][gp]`: the profile index of global profile `gp` on tables `t`.
    pub local: Vec<Vec<Option<usize>>>,
    pub reqs: Vec<Req>,
    /// Each request's id, in input order.
    pub ids: Vec<RequestId>,
    /// Models in first-use order; MIG GPUs' tables index equals their model index, except for
    /// GPUs with a held region, whose tables come after the models'.
    pub models: Vec<&'a GpuModel>,
    /// Node indices in the order `nos` walks them (name order on the file path).
    pub node_order: Vec<usize>,
}

/// How errors name a node: by its name (file path) or its index (typed path).
pub(crate) fn node_label(names: Option<&ClusterSpec>, n: usize) -> String {
    match names.and_then(|c| c.nodes.get(n)) {
        Some(node) => node.name.clone(),
        None => n.to_string(),
    }
}

impl<'a> Problem<'a> {
    /// Check and resolve a typed input. `names` gives the nodes' names for messages and the
    /// `nos` order (file path); `phantoms` are the held regions of a view solved under holds.
    pub fn new(
        input: &typed::Problem<'a>,
        opts: &PlanOptions,
        names: Option<&ClusterSpec>,
        phantoms: &[Phantom],
    ) -> Result<Self, PlanError> {
        if !(opts.mps_sm_oversubscription.is_finite() && opts.mps_sm_oversubscription > 0.0) {
            return Err(PlanError::BadOption {
                option: "mps_sm_oversubscription".into(),
                problem: format!(
                    "{} is not a positive factor; use 1.0 for no oversubscription",
                    opts.mps_sm_oversubscription
                ),
            });
        }
        let sm_cap = (100.0 * opts.mps_sm_oversubscription).floor() as u32;
        let mut models: Vec<&GpuModel> = Vec::new();
        let mut tables: Vec<Tables> = Vec::new();
        let n_gpus: usize = input.nodes.iter().map(|n| n.gpus.len()).sum();
        let mut gpus = Vec::with_capacity(n_gpus);
        let mut mig = Vec::with_capacity(n_gpus);
        let mut mps = Vec::new();
        let mut ts = Vec::new();
        // The last model seen: clusters repeat a few models many times.
        let mut last: Option<(&GpuModel, usize)> = None;
        let mut phantom_at = phantoms.iter().peekable();
        for (ni, node) in input.nodes.iter().enumerate() {
            for (gi, g) in node.gpus.iter().enumerate() {
                let bad = |problem: String| PlanError::BadGpu {
                    node: node_label(names, ni),
                    gpu: gi,
                    problem,
                };
                let mi = match last {
                    Some((m, i)) if std::ptr::eq(m, g.model) => i,
                    _ => {
                        let i = match models.iter().position(|x| std::ptr::eq(*x, g.model)) {
                            Some(i) => i,
                            None => {
                                models.push(g.model);
                                tables.push(Tables::new(g.model)?);
                                models.len() - 1
                            }
                        };
                        last = Some((g.model, i));
                        i
                    }
                };
                let model = models[mi];
                let at = gpus.len();
                let slot = match &g.sharing {
                    Sharing::Mig { instances, holds } => {
                        let mut t = &tables[mi];
                        let mut ti = mi;
                        let mut mine: Vec<&Phantom> = Vec::new();
                        while let Some(ph) = phantom_at.next_if(|ph| ph.gpu == at) {
                            mine.push(ph);
                        }
                        if !mine.is_empty() {
                            tables.push(t.with_phantoms(&mine));
                            ti = tables.len() - 1;
                            t = &tables[ti];
                        }
                        let mut existing = 0u64;
                        let mut busy = 0u64;
                        let mut compute = 0u32;
                        let mut bad_start = false;
                        for inst in instances {
                            match t.cand_index(inst.placed) {
                                Some(c) if t.fits_with(existing, compute, c) => {
                                    existing |= 1 << c;
                                    compute += u32::from(t.compute[c]);
                                    if inst.busy {
                                        busy |= 1 << c;
                                    }
                                }
                                _ => bad_start = true,
                            }
                        }
                        if bad_start {
                            if usize::from(
                                instances
                                    .iter()
                                    .map(|i| i.placed.profile.0)
                                    .max()
                                    .unwrap_or(0),
                            ) >= model.profiles.len()
                            {
                                return Err(bad(format!(
                                    "an instance names profile index out of range for {} ({} profiles)",
                                    model.key,
                                    model.profiles.len()
                                )));
                            }
                            let placed: Vec<Placed> = instances.iter().map(|i| i.placed).collect();
                            let mut problems: Vec<String> = model
                                .validate(&placed)
                                .iter()
                                .map(|v| v.to_string())
                                .collect();
                            if problems.is_empty() {
                                problems.push(if mine.is_empty() {
                                    "an instance is listed twice".into()
                                } else {
                                    "a held region does not fit next to the instances in use".into()
                                });
                            }
                            return Err(PlanError::InvalidLayout {
                                node: node_label(names, ni),
                                gpu: gi,
                                model: model.key.clone(),
                                problems,
                            });
                        }
                        if !holds.is_empty() {
                            crate::holds::check(model, &tables[mi], instances, holds)
                                .map_err(|e| bad(e.to_string()))?;
                        }
                        mig.push(MigGpu {
                            gpu: at,
                            t: ti,
                            busy,
                            existing,
                        });
                        mig.len() - 1
                    }
                    Sharing::Mps { clients } => {
                        let total = model.memory_mib().ok_or_else(|| {
                            bad(format!(
                                "model {} has no memory size in the catalog, so MPS limits cannot be planned; add `total_memory_mib`",
                                model.key
                            ))
                        })?;
                        let mem_total = total.saturating_sub(opts.mps_reserve_mib);
                        let used: u64 = clients.iter().map(|c| c.memory_mib).sum();
                        let sm: u32 = clients.iter().map(|c| c.sm_percent).sum();
                        mps.push(MpsGpu {
                            gpu: at,
                            mem_free: mem_total.saturating_sub(used),
                            sm_free: sm_cap.saturating_sub(sm),
                            clients_free: opts.mps_max_clients.saturating_sub(clients.len() as u32),
                            mem_total,
                            mem_used: clients.iter().map(|c| c.memory_mib).collect(),
                        });
                        mps.len() - 1
                    }
                    Sharing::Timeslice { replicas, used } => {
                        let replicas = replicas.unwrap_or(opts.timeslice_replicas);
                        ts.push(TsGpu {
                            gpu: at,
                            free: replicas.saturating_sub(*used),
                        });
                        ts.len() - 1
                    }
                };
                gpus.push(GpuAt {
                    node: ni,
                    index: gi,
                    model: mi,
                    slot,
                    mode: g.sharing.mode(),
                });
            }
        }

        // Requests: unique ids, sane limits, profiles as global (name) indices.
        // Ids in increasing order (the file format's, most callers') are unique without a set;
        // the set is built at the first id not above the one before.
        let mut ids: Option<HashSet<RequestId>> = None;
        let mut last_id: Option<RequestId> = None;
        let mut profiles: Vec<String> = Vec::new();
        // (model, profile) pairs resolved: most requests repeat a few.
        let mut seen: Vec<(&GpuModel, ProfileIdx, usize)> = Vec::new();
        let mut reqs = Vec::with_capacity(input.requests.len());
        let mut req_ids = Vec::with_capacity(input.requests.len());
        let label = |id: RequestId| id.0.to_string();
        for (ri, r) in input.requests.iter().enumerate() {
            let bad = |problem: String| PlanError::BadRequest {
                request: label(r.id),
                problem,
            };
            if ids.is_none() && last_id.is_some_and(|l| r.id <= l) {
                ids = Some(input.requests[..ri].iter().map(|q| q.id).collect());
            }
            if let Some(set) = &mut ids {
                if !set.insert(r.id) {
                    return Err(PlanError::DuplicateRequest { id: label(r.id) });
                }
            }
            last_id = Some(r.id);
            if r.priority == 0 {
                return Err(bad(
                    "priority 0 is not allowed; priorities start at 1".into()
                ));
            }
            let kind = match r.ask {
                Ask::Mig { model, profile } => match seen
                    .iter()
                    .find(|(m, p, _)| std::ptr::eq(*m, model) && *p == profile)
                {
                    Some(&(_, _, gp)) => ReqKind::Mig(gp),
                    None => {
                        let Some(prof) = model.profiles.get(usize::from(profile.0)) else {
                            return Err(bad(format!(
                                "profile index {} is out of range for {} ({} profiles)",
                                profile.0,
                                model.key,
                                model.profiles.len()
                            )));
                        };
                        let gp = match profiles
                            .iter()
                            .position(|x| x.eq_ignore_ascii_case(&prof.name))
                        {
                            Some(i) => i,
                            None => {
                                profiles.push(prof.name.to_ascii_lowercase());
                                profiles.len() - 1
                            }
                        };
                        seen.push((model, profile, gp));
                        ReqKind::Mig(gp)
                    }
                },
                Ask::Mps(m) => {
                    if m.memory_mib == 0 {
                        return Err(bad(
                            "MPS memory_mib is 0; ask for the device memory the client needs"
                                .into(),
                        ));
                    }
                    if m.sm_percent == 0 || m.sm_percent > 100 {
                        return Err(bad(format!(
                            "MPS sm_percent is {}; it must be between 1 and 100",
                            m.sm_percent
                        )));
                    }
                    ReqKind::Mps {
                        mem: m.memory_mib,
                        sm: m.sm_percent,
                    }
                }
                Ask::Timeslice => ReqKind::Ts,
            };
            reqs.push(Req {
                prio: u64::from(r.priority),
                kind,
            });
            req_ids.push(r.id);
        }
        let local = tables
            .iter()
            .map(|t| {
                profiles
                    .iter()
                    .map(|gp| t.names_lc.iter().position(|n| n == gp))
                    .collect()
            })
            .collect();
        let mut node_order: Vec<usize> = (0..input.nodes.len()).collect();
        if let (Some(c), crate::Policy::Nos) = (names, opts.policy) {
            node_order.sort_by(|&a, &b| c.nodes[a].name.cmp(&c.nodes[b].name));
        }
        Ok(Problem {
            tables,
            gpus,
            mig,
            mps,
            ts,
            profiles,
            local,
            reqs,
            ids: req_ids,
            models,
            node_order,
        })
    }

    /// The tables of MIG GPU `m`.
    pub fn t(&self, m: usize) -> &Tables<'a> {
        &self.tables[self.mig[m].t]
    }

    /// The starting point: current layouts, nothing assigned.
    pub fn empty_solution(&self) -> Solution {
        Solution {
            layouts: self.mig.iter().map(|g| g.existing).collect(),
            slots: vec![None; self.reqs.len()],
        }
    }

    /// The room of every MPS GPU before anything is placed, in `mps` order.
    pub fn mps_room(&self) -> Vec<MpsRoom> {
        self.mps
            .iter()
            .map(|g| (g.mem_free, g.sm_free, g.clients_free))
            .collect()
    }

    /// Busy plus assigned instances of every MIG GPU.
    pub fn held(&self, sol: &Solution) -> Vec<u64> {
        let mut held: Vec<u64> = self.mig.iter().map(|g| g.busy).collect();
        for s in sol.slots.iter().flatten() {
            if let Slot::Mig(m, c) = *s {
                held[m] |= 1 << c;
            }
        }
        held
    }

    /// Whether solution `a` is strictly better than `b` by the objective; free scores are
    /// computed only when priorities and operations tie.
    pub fn better(&self, a: &Solution, b: &Solution) -> bool {
        let head = |s: &Solution| {
            let value: u64 = self
                .reqs
                .iter()
                .zip(&s.slots)
                .filter(|(_, x)| x.is_some())
                .map(|(r, _)| r.prio)
                .sum();
            let ops: u64 = self
                .mig
                .iter()
                .zip(&s.layouts)
                .map(|(g, l)| u64::from((l ^ g.existing).count_ones()))
                .sum();
            (value, std::cmp::Reverse(ops))
        };
        let (ha, hb) = (head(a), head(b));
        if ha != hb {
            return ha > hb;
        }
        self.objective(a).free_score > self.objective(b).free_score
    }

    /// The objective value of a solution.
    pub fn objective(&self, sol: &Solution) -> Objective {
        let mut served_priority = 0;
        let mut served = 0;
        for (r, s) in self.reqs.iter().zip(&sol.slots) {
            if s.is_some() {
                served_priority += r.prio;
                served += 1;
            }
        }
        let held = self.held(sol);
        let mut operations = 0u64;
        let mut free_score = 0u64;
        for (m, g) in self.mig.iter().enumerate() {
            operations += u64::from((sol.layouts[m] ^ g.existing).count_ones());
            free_score += self.t(m).free_score(held[m]);
        }
        Objective {
            served,
            served_priority,
            operations,
            free_score,
        }
    }

    /// The GPUs a plan lists, in input order (with `only_changed`, those that change or get a
    /// request), each with its MIG candidate sets: what both the typed [`Outcome`] and the
    /// named plan are made of.
    pub fn listed<'s>(
        &'s self,
        sol: &'s Solution,
        only_changed: bool,
    ) -> impl Iterator<Item = Listed> + 's {
        // With `only_changed`, GPUs that change or get a request.
        let mut listed = vec![!only_changed; self.gpus.len()];
        if only_changed {
            for (m, g) in self.mig.iter().enumerate() {
                listed[g.gpu] |= sol.layouts[m] != g.existing;
            }
            for s in sol.slots.iter().flatten() {
                listed[self.gpu_of(*s)] = true;
            }
        }
        self.gpus
            .iter()
            .zip(listed)
            .filter(|(_, l)| *l)
            .map(move |(g, _)| {
                if g.mode == GpuMode::Mig {
                    let mg = &self.mig[g.slot];
                    let fin = sol.layouts[g.slot];
                    Listed {
                        at: *g,
                        t: mg.t,
                        layout: fin,
                        create: fin & !mg.existing,
                        destroy: mg.existing & !fin,
                    }
                } else {
                    Listed {
                        at: *g,
                        t: 0,
                        layout: 0,
                        create: 0,
                        destroy: 0,
                    }
                }
            })
    }

    /// Each request's slice in a solution, in input order: (request index, where and what, or
    /// `None` when it waits).
    pub fn slices<'s>(
        &'s self,
        sol: &'s Solution,
    ) -> impl Iterator<Item = (usize, Option<(GpuAt, Slice)>)> + 's {
        self.reqs
            .iter()
            .zip(&sol.slots)
            .enumerate()
            .map(move |(i, (r, s))| {
                let x = s.map(|s| {
                    let slice = match (s, r.kind) {
                        (Slot::Mig(m, c), _) => Slice::Mig(self.t(m).cand[c]),
                        (Slot::Mps(_), ReqKind::Mps { mem, sm }) => Slice::Mps(MpsRequest {
                            memory_mib: mem,
                            sm_percent: sm,
                        }),
                        (Slot::Ts(_), _) => Slice::Timeslice,
                        (Slot::Mps(_), _) => {
                            unreachable!("an MPS slot always holds an MPS request")
                        }
                    };
                    (self.gpus[self.gpu_of(s)], slice)
                });
                (i, x)
            })
    }

    /// The totals of a solution.
    pub fn stats(&self, sol: &Solution) -> PlanStats {
        let mut operations = 0usize;
        for (m, g) in self.mig.iter().enumerate() {
            operations += (sol.layouts[m] ^ g.existing).count_ones() as usize;
        }
        let mut served = 0;
        let mut served_priority = 0u64;
        for (r, s) in self.reqs.iter().zip(&sol.slots) {
            if s.is_some() {
                served += 1;
                served_priority += r.prio;
            }
        }
        PlanStats {
            served,
            served_priority,
            operations,
        }
    }

    /// Turn a solution into the typed plan.
    pub fn to_outcome(&self, sol: &Solution, only_changed: bool) -> Outcome<'a> {
        let placed = |t: usize, set: u64| -> Vec<Placed> {
            if set == 0 {
                return Vec::new();
            }
            let tables = &self.tables[t];
            let mut v = Vec::with_capacity(set.count_ones() as usize);
            v.extend(tables.in_start_order(set).map(|c| tables.cand[c]));
            v
        };
        let gpus: Vec<GpuOutcome<'a>> = self
            .listed(sol, only_changed)
            .map(|l| GpuOutcome {
                node: l.at.node,
                gpu: l.at.index,
                model: self.models[l.at.model],
                mode: l.at.mode,
                layout: placed(l.t, l.layout),
                create: placed(l.t, l.create),
                destroy: placed(l.t, l.destroy),
            })
            .collect();
        let stats = self.stats(sol);
        let mut grants = Vec::with_capacity(stats.served);
        let mut unassigned = Vec::with_capacity(sol.slots.len() - stats.served);
        for (i, x) in self.slices(sol) {
            match x {
                Some((at, slice)) => grants.push(Grant {
                    request: self.ids[i],
                    node: at.node,
                    gpu: at.index,
                    model: self.models[at.model],
                    slice,
                }),
                None => unassigned.push(self.ids[i]),
            }
        }
        Outcome {
            stats,
            gpus,
            grants,
            unassigned,
        }
    }

    /// The index into `gpus` of a slot's GPU.
    pub fn gpu_of(&self, s: Slot) -> usize {
        match s {
            Slot::Mig(m, _) => self.mig[m].gpu,
            Slot::Mps(i) => self.mps[i].gpu,
            Slot::Ts(i) => self.ts[i].gpu,
        }
    }

    /// Check a solution's invariants (debug aid for policies and tests): busy instances kept,
    /// layouts valid, each assignment on a free slice of its profile, room respected.
    pub fn check(&self, sol: &Solution) -> Result<(), SolutionError> {
        let mut taken = BTreeMap::new();
        let mut mps_mem: Vec<u64> = vec![0; self.mps.len()];
        let mut mps_sm: Vec<u32> = vec![0; self.mps.len()];
        let mut mps_n: Vec<u32> = vec![0; self.mps.len()];
        let mut ts_n: Vec<u32> = vec![0; self.ts.len()];
        for (m, g) in self.mig.iter().enumerate() {
            let t = self.t(m);
            let l = sol.layouts[m];
            if l & g.busy != g.busy {
                return Err(SolutionError::BusyRemoved { gpu: m });
            }
            if !t.valid(l) {
                return Err(SolutionError::InvalidLayout { gpu: m });
            }
        }
        for (i, (r, s)) in self.reqs.iter().zip(&sol.slots).enumerate() {
            let Some(s) = *s else { continue };
            if taken.insert(s, i).is_some() && !matches!(s, Slot::Mps(_) | Slot::Ts(_)) {
                return Err(SolutionError::SlotTwice { request: i });
            }
            match (s, r.kind) {
                (Slot::Mig(m, c), ReqKind::Mig(gp)) => {
                    let t = self.t(m);
                    let l = sol.layouts[m];
                    if l & (1 << c) == 0 || self.mig[m].busy & (1 << c) != 0 {
                        return Err(SolutionError::InstanceNotFree { request: i });
                    }
                    if self.local[self.mig[m].t][gp] != Some(usize::from(t.prof[c])) {
                        return Err(SolutionError::WrongProfile { request: i });
                    }
                }
                (Slot::Mps(g), ReqKind::Mps { mem, sm }) => {
                    mps_mem[g] += mem;
                    mps_sm[g] += sm;
                    mps_n[g] += 1;
                }
                (Slot::Ts(g), ReqKind::Ts) => ts_n[g] += 1,
                _ => return Err(SolutionError::WrongMode { request: i }),
            }
        }
        for (g, s) in self.mps.iter().enumerate() {
            if mps_mem[g] > s.mem_free || mps_sm[g] > s.sm_free || mps_n[g] > s.clients_free {
                return Err(SolutionError::MpsOverCapacity { gpu: g });
            }
        }
        for (g, s) in self.ts.iter().enumerate() {
            if ts_n[g] > s.free {
                return Err(SolutionError::TsOverCapacity { gpu: g });
            }
        }
        Ok(())
    }

    /// The size of a global profile as a fraction of a GPU (smallest over the cluster's models
    /// that have it), in 1/840ths so fractions of 4-, 8- and 12-slice grids stay integers.
    pub fn profile_weight(&self, gp: usize) -> u64 {
        let mut best = u64::MAX;
        for (t, loc) in self.tables.iter().zip(&self.local) {
            if let Some(lp) = loc[gp] {
                let w = 840 * u64::from(t.prof_size[lp]) / u64::from(t.model.memory_slices);
                best = best.min(w);
            }
        }
        best
    }

    /// Candidates of a layout that are free (not busy) and of profile `lp`.
    pub fn free_of(&self, m: usize, layout: u64, lp: usize) -> u64 {
        layout & !self.mig[m].busy & self.t(m).by_profile[lp]
    }
}
