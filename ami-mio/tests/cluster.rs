//! The driver's cluster behaviour (reconnect, backoff, circuit breaker, routing, lazy
//! open, metrics) against small fake AMI servers on loopback.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ami_mio::ami_cluster::StrategyKind;
use ami_mio::{
    BackoffConfig, CircuitConfig, Driver, DriverOptions, Endpoint, Health, NoServerAvailable,
    NotReady, Policy, RouteError, ServerId, ServerSpec, Strategy, WaitError,
};
use ami_proto::{Action, ActionError, CloseReason, Config, SendError, State, action};

// ---------------------------------------------------------------------------------
// A fake AMI server

/// How a [`FakeServer`] treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Banner, accepts the login, answers `Ping` and `Logoff`; any other action is
    /// never answered (it stays in flight).
    Normal,
    /// Banner, answers `Login` with `Authentication failed`, then hangs up.
    RejectLogin,
    /// Accepts TCP and never sends a byte.
    Stalled,
}

#[derive(Default)]
struct Shared {
    /// Hang up on every client and stop listening (the port then refuses).
    stop: AtomicBool,
    /// Hang up on every client, keep listening.
    hang_up: AtomicBool,
    /// When each connection was accepted.
    accepts: Mutex<Vec<Instant>>,
    /// Names of the actions received, in order.
    actions: Mutex<Vec<String>>,
}

/// An AMI server on a loopback port, served by one thread that polls its listener and
/// clients every millisecond (non-blocking sockets, so it can be killed at any time).
struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(mode: Mode) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let thread = thread::spawn(move || serve(&listener, mode, &state));
        FakeServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Drops every client connection; new ones are still accepted.
    fn hang_up(&self) {
        self.shared.hang_up.store(true, Ordering::SeqCst);
    }

    /// Drops every client connection and closes the port.
    fn kill(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    fn accepts(&self) -> Vec<Instant> {
        self.shared.accepts.lock().unwrap().clone()
    }

    fn received(&self, name: &str) -> bool {
        self.shared
            .actions
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == name)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(listener: &TcpListener, mode: Mode, shared: &Shared) {
    let mut clients: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        while let Ok((mut stream, _)) = listener.accept() {
            shared.accepts.lock().unwrap().push(Instant::now());
            stream.set_nonblocking(true).unwrap();
            stream.set_nodelay(true).unwrap();
            if mode != Mode::Stalled {
                let _ = stream.write_all(b"Asterisk Call Manager/11.0.0\r\n");
            }
            clients.push((stream, Vec::new()));
        }
        if shared.hang_up.swap(false, Ordering::SeqCst) {
            clients.clear();
        }
        clients.retain_mut(|(stream, buf)| serve_client(stream, buf, mode, shared));
        thread::sleep(Duration::from_millis(1));
    }
}

/// Reads what a client sent and answers every complete action; false when the
/// connection is over.
fn serve_client(stream: &mut TcpStream, buf: &mut Vec<u8>, mode: Mode, shared: &Shared) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return false,
        }
    }
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let header = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .unwrap_or_default()
                .to_owned()
        };
        let (name, id) = (header("Action: "), header("ActionID: "));
        shared.actions.lock().unwrap().push(name.clone());
        let (reply, hang_up) = match (mode, name.as_str()) {
            (Mode::RejectLogin, "Login") => (
                format!(
                    "Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\n\r\n"
                ),
                true,
            ),
            (_, "Login") => (
                format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                ),
                false,
            ),
            (_, "Ping") => (
                format!("Response: Success\r\nActionID: {id}\r\nPing: Pong\r\n\r\n"),
                false,
            ),
            (_, "Logoff") => (format!("Response: Goodbye\r\nActionID: {id}\r\n\r\n"), true),
            _ => continue,
        };
        if stream.write_all(reply.as_bytes()).is_err() || hang_up {
            return false;
        }
    }
    true
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// Driver helpers

fn spec(key: &str, addr: SocketAddr) -> ServerSpec {
    ServerSpec::new(
        Config::new(key, "admin", "secret"),
        Endpoint::new(addr.ip().to_string(), addr.port()),
    )
}

fn driver_with(policy: Policy) -> Driver {
    Driver::with_options(DriverOptions {
        policy,
        seed: Some(0x5EED),
        ..DriverOptions::default()
    })
    .unwrap()
}

/// Retries 100..200 ms apart; the circuit opens after 5 failures for 300 ms.
fn fast_policy() -> Policy {
    Policy {
        backoff: BackoffConfig {
            min: Duration::from_millis(100),
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
        },
        circuit: CircuitConfig {
            failure_threshold: 5,
            cooldown: Duration::from_millis(300),
            half_open_max_probes: 1,
        },
        ..Policy::default()
    }
}

/// Ticks until `done` holds; panics after `limit` naming `what`.
fn tick_until(
    driver: &mut Driver,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Driver) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(driver) {
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        driver.tick_all(Duration::from_millis(10));
    }
}

/// Ticks for `duration`.
fn tick_for(driver: &mut Driver, duration: Duration) {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        driver.tick_all(Duration::from_millis(10));
    }
}

/// Every health change `(to, when)` of every server, recorded by a listener.
type HealthLog = Rc<RefCell<Vec<(String, Health, Instant)>>>;

fn record_health(driver: &mut Driver) -> HealthLog {
    let log: HealthLog = Rc::default();
    let sink = log.clone();
    driver.on_health_change(move |server, _, to| {
        sink.borrow_mut()
            .push((server.to_owned(), to, Instant::now()))
    });
    log
}

/// When each attempt of `server` started (its health became `Connecting`). The
/// listener runs a few microseconds after the attempt itself.
fn attempts(log: &HealthLog, server: &str) -> Vec<Instant> {
    log.borrow()
        .iter()
        .filter(|(key, to, _)| key == server && *to == Health::Connecting)
        .map(|(_, _, at)| *at)
        .collect()
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

// ---------------------------------------------------------------------------------
// 1. Reconnect

#[test]
fn a_lost_session_fails_its_actions_once_and_reconnects_by_itself() {
    let server = FakeServer::start(Mode::Normal);
    // The default policy: the first retry after a lost session comes within 1 s.
    let mut driver = driver_with(Policy::default());
    let id = driver.add_server(spec("pbx1", server.addr)).unwrap();
    let log = record_health(&mut driver);
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    assert_eq!(driver.health(id), Health::Healthy);

    // An action the server never answers is in flight when it hangs up.
    let outcomes = Rc::new(RefCell::new(Vec::new()));
    let sink = outcomes.clone();
    driver
        .send(id, Action::new("Silence"), move |result| {
            sink.borrow_mut().push(result)
        })
        .unwrap();
    tick_until(
        &mut driver,
        Duration::from_secs(5),
        "the action sent",
        |_| server.received("Silence"),
    );
    server.hang_up();
    let lost = Instant::now();
    tick_until(&mut driver, Duration::from_secs(5), "Reconnecting", |d| {
        d.health(id) == Health::Reconnecting
    });
    {
        let outcomes = outcomes.borrow();
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert!(
            matches!(
                &outcomes[0],
                Err(ActionError::ConnectionClosed {
                    reason: CloseReason::PeerClosed
                })
            ),
            "{outcomes:?}"
        );
    }
    // While it is reconnecting, a wait goes on through the reconnect.
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    assert!(
        lost.elapsed() < Duration::from_millis(1500),
        "{:?}",
        lost.elapsed()
    );
    assert_eq!(driver.health(id), Health::Healthy);
    let reply = driver.send_and_wait(id, action::Ping).unwrap();
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    assert_eq!(outcomes.borrow().len(), 1, "the callback ran exactly once");

    let tos: Vec<Health> = log.borrow().iter().map(|(_, to, _)| *to).collect();
    let expected = [
        Health::Connecting,
        Health::Authenticating,
        Health::Healthy,
        Health::Reconnecting,
        Health::Connecting,
        Health::Authenticating,
        Health::Healthy,
    ];
    assert_eq!(tos, expected);
    let metrics = driver.metrics(id);
    assert_eq!(metrics.connections_established, 2, "{metrics:?}");
    assert_eq!(metrics.connections_lost, 1, "{metrics:?}");
    assert_eq!(metrics.reconnect_attempts, 2, "{metrics:?}");
    assert_eq!(metrics.actions_failed, 1, "{metrics:?}");
    assert_eq!(metrics.actions_completed, 1, "{metrics:?}");
    assert_eq!(server.accepts().len(), 2);

    // Closing stops the reconnects.
    assert!(driver.shutdown(Duration::from_secs(5)));
    assert_eq!(driver.health(id), Health::Disconnected);
    tick_for(&mut driver, Duration::from_millis(300));
    assert_eq!(server.accepts().len(), 2);
    assert_eq!(driver.state(id), State::Closed);
}

// ---------------------------------------------------------------------------------
// 2. Refused connections: backoff, then the circuit opens

#[test]
fn refused_connections_back_off_then_open_the_circuit() {
    let mut driver = driver_with(fast_policy());
    let id = driver.add_server(spec("down", closed_port())).unwrap();
    let log = record_health(&mut driver);
    driver.connect(id).unwrap();
    // Refusals are retried, so a wait goes on through them and ends when the
    // circuit opens, naming the last failure.
    let result = driver.wait_ready(id, Duration::from_secs(5));
    assert!(
        matches!(
            result,
            Err(WaitError::NotReady(NotReady::CircuitOpen {
                last: Some(CloseReason::Transport(_))
            }))
        ),
        "{result:?}"
    );
    let started = Instant::now();
    tick_until(&mut driver, Duration::from_secs(3), "CircuitOpen", |d| {
        d.health(id) == Health::CircuitOpen
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let metrics = driver.metrics(id);
    assert_eq!(metrics.circuit_opened_total, 1, "{metrics:?}");
    assert_eq!(metrics.connection_failures, 5, "{metrics:?}");
    assert_eq!(metrics.reconnect_attempts, 5, "{metrics:?}");
    let tried = attempts(&log, "down");
    assert_eq!(tried.len(), 5);
    for gap in gaps(&tried) {
        // 1 ms for the listener's own lag behind the attempt.
        assert!(gap >= Duration::from_millis(99), "{:?}", gaps(&tried));
        assert!(gap <= Duration::from_millis(300), "{:?}", gaps(&tried));
    }

    // After the cooldown (300 ms, probe jittered by up to 1 s) one probe goes, fails,
    // and the circuit opens again.
    tick_until(
        &mut driver,
        Duration::from_secs(3),
        "the circuit to reopen",
        |d| d.metrics(id).circuit_opened_total == 2,
    );
    let tried = attempts(&log, "down");
    assert_eq!(tried.len(), 6, "one probe");
    assert!(tried[5] - tried[4] >= Duration::from_millis(300));
    assert_eq!(driver.health(id), Health::CircuitOpen);
    assert_eq!(
        driver.send(id, action::Ping, |_| panic!(
            "refused sends never call back"
        )),
        Err(SendError::NotReady {
            state: State::Closed
        })
    );
    assert_eq!(driver.metrics(id).actions_refused, 1);
}

// ---------------------------------------------------------------------------------
// 3. Rejected credentials

#[test]
fn a_rejected_login_counts_as_a_failure_and_backs_off() {
    let server = FakeServer::start(Mode::RejectLogin);
    let mut policy = fast_policy();
    policy.circuit.cooldown = Duration::from_secs(30);
    let mut driver = driver_with(policy);
    let id = driver.add_server(spec("badauth", server.addr)).unwrap();
    let log = record_health(&mut driver);
    driver.connect(id).unwrap();
    let result = driver.wait_ready(id, Duration::from_secs(5));
    assert_eq!(
        result,
        Err(WaitError::NotReady(NotReady::Refused(
            CloseReason::AuthenticationFailed {
                message: "Authentication failed".into()
            }
        )))
    );
    tick_until(&mut driver, Duration::from_secs(3), "CircuitOpen", |d| {
        d.health(id) == Health::CircuitOpen
    });
    // Never hammered: every attempt at least 100 ms after the previous one, and none
    // while the circuit is open.
    tick_for(&mut driver, Duration::from_millis(300));
    let tried = attempts(&log, "badauth");
    assert_eq!(tried.len(), 5, "{:?}", gaps(&tried));
    for gap in gaps(&tried) {
        assert!(gap >= Duration::from_millis(100), "{:?}", gaps(&tried));
    }
    let accepted = server.accepts();
    assert_eq!(accepted.len(), 5);
    for gap in gaps(&accepted) {
        // The server notices a connection within its 1 ms polling period.
        assert!(gap >= Duration::from_millis(98), "{:?}", gaps(&accepted));
    }
    let metrics = driver.metrics(id);
    assert_eq!(metrics.connection_failures, 5, "{metrics:?}");
    assert_eq!(metrics.connections_established, 0, "{metrics:?}");
    assert_eq!(metrics.circuit_opened_total, 1, "{metrics:?}");
}

// ---------------------------------------------------------------------------------
// 4. Routing

#[test]
fn round_robin_cycles_over_healthy_servers_and_skips_dead_ones() {
    let mut servers: Vec<FakeServer> = (0..3).map(|_| FakeServer::start(Mode::Normal)).collect();
    let mut driver = driver_with(fast_policy());
    let ids: Vec<ServerId> = ["a", "b", "c"]
        .iter()
        .zip(&servers)
        .map(|(key, server)| driver.add_server(spec(key, server.addr)).unwrap())
        .collect();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    // Nothing is open yet: nothing to route to (and selecting opens the idle ones).
    assert_eq!(
        driver.select(),
        Err(NoServerAvailable {
            strategy: StrategyKind::RoundRobin,
            considered: 3
        })
    );
    for &id in &ids {
        driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    }
    let picks: Vec<ServerId> = (0..6).map(|_| driver.select().unwrap()).collect();
    assert_eq!(picks, [a, b, c, a, b, c]);

    let ticket = driver
        .send_routed(action::Ping, |result| assert!(result.is_ok()))
        .unwrap();
    assert_eq!(ticket.server, a);
    assert!(driver.is_pending(ticket));

    servers[1].kill();
    tick_until(&mut driver, Duration::from_secs(5), "b down", |d| {
        d.health(b) != Health::Healthy
    });
    let picks: Vec<ServerId> = (0..4).map(|_| driver.select().unwrap()).collect();
    assert_eq!(picks, [c, a, c, a]);

    // Failover and explicit routing are checked against the registry.
    driver
        .set_routing(Strategy::Failover(vec!["b".into(), "c".into(), "a".into()]))
        .unwrap();
    assert_eq!(driver.select(), Ok(c));
    assert_eq!(
        driver.set_routing(Strategy::Explicit("nope".into())),
        Err(ami_mio::ClusterError::UnknownServer("nope".into()))
    );
    driver.set_routing(Strategy::RoundRobin).unwrap();

    servers[0].kill();
    servers[2].kill();
    tick_until(&mut driver, Duration::from_secs(5), "all down", |d| {
        ids.iter().all(|&id| d.health(id) != Health::Healthy)
    });
    let none = driver.select().unwrap_err();
    assert_eq!(none.considered, 3);
    assert!(matches!(
        driver.send_routed(action::Ping, |_| panic!("never sent")),
        Err(RouteError::NoServer(_))
    ));
}

#[test]
fn a_routing_option_naming_later_servers_applies_once_they_are_added() {
    let server = FakeServer::start(Mode::Normal);
    let mut driver = Driver::with_options(DriverOptions {
        routing: Strategy::Explicit("second".into()),
        ..DriverOptions::default()
    })
    .unwrap();
    let first = driver.add_server(spec("first", closed_port())).unwrap();
    let none = driver.select().unwrap_err();
    assert_eq!(none.considered, 0);
    let second = driver.add_server(spec("second", server.addr)).unwrap();
    driver.wait_ready(second, Duration::from_secs(5)).unwrap();
    assert_eq!(driver.select(), Ok(second));
    assert_ne!(first, second);
    assert_eq!(driver.default_server(), Ok(first));
    assert_eq!(driver.set_default_server("second"), Ok(second));
    assert_eq!(driver.default_server(), Ok(second));
}

// ---------------------------------------------------------------------------------
// 5. Lazy open

#[test]
fn the_first_send_opens_an_idle_server_and_is_refused() {
    let server = FakeServer::start(Mode::Normal);
    let other = FakeServer::start(Mode::Normal);
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("lazy", server.addr)).unwrap();
    let other_id = driver.add_server(spec("other", other.addr)).unwrap();
    assert_eq!(driver.health(id), Health::Disconnected);
    assert!(driver.node(id).is_idle());

    let refused = driver.send(id, action::Ping, |_| {
        panic!("refused sends never call back")
    });
    assert!(
        matches!(refused, Err(SendError::NotReady { .. })),
        "{refused:?}"
    );
    assert_eq!(driver.health(id), Health::Connecting, "the send opened it");
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    let reply = driver.send_and_wait(id, action::Ping).unwrap();
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    assert_eq!(driver.metrics(id).actions_refused, 1);

    // A lookup by key opens too; one without a server is an error.
    assert_eq!(driver.health(other_id), Health::Disconnected);
    assert_eq!(driver.server("other"), Ok(other_id));
    assert_eq!(driver.health(other_id), Health::Connecting);
    assert!(driver.server("nope").is_err());
    driver.wait_ready(other_id, Duration::from_secs(5)).unwrap();
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 6. A stalled server costs the others nothing

#[test]
fn a_stalled_server_does_not_slow_down_a_healthy_one() {
    let stalled = FakeServer::start(Mode::Stalled);
    let good = FakeServer::start(Mode::Normal);
    let mut driver = Driver::new().unwrap();
    let stalled_id = driver.add_server(spec("stalled", stalled.addr)).unwrap();
    let good_id = driver.add_server(spec("good", good.addr)).unwrap();
    driver.connect_all().unwrap();
    driver.wait_ready(good_id, Duration::from_secs(5)).unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        driver.send_and_wait(good_id, action::Ping).unwrap();
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest Ping beside a stalled server: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(50),
        "slowest Ping {slowest:?}"
    );
    assert_eq!(driver.state(stalled_id), State::AwaitingBanner);
    assert_eq!(driver.health(stalled_id), Health::Connecting);
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 7. Metrics

#[test]
fn prometheus_text_reports_status_and_latency_per_server() {
    const PINGS: u64 = 7;
    let server = FakeServer::start(Mode::Normal);
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("pbx1", server.addr)).unwrap();
    let down = driver.add_server(spec("pbx2", closed_port())).unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    for _ in 0..PINGS {
        driver.send_and_wait(id, action::Ping).unwrap();
    }
    let text = driver.render_prometheus();
    assert!(
        text.contains("ami_connection_status{server=\"pbx1\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("ami_connection_status{server=\"pbx2\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ami_action_latency_ms_count{{server=\"pbx1\"}} {PINGS}\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "ami_action_latency_ms_bucket{{server=\"pbx1\",le=\"+Inf\"}} {PINGS}\n"
    )));
    assert_eq!(driver.metrics(id).actions_completed, PINGS);
    assert_eq!(driver.metrics(down).reconnect_attempts, 0, "never opened");
    let all = driver.cluster_metrics();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0, "pbx1");
    assert_eq!(all[0].1.action_latency.count, PINGS);
    assert!(driver.shutdown(Duration::from_secs(5)));
}
