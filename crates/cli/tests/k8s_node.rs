//! `tessera k8s node` (standalone mode) as a real process against the fake
//! kubelet: it registers NVIDIA-compatible resources, follows the desired file onto the open
//! ListAndWatch stream, writes its status, and stops cleanly on SIGTERM.

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
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!kdir.join("device-plugins/nvidia-mig-1g.10gb.sock").exists());
    kubelet.stop().await;
}
