//! One-shot throughput of the whole core on the real Asterisk 22 capture: a logged-in
//! [`Connection`] fed 64 KiB at a time, every output polled and dropped after each
//! read, as a driver does. This is the events hot path: parse, route, queue, poll, drop.
//!
//! Loads `tests/fixtures/asterisk22-capture.raw`, strips the banner, repeats the rest to
//! at least 100 MB, then runs it through a fresh connection (best of several runs).
//! Prints MB/s (10^6 bytes) and events/s. `--hold N` keeps the last N events alive (a
//! ring, like an application's buffer) instead of dropping each one at once.
//!
//! Run with `cargo run --release -p ami-proto --example connection_throughput [RUNS] [--hold N]`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use ami_proto::{Config, Connection, Output, State};

#[path = "../benches/corpus.rs"]
#[allow(dead_code, reason = "this example does not use the counting parse")]
mod corpus;
use corpus::{CHUNK, corpus};

/// A connection logged in at `now`, with nothing left to write or poll.
fn logged_in(now: Instant) -> Connection {
    let mut config = Config::new("pbx1", "admin", "secret");
    // The capture's events come in a burst: room for all, so nothing is dropped.
    config.event_queue_capacity = 1_000_000;
    config.heartbeat_interval = Duration::ZERO;
    let mut conn = Connection::new(config, 1, 1, now);
    conn.handle_connected(now);
    conn.handle_data(now, b"Asterisk Call Manager/11.0.0\r\n");
    let login = String::from_utf8(conn.poll_transmit().to_vec()).expect("ASCII");
    conn.advance_transmit(login.len());
    let id = login
        .lines()
        .find_map(|line| line.strip_prefix("ActionID: "))
        .expect("the Login has an ActionID");
    let reply = format!("Response: Success\r\nActionID: {id}\r\n\r\n");
    conn.handle_data(now, reply.as_bytes());
    assert_eq!(conn.state(), State::Healthy);
    while conn.poll().is_some() {}
    conn
}

/// Runs `data` through a fresh connection; returns the events that came out.
fn run(data: &[u8], now: Instant, hold: usize) -> u64 {
    let mut conn = logged_in(now);
    let mut held = VecDeque::with_capacity(hold);
    let mut events = 0u64;
    for chunk in data.chunks(CHUNK) {
        conn.handle_data(now, black_box(chunk));
        while let Some(output) = conn.poll() {
            if let Output::Event(event) = output {
                events += 1;
                if hold == 0 {
                    black_box(&event);
                } else {
                    if held.len() == hold {
                        held.pop_front();
                    }
                    held.push_back(event);
                }
            }
        }
    }
    assert_eq!(conn.stats().events.dropped, 0);
    events
}

#[allow(
    clippy::disallowed_methods,
    reason = "a benchmark reads the clock; the library never does"
)]
fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 5u32;
    let mut hold = 0usize;
    while let Some(arg) = args.next() {
        if arg == "--hold" {
            hold = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--hold takes a number");
        } else {
            runs = arg
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .expect("RUNS must be a number >= 1");
        }
    }
    let data = corpus();
    let now = Instant::now();
    let mut best = Duration::MAX;
    let mut events = 0;
    for _ in 0..runs {
        let start = Instant::now();
        events = black_box(run(&data, now, hold));
        best = best.min(start.elapsed());
    }
    let seconds = best.as_secs_f64();
    println!(
        "corpus:     {} bytes, {events} events, fed {CHUNK} bytes at a time, {} held",
        data.len(),
        hold
    );
    println!("runs:       best of {runs}");
    println!(
        "connection: {:.0} MB/s, {:.0} events/s ({:.1} ms, {:.1} ns per event)",
        data.len() as f64 / 1e6 / seconds,
        events as f64 / seconds,
        seconds * 1e3,
        seconds * 1e9 / events as f64
    );
}
