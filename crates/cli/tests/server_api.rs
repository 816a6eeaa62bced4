//! The daemon's API against malformed input: every bad request gets a 4xx with a message, and
//! the daemon keeps serving. Also the metrics text and the `-o` formats of the client commands.

mod server_common;

use std::time::Duration;

use server_common::{block, temp_dir, Daemon};

/// GPU 0 is fixed `mig` (not `auto`, which could become time-sliced): a `share` ask is one no
/// GPU of this machine can ever serve.
fn daemon(dir: &std::path::Path) -> Daemon {
    Daemon::start(
        dir,
        "sim_gpus: h100-80gb:2\ngpus: [{index: 0, mode: mig}, {index: 1, mode: mps}]\nscheduler: {tick_ms: 100}\n",
    )
}

#[test]
fn malformed_requests_get_a_4xx_with_a_message_and_the_daemon_survives() {
    let dir = temp_dir();
    let d = daemon(dir.path());
    let c = d.client();
    let t = Duration::from_secs(10);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("POST", "/v1/requests", b"".to_vec()),
        ("POST", "/v1/requests", b"{".to_vec()),
        ("POST", "/v1/requests", b"[]".to_vec()),
        ("POST", "/v1/requests", b"null".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": 5}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mig\"}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"tpu\"}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"share\"}, \"colour\": 1}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"share\"}, \"priority\": 5000}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"share\"}, \"priority\": 1e99}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mem\", \"memory_mib\": 0}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mem\", \"memory_mib\": 100, \"sm_percent\": 101}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mem\", \"memory_mib\": -1}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mig\", \"profile\": \"\"}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mig\", \"profile\": \"9g.99gb\"}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"share\"}}".to_vec()),
        ("POST", "/v1/requests", b"{\"slice\": {\"kind\": \"mig\", \"profile\": \"1g.10gb\"}, \"gpu_model\": \"tpu-v5\"}".to_vec()),
        ("POST", "/v1/requests", vec![0xff, 0xfe, 0x00, 0x7b]),
        ("POST", "/v1/requests", vec![b'{'; 300 * 1024]),
        ("GET", "/v1/requests/abc", vec![]),
        ("GET", "/v1/requests/99999", vec![]),
        ("GET", "/v1/requests/1/wait?timeout_ms=soon", vec![]),
        ("POST", "/v1/requests/abc/cancel", vec![]),
        ("POST", "/v1/requests/99999/cancel", vec![]),
        ("POST", "/v1/requests/1/release", b"nonsense".to_vec()),
        ("POST", "/v1/requests/1/release", b"{\"exit_code\": \"three\"}".to_vec()),
        ("POST", "/v1/gpus/99/drain", b"{\"drain\": true}".to_vec()),
        ("POST", "/v1/gpus/x/drain", b"{\"drain\": true}".to_vec()),
        ("POST", "/v1/gpus/0/drain", b"{\"drain\": \"yes\"}".to_vec()),
        ("POST", "/v1/gpus/0/layout", b"{\"layout\": [\"3g.40gb@1\"]}".to_vec()),
        ("POST", "/v1/gpus/0/layout", b"{\"layout\": [\"bogus\"]}".to_vec()),
        ("POST", "/v1/gpus/1/layout", b"{\"layout\": []}".to_vec()),
        ("GET", "/v1/nothing-here", vec![]),
        ("GET", "/v1/requests?all=maybe&x=%zz", vec![]),
    ];
    for (method, path, body) in &cases {
        let r = block(c.raw(method, path, Some(body), t)).unwrap();
        assert!(
            (400..500).contains(&r.status),
            "{method} {path} {:?} -> {} {}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: the error is not JSON: {}",
                String::from_utf8_lossy(&r.body)
            )
        });
        assert!(
            v["error"].as_str().is_some_and(|m| m.len() > 10),
            "{method} {path}: no message in {v}"
        );
    }
    // Seeded random bytes as bodies.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for n in 0..100 {
        let len = (n * 7) % 200;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0xff) as u8
            })
            .collect();
        let r = block(c.raw("POST", "/v1/requests", Some(&body), t)).unwrap();
        assert!(
            (400..500).contains(&r.status),
            "random body {n} -> {}",
            r.status
        );
    }
    // Wrong methods are 405; garbage on the socket does not hurt.
    let r = block(c.raw("DELETE", "/v1/requests", None, t)).unwrap();
    assert_eq!(r.status, 405);
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    // Still alive and well.
    let st = block(c.status()).unwrap();
    assert_eq!(st.gpus.len(), 2);
    assert_eq!(st.queued, 0, "no malformed request was queued");
    let ok = block(c.raw(
        "POST",
        "/v1/requests",
        Some(b"{\"slice\": {\"kind\": \"mig\", \"profile\": \"1g.10gb\"}}"),
        t,
    ))
    .unwrap();
    assert_eq!(ok.status, 201, "{}", String::from_utf8_lossy(&ok.body));
}

#[test]
fn metrics_and_output_formats() {
    let dir = temp_dir();
    let d = daemon(dir.path());
    d.cli_ok(&["run", "-q", "--mem", "12GiB", "--", "true"]);
    // An A30 profile on this H100 machine: a valid request that cannot be met.
    let out = d
        .cli(&["run", "-q", "--mig", "2g.12gb", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "an impossible request exits 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2g.12gb"));
    // A profile no GPU model has is a typo: bad input.
    let out = d
        .cli(&["run", "-q", "--mig", "9g.99gb", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown profile exits 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown MIG profile `9g.99gb`"));
    let text = block(d.client().metrics()).unwrap();
    for name in [
        "tessera_queue_length",
        "tessera_wait_seconds_bucket",
        "tessera_leases_total{slice_type=\"mig\"} 1",
        "tessera_repartitions_total 1",
        "tessera_operations_failed_total 0",
        "tessera_slices_busy{gpu=\"0\"}",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    for fmt in ["json", "yaml", "table"] {
        for cmd in [&["ps", "-a"][..], &["status"][..]] {
            let mut args = cmd.to_vec();
            args.extend(["-o", fmt]);
            let out = d.cli(&args).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            match fmt {
                "json" => {
                    serde_json::from_str::<serde_json::Value>(&text).unwrap();
                }
                "yaml" => {
                    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap();
                }
                _ => assert!(text.contains("GPU 0") || text.contains("ID"), "{text}"),
            }
        }
    }
    let out = d.cli(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[1g.20gb") && text.contains("mps"), "{text}");
}

#[test]
fn a_drained_gpu_gets_no_new_lease_and_is_emptied() {
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        "sim_gpus: h100-80gb:1\nscheduler: {tick_ms: 100}\n",
    );
    let out = d
        .cli(&["run", "-q", "--mig", "2g.20gb", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let st = block(d.client().status()).unwrap();
    assert_eq!(
        st.gpus[0].instances.len(),
        1,
        "the idle instance stays for reuse"
    );
    d.cli_ok(&["drain", "--gpu", "0"]);
    let g = server_common::poll(10, "the drained GPU to be emptied", || {
        let st = block(d.client().status()).ok()?;
        st.gpus[0].instances.is_empty().then_some(st)
    });
    assert!(g.gpus[0].drained);
    let out = d
        .cli(&[
            "run",
            "-q",
            "--timeout",
            "1s",
            "--mig",
            "1g.10gb",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no lease on a drained GPU");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no slice within"));
    let out = d.cli(&["drain", "--gpu", "0", "--undo"]).output().unwrap();
    assert!(out.status.success());
    let out = d
        .cli(&["run", "-q", "--mig", "1g.10gb", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let r = tessera_server::client::parse_response(&buf).unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn http_needs_the_bearer_token_and_serves_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir();
    let d = Daemon::start(
        dir.path(),
        &format!("sim_gpus: h100-80gb:1\nlisten: 127.0.0.1:{port}\ntoken: s3cret-token\n"),
    );
    server_common::poll(20, "the HTTP listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert_eq!(http(port, "GET", "/v1/status", None, "").0, 401);
    assert_eq!(http(port, "GET", "/v1/status", Some("wrong"), "").0, 401);
    let (code, body) = http(port, "GET", "/v1/status", Some("s3cret-token"), "");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        port,
        "POST",
        "/v1/requests",
        Some("s3cret-token"),
        "{\"slice\": {\"kind\": \"mig\", \"profile\": \"1g.10gb\"}}",
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = http(port, "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    assert!(body.contains("tessera_queue_length"), "{body}");
    drop(d);
}
