//! Device-plugin mode against the fake kubelet, over real Unix sockets: NVIDIA-compatible
//! registration, ListAndWatch of the node's slices, a layout change arriving on the open
//! stream with no re-registration, Allocate with the slice's `MIG-<uuid>`, and
//! re-registration after a kubelet restart.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_agent::journal::MemJournal;
use tessera_agent::reconcile::{ApplyResult, Reconciler, RecordingSleeper};
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{SimBackend, SimConfig, SimState};
use tessera_kubelet::deviceplugin::{run_device_plugins, DevicePluginConfig};
use tessera_kubelet::proto::deviceplugin as pb;
use tessera_kubelet::testkit::FakeKubelet;
use tessera_kubelet::NodeInventory;
use tessera_model::Catalog;
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt;

mod common;

const T: Duration = Duration::from_secs(5);

fn sim(spec: &str, mig: bool) -> SimBackend {
    let c = Catalog::builtin().clone();
    let st = SimState::new(&c, &parse_gpu_list(spec).unwrap(), 7, mig).unwrap();
    SimBackend::new(st, c, SimConfig::default()).unwrap()
}

fn apply(b: &mut SimBackend, gpu: u32, specs: &str) -> NodeInventory {
    let c = Catalog::builtin();
    let mut j = MemJournal::new();
    let mut sl = RecordingSleeper::default();
    let specs: Vec<String> = specs.split_whitespace().map(str::to_string).collect();
    let r = Reconciler::new(b, &mut j, c, &mut sl)
        .apply_specs(gpu, &specs)
        .unwrap();
    assert_eq!(r.result, ApplyResult::Converged, "{specs:?}");
    NodeInventory::observe(b, c, &BTreeMap::new()).unwrap()
}

fn uuids_of(inv: &NodeInventory, profile: &str) -> Vec<String> {
    let mut v: Vec<String> = inv.gpus[0]
        .mig
        .iter()
        .filter(|m| m.profile == profile)
        .map(|m| m.uuid.clone())
        .collect();
    v.sort();
    v
}

fn ids(msg: &pb::ListAndWatchResponse) -> Vec<String> {
    let mut v: Vec<String> = msg.devices.iter().map(|d| d.id.clone()).collect();
    v.sort();
    v
}

fn config(dir: &std::path::Path) -> DevicePluginConfig {
    let mut cfg = DevicePluginConfig::new(dir);
    cfg.poll = Duration::from_millis(50);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_changes_reach_the_open_stream_without_reregistration() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let mut b = sim("h100-80gb:1", true);
    let inv0 = apply(&mut b, 0, "1g.10gb@0 1g.10gb@1 3g.40gb@4");
    let (tx, rx) = watch::channel(inv0.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let plugins = tokio::spawn(run_device_plugins(config(tmp.path()), rx, async {
        let _ = stopped.await;
    }));

    // One registration per resource, under NVIDIA's mixed-strategy names and socket names.
    let r1 = kubelet
        .wait_registered("nvidia.com/mig-1g.10gb", 1, T)
        .await
        .expect("1g.10gb registers");
    assert_eq!(r1.version, "v1beta1");
    assert_eq!(r1.endpoint, "nvidia-mig-1g.10gb.sock");
    let r3 = kubelet
        .wait_registered("nvidia.com/mig-3g.40gb", 1, T)
        .await
        .expect("3g.40gb registers");
    assert_eq!(r3.endpoint, "nvidia-mig-3g.40gb.sock");
    assert!(tmp
        .path()
        .join("device-plugins/nvidia-mig-1g.10gb.sock")
        .exists());

    // ListAndWatch lists the node's slices.
    let (mut client, mut stream, first) = common::watch(&kubelet, &r1).await;
    assert_eq!(ids(&first), uuids_of(&inv0, "1g.10gb"));
    assert!(first.devices.iter().all(|d| d.health == "Healthy"));
    assert!(first.devices.iter().all(|d| d.id.starts_with("MIG-")));

    // The layout changes: the 1g.10gb stream gets the new list on the same stream, and the
    // new profile 2g.20gb registers once; nobody else registers again.
    let inv1 = apply(&mut b, 0, "2g.20gb@0 1g.10gb@2 1g.10gb@3 3g.40gb@4");
    let want = uuids_of(&inv1, "1g.10gb");
    assert_ne!(want, ids(&first));
    tx.send_replace(inv1.clone());
    let next = tokio::time::timeout(T, stream.next())
        .await
        .expect("the change arrives within a few seconds")
        .unwrap()
        .unwrap();
    assert_eq!(ids(&next), want);
    kubelet
        .wait_registered("nvidia.com/mig-2g.20gb", 1, T)
        .await
        .expect("the new profile registers");
    assert_eq!(kubelet.registrations_of("nvidia.com/mig-1g.10gb"), 1);
    assert_eq!(kubelet.registrations_of("nvidia.com/mig-3g.40gb"), 1);
    assert_eq!(kubelet.registrations().len(), 3);

    // Allocate answers with the slice's MIG UUID, as env and as a CDI device name.
    let pick = want[1].clone();
    let resp = client
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![pick.clone()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let c = &resp.container_responses[0];
    assert_eq!(c.envs["NVIDIA_VISIBLE_DEVICES"], pick);
    assert_eq!(
        c.cdi_devices,
        vec![pb::CdiDevice {
            name: format!("nvidia.com/gpu={pick}")
        }]
    );
    // A device that left the layout is refused by name.
    let gone = ids(&first)
        .into_iter()
        .find(|id| !want.contains(id))
        .unwrap();
    let err = client
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![gone.clone()],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains(&gone), "{}", err.message());

    // A kubelet restart (sockets removed, kubelet.sock recreated): every resource registers
    // again, on a socket that serves.
    kubelet.restart().await.unwrap();
    for r in [
        "nvidia.com/mig-1g.10gb",
        "nvidia.com/mig-2g.20gb",
        "nvidia.com/mig-3g.40gb",
    ] {
        kubelet
            .wait_registered(r, 2, T)
            .await
            .unwrap_or_else(|| panic!("{r} registers again after the kubelet restart"));
    }
    let r1 = kubelet
        .wait_registered("nvidia.com/mig-1g.10gb", 2, T)
        .await
        .unwrap();
    let (_client, _stream, again) = common::watch(&kubelet, &r1).await;
    assert_eq!(ids(&again), want);

    stop.send(()).unwrap();
    plugins.await.unwrap().unwrap();
    assert!(!tmp
        .path()
        .join("device-plugins/nvidia-mig-1g.10gb.sock")
        .exists());
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_gpus_register_as_nvidia_com_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let mut b = sim("a100-40gb:2", false);
    let inv = NodeInventory::observe(&mut b, Catalog::builtin(), &BTreeMap::new()).unwrap();
    let (_tx, rx) = watch::channel(inv.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let plugins = tokio::spawn(run_device_plugins(config(tmp.path()), rx, async {
        let _ = stopped.await;
    }));
    let r = kubelet
        .wait_registered("nvidia.com/gpu", 1, T)
        .await
        .expect("whole GPUs register");
    assert_eq!(r.endpoint, "nvidia-gpu.sock");
    let (mut client, _stream, first) = common::watch(&kubelet, &r).await;
    let want: Vec<String> = inv.gpus.iter().map(|g| g.uuid.clone()).collect();
    let mut got = ids(&first);
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    let resp = client
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: want.clone(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"],
        want.join(",")
    );
    stop.send(()).unwrap();
    plugins.await.unwrap().unwrap();
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mps_shares_register_under_nos_names_with_their_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(tmp.path()).await.unwrap();
    let mut b = sim("h100-80gb:2", false);
    let layout = tessera_kubelet::node::parse_desired_file(
        "mps: {1: [{memory_mib: 10240, thread_percent: 25}, {memory_mib: 10240, thread_percent: 25}]}",
    )
    .unwrap();
    let inv = NodeInventory::observe(&mut b, Catalog::builtin(), &layout.mps).unwrap();
    let (_tx, rx) = watch::channel(inv.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let plugins = tokio::spawn(run_device_plugins(config(tmp.path()), rx, async {
        let _ = stopped.await;
    }));
    let r = kubelet
        .wait_registered("nvidia.com/gpu-10gb", 1, T)
        .await
        .expect("MPS shares register under nos's name");
    assert_eq!(r.endpoint, "nvidia-gpu-10gb.sock");
    // GPU 0 (no shares) is still a whole GPU; GPU 1 is not.
    let whole = kubelet
        .wait_registered("nvidia.com/gpu", 1, T)
        .await
        .unwrap();
    let mut wc = kubelet.dial(&whole).await.unwrap();
    let mut ws = wc.list_and_watch(pb::Empty {}).await.unwrap().into_inner();
    let wl = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ids(&wl), vec![inv.gpus[0].uuid.clone()]);

    let (mut client, _stream, listed) = common::watch(&kubelet, &r).await;
    assert_eq!(listed.devices.len(), 2);
    let id = listed.devices[0].id.clone();
    let resp = client
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![id],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let envs = &resp.container_responses[0].envs;
    assert_eq!(envs["NVIDIA_VISIBLE_DEVICES"], inv.gpus[1].uuid);
    assert_eq!(envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "0=10240M");
    assert_eq!(envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
    // Two shares in one container: refused, with the fix.
    let all: Vec<String> = listed.devices.iter().map(|d| d.id.clone()).collect();
    let err = client
        .allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest { devices_ids: all }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    stop.send(()).unwrap();
    plugins.await.unwrap().unwrap();
    kubelet.stop().await;
}
