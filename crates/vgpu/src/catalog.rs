//! The vGPU type catalog: per board, the NVIDIA vGPU types with their frame buffer, how many
//! fit one GPU, and whether they are time-sliced or backed by a MIG GPU instance.
//!
//! The built-in catalog is `data/vgpu-types.yaml`, embedded in the binary; every board names
//! the NVIDIA tables it was copied from. [`VgpuCatalog::check`] holds the rules the data must
//! obey, including that MIG-backed types name profiles that exist in `tessera-model`'s MIG
//! catalog.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const BUILTIN_YAML: &str = include_str!("../data/vgpu-types.yaml");

/// The catalog file format version this build reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors from loading or querying the vGPU catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The text is not the catalog's YAML schema.
    #[error("vGPU catalog does not parse: {0}")]
    Parse(#[source] serde_yaml_ng::Error),
    /// A schema version this build does not read.
    #[error(
        "vGPU catalog schema_version {found} is not supported (this build reads {SCHEMA_VERSION})"
    )]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// No board matches the query.
    #[error("unknown vGPU board `{query}`{}; known boards: {}", suggestion.as_deref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default(), known.join(", "))]
    UnknownBoard {
        /// What was asked for.
        query: String,
        /// The closest key, when it looks like a typo.
        suggestion: Option<String>,
        /// Every board key.
        known: Vec<String>,
    },
    /// A type name the board does not offer.
    #[error("board `{board}` has no vGPU type `{name}`{}; its types: {}", suggestion.as_deref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default(), known.join(", "))]
    UnknownType {
        /// Board key.
        board: String,
        /// The name asked for.
        name: String,
        /// The closest name.
        suggestion: Option<String>,
        /// The board's type names.
        known: Vec<String>,
    },
}

/// The vGPU series (the letter after the frame buffer size in a type name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Series {
    /// Virtual workstations (graphics).
    Q,
    /// Virtual PCs.
    B,
    /// Virtual applications.
    A,
    /// Compute (NVIDIA AI Enterprise).
    C,
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Series::Q => "Q",
            Series::B => "B",
            Series::A => "A",
            Series::C => "C",
        };
        f.write_str(s)
    }
}

/// What a vGPU type runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backing {
    /// Shares the whole GPU with the other vGPUs in time slices.
    TimeSliced,
    /// Owns one MIG GPU instance of this profile.
    MigBacked {
        /// The GPU-instance profile, e.g. `3g.40gb`.
        profile: String,
    },
}

/// One vGPU type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgpuType {
    /// Name without the `NVIDIA ` prefix sysfs shows, e.g. `A100-3-20C`.
    pub name: String,
    /// Series.
    pub series: Series,
    /// Frame buffer in MiB.
    pub fb_mib: u64,
    /// Most vGPUs of this type on one GPU (equal-size mode).
    pub max: u32,
    /// Most vGPUs of this type on one GPU in mixed-size mode (time-sliced types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mixed: Option<u32>,
    /// The GPU-instance profile of a MIG-backed type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<String>,
}

impl VgpuType {
    /// Time-sliced or MIG-backed.
    pub fn backing(&self) -> Backing {
        match &self.mig {
            Some(p) => Backing::MigBacked { profile: p.clone() },
            None => Backing::TimeSliced,
        }
    }

    /// Whether a MIG GPU instance backs it.
    pub fn is_mig_backed(&self) -> bool {
        self.mig.is_some()
    }
}

/// One GPU board and its vGPU types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    /// Lookup key (the `tessera-model` key where the board has MIG).
    pub key: String,
    /// Other accepted keys.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Product name as NVIDIA's tables print it.
    pub name: String,
    /// Architecture (ampere, ada, hopper).
    pub arch: String,
    /// PCI device IDs (vendor 10de), as the `device` file in sysfs shows them.
    pub pci_device_ids: Vec<String>,
    /// The `tessera-model` MIG catalog key, for boards with MIG.
    #[serde(default)]
    pub mig_model: Option<String>,
    /// Frame buffer of the whole-GPU type, MiB.
    pub framebuffer_mib: u64,
    /// Facts worth knowing.
    #[serde(default)]
    pub notes: Vec<String>,
    /// Where the numbers come from (keys of [`VgpuCatalog::sources`] plus table numbers).
    pub sources: Vec<String>,
    /// The types, MIG-backed first, each group largest first.
    pub types: Vec<VgpuType>,
}

impl Board {
    /// The type called `name` (with or without the `NVIDIA ` prefix, any case).
    pub fn vgpu_type(&self, name: &str) -> Result<&VgpuType, CatalogError> {
        let want = strip_vendor(name);
        self.types
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(want))
            .ok_or_else(|| {
                let known: Vec<String> = self.types.iter().map(|t| t.name.clone()).collect();
                CatalogError::UnknownType {
                    board: self.key.clone(),
                    name: name.to_string(),
                    suggestion: closest(want, &known),
                    known,
                }
            })
    }
}

/// A type left out of the catalog and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    /// Board key (`*` for all).
    pub board: String,
    /// The type(s).
    #[serde(rename = "type")]
    pub vgpu_type: String,
    /// Why.
    pub why: String,
}

/// The boards tessera knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgpuCatalog {
    /// Format version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Source keys and their citations.
    pub sources: BTreeMap<String, String>,
    /// The boards.
    pub boards: Vec<Board>,
    /// Types left out and why.
    #[serde(default)]
    pub excluded: Vec<Excluded>,
}

/// `NVIDIA A100-3-20C` → `A100-3-20C`.
pub fn strip_vendor(name: &str) -> &str {
    let t = name.trim();
    t.strip_prefix("NVIDIA ")
        .or_else(|| t.strip_prefix("GRID "))
        .unwrap_or(t)
}

fn closest(query: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| {
            (
                strsim::levenshtein(&query.to_lowercase(), &k.to_lowercase()),
                k,
            )
        })
        .filter(|(d, _)| *d <= (query.len() / 3).clamp(1, 3))
        .min()
        .map(|(_, k)| k.clone())
}

impl VgpuCatalog {
    /// The built-in catalog.
    pub fn builtin() -> &'static VgpuCatalog {
        static CAT: OnceLock<VgpuCatalog> = OnceLock::new();
        CAT.get_or_init(|| {
            VgpuCatalog::from_yaml(BUILTIN_YAML).expect("built-in vGPU catalog parses")
        })
    }

    /// Parse a catalog.
    pub fn from_yaml(text: &str) -> Result<VgpuCatalog, CatalogError> {
        let c: VgpuCatalog = serde_yaml_ng::from_str(text).map_err(CatalogError::Parse)?;
        if c.schema_version != SCHEMA_VERSION {
            return Err(CatalogError::Version {
                found: c.schema_version,
            });
        }
        Ok(c)
    }

    /// The board with this key or alias (any case).
    pub fn board(&self, query: &str) -> Result<&Board, CatalogError> {
        let q = query.trim().to_lowercase();
        self.boards
            .iter()
            .find(|b| b.key == q || b.aliases.contains(&q))
            .ok_or_else(|| {
                let known: Vec<String> = self.boards.iter().map(|b| b.key.clone()).collect();
                let mut names = known.clone();
                names.extend(self.boards.iter().flat_map(|b| b.aliases.clone()));
                CatalogError::UnknownBoard {
                    query: query.to_string(),
                    suggestion: closest(&q, &names),
                    known,
                }
            })
    }

    /// The board whose PCI device ID is `id` (`0x20b7` or `20B7`, any case).
    pub fn board_by_pci_id(&self, id: &str) -> Option<&Board> {
        let norm = |s: &str| s.trim().trim_start_matches("0x").to_lowercase();
        let want = norm(id);
        self.boards
            .iter()
            .find(|b| b.pci_device_ids.iter().any(|d| norm(d) == want))
    }

    /// Every rule the data must obey, checked against the MIG catalog `mig`; one line per
    /// problem, naming the board, the type and the rule.
    pub fn check(&self, mig: &tessera_model::Catalog) -> Vec<String> {
        let mut problems = Vec::new();
        for b in &self.boards {
            let model = match &b.mig_model {
                Some(k) => match mig.lookup(k) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        problems.push(format!("{}: mig_model `{k}`: {e}", b.key));
                        None
                    }
                },
                None => None,
            };
            if b.sources.is_empty() {
                problems.push(format!("{}: no sources", b.key));
            }
            for s in &b.sources {
                let key = s.split_whitespace().next().unwrap_or_default();
                if !self.sources.contains_key(key) {
                    problems.push(format!(
                        "{}: source `{key}` is not in the sources legend",
                        b.key
                    ));
                }
            }
            if !b
                .types
                .iter()
                .any(|t| !t.is_mig_backed() && t.max == 1 && t.fb_mib == b.framebuffer_mib)
            {
                problems.push(format!(
                    "{}: no time-sliced type holds the whole frame buffer ({} MiB)",
                    b.key, b.framebuffer_mib
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            for t in &b.types {
                if !seen.insert(t.name.to_lowercase()) {
                    problems.push(format!("{}: type {} is listed twice", b.key, t.name));
                }
                if t.max == 0 {
                    problems.push(format!("{} {}: max is 0", b.key, t.name));
                }
                let suffix = format!("{}", t.series);
                match &t.mig {
                    None => {
                        if t.max as u64 * t.fb_mib > b.framebuffer_mib {
                            problems.push(format!(
                                "{} {}: {} x {} MiB = {} MiB exceeds the board's {} MiB",
                                b.key,
                                t.name,
                                t.max,
                                t.fb_mib,
                                t.max as u64 * t.fb_mib,
                                b.framebuffer_mib
                            ));
                        }
                        match t.max_mixed {
                            Some(m) if m > t.max => problems.push(format!(
                                "{} {}: max_mixed {m} is above max {}",
                                b.key, t.name, t.max
                            )),
                            _ => {}
                        }
                        let want = format!("-{}{suffix}", t.fb_mib / 1024);
                        if !t.name.ends_with(&want) {
                            problems.push(format!(
                                "{} {}: a {} MiB {suffix}-series type should end in `{want}`",
                                b.key, t.name, t.fb_mib
                            ));
                        }
                    }
                    Some(profile) => {
                        let Some(model) = model else {
                            problems.push(format!(
                                "{} {}: MIG-backed but the board has no mig_model",
                                b.key, t.name
                            ));
                            continue;
                        };
                        let Some(idx) = model.profile_named(profile) else {
                            problems.push(format!(
                                "{} {}: profile `{profile}` is not in the MIG catalog's {} (profiles: {})",
                                b.key,
                                t.name,
                                model.key,
                                model.profile_names().join(", ")
                            ));
                            continue;
                        };
                        let p = model.profile(idx);
                        let me = profile.ends_with("+me");
                        let Some((g, gb)) = profile
                            .trim_end_matches("+me")
                            .split_once("g.")
                            .and_then(|(g, rest)| {
                                Some((g.to_string(), rest.strip_suffix("gb")?.to_string()))
                            })
                        else {
                            problems.push(format!(
                                "{} {}: profile `{profile}` is not `<g>g.<N>gb`",
                                b.key, t.name
                            ));
                            continue;
                        };
                        let want = format!("-{g}-{gb}{suffix}{}", if me { "ME" } else { "" });
                        if !t.name.ends_with(&want) {
                            problems.push(format!(
                                "{} {}: backed by {profile}, so the name should end in `{want}`",
                                b.key, t.name
                            ));
                        }
                        if t.fb_mib != gb.parse::<u64>().unwrap_or(0) * 1024 {
                            problems.push(format!(
                                "{} {}: frame buffer {} MiB is not the profile's nominal {gb} GiB",
                                b.key, t.name, t.fb_mib
                            ));
                        }
                        if t.max != u32::from(p.max) {
                            problems.push(format!(
                                "{} {}: max {} differs from {profile}'s instance maximum {}",
                                b.key, t.name, t.max, p.max
                            ));
                        }
                        if t.max_mixed.is_some() {
                            problems.push(format!(
                                "{} {}: MIG-backed types have no max_mixed",
                                b.key, t.name
                            ));
                        }
                    }
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_obeys_every_rule() {
        let c = VgpuCatalog::builtin();
        let problems = c.check(tessera_model::Catalog::builtin());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        for key in [
            "a30-24gb",
            "a100-40gb",
            "a100-80gb",
            "h100-80gb",
            "h100-pcie-80gb",
            "h200-141gb",
            "h200-nvl-141gb",
            "l40s-48gb",
            "a10-24gb",
        ] {
            assert!(!c.board(key).unwrap().types.is_empty(), "{key}");
        }
    }

    #[test]
    fn the_check_catches_broken_entries() {
        let mig = tessera_model::Catalog::builtin();
        let base = VgpuCatalog::builtin().clone();
        type Breaker = Box<dyn Fn(&mut VgpuCatalog)>;
        let breakers: Vec<(&str, Breaker)> = vec![
            (
                "is not in the MIG catalog",
                Box::new(|c| c.boards[0].types[0].mig = Some("5g.30gb".into())),
            ),
            (
                "exceeds the board",
                Box::new(|c| {
                    let t = c.boards[0]
                        .types
                        .iter_mut()
                        .find(|t| t.name == "A30-4C")
                        .unwrap();
                    t.max = 7;
                }),
            ),
            (
                "instance maximum",
                Box::new(|c| {
                    let t = c.boards[0]
                        .types
                        .iter_mut()
                        .find(|t| t.name == "A30-1-6C")
                        .unwrap();
                    t.max = 5;
                }),
            ),
            (
                "should end in",
                Box::new(|c| {
                    let t = c.boards[0]
                        .types
                        .iter_mut()
                        .find(|t| t.name == "A30-1-6C")
                        .unwrap();
                    t.mig = Some("2g.12gb".into());
                }),
            ),
            (
                "sources legend",
                Box::new(|c| c.boards[0].sources = vec!["NOPE table 1".into()]),
            ),
        ];
        for (want, breaker) in breakers {
            let mut c = base.clone();
            breaker(&mut c);
            let problems = c.check(mig);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "expected a problem containing `{want}`, got {problems:?}"
            );
        }
    }

    #[test]
    fn lookups_accept_aliases_prefixes_and_suggest_on_typos() {
        let c = VgpuCatalog::builtin();
        assert_eq!(c.board("A30").unwrap().key, "a30-24gb");
        assert_eq!(c.board_by_pci_id("0x20b7").unwrap().key, "a30-24gb");
        assert_eq!(c.board_by_pci_id("20B5").unwrap().key, "a100-80gb");
        let b = c.board("a100-40gb").unwrap();
        assert_eq!(
            b.vgpu_type("NVIDIA A100-3-20C").unwrap().mig.as_deref(),
            Some("3g.20gb")
        );
        let e = c.board("a30-24g").unwrap_err().to_string();
        assert!(e.contains("did you mean `a30-24gb`"), "{e}");
        let e = b.vgpu_type("A100-3-20").unwrap_err().to_string();
        assert!(e.contains("did you mean `A100-3-20C`"), "{e}");
    }
}
