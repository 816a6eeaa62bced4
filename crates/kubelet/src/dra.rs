//! The DRA kubelet plugin (`resource.k8s.io/v1`, Kubernetes 1.34+).
//!
//! - registration: `plugins_registry/<driver>-reg.sock` serves `pluginregistration`
//!   (`GetInfo` → type `DRAPlugin`, versions `["v1.DRAPlugin"]`);
//! - service: `plugins/<driver>/dra.sock` serves `DRAPlugin`. `NodePrepareResources` reads
//!   the claim through a [`ClaimReader`], checks its UID and allocation, creates the MIG
//!   instance of a partitionable device that does not exist yet (through the node runner's
//!   [`MigOps`], recorded as owned in the checkpoint first, rolled back on failure), writes one
//!   CDI spec file per claim (environment and device nodes), records the claim in a checkpoint
//!   file (written before answering) and answers the CDI device IDs; a claim already in the
//!   checkpoint gets the same answer again. `NodeUnprepareResources` removes the spec and the
//!   record, answers success for a claim it does not know, and destroys the idle owned
//!   instances no claim holds, so both calls are idempotent and Unprepare works after a
//!   restart. Instances the plugin did not create are never destroyed;
//! - with a [`Ledger`] (`--mode both`), a device the device-plugin path holds is refused and a
//!   prepared one recorded;
//! - [`resource_slices`]: the pure builder of the node's `ResourceSlice`s, with partitionable
//!   devices ([`crate::partition`]) for GPUs that have them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::resource::v1 as rv1;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tonic::{Request, Response, Status};

use crate::error::KubeletError;
use crate::inventory::{NodeInventory, Sharing};
use crate::ledger::{AllocPath, Ledger};
use crate::names::{self, DpDevice, Slice};
use crate::node::{Destroyed, Held, HoldSource, MigOps};
use crate::proto::dra as pb;
use crate::proto::dra::dra_plugin_server::{DraPlugin as DraService, DraPluginServer};
use crate::proto::pluginregistration as reg;
use crate::proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use crate::uds;
pub use tessera_isolation::DevRoots;
use tessera_isolation::{DeviceRule, SliceDevices};

/// The DRA service version this plugin offers in `GetInfo`.
pub const DRA_VERSION: &str = "v1.DRAPlugin";
/// The default driver name.
pub const DEFAULT_DRIVER: &str = "gpu.tessera.dev";
/// The CDI kind of the specs this plugin writes.
pub const CDI_KIND: &str = "k8s.tessera.dev/gpu";
/// The CDI spec version written.
pub const CDI_VERSION: &str = "0.6.0";

/// Where the DRA plugin runs.
#[derive(Debug, Clone)]
pub struct DraConfig {
    /// Driver name (`gpu.tessera.dev`): the ResourceSlices' and DeviceClasses' driver.
    pub driver: String,
    /// This node's name; also the resource pool's name.
    pub node_name: String,
    /// The kubelet's root directory.
    pub kubelet_dir: PathBuf,
    /// Where CDI specs go (`/var/run/cdi`).
    pub cdi_dir: PathBuf,
    /// Where `/dev` and `/proc` are, to list each prepared device's nodes in its CDI spec
    /// (`nvidiactl`, `nvidia-uvm`, `nvidia<minor>`, and a MIG instance's two
    /// `nvidia-caps/nvidia-cap<N>` nodes from `/proc/driver/nvidia-caps/mig-minors`). `None`:
    /// environment only (simulated GPUs have no device nodes). A GPU's minor is taken to be
    /// its NVML index, as on ordinary hosts.
    pub dev: Option<DevRoots>,
    /// The ledger shared with the device plugins (`--mode both`): a device they allocated is
    /// not prepared, and a prepared one is recorded so they do not allocate it.
    pub ledger: Option<Arc<Ledger>>,
}

impl DraConfig {
    /// `plugins_registry/<driver>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.kubelet_dir
            .join("plugins_registry")
            .join(format!("{}-reg.sock", self.driver))
    }

    /// `plugins/<driver>/dra.sock`.
    pub fn service_socket(&self) -> PathBuf {
        self.plugin_dir().join("dra.sock")
    }

    /// `plugins/<driver>/checkpoint.json`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.plugin_dir().join("checkpoint.json")
    }

    fn plugin_dir(&self) -> PathBuf {
        self.kubelet_dir.join("plugins").join(&self.driver)
    }

    /// The CDI spec file of a claim.
    pub fn cdi_spec_path(&self, claim_uid: &str) -> PathBuf {
        self.cdi_dir
            .join(format!("{}-claim-{claim_uid}.json", self.driver))
    }
}

/// How the plugin reads a ResourceClaim (the cluster side reads the apiserver; tests use
/// [`MapClaims`]).
#[tonic::async_trait]
pub trait ClaimReader: Send + Sync {
    /// The claim `namespace/name`.
    async fn claim(&self, namespace: &str, name: &str) -> Result<rv1::ResourceClaim, KubeletError>;
}

/// Claims held in memory, by `(namespace, name)`.
#[derive(Debug, Default)]
pub struct MapClaims(pub Mutex<BTreeMap<(String, String), rv1::ResourceClaim>>);

impl MapClaims {
    /// Add or replace a claim (keyed by its metadata namespace and name).
    pub fn put(&self, claim: rv1::ResourceClaim) {
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        self.0.lock().expect("claims lock").insert(key, claim);
    }
}

#[tonic::async_trait]
impl ClaimReader for MapClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<rv1::ResourceClaim, KubeletError> {
        self.0
            .lock()
            .expect("claims lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| {
                KubeletError::Invalid(format!("ResourceClaim {namespace}/{name} not found"))
            })
    }
}

/// One prepared device, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedDevice {
    /// The claim's requests this device serves.
    pub requests: Vec<String>,
    /// Pool (the node's name).
    pub pool: String,
    /// DRA device name.
    pub device: String,
    /// The `MIG-…`/`GPU-…` UUID behind it.
    pub uuid: String,
    /// Its device-plugin device ID (the ledger's key; `GPU-…::mps-<id>` for an MPS share).
    #[serde(default)]
    pub id: String,
    /// CDI device IDs returned.
    pub cdi_ids: Vec<String>,
}

impl PreparedDevice {
    /// The ledger's key: the device-plugin ID (the UUID in checkpoints written before it was
    /// recorded).
    pub fn ledger_id(&self) -> &str {
        if self.id.is_empty() {
            &self.uuid
        } else {
            &self.id
        }
    }
}

/// One prepared claim, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedClaim {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its devices.
    pub devices: Vec<PreparedDevice>,
}

/// A MIG placement the plugin created an instance at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedInstance {
    /// GPU index.
    pub gpu: u32,
    /// Profile.
    pub profile: String,
    /// Placement start.
    pub start: u8,
}

/// The checkpoint file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version (1).
    pub version: u32,
    /// Prepared claims by UID.
    pub claims: BTreeMap<String, PreparedClaim>,
    /// MIG instances the plugin created (recorded before creating), by DRA device name; one
    /// that no claim holds is destroyed once it is idle (never while processes run on it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owned: BTreeMap<String, OwnedInstance>,
}

impl Checkpoint {
    /// Owned instances no prepared claim holds.
    pub fn unclaimed(&self) -> Vec<(String, OwnedInstance)> {
        self.owned
            .iter()
            .filter(|(d, _)| {
                !self
                    .claims
                    .values()
                    .any(|c| c.devices.iter().any(|x| &x.device == *d))
            })
            .map(|(d, o)| (d.clone(), o.clone()))
            .collect()
    }
}

fn load_checkpoint(path: &Path) -> Result<Checkpoint, KubeletError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| KubeletError::Json {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint {
            version: 1,
            ..Default::default()
        }),
        Err(source) => Err(KubeletError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `bytes` to `path` through a temporary file, fsync and rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KubeletError> {
    use std::io::Write;
    let io = |source| KubeletError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// One CDI device of a claim's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiDevice {
    /// The DRA device name (the CDI device is `<claim-uid>-<name>`).
    pub name: String,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// Its device nodes (empty without [`DraConfig::dev`]).
    pub nodes: Vec<DeviceRule>,
}

/// The CDI spec (version [`CDI_VERSION`], kind [`CDI_KIND`]) of one claim: one CDI device per
/// prepared device, with its environment and its `deviceNodes` (container path under `/dev`,
/// `hostPath` when the host's device tree is elsewhere, type `c`, major and minor).
pub fn cdi_spec(
    claim_uid: &str,
    devices: &[CdiDevice],
    dev_root: Option<&Path>,
) -> serde_json::Value {
    let devs: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| {
            let env: Vec<String> = d.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut edits = serde_json::json!({ "env": env });
            if !d.nodes.is_empty() {
                let nodes: Vec<serde_json::Value> = d
                    .nodes
                    .iter()
                    .map(|r| {
                        let rel = dev_root
                            .and_then(|root| r.path.strip_prefix(root).ok())
                            .map(|rel| Path::new("/dev").join(rel))
                            .unwrap_or_else(|| r.path.clone());
                        let mut n = serde_json::json!({
                            "path": rel.display().to_string(),
                            "type": "c",
                            "major": r.major,
                        });
                        if let Some(m) = r.minor {
                            n["minor"] = m.into();
                        }
                        if rel != r.path {
                            n["hostPath"] = r.path.display().to_string().into();
                        }
                        n
                    })
                    .collect();
                edits["deviceNodes"] = nodes.into();
            }
            serde_json::json!({
                "name": format!("{claim_uid}-{}", d.name),
                "containerEdits": edits,
            })
        })
        .collect();
    serde_json::json!({
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": devs,
    })
}

/// What a device reaches on the device side, for its CDI device nodes.
fn slice_devices(inv: &NodeInventory, dp: &DpDevice) -> Option<SliceDevices> {
    match &dp.slice {
        Slice::Whole { uuid } | Slice::Mps { gpu_uuid: uuid, .. } => inv
            .gpus
            .iter()
            .find(|g| &g.uuid == uuid)
            .map(|g| SliceDevices::Gpu { minor: g.index }),
        Slice::Mig { uuid, .. } => inv.mig_by_uuid(uuid).map(|(g, m)| SliceDevices::Mig {
            minor: g.index,
            gi: m.gi_id,
            ci: m.ci_id,
        }),
    }
}

/// The DRA plugin: its state, services and hold list.
pub struct DraPlugin {
    cfg: DraConfig,
    claims: Arc<dyn ClaimReader>,
    inventory: watch::Receiver<NodeInventory>,
    checkpoint: Mutex<Checkpoint>,
    registered: watch::Sender<Option<reg::RegistrationStatus>>,
    mig: Option<MigOps>,
    /// Prepare and unprepare run one at a time (creating and reclaiming instances).
    serial: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DraPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraPlugin").field("cfg", &self.cfg).finish()
    }
}

impl DraPlugin {
    /// A plugin with the checkpoint read from disk (claims prepared before a restart).
    pub fn new(
        cfg: DraConfig,
        claims: Arc<dyn ClaimReader>,
        inventory: watch::Receiver<NodeInventory>,
    ) -> Result<Arc<DraPlugin>, KubeletError> {
        Self::build(cfg, claims, inventory, None)
    }

    /// A plugin that also creates the MIG instance of a prepared claim's partitionable device
    /// when it does not exist yet, and destroys the instances it created once no claim holds
    /// them and they are idle. At start it reclaims what a crash left: instances it created
    /// (per its checkpoint) that no claim holds, if idle; it never touches other instances.
    pub async fn with_mig(
        cfg: DraConfig,
        claims: Arc<dyn ClaimReader>,
        inventory: watch::Receiver<NodeInventory>,
        mig: MigOps,
    ) -> Result<Arc<DraPlugin>, KubeletError> {
        let plugin = Self::build(cfg, claims, inventory, Some(mig))?;
        plugin.reclaim().await;
        Ok(plugin)
    }

    fn build(
        cfg: DraConfig,
        claims: Arc<dyn ClaimReader>,
        inventory: watch::Receiver<NodeInventory>,
        mig: Option<MigOps>,
    ) -> Result<Arc<DraPlugin>, KubeletError> {
        let checkpoint = load_checkpoint(&cfg.checkpoint_path())?;
        if let Some(l) = &cfg.ledger {
            for c in checkpoint.claims.values() {
                let by = format!("claim {}/{}", c.namespace, c.name);
                for d in &c.devices {
                    if let Err(e) = l.take(d.ledger_id(), AllocPath::Dra, &by) {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
        Ok(Arc::new(DraPlugin {
            cfg,
            claims,
            inventory,
            checkpoint: Mutex::new(checkpoint),
            registered: watch::channel(None).0,
            mig,
            serial: tokio::sync::Mutex::new(()),
        }))
    }

    /// Destroy the idle instances this plugin created that no claim holds; busy ones stay
    /// (and are tried again at the next unprepare or start).
    async fn reclaim(&self) {
        let Some(ops) = self.mig.clone() else { return };
        for (device, o) in self.checkpoint().unclaimed() {
            let ops = ops.clone();
            let oc = o.clone();
            let r = tokio::task::spawn_blocking(move || ops.destroy(oc.gpu, &oc.profile, oc.start))
                .await;
            match r {
                Ok(Ok(Destroyed::Gone)) => {
                    let mut cp = self.checkpoint.lock().expect("checkpoint lock");
                    cp.owned.remove(&device);
                    if let Err(e) = self.save(&cp) {
                        tracing::warn!("checkpoint: {e}");
                        cp.owned.insert(device, o);
                    }
                }
                Ok(Ok(Destroyed::Busy)) => tracing::warn!(
                    "{device}: no claim holds it but processes run on it; it is kept until they end"
                ),
                Ok(Err(e)) => tracing::warn!("{device}: cannot destroy it: {e}"),
                Err(e) => tracing::warn!("{device}: the destroy task failed: {e}"),
            }
        }
    }

    /// Record `device` as owned before creating it (so a crash cannot lose it); whether it
    /// was not recorded before.
    fn own(&self, device: &str, o: OwnedInstance) -> Result<bool, KubeletError> {
        let mut cp = self.checkpoint.lock().expect("checkpoint lock");
        if cp.owned.contains_key(device) {
            return Ok(false);
        }
        cp.owned.insert(device.to_string(), o);
        if let Err(e) = self.save(&cp) {
            cp.owned.remove(device);
            return Err(e);
        }
        Ok(true)
    }

    fn disown(&self, device: &str) {
        let mut cp = self.checkpoint.lock().expect("checkpoint lock");
        if let Some(o) = cp.owned.remove(device) {
            if let Err(e) = self.save(&cp) {
                tracing::warn!("checkpoint: {e}");
                cp.owned.insert(device.to_string(), o);
            }
        }
    }

    /// Create the instance of partitionable device `device` if it is not there yet.
    async fn create(
        &self,
        ops: &MigOps,
        device: &str,
        o: &OwnedInstance,
    ) -> Result<bool, KubeletError> {
        let fresh = self.own(device, o.clone())?;
        let ops_c = ops.clone();
        let oc = o.clone();
        let made = tokio::task::spawn_blocking(move || ops_c.create(oc.gpu, &oc.profile, oc.start))
            .await
            .map_err(|e| KubeletError::Invalid(format!("the create task failed: {e}")))?;
        match made {
            Ok(m) => {
                if m.existed && fresh {
                    // Not made by this plugin: not ours to destroy.
                    self.disown(device);
                }
                Ok(!m.existed)
            }
            Err(e) => {
                // Keep the record while anything may be left at the placement (e.g. the
                // backend failed mid-create): it is reclaimed once it can be destroyed.
                let ops = ops.clone();
                let oc = o.clone();
                let left =
                    tokio::task::spawn_blocking(move || ops.exists(oc.gpu, &oc.profile, oc.start))
                        .await;
                if fresh && matches!(left, Ok(Ok(false))) {
                    self.disown(device);
                }
                Err(e)
            }
        }
    }

    /// The prepared claims now.
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint.lock().expect("checkpoint lock").clone()
    }

    /// What the kubelet last said in `NotifyRegistrationStatus`.
    pub fn registration(&self) -> watch::Receiver<Option<reg::RegistrationStatus>> {
        self.registered.subscribe()
    }

    async fn prepare(&self, claim: &pb::Claim) -> Result<Vec<pb::Device>, KubeletError> {
        let _serial = self.serial.lock().await;
        let mut made = Vec::new();
        let mut taken = Vec::new();
        let r = self.prepare_inner(claim, &mut made, &mut taken).await;
        if r.is_err() {
            if let Some(l) = &self.cfg.ledger {
                for id in &taken {
                    l.release(id, AllocPath::Dra);
                }
            }
            // Leave nothing half-made: destroy what this call created.
            if let Some(ops) = &self.mig {
                for (device, o) in made {
                    let ops = ops.clone();
                    let oc: OwnedInstance = o;
                    let d = tokio::task::spawn_blocking(move || {
                        ops.destroy(oc.gpu, &oc.profile, oc.start)
                    })
                    .await;
                    if matches!(d, Ok(Ok(Destroyed::Gone))) {
                        self.disown(&device);
                    } else {
                        tracing::warn!(
                            "{device}: rolling back its creation failed; it is reclaimed later"
                        );
                    }
                }
            }
        }
        r
    }

    async fn prepare_inner(
        &self,
        claim: &pb::Claim,
        made: &mut Vec<(String, OwnedInstance)>,
        taken: &mut Vec<String>,
    ) -> Result<Vec<pb::Device>, KubeletError> {
        if let Some(done) = self.checkpoint().claims.get(&claim.uid) {
            return Ok(done.devices.iter().map(to_pb).collect());
        }
        let rc = self.claims.claim(&claim.namespace, &claim.name).await?;
        if rc.metadata.uid.as_deref() != Some(claim.uid.as_str()) {
            return Err(KubeletError::Invalid(format!(
                "ResourceClaim {}/{} has UID {}, not {} (it was deleted and recreated); the kubelet will retry with the new claim",
                claim.namespace,
                claim.name,
                rc.metadata.uid.as_deref().unwrap_or("none"),
                claim.uid
            )));
        }
        let results: Vec<rv1::DeviceRequestAllocationResult> = rc
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .and_then(|d| d.results)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.driver == self.cfg.driver)
            .collect();
        if results.is_empty() {
            return Err(KubeletError::Invalid(format!(
                "ResourceClaim {}/{} has no devices of driver {} allocated",
                claim.namespace, claim.name, self.cfg.driver
            )));
        }
        let mut devices: Vec<PreparedDevice> = Vec::new();
        let mut cdi = Vec::new();
        for r in &results {
            if r.pool != self.cfg.node_name {
                return Err(KubeletError::Invalid(format!(
                    "device {} is in pool {}, not this node's ({})",
                    r.device, r.pool, self.cfg.node_name
                )));
            }
            let inv = self.inventory.borrow().clone();
            let mut dp = dra_device(&inv, &r.device);
            if dp.is_none() {
                if let (Some(o), Some(ops)) = (placement_of(&inv, &r.device), &self.mig) {
                    if self.create(ops, &r.device, &o).await? {
                        made.push((r.device.clone(), o));
                    }
                    dp = dra_device(&self.inventory.borrow(), &r.device);
                }
            }
            let dp = dp.ok_or_else(|| {
                KubeletError::Invalid(format!(
                    "device {} is not on node {} now (its layout changed); the claim must be allocated again",
                    r.device, self.cfg.node_name
                ))
            })?;
            if let Some(l) = &self.cfg.ledger {
                let before = l.snapshot();
                l.take(
                    &dp.id,
                    AllocPath::Dra,
                    &format!("claim {}/{}", claim.namespace, claim.name),
                )?;
                if !before.contains_key(&dp.id) {
                    taken.push(dp.id.clone());
                }
            }
            let edits = names::container_edits(&[&dp], CDI_KIND)?;
            let nodes = match &self.cfg.dev {
                Some(roots) => {
                    let inv = self.inventory.borrow().clone();
                    let what = slice_devices(&inv, &dp).ok_or_else(|| {
                        KubeletError::Invalid(format!(
                            "device {} vanished while it was prepared",
                            r.device
                        ))
                    })?;
                    roots.rules_for(what)?
                }
                None => Vec::new(),
            };
            let request = r
                .request
                .split('/')
                .next()
                .unwrap_or(&r.request)
                .to_string();
            if let Some(d) = devices.iter_mut().find(|d| d.device == r.device) {
                if !d.requests.contains(&request) {
                    d.requests.push(request);
                }
                continue;
            }
            devices.push(PreparedDevice {
                requests: vec![request],
                pool: r.pool.clone(),
                device: r.device.clone(),
                uuid: match &dp.slice {
                    Slice::Whole { uuid } | Slice::Mig { uuid, .. } => uuid.clone(),
                    Slice::Mps { gpu_uuid, .. } => gpu_uuid.clone(),
                },
                id: dp.id.clone(),
                cdi_ids: vec![format!("{CDI_KIND}={}-{}", claim.uid, r.device)],
            });
            cdi.push(CdiDevice {
                name: r.device.clone(),
                env: edits.env,
                nodes,
            });
        }
        let spec_path = self.cfg.cdi_spec_path(&claim.uid);
        let spec = serde_json::to_vec_pretty(&cdi_spec(
            &claim.uid,
            &cdi,
            self.cfg.dev.as_ref().map(|d| d.dev.as_path()),
        ))
        .map_err(|source| KubeletError::Json {
            path: spec_path.clone(),
            source,
        })?;
        write_atomic(&spec_path, &spec)?;
        let mut cp = self.checkpoint.lock().expect("checkpoint lock");
        cp.claims.insert(
            claim.uid.clone(),
            PreparedClaim {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                devices: devices.clone(),
            },
        );
        if let Err(e) = self.save(&cp) {
            cp.claims.remove(&claim.uid);
            return Err(e);
        }
        Ok(devices.iter().map(to_pb).collect())
    }

    async fn unprepare(&self, claim: &pb::Claim) -> Result<(), KubeletError> {
        let _serial = self.serial.lock().await;
        self.unprepare_inner(claim)?;
        self.reclaim().await;
        Ok(())
    }

    fn unprepare_inner(&self, claim: &pb::Claim) -> Result<(), KubeletError> {
        let spec_path = self.cfg.cdi_spec_path(&claim.uid);
        match std::fs::remove_file(&spec_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KubeletError::Io {
                    path: spec_path,
                    source,
                })
            }
        }
        let mut cp = self.checkpoint.lock().expect("checkpoint lock");
        if let Some(old) = cp.claims.remove(&claim.uid) {
            if let Err(e) = self.save(&cp) {
                cp.claims.insert(claim.uid.clone(), old);
                return Err(e);
            }
            if let Some(l) = &self.cfg.ledger {
                for d in &old.devices {
                    let still = cp
                        .claims
                        .values()
                        .any(|c| c.devices.iter().any(|x| x.ledger_id() == d.ledger_id()));
                    if !still {
                        l.release(d.ledger_id(), AllocPath::Dra);
                    }
                }
            }
        }
        Ok(())
    }

    fn save(&self, cp: &Checkpoint) -> Result<(), KubeletError> {
        let bytes = serde_json::to_vec_pretty(cp).map_err(|source| KubeletError::Json {
            path: self.cfg.checkpoint_path(),
            source,
        })?;
        write_atomic(&self.cfg.checkpoint_path(), &bytes)
    }

    /// Bind both sockets and serve them in the background (inside a tokio runtime).
    pub fn start(self: &Arc<Self>) -> Result<DraServing, KubeletError> {
        let service = uds::bind(&self.cfg.service_socket())?;
        let registration = uds::bind(&self.cfg.registration_socket())?;
        let (stop_a, a) = oneshot::channel::<()>();
        let (stop_b, b) = oneshot::channel::<()>();
        let t1 = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DraPluginServer::new(DraServer(self.clone())))
                .serve_with_incoming_shutdown(service, async {
                    let _ = a.await;
                }),
        );
        let t2 = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(RegServer(self.clone())))
                .serve_with_incoming_shutdown(registration, async {
                    let _ = b.await;
                }),
        );
        Ok(DraServing {
            cfg: self.cfg.clone(),
            stops: vec![stop_a, stop_b],
            tasks: vec![t1, t2],
        })
    }

    /// Serve both sockets until `shutdown`; then remove them.
    pub async fn serve(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), KubeletError> {
        let serving = self.start()?;
        shutdown.await;
        serving.stop().await
    }
}

/// The DRA plugin's running servers.
#[derive(Debug)]
pub struct DraServing {
    cfg: DraConfig,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl DraServing {
    /// Stop serving (in-flight calls get a second) and remove both sockets.
    pub async fn stop(self) -> Result<(), KubeletError> {
        for s in self.stops {
            let _ = s.send(());
        }
        let grace = std::time::Duration::from_secs(1);
        let mut results = Vec::new();
        for t in self.tasks {
            results.push(finish(t, grace).await);
        }
        let _ = std::fs::remove_file(self.cfg.registration_socket());
        let _ = std::fs::remove_file(self.cfg.service_socket());
        for (r, path) in results
            .into_iter()
            .zip([self.cfg.service_socket(), self.cfg.registration_socket()])
        {
            if let Some(Err(source)) = r {
                return Err(KubeletError::Serve { path, source });
            }
        }
        Ok(())
    }
}

/// The server task's result, or `None` when it had to be aborted after `grace`.
async fn finish<T>(mut task: tokio::task::JoinHandle<T>, grace: std::time::Duration) -> Option<T> {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(r) => r.ok(),
        Err(_) => {
            task.abort();
            None
        }
    }
}

impl HoldSource for DraPlugin {
    fn held(&self) -> Vec<Held> {
        let cp = self.checkpoint();
        let mut out = Vec::new();
        for c in cp.claims.values() {
            let by = format!("claim {}/{}", c.namespace, c.name);
            for d in &c.devices {
                out.push(Held {
                    device: d.device.clone(),
                    by: by.clone(),
                });
                out.push(Held {
                    device: d.uuid.clone(),
                    by: by.clone(),
                });
            }
        }
        out
    }
}

fn to_pb(d: &PreparedDevice) -> pb::Device {
    pb::Device {
        request_names: d.requests.clone(),
        pool_name: d.pool.clone(),
        device_name: d.device.clone(),
        cdi_device_ids: d.cdi_ids.clone(),
        share_id: String::new(),
    }
}

/// The partitionable placement a DRA device name stands for, on a GPU with partitions.
fn placement_of(inv: &NodeInventory, name: &str) -> Option<OwnedInstance> {
    inv.gpus.iter().find_map(|g| {
        g.partitions.as_ref()?.placements.iter().find_map(|p| {
            (names::dra_mig_name(g.index, &p.profile, p.start) == name).then(|| OwnedInstance {
                gpu: g.index,
                profile: p.profile.clone(),
                start: p.start,
            })
        })
    })
}

/// The device-plugin view of a DRA device name on this node, if it exists now.
fn dra_device(inv: &NodeInventory, name: &str) -> Option<DpDevice> {
    for g in &inv.gpus {
        match g.sharing {
            Sharing::Whole if names::dra_gpu_name(g.index) == name => {
                return Some(DpDevice {
                    id: g.uuid.clone(),
                    healthy: g.healthy,
                    slice: Slice::Whole {
                        uuid: g.uuid.clone(),
                    },
                })
            }
            Sharing::Mig => {
                if let Some(m) = g
                    .mig
                    .iter()
                    .find(|m| names::dra_mig_name(g.index, &m.profile, m.start) == name)
                {
                    return Some(DpDevice {
                        id: m.uuid.clone(),
                        healthy: g.healthy,
                        slice: Slice::Mig {
                            uuid: m.uuid.clone(),
                            gpu: g.index,
                        },
                    });
                }
            }
            Sharing::Mps => {
                if let Some(s) = g
                    .mps
                    .iter()
                    .find(|s| names::dra_mps_name(g.index, &s.id) == name)
                {
                    return Some(DpDevice {
                        id: names::mps_device_id(&g.uuid, s),
                        healthy: g.healthy,
                        slice: Slice::Mps {
                            gpu_uuid: g.uuid.clone(),
                            share: s.clone(),
                        },
                    });
                }
            }
            _ => {}
        }
    }
    None
}

struct DraServer(Arc<DraPlugin>);

#[tonic::async_trait]
impl DraService for DraServer {
    async fn node_prepare_resources(
        &self,
        req: Request<pb::NodePrepareResourcesRequest>,
    ) -> Result<Response<pb::NodePrepareResourcesResponse>, Status> {
        let mut out = pb::NodePrepareResourcesResponse::default();
        for c in req.into_inner().claims {
            let r = match self.0.prepare(&c).await {
                Ok(devices) => pb::NodePrepareResourceResponse {
                    devices,
                    error: String::new(),
                },
                Err(e) => pb::NodePrepareResourceResponse {
                    devices: Vec::new(),
                    error: e.to_string(),
                },
            };
            out.claims.insert(c.uid, r);
        }
        Ok(Response::new(out))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<pb::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<pb::NodeUnprepareResourcesResponse>, Status> {
        let mut out = pb::NodeUnprepareResourcesResponse::default();
        for c in req.into_inner().claims {
            let error = self
                .0
                .unprepare(&c)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            out.claims
                .insert(c.uid, pb::NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(out))
    }
}

struct RegServer(Arc<DraPlugin>);

#[tonic::async_trait]
impl Registration for RegServer {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: self.0.cfg.driver.clone(),
            endpoint: self.0.cfg.service_socket().display().to_string(),
            supported_versions: vec![DRA_VERSION.into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if !s.plugin_registered {
            tracing::error!("the kubelet did not register the DRA plugin: {}", s.error);
        }
        self.0.registered.send_replace(Some(s));
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

fn attr_s(v: impl Into<String>) -> rv1::DeviceAttribute {
    rv1::DeviceAttribute {
        string: Some(v.into()),
        ..Default::default()
    }
}

fn attr_i(v: i64) -> rv1::DeviceAttribute {
    rv1::DeviceAttribute {
        int: Some(v),
        ..Default::default()
    }
}

fn cap(q: String) -> rv1::DeviceCapacity {
    rv1::DeviceCapacity {
        value: Quantity(q),
        request_policy: None,
    }
}

/// The node's `ResourceSlice`s for `driver`, pool = the node's name. Whole GPUs
/// (`gpu-<i>`), MIG instances (`gpu-<i>-mig-<profile>-<start>`) and MPS shares
/// (`gpu-<i>-mps-<id>`) with attributes (`type`, `uuid`, `model`, `index`, `profile`, …) and
/// capacity (`memory`, `computeSlices` or `threadPercent`) go in the slice `<node>-<driver>`.
///
/// A GPU with [`crate::InvGpu::partitions`] (partitionable devices, Kubernetes 1.36+) is
/// published instead as one counter set (`gpu-<i>-counters`, in the slices
/// `<node>-<driver>-counters[-k]`, at most 8 sets each, since a slice holds either devices or
/// counters) and one device per placement in the slice `<node>-<driver>-gpu-<i>`, each device
/// consuming its placement's counters, in tessera's placement preference order. Pure: the
/// same inventory gives the same slices.
pub fn resource_slices(
    driver: &str,
    node_name: &str,
    inv: &NodeInventory,
    generation: i64,
) -> Vec<rv1::ResourceSlice> {
    let mut devices = Vec::new();
    // (slice name suffix, devices or counter sets)
    let mut partitioned: Vec<(u32, Vec<rv1::Device>)> = Vec::new();
    let mut counter_sets: Vec<rv1::CounterSet> = Vec::new();
    for g in &inv.gpus {
        let mut base = BTreeMap::new();
        base.insert("index".to_string(), attr_i(i64::from(g.index)));
        if let Some(m) = &g.model {
            base.insert("model".to_string(), attr_s(m));
        }
        let dp_held = |id: &str| inv.allocated.get(id) == Some(&AllocPath::DevicePlugin);
        if let Some(parts) = &g.partitions {
            counter_sets.push(rv1::CounterSet {
                name: parts.counter_set.clone(),
                counters: parts
                    .counters
                    .iter()
                    .map(|(k, v)| (k.clone(), counter(*v)))
                    .collect(),
            });
            let mut devs = Vec::new();
            for p in &parts.placements {
                let made = g
                    .mig
                    .iter()
                    .find(|m| m.profile == p.profile && m.start == p.start);
                if made.is_some_and(|m| dp_held(&m.uuid)) {
                    continue;
                }
                let mut a = base.clone();
                a.insert("type".into(), attr_s("mig"));
                a.insert("parentUUID".into(), attr_s(&g.uuid));
                a.insert("profile".into(), attr_s(&p.profile));
                a.insert("placementStart".into(), attr_i(i64::from(p.start)));
                if let Some(m) = g
                    .mig
                    .iter()
                    .find(|m| m.profile == p.profile && m.start == p.start)
                {
                    a.insert("uuid".into(), attr_s(&m.uuid));
                }
                let mut c = BTreeMap::new();
                if let Some(mib) = p.memory_mib {
                    c.insert("memory".into(), cap(format!("{mib}Mi")));
                }
                c.insert("computeSlices".into(), cap(p.compute_slices.to_string()));
                let mut d = device(names::dra_mig_name(g.index, &p.profile, p.start), a, c);
                d.consumes_counters = Some(vec![rv1::DeviceCounterConsumption {
                    counter_set: parts.counter_set.clone(),
                    counters: p
                        .consumes
                        .iter()
                        .map(|(k, v)| (k.clone(), counter(*v)))
                        .collect(),
                }]);
                devs.push(d);
            }
            partitioned.push((g.index, devs));
            continue;
        }
        match g.sharing {
            Sharing::Whole if dp_held(&g.uuid) => {}
            Sharing::Whole => {
                let mut a = base.clone();
                a.insert("type".into(), attr_s("gpu"));
                a.insert("uuid".into(), attr_s(&g.uuid));
                let mut c = BTreeMap::new();
                c.insert("memory".into(), cap(format!("{}Mi", g.memory_mib)));
                devices.push(device(names::dra_gpu_name(g.index), a, c));
            }
            Sharing::Mig => {
                for m in g.mig.iter().filter(|m| !dp_held(&m.uuid)) {
                    let mut a = base.clone();
                    a.insert("type".into(), attr_s("mig"));
                    a.insert("uuid".into(), attr_s(&m.uuid));
                    a.insert("parentUUID".into(), attr_s(&g.uuid));
                    a.insert("profile".into(), attr_s(&m.profile));
                    a.insert("placementStart".into(), attr_i(i64::from(m.start)));
                    let mut c = BTreeMap::new();
                    if let Some(mib) = m.memory_mib {
                        c.insert("memory".into(), cap(format!("{mib}Mi")));
                    }
                    if let Some(cs) = m.compute_slices {
                        c.insert("computeSlices".into(), cap(cs.to_string()));
                    }
                    devices.push(device(
                        names::dra_mig_name(g.index, &m.profile, m.start),
                        a,
                        c,
                    ));
                }
            }
            Sharing::Mps => {
                for s in g
                    .mps
                    .iter()
                    .filter(|s| !dp_held(&names::mps_device_id(&g.uuid, s)))
                {
                    let mut a = base.clone();
                    a.insert("type".into(), attr_s("mps"));
                    a.insert("parentUUID".into(), attr_s(&g.uuid));
                    let mut c = BTreeMap::new();
                    c.insert("memory".into(), cap(format!("{}Mi", s.memory_mib)));
                    c.insert("threadPercent".into(), cap(s.thread_percent.to_string()));
                    devices.push(device(names::dra_mps_name(g.index, &s.id), a, c));
                }
            }
        }
    }
    let base = format!("{node_name}-{driver}");
    let mut specs: Vec<(String, rv1::ResourceSliceSpec)> = Vec::new();
    let spec = |devices: Option<Vec<rv1::Device>>, counters: Option<Vec<rv1::CounterSet>>| {
        rv1::ResourceSliceSpec {
            driver: driver.to_string(),
            node_name: Some(node_name.to_string()),
            devices,
            shared_counters: counters,
            ..Default::default()
        }
    };
    if !devices.is_empty() || partitioned.is_empty() {
        specs.push((base.clone(), spec(Some(devices), None)));
    }
    for (k, sets) in counter_sets.chunks(MAX_COUNTER_SETS).enumerate() {
        let name = if k == 0 {
            format!("{base}-counters")
        } else {
            format!("{base}-counters-{k}")
        };
        specs.push((name, spec(None, Some(sets.to_vec()))));
    }
    for (gpu, devs) in partitioned {
        specs.push((format!("{base}-gpu-{gpu}"), spec(Some(devs), None)));
    }
    let count = specs.len() as i64;
    specs
        .into_iter()
        .map(|(name, mut spec)| {
            spec.pool = rv1::ResourcePool {
                name: node_name.to_string(),
                generation,
                resource_slice_count: count,
            };
            rv1::ResourceSlice {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..Default::default()
                },
                spec,
            }
        })
        .collect()
}

/// At most this many counter sets go in one ResourceSlice (Kubernetes 1.36's limit).
pub const MAX_COUNTER_SETS: usize = 8;

fn counter(v: u64) -> rv1::Counter {
    rv1::Counter {
        value: Quantity(v.to_string()),
    }
}

fn device(
    name: String,
    attributes: BTreeMap<String, rv1::DeviceAttribute>,
    capacity: BTreeMap<String, rv1::DeviceCapacity>,
) -> rv1::Device {
    rv1::Device {
        name,
        attributes: Some(attributes),
        capacity: if capacity.is_empty() {
            None
        } else {
            Some(capacity)
        },
        ..Default::default()
    }
}

/// Claims read from files, for standalone mode: `<dir>/<namespace>/<name>.yaml` (or `.json`),
/// each one `ResourceClaim` as `kubectl get -o yaml` prints it.
#[derive(Debug, Clone)]
pub struct DirClaims(pub PathBuf);

#[tonic::async_trait]
impl ClaimReader for DirClaims {
    async fn claim(&self, namespace: &str, name: &str) -> Result<rv1::ResourceClaim, KubeletError> {
        for ext in ["yaml", "json"] {
            let path = self.0.join(namespace).join(format!("{name}.{ext}"));
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => {
                    return serde_yaml_ng::from_str(&text).map_err(|e| {
                        KubeletError::Invalid(format!(
                            "{}: not a ResourceClaim: {e}",
                            path.display()
                        ))
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(KubeletError::Io { path, source }),
            }
        }
        Err(KubeletError::Invalid(format!(
            "ResourceClaim {namespace}/{name} not found in {} (expected {namespace}/{name}.yaml there)",
            self.0.display()
        )))
    }
}
