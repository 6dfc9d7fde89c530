//! The worker examples against `ami gateway`, a real Redis 7 of the test's own and
//! the sandbox Asterisk 22 (instance `a`): `examples/php/worker.php` (php-cli with
//! php-redis) and `examples/python/worker.py` (redis-py, in the venv of
//! `scripts/test.sh`, or `$AMI_PYTHON`) each
//!
//! - read events of `ami:events:pbx` in a consumer group of their own, acking them;
//! - send an async `Originate` of `Local/answer@test` through `ami:actions` and get
//!   its completion on their reply stream: status ok, `OriginateResponse` with
//!   Response Success and Reason 4;
//! - exit 0.
//!
//! Both run at once, beside each other, on one gateway. No skipping: a missing PHP,
//! php-redis or Python venv fails the test (`scripts/test.sh` installs them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ami_tests::asterisk::{asterisk, unique_id};
use ami_tests::redis::{RedisServer, field, pairs, read_all};
use redis::Value;

/// The server key of the gateway's config.
const SERVER: &str = "pbx";

/// How long a worker may run (its own bounds: 30 s for the completion, 10 s of
/// events), generous for a busy machine.
const WORKER_LIMIT: Duration = Duration::from_secs(120);

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ami-cli sits in the workspace root")
        .to_path_buf()
}

/// A config with one server, `pbx`, on the sandbox Asterisk. Its events are the
/// `call` class only (the channels' events and `OriginateResponse`): not the floods
/// of UserEvent, Newexten and VarSet other tests may start on the same Asterisk.
fn config() -> PathBuf {
    let a = asterisk();
    let dir = std::env::temp_dir().join(unique_id("ami-gateway-examples"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ami.toml");
    let text = format!(
        "[servers.{SERVER}]\nhost = \"{}\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\n\
         events = \"call\"\n\n[gateway]\nconsumer = \"{}\"\n",
        a.host,
        a.port,
        a.secret,
        unique_id("gw-examples")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Collects everything `from` yields, in a thread.
fn collect(mut from: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text: Arc<Mutex<String>> = Arc::default();
    let sink = text.clone();
    let thread = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, thread)
}

/// The `ami gateway` process; its stderr (the log) is collected; killed when dropped.
struct Gateway {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    fn start(config: &Path, redis: &RedisServer) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
            .arg("gateway")
            .arg("--config")
            .arg(config)
            .env("AMI_GATEWAY_REDIS_URL", redis.url())
            .env("AMI_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ami binary");
        let (log, _) = collect(child.stderr.take().unwrap());
        Gateway { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Fails when the gateway has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("ami gateway exited ({status}); its log:\n{}", self.log());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of every entry of `stream`.
fn entries(conn: &mut redis::Connection, stream: &str) -> Vec<Vec<(String, String)>> {
    read_all(conn, stream)
        .into_iter()
        .map(|(_, fields)| fields)
        .collect()
}

/// The consumer groups of `stream`: each one's fields (`name`, `pending`, ...).
fn groups(conn: &mut redis::Connection, stream: &str) -> Vec<Vec<(String, String)>> {
    let answer: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query(conn)
        .unwrap_or(Value::Nil);
    match answer {
        Value::Array(groups) => groups.iter().map(pairs).collect(),
        _ => Vec::new(),
    }
}

/// Polls `condition` every 50 ms, failing after `limit` with `context()`.
fn wait_until(
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Fails unless `program args` runs and exits 0.
fn check_tool(program: &str, args: &[&str], what: &str) {
    let output = Command::new(program).args(args).output();
    let ok = output.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{what} is required for this test ({program} {}: {}); scripts/test.sh installs it",
        args.join(" "),
        match &output {
            Ok(o) => format!(
                "{}, {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => e.to_string(),
        }
    );
}

/// PHP with the redis extension.
fn php() -> String {
    check_tool(
        "php",
        &["-r", "exit(extension_loaded('redis') ? 0 : 1);"],
        "php-cli with the php-redis extension",
    );
    "php".to_owned()
}

/// The Python with redis-py: `$AMI_PYTHON`, else the venv `target/venv` of
/// scripts/test.sh.
fn python() -> String {
    let python = std::env::var("AMI_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| repo().join("target/venv/bin/python").display().to_string());
    check_tool(
        &python,
        &["-c", "import redis"],
        "a Python with redis-py (AMI_PYTHON, or the venv target/venv)",
    );
    python
}

/// A worker example, running; stdout and stderr collected.
struct Worker {
    name: &'static str,
    child: Child,
    stdout: (Arc<Mutex<String>>, JoinHandle<()>),
    stderr: (Arc<Mutex<String>>, JoinHandle<()>),
}

/// How a worker ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Worker {
    fn start(name: &'static str, program: &str, script: &str, redis: &RedisServer) -> Worker {
        let mut child = Command::new(program)
            .arg(repo().join(script))
            .current_dir(repo())
            .env("REDIS_URL", redis.url())
            .env("AMI_SERVER", SERVER)
            .env("ORIGINATE_CHANNEL", "Local/answer@test")
            .env("WORKER_ID", unique_id(name))
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} {script}: {e}"));
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Worker {
            name,
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the exit (killing it after `limit`).
    fn wait(mut self, started: Instant, limit: Duration, gateway: &Gateway) -> Ran {
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the {} worker did not exit within {limit:?}\n--- stdout:\n{}\n--- stderr:\n{}\n--- gateway log:\n{}",
                    self.name,
                    self.stdout.0.lock().unwrap(),
                    self.stderr.0.lock().unwrap(),
                    gateway.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let _ = self.stdout.1.join();
        let _ = self.stderr.1.join();
        let stdout = self.stdout.0.lock().unwrap().clone();
        let stderr = self.stderr.0.lock().unwrap().clone();
        Ran {
            code: status.code(),
            stdout,
            stderr,
            took,
        }
    }
}

#[test]
fn the_php_and_python_workers_originate_and_read_events_through_the_gateway() {
    let php = php();
    let python = python();
    let redis = RedisServer::start();
    let mut gateway = Gateway::start(&config(), &redis);
    let mut conn = redis.connect();

    // Ready: the session is up (a health record `to=healthy` on the status stream)
    // and the requests reader has made its group on the action stream.
    let log = gateway.log.clone();
    let started = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the gateway healthy and reading ami:actions",
        || {
            gateway.assert_running();
            let healthy = entries(&mut conn, "ami:status").iter().any(|e| {
                field(e, "type") == Some("health")
                    && field(e, "server") == Some(SERVER)
                    && field(e, "to") == Some("healthy")
            });
            healthy
                && groups(&mut conn, "ami:actions")
                    .iter()
                    .any(|g| field(g, "name") == Some("ami-gateway"))
        },
        || format!("gateway log:\n{}", log.lock().unwrap()),
    );
    eprintln!("gateway ready after {:?}", started.elapsed());

    let started = Instant::now();
    let workers = [
        Worker::start("php", &php, "examples/php/worker.php", &redis),
        Worker::start("python", &python, "examples/python/worker.py", &redis),
    ];
    let names = workers.each_ref().map(|w| w.name);
    let runs = workers.map(|w| w.wait(started, WORKER_LIMIT, &gateway));
    gateway.assert_running();

    for (name, ran) in names.iter().zip(&runs) {
        // Its output without the event lines (there may be hundreds).
        let summary: String = ran
            .stdout
            .lines()
            .filter(|l| !l.starts_with("event: "))
            .map(|l| format!("{l}\n"))
            .collect();
        eprintln!(
            "{name} worker: exit {:?} after {:?}\n--- stdout (event lines left out):\n{summary}--- stderr:\n{}",
            ran.code, ran.took, ran.stderr
        );
        let context = || {
            format!(
                "{name} worker, exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}\n--- gateway log:\n{}",
                ran.code,
                ran.stdout,
                ran.stderr,
                gateway.log()
            )
        };
        assert_eq!(ran.code, Some(0), "{}", context());
        let completion = ran
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("completion: "))
            .unwrap_or_else(|| panic!("no completion line; {}", context()));
        let completion: serde_json::Value = serde_json::from_str(completion)
            .unwrap_or_else(|e| panic!("completion is not JSON ({e}); {}", context()));
        assert_eq!(completion["status"], "ok", "{}", context());
        assert_eq!(completion["server"], SERVER, "{}", context());
        assert!(completion["originate_response"].is_array(), "{}", context());
        assert!(
            ran.stdout
                .contains("OriginateResponse: Response=Success Reason=4"),
            "{}",
            context()
        );
        assert!(
            ran.stdout.lines().any(|l| l.starts_with("event: ")),
            "no event read; {}",
            context()
        );
        assert!(
            ran.stdout.contains("ok: the call was answered"),
            "{}",
            context()
        );
    }

    // Each worker's group got the events and acknowledged every one it read.
    let events = format!("ami:events:{SERVER}");
    let event_groups = groups(&mut conn, &events);
    for group in ["php-worker", "py-worker"] {
        let info = event_groups
            .iter()
            .find(|g| field(g, "name") == Some(group))
            .unwrap_or_else(|| panic!("no group {group} on {events}: {event_groups:?}"));
        assert_eq!(field(info, "pending"), Some("0"), "{group}: {info:?}");
    }
    // The gateway acknowledged both requests (their completions are in Redis).
    let actions = groups(&mut conn, "ami:actions");
    let info = actions
        .iter()
        .find(|g| field(g, "name") == Some("ami-gateway"))
        .unwrap();
    assert_eq!(field(info, "pending"), Some("0"), "{info:?}");
    drop(gateway);
}
