//! Prometheus metrics, served as text on `GET /metrics` (Unix socket and `--listen`).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tessera_queue_length` | gauge | | requests waiting |
//! | `tessera_wait_seconds` | histogram | | time from submission to lease |
//! | `tessera_leases_total` | counter | `slice_type` | leases granted (`mig`, `mps`, `timeslice`) |
//! | `tessera_leases_active` | gauge | `slice_type` | leases held now |
//! | `tessera_repartitions_total` | counter | | GPU layout changes applied |
//! | `tessera_operations_failed_total` | counter | | backend operations that failed |
//! | `tessera_slices_busy` | gauge | `gpu` | slices leased on a GPU (instances, clients or replicas) |
//! | `tessera_slices` | gauge | `gpu` | slices on a GPU (MIG instances, MPS clients, replicas offered) |
//! | `tessera_connections_refused_total` | counter | | connections closed at once: their uid (TCP: address) was at `connections.max_per_uid` |
//! | `tessera_connections_timed_out_total` | counter | | connections closed idle or too slow (`connections.idle_timeout_ms`) |
//! | `tessera_scheduler_stalls_total` | counter | | times the scheduler did not run for well over a tick (daemon stopped or starved); heartbeat deadlines were extended |
//! | `tessera_liveness_unknown_total` | counter | | client checks with no verdict (`/proc/PID/stat` unreadable, e.g. out of descriptors) |
//!
//! Counters restart from zero with the daemon (Prometheus handles resets); the totals that
//! must survive restarts (re-partitions) are in the state database and `tessera status`.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of per-slice-type series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SliceType {
    /// `mig`, `mps` or `timeslice`.
    pub slice_type: String,
}

/// Label of per-GPU series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabel {
    /// GPU index.
    pub gpu: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests waiting.
    pub queue_length: Gauge,
    /// Seconds from submission to lease.
    pub wait_seconds: Histogram,
    /// Leases granted, by slice type.
    pub leases_total: Family<SliceType, Counter>,
    /// Leases held, by slice type.
    pub leases_active: Family<SliceType, Gauge>,
    /// Layout changes applied.
    pub repartitions: Counter,
    /// Backend operations that failed.
    pub operations_failed: Counter,
    /// Busy slices per GPU.
    pub slices_busy: Family<GpuLabel, Gauge>,
    /// Slices per GPU.
    pub slices: Family<GpuLabel, Gauge>,
    /// Connections refused by the per-uid cap.
    pub connections_refused: Counter,
    /// Connections closed by the idle timeout.
    pub connections_timed_out: Counter,
    /// Scheduler stalls that extended heartbeat deadlines.
    pub scheduler_stalls: Counter,
    /// Client liveness checks without a verdict.
    pub liveness_unknown: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tessera");
        let queue_length = Gauge::default();
        registry.register(
            "queue_length",
            "Requests waiting for a slice",
            queue_length.clone(),
        );
        let buckets = [
            0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ];
        let wait_seconds = Histogram::new(buckets);
        registry.register(
            "wait_seconds",
            "Seconds from submission to lease",
            wait_seconds.clone(),
        );
        let leases_total = Family::<SliceType, Counter>::default();
        registry.register(
            "leases",
            "Leases granted by slice type",
            leases_total.clone(),
        );
        let leases_active = Family::<SliceType, Gauge>::default();
        registry.register(
            "leases_active",
            "Leases held now by slice type",
            leases_active.clone(),
        );
        let repartitions = Counter::default();
        registry.register(
            "repartitions",
            "GPU layout changes applied",
            repartitions.clone(),
        );
        let operations_failed = Counter::default();
        registry.register(
            "operations_failed",
            "GPU backend operations that failed",
            operations_failed.clone(),
        );
        let slices_busy = Family::<GpuLabel, Gauge>::default();
        registry.register("slices_busy", "Leased slices per GPU", slices_busy.clone());
        let slices = Family::<GpuLabel, Gauge>::default();
        registry.register("slices", "Slices per GPU", slices.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because their uid (TCP: address) was at the cap",
            connections_refused.clone(),
        );
        let connections_timed_out = Counter::default();
        registry.register(
            "connections_timed_out",
            "Connections closed idle or too slow",
            connections_timed_out.clone(),
        );
        let scheduler_stalls = Counter::default();
        registry.register(
            "scheduler_stalls",
            "Times the scheduler did not run for well over a tick; heartbeat deadlines were extended",
            scheduler_stalls.clone(),
        );
        let liveness_unknown = Counter::default();
        registry.register(
            "liveness_unknown",
            "Client liveness checks without a verdict (/proc unreadable)",
            liveness_unknown.clone(),
        );
        for t in ["mig", "mps", "timeslice"] {
            let l = SliceType {
                slice_type: t.into(),
            };
            let _ = leases_total.get_or_create(&l);
            let _ = leases_active.get_or_create(&l);
        }
        Metrics {
            registry: Mutex::new(registry),
            queue_length,
            wait_seconds,
            leases_total,
            leases_active,
            repartitions,
            operations_failed,
            slices_busy,
            slices,
            connections_refused,
            connections_timed_out,
            scheduler_stalls,
            liveness_unknown,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }

    /// The label of a slice type.
    pub fn slice_type(t: &str) -> SliceType {
        SliceType {
            slice_type: t.to_string(),
        }
    }

    /// The label of a GPU.
    pub fn gpu(index: u32) -> GpuLabel {
        GpuLabel {
            gpu: index.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_appears_in_the_text() {
        let m = Metrics::new();
        m.queue_length.set(3);
        m.wait_seconds.observe(1.5);
        m.leases_total
            .get_or_create(&Metrics::slice_type("mig"))
            .inc();
        m.repartitions.inc();
        m.slices_busy.get_or_create(&Metrics::gpu(0)).set(2);
        let text = m.render();
        for name in [
            "tessera_queue_length 3",
            "tessera_wait_seconds_count 1",
            "tessera_leases_total{slice_type=\"mig\"} 1",
            "tessera_leases_active{slice_type=\"mps\"} 0",
            "tessera_repartitions_total 1",
            "tessera_operations_failed_total 0",
            "tessera_slices_busy{gpu=\"0\"} 2",
        ] {
            assert!(text.contains(name), "missing `{name}` in\n{text}");
        }
    }
}
