//! The replay server against a plain `TcpStream` client and the `ami-proto` parser.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ami_proto::action::md5_key;
use ami_proto::parser::{Limits, Parsed, Parser};
use ami_proto::{Message, MessageKind, Secret};
use ami_tests::replay::{ReplayConfig, ReplayServer, capture_events, load_capture_events};

/// How long a test client waits for data before it fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/asterisk22-capture.raw")
}

/// Parser limits large enough for anything the fixture holds.
fn limits() -> Limits {
    Limits {
        max_frame_size: 16 << 20,
        max_command_output: 16 << 20,
    }
}

/// Three events of different sizes, one with a bare `\n` line end.
fn small_corpus() -> Vec<&'static str> {
    vec![
        "Event: Alpha\r\nPrivilege: call,all\r\nSeq: 0\r\n\r\n",
        "Event: Beta\r\nPrivilege: dialplan,all\r\nChannel: Local/100@test-00000001;1\r\nAppData: __a_rather_long_value_to_vary_the_frame_size_a_little__\r\n\r\n",
        "Event: Gamma\r\nMessage: ends in a bare newline\n\r\n",
    ]
}

fn corpus_bytes(frames: &[&str]) -> Arc<[u8]> {
    frames.concat().into_bytes().into()
}

/// The message's frame as sent: the parser's text lacks the terminating blank line,
/// which every frame of these tests writes as `\r\n`.
fn frame(message: &Message) -> String {
    format!("{}\r\n", message.as_str())
}

/// A blocking AMI client on a `TcpStream`, parsing with `ami-proto`.
struct Client {
    stream: TcpStream,
    parser: Parser,
    ready: VecDeque<Parsed>,
    eof: bool,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Client {
            stream,
            parser: Parser::new(limits()),
            ready: VecDeque::new(),
            eof: false,
            buf: vec![0; 256 * 1024],
        }
    }

    fn send(&mut self, request: &str) {
        self.stream.write_all(request.as_bytes()).expect("send");
    }

    /// The next parsed item, `None` at the end of the stream.
    fn next(&mut self) -> Option<Parsed> {
        while self.ready.is_empty() && !self.eof {
            let n = self.stream.read(&mut self.buf).expect("read");
            let ready = &mut self.ready;
            if n == 0 {
                self.eof = true;
                self.parser.finish(&mut |item| ready.push_back(item));
            } else {
                self.parser
                    .feed(&self.buf[..n], &mut |item| ready.push_back(item));
            }
        }
        self.ready.pop_front()
    }

    fn banner(&mut self) -> String {
        match self.next() {
            Some(Parsed::Banner(banner)) => banner,
            other => panic!("expected the banner, got {other:?}"),
        }
    }

    /// The next message; fails on a discard or the end of the stream.
    fn message(&mut self) -> Message {
        match self.next() {
            Some(Parsed::Message(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Logs in (the banner already read) and returns the response.
    fn login(&mut self, id: &str, username: &str, secret: &str) -> Message {
        self.send(&format!(
            "Action: Login\r\nActionID: {id}\r\nUsername: {username}\r\nSecret: {secret}\r\n\r\n"
        ));
        self.message()
    }

    /// Reads up to the `ReplayDone` marker: the events before it and the other
    /// messages (responses) met on the way.
    fn events_until_done(&mut self) -> (Vec<Message>, Vec<Message>, Message) {
        let mut events = Vec::new();
        let mut others = Vec::new();
        loop {
            let message = self.message();
            match message.event_name() {
                Some("ReplayDone") => return (events, others, message),
                Some(_) => events.push(message),
                None => others.push(message),
            }
        }
    }

    /// Asserts that the server closed the connection with nothing more to say.
    fn expect_eof(&mut self) {
        match self.next() {
            None => {}
            Some(item) => panic!("expected the end of the stream, got {item:?}"),
        }
    }
}

#[test]
fn capture_events_are_the_parsers_events_byte_for_byte() {
    let raw = std::fs::read(fixture()).unwrap();
    let (events, count) = load_capture_events(fixture()).unwrap();
    assert_eq!(count, 18_066);

    // The parser over the whole capture finds the same events, with the same bytes.
    let mut parser = Parser::new(limits());
    let mut expected = Vec::new();
    let mut banner = None;
    parser.feed(&raw, &mut |item| match item {
        Parsed::Banner(text) => banner = Some(text),
        Parsed::Message(m) if m.kind() == MessageKind::Event => expected.push(m),
        Parsed::Message(_) => {}
        Parsed::Discarded(d) => panic!("discard in the capture: {d:?}"),
    });
    assert_eq!(banner.as_deref(), Some("Asterisk Call Manager/11.0.0"));
    assert_eq!(expected.len(), count);
    let expected_bytes: String = expected.iter().map(frame).collect();
    // (Not `assert_eq!`: it would print 7 MB.)
    assert!(expected_bytes.as_bytes() == &events[..], "the bytes differ");

    // Every frame ends in a blank line; parsing the result gives back every event.
    assert!(events.ends_with(b"\r\n\r\n"));
    let mut parser = Parser::new(limits());
    let mut names = Vec::new();
    parser.feed(&events, &mut |item| match item {
        Parsed::Message(m) => names.push(m.event_name().expect("an event").to_owned()),
        other => panic!("unexpected {other:?}"),
    });
    let expected_names: Vec<_> = expected.iter().map(|m| m.event_name().unwrap()).collect();
    assert_eq!(names, expected_names);

    // Without a banner nothing is dropped but responses.
    let body = &raw[raw.iter().position(|&b| b == b'\n').unwrap() + 1..];
    let (again, again_count) = capture_events(body);
    assert_eq!(again_count, count);
    assert!(again == events, "the bytes differ");
}

#[test]
fn login_ping_exact_events_marker_and_logoff() {
    let frames = small_corpus();
    // More events than the 4 MiB blast buffer holds: the stream wraps around it.
    let total = 100_003;
    let server = ReplayServer::start(ReplayConfig::new(corpus_bytes(&frames), total)).unwrap();
    let mut client = Client::connect(server.addr());
    assert_eq!(client.banner(), "Asterisk Call Manager/11.0.0");

    let login = client.login("login-1", "admin", "anything");
    assert_eq!(login.response(), Some("Success"));
    assert_eq!(login.action_id(), Some("login-1"));
    assert_eq!(login.get("Message"), Some("Authentication accepted"));

    client.send("Action: Ping\r\nActionID: ping-1\r\n\r\n");
    let (events, mut others, done) = client.events_until_done();
    if others.is_empty() {
        // The pong may trail the marker (the reader thread answers concurrently).
        others.push(client.message());
    }
    assert_eq!(events.len() as u64, total);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(frame(event), frames[i % frames.len()], "event {i}");
    }
    assert_eq!(done.get("Events"), Some("100003"));
    assert_eq!(frame(&done), "Event: ReplayDone\r\nEvents: 100003\r\n\r\n");
    assert_eq!(others.len(), 1, "{others:?}");
    let pong = &others[0];
    assert_eq!(pong.response(), Some("Success"));
    assert_eq!(pong.action_id(), Some("ping-1"));
    assert_eq!(pong.get("Ping"), Some("Pong"));
    let timestamp = pong.get("Timestamp").unwrap();
    let (secs, micros) = timestamp.split_once('.').unwrap();
    assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
    assert_eq!(micros.len(), 6);

    // After the marker the connection stays open and still answers.
    client.send("Action: Ping\r\nActionID: ping-2\r\n\r\n");
    assert_eq!(client.message().action_id(), Some("ping-2"));

    client.send("Action: Logoff\r\nActionID: bye\r\n\r\n");
    let goodbye = client.message();
    assert_eq!(
        frame(&goodbye),
        "Response: Goodbye\r\nActionID: bye\r\nMessage: Thanks for all the fish.\r\n\r\n"
    );
    client.expect_eof();
    drop(client);

    assert!(server.wait_finished(1, Some(READ_TIMEOUT)));
    let report = server.stop();
    assert_eq!(report.events_sent, total);
    assert_eq!(report.connections, 1);
    assert_eq!(report.finished, 1);
    let corpus_len: usize = frames.iter().map(|f| f.len()).sum();
    let event_bytes = (total / 3) as usize * corpus_len + frames[0].len();
    assert!(report.bytes_sent as usize > event_bytes);
    assert!(report.streaming > Duration::ZERO);
    assert!(report.events_per_second().unwrap() > 0.0);
}

#[test]
fn pings_during_the_stream_are_answered_between_frames() {
    let frames = small_corpus();
    let total = 300_000;
    let config = ReplayConfig::new(corpus_bytes(&frames), total).with_chunk_bytes(4096);
    let server = ReplayServer::start(config).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();
    client.login("l", "u", "s");
    let mut events = 0_u64;
    let mut pongs = Vec::new();
    let mut sent = 0;
    loop {
        // A ping every 10,000 events, while the stream runs.
        if events.is_multiple_of(10_000) && sent < 20 && events / 10_000 >= sent {
            client.send(&format!("Action: Ping\r\nActionID: p-{sent}\r\n\r\n"));
            sent += 1;
        }
        let message = client.message();
        match message.event_name() {
            Some("ReplayDone") => break,
            Some(_) => {
                assert_eq!(frame(&message), frames[(events % 3) as usize]);
                events += 1;
            }
            None => pongs.push(message.action_id().unwrap().to_owned()),
        }
    }
    assert_eq!(events, total);
    while (pongs.len() as u64) < sent {
        pongs.push(client.message().action_id().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..sent).map(|i| format!("p-{i}")).collect();
    assert_eq!(pongs, expected, "responses in request order");
}

#[test]
fn wrong_secret_gets_an_error_and_the_connection_closes() {
    let config =
        ReplayConfig::new(corpus_bytes(&small_corpus()), 1000).with_credentials("admin", "s3cret");
    let server = ReplayServer::start(config).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();
    let refused = client.login("L-9", "admin", "wrong");
    assert_eq!(
        frame(&refused),
        "Response: Error\r\nActionID: L-9\r\nMessage: Authentication failed\r\n\r\n"
    );
    client.expect_eof();

    // A wrong username is refused the same way.
    let mut client = Client::connect(server.addr());
    client.banner();
    assert_eq!(
        client.login("L-10", "nobody", "s3cret").response(),
        Some("Error")
    );
    client.expect_eof();

    assert!(server.wait_finished(2, Some(READ_TIMEOUT)));
    let report = server.stop();
    assert_eq!(report.events_sent, 0);
    assert_eq!(report.connections, 2);
}

#[test]
fn configured_credentials_plain_and_md5() {
    let frames = small_corpus();
    let config = ReplayConfig::new(corpus_bytes(&frames), 10).with_credentials("admin", "s3cret");
    let server = ReplayServer::start(config).unwrap();

    // Plain, with the username in another case (Asterisk's lookup ignores case).
    let mut client = Client::connect(server.addr());
    client.banner();
    assert_eq!(
        client.login("1", "ADMIN", "s3cret").response(),
        Some("Success")
    );
    let (events, _, _) = client.events_until_done();
    assert_eq!(events.len(), 10);

    // MD5: Challenge, then Login with the key.
    let mut client = Client::connect(server.addr());
    client.banner();
    client.send("Action: Challenge\r\nActionID: c\r\nAuthType: md5\r\n\r\n");
    let challenge = client.message();
    assert_eq!(challenge.response(), Some("Success"));
    assert_eq!(challenge.action_id(), Some("c"));
    let challenge = challenge.get("Challenge").unwrap().to_owned();
    assert_eq!(challenge.len(), 9);
    assert!(challenge.bytes().all(|b| b.is_ascii_digit()));
    let key = md5_key(&challenge, &Secret::new("s3cret"));
    client.send(&format!(
        "Action: Login\r\nActionID: m\r\nAuthType: MD5\r\nUsername: admin\r\nKey: {key}\r\n\r\n"
    ));
    let login = client.message();
    assert_eq!(login.response(), Some("Success"));
    assert_eq!(login.action_id(), Some("m"));
    let (events, _, _) = client.events_until_done();
    assert_eq!(events.len(), 10);

    // MD5 with a wrong key, and MD5 without a challenge, are refused.
    let mut client = Client::connect(server.addr());
    client.banner();
    client.send("Action: Challenge\r\nAuthType: MD5\r\n\r\n");
    client.message();
    client.send(
        "Action: Login\r\nActionID: x\r\nAuthType: MD5\r\nUsername: admin\r\nKey: 00\r\n\r\n",
    );
    assert_eq!(client.message().response(), Some("Error"));
    client.expect_eof();
    let mut client = Client::connect(server.addr());
    client.banner();
    client.send(&format!(
        "Action: Login\r\nAuthType: MD5\r\nUsername: admin\r\nKey: {key}\r\n\r\n"
    ));
    assert_eq!(client.message().response(), Some("Error"));
    client.expect_eof();
}

#[test]
fn requests_are_answered_like_asterisk() {
    let frames = small_corpus();
    let server = ReplayServer::start(ReplayConfig::new(corpus_bytes(&frames), 5)).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();

    // Before the login only Login, Challenge and Logoff are allowed.
    client.send("Action: Ping\r\nActionID: early\r\n\r\n");
    assert_eq!(
        frame(&client.message()),
        "Response: Error\r\nActionID: early\r\nMessage: Permission denied\r\n\r\n"
    );
    // A lone blank line, and a request without Action.
    client.send("\r\n");
    assert_eq!(
        frame(&client.message()),
        "Response: Error\r\nMessage: Missing action in request\r\n\r\n"
    );
    client.send("ActionID: noaction\r\n\r\n");
    assert_eq!(
        frame(&client.message()),
        "Response: Error\r\nActionID: noaction\r\nMessage: Missing action in request\r\n\r\n"
    );
    client.send("Action: Challenge\r\nActionID: ch\r\n\r\n");
    assert_eq!(
        client.message().get("Message"),
        Some("Must specify AuthType")
    );
    // A line over 1024 bytes.
    client.send(&format!(
        "Action: Ping\r\nActionID: long\r\nX: {}\r\n\r\n",
        "y".repeat(1100)
    ));
    assert_eq!(
        frame(&client.message()),
        "Response: Error\r\nActionID: long\r\nMessage: Failed to parse message: line too long\r\n\r\n"
    );

    // Login, Ping and another action pipelined in one write, bare `\n` line ends, keys
    // in any case.
    client.send(
        "action: Login\nactionid: L\nUsername: u\nSecret: s\n\nAction: Ping\r\nActionID: P\r\n\r\nAction: Status\r\nActionID: S\r\n\r\n",
    );
    let login = client.message();
    assert_eq!(login.action_id(), Some("L"));
    assert_eq!(login.response(), Some("Success"));
    let (events, mut others, _) = client.events_until_done();
    assert_eq!(events.len(), 5);
    // The responses may come before, between or after the 5 events and the marker.
    while others.len() < 2 {
        others.push(client.message());
    }
    assert_eq!(others[0].action_id(), Some("P"));
    assert_eq!(others[0].get("Ping"), Some("Pong"));
    assert_eq!(
        frame(&others[1]),
        "Response: Success\r\nActionID: S\r\n\r\n"
    );

    // Another action without ActionID: none is echoed; a second Login.
    client.send("Action: CoreStatus\r\n\r\n");
    assert_eq!(frame(&client.message()), "Response: Success\r\n\r\n");
    client.send("Action: Login\r\nActionID: again\r\nUsername: u\r\nSecret: s\r\n\r\n");
    assert_eq!(
        frame(&client.message()),
        "Response: Success\r\nActionID: again\r\nMessage: Already authenticated\r\n\r\n"
    );

    // Logoff before the login is allowed too.
    let mut early = Client::connect(server.addr());
    early.banner();
    early.send("Action: Logoff\r\n\r\n");
    assert_eq!(early.message().response(), Some("Goodbye"));
    early.expect_eof();
}

#[test]
fn rate_paces_the_stream_and_responses_do_not_wait() {
    let frames = small_corpus();
    let total = 1_000;
    let config = ReplayConfig::new(corpus_bytes(&frames), total).with_rate(4_000);
    let server = ReplayServer::start(config).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();
    client.login("l", "u", "s");
    let started = Instant::now();
    // Half-way through, a ping is answered long before the stream ends.
    let mut events = 0;
    let mut pong_after = None;
    loop {
        let message = client.message();
        match message.event_name() {
            Some("ReplayDone") => break,
            Some(_) => {
                events += 1;
                if events == 500 {
                    client.send("Action: Ping\r\nActionID: p\r\n\r\n");
                }
            }
            None => pong_after = Some(events),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(events, total);
    // 1,000 events at 4,000/s: at least 0.25 s (less one pacing slice of 5 ms).
    assert!(elapsed >= Duration::from_millis(240), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let pong_after = pong_after.expect("the ping was answered");
    assert!(pong_after < 900, "pong after {pong_after} events");
}

#[test]
fn zero_events_sends_the_marker_at_once() {
    let server = ReplayServer::start(ReplayConfig::new(Vec::new(), 0)).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();
    client.login("l", "u", "s");
    assert_eq!(
        frame(&client.message()),
        "Event: ReplayDone\r\nEvents: 0\r\n\r\n"
    );
    // The client closing is a finished connection as well.
    drop(client);
    assert!(server.wait_finished(1, Some(READ_TIMEOUT)));
    assert_eq!(server.stop().events_sent, 0);
}

#[test]
fn tiny_chunks_still_carry_whole_frames() {
    let frames = small_corpus();
    let config = ReplayConfig::new(corpus_bytes(&frames), 2_000).with_chunk_bytes(1);
    let server = ReplayServer::start(config).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();
    client.login("l", "u", "s");
    let (events, _, _) = client.events_until_done();
    assert_eq!(events.len(), 2_000);
    assert_eq!(frame(&events[1_999]), frames[1_999 % 3]);
}

#[test]
fn concurrent_connections_each_get_the_exact_count() {
    let (events, _) = load_capture_events(fixture()).unwrap();
    let total = 25_000;
    let server = ReplayServer::start(ReplayConfig::new(events, total)).unwrap();
    let addr = server.addr();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                client.banner();
                client.login(&format!("l{i}"), "u", "s");
                let (events, others, done) = client.events_until_done();
                assert!(others.is_empty());
                assert_eq!(done.get("Events"), Some("25000"));
                client.send("Action: Logoff\r\n\r\n");
                assert_eq!(client.message().response(), Some("Goodbye"));
                client.expect_eof();
                events.len() as u64
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), total);
    }
    assert!(server.wait_finished(4, Some(READ_TIMEOUT)));
    let report = server.stop();
    assert_eq!(report.events_sent, 4 * total);
    assert_eq!(report.connections, 4);
}

#[test]
fn stop_closes_idle_and_stalled_connections() {
    let frames = small_corpus();
    let server = ReplayServer::start(ReplayConfig::new(corpus_bytes(&frames), u64::MAX)).unwrap();
    // One connection waits before its login; one is logged in and never reads, so
    // the server is blocked writing to it.
    let mut idle = Client::connect(server.addr());
    idle.banner();
    let mut stalled = Client::connect(server.addr());
    stalled.banner();
    stalled.login("l", "u", "s");
    std::thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    let report = server.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.connections, 2);
    assert_eq!(report.finished, 2);
    assert!(report.events_sent > 0);
    idle.expect_eof();
    // The stalled client gets what was in flight, then the end.
    let mut sink = vec![0; 1 << 20];
    loop {
        match stalled.stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[test]
fn a_client_leaving_mid_stream_ends_its_connection() {
    let frames = small_corpus();
    let server = ReplayServer::start(ReplayConfig::new(corpus_bytes(&frames), u64::MAX)).unwrap();
    let mut client = Client::connect(server.addr());
    client.banner();
    client.login("l", "u", "s");
    for _ in 0..1000 {
        assert!(client.message().event_name().is_some());
    }
    client.stream.shutdown(Shutdown::Both).unwrap();
    drop(client);
    assert!(server.wait_finished(1, Some(READ_TIMEOUT)));
    let report = server.stop();
    assert!(report.events_sent >= 1000);
    assert_eq!(report.finished, 1);
}

#[test]
fn invalid_configs_are_refused() {
    let not_whole = ReplayConfig::new(b"Event: A\r\n\r\nEvent: B\r\n".to_vec(), 1);
    let error = ReplayServer::start(not_whole).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let empty = ReplayConfig::new(Vec::new(), 1);
    assert!(ReplayServer::start(empty).is_err());
    let zero_rate = ReplayConfig::new(corpus_bytes(&small_corpus()), 1).with_rate(0);
    assert!(ReplayServer::start(zero_rate).is_err());
}

#[test]
fn binary_serves_one_connection_and_exits() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ami-replay"))
        .args(["--events", "20000", "--chunk-bytes", "65536"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line.trim().parse().expect("an address on stdout");

    let (capture, _) = load_capture_events(fixture()).unwrap();
    let mut expected = Vec::new();
    Parser::new(limits()).feed(&capture, &mut |item| {
        if let Parsed::Message(m) = item {
            expected.push(m);
        }
    });

    let mut client = Client::connect(addr);
    client.banner();
    client.login("l", "u", "s");
    let (events, others, done) = client.events_until_done();
    assert!(others.is_empty());
    assert_eq!(done.get("Events"), Some("20000"));
    assert_eq!(events.len(), 20_000);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(frame(event), frame(&expected[i % expected.len()]));
    }
    client.send("Action: Logoff\r\n\r\n");
    assert_eq!(client.message().response(), Some("Goodbye"));
    client.expect_eof();
    drop(client);

    let deadline = Instant::now() + READ_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ami-replay did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("20000 events"), "{stderr}");
}
