//! Settings of one connection, with the seeds' defaults (usage guide §3, plan §6–16).

use std::sync::Arc;
use std::time::Duration;

use crate::action::{self, Action, EventMask};
use crate::budget::MemoryBudget;
use crate::correlation::ActionIds;
use crate::error::ConfigError;
use crate::parser::Limits;
use crate::redact::{Redactor, Secret};

/// How the connection logs in (PROTOCOL-NOTES 8–9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// `Secret` sent as is.
    #[default]
    Plain,
    /// `Challenge` first, then `Key` = md5(challenge + secret): the secret never
    /// crosses the wire.
    Md5,
}

/// Everything a [`Connection`](crate::connection::Connection) needs to know.
///
/// `Debug` masks the secret (and shows the redaction policy without any secret value).
///
/// **Durations.** Each deadline is the instant it starts from plus its duration; a
/// duration so long that the sum does not fit in an `Instant` (e.g. `Duration::MAX`)
/// means **no deadline**: that timer is simply not armed. So a `connect_timeout` or
/// `read_timeout` of `Duration::MAX` waits forever, an `action_timeout` of
/// `Duration::MAX` lets actions wait for their reply as long as the connection lives,
/// and a `heartbeat_interval` of `Duration::MAX` sends no heartbeat.
///
/// **Checking.** [`Config::validate`] refuses settings that cannot work (zero limits,
/// zero timeouts, limits the parser cannot honour, ...); drivers and the CLI call it.
/// A [`Connection`](crate::connection::Connection) built from a configuration that
/// fails it still never panics: it works with what it got (a zero capacity acts as
/// one, a zero timeout expires at once, limits above
/// [`MAX_LIMIT`](crate::parser::MAX_LIMIT) are lowered to it).
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the server in logs and ActionIDs (e.g. `node_1`).
    pub server_key: String,
    /// AMI user (`manager.conf` section).
    pub username: String,
    /// AMI secret.
    pub secret: Secret,
    /// How to log in.
    pub auth: AuthMethod,
    /// `Events:` of the login: which event classes the server sends.
    pub events: EventMask,
    /// Parser limits (`max_frame_size` 64 KiB, command output 1 MiB).
    pub limits: Limits,
    /// Deadline for the transport to connect (`connect_timeout`, 10 s; not zero).
    pub connect_timeout: Duration,
    /// Deadline for the banner and for each login step (`read_timeout`, 30 s; not
    /// zero).
    pub read_timeout: Duration,
    /// Default deadline for an action's response (30 s; not zero); an action may set
    /// its own ([`Action::with_timeout`](crate::action::Action::with_timeout)).
    pub action_timeout: Duration,
    /// Interval between heartbeat `Ping`s once logged in (`heartbeat_interval`, 15 s);
    /// zero disables heartbeats (and so does an interval with no deadline).
    pub heartbeat_interval: Duration,
    /// Deadline for a heartbeat's `Pong` (5 s; not zero while heartbeats are on); a
    /// miss makes the connection degraded.
    pub heartbeat_timeout: Duration,
    /// Consecutive missed heartbeats that close the connection (3; not zero while
    /// heartbeats are on).
    pub heartbeat_max_misses: u32,
    /// Deadline for `Goodbye` after `Logoff` on a graceful close (5 s; not zero).
    pub close_timeout: Duration,
    /// Actions awaiting completion at most (`max_pending_actions`, 5000; not zero).
    pub max_pending_actions: usize,
    /// Items one event list may collect (50,000; not zero); more fail the action.
    pub max_list_items: usize,
    /// Events queued for the application at most (`event_queue_capacity`, 10,000; not
    /// zero); when full the oldest is dropped and counted.
    pub event_queue_capacity: usize,
    /// Bytes queued for the socket at most (`write_buffer_limit`, 5 MiB; not zero).
    pub write_buffer_limit: usize,
    /// Event names dropped on arrival, before queueing (`blocked_events`).
    pub blocked_events: Vec<String>,
    /// Event names delivered ahead of the rest (e.g. `DialBegin`).
    pub priority_events: Vec<String>,
    /// At most one warning per this interval for each kind of loss, per connection:
    /// dropped events, discarded input, unmatched responses, late replies
    /// (`event_drop_log_interval_ms`, 1 s). Each line says how many it held back since
    /// the last one; every occurrence is counted in
    /// [`Stats`](crate::connection::Stats) either way.
    pub event_drop_log_interval: Duration,
    /// What the connection masks in its logs, errors and close reasons (`redaction_keys`,
    /// `redaction_key_patterns`, `redaction_value_patterns`; the built-in keys only by
    /// default). The connection adds [`secret`](Config::secret)'s value to it by itself
    /// (see [`redact`](crate::redact)). Shared, so cloning a `Config` is cheap.
    pub redactor: Arc<Redactor>,
    /// The memory budget this connection charges what it holds to (`memory_limit`,
    /// 128 MiB): see [`budget`](crate::budget) for what is charged and what happens at
    /// the limit. [`Config::new`] makes a fresh budget, a cap for this server alone
    /// (and its reconnects, which share the clone); drivers and clusters give every
    /// server's `Config` the same budget (`config.budget = shared.clone()`) to make it
    /// one cap for the whole client.
    pub budget: MemoryBudget,
}

impl Config {
    /// A configuration with the default settings.
    pub fn new(
        server_key: impl Into<String>,
        username: impl Into<String>,
        secret: impl Into<Secret>,
    ) -> Self {
        Config {
            server_key: server_key.into(),
            username: username.into(),
            secret: secret.into(),
            auth: AuthMethod::Plain,
            events: EventMask::On,
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            action_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_max_misses: 3,
            close_timeout: Duration::from_secs(5),
            max_pending_actions: 5000,
            max_list_items: 50_000,
            event_queue_capacity: 10_000,
            write_buffer_limit: 5 * 1024 * 1024,
            blocked_events: Vec::new(),
            priority_events: Vec::new(),
            event_drop_log_interval: Duration::from_millis(1000),
            redactor: Arc::new(Redactor::default()),
            budget: MemoryBudget::default(),
        }
    }

    /// Checks that these settings can work; the first problem found is returned.
    ///
    /// Refused: an empty `server_key`; a zero `connect_timeout`, `read_timeout`,
    /// `action_timeout`, `close_timeout`, `max_pending_actions`, `max_list_items`,
    /// `event_queue_capacity` or `write_buffer_limit`; while heartbeats are on, a zero
    /// `heartbeat_timeout` or `heartbeat_max_misses`; `limits` that fail
    /// [`Limits::validate`]; and a login that cannot be encoded (a CR or LF in the
    /// username, the secret or an event class). Long durations are fine: one whose
    /// deadline overflows means no deadline (see the type's documentation).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server_key.is_empty() {
            return Err(ConfigError::EmptyServerKey);
        }
        let heartbeats = !self.heartbeat_interval.is_zero();
        let timeouts = [
            ("connect_timeout", self.connect_timeout, true),
            ("read_timeout", self.read_timeout, true),
            ("action_timeout", self.action_timeout, true),
            ("heartbeat_timeout", self.heartbeat_timeout, heartbeats),
            ("close_timeout", self.close_timeout, true),
        ];
        if let Some((setting, ..)) = timeouts
            .into_iter()
            .find(|&(_, timeout, checked)| checked && timeout.is_zero())
        {
            return Err(ConfigError::ZeroTimeout { setting });
        }
        if heartbeats && self.heartbeat_max_misses == 0 {
            return Err(ConfigError::ZeroHeartbeatMaxMisses);
        }
        if self.max_pending_actions == 0 {
            return Err(ConfigError::ZeroMaxPendingActions);
        }
        if self.max_list_items == 0 {
            return Err(ConfigError::ZeroMaxListItems);
        }
        if self.event_queue_capacity == 0 {
            return Err(ConfigError::ZeroEventQueueCapacity);
        }
        if self.write_buffer_limit == 0 {
            return Err(ConfigError::ZeroWriteBufferLimit);
        }
        self.limits.validate()?;
        // The login as the connection will write it (for MD5 the key stands in for the
        // secret, which never crosses the wire), with the longest ActionID it can get.
        let login: Action = match self.auth {
            AuthMethod::Plain => action::Login::new(self.username.clone(), self.secret.clone())
                .with_events(self.events.clone())
                .into(),
            AuthMethod::Md5 => action::LoginMd5::new(self.username.clone(), "", &self.secret)
                .with_events(self.events.clone())
                .into(),
        };
        let (_, action_id) = ActionIds::new(&self.server_key, u32::MAX, u64::MAX).next_id();
        login
            .encode(&action_id, &mut Vec::new())
            .map_err(ConfigError::UnencodableLogin)
    }
}
