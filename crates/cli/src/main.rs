//! `tessera`: carve GPUs into right-sized slices and place workloads on them.
//!
//! Each subcommand lives in `cmd/<name>.rs` and follows four steps: parse (clap), resolve
//! (catalog, files, backends), run (library calls), render (`output`, `render`). This file only
//! dispatches and turns errors into exit codes: 0 done, 1 a valid request that cannot be met or
//! a failure while running (the daemon unreachable, a backend or database error), 2 bad input
//! (see `CliError::exit_code` and `docs/cli.md`).

mod backend;
mod cmd;
mod output;
mod render;
mod size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::{CliError, Ctx, Format};

/// Share GPUs by carving them into right-sized MIG, MPS and time-slice slices.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, propagate_version = true)]
struct Cli {
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Extra catalog file(s) adding or overriding GPU models (same format as the built-in one).
    #[arg(long = "catalog", global = true, value_name = "FILE")]
    catalog: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the GPU models of the catalog.
    Gpus(cmd::gpus::Args),
    /// Show a model's GPU-instance profiles and their placements (like `nvidia-smi mig -lgip/-lgipp`).
    Profiles(cmd::profiles::Args),
    /// Enumerate the valid MIG layouts of a model.
    Layouts(cmd::layouts::Args),
    /// Check a MIG layout (`PROFILE@START ...`) against the model's rules.
    Check(cmd::check::Args),
    /// Plan slice layouts and placements for pending requests on a cluster (no changes made).
    Plan(cmd::plan::Args),
    /// Catalog tools: import a new model from nvidia-smi output, print the built-in catalog.
    #[command(subcommand)]
    Catalog(cmd::catalog::CatalogCmd),
    /// A simulated machine of MIG GPUs in a state file, for `--backend sim:STATE`.
    #[command(subcommand, name = "sim-gpu")]
    SimGpu(cmd::sim_gpu::SimGpuCmd),
    /// The node agent: GPU status, reconcile MIG layouts, MIG mode.
    #[command(subcommand)]
    Agent(cmd::agent::AgentCmd),
    /// Run the daemon that queues slice requests, re-partitions GPUs and leases slices.
    Serve(cmd::serve::Args),
    /// Wait for a GPU slice, run a command in it, give the slice back when it ends.
    Run(cmd::run::Args),
    /// Your requests and leases (root: everyone's).
    Ps(cmd::ps::Args),
    /// Every GPU of the daemon with its layout and who holds what.
    Status(cmd::status::Args),
    /// Cancel a request (a leased one: stop its command and free the slice).
    Cancel(cmd::cancel::Args),
    /// Stop new leases on a GPU and empty it once its leases end (root).
    Drain(cmd::drain::Args),
    /// The daemon in-process on a simulated fleet with a scripted mix of users and requests.
    Demo(cmd::demo::Args),
    /// Benchmarks: what each GPU sharing mode gives each tenant (`bench sharing`), planner
    /// speed (`bench plan`) and quality against the optimum (`bench quality`).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Replay a GPU cluster trace under each slicing policy (saturate or replay mode).
    Sim(cmd::sim::Args),
    /// Check, read-only, what this machine offers tessera: driver, GPUs, MIG, MPS, CUDA
    /// libraries, cgroups, the daemon; each line ok / warn / fail with the fix (exit 1 on a
    /// failure, e.g. no GPU).
    Doctor(cmd::doctor::Args),
    /// Hidden alias of `tessera k8s node`.
    #[command(name = "k8s-node", hide = true)]
    K8sNode(cmd::k8s_node::Args),
    /// Kubernetes, cluster side: the TesseraNode CRD, the controller, an in-process demo cluster.
    #[command(subcommand)]
    K8s(cmd::k8s::K8sCmd),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(cmd::completion::Args),
    /// Print the manual page (roff), or write one per command into a directory.
    Man(cmd::man::Args),
    /// NVIDIA vGPUs for VMs on a KVM/Proxmox host (time-sliced and MIG-backed), on the twin by
    /// default; AMD Instinct partition modes.
    Vgpu(cmd::vgpu::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(hint) = missing_double_dash(&e, &std::env::args().collect::<Vec<_>>()) {
                eprintln!("error: {hint}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    output::set_table_style(cli.output);
    let result = output::load_catalog(&cli.catalog).and_then(|catalog| {
        let ctx = Ctx {
            catalog,
            output: cli.output,
        };
        run(&cli.command, &ctx)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            e.exit_code()
        }
    }
}

/// `tessera run --mem 12GiB python train.py`: clap sees `python` as an unexpected argument.
/// Say to put `--` before the command, with the command line fixed.
fn missing_double_dash(e: &clap::Error, argv: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument || argv.iter().any(|a| a == "--") {
        return None;
    }
    let run_at = argv.iter().skip(1).position(|a| a == "run")? + 1;
    let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    if bad.starts_with('-') {
        return None;
    }
    let at = argv.iter().skip(run_at + 1).position(|a| a == bad)? + run_at + 1;
    let mut fixed: Vec<&str> = vec!["tessera"];
    fixed.extend(argv[1..at].iter().map(String::as_str));
    fixed.push("--");
    fixed.extend(argv[at..].iter().map(String::as_str));
    Some(format!(
        "`{bad}` looks like the start of the command to run; put `--` before it:\n  {}",
        output::escape_cell(&fixed.join(" "))
    ))
}

fn run(command: &Command, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match command {
        Command::Gpus(a) => cmd::gpus::run(a, ctx),
        Command::Profiles(a) => cmd::profiles::run(a, ctx),
        Command::Layouts(a) => cmd::layouts::run(a, ctx),
        Command::Check(a) => cmd::check::run(a, ctx),
        Command::Plan(a) => cmd::plan::run(a, ctx),
        Command::Catalog(c) => cmd::catalog::run(c, ctx),
        Command::SimGpu(c) => cmd::sim_gpu::run(c, ctx),
        Command::Agent(c) => cmd::agent::run(c, ctx),
        Command::Bench(c) => cmd::bench::run(c, ctx),
        Command::Sim(a) => cmd::sim::run(a, ctx),
        Command::K8sNode(a) => cmd::k8s_node::run(a, ctx),
        Command::Serve(a) => cmd::serve::run(a, ctx),
        Command::Run(a) => cmd::run::run(a, ctx),
        Command::Ps(a) => cmd::ps::run(a, ctx),
        Command::Status(a) => cmd::status::run(a, ctx),
        Command::Cancel(a) => cmd::cancel::run(a, ctx),
        Command::Drain(a) => cmd::drain::run(a, ctx),
        Command::Demo(a) => cmd::demo::run(a, ctx),
        Command::Doctor(a) => cmd::doctor::run(a, ctx),
        Command::K8s(c) => cmd::k8s::run(c, ctx),
        Command::Completion(a) => cmd::completion::run(a, ctx),
        Command::Man(a) => cmd::man::run(a, ctx),
        Command::Vgpu(a) => cmd::vgpu::run(a, ctx),
    }
}
