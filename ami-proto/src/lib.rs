#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-proto: the sans-IO core of an Asterisk Manager Interface client
//!
//! This crate owns the AMI protocol and nothing else: it takes **bytes and time in**
//! and gives **messages, completions, bytes to send and deadlines out**. It never reads
//! a clock (every method that needs the time takes `now: Instant`), never touches a
//! socket, never blocks, and every buffer and queue in it has a configured bound. The
//! drivers (`ami-mio`, `ami-tokio`) and your own reactor move bytes and time in and
//! outputs out.
//!
//! ## What is where
//! - [`parser`]: incremental framing of the byte stream into [`message::Message`]s,
//!   with size limits and desync recovery.
//! - [`action`]: the generic [`action::Action`], the typed actions of the roadmap, and
//!   the encoder that refuses header injection and over-long input.
//! - [`correlation`]: ActionIDs, the bounded registry of pending actions, and the
//!   completion strategies (single response, event list, command output, async
//!   Originate).
//! - [`events`]: the bounded drop-oldest event queue with blocked and priority names.
//! - [`typed`]: typed, zero-copy views of the Asterisk 22 events ([`typed::TypedEvent`]).
//! - [`connection`]: the state machine of one session that ties them together.
//! - [`budget`]: the memory budget shared by connections, and what each one charges.
//! - [`config`], [`error`], [`redact`]: settings, typed errors, secret masking.
//! - [`rng`]: the seedable generator every crate of the workspace draws from.
//!
//! ## The run loop
//! After every input or mutator: write out what [`Connection::poll_transmit`] holds,
//! drain [`Connection::poll`], and wake up at [`Connection::poll_timeout`] to call
//! [`Connection::handle_timeout`]. Here a scripted server stands in for the socket:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ami_proto::{action, Config, Connection, Output, State};
//!
//! let mut now = Instant::now();
//! let mut conn = Connection::new(Config::new("pbx1", "admin", "s3cret"), 1, 1, now);
//! conn.handle_connected(now);
//! conn.handle_data(now, b"Asterisk Call Manager/11.0.0\r\n");
//!
//! // The connection logs in by itself: the Login action is waiting to be written.
//! let login = String::from_utf8(conn.poll_transmit().to_vec()).unwrap();
//! assert!(login.starts_with("Action: Login\r\n"));
//! let login_id = login.lines().find_map(|l| l.strip_prefix("ActionID: ")).unwrap().to_owned();
//! conn.advance_transmit(login.len());
//! let reply = format!("Response: Success\r\nActionID: {login_id}\r\nMessage: Authentication accepted\r\n\r\n");
//! conn.handle_data(now, reply.as_bytes());
//! assert_eq!(conn.state(), State::Healthy);
//!
//! // Send an action; its completion comes out of `poll` exactly once.
//! let ping_id = conn.send(now, action::Ping).unwrap();
//! conn.advance_transmit(conn.poll_transmit().len());
//! let pong = format!("Response: Success\r\nActionID: {ping_id}\r\nPing: Pong\r\n\r\n");
//! conn.handle_data(now, pong.as_bytes());
//! conn.handle_data(now, b"Event: Hangup\r\nChannel: PJSIP/100-00000001\r\n\r\n");
//!
//! while let Some(output) = conn.poll() {
//!     match output {
//!         Output::Completed(done) => assert_eq!(done.result.unwrap().response.get("Ping"), Some("Pong")),
//!         Output::Event(event) => assert_eq!(event.name(), "Hangup"),
//!         Output::StateChanged { .. } => {}
//!         other => panic!("unexpected {other:?}"),
//!     }
//! }
//!
//! // Timers: the next deadline is the heartbeat, 15 s after login.
//! let deadline = conn.poll_timeout().unwrap();
//! assert_eq!(deadline, now + Duration::from_secs(15));
//! now = deadline;
//! conn.handle_timeout(now);
//! assert!(conn.poll_transmit().starts_with(b"Action: Ping\r\n"));
//! ```
//!
//! ## Rules
//! - Bad input never panics and never closes the connection by itself: the parser
//!   discards it up to the next blank line, counts it and reports it
//!   ([`Output::Discarded`]).
//! - Every action sent with [`Connection::send`] completes exactly once
//!   ([`Output::Completed`]): with its reply, an error response, a timeout, or the
//!   connection's close. A message with an ActionID this connection did not issue
//!   never completes anything.
//! - Nothing is lost silently: dropped events, discarded input, refused actions and
//!   unmatched responses are all counted in [`Stats`].
//! - Secrets are masked in every `Debug`, log field and error. Each connection masks
//!   with its own policy ([`Config::redactor`]: `Secret`, `Password`, `Key` and the
//!   configured keys or patterns) plus its own secret value, wherever that appears,
//!   server text included; `Debug` of actions and messages masks the built-in keys.
//!   There is no process-wide policy; see [`redact`].
//! - Memory is capped: what the client holds (queued and delivered events, collected
//!   replies, buffers) is charged to a [`MemoryBudget`] that connections may share; at
//!   the limit the oldest events are dropped and counted, and new actions are refused
//!   ([`SendError::MemoryLimit`]). See [`budget`].
//! - Logging goes through `tracing` with the fields `server_key`, `action_id` and
//!   `queue_depth`; without a subscriber it is silent. Frames are logged only at trace
//!   level, redacted. Warnings about lost input (dropped events, discarded input,
//!   unmatched responses, late replies) are rate-limited: at most one line per
//!   `Config::event_drop_log_interval` for each kind, per connection, each saying how
//!   many it held back.

pub mod action;
pub mod budget;
pub mod config;
pub mod connection;
pub mod correlation;
pub mod error;
pub mod events;
mod line_search;
pub mod message;
pub mod parser;
pub mod redact;
pub mod rng;
mod timers;
pub mod typed;

pub use action::{Action, Strategy};
pub use budget::{BudgetExceeded, Charge, MemoryBudget};
pub use config::{AuthMethod, Config};
pub use connection::{Connection, Output, State, Stats};
pub use correlation::{Completion, Reply};
pub use error::{ActionError, CloseReason, ConfigError, SendError, Stage};
pub use events::{Event, Filter};
pub use message::{Message, MessageKind};
pub use parser::{Discard, Limits, MAX_LIMIT, ParseError, Parsed, Parser};
pub use redact::Secret;
