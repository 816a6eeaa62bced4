//! MIG creation inside NodePrepareResources (partitionable devices), against the simulator
//! (a state file, so the node can restart) and the fake kubelet: prepare creates the
//! placement's instance, re-prepare is a no-op, a placement the GPU cannot take is refused with
//! nothing half-made, unprepare after a restart destroys the instance the plugin made, a busy
//! instance survives unprepare and is reclaimed at a later start once idle, and instances the
//! plugin did not make are never touched.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera_agent::journal::MemJournal;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::sim::{CrashPlan, CrashPoint};
use tessera_gpu::{GpuBackend, SimBackend, SimConfig, SimState};
use tessera_kubelet::dra::{DevRoots, DraConfig, DraPlugin, DraServing, MapClaims, CDI_KIND};
use tessera_kubelet::node::{DesiredLayout, NodeConfig, NodeRunner};
use tessera_kubelet::proto::dra as pb;
use tessera_kubelet::testkit::{DraPluginHandle, FakeKubelet};
use tessera_model::Catalog;

mod common;

use common::DRIVER;

fn pb_claim(name: &str, uid: &str) -> pb::Claim {
    pb::Claim {
        namespace: "default".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

fn cfg(dir: &Path) -> DraConfig {
    let host = dir.join("host");
    DraConfig {
        driver: DRIVER.into(),
        node_name: "node-a".into(),
        kubelet_dir: dir.to_path_buf(),
        cdi_dir: dir.join("cdi"),
        dev: host.is_dir().then(|| DevRoots::under(&host)),
        ledger: None,
    }
}

/// A host tree under `dir/host` like `/dev` and `/proc` on a MIG host: the isolation crate's
/// `mig-minors` and `/proc/devices` fixtures and device nodes made with mknod (GPU 195:*,
/// nvidia-uvm 238:0, capability nodes 237:*). `false` when this process may not mknod.
fn host_tree(dir: &Path) -> bool {
    use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../isolation/tests/fixtures/nvidia-caps/proc");
    let host = dir.join("host");
    let proc_caps = host.join("proc/driver/nvidia-caps");
    std::fs::create_dir_all(&proc_caps).unwrap();
    std::fs::copy(fixture.join("devices"), host.join("proc/devices")).unwrap();
    std::fs::copy(
        fixture.join("driver/nvidia-caps/mig-minors"),
        proc_caps.join("mig-minors"),
    )
    .unwrap();
    std::fs::create_dir_all(host.join("dev/nvidia-caps")).unwrap();
    let mut nodes = vec![
        ("nvidiactl".to_string(), 195, 255),
        ("nvidia0".to_string(), 195, 0),
        ("nvidia-uvm".to_string(), 238, 0),
    ];
    for m in 3..40 {
        nodes.push((format!("nvidia-caps/nvidia-cap{m}"), 237, m));
    }
    for (name, maj, min) in nodes {
        let made = mknodat(
            CWD,
            host.join("dev").join(name),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            makedev(maj, min),
        );
        if let Err(e) = made {
            eprintln!("skipped: cannot mknod ({e}); run as root to test CDI device nodes");
            std::fs::remove_dir_all(&host).unwrap();
            return false;
        }
    }
    true
}

/// The capability minor of `gpu<g>/gi<gi>[/ci<ci>]/access` in the fixture's mig-minors.
fn cap_minor(key: &str) -> u32 {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../isolation/tests/fixtures/nvidia-caps/proc/driver/nvidia-caps/mig-minors"),
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap()
        .parse()
        .unwrap()
}

/// One life of the node process: the runner over the state file, partitionable devices on,
/// the DRA plugin with MIG creation, registered with the fake kubelet.
struct Node {
    runner: NodeRunner,
    plugin: Arc<DraPlugin>,
    serving: DraServing,
    client: DraPluginHandle,
}

async fn start(dir: &Path, kubelet: &FakeKubelet, claims: Arc<MapClaims>) -> Node {
    start_with(dir, kubelet, claims, SimConfig::default()).await
}

async fn start_with(
    dir: &Path,
    kubelet: &FakeKubelet,
    claims: Arc<MapClaims>,
    sim: SimConfig,
) -> Node {
    let c = Catalog::builtin().clone();
    let b = SimBackend::open(&dir.join("sim.json"), c.clone(), sim).unwrap();
    let (mut runner, inv) = NodeRunner::new(
        Box::new(b),
        Box::new(MemJournal::new()),
        c,
        NodeConfig {
            kubelet_dir: dir.to_path_buf(),
            resync: Duration::from_secs(3600),
        },
    )
    .unwrap();
    runner.set_partitionable(true);
    runner.apply(&DesiredLayout::default()).await.unwrap();
    let plugin = DraPlugin::with_mig(cfg(dir), claims, inv, runner.mig_ops())
        .await
        .unwrap();
    runner.add_holds(plugin.clone());
    let serving = plugin.start().unwrap();
    let client = kubelet.dra_plugins().await.unwrap().remove(0);
    Node {
        runner,
        plugin,
        serving,
        client,
    }
}

impl Node {
    async fn stop(self) {
        self.serving.stop().await.unwrap();
        drop(self.client);
        drop(self.plugin);
        drop(self.runner);
    }

    async fn prepare(&mut self, name: &str, uid: &str) -> pb::NodePrepareResourceResponse {
        let r = self
            .client
            .client
            .node_prepare_resources(pb::NodePrepareResourcesRequest {
                claims: vec![pb_claim(name, uid)],
            })
            .await
            .unwrap()
            .into_inner();
        r.claims[uid].clone()
    }

    async fn unprepare(&mut self, name: &str, uid: &str) -> String {
        let r = self
            .client
            .client
            .node_unprepare_resources(pb::NodeUnprepareResourcesRequest {
                claims: vec![pb_claim(name, uid)],
            })
            .await
            .unwrap()
            .into_inner();
        r.claims[uid].error.clone()
    }
}

/// `PROFILE@START` of GPU 0's instances, read from the state file.
fn instances(dir: &Path) -> Vec<String> {
    let mut b = SimBackend::snapshot(
        &dir.join("sim.json"),
        Catalog::builtin().clone(),
        SimConfig::default(),
    )
    .unwrap();
    b.instances(0).unwrap().iter().map(|i| i.spec()).collect()
}

fn init(dir: &Path) {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list("h100-80gb:1").unwrap(), 3, true).unwrap();
    SimBackend::create(&dir.join("sim.json"), st, c).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_creates_the_placement_and_unprepare_after_a_restart_destroys_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let kubelet = FakeKubelet::start(dir).await.unwrap();
    let claims = Arc::new(MapClaims::default());
    claims.put(common::allocated_claim(
        "default",
        "c1",
        "uid-1",
        "gpu-0-mig-3g-40gb-4",
    ));
    claims.put(common::allocated_claim(
        "default",
        "c2",
        "uid-2",
        "gpu-0-mig-7g-80gb-0",
    ));
    let mut node = start(dir, &kubelet, claims.clone()).await;
    assert!(instances(dir).is_empty());

    let got = node.prepare("c1", "uid-1").await;
    assert_eq!(got.error, "");
    assert_eq!(got.devices[0].device_name, "gpu-0-mig-3g-40gb-4");
    assert_eq!(instances(dir), ["3g.40gb@4"]);
    let inv = node.runner.subscribe().borrow().clone();
    let uuid = inv.gpus[0].mig[0].uuid.clone();
    let spec = std::fs::read_to_string(cfg(dir).cdi_spec_path("uid-1")).unwrap();
    assert!(
        spec.contains(&uuid),
        "the CDI spec names the new instance: {spec}"
    );
    assert!(node
        .plugin
        .checkpoint()
        .owned
        .contains_key("gpu-0-mig-3g-40gb-4"));
    // The published placements now leave out what the new instance blocks.
    let parts = inv.gpus[0].partitions.as_ref().unwrap();
    assert!(!parts.placements.iter().any(|p| p.profile == "7g.80gb"));

    // Re-prepare: the same answer, nothing created.
    assert_eq!(node.prepare("c1", "uid-1").await, got);
    assert_eq!(instances(dir), ["3g.40gb@4"]);

    // A placement the GPU cannot take now: the claim's error, nothing changed or recorded.
    let bad = node.prepare("c2", "uid-2").await;
    assert!(!bad.error.is_empty() && bad.devices.is_empty(), "{bad:?}");
    assert_eq!(instances(dir), ["3g.40gb@4"]);
    let cp = node.plugin.checkpoint();
    assert!(!cp.claims.contains_key("uid-2"));
    assert!(!cp.owned.contains_key("gpu-0-mig-7g-80gb-0"));

    // Restart, then unprepare: the instance the plugin made is destroyed.
    node.stop().await;
    let mut node = start(dir, &kubelet, claims.clone()).await;
    assert_eq!(
        instances(dir),
        ["3g.40gb@4"],
        "a prepared claim's instance survives a restart"
    );
    assert_eq!(node.unprepare("c1", "uid-1").await, "");
    assert!(instances(dir).is_empty());
    assert!(node.plugin.checkpoint().owned.is_empty());
    // Unprepare again: still fine.
    assert_eq!(node.unprepare("c1", "uid-1").await, "");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_survives_unprepare_and_foreign_instances_are_never_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let kubelet = FakeKubelet::start(dir).await.unwrap();
    let claims = Arc::new(MapClaims::default());
    claims.put(common::allocated_claim(
        "default",
        "c1",
        "uid-1",
        "gpu-0-mig-1g-10gb-6",
    ));
    let mut node = start(dir, &kubelet, claims.clone()).await;
    assert_eq!(node.prepare("c1", "uid-1").await.error, "");
    assert_eq!(instances(dir), ["1g.10gb@6"]);
    node.stop().await;

    // The pod's process still runs on it (and someone made another instance meanwhile).
    {
        let c = Catalog::builtin().clone();
        let mut b = SimBackend::open(&dir.join("sim.json"), c, SimConfig::default()).unwrap();
        b.set_busy(0, 6, Some(4242)).unwrap();
        let gi = b.create_gi(0, "1g.10gb", 0).unwrap();
        if gi.uuid.is_none() {
            b.create_default_ci(0, gi.gi_id).unwrap();
        }
    }
    let mut node = start(dir, &kubelet, claims.clone()).await;
    assert_eq!(node.unprepare("c1", "uid-1").await, "");
    assert_eq!(instances(dir), ["1g.10gb@0", "1g.10gb@6"], "busy: kept");
    assert!(node
        .plugin
        .checkpoint()
        .owned
        .contains_key("gpu-0-mig-1g-10gb-6"));
    node.stop().await;

    // Once idle, the next start reclaims it; the instance it did not make stays.
    {
        let c = Catalog::builtin().clone();
        let mut b = SimBackend::open(&dir.join("sim.json"), c, SimConfig::default()).unwrap();
        b.set_idle(0, 6).unwrap();
    }
    let node = start(dir, &kubelet, claims).await;
    assert_eq!(instances(dir), ["1g.10gb@0"]);
    assert!(node.plugin.checkpoint().owned.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cdi_spec_lists_the_instances_device_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    if !host_tree(dir) {
        return;
    }
    init(dir);
    let kubelet = FakeKubelet::start(dir).await.unwrap();
    let claims = Arc::new(MapClaims::default());
    claims.put(common::allocated_claim(
        "default",
        "c1",
        "uid-1",
        "gpu-0-mig-2g-20gb-2",
    ));
    let mut node = start(dir, &kubelet, claims).await;
    let got = node.prepare("c1", "uid-1").await;
    assert_eq!(got.error, "");
    let inv = node.runner.subscribe().borrow().clone();
    let m = &inv.gpus[0].mig[0];
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg(dir).cdi_spec_path("uid-1")).unwrap()).unwrap();

    // The fields the CDI specification requires, in the forms it allows.
    assert!(["0.6.0", "0.7.0"].contains(&spec["cdiVersion"].as_str().unwrap()));
    let kind = spec["kind"].as_str().unwrap();
    assert_eq!(kind, CDI_KIND);
    let (vendor, class) = kind.split_once('/').unwrap();
    assert!(vendor.contains('.') && !class.is_empty());
    let devices = spec["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    let name = d["name"].as_str().unwrap();
    assert!(name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)));
    assert_eq!(got.devices[0].cdi_device_ids, [format!("{kind}={name}")]);
    let edits = &d["containerEdits"];
    assert!(edits["env"]
        .as_array()
        .unwrap()
        .contains(&format!("NVIDIA_VISIBLE_DEVICES={}", m.uuid).into()));
    let nodes: Vec<(String, String, u64, u64)> = edits["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["type"], "c");
            let path = n["path"].as_str().unwrap().to_string();
            let host = n["hostPath"].as_str().unwrap().to_string();
            assert!(path.starts_with("/dev/"));
            assert_eq!(
                host,
                dir.join("host").join(&path[1..]).display().to_string()
            );
            (
                path,
                host,
                n["major"].as_u64().unwrap(),
                n["minor"].as_u64().unwrap(),
            )
        })
        .collect();
    let gi = cap_minor(&format!("gpu0/gi{}/access", m.gi_id));
    let ci = cap_minor(&format!("gpu0/gi{}/ci{}/access", m.gi_id, m.ci_id));
    let want = [
        (
            "/dev/nvidia-caps/nvidia-cap".to_string() + &gi.to_string(),
            237,
            gi,
        ),
        (
            "/dev/nvidia-caps/nvidia-cap".to_string() + &ci.to_string(),
            237,
            ci,
        ),
        ("/dev/nvidia-uvm".to_string(), 238, 0),
        ("/dev/nvidia0".to_string(), 195, 0),
        ("/dev/nvidiactl".to_string(), 195, 255),
    ];
    let mut have: Vec<(String, u64, u64)> = nodes
        .into_iter()
        .map(|(p, _, maj, min)| (p, maj, min))
        .collect();
    have.sort();
    let mut want: Vec<(String, u64, u64)> = want
        .into_iter()
        .map(|(p, maj, min)| (p, maj, u64::from(min)))
        .collect();
    want.sort();
    assert_eq!(have, want);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_the_create_fails_the_claim_and_leaves_nothing_half_made() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(dir);
    let kubelet = FakeKubelet::start(dir).await.unwrap();
    let claims = Arc::new(MapClaims::default());
    claims.put(common::allocated_claim(
        "default",
        "c1",
        "uid-1",
        "gpu-0-mig-3g-40gb-4",
    ));
    // The backend dies after the GPU instance exists and before its compute instance does.
    let crash = SimConfig {
        crash: Some(CrashPlan {
            point: Some(CrashPoint::parse("create_gi:after_gi").unwrap()),
            nth: 1,
        }),
        ..SimConfig::default()
    };
    let mut node = start_with(dir, &kubelet, claims.clone(), crash).await;
    let got = node.prepare("c1", "uid-1").await;
    assert!(!got.error.is_empty() && got.devices.is_empty(), "{got:?}");
    assert_eq!(
        instances(dir),
        ["3g.40gb@4"],
        "the half-made GPU instance is on the GPU"
    );
    let cp = node.plugin.checkpoint();
    assert!(!cp.claims.contains_key("uid-1"));
    assert!(
        cp.owned.contains_key("gpu-0-mig-3g-40gb-4"),
        "still recorded, so it is reclaimed"
    );
    node.stop().await;

    // The next node process reclaims it at start; the claim then prepares normally.
    let mut node = start(dir, &kubelet, claims).await;
    assert!(instances(dir).is_empty());
    assert!(node.plugin.checkpoint().owned.is_empty());
    assert_eq!(node.prepare("c1", "uid-1").await.error, "");
    assert_eq!(instances(dir), ["3g.40gb@4"]);
    node.stop().await;
}
