//! Virtual machines on shared GPUs: NVIDIA vGPU (time-sliced and MIG-backed) on a KVM host.
//!
//! - [`catalog`]: the vGPU type catalog (`data/vgpu-types.yaml`), with its consistency rules.
//! - [`sysfs`]: the file layer ([`sysfs::Sysfs`]), real ([`sysfs::RealFs`]) with errno kept.
//! - [`host`]: the host backend ([`host::VgpuHost`], [`host::SysfsHost`]): mdev and vendor
//!   VFIO vGPUs, SR-IOV, AMD partition modes; every write read back, errno mapped.
//! - [`agent`]: desired vGPUs per GPU, the pure [`agent::plan`], the journaled [`agent::Agent`]
//!   with roll-forward after a crash; [`journal`]: its intent/outcome journal.
//! - [`integrate`]: Proxmox mappings, `hostpci` lines and hookscript; libvirt `<hostdev>`;
//!   vGPU owners.
//! - [`placer`]: where new vGPUs go on a host's GPUs (type x count, or frame buffer and
//!   isolation class), as a desired state for the agent.
//! - [`twin`]: the errno-faithful behaviour model of a vGPU host, renderable as a real tree.

pub mod agent;
pub mod catalog;
pub mod host;
pub mod integrate;
pub mod journal;
pub mod placer;
pub mod sysfs;
pub mod twin;

pub use catalog::{Backing, Board, CatalogError, Series, VgpuCatalog, VgpuType};
