//! The fixed partition of `static-mig`: the best static MIG configuration of the whole cluster
//! that an operator could choose knowing the trace's demand mix in advance (an upper bound for
//! static partitioning).
//!
//! How it is chosen:
//! 1. **Demand mix.** Count the instances each standard profile is asked for over the whole
//!    trace (a multi-GPU pod counts `num_gpu` full-GPU instances), and scale the counts so their
//!    compute slices add up to the cluster's capacity.
//! 2. **Candidate layouts.** Every valid layout made of standard profiles to which no further
//!    standard instance can be added, one per multiset of profiles.
//! 3. **Greedy cover.** GPU by GPU, take the candidate that adds the most *still uncovered*
//!    demand (in compute slices); ties go to the layout with fewer instances. Once the demand is
//!    covered, the remaining GPUs get the full-GPU layout.
//! 4. **Placement on nodes.** Whole nodes (largest first) get full-GPU layouts until they hold
//!    the GPUs the multi-GPU pods ask for, so those pods can find several full GPUs on one
//!    node; the other layouts are spread evenly over the remaining GPUs in node order.

use std::collections::BTreeMap;

use serde::Serialize;
use tessera_model::{LayoutState, Placed, ProfileIdx};

use crate::mapping::Mapping;
use crate::workload::SimPod;

/// The chosen partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPartition {
    /// Per node, per GPU, the instances.
    pub layouts: Vec<Vec<Vec<Placed>>>,
    /// How many GPUs got each layout (`PROFILE@START,...`), sorted by layout text.
    pub mix: Vec<LayoutCount>,
}

/// One line of a partition's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayoutCount {
    /// The layout, `PROFILE@START` joined with `+`.
    pub layout: String,
    /// GPUs with this layout.
    pub gpus: u64,
}

/// Maximal layouts built from standard profiles only, one per profile multiset, fewest
/// instances first.
pub fn candidate_layouts(mapping: &Mapping) -> Vec<Vec<Placed>> {
    let model = mapping.model();
    let cands = crate::policy::standard_candidates(mapping);
    let mut seen: BTreeMap<Vec<ProfileIdx>, Vec<Placed>> = BTreeMap::new();
    let mut stack = Vec::new();
    fn walk(
        model: &tessera_model::GpuModel,
        cands: &[Placed],
        from: usize,
        st: LayoutState,
        stack: &mut Vec<Placed>,
        seen: &mut BTreeMap<Vec<ProfileIdx>, Vec<Placed>>,
    ) {
        let mut extended = false;
        for (i, &c) in cands.iter().enumerate() {
            if st.fits(model, c) {
                extended = true;
                if i >= from {
                    let mut next = st;
                    next.add(model, c);
                    stack.push(c);
                    walk(model, cands, i + 1, next, stack, seen);
                    stack.pop();
                }
            }
        }
        if !extended && !stack.is_empty() {
            let mut key: Vec<ProfileIdx> = stack.iter().map(|p| p.profile).collect();
            key.sort();
            seen.entry(key).or_insert_with(|| {
                let mut l = stack.clone();
                l.sort();
                l
            });
        }
    }
    walk(model, &cands, 0, LayoutState::new(), &mut stack, &mut seen);
    let mut out: Vec<Vec<Placed>> = seen.into_values().collect();
    out.sort_by_key(|l| (l.len(), l.clone()));
    out
}

/// Text of a layout: `PROFILE@START` joined with `+`.
pub fn layout_text(mapping: &Mapping, items: &[Placed]) -> String {
    items
        .iter()
        .map(|&p| mapping.model().spec(p))
        .collect::<Vec<_>>()
        .join("+")
}

/// Choose the partition for nodes with `gpus_per_node` GPUs and the trace's pods.
pub fn choose(mapping: &Mapping, pods: &[SimPod], gpus_per_node: &[usize]) -> StaticPartition {
    let model = mapping.model();
    let full = mapping.full();
    let n_gpus: usize = gpus_per_node.iter().sum();
    let capacity = (n_gpus * usize::from(model.compute_slices)) as f64;
    let nprof = model.profiles.len();
    let slices = |p: usize| f64::from(model.profiles[p].compute_slices);

    // 1. Demand mix, scaled to capacity.
    let mut demand = vec![0f64; nprof];
    let mut gang_gpus = 0f64;
    for d in pods.iter().filter_map(|p| p.demand) {
        demand[usize::from(d.profile.0)] += f64::from(d.count);
        if d.count > 1 {
            gang_gpus += f64::from(d.count);
        }
    }
    let total: f64 = (0..nprof).map(|p| demand[p] * slices(p)).sum();
    let scale = if total > 0.0 { capacity / total } else { 0.0 };
    let target: Vec<f64> = demand.iter().map(|d| d * scale).collect();

    // 2-3. Greedy cover.
    let layouts = candidate_layouts(mapping);
    let full_layout = layouts
        .iter()
        .position(|l| l.len() == 1 && l[0].profile == full)
        .expect("the full profile alone is a maximal layout");
    let counts: Vec<Vec<f64>> = layouts
        .iter()
        .map(|l| {
            let mut c = vec![0f64; nprof];
            for p in l {
                c[usize::from(p.profile.0)] += 1.0;
            }
            c
        })
        .collect();
    let mut supply = vec![0f64; nprof];
    let mut per_layout = vec![0usize; layouts.len()];
    for _ in 0..n_gpus {
        let mut best = (0.0, full_layout);
        for (li, c) in counts.iter().enumerate() {
            let gain: f64 = (0..nprof)
                .map(|p| slices(p) * ((supply[p] + c[p]).min(target[p]) - supply[p].min(target[p])))
                .sum();
            if gain > best.0 + 1e-9 {
                best = (gain, li);
            }
        }
        per_layout[best.1] += 1;
        for p in 0..nprof {
            supply[p] += counts[best.1][p];
        }
    }

    // 4. Placement: whole nodes of full layouts for the multi-GPU pods, then an even spread.
    let mut layouts_of: Vec<Vec<Option<usize>>> =
        gpus_per_node.iter().map(|&g| vec![None; g]).collect();
    let mut order: Vec<usize> = (0..gpus_per_node.len()).collect();
    order.sort_by_key(|&n| (std::cmp::Reverse(gpus_per_node[n]), n));
    let mut gang_left = (gang_gpus * scale).ceil() as usize;
    for &n in &order {
        let g = gpus_per_node[n];
        if gang_left == 0 || g < 2 || per_layout[full_layout] < g {
            continue;
        }
        for slot in layouts_of[n].iter_mut() {
            *slot = Some(full_layout);
        }
        per_layout[full_layout] -= g;
        gang_left = gang_left.saturating_sub(g);
    }
    let rest: usize = per_layout.iter().sum();
    let mut given = vec![0usize; layouts.len()];
    let mut i = 0usize;
    for slots in layouts_of.iter_mut() {
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            i += 1;
            // The layout furthest behind its even share after `i` GPUs.
            let li = (0..layouts.len())
                .filter(|&l| given[l] < per_layout[l])
                .max_by(|&a, &b| {
                    let da = per_layout[a] as f64 * i as f64 / rest as f64 - given[a] as f64;
                    let db = per_layout[b] as f64 * i as f64 / rest as f64 - given[b] as f64;
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .unwrap_or(full_layout);
            given[li] += 1;
            *slot = Some(li);
        }
    }
    let mut mix: BTreeMap<String, u64> = BTreeMap::new();
    let result: Vec<Vec<Vec<Placed>>> = layouts_of
        .iter()
        .map(|node| {
            node.iter()
                .map(|s| {
                    let l = layouts[s.unwrap_or(full_layout)].clone();
                    *mix.entry(layout_text(mapping, &l)).or_default() += 1;
                    l
                })
                .collect()
        })
        .collect();
    StaticPartition {
        layouts: result,
        mix: mix
            .into_iter()
            .map(|(layout, gpus)| LayoutCount { layout, gpus })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TracePod;
    use tessera_model::Catalog;

    fn mapping() -> Mapping<'static> {
        Mapping::new(Catalog::builtin().lookup("a100-80gb").unwrap()).unwrap()
    }

    fn pod(m: &Mapping, n: u32, milli: u32) -> SimPod {
        let t = TracePod {
            name: "p".into(),
            cpu_milli: 1,
            memory_mib: 1,
            num_gpu: n,
            gpu_milli: milli,
            creation_time: 0,
            deletion_time: 1,
            gpu_spec: String::new(),
        };
        SimPod::from_trace(0, &t, m)
    }

    #[test]
    fn candidates_are_valid_maximal_and_standard() {
        let m = mapping();
        let model = m.model();
        let ls = candidate_layouts(&m);
        assert!(ls.len() >= 10, "{}", ls.len());
        assert_eq!(layout_text(&m, &ls[0]), "7g.80gb@0");
        let cands = crate::policy::standard_candidates(&m);
        for l in &ls {
            assert!(model.validate(l).is_empty());
            let st = LayoutState::of(model, l);
            assert!(
                cands.iter().all(|&c| !st.fits(model, c)),
                "{}",
                layout_text(&m, l)
            );
        }
        assert!(ls
            .iter()
            .any(|l| layout_text(&m, l) == "4g.40gb@0+3g.40gb@4"));
    }

    #[test]
    fn a_mix_of_halves_gets_4g_plus_3g_and_whole_gpus() {
        let m = mapping();
        // 4 pods of 4g (470), 4 of 3g (320), 8 whole: demand 28+12+56 = 96 slices on 16 GPUs (112).
        let mut pods = vec![];
        for _ in 0..4 {
            pods.push(pod(&m, 1, 470));
            pods.push(pod(&m, 1, 320));
        }
        for _ in 0..8 {
            pods.push(pod(&m, 1, 1000));
        }
        let part = choose(&m, &pods, &[8, 8]);
        let mix: Vec<(String, u64)> = part
            .mix
            .iter()
            .map(|c| (c.layout.clone(), c.gpus))
            .collect();
        assert!(
            mix.contains(&("4g.40gb@0+3g.40gb@4".to_string(), 5)),
            "{mix:?}"
        );
        assert!(mix.contains(&("7g.80gb@0".to_string(), 11)), "{mix:?}");
        assert_eq!(
            part.layouts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![8, 8]
        );
    }

    #[test]
    fn multi_gpu_pods_get_a_whole_node_of_full_gpus() {
        let m = mapping();
        let mut pods = vec![pod(&m, 4, 1000)];
        for _ in 0..6 {
            pods.push(pod(&m, 1, 100));
        }
        let part = choose(&m, &pods, &[2, 4, 2]);
        let full = layout_text(&m, &[Placed::new(m.full(), 0)]);
        assert!(
            part.layouts[1].iter().all(|l| layout_text(&m, l) == full),
            "{:?}",
            part.mix
        );
    }
}
