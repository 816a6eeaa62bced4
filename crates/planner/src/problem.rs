//! The resolved problem every policy works on, the solution they return, and the translation of
//! a solution into the [`Plan`] wire format.
//!
//! Resolution checks the input once (models, profiles, current layouts, request ids and limits)
//! and turns names into indices: each MIG GPU gets its model's [`Tables`] and its current layout
//! as a candidate set; each MIG request gets a *global profile* index (profile names compared
//! without case, so `1g.10gb` on an A100 40GB and on an H100 are the same request target).

use std::collections::{BTreeMap, HashSet};

use tessera_model::{Catalog, GpuModel, Placed};

use crate::input::{ClusterSpec, GpuMode, RequestKind, RequestSpec};
use crate::plan::{AssignedSlice, Assignment, GpuPlan, InstanceRef, Name, Plan, PlanStats};
use crate::tables::Tables;
use crate::{Objective, PlanError, PlanOptions, Policy};

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

/// The resolved input.
pub(crate) struct Problem<'a> {
    pub cluster: &'a ClusterSpec,
    pub requests: &'a [RequestSpec],
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
    /// Models in first-use order; MIG GPUs' tables index equals their model index.
    pub models: Vec<&'a GpuModel>,
}

impl<'a> Problem<'a> {
    /// Check and resolve the input.
    pub fn new(
        catalog: &'a Catalog,
        cluster: &'a ClusterSpec,
        requests: &'a [RequestSpec],
        opts: &PlanOptions,
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
        // Model strings as written, resolved (a cluster names a few models many times).
        let mut model_ix: Vec<(&str, usize)> = Vec::new();
        let mut models: Vec<&GpuModel> = Vec::new();
        let mut tables: Vec<Tables> = Vec::new();
        let n_gpus: usize = cluster.nodes.iter().map(|n| n.gpus.len()).sum();
        let mut gpus = Vec::with_capacity(n_gpus);
        let mut mig = Vec::with_capacity(n_gpus);
        let mut mps = Vec::new();
        let mut ts = Vec::new();
        let mut names: HashSet<&str> = HashSet::with_capacity(cluster.nodes.len());
        for (ni, node) in cluster.nodes.iter().enumerate() {
            if !names.insert(node.name.as_str()) {
                return Err(PlanError::DuplicateNode {
                    node: node.name.clone(),
                });
            }
            for (gi, g) in node.gpus.iter().enumerate() {
                let bad = |problem: String| PlanError::BadGpu {
                    node: node.name.clone(),
                    gpu: gi,
                    problem,
                };
                let mi = match model_ix
                    .iter()
                    .find(|(k, _)| crate::tables::same_name(k, &g.model))
                {
                    Some(&(_, i)) => i,
                    None => {
                        let m = catalog
                            .get(&g.model)
                            .ok_or_else(|| PlanError::UnknownModel {
                                node: node.name.clone(),
                                gpu: gi,
                                model: g.model.clone(),
                                known: catalog.models.iter().map(|m| m.key.clone()).collect(),
                            })?;
                        let i = match models.iter().position(|x| std::ptr::eq(*x, m)) {
                            Some(i) => i,
                            None => {
                                models.push(m);
                                tables.push(Tables::new(m)?);
                                models.len() - 1
                            }
                        };
                        model_ix.push((g.model.as_str(), i));
                        i
                    }
                };
                let model = models[mi];
                if g.mode != GpuMode::Mig && !g.instances.is_empty() {
                    return Err(bad(format!(
                        "it is in {} mode but lists MIG instances; drop `instances` or set `mode: mig`",
                        g.mode
                    )));
                }
                if g.mode != GpuMode::Mps && !g.clients.is_empty() {
                    return Err(bad(format!(
                        "it is in {} mode but lists MPS clients; drop `clients` or set `mode: mps`",
                        g.mode
                    )));
                }
                if g.mode != GpuMode::Timeslice && (g.replicas.is_some() || g.replicas_used > 0) {
                    return Err(bad(format!(
                        "it is in {} mode but sets time-slice replicas; drop `replicas`/`replicas_used` or set `mode: timeslice`",
                        g.mode
                    )));
                }
                let at = gpus.len();
                let slot = match g.mode {
                    GpuMode::Mig => {
                        let t = &tables[mi];
                        let mut existing = 0u64;
                        let mut busy = 0u64;
                        let mut compute = 0u32;
                        let mut bad_start = false;
                        for inst in &g.instances {
                            let p = t.profile_named(&inst.profile).ok_or_else(|| {
                                PlanError::UnknownInstanceProfile {
                                    node: node.name.clone(),
                                    gpu: gi,
                                    model: model.key.clone(),
                                    profile: inst.profile.clone(),
                                    known: model.profile_names(),
                                }
                            })?;
                            match t.cand_of(p, inst.start) {
                                Some(c) if t.fits_with(existing, compute, c) => {
                                    existing |= 1 << c;
                                    compute += u32::from(t.compute[c]);
                                    if inst.used {
                                        busy |= 1 << c;
                                    }
                                }
                                _ => bad_start = true,
                            }
                        }
                        if bad_start {
                            let placed: Vec<Placed> = g
                                .instances
                                .iter()
                                .filter_map(|i| {
                                    model
                                        .profile_named(&i.profile)
                                        .map(|p| Placed::new(p, i.start))
                                })
                                .collect();
                            let mut problems: Vec<String> = model
                                .validate(&placed)
                                .iter()
                                .map(|v| v.to_string())
                                .collect();
                            if problems.is_empty() {
                                problems.push("an instance is listed twice".into());
                            }
                            return Err(PlanError::InvalidLayout {
                                node: node.name.clone(),
                                gpu: gi,
                                model: model.key.clone(),
                                problems,
                            });
                        }
                        mig.push(MigGpu {
                            gpu: at,
                            t: mi,
                            busy,
                            existing,
                        });
                        mig.len() - 1
                    }
                    GpuMode::Mps => {
                        let total = model.memory_mib().ok_or_else(|| {
                            bad(format!(
                                "model {} has no memory size in the catalog, so MPS limits cannot be planned; add `total_memory_mib`",
                                model.key
                            ))
                        })?;
                        let mem_total = total.saturating_sub(opts.mps_reserve_mib);
                        let used: u64 = g.clients.iter().map(|c| c.memory_mib).sum();
                        let sm: u32 = g.clients.iter().map(|c| c.sm_percent).sum();
                        mps.push(MpsGpu {
                            gpu: at,
                            mem_free: mem_total.saturating_sub(used),
                            sm_free: sm_cap.saturating_sub(sm),
                            clients_free: opts
                                .mps_max_clients
                                .saturating_sub(g.clients.len() as u32),
                            mem_total,
                            mem_used: g.clients.iter().map(|c| c.memory_mib).collect(),
                        });
                        mps.len() - 1
                    }
                    GpuMode::Timeslice => {
                        let replicas = g.replicas.unwrap_or(opts.timeslice_replicas);
                        ts.push(TsGpu {
                            gpu: at,
                            free: replicas.saturating_sub(g.replicas_used),
                        });
                        ts.len() - 1
                    }
                };
                gpus.push(GpuAt {
                    node: ni,
                    index: gi,
                    model: mi,
                    slot,
                    mode: g.mode,
                });
            }
        }

        // Requests: unique ids, sane limits, known profiles.
        let mut ids: HashSet<&str> = HashSet::with_capacity(requests.len());
        let mut profiles: Vec<String> = Vec::new();
        // Profile strings as written in the requests, resolved: most requests repeat a few.
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let mut reqs = Vec::with_capacity(requests.len());
        for r in requests {
            let bad = |problem: String| PlanError::BadRequest {
                request: r.id.clone(),
                problem,
            };
            if r.id.is_empty() {
                return Err(bad("the id is empty; give every request a unique id".into()));
            }
            if !ids.insert(r.id.as_str()) {
                return Err(PlanError::DuplicateRequest { id: r.id.clone() });
            }
            if r.priority == 0 {
                return Err(bad(
                    "priority 0 is not allowed; priorities start at 1".into()
                ));
            }
            let kind = match &r.kind {
                RequestKind::Mig(p) => match seen
                    .iter()
                    .find(|(s, _)| crate::tables::same_name(s, p))
                {
                    Some(&(_, gp)) => ReqKind::Mig(gp),
                    None => {
                        let name = crate::tables::bare_name(p);
                        let gp = match profiles.iter().position(|x| x.eq_ignore_ascii_case(name)) {
                            Some(i) => i,
                            None => {
                                let lc = name.to_ascii_lowercase();
                                let in_cluster = tables.iter().any(|t| t.names_lc.contains(&lc));
                                let in_catalog = catalog
                                    .models
                                    .iter()
                                    .any(|m| m.profile_named(&lc).is_some());
                                if !in_cluster && !in_catalog {
                                    let mut known: Vec<String> = tables
                                        .iter()
                                        .flat_map(|t| t.model.profile_names())
                                        .collect();
                                    known.sort();
                                    known.dedup();
                                    return Err(PlanError::UnknownRequestProfile {
                                        request: r.id.clone(),
                                        profile: p.clone(),
                                        known,
                                    });
                                }
                                profiles.push(lc);
                                profiles.len() - 1
                            }
                        };
                        seen.push((p.as_str(), gp));
                        ReqKind::Mig(gp)
                    }
                },
                RequestKind::Mps(m) => {
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
                RequestKind::Timeslice => ReqKind::Ts,
            };
            reqs.push(Req {
                prio: u64::from(r.priority),
                kind,
            });
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
        Ok(Problem {
            cluster,
            requests,
            tables,
            gpus,
            mig,
            mps,
            ts,
            profiles,
            local,
            reqs,
            models,
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

    /// Turn a solution into the wire-format plan. Names are shared ([`Name`]): one allocation
    /// per node, model and profile, however many GPUs and assignments repeat them.
    pub fn to_plan(&self, sol: &Solution, policy: Policy, only_changed: bool) -> Plan {
        let model_names: Vec<Name> = self.models.iter().map(|m| Name::from(&m.key)).collect();
        let profile_names: Vec<Vec<Name>> = self
            .tables
            .iter()
            .map(|t| {
                t.model
                    .profiles
                    .iter()
                    .map(|p| Name::from(&p.name))
                    .collect()
            })
            .collect();
        let mut node_names: Vec<Option<Name>> = vec![None; self.cluster.nodes.len()];
        let mut node_name = |n: usize| -> Name {
            node_names[n]
                .get_or_insert_with(|| Name::from(&self.cluster.nodes[n].name))
                .clone()
        };
        let refs = |t: usize, set: u64| -> Vec<InstanceRef> {
            if set == 0 {
                return Vec::new();
            }
            let tables = &self.tables[t];
            let names = &profile_names[t];
            let mut v = Vec::with_capacity(set.count_ones() as usize);
            for c in tables.in_start_order(set) {
                let p = tables.cand[c];
                v.push(InstanceRef {
                    profile: names[usize::from(p.profile.0)].clone(),
                    start: p.start,
                });
            }
            v
        };
        let mut operations = 0usize;
        // With `only_changed`, GPUs that change or get a request.
        let mut listed = vec![!only_changed; self.gpus.len()];
        if only_changed {
            for (m, g) in self.mig.iter().enumerate() {
                listed[g.gpu] |= sol.layouts[m] != g.existing;
            }
            for s in sol.slots.iter().flatten() {
                let gpu = match *s {
                    Slot::Mig(m, _) => self.mig[m].gpu,
                    Slot::Mps(i) => self.mps[i].gpu,
                    Slot::Ts(i) => self.ts[i].gpu,
                };
                listed[gpu] = true;
            }
        }
        let mut gpus: Vec<GpuPlan> =
            Vec::with_capacity(if only_changed { 0 } else { self.gpus.len() });
        for (g, _) in self.gpus.iter().zip(&listed).filter(|(_, l)| **l) {
            let (layout, create, destroy) = if g.mode == GpuMode::Mig {
                let mg = &self.mig[g.slot];
                let fin = sol.layouts[g.slot];
                (
                    refs(mg.t, fin),
                    refs(mg.t, fin & !mg.existing),
                    refs(mg.t, mg.existing & !fin),
                )
            } else {
                (Vec::new(), Vec::new(), Vec::new())
            };
            gpus.push(GpuPlan {
                node: node_name(g.node),
                gpu: g.index,
                model: model_names[g.model].clone(),
                mode: g.mode,
                layout,
                create,
                destroy,
            });
        }
        for (m, g) in self.mig.iter().enumerate() {
            operations += (sol.layouts[m] ^ g.existing).count_ones() as usize;
        }
        let served = sol.slots.iter().filter(|s| s.is_some()).count();
        let mut assignments = Vec::with_capacity(served);
        let mut unassigned = Vec::with_capacity(sol.slots.len() - served);
        let mut served_priority = 0u64;
        for ((spec, r), s) in self.requests.iter().zip(&self.reqs).zip(&sol.slots) {
            let Some(s) = s else {
                unassigned.push(spec.id.clone());
                continue;
            };
            served_priority += r.prio;
            let (gpu, slice) = match (*s, &spec.kind) {
                (Slot::Mig(m, c), _) => {
                    let t = self.mig[m].t;
                    let p = self.tables[t].cand[c];
                    (
                        self.mig[m].gpu,
                        AssignedSlice::Mig {
                            profile: profile_names[t][usize::from(p.profile.0)].clone(),
                            start: p.start,
                        },
                    )
                }
                (Slot::Mps(i), RequestKind::Mps(m)) => (
                    self.mps[i].gpu,
                    AssignedSlice::Mps {
                        memory_mib: m.memory_mib,
                        sm_percent: m.sm_percent,
                    },
                ),
                (Slot::Ts(i), _) => (self.ts[i].gpu, AssignedSlice::Timeslice { timeslice: true }),
                (Slot::Mps(_), _) => unreachable!("an MPS slot always holds an MPS request"),
            };
            let at = self.gpus[gpu];
            assignments.push(Assignment {
                request: spec.id.clone(),
                node: node_name(at.node),
                gpu: at.index,
                slice,
            });
        }
        Plan {
            policy,
            stats: PlanStats {
                served: assignments.len(),
                served_priority,
                operations,
            },
            gpus,
            assignments,
            unassigned,
        }
    }

    /// Check a solution's invariants (debug aid for policies and tests): busy instances kept,
    /// layouts valid, each assignment on a free slice of its profile, room respected.
    pub fn check(&self, sol: &Solution) -> Result<(), String> {
        let mut taken = BTreeMap::new();
        let mut mps_mem: Vec<u64> = vec![0; self.mps.len()];
        let mut mps_sm: Vec<u32> = vec![0; self.mps.len()];
        let mut mps_n: Vec<u32> = vec![0; self.mps.len()];
        let mut ts_n: Vec<u32> = vec![0; self.ts.len()];
        for (m, g) in self.mig.iter().enumerate() {
            let t = self.t(m);
            let l = sol.layouts[m];
            if l & g.busy != g.busy {
                return Err(format!("MIG GPU {m}: a busy instance was removed"));
            }
            if !t.valid(l) {
                return Err(format!("MIG GPU {m}: the layout is invalid"));
            }
        }
        for (i, (r, s)) in self.reqs.iter().zip(&sol.slots).enumerate() {
            let Some(s) = *s else { continue };
            if taken.insert(s, i).is_some() && !matches!(s, Slot::Mps(_) | Slot::Ts(_)) {
                return Err(format!("request {i}: its slot is given twice"));
            }
            match (s, r.kind) {
                (Slot::Mig(m, c), ReqKind::Mig(gp)) => {
                    let t = self.t(m);
                    let l = sol.layouts[m];
                    if l & (1 << c) == 0 || self.mig[m].busy & (1 << c) != 0 {
                        return Err(format!(
                            "request {i}: its instance is not free in the final layout"
                        ));
                    }
                    if self.local[self.mig[m].t][gp] != Some(usize::from(t.prof[c])) {
                        return Err(format!("request {i}: wrong profile"));
                    }
                }
                (Slot::Mps(g), ReqKind::Mps { mem, sm }) => {
                    mps_mem[g] += mem;
                    mps_sm[g] += sm;
                    mps_n[g] += 1;
                }
                (Slot::Ts(g), ReqKind::Ts) => ts_n[g] += 1,
                _ => return Err(format!("request {i}: slot of the wrong mode")),
            }
        }
        for (g, s) in self.mps.iter().enumerate() {
            if mps_mem[g] > s.mem_free || mps_sm[g] > s.sm_free || mps_n[g] > s.clients_free {
                return Err(format!("MPS GPU {g}: over capacity"));
            }
        }
        for (g, s) in self.ts.iter().enumerate() {
            if ts_n[g] > s.free {
                return Err(format!("time-slice GPU {g}: over capacity"));
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
