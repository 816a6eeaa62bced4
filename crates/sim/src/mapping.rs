//! How a trace pod's GPU request becomes MIG instances: our modelling choice, stated exactly.
//!
//! The trace asks for generic GPU shares (`num_gpu`, `gpu_milli`), not MIG profiles, and its GPU
//! types are undisclosed. The simulator turns every trace GPU into one chosen MIG-capable model
//! and every request into instances of that model's *standard* profiles (no `+me`, `-me`,
//! `+gfx` variants):
//!
//! * `num_gpu == 0`: no GPU (the pod still takes CPU and memory).
//! * `num_gpu == 1` and `0 < gpu_milli < 1000`: the smallest standard profile (fewest compute
//!   slices, then fewest memory slices) whose compute share `compute_slices / GPU compute
//!   slices` and memory share `memory_slices / GPU memory slices` both reach `gpu_milli / 1000`.
//!   On an A100 80GB: up to 125 → `1g.10gb`, 126–142 → `1g.20gb`, 143–250 → `2g.20gb`,
//!   251–428 → `3g.40gb`, 429–500 → `4g.40gb`, above → `7g.80gb`.
//! * otherwise (a whole GPU, or several): `num_gpu` full-GPU instances, all on one node.

use serde::Serialize;
use tessera_model::{GpuModel, ProfileIdx};

/// Errors from building a mapping.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The model has no standard profile covering the whole GPU.
    #[error("GPU model `{model}` has no standard full-GPU profile (all compute and memory slices); pick a MIG model such as a100-80gb")]
    NoFullProfile {
        /// The model key.
        model: String,
    },
}

/// The GPU part of a pod after mapping: `count` instances of `profile`, all on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuDemand {
    /// The profile of every instance.
    pub profile: ProfileIdx,
    /// How many instances (one per GPU; more than one only for full-GPU profiles).
    pub count: u32,
    /// Compute slices of one instance.
    pub slices: u32,
    /// Whether the profile is the full-GPU one.
    pub full: bool,
}

impl GpuDemand {
    /// Compute slices of the whole demand.
    pub fn total_slices(&self) -> u64 {
        u64::from(self.slices) * u64::from(self.count)
    }
}

/// The mapping from trace requests to profiles of one model.
#[derive(Debug, Clone)]
pub struct Mapping<'m> {
    model: &'m GpuModel,
    /// Standard profiles, smallest first.
    standard: Vec<ProfileIdx>,
    full: ProfileIdx,
}

/// Whether a profile is a standard one (no media-engine or graphics variant suffix).
pub fn is_standard(model: &GpuModel, p: ProfileIdx) -> bool {
    !model.profile(p).name.contains(['+', '-'])
}

impl<'m> Mapping<'m> {
    /// The mapping for a model.
    pub fn new(model: &'m GpuModel) -> Result<Self, MappingError> {
        let mut standard: Vec<ProfileIdx> = model
            .profile_indices()
            .map(|(i, _)| i)
            .filter(|&i| is_standard(model, i))
            .collect();
        standard.sort_by_key(|&i| {
            let p = model.profile(i);
            (p.compute_slices, p.memory_slices, i)
        });
        let full = standard
            .iter()
            .copied()
            .find(|&i| {
                let p = model.profile(i);
                p.compute_slices == model.compute_slices && p.memory_slices == model.memory_slices
            })
            .ok_or_else(|| MappingError::NoFullProfile {
                model: model.key.clone(),
            })?;
        Ok(Mapping {
            model,
            standard,
            full,
        })
    }

    /// The model.
    pub fn model(&self) -> &'m GpuModel {
        self.model
    }

    /// The full-GPU profile.
    pub fn full(&self) -> ProfileIdx {
        self.full
    }

    /// Standard profiles, smallest first.
    pub fn standard(&self) -> &[ProfileIdx] {
        &self.standard
    }

    /// Compute slices of a profile.
    pub fn slices(&self, p: ProfileIdx) -> u32 {
        u32::from(self.model.profile(p).compute_slices)
    }

    /// The smallest standard profile covering `gpu_milli` of one GPU in compute and memory.
    pub fn profile_for_milli(&self, gpu_milli: u32) -> ProfileIdx {
        let (cs, ms) = (
            u64::from(self.model.compute_slices),
            u64::from(self.model.memory_slices),
        );
        let want = u64::from(gpu_milli.min(1000));
        self.standard
            .iter()
            .copied()
            .find(|&i| {
                let p = self.model.profile(i);
                u64::from(p.compute_slices) * 1000 >= want * cs
                    && u64::from(p.memory_slices) * 1000 >= want * ms
            })
            .unwrap_or(self.full)
    }

    /// The GPU demand of a pod, or `None` for a pod that needs no GPU.
    pub fn demand(&self, num_gpu: u32, gpu_milli: u32) -> Option<GpuDemand> {
        if num_gpu == 0 {
            return None;
        }
        let (profile, count) = if num_gpu == 1 && gpu_milli > 0 && gpu_milli < 1000 {
            (self.profile_for_milli(gpu_milli), 1)
        } else {
            (self.full, num_gpu)
        };
        Some(GpuDemand {
            profile,
            count,
            slices: self.slices(profile),
            full: profile == self.full,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    fn name(m: &Mapping, milli: u32) -> String {
        m.model().profile(m.profile_for_milli(milli)).name.clone()
    }

    #[test]
    fn a100_80gb_thresholds_follow_compute_and_memory_shares() {
        let model = Catalog::builtin().lookup("a100-80gb").unwrap();
        let m = Mapping::new(model).unwrap();
        for (milli, want) in [
            (1, "1g.10gb"),
            (125, "1g.10gb"),
            (126, "1g.20gb"),
            (142, "1g.20gb"),
            (143, "2g.20gb"),
            (250, "2g.20gb"),
            (251, "3g.40gb"),
            (320, "3g.40gb"),
            (428, "3g.40gb"),
            (429, "4g.40gb"),
            (470, "4g.40gb"),
            (500, "4g.40gb"),
            (501, "7g.80gb"),
            (810, "7g.80gb"),
            (999, "7g.80gb"),
        ] {
            assert_eq!(name(&m, milli), want, "gpu_milli {milli}");
        }
    }

    #[test]
    fn never_picks_media_engine_variants() {
        for model in &Catalog::builtin().models {
            let Ok(m) = Mapping::new(model) else { continue };
            for milli in (1..=1000).step_by(7) {
                let p = m.profile_for_milli(milli);
                assert!(is_standard(model, p), "{} {milli}", model.key);
                let prof = model.profile(p);
                // It covers the share...
                assert!(
                    u64::from(prof.compute_slices) * 1000
                        >= u64::from(milli) * u64::from(model.compute_slices)
                );
                // ...and no smaller standard profile does.
                for &q in m.standard() {
                    let qp = model.profile(q);
                    let covers = u64::from(qp.compute_slices) * 1000
                        >= u64::from(milli) * u64::from(model.compute_slices)
                        && u64::from(qp.memory_slices) * 1000
                            >= u64::from(milli) * u64::from(model.memory_slices);
                    if covers {
                        assert!(
                            (qp.compute_slices, qp.memory_slices)
                                >= (prof.compute_slices, prof.memory_slices)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn whole_and_multi_gpu_pods_take_full_profiles_and_cpu_pods_none() {
        let model = Catalog::builtin().lookup("a100-80gb").unwrap();
        let m = Mapping::new(model).unwrap();
        assert_eq!(m.demand(0, 0), None);
        let d = m.demand(8, 1000).unwrap();
        assert_eq!(
            (d.profile, d.count, d.slices, d.full),
            (m.full(), 8, 7, true)
        );
        assert_eq!(d.total_slices(), 56);
        let d = m.demand(1, 1000).unwrap();
        assert_eq!((d.count, d.full), (1, true));
        let d = m.demand(1, 230).unwrap();
        assert_eq!(
            (
                model.profile(d.profile).name.as_str(),
                d.count,
                d.slices,
                d.full
            ),
            ("2g.20gb", 1, 2, false)
        );
    }

    #[test]
    fn a30_has_its_own_thresholds() {
        let model = Catalog::builtin().lookup("a30-24gb").unwrap();
        let m = Mapping::new(model).unwrap();
        assert_eq!(name(&m, 250), "1g.6gb");
        assert_eq!(name(&m, 251), "2g.12gb");
        assert_eq!(name(&m, 501), "4g.24gb");
    }
}
