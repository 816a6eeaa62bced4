//! The five workloads of the seed study, their sizes on a GPU and on the CPU stand-in, and how
//! much work (bytes or floating-point operations) one iteration does.
//!
//! Counting follows the seed's tools so the numbers compare: a host/device copy counts the bytes
//! copied once; a device-to-device copy counts them twice (read and write), as CUDA's
//! `bandwidthTest` does; a GEMM counts `2·m·n·k` operations.

use serde::{Deserialize, Serialize};

use crate::error::BenchError;

/// One workload of the sharing benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Host-to-device copies of a pinned 32 MB buffer (PCIe bandwidth).
    Htod,
    /// Device-to-host copies into a pinned 32 MB buffer (PCIe bandwidth).
    Dtoh,
    /// Device-to-device copies of 384 MB (memory bandwidth).
    Dtod,
    /// TF32 tensor-core GEMM 1024×1024×1024 (too small to fill a big GPU).
    GemmSmall,
    /// TF32 tensor-core GEMM 8192×8192×16400 (fills any GPU).
    GemmLarge,
}

/// The unit a workload reports in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// 10^9 bytes per second.
    #[serde(rename = "GB/s")]
    GBps,
    /// 10^9 floating-point operations per second.
    #[serde(rename = "GFLOP/s")]
    GFlops,
}

impl Unit {
    /// The unit as printed.
    pub fn label(self) -> &'static str {
        match self {
            Unit::GBps => "GB/s",
            Unit::GFlops => "GFLOP/s",
        }
    }
}

/// Which peak of the GPU a workload is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakKind {
    /// PCIe bandwidth, one direction.
    Pcie,
    /// Device memory (HBM) bandwidth.
    Memory,
    /// Dense TF32 tensor-core throughput.
    Tf32,
}

impl Workload {
    /// All workloads, in the seed's order.
    pub const ALL: [Workload; 5] = [
        Workload::Htod,
        Workload::Dtoh,
        Workload::Dtod,
        Workload::GemmSmall,
        Workload::GemmLarge,
    ];

    /// The name used on the command line and in files (`gemm-small`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Htod => "htod",
            Workload::Dtoh => "dtoh",
            Workload::Dtod => "dtod",
            Workload::GemmSmall => "gemm-small",
            Workload::GemmLarge => "gemm-large",
        }
    }

    /// The row title, as in the seed's table.
    pub fn title(self) -> &'static str {
        match self {
            Workload::Htod => "PCIe bandwidth HtoD",
            Workload::Dtoh => "PCIe bandwidth DtoH",
            Workload::Dtod => "Memory bandwidth",
            Workload::GemmSmall => "Small GEMM in TF32",
            Workload::GemmLarge => "Large GEMM in TF32",
        }
    }

    /// The unit of its result.
    pub fn unit(self) -> Unit {
        match self {
            Workload::Htod | Workload::Dtoh | Workload::Dtod => Unit::GBps,
            Workload::GemmSmall | Workload::GemmLarge => Unit::GFlops,
        }
    }

    /// The GPU peak it is compared with.
    pub fn peak_kind(self) -> PeakKind {
        match self {
            Workload::Htod | Workload::Dtoh => PeakKind::Pcie,
            Workload::Dtod => PeakKind::Memory,
            Workload::GemmSmall | Workload::GemmLarge => PeakKind::Tf32,
        }
    }

    /// Whether it needs cuBLAS.
    pub fn is_gemm(self) -> bool {
        matches!(self, Workload::GemmSmall | Workload::GemmLarge)
    }

    /// Parse one name (`htod`, `dtoh`, `dtod`, `gemm-small`, `gemm-large`).
    pub fn parse(s: &str) -> Result<Workload, BenchError> {
        let t = s.trim().to_ascii_lowercase();
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == t)
            .ok_or_else(|| BenchError::Invalid {
                what: "workload",
                value: s.to_string(),
                reason: "expected one of htod, dtoh, dtod, gemm-small, gemm-large".into(),
            })
    }

    /// Parse a comma-separated list, keeping the seed's order and dropping repeats.
    pub fn parse_list(s: &str) -> Result<Vec<Workload>, BenchError> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            out.push(Workload::parse(part)?);
        }
        if out.is_empty() {
            return Err(BenchError::Invalid {
                what: "--workloads",
                value: s.to_string(),
                reason: "name at least one workload".into(),
            });
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Its size on a GPU. `gemm_large_scale` (in (0, 1]) scales each dimension of the large GEMM.
    pub fn gpu_shape(self, gemm_large_scale: f64) -> Shape {
        match self {
            Workload::Htod | Workload::Dtoh => Shape::Copy { bytes: 32_000_000 },
            Workload::Dtod => Shape::Copy { bytes: 384_000_000 },
            Workload::GemmSmall => Shape::Gemm {
                m: 1024,
                n: 1024,
                k: 1024,
            },
            Workload::GemmLarge => Shape::Gemm {
                m: scale_dim(8192, gemm_large_scale),
                n: scale_dim(8192, gemm_large_scale),
                k: scale_dim(16400, gemm_large_scale),
            },
        }
    }

    /// Its size on the CPU stand-in: small enough that a test runs in seconds.
    pub fn cpu_shape(self) -> Shape {
        match self {
            Workload::Htod | Workload::Dtoh => Shape::Copy { bytes: 8_000_000 },
            Workload::Dtod => Shape::Copy { bytes: 16_000_000 },
            Workload::GemmSmall => Shape::Gemm {
                m: 64,
                n: 64,
                k: 64,
            },
            Workload::GemmLarge => Shape::Gemm {
                m: 128,
                n: 128,
                k: 128,
            },
        }
    }
}

/// Scale a GEMM dimension, rounded to a multiple of 8 (aligned for tensor cores), at least 8.
pub fn scale_dim(dim: u64, scale: f64) -> u64 {
    let scaled = (dim as f64 * scale / 8.0).round() as u64 * 8;
    scaled.max(8)
}

/// Check `--gemm-large-scale`.
pub fn check_scale(scale: f64) -> Result<f64, BenchError> {
    if scale.is_finite() && scale > 0.0 && scale <= 1.0 {
        Ok(scale)
    } else {
        Err(BenchError::Invalid {
            what: "--gemm-large-scale",
            value: scale.to_string(),
            reason: "expected a factor in (0, 1], e.g. 0.5 for 4096×4096×8200".into(),
        })
    }
}

/// The size of one iteration of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Shape {
    /// A copy of `bytes` bytes.
    Copy {
        /// Bytes per copy.
        bytes: u64,
    },
    /// `C(m×n) = A(m×k) · B(k×n)`.
    Gemm {
        /// Rows of A and C.
        m: u64,
        /// Columns of B and C.
        n: u64,
        /// Columns of A, rows of B.
        k: u64,
    },
}

impl Shape {
    /// Work of one iteration of `workload` in base units (bytes or FLOP).
    pub fn work_per_iter(&self, workload: Workload) -> f64 {
        match *self {
            Shape::Copy { bytes } => {
                let factor = if workload == Workload::Dtod { 2.0 } else { 1.0 };
                bytes as f64 * factor
            }
            Shape::Gemm { m, n, k } => 2.0 * m as f64 * n as f64 * k as f64,
        }
    }

    /// Bytes of device (or host, for the stand-in) memory one tenant allocates.
    pub fn footprint_bytes(&self) -> u64 {
        match *self {
            Shape::Copy { bytes } => 2 * bytes,
            Shape::Gemm { m, n, k } => 4 * (m * k + k * n + m * n),
        }
    }

    /// A short description: `32 MB`, `1024×1024×1024`.
    pub fn describe(&self) -> String {
        match *self {
            Shape::Copy { bytes } => format!("{} MB", bytes as f64 / 1e6),
            Shape::Gemm { m, n, k } => format!("{m}×{n}×{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_list_orders_and_dedups() {
        let w = Workload::parse_list("gemm-large, htod,htod").unwrap();
        assert_eq!(w, vec![Workload::Htod, Workload::GemmLarge]);
        assert!(Workload::parse_list("htod,gemm").is_err());
        assert!(Workload::parse_list(" , ").is_err());
    }

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()).unwrap(), w);
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(json, format!("\"{}\"", w.name()));
        }
    }

    #[test]
    fn seed_sizes() {
        assert_eq!(
            Workload::GemmLarge.gpu_shape(1.0),
            Shape::Gemm {
                m: 8192,
                n: 8192,
                k: 16400
            }
        );
        assert_eq!(
            Workload::GemmLarge.gpu_shape(0.5),
            Shape::Gemm {
                m: 4096,
                n: 4096,
                k: 8200
            }
        );
        // The seed's 1024³ GEMM is 2.147 GFLOP; dtod counts read + write.
        let s = Workload::GemmSmall.gpu_shape(1.0);
        assert_eq!(s.work_per_iter(Workload::GemmSmall), 2.0 * 1024f64.powi(3));
        let d = Workload::Dtod.gpu_shape(1.0);
        assert_eq!(d.work_per_iter(Workload::Dtod), 768e6);
        assert_eq!(d.describe(), "384 MB");
    }

    #[test]
    fn scale_is_checked() {
        assert!(check_scale(0.0).is_err());
        assert!(check_scale(1.5).is_err());
        assert!(check_scale(f64::NAN).is_err());
        assert_eq!(check_scale(0.25).unwrap(), 0.25);
        assert_eq!(scale_dim(8192, 0.001), 8);
    }
}
