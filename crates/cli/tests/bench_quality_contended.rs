//! `tessera bench quality --shape contended`: tessera, nos and first-fit against the
//! integer-programming optimum on generated contended clusters, run as a user runs it.

mod common;

use common::{tessera_fails, tessera_json};

#[test]
fn contended_quality_scores_every_policy_against_the_program_optimum() {
    let args = [
        "bench",
        "quality",
        "--shape",
        "contended",
        "--gpus",
        "8-12",
        "--instances",
        "3",
        "--seed",
        "4",
        "-o",
        "json",
    ];
    let v = tessera_json(&args);
    assert_eq!(v["instances"], 3);
    let gpus = v["gpus"].as_u64().unwrap();
    assert!((24..=36).contains(&gpus), "{gpus} GPUs");
    assert!(v["requests"].as_u64().unwrap() >= 2 * gpus);
    let optimum = v["optimum_priority"].as_u64().unwrap();
    let rows = v["policies"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["tessera", "nos", "first-fit"]);
    for r in rows {
        assert_eq!(r["invalid_plans"], 0);
        assert!(r["served_priority"].as_u64().unwrap() <= optimum);
    }
    assert_eq!(v["nos_by_tie_seed"].as_array().unwrap().len(), 5);
    // Deterministic: the same flags give the same report.
    assert_eq!(tessera_json(&args), v);
}

#[test]
fn contended_flags_are_checked() {
    let err = tessera_fails(
        &["bench", "quality", "--shape", "contended", "--gpus", "9-3"],
        2,
    );
    assert!(err.contains("9-3"), "{err}");
    let err = tessera_fails(
        &["bench", "quality", "--shape", "contended", "--busy", "1.5"],
        2,
    );
    assert!(err.contains("--busy"), "{err}");
}
