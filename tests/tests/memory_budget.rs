//! The memory budget holds under a flood: one `ami-mio` driver with `memory_limit` 16
//! MiB and room for a million events in its queue, fed ~120 MB of the Asterisk 22
//! fixture's events by the replay server (in a process of its own, so that this test
//! process holds the client alone) while its listener is slower than the socket.
//!
//! Without the budget the queue would hold the flood (hundreds of MiB); with it, the
//! budget is never exceeded, the process's peak RSS (`VmHWM`) stays under 48 MiB, and
//! every event sent is either delivered or counted as dropped.
//!
//! One test in this binary: its RSS is the client's and nothing else's.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_mio::{Driver, DriverOptions, Endpoint, ServerSpec};
use ami_proto::Config;
use ami_tests::procstat::memory_kib;

/// Events the replay server sends (about 120 MB of frames).
const EVENTS: u64 = 300_000;
/// The client's memory budget.
const MEMORY_LIMIT: usize = 16 << 20;
/// The peak RSS the test allows the whole process.
const MAX_PEAK_KIB: u64 = 48 * 1024;

/// The replay server process; killed when dropped.
struct Replay(Child);

impl Replay {
    fn start(events: u64) -> (Replay, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami-replay"))
            .args(["--events", &events.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ami-replay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the replay server's address");
        let addr = line.trim().parse().expect("an address");
        (Replay(child), addr)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spins for `duration`: a listener that does real work per event.
fn work(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

#[test]
fn a_flood_into_a_huge_queue_stays_within_the_memory_budget() {
    let (_replay, addr) = Replay::start(EVENTS);
    let mut driver = Driver::with_options(DriverOptions {
        memory_limit: MEMORY_LIMIT,
        ..DriverOptions::default()
    })
    .unwrap();
    let mut config = Config::new("flood", "admin", "secret");
    config.event_queue_capacity = 1_000_000;
    // The end marker is dropped last, so that the run always ends.
    config.priority_events = vec!["ReplayDone".into()];
    let id = driver
        .add_server(ServerSpec::new(
            config,
            Endpoint::new(addr.ip().to_string(), addr.port()),
        ))
        .unwrap();

    let delivered = Rc::new(Cell::new(0u64));
    let done = Rc::new(Cell::new(false));
    let most_used = Rc::new(Cell::new(0usize));
    let budget = driver.memory().clone();
    let (count, finished, peak) = (delivered.clone(), done.clone(), most_used.clone());
    driver.on_any_event(move |event| {
        peak.set(peak.get().max(budget.used()));
        if event.name() == "ReplayDone" {
            finished.set(true);
        } else {
            count.set(count.get() + 1);
            // About 100,000 events/s at most: the socket is faster.
            work(Duration::from_micros(10));
        }
    });
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(30)).unwrap();

    // The marker is a priority event: ordinary ones still queued come after it.
    let started = Instant::now();
    while !(done.get() && driver.node(id).queued_events() == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the flood did not end: {} delivered, {:?}",
            delivered.get(),
            driver.metrics(id)
        );
        driver.tick_all(Duration::from_millis(50));
        most_used.set(most_used.get().max(driver.memory().used()));
    }

    let metrics = driver.metrics(id);
    let (_, peak_kib) = memory_kib();
    eprintln!(
        "delivered {}, dropped {} (queue full) + {} (memory), budget peak {} of {MEMORY_LIMIT} bytes, VmHWM {peak_kib} KiB",
        delivered.get(),
        metrics.dropped_events_total,
        metrics.dropped_events_memory_total,
        most_used.get(),
    );
    assert_eq!(
        delivered.get() + metrics.dropped_events_total + metrics.dropped_events_memory_total,
        EVENTS,
        "every event delivered or counted"
    );
    assert!(
        metrics.dropped_events_memory_total > 0,
        "the flood outran the listener: the budget had to drop"
    );
    assert_eq!(
        metrics.dropped_events_total, 0,
        "the queue itself never filled"
    );
    assert!(most_used.get() <= MEMORY_LIMIT, "the budget was exceeded");
    assert!(
        peak_kib < MAX_PEAK_KIB,
        "peak RSS {peak_kib} KiB, over {MAX_PEAK_KIB} KiB"
    );
    let text = driver.render_prometheus();
    assert!(text.contains(&format!(
        "ami_dropped_events_total{{server=\"flood\",reason=\"memory_limit\"}} {}\n",
        metrics.dropped_events_memory_total
    )));
    assert!(text.contains(&format!("ami_memory_limit_bytes {MEMORY_LIMIT}\n")));
}
