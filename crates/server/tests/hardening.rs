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
            ..LeaseSettings::default()
        },
        ..Config::default()
    }
}

fn start(cfg: &Config, gpus: u32) -> (Daemon, SchedulerHandle) {
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(&catalog, &[("h100-80gb".into(), gpus)], 3, true).unwrap();
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), cfg, &cfg.state_dir(), &catalog).unwrap();
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

/// A daemon over the simulated fleet kept in the state directory (so a restart sees the
/// GPUs as the last run left them).
fn start_persistent(cfg: &Config) -> Result<(Daemon, SchedulerHandle), String> {
    let catalog = Catalog::builtin().clone();
    tessera_server::serve::secure_state_dir(&cfg.state_dir()).unwrap();
    let (fleet, _) = Fleet::open(cfg, &cfg.state_dir(), &catalog).map_err(|e| e.to_string())?;
    Daemon::start(cfg.clone(), catalog, fleet).map_err(|e| e.to_string())
}

/// Run one lease to the end of a daemon's life (it stays leased in the database) and return
/// its ID.
async fn leave_a_lease(cfg: &Config) -> u64 {
    let (d, sched) = start_persistent(cfg).unwrap();
    let who = Identity::in_process(1000, "alice");
    let v = d.submit(&who, mig("3g.40gb")).unwrap();
    let v = leased(&d, &who, v.id, Duration::from_secs(10)).await;
    stop(d, sched).await;
    v.id
}

fn sql(cfg: &Config, statement: &str) {
    let c = rusqlite::Connection::open(cfg.state_dir().join("tessera.db")).unwrap();
    c.execute_batch(statement).unwrap();
}

/// Defect 13: a journal row that fails its checksum names the table, the row and the GPU,
/// and the fix (`--discard-journal`) works: the daemon starts and keeps the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_says_what_and_how_to_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 50);
    // Long enough that the lease does not expire across the restarts.
    cfg.lease.heartbeat_timeout_ms = 60_000;
    let id = leave_a_lease(&cfg).await;
    sql(
        &cfg,
        "UPDATE journal SET body = body || ' ' WHERE seq = (SELECT MIN(seq) FROM journal)",
    );
    let e = start_persistent(&cfg).map(|_| ()).unwrap_err();
    assert!(
        e.contains("table `journal`, row ")
            && e.contains("of GPU 0)")
            && e.contains("tessera serve --discard-journal"),
        "{e}"
    );
    cfg.discard_journal = true;
    let (d, sched) = start_persistent(&cfg).unwrap();
    assert!(
        d.notices().iter().any(|n| n.contains("deleted")),
        "{:?}",
        d.notices()
    );
    let who = Identity::in_process(1000, "alice");
    assert_eq!(d.get(&who, id).unwrap().state, RequestState::Leased);
    stop(d, sched).await;
}

/// Defect 13: a database emptied behind the daemon's back (schema kept, rows gone) while the
/// simulated GPU still has the lease's instance is warned about at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_database_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 50);
    leave_a_lease(&cfg).await;
    sql(
        &cfg,
        "DELETE FROM requests; DELETE FROM desired; DELETE FROM journal;",
    );
    let (d, sched) = start_persistent(&cfg).unwrap();
    let notices = d.notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("emptied") && n.contains("GPU 0 has 1 MIG instance")),
        "{notices:?}"
    );
    stop(d, sched).await;
    // Requests and layouts gone, the journal kept: the journal gives it away.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 50);
    leave_a_lease(&cfg).await;
    sql(&cfg, "DELETE FROM requests; DELETE FROM desired;");
    let (d, sched) = start_persistent(&cfg).unwrap();
    let notices = d.notices();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("emptied") && n.contains("its journal holds")),
        "{notices:?}"
    );
    stop(d, sched).await;
    // A fresh state directory over fresh GPUs says nothing.
    let fresh = tempfile::tempdir().unwrap();
    let cfg = config(fresh.path(), 1, 50);
    let (d, sched) = start_persistent(&cfg).unwrap();
    assert!(d.notices().is_empty(), "{:?}", d.notices());
    stop(d, sched).await;
}

/// Defect 13: a request row with a negative uid or pid is refused with the table, the row,
/// the column and the fix, not "Integer -1 out of range".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_a_negative_uid_or_pid_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 50);
    cfg.lease.heartbeat_timeout_ms = 60_000;
    let id = leave_a_lease(&cfg).await;
    for (column, fix) in [("uid", "user id"), ("pid", "process id")] {
        sql(
            &cfg,
            &format!("UPDATE requests SET {column} = -1 WHERE id = {id}"),
        );
        let e = start_persistent(&cfg).map(|_| ()).unwrap_err();
        assert!(
            e.contains(&format!("table `requests`, row {id}: `{column}` is -1"))
                && e.contains(fix)
                && e.contains(&format!("DELETE FROM requests WHERE id = {id}"))
                && !e.contains("out of range"),
            "{e}"
        );
        sql(
            &cfg,
            &format!("UPDATE requests SET {column} = 1000 WHERE id = {id}"),
        );
    }
}

/// A clock that a test can jump forward, as if the daemon had been stopped (`kill -STOP`)
/// for that long: heartbeats sent meanwhile have not been read.
struct JumpClock {
    base: Instant,
    offset_ms: std::sync::atomic::AtomicU64,
}

impl JumpClock {
    fn jump(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl tessera_server::liveness::Clock for JumpClock {
    fn now(&self) -> Instant {
        let real = Instant::now().duration_since(self.base);
        self.base
            + real
            + Duration::from_millis(self.offset_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Wait until the scheduler has run `n` more passes.
async fn passes(d: &Daemon, n: u64) {
    let target = d.passes() + n;
    until("scheduler passes", Duration::from_secs(20), || {
        (d.passes() >= target).then_some(())
    })
    .await;
}

/// Defect 2: after the daemon was paused for longer than the heartbeat timeout, a client
/// that kept sending heartbeats keeps its lease; one that stays silent still expires once the
/// daemon has run for the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_daemon_keeps_healthy_leases() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 50);
    cfg.lease.heartbeat_timeout_ms = 3_000;
    let clock = std::sync::Arc::new(JumpClock {
        base: Instant::now(),
        offset_ms: 0.into(),
    });
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    let (d, sched) = Daemon::start_with_clock(cfg, catalog, fleet, clock.clone()).unwrap();
    // HTTP callers have no process to watch: only heartbeats keep their leases.
    let healthy = Identity::http(1000);
    let silent = Identity::http(1001);
    let h = d.submit(&healthy, mig("1g.10gb")).unwrap();
    let s = d.submit(&silent, mig("1g.10gb")).unwrap();
    leased(&d, &healthy, h.id, Duration::from_secs(10)).await;
    leased(&d, &silent, s.id, Duration::from_secs(10)).await;
    d.heartbeat(&healthy, h.id).unwrap();
    d.heartbeat(&silent, s.id).unwrap();
    // The daemon "sleeps" a minute; the first passes after it run before any heartbeat.
    clock.jump(Duration::from_secs(60));
    passes(&d, 3).await;
    assert_eq!(
        d.get(&healthy, h.id).unwrap().state,
        RequestState::Leased,
        "a healthy lease expired because the daemon was paused"
    );
    // Now the healthy client's queued heartbeats arrive; the silent one sends none.
    let silent_ended = until("the silent lease's expiry", Duration::from_secs(20), || {
        d.heartbeat(&healthy, h.id).ok()?;
        let v = d.get(&silent, s.id).ok()?;
        (v.state == RequestState::Expired).then_some(v)
    })
    .await;
    assert!(silent_ended.end_reason.unwrap().contains("no heartbeat"));
    let text = d.metrics().render();
    let stalls: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tessera_scheduler_stalls_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(stalls >= 1, "{text}");
    assert_eq!(d.get(&healthy, h.id).unwrap().state, RequestState::Leased);
    stop(d, sched).await;
}

/// Serve `d`'s API on a Unix socket in `dir` and on 127.0.0.1, with the connection guard.
async fn serve_guarded(
    d: &Daemon,
    dir: &Path,
    max: u32,
    idle: Duration,
) -> (std::path::PathBuf, std::net::SocketAddr) {
    use tessera_server::http::{router, AppState, GuardCounters, Guarded, Peer};
    let socket = dir.join("api.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = router(AppState {
        daemon: d.clone(),
        token: Some("secret".into()),
    });
    let counters = GuardCounters {
        refused: d.metrics().connections_refused.clone(),
        timed_out: d.metrics().connections_timed_out.clone(),
    };
    let c = counters.clone();
    let svc = app.clone().into_make_service_with_connect_info::<Peer>();
    tokio::spawn(
        async move { axum::serve(Guarded::new(unix, max, idle).with_counters(c), svc).await },
    );
    let svc = app.into_make_service_with_connect_info::<Peer>();
    tokio::spawn(async move {
        axum::serve(Guarded::new(tcp, max, idle).with_counters(counters), svc).await
    });
    (socket, addr)
}

/// Whether the server closes `s` within `within` (EOF or an error on read).
async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Defect 1: one uid cannot hold more than its share of connections (the next ones are
/// closed at once), idle connections are closed after the idle timeout, and then the API
/// answers again. The same holds per address on TCP, where no token is needed to connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_time_out_and_each_uid_has_a_cap() {
    use tessera_server::client::Client;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 50);
    let (d, sched) = start(&cfg, 1);
    let idle = Duration::from_millis(1_500);
    let (socket, addr) = serve_guarded(&d, dir.path(), 2, idle).await;
    let mut held = [
        tokio::net::UnixStream::connect(&socket).await.unwrap(),
        tokio::net::UnixStream::connect(&socket).await.unwrap(),
    ];
    let mut third = tokio::net::UnixStream::connect(&socket).await.unwrap();
    assert!(
        closed(&mut third, Duration::from_secs(5)).await,
        "a third connection of the same uid is closed at once"
    );
    let e = Client::new(&socket).status().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    // The idle ones go after the timeout (well before the 10 s bound)...
    for c in held.iter_mut() {
        assert!(
            closed(c, Duration::from_secs(10)).await,
            "idle connection kept"
        );
    }
    // ...and the API answers again.
    let st = Client::new(&socket).status().await.unwrap();
    assert_eq!(st.gpus.len(), 1);
    // TCP: the same cap per address, and the same timeout without any token.
    let mut t1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _t2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut t3 = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut t3, Duration::from_secs(5)).await);
    assert!(closed(&mut t1, Duration::from_secs(10)).await);
    // Both show in the metrics.
    let text = d.metrics().render();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(value("tessera_connections_refused_total") >= 3, "{text}");
    assert!(value("tessera_connections_timed_out_total") >= 3, "{text}");
    stop(d, sched).await;
}

/// Defect 1: a client that sends its request a byte at a time is cut off once the idle
/// timeout has passed since its first byte; a long poll is shortened to fit in the timeout
/// and answers normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_is_cut_off_and_a_long_poll_fits_the_timeout() {
    use tessera_server::client::Client;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 50);
    cfg.connections.idle_timeout_ms = 1_000;
    cfg.lease.heartbeat_timeout_ms = 10_000;
    let (d, sched) = start(&cfg, 1);
    let (socket, _) = serve_guarded(&d, dir.path(), 8, Duration::from_millis(1_000)).await;
    let mut slow = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let request = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut cut = false;
    for b in request {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cut || closed(&mut slow, Duration::from_millis(10)).await,
        "a request dribbled over {:?} was never cut off",
        started.elapsed()
    );
    // The queue's long poll (asked for 30 s) is held to half the timeout.
    let who = Client::new(&socket);
    let v = who.submit(&mig("7g.80gb")).await.unwrap();
    let blocker = who.submit(&mig("7g.80gb")).await.unwrap();
    let t = Instant::now();
    let w = who.wait(blocker.id, Duration::from_secs(30)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(w.state, RequestState::Queued, "{v:?}");
    stop(d, sched).await;
}

/// Defect 1: the per-uid cap never exceeds a quarter of the open-file limit.
#[test]
fn the_connection_cap_is_held_to_a_quarter_of_the_open_file_limit() {
    use tessera_server::serve::connection_cap;
    assert_eq!(connection_cap(256, Some(128)), 32);
    assert_eq!(connection_cap(256, Some(1 << 20)), 256);
    assert_eq!(connection_cap(256, None), 256);
    assert_eq!(connection_cap(256, Some(8)), 4);
    assert_eq!(connection_cap(2, Some(8)), 2);
}

/// Defect 1: at start the daemon raises its soft open-file limit to the hard limit.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let start = getrlimit(Resource::Nofile);
    if let Some(hard) = start.maximum {
        // Lower the soft limit a little (still plenty for the other tests) to see it raised.
        let lower = hard.saturating_sub(1).max(1024).min(hard);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(lower),
                maximum: Some(hard),
            },
        )
        .unwrap();
    }
    let (_, after) = tessera_server::serve::raise_nofile_limit();
    let now = getrlimit(Resource::Nofile);
    assert_eq!(now.current, now.maximum);
    assert_eq!(after, now.maximum);
}
