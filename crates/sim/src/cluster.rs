//! The simulated cluster: nodes with CPU and memory, GPUs of one MIG model holding instances,
//! and the pods bound to them.
//!
//! Every change goes through four checked operations: [`Cluster::create`], [`Cluster::destroy`],
//! [`Cluster::bind`] and [`Cluster::release`]. `destroy` refuses an instance that holds a pod and
//! counts the attempt in [`Counters::busy_destroyed`]: that counter is how the simulator proves
//! that no policy ever destroys busy work.

use serde::Serialize;
use tessera_model::{GpuModel, LayoutState, Placed, Violation};

use crate::trace::TraceNode;
use crate::workload::SimPod;

/// Index of a pod in the simulation's arrival sequence.
pub type PodId = u32;

/// One GPU instance and the pod it holds, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Profile and placement.
    pub placed: Placed,
    /// The pod using it.
    pub pod: Option<PodId>,
}

/// One GPU: its instances, sorted by placement.
#[derive(Debug, Clone, Default)]
pub struct Gpu {
    instances: Vec<Instance>,
    /// Rule state of every instance (busy or free).
    all: LayoutState,
    /// Rule state of the busy instances only.
    busy: LayoutState,
    busy_count: u32,
    busy_slices: u32,
}

impl Gpu {
    /// The instances, sorted by (start, profile).
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Rule state of all instances.
    pub fn state(&self) -> &LayoutState {
        &self.all
    }

    /// Rule state of the busy instances (what remains if every free instance is destroyed).
    pub fn busy_state(&self) -> &LayoutState {
        &self.busy
    }

    /// Number of busy instances.
    pub fn busy_count(&self) -> u32 {
        self.busy_count
    }

    /// Compute slices of busy instances.
    pub fn busy_slices(&self) -> u32 {
        self.busy_slices
    }

    /// Whether no instance holds a pod.
    pub fn is_idle(&self) -> bool {
        self.busy_count == 0
    }

    /// The instance at exactly this placement.
    pub fn find(&self, p: Placed) -> Option<&Instance> {
        self.instances.iter().find(|i| i.placed == p)
    }

    fn recompute(&mut self, model: &GpuModel) {
        self.instances.sort_by_key(|i| i.placed);
        let all: Vec<Placed> = self.instances.iter().map(|i| i.placed).collect();
        self.all = LayoutState::of(model, &all);
        let busy: Vec<Placed> = self
            .instances
            .iter()
            .filter(|i| i.pod.is_some())
            .map(|i| i.placed)
            .collect();
        self.busy = LayoutState::of(model, &busy);
        self.busy_count = busy.len() as u32;
        self.busy_slices = busy
            .iter()
            .map(|p| u32::from(model.profile(p.profile).compute_slices))
            .sum();
    }
}

/// One node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name from the trace.
    pub name: String,
    /// CPU capacity (milli-CPU).
    pub cpu_total: u64,
    /// Memory capacity (MiB).
    pub mem_total: u64,
    /// CPU requested by bound pods.
    pub cpu_used: u64,
    /// Memory requested by bound pods.
    pub mem_used: u64,
    /// The GPUs, in index order.
    pub gpus: Vec<Gpu>,
    /// Bumped by every operation on the node (see [`Node::changes`]).
    changes: u64,
}

impl Node {
    /// How many operations have changed the node (or been tried on it); what is computed from
    /// the node can be kept while this stays the same.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Whether a pod's CPU and memory fit next to what is bound.
    pub fn fits(&self, cpu: u64, mem: u64) -> bool {
        self.cpu_used + cpu <= self.cpu_total && self.mem_used + mem <= self.mem_total
    }

    /// Compute slices not held by busy instances, over all GPUs.
    pub fn free_slices(&self, model: &GpuModel) -> u32 {
        self.gpus
            .iter()
            .map(|g| u32::from(model.compute_slices) - g.busy_slices())
            .sum()
    }
}

/// Where a pod runs: a node and one instance per GPU it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Node index.
    pub node: usize,
    /// (GPU index, instance) pairs; empty for a CPU-only pod.
    pub instances: Vec<(usize, Placed)>,
}

/// Operation counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Instances created (after the initial layout).
    pub creates: u64,
    /// Instances destroyed (free ones).
    pub destroys: u64,
    /// Times a GPU lost at least one instance to make room for another layout.
    pub repartitions: u64,
    /// Attempts to destroy an instance that held a pod (refused; must stay 0).
    pub busy_destroyed: u64,
}

/// A broken structural invariant of the cluster, found by [`Cluster::check`] (a simulator bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// A node's pods use more CPU or memory than it has.
    #[error("node {node} is over its CPU or memory")]
    OverCapacity {
        /// Node index.
        node: usize,
    },
    /// A GPU's instances break a layout rule.
    #[error("node {node} GPU {gpu}: {violation}")]
    Layout {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
        /// The first broken rule.
        #[source]
        violation: Violation,
    },
    /// An instance names a pod whose binding does not hold it.
    #[error("node {node} GPU {gpu}: pod {pod} is not bound there")]
    Unbound {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
        /// The pod.
        pod: PodId,
    },
}

/// Why a checked operation was refused (a policy bug, never expected in a correct run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The node or GPU index does not exist.
    #[error("node {node} GPU {gpu} does not exist")]
    NoSuchGpu {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
    },
    /// The instance would break a layout rule.
    #[error("{instance} does not fit on node {node} GPU {gpu}")]
    DoesNotFit {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
        /// `PROFILE@START`.
        instance: String,
    },
    /// No such instance.
    #[error("node {node} GPU {gpu} has no instance {instance}")]
    NoSuchInstance {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
        /// `PROFILE@START`.
        instance: String,
    },
    /// The instance holds a pod.
    #[error("{instance} on node {node} GPU {gpu} holds pod {pod}")]
    Busy {
        /// Node index.
        node: usize,
        /// GPU index.
        gpu: usize,
        /// `PROFILE@START`.
        instance: String,
        /// The pod.
        pod: PodId,
    },
    /// The pod's CPU or memory does not fit the node.
    #[error("pod {pod} does not fit node {node}'s free CPU or memory")]
    NoRoom {
        /// The pod.
        pod: PodId,
        /// Node index.
        node: usize,
    },
}

/// The cluster state.
#[derive(Debug, Clone)]
pub struct Cluster<'m> {
    model: &'m GpuModel,
    /// The nodes, in trace order (read-only outside this module, so that every change goes
    /// through the checked operations and bumps [`Node::changes`]).
    nodes: Vec<Node>,
    /// Operation counters.
    pub counters: Counters,
    bindings: Vec<Option<Binding>>,
}

impl<'m> Cluster<'m> {
    /// An empty cluster (no instances) with the trace's nodes, every GPU being `model`.
    pub fn new(model: &'m GpuModel, nodes: &[TraceNode]) -> Self {
        Cluster {
            model,
            nodes: nodes
                .iter()
                .map(|n| Node {
                    name: n.name.clone(),
                    cpu_total: n.cpu_milli,
                    mem_total: n.memory_mib,
                    cpu_used: 0,
                    mem_used: 0,
                    gpus: vec![Gpu::default(); n.gpus as usize],
                    changes: 0,
                })
                .collect(),
            counters: Counters::default(),
            bindings: Vec::new(),
        }
    }

    /// The nodes, in trace order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The GPU model of every GPU.
    pub fn model(&self) -> &'m GpuModel {
        self.model
    }

    /// Number of GPUs.
    pub fn gpu_count(&self) -> u64 {
        self.nodes.iter().map(|n| n.gpus.len() as u64).sum()
    }

    /// Compute slices of the whole cluster.
    pub fn capacity_slices(&self) -> u64 {
        self.gpu_count() * u64::from(self.model.compute_slices)
    }

    /// Where a pod runs, if it is bound.
    pub fn binding(&self, pod: PodId) -> Option<&Binding> {
        self.bindings.get(pod as usize).and_then(|b| b.as_ref())
    }

    fn gpu_mut(&mut self, node: usize, gpu: usize) -> Result<&mut Gpu, OpError> {
        self.nodes
            .get_mut(node)
            .and_then(|n| {
                n.changes += 1;
                n.gpus.get_mut(gpu)
            })
            .ok_or(OpError::NoSuchGpu { node, gpu })
    }

    /// Create a free instance. `initial` marks the setup of a static layout (not counted).
    pub fn create(
        &mut self,
        node: usize,
        gpu: usize,
        p: Placed,
        initial: bool,
    ) -> Result<(), OpError> {
        let model = self.model;
        let g = self.gpu_mut(node, gpu)?;
        if !model.profile(p.profile).placements.contains(&p.start) || !g.all.fits(model, p) {
            return Err(OpError::DoesNotFit {
                node,
                gpu,
                instance: model.spec(p),
            });
        }
        g.instances.push(Instance {
            placed: p,
            pod: None,
        });
        g.recompute(model);
        if !initial {
            self.counters.creates += 1;
        }
        Ok(())
    }

    /// Destroy a free instance. A busy one is refused and counted in `busy_destroyed`.
    pub fn destroy(&mut self, node: usize, gpu: usize, p: Placed) -> Result<(), OpError> {
        let model = self.model;
        let g = self.gpu_mut(node, gpu)?;
        let Some(pos) = g.instances.iter().position(|i| i.placed == p) else {
            return Err(OpError::NoSuchInstance {
                node,
                gpu,
                instance: model.spec(p),
            });
        };
        if let Some(pod) = g.instances[pos].pod {
            self.counters.busy_destroyed += 1;
            return Err(OpError::Busy {
                node,
                gpu,
                instance: model.spec(p),
                pod,
            });
        }
        g.instances.remove(pos);
        g.recompute(model);
        self.counters.destroys += 1;
        Ok(())
    }

    /// Count a re-partition (a GPU that lost instances to take another layout).
    pub fn note_repartition(&mut self) {
        self.counters.repartitions += 1;
    }

    /// Bind a pod to a node and to free instances on it, taking its CPU and memory.
    pub fn bind(&mut self, pod: PodId, cpu: u64, mem: u64, b: Binding) -> Result<(), OpError> {
        let model = self.model;
        let node = self.nodes.get(b.node).ok_or(OpError::NoSuchGpu {
            node: b.node,
            gpu: 0,
        })?;
        if !node.fits(cpu, mem) {
            return Err(OpError::NoRoom { pod, node: b.node });
        }
        for (i, &(gpu, p)) in b.instances.iter().enumerate() {
            let g = node
                .gpus
                .get(gpu)
                .ok_or(OpError::NoSuchGpu { node: b.node, gpu })?;
            let inst = g.find(p).ok_or_else(|| OpError::NoSuchInstance {
                node: b.node,
                gpu,
                instance: model.spec(p),
            })?;
            let twice = b.instances[..i].contains(&(gpu, p));
            if let Some(other) = inst.pod.or(twice.then_some(pod)) {
                return Err(OpError::Busy {
                    node: b.node,
                    gpu,
                    instance: model.spec(p),
                    pod: other,
                });
            }
        }
        let node = &mut self.nodes[b.node];
        node.changes += 1;
        node.cpu_used += cpu;
        node.mem_used += mem;
        for &(gpu, p) in &b.instances {
            let g = &mut node.gpus[gpu];
            if let Some(i) = g.instances.iter_mut().find(|i| i.placed == p) {
                i.pod = Some(pod);
            }
            g.recompute(model);
        }
        let idx = pod as usize;
        if self.bindings.len() <= idx {
            self.bindings.resize(idx + 1, None);
        }
        self.bindings[idx] = Some(b);
        Ok(())
    }

    /// Bind `pod` (index `id`) to `node` and `instances` there: [`Cluster::bind`] with the
    /// pod's own CPU and memory.
    pub fn bind_pod(
        &mut self,
        id: PodId,
        pod: &SimPod,
        node: usize,
        instances: Vec<(usize, Placed)>,
    ) -> Result<(), OpError> {
        self.bind(id, pod.cpu, pod.mem, Binding { node, instances })
    }

    /// Unbind a pod (it left): its instances stay, free; its CPU and memory are returned.
    pub fn release(&mut self, pod: PodId, cpu: u64, mem: u64) -> Option<Binding> {
        let model = self.model;
        let b = self.bindings.get_mut(pod as usize)?.take()?;
        let node = &mut self.nodes[b.node];
        node.changes += 1;
        node.cpu_used -= cpu;
        node.mem_used -= mem;
        for &(gpu, p) in &b.instances {
            let g = &mut node.gpus[gpu];
            if let Some(i) = g.instances.iter_mut().find(|i| i.placed == p) {
                i.pod = None;
            }
            g.recompute(model);
        }
        Some(b)
    }

    /// Check every structural invariant (valid layouts, bindings consistent); for tests.
    pub fn check(&self) -> Result<(), InvariantError> {
        let model = self.model;
        for (n, node) in self.nodes.iter().enumerate() {
            if node.cpu_used > node.cpu_total || node.mem_used > node.mem_total {
                return Err(InvariantError::OverCapacity { node: n });
            }
            for (g, gpu) in node.gpus.iter().enumerate() {
                let items: Vec<Placed> = gpu.instances.iter().map(|i| i.placed).collect();
                let v = model.validate(&items);
                if let Some(violation) = v.into_iter().next() {
                    return Err(InvariantError::Layout {
                        node: n,
                        gpu: g,
                        violation,
                    });
                }
                for i in &gpu.instances {
                    if let Some(pod) = i.pod {
                        let ok = self
                            .binding(pod)
                            .is_some_and(|b| b.node == n && b.instances.contains(&(g, i.placed)));
                        if !ok {
                            return Err(InvariantError::Unbound {
                                node: n,
                                gpu: g,
                                pod,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    fn cluster() -> Cluster<'static> {
        let model = Catalog::builtin().lookup("a100-80gb").unwrap();
        let nodes = vec![TraceNode {
            name: "n0".into(),
            cpu_milli: 4000,
            memory_mib: 1000,
            gpus: 2,
            model: "G2".into(),
        }];
        Cluster::new(model, &nodes)
    }

    #[test]
    fn destroying_a_busy_instance_is_refused_and_counted() {
        let mut c = cluster();
        let m = c.model();
        let p = m.parse_spec("3g.40gb@4").unwrap();
        c.create(0, 1, p, false).unwrap();
        c.bind(
            7,
            1000,
            100,
            Binding {
                node: 0,
                instances: vec![(1, p)],
            },
        )
        .unwrap();
        assert!(matches!(
            c.destroy(0, 1, p),
            Err(OpError::Busy { pod: 7, .. })
        ));
        assert_eq!(c.counters.busy_destroyed, 1);
        assert_eq!(c.nodes[0].gpus[1].busy_slices(), 3);
        c.release(7, 1000, 100).unwrap();
        c.destroy(0, 1, p).unwrap();
        assert_eq!(
            c.counters,
            Counters {
                creates: 1,
                destroys: 1,
                repartitions: 0,
                busy_destroyed: 1
            }
        );
        c.check().unwrap();
    }

    #[test]
    fn create_checks_layout_rules_and_bind_checks_cpu_memory() {
        let mut c = cluster();
        let m = c.model();
        c.create(0, 0, m.parse_spec("4g.40gb@0").unwrap(), false)
            .unwrap();
        assert!(c
            .create(0, 0, m.parse_spec("3g.40gb@0").unwrap(), false)
            .is_err());
        assert!(c
            .create(0, 0, m.parse_spec("3g.40gb@2").unwrap(), false)
            .is_err());
        let p = m.parse_spec("3g.40gb@4").unwrap();
        c.create(0, 0, p, false).unwrap();
        let b = Binding {
            node: 0,
            instances: vec![(0, p)],
        };
        assert!(matches!(
            c.bind(1, 5000, 1, b.clone()),
            Err(OpError::NoRoom { .. })
        ));
        c.bind(1, 4000, 1000, b.clone()).unwrap();
        assert!(c.bind(2, 0, 0, b).is_err(), "an instance holds one pod");
        c.check().unwrap();
    }
}
