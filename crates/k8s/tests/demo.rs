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
}
