//! `tessera` and `nos`: the planner decides the layouts and the placement.
//!
//! Each pod is planned on its own, when it arrives (saturate) or is tried from the queue
//! (replay), as one MIG request for its mapped profile.
//!
//! **What the planner sees.** The planner knows GPUs, not CPU or memory, so the simulator
//! passes it only the nodes that could serve the pod: those where the pod's CPU and memory fit
//! and where at least one GPU could take the profile once its free instances are gone (the
//! planner never touches busy ones). Nodes in the same state (every GPU with the same
//! instances, busy or free) are interchangeable to the planner, so each state is passed once,
//! as one node of the typed problem ([`tessera_planner::plan_typed`]) in the order of its first
//! appearance in the cluster, which is the order nos walks nodes. This keeps each call small (a few dozen to a few hundred nodes instead
//! of 1,213) without changing what either algorithm can choose: on the full trace, passing
//! every eligible node instead (`SimContext::planner_ungrouped`) gives the same results for one
//! seed and is 4–9× slower, and a property test checks that placements are identical on
//! random small traces. Leaving out the nodes the pod cannot use also spares `nos` one of its
//! known weaknesses (counting free devices on nodes the pod cannot use), which only favours
//! the baseline.
//!
//! **`tessera` chooses the node first.** With a workload mix
//! ([`Planned::with_fragmentation`], which [`crate::SimContext::placer`] always sets for
//! `tessera`), the node is chosen by the planner's own order of objectives — fewest operations
//! (reuse a free instance, else create in free space, else destroy free instances) — and then by
//! the least rise in expected fragmentation ([`crate::frag`]), which also sees CPU and memory;
//! the planner then gets that one node and plans its GPUs.
//!
//! **Binding.** The planner's grant gives a state (its node index) and a GPU index; the pod goes to that
//! GPU of the first node (in cluster order) in that state. The plan's destroys and creates for
//! that GPU are applied, each checked against the current state (destroying a busy instance is
//! refused and counted), and the GPU's new layout must equal the plan's. Changes the plan
//! makes to GPUs that get no pod are not applied, since with one request they serve nothing;
//! they are counted in [`Planned::unapplied_changes`] and checked all the same: a busy
//! instance they would destroy counts in `busy_destroyed`.
//!
//! **Multi-GPU pods.** The planner has no gang requests, so the simulator picks the node (for
//! `nos` the first by name, for `tessera` the least rise in expected fragmentation, then best
//! fit: the fewest idle GPUs left) among those with
//! room for the CPU, the memory and enough idle GPUs, and asks the planner for `num_gpu`
//! full-GPU instances on that node alone, one request at a time, each call seeing the
//! instances already taken as used (one call with `num_gpu` separate requests would trip nos's
//! rule of checking each request alone against the same free devices, which a real
//! `num_gpu`-device pod does not). The next node is tried if one request cannot be served; the
//! instances created for the failed attempt stay, free.

use std::collections::HashMap;

use tessera_model::{GpuModel, Placed, ProfileIdx};
use tessera_planner::typed::{self, Ask, GpuOutcome, Instance, Outcome, RequestId, Sharing, Slice};
use tessera_planner::{plan_typed, PlanError, PlanOptions, Policy};

use crate::cluster::{Cluster, Node, OpError, PodId};
use crate::frag::FragModel;
use crate::mapping::Mapping;
use crate::policy::{
    fits_anywhere, gang_candidates, place_cpu_only, Placer, PlannerStats, PolicyKind, SimError,
};
use crate::workload::SimPod;

/// Most nodes tried for one multi-GPU pod.
const GANG_TRIES: usize = 16;

/// A planner-driven policy.
#[derive(Debug)]
pub struct Planned<'m> {
    mapping: Mapping<'m>,
    /// Planner options; `opts.policy` is this placer's planner policy.
    opts: PlanOptions,
    /// Changes planned for GPUs that got no pod, not applied.
    pub unapplied_changes: u64,
    /// Planner calls made.
    pub calls: u64,
    /// Whether nodes in the same state are passed to the planner once (see the module docs).
    group: bool,
    /// `tessera` only: the workload mix that node choice keeps the fragmentation low for.
    frag: Option<FragModel>,
    /// `tessera` only: each node's best choice per pod type while the node stays unchanged
    /// (unused when `group` is off, which scores every node afresh).
    choices: ChoiceCache,
}

/// How a node ranks for a one-GPU pod, lowest first: (operations, fragmentation rise in
/// billionths, free compute left on the GPU, on the node).
type ChoiceKey = (u8, i64, u32, u32);

/// Each node's best [`ChoiceKey`] per pod type (profile, CPU, memory), kept while the node's
/// [`Node::changes`] stays the same. One row per type, one entry per node, so that choosing a
/// node for a pod reads one row in order.
#[derive(Debug, Default)]
struct ChoiceCache {
    types: HashMap<(ProfileIdx, u64, u64), usize>,
    /// `rows[type][node]`: (the node's changes + 1 when computed, 0 for never; the key).
    rows: Vec<Vec<(u64, Option<ChoiceKey>)>>,
}

/// A node's state as a comparable key: per GPU, (start, profile, busy) of each instance packed
/// in a `u16`, then a separator.
type StateKey = Vec<u16>;

impl<'m> Planned<'m> {
    /// Plans under the planner's `policy` (the simulator runs `tessera` and `nos`).
    pub fn new(mapping: Mapping<'m>, policy: Policy) -> Self {
        let opts = PlanOptions {
            policy,
            ..PlanOptions::default()
        };
        Planned {
            mapping,
            opts,
            unapplied_changes: 0,
            calls: 0,
            group: true,
            frag: None,
            choices: ChoiceCache::default(),
        }
    }

    /// Choose the node by the least rise in expected fragmentation against `mix` (see
    /// [`crate::frag`]); the planner then plans that node alone.
    pub fn with_fragmentation(mut self, mix: FragModel) -> Self {
        self.frag = Some(mix);
        self
    }

    /// Pass every eligible node to the planner, not one per state, and score every node
    /// afresh for every pod (slower; gives the same placements, which is how the grouping and
    /// the per-node cache of the `tessera` node choice are checked).
    pub fn ungrouped(mut self) -> Self {
        self.group = false;
        self
    }

    fn op_err(&self, source: OpError) -> SimError {
        SimError::Op {
            policy: PolicyKind::Planned(self.opts.policy),
            source,
        }
    }

    fn planner_err(&self, source: PlanError) -> SimError {
        SimError::Planner {
            policy: PolicyKind::Planned(self.opts.policy),
            source,
        }
    }

    fn unexpected(&self, problem: String) -> SimError {
        SimError::UnexpectedPlan {
            policy: PolicyKind::Planned(self.opts.policy),
            problem,
        }
    }

    /// The real GPU (n, g) as the planner sees it; instances in `taken` count as busy.
    fn gpu_input(&self, cluster: &Cluster, n: usize, g: usize, taken: &[Placed]) -> typed::Gpu<'m> {
        let instances = cluster.nodes()[n].gpus[g]
            .instances()
            .iter()
            .map(|i| Instance {
                placed: i.placed,
                busy: i.pod.is_some() || taken.contains(&i.placed),
            })
            .collect();
        typed::Gpu {
            model: self.mapping.model(),
            sharing: Sharing::mig(instances),
        }
    }

    fn call(&mut self, problem: &typed::Problem<'m>) -> Result<Outcome<'m>, SimError> {
        self.calls += 1;
        plan_typed(problem, &self.opts).map_err(|e| self.planner_err(e))
    }

    /// Busy instances of the real GPU (n, g) that a GPU plan would destroy, either by listing
    /// them in `destroy` or by leaving them out of the new `layout`. `reserved` instances count
    /// as busy too (taken by an earlier request of the same pod).
    fn busy_violations(
        &self,
        cluster: &Cluster,
        n: usize,
        g: usize,
        gp: &GpuOutcome<'_>,
        reserved: &[Placed],
    ) -> u64 {
        cluster.nodes()[n].gpus[g]
            .instances()
            .iter()
            .filter(|i| i.pod.is_some() || reserved.contains(&i.placed))
            .filter(|i| gp.destroy.contains(&i.placed) || !gp.layout.contains(&i.placed))
            .count() as u64
    }

    /// Changes a plan makes to GPUs other than `applied` (plan node index, GPU index) are not
    /// applied, since with one request they serve nothing: count them in `unapplied_changes`,
    /// and count in `busy_destroyed` every busy instance they would destroy (every plan is
    /// checked). `node_of` maps a plan node index to a cluster node index.
    fn skip_unapplied(
        &mut self,
        cluster: &mut Cluster,
        plan: &Outcome<'_>,
        applied: Option<(usize, usize)>,
        node_of: impl Fn(usize) -> Option<usize>,
    ) {
        for gp in plan
            .gpus
            .iter()
            .filter(|x| x.changed() && applied != Some((x.node, x.gpu)))
        {
            self.unapplied_changes += 1;
            if let Some(n) = node_of(gp.node) {
                let v = self.busy_violations(cluster, n, gp.gpu, gp, &[]);
                cluster.counters.busy_destroyed += v;
            }
        }
    }

    /// Apply one GPU's plan to the real GPU (n, g). Returns false when the plan would destroy a
    /// busy (or `reserved`) instance: that is counted in `busy_destroyed` and nothing is applied.
    fn apply(
        &self,
        cluster: &mut Cluster,
        n: usize,
        g: usize,
        gp: &GpuOutcome<'_>,
        reserved: &[Placed],
    ) -> Result<bool, SimError> {
        let v = self.busy_violations(cluster, n, g, gp, reserved);
        if v > 0 {
            cluster.counters.busy_destroyed += v;
            return Ok(false);
        }
        if !gp.destroy.is_empty() {
            cluster.note_repartition();
        }
        for &p in &gp.destroy {
            cluster.destroy(n, g, p).map_err(|e| self.op_err(e))?;
        }
        for &p in &gp.create {
            cluster.create(n, g, p, false).map_err(|e| self.op_err(e))?;
        }
        let mut now: Vec<Placed> = cluster.nodes()[n].gpus[g]
            .instances()
            .iter()
            .map(|i| i.placed)
            .collect();
        now.sort();
        let mut layout = gp.layout.clone();
        layout.sort();
        if now != layout {
            let m = self.mapping.model();
            let text = |v: &[Placed]| v.iter().map(|&p| m.spec(p)).collect::<Vec<_>>().join(" ");
            return Err(self.unexpected(format!(
                "node {n} GPU {g}: applying the plan gives [{}], the plan says [{}]",
                text(&now),
                text(&layout)
            )));
        }
        Ok(true)
    }

    fn place_single(
        &mut self,
        cluster: &mut Cluster,
        id: PodId,
        pod: &SimPod,
        p: ProfileIdx,
    ) -> Result<bool, SimError> {
        let model = self.mapping.model();
        // Eligible nodes grouped by state, in order of first appearance.
        let mut classes: Vec<Vec<usize>> = Vec::new();
        let mut index: HashMap<StateKey, usize> = HashMap::new();
        let cache = self.group.then_some(&mut self.choices);
        let chosen = match &self.frag {
            Some(f) => match least_fragmenting_node(f, cache, model, cluster, pod, p) {
                Some(n) => Some(n),
                None => return Ok(false),
            },
            None => None,
        };
        for (n, node) in cluster.nodes().iter().enumerate() {
            if chosen.is_some_and(|c| c != n) {
                continue;
            }
            if !node.fits(pod.cpu, pod.mem)
                || !node
                    .gpus
                    .iter()
                    .any(|g| fits_anywhere(model, g.busy_state(), p))
            {
                continue;
            }
            let mut key: StateKey = Vec::with_capacity(node.gpus.len() * 4);
            for gpu in &node.gpus {
                key.extend(gpu.instances().iter().map(|i| {
                    u16::from(i.placed.start) << 8
                        | u16::from(i.placed.profile.0) << 1
                        | u16::from(i.pod.is_some())
                }));
                key.push(u16::MAX);
            }
            if !self.group {
                classes.push(vec![n]);
                continue;
            }
            let c = *index.entry(key).or_insert_with(|| {
                classes.push(Vec::new());
                classes.len() - 1
            });
            classes[c].push(n);
        }
        if classes.is_empty() {
            return Ok(false);
        }
        let problem = typed::Problem {
            nodes: classes
                .iter()
                .map(|members| typed::Node {
                    gpus: (0..cluster.nodes()[members[0]].gpus.len())
                        .map(|g| self.gpu_input(cluster, members[0], g, &[]))
                        .collect(),
                })
                .collect(),
            requests: vec![typed::Request {
                id: RequestId(0),
                ask: Ask::Mig { model, profile: p },
                priority: 1,
            }],
        };
        let plan = self.call(&problem)?;
        // Plan node `c` stands for the first cluster node of class `c`.
        let node_of = |c: usize| -> Option<usize> { Some(classes.get(c)?[0]) };
        let Some(a) = plan.grants.first() else {
            self.skip_unapplied(cluster, &plan, None, node_of);
            return Ok(false);
        };
        let Slice::Mig(placed) = a.slice else {
            return Err(self.unexpected("a MIG request got a non-MIG slice".into()));
        };
        // Nodes of one class are interchangeable: take the first in cluster order.
        let (n, g) = (classes[a.node][0], a.gpu);
        let gp = plan
            .gpus
            .iter()
            .find(|x| x.node == a.node && x.gpu == g)
            .ok_or_else(|| {
                self.unexpected(format!("the plan has no GPU {g} on node {}", a.node))
            })?;
        self.skip_unapplied(cluster, &plan, Some((a.node, g)), node_of);
        if !self.apply(cluster, n, g, gp, &[])? {
            return Ok(false);
        }
        cluster
            .bind_pod(id, pod, n, vec![(g, placed)])
            .map_err(|e| self.op_err(e))?;
        Ok(true)
    }

    fn place_gang(
        &mut self,
        cluster: &mut Cluster,
        id: PodId,
        pod: &SimPod,
        count: usize,
    ) -> Result<bool, SimError> {
        let full = self.mapping.full();
        let model = self.mapping.model();
        let mut cands = gang_candidates(cluster, full, pod, count);
        if self.opts.policy == Policy::Nos {
            cands.sort_by_key(|(n, _)| *n);
        } else if let Some(f) = &self.frag {
            // Least rise in fragmentation first; the sort is stable, so ties keep best fit.
            let model = self.mapping.model();
            cands.sort_by_cached_key(|(n, _)| {
                let rise = f.whole_gpus_rise(model, &cluster.nodes()[*n], pod.cpu, pod.mem, count);
                (rise * 1e9).round() as i64
            });
        }
        'node: for (n, _) in cands.into_iter().take(GANG_TRIES) {
            // One full-GPU request at a time, each seeing the instances already taken.
            let mut taken: Vec<(usize, Placed)> = Vec::with_capacity(count);
            for k in 0..count {
                let reserved_on = |g: usize| -> Vec<Placed> {
                    taken
                        .iter()
                        .filter(|(t, _)| *t == g)
                        .map(|&(_, p)| p)
                        .collect()
                };
                let problem = typed::Problem {
                    nodes: vec![typed::Node {
                        gpus: (0..cluster.nodes()[n].gpus.len())
                            .map(|g| self.gpu_input(cluster, n, g, &reserved_on(g)))
                            .collect(),
                    }],
                    requests: vec![typed::Request {
                        id: RequestId(k as u64),
                        ask: Ask::Mig {
                            model,
                            profile: full,
                        },
                        priority: 1,
                    }],
                };
                let plan = self.call(&problem)?;
                let Some(a) = plan.grants.first() else {
                    self.skip_unapplied(cluster, &plan, None, |_| Some(n));
                    continue 'node;
                };
                let Slice::Mig(placed) = a.slice else {
                    return Err(self.unexpected("a MIG request got a non-MIG slice".into()));
                };
                let gp = plan
                    .gpus
                    .iter()
                    .find(|x| x.gpu == a.gpu)
                    .ok_or_else(|| self.unexpected(format!("the plan has no GPU {}", a.gpu)))?;
                self.skip_unapplied(cluster, &plan, Some((a.node, a.gpu)), |_| Some(n));
                // An instance taken by an earlier request is marked used, so the planner
                // cannot destroy it; `apply` refuses (and counts) it if it tried.
                let reserved: Vec<Placed> = taken
                    .iter()
                    .filter(|(g, _)| *g == a.gpu)
                    .map(|&(_, p)| p)
                    .collect();
                if !self.apply(cluster, n, a.gpu, gp, &reserved)? {
                    continue 'node;
                }
                taken.push((a.gpu, placed));
            }
            cluster
                .bind_pod(id, pod, n, taken)
                .map_err(|e| self.op_err(e))?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The node for a one-GPU pod of profile `p`, in the planner's order of objectives: fewest
/// operations first (a free instance of `p` is reused before one is created in free space, and
/// that before free instances are destroyed), then the least rise in expected fragmentation,
/// then the least free compute left on the GPU, then on the node, then the lowest node index.
/// With a `cache`, a node's key is computed once per pod type between changes to the node.
fn least_fragmenting_node(
    frag: &FragModel,
    cache: Option<&mut ChoiceCache>,
    model: &GpuModel,
    cluster: &Cluster,
    pod: &SimPod,
    p: ProfileIdx,
) -> Option<usize> {
    let mut row = cache.map(|c| {
        let next = c.types.len();
        let t = *c.types.entry((p, pod.cpu, pod.mem)).or_insert(next);
        if t == c.rows.len() {
            c.rows.push(Vec::new());
        }
        let row = &mut c.rows[t];
        row.resize(cluster.nodes().len(), (0, None));
        row
    });
    let mut best: Option<(ChoiceKey, usize)> = None;
    for (n, node) in cluster.nodes().iter().enumerate() {
        let key = match row.as_deref_mut() {
            Some(row) => {
                let stamp = node.changes() + 1;
                if row[n].0 != stamp {
                    row[n] = (stamp, node_choice(frag, model, node, pod, p));
                }
                row[n].1
            }
            None => node_choice(frag, model, node, pod, p),
        };
        if let Some(key) = key {
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, n));
            }
        }
    }
    best.map(|(_, n)| n)
}

/// The best [`ChoiceKey`] of one node for a one-GPU pod of profile `p`; `None` when the pod
/// cannot go there.
fn node_choice(
    frag: &FragModel,
    model: &GpuModel,
    node: &Node,
    pod: &SimPod,
    p: ProfileIdx,
) -> Option<ChoiceKey> {
    let c = u32::from(model.compute_slices);
    let need = u32::from(model.profile(p).compute_slices);
    let free = node.free_slices(model);
    if !node.fits(pod.cpu, pod.mem) || free < need {
        return None;
    }
    let node_left = free - need;
    let mut best: Option<ChoiceKey> = None;
    for (rise, g, s) in frag.single_options(model, node, pod.cpu, pod.mem, p) {
        let gpu = &node.gpus[g];
        let placed = Placed::new(p, s);
        let ops = if gpu.find(placed).is_some_and(|i| i.pod.is_none()) {
            0
        } else if gpu.state().fits(model, placed) {
            1
        } else {
            2
        };
        let gpu_left = c - gpu.busy_slices() - need;
        let key = (ops, (rise * 1e9).round() as i64, gpu_left, node_left);
        if best.is_none_or(|k| key < k) {
            best = Some(key);
        }
    }
    best
}

impl Placer for Planned<'_> {
    fn place(
        &mut self,
        cluster: &mut Cluster,
        pods: &[(PodId, &SimPod)],
    ) -> Result<Vec<bool>, SimError> {
        let mut out = Vec::with_capacity(pods.len());
        for &(id, pod) in pods {
            let ok = match pod.demand {
                None => place_cpu_only(cluster, id, pod).map_err(|e| self.op_err(e))?,
                Some(d) if d.count > 1 => self.place_gang(cluster, id, pod, d.count as usize)?,
                Some(d) => self.place_single(cluster, id, pod, d.profile)?,
            };
            out.push(ok);
        }
        Ok(out)
    }

    fn planner_stats(&self) -> PlannerStats {
        PlannerStats {
            calls: self.calls,
            unapplied_changes: self.unapplied_changes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceNode;
    use tessera_model::Catalog;
    use tessera_planner::GpuMode;

    fn iref(profile: &str, start: u8) -> Placed {
        Catalog::builtin()
            .lookup("a100-80gb")
            .unwrap()
            .parse_spec(&format!("{profile}@{start}"))
            .unwrap()
    }

    fn gpu_plan(
        layout: Vec<Placed>,
        create: Vec<Placed>,
        destroy: Vec<Placed>,
    ) -> GpuOutcome<'static> {
        GpuOutcome {
            node: 0,
            gpu: 0,
            model: Catalog::builtin().lookup("a100-80gb").unwrap(),
            mode: GpuMode::Mig,
            layout,
            create,
            destroy,
        }
    }

    /// An A100 80GB model and a cluster of one node with one such GPU.
    fn one_gpu() -> (&'static GpuModel, Cluster<'static>) {
        let model = Catalog::builtin().lookup("a100-80gb").unwrap();
        let nodes = [TraceNode {
            name: "n".into(),
            cpu_milli: 1000,
            memory_mib: 1000,
            gpus: 1,
            model: "G2".into(),
        }];
        (model, Cluster::new(model, &nodes))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// After any sequence of creates, destroys, binds and releases, the cached node choice
        /// equals the one scored afresh, for every pod type.
        #[test]
        fn the_cached_node_choice_equals_scoring_afresh(
            steps in proptest::collection::vec((0u8..4, 0usize..3, 0usize..2, 0usize..64), 1..48)
        ) {
            let model = Catalog::builtin().lookup("a100-80gb").unwrap();
            let nodes: Vec<TraceNode> = (0..3)
                .map(|i| TraceNode {
                    name: format!("n{i}"),
                    cpu_milli: 4000,
                    memory_mib: 4000,
                    gpus: 2,
                    model: "G2".into(),
                })
                .collect();
            let mut cluster = Cluster::new(model, &nodes);
            let mapping = Mapping::new(model).unwrap();
            let types: Vec<SimPod> = [(1000, 100), (3000, 320), (1000, 470), (2000, 100)]
                .iter()
                .map(|&(cpu, milli)| SimPod {
                    cpu,
                    mem: 1000,
                    demand: mapping.demand(1, milli),
                    ..SimPod::default()
                })
                .collect();
            let frag = FragModel::from_pods(&types);
            let cands = model.candidates();
            let mut cache = ChoiceCache::default();
            let mut bound: Vec<(PodId, u64)> = Vec::new();
            for (k, &(op, n, g, pick)) in steps.iter().enumerate() {
                // Refused operations are part of the sequence too; their errors do not matter.
                match op {
                    0 => {
                        let _ = cluster.create(n, g, cands[pick % cands.len()], false);
                    }
                    1 => {
                        let inst = cluster.nodes()[n].gpus[g].instances().first().copied();
                        if let Some(i) = inst {
                            let _ = cluster.destroy(n, g, i.placed);
                        }
                    }
                    2 => {
                        let free = cluster.nodes()[n].gpus[g].instances().iter().find(|i| i.pod.is_none()).copied();
                        if let Some(i) = free {
                            let pod = SimPod { cpu: 500 * (1 + pick as u64 % 4), mem: 100, ..SimPod::default() };
                            if cluster.bind_pod(k as PodId, &pod, n, vec![(g, i.placed)]).is_ok() {
                                bound.push((k as PodId, pod.cpu));
                            }
                        }
                    }
                    _ => {
                        if !bound.is_empty() {
                            let (id, cpu) = bound.remove(pick % bound.len());
                            cluster.release(id, cpu, 100);
                        }
                    }
                }
                for pod in &types {
                    let p = pod.demand.unwrap().profile;
                    let cached = least_fragmenting_node(&frag, Some(&mut cache), model, &cluster, pod, p);
                    let fresh = least_fragmenting_node(&frag, None, model, &cluster, pod, p);
                    proptest::prop_assert_eq!(cached, fresh, "step {}", k);
                }
            }
        }
    }

    #[test]
    fn a_plan_that_would_destroy_busy_work_is_refused_and_counted() {
        let (model, mut cluster) = one_gpu();
        let busy = model.parse_spec("4g.40gb@0").unwrap();
        let free = model.parse_spec("3g.40gb@4").unwrap();
        cluster.create(0, 0, busy, false).unwrap();
        cluster.create(0, 0, free, false).unwrap();
        let pod = SimPod {
            cpu: 10,
            mem: 10,
            ..SimPod::default()
        };
        cluster.bind_pod(1, &pod, 0, vec![(0, busy)]).unwrap();
        let planned = Planned::new(Mapping::new(model).unwrap(), Policy::Tessera);

        // Destroying the busy instance outright.
        let gp = gpu_plan(
            vec![iref("7g.80gb", 0)],
            vec![iref("7g.80gb", 0)],
            vec![iref("4g.40gb", 0), iref("3g.40gb", 4)],
        );
        assert!(!planned.apply(&mut cluster, 0, 0, &gp, &[]).unwrap());
        assert_eq!(cluster.counters.busy_destroyed, 1);
        // Leaving it out of the new layout without saying so.
        let gp = gpu_plan(vec![iref("3g.40gb", 4)], vec![], vec![]);
        assert!(!planned.apply(&mut cluster, 0, 0, &gp, &[]).unwrap());
        assert_eq!(cluster.counters.busy_destroyed, 2);
        // Destroying an instance reserved for the same pod.
        let gp = gpu_plan(
            vec![iref("4g.40gb", 0), iref("2g.20gb", 4)],
            vec![iref("2g.20gb", 4)],
            vec![iref("3g.40gb", 4)],
        );
        assert!(!planned.apply(&mut cluster, 0, 0, &gp, &[free]).unwrap());
        assert_eq!(cluster.counters.busy_destroyed, 3);
        // Nothing was changed by the refused plans.
        assert_eq!(cluster.nodes()[0].gpus[0].instances().len(), 2);
        // The same change without the reservation is a valid re-partition of free space.
        assert!(planned.apply(&mut cluster, 0, 0, &gp, &[]).unwrap());
        assert_eq!(cluster.counters.busy_destroyed, 3);
        assert_eq!(
            (cluster.counters.destroys, cluster.counters.repartitions),
            (1, 1)
        );
        cluster.check().unwrap();
    }

    #[test]
    fn a_plan_whose_layout_disagrees_with_its_operations_is_an_error() {
        let (model, mut cluster) = one_gpu();
        let planned = Planned::new(Mapping::new(model).unwrap(), Policy::Nos);
        let gp = gpu_plan(vec![iref("3g.40gb", 0)], vec![iref("3g.40gb", 4)], vec![]);
        let e = planned
            .apply(&mut cluster, 0, 0, &gp, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("3g.40gb@4") && e.contains("3g.40gb@0"), "{e}");
    }
}
