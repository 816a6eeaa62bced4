//! Fractional mode on slices of the real trace (`data/traces/alibaba-gpu-v2023`): `tessera`
//! against `fgd` seed by seed, and byte-identical repeats.

use std::path::Path;

use tessera_sim::frac_report::run_fractional;
use tessera_sim::fractional::{run, FracContext, Policy};
use tessera_sim::Trace;

fn ctx(fraction: f64) -> FracContext {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/traces/alibaba-gpu-v2023");
    FracContext::new(&Trace::load(&dir).unwrap().sample_nodes(fraction)).unwrap()
}

#[test]
fn tessera_leaves_less_unallocated_than_fgd_in_every_seed_of_a_slice() {
    // A fifth of the nodes (every node shape keeps its share) and the whole pod list.
    let c = ctx(0.2);
    for seed in [42, 43, 44] {
        let t = run(&c, Policy::Tessera, seed).at(100).allocated_pct;
        let f = run(&c, Policy::Fgd, seed).at(100).allocated_pct;
        assert!(
            t > f,
            "seed {seed}: tessera {t:.3} % allocated, fgd {f:.3} %"
        );
    }
}

#[test]
fn the_tessera_report_repeats_byte_for_byte() {
    let c = ctx(0.1);
    let report = || {
        let r = run_fractional(
            &c,
            "openb_pod_list_default.csv",
            &[Policy::Tessera],
            &[7, 8],
            2,
        );
        serde_json::to_string(&r).unwrap()
    };
    let first = report();
    assert_eq!(first, report());
    assert!(first.contains("\"policy\":\"tessera\""));
}
