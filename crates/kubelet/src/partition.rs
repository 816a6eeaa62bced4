//! Partitionable devices (KEP-4815, `resource.k8s.io/v1`; beta and on by default from
//! Kubernetes 1.36, alpha in 1.34/1.35): a MIG GPU published as one counter set and one device
//! per valid placement of every profile, each device consuming the counters its placement
//! uses, so kube-scheduler itself keeps allocations to layouts the GPU can hold. The slices take
//! the form of 1.35 and later (counter sets in their own slices of the pool); 1.34's alpha form
//! (counters in the same slice as the devices) is not produced.
//!
//! The counters encode the catalog's layout rules ([`GpuModel::validate`]) exactly:
//! - `memory-slice-<i>` = 1 per memory slice: a placement consumes the slices it covers, so two
//!   overlapping placements exhaust one of them;
//! - `compute-slices` = the GPU's compute slices; `instances` = its maximum instance count;
//! - `media` = the maximum instance count: an ordinary or `+me` instance consumes 1, a
//!   `+me.all` instance all of it (it excludes everything that is not `-me`), `-me` nothing;
//!   `me` = 1, consumed by a `+me` instance (at most one per GPU);
//! - `profile-<name>` = a profile's per-GPU maximum, only where that maximum is below the
//!   profile's number of placements (otherwise it can never bind);
//! - engine counters (`decoders`, `encoders`, `jpeg`, `ofa`, `copy-engines`) = the full-GPU
//!   profile's engines, consumed by each profile's engines.
//!
//! Device order is tessera's placement preference (kube-scheduler takes the first device that
//! matches): within a profile, the placement that keeps the largest profile placeable on the
//! rest of the GPU comes first (the planner's free score), ties broken towards the end of
//! the memory-slice grid, which keeps low slices contiguous. Placements that an existing
//! instance blocks are not published; an existing instance is published at its own placement.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_model::catalog::MediaKind;
use tessera_model::{GpuModel, LayoutState, Placed};

/// Whether an apiserver of this version (`/version`'s `major` and `minor`, e.g. `"1"` and
/// `"36+"`) serves partitionable devices by default: Kubernetes 1.36 and later (beta, on by
/// default). 1.35 has them only behind the alpha `DRAPartitionableDevices` gate and 1.34 in an
/// older form, so they get `false`, as does a version that cannot be read.
pub fn on_by_default(major: &str, minor: &str) -> bool {
    let num = |s: &str| -> Option<u32> {
        let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (num(major), num(minor)) {
        (Some(1), Some(m)) => m >= 36,
        (Some(maj), Some(_)) => maj > 1,
        _ => false,
    }
}

/// One GPU's counter set and its placement devices, in preference order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPartitions {
    /// The counter set's name: `gpu-<index>-counters`.
    pub counter_set: String,
    /// Counter name → what the GPU has.
    pub counters: BTreeMap<String, u64>,
    /// Every placement the GPU can take now, in preference order.
    pub placements: Vec<Placement>,
}

/// One placement of one profile, published as a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Profile, e.g. `1g.10gb`.
    pub profile: String,
    /// Start on the memory-slice grid.
    pub start: u8,
    /// Memory in MiB, when the catalog knows it.
    pub memory_mib: Option<u64>,
    /// Compute slices.
    pub compute_slices: u8,
    /// Counter name → how much of it the placement consumes (zero entries left out).
    pub consumes: BTreeMap<String, u64>,
}

fn dns(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn profile_counter(name: &str) -> String {
    format!("profile-{}", dns(&name.replace('+', "-plus-")))
}

fn engines(e: &tessera_model::Engines) -> [(&'static str, u64); 5] {
    let n = |v: Option<u32>| u64::from(v.unwrap_or(0));
    [
        ("decoders", n(e.dec)),
        ("encoders", n(e.enc)),
        ("jpeg", n(e.jpeg)),
        ("ofa", n(e.ofa)),
        ("copy-engines", n(e.ce)),
    ]
}

/// The counters of a GPU of `model` (see the module documentation).
pub fn counters(model: &GpuModel) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for i in 0..model.memory_slices {
        c.insert(format!("memory-slice-{i}"), 1);
    }
    c.insert("compute-slices".into(), u64::from(model.compute_slices));
    c.insert("instances".into(), u64::from(model.max_instances));
    c.insert("media".into(), u64::from(model.max_instances));
    c.insert("me".into(), 1);
    for (_, p) in model.profile_indices() {
        if usize::from(p.max) < p.placements.len() {
            c.insert(profile_counter(&p.name), u64::from(p.max));
        }
    }
    // The full GPU's engines: those of the profile spanning every memory slice.
    if let Some(full) = model
        .profiles
        .iter()
        .filter(|p| p.memory_slices == model.memory_slices)
        .max_by_key(|p| p.compute_slices)
    {
        for (name, n) in engines(&full.engines) {
            if n > 0 {
                c.insert(name.into(), n);
            }
        }
    }
    c
}

/// What placement `p` consumes of [`counters`]`(model)`.
pub fn consumption(model: &GpuModel, p: Placed) -> BTreeMap<String, u64> {
    let prof = model.profile(p.profile);
    let all = counters(model);
    let mut c = BTreeMap::new();
    for i in p.start..p.start.saturating_add(prof.memory_slices) {
        c.insert(format!("memory-slice-{i}"), 1);
    }
    c.insert("compute-slices".into(), u64::from(prof.compute_slices));
    c.insert("instances".into(), 1);
    match prof.media_kind() {
        MediaKind::Standard => {
            c.insert("media".into(), 1);
        }
        MediaKind::Me => {
            c.insert("media".into(), 1);
            c.insert("me".into(), 1);
        }
        MediaKind::MeAll => {
            c.insert("media".into(), u64::from(model.max_instances));
        }
        MediaKind::NoMe => {}
    }
    let pc = profile_counter(&prof.name);
    if all.contains_key(&pc) {
        c.insert(pc, 1);
    }
    for (name, n) in engines(&prof.engines) {
        if n > 0 && all.contains_key(name) {
            c.insert(name.into(), n);
        }
    }
    c
}

/// The planner's measure of the room left: the largest profile (16 × memory slices + compute
/// slices) that can still be placed on `state`.
fn room(model: &GpuModel, state: &LayoutState) -> u32 {
    model
        .candidates()
        .into_iter()
        .filter(|&c| state.fits(model, c))
        .map(|c| {
            let p = model.profile(c.profile);
            16 * u32::from(p.memory_slices) + u32::from(p.compute_slices)
        })
        .max()
        .unwrap_or(0)
}

/// GPU `index` of `model` as partitionable devices, given the instances on it now
/// (`(profile, start)`; unknown profiles are ignored). Pure and deterministic.
pub fn partitions(index: u32, model: &GpuModel, existing: &[(String, u8)]) -> GpuPartitions {
    let existing: Vec<Placed> = existing
        .iter()
        .filter_map(|(name, start)| model.profile_named(name).map(|p| Placed::new(p, *start)))
        .collect();
    let mut placements = Vec::new();
    for (idx, prof) in model.profile_indices() {
        let mut here: Vec<(u32, u8, Placed)> = Vec::new();
        for &start in &prof.placements {
            let p = Placed::new(idx, start);
            let others: Vec<Placed> = existing.iter().copied().filter(|&e| e != p).collect();
            let state = LayoutState::of(model, &others);
            if !existing.contains(&p) && !state.fits(model, p) {
                continue;
            }
            let mut after = state;
            after.add(model, p);
            here.push((room(model, &after), start, p));
        }
        here.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        for (_, start, p) in here {
            placements.push(Placement {
                profile: prof.name.clone(),
                start,
                memory_mib: prof.memory_mib,
                compute_slices: prof.compute_slices,
                consumes: consumption(model, p),
            });
        }
    }
    GpuPartitions {
        counter_set: format!("gpu-{index}-counters"),
        counters: counters(model),
        placements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitionable_devices_are_on_by_default_from_1_36() {
        assert!(!on_by_default("1", "34"));
        assert!(!on_by_default("1", "35+"));
        assert!(on_by_default("1", "36"));
        assert!(on_by_default("1", "37+"));
        assert!(on_by_default("2", "0"));
        assert!(!on_by_default("", ""));
        assert!(!on_by_default("1", "x"));
    }
}
