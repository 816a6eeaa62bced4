//! `tessera demo` runs on a machine without GPUs, serves every scripted request and prints a
//! summary (sped up so the test is short).

mod server_common;

use std::process::{Command, Output};

use server_common::{succeeded, BIN};

/// `tessera demo ARGS...`, which must exit 0.
fn demo(args: &[&str]) -> Output {
    succeeded(Command::new(BIN).arg("demo").args(args).output().unwrap())
}

#[test]
fn the_demo_serves_every_request_and_summarises() {
    let out = demo(&["--speed", "20", "--duration", "10", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests = s["requests"].as_u64().unwrap();
    assert!(requests >= 30, "{s}");
    assert_eq!(s["served"].as_u64(), Some(requests), "{s}");
    assert!(
        s["repartitions"].as_u64().unwrap() >= 2,
        "the MIG GPU was re-partitioned: {s}"
    );
    for t in ["mig", "mps", "timeslice"] {
        assert!(
            s["leases_by_type"][t].as_u64().unwrap_or(0) > 0,
            "no {t} lease: {s}"
        );
    }
    assert!(s["p95_wait_s"].as_f64().unwrap() >= s["mean_wait_s"].as_f64().unwrap() * 0.99);
    assert_eq!(s["utilisation"].as_array().unwrap().len(), 3);
}

#[test]
fn the_plain_view_prints_periodic_lines_and_a_summary_table() {
    let out = demo(&["--speed", "25", "--duration", "6"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("t=")).count() >= 3,
        "{text}"
    );
    assert!(
        text.contains("requests served") && text.contains("p95 wait"),
        "{text}"
    );
}
