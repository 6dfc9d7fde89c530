//! The HTTP endpoint of `ami listen`: Prometheus metrics, a health check, the status
//! as JSON and a status page, served by hyper's HTTP/1 server on a current-thread tokio
//! runtime that runs on the endpoint's own thread.
//!
//! Routes: `GET /metrics` (Prometheus text), `GET /healthz` (200 when there is at
//! least one server and all are healthy, else 503), `GET /status` (the [`Status`] as
//! JSON), `GET /` (a self-contained HTML page that polls `/status` every second). `HEAD`
//! works on each of them; anything else is 404, other methods 405.
//!
//! The listen loop renders a [`Snapshot`] about once a second and hands it over with
//! [`HttpEndpoint::publish`], which renders the bodies and swaps one `Arc` under a lock
//! that is held for nothing else: the loop never waits for a client, and a request
//! clones an `Arc` and serves the prepared bytes without copying them.
//!
//! # What is bounded, and how
//! Every number is in [`Limits`]; the defaults are [`Limits::DEFAULT`].
//! - **Threads**: one, whatever the number of connections. Connections are tasks on
//!   the endpoint thread's current-thread runtime.
//! - **Connections**: at most `max_connections` (512) at once. A connection accepted at
//!   the cap makes room by closing (with a reset) the oldest connection that has no
//!   request in progress (idle, or still sending its request head; a request is in
//!   progress from its head until the last 64 KiB piece of its response is handed to
//!   hyper, so a response that sits in kernel buffers no longer counts); if every
//!   connection is in the middle of a request, the new one is closed at once instead
//!   and counted as refused. Both are counted ([`HttpStats`]). So idle or half-open
//!   connections, however many, cannot lock a scraper out.
//! - **Request head size**: `max_header_bytes` (16 KiB; hyper's `max_header_size`,
//!   with its read buffer capped at `max_buf_size` = 2 × that): an endless header gets
//!   431 and the connection is closed; it never buffers more than that.
//! - **Header read time and keep-alive idle time**: `header_read_timeout` (5 s). hyper
//!   starts this timer whenever it waits for a request head, so it bounds a slow
//!   header and also the idle time between two requests of a kept-alive connection.
//! - **Connection lifetime**: `connection_lifetime` (30 s) from accept, whatever the
//!   connection is doing; then it is reset (`SO_LINGER` 0, so no kernel buffer is kept
//!   for it either). A client reading a large body 1 byte per second holds a slot for
//!   no longer than that.
//! - **Accept errors** (e.g. `EMFILE`, too many open files): logged (at most every
//!   few seconds), then the accept loop sleeps `accept_backoff` (100 ms) and goes on;
//!   the server never stops because of them.
//!
//! Dropping the [`HttpEndpoint`] stops the runtime, which closes every connection, and
//! joins the thread.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::CliError;
use crate::worker::spawn_thread;

/// The Prometheus text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of `/status` and `/healthz`.
const JSON_CONTENT_TYPE: &str = "application/json";
/// The status page, one self-contained HTML document.
const STATUS_PAGE: &str = include_str!("status.html");
/// The listen backlog of the endpoint's socket.
const BACKLOG: u32 = 1024;
/// The least time between two log lines about failed accepts.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What the endpoint serves, rendered by the listen loop about once a second.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The Prometheus text served on `/metrics`.
    pub metrics: String,
    /// The servers' status, served on `/status` and `/healthz` and shown on `/`.
    pub status: Status,
}

/// The status of every server, as `/status` serves it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    /// When the snapshot was rendered, in Unix seconds.
    pub generated_at: f64,
    /// One entry per configured server, in the order to show them.
    pub servers: Vec<ServerStatus>,
}

/// One server's status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerStatus {
    /// The server's key in the config.
    pub server: String,
    /// Its health in words, e.g. `healthy`, `reconnecting`, `circuit_open`.
    pub health: String,
    /// Whether it counts as healthy for `/healthz`.
    pub healthy: bool,
    /// Events received since start.
    pub events_total: u64,
    /// Events per second lately.
    pub events_per_second: f64,
    /// Events dropped since start, every reason (`outlet_slow`, `memory_limit`,
    /// `queue_full`).
    pub dropped_total: u64,
    /// Actions sent and not yet completed.
    pub pending_actions: usize,
    /// Reconnections since start.
    pub reconnects: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// The endpoint's bounds (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Bytes of request line and headers accepted.
    pub max_header_bytes: usize,
    /// Time to receive a whole request head; also the keep-alive idle time.
    pub header_read_timeout: Duration,
    /// Time a connection may live from accept, whatever it is doing.
    pub connection_lifetime: Duration,
    /// Pause after a failed accept.
    pub accept_backoff: Duration,
}

impl Limits {
    /// The limits [`HttpEndpoint::start`] uses.
    pub const DEFAULT: Limits = Limits {
        max_connections: 512,
        max_header_bytes: 16 * 1024,
        header_read_timeout: Duration::from_secs(5),
        connection_lifetime: Duration::from_secs(30),
        accept_backoff: Duration::from_millis(100),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Counters of the endpoint's connections, from [`HttpEndpoint::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(dead_code)] // Read by the tests; the listen loop may export them.
pub(crate) struct HttpStats {
    /// Connections open now.
    pub active: usize,
    /// Connections accepted since start (refused ones included).
    pub accepted: u64,
    /// Connections closed at once because every slot had a request in progress.
    pub refused: u64,
    /// Idle connections closed to make room for a new one at the cap.
    pub evicted: u64,
    /// Connections reset because they reached the connection lifetime.
    pub expired: u64,
    /// Failed accepts (e.g. too many open files).
    pub accept_errors: u64,
}

/// A running HTTP endpoint: binds on [`start`](HttpEndpoint::start), serves on its own
/// thread until dropped.
pub struct HttpEndpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpEndpoint {
    /// Binds and starts serving on a thread of its own; an empty Snapshot until the
    /// first publish.
    pub fn start(addr: SocketAddr) -> Result<HttpEndpoint, CliError> {
        HttpEndpoint::start_with(addr, Limits::DEFAULT)
    }

    /// [`start`](HttpEndpoint::start) with other limits.
    pub(crate) fn start_with(addr: SocketAddr, limits: Limits) -> Result<HttpEndpoint, CliError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CliError::io("cannot start the HTTP endpoint's runtime", e))?;
        let listener = {
            // The socket registers with the runtime's reactor, so bind inside it.
            let _guard = runtime.enter();
            bind(addr).map_err(|e| CliError::io(format!("cannot serve HTTP on {addr}"), e))?
        };
        let addr = listener
            .local_addr()
            .map_err(|e| CliError::io("cannot read the HTTP endpoint's address", e))?;
        let shared = Arc::new(Shared {
            current: Mutex::new(Arc::new(Prepared::new(&Snapshot::default()))),
            counters: Counters::default(),
            connections: Mutex::new(Connections::default()),
            limits,
        });
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let shared = shared.clone();
            spawn_thread("ami-http", move || {
                runtime.block_on(accept_loop(listener, shared, stopped));
                // Dropping the runtime drops every connection task, closing them.
                drop(runtime);
            })
            .map_err(|e| CliError::io("cannot start the HTTP endpoint's thread", e))?
        };
        tracing::info!(%addr, "serving HTTP: /metrics, /healthz, /status and a status page on /");
        Ok(HttpEndpoint {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the snapshot; never blocks on clients (a lock held only to swap an Arc).
    pub fn publish(&self, snapshot: Snapshot) {
        let prepared = Arc::new(Prepared::new(&snapshot));
        let old = std::mem::replace(&mut *lock(&self.shared.current), prepared);
        // The old bodies are freed here (or by the last request still serving them),
        // outside the lock.
        drop(old);
    }

    /// The endpoint's connection counters.
    #[allow(dead_code)] // Used by the tests; the listen loop may export them.
    pub(crate) fn stats(&self) -> HttpStats {
        let c = &self.shared.counters;
        HttpStats {
            active: lock(&self.shared.connections).open.len(),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            accept_errors: c.accept_errors.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for HttpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds a listening socket with a backlog of [`BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What the server thread and the publisher share.
#[derive(Debug)]
struct Shared {
    /// The bodies to serve; the lock is held only to clone or swap the `Arc`.
    current: Mutex<Arc<Prepared>>,
    counters: Counters,
    connections: Mutex<Connections>,
    limits: Limits,
}

/// Counters behind [`HttpStats`].
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    accept_errors: AtomicU64,
}

/// The open connections, oldest first (ids grow).
#[derive(Debug, Default)]
struct Connections {
    next_id: u64,
    open: BTreeMap<u64, OpenConnection>,
}

/// One open connection, as the accept loop sees it.
#[derive(Debug)]
struct OpenConnection {
    /// Whether a request is in progress (from its head until its response body is
    /// written).
    busy: Arc<AtomicBool>,
    /// Closes the connection (with a reset) to make room.
    evict: Option<oneshot::Sender<()>>,
}

/// The bodies of one snapshot, rendered once by [`HttpEndpoint::publish`].
#[derive(Debug)]
struct Prepared {
    metrics: Bytes,
    status: Bytes,
    healthy: bool,
    healthz: Bytes,
}

impl Prepared {
    fn new(snapshot: &Snapshot) -> Prepared {
        let servers = &snapshot.status.servers;
        let healthy = !servers.is_empty() && servers.iter().all(|s| s.healthy);
        let by_server: serde_json::Map<String, serde_json::Value> = servers
            .iter()
            .map(|s| (s.server.clone(), s.health.clone().into()))
            .collect();
        let healthz = serde_json::json!({ "healthy": healthy, "servers": by_server });
        Prepared {
            metrics: Bytes::from(snapshot.metrics.clone()),
            status: json_bytes(&snapshot.status),
            healthy,
            healthz: json_bytes(&healthz),
        }
    }
}

/// `value` as JSON and a newline.
fn json_bytes(value: &impl serde::Serialize) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        // Only a map with non-string keys can fail, and these have none.
        tracing::error!(error = %e, "cannot render JSON for the HTTP endpoint");
        b"null".to_vec()
    });
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections until `stopped` fires (or its sender is dropped).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut last_error_log: Option<Instant> = None;
    let mut unlogged_errors = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => admit(stream, &shared),
            Err(error) => {
                shared
                    .counters
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                unlogged_errors += 1;
                if last_error_log.is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_INTERVAL) {
                    tracing::warn!(
                        %error,
                        failures = unlogged_errors,
                        "HTTP endpoint cannot accept a connection; retrying"
                    );
                    last_error_log = Some(Instant::now());
                    unlogged_errors = 0;
                }
                // EMFILE and the like leave the connection in the backlog: without a
                // pause the loop would spin on it.
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(shared.limits.accept_backoff) => {}
                }
            }
        }
    }
}

/// Registers a new connection and spawns its task, making room at the cap.
fn admit(stream: TcpStream, shared: &Arc<Shared>) {
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let busy = Arc::new(AtomicBool::new(false));
    let (evict, evicted) = oneshot::channel();
    let id = {
        let mut connections = lock(&shared.connections);
        if connections.open.len() >= shared.limits.max_connections {
            let idle = connections
                .open
                .iter()
                .find(|(_, c)| !c.busy.load(Ordering::Relaxed))
                .map(|(&id, _)| id);
            match idle.and_then(|id| connections.open.remove(&id)) {
                Some(mut oldest_idle) => {
                    shared.counters.evicted.fetch_add(1, Ordering::Relaxed);
                    if let Some(evict) = oldest_idle.evict.take() {
                        let _ = evict.send(());
                    }
                }
                None => {
                    shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                    drop(connections);
                    reset(stream);
                    return;
                }
            }
        }
        let id = connections.next_id;
        connections.next_id += 1;
        connections.open.insert(
            id,
            OpenConnection {
                busy: busy.clone(),
                evict: Some(evict),
            },
        );
        id
    };
    let _ = stream.set_nodelay(true);
    tokio::spawn(serve_connection(stream, id, busy, evicted, shared.clone()));
}

/// Closes `stream` with a reset, dropping whatever the kernel still buffers for it.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Removes a connection from [`Connections`] when its task ends, however it ends.
struct Registration {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.connections).open.remove(&self.id);
    }
}

/// Serves one connection until it ends, reaches its lifetime or is evicted.
async fn serve_connection(
    stream: TcpStream,
    id: u64,
    busy: Arc<AtomicBool>,
    mut evicted: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    let _registration = Registration {
        id,
        shared: shared.clone(),
    };
    let limits = &shared.limits;
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            busy.store(true, Ordering::Relaxed);
            let response = route(&shared, &request, BusyGuard(busy.clone()));
            std::future::ready(Ok::<_, Infallible>(response))
        })
    };
    let mut connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_header_size(limits.max_header_bytes)
        .max_buf_size((2 * limits.max_header_bytes).max(8192))
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let lifetime = tokio::time::sleep(limits.connection_lifetime);
    tokio::select! {
        result = &mut connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }
        () = lifetime => {
            shared.counters.expired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("HTTP connection reached its lifetime; reset");
            reset(connection.into_parts().io.into_inner());
        }
        _ = &mut evicted => {
            reset(connection.into_parts().io.into_inner());
        }
    }
}

/// Marks its connection idle again when dropped: when the last piece of the response
/// body is taken, or when the body is dropped with its connection.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The most a response body hands hyper at once: hyper asks for the next piece only
/// when it has written the last, so a connection stays busy (not evictable) until its
/// response is nearly all in the kernel's hands.
const BODY_PIECE: usize = 64 * 1024;

/// A response body, in pieces of [`BODY_PIECE`] (slices of one `Bytes`, not copies),
/// that holds its connection's [`BusyGuard`] until the last piece is taken.
struct GuardedBody {
    rest: Bytes,
    busy: Option<BusyGuard>,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.busy = None;
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(BODY_PIECE);
        let piece = self.rest.split_to(n);
        if self.rest.is_empty() {
            self.busy = None;
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// The response to one request.
fn route(shared: &Shared, request: &Request<Incoming>, busy: BusyGuard) -> Response<GuardedBody> {
    let path = request.uri().path();
    let known = matches!(path, "/" | "/metrics" | "/healthz" | "/status");
    if !known {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: try /, /metrics, /healthz or /status\n"),
            busy,
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed: use GET\n"),
            busy,
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let current = lock(&shared.current).clone();
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            current.metrics.clone(),
            busy,
        ),
        "/status" => respond(
            StatusCode::OK,
            JSON_CONTENT_TYPE,
            current.status.clone(),
            busy,
        ),
        "/healthz" => {
            let status = if current.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, JSON_CONTENT_TYPE, current.healthz.clone(), busy)
        }
        _ => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(STATUS_PAGE.as_bytes()),
            busy,
        ),
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    busy: BusyGuard,
) -> Response<GuardedBody> {
    let mut response = Response::new(GuardedBody {
        rest: body,
        busy: Some(busy),
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{self, Read, Write};
    use std::net::TcpStream as StdStream;
    use std::process::{Command, Stdio};
    use std::sync::MutexGuard;

    /// The tests measure the whole process (RSS, threads, descriptors): one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(limits: Limits) -> HttpEndpoint {
        HttpEndpoint::start_with("127.0.0.1:0".parse().unwrap(), limits).expect("endpoint starts")
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).expect("UTF-8 body")
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    /// Sends `head` (a whole request head) and reads the reply up to the close.
    fn request(addr: SocketAddr, head: &str) -> io::Result<Reply> {
        let mut stream = StdStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(head.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("no reply head in {} bytes", raw.len())))?;
        let head = std::str::from_utf8(&raw[..end]).map_err(io::Error::other)?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(Reply {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        })
    }

    fn call(addr: SocketAddr, method: &str, path: &str) -> Reply {
        request(
            addr,
            &format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(addr: SocketAddr, path: &str) -> Reply {
        call(addr, "GET", path)
    }

    /// A number field of /proc/self/status (`VmRSS` in kB, `Threads`).
    fn proc_status(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
    }

    /// Threads of this process whose name starts with `ami-http`.
    fn endpoint_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("ami-http"))
            .count()
    }

    fn open_fds() -> u64 {
        std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
    }

    /// Polls `condition` until it holds, failing with `what` after `timeout`.
    fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn server(key: &str, health: &str, healthy: bool, events_total: u64) -> ServerStatus {
        ServerStatus {
            server: key.into(),
            health: health.into(),
            healthy,
            events_total,
            events_per_second: 12.5,
            dropped_total: 3,
            pending_actions: 2,
            reconnects: 1,
            last_error: (!healthy).then(|| "connection refused".into()),
        }
    }

    fn snapshot(metrics: &str, servers: Vec<ServerStatus>) -> Snapshot {
        Snapshot {
            metrics: metrics.into(),
            status: Status {
                generated_at: 1_700_000_000.5,
                servers,
            },
        }
    }

    #[test]
    fn routes_serve_the_published_snapshot() {
        let _serial = serial();
        let endpoint = start(Limits::DEFAULT);
        let addr = endpoint.addr();
        assert_ne!(addr.port(), 0);

        // Before the first publish: empty metrics, no servers, so not healthy.
        let metrics = get(addr, "/metrics");
        assert_eq!((metrics.status, metrics.text()), (200, ""));
        let healthz = get(addr, "/healthz");
        assert_eq!(healthz.status, 503);
        assert_eq!(
            healthz.json(),
            serde_json::json!({"healthy": false, "servers": {}})
        );
        assert_eq!(
            get(addr, "/status").json(),
            serde_json::json!({"generated_at": 0.0, "servers": []})
        );

        endpoint.publish(snapshot(
            "ami_events_total{server=\"a\"} 5\n",
            vec![
                server("a", "healthy", true, 5),
                server("b", "healthy", true, 9),
            ],
        ));
        let metrics = get(addr, "/metrics");
        assert_eq!(metrics.status, 200);
        assert_eq!(metrics.text(), "ami_events_total{server=\"a\"} 5\n");
        assert_eq!(
            metrics.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let status = get(addr, "/status");
        assert_eq!(status.status, 200);
        assert_eq!(status.header("content-type"), Some("application/json"));
        let status = status.json();
        assert_eq!(status["generated_at"], 1_700_000_000.5);
        let a = &status["servers"][0];
        assert_eq!(a["server"], "a");
        assert_eq!(a["health"], "healthy");
        assert_eq!(a["healthy"], true);
        assert_eq!(a["events_total"], 5);
        assert_eq!(a["events_per_second"], 12.5);
        assert_eq!(a["dropped_total"], 3);
        assert_eq!(a["pending_actions"], 2);
        assert_eq!(a["reconnects"], 1);
        assert_eq!(a["last_error"], serde_json::Value::Null);
        assert_eq!(status["servers"][1]["server"], "b");
        let healthz = get(addr, "/healthz");
        assert_eq!(healthz.status, 200);
        assert_eq!(
            healthz.text(),
            "{\"healthy\":true,\"servers\":{\"a\":\"healthy\",\"b\":\"healthy\"}}\n"
        );

        // One server not healthy: 503, and publish replaced everything served.
        endpoint.publish(snapshot(
            "ami_events_total{server=\"a\"} 6\n",
            vec![
                server("a", "healthy", true, 6),
                server("b", "reconnecting", false, 9),
            ],
        ));
        assert_eq!(
            get(addr, "/metrics").text(),
            "ami_events_total{server=\"a\"} 6\n"
        );
        let healthz = get(addr, "/healthz");
        assert_eq!(healthz.status, 503);
        assert_eq!(
            healthz.json(),
            serde_json::json!({"healthy": false, "servers": {"a": "healthy", "b": "reconnecting"}})
        );
        let status = get(addr, "/status").json();
        assert_eq!(status["servers"][1]["last_error"], "connection refused");
        assert_eq!(status["servers"][0]["events_total"], 6);

        // The page: HTML, self-contained.
        let page = get(addr, "/");
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page.text().contains("fetch(\"/status\""));
        assert!(!page.text().contains("http://") && !page.text().contains("https://"));

        // HEAD: the headers without the body.
        let head = call(addr, "HEAD", "/metrics");
        assert_eq!((head.status, head.body.len()), (200, 0));

        let missing = get(addr, "/nope");
        assert_eq!(missing.status, 404);
        let post = call(addr, "POST", "/metrics");
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        assert_eq!(call(addr, "DELETE", "/").status, 405);

        // Keep-alive: two requests on one connection.
        let mut stream = StdStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 2, "{raw}");
        assert!(raw.contains("HTTP/1.1 503"), "{raw}");
    }

    /// Writes an endless header on a new connection; returns the bytes written before
    /// the server cut it, or panics if it took more than `give_up` bytes.
    fn endless_header(addr: SocketAddr, give_up: usize) -> usize {
        let mut stream = StdStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let line = format!("X-Flood: {}\r\n", "a".repeat(1000));
        let chunk = line.repeat(64);
        let mut sent = 0;
        while sent < give_up {
            match stream.write(chunk.as_bytes()) {
                Ok(0) | Err(_) => return sent,
                Ok(n) => sent += n,
            }
        }
        panic!("an endless header was not cut after {sent} bytes");
    }

    #[test]
    fn an_endless_header_is_cut_without_growing_memory() {
        let _serial = serial();
        let endpoint = start(Limits::DEFAULT);
        let addr = endpoint.addr();
        endpoint.publish(snapshot("up 1\n", vec![]));

        // One client: cut, and answered 431 if it reads.
        let mut stream = StdStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let _ = stream.write_all(format!("X-Flood: {}\r\n", "a".repeat(20_000)).as_bytes());
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
            "a 20 kB header got {reply:?}"
        );

        // Then floods, megabytes each, from two threads at once, while /metrics is
        // asked again and again.
        const TOTAL: usize = 64 << 20;
        let rss_before = proc_status("VmRSS");
        let done = Arc::new(AtomicBool::new(false));
        let flooders: Vec<_> = (0..2)
            .map(|_| {
                let done = done.clone();
                std::thread::spawn(move || {
                    let (mut sent, mut most, mut connections) = (0, 0, 0);
                    while sent < TOTAL / 2 {
                        let n = endless_header(addr, 32 << 20);
                        sent += n;
                        most = most.max(n);
                        connections += 1;
                    }
                    done.store(true, Ordering::Relaxed);
                    (sent, most, connections)
                })
            })
            .collect();
        let (mut answered, mut slowest, mut rss_max) = (0, Duration::ZERO, rss_before);
        while !done.load(Ordering::Relaxed) || answered == 0 {
            let asked = Instant::now();
            assert_eq!(get(addr, "/metrics").text(), "up 1\n");
            slowest = slowest.max(asked.elapsed());
            answered += 1;
            rss_max = rss_max.max(proc_status("VmRSS"));
        }
        let mut most_before_cut = 0;
        let mut connections = 0;
        for flooder in flooders {
            let (_, most, n) = flooder.join().unwrap();
            most_before_cut = most_before_cut.max(most);
            connections += n;
        }
        rss_max = rss_max.max(proc_status("VmRSS"));
        let growth_kib = rss_max.saturating_sub(rss_before);
        eprintln!(
            "endless header: {} MiB sent over {connections} connections, at most {most_before_cut} \
             bytes before a cut; /metrics answered {answered} times meanwhile, slowest {slowest:?}; \
             RSS {rss_before} kB -> max {rss_max} kB (+{growth_kib} KiB)",
            TOTAL >> 20
        );
        assert!(growth_kib < 4 * 1024, "RSS grew by {growth_kib} KiB");
        assert!(
            slowest < Duration::from_secs(5),
            "a scrape took {slowest:?}"
        );
    }

    #[test]
    fn slow_or_idle_request_heads_are_cut_by_the_header_timeout() {
        let _serial = serial();
        let timeout = Duration::from_millis(1000);
        let endpoint = start(Limits {
            header_read_timeout: timeout,
            connection_lifetime: Duration::from_secs(120),
            ..Limits::DEFAULT
        });
        let addr = endpoint.addr();

        // A header one byte every 50 ms never completes in time.
        let mut slow = StdStream::connect(addr).unwrap();
        let started = Instant::now();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
            .unwrap();
        let cut = loop {
            if slow.write_all(b"a").is_err() {
                break started.elapsed();
            }
            // The server closing shows as a write error after it sends FIN; peek too.
            slow.set_nonblocking(true).unwrap();
            let mut byte = [0];
            let closed = matches!(slow.peek(&mut byte), Ok(0));
            slow.set_nonblocking(false).unwrap();
            if closed {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < timeout * 10,
                "a slow header was not cut"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Idle: connected and silent; and idle after one request (keep-alive).
        let mut idle = StdStream::connect(addr).unwrap();
        let idle_started = Instant::now();
        idle.set_read_timeout(Some(timeout * 10)).unwrap();
        assert_eq!(
            idle.read(&mut [0; 64]).unwrap(),
            0,
            "an idle connection is closed"
        );
        let idle_cut = idle_started.elapsed();
        let mut kept = StdStream::connect(addr).unwrap();
        kept.set_read_timeout(Some(timeout * 10)).unwrap();
        kept.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let kept_started = Instant::now();
        let mut reply = Vec::new();
        let _ = kept.read_to_end(&mut reply);
        let kept_cut = kept_started.elapsed();
        assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
        eprintln!(
            "header timeout {timeout:?}: slow header cut after {cut:?}, idle connection after \
             {idle_cut:?}, kept-alive connection closed {kept_cut:?} after its reply"
        );
        for took in [cut, idle_cut, kept_cut] {
            assert!(took >= timeout - Duration::from_millis(100), "{took:?}");
            assert!(took < timeout + Duration::from_secs(5), "{took:?}");
        }
    }

    fn raise_fd_limit() -> (libc::rlimit, u64) {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls on a valid struct.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
            let raised = libc::rlimit {
                rlim_cur: old.rlim_max,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &raised), 0);
        }
        (old, old.rlim_max)
    }

    fn set_fd_limit(limit: libc::rlimit) {
        // SAFETY: a plain system call on a valid struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    }

    #[test]
    fn many_idle_connections_neither_add_threads_nor_lock_scrapers_out() {
        let _serial = serial();
        let (old_limit, limit) = raise_fd_limit();
        let endpoint = start(Limits::DEFAULT);
        let addr = endpoint.addr();
        endpoint.publish(snapshot("up 1\n", vec![]));
        let cap = Limits::DEFAULT.max_connections as u64;
        // Client sockets plus the server's (at most the cap), with room to spare.
        let count = 10_000.min(limit.saturating_sub(open_fds() + cap + 200)) as usize;
        assert!(
            count > 2 * cap as usize,
            "the fd limit {limit} is too low for this test"
        );
        // The thread names itself once it runs.
        wait_until(Duration::from_secs(10), "the endpoint thread runs", || {
            endpoint_threads() == 1
        });
        let threads_before = proc_status("Threads");

        let opened = Instant::now();
        let idle: Vec<StdStream> = (0..count)
            .map(|i| StdStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
            .collect();
        let opened = opened.elapsed();
        wait_until(
            Duration::from_secs(30),
            "every connection is accepted",
            || endpoint.stats().accepted >= count as u64,
        );
        let threads_after = proc_status("Threads");
        let stats = endpoint.stats();

        let asked = Instant::now();
        let reply = get(addr, "/metrics");
        let answered = asked.elapsed();
        assert_eq!((reply.status, reply.text()), (200, "up 1\n"));
        let fds_now = open_fds();
        eprintln!(
            "{count} idle connections opened in {opened:?}; threads {threads_before} -> \
             {threads_after} (endpoint threads: {}); {stats:?}; a fresh /metrics answered in \
             {answered:?}; {fds_now} fds open",
            endpoint_threads()
        );
        assert_eq!(endpoint_threads(), 1);
        // Slack for the test harness starting a thread for another test meanwhile.
        assert!(
            threads_after <= threads_before + 4,
            "{threads_before} -> {threads_after}"
        );
        assert!(stats.active <= cap as usize, "{stats:?}");
        assert!(stats.evicted >= count as u64 - cap, "{stats:?}");
        assert!(
            answered < Duration::from_secs(2),
            "a fresh scrape took {answered:?}"
        );
        drop(idle);
        drop(endpoint);
        set_fd_limit(old_limit);
    }

    #[test]
    fn a_slow_reader_is_cut_by_the_connection_lifetime() {
        let _serial = serial();
        let lifetime = Duration::from_secs(2);
        let endpoint = start(Limits {
            connection_lifetime: lifetime,
            header_read_timeout: Duration::from_secs(60),
            ..Limits::DEFAULT
        });
        let addr = endpoint.addr();
        let line =
            "ami_filler_metric{server=\"x\",pad=\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"} 1\n";
        let big = line.repeat((4 << 20) / line.len() + 1);
        endpoint.publish(snapshot(&big, vec![server("a", "healthy", true, 1)]));

        let slow = std::thread::spawn(move || {
            let mut stream = StdStream::connect(addr).unwrap();
            let small: libc::c_int = 4096;
            // SAFETY: setsockopt on an open socket with a valid int.
            unsafe {
                use std::os::fd::AsRawFd;
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&raw const small).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let started = Instant::now();
            let mut read = 0;
            loop {
                match stream.read(&mut [0]) {
                    Ok(1) => read += 1,
                    Ok(_) => return (started.elapsed(), read, "EOF".to_owned()),
                    Err(e) => return (started.elapsed(), read, e.to_string()),
                }
                // Linux still hands out the bytes received before a reset, so look
                // for the reset itself too.
                if let Some(e) = stream.take_error().unwrap() {
                    return (started.elapsed(), read, e.to_string());
                }
                assert!(
                    started.elapsed() < lifetime * 10,
                    "a slow reader was not cut"
                );
                // Simulated slowness (1 byte per second), not synchronisation.
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        wait_until(
            Duration::from_secs(10),
            "the slow reader is connected",
            || endpoint.stats().active >= 1,
        );
        // Others are served meanwhile, the big body included.
        let mut served = 0;
        let mut slowest = Duration::ZERO;
        while !slow.is_finished() {
            let asked = Instant::now();
            assert_eq!(get(addr, "/status").status, 200);
            assert_eq!(get(addr, "/metrics").body.len(), big.len());
            slowest = slowest.max(asked.elapsed());
            served += 1;
        }
        let stats = endpoint.stats();
        let (cut_after, bytes_read, how) = slow
            .join()
            .unwrap_or_else(|_| panic!("the slow reader failed; {stats:?}"));
        let stats = endpoint.stats();
        eprintln!(
            "lifetime {lifetime:?}: the slow reader read {bytes_read} bytes of {} and was cut \
             after {cut_after:?} ({how}); {served} rounds of /status + 4 MiB /metrics served \
             meanwhile, slowest {slowest:?}; {stats:?}",
            big.len()
        );
        assert!(served > 0);
        assert_eq!(stats.expired, 1, "{stats:?}");
        assert!(
            cut_after >= lifetime - Duration::from_millis(200),
            "{cut_after:?}"
        );
        assert!(
            cut_after < lifetime + Duration::from_secs(5),
            "{cut_after:?}"
        );
        assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    }

    #[test]
    fn at_the_cap_with_every_slot_busy_a_new_connection_is_refused() {
        let _serial = serial();
        let endpoint = start(Limits {
            max_connections: 2,
            ..Limits::DEFAULT
        });
        let addr = endpoint.addr();
        endpoint.publish(snapshot(&"x".repeat(32 << 20), vec![]));
        // Two clients ask for 32 MiB and read none of it: both slots stay busy.
        let busy: Vec<StdStream> = (0..2)
            .map(|_| {
                let mut s = StdStream::connect(addr).unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        wait_until(
            Duration::from_secs(10),
            "both requests are in progress",
            || {
                let open = lock(&endpoint.shared.connections);
                open.open.len() == 2 && open.open.values().all(|c| c.busy.load(Ordering::Relaxed))
            },
        );
        let mut third = StdStream::connect(addr).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = third.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        let closed = third.read(&mut [0; 16]);
        assert!(
            matches!(closed, Ok(0) | Err(_))
                && !matches!(&closed, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the third connection was served: {closed:?}"
        );
        let stats = endpoint.stats();
        eprintln!("cap 2, both busy: the third connection got {closed:?}; {stats:?}");
        assert_eq!(
            (stats.refused, stats.evicted, stats.active),
            (1, 0, 2),
            "{stats:?}"
        );
        drop(busy);
    }

    /// The child half of [`accept_errors_do_not_stop_the_server`]: it lowers the
    /// process's descriptor limit, which no other test may share.
    #[test]
    #[ignore = "run in a child process by accept_errors_do_not_stop_the_server"]
    fn accept_errors_child() {
        let endpoint = start(Limits {
            header_read_timeout: Duration::from_secs(60),
            ..Limits::DEFAULT
        });
        let addr = endpoint.addr();
        endpoint.publish(snapshot("up 1\n", vec![]));
        let (old, _) = raise_fd_limit();
        let reserve = std::fs::File::open("/dev/null").unwrap();
        set_fd_limit(libc::rlimit {
            rlim_cur: open_fds() + 16,
            rlim_max: old.rlim_max,
        });
        // Use up every descriptor with connections (client and server ends).
        let mut held = Vec::new();
        loop {
            match StdStream::connect(addr) {
                Ok(stream) => held.push(stream),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("connect: {e}"),
            }
            assert!(held.len() < 100, "the lowered limit did not apply");
        }
        // Free one: the client end takes it, so the server's accept has none.
        drop(reserve);
        let last = StdStream::connect(addr).expect("connect with the freed descriptor");
        wait_until(Duration::from_secs(10), "an accept fails", || {
            endpoint.stats().accept_errors > 0
        });
        let failures = endpoint.stats().accept_errors;
        set_fd_limit(old);
        let reply = get(addr, "/metrics");
        assert_eq!((reply.status, reply.text()), (200, "up 1\n"));
        eprintln!(
            "CHILD-OK: {} connections filled the limit; {failures} failed accepts (EMFILE), then \
             /metrics answered; {:?}",
            held.len(),
            endpoint.stats()
        );
        drop((held, last));
    }

    #[test]
    fn accept_errors_do_not_stop_the_server() {
        let _serial = serial();
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "http::tests::accept_errors_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stderr.contains("CHILD-OK"),
            "the child failed: {}\n{stdout}\n{stderr}",
            output.status
        );
        eprintln!(
            "{}",
            stderr.lines().find(|l| l.contains("CHILD-OK")).unwrap()
        );
    }

    /// Loads `url` in headless Chromium and returns the DOM after its scripts ran.
    fn chromium_dom(url: &str) -> String {
        let profile = std::env::temp_dir().join(format!(
            "ami-http-chromium-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ u128::from(rand_tag())
        ));
        let spawned = Command::new("chromium")
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => panic!(
                "cannot run `chromium` ({e}): this test needs Debian's chromium package on PATH \
                 (scripts/test.sh installs it with apt-get)"
            ),
        };
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (dom, log) = (out.join().unwrap(), err.join().unwrap());
        let _ = std::fs::remove_dir_all(&profile);
        assert!(status.success(), "chromium failed ({status}): {log}");
        dom
    }

    fn rand_tag() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(0u8)
    }

    /// The `<tr data-server="KEY">` row of a dumped DOM.
    fn row<'a>(dom: &'a str, key: &str) -> &'a str {
        let start = dom
            .find(&format!("data-server=\"{key}\""))
            .unwrap_or_else(|| panic!("no row for {key} in the page:\n{dom}"));
        let end = dom[start..].find("</tr>").expect("the row ends") + start;
        &dom[start..end]
    }

    #[test]
    fn a_browser_renders_the_status_page() {
        let _serial = serial();
        let endpoint = start(Limits::DEFAULT);
        let url = format!("http://{}/", endpoint.addr());
        let mut b = server("pbx-b", "reconnecting", false, 7);
        b.last_error = Some("connection <refused>".into());
        endpoint.publish(snapshot(
            "",
            vec![server("pbx-a", "healthy", true, 1234), b.clone()],
        ));

        let started = Instant::now();
        let first = chromium_dom(&url);
        let first_took = started.elapsed();
        let a = row(&first, "pbx-a");
        assert!(a.contains(">healthy<"), "{a}");
        assert!(a.contains(">1234<"), "{a}");
        assert!(a.contains(">12.5<"), "{a}");
        let b_row = row(&first, "pbx-b");
        assert!(b_row.contains(">reconnecting<"), "{b_row}");
        assert!(b_row.contains("connection &lt;refused&gt;"), "{b_row}");
        assert!(!first.contains("<tr id=\"empty\">"), "{first}");
        assert!(
            !first.contains("id=\"refreshed\">never<"),
            "the refresh time is shown: {first}"
        );

        endpoint.publish(snapshot(
            "",
            vec![server("pbx-a", "healthy", true, 98765), b],
        ));
        let started = Instant::now();
        let second = chromium_dom(&url);
        let second_took = started.elapsed();
        let a = row(&second, "pbx-a");
        assert!(a.contains(">98765<") && !a.contains(">1234<"), "{a}");
        eprintln!("chromium rendered the page in {first_took:?}, then {second_took:?}");
    }
}
