//! Render the seed study's own A30 numbers (seed 001: four tenants, time-sliced versus
//! MIG-backed vGPUs) through the report and chart code, and check that the table reads like the
//! seed's: same rows, same three-figure values, efficiencies against the A30's spec sheet.

use tessera_bench::peaks;
use tessera_bench::protocol::{Backend, TenantOutcome};
use tessera_bench::report::{
    aggregate, CellReport, GpuReport, ModeReport, ModeStatus, PeaksReport, Report, REPORT_FORMAT,
};
use tessera_bench::{Mode, Workload};

/// (workload, time-sliced idle, time-sliced loaded, MIG idle, MIG loaded), per tenant, from the
/// seed's table (loaded = the per-vGPU figure averaged over the four VMs).
const SEED: &[(Workload, f64, f64, f64, f64)] = &[
    (Workload::Htod, 25.2, 6.3, 25.2, 6.3),
    (Workload::Dtoh, 26.2, 6.6, 26.3, 6.6),
    (Workload::Dtod, 786.0, 160.0, 196.0, 196.0),
    (Workload::GemmSmall, 6680.0, 1410.0, 6550.0, 6550.0),
    (Workload::GemmLarge, 68800.0, 14500.0, 16000.0, 15300.0),
];

fn outcomes(value: f64, n: usize) -> Vec<TenantOutcome> {
    (0..n)
        .map(|_| TenantOutcome {
            iterations: 1,
            work: value * 1e9,
            elapsed_s: 1.0,
            start_unix_ns: 0,
            end_unix_ns: 1_000_000_000,
            late_s: 0.0,
            visible_devices: None,
        })
        .collect()
}

fn seed_report() -> Report {
    let a30 = peaks::lookup("NVIDIA A30").unwrap();
    let pk = PeaksReport::from(a30);
    let slots = |m: Mode| -> Vec<String> {
        (0..4)
            .map(|i| match m {
                Mode::Mig => format!("MIG-backed vGPU A30-1-6C #{i}"),
                _ => format!("time-sliced vGPU A30-6C #{i}"),
            })
            .collect()
    };
    let mut results = Vec::new();
    for &(w, ts_idle, ts_loaded, mig_idle, mig_loaded) in SEED {
        for (mode, idle, loaded) in [
            (Mode::Timeslice, ts_idle, ts_loaded),
            (Mode::Mig, mig_idle, mig_loaded),
        ] {
            let s = slots(mode);
            let peak = Some(pk.for_workload(w));
            results.push(CellReport {
                workload: w,
                mode,
                unit: w.unit(),
                size: w.gpu_shape(1.0).describe(),
                idle: aggregate(&outcomes(idle, 1), &s[..1], peak),
                loaded: aggregate(&outcomes(loaded, 4), &s, peak),
            });
        }
    }
    Report {
        format: REPORT_FORMAT,
        backend: Backend::Cuda,
        gpu: GpuReport {
            name: "NVIDIA A30".into(),
            ..Default::default()
        },
        peaks: Some(pk),
        tenants: 4,
        duration_s: 10.0,
        keep_gpu_settings: true,
        modes: [Mode::Timeslice, Mode::Mig]
            .into_iter()
            .map(|mode| ModeReport {
                mode,
                status: ModeStatus::Ran,
                reason: None,
                slots: slots(mode),
            })
            .collect(),
        results,
        notes: vec!["numbers of seed 001 (vGPUs on Proxmox), rendered by tessera".into()],
    }
}

#[test]
fn the_seed_table_comes_out_in_the_seed_shape() {
    let r = seed_report();
    let md = r.markdown();
    assert!(
        md.starts_with("| Workload | Load | Time-sliced | MIG-backed |\n|---|---|---|---|\n"),
        "{md}"
    );
    // 25.2 of 32 GB/s = 79 %; 4 × 6.3 = 25.2.
    assert!(
        md.contains("| PCIe bandwidth HtoD | Idle | 25.2 GB/s (79%) | 25.2 GB/s (79%) |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| PCIe bandwidth HtoD | Loaded | 6.30 GB/s (Σ 25.2, 79%) | 6.30 GB/s (Σ 25.2, 79%) |"
        ),
        "{md}"
    );
    // 786 of 933 GB/s = 84 %; MIG loaded 4 × 196 = 784.
    assert!(
        md.contains("| Memory bandwidth | Idle | 786 GB/s (84%) | 196 GB/s (21%) |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| Memory bandwidth | Loaded | 160 GB/s (Σ 640, 69%) | 196 GB/s (Σ 784, 84%) |"
        ),
        "{md}"
    );
    // 68800 of 82000 GFLOP/s = 84 %.
    assert!(
        md.contains("| Large GEMM in TF32 | Idle | 68800 GFLOP/s (84%) | 16000 GFLOP/s (20%) |"),
        "{md}"
    );
    assert_eq!(r.table_rows().len(), 1 + 2 * SEED.len());
    let csv = r.csv();
    assert!(
        csv.contains("htod,timeslice,loaded,total,,25.200000,GB/s,0.787500,\n"),
        "{csv}"
    );
}

#[test]
fn the_seed_charts_draw() {
    let r = seed_report();
    let dir = std::env::var_os("TESSERA_SEED_CHART_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("tessera-seed-charts-{}", std::process::id()))
        });
    std::fs::create_dir_all(&dir).unwrap();
    for w in Workload::ALL {
        let p = dir.join(format!("{}.png", w.name()));
        tessera_bench::chart::draw(&r, w, &p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
    if std::env::var_os("TESSERA_SEED_CHART_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
