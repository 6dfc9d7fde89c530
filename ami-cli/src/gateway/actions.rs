//! Actions in, completions out: the gateway's two Redis threads.
//!
//! - The **requests** thread reads the action streams with `XREADGROUP` in the
//!   gateway's group: the shared `gateway.actions_stream`, and the
//!   `gateway.server_actions_stream` of each server this gateway owns. It takes at
//!   most `max_in_flight - in flight` entries at a time, so that requests beyond
//!   `max_in_flight` wait in Redis, not here. Each request is checked
//!   ([`request::parse`]), then submitted to the driver (the server named, or the one
//!   the route picks), forwarded to the stream of the gateway that owns the server it
//!   names, or answered `invalid`.
//! - The **completions** thread writes each completion to the request's `reply_to`
//!   stream and acknowledges the request (`XACK`) in one `MULTI`/`EXEC`: a request
//!   is acknowledged exactly when its completion is in Redis.
//!
//! **At most once.** An entry is read once (`>`) and never sent again. Requests a
//! gateway took and did not complete (it was killed) stay pending in the group: when
//! a gateway of that consumer name starts, it answers each of its own pending
//! requests `gateway_restarted`; and every gateway answers so the pending requests of
//! a consumer whose lease has expired (it died and did not come back), after
//! claiming them (`XCLAIM`). A completion in doubt (the connection failed during
//! `EXEC`) is written again only if its request is still pending.
//!
//! **Leases.** A gateway holds, while it runs, `ami-gateway:{group}:consumer:{name}`
//! (so that two live gateways never share a consumer name: the second waits for the
//! lease to expire, [`LEASE_TTL`], then refuses to start) and
//! `ami-gateway:{group}:owner:{server}` for each server it owns (how other gateways
//! know where to forward), refreshed every [`LEASE_REFRESH`] and deleted at a clean
//! exit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ami_mio::Submitter;
use redis::{RedisResult, Value};

use super::link::{Link, sleep_unless};
use super::redis_outlet::text;
use super::request::{self, Fields, Invalid, Request};
use crate::CliError;
use crate::config::GatewaySettings;
use crate::worker::spawn_thread;

/// How long a lease lives without a refresh.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often the leases are refreshed and dead consumers looked for.
pub const LEASE_REFRESH: Duration = Duration::from_secs(2);

/// `BLOCK` of each `XREADGROUP`: how long a stop may wait for the reader.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// Entries a reply stream keeps, about (`MAXLEN ~`).
const REPLY_MAXLEN: usize = 100_000;

/// Completions written in one transaction at most.
const MAX_COMPLETION_BATCH: usize = 256;

/// What the requests thread does with a request.
#[derive(Debug)]
struct Done {
    /// The action stream the request came from, and its entry ID (to `XACK`).
    stream: String,
    entry_id: String,
    /// The entry to add: a completion on `reply_to`, or a forwarded request.
    add: Option<(String, Vec<(String, String)>)>,
    /// What it counts as, in `ami_gateway_requests_total`.
    outcome: Outcome,
}

/// How a request ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Invalid,
    Forwarded,
    Restarted,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::Error, "error"),
    (Outcome::Invalid, "invalid"),
    (Outcome::Forwarded, "forwarded"),
    (Outcome::Restarted, "gateway_restarted"),
];

/// What the threads share.
#[derive(Debug, Default)]
struct Shared {
    /// Requests taken and not yet acknowledged.
    in_flight: Mutex<usize>,
    freed: Condvar,
    /// Why the gateway cannot go on (a consumer name or server held by another).
    failure: Mutex<Option<String>>,
    outcomes: [AtomicU64; 5],
    /// Completions Redis refused (e.g. `reply_to` is not a stream): acknowledged,
    /// not delivered.
    completions_refused: AtomicU64,
}

impl Shared {
    fn fail(&self, why: String) {
        tracing::error!(error = %why, "gateway cannot go on");
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    fn take(&self, n: usize) {
        *self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += n;
    }

    fn release(&self, n: usize) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *in_flight = in_flight.saturating_sub(n);
        self.freed.notify_all();
    }

    fn count(&self, outcome: Outcome) {
        let index = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.outcomes[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Names of the keys and streams, from the config.
#[derive(Debug, Clone)]
struct Names {
    settings: GatewaySettings,
    /// The servers this gateway owns, in config order.
    servers: Vec<String>,
    /// A token unique to this process: the value of its consumer lease.
    token: String,
}

impl Names {
    fn server_stream(&self, server: &str) -> String {
        self.settings
            .server_actions_stream
            .replace("{server}", server)
    }

    /// The streams this gateway reads: the shared one, then each server's.
    fn read_streams(&self) -> Vec<String> {
        let mut streams = vec![self.settings.actions_stream.clone()];
        streams.extend(self.servers.iter().map(|s| self.server_stream(s)));
        streams
    }

    fn consumer_lease(&self, consumer: &str) -> String {
        format!("ami-gateway:{}:consumer:{consumer}", self.settings.group)
    }

    fn owner_lease(&self, server: &str) -> String {
        format!("ami-gateway:{}:owner:{server}", self.settings.group)
    }

    /// The server a per-server stream is for.
    fn server_of_stream(&self, stream: &str) -> Option<&str> {
        self.servers
            .iter()
            .find(|s| self.server_stream(s) == stream)
            .map(String::as_str)
    }
}

/// The gateway's action side: both threads, and what they share.
pub struct Actions {
    stop: Arc<AtomicBool>,
    /// Set by [`Actions::finish`]: the completions thread ends once it has written
    /// what is queued.
    closing: Arc<AtomicBool>,
    /// Set at the deadline: give up on Redis.
    give_up: Arc<AtomicBool>,
    shared: Arc<Shared>,
    links_up: Vec<(&'static str, Arc<AtomicBool>)>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions").finish_non_exhaustive()
    }
}

impl Actions {
    /// Starts both threads for the servers `servers` (this gateway's, in config
    /// order), submitting to the driver through `submitter`.
    pub fn start(
        settings: &GatewaySettings,
        servers: Vec<String>,
        submitter: Submitter,
        events_up: Arc<AtomicBool>,
    ) -> Result<Actions, CliError> {
        let names = Names {
            settings: settings.clone(),
            servers,
            token: format!(
                "{}:{}:{}",
                settings.consumer,
                std::process::id(),
                crate::json::unix_now()
            ),
        };
        let link = |role| {
            Link::new(&settings.redis_url, role)
                .map_err(|e| CliError::Usage(format!("gateway.redis_url: {e}")))
        };
        let reader_link = link("requests")?.with_read_timeout(READ_BLOCK + Duration::from_secs(5));
        let writer_link = link("completions")?;
        let links_up = vec![
            ("events", events_up),
            ("requests", reader_link.up()),
            ("completions", writer_link.up()),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let give_up = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let (done_tx, done_rx) = channel();
        let spawn_error = |e| CliError::io("cannot start a gateway thread", e);
        let reader = {
            let reader = Reader {
                link: reader_link,
                names: names.clone(),
                shared: shared.clone(),
                stop: stop.clone(),
                done: done_tx,
                submitter,
                leases_at: None,
            };
            spawn_thread("ami-gw-requests", move || reader.run()).map_err(spawn_error)?
        };
        let writer = {
            let writer = Writer {
                link: writer_link,
                group: settings.group.clone(),
                shared: shared.clone(),
                closing: closing.clone(),
                give_up: give_up.clone(),
                done: done_rx,
            };
            spawn_thread("ami-gw-completions", move || writer.run()).map_err(spawn_error)?
        };
        Ok(Actions {
            stop,
            closing,
            give_up,
            shared,
            links_up,
            reader: Some(reader),
            writer: Some(writer),
        })
    }

    /// The gateway's own metrics, in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(
            "# HELP ami_gateway_requests_total Requests read from the action streams, by how they ended.\n\
             # TYPE ami_gateway_requests_total counter\n",
        );
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let n = self.shared.outcomes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "ami_gateway_requests_total{{outcome=\"{name}\"}} {n}");
        }
        let in_flight = *self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = write!(
            out,
            "# HELP ami_gateway_requests_in_flight Requests taken and not yet completed.\n\
             # TYPE ami_gateway_requests_in_flight gauge\n\
             ami_gateway_requests_in_flight {in_flight}\n\
             # HELP ami_gateway_completions_refused_total Completions Redis refused (acknowledged, not delivered).\n\
             # TYPE ami_gateway_completions_refused_total counter\n\
             ami_gateway_completions_refused_total {}\n\
             # HELP ami_gateway_redis_up Whether each of the gateway's Redis connections is up.\n\
             # TYPE ami_gateway_redis_up gauge\n",
            self.shared.completions_refused.load(Ordering::Relaxed)
        );
        for (role, up) in &self.links_up {
            let _ = writeln!(
                out,
                "ami_gateway_redis_up{{role=\"{role}\"}} {}",
                u8::from(up.load(Ordering::Relaxed))
            );
        }
    }

    /// Why the gateway cannot go on, once it cannot.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads no more requests (the reader ends within [`READ_BLOCK`]).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.shared.freed.notify_all();
    }

    /// Writes the completions queued (the servers are logged off: every action in
    /// flight has completed or failed) until `deadline`; logs what was left.
    pub fn finish(mut self, deadline: Instant) {
        self.stop();
        self.closing.store(true, Ordering::Relaxed);
        for thread in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        self.give_up.store(true, Ordering::Relaxed);
        let left = *self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if left > 0 {
            tracing::warn!(
                requests = left,
                "requests not completed at exit: they stay pending and are answered \
                 gateway_restarted at the next start"
            );
        }
    }
}

/// The requests thread.
struct Reader {
    link: Link,
    names: Names,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    done: Sender<Done>,
    submitter: Submitter,
    /// When the leases were last refreshed (`None`: not yet held).
    leases_at: Option<Instant>,
}

/// One entry read from an action stream.
#[derive(Debug)]
struct Entry {
    stream: String,
    id: String,
    /// `None` for an entry deleted (trimmed) since it was delivered.
    fields: Option<Vec<(String, String)>>,
}

impl Reader {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(error) = self.step() {
                self.link.failed(&error);
                if !error.is_io_error() && !error.is_timeout() && !error.is_connection_dropped() {
                    tracing::warn!(%error, "reading requests failed");
                    sleep_unless(&self.stop, Duration::from_millis(500));
                }
            }
            if self
                .shared
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
            {
                return;
            }
        }
        self.release_leases();
    }

    /// Sets up once (groups, leases, recovery), refreshes the leases when due, and
    /// reads and handles one batch of requests.
    fn step(&mut self) -> RedisResult<()> {
        if self.leases_at.is_none() {
            self.set_up()?;
        } else if self
            .leases_at
            .is_some_and(|at| at.elapsed() >= LEASE_REFRESH)
        {
            self.refresh_leases()?;
            self.claim_from_dead_consumers()?;
        }
        let room = {
            let in_flight = self
                .shared
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let max = self.names.settings.max_in_flight;
            if *in_flight >= max {
                // Full: wait for completions (requests wait in Redis meanwhile).
                let _ = self
                    .shared
                    .freed
                    .wait_timeout(in_flight, READ_BLOCK)
                    .unwrap_or_else(PoisonError::into_inner);
                return Ok(());
            }
            max - *in_flight
        };
        let streams = self.names.read_streams();
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.names.settings.group)
            .arg(&self.names.settings.consumer)
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&streams);
        for _ in &streams {
            command.arg(">");
        }
        let Some(connection) = self.link.get(&self.stop) else {
            return Ok(());
        };
        let answer: Value = command.query(connection)?;
        let entries = read_entries(&answer);
        self.shared.take(entries.len());
        for entry in entries {
            self.handle(entry)?;
        }
        Ok(())
    }

    /// Creates the groups, takes the leases, and answers what a previous run of this
    /// consumer left pending.
    fn set_up(&mut self) -> RedisResult<()> {
        let Some(connection) = self.link.get(&self.stop) else {
            return Ok(());
        };
        for stream in self.names.read_streams() {
            let created: RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(&self.names.settings.group)
                .arg("0")
                .arg("MKSTREAM")
                .query(connection);
            match created {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        if !self.take_leases()? {
            return Ok(());
        }
        self.leases_at = Some(Instant::now());
        let consumer = self.names.settings.consumer.clone();
        let recovered = self.answer_pending_of(&consumer, false)?;
        tracing::info!(
            consumer = %consumer,
            group = %self.names.settings.group,
            streams = ?self.names.read_streams(),
            answered_gateway_restarted = recovered,
            "reading requests"
        );
        self.claim_from_dead_consumers()?;
        Ok(())
    }

    /// Takes the consumer lease and the owner lease of every server, waiting up to
    /// a lease's lifetime for a lease a previous run left. `Ok(false)`: another live
    /// gateway holds one (the failure is set) or the reader was stopped.
    fn take_leases(&mut self) -> RedisResult<bool> {
        let consumer_key = self.names.consumer_lease(&self.names.settings.consumer);
        let started = Instant::now();
        let mut waiting_logged = false;
        loop {
            let Some(connection) = self.link.get(&self.stop) else {
                return Ok(false);
            };
            let ttl = LEASE_TTL.as_millis() as u64;
            let taken: Option<String> = redis::cmd("SET")
                .arg(&consumer_key)
                .arg(&self.names.token)
                .arg("NX")
                .arg("PX")
                .arg(ttl)
                .query(connection)?;
            if taken.is_some() {
                break;
            }
            if started.elapsed() > LEASE_TTL + LEASE_REFRESH {
                self.shared.fail(format!(
                    "consumer name {:?} is in use by another live gateway (lease {consumer_key}); \
                     give each gateway its own gateway.consumer",
                    self.names.settings.consumer
                ));
                return Ok(false);
            }
            if !waiting_logged {
                waiting_logged = true;
                tracing::info!(
                    lease = %consumer_key,
                    "consumer lease held (a previous run, or another gateway): waiting for it \
                     to expire"
                );
            }
            sleep_unless(&self.stop, Duration::from_millis(250));
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
        }
        let Some(connection) = self.link.get(&self.stop) else {
            return Ok(false);
        };
        for server in self.names.servers.clone() {
            let key = self.names.owner_lease(&server);
            let owner: Option<String> = redis::cmd("GET").arg(&key).query(connection)?;
            if let Some(owner) = owner.filter(|o| *o != self.names.settings.consumer) {
                self.shared.fail(format!(
                    "server {server:?} is owned by the live gateway {owner:?} ({key}); \
                     give each gateway its own servers (--server)"
                ));
                return Ok(false);
            }
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(&self.names.settings.consumer)
                .arg("PX")
                .arg(LEASE_TTL.as_millis() as u64)
                .query(connection)?;
        }
        Ok(true)
    }

    /// Extends the leases; takes a lost one again (it expired during a Redis outage)
    /// unless another gateway took it.
    fn refresh_leases(&mut self) -> RedisResult<()> {
        const EXTEND: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                              return redis.call('pexpire', KEYS[1], ARGV[2]) \
                              elseif redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
                              return 2 else return 0 end";
        let Some(connection) = self.link.get(&self.stop) else {
            return Ok(());
        };
        let ttl = LEASE_TTL.as_millis() as u64;
        let mut leases = vec![(
            self.names.consumer_lease(&self.names.settings.consumer),
            self.names.token.clone(),
        )];
        for server in &self.names.servers {
            leases.push((
                self.names.owner_lease(server),
                self.names.settings.consumer.clone(),
            ));
        }
        for (key, value) in leases {
            let kept: i64 = redis::cmd("EVAL")
                .arg(EXTEND)
                .arg(1)
                .arg(&key)
                .arg(&value)
                .arg(ttl)
                .query(connection)?;
            if kept == 0 {
                self.shared.fail(format!(
                    "lease {key} was taken by another gateway while this one could not \
                     refresh it"
                ));
                return Ok(());
            }
        }
        self.leases_at = Some(Instant::now());
        Ok(())
    }

    /// Deletes this gateway's leases (a clean exit: a restart need not wait).
    fn release_leases(&mut self) {
        const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
                               return redis.call('del', KEYS[1]) else return 0 end";
        if self.leases_at.is_none() {
            return;
        }
        let never = AtomicBool::new(false);
        let mut keys = vec![(
            self.names.consumer_lease(&self.names.settings.consumer),
            self.names.token.clone(),
        )];
        for server in &self.names.servers {
            keys.push((
                self.names.owner_lease(server),
                self.names.settings.consumer.clone(),
            ));
        }
        // One attempt: if Redis is away, the leases expire by themselves.
        if let Some(connection) = self.link.get(&never) {
            for (key, value) in keys {
                let _: RedisResult<i64> = redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(&key)
                    .arg(&value)
                    .query(connection);
            }
        }
    }

    /// Answers `gateway_restarted` to every request pending for `consumer` on the
    /// streams this gateway reads, claiming them first when they are another's.
    /// Returns how many.
    fn answer_pending_of(&mut self, consumer: &str, claim: bool) -> RedisResult<usize> {
        let mut answered = 0;
        for stream in self.names.read_streams() {
            loop {
                let Some(connection) = self.link.get(&self.stop) else {
                    return Ok(answered);
                };
                let entries = if claim {
                    let pending: Value = redis::cmd("XPENDING")
                        .arg(&stream)
                        .arg(&self.names.settings.group)
                        .arg("-")
                        .arg("+")
                        .arg(100)
                        .arg(consumer)
                        .query(connection)?;
                    let ids = pending_ids(&pending);
                    if ids.is_empty() {
                        break;
                    }
                    let claimed: Value = redis::cmd("XCLAIM")
                        .arg(&stream)
                        .arg(&self.names.settings.group)
                        .arg(&self.names.settings.consumer)
                        .arg(0)
                        .arg(&ids)
                        .query(connection)?;
                    let mut entries = entries_of(&stream, &claimed);
                    // Entries trimmed since: claimed as nil, or left out of the answer.
                    for id in ids {
                        if !entries.iter().any(|e| e.id == id) {
                            entries.push(Entry {
                                stream: stream.clone(),
                                id,
                                fields: None,
                            });
                        }
                    }
                    entries
                } else {
                    // This consumer's own pending entries, oldest first.
                    let answer: Value = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(&self.names.settings.group)
                        .arg(consumer)
                        .arg("COUNT")
                        .arg(100)
                        .arg("STREAMS")
                        .arg(&stream)
                        .arg("0")
                        .query(connection)?;
                    read_entries(&answer)
                };
                if entries.is_empty() {
                    break;
                }
                let n = entries.len();
                self.shared.take(n);
                for entry in entries {
                    let fields = entry.fields.unwrap_or_default();
                    let id = |name: &str| {
                        fields
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    };
                    let add = id("reply_to").filter(|r| !r.is_empty()).map(|reply_to| {
                        let request_id = id("request_id").unwrap_or_default();
                        let fields = request::failed(
                            &request_id,
                            "",
                            "gateway_restarted",
                            "the gateway that took this request stopped before it completed; \
                             it was not sent again (it may or may not have reached Asterisk)",
                        );
                        (reply_to, owned(fields))
                    });
                    self.finish(Done {
                        stream: entry.stream,
                        entry_id: entry.id,
                        add,
                        outcome: Outcome::Restarted,
                    });
                }
                answered += n;
                // The own pending list shrinks only as the writer acknowledges: the
                // next read would see the same entries again.
                if !claim {
                    self.wait_for_acks();
                }
            }
        }
        Ok(answered)
    }

    /// Waits until nothing is in flight (used while answering pending entries, which
    /// must be acknowledged before they are read again).
    fn wait_for_acks(&self) {
        let mut in_flight = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = Instant::now() + Duration::from_secs(30);
        while *in_flight > 0 && !self.stop.load(Ordering::Relaxed) && Instant::now() < until {
            in_flight = self
                .shared
                .freed
                .wait_timeout(in_flight, Duration::from_millis(100))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Answers the requests pending for consumers of the group that hold no lease:
    /// their gateway died and did not come back.
    fn claim_from_dead_consumers(&mut self) -> RedisResult<()> {
        let mut dead = Vec::new();
        for stream in self.names.read_streams() {
            let Some(connection) = self.link.get(&self.stop) else {
                return Ok(());
            };
            let consumers: Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(&self.names.settings.group)
                .query(connection)?;
            for (name, pending) in consumer_pending(&consumers) {
                if name == self.names.settings.consumer || pending == 0 || dead.contains(&name) {
                    continue;
                }
                let alive: bool = redis::cmd("EXISTS")
                    .arg(self.names.consumer_lease(&name))
                    .query(connection)?;
                if !alive {
                    dead.push(name);
                }
            }
        }
        for name in dead {
            let n = self.answer_pending_of(&name, true)?;
            if n > 0 {
                tracing::warn!(
                    consumer = %name,
                    requests = n,
                    "answered gateway_restarted for the requests of a gateway that is gone"
                );
            }
        }
        Ok(())
    }

    /// Handles one new request.
    fn handle(&mut self, mut entry: Entry) -> RedisResult<()> {
        let Some(fields) = entry.fields.take() else {
            // Trimmed before it was read: nothing to answer to.
            self.finish(Done {
                stream: entry.stream,
                entry_id: entry.id,
                add: None,
                outcome: Outcome::Invalid,
            });
            return Ok(());
        };
        let stream_server = self
            .names
            .server_of_stream(&entry.stream)
            .map(str::to_owned);
        let request = request::parse(&fields).and_then(|mut request| {
            match (&request.server, &stream_server) {
                (None, Some(server)) => request.server = Some(server.clone()),
                (Some(named), Some(server)) if named != server => {
                    return Err(Invalid {
                        field: "server".into(),
                        message: format!("{named:?} on the stream of server {server:?}"),
                        request_id: Some(request.request_id.clone()),
                        reply_to: Some(request.reply_to.clone()),
                    });
                }
                _ => {}
            }
            Ok(request)
        });
        match request {
            Err(invalid) => {
                if invalid.reply_to.is_none() {
                    tracing::warn!(
                        stream = %entry.stream,
                        id = %entry.id,
                        field = %invalid.field,
                        message = %invalid.message,
                        "request without reply_to: acknowledged, nothing to answer to"
                    );
                }
                let add = invalid.reply_to.clone().map(|reply_to| {
                    let request_id = invalid.request_id.clone().unwrap_or_default();
                    (reply_to, owned(request::invalid(&request_id, &invalid)))
                });
                self.finish(Done {
                    stream: entry.stream,
                    entry_id: entry.id,
                    add,
                    outcome: Outcome::Invalid,
                });
            }
            Ok(request) => match request.server.clone() {
                Some(server) if self.names.servers.contains(&server) => {
                    self.submit(entry, request, Some(server));
                }
                Some(server) => self.forward(entry, fields, request, &server)?,
                None => self.submit(entry, request, None),
            },
        }
        Ok(())
    }

    /// Sends a request named for a server this gateway does not own to the stream
    /// of the gateway that owns it, or answers `invalid` when none does.
    fn forward(
        &mut self,
        entry: Entry,
        mut fields: Vec<(String, String)>,
        request: Request,
        server: &str,
    ) -> RedisResult<()> {
        let owner: Option<String> = match self.link.get(&self.stop) {
            Some(connection) => redis::cmd("GET")
                .arg(self.names.owner_lease(server))
                .query(connection)?,
            None => None,
        };
        let done = match owner {
            Some(owner) => {
                fields.push(("forwarded_by".into(), self.names.settings.consumer.clone()));
                tracing::debug!(server, owner = %owner, request_id = %request.request_id, "forwarded");
                Done {
                    stream: entry.stream,
                    entry_id: entry.id,
                    add: Some((self.names.server_stream(server), fields)),
                    outcome: Outcome::Forwarded,
                }
            }
            None => {
                let invalid = Invalid {
                    field: "server".into(),
                    message: format!(
                        "no gateway owns server {server:?} (this one owns: {})",
                        self.names.servers.join(", ")
                    ),
                    request_id: Some(request.request_id.clone()),
                    reply_to: Some(request.reply_to.clone()),
                };
                Done {
                    stream: entry.stream,
                    entry_id: entry.id,
                    add: Some((
                        request.reply_to,
                        owned(request::invalid(&request.request_id, &invalid)),
                    )),
                    outcome: Outcome::Invalid,
                }
            }
        };
        self.finish(done);
        Ok(())
    }

    /// Submits a request to the driver; its completion goes to the writer.
    fn submit(&mut self, entry: Entry, request: Request, server: Option<String>) {
        let Request {
            request_id,
            reply_to,
            action,
            route,
            ..
        } = request;
        let strategy = action.strategy();
        let done = self.done.clone();
        let (stream, entry_id) = (entry.stream, entry.id);
        let complete = {
            let (request_id, reply_to, stream, entry_id) = (
                request_id.clone(),
                reply_to.clone(),
                stream.clone(),
                entry_id.clone(),
            );
            move |server: Option<&str>, result: Result<ami_proto::Reply, ami_mio::SubmitError>| {
                let server = server.unwrap_or_default();
                let (fields, outcome) = match &result {
                    Ok(reply) => (
                        request::completed(&request_id, server, strategy, reply),
                        Outcome::Ok,
                    ),
                    Err(error) => (
                        request::submit_failed(&request_id, server, error),
                        Outcome::Error,
                    ),
                };
                let _ = done.send(Done {
                    stream,
                    entry_id,
                    add: Some((reply_to, owned(fields))),
                    outcome,
                });
            }
        };
        let submitted = match server {
            Some(server) => {
                let key = server.clone();
                self.submitter
                    .submit(&server, action, move |result| complete(Some(&key), result))
            }
            None => {
                let route = route.unwrap_or(self.names.settings.route);
                let strategy = (route != self.names.settings.route)
                    .then(|| request::strategy(route, &self.names.servers));
                self.submitter.submit_routed(strategy, action, complete)
            }
        };
        if let Err(error) = submitted {
            // Refused before it reached the driver (inbox full, driver gone).
            let fields = request::submit_failed(&request_id, "", &error);
            self.finish(Done {
                stream,
                entry_id,
                add: Some((reply_to, owned(fields))),
                outcome: Outcome::Error,
            });
        }
    }

    fn finish(&self, done: Done) {
        // The writer outlives the reader (it ends after `closing`): a send cannot
        // fail while the reader runs.
        let _ = self.done.send(done);
    }
}

/// A completion's fields with owned keys.
fn owned(fields: Fields) -> Vec<(String, String)> {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The completions thread.
struct Writer {
    link: Link,
    group: String,
    shared: Arc<Shared>,
    closing: Arc<AtomicBool>,
    give_up: Arc<AtomicBool>,
    done: Receiver<Done>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            match self.done.recv_timeout(Duration::from_millis(100)) {
                Ok(done) => batch.push(done),
                Err(RecvTimeoutError::Timeout) => {
                    if self.closing.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_COMPLETION_BATCH {
                match self.done.try_recv() {
                    Ok(done) => batch.push(done),
                    Err(_) => break,
                }
            }
            if !self.write(&mut batch) {
                return;
            }
        }
    }

    /// Writes `batch` (each completion or forward, and its request's `XACK`) in one
    /// transaction, retrying through Redis failures; a batch in doubt is checked
    /// against the group's pending list first. `false`: gave up at the deadline.
    fn write(&mut self, batch: &mut Vec<Done>) -> bool {
        let mut in_doubt = false;
        loop {
            let Some(connection) = self.link.get(&self.give_up) else {
                return false;
            };
            if in_doubt {
                match still_pending(connection, &self.group, batch) {
                    Ok(pending) => {
                        // What is no longer pending was written and acknowledged.
                        let mut still = pending.into_iter();
                        let (waiting, written): (Vec<Done>, Vec<Done>) =
                            batch.drain(..).partition(|_| still.next().unwrap_or(true));
                        for done in &written {
                            self.shared.count(done.outcome);
                        }
                        self.shared.release(written.len());
                        *batch = waiting;
                        in_doubt = false;
                    }
                    Err(error) => {
                        self.link.failed(&error);
                        continue;
                    }
                }
                if batch.is_empty() {
                    return true;
                }
                continue;
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            for done in batch.iter() {
                if let Some((stream, fields)) = &done.add {
                    let command = pipe
                        .cmd("XADD")
                        .arg(stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(REPLY_MAXLEN)
                        .arg("*");
                    for (key, value) in fields {
                        command.arg(key).arg(value);
                    }
                }
                pipe.cmd("XACK")
                    .arg(&done.stream)
                    .arg(&self.group)
                    .arg(&done.entry_id);
            }
            let answers: RedisResult<Vec<RedisResult<Value>>> =
                pipe.ignore_errors().query(connection);
            match answers {
                Ok(answers) => {
                    let n = batch.len();
                    let mut answers = answers.into_iter();
                    for done in batch.drain(..) {
                        if let Some((stream, _)) = &done.add
                            && let Some(Err(error)) = answers.next()
                        {
                            self.shared
                                .completions_refused
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, stream = %stream, "redis refused a completion");
                        }
                        answers.next();
                        self.shared.count(done.outcome);
                    }
                    self.shared.release(n);
                    return true;
                }
                Err(error) => {
                    if !self.link.failed(&error) {
                        self.link.drop_connection();
                    }
                    in_doubt = true;
                }
            }
        }
    }
}

/// For each request of `batch`: whether it is still pending in its group.
fn still_pending(
    connection: &mut redis::Connection,
    group: &str,
    batch: &[Done],
) -> RedisResult<Vec<bool>> {
    let mut pipe = redis::pipe();
    for done in batch {
        pipe.cmd("XPENDING")
            .arg(&done.stream)
            .arg(group)
            .arg(&done.entry_id)
            .arg(&done.entry_id)
            .arg(1);
    }
    let answers: Vec<Value> = pipe.query(connection)?;
    Ok(answers
        .iter()
        .map(|a| matches!(a, Value::Array(items) if !items.is_empty()))
        .collect())
}

/// The entries of an `XREADGROUP` answer (`[[stream, [[id, [k, v, ...]], ...]], ...]`).
fn read_entries(answer: &Value) -> Vec<Entry> {
    let streams: Vec<(&Value, &Value)> = match answer {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(parts) if parts.len() == 2 => Some((&parts[0], &parts[1])),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        if let Some(name) = text(name) {
            out.extend(entries_of(&name, entries));
        }
    }
    out
}

/// The entries of an `XRANGE`-shaped list (`[[id, [k, v, ...] or nil], ...]`).
fn entries_of(stream: &str, entries: &Value) -> Vec<Entry> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                Some(Value::Array(kv)) => Some(
                    kv.chunks(2)
                        .filter_map(|c| Some((text(&c[0])?, text(c.get(1)?)?)))
                        .collect(),
                ),
                _ => None,
            };
            Some(Entry {
                stream: stream.to_owned(),
                id,
                fields,
            })
        })
        .collect()
}

/// The IDs of an extended `XPENDING` answer (`[[id, consumer, idle, count], ...]`).
fn pending_ids(answer: &Value) -> Vec<String> {
    match answer {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Array(parts) => parts.first().and_then(text),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Each consumer's name and pending count from `XINFO CONSUMERS`.
fn consumer_pending(answer: &Value) -> Vec<(String, u64)> {
    let Value::Array(consumers) = answer else {
        return Vec::new();
    };
    consumers
        .iter()
        .filter_map(|consumer| {
            let pairs: HashMap<String, String> = match consumer {
                Value::Array(kv) => kv
                    .chunks(2)
                    .filter_map(|c| Some((text(&c[0])?, text(c.get(1)?)?)))
                    .collect(),
                Value::Map(kv) => kv
                    .iter()
                    .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                    .collect(),
                _ => return None,
            };
            Some((
                pairs.get("name")?.clone(),
                pairs.get("pending")?.parse().ok()?,
            ))
        })
        .collect()
}
