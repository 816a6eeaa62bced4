//! The demo's cluster with real node processes: each node is the kubelet crate's
//! [`NodeRunner`] and device plugins ([`run_device_plugins`]) on simulated GPUs, talking over
//! Unix sockets in a temporary directory to its own [`FakeKubelet`], and following its
//! `TesseraNode` spec on the fake apiserver.
//!
//! One cycle of a node ([`KubeletCluster::nodes_round`]) does what `tessera k8s node` does in
//! cluster mode, stepped on the demo's virtual clock instead of polled: read the spec, apply it
//! with the runner (which asks the fake kubelet's PodResources what pods hold before removing
//! anything), write the status. The new slices reach the kubelet on the plugins' open
//! ListAndWatch streams; a resource seen for the first time registers.
//!
//! The binder ([`KubeletCluster::bind`]) stands in only for kube-scheduler and the kubelet's
//! device manager: it binds an ungated pod to the node its earmark names, takes the earmarked
//! slice's device ID once the plugin lists it on ListAndWatch, calls `Allocate` over the
//! plugin's socket, records the allocation for PodResources, and marks the instance busy on
//! the simulated GPU (the container's processes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tessera_agent::MemJournal;
use tessera_gpu::sim::parse_gpu_list;
use tessera_gpu::{
    Capabilities, ComputeMode, GpuBackend, GpuError, GpuEvent, GpuInfo, GpuInstance, HeldInstance,
    IdleInstance, MigMode, ProfileInfo, SimBackend, SimConfig, SimState,
};
use tessera_kubelet::deviceplugin::{run_device_plugins, DevicePluginConfig};
use tessera_kubelet::names;
use tessera_kubelet::node::{NodeConfig, NodeRunner};
use tessera_kubelet::proto::deviceplugin as dp;
use tessera_kubelet::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use tessera_kubelet::proto::podresources as pr;
use tessera_kubelet::testkit::FakeKubelet;
use tessera_kubelet::{KubeletError, NodeInventory};
use tessera_model::Catalog;
use tessera_planner::PlanOptions;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::cluster_mode::{desired_of, status_of};
use crate::controller::Controller;
use crate::crd::{TesseraNode, TesseraNodeSpec};
use crate::demo::{node_name, DemoError};
use crate::fake::FakeApiServer;
use crate::pods::{is_gated, pod_key, Earmark, EarmarkedSlice};

/// How long the binder waits for a plugin to register or list a device (real time; the
/// plugins answer within milliseconds).
pub const KUBELET_WAIT: Duration = Duration::from_secs(10);

/// A simulated GPU backend shared between a node's runner (which owns a `Box<dyn GpuBackend>`)
/// and the demo (which starts and stops the pods' processes on it).
#[derive(Clone)]
pub struct SharedSim(Arc<Mutex<SimBackend>>);

impl SharedSim {
    /// Share `backend`.
    pub fn new(backend: SimBackend) -> Self {
        SharedSim(Arc::new(Mutex::new(backend)))
    }

    /// The backend (a panic while holding it elsewhere does not poison the demo).
    pub fn lock(&self) -> MutexGuard<'_, SimBackend> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GpuBackend for SharedSim {
    fn describe(&self) -> String {
        self.lock().describe()
    }
    fn gpus(&mut self) -> Result<Vec<GpuInfo>, GpuError> {
        self.lock().gpus()
    }
    fn profiles(&mut self, gpu: u32) -> Result<Vec<ProfileInfo>, GpuError> {
        self.lock().profiles(gpu)
    }
    fn instances(&mut self, gpu: u32) -> Result<Vec<GpuInstance>, GpuError> {
        self.lock().instances(gpu)
    }
    fn create_gi(&mut self, gpu: u32, profile: &str, start: u8) -> Result<GpuInstance, GpuError> {
        self.lock().create_gi(gpu, profile, start)
    }
    fn create_default_ci(&mut self, gpu: u32, gi_id: u32) -> Result<GpuInstance, GpuError> {
        self.lock().create_default_ci(gpu, gi_id)
    }
    fn destroy_gi(&mut self, instance: &IdleInstance) -> Result<(), GpuError> {
        self.lock().destroy_gi(instance)
    }
    fn mig_mode(&mut self, gpu: u32) -> Result<MigMode, GpuError> {
        self.lock().mig_mode(gpu)
    }
    fn set_mig_mode(&mut self, gpu: u32, enabled: bool) -> Result<MigMode, GpuError> {
        self.lock().set_mig_mode(gpu, enabled)
    }
    fn compute_mode(&mut self, gpu: u32) -> Result<ComputeMode, GpuError> {
        self.lock().compute_mode(gpu)
    }
    fn set_compute_mode(&mut self, gpu: u32, mode: ComputeMode) -> Result<(), GpuError> {
        self.lock().set_compute_mode(gpu, mode)
    }
    fn instance_compute_mode(&mut self, gpu: u32, gi_id: u32) -> Result<ComputeMode, GpuError> {
        self.lock().instance_compute_mode(gpu, gi_id)
    }
    fn set_instance_compute_mode(
        &mut self,
        gpu: u32,
        gi_id: u32,
        mode: ComputeMode,
    ) -> Result<(), GpuError> {
        self.lock().set_instance_compute_mode(gpu, gi_id, mode)
    }
    fn poll_events(&mut self, timeout_ms: u32) -> Result<Vec<GpuEvent>, GpuError> {
        self.lock().poll_events(timeout_ms)
    }
    fn capabilities(&self) -> Capabilities {
        self.lock().capabilities()
    }
    fn attach_work(&mut self, gpu: u32, start: u8, pid: Option<u32>) -> Result<(), GpuError> {
        self.lock().attach_work(gpu, start, pid)
    }
    fn sync_work(&mut self, gpu: u32, held: &[HeldInstance]) -> Result<bool, GpuError> {
        self.lock().sync_work(gpu, held)
    }
}

/// One resource's ListAndWatch stream, kept open as the kubelet keeps it.
struct Watched {
    client: DevicePluginClient<tonic::transport::Channel>,
    stream: tonic::Streaming<dp::ListAndWatchResponse>,
    devices: Vec<dp::Device>,
}

/// A running pod and the slice it was allocated.
#[derive(Debug, Clone)]
struct Running {
    node: usize,
    gpu: u32,
    /// MIG: the instance's start and UUID.
    mig: Option<(u8, String)>,
}

/// A node's device-plugin task and the sender that stops it.
type Plugins = (oneshot::Sender<()>, JoinHandle<Result<(), KubeletError>>);

/// One node: the runner, its plugins, its fake kubelet.
pub struct KubeletNode {
    name: String,
    gpu: SharedSim,
    runner: NodeRunner,
    inventory: watch::Receiver<NodeInventory>,
    kubelet: FakeKubelet,
    plugins: Option<Plugins>,
    watched: BTreeMap<String, Watched>,
    admitted: Vec<pr::PodResources>,
    allocate_calls: usize,
    stream_updates: usize,
}

impl KubeletNode {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's simulated GPUs.
    pub fn gpu(&self) -> &SharedSim {
        &self.gpu
    }

    /// Its fake kubelet.
    pub fn kubelet(&self) -> &FakeKubelet {
        &self.kubelet
    }

    /// Each GPU's instances as `PROFILE@START` (MIG GPUs; none on the others).
    pub fn layouts(&self) -> Result<Vec<Vec<String>>, GpuError> {
        let mut b = self.gpu.lock();
        let mut out = Vec::new();
        for g in b.gpus()? {
            out.push(if g.mig.is_some_and(|m| m.current) {
                b.instances(g.index)?.iter().map(|i| i.spec()).collect()
            } else {
                Vec::new()
            });
        }
        Ok(out)
    }

    fn admission(&self, detail: String) -> DemoError {
        DemoError::Admission {
            node: self.name.clone(),
            detail,
        }
    }

    fn call_failed(node: &str, call: String, status: tonic::Status) -> DemoError {
        DemoError::Kubelet {
            node: node.to_string(),
            source: KubeletError::Call { call, status },
        }
    }

    /// Wait until the plugin of `resource` lists `id` on its ListAndWatch stream (opened on
    /// first use after the resource registered, then kept open).
    async fn listed(&mut self, resource: &str, id: &str) -> Result<(), DemoError> {
        if !self.watched.contains_key(resource) {
            let Some(reg) = self
                .kubelet
                .wait_registered(resource, 1, KUBELET_WAIT)
                .await
            else {
                return Err(self.admission(format!(
                    "no device plugin registered {resource} within {KUBELET_WAIT:?}"
                )));
            };
            let mut client =
                self.kubelet
                    .dial(&reg)
                    .await
                    .map_err(|source| DemoError::Kubelet {
                        node: self.name.clone(),
                        source,
                    })?;
            let stream = client
                .list_and_watch(dp::Empty {})
                .await
                .map_err(|s| Self::call_failed(&self.name, format!("ListAndWatch {resource}"), s))?
                .into_inner();
            self.watched.insert(
                resource.to_string(),
                Watched {
                    client,
                    stream,
                    devices: Vec::new(),
                },
            );
        }
        let deadline = tokio::time::Instant::now() + KUBELET_WAIT;
        loop {
            let w = self.watched.get_mut(resource).expect("inserted above");
            if w.devices
                .iter()
                .any(|d| d.id == id && d.health == names::HEALTHY)
            {
                return Ok(());
            }
            let msg = match tokio::time::timeout_at(deadline, w.stream.message()).await {
                Err(_) => {
                    return Err(self.admission(format!(
                        "{resource}: device {id} not listed on ListAndWatch within {KUBELET_WAIT:?}"
                    )))
                }
                Ok(Err(s)) => {
                    return Err(Self::call_failed(
                        &self.name,
                        format!("ListAndWatch {resource}"),
                        s,
                    ))
                }
                Ok(Ok(None)) => {
                    return Err(
                        self.admission(format!("{resource}: the plugin closed ListAndWatch"))
                    )
                }
                Ok(Ok(Some(msg))) => msg,
            };
            w.devices = msg.devices;
            self.stream_updates += 1;
        }
    }

    /// `Allocate` device `id` of `resource` for pod `ns/name`, as the kubelet's device
    /// manager does at admission, and record it for PodResources.
    async fn allocate(
        &mut self,
        ns: &str,
        pod: &str,
        resource: &str,
        id: &str,
    ) -> Result<dp::ContainerAllocateResponse, DemoError> {
        self.listed(resource, id).await?;
        let w = self.watched.get_mut(resource).expect("listed opened it");
        let resp = w
            .client
            .allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest {
                    devices_ids: vec![id.to_string()],
                }],
            })
            .await
            .map_err(|s| Self::call_failed(&self.name, format!("Allocate {resource} {id}"), s))?
            .into_inner();
        self.allocate_calls += 1;
        let Some(container) = resp.container_responses.into_iter().next() else {
            return Err(self.admission(format!(
                "Allocate {resource} {id}: no container in the answer"
            )));
        };
        self.admitted.push(pr::PodResources {
            name: pod.into(),
            namespace: ns.into(),
            containers: vec![pr::ContainerResources {
                name: "main".into(),
                devices: vec![pr::ContainerDevices {
                    resource_name: resource.into(),
                    device_ids: vec![id.to_string()],
                    topology: None,
                }],
                ..Default::default()
            }],
        });
        self.kubelet.set_pod_resources(self.admitted.clone());
        Ok(container)
    }

    fn release(&mut self, ns: &str, pod: &str) {
        self.admitted
            .retain(|p| !(p.namespace == ns && p.name == pod));
        self.kubelet.set_pod_resources(self.admitted.clone());
    }

    /// The device ID of the MPS share `(memory_mib, sm_percent)` on `gpu` that no admitted
    /// pod holds.
    fn free_share(&self, gpu: u32, memory_mib: u64, sm_percent: u32) -> Option<String> {
        let inv = self.inventory.borrow();
        let g = inv.gpus.iter().find(|g| g.index == gpu)?;
        let taken: Vec<&String> = self
            .admitted
            .iter()
            .flat_map(|p| &p.containers)
            .flat_map(|c| &c.devices)
            .flat_map(|d| &d.device_ids)
            .collect();
        g.mps
            .iter()
            .filter(|s| s.memory_mib == memory_mib && u32::from(s.thread_percent) == sm_percent)
            .map(|s| names::mps_device_id(&g.uuid, s))
            .find(|id| !taken.contains(&id))
    }
}

/// The simulated cluster with real node processes: apiserver, controller, one
/// [`KubeletNode`] per node.
pub struct KubeletCluster {
    /// The fake apiserver.
    pub server: FakeApiServer,
    /// A client for it.
    pub client: kube::Client,
    /// The controller.
    pub controller: Controller,
    /// The nodes, in name order.
    pub nodes: Vec<KubeletNode>,
    running: BTreeMap<String, Running>,
    busy_destroyed: usize,
    _dir: tempfile::TempDir,
}

impl KubeletCluster {
    /// `nodes` nodes with the GPUs of `gpus` (`h100-80gb:8`); `mig_off` lists, per node, the
    /// GPUs that run with MIG off (MPS GPUs). Starts every node's fake kubelet and device
    /// plugins in a new temporary directory.
    pub async fn new(
        nodes: usize,
        gpus: &str,
        mig_off: &BTreeMap<usize, Vec<u32>>,
        catalog: Catalog,
    ) -> Result<KubeletCluster, DemoError> {
        let server = FakeApiServer::start().await?;
        let client = server.client();
        let list = parse_gpu_list(gpus).map_err(|e| DemoError::GpuList {
            spec: gpus.to_string(),
            detail: e.to_string(),
        })?;
        let dir = tempfile::Builder::new()
            .prefix("tessera-k8s-demo")
            .tempdir()
            .map_err(DemoError::TempDir)?;
        let mut out = Vec::new();
        for i in 0..nodes {
            let name = node_name(i);
            let mut state = SimState::new(&catalog, &list, 1000 + i as u64, true).map_err(|e| {
                DemoError::GpuList {
                    spec: gpus.to_string(),
                    detail: e.to_string(),
                }
            })?;
            for &g in mig_off.get(&i).into_iter().flatten() {
                if let Some(sg) = state.gpus.get_mut(g as usize) {
                    sg.mig = MigMode::steady(false);
                }
            }
            let gpu = SharedSim::new(SimBackend::new(
                state,
                catalog.clone(),
                SimConfig::default(),
            )?);
            let kubelet_dir = dir.path().join(&name);
            let kfail = |source: KubeletError| DemoError::Kubelet {
                node: name.clone(),
                source,
            };
            let kubelet = FakeKubelet::start(&kubelet_dir).await.map_err(kfail)?;
            let (runner, inventory) = NodeRunner::new(
                Box::new(gpu.clone()),
                Box::new(MemJournal::new()),
                catalog.clone(),
                NodeConfig {
                    kubelet_dir: kubelet_dir.clone(),
                    resync: Duration::from_secs(3600),
                },
            )
            .map_err(kfail)?;
            let mut cfg = DevicePluginConfig::new(&kubelet_dir);
            cfg.poll = Duration::from_millis(100);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(run_device_plugins(cfg, inventory.clone(), async {
                let _ = stopped.await;
            }));
            out.push(KubeletNode {
                name,
                gpu,
                runner,
                inventory,
                kubelet,
                plugins: Some((stop, task)),
                watched: BTreeMap::new(),
                admitted: Vec::new(),
                allocate_calls: 0,
                stream_updates: 0,
            });
        }
        let controller = Controller::new(client.clone(), catalog, PlanOptions::default());
        Ok(KubeletCluster {
            server,
            client,
            controller,
            nodes: out,
            running: BTreeMap::new(),
            busy_destroyed: 0,
            _dir: dir,
        })
    }

    /// Every node's cycle, in order: read its `TesseraNode` spec (registering the node on
    /// first use), apply it with the runner, write the status. Returns, per node, each GPU's
    /// MIG layout before and after.
    pub async fn nodes_round(&mut self) -> Result<Vec<Vec<(Vec<String>, Vec<String>)>>, DemoError> {
        let api: Api<TesseraNode> = Api::all(self.client.clone());
        let mut out = Vec::new();
        for n in &mut self.nodes {
            let obj = match api.get_opt(&n.name).await? {
                Some(o) => o,
                None => {
                    api.create(
                        &PostParams::default(),
                        &TesseraNode::new(&n.name, TesseraNodeSpec::default()),
                    )
                    .await?
                }
            };
            let before = n.layouts()?;
            let status = n
                .runner
                .apply(&desired_of(&obj.spec))
                .await
                .map_err(|source| DemoError::Kubelet {
                    node: n.name.clone(),
                    source,
                })?;
            let after = n.layouts()?;
            let mut s = status_of(&status);
            s.observed_generation = obj.metadata.generation;
            api.patch_status(
                &n.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": s})),
            )
            .await?;
            out.push(before.into_iter().zip(after).collect());
        }
        Ok(out)
    }

    /// Create a gated pod asking for `resource: 1`.
    pub async fn submit(
        &self,
        name: &str,
        resource: &str,
        sm_percent: Option<u32>,
    ) -> Result<Pod, DemoError> {
        crate::demo::submit_pod(&self.client, name, resource, sm_percent).await
    }

    /// The binder (kube-scheduler and the kubelet's device manager): every ungated pod with an
    /// earmark is bound to its node and admitted there through the device plugin of its
    /// resource. Returns the pods bound.
    pub async fn bind(&mut self) -> Result<Vec<String>, DemoError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut bound = Vec::new();
        for p in pods.list(&ListParams::default()).await?.items {
            let spec = p.spec.clone().unwrap_or_default();
            if is_gated(&p) || spec.node_name.is_some() {
                continue;
            }
            let Some(mark) = Earmark::of(&p) else {
                continue;
            };
            let Some(ni) = self.nodes.iter().position(|n| n.name == mark.node) else {
                continue;
            };
            let Some(resource) = slice_resource(&p) else {
                continue;
            };
            let ns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = p.metadata.name.clone().unwrap_or_default();
            let node = &mut self.nodes[ni];
            let (id, mig) = match &mark.slice {
                EarmarkedSlice::Mig { start, .. } => {
                    let uuid = node
                        .gpu
                        .lock()
                        .instances(mark.gpu)?
                        .into_iter()
                        .find(|i| i.start == *start)
                        .and_then(|i| i.uuid);
                    let Some(uuid) = uuid else { continue };
                    (uuid.clone(), Some((*start, uuid)))
                }
                EarmarkedSlice::Mps {
                    memory_mib,
                    sm_percent,
                } => match node.free_share(mark.gpu, *memory_mib, *sm_percent) {
                    Some(id) => (id, None),
                    None => continue,
                },
            };
            let answer = node.allocate(&ns, &name, &resource, &id).await?;
            if let Some((_, uuid)) = &mig {
                // What the container gets must be the earmarked instance.
                let visible = answer.envs.get("NVIDIA_VISIBLE_DEVICES");
                if visible != Some(uuid) {
                    return Err(DemoError::Admission {
                        node: node.name.clone(),
                        detail: format!(
                            "Allocate {resource} {uuid} answered NVIDIA_VISIBLE_DEVICES={visible:?}"
                        ),
                    });
                }
                // The container's processes start on it.
                node.gpu
                    .lock()
                    .set_busy(mark.gpu, mig.as_ref().map_or(0, |m| m.0), None)?;
            }
            let ns_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            ns_api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"nodeName": mark.node}})),
                )
                .await?;
            ns_api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"status": {"phase": "Running", "startTime": self.server.now()}}),
                    ),
                )
                .await?;
            self.running.insert(
                pod_key(&p),
                Running {
                    node: ni,
                    gpu: mark.gpu,
                    mig,
                },
            );
            bound.push(pod_key(&p));
        }
        Ok(bound)
    }

    /// A running pod ends: its processes stop, the kubelet forgets its devices, the pod is
    /// deleted.
    pub async fn finish(&mut self, key: &str) -> Result<(), DemoError> {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        if let Some(r) = self.running.remove(key) {
            let node = &mut self.nodes[r.node];
            if let Some((start, _)) = r.mig {
                node.gpu.lock().set_idle(r.gpu, start)?;
            }
            node.release(ns, name);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.delete(name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// Check that every running pod's MIG instance still exists with its UUID; returns how
    /// many busy instances were destroyed since the start (must stay 0).
    pub fn check_busy(&mut self) -> usize {
        for r in self.running.values() {
            let Some((start, uuid)) = &r.mig else {
                continue;
            };
            let alive = self.nodes[r.node]
                .gpu
                .lock()
                .instances(r.gpu)
                .map(|is| {
                    is.iter()
                        .any(|i| i.start == *start && i.uuid.as_deref() == Some(uuid))
                })
                .unwrap_or(false);
            if !alive {
                self.busy_destroyed += 1;
            }
        }
        self.busy_destroyed
    }

    /// `destroy_gi` calls on busy instances that the simulated GPUs refused, over all nodes.
    pub fn busy_destroy_attempts(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.gpu.lock().stats().busy_destroy_attempts)
            .sum()
    }

    /// `Register` calls the fake kubelets received, over all nodes.
    pub fn registrations(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.kubelet.registrations().len())
            .sum()
    }

    /// `Register` calls beyond the first of each resource on each node (a layout change
    /// reaches the kubelet on the open streams, so this stays 0 without a kubelet restart).
    pub fn reregistrations(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                let regs = n.kubelet.registrations();
                let distinct: std::collections::BTreeSet<&str> =
                    regs.iter().map(|r| r.resource_name.as_str()).collect();
                regs.len() - distinct.len()
            })
            .sum()
    }

    /// One full cycle: controller (plan and earmark), nodes (carve, report), controller
    /// (release gates), binder. Returns the pods bound.
    pub async fn cycle(&mut self) -> Result<Vec<String>, DemoError> {
        self.controller.round().await?;
        self.nodes_round().await?;
        self.controller.round().await?;
        let bound = self.bind().await?;
        self.check_busy();
        Ok(bound)
    }

    /// `Allocate` calls answered, over all nodes.
    pub fn allocate_calls(&self) -> usize {
        self.nodes.iter().map(|n| n.allocate_calls).sum()
    }

    /// ListAndWatch messages the binder read, over all nodes.
    pub fn stream_updates(&self) -> usize {
        self.nodes.iter().map(|n| n.stream_updates).sum()
    }

    /// Stop every node's plugins and fake kubelet (their sockets go with the temporary
    /// directory).
    pub async fn stop(mut self) -> Result<(), DemoError> {
        for mut n in std::mem::take(&mut self.nodes) {
            n.watched.clear();
            if let Some((stop, task)) = n.plugins.take() {
                let _ = stop.send(());
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(DemoError::Kubelet {
                            node: n.name.clone(),
                            source: e,
                        })
                    }
                    Err(e) => {
                        return Err(DemoError::PluginTask {
                            node: n.name.clone(),
                            source: e,
                        })
                    }
                }
            }
            n.kubelet.stop().await;
        }
        Ok(())
    }
}

/// The `nvidia.com/…` resource a pod's container asks for.
fn slice_resource(p: &Pod) -> Option<String> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.limits.as_ref())
        .flat_map(|l| l.keys())
        .find(|k| k.starts_with("nvidia.com/"))
        .cloned()
}
