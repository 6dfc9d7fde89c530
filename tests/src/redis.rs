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

/// One stream entry: its ID and its fields in order.
pub type Entry = (String, Vec<(String, String)>);

impl RedisServer {
    /// A client connection (reads may block 40 s: longer than any `BLOCK` a test
    /// sends).
    ///
    /// # Panics
    /// When it cannot connect within 5 s.
    pub fn connect(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("a redis URL");
        let connection = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("a connection to the test's redis");
        connection
            .set_read_timeout(Some(Duration::from_secs(40)))
            .expect("a read timeout");
        connection
    }
}

/// A reply as text (a bulk or simple string, an integer; anything else in debug form).
pub fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// A flat `[k, v, k, v, ...]` list (or a map) as pairs.
pub fn pairs(value: &redis::Value) -> Vec<(String, String)> {
    match value {
        redis::Value::Array(kv) => kv
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (text(&c[0]), text(&c[1])))
            .collect(),
        redis::Value::Map(kv) => kv.iter().map(|(k, v)| (text(k), text(v))).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XRANGE`-shaped reply (`[[id, [k, v, ...]], ...]`).
pub fn entries(value: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            redis::Value::Array(parts) if parts.len() == 2 => {
                Some((text(&parts[0]), pairs(&parts[1])))
            }
            _ => None,
        })
        .collect()
}

/// Every entry of `stream`, oldest first (read 20,000 at a time).
///
/// # Panics
/// When Redis fails.
pub fn read_all(connection: &mut redis::Connection, stream: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(20_000)
            .query(connection)
            .expect("XRANGE");
        let batch = entries(&reply);
        let Some((last, _)) = batch.last() else {
            return out;
        };
        start = format!("({last}");
        out.extend(batch);
    }
}

/// The value of `key` among an entry's fields.
pub fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// `XLEN stream` (0 while Redis does not answer).
pub fn xlen(connection: &mut redis::Connection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query(connection)
        .unwrap_or(0)
}
