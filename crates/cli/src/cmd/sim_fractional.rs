//! `tessera sim --sharing fractional`: the FGD paper's GPU-sharing model (fractions of the
//! trace's own GPUs), its six baselines and tessera, under the saturate protocol.

use std::process::ExitCode;
use std::time::Instant;

use tessera_sim::frac_report::{run_fractional, FracReport};
use tessera_sim::fractional::{FracContext, Policy};
use tessera_sim::hybrid::{run_hybrid, HybridReport};
use tessera_sim::{output, Mapping, Trace};

use super::sim::{parse_seeds, Args, Mode, Sharing};
use crate::output::{emit, table, CliError, Ctx};

/// Run fractional mode.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if args.mode != Mode::Saturate {
        return Err(CliError::Usage(
            "--sharing fractional runs the saturate protocol only; drop --mode replay".into(),
        ));
    }
    let mut policies = Vec::new();
    if args.policies.is_empty() || args.sharing == Sharing::Hybrid {
        policies.extend(Policy::ALL);
    }
    for p in args
        .policies
        .iter()
        .filter(|_| args.sharing != Sharing::Hybrid)
    {
        let p: Policy = p
            .parse()
            .map_err(|e: tessera_sim::fractional::UnknownPolicy| CliError::Usage(e.to_string()))?;
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    if !(args.node_fraction > 0.0 && args.node_fraction <= 1.0) {
        return Err(CliError::Usage(format!(
            "--node-fraction {} must be above 0 and at most 1",
            args.node_fraction
        )));
    }
    let seeds = parse_seeds(&args.seeds)?;
    let threads = args
        .threads
        .unwrap_or_else(tessera_sim::default_threads)
        .max(1);
    let trace = Trace::load_with(&args.trace, &args.pod_list)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .truncate(args.max_nodes, args.max_pods)
        .sample_nodes(args.node_fraction);
    let sim = FracContext::new(&trace).map_err(|e| CliError::Usage(e.to_string()))?;
    let started = Instant::now();
    if args.sharing == Sharing::Hybrid {
        if !(0.0..=1.0).contains(&args.isolation_share) {
            return Err(CliError::Usage(format!(
                "--isolation-share {} must be between 0 and 1",
                args.isolation_share
            )));
        }
        if !args.policies.is_empty() {
            return Err(CliError::Usage(
                "--sharing hybrid compares tessera, mig-only and mps-only; drop --policy".into(),
            ));
        }
        let model = ctx.model(&args.gpu_model)?;
        let mapping = Mapping::new(model).map_err(|e| CliError::Usage(e.to_string()))?;
        let report = run_hybrid(&sim, &mapping, args.isolation_share, &seeds, threads);
        if let Some(dir) = &args.out {
            let files =
                output::write_hybrid(&report, dir).map_err(|e| CliError::Other(e.to_string()))?;
            eprintln!("wrote {} files to {}", files.len(), dir.display());
        }
        emit(ctx.output, &report, || hybrid_table(&report))?;
        eprintln!(
            "simulated in {:.1} s on {threads} thread(s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let report = run_fractional(&sim, &args.pod_list, &policies, &seeds, threads);
    if let Some(dir) = &args.out {
        let files =
            output::write_fractional(&report, dir).map_err(|e| CliError::Other(e.to_string()))?;
        eprintln!("wrote {} files to {}", files.len(), dir.display());
    }
    emit(ctx.output, &report, || fractional_table(&report))?;
    eprintln!(
        "simulated in {:.1} s on {threads} thread(s)",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn fractional_table(r: &FracReport) -> String {
    let mut t = table(&[
        "POLICY",
        "ALLOCATED@100%",
        "PAPER@100%",
        "UNALLOCATED@100%",
        "SD",
        "VS FGD",
        "ALLOCATED@130%",
        "PAPER@130%",
        "FAILED@100%",
    ]);
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
    for p in &r.policies {
        t.add_row(vec![
            p.policy.to_string(),
            format!("{:.2} %", p.allocated_pct_at_100),
            opt(p.paper_allocated_pct_at_100, " %"),
            format!("{:.2} %", p.unallocated_pct_at_100),
            format!("{:.2}", p.allocated_pct_at_100_sd),
            match (p.unallocated_vs_fgd_pct, p.seeds_better_than_fgd) {
                (Some(v), Some(b)) if p.policy != Policy::Fgd => {
                    format!("{v:+.1} % ({b}/{} seeds better)", r.seeds.len())
                }
                _ => "-".into(),
            },
            format!("{:.2} %", p.allocated_pct_at_130),
            opt(p.paper_allocated_pct_at_130, " %"),
            format!("{:.1}", p.failed_pods),
        ]);
    }
    t.no_wrap();
    let s = &r.setup;
    let models: Vec<String> = s
        .gpu_models
        .iter()
        .map(|(m, n)| format!("{n} {m}"))
        .collect();
    format!(
        "fractional sharing (FGD model): {} GPUs on {} nodes ({}); {} pods in {} ({} typical kinds)\n\
saturate mode, mean over {} seed(s); shares are % of the cluster's GPU capacity\n{t}\n",
        s.gpus,
        s.nodes,
        models.join(", "),
        s.trace_pods,
        s.pod_list,
        s.typical_pods,
        r.seeds.len()
    )
}

fn hybrid_table(r: &HybridReport) -> String {
    let mut t = table(&[
        "POLICY",
        "ALLOCATED@100%",
        "UNALLOCATED@100%",
        "SD",
        "ALLOCATED@130%",
        "FAILED@100%",
        "MIG GPUS",
        "MPS GPUS",
    ]);
    for p in &r.policies {
        t.add_row(vec![
            p.policy.to_string(),
            format!("{:.2} %", p.allocated_pct_at_100),
            format!("{:.2} %", p.unallocated_pct_at_100),
            format!("{:.2}", p.allocated_pct_at_100_sd),
            format!("{:.2} %", p.allocated_pct_at_130),
            format!("{:.1}", p.failed_pods),
            format!("{:.0}", p.mig_gpus),
            format!("{:.0}", p.mps_gpus),
        ]);
    }
    t.no_wrap();
    format!(
        "hybrid sharing: MIG ({}) for the {:.0} % of shared pods that need isolation, MPS for the rest; \
mean over {} seed(s); shares are % of GPU capacity\n{t}\n",
        r.gpu_model,
        r.isolation_share * 100.0,
        r.seeds.len()
    )
}
