//! One server of a cluster: its AMI session across reconnects, sans-IO.
//!
//! A [`Node`] wraps the core's [`Connection`] (one per transport) with the reconnect
//! policy ([`Reconnector`]), the server's [`Health`] and its [`NodeMetrics`]. Like the
//! core it never reads a clock or touches a socket: the driver passes `now` into every
//! call, moves bytes with [`Node::handle_data`] / [`Node::poll_transmit`], and opens a
//! transport whenever [`Node::poll`] returns [`NodeOutput::Connect`].
//!
//! ## The driver's contract
//! - On [`NodeOutput::Connect`], open a transport and report it with
//!   [`Node::handle_connected`] or [`Node::handle_transport_error`].
//! - On `NodeOutput::Connection(Output::Closed(_))`, drop the transport. A `Connect`
//!   always comes after the `Closed` of the previous connection.
//! - Call [`Node::handle_timeout`] when [`Node::poll_timeout`] is due; that is where
//!   heartbeats, deadlines and reconnect attempts happen.
//!
//! ## Lifecycle
//! A node starts idle. [`Node::open`] (or the first [`Node::send`]: lazy open) starts
//! it; from then on a failed attempt or a lost session is retried after a jittered
//! backoff, and repeated failures open the circuit. [`Node::close`] logs off and stops
//! retrying. Actions in flight when a session is lost complete with
//! `ActionError::ConnectionClosed`, exactly once; none is re-sent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ami_proto::{Action, CloseReason, Config, Connection, Output, SendError, State};

use crate::backoff::BackoffConfig;
use crate::circuit::{CircuitConfig, Transition};
use crate::health::Health;
use crate::metrics::{LatencyHistogram, NodeMetrics};
use crate::reconnect::{Decision, Reconnector};
use crate::rng::Rng;

/// The reconnect policy of a node: backoff between attempts and the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Delays between attempts (100 ms minimum, 30 s cap, jittered).
    pub backoff: BackoffConfig,
    /// Failures before the circuit opens (5), its cooldown (30 s), probes (1).
    pub circuit: CircuitConfig,
    /// How long a session must stay up after its login before the attempt counts as a
    /// success (10 s). A server that accepts the login and then drops the session
    /// sooner is flapping: the loss counts as a failed attempt, so the backoff keeps
    /// growing and the circuit can open, instead of a reconnect every few hundred ms.
    /// A duration too long for a deadline (e.g. `Duration::MAX`) means no deadline: a
    /// session never counts as stable, and every loss counts as a failed attempt.
    pub stable_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff: BackoffConfig::default(),
            circuit: CircuitConfig::default(),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// What a node asks of its driver, or reports.
///
/// Exhaustive on purpose: whoever drives it must handle every output, so a new kind
/// of output is a breaking change that their `match` reports.
#[derive(Debug)]
pub enum NodeOutput {
    /// Open a transport to the server now; report it with [`Node::handle_connected`]
    /// or [`Node::handle_transport_error`].
    Connect,
    /// An output of the session: an event, a completion, a state change, a report, or
    /// `Closed` (drop the transport).
    Connection(Output),
    /// The server's health changed.
    Health {
        /// The previous health.
        from: Health,
        /// The new health.
        to: Health,
    },
    /// The circuit breaker changed state.
    Circuit(Transition),
}

/// Whether the application wants the node connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Never opened: the first use opens it (lazy open).
    Idle,
    /// Opened: kept connected, retried when lost.
    Running,
    /// Closed by the application: not retried until opened again.
    Stopped,
}

/// Counters kept across connections.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    dropped_events_closed: u64,
    dropped_memory_closed: u64,
    /// Bad input counted by connections already replaced.
    discards_closed: u64,
    discarded_bytes_closed: u64,
    unmatched_closed: u64,
    late_replies_closed: u64,
    established: u64,
    failures: u64,
    lost: u64,
    circuit_opened: u64,
    completed: u64,
    failed: u64,
    refused: u64,
    session_action_failures: u64,
}

/// One server's session across reconnects. See the [module documentation](self).
#[derive(Debug)]
pub struct Node {
    config: Config,
    instance: u32,
    generation: u64,
    mode: Mode,
    conn: Option<Connection>,
    /// A `Connect` was queued and not yet polled: input until then belongs to the
    /// previous transport and is ignored.
    transport_pending: bool,
    /// The current connection's login was accounted for.
    login_seen: bool,
    /// When the current session counts as stable (its login a success); `None` before
    /// the login, once it was counted, and when `stable_after` overflows the deadline.
    stable_at: Option<Instant>,
    /// The current session logged in and has not counted as stable yet (with
    /// `stable_at` `None`, it never will).
    awaiting_stable: bool,
    stable_after: Duration,
    /// The current connection's close was accounted for.
    close_seen: bool,
    /// Why the last connection closed (kept while the next attempt runs).
    last_close: Option<CloseReason>,
    reconnector: Reconnector,
    rng: Rng,
    health: Health,
    /// Node outputs, and a replaced connection's leftovers, ahead of the session's.
    outputs: VecDeque<NodeOutput>,
    session_actions: Vec<Action>,
    /// ActionIDs of the session actions of the current connection still in flight.
    session_action_ids: Vec<String>,
    counters: Counters,
    latency: LatencyHistogram,
}

impl Node {
    /// An idle node for `config`. `instance` goes into ActionIDs (one per process);
    /// `seed` seeds the node's jitter.
    pub fn new(config: Config, instance: u32, seed: u64, policy: Policy) -> Node {
        Node {
            config,
            instance,
            generation: 0,
            mode: Mode::Idle,
            conn: None,
            transport_pending: false,
            login_seen: false,
            stable_at: None,
            awaiting_stable: false,
            stable_after: policy.stable_after,
            close_seen: false,
            last_close: None,
            reconnector: Reconnector::new(policy.backoff, policy.circuit),
            rng: Rng::new(seed),
            health: Health::Disconnected,
            outputs: VecDeque::new(),
            session_actions: Vec::new(),
            session_action_ids: Vec::new(),
            counters: Counters::default(),
            latency: LatencyHistogram::default(),
        }
    }

    /// The server's key.
    pub fn key(&self) -> &str {
        &self.config.server_key
    }

    /// The connection settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The health as of the last input.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The state of the current connection (`Closed` when there is none).
    pub fn state(&self) -> State {
        self.conn.as_ref().map_or(State::Closed, Connection::state)
    }

    /// The current connection, if one was ever opened.
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// Why the last connection closed, kept while the next attempt is under way;
    /// `None` before any connection closed.
    pub fn last_close_reason(&self) -> Option<&CloseReason> {
        self.last_close.as_ref()
    }

    /// The reconnect policy's state.
    pub fn reconnector(&self) -> &Reconnector {
        &self.reconnector
    }

    /// Connections made so far (the generation in ActionIDs).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the node was never opened (its first use opens it).
    pub fn is_idle(&self) -> bool {
        self.mode == Mode::Idle
    }

    /// Whether the node was opened and not closed by the application since.
    pub fn is_running(&self) -> bool {
        self.mode == Mode::Running
    }

    /// Actions sent after every login, before the application's, to re-apply session
    /// settings (e.g. `Filter` or `Events`). Their failures are counted and logged;
    /// their completions are not reported as outputs.
    pub fn set_session_actions(&mut self, actions: Vec<Action>) {
        self.session_actions = actions;
    }

    /// Session actions that failed (see [`Node::set_session_actions`]).
    pub fn session_action_failures(&self) -> u64 {
        self.counters.session_action_failures
    }

    /// Starts the node: connects now, or when the backoff or an open circuit allows.
    /// A node already running is left alone.
    pub fn open(&mut self, now: Instant) {
        self.mode = Mode::Running;
        let live = self
            .conn
            .as_ref()
            .is_some_and(|c| c.state() != State::Closed);
        if !live {
            self.reconnector.request_attempt(now);
            self.attempt_if_due(now);
        }
        self.absorb(now);
    }

    /// Logs off (`Logoff`, then `Goodbye` or the close deadline) and stops
    /// reconnecting until [`Node::open`].
    pub fn close(&mut self, now: Instant) {
        self.mode = Mode::Stopped;
        self.reconnector.cancel();
        if let Some(conn) = self.conn.as_mut() {
            conn.close(now);
        }
        self.absorb(now);
    }

    /// Sends an action on the current session. Fails at once, never queues, when the
    /// session is not logged in; an idle node is opened by its first send (lazy open)
    /// and the send itself still fails with `NotReady`.
    pub fn send(&mut self, now: Instant, action: impl Into<Action>) -> Result<String, SendError> {
        if self.mode == Mode::Idle {
            self.open(now);
        }
        let result = match self.conn.as_mut() {
            Some(conn) if !self.transport_pending => conn.send(now, action),
            _ => Err(SendError::NotReady {
                state: self.state(),
            }),
        };
        if result.is_err() {
            self.counters.refused += 1;
        }
        result
    }

    /// The transport connected.
    pub fn handle_connected(&mut self, now: Instant) {
        if let Some(conn) = self.current() {
            conn.handle_connected(now);
        }
        self.absorb(now);
    }

    /// Bytes arrived from the server.
    pub fn handle_data(&mut self, now: Instant, data: &[u8]) {
        if let Some(conn) = self.current() {
            conn.handle_data(now, data);
        }
        self.absorb(now);
    }

    /// The server closed the stream.
    pub fn handle_eof(&mut self, now: Instant) {
        if let Some(conn) = self.current() {
            conn.handle_eof(now);
        }
        self.absorb(now);
    }

    /// The transport failed (connect refused, reset, TLS error...).
    pub fn handle_transport_error(&mut self, now: Instant, error: &dyn std::fmt::Display) {
        if let Some(conn) = self.current() {
            conn.handle_transport_error(now, error);
        }
        self.absorb(now);
    }

    /// Runs what is due at `now`: the session's deadlines and heartbeats, and a
    /// scheduled reconnect attempt.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(conn) = self.conn.as_mut()
            && conn.poll_timeout().is_some_and(|at| at <= now)
        {
            conn.handle_timeout(now);
        }
        self.absorb(now);
        self.attempt_if_due(now);
        self.absorb(now);
    }

    /// When [`Node::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = self.conn.as_ref().and_then(Connection::poll_timeout);
        let retry = if self.mode == Mode::Running && self.state() == State::Closed {
            self.reconnector.next_attempt()
        } else {
            None
        };
        [session, retry, self.stable_at].into_iter().flatten().min()
    }

    /// The next output, if any. Node outputs and a replaced connection's leftovers come
    /// first, then the current session's.
    pub fn poll(&mut self) -> Option<NodeOutput> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                if matches!(output, NodeOutput::Connect) {
                    self.transport_pending = false;
                }
                return Some(output);
            }
            let output = self.conn.as_mut()?.poll()?;
            if let Some(output) = self.observe(output) {
                return Some(NodeOutput::Connection(output));
            }
        }
    }

    /// Bytes to write to the transport.
    pub fn poll_transmit(&self) -> &[u8] {
        match &self.conn {
            Some(conn) if !self.transport_pending => conn.poll_transmit(),
            _ => &[],
        }
    }

    /// `n` bytes of [`Node::poll_transmit`] were written.
    pub fn advance_transmit(&mut self, n: usize) {
        if let Some(conn) = self.current() {
            conn.advance_transmit(n);
        }
    }

    /// Whether outputs other than events wait to be polled.
    pub fn has_pending_outputs(&self) -> bool {
        !self.outputs.is_empty() || self.conn.as_ref().is_some_and(|c| c.has_pending_outputs())
    }

    /// Whether the next output [`poll`](Self::poll) returns is an event (or there is
    /// none); see [`Connection::next_is_event`].
    pub fn next_is_event(&self) -> bool {
        self.outputs.is_empty() && self.conn.as_ref().is_none_or(Connection::next_is_event)
    }

    /// Events waiting to be polled.
    pub fn queued_events(&self) -> usize {
        self.conn.as_ref().map_or(0, Connection::queued_events)
    }

    /// A snapshot of the metrics.
    pub fn metrics(&self) -> NodeMetrics {
        let c = &self.counters;
        let current = self.conn.as_ref().map(Connection::stats);
        NodeMetrics {
            health: self.health,
            connection_status: self.health.connection_status(),
            pending_actions: self.conn.as_ref().map_or(0, Connection::pending_actions),
            dropped_events_total: c.dropped_events_closed + current.map_or(0, |s| s.events.dropped),
            dropped_events_memory_total: c.dropped_memory_closed
                + current.map_or(0, |s| s.events.dropped_memory),
            action_latency: self.latency,
            reconnect_attempts: self.reconnector.attempts(),
            connections_established: c.established,
            connection_failures: c.failures,
            connections_lost: c.lost,
            circuit_opened_total: c.circuit_opened,
            actions_completed: c.completed,
            actions_failed: c.failed,
            actions_refused: c.refused,
            discarded_messages_total: c.discards_closed + current.map_or(0, |s| s.discards),
            discarded_bytes_total: c.discarded_bytes_closed
                + current.map_or(0, |s| s.discarded_bytes),
            unmatched_responses_total: c.unmatched_closed + current.map_or(0, |s| s.unmatched),
            late_replies_total: c.late_replies_closed + current.map_or(0, |s| s.late_replies),
        }
    }

    /// The connection that input from the current transport belongs to.
    fn current(&mut self) -> Option<&mut Connection> {
        if self.transport_pending {
            return None;
        }
        self.conn.as_mut()
    }

    /// Starts a new connection if the node is running, has none alive, and an attempt
    /// is due and admitted by the circuit.
    fn attempt_if_due(&mut self, now: Instant) {
        if self.mode != Mode::Running || self.state() != State::Closed {
            return;
        }
        if !self.reconnector.begin_attempt(now) {
            return;
        }
        if let Some(mut old) = self.conn.take() {
            // Whatever the application has not polled yet is kept, in order.
            let stats = old.stats();
            self.counters.dropped_events_closed += stats.events.dropped;
            self.counters.dropped_memory_closed += stats.events.dropped_memory;
            self.counters.discards_closed += stats.discards;
            self.counters.discarded_bytes_closed += stats.discarded_bytes;
            self.counters.unmatched_closed += stats.unmatched;
            self.counters.late_replies_closed += stats.late_replies;
            while let Some(output) = old.poll() {
                if let Some(output) = self.observe(output) {
                    self.outputs.push_back(NodeOutput::Connection(output));
                }
            }
        }
        self.generation += 1;
        self.conn = Some(Connection::new(
            self.config.clone(),
            self.instance,
            self.generation,
            now,
        ));
        self.login_seen = false;
        self.stable_at = None;
        self.awaiting_stable = false;
        self.close_seen = false;
        self.session_action_ids.clear();
        self.transport_pending = true;
        self.outputs.push_back(NodeOutput::Connect);
        tracing::debug!(server_key = %self.config.server_key, generation = self.generation, "connecting");
    }

    /// Accounts for what the last input did to the session: a login, a close, circuit
    /// transitions and the resulting health.
    fn absorb(&mut self, now: Instant) {
        if let Some(conn) = self.conn.as_mut() {
            if !self.login_seen
                && let Some(at) = conn.logged_in_at()
            {
                self.login_seen = true;
                self.counters.established += 1;
                self.stable_at = at.checked_add(self.stable_after);
                self.awaiting_stable = true;
                for action in &self.session_actions {
                    match conn.send(now, action.clone()) {
                        Ok(id) => self.session_action_ids.push(id),
                        Err(error) => {
                            self.counters.session_action_failures += 1;
                            tracing::warn!(server_key = %self.config.server_key, %error, "session action refused");
                        }
                    }
                }
            }
            let closed = conn.state() == State::Closed;
            if let Some(at) = self.stable_at.filter(|at| !closed && now >= *at) {
                self.stable_at = None;
                self.awaiting_stable = false;
                self.reconnector.on_connected(at);
            }
            if closed && !self.close_seen {
                self.close_seen = true;
                let reason = conn.close_reason().cloned();
                self.last_close = reason.clone();
                self.stable_at = None;
                let flapped = std::mem::take(&mut self.awaiting_stable);
                if self.mode == Mode::Running {
                    if self.login_seen && flapped {
                        self.counters.lost += 1;
                        let decision = self.reconnector.on_connect_failed(now, &mut self.rng);
                        let next = Next::of(decision, now);
                        tracing::warn!(server_key = %self.config.server_key, reason = %Reason(&reason), %next, "session lost soon after its login; counted as a failed attempt");
                    } else if self.login_seen {
                        self.counters.lost += 1;
                        let at = self.reconnector.on_disconnected(now, &mut self.rng);
                        let retry_in_ms =
                            at.map(|at| at.saturating_duration_since(now).as_millis() as u64);
                        tracing::warn!(server_key = %self.config.server_key, reason = %Reason(&reason), ?retry_in_ms, "session lost; reconnecting");
                    } else {
                        self.counters.failures += 1;
                        let decision = self.reconnector.on_connect_failed(now, &mut self.rng);
                        let next = Next::of(decision, now);
                        tracing::warn!(server_key = %self.config.server_key, reason = %Reason(&reason), %next, "connection attempt failed");
                    }
                }
            }
        }
        for transition in self.reconnector.drain_transitions() {
            if matches!(
                transition,
                Transition::Opened { .. } | Transition::Reopened { .. }
            ) {
                self.counters.circuit_opened += 1;
            }
            tracing::info!(server_key = %self.config.server_key, transition = %Circuit(&transition, now), "circuit");
            self.outputs.push_back(NodeOutput::Circuit(transition));
        }
        let health = Health::from_parts(
            self.conn.as_ref().map(Connection::state),
            self.reconnector.status(now),
        );
        if health != self.health {
            let from = std::mem::replace(&mut self.health, health);
            self.outputs
                .push_back(NodeOutput::Health { from, to: health });
        }
    }

    /// Updates metrics for a session output; swallows session actions' completions.
    fn observe(&mut self, output: Output) -> Option<Output> {
        let Output::Completed(done) = &output else {
            return Some(output);
        };
        if let Some(i) = self
            .session_action_ids
            .iter()
            .position(|id| *id == done.action_id)
        {
            self.session_action_ids.swap_remove(i);
            if let Err(error) = &done.result {
                self.counters.session_action_failures += 1;
                tracing::warn!(server_key = %self.config.server_key, %error, "session action failed");
            }
            return None;
        }
        self.latency.observe(done.latency());
        match done.result {
            Ok(_) => self.counters.completed += 1,
            Err(_) => self.counters.failed += 1,
        }
        Some(output)
    }
}

/// A close reason for a log line: its text, or `unknown`.
struct Reason<'a>(&'a Option<CloseReason>);

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(reason) => write!(f, "{reason}"),
            None => f.write_str("unknown"),
        }
    }
}

/// What a failed attempt leads to, for a log line: `retry in 1234 ms`, `circuit open
/// for 30000 ms`, or `no retry scheduled`.
struct Next(Option<(&'static str, u64)>);

impl Next {
    fn of(decision: Decision, now: Instant) -> Next {
        let ms = |at: Instant| at.saturating_duration_since(now).as_millis() as u64;
        Next(match decision {
            Decision::RetryAt(Some(at)) => Some(("retry in", ms(at))),
            Decision::CircuitOpenUntil(Some(at)) => Some(("circuit open for", ms(at))),
            Decision::RetryAt(None) | Decision::CircuitOpenUntil(None) => None,
        })
    }
}

impl std::fmt::Display for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((what, ms)) => write!(f, "{what} {ms} ms"),
            None => f.write_str("no retry scheduled"),
        }
    }
}

/// A circuit transition for a log line, its instants as durations from now.
struct Circuit<'a>(&'a Transition, Instant);

impl std::fmt::Display for Circuit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |until: &Option<Instant>| match until {
            Some(at) => format!("{} ms", at.saturating_duration_since(self.1).as_millis()),
            None => "ever".to_owned(),
        };
        match self.0 {
            Transition::Opened {
                until,
                consecutive_failures,
            } => write!(
                f,
                "opened after {consecutive_failures} failures, for {}",
                ms(until)
            ),
            Transition::HalfOpened => f.write_str("half-open: probing"),
            Transition::Reopened { until } => write!(f, "reopened for {}", ms(until)),
            Transition::Closed => f.write_str("closed"),
        }
    }
}
