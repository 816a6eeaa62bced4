//! Cancel is enforced (issue 12, defect 4): a client that keeps heartbeating and ignores a
//! cancel loses its lease after `lease.cancel_grace_ms`, its processes get SIGKILL, and the
//! slice goes to the next request — with a per-lease cgroup (where the v1 devices controller
//! is writable) and with the process-tree fallback (`isolation: off`).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tessera_gpu::sim::{SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_server::config::SchedulerSettings;
use tessera_server::config::{BackendChoice, Config, IsolationMode, LeaseSettings};
use tessera_server::daemon::SchedulerHandle;
use tessera_server::fleet::Fleet;
use tessera_server::ident::{Identity, Via};
use tessera_server::liveness::ProcessStamp;
use tessera_server::wire::{RequestState, RequestView, SliceAsk, SubmitBody};
use tessera_server::Daemon;

fn start(dir: &Path, isolation: Option<IsolationMode>) -> (Daemon, SchedulerHandle) {
    let cfg = Config {
        backend: BackendChoice::Sim,
        sim_gpus: "h100-80gb:1".into(),
        state_dir: Some(dir.join("state")),
        scheduler: SchedulerSettings {
            tick_ms: 50,
            ..SchedulerSettings::default()
        },
        lease: LeaseSettings {
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 60_000,
            cancel_grace_ms: 300,
        },
        isolation,
        ..Config::default()
    };
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    Daemon::start(cfg, catalog, fleet).unwrap()
}

fn whole_gpu() -> SubmitBody {
    SubmitBody {
        slice: SliceAsk::Mig {
            profile: "7g.80gb".into(),
        },
        gpu_model: None,
        priority: 0,
        command: vec!["train".into()],
    }
}

/// A socket caller whose process is `child` (as `SO_PEERCRED` would report it).
fn caller(uid: u32, user: &str, child: &Child) -> Identity {
    Identity {
        uid,
        user: user.into(),
        process: ProcessStamp::of(child.id()),
        via: Via::Socket,
        admin: false,
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

/// A client that heartbeats but ignores cancel: it and its child (`sh` running a `sleep`)
/// must both be killed, and the slice must be leased to the next user.
async fn cancel_is_enforced(isolation: Option<IsolationMode>) -> RequestView {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched) = start(dir.path(), isolation);
    // The "client" is a shell with a child of its own: the whole tree must go.
    let mut client = Command::new("sh")
        .args(["-c", "sleep 300 & wait"])
        .spawn()
        .unwrap();
    let alice = caller(1000, "alice", &client);
    let v = d.submit(&alice, whole_gpu()).unwrap();
    let lease = until("alice's lease", || {
        let x = d.get(&alice, v.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    let root = Identity::in_process(0, "root");
    let c = d.cancel(&root, v.id).unwrap();
    assert!(c.cancel_requested, "{c:?}");
    // The client keeps heartbeating and does not stop: the daemon ends it after the grace.
    let ended = until("the enforced cancel", || {
        let _ = d.heartbeat(&alice, v.id);
        let x = d.get(&alice, v.id).ok()?;
        (x.state != RequestState::Leased).then_some(x)
    })
    .await;
    assert_eq!(ended.state, RequestState::Cancelled, "{ended:?}");
    assert!(
        ended
            .end_reason
            .as_deref()
            .unwrap_or("")
            .contains("SIGKILL"),
        "{ended:?}"
    );
    let st = client.wait().unwrap();
    assert_eq!(st.signal(), Some(9), "the client must get SIGKILL: {st:?}");
    // The slice is free again: bob gets the whole GPU.
    let mut other = Command::new("sleep").arg("300").spawn().unwrap();
    let bob = caller(1001, "bob", &other);
    let w = d.submit(&bob, whole_gpu()).unwrap();
    let bobs = until("bob's lease", || {
        let x = d.get(&bob, w.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    // Bob's client releases and exits: his lease's cgroup (if any) goes with it.
    let _ = d.release(&bob, w.id, Default::default());
    let _ = other.kill();
    let _ = other.wait();
    if let Some(path) = bobs.env["TESSERA_ISOLATION"].strip_prefix("devices: ") {
        until("the removal of bob's cgroup", || {
            (!Path::new(path).exists()).then_some(())
        })
        .await;
    }
    d.stop();
    sched.join();
    lease
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_the_client_ignores_is_enforced_with_a_cgroup() {
    let lease = cancel_is_enforced(None).await;
    let iso = lease
        .env
        .get("TESSERA_ISOLATION")
        .cloned()
        .unwrap_or_default();
    if iso.starts_with("none") {
        eprintln!("(no writable cgroup here: the process-tree fallback was tested: {iso})");
    } else {
        assert!(iso.starts_with("devices: "), "{iso}");
        assert!(iso.ends_with(&format!("lease-{}", lease.id)), "{iso}");
        // The cgroup is gone with the lease.
        let path = iso.trim_start_matches("devices: ");
        assert!(!Path::new(path).exists(), "{path} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_the_client_ignores_is_enforced_through_the_process_tree() {
    let lease = cancel_is_enforced(Some(IsolationMode::Off)).await;
    let iso = lease
        .env
        .get("TESSERA_ISOLATION")
        .cloned()
        .unwrap_or_default();
    assert!(iso.starts_with("none: device isolation is off"), "{iso}");
}

/// A v1 freezer cgroup holding one process: SIGKILL takes effect only once it is thawed, so
/// it stands in for a lease process that does not die at once (a stuck driver call).
struct Frozen {
    dir: std::path::PathBuf,
}

impl Frozen {
    fn new(pid: u32) -> Option<Frozen> {
        let dir = Path::new("/sys/fs/cgroup/freezer")
            .join(format!("tessera-test-{}-{pid}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let f = Frozen { dir };
        std::fs::write(f.dir.join("cgroup.procs"), pid.to_string()).ok()?;
        std::fs::write(f.dir.join("freezer.state"), "FROZEN").ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(f.dir.join("freezer.state"))
            .ok()?
            .trim()
            != "FROZEN"
        {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now();
        }
        Some(f)
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.dir.join("freezer.state"), "THAWED");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        let _ = std::fs::write("/sys/fs/cgroup/freezer/cgroup.procs", "");
        for _ in 0..1000 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A process of an ended lease that does not die at once keeps its slice quarantined: shown
/// in status, never leased to the next user until it is gone.
async fn quarantine_holds_the_slice(isolation: Option<IsolationMode>) {
    let dir = tempfile::tempdir().unwrap();
    let (d, sched) = start(dir.path(), isolation);
    let mut client = Command::new("sleep").arg("300").spawn().unwrap();
    let alice = caller(1000, "alice", &client);
    let v = d.submit(&alice, whole_gpu()).unwrap();
    until("alice's lease", || {
        let x = d.get(&alice, v.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    let Some(frozen) = Frozen::new(client.id()) else {
        eprintln!("skipped: no writable cgroup v1 freezer to hold a process");
        let _ = client.kill();
        let _ = client.wait();
        d.stop();
        sched.join();
        return;
    };
    let root = Identity::in_process(0, "root");
    d.cancel(&root, v.id).unwrap();
    until("the enforced cancel", || {
        let _ = d.heartbeat(&alice, v.id);
        let x = d.get(&alice, v.id).ok()?;
        (x.state == RequestState::Cancelled).then_some(x)
    })
    .await;
    let mut other = Command::new("sleep").arg("300").spawn().unwrap();
    let bob = caller(1001, "bob", &other);
    let w = d.submit(&bob, whole_gpu()).unwrap();
    let note = until("the quarantine in status", || {
        let st = d.status(&root).ok()?;
        st.gpus[0].quarantined.first().cloned()
    })
    .await;
    assert!(
        note.contains(&format!("request {}", v.id)) && note.contains(&client.id().to_string()),
        "{note}"
    );
    // Several passes later bob still waits, and the instance shows busy.
    let target = d.passes() + 8;
    until("eight scheduler passes", || {
        (d.passes() >= target).then_some(())
    })
    .await;
    assert_eq!(d.get(&bob, w.id).unwrap().state, RequestState::Queued);
    let st = d.status(&root).unwrap();
    assert!(st.gpus[0].instances.iter().all(|i| i.busy), "{st:?}");
    // The process dies once thawed (its SIGKILL was pending): bob gets the instance.
    frozen.thaw();
    let st = client.wait().unwrap();
    assert_eq!(st.signal(), Some(9), "{st:?}");
    let bobs = until("bob's lease", || {
        let x = d.get(&bob, w.id).ok()?;
        (x.state == RequestState::Leased).then_some(x)
    })
    .await;
    assert!(d.status(&root).unwrap().gpus[0].quarantined.is_empty());
    let _ = d.release(&bob, w.id, Default::default());
    let _ = other.kill();
    let _ = other.wait();
    drop(frozen);
    if let Some(path) = bobs.env["TESSERA_ISOLATION"].strip_prefix("devices: ") {
        until("the removal of bob's cgroup", || {
            (!Path::new(path).exists()).then_some(())
        })
        .await;
    }
    d.stop();
    sched.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_stays_quarantined_while_an_ended_lease_process_lives_with_a_cgroup() {
    quarantine_holds_the_slice(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_stays_quarantined_while_an_ended_lease_process_lives_without_cgroups() {
    quarantine_holds_the_slice(Some(IsolationMode::Off)).await;
}
