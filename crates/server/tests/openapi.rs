//! `docs/openapi.json`, made from the wire types (their JSON Schema, by schemars) and the
//! router's route table: the test fails when the committed file differs from what the types
//! give now (`TESSERA_UPDATE_OPENAPI=1 cargo test -p tessera-server --test openapi` rewrites
//! it), and when a documented route is missing from the router.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};
use tessera_api::overview::OverviewView;
use tessera_api::wire::{
    DrainBody, ErrorBody, GpuView, LayoutBody, ReleaseBody, RequestView, StatusView, SubmitBody,
};

/// One route: method, path, summary, request body schema, answer status and schema, who may.
struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Option<Value>,
    status: &'static str,
    answer: Value,
    query: &'static [(&'static str, &'static str)],
}

fn openapi_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn reference<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

fn routes(req: &mut SchemaGenerator, res: &mut SchemaGenerator) -> Vec<Route> {
    let list = json!({"type": "array", "items": reference::<RequestView>(res)});
    vec![
        Route { method: "post", path: "/v1/requests", summary: "Queue a request for a slice (the caller owns it).", body: Some(reference::<SubmitBody>(req)), status: "201", answer: reference::<RequestView>(res), query: &[] },
        Route { method: "get", path: "/v1/requests", summary: "The caller's active requests (root: everyone's); with all=true also the 100 most recently ended.", body: None, status: "200", answer: list, query: &[("all", "`true` to add recently ended requests")] },
        Route { method: "get", path: "/v1/requests/{id}", summary: "One request.", body: None, status: "200", answer: reference::<RequestView>(res), query: &[] },
        Route { method: "get", path: "/v1/requests/{id}/wait", summary: "Long poll: answers once the request is no longer queued, or after timeout_ms; counts as a heartbeat.", body: None, status: "200", answer: reference::<RequestView>(res), query: &[("timeout_ms", "milliseconds to wait at most (default 5000, at most 60000 and half the connection idle timeout)")] },
        Route { method: "post", path: "/v1/requests/{id}/heartbeat", summary: "The client is alive.", body: None, status: "200", answer: reference::<RequestView>(res), query: &[] },
        Route { method: "post", path: "/v1/requests/{id}/release", summary: "The command ended (or the client gave up waiting); the slice is freed.", body: Some(reference::<ReleaseBody>(req)), status: "200", answer: reference::<RequestView>(res), query: &[] },
        Route { method: "post", path: "/v1/requests/{id}/cancel", summary: "Cancel: a queued request ends now; a leased one is marked so that its client stops the command.", body: None, status: "200", answer: reference::<RequestView>(res), query: &[] },
        Route { method: "get", path: "/v1/status", summary: "Every GPU with its slices (holders shown to their owners and root).", body: None, status: "200", answer: reference::<StatusView>(res), query: &[] },
        Route { method: "get", path: "/v1/overview", summary: "The web view's document: GPUs with slice geometry, leases, queue, recent re-partitions, per-user usage. Without a token when web_public is set (no commands then).", body: None, status: "200", answer: reference::<OverviewView>(res), query: &[] },
        Route { method: "post", path: "/v1/gpus/{gpu}/drain", summary: "Root: stop (drain=true) or resume new leases on a GPU.", body: Some(reference::<DrainBody>(req)), status: "200", answer: reference::<GpuView>(res), query: &[] },
        Route { method: "post", path: "/v1/gpus/{gpu}/layout", summary: "Root: re-partition a MIG GPU to exactly these instances; refused (409) when it would touch a leased or busy one.", body: Some(reference::<LayoutBody>(req)), status: "200", answer: reference::<GpuView>(res), query: &[] },
    ]
}

fn document() -> Value {
    let mut req = SchemaSettings::openapi3()
        .with(|s| s.contract = Contract::Deserialize)
        .into_generator();
    let mut res = SchemaSettings::openapi3()
        .with(|s| s.contract = Contract::Serialize)
        .into_generator();
    let error = reference::<ErrorBody>(&mut res);
    let mut paths = Map::new();
    for r in routes(&mut req, &mut res) {
        let mut params: Vec<Value> = Vec::new();
        for name in ["id", "gpu"] {
            if r.path.contains(&format!("{{{name}}}")) {
                let what = if name == "id" {
                    "request ID"
                } else {
                    "GPU index"
                };
                params.push(json!({"name": name, "in": "path", "required": true, "description": what, "schema": {"type": "integer", "minimum": 0}}));
            }
        }
        for (name, what) in r.query {
            params.push(json!({"name": name, "in": "query", "required": false, "description": what, "schema": {"type": "string"}}));
        }
        let mut op = json!({
            "summary": r.summary,
            "responses": {
                r.status: {"description": "OK", "content": {"application/json": {"schema": r.answer}}},
                "default": {"description": "4xx: the caller's mistake, named with the fix; 5xx: the daemon's own, with an incident id", "content": {"application/json": {"schema": error}}},
            },
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(body) = r.body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
        }
        let entry = paths.entry(r.path).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let mut schemas = req.take_definitions(true);
    schemas.extend(res.take_definitions(true));
    let schemas: Map<String, Value> = schemas
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tessera daemon API",
            "version": "v1",
            "description": "The API of `tessera serve`: on its Unix socket (identity from the connection's peer credentials) and, with --listen, over HTTP with `Authorization: Bearer TOKEN`. See docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:9400", "description": "tessera serve --listen 127.0.0.1:9400"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "The daemon's token (TESSERA_TOKEN or token_file); Unix-socket callers need none."}},
        },
    })
}

#[test]
fn the_committed_openapi_file_is_the_one_the_types_give() {
    let text = serde_json::to_string_pretty(&document()).unwrap() + "\n";
    let path = openapi_path();
    if std::env::var_os("TESSERA_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/openapi.json differs from the wire types; run `TESSERA_UPDATE_OPENAPI=1 cargo test -p tessera-server --test openapi` and commit it"
    );
}

#[test]
fn the_request_field_has_the_response_field_name() {
    let doc = document();
    let submit = &doc["components"]["schemas"]["SubmitBody"]["properties"];
    let view = &doc["components"]["schemas"]["RequestView"]["properties"];
    for field in ["ask", "gpu_model", "priority", "command"] {
        assert!(submit.get(field).is_some(), "SubmitBody.{field}");
        assert!(view.get(field).is_some(), "RequestView.{field}");
    }
}

/// Every documented route is one the router has: asked without a token over TCP it answers
/// 401 (unknown paths answer 404, wrong methods 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_routed() {
    use tessera_model::Catalog;
    use tessera_server::fleet::Fleet;
    use tessera_server::http::{router, AppState, Guarded, Peer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let cfg = tessera_server::Config {
        backend: tessera_server::config::BackendChoice::Sim,
        sim_gpus: "h100-80gb:1".into(),
        state_dir: Some(dir.path().join("state")),
        isolation: Some(tessera_server::config::IsolationMode::Off),
        ..tessera_server::Config::default()
    };
    let catalog = Catalog::builtin().clone();
    let st =
        tessera_gpu::sim::SimState::new(&catalog, &[("h100-80gb".into(), 1)], 3, true).unwrap();
    let sim = tessera_gpu::sim::SimBackend::new(st, catalog.clone(), Default::default()).unwrap();
    std::fs::create_dir_all(cfg.state_dir()).unwrap();
    let fleet = Fleet::with_backend(Box::new(sim), &cfg, &cfg.state_dir(), &catalog).unwrap();
    let (daemon, sched) = tessera_server::Daemon::start(cfg, catalog, fleet).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let svc = router(AppState {
        daemon: daemon.clone(),
        token: Some("t".into()),
    })
    .into_make_service_with_connect_info::<Peer>();
    tokio::spawn(
        async move { axum::serve(Guarded::new(tcp, 64, Duration::from_secs(30)), svc).await },
    );

    let status = |method: String, path: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        text.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
    };
    let doc = document();
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "1").replace("{gpu}", "0");
            let got = status(method.to_uppercase(), concrete.clone()).await;
            assert_eq!(got, 401, "{method} {concrete}");
            n += 1;
        }
    }
    assert_eq!(n, 11);
    assert_eq!(status("GET".into(), "/v1/nope".into()).await, 404);
    daemon.stop();
    sched.join();
}
