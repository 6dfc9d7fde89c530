//! `ami listen --all` against two real Asterisk 22 instances, one of them stopped and
//! started again: the other's events keep flowing without a gap, the cluster reconnects
//! within the backoff cap, and the restarted server's events flow again. Health is read
//! from `--metrics-addr` (Prometheus text) as an operator would.
//!
//! Instance `a` is the suite's (`ami_tests::asterisk::asterisk`), instance `b` is
//! started here and stopped at the end; Asterisk that cannot start fails the test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ami_mio::{Driver, Health, ServerId, ServerSpec};
use ami_proto::Config;
use ami_proto::action::{Action, EventMask};
use ami_tests::asterisk::{AsteriskEnv, Instance, asterisk, unique_id};

mod support;
use support::{collect_stderr, free_port, http_get};

/// UserEvent `Tick`s listen printed, per server key: the `Seq` values in order.
type Ticks = Arc<Mutex<BTreeMap<String, Vec<u64>>>>;

/// The `ami listen` process, its parsed output and its log.
struct Listen {
    child: Child,
    ticks: Ticks,
    log: Arc<Mutex<String>>,
    metrics_port: u16,
    run: String,
}

impl Listen {
    fn start(config: &std::path::Path, metrics_port: u16, run: &str) -> Listen {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ami"))
            .args(["listen", "--all", "--metrics-addr"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--config")
            .arg(config)
            .env("AMI_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ami listen");
        let ticks: Ticks = Arc::default();
        let log = collect_stderr(&mut child);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (sink, run_id) = (ticks.clone(), run.to_owned());
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let header = |key: &str| {
                    event["headers"].as_array().and_then(|h| {
                        h.iter()
                            .find(|kv| kv[0].as_str() == Some(key))
                            .and_then(|kv| kv[1].as_str().map(str::to_owned))
                    })
                };
                if header("UserEvent").as_deref() == Some("Tick")
                    && header("Run").as_deref() == Some(run_id.as_str())
                {
                    let seq = header("Seq").and_then(|s| s.parse().ok()).unwrap();
                    let server = event["server"].as_str().unwrap().to_owned();
                    sink.lock().unwrap().entry(server).or_default().push(seq);
                }
            }
        });
        Listen {
            child,
            ticks,
            log,
            metrics_port,
            run: run.to_owned(),
        }
    }

    fn ticks(&self, server: &str) -> Vec<u64> {
        self.ticks
            .lock()
            .unwrap()
            .get(server)
            .cloned()
            .unwrap_or_default()
    }

    /// The value of one Prometheus sample, e.g. `ami_connection_status{server="a"}`.
    fn metric(&self, series: &str) -> Option<f64> {
        http_get(self.metrics_port, "/metrics")?
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "ami listen exited; its log:\n{}",
            self.log.lock().unwrap()
        );
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.run;
    }
}

/// Sends `UserEvent: Tick` with increasing `Seq` values to each server every 50 ms
/// (Asterisk broadcasts UserEvents to every manager session, listen's included).
struct Generator {
    driver: Driver,
    ids: Vec<(String, ServerId)>,
    next: BTreeMap<String, u64>,
    sent: BTreeMap<String, Vec<u64>>,
    run: String,
}

impl Generator {
    fn new(servers: &[(&str, &AsteriskEnv)], run: &str) -> Generator {
        let mut driver = Driver::new().unwrap();
        let mut ids = Vec::new();
        for (key, env) in servers {
            let mut config = Config::new(format!("gen_{key}"), "admin", env.secret.clone());
            config.events = EventMask::Off;
            let id = driver
                .add_server(ServerSpec::new(config, env.endpoint()))
                .unwrap();
            ids.push(((*key).to_owned(), id));
        }
        driver.connect_all().unwrap();
        Generator {
            driver,
            ids,
            next: BTreeMap::new(),
            sent: BTreeMap::new(),
            run: run.to_owned(),
        }
    }

    /// Ticks the driver for `d`, sending a Tick to every healthy server each 50 ms.
    fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            for (key, id) in self.ids.clone() {
                if self.driver.health(id) != Health::Healthy {
                    continue;
                }
                let seq = *self.next.entry(key.clone()).or_default();
                let action = Action::new("UserEvent")
                    .header("UserEvent", "Tick")
                    .header("Run", self.run.clone())
                    .header("Seq", seq.to_string());
                if self.driver.send(id, action, |_| {}).is_ok() {
                    self.next.insert(key.clone(), seq + 1);
                    self.sent.entry(key).or_default().push(seq);
                }
            }
            let slice = Instant::now() + Duration::from_millis(50);
            while Instant::now() < slice {
                self.driver.tick_all(Duration::from_millis(10));
            }
        }
    }

    fn sent(&self, server: &str) -> Vec<u64> {
        self.sent.get(server).cloned().unwrap_or_default()
    }
}

/// Waits until `condition` holds (checking every 50 ms while `generator` runs).
fn wait_for(
    generator: &mut Generator,
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        generator.run_for(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn listen_all_survives_a_restart_of_one_asterisk() {
    let a = asterisk().clone();
    let mut b = Instance::start("b");
    let run = unique_id("run");
    let dir = std::env::temp_dir().join(unique_id("ami-cluster-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("ami.toml");
    let server = |key: &str, env: &AsteriskEnv| {
        format!(
            "[servers.{key}]\nhost = \"{}\"\nport = {}\nusername = \"admin\"\nsecret = \"{}\"\n",
            env.host, env.port, env.secret
        )
    };
    std::fs::write(
        &config,
        format!(
            // A short cooldown, so that the circuit b's outage opens is not what the
            // reconnect waits for; the backoff between attempts still grows to its cap.
            "default = \"a\"\n{}{}[options]\ncircuit_cooldown = 5\n",
            server("a", &a),
            server("b", b.env())
        ),
    )
    .unwrap();
    let mut listen = Listen::start(&config, free_port(), &run);
    let mut generator = Generator::new(&[("a", &a), ("b", b.env())], &run);

    // 1. Both up: Ticks from both arrive.
    wait_for(
        &mut generator,
        Duration::from_secs(20),
        "ticks from a and b",
        || listen.ticks("a").len() >= 5 && listen.ticks("b").len() >= 5,
    );
    eprintln!(
        "phase 1: ticks a {} b {}",
        listen.ticks("a").len(),
        listen.ticks("b").len()
    );

    // 2. b stops. a's Ticks keep flowing without a gap.
    let sent_a_before = generator.sent("a").len();
    b.stop();
    let stopped = Instant::now();
    generator.run_for(Duration::from_secs(6));
    listen.assert_running();
    let outage_sent: Vec<u64> = generator.sent("a")[sent_a_before..].to_vec();
    wait_for(
        &mut generator,
        Duration::from_secs(5),
        "a's outage ticks",
        || {
            let got = listen.ticks("a");
            outage_sent.iter().all(|seq| got.contains(seq))
        },
    );
    let got_a = listen.ticks("a");
    assert!(
        got_a.windows(2).all(|w| w[1] == w[0] + 1),
        "a's ticks have a gap or repeat: {got_a:?}"
    );
    assert_eq!(
        listen.metric("ami_connection_status{server=\"a\"}"),
        Some(1.0)
    );
    assert_eq!(
        listen.metric("ami_connection_status{server=\"b\"}"),
        Some(0.0)
    );
    eprintln!(
        "phase 2: b down {:.1} s; {} ticks sent to a during the outage, all printed in order",
        stopped.elapsed().as_secs_f64(),
        outage_sent.len()
    );

    // 3. b starts again on the same ports: listen reconnects within the backoff cap
    //    (30 s, plus the circuit's probe jitter of at most 1 s), counted from when
    //    Asterisk is up again, which takes seconds longer on a busy machine.
    b.start_again();
    let b_ticks_before = listen.ticks("b").len();
    let back = wait_for(
        &mut generator,
        Duration::from_secs(45),
        "b healthy again",
        || listen.metric("ami_connection_status{server=\"b\"}") == Some(1.0),
    );
    let attempts = listen
        .metric("ami_reconnect_attempts_total{server=\"b\"}")
        .unwrap();
    assert!(attempts >= 2.0, "{attempts}");
    wait_for(
        &mut generator,
        Duration::from_secs(32),
        "b's ticks again",
        || listen.ticks("b").len() >= b_ticks_before + 5,
    );
    listen.assert_running();
    let got_a = listen.ticks("a");
    assert!(
        got_a.windows(2).all(|w| w[1] == w[0] + 1),
        "a never had a gap"
    );
    eprintln!(
        "phase 3: b healthy {:.1} s after its restart ({attempts} connection attempts in all); ticks flow again",
        back.as_secs_f64()
    );

    // SIGTERM: Logoff and exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &listen.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = listen.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "ami listen did not exit");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}\n{}", listen.log.lock().unwrap());
    let log = listen.log.lock().unwrap().clone();
    assert!(
        log.contains("reconnecting") || log.contains("circuit_open"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
