//! One Redis connection that comes back: each of the gateway's threads holds a
//! [`Link`] and asks it for a connection; while Redis is down it waits a jittered
//! backoff (the cluster's [`Backoff`], the one the AMI reconnects use) between
//! attempts, logging once when Redis goes away and once when it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ami_mio::ami_cluster::{Backoff, BackoffConfig, Rng};

/// How long connecting, and each read and write, may take before the connection is
/// given up and made again.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis connection, made again after it fails.
pub struct Link {
    client: redis::Client,
    connection: Option<redis::Connection>,
    backoff: Backoff,
    rng: Rng,
    /// Who uses it, for the logs: `events`, `requests`, `completions`.
    role: &'static str,
    /// When Redis went away, while it is away.
    down_since: Option<Instant>,
    /// The longest a read may block: more than `BLOCK` of an `XREADGROUP`.
    read_timeout: Duration,
    /// Whether the link is connected now (for `/metrics`).
    up: Arc<AtomicBool>,
    /// Connections made so far: a new one means what was known of Redis's state
    /// (e.g. a stream's last ID) must be asked again.
    connects: u64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("role", &self.role).finish()
    }
}

impl Link {
    /// A link to `url` (checked now; connected on first use).
    pub fn new(url: &str, role: &'static str) -> redis::RedisResult<Link> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = now ^ u64::from(std::process::id()) ^ ((role.len() as u64) << 32);
        Ok(Link {
            client: redis::Client::open(url)?,
            connection: None,
            backoff: Backoff::new(BackoffConfig {
                min: Duration::from_millis(100),
                base: Duration::from_millis(200),
                cap: Duration::from_secs(5),
            }),
            rng: Rng::new(seed),
            role,
            down_since: None,
            read_timeout: IO_TIMEOUT,
            up: Arc::new(AtomicBool::new(false)),
            connects: 0,
        })
    }

    /// Reads may block this long (longer than any `BLOCK` the user sends).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Link {
        self.read_timeout = timeout;
        self
    }

    /// Whether the link is connected, shared.
    pub fn up(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    /// The connection, made now if there is none: tries until it connects or `stop`
    /// is set (then `None`), sleeping a jittered backoff between attempts.
    pub fn get(&mut self, stop: &AtomicBool) -> Option<&mut redis::Connection> {
        while self.connection.is_none() {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match self.connect() {
                Ok(connection) => {
                    if let Some(since) = self.down_since.take() {
                        tracing::info!(
                            role = self.role,
                            down_ms = since.elapsed().as_millis() as u64,
                            "redis is back"
                        );
                    }
                    self.backoff.reset();
                    self.connects += 1;
                    self.connection = Some(connection);
                    self.up.store(true, Ordering::Relaxed);
                }
                Err(error) => {
                    if self.down_since.is_none() {
                        self.down_since = Some(Instant::now());
                        tracing::warn!(role = self.role, %error, "redis unreachable: retrying");
                    }
                    let delay = self.backoff.next_delay(&mut self.rng);
                    sleep_unless(stop, delay);
                }
            }
        }
        self.connection.as_mut()
    }

    /// Connections made so far (see the field).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        connection.set_read_timeout(Some(self.read_timeout))?;
        connection.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(connection)
    }

    /// After an error from the connection: drops it when the error was the
    /// connection's (I/O, timeout, closed), so that the next [`Link::get`] makes a new
    /// one. Returns whether it did.
    pub fn failed(&mut self, error: &redis::RedisError) -> bool {
        let broken = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error();
        if broken {
            if self.down_since.is_none() {
                self.down_since = Some(Instant::now());
                tracing::warn!(role = self.role, %error, "redis connection lost: reconnecting");
            }
            self.connection = None;
            self.up.store(false, Ordering::Relaxed);
        }
        broken
    }
}

impl Link {
    /// Drops the connection (the next [`Link::get`] makes a new one), e.g. after an
    /// answer that leaves the connection's state in doubt.
    pub fn drop_connection(&mut self) {
        self.connection = None;
        self.up.store(false, Ordering::Relaxed);
    }
}

/// Sleeps `delay`, waking early (every 50 ms) to see whether `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, delay: Duration) {
    let until = Instant::now() + delay;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}
