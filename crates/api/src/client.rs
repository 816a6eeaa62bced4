//! A small client for the daemon's API over its Unix socket: one HTTP/1.1 request per
//! connection (`Connection: close`), JSON in and out. Used by `tessera run/ps/status/cancel/
//! drain` and the tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::wire::{
    DrainBody, ErrorBody, GpuView, LayoutBody, ReleaseBody, RequestView, StatusView, SubmitBody,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon cannot be reached (not running, wrong socket, no permission).
    #[error("cannot reach the tessera daemon at {}: {source}; {}", .socket.display(), connect_hint(.source))]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-call (e.g. the daemon restarted).
    #[error("lost the connection to the daemon at {}: {detail}", .socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What happened.
        detail: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// The answer is not a well-formed HTTP/1.1 response.
    #[error("unexpected answer from the daemon: {0}")]
    Response(#[source] ResponseError),
}

/// Why bytes read from the daemon are not an HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// No blank line ends the headers.
    #[error("no end of headers")]
    NoEndOfHeaders,
    /// The headers are not UTF-8.
    #[error("headers are not UTF-8")]
    HeadersNotUtf8,
    /// Nothing before the headers' end.
    #[error("no status line")]
    NoStatusLine,
    /// The status line has no numeric status.
    #[error("bad status line `{0}`")]
    BadStatusLine(String),
    /// A chunk size line is cut off.
    #[error("truncated chunk size")]
    TruncatedChunkSize,
    /// A chunk size is not hexadecimal.
    #[error("bad chunk size `{0}`")]
    BadChunkSize(String),
    /// A chunk is shorter than its size.
    #[error("truncated chunk")]
    TruncatedChunk,
    /// The body is shorter than its Content-Length.
    #[error("body has {have} of {want} bytes")]
    ShortBody {
        /// Bytes read.
        have: usize,
        /// Content-Length.
        want: usize,
    },
}

fn connect_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "ask the administrator to add you to the socket's group (socket_group in the daemon's config)"
    } else {
        "start it with `tessera serve`, or pass --socket (or set TESSERA_SOCKET)"
    }
}

impl ClientError {
    /// Whether retrying later may help (the daemon is down or restarting).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Io { .. })
            || matches!(self, ClientError::Api { status, .. } if *status >= 500)
    }
}

/// A raw HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
}

/// A client of one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the daemon at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send one request with a raw body; any status comes back as is.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<RawResponse, ClientError> {
        let io = |detail: String| ClientError::Io {
            socket: self.socket.clone(),
            detail,
        };
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let body = body.unwrap_or(b"");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tessera\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let exchange = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await?;
            Ok::<Vec<u8>, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| io(format!("no answer within {}s", timeout.as_secs())))?
            .map_err(|e| io(e.to_string()))?;
        parse_response(&buf).map_err(|e| {
            if buf.is_empty() {
                io("the daemon closed the connection".into())
            } else {
                ClientError::Response(e)
            }
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let bytes = match body {
            Some(b) => {
                Some(serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?)
            }
            None => None,
        };
        let r = self.raw(method, path, bytes.as_deref(), timeout).await?;
        if !(200..300).contains(&r.status) {
            let message = serde_json::from_slice::<ErrorBody>(&r.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
            return Err(ClientError::Api {
                status: r.status,
                message,
            });
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            ClientError::Protocol(format!("{e} in {}", String::from_utf8_lossy(&r.body)))
        })
    }

    /// Queue a request.
    pub async fn submit(&self, body: &SubmitBody) -> Result<RequestView, ClientError> {
        self.call("POST", "/v1/requests", Some(body), self.timeout)
            .await
    }

    /// The caller's requests (root: all); `all` adds recently ended ones.
    pub async fn list(&self, all: bool) -> Result<Vec<RequestView>, ClientError> {
        let path = if all {
            "/v1/requests?all=1"
        } else {
            "/v1/requests"
        };
        self.call("GET", path, None::<&()>, self.timeout).await
    }

    /// One request.
    pub async fn get(&self, id: u64) -> Result<RequestView, ClientError> {
        self.call(
            "GET",
            &format!("/v1/requests/{id}"),
            None::<&()>,
            self.timeout,
        )
        .await
    }

    /// Long-poll until the request leaves the queue or `timeout` passes.
    pub async fn wait(&self, id: u64, timeout: Duration) -> Result<RequestView, ClientError> {
        let path = format!("/v1/requests/{id}/wait?timeout_ms={}", timeout.as_millis());
        self.call("GET", &path, None::<&()>, timeout + Duration::from_secs(10))
            .await
    }

    /// Send a heartbeat.
    pub async fn heartbeat(&self, id: u64) -> Result<RequestView, ClientError> {
        self.call(
            "POST",
            &format!("/v1/requests/{id}/heartbeat"),
            None::<&()>,
            self.timeout,
        )
        .await
    }

    /// Release a lease (or withdraw a queued request).
    pub async fn release(&self, id: u64, body: &ReleaseBody) -> Result<RequestView, ClientError> {
        self.call(
            "POST",
            &format!("/v1/requests/{id}/release"),
            Some(body),
            self.timeout,
        )
        .await
    }

    /// Cancel a request.
    pub async fn cancel(&self, id: u64) -> Result<RequestView, ClientError> {
        self.call(
            "POST",
            &format!("/v1/requests/{id}/cancel"),
            None::<&()>,
            self.timeout,
        )
        .await
    }

    /// Every GPU and its slices.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.call("GET", "/v1/status", None::<&()>, self.timeout)
            .await
    }

    /// Drain or undrain a GPU (root).
    pub async fn drain(&self, gpu: u32, drain: bool) -> Result<GpuView, ClientError> {
        self.call(
            "POST",
            &format!("/v1/gpus/{gpu}/drain"),
            Some(&DrainBody { drain }),
            self.timeout,
        )
        .await
    }

    /// Force a GPU's MIG layout (root).
    pub async fn set_layout(&self, gpu: u32, layout: &[String]) -> Result<GpuView, ClientError> {
        self.call(
            "POST",
            &format!("/v1/gpus/{gpu}/layout"),
            Some(&LayoutBody {
                layout: layout.to_vec(),
            }),
            self.timeout,
        )
        .await
    }

    /// The Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let r = self.raw("GET", "/metrics", None, self.timeout).await?;
        if r.status != 200 {
            return Err(ClientError::Api {
                status: r.status,
                message: String::from_utf8_lossy(&r.body).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }
}

/// Parse an HTTP/1.1 response: status line, headers, body (Content-Length, chunked, or to EOF).
pub fn parse_response(buf: &[u8]) -> Result<RawResponse, ResponseError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ResponseError::NoEndOfHeaders)?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ResponseError::HeadersNotUtf8)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(ResponseError::NoStatusLine)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ResponseError::BadStatusLine(status_line.to_string()))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse().ok();
        }
    }
    let rest = &buf[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = rest[pos..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or(ResponseError::TruncatedChunkSize)?
                + pos;
            let size_text = std::str::from_utf8(&rest[pos..line_end]).map_err(|_| {
                ResponseError::BadChunkSize(String::from_utf8_lossy(&rest[pos..line_end]).into())
            })?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ResponseError::BadChunkSize(size_text.to_string()))?;
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            if pos + size > rest.len() {
                return Err(ResponseError::TruncatedChunk);
            }
            out.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        out
    } else if let Some(n) = length {
        if rest.len() < n {
            return Err(ResponseError::ShortBody {
                have: rest.len(),
                want: n,
            });
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_chunks_or_eof() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab").is_err());
    }
}
