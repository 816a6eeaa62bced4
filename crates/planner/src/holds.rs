//! Held regions (see [`crate::typed`]): a problem with holds is solved as a *view* in which the
//! policies need not know about holds, and the view's solution is carried back to the problem.
//!
//! The view, per MIG GPU with holds, in input order of the holds:
//! - a hold whose holder is among the requests, asks for the region's profile and whose region
//!   fits now next to the busy instances (and the regions given before) is *given*: the region
//!   becomes a busy instance of the view, idle instances in conflict with it are left out (so the
//!   plan destroys them), and the holder leaves the view's requests. Its other holds are dropped.
//! - every other hold becomes a *phantom*: a busy instance at the region whose tables entry
//!   (`Tables::with_phantoms`) also stands for the current instances in conflict with the
//!   region, which the view leaves out and the plan keeps as they are. Nothing can be created
//!   or assigned in conflict with a busy instance, and the count and compute rules that the
//!   phantom takes part in are those of the region next to the rest of the GPU, so every view
//!   plan keeps the hold.
//!
//! If the idle instances left in the view do not fit next to a phantom or a given region (the
//! compute or count rules), they are left out from the highest start down until they do: the plan
//! destroys them. A problem without holds is solved directly, at no cost.

use tessera_model::{GpuModel, LayoutState, Placed, ProfileIdx};

use crate::problem::{Phantom, Problem, Slot, Solution};
use crate::tables::Tables;
use crate::typed::{self, Ask, Instance, Sharing};

/// What is wrong with a MIG GPU's held regions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HoldProblem {
    /// A region is not a placement of the GPU's model.
    #[error("the region held for request {holder} is not a placement of {model}; hold a profile at one of its starts")]
    NotAPlacement {
        /// The holder's id.
        holder: u64,
        /// The model key.
        model: String,
    },
    /// Two regions conflict.
    #[error("the regions held for requests {first} and {second} overlap; hold disjoint regions")]
    Overlap {
        /// The earlier holder.
        first: u64,
        /// The later holder.
        second: u64,
    },
    /// One instance is in the way of two regions.
    #[error("the instance {instance} is in the way of two held regions; hold one region per instance in the way")]
    TwoInTheWay {
        /// The instance, as `PROFILE@START`.
        instance: String,
    },
}

/// Check a MIG GPU's holds: each region a placement of the model, no two regions in conflict,
/// no current instance in the way of two regions.
pub(crate) fn check(
    model: &GpuModel,
    t: &Tables<'_>,
    instances: &[Instance],
    holds: &[typed::Hold],
) -> Result<(), HoldProblem> {
    let mut cands = Vec::with_capacity(holds.len());
    for h in holds {
        let c = t
            .cand_index(h.region)
            .filter(|_| usize::from(h.region.profile.0) < model.profiles.len())
            .ok_or_else(|| HoldProblem::NotAPlacement {
                holder: h.holder.0,
                model: model.key.clone(),
            })?;
        if let Some(o) = cands
            .iter()
            .position(|&o: &usize| t.conflict[c] & 1 << o != 0)
        {
            return Err(HoldProblem::Overlap {
                first: holds[o].holder.0,
                second: h.holder.0,
            });
        }
        cands.push(c);
    }
    for i in instances {
        let Some(c) = t.cand_index(i.placed) else {
            continue;
        };
        if cands
            .iter()
            .filter(|&&r| t.conflict[r] & 1 << c != 0)
            .count()
            > 1
        {
            return Err(HoldProblem::TwoInTheWay {
                instance: model.spec(i.placed),
            });
        }
    }
    Ok(())
}

/// The view of a problem with holds, with what carries its solution back.
pub(crate) struct View<'c> {
    /// The view's input (no holds; given regions as busy instances; phantoms as busy
    /// instances).
    pub input: typed::Problem<'c>,
    /// The phantoms, in GPU order.
    pub phantoms: Vec<Phantom>,
    /// Per view request, its index among the problem's requests.
    pub req_of: Vec<usize>,
    /// Given holds: (request index, index into `Problem::gpus`, region).
    pub given: Vec<(usize, usize, Placed)>,
}

/// Whether any GPU of the input holds a region.
pub(crate) fn any(input: &typed::Problem<'_>) -> bool {
    input
        .nodes
        .iter()
        .flat_map(|n| &n.gpus)
        .any(|g| matches!(&g.sharing, Sharing::Mig { holds, .. } if !holds.is_empty()))
}

/// Build the view of `input`, resolved (without holds) as `real`.
pub(crate) fn view<'c>(input: &typed::Problem<'c>, real: &Problem<'c>) -> View<'c> {
    let mut out = input.clone();
    let mut phantoms = Vec::new();
    let mut given: Vec<(usize, usize, Placed)> = Vec::new();
    let mut at = 0usize;
    for node in &mut out.nodes {
        for g in &mut node.gpus {
            let gpu = at;
            at += 1;
            let Sharing::Mig { instances, holds } = &mut g.sharing else {
                continue;
            };
            if holds.is_empty() {
                continue;
            }
            let t = real.t(real.gpus[gpu].slot);
            let mut keep: Vec<Instance> = instances.clone();
            let mut regions: Vec<(Placed, Vec<Placed>)> = Vec::new();
            for h in holds.drain(..) {
                let Some(r) = t.cand_index(h.region) else {
                    continue;
                };
                let holder = input.requests.iter().position(|q| q.id == h.holder);
                if holder.is_some_and(|i| given.iter().any(|&(j, _, _)| j == i)) {
                    // Its holder got a region already.
                    continue;
                }
                let asks_region = holder.is_some_and(|i| match input.requests[i].ask {
                    Ask::Mig { model, profile } => model
                        .profile(profile)
                        .name
                        .eq_ignore_ascii_case(&t.model.profile(h.region.profile).name),
                    _ => false,
                });
                let busy: u64 = keep
                    .iter()
                    .filter(|i| i.busy)
                    .filter_map(|i| t.cand_index(i.placed))
                    .fold(0, |s, c| s | 1 << c);
                if let (Some(i), true) = (holder, asks_region) {
                    if t.fits(busy, r) {
                        keep.retain(|x| {
                            x.busy
                                || t.cand_index(x.placed)
                                    .is_none_or(|c| t.conflict[r] & 1 << c == 0)
                        });
                        keep.push(Instance {
                            placed: h.region,
                            busy: true,
                        });
                        given.push((i, gpu, h.region));
                        continue;
                    }
                }
                let aside: Vec<Placed> = keep
                    .iter()
                    .filter(|x| {
                        t.cand_index(x.placed)
                            .is_some_and(|c| t.conflict[r] & 1 << c != 0)
                    })
                    .map(|x| x.placed)
                    .collect();
                keep.retain(|x| !aside.contains(&x.placed));
                regions.push((h.region, aside));
            }
            let mine: Vec<Phantom> = regions
                .into_iter()
                .map(|(region, aside)| Phantom { gpu, region, aside })
                .collect();
            for ph in &mine {
                keep.push(Instance {
                    placed: ph.region,
                    busy: true,
                });
            }
            // Idle instances that no longer fit next to the busy ones, the given regions and the
            // phantoms are left out, from the highest start down.
            let refs: Vec<&Phantom> = mine.iter().collect();
            let vt = if refs.is_empty() {
                t.clone()
            } else {
                t.with_phantoms(&refs)
            };
            keep.sort_by_key(|i| (!i.busy, i.placed));
            while !fits_all(&vt, &keep) {
                match keep.iter().rposition(|i| !i.busy) {
                    Some(k) => {
                        keep.remove(k);
                    }
                    None => break,
                }
            }
            keep.sort_by_key(|i| i.placed);
            *instances = keep;
            phantoms.extend(mine);
        }
    }
    let given_reqs: Vec<usize> = given.iter().map(|&(i, _, _)| i).collect();
    let req_of: Vec<usize> = (0..input.requests.len())
        .filter(|i| !given_reqs.contains(i))
        .collect();
    out.requests = req_of.iter().map(|&i| input.requests[i]).collect();
    View {
        input: out,
        phantoms,
        req_of,
        given,
    }
}

/// Whether the instances form a valid layout on tables `t`.
fn fits_all(t: &Tables<'_>, list: &[Instance]) -> bool {
    let mut layout = 0u64;
    for i in list {
        match t.cand_index(i.placed) {
            Some(c) if t.fits(layout, c) => layout |= 1 << c,
            _ => return false,
        }
    }
    true
}

/// Carry the view's solution back to the problem.
pub(crate) fn back(real: &Problem<'_>, v: &View<'_>, view_sol: &Solution) -> Solution {
    let mut sol = real.empty_solution();
    let mut phantom_bits = vec![0u64; real.mig.len()];
    let mut aside_bits = vec![0u64; real.mig.len()];
    for ph in &v.phantoms {
        let m = real.gpus[ph.gpu].slot;
        let t = real.t(m);
        if let Some(c) = t.cand_index(ph.region) {
            phantom_bits[m] |= 1 << c;
        }
        for &p in &ph.aside {
            if let Some(c) = t.cand_index(p) {
                aside_bits[m] |= 1 << c;
            }
        }
    }
    for (m, l) in view_sol.layouts.iter().enumerate() {
        sol.layouts[m] = (l & !phantom_bits[m]) | aside_bits[m];
    }
    for (vi, s) in view_sol.slots.iter().enumerate() {
        sol.slots[v.req_of[vi]] = *s;
    }
    for &(i, gpu, region) in &v.given {
        let m = real.gpus[gpu].slot;
        if let Some(c) = real.t(m).cand_index(region) {
            sol.slots[i] = Some(Slot::Mig(m, c));
        }
    }
    sol
}

/// The region a MIG request of `profile` that must wait should hold on a GPU of `model` whose
/// busy instances are `busy`: among the profile's placements where it fits once the busy
/// instances overlapping it end, the one overlapping the fewest busy instances, then the lowest
/// start. Returns the region and how many busy instances are in its way; `None` when the profile
/// never fits next to the other busy instances.
pub fn choose_hold(
    model: &GpuModel,
    busy: &[Placed],
    profile: ProfileIdx,
) -> Option<(Placed, usize)> {
    let mut best: Option<(usize, Placed)> = None;
    for &s in &model.profiles.get(usize::from(profile.0))?.placements {
        let region = Placed::new(profile, s);
        let rmask = model.mask(region);
        let blockers = busy.iter().filter(|u| model.mask(**u) & rmask != 0).count();
        let rest: Vec<Placed> = busy
            .iter()
            .copied()
            .filter(|u| model.mask(*u) & rmask == 0)
            .collect();
        if !LayoutState::of(model, &rest).fits(model, region) {
            continue;
        }
        if best.is_none_or(|(b, r)| (blockers, s) < (b, r.start)) {
            best = Some((blockers, region));
        }
    }
    best.map(|(b, r)| (r, b))
}

/// The profile of `model` that serves a MIG ask for `profile` of `of` (the same catalog name,
/// compared without case; the same index when the models are the same): how the planner
/// matches one ask to GPUs of several models.
pub fn same_profile(of: &GpuModel, profile: ProfileIdx, model: &GpuModel) -> Option<ProfileIdx> {
    if std::ptr::eq(of, model) {
        return (usize::from(profile.0) < model.profiles.len()).then_some(profile);
    }
    let name = &of.profiles.get(usize::from(profile.0))?.name;
    model
        .profiles
        .iter()
        .position(|p| p.name.eq_ignore_ascii_case(name))
        .map(|i| ProfileIdx(i as u8))
}
