//! Invariants of every policy on random inputs: guarantees hold (checked independently by
//! `check_plan`: busy instances kept, layouts valid, assignments on free slices of the right
//! profile, limits respected), plans are deterministic, `exact` is never beaten, and tessera
//! never serves less priority than first-fit.

use proptest::prelude::*;
use tessera_model::Catalog;
use tessera_planner::gen::{bench_input, small_instance, BenchSpec};
use tessera_planner::quality::quality;
use tessera_planner::{check_plan, plan, ClusterSpec, Objective, PlanOptions, Policy, RequestSpec};

fn checked(c: &ClusterSpec, r: &[RequestSpec], policy: Policy) -> (String, Objective) {
    let cat = Catalog::builtin();
    let opts = PlanOptions::with_policy(policy);
    let p = plan(cat, c, r, &opts).unwrap();
    let obj = check_plan(cat, c, r, &opts, &p)
        .unwrap_or_else(|e| panic!("{policy} broke a guarantee: {e:#?}\n{}", p.to_json()));
    let again = plan(cat, c, r, &opts).unwrap();
    assert_eq!(p, again, "{policy} is not deterministic");
    (p.to_json(), obj)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn small_instances_keep_every_guarantee_and_exact_is_optimal(seed in any::<u64>()) {
        let (c, r) = small_instance(Catalog::builtin(), seed);
        let (_, exact) = checked(&c, &r, Policy::Exact);
        let mut got = Vec::new();
        for policy in [Policy::Tessera, Policy::Nos, Policy::FirstFit] {
            let (_, obj) = checked(&c, &r, policy);
            prop_assert!(!obj.better_than(&exact), "{policy} {obj:?} beats exact {exact:?}");
            got.push(obj);
        }
        prop_assert!(got[0].served_priority >= got[2].served_priority,
            "tessera {:?} below first-fit {:?}", got[0], got[2]);
    }

    #[test]
    fn larger_instances_keep_every_guarantee(
        seed in any::<u64>(),
        nodes in 1usize..10,
        gpus_per_node in 1usize..8,
        pending in 0usize..60,
    ) {
        let spec = BenchSpec { nodes, gpus_per_node, pending, seed };
        let (c, r) = bench_input(Catalog::builtin(), &spec);
        let (_, t) = checked(&c, &r, Policy::Tessera);
        let (_, _) = checked(&c, &r, Policy::Nos);
        let (_, f) = checked(&c, &r, Policy::FirstFit);
        prop_assert!(t.served_priority >= f.served_priority, "tessera {t:?} below first-fit {f:?}");
    }
}

#[test]
fn tessera_serves_at_least_99_percent_of_the_optimum() {
    let r = quality(Catalog::builtin(), 200, 20_240);
    assert_eq!(r.skipped, 0, "exact refused a small instance");
    let share = |p: Policy| r.policies.iter().find(|x| x.policy == p).unwrap();
    for row in &r.policies {
        assert_eq!(row.invalid_plans, 0, "{:?}", row);
    }
    let t = share(Policy::Tessera);
    assert!(t.share_of_optimum >= 0.99, "{t:?}");
    assert!(t.served_priority > share(Policy::Nos).served_priority);
    assert!(t.served_priority > share(Policy::FirstFit).served_priority);
    assert_eq!(share(Policy::Exact).share_of_optimum, 1.0);
}
