//! Hand-written cases for the planner's semantics, objective and error messages.

use tessera_model::Catalog;
use tessera_planner::gen::{bench_input, BenchSpec};
use tessera_planner::{
    check_plan, plan, AssignedSlice, ClusterSpec, Plan, PlanError, PlanOptions, Policy,
    RequestSpec, RequestsFile,
};

fn cluster(yaml: &str) -> ClusterSpec {
    ClusterSpec::from_str_any(yaml).unwrap()
}

fn requests(yaml: &str) -> Vec<RequestSpec> {
    RequestsFile::from_str_any(yaml).unwrap().requests
}

/// Plan with `policy` and check the plan's guarantees.
fn run(policy: Policy, c: &ClusterSpec, r: &[RequestSpec]) -> Plan {
    run_with(&PlanOptions::with_policy(policy), c, r)
}

/// Plan with `opts` and check the plan's guarantees.
fn run_with(opts: &PlanOptions, c: &ClusterSpec, r: &[RequestSpec]) -> Plan {
    let cat = Catalog::builtin();
    let p = plan(cat, c, r, opts).unwrap();
    check_plan(cat, c, r, opts, &p).unwrap();
    p
}

/// A generated cluster and its pending requests, as `tessera bench plan` makes them.
fn generated(
    nodes: usize,
    gpus_per_node: usize,
    pending: usize,
    seed: u64,
) -> (ClusterSpec, Vec<RequestSpec>) {
    bench_input(
        Catalog::builtin(),
        &BenchSpec {
            nodes,
            gpus_per_node,
            pending,
            seed,
        },
    )
}

fn mig_of(p: &Plan, id: &str) -> Option<(String, usize, String, u8)> {
    p.assignments
        .iter()
        .find(|a| a.request == id)
        .map(|a| match &a.slice {
            AssignedSlice::Mig { profile, start } => {
                (a.node.to_string(), a.gpu, profile.to_string(), *start)
            }
            other => panic!("{id} got {other:?}"),
        })
}

fn specs(list: &[tessera_planner::InstanceRef]) -> Vec<String> {
    list.iter()
        .map(|i| format!("{}@{}", i.profile, i.start))
        .collect()
}

#[test]
fn the_issue_example_plans_every_mode() {
    let c = cluster(include_str!("fixtures/example-cluster.yaml"));
    let r = requests(include_str!("fixtures/example-requests.yaml"));
    for policy in [Policy::Tessera, Policy::Exact] {
        let p = run(policy, &c, &r);
        assert_eq!(p.stats.served, 4, "{policy}: {p:?}");
        assert_eq!(p.stats.served_priority, 8);
        // r1 reuses the free 1g.5gb; r2 is created next to it.
        assert_eq!(
            mig_of(&p, "r1"),
            Some(("node-a".into(), 0, "1g.5gb".into(), 0))
        );
        assert_eq!(p.stats.operations, 1, "{policy}");
        let json = serde_json::to_value(&p).unwrap();
        let assignment = |id: &str| {
            json["assignments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["request"] == id)
                .unwrap()
        };
        let mps = assignment("r3");
        assert_eq!(mps["gpu"], 1);
        assert_eq!(mps["memory_mib"], 10000);
        assert_eq!(mps["sm_percent"], 20);
        assert!(mps.get("profile").is_none());
        let ts = assignment("r4");
        assert_eq!(ts["gpu"], 2);
        assert_eq!(ts["timeslice"], true);
    }
}

#[test]
fn the_json_shape_is_the_documented_one() {
    let c = cluster("nodes: [{name: n, gpus: [{model: h100-80gb}]}]");
    let r = requests("requests: [{id: a, mig: 3g.40gb}, {id: b, mig: 7g.80gb}]");
    let p = run(Policy::Tessera, &c, &r);
    let v = serde_json::to_value(&p).unwrap();
    let keys =
        |x: &serde_json::Value| -> Vec<String> { x.as_object().unwrap().keys().cloned().collect() };
    let mut top = keys(&v);
    top.sort();
    assert_eq!(
        top,
        ["assignments", "gpus", "policy", "stats", "unassigned"]
    );
    assert_eq!(v["policy"], "tessera");
    let mut g = keys(&v["gpus"][0]);
    g.sort();
    assert_eq!(
        g,
        ["create", "destroy", "gpu", "layout", "mode", "model", "node"]
    );
    let mut a = keys(&v["assignments"][0]);
    a.sort();
    assert_eq!(a, ["gpu", "node", "profile", "request", "start"]);
    let mut s = keys(&v["stats"]);
    s.sort();
    assert_eq!(s, ["operations", "served", "served_priority"]);
    assert_eq!(v["unassigned"], serde_json::json!(["b"]));
    // The plan reads back unchanged.
    let back: Plan = serde_json::from_value(v).unwrap();
    assert_eq!(back, p);
}

#[test]
fn a_free_matching_instance_is_reused_before_anything_is_created() {
    let c = cluster(
        "nodes:
- name: a
  gpus:
  - model: h100-80gb
  - model: h100-80gb
    instances: [{profile: 2g.20gb, start: 4}, {profile: 1g.10gb, start: 6, used: true}]
",
    );
    let r = requests("requests: [{id: r, mig: 2g.20gb}]");
    for policy in [Policy::Tessera, Policy::Exact, Policy::Nos] {
        // nos re-partitions nothing either: the cluster has a free 2g.20gb device.
        let p = run(policy, &c, &r);
        assert_eq!(
            mig_of(&p, "r"),
            Some(("a".into(), 1, "2g.20gb".into(), 4)),
            "{policy}"
        );
        assert_eq!(p.stats.operations, 0, "{policy}");
    }
    // First-fit takes the first GPU that can serve, and creates there.
    let p = run(Policy::FirstFit, &c, &r);
    assert_eq!(mig_of(&p, "r"), Some(("a".into(), 0, "2g.20gb".into(), 0)));
    assert_eq!(p.stats.operations, 1);
}

#[test]
fn busy_instances_are_never_destroyed_or_moved() {
    // A busy 1g.10gb in the middle blocks the full-GPU profile whatever its priority.
    let c = cluster(
        "nodes:
- name: a
  gpus:
  - model: a100-80gb
    instances:
    - {profile: 1g.10gb, start: 3, used: true}
    - {profile: 1g.10gb, start: 0}
    - {profile: 1g.10gb, start: 1}
",
    );
    let r = requests("requests: [{id: big, mig: 7g.80gb, priority: 100}]");
    for policy in Policy::ALL {
        let p = run(policy, &c, &r);
        assert_eq!(p.unassigned, ["big"], "{policy}");
        assert_eq!(
            p.stats.operations, 0,
            "{policy}: nothing to gain, nothing to destroy"
        );
        assert!(specs(&p.gpus[0].layout).contains(&"1g.10gb@3".to_string()));
    }
}

#[test]
fn idle_instances_are_destroyed_only_when_that_serves_more() {
    let c = cluster(
        "nodes:
- name: a
  gpus:
  - model: a100-80gb
    instances:
    - {profile: 3g.40gb, start: 0}
    - {profile: 3g.40gb, start: 4}
",
    );
    // One 7g (priority 3) against two 3g (priority 1 each): the 7g is worth more.
    let r = requests(
        "requests: [{id: s1, mig: 3g.40gb}, {id: s2, mig: 3g.40gb}, {id: big, mig: 7g.80gb, priority: 3}]",
    );
    for policy in [Policy::Tessera, Policy::Exact] {
        let p = run(policy, &c, &r);
        assert_eq!(p.stats.served_priority, 3, "{policy}");
        assert_eq!(
            mig_of(&p, "big"),
            Some(("a".into(), 0, "7g.80gb".into(), 0))
        );
        assert_eq!(specs(&p.gpus[0].destroy), ["3g.40gb@0", "3g.40gb@4"]);
        assert_eq!(specs(&p.gpus[0].create), ["7g.80gb@0"]);
        assert_eq!(p.stats.operations, 3);
    }
    // At priority 2 the two reused 3g serve as much with no operation: keep them.
    let r = requests(
        "requests: [{id: s1, mig: 3g.40gb}, {id: s2, mig: 3g.40gb}, {id: big, mig: 7g.80gb, priority: 2}]",
    );
    for policy in [Policy::Tessera, Policy::Exact] {
        let p = run(policy, &c, &r);
        assert_eq!(p.stats.served_priority, 2, "{policy}");
        assert_eq!(p.stats.operations, 0, "{policy}");
        assert_eq!(p.unassigned, ["big"]);
    }
}

#[test]
fn sum_of_priorities_beats_a_single_high_priority_request() {
    // Seven 1g (priority 1 each) are worth more than one 7g of priority 5.
    let c = cluster("nodes: [{name: a, gpus: [{model: h100-80gb}]}]");
    let mut text = String::from("requests:\n- {id: big, mig: 7g.80gb, priority: 5}\n");
    for i in 0..7 {
        text.push_str(&format!("- {{id: s{i}, mig: 1g.10gb}}\n"));
    }
    let r = requests(&text);
    for policy in [Policy::Tessera, Policy::Exact] {
        let p = run(policy, &c, &r);
        assert_eq!(p.stats.served_priority, 7, "{policy}");
        assert_eq!(p.unassigned, ["big"]);
    }
    // First-fit takes the high priority first and stops there.
    assert_eq!(run(Policy::FirstFit, &c, &r).stats.served_priority, 5);
}

#[test]
fn fewer_operations_break_ties_and_then_the_free_score() {
    // Two empty GPUs and one 3g: any placement is one operation; exact and tessera keep one
    // GPU whole (free score 64 + 16) rather than ... there is no better, so check the layout.
    let c = cluster("nodes: [{name: a, gpus: [{model: h100-80gb}, {model: h100-80gb, instances: [{profile: 4g.40gb, start: 0, used: true}]}]}]");
    let r = requests("requests: [{id: r, mig: 3g.40gb}]");
    for policy in [Policy::Tessera, Policy::Exact] {
        let p = run(policy, &c, &r);
        // Best fit: the half-used GPU takes it, the empty GPU stays whole.
        assert_eq!(
            mig_of(&p, "r"),
            Some(("a".into(), 1, "3g.40gb".into(), 4)),
            "{policy}"
        );
        assert_eq!(p.stats.operations, 1);
    }
}

#[test]
fn mps_respects_memory_reserve_sm_share_and_client_count() {
    let c = cluster(
        "nodes:
- name: m
  gpus:
  - {model: h100-80gb, mode: mps, clients: [{memory_mib: 40000, sm_percent: 60}]}
",
    );
    // 81559 MiB - 512 reserve - 40000 = 41047 MiB and 40 % SM left.
    let r = requests("requests: [{id: fits, mps: {memory_mib: 41047, sm_percent: 40}}]");
    assert!(run(Policy::Tessera, &c, &r).unassigned.is_empty());
    let r = requests("requests: [{id: big, mps: {memory_mib: 41048, sm_percent: 10}}]");
    assert_eq!(run(Policy::Tessera, &c, &r).unassigned, ["big"]);
    let r = requests("requests: [{id: wide, mps: {memory_mib: 1000, sm_percent: 41}}]");
    assert_eq!(run(Policy::Tessera, &c, &r).unassigned, ["wide"]);
    // Both together do not fit: one is served.
    let r = requests(
        "requests:
- {id: fits, mps: {memory_mib: 41047, sm_percent: 40}}
- {id: small, mps: {memory_mib: 100, sm_percent: 1}}
",
    );
    assert_eq!(run(Policy::Tessera, &c, &r).stats.served, 1);
    // Oversubscription lifts the SM cap; the client limit still holds.
    let r = requests(
        "requests:
- {id: a, mps: {memory_mib: 100, sm_percent: 50}}
- {id: b, mps: {memory_mib: 100, sm_percent: 50}}
- {id: c, mps: {memory_mib: 100, sm_percent: 50}}
",
    );
    let opts = PlanOptions {
        mps_sm_oversubscription: 2.0,
        mps_max_clients: 3,
        ..PlanOptions::default()
    };
    let p = run_with(&opts, &c, &r);
    assert_eq!(p.stats.served, 2, "one client runs, two more make three");
}

#[test]
fn timeslice_replicas_go_to_the_highest_priorities() {
    let c = cluster(
        "nodes: [{name: t, gpus: [{model: a30, mode: timeslice, replicas: 3, replicas_used: 1}, {model: a30, mode: timeslice}]}]",
    );
    // 2 free on GPU 0, 4 (default) on GPU 1.
    let mut text = String::from("requests:\n");
    for i in 0..7 {
        text.push_str(&format!(
            "- {{id: t{i}, timeslice: true, priority: {}}}\n",
            i + 1
        ));
    }
    let r = requests(&text);
    let p = run(Policy::Tessera, &c, &r);
    assert_eq!(p.unassigned, ["t0"]);
    // Best fit: the fuller GPU fills first.
    let on0 = p.assignments.iter().filter(|a| a.gpu == 0).count();
    assert_eq!(on0, 2);
}

#[test]
fn plans_are_byte_for_byte_deterministic() {
    let cat = Catalog::builtin();
    let (c, r) = generated(30, 4, 200, 11);
    for policy in [Policy::Tessera, Policy::Nos, Policy::FirstFit] {
        let opts = PlanOptions::with_policy(policy);
        let a = plan(cat, &c, &r, &opts).unwrap().to_json();
        let b = plan(cat, &c.clone(), &r.clone(), &opts).unwrap().to_json();
        assert_eq!(a, b, "{policy}");
    }
}

fn err(c: &str, r: &str) -> String {
    plan(
        Catalog::builtin(),
        &cluster(c),
        &requests(r),
        &PlanOptions::default(),
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn bad_input_errors_name_the_place_and_the_problem() {
    let no_req = "requests: []";
    let e = err(
        "nodes: [{name: n1, gpus: [{model: a100-40gb}, {model: tpu-v5}]}]",
        no_req,
    );
    assert!(
        e.contains("node `n1` GPU 1") && e.contains("tpu-v5") && e.contains("a100-40gb"),
        "{e}"
    );

    let e = err("nodes: [{name: n1, gpus: [{model: h100-80gb, instances: [{profile: 3g.41gb, start: 0}]}]}]", no_req);
    assert!(
        e.contains("node `n1` GPU 0") && e.contains("3g.41gb") && e.contains("3g.40gb"),
        "{e}"
    );

    let e = err(
        "nodes: [{name: n1, gpus: [{model: h100-80gb, instances: [{profile: 3g.40gb, start: 0}, {profile: 2g.20gb, start: 2}]}]}]",
        no_req,
    );
    assert!(
        e.contains("node `n1` GPU 0") && e.contains("overlap"),
        "{e}"
    );
    let e = err(
        "nodes: [{name: n1, gpus: [{model: h100-80gb, instances: [{profile: 3g.40gb, start: 1}]}]}]",
        no_req,
    );
    assert!(e.contains("allowed starts: 0, 4"), "{e}");

    let e = err("nodes: [{name: n1, gpus: []}, {name: n1}]", no_req);
    assert!(e.contains("`n1`") && e.contains("twice"), "{e}");

    let e = err(
        "nodes: []",
        "requests: [{id: a, mig: 1g.10gb}, {id: a, mig: 1g.10gb}]",
    );
    assert!(e.contains("`a`") && e.contains("twice"), "{e}");

    let e = err(
        "nodes: [{name: n, gpus: [{model: h100-80gb}]}]",
        "requests: [{id: x, mig: 9g.99gb}]",
    );
    assert!(
        e.contains("request `x`") && e.contains("9g.99gb") && e.contains("7g.80gb"),
        "{e}"
    );

    let e = err(
        "nodes: []",
        "requests: [{id: m, mps: {memory_mib: 10, sm_percent: 101}}]",
    );
    assert!(
        e.contains("request `m`") && e.contains("between 1 and 100"),
        "{e}"
    );

    let e = err("nodes: [{name: n, gpus: [{model: h100-80gb, mode: mps, instances: [{profile: 1g.10gb, start: 0}]}]}]", no_req);
    assert!(
        e.contains("node `n` GPU 0") && e.contains("mps mode"),
        "{e}"
    );

    let e = err(
        "nodes: []",
        "requests: [{id: p, mig: 1g.10gb, priority: 0}]",
    );
    assert!(e.contains("request `p`") && e.contains("priority"), "{e}");
}

#[test]
fn documents_that_do_not_parse_say_where() {
    let e = ClusterSpec::from_str_any(
        "nodes:\n- name: n\n  gpus:\n  - {model: h100-80gb, mode: shared}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("cluster does not parse") && e.contains("shared") && e.contains("line"),
        "{e}"
    );
    let e = RequestsFile::from_str_any("requests: [{id: a}]")
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one of"), "{e}");
    let e = RequestsFile::from_str_any("{\"requests\": [{\"id\": \"a\", \"mig\": 3}]}")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("requests does not parse"), "{e}");
    // JSON and YAML read the same.
    let y = RequestsFile::from_str_any("requests: [{id: a, mig: 1g.10gb, priority: 2}]").unwrap();
    let j = RequestsFile::from_str_any(
        r#"{"requests": [{"id": "a", "mig": "1g.10gb", "priority": 2}]}"#,
    )
    .unwrap();
    assert_eq!(y, j);
}

#[test]
fn exact_refuses_large_inputs_with_its_limits() {
    let (c, r) = generated(10, 8, 50, 1);
    let e = plan(
        Catalog::builtin(),
        &c,
        &r,
        &PlanOptions::with_policy(Policy::Exact),
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::ExactTooLarge { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("80 GPUs (limit 12)") && msg.contains("--policy tessera"),
        "{msg}"
    );
}

#[test]
fn a_profile_no_gpu_of_the_cluster_has_waits() {
    // 1g.5gb exists in the catalog (A100 40GB) but not on an H100: valid, but unservable.
    let c = cluster("nodes: [{name: n, gpus: [{model: h100-80gb}]}]");
    let r = requests("requests: [{id: a, mig: 1g.5gb}]");
    for policy in Policy::ALL {
        assert_eq!(run(policy, &c, &r).unassigned, ["a"], "{policy}");
    }
}

#[test]
fn only_changed_lists_the_gpus_that_change_or_serve_and_nothing_else_differs() {
    let (c, r) = generated(40, 8, 12, 5);
    let full = plan(Catalog::builtin(), &c, &r, &PlanOptions::default()).unwrap();
    let opts = PlanOptions {
        only_changed: true,
        ..PlanOptions::default()
    };
    let short = run_with(&opts, &c, &r);
    assert_eq!(full.assignments, short.assignments);
    assert_eq!(full.stats, short.stats);
    assert!(
        short.gpus.len() < full.gpus.len() / 4,
        "{}",
        short.gpus.len()
    );
    let keep: Vec<_> = full
        .gpus
        .iter()
        .filter(|g| {
            g.changed()
                || full
                    .assignments
                    .iter()
                    .any(|a| a.node == g.node && a.gpu == g.gpu)
        })
        .cloned()
        .collect();
    assert_eq!(keep, short.gpus);
}

#[test]
fn a_small_instance_goes_where_the_larger_same_size_profile_stays_placeable() {
    // On an H100, 3g.40gb and 4g.40gb both take 4 memory slices, but 4g.40gb may only start at
    // 0. A 2g.20gb at 0 or 2 would leave only 3g.40gb@4; at 4 it leaves 4g.40gb@0.
    let c = cluster("nodes: [{name: n, gpus: [{model: h100-80gb}]}]");
    let r = requests("requests: [{id: a, mig: 2g.20gb}]");
    let p = run(Policy::Tessera, &c, &r);
    assert_eq!(mig_of(&p, "a"), Some(("n".into(), 0, "2g.20gb".into(), 4)));
    // ... and a 4g.40gb that arrives next is served without touching it.
    let c = cluster(
        "nodes: [{name: n, gpus: [{model: h100-80gb, instances: [{profile: 2g.20gb, start: 4, used: true}]}]}]",
    );
    let r = requests("requests: [{id: b, mig: 4g.40gb}]");
    let p = run(Policy::Tessera, &c, &r);
    assert_eq!(mig_of(&p, "b"), Some(("n".into(), 0, "4g.40gb".into(), 0)));
}
