fn main() {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(200);
    let seed: u64 = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let r = tessera_planner::quality::quality(tessera_model::Catalog::builtin(), n, seed);
    for t in &r.policies {
        println!("{}: share {:.5} optimal {} / {} ops {} invalid {}", t.policy, t.share_of_optimum, t.optimal_instances, n, t.operations, t.invalid_plans);
    }
}
