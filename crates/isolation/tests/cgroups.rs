//! The lease-cgroup mechanisms for real, cgroup v1 (the devices controller) and v2 (cgroup2 with a
//! BPF_PROG_TYPE_CGROUP_DEVICE program), each through the same tests: a process in a lease's
//! cgroup opens an allowed character device and is refused a denied one, and killing the lease's
//! cgroup ends its whole process tree. Ordinary devices stand in for GPUs: nodes made with mknod
//! for /dev/null's numbers (1:3, allowed) and /dev/zero's (1:5, denied). Where a version is not
//! writable (or, for v2, the program cannot be loaded) its tests say "skipped" and why.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
use tessera_isolation::{
    probe_v1, probe_v2, Availability, DeviceRule, DevicesV1, DevicesV2, LeaseCgroups,
};

/// The test's lease cgroups; dropping it kills and removes what a failed test left.
struct Guard(Box<dyn LeaseCgroups>, PathBuf);

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
        let _ = std::fs::remove_dir(&self.1);
    }
}

/// The lease cgroups of cgroup `version` (1 or 2), or `None` (with the reason) where this host
/// cannot make them.
fn cgroups(version: u8, name: &str) -> Option<Guard> {
    let parent = format!("tessera-test-v{version}-{}-{name}", std::process::id());
    let found = if version == 1 {
        probe_v1(&parent)
    } else {
        probe_v2(&parent)
    };
    match found {
        Availability::V1 { root } if version == 1 => {
            Some(Guard(Box::new(DevicesV1::new(root.clone())), root))
        }
        Availability::V2 { root } if version == 2 => {
            Some(Guard(Box::new(DevicesV2::new(root.clone())), root))
        }
        other => {
            eprintln!("skipped (cgroup v{version}): {}", other.explain());
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

fn opens_allowed_refuses_other(version: u8) {
    let Some(mut guard) = cgroups(version, "open") else {
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

    cg.create(7, &[rule]).unwrap();
    let child = gated_shell(&open_both(&ok, &denied));
    cg.enter(7, child.id()).unwrap();
    assert_eq!(cg.pids(7).unwrap(), vec![child.id()]);
    let (out, err) = go_and_collect(child);
    assert_eq!(out, "ok-opened\ndenied-refused\n", "stderr: {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(cg.remove(7).unwrap());
    assert!(!cg.path(7).exists());
}

fn kill_ends_tree(version: u8) {
    let Some(mut guard) = cgroups(version, "kill") else {
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

fn leftover_gets_new_rules(version: u8) {
    let Some(mut guard) = cgroups(version, "reuse") else {
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

#[test]
fn a_lease_process_opens_its_allowed_node_and_is_refused_any_other_v1() {
    opens_allowed_refuses_other(1);
}

#[test]
fn a_lease_process_opens_its_allowed_node_and_is_refused_any_other_v2() {
    opens_allowed_refuses_other(2);
}

#[test]
fn killing_a_lease_ends_its_whole_process_tree_and_frees_the_cgroup_v1() {
    kill_ends_tree(1);
}

#[test]
fn killing_a_lease_ends_its_whole_process_tree_and_frees_the_cgroup_v2() {
    kill_ends_tree(2);
}

/// A leftover lease cgroup (a daemon restart) made again gets the new rules (v2: the program
/// is replaced), and a wildcard minor allows every minor of its major.
#[test]
fn a_leftover_lease_cgroup_gets_the_new_rules_and_a_wildcard_minor_allows_every_minor_v1() {
    leftover_gets_new_rules(1);
}

#[test]
fn a_leftover_lease_cgroup_gets_the_new_rules_and_a_wildcard_minor_allows_every_minor_v2() {
    leftover_gets_new_rules(2);
}
