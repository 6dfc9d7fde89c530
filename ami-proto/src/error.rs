//! Typed errors: why a setting cannot work, why a send was refused, why an action
//! failed, why a connection closed.
//!
//! Messages never contain secrets: they name keys, limits and states, not values. Text
//! a server sent (an error response, a banner) is masked by the connection that returns
//! it, with its own redaction policy and secret ([`redact`](crate::redact)).

use std::time::Duration;

use crate::action::EncodeError;
use crate::connection::State;
use crate::message::Message;
use crate::parser::ParseError;

/// Why [`Config::validate`](crate::config::Config::validate) (or
/// [`Limits::validate`](crate::parser::Limits::validate)) refused a setting that cannot
/// work. [`setting`](ConfigError::setting) names the [`Config`](crate::config::Config)
/// field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `server_key` is empty: it names the server in logs and ActionIDs.
    #[error("server_key is empty")]
    EmptyServerKey,
    /// A timeout that must be positive is zero: every wait would fail at once.
    /// `setting` is `connect_timeout`, `read_timeout`, `action_timeout`,
    /// `heartbeat_timeout` (checked only while heartbeats are on) or `close_timeout`.
    #[error("{setting} is zero: every wait on it would fail at once")]
    ZeroTimeout {
        /// The field concerned.
        setting: &'static str,
    },
    /// `max_pending_actions` is zero: every action would be refused.
    #[error("max_pending_actions is zero: every action would be refused")]
    ZeroMaxPendingActions,
    /// `max_list_items` is zero: every event list with an item would fail.
    #[error("max_list_items is zero: every non-empty event list would fail")]
    ZeroMaxListItems,
    /// `event_queue_capacity` is zero: no event could be queued.
    #[error("event_queue_capacity is zero: no event could be queued")]
    ZeroEventQueueCapacity,
    /// `write_buffer_limit` is zero: no action could be written.
    #[error("write_buffer_limit is zero: no action could be written")]
    ZeroWriteBufferLimit,
    /// `heartbeat_max_misses` is zero while heartbeats are on (`heartbeat_interval`
    /// not zero): the first late `Pong` would close the connection.
    #[error("heartbeat_max_misses is zero while heartbeats are on")]
    ZeroHeartbeatMaxMisses,
    /// `limits.max_frame_size` is zero: every message would be discarded.
    #[error("limits.max_frame_size is zero: every message would be discarded")]
    ZeroMaxFrameSize,
    /// `limits.max_frame_size` is above [`MAX_LIMIT`](crate::parser::MAX_LIMIT): the
    /// parser records offsets in a message as `u32`s.
    #[error(
        "limits.max_frame_size is {size} bytes, above the parser's limit of {} bytes",
        crate::parser::MAX_LIMIT
    )]
    MaxFrameSizeTooLarge {
        /// The configured size.
        size: usize,
    },
    /// `limits.max_command_output` is above [`MAX_LIMIT`](crate::parser::MAX_LIMIT).
    #[error(
        "limits.max_command_output is {size} bytes, above the parser's limit of {} bytes",
        crate::parser::MAX_LIMIT
    )]
    MaxCommandOutputTooLarge {
        /// The configured size.
        size: usize,
    },
    /// `limits.max_command_output` is below `limits.max_frame_size`: a command
    /// response is an ordinary message until its first output line, so its limit may
    /// only be the larger.
    #[error(
        "limits.max_command_output ({max_command_output} bytes) is below limits.max_frame_size ({max_frame_size} bytes)"
    )]
    MaxCommandOutputBelowFrameSize {
        /// The configured command output limit.
        max_command_output: usize,
        /// The configured frame limit.
        max_frame_size: usize,
    },
    /// The login cannot be encoded (a CR or LF in `username` or `secret`, an event
    /// class with one, or a line over the encoder's limit): the connection could
    /// never log in.
    #[error("the login cannot be encoded: {0}")]
    UnencodableLogin(EncodeError),
}

impl ConfigError {
    /// The [`Config`](crate::config::Config) field the error is about, e.g.
    /// `connect_timeout` or `limits.max_frame_size` (for an unencodable login
    /// `username`, `secret` or `events`, after the header the encoder refused).
    pub fn setting(&self) -> &'static str {
        match self {
            ConfigError::EmptyServerKey => "server_key",
            ConfigError::ZeroTimeout { setting } => setting,
            ConfigError::ZeroMaxPendingActions => "max_pending_actions",
            ConfigError::ZeroMaxListItems => "max_list_items",
            ConfigError::ZeroEventQueueCapacity => "event_queue_capacity",
            ConfigError::ZeroWriteBufferLimit => "write_buffer_limit",
            ConfigError::ZeroHeartbeatMaxMisses => "heartbeat_max_misses",
            ConfigError::ZeroMaxFrameSize | ConfigError::MaxFrameSizeTooLarge { .. } => {
                "limits.max_frame_size"
            }
            ConfigError::MaxCommandOutputTooLarge { .. }
            | ConfigError::MaxCommandOutputBelowFrameSize { .. } => "limits.max_command_output",
            ConfigError::UnencodableLogin(error) => match error {
                EncodeError::HeaderInjection { key } | EncodeError::LineTooLong { key, .. }
                    if key.eq_ignore_ascii_case("Secret") =>
                {
                    "secret"
                }
                EncodeError::HeaderInjection { key } | EncodeError::LineTooLong { key, .. }
                    if key.eq_ignore_ascii_case("Events") =>
                {
                    "events"
                }
                _ => "username",
            },
        }
    }
}

/// Why [`Connection::send`](crate::connection::Connection::send) refused an action.
/// A refused action was never written and never completes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// An Originate over the server's call limits (`max_calls_per_second`,
    /// `max_concurrent_calls`) found its wait queue full: `waiting` Originates already
    /// wait for their turn.
    #[error("call limits reached and {waiting} Originates already wait (paced)")]
    Paced {
        /// Originates waiting when this one was refused (the queue's bound).
        waiting: usize,
    },
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
    /// Waiting, unsent, for the server's call limits to let an Originate go.
    Paced,
}

/// Why an action did not complete successfully. Every action completes exactly once:
/// with its reply or with one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The action waited unsent (an Originate held by the call limits) and the server
    /// refused it when its turn came; nothing was written.
    #[error("not sent when its turn came: {0}")]
    NotSent(SendError),
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
#[non_exhaustive]
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
    /// Login (or its MD5 challenge) was not answered in time. Only a deadline that ran
    /// out gives this reason.
    #[error("login not answered in time")]
    LoginTimeout,
    /// The answer to the login (or to its MD5 challenge) came but could not be used:
    /// the parser discarded it (`ActionError::Discarded`, e.g. a reply larger than the
    /// frame limit) or it was an event list past `max_list_items`
    /// (`ActionError::ListTooLong`). Neither a refusal nor a timeout.
    #[error("login failed: {error}")]
    LoginFailed {
        /// How the login action failed.
        error: Box<ActionError>,
    },
    /// An action the connection writes by itself could not be encoded, so the session
    /// cannot go on; nothing of it was written. In practice only the `Login`: a CR or
    /// LF (or an over-long line) in the username, the secret or an event class, which
    /// [`Config::validate`](crate::config::Config::validate) reports beforehand.
    #[error("cannot encode {action}: {error}")]
    Unencodable {
        /// The action (`Login`).
        action: String,
        /// Why the encoder refused it (names the header, never its value).
        error: EncodeError,
    },
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
