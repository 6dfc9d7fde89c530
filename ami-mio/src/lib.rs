#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-mio: many Asterisk servers in one `mio::Poll`
//!
//! A thin, non-blocking driver: it owns the sockets (plain TCP, or TLS with the `tls`
//! feature) and the clock, and moves bytes and time into each server's
//! [`ami_cluster::Node`] (the core's [`ami_proto::Connection`] plus reconnect, health and
//! metrics) and outputs out to your callbacks. Every decision (when to reconnect, when
//! to give up for a while, which server gets an action) is `ami-cluster`'s; the driver
//! only performs it.
//!
//! Everything happens in [`Driver::tick_all`], which you call from your loop (profile A)
//! or from your own reactor with a zero timeout ([`Driver::poll_all`], profile C). One
//! tick: wait for readiness (at most the timeout, clamped to 250 ms, and never past the
//! earliest protocol deadline or reconnect attempt) → read every ready socket until
//! `WouldBlock` → write what each connection queued (partial writes stay queued) → run
//! timeouts, heartbeats and due reconnect attempts → dispatch outputs: open the sockets
//! nodes ask for, drop closed ones, run completion callbacks and listeners. Nothing in a
//! tick sleeps or blocks, and DNS never runs in a tick: endpoints are IP literals unless
//! you inject a [`Resolver`] (e.g. [`SystemResolver`]), which runs before every
//! connect attempt on a thread of its own, never in a tick.
//! A server that accepts TCP and then never answers costs the others nothing: its
//! socket is simply never ready.
//!
//! Reading never waits on listeners: listeners run after the reads, within a time
//! budget per tick; events they do not get to wait in the connection's bounded queue,
//! which drops the oldest and counts the drops. Asterisk disconnects a client that does
//! not take a write within 100 ms, so keep listeners fast and move heavy work elsewhere.
//!
//! ## Opening servers: eager or lazy
//! [`Driver::add_server`] adds an idle server. [`Driver::connect`] and
//! [`Driver::connect_all`] open servers now (eager); otherwise a server opens on its
//! first use (lazy): [`Driver::send`] (which is itself refused with `NotReady`: actions
//! are never queued while not logged in), [`Driver::server`], [`Driver::default_server`],
//! [`Driver::wait_ready`], [`Driver::select`]. An open server stays open until
//! [`Driver::close`], [`Driver::close_all`] or [`Driver::shutdown`].
//!
//! ## Reconnects, backoff and the circuit breaker
//! An open server that loses its session, or whose attempt fails (connection refused,
//! TLS error, banner or login timeout, rejected credentials), is retried by itself after
//! a jittered exponential backoff (100 ms minimum; the first retry after a lost session
//! within 1 s; at most 30 s). After 5 failed attempts in a row its circuit opens: no
//! attempt for 30 s, then one probe. All of it is [`DriverOptions::policy`]
//! ([`Policy`]); [`DriverOptions::seed`] makes the jitter replayable. Actions in flight
//! when a session is lost complete with `ActionError::ConnectionClosed`, exactly once;
//! none is re-sent. Every completion callback runs exactly once; a refused send never
//! calls it.
//!
//! ## Health, routing and metrics
//! [`Driver::health`] is a server's [`Health`]: `Connecting`, `Authenticating`,
//! `Healthy`, `Degraded`, `Reconnecting`, `CircuitOpen` or `Disconnected`;
//! [`Driver::on_health_change`] reports every change. Only `Healthy` servers are
//! routable: [`Driver::select`] and [`Driver::send_routed`] pick one with the
//! [`Strategy`] of [`DriverOptions::routing`] or [`Driver::set_routing`] (explicit,
//! round robin, failover, health-aware) or fail with [`NoServerAvailable`].
//! [`Driver::metrics`] gives a server's [`NodeMetrics`] (kept across reconnects),
//! [`Driver::render_prometheus`] all of them in the Prometheus text format.
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
//! driver.on_health_change(|server, from, to| eprintln!("{server}: {from} -> {to}"));
//! driver.connect(pbx)?;
//! driver.wait_ready(pbx, Duration::from_secs(5))?;
//! driver.send(pbx, action::Ping, |result| println!("ping: {:?}", result.is_ok()))?;
//! loop {
//!     driver.tick_all(Duration::from_millis(25)); // reconnects happen in here
//!     // e.g. serve driver.render_prometheus() on /metrics
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

/// The cluster policy the driver runs on (nodes, backoff, circuit, routing, metrics).
pub use ami_cluster;
pub use ami_cluster::{
    BackoffConfig, CircuitConfig, ClusterError, Health, NoServerAvailable, NodeMetrics, NotReady,
    Policy, Readiness, RouteError, ServerId, Strategy, Ticket,
};
pub use driver::{
    Driver, DriverError, DriverOptions, DriverStats, MAX_TICK_TIMEOUT, ServerSpec, TickReport,
    WaitError,
};
pub use endpoint::{Endpoint, EndpointError, Resolver, SystemResolver};
pub use submit::{RoutedCallback, SubmitCallback, SubmitError, Submitter};
pub use subscription::{Filter, SubscriptionId};
