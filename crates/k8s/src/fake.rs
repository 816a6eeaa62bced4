//! An in-process fake Kubernetes apiserver for tests and `tessera k8s demo`: an axum server on
//! 127.0.0.1 that `kube::Client` talks to over real HTTP.
//!
//! What it serves, for any resource path (core `/api/v1/...` and `/apis/GROUP/VERSION/...`,
//! namespaced or cluster-scoped; it needs no discovery and no schemas, so Pod, Node, Lease,
//! TesseraNode, ResourceSlice and ResourceClaim all work):
//! - `GET` a collection (list, with `resourceVersion` in the list metadata; equality
//!   `labelSelector`s), `GET ?watch=true&resourceVersion=N` (newline-delimited
//!   `ADDED`/`MODIFIED`/`DELETED` events after `N`, then live ones, until `timeoutSeconds`),
//!   `GET` one object;
//! - `POST` (create; `409 AlreadyExists`), `PUT` (replace; `409 Conflict` on a stale
//!   `metadata.resourceVersion`), `PATCH` with JSON merge patch; strategic merge patch and
//!   server-side apply are **approximated as JSON merge patch** (lists are replaced, not merged
//!   by key; apply creates a missing object; no field managers or apply conflicts), `DELETE`;
//! - the `/status` subresource for pods, nodes, tesseranodes and resourceclaims: writes to the
//!   main resource keep the stored status, writes to `/status` change only the status;
//!   `metadata.generation` grows when anything outside `metadata` and `status` changes.
//!
//! Not served: JSON patch, field selectors, pagination (`limit` is ignored), bookmarks,
//! admission, validation against schemas, garbage collection.
//!
//! Every request is recorded ([`FakeApiServer::requests`]) so tests can assert what a client
//! sent: method, path, query, content type and body.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

/// Resources whose `status` is a subresource.
const STATUS_SUBRESOURCE: [&str; 4] = ["pods", "nodes", "tesseranodes", "resourceclaims"];

/// One request as the fake apiserver received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, e.g. `/api/v1/namespaces/default/pods/p1`.
    pub path: String,
    /// Query string (without `?`), empty if none.
    pub query: String,
    /// `Content-Type` header, empty if none.
    pub content_type: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

/// A watch event as stored and streamed.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    /// Set clock for `creationTimestamp` (virtual time); `None`: the real clock.
    clock: Option<k8s_openapi::jiff::Timestamp>,
    uid: u64,
    /// resource key (`v1/pods`, `tessera.dev/v1alpha1/tesseranodes`) → (namespace, name) → object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    history: Vec<Event>,
    requests: Vec<RecordedRequest>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake apiserver; stops when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the fake apiserver could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the fake apiserver on 127.0.0.1: {source}")]
pub struct FakeStartError {
    #[source]
    source: std::io::Error,
}

impl FakeApiServer {
    /// Start on an ephemeral port of 127.0.0.1 (needs a Tokio runtime).
    pub async fn start() -> Result<FakeApiServer, FakeStartError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| FakeStartError { source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| FakeStartError { source })?;
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Client` for this server.
    pub fn client(&self) -> kube::Client {
        let uri: axum::http::Uri = self.url().parse().expect("a valid URL");
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("a plain-HTTP client always builds")
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Stamp objects created from now on with `t` as `creationTimestamp` (a virtual clock for
    /// tests and the demo); `None` goes back to the real clock.
    pub fn set_clock(&self, t: Option<k8s_openapi::jiff::Timestamp>) {
        self.shared.lock().clock = t;
    }

    /// The time objects are stamped with now: the virtual clock when set, else the real one.
    pub fn now(&self) -> k8s_openapi::jiff::Timestamp {
        self.shared
            .lock()
            .clock
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now)
    }

    /// Forget the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// The current resourceVersion (the number of writes so far).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// A stored object by resource key (`v1/pods`, `tessera.dev/v1alpha1/tesseranodes`),
    /// namespace (`""` for cluster-scoped) and name.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(resource)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }
}

/// A parsed resource path.
#[derive(Debug, Clone)]
struct Target {
    resource: String,
    namespace: String,
    name: Option<String>,
    status: bool,
    plural: String,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (plural, name, status) = match rest {
        [r] => (r.to_string(), None, false),
        [r, n] => (r.to_string(), Some(n.to_string()), false),
        [r, n, "status"] => (r.to_string(), Some(n.to_string()), true),
        _ => return None,
    };
    Some(Target {
        resource: format!("{gv}/{plural}"),
        namespace,
        name,
        status,
        plural,
    })
}

fn query_map(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn ok_json(code: StatusCode, v: Value) -> Response {
    (code, axum::Json(v)).into_response()
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        let v = v.trim_start_matches('=');
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k.trim()))
            .and_then(Value::as_str)
            == Some(v.trim())
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The object without `metadata` and `status`: what `generation` tracks.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    v
}

fn meta_str(v: &Value, field: &str) -> Option<String> {
    v.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("body is not JSON: {e}"),
                )
            }
        }
    };
    shared.lock().requests.push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body_json.clone(),
    });
    let Some(target) = parse_path(&path) else {
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the fake apiserver serves no path {path}"),
        );
    };
    let q = query_map(&query);
    match (method.as_str(), target.name.is_some()) {
        ("GET", false) if q.get("watch").map(String::as_str) == Some("true") => {
            watch(&shared, &target, &q)
        }
        ("GET", false) => list(&shared, &target, &q),
        ("GET", true) => get(&shared, &target),
        ("POST", false) => match body_json {
            Some(b) => create(&shared, &target, b),
            None => status_error(StatusCode::BAD_REQUEST, "BadRequest", "no body".into()),
        },
        ("PUT", true) => match body_json {
            Some(b) => replace(&shared, &target, b),
            None => status_error(StatusCode::BAD_REQUEST, "BadRequest", "no body".into()),
        },
        ("PATCH", true) => match body_json {
            Some(b) => patch(&shared, &target, &content_type, b),
            None => status_error(StatusCode::BAD_REQUEST, "BadRequest", "no body".into()),
        },
        ("DELETE", true) => delete(&shared, &target),
        (m, _) => status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake apiserver does not serve {m} on {path}"),
        ),
    }
}

fn list(shared: &Shared, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let st = shared.lock();
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let items: Vec<Value> = st
        .objects
        .get(&t.resource)
        .map(|m| {
            m.iter()
                .filter(|((ns, _), _)| t.namespace.is_empty() || *ns == t.namespace)
                .map(|(_, v)| v.clone())
                .filter(|v| labels_match(v, &selector))
                .collect()
        })
        .unwrap_or_default();
    let kind = items
        .first()
        .and_then(|v| v.get("kind"))
        .and_then(Value::as_str)
        .map(|k| format!("{k}List"))
        .unwrap_or_else(|| "List".into());
    ok_json(
        StatusCode::OK,
        json!({"kind": kind, "apiVersion": "v1",
               "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn get(shared: &Shared, t: &Target) -> Response {
    let st = shared.lock();
    let name = t.name.clone().unwrap_or_default();
    match st
        .objects
        .get(&t.resource)
        .and_then(|m| m.get(&(t.namespace.clone(), name.clone())))
    {
        Some(v) => ok_json(StatusCode::OK, v.clone()),
        None => not_found(t, &name),
    }
}

fn not_found(t: &Target, name: &str) -> Response {
    status_error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", t.plural),
    )
}

/// Record a write: bump the resourceVersion, stamp it on the object, log and broadcast the event.
fn commit(
    shared: &Shared,
    st: &mut Store,
    t: &Target,
    name: &str,
    kind: &'static str,
    mut obj: Value,
) -> Value {
    st.rv += 1;
    let rv = st.rv;
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    let key = (t.namespace.clone(), name.to_string());
    let map = st.objects.entry(t.resource.clone()).or_default();
    if kind == "DELETED" {
        map.remove(&key);
    } else {
        map.insert(key, obj.clone());
    }
    let ev = Event {
        rv,
        resource: t.resource.clone(),
        namespace: t.namespace.clone(),
        kind,
        object: obj.clone(),
    };
    st.history.push(ev.clone());
    let _ = shared.events.send(ev);
    obj
}

fn create(shared: &Shared, t: &Target, mut obj: Value) -> Response {
    let mut st = shared.lock();
    if !obj.is_object() || obj.get("metadata").map(Value::is_object) != Some(true) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the object has no metadata".into(),
        );
    }
    let name = match meta_str(&obj, "name") {
        Some(n) if !n.is_empty() => n,
        _ => match meta_str(&obj, "generateName") {
            Some(g) => format!("{g}{:05}", st.uid + 1),
            None => {
                return status_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value".into(),
                )
            }
        },
    };
    let key = (t.namespace.clone(), name.clone());
    if st
        .objects
        .get(&t.resource)
        .is_some_and(|m| m.contains_key(&key))
    {
        return status_error(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.plural),
        );
    }
    st.uid += 1;
    let uid = format!("00000000-0000-4000-8000-{:012}", st.uid);
    let now = st.clock.unwrap_or_else(|| {
        k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
    });
    {
        let m = obj["metadata"].as_object_mut().expect("checked above");
        m.insert("name".into(), Value::String(name.clone()));
        if !t.namespace.is_empty() {
            m.insert("namespace".into(), Value::String(t.namespace.clone()));
        }
        m.insert("uid".into(), Value::String(uid));
        m.insert("generation".into(), json!(1));
        m.insert("creationTimestamp".into(), Value::String(now.to_string()));
    }
    if STATUS_SUBRESOURCE.contains(&t.plural.as_str()) && t.plural != "pods" {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    let out = commit(shared, &mut st, t, &name, "ADDED", obj);
    ok_json(StatusCode::CREATED, out)
}

/// Write `new` over `old` for the main resource or the status subresource, keeping what the
/// other owns and bumping `generation` on spec changes.
fn write(shared: &Shared, st: &mut Store, t: &Target, old: &Value, mut new: Value) -> Value {
    let name = t.name.clone().unwrap_or_default();
    let has_status = STATUS_SUBRESOURCE.contains(&t.plural.as_str());
    if t.status {
        let mut kept = old.clone();
        match new.get("status") {
            Some(s) => kept["status"] = s.clone(),
            None => {
                if let Some(o) = kept.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        new = kept;
    } else if has_status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    // Server-owned metadata stays.
    for f in ["uid", "creationTimestamp", "namespace", "name"] {
        if let Some(v) = old.pointer(&format!("/metadata/{f}")) {
            new["metadata"][f] = v.clone();
        }
    }
    let generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = if spec_part(old) != spec_part(&new) {
        generation + 1
    } else {
        generation
    };
    new["metadata"]["generation"] = json!(generation);
    commit(shared, st, t, &name, "MODIFIED", new)
}

fn stored(st: &Store, t: &Target) -> Option<Value> {
    st.objects
        .get(&t.resource)
        .and_then(|m| m.get(&(t.namespace.clone(), t.name.clone().unwrap_or_default())))
        .cloned()
}

fn stale(old: &Value, new: &Value) -> Option<Response> {
    let want = meta_str(new, "resourceVersion")?;
    let have = meta_str(old, "resourceVersion").unwrap_or_default();
    (want != have).then(|| {
        status_error(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}: the object has been modified (resourceVersion {want}, now {have}); please apply your changes to the latest version and try again",
                meta_str(old, "name").unwrap_or_default()
            ),
        )
    })
}

fn replace(shared: &Shared, t: &Target, obj: Value) -> Response {
    let mut st = shared.lock();
    let name = t.name.clone().unwrap_or_default();
    let Some(old) = stored(&st, t) else {
        return not_found(t, &name);
    };
    if let Some(r) = stale(&old, &obj) {
        return r;
    }
    let out = write(shared, &mut st, t, &old, obj);
    ok_json(StatusCode::OK, out)
}

fn patch(shared: &Shared, t: &Target, content_type: &str, p: Value) -> Response {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let apply = match ct {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        "application/apply-patch+yaml" => true,
        other => {
            return status_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the fake apiserver does not serve patches of type `{other}`; use a merge patch or server-side apply"),
            )
        }
    };
    let mut st = shared.lock();
    let name = t.name.clone().unwrap_or_default();
    let old = match stored(&st, t) {
        Some(o) => o,
        None if apply && !t.status => {
            drop(st);
            return create(shared, t, p);
        }
        None => return not_found(t, &name),
    };
    if let Some(r) = stale(&old, &p) {
        return r;
    }
    let mut new = old.clone();
    merge_patch(&mut new, &p);
    let out = write(shared, &mut st, t, &old, new);
    ok_json(StatusCode::OK, out)
}

fn delete(shared: &Shared, t: &Target) -> Response {
    let mut st = shared.lock();
    let name = t.name.clone().unwrap_or_default();
    let Some(old) = stored(&st, t) else {
        return not_found(t, &name);
    };
    let out = commit(shared, &mut st, t, &name, "DELETED", old);
    ok_json(StatusCode::OK, out)
}

fn event_line(ev: &Event) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": ev.kind, "object": ev.object}))
        .expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(shared: &Shared, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let (backlog, rx) = {
        let st = shared.lock();
        let rx = shared.events.subscribe();
        let since = q
            .get("resourceVersion")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&rv| rv > 0);
        let backlog: Vec<Event> = match since {
            Some(rv) => st
                .history
                .iter()
                .filter(|e| e.rv > rv && e.resource == t.resource)
                .cloned()
                .collect(),
            // No or `0` resourceVersion: start with every object as ADDED.
            None => st
                .objects
                .get(&t.resource)
                .map(|m| {
                    m.iter()
                        .map(|((ns, _), v)| Event {
                            rv: st.rv,
                            resource: t.resource.clone(),
                            namespace: ns.clone(),
                            kind: "ADDED",
                            object: v.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        (backlog, rx)
    };
    let t2 = t.clone();
    let keep = move |e: &Event| {
        e.resource == t2.resource
            && (t2.namespace.is_empty() || e.namespace == t2.namespace)
            && labels_match(&e.object, &selector)
    };
    let first: Vec<Bytes> = backlog.iter().filter(|e| keep(e)).map(event_line).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let live = futures::stream::unfold((rx, keep), move |(mut rx, keep)| async move {
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(ev)) if keep(&ev) => {
                    return Some((Ok::<Bytes, std::io::Error>(event_line(&ev)), (rx, keep)))
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return None,
            }
        }
    });
    let stream = futures::StreamExt::chain(
        futures::stream::iter(first.into_iter().map(Ok::<Bytes, std::io::Error>)),
        live,
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_for_core_group_namespaced_and_status() {
        let t = parse_path("/api/v1/namespaces/default/pods/p1/status").unwrap();
        assert_eq!(t.resource, "v1/pods");
        assert_eq!(t.namespace, "default");
        assert_eq!(t.name.as_deref(), Some("p1"));
        assert!(t.status);
        let t = parse_path("/apis/tessera.dev/v1alpha1/tesseranodes").unwrap();
        assert_eq!(t.resource, "tessera.dev/v1alpha1/tesseranodes");
        assert!(t.namespace.is_empty() && t.name.is_none());
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}, "l": [9]}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}, "l": [9]}));
    }

    #[test]
    fn query_components_are_percent_decoded() {
        let q = query_map("labelSelector=app%3Dx%2Ctier%3Dy&watch=true");
        assert_eq!(q["labelSelector"], "app=x,tier=y");
        assert_eq!(q["watch"], "true");
    }
}
