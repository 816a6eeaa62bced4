//! Run one group of tenant processes together: spawn them, wait until every one is set up, send
//! them all the same start instant, collect their results. Any failure stops the whole group;
//! no process outlives [`run_group`] (a guard kills and reaps them on every path).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::protocol::{go_line, TenantMessage, TenantOutcome, TenantSpec, SPEC_ENV};
use crate::slots::{Slot, CLEARED_ENV};
use crate::tenant::unix_ns;

/// How to start a tenant process: normally this very binary with its hidden tenant subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCommand {
    /// The executable (`std::env::current_exe()`).
    pub program: PathBuf,
    /// Arguments that select the tenant entry point (`["bench", "tenant"]`).
    pub args: Vec<String>,
}

/// Time limits for a group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Longest a tenant may take to set up (allocate, fill, warm up).
    pub ready: Duration,
    /// Extra time beyond the measuring duration before a tenant counts as hung.
    pub grace: Duration,
    /// Delay between the last `ready` and the common start instant, so that every tenant has
    /// received the signal before it.
    pub start_margin: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ready: Duration::from_secs(300),
            grace: Duration::from_secs(120),
            start_margin: Duration::from_millis(250),
        }
    }
}

enum Event {
    Msg(Result<TenantMessage, BenchError>),
    Eof,
}

struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    slot: String,
    threads: Vec<JoinHandle<()>>,
}

/// Owns the processes of a group; dropping it kills whatever still runs and reaps everything.
struct Group {
    members: Vec<Member>,
}

impl Drop for Group {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stdin.take();
            if let Ok(None) = m.child.try_wait() {
                let _ = m.child.kill();
            }
            let _ = m.child.wait();
            for t in m.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

const STDERR_KEEP: usize = 2000;

impl Group {
    fn stderr_tail(&self, i: usize) -> String {
        let s = self.members[i]
            .stderr
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let s = s.trim();
        if s.is_empty() {
            "no output on stderr".into()
        } else {
            format!("stderr: {s}")
        }
    }

    fn fail(&self, i: usize, phase: &str, message: String) -> BenchError {
        BenchError::Tenant {
            tenant: i as u32,
            slot: self.members[i].slot.clone(),
            phase: phase.into(),
            message,
        }
    }

    /// A tenant closed stdout without the message we waited for: say how it ended.
    fn died(&mut self, i: usize, phase: &str) -> BenchError {
        // Closing stdout almost always means the process is exiting; give it 5 s, then stop it.
        let child = &mut self.members[i].child;
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = child.try_wait() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = child.wait();
        for t in self.members[i].threads.drain(..) {
            let _ = t.join();
        }
        let how = match status {
            Ok(s) => format!("exited ({s})"),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let tail = self.stderr_tail(i);
        self.fail(i, phase, format!("{how} without reporting; {tail}"))
    }
}

fn spawn(
    cmd: &TenantCommand,
    spec: &TenantSpec,
    slot: &Slot,
    i: usize,
    tx: std::sync::mpsc::Sender<(usize, Event)>,
) -> Result<Member, BenchError> {
    let spec_json = serde_json::to_string(spec)
        .map_err(|e| BenchError::Protocol(format!("cannot encode the tenant spec: {e}")))?;
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args);
    for k in CLEARED_ENV {
        c.env_remove(k);
    }
    c.envs(&slot.env)
        .env(SPEC_ENV, spec_json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| BenchError::Spawn {
        program: cmd.program.clone(),
        source: e,
    })?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut threads = Vec::new();
    if let Some(out) = stdout {
        threads.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(msg) = TenantMessage::parse_line(&line) {
                    if tx.send((i, Event::Msg(msg))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((i, Event::Eof));
        }));
    }
    if let Some(mut err) = stderr_pipe {
        let keep = Arc::clone(&stderr);
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = keep.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 2 * STDERR_KEEP {
                        let mut cut = s.len() - STDERR_KEEP;
                        while !s.is_char_boundary(cut) {
                            cut += 1;
                        }
                        s.replace_range(..cut, "");
                    }
                }
            }
        }));
    }
    Ok(Member {
        child,
        stdin,
        stderr,
        slot: slot.label.clone(),
        threads,
    })
}

fn start_all(
    cmd: &TenantCommand,
    specs: &[TenantSpec],
    slots: &[Slot],
) -> Result<(Group, Receiver<(usize, Event)>), BenchError> {
    let (tx, rx) = channel();
    let mut group = Group {
        members: Vec::new(),
    };
    for (i, (spec, slot)) in specs.iter().zip(slots).enumerate() {
        group.members.push(spawn(cmd, spec, slot, i, tx.clone())?);
    }
    Ok((group, rx))
}

enum Wait {
    Got(usize, Event),
    TimedOut,
}

/// Next event before `deadline`, waking every 100 ms to notice an interrupt. An interrupt wins
/// over whatever a tenant said (it was probably interrupted too).
fn recv_until(rx: &Receiver<(usize, Event)>, deadline: Instant) -> Result<Wait, BenchError> {
    loop {
        crate::interrupt::check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wait::TimedOut);
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok((i, ev)) => {
                crate::interrupt::check()?;
                return Ok(Wait::Got(i, ev));
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(Wait::TimedOut),
        }
    }
}

/// Start one tenant per `(spec, slot)`, wait for all to be ready, start them at one instant and
/// return their outcomes in tenant order. `duration_s` is the measuring time in the specs.
pub fn run_group(
    cmd: &TenantCommand,
    specs: &[TenantSpec],
    slots: &[Slot],
    duration_s: f64,
    limits: Limits,
) -> Result<Vec<TenantOutcome>, BenchError> {
    assert_eq!(specs.len(), slots.len(), "one slot per tenant");
    let n = specs.len();
    let (mut group, rx) = start_all(cmd, specs, slots)?;

    // 1. Everyone sets up.
    let mut ready = vec![false; n];
    let deadline = Instant::now() + limits.ready;
    while ready.iter().any(|r| !r) {
        match recv_until(&rx, deadline)? {
            Wait::Got(i, Event::Msg(Ok(TenantMessage::Ready { .. }))) => ready[i] = true,
            Wait::Got(i, Event::Msg(Ok(TenantMessage::Error(e)))) => {
                return Err(group.fail(i, "setting up", e))
            }
            Wait::Got(i, Event::Msg(Ok(other))) => {
                return Err(group.fail(i, "setting up", format!("unexpected message {other:?}")))
            }
            Wait::Got(_, Event::Msg(Err(e))) => return Err(e),
            Wait::Got(i, Event::Eof) => return Err(group.died(i, "setting up")),
            Wait::TimedOut => {
                let i = ready.iter().position(|r| !r).unwrap_or(0);
                return Err(BenchError::Timeout {
                    tenant: i as u32,
                    slot: group.members[i].slot.clone(),
                    what: "finish setting up",
                    seconds: limits.ready.as_secs_f64(),
                });
            }
        }
    }

    // 2. One start instant for all.
    let start = unix_ns() + limits.start_margin.as_nanos() as u64 + 2_000_000 * n as u64;
    for i in 0..n {
        let line = go_line(start);
        let sent = group.members[i]
            .stdin
            .take()
            .map(|mut s| s.write_all(line.as_bytes()).and_then(|_| s.flush()));
        if let Some(Err(e)) = sent {
            return Err(group.fail(i, "starting", format!("cannot send the start signal: {e}")));
        }
    }

    // 3. Everyone reports.
    let mut results: Vec<Option<TenantOutcome>> = vec![None; n];
    let wait = limits.start_margin + Duration::from_secs_f64(duration_s) + limits.grace;
    let deadline = Instant::now() + wait;
    while results.iter().any(Option::is_none) {
        match recv_until(&rx, deadline)? {
            Wait::Got(i, Event::Msg(Ok(TenantMessage::Result(r)))) => results[i] = Some(r),
            Wait::Got(i, Event::Msg(Ok(TenantMessage::Error(e)))) => {
                return Err(group.fail(i, "measuring", e))
            }
            Wait::Got(i, Event::Msg(Ok(other))) => {
                return Err(group.fail(i, "measuring", format!("unexpected message {other:?}")))
            }
            Wait::Got(_, Event::Msg(Err(e))) => return Err(e),
            Wait::Got(i, Event::Eof) => {
                if results[i].is_none() {
                    return Err(group.died(i, "measuring"));
                }
            }
            Wait::TimedOut => {
                let i = results.iter().position(Option::is_none).unwrap_or(0);
                return Err(BenchError::Timeout {
                    tenant: i as u32,
                    slot: group.members[i].slot.clone(),
                    what: "report a result",
                    seconds: wait.as_secs_f64(),
                });
            }
        }
    }
    drop(group);
    Ok(results.into_iter().flatten().collect())
}

/// Start one probe tenant on `slot` and return the device it sees.
pub fn run_probe(
    cmd: &TenantCommand,
    spec: &TenantSpec,
    slot: &Slot,
    limits: Limits,
) -> Result<crate::protocol::DeviceInfo, BenchError> {
    let (mut group, rx) = start_all(cmd, std::slice::from_ref(spec), std::slice::from_ref(slot))?;
    let deadline = Instant::now() + limits.ready;
    match recv_until(&rx, deadline)? {
        Wait::Got(_, Event::Msg(Ok(TenantMessage::Probe(info)))) => Ok(info),
        Wait::Got(i, Event::Msg(Ok(TenantMessage::Error(e)))) => {
            Err(group.fail(i, "probing the device", e))
        }
        Wait::Got(i, Event::Msg(Ok(other))) => Err(group.fail(
            i,
            "probing the device",
            format!("unexpected message {other:?}"),
        )),
        Wait::Got(_, Event::Msg(Err(e))) => Err(e),
        Wait::Got(i, Event::Eof) => Err(group.died(i, "probing the device")),
        Wait::TimedOut => Err(BenchError::Timeout {
            tenant: 0,
            slot: slot.label.clone(),
            what: "answer the device probe",
            seconds: limits.ready.as_secs_f64(),
        }),
    }
}
