//! A loopback AMI replay server: it plays an Asterisk manager interface that blasts
//! recorded events, for benchmarks and driver tests.
//!
//! [`ReplayServer::start`] binds `127.0.0.1:0` and serves every connection on its own
//! thread (plus one reader thread per connection):
//!
//! 1. It sends the banner `Asterisk Call Manager/11.0.0\r\n`.
//! 2. It answers actions as Asterisk does: `Login` (plain, or MD5 after `Challenge`),
//!    `Challenge`, `Ping`, `Logoff` (`Response: Goodbye`, then it closes) and any other
//!    action with a bare `Response: Success`. Before the login only `Login`,
//!    `Challenge` and `Logoff` are allowed (others get `Permission denied`), a request
//!    without `Action` gets `Missing action in request`, and a failed login gets
//!    `Authentication failed` and the connection closes (PROTOCOL-NOTES 6, 8–11, 13,
//!    14, 28).
//! 3. Once logged in, it writes exactly [`ReplayConfig::total_events`] event frames,
//!    cycling through [`ReplayConfig::events`], in writes of about
//!    [`ReplayConfig::chunk_bytes`] made of whole frames, optionally paced to
//!    [`ReplayConfig::rate`] events per second. Responses to actions that arrive
//!    meanwhile go out between two writes, so always between two frames.
//! 4. After the last event it sends the marker `Event: ReplayDone\r\nEvents: N\r\n\r\n`
//!    and keeps answering actions until the client logs off or closes.
//!
//! The events are sent as they are (byte for byte); list items and
//! `OriginateResponse` events of the capture carry the recording session's ActionIDs
//! (`S-1`, `O-1`, ...), which a client must treat as foreign (PROTOCOL-NOTES 17).
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//! use ami_tests::replay::{load_capture_events, ReplayConfig, ReplayServer};
//!
//! let (events, _count) = load_capture_events("tests/fixtures/asterisk22-capture.raw")?;
//! let server = ReplayServer::start(ReplayConfig::new(events, 1_000_000))?;
//! let mut client = TcpStream::connect(server.addr())?;
//! client.write_all(b"Action: Login\r\nActionID: 1\r\nUsername: u\r\nSecret: s\r\n\r\n")?;
//! let mut buf = vec![0; 1 << 20];
//! let _ = client.read(&mut buf)?; // banner, login response, events...
//! let report = server.stop();
//! println!("{} events sent", report.events_sent);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ami_proto::Secret;
use ami_proto::action::md5_key;

/// The banner the server sends first (Asterisk 22's manager version).
pub const BANNER: &[u8] = b"Asterisk Call Manager/11.0.0\r\n";

/// The default size of one write of events: 256 KiB.
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

/// The events are repeated into a buffer of at least this many bytes (4 MiB), so that
/// every write is one slice of it.
pub const MIN_BLAST_BYTES: usize = 4 * 1024 * 1024;

/// The longest request line accepted, as in Asterisk (PROTOCOL-NOTES 6).
const MAX_LINE: usize = 1024;
/// Headers of one request kept; later ones are ignored, as in Asterisk.
const MAX_HEADERS: usize = 128;
/// How long the server keeps reading (and discarding) after it decided to close,
/// waiting for the client's own close, so that closing never resets the connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// With a rate set, one write holds at most this share of a second of events.
const PACING_SLICES_PER_SECOND: u64 = 200;

/// What a [`ReplayServer`] sends and accepts.
#[derive(Clone)]
pub struct ReplayConfig {
    /// The event frames to blast, concatenated, each ending in a blank line
    /// (`\r\n\r\n`). Sent byte for byte, cycling from the first frame.
    pub events: Arc<[u8]>,
    /// How many frames each logged-in connection receives before the `ReplayDone`
    /// marker.
    pub total_events: u64,
    /// The size of one write, in bytes (rounded down to whole frames; a write always
    /// holds at least one frame). Default [`DEFAULT_CHUNK_BYTES`].
    pub chunk_bytes: usize,
    /// Events per second per connection; `None` sends as fast as the client reads.
    pub rate: Option<u64>,
    /// The username `Login` must carry (compared case-insensitively, like Asterisk's
    /// user lookup); `None` accepts any.
    pub username: Option<String>,
    /// The secret `Login` must carry (`Secret`, or the MD5 `Key` after `Challenge`);
    /// `None` accepts any.
    pub secret: Option<String>,
}

impl ReplayConfig {
    /// `total_events` frames out of `events`, as fast as possible, any credentials.
    pub fn new(events: impl Into<Arc<[u8]>>, total_events: u64) -> Self {
        ReplayConfig {
            events: events.into(),
            total_events,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            rate: None,
            username: None,
            secret: None,
        }
    }

    /// `total_events` frames out of the event frames of a capture file (see
    /// [`load_capture_events`]).
    pub fn from_capture(path: impl AsRef<Path>, total_events: u64) -> io::Result<Self> {
        let (events, _) = load_capture_events(path)?;
        Ok(ReplayConfig::new(events, total_events))
    }

    /// Paces every connection to `events_per_second`.
    pub fn with_rate(mut self, events_per_second: u64) -> Self {
        self.rate = Some(events_per_second);
        self
    }

    /// Sets the size of one write.
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }

    /// Requires these credentials at login.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.secret = Some(secret.into());
        self
    }
}

impl fmt::Debug for ReplayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The corpus can be megabytes and the secret is a secret: show neither.
        f.debug_struct("ReplayConfig")
            .field("events_bytes", &self.events.len())
            .field("total_events", &self.total_events)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("rate", &self.rate)
            .field("username", &self.username)
            .field("secret", &self.secret.as_ref().map(|_| "****"))
            .finish()
    }
}

/// Reads a capture (every byte a client received, banner first) and returns its
/// event frames, concatenated byte for byte, with their count.
///
/// The banner (a first line without `:`) is dropped, and so are responses, stray
/// blank lines and an incomplete message at the end. A message is an event when it
/// has an `Event` header (case-insensitive, even next to `Response`, PROTOCOL-NOTES
/// 15). Messages are split as the `ami-proto` parser splits them: a line ends at `\n`
/// (with an optional `\r`), a message at an empty line, and a legacy
/// `Response: Follows` body runs up to its `--END COMMAND--` line.
pub fn load_capture_events(path: impl AsRef<Path>) -> io::Result<(Vec<u8>, usize)> {
    let raw = std::fs::read(path)?;
    Ok(capture_events(&raw))
}

/// [`load_capture_events`] on bytes already in memory.
pub fn capture_events(raw: &[u8]) -> (Vec<u8>, usize) {
    let body = match raw.iter().position(|&b| b == b'\n') {
        Some(end) if !raw[..end].contains(&b':') => &raw[end + 1..],
        _ => raw,
    };
    let (frames, _) = split_frames(body);
    let mut events = Vec::with_capacity(body.len());
    let mut count = 0;
    for frame in frames.iter().filter(|frame| frame.event) {
        events.extend_from_slice(&body[frame.start..frame.end]);
        count += 1;
    }
    (events, count)
}

/// One message found by [`split_frames`].
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Where its first line starts (stray blank lines before it are not part of it).
    start: usize,
    /// Just past its terminating blank line.
    end: usize,
    /// Whether it has an `Event` header.
    event: bool,
}

/// Splits `data` into complete messages; also returns where the last one ends (bytes
/// after it are an incomplete message or stray blank lines).
fn split_frames(data: &[u8]) -> (Vec<Frame>, usize) {
    let mut frames = Vec::new();
    let mut complete = 0;
    let mut start = None;
    let mut event = false;
    let mut follows = false;
    let mut pos = 0;
    while let Some(newline) = data[pos..].iter().position(|&b| b == b'\n') {
        let line_end = pos + newline + 1;
        let line = &data[pos..pos + newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if follows {
            // A legacy command body: blank lines belong to it, up to the sentinel.
            follows = !line.ends_with(b"--END COMMAND--");
        } else if line.is_empty() {
            if let Some(start) = start.take() {
                frames.push(Frame {
                    start,
                    end: line_end,
                    event,
                });
                complete = line_end;
                event = false;
            }
        } else {
            start.get_or_insert(pos);
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let key = &line[..colon];
                let value = trim_start(&line[colon + 1..]);
                if key.eq_ignore_ascii_case(b"Event") {
                    event = true;
                } else if key.eq_ignore_ascii_case(b"Response")
                    && value.eq_ignore_ascii_case(b"Follows")
                {
                    follows = true;
                }
            }
        }
        pos = line_end;
    }
    (frames, complete)
}

/// `bytes` without leading blanks.
fn trim_start(bytes: &[u8]) -> &[u8] {
    let blanks = bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[blanks..]
}

/// What a [`ReplayServer`] did, from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayReport {
    /// Event frames written, over all connections (the `ReplayDone` markers not
    /// counted).
    pub events_sent: u64,
    /// Bytes written, over all connections: banners, responses, events and markers.
    pub bytes_sent: u64,
    /// Time since the server started.
    pub elapsed: Duration,
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed (by either side, or by the server's stop).
    pub finished: u64,
    /// Time spent streaming events, summed over the connections that got their
    /// `ReplayDone` marker: from the login's response to the marker, both written.
    pub streaming: Duration,
}

impl ReplayReport {
    /// Events per second while streaming (`events_sent / streaming`), when any
    /// connection finished streaming.
    pub fn events_per_second(&self) -> Option<f64> {
        let secs = self.streaming.as_secs_f64();
        (secs > 0.0).then(|| self.events_sent as f64 / secs)
    }
}

/// The event buffer shared by every connection: the corpus repeated to at least
/// [`MIN_BLAST_BYTES`], with the end offset of every frame in it.
struct Blast {
    buf: Arc<[u8]>,
    ends: Vec<usize>,
}

impl Blast {
    fn new(events: &Arc<[u8]>) -> io::Result<Blast> {
        let (frames, complete) = split_frames(events);
        if complete != events.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ReplayConfig::events must be whole frames, each ending in a blank line",
            ));
        }
        let one: Vec<usize> = frames.iter().map(|frame| frame.end).collect();
        if one.is_empty() {
            return Ok(Blast {
                buf: Arc::clone(events),
                ends: one,
            });
        }
        let copies = MIN_BLAST_BYTES.div_ceil(events.len()).max(1);
        if copies == 1 {
            return Ok(Blast {
                buf: Arc::clone(events),
                ends: one,
            });
        }
        let mut buf = Vec::with_capacity(events.len() * copies);
        let mut ends = Vec::with_capacity(one.len() * copies);
        for _ in 0..copies {
            let base = buf.len();
            buf.extend_from_slice(events);
            ends.extend(one.iter().map(|end| base + end));
        }
        Ok(Blast {
            buf: buf.into(),
            ends,
        })
    }

    /// Offset where frame `index` starts.
    fn start_of(&self, index: usize) -> usize {
        match index {
            0 => 0,
            _ => self.ends[index - 1],
        }
    }
}

/// Settings every connection reads.
struct Settings {
    blast: Blast,
    total_events: u64,
    chunk_bytes: usize,
    rate: Option<u64>,
    username: Option<String>,
    secret: Option<Secret>,
}

/// State shared by the server handle, the acceptor and the connections.
struct Shared {
    stop: AtomicBool,
    events_sent: AtomicU64,
    bytes_sent: AtomicU64,
    connections: AtomicU64,
    streaming_nanos: AtomicU64,
    finished: Mutex<u64>,
    finished_changed: Condvar,
    /// A clone of every open connection's socket, to shut them down on stop.
    live: Mutex<HashMap<u64, TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Locks `mutex`, ignoring poisoning (the data stays consistent: counters and maps).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running replay server. See the [module documentation](self).
///
/// Dropping it stops it like [`ReplayServer::stop`].
pub struct ReplayServer {
    addr: SocketAddr,
    started: Instant,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for ReplayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayServer")
            .field("addr", &self.addr)
            .field("report", &self.report())
            .finish()
    }
}

impl ReplayServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port.
    ///
    /// Fails with `InvalidInput` when `config.events` is not a sequence of whole
    /// frames, when it holds none while `total_events` is not 0, or when `rate` is
    /// `Some(0)`.
    pub fn start(config: ReplayConfig) -> io::Result<ReplayServer> {
        ReplayServer::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Starts a server listening on `addr`.
    pub fn start_on(config: ReplayConfig, addr: SocketAddr) -> io::Result<ReplayServer> {
        let blast = Blast::new(&config.events)?;
        if blast.ends.is_empty() && config.total_events > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ReplayConfig::events holds no frame to send",
            ));
        }
        if config.rate == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ReplayConfig::rate must be at least 1 event per second",
            ));
        }
        let settings = Arc::new(Settings {
            blast,
            total_events: config.total_events,
            chunk_bytes: config.chunk_bytes,
            rate: config.rate,
            username: config.username,
            secret: config.secret.map(Secret::new),
        });
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            events_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            streaming_nanos: AtomicU64::new(0),
            finished: Mutex::new(0),
            finished_changed: Condvar::new(),
            live: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("ami-replay-accept".into())
                .spawn(move || accept_loop(&listener, &shared, &settings))?
        };
        Ok(ReplayServer {
            addr,
            started: Instant::now(),
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server did so far.
    pub fn report(&self) -> ReplayReport {
        let shared = &self.shared;
        ReplayReport {
            events_sent: shared.events_sent.load(Ordering::Relaxed),
            bytes_sent: shared.bytes_sent.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
            connections: shared.connections.load(Ordering::Relaxed),
            finished: *lock(&shared.finished),
            streaming: Duration::from_nanos(shared.streaming_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Waits until at least `count` connections have closed, or `timeout` (`None`:
    /// for ever) has passed. Returns whether they have.
    pub fn wait_finished(&self, count: u64, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut finished = lock(&self.shared.finished);
        while *finished < count {
            finished = match deadline {
                None => self
                    .shared
                    .finished_changed
                    .wait(finished)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    self.shared
                        .finished_changed
                        .wait_timeout(finished, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    /// Stops accepting, closes every connection, waits for every thread and reports.
    pub fn stop(mut self) -> ReplayReport {
        self.shutdown();
        self.report()
    }

    fn shutdown(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocked `accept` with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = acceptor.join();
        // The acceptor is gone: no connection can register any more.
        for stream in lock(&self.shared.live).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

impl Drop for ReplayServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepts connections until the server stops.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, settings: &Arc<Settings>) {
    let mut next_id = 0_u64;
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            // A connection reset before it was accepted, or no file descriptor left:
            // skip it, without spinning on an error that repeats.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        lock(&shared.live).insert(id, registered);
        let worker = {
            let shared = Arc::clone(shared);
            let settings = Arc::clone(settings);
            thread::Builder::new()
                .name(format!("ami-replay-{id}"))
                .spawn(move || {
                    serve(stream, &shared, &settings);
                    lock(&shared.live).remove(&id);
                    *lock(&shared.finished) += 1;
                    shared.finished_changed.notify_all();
                })
        };
        let mut workers = lock(&shared.workers);
        // Join the workers already done, so that the list stays short.
        let (done, running): (Vec<_>, Vec<_>) = workers.drain(..).partition(|w| w.is_finished());
        *workers = running;
        drop(workers);
        for worker in done {
            let _ = worker.join();
        }
        match worker {
            Ok(worker) => lock(&shared.workers).push(worker),
            Err(_) => {
                // No thread for it: close it at once.
                if let Some(stream) = lock(&shared.live).remove(&id) {
                    let _ = stream.shutdown(Shutdown::Both);
                }
                *lock(&shared.finished) += 1;
                shared.finished_changed.notify_all();
            }
        }
    }
}

/// What the reader thread hands the writer: bytes to send, and what to do next.
#[derive(Debug)]
enum Reply {
    /// A response; the session goes on.
    Send(Vec<u8>),
    /// The response to the login that authenticated the session: events may start.
    LoggedIn(Vec<u8>),
    /// The last response (`Goodbye`, failed login): send it, then close.
    Close(Vec<u8>),
}

/// Why a connection's writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closes after a last response; the client may still be reading.
    Closing,
    /// The client closed (the reader saw the end of its input).
    ClientGone,
    /// A write failed, or the server stops.
    Broken,
}

/// Serves one connection: a reader thread parses requests, this thread writes.
fn serve(stream: TcpStream, shared: &Shared, settings: &Settings) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    };
    let (replies, inbox) = mpsc::channel();
    let session = Session::new(settings);
    thread::scope(|scope| {
        let reader = thread::Builder::new()
            .name("ami-replay-read".into())
            .spawn_scoped(scope, move || read_requests(read_half, session, &replies));
        if reader.is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let mut writer = Writer {
            stream,
            shared,
            settings,
        };
        let how = match writer.run(&inbox) {
            // FIN after the last response; the reader drains until the client closes.
            End::Closing => Shutdown::Write,
            End::ClientGone | End::Broken => Shutdown::Both,
        };
        let _ = writer.stream.shutdown(how);
        drop(inbox);
        // The scope joins the reader.
    });
}

/// The writing side of one connection.
struct Writer<'a> {
    stream: TcpStream,
    shared: &'a Shared,
    settings: &'a Settings,
}

impl Writer<'_> {
    fn run(&mut self, inbox: &Receiver<Reply>) -> End {
        match self.session(inbox) {
            Ok(()) => End::ClientGone,
            Err(end) => end,
        }
    }

    /// Banner, login, events, marker, then responses until the end. Returns `Ok` only
    /// if the reader is gone.
    fn session(&mut self, inbox: &Receiver<Reply>) -> Result<(), End> {
        self.write(BANNER)?;
        loop {
            match inbox.recv() {
                Ok(Reply::LoggedIn(bytes)) => {
                    self.write(&bytes)?;
                    break;
                }
                Ok(reply) => self.handle(reply)?,
                Err(_) => return Err(End::ClientGone),
            }
        }
        let started = Instant::now();
        self.blast(inbox)?;
        let marker = format!(
            "Event: ReplayDone\r\nEvents: {}\r\n\r\n",
            self.settings.total_events
        );
        self.write(marker.as_bytes())?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared
            .streaming_nanos
            .fetch_add(nanos, Ordering::Relaxed);
        while let Ok(reply) = inbox.recv() {
            self.handle(reply)?;
        }
        Ok(())
    }

    /// Writes exactly `total_events` frames, answering requests between writes.
    fn blast(&mut self, inbox: &Receiver<Reply>) -> Result<(), End> {
        let settings = self.settings;
        let blast = &settings.blast;
        let per_write = settings.rate.map_or(usize::MAX, |rate| {
            usize::try_from((rate / PACING_SLICES_PER_SECOND).max(1)).unwrap_or(usize::MAX)
        });
        let started = Instant::now();
        let mut remaining = settings.total_events;
        let mut sent = 0_u64;
        let mut next = 0_usize;
        while remaining > 0 {
            if self.shared.stop.load(Ordering::Relaxed) {
                return Err(End::Broken);
            }
            match settings.rate {
                Some(rate) => {
                    let due = Duration::from_nanos(
                        u64::try_from(u128::from(sent) * 1_000_000_000 / u128::from(rate))
                            .unwrap_or(u64::MAX),
                    );
                    self.serve_until(inbox, started + due)?;
                }
                None => self.serve_pending(inbox)?,
            }
            let start = blast.start_of(next);
            let limit = start.saturating_add(settings.chunk_bytes);
            let fitting = blast.ends.partition_point(|&end| end <= limit);
            let remaining_usize = usize::try_from(remaining).unwrap_or(usize::MAX);
            let stop = fitting
                .max(next + 1)
                .min(next.saturating_add(per_write))
                .min(next.saturating_add(remaining_usize));
            self.write(&blast.buf[start..blast.ends[stop - 1]])?;
            let frames = (stop - next) as u64;
            self.shared.events_sent.fetch_add(frames, Ordering::Relaxed);
            sent += frames;
            remaining -= frames;
            next = if stop == blast.ends.len() { 0 } else { stop };
        }
        Ok(())
    }

    /// Sends the responses already waiting.
    fn serve_pending(&mut self, inbox: &Receiver<Reply>) -> Result<(), End> {
        loop {
            match inbox.try_recv() {
                Ok(reply) => self.handle(reply)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(End::ClientGone),
            }
        }
    }

    /// Sends responses as they come until `deadline`.
    fn serve_until(&mut self, inbox: &Receiver<Reply>, deadline: Instant) -> Result<(), End> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.serve_pending(inbox);
            }
            match inbox.recv_timeout(left) {
                Ok(reply) => self.handle(reply)?,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => return Err(End::ClientGone),
            }
        }
    }

    fn handle(&mut self, reply: Reply) -> Result<(), End> {
        match reply {
            Reply::Send(bytes) | Reply::LoggedIn(bytes) => self.write(&bytes),
            Reply::Close(bytes) => {
                self.write(&bytes)?;
                Err(End::Closing)
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.stream.write_all(bytes).map_err(|_| End::Broken)?;
        self.shared
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Reads requests until the client closes (or the session ends), answering each
/// through `replies`.
fn read_requests(mut stream: TcpStream, mut session: Session<'_>, replies: &Sender<Reply>) {
    let mut requests = RequestReader::default();
    let mut buf = vec![0_u8; 16 * 1024];
    'read: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut closing = false;
        requests.feed(&buf[..n], |request| {
            if closing {
                return;
            }
            let reply = session.answer(&request);
            closing = matches!(reply, Reply::Close(_));
            if replies.send(reply).is_err() {
                closing = true;
            }
        });
        if closing {
            break 'read;
        }
    }
    // The session is over: discard what the client still sends until it closes, so
    // that closing our side never resets the connection under unread responses.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// One request: its headers in order, and whether a line was too long.
#[derive(Debug, Default)]
struct Request {
    headers: Vec<(String, String)>,
    line_too_long: bool,
}

impl Request {
    /// The first value of `key` (case-insensitive).
    fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits the client's bytes into requests: lines end at `\n` (optional `\r`), a
/// request ends at an empty line. Lines are capped at [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
struct RequestReader {
    line: Vec<u8>,
    /// The current line went past [`MAX_LINE`]: its bytes are skipped.
    skipping: bool,
    request: Request,
}

impl RequestReader {
    fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(Request)) {
        while !data.is_empty() {
            let (piece, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(newline) => (&data[..newline], Some(newline + 1)),
                None => (data, None),
            };
            if !self.skipping {
                if self.line.len() + piece.len() > MAX_LINE {
                    self.skipping = true;
                    self.request.line_too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            let Some(used) = complete else {
                return;
            };
            data = &data[used..];
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                emit(std::mem::take(&mut self.request));
            } else if let Some(colon) = line.iter().position(|&b| b == b':')
                && self.request.headers.len() < MAX_HEADERS
            {
                let key = String::from_utf8_lossy(&line[..colon]).into_owned();
                let value = String::from_utf8_lossy(trim_start(&line[colon + 1..]));
                self.request.headers.push((key, value.into_owned()));
            }
        }
    }
}

/// The state of one session, as the reader thread sees it.
struct Session<'a> {
    settings: &'a Settings,
    authenticated: bool,
    challenge: Option<String>,
}

impl<'a> Session<'a> {
    fn new(settings: &'a Settings) -> Self {
        Session {
            settings,
            authenticated: false,
            challenge: None,
        }
    }

    /// The answer to `request`, as Asterisk gives it.
    fn answer(&mut self, request: &Request) -> Reply {
        let id = request.get("ActionID");
        if request.line_too_long {
            return Reply::Send(response(
                "Error",
                id,
                &[("Message", "Failed to parse message: line too long")],
            ));
        }
        let action = request.get("Action").unwrap_or("").to_ascii_lowercase();
        match action.as_str() {
            "" => Reply::Send(response(
                "Error",
                id,
                &[("Message", "Missing action in request")],
            )),
            "login" if self.authenticated => Reply::Send(response(
                "Success",
                id,
                &[("Message", "Already authenticated")],
            )),
            "login" => {
                if self.login_ok(request) {
                    self.authenticated = true;
                    Reply::LoggedIn(response(
                        "Success",
                        id,
                        &[("Message", "Authentication accepted")],
                    ))
                } else {
                    Reply::Close(response(
                        "Error",
                        id,
                        &[("Message", "Authentication failed")],
                    ))
                }
            }
            "challenge" => {
                if !request
                    .get("AuthType")
                    .is_some_and(|t| t.eq_ignore_ascii_case("MD5"))
                {
                    return Reply::Send(response(
                        "Error",
                        id,
                        &[("Message", "Must specify AuthType")],
                    ));
                }
                let challenge = self.challenge.get_or_insert_with(new_challenge).clone();
                Reply::Send(response("Success", id, &[("Challenge", &challenge)]))
            }
            "logoff" => Reply::Close(response(
                "Goodbye",
                id,
                &[("Message", "Thanks for all the fish.")],
            )),
            _ if !self.authenticated => {
                Reply::Send(response("Error", id, &[("Message", "Permission denied")]))
            }
            "ping" => Reply::Send(response(
                "Success",
                id,
                &[("Ping", "Pong"), ("Timestamp", &timestamp())],
            )),
            _ => Reply::Send(response("Success", id, &[])),
        }
    }

    /// Whether the login's credentials are the configured ones.
    fn login_ok(&self, request: &Request) -> bool {
        let settings = self.settings;
        if let Some(username) = &settings.username
            && !request
                .get("Username")
                .is_some_and(|given| given.eq_ignore_ascii_case(username))
        {
            return false;
        }
        let md5 = request
            .get("AuthType")
            .is_some_and(|t| t.eq_ignore_ascii_case("MD5"));
        if md5 {
            // An MD5 login needs a challenge first, as in Asterisk.
            let Some(challenge) = &self.challenge else {
                return false;
            };
            return match &settings.secret {
                None => true,
                Some(secret) => request.get("Key") == Some(md5_key(challenge, secret).as_str()),
            };
        }
        match &settings.secret {
            None => true,
            Some(secret) => request.get("Secret") == Some(secret.expose()),
        }
    }
}

/// A response: `Response`, the `ActionID` when the request carried a non-empty one
/// (PROTOCOL-NOTES 14), then `extra`.
fn response(kind: &str, action_id: Option<&str>, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("Response: {kind}\r\n");
    if let Some(id) = action_id.filter(|id| !id.is_empty()) {
        out.push_str("ActionID: ");
        out.push_str(id);
        out.push_str("\r\n");
    }
    for (key, value) in extra {
        out.push_str(key);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Seconds since the epoch with microseconds, like Asterisk's `Timestamp`.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
}

/// A fresh 9-digit challenge (Asterisk sends `ast_random()` as digits).
fn new_challenge() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mixed = u64::from(now.subsec_nanos())
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(
            COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0xBF58_476D_1CE4_E5B9),
        );
    format!("{:09}", (mixed >> 11) % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_frames_handles_bare_newlines_extra_blank_lines_and_follows() {
        let data = b"Event: A\r\nX: 1\n\r\n\r\nResponse: Follows\r\nPrivilege: Command\r\n\r\nbody\r\n--END COMMAND--\r\n\r\nevent: B\r\n\r\nEvent: C";
        let (frames, complete) = split_frames(data);
        let texts: Vec<&[u8]> = frames.iter().map(|f| &data[f.start..f.end]).collect();
        assert_eq!(
            texts,
            [
                &b"Event: A\r\nX: 1\n\r\n"[..],
                b"Response: Follows\r\nPrivilege: Command\r\n\r\nbody\r\n--END COMMAND--\r\n\r\n",
                b"event: B\r\n\r\n",
            ]
        );
        assert_eq!(
            frames.iter().map(|f| f.event).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(complete, data.len() - b"Event: C".len());
    }

    #[test]
    fn request_reader_splits_requests_and_caps_lines() {
        let mut requests = Vec::new();
        let mut reader = RequestReader::default();
        let long = vec![b'x'; MAX_LINE + 1];
        let mut input = b"Action: Ping\r\nActionID:  a b \r\n\r\nAction: Foo\nKey:".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\r\n\r\n\r\n");
        for byte in input.chunks(7) {
            reader.feed(byte, |r| requests.push(r));
        }
        assert_eq!(requests.len(), 3);
        assert_eq!(requests[0].get("action"), Some("Ping"));
        assert_eq!(requests[0].get("ActionID"), Some("a b "));
        assert_eq!(requests[1].get("Action"), Some("Foo"));
        assert!(requests[1].line_too_long);
        assert!(requests[2].headers.is_empty());
    }

    #[test]
    fn responses_echo_only_non_empty_action_ids() {
        assert_eq!(
            response("Success", Some("7"), &[("Ping", "Pong")]),
            b"Response: Success\r\nActionID: 7\r\nPing: Pong\r\n\r\n"
        );
        assert_eq!(response("Error", Some(""), &[]), b"Response: Error\r\n\r\n");
    }

    #[test]
    fn blast_repeats_the_corpus_into_whole_frames() {
        let events: Arc<[u8]> = Arc::from(&b"Event: A\r\n\r\nEvent: BB\r\n\r\n"[..]);
        let blast = Blast::new(&events).unwrap();
        assert!(blast.buf.len() >= MIN_BLAST_BYTES);
        assert_eq!(blast.buf.len() % events.len(), 0);
        assert_eq!(blast.ends[..3], [12, 25, 37]);
        assert_eq!(*blast.ends.last().unwrap(), blast.buf.len());
        assert!(Blast::new(&Arc::from(&b"Event: A\r\n"[..])).is_err());
    }
}
