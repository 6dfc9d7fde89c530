//! Events for the application and the bounded queue that holds them (plan §9–10).
//!
//! The queue never grows past its capacity: when full, the **oldest** event is dropped
//! and counted, and a warning is logged at most once per interval. Blocked event names
//! are dropped before they are queued. Priority event names are delivered ahead of the
//! others; when the queue is full, ordinary events are dropped before priority ones.
//!
//! Every queued event is charged to the connection's [`MemoryBudget`] (its message's
//! bytes and [`MESSAGE_OVERHEAD`](crate::budget::MESSAGE_OVERHEAD)), and the charge
//! travels with the event: it is given back when the event (and every clone of it) is
//! dropped, wherever the application keeps it. When the budget is short, the oldest
//! queued events are dropped in the same order as for a full queue until the new one
//! fits, counted apart ([`EventCounters::dropped_memory`]); when it cannot fit even with
//! the queue empty (the bytes are held elsewhere), the new event is dropped instead and
//! the queue is left as it is. The budget is tried first: an event it cannot take
//! drops events for memory (which also makes room in a full queue); one it can take
//! but that finds the queue full drops the oldest for capacity.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::budget::{Charge, MemoryBudget};
use crate::message::Message;

/// Where the events of one connection come from: the server key and the budget they
/// are charged to. Shared by every event of the connection, so that an event costs one
/// reference count for both.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) server_key: Arc<str>,
    pub(crate) budget: MemoryBudget,
}

/// What an event holds of the budget. Given back on drop, unless the event was cloned:
/// the bytes then belong to one charge shared by every copy, given back by the last.
struct EventCharge {
    source: Arc<Source>,
    /// Bytes charged (0 until the event is queued).
    bytes: usize,
    /// Set when the event is cloned.
    shared: OnceLock<Arc<Charge>>,
}

impl Drop for EventCharge {
    #[inline]
    fn drop(&mut self) {
        if self.bytes > 0 && self.shared.get().is_none() {
            self.source.budget.release(self.bytes);
        }
    }
}

/// An AMI event as delivered to the application.
///
/// It holds its charge of the connection's memory budget until it is dropped; a clone
/// shares that charge (the bytes are charged once, until the last copy is dropped).
/// Equality, like `Debug`, looks at the server key, the time and the message only.
pub struct Event {
    /// When its bytes were handed to the connection.
    pub received_at: Instant,
    /// The event itself.
    pub message: Message,
    charge: EventCharge,
}

impl Event {
    /// An event of `source`, not charged yet.
    pub(crate) fn new(source: Arc<Source>, received_at: Instant, message: Message) -> Self {
        Event {
            received_at,
            message,
            charge: EventCharge {
                source,
                bytes: 0,
                shared: OnceLock::new(),
            },
        }
    }

    /// The event name (e.g. `Hangup`).
    pub fn name(&self) -> &str {
        self.message.event_name().unwrap_or_default()
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.message.get(key)
    }

    /// Key of the server it came from.
    pub fn server_key(&self) -> &Arc<str> {
        &self.charge.source.server_key
    }

    /// Bytes of the memory budget this event holds (shared with its clones); 0 for an
    /// event that was never queued.
    pub fn charged(&self) -> usize {
        self.charge.bytes
    }

    /// Charges the event to its budget unless it is charged already; false when the
    /// budget is short (nothing changes then).
    #[inline]
    fn try_charge(&mut self) -> bool {
        if self.charge.bytes > 0 {
            return true;
        }
        let size = self.message.charged_size();
        if self.charge.source.budget.try_reserve(size).is_err() {
            return false;
        }
        self.charge.bytes = size;
        true
    }
}

impl Clone for Event {
    /// A copy that shares the original's charge: the bytes stay charged, once, until
    /// the last copy is dropped. The first clone of an event allocates that shared
    /// charge.
    fn clone(&self) -> Self {
        let shared = OnceLock::new();
        if self.charge.bytes > 0 {
            let charge = self.charge.shared.get_or_init(|| {
                Arc::new(Charge::adopt(
                    self.charge.source.budget.clone(),
                    self.charge.bytes,
                ))
            });
            let _ = shared.set(charge.clone());
        }
        Event {
            received_at: self.received_at,
            message: self.message.clone(),
            charge: EventCharge {
                source: self.charge.source.clone(),
                bytes: self.charge.bytes,
                shared,
            },
        }
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.server_key() == other.server_key()
            && self.received_at == other.received_at
            && self.message == other.message
    }
}

impl Eq for Event {}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("server_key", self.server_key())
            .field("received_at", &self.received_at)
            .field("message", &self.message)
            .field("charged", &self.charge.bytes)
            .finish()
    }
}

/// Which events a subscriber wants (by name, server, header values); every condition
/// given must hold. The drivers' subscriptions and streams all use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    event: Option<String>,
    server: Option<String>,
    headers: Vec<(String, String)>,
}

impl Filter {
    /// Every event of every server.
    pub fn any() -> Self {
        Filter::default()
    }

    /// Only events named `name` (case-insensitive).
    pub fn event(name: impl Into<String>) -> Self {
        Filter {
            event: Some(name.into()),
            ..Filter::default()
        }
    }

    /// Only events from the server `key`.
    pub fn server(mut self, key: impl Into<String>) -> Self {
        self.server = Some(key.into());
        self
    }

    /// Only events whose header `key` (case-insensitive) has exactly `value`, e.g.
    /// `Filter::event("Hangup").header("Channel", "PJSIP/100")`.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.event
            .as_deref()
            .is_none_or(|name| name.eq_ignore_ascii_case(event.name()))
            && self
                .server
                .as_deref()
                .is_none_or(|key| key == &**event.server_key())
            && self
                .headers
                .iter()
                .all(|(key, value)| event.message.get_all(key).any(|v| v == value))
    }
}

/// Counters of the event queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventCounters {
    /// Events queued in all.
    pub queued: u64,
    /// Events dropped because the queue was full (oldest first).
    pub dropped: u64,
    /// Events dropped on arrival because their name is blocked.
    pub blocked: u64,
    /// Events dropped because the memory budget was exhausted (reason `memory_limit`):
    /// queued ones, oldest first, to make room for a new one, or the new one itself
    /// when it could not fit. Not counted in `dropped`.
    pub dropped_memory: u64,
}

/// At most one warning per interval, with the drops since the last one.
#[derive(Debug)]
struct Warnings {
    interval: Duration,
    last: Option<Instant>,
    since_last: u64,
}

impl Warnings {
    fn new(interval: Duration) -> Self {
        Warnings {
            interval,
            last: None,
            since_last: 0,
        }
    }

    /// Counts `dropped` more drops; returns whether a warning is due now and the drops
    /// it reports (since the last warning, these included).
    fn count(&mut self, dropped: u64, now: Instant) -> (bool, u64) {
        self.since_last += dropped;
        let since_last = self.since_last;
        let warn = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if warn {
            self.last = Some(now);
            self.since_last = 0;
        }
        (warn, since_last)
    }
}

/// The bounded, drop-oldest event queue of one connection.
///
/// Each queued event keeps its *index*: how many events were queued before it. The
/// connection compares indexes with its other outputs to hand everything out in wire
/// order ([`EventQueue::oldest_index`]).
#[derive(Debug)]
pub struct EventQueue {
    capacity: usize,
    priority: VecDeque<(u64, Event)>,
    normal: VecDeque<(u64, Event)>,
    blocked_names: Vec<String>,
    priority_names: Vec<String>,
    counters: EventCounters,
    /// Bytes charged by the events queued.
    charged: usize,
    full_warnings: Warnings,
    memory_warnings: Warnings,
}

/// What [`EventQueue::make_room`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Room {
    /// Whether the charge went through.
    pub(crate) charged: bool,
    /// Events dropped for it.
    pub(crate) dropped: u64,
}

/// What [`EventQueue::push`] did, for the caller's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Dropped on arrival: its name is blocked.
    Blocked,
    /// Queued, and the oldest event was dropped to make room. `warn` says whether a
    /// warning is due (at most one per interval), with the drops since the last one.
    DroppedOldest {
        /// Whether to log a warning now.
        warn: bool,
        /// Drops since the last warning, this one included.
        dropped_since_warning: u64,
    },
    /// The memory budget was short: `dropped` events were dropped for it (counted in
    /// [`EventCounters::dropped_memory`]): queued ones, oldest first, and the new one
    /// too when `queued` is false. `warn` and `dropped_since_warning` as for
    /// [`DroppedOldest`](Pushed::DroppedOldest), counted apart.
    MemoryLimit {
        /// Whether the new event was queued.
        queued: bool,
        /// Events dropped by this push.
        dropped: u64,
        /// Whether to log a warning now.
        warn: bool,
        /// Memory drops since the last such warning, these included.
        dropped_since_warning: u64,
    },
}

impl EventQueue {
    /// An empty queue. A capacity of 0 is treated as 1.
    pub fn new(
        capacity: usize,
        blocked: &[String],
        priority: &[String],
        warn_interval: Duration,
    ) -> Self {
        EventQueue {
            capacity: capacity.max(1),
            priority: VecDeque::new(),
            normal: VecDeque::new(),
            blocked_names: blocked.to_vec(),
            priority_names: priority.to_vec(),
            counters: EventCounters::default(),
            charged: 0,
            full_warnings: Warnings::new(warn_interval),
            memory_warnings: Warnings::new(warn_interval),
        }
    }

    /// Queues `event` (or drops it if blocked), dropping the oldest if full, and
    /// charges it to its budget, dropping the oldest for memory if the budget is short
    /// (see the [module documentation](self)).
    pub fn push(&mut self, mut event: Event, now: Instant) -> Pushed {
        // The name is only looked at when there are names to compare it with.
        let named = |names: &[String]| {
            !names.is_empty() && {
                let name = event.name();
                names.iter().any(|listed| listed.eq_ignore_ascii_case(name))
            }
        };
        if named(&self.blocked_names) {
            self.counters.blocked += 1;
            return Pushed::Blocked;
        }
        let is_priority = named(&self.priority_names);
        if !event.try_charge() {
            return self.push_short_of_memory(event, is_priority, now);
        }
        let mut dropped = false;
        if self.len() >= self.capacity {
            drop(self.pop_oldest());
            dropped = true;
        }
        self.enqueue(event, is_priority);
        if !dropped {
            return Pushed::Queued;
        }
        self.counters.dropped += 1;
        let (warn, dropped_since_warning) = self.full_warnings.count(1, now);
        Pushed::DroppedOldest {
            warn,
            dropped_since_warning,
        }
    }

    /// [`push`](Self::push) when the budget cannot take `event`: drops the oldest until
    /// it fits, unless it could not fit even with the queue empty.
    #[cold]
    #[inline(never)]
    fn push_short_of_memory(
        &mut self,
        mut event: Event,
        is_priority: bool,
        now: Instant,
    ) -> Pushed {
        let budget = event.charge.source.budget.clone();
        let size = event.message.charged_size();
        let room = self.make_room(&budget, size, || event.try_charge());
        let queued = room.charged;
        let mut dropped = room.dropped;
        if queued {
            // The queue lost at least one event: there is room for this one.
            self.enqueue(event, is_priority);
        } else {
            dropped += 1;
            self.counters.dropped_memory += 1;
        }
        let (warn, dropped_since_warning) = self.memory_warnings.count(dropped, now);
        Pushed::MemoryLimit {
            queued,
            dropped,
            warn,
            dropped_since_warning,
        }
    }

    /// Drops the oldest events (in drop order: ordinary ones first) until `charge`, an
    /// attempt to charge `bytes` more to `budget`, succeeds, counting each in
    /// [`EventCounters::dropped_memory`]. None is dropped when `bytes` could not fit
    /// even with the queue empty: the bytes are held elsewhere (other connections,
    /// events the application keeps), and emptying the queue would not help.
    pub(crate) fn make_room(
        &mut self,
        budget: &MemoryBudget,
        bytes: usize,
        mut charge: impl FnMut() -> bool,
    ) -> Room {
        let could_fit = budget
            .used()
            .saturating_sub(self.charged)
            .checked_add(bytes)
            .is_some_and(|needed| needed <= budget.limit());
        let mut room = Room::default();
        if could_fit {
            while let Some(oldest) = self.pop_oldest() {
                drop(oldest);
                room.dropped += 1;
                if charge() {
                    room.charged = true;
                    break;
                }
            }
        }
        self.counters.dropped_memory += room.dropped;
        room
    }

    /// Counts `dropped` events dropped for memory outside [`push`](Self::push) (e.g. by
    /// [`make_room`](Self::make_room) for another use) in the memory warnings; returns
    /// whether a warning is due and the drops it reports.
    pub(crate) fn memory_warning(&mut self, dropped: u64, now: Instant) -> (bool, u64) {
        self.memory_warnings.count(dropped, now)
    }

    fn enqueue(&mut self, event: Event, is_priority: bool) {
        self.charged += event.charge.bytes;
        let index = self.counters.queued;
        if is_priority {
            self.priority.push_back((index, event));
        } else {
            self.normal.push_back((index, event));
        }
        self.counters.queued += 1;
    }

    /// The oldest event in drop order: ordinary events first, priority ones only when
    /// nothing else is left.
    fn pop_oldest(&mut self) -> Option<Event> {
        let event = self
            .normal
            .pop_front()
            .or_else(|| self.priority.pop_front())?
            .1;
        self.charged -= event.charge.bytes;
        Some(event)
    }

    /// The index (events queued before it, [`EventCounters::queued`] at the time) of
    /// the oldest event waiting, priority or not; `None` when empty. The event
    /// [`pop`](Self::pop) returns next is this one or, when a priority event waits, the
    /// oldest priority event.
    pub fn oldest_index(&self) -> Option<u64> {
        let front = |queue: &VecDeque<(u64, Event)>| queue.front().map(|&(index, _)| index);
        match (front(&self.priority), front(&self.normal)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event: priority events first, then the others, each in arrival order.
    /// It keeps its charge of the budget until it is dropped.
    pub fn pop(&mut self) -> Option<Event> {
        let event = self
            .priority
            .pop_front()
            .or_else(|| self.normal.pop_front())?
            .1;
        self.charged -= event.charge.bytes;
        Some(event)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.priority.len() + self.normal.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The counters.
    pub fn counters(&self) -> EventCounters {
        self.counters
    }

    /// Bytes of the memory budget held by the events waiting.
    pub fn charged(&self) -> usize {
        self.charged
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need a starting instant
mod tests {
    use super::*;
    use crate::parser::{Limits, Parsed, Parser};

    fn source(limit: usize) -> Arc<Source> {
        Arc::new(Source {
            server_key: "s".into(),
            budget: MemoryBudget::new(limit),
        })
    }

    fn event_of(source: &Arc<Source>, name: &str, at: Instant) -> Event {
        let mut parser = Parser::new(Limits::default());
        let mut message = None;
        parser.feed(format!("Event: {name}\r\n\r\n").as_bytes(), &mut |item| {
            if let Parsed::Message(m) = item {
                message = Some(m);
            }
        });
        Event::new(source.clone(), at, message.unwrap())
    }

    fn event(name: &str, at: Instant) -> Event {
        event_of(&source(usize::MAX), name, at)
    }

    fn names(queue: &mut EventQueue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop())
            .map(|e| e.name().to_owned())
            .collect()
    }

    /// What one event named like `E0` costs the budget.
    fn size_of_event() -> usize {
        event("E0", Instant::now()).message.charged_size()
    }

    #[test]
    fn an_event_fits_in_its_overhead() {
        assert!(size_of::<Event>() <= crate::budget::MESSAGE_OVERHEAD);
    }

    #[test]
    fn memory_drops_the_oldest_ordinary_first_and_counts_apart() {
        let now = Instant::now();
        let size = size_of_event();
        let source = source(3 * size);
        let mut queue = EventQueue::new(100, &[], &["P0".into()], Duration::from_secs(1));
        for name in ["P0", "E1", "E2"] {
            assert_eq!(
                queue.push(event_of(&source, name, now), now),
                Pushed::Queued
            );
        }
        assert_eq!(
            (source.budget.used(), queue.charged()),
            (3 * size, 3 * size)
        );
        assert_eq!(
            queue.push(event_of(&source, "E3", now), now),
            Pushed::MemoryLimit {
                queued: true,
                dropped: 1,
                warn: true,
                dropped_since_warning: 1
            }
        );
        // The priority event stays while ordinary ones are left to drop.
        for name in ["E4", "E5", "E6"] {
            queue.push(event_of(&source, name, now), now);
        }
        let counters = queue.counters();
        assert_eq!((counters.dropped_memory, counters.dropped), (4, 0));
        assert_eq!(counters.queued, 7);
        assert_eq!(names(&mut queue), ["P0", "E5", "E6"]);
        assert_eq!(source.budget.used(), 0, "popped events were dropped");
    }

    #[test]
    fn an_event_that_cannot_fit_leaves_the_queue_alone() {
        let now = Instant::now();
        let size = size_of_event();
        let source = source(3 * size);
        let mut queue = EventQueue::new(100, &[], &[], Duration::from_secs(1));
        queue.push(event_of(&source, "E1", now), now);
        // Held elsewhere: the application keeps two events of this budget.
        let mut held = EventQueue::new(100, &[], &[], Duration::from_secs(1));
        held.push(event_of(&source, "E2", now), now);
        held.push(event_of(&source, "E3", now), now);
        let kept = [held.pop().unwrap(), held.pop().unwrap()];
        let pushed = queue.push(event_of(&source, "E4", now), now);
        assert!(matches!(
            pushed,
            Pushed::MemoryLimit {
                queued: true,
                dropped: 1,
                ..
            }
        ));
        assert_eq!(source.budget.used(), 3 * size);
        // A larger event does not fit even with the queue empty: only it is dropped.
        let big = Event::new(source.clone(), now, {
            let mut parser = Parser::new(Limits::default());
            let mut message = None;
            parser.feed(b"Event: Big\r\nData: 0123456789\r\n\r\n", &mut |item| {
                if let Parsed::Message(m) = item {
                    message = Some(m);
                }
            });
            message.unwrap()
        });
        assert!(matches!(
            queue.push(big, now),
            Pushed::MemoryLimit {
                queued: false,
                dropped: 1,
                ..
            }
        ));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.counters().dropped_memory, 2);
        assert!(source.budget.used() <= source.budget.limit());
        drop(kept);
        drop(queue);
        assert_eq!(source.budget.used(), 0);
    }

    #[test]
    fn clones_share_one_charge_until_the_last_is_dropped() {
        let now = Instant::now();
        let size = size_of_event();
        let source = source(10 * size);
        let mut queue = EventQueue::new(10, &[], &[], Duration::from_secs(1));
        queue.push(event_of(&source, "E1", now), now);
        let original = queue.pop().unwrap();
        assert_eq!(original.charged(), size);
        let copy = original.clone();
        let copy_of_copy = copy.clone();
        assert_eq!(copy, original);
        assert_eq!(source.budget.used(), size, "charged once");
        drop(original);
        drop(copy);
        assert_eq!(source.budget.used(), size, "the last copy still holds it");
        drop(copy_of_copy);
        assert_eq!(source.budget.used(), 0);
        // An event never queued is not charged, nor are its clones.
        let loose = event_of(&source, "E2", now);
        let loose_copy = loose.clone();
        assert_eq!((loose.charged(), loose_copy.charged()), (0, 0));
        assert_eq!(source.budget.used(), 0);
    }

    #[test]
    fn drops_oldest_and_counts() {
        let now = Instant::now();
        let mut queue = EventQueue::new(3, &[], &[], Duration::from_secs(1));
        for i in 0..5 {
            queue.push(event(&format!("E{i}"), now), now);
        }
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.counters().dropped, 2);
        assert_eq!(names(&mut queue), ["E2", "E3", "E4"]);
    }

    #[test]
    fn warns_at_most_once_per_interval() {
        let start = Instant::now();
        let mut queue = EventQueue::new(1, &[], &[], Duration::from_secs(1));
        queue.push(event("A", start), start);
        let mut warnings = 0;
        for ms in 0..2500u64 {
            let now = start + Duration::from_millis(ms);
            if let Pushed::DroppedOldest { warn: true, .. } = queue.push(event("B", now), now) {
                warnings += 1;
            }
        }
        assert_eq!(warnings, 3, "at 0 ms, 1000 ms and 2000 ms");
        assert_eq!(queue.counters().dropped, 2500);
    }

    #[test]
    fn blocked_names_never_enter() {
        let now = Instant::now();
        let mut queue = EventQueue::new(10, &["rtcpsent".into()], &[], Duration::from_secs(1));
        assert_eq!(queue.push(event("RTCPSent", now), now), Pushed::Blocked);
        assert!(queue.is_empty());
        assert_eq!(queue.counters().blocked, 1);
    }

    #[test]
    fn priority_first_and_dropped_last() {
        let now = Instant::now();
        let mut queue = EventQueue::new(3, &[], &["DialBegin".into()], Duration::from_secs(1));
        queue.push(event("VarSet", now), now);
        queue.push(event("DialBegin", now), now);
        queue.push(event("Newexten", now), now);
        queue.push(event("Hangup", now), now);
        assert_eq!(names(&mut queue), ["DialBegin", "Newexten", "Hangup"]);
    }
}
