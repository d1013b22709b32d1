//! HTTP/1.1 on a Unix socket: accepts connections, routes `POST /<Call>` to a `Handler`, shuts down gracefully.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::plugin::protocol::{ErrResponse, CONTENT_TYPE};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request body once the headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for calls in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A reply: HTTP status and JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(body: Vec<u8>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
        }
    }
    /// An `{"Err": ...}` reply.
    pub fn err(status: StatusCode, message: impl Into<String>) -> Reply {
        let body = serde_json::to_vec(&ErrResponse {
            err: message.into(),
        })
        .unwrap_or_default();
        Reply { status, body }
    }
}

/// The protocol seam: a call name (`Plugin.Activate`, `VolumeDriver.Create`, …) and its body in, a reply out.
/// Runs on a blocking thread, so it may do file-system work.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, call: &str, body: &[u8]) -> Reply;
}

async fn serve_request<H: Handler>(
    handler: Arc<H>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = if req.method() != Method::POST {
        Reply::err(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not accepted; every call is a POST", req.method()),
        )
    } else if hyper::body::Body::size_hint(req.body()).lower() > MAX_BODY as u64 {
        too_large()
    } else {
        let call = req.uri().path().trim_start_matches('/').to_string();
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Err(_) => Reply::err(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            ),
            Ok(Ok(collected)) => {
                let body = collected.to_bytes();
                match tokio::task::spawn_blocking(move || handler.handle(&call, &body)).await {
                    Ok(r) => r,
                    Err(e) => Reply::err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("internal error: {e}"),
                    ),
                }
            }
            Ok(Err(e)) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    too_large()
                } else {
                    Reply::err(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    )
                }
            }
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    Ok(resp)
}

fn too_large() -> Reply {
    Reply::err(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {MAX_BODY} bytes"),
    )
}

/// Bind the socket (mode 0660), refusing to steal one another server is answering on.
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; move it away",
                socket.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(std::io::Error::other(format!(
                "another process is already serving {}; stop it first",
                socket.display()
            )));
        }
        std::fs::remove_file(socket)?;
    }
    // Bound inside a fresh 0700 directory, set to 0660 there, then renamed into place: the
    // socket is never reachable with the wider mode bind() gives it under the umask.
    let dir = socket.parent().unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".allspark-bind-")
        .tempdir_in(dir)?;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))?;
    let staged = private.path().join("sock");
    let listener = UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
    std::fs::rename(&staged, socket)?;
    Ok(listener)
}

/// Serve until `shutdown` turns true; then stop accepting and drain calls in flight.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(%e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let mut stop = shutdown.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| serve_request(handler.clone(), req));
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        res = conn.as_mut() => {
                            if let Err(e) = res { tracing::debug!(%e, "connection ended with an error"); }
                        }
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("calls still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}
