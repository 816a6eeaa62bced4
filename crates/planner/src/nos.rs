//! The `nos` policy: a re-implementation of the nos planner's algorithm (read against nos's
//! source: `internal/partitioning/core` planner, snapshot and slice tracker, `pkg/gpu/mig` node
//! and GPU), behind the same interface as ours, so both run on one input in one process.
//!
//! 1. *Tracker.* For every pending pod separately, the cluster-wide free devices of its resource
//!    are summed over all nodes; when the pod's request exceeds them, the pod lacks the
//!    shortfall. Pods are checked one at a time against the same totals, not cumulatively; the
//!    lacking vector is the sum, and each pod's share is remembered. Nothing lacking: no
//!    re-partitioning.
//! 2. Pods are sorted by priority (highest first), then smaller requested profile first.
//! 3. Candidate nodes (a GPU with a free device, or whose geometry is not an allowed one) in
//!    order of name, until nothing lacks: fork the whole snapshot; copy the lacking vector for
//!    the node; for each GPU of the node pick, among the model's allowed geometries (per-profile
//!    counts) that keep the used devices, the best by `Σ min(new free devices of p, required p)`
//!    over the required profiles the GPU does not already provide; take the GPU's free devices
//!    off the node's copy before the next GPU. Then simulate the scheduler filter for every pod
//!    on the node: placed pods stay in the list (a pod placed on an earlier node is placed
//!    again and takes a device here too), and the first time a pod lands its share leaves the
//!    tracker. Keep the fork if at least one pod fits, else revert. The tracker shrinks only as
//!    pods land, never by the devices a node's new geometry offers.
//!    MPS GPUs: capacity is memory in whole GB; the missing slices (required minus free) are
//!    created smallest first while memory lasts; used slices are never removed; SM shares are
//!    not modelled.
//! 4. Each node's geometry becomes its desired state.
//!
//! Where nos's order is random (Go map iteration) ours is drawn from a seed: the order of a
//! node's GPUs that have instances (nos groups its status annotations by GPU index in a map;
//! GPUs without any follow in index order), the tie between equal best scores, and the key a
//! geometry's score is filed under (nos keys scores by `Geometry.Id()`, a string built by
//! iterating a Go map, so a geometry providing two required profiles can have its score split
//! over two keys). Node order is by name, as nos sorts it. The `nos` policy uses one fixed seed,
//! so its plans are deterministic; `quality::nos_seeded` plans with any seed.
//!
//! One nos quirk changes no plan and is left out: before the first kept fork, a reverted node's
//! new geometry stays in nos's snapshot (the fork shares the node objects); it only enters the
//! cluster-wide totals of a pre-check that the node filter implies anyway.
//!
//! Our additions, which nos does not have: allowed geometries are derived from the catalog (the
//! per-profile counts of every maximal valid layout), which is generous to nos (its default
//! lists know only A30/A100 and no `+me` profiles); each changed geometry is turned into a
//! hardware-valid layout that keeps the busy instances where they are and as many idle ones as
//! possible, or the GPU keeps its current layout when no placement realises the counts. Pods
//! are then bound first-fit (node name order, GPU index order) to free devices, as the
//! scheduler would, with a per-resource cursor past GPUs that have no free device left (binding
//! is not part of nos's algorithm; `bench plan --policy nos` reports its share of the time); an
//! MPS pod whose client breaks our memory, SM or client limits is not served. nos has no
//! time-slicing: time-slice requests go first-fit.

use std::cmp::Reverse;

use crate::mps;
use crate::problem::{Problem, ReqKind, Slot, Solution};
use crate::tables::{bits, Tables};

const MAXP: usize = tessera_model::layout::MAX_PROFILES;

/// Per-profile device counts.
type Counts = [u8; MAXP];

/// One GPU in the nos snapshot.
#[derive(Debug, Clone)]
enum GpuState {
    Mig {
        /// MIG GPU index.
        m: usize,
        /// Devices per local profile (the geometry).
        geo: Counts,
        /// Used devices per local profile.
        used: Counts,
    },
    Mps {
        /// MPS GPU index.
        i: usize,
        /// Capacity in whole GB.
        cap_gb: u32,
        /// GB held by used slices.
        used_gb: u32,
        /// Free slices per MPS resource.
        free: Vec<u16>,
    },
}

/// The whole-cluster snapshot nos plans on.
#[derive(Debug, Clone)]
struct Snapshot {
    gpus: Vec<GpuState>,
    /// Free devices per (node, resource), flat.
    node_free: Vec<i64>,
}

struct Pod {
    req: usize,
    res: usize,
    /// Devices this pod lacks in the tracker (cluster-wide at the start of the round); set to
    /// 0 once the pod has been placed on a node.
    lacks: i64,
}

/// Seed of the geometry tie-breaks of the `nos` policy (fixed: plans are deterministic).
pub(crate) const NOS_SEED: u64 = 0x006e_6f73;

/// Plan with the nos algorithm, ties broken with [`NOS_SEED`].
pub(crate) fn solve(p: &Problem<'_>) -> Solution {
    solve_seeded(p, NOS_SEED)
}

/// Plan with the nos algorithm; geometries of equal score are chosen at random from `seed`
/// (nos iterates a Go map, whose order is random), not the first of the list.
pub(crate) fn solve_seeded(p: &Problem<'_>, seed: u64) -> Solution {
    bind(p, algorithm(p, seed, NosLists::Catalog))
}

/// The allowed MIG geometries nos plans with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NosLists {
    /// The per-profile counts of every maximal valid layout in the catalog, for every model
    /// (the `nos` policy; generous to nos).
    #[default]
    Catalog,
    /// nos's built-in lists (`pkg/gpu/mig/known_configs.go`): 4 geometries for the A30 and 12
    /// each for the A100 40GB and 80GB, no `+me` or `1g.20gb` profiles. Two 80GB entries name
    /// profiles of the 40GB card (`3g.20gb`, `2g.10gb`); those devices are left out of the
    /// counts, as no such device can be created. A MIG GPU of any other model makes nos's
    /// snapshot fail (its `NewGPU` knows no geometries for it), so nothing is re-partitioned.
    NosDefault,
    /// nos's built-in lists, but a GPU of another model is only left as it is (a lenient
    /// reading, for comparison: real nos fails the whole round).
    NosDefaultPerGpu,
}

/// nos's default geometry lists, per catalog model: `(profile, count)` per geometry.
fn default_lists(model: &str) -> Option<&'static [&'static [(&'static str, u8)]]> {
    const A30: &[&[(&str, u8)]] = &[
        &[("4g.24gb", 1)],
        &[("2g.12gb", 2)],
        &[("2g.12gb", 1), ("1g.6gb", 2)],
        &[("1g.6gb", 4)],
    ];
    const A100_40: &[&[(&str, u8)]] = &[
        &[("7g.40gb", 1)],
        &[("4g.20gb", 1), ("2g.10gb", 1), ("1g.5gb", 1)],
        &[("4g.20gb", 1), ("1g.5gb", 3)],
        &[("3g.20gb", 2)],
        &[("3g.20gb", 1), ("2g.10gb", 1), ("1g.5gb", 1)],
        &[("3g.20gb", 1), ("1g.5gb", 3)],
        &[("2g.10gb", 2), ("3g.20gb", 1)],
        &[("2g.10gb", 1), ("1g.5gb", 2), ("3g.20gb", 1)],
        &[("2g.10gb", 3), ("1g.5gb", 1)],
        &[("2g.10gb", 2), ("1g.5gb", 3)],
        &[("2g.10gb", 1), ("1g.5gb", 5)],
        &[("1g.5gb", 7)],
    ];
    // As nos lists them, with its two 40GB profile names on this card.
    const A100_80: &[&[(&str, u8)]] = &[
        &[("7g.80gb", 1)],
        &[("4g.40gb", 1), ("2g.20gb", 1), ("1g.10gb", 1)],
        &[("4g.40gb", 1), ("1g.10gb", 3)],
        &[("3g.40gb", 2)],
        &[("3g.40gb", 1), ("2g.20gb", 1), ("1g.10gb", 1)],
        &[("3g.40gb", 1), ("1g.10gb", 3)],
        &[("2g.20gb", 2), ("3g.20gb", 1)],
        &[("2g.10gb", 1), ("1g.10gb", 2), ("3g.40gb", 1)],
        &[("2g.20gb", 3), ("1g.10gb", 1)],
        &[("2g.20gb", 2), ("1g.10gb", 3)],
        &[("2g.20gb", 1), ("1g.10gb", 5)],
        &[("1g.10gb", 7)],
    ];
    match model {
        "a30-24gb" => Some(A30),
        "a100-40gb" => Some(A100_40),
        "a100-80gb" => Some(A100_80),
        _ => None,
    }
}

/// nos's default list for a model as per-profile counts (profiles the model lacks left out).
fn default_geometries(t: &Tables<'_>) -> Option<Vec<Counts>> {
    let lists = default_lists(&t.model.key)?;
    Some(
        lists
            .iter()
            .map(|geo| {
                let mut c = [0u8; MAXP];
                for &(name, n) in *geo {
                    if let Some(idx) = t.model.profile_named(name) {
                        c[usize::from(idx.0)] += n;
                    }
                }
                c
            })
            .collect(),
    )
}

/// What nos's algorithm leaves for the binding step.
pub(crate) struct Planned {
    /// The desired layouts (no pod bound yet).
    sol: Solution,
    /// Free MPS slices per MPS GPU and slice size.
    mps_free: Vec<Vec<u16>>,
    /// Pods in nos's order.
    pods: Vec<Pod>,
    /// Resources: MIG profiles, then MPS slice sizes.
    nres: usize,
}

/// nos's algorithm proper (steps 1–4): the desired layouts, random choices drawn from `seed`.
/// Never inlined, so that an instruction profile can count it alone.
#[inline(never)]
pub(crate) fn algorithm(p: &Problem<'_>, seed: u64, lists: NosLists) -> Planned {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut sol = p.empty_solution();
    let np = p.profiles.len();
    // Resources: MIG global profiles, then MPS slice sizes in GB.
    let mut mps_sizes: Vec<u32> = p
        .reqs
        .iter()
        .filter_map(|r| match r.kind {
            ReqKind::Mps { mem, .. } => Some(gb_ceil(mem)),
            _ => None,
        })
        .collect();
    mps_sizes.sort_unstable();
    mps_sizes.dedup();
    let nres = np + mps_sizes.len();
    let nk = mps_sizes.len();

    let nodes = p.node_order.len();
    // GPUs per node in index order, as snapshot indices.
    let mut node_gpus: Vec<Vec<usize>> = vec![Vec::new(); nodes];
    let mut snap = Snapshot {
        gpus: Vec::new(),
        node_free: vec![0; nodes * nres],
    };
    for g in &p.gpus {
        let st = match g.mode {
            crate::GpuMode::Mig => {
                let mg = &p.mig[g.slot];
                let t = &p.tables[mg.t];
                let mut geo = [0u8; MAXP];
                let mut used = [0u8; MAXP];
                for c in bits(mg.existing) {
                    geo[usize::from(t.prof[c])] += 1;
                }
                for c in bits(mg.busy) {
                    used[usize::from(t.prof[c])] += 1;
                }
                GpuState::Mig {
                    m: g.slot,
                    geo,
                    used,
                }
            }
            crate::GpuMode::Mps => {
                let s = &p.mps[g.slot];
                let model = p.models[g.model];
                GpuState::Mps {
                    i: g.slot,
                    cap_gb: (model.memory_mib().unwrap_or(0) / 1024) as u32,
                    used_gb: s.mem_used.iter().map(|&m| gb_ceil(m)).sum(),
                    free: vec![0; nk],
                }
            }
            crate::GpuMode::Timeslice => continue,
        };
        node_gpus[g.node].push(snap.gpus.len());
        snap.gpus.push(st);
    }
    // A node's GPUs in nos's order: those with instances come from its status annotations,
    // grouped in a Go map (random order), then the GPUs without any in index order.
    for gs in node_gpus.iter_mut() {
        let (mut with, without): (Vec<usize>, Vec<usize>) =
            gs.iter().partition(|&&gi| has_instances(p, &snap.gpus[gi]));
        with.shuffle(&mut rng);
        with.extend(without);
        *gs = with;
    }
    for (n, gs) in node_gpus.iter().enumerate() {
        for &gi in gs {
            add_free(
                p,
                &snap.gpus[gi],
                &mut snap.node_free[n * nres..(n + 1) * nres],
                1,
            );
        }
    }

    let mut pods: Vec<Pod> = p
        .reqs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.kind {
            ReqKind::Mig(gp) => Some(Pod {
                req: i,
                res: gp,
                lacks: 0,
            }),
            ReqKind::Mps { mem, .. } => Some(Pod {
                req: i,
                res: np + mps_sizes.binary_search(&gb_ceil(mem)).expect("size listed"),
                lacks: 0,
            }),
            ReqKind::Ts => None,
        })
        .collect();

    // 1. The lacking-slice tracker: each pod against the same cluster-wide totals; what a pod
    //    lacks is remembered per pod, so that placing it removes exactly its share.
    let mut lacking = vec![0i64; nres];
    let totals: Vec<i64> = (0..nres)
        .map(|r| (0..nodes).map(|n| snap.node_free[n * nres + r]).sum())
        .collect();
    for pod in &mut pods {
        let diff = totals[pod.res] - 1;
        if diff < 0 {
            pod.lacks = -diff;
            lacking[pod.res] += -diff;
        }
    }

    // 2. Priority first, then the smaller request.
    let size_of = |res: usize| -> (u32, u32) {
        if res < np {
            profile_size(&p.profiles[res])
        } else {
            (mps_sizes[res - np], 0)
        }
    };
    pods.sort_by_key(|pod| (Reverse(p.reqs[pod.req].prio), size_of(pod.res), pod.req));

    // 3. Candidate nodes (free capacity in the snapshot before planning) by name.
    let geometries: Option<Vec<Vec<Counts>>> = match lists {
        NosLists::Catalog => Some(p.tables.iter().map(allowed_geometries).collect()),
        // nos's snapshot fails on a MIG GPU of a model its lists do not know.
        NosLists::NosDefault => p
            .mig
            .iter()
            .map(|g| default_geometries(&p.tables[g.t]))
            .collect::<Option<Vec<_>>>()
            .map(|_| {
                p.tables
                    .iter()
                    .map(|t| default_geometries(t).unwrap_or_default())
                    .collect()
            }),
        NosLists::NosDefaultPerGpu => Some(
            p.tables
                .iter()
                .map(|t| default_geometries(t).unwrap_or_default())
                .collect(),
        ),
    };
    if let (true, Some(geometries)) = (lacking.iter().any(|&l| l > 0), geometries) {
        let candidates: Vec<usize> = p
            .node_order
            .iter()
            .copied()
            .filter(|&n| {
                node_gpus[n]
                    .iter()
                    .any(|&gi| has_free_capacity(&snap.gpus[gi], &geometries, p))
            })
            .collect();
        for n in candidates {
            if lacking.iter().all(|&l| l <= 0) {
                break;
            }
            // nos forks the whole snapshot for every node.
            let mut fork = snap.clone();
            // The node works on its own copy of what lacks: each GPU's free devices are taken
            // off the copy before the next GPU; the tracker itself only shrinks as pods land.
            let mut required = lacking.clone();
            let range = n * nres..(n + 1) * nres;
            for &gi in &node_gpus[n] {
                add_free(p, &fork.gpus[gi], &mut fork.node_free[range.clone()], -1);
                update_geometry(
                    p,
                    &mut fork.gpus[gi],
                    &geometries,
                    &required,
                    &mps_sizes,
                    &mut rng,
                );
                add_free(p, &fork.gpus[gi], &mut fork.node_free[range.clone()], 1);
                for (r, l) in required.iter_mut().enumerate() {
                    if *l > 0 {
                        *l = (*l - free_of(p, &fork.gpus[gi], r)).max(0);
                    }
                }
            }
            // Scheduler filter: every pod against this node, placed pods included (nos never
            // takes them off its list); a fitting pod takes a device of the node's first GPU
            // that has one, and the first time a pod lands its share leaves the tracker.
            let mut any = false;
            for pod in &mut pods {
                let slot = n * nres + pod.res;
                if fork.node_free[slot] > 0 {
                    if let Some(&gi) = node_gpus[n]
                        .iter()
                        .find(|&&gi| free_of(p, &fork.gpus[gi], pod.res) > 0)
                    {
                        take(p, &mut fork.gpus[gi], pod.res, &mps_sizes);
                        fork.node_free[slot] -= 1;
                        any = true;
                        lacking[pod.res] -= pod.lacks;
                        pod.lacks = 0;
                    }
                }
            }
            // Keep the fork if a pod fits (its geometry becomes the node's desired state).
            if any {
                snap = fork;
            }
        }
    }

    // 4. Desired geometries become layouts where the hardware allows.
    let mut mps_free: Vec<Vec<u16>> = vec![vec![0; nk]; p.mps.len()];
    for st in &snap.gpus {
        match st {
            GpuState::Mig { m, geo, .. } => {
                let g = &p.mig[*m];
                let t = p.t(*m);
                if counts_of(t, g.existing) != *geo {
                    if let Some(l) = realise(t, g.busy, g.existing, geo) {
                        sol.layouts[*m] = l;
                    }
                }
            }
            GpuState::Mps { i, free, .. } => mps_free[*i] = free.clone(),
        }
    }

    Planned {
        sol,
        mps_free,
        pods,
        nres,
    }
}

/// Bind pods first-fit to the planned layouts, as the scheduler would (not part of nos).
#[inline(never)]
pub(crate) fn bind(p: &Problem<'_>, planned: Planned) -> Solution {
    let Planned {
        mut sol,
        mut mps_free,
        pods,
        nres,
    } = planned;
    let np = p.profiles.len();
    let nodes = p.node_order.len();
    let order = &p.node_order;
    let mut held: Vec<u64> = p.mig.iter().map(|g| g.busy).collect();
    let mut room = p.mps_room();
    let mut on_node: Vec<Vec<(crate::GpuMode, usize)>> = vec![Vec::new(); nodes];
    for g in &p.gpus {
        on_node[g.node].push((g.mode, g.slot));
    }
    // Binding never frees a device, so a GPU without a free device of a resource never gets
    // one: each resource keeps a cursor past such GPUs (the same binding as a scan from the
    // first node every time, without its quadratic cost, which real nos does not have).
    let flat: Vec<(crate::GpuMode, usize)> = order
        .iter()
        .flat_map(|&n| on_node[n].iter().copied())
        .collect();
    let mut cursor = vec![0usize; nres];
    for pod in &pods {
        let start = cursor[pod.res];
        'nodes: for (at, &(mode, slot)) in flat.iter().enumerate().skip(start) {
            {
                match (mode, p.reqs[pod.req].kind) {
                    (crate::GpuMode::Mig, ReqKind::Mig(gp)) => {
                        let Some(lp) = p.local[p.mig[slot].t][gp] else {
                            if cursor[pod.res] == at {
                                cursor[pod.res] = at + 1;
                            }
                            continue;
                        };
                        let free = p.free_of(slot, sol.layouts[slot], lp) & !held[slot];
                        if free == 0 && cursor[pod.res] == at {
                            cursor[pod.res] = at + 1;
                        }
                        if free != 0 {
                            let c = free.trailing_zeros() as usize;
                            held[slot] |= 1 << c;
                            sol.slots[pod.req] = Some(Slot::Mig(slot, c));
                            break 'nodes;
                        }
                    }
                    (crate::GpuMode::Mps, ReqKind::Mps { mem, sm }) => {
                        let k = pod.res - np;
                        if mps_free[slot][k] == 0 && cursor[pod.res] == at {
                            cursor[pod.res] = at + 1;
                        }
                        if mps_free[slot][k] > 0 {
                            mps_free[slot][k] -= 1;
                            let r = &mut room[slot];
                            // The pod lands here; our limits decide whether it is served.
                            if r.0 >= mem && r.1 >= sm && r.2 > 0 {
                                *r = (r.0 - mem, r.1 - sm, r.2 - 1);
                                sol.slots[pod.req] = Some(Slot::Mps(slot));
                            }
                            break 'nodes;
                        }
                    }
                    _ => {
                        if cursor[pod.res] == at {
                            cursor[pod.res] = at + 1;
                        }
                    }
                }
            }
        }
    }
    mps::timeslice(p, false, &mut sol.slots);
    sol
}

fn gb_ceil(mib: u64) -> u32 {
    mib.div_ceil(1024) as u32
}

/// (memory GB, compute slices) read from a profile name `Ng.Mgb...`, as nos parses names.
fn profile_size(name: &str) -> (u32, u32) {
    let mut parts = name.split('.');
    let g: u32 = parts
        .next()
        .and_then(|x| x.strip_suffix('g'))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let mem: u32 = parts
        .next()
        .map(|x| {
            x.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (mem, g)
}

/// Per-profile counts of every maximal valid layout of the model, in enumeration order,
/// without repeats.
fn allowed_geometries(t: &Tables<'_>) -> Vec<Counts> {
    let mut out: Vec<Counts> = Vec::new();
    let all = if t.cand.len() == 64 {
        u64::MAX
    } else {
        (1u64 << t.cand.len()) - 1
    };
    t.for_each_superset(0, all, &mut |l| {
        if (0..t.cand.len()).all(|c| l & (1 << c) != 0 || !t.fits(l, c)) {
            let c = counts_of(t, l);
            if !out.contains(&c) {
                out.push(c);
            }
        }
        true
    });
    out
}

fn counts_of(t: &Tables<'_>, layout: u64) -> Counts {
    let mut c = [0u8; MAXP];
    for i in bits(layout) {
        c[usize::from(t.prof[i])] += 1;
    }
    c
}

/// Free devices of resource `r` on a snapshot GPU.
fn free_of(p: &Problem<'_>, st: &GpuState, r: usize) -> i64 {
    let np = p.profiles.len();
    match st {
        GpuState::Mig { m, geo, used } => {
            if r >= np {
                return 0;
            }
            match p.local[p.mig[*m].t][r] {
                Some(lp) => i64::from(geo[lp]) - i64::from(used[lp]),
                None => 0,
            }
        }
        GpuState::Mps { free, .. } => {
            if r < np {
                0
            } else {
                i64::from(free[r - np])
            }
        }
    }
}

/// Add (`sign` 1) or remove (`sign` -1) a GPU's free devices to its node's totals.
fn add_free(p: &Problem<'_>, st: &GpuState, node_free: &mut [i64], sign: i64) {
    for (r, f) in node_free.iter_mut().enumerate() {
        *f += sign * free_of(p, st, r);
    }
}

/// Mark one free device of resource `r` used.
fn take(p: &Problem<'_>, st: &mut GpuState, r: usize, mps_sizes: &[u32]) {
    let np = p.profiles.len();
    match st {
        GpuState::Mig { m, used, .. } => {
            if let Some(lp) = p.local[p.mig[*m].t][r] {
                used[lp] += 1;
            }
        }
        GpuState::Mps { free, used_gb, .. } => {
            free[r - np] -= 1;
            *used_gb += mps_sizes[r - np];
        }
    }
}

/// Whether nos sees the GPU in its status annotations: it has MIG instances or MPS clients.
fn has_instances(p: &Problem<'_>, st: &GpuState) -> bool {
    match st {
        GpuState::Mig { m, .. } => p.mig[*m].existing != 0,
        GpuState::Mps { used_gb, free, .. } => *used_gb > 0 || free.iter().any(|&f| f > 0),
    }
}

/// nos's candidate-node test for one GPU: it has a free device, or its current geometry is not
/// one of the allowed ones (so applying one creates devices). MPS: a free slice, or at least
/// 1 GB not in slices.
fn has_free_capacity(st: &GpuState, geos: &[Vec<Counts>], p: &Problem<'_>) -> bool {
    match st {
        GpuState::Mig { m, geo, used } => {
            let nprof = p.t(*m).profiles();
            if (0..nprof).any(|lp| geo[lp] > used[lp]) {
                return true;
            }
            !geos[p.mig[*m].t].contains(geo)
        }
        GpuState::Mps {
            cap_gb,
            used_gb,
            free,
            ..
        } => *cap_gb > *used_gb || free.iter().any(|&f| f > 0),
    }
}

/// Which of the `k` entries of a small Go map (one bucket, Go before 1.24, as nos is built) an
/// iteration starts from: a random offset of 0–7 into the bucket's eight slots, and offsets past
/// the last entry wrap to the first. Entry 0 thus starts with chance (9 − k)/8, each other 1/8.
fn go_map_start(k: usize, rng: &mut impl rand::Rng) -> usize {
    if k <= 1 {
        return 0;
    }
    let offset = rng.random_range(0..8usize);
    if offset < k {
        offset
    } else {
        0
    }
}

/// nos's per-GPU geometry update for the node's copy of what is required.
fn update_geometry(
    p: &Problem<'_>,
    st: &mut GpuState,
    geos: &[Vec<Counts>],
    required: &[i64],
    mps_sizes: &[u32],
    rng: &mut impl rand::Rng,
) {
    let np = p.profiles.len();
    match st {
        GpuState::Mig { m, geo, used } => {
            let t = p.mig[*m].t;
            let nprof = p.tables[t].profiles();
            let loc = &p.local[t];
            // Scores per map key. nos adds each required profile's contribution under the key
            // `Geometry.Id()`, a string built by iterating the geometry's own Go map: for a
            // geometry of k > 1 profiles each contribution lands under one of k rotations, so
            // one geometry's score can be split over several keys (`go_map_start`).
            let mut scored: Vec<(i64, &Counts, usize)> = Vec::new();
            for g in &geos[t] {
                // CanApplyGeometry: no used device may go.
                if (0..nprof).any(|lp| g[lp] < used[lp]) {
                    continue;
                }
                let k = g.iter().take(nprof).filter(|&&c| c > 0).count();
                let at = scored.len();
                for (gp, lp) in loc.iter().enumerate() {
                    let Some(lp) = *lp else { continue };
                    if required[gp] <= 0 {
                        continue;
                    }
                    // The GPU already provides what is required of this profile.
                    if i64::from(geo[lp]) - i64::from(used[lp]) >= required[gp] {
                        continue;
                    }
                    let provided = (i64::from(g[lp]) - i64::from(used[lp])).min(required[gp]);
                    if provided <= 0 {
                        continue;
                    }
                    let key = go_map_start(k, rng);
                    match scored[at..].iter_mut().find(|(_, _, r)| *r == key) {
                        Some(e) => e.0 += provided,
                        None => scored.push((provided, g, key)),
                    }
                }
            }
            // The first key of the highest score in the score map's (random) order.
            let mut best: Option<(i64, &Counts)> = None;
            let mut ties = 0u32;
            for &(score, g, _) in &scored {
                match best {
                    Some((b, _)) if score < b => {}
                    Some((b, _)) if score == b => {
                        // Reservoir choice: each tied key is kept with equal chance.
                        ties += 1;
                        if rng.random_range(0..ties) == 0 {
                            best = Some((score, g));
                        }
                    }
                    _ => {
                        best = Some((score, g));
                        ties = 1;
                    }
                }
            }
            if let Some((_, g)) = best {
                *geo = *g;
            }
        }
        GpuState::Mps {
            cap_gb,
            used_gb,
            free,
            ..
        } => {
            let mut left = i64::from(*cap_gb)
                - i64::from(*used_gb)
                - free
                    .iter()
                    .zip(mps_sizes)
                    .map(|(&f, &s)| i64::from(f) * i64::from(s))
                    .sum::<i64>();
            for (k, &size) in mps_sizes.iter().enumerate() {
                // Missing: what is required beyond the GPU's free slices of that size.
                let mut want = required[np + k] - i64::from(free[k]);
                while want > 0 && left >= i64::from(size) {
                    free[k] += 1;
                    left -= i64::from(size);
                    want -= 1;
                }
            }
        }
    }
}

/// A valid layout with exactly the counts `geo` that keeps every busy instance, keeping as many
/// idle instances as possible; `None` when the placements cannot realise the counts.
fn realise(t: &Tables<'_>, busy: u64, existing: u64, geo: &Counts) -> Option<u64> {
    let mut extra = existing & !busy;
    for (lp, &n) in geo.iter().enumerate().take(t.profiles()) {
        if n > 0 {
            extra |= t.by_profile[lp];
        }
    }
    let mut best: Option<(u32, u64)> = None;
    t.for_each_superset(busy, extra, &mut |l| {
        if counts_of(t, l) == *geo {
            let ops = (l ^ existing).count_ones();
            if best.is_none_or(|(o, _)| ops < o) {
                best = Some((ops, l));
            }
        }
        true
    });
    best.map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    #[test]
    fn geometries_are_counts_that_placements_may_not_realise() {
        let m = Catalog::builtin().lookup("a100-80gb").unwrap();
        let t = Tables::new(m).unwrap();
        let geos = allowed_geometries(&t);
        let p = |name: &str| usize::from(m.profile_named(name).unwrap().0);
        let mut want = [0u8; MAXP];
        want[p("2g.20gb")] = 3;
        want[p("1g.10gb")] = 1;
        assert!(geos.contains(&want), "{} geometries", geos.len());
        // Every geometry is the count vector of a maximal layout; none repeats.
        for (i, g) in geos.iter().enumerate() {
            assert!(!geos[..i].contains(g));
        }
        // With 1g.10gb@3 busy no placement of three 2g.20gb exists; on an empty GPU one does.
        let busy = 1u64 << t.cand_index(m.parse_spec("1g.10gb@3").unwrap()).unwrap();
        assert_eq!(realise(&t, busy, busy, &want), None);
        let l = realise(&t, 0, 0, &want).unwrap();
        assert_eq!(counts_of(&t, l), want);
    }

    #[test]
    fn geometry_ties_fall_by_seed_and_each_seed_is_deterministic() {
        use crate::input::{ClusterSpec, GpuSpec, NodeSpec, RequestSpec};
        use crate::PlanOptions;
        let c = Catalog::builtin();
        let cluster = ClusterSpec {
            nodes: vec![NodeSpec {
                name: "a".into(),
                gpus: vec![GpuSpec::mig("a100-80gb", Vec::new())],
            }],
        };
        let requests = vec![RequestSpec::mig("r1", "1g.10gb")];
        let opts = PlanOptions::with_policy(crate::Policy::Nos);
        let mut layouts = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let (a, oa) = crate::quality::nos_seeded(c, &cluster, &requests, seed).unwrap();
            let (b, _) = crate::quality::nos_seeded(c, &cluster, &requests, seed).unwrap();
            assert_eq!(a, b, "seed {seed}");
            assert_eq!(oa.served, 1);
            crate::check_plan(c, &cluster, &requests, &opts, &a).unwrap();
            layouts.insert(format!("{:?}", a.gpus[0].layout));
        }
        // Every geometry with a 1g.10gb scores 1: the seeds pick different ones, not always the
        // first of the list.
        assert!(layouts.len() >= 3, "{layouts:?}");
    }

    /// Three nodes of one empty A30 each and two pending `4g.24gb` pods (none exists, so the
    /// tracker lacks 2). By nos's rules: node a gets `4g.24gb`, the first pod lands (tracker
    /// 2 → 1); node b gets `4g.24gb` from its own copy of the tracker (1), and the first pod,
    /// still on the list, lands again and takes it, so the second pod does not fit and the
    /// tracker stays at 1; node c is re-partitioned the same way. The old model took every
    /// GPU's free devices off one cluster-wide vector (2 → 1 → 0) and stopped before node c.
    #[test]
    fn the_tracker_shrinks_only_as_pods_land_and_placed_pods_stay_listed() {
        use crate::input::{ClusterSpec, GpuSpec, NodeSpec, RequestSpec};
        use crate::PlanOptions;
        let c = Catalog::builtin();
        let cluster = ClusterSpec {
            nodes: ["c", "a", "b"]
                .iter()
                .map(|name| NodeSpec {
                    name: (*name).into(),
                    gpus: vec![GpuSpec::mig("a30-24gb", Vec::new())],
                })
                .collect(),
        };
        let requests = vec![
            RequestSpec::mig("p1", "4g.24gb"),
            RequestSpec::mig("p2", "4g.24gb"),
        ];
        let opts = PlanOptions::with_policy(crate::Policy::Nos);
        for seed in 0..5 {
            let (plan, o) = crate::quality::nos_seeded(c, &cluster, &requests, seed).unwrap();
            crate::check_plan(c, &cluster, &requests, &opts, &plan).unwrap();
            // Both pods are bound (first fit: a, then b) and all three GPUs are re-partitioned.
            assert_eq!(o.served, 2, "seed {seed}");
            for node in ["a", "b", "c"] {
                let g = plan.gpus.iter().find(|g| &*g.node == node).unwrap();
                let layout: Vec<&str> = g.layout.iter().map(|i| &*i.profile).collect();
                assert_eq!(layout, ["4g.24gb"], "seed {seed}, node {node}");
                assert!(g.changed(), "seed {seed}, node {node}");
            }
            assert_eq!(o.operations, 3, "seed {seed}");
        }
    }

    #[test]
    fn go_map_iteration_starts_at_the_first_entry_unless_the_offset_hits_another() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        assert_eq!(go_map_start(1, &mut rng), 0);
        let mut seen = [0u32; 3];
        for _ in 0..8000 {
            seen[go_map_start(3, &mut rng)] += 1;
        }
        // Offsets 0, 3..=7 start at entry 0 (6/8); offsets 1 and 2 at entries 1 and 2 (1/8 each).
        assert!((5700..6300).contains(&seen[0]), "{seen:?}");
        assert!(
            (800..1200).contains(&seen[1]) && (800..1200).contains(&seen[2]),
            "{seen:?}"
        );
    }

    #[test]
    fn the_phased_nos_plan_is_the_policy_plan_and_marks_each_phase_once_in_order() {
        use crate::quality::{nos_phases, NosPhase};
        let c = Catalog::builtin();
        let spec = crate::gen::BenchSpec {
            nodes: 12,
            gpus_per_node: 4,
            pending: 60,
            seed: 3,
        };
        let (cluster, requests) = crate::gen::bench_input(c, &spec);
        let opts = crate::PlanOptions::with_policy(crate::Policy::Nos);
        let want = crate::plan(c, &cluster, &requests, &opts).unwrap();
        let mut marks = Vec::new();
        let (got, _) = nos_phases(c, &cluster, &requests, &mut |ph| marks.push(ph)).unwrap();
        assert_eq!(got, want);
        assert_eq!(
            marks,
            [
                NosPhase::Setup,
                NosPhase::Algorithm,
                NosPhase::Binding,
                NosPhase::Output
            ]
        );
    }

    #[test]
    fn nos_default_lists_know_a30_and_a100_only_and_another_mig_model_stops_the_round() {
        use crate::input::{ClusterSpec, GpuSpec, NodeSpec, RequestSpec};
        use crate::quality::{nos_seeded_with, NosLists};
        let c = Catalog::builtin();
        let node = |name: &str, model: &str| NodeSpec {
            name: name.into(),
            gpus: vec![GpuSpec::mig(model, Vec::new())],
        };
        let requests = vec![RequestSpec::mig("r1", "1g.10gb")];
        let a100 = ClusterSpec {
            nodes: vec![node("a", "a100-80gb")],
        };
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..10 {
            let (plan, o) =
                nos_seeded_with(c, &a100, &requests, seed, NosLists::NosDefault).unwrap();
            assert_eq!(o.served, 1);
            let layout: Vec<&str> = plan.gpus[0].layout.iter().map(|i| &*i.profile).collect();
            // Only the listed profiles: no 1g.20gb, no +me.
            assert!(
                layout.iter().all(|p| !p.contains('+') && *p != "1g.20gb"),
                "{layout:?}"
            );
            seen.insert(layout.join(" "));
        }
        // The catalog's geometries for the same GPU include 1g.20gb ones; nos's list does not.
        assert!(seen.len() >= 2, "{seen:?}");
        // An H100 anywhere in the cluster: nos's snapshot fails, nothing is re-partitioned.
        let mixed = ClusterSpec {
            nodes: vec![node("a", "a100-80gb"), node("h", "h100-80gb")],
        };
        let (plan, o) = nos_seeded_with(c, &mixed, &requests, 0, NosLists::NosDefault).unwrap();
        assert_eq!(o.served, 0);
        assert!(plan.gpus.iter().all(|g| !g.changed()));
        let (_, o) = nos_seeded_with(c, &mixed, &requests, 0, NosLists::Catalog).unwrap();
        assert_eq!(o.served, 1);
        // The lenient reading only leaves the H100 alone and re-partitions the A100.
        let (plan, o) =
            nos_seeded_with(c, &mixed, &requests, 0, NosLists::NosDefaultPerGpu).unwrap();
        assert_eq!(o.served, 1);
        assert!(plan.gpus.iter().any(|g| &*g.node == "a" && g.changed()));
        assert!(plan.gpus.iter().all(|g| &*g.node == "a" || !g.changed()));
    }

    #[test]
    fn profile_sizes_are_read_from_names_as_nos_does() {
        assert_eq!(profile_size("3g.40gb"), (40, 3));
        assert_eq!(profile_size("1g.10gb+me"), (10, 1));
        assert_eq!(profile_size("odd"), (0, 0));
    }
}
