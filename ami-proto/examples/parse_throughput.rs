//! One-shot parser throughput and peak memory on the real Asterisk 22 capture.
//!
//! Loads `tests/fixtures/asterisk22-capture.raw`, strips the banner, repeats the rest to
//! at least 100 MB, then parses it fed 64 KiB at a time (best of several runs) and
//! compares with the floor, `memchr::memmem` counting `\r\n\r\n` over the same bytes.
//! Prints MB/s (10^6 bytes), messages/s, the floor and the ratio, and the peak resident
//! memory (`VmHWM`) before and after parsing, then the time of four `Message::get`
//! lookups per message on the first 20 MB's messages.
//!
//! Run with `cargo run --release -p ami-proto --example parse_throughput [RUNS]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../benches/corpus.rs"]
mod corpus;
use corpus::{CHUNK, corpus, parse_count};

use ami_proto::message::Message;
use ami_proto::parser::{Limits, Parsed, Parser};

/// The peak resident set size of this process in KiB (`VmHWM`), if the system tells.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn show_kib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "unknown".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

/// Runs `work` `runs` times and returns its result and the shortest time.
#[allow(
    clippy::disallowed_methods,
    reason = "a benchmark reads the clock; the library never does"
)]
fn best_of<T>(runs: u32, mut work: impl FnMut() -> T) -> (T, Duration) {
    let mut best = Duration::MAX;
    let mut result = None;
    for _ in 0..runs {
        let start = Instant::now();
        let value = black_box(work());
        best = best.min(start.elapsed());
        result = Some(value);
    }
    (result.expect("at least one run"), best)
}

fn main() {
    let runs: u32 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .expect("RUNS must be a number >= 1"),
        None => 5,
    };
    let at_start = peak_rss_kib();
    let data = corpus();
    let before = peak_rss_kib();

    let (messages, parse_time) = best_of(runs, || parse_count(&data));
    let after = peak_rss_kib();
    let (blocks, floor_time) = best_of(runs, || {
        memchr::memmem::find_iter(black_box(&data), b"\r\n\r\n").count()
    });
    assert_eq!(
        messages, blocks as u64,
        "every block of the capture is one message"
    );

    let megabytes = data.len() as f64 / 1e6;
    let parse_mb_s = megabytes / parse_time.as_secs_f64();
    let floor_mb_s = megabytes / floor_time.as_secs_f64();
    println!(
        "corpus:       {} bytes, {messages} messages, fed {CHUNK} bytes at a time",
        data.len()
    );
    println!("runs:         best of {runs}");
    println!(
        "parser:       {parse_mb_s:.0} MB/s, {:.0} messages/s ({:.1} ms)",
        messages as f64 / parse_time.as_secs_f64(),
        parse_time.as_secs_f64() * 1e3
    );
    println!(
        "memmem floor: {floor_mb_s:.0} MB/s ({:.1} ms)",
        floor_time.as_secs_f64() * 1e3
    );
    println!(
        "ratio:        parser at {:.1}% of the floor ({:.1}x slower)",
        100.0 * parse_mb_s / floor_mb_s,
        floor_mb_s / parse_mb_s
    );
    println!(
        "peak RSS:     {} at start, {} with the corpus loaded, {} after parsing",
        show_kib(at_start),
        show_kib(before),
        show_kib(after)
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "              parsing raised the peak by {} KiB",
            after.saturating_sub(before)
        );
    }

    // Header lookups, as a consumer of the messages does them: three keys most events
    // have and one that none has (a lookup that visits every header).
    let kept = parse_messages(&data[..LOOKUP_CORPUS.min(data.len())]);
    let (found, lookup_time) = best_of(runs, || {
        kept.iter()
            .map(|message| {
                LOOKUP_KEYS
                    .iter()
                    .filter_map(|key| message.get(black_box(key)))
                    .count()
            })
            .sum::<usize>()
    });
    println!(
        "lookups:      {} `get`s on each of {} messages ({} found): {:.0} ns per message",
        LOOKUP_KEYS.len(),
        kept.len(),
        found,
        lookup_time.as_secs_f64() * 1e9 / kept.len() as f64
    );
}

/// How much of the corpus the lookups run on (its messages are kept in memory).
const LOOKUP_CORPUS: usize = 20 * 1000 * 1000;
/// The keys looked up in each message.
const LOOKUP_KEYS: [&str; 4] = ["Uniqueid", "Channel", "Linkedid", "NoSuchKey"];

/// Every message of `data`, kept.
fn parse_messages(data: &[u8]) -> Vec<Message> {
    let mut parser = Parser::new(Limits::default());
    let mut messages = Vec::new();
    parser.feed(data, &mut |item| {
        if let Parsed::Message(message) = item {
            messages.push(message);
        }
    });
    messages
}
