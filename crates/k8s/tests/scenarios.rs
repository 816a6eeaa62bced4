//! The cluster side end to end on the fake apiserver with simulated H100s: a pending pod gets
//! its slice without any restart (and what the controller sends for it), a busy instance is
//! never destroyed, an agent crash mid-change rolls forward, a controller failover keeps the
//! work, and an older pod is never overtaken by a later one for the same slice.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tessera_agent::{EntryKind, FileJournal, Journal, RecordingSleeper};
use tessera_gpu::{CrashPlan, CrashPoint, GpuBackend, SimBackend, SimConfig};
use tessera_k8s::controller::{lease_api, Controller};
use tessera_k8s::demo::SimCluster;
use tessera_k8s::lease::{LeaderElector, Leadership};
use tessera_k8s::node::NodeAgent;
use tessera_k8s::pods::{is_gated, Earmark, ERROR_ANNOTATION, GATE, SLICE_ANNOTATION};
use tessera_k8s::TesseraNode;
use tessera_model::Catalog;
use tessera_planner::PlanOptions;

fn catalog() -> Catalog {
    Catalog::builtin().clone()
}

async fn pod(c: &SimCluster, name: &str) -> Pod {
    Api::<Pod>::namespaced(c.client.clone(), "default")
        .get(name)
        .await
        .unwrap()
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600)
        .unwrap()
        .checked_add(SignedDuration::from_secs(secs))
        .unwrap()
}

#[tokio::test]
async fn a_pending_pod_gets_its_slice_in_one_cycle_without_any_restart() {
    let mut c = SimCluster::new(1, "h100-80gb:1", catalog()).await.unwrap();
    c.agents_round().await.unwrap();
    c.submit("train", "nvidia.com/mig-3g.40gb", None)
        .await
        .unwrap();
    c.server.clear_requests();
    let (r1, ops, r2, bound) = c.cycle().await.unwrap();
    assert_eq!(r1.earmarked.len(), 1, "{r1:?}");
    assert_eq!(ops, 1, "one instance created");
    assert_eq!(r2.released, ["default/train"]);
    assert_eq!(bound, ["default/train"]);
    let p = pod(&c, "train").await;
    assert!(!is_gated(&p));
    let mark = Earmark::of(&p).unwrap();
    assert_eq!(mark.node, "node-0");
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("node-0"));

    // What the controller sent, in order: the layout, the earmark, the gate removal.
    let reqs = c.server.requests();
    let writes: Vec<_> = reqs.iter().filter(|r| r.method != "GET").collect();
    let spec = writes
        .iter()
        .find(|r| r.path == "/apis/tessera.dev/v1alpha1/tesseranodes/node-0")
        .unwrap();
    assert_eq!(spec.method, "PATCH");
    assert_eq!(spec.content_type, "application/merge-patch+json");
    assert!(spec.query.contains("fieldManager=tessera-controller"));
    let gpus = &spec.body.as_ref().unwrap()["spec"]["gpus"];
    assert_eq!(gpus[0]["index"], 0);
    assert_eq!(gpus[0]["instances"].as_array().unwrap().len(), 1);
    assert_eq!(gpus[0]["instances"][0]["profile"], "3g.40gb");
    let pod_patches: Vec<_> = writes
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/default/pods/train")
        .collect();
    let earmark = pod_patches[0].body.as_ref().unwrap();
    assert_eq!(
        earmark["metadata"]["annotations"][SLICE_ANNOTATION],
        mark.to_string()
    );
    assert_eq!(
        earmark["spec"]["nodeSelector"]["kubernetes.io/hostname"],
        "node-0"
    );
    let ungate = pod_patches[1].body.as_ref().unwrap();
    assert_eq!(ungate["spec"]["schedulingGates"], json!([]));
    assert!(
        ungate["metadata"]["resourceVersion"].is_string(),
        "the gate removal is conditional"
    );
    let spec_at = writes
        .iter()
        .position(|r| r.path.ends_with("tesseranodes/node-0"))
        .unwrap();
    let mark_at = writes
        .iter()
        .position(|r| r.path.ends_with("pods/train"))
        .unwrap();
    assert!(
        spec_at < mark_at,
        "the layout is written before the earmark"
    );

    // A second pod later: served on the same node, same agent, the first slice untouched.
    let uuid_before = c.agents[0].backend_mut().instances(0).unwrap()[0]
        .uuid
        .clone();
    c.submit("infer", "nvidia.com/mig-1g.10gb", None)
        .await
        .unwrap();
    let (_, _, r2, bound) = c.cycle().await.unwrap();
    assert_eq!(r2.released, ["default/infer"]);
    assert_eq!(bound, ["default/infer"]);
    let insts = c.agents[0].backend_mut().instances(0).unwrap();
    assert!(insts
        .iter()
        .any(|i| i.profile == "3g.40gb" && i.uuid == uuid_before && i.is_busy()));
    let registrations = c
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("tesseranodes"))
        .count();
    assert_eq!(registrations, 0, "no agent re-registered");
}

#[tokio::test]
async fn a_busy_instance_is_never_destroyed() {
    let mut c = SimCluster::new(1, "h100-80gb:1", catalog()).await.unwrap();
    c.agents_round().await.unwrap();
    c.submit("big", "nvidia.com/mig-7g.80gb", None)
        .await
        .unwrap();
    let (_, _, _, bound) = c.cycle().await.unwrap();
    assert_eq!(bound, ["default/big"]);
    let big_uuid = c.agents[0].backend_mut().instances(0).unwrap()[0]
        .uuid
        .clone();

    c.submit("small", "nvidia.com/mig-1g.10gb", None)
        .await
        .unwrap();
    for _ in 0..3 {
        let (r1, _, _, bound) = c.cycle().await.unwrap();
        assert!(bound.is_empty());
        assert_eq!(r1.unassigned, ["default/small"]);
    }
    assert!(is_gated(&pod(&c, "small").await));

    // Even a spec that would destroy it (an old or buggy controller) is refused by the node.
    let nodes: Api<TesseraNode> = Api::all(c.client.clone());
    nodes
        .patch(
            "node-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gpus": [{"index": 0, "mode": "mig", "instances": [{"profile": "1g.10gb", "start": 0}]}]}})),
        )
        .await
        .unwrap();
    c.agents_round().await.unwrap();
    let n = nodes.get("node-0").await.unwrap();
    let cond = n
        .status
        .as_ref()
        .unwrap()
        .condition("Converged")
        .unwrap()
        .clone();
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason, "BusyInstanceInTheWay");
    let insts = c.agents[0].backend_mut().instances(0).unwrap();
    assert_eq!(insts.len(), 1);
    assert_eq!(insts[0].uuid, big_uuid);
    assert_eq!(c.check_busy(), 0);
    assert_eq!(c.busy_destroy_attempts(), 0);

    // Once the big pod ends (and its node has reported it idle), the small one gets its slice.
    c.finish("default/big").await.unwrap();
    let (_, _, r2, bound) = c.cycle().await.unwrap();
    assert!(bound.is_empty());
    assert_eq!(r2.earmarked.len(), 1, "{r2:?}");
    let (_, _, _, bound) = c.cycle().await.unwrap();
    assert_eq!(bound, ["default/small"]);
}

#[tokio::test]
async fn an_agent_crash_mid_change_rolls_forward_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = SimCluster::new(1, "h100-80gb:1", catalog()).await.unwrap();
    c.agents_round().await.unwrap();
    // Replace node-0's agent with one whose GPU crashes between the GI and its CI.
    let state = c.agents[0].backend().state().clone();
    let crashing = SimBackend::new(
        state,
        catalog(),
        SimConfig {
            crash: Some(CrashPlan {
                point: Some(CrashPoint::CreateGiAfterGi),
                nth: 1,
            }),
            ..SimConfig::default()
        },
    )
    .unwrap();
    c.agents[0] = NodeAgent::new(
        "node-0",
        Api::all(c.client.clone()),
        catalog(),
        crashing,
        Box::new(FileJournal::open(dir.path()).unwrap()),
        Box::new(RecordingSleeper::default()),
    );
    c.submit("job", "nvidia.com/mig-2g.20gb", None)
        .await
        .unwrap();
    let r = c.controller.round().await.unwrap();
    assert_eq!(r.earmarked.len(), 1);
    let err = c.agents_round().await.unwrap_err();
    assert!(err.to_string().contains("node-0"), "{err}");
    // Half-made: the GI exists without its compute instance.
    let crashed = c.agents[0].backend().state().clone();
    assert!(crashed.gpus[0].instances.iter().any(|g| g.cis.is_empty()));
    assert_eq!(
        c.controller.round().await.unwrap().released.len(),
        0,
        "not ready yet"
    );

    // Restart: same GPU state, same journal directory.
    c.agents[0] = NodeAgent::new(
        "node-0",
        Api::all(c.client.clone()),
        catalog(),
        SimBackend::new(crashed, catalog(), SimConfig::default()).unwrap(),
        Box::new(FileJournal::open(dir.path()).unwrap()),
        Box::new(RecordingSleeper::default()),
    );
    let (_, _, r2, bound) = c.cycle().await.unwrap();
    assert_eq!(r2.released, ["default/job"]);
    assert_eq!(bound, ["default/job"]);
    let insts = c.agents[0].backend_mut().instances(0).unwrap();
    assert_eq!(insts.len(), 1);
    assert!(insts[0].uuid.is_some());
    let journal = FileJournal::open(dir.path()).unwrap();
    assert!(
        journal
            .entries()
            .unwrap()
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Outcome { .. })
                && format!("{:?}", e.kind).contains("Recovered")),
        "the restart recorded what the crash cut short"
    );
}

#[tokio::test]
async fn a_failed_over_controller_takes_over_without_undoing_the_work() {
    let mut c = SimCluster::new(1, "h100-80gb:2", catalog()).await.unwrap();
    c.agents_round().await.unwrap();
    let leases: Api<Lease> = lease_api(c.client.clone(), "tessera-system");
    let a = Controller::new(c.client.clone(), catalog(), PlanOptions::default());
    let b = Controller::new(c.client.clone(), catalog(), PlanOptions::default());
    let ea = LeaderElector::new(
        leases.clone(),
        "tessera-controller",
        "a",
        Duration::from_secs(15),
    );
    let eb = LeaderElector::new(
        leases.clone(),
        "tessera-controller",
        "b",
        Duration::from_secs(15),
    );
    assert_eq!(
        ea.try_acquire_or_renew(t(0)).await.unwrap(),
        Leadership::Leader { acquired: true }
    );
    assert_eq!(
        eb.try_acquire_or_renew(t(1)).await.unwrap(),
        Leadership::Follower {
            holder: Some("a".into())
        }
    );
    for (name, res) in [
        ("p1", "nvidia.com/mig-3g.40gb"),
        ("p2", "nvidia.com/mig-4g.40gb"),
        ("p3", "nvidia.com/mig-7g.80gb"),
    ] {
        c.submit(name, res, None).await.unwrap();
    }
    let ra = a.round().await.unwrap();
    assert_eq!(ra.earmarked.len(), 3, "{ra:?}");
    drop(a); // the leader dies before the nodes report
    c.agents_round().await.unwrap();
    let marks_before: Vec<_> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| async { Earmark::of(&pod(&c, n).await) })
        .collect();
    let mut before = Vec::new();
    for m in marks_before {
        before.push(m.await);
    }
    let nodes: Api<TesseraNode> = Api::all(c.client.clone());
    let spec_rv = nodes.get("node-0").await.unwrap().metadata.generation;

    // Still within a's lease: b follows. After it: b leads.
    assert!(matches!(
        eb.try_acquire_or_renew(t(10)).await.unwrap(),
        Leadership::Follower { .. }
    ));
    assert_eq!(
        eb.try_acquire_or_renew(t(16)).await.unwrap(),
        Leadership::Leader { acquired: true }
    );
    let lease = leases.get("tessera-controller").await.unwrap();
    assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(1));
    // A stale leader coming back does not lead again.
    assert!(matches!(
        ea.try_acquire_or_renew(t(17)).await.unwrap(),
        Leadership::Follower { .. }
    ));

    // A new pod that only fits if an earmarked (not yet running) slice were taken back.
    c.submit("p4", "nvidia.com/mig-7g.80gb", None)
        .await
        .unwrap();
    let rb = b.round().await.unwrap();
    assert_eq!(rb.unassigned, ["default/p4"], "{rb:?}");
    assert!(rb.spec_writes.is_empty(), "{rb:?}");
    assert!(rb.earmarked.is_empty(), "{rb:?}");
    assert_eq!(rb.released.len(), 3, "{rb:?}");
    assert_eq!(
        nodes.get("node-0").await.unwrap().metadata.generation,
        spec_rv
    );
    for (n, m) in ["p1", "p2", "p3"].iter().zip(before) {
        assert_eq!(Earmark::of(&pod(&c, n).await), m, "{n}'s slice changed");
    }
    let bound = c.bind().await.unwrap();
    assert_eq!(bound.len(), 3);
    assert_eq!(c.check_busy(), 0);
}

#[tokio::test]
async fn an_older_pod_is_not_overtaken_for_the_same_slice() {
    let mut c = SimCluster::new(1, "h100-80gb:1", catalog()).await.unwrap();
    c.agents_round().await.unwrap();
    // Names sort the other way round from arrival.
    c.server.set_clock(Some(t(0)));
    c.submit("z-old", "nvidia.com/mig-7g.80gb", None)
        .await
        .unwrap();
    c.server.set_clock(Some(t(10)));
    c.submit("a-new", "nvidia.com/mig-7g.80gb", None)
        .await
        .unwrap();
    c.submit("bad", "nvidia.com/mig-7g.80gb", None)
        .await
        .unwrap();
    Api::<Pod>::namespaced(c.client.clone(), "default")
        .patch(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"containers": [{"name": "main", "image": "x", "resources": {"limits": {"nvidia.com/mig-7g.80gb": "2"}}}]}})),
        )
        .await
        .unwrap();
    let (r1, _, _, bound) = c.cycle().await.unwrap();
    assert_eq!(bound, ["default/z-old"]);
    assert_eq!(r1.unassigned, ["default/a-new"]);
    assert_eq!(r1.invalid, ["default/bad"]);
    let bad = pod(&c, "bad").await;
    let msg = &bad.metadata.annotations.unwrap()[ERROR_ANNOTATION];
    assert!(msg.contains("one slice per pod"), "{msg}");
    assert!(bad
        .spec
        .unwrap()
        .scheduling_gates
        .unwrap()
        .iter()
        .any(|g| g.name == GATE));
}

/// Poll `f` until it holds (bounded): waiting for a condition, not for a time.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_controller_leads_and_acts_on_watch_events() {
    let mut c = SimCluster::new(1, "h100-80gb:1", catalog()).await.unwrap();
    c.agents_round().await.unwrap();
    let ctl = c.controller.clone();
    let leases = lease_api(c.client.clone(), "tessera-system");
    let el = LeaderElector::new(leases.clone(), "tc", "replica-0", Duration::from_secs(15));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A resync of an hour: every round in this test is triggered by a watch event.
    let task = tokio::spawn(async move {
        ctl.run(el, Duration::from_secs(3600), async {
            let _ = stopped.await;
        })
        .await
    });
    c.submit("w", "nvidia.com/mig-1g.10gb", None).await.unwrap();
    let client = c.client.clone();
    eventually("the pod is earmarked", || {
        let client = client.clone();
        async move {
            let p = Api::<Pod>::namespaced(client, "default")
                .get("w")
                .await
                .unwrap();
            Earmark::of(&p).is_some()
        }
    })
    .await;
    c.agents_round().await.unwrap(); // the node's status change wakes the controller
    eventually("the gate is removed", || {
        let client = client.clone();
        async move {
            let p = Api::<Pod>::namespaced(client, "default")
                .get("w")
                .await
                .unwrap();
            !is_gated(&p)
        }
    })
    .await;
    let lease = leases.get("tc").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("replica-0")
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_candidates_racing_for_an_expired_lease_give_one_leader() {
    let srv = tessera_k8s::fake::FakeApiServer::start().await.unwrap();
    let leases: Api<Lease> = lease_api(srv.client(), "tessera-system");
    let old = LeaderElector::new(leases.clone(), "l", "old", Duration::from_secs(15));
    assert!(matches!(
        old.try_acquire_or_renew(t(0)).await.unwrap(),
        Leadership::Leader { .. }
    ));
    let a = LeaderElector::new(leases.clone(), "l", "a", Duration::from_secs(15));
    let b = LeaderElector::new(leases.clone(), "l", "b", Duration::from_secs(15));
    srv.clear_requests();
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(t(60)), b.try_acquire_or_renew(t(60)));
    let leaders = [ra.unwrap(), rb.unwrap()]
        .iter()
        .filter(|l| matches!(l, Leadership::Leader { .. }))
        .count();
    assert_eq!(leaders, 1);
    // Every takeover write is a replace carrying the resourceVersion it read.
    for r in srv.requests().iter().filter(|r| r.method != "GET") {
        assert_eq!(r.method, "PUT");
        assert!(r.body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string());
    }
    let holder = leases
        .get("l")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(holder == "a" || holder == "b");
}
