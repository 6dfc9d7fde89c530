//! Many servers in one driver: a fleet of simulated AMI sessions on one loopback
//! listener, all logged in to one `ami-mio` driver, for the thousand-server
//! benchmarks (`examples/many_servers.rs`, `benches/many_servers.rs`).
//!
//! Server `i` of the driver has key `s{i}` and logs in as user `u{i}`; the fleet keeps
//! the server side of its socket in [`Fleet::peers`]`[i]`, so a benchmark can make
//! exactly one chosen server readable ([`Fleet::poke`]) or hand every socket to a
//! [`Flood`] thread that writes events at a fixed rate to each.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ami_mio::{Driver, DriverOptions, Endpoint, ServerId, ServerSpec};
use ami_proto::Config;

/// One event as Asterisk 22 writes it (a `Newexten` of the capture), 423 bytes.
pub const EVENT: &[u8] = b"Event: Newexten\r\nPrivilege: dialplan,all\r\n\
Channel: Local/park@test-00000006;1\r\nChannelState: 0\r\nChannelStateDesc: Down\r\n\
CallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\nConnectedLineNum: <unknown>\r\n\
ConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: test\r\n\
Exten: park\r\nPriority: 1\r\nUniqueid: 1795326159.12\r\nLinkedid: 1795326159.12\r\n\
Extension: park\r\nApplication: AppDial2\r\nAppData: (Outgoing Line)\r\n\r\n";

/// Raises the soft limit of open file descriptors to at least `needed` (up to the
/// hard limit); returns the soft limit now in force.
pub fn raise_fd_limit(needed: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = needed.min(limit.rlim_max);
    // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// `n` servers logged in to one driver, with the server side of every socket.
pub struct Fleet {
    /// The driver, every server logged in.
    pub driver: Driver,
    /// Server `i` of the driver.
    pub ids: Vec<ServerId>,
    /// The server side of server `i`'s socket (non-blocking).
    pub peers: Vec<TcpStream>,
    count: Rc<Cell<u64>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("servers", &self.ids.len())
            .field("events", &self.count.get())
            .finish_non_exhaustive()
    }
}

/// A session of the fleet before its login: the socket and what it sent so far.
struct Pending {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Fleet {
    /// Starts `n` servers on one loopback listener and logs a driver in to each, with
    /// heartbeats every `heartbeat` (zero: none).
    pub fn start(n: usize, heartbeat: Duration) -> io::Result<Fleet> {
        Fleet::start_with(n, heartbeat, DriverOptions::default())
    }

    /// [`Fleet::start`] with driver options of the caller's.
    pub fn start_with(n: usize, heartbeat: Duration, options: DriverOptions) -> io::Result<Fleet> {
        raise_fd_limit(2 * n as u64 + 256)?;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut driver = Driver::with_options(options)?;
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let mut config = Config::new(format!("s{i}"), format!("u{i}"), "secret");
            config.heartbeat_interval = heartbeat;
            let spec = ServerSpec::new(config, Endpoint::new(addr.ip().to_string(), addr.port()));
            ids.push(driver.add_server(spec).map_err(io::Error::other)?);
        }
        let count = Rc::new(Cell::new(0u64));
        let counter = count.clone();
        driver.on_any_event(move |_| counter.set(counter.get() + 1));

        let mut peers: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        let mut pending: Vec<Pending> = Vec::new();
        let mut logged_in = 0;
        // Connected a batch at a time, within the listener's backlog.
        let mut opened = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        let mut last_answer = Instant::now();
        while logged_in < n || ids.iter().any(|&id| !driver.state(id).is_ready()) {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{logged_in} of {n} servers logged in"),
                ));
            }
            if opened == logged_in && opened < n {
                for &id in &ids[opened..(opened + LOGIN_BATCH).min(n)] {
                    driver.connect(id).map_err(io::Error::other)?;
                }
                opened = (opened + LOGIN_BATCH).min(n);
            }
            if last_answer.elapsed() >= Duration::from_millis(100) {
                // Heartbeats of the servers logged in already.
                last_answer = Instant::now();
                for peer in peers.iter_mut().flatten() {
                    answer_pings(peer, &mut buf)?;
                }
            }
            driver.tick_all(Duration::from_millis(1));
            loop {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(true)?;
                        stream.set_nodelay(true)?;
                        stream.write_all(b"Asterisk Call Manager/11.0.0\r\n")?;
                        pending.push(Pending {
                            stream,
                            input: Vec::new(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            let mut index = 0;
            while index < pending.len() {
                let session = &mut pending[index];
                match session.stream.read(&mut buf) {
                    Ok(0) => {
                        pending.swap_remove(index);
                        continue;
                    }
                    Ok(read) => session.input.extend_from_slice(&buf[..read]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let Some(end) = find(&session.input, b"\r\n\r\n") else {
                    index += 1;
                    continue;
                };
                let request = String::from_utf8_lossy(&session.input[..end]).into_owned();
                let user = header(&request, "Username").unwrap_or_default();
                let action_id = header(&request, "ActionID").unwrap_or_default();
                let server: usize = user
                    .strip_prefix('u')
                    .and_then(|i| i.parse().ok())
                    .filter(|&i| i < n)
                    .ok_or_else(|| io::Error::other(format!("unexpected login {request:?}")))?;
                let mut session = pending.swap_remove(index);
                session.stream.write_all(
                    format!(
                        "Response: Success\r\nActionID: {action_id}\r\nMessage: Authentication accepted\r\n\r\n"
                    )
                    .as_bytes(),
                )?;
                peers[server] = Some(session.stream);
                logged_in += 1;
            }
        }
        // Let the last logins' outputs be dispatched.
        for _ in 0..3 {
            driver.poll_all();
        }
        let peers = peers.into_iter().map(|p| p.expect("logged in")).collect();
        Ok(Fleet {
            driver,
            ids,
            peers,
            count,
        })
    }

    /// Events the driver's listener counted so far.
    pub fn count(&self) -> u64 {
        self.count.get()
    }

    /// Writes one event to server `i`'s socket: that server alone becomes readable.
    pub fn poke(&mut self, i: usize) -> io::Result<()> {
        self.peers[i].write_all(EVENT)
    }

    /// Events dropped by the driver over every server: for a full queue, and for the
    /// memory limit.
    pub fn dropped(&self) -> (u64, u64) {
        self.ids.iter().fold((0, 0), |(queue, memory), &id| {
            let m = self.driver.metrics(id);
            (
                queue + m.dropped_events_total,
                memory + m.dropped_events_memory_total,
            )
        })
    }
}

/// Logins under way at once while a fleet starts (the listener's backlog is 128).
const LOGIN_BATCH: usize = 100;

/// Answers the `Ping`s waiting on a logged-in socket (requests are small: one read).
fn answer_pings(peer: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let read = match peer.read(buf) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&buf[..read]).into_owned();
    for request in text.split("\r\n\r\n").filter(|r| !r.trim().is_empty()) {
        let action_id = header(request, "ActionID").unwrap_or_default();
        peer.write_all(
            format!("Response: Success\r\nActionID: {action_id}\r\nPing: Pong\r\n\r\n").as_bytes(),
        )?;
    }
    Ok(())
}

/// The position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a request's text.
fn header(request: &str, name: &str) -> Option<String> {
    request.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// What a [`Flood`] thread did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FloodReport {
    /// Events written in full over every socket.
    pub events_sent: u64,
    /// `Ping`s answered.
    pub pings_answered: u64,
    /// The thread's own CPU time (user + system).
    pub cpu: Duration,
    /// Sockets that failed (closed by the driver, reset).
    pub failed_sockets: u64,
}

/// A thread writing [`EVENT`]s to every socket of a fleet at a fixed rate each, and
/// answering the driver's `Ping`s, for a fixed time.
pub struct Flood {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<FloodReport>>,
}

impl std::fmt::Debug for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flood")
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One socket of the flood.
struct FloodConn {
    stream: mio::net::TcpStream,
    /// Bytes of events written.
    written: u64,
    /// Requests read and not complete yet.
    input: Vec<u8>,
    /// Replies waiting for an event boundary.
    replies: Vec<u8>,
    failed: bool,
}

impl Flood {
    /// Starts writing `rate` events per second to each of `peers` for `duration`,
    /// in slices of `slice` (each socket gets its due events in one write per slice).
    pub fn start(
        peers: Vec<TcpStream>,
        rate: u64,
        duration: Duration,
        slice: Duration,
    ) -> io::Result<Flood> {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_flag, done_flag, sent_count) = (stop.clone(), done.clone(), sent.clone());
        let thread = std::thread::Builder::new()
            .name("flood".into())
            .spawn(move || {
                let flags = (&*stop_flag, &*done_flag);
                flood(peers, rate, duration, slice, flags, &sent_count)
            })?;
        Ok(Flood {
            stop,
            done,
            sent,
            thread: Some(thread),
        })
    }

    /// Events written in full so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the flood is over: its time ran out and its last events are written
    /// (the sockets stay open until [`Flood::join`]).
    pub fn is_finished(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Stops the thread (if still running) and returns its report.
    pub fn join(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The flood thread: writes until the time is over, then keeps the sockets open
/// until told to stop.
fn flood(
    peers: Vec<TcpStream>,
    rate: u64,
    duration: Duration,
    slice: Duration,
    (stop, done): (&AtomicBool, &AtomicBool),
    sent: &AtomicU64,
) -> FloodReport {
    let cpu_before = crate::asterisk::thread_cpu_time().unwrap_or_default();
    let len = EVENT.len() as u64;
    // Enough events for the largest write one slice can ask for.
    let per_slice = (rate as f64 * slice.as_secs_f64()).ceil() as usize + 1;
    let batch: Vec<u8> = EVENT.repeat(per_slice.max(64) + 1);
    let mut poll = mio::Poll::new().expect("a poll");
    let mut conns: Vec<FloodConn> = peers
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let mut stream = mio::net::TcpStream::from_std(stream);
            poll.registry()
                .register(&mut stream, mio::Token(i), mio::Interest::READABLE)
                .expect("register");
            FloodConn {
                stream,
                written: 0,
                input: Vec::new(),
                replies: Vec::new(),
                failed: false,
            }
        })
        .collect();
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    let mut report = FloodReport::default();
    let started = Instant::now();
    let mut next_slice = started;
    let mut readable: Vec<usize> = Vec::new();
    loop {
        let now = Instant::now();
        let over = now >= started + duration || stop.load(Ordering::Relaxed);
        // Requests are read even when the writes are behind.
        let wait = if over {
            Duration::ZERO
        } else {
            next_slice.saturating_duration_since(now)
        };
        let _ = poll.poll(&mut events, Some(wait));
        readable.extend(events.iter().map(|e| e.token().0));
        if !over && Instant::now() < next_slice {
            continue;
        }
        // Read the requests of readable sockets (Pings, a Logoff).
        for i in readable.drain(..) {
            let conn = &mut conns[i];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        conn.failed = true;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        conn.failed = true;
                        break;
                    }
                }
            }
            while let Some(end) = find(&conn.input, b"\r\n\r\n") {
                let request = String::from_utf8_lossy(&conn.input[..end]).into_owned();
                conn.input.drain(..end + 4);
                let action_id = header(&request, "ActionID").unwrap_or_default();
                conn.replies.extend_from_slice(
                    format!("Response: Success\r\nActionID: {action_id}\r\nPing: Pong\r\n\r\n")
                        .as_bytes(),
                );
                report.pings_answered += 1;
            }
        }
        // Write every socket's due events (whole events only once over).
        let elapsed = Instant::now().min(started + duration) - started;
        let due_events = (elapsed.as_secs_f64() * rate as f64) as u64;
        for conn in conns.iter_mut().filter(|c| !c.failed) {
            let mut target = due_events * len;
            if over {
                // Finish the event under way, nothing more.
                target = conn.written.div_ceil(len) * len;
            }
            while conn.written < target || (!conn.replies.is_empty() && conn.written % len == 0) {
                let result = if conn.written % len == 0 && !conn.replies.is_empty() {
                    conn.stream.write(&conn.replies).map(|n| {
                        conn.replies.drain(..n);
                        0
                    })
                } else {
                    let offset = (conn.written % len) as usize;
                    let want = ((target - conn.written) as usize).min(batch.len() - offset);
                    conn.stream.write(&batch[offset..offset + want])
                };
                match result {
                    Ok(n) => conn.written += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        conn.failed = true;
                        break;
                    }
                }
            }
        }
        let total: u64 = conns.iter().map(|c| c.written / len).sum();
        sent.store(total, Ordering::Relaxed);
        if over {
            let unfinished = conns
                .iter()
                .any(|c| !c.failed && (c.written % len != 0 || !c.replies.is_empty()));
            if !unfinished || stop.load(Ordering::Relaxed) {
                report.events_sent = total;
                report.failed_sockets = conns.iter().filter(|c| c.failed).count() as u64;
                report.cpu = crate::asterisk::thread_cpu_time().unwrap_or_default() - cpu_before;
                done.store(true, Ordering::Release);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                return report;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        next_slice += slice;
        if next_slice < Instant::now() {
            // Behind: the next slice at once, without piling up.
            next_slice = Instant::now();
        }
    }
}
