#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-sim: a fake Asterisk manager interface for tests
//!
//! A simulated Asterisk that speaks AMI as `PROTOCOL-NOTES.md` describes (banner,
//! plain and MD5 login, `Permission denied` before login, responses in request order
//! with the ActionID echoed, event lists, both `Command` formats, async and sync
//! Originate, broadcasts, `Goodbye`) and injects faults on demand. It exists to test
//! the client: the sans-IO core, the drivers, and demos.
//!
//! ## Two layers
//! - **Sans-IO, virtual time**: [`SimSession`] is one accepted session on the server
//!   side. Bytes from the client go in with [`SimSession::handle_input`], time with
//!   [`SimSession::handle_timeout`]; bytes for the client come out of
//!   [`SimSession::poll_transmit`], the next deadline out of
//!   [`SimSession::poll_timeout`]. It never reads a clock, so a test can pump bytes
//!   between an `ami_proto::Connection` and a `SimSession` and jump from deadline to
//!   deadline: "no answer for 90 s" runs in microseconds. [`SimServer`] is one node:
//!   it accepts sessions (or refuses them) and sums their counters.
//! - **Loopback TCP, real time**: [`TcpSim`] runs sessions behind a real listening
//!   socket on `127.0.0.1`, one background thread with a `mio::Poll`, for driver
//!   tests and the `ami demo` command; other threads inject faults, start floods,
//!   kill and restart the node.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ami_sim::{SimConfig, SimSession};
//!
//! # #[allow(clippy::disallowed_methods)]
//! let now = Instant::now();
//! let mut session = SimSession::new(&SimConfig::default(), now, 7);
//! assert_eq!(session.poll_transmit(), b"Asterisk Call Manager/11.0.0\r\n");
//! session.advance_transmit(30);
//!
//! session.handle_input(now, b"Action: Login\r\nActionID: 1\r\nUsername: admin\r\nSecret: amp111\r\n\r\n");
//! let reply = String::from_utf8(session.poll_transmit().to_vec()).unwrap();
//! assert!(reply.starts_with("Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"));
//! assert!(reply.contains("Event: FullyBooted\r\n"));
//! session.advance_transmit(reply.len());
//!
//! // A ping answered after a 2 s delay: nothing now, the Pong at the deadline.
//! session.inject(now, ami_sim::Fault::DelayResponses(Duration::from_secs(2)));
//! session.handle_input(now, b"Action: Ping\r\nActionID: 2\r\n\r\n");
//! assert!(session.poll_transmit().is_empty());
//! let later = session.poll_timeout().unwrap();
//! assert_eq!(later, now + Duration::from_secs(2));
//! session.handle_timeout(later);
//! assert!(session.poll_transmit().starts_with(b"Response: Success\r\nActionID: 2\r\nPing: Pong\r\n"));
//! ```
//!
//! ## What it answers
//! `Login` (plain, and MD5 after `Challenge`; the `Events` header decides which event
//! classes flow), `Logoff`, `Ping`, `Command` (`core show version`,
//! `core show uptime`, `core show help`, and `sim output N` for N numbered lines; in
//! the [`CommandFormat`] configured), the event lists `CoreShowChannels`, `Status`,
//! `QueueStatus`, `QueueSummary` ([`SimConfig::list_size`] items each), `Originate`
//! (async: `OriginateResponse` after [`SimConfig::originate_delay`], failing with
//! reason 5, 8 or 3 when the channel names `busy`, `congestion` or `noanswer`),
//! `UserEvent`, `Events`, `SetVar`, `GetVar`; anything else gets
//! `Invalid/unknown command: <name>. ...` (Asterisk 22's wording). An optional [`Flood`] sends `UserEvent`s at a fixed
//! rate of virtual time.
//!
//! ## Faults
//! Injected with [`SimSession::inject`] / [`TcpSim::inject`], or preset in
//! [`SimConfig::faults`] ([`Fault`] documents each):
//! - [`Fault::Garbage`] / [`Fault::GarbageLen`]: bytes that are not AMI between two
//!   messages (the client must re-synchronise);
//! - [`Fault::SplitEveryByte`]: output handed out one byte at a time;
//! - [`Fault::Oversized`]: one event larger than the client's frame limit;
//! - [`Fault::Stall`]: nothing answered or sent any more (preset: not even the
//!   banner);
//! - [`Fault::SlowReads`]: input read at a limited rate, so the client's write buffer
//!   fills;
//! - [`Fault::CloseMidMessage`]: half a message, then the connection closes;
//! - [`Fault::DelayResponses`], [`Fault::DropResponses`],
//!   [`Fault::DropResponsesRandomly`]: late or missing answers (heartbeat Pongs
//!   included);
//! - refused connections: [`SimServer::set_accepting`], [`TcpSim::set_accepting`],
//!   and [`TcpSim::kill`] / [`TcpSim::restart`] for a node that goes away and comes
//!   back.

mod actions;
mod config;
mod faults;
mod server;
mod session;
mod tcp;
mod wire;

pub use config::{CommandFormat, DEFAULT_BANNER, Flood, SimConfig};
pub use faults::Fault;
pub use server::{Refused, ServerStats, SimServer};
pub use session::{Broadcast, SessionStats, SimSession};
pub use tcp::{TcpSim, TcpSimStats};
