//! Is a client process still the one that asked? PIDs are reused, so a PID alone proves
//! nothing: the daemon records the process's start time (field 22 of `/proc/PID/stat`, clock
//! ticks since boot) when the request arrives, and a later check counts the client alive only
//! when a process with that PID exists, is not a zombie, and started at that same tick.
//!
//! Only a definite answer ends a lease: `/proc/PID` missing (`ENOENT`/`ESRCH`), a zombie, or
//! another start time mean *gone*; any other failure to read (out of file descriptors,
//! `EACCES`, a short read) means *unknown*, and the lease is kept (see [`Liveness`]).
//!
//! Heartbeat deadlines are kept on a [`Clock`] and process checks go through
//! [`ClientLiveness`], so tests can jump time and decide which clients are gone.

use std::path::Path;
use std::time::Instant;

/// The time the daemon runs on: monotonic time for heartbeats and wall-clock time for
/// request timestamps (how long a request waited decides its reservation). A trait so that
/// tests run the scheduler on virtual time, making it jump as if the daemon had been paused.
pub trait Clock: Send + Sync + 'static {
    /// Now, on the monotonic clock.
    fn now(&self) -> Instant;

    /// Now, in milliseconds since the Unix epoch (default: the system clock).
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Virtual time for tests and simulations: it stands still until [`VirtualClock::advance`]
/// moves it, monotonic and wall-clock time together.
#[derive(Debug)]
pub struct VirtualClock {
    base: Instant,
    unix_base_ms: u64,
    offset_ms: std::sync::atomic::AtomicU64,
}

impl VirtualClock {
    /// A clock standing at the real time of its creation.
    pub fn new() -> Self {
        VirtualClock {
            base: Instant::now(),
            unix_base_ms: MonotonicClock.unix_ms(),
            offset_ms: 0.into(),
        }
    }

    /// Move time forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    fn offset(&self) -> u64 {
        self.offset_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        self.base + std::time::Duration::from_millis(self.offset())
    }

    fn unix_ms(&self) -> u64 {
        self.unix_base_ms + self.offset()
    }
}

/// Whether a client process still runs; a trait so that scheduler tests give verdicts
/// without real processes.
pub trait ClientLiveness: Send + Sync + 'static {
    /// The verdict on the process `stamp` names.
    fn check(&self, stamp: ProcessStamp) -> Liveness;
}

/// The real check: `/proc/PID/stat` (see [`ProcessStamp::check`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcLiveness;

impl ClientLiveness for ProcLiveness {
    fn check(&self, stamp: ProcessStamp) -> Liveness {
        stamp.check()
    }
}

/// The real monotonic clock (`CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What a check of a client process found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The same process (PID and start time) runs.
    Alive,
    /// The process is gone: no such PID, a zombie, or another process under that PID.
    Gone(String),
    /// `/proc` could not be read (e.g. the daemon is out of file descriptors): no verdict.
    Unknown(String),
}

impl Liveness {
    /// The verdict for an error reading `/proc/PID/stat`: only "no such file or process"
    /// means gone.
    pub fn from_error(pid: u32, e: &std::io::Error) -> Liveness {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => {
                Liveness::Gone(format!("client process {pid} is gone"))
            }
            _ if e.kind() == std::io::ErrorKind::NotFound => {
                Liveness::Gone(format!("client process {pid} is gone"))
            }
            _ => Liveness::Unknown(format!("cannot read /proc/{pid}/stat: {e}")),
        }
    }
}

/// Identity of a process that survives PID reuse: its PID and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStamp {
    /// The PID.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// What `/proc/PID/stat` says, parsed: (state letter, start time); the read's error as is.
fn read_stat(proc_root: &Path, pid: u32) -> std::io::Result<Option<(char, u64)>> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    Ok(parse_stat(&text))
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
        let (state, start_ticks) = read_stat(proc_root, pid).ok()??;
        if matches!(state, 'Z' | 'X' | 'x') {
            return None;
        }
        Some(ProcessStamp { pid, start_ticks })
    }

    /// Whether this very process still runs (same PID, same start time, not a zombie);
    /// [`Liveness::Unknown`] when `/proc` cannot be read.
    pub fn check(&self) -> Liveness {
        self.check_in(Path::new("/proc"))
    }

    /// [`ProcessStamp::check`] against another `/proc` (tests).
    pub fn check_in(&self, proc_root: &Path) -> Liveness {
        match read_stat(proc_root, self.pid) {
            Err(e) => Liveness::from_error(self.pid, &e),
            Ok(None) => {
                Liveness::Unknown(format!("/proc/{}/stat has an unexpected format", self.pid))
            }
            Ok(Some(('Z' | 'X' | 'x', _))) => {
                Liveness::Gone(format!("client process {} has exited", self.pid))
            }
            Ok(Some((_, start))) if start != self.start_ticks => Liveness::Gone(format!(
                "client process {} is gone (its PID now belongs to another process)",
                self.pid
            )),
            Ok(Some(_)) => Liveness::Alive,
        }
    }

    /// Whether this very process definitely still runs ([`Liveness::Alive`]).
    pub fn is_alive(&self) -> bool {
        self.check() == Liveness::Alive
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

    /// Defect 1: an unreadable `/proc` entry (here a `stat` that is a directory: EISDIR;
    /// in the field EMFILE) is no verdict, while a missing one is.
    #[test]
    fn an_unreadable_proc_entry_is_unknown_and_only_a_missing_one_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let stamp = ProcessStamp {
            pid: 4242,
            start_ticks: 987654,
        };
        assert!(matches!(stamp.check_in(root.path()), Liveness::Gone(_)));
        let dir = root.path().join("4242");
        std::fs::create_dir_all(dir.join("stat")).unwrap();
        assert!(
            matches!(stamp.check_in(root.path()), Liveness::Unknown(_)),
            "{:?}",
            stamp.check_in(root.path())
        );
        std::fs::remove_dir(dir.join("stat")).unwrap();
        let line = |state: char, start: u64| {
            format!("4242 (job) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} 1000 10")
        };
        std::fs::write(dir.join("stat"), line('S', 987654)).unwrap();
        assert_eq!(stamp.check_in(root.path()), Liveness::Alive);
        std::fs::write(dir.join("stat"), line('S', 987655)).unwrap();
        assert!(matches!(stamp.check_in(root.path()), Liveness::Gone(_)));
        std::fs::write(dir.join("stat"), line('Z', 987654)).unwrap();
        assert!(matches!(stamp.check_in(root.path()), Liveness::Gone(_)));
        std::fs::write(dir.join("stat"), "4242 (job").unwrap();
        assert!(matches!(stamp.check_in(root.path()), Liveness::Unknown(_)));
        for (errno, gone) in [
            (libc::EMFILE, false),
            (libc::ENFILE, false),
            (libc::EACCES, false),
            (libc::ENOMEM, false),
            (libc::ENOENT, true),
            (libc::ESRCH, true),
        ] {
            let v = Liveness::from_error(4242, &std::io::Error::from_raw_os_error(errno));
            assert_eq!(matches!(v, Liveness::Gone(_)), gone, "errno {errno}: {v:?}");
        }
    }

    proptest::proptest! {
        /// Of all errors reading `/proc`, only "no such file" and "no such process" end a
        /// lease.
        #[test]
        fn only_enoent_and_esrch_mean_gone(errno in 1i32..134) {
            let v = Liveness::from_error(7, &std::io::Error::from_raw_os_error(errno));
            let gone = errno == libc::ENOENT || errno == libc::ESRCH;
            proptest::prop_assert_eq!(matches!(v, Liveness::Gone(_)), gone);
            proptest::prop_assert_eq!(matches!(v, Liveness::Unknown(_)), !gone);
        }
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
