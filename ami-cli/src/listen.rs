//! `ami listen`: connect, log in, and write every event to stdout as a JSON line.
//!
//! One line per event: `{"server":KEY,"name":NAME,"received_at":UNIX_SECONDS,
//! "headers":[[KEY,VALUE],...]}`. Logs go to stderr. SIGTERM or SIGINT: stop taking
//! new work, flush stdout, `Logoff` every server (waiting for `Goodbye` up to each
//! server's close deadline), exit 0.
//!
//! A server whose connection fails or is lost is reconnected by the cluster (jittered
//! backoff, circuit breaker); its health changes go to the log, the other servers'
//! events keep flowing. `--metrics-addr` serves the cluster's metrics in the
//! Prometheus text format on `GET /metrics`.

use std::cell::RefCell;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::CliError;
use crate::json::{WallClock, headers};
use crate::metrics_http::MetricsEndpoint;
use crate::worker::{ConfigArg, driver_for, init_logging, select};

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
    /// Serve Prometheus metrics on this address (e.g. `127.0.0.1:9100`, path
    /// `/metrics`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The config file.
    #[command(flatten)]
    pub config: ConfigArg,
}

/// How often the metrics endpoint's snapshot is refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// How long shutdown may take in all (each server also has its own close deadline).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Runs `ami listen`.
pub fn run(args: &ListenArgs) -> Result<(), CliError> {
    init_logging();
    let file = args.config.load()?;
    let keys = select(&file, args.server.as_deref(), args.all)?;
    let (mut driver, ids) = driver_for(&file, &keys, |_| {})?;
    let tick = Duration::from_millis(args.tick_timeout_ms.unwrap_or(file.listen.tick_timeout_ms));
    let max_iterations = if args.once {
        Some(1)
    } else {
        args.max_iterations
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::io("cannot handle signals", e))?;
    }

    let stdout = Rc::new(RefCell::new(BufWriter::with_capacity(
        256 * 1024,
        io::stdout(),
    )));
    let write_error: Rc<RefCell<Option<io::Error>>> = Rc::default();
    let clock = WallClock::new();
    {
        let (stdout, write_error) = (stdout.clone(), write_error.clone());
        driver.on_any_event(move |event| {
            let line = json!({
                "server": &**event.server_key(),
                "name": event.name(),
                "received_at": clock.unix_seconds(event.received_at),
                "headers": headers(&event.message),
            });
            let mut out = stdout.borrow_mut();
            let written = serde_json::to_writer(&mut *out, &line).map_err(io::Error::from);
            if let Err(error) = written.and_then(|()| out.write_all(b"\n")) {
                write_error.borrow_mut().get_or_insert(error);
            }
        });
    }
    driver.on_state_change(|server, from, to| {
        tracing::debug!(server_key = server, ?from, ?to, "connection state")
    });
    driver.on_health_change(
        |server, from, to| tracing::info!(server_key = server, %from, %to, "health"),
    );
    let metrics = args.metrics_addr.map(MetricsEndpoint::start).transpose()?;
    let mut metrics_published: Option<Instant> = None;
    driver
        .connect_all()
        .map_err(|e| CliError::Failed(e.to_string()))?;

    let mut iterations = 0u64;
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && max_iterations.is_none_or(|max| iterations < max) {
        let started = Instant::now();
        let report = driver.tick_all(tick);
        iterations += 1;
        stdout
            .borrow_mut()
            .flush()
            .map_err(|e| CliError::io("cannot write to stdout", e))?;
        if let Some(error) = write_error.borrow_mut().take() {
            result = Err(CliError::io("cannot write to stdout", error));
            break;
        }
        if let Some(endpoint) = &metrics {
            if metrics_published.is_none_or(|at| at.elapsed() >= METRICS_REFRESH) {
                endpoint.publish(driver.render_prometheus());
                metrics_published = Some(Instant::now());
            }
        }
        // Lost connections are retried by the cluster; only servers closed for good
        // (none today: listen never closes one before shutdown) end the loop.
        if ids.iter().all(|&id| !driver.node(id).is_running()) {
            result = Err(CliError::Failed("every server connection closed".into()));
            break;
        }
        // No progress: wait out the rest of the cadence instead of spinning.
        if !report.progressed {
            let elapsed = started.elapsed();
            let cadence = tick.min(ami_mio::MAX_TICK_TIMEOUT);
            if elapsed < cadence {
                std::thread::sleep(cadence - elapsed);
            }
        }
    }
    if stop.load(Ordering::Relaxed) {
        tracing::info!("signal received: shutting down");
    }
    let closed = driver.shutdown(SHUTDOWN_LIMIT);
    if !closed {
        tracing::warn!("some servers did not acknowledge the logoff in time");
    }
    stdout
        .borrow_mut()
        .flush()
        .map_err(|e| CliError::io("cannot write to stdout", e))?;
    result
}
