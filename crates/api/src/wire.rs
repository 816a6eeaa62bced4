//! The API's wire format (version 1): the JSON bodies the daemon accepts and returns.
//!
//! These types are the contract between `tessera run`/`ps`/`status` and the daemon, and the
//! format of `-o json`. They are converted from the internal state, never the other way round,
//! so internals may change without breaking users. Every path starts with `/v1/`.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/requests` | [`SubmitBody`] | 201 [`RequestView`] |
//! | `GET /v1/requests` | | 200 `[RequestView]` (own; root: all) |
//! | `GET /v1/requests/{id}` | | 200 [`RequestView`] |
//! | `GET /v1/requests/{id}/wait?timeout_ms=N` | | 200 [`RequestView`] once not queued, or after N ms |
//! | `POST /v1/requests/{id}/heartbeat` | | 200 [`RequestView`] |
//! | `POST /v1/requests/{id}/release` | [`ReleaseBody`] | 200 [`RequestView`] |
//! | `POST /v1/requests/{id}/cancel` | | 200 [`RequestView`] |
//! | `GET /v1/status` | | 200 [`StatusView`] |
//! | `POST /v1/gpus/{n}/drain` | [`DrainBody`] | 200 [`GpuView`] (root) |
//! | `POST /v1/gpus/{n}/layout` | [`LayoutBody`] | 200 [`GpuView`] (root; forced re-partition) |
//! | `GET /v1/overview` | | 200 [`crate::overview::OverviewView`] (the web view's data) |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /` | | the web view (HTML; its data comes from `/v1/overview`) |
//!
//! Errors are `{"error": "..."}` with a 4xx status for the caller's mistakes and 5xx (with a
//! logged incident id instead of details) for the daemon's own.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The API version in every path.
pub const API_VERSION: &str = "v1";

/// What kind of slice a request asks for.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SliceAsk {
    /// A MIG instance of exactly this profile (`1g.10gb`, `3g.40gb`, ...).
    Mig {
        /// Profile name as the catalog spells it.
        profile: String,
    },
    /// Device memory: on a MIG GPU the smallest profile with at least this much memory, on an
    /// MPS GPU a client with this memory limit.
    Mem {
        /// Memory in MiB.
        memory_mib: u64,
        /// SM share in percent for MPS (default: the memory's share of the GPU, at least 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sm_percent: Option<u8>,
    },
    /// An MPS client with this memory limit, never a MIG instance (`tessera run --mps`).
    Mps {
        /// Memory in MiB.
        memory_mib: u64,
        /// SM share in percent (default: the memory's share of the GPU, at least 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sm_percent: Option<u8>,
    },
    /// One time-slice replica of a whole GPU.
    Share,
}

impl fmt::Display for SliceAsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceAsk::Mig { profile } => write!(f, "mig {profile}"),
            SliceAsk::Mem {
                memory_mib,
                sm_percent,
            } => {
                write!(f, "mem {}", format_mib(*memory_mib))?;
                if let Some(sm) = sm_percent {
                    write!(f, " sm {sm}%")?;
                }
                Ok(())
            }
            SliceAsk::Mps {
                memory_mib,
                sm_percent,
            } => {
                write!(f, "mps {}", format_mib(*memory_mib))?;
                if let Some(sm) = sm_percent {
                    write!(f, " sm {sm}%")?;
                }
                Ok(())
            }
            SliceAsk::Share => f.write_str("share"),
        }
    }
}

/// Body of `POST /v1/requests`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The slice wanted; `ask`, as in [`RequestView::ask`]. `slice`, its name before, is still
    /// accepted.
    #[serde(rename = "ask", alias = "slice")]
    pub slice: SliceAsk,
    /// Only GPUs of this catalog model (key or alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Higher first; default 0. Between -1000 and 1000.
    #[serde(default)]
    pub priority: i32,
    /// The command line, shown by `ps` (not run by the daemon).
    #[serde(default)]
    pub command: Vec<String>,
}

/// Body of `POST /v1/requests/{id}/release`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// CMD's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that killed CMD, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
}

/// Body of `POST /v1/gpus/{n}/drain`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// `true` to drain, `false` to put the GPU back in service.
    pub drain: bool,
}

/// Body of `POST /v1/gpus/{n}/layout`: a forced re-partition to `PROFILE@START` instances.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutBody {
    /// The whole desired layout, e.g. `["3g.40gb@0", "2g.20gb@4"]`.
    pub layout: Vec<String>,
}

/// Where a request is in its life.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting in the queue.
    Queued,
    /// Holding a slice; the command runs.
    Leased,
    /// The command ended and the client said so.
    Done,
    /// Cancelled before it got a slice.
    Cancelled,
    /// The client went away (process gone or no heartbeat) and the daemon ended it.
    Expired,
}

impl RequestState {
    /// Whether the request is still queued or leased.
    pub fn is_active(self) -> bool {
        matches!(self, RequestState::Queued | RequestState::Leased)
    }

    /// The name used in the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Queued => "queued",
            RequestState::Leased => "leased",
            RequestState::Done => "done",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
        }
    }

    /// Parse [`RequestState::as_str`] back.
    pub fn parse(s: &str) -> Option<RequestState> {
        Some(match s {
            "queued" => RequestState::Queued,
            "leased" => RequestState::Leased,
            "done" => RequestState::Done,
            "cancelled" => RequestState::Cancelled,
            "expired" => RequestState::Expired,
            _ => return None,
        })
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A granted slice.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Slice {
    /// A MIG GPU instance.
    Mig {
        /// GPU index.
        gpu: u32,
        /// Profile name.
        profile: String,
        /// Placement start.
        start: u8,
        /// `MIG-…` device UUID.
        uuid: String,
    },
    /// An MPS client share.
    Mps {
        /// GPU index.
        gpu: u32,
        /// Device memory limit in MiB.
        memory_mib: u64,
        /// Active thread (SM) percentage.
        sm_percent: u8,
    },
    /// One time-slice replica.
    Timeslice {
        /// GPU index.
        gpu: u32,
        /// Replica number on that GPU (0-based).
        replica: u32,
    },
}

impl Slice {
    /// The GPU index.
    pub fn gpu(&self) -> u32 {
        match self {
            Slice::Mig { gpu, .. } | Slice::Mps { gpu, .. } | Slice::Timeslice { gpu, .. } => *gpu,
        }
    }

    /// `mig`, `mps` or `timeslice` (the metrics label).
    pub fn type_name(&self) -> &'static str {
        match self {
            Slice::Mig { .. } => "mig",
            Slice::Mps { .. } => "mps",
            Slice::Timeslice { .. } => "timeslice",
        }
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slice::Mig {
                gpu,
                profile,
                start,
                ..
            } => write!(f, "gpu{gpu} {profile}@{start}"),
            Slice::Mps {
                gpu,
                memory_mib,
                sm_percent,
            } => write!(f, "gpu{gpu} mps {} {sm_percent}%", format_mib(*memory_mib)),
            Slice::Timeslice { gpu, replica } => write!(f, "gpu{gpu} share #{replica}"),
        }
    }
}

/// One request as the API shows it.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    /// Request (and lease) ID.
    pub id: u64,
    /// Owner's user name.
    pub user: String,
    /// Owner's uid.
    pub uid: u32,
    /// What was asked for.
    pub ask: SliceAsk,
    /// Model restriction, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// Priority (higher first).
    pub priority: i32,
    /// Life state.
    pub state: RequestState,
    /// 1-based place in the queue while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Requests in the queue now (while queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_length: Option<u32>,
    /// Submission time, milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// Milliseconds spent waiting (so far, or until the lease).
    pub waited_ms: u64,
    /// Milliseconds holding the slice (so far, or until the end); 0 before the lease.
    pub running_ms: u64,
    /// The slice, once leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<Slice>,
    /// Environment for CMD (owner and root only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The command line as submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// CMD's exit code once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the request ended (`exit`, `signal 9`, `cancelled by alice`, `client gone`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Why a queued request waits, per GPU it could use, as of the scheduler's last pass
    /// (e.g. `GPU 1: held by another user's MPS clients …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<String>,
    /// Set when a leased request was cancelled: the client must stop CMD.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Seconds between heartbeats the client should keep.
    pub heartbeat_interval_ms: u64,
}

/// One instance drawn by `tessera status`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Profile name.
    pub profile: String,
    /// Placement start.
    pub start: u8,
    /// `MIG-…` UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Leasing request, when visible to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Holder's user name, when visible to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether the instance is leased or has processes.
    pub busy: bool,
}

/// One MPS client or time-slice replica holder.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareView {
    /// Leasing request, when visible to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Holder's user name, when visible to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// MPS memory limit in MiB (0 for time-slicing).
    pub memory_mib: u64,
    /// MPS SM percentage (0 for time-slicing).
    pub sm_percent: u8,
}

/// One GPU in `GET /v1/status`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuView {
    /// GPU index.
    pub index: u32,
    /// `GPU-…` UUID.
    pub uuid: String,
    /// Catalog model key.
    pub model: String,
    /// `mig`, `mps` or `timeslice`.
    pub mode: String,
    /// No new leases.
    pub drained: bool,
    /// MIG instances, by start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceView>,
    /// MPS clients or time-slice holders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareView>,
    /// MPS: usable device memory in MiB; time-slicing: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_mib: u64,
    /// Time-slicing: replicas offered; MPS: most clients.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub capacity: u32,
    /// Slices (instances, clients or replicas) leased now.
    pub busy: u32,
    /// A request waiting for this GPU holds it (no new leases where they would delay it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for: Option<u64>,
    /// The last error met while changing this GPU, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Slices held back because an ended lease's processes still run on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
}

/// Whether a number is zero (fields left out of the JSON when so).
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Body of `GET /v1/status`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// `nvml` or `sim:PATH`.
    pub backend: String,
    /// Every GPU.
    pub gpus: Vec<GpuView>,
    /// Requests waiting (all users; the caller's own are listed in `ps`).
    pub queued: u32,
    /// Leases held (all users).
    pub leased: u32,
    /// Re-partitions done since the state was created.
    pub repartitions: u64,
}

/// Body of every error answer.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// Split `12.5 GiB` into its leading number and its (trimmed) unit; `None` when it does not
/// start with a number.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// A size or duration that does not parse, with the form to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// No number at the start of a size.
    #[error("`{text}` is not a size; write e.g. 12GiB or 512MiB")]
    NotASize {
        /// The text given.
        text: String,
    },
    /// A size's unit is not a memory unit.
    #[error("`{text}`: unknown unit `{unit}`; use MiB or GiB (e.g. 12GiB)")]
    SizeUnit {
        /// The text given.
        text: String,
        /// Its unit.
        unit: String,
    },
    /// A size below 1 MiB or absurdly large.
    #[error("`{text}` is out of range; give at least 1MiB")]
    SizeRange {
        /// The text given.
        text: String,
    },
    /// No number at the start of a duration.
    #[error("`{text}` is not a duration; write e.g. 30s, 5m or 2h")]
    NotADuration {
        /// The text given.
        text: String,
    },
    /// A duration's unit is not a time unit.
    #[error("`{text}`: unknown unit `{unit}`; use ms, s, m, h or d")]
    DurationUnit {
        /// The text given.
        text: String,
        /// Its unit.
        unit: String,
    },
    /// A negative or absurdly large duration.
    #[error("`{text}` is out of range")]
    DurationRange {
        /// The text given.
        text: String,
    },
}

/// Parse a memory size: `12GiB`, `12G`, `12gb`, `512MiB`, `512M`, `1.5GiB`, or a bare number
/// of MiB. Units are binary (`G` = GiB).
pub fn parse_size_mib(text: &str) -> Result<u64, ValueError> {
    let owned = || text.to_string();
    let (value, unit) = split_number(text).ok_or_else(|| ValueError::NotASize { text: owned() })?;
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mi" | "mib" => 1.0,
        "g" | "gb" | "gi" | "gib" => 1024.0,
        "t" | "tb" | "ti" | "tib" => 1024.0 * 1024.0,
        other => {
            return Err(ValueError::SizeUnit {
                text: owned(),
                unit: other.to_string(),
            })
        }
    };
    let mib = (value * factor).ceil();
    if !(1.0..=1e12).contains(&mib) {
        return Err(ValueError::SizeRange { text: owned() });
    }
    Ok(mib as u64)
}

/// Parse a duration: `250ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, ValueError> {
    let owned = || text.to_string();
    let (value, unit) =
        split_number(text).ok_or_else(|| ValueError::NotADuration { text: owned() })?;
    let factor = match unit {
        "ms" => 1.0,
        "" | "s" => 1000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        other => {
            return Err(ValueError::DurationUnit {
                text: owned(),
                unit: other.to_string(),
            })
        }
    };
    let ms = value * factor;
    if !(0.0..=1e15).contains(&ms) {
        return Err(ValueError::DurationRange { text: owned() });
    }
    Ok(ms.round() as u64)
}

/// `12 GiB`, `512 MiB`, `1.5 GiB`.
pub fn format_mib(mib: u64) -> String {
    if mib >= 1024 && mib.trailing_zeros() >= 10 {
        format!("{}GiB", mib / 1024)
    } else if mib >= 1024 {
        format!("{:.1}GiB", mib as f64 / 1024.0)
    } else {
        format!("{mib}MiB")
    }
}

/// `0.4s`, `12s`, `3m05s`, `2h10m`.
pub fn format_ms(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size_mib("12GiB").unwrap(), 12 * 1024);
        assert_eq!(parse_size_mib("12g").unwrap(), 12 * 1024);
        assert_eq!(parse_size_mib("512MiB").unwrap(), 512);
        assert_eq!(parse_size_mib("1.5G").unwrap(), 1536);
        assert_eq!(parse_size_mib("100").unwrap(), 100);
        assert!(parse_size_mib("12 parsecs")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_size_mib("GiB").is_err());
        assert!(parse_size_mib("0").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("2").unwrap(), 2000);
        assert!(parse_duration_ms("5 fortnights").is_err());
    }

    #[test]
    fn asks_round_trip_through_json() {
        let asks = [
            SliceAsk::Mig {
                profile: "3g.40gb".into(),
            },
            SliceAsk::Mem {
                memory_mib: 12288,
                sm_percent: Some(25),
            },
            SliceAsk::Mps {
                memory_mib: 4096,
                sm_percent: None,
            },
            SliceAsk::Share,
        ];
        for a in asks {
            let text = serde_json::to_string(&a).unwrap();
            assert_eq!(
                serde_json::from_str::<SliceAsk>(&text).unwrap(),
                a,
                "{text}"
            );
        }
        let body: SubmitBody =
            serde_json::from_str(r#"{"ask": {"kind": "mig", "profile": "1g.10gb"}}"#).unwrap();
        assert_eq!(body.priority, 0);
        // The request's field has the response's name; the old name still parses.
        let old: SubmitBody =
            serde_json::from_str(r#"{"slice": {"kind": "mig", "profile": "1g.10gb"}}"#).unwrap();
        assert_eq!(old, body);
        assert!(serde_json::to_string(&body)
            .unwrap()
            .starts_with(r#"{"ask":"#));
        assert!(serde_json::from_str::<SubmitBody>(
            r#"{"ask": {"kind": "share"}, "slice": {"kind": "share"}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<SubmitBody>(r#"{"slice": {"kind": "tpu"}}"#).is_err());
        assert!(serde_json::from_str::<SubmitBody>(
            r#"{"slice": {"kind": "share"}, "colour": "red"}"#
        )
        .is_err());
    }

    #[test]
    fn formats_are_short() {
        assert_eq!(format_mib(12288), "12GiB");
        assert_eq!(format_mib(1536), "1.5GiB");
        assert_eq!(format_ms(1234), "1.2s");
        assert_eq!(format_ms(185_000), "3m05s");
    }
}
