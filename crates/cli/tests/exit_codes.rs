//! Exit codes follow the error's kind (docs/cli.md): 2 for bad input the user must fix, 1 for a
//! failure while running; the error and its causes are printed once, on one `error:` line.

mod common;

use std::path::Path;

use common::tessera_fails;
use tessera_gpu::sim::{SimBackend, SimState};
use tessera_model::Catalog;

/// A simulated fleet of two H100s in `state_dir/sim-gpus.json`, as JSON to edit.
fn sim_file(state_dir: &Path) -> (std::path::PathBuf, serde_json::Value) {
    std::fs::create_dir_all(state_dir).unwrap();
    let path = state_dir.join("sim-gpus.json");
    let catalog = Catalog::builtin().clone();
    let st = SimState::new(&catalog, &[("h100-80gb".into(), 2)], 3, true).unwrap();
    drop(SimBackend::create(&path, st, catalog).unwrap());
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, json)
}

fn serve_args(dir: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--backend".into(),
        "sim".into(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--socket".into(),
        dir.join("s.sock").display().to_string(),
    ]
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn an_unreachable_daemon_is_a_failure_and_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let e = tessera_fails(&["ps", "--socket", sock.to_str().unwrap()], 1);
    assert!(
        e.starts_with("error: cannot reach the tessera daemon at "),
        "{e}"
    );
    assert_eq!(e.matches("cannot reach").count(), 1, "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn a_damaged_simulator_state_is_a_failure_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = sim_file(&dir.path().join("state"));
    std::fs::write(&path, "{ not json").unwrap();
    let e = tessera_fails(&refs(&serve_args(dir.path())), 1);
    // The log may come first; the error is one line.
    let line = e.lines().find(|l| l.starts_with("error: ")).unwrap_or("");
    assert!(
        line.starts_with("error: GPU backend: open the simulated fleet: sim state ")
            && line.contains("sim-gpus.json"),
        "{e}"
    );
    assert_eq!(e.matches("sim-gpus.json").count(), 1, "{e}");
}

#[test]
fn a_fleet_that_does_not_fit_the_configuration_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut json) = sim_file(&dir.path().join("state"));
    json["gpus"][1]["index"] = 5.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let e = tessera_fails(&refs(&serve_args(dir.path())), 2);
    assert!(
        e.contains("index 5") && e.contains("`gpus[1].index` to 1"),
        "{e}"
    );
}

#[test]
fn a_bad_flag_value_is_bad_input() {
    let e = tessera_fails(&["serve", "--sim-gpus", "h100-80gb:0"], 2);
    assert!(e.contains("count from 1 to 64"), "{e}");
}
