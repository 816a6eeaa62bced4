//! `kube::Client` against the in-process fake apiserver: create, get, list, merge patch,
//! apply, status subresource, optimistic concurrency, delete and watch, and the recorded
//! requests.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tessera_k8s::crd::{GpuLayout, MigInstance, SliceMode};
use tessera_k8s::fake::FakeApiServer;
use tessera_k8s::{TesseraNode, TesseraNodeSpec, TesseraNodeStatus};

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_status_and_conflicts_over_http() {
    let srv = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(srv.client(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("p1"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    let err = pods
        .create(&PostParams::default(), &pod("p1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    let patched = pods
        .patch(
            "p1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "n1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let got = pods.get("p1").await.unwrap();
    assert_eq!(
        got.spec.unwrap().node_selector.unwrap()["kubernetes.io/hostname"],
        "n1"
    );

    // A stale resourceVersion is refused.
    let mut stale = created.clone();
    stale.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    let err = pods
        .replace("p1", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("modified"), "{err}");

    // Label selectors filter lists.
    pods.create(&PostParams::default(), &serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p2", "labels": {"app": "y"}}, "spec": {"containers": []}})).unwrap())
        .await
        .unwrap();
    let l = pods
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(l.items.len(), 1);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );

    // Cluster-scoped custom resource with a status subresource.
    let tn: Api<TesseraNode> = Api::all(srv.client());
    let mut obj = TesseraNode::new("n1", TesseraNodeSpec::default());
    obj.status = Some(TesseraNodeStatus {
        gpu_count: 9,
        ..Default::default()
    });
    let c = tn.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(
        c.status, None,
        "create ignores status when status is a subresource"
    );
    let spec = json!({"spec": {"gpus": [{"index": 0, "mode": "mig", "instances": [{"profile": "1g.10gb", "start": 0}]}]}});
    let s = tn
        .patch(
            "n1",
            &PatchParams::apply("tessera-controller"),
            &Patch::Apply(&spec),
        )
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(2));
    assert_eq!(
        s.spec.gpus,
        vec![GpuLayout {
            index: 0,
            mode: SliceMode::Mig,
            instances: vec![MigInstance {
                profile: "1g.10gb".into(),
                start: 0
            }],
            mps: vec![]
        }]
    );
    let st = tn
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"gpuCount": 8, "observedGeneration": 2}, "spec": {"gpus": []}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(st.status.as_ref().unwrap().gpu_count, 8);
    assert_eq!(
        st.spec.gpus.len(),
        1,
        "a status write leaves the spec alone"
    );
    assert_eq!(
        st.metadata.generation,
        Some(2),
        "a status write keeps the generation"
    );

    // What was sent.
    let reqs = srv.requests();
    let apply = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.path == "/apis/tessera.dev/v1alpha1/tesseranodes/n1")
        .unwrap();
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(
        apply.query.contains("fieldManager=tessera-controller"),
        "{}",
        apply.query
    );
    let status = reqs
        .iter()
        .find(|r| r.path.ends_with("/tesseranodes/n1/status"))
        .unwrap();
    assert_eq!(status.body.as_ref().unwrap()["status"]["gpuCount"], 8);

    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    assert!(pods.get_opt("p1").await.unwrap().is_none());
}

#[tokio::test]
async fn watch_streams_events_after_a_resource_version() {
    let srv = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(srv.client(), "default");
    pods.create(&PostParams::default(), &pod("before"))
        .await
        .unwrap();
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    pods.create(&PostParams::default(), &pod("after"))
        .await
        .unwrap();
    pods.patch(
        "after",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"k": "v"}}})),
    )
    .await
    .unwrap();
    pods.delete("after", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.metadata.name.unwrap())),
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.metadata.name.unwrap())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED after", "MODIFIED after", "DELETED after"]);
}

#[tokio::test]
async fn kube_runtime_watcher_sees_the_initial_list_and_changes() {
    use kube::runtime::watcher::{self, Event};
    let srv = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(srv.client(), "default");
    pods.create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let mut w = watcher::watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut init = Vec::new();
    loop {
        match w.next().await.unwrap().unwrap() {
            Event::InitApply(p) => init.push(p.metadata.name.unwrap()),
            Event::InitDone => break,
            Event::Init => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, ["a"]);
    pods.create(&PostParams::default(), &pod("b"))
        .await
        .unwrap();
    match w.next().await.unwrap().unwrap() {
        Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("b")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn nodes_resource_slices_and_claims_are_served_too() {
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
    let srv = FakeApiServer::start().await.unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(srv.client());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "gpu-1", "labels": {"tessera.dev/managed": "true"}}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    assert_eq!(
        nodes
            .list(&ListParams::default().labels("tessera.dev/managed=true"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let slices: Api<ResourceSlice> = Api::all(srv.client());
    let slice: ResourceSlice = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
        "metadata": {"name": "gpu-1-gpu.tessera.dev"},
        "spec": {"driver": "gpu.tessera.dev", "nodeName": "gpu-1",
                 "pool": {"name": "gpu-1", "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": "gpu-0-mig-1g-10gb-0", "attributes": {"type": {"string": "mig"}}}]}
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let got = slices.get("gpu-1-gpu.tessera.dev").await.unwrap();
    assert_eq!(got.spec.devices.unwrap()[0].name, "gpu-0-mig-1g-10gb-0");
    let claims: Api<ResourceClaim> = Api::namespaced(srv.client(), "ml");
    let claim: ResourceClaim = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "c1"},
        "spec": {"devices": {"requests": [{"name": "mig", "exactly": {"deviceClassName": "mig.tessera.dev"}}]}}
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let st = claims
        .patch_status(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"allocation": {"devices": {"results": [
                {"request": "mig", "driver": "gpu.tessera.dev", "pool": "gpu-1", "device": "gpu-0-mig-1g-10gb-0"}]}}}})),
        )
        .await
        .unwrap();
    let results = st
        .status
        .unwrap()
        .allocation
        .unwrap()
        .devices
        .unwrap()
        .results
        .unwrap();
    assert_eq!(results[0].device, "gpu-0-mig-1g-10gb-0");
    assert!(srv
        .requests()
        .iter()
        .any(|r| r.path == "/apis/resource.k8s.io/v1/namespaces/ml/resourceclaims/c1/status"));
}
