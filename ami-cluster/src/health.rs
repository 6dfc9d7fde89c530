//! Per-server health: the connection states of plan §15 plus circuit-open.
//!
//! A server's [`Health`] is derived from two inputs: the state of its
//! `ami_proto::Connection` (if one exists) and its [`RetryStatus`] (whether a reconnect
//! is scheduled and whether its circuit is open). Only [`Health::Healthy`] is routable.

use ami_proto::State;

/// The reconnect side of a server's status, as reported by
/// [`crate::reconnect::Reconnector::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryStatus {
    /// No retry is scheduled (never opened, or connected, or stopped on purpose).
    Idle,
    /// A failed or lost connection will be retried after a backoff delay.
    BackingOff,
    /// The circuit is open: no attempt before its cooldown ends.
    CircuitOpen,
}

/// The health of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// No connection and none scheduled.
    Disconnected,
    /// The transport is connecting or waiting for the banner.
    Connecting,
    /// Logging in.
    Authenticating,
    /// Logged in and heartbeats answered (plan: CONNECTED_HEALTHY).
    Healthy,
    /// Logged in, but the last heartbeat went unanswered (plan: CONNECTED_DEGRADED).
    Degraded,
    /// Not connected; a reconnect is scheduled after a backoff delay.
    Reconnecting,
    /// Not connected; the circuit breaker is open after repeated failures.
    CircuitOpen,
}

impl Health {
    /// Derives the health from the connection's state (`None` when there is no
    /// connection) and the retry status. An open circuit wins over everything; a live
    /// connection's own state comes next; a closed or absent connection reads as
    /// `Reconnecting` when a retry is scheduled and `Disconnected` otherwise.
    pub fn from_parts(connection: Option<State>, retry: RetryStatus) -> Health {
        if retry == RetryStatus::CircuitOpen {
            return Health::CircuitOpen;
        }
        match connection {
            Some(State::Connecting | State::AwaitingBanner) => Health::Connecting,
            Some(State::Authenticating) => Health::Authenticating,
            Some(State::Healthy) => Health::Healthy,
            Some(State::Degraded) => Health::Degraded,
            Some(State::Closing | State::Closed) | None => match retry {
                RetryStatus::BackingOff => Health::Reconnecting,
                RetryStatus::Idle | RetryStatus::CircuitOpen => Health::Disconnected,
            },
        }
    }

    /// Whether actions may be routed to this server: only when `Healthy`.
    pub fn is_routable(self) -> bool {
        self == Health::Healthy
    }

    /// The value of the `ami_connection_status` gauge: 1 when healthy, 0 otherwise.
    pub fn connection_status(self) -> u8 {
        u8::from(self.is_routable())
    }

    /// A stable lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Disconnected => "disconnected",
            Health::Connecting => "connecting",
            Health::Authenticating => "authenticating",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Reconnecting => "reconnecting",
            Health::CircuitOpen => "circuit_open",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [State; 7] = [
        State::Connecting,
        State::AwaitingBanner,
        State::Authenticating,
        State::Healthy,
        State::Degraded,
        State::Closing,
        State::Closed,
    ];

    #[test]
    fn live_connection_states_map_through() {
        for retry in [RetryStatus::Idle, RetryStatus::BackingOff] {
            let h = |s| Health::from_parts(Some(s), retry);
            assert_eq!(h(State::Connecting), Health::Connecting);
            assert_eq!(h(State::AwaitingBanner), Health::Connecting);
            assert_eq!(h(State::Authenticating), Health::Authenticating);
            assert_eq!(h(State::Healthy), Health::Healthy);
            assert_eq!(h(State::Degraded), Health::Degraded);
        }
    }

    #[test]
    fn closed_or_absent_connection_depends_on_retry() {
        for conn in [None, Some(State::Closed), Some(State::Closing)] {
            assert_eq!(
                Health::from_parts(conn, RetryStatus::Idle),
                Health::Disconnected
            );
            assert_eq!(
                Health::from_parts(conn, RetryStatus::BackingOff),
                Health::Reconnecting
            );
        }
    }

    #[test]
    fn circuit_open_wins() {
        for s in ALL_STATES {
            assert_eq!(
                Health::from_parts(Some(s), RetryStatus::CircuitOpen),
                Health::CircuitOpen
            );
        }
        assert_eq!(
            Health::from_parts(None, RetryStatus::CircuitOpen),
            Health::CircuitOpen
        );
    }

    #[test]
    fn only_healthy_is_routable() {
        let all = [
            Health::Disconnected,
            Health::Connecting,
            Health::Authenticating,
            Health::Healthy,
            Health::Degraded,
            Health::Reconnecting,
            Health::CircuitOpen,
        ];
        let routable: Vec<Health> = all.into_iter().filter(|h| h.is_routable()).collect();
        assert_eq!(routable, [Health::Healthy]);
        assert_eq!(Health::Healthy.connection_status(), 1);
        assert_eq!(Health::Degraded.connection_status(), 0);
        assert_eq!(Health::CircuitOpen.to_string(), "circuit_open");
    }
}
