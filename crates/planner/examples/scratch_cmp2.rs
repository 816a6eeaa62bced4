use tessera_planner::*;
fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(300);
    let c = tessera_model::Catalog::builtin();
    let (mut wf, mut wn) = (0, 0);
    let (mut st, mut sf, mut sn) = (0u64, 0u64, 0u64);
    for seed in 0..n {
        let nodes = 1 + (seed % 20) as usize; let pending = 5 + (seed * 7 % 120) as usize;
        let (cl, rq) = gen::bench_input(c, &gen::BenchSpec { nodes, gpus_per_node: 1 + (seed % 8) as usize, pending, seed });
        let t = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::Tessera)).unwrap().1;
        let f = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::FirstFit)).unwrap().1;
        let no = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::Nos)).unwrap().1;
        st += t.served_priority; sf += f.served_priority; sn += no.served_priority;
        if t.served_priority < f.served_priority { wf += 1; println!("seed {seed} ({nodes} nodes, {pending} req): tessera {} < ff {}", t.served_priority, f.served_priority); }
        if t.served_priority < no.served_priority { wn += 1; println!("seed {seed}: tessera {} < nos {}", t.served_priority, no.served_priority); }
    }
    println!("tessera<ff {wf}, tessera<nos {wn}; totals tessera {st} ff {sf} nos {sn}");
}
