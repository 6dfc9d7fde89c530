//! What the connection task needs from an async runtime: connect, the time, a timer,
//! and a way to spawn. One task implementation runs on all of them.
//!
//! - [`Tokio`] (feature `tokio`, on by default): Tokio's sockets (adapted to
//!   `futures-io` with `tokio-util`'s compat layer) and Tokio's clock, so that
//!   `tokio::time::pause()` drives heartbeats, deadlines and backoff in tests.
//! - [`Custom`]: the runtime-agnostic `futures-io` path. You hand it a connector, a
//!   timer and a spawner as closures; it serves smol and async-std (deprecated upstream
//!   in favour of smol) alike, and in-memory transports in tests.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

/// A boxed, `Send` future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A byte stream the connection task can read and write.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A boxed [`Transport`].
pub type BoxTransport = Box<dyn Transport>;

/// The services of an async runtime the client uses.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Opens a connection to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<BoxTransport>>;
    /// The current time (the runtime's clock: virtual under Tokio's paused time).
    fn now(&self) -> Instant;
    /// A future that completes at `at`.
    fn sleep_until(&self, at: Instant) -> BoxFuture<()>;
    /// Runs `task` in the background.
    fn spawn(&self, task: BoxFuture<()>);
}

/// Tokio: `tokio::net::TcpStream` and `tokio::time`.
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

#[cfg(feature = "tokio")]
impl Runtime for Tokio {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<BoxTransport>> {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream.compat()) as BoxTransport)
        })
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, at: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at)))
    }

    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }
}

type Connector = dyn Fn(SocketAddr) -> BoxFuture<io::Result<BoxTransport>> + Send + Sync;
type Timer = dyn Fn(Instant) -> BoxFuture<()> + Send + Sync;
type Spawner = dyn Fn(BoxFuture<()>) + Send + Sync;
type Clock = dyn Fn() -> Instant + Send + Sync;

/// Any runtime, through `futures-io` streams and closures you supply.
///
/// ```
/// # fn main() {
/// use std::time::Instant;
/// use ami_tokio::runtime::{BoxTransport, Custom};
///
/// // smol: its TcpStream implements futures-io already.
/// let smol_runtime = Custom::new(
///     |addr| Box::pin(async move {
///         Ok(Box::new(smol::net::TcpStream::connect(addr).await?) as BoxTransport)
///     }),
///     |at| Box::pin(async move { smol::Timer::at(at).await; }),
///     |task| smol::spawn(task).detach(),
/// );
/// # let _ = (smol_runtime, Instant::now());
/// # }
/// ```
#[derive(Clone)]
pub struct Custom {
    connect: Arc<Connector>,
    sleep_until: Arc<Timer>,
    spawn: Arc<Spawner>,
    now: Arc<Clock>,
}

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom").finish_non_exhaustive()
    }
}

impl Custom {
    /// A runtime from a connector, a timer (`sleep until this instant`) and a spawner.
    /// The clock is `std::time::Instant::now`.
    pub fn new(
        connect: impl Fn(SocketAddr) -> BoxFuture<io::Result<BoxTransport>> + Send + Sync + 'static,
        sleep_until: impl Fn(Instant) -> BoxFuture<()> + Send + Sync + 'static,
        spawn: impl Fn(BoxFuture<()>) + Send + Sync + 'static,
    ) -> Custom {
        Custom {
            connect: Arc::new(connect),
            sleep_until: Arc::new(sleep_until),
            spawn: Arc::new(spawn),
            now: Arc::new(Instant::now),
        }
    }

    /// Replaces the clock (e.g. a virtual one in tests); the timer must agree with it.
    pub fn with_clock(mut self, now: impl Fn() -> Instant + Send + Sync + 'static) -> Custom {
        self.now = Arc::new(now);
        self
    }
}

impl Runtime for Custom {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<BoxTransport>> {
        (self.connect)(addr)
    }

    fn now(&self) -> Instant {
        (self.now)()
    }

    fn sleep_until(&self, at: Instant) -> BoxFuture<()> {
        (self.sleep_until)(at)
    }

    fn spawn(&self, task: BoxFuture<()>) {
        (self.spawn)(task)
    }
}
