//! The tessera daemon's API, for any client: the versioned wire types ([`wire`]) and a small
//! client over the daemon's Unix socket ([`client`]), the web view's document ([`overview`]),
//! and the default socket path ([`paths`]).
//!
//! This crate is what `tessera run`, `ps`, `status`, `cancel` and `drain` need to talk to the
//! daemon, and what a third-party client would depend on: serde, serde_json and tokio only — no
//! SQLite, no HTTP server, no NVML (`cargo tree -p tessera-api` shows it). The daemon itself
//! (`tessera-server`) depends on this crate and re-exports both modules.

pub mod client;
pub mod overview;
pub mod paths;
pub mod wire;
