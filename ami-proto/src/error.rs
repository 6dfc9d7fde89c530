//! Typed errors: why a send was refused, why an action failed, why a connection closed.
//!
//! Messages never contain secrets: they name keys, limits and states, not values.

use std::time::Duration;

use crate::action::EncodeError;
use crate::connection::State;
use crate::message::Message;
use crate::parser::ParseError;

/// Why [`Connection::send`](crate::connection::Connection::send) refused an action.
/// A refused action was never written and never completes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection is not logged in (or is closing): actions are refused at once
    /// rather than queued (usage guide §6).
    #[error("connection is not ready for actions (state {state:?})")]
    NotReady {
        /// The state the connection was in.
        state: State,
    },
    /// `max_pending_actions` actions already await completion.
    #[error("too many pending actions (limit {limit})")]
    TooManyPending {
        /// The configured limit.
        limit: usize,
    },
    /// The write buffer would grow past `write_buffer_limit`: the peer is not reading
    /// fast enough. Nothing already queued is lost; retry later or shed load.
    #[error("write buffer full ({buffered} bytes queued, limit {limit})")]
    Backpressure {
        /// Bytes queued when the action was refused.
        buffered: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The memory budget ([`Config::budget`](crate::Config::budget)) cannot take the
    /// encoded action and its pending entry: the client holds as much as it may (events
    /// not yet dropped, completions not yet dropped, other servers' buffers). Nothing
    /// was queued; retry once the application has let go of events or completions.
    #[error("memory budget exhausted ({used} of {limit} bytes in use)")]
    MemoryLimit {
        /// Bytes in use when the action was refused.
        used: usize,
        /// The budget's limit.
        limit: usize,
    },
    /// The action cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Which part of an action's exchange a deadline ran out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the response.
    Response,
    /// Waiting for the rest of an event list (after `EventList: start`).
    EventList,
    /// Waiting for the `OriginateResponse` event of an async Originate.
    OriginateEvent,
}

/// Why an action did not complete successfully. Every action completes exactly once:
/// with its reply or with one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Asterisk answered `Response: Error`.
    #[error("Asterisk refused the action: {message}")]
    Rejected {
        /// The `Message:` of the error response (empty when absent).
        message: String,
        /// The whole error response.
        response: Box<Message>,
    },
    /// The deadline ran out.
    #[error("no answer within {timeout:?} while waiting for the {stage:?} stage")]
    Timeout {
        /// What the action was waiting for.
        stage: Stage,
        /// The deadline that ran out.
        timeout: Duration,
    },
    /// The connection closed before the action completed.
    #[error("connection closed before the action completed: {reason}")]
    ConnectionClosed {
        /// Why the connection closed.
        reason: CloseReason,
    },
    /// The event list had more items than `max_list_items`; the extra items were
    /// counted and dropped, and the action fails when the list ends.
    #[error("event list longer than {limit} items ({received} received)")]
    ListTooLong {
        /// The configured cap.
        limit: usize,
        /// Items received in all.
        received: u64,
    },
    /// The reply was discarded by the parser (e.g. command output over its limit).
    #[error("reply discarded: {0}")]
    Discarded(ParseError),
    /// The memory budget could not take a message of the reply (the response, a list
    /// item, the list end, the `OriginateResponse`): the action failed at once, with
    /// nothing of its reply kept; the rest of a list is counted as late replies.
    #[error("memory budget exhausted while collecting the reply ({used} of {limit} bytes in use)")]
    MemoryLimit {
        /// Bytes in use when the message was refused.
        used: usize,
        /// The budget's limit.
        limit: usize,
    },
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// Closed by [`Connection::close`](crate::connection::Connection::close): `Logoff`
    /// answered by `Goodbye` or end of stream.
    #[error("closed by the client")]
    Graceful,
    /// Closed by the client, but the server never acknowledged the `Logoff` in time.
    #[error("logoff not acknowledged in time")]
    LogoffTimeout,
    /// The TCP (or TLS) connection was not established in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// No banner arrived in time after connecting.
    #[error("no banner in time")]
    BannerTimeout,
    /// The peer is not an Asterisk manager interface.
    #[error("peer is not an AMI server (first line: {first_line:?})")]
    NotAmi {
        /// What the peer sent first (at most 80 characters).
        first_line: String,
    },
    /// Asterisk refused the credentials (PROTOCOL-NOTES 11: it then disconnects).
    #[error("authentication failed: {message}")]
    AuthenticationFailed {
        /// The `Message:` of the error response.
        message: String,
    },
    /// Login (or its MD5 challenge) was not answered in time.
    #[error("login not answered in time")]
    LoginTimeout,
    /// Too many heartbeat `Ping`s in a row went unanswered.
    #[error("{misses} heartbeats in a row went unanswered")]
    HeartbeatTimeout {
        /// Consecutive misses.
        misses: u32,
    },
    /// The peer closed the connection (end of stream).
    #[error("connection closed by the peer")]
    PeerClosed,
    /// The transport failed (reported by the driver).
    #[error("transport error: {0}")]
    Transport(String),
}
