//! Property test over random pod scripts on a small simulated cluster: after every cycle no two
//! live pods hold the same slice, every bound pod's instance is alive with its UUID (no busy
//! instance destroyed, no destroy attempted), and every earmarked MIG slice lies in its node's
//! written layout.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use proptest::prelude::*;
use tessera_k8s::demo::SimCluster;
use tessera_k8s::pods::{is_finished, Earmark, EarmarkedSlice};
use tessera_k8s::TesseraNode;
use tessera_model::Catalog;

const KINDS: [&str; 6] = [
    "nvidia.com/mig-1g.10gb",
    "nvidia.com/mig-2g.20gb",
    "nvidia.com/mig-3g.40gb",
    "nvidia.com/mig-4g.40gb",
    "nvidia.com/mig-7g.80gb",
    "nvidia.com/mig-1g.20gb",
];

#[derive(Debug, Clone)]
enum Step {
    Submit(usize),
    Finish(usize),
    Cycle,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..KINDS.len()).prop_map(Step::Submit),
        1 => (0..8usize).prop_map(Step::Finish),
        3 => Just(Step::Cycle),
    ]
}

async fn check(c: &mut SimCluster) {
    let pods = Api::<Pod>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let nodes = Api::<TesseraNode>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let mut seen = BTreeSet::new();
    for p in pods.iter().filter(|p| !is_finished(p)) {
        let Some(m) = Earmark::of(p) else { continue };
        assert!(seen.insert(m.to_string()), "two pods hold {m}");
        if let EarmarkedSlice::Mig { profile, start } = &m.slice {
            let n = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(m.node.as_str()))
                .unwrap();
            let layout = n.spec.gpus.iter().find(|g| g.index == m.gpu).unwrap();
            assert!(
                layout
                    .instances
                    .iter()
                    .any(|i| &i.profile == profile && i.start == *start),
                "{m} is not in the node's layout"
            );
        }
    }
    assert_eq!(c.check_busy(), 0, "a busy instance was destroyed");
    assert_eq!(c.busy_destroy_attempts(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn slices_are_never_shared_or_destroyed_under_use(steps in proptest::collection::vec(step(), 5..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut c = SimCluster::new(2, "h100-80gb:1", Catalog::builtin().clone()).await.unwrap();
            c.agents_round().await.unwrap();
            let mut n = 0;
            let mut bound: Vec<String> = Vec::new();
            for s in steps {
                match s {
                    Step::Submit(k) => {
                        c.submit(&format!("p{n}"), KINDS[k], None).await.unwrap();
                        n += 1;
                    }
                    Step::Finish(i) if !bound.is_empty() => {
                        let key = bound.remove(i % bound.len());
                        c.finish(&key).await.unwrap();
                    }
                    Step::Finish(_) => {}
                    Step::Cycle => {
                        let (_, _, _, b) = c.cycle().await.unwrap();
                        bound.extend(b);
                    }
                }
                check(&mut c).await;
            }
        });
    }
}
