//! The report: a versioned serde type (the `-o json` wire format and `report.json`), the pure
//! aggregation that builds it from tenant outcomes, and its renderings: the seed's table shape
//! (workload × idle/loaded rows, one column per mode) as text and Markdown, and CSV.

use serde::Serialize;

use crate::peaks::PeakEntry;
use crate::protocol::{Backend, TenantOutcome};
use crate::slots::Mode;
use crate::workload::{Unit, Workload};

/// Version of the report format; bumped on any incompatible change.
pub const REPORT_FORMAT: u32 = 1;

/// A whole benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// `cuda` or `cpu-standin`.
    pub backend: Backend,
    /// The GPU under test.
    pub gpu: GpuReport,
    /// Spec-sheet peaks used for efficiencies, if the GPU is in the table.
    pub peaks: Option<PeaksReport>,
    /// Tenants in the loaded runs.
    pub tenants: u32,
    /// Seconds each run measured.
    pub duration_s: f64,
    /// Whether GPU settings were left untouched (`--keep-gpu-settings`).
    pub keep_gpu_settings: bool,
    /// Each requested mode: whether it ran, and on which slots.
    pub modes: Vec<ModeReport>,
    /// One cell per (workload, mode that ran), workloads in the seed's order.
    pub results: Vec<CellReport>,
    /// Remarks for the reader (skipped modes, failures, caveats).
    pub notes: Vec<String>,
}

/// The GPU as observed.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct GpuReport {
    /// nvidia-smi index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// `GPU-…` UUID.
    pub uuid: Option<String>,
    /// Total memory, MiB.
    pub memory_mib: Option<u64>,
    /// SM count.
    pub sm_count: Option<u32>,
    /// Compute capability.
    pub compute_capability: Option<String>,
    /// MIG mode.
    pub mig_enabled: Option<bool>,
    /// Compute mode at the start.
    pub compute_mode: Option<String>,
}

/// The peaks and where they come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeaksReport {
    /// Board name in the peaks table.
    pub board: String,
    /// Spec sheet.
    pub source: String,
    /// PCIe, one direction, GB/s.
    pub pcie_gbps: f64,
    /// Memory bandwidth, GB/s.
    pub memory_gbps: f64,
    /// Dense TF32, TFLOP/s.
    pub tf32_tflops: f64,
    /// Dense BF16, TFLOP/s.
    pub bf16_tflops: f64,
}

impl From<&PeakEntry> for PeaksReport {
    fn from(e: &PeakEntry) -> Self {
        PeaksReport {
            board: e.board.into(),
            source: e.source.into(),
            pcie_gbps: e.peaks.pcie_gbps,
            memory_gbps: e.peaks.memory_gbps,
            tf32_tflops: e.peaks.tf32_tflops,
            bf16_tflops: e.peaks.bf16_tflops,
        }
    }
}

impl PeaksReport {
    /// The peak for a workload in its unit.
    pub fn for_workload(&self, w: Workload) -> f64 {
        crate::peaks::Peaks {
            pcie_gbps: self.pcie_gbps,
            memory_gbps: self.memory_gbps,
            tf32_tflops: self.tf32_tflops,
            bf16_tflops: self.bf16_tflops,
        }
        .for_workload(w)
    }
}

/// Whether a mode ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: Mode,
    /// `ran` or `skipped`.
    pub status: ModeStatus,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// Slot of each tenant (tenant 0 is also the idle run's slot).
    pub slots: Vec<String>,
}

/// Outcome of a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeStatus {
    /// Measured.
    Ran,
    /// Not possible here; see the reason.
    Skipped,
}

/// One workload in one mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellReport {
    /// The workload.
    pub workload: Workload,
    /// The mode.
    pub mode: Mode,
    /// Unit of every value in the cell.
    pub unit: Unit,
    /// Size of one iteration (`32 MB`, `8192×8192×16400`).
    pub size: String,
    /// One tenant alone on its slot.
    pub idle: PhaseReport,
    /// All tenants at once.
    pub loaded: PhaseReport,
}

/// One run (idle or loaded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// Per tenant, in tenant order (empty when the run failed).
    pub tenants: Vec<TenantReport>,
    /// Mean per tenant (the seed's "loaded" figure).
    pub mean: Option<f64>,
    /// Sum over tenants.
    pub total: Option<f64>,
    /// Slowest tenant.
    pub min: Option<f64>,
    /// Fastest tenant.
    pub max: Option<f64>,
    /// `mean / peak`.
    pub efficiency_mean: Option<f64>,
    /// `total / peak`.
    pub efficiency_total: Option<f64>,
    /// Seconds during which all tenants were measuring at once (loaded runs).
    pub overlap_s: Option<f64>,
    /// Why the run failed.
    pub error: Option<String>,
}

/// One tenant's figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantReport {
    /// Tenant number.
    pub tenant: u32,
    /// Its slot.
    pub slot: String,
    /// Throughput in the cell's unit.
    pub value: f64,
    /// Iterations done.
    pub iterations: u64,
    /// Seconds measured.
    pub elapsed_s: f64,
    /// How late it started after the common start instant.
    pub late_s: f64,
    /// `CUDA_VISIBLE_DEVICES` as the tenant process saw it.
    pub visible_devices: Option<String>,
}

/// Throughput in the workload's unit (10^9 bytes or FLOP per second).
pub fn throughput(o: &TenantOutcome) -> f64 {
    if o.elapsed_s > 0.0 {
        o.work / o.elapsed_s / 1e9
    } else {
        0.0
    }
}

/// Aggregate the outcomes of one run. `slots[i]` is tenant i's slot label.
pub fn aggregate(outcomes: &[TenantOutcome], slots: &[String], peak: Option<f64>) -> PhaseReport {
    let tenants: Vec<TenantReport> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| TenantReport {
            tenant: i as u32,
            slot: slots.get(i).cloned().unwrap_or_default(),
            value: throughput(o),
            iterations: o.iterations,
            elapsed_s: o.elapsed_s,
            late_s: o.late_s,
            visible_devices: o.visible_devices.clone(),
        })
        .collect();
    if tenants.is_empty() {
        return failed(String::from("no tenant reported"));
    }
    let values: Vec<f64> = tenants.iter().map(|t| t.value).collect();
    let total: f64 = values.iter().sum();
    let mean = total / values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let peak = peak.filter(|p| *p > 0.0);
    let overlap_s = (outcomes.len() > 1).then(|| {
        let start = outcomes.iter().map(|o| o.start_unix_ns).max().unwrap_or(0);
        let end = outcomes.iter().map(|o| o.end_unix_ns).min().unwrap_or(0);
        end.saturating_sub(start) as f64 / 1e9
    });
    PhaseReport {
        tenants,
        mean: Some(mean),
        total: Some(total),
        min: Some(min),
        max: Some(max),
        efficiency_mean: peak.map(|p| mean / p),
        efficiency_total: peak.map(|p| total / p),
        overlap_s,
        error: None,
    }
}

/// A run that produced no numbers.
pub fn failed(error: String) -> PhaseReport {
    PhaseReport {
        tenants: Vec::new(),
        mean: None,
        total: None,
        min: None,
        max: None,
        efficiency_mean: None,
        efficiency_total: None,
        overlap_s: None,
        error: Some(error),
    }
}

/// Round to three significant figures, as the seed reports: `25.2`, `786`, `6680`, `68800`.
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if mag >= 2 {
        let unit = 10f64.powi(mag - 2);
        format!("{:.0}", (v / unit).round() * unit)
    } else {
        let decimals = (2 - mag) as usize;
        format!("{v:.decimals$}")
    }
}

fn pct(e: f64) -> String {
    format!("{:.0}%", e * 100.0)
}

impl Report {
    /// The cell for a workload and mode, if that mode ran.
    pub fn cell(&self, w: Workload, m: Mode) -> Option<&CellReport> {
        self.results.iter().find(|c| c.workload == w && c.mode == m)
    }

    /// Workloads present, in the seed's order.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut w: Vec<Workload> = self.results.iter().map(|c| c.workload).collect();
        w.sort();
        w.dedup();
        w
    }

    /// Idle cell text: `25.2 GB/s (79%)`.
    fn idle_text(&self, c: &CellReport) -> String {
        match (c.idle.mean, &c.idle.error) {
            (Some(v), _) => {
                let mut s = format!("{} {}", sig3(v), c.unit.label());
                if let Some(e) = c.idle.efficiency_mean {
                    s.push_str(&format!(" ({})", pct(e)));
                }
                s
            }
            (None, _) => "failed".into(),
        }
    }

    /// Loaded cell text: per-tenant mean, then the total: `6.30 GB/s (Σ 25.2, 79%)`.
    fn loaded_text(&self, c: &CellReport) -> String {
        match (c.loaded.mean, c.loaded.total) {
            (Some(mean), Some(total)) => {
                let mut s = format!("{} {} (Σ {}", sig3(mean), c.unit.label(), sig3(total));
                if let Some(e) = c.loaded.efficiency_total {
                    s.push_str(&format!(", {}", pct(e)));
                }
                s.push(')');
                s
            }
            _ => "failed".into(),
        }
    }

    /// Rows of the seed-shaped table: header, then two rows per workload.
    pub fn table_rows(&self) -> Vec<Vec<String>> {
        let mut header = vec!["Workload".to_string(), "Load".to_string()];
        header.extend(self.modes.iter().map(|m| m.mode.title().to_string()));
        let mut rows = vec![header];
        let mut workloads: Vec<Workload> = self.workloads();
        if workloads.is_empty() {
            return rows;
        }
        workloads.dedup();
        for w in workloads {
            for (load, loaded) in [("Idle", false), ("Loaded", true)] {
                let mut row = vec![w.title().to_string(), load.to_string()];
                for m in &self.modes {
                    row.push(match (m.status, self.cell(w, m.mode)) {
                        (ModeStatus::Skipped, _) => "skipped".into(),
                        (_, None) => "-".into(),
                        (_, Some(c)) if loaded => self.loaded_text(c),
                        (_, Some(c)) => self.idle_text(c),
                    });
                }
                rows.push(row);
            }
        }
        rows
    }

    /// Lines printed under the table: what the numbers mean and every note.
    pub fn footer(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} on {}, {} tenant(s), {} s per run; idle = one tenant alone on its slot, loaded = all \
             {} at once (per-tenant mean, Σ total){}.",
            self.backend.name(),
            self.gpu.name,
            self.tenants,
            self.duration_s,
            self.tenants,
            if self.peaks.is_some() {
                "; % = of the spec-sheet peak"
            } else {
                ""
            }
        )];
        if let Some(p) = &self.peaks {
            out.push(format!(
                "Peaks ({}, {}): PCIe {} GB/s per direction, memory {} GB/s, TF32 {} TFLOP/s dense.",
                p.board, p.source, p.pcie_gbps, p.memory_gbps, p.tf32_tflops
            ));
        }
        for m in &self.modes {
            if let Some(r) = &m.reason {
                out.push(format!("{} skipped: {r}", m.mode.name()));
            }
        }
        out.extend(self.notes.iter().cloned());
        out
    }

    /// The table as Markdown (for `table.md` and the README).
    pub fn markdown(&self) -> String {
        let rows = self.table_rows();
        let mut s = String::new();
        for (i, r) in rows.iter().enumerate() {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
            if i == 0 {
                s.push_str(&format!("|{}\n", "---|".repeat(r.len())));
            }
        }
        s.push('\n');
        for line in self.footer() {
            s.push_str(&format!("- {line}\n"));
        }
        s
    }

    /// The table as aligned text for the terminal.
    pub fn text_table(&self) -> String {
        let rows = self.table_rows();
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        if let Some((head, body)) = rows.split_first() {
            t.set_header(head.clone());
            for r in body {
                t.add_row(r.clone());
            }
        }
        let mut s = format!("{t}\n");
        for line in self.footer() {
            s.push_str(&line);
            s.push('\n');
        }
        s
    }

    /// Every number as CSV: one row per tenant plus `mean` and `total` rows per run.
    pub fn csv(&self) -> String {
        let mut s = String::from("workload,mode,load,tenant,slot,value,unit,efficiency,error\n");
        for c in &self.results {
            for (load, ph) in [("idle", &c.idle), ("loaded", &c.loaded)] {
                let base =
                    |tenant: &str, slot: &str, value: Option<f64>, eff: Option<f64>, err: &str| {
                        [
                            c.workload.name().to_string(),
                            c.mode.name().to_string(),
                            load.to_string(),
                            tenant.to_string(),
                            slot.to_string(),
                            value.map(|v| format!("{v:.6}")).unwrap_or_default(),
                            c.unit.label().to_string(),
                            eff.map(|e| format!("{e:.6}")).unwrap_or_default(),
                            err.to_string(),
                        ]
                        .iter()
                        .map(|f| csv_field(f))
                        .collect::<Vec<_>>()
                        .join(",")
                    };
                if let Some(err) = &ph.error {
                    s.push_str(&base("", "", None, None, err));
                    s.push('\n');
                    continue;
                }
                let peak = self.peaks.as_ref().map(|p| p.for_workload(c.workload));
                for t in &ph.tenants {
                    let eff = peak.map(|p| t.value / p);
                    s.push_str(&base(
                        &t.tenant.to_string(),
                        &t.slot,
                        Some(t.value),
                        eff,
                        "",
                    ));
                    s.push('\n');
                }
                s.push_str(&base("mean", "", ph.mean, ph.efficiency_mean, ""));
                s.push('\n');
                s.push_str(&base("total", "", ph.total, ph.efficiency_total, ""));
                s.push('\n');
            }
        }
        s
    }

    /// Whether any run failed.
    pub fn has_failures(&self) -> bool {
        self.results
            .iter()
            .any(|c| c.idle.error.is_some() || c.loaded.error.is_some())
    }
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn outcome(work: f64, elapsed: f64, start: u64, end: u64) -> TenantOutcome {
        TenantOutcome {
            iterations: 1,
            work,
            elapsed_s: elapsed,
            start_unix_ns: start,
            end_unix_ns: end,
            late_s: 0.0,
            visible_devices: None,
        }
    }

    #[test]
    fn sig3_matches_the_seed() {
        assert_eq!(sig3(25.23), "25.2");
        assert_eq!(sig3(6.3), "6.30");
        assert_eq!(sig3(786.4), "786");
        assert_eq!(sig3(6681.0), "6680");
        assert_eq!(sig3(68_812.0), "68800");
        assert_eq!(sig3(0.01234), "0.0123");
        assert_eq!(sig3(0.0), "0");
    }

    #[test]
    fn aggregate_seed_like_numbers() {
        // Four tenants each moving 6.3e9 bytes in one second, against the A30's 32 GB/s.
        let outs: Vec<_> = (0..4)
            .map(|i| outcome(6.3e9, 1.0, 10 + i, 1_000_000_010))
            .collect();
        let slots = vec!["whole GPU 0".to_string(); 4];
        let p = aggregate(&outs, &slots, Some(32.0));
        assert!((p.mean.unwrap() - 6.3).abs() < 1e-9);
        assert!((p.total.unwrap() - 25.2).abs() < 1e-9);
        assert!((p.efficiency_total.unwrap() - 25.2 / 32.0).abs() < 1e-12);
        assert_eq!(p.overlap_s, Some((1_000_000_010 - 13) as f64 / 1e9));
        let idle = aggregate(&outs[..1], &slots[..1], None);
        assert_eq!(idle.overlap_s, None);
        assert_eq!(idle.efficiency_mean, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn totals_means_and_bounds(works in proptest::collection::vec(0.0f64..1e12, 1..16),
                                   elapsed in 0.01f64..100.0,
                                   peak in 1.0f64..1e6) {
            let outs: Vec<_> = works.iter().map(|w| outcome(*w, elapsed, 0, 1)).collect();
            let slots: Vec<String> = (0..outs.len()).map(|i| format!("s{i}")).collect();
            let p = aggregate(&outs, &slots, Some(peak));
            let sum: f64 = p.tenants.iter().map(|t| t.value).sum();
            let total = p.total.unwrap();
            let mean = p.mean.unwrap();
            prop_assert!((total - sum).abs() <= 1e-9 * sum.max(1.0));
            prop_assert!((mean * outs.len() as f64 - total).abs() <= 1e-9 * total.max(1.0));
            prop_assert!(p.min.unwrap() <= mean * (1.0 + 1e-12) && mean <= p.max.unwrap() * (1.0 + 1e-12));
            prop_assert!((p.efficiency_total.unwrap() * peak - total).abs() <= 1e-9 * total.max(1.0));
            prop_assert_eq!(p.tenants.len(), outs.len());
        }

        #[test]
        fn sig3_keeps_three_figures(v in 0.001f64..1e9) {
            let s = sig3(v);
            let parsed: f64 = s.parse().unwrap();
            prop_assert!((parsed - v).abs() <= 0.0051 * v, "{} -> {}", v, s);
        }
    }

    #[test]
    fn csv_quotes_fields() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
