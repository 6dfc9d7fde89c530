//! Warnings about bad input are rate-limited: at most one line per interval for each
//! kind, per connection, each carrying how many were held back since the last one.
//!
//! A small `tracing` subscriber, written here, records the warnings emitted on this
//! thread (no subscriber crate needed).

// The simulated clock needs one real starting instant; ami-proto bans `Instant::now`
// (clippy.toml) because the library itself must never read a clock.
#![allow(clippy::disallowed_methods)]

mod support;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use support::*;

/// One warning line: its message and its fields.
#[derive(Debug, Clone, Default)]
struct Line {
    message: String,
    fields: Vec<(String, String)>,
}

impl Line {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .push((field.name().to_owned(), value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name().to_owned(), value));
        }
    }
}

/// Keeps every WARN (and more severe) event.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<Line>>>);

impl Warnings {
    fn with(message: &str, lines: &[Line]) -> Vec<Line> {
        lines
            .iter()
            .filter(|l| l.message == message)
            .cloned()
            .collect()
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        self.0.lock().unwrap().push(line);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Runs `f` with the recording subscriber on this thread; returns the lines.
fn recorded(f: impl FnOnce()) -> Vec<Line> {
    let warnings = Warnings::default();
    tracing::subscriber::with_default(warnings.clone(), f);
    warnings.0.lock().unwrap().clone()
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn a_megabyte_of_tiny_malformed_messages_logs_one_line_per_interval() {
    let lines = recorded(|| {
        let mut h = Harness::logged_in(quiet_config());
        let junk = "x\r\n\r\n".repeat(200_000);
        assert_eq!(junk.len(), 1_000_000);
        h.reply(&junk);
        assert_eq!(h.conn.stats().discards, 200_000);
        h.advance(SEC / 2);
        h.reply("y\r\n\r\n"); // within the interval: held back
        h.advance(SEC / 2);
        h.reply("z\r\n\r\n"); // a second after the first line: due
    });
    let discards = Warnings::with("input discarded", &lines);
    assert_eq!(discards.len(), 2, "{} lines", discards.len());
    assert_eq!(discards[0].field("suppressed"), Some("0"));
    assert_eq!(discards[1].field("suppressed"), Some("200000"));
    assert_eq!(discards[1].field("discards_total"), Some("200002"));
    assert_eq!(discards[1].field("server_key"), Some("pbx1"));
}

#[test]
fn unmatched_responses_and_late_replies_warn_at_most_once_per_interval() {
    let lines = recorded(|| {
        let mut h = Harness::logged_in(quiet_config());
        let mut late = Vec::new();
        for _ in 0..3 {
            let id = h
                .conn
                .send(h.now, ami_proto::Action::new("Ping").with_timeout(SEC))
                .unwrap();
            late.push(id);
        }
        h.advance(SEC); // all three time out
        h.outputs();
        for _ in 0..1000 {
            h.reply("Response: Success\r\nActionID: someone-else-1\r\n\r\n");
        }
        for id in &late {
            h.reply(&success(id, "Ping: Pong\r\n"));
        }
        assert_eq!(h.conn.stats().unmatched, 1000);
        assert_eq!(h.conn.stats().late_replies, 3);
        h.advance(SEC);
        h.reply("Response: Success\r\nActionID: someone-else-2\r\n\r\n");
        h.reply(&success(&late[0], ""));
    });
    let unmatched = Warnings::with("unmatched response", &lines);
    let suppressed: Vec<_> = unmatched.iter().map(|l| l.field("suppressed")).collect();
    assert_eq!(suppressed, [Some("0"), Some("999")]);
    assert_eq!(unmatched[1].field("action_id"), Some("someone-else-2"));
    let late = Warnings::with("late reply dropped", &lines);
    let suppressed: Vec<_> = late.iter().map(|l| l.field("suppressed")).collect();
    assert_eq!(suppressed, [Some("0"), Some("2")]);
}
