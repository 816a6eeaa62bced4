//! Pods as the simulator sees them (mapped GPU demand, CPU, memory, times), and the arrival
//! sequences of the two modes.
//!
//! Randomness comes only from a seed: a ChaCha8 stream drives a Fisher–Yates shuffle and the
//! re-sampling, both written here so the sequence does not depend on a `rand` version's
//! algorithms.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::mapping::{GpuDemand, Mapping};
use crate::trace::{Trace, TracePod};

/// A pod ready for simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimPod {
    /// Index of the pod in the trace's pod list.
    pub trace_index: usize,
    /// CPU request (milli-CPU).
    pub cpu: u64,
    /// Memory request (MiB).
    pub mem: u64,
    /// GPU demand after mapping; `None` for a CPU-only pod.
    pub demand: Option<GpuDemand>,
    /// Requested GPU share over all its GPUs (`num_gpu × gpu_milli`).
    pub gpu_milli: u64,
    /// Arrival time (seconds; replay only).
    pub arrive: u64,
    /// Run time once started (seconds; replay only).
    pub duration: u64,
}

impl SimPod {
    /// Map one trace pod.
    pub fn from_trace(index: usize, p: &TracePod, mapping: &Mapping) -> SimPod {
        let demand = mapping.demand(p.num_gpu, p.gpu_milli);
        SimPod {
            trace_index: index,
            cpu: p.cpu_milli,
            mem: p.memory_mib,
            gpu_milli: if demand.is_some() {
                u64::from(p.num_gpu) * u64::from(p.gpu_milli)
            } else {
                0
            },
            demand,
            arrive: p.creation_time,
            duration: p.deletion_time.saturating_sub(p.creation_time),
        }
    }

    /// Compute slices the pod asks for (0 for CPU-only pods).
    pub fn slices(&self) -> u64 {
        self.demand.map_or(0, |d| d.total_slices())
    }
}

/// Every pod of the trace, mapped, in trace order.
pub fn map_pods(trace: &Trace, mapping: &Mapping) -> Vec<SimPod> {
    trace
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| SimPod::from_trace(i, p, mapping))
        .collect()
}

/// A uniform index below `n` (n > 0) from the stream (multiply-shift; the bias is below 2^-40
/// for any trace size).
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// The saturate-mode arrival sequence for a seed, as indices into `pods`: every pod once in a
/// shuffled order, then pods drawn with replacement, cut as soon as the requested compute
/// slices reach `target` × `capacity_slices` (e.g. 1.3 for 130 %).
pub fn saturate_sequence(
    pods: &[SimPod],
    capacity_slices: u64,
    target: f64,
    seed: u64,
) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    for i in (1..order.len()).rev() {
        let j = below(&mut rng, i + 1);
        order.swap(i, j);
    }
    let goal = (capacity_slices as f64 * target).ceil() as u64;
    let mut out = Vec::with_capacity(order.len());
    let mut sum = 0u64;
    for &i in &order {
        if sum >= goal {
            return out;
        }
        sum += pods[i].slices();
        out.push(i);
    }
    if pods.iter().all(|p| p.slices() == 0) {
        return out;
    }
    while sum < goal {
        let i = below(&mut rng, pods.len());
        sum += pods[i].slices();
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    fn pods() -> Vec<SimPod> {
        let model = Catalog::builtin().lookup("a100-80gb").unwrap();
        let m = Mapping::new(model).unwrap();
        let mk = |i, n, milli| {
            SimPod::from_trace(
                i,
                &TracePod {
                    name: format!("p{i}"),
                    cpu_milli: 1000,
                    memory_mib: 10,
                    num_gpu: n,
                    gpu_milli: milli,
                    creation_time: 5,
                    deletion_time: 12,
                    gpu_spec: String::new(),
                },
                &m,
            )
        };
        vec![mk(0, 1, 1000), mk(1, 1, 300), mk(2, 0, 0), mk(3, 2, 1000)]
    }

    #[test]
    fn sequence_keeps_every_pod_then_resamples_to_the_target() {
        let p = pods();
        // Demand: 7 + 3 + 0 + 14 = 24 slices; capacity 20 slices, target 130 % = 26.
        let s = saturate_sequence(&p, 20, 1.3, 42);
        let mut first: Vec<usize> = s[..4].to_vec();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3]);
        let total: u64 = s.iter().map(|&i| p[i].slices()).sum();
        let before_last: u64 = s[..s.len() - 1].iter().map(|&i| p[i].slices()).sum();
        assert!(total >= 26 && before_last < 26, "{total} {before_last}");
        assert_eq!(s, saturate_sequence(&p, 20, 1.3, 42));
        assert_ne!(
            saturate_sequence(&p, 200, 1.3, 42),
            saturate_sequence(&p, 200, 1.3, 43)
        );
    }

    #[test]
    fn a_small_target_cuts_the_shuffled_list() {
        let p = pods();
        let s = saturate_sequence(&p, 10, 1.0, 1);
        let total: u64 = s.iter().map(|&i| p[i].slices()).sum();
        assert!(total >= 10 && s.len() <= 4);
    }

    #[test]
    fn cpu_only_traces_do_not_loop() {
        let p: Vec<SimPod> = pods().into_iter().filter(|p| p.demand.is_none()).collect();
        assert_eq!(saturate_sequence(&p, 100, 1.3, 3).len(), 1);
    }

    #[test]
    fn mapping_fills_milli_and_duration() {
        let p = pods();
        assert_eq!(
            (p[3].gpu_milli, p[3].slices(), p[3].duration),
            (2000, 14, 7)
        );
        assert_eq!((p[2].gpu_milli, p[2].slices()), (0, 0));
        assert_eq!(p[1].slices(), 3);
    }
}
