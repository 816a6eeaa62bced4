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
//! | `tessera_repartition_duration_seconds` | histogram | `gpu` | time to apply a layout change |
//! | `tessera_agent_operation_duration_seconds` | histogram | `operation` | one MIG operation (`create_gi`, `destroy_gi`, `create_ci`) from its journal intent to its outcome |
//! | `tessera_gpu_xid_errors_total` | counter | `gpu`, `xid` | XID error codes that marked a GPU unhealthy (each code once per GPU and daemon run) |
//!
//! Read from the daemon's state at each scrape ([`State`]). Who holds what (the `user` label)
//! is shown only to a scraper that may see everyone's leases — root or an admin on the Unix
//! socket, the bearer token on TCP (with the default `http_uid: 0`), or anyone with
//! `web_public: true`; others get `user=""` and no `tessera_user_*` series:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tessera_gpu_info` | gauge | `gpu`, `uuid`, `model`, `mode` | 1 per GPU (join on `gpu` for its model and mode) |
//! | `tessera_gpu_healthy` | gauge | `gpu` | 1, or 0 after an XID error or a failed change |
//! | `tessera_gpu_drained` | gauge | `gpu` | 1 while drained |
//! | `tessera_gpu_memory_bytes` | gauge | `gpu` | device memory |
//! | `tessera_gpu_memory_allocated_bytes` | gauge | `gpu` | memory of the leased slices (MIG instances, MPS limits; a time-slice replica counts the whole GPU's memory divided by the replicas) |
//! | `tessera_gpu_compute_allocated_ratio` | gauge | `gpu` | share of the GPU's compute leased (MIG compute slices, MPS SM percentages, time-slice replicas), 0 to 1 (MPS may exceed 1 when oversubscribed) |
//! | `tessera_slice_allocated` | gauge | `gpu`, `slice_type`, `slice`, `user` | 1 per slice: leased (`user` set) or 0 free (`user=""`); `slice` is `3g.40gb@4`, `mps-LEASE` or `replica-N` |
//! | `tessera_slice_memory_bytes` | gauge | `gpu`, `slice_type`, `slice` | memory of each slice |
//! | `tessera_user_leases_active` | gauge | `user` | leases held now |
//! | `tessera_user_requests_queued` | gauge | `user` | requests waiting now |
//! | `tessera_user_leases_total` | counter | `user` | leases granted since the state was created |
//! | `tessera_user_slice_seconds_total` | counter | `user` | seconds of slices held since the state was created |
//!
//! Counters restart from zero with the daemon (Prometheus handles resets), except the
//! per-user ones, which are read from the state database and survive restarts; so does the
//! re-partition total shown by `tessera status`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tessera_api::overview::{OverviewView, RepartitionView};
use tessera_api::wire::Slice;

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

/// Label of per-operation series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// `create_gi`, `destroy_gi` or `create_ci`.
    pub operation: String,
}

/// Label of XID series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XidLabel {
    /// GPU index.
    pub gpu: String,
    /// XID code.
    pub xid: String,
}

/// How many re-partitions the overview keeps.
pub const RECENT_REPARTITIONS: usize = 20;

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
    /// Seconds to apply a layout change, per GPU.
    pub repartition_seconds: Family<GpuLabel, Histogram>,
    /// Seconds of one MIG operation, per operation.
    pub operation_seconds: Family<OperationLabel, Histogram>,
    /// XID codes that marked a GPU unhealthy.
    pub xid_errors: Family<XidLabel, Counter>,
    xids_seen: Mutex<BTreeSet<(u32, u64)>>,
    recent: Mutex<VecDeque<RepartitionView>>,
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
        let repartition_seconds =
            Family::<GpuLabel, Histogram>::new_with_constructor(repartition_histogram as fn() -> _);
        registry.register(
            "repartition_duration_seconds",
            "Seconds to apply a GPU layout change",
            repartition_seconds.clone(),
        );
        let operation_seconds = Family::<OperationLabel, Histogram>::new_with_constructor(
            operation_histogram as fn() -> _,
        );
        registry.register(
            "agent_operation_duration_seconds",
            "Seconds of one MIG operation (create_gi, destroy_gi, create_ci)",
            operation_seconds.clone(),
        );
        let xid_errors = Family::<XidLabel, Counter>::default();
        registry.register(
            "gpu_xid_errors",
            "XID error codes that marked a GPU unhealthy (each once per GPU and daemon run)",
            xid_errors.clone(),
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
            repartition_seconds,
            operation_seconds,
            xid_errors,
            xids_seen: Mutex::new(BTreeSet::new()),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// A re-partition was applied: count it, time it and keep it for the overview.
    pub fn repartitioned(&self, r: RepartitionView) {
        self.repartitions.inc();
        self.repartition_seconds
            .get_or_create(&Metrics::gpu(r.gpu))
            .observe(r.took_ms as f64 / 1000.0);
        let mut recent = lock(&self.recent);
        recent.push_front(r);
        recent.truncate(RECENT_REPARTITIONS);
    }

    /// The latest re-partitions, newest first.
    pub fn recent_repartitions(&self) -> Vec<RepartitionView> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// A MIG operation took `seconds`.
    pub fn operation(&self, operation: &str, seconds: f64) {
        self.operation_seconds
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .observe(seconds);
    }

    /// GPU `gpu` is unhealthy with these XID codes; each code is counted the first time.
    pub fn xids(&self, gpu: u32, xids: impl IntoIterator<Item = u64>) {
        let mut seen = lock(&self.xids_seen);
        for x in xids {
            if seen.insert((gpu, x)) {
                self.xid_errors
                    .get_or_create(&XidLabel {
                        gpu: gpu.to_string(),
                        xid: x.to_string(),
                    })
                    .inc();
            }
        }
    }

    /// The Prometheus text exposition of the event metrics only.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }

    /// The whole exposition: the event metrics and those read from `state`.
    pub fn render_with(&self, state: &State) -> String {
        let mut out = self.render();
        if let Some(cut) = out.rfind("# EOF") {
            out.truncate(cut);
        }
        let _ = encode(&mut out, &state.registry());
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn repartition_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

fn operation_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

const MIB: f64 = 1024.0 * 1024.0;

/// The daemon's state as the scrape-time metrics need it.
#[derive(Debug, Clone)]
pub struct State {
    /// The overview (GPUs with geometry, leases, per-user usage) as root sees it.
    pub overview: OverviewView,
    /// Whether the scraper may see who holds what: when not, `tessera_slice_allocated` has
    /// `user=""` and the `tessera_user_*` series are left out.
    pub holders: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabel {
    gpu: String,
    uuid: String,
    model: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SliceLabel {
    gpu: String,
    slice_type: String,
    slice: String,
    user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SliceMemLabel {
    gpu: String,
    slice_type: String,
    slice: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UserLabel {
    user: String,
}

type FGauge = Gauge<f64, AtomicU64>;

impl State {
    fn registry(&self) -> Registry {
        let mut reg = Registry::with_prefix("tessera");
        let info = Family::<InfoLabel, Gauge>::default();
        let healthy = Family::<GpuLabel, Gauge>::default();
        let drained = Family::<GpuLabel, Gauge>::default();
        let mem = Family::<GpuLabel, FGauge>::default();
        let mem_alloc = Family::<GpuLabel, FGauge>::default();
        let compute = Family::<GpuLabel, FGauge>::default();
        let slice_alloc = Family::<SliceLabel, Gauge>::default();
        let slice_mem = Family::<SliceMemLabel, FGauge>::default();
        let user_active = Family::<UserLabel, Gauge>::default();
        let user_queued = Family::<UserLabel, Gauge>::default();
        let user_leases = Family::<UserLabel, Counter>::default();
        let user_seconds = Family::<UserLabel, Counter<f64, AtomicU64>>::default();
        let o = &self.overview;
        let holder = |lease: Option<u64>| -> String {
            if !self.holders {
                return String::new();
            }
            lease
                .and_then(|l| o.leases.iter().find(|r| r.id == l))
                .map(|r| r.user.clone())
                .unwrap_or_default()
        };
        for og in &o.gpus {
            let g = &og.gpu;
            let gl = Metrics::gpu(g.index);
            info.get_or_create(&InfoLabel {
                gpu: g.index.to_string(),
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                mode: g.mode.clone(),
            })
            .set(1);
            healthy
                .get_or_create(&gl)
                .set(i64::from(g.last_error.is_none()));
            drained.get_or_create(&gl).set(i64::from(g.drained));
            mem.get_or_create(&gl).set(og.total_memory_mib as f64 * MIB);
            let mut slices: Vec<(String, Option<u64>, u64, f64)> = Vec::new();
            match g.mode.as_str() {
                "mig" => {
                    for (k, i) in g.instances.iter().enumerate() {
                        let mib = og.instance_memory_mib.get(k).copied().unwrap_or(0);
                        let compute =
                            f64::from(og.instance_compute_slots.get(k).copied().unwrap_or(0))
                                / f64::from(og.compute_slots.max(1));
                        slices.push((format!("{}@{}", i.profile, i.start), i.lease, mib, compute));
                    }
                }
                "mps" => {
                    for s in &g.shares {
                        let name = match s.lease {
                            Some(l) => format!("mps-{l}"),
                            None => "mps-hidden".to_string(),
                        };
                        slices.push((name, s.lease, s.memory_mib, f64::from(s.sm_percent) / 100.0));
                    }
                }
                _ => {
                    let replicas = g.capacity.max(1);
                    let each = og.total_memory_mib / u64::from(replicas);
                    for n in 0..replicas {
                        let lease = o
                            .leases
                            .iter()
                            .find(|r| {
                                matches!(r.slice, Some(Slice::Timeslice { gpu, replica })
                                    if gpu == g.index && replica == n)
                            })
                            .map(|r| r.id);
                        slices.push((
                            format!("replica-{n}"),
                            lease,
                            each,
                            1.0 / f64::from(replicas),
                        ));
                    }
                }
            }
            let (mut mem_used, mut compute_used) = (0.0, 0.0);
            for (name, lease, mib, share) in slices {
                let user = holder(lease);
                let leased = lease.is_some();
                if leased {
                    mem_used += mib as f64 * MIB;
                    compute_used += share;
                }
                slice_alloc
                    .get_or_create(&SliceLabel {
                        gpu: g.index.to_string(),
                        slice_type: g.mode.clone(),
                        slice: name.clone(),
                        user,
                    })
                    .set(i64::from(leased));
                slice_mem
                    .get_or_create(&SliceMemLabel {
                        gpu: g.index.to_string(),
                        slice_type: g.mode.clone(),
                        slice: name,
                    })
                    .set(mib as f64 * MIB);
            }
            mem_alloc.get_or_create(&gl).set(mem_used);
            compute.get_or_create(&gl).set(compute_used);
        }
        for u in o.users.iter().filter(|_| self.holders) {
            let l = UserLabel {
                user: u.user.clone(),
            };
            user_active.get_or_create(&l).set(i64::from(u.leased));
            user_queued.get_or_create(&l).set(i64::from(u.queued));
            user_leases.get_or_create(&l).inc_by(u.leases_total);
            user_seconds
                .get_or_create(&l)
                .inc_by(u.slice_seconds as f64);
        }
        reg.register(
            "gpu_info",
            "One series per GPU, value 1; labels give its UUID, model and mode",
            info,
        );
        reg.register(
            "gpu_healthy",
            "1 while the GPU takes new leases, 0 after an XID error or a failed change",
            healthy,
        );
        reg.register("gpu_drained", "1 while the GPU is drained", drained);
        reg.register_with_unit(
            "gpu_memory",
            "Device memory",
            prometheus_client::registry::Unit::Bytes,
            mem,
        );
        reg.register_with_unit(
            "gpu_memory_allocated",
            "Memory of the GPU's leased slices",
            prometheus_client::registry::Unit::Bytes,
            mem_alloc,
        );
        reg.register_with_unit(
            "gpu_compute_allocated",
            "Share of the GPU's compute leased (MIG slices, MPS SM percentages, replicas)",
            prometheus_client::registry::Unit::Other("ratio".into()),
            compute,
        );
        reg.register(
            "slice_allocated",
            "1 per leased slice (user set), 0 per free one",
            slice_alloc,
        );
        reg.register_with_unit(
            "slice_memory",
            "Memory of each slice",
            prometheus_client::registry::Unit::Bytes,
            slice_mem,
        );
        reg.register("user_leases_active", "Leases a user holds now", user_active);
        reg.register(
            "user_requests_queued",
            "Requests a user has waiting now",
            user_queued,
        );
        reg.register(
            "user_leases",
            "Leases granted to a user since the state was created",
            user_leases,
        );
        reg.register_with_unit(
            "user_slice",
            "Seconds of slices a user held since the state was created",
            prometheus_client::registry::Unit::Seconds,
            user_seconds,
        );
        reg
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

    fn repartition(gpu: u32, at_ms: u64) -> RepartitionView {
        RepartitionView {
            node: None,
            gpu,
            at_ms,
            took_ms: 5,
            layout: vec!["7g.80gb@0".into()],
            destroyed: Vec::new(),
            created: vec!["7g.80gb@0".into()],
        }
    }

    #[test]
    fn the_newest_repartitions_are_kept_newest_first_and_all_are_counted() {
        let m = Metrics::new();
        for n in 0..(RECENT_REPARTITIONS as u64 + 5) {
            m.repartitioned(repartition((n % 2) as u32, n));
        }
        let recent = m.recent_repartitions();
        assert_eq!(recent.len(), RECENT_REPARTITIONS);
        assert_eq!(recent[0].at_ms, RECENT_REPARTITIONS as u64 + 4);
        assert!(recent.windows(2).all(|w| w[0].at_ms > w[1].at_ms));
        let text = m.render();
        assert!(text.contains(&format!(
            "tessera_repartitions_total {}",
            RECENT_REPARTITIONS + 5
        )));
        assert!(
            text.contains("tessera_repartition_duration_seconds_count{gpu=\"0\"} 13"),
            "{text}"
        );
    }

    #[test]
    fn each_xid_code_is_counted_once_per_gpu() {
        let m = Metrics::new();
        m.xids(3, [79, 79]);
        m.xids(3, [79, 48]);
        m.xids(1, [79]);
        let text = m.render();
        for line in [
            "tessera_gpu_xid_errors_total{gpu=\"3\",xid=\"79\"} 1",
            "tessera_gpu_xid_errors_total{gpu=\"3\",xid=\"48\"} 1",
            "tessera_gpu_xid_errors_total{gpu=\"1\",xid=\"79\"} 1",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }
}
