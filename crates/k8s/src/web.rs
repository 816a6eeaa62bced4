//! The controller's web view: `tessera k8s controller --listen ADDR` serves the same page as
//! `tessera serve` (`tessera_api::overview::page_asset`) at `/`, and at `/v1/overview` an
//! [`OverviewView`] built from the cluster state ([`build_overview`]):
//!
//! - every node's GPUs with their layout as the node's `TesseraNode` status reports it
//!   (`node` set on each GPU), MIG instances held by the running pods earmarked for them and
//!   MPS shares matched to the running pods earmarked for them;
//! - the pods that hold slices as the leases (`user` is the pod's `namespace/name`);
//! - the pods still waiting (gated, or ungated and not yet bound) as the queue, each with why;
//! - recent re-partitions: the layout changes of a GPU seen between two reads of the state
//!   since this process started ([`History`]);
//! - per-namespace usage of the pods that exist now.
//!
//! Read-only. `/v1/overview` needs `Authorization: Bearer TOKEN` unless the page is public
//! ([`WebAuth`]); a public page hides the holders' commands and the instances' UUIDs. The page
//! and its script carry no data and are served without a token.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use tessera_api::overview::{OverviewGpu, OverviewView, RepartitionView, UserUsageView};
use tessera_api::wire::{
    GpuView, InstanceView, RequestState, RequestView, ShareView, Slice, SliceAsk,
};
use tessera_model::Catalog;
use tessera_planner::RequestKind;

use crate::crd::{SliceMode, TesseraNode};
use crate::pods::{
    is_finished, is_gated, pod_key, requested_slice, Earmark, EarmarkedSlice, ERROR_ANNOTATION,
    GATE,
};

/// Re-partitions kept for the page.
pub const HISTORY_LEN: usize = 50;

/// Layout changes seen between reads of the cluster state.
#[derive(Debug, Default)]
pub struct History {
    last: BTreeMap<(String, u32), Vec<String>>,
    recent: Vec<RepartitionView>,
    total: u64,
}

impl History {
    /// Compare every MIG GPU's observed layout with the one seen last time; record each
    /// change at `now_ms`. A GPU seen for the first time records nothing.
    pub fn observe(&mut self, nodes: &[TesseraNode], now_ms: u64) {
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            for g in n.status.iter().flat_map(|s| s.gpus.iter()) {
                if g.mode != SliceMode::Mig {
                    continue;
                }
                let mut layout: Vec<String> = g
                    .instances
                    .iter()
                    .map(|i| format!("{}@{}", i.profile, i.start))
                    .collect();
                layout.sort();
                let key = (name.clone(), g.index);
                match self.last.get(&key) {
                    Some(old) if *old != layout => {
                        let was: BTreeSet<&String> = old.iter().collect();
                        let now: BTreeSet<&String> = layout.iter().collect();
                        self.recent.insert(
                            0,
                            RepartitionView {
                                node: Some(name.clone()),
                                gpu: g.index,
                                at_ms: now_ms,
                                took_ms: 0,
                                layout: layout.clone(),
                                destroyed: was.difference(&now).map(|s| s.to_string()).collect(),
                                created: now.difference(&was).map(|s| s.to_string()).collect(),
                            },
                        );
                        self.recent.truncate(HISTORY_LEN);
                        self.total += 1;
                    }
                    _ => {}
                }
                self.last.insert(key, layout);
            }
        }
    }
}

/// Milliseconds since the epoch of a Kubernetes time.
fn ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> u64 {
    u64::try_from(t.0.as_millisecond()).unwrap_or(0)
}

fn ask_of(kind: &RequestKind) -> SliceAsk {
    match kind {
        RequestKind::Mig(p) => SliceAsk::Mig {
            profile: p.to_string(),
        },
        RequestKind::Mps(m) => SliceAsk::Mps {
            memory_mib: m.memory_mib,
            sm_percent: u8::try_from(m.sm_percent).ok(),
        },
        RequestKind::Timeslice => SliceAsk::Share,
    }
}

/// What a pod asked for, as the page draws it (a pod whose request cannot be read shows its
/// first `nvidia.com/` resource as a MIG profile name).
fn pod_ask(p: &Pod) -> SliceAsk {
    match requested_slice(p) {
        Ok(k) => ask_of(&k),
        Err(_) => SliceAsk::Mig {
            profile: "(invalid request)".into(),
        },
    }
}

fn command_of(p: &Pod) -> Vec<String> {
    let Some(c) = p.spec.as_ref().and_then(|s| s.containers.first()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = c.command.clone().unwrap_or_default();
    out.extend(c.args.clone().unwrap_or_default());
    if out.is_empty() {
        out.extend(c.image.clone());
    }
    out
}

/// The page's document from the cluster state: `nodes` (their status), `pods`, at `now_ms`.
/// `public` hides commands and UUIDs.
pub fn build_overview(
    source: &str,
    nodes: &[TesseraNode],
    pods: &[Pod],
    catalog: &Catalog,
    history: &History,
    now_ms: u64,
    public: bool,
) -> OverviewView {
    // Pods that ask for a slice (or carry the gate), oldest first; IDs are their place.
    let mut ours: Vec<&Pod> = pods
        .iter()
        .filter(|p| !is_finished(p))
        .filter(|p| is_gated(p) || Earmark::of(p).is_some())
        .collect();
    ours.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(ms);
        let tb = b.metadata.creation_timestamp.as_ref().map(ms);
        ta.cmp(&tb).then_with(|| pod_key(a).cmp(&pod_key(b)))
    });
    let mut leases = Vec::new();
    let mut queue = Vec::new();
    // (node, GPU) → leased pods' (id, earmark).
    let mut held: BTreeMap<(String, u32), Vec<(u64, EarmarkedSlice)>> = BTreeMap::new();
    for (i, p) in ours.iter().enumerate() {
        let id = i as u64 + 1;
        let submitted_ms = p.metadata.creation_timestamp.as_ref().map(ms).unwrap_or(0);
        let started_ms = p
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(ms);
        let mark = Earmark::of(p);
        let bound = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        let mut r = RequestView {
            id,
            user: pod_key(p),
            uid: 0,
            ask: pod_ask(p),
            gpu_model: None,
            priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            state: RequestState::Queued,
            position: None,
            queue_length: None,
            submitted_ms,
            waited_ms: now_ms.saturating_sub(submitted_ms),
            running_ms: 0,
            slice: None,
            env: BTreeMap::new(),
            command: if public { Vec::new() } else { command_of(p) },
            exit_code: None,
            end_reason: None,
            wait_reason: None,
            cancel_requested: false,
            heartbeat_interval_ms: 0,
        };
        match (&mark, bound && !is_gated(p)) {
            (Some(m), true) => {
                r.state = RequestState::Leased;
                r.waited_ms = started_ms.map_or(0, |s| s.saturating_sub(submitted_ms));
                r.running_ms = started_ms.map_or(0, |s| now_ms.saturating_sub(s));
                r.slice = Some(match &m.slice {
                    EarmarkedSlice::Mig { profile, start } => Slice::Mig {
                        gpu: m.gpu,
                        profile: profile.clone(),
                        start: *start,
                        uuid: if public {
                            String::new()
                        } else {
                            mig_uuid(nodes, m).unwrap_or_default()
                        },
                    },
                    EarmarkedSlice::Mps {
                        memory_mib,
                        sm_percent,
                    } => Slice::Mps {
                        gpu: m.gpu,
                        memory_mib: *memory_mib,
                        sm_percent: u8::try_from(*sm_percent).unwrap_or(100),
                    },
                });
                held.entry((m.node.clone(), m.gpu))
                    .or_default()
                    .push((id, m.slice.clone()));
                leases.push(r);
            }
            _ => {
                r.wait_reason = Some(wait_reason(p, mark.as_ref(), bound));
                queue.push(r);
            }
        }
    }
    let qlen = queue.len() as u32;
    for (k, r) in queue.iter_mut().enumerate() {
        r.position = Some(k as u32 + 1);
        r.queue_length = Some(qlen);
    }

    let mut gpus = Vec::new();
    let mut sorted: Vec<&TesseraNode> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for n in sorted {
        let name = n.metadata.name.clone().unwrap_or_default();
        let Some(status) = n.status.as_ref() else {
            continue;
        };
        let problem = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Converged" && c.status == "False")
            .map(|c| c.message.clone());
        for g in &status.gpus {
            let model = catalog.get(&g.model);
            let here = held.get(&(name.clone(), g.index));
            let user_of = |id: u64| leases.iter().find(|r| r.id == id).map(|r| r.user.clone());
            let mut view = GpuView {
                index: g.index,
                uuid: if public {
                    String::new()
                } else {
                    g.uuid.clone()
                },
                model: g.model.clone(),
                mode: match g.mode {
                    SliceMode::Mig => "mig",
                    SliceMode::Mps => "mps",
                    SliceMode::Timeslice => "timeslice",
                }
                .into(),
                drained: false,
                instances: Vec::new(),
                shares: Vec::new(),
                memory_mib: 0,
                capacity: 0,
                busy: 0,
                reserved_for: None,
                last_error: problem
                    .as_ref()
                    .filter(|m| m.contains(&format!("GPU {} ", g.index)))
                    .cloned(),
                quarantined: Vec::new(),
            };
            let mut instance_memory_mib = Vec::new();
            let mut instance_slots = Vec::new();
            let mut instance_compute_slots = Vec::new();
            match g.mode {
                SliceMode::Mig => {
                    let mut insts = g.instances.clone();
                    insts.sort_by_key(|i| i.start);
                    for i in insts {
                        let lease = here.and_then(|h| {
                            h.iter().find_map(|(id, s)| match s {
                                EarmarkedSlice::Mig { profile, start }
                                    if profile.eq_ignore_ascii_case(&i.profile)
                                        && *start == i.start =>
                                {
                                    Some(*id)
                                }
                                _ => None,
                            })
                        });
                        let p =
                            model.and_then(|m| m.profile_named(&i.profile).map(|p| m.profile(p)));
                        instance_memory_mib.push(p.and_then(|p| p.memory_mib).unwrap_or(0));
                        instance_slots.push(p.map(|p| p.memory_slices).unwrap_or(1));
                        instance_compute_slots.push(p.map(|p| p.compute_slices).unwrap_or(0));
                        let busy = i.busy || lease.is_some();
                        view.busy += u32::from(busy);
                        view.instances.push(InstanceView {
                            profile: i.profile.clone(),
                            start: i.start,
                            uuid: if public { None } else { i.uuid.clone() },
                            lease,
                            user: lease.and_then(user_of),
                            busy,
                        });
                    }
                }
                SliceMode::Mps | SliceMode::Timeslice => {
                    view.memory_mib = model.and_then(|m| m.total_memory_mib).unwrap_or(0);
                    let mut free: Vec<(u64, EarmarkedSlice)> = here
                        .into_iter()
                        .flatten()
                        .filter(|(_, s)| matches!(s, EarmarkedSlice::Mps { .. }))
                        .cloned()
                        .collect();
                    for s in &g.mps {
                        let want = EarmarkedSlice::Mps {
                            memory_mib: s.memory_mib,
                            sm_percent: s.sm_percent,
                        };
                        let k = free.iter().position(|(_, e)| *e == want);
                        let lease = k.map(|k| free.remove(k).0);
                        view.busy += u32::from(lease.is_some());
                        view.shares.push(ShareView {
                            lease,
                            user: lease.and_then(user_of),
                            memory_mib: s.memory_mib,
                            sm_percent: u8::try_from(s.sm_percent).unwrap_or(100),
                        });
                    }
                }
            }
            gpus.push(OverviewGpu {
                node: Some(name.clone()),
                compute_slots: model.map(|m| m.compute_slices).unwrap_or(0),
                memory_slots: model.map(|m| m.memory_slices).unwrap_or(0),
                total_memory_mib: model.and_then(|m| m.total_memory_mib).unwrap_or(0),
                instance_memory_mib,
                instance_slots,
                instance_compute_slots,
                gpu: view,
            });
        }
    }

    // Per-namespace usage of the pods there now.
    let mut users: BTreeMap<String, UserUsageView> = BTreeMap::new();
    for (r, leased) in leases
        .iter()
        .map(|r| (r, true))
        .chain(queue.iter().map(|r| (r, false)))
    {
        let ns = r.user.split('/').next().unwrap_or("").to_string();
        let u = users.entry(ns.clone()).or_insert(UserUsageView {
            user: ns,
            leased: 0,
            queued: 0,
            leases_total: 0,
            slice_seconds: 0,
        });
        if leased {
            u.leased += 1;
            u.leases_total += 1;
            u.slice_seconds += r.running_ms / 1000;
        } else {
            u.queued += 1;
        }
    }

    OverviewView {
        source: source.to_string(),
        backend: "kubernetes".into(),
        now_ms,
        gpus,
        leases,
        queue,
        repartitions: history.recent.clone(),
        repartitions_total: history.total,
        users: users.into_values().collect(),
        commands_hidden: public,
    }
}

fn mig_uuid(nodes: &[TesseraNode], m: &Earmark) -> Option<String> {
    let EarmarkedSlice::Mig { profile, start } = &m.slice else {
        return None;
    };
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(m.node.as_str()))?
        .status
        .as_ref()?
        .gpus
        .iter()
        .find(|g| g.index == m.gpu)?
        .instances
        .iter()
        .find(|i| i.profile.eq_ignore_ascii_case(profile) && i.start == *start)?
        .uuid
        .clone()
}

fn wait_reason(p: &Pod, mark: Option<&Earmark>, bound: bool) -> String {
    let error = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ERROR_ANNOTATION));
    match (mark, is_gated(p)) {
        (_, _) if error.is_some() => error.cloned().unwrap_or_default(),
        (Some(m), true) => format!("slice {m} earmarked; waiting for the node to create it"),
        (Some(m), false) if !bound => {
            format!("slice {m} ready; waiting for kube-scheduler to bind the pod")
        }
        (Some(m), false) => format!("bound to {}; waiting for its slice", m.node),
        (None, _) => format!(
            "no slice earmarked yet: no GPU had room in the controller's last plan (the `{GATE}` gate stays until one does)"
        ),
    }
}

/// Who may read `/v1/overview`.
#[derive(Debug, Clone, Default)]
pub struct WebAuth {
    /// The bearer token.
    pub token: Option<String>,
    /// Anyone may read it (commands and UUIDs hidden); a wrong token is still refused.
    pub public: bool,
}

/// Compare in time independent of where the strings differ.
fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The web view's state.
#[derive(Clone)]
pub struct WebState {
    client: kube::Client,
    catalog: Arc<Catalog>,
    auth: WebAuth,
    source: String,
    history: Arc<Mutex<History>>,
}

impl WebState {
    /// The view of the cluster behind `client`, titled `source`.
    pub fn new(client: kube::Client, catalog: Catalog, auth: WebAuth, source: &str) -> Self {
        WebState {
            client,
            catalog: Arc::new(catalog),
            auth,
            source: source.to_string(),
            history: Arc::default(),
        }
    }

    /// Read the cluster and build the document (`public`: commands and UUIDs hidden).
    pub async fn overview(&self, public: bool) -> Result<OverviewView, kube::Error> {
        let nodes = Api::<TesseraNode>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let now_ms =
            u64::try_from(k8s_openapi::jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.observe(&nodes, now_ms);
        Ok(build_overview(
            &self.source,
            &nodes,
            &pods,
            &self.catalog,
            &h,
            now_ms,
            public,
        ))
    }
}

fn error(code: StatusCode, msg: &str) -> Response {
    (code, Json(json!({"error": msg}))).into_response()
}

async fn overview(State(s): State<WebState>, headers: HeaderMap) -> Response {
    let presented = headers.get(header::AUTHORIZATION).map(|v| {
        v.to_str()
            .unwrap_or("")
            .strip_prefix("Bearer ")
            .unwrap_or("")
            .trim()
    });
    let public = match (presented, &s.auth.token) {
        (None, _) if s.auth.public => true,
        (Some(p), Some(t)) if token_matches(p, t) => false,
        _ => {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token; send `Authorization: Bearer TOKEN` (the controller's --web-token-file)",
            )
        }
    };
    match s.overview(public).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            &format!("the Kubernetes API could not be read: {e}"),
        ),
    }
}

async fn page(uri: Uri) -> Response {
    match tessera_api::overview::page_asset(uri.path()) {
        Some((body, ct)) => ([(header::CONTENT_TYPE, ct)], body).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such page; the web view is at /"),
    }
}

/// The web view's routes: the page at `/` (and its script and style sheet), the document at
/// `/v1/overview`.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/app.js", get(page))
        .route("/style.css", get(page))
        .route("/v1/overview", get(overview))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page; the web view is at /") })
        .with_state(state)
}

/// Serve the web view on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
