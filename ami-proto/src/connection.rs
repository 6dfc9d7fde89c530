//! The connection state machine: one AMI session, without I/O.
//!
//! Methods come in four kinds (as in quinn-proto):
//! - inputs: [`handle_connected`](Connection::handle_connected),
//!   [`handle_data`](Connection::handle_data), [`handle_eof`](Connection::handle_eof),
//!   [`handle_transport_error`](Connection::handle_transport_error),
//!   [`handle_timeout`](Connection::handle_timeout);
//! - mutators: [`send`](Connection::send), [`close`](Connection::close);
//! - outputs: [`poll`](Connection::poll) (state changes, completions, reports, events,
//!   in wire order),
//!   [`poll_transmit`](Connection::poll_transmit) / [`advance_transmit`](Connection::advance_transmit)
//!   (bytes for the socket), [`poll_timeout`](Connection::poll_timeout) (the next deadline);
//! - getters: [`state`](Connection::state), [`stats`](Connection::stats), ...
//!
//! After any input or mutator, write out `poll_transmit`, drain `poll`, and arm a
//! timer for `poll_timeout`.
//!
//! ## Output order
//! [`poll`](Connection::poll) hands outputs out in the order their causes arrived: a
//! message in wire order, a timeout or a mutator when it happened. So the `Newchannel`
//! events that Asterisk sent before an Originate's `OriginateResponse` come out before
//! that Originate's completion. Two rules refine this:
//! - **Priority events** (`Config::priority_events`) go ahead of ordinary events:
//!   whenever the oldest queued event is due, the one that comes out is the oldest
//!   priority event if one waits. A priority event may thus also pass the other
//!   outputs (completions, state changes, reports) that arrived after the oldest
//!   ordinary event still queued, never one that arrived before every queued event.
//!   Without priority events the order is exactly the order of arrival.
//! - [`Output::Closed`] is the very last output: everything that arrived before the
//!   close comes out first, and nothing comes after it.
//!
//! Events may be dropped (oldest first) when the queue is full; nothing else is.
//!
//! Lifecycle (plan §15–16): `Connecting` → `AwaitingBanner` → `Authenticating`
//! (plain `Login`, or `Challenge` then MD5 `Login`) → `Healthy` ⇄ `Degraded`
//! (missed heartbeats) → `Closing` (`Logoff` sent) → `Closed`. Each change comes out as
//! [`Output::StateChanged`]; the end as [`Output::Closed`], after every pending action
//! has been failed with the reason.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::action::{self, Action};
use crate::budget::{
    ACTION_OVERHEAD, Charge, INPUT_EXEMPTION, MESSAGE_OVERHEAD, MemoryBudget, TRIM_CAPACITY,
};
use crate::config::{AuthMethod, Config};
use crate::correlation::{ActionIds, Completion, Pending, Progress, Purpose, Registry, Reply};
use crate::error::{ActionError, CloseReason, SendError, Stage};
use crate::events::{Event, EventCounters, EventQueue, Pushed, Source};
use crate::message::{Message, MessageKind};
use crate::parser::{Discard, ParseError, Parsed, Parser};
use crate::redact::Redactor;
use crate::timers::{self, Timer, TimerTable};

/// What the banner of an Asterisk manager interface starts with.
const BANNER_PREFIX: &str = "Asterisk Call Manager/";

/// Reports ([`Output::Discarded`], [`Output::Unmatched`]) held for the application at
/// most; past this (or when the memory budget cannot take them) they are only counted
/// in [`Stats`].
const MAX_QUEUED_REPORTS: usize = 1024;

/// At most one warning per interval for one kind of bad input; what it holds back in
/// between is counted and reported with the next line (like the event queue's drop
/// warning).
#[derive(Debug, Default)]
struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// Whether to log one more occurrence at `now`: `Some(n)` when a line is due, `n`
    /// being the occurrences held back since the last line; `None` to stay quiet.
    fn check(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= interval);
        if due {
            self.last = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Whether a message is a broadcast event: those carry `Privilege:`, list items and
/// responses do not (PROTOCOL-NOTES 21). A broadcast may carry our ActionID (the
/// `UserEvent` action copies it) and is then still news for the application.
fn is_broadcast(message: &Message) -> bool {
    message.kind() == MessageKind::Event && message.get("Privilege").is_some()
}

/// What a queued report holds of the memory budget.
fn report_size(output: &Output) -> usize {
    match output {
        Output::Unmatched(message) => message.charged_size(),
        _ => MESSAGE_OVERHEAD,
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The transport is connecting.
    Connecting,
    /// Connected; waiting for the `Asterisk Call Manager/...` banner.
    AwaitingBanner,
    /// Logging in.
    Authenticating,
    /// Logged in; heartbeats answered.
    Healthy,
    /// Logged in, but the last heartbeat went unanswered.
    Degraded,
    /// `Logoff` sent; waiting for `Goodbye` or end of stream.
    Closing,
    /// Closed for good. Start a new `Connection` to reconnect.
    Closed,
}

impl State {
    /// Whether actions can be sent (logged in, not closing).
    pub fn is_ready(self) -> bool {
        matches!(self, State::Healthy | State::Degraded)
    }
}

/// One output of the connection, from [`Connection::poll`].
///
/// Exhaustive on purpose: whoever drives it must handle every output, so a new kind
/// of output is a breaking change that their `match` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The state changed.
    StateChanged {
        /// The state before.
        from: State,
        /// The state now.
        to: State,
    },
    /// An action sent with [`Connection::send`] completed. (Boxed: a completion is
    /// 208 bytes, and every output, events first, is moved through each layer above.)
    Completed(Box<Completion>),
    /// The parser discarded input (also counted in [`Stats`]).
    Discarded(Discard),
    /// A response (or message of unknown kind) that completes nothing: it names no
    /// pending action of this connection (also counted in [`Stats`]).
    Unmatched(Message),
    /// An event, in wire order with the other outputs (priority events go ahead of
    /// ordinary ones; see [the module documentation](self#output-order)).
    Event(Event),
    /// The connection closed; nothing more will happen on it.
    Closed(CloseReason),
}

// Every event is moved in an `Output` through each layer above the connection: an
// output no larger than an event keeps those moves cheap (see `Output::Completed`).
const _: () = assert!(size_of::<Output>() <= size_of::<Event>() + 8);

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes handed to [`Connection::handle_data`].
    pub bytes_received: u64,
    /// Bytes taken by [`Connection::advance_transmit`].
    pub bytes_sent: u64,
    /// Messages parsed.
    pub messages: u64,
    /// Event queue counters (queued, dropped oldest, dropped for memory, blocked).
    pub events: EventCounters,
    /// Discards reported by the parser.
    pub discards: u64,
    /// Bytes the parser discarded.
    pub discarded_bytes: u64,
    /// Responses that completed nothing.
    pub unmatched: u64,
    /// Replies (late responses, rest of a list) to actions that had already completed.
    pub late_replies: u64,
    /// Reports dropped because the application did not poll them in time.
    pub reports_dropped: u64,
    /// Actions completed successfully.
    pub completed: u64,
    /// Actions completed with an error (timeouts included).
    pub failed: u64,
    /// Actions whose deadline ran out.
    pub timeouts: u64,
    /// Actions refused by [`Connection::send`].
    pub refused: u64,
    /// Heartbeats that went unanswered.
    pub heartbeat_misses: u64,
}

/// One AMI session. See the [module documentation](self).
///
/// `Debug` shows the state and sizes, never buffer contents (they hold the login).
pub struct Connection {
    config: Config,
    server_key: Arc<str>,
    /// The config's policy plus the configured secret's value.
    redactor: Arc<Redactor>,
    /// The server key and the memory budget, shared with every event.
    source: Arc<Source>,
    state: State,
    parser: Parser,
    ids: ActionIds,
    registry: Registry,
    events: EventQueue,
    /// Every output but events, in order, each with the number of events queued
    /// before it ([`EventCounters::queued`] then): an event whose queue index is lower
    /// arrived first and comes out first.
    outputs: VecDeque<(u64, Output)>,
    /// Reports among `outputs`.
    queued_reports: usize,
    transmit: Vec<u8>,
    /// Bytes of `transmit` already taken by the driver.
    transmitted: usize,
    /// The budget's charge for the input the parser holds (`parser.buffered()` bytes
    /// after each input).
    input_charge: Charge,
    /// The budget's charge for `transmit` (`transmit.len()` bytes).
    transmit_charge: Charge,
    /// The budget's charge for the reports among `outputs`.
    reports_charge: Charge,
    timers: TimerTable,
    heartbeat_misses: u32,
    /// The counter of the last heartbeat `Ping` sent.
    heartbeat: Option<u64>,
    banner: Option<String>,
    logged_in_at: Option<Instant>,
    close_reason: Option<CloseReason>,
    stats: Stats,
    /// Rate limits of the warnings about discarded input, unmatched responses and
    /// late replies.
    discard_warnings: WarnLimit,
    unmatched_warnings: WarnLimit,
    late_warnings: WarnLimit,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server_key", &self.server_key)
            .field("state", &self.state)
            .field("pending_actions", &self.registry.user_pending())
            .field("queued_events", &self.events.len())
            .field("queued_transmit", &self.queued_transmit())
            .field("buffered_input", &self.parser.buffered())
            .field("budget", &self.config.budget)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection whose transport starts connecting at `now`.
    ///
    /// `instance` tags this client among others that talk to the same server (drivers
    /// pick it at random once per process); `generation` counts the connections made to
    /// this server. Both go into every ActionID, so that no two connections share one.
    pub fn new(config: Config, instance: u32, generation: u64, now: Instant) -> Self {
        let mut timers = TimerTable::default();
        timers.arm(Timer::Connect, now, config.connect_timeout);
        let server_key: Arc<str> = Arc::from(config.server_key.as_str());
        Connection {
            source: Arc::new(Source {
                server_key: server_key.clone(),
                budget: config.budget.clone(),
            }),
            server_key,
            redactor: Arc::new(config.redactor.as_ref().clone().with_secret(&config.secret)),
            state: State::Connecting,
            parser: Parser::new(config.limits),
            ids: ActionIds::new(&config.server_key, instance, generation),
            registry: Registry::default(),
            events: EventQueue::new(
                config.event_queue_capacity,
                &config.blocked_events,
                &config.priority_events,
                config.event_drop_log_interval,
            ),
            outputs: VecDeque::new(),
            queued_reports: 0,
            transmit: Vec::new(),
            transmitted: 0,
            input_charge: config.budget.empty_charge(),
            transmit_charge: config.budget.empty_charge(),
            reports_charge: config.budget.empty_charge(),
            timers,
            heartbeat_misses: 0,
            heartbeat: None,
            banner: None,
            logged_in_at: None,
            close_reason: None,
            stats: Stats::default(),
            discard_warnings: WarnLimit::default(),
            unmatched_warnings: WarnLimit::default(),
            late_warnings: WarnLimit::default(),
            config,
        }
    }

    // ----- getters -----

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The server key.
    pub fn server_key(&self) -> &Arc<str> {
        &self.server_key
    }

    /// The redaction policy of this connection: the config's
    /// [`redactor`](Config::redactor) plus the configured secret's value. Everything
    /// the connection logs and every error and close reason it returns went through
    /// it; drivers format server text they log (e.g. an event) with it too.
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    /// The memory budget this connection charges ([`Config::budget`]).
    pub fn budget(&self) -> &MemoryBudget {
        &self.config.budget
    }

    /// The banner, once received (e.g. `Asterisk Call Manager/11.0.0`).
    pub fn banner(&self) -> Option<&str> {
        self.banner.as_deref()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// When the login succeeded; `None` if this connection never logged in. Stays set
    /// after the connection closes, so a driver can tell a lost session from a failed
    /// attempt.
    pub fn logged_in_at(&self) -> Option<Instant> {
        self.logged_in_at
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        stats.events = self.events.counters();
        stats
    }

    /// Actions sent with [`send`](Self::send) still awaiting completion.
    pub fn pending_actions(&self) -> usize {
        self.registry.user_pending()
    }

    /// Whether outputs other than events (completions, state changes, reports) wait
    /// to be polled. They are never dropped, so a driver drains them even when it has
    /// no time left for events; since outputs keep wire order, reaching one may take
    /// polling the events queued before it first (at most the queue's capacity).
    pub fn has_pending_outputs(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Whether the next output [`poll`](Self::poll) returns is an event (or there is
    /// none): a driver out of time for listeners stops there, and still hands out
    /// the other outputs that come before any event.
    pub fn next_is_event(&self) -> bool {
        match (self.outputs.front(), self.events.oldest_index()) {
            (Some(&(queued_before, _)), Some(oldest)) => oldest < queued_before,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// Events waiting to be polled.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// Bytes waiting to be written.
    pub fn queued_transmit(&self) -> usize {
        self.transmit.len() - self.transmitted
    }

    /// Bytes the parser holds for a message in progress.
    pub fn buffered_input(&self) -> usize {
        self.parser.buffered()
    }

    // ----- inputs -----

    /// The transport connected: the banner deadline starts.
    pub fn handle_connected(&mut self, now: Instant) {
        if self.state != State::Connecting {
            return;
        }
        self.timers.stop(Timer::Connect);
        self.timers
            .arm(Timer::Banner, now, self.config.read_timeout);
        self.set_state(State::AwaitingBanner);
    }

    /// Bytes arrived from the server at `now`.
    pub fn handle_data(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        if self.state == State::Connecting {
            // Data proves the transport is up even if the driver did not say so.
            self.handle_connected(now);
        }
        self.stats.bytes_received += data.len() as u64;
        let mut parser = std::mem::replace(&mut self.parser, Parser::new(self.config.limits));
        parser.feed(data, &mut |item| self.handle_parsed(now, item));
        self.parser = parser;
        self.fail_discarded_reply(now);
        self.charge_input(now);
    }

    /// The server closed the connection (end of stream).
    pub fn handle_eof(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let mut parser = std::mem::replace(&mut self.parser, Parser::new(self.config.limits));
        parser.finish(&mut |item| self.handle_parsed(now, item));
        self.charge_input(now);
        let reason = if self.state == State::Closing {
            CloseReason::Graceful
        } else {
            CloseReason::PeerClosed
        };
        self.close_with(now, reason);
    }

    /// The transport failed; the connection closes with `error` as the reason.
    pub fn handle_transport_error(&mut self, now: Instant, error: &dyn std::fmt::Display) {
        self.close_with(now, CloseReason::Transport(error.to_string()));
    }

    /// Time passed: runs every timer and action deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.take_expired(now) {
            match timer {
                Timer::Connect => self.close_with(now, CloseReason::ConnectTimeout),
                Timer::Banner => self.close_with(now, CloseReason::BannerTimeout),
                Timer::Heartbeat => {
                    self.arm_heartbeat(now);
                    let timeout = self.config.heartbeat_timeout;
                    // A heartbeat without a deadline never misses: while one is still
                    // unanswered, more would only pile up in the registry.
                    let unanswered = self
                        .heartbeat
                        .is_some_and(|counter| self.registry.contains(counter));
                    if !(unanswered && timers::deadline(now, timeout).is_none()) {
                        self.heartbeat = self.send_internal(
                            now,
                            action::Ping.into(),
                            Purpose::Heartbeat,
                            timeout,
                        );
                    }
                }
            }
        }
        while let Some((_, pending)) = self.registry.pop_expired(now) {
            let error = pending.timeout_error();
            self.stats.timeouts += 1;
            self.finish(now, pending, Err(error));
        }
    }

    // ----- mutators -----

    /// Sends an action; returns the ActionID it was sent with. Its completion comes
    /// out of [`poll`](Self::poll) as [`Output::Completed`], exactly once.
    pub fn send(&mut self, now: Instant, action: impl Into<Action>) -> Result<String, SendError> {
        let action = action.into();
        let result = self.try_send(now, &action);
        match &result {
            Ok(action_id) => {
                tracing::debug!(server_key = %self.server_key, action_id = %action_id, action = self.redactor.mask_text(action.name()).as_ref(), "action sent");
            }
            Err(error) => {
                self.stats.refused += 1;
                tracing::warn!(server_key = %self.server_key, action = self.redactor.mask_text(action.name()).as_ref(), error = %self.redactor.mask_text(&error.to_string()), "action refused");
            }
        }
        result
    }

    fn try_send(&mut self, now: Instant, action: &Action) -> Result<String, SendError> {
        if !self.state.is_ready() {
            return Err(SendError::NotReady { state: self.state });
        }
        let limit = self.config.max_pending_actions;
        if self.registry.user_pending() >= limit {
            return Err(SendError::TooManyPending { limit });
        }
        let timeout = action.timeout().unwrap_or(self.config.action_timeout);
        let before = self.transmit.len();
        let (counter, action_id) = self.ids.next_id();
        action.encode(&action_id, &mut self.transmit)?;
        let buffered = self.transmit.len() - self.transmitted;
        if buffered > self.config.write_buffer_limit {
            self.transmit.truncate(before);
            return Err(SendError::Backpressure {
                buffered: before - self.transmitted,
                limit: self.config.write_buffer_limit,
            });
        }
        // The encoded bytes, and the pending entry and its completion.
        let encoded = self.transmit.len() - before;
        let mut charge = match self.config.budget.try_charge(encoded + ACTION_OVERHEAD) {
            Ok(charge) => charge,
            Err(refused) => {
                self.transmit.truncate(before);
                return Err(SendError::MemoryLimit {
                    used: refused.used,
                    limit: refused.limit,
                });
            }
        };
        charge.move_to(&mut self.transmit_charge, encoded);
        self.register(
            now,
            (counter, action_id.clone()),
            action,
            Purpose::User,
            timeout,
            Some(charge),
        );
        Ok(action_id)
    }

    /// Closes gracefully: sends `Logoff` and waits for `Goodbye` (or end of stream)
    /// until the close deadline. Actions already sent still complete (Asterisk answers
    /// them before the `Goodbye`); new ones are refused.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Connecting | State::AwaitingBanner => {
                self.close_with(now, CloseReason::Graceful)
            }
            State::Authenticating | State::Healthy | State::Degraded => {
                self.timers.stop(Timer::Heartbeat);
                let timeout = self.config.close_timeout;
                self.send_internal(now, action::Logoff.into(), Purpose::Logoff, timeout);
                self.set_state(State::Closing);
            }
            State::Closing | State::Closed => {}
        }
    }

    // ----- outputs -----

    /// The next output, in the order the causes arrived (priority events ahead of
    /// ordinary ones; see [the module documentation](self#output-order)).
    /// [`Output::Closed`] always comes last.
    pub fn poll(&mut self) -> Option<Output> {
        if self.next_is_event() {
            return self.events.pop().map(Output::Event);
        }
        let (_, output) = self.outputs.pop_front()?;
        if matches!(output, Output::Discarded(_) | Output::Unmatched(_)) {
            self.queued_reports -= 1;
            self.reports_charge.shrink(report_size(&output));
        }
        Some(output)
    }

    /// Bytes to write to the socket (empty when there are none). After writing `n` of
    /// them, call [`advance_transmit(n)`](Self::advance_transmit); the rest stays at the
    /// head of the buffer for the next write.
    pub fn poll_transmit(&self) -> &[u8] {
        &self.transmit[self.transmitted..]
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit) were written.
    pub fn advance_transmit(&mut self, n: usize) {
        let n = n.min(self.queued_transmit());
        self.transmitted += n;
        self.stats.bytes_sent += n as u64;
        if self.transmitted == self.transmit.len() {
            self.transmit.clear();
            self.transmitted = 0;
            if self.transmit.capacity() > TRIM_CAPACITY {
                self.transmit = Vec::new();
            }
        } else if self.transmitted > 64 * 1024 && self.transmitted * 2 > self.transmit.len() {
            // Reclaim the written head once it is most of the buffer.
            self.transmit.drain(..self.transmitted);
            self.transmitted = 0;
        }
        self.transmit_charge.shrink_to(self.transmit.len());
    }

    /// The next deadline: call [`handle_timeout`](Self::handle_timeout) at that
    /// instant (or after). `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.registry.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- internals -----

    fn handle_parsed(&mut self, now: Instant, item: Parsed) {
        if self.state == State::Closed {
            return;
        }
        match item {
            Parsed::Banner(text) => self.handle_banner(now, text),
            Parsed::Message(message) if self.state == State::AwaitingBanner => {
                let first_line = self
                    .redactor
                    .mask_text(message.as_str().lines().next().unwrap_or_default())
                    .chars()
                    .take(80)
                    .collect();
                self.close_with(now, CloseReason::NotAmi { first_line });
            }
            Parsed::Message(message) => {
                self.stats.messages += 1;
                tracing::trace!(server_key = %self.server_key, message = ?self.redactor.message(&message), "received");
                self.route(now, message);
            }
            Parsed::Discarded(discard) => self.handle_discard(now, discard),
        }
    }

    fn handle_banner(&mut self, now: Instant, text: String) {
        if self.state != State::AwaitingBanner || !text.starts_with(BANNER_PREFIX) {
            let first_line = self.redactor.mask_text(&text).chars().take(80).collect();
            self.close_with(now, CloseReason::NotAmi { first_line });
            return;
        }
        tracing::debug!(server_key = %self.server_key, banner = %self.redactor.mask_text(&text), "banner");
        self.banner = Some(text);
        self.timers.stop(Timer::Banner);
        self.set_state(State::Authenticating);
        let timeout = self.config.read_timeout;
        match self.config.auth {
            AuthMethod::Plain => {
                let login =
                    action::Login::new(self.config.username.clone(), self.config.secret.clone())
                        .with_events(self.config.events.clone());
                self.send_internal(now, login.into(), Purpose::Login, timeout);
            }
            AuthMethod::Md5 => {
                self.send_internal(now, action::Challenge.into(), Purpose::Challenge, timeout);
            }
        }
    }

    /// The parser is skipping a message that named one of our actions (e.g. command
    /// output over its limit): that reply is lost, so the action fails now, not when the
    /// rest of the message has passed (a large output takes a while, and the deadline
    /// may run out first). The discard's report still comes when it ends.
    fn fail_discarded_reply(&mut self, now: Instant) {
        let Some(discard) = self.parser.discard_in_progress() else {
            return;
        };
        let Some(counter) = discard
            .action_id
            .as_deref()
            .and_then(|id| self.ids.counter_of(id))
        else {
            return;
        };
        let error = ActionError::Discarded(discard.error.clone());
        if let Some(pending) = self.registry.remove(counter) {
            self.finish(now, pending, Err(error));
        }
    }

    fn handle_discard(&mut self, now: Instant, discard: Discard) {
        self.stats.discards += 1;
        self.stats.discarded_bytes += discard.bytes;
        let interval = self.config.event_drop_log_interval;
        if let Some(suppressed) = self.discard_warnings.check(now, interval) {
            tracing::warn!(
                server_key = %self.server_key,
                action_id = self.redactor.mask_text(discard.action_id.as_deref().unwrap_or("")).as_ref(),
                error = %discard.error,
                bytes = discard.bytes,
                suppressed,
                discards_total = self.stats.discards,
                "input discarded"
            );
        }
        let counter = discard
            .action_id
            .as_deref()
            .and_then(|id| self.ids.counter_of(id));
        if let Some(pending) = counter.and_then(|counter| self.registry.remove(counter)) {
            self.finish(
                now,
                pending,
                Err(ActionError::Discarded(discard.error.clone())),
            );
        }
        self.report(Output::Discarded(discard));
    }

    /// Hands a message to the action it belongs to, or to the application.
    fn route(&mut self, now: Instant, message: Message) {
        let counter = message.action_id().and_then(|id| self.ids.counter_of(id));
        let message = match counter
            .and_then(|counter| self.registry.get_mut(counter).map(|p| (counter, p)))
        {
            Some((counter, pending)) => {
                let old_deadline = pending.deadline;
                let progress = match message.kind() {
                    MessageKind::Event => {
                        pending.on_event(message, self.config.max_list_items, now)
                    }
                    _ => pending.on_response(message, now),
                };
                match progress {
                    Progress::Continue => {
                        self.registry.reschedule(counter, old_deadline);
                        return;
                    }
                    Progress::Done(result) => {
                        if let Some(pending) = self.registry.remove(counter) {
                            self.finish(now, pending, result);
                        }
                        return;
                    }
                    Progress::NotMine(message) => message,
                }
            }
            None if counter.is_some() && !is_broadcast(&message) => {
                // Ours, but its action already completed (timed out, failed early):
                // a late response or the rest of a list. Counted, never delivered as
                // if it were news.
                self.stats.late_replies += 1;
                let interval = self.config.event_drop_log_interval;
                if let Some(suppressed) = self.late_warnings.check(now, interval) {
                    tracing::warn!(
                        server_key = %self.server_key,
                        action_id = self.redactor.mask_text(message.action_id().unwrap_or("")).as_ref(),
                        suppressed,
                        late_replies_total = self.stats.late_replies,
                        "late reply dropped"
                    );
                }
                return;
            }
            None => message,
        };
        if message.kind() == MessageKind::Event {
            let event = Event::new(self.source.clone(), now, message);
            match self.events.push(event, now) {
                Pushed::DroppedOldest {
                    warn: true,
                    dropped_since_warning,
                } => {
                    tracing::warn!(
                        server_key = %self.server_key,
                        queue_depth = self.events.len(),
                        dropped = dropped_since_warning,
                        dropped_total = self.events.counters().dropped,
                        "event queue full: dropped the oldest events"
                    );
                }
                Pushed::MemoryLimit {
                    warn: true,
                    dropped_since_warning,
                    ..
                } => self.warn_memory_drops(dropped_since_warning),
                _ => {}
            }
        } else {
            self.stats.unmatched += 1;
            let interval = self.config.event_drop_log_interval;
            if let Some(suppressed) = self.unmatched_warnings.check(now, interval) {
                tracing::warn!(
                    server_key = %self.server_key,
                    action_id = self.redactor.mask_text(message.action_id().unwrap_or("")).as_ref(),
                    suppressed,
                    unmatched_total = self.stats.unmatched,
                    "unmatched response"
                );
            }
            self.report(Output::Unmatched(message));
        }
    }

    fn warn_memory_drops(&self, dropped_since_warning: u64) {
        tracing::warn!(
            server_key = %self.server_key,
            queue_depth = self.events.len(),
            dropped = dropped_since_warning,
            dropped_total = self.events.counters().dropped_memory,
            used = self.config.budget.used(),
            limit = self.config.budget.limit(),
            "memory budget exhausted: dropped the oldest events"
        );
    }

    /// Charges the start of a message the parser holds after an input. When the budget
    /// is short, the oldest queued events are dropped to make room (they are older than
    /// the message in progress); when that is not enough, the message is discarded up to
    /// its end ([`ParseError::MemoryLimit`]), unless it is at most [`INPUT_EXEMPTION`]
    /// bytes while one of the connection's own actions awaits its reply.
    fn charge_input(&mut self, now: Instant) {
        let held = self.parser.buffered();
        let more = held.saturating_sub(self.input_charge.bytes());
        if more == 0 {
            self.input_charge.shrink_to(held);
            return;
        }
        if self.input_charge.try_grow(more).is_ok() {
            return;
        }
        let budget = self.config.budget.clone();
        let charge = &mut self.input_charge;
        let room = self
            .events
            .make_room(&budget, more, || charge.try_grow(more).is_ok());
        if room.dropped > 0
            && let (true, dropped) = self.events.memory_warning(room.dropped, now)
        {
            self.warn_memory_drops(dropped);
        }
        if room.charged {
            return;
        }
        if held <= INPUT_EXEMPTION && self.registry.internal_pending() > 0 {
            self.input_charge.grow_unchecked(more);
            return;
        }
        self.parser.discard_held(ParseError::MemoryLimit {
            used: budget.used(),
            limit: budget.limit(),
        });
        self.input_charge.shrink_to(0);
    }

    /// Completes `pending` (already out of the registry) with `result`.
    fn finish(&mut self, now: Instant, pending: Pending, result: Result<Reply, ActionError>) {
        match pending.purpose {
            Purpose::User => {
                if result.is_ok() {
                    self.stats.completed += 1;
                } else {
                    self.stats.failed += 1;
                }
                tracing::debug!(server_key = %self.server_key, action_id = %pending.action_id, ok = result.is_ok(), "action completed");
                // The server's text in an error is returned with the secret masked.
                let result = result.map_err(|error| self.redactor.mask_error(error));
                self.push_output(Output::Completed(Box::new(Completion::new(
                    pending.action_id,
                    pending.sent_at,
                    now,
                    result,
                    pending.charge,
                ))));
            }
            // Closing: the Logoff is on its way; log in no further.
            Purpose::Challenge | Purpose::Login if self.state == State::Closing => {}
            Purpose::Challenge => match result {
                Ok(reply) => {
                    let challenge = reply.response.get("Challenge").unwrap_or_default();
                    let login = action::LoginMd5::new(
                        self.config.username.clone(),
                        challenge,
                        &self.config.secret,
                    )
                    .with_events(self.config.events.clone());
                    let timeout = self.config.read_timeout;
                    self.send_internal(now, login.into(), Purpose::Login, timeout);
                }
                Err(error) => self.login_failed(now, error),
            },
            Purpose::Login => match result {
                Ok(_) => {
                    self.heartbeat_misses = 0;
                    self.logged_in_at = Some(now);
                    self.arm_heartbeat(now);
                    self.set_state(State::Healthy);
                }
                Err(error) => self.login_failed(now, error),
            },
            Purpose::Heartbeat => match result {
                // Any answer, even an error, proves the session is alive.
                Ok(_) | Err(ActionError::Rejected { .. }) => {
                    self.heartbeat_misses = 0;
                    if self.state == State::Degraded {
                        self.set_state(State::Healthy);
                    }
                }
                Err(ActionError::Timeout { .. }) => {
                    self.heartbeat_misses += 1;
                    self.stats.heartbeat_misses += 1;
                    tracing::warn!(server_key = %self.server_key, misses = self.heartbeat_misses, "heartbeat unanswered");
                    if self.state == State::Closing {
                        // The Logoff deadline decides now.
                    } else if self.heartbeat_misses >= self.config.heartbeat_max_misses {
                        self.close_with(
                            now,
                            CloseReason::HeartbeatTimeout {
                                misses: self.heartbeat_misses,
                            },
                        );
                    } else if self.state == State::Healthy {
                        self.set_state(State::Degraded);
                    }
                }
                Err(_) => {}
            },
            Purpose::Logoff => match result {
                Err(ActionError::Timeout { .. }) => {
                    self.close_with(now, CloseReason::LogoffTimeout)
                }
                _ => self.close_with(now, CloseReason::Graceful),
            },
        }
    }

    /// Schedules the next heartbeat; an interval of zero disables heartbeats, and so
    /// does one too long for a deadline (no deadline: never due).
    fn arm_heartbeat(&mut self, now: Instant) {
        if !self.config.heartbeat_interval.is_zero() {
            self.timers
                .arm(Timer::Heartbeat, now, self.config.heartbeat_interval);
        }
    }

    /// Closes after the login (or its challenge) failed, with a reason for each cause.
    fn login_failed(&mut self, now: Instant, error: ActionError) {
        let reason = match error {
            ActionError::Rejected { message, .. } => CloseReason::AuthenticationFailed { message },
            ActionError::Timeout { .. } => CloseReason::LoginTimeout,
            ActionError::ConnectionClosed { reason } => reason,
            error @ (ActionError::Discarded(_)
            | ActionError::ListTooLong { .. }
            | ActionError::MemoryLimit { .. }
            | ActionError::NotSent(_)) => CloseReason::LoginFailed {
                error: Box::new(error),
            },
        };
        self.close_with(now, reason);
    }

    /// Writes an action of the connection's own; internal actions are few and small,
    /// so they bypass the limits that protect against the application, the memory
    /// budget included: their bytes are charged without a check. Returns its counter,
    /// or `None` when it could not be encoded (the connection then closed).
    fn send_internal(
        &mut self,
        now: Instant,
        action: Action,
        purpose: Purpose,
        timeout: Duration,
    ) -> Option<u64> {
        let (counter, action_id) = self.ids.next_id();
        let before = self.transmit.len();
        match action.encode(&action_id, &mut self.transmit) {
            Ok(()) => {
                self.transmit_charge
                    .grow_unchecked(self.transmit.len() - before);
                self.register(now, (counter, action_id), &action, purpose, timeout, None);
                Some(counter)
            }
            // Only a login with CR/LF (or a line over 1000 bytes) in the username, the
            // secret or an event class gets here: it cannot work.
            Err(error) => {
                let action = action.name().to_owned();
                self.close_with(now, CloseReason::Unencodable { action, error });
                None
            }
        }
    }

    /// Adds an action just written, `id` being its counter and ActionID, to the
    /// registry; `charge` is its charge of the budget (for the application's actions).
    fn register(
        &mut self,
        now: Instant,
        (counter, action_id): (u64, String),
        action: &Action,
        purpose: Purpose,
        timeout: Duration,
        charge: Option<Charge>,
    ) {
        self.registry.insert(
            counter,
            Pending {
                action_id,
                purpose,
                strategy: action.strategy(),
                stage: Stage::Response,
                sent_at: now,
                deadline: timers::deadline(now, timeout),
                timeout,
                response: None,
                events: Vec::new(),
                items: 0,
                charge,
            },
        );
    }

    fn report(&mut self, output: Output) {
        if self.queued_reports >= MAX_QUEUED_REPORTS
            || self.reports_charge.try_grow(report_size(&output)).is_err()
        {
            self.stats.reports_dropped += 1;
            return;
        }
        self.queued_reports += 1;
        if self.state == State::Closed {
            // The input it reports closed the connection (a discarded login reply):
            // it goes before the close, which stays the very last output.
            let at = self
                .outputs
                .iter()
                .rposition(|(_, o)| {
                    matches!(
                        o,
                        Output::StateChanged {
                            to: State::Closed,
                            ..
                        }
                    )
                })
                .unwrap_or(self.outputs.len());
            let queued_before = self.events.counters().queued;
            self.outputs.insert(at, (queued_before, output));
        } else {
            self.push_output(output);
        }
    }

    /// Queues an output other than an event, after every event queued so far.
    fn push_output(&mut self, output: Output) {
        let queued_before = self.events.counters().queued;
        self.outputs.push_back((queued_before, output));
    }

    fn set_state(&mut self, to: State) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        tracing::info!(server_key = %self.server_key, ?from, ?to, "connection state");
        self.push_output(Output::StateChanged { from, to });
    }

    /// Closes for good: every pending action fails with `reason`, exactly once.
    fn close_with(&mut self, now: Instant, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        // Server or transport text in the reason is returned and logged masked.
        let reason = self.redactor.mask_reason(reason);
        self.timers.stop_all();
        // Closed before `finish` runs, so that internal actions failing here do not
        // try to close again.
        let from = self.state;
        self.state = State::Closed;
        for pending in self.registry.drain() {
            if pending.purpose == Purpose::User {
                self.finish(
                    now,
                    pending,
                    Err(ActionError::ConnectionClosed {
                        reason: reason.clone(),
                    }),
                );
            }
        }
        self.transmit.clear();
        self.transmitted = 0;
        self.transmit_charge.shrink_to(0);
        tracing::info!(server_key = %self.server_key, ?from, %reason, "connection closed");
        self.push_output(Output::StateChanged {
            from,
            to: State::Closed,
        });
        self.close_reason = Some(reason.clone());
        self.push_output(Output::Closed(reason));
    }
}
