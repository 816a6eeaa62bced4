//! `tessera bench sharing` end to end through the real binary, without a GPU: the hidden
//! `--cpu-standin` backend runs the same tenant processes, start barrier, timing, aggregation
//! and report writers as the CUDA backend.

use std::path::Path;
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .output()
        .expect("run tessera")
}

/// `tessera bench sharing --cpu-standin ARGS...`.
fn standin(args: &[&str]) -> Output {
    let mut all = vec!["bench", "sharing", "--cpu-standin"];
    all.extend_from_slice(args);
    tessera(&all)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../bench/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn standin_run_writes_consistent_json_csv_table_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let o = standin(&[
        "--tenants",
        "2",
        "--duration",
        "1",
        "--modes",
        "timeslice,mps",
        "--workloads",
        "htod,gemm-small",
        "--out",
        out.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");

    // Files: the same JSON on disk as on stdout, plus CSV, tables and one chart per workload.
    for f in [
        "report.json",
        "report.csv",
        "table.md",
        "table.txt",
        "htod.png",
        "gemm-small.png",
    ] {
        let p = out.join(f);
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
            "{f} missing"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("report.json")).unwrap(),
        stdout
    );
    for png in ["htod.png", "gemm-small.png"] {
        let b = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{png}");
    }

    assert_eq!(json["format"], 1);
    assert_eq!(json["backend"], "cpu-standin");
    assert_eq!(json["tenants"], 2);
    let modes: Vec<_> = json["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].clone())
        .collect();
    assert_eq!(modes, ["ran", "ran"]);
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * 2);

    // Every loaded total is the sum of its tenants, and the CSV says the same.
    let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 4 * ((1 + 2) + (2 + 2)), "{csv}");
    for cell in results {
        let (w, m) = (
            cell["workload"].as_str().unwrap(),
            cell["mode"].as_str().unwrap(),
        );
        for (load, n) in [("idle", 1), ("loaded", 2)] {
            let phase = &cell[load];
            let tenants = phase["tenants"].as_array().unwrap();
            assert_eq!(tenants.len(), n);
            let sum: f64 = tenants.iter().map(|t| t["value"].as_f64().unwrap()).sum();
            let total = phase["total"].as_f64().unwrap();
            assert!(sum > 0.0);
            assert!((sum - total).abs() <= 1e-9 * total, "{w} {m} {load}");
            let csv_total: f64 = rows
                .iter()
                .find(|r| r[0] == w && r[1] == m && r[2] == load && r[3] == "total")
                .map(|r| r[5].parse().unwrap())
                .unwrap();
            assert!(
                (csv_total - total).abs() <= 1e-6 * total.max(1.0),
                "{w} {m} {load}"
            );
            // Each tenant measured for at least the requested second.
            assert!(tenants
                .iter()
                .all(|t| t["elapsed_s"].as_f64().unwrap() >= 1.0));
        }
    }

    // The Markdown table has the seed's shape: a header, then idle and loaded per workload.
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    let lines: Vec<&str> = md.lines().take_while(|l| l.starts_with('|')).collect();
    assert_eq!(lines[0], "| Workload | Load | Time-sliced | MPS |");
    assert_eq!(lines.len(), 2 + 2 * 2);
    assert!(lines[2].starts_with("| PCIe bandwidth HtoD | Idle | "));
    assert!(lines[5].starts_with("| Small GEMM in TF32 | Loaded | "));
    assert!(text(&o.stderr).contains("wrote "));
}

#[test]
fn standin_mig_uses_existing_devices_from_a_listing() {
    let dir = tempfile::tempdir().unwrap();
    let o = standin(&[
        "--tenants",
        "3",
        "--duration",
        "0.2",
        "--modes",
        "mig",
        "--workloads",
        "dtod",
        "--listing",
        &fixture("h100-80gb_L_1.txt"),
        "--out",
        dir.path().to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    // One 3g.40gb and three 1g.10gb: the three equal 1g.10gb devices, one per tenant.
    let seen: Vec<String> = json["results"][0]["loaded"]["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["visible_devices"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        seen,
        [
            "MIG-8aa1fc52-9818-58ec-bc64-8f0cae121bb4",
            "MIG-42fa9c93-1430-5ccc-b623-c02fb93b7f5a",
            "MIG-6d96b431-44ba-5360-80b0-9359561c927d"
        ]
    );
}

#[test]
fn nothing_to_run_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let o = standin(&[
        "--modes",
        "mig",
        "--workloads",
        "htod",
        "--duration",
        "0.1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", text(&o.stderr));
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(
        all.contains("mig skipped: GPU 0 (CPU stand-in) has no MIG devices"),
        "{all}"
    );
    assert!(all.contains("never creates instances"), "{all}");
}

#[test]
fn bad_arguments_exit_2() {
    for (args, want) in [
        (&["--modes", "vgpu"][..], "invalid mode `vgpu`"),
        (&["--workloads", "gemm"][..], "invalid workload `gemm`"),
        (&["--tenants", "0"][..], "invalid --tenants `0`"),
        (
            &["--gemm-large-scale", "2"][..],
            "invalid --gemm-large-scale `2`",
        ),
        (&["--duration", "0"][..], "invalid --duration `0`"),
    ] {
        let o = standin(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            text(&o.stderr).contains(want),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}

#[test]
fn without_a_gpu_the_command_says_so() {
    if std::env::var_os("TESSERA_REAL_GPU").is_some() {
        println!("skipped: TESSERA_REAL_GPU is set (this test is for machines without a GPU)");
        return;
    }
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if has_driver {
        println!("skipped: a CUDA driver is installed here");
        return;
    }
    let o = tessera(&[
        "bench",
        "sharing",
        "--duration",
        "1",
        "--out",
        "/nonexistent/never-written",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    // The loader's own names are tried and listed, NVIDIA's `libcuda.so.1` among them.
    assert!(
        err.contains("no CUDA driver found (tried libcuda.so, "),
        "{err}"
    );
    assert!(err.contains("libcuda.so.1): "), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn the_tenant_entry_point_refuses_to_run_by_hand() {
    let o = tessera(&["bench", "tenant"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o.stdout).contains("TESSERA_BENCH_TENANT_SPEC is not set"));
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn ctrl_c_stops_the_tenants_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "bench",
            "sharing",
            "--cpu-standin",
            "--tenants",
            "2",
            "--duration",
            "30",
            "--modes",
            "timeslice",
            "--workloads",
            "htod",
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait until tenants run (the handler is installed before any tenant starts).
    let mut tenants = Vec::new();
    for _ in 0..600 {
        tenants = children_of(pid);
        if !tenants.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!tenants.is_empty(), "no tenant process appeared");
    // The first child may be the short device probe; give the idle run's tenant time to start.
    std::thread::sleep(std::time::Duration::from_secs(1));
    tenants.extend(children_of(pid));
    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("interrupted"),
        "{}",
        text(&out.stderr)
    );
    for t in tenants {
        assert!(
            !Path::new(&format!("/proc/{t}")).exists(),
            "tenant {t} outlived the bench"
        );
    }
}
