//! One-shot parser throughput and peak memory on the real Asterisk 22 capture.
//!
//! Loads `tests/fixtures/asterisk22-capture.raw`, strips the banner, repeats the rest to
//! at least 100 MB, then parses it fed 64 KiB at a time (best of several runs) and
//! compares with the floor, `memchr::memmem` counting `\r\n\r\n` over the same bytes.
//! Prints MB/s (10^6 bytes), messages/s, the floor and the ratio, and the peak resident
//! memory (`VmHWM`) before and after parsing.
//!
//! Run with `cargo run --release -p ami-proto --example parse_throughput [RUNS]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../benches/corpus.rs"]
mod corpus;
use corpus::{CHUNK, corpus, parse_count};

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
}
