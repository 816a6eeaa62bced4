//! `mode: auto` GPUs in the daemon (docs/mode-auto.md), on the simulated backend with a virtual
//! clock: an idle auto GPU takes the mode that waits (MIG, then MPS, then MIG again), a busy one
//! is never switched and its status says why, a GPU configured with a fixed mode never changes,
//! and a switch cut short by a crash is finished on restart from the recorded mode and the
//! journal.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_gpu::sim::{CrashPlan, CrashPoint, SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_planner::GpuMode;
use tessera_server::config::{BackendChoice, Config, GpuSettings, ModeChoice, SchedulerSettings};
use tessera_server::daemon::SchedulerHandle;
use tessera_server::fleet::{sim_state_path, Fleet};
use tessera_server::ident::Identity;
use tessera_server::liveness::VirtualClock;
use tessera_server::store::Store;
use tessera_server::wire::{ReleaseBody, RequestState, RequestView, Slice, SliceAsk, SubmitBody};
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
        ..Config::default()
    }
}

fn start(cfg: &Config, sim: SimConfig) -> (Daemon, SchedulerHandle) {
    let catalog = Catalog::builtin().clone();
    let state_dir = cfg.state_dir();
    std::fs::create_dir_all(&state_dir).unwrap();
    let path = sim_state_path(&state_dir);
    if !path.exists() {
        let st = SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
        drop(SimBackend::create(&path, st, catalog.clone()).unwrap());
    }
    let backend = SimBackend::open(&path, catalog.clone(), sim).unwrap();
    let fleet = Fleet::with_backend(Box::new(backend), cfg, &state_dir, &catalog).unwrap();
    let clock = Arc::new(VirtualClock::new());
    Daemon::start_with_clock(cfg.clone(), catalog, fleet, clock).unwrap()
}

fn ask(slice: SliceAsk) -> SubmitBody {
    SubmitBody {
        slice,
        gpu_model: None,
        priority: 0,
        command: vec!["job".into()],
    }
}

fn mig(p: &str) -> SubmitBody {
    ask(SliceAsk::Mig { profile: p.into() })
}

fn mps() -> SubmitBody {
    ask(SliceAsk::Mps {
        memory_mib: 8192,
        sm_percent: Some(25),
    })
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

async fn leased(d: &Daemon, who: &Identity, id: u64) -> RequestView {
    until(&format!("request {id} leased"), || {
        let v = d.get(who, id).ok()?;
        (v.state == RequestState::Leased).then_some(v)
    })
    .await
}

fn mode(d: &Daemon, who: &Identity) -> String {
    d.status(who).unwrap().gpus[0].mode.clone()
}

async fn stop(d: Daemon, sched: SchedulerHandle) {
    d.stop();
    tokio::task::spawn_blocking(move || sched.join())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_auto_gpu_follows_what_waits_and_a_busy_one_is_never_switched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (d, sched) = start(&cfg, SimConfig::default());
    let who = Identity::in_process(1000, "alice");
    assert!(d.gpus()[0].auto);
    assert_eq!(
        mode(&d, &who),
        "mig",
        "auto starts as before: MIG where possible"
    );

    // MIG work: served in MIG mode.
    let a = d.submit(&who, mig("3g.40gb")).unwrap();
    leased(&d, &who, a.id).await;

    // MPS work waits while the MIG lease runs: the GPU is busy and keeps its mode, and its
    // status says so.
    let b = d.submit(&who, mps()).unwrap();
    let why = until("the blocked change on the status", || {
        d.status(&who).ok()?.gpus[0].last_error.clone()
    })
    .await;
    assert!(
        why.starts_with("mode auto: stays mig, not switched to mps (busy)"),
        "{why}"
    );
    assert_eq!(mode(&d, &who), "mig");
    assert_eq!(d.get(&who, b.id).unwrap().state, RequestState::Queued);

    // The MIG work ends: the idle GPU becomes MPS (its idle instance destroyed) and serves it.
    d.release(&who, a.id, ReleaseBody::default()).unwrap();
    let bv = leased(&d, &who, b.id).await;
    assert!(
        matches!(bv.slice, Some(Slice::Mps { gpu: 0, .. })),
        "{bv:?}"
    );
    let st = d.status(&who).unwrap();
    assert_eq!(st.gpus[0].mode, "mps");
    assert!(
        st.gpus[0].instances.is_empty(),
        "{:?}",
        st.gpus[0].instances
    );
    assert_eq!(st.gpus[0].last_error, None);

    // MIG work again: blocked while the MPS client runs, MIG once it ends.
    let c = d.submit(&who, mig("1g.10gb")).unwrap();
    until("the blocked change back", || {
        let e = d.status(&who).ok()?.gpus[0].last_error.clone()?;
        e.contains("not switched to mig (busy)").then_some(())
    })
    .await;
    assert_eq!(mode(&d, &who), "mps");
    d.release(&who, b.id, ReleaseBody::default()).unwrap();
    let cv = leased(&d, &who, c.id).await;
    assert!(
        matches!(cv.slice, Some(Slice::Mig { gpu: 0, .. })),
        "{cv:?}"
    );
    assert_eq!(mode(&d, &who), "mig");
    stop(d, sched).await;

    let store = Store::open(&cfg.state_dir().join("tessera.db")).unwrap();
    assert_eq!(store.modes().unwrap()[&0], GpuMode::Mig);
    assert_eq!(store.counter("mode_switches").unwrap(), 2);
    let destroys = store
        .journal()
        .unwrap()
        .iter()
        .filter(|r| r.body.contains("\"intent\"") && r.body.contains("destroy_gi"))
        .count();
    assert_eq!(
        destroys, 1,
        "the idle 3g.40gb was destroyed through the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_with_a_fixed_mode_is_never_switched_and_refuses_what_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        gpus: vec![GpuSettings {
            index: 0,
            mode: ModeChoice::Mig,
            mps: Default::default(),
            replicas: 4,
        }],
        ..config(dir.path())
    };
    let (d, sched) = start(&cfg, SimConfig::default());
    let who = Identity::in_process(1000, "alice");
    assert!(!d.gpus()[0].auto);
    let e = d.submit(&who, mps()).unwrap_err();
    assert!(e.message.contains("can ever serve"), "{}", e.message);
    stop(d, sched).await;

    // The same machine with the GPU `auto`: the ask is accepted, since the GPU may become MPS.
    let dir = tempfile::tempdir().unwrap();
    let (d, sched) = start(&config(dir.path()), SimConfig::default());
    let v = d.submit(&who, ask(SliceAsk::Share)).unwrap();
    let v = leased(&d, &who, v.id).await;
    assert!(
        matches!(v.slice, Some(Slice::Timeslice { gpu: 0, .. })),
        "{v:?}"
    );
    assert_eq!(mode(&d, &who), "timeslice");
    stop(d, sched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_cut_short_by_a_crash_is_finished_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // The machine dies in the middle of destroying the idle MIG instance on the way to MPS.
    let crash = SimConfig {
        crash: Some(CrashPlan {
            point: Some(CrashPoint::DestroyGiAfterCi),
            nth: 1,
        }),
        ..SimConfig::default()
    };
    let (d, sched) = start(&cfg, crash);
    let who = Identity::in_process(1000, "alice");
    let a = d.submit(&who, mig("3g.40gb")).unwrap();
    leased(&d, &who, a.id).await;
    d.release(&who, a.id, ReleaseBody::default()).unwrap();
    let b = d.submit(&who, mps()).unwrap();
    until("the crash", || {
        d.status(&who).ok()?.gpus[0].last_error.clone()
    })
    .await;
    assert_eq!(d.get(&who, b.id).unwrap().state, RequestState::Queued);
    stop(d, sched).await;
    {
        let store = Store::open(&cfg.state_dir().join("tessera.db")).unwrap();
        assert_eq!(
            store.modes().unwrap()[&0],
            GpuMode::Mps,
            "the mode is recorded first"
        );
        let open = store
            .journal()
            .unwrap()
            .iter()
            .filter(|r| r.body.contains("\"intent\"") && r.body.contains("destroy_gi"))
            .count();
        assert_eq!(open, 1, "one destroy intent, no outcome");
    }

    // Restart on the same machine state, without the crash: the GPU starts in MIG mode (as
    // configured `auto` does), and recovery finishes the switch before the first pass.
    let (d, sched) = start(&cfg, SimConfig::default());
    let bv = leased(&d, &who, b.id).await;
    assert!(
        matches!(bv.slice, Some(Slice::Mps { gpu: 0, .. })),
        "{bv:?}"
    );
    let st = d.status(&who).unwrap();
    assert_eq!(st.gpus[0].mode, "mps");
    assert!(st.gpus[0].instances.is_empty());
    stop(d, sched).await;

    // Restart again while the MPS lease runs: the GPU starts as `auto` does (MIG), and the
    // recorded mode puts it back in MPS under its lease before the first pass.
    let (d, sched) = start(&cfg, SimConfig::default());
    let st = d.status(&who).unwrap();
    assert_eq!(st.gpus[0].mode, "mps");
    assert_eq!(st.gpus[0].busy, 1, "the MPS lease is re-adopted on its GPU");
    assert_eq!(d.get(&who, b.id).unwrap().state, RequestState::Leased);
    stop(d, sched).await;
    let store = Store::open(&cfg.state_dir().join("tessera.db")).unwrap();
    let recovered = store
        .journal()
        .unwrap()
        .iter()
        .filter(|r| r.body.contains("recovered"))
        .count();
    assert_eq!(
        recovered, 1,
        "the cut-short destroy got its recovered outcome"
    );
}
