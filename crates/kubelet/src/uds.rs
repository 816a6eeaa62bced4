//! gRPC over Unix sockets, the kubelet's transport: bind a socket path (replacing a stale
//! file) and dial one.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::KubeletError;

/// Bind `path` for serving, creating its directory and removing a stale socket file first.
pub fn bind(path: &Path) -> Result<UnixListenerStream, KubeletError> {
    let io = |source| KubeletError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    Ok(UnixListenerStream::new(
        UnixListener::bind(path).map_err(io)?,
    ))
}

/// A gRPC channel to the server on the Unix socket at `path` (connected now, so a missing
/// socket is an error here).
pub async fn connect(path: &Path) -> Result<Channel, KubeletError> {
    let p: PathBuf = path.to_path_buf();
    // The URI is required by the API and ignored by the connector.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move { UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| KubeletError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

/// The identity of a file, to notice a socket that was recreated: device, inode and change
/// time (a file made right after another was removed may get the same inode number).
pub fn identity(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// What [`identity`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}
