use tessera_planner::*;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let nodes: usize = a.get(1).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let gpn: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(8);
    let pending: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(10000);
    let pols: Vec<Policy> = a.get(4).map(|s| s.split(',').map(|x| x.parse().unwrap()).collect()).unwrap_or(vec![Policy::Tessera, Policy::FirstFit, Policy::Nos]);
    let c = tessera_model::Catalog::builtin();
    let (cl, rq) = gen::bench_input(c, &gen::BenchSpec { nodes, gpus_per_node: gpn, pending, seed: 1 });
    for pol in pols {
        let opts = PlanOptions::with_policy(pol);
        let mut times = vec![];
        let mut last = None;
        for _ in 0..3 {
            let t0 = std::time::Instant::now();
            let p = plan(c, &cl, &rq, &opts).unwrap();
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            last = Some(p);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p = last.unwrap();
        let obj = check_plan(c, &cl, &rq, &opts, &p).unwrap();
        println!("{pol}: median {:.1} ms min {:.1} served {} prio {} ops {} free {}", times[1], times[0], obj.served, obj.served_priority, obj.operations, obj.free_score);
    }
}
