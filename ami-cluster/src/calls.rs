//! The call tracker: follows the calls of one server from their events to exactly one
//! [`CallEnded`] record each. Sans-IO: events and time go in, records come out.
//!
//! A call is the set of channels that share a `Linkedid` (the `Uniqueid` of its first
//! channel). It starts with its first `Newchannel`, or earlier with an `Originate`
//! registered by [`CallTracker::originate`] (matched to its channel by the
//! `ChannelId` the Originate set, or by the `Uniqueid` of its `OriginateResponse`). It
//! is answered when one of its channels goes `Up` (`Newstate`, `ChannelState` 6) or
//! enters a bridge, or its `OriginateResponse` says `Reason` 4. It ends when its last
//! channel hangs up; an originated call whose `OriginateResponse` has not come yet
//! waits for it a moment ([`TrackerConfig::response_grace`]), so that the record carries
//! the reason.
//!
//! **Outcome**: `answered` when answered; otherwise from the most telling hangup cause
//! (Q.850: 17 busy; 18, 19 no answer; 21 rejected; 34, 38, 41, 42, 44 congestion; 16
//! normal clearing before an answer: cancelled), else from the Originate's reason (5
//! busy, 3 no answer, 8 congestion, 1 cancelled), else `failed`. `unknown` when its end
//! was never seen: evicted for age or for room, or gone while the session was down
//! ([`CallTracker::reseed`]).
//!
//! **Bounded**: at most [`TrackerConfig::max_calls`] calls and as many Originates
//! waiting for their channel; past that the oldest is ended `unknown`, counted
//! ([`CallCounters::evicted`]). Calls older than [`TrackerConfig::max_age`] are ended the
//! same way. Ended records wait in a queue of at most `max_calls` until polled.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ami_proto::Message;

/// The tracker's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Calls followed at once, at most (10,000).
    pub max_calls: usize,
    /// A call still open after this long is ended `unknown` (4 h).
    pub max_age: Duration,
    /// How long an ended originated call waits for its `OriginateResponse` (2 s).
    pub response_grace: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            max_calls: 10_000,
            max_age: Duration::from_secs(4 * 3600),
            response_grace: Duration::from_secs(2),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It was answered.
    Answered,
    /// The far end was busy.
    Busy,
    /// It rang and nobody answered.
    NoAnswer,
    /// The network was congested (or the far end unavailable).
    Congestion,
    /// The far end rejected it.
    Rejected,
    /// It failed for another reason.
    Failed,
    /// It was hung up before an answer (by us or the caller).
    Cancelled,
    /// Its end was never seen (evicted, or gone while the session was down).
    Unknown,
}

impl Outcome {
    /// The outcome's name, as in the records: `answered`, `busy`, `no_answer`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Congestion => "congestion",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call's end: what the tracker saw of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEnded {
    /// How it ended.
    pub outcome: Outcome,
    /// The hangup cause that decided it (Q.850 code), if any.
    pub cause: Option<u16>,
    /// Asterisk's text for it (`Cause-txt`).
    pub cause_txt: Option<String>,
    /// The `Reason` of its `OriginateResponse`, for an originated call.
    pub originate_reason: Option<u16>,
    /// When it began (its first channel or its Originate).
    pub created: Instant,
    /// When it was answered.
    pub answered: Option<Instant>,
    /// When it ended (or was given up).
    pub ended: Instant,
    /// The `Uniqueid` of its first channel (`None` when no channel was ever seen).
    pub uniqueid: Option<String>,
    /// Its `Linkedid`.
    pub linkedid: Option<String>,
    /// Its channels' names, first first.
    pub channels: Vec<String>,
    /// The ActionID of its Originate.
    pub action_id: Option<String>,
    /// The id its Originate was registered under ([`CallTracker::originate`]): how the
    /// caller tells its own calls from the others the server has.
    pub registered_as: Option<String>,
    /// The Originate's variables.
    pub variables: Vec<(String, String)>,
}

impl CallEnded {
    /// Milliseconds from its start to its answer (or its end when never answered).
    pub fn ring_ms(&self) -> u64 {
        let until = self.answered.unwrap_or(self.ended);
        until.saturating_duration_since(self.created).as_millis() as u64
    }

    /// Milliseconds from its answer to its end (0 when never answered).
    pub fn talk_ms(&self) -> u64 {
        self.answered.map_or(0, |at| {
            self.ended.saturating_duration_since(at).as_millis() as u64
        })
    }
}

/// What the tracker counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallCounters {
    /// Calls begun.
    pub started: u64,
    /// Calls ended (every record, `unknown` ones included).
    pub ended: u64,
    /// Calls ended `unknown` because they were too old or there was no room.
    pub evicted: u64,
    /// Calls ended `unknown` because they were gone after a reconnect.
    pub lost: u64,
    /// Ended records dropped because nobody polled them (the queue was full).
    pub records_dropped: u64,
}

#[derive(Debug)]
struct Call {
    created: Instant,
    answered: Option<Instant>,
    /// Channels still up, by `Uniqueid`.
    live: Vec<String>,
    channels: Vec<String>,
    uniqueid: Option<String>,
    linkedid: Option<String>,
    /// The most telling hangup cause so far, and its text.
    cause: Option<(u16, Option<String>)>,
    action_id: Option<String>,
    registered_as: Option<String>,
    variables: Vec<(String, String)>,
    originate_reason: Option<u16>,
    /// Ended, waiting (until then) for the `OriginateResponse`.
    ending: Option<(Instant, Instant)>,
    /// Order of creation, for eviction.
    serial: u64,
}

/// The tracker of one server's calls (see the module documentation).
#[derive(Debug)]
pub struct CallTracker {
    config: TrackerConfig,
    /// Calls by their key: the `Linkedid`, or `originate:ACTIONID` until a channel is
    /// seen.
    calls: HashMap<String, Call>,
    /// Every live channel's `Uniqueid` → its call's key.
    channels: HashMap<String, String>,
    /// A registered Originate's `ChannelId` → its call's key.
    expected: HashMap<String, String>,
    /// An Originate's ActionID → its call's key.
    by_action: HashMap<String, String>,
    ended: VecDeque<CallEnded>,
    counters: CallCounters,
    serial: u64,
}

impl CallTracker {
    /// A tracker with `config`'s bounds.
    pub fn new(config: TrackerConfig) -> Self {
        CallTracker {
            config,
            calls: HashMap::new(),
            channels: HashMap::new(),
            expected: HashMap::new(),
            by_action: HashMap::new(),
            ended: VecDeque::new(),
            counters: CallCounters::default(),
            serial: 0,
        }
    }

    /// Calls followed now.
    pub fn live_calls(&self) -> usize {
        self.calls.len()
    }

    /// What was counted so far.
    pub fn counters(&self) -> CallCounters {
        self.counters
    }

    /// Whether ended calls wait to be polled.
    pub fn has_ended(&self) -> bool {
        !self.ended.is_empty()
    }

    /// The next ended call, oldest first.
    pub fn poll_ended(&mut self) -> Option<CallEnded> {
        self.ended.pop_front()
    }

    /// An Originate was sent with `action_id` and `ChannelId` `channel_id` (set it, so
    /// that its first channel is known at once; `None` waits for the
    /// `OriginateResponse`'s `Uniqueid`).
    pub fn originate(
        &mut self,
        action_id: &str,
        channel_id: Option<&str>,
        variables: Vec<(String, String)>,
        now: Instant,
    ) {
        self.originate_as(action_id, action_id, channel_id, variables, now);
    }

    /// [`CallTracker::originate`], with the record's
    /// [`registered_as`](CallEnded::registered_as) set to `registered_as` instead of
    /// the ActionID.
    pub fn originate_as(
        &mut self,
        action_id: &str,
        registered_as: &str,
        channel_id: Option<&str>,
        variables: Vec<(String, String)>,
        now: Instant,
    ) {
        let key = format!("originate:{action_id}");
        if self.by_action.contains_key(action_id) || self.calls.contains_key(&key) {
            // Registered already (ActionIDs are unique): the first registration holds.
            return;
        }
        self.make_room(now);
        let mut call = self.new_call(now);
        call.action_id = Some(action_id.to_owned());
        call.registered_as = Some(registered_as.to_owned());
        call.variables = variables;
        self.calls.insert(key.clone(), call);
        self.by_action.insert(action_id.to_owned(), key.clone());
        if let Some(id) = channel_id {
            self.expected.insert(id.to_owned(), key);
        }
    }

    /// The Originate of `action_id` failed before Asterisk took it (refused, timed
    /// out): its call ends `failed` now.
    pub fn originate_failed(&mut self, action_id: &str, now: Instant) {
        if let Some(key) = self.by_action.get(action_id).cloned()
            && let Some(call) = self.calls.get(&key)
            && call.channels.is_empty()
        {
            self.end(&key, now, None);
        }
    }

    /// Handles an event of the server (any event: the ones about calls are used).
    pub fn handle_event(&mut self, event: &Message, now: Instant) {
        let Some(name) = event.event_name() else {
            return;
        };
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("Newchannel") {
            self.new_channel(event, now);
        } else if is("Newstate") {
            if event.get("ChannelState") == Some("6")
                && let Some(key) = self.key_of(event)
            {
                self.answer(&key, now);
            }
        } else if is("BridgeEnter") {
            if let Some(key) = self.key_of(event) {
                self.answer(&key, now);
            }
        } else if is("Hangup") {
            self.hangup(event, now);
        } else if is("OriginateResponse") {
            self.originate_response(event, now);
        }
    }

    /// An `OriginateResponse` (from the Originate's completion or the event stream):
    /// its `Reason`, and its `Uniqueid` when the Originate set no `ChannelId`.
    pub fn originate_response(&mut self, event: &Message, now: Instant) {
        if let Some(action_id) = event.action_id() {
            self.originate_response_as(action_id, event, now);
        }
    }

    /// [`CallTracker::originate_response`] for the Originate registered as
    /// `action_id` (when it was registered under an id of the caller's, not the
    /// ActionID it went out with).
    pub fn originate_response_as(&mut self, action_id: &str, event: &Message, now: Instant) {
        let Some(mut key) = self.by_action.remove(action_id) else {
            return;
        };
        let reason = event
            .get("Reason")
            .and_then(|r| r.trim().parse::<u16>().ok());
        // Matched by Uniqueid: the call the channel already belongs to.
        if let Some(uid) = event.get("Uniqueid")
            && let Some(channel_key) = self.channels.get(uid).cloned()
            && channel_key != key
        {
            self.merge(&key, &channel_key);
            key = channel_key;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        // The ActionID it went out with, when it was registered under another id.
        if let Some(sent_as) = event.action_id() {
            call.action_id = Some(sent_as.to_owned());
        }
        call.originate_reason = reason;
        if reason == Some(4) && call.answered.is_none() {
            call.answered = Some(now);
        }
        let done = call.ending.is_some() || call.channels.is_empty() && reason != Some(4);
        if done {
            self.end(&key, now, None);
        }
    }

    /// Ends what is due: calls past their grace for the `OriginateResponse`, and
    /// calls older than `max_age` (`unknown`).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<(String, bool)> = self
            .calls
            .iter()
            .filter_map(|(key, call)| {
                if call.ending.is_some_and(|(_, until)| until <= now) {
                    Some((key.clone(), false))
                } else if now.saturating_duration_since(call.created) >= self.config.max_age {
                    Some((key.clone(), true))
                } else {
                    None
                }
            })
            .collect();
        for (key, stale) in due {
            if stale {
                self.counters.evicted += 1;
                self.end(&key, now, Some(Outcome::Unknown));
            } else {
                let ended = self
                    .calls
                    .get(&key)
                    .and_then(|c| c.ending)
                    .map(|(at, _)| at);
                self.end(&key, ended.unwrap_or(now), None);
            }
        }
    }

    /// The earliest instant [`CallTracker::handle_timeout`] has work at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .values()
            .map(|call| match call.ending {
                Some((_, until)) => until,
                None => call.created + self.config.max_age,
            })
            .min()
    }

    /// After a reconnect: `live` holds the `CoreShowChannel` events of the channels up
    /// now. Calls followed before whose channels are all gone ended while the session
    /// was down (`unknown`, counted as lost); live channels not followed yet start
    /// calls (their start time is now: the real one is not known).
    pub fn reseed(&mut self, live: &[Message], now: Instant) {
        let up: HashMap<&str, &Message> = live
            .iter()
            .filter_map(|m| Some((m.get("Uniqueid")?, m)))
            .collect();
        let gone: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, call)| {
                !call.channels.is_empty() && !call.live.iter().any(|u| up.contains_key(u.as_str()))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.counters.lost += 1;
            self.end(&key, now, Some(Outcome::Unknown));
        }
        for message in live {
            if message
                .get("Uniqueid")
                .is_some_and(|u| !self.channels.contains_key(u))
            {
                self.new_channel(message, now);
                if message.get("ChannelState") == Some("6")
                    && let Some(key) = self.key_of(message)
                {
                    self.answer(&key, now);
                }
            }
        }
    }

    fn new_call(&mut self, now: Instant) -> Call {
        self.serial += 1;
        self.counters.started += 1;
        Call {
            created: now,
            answered: None,
            live: Vec::new(),
            channels: Vec::new(),
            uniqueid: None,
            linkedid: None,
            cause: None,
            action_id: None,
            registered_as: None,
            variables: Vec::new(),
            originate_reason: None,
            ending: None,
            serial: self.serial,
        }
    }

    /// The key of the call an event's channel belongs to.
    fn key_of(&self, event: &Message) -> Option<String> {
        let uid = event.get("Uniqueid")?;
        self.channels.get(uid).cloned()
    }

    fn new_channel(&mut self, event: &Message, now: Instant) {
        let Some(uid) = event.get("Uniqueid") else {
            return;
        };
        if self.channels.contains_key(uid) {
            return;
        }
        let linkedid = event.get("Linkedid").unwrap_or(uid).to_owned();
        // An Originate waiting for this channel: its call takes the Linkedid key.
        if let Some(placeholder) = self.expected.remove(uid) {
            self.merge(&placeholder, &linkedid);
        }
        if !self.calls.contains_key(&linkedid) {
            self.make_room(now);
            let call = self.new_call(now);
            self.calls.insert(linkedid.clone(), call);
        }
        let call = self.calls.get_mut(&linkedid).expect("inserted above");
        call.live.push(uid.to_owned());
        if call.channels.is_empty() {
            call.uniqueid = Some(uid.to_owned());
            call.linkedid = Some(linkedid.clone());
        }
        if let Some(channel) = event.get("Channel") {
            call.channels.push(channel.to_owned());
        }
        call.ending = None;
        self.channels.insert(uid.to_owned(), linkedid);
    }

    /// Moves the Originate's call `from` (no channel yet) into the call `into`: its
    /// key when there is none, else its ActionID and variables (one call, not two).
    fn merge(&mut self, from: &str, into: &str) {
        let Some(placeholder) = self.calls.remove(from) else {
            return;
        };
        for key in self
            .by_action
            .values_mut()
            .chain(self.expected.values_mut())
        {
            if key == from {
                *key = into.to_owned();
            }
        }
        match self.calls.get_mut(into) {
            None => {
                self.calls.insert(into.to_owned(), placeholder);
            }
            Some(call) => {
                if call.action_id.is_none() {
                    call.action_id = placeholder.action_id;
                    call.registered_as = placeholder.registered_as;
                    call.variables = placeholder.variables;
                }
                call.created = call.created.min(placeholder.created);
                call.originate_reason = call.originate_reason.or(placeholder.originate_reason);
                // Counted once, as the call it joined.
                self.counters.started -= 1;
            }
        }
    }

    fn answer(&mut self, key: &str, now: Instant) {
        if let Some(call) = self.calls.get_mut(key)
            && call.answered.is_none()
        {
            call.answered = Some(now);
        }
    }

    fn hangup(&mut self, event: &Message, now: Instant) {
        let Some(uid) = event.get("Uniqueid") else {
            return;
        };
        let Some(key) = self.channels.remove(uid) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.live.retain(|u| u != uid);
        if let Some(code) = event
            .get("Cause")
            .and_then(|c| c.trim().parse::<u16>().ok())
        {
            let better = call
                .cause
                .as_ref()
                .is_none_or(|(old, _)| telling(code) > telling(*old));
            if better {
                call.cause = Some((code, event.get("Cause-txt").map(str::to_owned)));
            }
        }
        if !call.live.is_empty() {
            return;
        }
        // An Originate still to answer: wait a moment for its reason.
        let waiting = call.action_id.is_some()
            && call.originate_reason.is_none()
            && self.by_action.values().any(|k| *k == key);
        if waiting {
            call.ending = Some((now, now + self.config.response_grace));
        } else {
            self.end(&key, now, None);
        }
    }

    /// Makes room for one more call: the oldest ends `unknown`.
    fn make_room(&mut self, now: Instant) {
        while self.calls.len() >= self.config.max_calls.max(1) {
            let Some(oldest) = self
                .calls
                .iter()
                .min_by_key(|(_, c)| c.serial)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.counters.evicted += 1;
            self.end(&oldest, now, Some(Outcome::Unknown));
        }
    }

    /// Ends the call `key` at `at`: its record, with `outcome` or the one its events
    /// tell.
    fn end(&mut self, key: &str, at: Instant, outcome: Option<Outcome>) {
        let Some(call) = self.calls.remove(key) else {
            return;
        };
        for uid in &call.live {
            self.channels.remove(uid);
        }
        self.expected.retain(|_, k| k != key);
        self.by_action.retain(|_, k| k != key);
        let outcome = outcome.unwrap_or_else(|| decide(&call));
        let (cause, cause_txt) = match call.cause {
            Some((code, text)) => (Some(code), text),
            None => (None, None),
        };
        self.counters.ended += 1;
        if self.ended.len() >= self.config.max_calls.max(1) {
            self.ended.pop_front();
            self.counters.records_dropped += 1;
        }
        self.ended.push_back(CallEnded {
            outcome,
            cause,
            cause_txt,
            originate_reason: call.originate_reason,
            created: call.created,
            answered: call.answered,
            ended: at,
            uniqueid: call.uniqueid,
            linkedid: call.linkedid,
            channels: call.channels,
            action_id: call.action_id,
            registered_as: call.registered_as,
            variables: call.variables,
        });
    }
}

/// How much a hangup cause tells about an unanswered call: a specific reason beats
/// normal clearing, which beats nothing.
fn telling(cause: u16) -> u8 {
    match cause {
        0 => 0,
        16 => 1,
        _ => 2,
    }
}

/// The outcome of a call that ended by its events.
fn decide(call: &Call) -> Outcome {
    if call.answered.is_some() {
        return Outcome::Answered;
    }
    let by_cause = call.cause.as_ref().and_then(|(code, _)| match code {
        17 => Some(Outcome::Busy),
        18 | 19 => Some(Outcome::NoAnswer),
        21 => Some(Outcome::Rejected),
        34 | 38 | 41 | 42 | 44 => Some(Outcome::Congestion),
        _ => None,
    });
    if let Some(outcome) = by_cause {
        return outcome;
    }
    let by_reason = match call.originate_reason {
        Some(5) => Some(Outcome::Busy),
        Some(3) => Some(Outcome::NoAnswer),
        Some(8) => Some(Outcome::Congestion),
        Some(1) => Some(Outcome::Cancelled),
        _ => None,
    };
    if let Some(outcome) = by_reason {
        return outcome;
    }
    match call.cause {
        Some((16, _)) => Outcome::Cancelled,
        _ => Outcome::Failed,
    }
}
