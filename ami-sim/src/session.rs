//! One accepted AMI session on the server side, without I/O and in virtual time
//! ([`SimSession`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actions::{Answer, CLASS_USER, Ctx, SimEvent};
use crate::config::{Flood, SimConfig};
use crate::faults::{self, Fault, SlowReader, Standing};
use crate::wire::{Input, MessageBuf, Request, RequestParser};
use ami_proto::rng::Rng;

/// Broadcasts waiting for [`SimSession::poll_broadcast`] at most; older ones are
/// dropped when nobody collects them.
const MAX_QUEUED_BROADCASTS: usize = 1024;

/// Counters of one session (and, summed with [`SessionStats::merge`], of many).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Bytes handed to [`SimSession::handle_input`].
    pub bytes_received: u64,
    /// Bytes taken by [`SimSession::advance_transmit`].
    pub bytes_sent: u64,
    /// Requests received.
    pub actions: u64,
    /// Requests received per action name (lowercase; `""` for a request without
    /// `Action`).
    pub actions_by_name: BTreeMap<String, u64>,
    /// Input the request parser threw away (garbage, oversized requests).
    pub input_discarded: u64,
    /// Successful logins.
    pub logins_ok: u64,
    /// Failed logins.
    pub logins_failed: u64,
    /// Answers written (a list counts once).
    pub responses_sent: u64,
    /// Answers dropped by a fault.
    pub responses_dropped: u64,
    /// List items written.
    pub list_items_sent: u64,
    /// Events written (broadcast kind: `FullyBooted`, `OriginateResponse`,
    /// `UserEvent`, flood events), not list items.
    pub events_sent: u64,
    /// Flood events written (also counted in `events_sent`).
    pub flood_events_sent: u64,
    /// Flood events skipped: over a burst cap after a jump in time, or while the
    /// transmit buffer was over its limit.
    pub flood_events_skipped: u64,
    /// Faults applied (preset and injected).
    pub faults_injected: u64,
}

impl SessionStats {
    /// Adds `other`'s counters to these.
    pub fn merge(&mut self, other: &SessionStats) {
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.actions += other.actions;
        for (name, count) in &other.actions_by_name {
            *self.actions_by_name.entry(name.clone()).or_default() += count;
        }
        self.input_discarded += other.input_discarded;
        self.logins_ok += other.logins_ok;
        self.logins_failed += other.logins_failed;
        self.responses_sent += other.responses_sent;
        self.responses_dropped += other.responses_dropped;
        self.list_items_sent += other.list_items_sent;
        self.events_sent += other.events_sent;
        self.flood_events_sent += other.flood_events_sent;
        self.flood_events_skipped += other.flood_events_skipped;
        self.faults_injected += other.faults_injected;
    }

    /// Requests received named `action` (case-insensitive).
    pub fn actions_named(&self, action: &str) -> u64 {
        self.actions_by_name
            .get(&action.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

/// An event one session sends to every other session of the same Asterisk
/// (`OriginateResponse` and `UserEvent`, PROTOCOL-NOTES 17): collect it with
/// [`SimSession::poll_broadcast`] and hand it to the others with
/// [`SimSession::deliver_broadcast`].
#[derive(Debug, Clone)]
pub struct Broadcast {
    class: &'static str,
    bytes: Arc<[u8]>,
}

impl Broadcast {
    /// The event class (`call`, `user`), for each receiver's event filter.
    pub fn class(&self) -> &str {
        self.class
    }

    /// The whole message.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// An answer waiting for the instant it goes out.
#[derive(Debug)]
struct InFlight {
    due: Instant,
    answer: Answer,
}

/// A running flood.
#[derive(Debug)]
struct FloodClock {
    flood: Flood,
    start: Instant,
    /// Events sent or skipped so far (the next event's `Seq`).
    accounted: u64,
}

impl FloodClock {
    /// Events due by `now` since the start (capped at the total).
    fn due_by(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let due = elapsed * u128::from(self.flood.events_per_second) / 1_000_000_000;
        let due = u64::try_from(due).unwrap_or(u64::MAX);
        self.flood.total.map_or(due, |total| due.min(total))
    }

    /// When the next event is due; `None` when the flood is over or has no rate.
    fn next_due(&self) -> Option<Instant> {
        let rate = u128::from(self.flood.events_per_second);
        if rate == 0
            || self
                .flood
                .total
                .is_some_and(|total| self.accounted >= total)
        {
            return None;
        }
        let nanos = (u128::from(self.accounted) + 1) * 1_000_000_000;
        let offset = u64::try_from(nanos.div_ceil(rate)).unwrap_or(u64::MAX);
        Some(self.start + Duration::from_nanos(offset))
    }
}

/// One accepted AMI session on the server side, without I/O and in virtual time.
///
/// Methods come in the same four kinds as the client core's:
/// - inputs: [`handle_input`](SimSession::handle_input) (bytes from the client),
///   [`handle_timeout`](SimSession::handle_timeout) (time passed),
///   [`deliver_broadcast`](SimSession::deliver_broadcast) (an event of another session);
/// - mutators: [`inject`](SimSession::inject) (a [`Fault`]),
///   [`set_flood`](SimSession::set_flood), [`set_wall_clock`](SimSession::set_wall_clock);
/// - outputs: [`poll_transmit`](SimSession::poll_transmit) /
///   [`advance_transmit`](SimSession::advance_transmit) (bytes for the client),
///   [`poll_timeout`](SimSession::poll_timeout) (the next deadline),
///   [`poll_broadcast`](SimSession::poll_broadcast) (events for other sessions);
/// - getters: [`is_closed`](SimSession::is_closed),
///   [`wants_input`](SimSession::wants_input), [`stats`](SimSession::stats), ...
///
/// A driver loop: read client bytes while [`wants_input`](SimSession::wants_input)
/// (at most [`input_budget`](SimSession::input_budget)) into `handle_input`; write out
/// `poll_transmit`; call `handle_timeout` at `poll_timeout`; close the socket once
/// `is_closed()` and `poll_transmit()` is empty.
///
/// Actions are answered one at a time and in order (PROTOCOL-NOTES 16): an answer that
/// takes time (a response delay, a sync Originate, a failed login) holds back the
/// actions behind it. Events (the flood, `OriginateResponse`, broadcasts) go out
/// between whole messages.
///
/// `Debug` shows the state and sizes, never the users' secrets.
pub struct SimSession {
    ctx: Ctx,
    parser: RequestParser,
    /// Requests not yet answered, with their arrival.
    inbox: VecDeque<(Instant, Request)>,
    /// The answer being worked on.
    busy: Option<InFlight>,
    /// When the last answer went out (the next request starts no earlier).
    free_since: Instant,
    /// Events due later (async `OriginateResponse`), by instant and order.
    scheduled: BTreeMap<(Instant, u64), SimEvent>,
    next_scheduled: u64,
    out: Vec<u8>,
    /// Bytes of `out` already taken.
    sent: usize,
    /// Events flow: the login was answered.
    events_live: bool,
    flood: Option<FloodClock>,
    faults: Standing,
    /// No more output; the driver closes once `out` is drained.
    closing: bool,
    /// Nothing is ever answered or sent again.
    stalled: bool,
    auth_deadline: Instant,
    broadcasts: VecDeque<Broadcast>,
    stats: SessionStats,
}

impl std::fmt::Debug for SimSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSession")
            .field("user", &self.ctx.user)
            .field("closing", &self.closing)
            .field("stalled", &self.stalled)
            .field("queued_requests", &self.inbox.len())
            .field("queued_transmit", &self.queued_transmit())
            .field("flood", &self.flood.as_ref().map(|f| &f.flood))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SimSession {
    /// A session accepted at `now`: the banner is queued (unless a preset
    /// [`Fault::Stall`] holds it back) and the preset faults applied. `seed` fixes
    /// its challenges, random garbage and random drops.
    pub fn new(config: &SimConfig, now: Instant, seed: u64) -> SimSession {
        let mut session = SimSession {
            ctx: Ctx::new(config.clone(), now, Rng::new(seed)),
            parser: RequestParser::new(),
            inbox: VecDeque::new(),
            busy: None,
            free_since: now,
            scheduled: BTreeMap::new(),
            next_scheduled: 0,
            out: Vec::new(),
            sent: 0,
            events_live: false,
            flood: None,
            faults: Standing::default(),
            closing: false,
            stalled: false,
            auth_deadline: now + config.auth_timeout,
            broadcasts: VecDeque::new(),
            stats: SessionStats::default(),
        };
        if config.faults.contains(&Fault::Stall) {
            session.stats.faults_injected += 1;
            session.stalled = true;
            return session;
        }
        let mut banner = MessageBuf::new();
        banner.raw(config.banner.as_bytes()).raw(b"\r\n");
        session.write(&banner.into_bytes());
        for fault in &config.faults {
            session.inject(now, fault.clone());
        }
        session
    }

    // ----- getters -----

    /// The configuration this session runs with (its flood may have been changed).
    pub fn config(&self) -> &SimConfig {
        &self.ctx.config
    }

    /// The counters.
    pub fn stats(&self) -> SessionStats {
        self.stats.clone()
    }

    /// Whether the session is done: no more output will come. Close the socket once
    /// [`poll_transmit`](Self::poll_transmit) is empty (after `Goodbye`, a failed
    /// login, the auth timeout, or [`Fault::CloseMidMessage`]).
    pub fn is_closed(&self) -> bool {
        self.closing
    }

    /// Whether a [`Fault::Stall`] froze the session.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Whether a login succeeded.
    pub fn is_logged_in(&self) -> bool {
        self.ctx.user.is_some()
    }

    /// Whether the driver should read client bytes now: false once closed, and while
    /// a [`Fault::SlowReads`] allowance is spent.
    pub fn wants_input(&self, now: Instant) -> bool {
        self.input_budget(now).is_none_or(|budget| budget > 0)
    }

    /// How many client bytes the driver may read now: `None` for any number,
    /// `Some(0)` when it should not read at all.
    pub fn input_budget(&self, now: Instant) -> Option<usize> {
        if self.closing {
            return Some(0);
        }
        self.faults
            .slow
            .as_ref()
            .map(|slow| usize::try_from(slow.available(now)).unwrap_or(usize::MAX))
    }

    /// Bytes waiting to be taken by the driver.
    pub fn queued_transmit(&self) -> usize {
        self.out.len() - self.sent
    }

    // ----- inputs -----

    /// Bytes from the client arrived at `now`. Complete requests are answered in
    /// order; answers due now are queued at once.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.closing {
            return;
        }
        self.stats.bytes_received += data.len() as u64;
        if let Some(slow) = &mut self.faults.slow {
            slow.consume(now, data.len() as u64);
        }
        let mut items = Vec::new();
        self.parser.feed(data, &mut items);
        for item in items {
            match item {
                Input::Request(request) => {
                    self.stats.actions += 1;
                    let name = request.action().unwrap_or("").to_ascii_lowercase();
                    *self.stats.actions_by_name.entry(name).or_default() += 1;
                    // A stalled session reads (and counts) requests, never answers.
                    if !self.stalled {
                        self.inbox.push_back((now, request));
                    }
                }
                Input::Garbage => self.stats.input_discarded += 1,
            }
        }
        self.handle_timeout(now);
    }

    /// Time passed: sends every answer and event due by `now`, and the flood.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(slow) = &mut self.faults.slow {
            // Turns elapsed time into read allowance (so that its deadline passes).
            slow.consume(now, 0);
        }
        if self.closing || self.stalled {
            return;
        }
        self.run_due(now);
        if self.closing || self.stalled {
            return;
        }
        if self.ctx.user.is_none() && now >= self.auth_deadline {
            // Asterisk drops an unauthenticated session after `authtimeout`, silently.
            self.close();
            return;
        }
        self.run_flood(now);
    }

    /// An event broadcast by another session of the same Asterisk: sent when this
    /// session is logged in with the event's class on.
    pub fn deliver_broadcast(&mut self, now: Instant, broadcast: &Broadcast) {
        let _ = now;
        if self.events_live && self.ctx.mask.allows(broadcast.class) && self.can_send() {
            self.write(&broadcast.bytes);
            self.stats.events_sent += 1;
        }
    }

    // ----- mutators -----

    /// Injects a fault at `now` (see [`Fault`] for each one's effect).
    pub fn inject(&mut self, now: Instant, fault: Fault) {
        self.stats.faults_injected += 1;
        match fault {
            Fault::Garbage(bytes) => {
                let bytes = faults::garbage(&bytes);
                self.write(&bytes);
            }
            Fault::GarbageLen { len } => {
                let bytes = faults::random_garbage(&mut self.ctx.rng, len);
                self.write(&bytes);
            }
            Fault::SplitEveryByte(on) => self.faults.split = on,
            Fault::Oversized { bytes } => self.write(&faults::oversized_event(bytes)),
            Fault::Stall => {
                self.stalled = true;
                self.forget_work();
            }
            Fault::SlowReads { bytes_per_second } => {
                self.faults.slow = Some(SlowReader::new(now, bytes_per_second));
            }
            Fault::CloseMidMessage => {
                if self.can_send() {
                    self.write(&faults::half_message());
                    self.close();
                }
            }
            Fault::DelayResponses(delay) => self.faults.delay = delay,
            Fault::DropResponses { every_nth } => {
                self.faults.drop_every = every_nth;
                self.faults.answers_seen = 0;
            }
            Fault::DropResponsesRandomly { probability } => {
                self.faults.drop_probability = probability.clamp(0.0, 1.0);
            }
            Fault::Heal => self.faults = Standing::default(),
        }
    }

    /// Starts, replaces or stops the event flood at `now`.
    pub fn set_flood(&mut self, now: Instant, flood: Option<Flood>) {
        self.ctx.config.flood = flood;
        self.flood = None;
        self.refresh_flood(now);
    }

    /// Sets the Unix time at `now` (for `Timestamp` and Uniqueid values), e.g. from
    /// the real clock.
    pub fn set_wall_clock(&mut self, now: Instant, since_epoch: Duration) {
        self.ctx.set_wall_clock(now, since_epoch);
    }

    // ----- outputs -----

    /// Bytes to write to the client (empty when there are none; one byte at a time
    /// under [`Fault::SplitEveryByte`]). After writing `n` of them call
    /// [`advance_transmit(n)`](Self::advance_transmit).
    pub fn poll_transmit(&self) -> &[u8] {
        let pending = &self.out[self.sent..];
        if self.faults.split {
            &pending[..pending.len().min(1)]
        } else {
            pending
        }
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit) were written.
    pub fn advance_transmit(&mut self, n: usize) {
        let n = n.min(self.queued_transmit());
        self.sent += n;
        self.stats.bytes_sent += n as u64;
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent > 64 * 1024 && self.sent * 2 > self.out.len() {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) has work (an answer,
    /// a scheduled event, a flood event, the auth timeout, or read allowance coming
    /// back under [`Fault::SlowReads`]); `None` when nothing is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing || self.stalled {
            return None;
        }
        let slow = self
            .faults
            .slow
            .as_ref()
            .and_then(SlowReader::next_credit_at);
        let auth = self.ctx.user.is_none().then_some(self.auth_deadline);
        [
            self.busy.as_ref().map(|b| b.due),
            self.next_request_at(),
            self.scheduled.keys().next().map(|&(at, _)| at),
            self.flood.as_ref().and_then(FloodClock::next_due),
            auth,
            slow,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next event for the other sessions of the same Asterisk.
    pub fn poll_broadcast(&mut self) -> Option<Broadcast> {
        self.broadcasts.pop_front()
    }

    // ----- internals -----

    fn can_send(&self) -> bool {
        !self.closing && !self.stalled
    }

    /// Queues bytes for the client, unless the session is closed or stalled.
    fn write(&mut self, bytes: &[u8]) {
        if self.can_send() {
            self.out.extend_from_slice(bytes);
        }
    }

    fn close(&mut self) {
        self.closing = true;
        self.forget_work();
    }

    /// Drops every answer and event not yet sent.
    fn forget_work(&mut self) {
        self.inbox.clear();
        self.busy = None;
        self.scheduled.clear();
        self.flood = None;
    }

    /// When the next queued request starts, if nothing is being worked on.
    fn next_request_at(&self) -> Option<Instant> {
        if self.busy.is_some() {
            return None;
        }
        self.inbox
            .front()
            .map(|&(arrived, _)| arrived.max(self.free_since))
    }

    /// Runs answers, request starts and scheduled events due by `now`, in time order.
    fn run_due(&mut self, now: Instant) {
        enum Next {
            Answer,
            Request,
            Event,
        }
        loop {
            // On a tie: finish the answer in flight, then start the next request,
            // then send scheduled events.
            let candidates = [
                (self.busy.as_ref().map(|b| b.due), Next::Answer),
                (self.next_request_at(), Next::Request),
                (self.scheduled.keys().next().map(|&(at, _)| at), Next::Event),
            ];
            let mut next: Option<(Instant, Next)> = None;
            for (at, kind) in candidates {
                if let Some(at) = at
                    && next.as_ref().is_none_or(|(best, _)| at < *best)
                {
                    next = Some((at, kind));
                }
            }
            let Some((at, kind)) = next else { break };
            if at > now {
                break;
            }
            match kind {
                Next::Answer => {
                    if let Some(done) = self.busy.take() {
                        self.free_since = done.due;
                        self.emit_answer(done.due, done.answer);
                    }
                }
                Next::Request => {
                    if let Some((_, request)) = self.inbox.pop_front() {
                        let answer = self.ctx.answer(&request, at);
                        let delay =
                            answer.delay + self.ctx.config.response_delay + self.faults.delay;
                        self.busy = Some(InFlight {
                            due: at + delay,
                            answer,
                        });
                    }
                }
                Next::Event => {
                    if let Some((_, event)) = self.scheduled.pop_first() {
                        self.emit_event(event);
                    }
                }
            }
            if !self.can_send() {
                break;
            }
        }
    }

    /// Sends an answer at `at` (unless a fault drops it) and applies its effects.
    fn emit_answer(&mut self, at: Instant, answer: Answer) {
        if !answer.bytes.is_empty() {
            if self.faults.drop_next(&mut self.ctx.rng) {
                self.stats.responses_dropped += 1;
            } else {
                self.write(&answer.bytes);
                self.stats.responses_sent += 1;
                self.stats.list_items_sent += answer.list_items;
            }
        }
        match answer.login {
            Some(true) => {
                self.stats.logins_ok += 1;
                self.events_live = true;
            }
            Some(false) => self.stats.logins_failed += 1,
            None => {}
        }
        for event in answer.events {
            self.emit_event(event);
        }
        if let Some((after, event)) = answer.later {
            self.scheduled
                .insert((at + after, self.next_scheduled), event);
            self.next_scheduled += 1;
        }
        if answer.close {
            self.close();
            return;
        }
        // A login or an `Events` action may have started or stopped the flood.
        self.refresh_flood(at);
    }

    /// Sends an event to this session (if its filter lets it through) and queues it
    /// for the others when it is a broadcast.
    fn emit_event(&mut self, event: SimEvent) {
        if event.broadcast {
            if self.broadcasts.len() >= MAX_QUEUED_BROADCASTS {
                self.broadcasts.pop_front();
            }
            self.broadcasts.push_back(Broadcast {
                class: event.class,
                bytes: Arc::from(event.bytes.as_slice()),
            });
        }
        if self.events_live && self.ctx.mask.allows(event.class) && self.can_send() {
            self.write(&event.bytes);
            self.stats.events_sent += 1;
        }
    }

    /// Starts the flood when it should run and does not, stops it when it should not.
    fn refresh_flood(&mut self, now: Instant) {
        let should_run = self.ctx.config.flood.is_some()
            && self.events_live
            && self.ctx.mask.allows(CLASS_USER)
            && self.can_send();
        match (&self.flood, &self.ctx.config.flood) {
            (None, Some(flood)) if should_run => {
                self.flood = Some(FloodClock {
                    flood: flood.clone(),
                    start: now,
                    accounted: 0,
                });
            }
            (Some(_), _) if !should_run => self.flood = None,
            _ => {}
        }
    }

    /// Sends the flood events due by `now`: at most `max_burst`, the older ones
    /// skipped and counted.
    fn run_flood(&mut self, now: Instant) {
        let Some(clock) = &mut self.flood else { return };
        let due_total = clock.due_by(now);
        if due_total <= clock.accounted {
            return;
        }
        let due = due_total - clock.accounted;
        let send = due.min(clock.flood.max_burst.max(1));
        let first = clock.accounted + (due - send);
        clock.accounted = due_total;
        let name = clock.flood.user_event.clone();
        self.stats.flood_events_skipped += due - send;
        let limit = self.ctx.config.max_transmit_buffer;
        for seq in first..due_total {
            if self.queued_transmit() > limit {
                self.stats.flood_events_skipped += 1;
                continue;
            }
            let mut event = MessageBuf::new();
            event
                .header("Event", "UserEvent")
                .header("Privilege", "user,all")
                .header("UserEvent", &name)
                .header("Seq", seq)
                .end();
            self.write(&event.into_bytes());
            self.stats.events_sent += 1;
            self.stats.flood_events_sent += 1;
        }
    }
}
