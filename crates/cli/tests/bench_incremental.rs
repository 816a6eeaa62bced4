//! `tessera bench incremental`, run as a user runs it: the documented fields, arrivals placed
//! exactly as the full plan places them, and bad input refused with exit 2.

mod common;

use common::{tessera_fails, tessera_json};

#[test]
fn bench_incremental_prints_the_documented_fields_and_agrees_with_the_full_plan() {
    let v = tessera_json(&[
        "bench",
        "incremental",
        "--nodes",
        "30",
        "--gpus-per-node",
        "4",
        "--events",
        "300",
        "--full",
        "20",
        "--seed",
        "3",
        "-o",
        "json",
    ]);
    assert_eq!(v["gpus"], 120);
    let mig = v["mig_gpus"].as_u64().unwrap();
    assert!(mig > 60 && mig < 120, "{v}");
    let arrivals = v["arrivals"]["count"].as_u64().unwrap();
    let no_candidate = v["no_candidate"].as_u64().unwrap();
    let not_mig = v["not_mig"].as_u64().unwrap();
    // Every event is an arrival that was placed, found no candidate, or is not MIG.
    assert_eq!(arrivals + no_candidate + not_mig, 300, "{v}");
    assert!(arrivals > 0 && not_mig > 0, "{v}");
    assert!(v["departures"]["count"].as_u64().unwrap() > 0, "{v}");
    for k in ["median_us", "p99_us", "max_us"] {
        let a = &v["arrivals"];
        assert!(a[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert!(v["arrivals"]["median_us"].as_f64() <= v["arrivals"]["max_us"].as_f64());
    assert_eq!(v["full_plans"], 20);
    assert_eq!(v["agree"], 20, "{v}");
    assert!(v["full_plan_median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_incremental_refuses_a_share_out_of_range() {
    let err = tessera_fails(&["bench", "incremental", "--departures", "1.5"], 2);
    assert!(err.contains("--departures"), "{err}");
}

#[test]
fn bench_incremental_refuses_a_cluster_without_gpus() {
    for args in [["--nodes", "0"], ["--gpus-per-node", "0"]] {
        let mut argv = vec!["bench", "incremental"];
        argv.extend(args);
        let err = tessera_fails(&argv, 2);
        assert!(err.contains("at least 1"), "{err}");
    }
}
