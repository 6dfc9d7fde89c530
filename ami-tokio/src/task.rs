//! The connection task: one per client (a [`Client`](crate::Client) spawned alone, or
//! a [`ClusterClient`](crate::ClusterClient) with all its servers), generic over the
//! [`Runtime`].
//!
//! The task is an I/O pump around one [`ClientCore`], the same core `ami-mio` drives:
//! it owns the transports, the timer and the wake-ups, and nothing else. Handles reach
//! the core directly (it sits behind a mutex in [`Shared`]): a send puts the action
//! into the core, which refuses it at once or keeps a completion slot for its reply
//! sender, and wakes the task to write it. There is no command queue to fill up: the
//! core's own limits (`max_pending_actions`, the write buffer, the memory budget) are
//! the backpressure, and they refuse rather than wait.
//!
//! Each turn the task hands out the core's outputs (events to the streams' buffers,
//! which never block; completions to their reply senders; readiness to waiters), then
//! waits for whichever comes first: a finished connect, bytes to read on any server,
//! room to write what a server has queued, a wake-up from a handle, or the next
//! deadline. Everything that is ready is handled in the same pass, one read per
//! server, so a flooding server cannot starve the others.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use ami_cluster::{ClientCore, ClientOutput, NotReady, Readiness, ServerId};
use ami_proto::{Event, Reply, State};
use futures_channel::oneshot;
use futures_util::io::{AsyncReadExt, ReadHalf, WriteHalf};
use futures_util::task::AtomicWaker;
use futures_util::{AsyncRead, AsyncWrite};

use crate::calls::{CallRecord, CallSubscribers};
use crate::error::ClientError;
use crate::events::Subscribers;
use crate::runtime::{BoxFuture, BoxTransport, Runtime};

/// The reply slot of one action.
pub(crate) type ReplySender = oneshot::Sender<Result<Reply, ClientError>>;

/// What a waiter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// The server is ready (or cannot become so by waiting), at most until `deadline`
    /// (`None`: no deadline).
    Ready { deadline: Option<Instant> },
    /// The server's connection is closed and its outputs handed out.
    Closed,
    /// The task has ended.
    Finished,
}

/// A handle waiting for a server.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) server: ServerId,
    pub(crate) until: Until,
    pub(crate) reply: oneshot::Sender<Result<(), ClientError>>,
}

/// What handles and the task share: the core and the waiters behind one lock.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) core: ClientCore<ReplySender>,
    pub(crate) waiters: Vec<Waiter>,
}

/// Shared by the task and every handle.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    pub(crate) subscribers: Subscribers,
    /// The call streams (of servers whose calls are tracked).
    pub(crate) calls: CallSubscribers,
    /// Wakes the task: a handle changed something the task must act on.
    wake: AtomicWaker,
    woken: AtomicBool,
    /// The task has ended.
    pub(crate) finished: AtomicBool,
    /// The runtime's clock, for handles.
    pub(crate) now: Box<dyn Fn() -> Instant + Send + Sync>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        core: ClientCore<ReplySender>,
        now: Box<dyn Fn() -> Instant + Send + Sync>,
    ) -> Self {
        Shared {
            inner: Mutex::new(Inner {
                core,
                waiters: Vec::new(),
            }),
            subscribers: Subscribers::default(),
            calls: CallSubscribers::default(),
            wake: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            now,
        }
    }

    /// The core and the waiters.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the task to look at the core again (bytes to write, a server to open...).
    pub(crate) fn notify(&self) {
        self.woken.store(true, Ordering::Release);
        self.wake.wake();
    }
}

/// Held by every handle; when the last one goes, the task logs off and ends.
#[derive(Debug)]
pub(crate) struct HandleToken(pub(crate) Arc<Shared>);

impl Drop for HandleToken {
    fn drop(&mut self) {
        self.0.notify();
    }
}

/// Returns `Pending` once (waking itself at once), so that other tasks of the same
/// thread get a turn.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The I/O side of one server.
#[derive(Default)]
struct ServerIo {
    reader: Option<ReadHalf<BoxTransport>>,
    writer: Option<WriteHalf<BoxTransport>>,
    connecting: Option<BoxFuture<io::Result<BoxTransport>>>,
}

/// Runs the client until every handle is gone (then logs off) or every server was
/// closed by the application.
pub(crate) async fn run<R: Runtime>(
    rt: R,
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    handles: Weak<HandleToken>,
) {
    let mut io: Vec<ServerIo> = addrs.iter().map(|_| ServerIo::default()).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut timer: Option<(Instant, BoxFuture<()>)> = None;
    let mut events: Vec<Event> = Vec::new();
    let mut stopping = false;
    loop {
        let now = rt.now();
        let dispatched = {
            let mut inner = shared.lock();
            if !stopping && handles.strong_count() == 0 {
                // Every handle is gone: log off and end.
                stopping = true;
                inner.core.close_all(now);
            }
            let dispatched = drain(&rt, &mut inner, &mut io, &addrs, &shared, &mut events, now);
            if stopping_done(&inner, stopping) {
                drop(inner);
                break;
            }
            let want = next_wake(&inner);
            if timer.as_ref().map(|t| t.0) != want {
                timer = want.map(|at| (at, rt.sleep_until(at)));
            }
            dispatched
        };
        if dispatched > 0 {
            // Consumers may share this thread (a current-thread runtime): let them run
            // before the next read, or their buffers would overflow while data keeps
            // arriving. Never a wait: the task is woken again at once.
            YieldNow(false).await;
        }
        futures_util::future::poll_fn(|cx| pump(cx, &rt, &shared, &mut io, &mut buf, &mut timer))
            .await;
    }
    finish(&shared);
}

/// Whether the task is done: stopping (or every server closed by the application),
/// and nothing left open or to hand out.
fn stopping_done(inner: &Inner, stopping: bool) -> bool {
    let core = &inner.core;
    let all_stopped = (0..core.len())
        .map(ServerId)
        .all(|id| matches!(core.readiness(id), Readiness::Failed(NotReady::Stopped)));
    (stopping || all_stopped) && core.is_shut_down()
}

/// The next instant the task must wake: the core's deadline or a waiter's.
fn next_wake(inner: &Inner) -> Option<Instant> {
    let waiters = inner.waiters.iter().filter_map(|w| match w.until {
        Until::Ready { deadline } => deadline,
        Until::Closed | Until::Finished => None,
    });
    inner.core.poll_timeout().into_iter().chain(waiters).min()
}

/// One pass over every source of work; `Ready` once anything was handled.
fn pump<R: Runtime>(
    cx: &mut Context<'_>,
    rt: &R,
    shared: &Shared,
    io: &mut [ServerIo],
    buf: &mut [u8],
    timer: &mut Option<(Instant, BoxFuture<()>)>,
) -> Poll<()> {
    // Registered before the flag is read, so a notify in between is not lost.
    shared.wake.register(cx.waker());
    let mut progressed = shared.woken.swap(false, Ordering::AcqRel);
    let mut inner = shared.lock();
    let core = &mut inner.core;
    let now = rt.now();
    for (index, server) in io.iter_mut().enumerate() {
        let id = ServerId(index);
        if let Some(connect) = server.connecting.as_mut()
            && let Poll::Ready(result) = connect.as_mut().poll(cx)
        {
            server.connecting = None;
            progressed = true;
            match result {
                Ok(stream) => {
                    let (r, w) = stream.split();
                    server.reader = Some(r);
                    server.writer = Some(w);
                    core.handle_connected(id, now);
                }
                Err(error) => core.handle_transport_error(id, now, &error),
            }
        }
        while let Some(writer) = server.writer.as_mut() {
            let transmit = core.poll_transmit(id);
            if transmit.is_empty() {
                break;
            }
            match Pin::new(writer).poll_write(cx, transmit) {
                Poll::Ready(Ok(n)) => {
                    core.advance_transmit(id, n);
                    progressed = true;
                }
                Poll::Ready(Err(error)) => {
                    server.writer = None;
                    core.handle_transport_error(id, now, &error);
                    progressed = true;
                }
                Poll::Pending => break,
            }
        }
        if let Some(reader) = server.reader.as_mut()
            && let Poll::Ready(result) = Pin::new(reader).poll_read(cx, buf)
        {
            progressed = true;
            match result {
                Ok(0) => {
                    server.reader = None;
                    core.handle_eof(id, now);
                }
                Ok(n) => core.handle_data(id, now, &buf[..n]),
                Err(error) => {
                    server.reader = None;
                    core.handle_transport_error(id, now, &error);
                }
            }
        }
    }
    if let Some((_, sleep)) = timer.as_mut()
        && sleep.as_mut().poll(cx).is_ready()
    {
        *timer = None;
        progressed = true;
    }
    if core.poll_timeout().is_some_and(|at| at <= now) {
        core.handle_timeout(now);
        progressed = true;
    }
    if progressed {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Hands out every output of the core and answers the waiters that can be answered;
/// returns the number of events handed to the streams.
fn drain<R: Runtime>(
    rt: &R,
    inner: &mut Inner,
    io: &mut [ServerIo],
    addrs: &[SocketAddr],
    shared: &Shared,
    events: &mut Vec<Event>,
    now: Instant,
) -> usize {
    let mut dispatched = 0;
    while let Some(output) = inner.core.poll() {
        match output {
            ClientOutput::Connect(id) => {
                let server = &mut io[id.0];
                server.reader = None;
                server.writer = None;
                server.connecting = Some(rt.connect(addrs[id.0]));
            }
            ClientOutput::Disconnect { server, .. } => {
                io[server.0] = ServerIo::default();
            }
            ClientOutput::Event(event) => {
                events.push(event);
                if events.len() >= 256 {
                    dispatched += events.len();
                    shared.subscribers.dispatch(events, now);
                }
            }
            ClientOutput::Completed {
                payload,
                completion,
                ..
            } => {
                // A dropped `send` future dropped its receiver: the reply goes nowhere.
                let _ = payload.send(completion.result.map_err(ClientError::Failed));
            }
            ClientOutput::CallEnded { server, call } => {
                let record = CallRecord {
                    server: inner.core.key(server).to_owned(),
                    call: *call,
                };
                shared.calls.dispatch(server, record);
            }
            ClientOutput::State { .. } | ClientOutput::Health { .. } => {}
        }
    }
    if !events.is_empty() {
        dispatched += events.len();
        shared.subscribers.dispatch(events, now);
    }
    answer_waiters(inner, now);
    dispatched
}

/// Answers every waiter whose wait is decided; forgets those nobody awaits any more.
fn answer_waiters(inner: &mut Inner, now: Instant) {
    let Inner { core, waiters } = inner;
    let mut i = 0;
    while i < waiters.len() {
        let waiter = &waiters[i];
        let answer = if waiter.reply.is_canceled() {
            Some(Ok(()))
        } else {
            decide(core, waiter.server, waiter.until, now)
        };
        match answer {
            Some(answer) => {
                let _ = waiters.swap_remove(i).reply.send(answer);
            }
            None => i += 1,
        }
    }
}

/// `Some` when a wait for `server` is over.
pub(crate) fn decide(
    core: &ClientCore<ReplySender>,
    server: ServerId,
    until: Until,
    now: Instant,
) -> Option<Result<(), ClientError>> {
    match until {
        Until::Ready { deadline } => match core.readiness(server) {
            Readiness::Ready => Some(Ok(())),
            Readiness::Failed(why) => Some(Err(ClientError::NotReady(why))),
            Readiness::Pending if deadline.is_some_and(|at| now >= at) => {
                Some(Err(ClientError::TimedOut {
                    last: core.last_failure(server),
                }))
            }
            Readiness::Pending => None,
        },
        Until::Closed => {
            let node = core.node(server);
            (node.state() == State::Closed && !node.has_pending_outputs()).then_some(Ok(()))
        }
        Until::Finished => None,
    }
}

/// The task ends: every wait and stream ends with it.
fn finish(shared: &Shared) {
    shared.finished.store(true, Ordering::Release);
    let mut inner = shared.lock();
    for waiter in inner.waiters.drain(..) {
        let answer = match waiter.until {
            Until::Closed | Until::Finished => Ok(()),
            Until::Ready { .. } => Err(ClientError::NotReady(NotReady::Stopped)),
        };
        let _ = waiter.reply.send(answer);
    }
    // The core completed every action when its sessions closed; nothing is left.
    debug_assert_eq!(inner.core.pending(), 0);
    drop(inner);
    shared.subscribers.finish_all();
    shared.calls.finish_all();
    tracing::debug!("client task ended");
}
