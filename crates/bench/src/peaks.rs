//! Theoretical peaks of known GPUs, to turn a measurement into an efficiency.
//!
//! Sources are NVIDIA's public spec sheets (one per entry, in `source`). Conventions:
//! - `pcie_gbps` is one direction: half the sheet's bidirectional figure (PCIe Gen4 x16:
//!   64 GB/s → 32; Gen5 x16: 128 GB/s → 64).
//! - Tensor throughputs are dense: the sheets print them "with sparsity" (marked `*`), which is
//!   twice the dense figure, so the sheet's number is halved here.
//! - The seed study used A30: 32 GB/s PCIe per direction, 933 GB/s memory, 82 TFLOP/s TF32.
//!
//! A device is matched by its exact CUDA/NVML name first (SXM and PCIe boards differ), then by
//! the catalog key that [`tessera_model::Catalog::get`] resolves the name to.

use serde::Serialize;
use tessera_model::Catalog;

use crate::workload::{PeakKind, Workload};

/// Peaks of one GPU board.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peaks {
    /// PCIe bandwidth, one direction, GB/s.
    pub pcie_gbps: f64,
    /// Device memory bandwidth, GB/s.
    pub memory_gbps: f64,
    /// Dense TF32 tensor-core throughput, TFLOP/s.
    pub tf32_tflops: f64,
    /// Dense BF16 tensor-core throughput, TFLOP/s.
    pub bf16_tflops: f64,
}

impl Peaks {
    /// The peak a workload is compared with, in the workload's unit (GB/s or GFLOP/s).
    pub fn for_workload(&self, w: Workload) -> f64 {
        match w.peak_kind() {
            PeakKind::Pcie => self.pcie_gbps,
            PeakKind::Memory => self.memory_gbps,
            PeakKind::Tf32 => self.tf32_tflops * 1000.0,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PeakEntry {
    /// The board, as people call it.
    pub board: &'static str,
    /// The catalog key of the model (`tessera gpus`).
    pub catalog_key: &'static str,
    /// Exact device names reported by CUDA and NVML.
    pub names: &'static [&'static str],
    /// The peaks.
    pub peaks: Peaks,
    /// The spec sheet the numbers come from.
    pub source: &'static str,
}

const fn p(pcie_gbps: f64, memory_gbps: f64, tf32_tflops: f64, bf16_tflops: f64) -> Peaks {
    Peaks {
        pcie_gbps,
        memory_gbps,
        tf32_tflops,
        bf16_tflops,
    }
}

/// The built-in table.
pub const PEAKS: &[PeakEntry] = &[
    PeakEntry {
        board: "A30 (PCIe)",
        catalog_key: "a30-24gb",
        names: &["NVIDIA A30"],
        // PCIe Gen4 64 GB/s; 933 GB/s HBM2; TF32 82 (165*); BF16 165 (330*).
        peaks: p(32.0, 933.0, 82.0, 165.0),
        source: "NVIDIA A30 Tensor Core GPU datasheet",
    },
    PeakEntry {
        board: "A100 40GB SXM4",
        catalog_key: "a100-40gb",
        names: &["NVIDIA A100-SXM4-40GB"],
        // PCIe Gen4 64 GB/s; 1,555 GB/s HBM2; TF32 156 (312*); BF16 312 (624*).
        peaks: p(32.0, 1555.0, 156.0, 312.0),
        source: "NVIDIA A100 Tensor Core GPU datasheet",
    },
    PeakEntry {
        board: "A100 40GB PCIe",
        catalog_key: "a100-40gb",
        names: &["NVIDIA A100-PCIE-40GB"],
        peaks: p(32.0, 1555.0, 156.0, 312.0),
        source: "NVIDIA A100 Tensor Core GPU datasheet",
    },
    PeakEntry {
        board: "A100 80GB SXM4",
        catalog_key: "a100-80gb",
        names: &["NVIDIA A100-SXM4-80GB"],
        // 2,039 GB/s HBM2e.
        peaks: p(32.0, 2039.0, 156.0, 312.0),
        source: "NVIDIA A100 Tensor Core GPU datasheet",
    },
    PeakEntry {
        board: "A100 80GB PCIe",
        catalog_key: "a100-80gb",
        names: &["NVIDIA A100 80GB PCIe"],
        // 1,935 GB/s HBM2e.
        peaks: p(32.0, 1935.0, 156.0, 312.0),
        source: "NVIDIA A100 Tensor Core GPU datasheet",
    },
    PeakEntry {
        board: "H100 SXM5",
        catalog_key: "h100-80gb",
        names: &["NVIDIA H100 80GB HBM3"],
        // PCIe Gen5 128 GB/s; 3.35 TB/s; TF32 989*; BF16 1,979*.
        peaks: p(64.0, 3350.0, 494.5, 989.5),
        source: "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column)",
    },
    PeakEntry {
        board: "H100 PCIe",
        catalog_key: "h100-pcie-80gb",
        names: &["NVIDIA H100 PCIe"],
        // 2 TB/s; TF32 756*; BF16 1,513*.
        peaks: p(64.0, 2000.0, 378.0, 756.5),
        source: "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe)",
    },
    PeakEntry {
        board: "H100 NVL",
        catalog_key: "h100-nvl-94gb",
        names: &["NVIDIA H100 NVL"],
        // 3.9 TB/s; TF32 835*; BF16 1,671*.
        peaks: p(64.0, 3900.0, 417.5, 835.5),
        source: "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL column)",
    },
    PeakEntry {
        board: "H200 SXM",
        catalog_key: "h200-141gb",
        names: &["NVIDIA H200"],
        // 4.8 TB/s HBM3e; TF32 989*; BF16 1,979*; PCIe Gen5 128 GB/s.
        peaks: p(64.0, 4800.0, 494.5, 989.5),
        source: "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column)",
    },
    PeakEntry {
        board: "H200 NVL",
        catalog_key: "h200-nvl-141gb",
        names: &["NVIDIA H200 NVL"],
        // 4.8 TB/s; TF32 835*; BF16 1,671*.
        peaks: p(64.0, 4800.0, 417.5, 835.5),
        source: "NVIDIA H200 Tensor Core GPU datasheet (H200 NVL column)",
    },
    PeakEntry {
        board: "B200 (HGX)",
        catalog_key: "b200-180gb",
        names: &["NVIDIA B200"],
        // Per GPU: 7.7 TB/s HBM3e; TF32 2.2 PFLOPS*; BF16 4.5 PFLOPS*; PCIe Gen5 128 GB/s.
        peaks: p(64.0, 7700.0, 1100.0, 2250.0),
        source: "NVIDIA HGX B200 datasheet (per-GPU figures)",
    },
];

/// Strip a MIG device suffix: `NVIDIA A100-SXM4-40GB MIG 1g.5gb` → `NVIDIA A100-SXM4-40GB`.
pub fn board_name(device_name: &str) -> &str {
    match device_name.find(" MIG ") {
        Some(i) => device_name[..i].trim(),
        None => device_name.trim(),
    }
}

/// The peaks of a device by its CUDA/NVML name, if the table knows it.
pub fn lookup(device_name: &str) -> Option<&'static PeakEntry> {
    let name = board_name(device_name);
    PEAKS
        .iter()
        .find(|e| e.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .or_else(|| {
            let key = Catalog::builtin().get(name)?.key.clone();
            PEAKS.iter().find(|e| e.catalog_key == key)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_a30_peaks() {
        let e = lookup("NVIDIA A30").unwrap();
        assert_eq!(e.peaks.for_workload(Workload::Htod), 32.0);
        assert_eq!(e.peaks.for_workload(Workload::Dtod), 933.0);
        assert_eq!(e.peaks.for_workload(Workload::GemmLarge), 82_000.0);
    }

    #[test]
    fn boards_are_told_apart_and_mig_suffix_is_ignored() {
        assert_eq!(
            lookup("NVIDIA A100 80GB PCIe").unwrap().peaks.memory_gbps,
            1935.0
        );
        assert_eq!(
            lookup("NVIDIA A100-SXM4-80GB").unwrap().peaks.memory_gbps,
            2039.0
        );
        assert_eq!(
            lookup("NVIDIA A100-SXM4-40GB MIG 1g.5gb").unwrap().board,
            "A100 40GB SXM4"
        );
        assert_eq!(lookup("nvidia h100 nvl").unwrap().board, "H100 NVL");
        assert!(lookup("NVIDIA GeForce RTX 4090").is_none());
    }

    #[test]
    fn every_entry_names_a_catalog_model_and_is_plausible() {
        for e in PEAKS {
            let m = Catalog::builtin().get(e.catalog_key);
            assert!(
                m.is_some(),
                "{} has unknown catalog key {}",
                e.board,
                e.catalog_key
            );
            for n in e.names {
                assert_eq!(lookup(n).unwrap().board, e.board);
            }
            let pk = e.peaks;
            assert!(
                pk.bf16_tflops > pk.tf32_tflops,
                "{}: BF16 is 2× TF32",
                e.board
            );
            assert!(pk.memory_gbps > 10.0 * pk.pcie_gbps, "{}", e.board);
        }
    }
}
