//! A scripted AMI server for the connection tests: bytes and time go in by hand, and
//! everything the connection writes is kept and can be parsed back into actions.
//!
//! Time is simulated: one `Instant` base taken once, then only Durations are added.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use ami_proto::{ActionError, Completion, Config, Connection, Event, Message, Output, State};

/// The secret used by every test configuration: distinctive enough that a substring
/// search cannot hit by accident.
pub const SECRET: &str = "Tr0ub4dor&3";

/// The banner of Asterisk 22.
pub const BANNER: &str = "Asterisk Call Manager/11.0.0\r\n";

/// A default configuration for server `pbx1`, user `admin`.
pub fn config() -> Config {
    Config::new("pbx1", "admin", SECRET)
}

/// A configuration whose heartbeat never fires within a test, for tests about
/// something else (so that no internal Ping gets in the way of the deadlines).
pub fn quiet_config() -> Config {
    let mut config = config();
    config.heartbeat_interval = Duration::from_secs(24 * 3600);
    config
}

/// One action as it appeared on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenAction {
    /// `Action:` value.
    pub name: String,
    /// `ActionID:` value.
    pub id: String,
    /// Every header line in order (Action and ActionID included).
    pub headers: Vec<(String, String)>,
    /// The exact bytes of the action, blank line included.
    pub raw: String,
}

impl WrittenAction {
    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits written bytes into actions. Panics on anything that is not a well-formed
/// sequence of `Key: Value\r\n` lines ended by `\r\n`: the encoder must never write that.
pub fn parse_actions(text: &str) -> Vec<WrittenAction> {
    let mut actions = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .find("\r\n\r\n")
            .unwrap_or_else(|| panic!("unterminated action in written bytes: {rest:?}"));
        let raw = &rest[..end + 4];
        rest = &rest[end + 4..];
        let headers: Vec<(String, String)> = raw[..end]
            .split("\r\n")
            .map(|line| {
                let (k, v) = line
                    .split_once(": ")
                    .unwrap_or_else(|| panic!("written line is not `Key: Value`: {line:?}"));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        assert_eq!(headers[0].0, "Action", "first line must be Action: {raw:?}");
        assert_eq!(
            headers[1].0, "ActionID",
            "second line must be ActionID: {raw:?}"
        );
        actions.push(WrittenAction {
            name: headers[0].1.clone(),
            id: headers[1].1.clone(),
            headers,
            raw: raw.to_owned(),
        });
    }
    actions
}

/// The connection under test, its simulated clock and everything it has written.
#[derive(Debug)]
pub struct Harness {
    pub conn: Connection,
    /// The base instant (taken once).
    pub start: Instant,
    /// The simulated current time.
    pub now: Instant,
    /// Everything written to the "socket" so far.
    pub wire: String,
}

impl Harness {
    /// A connection in `Connecting`, created at `start`.
    pub fn new(config: Config) -> Self {
        let start = Instant::now();
        Harness {
            conn: Connection::new(config, 1, 1, start),
            start,
            now: start,
            wire: String::new(),
        }
    }

    /// A connection that has received the banner and written its first login step.
    pub fn with_banner(config: Config) -> Self {
        let mut h = Harness::new(config);
        h.conn.handle_connected(h.now);
        h.reply(BANNER);
        h
    }

    /// A logged-in (Healthy) connection with nothing written and nothing to poll.
    pub fn logged_in(config: Config) -> Self {
        let mut h = Harness::new(config);
        h.login();
        h
    }

    /// Connect, banner, answer the plain login with success; drains the outputs.
    pub fn login(&mut self) {
        self.conn.handle_connected(self.now);
        self.reply(BANNER);
        let written = self.written();
        let login = parse_actions(&written);
        assert_eq!(login.len(), 1, "one Login written: {written:?}");
        assert_eq!(login[0].name, "Login");
        self.reply(&success(&login[0].id, ""));
        assert_eq!(self.conn.state(), State::Healthy);
        self.outputs();
    }

    /// Takes every byte `poll_transmit` holds (as a full write) and returns them.
    pub fn written(&mut self) -> String {
        let bytes = self.conn.poll_transmit().to_vec();
        self.conn.advance_transmit(bytes.len());
        assert!(self.conn.poll_transmit().is_empty());
        let text = String::from_utf8(bytes).expect("written bytes are UTF-8");
        self.wire.push_str(&text);
        text
    }

    /// Writes out what is pending and returns the actions it holds.
    pub fn written_actions(&mut self) -> Vec<WrittenAction> {
        let text = self.written();
        parse_actions(&text)
    }

    /// The ActionIDs of every `action_name` action written so far, in order (writes
    /// out what is pending first).
    pub fn action_ids_of(&mut self, action_name: &str) -> Vec<String> {
        self.written();
        parse_actions(&self.wire)
            .into_iter()
            .filter(|a| a.name.eq_ignore_ascii_case(action_name))
            .map(|a| a.id)
            .collect()
    }

    /// The server sends `text` now.
    pub fn reply(&mut self, text: &str) {
        self.conn.handle_data(self.now, text.as_bytes());
    }

    /// The server sends raw bytes now.
    pub fn reply_bytes(&mut self, bytes: &[u8]) {
        self.conn.handle_data(self.now, bytes);
    }

    /// Moves the clock by `by` and runs the timers.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.conn.handle_timeout(self.now);
    }

    /// Jumps to the next deadline (`poll_timeout`) and runs the timers; returns the
    /// instant jumped to. Panics when nothing is scheduled.
    pub fn jump(&mut self) -> Instant {
        let deadline = self.conn.poll_timeout().expect("a deadline is scheduled");
        assert!(deadline >= self.now, "deadline in the past");
        self.now = deadline;
        self.conn.handle_timeout(self.now);
        deadline
    }

    /// Time since `start`.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Drains `poll`.
    pub fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.conn.poll()).collect()
    }

    /// Drains `poll` and returns the one completion it must hold (other outputs must
    /// not be there).
    pub fn one_completion(&mut self) -> Completion {
        let outputs = self.outputs();
        match <[Output; 1]>::try_from(outputs) {
            Ok([Output::Completed(done)]) => *done,
            Ok(other) => panic!("expected one completion, got {other:?}"),
            Err(outputs) => panic!("expected one completion, got {outputs:?}"),
        }
    }
}

/// `Response: Success` for `id` with extra header lines (`\r\n`-terminated each).
pub fn success(id: &str, extra: &str) -> String {
    format!("Response: Success\r\nActionID: {id}\r\n{extra}\r\n")
}

/// `Response: Error` for `id` with `Message: message`.
pub fn error(id: &str, message: &str) -> String {
    format!("Response: Error\r\nActionID: {id}\r\nMessage: {message}\r\n\r\n")
}

/// The completions among `outputs`.
pub fn completions(outputs: &[Output]) -> Vec<&Completion> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Completed(done) => Some(&**done),
            _ => None,
        })
        .collect()
}

/// The events among `outputs`.
pub fn events(outputs: &[Output]) -> Vec<&Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(event) => Some(event),
            _ => None,
        })
        .collect()
}

/// The names of the events among `outputs`.
pub fn event_names(outputs: &[Output]) -> Vec<String> {
    events(outputs)
        .into_iter()
        .map(|e| e.name().to_owned())
        .collect()
}

/// The state changes among `outputs`, as (from, to).
pub fn state_changes(outputs: &[Output]) -> Vec<(State, State)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::StateChanged { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// The unmatched messages among `outputs`.
pub fn unmatched(outputs: &[Output]) -> Vec<&Message> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Unmatched(message) => Some(message),
            _ => None,
        })
        .collect()
}

/// The error of a completion that must have failed.
pub fn failure(done: &Completion) -> &ActionError {
    match &done.result {
        Err(error) => error,
        Ok(reply) => panic!("expected a failure, got {reply:?}"),
    }
}
