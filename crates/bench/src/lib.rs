//! `tessera bench sharing`: measure what each way of sharing a GPU (time-slicing, MPS, MIG)
//! really gives each tenant, idle and loaded, as in the seed study of an A30 shared four ways.
//!
//! - [`workload`]: the five workloads and their sizes; [`peaks`]: spec-sheet peaks of known GPUs.
//! - [`run`]: the benchmark ([`run::run_sharing`]) and its files ([`run::write_outputs`]).
//! - [`group`]: a group of tenant processes started behind one barrier; [`protocol`]: the lines
//!   parent and tenants speak; [`tenant`]: the tenant side, with the GPU kernels in [`cuda`] and
//!   the CPU stand-in in [`cpu`].
//! - [`inventory`] (read-only `nvidia-smi`), [`slots`] (modes and per-tenant environments),
//!   [`mps`] (the MPS daemon of the `mps` mode).
//! - [`report`]: the versioned report, aggregation and table/CSV renderings; [`chart`]: PNGs.
//!
//! Tenants are separate OS processes: the CLI re-executes itself (`tessera bench tenant`, hidden)
//! with the tenant's job in an environment variable, so each tenant has its own CUDA context,
//! exactly like independent users of a shared GPU. The parent never creates a CUDA context.

pub mod chart;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod group;
pub mod interrupt;
pub mod inventory;
pub mod mps;
pub mod peaks;
pub mod protocol;
pub mod report;
pub mod run;
pub mod slots;
pub mod tenant;
pub mod workload;

pub use error::BenchError;
pub use group::{Limits, TenantCommand};
pub use protocol::Backend;
pub use report::Report;
pub use run::{run_sharing, write_outputs, Config, NoProgress, Progress};
pub use slots::Mode;
pub use tenant::tenant_main;
pub use workload::Workload;
