//! Actions sent to Asterisk, their completion strategies, the wire encoder,
//! and typed constructors for the common actions.
//!
//! [`Action`] is the generic form: a name, ordered headers (repeats allowed),
//! a [`Strategy`] saying how the connection knows the action is complete, and
//! an optional per-action timeout. Every typed action (`Login`, `Originate`,
//! `QueueStatus`, ...) converts into an [`Action`] with `From`.
//!
//! The connection assigns ActionIDs; [`Action::encode`] writes the action with
//! the given ID and enforces Asterisk's input limits (1024-byte lines, 128
//! header lines) so that a bad action is refused locally instead of being
//! mangled or rejected by the server.

use std::fmt;
use std::time::Duration;

use md5::{Digest, Md5};

use crate::redact::{self, MASK, Secret};

/// Longest request line Asterisk accepts, `\r\n` included.
pub const MAX_LINE_LEN: usize = 1024;

/// Most header lines Asterisk accepts in one action, counting the `Action`
/// and `ActionID` lines.
pub const MAX_HEADERS: usize = 128;

/// Longest ActionID the encoder accepts: some Asterisk list handlers copy the
/// ActionID into fixed 80-byte buffers and corrupt the next header when longer.
pub const MAX_ACTION_ID_LEN: usize = 64;

/// Asterisk's own Originate timeout when the action does not set `Timeout`.
const DEFAULT_ORIGINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Margin added to the Originate timeout before the client gives up waiting
/// for the `OriginateResponse` event (async) or the response (sync).
const ORIGINATE_GRACE: Duration = Duration::from_secs(10);

/// Keys the encoder writes itself and refuses from the caller.
const RESERVED_KEYS: [&str; 2] = ["Action", "ActionID"];

/// How an action completes, i.e. which server messages belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A single response. If the server answers `EventList: start` anyway, the
    /// connection collects the list.
    SingleResponse,
    /// A response with `EventList: start`, then list-item events carrying the
    /// same ActionID, ended by the `...Complete` event.
    EventList,
    /// CLI output: `Output:` lines (Asterisk 14+) or a legacy
    /// `Response: Follows` body ending with `--END COMMAND--`.
    Command,
    /// A response, then an `OriginateResponse` event with the same ActionID,
    /// awaited for at most `event_timeout` after the response.
    AsyncOriginate {
        /// Deadline for the `OriginateResponse` event (one that overflows an
        /// `Instant` means no deadline, as for [`Action::with_timeout`]).
        event_timeout: Duration,
    },
}

/// A generic AMI action: name, ordered headers, completion strategy and an
/// optional timeout.
///
/// `Debug` masks secret values through the built-in redaction policy
/// ([`Redactor::builtin`](redact::Redactor::builtin)): an action does not know the
/// connection it will be sent on.
#[derive(Clone, PartialEq, Eq)]
pub struct Action {
    name: String,
    headers: Vec<(String, String)>,
    strategy: Strategy,
    timeout: Option<Duration>,
}

impl Action {
    /// A new action with no headers, [`Strategy::SingleResponse`] and the
    /// connection's default timeout.
    pub fn new(name: impl Into<String>) -> Self {
        Action {
            name: name.into(),
            headers: Vec::new(),
            strategy: Strategy::SingleResponse,
            timeout: None,
        }
    }

    /// Appends a header (builder form). Repeated keys are kept in order.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.push_header(key, value);
        self
    }

    /// Appends a header. Repeated keys are kept in order.
    pub fn push_header(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.headers.push((key.into(), value.into()));
    }

    /// Sets the completion strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the completion strategy (and, for a synchronous `Originate`, the timeout)
    /// that the typed action of this name would use, read from the headers: `Command`
    /// collects its output; `Originate` with `Async: true` waits for its
    /// `OriginateResponse`, and without it for the response, both up to its `Timeout`
    /// (30 s when absent) plus a grace, as [`Originate`] does; the list actions typed
    /// here (`QueueStatus`, `Status`, `CoreShowChannels`, `QueueSummary`,
    /// `PJSIPShowEndpoint`, `PJSIPShowEndpoints`) collect their events. Any other
    /// action gets a single response, and still collects a list when the server
    /// answers with one. For actions built from a name and headers (a command line, a
    /// request read from Redis).
    pub fn with_typed_strategy(self) -> Self {
        let name = self.name.as_str();
        let is = |typed: &str| name.eq_ignore_ascii_case(typed);
        if is("Command") {
            return self.with_strategy(Strategy::Command);
        }
        if is("Originate") {
            let answer_timeout = self
                .get("Timeout")
                .and_then(|t| t.trim().parse::<u64>().ok())
                .map_or(DEFAULT_ORIGINATE_TIMEOUT, Duration::from_millis);
            let deadline = answer_timeout.saturating_add(ORIGINATE_GRACE);
            let is_async = self.get("Async").is_some_and(|v| {
                ["true", "yes", "1", "on", "y", "t"]
                    .iter()
                    .any(|t| v.trim().eq_ignore_ascii_case(t))
            });
            return if is_async {
                self.with_strategy(Strategy::AsyncOriginate {
                    event_timeout: deadline,
                })
            } else if self.timeout.is_none() {
                self.with_timeout(deadline)
            } else {
                self
            };
        }
        const LISTS: [&str; 6] = [
            "QueueStatus",
            "Status",
            "CoreShowChannels",
            "QueueSummary",
            "PJSIPShowEndpoint",
            "PJSIPShowEndpoints",
        ];
        if LISTS.iter().any(|list| is(list)) {
            return self.with_strategy(Strategy::EventList);
        }
        self
    }

    /// Sets this action's response timeout (instead of the connection default). The
    /// deadline is the send time plus `timeout` (restarted by each list item); a
    /// timeout so long that the deadline does not fit in an `Instant` (e.g.
    /// `Duration::MAX`) means **no deadline**: the action never times out by itself
    /// and completes only with its reply or the connection's close.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The action name, e.g. `Originate`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The headers in order, without `Action` and `ActionID`.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How the action completes.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The per-action timeout; `None` means the connection default.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The first value of header `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `key` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Appends the wire form of this action to `out`: `Action`, `ActionID`,
    /// the headers in order, then the empty line.
    ///
    /// On error `out` is left exactly as it was.
    pub fn encode(&self, action_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let result = self.write_action(action_id, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Writes and validates in one pass; the caller truncates on error.
    fn write_action(&self, action_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.name.is_empty() {
            return Err(EncodeError::EmptyActionName);
        }
        // A CR or LF is refused below as an injection; anything else that is not one
        // token (a space, a `:`) would be sent as it is and misread by Asterisk.
        let injects = self.name.bytes().any(|b| b == b'\r' || b == b'\n');
        if !injects && !is_action_name(&self.name) {
            return Err(EncodeError::InvalidActionName);
        }
        check_action_id(action_id)?;
        let count = self.headers.len() + 2;
        if count > MAX_HEADERS {
            return Err(EncodeError::TooManyHeaders {
                count,
                limit: MAX_HEADERS,
            });
        }

        let size: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + self.name.len()
            + action_id.len()
            + 24;
        out.reserve(size);

        write_line(out, "Action", &self.name)?;
        write_line(out, "ActionID", action_id)?;
        for (index, (key, value)) in self.headers.iter().enumerate() {
            check_key(index, key)?;
            write_line(out, key, value)?;
        }
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Appends a header only when `value` is present.
    fn opt_header(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.header(key, v.to_string()),
            None => self,
        }
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Shows headers through the built-in redaction policy.
        struct Headers<'a>(&'a [(String, String)]);
        impl fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                redact::fmt_headers(f, self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        }

        f.debug_struct("Action")
            .field("name", &self.name)
            .field("headers", &Headers(&self.headers))
            .field("strategy", &self.strategy)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether `name` is an action name the encoder sends: one token of ASCII letters,
/// digits, `_`, `-` and `.` (its line is held to the line limit like any other).
pub fn is_action_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Why an action could not be encoded. Messages name keys, indexes and
/// lengths, never header values (which may be secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The action name is empty.
    #[error("action name is empty")]
    EmptyActionName,
    /// The action name is not one token of ASCII letters, digits, `_`, `-` and `.`
    /// (Asterisk's names are letters and digits).
    #[error("action name is not one token (letters, digits, `_`, `-`, `.`)")]
    InvalidActionName,
    /// A CR or LF in the action name, a header key or a value would let the
    /// content inject extra header lines. `key` is `Action` for the name, or
    /// the header key (cut before the first CR/LF when the key itself has one).
    #[error("CR or LF in header {key:?} (header injection)")]
    HeaderInjection {
        /// The header concerned.
        key: String,
    },
    /// A header key is empty or contains `:`.
    #[error("header #{index} has an empty key or a key containing ':'")]
    InvalidKey {
        /// Position of the header among the action's headers (0-based).
        index: usize,
    },
    /// An encoded line, `\r\n` included, is longer than Asterisk accepts.
    #[error("line for header {key:?} is {len} bytes, limit is {limit}")]
    LineTooLong {
        /// The header concerned (`Action` for the action name).
        key: String,
        /// Encoded length of the line, `\r\n` included.
        len: usize,
        /// The limit ([`MAX_LINE_LEN`]).
        limit: usize,
    },
    /// More header lines than Asterisk accepts in one action.
    #[error("{count} header lines (Action and ActionID included), limit is {limit}")]
    TooManyHeaders {
        /// Header lines the action would have, `Action` and `ActionID` included.
        count: usize,
        /// The limit ([`MAX_HEADERS`]).
        limit: usize,
    },
    /// The caller supplied `Action` or `ActionID` as a header: the encoder
    /// writes those itself (the connection assigns ActionIDs).
    #[error("header {key:?} is reserved")]
    ReservedHeader {
        /// The key as supplied.
        key: String,
    },
    /// The ActionID is empty, longer than [`MAX_ACTION_ID_LEN`], not printable
    /// ASCII, or starts or ends with a space.
    #[error(
        "invalid ActionID ({len} bytes): must be 1 to {MAX_ACTION_ID_LEN} printable ASCII characters without leading or trailing spaces"
    )]
    InvalidActionId {
        /// Length of the refused ActionID in bytes.
        len: usize,
    },
}

/// Checks an ActionID. Asterisk skips blanks after `:`, so a leading space
/// would not be echoed back and the response could not be correlated.
fn check_action_id(id: &str) -> Result<(), EncodeError> {
    let printable = id.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    let trimmed = !id.starts_with(' ') && !id.ends_with(' ');
    if id.is_empty() || id.len() > MAX_ACTION_ID_LEN || !printable || !trimmed {
        return Err(EncodeError::InvalidActionId { len: id.len() });
    }
    Ok(())
}

/// Checks a caller-supplied header key.
fn check_key(index: usize, key: &str) -> Result<(), EncodeError> {
    if let Some(pos) = key.find(['\r', '\n']) {
        return Err(EncodeError::HeaderInjection {
            key: key[..pos].to_owned(),
        });
    }
    if key.is_empty() || key.contains(':') {
        return Err(EncodeError::InvalidKey { index });
    }
    if RESERVED_KEYS.iter().any(|r| r.eq_ignore_ascii_case(key)) {
        return Err(EncodeError::ReservedHeader {
            key: key.to_owned(),
        });
    }
    Ok(())
}

/// Writes `key: value\r\n`, refusing CR/LF in the value and over-long lines.
fn write_line(out: &mut Vec<u8>, key: &str, value: &str) -> Result<(), EncodeError> {
    if value.contains(['\r', '\n']) {
        return Err(EncodeError::HeaderInjection {
            key: key.to_owned(),
        });
    }
    let len = key.len() + 2 + value.len() + 2;
    if len > MAX_LINE_LEN {
        return Err(EncodeError::LineTooLong {
            key: key.to_owned(),
            len,
            limit: MAX_LINE_LEN,
        });
    }
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// AMI's rendering of booleans.
fn bool_str(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

// ---------------------------------------------------------------------------
// Shared value types
// ---------------------------------------------------------------------------

/// Which events a session receives (`Events` header of `Login`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventMask {
    /// All events the user may read (`on`).
    On,
    /// No broadcast events (`off`).
    Off,
    /// Only these classes, e.g. `call,system`. An empty list renders `off`:
    /// Asterisk treats an empty `Events` value as "all events".
    Classes(Vec<String>),
}

impl fmt::Display for EventMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventMask::On => f.write_str("on"),
            EventMask::Off => f.write_str("off"),
            EventMask::Classes(classes) if classes.is_empty() => f.write_str("off"),
            EventMask::Classes(classes) => f.write_str(&classes.join(",")),
        }
    }
}

/// A dialplan priority: a number or a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Priority {
    /// A numeric priority, e.g. `1`.
    Number(u32),
    /// A priority label, e.g. `start`.
    Label(String),
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Priority::Number(n) => write!(f, "{n}"),
            Priority::Label(label) => f.write_str(label),
        }
    }
}

impl From<u32> for Priority {
    fn from(n: u32) -> Self {
        Priority::Number(n)
    }
}

impl From<&str> for Priority {
    fn from(label: &str) -> Self {
        Priority::Label(label.to_owned())
    }
}

impl From<String> for Priority {
    fn from(label: String) -> Self {
        Priority::Label(label)
    }
}

// ---------------------------------------------------------------------------
// v1: session actions
// ---------------------------------------------------------------------------

/// Plain-text login (`Username` + `Secret`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The manager user.
    pub username: String,
    /// The user's secret; masked in `Debug`.
    pub secret: Secret,
    /// Events to receive; `None` keeps the user's configured default.
    pub events: Option<EventMask>,
}

impl Login {
    /// A login without an `Events` header.
    pub fn new(username: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Login {
            username: username.into(),
            secret: secret.into(),
            events: None,
        }
    }

    /// Sets the `Events` header.
    pub fn with_events(mut self, events: EventMask) -> Self {
        self.events = Some(events);
        self
    }
}

impl From<Login> for Action {
    fn from(a: Login) -> Action {
        Action::new("Login")
            .header("Username", a.username)
            .header("Secret", a.secret.expose())
            .opt_header("Events", a.events)
    }
}

/// Challenge-response login: `AuthType: MD5` with `Key` = [`md5_key`].
#[derive(Clone, PartialEq, Eq)]
pub struct LoginMd5 {
    /// The manager user.
    pub username: String,
    /// Lowercase hex md5(challenge + secret); masked in `Debug`.
    pub key: String,
    /// Events to receive; `None` keeps the user's configured default.
    pub events: Option<EventMask>,
}

impl LoginMd5 {
    /// Computes the key from the server's `Challenge` and the secret.
    pub fn new(username: impl Into<String>, challenge: &str, secret: &Secret) -> Self {
        LoginMd5 {
            username: username.into(),
            key: md5_key(challenge, secret),
            events: None,
        }
    }

    /// Sets the `Events` header.
    pub fn with_events(mut self, events: EventMask) -> Self {
        self.events = Some(events);
        self
    }
}

impl fmt::Debug for LoginMd5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest allows an offline guess of the secret: never show it.
        f.debug_struct("LoginMd5")
            .field("username", &self.username)
            .field("key", &MASK)
            .field("events", &self.events)
            .finish()
    }
}

impl From<LoginMd5> for Action {
    fn from(a: LoginMd5) -> Action {
        Action::new("Login")
            .header("AuthType", "MD5")
            .header("Username", a.username)
            .header("Key", a.key)
            .opt_header("Events", a.events)
    }
}

/// The MD5 login key: lowercase hex of md5(challenge + secret).
pub fn md5_key(challenge: &str, secret: &Secret) -> String {
    let mut hasher = Md5::new();
    hasher.update(challenge.as_bytes());
    hasher.update(secret.expose().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Ends the session; the server answers `Response: Goodbye` and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Logoff;

impl From<Logoff> for Action {
    fn from(_: Logoff) -> Action {
        Action::new("Logoff")
    }
}

/// Keepalive; the server answers `Ping: Pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ping;

impl From<Ping> for Action {
    fn from(_: Ping) -> Action {
        Action::new("Ping")
    }
}

/// Asks for an MD5 login challenge (`AuthType: MD5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Challenge;

impl From<Challenge> for Action {
    fn from(_: Challenge) -> Action {
        Action::new("Challenge").header("AuthType", "MD5")
    }
}

// ---------------------------------------------------------------------------
// v1.5: dialer actions
// ---------------------------------------------------------------------------

/// Where an originated channel is connected once answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginateTarget {
    /// A dialplan location.
    Extension {
        /// Extension.
        exten: String,
        /// Context.
        context: String,
        /// Priority.
        priority: Priority,
    },
    /// A dialplan application.
    Application {
        /// Application name, e.g. `Playback`.
        application: String,
        /// Application arguments.
        data: Option<String>,
    },
}

/// Places a call. Asynchronous by default: the response comes at once and the
/// outcome arrives as an `OriginateResponse` event.
#[derive(Clone, PartialEq, Eq)]
pub struct Originate {
    /// Channel to dial, e.g. `PJSIP/100`.
    pub channel: String,
    /// What to connect the answered channel to.
    pub target: OriginateTarget,
    /// How long to wait for an answer (`Timeout`, in ms); Asterisk's default
    /// is 30 s.
    pub timeout: Option<Duration>,
    /// `CallerID` of the new channel.
    pub caller_id: Option<String>,
    /// Channel variables, each sent as its own `Variable: name=value` header.
    pub variables: Vec<(String, String)>,
    /// `Account` code.
    pub account: Option<String>,
    /// `Async`: when false, the session blocks until the call is answered or
    /// fails, and no event is sent.
    pub is_async: bool,
    /// `EarlyMedia`: connect on early media.
    pub early_media: Option<bool>,
    /// `Codecs` allowed, e.g. `ulaw`, `alaw`.
    pub codecs: Vec<String>,
    /// `ChannelId`: unique ID for the new channel.
    pub channel_id: Option<String>,
    /// `OtherChannelId`: unique ID for the second (local) channel.
    pub other_channel_id: Option<String>,
}

impl Originate {
    /// Originates `channel` into a dialplan location.
    pub fn extension(
        channel: impl Into<String>,
        exten: impl Into<String>,
        context: impl Into<String>,
        priority: impl Into<Priority>,
    ) -> Self {
        Self::with_target(
            channel.into(),
            OriginateTarget::Extension {
                exten: exten.into(),
                context: context.into(),
                priority: priority.into(),
            },
        )
    }

    /// Originates `channel` into an application; empty `data` sends no `Data`.
    pub fn application(
        channel: impl Into<String>,
        application: impl Into<String>,
        data: impl Into<String>,
    ) -> Self {
        let data = data.into();
        Self::with_target(
            channel.into(),
            OriginateTarget::Application {
                application: application.into(),
                data: (!data.is_empty()).then_some(data),
            },
        )
    }

    fn with_target(channel: String, target: OriginateTarget) -> Self {
        Originate {
            channel,
            target,
            timeout: None,
            caller_id: None,
            variables: Vec::new(),
            account: None,
            is_async: true,
            early_media: None,
            codecs: Vec::new(),
            channel_id: None,
            other_channel_id: None,
        }
    }

    /// Sets the answer timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the caller ID.
    pub fn with_caller_id(mut self, caller_id: impl Into<String>) -> Self {
        self.caller_id = Some(caller_id.into());
        self
    }

    /// Adds a channel variable (kept in order).
    pub fn with_variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.variables.push((name.into(), value.into()));
        self
    }

    /// Sets the account code.
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// Chooses asynchronous (default) or blocking originate.
    pub fn with_async(mut self, is_async: bool) -> Self {
        self.is_async = is_async;
        self
    }

    /// Sets `EarlyMedia`.
    pub fn with_early_media(mut self, early_media: bool) -> Self {
        self.early_media = Some(early_media);
        self
    }

    /// Sets the allowed codecs.
    pub fn with_codecs(mut self, codecs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.codecs = codecs.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the new channel's unique ID.
    pub fn with_channel_id(mut self, channel_id: impl Into<String>) -> Self {
        self.channel_id = Some(channel_id.into());
        self
    }

    /// Sets the second channel's unique ID.
    pub fn with_other_channel_id(mut self, other_channel_id: impl Into<String>) -> Self {
        self.other_channel_id = Some(other_channel_id.into());
        self
    }

    /// The answer timeout Asterisk will use: the configured one or 30 s.
    pub fn effective_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_ORIGINATE_TIMEOUT)
    }
}

impl fmt::Debug for Originate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Variables with secret names (per the built-in redaction policy) masked.
        struct Vars<'a>(&'a [(String, String)]);
        impl fmt::Debug for Vars<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let policy = redact::Redactor::builtin();
                f.debug_map()
                    .entries(
                        self.0
                            .iter()
                            .map(|(k, v)| (k, policy.redact_variable(k, v))),
                    )
                    .finish()
            }
        }

        f.debug_struct("Originate")
            .field("channel", &self.channel)
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("caller_id", &self.caller_id)
            .field("variables", &Vars(&self.variables))
            .field("account", &self.account)
            .field("is_async", &self.is_async)
            .field("early_media", &self.early_media)
            .field("codecs", &self.codecs)
            .field("channel_id", &self.channel_id)
            .field("other_channel_id", &self.other_channel_id)
            .finish()
    }
}

impl From<Originate> for Action {
    fn from(a: Originate) -> Action {
        let answer_timeout = a.effective_timeout();
        // The client waits a little longer than Asterisk does, so that
        // Asterisk's own answer (success or failure) normally arrives first.
        let deadline = answer_timeout.saturating_add(ORIGINATE_GRACE);

        let mut action = Action::new("Originate").header("Channel", a.channel);
        action = match a.target {
            OriginateTarget::Extension {
                exten,
                context,
                priority,
            } => action
                .header("Exten", exten)
                .header("Context", context)
                .header("Priority", priority.to_string()),
            OriginateTarget::Application { application, data } => action
                .header("Application", application)
                .opt_header("Data", data),
        };
        // Asterisk parses Timeout with %d: clamp rather than overflow.
        let timeout_ms = a.timeout.map(|t| t.as_millis().min(i32::MAX as u128));
        action = action
            .opt_header("Timeout", timeout_ms)
            .opt_header("CallerID", a.caller_id)
            .opt_header("Account", a.account)
            .opt_header("EarlyMedia", a.early_media.map(bool_str))
            .header("Async", bool_str(a.is_async));
        if !a.codecs.is_empty() {
            action.push_header("Codecs", a.codecs.join(","));
        }
        action = action
            .opt_header("ChannelId", a.channel_id)
            .opt_header("OtherChannelId", a.other_channel_id);
        for (name, value) in a.variables {
            action.push_header("Variable", format!("{name}={value}"));
        }

        if a.is_async {
            action.with_strategy(Strategy::AsyncOriginate {
                event_timeout: deadline,
            })
        } else {
            // Sync Originate holds the response until the call is answered or
            // times out (PROTOCOL-NOTES 27).
            action.with_timeout(deadline)
        }
    }
}

/// Hangs up a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hangup {
    /// Channel name (or `/regex/`).
    pub channel: String,
    /// Hangup cause code, e.g. 16 (normal clearing).
    pub cause: Option<u32>,
}

impl Hangup {
    /// Hangs up `channel` without a cause.
    pub fn new(channel: impl Into<String>) -> Self {
        Hangup {
            channel: channel.into(),
            cause: None,
        }
    }
}

impl From<Hangup> for Action {
    fn from(a: Hangup) -> Action {
        Action::new("Hangup")
            .header("Channel", a.channel)
            .opt_header("Cause", a.cause)
    }
}

/// Transfers a channel (and optionally a second one) to a dialplan location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Channel to transfer.
    pub channel: String,
    /// Destination extension.
    pub exten: String,
    /// Destination context.
    pub context: String,
    /// Destination priority.
    pub priority: Priority,
    /// Second channel to transfer (`ExtraChannel`).
    pub extra_channel: Option<String>,
    /// Destination extension of the second channel (`ExtraExten`).
    pub extra_exten: Option<String>,
    /// Destination context of the second channel (`ExtraContext`).
    pub extra_context: Option<String>,
    /// Destination priority of the second channel (`ExtraPriority`).
    pub extra_priority: Option<Priority>,
}

impl Redirect {
    /// Transfers `channel` to `exten@context:priority`.
    pub fn new(
        channel: impl Into<String>,
        exten: impl Into<String>,
        context: impl Into<String>,
        priority: impl Into<Priority>,
    ) -> Self {
        Redirect {
            channel: channel.into(),
            exten: exten.into(),
            context: context.into(),
            priority: priority.into(),
            extra_channel: None,
            extra_exten: None,
            extra_context: None,
            extra_priority: None,
        }
    }

    /// Also transfers `channel` to `exten@context:priority`.
    pub fn with_extra(
        mut self,
        channel: impl Into<String>,
        exten: impl Into<String>,
        context: impl Into<String>,
        priority: impl Into<Priority>,
    ) -> Self {
        self.extra_channel = Some(channel.into());
        self.extra_exten = Some(exten.into());
        self.extra_context = Some(context.into());
        self.extra_priority = Some(priority.into());
        self
    }
}

impl From<Redirect> for Action {
    fn from(a: Redirect) -> Action {
        Action::new("Redirect")
            .header("Channel", a.channel)
            .header("Exten", a.exten)
            .header("Context", a.context)
            .header("Priority", a.priority.to_string())
            .opt_header("ExtraChannel", a.extra_channel)
            .opt_header("ExtraExten", a.extra_exten)
            .opt_header("ExtraContext", a.extra_context)
            .opt_header("ExtraPriority", a.extra_priority)
    }
}

/// Sets a channel variable, or a global one when `channel` is `None`.
#[derive(Clone, PartialEq, Eq)]
pub struct SetVar {
    /// Channel; `None` sets a global variable.
    pub channel: Option<String>,
    /// Variable name (or function, e.g. `CDR(userfield)`).
    pub variable: String,
    /// New value; masked in `Debug` when the variable name is secret.
    pub value: String,
}

impl SetVar {
    /// Sets global variable `variable`.
    pub fn global(variable: impl Into<String>, value: impl Into<String>) -> Self {
        SetVar {
            channel: None,
            variable: variable.into(),
            value: value.into(),
        }
    }

    /// Sets `variable` on `channel`.
    pub fn on_channel(
        channel: impl Into<String>,
        variable: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        SetVar {
            channel: Some(channel.into()),
            ..SetVar::global(variable, value)
        }
    }
}

impl fmt::Debug for SetVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = redact::Redactor::builtin();
        f.debug_struct("SetVar")
            .field("channel", &self.channel)
            .field("variable", &self.variable)
            .field(
                "value",
                &policy.redact_variable(&self.variable, &self.value),
            )
            .finish()
    }
}

impl From<SetVar> for Action {
    fn from(a: SetVar) -> Action {
        Action::new("SetVar")
            .opt_header("Channel", a.channel)
            .header("Variable", a.variable)
            .header("Value", a.value)
    }
}

/// Reads a channel variable, or a global one when `channel` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetVar {
    /// Channel; `None` reads a global variable.
    pub channel: Option<String>,
    /// Variable name (or function).
    pub variable: String,
}

impl GetVar {
    /// Reads global variable `variable`.
    pub fn global(variable: impl Into<String>) -> Self {
        GetVar {
            channel: None,
            variable: variable.into(),
        }
    }

    /// Reads `variable` on `channel`.
    pub fn on_channel(channel: impl Into<String>, variable: impl Into<String>) -> Self {
        GetVar {
            channel: Some(channel.into()),
            variable: variable.into(),
        }
    }
}

impl From<GetVar> for Action {
    fn from(a: GetVar) -> Action {
        Action::new("GetVar")
            .opt_header("Channel", a.channel)
            .header("Variable", a.variable)
    }
}

/// Runs a CLI command; completes with [`Strategy::Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The CLI command, e.g. `core show channels`.
    pub command: String,
}

impl Command {
    /// Runs `command`.
    pub fn new(command: impl Into<String>) -> Self {
        Command {
            command: command.into(),
        }
    }
}

impl From<Command> for Action {
    fn from(a: Command) -> Action {
        Action::new("Command")
            .header("Command", a.command)
            .with_strategy(Strategy::Command)
    }
}

// ---------------------------------------------------------------------------
// v2: lists, queues, PJSIP
// ---------------------------------------------------------------------------

/// Lists queue parameters, members and callers (`QueueStatusComplete`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueStatus {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this member.
    pub member: Option<String>,
}

impl From<QueueStatus> for Action {
    fn from(a: QueueStatus) -> Action {
        Action::new("QueueStatus")
            .opt_header("Queue", a.queue)
            .opt_header("Member", a.member)
            .with_strategy(Strategy::EventList)
    }
}

/// Lists channel status (`StatusComplete`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Only this channel.
    pub channel: Option<String>,
    /// Channel variables to include, sent as `Variables: a,b`.
    pub variables: Option<Vec<String>>,
}

impl From<Status> for Action {
    fn from(a: Status) -> Action {
        let variables = a.variables.filter(|v| !v.is_empty()).map(|v| v.join(","));
        Action::new("Status")
            .opt_header("Channel", a.channel)
            .opt_header("Variables", variables)
            .with_strategy(Strategy::EventList)
    }
}

/// Lists active channels (`CoreShowChannelsComplete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoreShowChannels;

impl From<CoreShowChannels> for Action {
    fn from(_: CoreShowChannels) -> Action {
        Action::new("CoreShowChannels").with_strategy(Strategy::EventList)
    }
}

/// Lists queue summaries (`QueueSummaryComplete`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSummary {
    /// Only this queue.
    pub queue: Option<String>,
}

impl From<QueueSummary> for Action {
    fn from(a: QueueSummary) -> Action {
        Action::new("QueueSummary")
            .opt_header("Queue", a.queue)
            .with_strategy(Strategy::EventList)
    }
}

/// Adds a member to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAdd {
    /// Queue name.
    pub queue: String,
    /// Member interface, e.g. `PJSIP/100`.
    pub interface: String,
    /// Member penalty.
    pub penalty: Option<u32>,
    /// Start paused.
    pub paused: Option<bool>,
    /// Member display name (`MemberName`).
    pub member_name: Option<String>,
    /// Interface whose device state is watched (`StateInterface`).
    pub state_interface: Option<String>,
}

impl QueueAdd {
    /// Adds `interface` to `queue` with Asterisk's defaults.
    pub fn new(queue: impl Into<String>, interface: impl Into<String>) -> Self {
        QueueAdd {
            queue: queue.into(),
            interface: interface.into(),
            penalty: None,
            paused: None,
            member_name: None,
            state_interface: None,
        }
    }
}

impl From<QueueAdd> for Action {
    fn from(a: QueueAdd) -> Action {
        Action::new("QueueAdd")
            .header("Queue", a.queue)
            .header("Interface", a.interface)
            .opt_header("Penalty", a.penalty)
            .opt_header("Paused", a.paused.map(bool_str))
            .opt_header("MemberName", a.member_name)
            .opt_header("StateInterface", a.state_interface)
    }
}

/// Removes a member from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRemove {
    /// Queue name.
    pub queue: String,
    /// Member interface.
    pub interface: String,
}

impl QueueRemove {
    /// Removes `interface` from `queue`.
    pub fn new(queue: impl Into<String>, interface: impl Into<String>) -> Self {
        QueueRemove {
            queue: queue.into(),
            interface: interface.into(),
        }
    }
}

impl From<QueueRemove> for Action {
    fn from(a: QueueRemove) -> Action {
        Action::new("QueueRemove")
            .header("Queue", a.queue)
            .header("Interface", a.interface)
    }
}

/// Pauses or unpauses a member, in one queue or in all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePause {
    /// Queue; `None` applies to every queue the member is in.
    pub queue: Option<String>,
    /// Member interface.
    pub interface: String,
    /// Pause (true) or unpause (false).
    pub paused: bool,
    /// Reason, logged in the queue log.
    pub reason: Option<String>,
}

impl QueuePause {
    /// Pauses or unpauses `interface` in every queue.
    pub fn new(interface: impl Into<String>, paused: bool) -> Self {
        QueuePause {
            queue: None,
            interface: interface.into(),
            paused,
            reason: None,
        }
    }
}

impl From<QueuePause> for Action {
    fn from(a: QueuePause) -> Action {
        Action::new("QueuePause")
            .opt_header("Queue", a.queue)
            .header("Interface", a.interface)
            .header("Paused", bool_str(a.paused))
            .opt_header("Reason", a.reason)
    }
}

/// Details of one PJSIP endpoint (`EndpointDetailComplete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PJSIPShowEndpoint {
    /// Endpoint name.
    pub endpoint: String,
}

impl PJSIPShowEndpoint {
    /// Shows `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        PJSIPShowEndpoint {
            endpoint: endpoint.into(),
        }
    }
}

impl From<PJSIPShowEndpoint> for Action {
    fn from(a: PJSIPShowEndpoint) -> Action {
        Action::new("PJSIPShowEndpoint")
            .header("Endpoint", a.endpoint)
            .with_strategy(Strategy::EventList)
    }
}

/// Lists PJSIP endpoints (`EndpointListComplete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PJSIPShowEndpoints;

impl From<PJSIPShowEndpoints> for Action {
    fn from(_: PJSIPShowEndpoints) -> Action {
        Action::new("PJSIPShowEndpoints").with_strategy(Strategy::EventList)
    }
}

/// Reads an extension's hint state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionState {
    /// Extension.
    pub exten: String,
    /// Context.
    pub context: String,
}

impl ExtensionState {
    /// Reads the state of `exten@context`.
    pub fn new(exten: impl Into<String>, context: impl Into<String>) -> Self {
        ExtensionState {
            exten: exten.into(),
            context: context.into(),
        }
    }
}

impl From<ExtensionState> for Action {
    fn from(a: ExtensionState) -> Action {
        Action::new("ExtensionState")
            .header("Exten", a.exten)
            .header("Context", a.context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(action: impl Into<Action>, id: &str) -> String {
        let mut out = Vec::new();
        action.into().encode(id, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Encodes into a buffer holding earlier data and checks it is untouched
    /// on error.
    fn encode_err(action: &Action, id: &str) -> EncodeError {
        let mut out = b"Action: Ping\r\nActionID: 0\r\n\r\n".to_vec();
        let before = out.clone();
        let err = action.encode(id, &mut out).unwrap_err();
        assert_eq!(out, before, "buffer modified on {err:?}");
        err
    }

    fn headers_of(action: &Action) -> Vec<(&str, &str)> {
        action.headers().collect()
    }

    #[test]
    fn login_wire_bytes() {
        let login = Login::new("admin", "hunter2").with_events(EventMask::Off);
        assert_eq!(
            wire(login, "a-1"),
            "Action: Login\r\nActionID: a-1\r\nUsername: admin\r\nSecret: hunter2\r\nEvents: off\r\n\r\n"
        );
        assert_eq!(
            wire(Login::new("u", "p"), "2"),
            "Action: Login\r\nActionID: 2\r\nUsername: u\r\nSecret: p\r\n\r\n"
        );
    }

    #[test]
    fn md5_login_and_challenge() {
        assert_eq!(
            md5_key("a", &Secret::new("bc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        // Challenge first, then secret.
        assert_eq!(
            md5_key("message ", &Secret::new("digest")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
        assert_ne!(
            md5_key("digest", &Secret::new("message ")),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
        let login = LoginMd5::new("admin", "ab", &Secret::new("c"));
        assert_eq!(login.key, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            wire(login.with_events(EventMask::On), "7"),
            "Action: Login\r\nActionID: 7\r\nAuthType: MD5\r\nUsername: admin\r\n\
             Key: 900150983cd24fb0d6963f7d28e17f72\r\nEvents: on\r\n\r\n"
        );
        assert_eq!(
            wire(Challenge, "c"),
            "Action: Challenge\r\nActionID: c\r\nAuthType: MD5\r\n\r\n"
        );
        assert_eq!(wire(Ping, "p"), "Action: Ping\r\nActionID: p\r\n\r\n");
        assert_eq!(wire(Logoff, "l"), "Action: Logoff\r\nActionID: l\r\n\r\n");
    }

    #[test]
    fn event_mask_rendering() {
        assert_eq!(EventMask::On.to_string(), "on");
        assert_eq!(EventMask::Off.to_string(), "off");
        let classes = EventMask::Classes(vec!["call".into(), "system".into()]);
        assert_eq!(classes.to_string(), "call,system");
        // Empty would mean "all events" to Asterisk.
        assert_eq!(EventMask::Classes(vec![]).to_string(), "off");
    }

    #[test]
    fn originate_wire_bytes_keep_variable_order() {
        let originate = Originate::extension("PJSIP/100", "200", "default", 1)
            .with_timeout(Duration::from_secs(20))
            .with_caller_id("Dialer <100>")
            .with_variable("CAMPAIGN", "42")
            .with_variable("LEAD", "a=b")
            .with_codecs(["ulaw", "alaw"]);
        assert_eq!(
            wire(originate, "o1"),
            "Action: Originate\r\nActionID: o1\r\nChannel: PJSIP/100\r\nExten: 200\r\n\
             Context: default\r\nPriority: 1\r\nTimeout: 20000\r\nCallerID: Dialer <100>\r\n\
             Async: true\r\nCodecs: ulaw,alaw\r\nVariable: CAMPAIGN=42\r\nVariable: LEAD=a=b\r\n\r\n"
        );
    }

    #[test]
    fn originate_application_and_options() {
        let action: Action = Originate::application("Local/1@c", "Playback", "hello-world")
            .with_account("acc")
            .with_early_media(false)
            .with_channel_id("id-1")
            .with_other_channel_id("id-2")
            .into();
        assert_eq!(
            headers_of(&action),
            [
                ("Channel", "Local/1@c"),
                ("Application", "Playback"),
                ("Data", "hello-world"),
                ("Account", "acc"),
                ("EarlyMedia", "false"),
                ("Async", "true"),
                ("ChannelId", "id-1"),
                ("OtherChannelId", "id-2"),
            ]
        );
        let action: Action = Originate::application("Local/1@c", "Answer", "").into();
        assert_eq!(action.get("Data"), None);
        let action: Action = Originate::extension("L/1", "s", "c", "start").into();
        assert_eq!(action.get("priority"), Some("start"));
    }

    #[test]
    fn originate_strategies_and_deadlines() {
        let action: Action = Originate::extension("PJSIP/1", "s", "c", 1).into();
        assert_eq!(
            action.strategy(),
            Strategy::AsyncOriginate {
                event_timeout: Duration::from_secs(40)
            }
        );
        assert_eq!(action.timeout(), None);
        assert_eq!(action.get("Timeout"), None);

        let action: Action = Originate::extension("PJSIP/1", "s", "c", 1)
            .with_timeout(Duration::from_millis(60_500))
            .into();
        assert_eq!(
            action.strategy(),
            Strategy::AsyncOriginate {
                event_timeout: Duration::from_millis(70_500)
            }
        );
        assert_eq!(action.get("Timeout"), Some("60500"));

        let action: Action = Originate::extension("PJSIP/1", "s", "c", 1)
            .with_async(false)
            .into();
        assert_eq!(action.strategy(), Strategy::SingleResponse);
        assert_eq!(action.timeout(), Some(Duration::from_secs(40)));
        assert_eq!(action.get("Async"), Some("false"));

        let action: Action = Originate::extension("PJSIP/1", "s", "c", 1)
            .with_timeout(Duration::MAX)
            .into();
        assert_eq!(action.get("Timeout"), Some("2147483647"));
    }

    #[test]
    fn command_wire_bytes_and_strategy() {
        let action: Action = Command::new("core show channels").into();
        assert_eq!(action.strategy(), Strategy::Command);
        assert_eq!(
            wire(action, "x"),
            "Action: Command\r\nActionID: x\r\nCommand: core show channels\r\n\r\n"
        );
    }

    #[test]
    fn dialer_actions_headers() {
        let a: Action = Hangup {
            channel: "PJSIP/1-01".into(),
            cause: Some(16),
        }
        .into();
        assert_eq!(headers_of(&a), [("Channel", "PJSIP/1-01"), ("Cause", "16")]);
        assert_eq!(headers_of(&Hangup::new("c").into()), [("Channel", "c")]);

        let a: Action = Redirect::new("A", "100", "ctx", 1)
            .with_extra("B", "200", "ctx2", "lbl")
            .into();
        assert_eq!(
            headers_of(&a),
            [
                ("Channel", "A"),
                ("Exten", "100"),
                ("Context", "ctx"),
                ("Priority", "1"),
                ("ExtraChannel", "B"),
                ("ExtraExten", "200"),
                ("ExtraContext", "ctx2"),
                ("ExtraPriority", "lbl"),
            ]
        );

        let a: Action = SetVar::on_channel("C", "V", "1").into();
        assert_eq!(
            headers_of(&a),
            [("Channel", "C"), ("Variable", "V"), ("Value", "1")]
        );
        let a: Action = SetVar::global("G", "").into();
        assert_eq!(headers_of(&a), [("Variable", "G"), ("Value", "")]);
        let a: Action = GetVar::on_channel("C", "V").into();
        assert_eq!(headers_of(&a), [("Channel", "C"), ("Variable", "V")]);
        let a: Action = GetVar::global("V").into();
        assert_eq!(headers_of(&a), [("Variable", "V")]);
        for a in [a, Hangup::new("c").into()] {
            assert_eq!(a.strategy(), Strategy::SingleResponse);
            assert_eq!(a.timeout(), None);
        }
    }

    #[test]
    fn list_actions_use_event_list() {
        let lists: Vec<Action> = vec![
            QueueStatus {
                queue: Some("q".into()),
                member: Some("PJSIP/1".into()),
            }
            .into(),
            Status {
                channel: None,
                variables: Some(vec!["A".into(), "B".into()]),
            }
            .into(),
            CoreShowChannels.into(),
            QueueSummary::default().into(),
            PJSIPShowEndpoint::new("100").into(),
            PJSIPShowEndpoints.into(),
        ];
        for a in &lists {
            assert_eq!(a.strategy(), Strategy::EventList, "{}", a.name());
        }
        assert_eq!(
            headers_of(&lists[0]),
            [("Queue", "q"), ("Member", "PJSIP/1")]
        );
        assert_eq!(headers_of(&lists[1]), [("Variables", "A,B")]);
        assert_eq!(lists[2].name(), "CoreShowChannels");
        assert_eq!(lists[3].headers().len(), 0);
        assert_eq!(headers_of(&lists[4]), [("Endpoint", "100")]);
        let empty: Action = Status {
            channel: Some("C".into()),
            variables: Some(vec![]),
        }
        .into();
        assert_eq!(headers_of(&empty), [("Channel", "C")]);
    }

    #[test]
    fn queue_member_actions() {
        let a: Action = QueueAdd {
            penalty: Some(2),
            paused: Some(true),
            member_name: Some("Alice".into()),
            state_interface: Some("PJSIP/100".into()),
            ..QueueAdd::new("sales", "Local/100@agents")
        }
        .into();
        assert_eq!(
            headers_of(&a),
            [
                ("Queue", "sales"),
                ("Interface", "Local/100@agents"),
                ("Penalty", "2"),
                ("Paused", "true"),
                ("MemberName", "Alice"),
                ("StateInterface", "PJSIP/100"),
            ]
        );
        let a: Action = QueueRemove::new("sales", "PJSIP/1").into();
        assert_eq!(
            headers_of(&a),
            [("Queue", "sales"), ("Interface", "PJSIP/1")]
        );
        let a: Action = QueuePause {
            queue: Some("sales".into()),
            reason: Some("lunch".into()),
            ..QueuePause::new("PJSIP/1", false)
        }
        .into();
        assert_eq!(
            headers_of(&a),
            [
                ("Queue", "sales"),
                ("Interface", "PJSIP/1"),
                ("Paused", "false"),
                ("Reason", "lunch"),
            ]
        );
        let a: Action = ExtensionState::new("100", "hints").into();
        assert_eq!(headers_of(&a), [("Exten", "100"), ("Context", "hints")]);
        assert_eq!(a.strategy(), Strategy::SingleResponse);
    }

    #[test]
    fn generic_action_builder_and_lookup() {
        let mut a = Action::new("UserEvent")
            .header("UserEvent", "Test")
            .header("Variable", "a=1")
            .with_strategy(Strategy::EventList)
            .with_timeout(Duration::from_secs(3));
        a.push_header("variable", "b=2");
        assert_eq!(a.name(), "UserEvent");
        assert_eq!(a.get("VARIABLE"), Some("a=1"));
        assert_eq!(a.get_all("Variable").collect::<Vec<_>>(), ["a=1", "b=2"]);
        assert_eq!(a.get("Missing"), None);
        assert_eq!(a.strategy(), Strategy::EventList);
        assert_eq!(a.timeout(), Some(Duration::from_secs(3)));
        assert_eq!(
            wire(a.clone(), "9"),
            "Action: UserEvent\r\nActionID: 9\r\nUserEvent: Test\r\nVariable: a=1\r\nvariable: b=2\r\n\r\n"
        );
        assert_eq!(a.clone(), a);
        assert_eq!(Action::new("Ping").strategy(), Strategy::SingleResponse);
        let typed = |a: Action| a.with_typed_strategy();
        assert_eq!(typed(Action::new("command")).strategy(), Strategy::Command);
        assert_eq!(
            typed(Action::new("QueueStatus")).strategy(),
            Strategy::EventList
        );
        assert_eq!(
            typed(Action::new("Ping")).strategy(),
            Strategy::SingleResponse
        );
        let originate = Action::new("Originate")
            .header("Async", "true")
            .header("Timeout", "5000");
        assert_eq!(
            typed(originate).strategy(),
            Strategy::AsyncOriginate {
                event_timeout: Duration::from_secs(15)
            }
        );
        let sync = typed(Action::new("Originate"));
        assert_eq!(sync.strategy(), Strategy::SingleResponse);
        assert_eq!(sync.timeout(), Some(Duration::from_secs(40)));
    }

    #[test]
    fn encode_appends_to_existing_buffer() {
        let mut out = b"prefix".to_vec();
        Action::new("Ping").encode("1", &mut out).unwrap();
        assert_eq!(out, b"prefixAction: Ping\r\nActionID: 1\r\n\r\n");
    }

    #[test]
    fn empty_action_name_is_refused() {
        assert_eq!(
            encode_err(&Action::new(""), "1"),
            EncodeError::EmptyActionName
        );
    }

    #[test]
    fn an_action_name_must_be_one_token() {
        for name in [" ", "Ping: x", "Pi ng", "Ping\t", "Pïng"] {
            assert_eq!(
                encode_err(&Action::new(name), "1"),
                EncodeError::InvalidActionName,
                "{name:?}"
            );
        }
        for name in [
            "Ping",
            "QueueStatus",
            "PJSIPShowEndpoints",
            "Dialplan.Extension-Add_x",
        ] {
            let mut out = Vec::new();
            Action::new(name).encode("1", &mut out).unwrap();
        }
    }

    #[test]
    fn header_injection_is_refused() {
        let injection = |key: &str| EncodeError::HeaderInjection { key: key.into() };
        assert_eq!(
            encode_err(&Action::new("Ping\r\nX: y"), "1"),
            injection("Action")
        );
        assert_eq!(encode_err(&Action::new("Ping\n"), "1"), injection("Action"));
        let a = Action::new("Ping").header("A", "1").header("Data", "x\ry");
        assert_eq!(encode_err(&a, "1"), injection("Data"));
        let a = Action::new("Ping").header("Data", "x\n");
        assert_eq!(encode_err(&a, "1"), injection("Data"));
        let a = Action::new("Ping").header("Foo\r\nSecret: s", "v");
        assert_eq!(encode_err(&a, "1"), injection("Foo"));
        // The secret value is not part of the message.
        let a: Action = Login::new("u", "top\r\nsecret").into();
        let err = encode_err(&a, "1");
        assert_eq!(err, injection("Secret"));
        assert!(!err.to_string().contains("top"), "{err}");
    }

    #[test]
    fn invalid_keys_are_refused() {
        let a = Action::new("Ping").header("A", "1").header("", "v");
        assert_eq!(encode_err(&a, "1"), EncodeError::InvalidKey { index: 1 });
        let a = Action::new("Ping").header("Secret: hunter2", "v");
        let err = encode_err(&a, "1");
        assert_eq!(err, EncodeError::InvalidKey { index: 0 });
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn reserved_headers_are_refused() {
        let a = Action::new("Ping").header("ActionID", "mine");
        assert_eq!(
            encode_err(&a, "1"),
            EncodeError::ReservedHeader {
                key: "ActionID".into()
            }
        );
        let a = Action::new("Ping").header("actionid", "mine");
        assert!(matches!(
            encode_err(&a, "1"),
            EncodeError::ReservedHeader { .. }
        ));
        let a = Action::new("Ping").header("ACTION", "Logoff");
        assert!(matches!(
            encode_err(&a, "1"),
            EncodeError::ReservedHeader { .. }
        ));
        // Keys merely starting with the reserved names are fine.
        let a = Action::new("Ping").header("ActionIDs", "x");
        assert!(a.encode("1", &mut Vec::new()).is_ok());
    }

    #[test]
    fn invalid_action_ids_are_refused() {
        let a = Action::new("Ping");
        let long = "x".repeat(MAX_ACTION_ID_LEN + 1);
        for (id, len) in [
            ("", 0),
            (long.as_str(), 65),
            ("a\r\nb", 4),
            ("tab\t", 4),
            ("é", 2),
            (" lead", 5),
            ("trail ", 6),
            ("nul\0", 4),
        ] {
            assert_eq!(
                encode_err(&a, id),
                EncodeError::InvalidActionId { len },
                "{id:?}"
            );
        }
        let max = "x".repeat(MAX_ACTION_ID_LEN);
        assert!(a.encode(&max, &mut Vec::new()).is_ok());
        assert!(a.encode("srv-1 #42 ~!", &mut Vec::new()).is_ok());
    }

    #[test]
    fn line_length_boundary() {
        // "Data: " + value + "\r\n" is exactly MAX_LINE_LEN bytes.
        let fits = "v".repeat(MAX_LINE_LEN - 8);
        let mut out = Vec::new();
        Action::new("Ping")
            .header("Data", fits.as_str())
            .encode("1", &mut out)
            .unwrap();
        let line = format!("Data: {fits}\r\n");
        assert_eq!(line.len(), 1024);
        assert!(out.windows(line.len()).any(|w| w == line.as_bytes()));

        let a = Action::new("Ping").header("Data", format!("{fits}v"));
        assert_eq!(
            encode_err(&a, "1"),
            EncodeError::LineTooLong {
                key: "Data".into(),
                len: 1025,
                limit: MAX_LINE_LEN
            }
        );

        // The action name line obeys the same limit: "Action: " + name + CRLF.
        let name = "N".repeat(MAX_LINE_LEN - 10);
        assert!(
            Action::new(name.as_str())
                .encode("1", &mut Vec::new())
                .is_ok()
        );
        assert_eq!(
            encode_err(&Action::new(format!("{name}N")), "1"),
            EncodeError::LineTooLong {
                key: "Action".into(),
                len: 1025,
                limit: MAX_LINE_LEN
            }
        );

        // A long key counts too.
        let key = "K".repeat(MAX_LINE_LEN - 3);
        let a = Action::new("Ping").header(key.as_str(), "");
        assert!(matches!(
            encode_err(&a, "1"),
            EncodeError::LineTooLong { len: 1025, .. }
        ));
    }

    #[test]
    fn header_count_boundary() {
        let with = |n: usize| {
            (0..n).fold(Action::new("UserEvent"), |a, i| {
                a.header(format!("H{i}"), "v")
            })
        };
        let mut out = Vec::new();
        with(MAX_HEADERS - 2).encode("1", &mut out).unwrap();
        let lines = out.split(|&b| b == b'\n').filter(|l| l.len() > 1).count();
        assert_eq!(lines, MAX_HEADERS);

        assert_eq!(
            encode_err(&with(MAX_HEADERS - 1), "1"),
            EncodeError::TooManyHeaders {
                count: 129,
                limit: MAX_HEADERS
            }
        );
    }

    #[test]
    fn debug_masks_secrets() {
        let login = Login::new("admin", "hunter2").with_events(EventMask::On);
        let typed = format!("{login:?}");
        assert!(
            !typed.contains("hunter2") && typed.contains(MASK),
            "{typed}"
        );

        let action: Action = login.into();
        let shown = format!("{action:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(&format!(r#""Secret": "{MASK}""#)), "{shown}");
        assert!(shown.contains(r#""Username": "admin""#), "{shown}");
        let pretty = format!("{action:#?}");
        assert!(!pretty.contains("hunter2"), "{pretty}");

        let md5 = LoginMd5::new("admin", "123", &Secret::new("hunter2"));
        let digest = md5.key.clone();
        assert!(!format!("{md5:?}").contains(&digest));
        assert!(!format!("{:?}", Action::from(md5)).contains(&digest));

        let generic = Action::new("Custom").header("password", "pw-value");
        assert!(!format!("{generic:?}").contains("pw-value"));
    }

    #[test]
    fn debug_masks_secret_variables() {
        let originate = Originate::extension("PJSIP/1", "s", "c", 1)
            .with_variable("PASSWORD", "pw-value")
            .with_variable("LEAD", "42");
        let typed = format!("{originate:?}");
        assert!(
            !typed.contains("pw-value") && typed.contains("42"),
            "{typed}"
        );
        let shown = format!("{:?}", Action::from(originate));
        assert!(
            !shown.contains("pw-value") && shown.contains("42"),
            "{shown}"
        );

        let setvar = SetVar::global("Secret", "pw-value");
        assert!(!format!("{setvar:?}").contains("pw-value"));
        assert!(!format!("{:?}", Action::from(setvar)).contains("pw-value"));
        let setvar = SetVar::global("LEAD", "42");
        assert!(format!("{setvar:?}").contains("42"));
    }
}
