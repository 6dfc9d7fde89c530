//! The connection state machine, one test per behaviour, against a scripted server.
//!
//! Time is simulated: `Harness` takes one `Instant` base and only adds Durations, so
//! every test runs in microseconds and none sleeps.

// The simulated clock needs one real starting instant; ami-proto bans `Instant::now`
// (clippy.toml) because the library itself must never read a clock.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use ami_proto::action::{self, EventMask, md5_key};
use ami_proto::{
    Action, ActionError, AuthMethod, CloseReason, Discard, Limits, Output, ParseError, Secret,
    SendError, Stage, State,
};
use support::*;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// 1–5: login and connection setup
// ---------------------------------------------------------------------------

#[test]
fn plain_login_goes_through_every_state_in_order() {
    let mut h = Harness::new(config());
    assert_eq!(h.conn.state(), State::Connecting);
    h.conn.handle_connected(h.now);
    assert_eq!(h.conn.state(), State::AwaitingBanner);
    assert_eq!(h.written(), "", "nothing is written before the banner");

    h.reply(BANNER);
    assert_eq!(h.conn.state(), State::Authenticating);
    assert_eq!(h.conn.banner(), Some("Asterisk Call Manager/11.0.0"));
    let login = h.written_actions();
    assert_eq!(login.len(), 1);
    let login = &login[0];
    let id = &login.id;
    assert!(!id.is_empty() && id.is_ascii() && id.len() <= 64, "{id}");
    assert_eq!(
        login.raw,
        format!(
            "Action: Login\r\nActionID: {id}\r\nUsername: admin\r\nSecret: {SECRET}\r\nEvents: on\r\n\r\n"
        )
    );
    // Sends are refused until logged in.
    assert_eq!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::NotReady {
            state: State::Authenticating
        })
    );

    h.reply(&success(id, "Message: Authentication accepted\r\n"));
    assert_eq!(h.conn.state(), State::Healthy);
    h.reply("Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n");
    let outputs = h.outputs();
    assert_eq!(
        outputs[..3],
        [
            Output::StateChanged {
                from: State::Connecting,
                to: State::AwaitingBanner
            },
            Output::StateChanged {
                from: State::AwaitingBanner,
                to: State::Authenticating
            },
            Output::StateChanged {
                from: State::Authenticating,
                to: State::Healthy
            },
        ]
    );
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    assert_eq!(event_names(&outputs), ["FullyBooted"]);
    // The login is internal: it never comes out as a completion.
    assert!(completions(&outputs).is_empty());
    assert_eq!(h.conn.pending_actions(), 0);
}

#[test]
fn data_before_handle_connected_counts_as_connected() {
    let mut h = Harness::new(config());
    h.reply(BANNER);
    assert_eq!(h.conn.state(), State::Authenticating);
    assert_eq!(
        state_changes(&h.outputs()),
        [
            (State::Connecting, State::AwaitingBanner),
            (State::AwaitingBanner, State::Authenticating)
        ]
    );
}

#[test]
fn login_and_list_work_with_input_split_byte_by_byte() {
    let mut h = Harness::new(quiet_config());
    let byte_by_byte = |h: &mut Harness, text: &str| {
        for b in text.as_bytes() {
            h.reply_bytes(std::slice::from_ref(b));
        }
    };
    byte_by_byte(&mut h, BANNER);
    let login = h.written_actions()[0].id.clone();
    byte_by_byte(
        &mut h,
        &success(&login, "Message: Authentication accepted\r\n"),
    );
    assert_eq!(h.conn.state(), State::Healthy);
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    let text = format!(
        "{}Event: QueueMember\r\nActionID: {id}\r\n\r\nEvent: X\r\n\r\nEvent: QueueStatusComplete\r\nActionID: {id}\r\nEventList: Complete\r\n\r\n",
        success(&id, "EventList: start\r\n")
    );
    byte_by_byte(&mut h, &text);
    let outputs = h.outputs();
    assert_eq!(event_names(&outputs), ["X"]);
    let done = completions(&outputs);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result.as_ref().unwrap().events.len(), 1);
}

#[test]
fn md5_login_sends_challenge_then_key_and_never_the_secret() {
    let mut cfg = config();
    cfg.auth = AuthMethod::Md5;
    let mut h = Harness::with_banner(cfg);
    let challenge = h.written_actions();
    assert_eq!(challenge.len(), 1);
    let cid = challenge[0].id.clone();
    assert_eq!(
        challenge[0].raw,
        format!("Action: Challenge\r\nActionID: {cid}\r\nAuthType: MD5\r\n\r\n")
    );
    assert_eq!(h.conn.state(), State::Authenticating);

    h.reply(&success(&cid, "Challenge: 840415273\r\n"));
    let login = h.written_actions();
    assert_eq!(login.len(), 1, "{login:?}");
    let login = &login[0];
    assert_eq!(login.name, "Login");
    assert_ne!(login.id, cid);
    assert_eq!(login.get("AuthType"), Some("MD5"));
    assert_eq!(login.get("Username"), Some("admin"));
    assert_eq!(login.get("Events"), Some("on"));
    assert_eq!(login.get("Secret"), None);
    let expected = md5_key("840415273", &Secret::new(SECRET));
    // Independent check of md5_key itself: `printf '840415273Tr0ub4dor&3' | md5sum`.
    assert_eq!(expected, "0488e085c7c00c8ce9c8588b17658ad0");
    assert_eq!(login.get("Key"), Some(expected.as_str()));

    h.reply(&success(&login.id, "Message: Authentication accepted\r\n"));
    assert_eq!(h.conn.state(), State::Healthy);
    assert!(!h.wire.contains(SECRET), "secret on the wire: {:?}", h.wire);
}

#[test]
fn failed_login_closes_with_the_server_message_and_refuses_sends() {
    let mut h = Harness::with_banner(config());
    let id = h.written_actions()[0].id.clone();
    h.outputs();
    h.reply(&error(&id, "Authentication failed"));
    let reason = CloseReason::AuthenticationFailed {
        message: "Authentication failed".into(),
    };
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::Authenticating,
                to: State::Closed
            },
            Output::Closed(reason)
        ]
    );
    assert_eq!(h.conn.state(), State::Closed);
    assert_eq!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::NotReady {
            state: State::Closed
        })
    );
    assert_eq!(h.conn.stats().refused, 1);
    // The server then disconnects (PROTOCOL-NOTES 11): nothing more happens.
    h.conn.handle_eof(h.now);
    h.advance(3600 * SEC);
    assert_eq!(h.outputs(), []);
    assert_eq!(h.conn.poll_timeout(), None);
    assert_eq!(h.written(), "");
}

#[test]
fn md5_challenge_refused_fails_authentication() {
    let mut cfg = config();
    cfg.auth = AuthMethod::Md5;
    let mut h = Harness::with_banner(cfg);
    let cid = h.written_actions()[0].id.clone();
    h.outputs();
    h.reply(&error(&cid, "Must specify AuthType"));
    assert_eq!(
        h.outputs().last(),
        Some(&Output::Closed(CloseReason::AuthenticationFailed {
            message: "Must specify AuthType".into()
        }))
    );
    assert_eq!(h.written(), "", "no Login after a refused challenge");
}

#[test]
fn connect_timeout_closes() {
    let mut h = Harness::new(config());
    assert_eq!(h.conn.poll_timeout(), Some(h.start + 10 * SEC));
    h.advance(10 * SEC - MS);
    assert_eq!(h.conn.state(), State::Connecting);
    assert_eq!(h.outputs(), []);
    h.advance(MS);
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::Connecting,
                to: State::Closed
            },
            Output::Closed(CloseReason::ConnectTimeout)
        ]
    );
    assert_eq!(h.conn.poll_timeout(), None);
}

#[test]
fn banner_timeout_closes() {
    let mut h = Harness::new(config());
    h.advance(3 * SEC);
    h.conn.handle_connected(h.now);
    // The connect deadline is gone; the banner deadline is read_timeout from connect.
    assert_eq!(h.conn.poll_timeout(), Some(h.start + 33 * SEC));
    h.outputs();
    h.advance(30 * SEC - MS);
    assert_eq!(h.outputs(), []);
    h.advance(MS);
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::AwaitingBanner,
                to: State::Closed
            },
            Output::Closed(CloseReason::BannerTimeout)
        ]
    );
}

#[test]
fn login_timeout_closes() {
    let mut h = Harness::with_banner(config());
    h.written();
    h.outputs();
    assert_eq!(h.conn.poll_timeout(), Some(h.start + 30 * SEC));
    h.advance(30 * SEC - MS);
    assert_eq!(h.conn.state(), State::Authenticating);
    h.advance(MS);
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::Authenticating,
                to: State::Closed
            },
            Output::Closed(CloseReason::LoginTimeout)
        ]
    );
}

#[test]
fn md5_login_timeout_after_challenge_closes() {
    let mut cfg = config();
    cfg.auth = AuthMethod::Md5;
    let mut h = Harness::with_banner(cfg);
    let cid = h.written_actions()[0].id.clone();
    h.advance(10 * SEC);
    h.reply(&success(&cid, "Challenge: 1\r\n"));
    h.outputs();
    // The Login step has its own read_timeout from when it was sent.
    assert_eq!(h.conn.poll_timeout(), Some(h.start + 40 * SEC));
    h.jump();
    assert_eq!(
        h.outputs().last(),
        Some(&Output::Closed(CloseReason::LoginTimeout))
    );
}

/// A login answer the parser had to discard is not a timeout: the connection closes
/// at once, saying what happened.
#[test]
fn login_reply_discarded_closes_as_login_failed_not_timeout() {
    let mut cfg = config();
    cfg.limits = Limits {
        max_frame_size: 128,
        max_command_output: 1024,
    };
    let mut h = Harness::with_banner(cfg);
    let login = h.written_actions()[0].id.clone();
    h.outputs();
    h.reply(&success(
        &login,
        &format!("Message: {}\r\n", "x".repeat(200)),
    ));
    let outputs = h.outputs();
    assert!(
        matches!(outputs[outputs.len() - 3], Output::Discarded(_)),
        "the report comes before the close: {outputs:?}"
    );
    assert_eq!(
        outputs.last(),
        Some(&Output::Closed(CloseReason::LoginFailed {
            error: Box::new(ActionError::Discarded(ParseError::FrameTooLarge {
                limit: 128
            })),
        }))
    );
    assert_eq!(h.conn.state(), State::Closed);
}

#[test]
fn md5_challenge_reply_discarded_closes_as_login_failed() {
    let mut cfg = config();
    cfg.auth = AuthMethod::Md5;
    cfg.limits = Limits {
        max_frame_size: 128,
        max_command_output: 1024,
    };
    let mut h = Harness::with_banner(cfg);
    let cid = h.written_actions()[0].id.clone();
    h.outputs();
    h.reply(&format!(
        "Response: Success\r\nActionID: {cid}\r\nChallenge: {}\r\n\r\n",
        "9".repeat(200)
    ));
    assert!(
        matches!(
            h.outputs().last(),
            Some(Output::Closed(CloseReason::LoginFailed { error }))
                if matches!(**error, ActionError::Discarded(ParseError::FrameTooLarge { .. }))
        ),
        "closed as login failed"
    );
}

#[test]
fn login_answered_with_an_overlong_list_closes_as_login_failed() {
    let mut cfg = config();
    cfg.max_list_items = 1;
    let mut h = Harness::with_banner(cfg);
    let login = h.written_actions()[0].id.clone();
    h.outputs();
    h.reply(&success(&login, "EventList: start\r\n"));
    h.reply(&list_item("Item", &login, ""));
    h.reply(&list_item("Item", &login, ""));
    h.reply(&list_complete("ItemComplete", &login, 2));
    assert_eq!(
        h.outputs().last(),
        Some(&Output::Closed(CloseReason::LoginFailed {
            error: Box::new(ActionError::ListTooLong {
                limit: 1,
                received: 2
            }),
        }))
    );
}

#[test]
fn non_ami_banner_closes_as_not_ami() {
    let cases = [
        (
            "SSH-2.0-OpenSSH_9.6p1 Debian-3\r\n",
            "SSH-2.0-OpenSSH_9.6p1 Debian-3",
        ),
        (
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        // A first line that looks like a header: the whole first message is read.
        ("Server: nginx\r\nX: y\r\n\r\n", "Server: nginx"),
    ];
    for (input, first_line) in cases {
        let mut h = Harness::new(config());
        h.conn.handle_connected(h.now);
        h.outputs();
        h.reply(input);
        assert_eq!(
            h.outputs(),
            [
                Output::StateChanged {
                    from: State::AwaitingBanner,
                    to: State::Closed
                },
                Output::Closed(CloseReason::NotAmi {
                    first_line: first_line.into()
                })
            ],
            "{input:?}"
        );
        assert_eq!(h.written(), "", "{input:?}: no login to a non-AMI peer");
    }
}

#[test]
fn not_ami_first_line_is_cut_to_80_characters() {
    let mut h = Harness::new(config());
    h.reply(&format!("{}\r\n", "x".repeat(500)));
    assert_eq!(
        h.outputs().last(),
        Some(&Output::Closed(CloseReason::NotAmi {
            first_line: "x".repeat(80)
        }))
    );
}

#[test]
fn events_mask_is_rendered_in_login() {
    let cases = [
        (EventMask::Off, "off"),
        (EventMask::On, "on"),
        (
            EventMask::Classes(vec!["call".into(), "system".into()]),
            "call,system",
        ),
        // Empty `Events` means "all" to Asterisk: an empty list must render `off`.
        (EventMask::Classes(vec![]), "off"),
    ];
    for (mask, wire) in cases {
        let mut cfg = config();
        cfg.events = mask.clone();
        let mut h = Harness::with_banner(cfg);
        let login = h.written_actions();
        assert_eq!(login[0].get("Events"), Some(wire), "{mask:?}");
    }
}

// ---------------------------------------------------------------------------
// 6: heartbeat
// ---------------------------------------------------------------------------

#[test]
fn heartbeat_ping_pong_miss_recover_and_close() {
    let mut h = Harness::logged_in(config());
    let login_at = h.now;
    assert_eq!(h.conn.poll_timeout(), Some(login_at + 15 * SEC));

    // Nothing before the interval.
    h.advance(15 * SEC - MS);
    assert_eq!(h.written(), "");

    // Ping exactly at the interval, answered: stays Healthy, no output at all.
    assert_eq!(h.jump(), login_at + 15 * SEC);
    let ping = h.written_actions();
    assert_eq!(ping.len(), 1);
    assert_eq!(
        ping[0].raw,
        format!("Action: Ping\r\nActionID: {}\r\n\r\n", ping[0].id)
    );
    h.reply(&success(
        &ping[0].id,
        "Ping: Pong\r\nTimestamp: 1700000000.000000\r\n",
    ));
    assert_eq!(h.conn.state(), State::Healthy);
    assert_eq!(h.outputs(), [], "heartbeats are internal");
    assert_eq!(h.conn.pending_actions(), 0);

    // Next ping at 30 s, unanswered: Degraded at 35 s.
    assert_eq!(h.jump(), login_at + 30 * SEC);
    assert_eq!(h.action_ids_of("Ping").len(), 2);
    assert_eq!(h.jump(), login_at + 35 * SEC);
    assert_eq!(
        h.outputs(),
        [Output::StateChanged {
            from: State::Healthy,
            to: State::Degraded
        }]
    );
    assert_eq!(h.conn.stats().heartbeat_misses, 1);
    // Degraded still accepts actions.
    assert!(h.conn.state().is_ready());

    // Ping at 45 s answered: Healthy again.
    assert_eq!(h.jump(), login_at + 45 * SEC);
    let id = h.action_ids_of("Ping").pop().unwrap();
    h.advance(2 * SEC);
    h.reply(&success(&id, "Ping: Pong\r\n"));
    assert_eq!(
        h.outputs(),
        [Output::StateChanged {
            from: State::Degraded,
            to: State::Healthy
        }]
    );

    // Three misses in a row close: pings at 60, 75, 90 s; misses at 65, 80, 95 s.
    let mut seen = Vec::new();
    while h.conn.state() != State::Closed {
        let at = h.jump();
        h.written();
        for output in h.outputs() {
            seen.push((at - login_at, output));
        }
    }
    assert_eq!(
        seen,
        [
            (
                65 * SEC,
                Output::StateChanged {
                    from: State::Healthy,
                    to: State::Degraded
                }
            ),
            (
                95 * SEC,
                Output::StateChanged {
                    from: State::Degraded,
                    to: State::Closed
                }
            ),
            (
                95 * SEC,
                Output::Closed(CloseReason::HeartbeatTimeout { misses: 3 })
            ),
        ]
    );
    assert_eq!(h.action_ids_of("Ping").len(), 6);
    assert_eq!(h.conn.stats().heartbeat_misses, 4);
}

#[test]
fn heartbeat_error_answer_counts_as_alive() {
    let mut h = Harness::logged_in(config());
    h.jump(); // ping
    h.jump(); // miss
    assert_eq!(h.conn.state(), State::Degraded);
    h.jump(); // ping
    let id = h.action_ids_of("Ping").pop().unwrap();
    h.reply(&error(&id, "Permission denied"));
    assert_eq!(h.conn.state(), State::Healthy);
}

/// `heartbeat_interval` of zero (a natural way to write "no heartbeat") makes
/// `handle_timeout` loop for ever: the Heartbeat timer is re-armed at `now + 0`, which is
/// due again at once, and each turn queues another Ping (memory grows without bound).
///
/// Run on a watchdog thread so that the failure is reported instead of hanging; the
/// stuck thread is left behind until the test binary exits (it allocates meanwhile, so
/// the wait is kept short).
#[test]

fn zero_heartbeat_interval_does_not_hang_handle_timeout() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::ZERO;
    let mut h = Harness::logged_in(cfg);
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        h.advance(MS);
        let _ = done.send(h.conn.queued_transmit());
    });
    let queued = wait
        .recv_timeout(Duration::from_millis(100))
        .expect("handle_timeout did not return");
    assert!(queued < 1024, "{queued} bytes of Pings queued at once");
}

#[test]
fn heartbeat_does_not_burst_after_a_long_stall() {
    let mut h = Harness::logged_in(quiet_config());
    let mut cfg = config();
    cfg.heartbeat_max_misses = 100;
    let mut h2 = Harness::logged_in(cfg);
    // The driver slept for 10 minutes: one Ping, not forty.
    h2.advance(600 * SEC);
    assert_eq!(h2.action_ids_of("Ping").len(), 1);
    assert_eq!(h2.conn.poll_timeout(), Some(h2.now + 5 * SEC));
    // And the quiet config really is quiet for the other tests.
    h.advance(3600 * SEC);
    assert_eq!(h.written(), "");
}

// ---------------------------------------------------------------------------
// 7: action timeout
// ---------------------------------------------------------------------------

#[test]
fn action_timeout_completes_once_and_late_response_is_counted_not_delivered() {
    let mut h = Harness::logged_in(quiet_config());
    let sent_at = h.now;
    let id = h.conn.send(h.now, action::Ping).unwrap();
    assert_eq!(h.action_ids_of("Ping"), std::slice::from_ref(&id));
    assert_eq!(h.conn.poll_timeout(), Some(sent_at + 30 * SEC));

    h.advance(30 * SEC - MS);
    assert_eq!(h.outputs(), []);
    h.advance(MS);
    let done = h.one_completion();
    assert_eq!(done.action_id, id);
    assert_eq!(done.sent_at, sent_at);
    assert_eq!(done.latency(), 30 * SEC);
    assert_eq!(
        done.result,
        Err(ActionError::Timeout {
            stage: Stage::Response,
            timeout: 30 * SEC
        })
    );
    assert_eq!(h.conn.pending_actions(), 0);
    let stats = h.conn.stats();
    assert_eq!((stats.timeouts, stats.failed, stats.completed), (1, 1, 0));

    // Never again.
    h.advance(3600 * SEC);
    assert_eq!(h.outputs(), []);

    // The late response completes nothing: it is counted, not delivered.
    h.reply(&success(&id, "Ping: Pong\r\n"));
    let outputs = h.outputs();
    assert_eq!(outputs, [], "{outputs:?}");
    assert_eq!(h.conn.stats().late_replies, 1);
    assert_eq!(h.conn.stats().unmatched, 0);
    assert_eq!(h.conn.state(), State::Healthy);
}

#[test]
fn per_action_timeout_overrides_the_default() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, Action::new("Ping").with_timeout(2 * SEC))
        .unwrap();
    assert_eq!(h.conn.poll_timeout(), Some(h.now + 2 * SEC));
    h.jump();
    let done = h.one_completion();
    assert_eq!(done.action_id, id);
    assert_eq!(
        done.result,
        Err(ActionError::Timeout {
            stage: Stage::Response,
            timeout: 2 * SEC
        })
    );
}

// ---------------------------------------------------------------------------
// 8: event lists
// ---------------------------------------------------------------------------

fn list_item(name: &str, id: &str, extra: &str) -> String {
    format!("Event: {name}\r\nActionID: {id}\r\n{extra}\r\n")
}

fn list_complete(name: &str, id: &str, items: usize) -> String {
    format!("Event: {name}\r\nActionID: {id}\r\nEventList: Complete\r\nListItems: {items}\r\n\r\n")
}

#[test]
fn event_list_collects_items_in_order_and_keeps_them_out_of_events() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    assert_eq!(h.action_ids_of("QueueStatus"), std::slice::from_ref(&id));
    h.reply(&success(
        &id,
        "EventList: start\r\nMessage: Queue status will follow\r\n",
    ));
    h.reply(&list_item("QueueParams", &id, "Queue: sales\r\n"));
    // A broadcast event in the middle of the list.
    h.reply("Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/100-00000001\r\n\r\n");
    h.reply(&list_item("QueueMember", &id, "Name: PJSIP/100\r\n"));
    h.reply(&list_item("QueueMember", &id, "Name: PJSIP/101\r\n"));
    assert_eq!(h.conn.pending_actions(), 1);
    assert!(completions(&h.outputs()).is_empty(), "not before Complete");

    h.reply(&list_complete("QueueStatusComplete", &id, 3));
    let outputs = h.outputs();
    assert_eq!(
        event_names(&outputs),
        [] as [&str; 0],
        "events already polled"
    );
    let done = completions(&outputs);
    assert_eq!(done.len(), 1, "{outputs:?}");
    assert_eq!(done[0].action_id, id);
    let reply = done[0].result.as_ref().unwrap();
    assert_eq!(reply.response.get("EventList"), Some("start"));
    let items: Vec<(&str, Option<&str>)> = reply
        .events
        .iter()
        .map(|e| {
            (
                e.event_name().unwrap(),
                e.get("Queue").or_else(|| e.get("Name")),
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("QueueParams", Some("sales")),
            ("QueueMember", Some("PJSIP/100")),
            ("QueueMember", Some("PJSIP/101"))
        ]
    );
    let end = reply.list_end.as_ref().unwrap();
    assert_eq!(end.event_name(), Some("QueueStatusComplete"));
    assert_eq!(end.get("ListItems"), Some("3"));
    assert_eq!(
        h.conn.stats().events.queued,
        1,
        "only Newchannel was queued"
    );
}

#[test]
fn event_list_broadcast_in_the_middle_is_delivered_as_event() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, action::CoreShowChannels).unwrap();
    h.reply(&success(&id, "EventList: start\r\n"));
    h.reply("Event: Hangup\r\nChannel: PJSIP/100-00000001\r\n\r\n");
    h.reply(&list_item(
        "CoreShowChannel",
        &id,
        "Channel: PJSIP/101-2\r\n",
    ));
    h.reply(&list_complete("CoreShowChannelsComplete", &id, 1));
    let outputs = h.outputs();
    assert_eq!(event_names(&outputs), ["Hangup"]);
    let done = completions(&outputs);
    assert_eq!(done[0].result.as_ref().unwrap().events.len(), 1);
}

#[test]
fn event_list_start_is_case_insensitive_and_empty_list_is_ok() {
    // res_fax writes `EventList: Start` (PROTOCOL-NOTES 19).
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(
            h.now,
            Action::new("FAXSessions").with_strategy(ami_proto::Strategy::EventList),
        )
        .unwrap();
    h.reply(&success(&id, "EventList: Start\r\n"));
    assert!(h.outputs().is_empty());
    h.reply(&list_complete("FAXSessionsComplete", &id, 0));
    let done = h.one_completion();
    let reply = done.result.unwrap();
    assert!(reply.events.is_empty());
    assert!(reply.list_end.is_some());
}

#[test]
fn event_list_error_in_the_middle_ends_it_rejected() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, action::PJSIPShowEndpoint::new("100"))
        .unwrap();
    h.reply(&success(&id, "EventList: start\r\n"));
    h.reply(&list_item("EndpointDetail", &id, "ObjectName: 100\r\n"));
    h.reply(&error(&id, "Unable to retrieve endpoint 100"));
    let done = h.one_completion();
    assert_eq!(done.action_id, id);
    match done.result {
        Err(ActionError::Rejected { message, response }) => {
            assert_eq!(message, "Unable to retrieve endpoint 100");
            assert_eq!(response.response(), Some("Error"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.conn.pending_actions(), 0);
}

#[test]
fn event_list_item_cap_fails_with_list_too_long() {
    let mut cfg = quiet_config();
    cfg.max_list_items = 2;
    let mut h = Harness::logged_in(cfg);

    // Exactly at the cap: fine.
    let ok = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    h.reply(&success(&ok, "EventList: start\r\n"));
    for _ in 0..2 {
        h.reply(&list_item("QueueMember", &ok, ""));
    }
    h.reply(&list_complete("QueueStatusComplete", &ok, 2));
    assert_eq!(h.one_completion().result.unwrap().events.len(), 2);

    // Past the cap: the action fails when the list ends, the extra items are
    // neither kept nor delivered as events.
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    h.reply(&success(&id, "EventList: start\r\n"));
    for i in 0..5 {
        h.reply(&list_item("QueueMember", &id, &format!("Name: m{i}\r\n")));
    }
    assert_eq!(h.outputs(), [], "fails only when the list ends");
    h.reply(&list_complete("QueueStatusComplete", &id, 5));
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(
        failure(completions(&outputs)[0]),
        &ActionError::ListTooLong {
            limit: 2,
            received: 5
        }
    );
    assert_eq!(h.conn.stats().events.queued, 0);
}

#[test]
fn single_response_action_collects_a_list_when_the_server_starts_one() {
    // Hangup with a regex answers with a list of the channels hung up.
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, action::Hangup::new("/^PJSIP/10.*$/"))
        .unwrap();
    h.reply(&success(
        &id,
        "EventList: start\r\nMessage: Channels hung up will follow\r\n",
    ));
    h.reply(&list_item(
        "ChannelHungup",
        &id,
        "Channel: PJSIP/100-00000001\r\n",
    ));
    h.reply(&list_item(
        "ChannelHungup",
        &id,
        "Channel: PJSIP/101-00000002\r\n",
    ));
    assert_eq!(h.outputs(), []);
    h.reply(&list_complete("ChannelsHungupListComplete", &id, 2));
    let done = h.one_completion();
    let reply = done.result.unwrap();
    assert_eq!(reply.events.len(), 2);
    assert_eq!(reply.events[1].get("Channel"), Some("PJSIP/101-00000002"));
    assert_eq!(
        reply.list_end.unwrap().event_name(),
        Some("ChannelsHungupListComplete")
    );
}

#[test]
fn event_list_never_ended_times_out_in_list_stage() {
    let mut h = Harness::logged_in(quiet_config());
    let sent_at = h.now;
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    h.advance(SEC);
    h.reply(&success(&id, "EventList: start\r\n"));
    h.reply(&list_item("QueueMember", &id, ""));
    h.jump();
    let done = h.one_completion();
    // Each item restarts the deadline: the list stalled after the item at 1 s.
    assert_eq!(done.completed_at, sent_at + SEC + 30 * SEC);
    assert!(
        matches!(
            done.result,
            Err(ActionError::Timeout {
                stage: Stage::EventList,
                ..
            })
        ),
        "{:?}",
        done.result
    );
}

/// After an action failed early (a list item was too large), the rest of its list
/// still carries its ActionID: those items and the `...Complete` event must not reach
/// the application as broadcast events.
#[test]

fn event_list_rest_of_list_after_early_failure_is_not_delivered_as_events() {
    let mut cfg = quiet_config();
    cfg.limits = Limits {
        max_frame_size: 256,
        max_command_output: 1024,
    };
    let mut h = Harness::logged_in(cfg);
    let id = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    h.reply(&success(&id, "EventList: start\r\n"));
    h.reply(&list_item(
        "QueueMember",
        &id,
        &format!("X: {}\r\n", "y".repeat(400)),
    ));
    let outputs = h.outputs();
    assert_eq!(
        failure(completions(&outputs)[0]),
        &ActionError::Discarded(ParseError::FrameTooLarge { limit: 256 })
    );
    h.reply(&list_item("QueueMember", &id, "Name: m2\r\n"));
    h.reply(&list_complete("QueueStatusComplete", &id, 2));
    let outputs = h.outputs();
    assert_eq!(
        event_names(&outputs),
        [] as [&str; 0],
        "items of this connection's own list came out as broadcast events: {outputs:?}"
    );
}

// ---------------------------------------------------------------------------
// 9: Command
// ---------------------------------------------------------------------------

#[test]
fn command_modern_output_lines() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, action::Command::new("pjsip show contacts"))
        .unwrap();
    let written = h.written_actions();
    assert_eq!(written[0].get("Command"), Some("pjsip show contacts"));
    h.reply(&success(
        &id,
        "Message: Command output follows\r\nOutput: Contact:  <Aor/ContactUri..>  <Hash....> <Status> <RTT(ms)..>\r\nOutput: \r\nOutput: Objects found: 0\r\n",
    ));
    let reply = h.one_completion().result.unwrap();
    assert_eq!(
        reply.output(),
        [
            "Contact:  <Aor/ContactUri..>  <Hash....> <Status> <RTT(ms)..>",
            "",
            "Objects found: 0"
        ]
    );
}

#[test]
fn command_legacy_follows_body_lines() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, action::Command::new("core show version"))
        .unwrap();
    h.reply(&format!(
        "Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\nAsterisk 13.38.3 built by root\r\n\r\nKey: looks like a header\r\n--END COMMAND--\r\n\r\n"
    ));
    let reply = h.one_completion().result.unwrap();
    assert_eq!(reply.response.response(), Some("Follows"));
    assert_eq!(
        reply.output(),
        [
            "Asterisk 13.38.3 built by root",
            "",
            "Key: looks like a header"
        ]
    );
}

#[test]
fn command_unknown_is_rejected() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, action::Command::new("core show foo"))
        .unwrap();
    h.reply(&format!(
        "Response: Error\r\nActionID: {id}\r\nMessage: Command output follows\r\nOutput: No such command 'core show foo' (type 'core show help core show foo' for other possible commands)\r\n\r\n"
    ));
    match h.one_completion().result {
        Err(ActionError::Rejected { message, response }) => {
            assert_eq!(message, "Command output follows");
            assert!(response.output_lines()[0].starts_with("No such command"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn command_output_may_exceed_the_frame_limit_up_to_its_own() {
    let mut cfg = quiet_config();
    cfg.limits = Limits {
        max_frame_size: 128,
        max_command_output: 1024,
    };
    let mut h = Harness::logged_in(cfg);
    let id = h
        .conn
        .send(h.now, action::Command::new("core show help"))
        .unwrap();
    let lines: Vec<String> = (0..20).map(|i| format!("line {i:02} of help")).collect();
    let body: String = lines.iter().map(|l| format!("Output: {l}\r\n")).collect();
    let text = success(&id, &format!("Message: Command output follows\r\n{body}"));
    assert!(text.len() > 128 && text.len() < 1024);
    h.reply(&text);
    let reply = h.one_completion().result.unwrap();
    assert_eq!(reply.output(), lines);
}

#[test]
fn command_output_too_large_is_discarded_and_fails_the_action() {
    let mut cfg = quiet_config();
    cfg.limits = Limits {
        max_frame_size: 128,
        max_command_output: 512,
    };
    let mut h = Harness::logged_in(cfg);
    let id = h
        .conn
        .send(h.now, action::Command::new("core show help"))
        .unwrap();
    let body: String = (0..40)
        .map(|i| format!("Output: line {i:02}\r\n"))
        .collect();
    let text = success(&id, &format!("Message: Command output follows\r\n{body}"));
    assert!(text.len() > 512);
    // Line by line: the parser never holds more than the limit plus one byte.
    for line in text.split_inclusive('\n') {
        h.reply(line);
        assert!(
            h.conn.buffered_input() <= 513,
            "{}",
            h.conn.buffered_input()
        );
    }
    let outputs = h.outputs();
    let error = ParseError::OutputTooLarge { limit: 512 };
    let [Output::Completed(done), discarded] = &outputs[..] else {
        panic!("expected a completion and a discard, got {outputs:?}");
    };
    assert_eq!(
        (
            &done.action_id,
            done.sent_at,
            done.completed_at,
            &done.result
        ),
        (
            &id,
            h.now,
            h.now,
            &Err(ActionError::Discarded(error.clone()))
        )
    );
    assert_eq!(
        discarded,
        &Output::Discarded(Discard {
            error,
            bytes: text.len() as u64,
            action_id: Some(id.clone()),
        })
    );
    let stats = h.conn.stats();
    assert_eq!(
        (stats.discards, stats.discarded_bytes),
        (1, text.len() as u64)
    );
    // The connection goes on.
    let ping = h.conn.send(h.now, action::Ping).unwrap();
    h.reply(&success(&ping, "Ping: Pong\r\n"));
    assert!(h.one_completion().result.is_ok());
}

/// Output past the command output limit (1 MiB by default) fails the action as soon as
/// the limit is passed, at that `now`, not at the deadline (30 s) nor when the rest of
/// the output has passed; the rest is skipped and what follows parses normally.
#[test]
fn command_output_over_the_limit_fails_the_action_at_once() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, action::Command::new("core show channels"))
        .unwrap();
    let sent_at = h.now;
    h.advance(SEC);
    let line = format!("Output: {}\r\n", "x".repeat(90));
    let head = success(&id, "Message: Command output follows\r\n");
    let head = &head[..head.len() - 2]; // not ended yet
    let mut text = head.to_owned();
    while text.len() <= 1024 * 1024 {
        text.push_str(&line);
    }
    for piece in text.as_bytes().chunks(64 * 1024) {
        h.reply_bytes(piece);
    }
    let limit = Limits::default().max_command_output;
    let error = ParseError::OutputTooLarge { limit };
    let outputs = h.outputs();
    let [Output::Completed(completion)] = outputs.as_slice() else {
        panic!("completed when the limit was passed: {outputs:?}");
    };
    assert_eq!(completion.action_id, id);
    assert_eq!(
        (completion.sent_at, completion.completed_at),
        (sent_at, h.now)
    );
    assert_eq!(
        completion.result,
        Err(ActionError::Discarded(error.clone()))
    );
    assert_eq!(h.conn.pending_actions(), 0);
    // More output, a second later, then the end of the message and what follows.
    h.advance(SEC);
    let rest = format!("{line}{line}\r\n");
    h.reply(&rest);
    h.reply("Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/100\r\n\r\n");
    let ping = h.conn.send(h.now, action::Ping).unwrap();
    h.reply(&success(&ping, "Ping: Pong\r\n"));
    let outputs = h.outputs();
    let total = (text.len() + rest.len()) as u64;
    assert_eq!(
        outputs[0],
        Output::Discarded(Discard {
            error,
            bytes: total,
            action_id: Some(id),
        })
    );
    assert_eq!(event_names(&outputs), ["Hangup"]);
    let done = completions(&outputs);
    assert_eq!(done.len(), 1, "only the Ping: {outputs:?}");
    assert!(done[0].result.is_ok());
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    assert_eq!(h.conn.stats().discards, 1);
}

/// A legacy `Follows` response over the limit fails its action at once too, and the
/// rest of its body is skipped up to `--END COMMAND--`: its blank lines and
/// `Key: value`-looking lines never come out as messages or further discards.
#[test]
fn legacy_follows_output_over_the_limit_is_skipped_up_to_its_sentinel() {
    let mut cfg = quiet_config();
    cfg.limits = Limits {
        max_frame_size: 128,
        max_command_output: 512,
    };
    let mut h = Harness::logged_in(cfg);
    let id = h
        .conn
        .send(h.now, action::Command::new("core show help"))
        .unwrap();
    let mut text = format!("Response: Follows\r\nPrivilege: Command\r\nActionID: {id}\r\n");
    for i in 0..40 {
        text.push_str(&format!("Key{i}: looks like a header\n\n"));
    }
    assert!(text.len() > 512);
    text.push_str("last line--END COMMAND--\r\n\r\n");
    let after = "Event: Hangup\r\nPrivilege: call,all\r\n\r\n";
    // In pieces that cut the sentinel line too.
    let all = format!("{text}{after}");
    for piece in all.as_bytes().chunks(7) {
        h.reply_bytes(piece);
    }
    let outputs = h.outputs();
    let error = ParseError::OutputTooLarge { limit: 512 };
    assert_eq!(
        failure(completions(&outputs)[0]),
        &ActionError::Discarded(error.clone())
    );
    let discards: Vec<&Discard> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Discarded(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        discards,
        [&Discard {
            error,
            // Up to the end of the sentinel line; the blank line after it is skipped.
            bytes: (text.len() - 2) as u64,
            action_id: Some(id),
        }]
    );
    assert!(unmatched(&outputs).is_empty(), "{outputs:?}");
    assert_eq!(event_names(&outputs), ["Hangup"]);
    assert_eq!(outputs.len(), 3, "{outputs:?}");
}

// ---------------------------------------------------------------------------
// 10: async Originate
// ---------------------------------------------------------------------------

fn originate_response(id: &str, response: &str, reason: u32) -> String {
    format!(
        "Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: {id}\r\nResponse: {response}\r\nChannel: PJSIP/100-00000001\r\nContext: default\r\nExten: 200\r\nReason: {reason}\r\nUniqueid: 1700000000.1\r\nCallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\n\r\n"
    )
}

fn originate() -> action::Originate {
    action::Originate::extension("PJSIP/100", "200", "default", 1)
}

#[test]
fn async_originate_completes_with_its_originate_response() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, originate()).unwrap();
    let written = h.written_actions();
    assert_eq!(written[0].get("Async"), Some("true"));
    h.advance(SEC);
    h.reply(&success(&id, "Message: Originate successfully queued\r\n"));
    assert_eq!(h.outputs(), [], "not complete before the event");
    assert_eq!(h.conn.pending_actions(), 1);
    // Default answer timeout 30 s plus the client's grace: 40 s after the response.
    assert_eq!(h.conn.poll_timeout(), Some(h.now + 40 * SEC));
    h.advance(20 * SEC);
    h.reply(&originate_response(&id, "Success", 4));
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 1, "no Output::Event for it: {outputs:?}");
    let reply = completions(&outputs)[0].result.clone().unwrap();
    assert_eq!(
        reply.response.get("Message"),
        Some("Originate successfully queued")
    );
    assert_eq!(reply.events.len(), 1);
    assert_eq!(reply.events[0].event_name(), Some("OriginateResponse"));
    assert_eq!(reply.events[0].get("Reason"), Some("4"));
    assert_eq!(reply.list_end, None);
    // No action deadline left: only the (quiet) heartbeat.
    assert!(h.conn.poll_timeout().unwrap() > h.now + 3600 * SEC);
}

#[test]
fn async_originate_busy_is_still_ok_with_the_event() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, originate()).unwrap();
    h.reply(&success(&id, "Message: Originate successfully queued\r\n"));
    h.reply(&originate_response(&id, "Failure", 5));
    let reply = h.one_completion().result.unwrap();
    assert_eq!(reply.events[0].get("Reason"), Some("5"));
    assert_eq!(reply.events[0].response(), Some("Failure"));
}

#[test]
fn async_originate_without_event_times_out_in_event_stage() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, originate().with_timeout(20 * SEC))
        .unwrap();
    h.advance(2 * SEC);
    h.reply(&success(&id, "Message: Originate successfully queued\r\n"));
    let response_at = h.now;
    h.advance(30 * SEC - MS);
    assert_eq!(h.outputs(), []);
    h.advance(MS);
    let done = h.one_completion();
    assert_eq!(done.completed_at, response_at + 30 * SEC);
    assert_eq!(
        done.result,
        Err(ActionError::Timeout {
            stage: Stage::OriginateEvent,
            timeout: 30 * SEC
        })
    );
}

#[test]
fn async_originate_rejected_at_once() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, originate()).unwrap();
    h.reply(&error(&id, "Extension does not exist."));
    assert!(matches!(
        h.one_completion().result,
        Err(ActionError::Rejected { message, .. }) if message == "Extension does not exist."
    ));
}

#[test]
fn originate_response_of_another_session_is_an_event_and_completes_nothing() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, originate()).unwrap();
    h.reply(&success(&id, "Message: Originate successfully queued\r\n"));
    let foreign = [
        "dialer7-3-1-2",
        // Same server key and instance, another generation (a former connection).
        "pbx1-1-2-2",
        // This connection's prefix, a counter it never issued.
        "pbx1-1-1-ff",
        // Not hex.
        "pbx1-1-1-2x",
    ];
    for other in foreign {
        h.reply(&originate_response(other, "Success", 4));
    }
    let outputs = h.outputs();
    assert_eq!(events(&outputs).len(), foreign.len(), "{outputs:?}");
    for (event, other) in events(&outputs).into_iter().zip(foreign) {
        assert_eq!(event.get("ActionID"), Some(other));
    }
    assert!(completions(&outputs).is_empty());
    assert_eq!(h.conn.pending_actions(), 1);
    // Ours still completes.
    h.reply(&originate_response(&id, "Success", 4));
    assert!(h.one_completion().result.is_ok());
}

#[test]
fn sync_originate_waits_for_its_response_with_a_longer_deadline() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, originate().with_async(false).with_timeout(60 * SEC))
        .unwrap();
    assert_eq!(h.written_actions()[0].get("Async"), Some("false"));
    assert_eq!(h.conn.poll_timeout(), Some(h.now + 70 * SEC));
    h.advance(45 * SEC);
    h.reply(&success(&id, "Message: Originate successfully queued\r\n"));
    let reply = h.one_completion().result.unwrap();
    assert!(reply.events.is_empty());
}

// ---------------------------------------------------------------------------
// 11: unmatched responses
// ---------------------------------------------------------------------------

#[test]
fn responses_with_foreign_or_missing_action_id_are_unmatched() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, action::Ping).unwrap();
    let inputs = [
        "Response: Success\r\nActionID: someone-else-1\r\nPing: Pong\r\n\r\n".to_owned(),
        "Response: Error\r\nMessage: Missing action in request\r\n\r\n".to_owned(),
        // Neither a response nor an event.
        "Foo: bar\r\n\r\n".to_owned(),
        // This connection's prefix with a counter never issued.
        success("pbx1-1-1-99", ""),
    ];
    for input in &inputs {
        h.reply(input);
    }
    let outputs = h.outputs();
    assert_eq!(unmatched(&outputs).len(), inputs.len(), "{outputs:?}");
    assert_eq!(outputs.len(), inputs.len());
    assert_eq!(
        unmatched(&outputs)[1].get("Message"),
        Some("Missing action in request")
    );
    assert_eq!(h.conn.stats().unmatched, inputs.len() as u64);
    assert_eq!(h.conn.pending_actions(), 1);
    h.reply(&success(&id, "Ping: Pong\r\n"));
    assert_eq!(h.one_completion().action_id, id);
}

/// The connection issues `<prefix><counter in lowercase hex>`; an ID that only
/// decodes to the same counter (leading zero, upper case) was never issued, so by the
/// crate's rule it must complete nothing.
#[test]

fn non_canonical_forms_of_an_issued_action_id_complete_nothing() {
    let mut h = Harness::logged_in(quiet_config());
    let ids: Vec<String> = (0..10)
        .map(|_| h.conn.send(h.now, action::Ping).unwrap())
        .collect();
    // Counters 2..=11: the last one is `b` in hex.
    let last = ids.last().unwrap();
    assert!(last.ends_with("-b"), "{last}");
    let upper = format!("{}B", &last[..last.len() - 1]);
    let zero = format!("{}0b", &last[..last.len() - 1]);
    h.reply(&success(&upper, ""));
    h.reply(&success(&zero, ""));
    let outputs = h.outputs();
    assert_eq!(unmatched(&outputs).len(), 2, "{outputs:?}");
    assert_eq!(h.conn.pending_actions(), 10);
}

#[test]
fn a_second_answer_for_the_same_action_is_counted_as_late() {
    // JabberSend answers twice (PROTOCOL-NOTES 18).
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, Action::new("JabberSend")).unwrap();
    h.reply(&success(&id, ""));
    h.reply(&error(&id, "Failed to send"));
    let outputs = h.outputs();
    assert_eq!(completions(&outputs).len(), 1);
    assert!(completions(&outputs)[0].result.is_ok());
    assert_eq!(unmatched(&outputs).len(), 0);
    assert_eq!(h.conn.stats().late_replies, 1);
}

#[test]
fn pipelined_actions_complete_with_their_own_responses() {
    let mut h = Harness::logged_in(quiet_config());
    let ids: Vec<String> = (0..5)
        .map(|_| h.conn.send(h.now, action::Ping).unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "ActionIDs are unique: {ids:?}");
    assert_eq!(h.action_ids_of("Ping"), ids);
    // Answered in reverse order, each carrying its index.
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate().rev() {
        text.push_str(&success(id, &format!("Index: {i}\r\n")));
    }
    h.reply(&text);
    let outputs = h.outputs();
    let done = completions(&outputs);
    assert_eq!(done.len(), 5);
    for done in done {
        let i: usize = done
            .result
            .as_ref()
            .unwrap()
            .response
            .get("Index")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(done.action_id, ids[i]);
    }
    assert_eq!(h.conn.stats().completed, 5);
}

#[test]
fn action_ids_stay_short_with_long_server_keys_and_big_counters() {
    let mut cfg = quiet_config();
    cfg.server_key = "a very long server key with ü and spaces, longer than twenty".into();
    let now = std::time::Instant::now();
    let mut conn = ami_proto::Connection::new(cfg, u32::MAX, u64::MAX, now);
    conn.handle_data(now, BANNER.as_bytes());
    let text = String::from_utf8(conn.poll_transmit().to_vec()).unwrap();
    let login = &parse_actions(&text)[0];
    assert!(
        login.id.is_ascii() && login.id.len() <= 64 && !login.id.contains(' '),
        "{}",
        login.id
    );
}

// ---------------------------------------------------------------------------
// 12: connection loss
// ---------------------------------------------------------------------------

/// A logged-in connection with three actions in three different stages.
fn three_pending() -> (Harness, Vec<String>) {
    let mut h = Harness::logged_in(quiet_config());
    let ping = h.conn.send(h.now, action::Ping).unwrap();
    let list = h.conn.send(h.now, action::QueueStatus::default()).unwrap();
    let orig = h.conn.send(h.now, originate()).unwrap();
    h.written();
    h.reply(&success(&list, "EventList: start\r\n"));
    h.reply(&list_item("QueueMember", &list, ""));
    h.reply(&success(
        &orig,
        "Message: Originate successfully queued\r\n",
    ));
    assert_eq!(h.outputs(), []);
    assert_eq!(h.conn.pending_actions(), 3);
    (h, vec![ping, list, orig])
}

fn assert_all_closed(outputs: &[Output], ids: &[String], reason: &CloseReason) {
    let done = completions(outputs);
    assert_eq!(done.len(), ids.len(), "{outputs:?}");
    for (done, id) in done.iter().zip(ids) {
        assert_eq!(&done.action_id, id);
        assert_eq!(
            done.result,
            Err(ActionError::ConnectionClosed {
                reason: reason.clone()
            })
        );
    }
    let n = outputs.len();
    assert_eq!(
        outputs[n - 2..],
        [
            Output::StateChanged {
                from: State::Healthy,
                to: State::Closed
            },
            Output::Closed(reason.clone())
        ]
    );
}

#[test]
fn eof_fails_every_pending_action_once_then_closes() {
    let (mut h, ids) = three_pending();
    h.conn.handle_eof(h.now);
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    assert_all_closed(&outputs, &ids, &CloseReason::PeerClosed);
    assert_eq!(h.conn.state(), State::Closed);
    assert_eq!(h.conn.pending_actions(), 0);
    assert_eq!(h.conn.poll_timeout(), None);
    assert_eq!(h.conn.stats().failed, 3);
    // Nothing more, whatever comes in.
    h.conn.handle_eof(h.now);
    h.conn
        .handle_transport_error(h.now, &"connection reset by peer");
    h.reply(&success(&ids[0], ""));
    h.advance(3600 * SEC);
    h.conn.close(h.now);
    assert_eq!(h.outputs(), []);
    assert_eq!(h.written(), "");
}

#[test]
fn eof_inside_a_frame_reports_it_truncated() {
    let (mut h, ids) = three_pending();
    let partial = "Event: Newchannel\r\nChannel: PJS";
    h.reply(partial);
    h.conn.handle_eof(h.now);
    let outputs = h.outputs();
    assert_eq!(
        outputs[0],
        Output::Discarded(Discard {
            error: ParseError::Truncated,
            bytes: partial.len() as u64,
            action_id: None
        })
    );
    assert_eq!(outputs.len(), 6, "{outputs:?}");
    assert_all_closed(&outputs[1..], &ids, &CloseReason::PeerClosed);
    assert_eq!(h.conn.stats().discards, 1);
}

#[test]
fn eof_inside_an_actions_response_fails_it_as_truncated_once() {
    let (mut h, ids) = three_pending();
    h.reply(&format!(
        "Response: Success\r\nActionID: {}\r\nPing: Po",
        ids[0]
    ));
    h.conn.handle_eof(h.now);
    let outputs = h.outputs();
    let done = completions(&outputs);
    assert_eq!(done.len(), 3, "{outputs:?}");
    assert_eq!(done[0].action_id, ids[0]);
    assert_eq!(
        done[0].result,
        Err(ActionError::Discarded(ParseError::Truncated))
    );
    assert_all_closed(&outputs[2..], &ids[1..], &CloseReason::PeerClosed);
}

#[test]
fn transport_error_fails_every_pending_action_once_then_closes() {
    let (mut h, ids) = three_pending();
    h.conn
        .handle_transport_error(h.now, &"connection reset by peer");
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    let reason = CloseReason::Transport("connection reset by peer".into());
    assert_all_closed(&outputs, &ids, &reason);
    h.conn.handle_eof(h.now);
    assert_eq!(h.outputs(), []);
}

#[test]
fn closing_drops_unwritten_bytes() {
    let mut h = Harness::logged_in(quiet_config());
    h.conn.send(h.now, action::Ping).unwrap();
    assert!(h.conn.queued_transmit() > 0);
    h.conn.handle_eof(h.now);
    assert_eq!(h.conn.queued_transmit(), 0);
    assert_eq!(h.written(), "");
}

// ---------------------------------------------------------------------------
// 13: graceful close
// ---------------------------------------------------------------------------

#[test]
fn graceful_close_completes_earlier_actions_then_goodbye() {
    let mut h = Harness::logged_in(quiet_config());
    let ping = h.conn.send(h.now, action::Ping).unwrap();
    let cmd = h
        .conn
        .send(h.now, action::Command::new("core show uptime"))
        .unwrap();
    h.written();
    h.conn.close(h.now);
    let logoff = h.written_actions();
    assert_eq!(logoff.len(), 1);
    assert_eq!(
        logoff[0].raw,
        format!("Action: Logoff\r\nActionID: {}\r\n\r\n", logoff[0].id)
    );
    assert_eq!(h.conn.state(), State::Closing);
    assert_eq!(
        h.outputs(),
        [Output::StateChanged {
            from: State::Healthy,
            to: State::Closing
        }]
    );
    assert_eq!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::NotReady {
            state: State::Closing
        })
    );
    // A second close writes nothing more.
    h.conn.close(h.now);
    assert_eq!(h.written(), "");

    h.reply(&success(&ping, "Ping: Pong\r\n"));
    h.reply(&success(&cmd, "Output: System uptime: 1 hour\r\n"));
    let outputs = h.outputs();
    let done = completions(&outputs);
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|d| d.result.is_ok()));
    assert_eq!(h.conn.state(), State::Closing);

    h.reply(&format!(
        "Response: Goodbye\r\nActionID: {}\r\nMessage: Thanks for all the fish.\r\n\r\n",
        logoff[0].id
    ));
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::Closing,
                to: State::Closed
            },
            Output::Closed(CloseReason::Graceful)
        ]
    );
    h.conn.handle_eof(h.now);
    assert_eq!(h.outputs(), []);
}

#[test]
fn graceful_close_fails_actions_left_unanswered_at_goodbye() {
    let mut h = Harness::logged_in(quiet_config());
    let ping = h.conn.send(h.now, action::Ping).unwrap();
    h.conn.close(h.now);
    let logoff = h.action_ids_of("Logoff").pop().unwrap();
    h.outputs();
    h.reply(&format!("Response: Goodbye\r\nActionID: {logoff}\r\n\r\n"));
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    let done = completions(&outputs);
    assert_eq!(done[0].action_id, ping);
    assert_eq!(
        done[0].result,
        Err(ActionError::ConnectionClosed {
            reason: CloseReason::Graceful
        })
    );
}

#[test]
fn graceful_close_eof_instead_of_goodbye_is_graceful() {
    let mut h = Harness::logged_in(quiet_config());
    h.conn.close(h.now);
    h.outputs();
    h.conn.handle_eof(h.now);
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::Closing,
                to: State::Closed
            },
            Output::Closed(CloseReason::Graceful)
        ]
    );
}

#[test]
fn logoff_never_answered_closes_with_logoff_timeout() {
    let mut h = Harness::logged_in(config());
    h.advance(3 * SEC);
    h.conn.close(h.now);
    h.written();
    h.outputs();
    // The heartbeat stopped: the next deadline is the Logoff's.
    assert_eq!(h.conn.poll_timeout(), Some(h.now + 5 * SEC));
    h.advance(5 * SEC - MS);
    assert_eq!(h.outputs(), []);
    h.advance(MS);
    assert_eq!(
        h.outputs(),
        [
            Output::StateChanged {
                from: State::Closing,
                to: State::Closed
            },
            Output::Closed(CloseReason::LogoffTimeout)
        ]
    );
    assert_eq!(h.action_ids_of("Ping"), [] as [String; 0]);
}

/// `close()` promises to wait for `Goodbye` until the close deadline. A heartbeat Ping
/// sent before the close and missed while Closing must not cut that wait short (nor
/// turn the reason into a heartbeat failure).
#[test]

fn close_while_degraded_waits_for_the_logoff_deadline() {
    let mut cfg = config();
    cfg.heartbeat_max_misses = 2;
    let mut h = Harness::logged_in(cfg);
    let login_at = h.now;
    h.jump(); // Ping at 15 s
    h.jump(); // missed at 20 s
    assert_eq!(h.conn.state(), State::Degraded);
    h.jump(); // Ping at 30 s, deadline 35 s
    h.advance(SEC);
    h.conn.close(h.now); // Logoff at 31 s, deadline 36 s
    h.written();
    h.outputs();
    let mut closed = None;
    while closed.is_none() {
        h.jump();
        closed = h.outputs().into_iter().find_map(|o| match o {
            Output::Closed(reason) => Some(reason),
            _ => None,
        });
    }
    assert_eq!(
        (h.now - login_at, closed.unwrap()),
        (36 * SEC, CloseReason::LogoffTimeout)
    );
}

#[test]
fn close_before_login_closes_at_once_without_writing() {
    for connected in [false, true] {
        let mut h = Harness::new(config());
        if connected {
            h.conn.handle_connected(h.now);
        }
        h.outputs();
        h.conn.close(h.now);
        assert_eq!(h.written(), "");
        let outputs = h.outputs();
        assert_eq!(
            outputs.last(),
            Some(&Output::Closed(CloseReason::Graceful)),
            "{outputs:?}"
        );
        assert_eq!(h.conn.poll_timeout(), None);
    }
}

#[test]

fn close_while_authenticating_stays_closing_when_login_succeeds() {
    let mut h = Harness::with_banner(quiet_config());
    let login = h.written_actions()[0].id.clone();
    h.outputs();
    h.conn.close(h.now);
    assert_eq!(h.action_ids_of("Logoff").len(), 1);
    assert_eq!(h.conn.state(), State::Closing);
    h.outputs();
    // Asterisk answers the Login first (actions are processed in order).
    h.reply(&success(&login, "Message: Authentication accepted\r\n"));
    assert_eq!(
        h.conn.state(),
        State::Closing,
        "went back to {:?}",
        h.outputs()
    );
    assert_eq!(h.outputs(), []);
    assert!(h.conn.send(h.now, action::Ping).is_err());
}

#[test]

fn close_while_md5_challenge_pending_sends_no_login_after_logoff() {
    let mut cfg = quiet_config();
    cfg.auth = AuthMethod::Md5;
    let mut h = Harness::with_banner(cfg);
    let challenge = h.written_actions()[0].id.clone();
    h.conn.close(h.now);
    assert_eq!(h.action_ids_of("Logoff").len(), 1);
    h.reply(&success(&challenge, "Challenge: 12345\r\n"));
    assert_eq!(h.written(), "", "nothing may follow the Logoff");
    assert_eq!(h.conn.state(), State::Closing);
}

// ---------------------------------------------------------------------------
// 14: backpressure and refusals
// ---------------------------------------------------------------------------

#[test]
fn write_buffer_limit_refuses_without_touching_queued_bytes() {
    let mut cfg = quiet_config();
    // Size of one `Command` below (its ActionID counter has one hex digit).
    let one = "Action: Command\r\nActionID: pbx1-1-1-2\r\nCommand: core show uptime\r\n\r\n".len();
    cfg.write_buffer_limit = 2 * one;
    let mut h = Harness::logged_in(cfg);
    let cmd = || action::Command::new("core show uptime");
    let a = h.conn.send(h.now, cmd()).unwrap();
    let b = h.conn.send(h.now, cmd()).unwrap();
    assert_eq!(
        h.conn.queued_transmit(),
        2 * one,
        "exactly at the limit is fine"
    );
    let before = h.conn.poll_transmit().to_vec();
    assert_eq!(
        h.conn.send(h.now, cmd()),
        Err(SendError::Backpressure {
            buffered: 2 * one,
            limit: 2 * one
        })
    );
    assert_eq!(
        h.conn.poll_transmit(),
        &before[..],
        "queued bytes unchanged"
    );
    assert_eq!(h.conn.pending_actions(), 2);
    // A small action that would still fit nowhere is refused too.
    assert!(matches!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::Backpressure { .. })
    ));

    // The socket takes part of the first action: room for a Ping but not a Command.
    h.conn.advance_transmit(40);
    assert_eq!(h.conn.poll_transmit(), &before[40..]);
    let c = h.conn.send(h.now, action::Ping).unwrap();
    assert_eq!(&h.conn.poll_transmit()[..before.len() - 40], &before[40..]);
    h.conn.advance_transmit(usize::MAX);
    let d = h.conn.send(h.now, cmd()).unwrap();
    assert_eq!(h.conn.stats().refused, 2);
    assert_eq!(h.conn.pending_actions(), 4);
    // Refused actions never complete; the others do.
    h.written();
    h.conn.handle_eof(h.now);
    let outputs = h.outputs();
    let done: Vec<&str> = completions(&outputs)
        .iter()
        .map(|c| c.action_id.as_str())
        .collect();
    assert_eq!(done, [a, b, c, d]);
}

#[test]
fn partial_writes_of_odd_sizes_reassemble_the_exact_stream() {
    // Over 64 KiB written in odd pieces while more is queued: the transmit buffer
    // reclaims its written head on the way and must never lose or repeat a byte.
    let mut h = Harness::logged_in(quiet_config());
    let sent_before = h.conn.stats().bytes_sent;
    let mut expected = Vec::new();
    let mut written = Vec::new();
    for round in 0..40 {
        for i in 0..100 {
            let before = h.conn.queued_transmit();
            h.conn
                .send(
                    h.now,
                    Action::new("UserEvent").header("UserEvent", format!("r{round}-{i}")),
                )
                .unwrap();
            expected.extend_from_slice(&h.conn.poll_transmit()[before..]);
        }
        // Take a bit less than was added, in pieces of 997 bytes.
        let mut budget = h.conn.queued_transmit() * 9 / 10;
        while budget > 0 {
            let n = budget.min(997).min(h.conn.poll_transmit().len());
            written.extend_from_slice(&h.conn.poll_transmit()[..n]);
            h.conn.advance_transmit(n);
            budget -= n;
        }
        let sent = h.conn.stats().bytes_sent;
        assert_eq!(
            h.conn.queued_transmit(),
            expected.len() - written.len(),
            "round {round}, {sent} bytes sent"
        );
    }
    written.extend_from_slice(h.conn.poll_transmit());
    let n = h.conn.queued_transmit();
    h.conn.advance_transmit(n + 10);
    assert!(expected.len() > 3 * 64 * 1024);
    assert_eq!(written.len(), expected.len());
    assert!(written == expected, "the written stream differs");
    assert_eq!(h.conn.queued_transmit(), 0);
    assert_eq!(
        h.conn.stats().bytes_sent - sent_before,
        written.len() as u64,
        "advance_transmit past the end counts only what was there"
    );
    assert_eq!(
        parse_actions(std::str::from_utf8(&written).unwrap()).len(),
        4000
    );
}

#[test]
fn too_many_pending_refuses_until_one_completes() {
    let mut cfg = config();
    cfg.max_pending_actions = 2;
    let mut h = Harness::logged_in(cfg);
    let a = h.conn.send(h.now, action::Ping).unwrap();
    h.conn.send(h.now, action::Ping).unwrap();
    assert_eq!(
        h.conn.send(h.now, action::Ping),
        Err(SendError::TooManyPending { limit: 2 })
    );
    h.reply(&success(&a, ""));
    h.outputs();
    assert!(h.conn.send(h.now, action::Ping).is_ok());
    assert_eq!(h.conn.pending_actions(), 2);
    // The connection's own heartbeat does not count against the application.
    h.jump();
    assert_eq!(h.action_ids_of("Ping").len(), 4);
    assert_eq!(h.conn.pending_actions(), 2);
    assert_eq!(h.conn.stats().refused, 1);
}

#[test]
fn encode_errors_are_refused_and_write_nothing() {
    let mut h = Harness::logged_in(quiet_config());
    let refused = [
        Action::new("Command").header("Command", "core show uptime\r\nAction: Originate"),
        Action::new("Command").header("Com\nmand", "x"),
        Action::new("UserEvent").header("ActionID", "mine"),
        Action::new(""),
        Action::new("UserEvent").header("Body", "x".repeat(2000)),
    ];
    for action in refused {
        let result = h.conn.send(h.now, action.clone());
        assert!(
            matches!(result, Err(SendError::Encode(_))),
            "{action:?}: {result:?}"
        );
        assert_eq!(h.conn.poll_transmit(), b"", "{action:?}");
    }
    assert_eq!(h.conn.pending_actions(), 0);
    assert_eq!(h.conn.stats().refused, 5);
    assert_eq!(h.outputs(), []);
    assert_eq!(
        h.conn
            .send(h.now, Action::new("Command").header("Command", "a\rb")),
        Err(SendError::Encode(action::EncodeError::HeaderInjection {
            key: "Command".into()
        }))
    );
}

#[test]
fn secret_with_line_break_cannot_log_in_and_is_not_written() {
    let mut cfg = config();
    cfg.secret = Secret::new(format!("{SECRET}\r\nAction: Originate"));
    let mut h = Harness::with_banner(cfg);
    assert_eq!(h.written(), "");
    let outputs = h.outputs();
    // Not an authentication failure: the server never saw a login.
    assert_eq!(
        outputs.last(),
        Some(&Output::Closed(CloseReason::Unencodable {
            action: "Login".into(),
            error: action::EncodeError::HeaderInjection {
                key: "Secret".into()
            },
        })),
        "{outputs:?}"
    );
    assert!(!format!("{outputs:?}").contains(SECRET));
    assert!(!h.conn.close_reason().unwrap().to_string().contains(SECRET));
}

// ---------------------------------------------------------------------------
// 15: events
// ---------------------------------------------------------------------------

#[test]
fn events_keep_their_order_and_carry_server_key_and_time() {
    let mut h = Harness::logged_in(quiet_config());
    let t0 = h.now;
    h.reply("Event: Newchannel\r\nChannel: A\r\n\r\nEvent: Newstate\r\nChannel: A\r\n\r\n");
    h.advance(7 * MS);
    h.reply("Event: Hangup\r\nChannel: A\r\n\r\n");
    let outputs = h.outputs();
    assert_eq!(event_names(&outputs), ["Newchannel", "Newstate", "Hangup"]);
    let evs = events(&outputs);
    assert!(evs.iter().all(|e| &**e.server_key() == "pbx1"));
    assert_eq!(evs[0].received_at, t0);
    assert_eq!(evs[2].received_at, t0 + 7 * MS);
    assert_eq!(evs[0].get("Channel"), Some("A"));
}

#[test]
fn event_queue_drops_the_oldest_and_counts_exactly() {
    let mut cfg = quiet_config();
    cfg.event_queue_capacity = 3;
    let mut h = Harness::logged_in(cfg);
    for i in 0..10 {
        h.reply(&format!("Event: E{i}\r\n\r\n"));
        assert!(h.conn.queued_events() <= 3);
    }
    assert_eq!(h.conn.queued_events(), 3);
    let stats = h.conn.stats().events;
    assert_eq!((stats.queued, stats.dropped, stats.blocked), (10, 7, 0));
    assert_eq!(event_names(&h.outputs()), ["E7", "E8", "E9"]);
    assert_eq!(h.conn.queued_events(), 0);
}

#[test]
fn blocked_events_are_never_delivered_and_counted() {
    let mut cfg = quiet_config();
    cfg.blocked_events = vec!["RTCPSent".into(), "VarSet".into()];
    let mut h = Harness::logged_in(cfg);
    h.reply(
        "Event: rtcpsent\r\n\r\nEvent: Hangup\r\n\r\nEvent: VarSet\r\n\r\nEvent: RTCPSent\r\n\r\n",
    );
    assert_eq!(event_names(&h.outputs()), ["Hangup"]);
    let stats = h.conn.stats().events;
    assert_eq!((stats.queued, stats.dropped, stats.blocked), (1, 0, 3));
}

#[test]
fn priority_events_come_first() {
    let mut cfg = quiet_config();
    cfg.priority_events = vec!["DialBegin".into()];
    let mut h = Harness::logged_in(cfg);
    h.reply("Event: VarSet\r\n\r\nEvent: Newexten\r\n\r\nEvent: DialBegin\r\n\r\nEvent: Hangup\r\n\r\nEvent: dialbegin\r\nN: 2\r\n\r\n");
    assert_eq!(
        event_names(&h.outputs()),
        ["DialBegin", "dialbegin", "VarSet", "Newexten", "Hangup"]
    );
}

/// What each output is, in order, for order assertions.
fn labels(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .map(|o| match o {
            Output::Event(e) => e.name().to_owned(),
            Output::Completed(done) => format!("done {}", done.action_id),
            Output::StateChanged { to, .. } => format!("{to:?}"),
            Output::Discarded(_) => "discarded".to_owned(),
            Output::Unmatched(_) => "unmatched".to_owned(),
            Output::Closed(_) => "closed".to_owned(),
        })
        .collect()
}

#[test]
fn outputs_keep_wire_order() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, action::Ping).unwrap();
    h.reply("Event: Hangup\r\n\r\n");
    h.reply(&success(&id, ""));
    h.reply("Event: Newchannel\r\n\r\n");
    assert_eq!(
        labels(&h.outputs()),
        ["Hangup", &format!("done {id}"), "Newchannel"]
    );
}

/// An Originate completes with its `OriginateResponse`; the channel events Asterisk
/// sent before it come out before the completion, not after.
#[test]
fn originate_completion_comes_after_the_events_that_preceded_its_final_message() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, originate()).unwrap();
    h.reply(&success(&id, "Message: Originate successfully queued\r\n"));
    h.reply("Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/100-00000001\r\n\r\n");
    h.reply("Event: Newstate\r\nPrivilege: call,all\r\nChannel: PJSIP/100-00000001\r\n\r\n");
    h.reply(&originate_response(&id, "Success", 4));
    h.reply("Event: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/100-00000001\r\n\r\n");
    assert_eq!(
        labels(&h.outputs()),
        ["Newchannel", "Newstate", &format!("done {id}"), "Hangup"]
    );
}

/// Timeouts and state changes take their place among the events too.
#[test]
fn timeouts_and_state_changes_keep_their_place_among_events() {
    let mut h = Harness::logged_in(config());
    h.reply("Event: A\r\n\r\n");
    h.advance(15 * SEC); // heartbeat Ping sent
    h.reply("Event: B\r\n\r\n");
    h.advance(5 * SEC); // unanswered: Degraded
    h.reply("Event: C\r\n\r\n");
    h.conn.handle_eof(h.now);
    assert_eq!(
        labels(&h.outputs()),
        ["A", "B", "Degraded", "C", "Closed", "closed"]
    );
}

/// Priority events go ahead of ordinary events: the oldest priority event takes the
/// place of the oldest queued event, and so also passes the outputs that arrived after
/// that event; never one that arrived before every queued event.
#[test]
fn priority_events_go_ahead_of_ordinary_events_only() {
    let mut cfg = quiet_config();
    cfg.priority_events = vec!["DialBegin".into()];
    let mut h = Harness::logged_in(cfg);
    let first = h.conn.send(h.now, action::Ping).unwrap();
    let second = h.conn.send(h.now, action::Ping).unwrap();
    h.reply(&success(&first, ""));
    h.reply("Event: Newchannel\r\n\r\n");
    h.reply(&success(&second, ""));
    h.reply("Event: DialBegin\r\n\r\n");
    h.reply("Event: Hangup\r\n\r\n");
    assert_eq!(
        labels(&h.outputs()),
        [
            &format!("done {first}"),
            "DialBegin",
            "Newchannel",
            &format!("done {second}"),
            "Hangup"
        ]
    );
}

/// `Closed` stays the very last output, after the events that arrived before it.
#[test]
fn closed_is_the_very_last_output() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, action::Ping).unwrap();
    h.reply("Event: A\r\n\r\n");
    h.conn.handle_transport_error(h.now, &"reset");
    let outputs = h.outputs();
    assert_eq!(
        labels(&outputs),
        ["A", &format!("done {id}"), "Closed", "closed"]
    );
}

// ---------------------------------------------------------------------------
// 16: secrets
// ---------------------------------------------------------------------------

/// The secret as the derived `Debug` of a `Vec<u8>` would print it.
fn secret_as_debug_bytes() -> String {
    let bytes = format!("{:?}", SECRET.as_bytes());
    bytes.trim_matches(['[', ']']).to_owned()
}

#[test]
fn secret_never_in_debug_or_errors_but_on_the_wire() {
    let cfg = config();
    assert!(!format!("{cfg:?}").contains(SECRET));
    assert!(!format!("{cfg:#?}").contains(SECRET));

    let mut h = Harness::new(cfg);
    assert!(!format!("{:?}", h.conn).contains(SECRET));
    h.conn.handle_connected(h.now);
    h.reply(BANNER);
    // The Login is queued, not yet written.
    assert!(!format!("{:?}", h.conn).contains(SECRET));
    assert!(!format!("{:#?}", h.conn).contains(SECRET));
    let login = h.written();
    assert!(
        login.contains(&format!("Secret: {SECRET}\r\n")),
        "that is the wire"
    );
    let id = parse_actions(&login)[0].id.clone();

    // A server that echoes the secret in an error: the error's Debug and Display mask it.
    h.reply(&format!(
        "Response: Error\r\nActionID: {id}\r\nMessage: Authentication failed\r\nSecret: {SECRET}\r\n\r\n"
    ));
    let outputs = h.outputs();
    assert!(!format!("{outputs:?}").contains(SECRET));
    assert!(!format!("{:?}", h.conn).contains(SECRET));

    // Every error kind, Display and Debug.
    let response = {
        let mut h = Harness::logged_in(quiet_config());
        let id = h.conn.send(h.now, action::Ping).unwrap();
        h.reply(&format!(
            "Response: Error\r\nActionID: {id}\r\nMessage: nope\r\nSecret: {SECRET}\r\nPassword: {SECRET}\r\nKey: {SECRET}\r\n\r\n"
        ));
        match h.one_completion().result {
            Err(error) => error,
            Ok(reply) => panic!("{reply:?}"),
        }
    };
    let encode_error = |value: String| {
        Action::new("Login")
            .header("Secret", value)
            .encode("x", &mut Vec::new())
            .unwrap_err()
    };
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(response.clone()),
        Box::new(ActionError::ConnectionClosed {
            reason: CloseReason::AuthenticationFailed {
                message: "Authentication failed".into(),
            },
        }),
        Box::new(SendError::Encode(encode_error(format!("{SECRET}\n")))),
        Box::new(SendError::Encode(encode_error(format!("{SECRET}\r")))),
        Box::new(SendError::Encode(encode_error(SECRET.repeat(200)))),
    ];
    for error in &errors {
        for text in [
            format!("{error}"),
            format!("{error:?}"),
            format!("{error:#?}"),
        ] {
            assert!(!text.contains(SECRET), "{text}");
        }
    }
    if let ActionError::Rejected { response, .. } = &response {
        assert!(!format!("{response:?}").contains(SECRET));
        // The response returned in an error has the client's own secret masked too,
        // even under a key asked for explicitly.
        assert_eq!(response.get("Secret"), Some(ami_proto::redact::MASK));
    }
}

#[test]
fn md5_key_never_in_debug() {
    let mut cfg = config();
    cfg.auth = AuthMethod::Md5;
    let mut h = Harness::with_banner(cfg);
    let cid = h.written_actions()[0].id.clone();
    h.reply(&success(&cid, "Challenge: 840415273\r\n"));
    let key = md5_key("840415273", &Secret::new(SECRET));
    let login = h.written_actions();
    assert_eq!(login[0].get("Key"), Some(key.as_str()));
    let outputs = h.outputs();
    let debug = format!("{:?} {outputs:?}", h.conn);
    assert!(!debug.contains(&key) && !debug.contains(SECRET), "{debug}");
}

#[test]

fn queued_login_is_not_in_connection_debug_even_as_bytes() {
    let mut h = Harness::new(config());
    h.conn.handle_connected(h.now);
    h.reply(BANNER);
    // The Login with the plaintext secret sits in the transmit buffer now.
    assert!(
        h.conn
            .poll_transmit()
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes())
    );
    let debug = format!("{:?}", h.conn);
    assert!(
        !debug.contains(&secret_as_debug_bytes()),
        "the secret can be decoded from Debug: {debug}"
    );
}

// ---------------------------------------------------------------------------
// 17: garbage
// ---------------------------------------------------------------------------

#[test]
fn garbage_mid_stream_is_discarded_and_the_connection_carries_on() {
    let mut h = Harness::logged_in(quiet_config());
    let garbage = b"\x00\x01junk\r\n\r\n";
    let mut input = b"Event: A\r\n\r\n".to_vec();
    input.extend_from_slice(garbage);
    input.extend_from_slice(b"Event: B\r\n\r\n");
    h.reply_bytes(&input);
    let outputs = h.outputs();
    // In wire order: the event before the garbage, its report, the event after.
    assert_eq!(
        outputs[1],
        Output::Discarded(Discard {
            error: ParseError::MalformedLine,
            bytes: garbage.len() as u64,
            action_id: None
        })
    );
    assert_eq!(labels(&outputs), ["A", "discarded", "B"]);
    let stats = h.conn.stats();
    assert_eq!(
        (stats.discards, stats.discarded_bytes),
        (1, garbage.len() as u64)
    );
    assert_eq!(h.conn.state(), State::Healthy);
    h.reply("Event: C\r\n\r\n");
    assert_eq!(event_names(&h.outputs()), ["C"]);
}

#[test]
fn garbage_inside_an_actions_response_fails_that_action_once() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, action::Ping).unwrap();
    h.reply(&format!(
        "Response: Success\r\nActionID: {id}\r\nthis is not a header\r\nPing: Pong\r\n\r\n"
    ));
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(
        failure(completions(&outputs)[0]),
        &ActionError::Discarded(ParseError::MalformedLine)
    );
    assert!(
        matches!(&outputs[1], Output::Discarded(d) if d.action_id.as_deref() == Some(id.as_str()))
    );
    h.advance(3600 * SEC);
    assert_eq!(h.outputs(), []);
}

#[test]
fn reports_are_capped_but_counted() {
    let mut h = Harness::logged_in(quiet_config());
    for _ in 0..1100 {
        h.reply("junk\r\n\r\n");
    }
    let outputs = h.outputs();
    assert_eq!(outputs.len(), 1024);
    let stats = h.conn.stats();
    assert_eq!((stats.discards, stats.reports_dropped), (1100, 76));
    // Room again once polled.
    h.reply("junk\r\n\r\n");
    assert_eq!(h.outputs().len(), 1);
}

#[test]
fn stats_count_bytes_and_messages() {
    let mut h = Harness::logged_in(quiet_config());
    let before = h.conn.stats();
    let id = h.conn.send(h.now, action::Ping).unwrap();
    let sent = h.written().len() as u64;
    let reply = success(&id, "Ping: Pong\r\n");
    h.reply(&reply);
    h.reply("Event: X\r\n\r\n");
    let after = h.conn.stats();
    assert_eq!(after.bytes_sent - before.bytes_sent, sent);
    assert_eq!(
        after.bytes_received - before.bytes_received,
        reply.len() as u64 + 12
    );
    assert_eq!(after.messages - before.messages, 2);
    assert_eq!(after.completed - before.completed, 1);
}

#[test]
fn broadcast_carrying_our_completed_action_id_is_still_an_event() {
    // PROTOCOL-NOTES 17: the UserEvent action copies the sender's ActionID into a
    // broadcast, which may arrive after the action completed. It has `Privilege:`, so
    // it is news, unlike the late list items of test
    // `event_list_rest_of_list_after_early_failure_is_not_delivered_as_events`.
    let mut h = Harness::logged_in(quiet_config());
    let id = h
        .conn
        .send(h.now, Action::new("UserEvent").header("UserEvent", "Hello"))
        .unwrap();
    h.reply(&success(&id, ""));
    h.reply(&format!(
        "Event: UserEvent\r\nPrivilege: user,all\r\nActionID: {id}\r\nUserEvent: Hello\r\n\r\n"
    ));
    let outputs = h.outputs();
    assert_eq!(completions(&outputs).len(), 1);
    assert_eq!(event_names(&outputs), ["UserEvent"]);
    assert_eq!(h.conn.stats().late_replies, 0);
}

// ---------------------------------------------------------------------------
// No panic from any setting: a deadline that overflows means no deadline
// ---------------------------------------------------------------------------

/// A configuration without heartbeats, so that `poll_timeout` shows only the timers
/// under test.
fn no_heartbeat_config() -> ami_proto::Config {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::ZERO;
    cfg
}

#[test]
fn action_timeout_too_long_for_a_deadline_means_the_action_never_times_out() {
    let mut h = Harness::logged_in(no_heartbeat_config());
    let id = h
        .conn
        .send(h.now, Action::new("Ping").with_timeout(Duration::MAX))
        .unwrap();
    assert_eq!(h.conn.poll_timeout(), None, "no deadline is armed");
    h.advance(365 * 24 * 3600 * SEC);
    assert_eq!(h.outputs(), [], "it never times out by itself");
    assert_eq!(h.conn.pending_actions(), 1);
    h.reply(&success(&id, "Ping: Pong\r\n"));
    assert!(h.one_completion().result.is_ok());
}

#[test]
fn list_and_originate_deadlines_that_overflow_mean_no_deadline() {
    let mut h = Harness::logged_in(no_heartbeat_config());
    // Each list item restarts the deadline: that addition overflows too.
    let list = h
        .conn
        .send(
            h.now,
            Action::from(action::QueueStatus::default()).with_timeout(Duration::MAX),
        )
        .unwrap();
    h.reply(&success(&list, "EventList: start\r\n"));
    h.reply(&list_item("QueueMember", &list, ""));
    assert_eq!(h.conn.poll_timeout(), None);
    // An answer timeout of Duration::MAX makes the OriginateResponse wait overflow.
    let orig = h
        .conn
        .send(h.now, originate().with_timeout(Duration::MAX))
        .unwrap();
    h.reply(&success(
        &orig,
        "Message: Originate successfully queued\r\n",
    ));
    assert_eq!(h.conn.poll_timeout(), None);
    h.advance(365 * 24 * 3600 * SEC);
    assert_eq!(h.conn.pending_actions(), 2);
    h.reply(&list_complete("QueueStatusComplete", &list, 1));
    h.reply(&originate_response(&orig, "Success", 4));
    let outputs = h.outputs();
    let done = completions(&outputs);
    assert_eq!(done.len(), 2, "{outputs:?}");
    assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
}

#[test]
fn connection_timers_that_overflow_are_not_armed() {
    let mut cfg = config();
    cfg.connect_timeout = Duration::MAX;
    cfg.read_timeout = Duration::MAX;
    cfg.action_timeout = Duration::MAX;
    cfg.heartbeat_interval = Duration::MAX;
    cfg.heartbeat_timeout = Duration::MAX;
    cfg.close_timeout = Duration::MAX;
    let mut h = Harness::new(cfg);
    assert_eq!(h.conn.poll_timeout(), None, "connect");
    h.conn.handle_connected(h.now);
    assert_eq!(h.conn.poll_timeout(), None, "banner");
    h.reply(BANNER);
    assert_eq!(h.conn.poll_timeout(), None, "login");
    let login = h.written_actions()[0].id.clone();
    h.reply(&success(&login, ""));
    assert_eq!(h.conn.state(), State::Healthy);
    assert_eq!(h.conn.poll_timeout(), None, "heartbeat");
    h.conn.send(h.now, action::Ping).unwrap();
    assert_eq!(h.conn.poll_timeout(), None, "action_timeout");
    h.conn.close(h.now);
    assert_eq!(h.conn.state(), State::Closing);
    assert_eq!(h.conn.poll_timeout(), None, "close");
    h.conn.handle_eof(h.now);
    assert_eq!(h.conn.close_reason(), Some(&CloseReason::Graceful));
}

/// A heartbeat whose `Pong` deadline overflows never misses; while one is unanswered,
/// another would only pile up in the registry (one per interval, without a bound).
#[test]
fn heartbeats_without_a_deadline_do_not_pile_up() {
    let mut cfg = config();
    cfg.heartbeat_timeout = Duration::MAX;
    let mut h = Harness::logged_in(cfg);
    for _ in 0..5 {
        h.advance(15 * SEC);
    }
    assert_eq!(h.action_ids_of("Ping").len(), 1, "one unanswered heartbeat");
    assert_eq!(h.conn.state(), State::Healthy);
    let ping = h.action_ids_of("Ping")[0].clone();
    h.reply(&success(&ping, "Ping: Pong\r\n"));
    h.advance(15 * SEC);
    assert_eq!(
        h.action_ids_of("Ping").len(),
        2,
        "answered: the next one goes"
    );
}

#[test]
fn invalid_settings_never_panic() {
    let mut cfg = config();
    cfg.server_key = String::new();
    cfg.connect_timeout = Duration::ZERO;
    cfg.read_timeout = Duration::ZERO;
    cfg.action_timeout = Duration::ZERO;
    cfg.heartbeat_timeout = Duration::ZERO;
    cfg.heartbeat_max_misses = 0;
    cfg.close_timeout = Duration::ZERO;
    cfg.max_pending_actions = 0;
    cfg.max_list_items = 0;
    cfg.event_queue_capacity = 0;
    cfg.write_buffer_limit = 0;
    cfg.limits = Limits {
        max_frame_size: usize::MAX,
        max_command_output: 0,
    };
    assert!(cfg.validate().is_err());
    let mut h = Harness::new(cfg);
    h.conn.handle_connected(h.now);
    h.reply(BANNER);
    // Held across inputs: the parser's limit arithmetic runs.
    h.reply("Response: Success\r\nActionID: x\r\n");
    h.reply("\r\nEvent: A\r\n");
    h.reply("\r\n");
    h.advance(SEC);
    assert!(h.conn.send(h.now, action::Ping).is_err());
    h.conn.handle_eof(h.now);
    assert_eq!(h.conn.state(), State::Closed);
}
