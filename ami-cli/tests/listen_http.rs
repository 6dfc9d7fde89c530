//! `ami listen --http-addr` under hostile HTTP clients: hundreds of idle connections
//! (past the endpoint's cap), an endless request header and a client that reads
//! nothing, all at once, while a simulated Asterisk streams events. The event stream
//! is not delayed, `/metrics` keeps answering, and listen's memory stays put.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ami_sim::{Flood, SimConfig, TcpSim};

/// Idle connections opened against the endpoint (its cap is 512).
const IDLE: usize = 900;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `GET /metrics` on a fresh connection: how long the whole answer took.
fn scrape(port: u16) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.contains("ami_dropped_events_total")
        .then(|| started.elapsed())
}

#[test]
fn hostile_http_clients_neither_delay_events_nor_grow_listen() {
    let sim = TcpSim::start(SimConfig::new().with_flood(Some(Flood::new(2_000)))).unwrap();
    let dir = std::env::temp_dir().join(format!("ami-listen-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    std::fs::write(
        &config,
        format!(
            "[servers.sim]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"admin\"\nsecret = \"amp111\"\n",
            sim.addr().port()
        ),
    )
    .unwrap();
    let http = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
        .args(["listen", "--config"])
        .arg(&config)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .env("AMI_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();

    // The reader: the longest gap between two event lines while `watching`.
    let (events, longest_gap) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Duration::ZERO)),
    );
    let watching = Arc::new(AtomicBool::new(false));
    {
        let (events, longest_gap, watching) =
            (events.clone(), longest_gap.clone(), watching.clone());
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            let mut last = Instant::now();
            for line in stdout.lines().map_while(Result::ok) {
                if !line.starts_with("{\"type\":\"event\"") {
                    continue;
                }
                events.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if watching.load(Ordering::Relaxed) {
                    let mut gap = longest_gap.lock().unwrap();
                    *gap = (*gap).max(now - last);
                }
                last = now;
            }
        });
    }
    let started = Instant::now();
    while events.load(Ordering::Relaxed) < 2_000 || scrape(http).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no events or no endpoint"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let rss_before = rss_kib(pid);
    watching.store(true, Ordering::Relaxed);
    let events_before = events.load(Ordering::Relaxed);

    // The hostile clients, all at once.
    let idle: Vec<TcpStream> = (0..IDLE)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", http)).ok())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let endless = {
        let stop = stop.clone();
        thread::spawn(move || {
            // 64 MiB in all, over as many connections as the endpoint cuts.
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) && sent < 64 << 20 {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", http)) else {
                    continue;
                };
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
                let chunk = [b'a'; 16 * 1024];
                while !stop.load(Ordering::Relaxed) && sent < 64 << 20 {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
            }
            sent
        })
    };
    let mut silent = TcpStream::connect(("127.0.0.1", http)).unwrap();
    silent
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();

    // Three seconds of it: scrapes keep working meanwhile.
    let mut slowest = Duration::ZERO;
    let hostile = Instant::now();
    while hostile.elapsed() < Duration::from_secs(3) {
        let took = scrape(http).expect("/metrics answers under attack");
        slowest = slowest.max(took);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let header_bytes = endless.join().unwrap();
    let rss_after = rss_kib(pid);
    let during = events.load(Ordering::Relaxed) - events_before;
    let gap = *longest_gap.lock().unwrap();
    eprintln!(
        "{} idle connections, {header_bytes} header bytes, a silent reader: {during} events in \
         3 s, longest gap {gap:?}; slowest scrape {slowest:?}; listen RSS {rss_before} -> {rss_after} KiB",
        idle.len()
    );
    drop(idle);
    drop(silent);

    // 2,000 events/s from the simulator: they kept coming, none held up.
    assert!(during >= 4_000, "only {during} events in 3 s");
    assert!(gap < Duration::from_secs(1), "events held up for {gap:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a scrape took {slowest:?}"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "listen grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        header_bytes > 1 << 20,
        "the endless header was sent ({header_bytes} bytes)"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    sim.stop();
    let _ = std::fs::remove_dir_all(dir);
}
