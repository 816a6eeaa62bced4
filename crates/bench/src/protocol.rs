//! The line protocol between the bench (parent) and its tenant processes.
//!
//! The parent starts each tenant as a fresh process with the [`TenantSpec`] as JSON in the
//! environment variable [`SPEC_ENV`]. The tenant writes one line per [`TenantMessage`] to stdout,
//! as [`LINE_PREFIX`] followed by JSON (other stdout lines are ignored, so a test harness can be a
//! tenant). The parent writes `go <unix-ns>` to a measuring tenant's stdin once every tenant of
//! the group is [`TenantMessage::Ready`]; all of them then start at that instant. End of stdin
//! before `go` means "abort": the tenant exits without measuring.
//!
//! ```text
//! parent                          tenant i (N of them)
//!   spawn(SPEC_ENV=spec) ──────▶  set up (context, buffers, warm-up, calibrate)
//!   ◀────────────── TESSERA-TENANT {"ready":{..}}
//!   (all N ready) go <t0> ─────▶  sleep until t0; run batches for `duration_s`
//!   ◀────────────── TESSERA-TENANT {"result":{..}}     (or {"error":".."})
//! ```

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::workload::{Shape, Workload};

/// Environment variable holding the tenant's spec as JSON.
pub const SPEC_ENV: &str = "TESSERA_BENCH_TENANT_SPEC";
/// Prefix of every protocol line a tenant writes to stdout.
pub const LINE_PREFIX: &str = "TESSERA-TENANT ";
/// Protocol version; parent and tenant are the same binary, so a mismatch is a bug.
pub const PROTOCOL_VERSION: u32 = 1;

/// Which code runs the workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// CUDA driver API and cuBLAS on an NVIDIA GPU.
    Cuda,
    /// Plain CPU loops measured the same way; tests the orchestration without a GPU.
    CpuStandin,
}

impl Backend {
    /// The name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cuda => "cuda",
            Backend::CpuStandin => "cpu-standin",
        }
    }
}

/// What a tenant process is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Report the device it sees, then exit.
    Probe,
    /// Run one workload for `duration_s` after the start signal.
    Measure {
        /// The workload.
        workload: Workload,
        /// Its size.
        shape: Shape,
        /// Seconds to measure.
        duration_s: f64,
    },
}

/// Everything a tenant needs; passed as JSON in [`SPEC_ENV`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSpec {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Tenant number within its group (0-based).
    pub tenant: u32,
    /// The backend.
    pub backend: Backend,
    /// The job.
    pub role: Role,
}

impl TenantSpec {
    /// A spec in this binary's protocol version ([`PROTOCOL_VERSION`]).
    pub fn new(tenant: u32, backend: Backend, role: Role) -> TenantSpec {
        TenantSpec {
            protocol: PROTOCOL_VERSION,
            tenant,
            backend,
            role,
        }
    }

    /// Decode from the environment variable's value.
    pub fn from_json(text: &str) -> Result<TenantSpec, BenchError> {
        let spec: TenantSpec = serde_json::from_str(text)
            .map_err(|e| BenchError::Protocol(format!("bad {SPEC_ENV}: {e}")))?;
        if spec.protocol != PROTOCOL_VERSION {
            return Err(BenchError::Protocol(format!(
                "tenant spec has protocol {}, this binary speaks {PROTOCOL_VERSION}",
                spec.protocol
            )));
        }
        Ok(spec)
    }
}

/// The device a tenant sees.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device name (`NVIDIA H100 80GB HBM3`, `NVIDIA A30 MIG 1g.6gb`, or the CPU stand-in's).
    pub name: String,
    /// Total memory in MiB, if known.
    pub memory_mib: Option<u64>,
    /// Streaming multiprocessors (or CPU threads for the stand-in).
    pub sm_count: Option<u32>,
    /// Compute capability `major.minor`.
    pub compute_capability: Option<String>,
}

/// A tenant's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantOutcome {
    /// Iterations completed.
    pub iterations: u64,
    /// Work completed, in base units (bytes or FLOP).
    pub work: f64,
    /// Seconds from the start instant to the end of the last batch.
    pub elapsed_s: f64,
    /// Start instant actually used, Unix nanoseconds.
    pub start_unix_ns: u64,
    /// End of the last batch, Unix nanoseconds.
    pub end_unix_ns: u64,
    /// How late the tenant began relative to the start signal, seconds (0 when on time).
    pub late_s: f64,
    /// `CUDA_VISIBLE_DEVICES` as the tenant saw it.
    pub visible_devices: Option<String>,
}

/// One line from a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TenantMessage {
    /// Set up and waiting for `go`.
    Ready {
        /// Iterations per timed batch, chosen during warm-up.
        batch: u64,
        /// Seconds spent setting up.
        setup_s: f64,
    },
    /// Probe answer.
    Probe(DeviceInfo),
    /// Measurement done.
    Result(TenantOutcome),
    /// Failure; the tenant exits after writing it.
    Error(String),
}

impl TenantMessage {
    /// The full line, prefix included, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing these plain types cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|e| format!("\"{e}\""));
        format!("{LINE_PREFIX}{json}")
    }

    /// Parse a stdout line: `None` for lines that are not protocol lines. The prefix may follow
    /// other text on the same line (a test harness prints `test x ... ` without a newline).
    pub fn parse_line(line: &str) -> Option<Result<TenantMessage, BenchError>> {
        let at = line.find(LINE_PREFIX)?;
        let rest = line[at + LINE_PREFIX.len()..].trim_end();
        Some(
            serde_json::from_str(rest)
                .map_err(|e| BenchError::Protocol(format!("unreadable tenant line `{rest}`: {e}"))),
        )
    }
}

/// The parent's start signal for an instant in Unix nanoseconds.
pub fn go_line(start_unix_ns: u64) -> String {
    format!("go {start_unix_ns}\n")
}

/// Parse the start signal; `None` if the line is not one.
pub fn parse_go(line: &str) -> Option<u64> {
    line.trim().strip_prefix("go ")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_noise_is_ignored() {
        let msgs = [
            TenantMessage::Ready {
                batch: 7,
                setup_s: 0.5,
            },
            TenantMessage::Error("out of memory".into()),
            TenantMessage::Probe(DeviceInfo {
                name: "NVIDIA A30".into(),
                memory_mib: Some(24576),
                sm_count: Some(56),
                compute_capability: Some("8.0".into()),
            }),
        ];
        for m in msgs {
            let line = m.to_line();
            assert!(!line.contains('\n'));
            assert_eq!(TenantMessage::parse_line(&line).unwrap().unwrap(), m);
        }
        assert!(TenantMessage::parse_line("running 1 test").is_none());
        let noisy = format!(
            "test tenant_entry ... {}",
            TenantMessage::Error("x".into()).to_line()
        );
        assert_eq!(
            TenantMessage::parse_line(&noisy).unwrap().unwrap(),
            TenantMessage::Error("x".into())
        );
        assert!(TenantMessage::parse_line("TESSERA-TENANT {bad")
            .unwrap()
            .is_err());
    }

    #[test]
    fn go_round_trips() {
        assert_eq!(parse_go(&go_line(123)), Some(123));
        assert_eq!(parse_go("stop"), None);
    }

    #[test]
    fn spec_version_is_checked() {
        let spec = TenantSpec {
            protocol: PROTOCOL_VERSION + 1,
            tenant: 0,
            backend: Backend::CpuStandin,
            role: Role::Probe,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(TenantSpec::from_json(&json).is_err());
        assert!(TenantSpec::from_json("{}").is_err());
    }
}
