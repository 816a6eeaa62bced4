//! The scheduler's core, without I/O: it takes what the executor observed (the active
//! requests, every GPU's state, the heartbeats) and the time, and says what to do. It never
//! reads a clock, a process, a GPU or the database; the executor (the scheduler thread, `scheduler.rs`) does
//! that and reports back, in the manner of raft-rs's `Ready`/`advance`.
//!
//! A pass has two parts:
//! - [`expiries`]: which requests end because their client is gone or silent (heartbeat
//!   deadlines on the caller's monotonic time; process verdicts from a [`ClientLiveness`]);
//! - [`PassCore`]: the queue. [`PassCore::to_empty`] names drained MIG GPUs to empty;
//!   [`PassCore::next_grant`] walks the queue in order and returns the next request to serve
//!   with how (a [`Serve`]), taking reservations for the ones that must wait; the executor
//!   carries each grant out (re-partition, MPS, cgroup, database) and reports
//!   [`PassCore::observed`], [`PassCore::granted`] or a failure before asking for the next, so
//!   a later request sees the GPUs as the earlier grants left them. [`PassCore::finish`]
//!   returns the [`Ready`]: the view to publish, the reservations, errors and wait reasons.
//!
//! The same inputs give the same decisions in the same order: everything here is ordered
//! maps and the queue's order (priority, then arrival).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tessera_model::Catalog;
use tessera_planner::GpuMode;

use crate::config::SchedulerSettings;
use crate::liveness::{ClientLiveness, Liveness, ProcessStamp};
use crate::sched::{self, GpuState, InstanceState, MpsClient, Reservation, Serve, Waiting};
use crate::store::RequestRow;
use crate::wire::{RequestState, Slice};

/// The queued requests among `active`, in queue order: higher priority first, then arrival.
pub fn queued_in_order(active: &[RequestRow]) -> Vec<&RequestRow> {
    let mut queue: Vec<&RequestRow> = active
        .iter()
        .filter(|r| r.state == RequestState::Queued)
        .collect();
    queue.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
    queue
}

/// What a liveness check decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// End it as expired, for this reason.
    Expire {
        /// The request.
        id: u64,
        /// Why (client gone, or no heartbeat for so long).
        reason: String,
    },
    /// Its client's process could not be checked (no verdict; the heartbeat decides).
    Unknown {
        /// The request.
        id: u64,
        /// Why not.
        why: String,
    },
}

/// Heartbeat deadlines count the daemon's own progress: when the previous check (`last_check`)
/// lies much longer than a tick before `now` (the daemon was stopped or starved), every
/// request's last heartbeat moves forward by the stall, so that heartbeats queued meanwhile
/// get read before anyone is judged silent. Returns the stall credited, if any.
pub fn credit_stall(
    heartbeats: &mut BTreeMap<u64, Instant>,
    last_check: &mut Option<Instant>,
    now: Instant,
    tick: Duration,
) -> Option<Duration> {
    let allowed = tick + tick.max(Duration::from_secs(1));
    let prev = last_check.replace(now)?;
    let gap = now.saturating_duration_since(prev);
    if gap <= allowed {
        return None;
    }
    let stall = gap - tick;
    for last in heartbeats.values_mut() {
        *last = (*last + stall).min(now);
    }
    Some(stall)
}

/// Which of the `active` requests end now: the client process is gone (by `liveness`), or no
/// heartbeat arrived for longer than `timeout` before `now`. A request without a heartbeat yet
/// gets `now` as its first. Unknown process verdicts are reported, never ended on.
pub fn expiries(
    active: &[RequestRow],
    heartbeats: &mut BTreeMap<u64, Instant>,
    now: Instant,
    timeout: Duration,
    liveness: &dyn ClientLiveness,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    for r in active {
        let gone = match (r.pid, r.pid_start) {
            (Some(pid), Some(start_ticks)) => {
                match liveness.check(ProcessStamp { pid, start_ticks }) {
                    Liveness::Gone(why) => Some(why),
                    Liveness::Unknown(why) => {
                        out.push(Verdict::Unknown { id: r.id, why });
                        None
                    }
                    Liveness::Alive => None,
                }
            }
            _ => None,
        };
        let last = *heartbeats.entry(r.id).or_insert(now);
        let quiet = now.saturating_duration_since(last);
        let silent = (quiet > timeout).then(|| format!("no heartbeat for {}s", quiet.as_secs()));
        if let Some(reason) = gone.or(silent) {
            out.push(Verdict::Expire { id: r.id, reason });
        }
    }
    out
}

/// What one pass decided, for the executor to publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ready {
    /// Every GPU as the pass left it.
    pub gpus: Vec<GpuState>,
    /// The reservations of waiting requests.
    pub reservations: Vec<Reservation>,
    /// Per GPU, what went wrong on it.
    pub errors: BTreeMap<u32, String>,
    /// Why each request still queued waits.
    pub waits: BTreeMap<u64, String>,
    /// Requests granted in this pass, in order.
    pub granted: Vec<u64>,
    /// Requests still queued.
    pub queued: usize,
}

/// One request to serve now, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The request.
    pub request: u64,
    /// Where and how (GPU, new layout if any, slice).
    pub serve: Serve,
}

/// The queue part of one scheduling pass (see the module docs).
#[derive(Debug)]
pub struct PassCore<'a> {
    catalog: &'a Catalog,
    settings: SchedulerSettings,
    queue: Vec<(Waiting, Option<u32>)>,
    next: usize,
    gpus: Vec<GpuState>,
    reservations: Vec<Reservation>,
    errors: BTreeMap<u32, String>,
    granted: Vec<u64>,
}

impl<'a> PassCore<'a> {
    /// A pass over the queued requests of `active` at `now_ms` (Unix ms: how long each has
    /// waited decides whether it may reserve), with the GPUs as observed and the errors the
    /// observation found.
    pub fn new(
        catalog: &'a Catalog,
        settings: &SchedulerSettings,
        now_ms: u64,
        active: &[RequestRow],
        gpus: Vec<GpuState>,
        errors: BTreeMap<u32, String>,
    ) -> Self {
        let queue = queued_in_order(active)
            .into_iter()
            .map(|r| {
                (
                    Waiting {
                        id: r.id,
                        uid: r.uid,
                        ask: r.ask.clone(),
                        gpu_model: r.gpu_model.clone(),
                        waited_ms: now_ms.saturating_sub(r.submitted_ms),
                    },
                    r.pid,
                )
            })
            .collect();
        PassCore {
            catalog,
            settings: settings.clone(),
            queue,
            next: 0,
            gpus,
            reservations: Vec::new(),
            errors,
            granted: Vec::new(),
        }
    }

    /// Drained MIG GPUs with instances and nothing running: the executor empties them (the
    /// layout `[]`) and reports [`PassCore::emptied`] or [`PassCore::error`].
    pub fn to_empty(&self) -> Vec<u32> {
        self.gpus
            .iter()
            .filter(|g| {
                g.drained
                    && g.facts.mode == GpuMode::Mig
                    && !g.in_use()
                    && !g.instances.is_empty()
                    && !g.failed
            })
            .map(|g| g.facts.index)
            .collect()
    }

    /// A GPU of [`PassCore::to_empty`] was emptied.
    pub fn emptied(&mut self, gpu: u32) {
        if let Some(g) = self.gpu_mut(gpu) {
            g.instances.clear();
        }
    }

    /// The next request to serve, in queue order; requests passed over that must wait may
    /// reserve a GPU on the way. `None` when the queue is done.
    pub fn next_grant(&mut self) -> Option<Grant> {
        while self.next < self.queue.len() {
            let (w, _) = &self.queue[self.next];
            self.next += 1;
            match sched::decide(self.catalog, &self.gpus, w, &self.reservations) {
                Some(serve) => {
                    return Some(Grant {
                        request: w.id,
                        serve,
                    })
                }
                None => {
                    if (self.reservations.len() as u32) < self.settings.max_reserved_gpus
                        && w.waited_ms >= self.settings.reserve_after_ms
                    {
                        if let Some(res) =
                            sched::reserve(self.catalog, &self.gpus, w, &self.reservations)
                        {
                            self.reservations.push(res);
                        }
                    }
                }
            }
        }
        None
    }

    /// The GPU `gpu` as the pass sees it now.
    pub fn gpu(&self, gpu: u32) -> Option<&GpuState> {
        self.gpus.iter().find(|g| g.facts.index == gpu)
    }

    fn gpu_mut(&mut self, gpu: u32) -> Option<&mut GpuState> {
        self.gpus.iter_mut().find(|g| g.facts.index == gpu)
    }

    /// The MIG instances of `gpu` as observed again (after a re-partition).
    pub fn observed(&mut self, gpu: u32, instances: Vec<InstanceState>) {
        if let Some(g) = self.gpu_mut(gpu) {
            g.instances = instances;
        }
    }

    /// Something went wrong on `gpu`; shown in its status.
    pub fn error(&mut self, gpu: u32, error: impl Into<String>) {
        self.errors.insert(gpu, error.into());
    }

    /// A change on `gpu` failed: skip the GPU for the rest of this pass.
    pub fn fail(&mut self, gpu: u32, error: impl Into<String>) {
        self.error(gpu, error);
        if let Some(g) = self.gpu_mut(gpu) {
            g.failed = true;
        }
    }

    /// `request` was leased `slice` (recorded in the database): its slice is in use for the
    /// requests after it.
    pub fn granted(&mut self, request: u64, slice: &Slice) {
        let Some((w, pid)) = self.queue.iter().find(|(w, _)| w.id == request).cloned() else {
            return;
        };
        self.granted.push(request);
        let Some(g) = self.gpu_mut(slice.gpu()) else {
            return;
        };
        match slice {
            Slice::Mig { start, .. } => {
                if let Some(i) = g.instances.iter_mut().find(|i| i.at.start() == *start) {
                    i.lease = Some(request);
                    i.pids = vec![pid.unwrap_or(0)];
                }
            }
            Slice::Mps {
                memory_mib,
                sm_percent,
                ..
            } => g.mps_clients.push(MpsClient {
                lease: request,
                uid: w.uid,
                memory_mib: *memory_mib,
                sm_percent: *sm_percent,
            }),
            Slice::Timeslice { replica, .. } => {
                g.replicas.insert(*replica, request);
            }
        }
    }

    /// The GPUs, reservations, errors and the number still queued, as of now (the executor
    /// publishes them after each grant, so status shows a lease as soon as the database does).
    pub fn view(&self) -> (&[GpuState], &[Reservation], &BTreeMap<u32, String>, usize) {
        (
            &self.gpus,
            &self.reservations,
            &self.errors,
            self.queue.len() - self.granted.len(),
        )
    }

    /// The pass's outcome, with the reason each request still queued waits.
    pub fn finish(self) -> Ready {
        let granted: BTreeSet<u64> = self.granted.iter().copied().collect();
        let waits = self
            .queue
            .iter()
            .filter(|(w, _)| !granted.contains(&w.id))
            .map(|(w, _)| {
                (
                    w.id,
                    sched::why_waiting(self.catalog, &self.gpus, w, &self.reservations),
                )
            })
            .collect();
        Ready {
            queued: self.queue.len() - granted.len(),
            gpus: self.gpus,
            reservations: self.reservations,
            errors: self.errors,
            waits,
            granted: self.granted,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core on virtual time: no clock is read, no thread runs, nothing sleeps.
    use super::*;
    use crate::config::MpsSettings;
    use crate::fleet::GpuFacts;
    use crate::wire::SliceAsk;

    fn mig_gpu(index: u32) -> GpuState {
        let m = Catalog::builtin().lookup("h100-80gb").unwrap();
        GpuState::empty(GpuFacts {
            index,
            uuid: format!("GPU-{index}"),
            model: m.key.clone(),
            mode: GpuMode::Mig,
            memory_mib: m.memory_mib().unwrap(),
            mps: MpsSettings::default(),
            replicas: 2,
        })
    }

    fn inst(profile: &str, start: u8, lease: Option<u64>) -> InstanceState {
        let h100 = Catalog::builtin().lookup("h100-80gb").unwrap();
        InstanceState {
            at: crate::sched::InstanceAt::resolve(h100, profile, start),
            uuid: Some(format!("MIG-{profile}-{start}")),
            lease,
            pids: lease.map(|_| vec![1]).unwrap_or_default(),
        }
    }

    fn row(id: u64, priority: i32, profile: &str, submitted_ms: u64) -> RequestRow {
        RequestRow {
            id,
            uid: 1000,
            user: "alice".into(),
            pid: None,
            pid_start: None,
            ask: SliceAsk::Mig {
                profile: profile.into(),
            },
            gpu_model: None,
            priority,
            command: vec!["job".into()],
            state: RequestState::Queued,
            submitted_ms,
            leased_ms: None,
            ended_ms: None,
            slice: None,
            env: BTreeMap::new(),
            exit_code: None,
            end_reason: None,
            cancel_requested: false,
        }
    }

    /// Carry a grant out as the executor would on a GPU that does what it is told.
    fn carry_out(core: &mut PassCore<'_>, g: &Grant) {
        let crate::sched::Pick::Mig(placed) = &g.serve.pick else {
            panic!("a MIG pick: {g:?}")
        };
        let model = Catalog::builtin().lookup("h100-80gb").unwrap();
        let (profile, start) = (&model.profile(placed.profile).name, &placed.start);
        if let Some(layout) = &g.serve.layout {
            let old = core.gpu(g.serve.gpu).unwrap().instances.clone();
            let list = layout
                .iter()
                .map(|p| {
                    let name = model.profile(p.profile).name.clone();
                    let lease = old
                        .iter()
                        .find(|i| i.at.placed() == Some(*p))
                        .and_then(|i| i.lease);
                    inst(&name, p.start, lease)
                })
                .collect();
            core.observed(g.serve.gpu, list);
        }
        let slice = Slice::Mig {
            gpu: g.serve.gpu,
            profile: profile.clone(),
            start: *start,
            uuid: format!("MIG-{profile}-{start}"),
        };
        core.granted(g.request, &slice);
    }

    fn run(core: &mut PassCore<'_>) -> Vec<u64> {
        let mut order = Vec::new();
        while let Some(g) = core.next_grant() {
            carry_out(core, &g);
            order.push(g.request);
        }
        order
    }

    #[test]
    fn the_queue_is_served_by_priority_then_arrival() {
        let settings = SchedulerSettings::default();
        let active = vec![
            row(1, 0, "3g.40gb", 0),
            row(2, 5, "3g.40gb", 10),
            row(3, 5, "3g.40gb", 20),
            row(4, -1, "3g.40gb", 30),
        ];
        let mut core = PassCore::new(
            Catalog::builtin(),
            &settings,
            1_000,
            &active,
            vec![mig_gpu(0)],
            BTreeMap::new(),
        );
        // An H100 holds two 3g.40gb: the two of priority 5, in arrival order.
        assert_eq!(run(&mut core), vec![2, 3]);
        let ready = core.finish();
        assert_eq!(ready.granted, vec![2, 3]);
        assert_eq!(ready.queued, 2);
        assert_eq!(ready.waits.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(ready.gpus[0].busy(), 2);
    }

    #[test]
    fn the_same_input_gives_the_same_pass() {
        let settings = SchedulerSettings::default();
        let active: Vec<RequestRow> = (1..=9)
            .map(|i| {
                let p = ["1g.10gb", "2g.20gb", "3g.40gb"][(i % 3) as usize];
                row(i, (i % 2) as i32, p, i * 7)
            })
            .collect();
        let pass = || {
            let mut core = PassCore::new(
                Catalog::builtin(),
                &settings,
                500,
                &active,
                vec![mig_gpu(0), mig_gpu(1)],
                BTreeMap::new(),
            );
            let order = run(&mut core);
            (order, core.finish())
        };
        let (a, ra) = pass();
        let (b, rb) = pass();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_eq!(ra, rb);
    }

    /// Starvation hold: a whole-GPU request that cannot be served reserves the GPU once it has
    /// waited `reserve_after_ms` on the pass's (virtual) time, and from then on a small
    /// request that would fit next to the running lease is held back instead of served.
    #[test]
    fn a_starving_request_holds_the_gpu_once_it_has_waited_long_enough() {
        let settings = SchedulerSettings {
            reserve_after_ms: 10_000,
            ..SchedulerSettings::default()
        };
        let mut gpu = mig_gpu(0);
        gpu.instances = vec![inst("1g.10gb", 6, Some(99))];
        let active = vec![row(1, 0, "7g.80gb", 0), row(2, 0, "1g.10gb", 1_000)];
        let pass_at = |now_ms: u64| {
            let mut core = PassCore::new(
                Catalog::builtin(),
                &settings,
                now_ms,
                &active,
                vec![gpu.clone()],
                BTreeMap::new(),
            );
            let order = run(&mut core);
            (order, core.finish())
        };
        let (early, ready) = pass_at(9_999);
        assert_eq!(
            early,
            vec![2],
            "before the hold the small request is served"
        );
        assert!(ready.reservations.is_empty());
        let (late, ready) = pass_at(10_000);
        assert_eq!(
            late,
            Vec::<u64>::new(),
            "the hold keeps the GPU for request 1"
        );
        assert_eq!(ready.reservations.len(), 1);
        assert_eq!(ready.reservations[0].request, 1);
        assert_eq!(ready.reservations[0].gpu, 0);
        assert_eq!(ready.queued, 2);
    }

    #[test]
    fn a_drained_idle_gpu_is_emptied_and_a_busy_one_is_not() {
        let settings = SchedulerSettings::default();
        let mut idle = mig_gpu(0);
        idle.drained = true;
        idle.instances = vec![inst("3g.40gb", 0, None)];
        let mut busy = mig_gpu(1);
        busy.drained = true;
        busy.instances = vec![inst("3g.40gb", 0, Some(5))];
        let mut core = PassCore::new(
            Catalog::builtin(),
            &settings,
            0,
            &[],
            vec![idle, busy],
            BTreeMap::new(),
        );
        assert_eq!(core.to_empty(), vec![0]);
        core.emptied(0);
        assert!(core.gpu(0).unwrap().instances.is_empty());
        assert!(core.to_empty().is_empty());
    }

    /// A failed change on a GPU keeps the rest of the pass off it; the next request goes
    /// elsewhere.
    #[test]
    fn a_failed_gpu_is_skipped_for_the_rest_of_the_pass() {
        let settings = SchedulerSettings::default();
        let active = vec![row(1, 0, "7g.80gb", 0), row(2, 0, "7g.80gb", 1)];
        let mut core = PassCore::new(
            Catalog::builtin(),
            &settings,
            10,
            &active,
            vec![mig_gpu(0), mig_gpu(1)],
            BTreeMap::new(),
        );
        let first = core.next_grant().unwrap();
        assert_eq!((first.request, first.serve.gpu), (1, 0));
        core.fail(0, "create failed");
        let second = core.next_grant().unwrap();
        assert_eq!((second.request, second.serve.gpu), (2, 1));
        let ready = core.finish();
        assert_eq!(
            ready.errors.get(&0).map(String::as_str),
            Some("create failed")
        );
    }

    struct Verdicts(BTreeMap<u32, Liveness>);

    impl ClientLiveness for Verdicts {
        fn check(&self, stamp: ProcessStamp) -> Liveness {
            self.0.get(&stamp.pid).cloned().unwrap_or(Liveness::Alive)
        }
    }

    fn leased(id: u64, pid: Option<u32>) -> RequestRow {
        RequestRow {
            state: RequestState::Leased,
            pid,
            pid_start: pid.map(|_| 42),
            ..row(id, 0, "1g.10gb", 0)
        }
    }

    #[test]
    fn heartbeat_deadlines_run_on_the_callers_time() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let active = vec![leased(1, None)];
        let alive = Verdicts(BTreeMap::new());
        let mut hb = BTreeMap::new();
        // The first check gives a request without a heartbeat its first one.
        assert!(expiries(&active, &mut hb, t0, timeout, &alive).is_empty());
        assert_eq!(hb[&1], t0);
        assert!(expiries(&active, &mut hb, t0 + timeout, timeout, &alive).is_empty());
        let v = expiries(
            &active,
            &mut hb,
            t0 + timeout + Duration::from_secs(1),
            timeout,
            &alive,
        );
        assert_eq!(
            v,
            vec![Verdict::Expire {
                id: 1,
                reason: "no heartbeat for 31s".into()
            }]
        );
        // A heartbeat moves the deadline.
        hb.insert(1, t0 + Duration::from_secs(20));
        assert!(expiries(
            &active,
            &mut hb,
            t0 + Duration::from_secs(45),
            timeout,
            &alive
        )
        .is_empty());
    }

    #[test]
    fn only_a_definite_verdict_ends_a_lease_with_fresh_heartbeats() {
        let t0 = Instant::now();
        let active = vec![
            leased(1, Some(100)),
            leased(2, Some(200)),
            leased(3, Some(300)),
        ];
        let probe = Verdicts(
            [
                (100, Liveness::Gone("client process 100 is gone".into())),
                (200, Liveness::Unknown("EMFILE".into())),
            ]
            .into_iter()
            .collect(),
        );
        let mut hb: BTreeMap<u64, Instant> = [(1, t0), (2, t0), (3, t0)].into_iter().collect();
        let v = expiries(&active, &mut hb, t0, Duration::from_secs(30), &probe);
        assert_eq!(
            v,
            vec![
                Verdict::Expire {
                    id: 1,
                    reason: "client process 100 is gone".into()
                },
                Verdict::Unknown {
                    id: 2,
                    why: "EMFILE".into()
                },
            ]
        );
    }

    /// A daemon paused for a minute (virtual time jumps) judges no one silent on its first
    /// check after the pause: the stall is credited to every heartbeat.
    #[test]
    fn a_stall_is_credited_to_every_heartbeat() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(50);
        let timeout = Duration::from_secs(3);
        let active = vec![leased(1, None)];
        let alive = Verdicts(BTreeMap::new());
        let mut hb: BTreeMap<u64, Instant> = [(1, t0)].into_iter().collect();
        let mut last = None;
        assert_eq!(credit_stall(&mut hb, &mut last, t0, tick), None);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            credit_stall(&mut hb, &mut last, later, tick),
            Some(Duration::from_secs(60) - tick)
        );
        assert!(expiries(&active, &mut hb, later, timeout, &alive).is_empty());
        // Without heartbeats it still expires once the daemon has run for the timeout.
        let mut now = later;
        let mut expired = false;
        for _ in 0..100 {
            now += tick;
            assert_eq!(credit_stall(&mut hb, &mut last, now, tick), None);
            if !expiries(&active, &mut hb, now, timeout, &alive).is_empty() {
                expired = true;
                break;
            }
        }
        assert!(
            expired,
            "a silent client expires {timeout:?} after the pause"
        );
    }
}
