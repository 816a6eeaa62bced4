//! A fake kubelet for tests (this crate's and the cluster side's): it speaks the real
//! protocols over Unix sockets in a directory laid out like `/var/lib/kubelet`.
//!
//! - device plugins: serves `Registration` on `device-plugins/kubelet.sock`, records every
//!   `Register`, dials a plugin's endpoint; [`FakeKubelet::restart`] does what a kubelet
//!   start does (removes the sockets in `device-plugins/`, serves a new `kubelet.sock`);
//! - PodResources: serves `List`/`Get` on `pod-resources/kubelet.sock` from a settable list,
//!   to which [`FakeKubelet::admit_pod`] adds what it allocated through a plugin;
//! - DRA: finds a plugin's socket in `plugins_registry/`, calls `GetInfo` and
//!   `NotifyRegistrationStatus`, and dials the `DRAPlugin` service it names.
//!
//! It is a test double, not a kubelet: no pods, no admission, no checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::KubeletError;
use crate::proto::deviceplugin as dp;
use crate::proto::deviceplugin::device_plugin_client::DevicePluginClient;
use crate::proto::deviceplugin::registration_server::{Registration, RegistrationServer};
use crate::proto::dra::dra_plugin_client::DraPluginClient;
use crate::proto::pluginregistration as reg;
use crate::proto::pluginregistration::registration_client::RegistrationClient as PluginRegistrationClient;
use crate::proto::podresources as pr;
use crate::proto::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use crate::uds;

#[derive(Clone)]
struct RegistrationSvc {
    seen: watch::Sender<Vec<dp::RegisterRequest>>,
}

#[tonic::async_trait]
impl Registration for RegistrationSvc {
    async fn register(
        &self,
        req: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let r = req.into_inner();
        if r.version != "v1beta1" {
            return Err(Status::invalid_argument(format!(
                "unsupported device plugin API version {}",
                r.version
            )));
        }
        self.seen.send_modify(|v| v.push(r));
        Ok(Response::new(dp::Empty {}))
    }
}

#[derive(Clone)]
struct PodResourcesSvc {
    pods: watch::Receiver<Vec<pr::PodResources>>,
}

#[tonic::async_trait]
impl PodResourcesLister for PodResourcesSvc {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        Ok(Response::new(pr::ListPodResourcesResponse {
            pod_resources: self.pods.borrow().clone(),
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        Ok(Response::new(pr::AllocatableResourcesResponse::default()))
    }

    async fn get(
        &self,
        req: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        let r = req.into_inner();
        let pod = self
            .pods
            .borrow()
            .iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .cloned()
            .ok_or_else(|| Status::not_found("no such pod"))?;
        Ok(Response::new(pr::GetPodResourcesResponse {
            pod_resources: Some(pod),
        }))
    }
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        // Open streams would hold a graceful shutdown forever.
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The fake kubelet. Dropping it stops nothing by itself; call [`FakeKubelet::stop`].
pub struct FakeKubelet {
    dir: PathBuf,
    registrations: watch::Sender<Vec<dp::RegisterRequest>>,
    pods: watch::Sender<Vec<pr::PodResources>>,
    registration: Option<Server>,
    pod_resources: Option<Server>,
}

impl std::fmt::Debug for FakeKubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FakeKubelet({})", self.dir.display())
    }
}

impl FakeKubelet {
    /// Start serving in `kubelet_dir` (made if missing): `device-plugins/kubelet.sock` and
    /// `pod-resources/kubelet.sock`.
    pub async fn start(kubelet_dir: &Path) -> Result<FakeKubelet, KubeletError> {
        let (registrations, _) = watch::channel(Vec::new());
        let (pods, _) = watch::channel(Vec::new());
        let mut k = FakeKubelet {
            dir: kubelet_dir.to_path_buf(),
            registrations,
            pods,
            registration: None,
            pod_resources: None,
        };
        k.serve_registration()?;
        let svc = PodResourcesSvc {
            pods: k.pods.subscribe(),
        };
        let incoming = uds::bind(&k.dir.join("pod-resources").join("kubelet.sock"))?;
        k.pod_resources = Some(spawn(PodResourcesListerServer::new(svc), incoming));
        Ok(k)
    }

    fn serve_registration(&mut self) -> Result<(), KubeletError> {
        let svc = RegistrationSvc {
            seen: self.registrations.clone(),
        };
        let incoming = uds::bind(&self.device_plugin_dir().join("kubelet.sock"))?;
        self.registration = Some(spawn(RegistrationServer::new(svc), incoming));
        Ok(())
    }

    /// The kubelet directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/device-plugins`.
    pub fn device_plugin_dir(&self) -> PathBuf {
        self.dir.join("device-plugins")
    }

    /// Every `Register` received so far, in order.
    pub fn registrations(&self) -> Vec<dp::RegisterRequest> {
        self.registrations.borrow().clone()
    }

    /// How many `Register` calls named `resource`.
    pub fn registrations_of(&self, resource: &str) -> usize {
        self.registrations
            .borrow()
            .iter()
            .filter(|r| r.resource_name == resource)
            .count()
    }

    /// Wait until `resource` has registered at least `n` times in all; `None` after
    /// `timeout`. Returns the latest registration of that resource.
    pub async fn wait_registered(
        &self,
        resource: &str,
        n: usize,
        timeout: Duration,
    ) -> Option<dp::RegisterRequest> {
        let mut rx = self.registrations.subscribe();
        let done = rx.wait_for(|v| v.iter().filter(|r| r.resource_name == resource).count() >= n);
        let got = tokio::time::timeout(timeout, done).await.ok()?.ok()?;
        got.iter()
            .rev()
            .find(|r| r.resource_name == resource)
            .cloned()
    }

    /// Dial the endpoint a plugin registered, as the kubelet does.
    pub async fn dial(
        &self,
        registration: &dp::RegisterRequest,
    ) -> Result<DevicePluginClient<Channel>, KubeletError> {
        let channel = uds::connect(&self.device_plugin_dir().join(&registration.endpoint)).await?;
        Ok(DevicePluginClient::new(channel))
    }

    /// Set what PodResources `List` answers.
    pub fn set_pod_resources(&self, pods: Vec<pr::PodResources>) {
        self.pods.send_replace(pods);
    }

    /// Admit a pod the way the kubelet's device manager does: take the current device list of
    /// `resource` from its plugin (ListAndWatch), pick the first `count` healthy devices no other
    /// admitted pod holds, call `Allocate` for one container, and record the allocation for
    /// PodResources `List`. Fails when the resource is not registered or has too few devices.
    pub async fn admit_pod(
        &self,
        namespace: &str,
        name: &str,
        resource: &str,
        count: usize,
    ) -> Result<dp::ContainerAllocateResponse, KubeletError> {
        let fail = |m: String| KubeletError::Invalid(m);
        let reg = self
            .registrations()
            .into_iter()
            .rev()
            .find(|r| r.resource_name == resource)
            .ok_or_else(|| fail(format!("{resource} is not registered")))?;
        let mut client = self.dial(&reg).await?;
        let call = |call: &str| {
            let call = call.to_string();
            move |status| KubeletError::Call { call, status }
        };
        let mut stream = client
            .list_and_watch(dp::Empty {})
            .await
            .map_err(call("ListAndWatch"))?
            .into_inner();
        let listed = stream
            .message()
            .await
            .map_err(call("ListAndWatch"))?
            .ok_or_else(|| fail(format!("{resource}: the plugin closed ListAndWatch")))?;
        let taken: Vec<String> = self
            .pods
            .borrow()
            .iter()
            .flat_map(|p| p.containers.iter())
            .flat_map(|c| c.devices.iter())
            .filter(|d| d.resource_name == resource)
            .flat_map(|d| d.device_ids.iter().cloned())
            .collect();
        let ids: Vec<String> = listed
            .devices
            .iter()
            .filter(|d| d.health == "Healthy" && !taken.contains(&d.id))
            .map(|d| d.id.clone())
            .take(count)
            .collect();
        if ids.len() < count {
            return Err(fail(format!(
                "{resource}: {count} wanted, {} free",
                ids.len()
            )));
        }
        let resp = client
            .allocate(dp::AllocateRequest {
                container_requests: vec![dp::ContainerAllocateRequest {
                    devices_ids: ids.clone(),
                }],
            })
            .await
            .map_err(call("Allocate"))?
            .into_inner();
        let container = resp
            .container_responses
            .into_iter()
            .next()
            .ok_or_else(|| fail("Allocate answered no container".into()))?;
        self.pods.send_modify(|pods| {
            pods.push(pr::PodResources {
                name: name.into(),
                namespace: namespace.into(),
                containers: vec![pr::ContainerResources {
                    name: "main".into(),
                    devices: vec![pr::ContainerDevices {
                        resource_name: resource.into(),
                        device_ids: ids,
                        topology: None,
                    }],
                    ..Default::default()
                }],
            })
        });
        Ok(container)
    }

    /// Forget an admitted pod (it ended): PodResources no longer lists it.
    pub fn remove_pod(&self, namespace: &str, name: &str) {
        self.pods
            .send_modify(|pods| pods.retain(|p| !(p.namespace == namespace && p.name == name)));
    }

    /// Stop answering PodResources while leaving its socket file in place (a hung or
    /// crashed kubelet): calls fail with "connection refused".
    pub async fn stop_pod_resources(&mut self) {
        if let Some(s) = self.pod_resources.take() {
            s.stop().await;
        }
    }

    /// Do what a kubelet restart does to `device-plugins/`: stop serving, remove every socket
    /// there, serve a new `kubelet.sock`. Registrations seen before are kept in the record.
    pub async fn restart(&mut self) -> Result<(), KubeletError> {
        if let Some(s) = self.registration.take() {
            s.stop().await;
        }
        let dir = self.device_plugin_dir();
        let entries = std::fs::read_dir(&dir).map_err(|source| KubeletError::Io {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "sock") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.serve_registration()
    }

    /// Find DRA plugins as the kubelet's plugin watcher does: every socket in
    /// `plugins_registry/`, asked `GetInfo`; each `DRAPlugin` is told it registered and its
    /// service endpoint dialed.
    pub async fn dra_plugins(&self) -> Result<Vec<DraPluginHandle>, KubeletError> {
        let dir = self.dir.join("plugins_registry");
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        let mut socks: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect();
        socks.sort();
        for sock in socks {
            let mut client = PluginRegistrationClient::new(uds::connect(&sock).await?);
            let info = client
                .get_info(reg::InfoRequest {})
                .await
                .map_err(|status| KubeletError::Call {
                    call: format!("GetInfo {}", sock.display()),
                    status,
                })?
                .into_inner();
            if info.r#type != "DRAPlugin" {
                continue;
            }
            let ok = info.supported_versions.iter().any(|v| v == "v1.DRAPlugin");
            client
                .notify_registration_status(reg::RegistrationStatus {
                    plugin_registered: ok,
                    error: if ok {
                        String::new()
                    } else {
                        "no supported version (want v1.DRAPlugin)".into()
                    },
                })
                .await
                .map_err(|status| KubeletError::Call {
                    call: "NotifyRegistrationStatus".into(),
                    status,
                })?;
            if !ok {
                continue;
            }
            let channel = uds::connect(Path::new(&info.endpoint)).await?;
            out.push(DraPluginHandle {
                info,
                client: DraPluginClient::new(channel),
            });
        }
        Ok(out)
    }

    /// Stop serving.
    pub async fn stop(mut self) {
        if let Some(s) = self.registration.take() {
            s.stop().await;
        }
        if let Some(s) = self.pod_resources.take() {
            s.stop().await;
        }
    }
}

/// A DRA plugin the fake kubelet registered.
#[derive(Debug)]
pub struct DraPluginHandle {
    /// What `GetInfo` answered.
    pub info: reg::PluginInfo,
    /// A client of its `DRAPlugin` service.
    pub client: DraPluginClient<Channel>,
}

fn spawn<S>(svc: S, incoming: tokio_stream::wrappers::UnixListenerStream) -> Server
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    Server { stop, task }
}
