//! The kubelet's gRPC contracts, compiled from the project's own `.proto` files, and tessera's
//! node-side plugins that speak them: the device-plugin mode and the DRA kubelet plugin.
//!
//! - [`proto`]: the four kubelet APIs (device plugin v1beta1, DRA v1, plugin registration,
//!   PodResources v1), tonic clients and servers.
//! - [`inventory`]: the node's slices ([`NodeInventory`]), read from a GPU backend.
//! - [`deviceplugin`]: device-plugin mode under NVIDIA/nos resource names ([`names`]).
//! - [`dra`]: the DRA kubelet plugin, its checkpoint and CDI specs, and the ResourceSlice builder.
//! - [`partition`]: partitionable devices (KEP-4815): a MIG GPU's counters and placements.
//! - [`ledger`]: one allocation ledger for `--mode both`.
//! - [`node`]: the node runner (agent + journal towards a desired layout, busy protection).
//! - [`testkit`]: a fake kubelet speaking the real protocols over Unix sockets.

pub mod deviceplugin;
pub mod dra;
pub mod error;
pub mod inventory;
pub mod ledger;
pub mod names;
pub mod node;
pub mod partition;
pub mod proto;
pub mod testkit;
pub mod uds;

pub use error::KubeletError;
pub use inventory::{InvGpu, MigSlice, MpsShare, NodeInventory, Sharing};
/// The `async_trait` attribute the crate's async traits ([`node::DesiredSource`], [`node::StatusSink`],
/// [`dra::ClaimReader`]) are written with, for implementors.
pub use tonic::async_trait;
