//! Lease isolation in the daemon (the scheduler thread owns one [`Enforcer`]):
//!
//! - **Grant**: before a lease is recorded (so before its client can learn it), the daemon
//!   creates the lease's cgroup — deny every device, allow the ordinary pseudo-devices and
//!   the slice's nodes — and moves the client (`tessera run`, its PID and start time from
//!   `SO_PEERCRED` at submission) into it. CMD, started by the client afterwards, inherits it.
//!   The client needs no privilege and gets none: nothing is chowned to the user, so no
//!   process of the lease can leave the cgroup or widen its rules.
//! - **Cancel**: a lease still held `lease.cancel_grace_ms` (15 s) after `tessera cancel` is
//!   ended by the daemon and all its processes get SIGKILL (`tessera run` itself kills CMD
//!   at 10 s; the daemon's grace is for clients that do not).
//! - **End** (release, expiry, enforced cancel): what is left in the cgroup gets SIGKILL — on
//!   a release all but the client (which is exiting with CMD's status; it gets SIGKILL too if
//!   still there after the grace); on an expiry or an enforced cancel everything, the client
//!   included (a stopped client cannot keep its command running on a slice). The slice stays
//!   **quarantined** — shown busy, never leased again — until those processes are gone.
//! - Without cgroups (`isolation: off`, or none writable) the same happens to the client's
//!   process tree (the client and its descendants by parent links in `/proc`).
//!
//! The daemon never confines or signals its own process (in-process callers of the demo).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera_isolation::procs::kill_tree;
use tessera_isolation::{
    base_rules, probe, probe_v1, probe_v2, Availability, DevRoots, DevicesV1, DevicesV2,
    IsolationError, LeaseCgroups, SliceDevices, Stamp,
};

use crate::config::{Config, IsolationMode};
use crate::error::ServerError;
use crate::store::RequestRow;
use crate::wire::{RequestState, Slice};

/// How a tracked lease ended.
#[derive(Debug, Clone)]
struct End {
    at: Instant,
    /// Expired or cancelled by the daemon: everything is killed, the client too.
    hard: bool,
    reason: String,
}

/// A lease whose processes the daemon can find.
#[derive(Debug, Clone)]
struct Tracked {
    slice: Option<Slice>,
    /// The lease holder's uid (an MPS server keeps running as this uid while its
    /// processes live).
    uid: u32,
    client: Option<Stamp>,
    /// It has a cgroup (else: the client's process tree).
    cgroup: bool,
    /// Fallback only: the processes signalled at the end.
    killed: Vec<Stamp>,
    end: Option<End>,
}

/// A slice that may not be leased again yet: processes of an ended lease still run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The ended lease.
    pub lease: u64,
    /// Its slice.
    pub slice: Slice,
    /// The ended lease's uid.
    pub uid: u32,
    /// Its processes still present.
    pub pids: Vec<u32>,
    /// Why the lease ended.
    pub reason: String,
}

impl Quarantine {
    /// One line for `tessera status`; the request, its end and its processes only for
    /// those who may see the lease's owner (`full`).
    pub fn describe(&self, full: bool) -> String {
        if full {
            format!(
                "{} quarantined: request {} ended ({}) but its process(es) {:?} still run; SIGKILL sent, the slice is freed when they are gone",
                self.slice, self.lease, self.reason, self.pids
            )
        } else {
            format!(
                "{} quarantined: an ended lease's processes still run; the slice is freed when they are gone",
                self.slice
            )
        }
    }
}

/// Why a request's client could not be confined (the grant must not happen).
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The slice's device nodes could not be resolved.
    #[error("request {request}: cannot isolate its slice {slice}: {source}")]
    Devices {
        /// The request.
        request: u64,
        /// The slice, as written.
        slice: String,
        /// The cause.
        #[source]
        source: IsolationError,
    },
    /// The lease's cgroup could not be made.
    #[error("request {request}: cannot create its cgroup: {source}")]
    Create {
        /// The request.
        request: u64,
        /// The cause.
        #[source]
        source: IsolationError,
    },
    /// The client could not be moved into the lease's cgroup.
    #[error("request {request}: cannot move its client {pid} into {}: {source}", path.display())]
    Enter {
        /// The request.
        request: u64,
        /// The client's PID.
        pid: u32,
        /// The cgroup.
        path: PathBuf,
        /// The cause.
        #[source]
        source: IsolationError,
    },
    /// The client exited (its PID was reused) while it was being confined.
    #[error("request {request}: its client process is gone")]
    ClientGone {
        /// The request.
        request: u64,
    },
}

/// The daemon's per-lease isolation and process control. Dropping it (the scheduler thread
/// ends) removes the directory of lease cgroups when it is empty.
#[derive(Debug)]
pub struct Enforcer {
    cg: Option<Box<dyn LeaseCgroups>>,
    roots: Option<DevRoots>,
    why_off: String,
    own_pid: u32,
    grace: Duration,
    tracked: BTreeMap<u64, Tracked>,
    cancels: BTreeMap<u64, Instant>,
    quarantine: Vec<Quarantine>,
}

impl Enforcer {
    /// Decide from the configuration and what the host offers. `isolation: devices` where no
    /// cgroup can be written is an error naming the cause and the opt-out; unset falls back
    /// to no cgroups with a warning. `device_nodes`: the backend's GPUs are device nodes of
    /// this host (see [`tessera_gpu::Capabilities`]); without them (simulated GPUs) lease
    /// cgroups allow no GPU device unless `isolation_root` names a tree of stand-in nodes.
    pub fn new(cfg: &Config, device_nodes: bool) -> Result<Enforcer, ServerError> {
        let roots = match (&cfg.isolation_root, device_nodes) {
            (Some(r), _) => Some(DevRoots::under(r)),
            (None, true) => Some(DevRoots::default()),
            (None, false) => None,
        };
        let mut why_off = String::new();
        let cg: Option<Box<dyn LeaseCgroups>> = match cfg.isolation {
            Some(IsolationMode::Off) => {
                why_off = "off (isolation: off)".into();
                tracing::info!("device isolation is off (`isolation: off`); leases are stopped through their client's process tree");
                None
            }
            mode => match match cfg.isolation_cgroup_version {
                Some(1) => probe_v1(&cfg.isolation_cgroup()),
                Some(2) => probe_v2(&cfg.isolation_cgroup()),
                _ => probe(&cfg.isolation_cgroup()),
            } {
                Availability::V1 { root } => {
                    tracing::info!(
                        "device isolation: one cgroup per lease under {}",
                        root.display()
                    );
                    Some(Box::new(DevicesV1::new(root)))
                }
                Availability::V2 { root } => {
                    tracing::info!(
                        "device isolation: one cgroup per lease under {} (cgroup v2, BPF device program)",
                        root.display()
                    );
                    Some(Box::new(DevicesV2::new(root)))
                }
                other if mode == Some(IsolationMode::Devices) => {
                    // Always `Some`: `V1` and `V2` matched above.
                    if let Some(source) = other.into_unavailable() {
                        return Err(ServerError::Isolation { source });
                    }
                    None
                }
                other => {
                    why_off = format!("unavailable: {}", other.explain());
                    tracing::warn!(
                        "device isolation is unavailable: {}. Leases run without device isolation and are stopped through their client's process tree; set `isolation: off` to acknowledge this, or `isolation: devices` to refuse to start without it",
                        other.explain()
                    );
                    None
                }
            },
        };
        Ok(Enforcer {
            cg,
            roots,
            why_off,
            own_pid: std::process::id(),
            grace: Duration::from_millis(cfg.lease.cancel_grace_ms),
            tracked: BTreeMap::new(),
            cancels: BTreeMap::new(),
            quarantine: Vec::new(),
        })
    }

    /// The client of a row, unless it is this very process.
    fn client_of(&self, r: &RequestRow) -> Option<Stamp> {
        match (r.pid, r.pid_start) {
            (Some(pid), Some(start_ticks)) if pid != self.own_pid => {
                Some(Stamp { pid, start_ticks })
            }
            _ => None,
        }
    }

    /// Whether slices need their device numbers (`None`: the simulated backend without an
    /// `isolation_root`, whose slices have no device nodes).
    pub fn wants_devices(&self) -> bool {
        self.cg.is_some() && self.roots.is_some()
    }

    /// Confine a request's client before its lease is recorded. Returns the value of the
    /// lease's `TESSERA_ISOLATION` variable; an error (the grant must not happen) names the
    /// request and the cause.
    pub fn confine(
        &mut self,
        r: &RequestRow,
        slice: &Slice,
        devices: Option<SliceDevices>,
    ) -> Result<String, ConfineError> {
        let Some(client) = self.client_of(r) else {
            return Ok("none: the daemon knows no client process of this request".into());
        };
        let mut value = format!("none: device isolation is {}", self.why_off);
        let mut cgroup = false;
        if let Some(cg) = self.cg.as_mut() {
            let mut rules = base_rules();
            if let (Some(roots), Some(d)) = (&self.roots, devices) {
                rules.extend(roots.rules_for(d).map_err(|source| ConfineError::Devices {
                    request: r.id,
                    slice: slice.to_string(),
                    source,
                })?);
            }
            cg.create(r.id, &rules)
                .map_err(|source| ConfineError::Create {
                    request: r.id,
                    source,
                })?;
            if let Err(source) = cg.enter(r.id, client.pid) {
                let path = cg.path(r.id);
                let _ = cg.remove(r.id);
                return Err(ConfineError::Enter {
                    request: r.id,
                    pid: client.pid,
                    path,
                    source,
                });
            }
            if !client.is_alive() {
                // The PID was reused between the check and the move: undo it.
                let _ = cg.leave(client.pid);
                let _ = cg.remove(r.id);
                return Err(ConfineError::ClientGone { request: r.id });
            }
            cgroup = true;
            value = format!("devices: {}", cg.path(r.id).display());
        }
        self.tracked.insert(
            r.id,
            Tracked {
                slice: Some(slice.clone()),
                uid: r.uid,
                client: Some(client),
                cgroup,
                killed: Vec::new(),
                end: None,
            },
        );
        Ok(value)
    }

    /// Undo [`Self::confine`] when the grant did not happen (a cancel won).
    pub fn unconfine(&mut self, id: u64) {
        let Some(t) = self.tracked.remove(&id) else {
            return;
        };
        if let (true, Some(cg), Some(c)) = (t.cgroup, self.cg.as_mut(), t.client) {
            let _ = cg.leave(c.pid);
            let _ = cg.remove(id);
        }
    }

    /// Leases cancelled at least the grace period ago whose client still holds them: the
    /// daemon ends them (state `cancelled`, this reason); the next [`Self::sweep`] kills.
    pub fn due_cancels(&mut self, active: &[RequestRow]) -> Vec<(u64, String)> {
        let now = Instant::now();
        self.cancels.retain(|id, _| {
            active
                .iter()
                .any(|r| r.id == *id && r.state == RequestState::Leased && r.cancel_requested)
        });
        let mut due = Vec::new();
        for r in active
            .iter()
            .filter(|r| r.state == RequestState::Leased && r.cancel_requested)
        {
            let since = *self.cancels.entry(r.id).or_insert(now);
            if now.duration_since(since) >= self.grace {
                due.push((
                    r.id,
                    format!(
                        "cancelled; still running {} ms after the cancel, so the daemon ended it with SIGKILL",
                        self.grace.as_millis()
                    ),
                ));
            }
        }
        due
    }

    /// Re-adopt after a restart: leased requests keep being tracked (their cgroups, if any,
    /// are still there); cgroups of requests that ended while the daemon was down are
    /// treated as ended, so the next sweep kills what is left and quarantines the slice.
    pub fn adopt(&mut self, active: &[RequestRow], row: impl Fn(u64) -> Option<RequestRow>) {
        let with_cgroup = self
            .cg
            .as_ref()
            .and_then(|cg| cg.leases().ok())
            .unwrap_or_default();
        for r in active.iter().filter(|r| r.state == RequestState::Leased) {
            if let Some(client) = self.client_of(r) {
                self.tracked.insert(
                    r.id,
                    Tracked {
                        slice: r.slice.clone(),
                        uid: r.uid,
                        client: Some(client),
                        cgroup: with_cgroup.contains(&r.id),
                        killed: Vec::new(),
                        end: None,
                    },
                );
            }
        }
        for id in with_cgroup {
            if self.tracked.contains_key(&id) {
                continue;
            }
            let r = row(id);
            self.tracked.insert(
                id,
                Tracked {
                    slice: r.as_ref().and_then(|r| r.slice.clone()),
                    uid: r.as_ref().map_or(0, |r| r.uid),
                    client: r.as_ref().and_then(|r| self.client_of(r)),
                    cgroup: true,
                    killed: Vec::new(),
                    end: None,
                },
            );
        }
    }

    /// Stop what ended leases left running and free their cgroups; recompute the quarantine.
    /// `row` reads a request's current row (to tell a release from an expiry).
    pub fn sweep(&mut self, active: &[RequestRow], row: impl Fn(u64) -> Option<RequestRow>) {
        let now = Instant::now();
        let grace = self.grace;
        let mut quarantine = Vec::new();
        let mut done = Vec::new();
        for (id, t) in self.tracked.iter_mut() {
            let live = active
                .iter()
                .any(|r| r.id == *id && r.state == RequestState::Leased);
            if live && t.end.is_none() {
                continue;
            }
            if t.end.is_none() {
                let r = row(*id);
                let hard = r.as_ref().is_none_or(|r| r.state != RequestState::Done);
                let reason = r
                    .and_then(|r| r.end_reason)
                    .unwrap_or_else(|| "ended".into());
                t.end = Some(End {
                    at: now,
                    hard,
                    reason,
                });
                if hard && !t.cgroup {
                    if let Some(c) = t.client {
                        t.killed = kill_tree(c);
                    }
                }
            }
            let end = t.end.clone().expect("set above");
            let client_pid = t.client.map(|c| c.pid);
            let spare = if end.hard || now.duration_since(end.at) >= grace {
                None
            } else {
                client_pid
            };
            let left: Vec<u32> = match (t.cgroup, self.cg.as_mut()) {
                (true, Some(cg)) => {
                    match cg.kill_all(*id, spare) {
                        Ok(k) if !k.is_empty() => tracing::info!(
                            request = id,
                            "lease ended ({}): SIGKILL to {k:?}",
                            end.reason
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(request = id, "cannot stop the lease's processes: {e}")
                        }
                    }
                    let left = cg.pids(*id).unwrap_or_default();
                    if left.is_empty() && cg.remove(*id).unwrap_or(false) {
                        done.push(*id);
                    }
                    left
                }
                _ => {
                    let left: Vec<u32> = t
                        .killed
                        .iter()
                        .filter(|s| {
                            // A stopped or slow-dying process: signal it again.
                            s.kill()
                        })
                        .map(|s| s.pid)
                        .collect();
                    if left.is_empty() {
                        done.push(*id);
                    }
                    left
                }
            };
            // The releasing client itself holds no slice: it is not a reason to quarantine.
            let holding: Vec<u32> = left
                .into_iter()
                .filter(|p| end.hard || Some(*p) != client_pid)
                .collect();
            if let (false, Some(slice)) = (holding.is_empty(), &t.slice) {
                quarantine.push(Quarantine {
                    lease: *id,
                    slice: slice.clone(),
                    uid: t.uid,
                    pids: holding,
                    reason: end.reason.clone(),
                });
            }
        }
        for id in done {
            self.tracked.remove(&id);
        }
        self.quarantine = quarantine;
    }

    /// Slices that may not be leased again yet (from the last [`Self::sweep`]).
    pub fn quarantined(&self) -> &[Quarantine] {
        &self.quarantine
    }

    /// The daemon stops: leases keep running (a restart re-adopts them); the directory of
    /// lease cgroups goes only when none is left in it.
    pub fn close(&mut self) {
        if let Some(cg) = self.cg.as_mut() {
            cg.close();
        }
    }

    /// The cgroup directory of a lease, when it has one.
    pub fn cgroup_of(&self, id: u64) -> Option<PathBuf> {
        let t = self.tracked.get(&id)?;
        t.cgroup.then(|| self.cg.as_ref().map(|cg| cg.path(id)))?
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `isolation_cgroup_version` picks the mechanism; with `isolation: devices` a version the
    /// host cannot do is an error, never a silent fallback.
    #[test]
    fn the_configured_cgroup_version_picks_the_mechanism() {
        for (version, want) in [
            (1, "cgroup v1 devices at "),
            (2, "cgroup v2 device program at "),
        ] {
            let name = format!("tessera-unit-v{version}-{}", std::process::id());
            let text = format!(
                "isolation: devices\nisolation_cgroup: {name}\nisolation_cgroup_version: {version}\n"
            );
            let cfg = Config::from_yaml(&text, std::path::Path::new("t.yaml")).unwrap();
            let found = match version {
                1 => probe_v1(&format!("{name}-probe")),
                _ => probe_v2(&format!("{name}-probe")),
            };
            if let Availability::V1 { root } | Availability::V2 { root } = &found {
                let _ = std::fs::remove_dir(root);
            } else {
                eprintln!("skipped v{version}: {}", found.explain());
                let e = Enforcer::new(&cfg, true).unwrap_err().to_string();
                assert!(e.contains("isolation: off"), "{e}");
                continue;
            }
            let mut enf = Enforcer::new(&cfg, true).unwrap();
            let cg = enf.cg.as_ref().expect("a cgroup mechanism");
            assert!(cg.describe().starts_with(want), "{}", cg.describe());
            let root = cg.path(1).parent().unwrap().to_path_buf();
            assert!(root.is_dir());
            enf.close();
            assert!(!root.exists(), "{} left behind", root.display());
        }
    }
}
