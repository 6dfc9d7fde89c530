//! What the `ami` process tests share: a running `ami` subcommand with its stderr
//! collected and its HTTP endpoint at hand, and waiting for conditions.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A config file with one server `pbx` on the sandbox Asterisk (instance `a`), and
/// `more` lines in its table (e.g. `events = "call"`).
pub fn sandbox_config(more: &str) -> std::path::PathBuf {
    let a = ami_tests::asterisk::asterisk();
    let dir = std::env::temp_dir().join(ami_tests::asterisk::unique_id("ami-sandbox"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ami.toml");
    std::fs::write(
        &path,
        format!(
            "[servers.pbx]\nhost = \"{}\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\n{more}\n",
            a.host, a.port, a.secret
        ),
    )
    .unwrap();
    path
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` every 50 ms, failing after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of `field=N` over the log lines that contain `marker`.
pub fn log_sum(log: &str, marker: &str, field: &str) -> u64 {
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

/// Collects `child`'s stderr (taken from it) on a thread of its own: what it wrote so
/// far.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let log: Arc<Mutex<String>> = Arc::default();
    let mut stderr = child.stderr.take().expect("a piped stderr");
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
    log
}

/// `GET path` from the HTTP endpoint on `port` of 127.0.0.1: the body, or `None` while
/// it does not answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
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

/// An `ami` subcommand (`listen`, `gateway`) with `--http-addr` on a free port; its
/// stdout is piped (take it), its stderr collected.
pub struct Ami {
    pub child: Child,
    pub stdout: Option<ChildStdout>,
    log: Arc<Mutex<String>>,
    pub http_port: u16,
}

impl Ami {
    /// Starts `ami ARGS... --http-addr 127.0.0.1:PORT` with `env` added, at nice -10
    /// where allowed (through `nice(1)`, so that every thread of it has that priority).
    ///
    /// The tests against Asterisk check that `ami` reads a flood fast enough that
    /// Asterisk's 100 ms `writetimeout` never cuts its session. On a two-CPU machine with
    /// CPU-bound work beside the suite, `ami` could wait for a CPU longer than that (a CI
    /// run lost a gateway session that way), though nothing was wrong in it. Favoured,
    /// the test measures `ami`, not the scheduler: an `ami` that stops reading still
    /// loses the session. Without the privilege `nice` says so and runs `ami` as it is.
    pub fn start<I, S>(args: I, env: &[(&str, &str)]) -> Ami
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let http_port = free_port();
        let mut command = Command::new("nice");
        command
            .args(["-n", "-10", env!("CARGO_BIN_EXE_ami")])
            .args(args)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .env("AMI_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the ami binary");
        let log = collect_stderr(&mut child);
        let stdout = child.stdout.take();
        Ami {
            child,
            stdout,
            log,
            http_port,
        }
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `GET path` on the HTTP endpoint: the body, or `None` while it does not answer.
    pub fn get(&self, path: &str) -> Option<String> {
        http_get(self.http_port, path)
    }

    /// `/status` as JSON: per server key, its entry.
    pub fn status(&self) -> Option<BTreeMap<String, serde_json::Value>> {
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

    /// The sum of the samples of `metric` whose labels contain `labels` (every
    /// sample when empty).
    pub fn metric(&self, metric: &str, labels: &str) -> f64 {
        let text = self.get("/metrics").unwrap_or_default();
        text.lines()
            .filter(|line| {
                let rest = line.strip_prefix(metric).unwrap_or_default();
                (rest.starts_with('{') || rest.starts_with(' ')) && rest.contains(labels)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `metric` with `labels` is `value` (the endpoint's snapshot is
    /// renewed once a second), failing after 10 s.
    pub fn wait_metric(&self, metric: &str, labels: &str, value: f64) {
        let started = Instant::now();
        loop {
            let last = self.metric(metric, labels);
            if last == value {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{metric}{{{labels}}} is {last}, not {value}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum of every sample of `metric` (all servers and reasons).
    pub fn metric_sum(&self, metric: &str) -> f64 {
        self.metric(metric, "")
    }

    /// Waits until every server in `keys` is healthy in `/status`.
    pub fn wait_healthy(&self, keys: &[&str]) {
        wait_until(Duration::from_secs(30), "every server healthy", || {
            self.status().is_some_and(|status| {
                keys.iter()
                    .all(|k| status.get(*k).is_some_and(|s| s["healthy"] == true))
            })
        });
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGKILL.
    pub fn kill_hard(&self) {
        self.signal("-KILL");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; returns its code and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "ami did not exit within {limit:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ami {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`ChannelWatch`] saw of one channel.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `Newchannel` or `Hangup`.
    pub event: &'static str,
    /// The channel's `Uniqueid` and `Linkedid`.
    pub uniqueid: String,
    pub linkedid: String,
    /// When the watch read it.
    pub at: Instant,
}

/// A session of its own to the sandbox Asterisk (`call` events), on a thread of its
/// own, that notes every `Newchannel` and `Hangup`.
pub struct ChannelWatch {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ChannelWatch {
    /// Logs in and starts watching.
    pub fn start() -> ChannelWatch {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop, ready) = (seen.clone(), stop.clone(), ready.clone());
            thread::spawn(move || {
                let a = ami_tests::asterisk::asterisk();
                let mut driver = ami_mio::Driver::new().unwrap();
                let mut config = ami_proto::Config::new("watch", "admin", a.secret.clone());
                config.events = ami_proto::action::EventMask::Classes(vec!["call".into()]);
                let id = driver
                    .add_server(ami_mio::ServerSpec::new(config, a.endpoint()))
                    .unwrap();
                driver.connect(id).unwrap();
                driver.wait_ready(id, Duration::from_secs(15)).unwrap();
                driver.on_any_event(move |event| {
                    let name = match event.name() {
                        "Newchannel" => "Newchannel",
                        "Hangup" => "Hangup",
                        _ => return,
                    };
                    if let (Some(uniqueid), Some(linkedid)) =
                        (event.get("Uniqueid"), event.get("Linkedid"))
                    {
                        seen.lock().unwrap().push(Seen {
                            event: name,
                            uniqueid: uniqueid.to_owned(),
                            linkedid: linkedid.to_owned(),
                            at: event.received_at,
                        });
                    }
                });
                ready.store(true, Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) {
                    driver.tick_all(Duration::from_millis(20));
                }
            })
        };
        wait_until(Duration::from_secs(20), "the watch logged in", || {
            ready.load(Ordering::Relaxed)
        });
        ChannelWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `Newchannel`s seen of the channel `uniqueid`.
    pub fn count(&self, uniqueid: &str) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.event == "Newchannel" && s.uniqueid == uniqueid)
            .count() as u64
    }

    /// Everything seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ChannelWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
