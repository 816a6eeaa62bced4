//! Errors of the daemon ([`ServerError`]) and of one API call ([`ApiError`], which carries its
//! HTTP status).

use std::path::PathBuf;

/// Errors that stop the daemon or one of its parts.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is wrong.
    #[error("config {}: {problem}", path.display())]
    Config {
        /// The file (or `<flags>`).
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The state database failed.
    #[error("state database {}: {problem}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The database was written by another schema version.
    #[error("state database {}: schema version {found} is not supported (this build uses {expected}); move the file away to start afresh", path.display())]
    Schema {
        /// The database file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// A file or socket operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The GPU backend could not be set up or failed.
    #[error("GPU backend: {context}: {source}")]
    Backend {
        /// What was being done (`open NVML`, `list GPUs`, …).
        context: String,
        /// The backend's error.
        #[source]
        source: tessera_gpu::GpuError,
    },
    /// NVML works but sees no GPU.
    #[error("GPU backend: NVML found no GPU; use --backend sim to simulate one")]
    NoGpu,
    /// An MPS control daemon could not be started for a GPU in MPS mode.
    #[error("GPU {gpu}: start MPS: {source}")]
    Mps {
        /// The GPU.
        gpu: u32,
        /// MPS control's error.
        #[source]
        source: tessera_gpu::mps::MpsError,
    },
    /// The GPU fleet does not match the configuration (or a simulated GPU cannot be put in
    /// the mode the configuration needs).
    #[error("{problem}")]
    Fleet {
        /// What does not match and how to fix it.
        problem: String,
        /// The backend's error behind it, if any (its text is part of `problem`).
        #[source]
        source: Option<tessera_gpu::GpuError>,
    },
    /// Per-lease device isolation was required (`isolation: devices`) but this host cannot
    /// make lease cgroups.
    #[error("device isolation: `isolation: devices` is set, but {source}. Fix that, or set `isolation: off` in the config to run without device isolation")]
    Isolation {
        /// What the cgroup probe found instead of a usable controller.
        #[source]
        source: tessera_isolation::Unavailable,
    },
    /// The scheduler thread died; the daemon stops so that it can be restarted.
    #[error("the scheduler thread died ({cause}); stopping the daemon: restart it (leases and the queue are kept)")]
    SchedulerDied {
        /// Why it died.
        #[source]
        cause: SchedulerDeath,
    },
}

/// Why the scheduler thread stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerDeath {
    /// It panicked.
    #[error("panic: {message}")]
    Panic {
        /// The panic's message (`a panic without a message` when its payload was no text).
        message: String,
    },
    /// The thread is gone without recording why.
    #[error("the scheduler thread is gone")]
    Gone,
}

/// What kind of failure an error is, for a caller's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: the configuration, a flag or a file the user must fix.
    Usage,
    /// A failure while running: the backend, the database, the OS.
    Runtime,
}

impl ServerError {
    /// A fleet mismatch without a further cause.
    pub fn fleet(problem: impl Into<String>) -> Self {
        ServerError::Fleet {
            problem: problem.into(),
            source: None,
        }
    }

    /// A backend failure while doing `context`.
    pub fn backend(context: impl Into<String>, source: tessera_gpu::GpuError) -> Self {
        ServerError::Backend {
            context: context.into(),
            source,
        }
    }

    /// Whether the user's input is at fault ([`ErrorKind::Usage`]: the configuration, or a
    /// fleet or isolation setting that does not fit the machine) or the run failed.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServerError::Config { .. }
            | ServerError::Fleet { .. }
            | ServerError::Isolation { .. } => ErrorKind::Usage,
            ServerError::Store { .. }
            | ServerError::Schema { .. }
            | ServerError::Io { .. }
            | ServerError::Backend { .. }
            | ServerError::NoGpu
            | ServerError::Mps { .. }
            | ServerError::SchedulerDied { .. } => ErrorKind::Runtime,
        }
    }

    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServerError::Io {
            path: path.into(),
            source,
        }
    }
}

/// An API call's failure: an HTTP status and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// What went wrong and what to do (for 5xx: an incident id only).
    pub message: String,
}

impl ApiError {
    /// 400: the body or a parameter is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
        }
    }
    /// 401: no or a wrong bearer token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: 401,
            message: message.into(),
        }
    }
    /// 403: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: 403,
            message: message.into(),
        }
    }
    /// 404: no such object (or not the caller's).
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: message.into(),
        }
    }
    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: message.into(),
        }
    }
    /// 422: well-formed, but no GPU of this fleet can ever serve it.
    pub fn unsatisfiable(message: impl Into<String>) -> Self {
        ApiError {
            status: 422,
            message: message.into(),
        }
    }
    /// 503: the daemon cannot serve this now (its scheduler stopped).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: 503,
            message: message.into(),
        }
    }
    /// 500: the daemon's own failure; the details go to the log under an incident id.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        tracing::error!(incident = id, "internal error: {detail}");
        ApiError {
            status: 500,
            message: format!("internal error (incident {id}; see the daemon's log)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use tessera_isolation::Availability;

    #[test]
    fn isolation_and_scheduler_errors_keep_their_typed_causes_and_kinds() {
        let probe = Availability::NotWritable {
            path: "/sys/fs/cgroup/devices/tessera".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let e = ServerError::Isolation {
            source: probe.into_unavailable().unwrap(),
        };
        assert_eq!(e.kind(), ErrorKind::Usage);
        let text = e.to_string();
        assert!(
            text.contains("cannot create cgroups in /sys/fs/cgroup/devices/tessera")
                && text.contains("set `isolation: off`"),
            "{text}"
        );
        // ServerError -> Unavailable -> the OS error.
        let unavailable = e.source().expect("the probe result is the cause");
        let os = unavailable.source().expect("the OS error is kept");
        assert!(os.downcast_ref::<std::io::Error>().is_some());
        assert!(Availability::V1 { root: "/x".into() }
            .into_unavailable()
            .is_none());

        let e = ServerError::SchedulerDied {
            cause: SchedulerDeath::Panic {
                message: "index out of bounds".into(),
            },
        };
        assert_eq!(e.kind(), ErrorKind::Runtime);
        assert_eq!(
            e.source().and_then(|c| c.downcast_ref::<SchedulerDeath>()),
            Some(&SchedulerDeath::Panic {
                message: "index out of bounds".into()
            })
        );
    }
}
