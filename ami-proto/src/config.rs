//! Settings of one connection, with the seeds' defaults (usage guide §3, plan §6–16).

use std::time::Duration;

use crate::action::EventMask;
use crate::budget::MemoryBudget;
use crate::parser::Limits;
use crate::redact::Secret;

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
/// `Debug` masks the secret.
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
    /// Deadline for the transport to connect (`connect_timeout`, 10 s).
    pub connect_timeout: Duration,
    /// Deadline for the banner and for each login step (`read_timeout`, 30 s).
    pub read_timeout: Duration,
    /// Default deadline for an action's response (30 s); an action may set its own.
    pub action_timeout: Duration,
    /// Interval between heartbeat `Ping`s once logged in (`heartbeat_interval`, 15 s);
    /// zero disables heartbeats.
    pub heartbeat_interval: Duration,
    /// Deadline for a heartbeat's `Pong` (5 s); a miss makes the connection degraded.
    pub heartbeat_timeout: Duration,
    /// Consecutive missed heartbeats that close the connection (3).
    pub heartbeat_max_misses: u32,
    /// Deadline for `Goodbye` after `Logoff` on a graceful close (5 s).
    pub close_timeout: Duration,
    /// Actions awaiting completion at most (`max_pending_actions`, 5000).
    pub max_pending_actions: usize,
    /// Items one event list may collect (50,000); more fail the action.
    pub max_list_items: usize,
    /// Events queued for the application at most (`event_queue_capacity`, 10,000);
    /// when full the oldest is dropped and counted.
    pub event_queue_capacity: usize,
    /// Bytes queued for the socket at most (`write_buffer_limit`, 5 MiB).
    pub write_buffer_limit: usize,
    /// Event names dropped on arrival, before queueing (`blocked_events`).
    pub blocked_events: Vec<String>,
    /// Event names delivered ahead of the rest (e.g. `DialBegin`).
    pub priority_events: Vec<String>,
    /// At most one drop warning per this interval (`event_drop_log_interval_ms`, 1 s).
    pub event_drop_log_interval: Duration,
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
            budget: MemoryBudget::default(),
        }
    }
}
