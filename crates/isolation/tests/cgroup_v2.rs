//! The cgroup v2 mechanism for real: a process in a lease's cgroup (cgroup2 with a
//! BPF_PROG_TYPE_CGROUP_DEVICE program attached) opens an allowed character device and is
//! refused a denied one, and killing the lease's cgroup ends its whole process tree. Ordinary devices stand in for GPUs: nodes made with mknod for
//! /dev/null's numbers (1:3, allowed) and /dev/zero's (1:5, denied). Where cgroup2 is not
//! writable or the program cannot be loaded (not root) the tests say "skipped" and why.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
use tessera_isolation::{probe_v2, Availability, DeviceRule, DevicesV2, LeaseCgroups};

/// The test's lease cgroups; dropping it kills and removes what a failed test left.
struct Guard(DevicesV2);

impl Drop for Guard {
    fn drop(&mut self) {
        for lease in self.0.leases().unwrap_or_default() {
            let _ = self.0.kill_all(lease, None);
            for _ in 0..1000 {
                if self.0.remove(lease).unwrap_or(true) {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let _ = std::fs::remove_dir(self.0.root());
    }
}

fn cgroups(name: &str) -> Option<Guard> {
    let parent = format!("tessera-test-v2-{}-{name}", std::process::id());
    match probe_v2(&parent) {
        Availability::V2 { root } => Some(Guard(DevicesV2::new(root))),
        other => {
            eprintln!("skipped: {}", other.explain());
            None
        }
    }
}

fn node(dir: &Path, name: &str, maj: u32, min: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    mknodat(
        CWD,
        &p,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        makedev(maj, min),
    )
    .unwrap();
    p
}

/// A shell that waits for a line on stdin, then runs `script`.
fn gated_shell(script: &str) -> Child {
    Command::new("sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn open_both(ok: &Path, denied: &Path) -> String {
    format!(
        "if (exec 3<{}); then echo ok-opened; fi; if (exec 4<{}); then echo denied-opened; else echo denied-refused; fi",
        ok.display(),
        denied.display()
    )
}

fn go_and_collect(mut child: Child) -> (String, String) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_lease_process_opens_its_allowed_node_and_is_refused_any_other() {
    let Some(mut guard) = cgroups("open") else {
        return;
    };
    let cg = &mut guard.0;
    let tmp = tempfile::tempdir().unwrap();
    let ok = node(tmp.path(), "allowed", 1, 3);
    let denied = node(tmp.path(), "denied", 1, 5);
    let rule = DeviceRule::of_node(&ok).unwrap();
    assert_eq!((rule.major, rule.minor), (1, Some(3)));

    // Control: outside any lease cgroup both open.
    let (out, _) = go_and_collect(gated_shell(&open_both(&ok, &denied)));
    assert_eq!(out, "ok-opened\ndenied-opened\n");

    cg.create(17, &[rule]).unwrap();
    let child = gated_shell(&open_both(&ok, &denied));
    cg.enter(17, child.id()).unwrap();
    assert_eq!(cg.pids(17).unwrap(), vec![child.id()]);
    let (out, err) = go_and_collect(child);
    assert_eq!(out, "ok-opened\ndenied-refused\n", "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(cg.remove(17).unwrap());
    assert!(!cg.path(17).exists());
}

#[test]
fn killing_a_lease_ends_its_whole_process_tree_and_frees_the_cgroup() {
    let Some(mut guard) = cgroups("kill") else {
        return;
    };
    let cg = &mut guard.0;
    // The shell gives background jobs /dev/null as stdin: allow it, nothing else.
    cg.create(8, &[DeviceRule::of_node(Path::new("/dev/null")).unwrap()])
        .unwrap();
    let mut child = gated_shell("sleep 300 & sleep 300 & echo up; wait");
    cg.enter(8, child.id()).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    let members = cg.pids(8).unwrap();
    assert_eq!(members.len(), 3, "sh and its two sleeps: {members:?}");
    assert_eq!(cg.leases().unwrap(), vec![8]);
    // Not empty: the cgroup stays.
    assert!(!cg.remove(8).unwrap());

    // `except` spares one process (the daemon spares a releasing client this way).
    let spared = child.id();
    let killed = cg.kill_all(8, Some(spared)).unwrap();
    assert_eq!(killed.len(), 2, "{killed:?}");
    assert!(!killed.contains(&spared));
    let killed = cg.kill_all(8, None).unwrap();
    assert!(killed.contains(&spared));
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cg.pids(8).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "{:?} survived", cg.pids(8));
        std::thread::yield_now();
    }
    assert!(cg.remove(8).unwrap());
    assert!(cg.leases().unwrap().is_empty());
}

#[test]
fn a_leftover_lease_cgroup_gets_the_new_program_and_a_wildcard_minor_allows_every_minor() {
    let Some(mut guard) = cgroups("reuse") else {
        return;
    };
    let cg = &mut guard.0;
    let tmp = tempfile::tempdir().unwrap();
    let ok = node(tmp.path(), "allowed", 1, 3);
    let other = node(tmp.path(), "other", 1, 5);
    cg.create(9, &[DeviceRule::of_node(&ok).unwrap()]).unwrap();
    // Left over (a daemon restart): created again with `1:*`, which replaces the program.
    let wildcard = DeviceRule {
        major: 1,
        minor: None,
        path: "/dev/mem-class/*".into(),
    };
    cg.create(9, &[wildcard]).unwrap();
    let child = gated_shell(&open_both(&ok, &other));
    cg.enter(9, child.id()).unwrap();
    let (out, err) = go_and_collect(child);
    assert_eq!(out, "ok-opened\ndenied-opened\n", "stderr: {err}");
    assert!(cg.remove(9).unwrap());
}
