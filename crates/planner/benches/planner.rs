//! Criterion benchmarks of the planner's hot paths (placeholder until the real ones land).
fn main() {}
