//! GPU backends for tessera: the [`GpuBackend`] trait that inventories GPUs and creates and
//! destroys MIG instances, with two implementations, [`nvml::NvmlBackend`] (the real driver,
//! loaded at run time) and [`sim::SimBackend`] (NVML's semantics in memory or in a shared state
//! file, with seeded faults and crash points); MPS daemon control ([`mps`]); health from XID
//! events ([`health`]); and the comparison of a GPU's own profile table with the catalog
//! ([`profiles`]).
//!
//! Depends on `tessera-model` only. Nothing here decides *what* to create: that is the agent.

pub mod backend;
mod checks;
pub mod error;
pub mod health;
pub mod mps;
pub mod nvml;
pub mod profiles;
pub mod sim;

use std::path::PathBuf;

pub use backend::{
    Capabilities, ComputeInstance, ComputeMode, GpuBackend, GpuEvent, GpuInfo, GpuInstance,
    HeldInstance, IdleInstance, MigMode,
};
pub use error::GpuError;
pub use health::{Health, HealthTracker};
pub use profiles::{diff_profiles, ProfileDiff, ProfileInfo};
pub use sim::{CrashPlan, CrashPoint, FaultTiming, SimBackend, SimConfig, SimState};

use tessera_model::Catalog;

/// Which backend to open, as written on the command line: `nvml` or `sim:STATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// The real driver.
    Nvml,
    /// A simulated machine in a state file.
    Sim(PathBuf),
}

/// A backend name that is neither `nvml` nor `sim:STATE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown backend `{text}`; use `nvml` or `sim:STATE` (a file made by `tessera sim-gpu init`)"
)]
pub struct UnknownBackend {
    /// The text given.
    pub text: String,
}

impl BackendSpec {
    /// Parse `nvml` or `sim:PATH`.
    pub fn parse(text: &str) -> Result<BackendSpec, UnknownBackend> {
        let t = text.trim();
        if t == "nvml" {
            return Ok(BackendSpec::Nvml);
        }
        match t.strip_prefix("sim:") {
            Some(p) if !p.is_empty() => Ok(BackendSpec::Sim(PathBuf::from(p))),
            _ => Err(UnknownBackend {
                text: text.to_string(),
            }),
        }
    }
}

/// Open a backend. `sim` takes the fault/crash configuration; `nvml` ignores it.
pub fn open_backend(
    spec: &BackendSpec,
    catalog: &Catalog,
    sim: SimConfig,
) -> Result<Box<dyn GpuBackend>, GpuError> {
    Ok(match spec {
        BackendSpec::Nvml => Box::new(nvml::NvmlBackend::open(catalog.clone())?),
        BackendSpec::Sim(path) => Box::new(SimBackend::open(path, catalog.clone(), sim)?),
    })
}

/// Compare the profile table a GPU reports with its catalog model. `Ok(None)` when the GPU
/// matches no catalog model; errors when the table cannot be read (MIG mode off).
pub fn catalog_diff(
    backend: &mut dyn GpuBackend,
    catalog: &Catalog,
    gpu: &GpuInfo,
) -> Result<Option<Vec<ProfileDiff>>, GpuError> {
    let Some(model) = gpu.model.as_deref().and_then(|k| catalog.get(k)) else {
        return Ok(None);
    };
    let table = backend.profiles(gpu.index)?;
    Ok(Some(diff_profiles(model, &table)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs_parse() {
        assert_eq!(BackendSpec::parse("nvml").unwrap(), BackendSpec::Nvml);
        assert_eq!(
            BackendSpec::parse("sim:/tmp/m.json").unwrap(),
            BackendSpec::Sim("/tmp/m.json".into())
        );
        let e = BackendSpec::parse("sim:").unwrap_err();
        assert!(e.to_string().contains("sim:STATE"), "{e}");
        assert!(BackendSpec::parse("cuda").is_err());
    }
}
