//! tessera-server: the single-machine daemon (`tessera serve`) that hands out right-sized GPU
//! slices on demand.
//!
//! Clients (`tessera run`) queue a request over a Unix socket; the scheduler asks the planner
//! for the cheapest way to serve the head of the queue using only idle instances, the GPU is
//! re-partitioned when needed, and the request is leased a slice (a MIG instance, an MPS client
//! share or a time-slice replica). The lease ends when the client says its command ended, or
//! when the client process is gone or silent. Everything the daemon knows lives in SQLite, so a
//! `kill -9` loses nothing.
//!
//! Modules, in the order a request meets them:
//! - [`wire`]: the API's JSON types (version 1);
//! - [`http`]: the axum router, peer-credential and bearer-token identity ([`ident`]);
//! - [`daemon`]: the shared state and start; [`api`]: the API operations; [`views`]: the views
//!   they answer with;
//! - `scheduler`: the scheduler thread, the executor of the sans-IO core ([`core`]: what a
//!   pass does, from the observed state and the time), liveness ([`liveness`]) and recovery;
//! - [`sched`]: the scheduling rule (queue order, reservations against starvation);
//! - [`fleet`]: the GPUs (NVML or simulated), MPS, layout changes;
//! - [`isolate`]: a cgroup per lease (device allow-list, whole-tree kill), quarantine;
//! - [`store`]: SQLite (queue, leases, desired layouts, journal, schema version); [`journal`]:
//!   the agent's journal in it;
//! - [`metrics`]: Prometheus metrics; [`web`]: the web view at `/`; [`config`]: the YAML configuration;
//! - [`client`]: the client used by the CLI; [`serve`]: sockets and signals.
//!
//! `tessera demo` (the CLI's `cmd/demo_run.rs`) uses this crate as a library.

pub mod api;
pub mod config;
pub mod core;
pub mod daemon;
pub mod error;
pub mod fleet;
pub mod http;
pub mod ident;
pub mod isolate;
pub mod journal;
pub mod liveness;
pub mod metrics;
pub mod sched;
mod scheduler;
pub mod serve;
pub mod store;
pub mod views;
pub mod web;

/// The API's client and wire types live in `tessera-api` (no SQLite, HTTP server or NVML there).
pub use tessera_api::{client, overview, wire};

pub use config::Config;
pub use daemon::Daemon;
pub use error::{ApiError, SchedulerDeath, ServerError};
