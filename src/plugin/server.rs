//! HTTP/1.1 on a Unix socket, one thread per connection: the request is read and parsed (`httparse`), `POST /<Call>` runs on that same thread through a `Handler`, the reply is written; shutdown drains calls in flight.
//!
//! Why not an async server: a driver call is file-system work and system calls (a
//! Mount+Unmount pair spends most of its time in `open_tree`/`move_mount`/`umount2`), so
//! an async server hands every call to a blocking thread and back, two cross-thread wake-ups
//! per call that cost as much CPU as the call itself (perf: futex wake-ups and scheduler
//! switches were 40 % of the plugin's time at 32 clients). Docker keeps a few keep-alive
//! connections per plugin; one thread each serves them with no hand-off at all.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::plugin::protocol::{ErrResponse, CONTENT_TYPE};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its request headers (an idle keep-alive connection
/// included: one that sends nothing for this long is closed).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request body once the headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for calls in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (a thread each); further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest request line plus headers.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

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
/// Runs on the connection's own thread, so it may do file-system work and block.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, call: &str, body: &[u8]) -> Reply;
}

/// Bind the socket (mode 0660), refusing to steal one another server is answering on.
pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::other(format!(
                "{} exists and is not a socket; move it away",
                socket.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(io::Error::other(format!(
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

/// The open connections, for shutdown: a second handle on each stream, and whether a call is in flight on it.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, (UnixStream, bool)>,
}

/// What the accept loop, the connection threads and [`Stopper`] share.
#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    conns: Mutex<Conns>,
    /// Signalled whenever a connection ends.
    ended: Condvar,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Mark a connection busy (a call in flight) or idle; false if shutdown began and the
    /// connection should end instead of starting a call.
    fn set_busy(&self, id: u64, busy: bool) -> bool {
        let mut c = self.conns();
        if let Some(e) = c.open.get_mut(&id) {
            e.1 = busy;
        }
        !self.stopping()
    }
}

/// Asks a running [`Server`] to stop: from any thread (the plugin's signal handler).
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// Stop accepting, close idle connections at once; calls in flight finish and their
    /// connections close after the reply.
    pub fn stop(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        for (stream, busy) in self.0.conns().open.values() {
            if !*busy {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The plugin's HTTP server on a bound socket.
pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
}

impl Server {
    pub fn new(listener: UnixListener) -> Server {
        Server {
            listener,
            shared: Arc::default(),
        }
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Serve until [`Stopper::stop`]; then stop accepting and drain calls in flight (up to
    /// [`DRAIN_TIMEOUT`]). Blocks the calling thread.
    pub fn serve<H: Handler>(self, handler: Arc<H>) {
        let shared = self.shared;
        while !shared.stopping() {
            if !readable_within(&self.listener, ACCEPT_POLL) {
                continue;
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(%e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if let Err(e) = spawn_connection(&shared, stream, handler.clone()) {
                tracing::warn!(%e, "cannot serve a new connection");
            }
        }
        drop(self.listener);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut conns = shared.conns();
        while !conns.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    calls = conns.open.len(),
                    "calls still in flight after {DRAIN_TIMEOUT:?}; stopping anyway"
                );
                break;
            }
            conns = shared
                .ended
                .wait_timeout(conns, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Does `listener` have a connection waiting, within `wait`?
fn readable_within(listener: &UnixListener, wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(wait.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, ms), Ok(n) if n > 0)
}

/// Register the connection (waiting while [`MAX_CONNECTIONS`] are open) and serve it on its own thread.
fn spawn_connection<H: Handler>(
    shared: &Arc<Shared>,
    stream: UnixStream,
    handler: Arc<H>,
) -> io::Result<()> {
    let id = {
        let mut conns = shared.conns();
        while conns.open.len() >= MAX_CONNECTIONS && !shared.stopping() {
            conns = shared
                .ended
                .wait_timeout(conns, ACCEPT_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(id, (stream.try_clone()?, false));
        id
    };
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("allspark-conn".into())
        .spawn(move || {
            // Unregistered however the thread ends: the registry's clone of the stream would
            // otherwise keep the client waiting for ever.
            let _registered = Registered(&thread_shared, id);
            let mut conn = Connection {
                stream,
                buf: Vec::new(),
            };
            conn.serve(&*handler, &thread_shared, id);
        });
    if let Err(e) = spawned {
        shared.conns().open.remove(&id);
        return Err(e);
    }
    Ok(())
}

/// A connection's entry in the registry, removed on drop.
struct Registered<'a>(&'a Shared, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.conns().open.remove(&self.1);
        self.0.ended.notify_all();
    }
}

/// A parsed request head.
struct Head {
    /// Bytes of the request line and headers.
    len: usize,
    method: String,
    /// The path without its leading `/` and query.
    call: String,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

/// How reading a request ended, when it did not produce one.
enum Ended {
    /// The client closed, stayed silent past the header timeout, or broke the connection.
    Quietly,
    /// Refused with this reply, after which the connection closes.
    Refused(Reply),
}

/// One client connection and the bytes read from it but not yet used.
struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Connection {
    fn serve<H: Handler>(&mut self, handler: &H, shared: &Shared, id: u64) {
        let _ = self.stream.set_write_timeout(Some(BODY_TIMEOUT));
        loop {
            let head = match self.read_head() {
                Ok(h) => h,
                Err(Ended::Quietly) => return,
                Err(Ended::Refused(reply)) => {
                    let _ = self.write_reply(&reply, false);
                    return;
                }
            };
            if !shared.set_busy(id, true) {
                return;
            }
            let (reply, keep) = match self.read_body(&head) {
                Ok(body) => (route(handler, &head, &body), head.keep_alive),
                Err(Ended::Quietly) => return,
                Err(Ended::Refused(reply)) => (reply, false),
            };
            let keep = keep && !shared.stopping();
            if self.write_reply(&reply, keep).is_err() || !keep || !shared.set_busy(id, false) {
                return;
            }
        }
    }

    /// Read until a whole request head is in, within [`HEADER_TIMEOUT`].
    fn read_head(&mut self) -> Result<Head, Ended> {
        let deadline = Instant::now() + HEADER_TIMEOUT;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&self.buf)? {
                    return Ok(head);
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(Ended::Refused(Reply::err(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        format!("request headers are larger than {MAX_HEAD} bytes"),
                    )));
                }
            }
            if self.fill(deadline).map_err(|_| Ended::Quietly)? == 0 {
                return Err(Ended::Quietly);
            }
        }
    }

    /// Read the body the head announced (by length or in chunks), within [`BODY_TIMEOUT`],
    /// and drop the request from the buffer.
    fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, Ended> {
        let deadline = Instant::now() + BODY_TIMEOUT;
        if head.expect_continue {
            let _ = self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        if head.chunked {
            return self.read_chunked(head.len, deadline);
        }
        let len = head.content_length.unwrap_or(0);
        if len > MAX_BODY as u64 {
            return Err(Ended::Refused(too_large()));
        }
        let end = head.len + len as usize;
        while self.buf.len() < end {
            self.fill_body(deadline)?;
        }
        let body = self.buf[head.len..end].to_vec();
        self.buf.drain(..end);
        Ok(body)
    }

    /// A `Transfer-Encoding: chunked` body starting at `pos`: chunks up to [`MAX_BODY`] in
    /// all, then the trailer lines (ignored) up to an empty line.
    fn read_chunked(&mut self, mut pos: usize, deadline: Instant) -> Result<Vec<u8>, Ended> {
        let bad = |m: &str| Ended::Refused(Reply::err(StatusCode::BAD_REQUEST, m.to_string()));
        let mut body = Vec::new();
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(&self.buf[pos..]) {
                    Ok(httparse::Status::Complete(c)) => break c,
                    Ok(httparse::Status::Partial) if self.buf.len() - pos < 1024 => {
                        self.fill_body(deadline)?
                    }
                    _ => return Err(bad("malformed chunk size in the request body")),
                }
            };
            pos += used;
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > MAX_BODY as u64 {
                return Err(Ended::Refused(too_large()));
            }
            let end = pos + size as usize;
            while self.buf.len() < end + 2 {
                self.fill_body(deadline)?;
            }
            if &self.buf[end..end + 2] != b"\r\n" {
                return Err(bad("a chunk of the request body is longer than announced"));
            }
            body.extend_from_slice(&self.buf[pos..end]);
            pos = end + 2;
        }
        // Trailers: lines up to an empty one.
        loop {
            match self.buf[pos..].windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    pos += 2;
                    break;
                }
                Some(n) => pos += n + 2,
                None if self.buf.len() - pos < MAX_HEAD => self.fill_body(deadline)?,
                None => return Err(bad("request trailers are too large")),
            }
        }
        self.buf.drain(..pos);
        Ok(body)
    }

    /// [`fill`](Self::fill) for a body: the client closing ends the connection quietly, the
    /// deadline passing refuses the request with 408.
    fn fill_body(&mut self, deadline: Instant) -> Result<(), Ended> {
        match self.fill(deadline) {
            Ok(0) => Err(Ended::Quietly),
            Ok(_) => Ok(()),
            Err(e) if is_timeout(&e) => Err(Ended::Refused(Reply::err(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            ))),
            Err(_) => Err(Ended::Quietly),
        }
    }

    /// One `read` into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_reply(&mut self, reply: &Reply, keep_alive: bool) -> io::Result<()> {
        let mut out = Vec::with_capacity(reply.body.len() + 160);
        write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n{}\r\n",
            reply.status.as_u16(),
            reply.status.canonical_reason().unwrap_or(""),
            reply.body.len(),
            if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            },
        )?;
        out.extend_from_slice(&reply.body);
        self.stream.write_all(&out)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Parse a request head from the start of `buf`: `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Ended> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Ended::Refused(Reply::err(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} request headers"),
            )))
        }
        Err(e) => {
            return Err(Ended::Refused(Reply::err(
                StatusCode::BAD_REQUEST,
                format!("malformed HTTP request: {e}"),
            )))
        }
    };
    let bad = |m: String| Ended::Refused(Reply::err(StatusCode::BAD_REQUEST, m));
    let mut head = Head {
        len,
        method: req.method.unwrap_or_default().to_string(),
        call: req
            .path
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        content_length: None,
        chunked: false,
        // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes unless told otherwise.
        keep_alive: req.version == Some(1),
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(bad("conflicting Content-Length headers".into()));
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.keep_alive = false;
            } else if v.contains("keep-alive") {
                head.keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(Some(head))
}

/// The reply to a complete request. A handler that panics (a bug) gets a 500 naming the call;
/// the panic itself is in the log (the panic hook prints it).
fn route<H: Handler>(handler: &H, head: &Head, body: &[u8]) -> Reply {
    if head.method != "POST" {
        return Reply::err(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not accepted; every call is a POST", head.method),
        );
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.handle(&head.call, body)
    }))
    .unwrap_or_else(|_| {
        Reply::err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "allspark failed inside {} (a bug: its log has the details); nothing more was done",
                head.call
            ),
        )
    })
}

fn too_large() -> Reply {
    Reply::err(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {MAX_BODY} bytes"),
    )
}

#[cfg(test)]
mod tests;
