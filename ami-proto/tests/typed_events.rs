//! The typed views (`ami_proto::typed`) over events captured from the real Asterisk 22.
//!
//! `tests/fixtures/typed-events.raw` holds 687 events, byte for byte as Asterisk
//! 22.10.1 sent them to one raw-socket session (`Login` with `Events: on`), captured
//! on 2026-12-01 from a private instance of the sandbox (`scripts/asterisk.sh start
//! typed`: the same chroot and configuration as instance `a`, so as not to disturb its
//! other users), with these additions made at run time:
//! - modules `res_timing_timerfd` (without a timing module, this Asterisk exits on a
//!   queued DTMF frame), `res_manager_devicestate` (DeviceStateChange),
//!   `app_senddtmf` (PlayDTMF), and last the PJSIP stack (`res_sorcery_*`,
//!   `res_pjproject`, `res_pjsip`) with a `pjsip.conf` of two qualified AORs: one
//!   contact on Asterisk's own UDP transport (Reachable), one on a closed port;
//! - in context `test`: a hint `typedhint` on `Local/wait@test`, an extension `dump`
//!   (Answer, Hangup), and `rnaq`/`dumpq` entering queues `rnaq` (member
//!   `Local/noanswer@test`, timeout 2 s) and `dumpq` (member `Local/dump@test`,
//!   `memberdelay = 1`).
//!
//! The actions, from a second session: Originate to `answer`, `busy`, `congestion`,
//! `noanswer` (Timeout 2000) and `nosuch` with Application Wait; Originate of
//! `Local/wait@test` running `Dial` to answer, busy, congestion, `noanswer,2`, and
//! `noanswer,30` whose caller was then hung up with `Hangup` `Cause: 21`; on a waiting
//! channel PlayDTMF `5` (150 ms) and `#` (`Receive: true`), Setvar `TYPED_VAR` and
//! `CALLERID(name)`, a `UserEvent` `TypedTest` with `Foo: bar`, `channel request
//! hangup`; a `Dial(...,Tt)` with `FEATUREMAP(atxfer)=*2` and an `Atxfer`
//! (Hold/Unhold); QueuePause (unpause
//! `Local/answer@test` in `support`), a queue call it answers, QueueAdd/QueueRemove,
//! QueuePause (pause), an abandoned queue call, calls to `rnaq` and `dumpq`; the PJSIP
//! load; `module reload`; a Hangup of everything; `core stop now` (Shutdown). Only
//! events were kept (not the responses), and of the noisy ones only the first
//! (`TestEvent` 2, `SuccessfulAuth` 1, `InvalidAccountID` 1, `Load` 2, `VarSet` 30
//! plus the one of `TYPED_VAR`, `Newexten` 20).
//!
//! Of the event types with a view, every one is in the fixture but `Rename`: nothing
//! in Asterisk 22 raises it (`ast_change_name` has no caller left; a masquerade swaps
//! names without the event).

use std::collections::{BTreeMap, BTreeSet};

use ami_proto::message::Message;
use ami_proto::parser::{Limits, Parsed, Parser};
use ami_proto::typed::*;

const FIXTURE: &[u8] = include_bytes!("fixtures/typed-events.raw");

/// Every message of the fixture, in order; panics on anything the parser discards.
fn fixture() -> Vec<Message> {
    let mut parser = Parser::new(Limits::default());
    let mut messages = Vec::new();
    let mut emit = |item| match item {
        Parsed::Message(message) => messages.push(message),
        other => panic!("unexpected parser output: {other:?}"),
    };
    parser.feed(FIXTURE, &mut emit);
    parser.finish(&mut emit);
    messages
}

/// The views of the fixture.
fn typed(messages: &[Message]) -> Vec<TypedEvent<'_>> {
    messages.iter().map(TypedEvent::of).collect()
}

/// The views of one kind, e.g. `all!(events, Hangup)`.
macro_rules! all {
    ($events:expr, $kind:ident) => {
        $events
            .iter()
            .filter_map(|event| match event {
                TypedEvent::$kind(view) => Some(*view),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

/// The one view of `kind` that meets the condition (asserted to be exactly one).
macro_rules! find {
    ($events:expr, $kind:ident, |$view:ident| $cond:expr) => {{
        let found: Vec<_> = all!($events, $kind)
            .into_iter()
            .filter(|$view| $cond)
            .collect();
        assert_eq!(found.len(), 1, "{}: {found:?}", stringify!($cond));
        found[0]
    }};
}

#[test]
fn every_message_is_viewed_without_panicking() {
    let messages = fixture();
    assert_eq!(messages.len(), 687);
    let mut typed = 0;
    for message in &messages {
        let event = TypedEvent::of(message);
        assert_eq!(event.message(), message);
        assert_eq!(Some(event.name()), message.event_name());
        // `Debug` of a view calls every accessor of it, snapshots included.
        let shown = format!("{event:?}");
        assert!(shown.starts_with(event.name()) || shown.starts_with("Other("));
        // Any prefix may be asked for, present or not.
        for prefix in ["", "Dest", "LocalOne", "LocalTwo", "Nope", "ÿ"] {
            assert!(format!("{:?}", event.channel_snapshot(prefix)).contains(prefix));
            assert!(format!("{:?}", event.bridge_snapshot(prefix)).contains(prefix));
        }
        // The accessors that `Debug` does not show.
        match event {
            TypedEvent::OriginateResponse(view) => {
                assert!(view.success().is_some() && view.action_id().is_some());
            }
            TypedEvent::UserEvent(view) => assert_eq!(view.get("Privilege"), Some("user,all")),
            TypedEvent::NewCallerid(view) => assert!(view.calling_pres().is_some()),
            TypedEvent::Shutdown(view) => assert!(view.clean().is_some()),
            _ => {}
        }
        if !matches!(event, TypedEvent::Other(_)) {
            typed += 1;
        }
    }
    assert_eq!(
        typed,
        687 - 20 - 2 - 1 - 1 - 2,
        "all but Newexten and the noise"
    );
}

#[test]
fn the_fixture_has_every_listed_event_but_rename() {
    let messages = fixture();
    let seen: BTreeSet<&str> = typed(&messages)
        .iter()
        .filter(|event| !matches!(event, TypedEvent::Other(_)))
        .map(|event| event.name())
        .collect();
    let listed = [
        "Newchannel",
        "Newstate",
        "Hangup",
        "HangupRequest",
        "SoftHangupRequest",
        "DialBegin",
        "DialEnd",
        "DialState",
        "OriginateResponse",
        "BridgeCreate",
        "BridgeEnter",
        "BridgeLeave",
        "BridgeDestroy",
        "VarSet",
        "UserEvent",
        "Hold",
        "Unhold",
        "DTMFBegin",
        "DTMFEnd",
        "NewCallerid",
        "NewConnectedLine",
        "LocalBridge",
        "DeviceStateChange",
        "ExtensionStatus",
        "ContactStatus",
        "PeerStatus",
        "QueueCallerJoin",
        "QueueCallerLeave",
        "QueueCallerAbandon",
        "AgentCalled",
        "AgentConnect",
        "AgentComplete",
        "AgentRingNoAnswer",
        "AgentDump",
        "QueueMemberStatus",
        "QueueMemberAdded",
        "QueueMemberRemoved",
        "QueueMemberPause",
        "FullyBooted",
        "Shutdown",
        "Reload",
    ];
    assert_eq!(seen, BTreeSet::from(listed));
}

#[test]
fn originate_outcomes_map_to_their_reasons_and_causes() {
    let messages = fixture();
    let events = typed(&messages);
    let originate = |channel: &str| {
        find!(events, OriginateResponse, |view| view.channel()
            == Some(channel))
    };
    // A far end's Hangup: the `;2` half of the first Local channel to `exten` (the
    // Originates came first; the Dials to the same extensions later).
    let far_hangup = |exten: &str| {
        let name = format!("Local/{exten}@test-");
        all!(events, Hangup)
            .into_iter()
            .find(|view| {
                let channel = view.channel().channel().unwrap_or_default();
                channel.starts_with(&name) && channel.ends_with(";2")
            })
            .unwrap()
    };
    let cases = [
        ("busy", OriginateReason::Busy, 5, HangupCause::UserBusy, 17),
        (
            "congestion",
            OriginateReason::Congestion,
            8,
            HangupCause::NormalCircuitCongestion,
            34,
        ),
        (
            "noanswer",
            OriginateReason::Ringing,
            3,
            HangupCause::NoAnswer,
            19,
        ),
    ];
    for (exten, reason, reason_code, cause, cause_code) in cases {
        let response = originate(&format!("Local/{exten}@test"));
        assert_eq!(response.reason(), Some(reason), "{exten}");
        assert_eq!(response.reason().unwrap().code(), reason_code);
        assert_eq!(response.success(), Some(false));
        assert_eq!(response.uniqueid(), Some("<unknown>"));
        assert_eq!(response.application(), Some("Wait"));
        let hangup = far_hangup(exten);
        assert_eq!(hangup.cause(), Some(cause), "{exten}");
        assert_eq!(hangup.cause().unwrap().code(), cause_code);
        assert_eq!(hangup.cause_txt(), Some(cause.name()));
    }
    let busy = far_hangup("busy");
    assert_eq!(busy.cause_txt(), Some("User busy"));
    assert_eq!(busy.channel().exten(), Some("busy"));

    let failed = originate("Local/nosuch@test");
    assert_eq!(failed.reason(), Some(OriginateReason::Failed));

    let answered = originate("Local/answer@test-00000000;1");
    assert_eq!(answered.reason(), Some(OriginateReason::Answered));
    assert_eq!(answered.success(), Some(true));
    assert_eq!(answered.action_id(), Some("t0"));
    assert_eq!(
        (answered.caller_id_num(), answered.caller_id_name()),
        (Some("100"), Some("Typed"))
    );
    let uniqueid = answered.uniqueid().unwrap();
    let created = find!(events, Newchannel, |view| view.channel().uniqueid()
        == Some(uniqueid));
    assert_eq!(created.channel().channel(), answered.channel());
    assert_eq!(created.channel().channel_state(), Some(ChannelState::Down));
    assert_eq!(created.channel().caller_id_num(), Some("<unknown>"));

    // The `Hangup` action with `Cause: 21` on the caller that was dialing `noanswer,30`:
    // the request reaches both Local channels of the call with that cause.
    let rejected: Vec<_> = all!(events, HangupRequest)
        .into_iter()
        .filter(|view| view.cause() == Some(HangupCause::CallRejected))
        .collect();
    let names: Vec<_> = rejected
        .iter()
        .map(|view| view.channel().channel().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Local/noanswer@test-0000000e;2",
            "Local/wait@test-0000000d;2"
        ]
    );
    for request in rejected {
        assert_eq!(request.channel().caller_id_name(), Some("Canceller"));
        assert_eq!(request.cause().unwrap().symbol(), Some("CALL_REJECTED"));
    }
}

#[test]
fn hangup_causes_and_states_read_as_asterisk_writes_them() {
    let messages = fixture();
    let events = typed(&messages);
    for hangup in all!(events, Hangup) {
        let cause = hangup.cause().unwrap();
        assert!(!matches!(cause, HangupCause::Unknown(_)), "{hangup:?}");
        assert_eq!(hangup.cause_txt(), Some(cause.name()), "{hangup:?}");
    }
    // A soft hangup's `Cause` is its flags: 16 when the dialplan ended, 32 when asked.
    for request in all!(events, SoftHangupRequest) {
        let flags = request.cause().unwrap();
        assert!(
            [SoftHangupFlags::APP_UNLOAD, SoftHangupFlags::EXPLICIT].contains(&flags),
            "{request:?}"
        );
    }
    // Every channel snapshot's state is known and its `ChannelStateDesc` is its name.
    let mut snapshots = 0;
    for event in &events {
        for prefix in ["", "Dest", "LocalOne", "LocalTwo"] {
            let snapshot = event.channel_snapshot(prefix);
            if let Some(state) = snapshot.channel_state() {
                assert!(!matches!(state, ChannelState::Unknown(_)), "{snapshot:?}");
                assert_eq!(snapshot.channel_state_desc(), Some(state.name()));
                assert!(snapshot.priority().is_some(), "{snapshot:?}");
                assert!(snapshot.uniqueid().is_some_and(|id| !id.is_empty()));
                assert!(snapshot.linkedid().is_some());
                snapshots += 1;
            }
        }
    }
    assert!(snapshots > 500, "{snapshots}");
    let states: BTreeSet<u32> = all!(events, Newstate)
        .iter()
        .map(|view| view.channel().channel_state().unwrap().code())
        .collect();
    assert_eq!(states, BTreeSet::from([5, 6, 7]), "Ringing, Up and Busy");
}

#[test]
fn dials_end_with_their_status() {
    let messages = fixture();
    let events = typed(&messages);
    let mut statuses = BTreeMap::new();
    for end in all!(events, DialEnd) {
        let status = end.dial_status().unwrap();
        assert!(!matches!(status, DialStatus::Other(_)), "{end:?}");
        assert!(end.dest().is_present());
        *statuses.entry(status.as_str()).or_insert(0) += 1;
    }
    for expected in ["ANSWER", "BUSY", "CONGESTION", "NOANSWER", "CANCEL"] {
        assert!(statuses.contains_key(expected), "{expected}: {statuses:?}");
    }
    // The Dial to `noanswer,2` from a channel of the dialplan: a caller and a dest.
    let timeout = find!(events, DialEnd, |view| view.dial_status()
        == Some(DialStatus::NoAnswer)
        && view.channel().caller_id_name() == Some("Dialer"));
    assert_eq!(timeout.channel().exten(), Some("wait"));
    // The `;1` half of a Local channel shows its caller's dialplan location.
    assert!(
        timeout
            .dest()
            .channel()
            .unwrap()
            .starts_with("Local/noanswer@test-")
    );
    assert_eq!(timeout.dest().channel_state(), Some(ChannelState::Ringing));
    // An Originate's own dial has no caller.
    let begin = all!(events, DialBegin)[0];
    assert!(!begin.channel().is_present());
    assert_eq!(begin.dial_string(), Some("answer@test"));
    assert!(
        all!(events, DialState)
            .iter()
            .all(|view| view.dial_status() == Some(DialStatus::Ringing))
    );
}

#[test]
fn channels_bridges_and_locals() {
    let messages = fixture();
    let events = typed(&messages);
    let local = all!(events, LocalBridge)[0];
    assert_eq!(
        local.local_one().channel(),
        Some("Local/answer@test-00000000;1")
    );
    assert_eq!(
        local.local_two().channel(),
        Some("Local/answer@test-00000000;2")
    );
    assert_eq!(local.local_two().channel_state(), Some(ChannelState::Ring));
    assert_eq!(local.local_one().linkedid(), local.local_two().linkedid());
    assert_eq!(
        (local.context(), local.exten()),
        (Some("test"), Some("answer"))
    );
    assert_eq!(local.local_optimization(), Some(true));

    let created: BTreeSet<&str> = all!(events, BridgeCreate)
        .iter()
        .map(|view| view.bridge().bridge_uniqueid().unwrap())
        .collect();
    assert!(!created.is_empty());
    for enter in all!(events, BridgeEnter) {
        assert!(created.contains(enter.bridge().bridge_uniqueid().unwrap()));
        assert_eq!(enter.bridge().bridge_type(), Some("basic"));
        assert!(enter.bridge().bridge_num_channels().is_some());
        assert!(enter.channel().is_present());
    }
    for destroy in all!(events, BridgeDestroy) {
        assert_eq!(destroy.bridge().bridge_num_channels(), Some(0));
        assert_eq!(destroy.bridge().bridge_name(), Some("<unknown>"));
    }
    assert_eq!(
        all!(events, BridgeLeave).len(),
        all!(events, BridgeEnter).len()
    );
}

#[test]
fn channel_events_of_the_waiting_channel() {
    let messages = fixture();
    let events = typed(&messages);
    let end = find!(events, DTMFEnd, |view| view.digit() == Some("5")
        && view.duration_ms() == Some(150));
    assert_eq!(end.direction(), Some(DtmfDirection::Received));
    assert_eq!(end.channel().caller_id_name(), Some("Waiter"));
    let begin = find!(events, DTMFBegin, |view| view.digit() == Some("5")
        && view.channel().uniqueid() == end.channel().uniqueid());
    assert_eq!(begin.direction(), Some(DtmfDirection::Received));

    let var = find!(events, VarSet, |view| view.variable() == Some("TYPED_VAR"));
    assert_eq!(var.value(), Some("hello world"));
    let global = find!(events, VarSet, |view| view.variable()
        == Some("AMI_RS_INSTANCE"));
    assert_eq!(global.channel().channel(), Some("none"));

    let renamed = find!(events, NewCallerid, |view| view.channel().caller_id_name()
        == Some("New Name"));
    assert_eq!(renamed.calling_pres(), Some(0));
    assert_eq!(
        renamed.cid_calling_pres(),
        Some("0 (Presentation Allowed, Not Screened)")
    );

    let user = all!(events, UserEvent)[0];
    assert_eq!(user.user_event(), Some("TypedTest"));
    assert_eq!(user.get("Foo"), Some("bar"));
    // The action sends no snapshot: only the `Channel` header the sender gave.
    assert_eq!(user.channel().channel(), var.channel().channel());
    assert_eq!(user.channel().channel_state(), None);

    // `channel request hangup` on it.
    let soft = find!(events, SoftHangupRequest, |view| view.channel().uniqueid()
        == var.channel().uniqueid()
        && view.cause() == Some(SoftHangupFlags::EXPLICIT));
    assert_eq!(soft.cause().unwrap().to_string(), "EXPLICIT");

    let hold = all!(events, Hold)[0];
    let unhold = all!(events, Unhold)[0];
    assert_eq!(hold.channel().channel(), unhold.channel().channel());
    assert_eq!(hold.channel().caller_id_name(), Some("Xfer"));
    assert_eq!(hold.music_class(), None);
    assert!(
        all!(events, NewConnectedLine)
            .iter()
            .all(|view| view.channel().is_present())
    );
}

#[test]
fn queue_events() {
    let messages = fixture();
    let events = typed(&messages);
    let pauses = all!(events, QueueMemberPause);
    assert_eq!(pauses.len(), 2);
    let (unpause, pause) = (pauses[0].member(), pauses[1].member());
    assert_eq!(
        (unpause.paused(), unpause.paused_reason()),
        (Some(false), Some("typed test"))
    );
    assert_eq!(
        (pause.paused(), pause.paused_reason()),
        (Some(true), Some("break"))
    );
    assert_eq!(pause.membership(), Some(Membership::Static));
    assert_eq!(pause.member_name(), Some("Agent One"));

    let added = all!(events, QueueMemberAdded)[0].member();
    let removed = all!(events, QueueMemberRemoved)[0].member();
    assert_eq!(added.membership(), Some(Membership::Dynamic));
    assert_eq!(
        (added.member_name(), added.penalty()),
        (Some("Typed Member"), Some(1))
    );
    assert_eq!(added.interface(), removed.interface());
    assert_eq!(added.status(), Some(DeviceState::NotInUse));
    assert_eq!(added.ringinuse(), Some(true));
    for status in all!(events, QueueMemberStatus) {
        let member = status.member();
        assert!(
            member.status().is_some_and(|state| state.code().is_some()),
            "{status:?}"
        );
        assert!(member.login_time().is_some() && member.in_call().is_some());
    }

    let join = find!(events, QueueCallerJoin, |view| view
        .channel()
        .caller_id_name()
        == Some("Caller"));
    assert_eq!(
        (join.queue(), join.position(), join.count()),
        (Some("support"), Some(1), Some(1))
    );
    let connect = all!(events, AgentConnect)[0];
    assert_eq!(connect.channel().uniqueid(), join.channel().uniqueid());
    assert_eq!(connect.member_name(), Some("Agent One"));
    assert_eq!(connect.dest().channel_state(), Some(ChannelState::Up));
    let complete = all!(events, AgentComplete)[0];
    assert_eq!(complete.reason(), Some(CompleteReason::Agent));
    assert!(complete.talk_time().is_some() && complete.hold_time().is_some());
    let called = find!(events, AgentCalled, |view| view.channel().uniqueid()
        == join.channel().uniqueid());
    assert_eq!(called.interface(), Some("Local/answer@test"));

    let abandon = find!(events, QueueCallerAbandon, |view| view.queue()
        == Some("support"));
    assert_eq!(abandon.channel().caller_id_name(), Some("Quitter"));
    assert_eq!(
        (abandon.position(), abandon.original_position()),
        (Some(1), Some(1))
    );
    assert!(abandon.hold_time().is_some());

    let no_answer = all!(events, AgentRingNoAnswer)[0];
    assert_eq!(no_answer.queue(), Some("rnaq"));
    assert_eq!(no_answer.ring_time(), Some(2000));
    assert_eq!(
        no_answer.dest().channel_state(),
        Some(ChannelState::Ringing)
    );
    let dump = all!(events, AgentDump)[0];
    assert_eq!(
        (dump.queue(), dump.member_name()),
        (Some("dumpq"), Some("Dumper"))
    );
    assert_eq!(dump.dest().exten(), Some("dumpq"));
    assert!(
        all!(events, QueueCallerLeave)
            .iter()
            .all(|view| view.count().is_some())
    );
}

#[test]
fn system_device_and_endpoint_events() {
    let messages = fixture();
    let events = typed(&messages);
    let booted = all!(events, FullyBooted)[0];
    assert_eq!(booted.status(), Some("Fully Booted"));
    assert!(booted.uptime().is_some() && booted.last_reload().is_some());

    let reloads = all!(events, Reload);
    assert_eq!(reloads[0].module(), Some("app_queue.so"));
    assert!(reloads.iter().any(|view| view.module() == Some("All")));
    assert!(
        reloads
            .iter()
            .all(|view| view.status() == Some(ReloadStatus::Success))
    );

    let shutdown = all!(events, Shutdown)[0];
    assert_eq!(
        (shutdown.clean(), shutdown.restart()),
        (Some(true), Some(false))
    );

    for change in all!(events, DeviceStateChange) {
        let state = change.state().unwrap();
        assert!(state.code().is_some(), "{change:?}");
        assert_eq!(
            change.state().unwrap().as_str(),
            change.message().get("State").unwrap()
        );
    }
    for status in all!(events, ExtensionStatus) {
        assert_eq!(
            status.status().map(ExtensionState::name),
            status.status_text()
        );
        assert_eq!(status.exten(), Some("typedhint"));
    }
    assert!(
        all!(events, ExtensionStatus)
            .iter()
            .any(|view| view.status() == Some(ExtensionState::InUse))
    );

    let reachable = find!(events, ContactStatus, |view| view.aor() == Some("peer1"));
    assert_eq!(reachable.contact_status(), Some(ContactState::Reachable));
    assert_eq!(reachable.uri(), Some("sip:127.0.0.1:5077"));
    assert!(reachable.roundtrip_usec().is_some_and(|rtt| rtt > 0));
    let unreachable = find!(events, ContactStatus, |view| view.aor() == Some("peer2"));
    assert_eq!(
        unreachable.contact_status(),
        Some(ContactState::Unreachable)
    );
    assert_eq!(unreachable.endpoint_name(), Some("peer2"));
    let peer = all!(events, PeerStatus)[0];
    assert_eq!(peer.peer_status(), Some(PeerState::Reachable));
    assert_eq!(
        (peer.channel_type(), peer.peer()),
        (Some("PJSIP"), Some("PJSIP/peer1"))
    );
    assert_eq!(peer.port(), None);
}
