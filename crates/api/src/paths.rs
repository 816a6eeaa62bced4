//! Where the daemon listens by default, so that every client and the daemon agree without a
//! configuration file.

use std::path::PathBuf;

/// `$XDG_RUNTIME_DIR/tessera` when that variable is set, else `/tmp/tessera`.
pub fn default_base_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("tessera"),
        _ => PathBuf::from("/tmp/tessera"),
    }
}

/// The socket clients use when given none: `$TESSERA_SOCKET`, else
/// `<base dir>/tessera.sock` (see [`default_base_dir`]).
pub fn default_socket() -> PathBuf {
    match std::env::var_os("TESSERA_SOCKET") {
        Some(s) if !s.is_empty() => PathBuf::from(s),
        _ => default_base_dir().join("tessera.sock"),
    }
}
