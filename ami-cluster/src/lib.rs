#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-cluster: the sans-IO policy of a multi-server AMI client
//!
//! This crate owns the **decisions** a client of many Asterisk servers makes, and
//! nothing that performs them: when to retry a failed connection ([`backoff`],
//! [`reconnect`]), when to stop trying for a while ([`circuit`]), what state each
//! server is in ([`health`]) and which server an action goes to ([`routing`]). Like
//! `ami-proto` it never reads a clock (every method that needs the time takes
//! `now: Instant`), never sleeps, never touches a socket, and draws randomness only from
//! a seeded [`rng::Rng`] that the caller passes in, so every decision is a function of
//! its inputs and can be replayed in tests. Drivers (`ami-mio`, your own loop) own the
//! sockets and the clock and feed both in.
//!
//! ## What is where
//! - [`rng`]: the seedable SplitMix64 generator (`ami_proto::rng`, re-exported).
//! - [`backoff`]: exponential backoff with full jitter, clamped to [100 ms, 30 s].
//! - [`circuit`]: a closed / open / half-open circuit breaker whose transitions are
//!   returned as values.
//! - [`health`]: the per-server health states (plan §15 plus circuit-open).
//! - [`routing`]: explicit, round-robin, failover and health-aware server selection.
//! - [`pacing`]: calls per second (token bucket) and calls up at once, per server.
//! - [`calls`]: the call tracker, from a server's events to one [`CallEnded`] record
//!   per call (outcome, cause, ring and talk time).
//! - [`reconnect`]: a per-server [`reconnect::Reconnector`] combining backoff and circuit.
//! - [`node`]: one server's session across reconnects ([`Node`]): the core's
//!   `Connection` plus reconnect, health and metrics.
//! - [`cluster`]: the registry of nodes, the default server and routing ([`Cluster`]).
//! - [`client`]: the client core both drivers wrap ([`ClientCore`]): completion slots,
//!   readiness, routing and metrics over a [`Cluster`].
//! - [`metrics`]: per-server metric snapshots and their Prometheus text format.

pub mod backoff;
pub mod calls;
pub mod circuit;
pub mod client;
pub mod cluster;
pub mod dialer;
pub mod health;
pub mod metrics;
pub mod node;
pub mod pacing;
pub mod reconnect;
pub mod routing;
mod schedule;

pub use ami_proto::rng;

pub use backoff::{Backoff, BackoffConfig};
pub use calls::{CallCounters, CallEnded, CallTracker, Outcome, TrackerConfig};
pub use circuit::{CircuitBreaker, CircuitConfig, CircuitState, Transition};
pub use client::{ClientCore, ClientOutput, NotReady, Readiness, Refused, Ticket};
pub use cluster::{Cluster, ClusterConfig, ClusterError, RouteError, ServerId};
pub use dialer::{DialerConfig, DialerStatus};
pub use health::{Health, RetryStatus};
pub use metrics::{
    LatencyHistogram, NodeMetrics, render_memory, render_prometheus, render_prometheus_with,
};
pub use node::{Node, NodeOutput, Policy};
pub use pacing::{Admission, Pacer, PacingConfig};
pub use reconnect::{Decision, Reconnector};
pub use rng::Rng;
pub use routing::{NoServerAvailable, Router, Strategy, StrategyKind};
