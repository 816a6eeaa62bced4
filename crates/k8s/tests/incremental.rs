//! The controller's incremental planner state: a round that places one waiting MIG pod with
//! the state writes exactly what the full plan writes (the same sequence of rounds run both
//! ways on two identical simulated clusters), and the incremental path is really taken.

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use tessera_k8s::demo::SimCluster;
use tessera_k8s::fake::RecordedRequest;
use tessera_k8s::TesseraNode;
use tessera_model::Catalog;

const KINDS: [&str; 7] = [
    "nvidia.com/mig-1g.10gb",
    "nvidia.com/mig-2g.20gb",
    "nvidia.com/mig-3g.40gb",
    "nvidia.com/mig-4g.40gb",
    "nvidia.com/mig-7g.80gb",
    "nvidia.com/mig-1g.20gb",
    "nvidia.com/mig-1g.10gb+me",
];

#[derive(Debug, Clone)]
enum Step {
    /// Submit one pod of `KINDS[k]`.
    Submit(usize),
    /// Finish the `i`-th bound pod (modulo how many run).
    Finish(usize),
    /// Controller, agents, controller, binder.
    Cycle,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..KINDS.len() - 1).prop_map(Step::Submit),
        2 => (0..8usize).prop_map(Step::Finish),
        4 => Just(Step::Cycle),
    ]
}

async fn cluster(full: bool) -> SimCluster {
    let mut c = SimCluster::new(2, "h100-80gb:2", Catalog::builtin().clone())
        .await
        .unwrap();
    c.controller = c.controller.clone().with_full_planning(full);
    // Every pod gets the same creation time: the order is by name, on both clusters.
    c.server
        .set_clock(Some(Timestamp::from_second(1_767_225_600).unwrap()));
    c.agents_round().await.unwrap();
    c
}

/// The controller's writes (its field manager's PATCHes), method, path and body.
fn controller_writes(c: &SimCluster) -> Vec<(String, String, Option<serde_json::Value>)> {
    c.server
        .requests()
        .into_iter()
        .filter(|r: &RecordedRequest| {
            r.method == "PATCH" && r.query.contains("fieldManager=tessera-controller")
        })
        .map(|r| (r.method, r.path, r.body))
        .collect()
}

async fn specs(c: &SimCluster) -> Vec<(Option<String>, serde_json::Value)> {
    let mut nodes: Vec<TesseraNode> = c.nodes().await.unwrap();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    nodes
        .into_iter()
        .map(|n| (n.metadata.name, serde_json::to_value(&n.spec).unwrap()))
        .collect()
}

/// Run `steps` on an incremental and a full-planning cluster; assert identical reports and
/// writes after every cycle. Returns how many pods the incremental controller placed with its
/// state.
async fn both_ways(steps: &[Step]) -> usize {
    let mut inc = cluster(false).await;
    let mut full = cluster(true).await;
    let mut n = 0;
    let mut bound: Vec<String> = Vec::new();
    let mut incremental = 0;
    for s in steps {
        match s {
            Step::Submit(k) => {
                for c in [&inc, &full] {
                    c.submit(&format!("p{n:02}"), KINDS[*k], None)
                        .await
                        .unwrap();
                }
                n += 1;
            }
            Step::Finish(i) if !bound.is_empty() => {
                let key = bound.remove(i % bound.len());
                inc.finish(&key).await.unwrap();
                full.finish(&key).await.unwrap();
            }
            Step::Finish(_) => {}
            Step::Cycle => {
                let (mut a1, a_ops, mut a2, a_bound) = inc.cycle().await.unwrap();
                let (b1, b_ops, b2, b_bound) = full.cycle().await.unwrap();
                assert_eq!(b1.planned_incrementally + b2.planned_incrementally, 0);
                incremental += a1.planned_incrementally + a2.planned_incrementally;
                a1.planned_incrementally = 0;
                a2.planned_incrementally = 0;
                assert_eq!((&a1, a_ops, &a2), (&b1, b_ops, &b2), "after {s:?}");
                assert_eq!(a_bound, b_bound);
                bound.extend(a_bound);
                assert_eq!(controller_writes(&inc), controller_writes(&full));
                assert_eq!(specs(&inc).await, specs(&full).await);
            }
        }
    }
    incremental
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Arrivals one per round, departures that leave idle instances to reuse, a profile that
/// needs idle instances destroyed, one that does not fit (the state finds no candidate and
/// the full plan decides), and a batch of two (always the full plan): the same writes both
/// ways, and the single arrivals were placed by the state.
#[test]
fn scripted_rounds_write_the_same_and_take_the_incremental_path() {
    use Step::*;
    let steps = [
        Submit(2), // 3g.40gb
        Cycle,
        Submit(0), // 1g.10gb
        Cycle,
        Submit(1), // 2g.20gb
        Cycle,
        Finish(1),
        Cycle,
        Submit(0), // reuses or packs next to the idle instance
        Cycle,
        Submit(4), // 7g.80gb
        Cycle,
        Submit(4),
        Submit(4), // a batch, and more than fits
        Cycle,
        Finish(0),
        Finish(0),
        Cycle,
        Submit(3), // 4g.40gb
        Cycle,
    ];
    let incremental = run(both_ways(&steps));
    assert!(
        incremental >= 5,
        "only {incremental} pods were placed by the incremental state"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// Any sequence of arrivals, departures and rounds: the incremental controller writes
    /// exactly what the full-planning one writes.
    #[test]
    fn incremental_and_full_controllers_write_the_same(steps in proptest::collection::vec(step(), 5..30)) {
        run(both_ways(&steps));
    }
}
