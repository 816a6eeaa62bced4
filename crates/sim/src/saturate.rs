//! Saturate mode, the FGD protocol: the cluster starts empty, the pods arrive one at a time in a
//! shuffled order (re-sampled until the requests reach 130 % of the GPU capacity) and never
//! leave; a pod that fits nowhere fails and is not retried.
//!
//! Capacity and workload are counted in compute slices (7 per A100). The *arrived* workload is
//! the slices requested by the pods seen so far; the *allocated* share is the slices requested
//! by the pods that were placed, both as a percentage of capacity. Under `whole-gpu` a pod holds
//! more than it asked for; only what it asked for counts as allocated. Beside it the run reports
//! the requested GPU share (`gpu_milli`) that was served.

use serde::Serialize;

use crate::cluster::{Cluster, Counters, PodId};
use crate::policy::{PlannerStats, PolicyKind, SimError};
use crate::workload::saturate_sequence;
use crate::{Progress, SimContext};

/// Largest arrived percentage recorded on a curve.
pub const MAX_PCT: u32 = 130;

/// The state of a run when the arrived workload reached a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Arrived workload, % of capacity (the state after the last pod within it).
    pub arrived_pct: u32,
    /// Allocated share of capacity, %.
    pub allocated_pct: f64,
    /// Served share of the arrived `gpu_milli`, %.
    pub milli_served_pct: f64,
    /// GPU pods that failed so far.
    pub failed_gpu_pods: u64,
}

/// One saturate run (one policy, one seed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaturateRun {
    /// The policy.
    pub policy: PolicyKind,
    /// The seed.
    pub seed: u64,
    /// Pods in the arrival sequence.
    pub pods: u64,
    /// GPU pods in the sequence.
    pub gpu_pods: u64,
    /// GPU pods that failed over the whole sequence.
    pub failed_gpu_pods: u64,
    /// CPU-only pods that failed over the whole sequence.
    pub failed_cpu_pods: u64,
    /// Operation counters (creates, destroys, re-partitions, busy instances destroyed).
    pub counters: Counters,
    /// Planner calls and unapplied changes (`tessera`, `nos`).
    pub planner: PlannerStats,
    /// One point per arrived percentage, 0 to [`MAX_PCT`].
    pub curve: Vec<CurvePoint>,
    /// The seed's hole floor at 100 % arrived, % of capacity (see [`hole_floor_pct`]).
    pub hole_floor_pct: f64,
}

impl SaturateRun {
    /// The curve point at an arrived percentage.
    pub fn at(&self, pct: u32) -> &CurvePoint {
        &self.curve[pct.min(MAX_PCT) as usize]
    }
}

/// Run one policy with one seed.
pub fn run(
    ctx: &SimContext,
    policy: PolicyKind,
    seed: u64,
    progress: &dyn Progress,
) -> Result<SaturateRun, SimError> {
    let mut cluster = Cluster::new(ctx.model(), &ctx.trace.nodes);
    let mut placer = ctx.placer(policy, &mut cluster)?;
    let capacity = cluster.capacity_slices();
    let seq = saturate_sequence(&ctx.pods, capacity, f64::from(MAX_PCT) / 100.0, seed);
    let hole_floor = hole_floor_pct(ctx, &seq, capacity);

    let mut curve = Vec::with_capacity(MAX_PCT as usize + 1);
    let (mut arrived, mut allocated) = (0u64, 0u64);
    let (mut milli_arrived, mut milli_served) = (0u64, 0u64);
    let (mut failed_gpu, mut failed_cpu, mut gpu_pods) = (0u64, 0u64, 0u64);
    let record =
        |curve: &mut Vec<CurvePoint>, upto: u64, allocated, milli_arrived, milli_served, failed| {
            // Percentage t gets the state before the pod that takes the arrived slices past t.
            while (curve.len() as u32) <= MAX_PCT && (curve.len() as u64) * capacity < upto * 100 {
                curve.push(CurvePoint {
                    arrived_pct: curve.len() as u32,
                    allocated_pct: pct(allocated, capacity),
                    milli_served_pct: pct(milli_served, milli_arrived),
                    failed_gpu_pods: failed,
                });
            }
        };
    for (k, &i) in seq.iter().enumerate() {
        let pod = &ctx.pods[i];
        let slices = pod.slices();
        record(
            &mut curve,
            arrived + slices,
            allocated,
            milli_arrived,
            milli_served,
            failed_gpu,
        );
        arrived += slices;
        milli_arrived += pod.gpu_milli;
        let placed = placer.place(&mut cluster, &[(k as PodId, pod)])?[0];
        match (placed, pod.demand.is_some()) {
            (true, true) => {
                allocated += slices;
                milli_served += pod.gpu_milli;
            }
            (false, true) => failed_gpu += 1,
            (false, false) => failed_cpu += 1,
            (true, false) => {}
        }
        gpu_pods += u64::from(pod.demand.is_some());
        if k % 256 == 255 {
            progress.advance(256);
        }
    }
    progress.advance(seq.len() as u64 % 256);
    record(
        &mut curve,
        u64::MAX / 200,
        allocated,
        milli_arrived,
        milli_served,
        failed_gpu,
    );
    Ok(SaturateRun {
        policy,
        seed,
        pods: seq.len() as u64,
        gpu_pods,
        failed_gpu_pods: failed_gpu,
        failed_cpu_pods: failed_cpu,
        counters: cluster.counters,
        planner: placer.planner_stats(),
        curve,
        hole_floor_pct: hole_floor,
    })
}

/// A floor under the unallocated share at 100 % arrived, for any policy that places every
/// sub-GPU pod that arrived by then: an instance larger than half a GPU (a `4g.40gb` on an
/// A100) leaves the rest of its GPU to instances no larger than that rest, so at least
/// `Σ (GPU slices − big instance slices) − Σ (slices of pods no larger than half a GPU)` compute
/// slices stay free, whatever goes where. Percent of `capacity`, 0 when negative.
pub fn hole_floor_pct(ctx: &SimContext, seq: &[usize], capacity: u64) -> f64 {
    let c = u64::from(ctx.model().compute_slices);
    let (mut arrived, mut holes, mut small) = (0u64, 0u64, 0u64);
    for &i in seq {
        let pod = &ctx.pods[i];
        // The same cut as the curve's 100 % point: the pods before the one that passes it.
        if arrived + pod.slices() > capacity {
            break;
        }
        arrived += pod.slices();
        match pod.demand {
            Some(d) if d.count == 1 && !d.full => {
                let s = u64::from(d.slices);
                if 2 * s > c {
                    holes += c - s;
                } else {
                    small += s;
                }
            }
            _ => {}
        }
    }
    pct(holes.saturating_sub(small), capacity)
}

/// `part / whole` in percent (0 when `whole` is 0).
pub(crate) fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}
