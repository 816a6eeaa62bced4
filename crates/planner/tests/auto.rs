//! `mode: auto` GPUs (docs/mode-auto.md): the input format, each part of the mode rule, the
//! output (`mode_change` on the GPU, table and JSON), the typed entry point, the checker, and
//! the rule's invariants on random inputs (never serves less than keeping every mode, never
//! changes a busy GPU's mode, deterministic).

use proptest::prelude::*;
use tessera_model::Catalog;
use tessera_planner::gen::small_instance;
use tessera_planner::typed::{self, Ask, RequestId, Sharing};
use tessera_planner::{
    check_plan, plan, plan_auto, AutoGpu, AutoSpec, ClusterSpec, GpuMode, ModeBlock, Plan,
    PlanDocument, PlanOptions, Policy, RequestSpec,
};

fn doc(text: &str) -> (ClusterSpec, Vec<RequestSpec>) {
    let (c, r) = PlanDocument::from_str_any(text).unwrap().into_parts();
    (c, r.unwrap_or_default())
}

/// Plan with `policy`, check the plan independently, and plan again to see it is the same.
fn planned(c: &ClusterSpec, r: &[RequestSpec], policy: Policy) -> Plan {
    let cat = Catalog::builtin();
    let opts = PlanOptions::with_policy(policy);
    let p = plan(cat, c, r, &opts).unwrap();
    check_plan(cat, c, r, &opts, &p)
        .unwrap_or_else(|e| panic!("{policy}: {e:#?}\n{}", p.to_json()));
    assert_eq!(p, plan(cat, c, r, &opts).unwrap(), "not deterministic");
    p
}

fn tessera(text: &str) -> Plan {
    let (c, r) = doc(text);
    planned(&c, &r, Policy::Tessera)
}

/// An idle auto GPU in MIG mode, and MPS requests that no GPU in MPS mode can take.
const MPS_WAITS: &str = "
nodes:
- name: a
  gpus:
  - {model: h100-80gb, mode: auto}
requests:
- {id: m1, mps: {memory_mib: 10000, sm_percent: 30}}
- {id: m2, mps: {memory_mib: 10000, sm_percent: 30}}
";

#[test]
fn an_idle_auto_gpu_becomes_mps_for_waiting_mps_requests() {
    let p = tessera(MPS_WAITS);
    let g = &p.gpus[0];
    assert_eq!(g.mode, GpuMode::Mps);
    let c = g.mode_change.as_ref().expect("a mode change");
    assert_eq!(
        (c.from, c.to, c.gain, c.blocked),
        (GpuMode::Mig, GpuMode::Mps, 2, None)
    );
    assert!(
        c.reason.contains("2 waiting request(s) ask for mps"),
        "{}",
        c.reason
    );
    assert_eq!(p.stats.served, 2);
    let json = p.to_json();
    assert!(json.contains("\"mode_change\": {"), "{json}");
    assert!(json.contains("\"from\": \"mig\""), "{json}");
}

#[test]
fn an_idle_auto_gpu_becomes_mig_for_waiting_mig_requests_and_its_instances_are_planned() {
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - {model: a100-40gb, mode: auto, current: mps}
requests:
- {id: r1, mig: 3g.20gb}
- {id: r2, mig: 2g.10gb, priority: 2}
",
    );
    let g = &p.gpus[0];
    assert_eq!(g.mode, GpuMode::Mig);
    assert_eq!(g.switches_mode().unwrap().from, GpuMode::Mps);
    assert_eq!(g.create.len(), 2, "{}", p.to_json());
    assert_eq!(p.stats.served_priority, 3);
}

#[test]
fn an_idle_auto_gpu_becomes_timeslice_with_its_own_replicas() {
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - {model: a30-24gb, mode: auto, replicas: 2}
requests:
- {id: t1, timeslice: true}
- {id: t2, timeslice: true}
- {id: t3, timeslice: true}
",
    );
    assert_eq!(p.gpus[0].mode, GpuMode::Timeslice);
    assert_eq!(p.stats.served, 2, "two replicas offered once time-sliced");
    assert_eq!(p.unassigned, ["t3"]);
}

#[test]
fn an_auto_gpu_whose_mode_already_serves_is_left_alone() {
    // MIG requests on an auto GPU in MIG mode: nothing to gain by switching.
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - {model: a100-40gb, mode: auto}
requests:
- {id: r1, mig: 1g.5gb}
",
    );
    assert_eq!(p.gpus[0].mode, GpuMode::Mig);
    assert_eq!(p.gpus[0].mode_change, None);
    // And no request of another kind waits when the other GPUs serve them already.
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - {model: a100-40gb, mode: auto}
  - {model: h100-80gb, mode: mps}
requests:
- {id: m1, mps: {memory_mib: 1000, sm_percent: 10}}
",
    );
    assert!(
        p.gpus.iter().all(|g| g.mode_change.is_none()),
        "{}",
        p.to_json()
    );
    assert_eq!(p.assignments[0].gpu, 1);
}

#[test]
fn a_busy_auto_gpu_keeps_its_mode_and_the_plan_says_why() {
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - model: a100-40gb
    mode: auto
    clients: [{memory_mib: 4000, sm_percent: 20}]
requests:
- {id: r1, mig: 1g.5gb}
",
    );
    let g = &p.gpus[0];
    assert_eq!(g.mode, GpuMode::Mps, "the current mode, from its clients");
    let c = g
        .mode_change
        .as_ref()
        .expect("the blocked change is reported");
    assert_eq!((c.to, c.blocked), (GpuMode::Mig, Some(ModeBlock::Busy)));
    assert!(c.reason.contains("work runs on it"), "{}", c.reason);
    assert_eq!(g.switches_mode(), None);
    assert_eq!(p.unassigned, ["r1"]);
}

#[test]
fn an_auto_gpu_that_cannot_switch_is_reported_not_switched() {
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - {model: h100-80gb, mode: auto, can_switch: false}
requests:
- {id: m1, mps: {memory_mib: 1000, sm_percent: 10}}
",
    );
    let g = &p.gpus[0];
    assert_eq!(g.mode, GpuMode::Mig);
    let c = g.mode_change.as_ref().unwrap();
    assert_eq!(c.blocked, Some(ModeBlock::CannotSwitch));
    assert!(c.reason.contains("GPU reset"), "{}", c.reason);
    assert_eq!(p.stats.served, 0);
    assert!(p.to_json().contains("\"blocked\": \"cannot-switch\""));
}

#[test]
fn two_idle_auto_gpus_split_between_the_kinds_that_wait() {
    let p = tessera(
        "
nodes:
- name: a
  gpus:
  - {model: a100-40gb, mode: auto, current: timeslice}
  - {model: a100-40gb, mode: auto, current: timeslice}
requests:
- {id: r1, mig: 7g.40gb}
- {id: m1, mps: {memory_mib: 30000, sm_percent: 90}}
",
    );
    // The first GPU takes the cheaper of two equal gains (MPS: no operation), the second the
    // other kind.
    let modes: Vec<GpuMode> = p.gpus.iter().map(|g| g.mode).collect();
    assert_eq!(modes, [GpuMode::Mps, GpuMode::Mig]);
    assert_eq!(p.stats.served, 2);
}

#[test]
fn the_mode_that_serves_more_priority_wins() {
    // One idle GPU: a priority-5 MIG request against two priority-1 MPS requests.
    let text = |prio: u32| {
        format!(
            "
nodes:
- name: a
  gpus:
  - {{model: h100-80gb, mode: auto, current: timeslice}}
requests:
- {{id: m1, mps: {{memory_mib: 1000, sm_percent: 10}}}}
- {{id: m2, mps: {{memory_mib: 1000, sm_percent: 10}}}}
- {{id: r1, mig: 7g.80gb, priority: {prio}}}
"
        )
    };
    let p5 = tessera(&text(5));
    assert_eq!(p5.gpus[0].mode, GpuMode::Mig, "{}", p5.to_json());
    assert_eq!(tessera(&text(1)).gpus[0].mode, GpuMode::Mps);
    // A tie in priority (2 against 2) goes by the rest of the objective: MPS needs no
    // operation, MIG one create.
    assert_eq!(tessera(&text(2)).gpus[0].mode, GpuMode::Mps);
}

#[test]
fn only_changed_still_lists_a_switched_gpu() {
    let (c, r) = doc(MPS_WAITS);
    let opts = PlanOptions {
        only_changed: true,
        ..PlanOptions::default()
    };
    let p = plan(Catalog::builtin(), &c, &r, &opts).unwrap();
    assert_eq!(p.gpus.len(), 1);
    assert_eq!(p.gpus[0].mode, GpuMode::Mps);
    assert!(p.gpus[0].mode_change.is_some());
}

#[test]
fn auto_round_trips_and_bad_fields_are_named() {
    let (c, _) = doc("
nodes:
- name: a
  gpus:
  - {model: h100-80gb, mode: auto, current: timeslice, can_switch: false, replicas: 3}
  - {model: h100-80gb, mode: mps}
");
    let g = &c.nodes[0].gpus[0];
    assert_eq!(g.mode, GpuMode::Timeslice);
    assert_eq!(g.auto, Some(AutoSpec { can_switch: false }));
    assert_eq!(c.nodes[0].gpus[1].auto, None);
    let json = serde_json::to_string(&c).unwrap();
    assert!(
        json.contains(r#""mode":"auto","current":"timeslice","can_switch":false"#),
        "{json}"
    );
    assert!(
        json.contains(r#"{"model":"h100-80gb","mode":"mps"}"#),
        "{json}"
    );
    assert_eq!(ClusterSpec::from_str_any(&json).unwrap(), c);

    let err = ClusterSpec::from_str_any(
        "nodes: [{name: a, gpus: [{model: a30-24gb, mode: mig, current: mps}]}]",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`current` is only for `mode: auto`"), "{err}");
    let err =
        ClusterSpec::from_str_any("nodes: [{name: a, gpus: [{model: a30-24gb, mode: fast}]}]")
            .unwrap_err()
            .to_string();
    assert!(err.contains("auto"), "the choices include auto: {err}");
}

#[test]
fn the_checker_refuses_a_mode_change_the_rule_could_not_make() {
    let cat = Catalog::builtin();
    let opts = PlanOptions::default();
    let (c, r) = doc(MPS_WAITS);
    let good = plan(cat, &c, &r, &opts).unwrap();
    // The same plan against the GPU configured `mps`-less and not auto.
    let mut fixed = c.clone();
    fixed.nodes[0].gpus[0].auto = None;
    let errs = check_plan(cat, &fixed, &r, &opts, &good).unwrap_err();
    assert!(errs[0].contains("not `mode: auto`"), "{errs:?}");
    // ... and against a GPU that cannot switch.
    let mut stuck = c.clone();
    stuck.nodes[0].gpus[0].auto = Some(AutoSpec { can_switch: false });
    let errs = check_plan(cat, &stuck, &r, &opts, &good).unwrap_err();
    assert!(errs[0].contains("cannot switch"), "{errs:?}");
}

#[test]
fn the_typed_entry_point_reports_the_same_change() {
    let cat = Catalog::builtin();
    let h100 = cat.get("h100-80gb").unwrap();
    let problem = typed::Problem {
        nodes: vec![typed::Node {
            gpus: vec![
                typed::Gpu {
                    model: h100,
                    sharing: Sharing::mig(Vec::new()),
                },
                typed::Gpu {
                    model: h100,
                    sharing: Sharing::mig(Vec::new()),
                },
            ],
        }],
        requests: vec![typed::Request {
            id: RequestId(7),
            ask: Ask::Timeslice,
            priority: 1,
        }],
    };
    let auto = [AutoGpu {
        node: 0,
        gpu: 1,
        can_switch: true,
        replicas: None,
    }];
    let out = plan_auto(&problem, &auto, &PlanOptions::default()).unwrap();
    assert_eq!(out.changes.len(), 1);
    assert_eq!((out.changes[0].node, out.changes[0].gpu), (0, 1));
    assert_eq!(out.changes[0].change.to, GpuMode::Timeslice);
    assert_eq!(out.outcome.grants[0].gpu, 1);
    assert_eq!(out.outcome.gpus[1].mode, GpuMode::Timeslice);
    // Without the auto list it is the ordinary plan: nothing served.
    let plain = plan_auto(&problem, &[], &PlanOptions::default()).unwrap();
    assert!(plain.changes.is_empty() && plain.outcome.grants.is_empty());
    // A GPU that is not in the problem is named.
    let bad = [AutoGpu { gpu: 5, ..auto[0] }];
    let err = plan_auto(&problem, &bad, &PlanOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not in the problem"), "{err}");
}

/// Whether a GPU of the input has work on it.
fn busy(g: &tessera_planner::GpuSpec) -> bool {
    g.instances.iter().any(|i| i.used) || !g.clients.is_empty() || g.replicas_used > 0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Marking GPUs `auto` never serves less than keeping them in their modes, never changes a
    /// busy GPU's or a non-switchable GPU's mode, keeps every guarantee, and is deterministic.
    #[test]
    fn auto_never_serves_less_and_never_switches_a_busy_gpu(seed in any::<u64>(), marks in any::<u32>()) {
        let (fixed, r) = small_instance(Catalog::builtin(), seed);
        let mut c = fixed.clone();
        let mut bit = 0;
        for n in &mut c.nodes {
            for g in &mut n.gpus {
                if marks >> bit & 1 == 1 {
                    g.auto = Some(AutoSpec { can_switch: marks >> (bit + 1) & 1 == 0 });
                }
                bit += 2;
            }
        }
        for policy in [Policy::Tessera, Policy::Nos, Policy::FirstFit] {
            let base = planned(&fixed, &r, policy);
            let p = planned(&c, &r, policy);
            prop_assert!(p.stats.served_priority >= base.stats.served_priority,
                "{policy}: auto serves {} < {}", p.stats.served_priority, base.stats.served_priority);
            for (ni, n) in c.nodes.iter().enumerate() {
                for (gi, g) in n.gpus.iter().enumerate() {
                    let gp = p.gpus.iter().find(|x| x.node == n.name && x.gpu == gi).unwrap();
                    let switchable = g.auto.is_some_and(|a| a.can_switch) && !busy(g);
                    if !switchable {
                        prop_assert_eq!(gp.mode, g.mode, "{} node {} GPU {}", policy, ni, gi);
                    }
                    if let Some(ch) = &gp.mode_change {
                        prop_assert!(g.auto.is_some());
                        prop_assert!(ch.gain > 0);
                        prop_assert_eq!(ch.blocked.is_none(), switchable);
                    }
                }
            }
            if c.nodes.iter().all(|n| n.gpus.iter().all(|g| g.auto.is_none())) {
                prop_assert_eq!(p.to_json(), base.to_json());
            }
        }
    }
}

/// The random inputs of the property above do exercise the rule: with every GPU `auto`, some
/// plans switch an idle GPU and some report a busy one.
#[test]
fn random_inputs_switch_some_gpus_and_block_others() {
    let (mut planned_n, mut blocked_n) = (0, 0);
    for seed in 0..100 {
        let (mut c, r) = small_instance(Catalog::builtin(), seed);
        for g in c.nodes.iter_mut().flat_map(|n| n.gpus.iter_mut()) {
            g.auto = Some(AutoSpec { can_switch: true });
        }
        for g in planned(&c, &r, Policy::Tessera).gpus {
            match g.mode_change.map(|m| m.blocked) {
                Some(None) => planned_n += 1,
                Some(Some(_)) => blocked_n += 1,
                None => {}
            }
        }
    }
    assert!(
        planned_n > 5 && blocked_n > 5,
        "{planned_n} planned, {blocked_n} blocked"
    );
}
