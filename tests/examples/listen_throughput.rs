//! `ami listen` to a pipe drained by a fast reader, beside the library it is built on,
//! in one run, against the loopback replay server.
//!
//! 1. The library: one `ami-mio` driver counting events in a listener (the floor
//!    `ami listen` can reach).
//! 2. `ami listen` (the binary given as the first argument, a release build) reading
//!    the same replay; this program reads its stdout as fast as it can (counting the
//!    event lines up to the `ReplayDone` marker) and reports events/s delivered to the
//!    reader, what listen dropped (the replay server outruns any consumer, so drops
//!    are expected; they must be counted exactly: delivered + dropped = sent), and
//!    listen's CPU (all its threads) per delivered event.
//!
//! Run with
//! `cargo build --release -p ami-cli && cargo run --release -p ami-tests --example listen_throughput -- target/release/ami [EVENTS]`
//! (default 2,000,000 events).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ami_tests::asterisk::thread_cpu_time;
use ami_tests::counting::CountingDriver;
use ami_tests::procstat::process_cpu;
use ami_tests::replay::{ReplayConfig, ReplayServer, load_capture_events};

fn main() {
    let mut args = std::env::args().skip(1);
    let ami = args
        .next()
        .expect("usage: listen_throughput PATH_TO_AMI [EVENTS]");
    let total: u64 = args
        .next()
        .map(|n| n.replace(['_', ','], "").parse().expect("EVENTS"))
        .unwrap_or(2_000_000);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (events, _) = load_capture_events(&fixture).expect("fixture");

    // 1. The library.
    let server = ReplayServer::start(ReplayConfig::new(events.clone(), total)).unwrap();
    let mut client = CountingDriver::connect(server.addr(), "lib").expect("login");
    let started = Instant::now();
    let cpu = thread_cpu_time().unwrap_or_default();
    while !client.done() {
        client.driver.tick_all(Duration::from_millis(10));
    }
    let lib_elapsed = started.elapsed();
    let lib_cpu = thread_cpu_time().unwrap_or_default() - cpu;
    let lib_events = client.count();
    client.driver.shutdown(Duration::from_secs(5));
    server.stop();
    println!(
        "library   {lib_events:>9} events in {:>5.2} s = {:>9.0} events/s; CPU {:.2} µs per event",
        lib_elapsed.as_secs_f64(),
        lib_events as f64 / lib_elapsed.as_secs_f64(),
        lib_cpu.as_secs_f64() * 1e6 / lib_events.max(1) as f64
    );

    // 2. `ami listen` to a pipe.
    let server = ReplayServer::start(ReplayConfig::new(events, total)).unwrap();
    let dir = std::env::temp_dir().join(format!("ami-listen-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        format!(
            "[servers.replay]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"admin\"\nsecret = \"s\"\n",
            server.addr().port()
        ),
    )
    .unwrap();
    let mut child = Command::new(&ami)
        .args(["listen", "--config"])
        .arg(&config)
        .env("AMI_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ami listen");
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let mut line = Vec::new();
    let (mut delivered, mut first) = (0u64, None);
    loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line).unwrap() == 0 {
            panic!("ami listen ended before the marker");
        }
        if line.starts_with(b"{\"type\":\"event\"") {
            first.get_or_insert_with(Instant::now);
            if memchr_marker(&line) {
                break;
            }
            delivered += 1;
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |at| at.elapsed());
    let cpu = process_cpu(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // Read the rest (dropped records, health) so that listen can exit at once.
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = child.wait().unwrap();
    server.stop();
    let log = log.join().unwrap();
    let field = |name: &str| -> u64 {
        log.lines()
            .filter(|l| l.contains("events in all"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let dropped =
        field("dropped_outlet") + field("dropped_memory_limit") + field("dropped_queue_full");
    println!(
        "ami listen {delivered:>9} events delivered in {:>5.2} s = {:>9.0} events/s; dropped {dropped} \
         (delivered + dropped = {} of {total} sent); CPU {:.2} µs per delivered event (all threads); exit {:?}",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        delivered + dropped,
        cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        status.code()
    );
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(
        delivered + dropped,
        total,
        "every event delivered or counted"
    );
}

/// Whether an event line is the replay's end marker.
fn memchr_marker(line: &[u8]) -> bool {
    const MARKER: &[u8] = b"\"name\":\"ReplayDone\"";
    line.windows(MARKER.len()).take(120).any(|w| w == MARKER)
}
