//! The daemon's core: the shared state, the API operations (called by the HTTP handlers and,
//! in-process, by the demo), and the scheduler thread that owns the GPUs.
//!
//! # Threads
//! - API calls run on tokio tasks. They read and write the SQLite store (short transactions
//!   behind a mutex), never touch the GPUs, and wake the scheduler through a channel.
//! - One scheduler thread owns the [`Fleet`] (the GPU backend). A *pass* runs on every wake-up
//!   and at least every `scheduler.tick_ms`: liveness checks, drains, then the queue (see
//!   [`crate::sched`]). Only this thread grants leases and changes layouts, so a lease it
//!   reads as held at the start of a pass cannot appear or move during it; leases can only
//!   end, which is safe.
//!
//! # Lease liveness (what docs/serving.md states)
//! A request (queued or leased) ends as `expired` when either
//! 1. its client process is gone: the daemon recorded the client's PID from the socket's peer
//!    credentials and that process's start time (`/proc/PID/stat` field 22) at submission,
//!    and each pass checks that a non-zombie process with that PID *and that start time*
//!    exists (so a reused PID does not keep a lease alive); or
//! 2. no heartbeat arrived for `lease.heartbeat_timeout_ms` (default 30 s). `tessera run`
//!    sends one every `lease.heartbeat_interval_ms` (5 s) while it runs CMD, and its queue
//!    waits (long polls of at most that interval) count as heartbeats. HTTP clients have no
//!    PID, so for them only the heartbeat applies. After a daemon restart every request gets a
//!    fresh full timeout, so clients have time to reconnect.
//!
//! Only a definite answer counts as "gone" (see [`crate::liveness::Liveness`]): a `/proc`
//! entry that cannot be read (no file descriptors left) leaves the heartbeat to decide.
//! Heartbeat deadlines count the daemon's own progress: when the scheduler did not run for
//! well over a tick (the daemon was stopped or starved), the stall is added to every
//! request's last heartbeat before anyone is judged silent.
//!
//! If the scheduler thread panics, the reason is recorded ([`Daemon::scheduler_died`]), new
//! requests are refused with 503, and `tessera serve` exits with an error.
//!
//! # Restart (what ARCHITECTURE.md states)
//! On start the daemon (1) opens the database and checks its schema version, (2) opens the
//! backend, (3) for every MIG GPU with a stored desired layout, runs the reconciler to that
//! layout again, which finishes a re-partition cut short (dangling journal intents are
//! logged; the reconciler observes the GPU and decides from what it sees), (4) re-adopts
//! leased requests as they are (their commands keep running under their own `tessera run`),
//! re-marks their simulated instances busy, and gives every request a fresh heartbeat
//! deadline, and (5) keeps the queue as stored. Then the API opens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_model::{Catalog, Placed};
use tessera_planner::GpuMode;

use crate::config::Config;
use crate::error::{ApiError, ServerError};
use tessera_agent::journal::JOURNAL_VERSION;
use tessera_agent::{Entry, EntryKind, Journal, JournalError, OpRecord, Outcome};

use crate::fleet::{ApplyError, Fleet, GpuFacts};
use crate::ident::Identity;
use crate::isolate::{Enforcer, Quarantine};
use crate::liveness::{Clock, Liveness, MonotonicClock, ProcessStamp};
use crate::metrics::Metrics;
use crate::sched::{self, GpuState, InstanceState, MpsClient, Pick, Reservation, Waiting};
use crate::store::{NewRequest, RequestRow, Store};
use crate::wire::{
    GpuView, InstanceView, ReleaseBody, RequestState, RequestView, ShareView, Slice, SliceAsk,
    StatusView, SubmitBody,
};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the scheduler last saw: every GPU, the reservations and errors.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    gpus: Vec<GpuState>,
    reservations: Vec<Reservation>,
    errors: BTreeMap<u32, String>,
    /// Why each queued request waits, as of the last full pass.
    waits: BTreeMap<u64, String>,
}

/// Messages to the scheduler thread.
enum Cmd {
    /// Something changed: run a pass soon.
    Kick,
    /// Force a MIG layout on a GPU (root's `POST /v1/gpus/N/layout`).
    Layout {
        gpu: u32,
        layout: Vec<Placed>,
        reply: tokio::sync::oneshot::Sender<Result<(), ApiError>>,
    },
    /// Stop the thread.
    Stop,
    /// Panic inside a pass (tests of what a dying scheduler does).
    #[cfg(test)]
    Panic,
}

struct Inner {
    store: Mutex<Store>,
    catalog: Catalog,
    cfg: Config,
    gpus: Vec<GpuFacts>,
    backend: String,
    snapshot: RwLock<Snapshot>,
    tx: Mutex<mpsc::Sender<Cmd>>,
    changes: tokio::sync::watch::Sender<u64>,
    heartbeats: Mutex<BTreeMap<u64, Instant>>,
    /// The time heartbeats are measured on.
    clock: Arc<dyn Clock>,
    /// Scheduling passes run so far.
    passes: AtomicU64,
    metrics: Metrics,
    stopped: AtomicBool,
    /// Why the scheduler thread died (`None` while it runs or after a clean stop).
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// Warnings from the start (a state directory fixed, a database that looks emptied).
    notices: Mutex<Vec<String>>,
    state_dir: PathBuf,
    /// Slices held back after their lease ended (see [`crate::isolate`]).
    quarantine: RwLock<Vec<Quarantine>>,
}

/// A running daemon core. Cheap to clone; every clone talks to the same state.
#[derive(Clone)]
pub struct Daemon {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("backend", &self.inner.backend)
            .field("state_dir", &self.inner.state_dir)
            .finish()
    }
}

/// The scheduler thread's handle; dropping it does not stop the thread ([`Daemon::stop`] does).
pub struct SchedulerHandle {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Wait for the scheduler thread to finish (after [`Daemon::stop`]).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn api_err(e: ServerError) -> ApiError {
    ApiError::internal(e)
}

/// The queued requests among `active`, in queue order: higher priority first, then arrival.
fn queued_in_order(active: &[RequestRow]) -> Vec<&RequestRow> {
    let mut queue: Vec<&RequestRow> = active
        .iter()
        .filter(|r| r.state == RequestState::Queued)
        .collect();
    queue.sort_by_key(|r| (std::cmp::Reverse(r.priority), r.id));
    queue
}

impl Daemon {
    /// Open the state, recover, and start the scheduler thread. `fleet` is the opened
    /// backend (see [`Fleet::open`]).
    pub fn start(
        cfg: Config,
        catalog: Catalog,
        fleet: Fleet,
    ) -> Result<(Daemon, SchedulerHandle), ServerError> {
        Daemon::start_with_clock(cfg, catalog, fleet, Arc::new(MonotonicClock))
    }

    /// [`Daemon::start`] with heartbeats measured on `clock` (tests jump it to play a paused
    /// daemon).
    pub fn start_with_clock(
        cfg: Config,
        catalog: Catalog,
        fleet: Fleet,
        clock: Arc<dyn Clock>,
    ) -> Result<(Daemon, SchedulerHandle), ServerError> {
        let state_dir = cfg.state_dir();
        let notices: Vec<String> = crate::serve::secure_state_dir(&state_dir)?
            .into_iter()
            .collect();
        let store = Store::open(&state_dir.join("tessera.db"))?;
        let iso = Enforcer::new(&cfg, fleet.is_sim())?;
        let (tx, rx) = mpsc::channel();
        let (changes, _) = tokio::sync::watch::channel(0u64);
        let gpus = fleet.gpus.clone();
        let inner = Arc::new(Inner {
            store: Mutex::new(store),
            catalog,
            gpus,
            backend: fleet.describe().to_string(),
            snapshot: RwLock::new(Snapshot::default()),
            tx: Mutex::new(tx),
            changes,
            heartbeats: Mutex::new(BTreeMap::new()),
            clock,
            passes: AtomicU64::new(0),
            metrics: Metrics::new(),
            stopped: AtomicBool::new(false),
            failure: tokio::sync::watch::channel(None).0,
            notices: Mutex::new(notices),
            state_dir,
            quarantine: RwLock::new(Vec::new()),
            cfg,
        });
        let daemon = Daemon { inner };
        let mut sched = Scheduler {
            d: daemon.clone(),
            fleet,
            iso,
            last_check: None,
            unknown_logged: BTreeSet::new(),
        };
        sched.recover()?;
        sched.pass();
        let thread = std::thread::Builder::new()
            .name("tessera-scheduler".into())
            .spawn(move || sched.run(rx))
            .map_err(|e| ServerError::io("scheduler thread", e))?;
        Ok((
            daemon,
            SchedulerHandle {
                thread: Some(thread),
            },
        ))
    }

    /// Stop the scheduler thread (leases and queue stay in the database).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let _ = lock(&self.inner.tx).send(Cmd::Stop);
    }

    /// Why the scheduler thread died, if it did. Without it nothing is granted or expired,
    /// so the daemon must stop (see [`Daemon::scheduler_died`]).
    pub fn scheduler_failure(&self) -> Option<String> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves (with the reason) once the scheduler thread has died; `tessera serve` stops
    /// the daemon with an error then, so that a supervisor restarts it.
    pub async fn scheduler_died(&self) -> String {
        let mut rx = self.inner.failure.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the scheduler thread is gone".into();
            }
        }
    }

    /// The warnings of the start, as logged: what was fixed or looks wrong in the state.
    pub fn notices(&self) -> Vec<String> {
        lock(&self.inner.notices).clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The GPUs.
    pub fn gpus(&self) -> &[GpuFacts] {
        &self.inner.gpus
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    fn kick(&self) {
        let _ = lock(&self.inner.tx).send(Cmd::Kick);
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    fn beat(&self, id: u64) {
        let now = self.inner.clock.now();
        lock(&self.inner.heartbeats).insert(id, now);
    }

    /// How many scheduling passes have run (tests wait on it instead of sleeping).
    pub fn passes(&self) -> u64 {
        self.inner.passes.load(Ordering::SeqCst)
    }

    fn visible(&self, who: &Identity, id: u64) -> Result<RequestRow, ApiError> {
        let row = lock(&self.inner.store).get(id).map_err(api_err)?;
        match row {
            Some(r) if who.may_see(r.uid) => Ok(r),
            _ => Err(ApiError::not_found(format!(
                "request {id} not found (or it is not yours); `tessera ps` lists yours"
            ))),
        }
    }

    /// The API view of a row (positions computed from the active queue).
    fn view(&self, r: &RequestRow, who: &Identity) -> RequestView {
        let now = now_ms();
        let (position, queue_length) = if r.state == RequestState::Queued {
            let queue = self.queue_order();
            let pos = queue
                .iter()
                .position(|id| *id == r.id)
                .map(|p| p as u32 + 1);
            (pos, Some(queue.len() as u32))
        } else {
            (None, None)
        };
        self.view_with(r, who, now, position, queue_length)
    }

    fn view_with(
        &self,
        r: &RequestRow,
        who: &Identity,
        now: u64,
        position: Option<u32>,
        queue_length: Option<u32>,
    ) -> RequestView {
        let waited_until = r.leased_ms.or(r.ended_ms).unwrap_or(now);
        let running_ms = match r.leased_ms {
            Some(l) => r.ended_ms.unwrap_or(now).saturating_sub(l),
            None => 0,
        };
        let mine = who.may_see(r.uid);
        let wait_reason = if r.state == RequestState::Queued {
            self.inner
                .snapshot
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .waits
                .get(&r.id)
                .cloned()
        } else {
            None
        };
        RequestView {
            id: r.id,
            user: r.user.clone(),
            uid: r.uid,
            ask: r.ask.clone(),
            gpu_model: r.gpu_model.clone(),
            priority: r.priority,
            state: r.state,
            position,
            queue_length,
            submitted_ms: r.submitted_ms,
            waited_ms: waited_until.saturating_sub(r.submitted_ms),
            running_ms,
            // Another user's slice identity, environment and command stay hidden.
            slice: r.slice.clone().filter(|_| mine),
            env: if mine { r.env.clone() } else { BTreeMap::new() },
            command: if mine { r.command.clone() } else { Vec::new() },
            wait_reason,
            exit_code: r.exit_code,
            end_reason: r.end_reason.clone(),
            cancel_requested: r.cancel_requested,
            heartbeat_interval_ms: self.inner.cfg.lease.heartbeat_interval_ms,
        }
    }

    /// IDs of queued requests in queue order (priority, then arrival).
    fn queue_order(&self) -> Vec<u64> {
        let active = lock(&self.inner.store).active().unwrap_or_default();
        queued_in_order(&active).into_iter().map(|r| r.id).collect()
    }

    /// `POST /v1/requests`: queue a request for the caller.
    pub fn submit(&self, who: &Identity, body: SubmitBody) -> Result<RequestView, ApiError> {
        if let Some(why) = self.scheduler_failure() {
            return Err(ApiError::unavailable(format!(
                "the daemon's scheduler stopped ({why}); the daemon is shutting down, try again after it restarts"
            )));
        }
        if !(-1000..=1000).contains(&body.priority) {
            return Err(ApiError::bad_request(format!(
                "priority {} is out of range; give -1000 to 1000",
                body.priority
            )));
        }
        match &body.slice {
            SliceAsk::Mig { profile } if profile.trim().is_empty() => {
                return Err(ApiError::bad_request(
                    "the MIG profile is empty; give one such as 1g.10gb",
                ))
            }
            SliceAsk::Mem {
                memory_mib,
                sm_percent,
            }
            | SliceAsk::Mps {
                memory_mib,
                sm_percent,
            } => {
                if *memory_mib == 0 {
                    return Err(ApiError::bad_request("memory_mib must be at least 1"));
                }
                if let Some(sm) = sm_percent {
                    if !(1..=100).contains(sm) {
                        return Err(ApiError::bad_request(format!(
                            "sm_percent {sm} is out of range; give 1 to 100"
                        )));
                    }
                }
            }
            _ => {}
        }
        if body.command.len() > 4096 || body.command.iter().map(String::len).sum::<usize>() > 65536
        {
            return Err(ApiError::bad_request(
                "the command line is too long to record",
            ));
        }
        let gpu_model = match &body.gpu_model {
            Some(q) => Some(
                resolve_model(&self.inner.catalog, &self.inner.gpus, q).ok_or_else(|| {
                    let here: Vec<&str> =
                        self.inner.gpus.iter().map(|g| g.model.as_str()).collect();
                    ApiError::bad_request(format!(
                        "unknown GPU model `{q}`{}; this machine has {}",
                        tessera_model::suggest::hint(q, here),
                        self.model_list()
                    ))
                })?,
            ),
            None => None,
        };
        if let SliceAsk::Mig { profile } = &body.slice {
            // A name no model has is a typo (bad input), not a slice this machine lacks.
            if !self.inner.catalog.has_profile(profile) {
                let guess = self
                    .inner
                    .catalog
                    .suggest_profile(profile)
                    .map(|p| format!("; did you mean `{p}`?"))
                    .unwrap_or_default();
                return Err(ApiError::bad_request(format!(
                    "unknown MIG profile `{profile}`{guess} (`tessera profiles --gpu MODEL` lists a model's profiles)"
                )));
            }
        }
        let ask = match body.slice {
            SliceAsk::Mig { profile } => SliceAsk::Mig {
                profile: canonical_profile(&self.inner.catalog, &self.inner.gpus, &profile),
            },
            other => other,
        };
        sched::check_feasible(
            &self.inner.catalog,
            &self.inner.gpus,
            &ask,
            gpu_model.as_deref(),
        )
        .map_err(ApiError::unsatisfiable)?;
        let (pid, pid_start) = match who.process {
            Some(p) => (Some(p.pid), Some(p.start_ticks)),
            None => (None, None),
        };
        let new = NewRequest {
            uid: who.uid,
            user: who.user.clone(),
            pid,
            pid_start,
            ask,
            gpu_model,
            priority: body.priority,
            command: body.command,
            submitted_ms: now_ms(),
        };
        let id = lock(&self.inner.store).insert(&new).map_err(api_err)?;
        self.beat(id);
        tracing::info!(request = id, user = %who.user, "queued {}", new.ask);
        self.changed();
        self.kick();
        let row = lock(&self.inner.store)
            .get(id)
            .map_err(api_err)?
            .ok_or_else(|| ApiError::internal(format!("request {id} vanished after insert")))?;
        Ok(self.view(&row, who))
    }

    fn model_list(&self) -> String {
        let mut models: Vec<&str> = self.inner.gpus.iter().map(|g| g.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        models.join(", ")
    }

    /// `GET /v1/requests`: the caller's active requests (root: everyone's), plus with `all`
    /// the 100 most recently ended ones.
    pub fn list(&self, who: &Identity, all: bool) -> Result<Vec<RequestView>, ApiError> {
        let (active, ended) = {
            let s = lock(&self.inner.store);
            let active = s.active().map_err(api_err)?;
            let ended = if all {
                s.recent_ended(100).map_err(api_err)?
            } else {
                Vec::new()
            };
            (active, ended)
        };
        let now = now_ms();
        let queue = queued_in_order(&active);
        let qlen = queue.len() as u32;
        let pos: BTreeMap<u64, u32> = queue
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i as u32 + 1))
            .collect();
        let mut out: Vec<RequestView> = active
            .iter()
            .chain(ended.iter().rev())
            .filter(|r| who.may_see(r.uid))
            .map(|r| {
                let p = pos.get(&r.id).copied();
                self.view_with(r, who, now, p, p.map(|_| qlen))
            })
            .collect();
        out.sort_by_key(|v| v.id);
        Ok(out)
    }

    /// `GET /v1/requests/{id}`.
    pub fn get(&self, who: &Identity, id: u64) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        Ok(self.view(&row, who))
    }

    /// `POST /v1/requests/{id}/heartbeat`: the client is alive.
    pub fn heartbeat(&self, who: &Identity, id: u64) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        if row.state.is_active() && row.uid == who.uid {
            self.beat(id);
        }
        Ok(self.view(&row, who))
    }

    /// `GET /v1/requests/{id}/wait`: return once the request is no longer queued (or a
    /// leased one is cancelled), or after `timeout`. Counts as a heartbeat.
    pub async fn wait(
        &self,
        who: &Identity,
        id: u64,
        timeout: Duration,
    ) -> Result<RequestView, ApiError> {
        let mut rx = self.inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self.visible(who, id)?;
            if row.state.is_active() && row.uid == who.uid {
                self.beat(id);
            }
            if row.state != RequestState::Queued || tokio::time::Instant::now() >= deadline {
                return Ok(self.view(&row, who));
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { return Ok(self.view(&row, who)); } }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// `POST /v1/requests/{id}/release`: CMD ended (or the client gave up waiting).
    /// Releasing an ended request again is not an error (clients retry after restarts).
    pub fn release(
        &self,
        who: &Identity,
        id: u64,
        body: ReleaseBody,
    ) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        if row.state.is_active() {
            let (state, reason) = match (row.state, body.exit_code, body.signal) {
                (RequestState::Queued, _, _) => (
                    RequestState::Cancelled,
                    "withdrawn by the client".to_string(),
                ),
                (_, _, Some(sig)) => (RequestState::Done, format!("signal {sig}")),
                (_, Some(code), None) => (RequestState::Done, format!("exit {code}")),
                (_, None, None) => (RequestState::Done, "released".to_string()),
            };
            let code = body.exit_code.or(body.signal.map(|s| 128 + s));
            let ended = lock(&self.inner.store)
                .end(id, state, code, &reason, now_ms())
                .map_err(api_err)?;
            if ended {
                tracing::info!(request = id, user = %row.user, "ended: {reason}");
                lock(&self.inner.heartbeats).remove(&id);
                self.changed();
                self.kick();
            }
        }
        self.get(who, id)
    }

    /// `POST /v1/requests/{id}/cancel`: a queued request ends now; a leased one is marked so
    /// that its client stops CMD (the slice is freed when CMD has stopped).
    pub fn cancel(&self, who: &Identity, id: u64) -> Result<RequestView, ApiError> {
        let row = self.visible(who, id)?;
        match row.state {
            RequestState::Queued => {
                let reason = format!("cancelled by {}", who.user);
                let done = lock(&self.inner.store)
                    .end(id, RequestState::Cancelled, None, &reason, now_ms())
                    .map_err(api_err)?;
                if !done {
                    // It was leased in between: cancel the lease instead.
                    return self.cancel(who, id);
                }
                tracing::info!(request = id, "{reason}");
            }
            RequestState::Leased => {
                lock(&self.inner.store)
                    .request_cancel(id)
                    .map_err(api_err)?;
                tracing::info!(
                    request = id,
                    "lease cancelled by {}; waiting for CMD to stop",
                    who.user
                );
            }
            other => {
                return Err(ApiError::conflict(format!(
                    "request {id} already ended ({other}); nothing to cancel"
                )))
            }
        }
        self.changed();
        self.kick();
        self.get(who, id)
    }

    /// `GET /v1/status`: every GPU with its slices (holders shown to their owners and root).
    pub fn status(&self, who: &Identity) -> Result<StatusView, ApiError> {
        let (active, repartitions) = {
            let s = lock(&self.inner.store);
            (
                s.active().map_err(api_err)?,
                s.counter("repartitions").map_err(api_err)?,
            )
        };
        let owners: BTreeMap<u64, &RequestRow> = active.iter().map(|r| (r.id, r)).collect();
        let snap = self
            .inner
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let holder = |lease: Option<u64>| -> (Option<u64>, Option<String>) {
            match lease.and_then(|l| owners.get(&l)) {
                Some(r) if who.may_see(r.uid) => (Some(r.id), Some(r.user.clone())),
                _ => (None, None),
            }
        };
        let mut gpus = Vec::new();
        for g in &snap.gpus {
            let mut view = self.gpu_view(g, &snap, &holder);
            if !who.is_admin() {
                // A non-admin sees the identity (`MIG-…` UUID) of its own instances only:
                // others' are shown held, free ones by profile and place.
                for (v, i) in view.instances.iter_mut().zip(&g.instances) {
                    let own = i
                        .lease
                        .and_then(|l| owners.get(&l))
                        .is_some_and(|r| r.uid == who.uid);
                    if !own {
                        v.uuid = None;
                    }
                }
            }
            view.quarantined = self
                .inner
                .quarantine
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|q| q.slice.gpu() == g.facts.index)
                .map(|q| q.describe(who.may_see(q.uid)))
                .collect();
            gpus.push(view);
        }
        Ok(StatusView {
            backend: self.inner.backend.clone(),
            gpus,
            queued: active
                .iter()
                .filter(|r| r.state == RequestState::Queued)
                .count() as u32,
            leased: active
                .iter()
                .filter(|r| r.state == RequestState::Leased)
                .count() as u32,
            repartitions,
        })
    }

    fn gpu_view(
        &self,
        g: &GpuState,
        snap: &Snapshot,
        holder: &dyn Fn(Option<u64>) -> (Option<u64>, Option<String>),
    ) -> GpuView {
        let f = &g.facts;
        let instances = g
            .instances
            .iter()
            .map(|i| {
                let (lease, user) = holder(i.lease);
                InstanceView {
                    profile: i.profile.clone(),
                    start: i.start,
                    uuid: i.uuid.clone(),
                    lease,
                    user,
                    busy: i.used(),
                }
            })
            .collect();
        let mut shares: Vec<ShareView> = g
            .mps_clients
            .iter()
            .map(|c| {
                let (lease, user) = holder(Some(c.lease));
                ShareView {
                    lease,
                    user,
                    memory_mib: c.memory_mib,
                    sm_percent: c.sm_percent,
                }
            })
            .collect();
        for l in g.replicas.values() {
            let (lease, user) = holder(Some(*l));
            shares.push(ShareView {
                lease,
                user,
                memory_mib: 0,
                sm_percent: 0,
            });
        }
        GpuView {
            index: f.index,
            uuid: f.uuid.clone(),
            model: f.model.clone(),
            mode: f.mode.to_string(),
            drained: g.drained,
            instances,
            shares,
            memory_mib: if f.mode == GpuMode::Mps {
                f.mps_usable_mib()
            } else {
                0
            },
            capacity: match f.mode {
                GpuMode::Mps => f.mps.max_clients,
                GpuMode::Timeslice => f.replicas,
                GpuMode::Mig => 0,
            },
            busy: g.busy(),
            reserved_for: snap
                .reservations
                .iter()
                .find(|r| r.gpu == f.index)
                .map(|r| r.request),
            last_error: snap.errors.get(&f.index).cloned(),
            quarantined: Vec::new(),
        }
    }

    fn gpu_view_of(&self, who: &Identity, gpu: u32) -> Result<GpuView, ApiError> {
        let status = self.status(who)?;
        status
            .gpus
            .into_iter()
            .find(|g| g.index == gpu)
            .ok_or_else(|| ApiError::not_found(format!("GPU {gpu} not found")))
    }

    fn check_gpu(&self, gpu: u32) -> Result<&GpuFacts, ApiError> {
        self.inner.gpus.get(gpu as usize).ok_or_else(|| {
            ApiError::not_found(format!(
                "GPU {gpu} not found; this machine has GPUs 0..{}",
                self.inner.gpus.len().saturating_sub(1)
            ))
        })
    }

    /// `POST /v1/gpus/{n}/drain` (root): stop or resume new leases on a GPU. A drained GPU
    /// whose last lease ended is emptied (its idle MIG instances destroyed).
    pub async fn drain(&self, who: &Identity, gpu: u32, drain: bool) -> Result<GpuView, ApiError> {
        if !who.is_admin() {
            return Err(ApiError::forbidden(
                "only root may drain a GPU; ask the machine's administrator",
            ));
        }
        self.check_gpu(gpu)?;
        lock(&self.inner.store)
            .set_drained(gpu, drain)
            .map_err(api_err)?;
        tracing::info!(
            "GPU {gpu}: {} by {}",
            if drain { "drained" } else { "back in service" },
            who.user
        );
        self.kick();
        // Let the scheduler publish the new state before answering.
        let mut rx = self.inner.changes.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
        self.gpu_view_of(who, gpu)
    }

    /// `POST /v1/gpus/{n}/layout` (root): re-partition a MIG GPU to exactly these instances.
    /// Refused (409, nothing changed) when it would remove or overlap a leased or busy
    /// instance.
    pub async fn force_layout(
        &self,
        who: &Identity,
        gpu: u32,
        specs: &[String],
    ) -> Result<GpuView, ApiError> {
        if !who.is_admin() {
            return Err(ApiError::forbidden("only root may set a GPU's layout"));
        }
        let facts = self.check_gpu(gpu)?;
        if facts.mode != GpuMode::Mig {
            return Err(ApiError::conflict(format!(
                "GPU {gpu} is in {} mode; only MIG GPUs have a layout",
                facts.mode
            )));
        }
        let model = self
            .inner
            .catalog
            .get(&facts.model)
            .ok_or_else(|| ApiError::internal(format!("model {} vanished", facts.model)))?;
        let mut layout = Vec::new();
        for s in specs {
            layout.push(
                model
                    .parse_spec(s)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            );
        }
        let v = model.validate(&layout);
        if !v.is_empty() {
            let text: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            return Err(ApiError::bad_request(format!(
                "invalid layout for GPU {gpu} ({}): {}",
                model.key,
                text.join("; ")
            )));
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        lock(&self.inner.tx)
            .send(Cmd::Layout { gpu, layout, reply })
            .map_err(|_| ApiError::internal("the scheduler is not running"))?;
        rx.await
            .map_err(|_| ApiError::internal("the scheduler stopped before answering"))??;
        self.gpu_view_of(who, gpu)
    }

    /// Every request row (tests and audits; root's view).
    pub fn all_rows(&self) -> Result<Vec<RequestRow>, ServerError> {
        lock(&self.inner.store).all()
    }
}

/// A `--gpu-model` query: a catalog key, alias or name, or a family name that fits one model
/// of this machine (`a100` names two models, but a machine with only one of them means it).
fn resolve_model(catalog: &Catalog, gpus: &[GpuFacts], q: &str) -> Option<String> {
    sched::model_key(catalog, q).or_else(|| {
        let mut fam: Vec<&str> = catalog
            .family(q)
            .iter()
            .map(|m| m.key.as_str())
            .filter(|k| gpus.iter().any(|g| g.model == *k))
            .collect();
        fam.dedup();
        (fam.len() == 1).then(|| fam[0].to_string())
    })
}

/// The canonical spelling of a profile name (as the fleet's models spell it).
fn canonical_profile(catalog: &Catalog, gpus: &[GpuFacts], name: &str) -> String {
    for g in gpus {
        if let Some(m) = catalog.get(&g.model) {
            if let Some(p) = m.profile_named(name) {
                return m.profile(p).name.clone();
            }
        }
    }
    name.trim().to_string()
}

/// The agent's journal, kept in the state database.
struct DbJournal<'a> {
    store: &'a Mutex<Store>,
    /// Operation latencies go to `tessera_agent_operation_duration_seconds`.
    metrics: &'a Metrics,
    /// Intents without an outcome yet: when each was written, and its operation.
    started: BTreeMap<u64, (Instant, &'static str)>,
}

fn journal_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Io {
        path: PathBuf::from("tessera.db"),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Journal for DbJournal<'_> {
    fn intent(&mut self, op: &OpRecord) -> Result<u64, JournalError> {
        let body =
            serde_json::to_string(&EntryKind::Intent { op: op.clone() }).map_err(journal_err)?;
        let seq = lock(self.store)
            .journal_append(op.gpu(), &body, now_ms())
            .map_err(journal_err)?;
        let name = match op {
            OpRecord::CreateGi { .. } => "create_gi",
            OpRecord::DestroyGi { .. } => "destroy_gi",
            OpRecord::CreateCi { .. } => "create_ci",
        };
        self.started.insert(seq, (Instant::now(), name));
        Ok(seq)
    }

    fn outcome(&mut self, seq: u64, outcome: &Outcome) -> Result<(), JournalError> {
        if let Some((at, name)) = self.started.remove(&seq) {
            self.metrics.operation(name, at.elapsed().as_secs_f64());
        }
        let body = serde_json::to_string(&EntryKind::Outcome {
            intent: seq,
            outcome: outcome.clone(),
        })
        .map_err(journal_err)?;
        let mut s = lock(self.store);
        let gpu = s
            .journal_gpu(seq)
            .map_err(journal_err)?
            .ok_or(JournalError::UnknownIntent { seq })?;
        s.journal_append(gpu, &body, now_ms())
            .map_err(journal_err)?;
        Ok(())
    }

    fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        let rows = lock(self.store).journal().map_err(journal_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: EntryKind =
                serde_json::from_str(&r.body).map_err(|e| JournalError::Torn {
                    path: PathBuf::from("tessera.db (table journal)"),
                    offset: r.seq,
                    detail: e.to_string(),
                })?;
            out.push(Entry {
                v: JOURNAL_VERSION,
                seq: r.seq,
                kind,
            });
        }
        Ok(out)
    }
}

/// The scheduler thread's state.
struct Scheduler {
    d: Daemon,
    fleet: Fleet,
    iso: Enforcer,
    /// When the last liveness check ran (on the daemon's clock).
    last_check: Option<Instant>,
    /// Requests whose client's `/proc` entry could not be read, already logged.
    unknown_logged: BTreeSet<u64>,
}

impl Scheduler {
    fn inner(&self) -> &Inner {
        &self.d.inner
    }

    /// The thread's body: [`Scheduler::run_loop`], and when it panics, the reason recorded
    /// for [`Daemon::scheduler_died`] and the daemon marked stopped.
    fn run(self, rx: mpsc::Receiver<Cmd>) {
        let d = self.d.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let mut this = self;
            this.run_loop(rx)
        }));
        if let Err(payload) = result {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tracing::error!(
                "the scheduler thread died: {why}; no lease can be granted or ended, so the daemon stops (leases and the queue are kept in the database)"
            );
            d.inner.stopped.store(true, Ordering::SeqCst);
            d.inner.failure.send_replace(Some(format!("panic: {why}")));
        }
    }

    fn run_loop(&mut self, rx: mpsc::Receiver<Cmd>) {
        let tick = Duration::from_millis(self.inner().cfg.scheduler.tick_ms);
        let mut next = Instant::now() + tick;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            let msg = rx.recv_timeout(wait);
            let handle = |m: Cmd, this: &mut Scheduler| -> bool {
                match m {
                    Cmd::Kick => {}
                    Cmd::Stop => return false,
                    Cmd::Layout { gpu, layout, reply } => {
                        let _ = reply.send(this.force(gpu, &layout));
                    }
                    #[cfg(test)]
                    Cmd::Panic => panic!("injected by a test"),
                }
                true
            };
            match msg {
                Ok(m) => {
                    if !handle(m, self) {
                        return;
                    }
                    // Coalesce a burst of messages into one pass.
                    while let Ok(m) = rx.try_recv() {
                        if !handle(m, self) {
                            return;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.inner().stopped.load(Ordering::SeqCst) {
                return;
            }
            self.pass();
            next = Instant::now() + tick;
        }
    }

    /// Recovery before the API opens (see the module docs).
    fn recover(&mut self) -> Result<(), ServerError> {
        if self.inner().cfg.discard_journal {
            let n = lock(&self.inner().store).discard_journal()?;
            self.notice(format!(
                "--discard-journal: deleted {n} journal record(s); the GPUs' layouts are taken from the GPUs as they are"
            ));
        }
        let (desired, active, journal, counts) = {
            let s = lock(&self.inner().store);
            (s.desired()?, s.active()?, s.journal()?, s.counts()?)
        };
        if let (0, 0, journal_rows) = counts {
            self.check_emptied(journal_rows);
        }
        let open = dangling_intents(&journal);
        if !open.is_empty() {
            tracing::warn!(
                "the journal has {} operation(s) without an outcome (a re-partition was cut short); finishing it",
                open.len()
            );
        }
        // Leased requests first: re-mark their simulated instances busy so that finishing a
        // re-partition cannot touch them.
        for r in active.iter().filter(|r| r.state == RequestState::Leased) {
            if let Some(Slice::Mig { gpu, start, .. }) = &r.slice {
                self.fleet.attach(*gpu, *start, r.pid);
            }
        }
        for (gpu, specs) in desired {
            let Some(f) = self.inner().gpus.get(gpu as usize) else {
                continue;
            };
            if f.mode != GpuMode::Mig {
                continue;
            }
            let model = self.fleet.model(gpu).clone();
            let layout: Vec<Placed> = specs
                .iter()
                .filter_map(|s| model.parse_spec(s).ok())
                .collect();
            let leased = self.leased_placements(&active, gpu);
            if leased.iter().any(|p| !layout.contains(p)) {
                tracing::warn!("GPU {gpu}: the stored desired layout does not keep every leased instance; leaving the GPU as it is");
                continue;
            }
            let d = self.d.clone();
            let mut j = DbJournal {
                store: &d.inner.store,
                metrics: &d.inner.metrics,
                started: BTreeMap::new(),
            };
            match self.fleet.apply(gpu, &layout, &mut j) {
                Ok(rep) if rep.changed() => tracing::info!(
                    "GPU {gpu}: finished the re-partition cut short (destroyed {:?}, created {:?})",
                    rep.destroyed,
                    rep.created
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("GPU {gpu}: cannot finish the stored layout: {e}"),
            }
        }
        if open.is_empty() {
            lock(&self.inner().store).prune_journal(10_000)?;
        }
        let now = self.inner().clock.now();
        let mut hb = lock(&self.inner().heartbeats);
        for r in &active {
            hb.insert(r.id, now);
        }
        drop(hb);
        let d = self.d.clone();
        self.iso
            .adopt(&active, |id| lock(&d.inner.store).get(id).ok().flatten());
        let queued = active
            .iter()
            .filter(|r| r.state == RequestState::Queued)
            .count();
        let leased = active.len() - queued;
        if !active.is_empty() {
            tracing::info!("re-adopted {leased} lease(s) and {queued} queued request(s) from the state database");
        }
        Ok(())
    }

    /// Log a start warning and keep it for [`Daemon::notices`].
    fn notice(&self, text: String) {
        tracing::warn!("{text}");
        lock(&self.inner().notices).push(text);
    }

    /// The database holds no request and no layout: warn when its journal or the GPUs say
    /// tessera has been here (journal records of re-partitions, MIG instances), since then
    /// the database was emptied or replaced and the leases it recorded are lost.
    fn check_emptied(&mut self, journal_rows: u64) {
        let mut seen = Vec::new();
        if journal_rows > 0 {
            seen.push(format!(
                "its journal holds {journal_rows} record(s) of re-partitions"
            ));
        }
        for f in self.inner().gpus.clone() {
            if f.mode != GpuMode::Mig {
                continue;
            }
            if let Ok(list) = self.fleet.instances(f.index) {
                if !list.is_empty() {
                    let busy = list.iter().filter(|i| !i.pids.is_empty()).count();
                    seen.push(format!(
                        "GPU {} has {} MIG instance(s), {busy} with processes",
                        f.index,
                        list.len()
                    ));
                }
            }
        }
        if seen.is_empty() {
            return;
        }
        self.notice(format!(
            "the state database {} has no request and no layout, but {}: it was emptied or replaced (or the GPUs were partitioned by someone else). Leases it held are lost and their commands, if any still run, are not accounted for. If that is not intended, stop the daemon and restore tessera.db from a backup; otherwise idle instances are reused and re-partitioned as usual",
            self.inner().state_dir.join("tessera.db").display(),
            seen.join("; ")
        ));
    }

    fn leased_placements(&self, active: &[RequestRow], gpu: u32) -> Vec<Placed> {
        let model = self.fleet.model(gpu);
        active
            .iter()
            .filter(|r| r.state == RequestState::Leased)
            .filter_map(|r| match &r.slice {
                Some(Slice::Mig {
                    gpu: g,
                    profile,
                    start,
                    ..
                }) if *g == gpu => Some(Placed::new(model.profile_named(profile)?, *start)),
                _ => None,
            })
            .collect()
    }

    /// End leases cancelled longer than `lease.cancel_grace_ms` ago whose command still runs
    /// (the sweep that follows kills their processes). Returns whether any ended.
    fn enforce_cancels(&mut self, active: &[RequestRow]) -> bool {
        let mut ended = false;
        for (id, reason) in self.iso.due_cancels(active) {
            let done = lock(&self.inner().store)
                .end(id, RequestState::Cancelled, None, &reason, now_ms())
                .unwrap_or(false);
            if done {
                tracing::info!(request = id, "{reason}");
                lock(&self.inner().heartbeats).remove(&id);
                ended = true;
            }
        }
        ended
    }

    /// The device side of a slice (its GPU's minor, and for MIG the instance's GPU- and
    /// compute-instance IDs), when the enforcer wants device numbers.
    fn slice_devices(&mut self, slice: &Slice) -> Option<tessera_isolation::SliceDevices> {
        use tessera_isolation::SliceDevices;
        if !self.iso.wants_devices() {
            return None;
        }
        match slice {
            Slice::Mig { gpu, start, .. } => {
                let inst = self
                    .fleet
                    .instances(*gpu)
                    .ok()?
                    .into_iter()
                    .find(|i| i.start == *start)?;
                Some(SliceDevices::Mig {
                    minor: *gpu,
                    gi: inst.gi_id,
                    ci: inst.compute_instances.first()?.ci_id,
                })
            }
            Slice::Mps { gpu, .. } | Slice::Timeslice { gpu, .. } => {
                Some(SliceDevices::Gpu { minor: *gpu })
            }
        }
    }

    /// Mark quarantined slices held so that no pass leases or destroys them, and publish
    /// them for `status`.
    fn hold_quarantined(&mut self, gpus: &mut [GpuState]) {
        let q = self.iso.quarantined().to_vec();
        for item in &q {
            let Some(g) = gpus.iter_mut().find(|g| g.facts.index == item.slice.gpu()) else {
                continue;
            };
            match &item.slice {
                Slice::Mig { start, .. } => {
                    if let Some(i) = g.instances.iter_mut().find(|i| i.start == *start) {
                        if i.pids.is_empty() {
                            i.pids = item.pids.clone();
                        }
                    }
                }
                Slice::Mps {
                    memory_mib,
                    sm_percent,
                    ..
                } => g.mps_clients.push(MpsClient {
                    lease: item.lease,
                    uid: item.uid,
                    memory_mib: *memory_mib,
                    sm_percent: *sm_percent,
                }),
                Slice::Timeslice { replica, .. } => {
                    g.replicas.entry(*replica).or_insert(item.lease);
                }
            }
        }
        *self
            .inner()
            .quarantine
            .write()
            .unwrap_or_else(|e| e.into_inner()) = q;
    }

    /// Heartbeat deadlines count the daemon's own progress: when the scheduler did not run
    /// for much longer than a tick (the process was stopped, or starved), every request's
    /// last heartbeat moves forward by the stall, so the heartbeats queued meanwhile get
    /// read before anyone is judged silent.
    fn credit_stall(&mut self, now: Instant) {
        let tick = Duration::from_millis(self.inner().cfg.scheduler.tick_ms);
        let allowed = tick + tick.max(Duration::from_secs(1));
        if let Some(prev) = self.last_check.replace(now) {
            let gap = now.saturating_duration_since(prev);
            if gap > allowed {
                let stall = gap - tick;
                let mut hb = lock(&self.inner().heartbeats);
                for last in hb.values_mut() {
                    *last = (*last + stall).min(now);
                }
                drop(hb);
                self.inner().metrics.scheduler_stalls.inc();
                tracing::warn!(
                    "the scheduler did not run for {} ms (the daemon was stopped or starved); heartbeat deadlines are extended by that time",
                    stall.as_millis()
                );
            }
        }
    }

    /// End requests whose client is gone. Returns whether any ended.
    fn check_liveness(&mut self, active: &[RequestRow]) -> bool {
        let timeout = Duration::from_millis(self.inner().cfg.lease.heartbeat_timeout_ms);
        let now = self.inner().clock.now();
        self.credit_stall(now);
        let ids: BTreeSet<u64> = active.iter().map(|r| r.id).collect();
        self.unknown_logged.retain(|id| ids.contains(id));
        let mut ended = false;
        for r in active {
            let gone = match (r.pid, r.pid_start) {
                (Some(pid), Some(start)) => match (ProcessStamp {
                    pid,
                    start_ticks: start,
                })
                .check()
                {
                    Liveness::Gone(why) => Some(why),
                    Liveness::Unknown(why) => {
                        // No verdict (e.g. out of file descriptors): the heartbeat decides.
                        self.inner().metrics.liveness_unknown.inc();
                        if self.unknown_logged.insert(r.id) {
                            tracing::warn!(request = r.id, "cannot tell whether the client runs ({why}); keeping the lease while it sends heartbeats");
                        }
                        None
                    }
                    Liveness::Alive => None,
                },
                _ => None,
            };
            let silent = {
                let mut hb = lock(&self.inner().heartbeats);
                let last = *hb.entry(r.id).or_insert(now);
                let quiet = now.saturating_duration_since(last);
                (quiet > timeout).then(|| format!("no heartbeat for {}s", quiet.as_secs()))
            };
            if let Some(reason) = gone.or(silent) {
                let done = lock(&self.inner().store)
                    .end(r.id, RequestState::Expired, None, &reason, now_ms())
                    .unwrap_or(false);
                if done {
                    tracing::info!(request = r.id, user = %r.user, "expired: {reason}");
                    lock(&self.inner().heartbeats).remove(&r.id);
                    self.unknown_logged.remove(&r.id);
                    ended = true;
                }
            }
        }
        ended
    }

    /// Observe every GPU and build the scheduler's view, syncing simulated busy marks with
    /// the leases.
    fn observe(
        &mut self,
        active: &[RequestRow],
        errors: &mut BTreeMap<u32, String>,
    ) -> Vec<GpuState> {
        let drained = lock(&self.inner().store).drained().unwrap_or_default();
        let health = self.fleet.poll_health();
        let mut out = Vec::new();
        for f in self.inner().gpus.clone() {
            let mut g = GpuState::empty(f.clone());
            g.drained = drained.contains(&f.index);
            if let Some(tessera_gpu::Health::Unhealthy { xids }) = health.get(&f.index) {
                g.healthy = false;
                self.inner().metrics.xids(f.index, xids.iter().copied());
                errors.insert(
                    f.index,
                    format!(
                        "unhealthy after XID {xids:?}: no new leases until the daemon restarts"
                    ),
                );
            }
            let leases: Vec<&RequestRow> = active
                .iter()
                .filter(|r| r.state == RequestState::Leased)
                .filter(|r| r.slice.as_ref().is_some_and(|s| s.gpu() == f.index))
                .collect();
            match f.mode {
                GpuMode::Mig => match self.observe_mig(f.index, &leases) {
                    Ok(list) => g.instances = list,
                    Err(e) => {
                        errors.insert(f.index, e);
                        g.failed = true;
                    }
                },
                GpuMode::Mps => {
                    for r in leases {
                        if let Some(Slice::Mps {
                            memory_mib,
                            sm_percent,
                            ..
                        }) = &r.slice
                        {
                            g.mps_clients.push(MpsClient {
                                lease: r.id,
                                uid: r.uid,
                                memory_mib: *memory_mib,
                                sm_percent: *sm_percent,
                            });
                        }
                    }
                }
                GpuMode::Timeslice => {
                    for r in leases {
                        if let Some(Slice::Timeslice { replica, .. }) = &r.slice {
                            g.replicas.insert(*replica, r.id);
                        }
                    }
                }
            }
            out.push(g);
        }
        out
    }

    fn observe_mig(
        &mut self,
        gpu: u32,
        leases: &[&RequestRow],
    ) -> Result<Vec<InstanceState>, String> {
        let observed = self.fleet.instances(gpu).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for i in observed {
            // A lease matches an instance by GPU, profile and start: the same placement on
            // another GPU is another instance.
            let lease = leases.iter().find(|r| {
                matches!(&r.slice, Some(Slice::Mig { gpu: g, profile, start, .. }) if *g == gpu && *profile == i.profile && *start == i.start)
            });
            let mut pids = i.pids.clone();
            if self.fleet.is_sim() {
                // On the simulator the daemon is the only source of processes: keep the marks
                // equal to the leases.
                match (lease, pids.is_empty()) {
                    (Some(r), true) => {
                        self.fleet.attach(gpu, i.start, r.pid);
                        pids = vec![r.pid.unwrap_or(0)];
                    }
                    (None, false) => {
                        self.fleet.detach(gpu, i.start);
                        pids.clear();
                    }
                    _ => {}
                }
            }
            out.push(InstanceState {
                profile: i.profile,
                start: i.start,
                uuid: i.uuid,
                lease: lease.map(|r| r.id),
                pids,
            });
        }
        Ok(out)
    }

    /// Apply a layout to a MIG GPU, with the desired layout written first.
    fn apply(&mut self, gpu: u32, layout: &[Placed]) -> Result<bool, ApplyError> {
        let model = self.fleet.model(gpu).clone();
        let specs: Vec<String> = layout.iter().map(|p| model.spec(*p)).collect();
        lock(&self.inner().store)
            .set_desired(gpu, &specs, now_ms())
            .map_err(|e| ApplyError::Backend(e.to_string()))?;
        let d = self.d.clone();
        let mut j = DbJournal {
            store: &d.inner.store,
            metrics: &d.inner.metrics,
            started: BTreeMap::new(),
        };
        let began = Instant::now();
        let res = self.fleet.apply(gpu, layout, &mut j);
        match &res {
            Ok(rep) => {
                let _ = lock(&self.inner().store).prune_journal(2_000);
                if rep.changed() {
                    self.inner()
                        .metrics
                        .repartitioned(tessera_api::overview::RepartitionView {
                            gpu,
                            at_ms: now_ms(),
                            took_ms: began.elapsed().as_millis() as u64,
                            layout: specs.clone(),
                            destroyed: rep.destroyed.clone(),
                            created: rep.created.clone(),
                        });
                    let _ = lock(&self.inner().store).bump("repartitions", 1);
                    tracing::info!(
                        "GPU {gpu}: re-partitioned to [{}] (destroyed {:?}, created {:?})",
                        specs.join(" "),
                        rep.destroyed,
                        rep.created
                    );
                }
            }
            Err(e) => {
                self.inner().metrics.operations_failed.inc();
                let _ = lock(&self.inner().store).bump("operations_failed", 1);
                tracing::warn!("{e}");
            }
        }
        res.map(|r| r.changed())
    }

    /// Root's forced re-partition.
    fn force(&mut self, gpu: u32, layout: &[Placed]) -> Result<(), ApiError> {
        let active = lock(&self.inner().store).active().map_err(api_err)?;
        let model = self.fleet.model(gpu).clone();
        for p in self.leased_placements(&active, gpu) {
            if !layout.contains(&p) {
                let holder = active
                    .iter()
                    .find(|r| {
                        matches!(&r.slice, Some(Slice::Mig { gpu: g, start, .. }) if *g == gpu && *start == p.start)
                    })
                    .map(|r| format!("request {} of {}", r.id, r.user))
                    .unwrap_or_default();
                return Err(ApiError::conflict(format!(
                    "GPU {gpu}: refused, nothing changed: the layout would remove leased instance {} ({holder}); keep it in the layout or wait until it is released",
                    model.spec(p)
                )));
            }
        }
        let res = self.apply(gpu, layout);
        self.pass();
        match res {
            Ok(_) => Ok(()),
            Err(e @ ApplyError::Refused { busy: true, .. }) => {
                Err(ApiError::conflict(e.to_string()))
            }
            Err(e @ ApplyError::Refused { .. }) => Err(ApiError::bad_request(e.to_string())),
            Err(e) => Err(ApiError::conflict(e.to_string())),
        }
    }

    /// One scheduling pass (see the module docs and [`crate::sched`]).
    fn pass(&mut self) {
        self.inner().passes.fetch_add(1, Ordering::SeqCst);
        let active = match lock(&self.inner().store).active() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("cannot read the queue: {e}");
                return;
            }
        };
        let mut changed = self.check_liveness(&active);
        changed |= self.enforce_cancels(&active);
        let active = if changed {
            lock(&self.inner().store).active().unwrap_or_default()
        } else {
            active
        };
        let d = self.d.clone();
        self.iso
            .sweep(&active, |id| lock(&d.inner.store).get(id).ok().flatten());
        let mut errors = BTreeMap::new();
        let mut gpus = self.observe(&active, &mut errors);
        self.hold_quarantined(&mut gpus);

        // Drained GPUs with nothing running are emptied.
        for g in gpus.iter_mut() {
            if g.drained
                && g.facts.mode == GpuMode::Mig
                && !g.in_use()
                && !g.instances.is_empty()
                && !g.failed
            {
                let gpu = g.facts.index;
                match self.apply(gpu, &[]) {
                    Ok(_) => g.instances.clear(),
                    Err(e) => {
                        errors.insert(gpu, e.to_string());
                    }
                }
            }
        }

        let now = now_ms();
        let queue = queued_in_order(&active);
        let cfg = self.inner().cfg.scheduler.clone();
        let mut reservations: Vec<Reservation> = Vec::new();
        let mut granted: BTreeSet<u64> = BTreeSet::new();
        for r in &queue {
            let w = Waiting {
                id: r.id,
                uid: r.uid,
                ask: r.ask.clone(),
                gpu_model: r.gpu_model.clone(),
                waited_ms: now.saturating_sub(r.submitted_ms),
            };
            let catalog = self.inner().catalog.clone();
            match sched::decide(&catalog, &gpus, &w, &reservations) {
                Some(serve) => {
                    if self.serve(r, serve, &mut gpus, &mut errors) {
                        granted.insert(r.id);
                        changed = true;
                        // Status shows a lease as soon as the database does.
                        self.publish(
                            &gpus,
                            &reservations,
                            errors.clone(),
                            queue.len() - granted.len(),
                        );
                    }
                }
                None => {
                    if (reservations.len() as u32) < cfg.max_reserved_gpus
                        && w.waited_ms >= cfg.reserve_after_ms
                    {
                        if let Some(res) = sched::reserve(&catalog, &gpus, &w, &reservations) {
                            reservations.push(res);
                        }
                    }
                }
            }
        }

        self.publish(&gpus, &reservations, errors, queue.len() - granted.len());
        let catalog = self.inner().catalog.clone();
        let waits: BTreeMap<u64, String> = queue
            .iter()
            .filter(|r| !granted.contains(&r.id))
            .map(|r| {
                let w = Waiting {
                    id: r.id,
                    uid: r.uid,
                    ask: r.ask.clone(),
                    gpu_model: r.gpu_model.clone(),
                    waited_ms: now.saturating_sub(r.submitted_ms),
                };
                (r.id, sched::why_waiting(&catalog, &gpus, &w, &reservations))
            })
            .collect();
        let reasons_changed = {
            let mut snap = self
                .inner()
                .snapshot
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let differ = snap.waits != waits;
            snap.waits = waits;
            differ
        };
        if changed || reasons_changed {
            self.d.changed();
        }
    }

    /// Carry out one decision: re-partition if needed, then grant. Returns whether granted.
    fn serve(
        &mut self,
        r: &RequestRow,
        serve: sched::Serve,
        gpus: &mut [GpuState],
        errors: &mut BTreeMap<u32, String>,
    ) -> bool {
        let gpu = serve.gpu;
        let idx = gpus
            .iter()
            .position(|g| g.facts.index == gpu)
            .expect("decisions name known GPUs");
        if let Some(layout) = &serve.layout {
            if let Err(e) = self.apply(gpu, layout) {
                errors.insert(gpu, e.to_string());
                gpus[idx].failed = true;
                return false;
            }
            let leases: Vec<RequestRow> = lock(&self.inner().store)
                .active()
                .unwrap_or_default()
                .into_iter()
                .filter(|x| x.state == RequestState::Leased)
                .filter(|x| x.slice.as_ref().is_some_and(|s| s.gpu() == gpu))
                .collect();
            let refs: Vec<&RequestRow> = leases.iter().collect();
            match self.observe_mig(gpu, &refs) {
                Ok(list) => gpus[idx].instances = list,
                Err(e) => {
                    errors.insert(gpu, e);
                    gpus[idx].failed = true;
                    return false;
                }
            }
        }
        let facts = gpus[idx].facts.clone();
        let mut env = BTreeMap::new();
        let slice = match &serve.pick {
            Pick::Mig { profile, start } => {
                let Some(inst) = gpus[idx]
                    .instances
                    .iter()
                    .find(|i| i.profile == *profile && i.start == *start && !i.used())
                else {
                    errors.insert(
                        gpu,
                        format!("instance {profile}@{start} missing after the re-partition"),
                    );
                    gpus[idx].failed = true;
                    return false;
                };
                let Some(uuid) = inst.uuid.clone() else {
                    errors.insert(
                        gpu,
                        format!("instance {profile}@{start} has no MIG device UUID"),
                    );
                    gpus[idx].failed = true;
                    return false;
                };
                env.insert("CUDA_VISIBLE_DEVICES".to_string(), uuid.clone());
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), uuid.clone());
                Slice::Mig {
                    gpu,
                    profile: profile.clone(),
                    start: *start,
                    uuid,
                }
            }
            Pick::Mps {
                memory_mib,
                sm_percent,
            } => {
                match self.fleet.mps_env(gpu, r.uid, *memory_mib, *sm_percent) {
                    Ok(e) => env.extend(e),
                    Err(e) => {
                        errors.insert(gpu, e);
                        gpus[idx].failed = true;
                        return false;
                    }
                }
                Slice::Mps {
                    gpu,
                    memory_mib: *memory_mib,
                    sm_percent: *sm_percent,
                }
            }
            Pick::Timeslice { replica } => {
                env.insert("CUDA_VISIBLE_DEVICES".to_string(), facts.uuid.clone());
                env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), facts.uuid.clone());
                Slice::Timeslice {
                    gpu,
                    replica: *replica,
                }
            }
        };
        env.insert("TESSERA_LEASE_ID".to_string(), r.id.to_string());
        env.insert("TESSERA_SLICE".to_string(), slice.to_string());
        // The client enters the lease's cgroup before the lease exists, so CMD starts in it.
        let devices = self.slice_devices(&slice);
        match self.iso.confine(r, &slice, devices) {
            Ok(v) => {
                env.insert("TESSERA_ISOLATION".to_string(), v);
            }
            Err(e) => {
                tracing::warn!("{e}");
                errors.insert(gpu, e);
                return false;
            }
        }
        let now = now_ms();
        let granted = match lock(&self.inner().store).grant(r.id, &slice, &env, now) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("request {}: cannot record the lease: {e}", r.id);
                false
            }
        };
        if !granted {
            self.iso.unconfine(r.id);
            return false;
        }
        match &slice {
            Slice::Mig { start, .. } => {
                if let Some(i) = gpus[idx].instances.iter_mut().find(|i| i.start == *start) {
                    i.lease = Some(r.id);
                    i.pids = vec![r.pid.unwrap_or(0)];
                }
                self.fleet.attach(gpu, *start, r.pid);
            }
            Slice::Mps {
                memory_mib,
                sm_percent,
                ..
            } => gpus[idx].mps_clients.push(MpsClient {
                lease: r.id,
                uid: r.uid,
                memory_mib: *memory_mib,
                sm_percent: *sm_percent,
            }),
            Slice::Timeslice { replica, .. } => {
                gpus[idx].replicas.insert(*replica, r.id);
            }
        }
        let m = &self.inner().metrics;
        m.leases_total
            .get_or_create(&Metrics::slice_type(slice.type_name()))
            .inc();
        m.wait_seconds
            .observe(now.saturating_sub(r.submitted_ms) as f64 / 1000.0);
        tracing::info!(request = r.id, user = %r.user, "leased {slice} after {} ms", now.saturating_sub(r.submitted_ms));
        true
    }

    fn publish(
        &self,
        gpus: &[GpuState],
        reservations: &[Reservation],
        errors: BTreeMap<u32, String>,
        queued: usize,
    ) {
        let m = &self.inner().metrics;
        m.queue_length.set(queued as i64);
        let mut by_type: BTreeMap<&str, i64> = [("mig", 0), ("mps", 0), ("timeslice", 0)]
            .into_iter()
            .collect();
        for g in gpus {
            let t = match g.facts.mode {
                GpuMode::Mig => "mig",
                GpuMode::Mps => "mps",
                GpuMode::Timeslice => "timeslice",
            };
            *by_type.entry(t).or_default() += i64::from(g.busy());
            m.slices_busy
                .get_or_create(&Metrics::gpu(g.facts.index))
                .set(i64::from(g.busy()));
            let total = match g.facts.mode {
                GpuMode::Mig => g.instances.len() as i64,
                GpuMode::Mps => g.mps_clients.len() as i64,
                GpuMode::Timeslice => i64::from(g.facts.replicas),
            };
            m.slices
                .get_or_create(&Metrics::gpu(g.facts.index))
                .set(total);
        }
        for (t, n) in by_type {
            m.leases_active
                .get_or_create(&Metrics::slice_type(t))
                .set(n);
        }
        let mut snap = self
            .inner()
            .snapshot
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let waits = std::mem::take(&mut snap.waits);
        *snap = Snapshot {
            gpus: gpus.to_vec(),
            reservations: reservations.to_vec(),
            errors,
            waits,
        };
    }
}

/// Sequence numbers of journal intents without an outcome.
fn dangling_intents(rows: &[crate::store::JournalRow]) -> Vec<u64> {
    let mut open: BTreeSet<u64> = BTreeSet::new();
    for r in rows {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) else {
            continue;
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("intent") => {
                open.insert(r.seq);
            }
            Some("outcome") => {
                if let Some(i) = v.get("intent").and_then(|i| i.as_u64()) {
                    open.remove(&i);
                }
            }
            _ => {}
        }
    }
    open.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendChoice, SchedulerSettings};
    use tessera_gpu::sim::{SimBackend, SimConfig, SimState};

    fn start(dir: &std::path::Path) -> (Daemon, SchedulerHandle) {
        let cfg = Config {
            backend: BackendChoice::Sim,
            sim_gpus: "h100-80gb:1".into(),
            state_dir: Some(dir.join("state")),
            scheduler: SchedulerSettings {
                tick_ms: 50,
                ..SchedulerSettings::default()
            },
            ..Config::default()
        };
        let catalog = Catalog::builtin().clone();
        let st = SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
        let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
        std::fs::create_dir_all(cfg.state_dir()).unwrap();
        let fleet = Fleet::with_sim(sim, &cfg, &cfg.state_dir(), &catalog).unwrap();
        Daemon::start(cfg, catalog, fleet).unwrap()
    }

    /// Defect 6: a panic in the scheduler thread is reported (for `serve` to stop on), and
    /// the API stops queueing requests nobody would ever schedule.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_scheduler_is_reported_and_stops_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (d, sched) = start(dir.path());
        assert_eq!(d.scheduler_failure(), None);
        let _ = lock(&d.inner.tx).send(Cmd::Panic);
        let why = tokio::time::timeout(Duration::from_secs(10), d.scheduler_died())
            .await
            .expect("the scheduler's death is reported");
        assert!(why.contains("injected by a test"), "{why}");
        let who = Identity::in_process(1000, "alice");
        let body = SubmitBody {
            slice: SliceAsk::Mig {
                profile: "1g.10gb".into(),
            },
            gpu_model: None,
            priority: 0,
            command: vec!["job".into()],
        };
        let e = d.submit(&who, body).unwrap_err();
        assert_eq!(e.status, 503, "{e}");
        assert!(e.message.contains("scheduler stopped"), "{e}");
        let e = ServerError::SchedulerDied(why).to_string();
        assert!(e.contains("restart"), "{e}");
        tokio::task::spawn_blocking(move || sched.join())
            .await
            .unwrap();
    }

    /// Defect 6: `tessera serve`'s main loop ends with an error when the scheduler dies,
    /// while its servers and signal handler would have run on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_stops_with_an_error_when_the_scheduler_dies() {
        let dir = tempfile::tempdir().unwrap();
        let (d, sched) = start(dir.path());
        let d2 = d.clone();
        let serving = tokio::spawn(async move {
            crate::serve::until_stopped(&d2, std::future::pending(), std::future::pending()).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !serving.is_finished(),
            "serve ended with a healthy scheduler"
        );
        let _ = lock(&d.inner.tx).send(Cmd::Panic);
        let r = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .expect("serve stopped")
            .unwrap();
        match r {
            Err(ServerError::SchedulerDied(why)) => assert!(why.contains("injected"), "{why}"),
            other => panic!("expected SchedulerDied, got {other:?}"),
        }
        tokio::task::spawn_blocking(move || sched.join())
            .await
            .unwrap();
    }
}
