//! A real Redis 7 (Debian's `redis-server`) for the gateway's tests: started on a
//! free loopback port with a data directory of its own, stopped when dropped.
//!
//! It keeps an append-only file (`appendonly yes`), so that a test can stop it and
//! start it again on the same port and find the streams as they were, as a
//! production Redis with persistence would. There is no skipping: when
//! `redis-server` is missing or does not start, the test fails (`scripts/test.sh`
//! installs it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process of the test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts Redis on a free port.
    ///
    /// # Panics
    /// When `redis-server` cannot be started or does not answer `PING` within 10 s.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(crate::asterisk::unique_id("ami-redis"));
        std::fs::create_dir_all(&dir).expect("redis data directory");
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.start_again();
        server
    }

    /// The URL to give the gateway.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it (`SHUTDOWN`, which writes the append-only file), waiting for the
    /// process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.command(&["SHUTDOWN"]);
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it (again) on the same port and data directory.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--save", "", "--daemonize", "no"])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); scripts/test.sh installs it")
            });
        self.child = Some(child);
        let started = Instant::now();
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer PING within 10 s; its log: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command (inline form) and returns the first line of the answer.
    fn command(&self, words: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(format!("{}\r\n", words.join(" ")).as_bytes())
            .ok()?;
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        Some(text.lines().next().unwrap_or_default().to_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
