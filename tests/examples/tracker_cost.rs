//! What the call tracker costs one connection, on the flood corpus (the Asterisk 22
//! capture), in one run:
//!
//! 1. in memory: the capture's messages fed to a `CallTracker` over and over, ns per
//!    event;
//! 2. one `ami-mio` connection to the replay server with a counting listener, then the
//!    same with a second listener feeding every event to a tracker, alternating, three
//!    rounds each: events/s of both (the bound: the tracker must not halve it).
//!
//! Run with
//! `cargo run --release -p ami-tests --example tracker_cost -- [EVENTS]` (default
//! 2,000,000 per round).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_cluster::{CallTracker, TrackerConfig};
use ami_proto::{Limits, Parsed, Parser};
use ami_tests::counting::CountingDriver;
use ami_tests::replay::{ReplayConfig, ReplayServer, load_capture_events};

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|n| n.replace(['_', ','], "").parse().expect("EVENTS"))
        .unwrap_or(2_000_000);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (events, count) = load_capture_events(&fixture).expect("fixture");

    // 1. In memory.
    let mut messages = Vec::new();
    let mut parser = Parser::new(Limits::default());
    parser.feed(&events, &mut |parsed| {
        if let Parsed::Message(message) = parsed {
            messages.push(message);
        }
    });
    let calls = messages
        .iter()
        .filter(|m| m.event_name() == Some("Newchannel"))
        .count();
    let mut tracker = CallTracker::new(TrackerConfig::default());
    let rounds = (total as usize / messages.len().max(1)).max(1);
    let now = Instant::now();
    let started = Instant::now();
    for _ in 0..rounds {
        for message in &messages {
            tracker.handle_event(message, now);
        }
        while tracker.poll_ended().is_some() {}
    }
    let fed = (rounds * messages.len()) as f64;
    println!(
        "tracker in memory: {fed:.0} events ({count} in the capture, {calls} Newchannel) in \
         {:.3} s = {:.1} ns per event; {} calls ended",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() * 1e9 / fed,
        tracker.counters().ended
    );

    // 2. One connection, with and without the tracker.
    for round in 1..=3 {
        for with_tracker in [false, true] {
            let server = ReplayServer::start(ReplayConfig::new(events.clone(), total)).unwrap();
            let mut client = CountingDriver::connect(server.addr(), "replay").expect("login");
            let tracker = Rc::new(RefCell::new(CallTracker::new(TrackerConfig::default())));
            if with_tracker {
                let tracker = tracker.clone();
                client.driver.on_any_event(move |event| {
                    tracker
                        .borrow_mut()
                        .handle_event(&event.message, event.received_at);
                });
            }
            let started = Instant::now();
            while !client.done() {
                client.driver.tick_all(Duration::from_millis(10));
            }
            let elapsed = started.elapsed();
            let n = client.count();
            let dropped = client.driver.metrics(client.id).dropped_events_total;
            println!(
                "round {round}, {}: {n} events in {:.2} s = {:.0} events/s, dropped {dropped}",
                if with_tracker {
                    "with the tracker   "
                } else {
                    "counting listener  "
                },
                elapsed.as_secs_f64(),
                n as f64 / elapsed.as_secs_f64()
            );
            client.driver.shutdown(Duration::from_secs(5));
            server.stop();
        }
    }
}
