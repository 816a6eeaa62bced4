//! Data-driven planner cases: `testdata/*.txt`. Each case is a comment saying why, a `plan`
//! command with the cluster and requests, `----`, and the rendered result; cases are separated
//! by a blank line. Set `TESSERA_REGEN=1` to rewrite the expected output from what the planner
//! does now, then review the diff.
//!
//! ```text
//! # Why this case exists.
//! plan policy=tessera
//! gpu a/0 h100-80gb 2g.20gb@4 1g.10gb@6*     (MIG GPU; `*` marks a busy instance)
//! mps a/1 h100-80gb 8192:25                  (MPS GPU with its clients, MiB:SM%)
//! ts  a/2 a30-24gb 4 1                       (time-slice GPU: replicas, used)
//! req r1 mig 2g.20gb prio=2
//! req r2 mps 10000:20
//! req r3 ts
//! ----
//! (rendered plan)
//! ```
//!
//! The rendering lists each GPU that changes or serves a request: its instances before and
//! after (`=ID` marks the request an instance serves), a one-character-per-memory-slice grid of
//! the final layout (a letter per instance in layout order, lower case when busy, `.` free),
//! and the operations; then assignments, waiting requests and totals.

use std::fmt::Write as _;
use std::path::Path;

use tessera_model::Catalog;
use tessera_planner::{
    check_plan, plan, AssignedSlice, ClusterSpec, GpuMode, GpuSpec, InstanceSpec, MpsClientSpec,
    NodeSpec, Plan, PlanOptions, Policy, RequestSpec,
};

struct Case {
    comment: Vec<String>,
    command: Vec<String>,
    expected: Vec<String>,
}

fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut lines = text.lines().peekable();
    loop {
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        if lines.peek().is_none() {
            break;
        }
        let mut case = Case {
            comment: Vec::new(),
            command: Vec::new(),
            expected: Vec::new(),
        };
        for l in lines.by_ref() {
            if l.trim() == "----" {
                break;
            }
            if l.starts_with('#') {
                case.comment.push(l.to_string());
            } else {
                case.command.push(l.to_string());
            }
        }
        for l in lines.by_ref() {
            if l.trim().is_empty() {
                break;
            }
            case.expected.push(l.to_string());
        }
        cases.push(case);
    }
    cases
}

fn build(command: &[String]) -> (Policy, ClusterSpec, Vec<RequestSpec>) {
    let mut policy = Policy::Tessera;
    let mut cluster = ClusterSpec::default();
    let mut requests = Vec::new();
    for line in command {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            Some("plan") => {
                for kv in &w[1..] {
                    if let Some(p) = kv.strip_prefix("policy=") {
                        policy = p.parse().unwrap();
                    }
                }
            }
            Some(kind @ ("gpu" | "mps" | "ts")) => {
                let (node, idx) = w[1].split_once('/').expect("NODE/INDEX");
                let gpu = match kind {
                    "gpu" => GpuSpec::mig(
                        w[2],
                        w[3..]
                            .iter()
                            .map(|s| {
                                let used = s.ends_with('*');
                                let (p, st) =
                                    s.trim_end_matches('*').split_once('@').unwrap_or_else(|| {
                                        panic!("`{s}` in `{line}` is not PROFILE@START")
                                    });
                                InstanceSpec {
                                    profile: p.to_string(),
                                    start: st.parse().unwrap(),
                                    used,
                                }
                            })
                            .collect(),
                    ),
                    "mps" => GpuSpec {
                        mode: GpuMode::Mps,
                        clients: w[3..]
                            .iter()
                            .map(|c| {
                                let (m, s) = c.split_once(':').unwrap();
                                MpsClientSpec {
                                    memory_mib: m.parse().unwrap(),
                                    sm_percent: s.parse().unwrap(),
                                }
                            })
                            .collect(),
                        ..GpuSpec::mig(w[2], Vec::new())
                    },
                    _ => GpuSpec {
                        mode: GpuMode::Timeslice,
                        replicas: Some(w[3].parse().unwrap()),
                        replicas_used: w[4].parse().unwrap(),
                        ..GpuSpec::mig(w[2], Vec::new())
                    },
                };
                let n = match cluster.nodes.iter().position(|n| n.name == node) {
                    Some(i) => i,
                    None => {
                        cluster.nodes.push(NodeSpec {
                            name: node.to_string(),
                            gpus: Vec::new(),
                        });
                        cluster.nodes.len() - 1
                    }
                };
                assert_eq!(
                    cluster.nodes[n].gpus.len(),
                    idx.parse::<usize>().unwrap(),
                    "{line}"
                );
                cluster.nodes[n].gpus.push(gpu);
            }
            Some("req") => {
                let mut r = match w[2] {
                    "mig" => RequestSpec::mig(w[1], w[3]),
                    "mps" => {
                        let (m, s) = w[3].split_once(':').unwrap();
                        RequestSpec::mps(w[1], m.parse().unwrap(), s.parse().unwrap())
                    }
                    "ts" => RequestSpec::timeslice(w[1]),
                    other => panic!("unknown request kind {other}"),
                };
                for kv in &w[3..] {
                    if let Some(p) = kv.strip_prefix("prio=") {
                        r.priority = p.parse().unwrap();
                    }
                }
                requests.push(r);
            }
            _ => panic!("unknown line `{line}`"),
        }
    }
    (policy, cluster, requests)
}

fn render(cluster: &ClusterSpec, p: &Plan) -> Vec<String> {
    let cat = Catalog::builtin();
    let mut out = Vec::new();
    for g in &p.gpus {
        let served: Vec<_> = p
            .assignments
            .iter()
            .filter(|a| a.node == g.node && a.gpu == g.gpu)
            .collect();
        if !g.changed() && served.is_empty() {
            continue;
        }
        out.push(format!("{}/{} {} {}", g.node, g.gpu, g.model, g.mode));
        if g.mode != GpuMode::Mig {
            for a in served {
                out.push(format!("  serves {}", a.request));
            }
            continue;
        }
        let spec = &cluster
            .nodes
            .iter()
            .find(|n| n.name == g.node)
            .unwrap()
            .gpus[g.gpu];
        let busy = |profile: &str, start: u8| {
            spec.instances
                .iter()
                .any(|i| i.used && i.profile == profile && i.start == start)
        };
        let before: Vec<String> = spec
            .instances
            .iter()
            .map(|i| format!("{}@{}{}", i.profile, i.start, if i.used { "*" } else { "" }))
            .collect();
        let model = cat.lookup(&g.model).unwrap();
        let mut grid = vec!['.'; usize::from(model.memory_slices)];
        let mut after = Vec::new();
        for (k, i) in g.layout.iter().enumerate() {
            let b = busy(&i.profile, i.start);
            let who = served.iter().find(|a| {
                matches!(&a.slice, AssignedSlice::Mig { profile, start } if *profile == i.profile && *start == i.start)
            });
            let mut s = format!("{}@{}", i.profile, i.start);
            if b {
                s.push('*');
            }
            if let Some(a) = who {
                write!(s, "={}", a.request).unwrap();
            }
            after.push(s);
            let letter = (b'A' + k as u8) as char;
            let size = model
                .profile(model.profile_named(&i.profile).unwrap())
                .memory_slices;
            for cell in grid
                .iter_mut()
                .skip(usize::from(i.start))
                .take(usize::from(size))
            {
                *cell = if b {
                    letter.to_ascii_lowercase()
                } else {
                    letter
                };
            }
        }
        let list = |v: &[tessera_planner::InstanceRef]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.iter()
                    .map(|i| format!("{}@{}", i.profile, i.start))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        out.push(format!("  before  {}", before.join(" ")));
        out.push(format!("  after   {}", after.join(" ")));
        out.push(format!("  slices  {}", grid.iter().collect::<String>()));
        out.push(format!("  destroy {}", list(&g.destroy)));
        out.push(format!("  create  {}", list(&g.create)));
    }
    if !p.unassigned.is_empty() {
        out.push(format!("waiting {}", p.unassigned.join(" ")));
    }
    out.push(format!(
        "served {} (priority {}), operations {}",
        p.stats.served, p.stats.served_priority, p.stats.operations
    ));
    out
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let regen = std::env::var("TESSERA_REGEN").is_ok_and(|v| v == "1");
    let cat = Catalog::builtin();
    let mut new_text = String::new();
    let mut failures = Vec::new();
    for case in parse(&text) {
        let (policy, cluster, requests) = build(&case.command);
        let opts = PlanOptions::with_policy(policy);
        let p = plan(cat, &cluster, &requests, &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", case.comment.join(" ")));
        check_plan(cat, &cluster, &requests, &opts, &p).unwrap();
        let got = render(&cluster, &p);
        if got != case.expected {
            failures.push(format!(
                "{}\n{}\n--- expected\n{}\n--- got\n{}",
                case.comment.join("\n"),
                case.command.join("\n"),
                case.expected.join("\n"),
                got.join("\n")
            ));
        }
        for l in case.comment.iter().chain(&case.command) {
            new_text.push_str(l);
            new_text.push('\n');
        }
        new_text.push_str("----\n");
        for l in &got {
            new_text.push_str(l);
            new_text.push('\n');
        }
        new_text.push('\n');
    }
    if regen {
        std::fs::write(path, new_text.trim_end().to_string() + "\n").unwrap();
        return;
    }
    assert!(
        failures.is_empty(),
        "{} case(s) of {} differ (TESSERA_REGEN=1 rewrites them):\n\n{}",
        failures.len(),
        path.display(),
        failures.join("\n\n")
    );
}

#[test]
fn testdata_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        run_file(&f);
    }
}
