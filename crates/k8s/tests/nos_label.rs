//! nos's node label `nos.nebuly.com/gpu-partitioning=mig|mps` on the fake apiserver: the
//! controller plans an `mps` node's GPUs as MPS shares and a `mig` node's as MIG instances,
//! and never re-modes a GPU whose slices belong to the other mode.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tessera_k8s::controller::Controller;
use tessera_k8s::crd::SliceMode;
use tessera_k8s::fake::FakeApiServer;
use tessera_k8s::pods::{Earmark, EarmarkedSlice, GATE};
use tessera_k8s::sharing::NOS_LABEL;
use tessera_k8s::{TesseraNode, TesseraNodeSpec};
use tessera_model::Catalog;
use tessera_planner::PlanOptions;

/// A node with `labels` and its `TesseraNode`, whose agent reports one H100 in `status_gpu`.
async fn node(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
    status_gpu: serde_json::Value,
) {
    let n: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();
    let api: Api<TesseraNode> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &TesseraNode::new(name, TesseraNodeSpec::default()),
    )
    .await
    .unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"gpuCount": 1, "gpus": [status_gpu]}})),
    )
    .await
    .unwrap();
}

fn h100(mode: &str, instances: serde_json::Value) -> serde_json::Value {
    json!({"index": 0, "model": "h100-80gb", "uuid": "GPU-x", "mode": mode, "instances": instances, "mps": []})
}

async fn pod(client: &kube::Client, name: &str, resource: &str) {
    let p: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"schedulingGates": [{"name": GATE}],
                 "containers": [{"name": "main", "image": "cuda:12",
                                 "resources": {"limits": {resource: "1"}}}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

async fn earmark(client: &kube::Client, name: &str) -> Option<Earmark> {
    let p = Api::<Pod>::namespaced(client.clone(), "default")
        .get(name)
        .await
        .unwrap();
    Earmark::of(&p)
}

#[tokio::test]
async fn a_nos_mps_node_gets_mps_shares_and_a_nos_mig_node_mig_instances() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client();
    // Both agents report their (empty) GPU the way an agent that knows nothing of the label
    // does: MIG, no instances.
    node(
        &client,
        "gpu-mps",
        json!({NOS_LABEL: "mps"}),
        h100("mig", json!([])),
    )
    .await;
    node(
        &client,
        "gpu-mig",
        json!({NOS_LABEL: "mig"}),
        h100("mig", json!([])),
    )
    .await;
    pod(&client, "small-a", "nvidia.com/gpu-10gb").await;
    pod(&client, "small-b", "nvidia.com/gpu-10gb").await;
    pod(&client, "mig-a", "nvidia.com/mig-1g.10gb").await;

    let c = Controller::new(
        client.clone(),
        Catalog::builtin().clone(),
        PlanOptions::default(),
    );
    let r = c.round().await.unwrap();
    assert!(r.unassigned.is_empty(), "{r:?}");
    assert!(r.not_planned.is_empty(), "{r:?}");

    for name in ["small-a", "small-b"] {
        let m = earmark(&client, name).await.unwrap();
        assert_eq!(m.node, "gpu-mps", "{name}");
        assert!(
            matches!(
                m.slice,
                EarmarkedSlice::Mps {
                    memory_mib: 10240,
                    ..
                }
            ),
            "{name}: {m}"
        );
    }
    let m = earmark(&client, "mig-a").await.unwrap();
    assert_eq!(m.node, "gpu-mig");
    assert!(matches!(m.slice, EarmarkedSlice::Mig { ref profile, .. } if profile == "1g.10gb"));

    let api: Api<TesseraNode> = Api::all(client.clone());
    let mps = api.get("gpu-mps").await.unwrap().spec.gpus;
    assert_eq!(mps.len(), 1);
    assert_eq!(mps[0].mode, SliceMode::Mps);
    assert_eq!(mps[0].mps.len(), 2);
    assert!(mps[0].instances.is_empty());
    let mig = api.get("gpu-mig").await.unwrap().spec.gpus;
    assert_eq!(mig[0].mode, SliceMode::Mig);
    assert_eq!(mig[0].instances.len(), 1);
    assert!(mig[0].mps.is_empty());
}

#[tokio::test]
async fn an_mps_label_on_a_gpu_with_mig_instances_leaves_that_gpu_alone() {
    let server = FakeApiServer::start().await.unwrap();
    let client = server.client();
    node(
        &client,
        "gpu-busy",
        json!({NOS_LABEL: "mps"}),
        h100(
            "mig",
            json!([{"profile": "3g.40gb", "start": 0, "uuid": "MIG-a", "busy": true}]),
        ),
    )
    .await;
    pod(&client, "small", "nvidia.com/gpu-10gb").await;
    let c = Controller::new(
        client.clone(),
        Catalog::builtin().clone(),
        PlanOptions::default(),
    );
    let r = c.round().await.unwrap();
    assert_eq!(r.not_planned.len(), 1, "{r:?}");
    assert!(r.not_planned[0].contains("gpu-busy GPU 0: labelled mps, but MIG is on"));
    assert!(earmark(&client, "small").await.is_none());
    let api: Api<TesseraNode> = Api::all(client.clone());
    assert!(api.get("gpu-busy").await.unwrap().spec.gpus.is_empty());
}

#[tokio::test]
async fn node_agents_follow_the_labelled_mode_and_both_pods_run_in_one_cycle() {
    let mut c = tessera_k8s::demo::SimCluster::new(2, "h100-80gb:1", Catalog::builtin().clone())
        .await
        .unwrap();
    for (name, mode) in [("node-0", "mps"), ("node-1", "mig")] {
        let n: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {NOS_LABEL: mode}}
        }))
        .unwrap();
        Api::<Node>::all(c.client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }
    c.agents_round().await.unwrap();
    c.submit("small", "nvidia.com/gpu-10gb", Some(25))
        .await
        .unwrap();
    c.submit("mig", "nvidia.com/mig-1g.10gb", None)
        .await
        .unwrap();
    let (_, _, r2, bound) = c.cycle().await.unwrap();
    assert_eq!(bound.len(), 2, "{r2:?}");
    assert_eq!(earmark(&c.client, "small").await.unwrap().node, "node-0");
    assert_eq!(earmark(&c.client, "mig").await.unwrap().node, "node-1");
    let api: Api<TesseraNode> = Api::all(c.client.clone());
    let st = api.get("node-0").await.unwrap().status.unwrap();
    assert_eq!(st.gpus[0].mode, SliceMode::Mps);
    assert_eq!(st.gpus[0].mps.len(), 1);
    assert_eq!(st.gpus[0].mps[0].sm_percent, 25);
}
