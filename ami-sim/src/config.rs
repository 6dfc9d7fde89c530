//! What a simulated Asterisk is like: banner, users, command format, delays, list
//! sizes, an optional event flood and faults present from the first byte.

use std::fmt;
use std::time::Duration;

use crate::faults::Fault;

/// The banner of Asterisk 22 (PROTOCOL-NOTES 1): one line, no blank line after it.
pub const DEFAULT_BANNER: &str = "Asterisk Call Manager/11.0.0";

/// How `Command` output is framed (PROTOCOL-NOTES 23–24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommandFormat {
    /// Asterisk 14 and later: `Response: Success`, `Message: Command output follows`,
    /// one `Output:` header per line.
    #[default]
    Modern,
    /// Asterisk 13 and older: `Response: Follows`, `Privilege: Command`, raw lines,
    /// `--END COMMAND--`.
    Legacy,
}

/// A steady stream of `UserEvent`s in virtual time, for load and drop tests.
///
/// Each event reads
/// `Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: <user_event>\r\nSeq: N\r\n\r\n`,
/// N counting from 0 (skipped events keep their numbers, so gaps show). The flood runs
/// while the session is logged in with the `user` event class on; it starts when the
/// login is answered (or when it is set on a logged-in session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flood {
    /// Events per second of (virtual) time; 0 sends nothing.
    pub events_per_second: u64,
    /// The `UserEvent:` value of every event (default `Flood`).
    pub user_event: String,
    /// Events one call of `handle_timeout` may emit at most (default 4096): after a
    /// long jump in time the older due events are skipped and counted, not sent in
    /// one unbounded burst.
    pub max_burst: u64,
    /// Stop after this many events (sent and skipped); `None` floods forever.
    pub total: Option<u64>,
}

impl Flood {
    /// A flood of `events_per_second` `UserEvent: Flood` events, without end.
    pub fn new(events_per_second: u64) -> Self {
        Flood {
            events_per_second,
            user_event: "Flood".to_owned(),
            max_burst: 4096,
            total: None,
        }
    }

    /// Sets the `UserEvent:` value.
    pub fn with_user_event(mut self, name: impl Into<String>) -> Self {
        self.user_event = name.into();
        self
    }

    /// Sets the most events one `handle_timeout` call may emit.
    pub fn with_max_burst(mut self, max_burst: u64) -> Self {
        self.max_burst = max_burst;
        self
    }

    /// Stops the flood after `total` events.
    pub fn with_total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }
}

/// How a simulated Asterisk behaves. `Default` is an Asterisk 22 with one user
/// `admin`/`amp111`, modern command output, no delays, 3-item lists, no flood and
/// no faults.
///
/// `Debug` never shows the users' secrets.
#[derive(Clone)]
pub struct SimConfig {
    /// The banner line, without its line end (default [`DEFAULT_BANNER`]).
    pub banner: String,
    /// Manager users as `(username, secret)`.
    pub users: Vec<(String, String)>,
    /// How `Command` output is framed.
    pub command_format: CommandFormat,
    /// Time from an Originate to its outcome: the `OriginateResponse` event (async)
    /// or the response (sync). Default 50 ms.
    pub originate_delay: Duration,
    /// Time every action takes to answer (default 0). Actions are answered one at a
    /// time, in order (PROTOCOL-NOTES 16), so a delay also delays those behind it.
    pub response_delay: Duration,
    /// Time before a failed login is answered (PROTOCOL-NOTES 11: 1 s).
    pub auth_failure_delay: Duration,
    /// A session not logged in after this long is closed (`authtimeout`, 30 s).
    pub auth_timeout: Duration,
    /// Items of each event-list action (default 3).
    pub list_size: usize,
    /// An event flood, if any.
    pub flood: Option<Flood>,
    /// Faults applied to every session from the start, in order (after the banner;
    /// [`Fault::Stall`] here means no banner at all).
    pub faults: Vec<Fault>,
    /// Bytes queued for the client above which flood events are skipped (and counted)
    /// rather than queued, so that a client that does not read cannot make the
    /// simulator grow without bound (default 4 MiB).
    pub max_transmit_buffer: usize,
    /// Unix time (since the epoch) at the start of each session, for `Timestamp` and
    /// Uniqueid values; the TCP server uses the real clock instead.
    pub unix_time: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            banner: DEFAULT_BANNER.to_owned(),
            users: vec![("admin".to_owned(), "amp111".to_owned())],
            command_format: CommandFormat::Modern,
            originate_delay: Duration::from_millis(50),
            response_delay: Duration::ZERO,
            auth_failure_delay: Duration::from_secs(1),
            auth_timeout: Duration::from_secs(30),
            list_size: 3,
            flood: None,
            faults: Vec::new(),
            max_transmit_buffer: 4 * 1024 * 1024,
            unix_time: Duration::from_secs(1_700_000_000),
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|(name, _)| (name.as_str(), "********"))
            .collect();
        f.debug_struct("SimConfig")
            .field("banner", &self.banner)
            .field("users", &users)
            .field("command_format", &self.command_format)
            .field("originate_delay", &self.originate_delay)
            .field("response_delay", &self.response_delay)
            .field("auth_failure_delay", &self.auth_failure_delay)
            .field("auth_timeout", &self.auth_timeout)
            .field("list_size", &self.list_size)
            .field("flood", &self.flood)
            .field("faults", &self.faults)
            .field("max_transmit_buffer", &self.max_transmit_buffer)
            .field("unix_time", &self.unix_time)
            .finish()
    }
}

impl SimConfig {
    /// The default configuration (see [`SimConfig`]).
    pub fn new() -> Self {
        SimConfig::default()
    }

    /// Sets the banner line (without its line end).
    pub fn with_banner(mut self, banner: impl Into<String>) -> Self {
        self.banner = banner.into();
        self
    }

    /// Adds a user.
    pub fn with_user(mut self, username: impl Into<String>, secret: impl Into<String>) -> Self {
        self.users.push((username.into(), secret.into()));
        self
    }

    /// Replaces the users.
    pub fn with_users(mut self, users: Vec<(String, String)>) -> Self {
        self.users = users;
        self
    }

    /// Sets the `Command` output format.
    pub fn with_command_format(mut self, format: CommandFormat) -> Self {
        self.command_format = format;
        self
    }

    /// Sets the Originate delay.
    pub fn with_originate_delay(mut self, delay: Duration) -> Self {
        self.originate_delay = delay;
        self
    }

    /// Sets the delay of every answer.
    pub fn with_response_delay(mut self, delay: Duration) -> Self {
        self.response_delay = delay;
        self
    }

    /// Sets the delay before a failed login is answered.
    pub fn with_auth_failure_delay(mut self, delay: Duration) -> Self {
        self.auth_failure_delay = delay;
        self
    }

    /// Sets how long a session may stay unauthenticated.
    pub fn with_auth_timeout(mut self, timeout: Duration) -> Self {
        self.auth_timeout = timeout;
        self
    }

    /// Sets the number of items of event-list actions.
    pub fn with_list_size(mut self, items: usize) -> Self {
        self.list_size = items;
        self
    }

    /// Sets (or removes) the event flood.
    pub fn with_flood(mut self, flood: Option<Flood>) -> Self {
        self.flood = flood;
        self
    }

    /// Adds a fault present from the start of every session.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Sets the transmit-buffer size above which flood events are skipped.
    pub fn with_max_transmit_buffer(mut self, bytes: usize) -> Self {
        self.max_transmit_buffer = bytes;
        self
    }

    /// Sets the Unix time at the start of each session.
    pub fn with_unix_time(mut self, since_epoch: Duration) -> Self {
        self.unix_time = since_epoch;
        self
    }

    /// The secret of `username`, if the user exists.
    pub(crate) fn secret_of(&self, username: &str) -> Option<&str> {
        self.users
            .iter()
            .find(|(name, _)| name == username)
            .map(|(_, secret)| secret.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::SimConfig;

    #[test]
    fn debug_never_shows_secrets() {
        let config = SimConfig::new().with_user("ops", "s3cr3t-value");
        let text = format!("{config:?}");
        assert!(text.contains("admin") && text.contains("ops"), "{text}");
        assert!(!text.contains("amp111"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
    }

    #[test]
    fn defaults() {
        let config = SimConfig::default();
        assert_eq!(config.banner, "Asterisk Call Manager/11.0.0");
        assert_eq!(config.secret_of("admin"), Some("amp111"));
        assert_eq!(config.secret_of("nobody"), None);
        assert_eq!(config.list_size, 3);
    }
}
