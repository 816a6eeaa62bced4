//! The incremental planner (`tessera_planner::incremental`) against the full plan: over random
//! clusters (several models, busy and idle instances, MPS and time-slice GPUs) and random event
//! sequences (arrivals, departures, changes an agent observed), every incremental placement is
//! the full plan's grant for the same state and request, byte for byte, and a request the
//! incremental state cannot place is one the full plan does not serve either; held regions are
//! never handed to a non-holder; the same events give the same placements.

use proptest::prelude::*;
use rand::Rng;
use tessera_model::{Catalog, GpuModel, Placed};
use tessera_planner::gen::{random_gpu, random_layout, rng};
use tessera_planner::incremental::{Fallback, Incremental, BATCH_LIMIT};
use tessera_planner::typed::{self, Ask, Hold, Instance, Outcome, RequestId, Sharing, Slice};
use tessera_planner::{
    choose_hold, plan_typed, ClusterSpec, GpuMode, MpsClientSpec, MpsRequest, NodeSpec, PlanOptions,
};

const MODELS: [&str; 4] = ["a30-24gb", "a100-40gb", "a100-80gb", "h100-80gb"];

fn only_changed() -> PlanOptions {
    PlanOptions {
        only_changed: true,
        ..PlanOptions::default()
    }
}

/// A random cluster: 1–3 nodes of 1–4 GPUs, one model per node, GPUs in random states.
fn cluster<'c>(cat: &'c Catalog, rng: &mut impl Rng) -> typed::Problem<'c> {
    let models: Vec<&GpuModel> = MODELS.iter().map(|m| cat.lookup(m).unwrap()).collect();
    let spec = ClusterSpec {
        nodes: (0..rng.random_range(1..4))
            .map(|n| {
                let m = models[rng.random_range(0..models.len())];
                NodeSpec {
                    name: format!("n{n}"),
                    gpus: (0..rng.random_range(1..5))
                        .map(|_| random_gpu(m, rng, 0.5, 0.2))
                        .collect(),
                }
            })
            .collect(),
    };
    // Written out here, independently of the crate's conversion.
    let nodes = spec
        .nodes
        .iter()
        .map(|n| typed::Node {
            gpus: n
                .gpus
                .iter()
                .map(|g| {
                    let model = cat.get(&g.model).unwrap();
                    let sharing = match g.mode {
                        GpuMode::Mig => Sharing::mig(
                            g.instances
                                .iter()
                                .map(|i| Instance {
                                    placed: Placed::new(
                                        model.profile_named(&i.profile).unwrap(),
                                        i.start,
                                    ),
                                    busy: i.used,
                                })
                                .collect(),
                        ),
                        GpuMode::Mps => Sharing::Mps {
                            clients: g.clients.clone(),
                        },
                        GpuMode::Timeslice => Sharing::Timeslice {
                            replicas: g.replicas,
                            used: g.replicas_used,
                        },
                    };
                    typed::Gpu { model, sharing }
                })
                .collect(),
        })
        .collect();
    typed::Problem {
        nodes,
        requests: Vec::new(),
    }
}

/// A random arrival: 85 % MIG (a random profile of a random model, present in the cluster or
/// not), else MPS or time-slice.
fn arrival<'c>(cat: &'c Catalog, rng: &mut impl Rng, id: u64) -> typed::Request<'c> {
    let roll = rng.random_range(0..100);
    let ask = if roll < 85 {
        let model = cat
            .lookup(MODELS[rng.random_range(0..MODELS.len())])
            .unwrap();
        let profiles: Vec<_> = model.profile_indices().map(|(i, _)| i).collect();
        Ask::Mig {
            model,
            profile: profiles[rng.random_range(0..profiles.len())],
        }
    } else if roll < 93 {
        Ask::Mps(MpsRequest {
            memory_mib: 1024 * rng.random_range(1..9),
            sm_percent: 20,
        })
    } else {
        Ask::Timeslice
    };
    typed::Request {
        id: RequestId(id),
        ask,
        priority: rng.random_range(1..3),
    }
}

/// The test's own record of the cluster, updated from each outcome the way an executor would.
fn apply_to(shadow: &mut typed::Problem<'_>, o: &Outcome<'_>) {
    for g in o.gpus.iter().filter(|g| g.mode == GpuMode::Mig) {
        let Sharing::Mig { instances, .. } = &mut shadow.nodes[g.node].gpus[g.gpu].sharing else {
            panic!("a MIG outcome for a GPU that is not MIG");
        };
        let busy: Vec<Placed> = instances
            .iter()
            .filter(|i| i.busy)
            .map(|i| i.placed)
            .collect();
        for b in &busy {
            assert!(g.layout.contains(b), "busy {b:?} destroyed");
        }
        *instances = g
            .layout
            .iter()
            .map(|&placed| Instance {
                placed,
                busy: busy.contains(&placed),
            })
            .collect();
    }
    for a in &o.grants {
        match (&mut shadow.nodes[a.node].gpus[a.gpu].sharing, a.slice) {
            (Sharing::Mig { instances, .. }, Slice::Mig(p)) => {
                let i = instances.iter_mut().find(|i| i.placed == p).unwrap();
                assert!(!i.busy, "{p:?} given while busy");
                i.busy = true;
            }
            (Sharing::Mps { clients }, Slice::Mps(r)) => clients.push(MpsClientSpec {
                memory_mib: r.memory_mib,
                sm_percent: r.sm_percent,
            }),
            (Sharing::Timeslice { used, .. }, Slice::Timeslice) => *used += 1,
            other => panic!("a grant of the wrong mode: {other:?}"),
        }
    }
}

fn busy_instances(p: &typed::Problem<'_>) -> Vec<(usize, usize, Placed)> {
    let mut v = Vec::new();
    for (n, node) in p.nodes.iter().enumerate() {
        for (g, gpu) in node.gpus.iter().enumerate() {
            if let Sharing::Mig { instances, .. } = &gpu.sharing {
                v.extend(
                    instances
                        .iter()
                        .filter(|i| i.busy)
                        .map(|i| (n, g, i.placed)),
                );
            }
        }
    }
    v
}

fn mig_gpus(p: &typed::Problem<'_>) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for (n, node) in p.nodes.iter().enumerate() {
        for (g, gpu) in node.gpus.iter().enumerate() {
            if gpu.sharing.mode() == GpuMode::Mig {
                v.push((n, g));
            }
        }
    }
    v
}

/// Each GPU's model and sharing, instances in (start, profile) order: what the state must
/// equal.
fn summary(p: &typed::Problem<'_>) -> Vec<Vec<(String, String)>> {
    p.nodes
        .iter()
        .map(|n| {
            n.gpus
                .iter()
                .map(|g| {
                    let mut sharing = g.sharing.clone();
                    if let Sharing::Mig { instances, .. } = &mut sharing {
                        instances.sort_by_key(|i| (i.placed.start, i.placed.profile));
                    }
                    (g.model.key.clone(), format!("{sharing:?}"))
                })
                .collect()
        })
        .collect()
}

fn with_request<'c>(p: &typed::Problem<'c>, r: &[typed::Request<'c>]) -> typed::Problem<'c> {
    typed::Problem {
        nodes: p.nodes.clone(),
        requests: r.to_vec(),
    }
}

/// What one run of an event sequence did: per arrival, the placement or the fallback.
type Trace = Vec<Result<(RequestId, usize, usize, Slice), Fallback>>;

/// Run `events` random events on a random cluster from `seed`, checking each arrival against
/// the full plan; returns the trace.
fn run(seed: u64, events: usize) -> Result<Trace, TestCaseError> {
    let cat = Catalog::builtin();
    let mut rng = rng(seed);
    let mut shadow = cluster(cat, &mut rng);
    let mut inc = Incremental::new(&shadow).unwrap();
    let mut trace = Trace::new();
    for e in 0..events as u64 {
        let roll = rng.random_range(0..100);
        let busy = busy_instances(&shadow);
        if roll < 25 && !busy.is_empty() {
            // A departure: the slice becomes idle, or is destroyed.
            let (n, g, p) = busy[rng.random_range(0..busy.len())];
            let destroy = rng.random_bool(0.5);
            inc.release(n, g, p, destroy).unwrap();
            let Sharing::Mig { instances, .. } = &mut shadow.nodes[n].gpus[g].sharing else {
                unreachable!()
            };
            if destroy {
                instances.retain(|i| i.placed != p);
            } else {
                instances.iter_mut().find(|i| i.placed == p).unwrap().busy = false;
            }
        } else if roll < 35 {
            // The agent observed another layout on one GPU (its busy instances kept).
            let gpus = mig_gpus(&shadow);
            if gpus.is_empty() {
                continue;
            }
            let (n, g) = gpus[rng.random_range(0..gpus.len())];
            let gpu = &mut shadow.nodes[n].gpus[g];
            let model = gpu.model;
            let Sharing::Mig { instances, .. } = &mut gpu.sharing else {
                unreachable!()
            };
            let mut keep: Vec<Instance> = instances.iter().filter(|i| i.busy).copied().collect();
            let fill = rng.random_range(0.0..1.0);
            for p in random_layout(model, &mut rng, fill) {
                let mut all: Vec<Placed> = keep.iter().map(|i| i.placed).collect();
                all.push(p);
                if model.validate(&all).is_empty() {
                    keep.push(Instance {
                        placed: p,
                        busy: false,
                    });
                }
            }
            *instances = keep;
            inc.observe(n, g, &shadow.nodes[n].gpus[g]).unwrap();
        } else {
            let req = arrival(cat, &mut rng, e);
            let full = plan_typed(&with_request(&shadow, &[req]), &only_changed()).unwrap();
            match inc.place(&req) {
                Ok(p) => {
                    prop_assert_eq!(&full.grants, &vec![p.grant], "event {}", e);
                    prop_assert_eq!(&full.gpus, &vec![p.gpu.clone()], "event {}", e);
                    prop_assert!(p.gpu.model.validate(&p.gpu.layout).is_empty());
                    let Slice::Mig(s) = p.grant.slice else {
                        unreachable!()
                    };
                    trace.push(Ok((req.id, p.grant.node, p.grant.gpu, Slice::Mig(s))));
                    apply_to(&mut shadow, &full);
                }
                Err(f) => {
                    match f {
                        Fallback::NoCandidate => {
                            prop_assert!(
                                full.grants.is_empty(),
                                "event {}: the full plan serves {:?}",
                                e,
                                full.grants
                            )
                        }
                        Fallback::NotMig => {
                            let mig = matches!(req.ask, Ask::Mig { .. });
                            prop_assert!(!mig)
                        }
                        other => prop_assert!(false, "unexpected fallback {other:?}"),
                    }
                    // The caller plans in full and hands the outcome back.
                    inc.apply(&full).unwrap();
                    apply_to(&mut shadow, &full);
                    trace.push(Err(f));
                }
            }
        }
        // The state is the cluster, always.
        let mine = inc.to_problem();
        prop_assert_eq!(summary(&mine), summary(&shadow));
    }
    Ok(trace)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Each arrival's incremental placement is the full plan's (grant, layout, creates,
    /// destroys), a request with no incremental candidate is one the full plan leaves waiting,
    /// and after every event the state equals the cluster; the same events give the same
    /// placements.
    #[test]
    fn incremental_placements_are_the_full_plans(seed in any::<u64>()) {
        let a = run(seed, 40)?;
        let b = run(seed, 40)?;
        prop_assert_eq!(a, b);
    }

    /// With held regions: nothing is placed on a GPU with a held region, a holder falls back,
    /// and whatever the incremental state places, the full plan serves too.
    #[test]
    fn held_regions_go_only_to_their_holders(seed in any::<u64>()) {
        let cat = Catalog::builtin();
        let mut rng = rng(seed);
        let mut shadow = cluster(cat, &mut rng);
        let mut held = Vec::new();
        for (n, g) in mig_gpus(&shadow) {
            if !rng.random_bool(0.5) {
                continue;
            }
            let gpu = &mut shadow.nodes[n].gpus[g];
            let model = gpu.model;
            let Sharing::Mig { instances, holds } = &mut gpu.sharing else { unreachable!() };
            let busy: Vec<Placed> = instances.iter().filter(|i| i.busy).map(|i| i.placed).collect();
            let profiles: Vec<_> = model.profile_indices().map(|(i, _)| i).collect();
            let want = profiles[rng.random_range(0..profiles.len())];
            if let Some((region, _)) = choose_hold(model, &busy, want) {
                holds.push(Hold { region, holder: RequestId(1000 + held.len() as u64) });
                held.push((n, g));
            }
        }
        let mut inc = Incremental::new(&shadow).unwrap();
        for e in 0..12u64 {
            let mut req = arrival(cat, &mut rng, e);
            if !held.is_empty() && rng.random_bool(0.2) {
                req.id = RequestId(1000 + rng.random_range(0..held.len() as u64));
            }
            let full = plan_typed(&with_request(&shadow, &[req]), &only_changed()).unwrap();
            match inc.place(&req) {
                Ok(p) => {
                    prop_assert!(!held.contains(&(p.grant.node, p.grant.gpu)), "placed on a held GPU");
                    prop_assert_eq!(full.grants.len(), 1, "the full plan does not serve it");
                    let o = Outcome {
                        gpus: vec![p.gpu.clone()],
                        grants: vec![p.grant],
                        unassigned: Vec::new(),
                        stats: full.stats,
                    };
                    apply_to(&mut shadow, &o);
                }
                Err(f) => {
                    let mig = matches!(req.ask, Ask::Mig { .. });
                    if req.id.0 >= 1000 && mig {
                        prop_assert_eq!(f, Fallback::Holder);
                    }
                    inc.apply(&full).unwrap();
                    apply_to(&mut shadow, &full);
                }
            }
            let mine = inc.to_problem();
            prop_assert_eq!(summary(&mine), summary(&shadow));
        }
    }

    /// A batch placed one by one serves the same number of requests as the full plan of the
    /// batch whenever the incremental state places it all.
    #[test]
    fn a_batch_placed_whole_is_one_the_full_plan_serves_whole(seed in any::<u64>(), k in 1usize..=BATCH_LIMIT) {
        let cat = Catalog::builtin();
        let mut rng = rng(seed);
        let shadow = cluster(cat, &mut rng);
        let mut inc = Incremental::new(&shadow).unwrap();
        let reqs: Vec<typed::Request> = (0..k as u64).map(|i| arrival(cat, &mut rng, i)).collect();
        let batch = inc.place_batch(&reqs);
        let full = plan_typed(&with_request(&shadow, &reqs), &only_changed()).unwrap();
        if batch.fallback.is_none() {
            prop_assert_eq!(batch.placed.len(), k);
            prop_assert_eq!(full.grants.len(), k);
        } else {
            prop_assert_eq!(batch.placed.len() + batch.rest.len(), k);
        }
    }
}

#[test]
fn a_departure_of_an_instance_that_is_not_busy_is_refused_and_marks_drift() {
    let cat = Catalog::builtin();
    let model = cat.lookup("a100-40gb").unwrap();
    let p = Placed::new(model.profile_named("1g.5gb").unwrap(), 0);
    let problem = typed::Problem {
        nodes: vec![typed::Node {
            gpus: vec![typed::Gpu {
                model,
                sharing: Sharing::mig(vec![Instance {
                    placed: p,
                    busy: false,
                }]),
            }],
        }],
        requests: Vec::new(),
    };
    let mut inc = Incremental::new(&problem).unwrap();
    let err = inc.release(0, 0, p, false).unwrap_err();
    assert!(err.to_string().contains("no busy instance"), "{err}");
    assert!(inc.drifted());
    let req = typed::Request {
        id: RequestId(1),
        ask: Ask::Mig {
            model,
            profile: p.profile,
        },
        priority: 1,
    };
    assert_eq!(inc.place(&req).unwrap_err(), Fallback::Drifted);
    inc.rebuild(&problem).unwrap();
    // The idle 1g.5gb is reused.
    let placed = inc.place(&req).unwrap();
    assert_eq!(placed.grant.slice, Slice::Mig(p));
    assert!(placed.gpu.create.is_empty() && placed.gpu.destroy.is_empty());
}

/// A defect of the full planner found by `held_regions_go_only_to_their_holders`: a GPU with a
/// held region before the first GPU of a second model gave that model's GPUs the held GPU's
/// tables (a debug assertion, "wrong profile", or an invalid plan in release builds).
#[test]
fn a_held_gpu_before_another_model_keeps_each_models_tables() {
    let cat = Catalog::builtin();
    let a40 = cat.lookup("a100-40gb").unwrap();
    let a80 = cat.lookup("a100-80gb").unwrap();
    let p40 = a40.profile_named("1g.5gb").unwrap();
    let p80 = a80.profile_named("1g.10gb").unwrap();
    let problem = typed::Problem {
        nodes: vec![
            typed::Node {
                gpus: vec![typed::Gpu {
                    model: a40,
                    sharing: Sharing::Mig {
                        instances: Vec::new(),
                        holds: vec![Hold {
                            region: Placed::new(a40.profile_named("7g.40gb").unwrap(), 0),
                            holder: RequestId(1000),
                        }],
                    },
                }],
            },
            typed::Node {
                gpus: vec![typed::Gpu {
                    model: a80,
                    sharing: Sharing::mig(vec![Instance {
                        placed: Placed::new(p80, 0),
                        busy: false,
                    }]),
                }],
            },
        ],
        requests: vec![typed::Request {
            id: RequestId(1),
            ask: Ask::Mig {
                model: a40,
                profile: p40,
            },
            priority: 1,
        }],
    };
    let o = plan_typed(&problem, &PlanOptions::default()).unwrap();
    // The held GPU is out of reach, and the A100 80GB has no 1g.5gb: nothing is served, and
    // the 80GB GPU keeps a layout of its own model.
    assert_eq!(o.grants, vec![]);
    for g in &o.gpus {
        assert!(g.model.validate(&g.layout).is_empty(), "{g:?}");
    }
}
