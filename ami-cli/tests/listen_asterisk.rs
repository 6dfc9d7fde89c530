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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use ami_mio::{Driver, ServerId, ServerSpec};
use ami_proto::Config;
use ami_proto::action::{EventMask, Originate};
use ami_tests::asterisk::{asterisk, unique_id};

/// UserEvents in the flood a fast reader gets whole.
const COUNT: u64 = 100_000;
/// UserEvents in the flood a stalled reader misses.
const STALL_COUNT: u64 = 30_000;

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// The `ami listen` process; its stderr is collected.
struct Listen {
    child: Child,
    stdout: Option<ChildStdout>,
    log: Arc<Mutex<String>>,
    http_port: u16,
}

impl Listen {
    fn start(config: &PathBuf) -> Listen {
        let http_port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
            .args(["listen", "--all", "--http-addr"])
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--config")
            .arg(config)
            .env("AMI_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ami listen");
        let log: Arc<Mutex<String>> = Arc::default();
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take();
        Listen {
            child,
            stdout,
            log,
            http_port,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET path` on the HTTP endpoint: the body, or `None` while it does not answer.
    fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
    }

    /// `/status` as JSON: per server key, its entry.
    fn status(&self) -> Option<BTreeMap<String, serde_json::Value>> {
        let body = self.get("/status")?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(
            status["servers"]
                .as_array()?
                .iter()
                .map(|s| (s["server"].as_str().unwrap().to_owned(), s.clone()))
                .collect(),
        )
    }

    /// The sum of every sample of `metric` (all servers and reasons).
    fn metric_sum(&self, metric: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with(&format!("{metric}{{")))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until every server in `keys` is healthy in `/status`.
    fn wait_healthy(&self, keys: &[&str]) {
        wait_until(Duration::from_secs(30), "every server healthy", || {
            self.status().is_some_and(|status| {
                keys.iter()
                    .all(|k| status.get(*k).is_some_and(|s| s["healthy"] == true))
            })
        });
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; returns its code and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "ami listen did not exit within {limit:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of `field=N` over the log lines that contain `marker`.
fn log_sum(log: &str, marker: &str, field: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Polls `condition` every 50 ms, failing after `limit`.
fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The test's own session to Asterisk, which starts floods and sees their end.
struct Flooder {
    driver: Driver,
    id: ServerId,
}

impl Flooder {
    fn new() -> Flooder {
        let mut driver = Driver::new().unwrap();
        let mut config = Config::new("flooder", "admin", asterisk().secret.clone());
        config.events = EventMask::Classes(vec!["user".into()]);
        config.blocked_events = Vec::new();
        let id = driver
            .add_server(ServerSpec::new(config, asterisk().endpoint()))
            .unwrap();
        driver.connect(id).unwrap();
        driver.wait_ready(id, Duration::from_secs(15)).unwrap();
        Flooder { driver, id }
    }

    /// Starts a flood of `count` UserEvents and ticks until its `FloodDone`.
    fn flood(&mut self, count: u64) {
        let done = Arc::new(Mutex::new(false));
        let seen = done.clone();
        let subscription = self.driver.on_event("UserEvent", move |event| {
            if event.get("UserEvent") == Some("FloodDone") {
                *seen.lock().unwrap() = true;
            }
        });
        let originate = Originate::application("Local/flood@test", "Wait", "120")
            .with_variable("COUNT", count.to_string());
        self.driver.send(self.id, originate, |_| {}).unwrap();
        let started = Instant::now();
        while !*done.lock().unwrap() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no FloodDone within 120 s"
            );
            self.driver.tick_all(Duration::from_millis(20));
        }
        self.driver.unsubscribe(subscription);
    }
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
    let mut listen = Listen::start(&config);
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
    let mut listen = Listen::start(&config);
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

#[test]
fn a_closed_pipe_ends_listen_with_exit_code_3() {
    let _turn = turn();
    let config = config(&[("sandbox", "on")], 128 << 20);
    let mut listen = Listen::start(&config);
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
