//! Device-plugin mode: one plugin endpoint and one `Register` per resource name, all fed by
//! one `watch` of the node's [`NodeInventory`].
//!
//! A layout change is pushed on every open ListAndWatch stream whose device list changed,
//! with no restart and no new registration; a resource seen for the first time gets its own
//! socket and one more `Register` (the others are untouched). When `kubelet.sock` is
//! recreated (a kubelet restart, which also deletes the plugin sockets) every plugin socket
//! that is gone is served again and every resource registers again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::error::KubeletError;
use crate::inventory::NodeInventory;
use crate::ledger::{AllocPath, Ledger};
use crate::names::{self, DpDevice, HEALTHY, UNHEALTHY};
use crate::proto::deviceplugin as pb;
use crate::proto::deviceplugin::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::proto::deviceplugin::registration_client::RegistrationClient;
use crate::uds;

/// The device-plugin API version sent in `Register`.
pub const API_VERSION: &str = "v1beta1";
/// The kubelet's registration socket, in `<kubelet-dir>/device-plugins/`.
pub const KUBELET_SOCKET: &str = "kubelet.sock";

/// Where and how the plugins run.
#[derive(Debug, Clone)]
pub struct DevicePluginConfig {
    /// The kubelet's root directory (`/var/lib/kubelet`); sockets go in `device-plugins/`.
    pub kubelet_dir: PathBuf,
    /// CDI kind of the device names `Allocate` returns (`<kind>=<UUID>`).
    pub cdi_kind: String,
    /// How often to check `kubelet.sock` for a kubelet restart and retry failed
    /// registrations.
    pub poll: Duration,
    /// The ledger shared with the DRA plugin (`--mode both`): devices it holds are listed
    /// `Unhealthy` and refused by `Allocate`; what `Allocate` hands out is recorded.
    pub ledger: Option<Arc<Ledger>>,
}

impl DevicePluginConfig {
    /// Defaults for a kubelet directory: CDI kind `nvidia.com/gpu`, checks every 500 ms.
    pub fn new(kubelet_dir: impl Into<PathBuf>) -> Self {
        DevicePluginConfig {
            kubelet_dir: kubelet_dir.into(),
            cdi_kind: "nvidia.com/gpu".into(),
            poll: Duration::from_millis(500),
            ledger: None,
        }
    }

    /// `<kubelet-dir>/device-plugins`.
    pub fn plugin_dir(&self) -> PathBuf {
        self.kubelet_dir.join("device-plugins")
    }
}

/// One resource's plugin service.
#[derive(Clone)]
struct Plugin {
    resource: String,
    inventory: watch::Receiver<NodeInventory>,
    cdi_kind: Arc<str>,
    ledger: Option<Arc<Ledger>>,
}

impl Plugin {
    /// The resource's devices; one a DRA claim holds is `Unhealthy`, so the kubelet does not
    /// allocate it.
    fn devices(&self, inv: &NodeInventory) -> Vec<DpDevice> {
        let mut list = names::resources(inv)
            .remove(&self.resource)
            .unwrap_or_default();
        for d in &mut list {
            if inv.allocated.get(&d.id) == Some(&AllocPath::Dra) {
                d.healthy = false;
            }
        }
        list
    }
}

fn to_pb(devices: &[DpDevice]) -> Vec<pb::Device> {
    devices
        .iter()
        .map(|d| pb::Device {
            id: d.id.clone(),
            health: if d.healthy { HEALTHY } else { UNHEALTHY }.to_string(),
            topology: None,
        })
        .collect()
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut inv = self.inventory.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let mut last: Option<Vec<pb::Device>> = None;
            loop {
                let now = to_pb(&me.devices(&inv.borrow_and_update()));
                if last.as_ref() != Some(&now) {
                    let msg = pb::ListAndWatchResponse {
                        devices: now.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    changed = inv.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        Err(Status::unimplemented(
            "tessera's device plugins do not offer GetPreferredAllocation",
        ))
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let devices = self.devices(&self.inventory.borrow());
        let mut out = pb::AllocateResponse::default();
        for c in req.into_inner().container_requests {
            let mut mine = Vec::new();
            for id in &c.devices_ids {
                let d = devices.iter().find(|d| &d.id == id).ok_or_else(|| {
                    Status::not_found(format!(
                        "{}: no device {id} on this node now (the layout changed since it was listed)",
                        self.resource
                    ))
                })?;
                mine.push(d);
            }
            if let Some(ledger) = &self.ledger {
                let before = ledger.snapshot();
                for d in &mine {
                    if let Err(e) = ledger.take(&d.id, AllocPath::DevicePlugin, &self.resource) {
                        // Nothing half-taken: release what this request took.
                        for t in &mine {
                            if !before.contains_key(&t.id) {
                                ledger.release(&t.id, AllocPath::DevicePlugin);
                            }
                        }
                        return Err(Status::failed_precondition(format!(
                            "{}: {e}",
                            self.resource
                        )));
                    }
                }
            }
            let edits = names::container_edits(&mine, &self.cdi_kind)
                .map_err(|e| Status::invalid_argument(format!("{}: {e}", self.resource)))?;
            out.container_responses.push(pb::ContainerAllocateResponse {
                envs: edits.env.into_iter().collect(),
                mounts: edits
                    .mounts
                    .into_iter()
                    .map(|(host, container, ro)| pb::Mount {
                        container_path: container,
                        host_path: host,
                        read_only: ro,
                    })
                    .collect(),
                devices: Vec::new(),
                annotations: Default::default(),
                cdi_devices: edits
                    .cdi_devices
                    .into_iter()
                    .map(|name| pb::CdiDevice { name })
                    .collect(),
            });
        }
        Ok(Response::new(out))
    }

    async fn pre_start_container(
        &self,
        _: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse {}))
    }
}

fn options() -> pb::DevicePluginOptions {
    pb::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: false,
    }
}

/// A running plugin server.
struct Serving {
    socket: PathBuf,
    identity: Option<uds::FileId>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    registered: bool,
}

impl Serving {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Graceful shutdown would wait for the kubelet's open ListAndWatch streams.
        self.task.abort();
        let _ = self.task.await;
    }
}

fn serve(plugin: Plugin, socket: &Path) -> Result<Serving, KubeletError> {
    let incoming = uds::bind(socket)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.to_path_buf();
    let task = tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(DevicePluginServer::new(plugin))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = r {
            tracing::warn!("device plugin on {}: {e}", path.display());
        }
    });
    Ok(Serving {
        socket: socket.to_path_buf(),
        identity: uds::identity(socket),
        stop: Some(stop),
        task,
        registered: false,
    })
}

async fn register(cfg: &DevicePluginConfig, resource: &str) -> Result<(), KubeletError> {
    let channel = uds::connect(&cfg.plugin_dir().join(KUBELET_SOCKET)).await?;
    RegistrationClient::new(channel)
        .register(pb::RegisterRequest {
            version: API_VERSION.into(),
            endpoint: names::socket_name(resource),
            resource_name: resource.to_string(),
            options: Some(options()),
        })
        .await
        .map_err(|status| KubeletError::Call {
            call: format!("Register {resource}"),
            status,
        })?;
    Ok(())
}

/// Serve every resource of the inventory as a device plugin until `shutdown` resolves or the
/// inventory's sender is dropped; then stop the servers and remove their sockets. Returns early only on an error that retrying
/// cannot fix (a socket that cannot be bound).
pub async fn run_device_plugins(
    cfg: DevicePluginConfig,
    mut inventory: watch::Receiver<NodeInventory>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeletError> {
    let cdi_kind: Arc<str> = cfg.cdi_kind.as_str().into();
    let kubelet_sock = cfg.plugin_dir().join(KUBELET_SOCKET);
    let mut kubelet_id = uds::identity(&kubelet_sock);
    let mut plugins: BTreeMap<String, Serving> = BTreeMap::new();
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let result = loop {
        // Resources seen for the first time get a server; known ones keep theirs.
        let wanted: Vec<String> = names::resources(&inventory.borrow_and_update())
            .into_keys()
            .collect();
        let mut failed = None;
        for resource in wanted {
            if plugins.contains_key(&resource) {
                continue;
            }
            let plugin = Plugin {
                resource: resource.clone(),
                inventory: inventory.clone(),
                cdi_kind: cdi_kind.clone(),
                ledger: cfg.ledger.clone(),
            };
            match serve(
                plugin,
                &cfg.plugin_dir().join(names::socket_name(&resource)),
            ) {
                Ok(s) => {
                    plugins.insert(resource, s);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        // A recreated kubelet.sock: the kubelet restarted and removed our sockets.
        let now_id = uds::identity(&kubelet_sock);
        if now_id != kubelet_id {
            kubelet_id = now_id;
            let mut rebind = Vec::new();
            for (resource, s) in plugins.iter_mut() {
                s.registered = false;
                if uds::identity(&s.socket) != s.identity {
                    rebind.push(resource.clone());
                }
            }
            for resource in rebind {
                if let Some(old) = plugins.remove(&resource) {
                    old.stop().await;
                }
                let plugin = Plugin {
                    resource: resource.clone(),
                    inventory: inventory.clone(),
                    cdi_kind: cdi_kind.clone(),
                    ledger: cfg.ledger.clone(),
                };
                match serve(
                    plugin,
                    &cfg.plugin_dir().join(names::socket_name(&resource)),
                ) {
                    Ok(s) => {
                        plugins.insert(resource, s);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
        }
        if kubelet_id.is_some() {
            for (resource, s) in plugins.iter_mut().filter(|(_, s)| !s.registered) {
                match register(&cfg, resource).await {
                    Ok(()) => {
                        tracing::info!("registered {resource} with the kubelet");
                        s.registered = true;
                    }
                    Err(e) => tracing::warn!("{e}; retrying"),
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            changed = inventory.changed() => if changed.is_err() { break Ok(()) },
            _ = tick.tick() => {}
        }
    };
    for (_, s) in std::mem::take(&mut plugins) {
        let socket = s.socket.clone();
        s.stop().await;
        let _ = std::fs::remove_file(socket);
    }
    result
}
