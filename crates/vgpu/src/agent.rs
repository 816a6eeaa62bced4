//! The vGPU agent: takes a GPU of a vGPU host to a desired set of vGPUs, safely, the way the
//! MIG agent takes a GPU to a layout.
//!
//! - [`DesiredGpu`]: per GPU, vGPUs by type and count, or by type at an explicit VF or mdev
//!   UUID (the `--desired FILE` format, [`parse_desired`]).
//! - [`plan`]: the pure diff from an [`Observed`] GPU: keep what matches (VMs' vGPUs first),
//!   destroy what is not wanted, enable VFs when none are, create the GPU instances that
//!   MIG-backed types need (placed on the MIG grid with the catalog's rules), then the vGPUs.
//!   It refuses the whole GPU, changing nothing, when a vGPU a VM holds is in the way, when
//!   the desired set breaks the same-size rule, and in the other cases of [`Refusal`]. There is
//!   no "delete everything and re-create".
//! - [`Agent`]: observes, plans, writes an intent to the [`Journal`] before each host write
//!   and an outcome after, re-observes and re-plans after a failure, and after a crash records
//!   whether each cut-short op took effect before planning again (roll-forward: the plan from
//!   what is there finishes the job).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_agent::Sleeper;
use tessera_model::{GpuModel, LayoutState, Placed};

use crate::catalog::{Board, VgpuCatalog};
use crate::host::{Framework, Handle, HostError, HostGpu, Target, Vgpu, VgpuHost};
use crate::journal::{dangling, Journal, JournalError};

/// The desired-state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredDoc {
    /// Format version (1).
    pub version: u32,
    /// One entry per GPU to manage; GPUs not listed are left alone.
    pub gpus: Vec<DesiredGpu>,
}

/// The vGPUs one GPU should hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredGpu {
    /// PCI address of the GPU (physical function).
    pub gpu: String,
    /// VFs to enable when none are (default: `sriov_totalvfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs: Option<u32>,
    /// The GPU runs in mixed-size mode (`nvidia-smi vgpu -shm 1`, set by the operator), so
    /// time-sliced types of different sizes may share it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixed_size: bool,
    /// The vGPUs.
    pub vgpus: Vec<DesiredVgpu>,
}

/// vGPUs of one type: `count` of them anywhere, or one at `vf` / with mdev `uuid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredVgpu {
    /// Type name (`A30-1-6C`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// How many (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// At this VF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf: Option<String>,
    /// With this mdev UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// A desired file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// Not the format.
    #[error("desired vGPU file does not parse: {0}")]
    Parse(#[source] serde_yaml_ng::Error),
    /// A rule of the format is broken.
    #[error("desired vGPU file: {0}")]
    Invalid(String),
}

/// Parse and check a desired file (YAML or JSON).
pub fn parse_desired(text: &str) -> Result<DesiredDoc, DesiredError> {
    let d: DesiredDoc = serde_yaml_ng::from_str(text).map_err(DesiredError::Parse)?;
    if d.version != 1 {
        return Err(DesiredError::Invalid(format!(
            "version {} is not supported (this build reads version 1)",
            d.version
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for g in &d.gpus {
        if !seen.insert(g.gpu.clone()) {
            return Err(DesiredError::Invalid(format!(
                "GPU {} is listed twice",
                g.gpu
            )));
        }
        for v in &g.vgpus {
            if v.count.is_some() && (v.vf.is_some() || v.uuid.is_some()) {
                return Err(DesiredError::Invalid(format!(
                    "GPU {}: {} has both a count and a vf/uuid; give a count, or one entry per explicit vGPU",
                    g.gpu, v.type_name
                )));
            }
            if let Some(u) = &v.uuid {
                uuid::Uuid::parse_str(u).map_err(|e| {
                    DesiredError::Invalid(format!("GPU {}: uuid `{u}` is not a UUID ({e})", g.gpu))
                })?;
            }
        }
    }
    Ok(d)
}

/// One write the agent performs; also its journal form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum VOp {
    /// Enable VFs (`sriov_numvfs`).
    SetVfs {
        /// The GPU.
        gpu: String,
        /// VF count.
        count: u32,
    },
    /// Destroy a vGPU no VM holds.
    DestroyVgpu {
        /// The GPU.
        gpu: String,
        /// The vGPU.
        handle: Handle,
        /// Its type, when known.
        type_name: Option<String>,
    },
    /// Destroy an idle GPU instance nothing uses, to make room.
    DestroyGi {
        /// The GPU.
        gpu: String,
        /// GI ID.
        gi_id: u32,
        /// Profile.
        profile: String,
        /// Placement start.
        start: u8,
    },
    /// Create the GPU instance a MIG-backed vGPU needs.
    CreateGi {
        /// The GPU.
        gpu: String,
        /// Profile.
        profile: String,
        /// Placement start.
        start: u8,
    },
    /// Create a vGPU (the journal holds the VF chosen at run time).
    CreateVgpu {
        /// The GPU.
        gpu: String,
        /// Type name.
        type_name: String,
        /// VF.
        vf: Option<String>,
        /// mdev UUID.
        uuid: Option<String>,
    },
}

impl VOp {
    /// The GPU the op changes.
    pub fn gpu(&self) -> &str {
        match self {
            VOp::SetVfs { gpu, .. }
            | VOp::DestroyVgpu { gpu, .. }
            | VOp::DestroyGi { gpu, .. }
            | VOp::CreateGi { gpu, .. }
            | VOp::CreateVgpu { gpu, .. } => gpu,
        }
    }

    /// Whether the op's effect shows in `obs` (used after a crash).
    pub fn visible_in(&self, obs: &Observed) -> bool {
        match self {
            VOp::SetVfs { count, .. } => obs.gpu.vfs.len() as u32 == *count,
            VOp::DestroyVgpu { handle, .. } => {
                !obs.vgpus.iter().any(|v| same_handle(&v.handle, handle))
            }
            VOp::DestroyGi { profile, start, .. } => !obs
                .gis
                .iter()
                .any(|g| &g.profile == profile && g.start == *start),
            VOp::CreateGi { profile, start, .. } => obs
                .gis
                .iter()
                .any(|g| &g.profile == profile && g.start == *start),
            VOp::CreateVgpu {
                type_name,
                vf,
                uuid,
                ..
            } => obs.vgpus.iter().any(|v| {
                v.type_name.as_deref() == Some(type_name.as_str())
                    && vf.as_ref().is_none_or(|f| v.handle.vf() == f)
                    && uuid
                        .as_ref()
                        .is_none_or(|u| matches!(&v.handle, Handle::Mdev { uuid: x, .. } if x == u))
            }),
        }
    }
}

fn same_handle(a: &Handle, b: &Handle) -> bool {
    match (a, b) {
        (Handle::Mdev { uuid: x, .. }, Handle::Mdev { uuid: y, .. }) => x == y,
        (Handle::Vf { bdf: x }, Handle::Vf { bdf: y }) => x == y,
        _ => false,
    }
}

impl fmt::Display for VOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VOp::SetVfs { gpu, count } => write!(f, "GPU {gpu}: enable {count} VFs"),
            VOp::DestroyVgpu {
                gpu,
                handle,
                type_name,
            } => write!(
                f,
                "GPU {gpu}: destroy {} ({handle})",
                type_name.as_deref().unwrap_or("vGPU of unknown type")
            ),
            VOp::DestroyGi {
                gpu,
                profile,
                start,
                gi_id,
            } => {
                write!(
                    f,
                    "GPU {gpu}: destroy idle GPU instance {profile}@{start} (GI {gi_id})"
                )
            }
            VOp::CreateGi {
                gpu,
                profile,
                start,
            } => write!(f, "GPU {gpu}: create GPU instance {profile}@{start}"),
            VOp::CreateVgpu {
                gpu,
                type_name,
                vf,
                uuid,
            } => {
                write!(f, "GPU {gpu}: create {type_name}")?;
                if let Some(v) = vf {
                    write!(f, " on VF {v}")?;
                }
                if let Some(u) = uuid {
                    write!(f, " as mdev {u}")?;
                }
                Ok(())
            }
        }
    }
}

/// A GPU instance as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GiObs {
    /// GI ID.
    pub gi_id: u32,
    /// Profile.
    pub profile: String,
    /// Placement start.
    pub start: u8,
    /// Something uses it (host processes, or a vGPU's VM as the MIG backend reports it).
    pub busy: bool,
}

/// What the agent observed of one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The GPU.
    pub gpu: HostGpu,
    /// Its vGPUs.
    pub vgpus: Vec<Vgpu>,
    /// MIG mode (current).
    pub mig_on: bool,
    /// Its GPU instances (MIG on).
    pub gis: Vec<GiObs>,
}

/// Why the agent leaves a GPU as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// vGPUs that VMs hold are not in the desired set.
    Busy {
        /// The GPU.
        gpu: String,
        /// The vGPUs (`TYPE at HANDLE`).
        busy: Vec<String>,
    },
    /// vGPUs whose type the host does not name are not in the desired set.
    UnknownType {
        /// The GPU.
        gpu: String,
        /// Their handles.
        handles: Vec<String>,
    },
    /// Time-sliced types of different frame buffer sizes without mixed-size mode.
    SameSize {
        /// The GPU.
        gpu: String,
        /// `TYPE (N MiB)` of each size.
        types: Vec<String>,
    },
    /// More vGPUs of a type than one GPU takes, or more vGPUs than VFs.
    TooMany {
        /// The GPU.
        gpu: String,
        /// What is too many.
        what: String,
    },
    /// MIG-backed types on a GPU with MIG off, or time-sliced ones with MIG on.
    MigMode {
        /// The GPU.
        gpu: String,
        /// MIG mode now.
        mig_on: bool,
        /// The types that need the other mode.
        types: Vec<String>,
    },
    /// The GPU instances MIG-backed types need do not fit beside those in use.
    NoPlacement {
        /// The GPU.
        gpu: String,
        /// The profiles that do not fit.
        profiles: Vec<String>,
    },
    /// VFs are enabled with another count than asked, or an explicit VF is not one of them.
    Vfs {
        /// The GPU.
        gpu: String,
        /// What is wrong.
        what: String,
    },
    /// A type this board does not have, or a board the catalog does not know.
    Catalog {
        /// The GPU.
        gpu: String,
        /// The catalog's message.
        what: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Busy { gpu, busy } => write!(
                f,
                "GPU {gpu}: left unchanged: {} held by a running VM and not in the desired set; a vGPU a VM uses is never destroyed: add it to the desired set, or stop the VM and apply again",
                busy.join(", ")
            ),
            Refusal::UnknownType { gpu, handles } => write!(
                f,
                "GPU {gpu}: left unchanged: the host does not name the type of {} (no VF lists it any more), so tessera will not destroy it; name it in the desired set by its VF, or remove it by hand",
                handles.join(", ")
            ),
            Refusal::SameSize { gpu, types } => write!(
                f,
                "GPU {gpu}: left unchanged: {} have different frame buffer sizes; without mixed-size mode all time-sliced vGPUs of one GPU must have the same frame buffer size (different series of that size may mix); use one size, or enable mixed-size mode (`nvidia-smi vgpu -shm 1` before any vGPU exists) and set `mixed_size: true`",
                types.join(" and ")
            ),
            Refusal::TooMany { gpu, what } => write!(f, "GPU {gpu}: left unchanged: {what}"),
            Refusal::MigMode { gpu, mig_on, types } => write!(
                f,
                "GPU {gpu}: left unchanged: {} need{} MIG mode {}, and it is {}; {}",
                types.join(", "),
                if types.len() == 1 { "s" } else { "" },
                if *mig_on { "off" } else { "on" },
                if *mig_on { "on" } else { "off" },
                if *mig_on {
                    "ask for MIG-backed types (`<board>-<g>-<N>C`), or disable MIG mode with no instances"
                } else {
                    "enable MIG mode first (`tessera agent mig-mode --gpu N --enable`, or `nvidia-smi -i N -mig 1`)"
                }
            ),
            Refusal::NoPlacement { gpu, profiles } => write!(
                f,
                "GPU {gpu}: left unchanged: GPU instances {} do not fit beside the instances in use; ask for fewer or smaller MIG-backed vGPUs",
                profiles.join(", ")
            ),
            Refusal::Vfs { gpu, what } => write!(f, "GPU {gpu}: left unchanged: {what}"),
            Refusal::Catalog { gpu, what } => write!(f, "GPU {gpu}: {what}"),
        }
    }
}

/// Place GPU instances of `needed` beside `occupied` (depth-first over placements, largest
/// profile first; the first solution in placement order).
pub fn place_gis(
    model: &GpuModel,
    occupied: &[Placed],
    needed: &[String],
) -> Option<Vec<(String, u8)>> {
    let mut idx: Vec<tessera_model::ProfileIdx> = needed
        .iter()
        .map(|p| model.profile_named(p))
        .collect::<Option<_>>()?;
    idx.sort_by_key(|p| (std::cmp::Reverse(model.profile(*p).memory_slices), p.0));
    fn go(
        model: &GpuModel,
        state: &LayoutState,
        rest: &[tessera_model::ProfileIdx],
        out: &mut Vec<Placed>,
    ) -> bool {
        let Some((&p, tail)) = rest.split_first() else {
            return true;
        };
        for &s in &model.profile(p).placements {
            let pl = Placed::new(p, s);
            if state.fits(model, pl) {
                let mut next = *state;
                next.add(model, pl);
                out.push(pl);
                if go(model, &next, tail, out) {
                    return true;
                }
                out.pop();
            }
        }
        false
    }
    let mut out = Vec::new();
    if go(model, &LayoutState::of(model, occupied), &idx, &mut out) {
        Some(
            out.into_iter()
                .map(|p| (model.profile(p.profile).name.clone(), p.start))
                .collect(),
        )
    } else {
        None
    }
}

/// The pure diff from `obs` to `desired` on a GPU of `board` (MIG model `mig` for boards with
/// MIG). See the module docs for the order and the refusals.
pub fn plan(
    board: &Board,
    mig: Option<&GpuModel>,
    desired: &DesiredGpu,
    obs: &Observed,
) -> Result<Vec<VOp>, Refusal> {
    let gpu = obs.gpu.bdf.clone();
    let cat = |e: crate::catalog::CatalogError| Refusal::Catalog {
        gpu: gpu.clone(),
        what: e.to_string(),
    };
    // Resolve desired types against the catalog.
    let mut wanted: Vec<(
        crate::catalog::VgpuType,
        u32,
        Option<String>,
        Option<String>,
    )> = Vec::new();
    for d in &desired.vgpus {
        let t = board.vgpu_type(&d.type_name).map_err(cat)?.clone();
        let explicit = d.vf.is_some() || d.uuid.is_some();
        wanted.push((
            t,
            if explicit { 1 } else { d.count.unwrap_or(1) },
            d.vf.clone(),
            d.uuid.clone(),
        ));
    }
    // Per-type counts within the board's limits; one size unless mixed-size mode.
    let mut per_type: BTreeMap<String, (u32, &crate::catalog::VgpuType)> = BTreeMap::new();
    for (t, n, _, _) in &wanted {
        per_type.entry(t.name.clone()).or_insert((0, t)).0 += n;
    }
    for (name, (n, t)) in &per_type {
        let max = if desired.mixed_size {
            t.max_mixed.unwrap_or(t.max)
        } else {
            t.max
        };
        if *n > max {
            return Err(Refusal::TooMany {
                gpu,
                what: format!("{n} x {name} asked, a GPU takes at most {max}"),
            });
        }
    }
    let sliced: Vec<&crate::catalog::VgpuType> = per_type
        .values()
        .map(|(_, t)| *t)
        .filter(|t| !t.is_mig_backed())
        .collect();
    let mig_backed: Vec<String> = per_type
        .values()
        .filter(|(_, t)| t.is_mig_backed())
        .map(|(_, t)| t.name.clone())
        .collect();
    if !desired.mixed_size {
        let mut sizes: BTreeMap<u64, String> = BTreeMap::new();
        for t in &sliced {
            sizes.entry(t.fb_mib).or_insert_with(|| t.name.clone());
        }
        if sizes.len() > 1 {
            return Err(Refusal::SameSize {
                gpu,
                types: sizes
                    .iter()
                    .map(|(fb, n)| format!("{n} ({fb} MiB)"))
                    .collect(),
            });
        }
    } else {
        let total: u64 = per_type
            .values()
            .filter(|(_, t)| !t.is_mig_backed())
            .map(|(n, t)| *n as u64 * t.fb_mib)
            .sum();
        if total > board.framebuffer_mib {
            return Err(Refusal::TooMany {
                gpu,
                what: format!(
                    "the time-sliced vGPUs asked need {total} MiB, the GPU has {} MiB",
                    board.framebuffer_mib
                ),
            });
        }
    }
    if !sliced.is_empty() && !mig_backed.is_empty() {
        return Err(Refusal::MigMode {
            gpu,
            mig_on: obs.mig_on,
            types: if obs.mig_on {
                sliced.iter().map(|t| t.name.clone()).collect()
            } else {
                mig_backed
            },
        });
    }
    if obs.mig_on && !sliced.is_empty() {
        return Err(Refusal::MigMode {
            gpu,
            mig_on: true,
            types: sliced.iter().map(|t| t.name.clone()).collect(),
        });
    }
    if !obs.mig_on && !mig_backed.is_empty() {
        return Err(Refusal::MigMode {
            gpu,
            mig_on: false,
            types: mig_backed,
        });
    }

    // VFs.
    let total: u32 = wanted.iter().map(|w| w.1).sum();
    let enable = if obs.gpu.vfs.is_empty() && total > 0 {
        let n = desired.vfs.unwrap_or(obs.gpu.total_vfs);
        if n > obs.gpu.total_vfs {
            return Err(Refusal::Vfs {
                gpu,
                what: format!("{n} VFs asked, the GPU has {}", obs.gpu.total_vfs),
            });
        }
        Some(n)
    } else {
        if let Some(n) = desired.vfs {
            if !obs.gpu.vfs.is_empty() && obs.gpu.vfs.len() as u32 != n {
                return Err(Refusal::Vfs {
                    gpu,
                    what: format!(
                        "{} VFs are enabled and {n} are asked; changing the count removes every VF and its vGPU, which tessera does not do: set it by hand once the GPU is empty, or drop `vfs`",
                        obs.gpu.vfs.len()
                    ),
                });
            }
        }
        None
    };
    let vf_count = enable.unwrap_or(obs.gpu.vfs.len() as u32);
    if total > vf_count {
        return Err(Refusal::TooMany {
            gpu,
            what: format!("{total} vGPUs asked, the GPU has {vf_count} VFs (one vGPU each)"),
        });
    }
    if obs.gpu.framework == Some(Framework::VendorVfio) {
        if let Some((t, ..)) = wanted.iter().find(|w| w.3.is_some()) {
            return Err(Refusal::Vfs {
                gpu,
                what: format!(
                    "{} is asked under an mdev UUID, but this GPU uses vendor VFIO (no mdevs): name its VF instead",
                    t.name
                ),
            });
        }
    }
    for (_, _, vf, _) in &wanted {
        if let Some(vf) = vf {
            if enable.is_none() && !obs.gpu.vfs.contains(vf) {
                return Err(Refusal::Vfs {
                    gpu,
                    what: format!("{vf} is not one of its VFs ({})", obs.gpu.vfs.join(", ")),
                });
            }
        }
    }

    // Match what exists: explicit entries first, then counts (VMs' vGPUs first, then VF order).
    let mut claimed = vec![false; obs.vgpus.len()];
    let mut creates: Vec<(crate::catalog::VgpuType, Option<String>, Option<String>)> = Vec::new();
    for (t, _, vf, uuid) in wanted.iter().filter(|w| w.2.is_some() || w.3.is_some()) {
        let at = obs.vgpus.iter().position(|v| {
            vf.as_ref().is_some_and(|f| v.handle.vf() == f)
                || uuid
                    .as_ref()
                    .is_some_and(|u| matches!(&v.handle, Handle::Mdev { uuid: x, .. } if x == u))
        });
        match at {
            Some(i)
                if obs.vgpus[i].type_name.as_deref() == Some(t.name.as_str()) && !claimed[i] =>
            {
                claimed[i] = true
            }
            _ => creates.push((t.clone(), vf.clone(), uuid.clone())),
        }
    }
    let reserved: Vec<&String> = wanted.iter().filter_map(|w| w.2.as_ref()).collect();
    for (t, n, _, _) in wanted.iter().filter(|w| w.2.is_none() && w.3.is_none()) {
        let mut idx: Vec<usize> = (0..obs.vgpus.len())
            .filter(|&i| {
                !claimed[i]
                    && obs.vgpus[i].type_name.as_deref() == Some(t.name.as_str())
                    && !reserved
                        .iter()
                        .any(|r| obs.vgpus[i].handle.vf() == r.as_str())
            })
            .collect();
        idx.sort_by_key(|&i| (!obs.vgpus[i].open, i));
        let keep = idx.len().min(*n as usize);
        for &i in &idx[..keep] {
            claimed[i] = true;
        }
        for _ in keep..*n as usize {
            creates.push((t.clone(), None, None));
        }
    }
    let destroy: Vec<&Vgpu> = obs
        .vgpus
        .iter()
        .zip(&claimed)
        .filter(|(_, c)| !**c)
        .map(|(v, _)| v)
        .collect();
    let busy: Vec<String> = destroy
        .iter()
        .filter(|v| v.open)
        .map(|v| {
            format!(
                "{} at {}",
                v.type_name.as_deref().unwrap_or("vGPU"),
                v.handle
            )
        })
        .collect();
    if !busy.is_empty() {
        return Err(Refusal::Busy { gpu, busy });
    }
    let unknown: Vec<String> = destroy
        .iter()
        .filter(|v| v.type_name.is_none())
        .map(|v| v.handle.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(Refusal::UnknownType {
            gpu,
            handles: unknown,
        });
    }

    // GPU instances for the MIG-backed creates.
    let mut gi_ops = Vec::new();
    let mut gi_creates = Vec::new();
    let need: Vec<String> = creates
        .iter()
        .filter_map(|(t, _, _)| t.mig.clone())
        .collect();
    if !need.is_empty() {
        let model = mig.ok_or_else(|| Refusal::Catalog {
            gpu: gpu.clone(),
            what: format!("board {} has MIG-backed types but no MIG model", board.key),
        })?;
        // Enabling VFs wipes the GPU instances (sriov-manage does); none are left to reuse.
        let gis: Vec<&GiObs> = if enable.is_some() {
            Vec::new()
        } else {
            obs.gis.iter().collect()
        };
        let held: Vec<u32> = obs.vgpus.iter().filter_map(|v| v.gi_id).collect();
        let freed: Vec<String> = destroy
            .iter()
            .filter_map(|v| board.vgpu_type(v.type_name.as_deref()?).ok()?.mig.clone())
            .collect();
        let mut free: Vec<&GiObs> = gis
            .iter()
            .copied()
            .filter(|g| !g.busy && !held.contains(&g.gi_id))
            .collect();
        let mut missing = Vec::new();
        let mut freed_left = freed.clone();
        for p in &need {
            if let Some(i) = free.iter().position(|g| &g.profile == p) {
                free.remove(i);
            } else if let Some(i) = freed_left.iter().position(|f| f == p) {
                freed_left.remove(i);
            } else {
                missing.push(p.clone());
            }
        }
        if !missing.is_empty() {
            let to_placed = |g: &&GiObs| {
                model
                    .profile_named(&g.profile)
                    .map(|i| Placed::new(i, g.start))
            };
            let all: Vec<Placed> = gis.iter().filter_map(to_placed).collect();
            let idle: Vec<&GiObs> = gis
                .iter()
                .copied()
                .filter(|g| !g.busy && !held.contains(&g.gi_id))
                .collect();
            let spare: Vec<&GiObs> = free.clone();
            let without = |drop: &[&GiObs]| -> Vec<Placed> {
                gis.iter()
                    .filter(|g| !drop.iter().any(|s| s.gi_id == g.gi_id))
                    .filter_map(to_placed)
                    .collect()
            };
            let destroy_gis = |drop: &[&GiObs]| -> Vec<VOp> {
                drop.iter()
                    .map(|g| VOp::DestroyGi {
                        gpu: gpu.clone(),
                        gi_id: g.gi_id,
                        profile: g.profile.clone(),
                        start: g.start,
                    })
                    .collect()
            };
            // Cheapest first: keep every instance; else drop the idle ones nobody needs;
            // else drop every idle instance and place all that the new vGPUs need afresh.
            let all_need: Vec<String> = need.iter().filter(|_| freed.is_empty()).cloned().collect();
            if let Some(p) = place_gis(model, &all, &missing) {
                gi_creates = p;
            } else if let Some(p) = place_gis(model, &without(&spare), &missing) {
                gi_ops = destroy_gis(&spare);
                gi_creates = p;
            } else if let Some(p) = (!all_need.is_empty())
                .then(|| place_gis(model, &without(&idle), &all_need))
                .flatten()
            {
                gi_ops = destroy_gis(&idle);
                gi_creates = p;
            } else if freed.is_empty() {
                return Err(Refusal::NoPlacement {
                    gpu,
                    profiles: missing,
                });
            } else {
                // Instances held by the vGPUs to destroy free up with them; which ones is
                // not always visible (mdev), so place after the destroys, next round.
                creates.clear();
            }
        }
    }

    let mut ops = Vec::new();
    let mut destroy = destroy;
    destroy.sort_by(|a, b| a.handle.cmp(&b.handle));
    for v in destroy {
        ops.push(VOp::DestroyVgpu {
            gpu: gpu.clone(),
            handle: v.handle.clone(),
            type_name: v.type_name.clone(),
        });
    }
    if let Some(n) = enable {
        ops.push(VOp::SetVfs {
            gpu: gpu.clone(),
            count: n,
        });
    }
    ops.extend(gi_ops);
    for (profile, start) in gi_creates {
        ops.push(VOp::CreateGi {
            gpu: gpu.clone(),
            profile,
            start,
        });
    }
    for (t, vf, uuid) in creates {
        ops.push(VOp::CreateVgpu {
            gpu: gpu.clone(),
            type_name: t.name,
            vf,
            uuid,
        });
    }
    Ok(ops)
}

/// How an apply ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ApplyResult {
    /// The GPU holds the desired vGPUs.
    Converged,
    /// Nothing was changed; why.
    Refused {
        /// The reason.
        refusal: Refusal,
    },
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// The GPU.
    pub gpu: String,
    /// Ops that succeeded, in order.
    pub applied: Vec<VOp>,
    /// Ops a crash had cut short, with whether they had taken effect.
    pub recovered: Vec<(VOp, bool)>,
    /// The end.
    pub result: ApplyResult,
}

/// Where a simulated crash strikes (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashWhen {
    /// After the intent is journaled, before the host call.
    AfterIntent,
    /// After the host call, before the outcome is journaled.
    AfterCall,
}

/// Why an apply stopped without converging or refusing.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Observing the host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The journal failed: nothing more is written to the host.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The GPU is not on this host.
    #[error("no GPU {gpu} on this host ({known}); see `tessera vgpu status`")]
    UnknownGpu {
        /// What was asked.
        gpu: String,
        /// What there is.
        known: String,
    },
    /// A simulated crash (tests).
    #[error("simulated crash during: {op}")]
    Crash {
        /// The op.
        op: String,
    },
    /// The host kept failing.
    #[error("GPU {gpu}: gave up after {rounds} rounds; last error: {last}")]
    GaveUp {
        /// The GPU.
        gpu: String,
        /// Rounds tried.
        rounds: u32,
        /// The last error.
        last: String,
    },
}

/// The level-triggered vGPU agent for one host.
pub struct Agent<'a> {
    host: &'a mut dyn VgpuHost,
    journal: &'a mut dyn Journal,
    catalog: &'a VgpuCatalog,
    sleeper: &'a mut dyn Sleeper,
    crash: Option<(u32, CrashWhen)>,
    started: u32,
    max_rounds: u32,
}

impl fmt::Debug for Agent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("host", &self.host.describe())
            .finish()
    }
}

impl<'a> Agent<'a> {
    /// An agent on `host`, recording in `journal`, sleeping between failed rounds with
    /// `sleeper`.
    pub fn new(
        host: &'a mut dyn VgpuHost,
        journal: &'a mut dyn Journal,
        catalog: &'a VgpuCatalog,
        sleeper: &'a mut dyn Sleeper,
    ) -> Agent<'a> {
        Agent {
            host,
            journal,
            catalog,
            sleeper,
            crash: None,
            started: 0,
            max_rounds: 12,
        }
    }

    /// Crash (return [`AgentError::Crash`]) at the `n`-th op of this run (tests).
    pub fn crash_at(mut self, crash: Option<(u32, CrashWhen)>) -> Self {
        self.crash = crash;
        self
    }

    /// What the agent sees of GPU `bdf`.
    pub fn observe(&mut self, bdf: &str) -> Result<Observed, AgentError> {
        observe(self.host, bdf)
    }

    /// Take GPU `desired.gpu` to the desired vGPUs.
    pub fn apply_gpu(&mut self, desired: &DesiredGpu) -> Result<ApplyReport, AgentError> {
        let mut report = ApplyReport {
            gpu: desired.gpu.clone(),
            applied: Vec::new(),
            recovered: Vec::new(),
            result: ApplyResult::Converged,
        };
        // Roll forward: record what the cut-short ops of this GPU did, then plan from what is there.
        for (seq, op) in dangling(self.journal) {
            if op.gpu() != desired.gpu {
                continue;
            }
            let obs = self.observe(&desired.gpu)?;
            let applied = op.visible_in(&obs);
            self.journal.outcome(
                seq,
                if applied {
                    "recovered: applied"
                } else {
                    "recovered: not applied"
                },
            )?;
            report.recovered.push((op, applied));
        }
        let mut last = String::new();
        for round in 0..self.max_rounds {
            let obs = self.observe(&desired.gpu)?;
            let board = match obs.gpu.board.as_deref().map(|b| self.catalog.board(b)) {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    return Ok(ApplyReport {
                        result: ApplyResult::Refused {
                            refusal: Refusal::Catalog {
                                gpu: desired.gpu.clone(),
                                what: e.to_string(),
                            },
                        },
                        ..report
                    })
                }
                None => {
                    return Ok(ApplyReport {
                        result: ApplyResult::Refused {
                            refusal: Refusal::Catalog {
                                gpu: desired.gpu.clone(),
                                what: format!(
                                    "PCI device {} is not in the vGPU catalog; tessera knows {}",
                                    obs.gpu.pci_device_id,
                                    self.catalog
                                        .boards
                                        .iter()
                                        .map(|b| b.key.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            },
                        },
                        ..report
                    })
                }
            };
            let model = board
                .mig_model
                .as_deref()
                .and_then(|m| tessera_model::Catalog::builtin().get(m));
            let ops = match plan(board, model, desired, &obs) {
                Ok(ops) => ops,
                Err(refusal) => {
                    report.result = ApplyResult::Refused { refusal };
                    return Ok(report);
                }
            };
            if ops.is_empty() {
                return Ok(report);
            }
            let mut failed = false;
            for op in ops {
                let op = match self.resolve(op) {
                    Ok(op) => op,
                    Err(e) => {
                        last = e.to_string();
                        failed = true;
                        break;
                    }
                };
                let seq = self.journal.intent(&op)?;
                self.started += 1;
                if self.crash == Some((self.started, CrashWhen::AfterIntent)) {
                    return Err(AgentError::Crash { op: op.to_string() });
                }
                let r = self.execute(&op);
                if self.crash == Some((self.started, CrashWhen::AfterCall)) {
                    return Err(AgentError::Crash { op: op.to_string() });
                }
                match r {
                    Ok(()) => {
                        self.journal.outcome(seq, "done")?;
                        report.applied.push(op);
                    }
                    Err(e) => {
                        self.journal.outcome(seq, &format!("failed: {e}"))?;
                        last = e.to_string();
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.sleeper
                    .sleep(Duration::from_millis(50u64 << round.min(5)));
            }
        }
        Err(AgentError::GaveUp {
            gpu: desired.gpu.clone(),
            rounds: self.max_rounds,
            last,
        })
    }

    /// One op: resolved, journaled, performed, its outcome journaled.
    fn run_op(&mut self, op: VOp) -> Result<VOp, AgentError> {
        let op = self.resolve(op)?;
        let seq = self.journal.intent(&op)?;
        match self.execute(&op) {
            Ok(()) => {
                self.journal.outcome(seq, "done")?;
                Ok(op)
            }
            Err(e) => {
                self.journal.outcome(seq, &format!("failed: {e}"))?;
                Err(e.into())
            }
        }
    }

    /// Create one vGPU of `type_name` on GPU `gpu` beside what is there (nothing is
    /// destroyed): VFs are enabled if none are, and a MIG-backed type gets a GPU instance of
    /// its profile first when no free one exists. Every write is journaled.
    pub fn create_one(
        &mut self,
        gpu: &str,
        type_name: &str,
        at: &Target,
    ) -> Result<Vgpu, AgentError> {
        let obs = self.observe(gpu)?;
        let refuse = |what: String| {
            AgentError::Host(HostError::Unsupported {
                what: format!("create {type_name} on GPU {gpu}"),
                why: what,
            })
        };
        let board = obs.gpu.board.as_deref().ok_or_else(|| {
            refuse(format!(
                "PCI device {} is not in the vGPU catalog",
                obs.gpu.pci_device_id
            ))
        })?;
        let board = self.catalog.board(board).map_err(HostError::from)?;
        let t = board.vgpu_type(type_name).map_err(HostError::from)?.clone();
        if t.is_mig_backed() != obs.mig_on {
            return Err(refuse(format!(
                "{} needs MIG mode {}, and it is {}",
                t.name,
                if t.is_mig_backed() { "on" } else { "off" },
                if obs.mig_on { "on" } else { "off" }
            )));
        }
        let enable = obs.gpu.vfs.is_empty();
        if enable {
            self.run_op(VOp::SetVfs {
                gpu: gpu.to_string(),
                count: obs.gpu.total_vfs,
            })?;
        }
        if let Some(profile) = &t.mig {
            let held: Vec<u32> = obs.vgpus.iter().filter_map(|v| v.gi_id).collect();
            let gis: Vec<&GiObs> = if enable {
                Vec::new()
            } else {
                obs.gis.iter().collect()
            };
            let free = gis
                .iter()
                .any(|g| &g.profile == profile && !g.busy && !held.contains(&g.gi_id));
            if !free {
                let model = board
                    .mig_model
                    .as_deref()
                    .and_then(|m| tessera_model::Catalog::builtin().get(m))
                    .ok_or_else(|| refuse("the board has no MIG model".into()))?;
                let occupied: Vec<Placed> = gis
                    .iter()
                    .filter_map(|g| {
                        model
                            .profile_named(&g.profile)
                            .map(|i| Placed::new(i, g.start))
                    })
                    .collect();
                let (p, start) = place_gis(model, &occupied, std::slice::from_ref(profile))
                    .and_then(|v| v.into_iter().next())
                    .ok_or_else(|| {
                        refuse(format!(
                            "a {profile} GPU instance does not fit beside the instances there"
                        ))
                    })?;
                self.run_op(VOp::CreateGi {
                    gpu: gpu.to_string(),
                    profile: p,
                    start,
                })?;
            }
        }
        let op = self.run_op(VOp::CreateVgpu {
            gpu: gpu.to_string(),
            type_name: t.name.clone(),
            vf: at.vf.clone(),
            uuid: at.uuid.clone(),
        })?;
        let obs = self.observe(gpu)?;
        let vf = match &op {
            VOp::CreateVgpu { vf, .. } => vf.clone(),
            _ => None,
        };
        obs.vgpus
            .into_iter()
            .find(|v| {
                Some(v.handle.vf()) == vf.as_deref()
                    && v.type_name.as_deref() == Some(t.name.as_str())
            })
            .ok_or_else(|| refuse("it did not show after creation".into()))
    }

    /// Destroy one vGPU no VM holds, journaled.
    pub fn destroy_one(&mut self, vgpu: &Vgpu) -> Result<(), AgentError> {
        self.run_op(VOp::DestroyVgpu {
            gpu: vgpu.gpu.clone(),
            handle: vgpu.handle.clone(),
            type_name: vgpu.type_name.clone(),
        })
        .map(|_| ())
    }

    /// Fix what the plan leaves to run time: the VF (and mdev UUID) of a counted vGPU.
    fn resolve(&mut self, op: VOp) -> Result<VOp, HostError> {
        let VOp::CreateVgpu {
            gpu,
            type_name,
            vf,
            uuid,
        } = op
        else {
            return Ok(op);
        };
        let g = self.gpu(&gpu)?;
        let vf = match vf {
            Some(v) => v,
            None => {
                let offers = self.host.offers(&g)?;
                offers
                    .iter()
                    .find(|o| o.type_name == type_name)
                    .map(|o| o.vf.clone())
                    .ok_or_else(|| HostError::NoRoom {
                        gpu: gpu.clone(),
                        type_name: type_name.clone(),
                        why: crate::host::no_room_why(
                            &type_name,
                            &self.host.vgpus(&g).unwrap_or_default(),
                            None,
                        ),
                    })?
            }
        };
        let uuid = match (g.framework, uuid) {
            (Some(Framework::Mdev), None) => Some(crate::host::uuid_for_vf(&vf)),
            (_, u) => u,
        };
        Ok(VOp::CreateVgpu {
            gpu,
            type_name,
            vf: Some(vf),
            uuid,
        })
    }

    fn gpu(&mut self, bdf: &str) -> Result<HostGpu, HostError> {
        let gpus = self.host.gpus()?;
        gpus.iter()
            .find(|g| g.bdf == bdf)
            .cloned()
            .ok_or_else(|| HostError::UnknownGpu {
                bdf: bdf.to_string(),
                known: gpus.iter().map(|g| g.bdf.clone()).collect(),
            })
    }

    fn execute(&mut self, op: &VOp) -> Result<(), HostError> {
        let mig_err = |gpu: &str, e| HostError::Mig {
            gpu: gpu.to_string(),
            source: Box::new(e),
        };
        match op {
            VOp::SetVfs { gpu, count } => self.host.set_vfs(gpu, *count),
            VOp::DestroyVgpu { gpu, handle, .. } => {
                let g = self.gpu(gpu)?;
                match self
                    .host
                    .vgpus(&g)?
                    .into_iter()
                    .find(|v| same_handle(&v.handle, handle))
                {
                    Some(v) => self.host.destroy(&v),
                    None => Ok(()),
                }
            }
            VOp::DestroyGi {
                gpu,
                gi_id,
                profile,
                start,
            } => {
                let (mig, idx) = self.host.mig(gpu).ok_or_else(|| no_mig(gpu))?;
                let inst = mig.instances(idx).map_err(|e| mig_err(gpu, e))?;
                match inst
                    .iter()
                    .find(|i| i.gi_id == *gi_id && &i.profile == profile && i.start == *start)
                {
                    Some(i) => match i.idle() {
                        Some(idle) => mig.destroy_gi(&idle).map_err(|e| mig_err(gpu, e)),
                        None => Err(HostError::Unsupported {
                            what: format!("destroy GPU instance {profile}@{start}"),
                            why: "it is in use now".into(),
                        }),
                    },
                    None => Ok(()),
                }
            }
            VOp::CreateGi {
                gpu,
                profile,
                start,
            } => {
                let (mig, idx) = self.host.mig(gpu).ok_or_else(|| no_mig(gpu))?;
                mig.create_gi(idx, profile, *start)
                    .map(|_| ())
                    .map_err(|e| mig_err(gpu, e))
            }
            VOp::CreateVgpu {
                gpu,
                type_name,
                vf,
                uuid,
            } => {
                let g = self.gpu(gpu)?;
                self.host
                    .create(
                        &g,
                        type_name,
                        &Target {
                            vf: vf.clone(),
                            uuid: uuid.clone(),
                        },
                    )
                    .map(|_| ())
            }
        }
    }
}

fn no_mig(gpu: &str) -> HostError {
    HostError::Unsupported {
        what: format!("GPU {gpu}: GPU instances"),
        why: "this host has no MIG backend (NVML); MIG-backed vGPUs need one".into(),
    }
}

/// What `host` shows of GPU `bdf`: its VFs, vGPUs, MIG mode and GPU instances.
pub fn observe(host: &mut dyn VgpuHost, bdf: &str) -> Result<Observed, AgentError> {
    let gpus = host.gpus()?;
    let gpu =
        gpus.iter()
            .find(|g| g.bdf == bdf)
            .cloned()
            .ok_or_else(|| AgentError::UnknownGpu {
                gpu: bdf.to_string(),
                known: if gpus.is_empty() {
                    "none".into()
                } else {
                    gpus.iter()
                        .map(|g| g.bdf.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
    let vgpus = host.vgpus(&gpu)?;
    let (mig_on, gis) = match host.mig(bdf) {
        Some((mig, idx)) => {
            let on = mig.mig_mode(idx).map(|m| m.current).unwrap_or(false);
            let gis = if on {
                mig.instances(idx)
                    .map_err(|e| HostError::Mig {
                        gpu: bdf.to_string(),
                        source: Box::new(e),
                    })?
                    .into_iter()
                    .map(|i| GiObs {
                        busy: i.is_busy(),
                        gi_id: i.gi_id,
                        profile: i.profile,
                        start: i.start,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (on, gis)
        }
        None => (false, Vec::new()),
    };
    Ok(Observed {
        gpu,
        vgpus,
        mig_on,
        gis,
    })
}
