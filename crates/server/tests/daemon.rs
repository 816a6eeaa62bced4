//! The daemon core without sockets: identities, heartbeats, and recovery of a re-partition a
//! crash cut short. Scheduling runs on a virtual clock ([`VirtualClock`]): tests move time and
//! wait for scheduler passes, never sleep for the scheduler.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_gpu::sim::{CrashPlan, CrashPoint, SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_server::config::{BackendChoice, Config, LeaseSettings, SchedulerSettings};
use tessera_server::daemon::SchedulerHandle;
use tessera_server::fleet::{sim_state_path, Fleet};
use tessera_server::ident::Identity;
use tessera_server::liveness::VirtualClock;
use tessera_server::store::Store;
use tessera_server::wire::{ReleaseBody, RequestState, SliceAsk, SubmitBody};
use tessera_server::Daemon;

fn config(dir: &Path) -> Config {
    Config {
        backend: BackendChoice::Sim,
        sim_gpus: "h100-80gb:1".into(),
        state_dir: Some(dir.join("state")),
        scheduler: SchedulerSettings {
            tick_ms: 50,
            ..SchedulerSettings::default()
        },
        lease: LeaseSettings {
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 400,
            ..LeaseSettings::default()
        },
        ..Config::default()
    }
}

fn start_in_memory(dir: &Path) -> (Daemon, SchedulerHandle, Arc<VirtualClock>) {
    let cfg = config(dir);
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    let clock = Arc::new(VirtualClock::new());
    let (d, sched) = Daemon::start_with_clock(cfg, catalog, fleet, clock.clone()).unwrap();
    (d, sched, clock)
}

fn mig(p: &str) -> SubmitBody {
    SubmitBody {
        slice: SliceAsk::Mig { profile: p.into() },
        gpu_model: None,
        priority: 0,
        command: vec!["job".into()],
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until the scheduler has run `n` more passes (so at least `n - 1` whole passes saw
/// everything done before the call).
async fn passes(d: &Daemon, n: u64) {
    let target = d.passes() + n;
    until("scheduler passes", || (d.passes() >= target).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_and_cancels_only_their_own_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched, _) = start_in_memory(dir.path());
    let alice = Identity::in_process(1000, "alice");
    let bob = Identity::in_process(1001, "bob");
    let root = Identity::in_process(0, "root");
    let a = d.submit(&alice, mig("7g.80gb")).unwrap();
    let b = d.submit(&bob, mig("7g.80gb")).unwrap();
    assert_eq!(a.user, "alice");
    let seen: Vec<u64> = d.list(&bob, true).unwrap().iter().map(|v| v.id).collect();
    assert_eq!(seen, vec![b.id]);
    assert_eq!(d.get(&bob, a.id).unwrap_err().status, 404);
    assert_eq!(d.cancel(&bob, a.id).unwrap_err().status, 404);
    assert_eq!(
        d.release(&bob, a.id, ReleaseBody::default())
            .unwrap_err()
            .status,
        404
    );
    let st = d.status(&bob).unwrap();
    for i in &st.gpus[0].instances {
        assert!(
            i.user.as_deref() != Some("alice"),
            "bob sees alice's slice: {i:?}"
        );
    }
    assert_eq!(d.list(&root, false).unwrap().len(), 2);
    // Only admins drain or force layouts.
    assert_eq!(d.drain(&bob, 0, true).await.unwrap_err().status, 403);
    assert_eq!(d.force_layout(&bob, 0, &[]).await.unwrap_err().status, 403);
    // Root cancels alice's queued or leased request.
    let v = d.cancel(&root, b.id).unwrap();
    assert!(
        v.state == RequestState::Cancelled || v.cancel_requested,
        "{v:?}"
    );
    d.stop();
    sched.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_heartbeats_loses_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched, clock) = start_in_memory(dir.path());
    // An HTTP caller has no process to watch: only heartbeats keep it.
    let who = Identity::http(1000);
    let v = d.submit(&who, mig("1g.10gb")).unwrap();
    let v = until("the lease", || {
        let v = d.get(&who, v.id).ok()?;
        (v.state == RequestState::Leased).then_some(v)
    })
    .await;
    // Virtual time: the 400 ms timeout has not passed yet, however long the test takes.
    passes(&d, 2).await;
    assert_eq!(d.get(&who, v.id).unwrap().state, RequestState::Leased);
    clock.advance(Duration::from_millis(500));
    passes(&d, 2).await;
    let v = d.get(&who, v.id).unwrap();
    assert_eq!(v.state, RequestState::Expired, "{v:?}");
    assert!(v.end_reason.unwrap().contains("no heartbeat"));
    // With heartbeats a lease lasts.
    let w = d.submit(&who, mig("1g.10gb")).unwrap();
    until("the second lease", || {
        let x = d.get(&who, w.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    for _ in 0..10 {
        d.heartbeat(&who, w.id).unwrap();
        clock.advance(Duration::from_millis(100));
        passes(&d, 2).await;
    }
    let w = d.get(&who, w.id).unwrap();
    assert_eq!(w.state, RequestState::Leased, "{w:?}");
    d.stop();
    sched.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repartition_cut_short_by_a_crash_is_finished_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let catalog = Catalog::builtin().clone();
    let state_dir = cfg.state_dir();
    std::fs::create_dir_all(&state_dir).unwrap();
    let path = sim_state_path(&state_dir);
    let st = SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
    drop(SimBackend::create(&path, st, catalog.clone()).unwrap());
    // The machine dies right after the first GPU instance exists, before its compute
    // instance: the daemon's first re-partition is cut short.
    let crash = SimConfig {
        crash: Some(CrashPlan {
            point: Some(CrashPoint::CreateGiAfterGi),
            nth: 1,
        }),
        ..SimConfig::default()
    };
    let sim = SimBackend::open(&path, catalog.clone(), crash).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &state_dir, &catalog).unwrap();
    let clock = Arc::new(VirtualClock::new());
    let (d, sched) =
        Daemon::start_with_clock(cfg.clone(), catalog.clone(), fleet, clock.clone()).unwrap();
    let who = Identity::in_process(1000, "alice");
    let v = d.submit(&who, mig("3g.40gb")).unwrap();
    until("the crash", || {
        let st = d.status(&who).ok()?;
        st.gpus[0].last_error.clone()
    })
    .await;
    assert_eq!(d.get(&who, v.id).unwrap().state, RequestState::Queued);
    d.stop();
    tokio::task::spawn_blocking(move || sched.join())
        .await
        .unwrap();
    drop(d);
    {
        let store = Store::open(&state_dir.join("tessera.db")).unwrap();
        let desired = &store.desired().unwrap()[&0];
        assert!(
            desired.len() == 1 && desired[0].starts_with("3g.40gb@"),
            "{desired:?}"
        );
        let open = store
            .journal()
            .unwrap()
            .iter()
            .filter(|r| r.body.contains("\"intent\"") && r.body.contains("create_gi"))
            .count();
        assert_eq!(open, 1, "one intent, no outcome");
    }
    // Restart on the same machine state, without the crash.
    let (fleet, _) = Fleet::open(&cfg, &state_dir, &catalog).unwrap();
    let (d, sched) = Daemon::start_with_clock(cfg, catalog, fleet, clock).unwrap();
    let v = until("the lease after the restart", || {
        let x = d.get(&who, v.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    let st = d.status(&who).unwrap();
    assert_eq!(st.gpus[0].instances.len(), 1, "{:?}", st.gpus[0].instances);
    let inst = &st.gpus[0].instances[0];
    assert!(
        inst.uuid.is_some(),
        "the compute instance was completed: {inst:?}"
    );
    assert!(v.env["CUDA_VISIBLE_DEVICES"].starts_with("MIG-"));
    let store = Store::open(&state_dir.join("tessera.db")).unwrap();
    let recovered = store
        .journal()
        .unwrap()
        .iter()
        .filter(|r| r.body.contains("recovered"))
        .count();
    assert_eq!(
        recovered, 1,
        "the cut-short intent got its recovered outcome"
    );
    d.stop();
    tokio::task::spawn_blocking(move || sched.join())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_with_an_xid_gets_no_new_leases() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sim_gpus = "h100-80gb:2".into();
    let catalog = Catalog::builtin().clone();
    let mut st = SimState::new(&catalog, &[("h100-80gb".into(), 2)], 3, true).unwrap();
    st.events.push(tessera_gpu::GpuEvent {
        gpu: 0,
        xid: 79,
        gi_id: None,
        ci_id: None,
    });
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    let (d, sched) = Daemon::start(cfg, catalog, fleet).unwrap();
    let who = Identity::in_process(1000, "alice");
    let v = d.submit(&who, mig("7g.80gb")).unwrap();
    let v = until("the lease", || {
        let x = d.get(&who, v.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    assert_eq!(v.slice.unwrap().gpu(), 1, "GPU 0 fell off the bus (XID 79)");
    let st = d.status(&who).unwrap();
    assert!(st.gpus[0].last_error.as_deref().unwrap().contains("XID"));
    // A second whole-GPU request waits: GPU 0 is unhealthy, GPU 1 is taken.
    let w = d.submit(&who, mig("7g.80gb")).unwrap();
    passes(&d, 3).await;
    assert_eq!(d.get(&who, w.id).unwrap().state, RequestState::Queued);
    d.stop();
    tokio::task::spawn_blocking(move || sched.join())
        .await
        .unwrap();
}
