//! How fast the replay server feeds one client on loopback.
//!
//! Starts a [`ReplayServer`] on the events of the Asterisk 22 fixture, logs in with a
//! plain `TcpStream` and reads everything up to the `ReplayDone` marker, timing from
//! the login to the marker. The raw reader only counts bytes; with `--parse` the
//! client also runs the `ami-proto` parser over what it reads and counts the events.
//! Prints MB/s (10^6 bytes) and events/s, best of the runs.
//!
//! Run with
//! `cargo run --release -p ami-tests --example replay_throughput -- [EVENTS] [--parse] [--runs N] [--chunk-bytes B]`
//! (default 5,000,000 events, 3 runs, 256 KiB writes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use ami_proto::parser::{Limits, Parsed, Parser};
use ami_tests::replay::{DEFAULT_CHUNK_BYTES, ReplayConfig, ReplayServer, load_capture_events};

/// Options from the command line.
struct Options {
    events: u64,
    parse: bool,
    runs: u32,
    chunk_bytes: usize,
}

fn options() -> Options {
    let mut options = Options {
        events: 5_000_000,
        parse: false,
        runs: 3,
        chunk_bytes: DEFAULT_CHUNK_BYTES,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--parse" => options.parse = true,
            "--runs" => options.runs = value("--runs").max(1) as u32,
            "--chunk-bytes" => options.chunk_bytes = value("--chunk-bytes").max(1) as usize,
            number => {
                options.events = number
                    .replace(['_', ','], "")
                    .parse()
                    .unwrap_or_else(|_| panic!("unknown argument {number}"))
            }
        }
    }
    options
}

/// One client session: bytes and events read between the login and the marker.
fn run(server: &ReplayServer, total: u64, parse: bool) -> (u64, u64, Duration) {
    let marker = format!("Event: ReplayDone\r\nEvents: {total}\r\n\r\n").into_bytes();
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    let mut buf = vec![0_u8; 1 << 20];
    let mut parser = Parser::new(Limits::default());
    let mut events = 0_u64;
    let mut done = false;
    let mut count = |item: Parsed, done: &mut bool| {
        if let Parsed::Message(message) = item {
            match message.event_name() {
                Some("ReplayDone") => *done = true,
                Some(_) => events += 1,
                None => {}
            }
        }
    };
    stream
        .write_all(b"Action: Login\r\nActionID: 1\r\nUsername: bench\r\nSecret: bench\r\n\r\n")
        .expect("login");
    let started = Instant::now();
    let mut bytes = 0_u64;
    // The last bytes seen, to find the marker across two reads.
    let mut tail: Vec<u8> = Vec::with_capacity(2 * marker.len());
    while !done {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the server closed early");
        bytes += n as u64;
        if parse {
            parser.feed(&buf[..n], &mut |item| count(item, &mut done));
        } else {
            // The marker is the last frame the server sends: the stream ends with it.
            tail.extend_from_slice(&buf[n.saturating_sub(marker.len())..n]);
            tail.drain(..tail.len().saturating_sub(marker.len()));
            done = tail == marker;
        }
    }
    let elapsed = started.elapsed();
    stream.write_all(b"Action: Logoff\r\n\r\n").expect("logoff");
    (bytes, events, elapsed)
}

fn main() {
    let options = options();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (corpus, frames) = load_capture_events(&path).expect("the fixture");
    let config =
        ReplayConfig::new(corpus.clone(), options.events).with_chunk_bytes(options.chunk_bytes);
    let server = ReplayServer::start(config).expect("start");
    println!(
        "corpus: {frames} event frames, {} bytes ({:.0} bytes/frame); {} events per run, {} reader, {} B writes",
        corpus.len(),
        corpus.len() as f64 / frames as f64,
        options.events,
        if options.parse { "parsing" } else { "raw" },
        options.chunk_bytes,
    );
    let mut best: Option<Duration> = None;
    let mut best_bytes = 0;
    for run_index in 1..=options.runs {
        let (bytes, parsed, elapsed) = run(&server, options.events, options.parse);
        if options.parse {
            assert_eq!(parsed, options.events, "every event parsed");
        }
        let secs = elapsed.as_secs_f64();
        println!(
            "run {run_index}: {bytes} bytes in {secs:.3} s: {:.0} MB/s, {:.0} events/s",
            bytes as f64 / secs / 1e6,
            options.events as f64 / secs
        );
        if best.is_none_or(|best| elapsed < best) {
            best = Some(elapsed);
            best_bytes = bytes;
        }
    }
    let secs = best.unwrap_or_default().as_secs_f64();
    println!(
        "best: {:.0} MB/s, {:.0} events/s",
        best_bytes as f64 / secs / 1e6,
        options.events as f64 / secs
    );
    let report = server.stop();
    println!(
        "server: {} events, {} bytes, {} connections",
        report.events_sent, report.bytes_sent, report.connections
    );
}
