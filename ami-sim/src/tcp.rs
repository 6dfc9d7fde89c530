//! A loopback TCP server that runs simulated sessions in real time, for driver tests
//! and demos.
//!
//! One background thread owns a `mio::Poll` over the listener and every session's
//! socket and drives each [`SimSession`] with the real clock: it reads while the
//! session [wants input](SimSession::wants_input) (so [`Fault::SlowReads`] really
//! stops reading), writes what [`SimSession::poll_transmit`] holds (one byte per
//! write call under [`Fault::SplitEveryByte`]), wakes up at
//! [`SimSession::poll_timeout`] for floods, delays and Originate outcomes, hands
//! broadcasts from one session to the others, and closes a socket once its session
//! [is closed](SimSession::is_closed) and drained.
//!
//! Other threads steer it through a [`TcpSim`] handle (a channel plus a
//! `mio::Waker`); every call waits until the server thread has applied it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::{Flood, SimConfig};
use crate::faults::Fault;
use crate::server::SimServer;
use crate::session::{SessionStats, SimSession};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Session `i` has token `FIRST_SESSION + i`.
const FIRST_SESSION: usize = 2;
/// How long a control call waits for the server thread.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from or written to one socket per pass at most, so that one busy
/// session cannot starve the others (the rest goes in the next pass, at once).
const IO_BUDGET: usize = 4 * 1024 * 1024;

/// The real clock: only the TCP layer reads it.
#[allow(clippy::disallowed_methods)]
fn clock() -> Instant {
    Instant::now()
}

/// The real Unix time.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Counters of a [`TcpSim`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpSimStats {
    /// Sessions accepted since the start.
    pub sessions_accepted: u64,
    /// Connections accepted and closed at once while not accepting
    /// ([`TcpSim::set_accepting`]).
    pub sessions_refused: u64,
    /// Sessions open now.
    pub live_sessions: u64,
    /// Whether the port is open (false after [`TcpSim::kill`]).
    pub listening: bool,
    /// The counters of every session, open and closed, summed: logins, actions,
    /// events sent, bytes, ...
    pub totals: SessionStats,
}

/// A request to the server thread, with the channel its answer goes back on.
enum Control {
    Inject(Fault, Sender<()>),
    SetFlood(Option<Flood>, Sender<()>),
    SetAccepting(bool, Sender<()>),
    Kill(Sender<()>),
    Restart(Sender<io::Result<()>>),
    Stats(Sender<TcpSimStats>),
    Stop,
}

/// A simulated Asterisk listening on loopback, run by a background thread.
/// Dropping it (or [`stop`](TcpSim::stop)) stops the thread and closes every socket.
pub struct TcpSim {
    addr: SocketAddr,
    control: Sender<Control>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TcpSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpSim")
            .field("addr", &self.addr)
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

impl TcpSim {
    /// Starts a simulated Asterisk on `127.0.0.1` with a free port.
    pub fn start(config: SimConfig) -> io::Result<TcpSim> {
        TcpSim::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// Starts a simulated Asterisk on `addr` (port 0 picks a free port).
    pub fn start_on(config: SimConfig, addr: SocketAddr) -> io::Result<TcpSim> {
        let poll = Poll::new()?;
        // mio's listener sets SO_REUSEADDR on Unix, so `restart` can bind the same
        // port again while old connections are in TIME_WAIT.
        let mut listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (control, inbox) = mpsc::channel();
        let worker = Worker {
            poll,
            listener: Some(listener),
            addr,
            server: SimServer::new(config, u64::from(addr.port())),
            conns: Vec::new(),
            inbox,
            buf: vec![0; 64 * 1024],
        };
        let thread = std::thread::Builder::new()
            .name(format!("ami-sim-{}", addr.port()))
            .spawn(move || worker.run())?;
        Ok(TcpSim {
            addr,
            control,
            waker,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a request to the server thread and waits for its answer; `None` when
    /// the thread is gone.
    fn call<T>(&self, request: impl FnOnce(Sender<T>) -> Control) -> Option<T> {
        let (reply, answer) = mpsc::channel();
        self.control.send(request(reply)).ok()?;
        self.waker.wake().ok()?;
        answer.recv_timeout(CONTROL_TIMEOUT).ok()
    }

    /// Injects `fault` into every open session (not into later ones: preset faults
    /// for those in the [`SimConfig`]).
    pub fn inject(&self, fault: Fault) {
        self.call(|reply| Control::Inject(fault, reply));
    }

    /// Starts, replaces or stops the flood on every open session and for later ones.
    pub fn set_flood(&self, flood: Option<Flood>) {
        self.call(|reply| Control::SetFlood(flood, reply));
    }

    /// While false, connections are accepted and closed at once, before the banner
    /// (open sessions are not touched). For a port that refuses connections outright
    /// use [`kill`](TcpSim::kill).
    pub fn set_accepting(&self, accepting: bool) {
        self.call(|reply| Control::SetAccepting(accepting, reply));
    }

    /// Kills the node: closes the listening port and every session's socket at once.
    /// Until [`restart`](TcpSim::restart), connecting is refused.
    pub fn kill(&self) {
        self.call(Control::Kill);
    }

    /// Opens the same port again after a [`kill`](TcpSim::kill) (no-op when open).
    pub fn restart(&self) -> io::Result<()> {
        self.call(Control::Restart).unwrap_or_else(|| {
            Err(io::Error::other(
                "the simulator thread is not running any more",
            ))
        })
    }

    /// The counters (all zero when the server thread is gone).
    pub fn stats(&self) -> TcpSimStats {
        self.call(Control::Stats).unwrap_or_default()
    }

    /// Stops the server thread and closes every socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.control.send(Control::Stop);
            let _ = self.waker.wake();
            let _ = thread.join();
        }
    }
}

impl Drop for TcpSim {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One accepted socket and its session.
struct Conn {
    stream: TcpStream,
    session: SimSession,
    /// Readable and not yet read to `WouldBlock` (mio is edge-triggered).
    readable: bool,
    /// Writable and not yet written to `WouldBlock`.
    writable: bool,
}

/// The server thread's state.
struct Worker {
    poll: Poll,
    listener: Option<TcpListener>,
    addr: SocketAddr,
    server: SimServer,
    conns: Vec<Option<Conn>>,
    inbox: Receiver<Control>,
    buf: Vec<u8>,
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.timeout();
            if let Err(error) = self.poll.poll(&mut events, timeout)
                && error.kind() != io::ErrorKind::Interrupted
            {
                return;
            }
            let (mut accept, mut control) = (false, false);
            for event in &events {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => control = true,
                    Token(token) => {
                        let slot = token
                            .checked_sub(FIRST_SESSION)
                            .and_then(|index| self.conns.get_mut(index));
                        // Stale tokens (a session closed since) are ignored.
                        if let Some(Some(conn)) = slot {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                conn.readable = true;
                            }
                            if event.is_writable() || event.is_write_closed() || event.is_error() {
                                conn.writable = true;
                            }
                        }
                    }
                }
            }
            if control && !self.take_controls() {
                return;
            }
            if accept {
                self.accept_all();
            }
            self.drive_all();
        }
    }

    /// How long to wait: not at all when a socket has work left, else until the
    /// earliest session deadline (forever when there is none).
    fn timeout(&self) -> Option<Duration> {
        let now = clock();
        let mut wait: Option<Duration> = None;
        for conn in self.conns.iter().flatten() {
            let can_write = conn.writable && !conn.session.poll_transmit().is_empty();
            let can_read = conn.readable && conn.session.wants_input(now);
            if can_write || can_read {
                return Some(Duration::ZERO);
            }
            if let Some(at) = conn.session.poll_timeout() {
                let until = at.saturating_duration_since(now);
                wait = Some(wait.map_or(until, |w| w.min(until)));
            }
        }
        wait
    }

    /// Applies every pending control request; false on `Stop`.
    fn take_controls(&mut self) -> bool {
        loop {
            let request = match self.inbox.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            let now = clock();
            match request {
                Control::Inject(fault, reply) => {
                    for conn in self.conns.iter_mut().flatten() {
                        conn.session.inject(now, fault.clone());
                    }
                    let _ = reply.send(());
                }
                Control::SetFlood(flood, reply) => {
                    self.server.config_mut().flood = flood.clone();
                    for conn in self.conns.iter_mut().flatten() {
                        conn.session.set_flood(now, flood.clone());
                    }
                    let _ = reply.send(());
                }
                Control::SetAccepting(accepting, reply) => {
                    self.server.set_accepting(accepting);
                    let _ = reply.send(());
                }
                Control::Kill(reply) => {
                    self.kill();
                    let _ = reply.send(());
                }
                Control::Restart(reply) => {
                    let _ = reply.send(self.restart());
                }
                Control::Stats(reply) => {
                    let _ = reply.send(self.stats());
                }
                Control::Stop => return false,
            }
        }
    }

    /// Accepts every waiting connection.
    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let mut accepted = Vec::new();
        loop {
            match listener.accept() {
                Ok((stream, _)) => accepted.push(stream),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: all taken. Other errors (out of descriptors): try again
                // at the next readiness event.
                Err(_) => break,
            }
        }
        for stream in accepted {
            let now = clock();
            match self.server.accept(now) {
                Ok(mut session) => {
                    session.set_wall_clock(now, wall_clock());
                    self.add(stream, session);
                }
                // Not accepting: the socket closes before the banner.
                Err(_) => drop(stream),
            }
        }
    }

    fn add(&mut self, mut stream: TcpStream, session: SimSession) {
        let index = match self.conns.iter().position(Option::is_none) {
            Some(index) => index,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let _ = stream.set_nodelay(true);
        let registered = self.poll.registry().register(
            &mut stream,
            Token(FIRST_SESSION + index),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            self.server.retire(session);
            return;
        }
        self.conns[index] = Some(Conn {
            stream,
            session,
            readable: false,
            // A new socket can take the banner at once.
            writable: true,
        });
    }

    /// Moves every session forward: reads, timers, writes, closes, broadcasts.
    fn drive_all(&mut self) {
        let now = clock();
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_mut() else {
                continue;
            };
            if !drive(conn, &mut self.buf, now) {
                self.remove(index);
            }
        }
        let mut broadcasts = Vec::new();
        for (index, conn) in self.conns.iter_mut().enumerate() {
            if let Some(conn) = conn {
                while let Some(broadcast) = conn.session.poll_broadcast() {
                    broadcasts.push((index, broadcast));
                }
            }
        }
        // The receivers' bytes go out in the next pass, which does not wait.
        for (from, broadcast) in &broadcasts {
            for (index, conn) in self.conns.iter_mut().enumerate() {
                if let Some(conn) = conn.as_mut().filter(|_| index != *from) {
                    conn.session.deliver_broadcast(now, broadcast);
                }
            }
        }
    }

    /// Closes a session's socket and keeps its counters.
    fn remove(&mut self, index: usize) {
        if let Some(mut conn) = self.conns[index].take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.server.retire(conn.session);
        }
    }

    /// Closes the port and every session.
    fn kill(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for index in 0..self.conns.len() {
            self.remove(index);
        }
    }

    /// Opens the port again.
    fn restart(&mut self) -> io::Result<()> {
        if self.listener.is_some() {
            return Ok(());
        }
        let mut listener = TcpListener::bind(self.addr)?;
        self.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        self.listener = Some(listener);
        Ok(())
    }

    fn stats(&self) -> TcpSimStats {
        let server = self.server.stats();
        let mut totals = server.retired.clone();
        let mut live = 0;
        for conn in self.conns.iter().flatten() {
            live += 1;
            totals.merge(&conn.session.stats());
        }
        TcpSimStats {
            sessions_accepted: server.accepted,
            sessions_refused: server.refused,
            live_sessions: live,
            listening: self.listener.is_some(),
            totals,
        }
    }
}

/// Reads, runs the timers and writes for one session; false when its socket should
/// close (the client left, a socket error, or the session is done and drained).
fn drive(conn: &mut Conn, buf: &mut [u8], now: Instant) -> bool {
    let mut read = 0;
    while conn.readable && read < IO_BUDGET {
        let budget = conn.session.input_budget(now).unwrap_or(usize::MAX);
        if budget == 0 {
            // Slow reads: leave the bytes in the socket; `poll_timeout` says when
            // the allowance comes back.
            break;
        }
        let want = budget.min(buf.len());
        match conn.stream.read(&mut buf[..want]) {
            Ok(0) => return false,
            Ok(n) => {
                read += n;
                conn.session.handle_input(now, &buf[..n]);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.session.handle_timeout(now);
    let mut written = 0;
    while conn.writable && written < IO_BUDGET {
        // One byte at a time under SplitEveryByte: one write call per byte.
        let pending = conn.session.poll_transmit();
        if pending.is_empty() {
            break;
        }
        match conn.stream.write(pending) {
            Ok(0) => return false,
            Ok(n) => {
                written += n;
                conn.session.advance_transmit(n);
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => conn.writable = false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    !(conn.session.is_closed() && conn.session.poll_transmit().is_empty())
}
