//! Outlets: where `ami listen` sends its records, off the AMI loop.
//!
//! The AMI loop never waits for an outlet. It collects the records of a tick (events,
//! health changes, drop reports, sessions lost and back) and hands them to an
//! [`OutletQueue`] in one step; a thread of the outlet's own takes everything queued,
//! writes it, and comes back for more. When the outlet falls behind (a slow reader of
//! stdout, a full disk, Redis down) the queue reaches its bound and the **oldest
//! events** are dropped, counted per server with reason `outlet_slow`; the AMI
//! sockets keep being read and heartbeats keep running. Status records are never
//! dropped for events (they are few: one per server per second at most, plus health
//! changes); only a queue holding nothing but status records drops its oldest ones,
//! counted apart.
//!
//! The policy is drop, not pause: pausing the socket of a server whose events back up
//! would hand the backlog to Asterisk, which cuts a session whose socket stays full
//! for 100 ms (its `writetimeout`), losing everything after it; dropping here keeps
//! the session and counts every loss.
//!
//! The queue is bounded twice: by events (`listen.outlet_queue_events`) and by bytes
//! (half of `options.memory_limit`). Each queued event keeps its charge of the
//! driver's memory budget until the outlet has written and dropped it, so the budget
//! sees the queue too.
//!
//! # Writing an outlet
//! Implement [`Outlet`]: `write` gets the records in order, as many as were queued,
//! and may block as long as it likes (it runs on its own thread). An error ends the
//! outlet; `ami listen` then stops with exit code 3 and a log line. [`JsonLines`] is
//! the outlet for stdout and for an append-only file.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ami_mio::Health;
use ami_proto::Event;

use crate::json::{self, WallClock};
use crate::worker::spawn_thread;

/// One record of the stream `ami listen` writes.
#[derive(Debug)]
pub enum Record {
    /// An event, with the wall-clock time it was received (UNIX seconds).
    Event {
        /// The event (it keeps its memory charge while queued).
        event: Event,
        /// When it was received, UNIX seconds.
        received_at: f64,
    },
    /// A server's health changed.
    Health {
        /// The server key.
        server: Arc<str>,
        /// The health before.
        from: Health,
        /// The health now.
        to: Health,
        /// When, UNIX seconds.
        at: f64,
    },
    /// Events of a server were dropped since the last such record.
    Dropped {
        /// The server key.
        server: Arc<str>,
        /// Dropped since the last record of this server and reason.
        count: u64,
        /// Dropped in all, for this server and reason.
        total: u64,
        /// Why: `outlet_slow`, `memory_limit` or `queue_full`.
        reason: &'static str,
    },
    /// A logged-in session ended (it is being reconnected).
    SessionLost {
        /// The server key.
        server: Arc<str>,
        /// Why it ended.
        reason: String,
        /// When, UNIX seconds.
        at: f64,
    },
    /// A call ended (the call tracker's record; `ami calls`, `ami listen --calls`).
    Call {
        /// The server key.
        server: Arc<str>,
        /// What the tracker saw of it.
        call: Box<ami_mio::ami_cluster::CallEnded>,
        /// Its start, answer and end, UNIX seconds.
        created_at: f64,
        /// When it was answered, UNIX seconds.
        answered_at: Option<f64>,
        /// When it ended, UNIX seconds.
        ended_at: f64,
    },
    /// A server is logged in again after a lost session.
    SessionBack {
        /// The server key.
        server: Arc<str>,
        /// When, UNIX seconds.
        at: f64,
    },
}

impl Record {
    /// The record of a call that ended on `server`, its instants in UNIX seconds by
    /// `clock`.
    pub fn call(server: &str, call: &ami_mio::ami_cluster::CallEnded, clock: &WallClock) -> Record {
        Record::Call {
            server: server.into(),
            created_at: clock.unix_seconds(call.created),
            answered_at: call.answered.map(|at| clock.unix_seconds(at)),
            ended_at: clock.unix_seconds(call.ended),
            call: Box::new(call.clone()),
        }
    }

    /// Writes the record as one JSON object and a newline (see the README's schema).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Record::Event { event, received_at } => {
                out.extend_from_slice(b"{\"type\":\"event\",\"server\":");
                json::string(out, event.server_key());
                out.extend_from_slice(b",\"name\":");
                json::string(out, event.name());
                out.extend_from_slice(b",\"received_at\":");
                json::seconds(out, *received_at);
                out.extend_from_slice(b",\"headers\":");
                json::header_array(out, &event.message);
                out.push(b'}');
            }
            Record::Health {
                server,
                from,
                to,
                at,
            } => {
                out.extend_from_slice(b"{\"type\":\"health\",\"server\":");
                json::string(out, server);
                out.extend_from_slice(b",\"from\":");
                json::string(out, &from.to_string());
                out.extend_from_slice(b",\"to\":");
                json::string(out, &to.to_string());
                out.extend_from_slice(b",\"at\":");
                json::seconds(out, *at);
                out.push(b'}');
            }
            Record::Dropped {
                server,
                count,
                total,
                reason,
            } => {
                out.extend_from_slice(b"{\"type\":\"dropped\",\"server\":");
                json::string(out, server);
                out.extend_from_slice(
                    format!(",\"count\":{count},\"total\":{total},\"reason\":").as_bytes(),
                );
                json::string(out, reason);
                out.push(b'}');
            }
            Record::SessionLost { server, reason, at } => {
                out.extend_from_slice(b"{\"type\":\"session_lost\",\"server\":");
                json::string(out, server);
                out.extend_from_slice(b",\"reason\":");
                json::string(out, reason);
                out.extend_from_slice(b",\"at\":");
                json::seconds(out, *at);
                out.push(b'}');
            }
            Record::Call { .. } => {
                let object: serde_json::Map<String, serde_json::Value> = self
                    .call_fields()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                out.extend_from_slice(serde_json::Value::Object(object).to_string().as_bytes());
            }
            Record::SessionBack { server, at } => {
                out.extend_from_slice(b"{\"type\":\"session_back\",\"server\":");
                json::string(out, server);
                out.extend_from_slice(b",\"at\":");
                json::seconds(out, *at);
                out.push(b'}');
            }
        }
        out.push(b'\n');
    }

    /// A call record's fields, in the order of the README's schema (`None` values for
    /// what is not known). Empty for other records.
    pub fn call_fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::{Value, json};
        let Record::Call {
            server,
            call,
            created_at,
            answered_at,
            ended_at,
        } = self
        else {
            return Vec::new();
        };
        vec![
            ("type", json!("call")),
            ("server", json!(&**server)),
            ("outcome", json!(call.outcome.as_str())),
            ("cause", json!(call.cause)),
            ("cause_txt", json!(call.cause_txt)),
            ("originate_reason", json!(call.originate_reason)),
            ("action_id", json!(call.action_id)),
            ("uniqueid", json!(call.uniqueid)),
            ("linkedid", json!(call.linkedid)),
            ("channel", json!(call.channels.first())),
            ("channels", json!(call.channels)),
            ("created_at", json!(created_at)),
            ("answered_at", json!(answered_at)),
            ("ended_at", json!(ended_at)),
            ("ring_ms", json!(call.ring_ms())),
            ("talk_ms", json!(call.talk_ms())),
            (
                "variables",
                Value::Array(call.variables.iter().map(|(k, v)| json!([k, v])).collect()),
            ),
        ]
    }

    /// A status record's fields, as the gateway's status stream carries them: `type`,
    /// `server`, then the record's own (`from`/`to`/`at`, `count`/`total`/`reason`,
    /// `reason`/`at`, `at`). `None` for an event.
    pub fn status_fields(&self) -> Option<Vec<(&'static str, String)>> {
        let seconds = |at: f64| {
            let mut out = Vec::new();
            json::seconds(&mut out, at);
            String::from_utf8(out).unwrap_or_default()
        };
        Some(match self {
            Record::Event { .. } => return None,
            // A call's fields: strings as they are, numbers as text, unknowns left out.
            Record::Call { .. } => self
                .call_fields()
                .into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some((k, s)),
                    other => Some((k, other.to_string())),
                })
                .collect(),
            Record::Health {
                server,
                from,
                to,
                at,
            } => vec![
                ("type", "health".into()),
                ("server", server.to_string()),
                ("from", from.to_string()),
                ("to", to.to_string()),
                ("at", seconds(*at)),
            ],
            Record::Dropped {
                server,
                count,
                total,
                reason,
            } => vec![
                ("type", "dropped".into()),
                ("server", server.to_string()),
                ("count", count.to_string()),
                ("total", total.to_string()),
                ("reason", (*reason).into()),
            ],
            Record::SessionLost { server, reason, at } => vec![
                ("type", "session_lost".into()),
                ("server", server.to_string()),
                ("reason", reason.clone()),
                ("at", seconds(*at)),
            ],
            Record::SessionBack { server, at } => vec![
                ("type", "session_back".into()),
                ("server", server.to_string()),
                ("at", seconds(*at)),
            ],
        })
    }

    /// The event in it, if it is one.
    pub fn event(&self) -> Option<&Event> {
        match self {
            Record::Event { event, .. } => Some(event),
            _ => None,
        }
    }
}

/// Where records go. Runs on a thread of its own: `write` may block.
pub trait Outlet: Send + 'static {
    /// Writes `records`, in order, and makes them durable as far as the outlet can
    /// (a flush). Reports each record once it is wholly written with
    /// [`Progress::written`], so that an outlet blocked at exit is charged only with
    /// what it did not write. An error ends the outlet.
    fn write(&mut self, records: &[Record], progress: &Progress) -> io::Result<()>;

    /// The reason events dropped for this outlet are counted under: `outlet_slow`
    /// unless the outlet names its own (the Redis outlet's is `redis`).
    fn drop_reason(&self) -> &'static str {
        "outlet_slow"
    }
}

/// How far an outlet got with the batch it is writing: records wholly written, and
/// the events among them. Shared with the AMI loop's thread.
#[derive(Debug, Default)]
pub struct Progress {
    records: AtomicU64,
    events: AtomicU64,
    /// Records and events of the write in progress, which may be partly out when the
    /// process exits during it.
    writing: AtomicU64,
    writing_events: AtomicU64,
    /// Events the outlet could not deliver (e.g. refused by Redis), per server, not
    /// yet added to the queue's drop counts.
    refused: Mutex<HashMap<Arc<str>, u64>>,
}

impl Progress {
    /// `records` more records of the batch are wholly written, `events` of them
    /// events.
    pub fn written(&self, records: u64, events: u64) {
        self.records.fetch_add(records, Ordering::Release);
        self.events.fetch_add(events, Ordering::Release);
        self.writing.store(0, Ordering::Release);
        self.writing_events.store(0, Ordering::Release);
    }

    /// An event of `server` could not be delivered (the outlet's destination refused
    /// it): counted as dropped, under the outlet's drop reason.
    pub fn refused(&self, server: &Arc<str>) {
        *self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(server.clone())
            .or_default() += 1;
    }

    /// A write of `records` records (`events` of them events) begins; until
    /// [`written`](Self::written), they may be partly out.
    pub fn writing(&self, records: u64, events: u64) {
        self.writing.store(records, Ordering::Release);
        self.writing_events.store(events, Ordering::Release);
    }

    fn take(&self) -> (u64, u64) {
        self.writing(0, 0);
        (
            self.records.swap(0, Ordering::AcqRel),
            self.events.swap(0, Ordering::AcqRel),
        )
    }

    fn get(&self) -> (u64, u64) {
        (
            self.records.load(Ordering::Acquire),
            self.events.load(Ordering::Acquire),
        )
    }

    fn in_write(&self) -> (u64, u64) {
        (
            self.writing.load(Ordering::Acquire),
            self.writing_events.load(Ordering::Acquire),
        )
    }
}

/// JSON lines (one [`Record::write_json`] per record) to any writer: stdout, an
/// append-only file.
///
/// It writes whole lines, up to 1 MiB at a time, and reports each write's lines once
/// it returns. To a pipe ([`JsonLines::pipe`]) it writes no more than the pipe has
/// room for (asked of the kernel before each write), and when the pipe is full, at
/// most `PIPE_BUF` (4,096) bytes: such a write is atomic, all or nothing. So a write
/// blocked at exit has put none of its lines in the pipe, and the reader got exactly
/// the lines reported written; [`Unwritten::in_write`] bounds what a write the exit
/// cut short may have put out anyway.
pub struct JsonLines<W> {
    writer: W,
    /// The pipe `writer` writes to, to ask how much room it has.
    pipe: Option<OwnedFd>,
    buf: Vec<u8>,
    /// For each line in `buf`: where it ends, and whether it is an event.
    lines: Vec<(usize, bool)>,
}

/// The atomic write size of a Linux pipe.
const PIPE_BUF: usize = 4096;

/// The size a stdout pipe is grown to: Linux's default `pipe-max-size`, 1 MiB.
const PIPE_SIZE: usize = 1 << 20;

impl<W: Write + Send + 'static> JsonLines<W> {
    /// JSON lines to `writer` (a file, or anything that is not a pipe).
    pub fn new(writer: W) -> Self {
        JsonLines {
            writer,
            pipe: None,
            buf: Vec::with_capacity(WRITE_CHUNK + 64 * 1024),
            lines: Vec::new(),
        }
    }

    /// JSON lines to `writer`, which writes to the pipe `pipe` (see the type's
    /// documentation). The pipe is grown to [`PIPE_SIZE`] if the system lets it (a
    /// larger pipe takes bigger writes and wakes the reader less often).
    pub fn pipe(writer: W, pipe: OwnedFd) -> Self {
        if rustix::pipe::fcntl_getpipe_size(&pipe).is_ok_and(|size| size < PIPE_SIZE) {
            // Best effort: past `/proc/sys/fs/pipe-max-size` the pipe keeps its size.
            let _ = rustix::pipe::fcntl_setpipe_size(&pipe, PIPE_SIZE);
        }
        JsonLines {
            pipe: Some(pipe),
            ..JsonLines::new(writer)
        }
    }

    /// Bytes the next write may carry: the pipe's room (at least `PIPE_BUF`, the
    /// atomic size, when it is full), or a chunk for anything else.
    fn room(&self) -> usize {
        let Some(pipe) = &self.pipe else {
            return WRITE_CHUNK;
        };
        let capacity = rustix::pipe::fcntl_getpipe_size(pipe).unwrap_or(PIPE_BUF);
        let queued = rustix::io::ioctl_fionread(pipe).map_or(capacity as u64, |n| n);
        // The pipe holds pages: count a partly filled one as full, in case the next
        // write cannot be merged into it.
        let queued = usize::try_from(queued)
            .unwrap_or(usize::MAX)
            .saturating_add(PIPE_BUF - 1)
            / PIPE_BUF
            * PIPE_BUF;
        capacity.saturating_sub(queued).max(PIPE_BUF)
    }

    /// Writes `buf` out in whole lines, reporting each write's lines.
    fn drain(&mut self, progress: &Progress) -> io::Result<()> {
        let (mut start, mut line) = (0, 0);
        while line < self.lines.len() {
            // As many whole lines as the room takes (at least one).
            let room = self.room();
            let first = line;
            line += 1;
            while line < self.lines.len() && self.lines[line].0 - start <= room {
                line += 1;
            }
            let end = self.lines[line - 1].0;
            let events = self.lines[first..line].iter().filter(|l| l.1).count() as u64;
            progress.writing((line - first) as u64, events);
            self.writer.write_all(&self.buf[start..end])?;
            progress.written((line - first) as u64, events);
            start = end;
        }
        self.buf.clear();
        self.lines.clear();
        Ok(())
    }
}

/// Bytes encoded before they are written, at most (then the next ones are encoded).
const WRITE_CHUNK: usize = 1 << 20;

impl<W: Write + Send + 'static> Outlet for JsonLines<W> {
    fn write(&mut self, records: &[Record], progress: &Progress) -> io::Result<()> {
        for record in records {
            record.write_json(&mut self.buf);
            self.lines
                .push((self.buf.len(), matches!(record, Record::Event { .. })));
            if self.buf.len() >= WRITE_CHUNK {
                self.drain(progress)?;
            }
        }
        self.drain(progress)?;
        self.writer.flush()
    }
}

/// How much the queue holds at most.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Events queued at most.
    pub events: usize,
    /// Bytes of queued events (their memory charge) at most.
    pub bytes: usize,
    /// Status records queued at most.
    pub status: usize,
}

/// What the queue counted.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Events dropped because the outlet fell behind (or its destination refused
    /// them), per server.
    pub dropped: HashMap<Arc<str>, u64>,
    /// Status records dropped (a queue of nothing but status records was full).
    pub status_dropped: u64,
    /// Records the outlet has written.
    pub written: u64,
    /// Records waiting now.
    pub queued: usize,
}

#[derive(Default)]
struct State {
    records: VecDeque<Record>,
    events: usize,
    bytes: usize,
    counts: Counts,
    /// No more records will come.
    closed: bool,
    /// Records of the batch the outlet thread is writing.
    in_flight: u64,
    /// Events among them.
    in_flight_events: u64,
    /// Bytes of those events (their memory charge).
    in_flight_bytes: usize,
    /// Why the outlet ended, if it failed.
    failure: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when records arrive or the queue closes (for the outlet thread), and
    /// when a batch is written (for [`OutletQueue::finish`]).
    changed: Condvar,
    bounds: Bounds,
    /// How far the outlet got with the batch in flight.
    progress: Progress,
    /// The outlet's [`Outlet::drop_reason`].
    drop_reason: &'static str,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bounded queue between the AMI loop and an outlet's thread.
pub struct OutletQueue {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What [`OutletQueue::finish`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwritten {
    /// Records still queued or being written at the deadline.
    pub records: u64,
    /// Events among them.
    pub events: u64,
    /// Of those, the records of a write that had begun: perhaps partly out when the
    /// process exits (writes to a full pipe are atomic, so usually none of them is).
    pub in_write: u64,
    /// Events among `in_write`.
    pub in_write_events: u64,
}

impl OutletQueue {
    /// Starts `outlet` on a thread named `name`, fed by a queue of `bounds`.
    pub fn start(name: &str, outlet: impl Outlet, bounds: Bounds) -> io::Result<OutletQueue> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            bounds,
            progress: Progress::default(),
            drop_reason: outlet.drop_reason(),
        });
        let thread = {
            let shared = shared.clone();
            spawn_thread(name, move || run(&shared, outlet))?
        };
        Ok(OutletQueue {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `batch` (emptying it), dropping the oldest events past the bounds.
    pub fn push(&self, batch: &mut Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let bounds = self.shared.bounds;
        let mut state = self.shared.lock();
        for record in batch.drain(..) {
            if let Some(event) = record.event() {
                state.events += 1;
                state.bytes += event.charged();
            }
            state.records.push_back(record);
        }
        let over = |s: &State| {
            s.events + s.in_flight_events as usize > bounds.events
                || s.bytes + s.in_flight_bytes > bounds.bytes
        };
        if over(&state) || state.records.len() - state.events > bounds.status {
            drop_oldest(&mut state, bounds);
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// The reason this queue's drops are counted under ([`Outlet::drop_reason`]).
    pub fn drop_reason(&self) -> &'static str {
        self.shared.drop_reason
    }

    /// What was counted so far.
    pub fn counts(&self) -> Counts {
        let state = self.shared.lock();
        let mut counts = state.counts.clone();
        counts.queued = state.records.len();
        counts
    }

    /// Why the outlet ended, once it failed (e.g. a broken pipe).
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// No more records: lets the outlet write what is queued until `deadline`.
    /// Returns what it could not write by then (the thread is left to finish or to
    /// block; the process exits without it).
    pub fn finish(mut self, deadline: Instant) -> Unwritten {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.changed.notify_all();
        loop {
            let busy = !state.records.is_empty() || state.in_flight > 0;
            if !busy || state.failure.is_some() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left.min(Duration::from_millis(100)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let (records, events) = self.shared.progress.get();
        let (in_write, in_write_events) = if state.in_flight > 0 {
            self.shared.progress.in_write()
        } else {
            (0, 0)
        };
        let unwritten = Unwritten {
            records: state.records.len() as u64 + state.in_flight.saturating_sub(records),
            events: state.events as u64 + state.in_flight_events.saturating_sub(events),
            in_write,
            in_write_events,
        };
        let done = unwritten.records == 0;
        drop(state);
        if done && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        unwritten
    }
}

/// Drops records from the front until the queue and the batch in flight together are
/// within `bounds`: events first (counted per server as `outlet_slow`), status
/// records only when no event is left.
fn drop_oldest(state: &mut State, bounds: Bounds) {
    let mut kept = VecDeque::new();
    while state.events + state.in_flight_events as usize > bounds.events
        || state.bytes + state.in_flight_bytes > bounds.bytes
    {
        let Some(record) = state.records.pop_front() else {
            break;
        };
        match record {
            Record::Event { event, .. } => {
                state.events -= 1;
                state.bytes -= event.charged();
                *state
                    .counts
                    .dropped
                    .entry(event.server_key().clone())
                    .or_default() += 1;
            }
            status => kept.push_back(status),
        }
    }
    // Status records met on the way stay, ahead of what is left.
    while let Some(status) = kept.pop_back() {
        state.records.push_front(status);
    }
    while state.records.len() - state.events > bounds.status {
        let Some(index) = state.records.iter().position(|r| r.event().is_none()) else {
            break;
        };
        state.records.remove(index);
        state.counts.status_dropped += 1;
    }
}

/// Records the outlet thread takes at once at most: the batch in flight is part of
/// the queue's bounds, and a small one leaves room for new events while it is
/// written.
const MAX_BATCH: usize = 8192;

/// The outlet thread: takes what is queued (up to [`MAX_BATCH`]), writes it, repeats
/// until closed.
fn run(shared: &Shared, mut outlet: impl Outlet) {
    let mut batch: VecDeque<Record> = VecDeque::new();
    loop {
        {
            let mut state = shared.lock();
            state.in_flight = 0;
            state.in_flight_events = 0;
            state.in_flight_bytes = 0;
            while state.records.is_empty() && !state.closed {
                shared.changed.notify_all();
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.records.is_empty() {
                drop(state);
                shared.changed.notify_all();
                return;
            }
            let take = state.records.len().min(MAX_BATCH);
            batch.extend(state.records.drain(..take));
            let (events, bytes) = batch
                .iter()
                .filter_map(Record::event)
                .fold((0, 0), |(n, b), e| (n + 1, b + e.charged()));
            shared.progress.take();
            state.in_flight = batch.len() as u64;
            state.in_flight_events = events as u64;
            state.in_flight_bytes = bytes;
            state.events -= events;
            state.bytes -= bytes;
        }
        let written = outlet.write(batch.make_contiguous(), &shared.progress);
        let count = batch.len() as u64;
        // Dropping the events gives their memory back to the budget.
        batch.clear();
        let mut state = shared.lock();
        for (server, n) in shared
            .progress
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            *state.counts.dropped.entry(server).or_default() += n;
        }
        match written {
            Ok(()) => state.counts.written += count,
            Err(error) => {
                state.failure = Some(error.to_string());
                state.in_flight = 0;
                state.in_flight_events = 0;
                state.in_flight_bytes = 0;
                state.closed = true;
                drop(state);
                shared.changed.notify_all();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ami_proto::{Config, Connection, Output};

    /// `n` events of server `key`, from a logged-in connection.
    fn events(key: &str, n: usize) -> Vec<Event> {
        let now = Instant::now();
        let mut config = Config::new(key, "admin", "secret");
        config.event_queue_capacity = n.max(1);
        let mut conn = Connection::new(config, 1, 1, now);
        conn.handle_connected(now);
        conn.handle_data(now, b"Asterisk Call Manager/11.0.0\r\n");
        let login = String::from_utf8(conn.poll_transmit().to_vec()).unwrap();
        let id = login
            .lines()
            .find_map(|l| l.strip_prefix("ActionID: "))
            .unwrap()
            .to_owned();
        conn.advance_transmit(login.len());
        conn.handle_data(
            now,
            format!("Response: Success\r\nActionID: {id}\r\n\r\n").as_bytes(),
        );
        for i in 0..n {
            conn.handle_data(
                now,
                format!("Event: UserEvent\r\nPrivilege: user,all\r\nSeq: {i}\r\nNote: a \"quoted\" \\ value\u{1}\r\n\r\n").as_bytes(),
            );
        }
        std::iter::from_fn(|| conn.poll())
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn records(key: &str, n: usize) -> Vec<Record> {
        events(key, n).into_iter().map(record).collect()
    }

    fn record(event: Event) -> Record {
        Record::Event {
            event,
            received_at: 1_700_000_000.25,
        }
    }

    #[test]
    fn an_event_record_is_one_json_line_with_the_headers_in_wire_order() {
        let event = events("pbx-1", 1).pop().unwrap();
        let mut out = Vec::new();
        record(event).write_json(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with("}\n"));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "event");
        assert_eq!(value["server"], "pbx-1");
        assert_eq!(value["name"], "UserEvent");
        assert_eq!(value["received_at"], 1_700_000_000.25);
        assert_eq!(
            value["headers"],
            serde_json::json!([
                ["Event", "UserEvent"],
                ["Privilege", "user,all"],
                ["Seq", "0"],
                ["Note", "a \"quoted\" \\ value\u{1}"]
            ])
        );
    }

    /// An outlet that blocks until told to go on, then records what it wrote.
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Outlet for Gate {
        fn write(&mut self, records: &[Record], _: &Progress) -> io::Result<()> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            let mut seen = self.seen.lock().unwrap();
            for r in records {
                seen.push(match r {
                    Record::Event { event, .. } => event.get("Seq").unwrap().to_owned(),
                    Record::Dropped { count, .. } => format!("dropped {count}"),
                    _ => "status".into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_blocked_outlet_drops_the_oldest_events_counted_per_server_and_keeps_status() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            open: open.clone(),
            seen: seen.clone(),
        };
        let bounds = Bounds {
            events: 10,
            bytes: usize::MAX,
            status: 100,
        };
        let queue = OutletQueue::start("test-outlet", gate, bounds).unwrap();
        let mut all = events("a", 30).into_iter();
        // The first record is taken by the outlet thread, which then blocks on it.
        queue.push(&mut vec![record(all.next().unwrap())]);
        while queue.counts().queued > 0 {
            std::thread::yield_now();
        }
        let mut batch: Vec<Record> = all.map(record).collect();
        batch.insert(
            5,
            Record::Dropped {
                server: "a".into(),
                count: 1,
                total: 1,
                reason: "memory_limit",
            },
        );
        queue.push(&mut batch);
        let counts = queue.counts();
        // 29 events queued and 1 in flight, past a bound of 10: the 20 oldest queued
        // dropped; the status record stays.
        assert_eq!(counts.dropped.get("a").copied(), Some(20));
        assert_eq!(counts.queued, 10);
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        let unwritten = queue.finish(Instant::now() + Duration::from_secs(30));
        assert_eq!(
            unwritten,
            Unwritten {
                records: 0,
                events: 0,
                in_write: 0,
                in_write_events: 0,
            }
        );
        let seen = seen.lock().unwrap().clone();
        let mut expected = vec!["0".to_owned(), "dropped 1".to_owned()];
        expected.extend((21..30).map(|i| i.to_string()));
        assert_eq!(seen, expected);
    }

    #[test]
    fn the_byte_bound_drops_too_and_gives_the_memory_back() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = Gate {
            open: open.clone(),
            seen: Arc::default(),
        };
        let all = events("b", 100);
        let budget = all[0].charged();
        let bounds = Bounds {
            events: usize::MAX,
            bytes: budget * 10,
            status: 100,
        };
        let queue = OutletQueue::start("test-outlet", gate, bounds).unwrap();
        let mut batch: Vec<Record> = all.into_iter().map(record).collect();
        queue.push(&mut batch);
        let counts = queue.counts();
        let dropped = counts.dropped.get("b").copied().unwrap_or(0);
        // One push, checked under the lock: the bound applied before the thread took
        // anything. Later events are a byte longer (two-digit `Seq`), so fewer fit.
        assert_eq!(dropped + counts.queued as u64, 100, "{counts:?}");
        assert!((9..=10).contains(&counts.queued), "{counts:?}");
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        assert_eq!(
            queue
                .finish(Instant::now() + Duration::from_secs(30))
                .records,
            0
        );
    }

    #[test]
    fn a_pipe_blocked_at_exit_holds_exactly_the_lines_reported_written() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let (mut reader, writer) = io::pipe().unwrap();
        let fd = writer.as_fd().try_clone_to_owned().unwrap();
        let total = 30_000; // ~3 MB: several times the pipe (grown to 1 MiB)
        let bounds = Bounds {
            events: 100_000,
            bytes: usize::MAX,
            status: 10,
        };
        let queue = OutletQueue::start("test-outlet", JsonLines::pipe(writer, fd), bounds).unwrap();
        queue.push(&mut records("p", total));
        // Nobody reads: the outlet fills the pipe and blocks; give up soon.
        let unwritten = queue.finish(Instant::now() + Duration::from_millis(300));
        assert!(unwritten.records > 0, "{unwritten:?}");
        // What the pipe holds now is what the reader gets; the outlet thread, still
        // blocked, would go on writing once it is read, so read exactly that.
        let held = rustix::io::ioctl_fionread(&reader).unwrap() as usize;
        let mut got = vec![0; held];
        reader.read_exact(&mut got).unwrap();
        let text = String::from_utf8(got).unwrap();
        assert!(text.ends_with('\n'), "a line was cut");
        let lines = text.lines().count() as u64;
        assert_eq!(lines + unwritten.records, total as u64, "{unwritten:?}");
        assert_eq!(unwritten.events, unwritten.records);
        // The write it is blocked in is an atomic one: none of it is out.
        assert!(unwritten.in_write > 0, "{unwritten:?}");
    }

    /// Fails every write.
    struct Broken;

    impl Outlet for Broken {
        fn write(&mut self, _: &[Record], _: &Progress) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_failed_outlet_reports_why_and_finish_does_not_wait() {
        let queue = OutletQueue::start(
            "test-outlet",
            Broken,
            Bounds {
                events: 10,
                bytes: usize::MAX,
                status: 10,
            },
        )
        .unwrap();
        queue.push(&mut records("c", 1));
        while queue.failure().is_none() {
            std::thread::yield_now();
        }
        assert!(queue.failure().unwrap().contains("roken pipe"));
        let started = Instant::now();
        queue.finish(Instant::now() + Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_blocked_outlet_at_the_deadline_counts_what_it_did_not_write() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = Gate {
            open: open.clone(),
            seen: Arc::default(),
        };
        let queue = OutletQueue::start(
            "test-outlet",
            gate,
            Bounds {
                events: 100,
                bytes: usize::MAX,
                status: 10,
            },
        )
        .unwrap();
        queue.push(&mut records("d", 5));
        let unwritten = queue.finish(Instant::now() + Duration::from_millis(200));
        assert_eq!(
            unwritten,
            Unwritten {
                records: 5,
                events: 5,
                in_write: 0,
                in_write_events: 0,
            }
        );
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
    }
}
