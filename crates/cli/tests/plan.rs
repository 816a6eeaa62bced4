//! `tessera plan`, `tessera bench plan` and `tessera bench quality`, run as a user runs them.

mod common;

use std::path::Path;

use common::{tessera, tessera_fails, tessera_json, tessera_ok};
use serde_json::Value;

/// The README's example cluster (the planner's test fixture) and a second node whose two idle
/// 1g.10gb must go for a 3g.40gb.
const CLUSTER: &str = concat!(
    include_str!("../../planner/tests/fixtures/example-cluster.yaml"),
    "- name: node-b
  gpus:
  - model: h100-80gb
    instances:
    - {profile: 1g.10gb, start: 0}
    - {profile: 1g.10gb, start: 1}
    - {profile: 3g.40gb, start: 4, used: true}
"
);

/// The README's example requests and one for node-b.
const REQUESTS: &str = concat!(
    include_str!("../../planner/tests/fixtures/example-requests.yaml"),
    "- {id: r5, mig: 3g.40gb, priority: 2}\n"
);

fn files(dir: &Path, cluster: &str, requests: &str) -> (String, String) {
    let c = dir.join("cluster.yaml");
    let r = dir.join("requests.yaml");
    std::fs::write(&c, cluster).unwrap();
    std::fs::write(&r, requests).unwrap();
    (c.display().to_string(), r.display().to_string())
}

/// `tessera plan --cluster C --requests R EXTRA...`.
fn plan_args<'a>(c: &'a str, r: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["plan", "--cluster", c, "--requests", r];
    args.extend_from_slice(extra);
    args
}

/// `tessera bench plan -o json` on the generated 20 × 4-GPU cluster with 100 pending (seed 3).
fn bench_plan(policy: &str, runs: &str) -> Value {
    tessera_json(&[
        "bench",
        "plan",
        "--nodes",
        "20",
        "--gpus-per-node",
        "4",
        "--pending",
        "100",
        "--seed",
        "3",
        "--policy",
        policy,
        "--runs",
        runs,
        "-o",
        "json",
    ])
}

#[test]
fn plan_prints_the_plan_and_exits_0_when_everything_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (c, r) = files(dir.path(), CLUSTER, REQUESTS);
    let out = tessera_ok(&plan_args(&c, &r, &["-o", "json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"], "tessera");
    assert_eq!(v["stats"]["served"], 5);
    assert_eq!(v["stats"]["served_priority"], 10);
    assert_eq!(v["gpus"].as_array().unwrap().len(), 4);
    // node-b: two idle 1g.10gb destroyed, a 3g.40gb created beside the busy one.
    let b = &v["gpus"][3];
    assert_eq!(b["destroy"].as_array().unwrap().len(), 2);
    assert_eq!(
        b["create"],
        serde_json::json!([{"profile": "3g.40gb", "start": 0}])
    );
    // The same input gives the same bytes.
    let again = tessera(&plan_args(&c, &r, &["-o", "json"]));
    assert_eq!(out.stdout, again.stdout);

    let table = tessera(&plan_args(&c, &r, &[]));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("node-b GPU 0 (h100-80gb, mig)"), "{text}");
    assert!(
        text.contains("before:") && text.contains("after:"),
        "{text}"
    );
    assert!(text.contains("destroy: 1g.10gb@0 1g.10gb@1"), "{text}");
    assert!(
        text.contains("[r5"),
        "the new instance is labelled with its request: {text}"
    );
    assert!(text.contains("5 served (priority 10)"), "{text}");
}

#[test]
fn plan_exits_1_when_a_request_must_wait_and_every_policy_runs() {
    let dir = tempfile::tempdir().unwrap();
    let reqs = format!("{REQUESTS}- {{id: r9, mig: 7g.80gb}}\n");
    let (c, r) = files(dir.path(), CLUSTER, &reqs);
    for policy in ["tessera", "nos", "first-fit", "exact"] {
        let out = tessera(&plan_args(&c, &r, &["--policy", policy, "-o", "yaml"]));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{policy}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
        assert_eq!(v["policy"].as_str(), Some(policy));
        let waiting: Vec<&str> = v["unassigned"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert!(waiting.contains(&"r9"), "{policy}");
    }
    let out = tessera(&plan_args(&c, &r, &[]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("waiting: r9"));
}

#[test]
fn one_file_with_nodes_and_requests_plans_like_two() {
    let dir = tempfile::tempdir().unwrap();
    let (c, r) = files(dir.path(), CLUSTER, REQUESTS);
    let one = dir.path().join("one.yaml");
    // The README's example as one block: the cluster, then the requests.
    std::fs::write(&one, format!("{CLUSTER}{REQUESTS}")).unwrap();
    let one = one.display().to_string();
    let two = tessera_ok(&plan_args(&c, &r, &["-o", "json"])).stdout;
    assert_eq!(tessera_ok(&["plan", &one, "-o", "json"]).stdout, two);
    assert_eq!(
        tessera_ok(&["plan", "--cluster", &one, "-o", "json"]).stdout,
        two
    );

    let err = tessera_fails(&["plan", "--cluster", &one, "--requests", &r], 2);
    assert!(
        err.contains("has a `requests` list") && err.contains("drop one of them"),
        "{err}"
    );
    let err = tessera_fails(&["plan", &c], 2);
    assert!(
        err.contains("has no `requests` list") && err.contains("--requests FILE"),
        "{err}"
    );
    let err = tessera_fails(&["plan"], 2);
    assert!(err.contains("tessera plan FILE"), "{err}");
}

#[test]
fn waiting_requests_say_why_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    // r9: node-a's A100 has no 8 free slices; r10: the MPS GPU has 72855 MiB left; r11 and r12:
    // the time-slice GPU has 3 replicas free and r4 takes one, so r12 waits.
    let reqs = format!(
        "{REQUESTS}- {{id: r9, mig: 7g.40gb}}\n- {{id: r10, mps: {{memory_mib: 90000, sm_percent: 10}}}}\n- {{id: r11, timeslice: true}}\n- {{id: r12, timeslice: true}}\n- {{id: r13, timeslice: true}}\n"
    );
    let one = dir.path().join("one.yaml");
    std::fs::write(&one, format!("{CLUSTER}{reqs}")).unwrap();
    let one = one.display().to_string();
    let out = tessera(&["plan", &one, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = v["waiting"].as_array().unwrap();
    let ids: Vec<&str> = w.iter().map(|x| x["request"].as_str().unwrap()).collect();
    assert_eq!(ids, ["r9", "r10", "r13"], "{v}");
    assert_eq!(v["unassigned"], serde_json::json!(["r9", "r10", "r13"]));
    assert_eq!(w[0]["reason"], "no-room");
    assert!(
        w[0]["detail"]
            .as_str()
            .unwrap()
            .contains("node `node-a` GPU 0 (a100-40gb)"),
        "{v}"
    );
    assert_eq!(w[1]["reason"], "mps-room-exhausted");
    assert!(
        w[1]["detail"].as_str().unwrap().contains("90000 MiB asked"),
        "{v}"
    );
    assert_eq!(w[2]["reason"], "replicas-taken");

    let y = tessera(&["plan", &one, "-o", "yaml"]);
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&y.stdout).unwrap();
    assert_eq!(
        y["waiting"][1]["reason"].as_str(),
        Some("mps-room-exhausted")
    );

    let t = tessera(&["plan", &one]);
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(text.contains("waiting: r9, r10, r13"), "{text}");
    assert!(
        text.contains("  r9 (no-room): no room on the only GPU with 7g.40gb"),
        "{text}"
    );
    assert!(text.contains("  r13 (replicas-taken): "), "{text}");
}

#[test]
fn bad_input_exits_2_naming_the_file_and_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad = CLUSTER.replace(
        "start: 4, used: true}\n    - {profile: 1g.5gb",
        "start: 2, used: true}\n    - {profile: 1g.5gb",
    );
    let (c, r) = files(dir.path(), &bad, REQUESTS);
    let err = tessera_fails(&plan_args(&c, &r, &[]), 2);
    assert!(
        err.contains("node `node-a` GPU 0") && err.contains("allowed starts: 0, 4"),
        "{err}"
    );

    let (c, r) = files(dir.path(), "nodes: [", REQUESTS);
    let err = tessera_fails(&plan_args(&c, &r, &[]), 2);
    assert!(
        err.contains("cluster.yaml") && err.contains("does not parse"),
        "{err}"
    );

    let (c, r) = files(
        dir.path(),
        CLUSTER,
        "requests: [{id: a, mig: 1g.5gb}, {id: a, mig: 1g.5gb}]",
    );
    let err = tessera_fails(&plan_args(&c, &r, &[]), 2);
    assert!(err.contains("`a` is used twice"), "{err}");

    let err = tessera_fails(&plan_args(&c, &r, &["--policy", "best"]), 2);

    assert!(err.contains("unknown policy `best`"), "{err}");
}

#[test]
fn bench_plan_prints_the_documented_fields() {
    let v = bench_plan("tessera", "3");
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "gpus",
            "median_ms",
            "min_ms",
            "nodes",
            "pending",
            "policy",
            "served",
            "served_priority"
        ]
    );
    assert_eq!(v["gpus"], 80);
    assert!(v["min_ms"].as_f64().unwrap() <= v["median_ms"].as_f64().unwrap());
    // The same seed gives the same input: every policy plans it, results are reproducible.
    let served = |policy: &str| bench_plan(policy, "1")["served_priority"].as_u64().unwrap();
    assert_eq!(served("tessera"), v["served_priority"].as_u64().unwrap());
    assert!(served("tessera") >= served("first-fit"));
    // nos's time leaves out the binding step it lacks; each phase is reported.
    let n = bench_plan("nos", "3");
    let ph = n["nos_phases_ms"].as_object().unwrap();
    let mut names: Vec<&String> = ph.keys().collect();
    names.sort();
    assert_eq!(names, ["algorithm", "binding", "output", "setup"]);
    assert!(v.get("nos_phases_ms").is_none());
}

#[test]
fn bench_quality_compares_every_policy_with_the_optimum() {
    let v = tessera_json(&[
        "bench",
        "quality",
        "--instances",
        "40",
        "--seed",
        "7",
        "-o",
        "json",
    ]);
    assert_eq!(v["instances"], 40);
    let rows = v["policies"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["tessera", "nos", "first-fit", "exact"]);
    assert_eq!(rows[3]["share_of_optimum"], 1.0);
    for r in rows {
        assert_eq!(r["invalid_plans"], 0);
        assert!(r["served_priority"].as_u64().unwrap() <= v["optimum_priority"].as_u64().unwrap());
    }
    // nos over the seeds of its random choices, besides its fixed-seed row.
    let shares = v["nos_by_tie_seed"].as_array().unwrap();
    assert_eq!(shares.len(), 5);
    assert_eq!(v["nos_ops_by_tie_seed"].as_array().unwrap().len(), 5);
    for s in shares {
        assert!((0.0..=1.0).contains(&s.as_f64().unwrap()));
    }
    let table = tessera(&["bench", "quality", "--instances", "10"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("OF OPTIMUM"));
    assert!(text.contains("from seeds 0-4: mean "), "{text}");
}
