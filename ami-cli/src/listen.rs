//! `ami listen`: connect, log in, and write every event, and the status of every
//! server, as JSON lines to stdout (or `--output FILE`).
//!
//! The records and their schema are in the README ("The record stream"): `event`,
//! `health`, `dropped`, `session_lost`, `session_back`. Logs go to stderr.
//!
//! The AMI loop never waits for the output: each tick's records go into the bounded
//! queue of an [`outlet`](crate::outlet) that writes them on its own thread. When the
//! reader falls behind, the oldest events are dropped, counted per server (reason
//! `outlet_slow`) in `dropped` records, at most one per server and reason per second,
//! and in `ami_dropped_events_total`; the sessions stay up.
//!
//! SIGTERM or SIGINT: every server gets its `Logoff`, the outlet gets what is left of
//! [`SHUTDOWN_LIMIT`] (8 s from the signal) to write what is queued, what it could not write is counted in a
//! log line, and the process exits 0, also when stdout is blocked. When the output
//! fails (a closed pipe: `ami listen | head -1`), the process logs why and exits with
//! code 3.
//!
//! `--http-addr` (alias `--metrics-addr`) serves, from a snapshot the loop renders
//! once a second, `GET /metrics` (Prometheus text), `GET /healthz`, `GET /status`
//! (JSON) and `GET /`, a status page (see [`http`](crate::http)).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ami_mio::{Driver, ServerId};
use ami_proto::State;

use crate::CliError;
use crate::config::FileConfig;
use crate::http::{HttpEndpoint, ServerStatus, Snapshot, Status};
use crate::json::{WallClock, unix_now};
use crate::outlet::{Bounds, JsonLines, OutletQueue, Record};
use crate::service::ServiceNotifier;
use crate::worker::{CallTracking, ConfigArg, driver_for, init_logging, select};

/// Arguments of `ami listen`.
#[derive(Debug, clap::Args)]
pub struct ListenArgs {
    /// Listen to this server (default: the config's default server).
    #[arg(long, value_name = "KEY", conflicts_with = "all")]
    pub server: Option<String>,
    /// Listen to every configured server, multiplexed in one poll.
    #[arg(long)]
    pub all: bool,
    /// Run one iteration of the loop, then shut down.
    #[arg(long)]
    pub once: bool,
    /// Run at most N iterations of the loop, then shut down.
    #[arg(long, value_name = "N")]
    pub max_iterations: Option<u64>,
    /// Tick timeout in milliseconds (0..=250; larger values are clamped and reported).
    /// Default: `listen.tick_timeout_ms` of the config (25).
    #[arg(long, value_name = "MS")]
    pub tick_timeout_ms: Option<u64>,
    /// Append the records to this file instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Serve the metrics over HTTP on this address (e.g. `127.0.0.1:9100`).
    #[arg(long, value_name = "ADDR", alias = "metrics-addr")]
    pub http_addr: Option<SocketAddr>,
    /// Add a `call` record to the stream when each call ends (the call tracker).
    #[arg(long)]
    pub calls: bool,
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// How often the metrics are refreshed and drops reported.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown may take in all, from the signal to the exit: the outlet stops
/// writing this long after the signal, leaving a margin under the 10 s a supervisor
/// commonly waits before it kills.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);

/// Part of [`SHUTDOWN_LIMIT`] the servers' `Logoff`s may take; the rest is the
/// outlet's.
const LOGOFF_LIMIT: Duration = Duration::from_secs(4);

/// The pause after a tick that returned at once with nothing done.
const SPIN_GUARD: Duration = Duration::from_millis(1);

/// Status records the outlet queue holds at most.
const MAX_QUEUED_STATUS: usize = 10_000;

/// Records collected during a tick, handed to the outlet after it.
type Batch = Rc<RefCell<Vec<Record>>>;

/// Runs `ami listen`.
pub fn run(args: &ListenArgs) -> Result<(), CliError> {
    run_with(args, true)
}

/// Runs `ami calls`: the record stream of `ami listen --calls` without the events.
pub fn run_calls(args: &ListenArgs) -> Result<(), CliError> {
    run_with(args, false)
}

fn run_with(args: &ListenArgs, events: bool) -> Result<(), CliError> {
    init_logging();
    let file = args.config.load()?;
    let keys = select(&file, args.server.as_deref(), args.all)?;
    let bounds = outlet_bounds(&file);
    let queue = match &args.output {
        None => {
            // The file stdout is, written without `Stdout`'s lock and line buffer.
            let stdout = io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(|e| CliError::io("cannot use stdout", e))?;
            let is_pipe = stdout.metadata().is_ok_and(|m| m.file_type().is_fifo());
            let outlet = if is_pipe {
                let fd = stdout
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| CliError::io("cannot use stdout", e))?;
                JsonLines::pipe(stdout, fd)
            } else {
                JsonLines::new(stdout)
            };
            OutletQueue::start("ami-outlet", outlet, bounds)
        }
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| CliError::io(format!("cannot open {}", path.display()), e))?;
            OutletQueue::start("ami-outlet", JsonLines::new(file), bounds)
        }
    }
    .map_err(|e| CliError::io("cannot start the outlet thread", e))?;
    let settings = LoopSettings {
        tick: Duration::from_millis(args.tick_timeout_ms.unwrap_or(file.listen.tick_timeout_ms)),
        max_iterations: if args.once {
            Some(1)
        } else {
            args.max_iterations
        },
        http_addr: args.http_addr,
        events,
        calls: args.calls || !events,
    };
    serve(&file, &keys, &settings, queue, |_, _| Ok(None))
}

/// The outlet queue's bounds from the config: `listen.outlet_queue_events` events,
/// half of `options.memory_limit` in bytes.
pub(crate) fn outlet_bounds(file: &FileConfig) -> Bounds {
    Bounds {
        events: file.listen.outlet_queue_events,
        bytes: file.options.memory_limit / 2,
        status: MAX_QUEUED_STATUS,
    }
}

/// How the loop of [`serve`] runs.
#[derive(Debug, Clone)]
pub(crate) struct LoopSettings {
    /// The longest a tick waits for input.
    pub tick: Duration,
    /// Stop after this many ticks.
    pub max_iterations: Option<u64>,
    /// Serve `/metrics`, `/healthz`, `/status` and `/` here.
    pub http_addr: Option<SocketAddr>,
    /// Write an `event` record for each event.
    pub events: bool,
    /// Track calls: a `call` record when each ends.
    pub calls: bool,
}

/// Work that runs beside the loop of [`serve`] and takes part in its shutdown: the
/// gateway's action streams.
pub(crate) trait Companion {
    /// More Prometheus text for `/metrics`.
    fn render_metrics(&self, out: &mut String);
    /// Why the companion cannot go on, once it cannot (the loop then stops).
    fn failure(&self) -> Option<CliError>;
    /// Shutdown begins: take no more work.
    fn stop(&mut self);
    /// The servers are logged off (what was in flight has failed): finish what is
    /// left by `deadline`.
    fn finish(self: Box<Self>, deadline: Instant);
}

/// The loop `ami listen` and `ami gateway` share: connects the servers `keys`,
/// sends every record to `queue`'s outlet, serves the HTTP endpoint, and shuts down
/// on SIGTERM or SIGINT (see the module documentation). `companion` may start work
/// beside it once the driver exists (it may set the routing, take a submitter).
pub(crate) fn serve(
    file: &FileConfig,
    keys: &[String],
    settings: &LoopSettings,
    queue: OutletQueue,
    companion: impl FnOnce(&mut Driver, &[ServerId]) -> Result<Option<Box<dyn Companion>>, CliError>,
) -> Result<(), CliError> {
    let tracking = if settings.calls {
        CallTracking::All
    } else {
        CallTracking::WhereLimited
    };
    let (mut driver, ids) = driver_for(file, keys, tracking, |_| {})?;
    let tick = settings.tick;
    let max_iterations = settings.max_iterations;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::io("cannot handle signals", e))?;
    }

    let batch: Batch = Rc::default();
    let clock = Rc::new(Cell::new(WallClock::new()));
    let received: Rc<RefCell<EventCounts>> = Rc::default();
    {
        let (batch, clock, received) = (batch.clone(), clock.clone(), received.clone());
        let events = settings.events;
        driver.set_event_sink(move |event| {
            received.borrow_mut().count(event.server_key());
            if events {
                let received_at = clock.get().unix_seconds(event.received_at);
                batch
                    .borrow_mut()
                    .push(Record::Event { event, received_at });
            }
        });
    }
    if settings.calls {
        let (batch, clock) = (batch.clone(), clock.clone());
        driver.on_call_ended(move |server, call| {
            batch
                .borrow_mut()
                .push(Record::call(server, call, &clock.get()));
        });
    }
    let sessions = Sessions::watch(&mut driver, &batch);
    {
        let batch = batch.clone();
        driver.on_health_change(move |server, from, to| {
            tracing::info!(server_key = server, %from, %to, "health");
            batch.borrow_mut().push(Record::Health {
                server: server.into(),
                from,
                to,
                at: unix_now(),
            });
        });
    }
    let mut companion = companion(&mut driver, &ids)?;
    let endpoint = settings.http_addr.map(HttpEndpoint::start).transpose()?;
    if let Some(endpoint) = &endpoint {
        tracing::info!(addr = %endpoint.addr(), "serving /metrics, /healthz, /status and / over HTTP");
    }
    let mut rates = Rates::default();
    let mut drops = DropReports::new(queue.drop_reason());
    let mut reported: Option<Instant> = None;
    driver
        .connect_all()
        .map_err(|e| CliError::Failed(e.to_string()))?;

    let mut service = ServiceNotifier::new();
    service.ready();
    let mut iterations = 0u64;
    let mut slow_ticks = SlowTicks::default();
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && max_iterations.is_none_or(|max| iterations < max) {
        let started = Instant::now();
        service.tick();
        // Re-anchored every tick, so that `received_at` follows the wall clock.
        clock.set(WallClock::new());
        let report = driver.tick_all(tick);
        iterations += 1;
        slow_ticks.check(started.elapsed());
        sessions.report(&driver, &ids, &batch);
        if reported.is_none_or(|at| at.elapsed() >= REPORT_INTERVAL) {
            reported = Some(Instant::now());
            drops.report(&driver, &queue, &mut batch.borrow_mut());
            if let Some(endpoint) = &endpoint {
                let mut metrics = driver.render_prometheus_with(&drops.outlet_samples());
                if let Some(companion) = &companion {
                    companion.render_metrics(&mut metrics);
                }
                endpoint.publish(Snapshot {
                    metrics,
                    status: rates.status(&driver, &ids, &received.borrow(), &drops),
                });
            }
        }
        queue.push(&mut batch.borrow_mut());
        if let Some(failure) = queue.failure() {
            result = Err(CliError::OutletClosed(failure));
            break;
        }
        if let Some(failure) = companion.as_ref().and_then(|c| c.failure()) {
            result = Err(failure);
            break;
        }
        // Lost connections are retried by the cluster; only servers closed for good
        // (none today: listen never closes one before shutdown) end the loop.
        if ids.iter().all(|&id| !driver.node(id).is_running()) {
            result = Err(CliError::Failed("every server connection closed".into()));
            break;
        }
        // A tick that returned at once with nothing done (a spurious wake-up): pause
        // a moment rather than spin. Never longer: a submission (the gateway's
        // requests) wakes the poll, and a sleep here would hold it up.
        if !report.progressed && started.elapsed() < SPIN_GUARD {
            std::thread::sleep(SPIN_GUARD);
        }
    }
    service.stopping();
    let deadline = Instant::now() + SHUTDOWN_LIMIT;
    if stop.load(Ordering::Relaxed) {
        tracing::info!("signal received: shutting down");
    }
    if let Some(companion) = &mut companion {
        companion.stop();
    }
    sessions.shutting_down.set(true);
    if !driver.shutdown(LOGOFF_LIMIT) {
        tracing::warn!("some servers did not acknowledge the logoff in time");
    }
    if let Some(companion) = companion {
        companion.finish(deadline);
    }
    drops.report(&driver, &queue, &mut batch.borrow_mut());
    queue.push(&mut batch.borrow_mut());
    let outlet_drops = queue.counts().dropped;
    let unwritten = queue.finish(deadline);
    for &id in &ids {
        let key = driver.server_key(id);
        let metrics = driver.metrics(id);
        tracing::info!(
            server_key = key,
            events_received = received.borrow().get(key),
            dropped_outlet = outlet_drops.get(key).copied().unwrap_or(0),
            outlet_drop_reason = drops.outlet_reason,
            dropped_memory_limit = metrics.dropped_events_memory_total,
            dropped_queue_full = metrics.dropped_events_total,
            "events in all"
        );
    }
    if unwritten.records > 0 {
        tracing::warn!(
            records = unwritten.records,
            events = unwritten.events,
            maybe_cut = unwritten.in_write,
            maybe_cut_events = unwritten.in_write_events,
            "output blocked at exit: records not written, dropped (maybe_cut of them were in \
             a write that may be partly out)"
        );
    }
    if let Err(CliError::OutletClosed(why)) = &result {
        tracing::error!(error = %why, "output closed: stopping");
    }
    result
}

/// Tracks logged-in sessions for the `session_lost` and `session_back` records.
struct Sessions {
    /// Servers whose logged-in session ended since the last report.
    lost: Rc<RefCell<Vec<Arc<str>>>>,
    /// Set once shutdown begins: closing sessions then are not losses.
    shutting_down: Rc<Cell<bool>>,
}

impl Sessions {
    fn watch(driver: &mut Driver, batch: &Batch) -> Sessions {
        let lost: Rc<RefCell<Vec<Arc<str>>>> = Rc::default();
        let shutting_down = Rc::new(Cell::new(false));
        let was_lost: Rc<RefCell<HashMap<String, bool>>> = Rc::default();
        {
            let (lost, shutting_down, batch) = (lost.clone(), shutting_down.clone(), batch.clone());
            driver.on_state_change(move |server, from, to| {
                tracing::debug!(server_key = server, ?from, ?to, "connection state");
                let mut was_lost = was_lost.borrow_mut();
                if from.is_ready() && to == State::Closed && !shutting_down.get() {
                    was_lost.insert(server.to_owned(), true);
                    lost.borrow_mut().push(server.into());
                } else if to.is_ready() && !from.is_ready() && was_lost.remove(server).is_some() {
                    batch.borrow_mut().push(Record::SessionBack {
                        server: server.into(),
                        at: unix_now(),
                    });
                }
            });
        }
        Sessions {
            lost,
            shutting_down,
        }
    }

    /// Adds a `session_lost` record, with why, for each session lost this tick.
    fn report(&self, driver: &Driver, ids: &[ServerId], batch: &Batch) {
        for server in self.lost.borrow_mut().drain(..) {
            let reason = ids
                .iter()
                .find(|&&id| driver.server_key(id) == &*server)
                .and_then(|&id| driver.node(id).last_close_reason())
                .map_or_else(|| "unknown".to_owned(), |reason| reason.to_string());
            batch.borrow_mut().push(Record::SessionLost {
                server,
                reason,
                at: unix_now(),
            });
        }
    }
}

/// The drop totals last reported, per server and reason.
struct DropReports {
    reported: HashMap<(Arc<str>, &'static str), u64>,
    /// The reason the outlet's drops are counted under (`outlet_slow`, `redis`).
    outlet_reason: &'static str,
}

impl DropReports {
    fn new(outlet_reason: &'static str) -> DropReports {
        DropReports {
            reported: HashMap::new(),
            outlet_reason,
        }
    }

    /// Adds a `dropped` record for each server and reason with drops since the last
    /// report: the outlet's (`outlet_slow`, or the outlet's own reason) and the driver's (`memory_limit`,
    /// `queue_full`).
    fn report(&mut self, driver: &Driver, queue: &OutletQueue, batch: &mut Vec<Record>) {
        let counts = queue.counts();
        let mut totals: Vec<(Arc<str>, &'static str, u64)> = counts
            .dropped
            .into_iter()
            .map(|(server, total)| (server, self.outlet_reason, total))
            .collect();
        for (server, metrics) in driver.cluster_metrics() {
            let server: Arc<str> = server.into();
            totals.push((server.clone(), "queue_full", metrics.dropped_events_total));
            totals.push((server, "memory_limit", metrics.dropped_events_memory_total));
        }
        for (server, reason, total) in totals {
            let last = self.reported.entry((server.clone(), reason)).or_insert(0);
            if total > *last {
                batch.push(Record::Dropped {
                    server,
                    count: total - *last,
                    total,
                    reason,
                });
                *last = total;
            }
        }
    }

    /// The outlet's drop total reported so far for `server`.
    fn outlet_total(&self, server: &str) -> u64 {
        self.reported
            .iter()
            .filter(|((key, reason), _)| *reason == self.outlet_reason && &**key == server)
            .map(|(_, total)| total)
            .sum()
    }

    /// The outlet's drop totals reported so far, as metric samples.
    fn outlet_samples(&self) -> Vec<(&str, &str, u64)> {
        self.reported
            .iter()
            .filter(|((_, reason), _)| *reason == self.outlet_reason)
            .map(|((server, reason), total)| (&**server, *reason, *total))
            .collect()
    }
}

/// Events received per server since start (the event sink counts them).
#[derive(Default)]
struct EventCounts {
    servers: Vec<(Arc<str>, u64)>,
}

impl EventCounts {
    /// Counts one event of `server` (a few servers: a scan, the same `Arc` first).
    fn count(&mut self, server: &Arc<str>) {
        let found = self
            .servers
            .iter_mut()
            .find(|(key, _)| Arc::ptr_eq(key, server) || **key == **server);
        match found {
            Some((key, n)) => {
                // Later events share the current connection's key: compare pointers.
                if !Arc::ptr_eq(key, server) {
                    *key = server.clone();
                }
                *n += 1;
            }
            None => self.servers.push((server.clone(), 1)),
        }
    }

    fn get(&self, server: &str) -> u64 {
        self.servers
            .iter()
            .find(|(key, _)| &**key == server)
            .map_or(0, |&(_, n)| n)
    }
}

/// The previous status snapshot's totals, for events per second.
#[derive(Default)]
struct Rates {
    last: Option<(Instant, HashMap<String, u64>)>,
}

impl Rates {
    /// Every server's status for the HTTP endpoint.
    fn status(
        &mut self,
        driver: &Driver,
        ids: &[ServerId],
        received: &EventCounts,
        drops: &DropReports,
    ) -> Status {
        let now = Instant::now();
        let mut totals = HashMap::new();
        let servers = ids
            .iter()
            .map(|&id| {
                let key = driver.server_key(id);
                let metrics = driver.metrics(id);
                let events_total = received.get(key);
                let events_per_second = match &self.last {
                    Some((at, previous)) => {
                        let secs = now.saturating_duration_since(*at).as_secs_f64();
                        let before = previous.get(key).copied().unwrap_or(0);
                        if secs > 0.0 {
                            events_total.saturating_sub(before) as f64 / secs
                        } else {
                            0.0
                        }
                    }
                    None => 0.0,
                };
                totals.insert(key.to_owned(), events_total);
                ServerStatus {
                    server: key.to_owned(),
                    health: metrics.health.to_string(),
                    healthy: metrics.health == ami_mio::Health::Healthy,
                    events_total,
                    events_per_second,
                    dropped_total: metrics.dropped_events_total
                        + metrics.dropped_events_memory_total
                        + drops.outlet_total(key),
                    pending_actions: metrics.pending_actions,
                    reconnects: metrics.reconnect_attempts.saturating_sub(1),
                    last_error: driver
                        .node(id)
                        .last_close_reason()
                        .map(|reason| reason.to_string()),
                }
            })
            .collect();
        self.last = Some((now, totals));
        Status {
            generated_at: unix_now(),
            servers,
        }
    }
}

/// Warns (at most once per 10 s) when a tick took long enough to worry about: past
/// 50 ms, half of Asterisk's 100 ms `writetimeout`. On a busy machine the time spent
/// waiting for a CPU counts too.
#[derive(Default)]
struct SlowTicks {
    last_warning: Option<Instant>,
    slow: u64,
    longest: Duration,
}

impl SlowTicks {
    const THRESHOLD: Duration = Duration::from_millis(50);

    fn check(&mut self, took: Duration) {
        if took < Self::THRESHOLD {
            return;
        }
        self.slow += 1;
        self.longest = self.longest.max(took);
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                slow_ticks = self.slow,
                longest_ms = self.longest.as_millis() as u64,
                "slow ticks: Asterisk cuts a session whose socket stays full for 100 ms"
            );
            self.last_warning = Some(Instant::now());
            self.slow = 0;
            self.longest = Duration::ZERO;
        }
    }
}
