//! The MPS twin's server rule: what the simulated control daemon does when a CUDA client
//! connects, modelled on the `nvidia-cuda-mps-control` man page and NVIDIA's MPS guide.
//!
//! - One control daemon (one pipe directory) runs **one MPS server at a time**, with the uid
//!   of the client that caused it to start.
//! - A client of the server's uid connects at once, up to the per-server client limit
//!   ([`MAX_CLIENTS_PER_SERVER`], 48 on Volta and newer); past the limit the client's CUDA
//!   initialisation fails ([`TwinError::TooManyClients`]).
//! - A client of **another uid blocks**: the control daemon asks the server to shut down once
//!   all its clients are done, and only then starts a server for the queued client's uid.
//!   A server with no clients is replaced at once.
//! - Assumption (conservative, not stated by the guide): a server asked to shut down takes no
//!   new clients, even of its own uid; they queue behind the waiting uid, in arrival order.
//!
//! [`ServerTable`] is the pure rule; [`SimRunner::connect`] and [`SimRunner::disconnect`]
//! apply it to the simulated daemon of a pipe directory (its `sim-control.json`), so a test can
//! act as the CUDA clients of leases the scheduler granted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SimRunner;

/// Clients one MPS server serves at once on Volta and newer GPUs (16 before Volta).
pub const MAX_CLIENTS_PER_SERVER: u32 = 48;

/// First simulated server PID (servers are numbered from here, in start order).
const FIRST_SERVER_PID: u32 = 40_000;

/// A running simulated MPS server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimServer {
    /// The server's (simulated) PID, as `get_server_list` prints it.
    pub pid: u32,
    /// The uid it runs as: only clients of this uid connect to it.
    pub uid: u32,
    /// PIDs of its connected clients, in connection order.
    pub clients: Vec<u32>,
    /// Asked to exit once its last client is gone (a client of another uid waits).
    pub shutting_down: bool,
}

/// A client process of the control daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimClient {
    /// Its PID.
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
}

/// What a connecting client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Connected to the running server.
    Connected {
        /// The server's PID.
        server_pid: u32,
    },
    /// Blocked until the running server (of another uid, or shutting down) has exited.
    Blocked {
        /// The uid of the server in the way.
        server_uid: u32,
    },
}

/// Refusals of the simulated control daemon.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// No control daemon runs on this pipe directory.
    #[error("no MPS control daemon runs on {}; start it first (MpsControl::start)", .pipe_dir.display())]
    NotRunning {
        /// The pipe directory.
        pipe_dir: PathBuf,
    },
    /// The server already serves as many clients as it can.
    #[error("the MPS server of uid {uid} already has {limit} clients, the most one server serves; the client's CUDA initialisation fails")]
    TooManyClients {
        /// The server's uid.
        uid: u32,
        /// The limit.
        limit: u32,
    },
    /// The PID is already a client.
    #[error("process {pid} is already a client of this MPS control daemon")]
    AlreadyClient {
        /// The PID.
        pid: u32,
    },
    /// The PID is not a client.
    #[error("process {pid} is not a client of this MPS control daemon")]
    NotAClient {
        /// The PID.
        pid: u32,
    },
    /// The daemon's file cannot be written.
    #[error("cannot record the simulated MPS daemon in {}: {detail}", .pipe_dir.display())]
    Write {
        /// The pipe directory.
        pipe_dir: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// One control daemon's server and clients: the per-uid rule (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTable {
    /// The running server, if any.
    #[serde(default)]
    pub server: Option<SimServer>,
    /// Blocked clients, in arrival order.
    #[serde(default)]
    pub queued: Vec<SimClient>,
    /// Per-server client limit; `None`: [`MAX_CLIENTS_PER_SERVER`].
    #[serde(default)]
    pub max_clients: Option<u32>,
    /// Uids of the servers started so far, in order (for tests and audits).
    #[serde(default)]
    pub started: Vec<u32>,
}

impl ServerTable {
    /// The per-server client limit in force.
    pub fn limit(&self) -> u32 {
        self.max_clients.unwrap_or(MAX_CLIENTS_PER_SERVER)
    }

    fn knows(&self, pid: u32) -> bool {
        self.queued.iter().any(|c| c.pid == pid)
            || self
                .server
                .as_ref()
                .is_some_and(|s| s.clients.contains(&pid))
    }

    fn start_server(&mut self, uid: u32) -> &mut SimServer {
        let pid = FIRST_SERVER_PID + self.started.len() as u32;
        self.started.push(uid);
        self.server.insert(SimServer {
            pid,
            uid,
            clients: Vec::new(),
            shutting_down: false,
        })
    }

    /// A client of `uid` initialises CUDA.
    pub fn connect(&mut self, pid: u32, uid: u32) -> Result<Admission, TwinError> {
        if self.knows(pid) {
            return Err(TwinError::AlreadyClient { pid });
        }
        let limit = self.limit();
        match &mut self.server {
            Some(s) if s.uid == uid && !s.shutting_down => {
                if s.clients.len() as u32 >= limit {
                    return Err(TwinError::TooManyClients { uid, limit });
                }
                s.clients.push(pid);
                Ok(Admission::Connected { server_pid: s.pid })
            }
            Some(s) if !s.clients.is_empty() => {
                s.shutting_down = true;
                let server_uid = s.uid;
                self.queued.push(SimClient { pid, uid });
                Ok(Admission::Blocked { server_uid })
            }
            _ => {
                // No server, or an idle one of another uid: (re)start for this uid.
                let s = self.start_server(uid);
                s.clients.push(pid);
                Ok(Admission::Connected { server_pid: s.pid })
            }
        }
    }

    /// A client exits. Returns the PIDs of blocked clients that connected because of it.
    pub fn disconnect(&mut self, pid: u32) -> Result<Vec<u32>, TwinError> {
        if let Some(i) = self.queued.iter().position(|c| c.pid == pid) {
            self.queued.remove(i);
            if let Some(s) = &mut self.server {
                s.shutting_down = self.queued.iter().any(|c| c.uid != s.uid);
            }
            return Ok(Vec::new());
        }
        let Some(s) = self.server.as_mut().filter(|s| s.clients.contains(&pid)) else {
            return Err(TwinError::NotAClient { pid });
        };
        s.clients.retain(|c| *c != pid);
        if !s.clients.is_empty() {
            return Ok(Vec::new());
        }
        let Some(next) = self.queued.first().copied() else {
            s.shutting_down = false;
            return Ok(Vec::new());
        };
        // The server exits; the control daemon starts one for the first queued client's uid
        // and lets in every queued client of that uid (up to the limit).
        let limit = self.limit();
        let mut admitted = Vec::new();
        let mut rest = Vec::new();
        for c in std::mem::take(&mut self.queued) {
            if c.uid == next.uid && (admitted.len() as u32) < limit {
                admitted.push(c.pid);
            } else {
                rest.push(c);
            }
        }
        let s = self.start_server(next.uid);
        s.clients = admitted.clone();
        s.shutting_down = rest.iter().any(|c| c.uid != next.uid);
        self.queued = rest;
        Ok(admitted)
    }

    /// Connected clients as (uid, pid), in server order.
    pub fn connected(&self) -> Vec<SimClient> {
        self.server
            .iter()
            .flat_map(|s| {
                s.clients.iter().map(|pid| SimClient {
                    pid: *pid,
                    uid: s.uid,
                })
            })
            .collect()
    }
}

impl SimRunner {
    fn table_op<T>(
        pipe_dir: &Path,
        op: impl FnOnce(&mut ServerTable) -> Result<T, TwinError>,
    ) -> Result<T, TwinError> {
        // Clients connect from many threads and processes: read-modify-write under a lock.
        let _lock = crate::sim::lock_file(&Self::file(pipe_dir)).map_err(|e| TwinError::Write {
            pipe_dir: pipe_dir.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mut d = Self::read(pipe_dir);
        if !d.running {
            return Err(TwinError::NotRunning {
                pipe_dir: pipe_dir.to_path_buf(),
            });
        }
        let out = op(&mut d.servers)?;
        Self::write(pipe_dir, &d).map_err(|e| TwinError::Write {
            pipe_dir: pipe_dir.to_path_buf(),
            detail: match e {
                super::RunnerError::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
        Ok(out)
    }

    /// A CUDA client (`pid`, `uid`) of the simulated daemon on `pipe_dir` initialises CUDA.
    pub fn connect(pipe_dir: &Path, pid: u32, uid: u32) -> Result<Admission, TwinError> {
        Self::table_op(pipe_dir, |t| t.connect(pid, uid))
    }

    /// A client of the simulated daemon on `pipe_dir` exits; returns the PIDs it unblocked.
    pub fn disconnect(pipe_dir: &Path, pid: u32) -> Result<Vec<u32>, TwinError> {
        Self::table_op(pipe_dir, |t| t.disconnect(pid))
    }

    /// Set the simulated daemon's per-server client limit (16 to model a pre-Volta GPU).
    pub fn set_max_clients(pipe_dir: &Path, limit: u32) -> Result<(), TwinError> {
        Self::table_op(pipe_dir, |t| {
            t.max_clients = Some(limit);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_second_uid_blocks_until_the_first_uids_clients_are_gone() {
        let mut t = ServerTable::default();
        let a1 = t.connect(1, 1000).unwrap();
        assert!(matches!(a1, Admission::Connected { .. }));
        assert!(matches!(
            t.connect(2, 1000).unwrap(),
            Admission::Connected { .. }
        ));
        assert_eq!(
            t.connect(3, 1001).unwrap(),
            Admission::Blocked { server_uid: 1000 }
        );
        // The server is draining: a new client of its own uid queues too.
        assert_eq!(
            t.connect(4, 1000).unwrap(),
            Admission::Blocked { server_uid: 1000 }
        );
        assert_eq!(t.disconnect(1).unwrap(), Vec::<u32>::new());
        assert_eq!(t.disconnect(2).unwrap(), vec![3]);
        assert_eq!(t.server.as_ref().unwrap().uid, 1001);
        assert!(t.server.as_ref().unwrap().shutting_down);
        assert_eq!(t.disconnect(3).unwrap(), vec![4]);
        assert_eq!(t.started, vec![1000, 1001, 1000]);
        assert!(matches!(
            t.disconnect(9),
            Err(TwinError::NotAClient { pid: 9 })
        ));
    }

    #[test]
    fn an_idle_server_of_another_uid_is_replaced_at_once() {
        let mut t = ServerTable::default();
        t.connect(1, 1000).unwrap();
        t.disconnect(1).unwrap();
        assert!(matches!(
            t.connect(2, 1001).unwrap(),
            Admission::Connected { .. }
        ));
        assert_eq!(t.started, vec![1000, 1001]);
    }

    #[test]
    fn the_49th_client_of_a_server_is_refused() {
        let mut t = ServerTable::default();
        for pid in 0..MAX_CLIENTS_PER_SERVER {
            t.connect(pid, 1000).unwrap();
        }
        let e = t.connect(99, 1000).unwrap_err();
        assert!(
            matches!(e, TwinError::TooManyClients { limit: 48, .. }),
            "{e}"
        );
        assert!(matches!(
            t.connect(0, 1000),
            Err(TwinError::AlreadyClient { pid: 0 })
        ));
    }

    #[derive(Debug, Clone)]
    enum Step {
        Connect(u32, u32),
        Disconnect(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (0u32..40, 0u32..3).prop_map(|(p, u)| Step::Connect(p, 1000 + u)),
                (0usize..40).prop_map(Step::Disconnect),
            ],
            0..120,
        )
    }

    proptest! {
        /// Whatever clients come and go: one server at a time, every connected client has
        /// the server's uid, never more than the limit, and once every connected client has
        /// exited, each blocked one connects in turn.
        #[test]
        fn one_uid_per_server_and_blocked_clients_are_served(list in steps()) {
            let mut t = ServerTable { max_clients: Some(4), ..ServerTable::default() };
            let mut live: Vec<u32> = Vec::new();
            for s in list {
                match s {
                    Step::Connect(pid, uid) => {
                        if t.connect(pid, uid).is_ok() {
                            live.push(pid);
                        }
                    }
                    Step::Disconnect(i) if !live.is_empty() => {
                        let pid = live.remove(i % live.len());
                        t.disconnect(pid).unwrap();
                    }
                    Step::Disconnect(_) => {}
                }
                if let Some(s) = &t.server {
                    prop_assert!(s.clients.len() as u32 <= t.limit());
                    prop_assert!(t.connected().iter().all(|c| c.uid == s.uid));
                }
                prop_assert!(
                    t.queued.is_empty() || t.server.as_ref().is_some_and(|s| !s.clients.is_empty())
                );
            }
            // Drain: exit connected clients one by one; every queued client gets its turn.
            let mut guard = 0;
            while let Some(pid) = t.connected().first().map(|c| c.pid) {
                t.disconnect(pid).unwrap();
                guard += 1;
                prop_assert!(guard < 200);
            }
            prop_assert!(t.queued.is_empty());
        }
    }
}
