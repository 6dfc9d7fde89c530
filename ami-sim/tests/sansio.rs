//! The real client core (`ami_proto::Connection`) against simulated sessions, entirely
//! in virtual time.

#![allow(clippy::disallowed_methods)] // one real instant is the base of virtual time

mod support;

use std::time::{Duration, Instant};

use ami_proto::action::{self, EventMask};
use ami_proto::{Action, ActionError, AuthMethod, CloseReason, Output, Reply, Stage, State};
use ami_sim::{CommandFormat, Fault, Flood, SimConfig, SimServer, SimSession};
use support::{Pair, client, quiet_client};

// ----- login -----

#[test]
fn plain_login_reaches_healthy_and_gets_fully_booted() {
    let pair = Pair::logged_in(client(), SimConfig::default());
    assert_eq!(pair.conn.state(), State::Healthy);
    assert_eq!(pair.conn.banner(), Some("Asterisk Call Manager/11.0.0"));
    let names: Vec<_> = pair.events().iter().map(|e| e.event_name()).collect();
    assert_eq!(names, [Some("FullyBooted")]);
    let stats = pair.sim.stats();
    assert_eq!((stats.logins_ok, stats.logins_failed), (1, 0));
    assert_eq!(stats.actions_named("login"), 1);
}

#[test]
fn md5_login_reaches_healthy() {
    let mut config = client();
    config.auth = AuthMethod::Md5;
    let pair = Pair::logged_in(config, SimConfig::default());
    assert_eq!(pair.conn.state(), State::Healthy);
    let stats = pair.sim.stats();
    assert_eq!(stats.actions_named("challenge"), 1);
    assert_eq!(stats.logins_ok, 1);
}

#[test]
fn wrong_secret_closes_with_authentication_failed_after_a_second() {
    for auth in [AuthMethod::Plain, AuthMethod::Md5] {
        let mut config = ami_proto::Config::new("pbx1", "admin", "wrong");
        config.auth = auth;
        let mut pair = Pair::new(config, SimConfig::default());
        let reason = pair.wait_closed(Duration::from_secs(60));
        assert_eq!(
            reason,
            CloseReason::AuthenticationFailed {
                message: "Authentication failed".into()
            },
            "{auth:?}"
        );
        assert_eq!(pair.elapsed(), Duration::from_secs(1), "PROTOCOL-NOTES 11");
        assert!(pair.sim.is_closed());
        assert_eq!(pair.sim.stats().logins_failed, 1);
    }
    let mut pair = Pair::new(
        ami_proto::Config::new("pbx1", "nobody", "amp111"),
        SimConfig::default(),
    );
    assert!(matches!(
        pair.wait_closed(Duration::from_secs(60)),
        CloseReason::AuthenticationFailed { .. }
    ));
}

#[test]
fn other_users_and_events_off() {
    let sim = SimConfig::default()
        .with_user("ops", "0ps-secret")
        .with_flood(Some(Flood::new(100)));
    let mut config = ami_proto::Config::new("pbx1", "ops", "0ps-secret");
    config.events = EventMask::Off;
    config.heartbeat_interval = Duration::from_secs(3600);
    let mut pair = Pair::logged_in(config, sim);
    pair.advance(Duration::from_secs(2));
    // Events off: no FullyBooted, no flood; list items still come (PROTOCOL-NOTES 21).
    assert!(pair.events().is_empty());
    let reply = pair.ok(action::CoreShowChannels);
    assert_eq!(reply.events.len(), 3);
    assert_eq!(pair.sim.stats().flood_events_sent, 0);
}

// ----- simple actions -----

#[test]
fn ping_answers_pong_with_a_timestamp() {
    let sim = SimConfig::default().with_unix_time(Duration::from_secs(1_795_326_158));
    let mut pair = Pair::logged_in(quiet_client(), sim);
    pair.advance(Duration::from_micros(622_897));
    let reply = pair.ok(action::Ping);
    assert_eq!(reply.response.response(), Some("Success"));
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    assert_eq!(
        reply.response.get("Timestamp"),
        Some("1795326158.622897"),
        "{:?}",
        reply.response
    );
}

#[test]
fn set_and_get_var() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let set = pair.ok(action::SetVar::global("GLOBALX", "42"));
    assert_eq!(set.response.get("Message"), Some("Variable Set"));
    let get = pair.ok(action::GetVar::global("GLOBALX"));
    assert_eq!(get.response.get("Variable"), Some("GLOBALX"));
    assert_eq!(get.response.get("Value"), Some("42"));
    let unset = pair.ok(action::GetVar::global("NOPE"));
    assert_eq!(unset.response.get("Value"), Some(""));
}

#[test]
fn unknown_action_is_refused() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    match pair.err(Action::new("NoSuchThing")) {
        ActionError::Rejected { message, .. } => assert_eq!(
            message,
            "Invalid/unknown command: NoSuchThing. Use Action: ListCommands to show available commands."
        ),
        other => panic!("{other:?}"),
    }
    // The session goes on.
    pair.ok(action::Ping);
}

#[test]
fn events_action_switches_events() {
    let sim = SimConfig::default().with_flood(Some(Flood::new(10)));
    let mut pair = Pair::logged_in(quiet_client(), sim);
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.user_events("Flood").len(), 10);
    let off = pair.ok(Action::new("Events").header("EventMask", "off"));
    assert_eq!(off.response.get("Events"), Some("Off"));
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.user_events("Flood").len(), 10, "no events while off");
    let on = pair.ok(Action::new("Events").header("EventMask", "user"));
    assert_eq!(on.response.get("Events"), Some("On"));
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.user_events("Flood").len(), 20);
}

// ----- command -----

fn command_output(format: CommandFormat, command: &str) -> (Reply, Vec<String>) {
    let sim = SimConfig::default().with_command_format(format);
    let mut pair = Pair::logged_in(quiet_client(), sim);
    let reply = pair.ok(action::Command::new(command));
    let lines = reply.output().iter().map(|l| l.to_string()).collect();
    (reply, lines)
}

#[test]
fn command_formats_give_the_same_output() {
    for command in [
        "core show version",
        "core show uptime",
        "core show help",
        "sim output 5000",
    ] {
        let (modern, modern_lines) = command_output(CommandFormat::Modern, command);
        let (legacy, legacy_lines) = command_output(CommandFormat::Legacy, command);
        assert!(!modern.response.is_follows());
        assert!(legacy.response.is_follows());
        assert_eq!(
            modern.response.get("Message"),
            Some("Command output follows")
        );
        assert_eq!(legacy.response.get("Privilege"), Some("Command"));
        assert_eq!(modern_lines, legacy_lines, "{command}");
    }
    let (_, version) = command_output(CommandFormat::Modern, "core show version");
    assert_eq!(version, ["Asterisk 22.10.1 built by sim"]);
    let (_, uptime) = command_output(CommandFormat::Legacy, "core show uptime");
    assert_eq!(uptime.len(), 2);
    assert!(uptime[0].starts_with("System uptime: "));
    let (_, help) = command_output(CommandFormat::Modern, "core show help");
    assert_eq!(help.len(), 300);
    // 5000 lines are far over the 64 KiB frame limit, well under the 1 MiB output limit.
    let (big, lines) = command_output(CommandFormat::Modern, "sim output 5000");
    assert!(big.response.len() > 64 * 1024, "{}", big.response.len());
    assert_eq!(lines.len(), 5000);
    assert_eq!(lines[0], "sim output line 1 of 5000");
    assert_eq!(lines[4999], "sim output line 5000 of 5000");
}

#[test]
fn unknown_command_in_both_formats() {
    let expected =
        "No such command 'bogus' (type 'core show help bogus' for other possible commands)";
    // Modern: `Response: Error` (the client fails the action, the output is kept).
    let mut modern = Pair::logged_in(quiet_client(), SimConfig::default());
    match modern.err(action::Command::new("bogus")) {
        ActionError::Rejected { message, response } => {
            assert_eq!(message, "Command output follows");
            assert_eq!(response.output_lines(), [expected]);
        }
        other => panic!("{other:?}"),
    }
    // Legacy: `Response: Follows` with the line.
    let (_, lines) = command_output(CommandFormat::Legacy, "bogus");
    assert_eq!(lines, [expected]);
}

// ----- event lists -----

#[test]
fn event_lists_complete_with_their_items() {
    for size in [3, 0, 50] {
        let sim = SimConfig::default().with_list_size(size);
        let mut pair = Pair::logged_in(quiet_client(), sim);
        let lists: [(Action, &[&str], &str); 4] = [
            (
                action::CoreShowChannels.into(),
                &["CoreShowChannel"],
                "CoreShowChannelsComplete",
            ),
            (
                action::QueueStatus::default().into(),
                &["QueueParams", "QueueMember"],
                "QueueStatusComplete",
            ),
            (
                action::QueueSummary::default().into(),
                &["QueueSummary"],
                "QueueSummaryComplete",
            ),
            (
                action::Status::default().into(),
                &["Status"],
                "StatusComplete",
            ),
        ];
        for (list, item_names, end_name) in lists {
            let id = pair.send(list);
            let done = pair.wait(&id);
            let reply = done.result.expect("list completes");
            assert_eq!(reply.response.get("EventList"), Some("start"));
            assert_eq!(reply.events.len(), size, "{end_name}");
            for item in &reply.events {
                assert!(item_names.contains(&item.event_name().unwrap()), "{item:?}");
                assert_eq!(item.action_id(), Some(id.as_str()));
            }
            let end = reply.list_end.expect("list end");
            assert_eq!(end.event_name(), Some(end_name));
            assert_eq!(end.get("EventList"), Some("Complete"));
            assert_eq!(end.get("ListItems"), Some(size.to_string().as_str()));
            assert_eq!(end.action_id(), Some(id.as_str()));
        }
        assert_eq!(pair.sim.stats().list_items_sent, 4 * size as u64);
    }
}

#[test]
fn status_of_an_unknown_channel_is_an_error() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let status = action::Status {
        channel: Some("PJSIP/nobody".into()),
        variables: None,
    };
    match pair.err(status) {
        ActionError::Rejected { message, .. } => assert_eq!(message, "No such channel"),
        other => panic!("{other:?}"),
    }
    let status = action::Status {
        channel: Some("PJSIP/sim-00000002".into()),
        variables: None,
    };
    assert_eq!(pair.ok(status).events.len(), 1);
}

// ----- originate -----

#[test]
fn async_originate_completes_with_its_originate_response() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let id = pair.send(action::Originate::application("PJSIP/100", "Wait", "5"));
    let done = pair.wait(&id);
    assert_eq!(
        done.latency(),
        Duration::from_millis(50),
        "the originate delay"
    );
    let reply = done.result.unwrap();
    assert_eq!(
        reply.response.get("Message"),
        Some("Originate successfully queued")
    );
    let event = &reply.events[0];
    assert_eq!(event.event_name(), Some("OriginateResponse"));
    assert_eq!(event.action_id(), Some(id.as_str()));
    assert_eq!(event.get("Response"), Some("Success"));
    assert_eq!(event.get("Reason"), Some("4"));
    assert_eq!(event.get("Channel"), Some("PJSIP/100"));
    assert_eq!(event.get("Application"), Some("Wait"));
}

#[test]
fn failed_originates_carry_their_reason() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    for (channel, reason) in [
        ("PJSIP/busy", "5"),
        ("Local/congestion@test", "8"),
        ("Local/noanswer@test", "3"),
    ] {
        let reply = pair.ok(action::Originate::extension(channel, "100", "test", 1));
        let event = &reply.events[0];
        assert_eq!(event.get("Response"), Some("Failure"), "{channel}");
        assert_eq!(event.get("Reason"), Some(reason), "{channel}");
        assert_eq!(event.get("Uniqueid"), Some("<unknown>"));
        assert_eq!(event.get("Exten"), Some("100"));
    }
}

#[test]
fn sync_originate_blocks_the_session_and_keeps_order() {
    let sim = SimConfig::default().with_originate_delay(Duration::from_secs(2));
    let mut pair = Pair::logged_in(quiet_client(), sim);
    let originate =
        pair.send(action::Originate::application("PJSIP/100", "Wait", "5").with_async(false));
    let ping = pair.send(action::Ping);
    let busy =
        pair.send(action::Originate::application("PJSIP/busy", "Wait", "5").with_async(false));
    let first = pair.wait(&originate);
    let second = pair.wait(&ping);
    let third = pair.wait(&busy);
    assert!(first.result.is_ok());
    assert_eq!(first.latency(), Duration::from_secs(2));
    // PROTOCOL-NOTES 16: the Ping waits for the Originate in front of it.
    assert_eq!(second.latency(), Duration::from_secs(2));
    assert_eq!(third.latency(), Duration::from_secs(4));
    match third.result {
        Err(ActionError::Rejected { message, .. }) => assert_eq!(message, "Originate failed"),
        other => panic!("{other:?}"),
    }
    assert!(
        pair.events()
            .iter()
            .all(|e| e.event_name() != Some("OriginateResponse"))
    );
}

#[test]
fn originate_input_errors_come_at_once() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let done = pair.request(Action::new("Originate").header("Exten", "100"));
    assert_eq!(done.latency(), Duration::ZERO);
    match done.result {
        Err(ActionError::Rejected { message, .. }) => assert_eq!(message, "Channel not specified"),
        other => panic!("{other:?}"),
    }
}

// ----- broadcasts -----

#[test]
fn user_event_is_broadcast_with_the_senders_action_id() {
    let mut alice = Pair::with_generation(quiet_client(), SimConfig::default(), 1);
    let mut bob = Pair::with_generation(quiet_client(), SimConfig::default(), 2);
    alice.login();
    bob.login();
    let id = alice.send(
        Action::new("UserEvent")
            .header("UserEvent", "Hello")
            .header("Foo", "bar"),
    );
    let done = alice.wait(&id);
    assert!(done.result.is_ok());
    // The sender sees its own broadcast, ActionID and all (PROTOCOL-NOTES 17).
    let own = alice.user_events("Hello");
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].action_id(), Some(id.as_str()));
    assert_eq!(own[0].get("Foo"), Some("bar"));
    // The other session gets it with a foreign ActionID: an event, nothing completed.
    let now = bob.now;
    while let Some(broadcast) = alice.sim.poll_broadcast() {
        bob.sim.deliver_broadcast(now, &broadcast);
    }
    bob.pump();
    let theirs = bob.user_events("Hello");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].action_id(), Some(id.as_str()));
    let stats = bob.conn.stats();
    assert_eq!((stats.unmatched, stats.late_replies), (0, 0));
}

// ----- flood -----

#[test]
fn flood_delivers_the_rate_over_ten_seconds() {
    let sim = SimConfig::default().with_flood(Some(Flood::new(1000)));
    let mut pair = Pair::logged_in(quiet_client(), sim);
    pair.advance(Duration::from_secs(10));
    let events = pair.user_events("Flood");
    assert_eq!(events.len(), 10_000);
    for (expected, event) in events.iter().enumerate() {
        assert_eq!(event.get("Seq"), Some(expected.to_string().as_str()));
        assert_eq!(event.get("Privilege"), Some("user,all"));
    }
    let stats = pair.sim.stats();
    assert_eq!(stats.flood_events_sent, 10_000);
    assert_eq!(stats.flood_events_skipped, 0);
    assert_eq!(pair.conn.stats().events.dropped, 0);
}

#[test]
fn flood_caps_a_burst_after_a_jump_in_time() {
    let flood = Flood::new(1000)
        .with_max_burst(100)
        .with_user_event("Burst");
    let sim = SimConfig::default().with_flood(Some(flood));
    let mut pair = Pair::logged_in(quiet_client(), sim);
    pair.jump(Duration::from_secs(10));
    let events = pair.user_events("Burst");
    assert_eq!(events.len(), 100);
    // The newest events are sent; the gap in Seq shows the skipped ones.
    assert_eq!(events[0].get("Seq"), Some("9900"));
    let stats = pair.sim.stats();
    assert_eq!(
        (stats.flood_events_sent, stats.flood_events_skipped),
        (100, 9900)
    );
}

#[test]
fn flood_with_a_total_stops() {
    let sim = SimConfig::default().with_flood(Some(Flood::new(500).with_total(1234)));
    let mut pair = Pair::logged_in(quiet_client(), sim);
    pair.advance(Duration::from_secs(10));
    assert_eq!(pair.user_events("Flood").len(), 1234);
    assert_eq!(pair.sim.poll_timeout(), None, "nothing more to do");
}

// ----- faults -----

#[test]
fn garbage_is_discarded_and_the_next_messages_parse() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let now = pair.now;
    pair.sim.inject(
        now,
        Fault::Garbage(b"\x00\xff not AMI at all\r\nmore junk".to_vec()),
    );
    pair.sim.inject(now, Fault::GarbageLen { len: 1000 });
    let reply = pair.ok(action::Ping);
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    let stats = pair.conn.stats();
    assert_eq!(stats.discards, 2);
    assert!(stats.discarded_bytes > 1000);
    assert_eq!(pair.sim.stats().faults_injected, 2);
}

#[test]
fn garbage_preset_after_the_banner() {
    let sim = SimConfig::default().with_fault(Fault::GarbageLen { len: 300 });
    let mut pair = Pair::logged_in(quiet_client(), sim);
    assert_eq!(pair.conn.stats().discards, 1);
    pair.ok(action::Ping);
}

/// Every reply of a fixed script, as text.
fn script(sim: SimConfig) -> (Vec<String>, u64) {
    let mut pair = Pair::logged_in(quiet_client(), sim);
    let mut replies = Vec::new();
    let actions: Vec<Action> = vec![
        action::Ping.into(),
        action::Command::new("sim output 300").into(),
        action::CoreShowChannels.into(),
        action::QueueStatus::default().into(),
        action::Originate::application("PJSIP/100", "Wait", "5").into(),
        action::Originate::application("PJSIP/busy", "Wait", "5").into(),
    ];
    for action in actions {
        let reply = pair.ok(action);
        replies.push(reply.response.as_str().to_owned());
        replies.extend(reply.events.iter().map(|e| e.as_str().to_owned()));
        replies.extend(reply.list_end.iter().map(|e| e.as_str().to_owned()));
    }
    replies.extend(pair.events().iter().map(|e| e.as_str().to_owned()));
    (replies, pair.conn.stats().bytes_received)
}

#[test]
fn split_every_byte_gives_identical_results() {
    let whole = script(SimConfig::default());
    let split = script(SimConfig::default().with_fault(Fault::SplitEveryByte(true)));
    assert_eq!(whole, split);
    assert!(whole.0.len() > 10);
}

#[test]
fn split_every_byte_hands_out_one_byte() {
    let now = Instant::now();
    let mut session = SimSession::new(
        &SimConfig::default().with_fault(Fault::SplitEveryByte(true)),
        now,
        1,
    );
    assert_eq!(session.poll_transmit(), b"A");
    session.advance_transmit(1);
    assert_eq!(session.poll_transmit(), b"s");
    session.inject(now, Fault::SplitEveryByte(false));
    assert_eq!(session.poll_transmit(), b"sterisk Call Manager/11.0.0\r\n");
}

#[test]
fn oversized_event_is_discarded_and_later_traffic_is_fine() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let now = pair.now;
    pair.sim.inject(now, Fault::Oversized { bytes: 100_000 });
    let reply = pair.ok(action::Ping);
    assert_eq!(reply.response.get("Ping"), Some("Pong"));
    let stats = pair.conn.stats();
    assert_eq!(stats.discards, 1);
    assert!(stats.discarded_bytes >= 100_000);
    assert!(
        pair.events()
            .iter()
            .all(|e| e.event_name() != Some("SimOversized"))
    );
    let discard = pair
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Discarded(discard) => Some(discard),
            _ => None,
        })
        .expect("a discard report");
    assert_eq!(discard.error.kind(), "frame_too_large");
}

#[test]
fn preset_stall_gives_a_banner_timeout() {
    let sim = SimConfig::default().with_fault(Fault::Stall);
    let mut pair = Pair::new(client(), sim);
    assert!(pair.sim.is_stalled());
    assert_eq!(pair.conn.stats().bytes_received, 0, "no banner");
    let reason = pair.wait_closed(Duration::from_secs(120));
    assert_eq!(reason, CloseReason::BannerTimeout);
    assert_eq!(pair.elapsed(), Duration::from_secs(30));
}

#[test]
fn stall_after_login_closes_by_heartbeat() {
    let mut pair = Pair::logged_in(client(), SimConfig::default());
    let now = pair.now;
    pair.sim.inject(now, Fault::Stall);
    let reason = pair.wait_closed(Duration::from_secs(300));
    assert_eq!(reason, CloseReason::HeartbeatTimeout { misses: 3 });
    assert_eq!(pair.sim.stats().actions_named("ping"), 3);
    assert_eq!(pair.sim.stats().responses_sent, 1, "only the login");
}

#[test]
fn close_mid_message_fails_pending_actions() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let now = pair.now;
    let id = pair.conn.send(now, action::Ping).unwrap();
    pair.sim.inject(now, Fault::CloseMidMessage);
    pair.pump();
    assert_eq!(pair.conn.state(), State::Closed);
    assert_eq!(pair.conn.close_reason(), Some(&CloseReason::PeerClosed));
    let done = pair.take_completion(&id).expect("the ping completed");
    assert_eq!(
        done.result.unwrap_err(),
        ActionError::ConnectionClosed {
            reason: CloseReason::PeerClosed
        }
    );
    // The half message was reported as truncated.
    assert_eq!(pair.conn.stats().discards, 1);
}

#[test]
fn delayed_response_still_completes() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let now = pair.now;
    pair.sim
        .inject(now, Fault::DelayResponses(Duration::from_secs(3)));
    let done = pair.request(action::Ping);
    assert_eq!(done.latency(), Duration::from_secs(3));
    assert!(done.result.is_ok());
    // Also with a configured response delay on top.
    let sim = SimConfig::default().with_response_delay(Duration::from_millis(250));
    let mut slow = Pair::logged_in(quiet_client(), sim);
    assert_eq!(slow.elapsed(), Duration::from_millis(250), "the login too");
    assert_eq!(
        slow.request(action::Ping).latency(),
        Duration::from_millis(250)
    );
}

#[test]
fn dropped_response_times_out() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let now = pair.now;
    pair.sim.inject(now, Fault::DropResponses { every_nth: 1 });
    let done = pair.request(action::Ping);
    assert_eq!(
        done.result.unwrap_err(),
        ActionError::Timeout {
            stage: Stage::Response,
            timeout: Duration::from_secs(30)
        }
    );
    assert_eq!(pair.sim.stats().responses_dropped, 1);
    let now = pair.now;
    pair.sim.inject(now, Fault::Heal);
    pair.ok(action::Ping);
}

#[test]
fn every_third_response_is_dropped_and_random_drops_are_seeded() {
    let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
    let now = pair.now;
    pair.sim.inject(now, Fault::DropResponses { every_nth: 3 });
    let outcomes: Vec<bool> = (0..6)
        .map(|_| pair.request(action::Ping).result.is_ok())
        .collect();
    assert_eq!(outcomes, [true, true, false, true, true, false]);

    let run = || {
        let mut pair = Pair::logged_in(quiet_client(), SimConfig::default());
        let now = pair.now;
        pair.sim
            .inject(now, Fault::DropResponsesRandomly { probability: 0.5 });
        let mut ids = Vec::new();
        for _ in 0..100 {
            ids.push(pair.send(action::Ping));
        }
        pair.advance(Duration::from_secs(31));
        ids.iter()
            .map(|id| pair.take_completion(id).unwrap().result.is_ok())
            .collect::<Vec<bool>>()
    };
    let first = run();
    assert_eq!(first, run(), "same seed, same drops");
    let answered = first.iter().filter(|ok| **ok).count();
    assert!((20..80).contains(&answered), "{answered}");
}

#[test]
fn dropped_pongs_close_the_connection() {
    let mut pair = Pair::logged_in(client(), SimConfig::default());
    let now = pair.now;
    pair.sim.inject(now, Fault::DropResponses { every_nth: 1 });
    let reason = pair.wait_closed(Duration::from_secs(300));
    assert_eq!(reason, CloseReason::HeartbeatTimeout { misses: 3 });
}

#[test]
fn slow_reads_make_the_client_hit_backpressure() {
    let mut config = quiet_client();
    config.write_buffer_limit = 4096;
    let mut pair = Pair::logged_in(config, SimConfig::default());
    let start = pair.now;
    let received_at_start = pair.sim.stats().bytes_received;
    pair.sim.inject(
        start,
        Fault::SlowReads {
            bytes_per_second: 100,
        },
    );
    let mut refused = None;
    for _ in 0..10_000 {
        let now = pair.now;
        match pair.conn.send(now, action::Ping) {
            Ok(_) => {
                pair.pump();
                pair.advance(Duration::from_millis(10));
            }
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let Some(ami_proto::SendError::Backpressure { limit, .. }) = refused else {
        panic!("no backpressure: {refused:?}");
    };
    assert_eq!(limit, 4096);
    // The simulator read no faster than its rate (plus one tenth of a second).
    let elapsed = (pair.now - start).as_secs_f64();
    let read = pair.sim.stats().bytes_received - received_at_start;
    assert!(
        read as f64 <= elapsed * 100.0 + 11.0,
        "{read} bytes in {elapsed} s"
    );
    assert!(pair.conn.queued_transmit() > 4000);
}

// ----- raw sessions -----

fn text(session: &mut SimSession) -> String {
    let bytes = session.poll_transmit().to_vec();
    session.advance_transmit(bytes.len());
    String::from_utf8(bytes).unwrap()
}

#[test]
fn raw_exchanges() {
    let now = Instant::now();
    let mut session = SimSession::new(&SimConfig::default(), now, 9);
    assert_eq!(text(&mut session), "Asterisk Call Manager/11.0.0\r\n");
    session.handle_input(now, b"Action: Ping\r\nActionID: p-1\r\n\r\n");
    assert_eq!(
        text(&mut session),
        "Response: Error\r\nActionID: p-1\r\nMessage: Permission denied\r\n\r\n"
    );
    session.handle_input(now, b"ActionID: x-1\nFoo: bar\n\n");
    assert_eq!(
        text(&mut session),
        "Response: Error\r\nActionID: x-1\r\nMessage: Missing action in request\r\n\r\n"
    );
    session.handle_input(
        now,
        b"action: login\r\nusername: admin\r\nsecret: amp111\r\nevents: off\r\n\r\n",
    );
    assert_eq!(
        text(&mut session),
        "Response: Success\r\nMessage: Authentication accepted\r\n\r\n",
        "no ActionID sent, none echoed; events off: no FullyBooted"
    );
    session.handle_input(now, b"Action: Bogus\r\nActionID: b-1\r\n\r\n");
    assert_eq!(
        text(&mut session),
        "Response: Error\r\nActionID: b-1\r\nMessage: Invalid/unknown command: Bogus. Use Action: ListCommands to show available commands.\r\n\r\n"
    );
    session.handle_input(
        now,
        b"Action: Command\r\nActionID: c-1\r\nCommand: core show version\r\n\r\n",
    );
    assert_eq!(
        text(&mut session),
        "Response: Success\r\nActionID: c-1\r\nMessage: Command output follows\r\nOutput: Asterisk 22.10.1 built by sim\r\n\r\n"
    );
    session.handle_input(now, b"Action: Logoff\r\nActionID: l-1\r\n\r\n");
    assert!(session.is_closed());
    assert_eq!(
        text(&mut session),
        "Response: Goodbye\r\nActionID: l-1\r\nMessage: Thanks for all the fish.\r\n\r\n"
    );
    assert_eq!(session.poll_timeout(), None);
    let stats = session.stats();
    assert_eq!(stats.actions, 6);
    assert_eq!(stats.actions_named(""), 1);
}

#[test]
fn legacy_command_bytes() {
    let now = Instant::now();
    let config = SimConfig::default().with_command_format(CommandFormat::Legacy);
    let mut session = SimSession::new(&config, now, 9);
    text(&mut session);
    session.handle_input(
        now,
        b"Action: Login\r\nUsername: admin\r\nSecret: amp111\r\nEvents: off\r\n\r\n",
    );
    text(&mut session);
    session.handle_input(
        now,
        b"Action: Command\r\nActionID: c-2\r\nCommand: core show version\r\n\r\n",
    );
    assert_eq!(
        text(&mut session),
        "Response: Follows\r\nPrivilege: Command\r\nActionID: c-2\r\nAsterisk 22.10.1 built by sim\n--END COMMAND--\r\n\r\n"
    );
}

#[test]
fn unauthenticated_sessions_close_after_the_auth_timeout() {
    let now = Instant::now();
    let mut session = SimSession::new(&SimConfig::default(), now, 1);
    text(&mut session);
    let deadline = session.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(30));
    session.handle_timeout(deadline);
    assert!(session.is_closed());
    assert!(session.poll_transmit().is_empty());
}

#[test]
fn server_hands_out_distinct_challenges() {
    let now = Instant::now();
    let mut server = SimServer::new(SimConfig::default(), 5);
    let mut challenges = Vec::new();
    for _ in 0..2 {
        let mut session = server.accept(now).unwrap();
        text(&mut session);
        session.handle_input(now, b"Action: Challenge\r\nAuthType: MD5\r\n\r\n");
        let reply = text(&mut session);
        let challenge = reply
            .lines()
            .find_map(|l| l.strip_prefix("Challenge: "))
            .unwrap()
            .to_owned();
        assert!(challenge.bytes().all(|b| b.is_ascii_digit()), "{challenge}");
        challenges.push(challenge);
        server.retire(session);
    }
    assert_ne!(challenges[0], challenges[1]);
    assert_eq!(server.stats().retired.actions, 2);
}

#[test]
fn session_debug_shows_no_secret() {
    let now = Instant::now();
    let config = SimConfig::default().with_users(vec![("admin".into(), "hunter2-secret".into())]);
    let session = SimSession::new(&config, now, 1);
    let text = format!("{session:?} {:?}", session.config());
    assert!(!text.contains("hunter2-secret"), "{text}");
}
