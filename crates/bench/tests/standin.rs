//! Orchestration without a GPU: this test binary is its own tenant. A test spawns
//! `current_exe() tenant_entry --exact --nocapture`; with the spec variable set, `tenant_entry`
//! becomes a tenant process (protocol lines go straight to stdout, the harness's own lines are
//! ignored by the parent) and exits with the tenant's code.

use std::time::Duration;

use tessera_bench::group::{run_group, Limits, TenantCommand};
use tessera_bench::protocol::{Backend, Role, TenantSpec, PROTOCOL_VERSION, SPEC_ENV};
use tessera_bench::report::ModeStatus;
use tessera_bench::slots::Slot;
use tessera_bench::workload::Shape;
use tessera_bench::{run_sharing, write_outputs, BenchError, Config, Mode, NoProgress, Workload};

#[test]
fn tenant_entry() {
    if std::env::var_os(SPEC_ENV).is_some() {
        std::process::exit(tessera_bench::tenant_main());
    }
}

fn me() -> TenantCommand {
    TenantCommand {
        program: std::env::current_exe().unwrap(),
        args: [
            "tenant_entry",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ]
        .map(String::from)
        .to_vec(),
    }
}

fn quick_limits() -> Limits {
    Limits {
        ready: Duration::from_secs(60),
        grace: Duration::from_secs(60),
        start_margin: Duration::from_millis(50),
    }
}

fn slot(label: &str, visible: &str) -> Slot {
    let mut s = Slot {
        label: label.into(),
        env: Default::default(),
    };
    s.env.insert("CUDA_VISIBLE_DEVICES".into(), visible.into());
    s
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn a_group_starts_together_and_each_tenant_keeps_its_slot() {
    let role = Role::Measure {
        workload: Workload::Htod,
        shape: Shape::Copy { bytes: 1 << 20 },
        duration_s: 0.3,
    };
    let specs: Vec<TenantSpec> = (0..3)
        .map(|i| TenantSpec::new(i, Backend::CpuStandin, role.clone()))
        .collect();
    let slots: Vec<Slot> = (0..3)
        .map(|i| slot(&format!("s{i}"), &format!("dev-{i}")))
        .collect();
    let outs = run_group(&me(), &specs, &slots, 0.3, quick_limits()).unwrap();
    assert_eq!(outs.len(), 3);
    for (i, o) in outs.iter().enumerate() {
        assert!(o.iterations > 0);
        assert_eq!(o.work, o.iterations as f64 * (1 << 20) as f64);
        assert!(o.elapsed_s >= 0.3, "measured for the whole duration");
        // The environment of its own slot reached the tenant process.
        assert_eq!(
            o.visible_devices.as_deref(),
            Some(format!("dev-{i}").as_str())
        );
    }
    // All were given the same start instant, so their windows overlap.
    let latest_start = outs.iter().map(|o| o.start_unix_ns).max().unwrap();
    let earliest_end = outs.iter().map(|o| o.end_unix_ns).min().unwrap();
    assert!(latest_start < earliest_end);
}

#[test]
fn a_failing_tenant_fails_the_group_with_its_message() {
    let good = TenantSpec::new(
        0,
        Backend::CpuStandin,
        Role::Measure {
            workload: Workload::GemmSmall,
            shape: Shape::Gemm { m: 8, n: 8, k: 8 },
            duration_s: 0.1,
        },
    );
    // A protocol mismatch makes tenant 1 report an error during set-up.
    let bad = TenantSpec {
        protocol: PROTOCOL_VERSION + 7,
        tenant: 1,
        ..good.clone()
    };
    let err = run_group(
        &me(),
        &[good, bad],
        &[slot("a", "0"), slot("b", "0")],
        0.1,
        quick_limits(),
    )
    .unwrap_err();
    match err {
        BenchError::Tenant {
            tenant,
            slot,
            message,
            ..
        } => {
            assert_eq!(tenant, 1);
            assert_eq!(slot, "b");
            assert!(message.contains("protocol"), "{message}");
        }
        other => panic!("expected a tenant error, got {other}"),
    }
}

#[test]
fn a_missing_program_is_a_spawn_error() {
    let cmd = TenantCommand {
        program: "/nonexistent/tessera".into(),
        args: vec![],
    };
    let spec = TenantSpec::new(0, Backend::CpuStandin, Role::Probe);
    let err = run_group(&cmd, &[spec], &[slot("a", "0")], 0.1, quick_limits()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tessera"), "{err}");
}

#[test]
fn full_benchmark_on_the_standin_with_mig_slots_from_a_real_listing() {
    // A30 with one 2g.12gb and two 1g.6gb: two tenants get the two 1g.6gb devices.
    let cfg = Config {
        tenants: 2,
        modes: vec![Mode::Timeslice, Mode::Mps, Mode::Mig],
        workloads: vec![Workload::Htod, Workload::GemmSmall],
        duration_s: 0.1,
        gemm_large_scale: 1.0,
        keep_gpu_settings: true,
        backend: Backend::CpuStandin,
        gpu_index: 0,
        listing: Some(fixture("a30_L_1.txt")),
        limits: quick_limits(),
    };
    let report = run_sharing(&cfg, &me(), &NoProgress).unwrap();
    assert_eq!(report.modes.len(), 3);
    assert!(
        report.modes.iter().all(|m| m.status == ModeStatus::Ran),
        "{:?}",
        report.modes
    );
    assert_eq!(report.results.len(), 3 * 2);
    assert!(!report.has_failures());
    let mig = report.modes.iter().find(|m| m.mode == Mode::Mig).unwrap();
    assert_eq!(
        mig.slots,
        [
            "MIG 1g.6gb MIG-41b9eab5-8d48-5c52-9f07-82bc59af3901",
            "MIG 1g.6gb MIG-55dcd9bd-e6b1-549a-bcb4-0b0496bfee9c"
        ]
    );
    let mig_cell = report.cell(Workload::Htod, Mode::Mig).unwrap();
    let seen: Vec<_> = mig_cell
        .loaded
        .tenants
        .iter()
        .map(|t| t.visible_devices.clone().unwrap())
        .collect();
    assert_eq!(
        seen,
        [
            "MIG-41b9eab5-8d48-5c52-9f07-82bc59af3901",
            "MIG-55dcd9bd-e6b1-549a-bcb4-0b0496bfee9c"
        ],
        "each tenant process ran on its own MIG device"
    );
    let mps = report.modes.iter().find(|m| m.mode == Mode::Mps).unwrap();
    assert!(
        mps.slots[0].starts_with("MPS client 50% SMs"),
        "{:?}",
        mps.slots
    );
    for c in &report.results {
        assert_eq!(c.idle.tenants.len(), 1);
        assert_eq!(c.loaded.tenants.len(), 2);
        let sum: f64 = c.loaded.tenants.iter().map(|t| t.value).sum();
        assert!((c.loaded.total.unwrap() - sum).abs() < 1e-9 * sum);
        assert!(c.idle.mean.unwrap() > 0.0);
        assert!(
            c.idle.efficiency_mean.is_none(),
            "no peaks for the stand-in"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let files = write_outputs(&report, dir.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "report.json",
            "report.csv",
            "table.md",
            "table.txt",
            "htod.png",
            "gemm-small.png"
        ]
    );
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
    }
    let png = std::fs::read(dir.path().join("htod.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // CSV: per run, one row per tenant plus mean and total.
    let csv = std::fs::read_to_string(dir.path().join("report.csv")).unwrap();
    let rows = csv.lines().count() - 1;
    assert_eq!(rows, 3 * 2 * ((1 + 2) + (2 + 2)));
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(table.contains("| PCIe bandwidth HtoD | Idle |"), "{table}");
    assert!(table.contains("| Small GEMM in TF32 | Loaded |"), "{table}");
}

#[test]
fn modes_that_cannot_run_are_skipped_with_a_reason() {
    // No listing: the stand-in "GPU" has no MIG devices.
    let cfg = Config {
        tenants: 2,
        modes: vec![Mode::Mig],
        workloads: vec![Workload::Dtod],
        duration_s: 0.1,
        gemm_large_scale: 1.0,
        keep_gpu_settings: true,
        backend: Backend::CpuStandin,
        gpu_index: 0,
        listing: None,
        limits: quick_limits(),
    };
    let report = run_sharing(&cfg, &me(), &NoProgress).unwrap();
    assert_eq!(report.modes[0].status, ModeStatus::Skipped);
    let reason = report.modes[0].reason.as_deref().unwrap();
    assert!(
        reason.contains("no MIG devices") && reason.contains("never creates"),
        "{reason}"
    );
    assert!(report.results.is_empty());
    assert!(report.text_table().contains("mig skipped:"));
}
