//! The connection task: one per server, generic over the [`Runtime`].
//!
//! It owns the transport and the server's [`Node`] and never awaits one thing at a
//! time: each turn it waits for whichever comes first of a finished connect, bytes to
//! read, room to write what the node queued, a command from a handle, or the node's
//! next deadline. Reads and commands take turns going first, so a flood cannot starve
//! sends, and deadlines are checked after every wake-up, so a busy socket cannot hold
//! off heartbeats. Events go to the subscribers' buffers, which never block.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Instant;

use ami_cluster::{Health, Node, NodeMetrics, NodeOutput};
use ami_proto::{Action, Event, Output, Reply, State};
use futures_channel::{mpsc, oneshot};
use futures_util::io::{AsyncReadExt, ReadHalf, WriteHalf};
use futures_util::{AsyncRead, AsyncWrite, StreamExt};

use crate::error::ClientError;
use crate::events::Subscribers;
use crate::runtime::{BoxFuture, BoxTransport, Runtime};

/// The reply slot of one action.
pub(crate) type ReplySender = oneshot::Sender<Result<Reply, ClientError>>;

/// What a handle asks of its task.
pub(crate) enum Command {
    /// Send an action; answer on `reply`.
    Send { action: Action, reply: ReplySender },
    /// Open the server (eager open).
    Open,
    /// Log off and end the task; `done` fires when the session is closed.
    Close { done: oneshot::Sender<()> },
}

/// What the task publishes for the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) key: String,
    pub(crate) health: Mutex<Health>,
    pub(crate) state: Mutex<State>,
    pub(crate) metrics: Mutex<NodeMetrics>,
    pub(crate) subscribers: Subscribers,
    /// Woken at every health change.
    pub(crate) health_waiters: Mutex<Vec<oneshot::Sender<()>>>,
    /// The task has ended.
    pub(crate) finished: AtomicBool,
    /// Reply slots the task holds (actions in flight).
    pub(crate) pending_replies: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(node: &Node) -> Shared {
        Shared {
            key: node.key().to_owned(),
            health: Mutex::new(node.health()),
            state: Mutex::new(node.state()),
            metrics: Mutex::new(node.metrics()),
            subscribers: Subscribers::default(),
            health_waiters: Mutex::new(Vec::new()),
            finished: AtomicBool::new(false),
            pending_replies: AtomicUsize::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns `Pending` once (waking itself at once), so that other tasks of the same
/// thread get a turn.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What woke the task.
enum Wake {
    Connected(io::Result<BoxTransport>),
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Command(Option<Command>),
    Timer,
}

/// The task's state besides the node.
struct Task<R: Runtime> {
    rt: R,
    node: Node,
    addr: SocketAddr,
    shared: Arc<Shared>,
    reader: Option<ReadHalf<BoxTransport>>,
    writer: Option<WriteHalf<BoxTransport>>,
    connecting: Option<BoxFuture<io::Result<BoxTransport>>>,
    timer: Option<(Instant, BoxFuture<()>)>,
    replies: HashMap<String, ReplySender>,
    close_waiters: Vec<oneshot::Sender<()>>,
    stopping: bool,
    events: Vec<Event>,
}

/// Runs a server's connection until it is closed by a handle, or every handle is gone.
pub(crate) async fn run<R: Runtime>(
    rt: R,
    node: Node,
    addr: SocketAddr,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let mut task = Task {
        rt,
        node,
        addr,
        shared,
        reader: None,
        writer: None,
        connecting: None,
        timer: None,
        replies: HashMap::new(),
        close_waiters: Vec::new(),
        stopping: false,
        events: Vec::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut commands_first = false;
    let mut commands_open = true;
    loop {
        if task.drain() > 0 {
            // Consumers may share this thread (a current-thread runtime): let them run
            // before the next read, or their buffers would overflow while data keeps
            // arriving. Never a wait: the task is woken again at once.
            YieldNow(false).await;
        }
        if task.stopping && task.node.state() == State::Closed && !task.node.has_pending_outputs() {
            break;
        }
        let want = task.node.poll_timeout();
        if task.timer.as_ref().map(|t| t.0) != want {
            task.timer = want.map(|at| (at, task.rt.sleep_until(at)));
        }
        commands_first = !commands_first;
        let wake = {
            let Task {
                node,
                reader,
                writer,
                connecting,
                timer,
                ..
            } = &mut task;
            let commands = &mut commands;
            let buf = &mut buf;
            let commands_open = commands_open;
            futures_util::future::poll_fn(|cx| {
                if let Some(connect) = connecting.as_mut() {
                    if let Poll::Ready(result) = connect.as_mut().poll(cx) {
                        *connecting = None;
                        return Poll::Ready(Wake::Connected(result));
                    }
                }
                let transmit = node.poll_transmit();
                if let (false, Some(w)) = (transmit.is_empty(), writer.as_mut()) {
                    if let Poll::Ready(result) = Pin::new(w).poll_write(cx, transmit) {
                        return Poll::Ready(Wake::Wrote(result));
                    }
                }
                for turn in 0..2 {
                    if (turn == 0) == commands_first {
                        if !commands_open {
                            continue;
                        }
                        if let Poll::Ready(command) = commands.poll_next_unpin(cx) {
                            return Poll::Ready(Wake::Command(command));
                        }
                    } else if let Some(r) = reader.as_mut() {
                        if let Poll::Ready(result) = Pin::new(r).poll_read(cx, buf) {
                            return Poll::Ready(Wake::Read(result));
                        }
                    }
                }
                if let Some((_, sleep)) = timer.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        *timer = None;
                        return Poll::Ready(Wake::Timer);
                    }
                }
                Poll::Pending
            })
            .await
        };
        let now = task.rt.now();
        match wake {
            Wake::Connected(Ok(stream)) => {
                let (r, w) = stream.split();
                task.reader = Some(r);
                task.writer = Some(w);
                task.node.handle_connected(now);
            }
            Wake::Connected(Err(error)) => task.node.handle_transport_error(now, &error),
            Wake::Read(Ok(0)) => {
                task.reader = None;
                task.node.handle_eof(now);
            }
            Wake::Read(Ok(n)) => task.node.handle_data(now, &buf[..n]),
            Wake::Read(Err(error)) => {
                task.reader = None;
                task.node.handle_transport_error(now, &error);
            }
            Wake::Wrote(Ok(n)) => task.node.advance_transmit(n),
            Wake::Wrote(Err(error)) => {
                task.writer = None;
                task.node.handle_transport_error(now, &error);
            }
            Wake::Command(Some(command)) => task.command(now, command),
            Wake::Command(None) => {
                // Every handle is gone: log off and end.
                commands_open = false;
                task.stopping = true;
                task.node.close(now);
            }
            Wake::Timer => {}
        }
        if task.node.poll_timeout().is_some_and(|at| at <= now) {
            task.node.handle_timeout(now);
        }
    }
    task.finish();
}

impl<R: Runtime> Task<R> {
    fn command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Send { action, reply } => match self.node.send(now, action) {
                Ok(action_id) => {
                    self.replies.insert(action_id, reply);
                }
                Err(error) => {
                    let _ = reply.send(Err(ClientError::Refused(error)));
                }
            },
            Command::Open => self.node.open(now),
            Command::Close { done } => {
                self.stopping = true;
                self.close_waiters.push(done);
                self.node.close(now);
            }
        }
    }

    /// Takes every output of the node and publishes the result; returns the number of
    /// events handed to the subscribers.
    fn drain(&mut self) -> usize {
        let mut health_changed = false;
        let mut dispatched = 0;
        while let Some(output) = self.node.poll() {
            match output {
                NodeOutput::Connect => {
                    self.reader = None;
                    self.writer = None;
                    self.connecting = Some(self.rt.connect(self.addr));
                }
                NodeOutput::Connection(Output::Event(event)) => self.events.push(event),
                NodeOutput::Connection(Output::Completed(done)) => {
                    // A dropped `send` future dropped its receiver: the reply goes nowhere.
                    if let Some(reply) = self.replies.remove(&done.action_id) {
                        let _ = reply.send(done.result.map_err(ClientError::Failed));
                    }
                }
                NodeOutput::Connection(Output::Closed(_)) => {
                    self.reader = None;
                    self.writer = None;
                    self.connecting = None;
                }
                NodeOutput::Health { .. } => health_changed = true,
                NodeOutput::Connection(_) | NodeOutput::Circuit(_) => {}
            }
            if self.events.len() >= 256 {
                dispatched += self.events.len();
                self.shared.subscribers.dispatch(&self.events);
                self.events.clear();
            }
        }
        if !self.events.is_empty() {
            dispatched += self.events.len();
            self.shared.subscribers.dispatch(&self.events);
            self.events.clear();
        }
        let shared = &self.shared;
        *lock(&shared.health) = self.node.health();
        *lock(&shared.state) = self.node.state();
        *lock(&shared.metrics) = self.node.metrics();
        shared
            .pending_replies
            .store(self.replies.len(), Ordering::Relaxed);
        if health_changed {
            for waiter in lock(&shared.health_waiters).drain(..) {
                let _ = waiter.send(());
            }
        }
        dispatched
    }

    fn finish(mut self) {
        // The core completed every action when the session closed; anything left was
        // never sent.
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(ClientError::Closed));
        }
        self.shared.pending_replies.store(0, Ordering::Relaxed);
        self.shared.finished.store(true, Ordering::Release);
        self.shared.subscribers.finish_all();
        for waiter in lock(&self.shared.health_waiters).drain(..) {
            let _ = waiter.send(());
        }
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
        tracing::debug!(server_key = %self.shared.key, "connection task ended");
    }
}
