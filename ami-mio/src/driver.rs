//! The driver: many AMI servers in one `mio::Poll`, moved forward by `tick_all`.
//!
//! Every decision lives in one [`ami_cluster::ClientCore`] (the same one `ami-tokio`
//! wraps): each server's session with reconnects, backoff, circuit breaker, health and
//! metrics, the registry, routing, readiness, and the completion slots that hold the
//! callbacks. The driver keeps only what the sans-IO side cannot: the socket of each
//! server, its read-ready and write-blocked flags, and the calls to the application.

use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use ami_cluster::{
    CallEnded, ClientCore, ClientOutput, ClusterConfig, ClusterError, DialerConfig, DialerStatus,
    Health, NoServerAvailable, Node, NodeMetrics, NotReady, Policy, Readiness, Refused, RouteError,
    ServerId, Strategy, Ticket,
};
use ami_proto::{
    Action, ActionError, CloseReason, Completion, Config, Reply, SendError, State, Stats,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::endpoint::{Destination, Endpoint, EndpointError, Resolver, destination_of, resolve};
use crate::submit::{RoutedCallback, Submission, SubmitCallback, SubmitError, Submitter};
use crate::subscription::{Filter, Listeners, SubscriptionId};
use crate::transport::Transport;

/// The longest a tick may wait: larger timeouts are clamped (and counted).
pub const MAX_TICK_TIMEOUT: Duration = Duration::from_millis(250);

/// The longest the driver stops reading a server whose event queue is half full, so
/// that its listeners catch up before the queue has to drop: well under the 100 ms
/// for which Asterisk lets its write to a session block before it cuts the session
/// (its `writetimeout`). Past it the server is read again and a full queue drops its
/// oldest events (counted), so a listener that cannot keep up loses events, never the
/// session.
pub const MAX_READ_PAUSE: Duration = Duration::from_millis(40);

const WAKER: Token = Token(usize::MAX);

/// How a driver behaves. [`DriverOptions::default`] gives the seeds' defaults.
pub struct DriverOptions {
    /// Refuse hostnames: endpoints must be IP literals (default true), so that no DNS
    /// lookup can ever block.
    pub enforce_ip_endpoints: bool,
    /// Resolves hostnames when `enforce_ip_endpoints` is off (e.g.
    /// [`SystemResolver`](crate::SystemResolver)); runs before every connect attempt
    /// to a named server, on a thread of its own, never in a tick.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Time a tick may spend running event listeners before it reads the sockets
    /// again (default 10 ms). Events not dispatched wait in the bounded queue.
    pub dispatch_budget: Duration,
    /// Bytes read from one server per tick at most (default 1 MiB), so that one
    /// flooding server cannot starve the others. A smaller budget is faster with a
    /// quick listener, but with a slow one it caps how fast the socket is drained, and
    /// Asterisk cuts a reader whose socket stays full for 100 ms (its writetimeout):
    /// the real-Asterisk slow-listener tests lost their session at 128 KiB.
    pub read_budget: usize,
    /// Actions other threads may have in flight to the driver (default 1024).
    pub submit_capacity: usize,
    /// Bytes the driver may hold for all its servers together (`options.memory_limit`,
    /// default 128 MiB): queued events, collected replies, parser and write buffers
    /// (see [`ami_proto::budget`]). At the limit the oldest events are dropped and
    /// counted (`ami_dropped_events_total{reason="memory_limit"}`) and new actions are
    /// refused with [`SendError::MemoryLimit`](ami_proto::SendError::MemoryLimit).
    pub memory_limit: usize,
    /// Reconnect policy of every server: jittered backoff (100 ms..30 s) and the
    /// circuit breaker (opens after 5 failures for 30 s).
    pub policy: Policy,
    /// Seed of the reconnect jitter, to replay a run; `None` (default) picks one at
    /// random.
    pub seed: Option<u64>,
    /// How [`Driver::select`] and [`Driver::send_routed`] pick a server (default
    /// round robin). A strategy naming servers not added yet routes nothing until
    /// they all are.
    pub routing: Strategy<String>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            enforce_ip_endpoints: true,
            resolver: None,
            dispatch_budget: Duration::from_millis(10),
            read_budget: 1024 * 1024,
            submit_capacity: 1024,
            memory_limit: ami_proto::budget::DEFAULT_MEMORY_LIMIT,
            policy: Policy::default(),
            seed: None,
            routing: Strategy::RoundRobin,
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
            .field("policy", &self.policy)
            .field("seed", &self.seed)
            .field("routing", &self.routing)
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

/// Why the driver refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The endpoint has no usable address.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// TLS could not be set up.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The registry refused the server (e.g. a server with this key was already
    /// added).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The operating system refused (poll or socket setup).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Why waiting for something failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The action was refused.
    #[error(transparent)]
    Refused(#[from] SendError),
    /// The action failed.
    #[error(transparent)]
    Failed(#[from] ActionError),
    /// Waiting cannot make the server ready (closed by the application, circuit
    /// open, credentials refused); the rule is on [`ami_cluster::Readiness`].
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// The wait ran out; the last attempt's failure, if one failed.
    #[error("gave up after {waited:?}{}", last.as_ref().map(|r| format!(" (last attempt: {r})")).unwrap_or_default())]
    TimedOut {
        /// How long it waited.
        waited: Duration,
        /// Why the last attempt failed, if one did.
        last: Option<CloseReason>,
    },
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TickReport {
    /// Bytes read from all sockets.
    pub bytes_read: u64,
    /// Bytes written to all sockets.
    pub bytes_written: u64,
    /// Outputs dispatched (events, completions, state and health changes, reports).
    pub outputs: u64,
    /// Whether anything happened at all.
    pub progressed: bool,
}

/// Counters of the driver itself (each connection has its own [`Stats`], each
/// server its [`NodeMetrics`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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

/// A resolver thread's answer: server index, connection generation, address.
type Resolved = (usize, u64, Result<SocketAddr, EndpointError>);

/// Who gets an action's result: a callback of the driver's thread, or of a
/// [`Submitter`]'s (which also hears of a refusal).
enum Callback {
    Local(Box<dyn FnOnce(Result<Reply, ActionError>)>),
    Submitted(SubmitCallback),
}

impl Callback {
    /// Hands the completion over.
    fn complete(self, result: Result<Reply, ActionError>) {
        match self {
            Callback::Local(callback) => callback(result),
            Callback::Submitted(callback) => callback(result.map_err(SubmitError::Failed)),
        }
    }
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Callback::Local(_) => "Callback::Local",
            Callback::Submitted(_) => "Callback::Submitted",
        })
    }
}

/// What the driver keeps per server besides its [`Node`]: the I/O side.
struct Server {
    key: Arc<str>,
    destination: Destination,
    /// The connection generation whose address a resolver thread is looking up.
    resolving: Option<u64>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConnector>,
    /// The socket of the node's current connection, from `NodeOutput::Connect` until
    /// that connection's `Closed`.
    transport: Option<Transport>,
    /// The transport's connect was confirmed.
    transport_up: bool,
    /// Readable and not yet read to `WouldBlock` (edge-triggered: no new event will come).
    read_ready: bool,
    /// The last write hit `WouldBlock`: wait for a writable event before writing again.
    write_blocked: bool,
    /// Since when reading is paused because the event queue is half full
    /// ([`MAX_READ_PAUSE`]).
    read_paused_since: Option<Instant>,
    /// In [`Driver::pending`] (or in the visit of the tick under way).
    listed: bool,
}

/// Many AMI servers in one `mio::Poll`, each kept connected by its
/// [`ami_cluster::Node`]. See the crate documentation.
///
/// Methods taking a [`ServerId`] panic when it does not come from this driver.
pub struct Driver {
    poll: Poll,
    events: Events,
    /// Created by the first [`Driver::add_server`] (a cluster is never empty).
    core: Option<ClientCore<Callback>>,
    /// Indexed like the cluster's nodes.
    servers: Vec<Server>,
    listeners: Listeners,
    read_buf: Vec<u8>,
    options: DriverOptions,
    instance: u32,
    seed: u64,
    /// The budget every server charges (`options.memory_limit`).
    memory: ami_proto::MemoryBudget,
    /// A routing strategy that names servers not added yet.
    pending_routing: Option<Strategy<String>>,
    inbox: Receiver<Submission>,
    submitter: Submitter,
    /// Wakes the poll from other threads (submitters, resolver threads).
    waker: Arc<Waker>,
    /// Addresses found by resolver threads: server, connection generation, result.
    resolved: (Sender<Resolved>, Receiver<Resolved>),
    stats: DriverStats,
    last_clamp_warning: Option<Instant>,
    /// Servers to visit in the next tick: readiness from the poll not acted on yet,
    /// a read cut short by the read budget or paused, bytes left to write. A tick
    /// visits these, the servers the core changed and the servers with a due
    /// deadline, never the others.
    pending: Vec<usize>,
    /// The servers of the tick under way (kept for its allocation).
    visit: Vec<usize>,
    /// Room for the core's due servers.
    due: Vec<ServerId>,
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
        let (submitter, inbox) = Submitter::new(waker.clone(), options.submit_capacity);
        let seed = options.seed.unwrap_or_else(ami_proto::rng::random_seed);
        Ok(Driver {
            poll,
            events: Events::with_capacity(1024),
            core: None,
            servers: Vec::new(),
            listeners: Listeners::default(),
            read_buf: vec![0; 64 * 1024],
            pending_routing: Some(options.routing.clone()),
            memory: ami_proto::MemoryBudget::new(options.memory_limit),
            options,
            instance: ami_proto::rng::random_seed() as u32,
            seed,
            inbox,
            submitter,
            waker,
            resolved: std::sync::mpsc::channel(),
            stats: DriverStats::default(),
            last_clamp_warning: None,
            pending: Vec::new(),
            visit: Vec::new(),
            due: Vec::new(),
        })
    }

    /// Adds a server, idle: it connects on [`Driver::connect`], [`Driver::connect_all`]
    /// (eager open) or its first use (lazy open: [`Driver::send`], [`Driver::server`],
    /// [`Driver::wait_ready`], routing). Its endpoint is resolved here, once.
    pub fn add_server(&mut self, spec: ServerSpec) -> Result<ServerId, DriverError> {
        let key = spec.config.server_key.clone();
        if self.servers.iter().any(|s| *s.key == *key) {
            return Err(ClusterError::DuplicateServer(key).into());
        }
        let destination = destination_of(
            &spec.endpoint,
            self.options.enforce_ip_endpoints,
            self.options.resolver.is_some(),
        )?;
        #[cfg(feature = "tls")]
        let tls = spec
            .tls
            .as_ref()
            .map(crate::tls::TlsConnector::new)
            .transpose()?;
        let id = match &mut self.core {
            Some(core) => core.add(spec.config)?,
            None => {
                self.core = Some(ClientCore::new(ClusterConfig {
                    servers: vec![spec.config],
                    default: None,
                    policy: self.options.policy,
                    seed: self.seed,
                    instance: self.instance,
                    memory: self.memory.clone(),
                })?);
                ServerId(0)
            }
        };
        debug_assert_eq!(id.0, self.servers.len());
        self.servers.push(Server {
            key: Arc::from(key.as_str()),
            destination,
            resolving: None,
            #[cfg(feature = "tls")]
            tls,
            transport: None,
            transport_up: false,
            read_ready: false,
            write_blocked: false,
            read_paused_since: None,
            listed: false,
        });
        if let (Some(strategy), Some(core)) = (&self.pending_routing, &mut self.core)
            && core.set_routing(strategy.clone()).is_ok()
        {
            self.pending_routing = None;
        }
        Ok(id)
    }

    /// The server with this key, without opening it.
    pub fn server_id(&self, key: &str) -> Option<ServerId> {
        self.core.as_ref().and_then(|c| c.id(key))
    }

    /// The server with this key, opened if it was idle (lazy open).
    pub fn server(&mut self, key: &str) -> Result<ServerId, ClusterError> {
        let core = self
            .core
            .as_mut()
            .ok_or_else(|| ClusterError::UnknownServer(key.to_owned()))?;
        core.server(key, Instant::now())
    }

    /// The default server (the first added, unless [`Driver::set_default_server`]
    /// chose another), opened if it was idle. `Empty` when no server was added.
    pub fn default_server(&mut self) -> Result<ServerId, ClusterError> {
        let core = self.core.as_mut().ok_or(ClusterError::Empty)?;
        Ok(core.default_server(Instant::now()))
    }

    /// Makes the server with this key the default (without opening it).
    pub fn set_default_server(&mut self, key: &str) -> Result<ServerId, ClusterError> {
        let core = self
            .core
            .as_mut()
            .ok_or_else(|| ClusterError::UnknownServer(key.to_owned()))?;
        core.set_default(key)
    }

    /// Every server, in the order added.
    pub fn server_ids(&self) -> impl Iterator<Item = ServerId> + '_ {
        (0..self.servers.len()).map(ServerId)
    }

    /// The key of a server.
    pub fn server_key(&self, id: ServerId) -> &str {
        &self.servers[id.0].key
    }

    /// A server's node (read only): its reconnect state, generation, current
    /// connection.
    pub fn node(&self, id: ServerId) -> &Node {
        self.core().node(id)
    }

    /// The state of a server's current connection (`Closed` before the first connect
    /// and between reconnect attempts; see [`Driver::health`]).
    pub fn state(&self, id: ServerId) -> State {
        self.node(id).state()
    }

    /// A server's health: its connection's state plus its reconnect status
    /// (`Reconnecting`, `CircuitOpen`). Only `Healthy` servers are routed to.
    pub fn health(&self, id: ServerId) -> Health {
        self.node(id).health()
    }

    /// A server's metrics, kept across reconnects.
    pub fn metrics(&self, id: ServerId) -> NodeMetrics {
        self.node(id).metrics()
    }

    /// Every server's metrics with its key, in the order added.
    pub fn cluster_metrics(&self) -> Vec<(&str, NodeMetrics)> {
        self.core
            .as_ref()
            .map_or_else(Vec::new, ClientCore::all_metrics)
    }

    /// Every server's metrics in the Prometheus text format (`ami_connection_status`,
    /// `ami_dropped_events_total`, `ami_action_latency_ms`, ...).
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_with(&[])
    }

    /// [`render_prometheus`](Driver::render_prometheus) plus events the application
    /// dropped itself: `(server, reason, total)` samples of `ami_dropped_events_total`.
    pub fn render_prometheus_with(&self, more_drops: &[(&str, &str, u64)]) -> String {
        match &self.core {
            Some(core) => core.render_prometheus_with(more_drops),
            None => {
                let mut out = String::new();
                ami_cluster::render_prometheus_with(&[], more_drops, &mut out);
                ami_cluster::render_memory(&self.memory, &mut out);
                out
            }
        }
    }

    /// The memory budget all servers of this driver charge
    /// ([`DriverOptions::memory_limit`]): `used()` is what the driver holds now.
    pub fn memory(&self) -> &ami_proto::MemoryBudget {
        &self.memory
    }

    /// Counters of the server's current connection (they start again with every
    /// connection; [`Driver::metrics`] has the totals).
    pub fn connection_stats(&self, id: ServerId) -> Option<Stats> {
        self.node(id).connection().map(ami_proto::Connection::stats)
    }

    /// The banner of the server's current connection.
    pub fn banner(&self, id: ServerId) -> Option<&str> {
        self.node(id)
            .connection()
            .and_then(ami_proto::Connection::banner)
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

    /// Opens a server (eager open): it connects in the next tick and from then on is
    /// kept connected, reconnecting after a jittered backoff when an attempt fails or
    /// the session is lost, until [`Driver::close`]. A server already open is left
    /// alone; one backing off or with an open circuit keeps its schedule. Never fails
    /// today (connect errors are retried, not returned); the `Result` is kept for
    /// compatibility.
    pub fn connect(&mut self, id: ServerId) -> Result<(), DriverError> {
        self.core_mut().open(id, Instant::now());
        Ok(())
    }

    /// Opens every server (see [`Driver::connect`]).
    pub fn connect_all(&mut self) -> Result<(), DriverError> {
        if let Some(core) = &mut self.core {
            core.open_all(Instant::now());
        }
        Ok(())
    }

    /// Sends an action; `on_complete` runs exactly once, in a later tick, with the
    /// reply or the reason it failed (a lost connection fails it with
    /// `ConnectionClosed`; it is never re-sent). Returns the action's ticket.
    ///
    /// Refused at once, never queued, when the server is not logged in
    /// (`NotReady`); `on_complete` is then dropped without being called. An idle
    /// server is opened by its first send (lazy open), which is still refused.
    pub fn send(
        &mut self,
        id: ServerId,
        action: impl Into<Action>,
        on_complete: impl FnOnce(Result<Reply, ActionError>) + 'static,
    ) -> Result<Ticket, SendError> {
        let now = Instant::now();
        self.core_mut()
            .send(id, now, action, Callback::Local(Box::new(on_complete)))
            .map_err(|refused| refused.error)
    }

    /// Whether the action of `ticket` still waits for its completion.
    pub fn is_pending(&self, ticket: Ticket) -> bool {
        self.core.as_ref().is_some_and(|c| c.is_pending(ticket))
    }

    /// Sets the routing strategy of [`Driver::select`] and [`Driver::send_routed`];
    /// every key it names must have been added.
    pub fn set_routing(&mut self, strategy: Strategy<String>) -> Result<(), ClusterError> {
        match &mut self.core {
            Some(core) => core.set_routing(strategy)?,
            None => {
                if let Some(key) = named_keys(&strategy).first() {
                    return Err(ClusterError::UnknownServer((*key).clone()));
                }
                // Applied when the first server is added.
                self.pending_routing = Some(strategy);
                return Ok(());
            }
        }
        self.pending_routing = None;
        Ok(())
    }

    /// A `Healthy` server chosen by the routing strategy. Idle servers are opened
    /// first (they become selectable once logged in).
    pub fn select(&mut self) -> Result<ServerId, NoServerAvailable> {
        self.unresolved_routing()?;
        let Some(core) = &mut self.core else {
            return Err(NoServerAvailable {
                strategy: self.options.routing.kind(),
                considered: 0,
            });
        };
        core.select(Instant::now())
    }

    /// Sends an action to the server [`Driver::select`] picks; `on_complete` runs
    /// exactly once as with [`Driver::send`]. Returns the ticket (its `server` is the
    /// one chosen).
    pub fn send_routed(
        &mut self,
        action: impl Into<Action>,
        on_complete: impl FnOnce(Result<Reply, ActionError>) + 'static,
    ) -> Result<Ticket, RouteError> {
        self.unresolved_routing()?;
        let Some(core) = &mut self.core else {
            return Err(RouteError::NoServer(NoServerAvailable {
                strategy: self.options.routing.kind(),
                considered: 0,
            }));
        };
        core.send_routed(
            Instant::now(),
            action,
            Callback::Local(Box::new(on_complete)),
        )
        .map_err(|refused| refused.error)
    }

    /// `Err` when the routing strategy still names servers that were not added.
    fn unresolved_routing(&self) -> Result<(), NoServerAvailable> {
        let Some(strategy) = &self.pending_routing else {
            return Ok(());
        };
        let known = named_keys(strategy)
            .into_iter()
            .filter(|key| self.server_id(key).is_some())
            .count();
        Err(NoServerAvailable {
            strategy: strategy.kind(),
            considered: known,
        })
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

    /// Hands every event, by value, to `sink` once the listeners have seen it (one
    /// sink; a new one replaces the last). For a consumer that keeps events (an
    /// outlet's queue): it takes them without a copy, and each keeps its charge of the
    /// memory budget until the consumer drops it. The sink must be quick: it is not
    /// held to [`DriverOptions::dispatch_budget`] (with no listener, every event read
    /// is handed over in the same tick).
    pub fn set_event_sink(&mut self, sink: impl FnMut(ami_proto::Event) + 'static) {
        self.listeners.set_sink(Box::new(sink));
    }

    /// Calls `listener(server_key, from, to)` on every connection state change (of
    /// every connection: each reconnect starts again from `Connecting`).
    pub fn on_state_change(
        &mut self,
        listener: impl FnMut(&str, State, State) + 'static,
    ) -> SubscriptionId {
        self.listeners.add_state(Box::new(listener))
    }

    /// Calls `listener(server_key, from, to)` on every health change, e.g.
    /// `Healthy → Reconnecting → Connecting → ... → Healthy`, or `CircuitOpen` after
    /// repeated failures (circuit transitions themselves are logged by `ami-cluster`).
    pub fn on_health_change(
        &mut self,
        listener: impl FnMut(&str, Health, Health) + 'static,
    ) -> SubscriptionId {
        self.listeners.add_health(Box::new(listener))
    }

    /// Follows the calls of a server and paces its Originates (see
    /// [`ami_cluster::dialer`]): every call it sees ends in one record for
    /// [`Driver::on_call_ended`]; Originates over `config.pacing`'s limits wait their
    /// turn unsent (their callbacks run when they complete), or are refused with
    /// [`SendError::Paced`](ami_proto::SendError::Paced) when `max_waiting` already
    /// wait.
    pub fn track_calls(&mut self, id: ServerId, config: DialerConfig) {
        self.core_mut().track_calls(id, config);
    }

    /// What a tracked server's dialer has seen and done (`None`: not tracked).
    pub fn dialer_status(&self, id: ServerId) -> Option<DialerStatus> {
        self.core.as_ref()?.dialer_status(id)
    }

    /// Calls `listener(server_key, call)` for every call that ends on a tracked
    /// server ([`Driver::track_calls`]).
    pub fn on_call_ended(
        &mut self,
        listener: impl FnMut(&str, &CallEnded) + 'static,
    ) -> SubscriptionId {
        self.listeners.add_call(Box::new(listener))
    }

    /// Removes a listener; false if it was not there.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        self.listeners.remove(id)
    }

    /// Closes a server gracefully (`Logoff`, then `Goodbye` or the close deadline)
    /// and stops reconnecting it until [`Driver::connect`].
    pub fn close(&mut self, id: ServerId) {
        self.core_mut().close(id, Instant::now());
    }

    /// Closes every server gracefully; none reconnects.
    pub fn close_all(&mut self) {
        if let Some(core) = &mut self.core {
            core.close_all(Instant::now());
        }
    }

    /// Closes every server and ticks until all are closed (and their last
    /// completions dispatched) or `max_wait` ran out. Returns whether all closed in
    /// time.
    pub fn shutdown(&mut self, max_wait: Duration) -> bool {
        self.close_all();
        let deadline = Instant::now() + max_wait;
        loop {
            let now = Instant::now();
            let done = self.core.as_ref().is_none_or(ClientCore::is_shut_down);
            if done || now >= deadline {
                return self.server_ids().all(|id| self.state(id) == State::Closed);
            }
            self.tick_all((deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Runs a tick without waiting: `tick_all(0)`.
    pub fn poll_all(&mut self) -> TickReport {
        self.tick_all(Duration::ZERO)
    }

    /// Moves one server forward (the others' sockets are still polled, but only this
    /// server is read, written, timed and dispatched).
    pub fn tick(&mut self, id: ServerId, timeout: Duration) -> TickReport {
        self.run_tick(timeout, Some(id.0))
    }

    /// Moves every server forward: waits for readiness (at most `timeout`, clamped to
    /// 250 ms, and never past the earliest deadline or reconnect attempt), reads every
    /// ready socket until `WouldBlock` (within the read budget), writes what each
    /// connection has queued, runs due timeouts, heartbeats and reconnect attempts,
    /// then dispatches outputs: opens the sockets nodes ask for, drops closed ones,
    /// runs completion callbacks and listeners.
    ///
    /// A tick visits only the servers with something to do — readiness from the
    /// poll, a read cut short, a change in the core (a send, bytes to write), a due
    /// deadline, outputs waiting — so its cost does not grow with idle servers.
    pub fn tick_all(&mut self, timeout: Duration) -> TickReport {
        self.run_tick(timeout, None)
    }

    /// Lists the servers the core changed since the last look.
    fn list_changed(&mut self) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let (servers, pending) = (&mut self.servers, &mut self.pending);
        core.take_changed(|id| {
            let server = &mut servers[id.0];
            if !server.listed {
                server.listed = true;
                pending.push(id.0);
            }
        });
    }

    /// Whether a server has work that does not wait for the poll.
    fn has_work(server: &Server, core: &ClientCore<Callback>, id: ServerId) -> bool {
        // Bytes queued since the last tick (a send) go out now, not after a wait that
        // nothing would cut short.
        server.read_ready
            || (server.transport_up && !server.write_blocked && !core.poll_transmit(id).is_empty())
    }

    fn run_tick(&mut self, timeout: Duration, only: Option<usize>) -> TickReport {
        self.stats.ticks += 1;
        let timeout = self.clamp(timeout);
        let mut report = TickReport::default();

        // 1. Wait for readiness, no longer than the earliest deadline, and not at all
        //    when work is already waiting.
        if only.is_none() {
            self.list_changed();
        }
        let now = Instant::now();
        let mut wait = timeout;
        if let Some(core) = &self.core {
            match only {
                None => {
                    let busy = core.has_turns()
                        || self
                            .pending
                            .iter()
                            .any(|&i| Self::has_work(&self.servers[i], core, ServerId(i)));
                    if busy {
                        wait = Duration::ZERO;
                    }
                    if let Some(at) = core.poll_timeout() {
                        wait = wait.min(at.saturating_duration_since(now));
                    }
                }
                Some(index) => {
                    let id = ServerId(index);
                    if Self::has_work(&self.servers[index], core, id)
                        || core.queued_events(id) > 0
                        || core.has_pending_outputs(id)
                    {
                        wait = Duration::ZERO;
                    }
                    if let Some(at) = core.server_poll_timeout(id) {
                        wait = wait.min(at.saturating_duration_since(now));
                    }
                }
            }
        }
        if let Err(error) = self.poll.poll(&mut self.events, Some(wait))
            && error.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(%error, "poll failed");
        }
        let now = Instant::now();
        let mut woken = false;
        for event in &self.events {
            if event.token() == WAKER {
                woken = true;
                continue;
            }
            let index = event.token().0;
            // Stale tokens (a server closed since) are ignored.
            let Some(server) = self.servers.get_mut(index) else {
                continue;
            };
            let Some(core) = self.core.as_mut() else {
                continue;
            };
            if server.transport.is_none() {
                continue;
            }
            if !server.transport_up {
                confirm_connect(server, core, ServerId(index), now);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                server.read_ready = true;
            }
            if event.is_writable() {
                server.write_blocked = false;
            }
            if !server.listed {
                server.listed = true;
                self.pending.push(index);
            }
        }
        if woken {
            self.take_submissions();
            self.take_resolved(now);
        }
        if self.core.is_none() {
            return report;
        }
        // The servers of this tick: those listed, those the core changed since (the
        // events above, submissions), and below those with a due deadline. With
        // `only`, that server alone; the others stay listed for a later tick.
        let mut visit = std::mem::take(&mut self.visit);
        visit.clear();
        match only {
            None => {
                self.list_changed();
                std::mem::swap(&mut visit, &mut self.pending);
            }
            Some(index) => visit.push(index),
        }
        let Some(core) = self.core.as_mut() else {
            return report;
        };

        // 2. Read every ready socket.
        for &index in &visit {
            report.bytes_read += read_server(
                &mut self.servers[index],
                core,
                ServerId(index),
                &mut self.read_buf,
                self.options.read_budget,
                now,
            );
        }
        // 3. Write, 4. run timeouts and reconnects (they may queue heartbeats), write
        //    those too.
        let now = Instant::now();
        if only.is_none() {
            core.due_servers(now, &mut self.due);
            for id in self.due.drain(..) {
                let server = &mut self.servers[id.0];
                if !server.listed {
                    server.listed = true;
                    visit.push(id.0);
                }
            }
        }
        for &index in &visit {
            let (server, id) = (&mut self.servers[index], ServerId(index));
            report.bytes_written += write_server(server, core, id, now);
            if core.server_poll_timeout(id).is_some_and(|at| at <= now) {
                core.handle_server_timeout(id, now);
                report.progressed = true;
            }
            report.bytes_written += write_server(server, core, id, now);
        }
        // What is left for the next tick: a read cut short or paused, bytes that did
        // not go out although the socket did not block.
        if only.is_none() {
            for &index in &visit {
                self.servers[index].listed = false;
            }
        }
        for &index in &visit {
            let (server, id) = (&self.servers[index], ServerId(index));
            if Self::has_work(server, core, id) && !server.listed {
                self.servers[index].listed = true;
                self.pending.push(index);
            }
        }
        visit.clear();
        self.visit = visit;

        // 5. Dispatch outputs, events within the dispatch budget. Servers with outputs
        //    take turns: one cut short by a spent budget goes to the back of the
        //    queue, so that the next one goes first in the next tick, and a spent
        //    budget does not always starve the same servers' listeners.
        let budget_end = Instant::now() + self.options.dispatch_budget;
        match only {
            None => {
                let turns = self.core().turns();
                for _ in 0..turns {
                    let Some(id) = self.core_mut().take_turn() else {
                        break;
                    };
                    report.outputs += self.dispatch_server(id, budget_end);
                    self.core_mut().end_turn(id);
                }
            }
            Some(index) => {
                let id = ServerId(index);
                report.outputs += self.dispatch_server(id, budget_end);
                self.core_mut().end_turn(id);
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

    fn core(&self) -> &ClientCore<Callback> {
        self.core.as_ref().expect("no server was added")
    }

    fn core_mut(&mut self) -> &mut ClientCore<Callback> {
        self.core.as_mut().expect("no server was added")
    }

    /// Drains a server's outputs: opens and drops its transport, runs callbacks and
    /// listeners.
    fn dispatch_server(&mut self, id: ServerId, budget_end: Instant) -> u64 {
        let Some(core) = self.core.as_mut() else {
            return 0;
        };
        let server = &mut self.servers[id.0];
        let mut count = 0u64;
        // Listeners run until the budget is spent; one slow listener call must not be
        // followed by dozens more before the sockets are read again (Asterisk cuts a
        // reader that stalls for 100 ms), so the clock is read after every call.
        // Outputs other than events (connects, completions, state changes) are drained
        // while they come next; one behind events (outputs keep wire order) waits for
        // them, over the next ticks, rather than the budget being overrun.
        let mut spent = Instant::now() >= budget_end;
        loop {
            if spent && core.queued_events(id) > 0 && core.next_is_event(id) {
                break;
            }
            let Some(output) = core.poll_server(id) else {
                break;
            };
            count += 1;
            match output {
                ClientOutput::Connect(_) => match server.destination.clone() {
                    Destination::Address(addr) => {
                        open_transport(self.poll.registry(), server, core, id, addr);
                    }
                    Destination::Named(endpoint) => {
                        drop_transport(self.poll.registry(), server);
                        let generation = core.node(id).generation();
                        server.resolving = Some(generation);
                        let resolver = self.options.resolver.clone();
                        let done = self.resolved.0.clone();
                        let waker = self.waker.clone();
                        let spawned = std::thread::Builder::new()
                            .name("ami-resolve".into())
                            .spawn(move || {
                                let result = match resolver {
                                    Some(resolver) => resolve(&*resolver, &endpoint),
                                    None => Err(EndpointError::NoResolver {
                                        host: endpoint.host.clone(),
                                    }),
                                };
                                let _ = done.send((id.0, generation, result));
                                let _ = waker.wake();
                            });
                        if let Err(error) = spawned {
                            server.resolving = None;
                            core.handle_transport_error(id, Instant::now(), &error);
                        }
                    }
                },
                ClientOutput::Health { from, to, .. } => {
                    tracing::debug!(server_key = %server.key, %from, %to, "health");
                    self.listeners.dispatch_health(&server.key, from, to);
                }
                ClientOutput::Event(event) => {
                    if self.listeners.has_event_listeners() {
                        self.listeners.dispatch_event(&server.key, event);
                        // The budget bounds listeners' time; a sink alone only moves
                        // the event, so its events are all handed over in this tick
                        // (on a busy machine a wall-clock budget would otherwise be
                        // spent waiting for a CPU, and the queue overflow).
                        if self.listeners.has_listeners() {
                            spent = Instant::now() >= budget_end;
                        }
                    }
                }
                ClientOutput::Completed {
                    payload,
                    completion,
                    ..
                } => {
                    let Completion {
                        action_id, result, ..
                    } = *completion;
                    if catch_unwind(AssertUnwindSafe(|| payload.complete(result))).is_err() {
                        self.stats.callback_panics += 1;
                        tracing::error!(server_key = %server.key, action_id = %action_id, "completion callback panicked");
                    }
                }
                ClientOutput::State { from, to, .. } => {
                    self.listeners.dispatch_state(&server.key, from, to)
                }
                ClientOutput::CallEnded { call, .. } => {
                    self.listeners.dispatch_call(&server.key, &call)
                }
                ClientOutput::Disconnect { reason, .. } => {
                    tracing::info!(server_key = %server.key, %reason, "connection closed");
                    drop_transport(self.poll.registry(), server);
                }
            }
        }
        count
    }

    /// Connects the servers whose addresses resolver threads found; a failed lookup
    /// fails its attempt (retried with backoff). Answers for an attempt that ended
    /// meanwhile are ignored.
    fn take_resolved(&mut self, now: Instant) {
        while let Ok((index, generation, result)) = self.resolved.1.try_recv() {
            let Some(core) = self.core.as_mut() else {
                return;
            };
            let (server, id) = (&mut self.servers[index], ServerId(index));
            let node = core.node(id);
            let current = server.resolving == Some(generation)
                && node.generation() == generation
                && node.state() == State::Connecting;
            if !current {
                continue;
            }
            server.resolving = None;
            match result {
                Ok(addr) => open_transport(self.poll.registry(), server, core, id, addr),
                Err(error) => core.handle_transport_error(id, now, &error),
            }
        }
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
                    let now = Instant::now();
                    let callback = Callback::Submitted(on_complete);
                    if let Err(Refused { error, payload }) =
                        self.core_mut().send(id, now, action, callback)
                    {
                        self.stats.submissions_refused += 1;
                        if let Callback::Submitted(on_complete) = payload {
                            on_complete(Err(SubmitError::Refused(error)));
                        }
                    }
                }
                Ok(Submission::SendRouted {
                    route,
                    action,
                    on_complete,
                }) => self.take_routed(route.as_ref(), action, on_complete),
                Ok(Submission::Close { server }) => {
                    if let Some(id) = self.server_id(&server) {
                        self.close(id);
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Sends a routed submission: the server's key goes to the callback with the
    /// outcome.
    fn take_routed(
        &mut self,
        route: Option<&Strategy<String>>,
        action: Action,
        on_complete: RoutedCallback,
    ) {
        let now = Instant::now();
        let server = match self.core_mut().select_with(route, now) {
            Ok(id) => id,
            Err(none) => {
                self.stats.submissions_refused += 1;
                on_complete(None, Err(SubmitError::NoServer(none)));
                return;
            }
        };
        let key = self.servers[server.0].key.clone();
        let callback = Callback::Submitted(Box::new({
            let key = key.clone();
            move |result| on_complete(Some(&key), result)
        }));
        if let Err(Refused { error, payload }) = self.core_mut().send(server, now, action, callback)
        {
            self.stats.submissions_refused += 1;
            if let Callback::Submitted(on_complete) = payload {
                on_complete(Err(SubmitError::Refused(error)));
            }
        }
    }

    /// Ticks until `id` is logged in, at most `max_wait`. An idle server is opened
    /// first (lazy open).
    ///
    /// The wait follows [`ami_cluster::Readiness`], the rule both drivers share: it
    /// goes on through failed attempts that retrying can fix (refused or reset
    /// connections, timeouts, a lost session) and ends at once with
    /// [`WaitError::NotReady`] when waiting cannot help (closed by the application,
    /// circuit open, credentials refused). When `max_wait` runs out it returns
    /// [`WaitError::TimedOut`] with the last attempt's failure.
    pub fn wait_ready(&mut self, id: ServerId, max_wait: Duration) -> Result<(), WaitError> {
        let deadline = Instant::now() + max_wait;
        self.core_mut().open_if_idle(id, Instant::now());
        loop {
            match self.core().readiness(id) {
                Readiness::Ready => return Ok(()),
                Readiness::Failed(why) => return Err(WaitError::NotReady(why)),
                Readiness::Pending => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut {
                    waited: max_wait,
                    last: self.core().last_failure(id),
                });
            }
            self.tick_all((deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Sends an action and ticks until it completes (for simple programs and tests).
    /// The action's own deadline bounds the wait; a lost connection ends it with
    /// `ConnectionClosed`.
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

/// The server keys a strategy names.
fn named_keys(strategy: &Strategy<String>) -> Vec<&String> {
    match strategy {
        Strategy::Explicit(key) => vec![key],
        Strategy::Failover(keys) => keys.iter().collect(),
        Strategy::RoundRobin | Strategy::HealthAware => Vec::new(),
    }
}

/// Reads a ready server until `WouldBlock`, its end, or the read budget.
///
/// Not until a short read: that one found the socket drained, but while its bytes are
/// parsed more arrive when the server is ahead, and the next read takes them. Stopping
/// at short reads (tried in `b5dea2a`) saved a `recvfrom` per wake-up against a quiet
/// Asterisk, but cut the reading to one socket buffer per tick when the client was
/// behind, and Asterisk then cut the session (its 100 ms `writetimeout`) or answered
/// heartbeats too late.
fn read_server(
    server: &mut Server,
    core: &mut ClientCore<Callback>,
    id: ServerId,
    buf: &mut [u8],
    budget: usize,
    now: Instant,
) -> u64 {
    if !server.read_ready || !server.transport_up {
        return 0;
    }
    // Backpressure before loss: while the queue is half full, let the listeners drain
    // it (for a bounded time) instead of reading more.
    let node = core.node(id);
    if node.queued_events() >= node.config().event_queue_capacity.div_ceil(2) {
        let since = *server.read_paused_since.get_or_insert(now);
        if now.saturating_duration_since(since) < MAX_READ_PAUSE {
            return 0;
        }
    } else {
        server.read_paused_since = None;
    }
    let Some(transport) = server.transport.as_mut() else {
        server.read_ready = false;
        return 0;
    };
    let mut total = 0u64;
    loop {
        if total as usize >= budget {
            // Still readable: read again next tick without waiting for an event.
            return total;
        }
        match transport.read(buf) {
            Ok(0) => {
                core.handle_eof(id, now);
                server.read_ready = false;
                return total;
            }
            Ok(n) => {
                total += n as u64;
                core.handle_data(id, now, &buf[..n]);
                if core.node(id).state() == State::Closed {
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
                core.handle_transport_error(id, now, &error);
                server.read_ready = false;
                return total;
            }
        }
    }
}

/// Starts the non-blocking connect the core asked for (`ClientOutput::Connect`): a new
/// socket registered under the server's token, wrapped in TLS if configured. A
/// failure is reported to the core, which retries after its backoff.
fn open_transport(
    registry: &Registry,
    server: &mut Server,
    core: &mut ClientCore<Callback>,
    id: ServerId,
    addr: SocketAddr,
) {
    // A `Connect` follows the previous connection's `Disconnect`, so there is no
    // transport left; drop one anyway rather than leak a registration.
    drop_transport(registry, server);
    if core.node(id).state() == State::Closed {
        // The attempt ended before its socket was opened (closed by the application).
        return;
    }
    let now = Instant::now();
    let opened = TcpStream::connect(addr)
        .and_then(|stream| wrap(server, stream))
        .and_then(|mut transport| {
            let interest = Interest::READABLE | Interest::WRITABLE;
            registry.register(transport.socket(), Token(id.0), interest)?;
            Ok(transport)
        });
    match opened {
        Ok(transport) => server.transport = Some(transport),
        Err(error) => core.handle_transport_error(id, now, &error),
    }
}

/// Deregisters and drops a server's transport, if any.
fn drop_transport(registry: &Registry, server: &mut Server) {
    if let Some(mut transport) = server.transport.take() {
        let _ = registry.deregister(transport.socket());
    }
    server.transport_up = false;
    server.read_ready = false;
    server.write_blocked = false;
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
fn confirm_connect(
    server: &mut Server,
    core: &mut ClientCore<Callback>,
    id: ServerId,
    now: Instant,
) {
    let Some(transport) = server.transport.as_mut() else {
        return;
    };
    let socket = transport.socket();
    match socket.take_error() {
        Ok(Some(error)) | Err(error) => {
            core.handle_transport_error(id, now, &error);
            return;
        }
        Ok(None) => {}
    }
    match socket.peer_addr() {
        Ok(_) => {
            let _ = socket.set_nodelay(true);
            server.transport_up = true;
            core.handle_connected(id, now);
        }
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
        Err(error) => core.handle_transport_error(id, now, &error),
    }
}

/// Writes what the connection has queued until the socket would block. A partial
/// write leaves the rest at the head of the connection's buffer.
fn write_server(
    server: &mut Server,
    core: &mut ClientCore<Callback>,
    id: ServerId,
    now: Instant,
) -> u64 {
    if !server.transport_up {
        return 0;
    }
    let Some(transport) = server.transport.as_mut() else {
        return 0;
    };
    let mut total = 0u64;
    if let Err(error) = transport.flush() {
        core.handle_transport_error(id, now, &error);
        return 0;
    }
    while !core.poll_transmit(id).is_empty() {
        match transport.write(core.poll_transmit(id)) {
            Ok(0) => break,
            Ok(n) => {
                core.advance_transmit(id, n);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                server.write_blocked = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                core.handle_transport_error(id, now, &error);
                break;
            }
        }
    }
    total
}
