//! Client CPU per frame against the real Asterisk flood: a raw `TcpStream` reader (the
//! floor: it logs in, then only counts `\r\n\r\n`), one `ami-mio` connection and one
//! `ami-tokio` connection, in turns, each logged in with every event class while a
//! dialplan loop raises the same number of `UserEvent`s.
//!
//! Each client runs on a thread of its own, and its CPU is that thread's (user +
//! system, `/proc/thread-self/schedstat`-free `CLOCK_THREAD_CPUTIME_ID`) from the
//! flood's start to its `FloodDone` marker. The flood is started from another session
//! (`Flooder`, which takes `user` events only), so the measured client does nothing
//! but read. Asterisk writes each event on its own, so every client makes many small
//! reads; the kernel's part of that is the same for all three.
//!
//! Run with the sandbox Asterisk up (`set -a; eval "$(bash scripts/asterisk.sh start)";
//! set +a`):
//! `cargo run --release -p ami-tests --example asterisk_cpu -- [USEREVENTS] [ROUNDS] [CLIENTS]`
//! (defaults: 100,000, 2, and `raw,mio,tokio`; the ratios need `raw`).

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ami_mio::Driver;
use ami_tests::asterisk::{Flooder, asterisk, config, connect_ready, spec, thread_cpu_time};
use ami_tokio::{Client, ClientSpec, Tokio};
use futures_util::StreamExt;

/// What one client measured.
struct Run {
    frames: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Run {
    fn print(&self, name: &str, floor: Option<&Run>) {
        let per_frame = self.per_frame();
        let against = floor.map_or(String::new(), |floor| {
            format!(" = {:.2}x the raw reader", per_frame / floor.per_frame())
        });
        println!(
            "{name:<10} {:>7} frames in {:>5.2} s; CPU {:>5} ms = {per_frame:.2} µs per frame{against}",
            self.frames,
            self.elapsed.as_secs_f64(),
            self.cpu.as_millis(),
        );
    }

    fn per_frame(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.frames.max(1) as f64
    }
}

/// Runs `client` on a thread of its own: it logs in, then calls `start` (which starts
/// the flood) and reads until the flood's marker.
fn measured(count: u64, client: impl FnOnce(&dyn Fn()) -> Run + Send + 'static) -> Run {
    let (go, wait) = mpsc::channel::<()>();
    let (done, finished) = mpsc::channel::<()>();
    let flooder = thread::spawn(move || {
        let mut flooder = Flooder::new();
        wait.recv().expect("the client's go");
        flooder.flood(count);
        let _ = finished.recv();
    });
    let run = thread::spawn(move || client(&|| go.send(()).expect("the flooder")))
        .join()
        .expect("the client");
    let _ = done.send(());
    flooder.join().expect("the flooder");
    run
}

/// The floor: a socket, a login written by hand, then a count of blank lines.
fn raw(start: &dyn Fn()) -> Run {
    let env = asterisk();
    let mut socket = TcpStream::connect((env.host.as_str(), env.port)).expect("connect");
    write!(
        socket,
        "Action: Login\r\nUsername: admin\r\nSecret: {}\r\nEvents: on\r\n\r\n",
        env.secret
    )
    .expect("login");
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = Vec::new();
    while memchr::memmem::find(&seen, b"Response: Success\r\n").is_none() {
        let n = socket.read(&mut buf).expect("read");
        assert!(n > 0, "Asterisk closed the login");
        seen.extend_from_slice(&buf[..n]);
        assert!(
            memchr::memmem::find(&seen, b"Response: Error").is_none(),
            "login refused"
        );
    }
    let marker = b"UserEvent: FloodDone\r\n";
    let blank = memchr::memmem::Finder::new(b"\r\n\r\n");
    let cpu = thread_cpu_time().unwrap_or_default();
    let started = Instant::now();
    start();
    // The last bytes of the previous read, so that a blank line or the marker split
    // across two reads is found once.
    let mut carry: Vec<u8> = Vec::with_capacity(buf.len() + marker.len());
    let mut frames = 0u64;
    loop {
        let n = socket.read(&mut buf).expect("read");
        assert!(n > 0, "Asterisk closed the session");
        let keep = carry.len();
        carry.extend_from_slice(&buf[..n]);
        // Blank lines ending in the new bytes only (each ends 4 bytes after it starts).
        frames += blank
            .find_iter(&carry[keep.saturating_sub(3)..])
            .filter(|&at| at + keep.saturating_sub(3) + 4 > keep)
            .count() as u64;
        if memchr::memmem::find(&carry[keep.saturating_sub(marker.len() - 1)..], marker).is_some() {
            break;
        }
        let tail = carry.len().saturating_sub(marker.len() - 1);
        carry.drain(..tail);
    }
    let run = Run {
        frames,
        elapsed: started.elapsed(),
        cpu: thread_cpu_time().unwrap_or_default() - cpu,
    };
    let _ = socket.write_all(b"Action: Logoff\r\n\r\n");
    run
}

/// One `ami-mio` connection counting every event in a listener (which looks at the
/// headers of `UserEvent`s only, for the marker, as the raw reader's search does not
/// check UTF-8 either).
fn mio(start: &dyn Fn()) -> Run {
    let mut driver = Driver::new().expect("a driver");
    let id = connect_ready(&mut driver, spec("admin"));
    let frames = Rc::new(Cell::new(0u64));
    let done = Rc::new(Cell::new(false));
    let (counter, finished) = (frames.clone(), done.clone());
    driver.on_any_event(move |event| {
        counter.set(counter.get() + 1);
        if event.name() == "UserEvent" && event.get("UserEvent") == Some("FloodDone") {
            finished.set(true);
        }
    });
    let cpu = thread_cpu_time().unwrap_or_default();
    let started = Instant::now();
    start();
    while !done.get() {
        driver.tick_all(Duration::from_millis(20));
    }
    let run = Run {
        frames: frames.get(),
        elapsed: started.elapsed(),
        cpu: thread_cpu_time().unwrap_or_default() - cpu,
    };
    assert_eq!(
        driver.metrics(id).dropped_events_total,
        0,
        "mio dropped events"
    );
    driver.shutdown(Duration::from_secs(5));
    run
}

/// One `ami-tokio` connection on a current-thread runtime, read by a consumer task.
fn tokio(start: &dyn Fn()) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let env = asterisk();
        let addr = format!("{}:{}", env.host, env.port)
            .parse()
            .expect("the sandbox's address");
        let client = Client::spawn(Tokio, ClientSpec::new(config("admin"), addr));
        let mut stream = client.all_events();
        client
            .wait_ready(Duration::from_secs(15))
            .await
            .expect("login");
        let cpu = thread_cpu_time().unwrap_or_default();
        let started = Instant::now();
        start();
        let consumer = tokio::spawn(async move {
            let mut frames = 0u64;
            while let Some(event) = stream.next().await {
                frames += 1;
                if event.name() == "UserEvent" && event.get("UserEvent") == Some("FloodDone") {
                    break;
                }
            }
            (frames, stream.dropped())
        });
        let (frames, dropped) = consumer.await.expect("the consumer");
        let run = Run {
            frames,
            elapsed: started.elapsed(),
            cpu: thread_cpu_time().unwrap_or_default() - cpu,
        };
        assert_eq!(
            dropped + client.metrics().dropped_events_total,
            0,
            "tokio dropped events"
        );
        client.close().await;
        run
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args
        .next()
        .map(|n| n.replace(['_', ','], "").parse().expect("USEREVENTS"))
        .unwrap_or(100_000);
    let rounds: u32 = args.next().map_or(2, |n| n.parse().expect("ROUNDS"));
    let clients = args.next().unwrap_or_else(|| "raw,mio,tokio".to_owned());
    let clients: Vec<&str> = clients.split(',').collect();
    for round in 1..=rounds {
        println!("round {round}: {count} UserEvents, every event class");
        let floor = clients.contains(&"raw").then(|| measured(count, raw));
        if let Some(floor) = &floor {
            floor.print("raw reader", None);
        }
        if clients.contains(&"mio") {
            measured(count, mio).print("ami-mio", floor.as_ref());
        }
        if clients.contains(&"tokio") {
            measured(count, tokio).print("ami-tokio", floor.as_ref());
        }
    }
}
