use tessera_planner::*;
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat").unwrap().split_whitespace().next().unwrap().parse().unwrap()
}
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let pol: Policy = a.get(1).map(|s| s.parse().unwrap()).unwrap_or(Policy::Tessera);
    let reps: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(20);
    let pending: usize = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(10000);
    let nodes: usize = a.get(4).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let c = tessera_model::Catalog::builtin();
    let (cl, rq) = gen::bench_input(c, &gen::BenchSpec { nodes, gpus_per_node: 8, pending, seed: 1 });
    let t0 = std::time::Instant::now();
    let c0 = cpu_ns();
    let mut s = 0;
    let mut pr = 0;
    let mut min = f64::MAX;
    for _ in 0..reps { let t = std::time::Instant::now(); let p = plan(c, &cl, &rq, &PlanOptions::with_policy(pol)).unwrap(); min = min.min(t.elapsed().as_secs_f64()*1e3); s = p.stats.served; pr = p.stats.served_priority; }
    println!("{pol}: min {min:.2} ms, wall {:.2} ms/plan cpu {:.2} ms/plan served {s} prio {pr}", t0.elapsed().as_secs_f64() * 1e3 / reps as f64, (cpu_ns() - c0) as f64 / 1e6 / reps as f64);
}
