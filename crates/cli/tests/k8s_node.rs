//! `tessera k8s node` (standalone mode) as a real process against the fake
//! kubelet: it registers NVIDIA-compatible resources, follows the desired file onto the open
//! ListAndWatch stream, writes its status, and stops cleanly on SIGTERM; and in cluster mode
//! against the in-process fake apiserver: it registers its `TesseraNode`, reports into its
//! status, publishes its ResourceSlice, and a spec change reaches ListAndWatch with no new
//! registration; and standalone with partitionable devices: the counter set and placements are
//! published, and NodePrepareResources creates the claimed instance on the simulated GPU.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tessera_kubelet::proto::deviceplugin as pb;
use tessera_kubelet::testkit::FakeKubelet;

const T: Duration = Duration::from_secs(20);

fn tessera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env_remove("TESSERA_BACKEND").env_remove("NODE_NAME");
    c
}

fn init(dir: &Path) -> String {
    let state = dir.join("machine.json").display().to_string();
    let o = tessera()
        .args(["sim-gpu", "init", &state, "--gpus", "h100-80gb:1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    state
}

#[test]
fn standalone_dra_without_claims_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let desired = tmp.path().join("d.yaml");
    std::fs::write(&desired, "gpus: {}\n").unwrap();
    let o = tessera()
        .args([
            "k8s",
            "node",
            "--mode",
            "dra",
            "--backend",
            "sim:/nonexistent",
        ])
        .arg("--desired")
        .arg(&desired)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--claims-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_process_serves_the_kubelet_and_follows_the_desired_file() {
    let tmp = tempfile::tempdir().unwrap();
    let state = init(tmp.path());
    let kdir = tmp.path().join("kubelet");
    let sdir = tmp.path().join("state");
    let desired = tmp.path().join("desired.yaml");
    std::fs::write(&desired, "gpus:\n  0: [1g.10gb@0, 1g.10gb@1, 3g.40gb@4]\n").unwrap();
    let kubelet = FakeKubelet::start(&kdir).await.unwrap();
    let mut child = tessera()
        .args(["k8s", "node", "--mode", "device-plugin", "--poll-ms", "50"])
        .arg("--backend")
        .arg(format!("sim:{state}"))
        .arg("--kubelet-dir")
        .arg(&kdir)
        .arg("--desired")
        .arg(&desired)
        .arg("--state-dir")
        .arg(&sdir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let reg = kubelet
        .wait_registered("nvidia.com/mig-1g.10gb", 1, T)
        .await;
    let Some(reg) = reg else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("no registration: {}", String::from_utf8_lossy(&out.stderr));
    };
    assert_eq!(reg.endpoint, "nvidia-mig-1g.10gb.sock");
    let mut client = kubelet.dial(&reg).await.unwrap();
    let mut stream = client
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(T, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.devices.len(), 2);
    // Another process writes the status file: poll it, bounded.
    let status_file = sdir.join("status.json");
    let deadline = std::time::Instant::now() + T;
    let status: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(&status_file) {
            break serde_json::from_slice(&bytes).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no status.json");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["gpus"][0]["result"], "converged");

    std::fs::write(
        &desired,
        "gpus:\n  0: [1g.10gb@0, 1g.10gb@1, 1g.10gb@2, 1g.10gb@3, 3g.40gb@4]\n",
    )
    .unwrap();
    let next = tokio::time::timeout(T, stream.message())
        .await
        .expect("the new layout arrives on the open stream")
        .unwrap()
        .unwrap();
    assert_eq!(next.devices.len(), 4);
    assert_eq!(kubelet.registrations_of("nvidia.com/mig-1g.10gb"), 1);

    // SIGTERM: a clean exit that removes the plugin sockets.
    terminate_cleanly(child).await;
    assert!(!kdir.join("device-plugins/nvidia-mig-1g.10gb.sock").exists());
    kubelet.stop().await;
}

/// Send the node process SIGTERM and assert that it exits cleanly (status 0).
async fn terminate_cleanly(child: std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM delivered");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll `f` every 20 ms until it answers, for at most `T`.
async fn eventually<V>(what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_node_process_registers_reports_and_follows_its_tesseranode() {
    use kube::api::{Api, Patch, PatchParams};
    use tessera_k8s::fake::FakeApiServer;
    use tessera_k8s::TesseraNode;

    let tmp = tempfile::tempdir().unwrap();
    let state = init(tmp.path());
    let kdir = tmp.path().join("kubelet");
    let srv = FakeApiServer::start().await.unwrap();
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\n\
             contexts: [{{name: c, context: {{cluster: fake, user: u, namespace: default}}}}]\n\
             current-context: c\n",
            srv.url()
        ),
    )
    .unwrap();
    let kubelet = FakeKubelet::start(&kdir).await.unwrap();
    let mut child = tessera()
        .args(["k8s", "node", "--mode", "both", "--poll-ms", "50"])
        .args(["--node-name", "gpu-1"])
        .arg("--backend")
        .arg(format!("sim:{state}"))
        .arg("--kubelet-dir")
        .arg(&kdir)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--cdi-dir")
        .arg(tmp.path().join("cdi"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let key = "tessera.dev/v1alpha1/tesseranodes";

    // The node registers its TesseraNode and reports its GPUs into the status.
    let node = eventually("the TesseraNode reports its GPU", || {
        srv.object(key, "", "gpu-1")
            .filter(|o| o["status"]["gpuCount"] == 1)
    })
    .await;
    assert_eq!(node["status"]["gpus"][0]["model"], "h100-80gb");
    // Its DRA plugin registers with the kubelet too.
    let dra = kubelet.dra_plugins().await.unwrap();
    assert_eq!(dra.len(), 1);
    assert_eq!(dra[0].info.name, "gpu.tessera.dev");

    // The controller's part, by hand: a layout in the spec.
    let nodes: Api<TesseraNode> = Api::all(srv.client());
    let layout = |starts: &[u8]| {
        let inst: Vec<serde_json::Value> = starts
            .iter()
            .map(|s| serde_json::json!({"profile": "1g.10gb", "start": s}))
            .collect();
        Patch::Merge(serde_json::json!({
            "spec": {"gpus": [{"index": 0, "mode": "mig", "instances": inst}]}
        }))
    };
    nodes
        .patch("gpu-1", &PatchParams::default(), &layout(&[0]))
        .await
        .unwrap();
    let Some(reg) = kubelet
        .wait_registered("nvidia.com/mig-1g.10gb", 1, T)
        .await
    else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("no registration: {}", String::from_utf8_lossy(&out.stderr));
    };
    let mut client = kubelet.dial(&reg).await.unwrap();
    let mut stream = client
        .list_and_watch(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(T, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.devices.len(), 1);

    // A spec change reaches the open stream, with no new registration.
    nodes
        .patch("gpu-1", &PatchParams::default(), &layout(&[0, 1]))
        .await
        .unwrap();
    let next = tokio::time::timeout(T, stream.message())
        .await
        .expect("the new layout arrives on the open stream")
        .unwrap()
        .unwrap();
    assert_eq!(next.devices.len(), 2);
    assert_eq!(kubelet.registrations_of("nvidia.com/mig-1g.10gb"), 1);
    // The status acknowledges that generation, and the ResourceSlice lists both instances.
    eventually("the status acknowledges the spec", || {
        srv.object(key, "", "gpu-1").filter(|o| {
            o["status"]["observedGeneration"] == o["metadata"]["generation"]
                && o["metadata"]["generation"] != serde_json::Value::Null
        })
    })
    .await;
    let slice = eventually("the ResourceSlice lists both instances", || {
        srv.object(
            "resource.k8s.io/v1/resourceslices",
            "",
            "gpu-1-gpu.tessera.dev",
        )
        .filter(|s| {
            s["spec"]["devices"]
                .as_array()
                .is_some_and(|d| d.len() == 2)
        })
    })
    .await;
    assert_eq!(slice["spec"]["nodeName"], "gpu-1");

    terminate_cleanly(child).await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_partitionable_dra_publishes_placements_and_creates_on_prepare() {
    use tessera_kubelet::proto::dra;

    let tmp = tempfile::tempdir().unwrap();
    let state = init(tmp.path());
    let kdir = tmp.path().join("kubelet");
    let sdir = tmp.path().join("state");
    let desired = tmp.path().join("desired.yaml");
    std::fs::write(&desired, "gpus: {}\n").unwrap();
    let claims = tmp.path().join("claims");
    std::fs::create_dir_all(claims.join("default")).unwrap();
    std::fs::write(
        claims.join("default/c1.yaml"),
        "apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\n\
         metadata: {name: c1, namespace: default, uid: uid-1}\n\
         spec: {}\n\
         status:\n  allocation:\n    devices:\n      results:\n\
         \x20       - {driver: gpu.tessera.dev, pool: localhost, device: gpu-0-mig-3g-40gb-4, request: gpu}\n",
    )
    .unwrap();
    let kubelet = FakeKubelet::start(&kdir).await.unwrap();
    let child = tessera()
        .args(["k8s", "node", "--mode", "dra", "--dra-partitionable"])
        .args(["--poll-ms", "50"])
        .arg("--backend")
        .arg(format!("sim:{state}"))
        .arg("--kubelet-dir")
        .arg(&kdir)
        .arg("--desired")
        .arg(&desired)
        .arg("--claims-dir")
        .arg(&claims)
        .arg("--state-dir")
        .arg(&sdir)
        .arg("--cdi-dir")
        .arg(tmp.path().join("cdi"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The slices: a counter set and every placement (the full GPU's included).
    let slices: serde_json::Value = eventually("resourceslices.json", || {
        std::fs::read(sdir.join("resourceslices.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    })
    .await;
    let text = slices.to_string();
    assert!(text.contains("\"sharedCounters\"") && text.contains("gpu-0-counters"));
    assert!(text.contains("gpu-0-mig-7g-80gb-0") && text.contains("gpu-0-mig-3g-40gb-4"));

    // Prepare creates the instance on the simulated GPU.
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while found.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the DRA plugin never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        found = kubelet.dra_plugins().await.unwrap_or_default();
    }
    let r = found[0]
        .client
        .node_prepare_resources(dra::NodePrepareResourcesRequest {
            claims: vec![dra::Claim {
                namespace: "default".into(),
                uid: "uid-1".into(),
                name: "c1".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.claims["uid-1"].error, "", "{r:?}");
    let sim: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(sim.to_string().contains("\"profile\":\"3g.40gb\""), "{sim}");

    terminate_cleanly(child).await;
    kubelet.stop().await;
}
