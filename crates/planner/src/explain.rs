//! Why each waiting request waits: computed after planning, from the final state of the plan
//! (every GPU's new layout, with its busy and newly assigned slices), so the reason describes
//! what a person would see if they looked at the cluster once the plan is carried out.
//!
//! One reason per distinct request shape (a MIG profile, an MPS size, a time-slice replica):
//! requests asking for the same thing wait for the same reason, so the work is per shape, not
//! per request, and the result is deterministic (GPUs are scanned in input order, ties go to
//! the first).
//!
//! | code | meaning |
//! |---|---|
//! | `no-gpu-with-profile` | no GPU in MIG mode has the profile (models that have it are named) |
//! | `no-room` | MIG GPUs with the profile exist, but none has a valid start free of busy and assigned instances (with enough compute slices and under the instance limits) |
//! | `instances-busy` | every instance of the profile is busy or assigned, and no GPU has room for another |
//! | `no-mps-gpu` | no GPU is in MPS mode |
//! | `mps-room-exhausted` | no MPS GPU has the memory, SM share or client place left |
//! | `no-timeslice-gpu` | no GPU is time-sliced |
//! | `replicas-taken` | every time-slice replica is in use or assigned |
//! | `not-chosen` | a GPU could still take it; the policy left it waiting (e.g. `first-fit` never destroys idle instances) |

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::input::{ClusterSpec, GpuMode, Labels, RequestKind};
use crate::problem::{Problem, ReqKind, Slot, Solution};
use crate::tables::bits;

/// A waiting request and why it waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Request id.
    pub request: String,
    /// The kind of obstacle, as a stable code.
    pub reason: WaitReason,
    /// The obstacle in words, with the numbers (slices, MiB, places) and where.
    pub detail: String,
}

/// The kind of obstacle a waiting request meets (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitReason {
    /// No GPU in MIG mode has the profile.
    NoGpuWithProfile,
    /// No MIG GPU with the profile has room for it.
    NoRoom,
    /// Every instance of the profile is busy or assigned, and there is no room for another.
    InstancesBusy,
    /// No GPU is in MPS mode.
    NoMpsGpu,
    /// No MPS GPU has enough memory, SM share or client places left.
    MpsRoomExhausted,
    /// No GPU is time-sliced.
    NoTimesliceGpu,
    /// Every time-slice replica is in use or assigned.
    ReplicasTaken,
    /// A GPU could take it; the policy left it waiting.
    NotChosen,
}

impl WaitReason {
    /// The stable code (`no-room`, `mps-room-exhausted`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::NoGpuWithProfile => "no-gpu-with-profile",
            WaitReason::NoRoom => "no-room",
            WaitReason::InstancesBusy => "instances-busy",
            WaitReason::NoMpsGpu => "no-mps-gpu",
            WaitReason::MpsRoomExhausted => "mps-room-exhausted",
            WaitReason::NoTimesliceGpu => "no-timeslice-gpu",
            WaitReason::ReplicasTaken => "replicas-taken",
            WaitReason::NotChosen => "not-chosen",
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of every unassigned request of `sol`, in input order.
pub(crate) fn explain(
    p: &Problem<'_>,
    sol: &Solution,
    policy: crate::Policy,
    labels: &Labels<'_>,
) -> Vec<Waiting> {
    let ex = Explainer::new(p, sol, labels.cluster);
    let mut cache: HashMap<ReqKind, (WaitReason, String)> = HashMap::new();
    let mut out = Vec::new();
    for ((spec, r), s) in labels.requests.iter().zip(&p.reqs).zip(&sol.slots) {
        if s.is_some() {
            continue;
        }
        let (reason, detail) = cache
            .entry(r.kind)
            .or_insert_with(|| match r.kind {
                ReqKind::Mig(gp) => {
                    let name = match &spec.kind {
                        RequestKind::Mig(n) => crate::tables::bare_name(n).to_string(),
                        _ => p.profiles[gp].clone(),
                    };
                    ex.mig(gp, &name, policy)
                }
                ReqKind::Mps { mem, sm } => ex.mps(mem, sm, policy),
                ReqKind::Ts => ex.ts(policy),
            })
            .clone();
        out.push(Waiting {
            request: spec.id.clone(),
            reason,
            detail,
        });
    }
    out
}

struct Explainer<'p, 'a> {
    p: &'p Problem<'a>,
    /// Node names.
    cluster: &'p ClusterSpec,
    sol: &'p Solution,
    /// Busy plus assigned instances of every MIG GPU.
    held: Vec<u64>,
    /// MPS room left after the plan, in `mps` order.
    mps_left: Vec<(u64, u32, u32)>,
    /// Time-slice replicas left after the plan, in `ts` order.
    ts_left: Vec<u32>,
}

impl<'p, 'a> Explainer<'p, 'a> {
    fn new(p: &'p Problem<'a>, sol: &'p Solution, cluster: &'p ClusterSpec) -> Self {
        let mut mps_left = p.mps_room();
        let mut ts_left: Vec<u32> = p.ts.iter().map(|g| g.free).collect();
        for (r, s) in p.reqs.iter().zip(&sol.slots) {
            match (*s, r.kind) {
                (Some(Slot::Mps(i)), ReqKind::Mps { mem, sm }) => {
                    let room = &mut mps_left[i];
                    room.0 = room.0.saturating_sub(mem);
                    room.1 = room.1.saturating_sub(sm);
                    room.2 = room.2.saturating_sub(1);
                }
                (Some(Slot::Ts(i)), _) => ts_left[i] = ts_left[i].saturating_sub(1),
                _ => {}
            }
        }
        Explainer {
            cluster,
            held: p.held(sol),
            p,
            sol,
            mps_left,
            ts_left,
        }
    }

    /// `node 'n' GPU i` of the GPU at `Problem::gpus[g]`.
    fn at(&self, g: usize) -> String {
        let at = self.p.gpus[g];
        format!(
            "node `{}` GPU {}",
            self.cluster.nodes[at.node].name, at.index
        )
    }

    fn mig(&self, gp: usize, name: &str, policy: crate::Policy) -> (WaitReason, String) {
        let p = self.p;
        // MIG GPUs whose model has the profile.
        let with: Vec<(usize, usize)> = p
            .mig
            .iter()
            .enumerate()
            .filter_map(|(m, g)| p.local[g.t][gp].map(|lp| (m, lp)))
            .collect();
        if with.is_empty() {
            return (WaitReason::NoGpuWithProfile, self.no_gpu_with(gp, name));
        }
        // A GPU that could still take it: a free instance, or a valid start next to the held
        // instances (idle ones may be destroyed).
        for &(m, lp) in &with {
            let t = p.t(m);
            let layout = self.sol.layouts[m];
            let held = self.held[m];
            let free_inst = layout & !held & t.by_profile[lp];
            let creatable = bits(t.by_profile[lp]).find(|&c| t.fits(held, c));
            if free_inst != 0 || creatable.is_some() {
                let how = if free_inst != 0 {
                    format!(
                        "its idle {name}@{} is free",
                        t.cand[free_inst.trailing_zeros() as usize].start
                    )
                } else {
                    let c = creatable.unwrap_or_default();
                    let in_way = layout & !held & t.conflict[c];
                    if in_way == 0 {
                        format!("{name}@{} can be created there", t.cand[c].start)
                    } else {
                        format!(
                            "{name}@{} can be created there after destroying idle {}",
                            t.cand[c].start,
                            self.list(m, in_way)
                        )
                    }
                };
                let why = match policy {
                    crate::Policy::FirstFit => " (first-fit never destroys idle instances)",
                    crate::Policy::Nos => " (nos keeps a GPU's layout when no allowed geometry helps its pending pods)",
                    _ => "",
                };
                return (
                    WaitReason::NotChosen,
                    format!(
                        "{} could take it: {how}; the {policy} policy left it waiting{why}",
                        self.at(p.mig[m].gpu)
                    ),
                );
            }
        }
        // Blocked everywhere. Describe the GPU with the largest free region (first on ties).
        let mut held_of_profile = 0u32;
        let mut best: Option<(u32, usize, usize, u8)> = None; // (free run, m, lp, run start)
        for &(m, lp) in &with {
            let t = p.t(m);
            held_of_profile += (self.held[m] & t.by_profile[lp]).count_ones();
            let (run, start) = largest_run(t.mem_of(self.held[m]), t.model.memory_slices);
            if best.is_none_or(|b| run > b.0) {
                best = Some((run, m, lp, start));
            }
        }
        let (run, m, lp, start) = best.expect("`with` is not empty");
        let t = p.t(m);
        let model = t.model;
        let prof = &model.profiles[lp];
        let held = self.held[m];
        let starts: Vec<String> = prof.placements.iter().map(|s| s.to_string()).collect();
        let region = if run == 0 {
            "no memory slice is free".to_string()
        } else {
            format!(
                "the largest free region is {run} slice{} ({})",
                if run == 1 { "" } else { "s" },
                slices(start, run)
            )
        };
        let compute = t.compute_of(held);
        let obstacle = if compute + u32::from(prof.compute_slices) > t.compute_total {
            format!(
                "{name} needs {} compute slice{}, {} of {} are free",
                prof.compute_slices,
                if prof.compute_slices == 1 { "" } else { "s" },
                t.compute_total - compute.min(t.compute_total),
                t.compute_total
            )
        } else if held.count_ones() >= t.max_instances {
            format!("the GPU holds its maximum of {} instances", t.max_instances)
        } else if t.count(held, lp) >= u32::from(t.prof_max[lp]) {
            format!("{name} is at its maximum of {} per GPU", t.prof_max[lp])
        } else if bits(t.by_profile[lp]).any(|c| t.mask[c] & t.mem_of(held) == 0) {
            format!("a free start of {name} exists but the media-engine rule (one `+me` instance per GPU) forbids it")
        } else {
            format!(
                "{name} needs {} free memory slice{} at a valid start ({}); {region}",
                prof.memory_slices,
                if prof.memory_slices == 1 { "" } else { "s" },
                starts.join(", ")
            )
        };
        let where_ = if with.len() == 1 {
            format!(
                "on the only GPU with {name}, {} ({})",
                self.at(p.mig[m].gpu),
                model.key
            )
        } else {
            format!(
                "on any of the {} GPUs with {name}; the roomiest is {} ({})",
                with.len(),
                self.at(p.mig[m].gpu),
                model.key
            )
        };
        if held_of_profile > 0 {
            (
                WaitReason::InstancesBusy,
                format!(
                    "every fitting instance is busy ({held_of_profile} × {name} busy or assigned) and there is no room for another {where_}: {obstacle}"
                ),
            )
        } else {
            (WaitReason::NoRoom, format!("no room {where_}: {obstacle}"))
        }
    }

    /// The text of `no-gpu-with-profile`: which models have it, and where those GPUs are.
    fn no_gpu_with(&self, gp: usize, name: &str) -> String {
        let p = self.p;
        let lc = &p.profiles[gp];
        // GPUs of this cluster not in MIG mode whose model has it.
        let other_mode: Vec<String> = p
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.mode != GpuMode::Mig && p.models[g.model].profile_named(lc).is_some()
            })
            .map(|(i, g)| format!("{} ({} mode)", self.at(i), g.mode))
            .collect();
        if !other_mode.is_empty() {
            return format!(
                "no GPU in MIG mode has {name}; GPUs whose model has it are shared another way: {}",
                other_mode.join(", ")
            );
        }
        let mig_models: Vec<&str> = {
            let mut v: Vec<&str> = p
                .mig
                .iter()
                .map(|g| p.models[p.gpus[g.gpu].model].key.as_str())
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if mig_models.is_empty() {
            format!("no GPU of a model with {name}: the cluster has no GPU in MIG mode")
        } else {
            format!(
                "no GPU of a model with {name}: the MIG GPUs here are {}, which do not have it",
                mig_models.join(", ")
            )
        }
    }

    fn mps(&self, mem: u64, sm: u32, policy: crate::Policy) -> (WaitReason, String) {
        let p = self.p;
        if p.mps.is_empty() {
            return (WaitReason::NoMpsGpu, "no GPU is in MPS mode".to_string());
        }
        if let Some(i) = self
            .mps_left
            .iter()
            .position(|&(m, s, c)| m >= mem && s >= sm && c >= 1)
        {
            return (
                WaitReason::NotChosen,
                format!(
                    "{} could take it ({} MiB, {} % SM, {} client place(s) left); the {policy} policy left it waiting",
                    self.at(p.mps[i].gpu),
                    self.mps_left[i].0,
                    self.mps_left[i].1,
                    self.mps_left[i].2
                ),
            );
        }
        // The GPU with the most memory left (first on ties) and what it lacks.
        let mut best = 0;
        for (i, r) in self.mps_left.iter().enumerate() {
            if r.0 > self.mps_left[best].0 {
                best = i;
            }
        }
        let (m, s, c) = self.mps_left[best];
        let mut lacks = Vec::new();
        if m < mem {
            lacks.push(format!("{m} MiB free of the {mem} MiB asked"));
        }
        if s < sm {
            lacks.push(format!("{s} % SM free of the {sm} % asked"));
        }
        if c == 0 {
            lacks.push("no client place left".to_string());
        }
        let largest = p.mps.iter().map(|g| g.mem_total).max().unwrap_or(0);
        let too_big = if mem > largest {
            format!("; {mem} MiB is more than any MPS GPU offers ({largest} MiB after the reserve)")
        } else {
            String::new()
        };
        (
            WaitReason::MpsRoomExhausted,
            format!(
                "MPS room exhausted on all {} MPS GPU(s); the roomiest, {}, has {}{too_big}",
                p.mps.len(),
                self.at(p.mps[best].gpu),
                lacks.join(", ")
            ),
        )
    }

    fn ts(&self, policy: crate::Policy) -> (WaitReason, String) {
        let p = self.p;
        if p.ts.is_empty() {
            return (
                WaitReason::NoTimesliceGpu,
                "no GPU is time-sliced".to_string(),
            );
        }
        if let Some(i) = self.ts_left.iter().position(|&f| f > 0) {
            return (
                WaitReason::NotChosen,
                format!(
                    "{} has {} replica(s) left; the {policy} policy left it waiting",
                    self.at(p.ts[i].gpu),
                    self.ts_left[i]
                ),
            );
        }
        (
            WaitReason::ReplicasTaken,
            format!(
                "every replica of the {} time-sliced GPU(s) is in use or assigned",
                p.ts.len()
            ),
        )
    }

    /// `1g.10gb@0, 1g.10gb@1` for the instances `set` of MIG GPU `m`.
    fn list(&self, m: usize, set: u64) -> String {
        let t = self.p.t(m);
        t.in_start_order(set)
            .map(|c| {
                let pl = t.cand[c];
                format!(
                    "{}@{}",
                    t.model.profiles[usize::from(pl.profile.0)].name,
                    pl.start
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The longest run of memory slices outside `held` on a grid of `n` slices: (length, start);
/// the first on ties.
fn largest_run(held: u32, n: u8) -> (u32, u8) {
    let (mut best, mut best_start) = (0u32, 0u8);
    let (mut run, mut start) = (0u32, 0u8);
    for s in 0..n {
        if held & (1 << s) == 0 {
            if run == 0 {
                start = s;
            }
            run += 1;
            if run > best {
                best = run;
                best_start = start;
            }
        } else {
            run = 0;
        }
    }
    (best, best_start)
}

/// `slice 3` or `slices 4-7`.
fn slices(start: u8, len: u32) -> String {
    if len == 1 {
        format!("slice {start}")
    } else {
        format!("slices {start}-{}", u32::from(start) + len - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_run_finds_the_first_longest_gap() {
        assert_eq!(largest_run(0, 8), (8, 0));
        assert_eq!(largest_run(0b0000_1111, 8), (4, 4));
        assert_eq!(largest_run(0b1111_0011, 8), (2, 2));
        assert_eq!(largest_run(0b1010_0101, 8), (2, 3));
        assert_eq!(largest_run(0xff, 8), (0, 0));
    }
}
