//! The pure core of tessera: GPU models and their MIG profiles ([`catalog`]), the rules that
//! make a MIG layout valid ([`layout`]), and the parsers for `nvidia-smi mig` output that turn
//! a real GPU's tables into a catalog entry ([`import`]).
//!
//! Nothing in this crate does I/O: the built-in catalog is embedded with `include_str!`, and
//! every parser takes a `&str`.

pub mod catalog;
pub mod import;
pub mod layout;
pub mod suggest;

pub use catalog::{Catalog, CatalogError, Engines, GiProfile, GpuModel, ProfileIdx};
pub use layout::{Layout, LayoutError, LayoutState, Placed, Violation};
