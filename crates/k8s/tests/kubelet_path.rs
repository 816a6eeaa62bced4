//! The demo's nodes through the kubelet protocols: a pod's slice reaches the node's fake
//! kubelet on ListAndWatch and is admitted with `Allocate`, which answers the earmarked
//! instance's `MIG-…` UUID; a new resource registers without the others re-registering; and
//! the node runner keeps an instance the kubelet's PodResources lists for a pod even when a
//! spec drops it.

use std::collections::BTreeMap;

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tessera_gpu::GpuBackend;
use tessera_k8s::kubelet_cluster::KubeletCluster;
use tessera_k8s::TesseraNode;
use tessera_model::Catalog;

async fn cluster(gpus: &str) -> KubeletCluster {
    let mut c = KubeletCluster::new(1, gpus, &BTreeMap::new(), Catalog::builtin().clone())
        .await
        .unwrap();
    c.nodes_round().await.unwrap();
    c
}

#[tokio::test]
async fn a_pods_slice_is_listed_and_allocated_through_the_device_plugin() {
    let mut c = cluster("h100-80gb:1").await;
    c.submit("train", "nvidia.com/mig-3g.40gb", None)
        .await
        .unwrap();
    assert_eq!(c.cycle().await.unwrap(), ["default/train"]);
    assert_eq!(c.allocate_calls(), 1);
    let k = c.nodes[0].kubelet();
    assert_eq!(k.registrations_of("nvidia.com/mig-3g.40gb"), 1);
    let reg = k
        .registrations()
        .into_iter()
        .find(|r| r.resource_name == "nvidia.com/mig-3g.40gb")
        .unwrap();
    assert_eq!(reg.endpoint, "nvidia-mig-3g.40gb.sock");

    // The instance the pod was admitted on is the one on the GPU, and it is busy there.
    let inst = c.nodes[0].gpu().clone().instances(0).unwrap();
    assert_eq!(inst.len(), 1);
    assert!(inst[0].is_busy());

    // A second profile: its own registration; the first resource does not register again.
    c.submit("infer", "nvidia.com/mig-1g.10gb", None)
        .await
        .unwrap();
    assert_eq!(c.cycle().await.unwrap(), ["default/infer"]);
    let k = c.nodes[0].kubelet();
    assert_eq!(k.registrations_of("nvidia.com/mig-1g.10gb"), 1);
    assert_eq!(k.registrations_of("nvidia.com/mig-3g.40gb"), 1);
    assert_eq!(c.reregistrations(), 0);
    assert_eq!(c.allocate_calls(), 2);
    c.stop().await.unwrap();
}

#[tokio::test]
async fn an_mps_gpu_serves_nos_resource_names_with_the_share_limits() {
    let mut c = KubeletCluster::new(
        1,
        "h100-80gb:1",
        &BTreeMap::from([(0, vec![0])]),
        Catalog::builtin().clone(),
    )
    .await
    .unwrap();
    c.nodes_round().await.unwrap();
    c.submit("small", "nvidia.com/gpu-10gb", Some(30))
        .await
        .unwrap();
    assert_eq!(c.cycle().await.unwrap(), ["default/small"]);
    assert_eq!(
        c.nodes[0].kubelet().registrations_of("nvidia.com/gpu-10gb"),
        1
    );
    let n: TesseraNode = Api::all(c.client.clone()).get("node-0").await.unwrap();
    let g = &n.status.unwrap().gpus[0];
    assert_eq!(g.mps.len(), 1);
    assert_eq!((g.mps[0].memory_mib, g.mps[0].sm_percent), (10240, 30));
    c.stop().await.unwrap();
}

#[tokio::test]
async fn an_instance_the_kubelet_lists_for_a_pod_survives_a_spec_that_drops_it() {
    let mut c = cluster("h100-80gb:1").await;
    c.submit("train", "nvidia.com/mig-3g.40gb", None)
        .await
        .unwrap();
    assert_eq!(c.cycle().await.unwrap(), ["default/train"]);
    // Its container has no processes (yet): only the kubelet's PodResources knows the pod
    // holds the instance.
    let start = c.nodes[0].gpu().clone().instances(0).unwrap()[0].start;
    c.nodes[0].gpu().lock().set_idle(0, start).unwrap();
    let api: Api<TesseraNode> = Api::all(c.client.clone());
    api.patch(
        "node-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"gpus": [{"index": 0, "mode": "mig", "instances": []}]}})),
    )
    .await
    .unwrap();
    c.nodes_round().await.unwrap();
    assert_eq!(c.nodes[0].gpu().clone().instances(0).unwrap().len(), 1);
    let st = api.get("node-0").await.unwrap().status.unwrap();
    let cond = &st.conditions[0];
    assert_eq!(cond.status, "False");
    assert!(
        cond.message.contains("held by pod default/train"),
        "{}",
        cond.message
    );
    assert!(st.gpus[0].instances[0].busy);
    c.stop().await.unwrap();
}
