//! The client core that both drivers wrap: a [`Cluster`] plus everything a client
//! keeps above it — completion slots, readiness, routing and aggregate metrics.
//!
//! `ami-mio` and `ami-tokio` are I/O pumps around one [`ClientCore`]: they own sockets,
//! clocks and the way results reach the application (callbacks, futures, streams),
//! and nothing else. Every decision a client makes about its actions and servers is
//! taken here, once, sans-IO:
//!
//! - [`ClientCore::send`] takes an action and a *payload* `P` (whatever the driver
//!   needs to hand the result back: a callback, a oneshot sender) and returns a small
//!   `Copy` [`Ticket`]. The payload comes back exactly once, in
//!   [`ClientOutput::Completed`] with the action's completion; a refused send returns
//!   it at once in [`Refused`].
//! - [`ClientCore::readiness`] says whether a server is ready for actions, still on
//!   its way, or will not become ready by waiting (see [`Readiness`]): both drivers'
//!   `wait_ready` are loops around it.
//! - [`ClientCore::poll`] and [`ClientCore::poll_server`] give the outputs in the
//!   order the nodes produced them (wire order within a server): transports to open
//!   and drop, completions with their payloads, events, state and health changes.
//!
//! Completion slots are bounded by the servers' `max_pending_actions`: a slot exists
//! only for an action the core accepted, and is freed by that action's completion,
//! which the core guarantees (a lost connection completes its actions with
//! `ConnectionClosed`).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use ami_proto::action::CoreShowChannels;
use ami_proto::correlation::action_tag;
use ami_proto::{Action, ActionError, CloseReason, Completion, Event, Output, SendError, State};

use crate::calls::CallEnded;
use crate::cluster::{Cluster, ClusterConfig, ClusterError, RouteError, ServerId};
use crate::dialer::{Dialer, DialerConfig, DialerStatus, OriginateInfo, is_originate};
use crate::health::Health;
use crate::metrics::NodeMetrics;
use crate::node::{Node, NodeOutput};
use crate::routing::{NoServerAvailable, Strategy};

/// A handle to an action in flight: which server, and which completion slot. `Copy`,
/// and never reused for another action while this one is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The server the action was sent to.
    pub server: ServerId,
    slot: u32,
    reuse: u32,
}

/// A send the core refused: why, and the payload handed back untouched.
#[derive(Debug)]
pub struct Refused<P, E = SendError> {
    /// Why the action was not sent.
    pub error: E,
    /// The payload given to the send.
    pub payload: P,
}

/// Whether waiting for a server to log in makes sense.
///
/// The rule, the same for every driver: a wait goes on through everything that
/// retrying can fix — connecting, logging in, a refused or reset connection, a lost
/// session, a timeout — and ends at once when waiting cannot help: the application
/// closed the server, its circuit is open (no attempt before the cooldown), or the
/// last attempt was refused in a way the next one will repeat (credentials rejected,
/// a peer that is not AMI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Logged in: actions can be sent.
    Ready,
    /// Not yet; an attempt is under way or scheduled.
    Pending,
    /// Waiting cannot make it ready.
    Failed(NotReady),
}

/// Why a server will not become ready by waiting (see [`Readiness`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The application closed the server; it does not reconnect until opened again.
    #[error("the server was closed by the application")]
    Stopped,
    /// The circuit breaker is open after repeated failures; the last one is given.
    #[error("circuit open after repeated failures (last: {})", last.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string))]
    CircuitOpen {
        /// Why the last attempt failed.
        last: Option<CloseReason>,
    },
    /// The server refused the last attempt in a way the next one will repeat.
    #[error("refused: {0}")]
    Refused(CloseReason),
}

/// Whether retrying cannot fix a close: the next attempt would be refused the same way.
fn is_permanent(reason: &CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::AuthenticationFailed { .. } | CloseReason::NotAmi { .. }
    )
}

/// What the core asks of its driver, or hands to the application.
///
/// Exhaustive on purpose: whoever drives it must handle every output, so a new kind
/// of output is a breaking change that their `match` reports.
#[derive(Debug)]
pub enum ClientOutput<P> {
    /// Open a transport to the server now; report it with
    /// [`ClientCore::handle_connected`] or [`ClientCore::handle_transport_error`].
    Connect(ServerId),
    /// The server's connection closed: drop its transport.
    Disconnect {
        /// The server.
        server: ServerId,
        /// Why it closed.
        reason: CloseReason,
    },
    /// An action sent with [`ClientCore::send`] completed; its payload comes back.
    Completed {
        /// The action's ticket.
        ticket: Ticket,
        /// The payload given to the send.
        payload: P,
        /// The completion: the reply or why there is none.
        completion: Completion,
    },
    /// An event.
    Event(Event),
    /// A connection's state changed (every reconnect starts again at `Connecting`).
    State {
        /// The server.
        server: ServerId,
        /// The state before.
        from: State,
        /// The state now.
        to: State,
    },
    /// A server's health changed.
    Health {
        /// The server.
        server: ServerId,
        /// The health before.
        from: Health,
        /// The health now.
        to: Health,
    },
    /// A call of a server whose calls are tracked ([`ClientCore::track_calls`]) ended.
    CallEnded {
        /// The server.
        server: ServerId,
        /// What the tracker saw of it.
        call: Box<CallEnded>,
    },
}

/// A completion slot.
#[derive(Debug)]
struct Slot<P> {
    reuse: u32,
    payload: Option<P>,
}

/// Identifies an action on the wire: its server, connection generation and counter.
type ActionKey = (ServerId, u64, u64);

/// The client core. See the [module documentation](self).
///
/// Methods taking a [`ServerId`] panic when it does not come from this core.
#[derive(Debug)]
pub struct ClientCore<P> {
    cluster: Cluster,
    slots: Vec<Slot<P>>,
    free: Vec<u32>,
    by_action: HashMap<ActionKey, u32>,
    /// The dialers of servers whose calls are tracked, by server index.
    dialers: Vec<Option<Box<Dialer>>>,
    /// Those servers.
    tracked: Vec<ServerId>,
    /// Tracked servers whose dialers may have outputs (for [`ClientCore::poll`]).
    with_outputs: VecDeque<ServerId>,
    /// The latest instant an input brought (the core never reads the clock).
    now: Option<Instant>,
}

impl<P> ClientCore<P> {
    /// A core over the servers of `config`, all idle.
    pub fn new(config: ClusterConfig) -> Result<Self, ClusterError> {
        Ok(ClientCore {
            cluster: Cluster::new(config)?,
            slots: Vec::new(),
            free: Vec::new(),
            by_action: HashMap::new(),
            dialers: Vec::new(),
            tracked: Vec::new(),
            with_outputs: VecDeque::new(),
            now: None,
        })
    }

    /// Tracks the calls of a server and paces its Originates from now on (see
    /// [`dialer`](crate::dialer)); calling it again replaces the limits and starts
    /// a fresh tracker.
    pub fn track_calls(&mut self, id: ServerId, config: DialerConfig) {
        let _ = self.cluster.node(id);
        if self.dialers.len() <= id.0 {
            self.dialers.resize_with(id.0 + 1, || None);
        }
        let mut dialer = Dialer::new(config);
        if self.cluster.node(id).state().is_ready()
            && let Some(now) = self.now
        {
            dialer.logged_in(now);
        }
        self.dialers[id.0] = Some(Box::new(dialer));
        if !self.tracked.contains(&id) {
            self.tracked.push(id);
        }
    }

    /// What a tracked server's dialer has seen and done (`None`: not tracked).
    pub fn dialer_status(&self, id: ServerId) -> Option<DialerStatus> {
        self.dialers
            .get(id.0)
            .and_then(|d| d.as_deref())
            .map(Dialer::status)
    }

    fn dialer_mut(&mut self, id: ServerId) -> Option<&mut Dialer> {
        self.dialers.get_mut(id.0).and_then(|d| d.as_deref_mut())
    }

    /// The cluster underneath (registry, nodes, routing).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Adds an idle server at the end of the registry.
    pub fn add(&mut self, server: ami_proto::Config) -> Result<ServerId, ClusterError> {
        self.cluster.add(server)
    }

    /// Adds an idle server with its own reconnect policy.
    pub fn add_with_policy(
        &mut self,
        server: ami_proto::Config,
        policy: crate::node::Policy,
    ) -> Result<ServerId, ClusterError> {
        self.cluster.add_with_policy(server, policy)
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.cluster.len()
    }

    /// Always false: a core has at least one server.
    pub fn is_empty(&self) -> bool {
        self.cluster.is_empty()
    }

    /// The server with this key, without opening it.
    pub fn id(&self, key: &str) -> Option<ServerId> {
        self.cluster.id(key)
    }

    /// A server's key.
    pub fn key(&self, id: ServerId) -> &str {
        self.cluster.node(id).key()
    }

    /// A server's node (read only).
    pub fn node(&self, id: ServerId) -> &Node {
        self.cluster.node(id)
    }

    /// The server with this key, opened if it was idle (lazy open).
    pub fn server(&mut self, key: &str, now: Instant) -> Result<ServerId, ClusterError> {
        self.cluster.server(key, now)
    }

    /// The default server, opened if it was idle.
    pub fn default_server(&mut self, now: Instant) -> ServerId {
        self.cluster.default_server(now)
    }

    /// Makes the server with this key the default.
    pub fn set_default(&mut self, key: &str) -> Result<ServerId, ClusterError> {
        self.cluster.set_default(key)
    }

    /// Sets the routing strategy (keys are checked against the registry).
    pub fn set_routing(&mut self, strategy: Strategy<String>) -> Result<(), ClusterError> {
        self.cluster.set_routing(strategy)
    }

    /// A healthy server chosen by the routing strategy; idle servers are opened first
    /// (they become selectable once logged in).
    pub fn select(&mut self, now: Instant) -> Result<ServerId, NoServerAvailable> {
        self.cluster.select(now)
    }

    /// A healthy server chosen by `strategy` instead of the configured one (see
    /// [`Cluster::select_with`]).
    pub fn select_with(
        &mut self,
        strategy: Option<&Strategy<String>>,
        now: Instant,
    ) -> Result<ServerId, NoServerAvailable> {
        self.cluster.select_with(strategy, now)
    }

    /// Opens a server (eager open): it connects now and is kept connected until
    /// [`ClientCore::close`]. A server already open keeps its schedule.
    pub fn open(&mut self, id: ServerId, now: Instant) {
        self.cluster.node_mut(id).open(now);
    }

    /// Opens a server only if it was never opened (what a wait does first).
    pub fn open_if_idle(&mut self, id: ServerId, now: Instant) {
        let node = self.cluster.node_mut(id);
        if node.is_idle() {
            node.open(now);
        }
    }

    /// Opens every server.
    pub fn open_all(&mut self, now: Instant) {
        self.cluster.connect_all(now);
    }

    /// Logs a server off and stops reconnecting it until [`ClientCore::open`].
    pub fn close(&mut self, id: ServerId, now: Instant) {
        self.cluster.node_mut(id).close(now);
        self.fail_waiting(id, now);
    }

    /// Completes the Originates a closed server's dialer held.
    fn fail_waiting(&mut self, id: ServerId, now: Instant) {
        let state = self.cluster.node(id).state();
        if let Some(dialer) = self.dialer_mut(id) {
            let error = ActionError::NotSent(SendError::NotReady { state });
            dialer.fail_waiting(&error, now);
            self.mark(id);
        }
    }

    /// Logs every server off; none reconnects.
    pub fn close_all(&mut self, now: Instant) {
        self.cluster.close_all(now);
        for id in self.tracked.clone() {
            self.fail_waiting(id, now);
        }
    }

    /// Whether every server is closed and has nothing left to poll.
    pub fn is_shut_down(&self) -> bool {
        self.cluster.ids().all(|id| {
            let node = self.cluster.node(id);
            node.state() == State::Closed && !self.has_pending_outputs(id)
        })
    }

    /// Sends `action` to a server. On success the payload waits in a slot until the
    /// action completes ([`ClientOutput::Completed`]); a refusal hands it back. An idle
    /// server is opened by its first send (lazy open), which is still refused with
    /// `NotReady`.
    pub fn send(
        &mut self,
        id: ServerId,
        now: Instant,
        action: impl Into<Action>,
        payload: P,
    ) -> Result<Ticket, Refused<P>> {
        self.now = Some(now);
        let action = action.into();
        if is_originate(&action) && self.dialer_mut(id).is_some() {
            return self.send_originate(id, now, action, payload);
        }
        let action_id = match self.cluster.node_mut(id).send(now, action) {
            Ok(action_id) => action_id,
            Err(error) => return Err(Refused { error, payload }),
        };
        let slot = self.take_slot(payload);
        Ok(self.bind(id, &action_id, slot))
    }

    /// An Originate to a tracked server: sent now when the limits let it, else held.
    fn send_originate(
        &mut self,
        id: ServerId,
        now: Instant,
        action: Action,
        payload: P,
    ) -> Result<Ticket, Refused<P>> {
        let node = self.cluster.node_mut(id);
        let ready = node.state().is_ready();
        let timeout = action.timeout().unwrap_or(node.config().action_timeout);
        let dialer = self.dialers[id.0].as_deref_mut().expect("checked by send");
        if ready && dialer.admit_now(now) {
            let info = OriginateInfo::of(&action);
            let action_id = match node.send(now, action) {
                Ok(action_id) => action_id,
                Err(error) => {
                    dialer.refund(now);
                    return Err(Refused { error, payload });
                }
            };
            dialer.sent(&action_id, info, now);
            let slot = self.take_slot(payload);
            return Ok(self.bind(id, &action_id, slot));
        }
        if !ready && !dialer.has_waiting() {
            // Not a matter of pacing: refused as any action is.
            let error = SendError::NotReady {
                state: node.state(),
            };
            return Err(Refused { error, payload });
        }
        if let Err(error) = dialer.can_hold() {
            return Err(Refused { error, payload });
        }
        // Refused now rather than when its turn comes.
        if let Err(error) = action.encode("0", &mut Vec::new()) {
            return Err(Refused {
                error: SendError::Encode(error),
                payload,
            });
        }
        let slot = self.take_slot(payload);
        let dialer = self.dialers[id.0].as_deref_mut().expect("checked by send");
        dialer.hold(action, slot, now, timeout);
        Ok(Ticket {
            server: id,
            slot,
            reuse: self.slots[slot as usize].reuse,
        })
    }

    /// A free completion slot, holding `payload`.
    fn take_slot(&mut self, payload: P) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].payload = Some(payload);
                slot
            }
            None => {
                self.slots.push(Slot {
                    reuse: 0,
                    payload: Some(payload),
                });
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Binds `slot` to the action that went out as `action_id`; its ticket.
    fn bind(&mut self, id: ServerId, action_id: &str, slot: u32) -> Ticket {
        let (generation, counter) =
            action_tag(action_id).expect("the core issues ActionIDs in its own format");
        self.by_action.insert((id, generation, counter), slot);
        Ticket {
            server: id,
            slot,
            reuse: self.slots[slot as usize].reuse,
        }
    }

    /// Sends the held Originates whose turn came, and the reseed when due.
    fn run_dialer(&mut self, id: ServerId, now: Instant) {
        let node = self.cluster.node_mut(id);
        let Some(dialer) = self.dialers.get_mut(id.0).and_then(|d| d.as_deref_mut()) else {
            return;
        };
        dialer.handle_timeout(now);
        if dialer.take_reseed(now) {
            match node.send(now, CoreShowChannels) {
                Ok(action_id) => dialer.reseed_sent(&action_id),
                Err(error) => {
                    tracing::warn!(server_key = node.key(), %error, "cannot ask for the live calls: not reseeded");
                }
            }
        }
        while let Some(held) = dialer.next_turn(now, node.state().is_ready()) {
            let info = OriginateInfo::of(&held.action);
            match node.send(now, held.action) {
                Ok(action_id) => {
                    dialer.sent(&action_id, info, now);
                    let (generation, counter) = action_tag(&action_id)
                        .expect("the core issues ActionIDs in its own format");
                    self.by_action.insert((id, generation, counter), held.slot);
                }
                Err(error) => dialer.not_sent(held.slot, held.since, error, now),
            }
        }
        self.mark(id);
    }

    /// Notes that a tracked server's dialer has outputs, for [`ClientCore::poll`].
    fn mark(&mut self, id: ServerId) {
        if let Some(dialer) = self.dialers.get_mut(id.0).and_then(|d| d.as_deref_mut())
            && !dialer.marked
            && dialer.has_outputs()
        {
            dialer.marked = true;
            self.with_outputs.push_back(id);
        }
    }

    /// A tracked server's next dialer output: a held Originate's completion, or an
    /// ended call.
    fn dialer_output(&mut self, id: ServerId) -> Option<ClientOutput<P>> {
        let dialer = self.dialers.get_mut(id.0)?.as_deref_mut()?;
        if let Some((slot, completion)) = dialer.failed.pop_front() {
            return self.release(id, slot, completion);
        }
        let call = dialer.poll_ended()?;
        Some(ClientOutput::CallEnded {
            server: id,
            call: Box::new(call),
        })
    }

    /// Selects a server with the routing strategy and sends `action` there.
    pub fn send_routed(
        &mut self,
        now: Instant,
        action: impl Into<Action>,
        payload: P,
    ) -> Result<Ticket, Refused<P, RouteError>> {
        self.send_routed_with(now, None, action, payload)
    }

    /// Selects a server with `strategy` (the configured one when `None`, see
    /// [`Cluster::select_with`](crate::Cluster::select_with)) and sends `action` there.
    pub fn send_routed_with(
        &mut self,
        now: Instant,
        strategy: Option<&Strategy<String>>,
        action: impl Into<Action>,
        payload: P,
    ) -> Result<Ticket, Refused<P, RouteError>> {
        let server = match self.cluster.select_with(strategy, now) {
            Ok(server) => server,
            Err(error) => {
                return Err(Refused {
                    error: RouteError::NoServer(error),
                    payload,
                });
            }
        };
        self.send(server, now, action, payload)
            .map_err(|Refused { error, payload }| Refused {
                error: RouteError::Refused { server, error },
                payload,
            })
    }

    /// Whether the action of `ticket` still waits for its completion.
    pub fn is_pending(&self, ticket: Ticket) -> bool {
        self.slots
            .get(ticket.slot as usize)
            .is_some_and(|s| s.reuse == ticket.reuse && s.payload.is_some())
    }

    /// Actions in flight over every server (completion slots held, Originates
    /// waiting for the call limits included).
    pub fn pending(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether a server is ready, on its way, or will not become ready by waiting
    /// (the rule is on [`Readiness`]).
    pub fn readiness(&self, id: ServerId) -> Readiness {
        let node = self.cluster.node(id);
        if node.state().is_ready() {
            return Readiness::Ready;
        }
        if !node.is_idle() && !node.is_running() {
            return Readiness::Failed(NotReady::Stopped);
        }
        let last = self.last_failure(id);
        if node.health() == Health::CircuitOpen {
            return Readiness::Failed(NotReady::CircuitOpen { last });
        }
        match last {
            Some(reason) if is_permanent(&reason) && node.state() == State::Closed => {
                Readiness::Failed(NotReady::Refused(reason))
            }
            _ => Readiness::Pending,
        }
    }

    /// Why the server's last connection closed, kept while the next attempt runs (for
    /// reports on a wait that ran out).
    pub fn last_failure(&self, id: ServerId) -> Option<CloseReason> {
        self.cluster.node(id).last_close_reason().cloned()
    }

    // ----- I/O inputs, as on `Node` -----

    /// The server's transport connected.
    pub fn handle_connected(&mut self, id: ServerId, now: Instant) {
        self.now = Some(now);
        self.cluster.node_mut(id).handle_connected(now);
    }

    /// Bytes arrived from the server.
    pub fn handle_data(&mut self, id: ServerId, now: Instant, data: &[u8]) {
        self.now = Some(now);
        self.cluster.node_mut(id).handle_data(now, data);
    }

    /// The server closed the stream.
    pub fn handle_eof(&mut self, id: ServerId, now: Instant) {
        self.now = Some(now);
        self.cluster.node_mut(id).handle_eof(now);
    }

    /// The server's transport failed.
    pub fn handle_transport_error(
        &mut self,
        id: ServerId,
        now: Instant,
        error: &dyn std::fmt::Display,
    ) {
        self.now = Some(now);
        self.cluster.node_mut(id).handle_transport_error(now, error);
    }

    /// Runs one server's due deadlines, heartbeats and reconnect attempts.
    pub fn handle_server_timeout(&mut self, id: ServerId, now: Instant) {
        self.now = Some(now);
        let node = self.cluster.node_mut(id);
        if node.poll_timeout().is_some_and(|at| at <= now) {
            node.handle_timeout(now);
        }
        if self.dialer_due(id, now) {
            self.run_dialer(id, now);
        }
    }

    /// Runs every server's due deadlines, heartbeats and reconnect attempts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        self.cluster.handle_timeout(now);
        for index in 0..self.tracked.len() {
            let id = self.tracked[index];
            if self.dialer_due(id, now) {
                self.run_dialer(id, now);
            }
        }
    }

    fn dialer_due(&self, id: ServerId, now: Instant) -> bool {
        self.dialers
            .get(id.0)
            .and_then(|d| d.as_deref())
            .and_then(Dialer::poll_timeout)
            .is_some_and(|at| at <= now)
    }

    /// The earliest instant any server needs [`ClientCore::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dialers = self
            .tracked
            .iter()
            .filter_map(|id| self.dialers[id.0].as_deref()?.poll_timeout());
        self.cluster.poll_timeout().into_iter().chain(dialers).min()
    }

    /// The earliest instant one server needs [`ClientCore::handle_server_timeout`].
    pub fn server_poll_timeout(&self, id: ServerId) -> Option<Instant> {
        let dialer = self
            .dialers
            .get(id.0)
            .and_then(|d| d.as_deref())
            .and_then(Dialer::poll_timeout);
        self.cluster
            .node(id)
            .poll_timeout()
            .into_iter()
            .chain(dialer)
            .min()
    }

    /// Bytes to write to a server's transport.
    pub fn poll_transmit(&self, id: ServerId) -> &[u8] {
        self.cluster.node(id).poll_transmit()
    }

    /// `n` bytes of [`ClientCore::poll_transmit`] were written.
    pub fn advance_transmit(&mut self, id: ServerId, n: usize) {
        self.cluster.node_mut(id).advance_transmit(n);
    }

    // ----- outputs -----

    /// The next output of any server; servers take turns going first.
    pub fn poll(&mut self) -> Option<ClientOutput<P>> {
        while let Some(&id) = self.with_outputs.front() {
            if let Some(output) = self.dialer_output(id) {
                return Some(output);
            }
            self.with_outputs.pop_front();
            if let Some(dialer) = self.dialer_mut(id) {
                dialer.marked = false;
            }
        }
        loop {
            let (id, output) = self.cluster.poll()?;
            if let Some(output) = self.translate(id, output) {
                return Some(output);
            }
        }
    }

    /// The next output of one server.
    pub fn poll_server(&mut self, id: ServerId) -> Option<ClientOutput<P>> {
        if let Some(output) = self.dialer_output(id) {
            return Some(output);
        }
        loop {
            let output = self.cluster.node_mut(id).poll()?;
            if let Some(output) = self.translate(id, output) {
                return Some(output);
            }
        }
    }

    /// Whether a server has outputs other than events waiting (they are never
    /// dropped: drain them even when there is no time left for events).
    pub fn has_pending_outputs(&self, id: ServerId) -> bool {
        self.cluster.node(id).has_pending_outputs()
            || self
                .dialers
                .get(id.0)
                .and_then(|d| d.as_deref())
                .is_some_and(Dialer::has_outputs)
    }

    /// Whether a server's next output is an event (or it has none): a driver out of
    /// time for listeners stops polling that server there.
    pub fn next_is_event(&self, id: ServerId) -> bool {
        let dialer_first = self
            .dialers
            .get(id.0)
            .and_then(|d| d.as_deref())
            .is_some_and(Dialer::has_outputs);
        !dialer_first && self.cluster.node(id).next_is_event()
    }

    /// Events a server has waiting.
    pub fn queued_events(&self, id: ServerId) -> usize {
        self.cluster.node(id).queued_events()
    }

    // ----- metrics -----

    /// A server's metrics, kept across reconnects.
    pub fn metrics(&self, id: ServerId) -> NodeMetrics {
        self.cluster.node(id).metrics()
    }

    /// Every server's metrics with its key, in registry order.
    pub fn all_metrics(&self) -> Vec<(&str, NodeMetrics)> {
        self.cluster.metrics()
    }

    /// Every server's metrics in the Prometheus text format (with the dialers' of
    /// tracked servers).
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_with(&[])
    }

    /// [`ClientCore::render_prometheus`] with drops of the application's own (see
    /// [`render_prometheus_with`](crate::metrics::render_prometheus_with)).
    pub fn render_prometheus_with(&self, more_drops: &[(&str, &str, u64)]) -> String {
        let mut out = self.cluster.render_prometheus_with(more_drops);
        let dialers: Vec<(&str, DialerStatus)> = self
            .tracked
            .iter()
            .filter_map(|&id| Some((self.key(id), self.dialer_status(id)?)))
            .collect();
        crate::metrics::render_dialers(&dialers, &mut out);
        out
    }

    /// Turns a node output into a client output; `None` for what only the core needs
    /// (reports and circuit transitions are counted and logged below).
    fn translate(&mut self, id: ServerId, output: NodeOutput) -> Option<ClientOutput<P>> {
        Some(match output {
            NodeOutput::Connect => ClientOutput::Connect(id),
            NodeOutput::Health { from, to } => ClientOutput::Health {
                server: id,
                from,
                to,
            },
            NodeOutput::Circuit(_) => return None,
            NodeOutput::Connection(output) => match output {
                Output::Event(event) => {
                    if let Some(dialer) = self.dialer_mut(id) {
                        let before = dialer.live_calls();
                        dialer.on_event(&event.message, event.received_at);
                        self.after_dialer_input(id, before, event.received_at);
                    }
                    ClientOutput::Event(event)
                }
                Output::Completed(completion) => {
                    if let Some(dialer) = self.dialer_mut(id) {
                        let before = dialer.live_calls();
                        let own = dialer.on_completion(&completion);
                        self.after_dialer_input(id, before, completion.completed_at);
                        if own {
                            return None;
                        }
                    }
                    return self.complete(id, completion);
                }
                Output::StateChanged { from, to } => {
                    if to.is_ready()
                        && !from.is_ready()
                        && let Some(now) = self.now
                        && let Some(dialer) = self.dialer_mut(id)
                    {
                        dialer.logged_in(now);
                    }
                    ClientOutput::State {
                        server: id,
                        from,
                        to,
                    }
                }
                Output::Closed(reason) => ClientOutput::Disconnect { server: id, reason },
                Output::Discarded(_) | Output::Unmatched(_) => return None,
            },
        })
    }

    /// After an event or completion reached a dialer: a call that ended may let a
    /// held Originate go, and records may wait.
    fn after_dialer_input(&mut self, id: ServerId, live_before: usize, now: Instant) {
        let freed = self
            .dialer_mut(id)
            .is_some_and(|d| d.has_waiting() && d.live_calls() < live_before);
        if freed {
            self.run_dialer(id, now);
        } else {
            self.mark(id);
        }
    }

    /// Frees the slot of a completed action and hands its payload back.
    fn complete(&mut self, id: ServerId, completion: Completion) -> Option<ClientOutput<P>> {
        let (generation, counter) = action_tag(&completion.action_id)?;
        let slot = self.by_action.remove(&(id, generation, counter))?;
        self.release(id, slot, completion)
    }

    /// Frees `slot`, its action done with `completion`, and hands its payload back.
    fn release(
        &mut self,
        id: ServerId,
        slot: u32,
        completion: Completion,
    ) -> Option<ClientOutput<P>> {
        let entry = &mut self.slots[slot as usize];
        let payload = entry.payload.take()?;
        let ticket = Ticket {
            server: id,
            slot,
            reuse: entry.reuse,
        };
        entry.reuse = entry.reuse.wrapping_add(1);
        self.free.push(slot);
        Some(ClientOutput::Completed {
            ticket,
            payload,
            completion,
        })
    }
}
