use tessera_planner::*;
fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(2000);
    let c = tessera_model::Catalog::builtin();
    let mut worse_ff = 0; let mut worse_nos = 0; let mut exact_worse = 0;
    for seed in 0..n {
        let (cl, rq) = gen::small_instance(c, seed);
        let t = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::Tessera)).unwrap().1;
        let f = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::FirstFit)).unwrap().1;
        let no = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::Nos)).unwrap().1;
        let e = plan_with_objective(c, &cl, &rq, &PlanOptions::with_policy(Policy::Exact)).unwrap().1;
        if t.served_priority < f.served_priority { worse_ff += 1; println!("seed {seed}: tessera {} < ff {}", t.served_priority, f.served_priority); }
        if t.served_priority < no.served_priority { worse_nos += 1; }
        for o in [t, f, no] { if o.better_than(&e) { exact_worse += 1; println!("seed {seed}: exact {:?} worse than {:?}", e, o); } }
    }
    println!("tessera<ff {worse_ff}, tessera<nos {worse_nos}, exact beaten {exact_worse}");
}
