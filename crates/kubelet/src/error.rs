//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong serving the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A file or socket operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Dialing a Unix socket failed (is the peer running?).
    #[error("cannot connect to {}: {source}; is the kubelet (or plugin) running and the directory right?", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call answered with an error status.
    #[error("{call}: {status}")]
    Call {
        /// Which call, e.g. `Register nvidia.com/mig-1g.10gb`.
        call: String,
        /// The peer's answer.
        #[source]
        status: tonic::Status,
    },
    /// A gRPC server stopped with an error.
    #[error("serving {}: {source}", path.display())]
    Serve {
        /// The socket served.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A file had content that could not be read or written as JSON.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The desired layout or another input is wrong; the message says how to fix it.
    #[error("{0}")]
    Invalid(String),
    /// A device node or the MIG capability table could not be read.
    #[error("device nodes: {0}")]
    Isolation(#[from] tessera_isolation::IsolationError),
    /// The GPU backend failed.
    #[error("GPU backend: {0}")]
    Gpu(#[from] tessera_gpu::GpuError),
}
