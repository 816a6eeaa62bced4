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

fn real_str() -> String {
    real().to_str().unwrap().to_string()
}

#[test]
fn fractional_json_has_every_policy_and_repeats_byte_for_byte() {
    let t = real_str();
    let args = [
        "sim",
        "--trace",
        &t,
        "--sharing",
        "fractional",
        "--node-fraction",
        "0.05",
        "--seeds",
        "42..43",
        "-o",
        "json",
    ];
    let first = tessera_ok(&args).stdout;
    assert_eq!(first, tessera_ok(&args).stdout, "same input, same bytes");
    let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(v["setup"]["sharing"], "fractional");
    assert_eq!(v["setup"]["pod_list"], "openb_pod_list_default.csv");
    let policies = v["policies"].as_array().unwrap();
    let names: Vec<&str> = policies
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "tessera",
            "fgd",
            "best-fit",
            "gpu-packing",
            "gpu-clustering",
            "dot-product",
            "random"
        ]
    );
    for p in policies {
        for key in [
            "allocated_pct_at_100",
            "unallocated_pct_at_100",
            "allocated_pct_at_130",
            "failed_pods",
            "allocated_pct_at_100_sd",
        ] {
            assert!(p[key].is_number(), "{key} missing in {p}");
        }
        let a = p["allocated_pct_at_100"].as_f64().unwrap();
        assert!(a > 50.0 && a <= 100.0, "{p}");
        assert!(p["allocated_pct_at_130"].as_f64().unwrap() >= a, "{p}");
    }
    // The paper's values ride along for its baselines.
    assert_eq!(policies[1]["paper_allocated_pct_at_100"], 95.23);
    assert!(policies[0].get("paper_allocated_pct_at_100").is_none());
}

/// A trace directory with the real node list and a pod list written by `edit` from the real
/// one (every row but the header passed through it).
fn variant(name: &str, edit: impl Fn(usize, &str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let nodes = std::fs::read_to_string(real().join("openb_node_list_gpu_node.csv")).unwrap();
    std::fs::write(dir.path().join("openb_node_list_gpu_node.csv"), nodes).unwrap();
    let pods = std::fs::read_to_string(real().join("openb_pod_list_default.csv")).unwrap();
    let mut out = String::new();
    for (i, line) in pods.lines().enumerate() {
        out.push_str(&if i == 0 {
            line.to_string()
        } else {
            edit(i, line)
        });
        out.push('\n');
    }
    std::fs::write(dir.path().join(name), out).unwrap();
    dir
}

#[test]
fn pod_list_picks_another_mix_and_gpu_spec_is_honoured() {
    // Every GPU pod may run only on an A10; the trace has two A10 GPUs.
    let dir = variant("openb_pod_list_a10only.csv", |_, line| {
        let mut f: Vec<&str> = line.split(',').collect();
        if f[3] != "0" {
            f[5] = "A10";
        }
        f.join(",")
    });
    let d = dir.path().to_str().unwrap();
    let v = tessera_json(&[
        "sim",
        "--trace",
        d,
        "--sharing",
        "fractional",
        "--pod-list",
        "openb_pod_list_a10only.csv",
        "--policy",
        "fgd,best-fit",
        "--seeds",
        "42",
        "-o",
        "json",
    ]);
    assert_eq!(v["setup"]["pod_list"], "openb_pod_list_a10only.csv");
    let gpus = v["setup"]["gpus"].as_f64().unwrap();
    for p in v["policies"].as_array().unwrap() {
        let a = p["allocated_pct_at_130"].as_f64().unwrap();
        assert!(
            a <= 2.0 * 100.0 / gpus + 1e-9,
            "only the A10s can be used: {p}"
        );
        assert!(a > 0.0, "{p}");
    }

    // More multi-GPU pods: every 10th one-GPU pod asks for 4 whole GPUs. The mix differs, so
    // does the result, and every policy still runs.
    let dir = variant("openb_pod_list_multigpu.csv", |i, line| {
        let mut f: Vec<&str> = line.split(',').collect();
        if f[3] == "1" && i % 10 == 0 {
            f[3] = "4";
            f[4] = "1000";
        }
        f.join(",")
    });
    let d = dir.path().to_str().unwrap();
    let args = |list: &'static str| {
        vec![
            "sim".to_string(),
            "--trace".into(),
            d.to_string(),
            "--sharing".into(),
            "fractional".into(),
            "--pod-list".into(),
            list.into(),
            "--node-fraction".into(),
            "0.1".into(),
            "--seeds".into(),
            "42".into(),
            "--policy".into(),
            "tessera,fgd".into(),
            "-o".into(),
            "json".into(),
        ]
    };
    let run = |list| {
        let a = args(list);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        tessera_json(&a)
    };
    let multi = run("openb_pod_list_multigpu.csv");
    let fgd = |v: &serde_json::Value| v["policies"][1]["allocated_pct_at_100"].as_f64().unwrap();
    assert_eq!(multi["policies"].as_array().unwrap().len(), 2);
    let default = tessera_json(&[
        "sim",
        "--trace",
        &real_str(),
        "--sharing",
        "fractional",
        "--node-fraction",
        "0.1",
        "--seeds",
        "42",
        "--policy",
        "tessera,fgd",
        "-o",
        "json",
    ]);
    assert_ne!(fgd(&multi), fgd(&default));
}

#[test]
fn hybrid_reports_tessera_against_mig_only_and_mps_only() {
    let t = real_str();
    let v = tessera_json(&[
        "sim",
        "--trace",
        &t,
        "--sharing",
        "hybrid",
        "--isolation-share",
        "0.5",
        "--node-fraction",
        "0.05",
        "--seeds",
        "42",
        "-o",
        "json",
    ]);
    assert_eq!(v["sharing"], "hybrid");
    assert_eq!(v["isolation_share"], 0.5);
    let p = v["policies"].as_array().unwrap();
    let names: Vec<&str> = p.iter().map(|p| p["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["tessera", "mig-only", "mps-only"]);
    // MIG-only uses no MPS GPU, MPS-only no MIG GPU, tessera both.
    assert_eq!(p[1]["mps_gpus"], 0.0);
    assert_eq!(p[2]["mig_gpus"], 0.0);
    assert!(p[0]["mig_gpus"].as_f64().unwrap() > 0.0);
    assert!(p[0]["mps_gpus"].as_f64().unwrap() > 0.0);
}

#[test]
fn fractional_bad_input_exits_2_naming_the_problem() {
    let t = real_str();
    let err = tessera_fails(
        &[
            "sim",
            "--trace",
            &t,
            "--sharing",
            "fractional",
            "--pod-list",
            "nope.csv",
        ],
        2,
    );
    assert!(err.contains("nope.csv"), "{err}");
    let err = tessera_fails(
        &[
            "sim",
            "--trace",
            &t,
            "--sharing",
            "fractional",
            "--policy",
            "nos",
        ],
        2,
    );
    assert!(err.contains("nos") && err.contains("fgd"), "{err}");
    let err = tessera_fails(
        &[
            "sim",
            "--trace",
            &t,
            "--sharing",
            "fractional",
            "--mode",
            "replay",
        ],
        2,
    );
    assert!(err.contains("replay"), "{err}");
    let err = tessera_fails(
        &[
            "sim",
            "--trace",
            &t,
            "--sharing",
            "hybrid",
            "--isolation-share",
            "2",
        ],
        2,
    );
    assert!(err.contains("--isolation-share"), "{err}");
    let err = tessera_fails(&["sim", "--trace", &t, "--pod-list", "x.csv"], 2);
    assert!(err.contains("--pod-list"), "{err}");
}
