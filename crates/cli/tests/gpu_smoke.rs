//! `scripts/gpu-smoke.sh` end to end on a machine treated as GPU-less (`--no-gpu`), with the
//! test binary instead of a release build: every GPU step must say `skipped`, doctor must run
//! and name what is missing, and the script must exit 0.

use std::process::Command;

#[test]
fn the_smoke_script_runs_end_to_end_without_a_gpu() {
    let out = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/gpu-smoke.sh");
    let run = Command::new("bash")
        .arg(script)
        .args([
            "--no-build",
            "--no-gpu",
            "--bin",
            env!("CARGO_BIN_EXE_tessera"),
        ])
        .env("OUT", out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap();
    for step in [
        "gpu",
        "state-before",
        "nvml-probe",
        "agent-status",
        "contract",
        "mps-protocol",
        "bench",
        "state-after",
    ] {
        let line = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(step))
            .unwrap_or_else(|| panic!("no `{step}` line in\n{summary}"));
        assert!(line.contains("skipped"), "{line}");
    }
    assert!(summary.contains("doctor         ok"), "{summary}");
    let doctor: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("doctor.json")).unwrap())
            .unwrap();
    assert!(doctor.as_array().is_some_and(|a| !a.is_empty()));
    // The script never asks for a MIG mode change.
    let text = std::fs::read_to_string(script).unwrap();
    assert!(
        !text.contains("-mig ") && !text.contains("mig-mode --"),
        "the script must not change MIG mode"
    );
}
