//! [`Client`]: a cloneable, `Send` handle to one server's connection task.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ami_cluster::{Health, Node, NodeMetrics, Policy};
use ami_proto::action::{self, Action, Originate};
use ami_proto::{Config, Filter, Reply, State};
use futures_channel::{mpsc, oneshot};
use futures_util::SinkExt;
use futures_util::future::{Either, select};

use crate::error::ClientError;
use crate::events::{DEFAULT_STREAM_CAPACITY, EventStream};
use crate::runtime::{BoxFuture, Runtime};
use crate::task::{self, Command, Shared};

/// How to run one server.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Connection settings (server key, credentials, limits, timeouts).
    pub config: Config,
    /// Where the server listens (an IP address: no DNS in the connection task).
    pub addr: SocketAddr,
    /// Reconnect policy (backoff, circuit breaker, stability window).
    pub policy: Policy,
    /// Jitter seed (`None`: random).
    pub seed: Option<u64>,
    /// Commands (sends, closes) queued for the task at most (default 1024): a full
    /// queue makes `send` wait, never grow.
    pub command_capacity: usize,
    /// Events each stream buffers before it drops the oldest (default 10,000).
    pub stream_capacity: usize,
}

impl ClientSpec {
    /// A spec with the default policy and capacities.
    pub fn new(config: Config, addr: SocketAddr) -> ClientSpec {
        ClientSpec {
            config,
            addr,
            policy: Policy::default(),
            seed: None,
            command_capacity: 1024,
            stream_capacity: DEFAULT_STREAM_CAPACITY,
        }
    }
}

type Sleeper = Arc<dyn Fn(Instant) -> BoxFuture<()> + Send + Sync>;
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A handle to one server: clone it freely, send from any task.
///
/// The server's connection runs in a task of its own (see the crate docs); the handle
/// only talks to it. The connection opens on the first [`Client::send`] (lazy; that
/// send is refused with `NotReady`), on [`Client::connect`] or [`Client::wait_ready`].
/// When the last handle is dropped the task logs off and ends.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    sleep_until: Sleeper,
    now: Clock,
    stream_capacity: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.shared.key)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Spawns the connection task of `spec` on `rt` (nothing connects yet).
    pub fn spawn<R: Runtime>(rt: R, spec: ClientSpec) -> Client {
        let seed = spec.seed.unwrap_or_else(random_u64);
        let node = Node::new(spec.config, random_u64() as u32, seed, spec.policy);
        let shared = Arc::new(Shared::new(&node));
        let (commands, inbox) = mpsc::channel(spec.command_capacity.max(1));
        rt.spawn(Box::pin(task::run(
            rt.clone(),
            node,
            spec.addr,
            inbox,
            shared.clone(),
        )));
        let (timer, clock) = (rt.clone(), rt);
        Client {
            commands,
            shared,
            sleep_until: Arc::new(move |at| timer.sleep_until(at)),
            now: Arc::new(move || clock.now()),
            stream_capacity: spec.stream_capacity,
        }
    }

    /// The server's key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Sends an action and waits for its completion: the reply (response plus list
    /// events, or the `OriginateResponse`) or a typed error. Fails at once with
    /// [`ClientError::Refused`] when the server is not logged in. Dropping the future
    /// abandons the reply; the action still completes in the task and is forgotten.
    pub async fn send(&self, action: impl Into<Action>) -> Result<Reply, ClientError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Send {
            action: action.into(),
            reply,
        };
        self.commands
            .clone()
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
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
        self.commands
            .clone()
            .send(Command::Open)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Opens the server and waits until it is logged in, at most `timeout`. Failed
    /// attempts are retried by the task meanwhile (backoff, circuit), so this waits
    /// through them; `ami-mio`'s `wait_ready` instead returns at the first failed
    /// attempt.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = (self.now)() + timeout;
        self.connect().await?;
        loop {
            let (tx, rx) = oneshot::channel();
            self.shared
                .health_waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(tx);
            if self.health() == Health::Healthy {
                return Ok(());
            }
            if self.shared.finished.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            match select(rx, (self.sleep_until)(deadline)).await {
                Either::Left(_) => {}
                Either::Right(_) => {
                    return if self.health() == Health::Healthy {
                        Ok(())
                    } else {
                        Err(ClientError::TimedOut)
                    };
                }
            }
        }
    }

    /// The server's health.
    pub fn health(&self) -> Health {
        *self
            .shared
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of the current connection.
    pub fn state(&self) -> State {
        *self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The server's metrics (kept across reconnects).
    pub fn metrics(&self) -> NodeMetrics {
        *self
            .shared
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Actions in flight whose reply slot the task holds (for leak checks).
    pub fn pending_replies(&self) -> usize {
        self.shared.pending_replies.load(Ordering::Relaxed)
    }

    /// Whether the connection task has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// A stream of the events that pass `filter`, buffered up to the spec's
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
        self.shared.subscribers.subscribe(filter, capacity)
    }

    /// Live event streams of this server.
    pub fn stream_count(&self) -> usize {
        self.shared.subscribers.len()
    }

    /// Logs off (flushes, `Logoff`, waits for `Goodbye` up to the close deadline) and
    /// ends the task; actions still in flight complete first.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self
            .commands
            .clone()
            .send(Command::Close { done })
            .await
            .is_ok()
        {
            let _ = closed.await;
        }
    }
}

/// A random number (per call), for ActionID instance tags and jitter seeds.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}
