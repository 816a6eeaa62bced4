//! Criterion benchmarks of the planner's hot paths: a full plan at scale per policy, the
//! frequent one-request plan on a large cluster (full and `only_changed` output), a
//! medium plan, the exact search on small instances, and the input resolution alone (a plan
//! with no requests). Run with `cargo bench -p tessera-planner`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tessera_model::Catalog;
use tessera_planner::gen::{bench_input, small_instance, BenchSpec};
use tessera_planner::{plan, PlanOptions, Policy};

fn input(
    nodes: usize,
    gpus_per_node: usize,
    pending: usize,
) -> (
    tessera_planner::ClusterSpec,
    Vec<tessera_planner::RequestSpec>,
) {
    bench_input(
        Catalog::builtin(),
        &BenchSpec {
            nodes,
            gpus_per_node,
            pending,
            seed: 1,
        },
    )
}

/// Each heuristic policy on one generated cluster, in a group named after its size.
fn per_policy(
    c: &mut Criterion,
    nodes: usize,
    gpus_per_node: usize,
    pending: usize,
    samples: usize,
) {
    let cat = Catalog::builtin();
    let (cluster, requests) = input(nodes, gpus_per_node, pending);
    let mut g = c.benchmark_group(group_name(nodes, gpus_per_node, pending));
    g.sample_size(samples);
    for policy in [Policy::Tessera, Policy::FirstFit, Policy::Nos] {
        let opts = PlanOptions::with_policy(policy);
        g.bench_function(policy.as_str(), |b| {
            b.iter(|| black_box(plan(cat, &cluster, &requests, &opts).unwrap()))
        });
    }
    g.finish();
}

/// `plan NODESxGPUS GPUs, PENDING pending`: the criterion group of a generated input.
fn group_name(nodes: usize, gpus_per_node: usize, pending: usize) -> String {
    format!("plan {nodes}x{gpus_per_node} GPUs, {pending} pending")
}

fn at_scale(c: &mut Criterion) {
    per_policy(c, 1000, 8, 10_000, 10);
}

fn frequent(c: &mut Criterion) {
    let cat = Catalog::builtin();
    let (cluster, requests) = input(750, 8, 1);
    let mut g = c.benchmark_group(group_name(750, 8, 1));
    g.sample_size(20);
    let full = PlanOptions::default();
    g.bench_function("tessera", |b| {
        b.iter(|| black_box(plan(cat, &cluster, &requests, &full).unwrap()))
    });
    let short = PlanOptions {
        only_changed: true,
        ..PlanOptions::default()
    };
    g.bench_function("tessera only_changed", |b| {
        b.iter(|| black_box(plan(cat, &cluster, &requests, &short).unwrap()))
    });
    g.bench_function("resolve only (no requests)", |b| {
        b.iter(|| black_box(plan(cat, &cluster, &[], &short).unwrap()))
    });
    g.finish();
}

fn medium(c: &mut Criterion) {
    per_policy(c, 100, 8, 1000, 20);
}

fn small(c: &mut Criterion) {
    let cat = Catalog::builtin();
    let instances: Vec<_> = (0..50).map(|s| small_instance(cat, s)).collect();
    let mut g = c.benchmark_group("50 small instances");
    for policy in [Policy::Tessera, Policy::Exact] {
        let opts = PlanOptions::with_policy(policy);
        g.bench_function(policy.as_str(), |b| {
            b.iter(|| {
                for (cluster, requests) in &instances {
                    black_box(plan(cat, cluster, requests, &opts).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, at_scale, frequent, medium, small);
criterion_main!(benches);
