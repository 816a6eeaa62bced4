//! `tessera k8s node`: the per-node process of tessera on Kubernetes, in standalone mode
//! (`--desired FILE`, no apiserver) or, without `--desired`, in cluster mode (the node's
//! `TesseraNode` spec is the layout; see `tessera_k8s::cluster_mode`). It takes the GPUs to the file's layout with the agent
//! (re-reading the file when it changes), serves the kubelet as device plugins and/or a DRA
//! plugin, and writes its status and the node's ResourceSlices under `--state-dir`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use tessera_agent::journal::FileJournal;
use tessera_gpu::{open_backend, BackendSpec, GpuBackend, SimConfig};
use tessera_k8s::cluster_mode::{ApiClaims, CrdDesired};
use tessera_kubelet::deviceplugin::{run_device_plugins, DevicePluginConfig};
use tessera_kubelet::dra::{
    resource_slices, ClaimReader, DevRoots, DirClaims, DraConfig, DraPlugin, DEFAULT_DRIVER,
};
use tessera_kubelet::ledger::{Ledger, DEFAULT_GRACE as LEDGER_GRACE};
use tessera_kubelet::node::{FileDesired, NodeConfig, NodeRunner, NodeStatus, StatusSink};
use tessera_kubelet::KubeletError;

use crate::backend::{parse_backend, Backend};
use crate::output::{CliError, Ctx};

/// Which kubelet interfaces to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The DRA kubelet plugin (`resource.k8s.io/v1`, Kubernetes 1.34+).
    Dra,
    /// Device plugins under NVIDIA-compatible resource names.
    DevicePlugin,
    /// Both.
    Both,
}

/// Whether to publish partitionable devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Partitionable {
    /// Never (works with every Kubernetes 1.34+ cluster).
    Off,
    /// Always (Kubernetes 1.36+, or 1.35 with the `DRAPartitionableDevices` gate).
    On,
    /// In cluster mode, when the apiserver reports 1.36 or later; off in standalone mode.
    Auto,
}

/// `tessera k8s node` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log format on stderr: `text` (the default) or `json`; `RUST_LOG` sets the levels.
    #[arg(long, value_enum, default_value_t = crate::cmd::serve::LogFormat::Text, value_name = "FORMAT")]
    pub log_format: crate::cmd::serve::LogFormat,
    /// The kubelet's root directory (its `device-plugins/`, `plugins_registry/`, `plugins/`
    /// and `pod-resources/` are used).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Which kubelet interfaces to serve.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    /// GPU backend: `auto` (NVML when a GPU is found), `nvml` or `sim:STATE`.
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend)]
    pub backend: Backend,
    /// The desired layout: the `tessera agent apply --desired` format (plus an optional
    /// `mps:` map of GPU index to `{memory_mib, thread_percent}` shares); re-read when it
    /// changes.
    /// Without it: cluster mode — the layout is the node's `TesseraNode` spec (the controller
    /// writes it), status goes to its status subresource and, with DRA, ResourceSlices and
    /// ResourceClaims go through the apiserver (in-cluster config or KUBECONFIG).
    #[arg(long, value_name = "FILE")]
    pub desired: Option<PathBuf>,
    /// Where the journal, the DRA claims' status and the written status go.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/tessera-node")]
    pub state_dir: PathBuf,
    /// This node's name (the DRA pool's name).
    #[arg(
        long,
        env = "NODE_NAME",
        value_name = "NAME",
        default_value = "localhost"
    )]
    pub node_name: String,
    /// DRA driver name.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DRIVER)]
    pub driver: String,
    /// Publish MIG GPUs that the layout does not list as partitionable devices (KEP-4815,
    /// Kubernetes 1.36+, or 1.35 with the `DRAPartitionableDevices` gate): one counter set
    /// per GPU and every placement of every profile as a device; the instance is created when
    /// a claim on it is prepared. `off` by default; `--dra-partitionable` alone is `on`;
    /// `auto` asks the apiserver's version (1.36+).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Partitionable::Off,
          num_args = 0..=1, default_missing_value = "on")]
    pub dra_partitionable: Partitionable,
    /// Where the DRA plugin writes CDI specs.
    #[arg(long, value_name = "DIR", default_value = "/var/run/cdi")]
    pub cdi_dir: PathBuf,
    /// The root under which the host's `dev/` and `proc/` are, for the device nodes the DRA
    /// plugin's CDI specs list (default: `/` with NVML; none with a `sim:` backend, whose
    /// GPUs have no device nodes, so its specs carry the environment only).
    #[arg(long, value_name = "DIR")]
    pub dev_root: Option<PathBuf>,
    /// The CDI kind of the device names device plugins return (`<kind>=<UUID>`).
    #[arg(long, value_name = "KIND", default_value = "nvidia.com/gpu")]
    pub cdi_kind: String,
    /// Standalone DRA: read ResourceClaims from `DIR/<namespace>/<name>.yaml`.
    #[arg(long, value_name = "DIR")]
    pub claims_dir: Option<PathBuf>,
    /// How often the desired file is checked, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// Re-apply the last layout and re-read the GPUs this often, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub resync_ms: u64,
}

/// Writes `status.json` and `resourceslices.json` into the state directory after each apply.
struct FileSink {
    dir: PathBuf,
    driver: String,
    node: String,
    generation: i64,
    dra: bool,
}

#[tessera_kubelet::async_trait]
impl StatusSink for FileSink {
    async fn report(&mut self, status: &NodeStatus) -> Result<(), KubeletError> {
        let write = |name: &str, v: serde_json::Value| -> Result<(), KubeletError> {
            let path = self.dir.join(name);
            let tmp = path.with_extension("tmp");
            let bytes = serde_json::to_vec_pretty(&v).map_err(|source| KubeletError::Json {
                path: path.clone(),
                source,
            })?;
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| KubeletError::Io { path, source })
        };
        write(
            "status.json",
            serde_json::to_value(status).unwrap_or_default(),
        )?;
        if self.dra {
            self.generation += 1;
            let slices =
                resource_slices(&self.driver, &self.node, &status.inventory, self.generation);
            write(
                "resourceslices.json",
                serde_json::to_value(slices).unwrap_or_default(),
            )?;
        }
        for g in &status.gpus {
            eprintln!(
                "tessera k8s node: {}",
                serde_json::to_string(g).unwrap_or_default()
            );
        }
        Ok(())
    }
}

fn open_gpus(ctx: &Ctx, backend: &Backend) -> Result<Box<dyn GpuBackend>, CliError> {
    let spec = match backend {
        Backend::Nvml | Backend::Auto => BackendSpec::Nvml,
        Backend::Sim(Some(p)) => BackendSpec::Sim(p.clone()),
        Backend::Sim(None) => {
            return Err(CliError::Usage(
                "--backend sim needs a state file here: sim:STATE (`tessera sim-gpu init STATE --gpus h100-80gb:1` makes one)".into(),
            ))
        }
    };
    open_backend(&spec, &ctx.catalog, SimConfig::default()).map_err(|e| match backend {
        Backend::Auto => CliError::Usage(format!(
            "--backend auto: NVML is not usable ({e}); on a machine without GPUs give --backend sim:STATE"
        )),
        _ => CliError::Other(e.to_string()),
    })
}

/// Run until Ctrl-C or SIGTERM.
pub fn run(a: &Args, ctx: &Ctx) -> Result<ExitCode, CliError> {
    crate::cmd::serve::init_logging(a.log_format);
    if let Some(desired) = a.desired.as_ref().filter(|d| !d.is_file()) {
        return Err(CliError::Usage(format!(
            "--desired {}: no such file; write the layout first, e.g. `gpus: {{0: [3g.40gb@0]}}`",
            desired.display()
        )));
    }
    if a.desired.is_some() && a.mode != Mode::DevicePlugin && a.claims_dir.is_none() {
        return Err(CliError::Usage(
            "--mode dra|both in standalone mode needs --claims-dir DIR (ResourceClaims as DIR/<namespace>/<name>.yaml): there is no apiserver to read them from; or use --mode device-plugin".into(),
        ));
    }
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| CliError::Io { path, source }
    };
    std::fs::create_dir_all(&a.state_dir).map_err(io(&a.state_dir))?;
    let journal_dir = a.state_dir.join("journal");
    std::fs::create_dir_all(&journal_dir).map_err(io(&journal_dir))?;
    let journal = FileJournal::open(&journal_dir).map_err(|e| CliError::Other(e.to_string()))?;
    let backend = open_gpus(ctx, &a.backend)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        // Cluster mode talks to the apiserver.
        let client = match &a.desired {
            Some(_) => None,
            None => Some(kube::Client::try_default().await.map_err(|e| {
                CliError::Other(format!(
                    "cluster mode (no --desired) cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}; or run standalone with --desired FILE"
                ))
            })?),
        };
        let (mut runner, inventory) = NodeRunner::new(
            backend,
            Box::new(journal),
            ctx.catalog.clone(),
            NodeConfig {
                kubelet_dir: a.kubelet_dir.clone(),
                resync: Duration::from_millis(a.resync_ms.max(100)),
            },
        )
        .map_err(|e| CliError::Other(e.to_string()))?;
        let partitionable = match (a.dra_partitionable, &client) {
            (Partitionable::Off, _) => false,
            (Partitionable::On, _) => true,
            (Partitionable::Auto, Some(c)) => match c.apiserver_version().await {
                Ok(v) => {
                    let on = tessera_kubelet::partition::on_by_default(&v.major, &v.minor);
                    eprintln!(
                        "tessera k8s node: apiserver {}.{}: partitionable devices {}",
                        v.major,
                        v.minor,
                        if on { "on" } else { "off" }
                    );
                    on
                }
                Err(e) => {
                    eprintln!("tessera k8s node: cannot read the apiserver's version ({e}); partitionable devices off");
                    false
                }
            },
            (Partitionable::Auto, None) => {
                eprintln!("tessera k8s node: standalone mode has no apiserver version to read; partitionable devices off");
                false
            }
        };
        runner.set_partitionable(partitionable && a.mode != Mode::DevicePlugin);
        // Both paths: one allocation ledger, so no slice is handed out through both.
        let ledger = (a.mode == Mode::Both).then(|| Arc::new(Ledger::new(LEDGER_GRACE)));
        if let Some(l) = &ledger {
            runner.set_ledger(l.clone());
        }
        let (stop_tx, _) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = tokio::task::JoinSet::new();
        if a.mode != Mode::DevicePlugin {
            let cfg = DraConfig {
                driver: a.driver.clone(),
                node_name: a.node_name.clone(),
                kubelet_dir: a.kubelet_dir.clone(),
                cdi_dir: a.cdi_dir.clone(),
                dev: match (&a.dev_root, &a.backend) {
                    (Some(root), _) => Some(DevRoots::under(root)),
                    (None, Backend::Sim(_)) => None,
                    (None, _) => Some(DevRoots::default()),
                },
                ledger: ledger.clone(),
            };
            let claims: Arc<dyn ClaimReader> = match &client {
                Some(c) => Arc::new(ApiClaims(c.clone())),
                None => Arc::new(DirClaims(a.claims_dir.clone().unwrap_or_default())),
            };
            let plugin = DraPlugin::with_mig(cfg, claims, inventory.clone(), runner.mig_ops())
                .await
                .map_err(|e| CliError::Other(e.to_string()))?;
            runner.add_holds(plugin.clone());
            tasks.spawn(plugin.serve(stopped(stop_tx.subscribe())));
        }
        if a.mode != Mode::Dra {
            let mut cfg = DevicePluginConfig::new(&a.kubelet_dir);
            cfg.cdi_kind = a.cdi_kind.clone();
            cfg.ledger = ledger.clone();
            tasks.spawn(run_device_plugins(
                cfg,
                inventory.clone(),
                stopped(stop_tx.subscribe()),
            ));
        }
        let poll = Duration::from_millis(a.poll_ms.max(10));
        if let Some(c) = &client {
            let source = CrdDesired::new(kube::Api::all(c.clone()), &a.node_name, poll);
            let mut sink = source.sink();
            if a.mode != Mode::DevicePlugin {
                sink = sink.with_resource_slices(kube::Api::all(c.clone()), &a.driver);
            }
            tasks.spawn(runner.run(source, sink, stopped(stop_tx.subscribe())));
        } else {
            let sink = FileSink {
                dir: a.state_dir.clone(),
                driver: a.driver.clone(),
                node: a.node_name.clone(),
                generation: 0,
                dra: a.mode != Mode::DevicePlugin,
            };
            let desired = a.desired.clone().unwrap_or_default();
            let source = FileDesired::new(&desired, poll);
            tasks.spawn(runner.run(source, sink, stopped(stop_tx.subscribe())));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| CliError::Other(format!("SIGTERM handler: {e}")))?;
        let mut failure = None;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            Some(r) = tasks.join_next() => {
                if let Ok(Err(e)) = r {
                    failure = Some(e.to_string());
                }
            }
        }
        stop_tx.send_replace(true);
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                failure.get_or_insert(e.to_string());
            }
        }
        match failure {
            Some(e) => Err(CliError::Other(e)),
            None => Ok(ExitCode::SUCCESS),
        }
    })
}
