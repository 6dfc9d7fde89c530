//! [`Client`]: a cloneable, `Send` handle to one server of a client task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ami_cluster::{
    ClientCore, ClusterConfig, DialerConfig, DialerStatus, Health, NodeMetrics, NotReady, Policy,
    ServerId,
};
use ami_proto::action::{self, Action, Originate};
use ami_proto::{Config, Filter, Reply, State};
use futures_channel::oneshot;

use crate::calls::{CallStream, DEFAULT_CALL_CAPACITY};
use crate::error::ClientError;
use crate::events::{DEFAULT_STREAM_CAPACITY, EventStream};
use crate::runtime::Runtime;
use crate::task::{self, HandleToken, Shared, Until, Waiter};

/// How to run one server.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Connection settings (server key, credentials, limits, timeouts, memory budget).
    /// In a cluster, every server charges the first server's `config.budget`: one cap
    /// for the whole client (see [`ami_proto::budget`]).
    pub config: Config,
    /// Where the server listens (an IP address: no DNS in the connection task).
    pub addr: SocketAddr,
    /// Reconnect policy (backoff, circuit breaker, stability window).
    pub policy: Policy,
    /// Jitter seed (`None`: random). In a cluster, the first server's seed seeds them
    /// all (each server gets its own stream from it).
    pub seed: Option<u64>,
    /// Events each stream buffers before it drops the oldest (default 10,000).
    pub stream_capacity: usize,
    /// Track this server's calls and pace its Originates (see
    /// [`ami_cluster::dialer`]); `None` (the default): neither. Ended calls come out
    /// of [`Client::calls`].
    pub calls: Option<DialerConfig>,
}

impl ClientSpec {
    /// A spec with the default policy and capacities.
    pub fn new(config: Config, addr: SocketAddr) -> ClientSpec {
        ClientSpec {
            config,
            addr,
            policy: Policy::default(),
            seed: None,
            stream_capacity: DEFAULT_STREAM_CAPACITY,
            calls: None,
        }
    }

    /// The spec with its calls tracked and paced by `config`.
    pub fn with_calls(mut self, config: DialerConfig) -> ClientSpec {
        self.calls = Some(config);
        self
    }
}

/// Spawns one task for the servers of `specs` and returns the handle of each, in
/// order. Duplicate keys and an empty list are refused.
pub(crate) fn spawn_all<R: Runtime>(
    rt: R,
    specs: Vec<ClientSpec>,
) -> Result<Vec<Client>, ami_cluster::ClusterError> {
    let first = specs.first().ok_or(ami_cluster::ClusterError::Empty)?;
    let seed = first.seed.unwrap_or_else(ami_proto::rng::random_seed);
    let mut core = ClientCore::new(ClusterConfig {
        servers: vec![first.config.clone()],
        default: None,
        policy: first.policy,
        seed,
        instance: ami_proto::rng::random_seed() as u32,
        memory: first.config.budget.clone(),
    })?;
    for spec in &specs[1..] {
        core.add_with_policy(spec.config.clone(), spec.policy)?;
    }
    for (index, spec) in specs.iter().enumerate() {
        if let Some(calls) = spec.calls {
            core.track_calls(ServerId(index), calls);
        }
    }
    let clock = rt.clone();
    let shared = Arc::new(Shared::new(core, Box::new(move || clock.now())));
    let token = Arc::new(HandleToken(shared.clone()));
    let addrs = specs.iter().map(|s| s.addr).collect();
    rt.spawn(Box::pin(task::run(
        rt.clone(),
        addrs,
        shared.clone(),
        Arc::downgrade(&token),
    )));
    Ok(specs
        .iter()
        .enumerate()
        .map(|(i, spec)| Client {
            shared: shared.clone(),
            _handles: token.clone(),
            id: ServerId(i),
            stream_capacity: spec.stream_capacity,
        })
        .collect())
}

/// A handle to one server: clone it freely, send from any task.
///
/// The server's connection runs in the client's task (see the crate docs); the
/// handle reaches the shared core directly. The connection opens on the first
/// [`Client::send`] (lazy; that send is refused with `NotReady`), on
/// [`Client::connect`] or [`Client::wait_ready`]. When the last handle of a task is
/// dropped the task logs off and ends.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Kept, never read: the task ends (after a logoff) once every handle dropped it.
    _handles: Arc<HandleToken>,
    id: ServerId,
    stream_capacity: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.key())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Spawns the task of a single server on `rt` (nothing connects yet).
    pub fn spawn<R: Runtime>(rt: R, spec: ClientSpec) -> Client {
        spawn_all(rt, vec![spec])
            .expect("one server is a valid cluster")
            .remove(0)
    }

    /// The server's key.
    pub fn key(&self) -> String {
        self.shared.lock().core.key(self.id).to_owned()
    }

    /// The server's index in its task (registry order).
    pub fn server_id(&self) -> ServerId {
        self.id
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn stream_capacity(&self) -> usize {
        self.stream_capacity
    }

    /// Sends an action and waits for its completion: the reply (response plus list
    /// events, or the `OriginateResponse`) or a typed error. Fails at once with
    /// [`ClientError::Refused`] when the server is not logged in (or the core's
    /// limits refuse it). Dropping the future abandons the reply; the action still
    /// completes in the core and its slot is freed then.
    pub async fn send(&self, action: impl Into<Action>) -> Result<Reply, ClientError> {
        let answer = self.submit(action.into())?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    /// Puts the action into the core; the receiver gets its completion.
    fn submit(
        &self,
        action: Action,
    ) -> Result<oneshot::Receiver<Result<Reply, ClientError>>, ClientError> {
        if self.is_closed() {
            // The same answer as a closed server of a running task gives.
            return Err(ClientError::Refused(ami_proto::SendError::NotReady {
                state: State::Closed,
            }));
        }
        let (reply, answer) = oneshot::channel();
        let now = (self.shared.now)();
        let sent = self.shared.lock().core.send(self.id, now, action, reply);
        // Also after a refusal: a lazy open needs the task to connect.
        self.shared.notify();
        sent.map_err(|refused| ClientError::Refused(refused.error))?;
        Ok(answer)
    }

    /// `Ping`.
    pub async fn ping(&self) -> Result<Reply, ClientError> {
        self.send(action::Ping).await
    }

    /// `Command`: the CLI output lines (either format).
    pub async fn command(&self, command: &str) -> Result<Vec<String>, ClientError> {
        let reply = self.send(action::Command::new(command)).await?;
        Ok(reply.output().into_iter().map(str::to_owned).collect())
    }

    /// `Originate`; an async one completes with its `OriginateResponse` in
    /// `Reply::events`.
    pub async fn originate(&self, originate: Originate) -> Result<Reply, ClientError> {
        self.send(originate).await
    }

    /// `QueueStatus`: the list items in `Reply::events`.
    pub async fn queue_status(&self) -> Result<Reply, ClientError> {
        self.send(action::QueueStatus::default()).await
    }

    /// `CoreShowChannels`: one `CoreShowChannel` item per channel.
    pub async fn core_show_channels(&self) -> Result<Reply, ClientError> {
        self.send(action::CoreShowChannels).await
    }

    /// `GetVar`: the variable's value (global when `channel` is `None`).
    pub async fn get_var(
        &self,
        channel: Option<&str>,
        variable: &str,
    ) -> Result<Option<String>, ClientError> {
        let mut action = Action::new("GetVar").header("Variable", variable);
        if let Some(channel) = channel {
            action = action.header("Channel", channel);
        }
        let reply = self.send(action).await?;
        Ok(reply.response.get("Value").map(str::to_owned))
    }

    /// Opens the server now (eager open); a no-op when it is open.
    pub async fn connect(&self) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let now = (self.shared.now)();
        self.shared.lock().core.open(self.id, now);
        self.shared.notify();
        Ok(())
    }

    /// Opens the server if it was never opened and waits until it is logged in, at
    /// most `timeout`. The wait follows [`ami_cluster::Readiness`], the rule both
    /// drivers share: it goes on through failed attempts that retrying can fix and
    /// ends at once with [`ClientError::NotReady`] when waiting cannot help (closed
    /// by the application, circuit open, credentials refused); when `timeout` runs
    /// out it returns [`ClientError::TimedOut`] with the last attempt's failure.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        // A timeout too large for the clock means no deadline.
        let deadline = (self.shared.now)().checked_add(timeout);
        self.wait(Until::Ready { deadline }, true).await
    }

    /// Registers a waiter with the task, unless the wait is decided already.
    async fn wait(&self, until: Until, open: bool) -> Result<(), ClientError> {
        let answer = {
            let mut inner = self.shared.lock();
            // Read under the lock: the task sets it before it takes the lock to answer
            // the last waiters, so a waiter is either answered or not added.
            if self.is_closed() {
                return match until {
                    Until::Closed | Until::Finished => Ok(()),
                    // The task ends only when every server was closed.
                    Until::Ready { .. } => Err(ClientError::NotReady(NotReady::Stopped)),
                };
            }
            let now = (self.shared.now)();
            if open {
                inner.core.open_if_idle(self.id, now);
            }
            if let Some(answer) = task::decide(&inner.core, self.id, until, now) {
                return answer;
            }
            let (reply, answer) = oneshot::channel();
            inner.waiters.push(Waiter {
                server: self.id,
                until,
                reply,
            });
            answer
        };
        self.shared.notify();
        answer.await.unwrap_or(Err(ClientError::Closed))
    }

    /// The server's health.
    pub fn health(&self) -> Health {
        self.shared.lock().core.node(self.id).health()
    }

    /// The state of the current connection.
    pub fn state(&self) -> State {
        self.shared.lock().core.node(self.id).state()
    }

    /// The server's metrics (kept across reconnects).
    pub fn metrics(&self) -> NodeMetrics {
        self.shared.lock().core.metrics(self.id)
    }

    /// Actions in flight whose completion slot the task holds, over every server of
    /// the task (for leak checks).
    pub fn pending_replies(&self) -> usize {
        self.shared.lock().core.pending()
    }

    /// Whether the client's task has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// A stream of this server's events that pass `filter`, buffered up to the spec's
    /// `stream_capacity` (drop-oldest, counted).
    pub fn events(&self, filter: Filter) -> EventStream {
        self.events_with_capacity(filter, self.stream_capacity)
    }

    /// Every event of this server.
    pub fn all_events(&self) -> EventStream {
        self.events(Filter::any())
    }

    /// A stream with its own buffer size.
    pub fn events_with_capacity(&self, filter: Filter, capacity: usize) -> EventStream {
        let filter = filter.server(self.key());
        self.shared.subscribers.subscribe(filter, capacity)
    }

    /// A stream of this server's ended calls (its spec must set
    /// [`calls`](ClientSpec::calls); otherwise the stream stays empty), buffered up to
    /// [`DEFAULT_CALL_CAPACITY`] records (drop-oldest, counted).
    pub fn calls(&self) -> CallStream {
        self.shared
            .calls
            .subscribe(Some(self.id), DEFAULT_CALL_CAPACITY)
    }

    /// What this server's dialer has seen and done (`None`: its calls are not tracked).
    pub fn dialer_status(&self) -> Option<DialerStatus> {
        self.shared.lock().core.dialer_status(self.id)
    }

    /// Live event streams of the task.
    pub fn stream_count(&self) -> usize {
        self.shared.subscribers.len()
    }

    /// Logs off (flushes, `Logoff`, waits for `Goodbye` up to the close deadline);
    /// actions still in flight complete first. The server does not reconnect until
    /// [`Client::connect`]. When every server of the task is closed, the task ends.
    pub async fn close(&self) {
        if self.is_closed() {
            return;
        }
        let now = (self.shared.now)();
        self.shared.lock().core.close(self.id, now);
        self.shared.notify();
        let _ = self.wait(Until::Closed, false).await;
        // The task ends once every server is closed; wait for it if it will.
        let all_closed = {
            let inner = self.shared.lock();
            (0..inner.core.len()).all(|i| {
                let node = inner.core.node(ServerId(i));
                !node.is_idle() && !node.is_running()
            })
        };
        if all_closed {
            let _ = self.wait(Until::Finished, false).await;
        }
    }
}
