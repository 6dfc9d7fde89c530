//! `ami listen` against the real Asterisk 22 (instance `a` of the suite) under the
//! dialplan flood (`Local/flood@test`: 100,000 `UserEvent Flood` with `Seq`, then
//! `FloodDone`; about 600,000 frames with the Newexten and VarSet around them):
//!
//! - a reader that reads at once gets every `Seq` exactly once, nothing dropped;
//! - a reader that does not read at all: the sessions stay up, every event listen
//!   received is delivered or counted (`dropped` records, `ami_dropped_events_total`,
//!   the exit log line), and SIGTERM ends it within 10 s with exit code 0;
//! - a reader that closes the pipe ends it with exit code 3 and a log line.
//!
//! The tests take turns: Asterisk broadcasts a flood to every session.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ami_tests::asterisk::{Flooder, asterisk, unique_id};
use support::{Ami, log_sum, wait_until};

/// `ami listen --all` with the config at `path`.
fn listen(path: &std::path::Path) -> Ami {
    Ami::start(
        [
            "listen".as_ref(),
            "--all".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ],
        &[],
    )
}

/// UserEvents in the flood a fast reader gets whole.
const COUNT: u64 = 100_000;
/// UserEvents in the flood a stalled reader misses.
const STALL_COUNT: u64 = 30_000;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A config with the given servers (key, event classes), all on instance `a`, and
/// `memory_limit` bytes for listen (the outlet queue holds half of it).
fn config(servers: &[(&str, &str)], memory_limit: u64) -> PathBuf {
    let a = asterisk();
    let dir = std::env::temp_dir().join(unique_id("ami-listen-asterisk"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ami.toml");
    let mut text = String::new();
    for (key, events) in servers {
        text.push_str(&format!(
            "[servers.{key}]\nhost = \"{}\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\nevents = \"{events}\"\n",
            a.host, a.port, a.secret
        ));
    }
    text.push_str(&format!("[options]\nmemory_limit = {memory_limit}\n"));
    std::fs::write(&path, text).unwrap();
    path
}

/// What a reader of listen's stdout found.
#[derive(Debug, Default)]
struct Output {
    /// Event records per server.
    events: BTreeMap<String, u64>,
    /// `Seq` of the `UserEvent Flood` records (of every server).
    flood_seqs: Vec<u64>,
    /// `FloodDone` records seen.
    flood_done: u64,
    /// Sum of the `count` of `dropped` records, per reason.
    dropped: BTreeMap<String, u64>,
    /// The `type`s of the other records.
    status: Vec<String>,
    /// A text to look for in event records (empty: none)...
    probe: String,
    /// ...and the `received_at` of those that hold it.
    probe_received: Vec<f64>,
}

impl Output {
    /// Takes one line. Cheap for most events (the reader must keep up with listen):
    /// only status records and the flood's own UserEvents are parsed.
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("{\"type\":\"event\",\"server\":\"") {
            let server = &rest[..rest.find('"').unwrap()];
            match self.events.get_mut(server) {
                Some(n) => *n += 1,
                None => {
                    self.events.insert(server.to_owned(), 1);
                }
            }
            if !self.probe.is_empty() && line.contains(&self.probe) {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                self.probe_received
                    .push(record["received_at"].as_f64().unwrap());
                return;
            }
            if !line.contains("[\"UserEvent\",\"Flood") {
                return;
            }
        }
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        match record["type"].as_str().unwrap() {
            "event" => {
                let header = |key: &str| {
                    record["headers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|kv| kv[0] == key)
                        .and_then(|kv| kv[1].as_str())
                };
                match header("UserEvent") {
                    Some("Flood") => self
                        .flood_seqs
                        .push(header("Seq").unwrap().parse().unwrap()),
                    Some("FloodDone") => self.flood_done += 1,
                    _ => {}
                }
            }
            "dropped" => {
                *self
                    .dropped
                    .entry(record["reason"].as_str().unwrap().to_owned())
                    .or_default() += record["count"].as_u64().unwrap();
            }
            other => self.status.push(other.to_owned()),
        }
    }

    fn events_total(&self) -> u64 {
        self.events.values().sum()
    }
}

/// Reads `stdout` to its end on a thread of its own, into `progress`. A last line
/// without its newline (cut by an exit while the output was blocked) is not a record:
/// listen counted it as not written.
fn reader(stdout: ChildStdout, progress: Arc<Mutex<Output>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut input = BufReader::with_capacity(1 << 20, stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => progress.lock().unwrap().line(line.trim_end()),
            }
        }
    })
}

#[test]
fn a_reader_that_reads_at_once_gets_the_whole_flood() {
    let _turn = turn();
    // Room for the whole flood (~450 MB as listen holds it): on a busy machine this
    // test's reader may fall behind for seconds, which is not what it tests (the
    // stalled reader below is).
    // The `user` class: the 100,000 UserEvents and nothing of the dialplan's 500,000
    // other frames, which would only add load (the benchmark in BENCHMARKS.md takes
    // them all).
    let config = config(&[("sandbox", "user")], 2 << 30);
    let mut listen = listen(&config);
    let progress: Arc<Mutex<Output>> = Arc::default();
    let reading = reader(listen.stdout.take().unwrap(), progress.clone());
    listen.wait_healthy(&["sandbox"]);
    let mut flooder = Flooder::new();
    let started = Instant::now();
    flooder.flood(COUNT);
    wait_until(Duration::from_secs(60), "listen's FloodDone", || {
        progress.lock().unwrap().flood_done > 0
    });
    let elapsed = started.elapsed();
    listen.terminate();
    let (code, took) = listen.wait_exit(Duration::from_secs(15));
    reading.join().unwrap();
    let read = progress.lock().unwrap();
    let mut seqs = read.flood_seqs.clone();
    seqs.sort_unstable();
    seqs.dedup();
    eprintln!(
        "fast reader: {} events, {} Flood UserEvents in {:.1} s; exit {code:?} after {took:?}",
        read.events_total(),
        read.flood_seqs.len(),
        elapsed.as_secs_f64()
    );
    let totals: Vec<String> = listen
        .log()
        .lines()
        .filter(|l| l.contains("events in all") || l.contains("WARN"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        read.flood_seqs.len() as u64,
        COUNT,
        "every Seq once; listen: {totals:#?}"
    );
    assert_eq!(seqs, (0..COUNT).collect::<Vec<_>>());
    assert!(
        read.dropped.is_empty(),
        "nothing dropped: {:?}",
        read.dropped
    );
    assert_eq!(code, Some(0), "{}", listen.log());
}

#[test]
fn a_reader_that_stalls_costs_events_counted_never_the_sessions() {
    let _turn = turn();
    let keys = ["flooded", "second"];
    // The flooded session takes the UserEvents only, the second the call events only
    // (the flood's load on a busy machine stays small); a 16 MiB budget gives the
    // outlet queue 8 MiB, a third of the flood.
    let config = config(&[("flooded", "user"), ("second", "call")], 16 << 20);
    let mut listen = listen(&config);
    // Nobody reads stdout until listen has exited: the pipe fills at once.
    let stdout = listen.stdout.take().unwrap();
    listen.wait_healthy(&keys);
    let mut flooder = Flooder::new();
    flooder.flood(STALL_COUNT);
    // Listen keeps reading: its count reaches what Asterisk sent and stops there (two
    // snapshots a second apart agree).
    let mut last: Option<u64> = None;
    wait_until(Duration::from_secs(60), "listen's count to settle", || {
        let Some(status) = listen.status() else {
            return false;
        };
        let now = status["flooded"]["events_total"].as_u64().unwrap();
        let settled = last == Some(now) && now > STALL_COUNT;
        last = Some(now);
        if !settled {
            thread::sleep(Duration::from_millis(1100));
        }
        settled
    });
    let status = listen.status().unwrap();
    for key in keys {
        assert_eq!(status[key]["healthy"], true, "{key}: {:?}", status[key]);
    }
    assert_eq!(
        listen.metric_sum("ami_connections_lost_total"),
        0.0,
        "{}",
        listen.log()
    );
    let outlet_slow_seen: f64 = {
        let text = listen.get("/metrics").unwrap();
        text.lines()
            .filter(|l| l.contains("reason=\"outlet_slow\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(outlet_slow_seen > 0.0, "the stalled reader cost events");

    // SIGTERM while nobody reads: out within 10 s, exit 0.
    listen.terminate();
    let (code, took) = listen.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", listen.log());
    let progress: Arc<Mutex<Output>> = Arc::default();
    reader(stdout, progress.clone()).join().unwrap();
    let read = progress.lock().unwrap();
    let log = listen.log();
    // The counts listen logged at its exit.
    let unwritten = log_sum(&log, "records not written", "events");
    let maybe_cut = log_sum(&log, "records not written", "maybe_cut_events");
    let total = |field: &str| log_sum(&log, "events in all", field);
    let received = total("events_received");
    let outlet_slow = total("dropped_outlet");
    assert!(outlet_slow as f64 >= outlet_slow_seen, "{log}");
    assert_eq!(
        total("dropped_memory_limit") + total("dropped_queue_full"),
        0,
        "the budget and the driver's queues dropped nothing: {log}"
    );
    eprintln!(
        "stalled reader: listen received {received} events; {} delivered, {outlet_slow} dropped \
         (outlet_slow), {unwritten} unwritten at exit; dropped records {:?}; exit after {took:?}",
        read.events_total(),
        read.dropped
    );
    // Exact, but for the lines of a write that may have been partly out at the exit
    // (none when the pipe was full: such writes are atomic).
    let counted = read.events_total() + outlet_slow + unwritten;
    assert!(
        counted >= received && counted - received <= maybe_cut,
        "every event delivered or counted: {counted} counted, {received} received, \
         {maybe_cut} maybe cut\n{log}"
    );
    // The `dropped` records that made it into the pipe (usually none: it filled before
    // the first drop) report outlet drops only, no more than the metric counted.
    assert!(read.dropped.keys().all(|reason| reason == "outlet_slow"));
    assert!(read.dropped.values().sum::<u64>() <= outlet_slow);
}

/// Seconds since the UNIX epoch, as `received_at` counts them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_stalled_reader_does_not_delay_reading_another_server() {
    let _turn = turn();
    let keys = ["flooded", "second"];
    let config = config(&[("flooded", "user"), ("second", "call")], 256 << 20);
    let mut listen = listen(&config);
    let stdout = listen.stdout.take().unwrap();
    listen.wait_healthy(&keys);
    // 5,000 UserEvents (about 2.7 MB of lines) are more than the pipe holds, even grown
    // to 1 MiB: the outlet is blocked in its write, with the rest queued behind it.
    let mut flooder = Flooder::new();
    flooder.flood(5_000);
    // A call on the second server meanwhile: listen reads its events at once (their
    // `received_at`), though they wait behind the flood for the pipe.
    let probe = unique_id("probe");
    let probed_at = unix_now();
    ami_tests::asterisk::probe_call(&probe);
    // Then the reader wakes up and takes everything.
    let progress: Arc<Mutex<Output>> = Arc::new(Mutex::new(Output {
        probe: probe.clone(),
        ..Output::default()
    }));
    let reading = reader(stdout, progress.clone());
    wait_until(Duration::from_secs(30), "the probe's events", || {
        !progress.lock().unwrap().probe_received.is_empty()
    });
    listen.terminate();
    let (code, _) = listen.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", listen.log());
    reading.join().unwrap();
    let read = progress.lock().unwrap();
    assert_eq!(read.flood_seqs.len(), 5_000, "nothing was dropped");
    let first = read
        .probe_received
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let delay = first - probed_at;
    eprintln!(
        "stalled reader: the second server's first probe event was read {:.0} ms after the call was placed",
        delay * 1000.0
    );
    assert!(delay < 1.0, "read {delay:.3} s after the call");
}

#[test]
fn a_closed_pipe_ends_listen_with_exit_code_3() {
    let _turn = turn();
    let config = config(&[("sandbox", "on")], 128 << 20);
    let mut listen = listen(&config);
    let mut stdout = BufReader::new(listen.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"type\":\"health\""), "{first}");
    drop(stdout); // like `ami listen | head -1`
    let mut flooder = Flooder::new();
    flooder.flood(1_000);
    let (code, _) = listen.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(3), "{}", listen.log());
    assert!(listen.log().contains("output closed"), "{}", listen.log());
}
