//! The driver: many AMI servers in one `mio::Poll`, moved forward by `tick_all`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use ami_proto::{
    Action, ActionError, CloseReason, Config, Connection, Output, Reply, SendError, State, Stats,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::endpoint::{Endpoint, EndpointError, Resolver, address_of};
use crate::submit::{Submission, SubmitError, Submitter};
use crate::subscription::{Filter, Listeners, SubscriptionId};
use crate::transport::Transport;

/// The longest a tick may wait: larger timeouts are clamped (and counted).
pub const MAX_TICK_TIMEOUT: Duration = Duration::from_millis(250);

const WAKER: Token = Token(usize::MAX);

/// How a driver behaves. [`DriverOptions::default`] gives the seeds' defaults.
pub struct DriverOptions {
    /// Refuse hostnames: endpoints must be IP literals (default true), so that no DNS
    /// lookup can ever block.
    pub enforce_ip_endpoints: bool,
    /// Resolves hostnames when `enforce_ip_endpoints` is off; runs once per server, in
    /// [`Driver::add_server`], never in a tick.
    pub resolver: Option<Box<dyn Resolver>>,
    /// Time a tick may spend running event listeners before it reads the sockets
    /// again (default 10 ms). Events not dispatched wait in the bounded queue.
    pub dispatch_budget: Duration,
    /// Bytes read from one server per tick at most (default 1 MiB), so that one
    /// flooding server cannot starve the others.
    pub read_budget: usize,
    /// Actions other threads may have in flight to the driver (default 1024).
    pub submit_capacity: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            enforce_ip_endpoints: true,
            resolver: None,
            dispatch_budget: Duration::from_millis(10),
            read_budget: 1024 * 1024,
            submit_capacity: 1024,
        }
    }
}

impl std::fmt::Debug for DriverOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverOptions")
            .field("enforce_ip_endpoints", &self.enforce_ip_endpoints)
            .field("resolver", &self.resolver.is_some())
            .field("dispatch_budget", &self.dispatch_budget)
            .field("read_budget", &self.read_budget)
            .field("submit_capacity", &self.submit_capacity)
            .finish()
    }
}

/// One server to drive.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Connection settings (server key, credentials, limits, timeouts).
    pub config: Config,
    /// Where it listens.
    pub endpoint: Endpoint,
    /// TLS settings; `None` for plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsSettings>,
}

impl ServerSpec {
    /// A plain-TCP server.
    pub fn new(config: Config, endpoint: Endpoint) -> Self {
        ServerSpec {
            config,
            endpoint,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// A server of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId(usize);

/// Why the driver refused a request.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The endpoint has no usable address.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// TLS could not be set up.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A server with this key was already added.
    #[error("server {0:?} already added")]
    DuplicateServer(String),
    /// The operating system refused (poll or socket setup).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Why waiting for something failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The action was refused.
    #[error(transparent)]
    Refused(#[from] SendError),
    /// The action failed.
    #[error(transparent)]
    Failed(#[from] ActionError),
    /// The connection closed.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The wait ran out.
    #[error("gave up after {0:?}")]
    TimedOut(Duration),
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Bytes read from all sockets.
    pub bytes_read: u64,
    /// Bytes written to all sockets.
    pub bytes_written: u64,
    /// Outputs dispatched (events, completions, state changes, reports).
    pub outputs: u64,
    /// Whether anything happened at all.
    pub progressed: bool,
}

/// Counters of the driver itself (each connection has its own [`Stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Ticks run.
    pub ticks: u64,
    /// Tick timeouts above [`MAX_TICK_TIMEOUT`] that were clamped.
    pub clamped_timeouts: u64,
    /// Listener or completion callback calls that panicked.
    pub callback_panics: u64,
    /// Submissions from other threads refused (unknown server, not ready, ...).
    pub submissions_refused: u64,
}

type Callback = Box<dyn FnOnce(Result<Reply, ActionError>)>;

struct Server {
    key: Arc<str>,
    config: Config,
    addr: SocketAddr,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConnector>,
    transport: Option<Transport>,
    conn: Option<Connection>,
    generation: u64,
    /// The transport's connect was confirmed.
    transport_up: bool,
    /// Readable and not yet read to `WouldBlock` (edge-triggered: no new event will come).
    read_ready: bool,
    callbacks: HashMap<String, Callback>,
}

/// Many AMI servers in one `mio::Poll`. See the crate documentation.
pub struct Driver {
    poll: Poll,
    events: Events,
    servers: Vec<Server>,
    listeners: Listeners,
    read_buf: Vec<u8>,
    options: DriverOptions,
    instance: u32,
    inbox: Receiver<Submission>,
    submitter: Submitter,
    stats: DriverStats,
    last_clamp_warning: Option<Instant>,
    /// The server whose outputs are dispatched first in the next tick.
    dispatch_start: usize,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field(
                "servers",
                &self.servers.iter().map(|s| &*s.key).collect::<Vec<_>>(),
            )
            .field("listeners", &self.listeners)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A driver with the default options.
    pub fn new() -> io::Result<Driver> {
        Driver::with_options(DriverOptions::default())
    }

    /// A driver with `options`.
    pub fn with_options(options: DriverOptions) -> io::Result<Driver> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (submitter, inbox) = Submitter::new(waker, options.submit_capacity);
        Ok(Driver {
            poll,
            events: Events::with_capacity(1024),
            servers: Vec::new(),
            listeners: Listeners::default(),
            read_buf: vec![0; 64 * 1024],
            options,
            instance: instance_tag(),
            inbox,
            submitter,
            stats: DriverStats::default(),
            last_clamp_warning: None,
            dispatch_start: 0,
        })
    }

    /// Adds a server (not yet connected). Its endpoint is resolved here, once.
    pub fn add_server(&mut self, spec: ServerSpec) -> Result<ServerId, DriverError> {
        let key = spec.config.server_key.clone();
        if self.servers.iter().any(|s| *s.key == *key) {
            return Err(DriverError::DuplicateServer(key));
        }
        let resolver = self.options.resolver.as_mut();
        let addr = address_of(&spec.endpoint, self.options.enforce_ip_endpoints, resolver)?;
        #[cfg(feature = "tls")]
        let tls = spec
            .tls
            .as_ref()
            .map(crate::tls::TlsConnector::new)
            .transpose()?;
        self.servers.push(Server {
            key: Arc::from(key.as_str()),
            config: spec.config,
            addr,
            #[cfg(feature = "tls")]
            tls,
            transport: None,
            conn: None,
            generation: 0,
            transport_up: false,
            read_ready: false,
            callbacks: HashMap::new(),
        });
        Ok(ServerId(self.servers.len() - 1))
    }

    /// The server with this key.
    pub fn server_id(&self, key: &str) -> Option<ServerId> {
        self.servers
            .iter()
            .position(|s| &*s.key == key)
            .map(ServerId)
    }

    /// Every server, in the order added.
    pub fn server_ids(&self) -> impl Iterator<Item = ServerId> + '_ {
        (0..self.servers.len()).map(ServerId)
    }

    /// The key of a server.
    pub fn server_key(&self, id: ServerId) -> &str {
        &self.servers[id.0].key
    }

    /// The state of a server's connection (`Closed` before the first connect).
    pub fn state(&self, id: ServerId) -> State {
        self.servers[id.0]
            .conn
            .as_ref()
            .map_or(State::Closed, Connection::state)
    }

    /// Counters of the server's current connection.
    pub fn connection_stats(&self, id: ServerId) -> Option<Stats> {
        self.servers[id.0].conn.as_ref().map(Connection::stats)
    }

    /// The banner of the server's current connection.
    pub fn banner(&self, id: ServerId) -> Option<&str> {
        self.servers[id.0]
            .conn
            .as_ref()
            .and_then(Connection::banner)
    }

    /// The driver's own counters.
    pub fn stats(&self) -> DriverStats {
        let mut stats = self.stats;
        stats.callback_panics += self.listeners.panics;
        stats
    }

    /// A handle for other threads to submit actions (see [`Submitter`]).
    pub fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// Starts connecting to a server (non-blocking). A server already connecting or
    /// connected is left alone. A connect that fails at once closes the connection
    /// with the reason, like one that fails later.
    pub fn connect(&mut self, id: ServerId) -> Result<(), DriverError> {
        let server = &mut self.servers[id.0];
        if server
            .conn
            .as_ref()
            .is_some_and(|c| c.state() != State::Closed)
        {
            return Ok(());
        }
        let now = Instant::now();
        server.generation += 1;
        server.transport_up = false;
        server.read_ready = false;
        let mut conn =
            Connection::new(server.config.clone(), self.instance, server.generation, now);
        match TcpStream::connect(server.addr) {
            Ok(mut stream) => {
                self.poll.registry().register(
                    &mut stream,
                    Token(id.0),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                server.transport = Some(wrap(server, stream)?);
            }
            Err(error) => conn.handle_transport_error(now, &error),
        }
        server.conn = Some(conn);
        Ok(())
    }

    /// Starts connecting to every server.
    pub fn connect_all(&mut self) -> Result<(), DriverError> {
        for index in 0..self.servers.len() {
            self.connect(ServerId(index))?;
        }
        Ok(())
    }

    /// Sends an action; `on_complete` runs once, in a later tick, with the reply or the
    /// reason it failed. Returns the ActionID.
    pub fn send(
        &mut self,
        id: ServerId,
        action: impl Into<Action>,
        on_complete: impl FnOnce(Result<Reply, ActionError>) + 'static,
    ) -> Result<String, SendError> {
        let server = &mut self.servers[id.0];
        let Some(conn) = server.conn.as_mut() else {
            return Err(SendError::NotReady {
                state: State::Closed,
            });
        };
        let action_id = conn.send(Instant::now(), action)?;
        server
            .callbacks
            .insert(action_id.clone(), Box::new(on_complete));
        Ok(action_id)
    }

    /// Subscribes `listener` to the events that pass `filter`.
    pub fn subscribe(
        &mut self,
        filter: Filter,
        listener: impl FnMut(&ami_proto::Event) + 'static,
    ) -> SubscriptionId {
        self.listeners.add_event(filter, Box::new(listener))
    }

    /// Subscribes to the events named `name`, from every server.
    pub fn on_event(
        &mut self,
        name: &str,
        listener: impl FnMut(&ami_proto::Event) + 'static,
    ) -> SubscriptionId {
        self.subscribe(Filter::event(name), listener)
    }

    /// Subscribes to every event of every server.
    pub fn on_any_event(
        &mut self,
        listener: impl FnMut(&ami_proto::Event) + 'static,
    ) -> SubscriptionId {
        self.subscribe(Filter::any(), listener)
    }

    /// Calls `listener(server_key, from, to)` on every connection state change.
    pub fn on_state_change(
        &mut self,
        listener: impl FnMut(&str, State, State) + 'static,
    ) -> SubscriptionId {
        self.listeners.add_state(Box::new(listener))
    }

    /// Removes a listener; false if it was not there.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        self.listeners.remove(id)
    }

    /// Closes a server gracefully: `Logoff`, then `Goodbye` or the close deadline.
    pub fn close(&mut self, id: ServerId) {
        if let Some(conn) = self.servers[id.0].conn.as_mut() {
            conn.close(Instant::now());
        }
    }

    /// Closes every server gracefully.
    pub fn close_all(&mut self) {
        for index in 0..self.servers.len() {
            self.close(ServerId(index));
        }
    }

    /// Closes every server and ticks until all are closed or `max_wait` ran out.
    /// Returns whether all closed in time.
    pub fn shutdown(&mut self, max_wait: Duration) -> bool {
        self.close_all();
        let deadline = Instant::now() + max_wait;
        while self.server_ids().any(|id| self.state(id) != State::Closed) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.tick_all((deadline - now).min(Duration::from_millis(50)));
        }
        true
    }

    /// Runs a tick without waiting: `tick_all(0)`.
    pub fn poll_all(&mut self) -> TickReport {
        self.tick_all(Duration::ZERO)
    }

    /// Moves one server forward (the others' sockets are still polled, but only this
    /// server is read, written and dispatched).
    pub fn tick(&mut self, id: ServerId, timeout: Duration) -> TickReport {
        self.run_tick(timeout, Some(id.0))
    }

    /// Moves every server forward, in order: waits for readiness (at most `timeout`,
    /// clamped to 250 ms, and never past the earliest deadline), reads every ready
    /// socket until `WouldBlock` (within the read budget), writes what each connection
    /// has queued, runs timeouts and heartbeats, then dispatches completions and events.
    pub fn tick_all(&mut self, timeout: Duration) -> TickReport {
        self.run_tick(timeout, None)
    }

    fn run_tick(&mut self, timeout: Duration, only: Option<usize>) -> TickReport {
        self.stats.ticks += 1;
        let timeout = self.clamp(timeout);
        let mut report = TickReport::default();
        let selected = |index: usize| only.is_none_or(|o| o == index);

        // 1. Wait for readiness, no longer than the earliest deadline, and not at all
        //    when work is already waiting.
        let now = Instant::now();
        let mut wait = timeout;
        for (_, server) in self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, _)| selected(*i))
        {
            let Some(conn) = &server.conn else { continue };
            if server.read_ready || conn.queued_events() > 0 {
                wait = Duration::ZERO;
            }
            if let Some(at) = conn.poll_timeout() {
                wait = wait.min(at.saturating_duration_since(now));
            }
        }
        if let Err(error) = self.poll.poll(&mut self.events, Some(wait)) {
            if error.kind() != io::ErrorKind::Interrupted {
                tracing::error!(%error, "poll failed");
            }
        }
        let now = Instant::now();
        let mut woken = false;
        for event in &self.events {
            if event.token() == WAKER {
                woken = true;
                continue;
            }
            // Stale tokens (a server closed since) are ignored.
            let Some(server) = self.servers.get_mut(event.token().0) else {
                continue;
            };
            if server.transport.is_none() {
                continue;
            }
            if !server.transport_up {
                confirm_connect(server, now);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                server.read_ready = true;
            }
        }
        if woken {
            self.take_submissions();
        }

        // 2. Read every ready socket.
        for index in (0..self.servers.len()).filter(|&i| selected(i)) {
            report.bytes_read += self.read_server(index, now);
        }
        // 3. Write, 4. run timeouts (they may queue heartbeats), write those too.
        let now = Instant::now();
        for index in (0..self.servers.len()).filter(|&i| selected(i)) {
            report.bytes_written += write_server(&mut self.servers[index], now);
            if let Some(conn) = self.servers[index].conn.as_mut() {
                if conn.poll_timeout().is_some_and(|at| at <= now) {
                    conn.handle_timeout(now);
                    report.progressed = true;
                }
            }
            report.bytes_written += write_server(&mut self.servers[index], now);
        }
        // 5. Dispatch completions and events, within the dispatch budget.
        // The server that goes first changes every tick, so that a spent budget does not
        // always starve the same servers' listeners.
        let budget_end = Instant::now() + self.options.dispatch_budget;
        let count = self.servers.len().max(1);
        self.dispatch_start = (self.dispatch_start + 1) % count;
        for offset in 0..self.servers.len() {
            let index = (self.dispatch_start + offset) % count;
            if selected(index) {
                report.outputs += self.dispatch_server(index, budget_end);
            }
        }
        report.progressed |=
            report.bytes_read > 0 || report.bytes_written > 0 || report.outputs > 0;
        report
    }

    fn clamp(&mut self, timeout: Duration) -> Duration {
        if timeout <= MAX_TICK_TIMEOUT {
            return timeout;
        }
        self.stats.clamped_timeouts += 1;
        let now = Instant::now();
        if self
            .last_clamp_warning
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.last_clamp_warning = Some(now);
            tracing::warn!(
                requested_ms = timeout.as_millis() as u64,
                max_ms = MAX_TICK_TIMEOUT.as_millis() as u64,
                clamped_total = self.stats.clamped_timeouts,
                "tick timeout clamped"
            );
        }
        MAX_TICK_TIMEOUT
    }

    /// Reads a ready server until `WouldBlock`, its end, or the read budget.
    fn read_server(&mut self, index: usize, now: Instant) -> u64 {
        let budget = self.options.read_budget;
        let server = &mut self.servers[index];
        if !server.read_ready || !server.transport_up {
            return 0;
        }
        let (Some(transport), Some(conn)) = (server.transport.as_mut(), server.conn.as_mut())
        else {
            server.read_ready = false;
            return 0;
        };
        let mut total = 0u64;
        loop {
            if total as usize >= budget {
                // Still readable: read again next tick without waiting for an event.
                return total;
            }
            match transport.read(&mut self.read_buf) {
                Ok(0) => {
                    conn.handle_eof(now);
                    server.read_ready = false;
                    return total;
                }
                Ok(n) => {
                    total += n as u64;
                    conn.handle_data(now, &self.read_buf[..n]);
                    if conn.state() == State::Closed {
                        server.read_ready = false;
                        return total;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    server.read_ready = false;
                    return total;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    conn.handle_transport_error(now, &error);
                    server.read_ready = false;
                    return total;
                }
            }
        }
    }

    /// Drains a server's outputs: callbacks, listeners, state changes.
    fn dispatch_server(&mut self, index: usize, budget_end: Instant) -> u64 {
        let server = &mut self.servers[index];
        let Some(conn) = server.conn.as_mut() else {
            return 0;
        };
        let mut count = 0u64;
        // Listeners run until the budget is spent; one slow listener call must not be
        // followed by dozens more before the sockets are read again (Asterisk cuts a
        // reader that stalls for 100 ms), so the clock is read after every call.
        let mut spent = Instant::now() >= budget_end;
        loop {
            if spent && conn.queued_events() > 0 && !conn.has_pending_outputs() {
                break;
            }
            let Some(output) = conn.poll() else { break };
            count += 1;
            match output {
                Output::Event(event) => {
                    if self.listeners.has_event_listeners() {
                        self.listeners.dispatch_event(&event);
                        spent = Instant::now() >= budget_end;
                    }
                }
                Output::Completed(done) => {
                    if let Some(callback) = server.callbacks.remove(&done.action_id) {
                        if catch_unwind(AssertUnwindSafe(|| callback(done.result))).is_err() {
                            self.stats.callback_panics += 1;
                            tracing::error!(server_key = %server.key, action_id = %done.action_id, "completion callback panicked");
                        }
                    }
                }
                Output::StateChanged { from, to } => {
                    self.listeners.dispatch_state(&server.key, from, to)
                }
                Output::Closed(reason) => {
                    tracing::info!(server_key = %server.key, %reason, "connection closed");
                    if let Some(mut transport) = server.transport.take() {
                        let _ = self.poll.registry().deregister(transport.socket());
                    }
                    server.read_ready = false;
                }
                // Already counted in the connection's stats and logged by the core.
                Output::Discarded(_) | Output::Unmatched(_) => {}
            }
        }
        count
    }

    /// Handles actions submitted from other threads.
    fn take_submissions(&mut self) {
        loop {
            match self.inbox.try_recv() {
                Ok(Submission::Send {
                    server,
                    action,
                    on_complete,
                }) => {
                    let Some(id) = self.server_id(&server) else {
                        self.stats.submissions_refused += 1;
                        on_complete(Err(SubmitError::UnknownServer(server)));
                        continue;
                    };
                    // The callback is shared between the refusal path and the
                    // completion path; exactly one of them takes it.
                    let slot = std::rc::Rc::new(std::cell::Cell::new(Some(on_complete)));
                    let for_completion = slot.clone();
                    let sent = self.send(id, action, move |result| {
                        if let Some(callback) = for_completion.take() {
                            callback(result.map_err(SubmitError::Failed));
                        }
                    });
                    if let Err(error) = sent {
                        self.stats.submissions_refused += 1;
                        if let Some(callback) = slot.take() {
                            callback(Err(SubmitError::Refused(error)));
                        }
                    }
                }
                Ok(Submission::Close { server }) => {
                    if let Some(id) = self.server_id(&server) {
                        self.close(id);
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Ticks until `id` is logged in (Ok) or closed (Err), at most `max_wait`.
    pub fn wait_ready(&mut self, id: ServerId, max_wait: Duration) -> Result<(), WaitError> {
        let deadline = Instant::now() + max_wait;
        loop {
            match self.state(id) {
                state if state.is_ready() => return Ok(()),
                State::Closed => return Err(WaitError::Closed(self.last_close_reason(id))),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut(max_wait));
            }
            self.tick_all((deadline - now).min(Duration::from_millis(50)));
        }
    }

    fn last_close_reason(&self, id: ServerId) -> CloseReason {
        self.servers[id.0]
            .conn
            .as_ref()
            .and_then(Connection::close_reason)
            .cloned()
            .unwrap_or(CloseReason::PeerClosed)
    }

    /// Sends an action and ticks until it completes (for simple programs and tests).
    /// The action's own deadline bounds the wait.
    pub fn send_and_wait(
        &mut self,
        id: ServerId,
        action: impl Into<Action>,
    ) -> Result<Reply, WaitError> {
        let slot = std::rc::Rc::new(std::cell::RefCell::new(None));
        let filled = slot.clone();
        self.send(id, action, move |result| {
            *filled.borrow_mut() = Some(result)
        })?;
        loop {
            if let Some(result) = slot.borrow_mut().take() {
                return result.map_err(WaitError::Failed);
            }
            self.tick_all(Duration::from_millis(50));
        }
    }
}

/// Wraps a new socket in the server's transport (TLS if configured).
fn wrap(server: &Server, stream: TcpStream) -> io::Result<Transport> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &server.tls {
        return Ok(Transport::Tls(Box::new(tls.wrap(stream)?)));
    }
    let _ = server;
    Ok(Transport::Plain(stream))
}

/// Confirms a non-blocking connect the way mio documents: no pending socket error, and
/// a peer address. `NotConnected` means not yet (a spurious wake-up).
fn confirm_connect(server: &mut Server, now: Instant) {
    let (Some(transport), Some(conn)) = (server.transport.as_mut(), server.conn.as_mut()) else {
        return;
    };
    let socket = transport.socket();
    match socket.take_error() {
        Ok(Some(error)) | Err(error) => {
            conn.handle_transport_error(now, &error);
            return;
        }
        Ok(None) => {}
    }
    match socket.peer_addr() {
        Ok(_) => {
            let _ = socket.set_nodelay(true);
            server.transport_up = true;
            conn.handle_connected(now);
        }
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
        Err(error) => conn.handle_transport_error(now, &error),
    }
}

/// Writes what the connection has queued until the socket would block. A partial
/// write leaves the rest at the head of the connection's buffer.
fn write_server(server: &mut Server, now: Instant) -> u64 {
    if !server.transport_up {
        return 0;
    }
    let (Some(transport), Some(conn)) = (server.transport.as_mut(), server.conn.as_mut()) else {
        return 0;
    };
    let mut total = 0u64;
    if let Err(error) = transport.flush() {
        conn.handle_transport_error(now, &error);
        return 0;
    }
    while !conn.poll_transmit().is_empty() {
        match transport.write(conn.poll_transmit()) {
            Ok(0) => break,
            Ok(n) => {
                conn.advance_transmit(n);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                conn.handle_transport_error(now, &error);
                break;
            }
        }
    }
    total
}

/// A tag that differs between processes (and drivers), for ActionIDs.
fn instance_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process; mixing in the pid and a counter
    // keeps two drivers in one process apart too.
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u32(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.finish() as u32
}
