//! A server's dialer inside the [`ClientCore`](crate::ClientCore): a [`CallTracker`]
//! fed by the server's events and by the Originates sent through the core, and a
//! [`Pacer`] that holds back Originates over the server's call limits. Both drivers
//! get it from the core, so it works the same in each.
//!
//! Turned on per server with [`ClientCore::track_calls`](crate::ClientCore::track_calls).
//! From then on:
//!
//! - Every event of the server goes to the tracker. Every Originate sent through the
//!   core is registered with it, under its `ChannelId` when it sets one and else under
//!   its ActionID (the record's [`registered_as`](crate::CallEnded::registered_as)).
//!   The Originate's completion confirms the call or ends it. Each ended call comes
//!   out as [`ClientOutput::CallEnded`](crate::ClientOutput::CallEnded).
//! - Each time the session logs in, the core sends `CoreShowChannels` itself and
//!   reseeds the tracker with the calls up now ([`CallTracker::reseed`]).
//! - **Pacing.** An Originate over the limits waits unsent in a FIFO queue of at most
//!   [`DialerConfig::max_waiting`]. It gets its ticket at once, and goes out in order
//!   when the pacer lets it and the session is ready. When the queue is full, the
//!   Originate is refused with [`SendError::Paced`]. If it waits longer than its
//!   timeout (the action's, else the server's `action_timeout`), it completes with
//!   [`ActionError::Timeout`] at [`Stage::Paced`]. If the server refuses it when its
//!   turn comes, it completes with [`ActionError::NotSent`]. Counts and waiting
//!   times are in [`DialerStatus`].
//! - The tracker's own timeouts (the grace for an `OriginateResponse`, `max_age`) run
//!   every [`CHECK_CADENCE`] while it follows calls, since each run looks at every
//!   call; a record may come that much late.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use ami_proto::correlation::action_tag;
use ami_proto::{Action, ActionError, Completion, Message, SendError, Stage};

use crate::calls::{CallCounters, CallTracker, TrackerConfig};
use crate::pacing::{Admission, Pacer, PacingConfig};

/// How often the tracker's timeouts run while it follows calls.
pub const CHECK_CADENCE: Duration = Duration::from_millis(250);

/// How soon a held Originate is tried again when its turn came while the session was
/// not ready.
const NOT_READY_RETRY: Duration = Duration::from_millis(100);

/// A server's call tracking and pacing (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DialerConfig {
    /// The tracker's bounds.
    pub tracker: TrackerConfig,
    /// The call limits (none by default).
    pub pacing: PacingConfig,
    /// Originates that may wait for the limits at once (1,000); past that they are
    /// refused with [`SendError::Paced`].
    pub max_waiting: usize,
}

impl Default for DialerConfig {
    fn default() -> Self {
        DialerConfig {
            tracker: TrackerConfig::default(),
            pacing: PacingConfig::default(),
            max_waiting: 1_000,
        }
    }
}

/// What a server's dialer has seen and done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DialerStatus {
    /// Calls followed now (Originates in flight included).
    pub live_calls: usize,
    /// Originates waiting for the limits now.
    pub waiting: usize,
    /// The tracker's counters.
    pub calls: CallCounters,
    /// Originates the pacer let go.
    pub admitted: u64,
    /// The time they waited for it, in all.
    pub waited: Duration,
    /// Originates refused because the wait queue was full.
    pub refused: u64,
    /// Originates that waited past their timeout.
    pub expired: u64,
    /// Originates the server refused when their turn came.
    pub not_sent: u64,
}

/// What the tracker takes from an Originate, read before it is sent.
#[derive(Debug)]
pub(crate) struct OriginateInfo {
    channel_id: Option<String>,
    variables: Vec<(String, String)>,
}

impl OriginateInfo {
    pub(crate) fn of(action: &Action) -> OriginateInfo {
        OriginateInfo {
            channel_id: action.get("ChannelId").map(str::to_owned),
            variables: action
                .get_all("Variable")
                .filter_map(|v| v.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// Whether an action is an Originate (the calls the dialer follows and paces).
pub(crate) fn is_originate(action: &Action) -> bool {
    action.name().eq_ignore_ascii_case("Originate")
}

/// An Originate waiting for the limits.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) action: Action,
    /// Its completion slot in the core.
    pub(crate) slot: u32,
    pub(crate) since: Instant,
    deadline: Instant,
}

/// One server's dialer.
#[derive(Debug)]
pub(crate) struct Dialer {
    tracker: CallTracker,
    pacer: Pacer,
    max_waiting: usize,
    waiting: VecDeque<Held>,
    /// Originates on the wire, by (generation, counter) of their ActionID.
    originates: HashSet<(u64, u64)>,
    /// The `CoreShowChannels` the core sent to reseed, while it is in flight.
    reseed: Option<(u64, u64)>,
    /// A login came: a reseed is to be sent at the next timeout.
    reseed_due: Option<Instant>,
    next_check: Option<Instant>,
    retry_at: Option<Instant>,
    refused: u64,
    expired: u64,
    not_sent: u64,
    /// Held Originates whose wait ended without a send: their slots and completions.
    pub(crate) failed: VecDeque<(u32, Completion)>,
}

impl Dialer {
    pub(crate) fn new(config: DialerConfig) -> Dialer {
        Dialer {
            tracker: CallTracker::new(config.tracker),
            pacer: Pacer::new(config.pacing),
            max_waiting: config.max_waiting,
            waiting: VecDeque::new(),
            originates: HashSet::new(),
            reseed: None,
            reseed_due: None,
            next_check: None,
            retry_at: None,
            refused: 0,
            expired: 0,
            not_sent: 0,
            failed: VecDeque::new(),
        }
    }

    /// Takes over what `old` (the dialer this one replaces) still holds: the
    /// Originates waiting and in flight, the reseed in flight, the completions not
    /// handed out yet. Its tracker and counters go.
    pub(crate) fn adopt(&mut self, old: Dialer) {
        self.waiting = old.waiting;
        self.failed = old.failed;
        self.originates = old.originates;
        self.reseed = old.reseed;
        self.reseed_due = self.reseed_due.or(old.reseed_due);
        self.retry_at = self.waiting.front().map(|held| held.since);
    }

    pub(crate) fn status(&self) -> DialerStatus {
        let (admitted, waited) = self.pacer.totals();
        DialerStatus {
            live_calls: self.tracker.live_calls(),
            waiting: self.waiting.len(),
            calls: self.tracker.counters(),
            admitted,
            waited,
            refused: self.refused,
            expired: self.expired,
            not_sent: self.not_sent,
        }
    }

    /// Whether an Originate sent now may go at once (a token is taken), or must wait.
    pub(crate) fn admit_now(&mut self, now: Instant) -> bool {
        if !self.waiting.is_empty() {
            return false;
        }
        match self.pacer.admit(now, self.tracker.live_calls(), now) {
            Admission::Go => true,
            Admission::WaitUntil(at) => {
                self.retry_at = Some(at);
                false
            }
            Admission::WaitForCall => false,
        }
    }

    /// An Originate admitted by [`Dialer::admit_now`] was refused by the server.
    pub(crate) fn refund(&mut self, now: Instant) {
        self.pacer.refund(now, now);
    }

    /// Whether one more Originate may wait; when not, it counts as refused.
    pub(crate) fn can_hold(&mut self) -> Result<(), SendError> {
        if self.waiting.len() >= self.max_waiting {
            self.refused += 1;
            return Err(SendError::Paced {
                waiting: self.waiting.len(),
            });
        }
        Ok(())
    }

    /// Queues an Originate that must wait (after [`Dialer::can_hold`]).
    pub(crate) fn hold(&mut self, action: Action, slot: u32, now: Instant, timeout: Duration) {
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400));
        self.waiting.push_back(Held {
            action,
            slot,
            since: now,
            deadline,
        });
        self.retry_at = Some(self.retry_at.map_or(deadline, |at| at.min(deadline)));
    }

    /// Completes every held Originate with `error` (the server was closed).
    pub(crate) fn fail_waiting(&mut self, error: &ActionError, now: Instant) {
        for held in self.waiting.drain(..) {
            self.failed.push_back((
                held.slot,
                Completion::unsent(held.since, now, error.clone()),
            ));
        }
        self.retry_at = None;
    }

    /// Whether outputs wait: completions of held Originates or ended calls.
    pub(crate) fn has_outputs(&self) -> bool {
        !self.failed.is_empty() || self.tracker.has_ended()
    }

    /// The held Originate whose turn it is at `now`, if any; `ready` tells whether
    /// the session takes actions. Those that waited past their deadline complete
    /// here (into [`Dialer::failed`]).
    pub(crate) fn next_turn(&mut self, now: Instant, ready: bool) -> Option<Held> {
        while let Some(front) = self.waiting.front() {
            if front.deadline > now {
                break;
            }
            let held = self.waiting.pop_front().expect("front exists");
            self.expired += 1;
            let error = ActionError::Timeout {
                stage: Stage::Paced,
                timeout: held.deadline.saturating_duration_since(held.since),
            };
            self.failed
                .push_back((held.slot, Completion::unsent(held.since, now, error)));
        }
        let Some(front) = self.waiting.front() else {
            self.retry_at = None;
            return None;
        };
        let (since, deadline) = (front.since, front.deadline);
        if !ready {
            self.retry_at = Some((now + NOT_READY_RETRY).min(deadline));
            return None;
        }
        match self.pacer.admit(now, self.tracker.live_calls(), since) {
            Admission::Go => {
                self.retry_at = None;
                self.waiting.pop_front()
            }
            Admission::WaitUntil(at) => {
                self.retry_at = Some(at.min(deadline));
                None
            }
            Admission::WaitForCall => {
                self.retry_at = Some(deadline);
                None
            }
        }
    }

    /// A held Originate the pacer let go was refused by the server.
    pub(crate) fn not_sent(&mut self, slot: u32, since: Instant, error: SendError, now: Instant) {
        self.pacer.refund(since, now);
        self.not_sent += 1;
        self.failed.push_back((
            slot,
            Completion::unsent(since, now, ActionError::NotSent(error)),
        ));
    }

    /// An Originate described by `info` went out as `action_id`: the tracker follows
    /// its call.
    pub(crate) fn sent(&mut self, action_id: &str, info: OriginateInfo, now: Instant) {
        let Some(tag) = action_tag(action_id) else {
            return;
        };
        self.originates.insert(tag);
        let channel_id = info.channel_id.as_deref();
        self.tracker.originate_as(
            action_id,
            channel_id.unwrap_or(action_id),
            channel_id,
            info.variables,
            now,
        );
        self.arm_check(now);
    }

    /// An event of the server.
    pub(crate) fn on_event(&mut self, event: &Message, at: Instant) {
        self.tracker.handle_event(event, at);
        self.arm_check(at);
    }

    /// The session logged in: the live calls are to be asked for.
    pub(crate) fn logged_in(&mut self, now: Instant) {
        self.reseed_due = Some(now);
    }

    /// The reseed to send now, if one is due; `sent` sends it and gives its ActionID.
    pub(crate) fn take_reseed(&mut self, now: Instant) -> bool {
        if self.reseed_due.is_some_and(|at| at <= now) {
            self.reseed_due = None;
            return true;
        }
        false
    }

    /// The reseed went out as `action_id`.
    pub(crate) fn reseed_sent(&mut self, action_id: &str) {
        self.reseed = action_tag(action_id);
    }

    /// A completion of the server: the reseed's (`true`: the core's own, consumed
    /// here) or an Originate's (its call confirmed or ended).
    pub(crate) fn on_completion(&mut self, completion: &Completion) -> bool {
        let Some(tag) = action_tag(&completion.action_id) else {
            return false;
        };
        let now = completion.completed_at;
        if self.reseed == Some(tag) {
            self.reseed = None;
            match &completion.result {
                Ok(reply) => self.tracker.reseed(&reply.events, now),
                Err(error) => {
                    tracing::warn!(%error, "CoreShowChannels failed: the calls were not reseeded");
                }
            }
            self.arm_check(now);
            return true;
        }
        if self.originates.remove(&tag) {
            let id = &completion.action_id;
            match &completion.result {
                Ok(reply) => {
                    // A sync Originate's success has none: its channels tell the rest.
                    if let Some(response) = reply
                        .events
                        .iter()
                        .find(|e| e.event_name() == Some("OriginateResponse"))
                    {
                        self.tracker.originate_response_as(id, response, now);
                    }
                }
                Err(_) => self.tracker.originate_failed(id, now),
            }
        }
        false
    }

    fn arm_check(&mut self, now: Instant) {
        if self.next_check.is_none() && self.tracker.live_calls() > 0 {
            self.next_check = Some(now + CHECK_CADENCE);
        }
    }

    /// Runs the tracker's timeouts if due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.next_check.is_some_and(|at| at <= now) {
            self.next_check = None;
            self.tracker.handle_timeout(now);
            self.arm_check(now);
        }
    }

    /// The earliest instant the dialer has work at.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.next_check, self.retry_at, self.reseed_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether Originates wait for their turn.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Calls followed now.
    pub(crate) fn live_calls(&self) -> usize {
        self.tracker.live_calls()
    }

    /// The next ended call.
    pub(crate) fn poll_ended(&mut self) -> Option<crate::CallEnded> {
        self.tracker.poll_ended()
    }
}
