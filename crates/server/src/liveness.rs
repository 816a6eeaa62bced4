//! Is a client process still the one that asked? PIDs are reused, so a PID alone proves
//! nothing: the daemon records the process's start time (field 22 of `/proc/PID/stat`, clock
//! ticks since boot) when the request arrives, and a later check counts the client alive only
//! when a process with that PID exists, is not a zombie, and started at that same tick.

use std::path::Path;

/// Identity of a process that survives PID reuse: its PID and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStamp {
    /// The PID.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// What `/proc/PID/stat` says, parsed: (state letter, start time). `None` when the process
/// does not exist or the file cannot be read.
fn read_stat(proc_root: &Path, pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// Parse the text of `/proc/PID/stat`: the command name (field 2) may hold spaces and
/// parentheses, so the fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: field 3 is the state; field 22 is 20 fields further.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcessStamp {
    /// The stamp of a live process now; `None` when it does not exist.
    pub fn of(pid: u32) -> Option<ProcessStamp> {
        Self::of_in(Path::new("/proc"), pid)
    }

    fn of_in(proc_root: &Path, pid: u32) -> Option<ProcessStamp> {
        let (state, start_ticks) = read_stat(proc_root, pid)?;
        if matches!(state, 'Z' | 'X' | 'x') {
            return None;
        }
        Some(ProcessStamp { pid, start_ticks })
    }

    /// Whether this very process still runs (same PID, same start time, not a zombie).
    pub fn is_alive(&self) -> bool {
        Self::of(self.pid) == Some(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessStamp::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let reused = ProcessStamp {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }

    #[test]
    fn a_reaped_child_is_dead_and_a_zombie_is_dead_too() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stamp = ProcessStamp::of(child.id()).unwrap();
        assert!(stamp.is_alive());
        child.kill().unwrap();
        // Not yet reaped: a zombie, which counts as dead. Poll: the kill takes effect async.
        let mut dead = false;
        for _ in 0..200 {
            if !stamp.is_alive() {
                dead = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(dead, "a killed child must stop counting as alive");
        child.wait().unwrap();
        assert!(!stamp.is_alive());
    }
}
