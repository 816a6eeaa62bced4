//! `tessera k8s`: tessera on Kubernetes — `crd` prints the `TesseraNode` CRD, `controller`
//! runs the controller (leader election on a Lease; with `--listen`, the web view), `demo` runs the whole cluster in-process
//! on simulated GPUs (fake apiserver, controller, node runners and device plugins with a fake
//! kubelet each), `node` is the per-node process
//! (`cmd/k8s_node.rs`).

use std::process::ExitCode;
use std::time::Duration;

use tessera_k8s::controller::{lease_api, Controller};
use tessera_k8s::demo::{run_demo, DemoOptions, DemoSummary};
use tessera_k8s::lease::LeaderElector;
use tessera_k8s::web::{WebAuth, WebState};
use tessera_planner::{PlanOptions, Policy};

use crate::output::{emit, print_out, table, CliError, Ctx};

/// `tessera k8s` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum K8sCmd {
    /// Print the TesseraNode CustomResourceDefinition (YAML), as the Helm chart ships it.
    Crd,
    /// Run the cluster controller: plan slices for gated pods, write each node's layout.
    Controller(ControllerArgs),
    /// The whole cluster in one process on simulated GPUs with a scripted mix of pods: fake
    /// apiserver, controller, and per node the node runner and device plugins talking to a fake
    /// kubelet over Unix sockets.
    Demo(DemoArgs),
    /// The per-node process (privileged DaemonSet): carves the node's slices and serves them to
    /// the kubelet (DRA and/or device plugins); standalone with --desired FILE, otherwise
    /// following the node's TesseraNode.
    Node(crate::cmd::k8s_node::Args),
}

/// Arguments of `tessera k8s controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Log format on stderr: `text` (the default) or `json`; `RUST_LOG` sets the levels.
    #[arg(long, value_enum, default_value_t = crate::cmd::serve::LogFormat::Text, value_name = "FORMAT")]
    pub log_format: crate::cmd::serve::LogFormat,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tessera-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "tessera-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME", default_value = "tessera-controller")]
    pub identity: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_s: u64,
    /// Seconds between rounds when nothing changes.
    #[arg(long, default_value_t = 10)]
    pub resync_s: u64,
    /// Planning policy.
    #[arg(long, default_value = "tessera")]
    pub policy: String,
    /// Serve the web view (the page at `/`, its data at `/v1/overview`) on this address,
    /// e.g. `0.0.0.0:8080`; every replica serves it, leader or not.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token `/v1/overview` asks for, read from this file (a mounted Secret).
    #[arg(long, value_name = "FILE", env = "TESSERA_WEB_TOKEN_FILE")]
    pub web_token_file: Option<std::path::PathBuf>,
    /// Anyone who reaches --listen may read the page's data (holders' commands and UUIDs
    /// hidden); a wrong token is still refused.
    #[arg(long)]
    pub web_public: bool,
}

/// Arguments of `tessera k8s demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Nodes of the simulated cluster.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// GPUs of each node, `MODEL:COUNT[,MODEL:COUNT]`.
    #[arg(long, default_value = "h100-80gb:8")]
    pub gpus: String,
    /// Pods in the scripted mix.
    #[arg(long, default_value_t = 320)]
    pub pods: usize,
    /// Seed of the scripted mix.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Virtual seconds per controller/agent cycle.
    #[arg(long, default_value_t = 10)]
    pub tick_s: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("cannot start the async runtime: {e}")))
}

/// Run a `tessera k8s` subcommand.
pub fn run(cmd: &K8sCmd, ctx: &Ctx) -> Result<ExitCode, CliError> {
    match cmd {
        K8sCmd::Crd => {
            print_out(&tessera_k8s::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        K8sCmd::Controller(a) => controller(a, ctx),
        K8sCmd::Demo(a) => demo(a, ctx),
        K8sCmd::Node(a) => crate::cmd::k8s_node::run(a, ctx),
    }
}

fn controller(a: &ControllerArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    crate::cmd::serve::init_logging(a.log_format);
    let policy: Policy = a
        .policy
        .parse()
        .map_err(|e: tessera_planner::UnknownPolicy| CliError::Usage(e.to_string()))?;
    if a.lease_duration_s == 0 || a.resync_s == 0 {
        return Err(CliError::Usage(
            "--lease-duration-s and --resync-s must be at least 1".into(),
        ));
    }
    let token = match &a.web_token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path).map_err(|source| CliError::Io {
                path: path.clone(),
                source,
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(CliError::Usage(format!(
                    "--web-token-file {}: the file is empty; put the token in it",
                    path.display()
                )));
            }
            Some(t)
        }
        None => None,
    };
    if a.listen.is_some() && token.is_none() && !a.web_public {
        return Err(CliError::Usage(
            "--listen needs --web-token-file FILE (the bearer token for the page's data) or --web-public".into(),
        ));
    }
    let rt = runtime()?;
    rt.block_on(async {
        let client = kube::Client::try_default().await.map_err(|e| {
            CliError::Other(format!(
                "cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {e}"
            ))
        })?;
        let elector = LeaderElector::new(
            lease_api(client.clone(), &a.lease_namespace),
            &a.lease_name,
            &a.identity,
            Duration::from_secs(a.lease_duration_s),
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let web = match a.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| CliError::Other(format!("--listen {addr}: cannot listen: {e}")))?;
                eprintln!("tessera k8s controller: web view on http://{addr}/");
                let state = WebState::new(
                    client.clone(),
                    ctx.catalog.clone(),
                    WebAuth {
                        token,
                        public: a.web_public,
                    },
                    &format!("tessera k8s controller {}", a.identity),
                );
                let mut rx = stop_rx.clone();
                Some(tokio::spawn(tessera_k8s::web::serve(
                    listener,
                    state,
                    async move {
                        let _ = rx.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        let c = Controller::new(
            client,
            ctx.catalog.clone(),
            PlanOptions::with_policy(policy),
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let r = c
            .run(elector, Duration::from_secs(a.resync_s), shutdown)
            .await
            .map_err(|e| CliError::Other(e.to_string()));
        let _ = stop_tx.send(true);
        drop(stop_rx);
        if let Some(w) = web {
            match w.await {
                Ok(Err(e)) => eprintln!("tessera k8s controller: web view: {e}"),
                Err(e) => eprintln!("tessera k8s controller: web view task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        r
    })?;
    Ok(ExitCode::SUCCESS)
}

fn demo(a: &DemoArgs, ctx: &Ctx) -> Result<ExitCode, CliError> {
    if a.nodes == 0 || a.tick_s == 0 {
        return Err(CliError::Usage(
            "--nodes and --tick-s must be at least 1".into(),
        ));
    }
    let opts = DemoOptions {
        nodes: a.nodes,
        gpus: a.gpus.clone(),
        pods: a.pods,
        seed: a.seed,
        tick: Duration::from_secs(a.tick_s),
    };
    let rt = runtime()?;
    let s = rt
        .block_on(run_demo(&opts, ctx.catalog.clone()))
        .map_err(|e| CliError::Other(e.to_string()))?;
    let s = DemoSummary {
        mean_wait_s: (s.mean_wait_s * 100.0).round() / 100.0,
        ..s
    };
    emit(ctx.output, &s, || summary_text(&s))?;
    Ok(ExitCode::SUCCESS)
}

fn summary_text(s: &DemoSummary) -> String {
    let mut t = table(&["SUMMARY", ""]);
    let rows = [
        ("cluster", format!("{} nodes, {} GPUs", s.nodes, s.gpus)),
        ("pods bound", format!("{} of {}", s.bound, s.pods)),
        ("unschedulable", s.unschedulable.to_string()),
        ("busy instances destroyed", s.busy_destroyed.to_string()),
        ("pods overtaken", s.overtaken.to_string()),
        ("GPU re-partitions", s.repartitions.to_string()),
        ("MIG instances created + destroyed", s.mig_ops.to_string()),
        (
            "mean wait",
            format!("{:.1}s (cycles of {:.0}s)", s.mean_wait_s, s.tick_s),
        ),
        ("longest wait", format!("{:.1}s", s.max_wait_s)),
        (
            "kubelet registrations",
            format!(
                "{} ({} again)",
                s.kubelet_registrations, s.plugin_reregistrations
            ),
        ),
        ("Allocate calls", s.allocate_calls.to_string()),
        (
            "ListAndWatch updates read",
            s.list_and_watch_updates.to_string(),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    format!("{t}\n")
}
