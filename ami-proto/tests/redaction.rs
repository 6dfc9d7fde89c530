//! Redaction per connection: the policy travels in `Config`, and the client's own
//! secret is masked in everything the connection logs, prints or returns in an error,
//! including text a server sends back.
//!
//! Log lines are captured with a trace-level `tracing` subscriber installed for the
//! current thread only, so tests running in parallel do not see each other's lines.

// The simulated clock needs one real starting instant; ami-proto bans `Instant::now`
// (clippy.toml) because the library itself must never read a clock.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io;
use std::sync::{Arc, Mutex};

use ami_proto::redact::{MASK, Redactor};
use ami_proto::{Action, ActionError, CloseReason, Config, Output, State};
use support::*;

/// A writer shared by the capturing subscriber and the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with every log line at every level captured (this thread only); returns
/// what `f` returned and the lines.
fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let sink = Captured::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let bytes = sink.0.lock().unwrap().clone();
    let lines = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (result, lines)
}

/// Asserts that no line holds `needle`, and that there were lines at all (so that a
/// capture that caught nothing cannot pass).
fn assert_no_line_contains(lines: &[String], needle: &str) {
    assert!(!lines.is_empty(), "nothing was logged");
    for line in lines {
        assert!(!line.contains(needle), "{needle:?} logged: {line}");
    }
}

/// Asserts that some line holds every one of `parts`.
fn assert_some_line_contains(lines: &[String], parts: &[&str]) {
    assert!(
        lines.iter().any(|l| parts.iter().all(|p| l.contains(p))),
        "no line with {parts:?} in {lines:#?}"
    );
}

// ---------------------------------------------------------------------------
// The client's own secret echoed by the server
// ---------------------------------------------------------------------------

#[test]
fn login_failure_echoing_the_secret_is_masked_in_reason_debug_and_logs() {
    let (h, lines) = capture(|| {
        let mut h = Harness::with_banner(config());
        let id = h.written_actions()[0].id.clone();
        h.reply(&error(
            &id,
            &format!("Authentication failed for admin with secret {SECRET}"),
        ));
        h
    });
    let mut h = h;
    let outputs = h.outputs();
    let Some(Output::Closed(reason)) = outputs.last() else {
        panic!("{outputs:?}");
    };
    let CloseReason::AuthenticationFailed { message } = reason else {
        panic!("{reason:?}");
    };
    assert_eq!(
        message,
        &format!("Authentication failed for admin with secret {MASK}")
    );
    for text in [
        format!("{reason}"),
        format!("{reason:?}"),
        format!("{outputs:?}"),
        format!("{outputs:#?}"),
        format!("{:?}", h.conn),
        format!("{:?}", h.conn.close_reason()),
        format!("{}", h.conn.close_reason().unwrap()),
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }
    // The frame and the close were both logged, masked.
    assert_some_line_contains(
        &lines,
        &["received", "Authentication failed for admin", MASK],
    );
    assert_some_line_contains(&lines, &["connection closed", MASK]);
    assert_no_line_contains(&lines, SECRET);
}

#[test]
fn action_error_echoing_the_secret_is_masked_in_the_error_and_logs() {
    let mut h = Harness::logged_in(quiet_config());
    let (done, lines) = capture(|| {
        let id = h
            .conn
            .send(
                h.now,
                Action::new("GetConfig").header("Filename", "manager.conf"),
            )
            .unwrap();
        h.reply(&format!(
            "Response: Error\r\nActionID: {id}\r\nMessage: bad secret {SECRET}, try {SECRET}!\r\n\
             Output: secret={SECRET}\r\n\r\n"
        ));
        h.one_completion()
    });
    let error = failure(&done).clone();
    let ActionError::Rejected { message, response } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(message, &format!("bad secret {MASK}, try {MASK}!"));
    // The response handed back is masked too, header by header.
    assert_eq!(response.get("Message"), Some(message.as_str()));
    assert_eq!(response.output_lines(), [format!("secret={MASK}").as_str()]);
    assert_eq!(response.response(), Some("Error"));
    for text in [
        format!("{error}"),
        format!("{error:?}"),
        format!("{error:#?}"),
        format!("{done:?}"),
        format!("{:?}", response.as_str()),
        format!("{:?}", h.conn),
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }
    assert_some_line_contains(&lines, &["received", "bad secret", MASK]);
    assert_no_line_contains(&lines, SECRET);
}

#[test]
fn secret_in_a_non_secret_header_is_masked_in_the_trace_log() {
    let mut h = Harness::logged_in(quiet_config());
    let ((), lines) = capture(|| {
        h.reply(&format!(
            "Event: UserEvent\r\nPrivilege: user,all\r\nData: {SECRET}\r\n\r\n"
        ));
    });
    assert_some_line_contains(&lines, &["received", "UserEvent", "Data", MASK]);
    assert_no_line_contains(&lines, SECRET);
    // The event itself is the application's data and is delivered as received.
    let outputs = h.outputs();
    assert_eq!(events(&outputs)[0].get("Data"), Some(SECRET));
}

#[test]
fn banner_echoing_the_secret_is_masked_in_not_ami() {
    let (outputs, lines) = capture(|| {
        let mut h = Harness::new(config());
        h.conn.handle_connected(h.now);
        h.reply(&format!("SSH-2.0-{SECRET}\r\n"));
        h.outputs()
    });
    let Some(Output::Closed(reason @ CloseReason::NotAmi { first_line })) = outputs.last() else {
        panic!("{outputs:?}");
    };
    assert_eq!(first_line, &format!("SSH-2.0-{MASK}"));
    assert!(!format!("{reason} {outputs:?}").contains(SECRET));
    assert_some_line_contains(&lines, &["connection closed", MASK]);
    assert_no_line_contains(&lines, SECRET);

    // A first message instead of a banner: its first line is masked as well.
    let mut h = Harness::new(config());
    h.conn.handle_connected(h.now);
    h.reply(&format!("Hello: {SECRET}\r\n\r\n"));
    let outputs = h.outputs();
    assert_eq!(
        h.conn.close_reason(),
        Some(&CloseReason::NotAmi {
            first_line: format!("Hello: {MASK}")
        }),
        "{outputs:?}"
    );
}

#[test]
fn transport_error_quoting_the_secret_is_masked() {
    let mut h = Harness::logged_in(quiet_config());
    let id = h.conn.send(h.now, ami_proto::action::Ping).unwrap();
    let ((), lines) = capture(|| {
        h.conn
            .handle_transport_error(h.now, &format!("proxy said {SECRET}"));
    });
    let outputs = h.outputs();
    let expected = CloseReason::Transport(format!("proxy said {MASK}"));
    assert_eq!(h.conn.close_reason(), Some(&expected));
    // The pending action fails with the masked reason too.
    let done = completions(&outputs)[0];
    assert_eq!(done.action_id, id);
    assert_eq!(
        failure(done),
        &ActionError::ConnectionClosed { reason: expected }
    );
    assert!(!format!("{outputs:?}").contains(SECRET));
    assert_some_line_contains(&lines, &["connection closed", MASK]);
    assert_no_line_contains(&lines, SECRET);
}

// ---------------------------------------------------------------------------
// One policy per connection
// ---------------------------------------------------------------------------

const NONE: [&str; 0] = [];

/// A logged-in connection to `server_key` whose policy adds the secret key `key`,
/// with its own `secret`.
fn connection_with(server_key: &str, key: &str, secret: &str) -> Harness {
    let mut config = quiet_config();
    config.server_key = server_key.into();
    config.secret = secret.into();
    config.redactor = Arc::new(Redactor::new([key], NONE, NONE).unwrap());
    Harness::logged_in(config)
}

/// The lines of `server_key` that hold `what`.
fn lines_of<'a>(lines: &'a [String], server_key: &str, what: &str) -> Vec<&'a str> {
    let tag = format!("server_key={server_key} ");
    lines
        .iter()
        .filter(|l| l.contains(&tag) && l.contains(what))
        .map(String::as_str)
        .collect()
}

#[test]
fn two_configs_with_different_policies_each_mask_their_own_key_and_secret() {
    let mut token = connection_with("pbx-token", "X-Token", "token-secret-1");
    let mut other = connection_with("pbx-other", "X-Other", "other-secret-2");
    let headers = "X-Token: token-value\r\nX-Other: other-value\r\n\
                   Data: token-secret-1 other-secret-2\r\n";
    let event = format!("Event: UserEvent\r\nPrivilege: user,all\r\n{headers}\r\n");
    let (outputs, lines) = capture(|| {
        [&mut token, &mut other].map(|h| {
            h.reply(&event);
            let id = h.conn.send(h.now, Action::new("UserEvent")).unwrap();
            h.reply(&format!(
                "Response: Error\r\nActionID: {id}\r\nMessage: no\r\n{headers}\r\n"
            ));
            h.outputs()
        })
    });
    let [token_outputs, other_outputs] = &outputs;

    // Logs: each connection's frames through its own policy.
    for (server_key, hidden, shown) in [
        (
            "pbx-token",
            ["token-value", "token-secret-1"],
            ["other-value", "other-secret-2"],
        ),
        (
            "pbx-other",
            ["other-value", "other-secret-2"],
            ["token-value", "token-secret-1"],
        ),
    ] {
        let received = lines_of(&lines, server_key, "received");
        assert_eq!(received.len(), 2, "the event and the error: {lines:#?}");
        for line in received {
            assert!(line.contains(MASK), "{line}");
            for value in hidden {
                assert!(!line.contains(value), "{value} logged: {line}");
            }
            for value in shown {
                assert!(line.contains(value), "{value} not logged: {line}");
            }
        }
    }

    // Errors returned: each masked with its own policy.
    let rejected = |outputs: &[Output]| match failure(completions(outputs)[0]) {
        ActionError::Rejected { response, .. } => response.clone(),
        other => panic!("{other:?}"),
    };
    let token_error = rejected(token_outputs);
    assert_eq!(token_error.get("X-Token"), Some(MASK));
    assert_eq!(token_error.get("X-Other"), Some("other-value"));
    assert_eq!(
        token_error.get("Data"),
        Some(format!("{MASK} other-secret-2").as_str())
    );
    let other_error = rejected(other_outputs);
    assert_eq!(other_error.get("X-Token"), Some("token-value"));
    assert_eq!(other_error.get("X-Other"), Some(MASK));
    assert_eq!(
        other_error.get("Data"),
        Some(format!("token-secret-1 {MASK}").as_str())
    );

    // The formatting API: a driver formats an event with its connection's policy.
    let event = &events(token_outputs)[0].message;
    let through_token = format!("{:?}", token.conn.redactor().message(event));
    let through_other = format!("{:?}", other.conn.redactor().message(event));
    assert!(
        !through_token.contains("token-value") && through_token.contains("other-value"),
        "{through_token}"
    );
    assert!(
        through_other.contains("token-value") && !through_other.contains("other-value"),
        "{through_other}"
    );
    // Without a connection (`Message`'s own `Debug`), only the built-in keys.
    let plain = format!("{event:?}");
    assert!(
        plain.contains("token-value") && plain.contains("other-value"),
        "{plain}"
    );
    // The configs' policies themselves are untouched by the connections' secrets.
    assert_eq!(token.conn.state(), State::Healthy);
    assert!(token.conn.redactor().has_secret_values());
    let config = Config::new("pbx1", "admin", "token-secret-1");
    assert!(!config.redactor.has_secret_values());
    assert!(!format!("{config:?}").contains("token-secret-1"));
}
