//! Input documents: the cluster (nodes, their GPUs, each GPU's mode and current slices) and the
//! pending requests. Both are read from YAML or JSON text; the caller reads the files. They may
//! be one document ([`PlanDocument`], as below) or two ([`ClusterSpec`], [`RequestsFile`]).
//!
//! ```yaml
//! # cluster
//! nodes:
//! - name: node-a
//!   gpus:                      # a GPU's index is its position in this list
//!   - model: a100-40gb         # catalog key, alias, product name or PCI ID
//!     mode: mig                # mig (default) | mps | timeslice
//!     instances:
//!     - {profile: 3g.20gb, start: 4, used: true}
//!     - {profile: 1g.5gb, start: 0}          # used defaults to false
//!   - model: h100-80gb
//!     mode: mps
//!     clients: [{memory_mib: 8192, sm_percent: 25}]
//!   - model: a30-24gb
//!     mode: timeslice
//!     replicas: 4
//!     replicas_used: 1
//!   - model: h100-80gb
//!     mode: auto               # the planner may choose mig, mps or timeslice while it is idle
//!     current: mps             # its mode now (default: from the fields given, else mig)
//!     can_switch: false        # the backend cannot change its mode now (default true)
//! # requests
//! requests:
//! - {id: r1, mig: 1g.5gb}
//! - {id: r2, mig: 2g.10gb, priority: 5}
//! - {id: r3, mps: {memory_mib: 10000, sm_percent: 20}}
//! - {id: r4, timeslice: true}
//! ```

use std::fmt;
use std::str::FromStr;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tessera_model::{Catalog, GpuModel, Placed, ProfileIdx};

use crate::plan::{AssignedSlice, Assignment, GpuPlan, InstanceRef, Name, Plan};
use crate::typed::{self, Ask, RequestId, Sharing, Slice};
use crate::{PlanError, Policy};

/// The cluster: every node and GPU the planner may use, with what runs on them now.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The nodes, in any order (names must be unique).
    pub nodes: Vec<NodeSpec>,
}

/// One node and its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name, unique in the cluster.
    pub name: String,
    /// The GPUs; a GPU's index is its position in this list.
    #[serde(default)]
    pub gpus: Vec<GpuSpec>,
}

/// How a GPU is shared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// Split into MIG GPU instances.
    #[default]
    Mig,
    /// Shared by MPS clients with memory and SM limits.
    Mps,
    /// Shared by time-slicing; each request takes one replica.
    Timeslice,
}

impl GpuMode {
    /// The mode's name as written in the input (`mig`, `mps`, `timeslice`).
    pub fn as_str(self) -> &'static str {
        match self {
            GpuMode::Mig => "mig",
            GpuMode::Mps => "mps",
            GpuMode::Timeslice => "timeslice",
        }
    }
}

impl fmt::Display for GpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A GPU mode name that is not `mig`, `mps` or `timeslice`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown GPU mode `{name}`; use mig, mps or timeslice")]
pub struct UnknownMode {
    /// The name given (trimmed, lower case).
    pub name: String,
}

impl FromStr for GpuMode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mig" => Ok(GpuMode::Mig),
            "mps" => Ok(GpuMode::Mps),
            "timeslice" | "time-slice" => Ok(GpuMode::Timeslice),
            other => Err(UnknownMode {
                name: other.to_string(),
            }),
        }
    }
}

/// One GPU: its model, mode and current state.
///
/// On the wire `mode` may also be `auto` (see [`AutoSpec`]): then `mode` here is the mode the
/// GPU is in now (the wire's `current`) and `auto` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawGpu", into = "RawGpu")]
pub struct GpuSpec {
    /// Catalog key, alias, NVML product name or PCI device ID.
    pub model: String,
    /// Sharing mode now (default `mig`).
    pub mode: GpuMode,
    /// `mode: auto` on the wire: the planner may give this GPU another mode while it is idle.
    pub auto: Option<AutoSpec>,
    /// MIG mode: the GPU instances that exist now.
    pub instances: Vec<InstanceSpec>,
    /// MPS mode: the clients that run now.
    pub clients: Vec<MpsClientSpec>,
    /// Time-slice mode: replicas offered (default: [`crate::PlanOptions::timeslice_replicas`]).
    /// An `auto` GPU may give it whatever its mode now: it is what it offers once time-sliced.
    pub replicas: Option<u32>,
    /// Time-slice mode: replicas in use now.
    pub replicas_used: u32,
}

/// What `mode: auto` adds to a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoSpec {
    /// Whether its mode can be changed now (the wire's `can_switch`, default `true`): `false`
    /// where the backend would need a GPU reset, or cannot switch at all. A change the rule
    /// would make is then reported as blocked instead of planned.
    pub can_switch: bool,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_true(v: &bool) -> bool {
    *v
}

fn default_true() -> bool {
    true
}

/// A GPU's `mode` as written: one of the modes, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeWord {
    #[default]
    Mig,
    Mps,
    Timeslice,
    Auto,
}

/// The wire shape of a GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpu {
    model: String,
    #[serde(default)]
    mode: ModeWord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<GpuMode>,
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    can_switch: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    instances: Vec<InstanceSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    clients: Vec<MpsClientSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    replicas_used: u32,
}

/// A GPU entry whose `current` or `can_switch` does not fit its `mode`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuShapeError {
    /// `current` or `can_switch` on a GPU that is not `mode: auto`.
    #[error("`{field}` is only for `mode: auto` GPUs (this one is `mode: {mode}`); drop it or set `mode: auto`")]
    AutoOnly {
        /// The field.
        field: &'static str,
        /// The GPU's mode.
        mode: GpuMode,
    },
}

impl TryFrom<RawGpu> for GpuSpec {
    type Error = GpuShapeError;
    fn try_from(r: RawGpu) -> Result<Self, GpuShapeError> {
        let fixed = match r.mode {
            ModeWord::Mig => Some(GpuMode::Mig),
            ModeWord::Mps => Some(GpuMode::Mps),
            ModeWord::Timeslice => Some(GpuMode::Timeslice),
            ModeWord::Auto => None,
        };
        let (mode, auto) = match fixed {
            Some(mode) => {
                if r.current.is_some() {
                    return Err(GpuShapeError::AutoOnly {
                        field: "current",
                        mode,
                    });
                }
                if !r.can_switch {
                    return Err(GpuShapeError::AutoOnly {
                        field: "can_switch",
                        mode,
                    });
                }
                (mode, None)
            }
            None => {
                // The mode now: as given, else what the listed slices say, else MIG.
                let mode = r.current.unwrap_or(if !r.clients.is_empty() {
                    GpuMode::Mps
                } else if r.replicas_used > 0 {
                    GpuMode::Timeslice
                } else {
                    GpuMode::Mig
                });
                (
                    mode,
                    Some(AutoSpec {
                        can_switch: r.can_switch,
                    }),
                )
            }
        };
        Ok(GpuSpec {
            model: r.model,
            mode,
            auto,
            instances: r.instances,
            clients: r.clients,
            replicas: r.replicas,
            replicas_used: r.replicas_used,
        })
    }
}

impl From<GpuSpec> for RawGpu {
    fn from(g: GpuSpec) -> Self {
        let (mode, current, can_switch) = match g.auto {
            None => (
                match g.mode {
                    GpuMode::Mig => ModeWord::Mig,
                    GpuMode::Mps => ModeWord::Mps,
                    GpuMode::Timeslice => ModeWord::Timeslice,
                },
                None,
                true,
            ),
            Some(a) => (ModeWord::Auto, Some(g.mode), a.can_switch),
        };
        RawGpu {
            model: g.model,
            mode,
            current,
            can_switch,
            instances: g.instances,
            clients: g.clients,
            replicas: g.replicas,
            replicas_used: g.replicas_used,
        }
    }
}

impl GpuSpec {
    /// A MIG GPU of `model` with these instances.
    pub fn mig(model: &str, instances: Vec<InstanceSpec>) -> Self {
        GpuSpec {
            model: model.to_string(),
            mode: GpuMode::Mig,
            auto: None,
            instances,
            clients: Vec::new(),
            replicas: None,
            replicas_used: 0,
        }
    }
}

/// A MIG GPU instance that exists now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Profile name, e.g. `3g.40gb`.
    pub profile: String,
    /// Placement start on the memory-slice grid.
    pub start: u8,
    /// Whether a workload uses it (a used instance is never destroyed or moved).
    #[serde(default)]
    pub used: bool,
}

/// An MPS client that runs now, with its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpsClientSpec {
    /// Pinned device-memory limit in MiB.
    pub memory_mib: u64,
    /// Active-thread (SM) percentage.
    pub sm_percent: u32,
}

/// What an MPS request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MpsRequest {
    /// Device memory in MiB (becomes the client's pinned-memory limit).
    pub memory_mib: u64,
    /// SM share in percent, 1 to 100 (becomes its active-thread percentage).
    pub sm_percent: u32,
}

/// What kind of slice a request wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// A MIG GPU instance of exactly this profile (name as `nvidia-smi` prints it).
    Mig(String),
    /// An MPS client with these limits.
    Mps(MpsRequest),
    /// One time-slice replica of a GPU.
    Timeslice,
}

/// One pending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRequest", into = "RawRequest")]
pub struct RequestSpec {
    /// Unique id.
    pub id: String,
    /// The slice it wants.
    pub kind: RequestKind,
    /// Weight in the objective (at least 1, default 1).
    pub priority: u32,
}

impl RequestSpec {
    /// A MIG request of priority 1.
    pub fn mig(id: &str, profile: &str) -> Self {
        RequestSpec {
            id: id.to_string(),
            kind: RequestKind::Mig(profile.to_string()),
            priority: 1,
        }
    }

    /// An MPS request of priority 1.
    pub fn mps(id: &str, memory_mib: u64, sm_percent: u32) -> Self {
        RequestSpec {
            id: id.to_string(),
            kind: RequestKind::Mps(MpsRequest {
                memory_mib,
                sm_percent,
            }),
            priority: 1,
        }
    }

    /// A time-slice request of priority 1.
    pub fn timeslice(id: &str) -> Self {
        RequestSpec {
            id: id.to_string(),
            kind: RequestKind::Timeslice,
            priority: 1,
        }
    }

    /// The same request with another priority.
    pub fn with_priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }
}

/// The wire shape of a request: `{id, mig: PROFILE}`, `{id, mps: {...}}` or `{id, timeslice: true}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mps: Option<MpsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeslice: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
}

/// A request document entry that does not say what it wants exactly once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestShapeError {
    /// No kind or several kinds.
    #[error("request `{id}` must have exactly one of `mig: PROFILE`, `mps: {{memory_mib, sm_percent}}` or `timeslice: true` (found {kinds})")]
    Kinds {
        /// The request id.
        id: String,
        /// How many kinds it gives.
        kinds: usize,
    },
    /// `timeslice: false` as the only kind.
    #[error("request `{id}`: `timeslice: false` asks for nothing; write `timeslice: true` or drop the request")]
    TimesliceFalse {
        /// The request id.
        id: String,
    },
}

impl TryFrom<RawRequest> for RequestSpec {
    type Error = RequestShapeError;
    fn try_from(r: RawRequest) -> Result<Self, RequestShapeError> {
        let id = r.id;
        let kinds = usize::from(r.mig.is_some())
            + usize::from(r.mps.is_some())
            + usize::from(r.timeslice.is_some());
        if kinds != 1 {
            return Err(RequestShapeError::Kinds { id, kinds });
        }
        let kind = if let Some(p) = r.mig {
            RequestKind::Mig(p)
        } else if let Some(m) = r.mps {
            RequestKind::Mps(m)
        } else if r.timeslice == Some(true) {
            RequestKind::Timeslice
        } else {
            return Err(RequestShapeError::TimesliceFalse { id });
        };
        Ok(RequestSpec {
            id,
            kind,
            priority: r.priority.unwrap_or(1),
        })
    }
}

impl From<RequestSpec> for RawRequest {
    fn from(r: RequestSpec) -> Self {
        let (mig, mps, timeslice) = match r.kind {
            RequestKind::Mig(p) => (Some(p), None, None),
            RequestKind::Mps(m) => (None, Some(m), None),
            RequestKind::Timeslice => (None, None, Some(true)),
        };
        RawRequest {
            id: r.id,
            mig,
            mps,
            timeslice,
            priority: (r.priority != 1).then_some(r.priority),
        }
    }
}

/// A requests document: `{requests: [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsFile {
    /// The pending requests, in arrival order (ties between equal requests go to the earlier).
    pub requests: Vec<RequestSpec>,
}

/// One document holding the cluster and, optionally, the requests: `{nodes: [...], requests:
/// [...]}` (the example at the top of this module as one file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDocument {
    /// The nodes, as in [`ClusterSpec`].
    pub nodes: Vec<NodeSpec>,
    /// The pending requests, as in [`RequestsFile`]; `None` when the document has no
    /// `requests` key (they come from another file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<RequestSpec>>,
}

impl PlanDocument {
    /// Read a cluster document, with or without `requests`, from YAML or JSON text.
    pub fn from_str_any(text: &str) -> Result<Self, PlanError> {
        parse_any(text, "cluster")
    }

    /// The cluster and the requests, if the document has them.
    pub fn into_parts(self) -> (ClusterSpec, Option<Vec<RequestSpec>>) {
        (ClusterSpec { nodes: self.nodes }, self.requests)
    }
}

/// Parse YAML or JSON (JSON when the text starts with `{` or `[`).
fn parse_any<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, PlanError> {
    let t = text.trim_start();
    let res = if t.starts_with('{') || t.starts_with('[') {
        serde_json::from_str(t).map_err(|e| e.to_string())
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    };
    res.map_err(|message| PlanError::Parse {
        what: what.to_string(),
        message,
    })
}

impl ClusterSpec {
    /// Read a cluster document from YAML or JSON text.
    pub fn from_str_any(text: &str) -> Result<Self, PlanError> {
        parse_any(text, "cluster")
    }
}

impl RequestsFile {
    /// Read a requests document from YAML or JSON text. A bare list of requests is accepted too.
    pub fn from_str_any(text: &str) -> Result<Self, PlanError> {
        let t = text.trim_start();
        if t.starts_with('[') || t.starts_with('-') {
            let list: Vec<RequestSpec> = parse_any(text, "requests")?;
            return Ok(RequestsFile { requests: list });
        }
        parse_any(text, "requests")
    }
}

/// The names of a file-format input, kept to turn the typed plan back into a named [`Plan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Labels<'a> {
    /// The cluster document (node names).
    pub cluster: &'a ClusterSpec,
    /// The requests as written (ids; request `i` is [`RequestId`]`(i)`).
    pub requests: &'a [RequestSpec],
}

/// A profile of `model` by name, compared without case and without a `MIG ` prefix.
fn profile_in(model: &GpuModel, name: &str) -> Option<ProfileIdx> {
    // Most names come exactly as the catalog writes them.
    let i = match model
        .profiles
        .iter()
        .position(|p| crate::tables::same_name(&p.name, name))
    {
        Some(i) => i,
        None => {
            let n = crate::tables::bare_name(name);
            model
                .profiles
                .iter()
                .position(|p| p.name.eq_ignore_ascii_case(n))?
        }
    };
    Some(ProfileIdx(i as u8))
}

/// The one place the file format becomes the typed problem: models, profiles and modes are
/// resolved by name here and nowhere else; request `i` becomes [`RequestId`]`(i)`. Errors name
/// the node, GPU and request as written.
pub(crate) fn resolve<'c>(
    catalog: &'c Catalog,
    cluster: &'c ClusterSpec,
    requests: &'c [RequestSpec],
) -> Result<(typed::Problem<'c>, Labels<'c>), PlanError> {
    // Model strings as written, resolved (a cluster names a few models many times).
    let mut model_ix: Vec<(&str, &'c GpuModel)> = Vec::new();
    // Models in first-use order.
    let mut models: Vec<&'c GpuModel> = Vec::new();
    let mut names: HashSet<&str> = HashSet::with_capacity(cluster.nodes.len());
    let mut nodes = Vec::with_capacity(cluster.nodes.len());
    for node in &cluster.nodes {
        if !names.insert(node.name.as_str()) {
            return Err(PlanError::DuplicateNode {
                node: node.name.clone(),
            });
        }
        let mut gpus = Vec::with_capacity(node.gpus.len());
        for (gi, g) in node.gpus.iter().enumerate() {
            let bad = |problem: String| PlanError::BadGpu {
                node: node.name.clone(),
                gpu: gi,
                problem,
            };
            let model = match model_ix
                .iter()
                .find(|(k, _)| crate::tables::same_name(k, &g.model))
            {
                Some(&(_, m)) => m,
                None => {
                    let m = catalog
                        .get(&g.model)
                        .ok_or_else(|| PlanError::UnknownModel {
                            node: node.name.clone(),
                            gpu: gi,
                            model: g.model.clone(),
                            known: catalog.models.iter().map(|m| m.key.clone()).collect(),
                        })?;
                    if !models.iter().any(|x| std::ptr::eq(*x, m)) {
                        models.push(m);
                    }
                    model_ix.push((g.model.as_str(), m));
                    m
                }
            };
            if g.mode != GpuMode::Mig && !g.instances.is_empty() {
                return Err(bad(format!(
                    "it is in {} mode but lists MIG instances; drop `instances` or set `mode: mig`",
                    g.mode
                )));
            }
            if g.mode != GpuMode::Mps && !g.clients.is_empty() {
                return Err(bad(format!(
                    "it is in {} mode but lists MPS clients; drop `clients` or set `mode: mps`",
                    g.mode
                )));
            }
            // An `auto` GPU may say how many replicas it offers once time-sliced.
            if g.mode != GpuMode::Timeslice
                && ((g.replicas.is_some() && g.auto.is_none()) || g.replicas_used > 0)
            {
                return Err(bad(format!(
                    "it is in {} mode but sets time-slice replicas; drop `replicas`/`replicas_used` or set `mode: timeslice`",
                    g.mode
                )));
            }
            let sharing = match g.mode {
                GpuMode::Mig => {
                    let mut instances = Vec::with_capacity(g.instances.len());
                    for inst in &g.instances {
                        let p = profile_in(model, &inst.profile).ok_or_else(|| {
                            PlanError::UnknownInstanceProfile {
                                node: node.name.clone(),
                                gpu: gi,
                                model: model.key.clone(),
                                profile: inst.profile.clone(),
                                known: model.profile_names(),
                            }
                        })?;
                        instances.push(typed::Instance {
                            placed: Placed::new(p, inst.start),
                            busy: inst.used,
                        });
                    }
                    Sharing::mig(instances)
                }
                GpuMode::Mps => Sharing::Mps {
                    clients: g.clients.clone(),
                },
                GpuMode::Timeslice => Sharing::Timeslice {
                    replicas: g.replicas,
                    used: g.replicas_used,
                },
            };
            gpus.push(typed::Gpu { model, sharing });
        }
        nodes.push(typed::Node { gpus });
    }

    let mut ids: HashSet<&str> = HashSet::with_capacity(requests.len());
    // Profile strings as written, resolved: most requests repeat a few.
    let mut seen: Vec<(&str, &'c GpuModel, ProfileIdx)> = Vec::new();
    let mut typed_requests = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let bad = |problem: String| PlanError::BadRequest {
            request: r.id.clone(),
            problem,
        };
        if r.id.is_empty() {
            return Err(bad("the id is empty; give every request a unique id".into()));
        }
        if !ids.insert(r.id.as_str()) {
            return Err(PlanError::DuplicateRequest { id: r.id.clone() });
        }
        if r.priority == 0 {
            return Err(bad(
                "priority 0 is not allowed; priorities start at 1".into()
            ));
        }
        let ask = match &r.kind {
            RequestKind::Mig(p) => {
                match seen.iter().find(|(s, _, _)| crate::tables::same_name(s, p)) {
                    Some(&(_, model, profile)) => Ask::Mig { model, profile },
                    None => {
                        // The cluster's models first, then any catalog model with the profile.
                        let found = models
                            .iter()
                            .find_map(|m| Some((*m, profile_in(m, p)?)))
                            .or_else(|| {
                                let lc = crate::tables::bare_name(p).to_ascii_lowercase();
                                catalog
                                    .models
                                    .iter()
                                    .find_map(|m| Some((m, m.profile_named(&lc)?)))
                            });
                        let Some((model, profile)) = found else {
                            let mut known: Vec<String> =
                                models.iter().flat_map(|m| m.profile_names()).collect();
                            known.sort();
                            known.dedup();
                            return Err(PlanError::UnknownRequestProfile {
                                request: r.id.clone(),
                                profile: p.clone(),
                                known,
                            });
                        };
                        seen.push((p.as_str(), model, profile));
                        Ask::Mig { model, profile }
                    }
                }
            }
            RequestKind::Mps(m) => {
                if m.memory_mib == 0 {
                    return Err(bad(
                        "MPS memory_mib is 0; ask for the device memory the client needs".into(),
                    ));
                }
                if m.sm_percent == 0 || m.sm_percent > 100 {
                    return Err(bad(format!(
                        "MPS sm_percent is {}; it must be between 1 and 100",
                        m.sm_percent
                    )));
                }
                Ask::Mps(*m)
            }
            RequestKind::Timeslice => Ask::Timeslice,
        };
        typed_requests.push(typed::Request {
            id: RequestId(i as u64),
            ask,
            priority: r.priority,
        });
    }
    Ok((
        typed::Problem {
            nodes,
            requests: typed_requests,
        },
        Labels { cluster, requests },
    ))
}

impl Labels<'_> {
    /// The one place a solved typed problem becomes the named [`Plan`]: the same GPUs and
    /// slices [`crate::problem::Problem::to_outcome`] lists, with the input's names. Names are
    /// shared ([`Name`]): one allocation per node, model and profile, however many GPUs and
    /// assignments repeat them.
    pub(crate) fn plan(
        &self,
        p: &crate::problem::Problem<'_>,
        sol: &crate::problem::Solution,
        policy: Policy,
        only_changed: bool,
    ) -> Plan {
        let mut book = NameBook::default();
        let mut node_names: Vec<Option<Name>> = vec![None; self.cluster.nodes.len()];
        let mut node_name = |n: usize| -> Name {
            node_names[n]
                .get_or_insert_with(|| Name::from(&self.cluster.nodes[n].name))
                .clone()
        };
        let mut gpus = Vec::with_capacity(if only_changed { 0 } else { p.gpus.len() });
        for l in p.listed(sol, only_changed) {
            let model = p.models[l.at.model];
            let mi = book.model(model);
            let tables = &p.tables[l.t];
            let mut refs = |set: u64| -> Vec<InstanceRef> {
                if set == 0 {
                    return Vec::new();
                }
                let mut v = Vec::with_capacity(set.count_ones() as usize);
                for c in tables.in_start_order(set) {
                    let placed = tables.cand[c];
                    v.push(InstanceRef {
                        profile: book.profile(mi, placed.profile),
                        start: placed.start,
                    });
                }
                v
            };
            let (layout, create, destroy) = (refs(l.layout), refs(l.create), refs(l.destroy));
            gpus.push(GpuPlan {
                node: node_name(l.at.node),
                gpu: l.at.index,
                model: book.models[mi].1.clone(),
                mode: l.at.mode,
                layout,
                create,
                destroy,
                mode_change: None,
            });
        }
        let stats = p.stats(sol);
        let mut assignments = Vec::with_capacity(stats.served);
        let mut unassigned = Vec::with_capacity(sol.slots.len() - stats.served);
        for (i, x) in p.slices(sol) {
            let id = &self.requests[p.ids[i].0 as usize].id;
            let Some((at, slice)) = x else {
                unassigned.push(id.clone());
                continue;
            };
            let slice = match slice {
                Slice::Mig(placed) => {
                    let mi = book.model(p.models[at.model]);
                    AssignedSlice::Mig {
                        profile: book.profile(mi, placed.profile),
                        start: placed.start,
                    }
                }
                Slice::Mps(m) => AssignedSlice::Mps {
                    memory_mib: m.memory_mib,
                    sm_percent: m.sm_percent,
                },
                Slice::Timeslice => AssignedSlice::Timeslice { timeslice: true },
            };
            assignments.push(Assignment {
                request: id.clone(),
                node: node_name(at.node),
                gpu: at.index,
                slice,
            });
        }
        Plan {
            policy,
            stats,
            gpus,
            assignments,
            unassigned,
        }
    }
}

/// Shared names of models and their profiles, one allocation each.
#[derive(Default)]
struct NameBook<'m> {
    /// (model, its key, its profile names as made so far).
    models: Vec<(&'m GpuModel, Name, Vec<Option<Name>>)>,
}

impl<'m> NameBook<'m> {
    /// The entry of a model, made on first use.
    fn model(&mut self, m: &'m GpuModel) -> usize {
        if let Some(i) = self.models.iter().position(|(x, _, _)| std::ptr::eq(*x, m)) {
            return i;
        }
        self.models
            .push((m, Name::from(&m.key), vec![None; m.profiles.len()]));
        self.models.len() - 1
    }

    /// The name of profile `p` of model entry `mi`.
    fn profile(&mut self, mi: usize, p: ProfileIdx) -> Name {
        let (model, _, names) = &mut self.models[mi];
        names[usize::from(p.0)]
            .get_or_insert_with(|| Name::from(&model.profile(p).name))
            .clone()
    }
}
