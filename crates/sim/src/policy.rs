//! Placement policies: the five ways of giving pods GPU slices that the simulator compares.
//!
//! * `tessera` and `nos` ask the planner (see [`crate::planned`]).
//! * `best-fit` ([`BestFit`]): at arrival, the pod's profile goes on the GPU that it fills
//!   best; a free instance of the profile is used if there is one, otherwise a new instance is
//!   created in the GPU's free space. Busy GPUs are never re-partitioned; a GPU whose instances
//!   are all free may be wiped and re-used.
//! * `static-mig` and `whole-gpu` ([`Fixed`]): every GPU gets a fixed layout before the run
//!   (see [`crate::static_layout`]); pods only take free instances, nothing is ever created or
//!   destroyed afterwards.
//!
//! Rules shared by every policy: a pod fits a node only if its CPU and memory fit; a multi-GPU
//! pod takes full-GPU instances on one node; a CPU-only pod goes to the node with the fewest
//! free GPU slices, then the least free CPU, among those where it fits.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use tessera_model::{GpuModel, LayoutState, Placed, ProfileIdx};
use tessera_planner::{Policy, UnknownPolicy};

use crate::cluster::{Cluster, OpError, PodId};
use crate::mapping::Mapping;
use crate::workload::SimPod;

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A policy asked for an operation the cluster refused (a bug in the policy).
    #[error("policy {policy} made an invalid move: {source}")]
    Op {
        /// The policy.
        policy: PolicyKind,
        /// The refused operation.
        source: OpError,
    },
    /// The planner rejected its input.
    #[error("planner error under policy {policy}: {source}")]
    Planner {
        /// The policy.
        policy: PolicyKind,
        /// The planner's error.
        source: tessera_planner::PlanError,
    },
    /// A plan the simulator cannot apply as given (a bug in the planner or the simulator).
    #[error("policy {policy} gave an unusable plan: {problem}")]
    UnexpectedPlan {
        /// The policy.
        policy: PolicyKind,
        /// What does not match.
        problem: String,
    },
}

/// The policies the simulator compares: a sum type, so each policy carries what it needs and
/// nothing else. The re-partitioning ones are the planner's own [`Policy`] values, with the
/// planner's names; the fixed-slice ones exist only here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// Dynamic re-partitioning: each arrival is planned by [`tessera_planner::plan`] under this
    /// planner policy ([`PolicyKind::TESSERA`] or [`PolicyKind::NOS`]).
    Planned(Policy),
    /// Fixed slices chosen at arrival by best fit.
    BestFit,
    /// One fixed partition of the whole cluster chosen from the trace's demand mix.
    StaticMig,
    /// No sharing: every GPU pod takes whole GPUs.
    WholeGpu,
}

impl PolicyKind {
    /// Dynamic re-partitioning with tessera's planner (and its fragmentation-aware node choice).
    pub const TESSERA: PolicyKind = PolicyKind::Planned(Policy::Tessera);
    /// Dynamic re-partitioning with the nos algorithm (the planner's `nos` policy).
    pub const NOS: PolicyKind = PolicyKind::Planned(Policy::Nos);

    /// Every policy the simulator runs, in report order.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::TESSERA,
        PolicyKind::NOS,
        PolicyKind::BestFit,
        PolicyKind::StaticMig,
        PolicyKind::WholeGpu,
    ];

    /// The command-line name: the planner's name for a planned policy.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Planned(p) => p.as_str(),
            PolicyKind::BestFit => "best-fit",
            PolicyKind::StaticMig => "static-mig",
            PolicyKind::WholeGpu => "whole-gpu",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Written as its name (`tessera`, `best-fit`, ...), as before the sum type.
impl Serialize for PolicyKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;
    /// One vocabulary with the planner: planner policy names parse through [`Policy`]'s own
    /// parser (same spellings), and only those the simulator runs are accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownPolicy {
            name: s.trim().to_string(),
            choices: PolicyKind::ALL.map(PolicyKind::name).to_vec(),
        };
        let kind = match s.parse::<Policy>() {
            Ok(p) => PolicyKind::Planned(p),
            Err(_) => PolicyKind::ALL
                .into_iter()
                .find(|p| p.name() == s.trim().to_ascii_lowercase())
                .ok_or_else(unknown)?,
        };
        if PolicyKind::ALL.contains(&kind) {
            Ok(kind)
        } else {
            Err(unknown())
        }
    }
}

/// A placement policy.
pub trait Placer {
    /// Try to place each pod (in the given order) on the cluster; say which were placed.
    fn place(
        &mut self,
        cluster: &mut Cluster,
        pods: &[(PodId, &SimPod)],
    ) -> Result<Vec<bool>, SimError>;

    /// Planner statistics (zero for policies that do not call the planner).
    fn planner_stats(&self) -> PlannerStats {
        PlannerStats::default()
    }
}

/// What a planner-driven policy did beyond the cluster's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlannerStats {
    /// Calls to the planner.
    pub calls: u64,
    /// GPU changes the planner proposed for GPUs that got no pod (not applied).
    pub unapplied_changes: u64,
}

/// Place `pods` in order, each with `place_one`, naming `policy` in an error.
fn place_each(
    policy: PolicyKind,
    cluster: &mut Cluster,
    pods: &[(PodId, &SimPod)],
    mut place_one: impl FnMut(&mut Cluster, PodId, &SimPod) -> Result<bool, OpError>,
) -> Result<Vec<bool>, SimError> {
    pods.iter()
        .map(|&(id, pod)| {
            place_one(cluster, id, pod).map_err(|source| SimError::Op { policy, source })
        })
        .collect()
}

/// Place a CPU-only pod by the shared rule; returns whether it fit.
pub(crate) fn place_cpu_only(
    cluster: &mut Cluster,
    id: PodId,
    pod: &SimPod,
) -> Result<bool, OpError> {
    let model = cluster.model();
    let best = cluster
        .nodes()
        .iter()
        .enumerate()
        .filter(|(_, n)| n.fits(pod.cpu, pod.mem))
        .min_by_key(|(i, n)| (n.free_slices(model), n.cpu_total - n.cpu_used, *i))
        .map(|(i, _)| i);
    match best {
        Some(node) => {
            cluster.bind_pod(id, pod, node, vec![])?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The standard (profile, start) candidates of a model, used to judge free space.
pub(crate) fn standard_candidates(mapping: &Mapping) -> Vec<Placed> {
    let model = mapping.model();
    mapping
        .standard()
        .iter()
        .flat_map(|&p| {
            model
                .profile(p)
                .placements
                .iter()
                .map(move |&s| Placed::new(p, s))
        })
        .collect()
}

/// How useful a GPU's free space is: (largest standard profile's compute slices that still
/// fits, number of standard instances that could be added). Larger is better.
pub(crate) fn free_space_quality(
    model: &GpuModel,
    cands: &[Placed],
    st: &LayoutState,
) -> (u8, usize) {
    let mut largest = 0;
    let mut count = 0;
    for &c in cands {
        if st.fits(model, c) {
            count += 1;
            largest = largest.max(model.profile(c.profile).compute_slices);
        }
    }
    (largest, count)
}

/// The start for a new `p` on a GPU in state `st` that leaves the most useful free space
/// (ties: the lowest start); `None` when `p` fits nowhere.
pub(crate) fn best_start(
    model: &GpuModel,
    cands: &[Placed],
    st: &LayoutState,
    p: ProfileIdx,
) -> Option<u8> {
    let mut best: Option<((u8, usize), u8)> = None;
    for &s in &model.profile(p).placements {
        let placed = Placed::new(p, s);
        if !st.fits(model, placed) {
            continue;
        }
        let mut next = *st;
        next.add(model, placed);
        let q = free_space_quality(model, cands, &next);
        if best.is_none_or(|(bq, _)| q > bq) {
            best = Some((q, s));
        }
    }
    best.map(|(_, s)| s)
}

/// Whether `p` fits a GPU in state `st` at some allowed start.
pub(crate) fn fits_anywhere(model: &GpuModel, st: &LayoutState, p: ProfileIdx) -> bool {
    model
        .profile(p)
        .placements
        .iter()
        .any(|&s| st.fits(model, Placed::new(p, s)))
}

/// Destroy every (free) instance of a GPU, counting one re-partition if any existed.
pub(crate) fn wipe(cluster: &mut Cluster, node: usize, gpu: usize) -> Result<(), OpError> {
    let items: Vec<Placed> = cluster.nodes()[node].gpus[gpu]
        .instances()
        .iter()
        .map(|i| i.placed)
        .collect();
    if !items.is_empty() {
        cluster.note_repartition();
    }
    for p in items {
        cluster.destroy(node, gpu, p)?;
    }
    Ok(())
}

/// Nodes that could host `count` full-GPU instances for a pod: each with the GPUs to use (idle
/// GPUs, those holding a free full instance first, then empty ones, then the rest), ordered
/// best fit first (fewest idle GPUs left over, then node index).
pub(crate) fn gang_candidates(
    cluster: &Cluster,
    full: ProfileIdx,
    pod: &SimPod,
    count: usize,
) -> Vec<(usize, Vec<usize>)> {
    let mut out = Vec::new();
    for (n, node) in cluster.nodes().iter().enumerate() {
        if !node.fits(pod.cpu, pod.mem) {
            continue;
        }
        let mut idle: Vec<(u8, usize)> = node
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| g.is_idle())
            .map(|(i, g)| {
                let rank = if g.instances().iter().any(|x| x.placed.profile == full) {
                    0
                } else if g.instances().is_empty() {
                    1
                } else {
                    2
                };
                (rank, i)
            })
            .collect();
        if idle.len() < count {
            continue;
        }
        idle.sort_unstable();
        out.push((n, idle.into_iter().map(|(_, i)| i).collect::<Vec<_>>()));
    }
    out.sort_by_key(|(n, g)| (g.len() - count, *n));
    out
}

/// Best-fit ranking: (GPU slices left, class, node slices left, node, GPU).
type BestFitKey = (u32, u8, u32, usize, usize);

/// Fixed-layout ranking: (size of a covering instance or 0, its memory, GPU free slices left,
/// node free slices left, node, GPU).
type FixedKey = (u8, u8, u32, u32, usize, usize);

/// A GPU index and an instance on it.
type GpuInstance = (usize, Placed);

/// `best-fit`: fixed slices chosen at arrival by best fit (see the module docs).
#[derive(Debug)]
pub struct BestFit<'m> {
    mapping: Mapping<'m>,
    cands: Vec<Placed>,
}

impl<'m> BestFit<'m> {
    /// The policy for a mapping's model.
    pub fn new(mapping: Mapping<'m>) -> Self {
        let cands = standard_candidates(&mapping);
        BestFit { mapping, cands }
    }

    fn place_one(&self, cluster: &mut Cluster, id: PodId, pod: &SimPod) -> Result<bool, OpError> {
        let Some(d) = pod.demand else {
            return place_cpu_only(cluster, id, pod);
        };
        if d.count > 1 {
            return self.place_gang(cluster, id, pod, d.count as usize);
        }
        let model = cluster.model();
        let p = d.profile;
        let need = u32::from(model.profile(p).compute_slices);
        // (gpu slices left, class, node slices left, node, gpu): class 0 reuses a free instance,
        // 1 creates in free space, 2 wipes a GPU whose instances are all free.
        let mut best: Option<(BestFitKey, Option<Placed>)> = None;
        for (n, node) in cluster.nodes().iter().enumerate() {
            if !node.fits(pod.cpu, pod.mem) {
                continue;
            }
            let node_free = node.free_slices(model);
            for (g, gpu) in node.gpus.iter().enumerate() {
                let gpu_free = u32::from(model.compute_slices) - gpu.busy_slices();
                if gpu_free < need {
                    continue;
                }
                let reuse = gpu
                    .instances()
                    .iter()
                    .find(|i| i.pod.is_none() && i.placed.profile == p)
                    .map(|i| i.placed);
                let class = if reuse.is_some() {
                    0
                } else if fits_anywhere(model, gpu.state(), p) {
                    1
                } else if gpu.is_idle() && fits_anywhere(model, gpu.busy_state(), p) {
                    2
                } else {
                    continue;
                };
                let key = (gpu_free - need, class, node_free - need, n, g);
                if best.as_ref().is_none_or(|(k, _)| key < *k) {
                    best = Some((key, reuse));
                }
            }
        }
        let Some(((_, class, _, n, g), reuse)) = best else {
            return Ok(false);
        };
        let placed = match reuse {
            Some(r) => r,
            None => {
                if class == 2 {
                    wipe(cluster, n, g)?;
                }
                let st = *cluster.nodes()[n].gpus[g].state();
                let s = best_start(model, &self.cands, &st, p).expect("checked above");
                let placed = Placed::new(p, s);
                cluster.create(n, g, placed, false)?;
                placed
            }
        };
        cluster.bind_pod(id, pod, n, vec![(g, placed)])?;
        Ok(true)
    }

    fn place_gang(
        &self,
        cluster: &mut Cluster,
        id: PodId,
        pod: &SimPod,
        count: usize,
    ) -> Result<bool, OpError> {
        let full = self.mapping.full();
        let Some((n, gpus)) = gang_candidates(cluster, full, pod, count)
            .into_iter()
            .next()
        else {
            return Ok(false);
        };
        let mut instances = Vec::with_capacity(count);
        for &g in gpus.iter().take(count) {
            let existing = cluster.nodes()[n].gpus[g]
                .instances()
                .iter()
                .find(|i| i.placed.profile == full)
                .map(|i| i.placed);
            let placed = match existing {
                Some(p) => p,
                None => {
                    wipe(cluster, n, g)?;
                    let p = Placed::new(full, cluster.model().profile(full).placements[0]);
                    cluster.create(n, g, p, false)?;
                    p
                }
            };
            instances.push((g, placed));
        }
        cluster.bind_pod(id, pod, n, instances)?;
        Ok(true)
    }
}

impl Placer for BestFit<'_> {
    fn place(
        &mut self,
        cluster: &mut Cluster,
        pods: &[(PodId, &SimPod)],
    ) -> Result<Vec<bool>, SimError> {
        place_each(PolicyKind::BestFit, cluster, pods, |c, id, pod| {
            self.place_one(c, id, pod)
        })
    }
}

/// `static-mig` and `whole-gpu`: fixed layouts set up once; pods take free instances only.
#[derive(Debug)]
pub struct Fixed<'m> {
    mapping: Mapping<'m>,
    kind: PolicyKind,
}

impl<'m> Fixed<'m> {
    /// `static-mig` with the given per-node, per-GPU layouts; creates them on the cluster.
    pub fn static_mig(
        mapping: Mapping<'m>,
        cluster: &mut Cluster,
        layouts: &[Vec<Vec<Placed>>],
    ) -> Result<Self, SimError> {
        for (n, node) in layouts.iter().enumerate() {
            for (g, items) in node.iter().enumerate() {
                for &p in items {
                    cluster
                        .create(n, g, p, true)
                        .map_err(|source| SimError::Op {
                            policy: PolicyKind::StaticMig,
                            source,
                        })?;
                }
            }
        }
        Ok(Fixed {
            mapping,
            kind: PolicyKind::StaticMig,
        })
    }

    /// `whole-gpu`: every GPU is one full-GPU instance; any GPU pod takes whole GPUs.
    pub fn whole_gpu(mapping: Mapping<'m>, cluster: &mut Cluster) -> Result<Self, SimError> {
        let full = Placed::new(
            mapping.full(),
            mapping.model().profile(mapping.full()).placements[0],
        );
        let shape: Vec<usize> = cluster.nodes().iter().map(|n| n.gpus.len()).collect();
        for (n, gpus) in shape.into_iter().enumerate() {
            for g in 0..gpus {
                cluster
                    .create(n, g, full, true)
                    .map_err(|source| SimError::Op {
                        policy: PolicyKind::WholeGpu,
                        source,
                    })?;
            }
        }
        Ok(Fixed {
            mapping,
            kind: PolicyKind::WholeGpu,
        })
    }

    /// The profile a pod asks for under this policy, and how many.
    fn want(&self, pod: &SimPod) -> Option<(ProfileIdx, usize)> {
        let d = pod.demand?;
        Some(match self.kind {
            PolicyKind::WholeGpu => (self.mapping.full(), d.count as usize),
            _ => (d.profile, d.count as usize),
        })
    }

    fn place_one(&self, cluster: &mut Cluster, id: PodId, pod: &SimPod) -> Result<bool, OpError> {
        let Some((p, count)) = self.want(pod) else {
            return place_cpu_only(cluster, id, pod);
        };
        let model = cluster.model();
        let want = model.profile(p);
        if count > 1 {
            // Several full instances on one node, best fit on free full instances left.
            let mut best: Option<(usize, usize, Vec<GpuInstance>)> = None;
            for (n, node) in cluster.nodes().iter().enumerate() {
                if !node.fits(pod.cpu, pod.mem) {
                    continue;
                }
                let free: Vec<(usize, Placed)> = node
                    .gpus
                    .iter()
                    .enumerate()
                    .flat_map(|(g, gpu)| {
                        gpu.instances()
                            .iter()
                            .filter(|i| i.pod.is_none() && i.placed.profile == p)
                            .map(move |i| (g, i.placed))
                    })
                    .collect();
                if free.len() >= count
                    && best
                        .as_ref()
                        .is_none_or(|(left, _, _)| free.len() - count < *left)
                {
                    best = Some((free.len() - count, n, free[..count].to_vec()));
                }
            }
            return match best {
                Some((_, node, instances)) => {
                    cluster.bind_pod(id, pod, node, instances)?;
                    Ok(true)
                }
                None => Ok(false),
            };
        }
        // One instance: the exact profile, else (static-mig only) the smallest free instance
        // that covers it; best fit on the free compute left on the GPU, then on the node.
        let mut best: Option<(FixedKey, Placed)> = None;
        for (n, node) in cluster.nodes().iter().enumerate() {
            if !node.fits(pod.cpu, pod.mem) {
                continue;
            }
            let node_free: u32 = node
                .gpus
                .iter()
                .flat_map(|g| g.instances())
                .filter(|i| i.pod.is_none())
                .map(|i| u32::from(model.profile(i.placed.profile).compute_slices))
                .sum();
            for (g, gpu) in node.gpus.iter().enumerate() {
                let gpu_free: u32 = gpu
                    .instances()
                    .iter()
                    .filter(|i| i.pod.is_none())
                    .map(|i| u32::from(model.profile(i.placed.profile).compute_slices))
                    .sum();
                for i in gpu.instances().iter().filter(|i| i.pod.is_none()) {
                    let have = model.profile(i.placed.profile);
                    let covers = have.compute_slices >= want.compute_slices
                        && have.memory_slices >= want.memory_slices;
                    if !covers || (i.placed.profile != p && self.kind == PolicyKind::WholeGpu) {
                        continue;
                    }
                    let size = if i.placed.profile == p {
                        (0, 0)
                    } else {
                        (have.compute_slices, have.memory_slices)
                    };
                    let took = u32::from(have.compute_slices);
                    let key = (size.0, size.1, gpu_free - took, node_free - took, n, g);
                    if best.as_ref().is_none_or(|(k, _)| key < *k) {
                        best = Some((key, i.placed));
                    }
                }
            }
        }
        match best {
            Some(((.., n, g), placed)) => {
                cluster.bind_pod(id, pod, n, vec![(g, placed)])?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Placer for Fixed<'_> {
    fn place(
        &mut self,
        cluster: &mut Cluster,
        pods: &[(PodId, &SimPod)],
    ) -> Result<Vec<bool>, SimError> {
        let kind = self.kind;
        place_each(kind, cluster, pods, |c, id, pod| self.place_one(c, id, pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_policies_share_the_planners_names_and_parser() {
        for p in PolicyKind::ALL {
            assert_eq!(p.name().parse::<PolicyKind>(), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
            if let PolicyKind::Planned(q) = p {
                assert_eq!(p.name(), q.as_str());
            }
        }
        // The planner's spellings (case, spaces) hold here too.
        assert_eq!(" Tessera ".parse::<PolicyKind>(), Ok(PolicyKind::TESSERA));
        assert_eq!("NOS".parse::<PolicyKind>(), Ok(PolicyKind::NOS));
    }

    #[test]
    fn planner_policies_the_simulator_does_not_run_are_refused_with_its_choices() {
        for name in ["exact", "first-fit", "firstfit", "bestfit"] {
            let e = name.parse::<PolicyKind>().unwrap_err();
            assert_eq!(e.name, name);
            assert_eq!(e.choices, PolicyKind::ALL.map(PolicyKind::name).to_vec());
            assert_eq!(
                e.to_string(),
                format!(
                    "unknown policy `{name}`; use tessera, nos, best-fit, static-mig, whole-gpu"
                )
            );
        }
    }
}
