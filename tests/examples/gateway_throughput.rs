//! `ami gateway` into Redis, beside `redis-benchmark`, in one run.
//!
//! 1. The floor: `redis-benchmark -P 64` pipelining `XADD`s of the size the gateway
//!    writes (the command is printed).
//! 2. `ami gateway` (the binary given as the first argument, a release build) reading
//!    the loopback replay server (`EVENTS` events, default 1,000,000), writing each
//!    to `ami:events:replay`: events/s into Redis, counted from the first entry to the
//!    `ReplayDone` marker's; what it dropped (the replay outruns Redis, so drops are
//!    expected, reason `redis`, and must be exact: stored + dropped = sent); its CPU
//!    per stored event.
//! 3. The real Asterisk 22 (the sandbox): the 100,000-UserEvent flood (every class,
//!    ~600,000 frames) through the gateway with 0 dropped and every `Seq` once, and
//!    the round trip of a `Ping` through Redis (request `XADD` to completion read),
//!    p50 and p99, idle and during the flood.
//!
//! Run with
//! `cargo build --release -p ami-cli && cargo run --release -p ami-tests --example gateway_throughput -- target/release/ami [EVENTS]`

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ami_tests::asterisk::{Flooder, asterisk};
use ami_tests::procstat::process_cpu;
use ami_tests::redis::{RedisServer, entries, field, read_all, xlen};
use ami_tests::replay::{ReplayConfig, ReplayServer, load_capture_events};
use redis::Value;

fn main() {
    let mut args = std::env::args().skip(1);
    let ami = args
        .next()
        .expect("usage: gateway_throughput PATH_TO_AMI [EVENTS]");
    let total: u64 = args
        .next()
        .map(|n| n.replace(['_', ','], "").parse().expect("EVENTS"))
        .unwrap_or(1_000_000);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw");
    let (events, _) = load_capture_events(&fixture).expect("fixture");

    // 1. redis-benchmark, entries of the gateway's size (a Newexten of the capture:
    // ~14 headers, ~450 bytes of JSON).
    let redis = RedisServer::start();
    let headers = format!(
        "[{}]",
        (0..14)
            .map(|i| format!("[\"Header{i}\",\"value-of-header-{i}-xx\"]"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let n = 1_000_000.to_string();
    let port = redis.port().to_string();
    let bench_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-P",
        "64",
        "-n",
        &n,
        "-q",
        "XADD",
        "bench",
        "MAXLEN",
        "~",
        "2000000",
        "*",
        "server",
        "replay",
        "name",
        "Newexten",
        "received_at",
        "1796130840.123456",
        "headers",
        &headers,
    ];
    let output = Command::new("redis-benchmark")
        .args(bench_args)
        .output()
        .expect("redis-benchmark (Debian's redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    // The last report: `...: 394477.31 requests per second, p50=...`.
    let floor: f64 = text
        .rsplit_once(" requests per second")
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    println!(
        "redis-benchmark {} ({} bytes of headers): {floor:.0} XADD/s",
        bench_args[..10].join(" "),
        headers.len()
    );
    let mut conn = redis.connect();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();

    // 2. The gateway against the replay server.
    let server = ReplayServer::start(ReplayConfig::new(events, total)).unwrap();
    let config = write_config(&[("replay", server.addr().port(), "on")], total * 2);
    let mut gateway = start(&ami, &config, &redis);
    let pid = gateway.child.id();
    let stream = "ami:events:replay";
    let mut first = None;
    loop {
        let len = xlen(&mut conn, stream);
        if len > 0 {
            first.get_or_insert_with(Instant::now);
            if last_name(&mut conn, stream).as_deref() == Some("ReplayDone") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = first.map_or(Duration::ZERO, |at| at.elapsed());
    let cpu = process_cpu(pid);
    let stored = xlen(&mut conn, stream) - 1; // the marker
    // The last dropped record comes within a second.
    let mut dropped = 0;
    for _ in 0..50 {
        dropped = dropped_in_status(&mut conn, "replay");
        if stored + dropped == total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "ami gateway {stored:>9} events into Redis in {:>5.2} s = {:>9.0} events/s ({:.0}% of \
         redis-benchmark); dropped {dropped} (reason redis; stored + dropped = {} of {total}); \
         CPU {:.2} µs per stored event (all threads)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        100.0 * stored as f64 / elapsed.as_secs_f64() / floor.max(1.0),
        stored + dropped,
        cpu.as_secs_f64() * 1e6 / stored.max(1) as f64,
    );
    assert_eq!(stored + dropped, total, "every event stored or counted");
    gateway.stop();
    server.stop();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();

    // 3. The real Asterisk: the flood with every class, and Ping round trips.
    let a = asterisk();
    let config = write_config(&[("pbx", a.port, "on")], 4 << 30);
    let gateway = start(&ami, &config, &redis);
    let mut conn = redis.connect();
    // Ready: a Ping answers.
    while ping(&mut conn).is_none() {}
    let idle: Vec<Duration> = (0..500).filter_map(|_| ping(&mut conn)).collect();
    report("Ping through Redis, idle", idle);
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            Flooder::new().flood(100_000);
            flooding.store(false, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let mut during = Vec::new();
    while flooding.load(Ordering::Relaxed) {
        if let Some(rtt) = ping(&mut conn) {
            during.push(rtt);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    flood.join().unwrap();
    let flood_time = started.elapsed();
    report("Ping through Redis, during the flood", during);
    let stream = "ami:events:pbx";
    while !has_flood_done(&mut conn, stream) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut seqs, frames) = flood_seqs(&mut conn, stream);
    let flood_entries = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    let dropped = dropped_in_status(&mut conn, "pbx");
    println!(
        "real Asterisk flood: {frames} frames in the stream ({flood_time:.1?} for the flood), \
         {flood_entries} Flood UserEvents, {} distinct, dropped {dropped}",
        seqs.len()
    );
    assert_eq!(seqs.len(), 100_000);
    assert_eq!(flood_entries, 100_000);
    assert_eq!(dropped, 0);
    drop(gateway);
}

/// A `[servers.KEY]` per (key, port, events) on 127.0.0.1, room for `maxlen` entries
/// per stream, a large budget.
fn write_config(servers: &[(&str, u16, &str)], maxlen: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ami-gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", servers[0].0));
    let mut text = String::new();
    for (key, port, events) in servers {
        text.push_str(&format!(
            "[servers.{key}]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"admin\"\n\
             secret = \"{}\"\nevents = \"{events}\"\n",
            asterisk_secret()
        ));
    }
    text.push_str(&format!(
        "[options]\nmemory_limit = {}\n[gateway]\nevents_maxlen = {maxlen}\nconsumer = \"bench\"\n",
        1u64 << 30
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// The sandbox's secret (also accepted by the replay server, which takes any).
fn asterisk_secret() -> String {
    asterisk().secret.clone()
}

/// A running `ami gateway`.
struct Gateway {
    child: Child,
}

impl Gateway {
    /// SIGTERM, and wait for the exit (once).
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start(ami: &str, config: &Path, redis: &RedisServer) -> Gateway {
    let mut child = Command::new(ami)
        .args(["gateway", "--config"])
        .arg(config)
        .env("AMI_GATEWAY_REDIS_URL", redis.url())
        .env("AMI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ami gateway");
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        if !text.is_empty() {
            eprint!("{text}");
        }
    });
    Gateway { child }
}

/// The `name` of the stream's last entry.
fn last_name(conn: &mut redis::Connection, stream: &str) -> Option<String> {
    let last: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(conn)
        .ok()?;
    entries(&last)
        .first()
        .and_then(|(_, e)| field(e, "name").map(str::to_owned))
}

/// The sum of `count` of the status stream's `dropped` records of `server`.
fn dropped_in_status(conn: &mut redis::Connection, server: &str) -> u64 {
    read_all(conn, "ami:status")
        .iter()
        .filter(|(_, e)| field(e, "type") == Some("dropped") && field(e, "server") == Some(server))
        .filter_map(|(_, e)| field(e, "count")?.parse::<u64>().ok())
        .sum()
}

/// Whether the flood's `FloodDone` is in `stream` (among its last entries).
fn has_flood_done(conn: &mut redis::Connection, stream: &str) -> bool {
    let last: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1000)
        .query(conn)
        .unwrap();
    entries(&last)
        .iter()
        .any(|(_, e)| field(e, "headers").is_some_and(|h| h.contains("\"FloodDone\"")))
}

/// The `Seq`s of the flood's UserEvents in `stream`, and the entries in all.
fn flood_seqs(conn: &mut redis::Connection, stream: &str) -> (Vec<u64>, usize) {
    let all = read_all(conn, stream);
    let seqs = all
        .iter()
        .filter_map(|(_, entry)| field(entry, "headers"))
        .filter(|headers| headers.contains("[\"UserEvent\",\"Flood\"]"))
        .filter_map(|headers| {
            let headers: serde_json::Value = serde_json::from_str(headers).ok()?;
            headers
                .as_array()?
                .iter()
                .find(|kv| kv[0] == "Seq")
                .and_then(|kv| kv[1].as_str()?.parse::<u64>().ok())
        })
        .collect();
    (seqs, all.len())
}

/// One `Ping` through Redis: its round trip (the request's `XADD` to its completion
/// read from a reply stream of its own), or `None` when it failed.
fn ping(conn: &mut redis::Connection) -> Option<Duration> {
    let id = format!("p{}", rand_bits());
    let reply_to = format!("bench:reply:{id}");
    let started = Instant::now();
    let _: String = redis::cmd("XADD")
        .arg("ami:actions")
        .arg("*")
        .arg("request_id")
        .arg(&id)
        .arg("reply_to")
        .arg(&reply_to)
        .arg("action")
        .arg("Ping")
        .query(conn)
        .ok()?;
    let answer: Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(5000)
        .arg("STREAMS")
        .arg(&reply_to)
        .arg("0-0")
        .query(conn)
        .ok()?;
    let rtt = started.elapsed();
    let _: Result<(), _> = redis::cmd("DEL").arg(&reply_to).query::<()>(conn);
    let Value::Array(streams) = &answer else {
        return None;
    };
    let Some(Value::Array(stream)) = streams.first() else {
        return None;
    };
    let (_, entry) = entries(stream.get(1)?).into_iter().next()?;
    (field(&entry, "status") == Some("ok")).then_some(rtt)
}

/// Bits that differ between calls (the request ids must be unique).
fn rand_bits() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) ^ (u64::from(std::process::id()) << 40)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: {} round trips, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}
