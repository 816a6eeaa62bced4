//! The vGPU placer: where on a host's GPUs new vGPUs go, as a desired state `apply` can take.
//!
//! A request names a type (`A30-1-6C`) or a frame buffer and an isolation class: `guaranteed`
//! becomes the smallest MIG-backed type of at least that frame buffer (a dedicated share of the
//! SMs; the seed's A30 study measured small loaded GEMMs at 6550 vs 1410 GFLOP/s for MIG-backed
//! vs time-sliced), `burstable` the smallest time-sliced one (the whole GPU when others idle).
//!
//! Rules, per GPU: one vGPU per VF; at most the type's maximum; time-sliced vGPUs only with MIG
//! mode off and, without mixed-size mode, all of one frame buffer size; MIG-backed ones only
//! with MIG mode on, each on its own GPU instance, reused when a free one of the profile exists,
//! else placed on the MIG grid beside every instance there (those of containers included) with
//! the catalog's rules. What is there stays; nothing is moved.
//!
//! Order and choice (deterministic: same input, same output): vGPUs are placed largest frame
//! buffer first; each goes to the GPU where it fits best: reusing a free GPU instance, then
//! joining vGPUs of its size, then the fewest free VFs or memory slices left, then PCI order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_model::{GpuModel, Placed};

use crate::agent::{place_gis, DesiredGpu, DesiredVgpu, Observed};
use crate::catalog::{Board, VgpuCatalog, VgpuType};

/// Isolation class of a sized request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// A MIG-backed vGPU: its own SMs and memory.
    Guaranteed,
    /// A time-sliced vGPU: the whole GPU in turns.
    Burstable,
}

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ask {
    /// This type.
    Type {
        /// Type name.
        name: String,
    },
    /// At least this frame buffer, with this isolation.
    Size {
        /// Frame buffer, MiB.
        fb_mib: u64,
        /// Isolation class.
        isolation: Isolation,
    },
}

/// `count` vGPUs of `ask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgpuRequest {
    /// What.
    pub ask: Ask,
    /// How many.
    pub count: u32,
}

/// A vGPU the placer could not place, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The request's index.
    pub request: usize,
    /// How many of it.
    pub count: u32,
    /// Why, in words.
    pub why: String,
}

/// The placer's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Desired state of every GPU that gets a new vGPU (what it holds plus the new ones).
    pub gpus: Vec<DesiredGpu>,
    /// (request index, GPU, type) of every placed vGPU, in placing order.
    pub placed: Vec<(usize, String, String)>,
    /// What did not fit.
    pub unplaced: Vec<Unplaced>,
}

/// How well a vGPU fits a GPU, lower is better: (class, what is left, PCI address).
type Cost = (u8, u32, String);

/// The best GPU so far for a vGPU: its cost, index, type and new GPU instance.
type Best = (Cost, usize, VgpuType, Option<Placed>);

struct GpuState<'a> {
    obs: &'a Observed,
    board: &'a Board,
    model: Option<&'a GpuModel>,
    vfs: u32,
    /// type name -> count (existing + planned).
    counts: BTreeMap<String, u32>,
    /// Occupied grid (existing + planned instances).
    occupied: Vec<Placed>,
    /// Free instances (profile), not yet promised.
    free_gis: Vec<String>,
    added: BTreeMap<String, u32>,
    plannable: bool,
}

/// Why a vGPU type does not fit a GPU now (a reason in [`Unplaced::why`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NoFit {
    #[error("the GPU holds a vGPU whose type the host does not name")]
    Unplannable,
    #[error("all {vfs} VFs hold vGPUs")]
    VfsFull { vfs: u32 },
    #[error("{count} of {name} already, the maximum")]
    AtMax { count: u32, name: String },
    #[error("MIG mode is on: only MIG-backed types")]
    MigOn,
    #[error(
        "time-sliced vGPUs of {fb_mib} MiB are there; without mixed-size mode one GPU holds one frame buffer size"
    )]
    MixedSize { fb_mib: u64 },
    #[error("MIG mode is off: only time-sliced types")]
    MigOff,
    #[error("the board has no MIG model")]
    NoMigModel,
    #[error("a {profile} GPU instance does not fit beside the instances there")]
    GiDoesNotFit { profile: String },
    #[error("unknown profile `{profile}`")]
    UnknownProfile { profile: String },
}

impl GpuState<'_> {
    fn total(&self) -> u32 {
        self.counts.values().sum()
    }

    fn sliced_fb(&self) -> Option<u64> {
        self.counts
            .keys()
            .filter_map(|n| self.board.vgpu_type(n).ok())
            .find(|t| !t.is_mig_backed())
            .map(|t| t.fb_mib)
    }

    fn free_slices(&self) -> u32 {
        let Some(m) = self.model else { return 0 };
        let mask = tessera_model::LayoutState::of(m, &self.occupied).mask;
        u32::from(m.memory_slices) - mask.count_ones()
    }

    /// Whether `t` fits now, and its cost (lower is better), and the GI it would take.
    fn fit(&self, t: &VgpuType) -> Result<(Cost, Option<Placed>), NoFit> {
        if !self.plannable {
            return Err(NoFit::Unplannable);
        }
        if self.total() >= self.vfs {
            return Err(NoFit::VfsFull { vfs: self.vfs });
        }
        let n = self.counts.get(&t.name).copied().unwrap_or(0);
        if n >= t.max {
            return Err(NoFit::AtMax {
                count: n,
                name: t.name.clone(),
            });
        }
        match &t.mig {
            None => {
                if self.obs.mig_on {
                    return Err(NoFit::MigOn);
                }
                let same = match self.sliced_fb() {
                    Some(fb) if fb != t.fb_mib => return Err(NoFit::MixedSize { fb_mib: fb }),
                    Some(_) => 0,
                    None => 1,
                };
                let left = (t.max - n - 1).min(self.vfs - self.total() - 1);
                Ok(((1 + same, left, self.obs.gpu.bdf.clone()), None))
            }
            Some(p) => {
                if !self.obs.mig_on {
                    return Err(NoFit::MigOff);
                }
                if self.free_gis.contains(p) {
                    return Ok(((0, 0, self.obs.gpu.bdf.clone()), None));
                }
                let model = self.model.ok_or(NoFit::NoMigModel)?;
                let placed = place_gis(model, &self.occupied, std::slice::from_ref(p))
                    .and_then(|v| v.into_iter().next())
                    .ok_or_else(|| NoFit::GiDoesNotFit { profile: p.clone() })?;
                let idx = model
                    .profile_named(&placed.0)
                    .ok_or_else(|| NoFit::UnknownProfile {
                        profile: placed.0.clone(),
                    })?;
                let pl = Placed::new(idx, placed.1);
                let left = self.free_slices() - u32::from(model.profile(idx).memory_slices);
                Ok(((2, left, self.obs.gpu.bdf.clone()), Some(pl)))
            }
        }
    }
}

/// The concrete type for `ask` on `board` (`None`: the board has none).
pub fn resolve_ask(board: &Board, ask: &Ask, mig_on: bool) -> Option<VgpuType> {
    match ask {
        Ask::Type { name } => board.vgpu_type(name).ok().cloned(),
        Ask::Size { fb_mib, isolation } => board
            .types
            .iter()
            .filter(|t| {
                t.fb_mib >= *fb_mib && t.is_mig_backed() == (*isolation == Isolation::Guaranteed)
            })
            .filter(|t| t.is_mig_backed() == mig_on)
            // ME variants hold the media engines: not for a plain size request.
            .filter(|t| !t.name.ends_with("ME"))
            .min_by_key(|t| (t.fb_mib, t.name.clone()))
            .cloned(),
    }
}

/// Place `requests` on the observed GPUs of a host (see the module docs).
pub fn place(catalog: &VgpuCatalog, gpus: &[Observed], requests: &[VgpuRequest]) -> Placement {
    let mut states: Vec<GpuState> = Vec::new();
    let mut sorted: Vec<&Observed> = gpus.iter().collect();
    sorted.sort_by(|a, b| a.gpu.bdf.cmp(&b.gpu.bdf));
    for o in sorted {
        let Some(board) = o.gpu.board.as_deref().and_then(|b| catalog.board(b).ok()) else {
            continue;
        };
        let model = board
            .mig_model
            .as_deref()
            .and_then(|m| tessera_model::Catalog::builtin().get(m));
        let mut counts = BTreeMap::new();
        let mut plannable = true;
        for v in &o.vgpus {
            match &v.type_name {
                Some(n) => *counts.entry(n.clone()).or_insert(0) += 1,
                None => plannable = false,
            }
        }
        let held: Vec<u32> = o.vgpus.iter().filter_map(|v| v.gi_id).collect();
        // MIG-backed vGPUs hold one instance each; on mdev the host does not say which, so
        // as many idle instances of each profile as there are vGPUs of it count as held.
        let mut free_gis: Vec<String> = o
            .gis
            .iter()
            .filter(|g| !g.busy && !held.contains(&g.gi_id))
            .map(|g| g.profile.clone())
            .collect();
        let mut unattributed: BTreeMap<String, i64> = BTreeMap::new();
        for v in o.vgpus.iter().filter(|v| v.gi_id.is_none()) {
            if let Some(p) = v
                .type_name
                .as_deref()
                .and_then(|n| board.vgpu_type(n).ok())
                .and_then(|t| t.mig.clone())
            {
                *unattributed.entry(p).or_insert(0) += 1;
            }
        }
        for g in o.gis.iter().filter(|g| g.busy && !held.contains(&g.gi_id)) {
            if let Some(n) = unattributed.get_mut(&g.profile) {
                *n -= 1;
            }
        }
        for (p, n) in unattributed {
            for _ in 0..n.max(0) {
                if let Some(i) = free_gis.iter().position(|f| *f == p) {
                    free_gis.remove(i);
                }
            }
        }
        let occupied = match model {
            Some(m) => o
                .gis
                .iter()
                .filter_map(|g| m.profile_named(&g.profile).map(|i| Placed::new(i, g.start)))
                .collect(),
            None => Vec::new(),
        };
        states.push(GpuState {
            obs: o,
            board,
            model,
            vfs: if o.gpu.vfs.is_empty() {
                o.gpu.total_vfs
            } else {
                o.gpu.vfs.len() as u32
            },
            counts,
            occupied,
            free_gis,
            added: BTreeMap::new(),
            plannable,
        });
    }

    // One unit per vGPU, largest frame buffer first (the largest type any board offers).
    let mut units: Vec<(usize, u64)> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let fb = match &r.ask {
            Ask::Size { fb_mib, .. } => *fb_mib,
            Ask::Type { name } => states
                .iter()
                .filter_map(|s| s.board.vgpu_type(name).ok())
                .map(|t| t.fb_mib)
                .max()
                .unwrap_or(0),
        };
        units.extend(std::iter::repeat_n((i, fb), r.count as usize));
    }
    units.sort_by_key(|&(i, fb)| (std::cmp::Reverse(fb), i));

    let mut placed = Vec::new();
    let mut unplaced: BTreeMap<(usize, String), u32> = BTreeMap::new();
    for (i, _) in units {
        let mut best: Option<Best> = None;
        let mut reasons: Vec<String> = Vec::new();
        for (si, s) in states.iter().enumerate() {
            let Some(t) = resolve_ask(s.board, &requests[i].ask, s.obs.mig_on) else {
                reasons.push(format!(
                    "{}: {} has no such type{}",
                    s.obs.gpu.bdf,
                    s.board.key,
                    if s.obs.mig_on {
                        " with MIG on"
                    } else {
                        " with MIG off"
                    }
                ));
                continue;
            };
            match s.fit(&t) {
                Ok((cost, gi)) => {
                    if best.as_ref().is_none_or(|b| cost < b.0) {
                        best = Some((cost, si, t, gi));
                    }
                }
                Err(why) => reasons.push(format!("{}: {why}", s.obs.gpu.bdf)),
            }
        }
        match best {
            Some((_, si, t, gi)) => {
                let s = &mut states[si];
                if let Some(p) = &t.mig {
                    match gi {
                        Some(pl) => s.occupied.push(pl),
                        None => {
                            if let Some(k) = s.free_gis.iter().position(|f| f == p) {
                                s.free_gis.remove(k);
                            }
                        }
                    }
                }
                *s.counts.entry(t.name.clone()).or_insert(0) += 1;
                *s.added.entry(t.name.clone()).or_insert(0) += 1;
                placed.push((i, s.obs.gpu.bdf.clone(), t.name.clone()));
            }
            None => {
                let why = if reasons.is_empty() {
                    "no GPU of a known board on this host".to_string()
                } else {
                    reasons.join("; ")
                };
                *unplaced.entry((i, why)).or_insert(0) += 1;
            }
        }
    }

    let gpus = states
        .iter()
        .filter(|s| !s.added.is_empty())
        .map(|s| DesiredGpu {
            gpu: s.obs.gpu.bdf.clone(),
            vfs: None,
            mixed_size: false,
            vgpus: s
                .counts
                .iter()
                .map(|(n, c)| DesiredVgpu {
                    type_name: n.clone(),
                    count: Some(*c),
                    vf: None,
                    uuid: None,
                })
                .collect(),
        })
        .collect();
    Placement {
        gpus,
        placed,
        unplaced: unplaced
            .into_iter()
            .map(|((request, why), count)| Unplaced {
                request,
                count,
                why,
            })
            .collect(),
    }
}
