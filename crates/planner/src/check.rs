//! An independent checker of a [`Plan`] against its input: it re-reads the wire format and
//! verifies every guarantee, then computes the plan's [`Objective`]. Tests, the benchmarks and
//! the simulator use it to trust any policy's output.

use std::collections::{BTreeMap, BTreeSet};

use tessera_model::{Catalog, Placed};

use crate::input::{ClusterSpec, GpuMode, RequestKind, RequestSpec};
use crate::plan::{AssignedSlice, InstanceRef, Plan};
use crate::problem::Problem;
use crate::tables::Tables;
use crate::{Objective, PlanOptions};

/// Check `plan` against its input and return its objective, or every broken guarantee:
/// every GPU listed once in input order; every final MIG layout valid and keeping every busy
/// instance at its place; `create`/`destroy` exactly the difference to the current layout; every
/// assignment on a free instance of the requested profile (or within the MPS limits, or on a free
/// replica), no slice given twice; `unassigned` the rest, in input order; stats right. A planned
/// mode change is allowed only on an idle `mode: auto` GPU that can switch, from its current
/// mode; the rest of the plan is then checked against that GPU emptied into its new mode.
pub fn check_plan(
    catalog: &Catalog,
    cluster: &ClusterSpec,
    requests: &[RequestSpec],
    opts: &PlanOptions,
    plan: &Plan,
) -> Result<Objective, Vec<String>> {
    let (mut input, _) =
        crate::input::resolve(catalog, cluster, requests).map_err(|e| vec![e.to_string()])?;
    let mut errs = Vec::new();
    for gp in &plan.gpus {
        let Some(c) = gp.switches_mode() else {
            continue;
        };
        let place = format!("node `{}` GPU {}", gp.node, gp.gpu);
        let found = cluster
            .nodes
            .iter()
            .position(|n| n.name == gp.node)
            .and_then(|n| Some((n, cluster.nodes[n].gpus.get(gp.gpu)?)));
        let Some((n, spec)) = found else {
            errs.push(format!("{place}: a mode change on an unknown GPU"));
            continue;
        };
        let sharing = &mut input.nodes[n].gpus[gp.gpu].sharing;
        let problem = match spec.auto {
            None => Some("changes the mode of a GPU that is not `mode: auto`"),
            Some(a) if !a.can_switch => Some("changes the mode of a GPU that cannot switch"),
            Some(_) if !crate::auto::is_idle(sharing) => {
                Some("changes the mode of a GPU with work on it")
            }
            Some(_) if c.from != spec.mode || c.to != gp.mode || c.from == c.to => {
                Some("its mode change does not go from its mode to its listed mode")
            }
            Some(_) => None,
        };
        if let Some(problem) = problem {
            errs.push(format!("{place}: {problem}"));
            continue;
        }
        *sharing = crate::auto::emptied(c.to, spec.replicas);
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let p = Problem::new(&input, opts, Some(cluster), &[]).map_err(|e| vec![e.to_string()])?;
    if plan.gpus.len() != p.gpus.len() && !opts.only_changed {
        errs.push(format!(
            "the plan lists {} GPUs, the cluster has {}",
            plan.gpus.len(),
            p.gpus.len()
        ));
        return Err(errs);
    }
    // Which cluster GPU each listed GPU is (listed in input order, none twice).
    let index: BTreeMap<(&str, usize), usize> = p
        .gpus
        .iter()
        .enumerate()
        .map(|(i, g)| ((cluster.nodes[g.node].name.as_str(), g.index), i))
        .collect();
    let mut pairs = Vec::with_capacity(plan.gpus.len());
    let mut last: Option<usize> = None;
    for gp in &plan.gpus {
        match index.get(&(gp.node.as_str(), gp.gpu)) {
            Some(&i) if last.is_none_or(|l| l < i) => {
                pairs.push((i, gp));
                last = Some(i);
            }
            _ => {
                errs.push(format!(
                    "GPU {} of node `{}` is unknown, repeated or out of input order",
                    gp.gpu, gp.node
                ));
                return Err(errs);
            }
        }
    }
    let to_set = |t: &Tables<'_>, list: &[InstanceRef], what: &str, errs: &mut Vec<String>| {
        let mut set = 0u64;
        for r in list {
            let Some(pi) = t.model.profile_named(&r.profile) else {
                errs.push(format!("{what}: unknown profile {}", r.profile));
                continue;
            };
            match t.cand_index(Placed::new(pi, r.start)) {
                Some(c) if set & (1 << c) == 0 => set |= 1 << c,
                _ => errs.push(format!(
                    "{what}: {}@{} is not a placement or is repeated",
                    r.profile, r.start
                )),
            }
        }
        set
    };
    // Unlisted GPUs (only with `only_changed`) keep their layout.
    let mut finals: Vec<u64> = p.mig.iter().map(|g| g.existing).collect();
    let mut at: BTreeMap<(&str, usize), usize> = index.clone();
    let mut operations = 0u64;
    for (gi, gp) in pairs {
        let g = &p.gpus[gi];
        let node = &cluster.nodes[g.node].name;
        let place = format!("node `{node}` GPU {}", g.index);
        if gp.node != *node
            || gp.gpu != g.index
            || gp.mode != g.mode
            || gp.model != p.models[g.model].key
        {
            errs.push(format!(
                "{place}: listed as `{}` GPU {} ({}, {}) out of order or mislabelled",
                gp.node, gp.gpu, gp.model, gp.mode
            ));
            continue;
        }
        at.insert((node.as_str(), g.index), gi);
        if g.mode != GpuMode::Mig {
            if !gp.layout.is_empty() || gp.changed() {
                errs.push(format!(
                    "{place}: a {} GPU has a MIG layout or operations",
                    g.mode
                ));
            }
            continue;
        }
        let mg = &p.mig[g.slot];
        let t = &p.tables[mg.t];
        let fin = to_set(t, &gp.layout, &place, &mut errs);
        let create = to_set(t, &gp.create, &place, &mut errs);
        let destroy = to_set(t, &gp.destroy, &place, &mut errs);
        let placed = t.placed(fin);
        let v = t.model.validate(&placed);
        if !v.is_empty() || !t.valid(fin) {
            errs.push(format!("{place}: the final layout is invalid: {v:?}"));
        }
        if fin & mg.busy != mg.busy {
            errs.push(format!("{place}: a busy instance is destroyed or moved"));
        }
        if create != fin & !mg.existing || destroy != mg.existing & !fin {
            errs.push(format!(
                "{place}: create/destroy do not match the change of layout"
            ));
        }
        let sorted = |l: &[InstanceRef], set: u64| -> bool {
            let want: Vec<(u8, &str)> = t
                .placed(set)
                .iter()
                .map(|x| (x.start, t.model.profile(x.profile).name.as_str()))
                .collect();
            let got: Vec<(u8, &str)> = l.iter().map(|r| (r.start, r.profile.as_str())).collect();
            want == got
        };
        if !sorted(&gp.layout, fin) || !sorted(&gp.create, create) || !sorted(&gp.destroy, destroy)
        {
            errs.push(format!(
                "{place}: instances are not listed sorted by start with canonical names"
            ));
        }
        operations += u64::from((fin ^ mg.existing).count_ones());
        finals[g.slot] = fin;
    }
    let ids: BTreeMap<&str, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut served = vec![false; requests.len()];
    let mut held: Vec<u64> = p.mig.iter().map(|g| g.busy).collect();
    let mut mps_room = p.mps_room();
    let mut ts_room: Vec<u32> = p.ts.iter().map(|g| g.free).collect();
    let mut value = 0u64;
    let mut last = None;
    for a in &plan.assignments {
        let Some(&ri) = ids.get(a.request.as_str()) else {
            errs.push(format!("assignment of unknown request `{}`", a.request));
            continue;
        };
        if served[ri] {
            errs.push(format!("request `{}` is assigned twice", a.request));
            continue;
        }
        if last.is_some_and(|l| l > ri) {
            errs.push(format!(
                "assignments are not in input order at `{}`",
                a.request
            ));
        }
        last = Some(ri);
        served[ri] = true;
        value += u64::from(requests[ri].priority);
        let Some(&gi) = at.get(&(a.node.as_str(), a.gpu)) else {
            errs.push(format!(
                "request `{}`: no GPU {} on node `{}`",
                a.request, a.gpu, a.node
            ));
            continue;
        };
        let g = p.gpus[gi];
        match (&requests[ri].kind, &a.slice, g.mode) {
            (RequestKind::Mig(want), AssignedSlice::Mig { profile, start }, GpuMode::Mig) => {
                let mg = &p.mig[g.slot];
                let t = &p.tables[mg.t];
                let ok_name = want.trim().eq_ignore_ascii_case(profile);
                let c = t
                    .model
                    .profile_named(profile)
                    .and_then(|pi| t.cand_index(Placed::new(pi, *start)));
                match c {
                    Some(c) if ok_name && finals[g.slot] & (1 << c) != 0 && held[g.slot] & (1 << c) == 0 => {
                        held[g.slot] |= 1 << c;
                    }
                    _ => errs.push(format!(
                        "request `{}` ({want}): {profile}@{start} is not a free {want} instance of the final layout (or is given twice)",
                        a.request
                    )),
                }
            }
            (
                RequestKind::Mps(m),
                AssignedSlice::Mps {
                    memory_mib,
                    sm_percent,
                },
                GpuMode::Mps,
            ) => {
                let r = &mut mps_room[g.slot];
                if *memory_mib != m.memory_mib || *sm_percent != m.sm_percent {
                    errs.push(format!(
                        "request `{}`: the MPS limits differ from the request",
                        a.request
                    ));
                } else if r.0 < m.memory_mib || r.1 < m.sm_percent || r.2 == 0 {
                    errs.push(format!(
                        "request `{}`: the MPS GPU has no room for it",
                        a.request
                    ));
                } else {
                    *r = (r.0 - m.memory_mib, r.1 - m.sm_percent, r.2 - 1);
                }
            }
            (
                RequestKind::Timeslice,
                AssignedSlice::Timeslice { timeslice: true },
                GpuMode::Timeslice,
            ) => {
                if ts_room[g.slot] == 0 {
                    errs.push(format!("request `{}`: no free replica", a.request));
                } else {
                    ts_room[g.slot] -= 1;
                }
            }
            _ => errs.push(format!(
                "request `{}`: the slice does not match the request or the GPU's mode",
                a.request
            )),
        }
    }
    let want_unassigned: Vec<&str> = requests
        .iter()
        .zip(&served)
        .filter(|(_, s)| !**s)
        .map(|(r, _)| r.id.as_str())
        .collect();
    let got: Vec<&str> = plan.unassigned.iter().map(String::as_str).collect();
    if want_unassigned != got {
        errs.push("`unassigned` is not exactly the unserved requests in input order".into());
    }
    let dup: BTreeSet<&str> = got.iter().copied().collect();
    if dup.len() != got.len() {
        errs.push("`unassigned` repeats a request".into());
    }
    let served_n = served.iter().filter(|s| **s).count();
    if plan.stats.served != served_n
        || plan.stats.served_priority != value
        || plan.stats.operations as u64 != operations
    {
        errs.push(format!(
            "stats {:?} do not match served {served_n}, priority {value}, operations {operations}",
            plan.stats
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let free_score = p
        .mig
        .iter()
        .enumerate()
        .map(|(m, _)| p.t(m).free_score(held[m]))
        .sum();
    Ok(Objective {
        served: served_n,
        served_priority: value,
        operations,
        free_score,
    })
}
