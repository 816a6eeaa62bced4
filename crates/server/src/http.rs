//! The HTTP surface: an axum router over the [`Daemon`]'s operations, served on the Unix
//! socket (caller identity from `SO_PEERCRED`) and optionally on TCP (`--listen`, bearer token).
//!
//! Every answer is JSON (`/metrics` and the web view's page, `/`, excepted). Malformed input never reaches the daemon: bodies
//! are parsed here and a parse error is a 400 naming the problem; unknown paths are 404 and
//! wrong methods 405.
//!
//! Connections are guarded ([`Guarded`]): at most `connections.max_per_uid` open at once per
//! uid on the Unix socket (per address on TCP), and a connection is closed when a request
//! has not been answered within `connections.idle_timeout_ms` of its first byte, or when it
//! sits idle that long between requests. A long poll waits at most half of that.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::net::{TcpListener, UnixListener};

use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::ident::{token_matches, Identity};
use crate::wire::{DrainBody, ErrorBody, LayoutBody, ReleaseBody, SubmitBody};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A Unix socket peer, as the kernel reports it.
    Unix {
        /// uid (`None` when the kernel would not say: refused).
        uid: Option<u32>,
        /// PID.
        pid: Option<i32>,
    },
    /// A TCP peer.
    Tcp(SocketAddr),
}

impl Connected<IncomingStream<'_, Guarded<UnixListener>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Guarded<UnixListener>>) -> Self {
        match stream.io().inner().peer_cred() {
            Ok(c) => Peer::Unix {
                uid: Some(c.uid()),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!("cannot read the peer credentials of a connection: {e}");
                Peer::Unix {
                    uid: None,
                    pid: None,
                }
            }
        }
    }
}

impl Connected<IncomingStream<'_, Guarded<TcpListener>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Guarded<TcpListener>>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

/// What the router needs: the daemon and the HTTP token.
#[derive(Clone)]
pub struct AppState {
    /// The daemon core.
    pub daemon: Daemon,
    /// The bearer token for TCP callers (`None`: TCP callers are refused).
    pub token: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// The caller of a request, from the connection.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0.clone())
            .ok_or_else(|| ApiError::internal("a request without connection info"))?;
        match peer {
            Peer::Unix {
                uid: Some(uid),
                pid,
            } => Ok(Caller(
                Identity::from_peer(uid, pid).with_admins(&state.daemon.config().admins),
            )),
            Peer::Unix { uid: None, .. } => Err(ApiError::unauthorized(
                "the daemon could not read this connection's credentials",
            )),
            Peer::Tcp(_) => {
                let Some(expected) = &state.token else {
                    return Err(ApiError::unauthorized("HTTP access is not configured"));
                };
                let presented = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !token_matches(presented.trim(), expected) {
                    return Err(ApiError::unauthorized(
                        "missing or wrong bearer token; send `Authorization: Bearer TOKEN`",
                    ));
                }
                let cfg = state.daemon.config();
                Ok(Caller(
                    Identity::http(cfg.http_uid).with_admins(&cfg.admins),
                ))
            }
        }
    }
}

/// A JSON body whose parse errors are 400s with a message (not axum's plain-text rejection).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if bytes.len() > MAX_BODY {
            return Err(ApiError::bad_request(format!(
                "the body is {} bytes; the most accepted is {MAX_BODY}",
                bytes.len()
            )));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("the request needs a JSON body"));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
    }
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a request ID (a number)")))
}

fn parse_gpu(text: &str) -> Result<u32, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a GPU index (a number)")))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    #[serde(default)]
    timeout_ms: Option<String>,
}

async fn submit(
    State(s): State<AppState>,
    Caller(who): Caller,
    Body(body): Body<SubmitBody>,
) -> Result<Response, ApiError> {
    let view = s.daemon.submit(&who, body)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(
    State(s): State<AppState>,
    Caller(who): Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let all = match q.all.as_deref() {
        None | Some("0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "all=`{other}`: use all=true or all=false"
            )))
        }
    };
    Ok(Json(s.daemon.list(&who, all)?).into_response())
}

async fn get_one(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.daemon.get(&who, parse_id(&id)?)?).into_response())
}

async fn wait(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let ms = match q.timeout_ms.as_deref() {
        None => 5_000,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("timeout_ms `{t}` is not a number")))?,
    };
    // A long poll must end well before the connection's idle timeout.
    let ms = ms
        .min(60_000)
        .min(s.daemon.config().connections.idle_timeout_ms / 2);
    Ok(Json(
        s.daemon
            .wait(&who, parse_id(&id)?, Duration::from_millis(ms))
            .await?,
    )
    .into_response())
}

async fn heartbeat(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.daemon.heartbeat(&who, parse_id(&id)?)?).into_response())
}

async fn release(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(body): Body<ReleaseBody>,
) -> Result<Response, ApiError> {
    Ok(Json(s.daemon.release(&who, parse_id(&id)?, body)?).into_response())
}

async fn cancel(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(s.daemon.cancel(&who, parse_id(&id)?)?).into_response())
}

async fn status(State(s): State<AppState>, Caller(who): Caller) -> Result<Response, ApiError> {
    Ok(Json(s.daemon.status(&who)?).into_response())
}

async fn drain(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(gpu): Path<String>,
    Body(body): Body<DrainBody>,
) -> Result<Response, ApiError> {
    Ok(Json(s.daemon.drain(&who, parse_gpu(&gpu)?, body.drain).await?).into_response())
}

async fn layout(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(gpu): Path<String>,
    Body(body): Body<LayoutBody>,
) -> Result<Response, ApiError> {
    Ok(Json(
        s.daemon
            .force_layout(&who, parse_gpu(&gpu)?, &body.layout)
            .await?,
    )
    .into_response())
}

async fn metrics(State(s): State<AppState>, mut parts: Parts) -> Response {
    // Holders (the `user` label) only for callers who may see everyone's: root and admins
    // (on TCP: the token with an admin `http_uid`), or anyone when the web view is public.
    let holders = s.daemon.config().web_public
        || Caller::from_request_parts(&mut parts, &s)
            .await
            .is_ok_and(|Caller(who)| who.is_admin());
    let root = Identity::in_process(0, "metrics");
    let text = match crate::web::overview(&s.daemon, &root, false) {
        Ok(overview) => s
            .daemon
            .metrics()
            .render_with(&crate::metrics::State { overview, holders }),
        Err(e) => {
            tracing::warn!(
                "metrics: the daemon's state could not be read: {}",
                e.message
            );
            s.daemon.metrics().render()
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /v1/overview`: the web view's document. With `web_public: true`, a TCP caller without
/// a token gets the public view (no commands); a wrong token is still refused.
async fn overview(State(s): State<AppState>, mut parts: Parts) -> Result<Response, ApiError> {
    let public = s.daemon.config().web_public
        && matches!(
            parts.extensions.get::<ConnectInfo<Peer>>(),
            Some(ConnectInfo(Peer::Tcp(_)))
        )
        && !parts.headers.contains_key(header::AUTHORIZATION);
    let view = if public {
        crate::web::overview(&s.daemon, &Identity::in_process(0, "web"), true)?
    } else {
        let Caller(who) = Caller::from_request_parts(&mut parts, &s).await?;
        crate::web::overview(&s.daemon, &who, false)?
    };
    Ok(Json(view).into_response())
}

/// The web view's page, script and style sheet (no data: served without a token).
async fn page(uri: axum::http::Uri) -> Response {
    crate::web::asset(uri.path()).unwrap_or_else(|| {
        ApiError::not_found("no such page; the web view is at /").into_response()
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API path; the API lives under /v1/ (see the docs)")
}

/// The API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/requests", post(submit).get(list))
        .route("/v1/requests/{id}", get(get_one))
        .route("/v1/requests/{id}/wait", get(wait))
        .route("/v1/requests/{id}/heartbeat", post(heartbeat))
        .route("/v1/requests/{id}/release", post(release))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/status", get(status))
        .route("/v1/gpus/{gpu}/drain", post(drain))
        .route("/v1/gpus/{gpu}/layout", post(layout))
        .route("/v1/overview", get(overview))
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/app.js", get(page))
        .route("/style.css", get(page))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Who a connection counts against for the per-peer cap.
pub trait PeerKey {
    /// `uid N` (Unix socket) or `address A` (TCP).
    fn peer_key(&self) -> String;
}

impl PeerKey for tokio::net::UnixStream {
    fn peer_key(&self) -> String {
        match self.peer_cred() {
            Ok(c) => format!("uid {}", c.uid()),
            Err(_) => "an unknown uid".into(),
        }
    }
}

impl PeerKey for tokio::net::TcpStream {
    fn peer_key(&self) -> String {
        match self.peer_addr() {
            Ok(a) => format!("address {}", a.ip()),
            Err(_) => "an unknown address".into(),
        }
    }
}

/// Open connections per peer, shared by a listener and its connections.
#[derive(Debug, Default)]
struct Slots {
    open: Mutex<HashMap<String, u32>>,
    warned: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slots {
    fn take(self: &Arc<Self>, key: String, max: u32) -> Option<Slot> {
        let mut open = lock(&self.open);
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Log a refusal at most once a minute per peer.
    fn refused(&self, key: &str, max: u32) {
        let mut warned = lock(&self.warned);
        let now = Instant::now();
        if warned
            .get(key)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
        {
            return;
        }
        warned.insert(key.to_string(), now);
        tracing::warn!(
            "closing new connections from {key}: it already holds {max} (connections.max_per_uid)"
        );
    }
}

/// One open connection's place in [`Slots`], given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.slots.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A listener that caps open connections per peer and times out idle or slow ones (see the
/// module docs).
#[derive(Debug)]
pub struct Guarded<L> {
    inner: L,
    max_per_peer: u32,
    idle: Duration,
    slots: Arc<Slots>,
    counters: GuardCounters,
}

/// Counters a [`Guarded`] listener bumps (`tessera_connections_refused_total`,
/// `tessera_connections_timed_out_total`).
#[derive(Debug, Clone, Default)]
pub struct GuardCounters {
    /// Connections closed at once by the cap.
    pub refused: prometheus_client::metrics::counter::Counter,
    /// Connections closed by the idle timeout.
    pub timed_out: prometheus_client::metrics::counter::Counter,
}

impl<L> Guarded<L> {
    /// Guard `inner`: at most `max_per_peer` connections per peer, each closed after `idle`
    /// without progress.
    pub fn new(inner: L, max_per_peer: u32, idle: Duration) -> Self {
        Guarded {
            inner,
            max_per_peer,
            idle,
            slots: Arc::new(Slots::default()),
            counters: GuardCounters::default(),
        }
    }

    /// Count refusals and timeouts in these counters (the daemon's metrics).
    pub fn with_counters(mut self, counters: GuardCounters) -> Self {
        self.counters = counters;
        self
    }
}

impl<L> axum::serve::Listener for Guarded<L>
where
    L: axum::serve::Listener,
    L::Io: PeerKey,
{
    type Io = GuardedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            let key = io.peer_key();
            match self.slots.take(key.clone(), self.max_per_peer) {
                Some(slot) => {
                    let io = GuardedIo::new(io, slot, self.idle, self.counters.timed_out.clone());
                    return (io, addr);
                }
                None => {
                    self.counters.refused.inc();
                    self.slots.refused(&key, self.max_per_peer);
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A guarded connection: its deadline is set when it opens, when a request's first byte
/// arrives, and on every byte of an answer written; past it, reads and writes fail with
/// `TimedOut` and the server closes the connection.
#[derive(Debug)]
pub struct GuardedIo<T> {
    io: T,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Nothing read since the last answer (or the start): the next byte starts a request.
    between_requests: bool,
    timed_out: prometheus_client::metrics::counter::Counter,
    counted: bool,
}

impl<T> GuardedIo<T> {
    fn new(
        io: T,
        slot: Slot,
        idle: Duration,
        timed_out: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        GuardedIo {
            io,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            between_requests: true,
            timed_out,
            counted: false,
        }
    }

    /// The connection itself.
    pub fn inner(&self) -> &T {
        &self.io
    }

    fn extend(&mut self) {
        let at = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    /// `Pending` while the deadline is ahead (the timer will wake the task), else the error.
    fn expired<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if !std::mem::replace(&mut self.counted, true) {
                    self.timed_out.inc();
                }
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle or too slow (connections.idle_timeout_ms)",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.between_requests {
                    this.between_requests = false;
                    this.extend();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx),
        }
    }
}

impl<T> GuardedIo<T> {
    /// After a write: bytes out mean an answer is under way (the connection is between requests
    /// again and its deadline moves on); a write that cannot go on is judged by the deadline.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.between_requests = true;
                    self.extend();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.expired(cx),
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.expired(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// However connections of two peers open and close, neither holds more than the cap,
        /// and a place is refused exactly when its peer is at the cap.
        #[test]
        fn no_peer_holds_more_than_the_cap(
            cap in 1u32..6,
            ops in proptest::collection::vec((proptest::bool::ANY, 0usize..2, 0usize..8), 0..200),
        ) {
            let slots = Arc::new(Slots::default());
            let mut held: [Vec<Slot>; 2] = [Vec::new(), Vec::new()];
            for (open, peer, pick) in ops {
                let key = format!("uid {peer}");
                if open {
                    let got = slots.take(key, cap);
                    proptest::prop_assert_eq!(got.is_some(), (held[peer].len() as u32) < cap);
                    held[peer].extend(got);
                } else if !held[peer].is_empty() {
                    let i = pick % held[peer].len();
                    held[peer].swap_remove(i);
                }
                for (p, h) in held.iter().enumerate() {
                    let open = lock(&slots.open).get(&format!("uid {p}")).copied().unwrap_or(0);
                    proptest::prop_assert_eq!(open, h.len() as u32);
                    proptest::prop_assert!(open <= cap);
                }
            }
        }
    }
}
