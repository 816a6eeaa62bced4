//! Lease isolation end to end: the real `tessera serve` (sim backend) and real `tessera run`
//! clients.
//!
//! - Issue 12, defect 3: a `tessera run` stopped with SIGSTOP past the heartbeat timeout must
//!   not let another user get the same MIG instance while its command still runs — with a
//!   per-lease cgroup and with the process-tree fallback (`isolation: off`).
//! - Issue 19, item 2: a lease's command opens its slice's device nodes and is refused every
//!   other one. The daemon reads device numbers from a tree laid out like `/dev` and `/proc`
//!   (`isolation_root`) whose nodes carry NVIDIA's numbers; no driver serves them here, so an
//!   allowed node fails with ENXIO ("No such device or address") and a denied one with EPERM
//!   from the cgroup before the kernel looks for a driver.
//!
//! Needs root (other uids, cgroups, mknod); otherwise each test says it was skipped.

mod server_common;

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use server_common::{block, poll, temp_dir, wait_child, Daemon};
use tessera_isolation::{probe, Availability};
use tessera_server::wire::{RequestState, RequestView};

fn cgroups_writable() -> bool {
    match probe(&format!("tessera-probe-{}", std::process::id())) {
        Availability::V1 { root } => {
            let _ = std::fs::remove_dir(root);
            true
        }
        other => {
            eprintln!("note: {}", other.explain());
            false
        }
    }
}

fn leased(d: &Daemon, uid: u32) -> RequestView {
    poll(30, "the lease", || {
        block(d.client().list(false))
            .ok()?
            .into_iter()
            .find(|v| v.uid == uid && v.state == RequestState::Leased)
    })
}

/// Whether the process runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        })
        .unwrap_or(false)
}

fn stopped_client_does_not_share_its_slice(isolation: &str) {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        &format!(
            "sim_gpus: h100-80gb:1\nsocket_group: \"1000\"\nscheduler: {{tick_ms: 100}}\nlease: {{heartbeat_interval_ms: 200, heartbeat_timeout_ms: 1500}}\n{isolation}"
        ),
    );
    // Files the two users' commands write.
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::set_permissions(&files, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pidfile = files.join("alice-cmd.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let mut alice = d
        .cli(&["run", "-q", "--mig", "7g.80gb", "--", "sh", "-c", &script])
        .uid(1000)
        .gid(1000)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lease = leased(&d, 1000);
    let cmd_pid: u32 = poll(30, "alice's command", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    assert!(running(cmd_pid));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(alice.id() as i32, libc::SIGSTOP) };

    // Bob asks for the same (only) instance; his command records whether alice's still runs.
    let seen = files.join("bob-saw");
    let check = format!(
        "if grep -qv ') Z' /proc/{cmd_pid}/stat 2>/dev/null; then echo overlap; else echo clear; fi > {}",
        seen.display()
    );
    let mut bob = d
        .cli(&["run", "-q", "--mig", "7g.80gb", "--", "sh", "-c", &check])
        .uid(1001)
        .gid(1000)
        .spawn()
        .unwrap();
    let st = wait_child(&mut bob, 60, "bob's run");
    assert!(st.success(), "bob's run: {st:?}");
    let saw = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        saw.trim(),
        "clear",
        "bob got the instance while alice's command {cmd_pid} still ran\n{}",
        d.log_text()
    );
    let v = block(d.client().get(lease.id)).unwrap();
    assert_eq!(v.state, RequestState::Expired, "{v:?}");
    assert!(!running(cmd_pid));
    // The stopped client was ended too (SIGKILL reaches a stopped process).
    let st = wait_child(&mut alice, 30, "alice's stopped run");
    assert_eq!(st.signal(), Some(9), "{st:?}");
}

#[test]
fn a_stopped_client_past_its_timeout_never_shares_its_instance_with_a_cgroup() {
    if !server_common::is_root() || !cgroups_writable() {
        eprintln!("skipped: needs root and a writable cgroup v1 devices controller");
        return;
    }
    stopped_client_does_not_share_its_slice("isolation: devices\n");
}

#[test]
fn a_stopped_client_past_its_timeout_never_shares_its_instance_without_cgroups() {
    if !server_common::is_root() {
        eprintln!("skipped: needs root to run clients as other uids");
        return;
    }
    stopped_client_does_not_share_its_slice("isolation: off\n");
}

fn mknod(path: &Path, major: u32, minor: u32) {
    use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
    mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(major, minor),
    )
    .unwrap();
}

#[test]
fn a_lease_command_opens_only_its_slice_device_nodes() {
    if !server_common::is_root() || !cgroups_writable() {
        eprintln!("skipped: needs root (mknod) and a writable cgroup v1 devices controller");
        return;
    }
    lease_opens_only_its_slice_device_nodes(1);
}

/// The same through the daemon on cgroup v2 (a BPF device program per lease).
#[test]
fn a_lease_command_opens_only_its_slice_device_nodes_on_cgroup_v2() {
    let v2 = tessera_isolation::probe_v2(&format!("tessera-probe-v2-{}", std::process::id()));
    let usable = matches!(v2, Availability::V2 { .. });
    if let Availability::V2 { root } = &v2 {
        let _ = std::fs::remove_dir(root);
    }
    if !server_common::is_root() || !usable {
        eprintln!("skipped: needs root (mknod) and cgroup v2 with BPF device programs");
        return;
    }
    lease_opens_only_its_slice_device_nodes(2);
}

fn lease_opens_only_its_slice_device_nodes(version: u8) {
    let dir = temp_dir();
    // A host tree: GPU nodes 195:N, nvidiactl 195:255, and a capability node (237:M) for
    // every GPU- and compute-instance capability of GPU 0 in the driver's mig-minors list.
    let host = dir.path().join("host");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../isolation/tests/fixtures/nvidia-caps/proc");
    std::fs::create_dir_all(host.join("proc/driver/nvidia-caps")).unwrap();
    std::fs::copy(fixture.join("devices"), host.join("proc/devices")).unwrap();
    let minors = std::fs::read_to_string(fixture.join("driver/nvidia-caps/mig-minors")).unwrap();
    std::fs::write(host.join("proc/driver/nvidia-caps/mig-minors"), &minors).unwrap();
    let dev = host.join("dev");
    std::fs::create_dir_all(dev.join("nvidia-caps")).unwrap();
    mknod(&dev.join("nvidiactl"), 195, 255);
    mknod(&dev.join("nvidia0"), 195, 0);
    mknod(&dev.join("nvidia1"), 195, 1);
    let mut caps = BTreeMap::new();
    for l in minors.lines().filter(|l| l.starts_with("gpu0/")) {
        let (name, m) = l.split_once(' ').unwrap();
        let m: u32 = m.parse().unwrap();
        mknod(&dev.join(format!("nvidia-caps/nvidia-cap{m}")), 237, m);
        caps.insert(format!("nvidia-caps/nvidia-cap{m}"), name.to_string());
    }
    let d = Daemon::start(
        dir.path(),
        &format!(
            "sim_gpus: h100-80gb:1\nscheduler: {{tick_ms: 100}}\nisolation: devices\nisolation_cgroup_version: {version}\nisolation_root: {}\n",
            host.display()
        ),
    );
    let out = dir.path().join("opens");
    // For each node: `ok` when it opens, else the error text of the shell.
    let probe_script = format!(
        "for n in nvidiactl nvidia0 nvidia1 $(cd {dev} && ls nvidia-caps/*); do \
           if (exec 3<{dev}/$n) 2>/tmp/err-$$; then echo \"$n ok\"; else echo \"$n $(cat /tmp/err-$$)\"; fi; \
         done > {out}; rm -f /tmp/err-$$; echo null > /dev/null && echo 'null ok' >> {out}",
        dev = dev.display(),
        out = out.display()
    );
    // Outside any lease: every node passes the cgroup (and fails for want of a driver).
    let st = std::process::Command::new("sh")
        .args(["-c", &probe_script])
        .status()
        .unwrap();
    assert!(st.success());
    let outside = std::fs::read_to_string(&out).unwrap();
    assert!(!outside.contains("not permitted"), "{outside}");

    // In a lease of the whole GPU 0 (7g.80gb: GPU instance 0, compute instance 0).
    let st = d
        .cli(&[
            "run",
            "-q",
            "--mig",
            "7g.80gb",
            "--",
            "sh",
            "-c",
            &probe_script,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "{}", d.log_text());
    let inside = std::fs::read_to_string(&out).unwrap();
    let line = |n: &str| {
        inside
            .lines()
            .find(|l| l.split(' ').next() == Some(n))
            .unwrap_or_else(|| panic!("{n} missing in\n{inside}"))
            .to_string()
    };
    let passes = |l: &str| l.contains("No such device or address") || l.ends_with(" ok");
    for allowed in ["nvidiactl", "nvidia0"] {
        let l = line(allowed);
        assert!(passes(&l), "{allowed} must pass the cgroup: {l}");
    }
    let l = line("nvidia1");
    assert!(
        l.contains("Operation not permitted"),
        "another GPU's node must be refused: {l}"
    );
    // Exactly two capability nodes pass: one GPU instance's and one of its compute instances'.
    let mut open: Vec<&str> = Vec::new();
    for (node, cap) in &caps {
        let l = line(node);
        if passes(&l) {
            open.push(cap);
        } else {
            assert!(l.contains("Operation not permitted"), "{node}: {l}");
        }
    }
    assert_eq!(open.len(), 2, "{open:?}");
    open.sort_by_key(|c| c.len());
    let gi = open[0].strip_suffix("/access").unwrap();
    assert!(
        open[1].starts_with(&format!("{gi}/ci")) && open[1].ends_with("/access"),
        "the GPU instance's own compute instance: {open:?}"
    );
    assert_eq!(line("null"), "null ok");
    // After the lease its cgroup is gone.
    let v = poll(10, "the lease's end", || {
        block(d.client().list(true))
            .ok()?
            .into_iter()
            .find(|v| v.state == RequestState::Done)
    });
    let cg = v.env["TESSERA_ISOLATION"]
        .trim_start_matches("devices: ")
        .to_string();
    assert!(cg.ends_with(&format!("lease-{}", v.id)), "{cg}");
    // The lease's cgroup lay in the hierarchy of the version asked for.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v2_mount = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .map(str::to_string);
    let in_v2 = v2_mount.is_some_and(|m| Path::new(&cg).starts_with(m));
    assert_eq!(in_v2, version == 2, "{cg}");
    poll(10, "the lease cgroup's removal", || {
        (!Path::new(&cg).exists()).then_some(())
    });
}

/// `tessera serve --backend sim` as uid 1000 with this config; (exit status if it ended
/// within the wait, its stderr).
fn serve_unprivileged(dir: &Path, config: &str) -> (Option<std::process::ExitStatus>, String) {
    let home = dir.join(format!("u{}", config.len()));
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();
    let cfg = home.join("config.yaml");
    std::fs::write(&cfg, config).unwrap();
    let log = home.join("serve.log");
    let socket = home.join("s.sock");
    let mut child = std::process::Command::new(server_common::BIN)
        .args(["serve", "--backend", "sim", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(home.join("state"))
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .uid(1000)
        .gid(1000)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Either it refuses to start (exits) or it serves (answers a status request).
    let client = tessera_server::client::Client::new(&socket);
    let st = poll(60, "the daemon to start or refuse", || {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(Some(st));
        }
        block(client.status()).ok().map(|_| None)
    });
    if st.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (st, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn where_cgroups_cannot_be_written_the_daemon_says_so_and_offers_the_opt_out() {
    if !server_common::is_root() || !cgroups_writable() {
        eprintln!("skipped: needs root (to run the daemon as uid 1000) and a cgroup v1 devices controller");
        return;
    }
    let dir = temp_dir();
    // Unset: it serves, after a warning naming the cause and both settings.
    let (st, log) = serve_unprivileged(dir.path(), "sim_gpus: h100-80gb:1\n");
    assert!(st.is_none(), "it must serve: {st:?}\n{log}");
    assert!(log.contains("device isolation is unavailable"), "{log}");
    assert!(log.contains("Permission denied"), "{log}");
    assert!(
        log.contains("`isolation: off`") && log.contains("`isolation: devices`"),
        "{log}"
    );
    // Required: it refuses to start, and says how to opt out.
    let (st, log) = serve_unprivileged(dir.path(), "sim_gpus: h100-80gb:1\nisolation: devices\n");
    let st = st.expect("it must refuse to start");
    assert!(!st.success());
    assert!(log.contains("`isolation: devices` is set"), "{log}");
    assert!(log.contains("set `isolation: off`"), "{log}");
    // A configuration that does not fit the machine: exit 2, and the OS error behind it (the
    // typed cause of `ServerError::Isolation`) printed once on the one `error:` line.
    assert_eq!(st.code(), Some(2), "{log}");
    let line = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {log}"));
    assert_eq!(line.matches("Permission denied").count(), 1, "{line}");
    // Opted out: it serves without a warning.
    let (st, log) = serve_unprivileged(dir.path(), "sim_gpus: h100-80gb:1\nisolation: off\n");
    assert!(st.is_none(), "{log}");
    assert!(!log.contains("unavailable"), "{log}");
    assert!(log.contains("device isolation is off"), "{log}");
}

#[test]
fn what_a_lease_left_running_while_the_daemon_was_down_is_killed_on_restart() {
    if !server_common::is_root() || !cgroups_writable() {
        eprintln!("skipped: needs root and a writable cgroup v1 devices controller");
        return;
    }
    let dir = temp_dir();
    let config = format!(
        "sim_gpus: h100-80gb:1\nscheduler: {{tick_ms: 100}}\nlease: {{heartbeat_interval_ms: 200, heartbeat_timeout_ms: 60000}}\nisolation: devices\nisolation_cgroup: tessera-test-restart-{}\n",
        std::process::id()
    );
    let mut d = Daemon::start(dir.path(), &config);
    let pidfile = dir.path().join("orphan.pid");
    // CMD starts a background child that outlives CMD (and the client).
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let mut client = d
        .cli(&["run", "-q", "--mig", "7g.80gb", "--", "sh", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lease = leased(&d, 0);
    let orphan: u32 = poll(30, "the background child", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    // The daemon dies, then the client: CMD dies with its client, its child lives on.
    d.kill9();
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(running(orphan));
    let d2 = Daemon::start(dir.path(), &config);
    let v = poll(30, "the lease's expiry", || {
        let v = block(d2.client().get(lease.id)).ok()?;
        (v.state == RequestState::Expired).then_some(v)
    });
    assert!(v.end_reason.unwrap_or_default().contains("gone"));
    poll(30, "the orphan's end", || (!running(orphan)).then_some(()));
    // The instance is free again.
    let st = d2
        .cli(&["run", "-q", "--mig", "7g.80gb", "--", "true"])
        .status()
        .unwrap();
    assert!(st.success());
}
