//! `tessera k8s demo` end to end on a small cluster and on the default one.

use tessera_k8s::demo::{run_demo, DemoOptions};
use tessera_model::Catalog;

#[tokio::test]
async fn default_demo_binds_every_pod_that_fits_and_destroys_nothing_busy() {
    let s = run_demo(&DemoOptions::default(), Catalog::builtin().clone())
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&s).unwrap());
    assert_eq!(s.nodes, 4);
    assert_eq!(s.gpus, 32);
    assert_eq!(s.busy_destroyed, 0);
    assert_eq!(s.busy_destroy_attempts, 0);
    assert_eq!(s.overtaken, 0);
    // Only the A100-only pod never fits an H100.
    assert_eq!(s.unschedulable, 1);
    assert_eq!(s.bound, s.pods - 1);
    assert!(s.repartitions > 0);
    // Through the kubelet protocols: every bound pod was admitted with one Allocate on its
    // node's device plugin; each resource registered once per node, and the many layout
    // changes reached the kubelets on the open ListAndWatch streams.
    assert_eq!(s.allocate_calls, s.bound);
    assert!(s.kubelet_registrations >= s.nodes, "{s:?}");
    assert_eq!(s.plugin_reregistrations, 0);
    assert!(s.list_and_watch_updates > s.kubelet_registrations, "{s:?}");
}
