//! The DRA plugin and the node runner against the fake kubelet: registration through
//! `plugins_registry/`, idempotent prepare/unprepare with CDI specs and a checkpoint that
//! survives a restart, prepared claims and pod allocations protecting their instances, and
//! a desired-file change reaching an open ListAndWatch stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_agent::journal::MemJournal;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{SimBackend, SimConfig, SimState};
use tessera_kubelet::deviceplugin::{run_device_plugins, DevicePluginConfig};
use tessera_kubelet::dra::{resource_slices, DraConfig, DraPlugin, MapClaims, CDI_KIND};
use tessera_kubelet::node::{
    parse_desired_file, DesiredLayout, FileDesired, GpuOutcome, NodeConfig, NodeRunner, NodeStatus,
    WatchSink,
};
use tessera_kubelet::proto::dra as pb;
use tessera_kubelet::testkit::FakeKubelet;
use tessera_model::Catalog;
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt;

mod common;

const T: Duration = Duration::from_secs(5);
use common::DRIVER;

fn runner(
    dir: &std::path::Path,
    spec: &str,
    mig: bool,
) -> (NodeRunner, watch::Receiver<tessera_kubelet::NodeInventory>) {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list(spec).unwrap(), 3, mig).unwrap();
    let b = SimBackend::new(st, c.clone(), SimConfig::default()).unwrap();
    NodeRunner::new(
        Box::new(b),
        Box::new(MemJournal::new()),
        c,
        NodeConfig {
            kubelet_dir: dir.to_path_buf(),
            resync: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

fn layout(text: &str) -> DesiredLayout {
    parse_desired_file(text).unwrap()
}

fn converged(s: &NodeStatus) -> bool {
    s.gpus
        .iter()
        .all(|g| matches!(g, GpuOutcome::Converged { .. }))
}

fn pb_claim(ns: &str, name: &str, uid: &str) -> pb::Claim {
    pb::Claim {
        namespace: ns.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dra_prepare_is_idempotent_survives_a_restart_and_protects_the_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let (mut node, inv) = runner(tmp.path(), "h100-80gb:1", true);
    let st = node
        .apply(&layout("gpus: {0: [1g.10gb@0, 1g.10gb@1, 3g.40gb@4]}"))
        .await
        .unwrap();
    assert!(converged(&st), "{st:?}");
    let mig0 = st.inventory.gpus[0].mig[0].clone();
    assert_eq!((mig0.profile.as_str(), mig0.start), ("1g.10gb", 0));

    let claims = Arc::new(MapClaims::default());
    claims.put(common::allocated_claim(
        "default",
        "c1",
        "uid-1",
        "gpu-0-mig-1g-10gb-0",
    ));
    let cfg = DraConfig {
        driver: DRIVER.into(),
        node_name: "node-a".into(),
        kubelet_dir: tmp.path().to_path_buf(),
        cdi_dir: tmp.path().join("cdi"),
        dev: None,
        ledger: None,
    };
    let plugin = DraPlugin::new(cfg.clone(), claims.clone(), inv.clone()).unwrap();
    node.add_holds(plugin.clone());
    let serving = plugin.start().unwrap();
    assert!(cfg
        .registration_socket()
        .ends_with("plugins_registry/gpu.tessera.dev-reg.sock"));

    // The kubelet finds the plugin, asks its info, tells it that it registered.
    let mut found = kubelet.dra_plugins().await.unwrap();
    assert_eq!(found.len(), 1);
    let mut h = found.remove(0);
    assert_eq!(h.info.r#type, "DRAPlugin");
    assert_eq!(h.info.name, DRIVER);
    assert_eq!(h.info.supported_versions, ["v1.DRAPlugin"]);
    assert!(h
        .info
        .endpoint
        .ends_with("plugins/gpu.tessera.dev/dra.sock"));
    assert!(
        plugin
            .registration()
            .borrow()
            .as_ref()
            .unwrap()
            .plugin_registered
    );

    // Prepare: the device, its CDI ID, the CDI spec on disk, the checkpoint.
    let req = pb::NodePrepareResourcesRequest {
        claims: vec![pb_claim("default", "c1", "uid-1")],
    };
    let r = h
        .client
        .node_prepare_resources(req.clone())
        .await
        .unwrap()
        .into_inner();
    let got = &r.claims["uid-1"];
    assert_eq!(got.error, "");
    assert_eq!(got.devices.len(), 1);
    let d = &got.devices[0];
    assert_eq!(d.device_name, "gpu-0-mig-1g-10gb-0");
    assert_eq!(d.pool_name, "node-a");
    assert_eq!(d.request_names, ["gpu"]);
    assert_eq!(
        d.cdi_device_ids,
        [format!("{CDI_KIND}=uid-1-gpu-0-mig-1g-10gb-0")]
    );
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.cdi_spec_path("uid-1")).unwrap()).unwrap();
    assert_eq!(spec["kind"], CDI_KIND);
    assert_eq!(spec["devices"][0]["name"], "uid-1-gpu-0-mig-1g-10gb-0");
    assert_eq!(
        spec["devices"][0]["containerEdits"]["env"][0],
        format!("NVIDIA_VISIBLE_DEVICES={}", mig0.uuid)
    );
    assert!(std::fs::read_to_string(cfg.checkpoint_path())
        .unwrap()
        .contains("uid-1"));
    // Again: the same answer.
    let again = h
        .client
        .node_prepare_resources(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.claims["uid-1"], *got);
    // A claim recreated under the same name has another UID: refused by name.
    let stale = h
        .client
        .node_prepare_resources(pb::NodePrepareResourcesRequest {
            claims: vec![pb_claim("default", "c1", "uid-old")],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        stale.claims["uid-old"].error.contains("not uid-old"),
        "{stale:?}"
    );

    // The prepared claim holds its instance: a layout without it is refused, nothing changes.
    let st = node
        .apply(&layout("gpus: {0: [2g.20gb@0, 1g.10gb@2, 3g.40gb@4]}"))
        .await
        .unwrap();
    match &st.gpus[0] {
        GpuOutcome::Refused { reason, .. } => {
            assert!(reason.contains("claim default/c1"), "{reason}");
            assert!(reason.contains("1g.10gb@0"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(st.inventory.mig_by_uuid(&mig0.uuid).is_some());

    // Restart the plugin: the checkpoint brings the claim back; Unprepare works, twice.
    serving.stop().await.unwrap();
    drop(h);
    let plugin = DraPlugin::new(cfg.clone(), claims.clone(), inv.clone()).unwrap();
    assert!(plugin.checkpoint().claims.contains_key("uid-1"));
    let serving = plugin.start().unwrap();
    let mut h = kubelet.dra_plugins().await.unwrap().remove(0);
    for _ in 0..2 {
        let r = h
            .client
            .node_unprepare_resources(pb::NodeUnprepareResourcesRequest {
                claims: vec![pb_claim("default", "c1", "uid-1")],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.claims["uid-1"].error, "");
    }
    assert!(!cfg.cdi_spec_path("uid-1").exists());
    assert!(plugin.checkpoint().claims.is_empty());
    serving.stop().await.unwrap();
    assert!(!cfg.registration_socket().exists());
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_file_change_reaches_the_kubelet_and_pods_keep_their_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let (node, inv) = runner(tmp.path(), "h100-80gb:1", true);
    let desired = tmp.path().join("desired.yaml");
    std::fs::write(
        &desired,
        "version: 1\ngpus:\n  0: [1g.10gb@0, 1g.10gb@1, 3g.40gb@4]\n",
    )
    .unwrap();
    let (status_tx, mut status) = watch::channel(None::<NodeStatus>);
    let (stop, stopped) = oneshot::channel::<()>();
    let (stop_dp, stopped_dp) = oneshot::channel::<()>();
    let run = tokio::spawn(node.run(
        FileDesired::new(&desired, Duration::from_millis(20)),
        WatchSink(status_tx),
        async {
            let _ = stopped.await;
        },
    ));
    let mut cfg = DevicePluginConfig::new(tmp.path());
    cfg.poll = Duration::from_millis(50);
    let plugins = tokio::spawn(run_device_plugins(cfg, inv, async {
        let _ = stopped_dp.await;
    }));

    let first = tokio::time::timeout(T, status.wait_for(|s| s.as_ref().is_some_and(converged)))
        .await
        .unwrap()
        .unwrap()
        .clone()
        .unwrap();
    let held = first.inventory.gpus[0].mig[0].clone();
    let reg = kubelet
        .wait_registered("nvidia.com/mig-1g.10gb", 1, T)
        .await
        .unwrap();
    let (_client, mut stream, listed) = common::watch(&kubelet, &reg).await;
    assert_eq!(listed.devices.len(), 2);

    // A pod is admitted on 1g.10gb (the first listed device, 1g.10gb@0; PodResources lists
    // it): a layout without that instance is refused.
    let given = kubelet
        .admit_pod("default", "train", "nvidia.com/mig-1g.10gb", 1)
        .await
        .unwrap();
    assert_eq!(given.envs["NVIDIA_VISIBLE_DEVICES"], held.uuid);
    std::fs::write(&desired, "gpus: {0: [2g.20gb@2, 1g.10gb@1, 3g.40gb@4]}\n").unwrap();
    let refused = tokio::time::timeout(
        T,
        status.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| matches!(s.gpus[0], GpuOutcome::Refused { .. }))
        }),
    )
    .await
    .expect("the refusal is reported")
    .unwrap()
    .clone()
    .unwrap();
    let GpuOutcome::Refused { reason, .. } = &refused.gpus[0] else {
        unreachable!()
    };
    assert!(reason.contains("pod default/train"), "{reason}");
    assert!(refused.inventory.mig_by_uuid(&held.uuid).is_some());

    // A broken desired file is reported, and the last good layout stays.
    std::fs::write(&desired, "gpus: {0: [9g.99gb@0]\n").unwrap();
    let broken = tokio::time::timeout(
        T,
        status.wait_for(|s| s.as_ref().is_some_and(|s| s.desired_error.is_some())),
    )
    .await
    .expect("the broken file is reported")
    .unwrap()
    .clone()
    .unwrap();
    assert!(
        broken
            .desired_error
            .as_deref()
            .unwrap()
            .contains("desired.yaml"),
        "{broken:?}"
    );
    assert!(broken.inventory.mig_by_uuid(&held.uuid).is_some());

    // The pod ends; the next change applies and reaches the open stream.
    kubelet.remove_pod("default", "train");
    std::fs::write(
        &desired,
        "gpus: {0: [2g.20gb@2, 1g.10gb@1, 3g.40gb@4]}  # pod gone\n",
    )
    .unwrap();
    let next = tokio::time::timeout(T, stream.next())
        .await
        .expect("the new list arrives on the same stream")
        .unwrap()
        .unwrap();
    assert_eq!(next.devices.len(), 1);
    assert_ne!(next.devices[0].id, held.uuid);
    kubelet
        .wait_registered("nvidia.com/mig-2g.20gb", 1, T)
        .await
        .expect("the new profile registers");
    assert_eq!(kubelet.registrations_of("nvidia.com/mig-1g.10gb"), 1);

    // The plugins first: they also end on their own once the runner (their inventory's
    // sender) is gone.
    stop_dp.send(()).unwrap();
    plugins.await.unwrap().unwrap();
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pod_resources_socket_keeps_every_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let (mut node, _inv) = runner(tmp.path(), "h100-80gb:1", true);
    let st = node
        .apply(&layout("gpus: {0: [1g.10gb@0, 3g.40gb@4]}"))
        .await
        .unwrap();
    assert!(converged(&st), "{st:?}");
    // The socket stays, nobody answers: removing 1g.10gb@0 is refused, adding is not.
    kubelet.stop_pod_resources().await;
    assert!(tmp.path().join("pod-resources/kubelet.sock").exists());
    let st = node
        .apply(&layout("gpus: {0: [2g.20gb@2, 3g.40gb@4]}"))
        .await
        .unwrap();
    match &st.gpus[0] {
        GpuOutcome::Refused { reason, .. } => {
            assert!(
                reason.contains("1g.10gb@0") && reason.contains("PodResources"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let st = node
        .apply(&layout("gpus: {0: [1g.10gb@0, 1g.10gb@1, 3g.40gb@4]}"))
        .await
        .unwrap();
    assert!(converged(&st), "{st:?}");
    kubelet.stop().await;
}

#[test]
fn resource_slices_list_every_slice_with_capacity() {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list("a100-40gb:1").unwrap(), 3, false).unwrap();
    let mut b = SimBackend::new(st, c.clone(), SimConfig::default()).unwrap();
    let mut mps = BTreeMap::new();
    mps.insert(
        0,
        layout("mps: {0: [{memory_mib: 10240, thread_percent: 25}, {memory_mib: 20480, thread_percent: 50}]}")
            .mps[&0]
            .clone(),
    );
    let inv = tessera_kubelet::NodeInventory::observe(&mut b, &c, &mps).unwrap();
    let slices = resource_slices(DRIVER, "node-a", &inv, 4);
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    assert_eq!(s.spec.driver, DRIVER);
    assert_eq!(s.spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        (s.spec.pool.name.as_str(), s.spec.pool.generation),
        ("node-a", 4)
    );
    let devs = s.spec.devices.as_ref().unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["gpu-0-mps-0", "gpu-0-mps-1"]);
    let cap = devs[1].capacity.as_ref().unwrap();
    assert_eq!(cap["memory"].value.0, "20480Mi");
    assert_eq!(cap["threadPercent"].value.0, "50");
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(json["kind"], "ResourceSlice");
    // Deterministic: the same inventory, the same bytes.
    assert_eq!(
        serde_json::to_string(&resource_slices(DRIVER, "node-a", &inv, 4)).unwrap(),
        serde_json::to_string(&slices).unwrap()
    );
}

#[test]
fn desired_file_mistakes_are_named() {
    let e = parse_desired_file("mps: {0: [{memory_mib: 1, thread_percent: 0}]}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("thread_percent must be 1-100"), "{e}");
    let e = parse_desired_file("gpus: {0: [1]}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("PROFILE@START"), "{e}");
    let e = parse_desired_file("mps: {0: [{memory: 1}]}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("memory_mib"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xid_lists_the_gpus_devices_unhealthy() {
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list("a100-40gb:2").unwrap(), 3, false).unwrap();
    let mut b = SimBackend::new(st, c.clone(), SimConfig::default()).unwrap();
    b.inject_xid(1, 79, None).unwrap();
    let (mut node, inv) = NodeRunner::new(
        Box::new(b),
        Box::new(MemJournal::new()),
        c,
        NodeConfig {
            kubelet_dir: tmp.path().to_path_buf(),
            resync: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let st = node.apply(&DesiredLayout::default()).await.unwrap();
    assert!(st.inventory.gpus[0].healthy);
    assert!(!st.inventory.gpus[1].healthy);
    let mut cfg = DevicePluginConfig::new(tmp.path());
    cfg.poll = Duration::from_millis(50);
    let (stop, stopped) = oneshot::channel::<()>();
    let plugins = tokio::spawn(run_device_plugins(cfg, inv, async {
        let _ = stopped.await;
    }));
    let reg = kubelet
        .wait_registered("nvidia.com/gpu", 1, T)
        .await
        .unwrap();
    let (_client, _stream, listed) = common::watch(&kubelet, &reg).await;
    let health: BTreeMap<String, String> = listed
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.health.clone()))
        .collect();
    assert_eq!(health[&st.inventory.gpus[0].uuid], "Healthy");
    assert_eq!(health[&st.inventory.gpus[1].uuid], "Unhealthy");
    stop.send(()).unwrap();
    plugins.await.unwrap().unwrap();
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_change_is_finished_by_the_next_node_process() {
    use tessera_agent::journal::FileJournal;
    use tessera_gpu::{CrashPlan, CrashPoint};
    let tmp = tempfile::tempdir().unwrap();
    let c = Catalog::builtin().clone();
    let state = tmp.path().join("machine.json");
    let journal = tmp.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let st = SimState::new(&c, &parse_gpu_list("h100-80gb:1").unwrap(), 3, true).unwrap();
    drop(SimBackend::create(&state, st, c.clone()).unwrap());
    let cfg = NodeConfig {
        kubelet_dir: tmp.path().to_path_buf(),
        resync: Duration::from_secs(3600),
    };
    let want = layout("gpus: {0: [1g.10gb@0, 1g.10gb@1, 3g.40gb@4]}");

    // The first process dies inside the second create (the GI exists, its CI does not).
    let crashing = SimConfig {
        crash: Some(CrashPlan {
            point: Some(CrashPoint::CreateGiAfterGi),
            nth: 2,
        }),
        ..SimConfig::default()
    };
    let b = SimBackend::open(&state, c.clone(), crashing).unwrap();
    let (mut node, _) = NodeRunner::new(
        Box::new(b),
        Box::new(FileJournal::open(&journal).unwrap()),
        c.clone(),
        cfg.clone(),
    )
    .unwrap();
    // The crashed machine answers nothing more: the apply fails as the process would die.
    let err = node.apply(&want).await.unwrap_err();
    assert!(err.to_string().contains("create_gi:after_gi"), "{err}");
    drop(node);

    // The next process, on the same machine and journal, converges to exactly the layout.
    let b = SimBackend::open(&state, c.clone(), SimConfig::default()).unwrap();
    let (mut node, inv) = NodeRunner::new(
        Box::new(b),
        Box::new(FileJournal::open(&journal).unwrap()),
        c,
        cfg,
    )
    .unwrap();
    let st = node.apply(&want).await.unwrap();
    assert!(converged(&st), "{st:?}");
    let mut specs: Vec<String> = st.inventory.gpus[0]
        .mig
        .iter()
        .map(|m| format!("{}@{}", m.profile, m.start))
        .collect();
    specs.sort();
    assert_eq!(specs, ["1g.10gb@0", "1g.10gb@1", "3g.40gb@4"]);
    assert_eq!(
        *inv.borrow(),
        st.inventory,
        "the plugins see the finished layout"
    );
}
