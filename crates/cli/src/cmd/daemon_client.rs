//! What every command that talks to the daemon shares (`run`, `ps`, `status`, `cancel`, `drain`):
//! the `--socket` flag, a client of it, a small runtime, and how client errors are reported.
//! Only `tessera-api` is needed here: no SQLite, HTTP server or NVML.

use std::future::Future;
use std::path::PathBuf;

use tessera_api::client::{Client, ClientError};

use crate::output::CliError;

/// The daemon's socket, shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArg {
    /// The daemon's Unix socket. Default: $TESSERA_SOCKET, else
    /// $XDG_RUNTIME_DIR/tessera/tessera.sock, else /tmp/tessera/tessera.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// A client of the chosen socket.
    pub fn client(&self) -> Client {
        Client::new(
            self.socket
                .clone()
                .unwrap_or_else(tessera_api::paths::default_socket),
        )
    }
}

/// Run a future on a small runtime of this thread.
pub fn block_on<F: Future>(f: F) -> Result<F::Output, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    Ok(rt.block_on(f))
}

/// A client error as the CLI reports it.
pub fn client_error(e: ClientError) -> CliError {
    CliError::Client(e)
}
