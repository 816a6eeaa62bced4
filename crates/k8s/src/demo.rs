//! `tessera k8s demo`: a whole simulated cluster in one process — the fake apiserver, the
//! controller, and per node the kubelet crate's node runner and device plugins on simulated
//! GPUs, talking to a fake kubelet over Unix sockets ([`KubeletCluster`]) — driven by a
//! scripted mix of pods on a virtual clock.
//!
//! [`SimCluster`] is the lighter harness of the scenario tests: the node agent's cluster mode
//! ([`NodeAgent`]) with an in-process binder ([`SimCluster::bind`]) that marks the earmarked
//! slice busy on the node's simulated GPU instead of going through the kubelet protocols. Its
//! binder is not a scheduler: it places only pods the controller pinned to a node.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;
use tessera_agent::{MemJournal, RecordingSleeper};
use tessera_gpu::sim::{parse_gpu_list, SplitMix64};
use tessera_gpu::{GpuBackend, SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_planner::PlanOptions;

use crate::controller::{Controller, ControllerError, RoundReport};
use crate::crd::{SliceMode, TesseraNode};
use crate::fake::{FakeApiServer, FakeStartError};
use crate::kubelet_cluster::KubeletCluster;
use crate::node::{NodeAgent, NodeError};
use crate::pods::{is_gated, pod_key, Earmark, EarmarkedSlice, GATE, SM_PERCENT_ANNOTATION};
use tessera_kubelet::KubeletError;

/// Why the simulated cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The fake apiserver did not start.
    #[error(transparent)]
    Start(#[from] FakeStartError),
    /// An apiserver request failed.
    #[error("apiserver request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The controller failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// A node agent failed.
    #[error("node {node}: {source}")]
    Node {
        /// The node.
        node: String,
        /// What failed.
        #[source]
        source: NodeError,
    },
    /// The simulated GPUs could not be made.
    #[error("simulated GPUs: {0}")]
    Sim(#[from] tessera_gpu::GpuError),
    /// A node's kubelet side (fake kubelet, device plugins, node runner, a kubelet call)
    /// failed.
    #[error("node {node}: {source}")]
    Kubelet {
        /// The node.
        node: String,
        /// What failed.
        #[source]
        source: KubeletError,
    },
    /// A pod could not be admitted on its node (a plugin that never registered or listed the
    /// slice, or an `Allocate` answer for another device).
    #[error("node {node}: admitting a pod: {detail}")]
    Admission {
        /// The node.
        node: String,
        /// What went wrong.
        detail: String,
    },
    /// The device plugins' task of a node failed to stop.
    #[error("node {node}: the device plugins' task: {source}")]
    PluginTask {
        /// The node.
        node: String,
        /// Why it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// No temporary directory for the kubelet sockets.
    #[error("cannot make a temporary directory for the kubelet sockets: {0}")]
    TempDir(#[source] std::io::Error),
    /// A bad `--gpus` list.
    #[error("bad GPU list `{spec}`: {detail}")]
    GpuList {
        /// The list given.
        spec: String,
        /// What is wrong.
        detail: String,
    },
}

/// A running pod and the instance it holds.
#[derive(Debug, Clone)]
struct Running {
    node: String,
    gpu: u32,
    start: Option<u8>,
    uuid: Option<String>,
}

/// The scenario tests' cluster: apiserver, controller, node agents (no kubelet protocols).
pub struct SimCluster {
    /// The fake apiserver.
    pub server: FakeApiServer,
    /// A client for it.
    pub client: kube::Client,
    /// The controller.
    pub controller: Controller,
    /// One agent per node, in name order.
    pub agents: Vec<NodeAgent<SimBackend>>,
    running: BTreeMap<String, Running>,
    busy_destroyed: usize,
}

/// Create a gated pod `default/NAME` asking for `resource: 1` (e.g. `nvidia.com/mig-1g.10gb`),
/// with the SM-percent annotation when given.
pub async fn submit_pod(
    client: &kube::Client,
    name: &str,
    resource: &str,
    sm_percent: Option<u32>,
) -> Result<Pod, DemoError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut annotations = serde_json::Map::new();
    if let Some(p) = sm_percent {
        annotations.insert(SM_PERCENT_ANNOTATION.into(), json!(p.to_string()));
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "schedulingGates": [{"name": GATE}],
            "containers": [{"name": "main", "image": "cuda:12",
                            "resources": {"limits": {resource: "1"}}}]
        }
    }))
    .expect("a valid pod");
    Ok(pods.create(&PostParams::default(), &pod).await?)
}

/// Node `i`'s name.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

impl SimCluster {
    /// `nodes` nodes, each with the GPUs of `gpus` (`h100-80gb:8`), MIG mode on.
    pub async fn new(nodes: usize, gpus: &str, catalog: Catalog) -> Result<SimCluster, DemoError> {
        let server = FakeApiServer::start().await?;
        let client = server.client();
        let list = parse_gpu_list(gpus).map_err(|e| DemoError::GpuList {
            spec: gpus.to_string(),
            detail: e.to_string(),
        })?;
        let mut agents = Vec::new();
        for i in 0..nodes {
            let state = SimState::new(&catalog, &list, 1000 + i as u64, true).map_err(|e| {
                DemoError::GpuList {
                    spec: gpus.to_string(),
                    detail: e.to_string(),
                }
            })?;
            let backend = SimBackend::new(state, catalog.clone(), SimConfig::default())?;
            agents.push(NodeAgent::new(
                &node_name(i),
                Api::all(client.clone()),
                catalog.clone(),
                backend,
                Box::new(MemJournal::new()),
                Box::new(RecordingSleeper::default()),
            ));
        }
        let controller = Controller::new(client.clone(), catalog, PlanOptions::default());
        Ok(SimCluster {
            server,
            client,
            controller,
            agents,
            running: BTreeMap::new(),
            busy_destroyed: 0,
        })
    }

    /// Run one node's GPU in another mode (before its first round).
    pub fn set_mode(&mut self, node: usize, gpu: u32, mode: SliceMode) {
        if let Some(a) = self.agents.get_mut(node) {
            a.set_mode(gpu, mode);
        }
    }

    /// Create a gated pod asking for `resource: 1` (e.g. `nvidia.com/mig-1g.10gb`).
    pub async fn submit(
        &self,
        name: &str,
        resource: &str,
        sm_percent: Option<u32>,
    ) -> Result<Pod, DemoError> {
        submit_pod(&self.client, name, resource, sm_percent).await
    }

    /// Every node agent's round, in order.
    pub async fn agents_round(&mut self) -> Result<usize, DemoError> {
        let mut changed = 0;
        for a in &mut self.agents {
            let r = a.round().await.map_err(|source| DemoError::Node {
                node: a.name().to_string(),
                source,
            })?;
            changed += r.ops;
        }
        Ok(changed)
    }

    /// The binder: bind every ungated pod pinned to a node and start it on its slice. Returns
    /// the pods bound.
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
            let Some(agent) = self.agents.iter_mut().find(|a| a.name() == mark.node) else {
                continue;
            };
            let (start, uuid) = match &mark.slice {
                EarmarkedSlice::Mig { start, .. } => {
                    agent.backend_mut().set_busy(mark.gpu, *start, None)?;
                    let uuid = agent
                        .backend_mut()
                        .instances(mark.gpu)?
                        .into_iter()
                        .find(|i| i.start == *start)
                        .and_then(|i| i.uuid);
                    (Some(*start), uuid)
                }
                EarmarkedSlice::Mps { .. } => (None, None),
            };
            let ns_api: Api<Pod> = Api::namespaced(
                self.client.clone(),
                p.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let name = p.metadata.name.clone().unwrap_or_default();
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
                    &Patch::Merge(json!({"status": {"phase": "Running"}})),
                )
                .await?;
            self.running.insert(
                pod_key(&p),
                Running {
                    node: mark.node.clone(),
                    gpu: mark.gpu,
                    start,
                    uuid,
                },
            );
            bound.push(pod_key(&p));
        }
        Ok(bound)
    }

    /// A running pod ends: its processes stop and the pod is deleted.
    pub async fn finish(&mut self, key: &str) -> Result<(), DemoError> {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        if let Some(r) = self.running.remove(key) {
            if let (Some(start), Some(agent)) =
                (r.start, self.agents.iter_mut().find(|a| a.name() == r.node))
            {
                agent.backend_mut().set_idle(r.gpu, start)?;
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.delete(name, &DeleteParams::default()).await?;
        Ok(())
    }

    /// Check that every running pod's instance still exists with the same UUID; returns how
    /// many busy instances were destroyed since the start (must stay 0).
    pub fn check_busy(&mut self) -> usize {
        for r in self.running.values() {
            let (Some(start), Some(agent)) =
                (r.start, self.agents.iter_mut().find(|a| a.name() == r.node))
            else {
                continue;
            };
            let alive = agent
                .backend_mut()
                .instances(r.gpu)
                .map(|is| is.iter().any(|i| i.start == start && i.uuid == r.uuid))
                .unwrap_or(false);
            if !alive {
                self.busy_destroyed += 1;
            }
        }
        self.busy_destroyed
    }

    /// `destroy_gi` calls on busy instances that the simulated GPUs refused, over all nodes.
    pub fn busy_destroy_attempts(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| a.backend().stats().busy_destroy_attempts)
            .sum()
    }

    /// The node agents' `TesseraNode` objects.
    pub async fn nodes(&self) -> Result<Vec<TesseraNode>, DemoError> {
        let api: Api<TesseraNode> = Api::all(self.client.clone());
        Ok(api.list(&ListParams::default()).await?.items)
    }

    /// One full cycle: controller (plan and earmark), agents (carve), controller (release
    /// gates), binder. Returns the controller's two reports and the pods bound.
    pub async fn cycle(
        &mut self,
    ) -> Result<(RoundReport, usize, RoundReport, Vec<String>), DemoError> {
        let r1 = self.controller.round().await?;
        let ops = self.agents_round().await?;
        let r2 = self.controller.round().await?;
        let bound = self.bind().await?;
        self.check_busy();
        Ok((r1, ops, r2, bound))
    }
}

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Nodes.
    pub nodes: usize,
    /// GPUs of each node (`h100-80gb:8`).
    pub gpus: String,
    /// Pods in the script.
    pub pods: usize,
    /// Seed of the script.
    pub seed: u64,
    /// Virtual seconds per cycle.
    pub tick: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 4,
            gpus: "h100-80gb:8".into(),
            pods: 320,
            seed: 7,
            tick: Duration::from_secs(10),
        }
    }
}

/// What the demo did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DemoSummary {
    /// Nodes.
    pub nodes: usize,
    /// GPUs in all.
    pub gpus: usize,
    /// Pods submitted.
    pub pods: usize,
    /// Pods bound to a node with their slice.
    pub bound: usize,
    /// Pods never bound: their slice exists on no GPU of the cluster, or their request is bad.
    pub unschedulable: usize,
    /// Busy instances destroyed (always 0).
    pub busy_destroyed: usize,
    /// `destroy_gi` calls on busy instances refused by the simulated GPUs (a correct agent makes none).
    pub busy_destroy_attempts: u64,
    /// GPU layout changes the agents applied (GPUs changed in a cycle, summed).
    pub repartitions: usize,
    /// MIG instances created plus destroyed.
    pub mig_ops: usize,
    /// Mean wait from submission to binding, in virtual seconds.
    pub mean_wait_s: f64,
    /// Longest wait, in virtual seconds.
    pub max_wait_s: f64,
    /// Times a pod got a slice while an older pod of the same kind kept waiting (always 0).
    pub overtaken: usize,
    /// Cycles run.
    pub cycles: usize,
    /// Virtual seconds per cycle.
    pub tick_s: f64,
    /// `Register` calls the nodes' fake kubelets received (one per resource name a node's
    /// device plugins serve; none again when the layout changes).
    pub kubelet_registrations: usize,
    /// `Register` calls beyond each node's first of a resource (0: layout changes reach the
    /// kubelet on the open ListAndWatch streams, no plugin restarts).
    pub plugin_reregistrations: usize,
    /// `Allocate` calls the kubelets made, one per bound pod.
    pub allocate_calls: usize,
    /// ListAndWatch messages the kubelets read on the plugins' open streams.
    pub list_and_watch_updates: usize,
}

/// One scripted pod.
#[derive(Debug, Clone)]
struct Scripted {
    name: String,
    resource: String,
    sm_percent: Option<u32>,
    arrive: usize,
    run: usize,
}

fn script(opts: &DemoOptions) -> Vec<Scripted> {
    // Weights of the mix: mostly small MIG slices, some large, some MPS (the last node's last
    // two GPUs),
    // and one profile no H100 has (1g.5gb is an A100-40GB profile): it stays unschedulable.
    const MIX: [(&str, u64); 8] = [
        ("nvidia.com/mig-1g.10gb", 30),
        ("nvidia.com/mig-1g.20gb", 10),
        ("nvidia.com/mig-2g.20gb", 20),
        ("nvidia.com/mig-3g.40gb", 15),
        ("nvidia.com/mig-4g.40gb", 8),
        ("nvidia.com/mig-7g.80gb", 7),
        ("nvidia.com/gpu-10gb", 8),
        ("nvidia.com/gpu-20gb", 2),
    ];
    let total: u64 = MIX.iter().map(|(_, w)| w).sum();
    let mut rng = SplitMix64::new(opts.seed);
    let span = (opts.pods / 8).max(1);
    let mut out = Vec::new();
    for i in 0..opts.pods {
        let mut x = rng.next_u64() % total;
        let mut resource = MIX[0].0;
        for (r, w) in MIX {
            if x < w {
                resource = r;
                break;
            }
            x -= w;
        }
        let sm = resource
            .starts_with("nvidia.com/gpu-")
            .then(|| 10 + (rng.next_u64() % 3) as u32 * 10);
        out.push(Scripted {
            name: format!("job-{i:04}"),
            resource: resource.to_string(),
            sm_percent: sm,
            arrive: (rng.next_u64() % span as u64) as usize,
            run: 5 + (rng.next_u64() % 26) as usize,
        });
    }
    out.push(Scripted {
        name: "job-a100-only".into(),
        resource: "nvidia.com/mig-1g.5gb".into(),
        sm_percent: None,
        arrive: 0,
        run: 5,
    });
    out.sort_by(|a, b| a.arrive.cmp(&b.arrive).then_with(|| a.name.cmp(&b.name)));
    out
}

/// Run the demo: the cluster of [`KubeletCluster`] (node runners, device plugins and a fake
/// kubelet per node over Unix sockets) under the scripted mix, on the virtual clock.
pub async fn run_demo(opts: &DemoOptions, catalog: Catalog) -> Result<DemoSummary, DemoError> {
    let list = parse_gpu_list(&opts.gpus).map_err(|e| DemoError::GpuList {
        spec: opts.gpus.clone(),
        detail: e.to_string(),
    })?;
    let gpus_per_node: usize = list.iter().map(|(_, n)| *n as usize).sum();
    // The last node's last two GPUs run with MIG off and serve MPS (nos-style
    // `nvidia.com/gpu-<N>gb` pods).
    let mut mig_off = BTreeMap::new();
    if gpus_per_node >= 4 && opts.nodes > 0 {
        mig_off.insert(
            opts.nodes - 1,
            (gpus_per_node - 2..gpus_per_node)
                .map(|g| g as u32)
                .collect::<Vec<_>>(),
        );
    }
    let mut c = KubeletCluster::new(opts.nodes, &opts.gpus, &mig_off, catalog).await?;
    // Register the nodes.
    c.nodes_round().await?;
    let base = Timestamp::from_second(1_767_225_600).expect("a valid time");
    let tick_s = opts.tick.as_secs_f64();
    let script = script(opts);
    let mut arrived: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut waits = Vec::new();
    let mut ends: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut next = 0;
    let mut repartitions = 0;
    let mut mig_ops = 0;
    let mut overtaken = 0;
    let mut cycle = 0;
    let last_arrival = script.iter().map(|s| s.arrive).max().unwrap_or(0);
    loop {
        let now = base
            .checked_add(SignedDuration::from_secs_f64(cycle as f64 * tick_s))
            .unwrap_or(base);
        c.server.set_clock(Some(now));
        for key in ends.remove(&cycle).unwrap_or_default() {
            c.finish(&key).await?;
        }
        while next < script.len() && script[next].arrive <= cycle {
            let s = &script[next];
            c.submit(&s.name, &s.resource, s.sm_percent).await?;
            arrived.insert(
                format!("default/{}", s.name),
                (cycle, format!("{}:{:?}", s.resource, s.sm_percent)),
            );
            next += 1;
        }
        let r1 = c.controller.round().await?;
        for node in c.nodes_round().await? {
            for (b, af) in node {
                if b != af {
                    repartitions += 1;
                    let bs: std::collections::BTreeSet<_> = b.iter().collect();
                    let as_: std::collections::BTreeSet<_> = af.iter().collect();
                    mig_ops += bs.symmetric_difference(&as_).count();
                }
            }
        }
        c.controller.round().await?;
        let bound = c.bind().await?;
        c.check_busy();
        // Overtaking: a pod earmarked this cycle while an older same-kind pod stays unmarked.
        overtaken += count_overtaken(&r1, &arrived);
        for key in bound {
            if let Some((t0, _)) = arrived.get(&key) {
                waits.push((cycle - t0) as f64 * tick_s);
                let run = script
                    .iter()
                    .find(|s| format!("default/{}", s.name) == key)
                    .map(|s| s.run)
                    .unwrap_or(1);
                ends.entry(cycle + run).or_default().push(key);
            }
        }
        cycle += 1;
        let idle = ends.is_empty();
        if (cycle > last_arrival && idle) || cycle > last_arrival + 10 * script.len() + 50 {
            break;
        }
    }
    let bound = waits.len();
    let summary = DemoSummary {
        nodes: opts.nodes,
        gpus: opts.nodes * gpus_per_node,
        pods: script.len(),
        bound,
        unschedulable: script.len() - bound,
        busy_destroyed: c.check_busy(),
        busy_destroy_attempts: c.busy_destroy_attempts(),
        repartitions,
        mig_ops,
        mean_wait_s: if waits.is_empty() {
            0.0
        } else {
            waits.iter().sum::<f64>() / waits.len() as f64
        },
        max_wait_s: waits.iter().copied().fold(0.0, f64::max),
        overtaken,
        cycles: cycle,
        tick_s,
        kubelet_registrations: c.registrations(),
        plugin_reregistrations: c.reregistrations(),
        allocate_calls: c.allocate_calls(),
        list_and_watch_updates: c.stream_updates(),
    };
    c.stop().await?;
    Ok(summary)
}

/// Pods earmarked in `r` that arrived after a same-kind pod that `r` left waiting.
fn count_overtaken(r: &RoundReport, arrived: &BTreeMap<String, (usize, String)>) -> usize {
    let mut n = 0;
    for e in &r.earmarked {
        let key = e.split('=').next().unwrap_or("");
        let Some((t, kind)) = arrived.get(key) else {
            continue;
        };
        n += r
            .unassigned
            .iter()
            .filter_map(|u| arrived.get(u).map(|a| (u, a)))
            .filter(|(u, (tu, ku))| ku == kind && (tu < t || (tu == t && u.as_str() < key)))
            .count();
    }
    n
}
