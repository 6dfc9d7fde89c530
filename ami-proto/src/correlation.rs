//! ActionIDs, the registry of pending actions, and how each action completes
//! (plan §4–5, §7–8; PROTOCOL-NOTES 14–22, 26).
//!
//! An ActionID is `<server key>-<instance>-<generation>-<counter>`: unique across
//! servers (the key), processes (the instance tag, chosen by the driver), reconnects
//! (the generation) and actions (the counter). It is ASCII and at most 64 characters.
//! A message completes an action only when its ActionID is one this connection issued
//! **and** that action is still pending: broadcast events that carry another session's
//! ActionID never complete anything (PROTOCOL-NOTES 17).
//!
//! The registry is bounded (`max_pending_actions`) and every entry has a deadline;
//! the earliest deadline is found in O(log n).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::action::{MAX_ACTION_ID_LEN, Strategy};
use crate::budget::{ACTION_OVERHEAD, Charge};
use crate::error::{ActionError, Stage};
use crate::message::Message;
use crate::timers::deadline;

/// Longest server-key prefix kept in an ActionID, so that the whole ID fits in 64
/// characters whatever the counters reach.
const MAX_KEY_IN_ID: usize = 20;

/// Issues the ActionIDs of one connection and recognises them on the way back.
#[derive(Debug, Clone)]
pub struct ActionIds {
    prefix: String,
    next: u64,
}

impl ActionIds {
    /// IDs for the connection `generation` of `server_key` in the process (or client
    /// instance) tagged `instance`. Characters other than ASCII letters, digits, `_`
    /// and `.` in the key become `_`.
    pub fn new(server_key: &str, instance: u32, generation: u64) -> Self {
        let mut prefix: String = server_key
            .chars()
            .take(MAX_KEY_IN_ID)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // Hex keeps the numbers short: 20 + 1 + 8 + 1 + 16 + 1 + 16 = 63 at most.
        let _ = write!(prefix, "-{instance:x}-{generation:x}-");
        ActionIds { prefix, next: 1 }
    }

    /// The next ActionID and its counter.
    pub fn next_id(&mut self) -> (u64, String) {
        let counter = self.next;
        self.next += 1;
        let mut id = String::with_capacity(self.prefix.len() + 8);
        id.push_str(&self.prefix);
        let _ = write!(id, "{counter:x}");
        debug_assert!(id.len() <= MAX_ACTION_ID_LEN);
        (counter, id)
    }

    /// The counter of an ActionID this generator issued, or `None` for any other.
    pub fn counter_of(&self, action_id: &str) -> Option<u64> {
        let digits = action_id.strip_prefix(self.prefix.as_str())?;
        // Only the exact form we write: lowercase hex without leading zeros.
        let canonical = matches!(digits.as_bytes(), [first, ..] if *first != b'0')
            && digits.len() <= 16
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical {
            return None;
        }
        u64::from_str_radix(digits, 16)
            .ok()
            .filter(|&counter| counter < self.next)
    }
}

/// What a successful action returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response (`Response: Success`, or `Follows` for legacy command output).
    pub response: Message,
    /// The list items of an event list, or the `OriginateResponse` of an async Originate.
    pub events: Vec<Message>,
    /// The event that ended an event list (e.g. `QueueStatusComplete`).
    pub list_end: Option<Message>,
}

impl Reply {
    /// Command output lines, in either format (PROTOCOL-NOTES 23–24).
    pub fn output(&self) -> Vec<&str> {
        self.response.output_lines()
    }
}

/// An action's one and only completion.
///
/// It holds its charge of the connection's memory budget (the messages it carries and
/// [`ACTION_OVERHEAD`]) until it is dropped; a clone is not charged. Equality looks at
/// the public fields only.
#[derive(Debug)]
pub struct Completion {
    /// The ActionID the action was sent with.
    pub action_id: String,
    /// When it was sent and when it completed (for latency metrics).
    pub sent_at: Instant,
    /// When it completed.
    pub completed_at: Instant,
    /// The reply, or why there is none.
    pub result: Result<Reply, ActionError>,
    charge: Option<Charge>,
}

impl Completion {
    /// The completion of `pending`, which holds `charge`: trimmed to what `result`
    /// still carries (the items of a failed list are gone).
    pub(crate) fn new(
        action_id: String,
        sent_at: Instant,
        completed_at: Instant,
        result: Result<Reply, ActionError>,
        mut charge: Option<Charge>,
    ) -> Self {
        if let Some(charge) = &mut charge {
            let carried: usize = match &result {
                Ok(reply) => {
                    reply.response.charged_size()
                        + reply
                            .events
                            .iter()
                            .map(Message::charged_size)
                            .sum::<usize>()
                        + reply.list_end.as_ref().map_or(0, Message::charged_size)
                }
                Err(ActionError::Rejected { response, .. }) => response.charged_size(),
                Err(_) => 0,
            };
            debug_assert!(carried + ACTION_OVERHEAD <= charge.bytes());
            charge.shrink_to(carried + ACTION_OVERHEAD);
        }
        Completion {
            action_id,
            sent_at,
            completed_at,
            result,
            charge,
        }
    }

    /// The completion of an action that failed before it was written (an Originate
    /// held by a client's call limits): no ActionID yet (empty), no charge.
    pub fn unsent(since: Instant, now: Instant, error: ActionError) -> Self {
        Completion {
            action_id: String::new(),
            sent_at: since,
            completed_at: now,
            result: Err(error),
            charge: None,
        }
    }

    /// Time from send to completion.
    pub fn latency(&self) -> Duration {
        self.completed_at.saturating_duration_since(self.sent_at)
    }

    /// Bytes of the memory budget this completion holds (0 for a clone).
    pub fn charged(&self) -> usize {
        self.charge.as_ref().map_or(0, Charge::bytes)
    }
}

impl Clone for Completion {
    /// A copy that holds no charge: the original keeps it.
    fn clone(&self) -> Self {
        Completion {
            action_id: self.action_id.clone(),
            sent_at: self.sent_at,
            completed_at: self.completed_at,
            result: self.result.clone(),
            charge: None,
        }
    }
}

impl PartialEq for Completion {
    fn eq(&self, other: &Self) -> bool {
        self.action_id == other.action_id
            && self.sent_at == other.sent_at
            && self.completed_at == other.completed_at
            && self.result == other.result
    }
}

impl Eq for Completion {}

/// Who is waiting for an action: the application, or the connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    User,
    Challenge,
    Login,
    Heartbeat,
    Logoff,
}

/// One action awaiting completion.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) action_id: String,
    pub(crate) purpose: Purpose,
    pub(crate) strategy: Strategy,
    pub(crate) stage: Stage,
    pub(crate) sent_at: Instant,
    /// When the current stage times out; `None` when `now + timeout` overflowed (no
    /// deadline: the action never times out by itself).
    pub(crate) deadline: Option<Instant>,
    pub(crate) timeout: Duration,
    pub(crate) response: Option<Message>,
    pub(crate) events: Vec<Message>,
    /// List items received in all (may exceed `events.len()` past the cap).
    pub(crate) items: u64,
    /// For an action of the application: its charge of the memory budget, from
    /// [`ACTION_OVERHEAD`] at the send, grown by every message it collects. `None` for
    /// the connection's own actions, whose replies are never charged.
    pub(crate) charge: Option<Charge>,
}

/// What a message did to the action it names.
#[derive(Debug)]
pub(crate) enum Progress {
    /// The action is complete.
    Done(Result<Reply, ActionError>),
    /// The action waits for more; its deadline may have moved.
    Continue,
    /// The message does not belong to this action's exchange: here it is back.
    NotMine(Message),
}

impl Pending {
    /// Charges `message`, which this action is about to keep; the error to fail the
    /// action with when the budget is short.
    fn charge(&mut self, message: &Message) -> Result<(), ActionError> {
        let Some(charge) = &mut self.charge else {
            return Ok(());
        };
        charge
            .try_grow(message.charged_size())
            .map_err(|refused| ActionError::MemoryLimit {
                used: refused.used,
                limit: refused.limit,
            })
    }

    /// Applies a response that carries this action's ActionID.
    pub(crate) fn on_response(&mut self, response: Message, now: Instant) -> Progress {
        let is_error = response
            .response()
            .is_some_and(|r| r.eq_ignore_ascii_case("Error"));
        // The responses this action keeps (in its reply or its error) are charged.
        let keeps = match self.stage {
            Stage::Response => true,
            Stage::EventList => is_error,
            // A pending action is past the pacing stage (it was written).
            Stage::OriginateEvent | Stage::Paced => false,
        };
        if keeps && let Err(error) = self.charge(&response) {
            return Progress::Done(Err(error));
        }
        match self.stage {
            // PJSIPShowEndpoint may answer an Error inside its list: it ends the list.
            Stage::EventList if is_error => Progress::Done(Err(rejected(response))),
            Stage::EventList | Stage::OriginateEvent | Stage::Paced => Progress::NotMine(response),
            Stage::Response if is_error => Progress::Done(Err(rejected(response))),
            Stage::Response => {
                let starts_list = response
                    .get("EventList")
                    .is_some_and(|v| v.eq_ignore_ascii_case("start"));
                if starts_list {
                    self.response = Some(response);
                    self.stage = Stage::EventList;
                    return Progress::Continue;
                }
                if let Strategy::AsyncOriginate { event_timeout } = self.strategy {
                    self.response = Some(response);
                    self.stage = Stage::OriginateEvent;
                    self.timeout = event_timeout;
                    self.deadline = deadline(now, event_timeout);
                    return Progress::Continue;
                }
                Progress::Done(Ok(Reply {
                    response,
                    events: Vec::new(),
                    list_end: None,
                }))
            }
        }
    }

    /// Applies an event that carries this action's ActionID.
    /// Each list item restarts the deadline: a long list fails only when it stalls.
    pub(crate) fn on_event(
        &mut self,
        event: Message,
        max_list_items: usize,
        now: Instant,
    ) -> Progress {
        match self.stage {
            Stage::EventList => {
                let ends_list = event
                    .get("EventList")
                    .is_some_and(|v| v.eq_ignore_ascii_case("Complete"));
                if ends_list {
                    if self.items > max_list_items as u64 {
                        return Progress::Done(Err(ActionError::ListTooLong {
                            limit: max_list_items,
                            received: self.items,
                        }));
                    }
                    if let Err(error) = self.charge(&event) {
                        return Progress::Done(Err(error));
                    }
                    return Progress::Done(Ok(Reply {
                        response: self.take_response(),
                        events: std::mem::take(&mut self.events),
                        list_end: Some(event),
                    }));
                }
                self.items += 1;
                self.deadline = deadline(now, self.timeout);
                // Past the cap, items are counted (for the error) but not kept.
                if self.events.len() < max_list_items {
                    // A list is whole or fails: an item the budget cannot take fails
                    // the action now, rather than leaving a hole in the list.
                    if let Err(error) = self.charge(&event) {
                        return Progress::Done(Err(error));
                    }
                    self.events.push(event);
                }
                Progress::Continue
            }
            Stage::OriginateEvent
                if event
                    .event_name()
                    .is_some_and(|n| n.eq_ignore_ascii_case("OriginateResponse")) =>
            {
                if let Err(error) = self.charge(&event) {
                    return Progress::Done(Err(error));
                }
                Progress::Done(Ok(Reply {
                    response: self.take_response(),
                    events: vec![event],
                    list_end: None,
                }))
            }
            _ => Progress::NotMine(event),
        }
    }

    /// The error for a deadline that ran out now.
    pub(crate) fn timeout_error(&self) -> ActionError {
        ActionError::Timeout {
            stage: self.stage,
            timeout: self.timeout,
        }
    }

    fn take_response(&mut self) -> Message {
        // The stages that reach here set the response first.
        self.response.take().unwrap_or_else(Message::empty)
    }
}

fn rejected(response: Message) -> ActionError {
    ActionError::Rejected {
        message: response.get("Message").unwrap_or_default().to_owned(),
        response: Box::new(response),
    }
}

/// The pending actions of one connection, by counter, with their deadlines (an action
/// without a deadline is pending but not in `deadlines`).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Pending actions the application is waiting for (`Purpose::User`).
    user: usize,
}

impl Registry {
    pub(crate) fn insert(&mut self, counter: u64, pending: Pending) {
        if let Some(at) = pending.deadline {
            self.deadlines.insert((at, counter));
        }
        if pending.purpose == Purpose::User {
            self.user += 1;
        }
        self.pending.insert(counter, pending);
    }

    pub(crate) fn contains(&self, counter: u64) -> bool {
        self.pending.contains_key(&counter)
    }

    pub(crate) fn get_mut(&mut self, counter: u64) -> Option<&mut Pending> {
        self.pending.get_mut(&counter)
    }

    /// Moves an entry's deadline after its stage changed.
    pub(crate) fn reschedule(&mut self, counter: u64, old: Option<Instant>) {
        if let Some(pending) = self.pending.get(&counter) {
            if let Some(old) = old {
                self.deadlines.remove(&(old, counter));
            }
            if let Some(at) = pending.deadline {
                self.deadlines.insert((at, counter));
            }
        }
    }

    pub(crate) fn remove(&mut self, counter: u64) -> Option<Pending> {
        let pending = self.pending.remove(&counter)?;
        if let Some(at) = pending.deadline {
            self.deadlines.remove(&(at, counter));
        }
        if pending.purpose == Purpose::User {
            self.user -= 1;
        }
        Some(pending)
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Removes and returns one entry whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(u64, Pending)> {
        let &(at, counter) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        self.remove(counter).map(|pending| (counter, pending))
    }

    /// Removes every entry, in the order they were sent.
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        let mut all: Vec<(u64, Pending)> = self.pending.drain().collect();
        all.sort_unstable_by_key(|(counter, _)| *counter);
        self.deadlines.clear();
        self.user = 0;
        all.into_iter().map(|(_, pending)| pending).collect()
    }

    /// Actions the application waits for.
    pub(crate) fn user_pending(&self) -> usize {
        self.user
    }

    /// Actions of the connection's own (login, heartbeat, logoff) awaiting a reply.
    pub(crate) fn internal_pending(&self) -> usize {
        self.pending.len() - self.user
    }
}

/// The connection generation and counter of an ActionID issued by [`ActionIds`], or
/// `None` for an ActionID in any other form. Drivers key their completion slots by
/// these two numbers instead of by the string.
pub fn action_tag(action_id: &str) -> Option<(u64, u64)> {
    let mut parts = action_id.rsplitn(3, '-');
    let counter = u64::from_str_radix(parts.next()?, 16).ok()?;
    let generation = u64::from_str_radix(parts.next()?, 16).ok()?;
    parts.next()?;
    Some((generation, counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_action_and_its_completion_fit_in_their_overhead() {
        assert!(size_of::<Pending>() <= ACTION_OVERHEAD);
        assert!(size_of::<Completion>() <= ACTION_OVERHEAD);
    }

    #[test]
    fn ids_are_short_ascii_and_recognised() {
        let mut ids = ActionIds::new("node_1 with a very long name ü", u32::MAX, u64::MAX);
        let (counter, id) = ids.next_id();
        assert!(id.is_ascii());
        assert!(id.len() <= 64, "{id} is {} long", id.len());
        assert_eq!(ids.counter_of(&id), Some(counter));
        assert_eq!(ids.counter_of(&format!("{id}0")), None, "never issued");
        assert_eq!(ids.counter_of("foreign-1"), None);
    }

    #[test]
    fn other_generations_and_instances_are_foreign() {
        let mut mine = ActionIds::new("node_1", 7, 2);
        let mut old = ActionIds::new("node_1", 7, 1);
        let mut other_process = ActionIds::new("node_1", 8, 2);
        let (_, id) = mine.next_id();
        assert_eq!(old.counter_of(&id), None);
        assert_eq!(other_process.counter_of(&id), None);
        let (_, old_id) = old.next_id();
        let (_, theirs) = other_process.next_id();
        assert_eq!(mine.counter_of(&old_id), None);
        assert_eq!(mine.counter_of(&theirs), None);
    }

    #[test]
    fn action_tag_reads_generation_and_counter_back() {
        let mut ids = ActionIds::new("pbx-1 west", 0xabc, 7);
        let (counter, id) = ids.next_id();
        assert_eq!(action_tag(&id), Some((7, counter)));
        assert_eq!(action_tag("foreign-id"), None);
        assert_eq!(action_tag("x-1-zz"), None);
    }
}
