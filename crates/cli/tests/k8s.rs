//! `tessera k8s`: `crd` prints the chart's CRD, `demo -o json` reports its summary, bad flags
//! exit 2 with the fix.

use std::process::Command;

fn tessera(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn crd_prints_the_chart_crd() {
    let out = tessera(&["k8s", "crd"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/helm/tessera/crds/tesseranodes.tessera.dev.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn small_demo_reports_its_summary_as_json() {
    let out = tessera(&[
        "k8s",
        "demo",
        "-o",
        "json",
        "--nodes",
        "2",
        "--gpus",
        "h100-80gb:4",
        "--pods",
        "40",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "pods",
        "bound",
        "unschedulable",
        "busy_destroyed",
        "repartitions",
        "mean_wait_s",
        "kubelet_registrations",
        "allocate_calls",
    ] {
        assert!(v.get(k).is_some(), "missing {k}: {v}");
    }
    assert_eq!(v["pods"], 41);
    assert_eq!(v["busy_destroyed"], 0);
    assert_eq!(v["unschedulable"], 1, "only the A100-only pod: {v}");
    assert_eq!(v["bound"], 40);
    // Every bound pod went through its node's device plugin.
    assert_eq!(v["allocate_calls"], 40);
    assert_eq!(v["plugin_reregistrations"], 0);
}

#[test]
fn zero_nodes_is_a_usage_error() {
    let out = tessera(&["k8s", "demo", "--nodes", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}

#[test]
fn controller_without_a_cluster_says_how_to_reach_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["k8s", "controller"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Kubernetes API"), "{err}");
    let out = tessera(&["k8s", "controller", "--policy", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown policy"));
}

#[test]
fn node_without_desired_is_cluster_mode_and_says_how_to_reach_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("gpus.json");
    let out = tessera(&[
        "sim-gpu",
        "init",
        state.to_str().unwrap(),
        "--gpus",
        "h100-80gb:1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["k8s", "node", "--mode", "device-plugin"])
        .arg(format!("--backend=sim:{}", state.display()))
        .arg(format!("--kubelet-dir={}", dir.path().display()))
        .arg(format!(
            "--state-dir={}",
            dir.path().join("state").display()
        ))
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster mode (no --desired)"), "{err}");
    assert!(err.contains("--desired FILE"), "{err}");
}

#[test]
fn controller_web_view_needs_a_token_or_public() {
    let out = tessera(&["k8s", "controller", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--web-token-file") && err.contains("--web-public"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let out = tessera(&[
        "k8s",
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--web-token-file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the file is empty"));
}
