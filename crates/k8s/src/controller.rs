//! The cluster controller: one level-triggered [`Controller::round`] reads every `TesseraNode`
//! and pod, plans the gated pods' slices over the whole cluster with the tessera planner, writes
//! each node's desired layout into its `TesseraNode` spec, earmarks a slice for each planned pod
//! and removes the pod's scheduling gate once its node reports the slice.
//!
//! # Race freedom
//! - A pod asks with the gate [`crate::pods::GATE`]; kube-scheduler does not look at it while
//!   gated, so nothing can schedule it onto a node whose slice does not exist yet.
//! - The controller earmarks one slice per pod (annotation + `kubernetes.io/hostname` node
//!   selector) in the same round that writes the layout holding it. An earmarked slice counts
//!   as **used** in every later plan, so it is never destroyed, moved or given to another pod,
//!   and a failed-over controller rebuilds the same state from the annotations (no memory of
//!   its own).
//! - Among pods asking for the same slice kind (same MIG profile, or same MPS limits), the
//!   planner's served set is handed out oldest first (creation time, then name): a later pod
//!   never takes a slice while an earlier one of the same kind keeps waiting.
//! - The gate comes off only when the node's status shows the slice (a MIG instance with its
//!   UUID and idle, or the MPS share), so the pod is scheduled onto a node that can run it and
//!   waits no longer than the slice takes to create.
//!
//! # Planner input
//! A node's GPUs come from its status (model, mode, observed instances); a node labelled
//! `tessera.dev/gpu-sharing` or nos's `nos.nebuly.com/gpu-partitioning` is planned in the
//! label's mode ([`crate::sharing`]). A MIG GPU's current
//! layout is its desired spec layout (the controller's own earlier decision, possibly not yet
//! applied) plus any busy instance the node observed; instances that are busy or earmarked by
//! a live pod are `used`. An MPS GPU's clients are the shares earmarked by live pods. The
//! nodes go to the planner's typed entry point (`plan_typed`: catalog models, placements, pod
//! `i` as request id `i`); a GPU whose instance is not a placement of its model is left out,
//! and a pod asking for a profile no GPU of the cluster has waits, without failing the round.
//!
//! # Incremental planning
//! Between rounds the controller keeps a `tessera_planner::incremental::Incremental` state
//! (owning an `Arc` of the catalog its models borrow from). Each planning round first brings
//! it in line with the round's typed nodes: GPUs that differ are `observe`d, and the state is
//! rebuilt when nodes or GPUs were added or removed, a GPU changed model or mode, or the state
//! drifted. The state is a cache, never the truth: the nodes are still read in full every round.
//! When exactly one MIG pod waits, the state places it (the full plan's answer for one request,
//! byte for byte: same slice, layout, creates and destroys); anything else (several waiting
//! pods, MPS or time-slice pods, no candidate GPU) is planned in full with `plan_typed` and the
//! outcome taken into the state. [`RoundReport::planned_incrementally`] counts the pods the
//! state placed; [`Controller::with_full_planning`] turns the state off.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde::Serialize;
use serde_json::json;
use tessera_model::{Catalog, GpuModel};
use tessera_planner::incremental::Incremental;
use tessera_planner::typed::{self, Ask, Instance, RequestId, Sharing, Slice};
use tessera_planner::{
    plan_typed, AssignedSlice, Assignment, MpsClientSpec, Name, PlanError, PlanOptions,
    RequestKind, RequestSpec,
};
use tokio::sync::Notify;

use crate::crd::{GpuLayout, MigInstance, MpsShare, SliceMode, TesseraNode};
use crate::lease::{LeaderElector, Leadership};
use crate::pods::{
    is_finished, is_gated, pod_key, requested_slice, Earmark, EarmarkedSlice, ERROR_ANNOTATION,
    GATE, HOSTNAME_LABEL, SLICE_ANNOTATION,
};
use crate::sharing::{labelled_modes, plan_mode, LabelledMode};

/// Why a controller round failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The apiserver refused or could not be reached.
    #[error("apiserver request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The planner refused its input (a bad catalog model or layout in a node's status).
    #[error("planning failed: {0}")]
    Plan(#[from] PlanError),
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    /// Gated pods without a slice at the start of the round.
    pub waiting: usize,
    /// Pods earmarked this round, with their slice (`ns/name=NODE/GPU/SLICE`).
    pub earmarked: Vec<String>,
    /// Pods whose gate was removed this round.
    pub released: Vec<String>,
    /// Pods the plan could not serve this round.
    pub unassigned: Vec<String>,
    /// Pods whose request cannot be read (annotated with the reason).
    pub invalid: Vec<String>,
    /// Nodes whose spec was written.
    pub spec_writes: Vec<String>,
    /// MIG instances the written layouts create plus destroy.
    pub operations: usize,
    /// GPUs left out of the plan because their node's sharing label asks for the other mode
    /// than the slices on them (see [`crate::sharing`]), with the reason.
    pub not_planned: Vec<String>,
    /// Pods placed by the incremental planner state instead of a full plan (one waiting MIG
    /// pod; the answer is the full plan's).
    pub planned_incrementally: usize,
}

/// The incremental planner state's type, as `self_cell` names it.
type IncrementalState<'c> = Incremental<'c>;

self_cell::self_cell!(
    /// The incremental planner state kept between rounds, owning the catalog its models
    /// borrow from.
    struct PlannerState {
        owner: Arc<Catalog>,
        #[not_covariant]
        dependent: IncrementalState,
    }
);

/// The controller. Everything it decides is read from the apiserver each round; it keeps only
/// the incremental planner state between rounds, a cache checked against every round's nodes.
#[derive(Clone)]
pub struct Controller {
    client: Client,
    catalog: Arc<Catalog>,
    opts: PlanOptions,
    field_manager: String,
    /// `None` until the first round that plans (shared by clones).
    state: Arc<Mutex<Option<PlannerState>>>,
    full_planning: bool,
}

fn kind_key(k: &RequestKind) -> String {
    match k {
        RequestKind::Mig(p) => format!("mig:{}", p.to_ascii_lowercase()),
        RequestKind::Mps(m) => format!("mps:{}:{}", m.memory_mib, m.sm_percent),
        RequestKind::Timeslice => "timeslice".into(),
    }
}

/// One GPU of the planner's input, with where it lives.
struct PlannedGpu {
    index: u32,
    mode: SliceMode,
    held_mps: Vec<MpsShare>,
    /// MIG: the layout given to the planner (kept if the plan does not list the GPU).
    current: Vec<MigInstance>,
}

impl Controller {
    /// A controller planning with `opts` (policy and MPS limits).
    pub fn new(client: Client, catalog: Catalog, opts: PlanOptions) -> Self {
        Controller {
            client,
            catalog: Arc::new(catalog),
            opts,
            field_manager: "tessera-controller".into(),
            state: Arc::new(Mutex::new(None)),
            full_planning: false,
        }
    }

    /// Plan every round in full, without the incremental state (the same writes; for tests and
    /// comparisons).
    pub fn with_full_planning(mut self, full: bool) -> Self {
        self.full_planning = full;
        self
    }

    /// Plan the round's `requests` on the nodes: the planner's result in the controller's
    /// names, the node names and each planned node's GPUs; `None` when no node has a GPU to
    /// plan.
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        nodes: &[TesseraNode],
        labelled: &BTreeMap<String, LabelledMode>,
        held: &BTreeMap<(String, u32), Vec<EarmarkedSlice>>,
        requests: &[RequestSpec],
        not_planned: &mut Vec<String>,
    ) -> Result<Option<(RoundPlan, Vec<String>, BTreeMap<String, Vec<PlannedGpu>>)>, PlanError>
    {
        if self.full_planning {
            let (mut problem, names, where_) =
                build_problem(&self.catalog, nodes, labelled, held, not_planned);
            if problem.nodes.is_empty() {
                return Ok(None);
            }
            let plan = plan_round(&mut problem, &names, requests, &self.opts)?;
            return Ok(Some((plan, names, where_)));
        }
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = guard.get_or_insert_with(|| {
            PlannerState::new(Arc::clone(&self.catalog), |_| {
                Incremental::new(&typed::Problem::default())
                    .expect("an empty problem always builds")
            })
        });
        state.with_dependent_mut(|catalog, state| {
            let (mut problem, names, where_) =
                build_problem(catalog, nodes, labelled, held, not_planned);
            if problem.nodes.is_empty() {
                return Ok(None);
            }
            let plan = plan_with_state(state, &mut problem, &names, requests, &self.opts)?;
            Ok(Some((plan, names, where_)))
        })
    }

    /// One level-triggered pass; safe to run any number of times (the same cluster state
    /// gives no further writes).
    pub async fn round(&self) -> Result<RoundReport, ControllerError> {
        let nodes_api: Api<TesseraNode> = Api::all(self.client.clone());
        let pods_api: Api<Pod> = Api::all(self.client.clone());
        let mut nodes = nodes_api.list(&ListParams::default()).await?.items;
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let pods = pods_api.list(&ListParams::default()).await?.items;
        let labelled = labelled_modes(
            &Api::<Node>::all(self.client.clone())
                .list(&ListParams::default())
                .await?
                .items,
        );
        let mut report = RoundReport::default();

        // Slices held by live pods, by (node, GPU).
        let mut held: BTreeMap<(String, u32), Vec<EarmarkedSlice>> = BTreeMap::new();
        for p in pods.iter().filter(|p| !is_finished(p)) {
            if let Some(e) = Earmark::of(p) {
                held.entry((e.node, e.gpu)).or_default().push(e.slice);
            }
        }

        // Gated pods waiting for a slice, oldest first.
        let mut waiting: Vec<(&Pod, RequestKind)> = Vec::new();
        for p in pods.iter().filter(|p| is_gated(p) && !is_finished(p)) {
            if Earmark::of(p).is_some() {
                continue;
            }
            match requested_slice(p) {
                Ok(kind) => waiting.push((p, kind)),
                Err(e) => {
                    report.invalid.push(pod_key(p));
                    let msg = e.to_string();
                    let has = p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ERROR_ANNOTATION));
                    if has != Some(&msg) {
                        self.patch_pod(
                            p,
                            json!({"metadata": {"annotations": {ERROR_ANNOTATION: msg}}}),
                        )
                        .await?;
                    }
                }
            }
        }
        waiting.sort_by(|(a, _), (b, _)| {
            let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
            ta.cmp(&tb).then_with(|| pod_key(a).cmp(&pod_key(b)))
        });
        report.waiting = waiting.len();

        let requests: Vec<RequestSpec> = waiting
            .iter()
            .map(|(p, k)| RequestSpec {
                id: pod_key(p),
                kind: k.clone(),
                priority: 1,
            })
            .collect();
        let planned = if waiting.is_empty() {
            None
        } else {
            self.plan(&nodes, &labelled, &held, &requests, &mut report.not_planned)?
        };
        if let Some((plan, node_names, where_)) = planned {
            report.planned_incrementally = plan.incremental;
            let assignments = oldest_first(&requests, &plan.assignments);
            report.unassigned = requests
                .iter()
                .filter(|r| !assignments.contains_key(&r.id))
                .map(|r| r.id.clone())
                .collect();

            // New MPS shares per (node, GPU).
            let mut new_mps: BTreeMap<(String, usize), Vec<MpsShare>> = BTreeMap::new();
            let mut touched: BTreeSet<String> = BTreeSet::new();
            for a in assignments.values() {
                touched.insert(a.node.to_string());
                if let AssignedSlice::Mps {
                    memory_mib,
                    sm_percent,
                } = a.slice
                {
                    new_mps
                        .entry((a.node.to_string(), a.gpu))
                        .or_default()
                        .push(MpsShare {
                            memory_mib,
                            sm_percent,
                        });
                }
            }
            for g in plan.gpus.iter().filter(|g| g.operations > 0) {
                touched.insert(node_names[g.node].clone());
                report.operations += g.operations;
            }
            // Layouts first: an earmark always points into a written layout.
            for node in &touched {
                let Some(planned) = where_.get(node) else {
                    continue;
                };
                let mut layouts = Vec::new();
                for (i, pg) in planned.iter().enumerate() {
                    let gp = plan
                        .gpus
                        .iter()
                        .find(|g| node_names[g.node] == *node && g.gpu == i);
                    let layout = match pg.mode {
                        SliceMode::Mig => GpuLayout {
                            index: pg.index,
                            mode: SliceMode::Mig,
                            instances: gp
                                .map(|g| g.layout.clone())
                                .unwrap_or_else(|| pg.current.clone()),
                            mps: Vec::new(),
                        },
                        _ => {
                            let mut shares = pg.held_mps.clone();
                            shares.extend(
                                new_mps.get(&(node.clone(), i)).cloned().unwrap_or_default(),
                            );
                            GpuLayout {
                                index: pg.index,
                                mode: pg.mode,
                                instances: Vec::new(),
                                mps: shares,
                            }
                        }
                    };
                    layouts.push(layout);
                }
                let current = nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
                    .map(|n| n.spec.gpus.clone());
                if current.as_ref() != Some(&layouts) {
                    nodes_api
                        .patch(
                            node,
                            &self.patch_params(),
                            &Patch::Merge(json!({"spec": {"gpus": layouts}})),
                        )
                        .await?;
                    report.spec_writes.push(node.clone());
                }
            }
            for (p, _) in &waiting {
                let key = pod_key(p);
                let Some(a) = assignments.get(&key) else {
                    continue;
                };
                let Some(pg) = where_.get(a.node.as_str()).and_then(|v| v.get(a.gpu)) else {
                    continue;
                };
                let slice = match &a.slice {
                    AssignedSlice::Mig { profile, start } => EarmarkedSlice::Mig {
                        profile: profile.to_string(),
                        start: *start,
                    },
                    AssignedSlice::Mps {
                        memory_mib,
                        sm_percent,
                    } => EarmarkedSlice::Mps {
                        memory_mib: *memory_mib,
                        sm_percent: *sm_percent,
                    },
                    AssignedSlice::Timeslice { .. } => continue,
                };
                let mark = Earmark {
                    node: a.node.to_string(),
                    gpu: pg.index,
                    slice,
                };
                self.patch_pod(
                    p,
                    json!({"metadata": {"annotations": {SLICE_ANNOTATION: mark.to_string(), ERROR_ANNOTATION: null}},
                           "spec": {"nodeSelector": {HOSTNAME_LABEL: a.node.to_string()}}}),
                )
                .await?;
                report.earmarked.push(format!("{key}={mark}"));
            }
        }

        // Gates come off once the node shows the slice.
        for p in pods.iter().filter(|p| is_gated(p) && !is_finished(p)) {
            let Some(mark) = Earmark::of(p) else {
                continue;
            };
            if !slice_ready(&nodes, &mark) {
                continue;
            }
            let gates: Vec<_> = p
                .spec
                .as_ref()
                .and_then(|s| s.scheduling_gates.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|g| g.name != GATE)
                .collect();
            self.patch_pod(
                p,
                json!({"metadata": {"resourceVersion": p.metadata.resource_version},
                       "spec": {"schedulingGates": gates}}),
            )
            .await?;
            report.released.push(pod_key(p));
        }
        Ok(report)
    }

    fn patch_params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..PatchParams::default()
        }
    }

    async fn patch_pod(&self, p: &Pod, body: serde_json::Value) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            p.metadata.namespace.as_deref().unwrap_or("default"),
        );
        api.patch(
            p.metadata.name.as_deref().unwrap_or(""),
            &self.patch_params(),
            &Patch::Merge(body),
        )
        .await?;
        Ok(())
    }

    /// Run rounds while leading: after every change to pods or `TesseraNode`s, and every
    /// `resync`, until `shutdown` completes. Followers only try to take the Lease.
    pub async fn run(
        &self,
        elector: LeaderElector,
        resync: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ControllerError> {
        let notify = Arc::new(Notify::new());
        let pods: Api<Pod> = Api::all(self.client.clone());
        let nodes: Api<TesseraNode> = Api::all(self.client.clone());
        let n1 = Arc::clone(&notify);
        let w1 = tokio::spawn(async move {
            let mut s = kube::runtime::watcher(pods, Default::default()).boxed();
            while s.next().await.is_some() {
                n1.notify_one();
            }
        });
        let n2 = Arc::clone(&notify);
        let w2 = tokio::spawn(async move {
            let mut s = kube::runtime::watcher(nodes, Default::default()).boxed();
            while s.next().await.is_some() {
                n2.notify_one();
            }
        });
        let n3 = Arc::clone(&notify);
        let labels: Api<Node> = Api::all(self.client.clone());
        let w3 = tokio::spawn(async move {
            let mut s = kube::runtime::watcher(labels, Default::default()).boxed();
            while s.next().await.is_some() {
                n3.notify_one();
            }
        });
        tokio::pin!(shutdown);
        let result = loop {
            let now = k8s_openapi::jiff::Timestamp::now();
            match elector.try_acquire_or_renew(now).await {
                Ok(Leadership::Leader { acquired }) => {
                    if acquired {
                        tracing::info!(identity = elector.identity(), "leading");
                    }
                    match self.round().await {
                        Ok(r) if r != RoundReport::default() => {
                            tracing::info!(?r, "round")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("round failed: {e}"),
                    }
                }
                Ok(Leadership::Follower { holder }) => {
                    tracing::debug!(?holder, "following");
                }
                Err(e) => tracing::warn!("lease: {e}"),
            }
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = notify.notified() => {}
                _ = tokio::time::sleep(resync) => {}
            }
        };
        w1.abort();
        w2.abort();
        w3.abort();
        result
    }
}

/// The planner's view of the cluster: typed nodes (catalog models, placements), their names,
/// and per planned node its GPUs.
fn build_problem<'c>(
    catalog: &'c Catalog,
    nodes: &[TesseraNode],
    labelled: &BTreeMap<String, LabelledMode>,
    held: &BTreeMap<(String, u32), Vec<EarmarkedSlice>>,
    not_planned: &mut Vec<String>,
) -> (
    typed::Problem<'c>,
    Vec<String>,
    BTreeMap<String, Vec<PlannedGpu>>,
) {
    let mut problem = typed::Problem::default();
    let mut node_names: Vec<String> = Vec::new();
    let mut where_: BTreeMap<String, Vec<PlannedGpu>> = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let Some(status) = n.status.as_ref().filter(|s| !s.gpus.is_empty()) else {
            continue;
        };
        let mut gpus = Vec::new();
        let mut planned = Vec::new();
        for g in &status.gpus {
            let Some(model) = catalog.get(&g.model) else {
                tracing::warn!(node = %name, gpu = g.index, model = %g.model, "GPU model not in the catalog; not planned");
                continue;
            };
            let held_here = held.get(&(name.clone(), g.index));
            let mode = match plan_mode(&name, labelled.get(&name), g) {
                Ok(m) => m,
                Err(why) => {
                    tracing::warn!("{why}");
                    not_planned.push(why.to_string());
                    continue;
                }
            };
            match mode {
                SliceMode::Mig => {
                    let busy: Vec<(String, u8)> = g
                        .instances
                        .iter()
                        .filter(|i| i.busy)
                        .map(|i| (i.profile.clone(), i.start))
                        .collect();
                    let desired: Vec<(String, u8)> =
                        match n.spec.gpus.iter().find(|l| l.index == g.index) {
                            Some(l) => l
                                .instances
                                .iter()
                                .map(|i| (i.profile.clone(), i.start))
                                .collect(),
                            None => g
                                .instances
                                .iter()
                                .map(|i| (i.profile.clone(), i.start))
                                .collect(),
                        };
                    let mut layout = busy.clone();
                    let placed_of = |p: &str, s: u8| model.parse_spec(&format!("{p}@{s}")).ok();
                    let mask_of = |p: &str, s: u8| placed_of(p, s).map(|pl| model.mask(pl));
                    let busy_mask: u32 = busy
                        .iter()
                        .filter_map(|(p, s)| mask_of(p, *s))
                        .fold(0, |a, m| a | m);
                    for (p, s) in desired {
                        if layout.contains(&(p.clone(), s)) {
                            continue;
                        }
                        match mask_of(&p, s) {
                            Some(m) if m & busy_mask == 0 => layout.push((p, s)),
                            _ => {}
                        }
                    }
                    layout.sort_by_key(|(_, s)| *s);
                    let current = layout
                        .iter()
                        .map(|(profile, start)| MigInstance {
                            profile: profile.clone(),
                            start: *start,
                        })
                        .collect();
                    let mut instances = Vec::with_capacity(layout.len());
                    let mut unknown = None;
                    for (profile, start) in layout {
                        let Some(placed) = placed_of(&profile, start) else {
                            unknown = Some(format!("{profile}@{start}"));
                            break;
                        };
                        let busy = busy.contains(&(profile.clone(), start))
                            || held_here.is_some_and(|h| {
                                h.contains(&EarmarkedSlice::Mig {
                                    profile: profile.clone(),
                                    start,
                                })
                            });
                        instances.push(Instance { placed, busy });
                    }
                    if let Some(bad) = unknown {
                        tracing::warn!(node = %name, gpu = g.index, instance = %bad, model = %model.key, "instance is not a placement of the GPU's model; not planned");
                        continue;
                    }
                    gpus.push(typed::Gpu {
                        model,
                        sharing: Sharing::mig(instances),
                    });
                    planned.push(PlannedGpu {
                        index: g.index,
                        mode: SliceMode::Mig,
                        held_mps: Vec::new(),
                        current,
                    });
                }
                SliceMode::Mps => {
                    let shares: Vec<MpsShare> = held_here
                        .into_iter()
                        .flatten()
                        .filter_map(|h| match h {
                            EarmarkedSlice::Mps {
                                memory_mib,
                                sm_percent,
                            } => Some(MpsShare {
                                memory_mib: *memory_mib,
                                sm_percent: *sm_percent,
                            }),
                            EarmarkedSlice::Mig { .. } => None,
                        })
                        .collect();
                    gpus.push(typed::Gpu {
                        model,
                        sharing: Sharing::Mps {
                            clients: shares
                                .iter()
                                .map(|s| MpsClientSpec {
                                    memory_mib: s.memory_mib,
                                    sm_percent: s.sm_percent,
                                })
                                .collect(),
                        },
                    });
                    planned.push(PlannedGpu {
                        index: g.index,
                        mode: SliceMode::Mps,
                        held_mps: shares,
                        current: Vec::new(),
                    });
                }
                SliceMode::Timeslice => {}
            }
        }
        if !gpus.is_empty() {
            problem.nodes.push(typed::Node { gpus });
            node_names.push(name.clone());
            where_.insert(name, planned);
        }
    }

    (problem, node_names, where_)
}

/// A Lease API for leader election in `namespace`.
pub fn lease_api(client: Client, namespace: &str) -> Api<Lease> {
    Api::namespaced(client, namespace)
}

/// Whether the node's status shows the earmarked slice ready for its pod.
fn slice_ready(nodes: &[TesseraNode], mark: &Earmark) -> bool {
    let Some(g) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(mark.node.as_str()))
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.gpus.iter().find(|g| g.index == mark.gpu))
    else {
        return false;
    };
    match &mark.slice {
        EarmarkedSlice::Mig { profile, start } => g.instances.iter().any(|i| {
            i.profile.eq_ignore_ascii_case(profile) && i.start == *start && i.uuid.is_some()
        }),
        EarmarkedSlice::Mps {
            memory_mib,
            sm_percent,
        } => g
            .mps
            .iter()
            .any(|s| s.memory_mib == *memory_mib && s.sm_percent == *sm_percent),
    }
}

/// A round's plan: per GPU of the outcome its new MIG layout (named as the controller writes
/// it), and the grants as named assignments (the names the controller writes into
/// annotations).
struct RoundPlan {
    gpus: Vec<PlannedLayout>,
    assignments: Vec<Assignment>,
    /// Requests the incremental state placed (0 when the full plan decided).
    incremental: usize,
}

/// One GPU of a round's plan.
struct PlannedLayout {
    node: usize,
    gpu: usize,
    /// MIG instances created plus destroyed.
    operations: usize,
    /// The GPU's MIG layout after the plan.
    layout: Vec<MigInstance>,
}

/// The MIG ask of a profile name: on the first GPU model of the cluster that has the profile
/// (GPUs of other models serve it with their profile of the same name); `None` when no GPU of
/// the cluster has it (the request waits).
fn mig_ask<'c>(problem: &typed::Problem<'c>, profile: &str) -> Option<Ask<'c>> {
    let mut seen: Vec<&GpuModel> = Vec::new();
    for g in problem.nodes.iter().flat_map(|n| &n.gpus) {
        if seen.iter().any(|m| std::ptr::eq(*m, g.model)) {
            continue;
        }
        seen.push(g.model);
        if let Some(p) = g.model.profile_named(profile) {
            return Some(Ask::Mig {
                model: g.model,
                profile: p,
            });
        }
    }
    None
}

/// The typed requests of `requests` (request `i` is `RequestId(i)`); a MIG request for a
/// profile no GPU of the cluster has is left out (it waits).
fn typed_requests<'c>(
    problem: &typed::Problem<'c>,
    requests: &[RequestSpec],
) -> Vec<typed::Request<'c>> {
    requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let ask = match &r.kind {
                RequestKind::Mig(profile) => mig_ask(problem, profile)?,
                RequestKind::Mps(m) => Ask::Mps(*m),
                RequestKind::Timeslice => Ask::Timeslice,
            };
            Some(typed::Request {
                id: RequestId(i as u64),
                ask,
                priority: r.priority,
            })
        })
        .collect()
}

/// A typed plan's GPUs and grants in the controller's names; node `k` is `node_names[k]`.
fn named_plan(
    gpus: &[typed::GpuOutcome<'_>],
    grants: &[typed::Grant<'_>],
    node_names: &[String],
    requests: &[RequestSpec],
    incremental: usize,
) -> RoundPlan {
    let assignments = grants
        .iter()
        .map(|a| Assignment {
            request: requests[a.request.0 as usize].id.clone(),
            node: Name::from(node_names[a.node].as_str()),
            gpu: a.gpu,
            slice: match a.slice {
                Slice::Mig(p) => AssignedSlice::Mig {
                    profile: Name::from(a.model.profile(p.profile).name.as_str()),
                    start: p.start,
                },
                Slice::Mps(m) => AssignedSlice::Mps {
                    memory_mib: m.memory_mib,
                    sm_percent: m.sm_percent,
                },
                Slice::Timeslice => AssignedSlice::Timeslice { timeslice: true },
            },
        })
        .collect();
    let gpus = gpus
        .iter()
        .map(|g| PlannedLayout {
            node: g.node,
            gpu: g.gpu,
            operations: g.create.len() + g.destroy.len(),
            layout: g
                .layout
                .iter()
                .map(|r| MigInstance {
                    profile: g.model.profile(r.profile).name.clone(),
                    start: r.start,
                })
                .collect(),
        })
        .collect();
    RoundPlan {
        gpus,
        assignments,
        incremental,
    }
}

/// Plan `requests` (request `i` is `RequestId(i)`) on the typed nodes with the planner's typed
/// entry point; node `k` of the problem is `node_names[k]`.
fn plan_round(
    problem: &mut typed::Problem<'_>,
    node_names: &[String],
    requests: &[RequestSpec],
    opts: &PlanOptions,
) -> Result<RoundPlan, PlanError> {
    problem.requests = typed_requests(problem, requests);
    let outcome = plan_typed(problem, opts)?;
    Ok(named_plan(
        &outcome.gpus,
        &outcome.grants,
        node_names,
        requests,
        0,
    ))
}

/// Bring the incremental state in line with the round's nodes: `observe` every GPU that
/// differs, `rebuild` when nodes or GPUs were added or removed, a GPU changed model or mode, or
/// the state drifted. `false` when the state could not be built (the full plan decides and
/// reports the input's problem).
fn sync_state<'c>(state: &mut Incremental<'c>, problem: &typed::Problem<'c>) -> bool {
    if !state.drifted() {
        let have = state.to_problem();
        let same_shape = have.nodes.len() == problem.nodes.len()
            && have.nodes.iter().zip(&problem.nodes).all(|(a, b)| {
                a.gpus.len() == b.gpus.len()
                    && a.gpus.iter().zip(&b.gpus).all(|(x, y)| {
                        std::ptr::eq(x.model, y.model) && x.sharing.mode() == y.sharing.mode()
                    })
            });
        if same_shape {
            let mut ok = true;
            'nodes: for (n, (a, b)) in have.nodes.iter().zip(&problem.nodes).enumerate() {
                for (g, (x, y)) in a.gpus.iter().zip(&b.gpus).enumerate() {
                    if x.sharing != y.sharing && state.observe(n, g, y).is_err() {
                        ok = false;
                        break 'nodes;
                    }
                }
            }
            if ok {
                return true;
            }
        }
    }
    state.rebuild(problem).is_ok()
}

/// Plan the round with the incremental state: one waiting MIG request is placed by the state
/// (exactly the full plan's answer for it, see `tessera_planner::incremental`); anything else,
/// or a fallback, is planned in full and the outcome taken into the state. Batches go to the
/// full plan even when small: it orders a batch by size, one-by-one placement may differ.
fn plan_with_state<'c>(
    state: &mut Incremental<'c>,
    problem: &mut typed::Problem<'c>,
    node_names: &[String],
    requests: &[RequestSpec],
    opts: &PlanOptions,
) -> Result<RoundPlan, PlanError> {
    let synced = sync_state(state, problem);
    problem.requests = typed_requests(problem, requests);
    if synced && requests.len() == 1 && problem.requests.len() == 1 {
        if let Ok(p) = state.place(&problem.requests[0]) {
            return Ok(named_plan(
                std::slice::from_ref(&p.gpu),
                std::slice::from_ref(&p.grant),
                node_names,
                requests,
                1,
            ));
        }
    }
    let outcome = plan_typed(problem, opts)?;
    if synced {
        // An outcome that does not fit marks the state drifted: rebuilt next round.
        let _ = state.apply(&outcome);
    }
    Ok(named_plan(
        &outcome.gpus,
        &outcome.grants,
        node_names,
        requests,
        0,
    ))
}

/// The plan's assignments, with the slices of each kind handed to the oldest requests of that
/// kind (requests are in age order; same-kind slices are interchangeable).
fn oldest_first(
    requests: &[RequestSpec],
    assignments: &[Assignment],
) -> BTreeMap<String, Assignment> {
    let by_id: BTreeMap<&str, &Assignment> = assignments
        .iter()
        .map(|a| (a.request.as_str(), a))
        .collect();
    let mut slices: BTreeMap<String, Vec<&Assignment>> = BTreeMap::new();
    for r in requests {
        if let Some(a) = by_id.get(r.id.as_str()) {
            slices.entry(kind_key(&r.kind)).or_default().push(a);
        }
    }
    let mut next: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for r in requests {
        let k = kind_key(&r.kind);
        let Some(list) = slices.get(&k) else { continue };
        let i = next.entry(k).or_default();
        if let Some(a) = list.get(*i) {
            let mut a = (*a).clone();
            a.request = r.id.clone();
            out.insert(r.id.clone(), a);
            *i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_planner::Name;

    fn mig(req: &str, node: &str, start: u8) -> Assignment {
        Assignment {
            request: req.into(),
            node: Name::from(node),
            gpu: 0,
            slice: AssignedSlice::Mig {
                profile: Name::from("1g.10gb"),
                start,
            },
        }
    }

    /// The round plans on the typed path: node and request indices map back to names, a MIG
    /// slice to its profile name on the GPU's own model; a pod asking for a profile no GPU of
    /// the cluster has waits instead of failing the round (the file-format planner refused the
    /// whole input for a profile no catalog model has).
    #[test]
    fn a_round_plans_typed_and_an_unknown_profile_only_waits() {
        let cat = Catalog::builtin();
        let h100 = cat.get("h100-80gb").unwrap();
        let a30 = cat.get("a30-24gb").unwrap();
        let idle = |m: &GpuModel, spec: &str| Instance {
            placed: m.parse_spec(spec).unwrap(),
            busy: false,
        };
        let mut problem = typed::Problem {
            nodes: vec![
                typed::Node {
                    gpus: vec![typed::Gpu {
                        model: a30,
                        sharing: Sharing::mig(vec![idle(a30, "1g.6gb@0")]),
                    }],
                },
                typed::Node {
                    gpus: vec![
                        typed::Gpu {
                            model: h100,
                            sharing: Sharing::mig(Vec::new()),
                        },
                        typed::Gpu {
                            model: h100,
                            sharing: Sharing::Mps {
                                clients: Vec::new(),
                            },
                        },
                    ],
                },
            ],
            requests: Vec::new(),
        };
        let names = vec!["a".to_string(), "b".to_string()];
        let requests = vec![
            RequestSpec::mig("ns/bogus", "9g.99gb"),
            RequestSpec::mig("ns/big", "3g.40gb"),
            RequestSpec::mig("ns/small", "1G.6GB"),
            RequestSpec::mps("ns/mps", 4096, 20),
        ];
        let plan = plan_round(&mut problem, &names, &requests, &PlanOptions::default()).unwrap();
        let got: BTreeMap<&str, &Assignment> = plan
            .assignments
            .iter()
            .map(|a| (a.request.as_str(), a))
            .collect();
        assert!(!got.contains_key("ns/bogus"));
        assert_eq!(got["ns/big"].node, "b");
        assert_eq!(got["ns/big"].gpu, 0);
        assert!(
            matches!(&got["ns/big"].slice, AssignedSlice::Mig { profile, .. } if profile == "3g.40gb"),
            "{:?}",
            got["ns/big"]
        );
        // The idle 1g.6gb on the A30 is reused, named as the A30 names it.
        assert_eq!(got["ns/small"].node, "a");
        assert_eq!(
            got["ns/small"].slice,
            AssignedSlice::Mig {
                profile: Name::from("1g.6gb"),
                start: 0
            }
        );
        assert_eq!((got["ns/mps"].node.as_ref(), got["ns/mps"].gpu), ("b", 1));
        // The file-format planner the controller used before refused the whole round.
        let cluster = tessera_planner::ClusterSpec {
            nodes: vec![tessera_planner::NodeSpec {
                name: "b".into(),
                gpus: vec![tessera_planner::GpuSpec::mig("h100-80gb", Vec::new())],
            }],
        };
        assert!(
            tessera_planner::plan(cat, &cluster, &requests[..2], &PlanOptions::default()).is_err()
        );
        // The H100's new layout is listed with its node index.
        let g = plan.gpus.iter().find(|g| g.operations > 0).unwrap();
        assert_eq!((names[g.node].as_str(), g.gpu), ("b", 0));
    }

    #[test]
    fn a_later_request_never_takes_a_slice_an_earlier_one_of_its_kind_waits_for() {
        let reqs = vec![
            RequestSpec::mig("old", "1g.10gb"),
            RequestSpec::mig("mid", "2g.20gb"),
            RequestSpec::mig("new", "1g.10gb"),
        ];
        // The planner served only the later one of the two same-kind requests.
        let out = oldest_first(&reqs, &[mig("new", "n1", 6)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out["old"].node, "n1");
        assert!(!out.contains_key("new"));
        // Two slices for two requests: each gets one, in order.
        let out = oldest_first(&reqs, &[mig("new", "n1", 6), mig("old", "n2", 0)]);
        assert_eq!(out.len(), 2);
    }
}
