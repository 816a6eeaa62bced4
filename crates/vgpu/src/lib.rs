//! Virtual machines on shared GPUs: NVIDIA vGPU (time-sliced and MIG-backed) on a KVM host.
//!
//! - [`catalog`]: the vGPU type catalog (`data/vgpu-types.yaml`), with its consistency rules.

pub mod catalog;

pub use catalog::{Backing, Board, CatalogError, Series, VgpuCatalog, VgpuType};
