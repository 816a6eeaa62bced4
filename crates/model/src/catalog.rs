//! The GPU catalog: every MIG-capable GPU model tessera knows, with its GPU-instance profiles,
//! their placements on the memory-slice grid, and compute-instance profiles where known.
//!
//! The built-in catalog is `data/catalog.yaml`, embedded in the binary. Users add or override
//! models with their own file in the same format ([`Catalog::merge`]). Every number keeps the
//! sources it was read from and the list of fields that were inferred rather than read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The catalog file format version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest memory-slice grid a model may declare (occupancy is kept in a `u32` bit mask).
pub const MAX_GRID: u8 = 32;

const BUILTIN_YAML: &str = include_str!("../data/catalog.yaml");

/// Errors from loading or querying a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The text is not valid YAML/JSON of the catalog schema.
    #[error("catalog does not parse: {0}")]
    Parse(String),
    /// The schema version is not one this build understands.
    #[error("catalog schema_version {found} is not supported (this build reads version {SCHEMA_VERSION})")]
    Version {
        /// The version found in the file.
        found: u32,
    },
    /// A model breaks a structural rule (names the model, the profile and the fix).
    #[error("catalog model `{model}`: {problem}")]
    Invalid {
        /// Model key.
        model: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// No model matches the query.
    #[error("unknown GPU `{query}`{}; known models: {}", suggestion.as_deref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default(), known.join(", "))]
    UnknownGpu {
        /// What the user asked for.
        query: String,
        /// The closest key or alias, when one is close enough to be a typo.
        suggestion: Option<String>,
        /// Keys of every known model.
        known: Vec<String>,
    },
    /// The query names a family with several models (`a100`: 40 GB and 80 GB boards).
    #[error("`{query}` could be any of {}; give one of these keys", candidates.join(", "))]
    AmbiguousGpu {
        /// What the user asked for.
        query: String,
        /// Keys of the models it could mean.
        candidates: Vec<String>,
    },
}

/// A set of GPU models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// File format version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Legend of the source keys used in `sources` fields: key -> citation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
    /// The models, in file order.
    pub models: Vec<GpuModel>,
}

/// One GPU model (a product family sharing one MIG profile table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuModel {
    /// Stable lookup key, e.g. `h100-80gb`.
    pub key: String,
    /// Other keys accepted on the command line, e.g. `h100-nvl`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Product names as NVML reports them (`nvmlDeviceGetName`).
    #[serde(default)]
    pub names: Vec<String>,
    /// PCI device IDs in NVML's `pciDeviceId` form, e.g. `0x233010DE`.
    #[serde(default)]
    pub pci_device_ids: Vec<String>,
    /// Architecture name (ampere, hopper, blackwell).
    #[serde(default)]
    pub arch: String,
    /// CUDA compute capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// Compute slices of the whole GPU (7 on A100/H100, 4 on A30).
    pub compute_slices: u8,
    /// Size of the memory-slice (placement) grid (8 on A100/H100, 4 on A30, 12 on RTX PRO 6000).
    pub memory_slices: u8,
    /// Most GPU instances the GPU can hold at once.
    pub max_instances: u8,
    /// Total device memory in MiB, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory_mib: Option<u64>,
    /// Oldest driver with MIG support for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_driver: Option<String>,
    /// How much of this entry was read from real captures (high, medium, low).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
    /// Free-form facts worth knowing (driver drift, quirks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// GPU-instance profiles, in `nvidia-smi mig -lgip` order.
    pub profiles: Vec<GiProfile>,
    /// Compute-instance profiles per parent GPU-instance profile name, where known.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compute_profiles: BTreeMap<String, Vec<CiProfile>>,
}

/// Engine counts of a GPU-instance profile (`-lgip` DEC/ENC/CE/JPEG/OFA columns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engines {
    /// Video decoders.
    pub dec: Option<u32>,
    /// Video encoders.
    pub enc: Option<u32>,
    /// Copy engines.
    pub ce: Option<u32>,
    /// JPEG decoders.
    pub jpeg: Option<u32>,
    /// Optical-flow accelerators.
    pub ofa: Option<u32>,
}

/// A GPU-instance profile such as `3g.40gb`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GiProfile {
    /// Profile name as nvidia-smi prints it without the `MIG ` prefix, e.g. `1g.10gb+me`.
    pub name: String,
    /// The `-lgip` profile ID (`nvmlGpuInstanceProfileInfo_t.id`); not portable across families.
    pub id: Option<u32>,
    /// The `NVML_GPU_INSTANCE_PROFILE_*` index passed to `nvmlDeviceGetGpuInstanceProfileInfo`.
    #[serde(default)]
    pub nvml_index: Option<u32>,
    /// Compute slices (the `N` of `Ng`).
    pub compute_slices: u8,
    /// Memory slices the instance occupies on the placement grid (the `-lgipp` size).
    pub memory_slices: u8,
    /// Device memory in MiB (NVML `memorySizeMB`), when known.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Memory in GiB as `-lgip` prints it (driver dependent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<f64>,
    /// Other GiB values seen with other drivers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_gib_other: Vec<f64>,
    /// Whether `memory_mib` was seen exactly in a device table on the same driver.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_mib_verified: bool,
    /// Streaming multiprocessors.
    #[serde(default)]
    pub sm: Option<u32>,
    /// Engine counts.
    #[serde(default)]
    pub engines: Engines,
    /// Most instances of this profile on one GPU (`-lgip` "Instances Total").
    pub max: u8,
    /// Allowed start indices on the memory-slice grid (`-lgipp`).
    pub placements: Vec<u8>,
    /// Source keys (see [`Catalog::sources`]) the numbers were read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Fields that were inferred rather than read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inferred: Vec<String>,
}

/// A compute-instance profile inside a GPU instance (`nvidia-smi mig -lcip`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CiProfile {
    /// Name, e.g. `1c.3g.40gb`.
    pub name: String,
    /// `-lcip` profile ID (= `NVML_COMPUTE_INSTANCE_PROFILE_*`).
    #[serde(default)]
    pub id: Option<u32>,
    /// SMs of the compute instance.
    #[serde(default)]
    pub sm: Option<u32>,
    /// Most instances of this CI profile in one GI.
    #[serde(default)]
    pub max: Option<u32>,
    /// Whether this is the default CI (`*` in `-lcip`, what `-cgi ... -C` creates).
    #[serde(default)]
    pub default: bool,
    /// Source keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Inferred fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inferred: Vec<String>,
}

/// Index of a profile within its model's [`GpuModel::profiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProfileIdx(pub u8);

/// How a profile uses the GPU's media engines, which decides what it can share a GPU with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// An ordinary profile.
    Standard,
    /// `+me`: takes the media engines; at most one such instance per GPU.
    Me,
    /// `+me.all`: takes every media engine; only `-me` instances may share the GPU.
    MeAll,
    /// `-me`: no media engines; may share a GPU with a `+me.all` instance.
    NoMe,
}

impl GiProfile {
    /// The media-engine class of this profile, from its name's suffixes.
    pub fn media_kind(&self) -> MediaKind {
        media_kind_of(&self.name)
    }
}

/// The media-engine class of a profile name (`+me`, `+me.all`, `-me` or none).
pub fn media_kind_of(name: &str) -> MediaKind {
    // Suffixes follow the `Ng.Mgb` base: `+me`, `+me.all`, `-me`, `+gfx`. Layout checks call
    // this in their inner loops, so the common name without suffixes is found by a byte scan.
    let Some(base_end) = name.bytes().position(|b| b == b'+' || b == b'-') else {
        return MediaKind::Standard;
    };
    let mut kind = MediaKind::Standard;
    let rest = &name[base_end..];
    let mut i = 0;
    let bytes = rest.as_bytes();
    while i < bytes.len() {
        let sign = bytes[i];
        let end = rest[i + 1..]
            .find(['+', '-'])
            .map_or(rest.len(), |e| e + i + 1);
        let token = &rest[i + 1..end];
        match (sign, token) {
            (b'+', "me") => kind = MediaKind::Me,
            (b'+', "me.all") => kind = MediaKind::MeAll,
            (b'-', "me") => kind = MediaKind::NoMe,
            _ => {}
        }
        i = end;
    }
    kind
}

impl Catalog {
    /// The catalog built into this binary.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Catalog::from_yaml(BUILTIN_YAML).expect("the built-in catalog is checked by tests")
        })
    }

    /// The text of the built-in catalog file.
    pub fn builtin_text() -> &'static str {
        BUILTIN_YAML
    }

    /// Parse and check a catalog from YAML (JSON is YAML too).
    pub fn from_yaml(text: &str) -> Result<Catalog, CatalogError> {
        let catalog: Catalog =
            serde_yaml_ng::from_str(text).map_err(|e| CatalogError::Parse(e.to_string()))?;
        if catalog.schema_version != SCHEMA_VERSION {
            return Err(CatalogError::Version {
                found: catalog.schema_version,
            });
        }
        let mut seen = BTreeMap::new();
        for model in &catalog.models {
            model.check()?;
            if seen.insert(model.key.clone(), ()).is_some() {
                return Err(CatalogError::Invalid {
                    model: model.key.clone(),
                    problem: "the key appears twice in one file; keep one entry".into(),
                });
            }
        }
        Ok(catalog)
    }

    /// Serialize in the catalog file format.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("catalog types always serialize")
    }

    /// Add the models of `other`; a model whose key already exists replaces the old one.
    pub fn merge(&mut self, other: Catalog) {
        for (k, v) in other.sources {
            self.sources.insert(k, v);
        }
        for model in other.models {
            match self.models.iter_mut().find(|m| m.key == model.key) {
                Some(slot) => *slot = model,
                None => self.models.push(model),
            }
        }
    }

    /// Find a model by key, alias, NVML product name (case-insensitive), PCI device ID
    /// (`0x233010DE`, `0x2330` or `2330`), or family name when only one model's key is the
    /// family plus a memory size (`h100` -> `h100-80gb`; `a100` fits two and finds nothing).
    pub fn get(&self, query: &str) -> Option<&GpuModel> {
        let q = query.trim();
        let ql = q.to_ascii_lowercase();
        self.models
            .iter()
            .find(|m| m.key == ql || m.aliases.contains(&ql))
            .or_else(|| {
                self.models
                    .iter()
                    .find(|m| m.names.iter().any(|n| n.eq_ignore_ascii_case(q)))
            })
            .or_else(|| {
                let want = normalize_pci_id(q)?;
                self.models.iter().find(|m| {
                    m.pci_device_ids
                        .iter()
                        .any(|id| normalize_pci_id(id) == Some(want))
                })
            })
            .or_else(|| match self.family(q).as_slice() {
                [only] => Some(*only),
                _ => None,
            })
    }

    /// Like [`Catalog::get`], but an unknown query is an error naming the closest key (a
    /// typo), or the candidates when a family name fits several models.
    pub fn lookup(&self, query: &str) -> Result<&GpuModel, CatalogError> {
        if let Some(m) = self.get(query) {
            return Ok(m);
        }
        let family = self.family(query);
        if family.len() > 1 {
            return Err(CatalogError::AmbiguousGpu {
                query: query.to_string(),
                candidates: family.iter().map(|m| m.key.clone()).collect(),
            });
        }
        let names = self
            .models
            .iter()
            .flat_map(|m| std::iter::once(&m.key).chain(&m.aliases))
            .map(String::as_str);
        Err(CatalogError::UnknownGpu {
            query: query.to_string(),
            suggestion: crate::suggest::did_you_mean(query, names).map(str::to_string),
            known: self.models.iter().map(|m| m.key.clone()).collect(),
        })
    }

    /// Models whose key is the family name plus a memory size (`h100` -> `h100-80gb`; `a100`
    /// -> `a100-40gb`, `a100-80gb`); variants such as `h100-pcie-80gb` are not part of it.
    /// A daemon can resolve an ambiguous family to the one member its machine has.
    pub fn family(&self, query: &str) -> Vec<&GpuModel> {
        let q = query.trim().to_ascii_lowercase();
        if q.is_empty() {
            return Vec::new();
        }
        self.models
            .iter()
            .filter(|m| {
                m.key.strip_prefix(&q).is_some_and(|rest| {
                    rest.strip_prefix('-')
                        .and_then(|r| r.strip_suffix("gb"))
                        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                })
            })
            .collect()
    }

    /// The closest profile name of any model to a mistyped `name`, for "did you mean".
    pub fn suggest_profile(&self, name: &str) -> Option<&str> {
        let names = self
            .models
            .iter()
            .flat_map(|m| m.profiles.iter().map(|p| p.name.as_str()));
        crate::suggest::did_you_mean(name.trim().trim_start_matches("MIG "), names)
    }

    /// Whether any model has a profile of this name.
    pub fn has_profile(&self, name: &str) -> bool {
        self.models.iter().any(|m| m.profile_named(name).is_some())
    }
}

/// Reduce a PCI device ID to its 16-bit device part: `0x233010DE`, `0x2330`, `2330` -> 0x2330.
fn normalize_pci_id(s: &str) -> Option<u16> {
    let hex = s.trim().trim_start_matches("0x").trim_start_matches("0X");
    if hex.is_empty() || hex.len() > 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let v = u32::from_str_radix(hex, 16).ok()?;
    // NVML's pciDeviceId is (device << 16) | vendor; vendor 0x10DE is NVIDIA.
    if hex.len() > 4 {
        Some((v >> 16) as u16)
    } else {
        Some(v as u16)
    }
}

impl GpuModel {
    /// Check the structural rules every model must satisfy.
    pub fn check(&self) -> Result<(), CatalogError> {
        let bad = |problem: String| CatalogError::Invalid {
            model: self.key.clone(),
            problem,
        };
        if self.key.is_empty() {
            return Err(bad(
                "the key is empty; give the model a key such as `h100-80gb`".into(),
            ));
        }
        if self.memory_slices == 0 || self.memory_slices > MAX_GRID {
            return Err(bad(format!(
                "memory_slices is {}; it must be between 1 and {MAX_GRID}",
                self.memory_slices
            )));
        }
        if self.compute_slices == 0 {
            return Err(bad("compute_slices is 0; it must be at least 1".into()));
        }
        if self.profiles.is_empty() {
            return Err(bad(
                "it has no profiles; list at least one GPU-instance profile".into(),
            ));
        }
        if self.profiles.len() > crate::layout::MAX_PROFILES {
            return Err(bad(format!(
                "it has {} profiles; at most {} are supported",
                self.profiles.len(),
                crate::layout::MAX_PROFILES
            )));
        }
        for (i, p) in self.profiles.iter().enumerate() {
            if self.profiles[..i].iter().any(|q| q.name == p.name) {
                return Err(bad(format!("profile `{}` is listed twice", p.name)));
            }
            if p.compute_slices == 0 || p.compute_slices > self.compute_slices {
                return Err(bad(format!(
                    "profile `{}` has {} compute slices; it must be between 1 and the GPU's {}",
                    p.name, p.compute_slices, self.compute_slices
                )));
            }
            if p.memory_slices == 0 || p.memory_slices > self.memory_slices {
                return Err(bad(format!(
                    "profile `{}` takes {} memory slices; it must be between 1 and the GPU's {}",
                    p.name, p.memory_slices, self.memory_slices
                )));
            }
            if p.max == 0 {
                return Err(bad(format!(
                    "profile `{}` has max 0; it must be at least 1",
                    p.name
                )));
            }
            if p.placements.is_empty() {
                return Err(bad(format!(
                    "profile `{}` has no placements; list its start indices from `nvidia-smi mig -lgipp`",
                    p.name
                )));
            }
            for &s in &p.placements {
                if u16::from(s) + u16::from(p.memory_slices) > u16::from(self.memory_slices) {
                    return Err(bad(format!(
                        "profile `{}` placement {s} of size {} runs past the {}-slice grid",
                        p.name, p.memory_slices, self.memory_slices
                    )));
                }
            }
        }
        Ok(())
    }

    /// The profile at `idx`.
    pub fn profile(&self, idx: ProfileIdx) -> &GiProfile {
        &self.profiles[usize::from(idx.0)]
    }

    /// Every profile with its index.
    pub fn profile_indices(&self) -> impl Iterator<Item = (ProfileIdx, &GiProfile)> {
        self.profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (ProfileIdx(i as u8), p))
    }

    /// Find a profile by name; a `MIG ` prefix and case are ignored.
    pub fn profile_named(&self, name: &str) -> Option<ProfileIdx> {
        let n = name.trim();
        let n = n.strip_prefix("MIG ").unwrap_or(n);
        self.profiles
            .iter()
            .position(|p| p.name.eq_ignore_ascii_case(n))
            .map(|i| ProfileIdx(i as u8))
    }

    /// Find a profile by its `-lgip` profile ID.
    pub fn profile_by_id(&self, id: u32) -> Option<ProfileIdx> {
        self.profiles
            .iter()
            .position(|p| p.id == Some(id))
            .map(|i| ProfileIdx(i as u8))
    }

    /// Names of every profile, in catalog order.
    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.iter().map(|p| p.name.clone()).collect()
    }

    /// Device memory of the whole GPU in MiB: the catalog value, or the full-GPU profile's.
    pub fn memory_mib(&self) -> Option<u64> {
        self.total_memory_mib.or_else(|| {
            self.profiles
                .iter()
                .filter(|p| p.memory_slices == self.memory_slices)
                .filter_map(|p| p.memory_mib)
                .max()
        })
    }
}

impl fmt::Display for ProfileIdx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_loads_and_every_model_checks() {
        let c = Catalog::builtin();
        assert!(c.models.len() >= 12, "{} models", c.models.len());
        for m in &c.models {
            m.check().unwrap();
        }
    }

    #[test]
    fn family_names_resolve_only_when_one_model_fits() {
        let c = Catalog::builtin();
        assert_eq!(c.lookup("h100").unwrap().key, "h100-80gb");
        assert_eq!(c.lookup("H100").unwrap().key, "h100-80gb");
        match c.lookup("a100") {
            Err(CatalogError::AmbiguousGpu { candidates, .. }) => {
                assert_eq!(candidates, ["a100-40gb", "a100-80gb"]);
            }
            other => panic!("{other:?}"),
        }
        let msg = c.lookup("a100").unwrap_err().to_string();
        assert!(msg.contains("a100-40gb, a100-80gb"), "{msg}");
    }

    #[test]
    fn a_typo_names_the_closest_model_and_profile() {
        let c = Catalog::builtin();
        let msg = c.lookup("h100-80g").unwrap_err().to_string();
        assert!(msg.contains("did you mean `h100-80gb`?"), "{msg}");
        let msg = c.lookup("quantum-9000").unwrap_err().to_string();
        assert!(!msg.contains("did you mean"), "{msg}");
        assert_eq!(c.suggest_profile("3g.40g"), Some("3g.40gb"));
        assert_eq!(c.suggest_profile("MIG 7g.80"), Some("7g.80gb"));
        assert!(c.has_profile("MIG 1g.10gb") && !c.has_profile("1g.10g"));
    }

    #[test]
    fn lookup_by_key_alias_name_and_pci_id() {
        let c = Catalog::builtin();
        assert_eq!(c.lookup("h100-80gb").unwrap().key, "h100-80gb");
        assert_eq!(c.lookup("H100-NVL").unwrap().key, "h100-nvl-94gb");
        assert_eq!(c.lookup("NVIDIA H100 80GB HBM3").unwrap().key, "h100-80gb");
        assert_eq!(c.lookup("nvidia a100-sxm4-40gb").unwrap().key, "a100-40gb");
        assert_eq!(c.lookup("0x233010DE").unwrap().key, "h100-80gb");
        assert_eq!(c.lookup("0x2330").unwrap().key, "h100-80gb");
        assert_eq!(c.lookup("20B7").unwrap().key, "a30-24gb");
        let err = c.lookup("tpu-v5").unwrap_err().to_string();
        assert!(err.contains("tpu-v5") && err.contains("a100-40gb"), "{err}");
    }

    #[test]
    fn every_model_has_a_full_gpu_profile_and_unique_ids() {
        for m in &Catalog::builtin().models {
            assert!(
                m.profiles
                    .iter()
                    .any(|p| p.memory_slices == m.memory_slices),
                "{} has no full-GPU profile",
                m.key
            );
            let mut ids: Vec<_> = m.profiles.iter().filter_map(|p| p.id).collect();
            let n = ids.len();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "{} repeats a profile ID", m.key);
        }
    }

    #[test]
    fn media_kinds_follow_the_name_suffix() {
        assert_eq!(media_kind_of("1g.10gb"), MediaKind::Standard);
        assert_eq!(media_kind_of("1g.10gb+me"), MediaKind::Me);
        assert_eq!(media_kind_of("1g.24gb+me.all"), MediaKind::MeAll);
        assert_eq!(media_kind_of("2g.48gb-me"), MediaKind::NoMe);
        assert_eq!(media_kind_of("1g.24gb+gfx"), MediaKind::Standard);
    }

    #[test]
    fn merge_overrides_by_key_and_adds_new_models() {
        let mut c = Catalog::builtin().clone();
        let n = c.models.len();
        let mut m = c.lookup("a30-24gb").unwrap().clone();
        m.notes = vec!["overridden".into()];
        let mut extra = m.clone();
        extra.key = "my-gpu".into();
        extra.aliases.clear();
        c.merge(Catalog {
            schema_version: SCHEMA_VERSION,
            sources: BTreeMap::new(),
            models: vec![m, extra],
        });
        assert_eq!(c.models.len(), n + 1);
        assert_eq!(
            c.lookup("a30").unwrap().notes,
            vec!["overridden".to_string()]
        );
        assert!(c.get("my-gpu").is_some());
    }

    #[test]
    fn structural_errors_name_the_model_and_profile() {
        let text = Catalog::builtin_text().replacen(
            "\"placements\": [0, 1, 2, 3]",
            "\"placements\": [0, 1, 2, 9]",
            1,
        );
        let err = Catalog::from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.contains("a30-24gb") && err.contains("1g.6gb") && err.contains("placement 9"),
            "{err}"
        );
        let err = Catalog::from_yaml("schema_version: 7\nmodels: []")
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema_version 7"), "{err}");
        assert!(Catalog::from_yaml("models: [").is_err());
    }

    #[test]
    fn yaml_round_trip_is_lossless() {
        let c = Catalog::builtin();
        let back = Catalog::from_yaml(&c.to_yaml()).unwrap();
        assert_eq!(&back, c);
    }
}
