//! The typed entry point (`plan_typed`): it gives the file-format planner's plan on generated
//! inputs, converted here independently of the crate's own conversion; and held regions are
//! kept whole (nothing but the holder lands in or next to them in a way that would delay them)
//! and given to their holder when they fit.

use proptest::prelude::*;
use tessera_model::{Catalog, GpuModel, LayoutState, Placed};
use tessera_planner::gen::{bench_input, random_layout, rng, small_instance, BenchSpec};
use tessera_planner::typed::{
    self, Ask, GpuOutcome, Hold, Instance, Outcome, RequestId, Sharing, Slice,
};
use tessera_planner::{
    choose_hold, plan, plan_typed, AssignedSlice, Assignment, ClusterSpec, GpuMode, GpuPlan,
    InstanceRef, Plan, PlanOptions, Policy, RequestKind, RequestSpec,
};

/// The file-format input as a typed problem, written out here on its own: models by catalog
/// lookup, instance profiles by name, a MIG request's profile on the first cluster model that
/// has it (else any catalog model), request `i` as id `i`.
fn typed_of<'c>(catalog: &'c Catalog, c: &ClusterSpec, r: &[RequestSpec]) -> typed::Problem<'c> {
    let mut models: Vec<&GpuModel> = Vec::new();
    let nodes = c
        .nodes
        .iter()
        .map(|n| typed::Node {
            gpus: n
                .gpus
                .iter()
                .map(|g| {
                    let model = catalog.get(&g.model).unwrap();
                    if !models.iter().any(|m| m.key == model.key) {
                        models.push(model);
                    }
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
    let requests = r
        .iter()
        .enumerate()
        .map(|(i, q)| typed::Request {
            id: RequestId(i as u64),
            priority: q.priority,
            ask: match &q.kind {
                RequestKind::Mig(p) => {
                    let (model, profile) = models
                        .iter()
                        .copied()
                        .chain(catalog.models.iter())
                        .find_map(|m| Some((m, m.profile_named(p)?)))
                        .unwrap();
                    Ask::Mig { model, profile }
                }
                RequestKind::Mps(m) => Ask::Mps(*m),
                RequestKind::Timeslice => Ask::Timeslice,
            },
        })
        .collect();
    typed::Problem { nodes, requests }
}

/// The typed outcome with the input's names, as the wire-format plan.
fn named(o: &Outcome<'_>, c: &ClusterSpec, r: &[RequestSpec], policy: Policy) -> Plan {
    let refs = |m: &GpuModel, v: &[Placed]| -> Vec<InstanceRef> {
        v.iter()
            .map(|p| InstanceRef {
                profile: m.profile(p.profile).name.as_str().into(),
                start: p.start,
            })
            .collect()
    };
    Plan {
        policy,
        gpus: o
            .gpus
            .iter()
            .map(|g: &GpuOutcome<'_>| GpuPlan {
                node: c.nodes[g.node].name.as_str().into(),
                gpu: g.gpu,
                model: g.model.key.as_str().into(),
                mode: g.mode,
                layout: refs(g.model, &g.layout),
                create: refs(g.model, &g.create),
                destroy: refs(g.model, &g.destroy),
                mode_change: None,
            })
            .collect(),
        assignments: o
            .grants
            .iter()
            .map(|a| Assignment {
                request: r[a.request.0 as usize].id.clone(),
                node: c.nodes[a.node].name.as_str().into(),
                gpu: a.gpu,
                slice: match a.slice {
                    Slice::Mig(p) => AssignedSlice::Mig {
                        profile: a.model.profile(p.profile).name.as_str().into(),
                        start: p.start,
                    },
                    Slice::Mps(m) => AssignedSlice::Mps {
                        memory_mib: m.memory_mib,
                        sm_percent: m.sm_percent,
                    },
                    Slice::Timeslice => AssignedSlice::Timeslice { timeslice: true },
                },
            })
            .collect(),
        unassigned: o
            .unassigned
            .iter()
            .map(|id| r[id.0 as usize].id.clone())
            .collect(),
        stats: o.stats,
    }
}

fn same_plan(c: &ClusterSpec, r: &[RequestSpec], policy: Policy, only_changed: bool) {
    let cat = Catalog::builtin();
    let opts = PlanOptions {
        only_changed,
        ..PlanOptions::with_policy(policy)
    };
    let file = plan(cat, c, r, &opts).unwrap();
    let t = plan_typed(&typed_of(cat, c, r), &opts).unwrap();
    assert_eq!(
        named(&t, c, r, policy).to_json(),
        file.to_json(),
        "{policy}: the typed plan differs"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every policy gives the same plan through the typed entry point as through the file
    /// format (nodes in name order, the order `nos` walks in both).
    #[test]
    fn the_typed_api_gives_the_file_formats_plan(seed in any::<u64>()) {
        let (mut c, r) = small_instance(Catalog::builtin(), seed);
        c.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for policy in Policy::ALL {
            same_plan(&c, &r, policy, seed % 2 == 0);
        }
    }
}

#[test]
fn the_typed_api_gives_the_file_formats_plan_on_a_large_input() {
    let spec = BenchSpec {
        nodes: 60,
        gpus_per_node: 8,
        pending: 400,
        seed: 3,
    };
    let (c, r) = bench_input(Catalog::builtin(), &spec);
    for policy in [Policy::Tessera, Policy::Nos, Policy::FirstFit] {
        same_plan(&c, &r, policy, false);
        same_plan(&c, &r, policy, true);
    }
}

/// An H100 with `busy` instances busy and `idle` idle, one hold, and `asks` MIG requests (ids
/// 1..); the holder (id 100) is among the requests when `holder_waits`.
fn held_problem<'c>(
    model: &'c GpuModel,
    instances: Vec<Instance>,
    hold: Hold,
    asks: &[Placed],
    holder_waits: bool,
) -> typed::Problem<'c> {
    let mut requests: Vec<typed::Request> = asks
        .iter()
        .enumerate()
        .map(|(i, p)| typed::Request {
            id: RequestId(i as u64 + 1),
            ask: Ask::Mig {
                model,
                profile: p.profile,
            },
            priority: 1,
        })
        .collect();
    if holder_waits {
        requests.insert(
            0,
            typed::Request {
                id: hold.holder,
                ask: Ask::Mig {
                    model,
                    profile: hold.region.profile,
                },
                priority: 1,
            },
        );
    }
    typed::Problem {
        nodes: vec![typed::Node {
            gpus: vec![typed::Gpu {
                model,
                sharing: Sharing::Mig {
                    instances,
                    holds: vec![hold],
                },
            }],
        }],
        requests,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the GPU's state, the hold and the requests: busy instances stay, the layout is
    /// valid, no instance overlapping the held region is created or given to anyone but its
    /// holder, the region still fits next to the busy and newly given instances outside it,
    /// and the holder gets exactly its region when the region fits now.
    #[test]
    fn a_held_region_is_kept_whole_and_given_to_its_holder(
        seed in any::<u64>(),
        model_ix in 0usize..3,
        holder_waits in any::<bool>(),
        policy_ix in 0usize..3,
    ) {
        use rand::Rng;
        let cat = Catalog::builtin();
        let model = cat.lookup(["h100-80gb", "a100-40gb", "a30-24gb"][model_ix]).unwrap();
        let mut rng = rng(seed);
        let fill = rng.random_range(0.3..1.0);
        let layout = random_layout(model, &mut rng, fill);
        let instances: Vec<Instance> = layout
            .iter()
            .map(|&placed| Instance { placed, busy: rng.random_bool(0.5) })
            .collect();
        let busy: Vec<Placed> = instances.iter().filter(|i| i.busy).map(|i| i.placed).collect();
        let profiles: Vec<_> = model.profile_indices().map(|(i, _)| i).collect();
        let want = profiles[rng.random_range(0..profiles.len())];
        let Some((region, _)) = choose_hold(model, &busy, want) else {
            return Ok(());
        };
        let hold = Hold { region, holder: RequestId(100) };
        let asks: Vec<Placed> = (0..rng.random_range(1..6))
            .map(|_| Placed::new(profiles[rng.random_range(0..profiles.len())], 0))
            .collect();
        let problem = held_problem(model, instances.clone(), hold, &asks, holder_waits);
        let policy = [Policy::Tessera, Policy::Nos, Policy::FirstFit][policy_ix];
        let o = plan_typed(&problem, &PlanOptions::with_policy(policy)).unwrap();
        let g = &o.gpus[0];
        prop_assert!(model.validate(&g.layout).is_empty(), "invalid layout {:?}", g.layout);
        for b in &busy {
            prop_assert!(g.layout.contains(b), "busy {b:?} destroyed");
        }
        let overlaps = |p: Placed| model.mask(p) & model.mask(region) != 0;
        let holder_got = o.grants.iter().find(|a| a.request == hold.holder).map(|a| a.slice);
        for c in &g.create {
            prop_assert!(
                !overlaps(*c) || (*c == region && holder_got == Some(Slice::Mig(region))),
                "created {c:?} in the held region {region:?}"
            );
        }
        let mut outside: Vec<Placed> = busy.iter().copied().filter(|b| !overlaps(*b)).collect();
        for a in o.grants.iter().filter(|a| a.request != hold.holder) {
            let Slice::Mig(p) = a.slice else { unreachable!() };
            prop_assert!(!overlaps(p), "request {} got {p:?} in the held region {region:?}", a.request.0);
            outside.push(p);
        }
        prop_assert!(
            LayoutState::of(model, &outside).fits(model, region),
            "the held region {region:?} no longer fits next to {outside:?}"
        );
        let fits_now = LayoutState::of(model, &busy).fits(model, region);
        if holder_waits && fits_now {
            prop_assert_eq!(holder_got, Some(Slice::Mig(region)));
        }
        if !fits_now {
            prop_assert_eq!(holder_got, None);
        }
    }
}

#[test]
fn a_hold_blocks_the_room_it_needs_but_not_the_rest() {
    let cat = Catalog::builtin();
    let m = cat.lookup("h100-80gb").unwrap();
    let spec = |s: &str| m.parse_spec(s).unwrap();
    let busy = |s: &str| Instance {
        placed: spec(s),
        busy: true,
    };
    // 1g@0, 1g@1 and 1g@4 busy; 3g.40gb@4 is held (one busy instance in its way).
    let instances = vec![busy("1g.10gb@0"), busy("1g.10gb@1"), busy("1g.10gb@4")];
    let hold = Hold {
        region: spec("3g.40gb@4"),
        holder: RequestId(9),
    };
    let one = |instances: Vec<Instance>, holds: Vec<Hold>| {
        let p = held_problem(m, instances, hold, &[spec("1g.10gb@0")], false);
        let mut p = p;
        if let Sharing::Mig { holds: h, .. } = &mut p.nodes[0].gpus[0].sharing {
            *h = holds;
        }
        plan_typed(&p, &PlanOptions::default()).unwrap()
    };
    // A 1g.10gb goes to slice 2 or 3, not into 4-7 ...
    let o = one(instances.clone(), vec![hold]);
    match o.grants[0].slice {
        Slice::Mig(p) => assert!(p.start < 4, "{p:?} is in the held region"),
        other => panic!("{other:?}"),
    }
    // ... and once slices 0-3 are taken it waits, although 5 and 6 are free ...
    let mut full = instances.clone();
    full.push(busy("1g.10gb@2"));
    full.push(busy("1g.10gb@3"));
    assert!(one(full.clone(), vec![hold]).grants.is_empty());
    // ... where without the hold it is served.
    assert_eq!(one(full, vec![]).grants.len(), 1);
    // The holder itself gets the region once the instance in its way has ended, even with an
    // idle instance in it (destroyed).
    let mut freed = vec![busy("1g.10gb@0"), busy("1g.10gb@1")];
    freed.push(Instance {
        placed: spec("1g.10gb@5"),
        busy: false,
    });
    let p = held_problem(m, freed, hold, &[], true);
    let o = plan_typed(&p, &PlanOptions::default()).unwrap();
    assert_eq!(o.grants[0].slice, Slice::Mig(spec("3g.40gb@4")));
    assert_eq!(o.gpus[0].destroy, vec![spec("1g.10gb@5")]);
}

#[test]
fn bad_holds_are_refused_with_the_fix() {
    let cat = Catalog::builtin();
    let m = cat.lookup("h100-80gb").unwrap();
    let spec = |s: &str| m.parse_spec(s).unwrap();
    let mut p = held_problem(
        m,
        vec![],
        Hold {
            region: spec("3g.40gb@4"),
            holder: RequestId(1),
        },
        &[],
        false,
    );
    if let Sharing::Mig { holds, .. } = &mut p.nodes[0].gpus[0].sharing {
        holds.push(Hold {
            region: spec("2g.20gb@4"),
            holder: RequestId(2),
        });
    }
    let e = plan_typed(&p, &PlanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlap") && e.contains("disjoint"), "{e}");
    if let Sharing::Mig { holds, .. } = &mut p.nodes[0].gpus[0].sharing {
        holds.truncate(1);
        holds[0].region = Placed::new(spec("3g.40gb@4").profile, 1);
    }
    let e = plan_typed(&p, &PlanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a placement"), "{e}");
}

#[test]
fn a_repeated_request_id_is_refused_in_any_order() {
    let cat = Catalog::builtin();
    let m = cat.lookup("h100-80gb").unwrap();
    let p = m.profile_named("1g.10gb").unwrap();
    let req = |id| typed::Request {
        id: RequestId(id),
        ask: Ask::Mig {
            model: m,
            profile: p,
        },
        priority: 1,
    };
    for ids in [vec![1, 2, 1], vec![5, 3, 4, 3], vec![2, 2]] {
        let problem = typed::Problem {
            nodes: vec![],
            requests: ids.iter().map(|&i| req(i)).collect(),
        };
        let e = plan_typed(&problem, &PlanOptions::default()).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{ids:?}: {e}");
    }
    let fine = typed::Problem {
        nodes: vec![],
        requests: [3, 1, 2].iter().map(|&i| req(i)).collect(),
    };
    assert_eq!(
        plan_typed(&fine, &PlanOptions::default())
            .unwrap()
            .unassigned
            .len(),
        3
    );
}
