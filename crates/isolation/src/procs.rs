//! Processes by identity and the process-tree fallback. A PID alone proves nothing (PIDs are
//! reused), so a [`Stamp`] pairs it with the start time (`/proc/PID/stat` field 22); a signal
//! goes only to a process whose stamp still matches. Where no cgroup holds a lease, its
//! processes are the client and its descendants, found through the parent links in `/proc`
//! (a process that double-forks away from the tree before the kill is not found: the
//! documented limit of the fallback).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rustix::process::{kill_process, Pid, Signal};

/// A process's identity: PID and start time in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// The PID.
    pub pid: u32,
    /// `/proc/PID/stat` field 22.
    pub start_ticks: u64,
}

/// Fields of `/proc/PID/stat`: (state, parent PID, start ticks). The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<(char, u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    // Field 4 was ppid; field 22 is 18 further.
    let start = f.nth(17)?.parse().ok()?;
    Some((state, ppid, start))
}

fn read_stat(proc_root: &Path, pid: u32) -> Option<(char, u32, u64)> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

impl Stamp {
    /// The stamp of a running (non-zombie) process.
    pub fn of(pid: u32) -> Option<Stamp> {
        let (state, _, start_ticks) = read_stat(Path::new("/proc"), pid)?;
        (!matches!(state, 'Z' | 'X' | 'x')).then_some(Stamp { pid, start_ticks })
    }

    /// Whether this very process still runs.
    pub fn is_alive(&self) -> bool {
        Stamp::of(self.pid) == Some(*self)
    }

    /// SIGKILL it if it is still this process. Returns whether a signal was sent.
    pub fn kill(&self) -> bool {
        if !self.is_alive() {
            return false;
        }
        match Pid::from_raw(self.pid as i32) {
            Some(p) => kill_process(p, Signal::KILL).is_ok(),
            None => false,
        }
    }
}

/// `root` and every live descendant of it (by parent links in `/proc`), root first.
pub fn tree(root: Stamp) -> Vec<Stamp> {
    if !root.is_alive() {
        return Vec::new();
    }
    let mut children: BTreeMap<u32, Vec<Stamp>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((state, ppid, start_ticks)) = read_stat(Path::new("/proc"), pid) {
                if !matches!(state, 'Z' | 'X' | 'x') {
                    children
                        .entry(ppid)
                        .or_default()
                        .push(Stamp { pid, start_ticks });
                }
            }
        }
    }
    let mut out = vec![root];
    let mut seen = BTreeSet::from([root.pid]);
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i].pid) {
            for k in kids {
                if seen.insert(k.pid) {
                    out.push(*k);
                }
            }
        }
        i += 1;
    }
    out
}

/// Stop a process tree: SIGSTOP every member first (so none forks a new child or is
/// reparented while the tree is walked), walk it again to catch children forked in between,
/// then SIGKILL them all. Returns every process signalled.
pub fn kill_tree(root: Stamp) -> Vec<Stamp> {
    let stop = |s: &Stamp| {
        if s.is_alive() {
            if let Some(p) = Pid::from_raw(s.pid as i32) {
                let _ = kill_process(p, Signal::STOP);
            }
        }
    };
    let mut all: BTreeSet<Stamp> = BTreeSet::new();
    for _ in 0..3 {
        let now = tree(root);
        let new: Vec<Stamp> = now.into_iter().filter(|s| !all.contains(s)).collect();
        if new.is_empty() {
            break;
        }
        for s in &new {
            stop(s);
        }
        all.extend(new);
    }
    all.iter().filter(|s| s.kill()).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_name() {
        let line = "4242 (my (odd) cmd) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 17, 987654)));
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
    }

    #[test]
    fn a_tree_with_grandchildren_is_killed_whole() {
        // sh starts two sleeps in the background (grandchildren of this test) and waits.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & sleep 300 & echo started; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let root = Stamp::of(child.id()).unwrap();
        let members = tree(root);
        assert!(members.len() >= 3, "sh and two sleeps: {members:?}");
        let killed = kill_tree(root);
        assert_eq!(killed.len(), members.len(), "{killed:?} vs {members:?}");
        child.wait().unwrap();
        for m in &members {
            // Reparented grandchildren are reaped by init; poll without sleeping too long.
            let mut gone = false;
            for _ in 0..400 {
                if !m.is_alive() {
                    gone = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(gone, "{m:?} survived kill_tree");
        }
    }
}
