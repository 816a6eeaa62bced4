//! The HTTP surface: an axum router over the [`Daemon`]'s operations, served on the Unix
//! socket (caller identity from `SO_PEERCRED`) and optionally on TCP (`--listen`, bearer token).
//!
//! Every answer is JSON (`/metrics` excepted). Malformed input never reaches the daemon: bodies
//! are parsed here and a parse error is a 400 naming the problem; unknown paths are 404 and
//! wrong methods 405.

use std::net::SocketAddr;
use std::time::Duration;

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

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
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

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
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
    let ms = ms.min(60_000);
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

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.daemon.metrics().render(),
    )
        .into_response()
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
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}
