//! Expected fragmentation of a node against a workload mix, after Weng et al., "Beware of
//! Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent"
//! (USENIX ATC '23), adapted here to MIG slices.
//!
//! For one *pod type* (a profile, a GPU count, CPU and memory), the unusable part of a node is
//! the free compute slices that a pod of that type could not use:
//!
//! * all of them when the type's CPU or memory does not fit the node;
//! * for a one-GPU type, the free slices of every GPU where its profile fits at no allowed
//!   start (given the GPU's busy instances);
//! * for a multi-GPU type, every free slice outside the idle GPUs, or all of them when fewer
//!   GPUs than it needs are idle.
//!
//! A node's *fragmentation* is that amount averaged over the types, weighted by how often each
//! occurs in the workload. A placement is scored by how much it raises the fragmentation of
//! its node; the `tessera` policy of the simulator picks the lowest rise. Free instances do not
//! count (they can be destroyed), only busy ones.
//!
//! The weights come from the pods of the trace (as the paper's do), not from the order in which
//! a run draws them.

use std::collections::BTreeMap;

use tessera_model::{GpuModel, LayoutState, Placed, ProfileIdx};

use crate::cluster::{Gpu, Node};
use crate::workload::SimPod;

/// Most distinct one-GPU profiles tracked (a model has at most a dozen).
const MAX_PROFILES: usize = 32;

/// One kind of GPU pod of the workload and its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PodType {
    /// Index into [`FragModel::profiles`] for a one-GPU type, `None` for a multi-GPU one.
    profile: Option<usize>,
    count: u32,
    cpu: u64,
    mem: u64,
    weight: f64,
}

/// The workload mix fragmentation is measured against.
#[derive(Debug, Clone)]
pub struct FragModel {
    types: Vec<PodType>,
    /// Distinct profiles of the one-GPU types.
    profiles: Vec<ProfileIdx>,
}

/// What the score needs to know of one GPU: its busy state and free compute slices.
#[derive(Debug, Clone, Copy)]
struct GpuView {
    busy: LayoutState,
    free: u32,
}

/// A node reduced to what the score needs, so that one change can be re-scored cheaply.
#[derive(Debug, Clone)]
struct NodeView {
    cpu_free: u64,
    mem_free: u64,
    free: u32,
    idle: u32,
    /// Per tracked profile: free slices on GPUs where it fits nowhere.
    unusable: [u32; MAX_PROFILES],
}

impl FragModel {
    /// The mix of the GPU pods in `pods`: each distinct (profile, GPU count, CPU, memory) is a
    /// type, weighted by its share of the GPU pods.
    pub fn from_pods(pods: &[SimPod]) -> Self {
        let mut counts: BTreeMap<(u8, u32, u64, u64), u64> = BTreeMap::new();
        for p in pods {
            if let Some(d) = p.demand {
                *counts
                    .entry((d.profile.0, d.count, p.cpu, p.mem))
                    .or_default() += 1;
            }
        }
        let total: u64 = counts.values().sum();
        let mut profiles: Vec<ProfileIdx> = Vec::new();
        let mut types = Vec::with_capacity(counts.len());
        for (&(prof, count, cpu, mem), &n) in &counts {
            let profile = if count == 1 {
                let p = ProfileIdx(prof);
                match profiles.iter().position(|&q| q == p) {
                    Some(k) => Some(k),
                    None if profiles.len() < MAX_PROFILES => {
                        profiles.push(p);
                        Some(profiles.len() - 1)
                    }
                    None => continue,
                }
            } else {
                None
            };
            types.push(PodType {
                profile,
                count,
                cpu,
                mem,
                weight: n as f64 / total as f64,
            });
        }
        FragModel { types, profiles }
    }

    /// Whether the mix has no GPU pod (every score is then 0).
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    fn gpu_view(model: &GpuModel, g: &Gpu) -> GpuView {
        GpuView {
            busy: *g.busy_state(),
            free: u32::from(model.compute_slices) - g.busy_slices(),
        }
    }

    /// Bit `k` set when tracked profile `k` fits the GPU at some start.
    fn fits_mask(&self, model: &GpuModel, busy: &LayoutState) -> u32 {
        let mut m = 0;
        for (k, &p) in self.profiles.iter().enumerate() {
            if model
                .profile(p)
                .placements
                .iter()
                .any(|&s| busy.fits(model, Placed::new(p, s)))
            {
                m |= 1 << k;
            }
        }
        m
    }

    fn view(&self, model: &GpuModel, node: &Node) -> NodeView {
        let c = u32::from(model.compute_slices);
        let mut v = NodeView {
            cpu_free: node.cpu_total - node.cpu_used,
            mem_free: node.mem_total - node.mem_used,
            free: 0,
            idle: 0,
            unusable: [0; MAX_PROFILES],
        };
        for g in &node.gpus {
            let g = Self::gpu_view(model, g);
            v.add_gpu(self, model, &g, c, 1);
        }
        v
    }

    fn score(&self, model: &GpuModel, v: &NodeView) -> f64 {
        let c = u32::from(model.compute_slices);
        let mut f = 0.0;
        for t in &self.types {
            let u = if t.cpu > v.cpu_free || t.mem > v.mem_free {
                v.free
            } else if let Some(k) = t.profile {
                v.unusable[k]
            } else if v.idle >= t.count {
                v.free - v.idle * c
            } else {
                v.free
            };
            f += t.weight * f64::from(u);
        }
        f
    }

    /// The node's fragmentation now.
    pub fn node(&self, model: &GpuModel, node: &Node) -> f64 {
        self.score(model, &self.view(model, node))
    }

    /// For a one-GPU pod of profile `p` taking `cpu` and `mem`: the placements on `node` (GPU
    /// index, start) where `p` fits the GPU's busy instances, each with the rise in the node's
    /// fragmentation it causes. GPUs with the same instances are listed once, by the first.
    pub fn single_options(
        &self,
        model: &GpuModel,
        node: &Node,
        cpu: u64,
        mem: u64,
        p: ProfileIdx,
    ) -> Vec<(f64, usize, u8)> {
        let c = u32::from(model.compute_slices);
        let need = u32::from(model.profile(p).compute_slices);
        let mut out = Vec::new();
        let fits = |g: &Gpu| {
            c - g.busy_slices() >= need
                && model
                    .profile(p)
                    .placements
                    .iter()
                    .any(|&s| g.busy_state().fits(model, Placed::new(p, s)))
        };
        if !node.gpus.iter().any(fits) {
            return out;
        }
        let base = self.view(model, node);
        let before = self.score(model, &base);
        let mut seen: Vec<&[crate::cluster::Instance]> = Vec::new();
        for (gi, g) in node.gpus.iter().enumerate() {
            let gv = Self::gpu_view(model, g);
            if gv.free < need {
                continue;
            }
            // GPUs with the same instances (busy or free) score the same: list the first.
            let same = |s: &&[crate::cluster::Instance]| {
                s.len() == g.instances().len()
                    && s.iter()
                        .zip(g.instances())
                        .all(|(a, b)| a.placed == b.placed && a.pod.is_some() == b.pod.is_some())
            };
            if seen.iter().any(same) {
                continue;
            }
            seen.push(g.instances());
            for &s in &model.profile(p).placements {
                let placed = Placed::new(p, s);
                if !gv.busy.fits(model, placed) {
                    continue;
                }
                let mut after = gv;
                after.busy.add(model, placed);
                after.free -= need;
                let mut v = base.clone();
                v.cpu_free = v.cpu_free.saturating_sub(cpu);
                v.mem_free = v.mem_free.saturating_sub(mem);
                v.add_gpu(self, model, &gv, c, -1);
                v.add_gpu(self, model, &after, c, 1);
                out.push((self.score(model, &v) - before, gi, s));
            }
        }
        out
    }

    /// The rise in the node's fragmentation when a pod takes `cpu`, `mem` and, as busy, the
    /// whole GPUs `gpus` (which must be idle).
    pub fn whole_gpus_rise(
        &self,
        model: &GpuModel,
        node: &Node,
        cpu: u64,
        mem: u64,
        gpus: usize,
    ) -> f64 {
        let c = u32::from(model.compute_slices);
        let base = self.view(model, node);
        let before = self.score(model, &base);
        let mut v = base;
        v.cpu_free = v.cpu_free.saturating_sub(cpu);
        v.mem_free = v.mem_free.saturating_sub(mem);
        let taken = (gpus as u32).min(v.idle);
        v.idle -= taken;
        v.free -= taken * c;
        self.score(model, &v) - before
    }
}

impl NodeView {
    /// Add (`sign` 1) or remove (`sign` -1) one GPU's contribution.
    fn add_gpu(&mut self, f: &FragModel, model: &GpuModel, g: &GpuView, c: u32, sign: i32) {
        let apply = |x: &mut u32, d: u32| {
            if sign > 0 {
                *x += d;
            } else {
                *x -= d;
            }
        };
        apply(&mut self.free, g.free);
        if g.free == c {
            apply(&mut self.idle, 1);
        }
        if g.free == 0 {
            return;
        }
        let fits = f.fits_mask(model, &g.busy);
        for k in 0..f.profiles.len() {
            if fits & (1 << k) == 0 {
                apply(&mut self.unusable[k], g.free);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Binding, Cluster};
    use crate::mapping::Mapping;
    use crate::trace::{TraceNode, TracePod};
    use tessera_model::Catalog;

    fn model() -> &'static GpuModel {
        Catalog::builtin().lookup("a100-80gb").unwrap()
    }

    /// Pods of (cpu milli, num_gpu, gpu_milli).
    fn pods(specs: &[(u64, u32, u32)]) -> Vec<SimPod> {
        let m = Mapping::new(model()).unwrap();
        specs
            .iter()
            .enumerate()
            .map(|(i, &(cpu, n, milli))| {
                SimPod::from_trace(
                    i,
                    &TracePod {
                        name: format!("p{i}"),
                        cpu_milli: cpu,
                        memory_mib: 100,
                        num_gpu: n,
                        gpu_milli: milli,
                        creation_time: 0,
                        deletion_time: 1,
                        gpu_spec: String::new(),
                    },
                    &m,
                )
            })
            .collect()
    }

    fn cluster(cpu: u64, gpus: u32) -> Cluster<'static> {
        Cluster::new(
            model(),
            &[TraceNode {
                name: "n".into(),
                cpu_milli: cpu,
                memory_mib: 1 << 20,
                gpus,
                model: "G".into(),
            }],
        )
    }

    fn busy(c: &mut Cluster, gpu: usize, spec: &str, cpu: u64, pod: u32) {
        let p = model().parse_spec(spec).unwrap();
        c.create(0, gpu, p, false).unwrap();
        let b = Binding {
            node: 0,
            instances: vec![(gpu, p)],
        };
        c.bind(pod, cpu, 100, b).unwrap();
    }

    #[test]
    fn slices_beside_a_busy_4g_are_lost_to_whole_gpu_pods_only() {
        let mut c = cluster(64_000, 1);
        busy(&mut c, 0, "4g.40gb@0", 1000, 0);
        let whole = FragModel::from_pods(&pods(&[(1000, 1, 1000)]));
        let small = FragModel::from_pods(&pods(&[(1000, 1, 320)]));
        let half = FragModel::from_pods(&pods(&[(1000, 1, 1000), (1000, 1, 320)]));
        assert_eq!(whole.node(model(), &c.nodes()[0]), 3.0);
        assert_eq!(small.node(model(), &c.nodes()[0]), 0.0);
        assert_eq!(half.node(model(), &c.nodes()[0]), 1.5);
    }

    #[test]
    fn a_node_without_cpu_for_a_type_loses_all_its_free_slices_to_it() {
        let mut c = cluster(16_000, 2);
        busy(&mut c, 0, "7g.80gb@0", 10_000, 0);
        let mix = FragModel::from_pods(&pods(&[(8000, 1, 1000)]));
        // 6 CPUs left, the pod type needs 8: the idle GPU's 7 slices are stranded.
        assert_eq!(mix.node(model(), &c.nodes()[0]), 7.0);
        // Taking 6 more CPUs on an idle node where the type still fits afterwards costs
        // nothing; taking them where it no longer fits strands the remaining idle GPU.
        let fresh = cluster(16_000, 2);
        assert_eq!(
            mix.whole_gpus_rise(model(), &fresh.nodes()[0], 8000, 0, 1),
            0.0
        );
        assert_eq!(
            mix.whole_gpus_rise(model(), &fresh.nodes()[0], 9000, 0, 1),
            7.0
        );
    }

    #[test]
    fn multi_gpu_types_need_enough_idle_gpus() {
        let mut c = cluster(64_000, 2);
        let mix = FragModel::from_pods(&pods(&[(1000, 2, 1000)]));
        assert_eq!(mix.node(model(), &c.nodes()[0]), 0.0);
        busy(&mut c, 0, "1g.10gb@0", 1000, 0);
        // One idle GPU left: the 2-GPU type can use none of the 13 free slices.
        assert_eq!(mix.node(model(), &c.nodes()[0]), 13.0);
    }

    #[test]
    fn a_small_pod_scores_best_beside_a_busy_4g_and_at_the_start_that_keeps_4g_placeable() {
        let mut c = cluster(64_000, 2);
        busy(&mut c, 0, "4g.40gb@0", 1000, 0);
        let mix = FragModel::from_pods(&pods(&[(1000, 1, 1000), (1000, 1, 470), (1000, 1, 320)]));
        let p = model().profile_named("3g.40gb").unwrap();
        let opts = mix.single_options(model(), &c.nodes()[0], 1000, 100, p);
        let best = opts
            .iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .copied()
            .unwrap();
        // Beside the 4g it fills the GPU (the 3 stranded slices disappear): a fall.
        assert_eq!((best.1, best.2), (0, 4));
        assert!(best.0 < 0.0, "{best:?}");
        // On the empty GPU, start 4 (4g still fits beside it) beats start 0.
        let empty: Vec<_> = opts.iter().filter(|o| o.1 == 1).collect();
        let at = |s: u8| empty.iter().find(|o| o.2 == s).unwrap().0;
        assert!(at(4) < at(0), "{empty:?}");
        // Beside the busy 4g, start 4 is the only one left.
        assert_eq!(opts.iter().filter(|o| o.1 == 0).count(), 1);
    }
}
