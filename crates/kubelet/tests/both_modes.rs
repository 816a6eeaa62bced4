//! `--mode both`: the device plugins and the DRA plugin share one allocation ledger, so one
//! slice never serves both paths. Against the fake kubelet: a prepared claim's instance is
//! listed `Unhealthy` on the open ListAndWatch stream and refused by `Allocate`; a device a pod
//! got through `Allocate` leaves the ResourceSlices and is refused by NodePrepareResources;
//! each is offered again once released (unprepare; the pod gone from PodResources).

use std::sync::Arc;
use std::time::Duration;

use tessera_agent::journal::MemJournal;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{SimBackend, SimConfig, SimState};
use tessera_kubelet::deviceplugin::{run_device_plugins, DevicePluginConfig};
use tessera_kubelet::dra::{resource_slices, DraConfig, DraPlugin, MapClaims};
use tessera_kubelet::ledger::Ledger;
use tessera_kubelet::node::{parse_desired_file, NodeConfig, NodeRunner};
use tessera_kubelet::proto::deviceplugin as dp;
use tessera_kubelet::proto::dra as pb;
use tessera_kubelet::testkit::FakeKubelet;
use tessera_kubelet::NodeInventory;
use tessera_model::Catalog;
use tokio_stream::StreamExt;

mod common;

const T: Duration = Duration::from_secs(5);
use common::DRIVER;

fn claims_req(name: &str, uid: &str) -> Vec<pb::Claim> {
    vec![pb::Claim {
        namespace: "default".into(),
        uid: uid.into(),
        name: name.into(),
    }]
}

fn health(msg: &dp::ListAndWatchResponse) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = msg
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.health.clone()))
        .collect();
    v.sort();
    v
}

fn slice_devices(inv: &NodeInventory) -> Vec<String> {
    resource_slices(DRIVER, "node-a", inv, 1)
        .into_iter()
        .flat_map(|s| s.spec.devices.unwrap_or_default())
        .map(|d| d.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slice_never_serves_both_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list("h100-80gb:1").unwrap(), 3, true).unwrap();
    let b = SimBackend::new(st, c.clone(), SimConfig::default()).unwrap();
    let (mut runner, inv) = NodeRunner::new(
        Box::new(b),
        Box::new(MemJournal::new()),
        c,
        NodeConfig {
            kubelet_dir: tmp.path().to_path_buf(),
            resync: Duration::from_secs(3600),
        },
    )
    .unwrap();
    // No grace: a device-plugin allocation is released as soon as PodResources drops it.
    let ledger = Arc::new(Ledger::new(Duration::ZERO));
    runner.set_ledger(ledger.clone());
    let layout = parse_desired_file("gpus: {0: [1g.10gb@0, 1g.10gb@1]}").unwrap();
    runner.apply(&layout).await.unwrap();
    let (uuid0, uuid1) = {
        let i = inv.borrow();
        (i.gpus[0].mig[0].uuid.clone(), i.gpus[0].mig[1].uuid.clone())
    };

    let claims = Arc::new(MapClaims::default());
    claims.put(common::allocated_claim(
        "default",
        "c1",
        "uid-1",
        "gpu-0-mig-1g-10gb-0",
    ));
    claims.put(common::allocated_claim(
        "default",
        "c2",
        "uid-2",
        "gpu-0-mig-1g-10gb-1",
    ));
    let cfg = DraConfig {
        driver: DRIVER.into(),
        node_name: "node-a".into(),
        kubelet_dir: tmp.path().to_path_buf(),
        cdi_dir: tmp.path().join("cdi"),
        dev: None,
        ledger: Some(ledger.clone()),
    };
    let plugin = DraPlugin::new(cfg, claims, inv.clone()).unwrap();
    runner.add_holds(plugin.clone());
    let serving = plugin.start().unwrap();
    let mut dra = kubelet.dra_plugins().await.unwrap().remove(0);

    let mut dp_cfg = DevicePluginConfig::new(tmp.path());
    dp_cfg.poll = Duration::from_millis(50);
    dp_cfg.ledger = Some(ledger.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let plugins = tokio::spawn(run_device_plugins(dp_cfg, inv.clone(), async {
        let _ = stopped.await;
    }));
    let reg = kubelet
        .wait_registered("nvidia.com/mig-1g.10gb", 1, T)
        .await
        .unwrap();
    let (mut client, mut stream, first) = common::watch(&kubelet, &reg).await;
    assert!(first.devices.iter().all(|d| d.health == "Healthy"));

    // DRA prepares instance 0: the device plugin lists it Unhealthy on the open stream...
    let r = dra
        .client
        .node_prepare_resources(pb::NodePrepareResourcesRequest {
            claims: claims_req("c1", "uid-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.claims["uid-1"].error, "");
    let next = tokio::time::timeout(T, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut want = vec![
        (uuid0.clone(), "Unhealthy".to_string()),
        (uuid1.clone(), "Healthy".to_string()),
    ];
    want.sort();
    assert_eq!(health(&next), want);
    // ...and Allocate refuses it, naming the claim.
    let err = client
        .allocate(dp::AllocateRequest {
            container_requests: vec![dp::ContainerAllocateRequest {
                devices_ids: vec![uuid0.clone()],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("claim default/c1"), "{err}");

    // A pod gets instance 1 through the device-plugin path: it leaves the ResourceSlices and
    // NodePrepareResources refuses it.
    let got = kubelet
        .admit_pod("default", "p1", "nvidia.com/mig-1g.10gb", 1)
        .await
        .unwrap();
    assert_eq!(got.envs["NVIDIA_VISIBLE_DEVICES"], uuid1);
    let names = slice_devices(&inv.borrow());
    assert!(
        !names.contains(&"gpu-0-mig-1g-10gb-1".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"gpu-0-mig-1g-10gb-0".to_string()));
    let r = dra
        .client
        .node_prepare_resources(pb::NodePrepareResourcesRequest {
            claims: claims_req("c2", "uid-2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.claims["uid-2"].error.contains("device-plugin"),
        "{:?}",
        r.claims["uid-2"]
    );
    // While PodResources lists the pod, an apply keeps the allocation.
    runner.apply(&layout).await.unwrap();
    assert!(!slice_devices(&inv.borrow()).contains(&"gpu-0-mig-1g-10gb-1".to_string()));

    // Unprepare: instance 0 is Healthy again for the device plugin.
    let r = dra
        .client
        .node_unprepare_resources(pb::NodeUnprepareResourcesRequest {
            claims: claims_req("c1", "uid-1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.claims["uid-1"].error, "");
    let next = tokio::time::timeout(T, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.devices.iter().all(|d| d.health == "Healthy"));

    // The pod ends: at the next apply PodResources no longer lists it, DRA may prepare it.
    kubelet.remove_pod("default", "p1");
    runner.apply(&layout).await.unwrap();
    assert!(slice_devices(&inv.borrow()).contains(&"gpu-0-mig-1g-10gb-1".to_string()));
    let r = dra
        .client
        .node_prepare_resources(pb::NodePrepareResourcesRequest {
            claims: claims_req("c2", "uid-2"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.claims["uid-2"].error, "");

    let _ = stop.send(());
    plugins.await.unwrap().unwrap();
    serving.stop().await.unwrap();
}
