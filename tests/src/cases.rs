//! Conformance cases shared by every driver: an action for the sandbox Asterisk and
//! what its completion must look like. `tests/tests/asterisk.rs` runs them through
//! `ami-mio`, `tests/tests/tokio_asterisk.rs` through `ami-tokio`, so both drivers are
//! held to the same definitions.
//!
//! A case's `check` gets the completion as the core defines it (`Ok(Reply)` or
//! `Err(ActionError)`); a driver that refuses the action at send time fails the case
//! before `check` runs.

use ami_proto::action::{
    Action, Command, CoreShowChannels, Originate, Ping, QueueStatus, QueueSummary, Status,
};
use ami_proto::{ActionError, Reply};

use crate::asterisk::unique_id;

/// One request/response case.
#[derive(Debug)]
pub struct Case {
    /// A short name for messages.
    pub name: &'static str,
    /// Makes the action (fresh IDs for every run).
    pub action: fn() -> Action,
    /// Panics, naming what is wrong, when the completion is not what Asterisk 22 gives.
    pub check: fn(&Result<Reply, ActionError>),
    /// Whether the case places a call (the mio suite serialises those with a lock).
    pub places_call: bool,
}

fn ok<'a>(name: &str, result: &'a Result<Reply, ActionError>) -> &'a Reply {
    match result {
        Ok(reply) => reply,
        Err(error) => panic!("{name}: expected a reply, got {error}"),
    }
}

fn list_end(reply: &Reply) -> &str {
    reply
        .list_end
        .as_ref()
        .and_then(|m| m.event_name())
        .unwrap_or_default()
}

fn originate(exten: &str) -> Action {
    Originate::application(format!("Local/{exten}@test"), "Wait", "1")
        .with_channel_id(unique_id("one"))
        .with_other_channel_id(unique_id("two"))
        .into()
}

fn originate_outcome<'a>(name: &str, result: &'a Result<Reply, ActionError>) -> (&'a str, &'a str) {
    let reply = ok(name, result);
    assert_eq!(
        reply.response.get("Message"),
        Some("Originate successfully queued"),
        "{name}"
    );
    let event = reply
        .events
        .iter()
        .find(|m| m.event_name() == Some("OriginateResponse"))
        .unwrap_or_else(|| panic!("{name}: no OriginateResponse in {reply:?}"));
    assert_eq!(event.action_id(), reply.response.action_id(), "{name}");
    (
        event.get("Response").unwrap_or_default(),
        event.get("Reason").unwrap_or_default(),
    )
}

/// Every shared case.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ping",
            action: || Ping.into(),
            check: |r| assert_eq!(ok("ping", r).response.get("Ping"), Some("Pong")),
            places_call: false,
        },
        Case {
            name: "command core show version",
            action: || Command::new("core show version").into(),
            check: |r| {
                let lines = ok("core show version", r).output();
                assert!(lines[0].starts_with("Asterisk 22"), "{lines:?}");
            },
            places_call: false,
        },
        Case {
            name: "command core show help (13 KB in one response)",
            action: || Command::new("core show help").into(),
            check: |r| {
                let lines = ok("core show help", r).output();
                assert!(lines.len() > 100, "{} lines", lines.len());
            },
            places_call: false,
        },
        Case {
            name: "unknown command",
            action: || Command::new("no such command here").into(),
            check: |r| match r {
                Err(ActionError::Rejected { message, response }) => {
                    assert_eq!(message, "Command output follows");
                    assert!(response.output_lines()[0].starts_with("No such command"));
                }
                other => panic!("unknown command: {other:?}"),
            },
            places_call: false,
        },
        Case {
            name: "unknown action",
            action: || Action::new("NoSuchActionAtAll"),
            check: |r| match r {
                // Asterisk 22: `Invalid/unknown command: <name>. Use Action: ListCommands
                // to show available commands.`
                Err(ActionError::Rejected { message, .. }) => {
                    assert!(message.starts_with("Invalid/unknown command: NoSuchActionAtAll."))
                }
                other => panic!("unknown action: {other:?}"),
            },
            places_call: false,
        },
        Case {
            name: "QueueStatus list",
            action: || QueueStatus::default().into(),
            check: |r| assert_eq!(list_end(ok("QueueStatus", r)), "QueueStatusComplete"),
            places_call: false,
        },
        Case {
            name: "CoreShowChannels list",
            action: || CoreShowChannels.into(),
            check: |r| {
                assert_eq!(
                    list_end(ok("CoreShowChannels", r)),
                    "CoreShowChannelsComplete"
                )
            },
            places_call: false,
        },
        Case {
            name: "QueueSummary list",
            action: || QueueSummary::default().into(),
            check: |r| assert_eq!(list_end(ok("QueueSummary", r)), "QueueSummaryComplete"),
            places_call: false,
        },
        Case {
            name: "Status list",
            action: || Status::default().into(),
            check: |r| assert_eq!(list_end(ok("Status", r)), "StatusComplete"),
            places_call: false,
        },
        Case {
            name: "GetVar of an unset global",
            action: || {
                Action::new("GetVar").header("Variable", unique_id("UNSET").replace('-', "_"))
            },
            check: |r| {
                let reply = ok("GetVar", r);
                assert_eq!(reply.response.get("Value").unwrap_or_default(), "");
            },
            places_call: false,
        },
        Case {
            name: "Originate answered",
            action: || originate("answer"),
            check: |r| assert_eq!(originate_outcome("answered", r), ("Success", "4")),
            places_call: true,
        },
        Case {
            name: "Originate busy",
            action: || originate("busy"),
            check: |r| assert_eq!(originate_outcome("busy", r), ("Failure", "5")),
            places_call: true,
        },
        Case {
            name: "Originate to a missing extension (queued, then Reason 0)",
            action: || originate("nosuch"),
            check: |r| assert_eq!(originate_outcome("nosuch", r), ("Failure", "0")),
            places_call: true,
        },
        Case {
            name: "Originate into a missing dialplan target",
            action: || Originate::extension("Local/answer@test", "nosuch", "test", 1).into(),
            check: |r| match r {
                Err(ActionError::Rejected { message, .. }) => {
                    assert_eq!(message, "Extension does not exist.")
                }
                other => panic!("missing target: {other:?}"),
            },
            places_call: true,
        },
        Case {
            name: "Originate without a channel",
            action: || Action::new("Originate").header("Exten", "answer"),
            check: |r| match r {
                Err(ActionError::Rejected { message, .. }) => {
                    assert_eq!(message, "Channel not specified")
                }
                other => panic!("no channel: {other:?}"),
            },
            places_call: false,
        },
        Case {
            name: "Originate congestion",
            action: || originate("congestion"),
            check: |r| assert_eq!(originate_outcome("congestion", r), ("Failure", "8")),
            places_call: true,
        },
    ]
}
