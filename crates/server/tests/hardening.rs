//! Issue 12's daemon defects, each reproduced: a lease matched on the wrong GPU after a
//! re-partition, a simulated fleet with gaps in its GPU indices, a loose state directory, a
//! damaged or emptied database, a paused daemon, and an unreadable `/proc` entry.

use std::path::Path;
use std::time::{Duration, Instant};

use tessera_gpu::sim::{SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_server::config::{BackendChoice, Config, LeaseSettings, SchedulerSettings};
use tessera_server::daemon::SchedulerHandle;
use tessera_server::fleet::Fleet;
use tessera_server::ident::Identity;
use tessera_server::wire::{RequestState, RequestView, Slice, SliceAsk, SubmitBody};
use tessera_server::Daemon;

fn config(dir: &Path, gpus: u32, tick_ms: u64) -> Config {
    Config {
        backend: BackendChoice::Sim,
        sim_gpus: format!("h100-80gb:{gpus}"),
        state_dir: Some(dir.join("state")),
        scheduler: SchedulerSettings {
            tick_ms,
            ..SchedulerSettings::default()
        },
        lease: LeaseSettings {
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 400,
        },
        ..Config::default()
    }
}

fn start(cfg: &Config, gpus: u32) -> (Daemon, SchedulerHandle) {
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(&catalog, &[("h100-80gb".into(), gpus)], 3, true).unwrap();
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_sim(sim, cfg, &cfg.state_dir(), &catalog).unwrap();
    Daemon::start(cfg.clone(), catalog, fleet).unwrap()
}

fn mig(p: &str) -> SubmitBody {
    SubmitBody {
        slice: SliceAsk::Mig { profile: p.into() },
        gpu_model: None,
        priority: 0,
        command: vec!["job".into()],
    }
}

async fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn leased(d: &Daemon, who: &Identity, id: u64, within: Duration) -> RequestView {
    until("the lease", within, || {
        let v = d.get(who, id).ok()?;
        (v.state == RequestState::Leased).then_some(v)
    })
    .await
}

async fn stop(d: Daemon, sched: SchedulerHandle) {
    d.stop();
    tokio::task::spawn_blocking(move || sched.join())
        .await
        .unwrap();
}

/// Defect 5: after re-partitioning GPU 1, the instance 4g.40gb@0 there must not be taken for
/// the lease on GPU 0's 4g.40gb@0. A long tick means only the submit's own pass can grant, so
/// a failed grant shows as a request left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repartition_matches_leases_of_its_own_gpu_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, 60_000);
    let (d, sched) = start(&cfg, 2);
    let alice = Identity::in_process(1000, "alice");
    let bob = Identity::in_process(1001, "bob");
    let a = d.submit(&alice, mig("4g.40gb")).unwrap();
    let a = leased(&d, &alice, a.id, Duration::from_secs(10)).await;
    let Some(Slice::Mig { gpu: 0, start, .. }) = a.slice else {
        panic!("expected GPU 0: {:?}", a.slice)
    };
    let b = d.submit(&bob, mig("4g.40gb")).unwrap();
    let b = until("bob's lease or an error", Duration::from_secs(10), || {
        let v = d.get(&bob, b.id).ok()?;
        if v.state == RequestState::Leased {
            return Some(Ok(v));
        }
        let st = d.status(&bob).ok()?;
        st.gpus[1].last_error.clone().map(Err)
    })
    .await
    .unwrap_or_else(|e| panic!("GPU 1 failed because of GPU 0's lease: {e}"));
    match b.slice {
        Some(Slice::Mig {
            gpu: 1, start: s, ..
        }) => assert_eq!(s, start),
        other => panic!("expected GPU 1: {other:?}"),
    }
    let st = d.status(&alice).unwrap();
    assert_eq!(st.gpus[1].instances.iter().filter(|i| i.busy).count(), 1);
    stop(d, sched).await;
}

/// Defect 6: a `sim-gpus.json` whose GPU indices skip a number is refused at start with the
/// file, the index and the fix (it used to panic on the first request for that GPU).
#[test]
fn a_sim_fleet_with_a_gap_in_its_indices_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, 50);
    let catalog = Catalog::builtin().clone();
    let state_dir = cfg.state_dir();
    std::fs::create_dir_all(&state_dir).unwrap();
    let path = tessera_server::fleet::sim_state_path(&state_dir);
    let st = SimState::new(&catalog, &[("h100-80gb".into(), 2)], 3, true).unwrap();
    drop(SimBackend::create(&path, st, catalog.clone()).unwrap());
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["gpus"][1]["index"] = 5.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let e = Fleet::open(&cfg, &state_dir, &catalog)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sim-gpus.json") && e.contains("index 5") && e.contains("`gpus[1].index` to 1"),
        "{e}"
    );
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Defect 7: a pre-existing state directory open to other users is made 0700 (and the start
/// says so); the database is 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loose_state_directory_is_made_private_and_the_database_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 50);
    let state_dir = cfg.state_dir();
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (d, sched) = start(&cfg, 1);
    assert_eq!(mode(&state_dir), 0o700);
    let notices = d.notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("0755") && n.contains("0700")),
        "{notices:?}"
    );
    for f in ["tessera.db", "tessera.db-wal"] {
        assert_eq!(mode(&state_dir.join(f)), 0o600, "{f}");
    }
    stop(d, sched).await;
}

/// Defect 7: a state directory that belongs to another uid is refused, naming the owner and
/// the fix. Needs root to give the directory away; skipped otherwise.
#[test]
fn a_state_directory_of_another_uid_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    if std::os::unix::fs::chown(&state_dir, Some(4242), None).is_err() {
        eprintln!("not root: cannot give the directory to another uid; skipped");
        return;
    }
    let e = tessera_server::serve::secure_state_dir(&state_dir)
        .unwrap_err()
        .to_string();
    assert!(e.contains("uid 4242") && e.contains("chown"), "{e}");
}
