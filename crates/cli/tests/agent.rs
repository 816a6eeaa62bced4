//! CLI scenarios of `tessera sim-gpu` and `tessera agent`, run on the real binary against a
//! simulated machine in a temp directory.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_BACKEND")
        .output()
        .expect("run tessera")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn init(dir: &Path, gpus: &str, extra: &[&str]) -> String {
    let state = dir.join("machine.json").display().to_string();
    let mut args = vec!["sim-gpu", "init", &state, "--gpus", gpus];
    args.extend_from_slice(extra);
    let o = tessera(&args);
    assert_eq!(code(&o), 0, "{}", text(&o));
    state
}

/// `(profile@start, uuid, pids)` of every instance of a GPU, from `agent status -o json`.
fn instances(backend: &str, gpu: usize) -> Vec<(String, String, Vec<u64>)> {
    let o = tessera(&["agent", "status", "--backend", backend, "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    json(&o)["gpus"][gpu]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                format!("{}@{}", i["profile"].as_str().unwrap(), i["start"]),
                i["uuid"].as_str().unwrap_or("").to_string(),
                i["pids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

/// `agent apply --backend BACKEND --gpu GPU EXTRA... SPEC...`.
fn apply_args<'a>(
    backend: &'a str,
    gpu: &'a str,
    specs: &[&'a str],
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["agent", "apply", "--backend", backend, "--gpu", gpu];
    args.extend_from_slice(extra);
    args.extend_from_slice(specs);
    args
}

fn apply(backend: &str, gpu: &str, specs: &[&str], extra: &[&str]) -> Output {
    tessera(&apply_args(backend, gpu, specs, extra))
}

/// `agent mig-mode --backend BACKEND --gpu GPU EXTRA...`.
fn mig_mode(backend: &str, gpu: &str, extra: &[&str]) -> Output {
    let mut args = vec!["agent", "mig-mode", "--backend", backend, "--gpu", gpu];
    args.extend_from_slice(extra);
    tessera(&args)
}

#[test]
fn the_busy_instance_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "h100-80gb:1", &[]);
    let b = format!("sim:{state}");

    // Apply a layout.
    let o = apply(&b, "0", &["3g.40gb@0", "2g.20gb@4", "1g.10gb@6"], &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let first = instances(&b, 0);
    let specs: Vec<&str> = first.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(specs, vec!["3g.40gb@0", "2g.20gb@4", "1g.10gb@6"]);

    // Mark the 2g.20gb busy.
    let o = tessera(&[
        "sim-gpu", "busy", &state, "--gpu", "0", "--start", "4", "--pid", "4242",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let busy = instances(&b, 0);
    assert_eq!(busy[1].2, vec![4242]);

    // A layout that would remove it: refused (exit 1), the busy instance and its pid named,
    // nothing changed.
    let o = apply(&b, "0", &["7g.80gb@0"], &[]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("2g.20gb@4") && t.contains("4242") && t.contains("nothing changed"),
        "{t}"
    );
    assert_eq!(instances(&b, 0), busy);

    // A layout that keeps it: done (exit 0), same UUID for the busy instance.
    let o = apply(
        &b,
        "0",
        &["1g.10gb@0", "1g.10gb@1", "2g.20gb@4", "1g.10gb@6"],
        &[],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let after = instances(&b, 0);
    let kept = after.iter().find(|i| i.0 == "2g.20gb@4").unwrap();
    assert_eq!(kept.1, busy[1].1, "the busy instance kept its UUID");
    assert_eq!(kept.2, vec![4242]);
    assert_eq!(
        after.iter().find(|i| i.0 == "1g.10gb@6").unwrap().1,
        busy[2].1
    );

    // Idempotent: the same layout again does nothing.
    let o = apply(
        &b,
        "0",
        &["1g.10gb@0", "1g.10gb@1", "2g.20gb@4", "1g.10gb@6"],
        &["-o", "json"],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(json(&o)["gpus"][0]["applied"].as_array().unwrap().len(), 0);
    assert_eq!(instances(&b, 0), after);

    // Idle again, the busy instance may go.
    let o = tessera(&["sim-gpu", "idle", &state, "--gpu", "0", "--start", "4"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = apply(&b, "0", &[], &[]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(instances(&b, 0).is_empty());
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "a100-40gb:1", &[]);
    let b = format!("sim:{state}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (apply_args(&b, "0", &["3g.41gb@0"], &[]), "3g.41gb"),
        (
            apply_args(&b, "0", &["3g.20gb@1"], &[]),
            "not an allowed placement",
        ),
        (
            apply_args(&b, "0", &["3g.20gb@0", "4g.20gb@0"], &[]),
            "overlap",
        ),
        (apply_args(&b, "5", &[], &[]), "GPU 5"),
        (apply_args("cuda", "0", &[], &[]), "sim:STATE"),
        (
            vec!["agent", "status", "--backend", "sim:/nonexistent/x.json"],
            "sim-gpu init",
        ),
        (
            apply_args(&b, "0", &[], &["--faults", "2"]),
            "between 0 and 1",
        ),
        (
            apply_args("nvml", "0", &[], &["--faults", "0.1"]),
            "sim:STATE",
        ),
        (
            vec!["sim-gpu", "init", &state, "--gpus", "h100-80gb:1"],
            "--force",
        ),
        (
            vec!["sim-gpu", "busy", &state, "--gpu", "0", "--start", "3"],
            "no GPU instance starts",
        ),
    ];
    for (args, needle) in cases {
        let o = tessera(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
    }
}

#[test]
fn nvml_without_a_driver_says_so() {
    let o = tessera(&["agent", "status", "--backend", "nvml"]);
    if code(&o) != 0 {
        let t = text(&o);
        assert_eq!(code(&o), 2, "{t}");
        assert!(
            t.contains("NVML") && t.contains("--backend sim:STATE"),
            "{t}"
        );
    }
}

#[test]
fn a_crash_mid_apply_rolls_forward_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "a100-40gb:1", &[]);
    let b = format!("sim:{state}");
    let journal = dir.path().join("journal").display().to_string();
    let layout = ["3g.20gb@4", "2g.10gb@0", "1g.5gb@2", "1g.5gb@3"];
    let o = apply(
        &b,
        "0",
        &layout,
        &["--journal", &journal, "--crash-after", "2"],
    );
    assert_eq!(code(&o), 137, "{}", text(&o));
    assert_eq!(instances(&b, 0).len(), 2, "two ops ran before the crash");
    let o = apply(&b, "0", &layout, &["--journal", &journal, "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let v = json(&o);
    let rec = v["gpus"][0]["recovered"].as_array().unwrap();
    assert_eq!(rec.len(), 1, "{v}");
    assert_eq!(rec[0]["applied"], true);
    assert_eq!(v["gpus"][0]["applied"].as_array().unwrap().len(), 2);
    let got: Vec<String> = instances(&b, 0).into_iter().map(|i| i.0).collect();
    assert_eq!(got, vec!["2g.10gb@0", "1g.5gb@2", "1g.5gb@3", "3g.20gb@4"]);
    // The journal reads back cleanly: every intent has its outcome.
    let text = std::fs::read_to_string(dir.path().join("journal/journal.jsonl")).unwrap();
    let intents = text.matches("\"type\":\"intent\"").count();
    let outcomes = text.matches("\"type\":\"outcome\"").count();
    assert_eq!((intents, outcomes), (4, 4), "{text}");
    // The hook is hidden from help.
    let help = text_of(&tessera(&["agent", "apply", "--help"]));
    assert!(
        !help.contains("crash-after") && help.contains("--journal"),
        "{help}"
    );
}

fn text_of(o: &Output) -> String {
    text(o)
}

#[test]
fn faults_are_retried_until_the_layout_matches() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "h100-80gb:1", &[]);
    let b = format!("sim:{state}");
    let layout = [
        "1g.10gb@0",
        "1g.10gb@1",
        "1g.10gb@2",
        "1g.10gb@3",
        "3g.40gb@4",
    ];
    let o = apply(
        &b,
        "0",
        &layout,
        &[
            "--faults",
            "0.3",
            "--fault-seed",
            "7",
            "--fault-timing",
            "mixed",
            "--backoff-ms",
            "1",
            "--max-retries",
            "20",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(!json(&o)["gpus"][0]["retried"]
        .as_array()
        .unwrap()
        .is_empty());
    let got: Vec<String> = instances(&b, 0).into_iter().map(|i| i.0).collect();
    assert_eq!(got, layout);
}

#[test]
fn a_desired_file_reconciles_many_gpus_and_mig_mode_is_separate() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "h100-80gb:1,a30:1", &["--mig-disabled"]);
    let b = format!("sim:{state}");
    let desired = dir.path().join("desired.yaml");
    std::fs::write(
        &desired,
        "version: 1\ngpus:\n  0: [7g.80gb@0]\n  1: [2g.12gb@0, 1g.6gb@2, 1g.6gb@3]\n",
    )
    .unwrap();
    let d = desired.display().to_string();

    // MIG off: refused with the fix named (exit 1), nothing created.
    let o = tessera(&["agent", "apply", "--backend", &b, "--desired", &d]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("mig-mode"), "{}", text(&o));

    // Report, then enable explicitly.
    let o = mig_mode(&b, "1", &[]);
    assert_eq!(code(&o), 0);
    assert!(text(&o).contains("MIG mode disabled"), "{}", text(&o));
    for gpu in ["0", "1"] {
        let o = mig_mode(&b, gpu, &["--enable", "-o", "json"]);
        assert_eq!(code(&o), 0, "{}", text(&o));
        assert_eq!(json(&o)["after"]["current"], true);
    }
    let o = tessera(&["agent", "apply", "--backend", &b, "--desired", &d]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(instances(&b, 0).len(), 1);
    assert_eq!(instances(&b, 1).len(), 3);

    // MIG cannot be disabled under instances: refused like a busy apply (exit 1), naming
    // the instance and the command that removes it.
    let o = mig_mode(&b, "0", &["--disable"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("7g.80gb@0 (idle). Remove them first"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_xid_marks_every_instance_of_the_gpu_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "h100-80gb:2", &[]);
    let b = format!("sim:{state}");
    for gpu in ["0", "1"] {
        let o = apply(&b, gpu, &["3g.40gb@0", "3g.40gb@4"], &[]);
        assert_eq!(code(&o), 0, "{}", text(&o));
    }
    let o = tessera(&[
        "sim-gpu", "xid", &state, "--gpu", "1", "--xid", "48", "--gi", "1",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = tessera(&["agent", "status", "--backend", &b, "-o", "json"]);
    let v = json(&o);
    assert_eq!(v["gpus"][1]["health"]["state"], "unhealthy");
    for i in v["gpus"][1]["instances"].as_array().unwrap() {
        assert_eq!(i["health"], "unhealthy", "{i}");
    }
    for i in v["gpus"][0]["instances"].as_array().unwrap() {
        assert_eq!(i["health"], "healthy", "{i}");
    }
}

/// `tests/fixtures/NAME` as a path.
fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn apply_desired(backend: &str, file: &str, select: &str) -> Output {
    tessera(&[
        "agent",
        "apply",
        "--backend",
        backend,
        "--desired",
        file,
        "--select",
        select,
    ])
}

#[test]
fn mig_parted_configs_apply_on_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "h100-80gb:2,a100-40gb:1", &[]);
    let backend = format!("sim:{state}");
    let parted = fixture("mig-parted.yaml");
    let o = apply_desired(&backend, &parted, "mixed");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let specs = |gpu| -> Vec<String> {
        instances(&backend, gpu)
            .into_iter()
            .map(|(s, _, _)| s)
            .collect()
    };
    assert_eq!(specs(0), ["3g.40gb@0", "3g.40gb@4"]);
    assert_eq!(specs(2).len(), 3);
    assert!(specs(2).iter().all(|s| s.starts_with("2g.10gb@")));
    let ones = specs(1)
        .iter()
        .filter(|s| s.starts_with("1g.10gb@"))
        .count();
    assert_eq!((ones, specs(1).len()), (3, 4), "{:?}", specs(1));

    // A busy 3g.40gb is kept by a config that counts it; the rest is rebuilt around it.
    let busy = tessera(&[
        "sim-gpu", "busy", &state, "--gpu", "0", "--start", "4", "--pid", "77",
    ]);
    assert_eq!(code(&busy), 0, "{}", text(&busy));
    let uuid = instances(&backend, 0)[1].1.clone();
    let o = apply_desired(&backend, &parted, "h100-balanced");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let after = instances(&backend, 0);
    assert!(
        after
            .iter()
            .any(|(s, u, p)| s == "3g.40gb@4" && *u == uuid && p == &[77]),
        "{after:?}"
    );
    assert_eq!(after.len(), 4, "{after:?}");
    // The A100 is filtered out by `device-filter`: unchanged.
    assert_eq!(specs(2).len(), 3);

    // A config whose counts do not fit: exit 2, nothing changed, the place named.
    let before = specs(1);
    let o = apply_desired(&backend, &parted, "too-many");
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains("config `too-many`: device 0 (h100-80gb): 1 × 1g.10gb does not fit"),
        "{}",
        text(&o)
    );
    assert_eq!(specs(1), before);

    let o = tessera(&[
        "agent",
        "apply",
        "--backend",
        &backend,
        "--desired",
        &parted,
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("--select NAME"), "{}", text(&o));
}

#[test]
fn nos_geometries_apply_on_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let state = init(dir.path(), "a100-40gb:1,h100-80gb:1", &[]);
    let backend = format!("sim:{state}");
    let nos = fixture("nos-known-mig-geometries.yaml");
    let o = apply_desired(&backend, &nos, "4");
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(instances(&backend, 0)[0].0, "7g.40gb@0");
    assert_eq!(instances(&backend, 1)[0].0, "7g.80gb@0");
    let o = apply_desired(&backend, &nos, "9");
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("from 1 to 4"), "{}", text(&o));
}
