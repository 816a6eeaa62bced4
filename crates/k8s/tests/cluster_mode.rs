//! Cluster mode of the kubelet crate's node runner: desired layouts from the `TesseraNode`
//! spec, status to its status subresource and ResourceSlices to the apiserver, with the
//! controller serving a gated pod through it; ResourceClaims read from the apiserver.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, PostParams};
use serde_json::json;
use tessera_agent::MemJournal;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{SimBackend, SimConfig, SimState};
use tessera_k8s::cluster_mode::{ApiClaims, CrdDesired};
use tessera_k8s::controller::Controller;
use tessera_k8s::fake::FakeApiServer;
use tessera_k8s::pods::{is_gated, GATE};
use tessera_k8s::TesseraNode;
use tessera_kubelet::dra::ClaimReader;
use tessera_kubelet::node::{DesiredSource, NodeConfig, NodeRunner, StatusSink};
use tessera_model::Catalog;
use tessera_planner::PlanOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runner_serves_a_gated_pod_through_the_tesseranode() {
    let srv = FakeApiServer::start().await.unwrap();
    let client = srv.client();
    let catalog = Catalog::builtin().clone();
    let state = SimState::new(&catalog, &parse_gpu_list("h100-80gb:2").unwrap(), 5, true).unwrap();
    let backend = SimBackend::new(state, catalog.clone(), SimConfig::default()).unwrap();
    let kubelet = tempfile::tempdir().unwrap();
    let (mut runner, inventory) = NodeRunner::new(
        Box::new(backend),
        Box::new(MemJournal::new()),
        catalog.clone(),
        NodeConfig {
            kubelet_dir: kubelet.path().to_path_buf(),
            resync: Duration::from_secs(30),
        },
    )
    .unwrap();
    let nodes: Api<TesseraNode> = Api::all(client.clone());
    let mut source = CrdDesired::new(nodes.clone(), "gpu-1", Duration::from_millis(20));
    let mut sink = source
        .sink()
        .with_resource_slices(Api::all(client.clone()), "gpu.tessera.dev");

    // Registration and the first (empty) layout.
    let d = source.next().await.unwrap();
    assert!(d.gpus.is_empty());
    let st = runner.apply(&d).await.unwrap();
    sink.report(&st).await.unwrap();
    let n = nodes.get("gpu-1").await.unwrap();
    assert_eq!(n.status.as_ref().unwrap().gpu_count, 2);
    assert_eq!(n.status.as_ref().unwrap().gpus[0].model, "h100-80gb");

    // A gated pod: the controller writes the layout, the runner applies it from the spec.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "train"},
        "spec": {"schedulingGates": [{"name": GATE}],
                 "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/mig-3g.40gb": "1"}}}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ctl = Controller::new(client.clone(), catalog, PlanOptions::default());
    let r = ctl.round().await.unwrap();
    assert_eq!(r.spec_writes, ["gpu-1"]);
    let d = tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .expect("the new generation arrives")
        .unwrap();
    let specs: Vec<&String> = d.gpus.values().flatten().collect();
    assert_eq!(specs.len(), 1);
    assert!(specs[0].starts_with("3g.40gb@"));
    let st = runner.apply(&d).await.unwrap();
    sink.report(&st).await.unwrap();
    // The plugins see the new instance on the inventory channel (what ListAndWatch sends).
    assert!(inventory
        .borrow()
        .gpus
        .iter()
        .any(|g| g.mig.iter().any(|m| m.profile == "3g.40gb")));
    let n = nodes.get("gpu-1").await.unwrap();
    let status = n.status.unwrap();
    assert_eq!(status.observed_generation, n.metadata.generation);
    assert_eq!(status.condition("Converged").unwrap().status, "True");
    let r = ctl.round().await.unwrap();
    assert_eq!(r.released, ["default/train"]);
    assert!(!is_gated(&pods.get("train").await.unwrap()));

    // DRA: the node's ResourceSlices on the apiserver list the new instance, in one pool
    // generation, and nothing stale is left.
    let slices = Api::<ResourceSlice>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    assert!(!slices.is_empty());
    let gens: std::collections::BTreeSet<i64> =
        slices.iter().map(|s| s.spec.pool.generation).collect();
    assert_eq!(
        gens.len(),
        1,
        "only the latest pool generation is published"
    );
    assert!(slices
        .iter()
        .all(|s| s.spec.node_name.as_deref() == Some("gpu-1")));
    let devices: Vec<String> = slices
        .iter()
        .flat_map(|s| s.spec.devices.clone().unwrap_or_default())
        .map(|d| d.name)
        .collect();
    assert!(
        devices
            .iter()
            .any(|d| d.contains("mig") && d.contains("3g")),
        "{devices:?}"
    );

    // Claims are read from the apiserver.
    let claim: ResourceClaim = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "c1", "namespace": "ml"},
        "spec": {"devices": {"requests": []}}
    }))
    .unwrap();
    Api::<ResourceClaim>::namespaced(client.clone(), "ml")
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    let got = ApiClaims(client.clone()).claim("ml", "c1").await.unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("c1"));
    let err = ApiClaims(client).claim("ml", "missing").await.unwrap_err();
    assert!(err.to_string().contains("ml/missing"), "{err}");
}
