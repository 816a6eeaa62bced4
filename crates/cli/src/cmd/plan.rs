//! `tessera plan FILE` (one file with `nodes` and `requests`) or `tessera plan --cluster FILE
//! --requests FILE`: the best slice layout for what waits, without touching what runs, and why
//! each request left waiting waits. Exit 0 when every request is served, 1 when some must wait,
//! 2 on bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use tessera_model::{GpuModel, Placed};
use tessera_planner::{
    plan_explained, AssignedSlice, ClusterSpec, GpuMode, GpuPlan, InstanceRef, Plan, PlanDocument,
    PlanOptions, Policy, RequestsFile, Waiting,
};

use crate::output::{emit, read_file, table, CliError, Ctx};
use crate::render::draw_layout;

/// Arguments of `tessera plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One file with the cluster (`nodes`) and the pending requests (`requests`), YAML or JSON.
    #[arg(value_name = "FILE", conflicts_with = "cluster")]
    pub input: Option<PathBuf>,
    /// The cluster: nodes, GPUs, their mode and current slices (YAML or JSON); it may hold the
    /// `requests` too.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// The pending requests (YAML or JSON), when the cluster file does not hold them.
    #[arg(long, value_name = "FILE")]
    pub requests: Option<PathBuf>,
    /// Planning algorithm: tessera, nos, first-fit or exact.
    #[arg(long, default_value = "tessera", value_parser = parse_policy)]
    pub policy: Policy,
    /// MiB of each MPS GPU kept for the driver.
    #[arg(long, value_name = "MIB", default_value_t = PlanOptions::default().mps_reserve_mib)]
    pub mps_reserve_mib: u64,
    /// Factor on the 100 % SM budget of an MPS GPU.
    #[arg(long, value_name = "FACTOR", default_value_t = PlanOptions::default().mps_sm_oversubscription)]
    pub mps_sm_oversubscription: f64,
    /// Most MPS clients per GPU.
    #[arg(long, value_name = "N", default_value_t = PlanOptions::default().mps_max_clients)]
    pub mps_max_clients: u32,
    /// Replicas of a time-slice GPU that does not say.
    #[arg(long, value_name = "N", default_value_t = PlanOptions::default().timeslice_replicas)]
    pub timeslice_replicas: u32,
}

/// Parse a policy name for clap.
pub fn parse_policy(s: &str) -> Result<Policy, tessera_planner::UnknownPolicy> {
    s.parse()
}

/// The plan as printed: the planner's [`Plan`] and, only when something waits, why.
#[derive(Debug, Serialize)]
pub struct PlanOut<'a> {
    /// The plan, its fields at the top level.
    #[serde(flatten)]
    pub plan: &'a Plan,
    /// Why each unassigned request waits, in input order (absent when nothing waits).
    #[serde(skip_serializing_if = "<[Waiting]>::is_empty")]
    pub waiting: &'a [Waiting],
}

/// Read the cluster and the requests from one file or two.
fn read_input(args: &Args) -> Result<(ClusterSpec, Vec<tessera_planner::RequestSpec>), CliError> {
    let named = |path: &PathBuf, e: tessera_planner::PlanError| {
        CliError::Usage(format!("{}: {e}", path.display()))
    };
    let Some(path) = args.input.as_ref().or(args.cluster.as_ref()) else {
        return Err(CliError::Usage(
            "give the input: `tessera plan FILE` (nodes and requests in one file) or `--cluster FILE --requests FILE`".into(),
        ));
    };
    let doc = PlanDocument::from_str_any(&read_file(path)?).map_err(|e| named(path, e))?;
    let (cluster, inline) = doc.into_parts();
    let requests = match (inline, &args.requests) {
        (Some(list), None) => list,
        (None, Some(rpath)) => {
            RequestsFile::from_str_any(&read_file(rpath)?)
                .map_err(|e| named(rpath, e))?
                .requests
        }
        (Some(_), Some(rpath)) => {
            return Err(CliError::Usage(format!(
                "{} has a `requests` list and --requests {} gives another; drop one of them",
                path.display(),
                rpath.display()
            )))
        }
        (None, None) => {
            return Err(CliError::Usage(format!(
                "{} has no `requests` list; add `requests:` to it or give --requests FILE",
                path.display()
            )))
        }
    };
    Ok((cluster, requests))
}

/// Run the command.
pub fn run(args: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    let (cluster, requests) = read_input(args)?;
    let opts = PlanOptions {
        policy: args.policy,
        mps_reserve_mib: args.mps_reserve_mib,
        mps_sm_oversubscription: args.mps_sm_oversubscription,
        mps_max_clients: args.mps_max_clients,
        timeslice_replicas: args.timeslice_replicas,
        ..PlanOptions::default()
    };
    let (p, waiting) = plan_explained(&ctx.catalog, &cluster, &requests, &opts)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let out = PlanOut {
        plan: &p,
        waiting: &waiting,
    };
    emit(ctx.output, &out, || render(ctx, &cluster, &p, &waiting))?;
    Ok(if p.unassigned.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn placed(m: &GpuModel, list: &[InstanceRef]) -> Vec<Placed> {
    list.iter()
        .filter_map(|i| m.profile_named(&i.profile).map(|p| Placed::new(p, i.start)))
        .collect()
}

fn spec_list(list: &[InstanceRef]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|i| format!("{}@{}", i.profile, i.start))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan for people: each changed GPU before and after, the assignments, what waits and why.
pub fn render(ctx: &Ctx, cluster: &ClusterSpec, p: &Plan, waiting: &[Waiting]) -> String {
    let mut out = String::new();
    for g in &p.gpus {
        let Some(c) = &g.mode_change else { continue };
        match c.blocked {
            None => out.push_str(&format!(
                "{} GPU {} ({}): mode {} -> {}: {}\n",
                g.node, g.gpu, g.model, c.from, c.to, c.reason
            )),
            Some(b) => out.push_str(&format!(
                "{} GPU {} ({}): stays {}, not switched to {} ({b}): {}\n",
                g.node, g.gpu, g.model, c.from, c.to, c.reason
            )),
        }
    }
    if p.gpus.iter().any(|g| g.mode_change.is_some()) {
        out.push('\n');
    }
    for g in p.changed_gpus() {
        let Some(node) = cluster.nodes.iter().find(|n| n.name == g.node) else {
            continue;
        };
        let Some(spec) = node.gpus.get(g.gpu) else {
            continue;
        };
        let Ok(m) = ctx.catalog.lookup(&g.model) else {
            continue;
        };
        out.push_str(&render_gpu(m, spec, g, p));
        out.push('\n');
    }
    if !p.assignments.is_empty() {
        let mut t = table(&["REQUEST", "NODE", "GPU", "SLICE"]);
        for a in &p.assignments {
            let slice = match &a.slice {
                AssignedSlice::Mig { profile, start } => format!("MIG {profile}@{start}"),
                AssignedSlice::Mps {
                    memory_mib,
                    sm_percent,
                } => format!("MPS {memory_mib} MiB, {sm_percent} % SM"),
                AssignedSlice::Timeslice { .. } => "time-slice replica".into(),
            };
            t.add_row(vec![
                a.request.clone(),
                a.node.to_string(),
                a.gpu.to_string(),
                slice,
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    if !p.unassigned.is_empty() {
        out.push_str(&format!("waiting: {}\n", p.unassigned.join(", ")));
        for w in waiting {
            out.push_str(&format!("  {} ({}): {}\n", w.request, w.reason, w.detail));
        }
    }
    out.push_str(&format!(
        "policy {}: {} served (priority {}), {} waiting, {} operations\n",
        p.policy,
        p.stats.served,
        p.stats.served_priority,
        p.unassigned.len(),
        p.stats.operations
    ));
    out
}

fn render_gpu(m: &GpuModel, spec: &tessera_planner::GpuSpec, g: &GpuPlan, p: &Plan) -> String {
    let mut s = format!(
        "{} GPU {} ({}, {}):\n",
        g.node,
        g.gpu,
        g.model,
        GpuMode::Mig
    );
    let before: Vec<(Placed, String)> = spec
        .instances
        .iter()
        .filter_map(|i| {
            m.profile_named(&i.profile).map(|pi| {
                (
                    Placed::new(pi, i.start),
                    if i.used { "busy".into() } else { String::new() },
                )
            })
        })
        .collect();
    let who = |pl: Placed| -> String {
        let name = &m.profile(pl.profile).name;
        if let Some(a) = p.assignments.iter().find(|a| {
            a.node == g.node
                && a.gpu == g.gpu
                && matches!(&a.slice, AssignedSlice::Mig { profile, start }
                    if profile == name && *start == pl.start)
        }) {
            return a.request.clone();
        }
        match before.iter().find(|(b, _)| *b == pl) {
            Some((_, label)) => label.clone(),
            None => "new".into(),
        }
    };
    let after: Vec<(Placed, String)> = placed(m, &g.layout)
        .into_iter()
        .map(|pl| (pl, who(pl)))
        .collect();
    s.push_str("  before:\n");
    for line in draw_layout(m, &before).lines() {
        s.push_str(&format!("    {line}\n"));
    }
    s.push_str("  after:\n");
    for line in draw_layout(m, &after).lines() {
        s.push_str(&format!("    {line}\n"));
    }
    s.push_str(&format!(
        "  destroy: {}\n  create:  {}\n",
        spec_list(&g.destroy),
        spec_list(&g.create)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    /// With nothing waiting, the printed JSON and YAML are the plan's own serialization, byte
    /// for byte (what `tessera plan` printed before reasons existed).
    #[test]
    fn nothing_waiting_prints_the_plan_unchanged() {
        let cluster = ClusterSpec::from_str_any(include_str!(
            "../../../planner/tests/fixtures/example-cluster.yaml"
        ))
        .unwrap();
        let requests = RequestsFile::from_str_any(include_str!(
            "../../../planner/tests/fixtures/example-requests.yaml"
        ))
        .unwrap()
        .requests;
        let opts = PlanOptions::default();
        let (p, waiting) = plan_explained(Catalog::builtin(), &cluster, &requests, &opts).unwrap();
        assert!(waiting.is_empty());
        let out = PlanOut {
            plan: &p,
            waiting: &waiting,
        };
        assert_eq!(
            serde_json::to_string_pretty(&out).unwrap(),
            serde_json::to_string_pretty(&p).unwrap()
        );
        assert_eq!(
            serde_yaml_ng::to_string(&out).unwrap(),
            serde_yaml_ng::to_string(&p).unwrap()
        );
    }

    /// A `mode: auto` GPU's change is printed first, with its reason, planned or blocked.
    #[test]
    fn the_table_says_which_auto_gpu_changes_mode_and_why() {
        let doc = tessera_planner::PlanDocument::from_str_any(
            "nodes:
- name: a
  gpus:
  - {model: h100-80gb, mode: auto}
  - {model: a30-24gb, mode: auto, current: mps, clients: [{memory_mib: 1000, sm_percent: 10}]}
requests:
- {id: m1, mps: {memory_mib: 30000, sm_percent: 50}}
- {id: r1, mig: 1g.6gb}
",
        )
        .unwrap();
        let (cluster, requests) = doc.into_parts();
        let requests = requests.unwrap();
        let (p, waiting) = plan_explained(
            Catalog::builtin(),
            &cluster,
            &requests,
            &PlanOptions::default(),
        )
        .unwrap();
        let ctx = Ctx {
            catalog: Catalog::builtin().clone(),
            output: crate::output::Format::Table,
        };
        let text = render(&ctx, &cluster, &p, &waiting);
        assert!(
            text.starts_with(
                "a GPU 0 (h100-80gb): mode mig -> mps: idle, and 1 waiting request(s) ask for mps"
            ),
            "{text}"
        );
        assert!(
            text.contains("a GPU 1 (a30-24gb): stays mps, not switched to mig (busy): "),
            "{text}"
        );
    }
}
