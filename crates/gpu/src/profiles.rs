//! The GPU-instance profile table as a GPU reports it ([`ProfileInfo`]), and its comparison
//! with the catalog ([`diff_profiles`]). On a real node NVML is read, the catalog is not trusted
//! blindly, and neither is NVML (mig-parted documents wrong instance counts on A30): every
//! difference is reported as a [`ProfileDiff`] for a person to judge.

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_model::GpuModel;

/// One GPU-instance profile as the GPU reports it (NVML `nvmlGpuInstanceProfileInfo_v2_t` plus
/// `nvmlDeviceGetGpuInstancePossiblePlacements_v2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    /// The `NVML_GPU_INSTANCE_PROFILE_*` index it was read with.
    pub nvml_index: u32,
    /// The profile ID (`-lgip` ID).
    pub id: u32,
    /// Name without the `MIG ` prefix, e.g. `1g.10gb+me`.
    pub name: String,
    /// Compute slices (`sliceCount`).
    pub compute_slices: u8,
    /// Memory slices of a placement (the placements' `size`).
    pub memory_slices: u8,
    /// Memory in MiB (`memorySizeMB`).
    pub memory_mib: u64,
    /// Most instances of this profile (`instanceCount`).
    pub max: u8,
    /// Streaming multiprocessors (`multiprocessorCount`).
    pub sm: u32,
    /// Copy engines.
    pub ce: u32,
    /// Video decoders.
    pub dec: u32,
    /// Video encoders.
    pub enc: u32,
    /// JPEG decoders.
    pub jpeg: u32,
    /// Optical-flow accelerators.
    pub ofa: u32,
    /// Allowed placement starts, ascending.
    pub placements: Vec<u8>,
}

/// The table a catalog model predicts, in catalog order. Unknown numbers are 0; a missing
/// profile ID or NVML index falls back to the profile's position.
pub fn catalog_profiles(model: &GpuModel) -> Vec<ProfileInfo> {
    model
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| ProfileInfo {
            nvml_index: p.nvml_index.unwrap_or(i as u32),
            id: p.id.unwrap_or(i as u32),
            name: p.name.clone(),
            compute_slices: p.compute_slices,
            memory_slices: p.memory_slices,
            memory_mib: p.memory_mib.unwrap_or(0),
            max: p.max,
            sm: p.sm.unwrap_or(0),
            ce: p.engines.ce.unwrap_or(0),
            dec: p.engines.dec.unwrap_or(0),
            enc: p.engines.enc.unwrap_or(0),
            jpeg: p.engines.jpeg.unwrap_or(0),
            ofa: p.engines.ofa.unwrap_or(0),
            placements: p.placements.clone(),
        })
        .collect()
}

/// One difference between the catalog and what the GPU reports for a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileDiff {
    /// The profile name.
    pub profile: String,
    /// The field that differs (`profile`, `id`, `placements`, `memory_mib`, ...). `profile`
    /// means the whole profile exists on one side only.
    pub field: String,
    /// The catalog's value (`None`: the catalog does not have it).
    pub catalog: Option<String>,
    /// The GPU's value (`None`: the GPU does not offer it).
    pub gpu: Option<String>,
}

impl fmt::Display for ProfileDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        if self.field == "profile" {
            match (&self.catalog, &self.gpu) {
                (None, _) => write!(f, "{}: the GPU offers it but the catalog does not (newer driver?); add it with `tessera catalog import`", self.profile),
                (_, None) => write!(f, "{}: in the catalog but the GPU does not offer it (older driver?)", self.profile),
                _ => write!(f, "{}: differs", self.profile),
            }
        } else {
            write!(
                f,
                "{} {}: catalog {}, GPU {}",
                self.profile,
                self.field,
                show(&self.catalog),
                show(&self.gpu)
            )
        }
    }
}

/// Every difference between a catalog model and the table a GPU reported, profile by profile
/// in catalog order, then the GPU's extra profiles. Catalog numbers that are unknown (`None`)
/// are not compared. Memory is compared exactly: drivers move it by a few MiB, and that is
/// worth seeing.
pub fn diff_profiles(model: &GpuModel, observed: &[ProfileInfo]) -> Vec<ProfileDiff> {
    let mut out = Vec::new();
    let mut push = |profile: &str, field: &str, catalog: Option<String>, gpu: Option<String>| {
        out.push(ProfileDiff {
            profile: profile.to_string(),
            field: field.to_string(),
            catalog,
            gpu,
        })
    };
    for p in &model.profiles {
        let Some(o) = observed
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(&p.name))
        else {
            push(&p.name, "profile", Some(p.name.clone()), None);
            continue;
        };
        let mut cmp = |field: &str, c: Option<String>, g: String| {
            if let Some(c) = c {
                if c != g {
                    push(&p.name, field, Some(c), Some(g));
                }
            }
        };
        cmp("id", p.id.map(|v| v.to_string()), o.id.to_string());
        cmp(
            "nvml_index",
            p.nvml_index.map(|v| v.to_string()),
            o.nvml_index.to_string(),
        );
        cmp(
            "compute_slices",
            Some(p.compute_slices.to_string()),
            o.compute_slices.to_string(),
        );
        cmp(
            "memory_slices",
            Some(p.memory_slices.to_string()),
            o.memory_slices.to_string(),
        );
        cmp(
            "memory_mib",
            p.memory_mib.map(|v| v.to_string()),
            o.memory_mib.to_string(),
        );
        cmp("max", Some(p.max.to_string()), o.max.to_string());
        let e = &p.engines;
        for (field, c, g) in [
            ("sm", p.sm, o.sm),
            ("ce", e.ce, o.ce),
            ("dec", e.dec, o.dec),
            ("enc", e.enc, o.enc),
            ("jpeg", e.jpeg, o.jpeg),
            ("ofa", e.ofa, o.ofa),
        ] {
            cmp(field, c.map(|v| v.to_string()), g.to_string());
        }
        cmp(
            "placements",
            Some(fmt_list(&p.placements)),
            fmt_list(&o.placements),
        );
    }
    for o in observed {
        if model.profile_named(&o.name).is_none() {
            push(&o.name, "profile", None, Some(o.name.clone()));
        }
    }
    out
}

fn fmt_list(v: &[u8]) -> String {
    let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    #[test]
    fn a_faithful_table_has_no_differences() {
        for m in &Catalog::builtin().models {
            let t = catalog_profiles(m);
            // Unknown catalog numbers read as 0 on our side and are not compared.
            assert_eq!(diff_profiles(m, &t), vec![], "{}", m.key);
        }
    }

    #[test]
    fn drifted_memory_missing_and_extra_profiles_are_reported() {
        let m = Catalog::builtin().lookup("a100-40gb").unwrap();
        let mut t = catalog_profiles(m);
        t.retain(|p| p.name != "1g.10gb");
        let p = t.iter_mut().find(|p| p.name == "2g.10gb").unwrap();
        p.memory_mib = 9984;
        p.placements = vec![0, 2, 4, 6];
        t.push(ProfileInfo {
            name: "1g.5gb-me".into(),
            ..t[0].clone()
        });
        let d = diff_profiles(m, &t);
        let text: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "1g.10gb: in the catalog but the GPU does not offer it (older driver?)",
                "2g.10gb memory_mib: catalog 9856, GPU 9984",
                "2g.10gb placements: catalog [0,2,4], GPU [0,2,4,6]",
                "1g.5gb-me: the GPU offers it but the catalog does not (newer driver?); add it with `tessera catalog import`",
            ]
        );
    }
}
