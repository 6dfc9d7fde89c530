//! The README's custom-reactor program with `ami-proto` alone: the sans-IO
//! `Connection` driven over a blocking `std::net::TcpStream`, the socket and the clock
//! owned here. It logs in, sends a `Ping`, prints the answer, and logs off.
//!
//! ```sh
//! AMI_ADDR=127.0.0.1:5038 AMI_USERNAME=admin AMI_SECRET=amp111 \
//!     cargo run --release -p ami-proto --example sans_io
//! ```

// The example is the I/O side: it owns the clock the sans-IO core is handed.
#![allow(clippy::disallowed_methods)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ami_proto::action::{EventMask, Ping};
use ami_proto::{Config, Connection, Output, State};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::new(
        "pbx",
        env("AMI_USERNAME", "admin"),
        env("AMI_SECRET", "amp111"),
    );
    config.events = EventMask::Off;
    let mut socket = TcpStream::connect(env("AMI_ADDR", "127.0.0.1:5038"))?;
    let mut conn = Connection::new(config, 1, 1, Instant::now());
    conn.handle_connected(Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    let mut pinged = false;
    loop {
        // 1. Write what the connection wants sent.
        while !conn.poll_transmit().is_empty() {
            let n = socket.write(conn.poll_transmit())?;
            conn.advance_transmit(n);
        }
        // 2. Take its outputs, in wire order.
        while let Some(output) = conn.poll() {
            match output {
                Output::StateChanged { to, .. } => {
                    println!("state: {to:?}");
                    if to == State::Healthy && !pinged {
                        pinged = true;
                        conn.send(Instant::now(), Ping)?;
                    }
                }
                Output::Completed(done) => {
                    let pong = done
                        .result
                        .as_ref()
                        .ok()
                        .and_then(|r| r.response.get("Ping"));
                    println!("ping: {}", pong.unwrap_or("no answer"));
                    conn.close(Instant::now()); // Logoff
                }
                Output::Closed(reason) => {
                    println!("closed: {reason}");
                    return Ok(());
                }
                _ => {}
            }
        }
        // 3. Read until the next deadline, then let the connection run its timers.
        let wait = conn.poll_timeout().map_or(Duration::from_secs(1), |at| {
            at.saturating_duration_since(Instant::now())
        });
        socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        match socket.read(&mut buf) {
            Ok(0) => conn.handle_eof(Instant::now()),
            Ok(n) => conn.handle_data(Instant::now(), &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => conn.handle_transport_error(Instant::now(), &e),
        }
        if conn.poll_timeout().is_some_and(|at| at <= Instant::now()) {
            conn.handle_timeout(Instant::now());
        }
    }
}
