//! The node runner (`tessera k8s node`): takes the node's GPUs to the desired layout with the
//! agent's reconciler and journal, publishes the resulting [`NodeInventory`] to the plugins,
//! and reports status. Desired layouts come from a [`DesiredSource`] (a file here, the
//! cluster's custom resource on the cluster side); status goes to a [`StatusSink`].
//!
//! Never destroys an instance that holds work: the agent refuses a GPU whose busy instances
//! (processes) the layout would remove, and before that the runner refuses a GPU whose
//! layout would remove an instance held by a pod (PodResources `List`, when the kubelet's
//! socket exists) or by a prepared DRA claim (any [`HoldSource`]). A refused GPU is left
//! unchanged and its reason reported.
//!
//! Device health comes from the backend's XID events, read at each apply and resync: a GPU with
//! a device XID lists all its devices `Unhealthy`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use tessera_agent::journal::Journal;
use tessera_agent::reconcile::{ApplyResult, Reconciler, ThreadSleeper};
use tessera_gpu::{GpuBackend, HealthTracker};
use tessera_model::Catalog;
use tokio::sync::watch;

use crate::error::KubeletError;
use crate::inventory::{MpsShare, NodeInventory};
use crate::ledger::Ledger;
use crate::names;
use crate::proto::podresources as pr;
use crate::uds;

/// One desired layout for the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredLayout {
    /// MIG layout per GPU index, as `PROFILE@START` specs (the agent's desired format).
    pub gpus: BTreeMap<u32, Vec<String>>,
    /// MPS shares per GPU index (GPUs with MIG off), advertised with their limits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mps: BTreeMap<u32, Vec<MpsShare>>,
}

/// One MPS share as a desired file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MpsSpec {
    memory_mib: u64,
    thread_percent: u8,
    #[serde(default)]
    pipe_dir: Option<String>,
}

/// Read a desired file: the `tessera agent apply --desired` format, plus an optional `mps:`
/// mapping of GPU index to shares (`{memory_mib, thread_percent[, pipe_dir]}`).
pub fn parse_desired_file(text: &str) -> Result<DesiredLayout, KubeletError> {
    let mut doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| KubeletError::Invalid(format!("desired file is not YAML/JSON: {e}")))?;
    let mut mps = BTreeMap::new();
    if let Some(map) = doc.as_mapping_mut() {
        if let Some(v) = map.remove("mps") {
            let raw: BTreeMap<u32, Vec<MpsSpec>> = serde_yaml_ng::from_value(v).map_err(|e| {
                KubeletError::Invalid(format!(
                    "`mps:` must map GPU indices to lists of {{memory_mib, thread_percent}}: {e}"
                ))
            })?;
            for (gpu, specs) in raw {
                let mut shares = Vec::new();
                for (i, s) in specs.into_iter().enumerate() {
                    if !(1..=100).contains(&s.thread_percent) || s.memory_mib == 0 {
                        return Err(KubeletError::Invalid(format!(
                            "mps GPU {gpu} share {i}: thread_percent must be 1-100 and memory_mib above 0 (got {} and {})",
                            s.thread_percent, s.memory_mib
                        )));
                    }
                    shares.push(MpsShare {
                        id: i.to_string(),
                        memory_mib: s.memory_mib,
                        thread_percent: s.thread_percent,
                        pipe_dir: s.pipe_dir,
                    });
                }
                mps.insert(gpu, shares);
            }
        }
        if !map.contains_key("gpus") {
            map.insert("gpus".into(), Value::Mapping(Default::default()));
        }
    }
    let rest = serde_yaml_ng::to_string(&doc).map_err(|e| KubeletError::Invalid(e.to_string()))?;
    let gpus = tessera_agent::parse_desired(&rest)
        .map_err(|e| KubeletError::Invalid(format!("desired file: {e}")))?;
    Ok(DesiredLayout { gpus, mps })
}

/// Where desired layouts come from.
#[tonic::async_trait]
pub trait DesiredSource: Send {
    /// The next desired layout: the first call answers the current one, later calls wait
    /// until it changes. An `Err` is reported and the runner keeps its last layout.
    async fn next(&mut self) -> Result<DesiredLayout, KubeletError>;
}

/// A desired file, re-read when its content changes (checked every `poll`).
#[derive(Debug)]
pub struct FileDesired {
    path: PathBuf,
    poll: Duration,
    last: Option<String>,
}

impl FileDesired {
    /// Watch `path`, checking every `poll`.
    pub fn new(path: impl Into<PathBuf>, poll: Duration) -> Self {
        FileDesired {
            path: path.into(),
            poll,
            last: None,
        }
    }
}

#[tonic::async_trait]
impl DesiredSource for FileDesired {
    async fn next(&mut self) -> Result<DesiredLayout, KubeletError> {
        loop {
            match tokio::fs::read_to_string(&self.path).await {
                Ok(text) if self.last.as_deref() != Some(text.as_str()) => {
                    self.last = Some(text.clone());
                    return parse_desired_file(&text).map_err(|e| {
                        KubeletError::Invalid(format!("{}: {e}", self.path.display()))
                    });
                }
                Ok(_) => {}
                Err(source) if self.last.is_none() => {
                    self.last = Some(String::new());
                    return Err(KubeletError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
                Err(_) => {}
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

/// How one GPU ended after an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum GpuOutcome {
    /// It matches the desired layout.
    Converged {
        /// The GPU.
        gpu: u32,
    },
    /// It was left unchanged; `reason` says why and what to do.
    Refused {
        /// The GPU.
        gpu: u32,
        /// Why.
        reason: String,
    },
    /// Applying failed; the next change or resync tries again.
    Failed {
        /// The GPU.
        gpu: u32,
        /// The error.
        error: String,
    },
}

/// A slice that holds work outside the GPU's own process list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Held {
    /// The device: a `MIG-…`/`GPU-…` UUID or a DRA device name (`gpu-0-mig-1g-10gb-0`).
    pub device: String,
    /// Who holds it, e.g. `pod default/train-1` or `claim default/c1`.
    pub by: String,
}

/// Something that knows which devices hold work (e.g. the DRA plugin's prepared claims).
pub trait HoldSource: Send + Sync {
    /// The devices held now.
    fn held(&self) -> Vec<Held>;
}

/// What the node reports after each apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The slices now on the node.
    pub inventory: NodeInventory,
    /// Per GPU in the desired layout, how the apply ended.
    pub gpus: Vec<GpuOutcome>,
    /// Devices held by pods or claims at the time of the apply.
    pub held: Vec<Held>,
    /// Why the latest desired layout could not be read (the last good one is applied
    /// instead); `None` when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_error: Option<String>,
}

/// Where status goes (the cluster side writes it to the node's custom resource).
#[tonic::async_trait]
pub trait StatusSink: Send {
    /// Report one status.
    async fn report(&mut self, status: &NodeStatus) -> Result<(), KubeletError>;
}

/// A sink that keeps the latest status in a `watch` channel.
#[derive(Debug)]
pub struct WatchSink(pub watch::Sender<Option<NodeStatus>>);

#[tonic::async_trait]
impl StatusSink for WatchSink {
    async fn report(&mut self, status: &NodeStatus) -> Result<(), KubeletError> {
        self.0.send_replace(Some(status.clone()));
        Ok(())
    }
}

/// How long the kubelet's PodResources `List` may take.
pub const POD_RESOURCES_TIMEOUT: Duration = Duration::from_secs(5);

/// Devices allocated to pods, per the kubelet's PodResources `List`; empty when its socket
/// (`<kubelet-dir>/pod-resources/kubelet.sock`) does not exist.
pub async fn pod_resources_held(kubelet_dir: &Path) -> Result<Vec<Held>, KubeletError> {
    let sock = kubelet_dir.join("pod-resources").join("kubelet.sock");
    if !sock.exists() {
        return Ok(Vec::new());
    }
    let mut client =
        pr::pod_resources_lister_client::PodResourcesListerClient::new(uds::connect(&sock).await?);
    let call = client.list(pr::ListPodResourcesRequest {});
    let list = tokio::time::timeout(POD_RESOURCES_TIMEOUT, call)
        .await
        .map_err(|_| KubeletError::Call {
            call: "PodResources List".into(),
            status: tonic::Status::deadline_exceeded(format!(
                "no answer within {POD_RESOURCES_TIMEOUT:?}"
            )),
        })?
        .map_err(|status| KubeletError::Call {
            call: "PodResources List".into(),
            status,
        })?
        .into_inner();
    let mut out = Vec::new();
    for pod in list.pod_resources {
        let by = format!("pod {}/{}", pod.namespace, pod.name);
        for c in pod.containers {
            for d in c.devices {
                for id in d.device_ids {
                    out.push(Held {
                        device: id,
                        by: by.clone(),
                    });
                }
            }
            for r in c.dynamic_resources {
                for cr in r.claim_resources {
                    out.push(Held {
                        device: cr.device_name,
                        by: by.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The runner's settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The kubelet's root directory (for PodResources).
    pub kubelet_dir: PathBuf,
    /// How often to re-read the GPUs when nothing else happens (busy state, health).
    pub resync: Duration,
}

struct Hw {
    backend: Box<dyn GpuBackend>,
    journal: Box<dyn Journal + Send>,
    health: HealthTracker,
}

impl Hw {
    /// Fold in the XID events since the last read (a backend that cannot report them leaves
    /// health as it was) and read the inventory with each GPU's health.
    fn observe(
        &mut self,
        catalog: &Catalog,
        mps: &BTreeMap<u32, Vec<MpsShare>>,
    ) -> Result<NodeInventory, KubeletError> {
        match self.backend.poll_events(0) {
            Ok(events) => {
                for e in &events {
                    if self.health.observe(e) {
                        tracing::warn!(
                            "GPU {}: XID {}; its devices are now Unhealthy",
                            e.gpu,
                            e.xid
                        );
                    }
                }
            }
            Err(e) => tracing::debug!("XID events not available: {e}"),
        }
        let mut inv = NodeInventory::observe(self.backend.as_mut(), catalog, mps)?;
        for g in &mut inv.gpus {
            g.healthy = self.health.gpu(g.index).is_healthy();
        }
        Ok(inv)
    }
}

/// What the runner and the DRA plugin's MIG operations share: the hardware (one agent
/// operation at a time), the desired layout and the published inventory.
struct Shared {
    hw: std::sync::Mutex<Hw>,
    catalog: Catalog,
    desired: std::sync::Mutex<DesiredLayout>,
    partitionable: AtomicBool,
    inventory: watch::Sender<NodeInventory>,
    ledger: std::sync::Mutex<Option<Arc<Ledger>>>,
}

impl Shared {
    fn hw(&self) -> Result<std::sync::MutexGuard<'_, Hw>, KubeletError> {
        self.hw.lock().map_err(|_| {
            KubeletError::Invalid(
                "the GPU backend was lost when an earlier operation panicked; restart the node process"
                    .into(),
            )
        })
    }

    fn desired(&self) -> DesiredLayout {
        self.desired.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Re-read the GPUs (with `hw` locked) and publish the inventory when it changed.
    fn publish(&self, hw: &mut Hw) -> Result<NodeInventory, KubeletError> {
        let desired = self.desired();
        let mut inventory = hw.observe(&self.catalog, &desired.mps)?;
        if self.partitionable.load(Ordering::SeqCst) {
            let skip: BTreeSet<u32> = desired.gpus.keys().copied().collect();
            inventory.add_partitions(&self.catalog, &skip);
        }
        if let Some(l) = self.ledger.lock().ok().and_then(|l| l.clone()) {
            l.stamp(&mut inventory);
        }
        self.inventory.send_if_modified(|cur| {
            let changed = *cur != inventory;
            if changed {
                *cur = inventory.clone();
            }
            changed
        });
        Ok(inventory)
    }
}

/// Runs the agent towards desired layouts and publishes the inventory.
pub struct NodeRunner {
    shared: Arc<Shared>,
    cfg: NodeConfig,
    holds: Vec<Arc<dyn HoldSource>>,
    desired: DesiredLayout,
}

impl std::fmt::Debug for NodeRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRunner")
            .field("kubelet_dir", &self.cfg.kubelet_dir)
            .finish()
    }
}

impl NodeRunner {
    /// A runner over `backend` with `journal`; reads the GPUs once for the first inventory.
    /// The receiver feeds the plugins.
    pub fn new(
        backend: Box<dyn GpuBackend>,
        journal: Box<dyn Journal + Send>,
        catalog: Catalog,
        cfg: NodeConfig,
    ) -> Result<(NodeRunner, watch::Receiver<NodeInventory>), KubeletError> {
        let mut hw = Hw {
            backend,
            journal,
            health: HealthTracker::default(),
        };
        let inv = hw.observe(&catalog, &BTreeMap::new())?;
        let (tx, rx) = watch::channel(inv);
        Ok((
            NodeRunner {
                shared: Arc::new(Shared {
                    hw: std::sync::Mutex::new(hw),
                    catalog,
                    desired: std::sync::Mutex::new(DesiredLayout::default()),
                    partitionable: AtomicBool::new(false),
                    inventory: tx,
                    ledger: std::sync::Mutex::new(None),
                }),
                cfg,
                holds: Vec::new(),
                desired: DesiredLayout::default(),
            },
            rx,
        ))
    }

    /// Also protect what `source` says is held (e.g. the DRA plugin's prepared claims).
    pub fn add_holds(&mut self, source: Arc<dyn HoldSource>) {
        self.holds.push(source);
    }

    /// Publish MIG GPUs that the desired layout does not list as partitionable devices
    /// ([`crate::partition`]): every placement, created when a DRA claim is prepared on it
    /// (through [`NodeRunner::mig_ops`]). Off by default (Kubernetes 1.34/1.35 clusters
    /// without the alpha gate reject them).
    pub fn set_partitionable(&mut self, on: bool) {
        self.shared.partitionable.store(on, Ordering::SeqCst);
        let catalog = &self.shared.catalog;
        let skip: BTreeSet<u32> = self.desired.gpus.keys().copied().collect();
        self.shared.inventory.send_modify(|inv| {
            if on {
                inv.add_partitions(catalog, &skip);
            } else {
                for g in &mut inv.gpus {
                    g.partitions = None;
                }
            }
        });
    }

    /// The handle through which the DRA plugin creates and destroys MIG instances on the
    /// runner's GPUs (same backend, journal and lock as the runner's applies).
    pub fn mig_ops(&self) -> MigOps {
        MigOps(self.shared.clone())
    }

    /// Share `ledger` (`--mode both`): the published inventory carries what each kubelet
    /// path holds, and device-plugin allocations that PodResources no longer lists are
    /// released at each apply.
    pub fn set_ledger(&mut self, ledger: Arc<Ledger>) {
        if let Ok(mut l) = self.shared.ledger.lock() {
            *l = Some(ledger.clone());
        }
        ledger.attach(self.shared.inventory.clone());
    }

    /// Another receiver of the inventory.
    pub fn subscribe(&self) -> watch::Receiver<NodeInventory> {
        self.shared.inventory.subscribe()
    }

    /// Apply one desired layout now: refuse GPUs whose held instances it would remove, run
    /// the reconciler on the others, publish the new inventory.
    pub async fn apply(&mut self, desired: &DesiredLayout) -> Result<NodeStatus, KubeletError> {
        self.desired = desired.clone();
        if let Ok(mut d) = self.shared.desired.lock() {
            *d = desired.clone();
        }
        // When the kubelet's PodResources socket exists but does not answer, what pods hold is
        // unknown: no instance is removed until it answers (creating is still fine).
        let listed = self
            .cfg
            .kubelet_dir
            .join("pod-resources")
            .join("kubelet.sock")
            .exists();
        let (mut held, unknown) = match pod_resources_held(&self.cfg.kubelet_dir).await {
            Ok(h) => (h, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let ledger = self.shared.ledger.lock().ok().and_then(|l| l.clone());
        if let (Some(l), true, None) = (&ledger, listed, &unknown) {
            let ids: BTreeSet<String> = held.iter().map(|h| h.device.clone()).collect();
            l.release_unlisted(&ids);
        }
        for h in &self.holds {
            held.extend(h.held());
        }
        held.sort();
        held.dedup();
        let shared = self.shared.clone();
        let want = desired.clone();
        let held_c = held.clone();
        let (outcomes, inventory) = tokio::task::spawn_blocking(move || {
            let mut hw = shared.hw()?;
            let outcomes =
                apply_blocking(&mut hw, &shared.catalog, &want, &held_c, unknown.as_deref());
            let inv = shared.publish(&mut hw)?;
            Ok::<_, KubeletError>((outcomes, inv))
        })
        .await
        .map_err(|e| KubeletError::Invalid(format!("the apply task failed: {e}")))??;
        Ok(NodeStatus {
            inventory,
            gpus: outcomes,
            held,
            desired_error: None,
        })
    }

    /// Follow `source` until `shutdown`: apply each desired layout, re-apply the last one
    /// every `resync`, report each status to `sink`.
    pub async fn run(
        mut self,
        mut source: impl DesiredSource,
        mut sink: impl StatusSink,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), KubeletError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.cfg.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut desired_error = None;
        loop {
            let desired = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                d = source.next() => match d {
                    Ok(d) => {
                        desired_error = None;
                        d
                    }
                    Err(e) => {
                        tracing::error!("desired layout: {e}; keeping the last one");
                        desired_error = Some(e.to_string());
                        self.desired.clone()
                    }
                },
                _ = tick.tick() => self.desired.clone(),
            };
            match self.apply(&desired).await {
                Ok(mut status) => {
                    status.desired_error.clone_from(&desired_error);
                    for g in &status.gpus {
                        if let GpuOutcome::Refused { reason, .. }
                        | GpuOutcome::Failed { error: reason, .. } = g
                        {
                            tracing::warn!("{reason}");
                        }
                    }
                    if let Err(e) = sink.report(&status).await {
                        tracing::warn!("status: {e}");
                    }
                }
                Err(e) => tracing::error!("apply: {e}"),
            }
        }
    }
}

fn apply_blocking(
    hw: &mut Hw,
    catalog: &Catalog,
    desired: &DesiredLayout,
    held: &[Held],
    pods_unknown: Option<&str>,
) -> Vec<GpuOutcome> {
    let held_by: BTreeMap<&str, &str> = held
        .iter()
        .map(|h| (h.device.as_str(), h.by.as_str()))
        .collect();
    let mut out = Vec::new();
    for (&gpu, specs) in &desired.gpus {
        let keep: BTreeSet<&str> = specs.iter().map(String::as_str).collect();
        let observed = match hw.backend.instances(gpu) {
            Ok(list) => list,
            Err(e) => {
                out.push(GpuOutcome::Failed {
                    gpu,
                    error: format!("GPU {gpu}: {e}"),
                });
                continue;
            }
        };
        let mut in_use = Vec::new();
        for i in &observed {
            let spec = i.spec();
            if keep.contains(spec.as_str()) {
                continue;
            }
            let dra = names::dra_mig_name(gpu, &i.profile, i.start);
            let by = i
                .uuid
                .as_deref()
                .and_then(|u| held_by.get(u))
                .or_else(|| held_by.get(dra.as_str()));
            if let Some(by) = by {
                in_use.push(format!(
                    "{spec} ({}) is held by {by}",
                    i.uuid.as_deref().unwrap_or("no UUID")
                ));
            } else if let Some(why) = pods_unknown {
                in_use.push(format!(
                    "{spec} may be held by a pod: the kubelet's PodResources did not answer ({why})"
                ));
            }
        }
        if !in_use.is_empty() {
            out.push(GpuOutcome::Refused {
                gpu,
                reason: format!(
                    "GPU {gpu}: refused, nothing changed: {}; keep those instances in the layout until their pods end",
                    in_use.join(", ")
                ),
            });
            continue;
        }
        let mut sleeper = ThreadSleeper;
        let r = Reconciler::new(
            hw.backend.as_mut(),
            hw.journal.as_mut(),
            catalog,
            &mut sleeper,
        )
        .apply_specs(gpu, specs);
        out.push(match r {
            Ok(report) => match report.result {
                ApplyResult::Converged => GpuOutcome::Converged { gpu },
                ApplyResult::Refused { refusal } => GpuOutcome::Refused {
                    gpu,
                    reason: refusal.to_string(),
                },
            },
            Err(e) => GpuOutcome::Failed {
                gpu,
                error: e.to_string(),
            },
        });
    }
    out
}

/// One MIG instance the DRA plugin asked for, as it exists on the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeInstance {
    /// `MIG-…` UUID.
    pub uuid: String,
    /// GPU-instance ID.
    pub gi_id: u32,
    /// Whether it existed already (nothing was created).
    pub existed: bool,
}

/// How [`MigOps::destroy`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// It was destroyed, or was not there.
    Gone,
    /// Processes run on it: it was kept.
    Busy,
}

/// Creates and destroys single MIG instances for the DRA plugin, through the runner's agent
/// (reconciler and journal, so a crash mid-operation is recovered like any agent apply) and
/// under the runner's lock, then publishes the new inventory. Only GPUs the desired layout
/// does not list are touched: those belong to the layout.
#[derive(Clone)]
pub struct MigOps(Arc<Shared>);

impl std::fmt::Debug for MigOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigOps")
    }
}

impl MigOps {
    fn layout_owned(&self, gpu: u32) -> Result<(), KubeletError> {
        if self.0.desired().gpus.contains_key(&gpu) {
            return Err(KubeletError::Invalid(format!(
                "GPU {gpu} is managed by the node's desired layout, so the DRA plugin does not change its instances; remove it from the layout to let claims create instances on it"
            )));
        }
        Ok(())
    }

    /// Make sure `profile@start` exists on `gpu` (idempotent: an existing instance is
    /// returned as is). The agent applies the GPU's current instances plus this one, so
    /// nothing else changes; on failure the agent's journal and rollback leave no half-made
    /// instance. Blocking: call from `spawn_blocking`.
    pub fn create(&self, gpu: u32, profile: &str, start: u8) -> Result<MadeInstance, KubeletError> {
        let mut hw = self.0.hw()?;
        let find = |hw: &mut Hw| -> Result<Option<MadeInstance>, KubeletError> {
            Ok(hw
                .backend
                .instances(gpu)?
                .into_iter()
                .find(|i| i.profile == profile && i.start == start)
                .and_then(|i| {
                    i.uuid.map(|uuid| MadeInstance {
                        uuid,
                        gi_id: i.gi_id,
                        existed: true,
                    })
                }))
        };
        if let Some(found) = find(&mut hw)? {
            return Ok(found);
        }
        self.layout_owned(gpu)?;
        let mut specs: Vec<String> = hw
            .backend
            .instances(gpu)?
            .iter()
            .map(|i| i.spec())
            .collect();
        let before = specs.clone();
        let spec = format!("{profile}@{start}");
        // A GPU instance left there without its compute instance is finished, not doubled.
        if !specs.contains(&spec) {
            specs.push(spec);
        }
        let result = match self.reconcile(&mut hw, gpu, &specs) {
            Ok(None) => Ok(()),
            Ok(Some(refusal)) => Err(KubeletError::Invalid(format!(
                "GPU {gpu}: the agent refused to create {profile}@{start}: {refusal}"
            ))),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Take the GPU back to what it was, so no half-made instance stays.
            if let Err(e) = self.reconcile(&mut hw, gpu, &before) {
                tracing::warn!("GPU {gpu}: rolling back {profile}@{start}: {e}");
            }
        }
        let published = self.0.publish(&mut hw);
        result?;
        published?;
        let made = find(&mut hw)?.ok_or_else(|| {
            KubeletError::Invalid(format!(
                "GPU {gpu}: {profile}@{start} was applied but is not there afterwards"
            ))
        })?;
        Ok(MadeInstance {
            existed: false,
            ..made
        })
    }

    /// Whether any GPU instance (with or without a compute instance) is at `profile@start`.
    /// Blocking: call from `spawn_blocking`.
    pub fn exists(&self, gpu: u32, profile: &str, start: u8) -> Result<bool, KubeletError> {
        let mut hw = self.0.hw()?;
        Ok(hw
            .backend
            .instances(gpu)?
            .iter()
            .any(|i| i.profile == profile && i.start == start))
    }

    /// Destroy `profile@start` on `gpu` unless processes run on it (then it is kept and
    /// [`Destroyed::Busy`] returned). Blocking: call from `spawn_blocking`.
    pub fn destroy(&self, gpu: u32, profile: &str, start: u8) -> Result<Destroyed, KubeletError> {
        let mut hw = self.0.hw()?;
        let now = hw.backend.instances(gpu)?;
        let Some(it) = now
            .iter()
            .find(|i| i.profile == profile && i.start == start)
        else {
            return Ok(Destroyed::Gone);
        };
        if it.is_busy() {
            return Ok(Destroyed::Busy);
        }
        self.layout_owned(gpu)?;
        let specs: Vec<String> = now
            .iter()
            .filter(|i| !(i.profile == profile && i.start == start))
            .map(|i| i.spec())
            .collect();
        let result = self.reconcile(&mut hw, gpu, &specs);
        let published = self.0.publish(&mut hw);
        // The agent refuses to destroy an instance that became busy meanwhile.
        let busy = result?.is_some();
        published?;
        Ok(if busy {
            Destroyed::Busy
        } else {
            Destroyed::Gone
        })
    }

    /// Apply `specs` to `gpu`: `Ok(None)` converged, `Ok(Some(why))` the agent refused.
    fn reconcile(
        &self,
        hw: &mut Hw,
        gpu: u32,
        specs: &[String],
    ) -> Result<Option<String>, KubeletError> {
        let mut sleeper = ThreadSleeper;
        let report = Reconciler::new(
            hw.backend.as_mut(),
            hw.journal.as_mut(),
            &self.0.catalog,
            &mut sleeper,
        )
        .apply_specs(gpu, specs)
        .map_err(|e| KubeletError::Invalid(format!("GPU {gpu}: {e}")))?;
        Ok(match report.result {
            ApplyResult::Converged => None,
            ApplyResult::Refused { refusal } => Some(refusal.to_string()),
        })
    }
}
