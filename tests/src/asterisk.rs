//! A real Asterisk 22 for the conformance tests in `tests/tests/asterisk.rs`.
//!
//! [`asterisk`] finds instance `a` of `scripts/asterisk.sh` once per process: from the
//! environment when `AMI_ASTERISK_PORT` is set (`set -a; eval "$(scripts/asterisk.sh
//! start)"; set +a`), otherwise by running `bash scripts/asterisk.sh start a` itself
//! (idempotent: it reuses a running instance) and parsing the `KEY=VALUE` lines it
//! prints. When Asterisk cannot be started it **panics** with the script's stderr: the
//! tests fail, they never skip.
//!
//! The helpers build `ami-mio` connections to it: [`config`] (a [`Config`] with a
//! server key unique in the process), [`spec`], [`driver_with`] (a driver with one
//! connected, logged-in server) and [`connect_ready`] (one more server on a driver).
//! [`unique_id`] makes channel IDs and variable names that no other test (or process)
//! uses, and [`thread_cpu_time`] and [`thread_sched`] read the calling thread's CPU
//! time and run-queue wait from `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ami_mio::{Driver, Endpoint, ServerId, ServerSpec, WaitError};
use ami_proto::Config;
use ami_proto::action::{EventMask, Originate};

/// How long [`driver_with`] and [`connect_ready`] wait for a login.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the test Asterisk listens and how to log in (instance `a` of
/// `scripts/asterisk.sh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsteriskEnv {
    /// Host of both listeners (`127.0.0.1`).
    pub host: String,
    /// Plain AMI port.
    pub port: u16,
    /// AMI-over-TLS port.
    pub tls_port: u16,
    /// PEM file of the CA that signed the server certificate (for
    /// `IP:127.0.0.1` and `DNS:localhost`).
    pub tls_ca: PathBuf,
    /// Secret of every AMI user (`admin`, `nocall`, `slow`).
    pub secret: String,
    /// Asterisk's version, e.g. `22.10.1` (empty when unknown).
    pub version: String,
    /// The banner's version, e.g. `11.0.0` (empty when unknown).
    pub ami_version: String,
}

impl AsteriskEnv {
    /// Builds the environment from `KEY=VALUE` pairs (`AMI_ASTERISK_PORT`, ...).
    /// Returns a description of what is missing or malformed on failure.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let port = |key: &str| -> Result<u16, String> {
            let value = get(key).ok_or_else(|| format!("{key} is not set"))?;
            value
                .parse()
                .map_err(|_| format!("{key}={value:?} is not a port"))
        };
        Ok(AsteriskEnv {
            host: get("AMI_ASTERISK_HOST")
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: port("AMI_ASTERISK_PORT")?,
            tls_port: port("AMI_ASTERISK_TLS_PORT")?,
            tls_ca: PathBuf::from(
                get("AMI_ASTERISK_TLS_CA").ok_or("AMI_ASTERISK_TLS_CA is not set")?,
            ),
            secret: get("AMI_ASTERISK_SECRET")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "amp111".to_owned()),
            version: get("AMI_ASTERISK_VERSION").unwrap_or_default(),
            ami_version: get("AMI_ASTERISK_AMI_VERSION").unwrap_or_default(),
        })
    }

    /// The plain AMI endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.host.clone(), self.port)
    }

    /// The AMI-over-TLS endpoint.
    pub fn tls_endpoint(&self) -> Endpoint {
        Endpoint::new(self.host.clone(), self.tls_port)
    }
}

/// The test Asterisk (instance `a`), found or started once per process.
///
/// # Panics
/// When `AMI_ASTERISK_PORT` is set but the other variables are unusable, or when
/// `scripts/asterisk.sh start a` fails (the panic message holds its stderr).
pub fn asterisk() -> &'static AsteriskEnv {
    static ENV: OnceLock<AsteriskEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        if std::env::var_os("AMI_ASTERISK_PORT").is_some() {
            AsteriskEnv::from_vars(|key| std::env::var(key).ok())
                .unwrap_or_else(|e| panic!("bad AMI_ASTERISK_* environment: {e}"))
        } else {
            start_with_script()
        }
    })
}

/// Runs `bash <repo>/scripts/asterisk.sh start a` and parses its stdout.
fn start_with_script() -> AsteriskEnv {
    script_start("a", None)
}

/// Runs `scripts/asterisk.sh start NAME` (on `ports` = (AMI, TLS) when given) and
/// parses the instance's environment from its stdout. Panics with the script's stderr
/// when it fails.
fn script_start(name: &str, ports: Option<(u16, u16)>) -> AsteriskEnv {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/asterisk.sh");
    let mut command = Command::new("bash");
    command.arg(&script).args(["start", name]);
    if let Some((port, tls_port)) = ports {
        command.env("AMI_ASTERISK_PORTS", format!("{port} {tls_port}"));
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        panic!(
            "{} start {name} failed ({}); Asterisk is required for these tests.\n--- stderr:\n{stderr}",
            script.display(),
            output.status
        );
    }
    let vars = parse_env_lines(&stdout);
    // Every instance's variables carry its name: AMI_ASTERISK_<NAME>_PORT, ...
    let prefix = format!("AMI_ASTERISK_{}_", name.to_ascii_uppercase());
    AsteriskEnv::from_vars(|key| {
        let named = key.replacen("AMI_ASTERISK_", &prefix, 1);
        vars.get(&named).cloned()
    })
    .unwrap_or_else(|e| {
        panic!(
            "{} start {name} printed no usable environment ({e}).\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            script.display()
        )
    })
}

/// Runs `scripts/asterisk.sh stop NAME`; panics if it fails.
fn script_stop(name: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/asterisk.sh");
    let output = Command::new("bash")
        .arg(&script)
        .args(["stop", name])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} stop {name} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Another Asterisk instance of `scripts/asterisk.sh` (e.g. `b`), started by this
/// process and stopped when dropped, that a test may stop and start again on the same
/// ports (as a restarted production Asterisk would be).
#[derive(Debug)]
pub struct Instance {
    name: String,
    env: AsteriskEnv,
}

impl Instance {
    /// Starts instance `name` (or takes the running one).
    ///
    /// # Panics
    /// When the script fails: the tests need a real Asterisk.
    pub fn start(name: &str) -> Instance {
        Instance {
            name: name.to_owned(),
            env: script_start(name, None),
        }
    }

    /// Where it listens and how to log in.
    pub fn env(&self) -> &AsteriskEnv {
        &self.env
    }

    /// Stops Asterisk (its clients see the connection drop and connects refused).
    pub fn stop(&self) {
        script_stop(&self.name);
    }

    /// Starts it again on the same ports.
    pub fn start_again(&mut self) {
        self.env = script_start(&self.name, Some((self.env.port, self.env.tls_port)));
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/asterisk.sh");
        let _ = Command::new("bash")
            .arg(&script)
            .args(["stop", &self.name])
            .output();
    }
}

/// Parses the `KEY=VALUE` lines of `asterisk.sh` (values quoted by bash's `%q`).
pub fn parse_env_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|(key, value)| (key.to_owned(), unquote(value.trim_end())))
        .collect()
}

/// Undoes bash's `printf %q` for the simple cases it produces here: `''`, `'...'` and
/// backslash escapes.
fn unquote(value: &str) -> String {
    if let Some(inner) = value
        .strip_prefix('\'')
        .and_then(|rest| rest.strip_suffix('\''))
    {
        return inner.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A number unique in this process, for keys and IDs.
fn next_serial() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A name no other test or process uses: `<prefix>-<pid>-<serial>-<time>` (ASCII
/// letters, digits, `-` and `_` only; usable as an Asterisk channel ID or, with a
/// prefix of letters and `_`, as a variable name once `-` is replaced).
pub fn unique_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        next_serial()
    )
}

/// A [`Config`] for `user` with the library's defaults, the test secret, and a server
/// key unique in this process (`<user>-<n>`).
pub fn config(user: &str) -> Config {
    let env = asterisk();
    Config::new(
        format!("{user}-{}", next_serial()),
        user,
        env.secret.clone(),
    )
}

/// A plain-TCP [`ServerSpec`] for `user` (see [`config`]).
pub fn spec(user: &str) -> ServerSpec {
    ServerSpec::new(config(user), asterisk().endpoint())
}

/// Adds `spec` to `driver`, connects and waits for the login.
///
/// # Panics
/// When the server cannot be added or the login does not succeed in
/// [`READY_TIMEOUT`].
pub fn connect_ready(driver: &mut Driver, spec: ServerSpec) -> ServerId {
    let key = spec.config.server_key.clone();
    let user = spec.config.username.clone();
    let id = driver
        .add_server(spec)
        .unwrap_or_else(|e| panic!("add_server {key}: {e}"));
    driver
        .connect(id)
        .unwrap_or_else(|e| panic!("connect {key}: {e}"));
    if let Err(error) = driver.wait_ready(id, READY_TIMEOUT) {
        panic!(
            "login of {user} ({key}) to Asterisk at {}:{} failed: {error}",
            asterisk().host,
            asterisk().port
        );
    }
    id
}

/// A new driver (default options) with one server for `user`, connected and logged
/// in. `tweak` may change the spec first (config, endpoint, TLS).
///
/// # Panics
/// As [`connect_ready`].
pub fn driver_with(user: &str, tweak: impl FnOnce(&mut ServerSpec)) -> (Driver, ServerId) {
    let mut driver = Driver::new().expect("create driver");
    let mut spec = spec(user);
    tweak(&mut spec);
    let id = connect_ready(&mut driver, spec);
    (driver, id)
}

/// Like [`driver_with`] without a tweak.
pub fn driver(user: &str) -> (Driver, ServerId) {
    driver_with(user, |_| {})
}

/// Adds `spec` to a new driver, connects, and returns what [`Driver::wait_ready`]
/// said (for logins expected to fail).
pub fn try_driver(spec: ServerSpec) -> (Driver, ServerId, Result<(), WaitError>) {
    let mut driver = Driver::new().expect("create driver");
    let id = driver.add_server(spec).expect("add_server");
    driver.connect(id).expect("connect");
    let result = driver.wait_ready(id, READY_TIMEOUT);
    (driver, id, result)
}

/// Scheduler figures of the calling thread, from `/proc/thread-self/schedstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedStat {
    /// Time spent on a CPU (user and system).
    pub cpu: Duration,
    /// Time spent runnable but waiting for a CPU: time the machine, not the code,
    /// took from the thread.
    pub run_queue_wait: Duration,
}

/// The calling thread's [`SchedStat`]; `None` where `/proc/thread-self/schedstat` is
/// missing (off Linux). The kernel updates it at scheduling events, so it can lag by a
/// scheduler tick (a few ms).
pub fn thread_sched() -> Option<SchedStat> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let cpu = fields.next()??;
    let wait = fields.next()??;
    Some(SchedStat {
        cpu: Duration::from_nanos(cpu),
        run_queue_wait: Duration::from_nanos(wait),
    })
}

/// CPU time (user + system) the calling thread has used so far: from
/// [`thread_sched`], or else `utime + stime` of `/proc/thread-self/stat` (clock ticks
/// of 10 ms). `None` off Linux.
pub fn thread_cpu_time() -> Option<Duration> {
    if let Some(sched) = thread_sched() {
        return Some(sched.cpu);
    }
    let text = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the `(comm)` one; utime and stime are fields 14 and 15 (1-based).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_output() {
        let text = "AMI_ASTERISK_HOST=127.0.0.1\nAMI_ASTERISK_PORT=5038\n\
                    AMI_ASTERISK_TLS_PORT=5039\nAMI_ASTERISK_TLS_CA=/a\\ b/ca.pem\n\
                    AMI_ASTERISK_FULL_VERSION=''\nasterisk.sh: progress\n";
        let vars = parse_env_lines(text);
        assert_eq!(vars["AMI_ASTERISK_TLS_CA"], "/a b/ca.pem");
        assert_eq!(vars["AMI_ASTERISK_FULL_VERSION"], "");
        let env = AsteriskEnv::from_vars(|k| vars.get(k).cloned()).unwrap();
        assert_eq!((env.port, env.tls_port), (5038, 5039));
        assert_eq!(env.secret, "amp111");
        assert!(AsteriskEnv::from_vars(|_| None).is_err());
    }

    #[test]
    fn thread_cpu_time_advances() {
        let Some(before) = thread_cpu_time() else {
            return;
        };
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time().unwrap() > before);
    }
}

/// A logged-in session `key` to the sandbox Asterisk (instance `a`) taking the events
/// of one `class`, none blocked.
///
/// # Panics
/// When the login fails within 15 s.
fn session(key: &str, class: &str) -> (Driver, ServerId) {
    let mut driver = Driver::new().expect("a driver");
    let mut config = Config::new(key, "admin", asterisk().secret.clone());
    config.events = EventMask::Classes(vec![class.into()]);
    config.blocked_events = Vec::new();
    let id = driver
        .add_server(ServerSpec::new(config, asterisk().endpoint()))
        .expect("a server");
    driver.connect(id).expect("connect");
    driver
        .wait_ready(id, Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the {key}'s login: {e}"));
    (driver, id)
}

/// Places a short call on the sandbox Asterisk (instance `a`) from a session of its
/// own (`Local/answer@test` running `Wait(1)`, async), its first channel's `Uniqueid`
/// `channel_id`, and waits for its `OriginateResponse`: a probe whose events
/// (`Newchannel`, `Newstate`, ... in the `call` class) other sessions see.
///
/// # Panics
/// When the login or the Originate fails, or no answer comes within 15 s.
pub fn probe_call(channel_id: &str) {
    let (mut driver, id) = session("prober", "call");
    let originate = Originate::application("Local/answer@test", "Wait", "1")
        .with_async(true)
        .with_channel_id(channel_id);
    let reply = driver
        .send_and_wait(id, originate)
        .expect("the probe's Originate");
    assert_eq!(
        reply.events[0].get("Response"),
        Some("Success"),
        "{reply:?}"
    );
    driver.shutdown(Duration::from_secs(5));
}

/// A test's own session to the sandbox Asterisk (instance `a`) that starts dialplan
/// floods (`Local/flood@test`: `COUNT` `UserEvent Flood` with `Seq`, then
/// `FloodDone`) and sees their end.
#[derive(Debug)]
pub struct Flooder {
    driver: Driver,
    id: ServerId,
}

impl Default for Flooder {
    fn default() -> Self {
        Flooder::new()
    }
}

impl Flooder {
    /// Logs in (events of the `user` class only).
    ///
    /// # Panics
    /// When the login fails within 15 s.
    pub fn new() -> Flooder {
        let (driver, id) = session("flooder", "user");
        Flooder { driver, id }
    }

    /// Starts a flood of `count` UserEvents and ticks until its `FloodDone`.
    ///
    /// # Panics
    /// When no `FloodDone` comes within 120 s.
    pub fn flood(&mut self, count: u64) {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        let subscription = self.driver.on_event("UserEvent", move |event| {
            if event.get("UserEvent") == Some("FloodDone") {
                seen.store(true, Ordering::Relaxed);
            }
        });
        let originate = Originate::application("Local/flood@test", "Wait", "120")
            .with_variable("COUNT", count.to_string());
        self.driver
            .send(self.id, originate, |_| {})
            .expect("the flood's Originate");
        let started = std::time::Instant::now();
        while !done.load(Ordering::Relaxed) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no FloodDone within 120 s"
            );
            self.driver.tick_all(Duration::from_millis(20));
        }
        self.driver.unsubscribe(subscription);
    }
}
