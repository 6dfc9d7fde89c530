//! How many events per second one `ami-mio` connection takes with a counting listener.
//!
//! Starts a [`ReplayServer`] blasting the events of the Asterisk 22 fixture, connects
//! one `ami_mio::Driver` to it, counts every event in an `on_any_event` listener and
//! ticks until the `ReplayDone` marker. Prints events/s, MB/s, the client's CPU time,
//! the drops, and the resident memory at each tenth of the run (flat is the target).
//!
//! Run with
//! `cargo run --release -p ami-tests --example mio_throughput -- [EVENTS] [--track-calls]`
//! (default 10,000,000 events). `--track-calls` turns on the client core's call
//! tracker for the server (`Driver::track_calls`): every event also goes through it.

use std::path::Path;
use std::time::{Duration, Instant};

use ami_cluster::DialerConfig;
use ami_tests::asterisk::thread_cpu_time;
use ami_tests::counting::CountingDriver;
use ami_tests::procstat::memory_kib;
use ami_tests::replay::{ReplayConfig, ReplayServer, load_capture_events};

fn main() {
    let track_calls = std::env::args().any(|a| a == "--track-calls");
    let total: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(|n| {
            n.replace(['_', ','], "")
                .parse()
                .expect("EVENTS must be a number")
        })
        .unwrap_or(10_000_000);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (events, _) = load_capture_events(&fixture).expect("fixture");
    let server = ReplayServer::start(ReplayConfig::new(events, total)).expect("replay server");

    let mut client = CountingDriver::connect(server.addr(), "replay").expect("login");
    let id = client.id;
    if track_calls {
        client.driver.track_calls(id, DialerConfig::default());
    }
    let started = Instant::now();
    let cpu_before = thread_cpu_time().unwrap_or_default();
    let mut samples = Vec::new();
    let mut next_sample = total / 10;
    while !client.done() {
        client.driver.tick_all(Duration::from_millis(10));
        if client.count() >= next_sample && next_sample > 0 {
            samples.push((client.count(), memory_kib().0));
            next_sample += total / 10;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run took too long"
        );
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu_time().unwrap_or_default() - cpu_before;
    let stats = client.driver.connection_stats(id).expect("stats");
    let received = client.count();
    client.driver.shutdown(Duration::from_secs(5));
    let report = server.stop();

    let seconds = elapsed.as_secs_f64();
    println!(
        "events:      {received} delivered to the listener, {} sent",
        report.events_sent
    );
    println!(
        "throughput:  {:.0} events/s, {:.0} MB/s over {seconds:.2} s",
        received as f64 / seconds,
        stats.bytes_received as f64 / seconds / 1e6
    );
    println!(
        "client CPU:  {} ms ({:.1} ms per 100,000 events; user+system of the driver thread, listener included)",
        cpu.as_millis(),
        cpu.as_secs_f64() * 1e3 * 100_000.0 / received.max(1) as f64
    );
    println!(
        "drops:       {} dropped, {} discarded frames",
        stats.events.dropped, stats.discards
    );
    let rss: Vec<String> = samples
        .iter()
        .map(|(n, kib)| format!("{}M:{}KiB", n / 1_000_000, kib))
        .collect();
    println!("RSS:         {}", rss.join(" "));
    println!("peak RSS:    {} KiB", memory_kib().1);
    if let Some(status) = client.driver.dialer_status(id) {
        println!(
            "calls:       tracker on; {} calls followed now, {} ended, {} evicted",
            status.live_calls, status.calls.ended, status.calls.evicted
        );
    }
    assert_eq!(received, total, "every event must arrive");
}
