//! tessera-sim: replay a real GPU cluster trace under several slicing policies and measure how
//! much of the cluster each one can hand out.
//!
//! * [`trace`] reads the Alibaba GPU trace 2023 (FGD, ATC'23).
//! * [`mapping`] turns its generic GPU shares into MIG profiles of one model (our modelling
//!   choice, stated there exactly).
//! * [`cluster`] is the simulated state, changed only through checked operations that refuse
//!   (and count) any attempt to destroy a busy instance.
//! * [`policy`], [`planned`] and [`static_layout`] are the five policies.
//! * [`saturate`] and [`replay`] are the two modes; [`report`] aggregates runs over seeds;
//!   [`output`] writes CSV files and PNG/SVG plots.
//! * [`fractional`] (with [`frac_report`]) is the FGD paper's own model — GPU fractions on the
//!   trace's heterogeneous GPUs — with its six baselines and tessera; [`hybrid`] lets each GPU
//!   be MIG or MPS.

pub mod cluster;
pub mod frac_report;
pub mod fractional;
pub mod frag;
pub mod hybrid;
pub mod mapping;
pub mod output;
pub mod planned;
pub mod policy;
pub mod replay;
pub mod report;
pub mod saturate;
pub mod static_layout;
pub mod trace;
pub mod workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tessera_model::GpuModel;

pub use cluster::{Cluster, Counters, InvariantError};
pub use mapping::{GpuDemand, Mapping, MappingError};
pub use policy::{PolicyKind, SimError};
pub use replay::ReplayRun;
pub use report::{ReplayReport, SaturateReport};
pub use saturate::SaturateRun;
pub use static_layout::StaticPartition;
pub use trace::{Trace, TraceError};
pub use workload::SimPod;

/// Everything a run needs that does not change between runs: the model, the trace, the mapped
/// pods, and (computed once, when first needed) the `static-mig` partition.
#[derive(Debug)]
pub struct SimContext<'m> {
    /// The mapping onto the chosen model.
    pub mapping: Mapping<'m>,
    /// The trace.
    pub trace: Trace,
    /// The trace's pods, mapped, in trace order.
    pub pods: Vec<SimPod>,
    /// Pass every eligible node to the planner instead of one per distinct state.
    pub planner_ungrouped: bool,
    partition: OnceLock<StaticPartition>,
}

impl<'m> SimContext<'m> {
    /// Map a trace onto a model.
    pub fn new(model: &'m GpuModel, trace: Trace) -> Result<Self, MappingError> {
        let mapping = Mapping::new(model)?;
        let pods = workload::map_pods(&trace, &mapping);
        Ok(SimContext {
            mapping,
            trace,
            pods,
            planner_ungrouped: false,
            partition: OnceLock::new(),
        })
    }

    /// The GPU model.
    pub fn model(&self) -> &'m GpuModel {
        self.mapping.model()
    }

    /// The `static-mig` partition, chosen from the trace's demand mix.
    pub fn static_partition(&self) -> &StaticPartition {
        self.partition.get_or_init(|| {
            let shape: Vec<usize> = self.trace.nodes.iter().map(|n| n.gpus as usize).collect();
            static_layout::choose(&self.mapping, &self.pods, &shape)
        })
    }

    /// A fresh placer for a policy; fixed layouts are created on `cluster`.
    pub fn placer<'a>(
        &'a self,
        policy: PolicyKind,
        cluster: &mut Cluster<'m>,
    ) -> Result<Box<dyn policy::Placer + 'a>, SimError> {
        let mapping = self.mapping.clone();
        Ok(match policy {
            PolicyKind::BestFit => Box::new(policy::BestFit::new(mapping)),
            PolicyKind::WholeGpu => Box::new(policy::Fixed::whole_gpu(mapping, cluster)?),
            PolicyKind::StaticMig => Box::new(policy::Fixed::static_mig(
                mapping,
                cluster,
                &self.static_partition().layouts,
            )?),
            PolicyKind::Planned(planner_policy) => {
                let mut p = planned::Planned::new(mapping, planner_policy);
                if planner_policy == tessera_planner::Policy::Tessera {
                    p = p.with_fragmentation(frag::FragModel::from_pods(&self.pods));
                }
                Box::new(if self.planner_ungrouped {
                    p.ungrouped()
                } else {
                    p
                })
            }
        })
    }
}

/// Receives progress from long runs (called from worker threads).
pub trait Progress: Sync {
    /// `pods` more pods were processed.
    fn advance(&self, pods: u64);
}

impl Progress for () {
    fn advance(&self, _pods: u64) {}
}

/// Run `jobs` on up to `threads` threads; results come back in job order.
pub fn parallel<J: Sync, R: Send>(
    jobs: &[J],
    threads: usize,
    work: impl Fn(&J) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = work(job);
                out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// The number of worker threads to use by default: the available cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
