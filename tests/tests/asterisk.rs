//! Conformance tests of `ami-mio` (and through it `ami-proto`) against a real Asterisk 22.
//!
//! Asterisk comes from `scripts/asterisk.sh` (instance `a`): from the `AMI_ASTERISK_*`
//! environment if set, else the tests start it themselves and **fail** (never skip)
//! when it cannot start. See `ami_tests::asterisk`.
//!
//! Every test uses its own driver and connection(s) and may run in parallel with the
//! others. Broadcast events go to every session of the instance, so:
//! - connections that do not need the dialplan's events log in with `Events: call`
//!   (or `off`), and listeners filter by server key and by channel `Uniqueid`
//!   (set with `ChannelId`/`OtherChannelId`);
//! - the big floods run one at a time ([`FLOODS`]) so that their figures are not mixed;
//! - tests that create channels hold [`CALLS`] shared, the one that checks empty lists
//!   holds it exclusively.
//!
//! `cargo test --release -p ami-tests --test asterisk -- --nocapture` shows the flood
//! figures (`flood: ...`, `slow listener: ...`, `ping during flood: ...`). Debug builds
//! parse about 8 times slower and take only the flood's UserEvents ([`flood_events`]).
//! Asterisk closes any session that does not read for 100 ms once its socket buffers
//! are full, so the flood tests also fail when the machine starves this process of CPU;
//! their messages say how long the thread waited for a CPU.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ami_mio::tls::TlsSettings;
use ami_mio::{Driver, Filter, NotReady, ServerId, ServerSpec, WaitError};
use ami_proto::action::{self, EventMask, Originate};
use ami_proto::{ActionError, AuthMethod, CloseReason, Message, Reply, Stage, State};
use ami_tests::asterisk::{
    asterisk, connect_ready, driver, driver_with, spec, thread_cpu_time, thread_sched, try_driver,
    unique_id,
};

/// Tests that create channels hold this shared; [`lists_are_empty_without_calls`]
/// holds it exclusively.
static CALLS: RwLock<()> = RwLock::new(());

/// The large floods run one at a time: they share one Asterisk (and two CPUs here), and
/// the throughput figures would mix.
static FLOODS: Mutex<()> = Mutex::new(());

fn calls_shared() -> RwLockReadGuard<'static, ()> {
    CALLS.read().unwrap_or_else(PoisonError::into_inner)
}

fn calls_exclusive() -> RwLockWriteGuard<'static, ()> {
    CALLS.write().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the flood tests' turn, and favours the calling thread (see
/// [`favour_this_thread`]).
fn flood_turn() -> MutexGuard<'static, ()> {
    let turn = FLOODS.lock().unwrap_or_else(PoisonError::into_inner);
    favour_this_thread();
    turn
}

/// Raises the calling thread's priority to nice -10, where allowed (root, or
/// `CAP_SYS_NICE`; elsewhere nothing changes).
///
/// A flood test checks that the client reads Asterisk's flood fast enough that
/// Asterisk's 100 ms `writetimeout` never cuts the session. On a two-CPU machine with
/// other CPU-bound work beside the suite, the test thread could wait seconds for a CPU
/// (CI measured 4.3 s of a 6 s flood). Asterisk then cut the session, though nothing was
/// wrong in the client. With the thread favoured, the test measures the client, not the
/// scheduler: a client that stops reading still loses the session. The failure
/// messages still print how long the thread waited for a CPU.
fn favour_this_thread() {
    // SAFETY: `gettid` and `setpriority` take and return plain integers; a refusal
    // (EACCES without the privilege) leaves the priority as it was.
    unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, -10);
    }
}

/// Logs in with `Events: call` only: enough for `OriginateResponse`, and spares the
/// connection the dialplan floods of the other tests.
fn calls_only(spec: &mut ServerSpec) {
    spec.config.events = EventMask::Classes(vec!["call".into()]);
}

/// The event mask of the flooded connections. Release builds take everything the
/// flood makes (about 80,000 frames/s: Newexten, VarSet, UserEvent). Debug builds parse
/// about 8 times slower: at that rate the client needs most of a CPU, and on a
/// two-CPU machine it and Asterisk then starve each other until Asterisk's 100 ms
/// writetimeout closes the session; so they take only `user` (the flood's UserEvents,
/// a sixth of the frames) and `call` (OriginateResponse).
fn flood_events() -> EventMask {
    if cfg!(debug_assertions) {
        EventMask::Classes(vec!["user".into(), "call".into()])
    } else {
        EventMask::On
    }
}

/// How long this thread has waited for a CPU so far (zero where unknown).
fn run_queue_wait() -> Duration {
    thread_sched().map_or(Duration::ZERO, |s| s.run_queue_wait)
}

/// Ticks `driver` until `done` holds; panics after `limit` naming `what`.
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
        driver.tick_all(Duration::from_millis(20));
    }
}

/// The close reason of a closed server (for assertion messages).
fn close_reason(driver: &Driver, id: ServerId) -> Option<CloseReason> {
    driver
        .node(id)
        .connection()
        .and_then(ami_proto::Connection::close_reason)
        .cloned()
}

fn ok(result: Result<Reply, WaitError>, what: &str) -> Reply {
    result.unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
}

/// The `Response: Error` of a rejected action.
fn rejected(result: Result<Reply, WaitError>, what: &str) -> (String, Message) {
    match result {
        Err(WaitError::Failed(ActionError::Rejected { message, response })) => (message, *response),
        other => panic!("{what}: expected Rejected, got {other:?}"),
    }
}

/// The `OriginateResponse` event that completed an async Originate.
fn originate_event(reply: &Reply) -> &Message {
    assert_eq!(reply.response.response(), Some("Success"), "{reply:?}");
    assert_eq!(
        reply.response.get("Message"),
        Some("Originate successfully queued")
    );
    let event = reply
        .events
        .iter()
        .find(|m| m.event_name() == Some("OriginateResponse"))
        .unwrap_or_else(|| panic!("no OriginateResponse in {reply:?}"));
    assert_eq!(event.action_id(), reply.response.action_id());
    event
}

fn list_items<'a>(reply: &'a Reply, name: &'a str) -> impl Iterator<Item = &'a Message> + 'a {
    reply
        .events
        .iter()
        .filter(move |m| m.event_name() == Some(name))
}

/// Checks that an event list ended with `<complete>` and its count matches.
fn assert_list(reply: &Reply, complete: &str) {
    assert_eq!(
        reply.response.get("EventList").map(str::to_ascii_lowercase),
        Some("start".to_owned()),
        "{reply:?}"
    );
    let end = reply.list_end.as_ref().expect("list end");
    assert_eq!(end.event_name(), Some(complete));
    assert_eq!(end.get("EventList"), Some("Complete"));
    assert_eq!(
        end.get("ListItems"),
        Some(reply.events.len().to_string().as_str()),
        "{reply:?}"
    );
}

/// A call placed with `Originate` into `Local/<exten>@test`, connected to `Wait(secs)`.
#[derive(Debug)]
struct Call {
    /// The `;1` channel (the one `OriginateResponse` names).
    channel: String,
    /// Uniqueid of the `;1` channel.
    one: String,
    /// Uniqueid of the `;2` channel (which runs the dialplan).
    two: String,
}

impl Call {
    fn originate(exten: &str, wait_secs: u32) -> (Call, Originate) {
        let one = unique_id("one");
        let two = unique_id("two");
        let originate =
            Originate::application(format!("Local/{exten}@test"), "Wait", wait_secs.to_string())
                .with_channel_id(one.clone())
                .with_other_channel_id(two.clone());
        let call = Call {
            channel: String::new(),
            one,
            two,
        };
        (call, originate)
    }

    /// Places the call and waits until it is answered (Reason 4).
    fn up(driver: &mut Driver, id: ServerId, exten: &str) -> Call {
        let (mut call, originate) = Call::originate(exten, 30);
        let reply = ok(driver.send_and_wait(id, originate), "Originate");
        let event = originate_event(&reply);
        assert_eq!(event.get("Response"), Some("Success"), "{event:?}");
        assert_eq!(event.get("Reason"), Some("4"), "{event:?}");
        assert_eq!(event.get("Uniqueid"), Some(call.one.as_str()));
        call.channel = event.get("Channel").expect("Channel").to_owned();
        assert!(
            call.channel.starts_with(&format!("Local/{exten}@test-"))
                && call.channel.ends_with(";1"),
            "{call:?}"
        );
        call
    }

    fn hangup(&self, driver: &mut Driver, id: ServerId) {
        let reply = ok(
            driver.send_and_wait(id, action::Hangup::new(self.channel.clone())),
            "Hangup",
        );
        assert_eq!(reply.response.response(), Some("Success"));
    }
}

// ---------------------------------------------------------------------------------
// 1. Banner and version

#[test]
fn banner_and_version() {
    let (mut driver, id) = driver_with("admin", calls_only);
    assert_eq!(driver.banner(id), Some("Asterisk Call Manager/11.0.0"));
    let reply = ok(
        driver.send_and_wait(id, action::Command::new("core show version")),
        "core show version",
    );
    let output = reply.output();
    assert!(
        output.iter().any(|line| line.starts_with("Asterisk 22")),
        "{output:?}"
    );
    if !asterisk().version.is_empty() {
        assert!(output[0].contains(&asterisk().version), "{output:?}");
    }
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 2. Logins

/// Logged in and usable: a Ping works, and Logoff closes gracefully.
fn assert_usable_then_logoff(mut driver: Driver, id: ServerId) {
    assert!(driver.state(id).is_ready());
    let reply = ok(driver.send_and_wait(id, action::Ping), "Ping");
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    assert!(driver.shutdown(Duration::from_secs(5)));
    assert_eq!(driver.state(id), State::Closed);
    assert_eq!(close_reason(&driver, id), Some(CloseReason::Graceful));
}

#[test]
fn plain_login() {
    let (driver, id) = driver("admin");
    assert_usable_then_logoff(driver, id);
}

#[test]
fn md5_login() {
    let (driver, id) = driver_with("admin", |spec| spec.config.auth = AuthMethod::Md5);
    assert_usable_then_logoff(driver, id);
}

fn tls_spec(server_name: &str) -> impl FnOnce(&mut ServerSpec) + '_ {
    move |spec: &mut ServerSpec| {
        spec.endpoint = asterisk().tls_endpoint();
        spec.tls = Some(TlsSettings {
            server_name: server_name.to_owned(),
            ca_file: Some(asterisk().tls_ca.clone()),
            roots: Default::default(),
        });
        calls_only(spec);
    }
}

#[test]
fn tls_login_with_the_certificate_names() {
    // The script's server certificate carries IP:127.0.0.1 and DNS:localhost.
    for name in ["127.0.0.1", "localhost"] {
        let (mut driver, id) = driver_with("admin", tls_spec(name));
        assert_eq!(driver.banner(id), Some("Asterisk Call Manager/11.0.0"));
        // A large reply crosses many TLS records.
        let reply = ok(
            driver.send_and_wait(id, action::Command::new("core show help")),
            "core show help over TLS",
        );
        assert!(reply.output().len() > 100);
        assert_usable_then_logoff(driver, id);
    }
}

#[test]
fn tls_refuses_a_certificate_for_another_name() {
    let mut spec = spec("admin");
    tls_spec("ami.invalid")(&mut spec);
    let (driver, id, result) = try_driver(spec);
    match result {
        // A failed handshake is retried like any transport error; the wait ends when
        // the circuit opens (or runs out) and names the failure.
        Err(
            WaitError::NotReady(NotReady::CircuitOpen {
                last: Some(CloseReason::Transport(message)),
            })
            | WaitError::TimedOut {
                last: Some(CloseReason::Transport(message)),
                ..
            },
        ) => {
            assert!(
                message.contains("certificate") || message.contains("Certificate"),
                "{message}"
            );
        }
        other => panic!("expected a TLS verification failure, got {other:?}"),
    }
    assert_eq!(driver.state(id), State::Closed);
}

#[test]
fn events_off_gets_no_broadcasts_but_actions_work() {
    let _calls = calls_shared();
    const COUNT: usize = 2000;
    let mut driver = Driver::new().unwrap();
    let mut trigger_spec = spec("admin");
    trigger_spec.config.events = EventMask::Classes(vec!["user".into(), "call".into()]);
    let trigger = connect_ready(&mut driver, trigger_spec);
    let mut off_spec = spec("admin");
    off_spec.config.events = EventMask::Off;
    let off = connect_ready(&mut driver, off_spec);
    let off_key = driver.server_key(off).to_owned();
    let trigger_key = driver.server_key(trigger).to_owned();

    let off_events = Rc::new(Cell::new(0u64));
    let counter = off_events.clone();
    driver.subscribe(Filter::any().server(off_key), move |_| {
        counter.set(counter.get() + 1)
    });
    let flood = watch_flood(&mut driver, &trigger_key, COUNT, |_| {});
    let started = start_flood(&mut driver, trigger, &flood, COUNT);

    // Actions on the events-off connection during the flood.
    let pong = ok(driver.send_and_wait(off, action::Ping), "Ping");
    assert_eq!(pong.response.get("Ping"), Some("Pong"));
    tick_until(&mut driver, Duration::from_secs(60), "FloodDone", |_| {
        flood.state.borrow().done.is_some()
    });
    assert_eq!(flood.state.borrow().received, COUNT as u64);
    // List items are not broadcasts: `Events: off` does not hold them back.
    let list = ok(
        driver.send_and_wait(off, action::CoreShowChannels),
        "CoreShowChannels",
    );
    assert_list(&list, "CoreShowChannelsComplete");
    let uptime = ok(
        driver.send_and_wait(off, action::Command::new("core show uptime")),
        "Command",
    );
    assert!(uptime.output()[0].starts_with("System uptime:"));
    tick_until(
        &mut driver,
        Duration::from_secs(10),
        "the flood's OriginateResponse",
        |_| started.borrow().is_some(),
    );

    assert_eq!(
        off_events.get(),
        0,
        "events reached the Events: off connection"
    );
    let stats = driver.connection_stats(off).unwrap();
    assert_eq!(stats.events.queued, 0, "{stats:?}");
    assert!(driver.state(off).is_ready() && driver.state(trigger).is_ready());
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 3. Failed login

#[test]
fn failed_login_closes_with_authentication_failed() {
    for auth in [AuthMethod::Plain, AuthMethod::Md5] {
        let mut spec = spec("admin");
        spec.config.secret = "wrong-secret".into();
        spec.config.auth = auth;
        let started = Instant::now();
        let (mut driver, id, result) = try_driver(spec);
        match result {
            Err(WaitError::NotReady(NotReady::Refused(CloseReason::AuthenticationFailed {
                message,
            }))) => {
                assert_eq!(message, "Authentication failed", "{auth:?}")
            }
            other => panic!("{auth:?}: expected AuthenticationFailed, got {other:?}"),
        }
        // Asterisk sleeps 1 s before it answers a failed login (PROTOCOL-NOTES 11).
        assert!(started.elapsed() >= Duration::from_millis(900), "{auth:?}");
        assert_eq!(driver.state(id), State::Closed);
        assert_eq!(
            driver.send(id, action::Ping, |_| {}).unwrap_err(),
            ami_proto::SendError::NotReady {
                state: State::Closed
            }
        );
        // Nothing more happens on the closed connection.
        driver.tick_all(Duration::from_millis(10));
        assert!(matches!(
            close_reason(&driver, id),
            Some(CloseReason::AuthenticationFailed { .. })
        ));
    }
}

/// What the client relies on: after a failed login Asterisk answers `Authentication
/// failed` and then disconnects (PROTOCOL-NOTES 11). Checked on a raw socket.
#[test]
fn asterisk_disconnects_after_a_failed_login() {
    let env = asterisk();
    let stream = TcpStream::connect((env.host.as_str(), env.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut banner = String::new();
    reader.read_line(&mut banner).unwrap();
    assert_eq!(banner, "Asterisk Call Manager/11.0.0\r\n");
    writer
        .write_all(b"Action: Login\r\nActionID: raw-1\r\nUsername: admin\r\nSecret: nope\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    loop {
        let mut line = String::new();
        // Ok(0) is the end of stream; a timeout fails the test.
        if reader.read_line(&mut line).expect("read until EOF") == 0 {
            break;
        }
        text.push_str(&line);
    }
    assert_eq!(
        text,
        "Response: Error\r\nActionID: raw-1\r\nMessage: Authentication failed\r\n\r\n"
    );
}

// ---------------------------------------------------------------------------------
// 4. Ping

#[test]
fn ping_answers_pong_with_a_timestamp() {
    let (mut driver, id) = driver_with("admin", calls_only);
    let reply = ok(driver.send_and_wait(id, action::Ping), "Ping");
    assert_eq!(reply.response.response(), Some("Success"));
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    let stamp = reply.response.get("Timestamp").expect("Timestamp");
    let (secs, micros) = stamp.split_once('.').expect("epoch.micro");
    let secs: u64 = secs.parse().unwrap();
    assert_eq!(micros.len(), 6, "{stamp}");
    assert!(micros.bytes().all(|b| b.is_ascii_digit()), "{stamp}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) < 60, "{stamp} vs {now}");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 5. Command

#[test]
fn command_output_lines() {
    let (mut driver, id) = driver_with("admin", calls_only);
    let reply = ok(
        driver.send_and_wait(id, action::Command::new("core show uptime")),
        "core show uptime",
    );
    assert_eq!(
        reply.response.get("Message"),
        Some("Command output follows")
    );
    let output = reply.output();
    assert_eq!(output.len(), 2, "{output:?}");
    assert!(output[0].starts_with("System uptime: "), "{output:?}");
    assert!(output[1].starts_with("Last reload: "), "{output:?}");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn command_unknown_is_rejected_with_its_output() {
    let (mut driver, id) = driver_with("admin", calls_only);
    let (message, response) = rejected(
        driver.send_and_wait(id, action::Command::new("nosuch command")),
        "unknown command",
    );
    // Asterisk 22 keeps `Command output follows` even on Error.
    assert_eq!(message, "Command output follows");
    let output = response.output_lines();
    assert_eq!(output.len(), 1, "{output:?}");
    assert!(
        output[0].starts_with("No such command 'nosuch command'"),
        "{output:?}"
    );
    // A known command that fails is an Error too, with its own output.
    let (_, response) = rejected(
        driver.send_and_wait(id, action::Command::new("dialplan show nosuch@test")),
        "failing command",
    );
    assert_eq!(
        response.output_lines(),
        [
            "There is no existence of nosuch@test extension",
            "Command 'dialplan show nosuch@test' failed."
        ]
    );
    // The connection is still fine.
    ok(driver.send_and_wait(id, action::Ping), "Ping");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn command_empty_output_is_one_empty_line() {
    let (mut driver, id) = driver_with("admin", calls_only);
    // `core clear profile` prints nothing whatever the state of the system.
    let reply = ok(
        driver.send_and_wait(id, action::Command::new("core clear profile")),
        "core clear profile",
    );
    assert_eq!(reply.output(), [""]);
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn command_large_output_is_one_message() {
    let (mut driver, id) = driver_with("admin", calls_only);
    let reply = ok(
        driver.send_and_wait(id, action::Command::new("core show help")),
        "core show help",
    );
    let output = reply.output();
    println!(
        "core show help: {} bytes, {} lines",
        reply.response.len(),
        output.len()
    );
    assert!(
        reply.response.len() > 10_000,
        "{} bytes",
        reply.response.len()
    );
    assert!(output.len() > 100, "{} lines", output.len());
    assert!(output.iter().any(|l| l.contains("core show help")));
    assert!(output.iter().any(|l| l.contains("manager show commands")));
    let stats = driver.connection_stats(id).unwrap();
    assert_eq!(stats.discards, 0, "{stats:?}");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 6. Lists

#[test]
fn lists_are_empty_without_calls() {
    let _calls = calls_exclusive();
    let (mut driver, id) = driver_with("admin", calls_only);
    // Channels of earlier tests may still be hanging up.
    let deadline = Instant::now() + Duration::from_secs(40);
    let channels = loop {
        let reply = ok(
            driver.send_and_wait(id, action::CoreShowChannels),
            "CoreShowChannels",
        );
        assert_list(&reply, "CoreShowChannelsComplete");
        if reply.events.is_empty() {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "channels never went away: {:?}",
            reply.events
        );
        driver.tick_all(Duration::from_millis(100));
    };
    assert_eq!(
        channels.response.get("Message"),
        Some("Channels will follow")
    );

    let status = ok(
        driver.send_and_wait(id, action::Status::default()),
        "Status",
    );
    assert_list(&status, "StatusComplete");
    assert!(status.events.is_empty(), "{status:?}");
    assert_eq!(status.list_end.as_ref().unwrap().get("Items"), Some("0"));

    // An unknown channel is an Error, not an empty list (PROTOCOL-NOTES 20).
    let (message, _) = rejected(
        driver.send_and_wait(
            id,
            action::Status {
                channel: Some("Local/nosuch@test-ffffffff;1".into()),
                variables: None,
            },
        ),
        "Status of an unknown channel",
    );
    assert_eq!(message, "No such channel");

    let queues = ok(
        driver.send_and_wait(id, action::QueueStatus::default()),
        "QueueStatus",
    );
    assert_list(&queues, "QueueStatusComplete");
    let params: Vec<_> = list_items(&queues, "QueueParams").collect();
    let support = params
        .iter()
        .find(|m| m.get("Queue") == Some("support"))
        .expect("queue support");
    assert_eq!(support.get("Calls"), Some("0"));
    assert_eq!(list_items(&queues, "QueueEntry").count(), 0, "{queues:?}");
    let member = list_items(&queues, "QueueMember")
        .find(|m| m.get("Queue") == Some("support"))
        .expect("member of support");
    assert_eq!(member.get("Name"), Some("Agent One"));
    assert_eq!(member.get("Paused"), Some("1"));

    let summary = ok(
        driver.send_and_wait(id, action::QueueSummary::default()),
        "QueueSummary",
    );
    assert_list(&summary, "QueueSummaryComplete");
    let support = list_items(&summary, "QueueSummary")
        .find(|m| m.get("Queue") == Some("support"))
        .expect("summary of support");
    assert_eq!(support.get("Callers"), Some("0"));
    assert_eq!(support.get("LoggedIn"), Some("1"));
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn lists_show_a_call_that_is_up() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    let call = Call::up(&mut driver, id, "wait");

    // `OriginateResponse` comes when the call is answered; the `;1` channel
    // shows `AppDial2` (the dial API's placeholder) until Asterisk's
    // originate thread starts `Wait` on it a moment later. So the list is
    // asked again until it shows `Wait`, within a bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (channels, mine) = loop {
        let channels = ok(
            driver.send_and_wait(id, action::CoreShowChannels),
            "CoreShowChannels",
        );
        assert_list(&channels, "CoreShowChannelsComplete");
        let mine: Vec<_> = list_items(&channels, "CoreShowChannel")
            .filter(|m| m.get("Linkedid") == Some(call.one.as_str()))
            .cloned()
            .collect();
        let running = mine.iter().any(|m| {
            m.get("Uniqueid") == Some(call.one.as_str()) && m.get("Application") == Some("Wait")
        });
        if running {
            break (channels, mine);
        }
        assert!(Instant::now() < deadline, ";1 never ran Wait: {channels:?}");
    };
    assert_eq!(mine.len(), 2, "{channels:?}");
    let one = mine
        .iter()
        .find(|m| m.get("Uniqueid") == Some(call.one.as_str()))
        .expect(";1 listed");
    assert_eq!(one.get("Channel"), Some(call.channel.as_str()));
    let two = mine
        .iter()
        .find(|m| m.get("Uniqueid") == Some(call.two.as_str()))
        .expect(";2 listed");
    assert_eq!(
        two.get("Channel"),
        Some(call.channel.replace(";1", ";2").as_str())
    );
    assert_eq!(two.get("ChannelStateDesc"), Some("Up"));

    let status = ok(
        driver.send_and_wait(id, action::Status::default()),
        "Status",
    );
    assert_list(&status, "StatusComplete");
    assert!(
        list_items(&status, "Status").any(|m| m.get("Uniqueid") == Some(call.one.as_str())),
        "{status:?}"
    );
    let one_status = ok(
        driver.send_and_wait(
            id,
            action::Status {
                channel: Some(call.channel.clone()),
                variables: Some(vec!["CHANNEL(name)".into()]),
            },
        ),
        "Status of one channel",
    );
    assert_list(&one_status, "StatusComplete");
    assert_eq!(one_status.events.len(), 1, "{one_status:?}");
    let item = &one_status.events[0];
    assert_eq!(item.event_name(), Some("Status"));
    assert_eq!(item.get("Channel"), Some(call.channel.as_str()));
    assert_eq!(item.get("Uniqueid"), Some(call.one.as_str()));

    call.hangup(&mut driver, id);
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn queue_lists_show_a_waiting_caller() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    // `queue` answers, then waits in queue `support` (its one member is paused).
    let call = Call::up(&mut driver, id, "queue");
    let two = call.channel.replace(";1", ";2");

    // The caller joins the queue just after the answer: poll for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let queues = loop {
        let queues = ok(
            driver.send_and_wait(
                id,
                action::QueueStatus {
                    queue: Some("support".into()),
                    member: None,
                },
            ),
            "QueueStatus",
        );
        assert_list(&queues, "QueueStatusComplete");
        if list_items(&queues, "QueueEntry").any(|m| m.get("Channel") == Some(two.as_str())) {
            break queues;
        }
        assert!(Instant::now() < deadline, "caller never queued: {queues:?}");
        driver.tick_all(Duration::from_millis(50));
    };
    let entry = list_items(&queues, "QueueEntry")
        .find(|m| m.get("Channel") == Some(two.as_str()))
        .unwrap();
    assert_eq!(entry.get("Queue"), Some("support"));
    assert_eq!(entry.get("Uniqueid"), Some(call.two.as_str()));
    let params = list_items(&queues, "QueueParams")
        .next()
        .expect("QueueParams");
    let calls: u32 = params.get("Calls").unwrap().parse().unwrap();
    assert!(calls >= 1, "{params:?}");

    let summary = ok(
        driver.send_and_wait(
            id,
            action::QueueSummary {
                queue: Some("support".into()),
            },
        ),
        "QueueSummary",
    );
    assert_list(&summary, "QueueSummaryComplete");
    assert_eq!(summary.events.len(), 1, "{summary:?}");
    let callers: u32 = summary.events[0].get("Callers").unwrap().parse().unwrap();
    assert!(callers >= 1, "{summary:?}");

    call.hangup(&mut driver, id);
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 7. SetVar / GetVar

#[test]
fn setvar_getvar_global() {
    let (mut driver, id) = driver_with("admin", calls_only);
    let name = unique_id("AMITEST_G").replace('-', "_");
    // Inner and trailing blanks survive the round trip (PROTOCOL-NOTES 4).
    let value = "hello  world ";
    let set = ok(
        driver.send_and_wait(id, action::SetVar::global(name.clone(), value)),
        "SetVar",
    );
    assert_eq!(set.response.get("Message"), Some("Variable Set"));
    let get = ok(
        driver.send_and_wait(id, action::GetVar::global(name.clone())),
        "GetVar",
    );
    assert_eq!(get.response.get("Variable"), Some(name.as_str()));
    assert_eq!(get.response.get("Value"), Some(value));
    // An unset variable reads as empty, not as an error.
    let unset = ok(
        driver.send_and_wait(id, action::GetVar::global(format!("{name}_UNSET"))),
        "GetVar unset",
    );
    assert_eq!(unset.response.get("Value"), Some(""));
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn setvar_getvar_on_a_channel() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    let call = Call::up(&mut driver, id, "wait");
    ok(
        driver.send_and_wait(
            id,
            action::SetVar::on_channel(call.channel.clone(), "AMITEST_VAR", "on the channel"),
        ),
        "SetVar on a channel",
    );
    let get = ok(
        driver.send_and_wait(
            id,
            action::GetVar::on_channel(call.channel.clone(), "AMITEST_VAR"),
        ),
        "GetVar on a channel",
    );
    assert_eq!(get.response.get("Value"), Some("on the channel"));
    // Functions work too.
    let name = ok(
        driver.send_and_wait(
            id,
            action::GetVar::on_channel(call.channel.clone(), "CHANNEL(name)"),
        ),
        "GetVar CHANNEL(name)",
    );
    assert_eq!(name.response.get("Value"), Some(call.channel.as_str()));
    // The other half does not have it.
    let other = ok(
        driver.send_and_wait(
            id,
            action::GetVar::on_channel(call.channel.replace(";1", ";2"), "AMITEST_VAR"),
        ),
        "GetVar on ;2",
    );
    assert_eq!(other.response.get("Value"), Some(""));
    call.hangup(&mut driver, id);
    // The channel is gone: an Error.
    let (message, _) = rejected(
        driver.send_and_wait(
            id,
            action::GetVar::on_channel(call.channel.clone(), "AMITEST_VAR"),
        ),
        "GetVar on a hung-up channel",
    );
    assert_eq!(message, "No such channel");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 8. Originate outcomes

/// Originates `Local/<exten>@test` into `Wait(1)` (with channel IDs `one-...` and
/// `two-...` when `ids`) and returns its `OriginateResponse` headers `(Response,
/// Reason, Uniqueid)` and how long it took.
fn originate_outcome(
    driver: &mut Driver,
    id: ServerId,
    exten: &str,
    ids: bool,
    timeout: Option<Duration>,
) -> (String, String, String, Duration) {
    let (_, mut originate) = Call::originate(exten, 1);
    if !ids {
        originate.channel_id = None;
        originate.other_channel_id = None;
    }
    originate.timeout = timeout;
    let started = Instant::now();
    let reply = ok(driver.send_and_wait(id, originate), exten);
    let event = originate_event(&reply);
    let get = |key| event.get(key).unwrap_or_default().to_owned();
    (
        get("Response"),
        get("Reason"),
        get("Uniqueid"),
        started.elapsed(),
    )
}

#[test]
fn originate_answered_busy_congestion() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    let (response, reason, uniqueid, _) = originate_outcome(&mut driver, id, "answer", true, None);
    assert_eq!((response.as_str(), reason.as_str()), ("Success", "4"));
    assert!(uniqueid.starts_with("one-"), "{uniqueid}");
    let (response, reason, uniqueid, _) = originate_outcome(&mut driver, id, "answer", false, None);
    assert_eq!((response.as_str(), reason.as_str()), ("Success", "4"));
    assert_ne!(uniqueid, "<unknown>");

    let (response, reason, uniqueid, _) = originate_outcome(&mut driver, id, "busy", false, None);
    assert_eq!((response.as_str(), reason.as_str()), ("Failure", "5"));
    assert_eq!(uniqueid, "<unknown>");
    // With a ChannelId, Asterisk 22 reports it even on failure (not `<unknown>`).
    let (response, reason, uniqueid, _) = originate_outcome(&mut driver, id, "busy", true, None);
    assert_eq!((response.as_str(), reason.as_str()), ("Failure", "5"));
    assert!(uniqueid.starts_with("one-"), "{uniqueid}");

    let (response, reason, _, _) = originate_outcome(&mut driver, id, "congestion", false, None);
    assert_eq!((response.as_str(), reason.as_str()), ("Failure", "8"));
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn originate_no_answer_times_out_with_reason_3() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    let timeout = Duration::from_secs(2);
    let (response, reason, _, took) =
        originate_outcome(&mut driver, id, "noanswer", false, Some(timeout));
    assert_eq!((response.as_str(), reason.as_str()), ("Failure", "3"));
    assert!(
        took >= timeout - Duration::from_millis(100) && took < timeout * 3,
        "{took:?}"
    );
    assert!(driver.shutdown(Duration::from_secs(5)));
}

#[test]
fn originate_to_nonexistent_extensions() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    // A Local channel to a missing extension is queued, then fails at once with
    // Reason 0 (what Asterisk 22 does: no immediate Error).
    let (response, reason, uniqueid, took) =
        originate_outcome(&mut driver, id, "nosuch", false, None);
    assert_eq!((response.as_str(), reason.as_str()), ("Failure", "0"));
    assert_eq!(uniqueid, "<unknown>");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A missing dialplan target is checked up front: an immediate Error.
    let (message, _) = rejected(
        driver.send_and_wait(
            id,
            Originate::extension("Local/answer@test", "nosuch", "test", 1),
        ),
        "Originate into nosuch@test",
    );
    assert_eq!(message, "Extension does not exist.");
    // So is a missing channel.
    let (message, _) = rejected(
        driver.send_and_wait(
            id,
            action::Action::new("Originate").header("Exten", "answer"),
        ),
        "Originate without a channel",
    );
    assert_eq!(message, "Channel not specified");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 9. No `call` permission: the OriginateResponse never comes

#[test]
fn originate_without_call_permission_times_out() {
    let _calls = calls_shared();
    // Asks for `call` events: the user's missing `call` read permission, not the event
    // mask, is what keeps OriginateResponse away. (No dialplan or user classes: this
    // connection lives 11 s, and the floods of other tests would reach it.)
    let (mut driver, id) = driver_with("nocall", calls_only);
    let answer_timeout = Duration::from_secs(1);
    let (_, originate) = Call::originate("answer", 1);
    let originate = originate.with_timeout(answer_timeout);
    let event_timeout = answer_timeout + Duration::from_secs(10);
    let started = Instant::now();
    match driver.send_and_wait(id, originate) {
        Err(WaitError::Failed(ActionError::Timeout { stage, timeout })) => {
            assert_eq!(stage, Stage::OriginateEvent);
            assert_eq!(timeout, event_timeout);
        }
        other => panic!("expected an OriginateEvent timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= event_timeout && took < event_timeout + Duration::from_secs(5),
        "{took:?}"
    );
    // The session is fine.
    ok(driver.send_and_wait(id, action::Ping), "Ping");
    assert!(driver.shutdown(Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------------
// 10–12. Floods

/// What a flood listener saw.
#[derive(Debug, Default)]
struct FloodState {
    /// How often each `Seq` arrived.
    seen: Vec<u8>,
    /// `Flood` events received.
    received: u64,
    /// `Seq` values out of range or unparsable.
    bad: u64,
    /// The `Count` of `FloodDone`, once it arrived.
    done: Option<usize>,
}

impl FloodState {
    fn duplicates(&self) -> usize {
        self.seen.iter().filter(|&&n| n > 1).count()
    }

    fn missing(&self) -> usize {
        self.seen.iter().filter(|&&n| n == 0).count()
    }
}

/// A flood of one test: the IDs of its two Local channels and what arrived.
struct Flood {
    one: String,
    two: String,
    state: Rc<RefCell<FloodState>>,
}

impl Drop for Flood {
    /// A failed test must not leave its flood running into the next tests: hang up the
    /// `;1` channel, found by its Uniqueid, on a fresh connection. Never panics.
    fn drop(&mut self) {
        if std::thread::panicking() {
            hang_up_uniqueid(&self.one);
        }
    }
}

/// Hangs up the channel whose Uniqueid is `uniqueid`, if any (best effort). Runs while
/// a test unwinds, so it must not panic: no `unwrap`, no `expect`.
fn hang_up_uniqueid(uniqueid: &str) {
    let Some(env) = std::panic::catch_unwind(asterisk).ok() else {
        return;
    };
    let Ok(mut driver) = Driver::new() else {
        return;
    };
    let mut config = ami_proto::Config::new(unique_id("cleanup"), "admin", env.secret.clone());
    config.events = EventMask::Off;
    let Ok(id) = driver.add_server(ServerSpec::new(config, env.endpoint())) else {
        return;
    };
    if driver.connect(id).is_err() || driver.wait_ready(id, Duration::from_secs(10)).is_err() {
        return;
    }
    if let Ok(list) = driver.send_and_wait(id, action::CoreShowChannels) {
        let channel = list_items(&list, "CoreShowChannel")
            .find(|m| m.get("Uniqueid") == Some(uniqueid))
            .and_then(|m| m.get("Channel"))
            .map(str::to_owned);
        if let Some(channel) = channel {
            let _ = driver.send_and_wait(id, action::Hangup::new(channel));
        }
    }
    driver.shutdown(Duration::from_secs(2));
}

/// Subscribes to the `UserEvent`s of a new flood (`Flood` with `Seq`, then
/// `FloodDone`) arriving on server `key`; `on_event` runs on each of them.
fn watch_flood(
    driver: &mut Driver,
    key: &str,
    count: usize,
    mut on_event: impl FnMut(&ami_proto::Event) + 'static,
) -> Flood {
    let flood = Flood {
        one: unique_id("flood1"),
        two: unique_id("flood2"),
        state: Rc::new(RefCell::new(FloodState {
            seen: vec![0; count],
            ..FloodState::default()
        })),
    };
    let state = flood.state.clone();
    // The flood runs on the `;2` channel, whose Uniqueid is the OtherChannelId.
    let filter = Filter::event("UserEvent")
        .server(key)
        .header("Uniqueid", flood.two.clone());
    driver.subscribe(filter, move |event| {
        on_event(event);
        let mut state = state.borrow_mut();
        match event.get("UserEvent") {
            Some("Flood") => {
                state.received += 1;
                match event.get("Seq").and_then(|s| s.parse::<usize>().ok()) {
                    Some(seq) if seq < state.seen.len() => {
                        state.seen[seq] = state.seen[seq].saturating_add(1)
                    }
                    _ => state.bad += 1,
                }
            }
            Some("FloodDone") => {
                state.done = event.get("Count").and_then(|c| c.parse().ok());
            }
            _ => state.bad += 1,
        }
    });
    flood
}

/// Originates `Local/flood@test` with `COUNT` = `count`; the returned slot fills with
/// the Originate's result.
fn start_flood(
    driver: &mut Driver,
    id: ServerId,
    flood: &Flood,
    count: usize,
) -> Rc<RefCell<Option<Result<Reply, ActionError>>>> {
    let originate = Originate::application("Local/flood@test", "Wait", "120")
        .with_variable("COUNT", count.to_string())
        .with_channel_id(flood.one.clone())
        .with_other_channel_id(flood.two.clone());
    let slot = Rc::new(RefCell::new(None));
    let filled = slot.clone();
    driver
        .send(id, originate, move |result| {
            *filled.borrow_mut() = Some(result)
        })
        .expect("send the flood's Originate");
    slot
}

/// Generous bound for a flood of `count` events (Asterisk makes about 10,000 a second
/// here; the tests may share it).
fn flood_limit(count: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(count as u64)
}

#[test]
fn userevent_flood_arrives_complete() {
    let _turn = flood_turn();
    let _calls = calls_shared();
    const COUNT: usize = 100_000;
    let (mut driver, id) = driver_with("admin", |spec| spec.config.events = flood_events());
    let key = driver.server_key(id).to_owned();
    let flood = watch_flood(&mut driver, &key, COUNT, |_| {});
    let before = driver.connection_stats(id).unwrap();
    let cpu_before = thread_cpu_time();
    let started = Instant::now();
    let originate = start_flood(&mut driver, id, &flood, COUNT);
    let deadline = started + flood_limit(COUNT);
    // Tick lengths and this thread's wait for a CPU, to tell a slow driver from a busy
    // machine (only `Instant`s in the loop: reading /proc there would cost CPU).
    let waited_before = run_queue_wait();
    let mut longest_tick = Duration::ZERO;
    while flood.state.borrow().done.is_none() {
        if !driver.state(id).is_ready() {
            let reason = close_reason(&driver, id);
            panic!(
                "connection lost during the flood: {reason:?} (longest tick {longest_tick:?}; \
                 this thread waited {:?} for a CPU during the flood)",
                run_queue_wait().saturating_sub(waited_before)
            );
        }
        assert!(Instant::now() < deadline, "no FloodDone");
        let tick = Instant::now();
        driver.tick_all(Duration::from_millis(20));
        longest_tick = longest_tick.max(tick.elapsed());
    }
    let waited = run_queue_wait().saturating_sub(waited_before);
    let elapsed = started.elapsed();
    let cpu = thread_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let stats = driver.connection_stats(id).unwrap();

    let state = flood.state.borrow();
    assert_eq!(state.done, Some(COUNT));
    assert_eq!(state.bad, 0);
    assert_eq!(
        (state.missing(), state.duplicates()),
        (0, 0),
        "every Seq exactly once ({} received)",
        state.received
    );
    assert_eq!(state.received, COUNT as u64);
    assert_eq!(stats.events.dropped, 0, "{stats:?}");
    assert_eq!(stats.discards, 0, "{stats:?}");

    let frames = stats.messages - before.messages;
    let bytes = stats.bytes_received - before.bytes_received;
    let secs = elapsed.as_secs_f64();
    let cpu_ms = cpu.map_or(f64::NAN, |c| c.as_secs_f64() * 1000.0);
    println!(
        "flood (Events: {}): {COUNT} events in {secs:.2} s ({:.0} events/s; {frames} frames, {:.0} frames/s, \
         {:.1} MB/s), client CPU {:.0} ms per 100k events ({:.0} ms per 100k frames, {:.0} ms in all); \
         longest tick {longest_tick:?}, {waited:?} waiting for a CPU",
        flood_events(),
        COUNT as f64 / secs,
        frames as f64 / secs,
        bytes as f64 / secs / 1e6,
        cpu_ms * 100_000.0 / COUNT as f64,
        cpu_ms * 100_000.0 / frames as f64,
        cpu_ms,
    );

    tick_until(
        &mut driver,
        Duration::from_secs(10),
        "the flood's OriginateResponse",
        |_| originate.borrow().is_some(),
    );
    let reply = originate
        .borrow_mut()
        .take()
        .unwrap()
        .expect("flood Originate");
    assert_eq!(originate_event(&reply).get("Reason"), Some("4"));
    assert_eq!(
        originate_event(&reply).get("Uniqueid"),
        Some(flood.one.as_str())
    );
    drop(state);
    assert!(driver.shutdown(Duration::from_secs(5)));
}

/// What [`slow_listener_flood`] observed.
#[derive(Debug)]
struct SlowRun {
    /// Flood events that reached the listener.
    delivered: u64,
    /// Events the connection dropped (oldest first).
    dropped: u64,
}

/// Floods user `slow` (writetimeout = 100 ms: Asterisk disconnects it as soon as one
/// of its writes blocks that long) with `count` UserEvents while a listener sleeps
/// `per_event` on every event of the connection (`every_event`) or on each of the
/// flood's UserEvents. Default driver options (10 ms dispatch budget per tick); the
/// event queue holds 2,000 events so that draining it after the flood takes seconds,
/// not tens of seconds. Panics, with the close reason, if the connection closes.
fn slow_listener_flood(count: usize, per_event: Duration, every_event: bool) -> SlowRun {
    let (mut driver, id) = driver_with("slow", |spec| {
        spec.config.event_queue_capacity = 2000;
        spec.config.events = flood_events();
    });
    let key = driver.server_key(id).to_owned();
    let closed = Rc::new(Cell::new(false));
    let seen_close = closed.clone();
    let watched_key = key.clone();
    driver.on_state_change(move |server, _, to| {
        if server == watched_key && to == State::Closed {
            seen_close.set(true);
        }
    });
    let flood = if every_event {
        driver.subscribe(Filter::any().server(key.clone()), move |_| {
            std::thread::sleep(per_event)
        });
        watch_flood(&mut driver, &key, count, |_| {})
    } else {
        watch_flood(&mut driver, &key, count, move |_| {
            std::thread::sleep(per_event)
        })
    };
    let started = Instant::now();
    let _originate = start_flood(&mut driver, id, &flood, count);
    let deadline = started + flood_limit(count);
    let mut max_tick = Duration::ZERO;
    // This thread's wait for a CPU: time the machine, not the driver, took.
    let waited_before = run_queue_wait();
    while flood.state.borrow().done.is_none() {
        if driver.state(id) == State::Closed {
            let reason = close_reason(&driver, id);
            panic!(
                "the slow listener's connection closed after {:?} (longest tick {max_tick:?}; \
                 this thread waited {:?} for a CPU meanwhile; {} Flood events seen, stats \
                 {:?}): {reason:?}",
                started.elapsed(),
                run_queue_wait().saturating_sub(waited_before),
                flood.state.borrow().received,
                driver.connection_stats(id)
            );
        }
        assert!(
            Instant::now() < deadline,
            "no FloodDone within {:?}",
            flood_limit(count)
        );
        let tick = Instant::now();
        driver.tick_all(Duration::from_millis(20));
        max_tick = max_tick.max(tick.elapsed());
    }
    let waited = run_queue_wait().saturating_sub(waited_before);
    let elapsed = started.elapsed();
    let stats = driver.connection_stats(id).unwrap();
    let state = flood.state.borrow();
    println!(
        "slow listener ({per_event:?} per event, Events: {}): {} of {count} Flood events delivered in {:.1} s, \
         {} events dropped of {} queued, longest tick {max_tick:?}, {waited:?} waiting for a \
         CPU",
        flood_events(),
        state.received,
        elapsed.as_secs_f64(),
        stats.events.dropped,
        stats.events.queued
    );
    assert!(!closed.get());
    assert!(driver.state(id).is_ready());
    assert_eq!(state.done, Some(count));
    assert_eq!(state.seen[count - 1], 1, "the last Seq arrived");
    assert_eq!(state.duplicates(), 0);
    assert_eq!(state.bad, 0);
    let run = SlowRun {
        delivered: state.received,
        dropped: stats.events.dropped,
    };
    drop(state);
    ok(
        driver.send_and_wait(id, action::Ping),
        "Ping after the flood",
    );
    assert!(driver.shutdown(Duration::from_secs(5)));
    run
}

#[test]
fn slow_listener_drops_events_but_keeps_the_connection() {
    let _turn = flood_turn();
    let _calls = calls_shared();
    // The listener sleeps 1 ms on each of the flood's UserEvents (in release builds 1
    // frame in 6: the rest are Newexten and VarSet): it takes 1,000 of the 13,000 a
    // second Asterisk makes.
    let count = 200_000;
    let run = slow_listener_flood(count, Duration::from_millis(1), false);
    assert!(run.dropped > 0, "{run:?}");
    assert!(run.delivered < count as u64, "{run:?}");
}

/// The listener sleeps 1 ms on **every** event of the connection: the dispatch budget
/// (10 ms) bounds the time between two reads of the socket, so Asterisk's 100 ms
/// writetimeout is never reached and the drops are counted.
#[test]
fn slow_listener_on_every_event_keeps_the_connection() {
    let _turn = flood_turn();
    let _calls = calls_shared();
    let run = slow_listener_flood(100_000, Duration::from_millis(1), true);
    assert!(run.dropped > 0, "{run:?}");
    // The longest tick is printed, not asserted: on a loaded machine it includes time
    // spent waiting for a CPU. The connection surviving (checked above) is the point.
}

/// The dispatch budget (10 ms) bounds the time between two reads of the socket
/// whatever the listeners cost, here 2 ms per event.
#[test]
fn slow_listener_at_2ms_per_event_keeps_the_connection() {
    let _turn = flood_turn();
    let _calls = calls_shared();
    let run = slow_listener_flood(60_000, Duration::from_millis(2), true);
    assert!(run.dropped > 0, "{run:?}");
    // The longest tick is printed, not asserted: on a loaded machine it includes time
    // spent waiting for a CPU. The connection surviving (checked above) is the point.
}

#[test]
fn flood_on_one_connection_does_not_delay_another() {
    let _turn = flood_turn();
    let _calls = calls_shared();
    const COUNT: usize = 30_000;
    // A tick reads up to 1 MiB of the flood before it reads the Ping's answer: about
    // 3 ms of parsing in release builds, 50 ms in debug builds.
    let max_delay = Duration::from_millis(if cfg!(debug_assertions) { 500 } else { 200 });
    let mut driver = Driver::new().unwrap();
    let mut flooded = spec("admin");
    flooded.config.events = flood_events();
    let flooded = connect_ready(&mut driver, flooded);
    let mut quiet = spec("admin");
    quiet.config.events = EventMask::Off;
    let pinger = connect_ready(&mut driver, quiet);
    let key = driver.server_key(flooded).to_owned();
    let flood = watch_flood(&mut driver, &key, COUNT, |_| {});

    // Per Ping: the latency, and how long this thread waited for a CPU meanwhile (on a
    // loaded machine the scheduler, not the driver, can hold a tick for 100+ ms).
    let samples = Rc::new(RefCell::new(Vec::<(Duration, Duration)>::new()));
    let in_flight = Rc::new(Cell::new(false));
    let _originate = start_flood(&mut driver, flooded, &flood, COUNT);
    let deadline = Instant::now() + flood_limit(COUNT);
    let mut longest_tick = Duration::ZERO;
    let waited_before = run_queue_wait();
    while flood.state.borrow().done.is_none() {
        assert!(Instant::now() < deadline, "no FloodDone");
        for (name, id) in [("flooded", flooded), ("pinger", pinger)] {
            if !driver.state(id).is_ready() {
                let reason = close_reason(&driver, id);
                panic!(
                    "the {name} connection closed during the flood: {reason:?} (longest tick \
                     {longest_tick:?}; this thread waited {:?} for a CPU meanwhile)",
                    run_queue_wait().saturating_sub(waited_before)
                );
            }
        }
        if !in_flight.get() {
            in_flight.set(true);
            let (sent, waited) = (Instant::now(), run_queue_wait());
            let (samples, in_flight) = (samples.clone(), in_flight.clone());
            driver
                .send(pinger, action::Ping, move |result| {
                    result.expect("Ping");
                    samples
                        .borrow_mut()
                        .push((sent.elapsed(), run_queue_wait().saturating_sub(waited)));
                    in_flight.set(false);
                })
                .unwrap();
        }
        let tick = Instant::now();
        driver.tick_all(Duration::from_millis(5));
        longest_tick = longest_tick.max(tick.elapsed());
    }
    tick_until(&mut driver, Duration::from_secs(5), "the last Ping", |_| {
        !in_flight.get()
    });
    let samples = samples.borrow();
    let mut raw: Vec<Duration> = samples.iter().map(|&(latency, _)| latency).collect();
    let mut own: Vec<Duration> = samples
        .iter()
        .map(|&(latency, waited)| latency.saturating_sub(waited))
        .collect();
    raw.sort();
    own.sort();
    let percentile = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    let stats = driver.connection_stats(flooded).unwrap();
    println!(
        "ping during flood: {} pings; latency median {:?}, p99 {:?}, max {:?}; without this \
         thread's run-queue wait max {:?}; longest tick {longest_tick:?}; {} of {COUNT} Flood \
         events, {} events dropped on the flooded connection",
        raw.len(),
        percentile(&raw, 50),
        percentile(&raw, 99),
        raw.last().unwrap(),
        own.last().unwrap(),
        flood.state.borrow().received,
        stats.events.dropped,
    );
    // Behaviour, not timing: the quiet connection's Pings kept completing during the
    // flood, and most of them at once. The slowest Ping is printed, not asserted: on
    // a loaded machine it measures the scheduler (BENCHMARKS.md has the figures of an
    // idle one).
    assert!(raw.len() >= 10, "only {} pings", raw.len());
    let median = percentile(&own, 50);
    assert!(
        median <= max_delay,
        "half the Pings took {median:?} or more (run-queue wait excluded)"
    );
    assert_eq!(flood.state.borrow().done, Some(COUNT));
    assert!(driver.shutdown(Duration::from_secs(5)));
}

/// The conformance cases shared with the Tokio suite (`ami_tests::cases`), through
/// `ami-mio`.
#[test]
fn shared_cases_through_mio() {
    let _calls = calls_shared();
    let (mut driver, id) = driver_with("admin", calls_only);
    for case in ami_tests::cases::cases() {
        let result = match driver.send_and_wait(id, (case.action)()) {
            Ok(reply) => Ok(reply),
            Err(WaitError::Failed(error)) => Err(error),
            Err(other) => panic!("{}: {other}", case.name),
        };
        (case.check)(&result);
    }
    assert!(driver.shutdown(Duration::from_secs(5)));
}
