//! `tessera sim` end to end: the real binary on the hand-made trace of crates/sim/testdata and on
//! a small slice of the shipped Alibaba trace.

mod common;

use std::path::{Path, PathBuf};

use common::{tessera_fails, tessera_json, tessera_ok};

fn tiny() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sim/testdata/tiny")
        .display()
        .to_string()
}

fn real() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/traces/alibaba-gpu-v2023")
}

#[test]
fn saturate_json_has_every_policy_with_the_headline_fields() {
    let v = tessera_json(&["sim", "--trace", &tiny(), "--seeds", "1..3", "-o", "json"]);
    assert_eq!(v["mode"], "saturate");
    assert_eq!(v["gpus"], 7);
    assert_eq!(v["seeds"].as_array().unwrap().len(), 3);
    let policies = v["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["tessera", "nos", "best-fit", "static-mig", "whole-gpu"]
    );
    for p in policies {
        for key in [
            "allocated_pct_at_100",
            "unallocated_pct_at_100",
            "failed_pods",
        ] {
            assert!(p[key].is_number(), "{key} missing in {p}");
        }
        assert_eq!(p["busy_destroyed"], 0, "{p}");
        let a = p["allocated_pct_at_100"].as_f64().unwrap();
        let u = p["unallocated_pct_at_100"].as_f64().unwrap();
        assert!((a + u - 100.0).abs() < 0.01, "{p}");
    }
    // Same input, same bytes.
    let again = tessera_json(&["sim", "--trace", &tiny(), "--seeds", "1..3", "-o", "json"]);
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
}

#[test]
fn out_dir_gets_csv_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = tessera_ok(&[
        "sim",
        "--trace",
        &tiny(),
        "--seeds",
        "7",
        "--policy",
        "best-fit,whole-gpu",
        "--out",
        d,
    ]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("best-fit")
            && table.contains("whole-gpu")
            && table.contains("UNALLOCATED@100%"),
        "{table}"
    );
    let summary = std::fs::read_to_string(dir.path().join("saturate_summary.csv")).unwrap();
    assert!(
        summary.starts_with("policy,allocated_pct_at_100,unallocated_pct_at_100"),
        "{summary}"
    );
    assert_eq!(summary.lines().count(), 3);
    let curve = std::fs::read_to_string(dir.path().join("saturate_curve.csv")).unwrap();
    assert_eq!(curve.lines().count(), 1 + 2 * 131);
    let png = std::fs::read(dir.path().join("saturate_allocation.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.path().join("saturate_allocation.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("best-fit"),
        "the legend names the policies"
    );
}

#[test]
fn replay_reports_queueing_delay_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let v = tessera_json(&[
        "sim",
        "--trace",
        &tiny(),
        "--mode",
        "replay",
        "--out",
        d,
        "-o",
        "json",
    ]);
    assert_eq!(v["mode"], "replay");
    for p in v["policies"].as_array().unwrap() {
        assert_eq!(p["busy_destroyed"], 0, "{p}");
        assert!(p["delay_mean_s"].is_number() && p["delay_p95_s"].is_number());
        assert_eq!(p["delay_by_class"].as_array().unwrap().len(), 3);
    }
    for f in [
        "replay_summary.csv",
        "replay_timeline.csv",
        "replay_delay_by_class.csv",
        "replay_allocation.png",
        "replay_allocation.svg",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
}

#[test]
fn a_slice_of_the_real_trace_runs() {
    let trace = real();
    let v = tessera_json(&[
        "sim",
        "--trace",
        trace.to_str().unwrap(),
        "--node-fraction",
        "0.02",
        "--max-pods",
        "400",
        "--policy",
        "tessera,nos,best-fit",
        "--seeds",
        "42",
        "-o",
        "json",
    ]);
    assert_eq!(v["trace_pods"], 400);
    assert_eq!(v["gpu_model"], "a100-80gb");
    for p in v["policies"].as_array().unwrap() {
        assert_eq!(p["busy_destroyed"], 0, "{p}");
        assert!(p["allocated_pct_at_100"].as_f64().unwrap() > 50.0, "{p}");
    }
}

#[test]
fn bad_input_exits_2_with_a_message_naming_the_problem() {
    let err = tessera_fails(&["sim", "--trace", &tiny(), "--policy", "tessera,magic"], 2);
    assert!(err.contains("magic") && err.contains("best-fit"), "{err}");

    let err = tessera_fails(&["sim", "--trace", "/nonexistent/trace"], 2);
    assert!(err.contains("openb_node_list_gpu_node.csv"), "{err}");

    let err = tessera_fails(&["sim", "--trace", &tiny(), "--seeds", "9..3"], 2);

    assert!(err.contains("--seeds"), "{err}");

    let err = tessera_fails(&["sim", "--trace", &tiny(), "--gpu-model", "tpu-v5"], 2);

    assert!(err.contains("tpu-v5"), "{err}");

    tessera_fails(&["sim", "--trace", &tiny(), "--node-fraction", "0"], 2);
}
