//! The web view's data: one JSON document (`GET /v1/overview`) with every GPU's slices, the
//! queue, recent re-partitions and per-user usage.
//!
//! The page (`GET /` of `tessera serve --listen`) draws nothing but this document, so any
//! server that can fill an [`OverviewView`] — the daemon, or a cluster controller with one
//! entry per node GPU (`node` set) — can serve the same page unchanged: the page, its script
//! and its style sheet are here ([`page_asset`]), with no HTTP dependency, and the script
//! fetches `v1/overview` relative to the page with the bearer token it was given.

use serde::{Deserialize, Serialize};

use crate::wire::{GpuView, RequestView};

/// Body of `GET /v1/overview`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OverviewView {
    /// Who made the document (`tessera serve on HOST`, or a controller's name): the page's title.
    pub source: String,
    /// `nvml`, `sim:PATH`, or what the serving side names its GPUs' origin.
    pub backend: String,
    /// When the document was made, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// Every GPU with its slices and their holders' lease IDs.
    pub gpus: Vec<OverviewGpu>,
    /// Leased requests (the holders of the GPUs' slices), by ID; join on `lease`.
    pub leases: Vec<RequestView>,
    /// Queued requests in queue order, each with its wait reason.
    pub queue: Vec<RequestView>,
    /// Recent re-partitions, newest first.
    pub repartitions: Vec<RepartitionView>,
    /// Re-partitions since the state was created.
    pub repartitions_total: u64,
    /// Per-user usage, by user name.
    pub users: Vec<UserUsageView>,
    /// Holders' commands are hidden (the page is public: `web_public: true`).
    #[serde(default)]
    pub commands_hidden: bool,
}

/// One GPU of the overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OverviewGpu {
    /// The machine (Kubernetes node) the GPU is in; `None` for the daemon's own GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Compute slices of the whole GPU (MIG: 7 on A100/H100), the width of the slice grid.
    pub compute_slots: u8,
    /// Memory slices of the whole GPU (MIG: 8 on A100/H100), the placements `start` counts.
    pub memory_slots: u8,
    /// Device memory in MiB.
    pub total_memory_mib: u64,
    /// Memory of each MIG instance on this GPU, MiB, in the order of `gpu.instances`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_memory_mib: Vec<u64>,
    /// Memory slices each MIG instance covers (its width on the grid), in the order of
    /// `gpu.instances`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_slots: Vec<u8>,
    /// Compute slices of each MIG instance, in the order of `gpu.instances`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_compute_slots: Vec<u8>,
    /// The GPU as `GET /v1/status` shows it.
    pub gpu: GpuView,
}

/// One re-partition the daemon applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RepartitionView {
    /// The machine (Kubernetes node) of the GPU; `None` for the daemon's own GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// GPU index.
    pub gpu: u32,
    /// When it finished, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How long it took, milliseconds.
    pub took_ms: u64,
    /// The new layout, `PROFILE@START` instances.
    pub layout: Vec<String>,
    /// Instances destroyed.
    pub destroyed: Vec<String>,
    /// Instances created.
    pub created: Vec<String>,
}

/// One user's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UserUsageView {
    /// User name.
    pub user: String,
    /// Leases held now.
    pub leased: u32,
    /// Requests waiting now.
    pub queued: u32,
    /// Leases granted since the state was created.
    pub leases_total: u64,
    /// Whole seconds of slices held since the state was created (one slice for one second
    /// is 1).
    pub slice_seconds: u64,
}

/// The web view's page.
pub const INDEX_HTML: &str = include_str!("web/index.html");
/// The page's script (plain JavaScript, nothing to fetch but `v1/overview`).
pub const APP_JS: &str = include_str!("web/app.js");
/// The page's style sheet.
pub const STYLE_CSS: &str = include_str!("web/style.css");

/// The web view's file at `path` (`/`, `/index.html`, `/app.js`, `/style.css`): its body and
/// content type. The files hold no data; serve them without authentication.
pub fn page_asset(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/" | "/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    })
}
