//! The call tracker on event sequences shaped like the real Asterisk 22's (Local
//! channels, as the sandbox's dialplan makes them), and under any order, duplication
//! or loss of events (property tests).

// Tests make their own start instant; the tracker itself never reads the clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use ami_cluster::{CallTracker, Outcome, TrackerConfig};
use ami_proto::{Limits, Message, Parsed, Parser};
use proptest::prelude::*;

/// A message from `Key: Value` lines.
fn msg(lines: &[(&str, &str)]) -> Message {
    let mut text = String::new();
    for (k, v) in lines {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    let mut parser = Parser::new(Limits::default());
    let mut out = None;
    parser.feed(text.as_bytes(), &mut |p| {
        if let Parsed::Message(m) = p {
            out = Some(m);
        }
    });
    out.expect("a message")
}

fn newchannel(uid: &str, linked: &str, channel: &str) -> Message {
    msg(&[
        ("Event", "Newchannel"),
        ("Channel", channel),
        ("ChannelState", "0"),
        ("Uniqueid", uid),
        ("Linkedid", linked),
    ])
}

fn newstate(uid: &str, linked: &str, state: &str) -> Message {
    msg(&[
        ("Event", "Newstate"),
        ("ChannelState", state),
        ("Uniqueid", uid),
        ("Linkedid", linked),
    ])
}

fn hangup(uid: &str, linked: &str, cause: &str, txt: &str) -> Message {
    msg(&[
        ("Event", "Hangup"),
        ("Uniqueid", uid),
        ("Linkedid", linked),
        ("Cause", cause),
        ("Cause-txt", txt),
    ])
}

fn response(action_id: &str, reason: &str, uid: &str) -> Message {
    msg(&[
        ("Event", "OriginateResponse"),
        ("ActionID", action_id),
        (
            "Response",
            if reason == "4" { "Success" } else { "Failure" },
        ),
        ("Reason", reason),
        ("Uniqueid", uid),
    ])
}

#[test]
fn an_answered_originate_has_its_times_reason_and_variables() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut tracker = CallTracker::new(TrackerConfig::default());
    tracker.originate(
        "a-1",
        Some("c1"),
        vec![("CAMPAIGN".into(), "7".into())],
        at(0),
    );
    tracker.handle_event(&newchannel("c1", "c1", "Local/answer@test-1;1"), at(10));
    tracker.handle_event(&newchannel("c2", "c1", "Local/answer@test-1;2"), at(11));
    tracker.handle_event(&newstate("c2", "c1", "6"), at(1_500));
    tracker.handle_event(&response("a-1", "4", "c1"), at(1_510));
    assert!(tracker.poll_ended().is_none());
    tracker.handle_event(&hangup("c2", "c1", "16", "Normal Clearing"), at(4_500));
    tracker.handle_event(&hangup("c1", "c1", "16", "Normal Clearing"), at(4_501));
    let call = tracker.poll_ended().expect("one record");
    assert_eq!(call.outcome, Outcome::Answered);
    assert_eq!(call.originate_reason, Some(4));
    assert_eq!(call.cause, Some(16));
    assert_eq!(call.action_id.as_deref(), Some("a-1"));
    assert_eq!(call.registered_as.as_deref(), Some("a-1"));
    assert_eq!(call.variables, [("CAMPAIGN".to_owned(), "7".to_owned())]);
    assert_eq!(call.uniqueid.as_deref(), Some("c1"));
    assert_eq!(call.channels.len(), 2);
    assert_eq!(call.ring_ms(), 1_500);
    assert_eq!(call.talk_ms(), 3_001);
    assert!(tracker.poll_ended().is_none());
    assert_eq!(tracker.live_calls(), 0);
}

#[test]
fn a_busy_call_ending_before_its_response_waits_for_the_reason() {
    let t0 = Instant::now();
    let mut tracker = CallTracker::new(TrackerConfig::default());
    tracker.originate("a-2", Some("b1"), Vec::new(), t0);
    tracker.handle_event(&newchannel("b1", "b1", "Local/busy@test-2;1"), t0);
    tracker.handle_event(&newchannel("b2", "b1", "Local/busy@test-2;2"), t0);
    tracker.handle_event(&hangup("b2", "b1", "17", "User busy"), t0);
    tracker.handle_event(&hangup("b1", "b1", "17", "User busy"), t0);
    assert!(
        tracker.poll_ended().is_none(),
        "waits for the OriginateResponse"
    );
    tracker.handle_event(&response("a-2", "5", "b1"), t0 + Duration::from_millis(5));
    let call = tracker.poll_ended().unwrap();
    assert_eq!(call.outcome, Outcome::Busy);
    assert_eq!((call.cause, call.originate_reason), (Some(17), Some(5)));
    assert_eq!(call.cause_txt.as_deref(), Some("User busy"));
}

#[test]
fn causes_decide_the_outcome_of_unanswered_calls() {
    let t0 = Instant::now();
    for (cause, outcome) in [
        ("17", Outcome::Busy),
        ("19", Outcome::NoAnswer),
        ("21", Outcome::Rejected),
        ("34", Outcome::Congestion),
        ("16", Outcome::Cancelled),
        ("0", Outcome::Failed),
    ] {
        let mut tracker = CallTracker::new(TrackerConfig::default());
        tracker.handle_event(&newchannel("x", "x", "PJSIP/1-1"), t0);
        tracker.handle_event(&hangup("x", "x", cause, "t"), t0);
        assert_eq!(
            tracker.poll_ended().unwrap().outcome,
            outcome,
            "cause {cause}"
        );
    }
}

#[test]
fn a_response_that_never_comes_ends_the_call_after_the_grace() {
    let t0 = Instant::now();
    let config = TrackerConfig::default();
    let mut tracker = CallTracker::new(config);
    tracker.originate("a-3", Some("n1"), Vec::new(), t0);
    tracker.handle_event(&newchannel("n1", "n1", "Local/x@t;1"), t0);
    tracker.handle_event(&hangup("n1", "n1", "19", "No answer"), t0);
    assert_eq!(tracker.poll_timeout(), Some(t0 + config.response_grace));
    tracker.handle_timeout(t0 + config.response_grace);
    let call = tracker.poll_ended().unwrap();
    assert_eq!(call.outcome, Outcome::NoAnswer);
    assert_eq!(call.ended, t0, "ended when its last channel hung up");
}

#[test]
fn an_originate_that_fails_without_a_channel_ends_failed() {
    let t0 = Instant::now();
    let mut tracker = CallTracker::new(TrackerConfig::default());
    tracker.originate("a-4", Some("z1"), Vec::new(), t0);
    tracker.handle_event(&response("a-4", "0", ""), t0);
    let call = tracker.poll_ended().unwrap();
    assert_eq!(call.outcome, Outcome::Failed);
    assert_eq!(call.uniqueid, None);
    assert_eq!(call.originate_reason, Some(0));
}

#[test]
fn a_reseed_ends_the_calls_that_went_away_and_adopts_the_live_ones() {
    let t0 = Instant::now();
    let mut tracker = CallTracker::new(TrackerConfig::default());
    tracker.handle_event(&newchannel("gone", "gone", "PJSIP/1-1"), t0);
    tracker.handle_event(&newchannel("kept", "kept", "PJSIP/2-1"), t0);
    let live = [
        msg(&[
            ("Event", "CoreShowChannel"),
            ("Channel", "PJSIP/2-1"),
            ("Uniqueid", "kept"),
            ("Linkedid", "kept"),
            ("ChannelState", "6"),
        ]),
        msg(&[
            ("Event", "CoreShowChannel"),
            ("Channel", "PJSIP/3-1"),
            ("Uniqueid", "new"),
            ("Linkedid", "new"),
            ("ChannelState", "6"),
        ]),
    ];
    tracker.reseed(&live, t0 + Duration::from_secs(5));
    let gone = tracker.poll_ended().unwrap();
    assert_eq!(gone.uniqueid.as_deref(), Some("gone"));
    assert_eq!(gone.outcome, Outcome::Unknown);
    assert_eq!(tracker.counters().lost, 1);
    assert_eq!(tracker.live_calls(), 2);
    tracker.handle_event(
        &hangup("new", "new", "16", "Normal Clearing"),
        t0 + Duration::from_secs(9),
    );
    assert_eq!(tracker.poll_ended().unwrap().outcome, Outcome::Answered);
}

#[test]
fn stale_and_surplus_calls_are_evicted_and_counted() {
    let t0 = Instant::now();
    let config = TrackerConfig {
        max_calls: 3,
        max_age: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let mut tracker = CallTracker::new(config);
    for i in 0..5 {
        let uid = format!("u{i}");
        tracker.handle_event(&newchannel(&uid, &uid, "PJSIP/1-1"), t0);
    }
    assert_eq!(tracker.live_calls(), 3);
    assert_eq!(tracker.counters().evicted, 2);
    tracker.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(tracker.live_calls(), 0);
    assert_eq!(tracker.counters().evicted, 5);
    let outcomes: Vec<Outcome> = std::iter::from_fn(|| tracker.poll_ended())
        .map(|c| c.outcome)
        .collect();
    assert_eq!(outcomes, [Outcome::Unknown; 3]);
    assert_eq!(
        tracker.counters().records_dropped,
        2,
        "the queue holds max_calls"
    );
}

/// One step of a random event sequence.
#[derive(Debug, Clone)]
enum Step {
    New(u8, u8),
    Up(u8),
    Hang(u8, u16),
    Originate(u8),
    Response(u8, u16),
    Tick(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..12u8, 0..12u8).prop_map(|(u, l)| Step::New(u, l)),
        (0..12u8).prop_map(Step::Up),
        (0..12u8, 0..45u16).prop_map(|(u, c)| Step::Hang(u, c)),
        (0..12u8).prop_map(Step::Originate),
        (0..12u8, 0..9u16).prop_map(|(u, r)| Step::Response(u, r)),
        (0..5000u16).prop_map(Step::Tick),
    ]
}

proptest! {
    #[test]
    fn any_events_keep_the_bound_and_end_every_call_once(steps in prop::collection::vec(step(), 0..200)) {
        let t0 = Instant::now();
        let config = TrackerConfig { max_calls: 4, max_age: Duration::from_secs(3), response_grace: Duration::from_millis(500) };
        let mut tracker = CallTracker::new(config);
        let mut now = t0;
        let mut records = 0u64;
        for step in steps {
            match step {
                Step::New(u, l) => tracker.handle_event(&newchannel(&format!("u{u}"), &format!("u{l}"), "C"), now),
                Step::Up(u) => tracker.handle_event(&newstate(&format!("u{u}"), "x", "6"), now),
                Step::Hang(u, c) => tracker.handle_event(&hangup(&format!("u{u}"), "x", &c.to_string(), "t"), now),
                Step::Originate(u) => tracker.originate(&format!("a{u}"), Some(&format!("u{u}")), Vec::new(), now),
                Step::Response(u, r) => tracker.handle_event(&response(&format!("a{u}"), &r.to_string(), &format!("u{u}")), now),
                Step::Tick(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    tracker.handle_timeout(now);
                }
            }
            prop_assert!(tracker.live_calls() <= config.max_calls);
            while tracker.poll_ended().is_some() {
                records += 1;
            }
        }
        // Far in the future every call is given up: each started call ended once.
        tracker.handle_timeout(now + Duration::from_secs(3600));
        while tracker.poll_ended().is_some() {
            records += 1;
        }
        let counters = tracker.counters();
        prop_assert_eq!(tracker.live_calls(), 0);
        prop_assert_eq!(counters.ended, counters.started);
        prop_assert_eq!(records + counters.records_dropped, counters.ended);
    }
}
