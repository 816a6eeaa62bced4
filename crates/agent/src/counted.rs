//! Counted MIG configurations for `tessera agent apply --desired FILE --select NAME`: NVIDIA
//! mig-parted config files and nos `knownMigGeometries` files. Both say *how many* instances of
//! each profile a GPU should have, not where; the planner places the counts (valid starts,
//! larger profiles first, existing instances reused where they fit), and the result is an
//! ordinary desired layout (`GPU index → PROFILE@START`) for the [`crate::Reconciler`].
//!
//! # mig-parted (`nvidia-mig-parted apply -f FILE -c NAME`)
//! Format facts, from the mig-parted README and its `api/spec/v1` types:
//! - the top level has `version: v1` (required, the only version) and `mig-configs`, a map from
//!   a user-chosen config name to a non-empty list of entries;
//! - an entry has `devices` (required): the string `all` or a list of GPU indices; `mig-enabled`
//!   (required, bool); `mig-devices`: a map from profile name (`1g.5gb`, or a compute-instance
//!   form `1c.2g.10gb`) to a count, required when `mig-enabled` is true and empty when false;
//!   and optionally `device-filter`, a PCI device ID (`0x20B010DE`) or a list of them that
//!   restricts the entry to GPUs of those IDs;
//! - `mig-devices: {}` with `mig-enabled: true` means MIG on and no instances.
//!
//! ```yaml
//! version: v1
//! mig-configs:
//!   all-balanced:
//!     - devices: all
//!       mig-enabled: true
//!       mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
//! ```
//!
//! How tessera reads it: `--select NAME` picks the config. MIG mode is never switched by
//! `apply`: an entry with `mig-enabled: false` for a GPU whose MIG mode is on is an error that
//! names `tessera agent mig-mode --disable` (a GPU already off is left alone); a GPU with MIG off
//! under `mig-enabled: true` is refused by the reconciler as usual. Compute-instance profiles
//! (`1c.2g.10gb`) are refused: tessera creates one full compute instance per GPU instance.
//! `device-filter` is matched against the PCI device IDs the catalog lists for the GPU's model
//! (models whose variants share a catalog entry, such as A100 40GB SXM and PCIe, match each
//! other's IDs).
//!
//! # nos (`knownMigGeometries`)
//! Format facts, from the nos GPU partitioner (its known-geometries file and Helm values): a
//! list of `{models: [...], allowedGeometries: [...]}`, where `models` are GPU product names as
//! the GPU feature discovery labels them (`NVIDIA-A100-SXM4-40GB`, `A30`: NVML's name with
//! spaces as dashes, the `NVIDIA-` prefix optional) and each geometry maps profile names to
//! counts (`{1g.5gb: 3, 2g.10gb: 2}`). The Helm values also accept a map from model to its
//! list of geometries under a `knownMigGeometries` key; both shapes are read.
//!
//! ```yaml
//! - models: [NVIDIA-A100-SXM4-40GB, NVIDIA-A100-PCIE-40GB]
//!   allowedGeometries:
//!     - {1g.5gb: 7}
//!     - {1g.5gb: 3, 2g.10gb: 2}
//! ```
//!
//! The geometries are alternatives: `--select N` applies the N-th geometry (1-based, in file
//! order) of each GPU's model to every GPU whose model the file lists; GPUs of other models are
//! left alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml_ng::Value;
use tessera_model::{Catalog, GpuModel};
use tessera_planner::{
    plan_explained, ClusterSpec, GpuSpec, InstanceSpec, NodeSpec, PlanOptions, Policy, RequestSpec,
};

/// A desired-state file in one of the three formats `agent apply --desired` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredDoc {
    /// tessera's own format: explicit `PROFILE@START` per GPU index ([`crate::parse_desired`]).
    Layouts(BTreeMap<u32, Vec<String>>),
    /// A mig-parted config file: named configs of per-device counts.
    MigParted(BTreeMap<String, Vec<MigPartedEntry>>),
    /// A nos `knownMigGeometries` file: allowed count geometries per GPU model.
    Nos(Vec<KnownGeometries>),
}

/// One entry of a mig-parted config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigPartedEntry {
    /// The GPUs the entry applies to.
    pub devices: Devices,
    /// PCI device IDs the entry is restricted to (empty: any).
    #[serde(default, deserialize_with = "one_or_many")]
    pub device_filter: Vec<String>,
    /// Whether MIG is on.
    pub mig_enabled: bool,
    /// Instances per profile.
    #[serde(default)]
    pub mig_devices: Option<BTreeMap<String, u32>>,
}

/// `devices: all` or a list of indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// `all`.
    All,
    /// GPU indices.
    Indices(Vec<u32>),
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if v.as_str() == Some("all") {
            return Ok(Devices::All);
        }
        serde_yaml_ng::from_value::<Vec<u32>>(v.clone())
            .map(Devices::Indices)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`devices: {}` must be `all` or a list of GPU indices like [0, 1]",
                    show(&v)
                ))
            })
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// One `{models, allowedGeometries}` item of a nos file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KnownGeometries {
    /// GPU product names (`NVIDIA-A100-SXM4-40GB`).
    pub models: Vec<String>,
    /// Alternative geometries: instances per profile.
    pub allowed_geometries: Vec<BTreeMap<String, u32>>,
}

/// A GPU of the machine, as the resolution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGpu {
    /// NVML index.
    pub index: u32,
    /// Product name as NVML reports it.
    pub name: String,
    /// Catalog key of its model, if the catalog knows it.
    pub model: Option<String>,
    /// Whether MIG mode is on (now or pending).
    pub mig_enabled: bool,
    /// Its GPU instances now: `(profile, start)`.
    pub instances: Vec<(String, u8)>,
}

/// Why a counted configuration cannot be turned into layouts. Each names the config (or nos
/// model and geometry), the device and the profile where one is involved.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The text is not YAML/JSON of any known shape.
    #[error("{format}: {message}")]
    Parse {
        /// Which format the text looked like.
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A file of explicit layouts (`gpus:`) that is malformed.
    #[error("desired-state file: {0}")]
    Layouts(#[from] crate::desired::LayoutsError),
    /// A mig-parted file, but no `--select`.
    #[error("this is a mig-parted config file: choose a config with --select NAME (configs: {})", configs.join(", "))]
    NoSelect {
        /// The configs in the file.
        configs: Vec<String>,
    },
    /// A nos file, but no `--select`.
    #[error("this is a nos knownMigGeometries file: choose a geometry with --select N (1-based, per model: {})", counts.join(", "))]
    NoGeometrySelected {
        /// `MODEL: N geometries` per item.
        counts: Vec<String>,
    },
    /// `--select` names no config of the file.
    #[error("no config `{select}` in the mig-parted file; its configs: {}", configs.join(", "))]
    UnknownConfig {
        /// The name asked for.
        select: String,
        /// The configs in the file.
        configs: Vec<String>,
    },
    /// `--select` on a file with explicit layouts.
    #[error("--select {select} works with mig-parted and nos files only; this file lists explicit layouts (`gpus:`), drop --select")]
    SelectNotApplicable {
        /// The value given.
        select: String,
    },
    /// `--select` for a nos file is not a usable index.
    #[error("--select {select}: give a geometry number from 1 to {max} (nos geometries are chosen by position)")]
    BadGeometryIndex {
        /// The value given.
        select: String,
        /// The largest number any model has.
        max: usize,
    },
    /// A device index the machine does not have.
    #[error("{context}: device {device} does not exist; this machine has {count} GPU(s) (0 to {})", count.saturating_sub(1))]
    NoSuchDevice {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
        /// GPUs on the machine.
        count: usize,
    },
    /// Two entries of a config cover the same device.
    #[error("{context}: device {device} is covered by two entries; list each device once")]
    DeviceTwice {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
    },
    /// An entry wants MIG off on a GPU whose MIG mode is on.
    #[error("{context}: device {device} has `mig-enabled: false` but its MIG mode is on; `agent apply` never switches MIG mode: empty it (`tessera agent apply --gpu {device}`), then run `tessera agent mig-mode --gpu {device} --disable`")]
    MigOffWanted {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
    },
    /// `mig-enabled: false` with instances, or `true` without `mig-devices`.
    #[error("{context}: {problem}")]
    BadEntry {
        /// Config name.
        context: String,
        /// What is wrong, with the fix.
        problem: String,
    },
    /// The GPU's model is not in the catalog, so its profiles are unknown.
    #[error("{context}: device {device} ({name}) is not a model the catalog knows; add it with `tessera catalog import` and --catalog FILE")]
    UnknownModel {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
        /// Its product name.
        name: String,
    },
    /// A compute-instance profile (`1c.2g.10gb`).
    #[error("{context}: device {device}: `{profile}` is a compute-instance profile; tessera creates one full compute instance per GPU instance, so use GPU-instance profiles ({})", known.join(", "))]
    ComputeInstanceProfile {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
        /// The profile.
        profile: String,
        /// The model's profiles.
        known: Vec<String>,
    },
    /// A profile the GPU's model does not have.
    #[error("{context}: device {device} ({model}) has no profile `{profile}`; its profiles: {}", known.join(", "))]
    UnknownProfile {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
        /// Catalog key.
        model: String,
        /// The profile.
        profile: String,
        /// The model's profiles.
        known: Vec<String>,
    },
    /// The counts do not fit one GPU.
    #[error("{context}: device {device} ({model}): {profile} does not fit: {detail}")]
    DoesNotFit {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
        /// Catalog key.
        model: String,
        /// The profile (with its count) that does not fit.
        profile: String,
        /// Why, with the numbers.
        detail: String,
    },
    /// A nos file none of whose models is on this machine.
    #[error("no GPU of this machine ({}) is a model the nos file lists ({})", gpus.join(", "), models.join(", "))]
    NoMatchingGpu {
        /// The machine's GPU names.
        gpus: Vec<String>,
        /// The file's models.
        models: Vec<String>,
    },
    /// The planner refused the placement input (a bug or a bad catalog entry).
    #[error("{context}: device {device}: {message}")]
    Planner {
        /// Config name.
        context: String,
        /// The index.
        device: u32,
        /// The planner's message.
        message: String,
    },
}

/// Read a desired-state file in any of the three formats: mig-parted (`version: v1`,
/// `mig-configs`), nos (a list of `{models, allowedGeometries}`, or a `knownMigGeometries`
/// key), else tessera's own `gpus:` layouts.
pub fn read_desired(text: &str) -> Result<DesiredDoc, DesiredError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| DesiredError::Parse {
        format: "desired-state file",
        message: format!("not YAML/JSON: {e}"),
    })?;
    if let Some(map) = doc.as_mapping() {
        let is_parted = map.contains_key("mig-configs")
            || map.get("version").and_then(Value::as_str) == Some("v1");
        if is_parted {
            return read_parted(map);
        }
        if let Some(known) = map.get("knownMigGeometries") {
            return read_nos(known.clone());
        }
    }
    if let Some(items) = doc.as_sequence() {
        if items
            .iter()
            .any(|i| i.as_mapping().is_some_and(|m| m.contains_key("models")))
        {
            return read_nos(doc);
        }
    }
    Ok(DesiredDoc::Layouts(crate::parse_desired(text)?))
}

fn read_parted(map: &serde_yaml_ng::Mapping) -> Result<DesiredDoc, DesiredError> {
    let bad = |message: String| DesiredError::Parse {
        format: "mig-parted config",
        message,
    };
    for (k, _) in map {
        match k.as_str() {
            Some("version") | Some("mig-configs") => {}
            _ => {
                return Err(bad(format!(
                    "unexpected field `{}`; a mig-parted file has `version: v1` and `mig-configs`",
                    show(k)
                )))
            }
        }
    }
    match map.get("version").and_then(Value::as_str) {
        Some("v1") => {}
        Some(v) => {
            return Err(bad(format!(
                "version `{v}` is not supported; use `version: v1`"
            )))
        }
        None => return Err(bad("`version: v1` is missing".into())),
    }
    let configs = map
        .get("mig-configs")
        .and_then(Value::as_mapping)
        .ok_or_else(|| bad("`mig-configs` must map config names to lists of entries".into()))?;
    if configs.is_empty() {
        return Err(bad(
            "`mig-configs` is empty; at least one config is required".into(),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, entries) in configs {
        let name = name
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| show(name));
        let entries: Vec<MigPartedEntry> = serde_yaml_ng::from_value(entries.clone())
            .map_err(|e| bad(format!("config `{name}`: {e}")))?;
        if entries.is_empty() {
            return Err(bad(format!(
                "config `{name}` has no entries; at least one is required"
            )));
        }
        for e in &entries {
            if e.mig_enabled && e.mig_devices.is_none() {
                return Err(bad(format!(
                    "config `{name}`: `mig-devices` is required when `mig-enabled` is true (`mig-devices: {{}}` for none)"
                )));
            }
            if !e.mig_enabled && e.mig_devices.as_ref().is_some_and(|d| !d.is_empty()) {
                return Err(bad(format!(
                    "config `{name}`: `mig-devices` lists instances but `mig-enabled` is false"
                )));
            }
        }
        out.insert(name, entries);
    }
    Ok(DesiredDoc::MigParted(out))
}

fn read_nos(v: Value) -> Result<DesiredDoc, DesiredError> {
    let bad = |e: serde_yaml_ng::Error| DesiredError::Parse {
        format: "nos knownMigGeometries",
        message: e.to_string(),
    };
    // The Helm values' map form: model -> geometries.
    if let Some(map) = v.as_mapping() {
        let by_model: BTreeMap<String, Vec<BTreeMap<String, u32>>> =
            serde_yaml_ng::from_value(Value::Mapping(map.clone())).map_err(bad)?;
        return Ok(DesiredDoc::Nos(
            by_model
                .into_iter()
                .map(|(m, g)| KnownGeometries {
                    models: vec![m],
                    allowed_geometries: g,
                })
                .collect(),
        ));
    }
    let list: Vec<KnownGeometries> = serde_yaml_ng::from_value(v).map_err(bad)?;
    Ok(DesiredDoc::Nos(list))
}

fn show(v: &Value) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Turn a desired document into layouts for the GPUs of this machine: explicit layouts pass
/// through; counted configs are selected (`select`) and placed per GPU with the planner.
pub fn resolve(
    doc: &DesiredDoc,
    select: Option<&str>,
    gpus: &[TargetGpu],
    catalog: &Catalog,
) -> Result<BTreeMap<u32, Vec<String>>, DesiredError> {
    match doc {
        DesiredDoc::Layouts(l) => match select {
            Some(s) => Err(DesiredError::SelectNotApplicable { select: s.into() }),
            None => Ok(l.clone()),
        },
        DesiredDoc::MigParted(configs) => {
            let names: Vec<String> = configs.keys().cloned().collect();
            let Some(sel) = select else {
                return Err(DesiredError::NoSelect { configs: names });
            };
            let entries = configs
                .get(sel)
                .ok_or_else(|| DesiredError::UnknownConfig {
                    select: sel.into(),
                    configs: names,
                })?;
            resolve_parted(sel, entries, gpus, catalog)
        }
        DesiredDoc::Nos(items) => resolve_nos(items, select, gpus, catalog),
    }
}

fn resolve_parted(
    name: &str,
    entries: &[MigPartedEntry],
    gpus: &[TargetGpu],
    catalog: &Catalog,
) -> Result<BTreeMap<u32, Vec<String>>, DesiredError> {
    let context = format!("config `{name}`");
    let mut covered = BTreeSet::new();
    let mut out = BTreeMap::new();
    for e in entries {
        let devices: Vec<&TargetGpu> = match &e.devices {
            Devices::All => gpus.iter().collect(),
            Devices::Indices(ix) => ix
                .iter()
                .map(|&i| {
                    gpus.iter()
                        .find(|g| g.index == i)
                        .ok_or(DesiredError::NoSuchDevice {
                            context: context.clone(),
                            device: i,
                            count: gpus.len(),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        for g in devices {
            if !e.device_filter.is_empty() && !filter_matches(&e.device_filter, g, catalog) {
                continue;
            }
            if !covered.insert(g.index) {
                return Err(DesiredError::DeviceTwice {
                    context: context.clone(),
                    device: g.index,
                });
            }
            if !e.mig_enabled {
                if g.mig_enabled {
                    return Err(DesiredError::MigOffWanted {
                        context: context.clone(),
                        device: g.index,
                    });
                }
                continue;
            }
            let counts = e.mig_devices.clone().unwrap_or_default();
            out.insert(g.index, place_for(&context, g, &counts, catalog)?);
        }
    }
    Ok(out)
}

fn resolve_nos(
    items: &[KnownGeometries],
    select: Option<&str>,
    gpus: &[TargetGpu],
    catalog: &Catalog,
) -> Result<BTreeMap<u32, Vec<String>>, DesiredError> {
    let max = items
        .iter()
        .map(|i| i.allowed_geometries.len())
        .max()
        .unwrap_or(0);
    let Some(sel) = select else {
        return Err(DesiredError::NoGeometrySelected {
            counts: items
                .iter()
                .map(|i| format!("{}: {}", i.models.join("/"), i.allowed_geometries.len()))
                .collect(),
        });
    };
    let n: usize = match sel.trim().parse() {
        Ok(n) if n >= 1 && n <= max => n,
        _ => {
            return Err(DesiredError::BadGeometryIndex {
                select: sel.into(),
                max,
            })
        }
    };
    let mut out = BTreeMap::new();
    let mut matched = false;
    for g in gpus {
        let Some((item, model_name)) = items.iter().find_map(|i| {
            i.models
                .iter()
                .find(|m| nos_model_matches(m, g, catalog))
                .map(|m| (i, m))
        }) else {
            continue;
        };
        matched = true;
        let context = format!("nos model `{model_name}` geometry {n}");
        let Some(counts) = item.allowed_geometries.get(n - 1) else {
            return Err(DesiredError::BadEntry {
                context,
                problem: format!(
                    "this model has {} geometries; give --select 1 to {}",
                    item.allowed_geometries.len(),
                    item.allowed_geometries.len()
                ),
            });
        };
        out.insert(g.index, place_for(&context, g, counts, catalog)?);
    }
    if !matched {
        return Err(DesiredError::NoMatchingGpu {
            gpus: gpus.iter().map(|g| g.name.clone()).collect(),
            models: items.iter().flat_map(|i| i.models.clone()).collect(),
        });
    }
    Ok(out)
}

/// Lower case, spaces and underscores as dashes, without an `nvidia-` prefix.
fn norm_product(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase().replace([' ', '_'], "-");
    s.strip_prefix("nvidia-").map(str::to_string).unwrap_or(s)
}

/// Whether a nos model name (a GPU product label) is GPU `g`: its NVML name, or a product name
/// the catalog lists for its model.
fn nos_model_matches(name: &str, g: &TargetGpu, catalog: &Catalog) -> bool {
    let want = norm_product(name);
    if norm_product(&g.name) == want {
        return true;
    }
    let Some(m) = g.model.as_deref().and_then(|k| catalog.get(k)) else {
        return false;
    };
    m.names.iter().any(|n| norm_product(n) == want)
}

fn filter_matches(filter: &[String], g: &TargetGpu, catalog: &Catalog) -> bool {
    let Some(m) = g.model.as_deref().and_then(|k| catalog.get(k)) else {
        return false;
    };
    filter.iter().any(|f| {
        m.pci_device_ids
            .iter()
            .any(|id| id.eq_ignore_ascii_case(f.trim()))
    })
}

fn place_for(
    context: &str,
    g: &TargetGpu,
    counts: &BTreeMap<String, u32>,
    catalog: &Catalog,
) -> Result<Vec<String>, DesiredError> {
    let model = g
        .model
        .as_deref()
        .and_then(|k| catalog.get(k))
        .ok_or_else(|| DesiredError::UnknownModel {
            context: context.into(),
            device: g.index,
            name: g.name.clone(),
        })?;
    place_counts(catalog, model, context, g.index, counts, &g.instances)
}

/// Place `counts` (instances per profile) on one GPU of `model` (a model of `catalog`) with the
/// planner; `context` (the config) and `device` name the place in errors: every count
/// becomes a request, the GPU's current instances are offered as idle (so an instance of a
/// counted profile is kept where it is), and the `exact` policy finds a layout that holds them
/// all whenever one exists. Returns `PROFILE@START` specs sorted by start, or an error naming
/// the profile that does not fit and why.
pub fn place_counts(
    catalog: &Catalog,
    model: &GpuModel,
    context: &str,
    device: u32,
    counts: &BTreeMap<String, u32>,
    current: &[(String, u8)],
) -> Result<Vec<String>, DesiredError> {
    let known = model.profile_names();
    let mut wanted: Vec<(String, u32, u8)> = Vec::new(); // (catalog name, count, memory slices)
    for (name, &n) in counts {
        let Some(pi) = model.profile_named(name) else {
            let compute_form = name
                .split('.')
                .next()
                .is_some_and(|h| h.ends_with('c') && h[..h.len() - 1].parse::<u32>().is_ok());
            return Err(if compute_form {
                DesiredError::ComputeInstanceProfile {
                    context: context.into(),
                    device,
                    profile: name.clone(),
                    known,
                }
            } else {
                DesiredError::UnknownProfile {
                    context: context.into(),
                    device,
                    model: model.key.clone(),
                    profile: name.clone(),
                    known,
                }
            });
        };
        let p = model.profile(pi);
        let does_not_fit = |detail: String| DesiredError::DoesNotFit {
            context: context.into(),
            device,
            model: model.key.clone(),
            profile: format!("{n} × {}", p.name),
            detail,
        };
        if n > u32::from(p.max) {
            return Err(does_not_fit(format!(
                "{} allows at most {} per GPU",
                p.name, p.max
            )));
        }
        if n > 0 {
            wanted.push((p.name.clone(), n, p.memory_slices));
        }
    }
    let total: u32 = wanted.iter().map(|w| w.1).sum();
    if total > u32::from(model.max_instances) {
        return Err(DesiredError::DoesNotFit {
            context: context.into(),
            device,
            model: model.key.clone(),
            profile: format!("{total} instances"),
            detail: format!("a {} holds at most {}", model.key, model.max_instances),
        });
    }
    // Larger profiles first: they weigh more (priority = memory slices), so when the counts do
    // not fit, the smaller profiles are the ones left over and named.
    wanted.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let requests: Vec<RequestSpec> = wanted
        .iter()
        .flat_map(|(name, n, size)| {
            (1..=*n).map(move |k| {
                RequestSpec::mig(&format!("{name}#{k}"), name)
                    .with_priority(u32::from(*size).max(1))
            })
        })
        .collect();
    let gpu = |instances: Vec<InstanceSpec>| ClusterSpec {
        nodes: vec![NodeSpec {
            name: format!("device-{device}"),
            gpus: vec![GpuSpec::mig(&model.key, instances)],
        }],
    };
    let current: Vec<InstanceSpec> = current
        .iter()
        .map(|(p, s)| InstanceSpec {
            profile: p.clone(),
            start: *s,
            used: false,
        })
        .collect();
    let opts = PlanOptions::with_policy(Policy::Exact);
    // An observed layout the planner cannot read (a profile from a newer driver) is planned
    // from empty: the reconciler still keeps whatever matches.
    let result = plan_explained(catalog, &gpu(current), &requests, &opts)
        .or_else(|_| plan_explained(catalog, &gpu(Vec::new()), &requests, &opts))
        .map_err(|e| DesiredError::Planner {
            context: context.into(),
            device,
            message: e.to_string(),
        })?;
    let (plan, waiting) = result;
    if let Some(w) = waiting.first() {
        let name = w.request.split('#').next().unwrap_or_default();
        let n = counts
            .iter()
            .find(|(k, _)| {
                model
                    .profile_named(k)
                    .map(|i| model.profile(i).name.as_str())
                    == Some(name)
            })
            .map_or(0, |(_, n)| *n);
        let mut placed: Vec<(u8, String)> = plan
            .assignments
            .iter()
            .filter_map(|a| match &a.slice {
                tessera_planner::AssignedSlice::Mig { profile, start } => {
                    Some((*start, format!("{profile}@{start}")))
                }
                _ => None,
            })
            .collect();
        placed.sort();
        let placed: Vec<String> = placed.into_iter().map(|x| x.1).collect();
        let left = waiting
            .iter()
            .filter(|x| x.request.starts_with(&format!("{name}#")))
            .count();
        // The planner's detail without its place (`... node `device-0` GPU 0 (model): `).
        let why = w
            .detail
            .rsplit_once("): ")
            .map_or(w.detail.as_str(), |x| x.1);
        return Err(DesiredError::DoesNotFit {
            context: context.into(),
            device,
            model: model.key.clone(),
            profile: if left == n as usize {
                format!("{n} × {name}")
            } else {
                format!("{left} of the {n} × {name}")
            },
            detail: format!(
                "no room next to {}: {why}",
                if placed.is_empty() {
                    "nothing".to_string()
                } else {
                    placed.join(" ")
                }
            ),
        });
    }
    let mut specs: Vec<(u8, String)> = plan
        .assignments
        .iter()
        .filter_map(|a| match &a.slice {
            tessera_planner::AssignedSlice::Mig { profile, start } => {
                Some((*start, format!("{profile}@{start}")))
            }
            _ => None,
        })
        .collect();
    specs.sort();
    Ok(specs.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tessera_model::Placed;

    const PARTED: &str = include_str!("../../cli/tests/fixtures/mig-parted.yaml");
    const NOS: &str = include_str!("../../cli/tests/fixtures/nos-known-mig-geometries.yaml");

    fn gpu(index: u32, key: &str) -> TargetGpu {
        let m = Catalog::builtin().get(key).unwrap();
        TargetGpu {
            index,
            name: m.names[0].clone(),
            model: Some(m.key.clone()),
            mig_enabled: true,
            instances: Vec::new(),
        }
    }

    /// GPU 0 and 1: H100 80GB; GPU 2: A100 40GB.
    fn machine() -> Vec<TargetGpu> {
        vec![
            gpu(0, "h100-80gb"),
            gpu(1, "h100-80gb"),
            gpu(2, "a100-40gb"),
        ]
    }

    fn select(
        doc: &str,
        sel: &str,
        gpus: &[TargetGpu],
    ) -> Result<BTreeMap<u32, Vec<String>>, DesiredError> {
        resolve(
            &read_desired(doc).unwrap(),
            Some(sel),
            gpus,
            Catalog::builtin(),
        )
    }

    /// The specs as a validated layout of `key`, and its profile counts.
    fn counts_of(key: &str, specs: &[String]) -> BTreeMap<String, u32> {
        let m = Catalog::builtin().get(key).unwrap();
        let placed: Vec<Placed> = specs
            .iter()
            .map(|s| {
                let (p, st) = s.split_once('@').unwrap();
                Placed::new(m.profile_named(p).unwrap(), st.parse().unwrap())
            })
            .collect();
        assert!(
            m.validate(&placed).is_empty(),
            "{specs:?} is not a valid {key} layout"
        );
        let mut c = BTreeMap::new();
        for pl in placed {
            *c.entry(m.profile(pl.profile).name.clone()).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn the_mig_parted_fixture_parses_with_every_config() {
        let DesiredDoc::MigParted(c) = read_desired(PARTED).unwrap() else {
            panic!("not read as mig-parted");
        };
        assert_eq!(
            c.keys().collect::<Vec<_>>(),
            [
                "all-disabled",
                "all-enabled",
                "h100-all-1g.10gb",
                "h100-balanced",
                "mixed",
                "shared-compute",
                "too-many"
            ]
        );
        assert_eq!(c["all-disabled"][0].devices, Devices::All);
        assert_eq!(c["mixed"][1].devices, Devices::Indices(vec![1]));
        assert_eq!(
            c["h100-balanced"][0].device_filter,
            ["0x233010DE", "0x233110DE"]
        );
        assert_eq!(c["h100-all-1g.10gb"][0].device_filter, ["0x233010DE"]);
        assert_eq!(c["mixed"][1].mig_devices.as_ref().unwrap()["1g.10gb"], 3);
    }

    #[test]
    fn counts_are_placed_at_valid_starts_per_device() {
        let got = select(PARTED, "mixed", &machine()).unwrap();
        assert_eq!(got[&0], ["3g.40gb@0", "3g.40gb@4"]);
        assert_eq!(
            counts_of("h100-80gb", &got[&1]),
            BTreeMap::from([("4g.40gb".into(), 1), ("1g.10gb".into(), 3)])
        );
        assert_eq!(
            counts_of("a100-40gb", &got[&2]),
            BTreeMap::from([("2g.10gb".into(), 3)])
        );

        // `device-filter` keeps the entry to the H100s; the A100 is left alone.
        let got = select(PARTED, "h100-balanced", &machine()).unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            counts_of("h100-80gb", &got[&0]),
            BTreeMap::from([
                ("1g.10gb".into(), 2),
                ("2g.20gb".into(), 1),
                ("3g.40gb".into(), 1)
            ])
        );
        // `mig-devices: {}`: MIG on, no instances.
        let got = select(PARTED, "all-enabled", &machine()).unwrap();
        assert!(got.values().all(Vec::is_empty) && got.len() == 3);
        // Deterministic: the same input, the same layouts.
        assert_eq!(
            select(PARTED, "mixed", &machine()).unwrap(),
            select(PARTED, "mixed", &machine()).unwrap()
        );
    }

    #[test]
    fn existing_instances_of_counted_profiles_stay_where_they_are() {
        let mut gpus = machine();
        // GPU 0 has the balanced counts in another arrangement than an empty GPU gets (GPU 1).
        gpus[0].instances = vec![
            ("2g.20gb".into(), 0),
            ("1g.10gb".into(), 2),
            ("1g.10gb".into(), 3),
        ];
        let got = select(PARTED, "h100-balanced", &gpus).unwrap();
        assert_eq!(
            got[&0],
            ["2g.20gb@0", "1g.10gb@2", "1g.10gb@3", "3g.40gb@4"],
            "kept, 3g.40gb added"
        );
        assert_ne!(got[&0], got[&1]);
    }

    #[test]
    fn mistakes_name_the_config_device_and_profile() {
        let err = select(PARTED, "too-many", &machine())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config `too-many`")
                && err.contains("device 0 (h100-80gb)")
                && err.contains("1g.10gb"),
            "{err}"
        );
        let err = select(PARTED, "shared-compute", &machine())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`1c.3g.40gb` is a compute-instance profile"),
            "{err}"
        );
        let err = select(
            PARTED,
            "h100-all-1g.10gb",
            &[gpu(0, "a100-40gb"), gpu(1, "h100-80gb")],
        )
        .unwrap();
        assert_eq!(
            err.keys().copied().collect::<Vec<_>>(),
            [1],
            "filtered to the H100"
        );

        // A config of another model's profiles.
        let doc = "version: v1\nmig-configs:\n  x:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {1g.20gb: 1}\n";
        let err = select(doc, "x", &machine()).unwrap_err().to_string();
        assert!(
            err.contains("device 2 (a100-40gb) has no profile `1g.20gb`"),
            "{err}"
        );
        // More than the profile's maximum.
        let doc = "version: v1\nmig-configs:\n  x:\n    - devices: [0]\n      mig-enabled: true\n      mig-devices: {3g.40gb: 3}\n";
        let err = select(doc, "x", &machine()).unwrap_err().to_string();
        assert!(
            err.contains("3 × 3g.40gb") && err.contains("at most 2 per GPU"),
            "{err}"
        );

        let doc_ = read_desired(PARTED).unwrap();
        let err = resolve(&doc_, None, &machine(), Catalog::builtin())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--select NAME") && err.contains("h100-balanced") && err.contains("mixed"),
            "{err}"
        );
        let err = select(PARTED, "mixd", &machine()).unwrap_err().to_string();
        assert!(err.contains("no config `mixd`"), "{err}");
        let err = select(PARTED, "all-disabled", &machine())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mig-mode --gpu 0 --disable"), "{err}");
        let mut off = machine();
        for g in &mut off {
            g.mig_enabled = false;
        }
        assert!(
            select(PARTED, "all-disabled", &off).unwrap().is_empty(),
            "MIG already off: nothing to do"
        );
        let err = select(PARTED, "mixed", &machine()[..2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("device 2 does not exist") && err.contains("0 to 1"),
            "{err}"
        );
        let doc = "version: v1\nmig-configs:\n  x:\n    - {devices: all, mig-enabled: true, mig-devices: {}}\n    - {devices: [1], mig-enabled: true, mig-devices: {}}\n";
        let err = select(doc, "x", &machine()).unwrap_err().to_string();
        assert!(err.contains("device 1 is covered by two entries"), "{err}");
    }

    #[test]
    fn bad_mig_parted_files_are_refused_with_the_rule() {
        let bad = |t: &str| read_desired(t).unwrap_err().to_string();
        assert!(bad("version: v2\nmig-configs: {}").contains("use `version: v1`"));
        assert!(bad("version: v1\nmig-configs: {}").contains("at least one config"));
        assert!(bad("version: v1\nmig-configs: {a: []}").contains("config `a` has no entries"));
        assert!(bad(
            "version: v1\nmig-configs: {a: [{devices: some, mig-enabled: true, mig-devices: {}}]}"
        )
        .contains("must be `all` or a list of GPU indices"));
        assert!(
            bad("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true}]}")
                .contains("`mig-devices` is required")
        );
        assert!(bad("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: false, mig-devices: {1g.5gb: 1}}]}")
            .contains("`mig-enabled` is false"));
        assert!(bad("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: {1g.5gb: -1}}]}")
            .contains("config `a`"));
        assert!(bad("version: v1\nmig-configs: {a: [{devices: all, mig-enabled: true, mig-devices: {}, extra: 1}]}")
            .contains("extra"));
        // tessera's own format still reads, and refuses --select.
        let doc = read_desired("version: 1\ngpus: {0: [7g.80gb@0]}").unwrap();
        assert_eq!(
            doc,
            DesiredDoc::Layouts(BTreeMap::from([(0, vec!["7g.80gb@0".to_string()])]))
        );
        let err = resolve(&doc, Some("x"), &machine(), Catalog::builtin())
            .unwrap_err()
            .to_string();
        assert!(err.contains("drop --select"), "{err}");
    }

    #[test]
    fn nos_geometries_apply_the_selected_one_per_model() {
        let DesiredDoc::Nos(items) = read_desired(NOS).unwrap() else {
            panic!("not read as nos");
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].allowed_geometries[1]["4g.20gb"], 1);
        let got = select(NOS, "2", &machine()).unwrap();
        assert_eq!(
            counts_of("h100-80gb", &got[&0]),
            BTreeMap::from([("1g.10gb".into(), 4), ("3g.40gb".into(), 1)])
        );
        assert_eq!(
            counts_of("a100-40gb", &got[&2]),
            BTreeMap::from([
                ("1g.5gb".into(), 1),
                ("2g.10gb".into(), 1),
                ("4g.20gb".into(), 1)
            ])
        );
        assert_eq!(select(NOS, "4", &machine()).unwrap()[&1], ["7g.80gb@0"]);
        // The Helm values' map form reads the same.
        let helm = "knownMigGeometries:\n  NVIDIA-H100-80GB-HBM3:\n    - {7g.80gb: 1}\n";
        assert_eq!(select(helm, "1", &machine()).unwrap().len(), 2);

        let err = select(NOS, "5", &machine()).unwrap_err().to_string();
        assert!(err.contains("from 1 to 4"), "{err}");
        let err = resolve(
            &read_desired(NOS).unwrap(),
            None,
            &machine(),
            Catalog::builtin(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--select N"), "{err}");
        let err = select(NOS, "1", &[gpu(0, "a30-24gb")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NVIDIA A30") && err.contains("NVIDIA-H100-80GB-HBM3"),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whenever some valid layout has the counts, placing them succeeds with a valid layout
        /// of exactly those counts.
        #[test]
        fn counts_of_any_valid_layout_are_placed(seed in any::<u64>(), model in 0usize..4) {
            let key = ["a100-40gb", "h100-80gb", "a30-24gb", "rtx-pro-6000-blackwell-96gb"][model];
            let m = Catalog::builtin().get(key).unwrap();
            let mut rng = tessera_planner::gen::rng(seed);
            let layout = tessera_planner::gen::random_layout(m, &mut rng, 0.9);
            let specs: Vec<String> = layout
                .iter()
                .map(|p| format!("{}@{}", m.profile(p.profile).name, p.start))
                .collect();
            let want = counts_of(key, &specs);
            let got = place_counts(Catalog::builtin(), m, "test", 0, &want, &[]).unwrap();
            prop_assert_eq!(counts_of(key, &got), want);
        }
    }
}
