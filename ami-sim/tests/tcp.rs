//! The loopback TCP simulator against the `ami-mio` driver and raw sockets, in real
//! time. Every wait is bounded by a few seconds.

#![allow(clippy::disallowed_methods)] // real time: these tests read the clock

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ami_mio::{Driver, Endpoint, ServerId, ServerSpec};
use ami_proto::{Action, Config, State, action};
use ami_sim::{Fault, Flood, SimConfig, TcpSim};

const WAIT: Duration = Duration::from_secs(3);

fn driver_for(sim: &TcpSim, key: &str, driver: &mut Driver) -> ServerId {
    let addr = sim.addr();
    let mut config = Config::new(key, "admin", "amp111");
    config.connect_timeout = WAIT;
    driver
        .add_server(ServerSpec::new(
            config,
            Endpoint::new(addr.ip().to_string(), addr.port()),
        ))
        .unwrap()
}

fn connect(sim: &TcpSim) -> (Driver, ServerId) {
    let mut driver = Driver::new().unwrap();
    let id = driver_for(sim, "sim", &mut driver);
    driver.connect(id).unwrap();
    driver.wait_ready(id, WAIT).expect("logged in");
    (driver, id)
}

/// An action that gives up after a few seconds, so a broken test cannot hang.
fn bounded(action: impl Into<Action>) -> Action {
    action.into().with_timeout(WAIT)
}

/// Ticks until `done` holds or `limit` passes; returns whether it held.
fn tick_until(driver: &mut Driver, limit: Duration, mut done: impl FnMut(&Driver) -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done(driver) {
            return true;
        }
        driver.tick_all(Duration::from_millis(10));
    }
    done(driver)
}

#[test]
fn driver_logs_in_pings_and_runs_commands() {
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    let (mut driver, id) = connect(&sim);
    assert_eq!(driver.banner(id), Some("Asterisk Call Manager/11.0.0"));

    let pong = driver.send_and_wait(id, bounded(action::Ping)).unwrap();
    assert_eq!(pong.response.get("Ping"), Some("Pong"));
    let timestamp: f64 = pong.response.get("Timestamp").unwrap().parse().unwrap();
    assert!(timestamp > 1.7e9, "the real clock: {timestamp}");

    let version = driver
        .send_and_wait(id, bounded(action::Command::new("core show version")))
        .unwrap();
    assert_eq!(version.output(), ["Asterisk 22.10.1 built by sim"]);
    let big = driver
        .send_and_wait(id, bounded(action::Command::new("sim output 5000")))
        .unwrap();
    assert_eq!(big.output().len(), 5000);
    let channels = driver
        .send_and_wait(id, bounded(action::CoreShowChannels))
        .unwrap();
    assert_eq!(channels.events.len(), 3);

    let originate = driver
        .send_and_wait(
            id,
            bounded(action::Originate::application("PJSIP/100", "Wait", "1")),
        )
        .unwrap();
    assert_eq!(originate.events[0].get("Reason"), Some("4"));

    let stats = sim.stats();
    assert_eq!(stats.sessions_accepted, 1);
    assert_eq!(stats.live_sessions, 1);
    assert!(stats.listening);
    assert_eq!(stats.totals.logins_ok, 1);
    assert_eq!(stats.totals.actions_named("command"), 2);
    assert!(stats.totals.bytes_sent > 100_000);

    // Logoff: Goodbye, then the simulator closes the socket.
    assert!(driver.shutdown(WAIT));
    let closed = (0..300).any(|_| {
        driver.tick_all(Duration::from_millis(10));
        sim.stats().live_sessions == 0
    });
    assert!(closed, "session still open: {:?}", sim.stats());
}

#[test]
fn flood_of_ten_thousand_events() {
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    let (mut driver, _) = connect(&sim);
    let count = Rc::new(Cell::new(0u64));
    let last_seq = Rc::new(Cell::new(None::<u64>));
    let (counter, seq) = (count.clone(), last_seq.clone());
    driver.on_any_event(move |event| {
        if event.name() == "UserEvent" && event.get("UserEvent") == Some("Flood") {
            counter.set(counter.get() + 1);
            seq.set(event.get("Seq").and_then(|s| s.parse().ok()));
        }
    });
    sim.set_flood(Some(Flood::new(50_000).with_total(10_000)));
    let all = tick_until(&mut driver, Duration::from_secs(5), |_| {
        count.get() >= 10_000
    });
    assert!(all, "only {} events", count.get());
    driver.tick_all(Duration::from_millis(20));
    assert_eq!(count.get(), 10_000);
    assert_eq!(last_seq.get(), Some(9_999));
    let totals = sim.stats().totals;
    assert_eq!(totals.flood_events_sent, 10_000);
    assert_eq!(totals.flood_events_skipped, 0);
}

/// Records every `(from, to)` state change of the driver's connections.
fn record_states(driver: &mut Driver) -> Rc<RefCell<Vec<(State, State)>>> {
    let changes = Rc::new(RefCell::new(Vec::new()));
    let sink = changes.clone();
    driver.on_state_change(move |_, from, to| sink.borrow_mut().push((from, to)));
    changes
}

/// Whether a connection closed among the changes from index `since` on; with
/// `failed_attempt`, only one that closed before logging in.
fn closed_since(changes: &[(State, State)], since: usize, failed_attempt: bool) -> bool {
    changes[since.min(changes.len())..]
        .iter()
        .any(|&(from, to)| {
            to == State::Closed
                && (!failed_attempt || matches!(from, State::Connecting | State::AwaitingBanner))
        })
}

#[test]
fn kill_refuses_and_restart_accepts_again() {
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    let (mut driver, id) = connect(&sim);
    let changes = record_states(&mut driver);

    sim.kill();
    assert!(!sim.stats().listening);
    let lost = tick_until(&mut driver, WAIT, |_| {
        closed_since(&changes.borrow(), 0, false)
    });
    assert!(
        lost,
        "the session survived the kill: {:?}",
        changes.borrow()
    );

    // The port is closed: connecting again fails (a driver that reconnects by itself
    // tries on its own schedule; `connect` asks for an attempt otherwise).
    let killed_at = changes.borrow().len();
    assert!(TcpStream::connect(sim.addr()).is_err());
    driver.connect(id).unwrap();
    let refused = tick_until(&mut driver, WAIT, |_| {
        closed_since(&changes.borrow(), killed_at, true)
    });
    assert!(refused, "no failed attempt: {:?}", changes.borrow());
    assert!(!driver.state(id).is_ready());
    assert_eq!(sim.stats().sessions_accepted, 1);

    sim.restart().unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while !driver.state(id).is_ready() && Instant::now() < end {
        if driver.state(id) == State::Closed {
            driver.connect(id).unwrap();
        }
        driver.tick_all(Duration::from_millis(10));
    }
    assert!(
        driver.state(id).is_ready(),
        "not back: {:?}",
        changes.borrow()
    );
    let pong = driver.send_and_wait(id, bounded(action::Ping)).unwrap();
    assert_eq!(pong.response.get("Ping"), Some("Pong"));
    let stats = sim.stats();
    assert_eq!(stats.sessions_accepted, 2);
    assert_eq!(stats.totals.logins_ok, 2);
}

#[test]
fn broadcasts_reach_the_other_sessions() {
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    let mut driver = Driver::new().unwrap();
    let a = driver_for(&sim, "a", &mut driver);
    let b = driver_for(&sim, "b", &mut driver);
    driver.connect_all().unwrap();
    driver.wait_ready(a, WAIT).unwrap();
    driver.wait_ready(b, WAIT).unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let sink = seen.clone();
    driver.on_event("UserEvent", move |event| {
        sink.borrow_mut().push((
            event.server_key().to_string(),
            event.get("ActionID").unwrap_or("").to_owned(),
        ));
    });
    driver
        .send(
            a,
            Action::new("UserEvent").header("UserEvent", "Hi"),
            |_| {},
        )
        .unwrap();
    let both = tick_until(&mut driver, WAIT, |_| seen.borrow().len() >= 2);
    assert!(both, "{:?}", seen.borrow());
    let mut got = seen.borrow().clone();
    got.sort();
    // The broadcast carries the sender's ActionID to both sessions.
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("a", "b"));
    assert!(!got[0].1.is_empty() && got[0].1 == got[1].1, "{got:?}");
}

/// Reads from a raw socket until `pattern` has arrived (or the read timeout).
fn read_until(stream: &mut TcpStream, pattern: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(pattern.len()).any(|w| w == pattern) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn raw_socket_with_split_writes() {
    let config = SimConfig::default().with_fault(Fault::SplitEveryByte(true));
    let sim = TcpSim::start(config).unwrap();
    let mut stream = TcpStream::connect(sim.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let banner = read_until(&mut stream, b"\r\n");
    assert_eq!(banner, b"Asterisk Call Manager/11.0.0\r\n");
    stream
        .write_all(b"Action: Login\r\nActionID: 1\r\nUsername: admin\r\nSecret: amp111\r\nEvents: off\r\n\r\n")
        .unwrap();
    let reply = read_until(&mut stream, b"accepted\r\n\r\n");
    assert_eq!(
        reply,
        b"Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"
    );
    stream
        .write_all(b"Action: Logoff\r\nActionID: 2\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest, b"Response: Goodbye\r\nActionID: 2\r\nMessage: Thanks for all the fish.\r\n\r\n",
        "then end of stream"
    );
}

#[test]
fn not_accepting_closes_before_the_banner() {
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    sim.set_accepting(false);
    let mut stream = TcpStream::connect(sim.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(sim.stats().sessions_refused, 1);
    sim.set_accepting(true);
    let mut stream = TcpStream::connect(sim.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        read_until(&mut stream, b"\r\n"),
        b"Asterisk Call Manager/11.0.0\r\n"
    );
}

#[test]
fn injected_faults_reach_live_sessions() {
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    let (mut driver, id) = connect(&sim);
    sim.inject(Fault::GarbageLen { len: 500 });
    sim.inject(Fault::DelayResponses(Duration::from_millis(100)));
    let started = Instant::now();
    driver.send_and_wait(id, bounded(action::Ping)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(driver.connection_stats(id).unwrap().discards, 1);
    let changes = record_states(&mut driver);
    sim.inject(Fault::CloseMidMessage);
    let closed = tick_until(&mut driver, WAIT, |_| {
        closed_since(&changes.borrow(), 0, false)
    });
    assert!(closed);
    assert_eq!(sim.stats().totals.faults_injected, 3);
}

/// A tick visits only the servers with something to do (issue 14 item 4): with many
/// servers in one driver, every heartbeat still goes out on time, a send to any one
/// of them is written in the next tick, and a flood on one reaches its listener.
#[test]
fn many_servers_keep_their_heartbeats_and_sends_go_out_at_once() {
    const SERVERS: usize = 150;
    let sim = TcpSim::start(SimConfig::default()).unwrap();
    let addr = sim.addr();
    let mut driver = Driver::new().unwrap();
    let ids: Vec<ServerId> = (0..SERVERS)
        .map(|i| {
            let mut config = Config::new(format!("s{i}"), "admin", "amp111");
            config.connect_timeout = WAIT;
            config.heartbeat_interval = Duration::from_millis(200);
            config.heartbeat_timeout = Duration::from_millis(500);
            config.heartbeat_max_misses = 2;
            driver
                .add_server(ServerSpec::new(
                    config,
                    Endpoint::new(addr.ip().to_string(), addr.port()),
                ))
                .unwrap()
        })
        .collect();
    driver.connect_all().unwrap();
    let ready = tick_until(&mut driver, Duration::from_secs(10), |d| {
        ids.iter().all(|&id| d.state(id).is_ready())
    });
    assert!(ready, "not every server logged in");
    let pings_before = sim.stats().totals.actions_named("Ping");

    // Heartbeats every 200 ms for 1.2 s: about six per server, none missed.
    let started = Instant::now();
    tick_until(&mut driver, Duration::from_millis(1200), |_| false);
    let elapsed = started.elapsed();
    let pings = sim.stats().totals.actions_named("Ping") - pings_before;
    let expected = SERVERS as u64 * (elapsed.as_millis() as u64 / 200);
    assert!(
        pings + SERVERS as u64 >= expected,
        "{pings} heartbeats in {elapsed:?}, expected about {expected}"
    );
    for &id in &ids {
        let stats = driver.connection_stats(id).unwrap();
        assert_eq!(stats.heartbeat_misses, 0, "{}", driver.server_key(id));
        assert!(driver.state(id).is_ready());
    }

    // A send to one server out of many is written by the next tick, without waiting
    // for the tick's timeout: 20 round trips take far less than 20 ticks of 50 ms.
    let started = Instant::now();
    for round in 0..20 {
        let id = ids[(round * 37) % SERVERS];
        let done = Rc::new(Cell::new(false));
        let flag = done.clone();
        driver
            .send(id, bounded(action::Ping), move |reply| {
                assert!(reply.is_ok());
                flag.set(true);
            })
            .unwrap();
        while !done.get() {
            driver.tick_all(Duration::from_millis(50));
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "20 Pings took {:?}",
        started.elapsed()
    );
    assert!(ids.iter().all(|&id| driver.state(id).is_ready()));
}
