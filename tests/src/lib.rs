//! Shared helpers for the integration tests.
//!
//! - [`replay`]: a loopback replay server that plays an Asterisk manager interface
//!   blasting recorded events (exact counts, optional pacing, interleaved responses),
//!   for driver tests and benchmarks; the `ami-replay` binary runs it standalone.
//! - [`asterisk`]: the sandbox Asterisk 22 of `scripts/asterisk.sh`, and per-thread CPU
//!   time.
//! - [`cases`]: conformance cases (action + expected completion) shared by the mio and
//!   Tokio suites.
//! - [`counting`]: a logged-in `ami-mio` driver counting a replay server's events.
//! - [`many`]: a fleet of simulated servers on one loopback listener, all logged in to
//!   one driver, and a thread flooding them at a fixed rate each.
//! - [`procstat`]: the process's resident memory, for the `ami-soak` program.
//! - [`redis`]: a real `redis-server` on a free port, for the gateway's tests.
//!
//! The integration tests themselves live in `tests/tests/`, the fixture (a real
//! Asterisk 22 session) in `tests/fixtures/asterisk22-capture.raw`.
#![warn(missing_docs)]

pub mod asterisk;
pub mod cases;
pub mod counting;
pub mod many;
pub mod procstat;
pub mod redis;
pub mod replay;

/// The README's code blocks, compiled (and run, unless marked `no_run`) as doc tests
/// here, where every crate they use is a dependency.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
