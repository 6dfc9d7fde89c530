//! `ami-mio` and `ami-tokio` side by side, in one run: events per second and client CPU
//! of one connection to the loopback replay server.
//!
//! For each driver a fresh [`ReplayServer`] blasts the Asterisk 22 fixture's events;
//! the mio driver counts them in an `on_any_event` listener, the Tokio client in a
//! consumer of `all_events()` on a current-thread runtime (so the connection task and
//! the consumer share the calling thread, like the mio driver and its listener). CPU
//! is the calling thread's user + system time.
//!
//! Run with
//! `cargo run --release -p ami-tests --example async_throughput -- [EVENTS]`
//! (default 2,000,000 events per driver).

use std::path::Path;
use std::time::{Duration, Instant};

use ami_mio::DriverOptions;
use ami_proto::Config;
use ami_tests::asterisk::thread_cpu_time;
use ami_tests::counting::CountingDriver;
use ami_tests::replay::{ReplayConfig, ReplayServer, load_capture_events};
use ami_tokio::{Client, ClientSpec, Tokio};
use futures_util::StreamExt;

/// What one run measured.
struct Run {
    events: u64,
    elapsed: Duration,
    cpu: Duration,
    dropped: u64,
}

impl Run {
    fn print(&self, name: &str) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{name:<10} {:>9} events in {secs:>6.2} s = {:>9.0} events/s; CPU {:>6} ms = {:>5.1} ms per 100k events; dropped {}",
            self.events,
            self.events as f64 / secs,
            self.cpu.as_millis(),
            self.cpu.as_secs_f64() * 1e3 * 100_000.0 / self.events.max(1) as f64,
            self.dropped
        );
    }
}

fn server(events: &[u8], total: u64) -> ReplayServer {
    ReplayServer::start(ReplayConfig::new(events.to_vec(), total)).expect("replay server")
}

fn run_mio(events: &[u8], total: u64, read_budget: usize) -> Run {
    let server = server(events, total);
    let options = DriverOptions {
        read_budget,
        ..DriverOptions::default()
    };
    let mut client = CountingDriver::connect_with(server.addr(), "mio", options).expect("login");
    let started = Instant::now();
    let cpu = thread_cpu_time().unwrap_or_default();
    while !client.done() {
        client.driver.tick_all(Duration::from_millis(10));
    }
    let run = Run {
        events: client.count(),
        elapsed: started.elapsed(),
        cpu: thread_cpu_time().unwrap_or_default() - cpu,
        dropped: client.driver.metrics(client.id).dropped_events_total,
    };
    client.driver.shutdown(Duration::from_secs(5));
    server.stop();
    run
}

fn run_tokio(events: &[u8], total: u64) -> Run {
    let server = server(events, total);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let run = runtime.block_on(async {
        let spec = ClientSpec::new(Config::new("tokio", "admin", "secret"), server.addr());
        let client = Client::spawn(Tokio, spec);
        // Subscribed before the login: the server starts right after it.
        let mut stream = client.all_events();
        client
            .wait_ready(Duration::from_secs(5))
            .await
            .expect("login");
        let started = Instant::now();
        let cpu = thread_cpu_time().unwrap_or_default();
        // The consumer is a task of its own, as in an application.
        let consumer = tokio::spawn(async move {
            let mut count = 0u64;
            while let Some(event) = stream.next().await {
                if event.name() == "ReplayDone" {
                    break;
                }
                count += 1;
            }
            (count, stream.dropped())
        });
        let (count, stream_dropped) = consumer.await.expect("consumer");
        let run = Run {
            events: count,
            elapsed: started.elapsed(),
            cpu: thread_cpu_time().unwrap_or_default() - cpu,
            dropped: stream_dropped + client.metrics().dropped_events_total,
        };
        client.close().await;
        run
    });
    server.stop();
    run
}

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|n| {
            n.replace(['_', ','], "")
                .parse()
                .expect("EVENTS must be a number")
        })
        .unwrap_or(2_000_000);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (events, _) = load_capture_events(&fixture).expect("fixture");
    let mio = run_mio(&events, total, DriverOptions::default().read_budget);
    // A smaller read budget, for comparison in the same run.
    let mio_small = run_mio(&events, total, 128 * 1024);
    let tokio = run_tokio(&events, total);
    mio.print("ami-mio");
    mio_small.print("mio 128K");
    tokio.print("ami-tokio");
    assert_eq!(mio.events, total, "mio: every event must arrive");
    assert_eq!(
        mio_small.events, total,
        "mio (128 KiB budget): every event must arrive"
    );
    assert_eq!(tokio.events, total, "tokio: every event must arrive");
}
