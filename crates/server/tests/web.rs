//! The web view and the metrics over real HTTP: a daemon on three simulated H100s (MIG, MPS,
//! time-slice) with leases of each kind and a waiting request, its `/v1/overview` document,
//! the page drawn by headless Chromium (DOM checked, screenshot saved to `docs/`), and a
//! `/metrics` scrape parsed with a Prometheus text parser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_gpu::sim::{SimBackend, SimConfig, SimState};
use tessera_model::Catalog;
use tessera_server::config::{
    BackendChoice, Config, GpuSettings, LeaseSettings, ModeChoice, MpsSettings, SchedulerSettings,
};
use tessera_server::daemon::SchedulerHandle;
use tessera_server::fleet::Fleet;
use tessera_server::http::{router, AppState, Guarded, Peer};
use tessera_server::ident::Identity;
use tessera_server::overview::OverviewView;
use tessera_server::wire::{RequestState, SliceAsk, SubmitBody};
use tessera_server::Daemon;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "web-test-token";

struct Fleet3 {
    daemon: Daemon,
    sched: Option<SchedulerHandle>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Fleet3 {
    fn drop(&mut self) {
        self.daemon.stop();
        if let Some(s) = self.sched.take() {
            s.join();
        }
    }
}

fn ask(slice: SliceAsk, command: &str) -> SubmitBody {
    SubmitBody {
        slice,
        gpu_model: None,
        priority: 0,
        command: command.split(' ').map(String::from).collect(),
    }
}

/// Four simulated H100s (GPU 0 MIG, 1 MPS, 2 time-slice, 3 MIG with an XID), served on
/// 127.0.0.1 with the token; leases of every kind held by four users, and one request that
/// must wait.
async fn fleet(web_public: bool) -> Fleet3 {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = demo_config(dir.path().join("state"), 20.0);
    cfg.web_public = web_public;
    cfg.lease.heartbeat_timeout_ms = 600_000;
    // A fourth GPU (MIG) that fell off the bus: XID 79 before the daemon starts.
    cfg.sim_gpus = "h100-80gb:4".into();
    let catalog = Catalog::builtin().clone();
    let mut st = SimState::new(&catalog, &[("h100-80gb".into(), 4)], 7, true).unwrap();
    st.events.push(tessera_gpu::GpuEvent {
        gpu: 3,
        xid: 79,
        gi_id: None,
        ci_id: None,
    });
    let sim = SimBackend::new(st, catalog.clone(), SimConfig::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    let (daemon, sched) = Daemon::start(cfg, catalog, fleet).unwrap();

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = router(AppState {
        daemon: daemon.clone(),
        token: Some(TOKEN.into()),
    });
    let svc = app.into_make_service_with_connect_info::<Peer>();
    tokio::spawn(
        async move { axum::serve(Guarded::new(tcp, 64, Duration::from_secs(30)), svc).await },
    );

    let alice = Identity::in_process(1000, "alice");
    let bob = Identity::in_process(1001, "bob");
    let carol = Identity::in_process(1002, "carol");
    let dave = Identity::in_process(1003, "dave");
    let leases = [
        (
            &alice,
            ask(
                SliceAsk::Mig {
                    profile: "3g.40gb".into(),
                },
                "python train.py --epochs 3",
            ),
        ),
        (
            &bob,
            ask(
                SliceAsk::Mig {
                    profile: "2g.20gb".into(),
                },
                "jupyter lab",
            ),
        ),
        (
            &alice,
            ask(
                SliceAsk::Mig {
                    profile: "1g.10gb".into(),
                },
                "python eval.py",
            ),
        ),
        (
            &carol,
            ask(
                SliceAsk::Mps {
                    memory_mib: 16 * 1024,
                    sm_percent: Some(25),
                },
                "vllm serve small-model",
            ),
        ),
        // MPS runs one user's server per GPU at a time: carol's second client.
        (
            &carol,
            ask(
                SliceAsk::Mps {
                    memory_mib: 8 * 1024,
                    sm_percent: Some(10),
                },
                "python embed.py",
            ),
        ),
        (&dave, ask(SliceAsk::Share, "blender -b scene.blend")),
        (&carol, ask(SliceAsk::Share, "python notebook.py")),
    ];
    let mut ids = Vec::new();
    for (who, body) in leases {
        ids.push(daemon.submit(who, body).unwrap().id);
        // One at a time, so that each lands where the test expects.
        let id = *ids.last().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = daemon.get(who, id).unwrap();
            if v.state == RequestState::Leased {
                break;
            }
            assert!(Instant::now() < deadline, "not leased: {v:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The whole MIG GPU while instances are held there: it waits, with a reason.
    let waiting = daemon
        .submit(
            &dave,
            ask(
                SliceAsk::Mig {
                    profile: "7g.80gb".into(),
                },
                "python big.py",
            ),
        )
        .unwrap();
    until("the wait reason", || {
        daemon
            .get(&dave, waiting.id)
            .unwrap()
            .wait_reason
            .map(|_| ())
    })
    .await;
    Fleet3 {
        daemon,
        sched: Some(sched),
        addr,
        _dir: dir,
    }
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One HTTP/1.1 GET: (status, headers, body).
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

async fn overview(addr: SocketAddr, token: Option<&str>) -> OverviewView {
    let (status, _, body) = get(addr, "/v1/overview", token).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_has_every_gpu_with_its_slices_holders_queue_and_usage() {
    let f = fleet(false).await;
    let o = overview(f.addr, Some(TOKEN)).await;
    assert_eq!(o.gpus.len(), 4);
    let modes: Vec<&str> = o.gpus.iter().map(|g| g.gpu.mode.as_str()).collect();
    assert_eq!(modes, ["mig", "mps", "timeslice", "mig"]);
    assert!(o.gpus[3].gpu.last_error.as_deref().unwrap().contains("XID"));
    let mig = &o.gpus[0];
    assert_eq!((mig.compute_slots, mig.memory_slots), (7, 8));
    let holder = |lease: Option<u64>| {
        o.leases
            .iter()
            .find(|r| Some(r.id) == lease)
            .map(|r| (r.user.as_str(), r.command.join(" ")))
    };
    let mut held: Vec<(String, &str, String)> = mig
        .gpu
        .instances
        .iter()
        .filter_map(|i| holder(i.lease).map(|(u, c)| (i.profile.clone(), u, c)))
        .collect();
    held.sort();
    assert_eq!(
        held,
        [
            ("1g.10gb".to_string(), "alice", "python eval.py".to_string()),
            ("2g.20gb".to_string(), "bob", "jupyter lab".to_string()),
            (
                "3g.40gb".to_string(),
                "alice",
                "python train.py --epochs 3".to_string()
            ),
        ]
    );
    // Each instance's memory and width come from the catalog, in the instances' order.
    let h100 = Catalog::builtin().get("h100-80gb").unwrap().clone();
    for (k, i) in mig.gpu.instances.iter().enumerate() {
        let p = h100.profile(h100.profile_named(&i.profile).unwrap());
        assert_eq!(
            (
                mig.instance_memory_mib[k],
                mig.instance_slots[k],
                mig.instance_compute_slots[k]
            ),
            (p.memory_mib.unwrap(), p.memory_slices, p.compute_slices),
            "{}",
            i.profile
        );
    }
    assert_eq!(mig.instance_slots.len(), mig.gpu.instances.len());
    let mps = &o.gpus[1].gpu;
    let mut shares: Vec<(u64, u8, &str)> = mps
        .shares
        .iter()
        .map(|s| (s.memory_mib, s.sm_percent, holder(s.lease).unwrap().0))
        .collect();
    shares.sort();
    assert_eq!(shares, [(8192, 10, "carol"), (16384, 25, "carol")]);
    let ts = &o.gpus[2].gpu;
    assert_eq!((ts.capacity, ts.busy), (4, 2));
    assert_eq!(o.queue.len(), 1);
    assert_eq!(o.queue[0].user, "dave");
    assert!(o.queue[0].wait_reason.is_some());
    let users: BTreeMap<&str, (u32, u32, u64)> = o
        .users
        .iter()
        .map(|u| (u.user.as_str(), (u.leased, u.queued, u.leases_total)))
        .collect();
    assert_eq!(users["alice"], (2, 0, 2));
    assert_eq!(users["dave"], (1, 1, 1));
    assert!(
        !o.repartitions.is_empty() && o.repartitions_total >= 1,
        "the MIG leases needed a re-partition"
    );
    assert!(o.leases.iter().all(|r| r.env.is_empty()), "no environments");
    assert!(!o.commands_hidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_token_but_its_data_is_not() {
    let f = fleet(false).await;
    let (status, head, body) = get(f.addr, "/", None).await;
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/html"));
    assert!(body.contains("<script src=\"app.js\">"), "{body}");
    assert_eq!(get(f.addr, "/app.js", None).await.0, 200);
    assert_eq!(get(f.addr, "/style.css", None).await.0, 200);
    let (status, _, body) = get(f.addr, "/v1/overview", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(get(f.addr, "/v1/overview", Some("wrong")).await.0, 401);
    assert_eq!(get(f.addr, "/v1/status", None).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_page_shows_holders_but_no_commands_and_the_api_keeps_its_token() {
    let f = fleet(true).await;
    let o = overview(f.addr, None).await;
    assert!(o.commands_hidden);
    assert_eq!(o.leases.len(), 7);
    assert!(o.leases.iter().all(|r| r.command.is_empty()));
    assert!(o.gpus[0].gpu.instances.iter().all(|i| i.uuid.is_none()));
    let users: Vec<&str> = o.leases.iter().map(|r| r.user.as_str()).collect();
    assert!(users.contains(&"alice") && users.contains(&"carol"));
    // A wrong token is still refused, and the rest of the API still needs the right one.
    assert_eq!(get(f.addr, "/v1/overview", Some("wrong")).await.0, 401);
    assert_eq!(get(f.addr, "/v1/status", None).await.0, 401);
    // With the token: the commands.
    let o = overview(f.addr, Some(TOKEN)).await;
    assert!(o
        .leases
        .iter()
        .any(|r| r.command.join(" ") == "jupyter lab"));
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

/// Headless Chromium with the flags that work on a machine without a network.
fn chromium_run(bin: &Path, profile: &Path, args: &[String]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        // Timers and the page's fetches run until the page is idle (at most this long).
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args);
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_draws_every_gpu_with_its_slices_and_holders() {
    let Some(bin) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed; CI installs it (`.ci/run`)");
        }
        eprintln!("SKIPPED: headless_chromium_draws_every_gpu_with_its_slices_and_holders: no chromium (apt-get install chromium); CI runs it");
        return;
    };
    let f = fleet(false).await;
    let url = format!("http://{}/#token={TOKEN}", f.addr);
    let profile = tempfile::tempdir().unwrap();
    let p = profile.path().to_path_buf();
    let b = bin.clone();
    let u = url.clone();
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
    // Every GPU drawn, each instance at its placement with its holder.
    for (gpu, mode) in ["mig", "mps", "timeslice", "mig"].iter().enumerate() {
        let card = format!("<article class=\"gpu {mode}\" data-gpu=\"{gpu}\">");
        assert!(dom.contains(&card), "{card} missing:\n{dom}");
    }
    let o = overview(f.addr, Some(TOKEN)).await;
    for i in &o.gpus[0].gpu.instances {
        let slice = format!("data-slice=\"{}@{}\"", i.profile, i.start);
        assert!(dom.contains(&slice), "{slice} missing:\n{dom}");
        if let Some(l) = i.lease {
            let r = o.leases.iter().find(|r| r.id == l).unwrap();
            let cell = format!("{slice} data-user=\"{}\" data-lease=\"{l}\"", r.user);
            assert!(dom.contains(&cell), "{cell} missing:\n{dom}");
            assert!(dom.contains(&r.command.join(" ")), "command of #{l}");
        }
    }
    for r in &o.leases {
        let tag = format!("data-user=\"{}\" data-lease=\"{}\"", r.user, r.id);
        assert!(dom.contains(&tag), "holder {tag} missing");
    }
    assert!(dom.contains("MPS 16GiB · 25% SMs"), "MPS share drawn");
    assert!(
        dom.contains("data-slice=\"replica-3\""),
        "all four replicas drawn"
    );
    let row = format!("data-request=\"{}\" data-user=\"dave\"", o.queue[0].id);
    assert!(dom.contains(&row), "the waiting request {row} missing");

    // Screenshots (desktop and phone width); with TESSERA_SCREENSHOT_DIR=docs they are the
    // README's.
    let dir = std::env::var_os("TESSERA_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile.path().to_path_buf());
    for (name, size) in [
        ("web-view.png", "1280,1000"),
        ("web-view-phone.png", "420,1600"),
    ] {
        let shot = dir.join(name);
        let p = profile.path().to_path_buf();
        let b = bin.clone();
        let args = vec![
            format!("--screenshot={}", shot.display()),
            format!("--window-size={size}"),
            url.clone(),
        ];
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
    }
}

/// A scrape's value of `name` with exactly these labels (counters, gauges, untyped).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| {
            s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .find_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// How many observations a histogram with these labels holds (its `+Inf` bucket).
fn observations(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) => b
                .iter()
                .find(|c| c.less_than.is_infinite())
                .map(|c| c.count),
            _ => None,
        })
}

async fn scrape(addr: SocketAddr) -> (String, prometheus_parse::Scrape) {
    let (status, _, body) = get(addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    (
        body.clone(),
        prometheus_parse::Scrape::parse(lines).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_scrape_parses_with_conventional_names_labels_and_values() {
    let f = fleet(false).await;
    let o = overview(f.addr, Some(TOKEN)).await;
    let (text, s) = scrape(f.addr).await;
    // Without the token: the same GPUs and slices, no holders.
    let (status, _, anon) = get(f.addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        anon.contains("tessera_slice_allocated{")
            && anon.contains("tessera_gpu_memory_allocated_bytes{")
    );
    assert!(
        !anon.contains("alice") && !anon.contains("tessera_user_"),
        "{anon}"
    );
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    // Per slice: each MIG instance by placement, with its holder; free ones with no user.
    for i in &o.gpus[0].gpu.instances {
        let slice = format!("{}@{}", i.profile, i.start);
        let user = i
            .lease
            .and_then(|l| o.leases.iter().find(|r| r.id == l))
            .map(|r| r.user.clone())
            .unwrap_or_default();
        let labels = [
            ("gpu", "0"),
            ("slice_type", "mig"),
            ("slice", slice.as_str()),
            ("user", user.as_str()),
        ];
        assert_eq!(
            v("tessera_slice_allocated", &labels),
            f64::from(u8::from(i.lease.is_some())),
            "{slice}"
        );
    }
    assert_eq!(
        v(
            "tessera_slice_allocated",
            &[
                ("gpu", "2"),
                ("slice_type", "timeslice"),
                ("slice", "replica-3"),
                ("user", "")
            ]
        ),
        0.0
    );
    assert_eq!(
        v(
            "tessera_slice_memory_bytes",
            &[
                ("gpu", "2"),
                ("slice_type", "timeslice"),
                ("slice", "replica-0")
            ]
        ),
        (o.gpus[2].total_memory_mib / 4) as f64 * 1024.0 * 1024.0
    );
    // Per GPU: memory and compute leased.
    assert_eq!(
        v("tessera_gpu_memory_allocated_bytes", &[("gpu", "1")]),
        24.0 * GIB
    );
    assert!((v("tessera_gpu_compute_allocated_ratio", &[("gpu", "1")]) - 0.35).abs() < 1e-9);
    assert!((v("tessera_gpu_compute_allocated_ratio", &[("gpu", "2")]) - 0.5).abs() < 1e-9);
    assert!((v("tessera_gpu_compute_allocated_ratio", &[("gpu", "0")]) - 6.0 / 7.0).abs() < 1e-9);
    assert_eq!(v("tessera_gpu_healthy", &[("gpu", "3")]), 0.0);
    assert_eq!(v("tessera_gpu_healthy", &[("gpu", "0")]), 1.0);
    let uuid = o.gpus[1].gpu.uuid.as_str();
    assert_eq!(
        v(
            "tessera_gpu_info",
            &[
                ("gpu", "1"),
                ("uuid", uuid),
                ("model", "h100-80gb"),
                ("mode", "mps")
            ]
        ),
        1.0
    );
    // Per user.
    assert_eq!(v("tessera_user_leases_total", &[("user", "carol")]), 3.0);
    assert_eq!(v("tessera_user_leases_active", &[("user", "alice")]), 2.0);
    assert_eq!(v("tessera_user_requests_queued", &[("user", "dave")]), 1.0);
    assert!(v("tessera_user_slice_seconds_total", &[("user", "alice")]) >= 0.0);
    // Queue, re-partitions, MIG operations, XIDs.
    assert_eq!(v("tessera_queue_length", &[]), 1.0);
    assert_eq!(observations(&s, "tessera_wait_seconds", &[]), Some(7.0));
    assert_eq!(
        v("tessera_repartitions_total", &[]),
        o.repartitions_total as f64
    );
    assert_eq!(
        observations(&s, "tessera_repartition_duration_seconds", &[("gpu", "0")]),
        Some(o.repartitions.len() as f64)
    );
    assert!(
        observations(
            &s,
            "tessera_agent_operation_duration_seconds",
            &[("operation", "create_gi")]
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        v(
            "tessera_gpu_xid_errors_total",
            &[("gpu", "3"), ("xid", "79")]
        ),
        1.0
    );
    // Conventions: counters end in _total, units are base units in the name.
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (name, kind) = (parts[2], parts[3]);
        assert!(name.starts_with("tessera_"), "{line}");
        assert!(
            !name.contains("milliseconds") && !name.contains("_mib"),
            "{line}"
        );
        if kind == "histogram" {
            assert!(name.ends_with("_seconds"), "a histogram of seconds: {line}");
        }
    }
}

/// Every metric the Grafana dashboard queries is in a scrape of a daemon with leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_scraped_metrics() {
    let f = fleet(false).await;
    let (_, s) = scrape(f.addr).await;
    let mut names: std::collections::BTreeSet<String> =
        s.samples.iter().map(|x| x.metric.clone()).collect();
    // Histograms come back as one family; their series have these suffixes.
    for x in s
        .samples
        .iter()
        .filter(|x| matches!(x.value, prometheus_parse::Value::Histogram(_)))
    {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{}{suffix}", x.metric));
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/tessera.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has panels: {exprs:?}");
    let mut used = std::collections::BTreeSet::new();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tessera_") {
                used.insert(word.to_string());
            }
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no scrape has: {missing:?}\nscraped: {names:?}"
    );
    assert!(used.len() >= 10, "{used:?}");
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// Three simulated H100 80GB (MIG, MPS, time-slice), as `tessera demo` configures them.
fn demo_config(state_dir: PathBuf, speed: f64) -> Config {
    let tick = ((1000.0 / speed.max(0.01)) as u64).clamp(20, 1000);
    let gpu = |index, mode| GpuSettings {
        index,
        mode,
        mps: MpsSettings::default(),
        replicas: 4,
    };
    Config {
        backend: BackendChoice::Sim,
        sim_gpus: "h100-80gb:3".into(),
        state_dir: Some(state_dir),
        gpus: vec![
            gpu(0, ModeChoice::Mig),
            gpu(1, ModeChoice::Mps),
            gpu(2, ModeChoice::Timeslice),
        ],
        scheduler: SchedulerSettings {
            tick_ms: tick,
            max_reserved_gpus: 1,
            reserve_after_ms: 0,
        },
        lease: LeaseSettings {
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 60_000,
            ..LeaseSettings::default()
        },
        // In-process users: no client processes to confine.
        isolation: Some(tessera_server::config::IsolationMode::Off),
        ..Config::default()
    }
}
