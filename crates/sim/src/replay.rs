//! Replay mode: pods arrive at their trace `creation_time` and, once started, run for their
//! trace lifetime (`deletion_time − creation_time`); a pod that does not fit waits in a queue.
//! A speed-up factor divides the arrival times (not the lifetimes), multiplying the offered
//! load: the real trace never has more than about 66 GPUs' worth of pods at once, so on its
//! own 6,212 GPUs nothing ever waits.
//!
//! At each event time the departures are processed first (their instances stay, free; CPU and
//! memory return), then the arrivals join the queue. Scheduling then tries the waiting pods in
//! arrival order, each on its own; a pod that does not fit stays queued and later pods may pass
//! it (as the Kubernetes scheduler does). After a departure every waiting pod is tried again;
//! otherwise only the new arrivals are (nothing was freed). Within one pass, a pod is skipped
//! when one with the same GPU demand and no more CPU and memory has already failed. A pod that
//! would not fit even on an empty node of the cluster is rejected at arrival.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Serialize;

use crate::cluster::{Cluster, Counters, PodId};
use crate::policy::{PlannerStats, PolicyKind, SimError};
use crate::saturate::pct;
use crate::workload::SimPod;
use crate::{Progress, SimContext};

/// A pod's shape for the skip rule: (GPU demand as (profile, count), CPU, memory).
type Shape = (Option<(u8, u32)>, u64, u64);

/// Most points kept on a replay timeline.
pub const TIMELINE_POINTS: usize = 400;

/// The cluster at one time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimePoint {
    /// Seconds from the start of the trace.
    pub time_s: u64,
    /// Slices requested by running pods, % of capacity.
    pub allocated_pct: f64,
    /// Pods waiting.
    pub queued: u64,
}

/// Names of the pod classes of [`ReplayRun::delay_by_class`].
pub const CLASSES: [&str; 3] = ["shared", "whole", "multi"];

/// Queueing delay of the started GPU pods of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassDelay {
    /// `shared`, `whole` or `multi`.
    pub class: &'static str,
    /// Pods of the class that started.
    pub started: u64,
    /// Of those, pods that waited at all.
    pub delayed: u64,
    /// Mean delay, seconds.
    pub mean_s: f64,
    /// 95th percentile delay, seconds.
    pub p95_s: f64,
    /// Longest delay, seconds.
    pub max_s: u64,
}

/// Index into [`CLASSES`] of a GPU pod.
fn class_of(p: &SimPod) -> usize {
    match p.demand {
        Some(d) if d.count > 1 => 2,
        Some(d) if d.full => 1,
        _ => 0,
    }
}

/// The `q` quantile (nearest rank) of sorted values; 0 when empty.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

fn mean_u64(v: &[u64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

/// One replay run (one policy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayRun {
    /// The policy.
    pub policy: PolicyKind,
    /// GPU pods in the trace.
    pub gpu_pods: u64,
    /// CPU-only pods in the trace.
    pub cpu_pods: u64,
    /// Pods rejected at arrival because no empty node could hold them.
    pub rejected_pods: u64,
    /// GPU pods that started.
    pub started_gpu_pods: u64,
    /// Pods (GPU or not) still waiting when no event was left.
    pub never_started: u64,
    /// GPU pods that waited at all.
    pub delayed_gpu_pods: u64,
    /// Mean queueing delay of started GPU pods, seconds.
    pub delay_mean_s: f64,
    /// 95th percentile of the queueing delay of started GPU pods, seconds.
    pub delay_p95_s: f64,
    /// Longest queueing delay of a started GPU pod, seconds.
    pub delay_max_s: u64,
    /// Queueing delay per pod class: `shared` (a fraction of a GPU), `whole` (one full GPU),
    /// `multi` (several full GPUs on one node).
    pub delay_by_class: Vec<ClassDelay>,
    /// Time-weighted mean of the allocated share from the first to the last arrival, %.
    pub allocated_mean_pct: f64,
    /// Highest allocated share, %.
    pub allocated_peak_pct: f64,
    /// Operation counters.
    pub counters: Counters,
    /// Planner calls and unapplied changes (`tessera`, `nos`).
    pub planner: PlannerStats,
    /// Allocation and queue length over time, at most [`TIMELINE_POINTS`] points.
    pub timeline: Vec<TimePoint>,
}

/// Run one policy over the trace's timeline.
pub fn run(
    ctx: &SimContext,
    policy: PolicyKind,
    speedup: f64,
    progress: &dyn Progress,
) -> Result<ReplayRun, SimError> {
    let mut cluster = Cluster::new(ctx.model(), &ctx.trace.nodes);
    let mut placer = ctx.placer(policy, &mut cluster)?;
    let capacity = cluster.capacity_slices();
    // `speedup` compresses the arrival times (lifetimes stay): the offered load grows by it.
    let scaled: Vec<SimPod>;
    let pods: &[SimPod] = if speedup == 1.0 {
        &ctx.pods
    } else {
        scaled = ctx
            .pods
            .iter()
            .map(|p| SimPod {
                arrive: (p.arrive as f64 / speedup).floor() as u64,
                ..p.clone()
            })
            .collect();
        &scaled
    };

    let mut arrivals: Vec<usize> = (0..pods.len()).collect();
    arrivals.sort_by_key(|&i| (pods[i].arrive, i));
    let placeable: Vec<bool> = pods
        .iter()
        .map(|p| {
            cluster_nodes_fit(
                &cluster,
                p.cpu,
                p.mem,
                p.demand.map_or(0, |d| d.count as usize),
            )
        })
        .collect();

    let mut departures: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut queue: Vec<usize> = Vec::new();
    let mut delays: Vec<u64> = Vec::new();
    let mut by_class: [Vec<u64>; 3] = Default::default();
    let mut timeline: Vec<TimePoint> = Vec::new();
    let (mut rejected, mut next) = (0u64, 0usize);
    let mut allocated = 0u64;
    let mut freed = false;
    loop {
        let t_arr = arrivals.get(next).map(|&i| pods[i].arrive);
        let t_dep = departures.peek().map(|Reverse((t, _))| *t);
        let now = match (t_arr, t_dep) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(d)) => d,
            (Some(a), Some(d)) => a.min(d),
        };
        while let Some(&Reverse((t, i))) = departures.peek() {
            if t > now {
                break;
            }
            departures.pop();
            cluster.release(i as PodId, pods[i].cpu, pods[i].mem);
            allocated -= pods[i].slices();
            freed = true;
        }
        let first_new = queue.len();
        while let Some(&i) = arrivals.get(next) {
            if pods[i].arrive > now {
                break;
            }
            next += 1;
            if next % 256 == 0 {
                progress.advance(256);
            }
            if placeable[i] {
                queue.push(i);
            } else {
                rejected += 1;
            }
        }
        let from = if freed { 0 } else { first_new };
        freed = false;
        let mut failed_shapes: Vec<Shape> = Vec::new();
        let mut placed_any = vec![false; queue.len()];
        for (qi, &i) in queue.iter().enumerate().skip(from) {
            let p = &pods[i];
            let shape = p.demand.map(|d| (d.profile.0, d.count));
            if failed_shapes
                .iter()
                .any(|&(s, c, m)| s == shape && c <= p.cpu && m <= p.mem)
            {
                continue;
            }
            if placer.place(&mut cluster, &[(i as PodId, p)])?[0] {
                placed_any[qi] = true;
                allocated += p.slices();
                if p.demand.is_some() {
                    delays.push(now - p.arrive);
                    by_class[class_of(p)].push(now - p.arrive);
                }
                departures.push(Reverse((now + p.duration, i)));
            } else {
                failed_shapes.push((shape, p.cpu, p.mem));
            }
        }
        let mut k = 0;
        queue.retain(|_| {
            k += 1;
            !placed_any[k - 1]
        });
        timeline.push(TimePoint {
            time_s: now,
            allocated_pct: pct(allocated, capacity),
            queued: queue.len() as u64,
        });
    }

    progress.advance(pods.len() as u64 % 256);
    let gpu_pods = pods.iter().filter(|p| p.demand.is_some()).count() as u64;
    let mut sorted = delays.clone();
    sorted.sort_unstable();
    let p95 = percentile(&sorted, 0.95);
    let classes = CLASSES
        .iter()
        .zip(by_class.iter_mut())
        .map(|(name, d)| {
            d.sort_unstable();
            ClassDelay {
                class: name,
                started: d.len() as u64,
                delayed: d.iter().filter(|&&x| x > 0).count() as u64,
                mean_s: mean_u64(d),
                p95_s: percentile(d, 0.95),
                max_s: d.last().copied().unwrap_or(0),
            }
        })
        .collect();
    let last_arrival = arrivals.last().map_or(0, |&i| pods[i].arrive);
    let (mean_alloc, peak) = time_weighted(&timeline, last_arrival);
    Ok(ReplayRun {
        policy,
        gpu_pods,
        cpu_pods: pods.len() as u64 - gpu_pods,
        rejected_pods: rejected,
        started_gpu_pods: delays.len() as u64,
        never_started: queue.len() as u64,
        delayed_gpu_pods: delays.iter().filter(|&&d| d > 0).count() as u64,
        delay_mean_s: mean_u64(&delays),
        delay_p95_s: p95,
        delay_max_s: sorted.last().copied().unwrap_or(0),
        delay_by_class: classes,
        allocated_mean_pct: mean_alloc,
        allocated_peak_pct: peak,
        counters: cluster.counters,
        planner: placer.planner_stats(),
        timeline: downsample(&timeline, TIMELINE_POINTS),
    })
}

/// Whether some node could hold the pod when empty.
fn cluster_nodes_fit(cluster: &Cluster, cpu: u64, mem: u64, gpus: usize) -> bool {
    cluster
        .nodes()
        .iter()
        .any(|n| n.cpu_total >= cpu && n.mem_total >= mem && n.gpus.len() >= gpus)
}

/// Time-weighted mean of the allocated share (a step function of the points) from the first
/// point to `end`, and the peak over all points.
fn time_weighted(points: &[TimePoint], end: u64) -> (f64, f64) {
    let peak = points.iter().map(|p| p.allocated_pct).fold(0.0, f64::max);
    let Some(first) = points.first() else {
        return (0.0, 0.0);
    };
    if end <= first.time_s {
        return (first.allocated_pct, peak);
    }
    let mut area = 0.0;
    for (i, p) in points.iter().enumerate() {
        let next = points.get(i + 1).map_or(end, |q| q.time_s).min(end);
        if next > p.time_s {
            area += p.allocated_pct * (next - p.time_s) as f64;
        }
    }
    (area / (end - first.time_s) as f64, peak)
}

/// At most `n` points on a uniform time grid: each the state at the last event at or before it.
fn downsample(points: &[TimePoint], n: usize) -> Vec<TimePoint> {
    if points.len() <= n || n < 2 {
        return points.to_vec();
    }
    let (t0, t1) = (points[0].time_s, points[points.len() - 1].time_s);
    let mut out = Vec::with_capacity(n);
    let mut j = 0;
    for k in 0..n {
        let t = t0 + ((t1 - t0) as u128 * k as u128 / (n as u128 - 1)) as u64;
        while j + 1 < points.len() && points[j + 1].time_s <= t {
            j += 1;
        }
        out.push(TimePoint {
            time_s: t,
            ..points[j]
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_keeps_the_step_function() {
        let pts: Vec<TimePoint> = (0..1000)
            .map(|i| TimePoint {
                time_s: i * 10,
                allocated_pct: i as f64,
                queued: 0,
            })
            .collect();
        let d = downsample(&pts, 11);
        assert_eq!(d.len(), 11);
        assert_eq!(d[0].allocated_pct, 0.0);
        assert_eq!(d[10].time_s, 9990);
        assert_eq!(d[10].allocated_pct, 999.0);
        assert_eq!(d[5].time_s, 4995);
        assert_eq!(d[5].allocated_pct, 499.0);
    }

    #[test]
    fn time_weighted_mean_of_a_step() {
        let p = |t, a| TimePoint {
            time_s: t,
            allocated_pct: a,
            queued: 0,
        };
        let (m, peak) = time_weighted(&[p(0, 10.0), p(10, 30.0), p(20, 0.0)], 20);
        assert_eq!((m, peak), (20.0, 30.0));
        let (m, _) = time_weighted(&[p(0, 10.0), p(10, 30.0), p(20, 0.0)], 40);
        assert_eq!(m, 10.0);
        let (m, _) = time_weighted(&[p(0, 10.0), p(10, 30.0), p(20, 0.0)], 5);
        assert_eq!(m, 10.0);
    }
}
