#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # ami-tokio: the AMI client for async Rust
//!
//! The same sans-IO core (`ami-proto`) and the same multi-server policy (`ami-cluster`:
//! reconnect with jittered backoff, circuit breaker, health, routing, metrics) as the
//! mio driver, driven by async tasks.
//!
//! ## The model
//! Every server has one connection task that owns its socket and its
//! [`ami_cluster::Node`]. Handles ([`Client`], cloneable and `Send`) reach it over a
//! bounded channel; each action carries a oneshot for its completion, so
//! `client.send(action).await` returns the reply (response plus list events, or the
//! `OriginateResponse` of an async Originate) or a typed [`ClientError`]. The task never
//! awaits a full write while it could read (a stalled peer cannot deadlock it), and it
//! never waits for event consumers: each [`EventStream`] has its own bounded buffer
//! that drops the oldest event and counts it. [`ClusterClient`] routes over several
//! clients with `ami-cluster`'s router, healthy servers only.
//!
//! After handing out the events of a read, the task yields once, so consumers that
//! share its thread (a current-thread runtime) get their turn before the next read.
//! Consume streams in tasks of their own (`spawn`), not in the future given to
//! `block_on`, which a current-thread runtime polls less often than its tasks: a
//! consumer that does not keep up loses the oldest events of its buffer, counted by
//! [`EventStream::dropped`].
//!
//! ## Runtimes
//! The task is written once against [`Runtime`]: [`Tokio`] (feature `tokio`, default),
//! whose clock makes `tokio::time::pause()` drive heartbeats, deadlines and backoff;
//! and [`Custom`], the `futures-io` path for smol and async-std (async-std is
//! deprecated upstream in favour of smol; both work).
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use ami_proto::{Config, Filter};
//! use ami_tokio::{Client, ClientSpec, Tokio};
//! use futures_util::StreamExt;
//!
//! let spec = ClientSpec::new(Config::new("pbx1", "admin", "amp111"), "127.0.0.1:5038".parse()?);
//! let client = Client::spawn(Tokio, spec);
//! client.wait_ready(Duration::from_secs(5)).await?;
//! let mut hangups = client.events(Filter::event("Hangup"));
//! println!("{:?}", client.command("core show version").await?);
//! while let Some(event) = hangups.next().await {
//!     println!("hangup on {:?}", event.get("Channel"));
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! With smol (or async-std), build a [`Custom`] runtime from its socket, timer and
//! spawner (see [`runtime::Custom`]) and use the same API.
//!
//! TLS (feature `tls`, on by default): [`tls::TokioTls`] is Tokio with verified
//! tokio-rustls connections; on other runtimes, return your own `futures-io` TLS stream
//! from a [`Custom`] connector.

pub mod calls;
pub mod client;
pub mod cluster;
pub mod error;
pub mod events;
pub mod runtime;
mod task;
#[cfg(feature = "tls")]
pub mod tls;

pub use ami_cluster;
pub use calls::{CallRecord, CallStream};
pub use client::{Client, ClientSpec};
pub use cluster::{ClusterClient, ClusterEvents};
pub use error::ClientError;
pub use events::EventStream;
#[cfg(feature = "tokio")]
pub use runtime::Tokio;
pub use runtime::{BoxTransport, Custom, Runtime};
