//! Per-lease isolation on one host: which device nodes a slice needs ([`devices`], with the
//! MIG capability minors of [`caps`]), a cgroup per lease that allows only those nodes and
//! holds the lease's whole process tree ([`cgroup`]; on cgroup v2 through a device program,
//! [`bpf`]), and the process-tree fallback where no
//! cgroup can be written ([`procs`]).
//!
//! What is enforced, by what, and what is not: `docs/isolation-devices.md`.
//!
//! Layer: like `gpu`, the I/O sits behind a trait ([`cgroup::LeaseCgroups`]); the server owns
//! one and calls it from its scheduler thread at grant, cancel, expiry and release.

pub mod bpf;
pub mod caps;
pub mod cgroup;
pub mod devices;
pub mod error;
pub mod procs;

pub use cgroup::{
    probe, probe_v1, probe_v2, Availability, DevicesV1, DevicesV2, LeaseCgroups, Unavailable,
};
pub use devices::{base_rules, DevRoots, DeviceRule, SliceDevices};
pub use error::IsolationError;
pub use procs::Stamp;
