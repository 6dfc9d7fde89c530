#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-mio: many Asterisk servers in one `mio::Poll`
//!
//! A thin, non-blocking driver around the sans-IO core [`ami_proto`]: it owns the
//! sockets (plain TCP, or TLS with the `tls` feature) and the clock, and moves bytes and
//! time into each server's [`ami_proto::Connection`] and outputs out to your callbacks.
//!
//! Everything happens in [`Driver::tick_all`], which you call from your loop (profile A)
//! or from your own reactor with a zero timeout ([`Driver::poll_all`], profile C). One
//! tick: wait for readiness (at most the timeout, clamped to 250 ms, and never past the
//! earliest protocol deadline) → read every ready socket until `WouldBlock` → write what
//! each connection queued (partial writes stay queued) → run timeouts and heartbeats →
//! dispatch completions and events. Nothing in a tick sleeps or blocks, and DNS never
//! runs in a tick: endpoints are IP literals unless you inject a [`Resolver`].
//!
//! Reading never waits on listeners: listeners run after the reads, within a time
//! budget per tick; events they do not get to wait in the connection's bounded queue,
//! which drops the oldest and counts the drops. Asterisk disconnects a client that does
//! not take a write within 100 ms, so keep listeners fast and move heavy work elsewhere.
//!
//! ```no_run
//! use std::time::Duration;
//! use ami_mio::{Driver, Endpoint, ServerSpec};
//! use ami_proto::{action, Config};
//!
//! let mut driver = Driver::new()?;
//! let pbx = driver.add_server(ServerSpec::new(
//!     Config::new("pbx1", "admin", "amp111"),
//!     Endpoint::new("127.0.0.1", 5038),
//! ))?;
//! driver.on_event("Hangup", |event| println!("hangup on {:?}", event.get("Channel")));
//! driver.connect(pbx)?;
//! driver.wait_ready(pbx, Duration::from_secs(5))?;
//! driver.send(pbx, action::Ping, |result| println!("ping: {:?}", result.is_ok()))?;
//! loop {
//!     driver.tick_all(Duration::from_millis(25));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod driver;
pub mod endpoint;
mod submit;
pub mod subscription;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use driver::{
    Driver, DriverError, DriverOptions, DriverStats, MAX_TICK_TIMEOUT, ServerId, ServerSpec,
    TickReport, WaitError,
};
pub use endpoint::{Endpoint, EndpointError, Resolver};
pub use submit::{SubmitCallback, SubmitError, Submitter};
pub use subscription::{Filter, SubscriptionId};

/// The README's code blocks, compiled (and run, unless marked `no_run`) as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
