//! One test body, two drivers: the readiness, routing, send and close scenarios run
//! through `ami-mio` and `ami-tokio` against the simulated Asterisk (`TcpSim`) and
//! must give the same results, because both drivers are pumps around the same
//! `ami_cluster::ClientCore`.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use ami_cluster::{BackoffConfig, CircuitConfig, NotReady, Policy, Strategy};
use ami_proto::{CloseReason, Config, SendError};
use ami_sim::{Fault, SimConfig, TcpSim};

/// How a wait ended, the same words for both drivers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    Ready,
    NotReady(NotReady),
    TimedOut(Option<CloseReason>),
    Other(String),
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Pong,
    Refused(SendError),
    Other(String),
}

/// What the scenarios ask of a driver.
trait Harness {
    /// A client over these servers, all idle.
    fn start(servers: Vec<(Config, SocketAddr)>, policy: Policy) -> Self;
    fn wait_ready(&mut self, key: &str, timeout: Duration) -> Wait;
    fn ping(&mut self, key: &str) -> Sent;
    /// The key of the server routing picks, or the error's text.
    fn select(&mut self) -> Result<String, String>;
    fn set_routing(&mut self, strategy: Strategy<String>) -> Result<(), String>;
    fn close(&mut self, key: &str);
}

mod mio_harness {
    use super::*;
    use ami_mio::{Driver, DriverOptions, Endpoint, ServerSpec, WaitError};

    pub struct Mio(Driver);

    impl Harness for Mio {
        fn start(servers: Vec<(Config, SocketAddr)>, policy: Policy) -> Self {
            let mut driver = Driver::with_options(DriverOptions {
                policy,
                seed: Some(7),
                ..DriverOptions::default()
            })
            .unwrap();
            for (config, addr) in servers {
                let endpoint = Endpoint::new(addr.ip().to_string(), addr.port());
                driver
                    .add_server(ServerSpec::new(config, endpoint))
                    .unwrap();
            }
            Mio(driver)
        }

        fn wait_ready(&mut self, key: &str, timeout: Duration) -> Wait {
            let id = self.0.server_id(key).unwrap();
            match self.0.wait_ready(id, timeout) {
                Ok(()) => Wait::Ready,
                Err(WaitError::NotReady(why)) => Wait::NotReady(why),
                Err(WaitError::TimedOut { last, .. }) => Wait::TimedOut(last),
                Err(other) => Wait::Other(other.to_string()),
            }
        }

        fn ping(&mut self, key: &str) -> Sent {
            let id = self.0.server_id(key).unwrap();
            match self.0.send_and_wait(id, ami_proto::action::Ping) {
                Ok(reply) if reply.response.get("Ping") == Some("Pong") => Sent::Pong,
                Ok(reply) => Sent::Other(format!("{reply:?}")),
                Err(WaitError::Refused(error)) => Sent::Refused(error),
                Err(other) => Sent::Other(other.to_string()),
            }
        }

        fn select(&mut self) -> Result<String, String> {
            let id = self.0.select().map_err(|e| e.to_string())?;
            Ok(self.0.server_key(id).to_owned())
        }

        fn set_routing(&mut self, strategy: Strategy<String>) -> Result<(), String> {
            self.0.set_routing(strategy).map_err(|e| e.to_string())
        }

        fn close(&mut self, key: &str) {
            let id = self.0.server_id(key).unwrap();
            self.0.close(id);
            while self.0.state(id) != ami_proto::State::Closed {
                self.0.tick_all(Duration::from_millis(20));
            }
        }
    }
}

mod tokio_harness {
    use super::*;
    use ami_tokio::{ClientError, ClientSpec, ClusterClient, Tokio};

    pub struct Async {
        rt: tokio::runtime::Runtime,
        cluster: ClusterClient,
    }

    impl Harness for Async {
        fn start(servers: Vec<(Config, SocketAddr)>, policy: Policy) -> Self {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let specs = servers
                .into_iter()
                .map(|(config, addr)| {
                    let mut spec = ClientSpec::new(config, addr);
                    spec.policy = policy;
                    spec.seed = Some(7);
                    spec
                })
                .collect();
            let cluster = rt
                .block_on(async { ClusterClient::spawn(Tokio, specs, None) })
                .unwrap();
            Async { rt, cluster }
        }

        fn wait_ready(&mut self, key: &str, timeout: Duration) -> Wait {
            let client = self.cluster.server(key).unwrap().clone();
            match self.rt.block_on(client.wait_ready(timeout)) {
                Ok(()) => Wait::Ready,
                Err(ClientError::NotReady(why)) => Wait::NotReady(why),
                Err(ClientError::TimedOut { last }) => Wait::TimedOut(last),
                Err(other) => Wait::Other(other.to_string()),
            }
        }

        fn ping(&mut self, key: &str) -> Sent {
            let client = self.cluster.server(key).unwrap().clone();
            match self.rt.block_on(client.ping()) {
                Ok(reply) if reply.response.get("Ping") == Some("Pong") => Sent::Pong,
                Ok(reply) => Sent::Other(format!("{reply:?}")),
                Err(ClientError::Refused(error)) => Sent::Refused(error),
                Err(other) => Sent::Other(other.to_string()),
            }
        }

        fn select(&mut self) -> Result<String, String> {
            let _guard = self.rt.enter();
            self.cluster
                .select()
                .map(|client| client.key())
                .map_err(|e| e.to_string())
        }

        fn set_routing(&mut self, strategy: Strategy<String>) -> Result<(), String> {
            self.cluster
                .set_routing(strategy)
                .map_err(|e| e.to_string())
        }

        fn close(&mut self, key: &str) {
            let client = self.cluster.server(key).unwrap().clone();
            self.rt.block_on(client.close());
        }
    }
}

fn config(key: &str, secret: &str) -> Config {
    Config::new(key, "admin", secret)
}

/// Fast retries, so that circuits open within a second.
fn fast_policy() -> Policy {
    Policy {
        backoff: BackoffConfig {
            min: Duration::from_millis(10),
            base: Duration::from_millis(20),
            cap: Duration::from_millis(50),
        },
        circuit: CircuitConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
            ..CircuitConfig::default()
        },
        stable_after: Duration::from_secs(10),
    }
}

fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

/// Readiness: ready, refused credentials, refused connections (circuit), a stall.
fn readiness<H: Harness>() {
    let good = TcpSim::start(SimConfig::new()).unwrap();
    let stalled = TcpSim::start(SimConfig::new().with_fault(Fault::Stall)).unwrap();
    let mut stall_config = config("stalled", "amp111");
    stall_config.read_timeout = Duration::from_millis(200);
    let mut h = H::start(
        vec![
            (config("good", "amp111"), good.addr()),
            (config("badauth", "wrong"), good.addr()),
            (config("down", "amp111"), closed_port()),
            (stall_config, stalled.addr()),
        ],
        fast_policy(),
    );
    // Lazy open: the first send opens the server and is refused.
    assert!(
        matches!(h.ping("good"), Sent::Refused(SendError::NotReady { .. })),
        "lazy first send"
    );
    assert_eq!(h.wait_ready("good", WAIT), Wait::Ready);
    assert_eq!(h.ping("good"), Sent::Pong);
    match h.wait_ready("badauth", WAIT) {
        Wait::NotReady(NotReady::Refused(CloseReason::AuthenticationFailed { .. })) => {}
        other => panic!("badauth: {other:?}"),
    }
    match h.wait_ready("down", WAIT) {
        Wait::NotReady(NotReady::CircuitOpen {
            last: Some(CloseReason::Transport(_)),
        }) => {}
        other => panic!("down: {other:?}"),
    }
    // A stalled banner is retried: a wait shorter than the circuit runs out and names
    // the last failure.
    assert_eq!(
        h.wait_ready("stalled", Duration::from_millis(500)),
        Wait::TimedOut(Some(CloseReason::BannerTimeout))
    );
}

/// Routing: round robin over the healthy servers, a killed one skipped, explicit and
/// failover strategies checked against the registry.
fn routing<H: Harness>() {
    let a = TcpSim::start(SimConfig::new()).unwrap();
    let b = TcpSim::start(SimConfig::new()).unwrap();
    let mut h = H::start(
        vec![
            (config("a", "amp111"), a.addr()),
            (config("b", "amp111"), b.addr()),
        ],
        fast_policy(),
    );
    assert_eq!(h.wait_ready("a", WAIT), Wait::Ready);
    assert_eq!(h.wait_ready("b", WAIT), Wait::Ready);
    let picks: Vec<String> = (0..4).map(|_| h.select().unwrap()).collect();
    assert_eq!(picks, ["a", "b", "a", "b"]);
    b.kill();
    // Wait until b is known to be gone: its ping fails (closed or refused).
    while h.ping("b") == Sent::Pong {}
    let picks: Vec<String> = (0..3).map(|_| h.select().unwrap()).collect();
    assert_eq!(picks, ["a", "a", "a"]);
    assert!(h.set_routing(Strategy::Explicit("nope".into())).is_err());
    h.set_routing(Strategy::Failover(vec!["b".into(), "a".into()]))
        .unwrap();
    assert_eq!(h.select().unwrap(), "a");
    h.set_routing(Strategy::Explicit("b".into())).unwrap();
    assert!(h.select().is_err(), "b is down");
}

/// Close: a closed server refuses sends and reports `Stopped` to a wait.
fn close<H: Harness>() {
    let sim = TcpSim::start(SimConfig::new()).unwrap();
    let mut h = H::start(vec![(config("one", "amp111"), sim.addr())], fast_policy());
    assert_eq!(h.wait_ready("one", WAIT), Wait::Ready);
    h.close("one");
    assert_eq!(
        h.wait_ready("one", WAIT),
        Wait::NotReady(NotReady::Stopped),
        "a closed server"
    );
    assert!(
        matches!(h.ping("one"), Sent::Refused(_)),
        "send after close"
    );
}

#[test]
fn readiness_mio() {
    readiness::<mio_harness::Mio>();
}

#[test]
fn readiness_tokio() {
    readiness::<tokio_harness::Async>();
}

#[test]
fn routing_mio() {
    routing::<mio_harness::Mio>();
}

#[test]
fn routing_tokio() {
    routing::<tokio_harness::Async>();
}

#[test]
fn close_mio() {
    close::<mio_harness::Mio>();
}

#[test]
fn close_tokio() {
    close::<tokio_harness::Async>();
}
