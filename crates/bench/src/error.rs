//! The one error type of the bench crate. Every message names the object, the problem and,
//! where there is one, the fix.

use std::path::PathBuf;

/// Everything that can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The CUDA driver library cannot be loaded: there is no NVIDIA GPU/driver on this machine.
    #[error(
        "no CUDA driver found ({lib}): {detail}; `tessera bench sharing` needs an NVIDIA GPU and \
         its driver"
    )]
    NoDriver {
        /// The library names that were tried.
        lib: String,
        /// Why loading it failed.
        detail: String,
    },
    /// cuBLAS cannot be loaded, so the GEMM workloads cannot run.
    #[error(
        "cuBLAS not found (tried {tried}): {detail}; install the cuBLAS runtime of CUDA 13 or 12 \
         (the toolkit, or `pip install nvidia-cublas` / `nvidia-cublas-cu12`) and add its lib \
         directory to LD_LIBRARY_PATH, or leave gemm-small and gemm-large out of --workloads"
    )]
    NoCublas {
        /// The library names tried.
        tried: String,
        /// The loader's last error.
        detail: String,
    },
    /// A CUDA driver or cuBLAS call failed inside a tenant.
    #[error("CUDA call {op} failed: {detail}")]
    Cuda {
        /// The call or step.
        op: String,
        /// The driver's message.
        detail: String,
    },
    /// A value given by the user is not valid.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        /// What kind of value (flag name).
        what: &'static str,
        /// The value as given.
        value: String,
        /// What is expected instead.
        reason: String,
    },
    /// A tenant process reported an error or died.
    #[error("tenant {tenant} ({slot}) failed while {phase}: {message}")]
    Tenant {
        /// Tenant number (0-based).
        tenant: u32,
        /// The slot it ran on.
        slot: String,
        /// What it was doing.
        phase: String,
        /// Its message, or the tail of its stderr.
        message: String,
    },
    /// A tenant process could not be started.
    #[error("cannot start tenant process {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A tenant did not answer in time.
    #[error("tenant {tenant} ({slot}) did not {what} within {seconds:.0} s; it was stopped")]
    Timeout {
        /// Tenant number.
        tenant: u32,
        /// The slot it ran on.
        slot: String,
        /// What was awaited.
        what: &'static str,
        /// The limit.
        seconds: f64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The MPS daemon could not be started or stopped.
    #[error("MPS: {0}")]
    Mps(String),
    /// The parent and a tenant disagree on the line protocol (a version mismatch or a bug).
    #[error("tenant protocol: {0}")]
    Protocol(String),
    /// Ctrl-C or SIGTERM: tenants were stopped and the MPS daemon (if any) was shut down.
    #[error("interrupted: tenant processes stopped, MPS daemon (if any) stopped and GPU settings restored")]
    Interrupted,
    /// A chart could not be drawn.
    #[error("chart {path}: {source}")]
    Chart {
        /// The PNG file.
        path: PathBuf,
        /// What plotters reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BenchError {
    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}
