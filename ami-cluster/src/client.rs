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
//! A tick of a driver costs what the servers with something to do cost, not what all
//! of them cost: the core keeps every server's next deadline in order, the servers
//! with outputs in a queue of turns, and the servers that changed since the driver
//! last asked ([`ClientCore::poll_timeout`], [`ClientCore::due_servers`],
//! [`ClientCore::take_turn`], [`ClientCore::take_changed`]).
//!
//! Completion slots are bounded by the servers' `max_pending_actions`: a slot exists
//! only for an action the core accepted, and is freed by that action's completion,
//! which the core guarantees (a lost connection completes its actions with
//! `ConnectionClosed`).

use std::collections::HashMap;
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
use crate::schedule::Schedule;

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
        /// The completion: the reply or why there is none (boxed, as in
        /// [`Output::Completed`]).
        completion: Box<Completion>,
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

// As with `ami_proto::Output`: every event is moved in a `ClientOutput` to the driver.
const _: () = assert!(size_of::<ClientOutput<usize>>() <= size_of::<Event>() + 8);

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
    /// Deadlines, turns and changed servers (module `schedule`).
    schedule: Schedule,
    /// Room for the due servers of [`ClientCore::handle_timeout`].
    due: Vec<ServerId>,
    /// The latest instant an input brought (the core never reads the clock).
    now: Option<Instant>,
}

impl<P> ClientCore<P> {
    /// A core over the servers of `config`, all idle.
    pub fn new(config: ClusterConfig) -> Result<Self, ClusterError> {
        let cluster = Cluster::new(config)?;
        let mut schedule = Schedule::default();
        schedule.grow(cluster.len());
        Ok(ClientCore {
            cluster,
            slots: Vec::new(),
            free: Vec::new(),
            by_action: HashMap::new(),
            dialers: Vec::new(),
            tracked: Vec::new(),
            schedule,
            due: Vec::new(),
            now: None,
        })
    }

    /// Tracks the calls of a server and paces its Originates from now on (see
    /// [`dialer`](crate::dialer)); calling it again replaces the limits and starts
    /// a fresh tracker, and the Originates the last dialer held wait on under the
    /// new limits.
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
        // What the last dialer held (Originates waiting or in flight, completions
        // not handed out yet) is the new one's: every slot still completes once.
        if let Some(old) = self.dialers[id.0].take() {
            dialer.adopt(*old);
        }
        self.dialers[id.0] = Some(Box::new(dialer));
        if !self.tracked.contains(&id) {
            self.tracked.push(id);
        }
        self.note(id);
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
        let id = self.cluster.add(server)?;
        self.schedule.grow(self.cluster.len());
        Ok(id)
    }

    /// Adds an idle server with its own reconnect policy.
    pub fn add_with_policy(
        &mut self,
        server: ami_proto::Config,
        policy: crate::node::Policy,
    ) -> Result<ServerId, ClusterError> {
        let id = self.cluster.add_with_policy(server, policy)?;
        self.schedule.grow(self.cluster.len());
        Ok(id)
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
        let id = self.cluster.server(key, now)?;
        self.note(id);
        Ok(id)
    }

    /// The default server, opened if it was idle.
    pub fn default_server(&mut self, now: Instant) -> ServerId {
        let id = self.cluster.default_server(now);
        self.note(id);
        id
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
        self.open_idle(now);
        self.cluster.select(now)
    }

    /// A healthy server chosen by `strategy` instead of the configured one (see
    /// [`Cluster::select_with`]).
    pub fn select_with(
        &mut self,
        strategy: Option<&Strategy<String>>,
        now: Instant,
    ) -> Result<ServerId, NoServerAvailable> {
        self.open_idle(now);
        self.cluster.select_with(strategy, now)
    }

    /// Opens every idle server (what routing does first; as the routing itself, a
    /// pass over every server).
    fn open_idle(&mut self, now: Instant) {
        for id in self.cluster.ids() {
            if self.cluster.node(id).is_idle() {
                self.cluster.node_mut(id).open(now);
                self.note(id);
            }
        }
    }

    /// Opens a server (eager open): it connects now and is kept connected until
    /// [`ClientCore::close`]. A server already open keeps its schedule.
    pub fn open(&mut self, id: ServerId, now: Instant) {
        self.cluster.node_mut(id).open(now);
        self.note(id);
    }

    /// Opens a server only if it was never opened (what a wait does first).
    pub fn open_if_idle(&mut self, id: ServerId, now: Instant) {
        let node = self.cluster.node_mut(id);
        if node.is_idle() {
            node.open(now);
            self.note(id);
        }
    }

    /// Opens every server.
    pub fn open_all(&mut self, now: Instant) {
        self.cluster.connect_all(now);
        for id in self.cluster.ids() {
            self.note(id);
        }
    }

    /// Logs a server off and stops reconnecting it until [`ClientCore::open`].
    pub fn close(&mut self, id: ServerId, now: Instant) {
        self.cluster.node_mut(id).close(now);
        self.fail_waiting(id, now);
        self.note(id);
    }

    /// Completes the Originates a closed server's dialer held.
    fn fail_waiting(&mut self, id: ServerId, now: Instant) {
        let state = self.cluster.node(id).state();
        if let Some(dialer) = self.dialer_mut(id) {
            let error = ActionError::NotSent(SendError::NotReady { state });
            dialer.fail_waiting(&error, now);
        }
    }

    /// Logs every server off; none reconnects.
    pub fn close_all(&mut self, now: Instant) {
        self.cluster.close_all(now);
        for id in self.tracked.clone() {
            self.fail_waiting(id, now);
        }
        for id in self.cluster.ids() {
            self.note(id);
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
        let sent = if is_originate(&action) && self.dialer_mut(id).is_some() {
            self.send_originate(id, now, action, payload)
        } else {
            match self.cluster.node_mut(id).send(now, action) {
                Ok(action_id) => {
                    let slot = self.take_slot(payload);
                    Ok(self.bind(id, &action_id, slot))
                }
                Err(error) => Err(Refused { error, payload }),
            }
        };
        // Bytes to write, a deadline, or a lazy open.
        self.note(id);
        sent
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
        self.note(id);
    }

    /// After anything that may have changed a server: its deadline again, a turn if
    /// it has outputs, and a note for the driver (bytes to write).
    fn note(&mut self, id: ServerId) {
        self.reschedule(id);
        if self.has_outputs(id) {
            self.schedule.add_turn(id.0);
        }
    }

    /// A server's deadline again, and a note for the driver.
    fn reschedule(&mut self, id: ServerId) {
        let at = self.server_poll_timeout(id);
        self.schedule.set_deadline(id.0, at);
        self.schedule.change(id.0);
    }

    /// Whether a server has any output waiting, events included.
    fn has_outputs(&self, id: ServerId) -> bool {
        let node = self.cluster.node(id);
        node.queued_events() > 0
            || node.has_pending_outputs()
            || self
                .dialers
                .get(id.0)
                .and_then(|d| d.as_deref())
                .is_some_and(Dialer::has_outputs)
    }

    /// A tracked server's next dialer output: a held Originate's completion, or an
    /// ended call.
    fn dialer_output(&mut self, id: ServerId) -> Option<ClientOutput<P>> {
        let dialer = self.dialers.get_mut(id.0)?.as_deref_mut()?;
        if let Some((slot, completion)) = dialer.failed.pop_front() {
            return self.release(id, slot, Box::new(completion));
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
        let server = match self.select_with(strategy, now) {
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
        self.note(id);
    }

    /// Bytes arrived from the server.
    pub fn handle_data(&mut self, id: ServerId, now: Instant, data: &[u8]) {
        self.now = Some(now);
        self.cluster.node_mut(id).handle_data(now, data);
        self.note(id);
    }

    /// The server closed the stream.
    pub fn handle_eof(&mut self, id: ServerId, now: Instant) {
        self.now = Some(now);
        self.cluster.node_mut(id).handle_eof(now);
        self.note(id);
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
        self.note(id);
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
        self.note(id);
    }

    /// Runs every server's due deadlines, heartbeats and reconnect attempts (the
    /// servers due only, found in the ordered deadlines).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let mut due = std::mem::take(&mut self.due);
        self.due_servers(now, &mut due);
        for &id in &due {
            self.handle_server_timeout(id, now);
        }
        due.clear();
        self.due = due;
    }

    /// Appends the servers whose deadline is at or before `now` to `out`, earliest
    /// first: the ones [`ClientCore::handle_server_timeout`] has work for. Costs what
    /// the due servers cost.
    pub fn due_servers(&self, now: Instant, out: &mut Vec<ServerId>) {
        out.extend(self.schedule.due(now).map(ServerId));
    }

    fn dialer_due(&self, id: ServerId, now: Instant) -> bool {
        self.dialers
            .get(id.0)
            .and_then(|d| d.as_deref())
            .and_then(Dialer::poll_timeout)
            .is_some_and(|at| at <= now)
    }

    /// The earliest instant any server needs [`ClientCore::handle_timeout`] (the
    /// first of the ordered deadlines: no pass over the servers).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.schedule.next_deadline()
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
        self.schedule.change(id.0);
    }

    /// Calls `each` with every server changed since the last call (an input, a
    /// send, a timeout, an output polled), each once: the servers that may have
    /// bytes to write ([`ClientCore::poll_transmit`]). A driver that writes only
    /// where something changed visits these.
    pub fn take_changed(&mut self, mut each: impl FnMut(ServerId)) {
        self.schedule.take_changed(|index| each(ServerId(index)));
    }

    /// Whether some server has outputs waiting (see [`ClientCore::take_turn`]).
    pub fn has_turns(&self) -> bool {
        self.schedule.turns() > 0
    }

    /// Servers with outputs waiting for their turn.
    pub fn turns(&self) -> usize {
        self.schedule.turns()
    }

    /// The server whose turn it is to hand out its outputs: poll it with
    /// [`ClientCore::poll_server`], then give it back with [`ClientCore::end_turn`],
    /// which puts it at the back of the queue if it still has outputs (so that the
    /// server cut short by a driver's time budget is not the first again). Servers
    /// with no outputs are not in the queue.
    pub fn take_turn(&mut self) -> Option<ServerId> {
        self.schedule.take_turn().map(ServerId)
    }

    /// Ends the turn of a server taken with [`ClientCore::take_turn`]: back in the
    /// queue, at the end, if it has outputs left.
    pub fn end_turn(&mut self, id: ServerId) {
        if self.has_outputs(id) {
            self.schedule.add_turn(id.0);
        }
    }

    // ----- outputs -----

    /// The next output of any server; servers take turns, one output each (only
    /// the servers with outputs are looked at).
    pub fn poll(&mut self) -> Option<ClientOutput<P>> {
        while let Some(id) = self.take_turn() {
            let output = self.poll_server(id);
            self.end_turn(id);
            if output.is_some() {
                return output;
            }
        }
        None
    }

    /// The next output of one server.
    pub fn poll_server(&mut self, id: ServerId) -> Option<ClientOutput<P>> {
        if let Some(output) = self.dialer_output(id) {
            self.reschedule(id);
            return Some(output);
        }
        loop {
            let output = self.cluster.node_mut(id).poll()?;
            // An event of an untracked server changes nothing else; anything else
            // may (a connect lets bytes out, a dialer may send or arm a timer).
            let quiet = matches!(output, NodeOutput::Connection(Output::Event(_)))
                && self.dialers.get(id.0).is_none_or(Option::is_none);
            if !quiet {
                self.reschedule(id);
            }
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
            self.note(id);
        }
    }

    /// Frees the slot of a completed action and hands its payload back.
    fn complete(&mut self, id: ServerId, completion: Box<Completion>) -> Option<ClientOutput<P>> {
        let (generation, counter) = action_tag(&completion.action_id)?;
        let slot = self.by_action.remove(&(id, generation, counter))?;
        self.release(id, slot, completion)
    }

    /// Frees `slot`, its action done with `completion`, and hands its payload back.
    fn release(
        &mut self,
        id: ServerId,
        slot: u32,
        completion: Box<Completion>,
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
