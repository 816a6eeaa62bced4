//! `tessera doctor` as a user runs it: the real binary on this machine. Without a GPU it must
//! exit 1 and say, line by line, what is missing and how to get it; with one (a lent GPU
//! machine) the NVML line must be `ok` with the driver version.

use std::process::Command;

#[test]
fn doctor_on_this_machine_names_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "doctor",
            "-o",
            "json",
            "--socket",
            "/nonexistent/tessera.sock",
        ])
        .output()
        .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = checks.as_array().unwrap();
    let get = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no `{name}` check in {checks:?}"))
    };
    for c in checks {
        assert!(
            ["ok", "warn", "fail"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        if c["status"] != "ok" {
            assert!(
                c["fix"].as_str().is_some_and(|f| !f.is_empty()),
                "no fix: {c}"
            );
        }
    }
    let nvml = get("nvml");
    if nvml["status"] == "ok" {
        assert!(
            nvml["detail"].as_str().unwrap().starts_with("driver "),
            "{nvml}"
        );
        assert!(checks.iter().any(|c| c["check"] == "gpu 0"), "{checks:?}");
    } else {
        assert_eq!(out.status.code(), Some(1), "no GPU must exit 1");
        assert!(
            nvml["detail"]
                .as_str()
                .unwrap()
                .contains("libnvidia-ml.so.1"),
            "{nvml}"
        );
        assert!(
            nvml["fix"]
                .as_str()
                .unwrap()
                .contains("install the NVIDIA driver"),
            "{nvml}"
        );
    }
    let daemon = get("daemon");
    assert_eq!(daemon["status"], "warn");
    assert!(daemon["detail"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/tessera.sock"));
    for name in [
        "mps control",
        "mps daemon",
        "cuda driver",
        "cublas",
        "cgroups",
    ] {
        get(name);
    }
    let blas = get("cublas");
    if blas["status"] != "ok" {
        let d = blas["detail"].as_str().unwrap();
        assert!(d.contains("libcublas.so.13, libcublas.so.12"), "{d}");
    }
}

#[test]
fn doctor_on_a_simulated_machine_passes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("m.json");
    let bin = env!("CARGO_BIN_EXE_tessera");
    let init = Command::new(bin)
        .args(["sim-gpu", "init"])
        .arg(&state)
        .args(["--gpus", "h100-80gb:2"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = Command::new(bin)
        .args(["doctor", "--backend"])
        .arg(format!("sim:{}", state.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gpu 1") && text.contains("h100-80gb"),
        "{text}"
    );
    // The GPUs are fine; only the CUDA libraries can fail here (no driver on a CI machine).
    let failed_for_cuda = text.contains("FAIL") && text.contains("cuda driver");
    assert_eq!(out.status.code() == Some(1), failed_for_cuda, "{text}");
}
