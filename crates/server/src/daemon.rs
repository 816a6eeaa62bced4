//! The daemon: the state its parts share and its start. The rooms around it:
//! [`crate::api`] (the API operations, called by the HTTP handlers and, in-process, by the
//! demo), [`crate::views`] (what they answer with), the scheduler thread (its executor in
//! `scheduler.rs`, its sans-IO decisions in [`crate::core`]) and [`crate::journal`] (the
//! agent's journal in the store).
//!
//! # Threads
//! - API calls run on tokio tasks. They read and write the SQLite store (short transactions
//!   behind a mutex), never touch the GPUs, and wake the scheduler through a channel.
//! - One scheduler thread owns the [`Fleet`] (the GPU backend). A *pass* runs on every wake-up
//!   and at least every `scheduler.tick_ms`: liveness checks, drains, then the queue (see
//!   [`crate::core`] and [`crate::sched`]). Only this thread grants leases and changes
//!   layouts, so a lease it reads as held at the start of a pass cannot appear or move during
//!   it; leases can only end, which is safe.
//! - Time comes from a [`Clock`] and client liveness from a [`ClientLiveness`]
//!   ([`Daemon::start_with`]), so tests run the scheduler on virtual time.
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
//! tells the backend which instances hold their work ([`tessera_gpu::GpuBackend::attach_work`]),
//! and gives every request a fresh heartbeat
//! deadline, and (5) keeps the queue as stored. Then the API opens.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tessera_model::{Catalog, Placed};

use crate::config::Config;
use crate::error::{ApiError, SchedulerDeath, ServerError};
use crate::fleet::{Fleet, GpuFacts};
use crate::isolate::{Enforcer, Quarantine};
use crate::liveness::{ClientLiveness, Clock, MonotonicClock, ProcLiveness};
use crate::metrics::Metrics;
use crate::sched::{GpuState, Reservation};
use crate::scheduler::Scheduler;
use crate::store::{RequestRow, Store};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the scheduler last saw: every GPU, the reservations and errors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub(crate) gpus: Vec<GpuState>,
    pub(crate) reservations: Vec<Reservation>,
    pub(crate) errors: BTreeMap<u32, String>,
    /// Why each queued request waits, as of the last full pass.
    pub(crate) waits: BTreeMap<u64, String>,
}

/// Messages to the scheduler thread.
pub(crate) enum Cmd {
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

pub(crate) struct Inner {
    pub(crate) store: Mutex<Store>,
    pub(crate) catalog: Catalog,
    pub(crate) cfg: Config,
    pub(crate) gpus: Vec<GpuFacts>,
    pub(crate) backend: String,
    pub(crate) snapshot: RwLock<Snapshot>,
    pub(crate) tx: Mutex<mpsc::Sender<Cmd>>,
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    pub(crate) heartbeats: Mutex<BTreeMap<u64, Instant>>,
    /// The time heartbeats are measured on.
    pub(crate) clock: Arc<dyn Clock>,
    /// Scheduling passes run so far.
    pub(crate) passes: AtomicU64,
    pub(crate) metrics: Metrics,
    pub(crate) stopped: AtomicBool,
    /// Why the scheduler thread died (`None` while it runs or after a clean stop).
    pub(crate) failure: tokio::sync::watch::Sender<Option<SchedulerDeath>>,
    /// Warnings from the start (a state directory fixed, a database that looks emptied).
    pub(crate) notices: Mutex<Vec<String>>,
    pub(crate) state_dir: PathBuf,
    /// Slices held back after their lease ended (see [`crate::isolate`]).
    pub(crate) quarantine: RwLock<Vec<Quarantine>>,
}

/// A running daemon core. Cheap to clone; every clone talks to the same state.
#[derive(Clone)]
pub struct Daemon {
    pub(crate) inner: Arc<Inner>,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn api_err(e: ServerError) -> ApiError {
    ApiError::internal(e)
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
        Daemon::start_with(cfg, catalog, fleet, clock, Arc::new(ProcLiveness))
    }

    /// [`Daemon::start`] on `clock` (heartbeats, request timestamps) with client processes
    /// checked by `liveness`: scheduler tests run on virtual time with chosen verdicts.
    pub fn start_with(
        cfg: Config,
        catalog: Catalog,
        fleet: Fleet,
        clock: Arc<dyn Clock>,
        liveness: Arc<dyn ClientLiveness>,
    ) -> Result<(Daemon, SchedulerHandle), ServerError> {
        let state_dir = cfg.state_dir();
        let notices: Vec<String> = crate::serve::secure_state_dir(&state_dir)?
            .into_iter()
            .collect();
        let store = Store::open(&state_dir.join("tessera.db"))?;
        let iso = Enforcer::new(&cfg, fleet.capabilities().device_nodes)?;
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
            liveness,
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
    pub fn scheduler_failure(&self) -> Option<SchedulerDeath> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves (with the reason) once the scheduler thread has died; `tessera serve` stops
    /// the daemon with an error then, so that a supervisor restarts it.
    pub async fn scheduler_died(&self) -> SchedulerDeath {
        let mut rx = self.inner.failure.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return SchedulerDeath::Gone;
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

    pub(crate) fn kick(&self) {
        let _ = lock(&self.inner.tx).send(Cmd::Kick);
    }

    pub(crate) fn changed(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// Now in Unix ms, on the daemon's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.clock.unix_ms()
    }

    pub(crate) fn beat(&self, id: u64) {
        let now = self.inner.clock.now();
        lock(&self.inner.heartbeats).insert(id, now);
    }

    /// How many scheduling passes have run (tests wait on it instead of sleeping).
    pub fn passes(&self) -> u64 {
        self.inner.passes.load(Ordering::SeqCst)
    }

    /// Every request row (tests and audits; root's view).
    pub fn all_rows(&self) -> Result<Vec<RequestRow>, ServerError> {
        lock(&self.inner.store).all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendChoice, SchedulerSettings};
    use crate::ident::Identity;
    use crate::wire::{SliceAsk, SubmitBody};
    use std::time::Duration;
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
        let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
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
        assert!(
            matches!(&why, SchedulerDeath::Panic { message } if message.contains("injected by a test")),
            "{why:?}"
        );
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
        let e = ServerError::SchedulerDied { cause: why };
        assert_eq!(e.kind(), crate::error::ErrorKind::Runtime);
        assert!(std::error::Error::source(&e).is_some());
        let e = e.to_string();
        assert!(
            e.contains("restart") && e.contains("panic: injected"),
            "{e}"
        );
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
        // A few passes of a healthy scheduler (a condition, not a sleep) leave serve running.
        let target = d.passes() + 3;
        while d.passes() < target {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
            Err(ServerError::SchedulerDied {
                cause: SchedulerDeath::Panic { message },
            }) => assert!(message.contains("injected"), "{message}"),
            other => panic!("expected SchedulerDied, got {other:?}"),
        }
        tokio::task::spawn_blocking(move || sched.join())
            .await
            .unwrap();
    }
}
