//! Issue 12 defects 1 and 2 against the real `tessera serve`: a daemon stopped with SIGSTOP
//! for longer than the heartbeat timeout, and a daemon short of file descriptors while another
//! uid holds idle connections, both keep a healthy client's lease.

mod server_common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use server_common::{block, is_root, poll, temp_dir, wait_child, Daemon, BIN};
use tessera_server::wire::{RequestState, RequestView};

/// Poll until the caller's first request is leased.
fn the_lease(d: &Daemon) -> RequestView {
    let client = d.client();
    poll(30, "the lease", || {
        block(client.list(false))
            .ok()?
            .into_iter()
            .find(|v| v.state == RequestState::Leased)
    })
}

/// The caller's request `id` once it has ended.
fn ended(d: &Daemon, id: u64) -> RequestView {
    let client = d.client();
    poll(30, "the request's end", || {
        block(client.list(true))
            .ok()?
            .into_iter()
            .find(|v| v.id == id && !v.state.is_active())
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Defect 2: `kill -STOP` the daemon for twice the heartbeat timeout, then `kill -CONT`: the
/// client that kept sending heartbeats keeps its lease and its command runs to its end.
#[test]
fn a_daemon_stopped_longer_than_the_heartbeat_timeout_keeps_a_healthy_lease() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 100}\nlease: {heartbeat_interval_ms: 200, heartbeat_timeout_ms: 1500}\n",
    );
    let mut run = d
        .cli(&["run", "-q", "--mig", "1g.10gb", "--", "sleep", "5"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lease = the_lease(&d);
    signal(d.child.id(), libc::SIGSTOP);
    // The pause itself: twice the heartbeat timeout with the daemon stopped.
    std::thread::sleep(Duration::from_secs(3));
    signal(d.child.id(), libc::SIGCONT);
    let st = wait_child(&mut run, 60, "tessera run");
    let v = ended(&d, lease.id);
    assert_eq!(v.state, RequestState::Done, "{v:?}\n{}", d.log_text());
    assert!(st.success(), "{st}\n{}", d.log_text());
    assert!(
        d.log_text().contains("the scheduler did not run for"),
        "{}",
        d.log_text()
    );
}

/// Hold `TESSERA_HOLD_N` idle connections to the socket `TESSERA_HOLD` until stdin closes
/// (run as another uid by the test below; does nothing on its own).
#[test]
#[ignore = "a helper process of the fd-exhaustion test"]
fn hold_connections_helper() {
    let (Ok(socket), Ok(n)) = (
        std::env::var("TESSERA_HOLD"),
        std::env::var("TESSERA_HOLD_N"),
    ) else {
        return;
    };
    let n: usize = n.parse().unwrap();
    let held: Vec<_> = (0..n)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
        .collect();
    println!("held {}", held.len());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(held);
}

/// Defect 1: under `prlimit --nofile=128:128`, another uid opens 130 idle connections. The
/// daemon caps that uid's connections (to a quarter of its open-file limit), so it keeps
/// descriptors to read `/proc` with, and the healthy client's lease survives. Needs root (to
/// be another uid) and `prlimit`; skipped otherwise.
#[test]
fn idle_connections_of_another_uid_do_not_end_a_healthy_lease() {
    if !is_root() {
        eprintln!("not root: cannot open connections as another uid; skipped");
        return;
    }
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("no prlimit (util-linux) on this machine; skipped");
        return;
    }
    let dir = temp_dir();
    let socket = dir.path().join("tessera.sock");
    let state = dir.path().join("state");
    let cfg = dir.path().join("config.yaml");
    let cgroup = format!("tessera-test-fd-{}", std::process::id());
    fs::write(
        &cfg,
        format!("sim_gpus: h100-80gb:1\nsocket_group: \"0\"\nscheduler: {{tick_ms: 100}}\nlease: {{heartbeat_interval_ms: 300, heartbeat_timeout_ms: 3000}}\nisolation_cgroup: {cgroup}\n"),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let child = Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(BIN)
        .args(["serve", "--backend", "sim", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        dir: dir.path().to_path_buf(),
        socket: socket.clone(),
        state,
        log,
        cgroup,
    };
    poll(60, "the daemon's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    });
    let mut run = d
        .cli(&["run", "-q", "--mig", "1g.10gb", "--", "sleep", "4"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lease = the_lease(&d);
    let mut flood = Command::new(std::env::current_exe().unwrap())
        .args([
            "hold_connections_helper",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("TESSERA_HOLD", &socket)
        .env("TESSERA_HOLD_N", "130")
        .uid(65534)
        .gid(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let st = wait_child(&mut run, 60, "tessera run");
    drop(flood.stdin.take());
    let _ = flood.wait();
    let v = ended(&d, lease.id);
    assert_eq!(v.state, RequestState::Done, "{v:?}\n{}", d.log_text());
    assert!(st.success(), "{st}\n{}", d.log_text());
    assert!(
        d.log_text().contains("at most 32 connections per uid")
            && d.log_text()
                .contains("closing new connections from uid 65534"),
        "{}",
        d.log_text()
    );
}

/// Run `tessera serve` with these extra arguments on a fresh socket in `dir`; it must fail
/// at start. Its stderr.
fn serve_fails(dir: &std::path::Path, extra: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--backend", "sim", "--socket"])
        .arg(dir.join("t.sock"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_child(&mut child, 60, "tessera serve");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!st.success(), "serve started: {err}");
    err
}

/// Defects 6 and 8 through the binary: a `sim-gpus.json` with a gap in its indices and a
/// NaN in the config each stop `tessera serve` at start with the file, the key or index, and
/// the fix (no panic, no daemon that queues but never schedules).
#[test]
fn serve_refuses_a_gapped_sim_fleet_and_a_nan_config_by_name() {
    let dir = temp_dir();
    let state = dir.path().join("state");
    let d = Daemon::start(dir.path(), "sim_gpus: h100-80gb:2\n");
    drop(d);
    let sim = state.join("sim-gpus.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&sim).unwrap()).unwrap();
    json["gpus"][1]["index"] = 5.into();
    fs::write(&sim, json.to_string()).unwrap();
    let err = serve_fails(dir.path(), &["--state-dir", state.to_str().unwrap()]);
    assert!(
        err.contains("sim-gpus.json") && err.contains("index 5") && !err.contains("panicked"),
        "{err}"
    );
    let cfg = dir.path().join("nan.yaml");
    fs::write(
        &cfg,
        "gpus: [{index: 0, mode: mps, mps: {sm_oversubscription: .nan}}]\n",
    )
    .unwrap();
    let fresh = dir.path().join("fresh");
    let err = serve_fails(
        dir.path(),
        &[
            "--state-dir",
            fresh.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("nan.yaml")
            && err.contains("`gpus[0].mps.sm_oversubscription` is NaN")
            && err.contains("allowed"),
        "{err}"
    );
}
