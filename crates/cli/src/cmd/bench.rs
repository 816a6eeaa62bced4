//! `tessera bench`: measurements. Each subcommand is its own module: `sharing` in
//! `bench_sharing.rs` (plus the hidden `tenant` entry point it re-executes), `plan` and
//! `quality` in `bench_plan.rs`, `incremental` in `bench_incremental.rs`.

use std::process::ExitCode;

use clap::Subcommand;

use crate::output::{CliError, Ctx};

/// Subcommands of `tessera bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Planning time and result of one policy on a generated cluster (`--nodes`,
    /// `--gpus-per-node`, `--pending`, `--seed`, `--policy`, `--runs`).
    Plan(super::bench_plan::PlanArgs),
    /// The incremental planner on a generated cluster: state build time, per-arrival and
    /// per-departure times, and the full plan of one arrival for comparison.
    Incremental(super::bench_incremental::Args),
    /// Each planning policy against the exact optimum on random small instances.
    Quality(super::bench_plan::QualityArgs),
    /// Measure what time-slicing, MPS and MIG give each tenant of a GPU, idle and loaded
    /// (PCIe and memory bandwidth, small and large TF32 GEMM).
    Sharing(super::bench_sharing::Args),
    /// Internal: one tenant process of `bench sharing` (started by it, not by people).
    #[command(hide = true)]
    Tenant,
}

/// Run a `bench` subcommand.
pub fn run(cmd: &BenchCmd, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match cmd {
        BenchCmd::Plan(a) => super::bench_plan::run_plan(a, ctx),
        BenchCmd::Incremental(a) => super::bench_incremental::run(a, ctx),
        BenchCmd::Quality(a) => super::bench_plan::run_quality(a, ctx),
        BenchCmd::Sharing(a) => super::bench_sharing::run(a, ctx),
        BenchCmd::Tenant => super::bench_sharing::run_tenant(),
    }
}
