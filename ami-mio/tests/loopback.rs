//! The driver against a scripted AMI server on loopback.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use ami_mio::{Driver, DriverOptions, Endpoint, Filter, NotReady, ServerSpec, WaitError};
use ami_proto::{CloseReason, Config, State, action};

/// Reads one action (up to its blank line) and returns its `(Action, ActionID)`.
fn read_action(reader: &mut impl BufRead) -> Option<(String, String)> {
    let (mut name, mut id) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some((name, id));
        }
        if let Some(v) = line.strip_prefix("Action: ") {
            name = v.to_owned();
        } else if let Some(v) = line.strip_prefix("ActionID: ") {
            id = v.to_owned();
        }
    }
}

/// Accepts one client and writes it the banner; returns the stream to write to and a
/// reader of the same stream.
fn accept_with_banner(listener: &TcpListener) -> (TcpStream, BufReader<TcpStream>) {
    let (stream, _) = listener.accept().unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer
        .write_all(b"Asterisk Call Manager/11.0.0\r\n")
        .unwrap();
    (writer, BufReader::new(stream))
}

/// A server that logs the client in, sends `events` Hangup events, answers Ping, and
/// answers Logoff with Goodbye.
fn scripted_server(events: usize) -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (mut writer, mut reader) = accept_with_banner(&listener);
        while let Some((name, id)) = read_action(&mut reader) {
            match name.as_str() {
                "Login" => {
                    write!(writer, "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n").unwrap();
                    for i in 0..events {
                        let channel = if i % 2 == 0 { "PJSIP/100" } else { "PJSIP/200" };
                        write!(writer, "Event: Hangup\r\nPrivilege: call,all\r\nChannel: {channel}\r\nSeq: {i}\r\n\r\n").unwrap();
                    }
                }
                "Ping" => write!(
                    writer,
                    "Response: Success\r\nActionID: {id}\r\nPing: Pong\r\n\r\n"
                )
                .unwrap(),
                "Logoff" => {
                    write!(writer, "Response: Goodbye\r\nActionID: {id}\r\n\r\n").unwrap();
                    return;
                }
                _ => write!(
                    writer,
                    "Response: Error\r\nActionID: {id}\r\nMessage: Invalid/unknown command\r\n\r\n"
                )
                .unwrap(),
            }
        }
    });
    (addr, handle)
}

fn spec(key: &str, addr: SocketAddr) -> ServerSpec {
    ServerSpec::new(
        Config::new(key, "admin", "secret"),
        Endpoint::new(addr.ip().to_string(), addr.port()),
    )
}

#[test]
fn logs_in_receives_filtered_events_answers_and_closes_gracefully() {
    let (addr, server) = scripted_server(1000);
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("pbx1", addr)).unwrap();
    let all = Rc::new(RefCell::new(Vec::new()));
    let only_100 = Rc::new(RefCell::new(0));
    let sink = all.clone();
    driver.on_any_event(move |event| {
        sink.borrow_mut()
            .push(event.get("Seq").unwrap().parse::<usize>().unwrap())
    });
    let count = only_100.clone();
    driver.subscribe(
        Filter::event("hangup")
            .header("Channel", "PJSIP/100")
            .server("pbx1"),
        move |_| *count.borrow_mut() += 1,
    );
    driver.subscribe(Filter::any().server("other"), |_| panic!("wrong server"));
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    assert_eq!(driver.banner(id), Some("Asterisk Call Manager/11.0.0"));

    let reply = driver.send_and_wait(id, action::Ping).unwrap();
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    let failed = driver.send_and_wait(id, action::Command::new("core show uptime"));
    assert!(matches!(failed, Err(WaitError::Failed(_))), "{failed:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while all.borrow().len() < 1000 && Instant::now() < deadline {
        driver.tick_all(Duration::from_millis(10));
    }
    assert_eq!(*all.borrow(), (0..1000).collect::<Vec<_>>());
    assert_eq!(*only_100.borrow(), 500);

    assert!(driver.shutdown(Duration::from_secs(5)));
    assert_eq!(driver.state(id), State::Closed);
    server.join().unwrap();
}

#[test]
fn refused_connection_closes_with_a_transport_error() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed at once
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("down", addr)).unwrap();
    driver.connect(id).unwrap();
    // Refusals are retried (backoff), so the wait goes on until the circuit opens
    // after five of them, and names the last one.
    let result = driver.wait_ready(id, Duration::from_secs(30));
    assert!(
        matches!(
            result,
            Err(WaitError::NotReady(NotReady::CircuitOpen {
                last: Some(CloseReason::Transport(_))
            }))
        ),
        "{result:?}"
    );
}

#[test]
fn a_silent_server_costs_others_nothing_and_times_out_its_banner() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let (addr, server) = scripted_server(10);
    let mut driver = Driver::new().unwrap();
    let mut stalled = Config::new("stalled", "admin", "secret");
    stalled.read_timeout = Duration::from_millis(300);
    let silent_addr = silent.local_addr().unwrap();
    let stalled_id = driver
        .add_server(ServerSpec::new(
            stalled,
            Endpoint::new("127.0.0.1", silent_addr.port()),
        ))
        .unwrap();
    let good = driver.add_server(spec("good", addr)).unwrap();
    driver.connect_all().unwrap();
    let started = Instant::now();
    driver.wait_ready(good, Duration::from_secs(5)).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // A banner timeout is retried like any timeout: a short wait runs out and names it.
    let result = driver.wait_ready(stalled_id, Duration::from_millis(700));
    assert_eq!(
        result,
        Err(WaitError::TimedOut {
            waited: Duration::from_millis(700),
            last: Some(CloseReason::BannerTimeout)
        })
    );
    driver.shutdown(Duration::from_secs(5));
    server.join().unwrap();
}

#[test]
fn submissions_from_another_thread_wake_the_driver() {
    let (addr, server) = scripted_server(0);
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("pbx1", addr)).unwrap();
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    let submitter = driver.submitter();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = thread::spawn(move || {
        let tx = done_tx.clone();
        submitter
            .submit("pbx1", action::Ping, move |r| {
                tx.send(r.map(|_| ())).unwrap()
            })
            .unwrap();
        submitter
            .submit("nope", action::Ping, move |r| {
                done_tx.send(r.map(|_| ())).unwrap()
            })
            .unwrap();
    });
    thread.join().unwrap();
    let started = Instant::now();
    let mut results = Vec::new();
    while results.len() < 2 && started.elapsed() < Duration::from_secs(5) {
        // A long timeout: the waker must cut it short.
        driver.tick_all(Duration::from_millis(250));
        results.extend(done_rx.try_iter());
    }
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().any(Result::is_ok));
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(ami_mio::SubmitError::UnknownServer(_))))
    );
    driver.shutdown(Duration::from_secs(5));
    server.join().unwrap();
}

#[test]
fn oversized_tick_timeouts_are_clamped_and_counted() {
    let mut driver = Driver::new().unwrap();
    let started = Instant::now();
    driver.tick_all(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(driver.stats().clamped_timeouts, 1);
}

#[test]
fn hostnames_are_refused_unless_a_resolver_is_given() {
    let mut driver = Driver::new().unwrap();
    let named = ServerSpec::new(
        Config::new("named", "u", "s"),
        Endpoint::new("pbx.example", 5038),
    );
    assert!(matches!(
        driver.add_server(named.clone()),
        Err(ami_mio::DriverError::Endpoint(_))
    ));
    let options = DriverOptions {
        enforce_ip_endpoints: false,
        ..DriverOptions::default()
    };
    let mut driver = Driver::with_options(options).unwrap();
    assert!(matches!(
        driver.add_server(named),
        Err(ami_mio::DriverError::Endpoint(
            ami_mio::EndpointError::NoResolver { .. }
        ))
    ));
}

#[test]
fn hostnames_are_resolved_off_the_tick_before_each_attempt() {
    let (addr, server) = scripted_server(0);
    let options = DriverOptions {
        enforce_ip_endpoints: false,
        resolver: Some(std::sync::Arc::new(ami_mio::SystemResolver)),
        ..DriverOptions::default()
    };
    let mut driver = Driver::with_options(options).unwrap();
    let named = Endpoint::new("localhost", addr.port());
    let id = driver
        .add_server(ServerSpec::new(
            Config::new("named", "admin", "secret"),
            named,
        ))
        .unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    driver.shutdown(Duration::from_secs(5));
    server.join().unwrap();

    // A lookup that hangs until the test lets it go, then fails: the loop ticks on
    // meanwhile (a lookup inside a tick would never return), and the failure becomes
    // the attempt's error.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let slow_failure = move |host: &str, _: u16| {
        let _ = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
        Err(std::io::Error::other(format!("no such host {host}")))
    };
    let options = DriverOptions {
        enforce_ip_endpoints: false,
        resolver: Some(std::sync::Arc::new(slow_failure)),
        ..DriverOptions::default()
    };
    let mut driver = Driver::with_options(options).unwrap();
    let id = driver
        .add_server(ServerSpec::new(
            Config::new("nowhere", "admin", "secret"),
            Endpoint::new("pbx.invalid", 5038),
        ))
        .unwrap();
    driver.connect(id).unwrap();
    for _ in 0..5 {
        driver.tick_all(Duration::from_millis(10));
    }
    assert!(
        driver.node(id).last_close_reason().is_none(),
        "still looking up"
    );
    release.send(()).unwrap();
    while driver.node(id).last_close_reason().is_none() {
        driver.tick_all(Duration::from_millis(20));
    }
    match driver.node(id).last_close_reason() {
        Some(CloseReason::Transport(message)) => {
            assert!(message.contains("no such host pbx.invalid"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_panicking_listener_is_caught_and_counted() {
    let (addr, server) = scripted_server(5);
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("pbx1", addr)).unwrap();
    driver.on_event("Hangup", |_| panic!("listener bug"));
    let seen = Rc::new(RefCell::new(0));
    let counter = seen.clone();
    driver.on_any_event(move |_| *counter.borrow_mut() += 1);
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while *seen.borrow() < 5 && Instant::now() < deadline {
        driver.tick_all(Duration::from_millis(10));
    }
    assert_eq!(*seen.borrow(), 5);
    assert_eq!(driver.stats().callback_panics, 5);
    assert_eq!(driver.state(id), State::Healthy);
    driver.shutdown(Duration::from_secs(5));
    server.join().unwrap();
}

/// A peer that writes half a message and closes at once: the data and the end of the
/// stream arrive before the driver reads, in one readiness event. The short read of
/// that half must not be taken for a drained socket (no new event would come for the
/// end already queued): the driver reads on, sees the end, and the session is lost.
#[test]
fn an_end_queued_behind_data_is_seen() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let (closed, wait_closed) = std::sync::mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut writer, mut reader) = accept_with_banner(&listener);
        let (_, id) = read_action(&mut reader).unwrap();
        write!(
            writer,
            "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
        )
        .unwrap();
        wait_go.recv().unwrap();
        writer.write_all(b"Event: Hangup\r\nChannel: PJ").unwrap();
        writer.shutdown(std::net::Shutdown::Both).unwrap();
        closed.send(()).unwrap();
    });
    let mut driver = Driver::new().unwrap();
    let id = driver.add_server(spec("pbx1", addr)).unwrap();
    driver.connect(id).unwrap();
    driver.wait_ready(id, Duration::from_secs(5)).unwrap();
    // The driver does not tick while the peer writes and closes.
    go.send(()).unwrap();
    wait_closed.recv().unwrap();
    server.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while driver.state(id) == State::Healthy && Instant::now() < deadline {
        driver.tick_all(Duration::from_millis(10));
    }
    assert_ne!(
        driver.state(id),
        State::Healthy,
        "the end of the stream was missed"
    );
}
