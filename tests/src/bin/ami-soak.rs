//! `ami-soak`: memory over a long run, with the cluster's bookkeeping on.
//!
//! ```text
//! ami-soak [--events N] [--warmup N] [--max-growth-kib K]
//! ```
//!
//! Starts a loopback replay server blasting the Asterisk 22 fixture's events (default
//! 10,000,000), connects one `ami-mio` driver to it (a cluster of one server: health,
//! reconnect policy and metrics all active), counts every event in a listener, sends a
//! `Ping` every 10,000 events (so the action registry and the latency histogram work
//! all along) and renders the Prometheus text every 100,000 events. It prints the
//! resident memory at every million events and exits 1 if RSS grew by more than
//! `--max-growth-kib` (default 1024) between the end of the warm-up (default 1,000,000
//! events) and the end, or if an event or a Ping went missing.
//!
//! Run with `cargo run --release -p ami-tests --bin ami-soak`.

use std::cell::Cell;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_proto::action::Ping;
use ami_tests::asterisk::thread_cpu_time;
use ami_tests::counting::CountingDriver;
use ami_tests::procstat::memory_kib;
use ami_tests::replay::{ReplayConfig, ReplayServer, load_capture_events};
use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "ami-soak",
    about = "Memory over a long run through one connection"
)]
struct Args {
    /// Events to push through the connection.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Events before the baseline RSS is taken.
    #[arg(long, default_value_t = 1_000_000)]
    warmup: u64,
    /// Largest RSS growth after the warm-up that passes, in KiB.
    #[arg(long, default_value_t = 1024)]
    max_growth_kib: u64,
}

/// Events between two Pings.
const PING_EVERY: u64 = 10_000;
/// Events between two renderings of the metrics.
const METRICS_EVERY: u64 = 100_000;

fn main() -> ExitCode {
    let args = Args::parse();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (events, _) = match load_capture_events(&fixture) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("ami-soak: cannot read {}: {error}", fixture.display());
            return ExitCode::FAILURE;
        }
    };
    let server = match ReplayServer::start(ReplayConfig::new(events, args.events)) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("ami-soak: cannot start the replay server: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut client = match CountingDriver::connect(server.addr(), "soak") {
        Ok(client) => client,
        Err(error) => {
            eprintln!("ami-soak: no login: {error}");
            return ExitCode::FAILURE;
        }
    };
    let id = client.id;

    let pongs = Rc::new(Cell::new(0u64));
    let mut pings = 0u64;
    let mut metrics_bytes = 0usize;
    let started = Instant::now();
    let cpu_before = thread_cpu_time().unwrap_or_default();
    let mut baseline: Option<u64> = None;
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let (mut next_ping, mut next_metrics, mut next_sample) =
        (PING_EVERY, METRICS_EVERY, 1_000_000.min(args.events));
    while !client.done() {
        client.driver.tick_all(Duration::from_millis(10));
        let n = client.count();
        if n >= next_ping {
            next_ping += PING_EVERY;
            let pongs = pongs.clone();
            let sent = client.driver.send(id, Ping, move |result| {
                if result.is_ok() {
                    pongs.set(pongs.get() + 1);
                }
            });
            if sent.is_ok() {
                pings += 1;
            }
        }
        if n >= next_metrics {
            next_metrics += METRICS_EVERY;
            metrics_bytes = client.driver.render_prometheus().len();
        }
        if baseline.is_none() && n >= args.warmup {
            baseline = Some(memory_kib().0);
        }
        if n >= next_sample {
            samples.push((n, memory_kib().0));
            next_sample += 1_000_000;
        }
        if started.elapsed() > Duration::from_secs(900) {
            eprintln!("ami-soak: gave up after 15 minutes at {n} events");
            return ExitCode::FAILURE;
        }
    }
    // The last Pings' answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pongs.get() < pings && Instant::now() < deadline {
        client.driver.tick_all(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu_time().unwrap_or_default() - cpu_before;
    let (rss_end, peak) = memory_kib();
    let metrics = client.driver.metrics(id);
    client.driver.shutdown(Duration::from_secs(5));
    let report = server.stop();

    let received = client.count();
    println!(
        "events:   {received} of {} in {:.1} s ({:.0}/s); driver CPU {} ms",
        report.events_sent,
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64(),
        cpu.as_millis()
    );
    println!(
        "actions:  {pings} Pings, {} answered; latency p99 <= {:?} ms; dropped events {}; metrics text {metrics_bytes} bytes",
        pongs.get(),
        metrics.action_latency.quantile_bound_ms(0.99),
        metrics.dropped_events_total
    );
    let line: Vec<String> = samples
        .iter()
        .map(|(n, kib)| format!("{}M:{kib}", n / 1_000_000))
        .collect();
    println!("RSS KiB:  {}", line.join(" "));
    let baseline = baseline.unwrap_or(rss_end);
    let growth = rss_end.saturating_sub(baseline);
    println!(
        "growth:   {growth} KiB after the {} warm-up events (baseline {baseline} KiB, end {rss_end} KiB, peak {peak} KiB; limit {} KiB)",
        args.warmup, args.max_growth_kib
    );
    let mut ok = true;
    if received != args.events {
        eprintln!(
            "ami-soak: {} events missing",
            args.events.saturating_sub(received)
        );
        ok = false;
    }
    if pongs.get() != pings {
        eprintln!("ami-soak: {} Pings unanswered", pings - pongs.get());
        ok = false;
    }
    if growth > args.max_growth_kib {
        eprintln!("ami-soak: memory grew by {growth} KiB");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
