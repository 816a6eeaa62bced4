use tessera_planner::*;
fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(200);
    let seed: u64 = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let c = tessera_model::Catalog::builtin();
    let mut shown = 0;
    for k in 0..n {
        let (cl, rq) = gen::small_instance(c, seed + k);
        let e = plan(c, &cl, &rq, &PlanOptions::with_policy(Policy::Exact)).unwrap();
        let t = plan(c, &cl, &rq, &PlanOptions::with_policy(Policy::Tessera)).unwrap();
        if t.stats.served_priority < e.stats.served_priority && shown < 4 {
            shown += 1;
            println!("=== seed {} exact {:?} tessera {:?}", seed + k, e.stats, t.stats);
            println!("{}", serde_yaml_ng::to_string(&cl).unwrap());
            println!("{}", serde_json::to_string(&rq).unwrap());
            println!("exact: {}", serde_json::to_string(&e.assignments).unwrap());
            for g in e.changed_gpus() { println!("  exact {} {} layout {:?}", g.node, g.gpu, g.layout.iter().map(|i| format!("{}@{}", i.profile, i.start)).collect::<Vec<_>>()); }
            println!("tessera: {}", serde_json::to_string(&t.assignments).unwrap());
            for g in t.changed_gpus() { println!("  tess {} {} layout {:?}", g.node, g.gpu, g.layout.iter().map(|i| format!("{}@{}", i.profile, i.start)).collect::<Vec<_>>()); }
        }
    }
}
