//! Scheduling decisions, without I/O: given every GPU's state and one waiting request, which
//! slice (if any) it gets now and how the GPU's layout must change; or, when it must wait,
//! which GPU it reserves.
//!
//! # The rule (what docs/serving.md states)
//! The queue is ordered by priority (higher first), then arrival. Each scheduling pass walks
//! it in that order and, for each request:
//! 1. asks the planner (its typed entry point, `tessera_planner::plan_typed`: models, placements
//!    and profile indices, the request's own id; the ask's profile name is resolved once, here)
//!    for the cheapest way to serve that one request on the GPUs it may use
//!    (right mode and model, not drained, healthy, not reserved by an earlier request), where
//!    every leased instance and every instance with processes is `used` (never destroyed or
//!    moved) and idle instances may be destroyed or re-created;
//! 2. if served, the GPU is re-partitioned (when the plan changes it) and the lease granted
//!    before the next request is considered;
//! 3. if not, the request **reserves** a GPU, provided fewer than `max_reserved_gpus`
//!    reservations exist in this pass and it has waited at least `reserve_after_ms`:
//!    - MIG: among the placements of its profile on GPUs no earlier request reserved, the
//!      one overlapping the fewest used instances (then lowest GPU, then lowest start) such that
//!      the profile fits there once those instances end. Later requests may still be served on
//!      that GPU, but only where their slice does not overlap the reserved placement **and**
//!      the reserved placement would still fit next to every used instance plus theirs
//!      (compute slices and instance counts included): they can never delay it. The region is
//!      chosen by `tessera_planner::choose_hold` and passed to the planner as a held region
//!      (`tessera_planner::typed::Hold`), whose plans keep it whole: MIG placement lives in the
//!      planner alone.
//!    - MPS and time-slicing: the GPU with the least memory (MPS) or fewest replicas
//!      (time-slice) in use; later requests get no new lease on that GPU at all.
//!
//! **MPS by uid.** An MPS control daemon runs one server, of one uid, at a time; a client of
//! another uid blocks until every client of the running server is gone. So an MPS GPU with
//! leases of uid U takes new MPS clients of U only, at most `mps.max_clients` (never more than
//! the 48 a server takes on Volta and newer); another uid's request goes to another GPU or
//! waits, and may reserve the held GPU, which then drains (see [`GpuState::mps_open_to`]).
//! [`why_waiting`] tells a waiting request what stands in its way on each GPU.
//!
//! The reserved region only ever empties (nothing new is leased in it), so the reserving
//! request is served as soon as the leases in its way end: no starvation, for every request in
//! turn, since a request that cannot reserve (the limit is reached) is behind one that can.
//! Priorities order the queue but never preempt a running lease.

use std::collections::BTreeMap;

use tessera_model::{Catalog, GpuModel, Placed, ProfileIdx};
use tessera_planner::typed::{self, Ask, Hold, Instance, RequestId, Sharing, Slice};
use tessera_planner::{plan_typed, GpuMode, MpsClientSpec, MpsRequest, PlanOptions};

use crate::fleet::GpuFacts;
use crate::wire::SliceAsk;

/// Where a MIG instance sits, in its GPU model's terms: the backend's profile name is resolved
/// once, when the instance is observed ([`InstanceAt::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceAt {
    /// A profile of the GPU's model at one of its placements.
    Placed(Placed),
    /// A profile the GPU's model does not have (another driver or catalog): the planner
    /// cannot see the GPU whole, so the GPU takes no new leases while the instance exists.
    Unknown {
        /// The profile name as the backend reported it.
        profile: String,
        /// Placement start.
        start: u8,
    },
}

impl InstanceAt {
    /// Resolve a backend's `profile` at `start` against the GPU's model.
    pub fn resolve(model: &GpuModel, profile: &str, start: u8) -> InstanceAt {
        match model.profile_named(profile) {
            Some(p) => InstanceAt::Placed(Placed::new(p, start)),
            None => InstanceAt::Unknown {
                profile: profile.to_string(),
                start,
            },
        }
    }

    /// The placement, when the profile is one of the model's.
    pub fn placed(&self) -> Option<Placed> {
        match self {
            InstanceAt::Placed(p) => Some(*p),
            InstanceAt::Unknown { .. } => None,
        }
    }

    /// Placement start.
    pub fn start(&self) -> u8 {
        match self {
            InstanceAt::Placed(p) => p.start,
            InstanceAt::Unknown { start, .. } => *start,
        }
    }

    /// The profile's name (`model` is the GPU's, the one it was resolved against).
    pub fn profile<'a>(&'a self, model: &'a GpuModel) -> &'a str {
        match self {
            InstanceAt::Placed(p) => &model.profile(p.profile).name,
            InstanceAt::Unknown { profile, .. } => profile,
        }
    }
}

/// A MIG instance as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// Its profile and placement.
    pub at: InstanceAt,
    /// `MIG-…` UUID (none while it has no compute instance).
    pub uuid: Option<String>,
    /// The lease holding it.
    pub lease: Option<u64>,
    /// Processes on it.
    pub pids: Vec<u32>,
}

impl InstanceState {
    /// Leased or running processes: never destroyed, never leased again.
    pub fn used(&self) -> bool {
        self.lease.is_some() || !self.pids.is_empty()
    }
}

/// An MPS client lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpsClient {
    /// The lease.
    pub lease: u64,
    /// The lease holder's uid: the uid its CUDA processes (and so the MPS server) run as.
    pub uid: u32,
    /// Memory limit, MiB.
    pub memory_mib: u64,
    /// SM percentage.
    pub sm_percent: u8,
}

/// One GPU as a pass sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuState {
    /// Fixed facts.
    pub facts: GpuFacts,
    /// No new leases.
    pub drained: bool,
    /// No XID seen; failed GPUs get no new leases.
    pub healthy: bool,
    /// A change failed on it in this pass; skip it until the next.
    pub failed: bool,
    /// MIG instances.
    pub instances: Vec<InstanceState>,
    /// MPS clients.
    pub mps_clients: Vec<MpsClient>,
    /// Time-slice replicas in use → lease.
    pub replicas: BTreeMap<u32, u64>,
}

impl GpuState {
    /// A GPU with nothing on it.
    pub fn empty(facts: GpuFacts) -> GpuState {
        GpuState {
            facts,
            drained: false,
            healthy: true,
            failed: false,
            instances: Vec::new(),
            mps_clients: Vec::new(),
            replicas: BTreeMap::new(),
        }
    }

    /// Leased slices now.
    pub fn busy(&self) -> u32 {
        match self.facts.mode {
            GpuMode::Mig => self.instances.iter().filter(|i| i.lease.is_some()).count() as u32,
            GpuMode::Mps => self.mps_clients.len() as u32,
            GpuMode::Timeslice => self.replicas.len() as u32,
        }
    }

    /// Whether any lease or process holds part of the GPU.
    pub fn in_use(&self) -> bool {
        self.instances.iter().any(InstanceState::used)
            || !self.mps_clients.is_empty()
            || !self.replicas.is_empty()
    }

    fn usable(&self) -> bool {
        !self.drained && self.healthy && !self.failed
    }

    /// The uid whose MPS clients hold this GPU, if any. The MPS control daemon runs one
    /// server, of one uid, at a time: while that uid has clients, a client of another uid
    /// blocks until they are all gone.
    pub fn mps_holder(&self) -> Option<u32> {
        self.mps_clients.first().map(|c| c.uid)
    }

    /// Whether an MPS client of `uid` may be added now: nobody else's clients hold the GPU
    /// and the server has room for one more client.
    pub fn mps_open_to(&self, uid: u32) -> bool {
        self.mps_holder().is_none_or(|h| h == uid)
            && (self.mps_clients.len() as u32) < mps_client_limit(&self.facts)
    }
}

/// Clients one MPS server takes on this GPU: the configured `mps.max_clients`, never more
/// than the hardware's per-server limit (48 on Volta and newer).
pub fn mps_client_limit(facts: &GpuFacts) -> u32 {
    facts
        .mps
        .max_clients
        .min(tessera_gpu::mps::MAX_CLIENTS_PER_SERVER)
}

/// A request waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Request ID.
    pub id: u64,
    /// The requester's uid (MPS GPUs serve one uid at a time).
    pub uid: u32,
    /// What it asks.
    pub ask: SliceAsk,
    /// Model restriction (catalog key after resolution).
    pub gpu_model: Option<String>,
    /// How long it has waited.
    pub waited_ms: u64,
}

/// The slice picked for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// A MIG instance at this placement of the GPU's model (existing, or created by the new
    /// layout).
    Mig(Placed),
    /// An MPS client.
    Mps {
        /// Memory limit, MiB.
        memory_mib: u64,
        /// SM percentage.
        sm_percent: u8,
    },
    /// A time-slice replica.
    Timeslice {
        /// Replica number.
        replica: u32,
    },
}

/// How to serve a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// GPU index.
    pub gpu: u32,
    /// The GPU's new layout, when it must change (MIG).
    pub layout: Option<Vec<Placed>>,
    /// The slice.
    pub pick: Pick,
}

/// A waiting request's hold on a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The request.
    pub request: u64,
    /// GPU index.
    pub gpu: u32,
    /// MIG: the placement it waits for; `None`: the whole GPU.
    pub region: Option<Placed>,
}

/// One way to serve a request: a mode, the GPUs of that mode it may use, and what to ask the
/// planner for there (a MIG profile as the index of one of those GPUs' models: the ask's
/// profile name is resolved here, once).
#[derive(Debug, Clone)]
struct Variant<'c> {
    gpus: Vec<u32>,
    ask: Ask<'c>,
}

/// Resolve a model query to its catalog key.
pub fn model_key(catalog: &Catalog, query: &str) -> Option<String> {
    catalog.get(query).map(|m| m.key.clone())
}

/// The smallest ordinary profile (no `+me`/`-me`) of `model` with at least `mib` of memory.
pub fn smallest_profile_for(model: &GpuModel, mib: u64) -> Option<ProfileIdx> {
    model
        .profile_indices()
        .filter(|(_, p)| p.media_kind() == tessera_model::catalog::MediaKind::Standard)
        .filter(|(_, p)| p.memory_mib.is_some_and(|m| m >= mib))
        .min_by_key(|(i, p)| (p.memory_mib, p.compute_slices, p.memory_slices, *i))
        .map(|(i, _)| i)
}

/// The SM share of an MPS request that gave none: its memory's share of the GPU, 1 to 100.
pub fn default_sm_percent(facts: &GpuFacts, memory_mib: u64) -> u8 {
    let usable = facts.mps_usable_mib().max(1);
    (memory_mib.saturating_mul(100).div_ceil(usable)).clamp(1, 100) as u8
}

fn variants<'c>(catalog: &'c Catalog, gpus: &[GpuState], w: &Waiting) -> Vec<Variant<'c>> {
    let of_model = |g: &GpuState| w.gpu_model.as_ref().is_none_or(|m| *m == g.facts.model);
    let mut out = Vec::new();
    match &w.ask {
        SliceAsk::Mig { profile } => {
            let mut ask = None;
            let list: Vec<u32> = gpus
                .iter()
                .filter(|g| g.facts.mode == GpuMode::Mig && of_model(g))
                .filter(|g| {
                    let Some(m) = catalog.get(&g.facts.model) else {
                        return false;
                    };
                    let Some(p) = m.profile_named(profile) else {
                        return false;
                    };
                    ask.get_or_insert(Ask::Mig {
                        model: m,
                        profile: p,
                    });
                    true
                })
                .map(|g| g.facts.index)
                .collect();
            if let Some(ask) = ask {
                out.push(Variant { gpus: list, ask });
            }
        }
        SliceAsk::Mem {
            memory_mib,
            sm_percent,
        }
        | SliceAsk::Mps {
            memory_mib,
            sm_percent,
        } => {
            // `--mps` asks for an MPS client only; `--mem` takes MIG first.
            let mig_too = matches!(w.ask, SliceAsk::Mem { .. });
            // MIG first (isolated), one variant per model, least wasted memory first.
            let mut by_model: BTreeMap<(u64, String), Vec<u32>> = BTreeMap::new();
            let mut profile_of: BTreeMap<String, (&GpuModel, ProfileIdx)> = BTreeMap::new();
            for g in gpus
                .iter()
                .filter(|g| mig_too && g.facts.mode == GpuMode::Mig && of_model(g))
            {
                let Some(model) = catalog.get(&g.facts.model) else {
                    continue;
                };
                let Some(p) = smallest_profile_for(model, *memory_mib) else {
                    continue;
                };
                let prof = model.profile(p);
                let waste = prof.memory_mib.unwrap_or(0) - memory_mib;
                profile_of.insert(model.key.clone(), (model, p));
                by_model
                    .entry((waste, model.key.clone()))
                    .or_default()
                    .push(g.facts.index);
            }
            for ((_, key), list) in by_model {
                let (model, profile) = profile_of[&key];
                out.push(Variant {
                    gpus: list,
                    ask: Ask::Mig { model, profile },
                });
            }
            // Then MPS, one variant per GPU (each has its own limits).
            for g in gpus
                .iter()
                .filter(|g| g.facts.mode == GpuMode::Mps && of_model(g))
            {
                if g.facts.mps_usable_mib() < *memory_mib {
                    continue;
                }
                let sm = sm_percent.unwrap_or_else(|| default_sm_percent(&g.facts, *memory_mib));
                out.push(Variant {
                    gpus: vec![g.facts.index],
                    ask: Ask::Mps(MpsRequest {
                        memory_mib: *memory_mib,
                        sm_percent: u32::from(sm),
                    }),
                });
            }
        }
        SliceAsk::Share => {
            let list: Vec<u32> = gpus
                .iter()
                .filter(|g| g.facts.mode == GpuMode::Timeslice && of_model(g))
                .map(|g| g.facts.index)
                .collect();
            if !list.is_empty() {
                out.push(Variant {
                    gpus: list,
                    ask: Ask::Timeslice,
                });
            }
        }
    }
    out
}

/// An ask that no GPU of this fleet could ever serve: what exists instead, and for a memory
/// ask the largest slice and the flags that ask for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no GPU{} of this machine can ever serve `{ask}`; it has {}{hint}",
    model.as_ref().map(|m| format!(" of model {m}")).unwrap_or_default(),
    have.join("; ")
)]
pub struct Unservable {
    /// The ask.
    pub ask: SliceAsk,
    /// The GPU model the ask was restricted to, if any.
    pub model: Option<String>,
    /// Each GPU of the fleet with its mode and what it offers (`GPU 0 h100-80gb (mig: …)`).
    pub have: Vec<String>,
    /// For a memory ask: `; the largest … ask --mem …` (empty otherwise).
    pub hint: String,
}

/// Whether no GPU of this fleet could ever serve the ask (ignoring what runs now and drains).
/// `Err` says why and what exists instead.
pub fn check_feasible(
    catalog: &Catalog,
    gpus: &[GpuFacts],
    ask: &SliceAsk,
    model: Option<&str>,
) -> Result<(), Unservable> {
    let states: Vec<GpuState> = gpus.iter().cloned().map(GpuState::empty).collect();
    let w = Waiting {
        id: 0,
        uid: 0,
        ask: ask.clone(),
        gpu_model: model.map(str::to_string),
        waited_ms: 0,
    };
    if decide(catalog, &states, &w, &[]).is_some() {
        return Ok(());
    }
    let mut have: Vec<String> = Vec::new();
    for g in gpus {
        let desc = match g.mode {
            GpuMode::Mig => {
                let m = catalog.get(&g.model);
                let names = m.map(|m| m.profile_names().join(", ")).unwrap_or_default();
                format!("GPU {} {} (mig: {names})", g.index, g.model)
            }
            GpuMode::Mps => format!(
                "GPU {} {} (mps: up to {} per client)",
                g.index,
                g.model,
                crate::wire::format_mib(g.mps_usable_mib())
            ),
            GpuMode::Timeslice => format!("GPU {} {} (timeslice: use --share)", g.index, g.model),
        };
        have.push(desc);
    }
    Err(Unservable {
        ask: ask.clone(),
        model: model.map(str::to_string),
        have,
        hint: largest_hint(catalog, gpus, ask, model),
    })
}

/// For a memory ask nothing can serve: the largest MIG instance and MPS client this machine
/// can give, with the flags that ask for them (`--mem 80GiB` on an H100 whose 7g.80gb has
/// 79.25 GiB: "ask --mem 79GiB or --mig 7g.80gb").
fn largest_hint(
    catalog: &Catalog,
    gpus: &[GpuFacts],
    ask: &SliceAsk,
    model: Option<&str>,
) -> String {
    let (SliceAsk::Mem { .. } | SliceAsk::Mps { .. }) = ask else {
        return String::new();
    };
    let mig_too = matches!(ask, SliceAsk::Mem { .. });
    let of_model = |g: &&GpuFacts| model.is_none_or(|m| m == g.model);
    let mut out = String::new();
    // (memory, profile, model key) of the largest ordinary profile.
    let best_mig = gpus
        .iter()
        .filter(|g| mig_too && g.mode == GpuMode::Mig)
        .filter(of_model)
        .filter_map(|g| catalog.get(&g.model))
        .flat_map(|m| {
            m.profiles
                .iter()
                .filter(|p| p.media_kind() == tessera_model::catalog::MediaKind::Standard)
                .filter_map(move |p| Some((p.memory_mib?, p.name.clone(), m.key.clone())))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
    if let Some((mib, name, key)) = best_mig {
        out.push_str(&format!(
            ". The largest MIG slice here is {name} on {key} with {} ({mib} MiB): ask for --mem {} or --mig {name}",
            gib_text(mib),
            floor_size(mib)
        ));
    }
    let best_mps = gpus
        .iter()
        .filter(|g| g.mode == GpuMode::Mps)
        .filter(of_model)
        .map(|g| g.mps_usable_mib())
        .max();
    if let Some(mib) = best_mps.filter(|m| *m > 0) {
        out.push_str(&format!(
            ". The largest MPS client here has {} ({mib} MiB): ask for --mps --mem {}",
            gib_text(mib),
            floor_size(mib)
        ));
    }
    out
}

/// `79.25 GiB`.
fn gib_text(mib: u64) -> String {
    let gib = mib as f64 / 1024.0;
    format!(
        "{} GiB",
        format!("{gib:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
    )
}

/// The largest whole GiB (or MiB below 1 GiB) that fits in `mib`: `79GiB` for 79.25 GiB.
fn floor_size(mib: u64) -> String {
    if mib >= 1024 {
        format!("{}GiB", mib / 1024)
    } else {
        format!("{mib}MiB")
    }
}

/// A GPU as the planner sees it, with the regions `holds` reserved on it; `None` (with a
/// warning) when an instance's profile is not one of its model's, since the planner must see
/// every instance to keep the busy ones.
fn planner_gpu<'c>(model: &'c GpuModel, g: &GpuState, holds: Vec<Hold>) -> Option<typed::Gpu<'c>> {
    let sharing = match g.facts.mode {
        GpuMode::Mig => {
            let mut instances = Vec::with_capacity(g.instances.len());
            for i in &g.instances {
                let placed = match &i.at {
                    InstanceAt::Placed(p) => *p,
                    InstanceAt::Unknown { profile, start } => {
                        tracing::warn!(
                            "GPU {}: instance {profile}@{start} is not a profile of {}; no new leases on it",
                            g.facts.index,
                            model.key
                        );
                        return None;
                    }
                };
                instances.push(Instance {
                    placed,
                    busy: i.used(),
                });
            }
            Sharing::Mig { instances, holds }
        }
        GpuMode::Mps => Sharing::Mps {
            clients: g
                .mps_clients
                .iter()
                .map(|c| MpsClientSpec {
                    memory_mib: c.memory_mib,
                    sm_percent: u32::from(c.sm_percent),
                })
                .collect(),
        },
        GpuMode::Timeslice => Sharing::Timeslice {
            replicas: Some(g.facts.replicas),
            used: g.replicas.len() as u32,
        },
    };
    Some(typed::Gpu { model, sharing })
}

fn options_for(g: &GpuState) -> PlanOptions {
    PlanOptions {
        mps_reserve_mib: g.facts.mps.reserve_mib,
        mps_sm_oversubscription: g.facts.mps.sm_oversubscription,
        mps_max_clients: mps_client_limit(&g.facts),
        timeslice_replicas: g.facts.replicas,
        ..PlanOptions::default()
    }
}

/// The used instances of a MIG GPU as placements of its model (unknown profiles skipped).
fn used_placements(g: &GpuState) -> Vec<Placed> {
    g.instances
        .iter()
        .filter(|i| i.used())
        .filter_map(|i| i.at.placed())
        .collect()
}

/// How to serve `w` now, or `None` when it must wait. `reservations` are those of requests
/// ahead of `w`: a GPU reserved whole is left out, and the MIG regions reserved on a GPU go to
/// the planner as held regions, which its plan keeps whole.
pub fn decide(
    catalog: &Catalog,
    gpus: &[GpuState],
    w: &Waiting,
    reservations: &[Reservation],
) -> Option<Serve> {
    let by_index: BTreeMap<u32, &GpuState> = gpus.iter().map(|g| (g.facts.index, g)).collect();
    for v in variants(catalog, gpus, w) {
        let mut candidates: Vec<u32> = Vec::new();
        let mut node = typed::Node::default();
        for i in &v.gpus {
            let g = by_index[i];
            let whole = reservations
                .iter()
                .any(|r| r.gpu == *i && r.region.is_none() && r.request != w.id);
            // MPS by uid: never a client next to another user's clients.
            let closed = matches!(v.ask, Ask::Mps(_)) && !g.mps_open_to(w.uid);
            if !g.usable() || whole || closed {
                continue;
            }
            let Some(model) = catalog.get(&g.facts.model) else {
                continue;
            };
            let holds = reservations
                .iter()
                .filter(|r| r.gpu == *i && r.request != w.id)
                .filter_map(|r| {
                    Some(Hold {
                        region: r.region?,
                        holder: RequestId(r.request),
                    })
                })
                .collect();
            if let Some(gpu) = planner_gpu(model, g, holds) {
                candidates.push(*i);
                node.gpus.push(gpu);
            }
        }
        let Some(first) = candidates.first() else {
            continue;
        };
        let problem = typed::Problem {
            nodes: vec![node],
            requests: vec![typed::Request {
                id: RequestId(w.id),
                ask: v.ask,
                priority: 1,
            }],
        };
        let outcome = match plan_typed(&problem, &options_for(by_index[first])) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("request {}: the planner refused the input: {e}", w.id);
                continue;
            }
        };
        let Some(a) = outcome.grants.first() else {
            continue;
        };
        let gpu = candidates[a.gpu];
        let g = by_index[&gpu];
        let pick = match a.slice {
            Slice::Mig(p) => Pick::Mig(p),
            Slice::Mps(m) => Pick::Mps {
                memory_mib: m.memory_mib,
                sm_percent: m.sm_percent.clamp(1, 100) as u8,
            },
            Slice::Timeslice => {
                let replica = (0..g.facts.replicas)
                    .find(|r| !g.replicas.contains_key(r))
                    .unwrap_or(g.facts.replicas);
                Pick::Timeslice { replica }
            }
        };
        let gp = &outcome.gpus[a.gpu];
        let layout = gp.changed().then(|| gp.layout.clone());
        return Some(Serve { gpu, layout, pick });
    }
    None
}

/// The GPU (and MIG placement) a request that must wait reserves, if any; `taken` are the
/// reservations of requests ahead of it (one per GPU).
pub fn reserve(
    catalog: &Catalog,
    gpus: &[GpuState],
    w: &Waiting,
    taken: &[Reservation],
) -> Option<Reservation> {
    let free =
        |g: &GpuState| !g.drained && g.healthy && !taken.iter().any(|r| r.gpu == g.facts.index);
    let by_index: BTreeMap<u32, &GpuState> = gpus.iter().map(|g| (g.facts.index, g)).collect();
    for v in variants(catalog, gpus, w) {
        let mut best: Option<((usize, u64, u32, u8), Reservation)> = None;
        for gi in &v.gpus {
            let g = by_index[gi];
            if !free(g) {
                continue;
            }
            // Keep the reservation with the smallest key.
            let mut consider = |key: (usize, u64, u32, u8), region: Option<Placed>| {
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((
                        key,
                        Reservation {
                            request: w.id,
                            gpu: *gi,
                            region,
                        },
                    ));
                }
            };
            match &v.ask {
                Ask::Mig { model: of, profile } => {
                    let Some(model) = catalog.get(&g.facts.model) else {
                        continue;
                    };
                    let Some(p) = tessera_planner::same_profile(of, *profile, model) else {
                        continue;
                    };
                    let used = used_placements(g);
                    if let Some((region, blockers)) = tessera_planner::choose_hold(model, &used, p)
                    {
                        consider((blockers, 0, *gi, region.start), Some(region));
                    }
                }
                Ask::Mps(m) => {
                    let f = &g.facts;
                    if m.memory_mib > f.mps_usable_mib()
                        || f64::from(m.sm_percent) > 100.0 * f.mps.sm_oversubscription
                    {
                        continue;
                    }
                    let used: u64 = g.mps_clients.iter().map(|c| c.memory_mib).sum();
                    consider((g.mps_clients.len(), used, *gi, 0), None);
                }
                Ask::Timeslice => consider((g.replicas.len(), 0, *gi, 0), None),
            }
        }
        if let Some((_, r)) = best {
            return Some(r);
        }
    }
    None
}

/// Why `w` waits after a pass in which [`decide`] found nothing for it: for each GPU it could
/// use, the first thing in the way, e.g. `GPU 1: held by another user's MPS clients …`.
/// `reservations` are those of the pass (the request's own is skipped).
pub fn why_waiting(
    catalog: &Catalog,
    gpus: &[GpuState],
    w: &Waiting,
    reservations: &[Reservation],
) -> String {
    let by_index: BTreeMap<u32, &GpuState> = gpus.iter().map(|g| (g.facts.index, g)).collect();
    let mut parts: Vec<String> = Vec::new();
    for v in variants(catalog, gpus, w) {
        for gi in &v.gpus {
            let why = gpu_blocker(catalog, by_index[gi], w, &v.ask, reservations);
            let line = format!("GPU {gi}: {why}");
            if !parts.contains(&line) {
                parts.push(line);
            }
        }
    }
    if parts.is_empty() {
        return "no GPU of this machine serves this ask".into();
    }
    parts.join("; ")
}

fn gpu_blocker(
    catalog: &Catalog,
    g: &GpuState,
    w: &Waiting,
    ask: &Ask<'_>,
    reservations: &[Reservation],
) -> String {
    let other = |r: &&Reservation| r.gpu == g.facts.index && r.request != w.id;
    if g.drained {
        return "drained by the administrator".into();
    }
    if !g.healthy {
        return "unhealthy after an XID error; no new leases".into();
    }
    if g.failed {
        return "a change failed on it in this pass; retried in the next".into();
    }
    if let Ask::Mps(_) = ask {
        if g.mps_holder().is_some_and(|h| h != w.uid) {
            return "held by another user's MPS clients (MPS runs one user's server per GPU at a time); waits until they end".into();
        }
    }
    if let Some(r) = reservations
        .iter()
        .filter(other)
        .find(|r| r.region.is_none())
    {
        return format!(
            "reserved for request {}, which waits longer; no new leases here until it is served",
            r.request
        );
    }
    match ask {
        Ask::Mps(m) => {
            let limit = mps_client_limit(&g.facts);
            if g.mps_clients.len() as u32 >= limit {
                return format!("all {limit} MPS clients of its server are in use");
            }
            let mem: u64 = g.mps_clients.iter().map(|c| c.memory_mib).sum();
            let sm: u32 = g.mps_clients.iter().map(|c| u32::from(c.sm_percent)).sum();
            format!(
                "MPS clients hold {} of {} and {sm}% SM; {} with {}% SM does not fit next to them",
                crate::wire::format_mib(mem),
                crate::wire::format_mib(g.facts.mps_usable_mib()),
                crate::wire::format_mib(m.memory_mib),
                m.sm_percent
            )
        }
        Ask::Mig { model, profile } => {
            let profile = &model.profile(*profile).name;
            let alone = Waiting {
                ask: SliceAsk::Mig {
                    profile: profile.clone(),
                },
                gpu_model: None,
                ..w.clone()
            };
            // Only with a hold on this GPU is the planner asked again (without the holds).
            let free = || decide(catalog, std::slice::from_ref(g), &alone, &[]).is_some();
            match reservations
                .iter()
                .filter(other)
                .find(|r| r.region.is_some())
            {
                Some(r) if free() => format!(
                    "the room left for {profile} is held for request {}, which waits longer",
                    r.request
                ),
                _ => format!("no room for a {profile} instance next to the instances in use"),
            }
        }
        Ask::Timeslice => {
            format!("all {} time-slice replicas are leased", g.facts.replicas)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MpsSettings;

    fn facts(index: u32, model: &str, mode: GpuMode) -> GpuFacts {
        let m = Catalog::builtin().lookup(model).unwrap();
        GpuFacts {
            index,
            uuid: format!("GPU-{index}"),
            model: m.key.clone(),
            mode,
            memory_mib: m.memory_mib().unwrap(),
            mps: MpsSettings::default(),
            replicas: 2,
        }
    }

    /// An instance of an H100 80GB (the model of every MIG GPU in these tests).
    fn inst(profile: &str, start: u8, lease: Option<u64>) -> InstanceState {
        let h100 = Catalog::builtin().lookup("h100-80gb").unwrap();
        InstanceState {
            at: InstanceAt::resolve(h100, profile, start),
            uuid: Some(format!("MIG-{profile}-{start}")),
            lease,
            pids: vec![],
        }
    }

    fn waiting(id: u64, ask: SliceAsk) -> Waiting {
        Waiting {
            id,
            uid: 1000,
            ask,
            gpu_model: None,
            waited_ms: 0,
        }
    }

    fn mig(p: &str) -> SliceAsk {
        SliceAsk::Mig { profile: p.into() }
    }

    #[test]
    fn an_idle_matching_instance_is_reused_without_a_repartition() {
        let mut g = GpuState::empty(facts(0, "h100-80gb", GpuMode::Mig));
        g.instances = vec![inst("3g.40gb", 0, Some(1)), inst("3g.40gb", 4, None)];
        let s = decide(Catalog::builtin(), &[g], &waiting(2, mig("3g.40gb")), &[]).unwrap();
        let h100 = Catalog::builtin().lookup("h100-80gb").unwrap();
        assert_eq!(s.pick, Pick::Mig(h100.parse_spec("3g.40gb@4").unwrap()));
        assert_eq!(s.layout, None);
    }

    /// A profile name is resolved once, when observed; an instance of a profile the model
    /// lacks keeps the whole GPU from the planner (it could not keep that instance).
    #[test]
    fn an_instance_of_an_unknown_profile_closes_its_gpu_to_new_leases() {
        let c = Catalog::builtin();
        let h100 = c.lookup("h100-80gb").unwrap();
        let at = InstanceAt::resolve(h100, "3g.40gb", 4);
        assert_eq!(
            at,
            InstanceAt::Placed(h100.parse_spec("3g.40gb@4").unwrap())
        );
        assert_eq!((at.profile(h100), at.start()), ("3g.40gb", 4));
        let odd = InstanceAt::resolve(h100, "1g.12gb", 0);
        assert_eq!(
            (odd.placed(), odd.profile(h100), odd.start()),
            (None, "1g.12gb", 0)
        );
        let mut g = GpuState::empty(facts(0, "h100-80gb", GpuMode::Mig));
        g.instances = vec![inst("1g.12gb", 0, None)];
        assert_eq!(
            decide(c, &[g.clone()], &waiting(1, mig("1g.10gb")), &[]),
            None
        );
        g.instances = vec![inst("1g.10gb", 0, None)];
        assert!(decide(c, &[g], &waiting(1, mig("1g.10gb")), &[]).is_some());
    }

    #[test]
    fn a_repartition_keeps_every_used_instance() {
        let c = Catalog::builtin();
        let m = c.lookup("h100-80gb").unwrap();
        let mut g = GpuState::empty(facts(0, "h100-80gb", GpuMode::Mig));
        g.instances = vec![inst("1g.10gb", 0, Some(1)), inst("3g.40gb", 4, None)];
        let s = decide(c, &[g], &waiting(2, mig("2g.20gb")), &[]).unwrap();
        let layout = s.layout.expect("must re-partition");
        assert!(
            layout.contains(&m.parse_spec("1g.10gb@0").unwrap()),
            "{layout:?}"
        );
        assert!(m.validate(&layout).is_empty());
    }

    #[test]
    fn a_full_gpu_waits_and_reserves_the_placement_with_fewest_blockers() {
        let c = Catalog::builtin();
        let m = c.lookup("h100-80gb").unwrap();
        let mut g = GpuState::empty(facts(0, "h100-80gb", GpuMode::Mig));
        g.instances = vec![
            inst("1g.10gb", 0, Some(1)),
            inst("1g.10gb", 1, Some(2)),
            inst("1g.10gb", 4, Some(3)),
        ];
        let w = waiting(9, mig("3g.40gb"));
        assert_eq!(decide(c, std::slice::from_ref(&g), &w, &[]), None);
        let r = reserve(c, std::slice::from_ref(&g), &w, &[]).unwrap();
        // 3g.40gb may start at 0 (two blockers) or 4 (one blocker).
        assert_eq!(r.region, Some(m.parse_spec("3g.40gb@4").unwrap()));
        // A later 1g.10gb may not land in slices 4-7 ...
        let later = decide(
            c,
            std::slice::from_ref(&g),
            &waiting(10, mig("1g.10gb")),
            std::slice::from_ref(&r),
        )
        .unwrap();
        match later.pick {
            Pick::Mig(p) => {
                assert!(p.start < 4, "landed in the reserved region at {}", p.start)
            }
            other => panic!("{other:?}"),
        }
        // ... so once slices 0-3 are taken, it waits although slices 5 and 6 are free.
        let mut g2 = g.clone();
        g2.instances.push(inst("1g.10gb", 2, Some(4)));
        g2.instances.push(inst("1g.10gb", 3, Some(5)));
        let blocked = decide(
            c,
            std::slice::from_ref(&g2),
            &waiting(11, mig("1g.10gb")),
            std::slice::from_ref(&r),
        );
        assert_eq!(blocked, None);
        let why = why_waiting(
            c,
            std::slice::from_ref(&g2),
            &waiting(11, mig("1g.10gb")),
            std::slice::from_ref(&r),
        );
        assert_eq!(
            why,
            "GPU 0: the room left for 1g.10gb is held for request 9, which waits longer"
        );
        let why = why_waiting(c, std::slice::from_ref(&g), &w, &[]);
        assert_eq!(
            why,
            "GPU 0: no room for a 3g.40gb instance next to the instances in use"
        );
        // Without the reservation it would have been served there.
        assert!(decide(c, &[g2], &waiting(11, mig("1g.10gb")), &[]).is_some());
    }

    #[test]
    fn mem_asks_take_the_smallest_mig_profile_then_mps() {
        let c = Catalog::builtin();
        let g0 = GpuState::empty(facts(0, "h100-80gb", GpuMode::Mig));
        let g1 = GpuState::empty(facts(1, "h100-80gb", GpuMode::Mps));
        let ask = SliceAsk::Mem {
            memory_mib: 12 * 1024,
            sm_percent: None,
        };
        let s = decide(c, &[g0.clone(), g1.clone()], &waiting(1, ask.clone()), &[]).unwrap();
        assert_eq!(s.gpu, 0);
        assert!(
            matches!(&s.pick, Pick::Mig(p) if c.lookup("h100-80gb").unwrap().profile(p.profile).name == "1g.20gb"),
            "{s:?}"
        );
        let mut drained = g0;
        drained.drained = true;
        let s = decide(c, &[drained, g1], &waiting(1, ask), &[]).unwrap();
        assert_eq!(s.gpu, 1);
        assert!(matches!(s.pick, Pick::Mps { memory_mib: 12288, sm_percent } if sm_percent > 0));
    }

    fn mps_client(lease: u64, uid: u32) -> MpsClient {
        MpsClient {
            lease,
            uid,
            memory_mib: 1024,
            sm_percent: 1,
        }
    }

    fn mps_ask(id: u64, uid: u32) -> Waiting {
        Waiting {
            uid,
            ..waiting(
                id,
                SliceAsk::Mem {
                    memory_mib: 1024,
                    sm_percent: Some(1),
                },
            )
        }
    }

    #[test]
    fn an_mps_gpu_held_by_another_uid_gets_no_client_of_this_one() {
        let c = Catalog::builtin();
        let mut g0 = GpuState::empty(facts(0, "h100-80gb", GpuMode::Mps));
        g0.mps_clients = vec![mps_client(1, 1001)];
        let g1 = GpuState::empty(facts(1, "h100-80gb", GpuMode::Mps));
        // The holder's uid joins its own server; another uid goes to the free GPU ...
        let same = decide(c, std::slice::from_ref(&g0), &mps_ask(2, 1001), &[]).unwrap();
        assert_eq!(same.gpu, 0);
        let other = decide(c, &[g0.clone(), g1], &mps_ask(3, 1002), &[]).unwrap();
        assert_eq!(other.gpu, 1);
        // ... or waits, saying why, and may reserve the held GPU so that it drains.
        let w = mps_ask(3, 1002);
        assert_eq!(decide(c, std::slice::from_ref(&g0), &w, &[]), None);
        let why = why_waiting(c, std::slice::from_ref(&g0), &w, &[]);
        assert!(
            why.starts_with("GPU 0: held by another user's MPS clients"),
            "{why}"
        );
        let r = reserve(c, std::slice::from_ref(&g0), &w, &[]).unwrap();
        assert_eq!((r.gpu, r.region), (0, None));
        // Once the holder's clients are gone the GPU serves the other uid.
        g0.mps_clients.clear();
        assert_eq!(decide(c, &[g0], &w, &[r]).unwrap().gpu, 0);
    }

    #[test]
    fn an_mps_server_never_gets_more_than_48_clients() {
        let c = Catalog::builtin();
        let mut f = facts(0, "h100-80gb", GpuMode::Mps);
        f.mps.max_clients = 100;
        let mut g = GpuState::empty(f);
        g.mps_clients = (0..47).map(|i| mps_client(i, 1001)).collect();
        assert!(decide(c, std::slice::from_ref(&g), &mps_ask(99, 1001), &[]).is_some());
        g.mps_clients.push(mps_client(47, 1001));
        let w = mps_ask(99, 1001);
        assert_eq!(decide(c, std::slice::from_ref(&g), &w, &[]), None);
        let why = why_waiting(c, std::slice::from_ref(&g), &w, &[]);
        assert!(why.contains("all 48 MPS clients"), "{why}");
        // A lower configured limit is kept.
        g.facts.mps.max_clients = 4;
        g.mps_clients.truncate(4);
        assert_eq!(decide(c, std::slice::from_ref(&g), &w, &[]), None);
    }

    /// One scheduling pass over MPS GPUs as the daemon runs it: the queue in order, a grant
    /// per served request, a reservation (at most one) for the first that must wait.
    fn mps_pass(gpus: &mut [GpuState], queue: &mut Vec<Waiting>, next_lease: &mut u64) {
        let c = Catalog::builtin();
        let mut reservations: Vec<Reservation> = Vec::new();
        let mut left = Vec::new();
        for w in queue.drain(..) {
            match decide(c, gpus, &w, &reservations) {
                Some(s) => {
                    let Pick::Mps {
                        memory_mib,
                        sm_percent,
                    } = s.pick
                    else {
                        panic!("{s:?}")
                    };
                    *next_lease += 1;
                    let g = gpus.iter_mut().find(|g| g.facts.index == s.gpu).unwrap();
                    g.mps_clients.push(MpsClient {
                        lease: *next_lease,
                        uid: w.uid,
                        memory_mib,
                        sm_percent,
                    });
                }
                None => {
                    if reservations.is_empty() {
                        reservations.extend(reserve(c, gpus, &w, &reservations));
                    }
                    left.push(w);
                }
            }
        }
        *queue = left;
    }

    proptest::proptest! {
        /// Whatever users ask and whenever leases end: an MPS GPU never holds clients of two
        /// uids, never more than 48, and once leases keep ending every request is served.
        #[test]
        fn mps_gpus_serve_one_uid_at_a_time_and_every_request_in_the_end(
            ngpus in 1u32..3,
            asks in proptest::collection::vec((0u32..4, 1u64..30, 0u8..4), 1..60),
            ends in proptest::collection::vec(0usize..8, 1..60),
        ) {
            let mut gpus: Vec<GpuState> = (0..ngpus)
                .map(|i| {
                    let mut f = facts(i, "h100-80gb", GpuMode::Mps);
                    f.mps.sm_oversubscription = 4.0;
                    GpuState::empty(f)
                })
                .collect();
            let mut queue: Vec<Waiting> = asks
                .iter()
                .enumerate()
                .map(|(i, (uid, gib, sm))| Waiting {
                    uid: 1000 + uid,
                    ..waiting(
                        i as u64 + 1,
                        SliceAsk::Mem {
                            memory_mib: gib * 1024,
                            sm_percent: Some([5, 10, 25, 50][*sm as usize]),
                        },
                    )
                })
                .collect();
            let mut next_lease = 0;
            let check = |gpus: &[GpuState]| {
                for g in gpus {
                    if let Some(h) = g.mps_holder() {
                        assert!(g.mps_clients.iter().all(|c| c.uid == h), "{:?}", g.mps_clients);
                    }
                    assert!(g.mps_clients.len() <= 48);
                }
            };
            // Leases end in an arbitrary pattern while requests are served ...
            for e in &ends {
                mps_pass(&mut gpus, &mut queue, &mut next_lease);
                check(&gpus);
                for g in gpus.iter_mut() {
                    if !g.mps_clients.is_empty() {
                        let i = e % g.mps_clients.len();
                        g.mps_clients.remove(i);
                    }
                }
            }
            // ... then the oldest lease of each GPU ends after every pass: the queue empties.
            let mut passes = 0;
            while !queue.is_empty() {
                mps_pass(&mut gpus, &mut queue, &mut next_lease);
                check(&gpus);
                for g in gpus.iter_mut() {
                    if !g.mps_clients.is_empty() {
                        g.mps_clients.remove(0);
                    }
                }
                passes += 1;
                proptest::prop_assert!(passes < 500, "starved: {queue:?}");
            }
        }
    }

    #[test]
    fn timeslice_replicas_are_numbered_and_run_out() {
        let c = Catalog::builtin();
        let share = |g: &GpuState, id| {
            decide(
                c,
                std::slice::from_ref(g),
                &waiting(id, SliceAsk::Share),
                &[],
            )
        };
        let mut g = GpuState::empty(facts(2, "a100-40gb", GpuMode::Timeslice));
        assert_eq!(share(&g, 1).unwrap().pick, Pick::Timeslice { replica: 0 });
        g.replicas.insert(0, 1);
        assert_eq!(share(&g, 2).unwrap().pick, Pick::Timeslice { replica: 1 });
        g.replicas.insert(1, 2);
        assert_eq!(share(&g, 3), None);
        assert_eq!(
            why_waiting(
                c,
                std::slice::from_ref(&g),
                &waiting(3, SliceAsk::Share),
                &[]
            ),
            "GPU 2: all 2 time-slice replicas are leased"
        );
        let r = reserve(
            c,
            std::slice::from_ref(&g),
            &waiting(3, SliceAsk::Share),
            &[],
        )
        .unwrap();
        assert_eq!((r.gpu, r.region), (2, None));
    }

    #[test]
    fn impossible_asks_are_named_with_what_exists() {
        let c = Catalog::builtin();
        let gpus = [
            facts(0, "h100-80gb", GpuMode::Mig),
            facts(1, "h100-80gb", GpuMode::Mps),
        ];
        assert!(check_feasible(c, &gpus, &mig("7g.80gb"), None).is_ok());
        let e = check_feasible(c, &gpus, &mig("7g.40gb"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7g.40gb") && e.contains("3g.40gb"), "{e}");
        let e = check_feasible(c, &gpus, &SliceAsk::Share, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("share"), "{e}");
        let e = check_feasible(
            c,
            &gpus,
            &SliceAsk::Mem {
                memory_mib: 200_000,
                sm_percent: None,
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mps"), "{e}");
    }

    #[test]
    fn a_memory_ask_too_large_names_the_largest_slice_and_the_flags() {
        let c = Catalog::builtin();
        let gpus = [facts(0, "h100-80gb", GpuMode::Mig)];
        // 80 GiB is more than 7g.80gb's 79.25 GiB.
        let ask = SliceAsk::Mem {
            memory_mib: 80 * 1024,
            sm_percent: None,
        };
        let e = check_feasible(c, &gpus, &ask, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7g.80gb on h100-80gb with 79.25 GiB"), "{e}");
        assert!(e.contains("--mem 79GiB or --mig 7g.80gb"), "{e}");
        // 80 GB (decimal) is 76294 MiB and fits.
        let ask = SliceAsk::Mem {
            memory_mib: 76_294,
            sm_percent: None,
        };
        assert!(check_feasible(c, &gpus, &ask, None).is_ok());
    }

    #[test]
    fn an_mps_ask_never_takes_a_mig_instance() {
        let c = Catalog::builtin();
        let mig_only = [facts(0, "h100-80gb", GpuMode::Mig)];
        let ask = SliceAsk::Mps {
            memory_mib: 4096,
            sm_percent: Some(20),
        };
        let e = check_feasible(c, &mig_only, &ask, None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("largest MIG"), "{e}");
        let both = [
            facts(0, "h100-80gb", GpuMode::Mig),
            facts(1, "h100-80gb", GpuMode::Mps),
        ];
        assert!(check_feasible(c, &both, &ask, None).is_ok());
        let states: Vec<GpuState> = both.iter().cloned().map(GpuState::empty).collect();
        let v = variants(c, &states, &waiting(1, ask));
        assert!(!v.is_empty());
        assert!(v.iter().all(|v| matches!(v.ask, Ask::Mps(_))));
    }
}
