//! The crate's typed errors: each names the file or object and, where there is one, the fix.

use std::path::PathBuf;

/// What can go wrong while isolating a lease.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of a kernel or driver file is not in the documented format.
    #[error("{path} line {line}: cannot parse `{text}`: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// A device node the slice needs is missing or is not a character device.
    #[error("{path}: {why}; is the NVIDIA driver loaded (nvidia-smi works) and are its device nodes created (nvidia-modprobe)?")]
    Device {
        /// The node.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The driver lists no capability for this MIG instance.
    #[error("{path} lists no `{cap}`: the MIG instance GPU {gpu} GI {gi}{ci} does not exist (or the file belongs to another driver version)")]
    NoCapability {
        /// The mig-minors file.
        path: PathBuf,
        /// The capability looked up (`gpu0/gi1/access`).
        cap: String,
        /// GPU minor.
        gpu: u32,
        /// GPU instance ID.
        gi: u32,
        /// ` CI n` or empty.
        ci: String,
    },
    /// A `bpf(2)` call for the cgroup v2 device program failed.
    #[error("{path}: {what}: {source}")]
    Bpf {
        /// The lease's cgroup.
        path: PathBuf,
        /// Which step failed (with the verifier log when the kernel gave one).
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A lease's cgroup still holds processes after every kill attempt.
    #[error("cgroup {path} still holds process(es) {pids:?} after SIGKILL")]
    Busy {
        /// The lease's cgroup.
        path: PathBuf,
        /// Processes left.
        pids: Vec<u32>,
    },
}

impl IsolationError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IsolationError::Io {
            path: path.into(),
            source,
        }
    }
}
