//! The controller's web view against the demo's cluster (node runners, device plugins and fake
//! kubelets on the fake apiserver): the `/v1/overview` document built from the cluster state
//! (every node's GPUs with their layout, pods as holders, waiting pods as the queue with
//! reasons, re-partitions seen), its bearer token and public mode over real HTTP, and the page
//! drawn by headless Chromium (DOM checked, screenshot saved).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tessera_api::overview::OverviewView;
use tessera_k8s::kubelet_cluster::KubeletCluster;
use tessera_k8s::web::{serve, WebAuth, WebState};
use tessera_model::Catalog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "k8s-web-token";

/// Two nodes of two H100s (node-1's GPU 1 with MIG off, for MPS), after two cycles of a small
/// mix: MIG pods and MPS pods running, one pod that fits no H100 waiting; and its web view,
/// which read the empty layouts first.
async fn demo_cluster() -> (KubeletCluster, WebState) {
    let mut c = KubeletCluster::new(
        2,
        "h100-80gb:2",
        &BTreeMap::from([(1, vec![1])]),
        Catalog::builtin().clone(),
    )
    .await
    .unwrap();
    c.nodes_round().await.unwrap();
    let w = web(&c.client, false);
    w.overview(false).await.unwrap();
    for (name, res, sm) in [
        ("train", "nvidia.com/mig-3g.40gb", None),
        ("eval", "nvidia.com/mig-1g.10gb", None),
        ("big", "nvidia.com/mig-7g.80gb", None),
        ("notebook", "nvidia.com/mig-2g.20gb", None),
        ("small", "nvidia.com/gpu-10gb", Some(20)),
        ("chat", "nvidia.com/gpu-20gb", Some(30)),
        ("a100-only", "nvidia.com/mig-1g.5gb", None),
    ] {
        c.submit(name, res, sm).await.unwrap();
    }
    c.cycle().await.unwrap();
    c.cycle().await.unwrap();
    (c, w)
}

fn web(c: &kube::Client, public: bool) -> WebState {
    WebState::new(
        c.clone(),
        Catalog::builtin().clone(),
        WebAuth {
            token: Some(TOKEN.into()),
            public,
        },
        "tessera k8s controller test",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_every_nodes_gpus_their_pods_and_the_waiting_ones() {
    // The web state needs the cluster's client, so build the cluster's apiserver first.
    let mut c = KubeletCluster::new(
        2,
        "h100-80gb:2",
        &BTreeMap::from([(1, vec![1])]),
        Catalog::builtin().clone(),
    )
    .await
    .unwrap();
    c.nodes_round().await.unwrap();
    let w = web(&c.client, false);
    w.overview(false).await.unwrap();
    for (name, res, sm) in [
        ("train", "nvidia.com/mig-3g.40gb", None),
        ("small", "nvidia.com/gpu-10gb", Some(20)),
        ("a100-only", "nvidia.com/mig-1g.5gb", None),
    ] {
        c.submit(name, res, sm).await.unwrap();
    }
    c.cycle().await.unwrap();
    let o = w.overview(false).await.unwrap();

    assert_eq!(o.gpus.len(), 4);
    let names: Vec<(String, u32, &str)> = o
        .gpus
        .iter()
        .map(|g| (g.node.clone().unwrap(), g.gpu.index, g.gpu.mode.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("node-0".into(), 0, "mig"),
            ("node-0".into(), 1, "mig"),
            ("node-1".into(), 0, "mig"),
            ("node-1".into(), 1, "mps"),
        ]
    );
    // The MIG pod holds its instance, drawn with the catalog's width and memory.
    let lease = |user: &str| o.leases.iter().find(|r| r.user == user).unwrap();
    let train = lease("default/train");
    let holder: Vec<_> = o
        .gpus
        .iter()
        .flat_map(|g| {
            g.gpu
                .instances
                .iter()
                .zip(&g.instance_slots)
                .map(move |(i, w)| (g, i, *w))
        })
        .filter(|(_, i, _)| i.lease == Some(train.id))
        .collect();
    assert_eq!(holder.len(), 1);
    let (g, inst, width) = holder[0];
    assert_eq!(inst.profile, "3g.40gb");
    assert_eq!(inst.user.as_deref(), Some("default/train"));
    assert!(inst.busy && inst.uuid.as_deref().unwrap().starts_with("MIG-"));
    assert_eq!((g.compute_slots, g.memory_slots, width), (7, 8, 4));
    assert_eq!(train.command, ["cuda:12"]);
    // The MPS pod holds a share with its limits on node-1's MIG-off GPU.
    let small = lease("default/small");
    let mps = &o.gpus[3].gpu;
    assert_eq!(mps.shares.len(), 1);
    assert_eq!(
        (
            mps.shares[0].lease,
            mps.shares[0].memory_mib,
            mps.shares[0].sm_percent
        ),
        (Some(small.id), 10240, 20)
    );
    // The pod no H100 can serve waits, with why.
    assert_eq!(o.queue.len(), 1);
    assert_eq!(o.queue[0].user, "default/a100-only");
    assert!(o.queue[0]
        .wait_reason
        .as_deref()
        .unwrap()
        .contains("no slice earmarked yet"));
    // One GPU was re-partitioned for the MIG pod since the first read.
    assert_eq!(o.repartitions_total, 1, "{:?}", o.repartitions);
    assert_eq!(o.repartitions[0].created.len(), 1);
    assert_eq!(o.repartitions[0].node, g.node);
    assert_eq!(o.repartitions[0].gpu, g.gpu.index);
    let users: Vec<(&str, u32, u32)> = o
        .users
        .iter()
        .map(|u| (u.user.as_str(), u.leased, u.queued))
        .collect();
    assert_eq!(users, [("default", 2, 1)]);
    // Public: no commands, no UUIDs; holders stay.
    let p = w.overview(true).await.unwrap();
    assert!(p.commands_hidden);
    assert!(p.leases.iter().all(|r| r.command.is_empty()));
    assert!(p
        .gpus
        .iter()
        .flat_map(|g| &g.gpu.instances)
        .all(|i| i.uuid.is_none()));
    assert_eq!(p.leases.len(), 2);
    c.stop().await.unwrap();
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn start(w: WebState) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, w, std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_open_its_data_needs_the_token_unless_public() {
    let server = tessera_k8s::fake::FakeApiServer::start().await.unwrap();
    let addr = start(web(&server.client(), false)).await;
    let (code, body) = get(addr, "/", None).await;
    assert_eq!(code, 200);
    assert!(body.contains("<script src=\"app.js\">"), "{body}");
    assert_eq!(get(addr, "/app.js", None).await.0, 200);
    assert_eq!(get(addr, "/v1/overview", None).await.0, 401);
    assert_eq!(get(addr, "/v1/overview", Some("wrong")).await.0, 401);
    let (code, body) = get(addr, "/v1/overview", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let o: OverviewView = serde_json::from_str(body.trim_end_matches(|c| c != '}')).unwrap();
    assert!(!o.commands_hidden);

    let public = start(web(&server.client(), true)).await;
    let (code, body) = get(public, "/v1/overview", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"commands_hidden\":true"));
    assert_eq!(get(public, "/v1/overview", Some("wrong")).await.0, 401);
    assert_eq!(get(public, "/nothing", None).await.0, 404);
}

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn chromium_run(bin: &Path, profile: &Path, args: &[String]) -> std::process::Output {
    std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_draws_every_nodes_gpus_and_the_pods_holding_them() {
    let Some(bin) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed; CI installs it (`.ci/run`)");
        }
        eprintln!("SKIPPED: no chromium (apt-get install chromium); CI runs it");
        return;
    };
    let (c, w) = demo_cluster().await;
    let o = w.overview(false).await.unwrap();
    assert_eq!(o.leases.len(), 6, "{:?}", o.queue);
    let addr = start(w).await;
    let url = format!("http://{addr}/#token={TOKEN}");
    let profile = tempfile::tempdir().unwrap();
    let (b, p, u) = (bin.clone(), profile.path().to_path_buf(), url.clone());
    let out =
        tokio::task::spawn_blocking(move || chromium_run(&b, &p, &["--dump-dom".to_string(), u]))
            .await
            .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page did not load its data:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every node's GPUs drawn, titled with the node.
    for g in &o.gpus {
        let node = g.node.as_deref().unwrap();
        let card = format!(
            "<article class=\"gpu {}\" data-gpu=\"{}\" data-node=\"{node}\">",
            g.gpu.mode, g.gpu.index
        );
        assert!(dom.contains(&card), "{card} missing:\n{dom}");
        let title = format!("{node} · GPU {} · h100-80gb", g.gpu.index);
        assert!(dom.contains(&title), "{title} missing");
    }
    // Each pod's slice drawn with the pod as its holder.
    for r in &o.leases {
        let tag = format!("data-user=\"{}\" data-lease=\"{}\"", r.user, r.id);
        assert!(dom.contains(&tag), "holder {tag} missing:\n{dom}");
    }
    for i in o.gpus.iter().flat_map(|g| &g.gpu.instances) {
        let slice = format!("data-slice=\"{}@{}\"", i.profile, i.start);
        assert!(dom.contains(&slice), "{slice} missing");
    }
    assert!(dom.contains("MPS 20GiB · 30% SMs"), "MPS share drawn");
    for r in &o.repartitions {
        let cell = format!("<td>{} · {}</td>", r.node.as_deref().unwrap(), r.gpu);
        assert!(dom.contains(&cell), "re-partition {cell} missing");
    }
    let row = format!(
        "data-request=\"{}\" data-user=\"default/a100-only\"",
        o.queue[0].id
    );
    assert!(dom.contains(&row), "the waiting pod {row} missing");

    // The screenshot; with TESSERA_SCREENSHOT_DIR=docs it is the docs' one.
    let dir = std::env::var_os("TESSERA_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile.path().to_path_buf());
    let shot = dir.join("web-view-k8s.png");
    let args = vec![
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,1100".to_string(),
        url,
    ];
    let (b, p) = (bin.clone(), profile.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || chromium_run(&b, &p, &args))
        .await
        .unwrap();
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 10_000,
        "no screenshot at {}: {}",
        shot.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    c.stop().await.unwrap();
}
