use tessera_planner::*;
fn main() {
    let seed: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
    let c = tessera_model::Catalog::builtin();
    let nodes = 1 + (seed % 20) as usize; let pending = 5 + (seed * 7 % 120) as usize;
    let (cl, rq) = gen::bench_input(c, &gen::BenchSpec { nodes, gpus_per_node: 1 + (seed % 8) as usize, pending, seed });
    for g in cl.nodes.iter().flat_map(|n| n.gpus.iter().map(move |g| (n.name.clone(), g))) {
        println!("{} {} {:?} {}", g.0, g.1.model, g.1.mode, g.1.instances.iter().map(|i| format!("{}@{}{}", i.profile, i.start, if i.used {"*"} else {""})).collect::<Vec<_>>().join(" "));
    }
    let mut by: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for r in &rq { if let RequestKind::Mig(p) = &r.kind { by.entry(p.clone()).or_default().push(r.priority); } }
    println!("mig demand: {:?}", by);
    for pol in [Policy::Tessera, Policy::FirstFit] {
        let p = plan(c, &cl, &rq, &PlanOptions::with_policy(pol)).unwrap();
        println!("== {pol} {:?}", p.stats);
        let mut a: Vec<String> = p.assignments.iter().filter_map(|a| match &a.slice { AssignedSlice::Mig{profile, start} => Some(format!("{}:{}@{} p{}", a.node, profile, start, rq.iter().find(|r| r.id == a.request).unwrap().priority)), AssignedSlice::Mps{..} => Some(format!("mps p{}", rq.iter().find(|r| r.id == a.request).unwrap().priority)), _ => Some(format!("ts p{}", rq.iter().find(|r| r.id == a.request).unwrap().priority)) }).collect();
        a.sort(); println!("{}", a.join(", "));
        for g in p.changed_gpus() { println!("  {} {}: create {:?} destroy {:?}", g.node, g.gpu, g.create.iter().map(|i| format!("{}@{}", i.profile, i.start)).collect::<Vec<_>>(), g.destroy.iter().map(|i| format!("{}@{}", i.profile, i.start)).collect::<Vec<_>>()); }
    }
}
