//! Events for the application and the bounded queue that holds them (plan §9–10).
//!
//! The queue never grows past its capacity: when full, the **oldest** event is dropped
//! and counted, and a warning is logged at most once per interval. Blocked event names
//! are dropped before they are queued. Priority event names are delivered ahead of the
//! others; when the queue is full, ordinary events are dropped before priority ones.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::Message;

/// An AMI event as delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Key of the server it came from.
    pub server_key: Arc<str>,
    /// When its bytes were handed to the connection.
    pub received_at: Instant,
    /// The event itself.
    pub message: Message,
}

impl Event {
    /// The event name (e.g. `Hangup`).
    pub fn name(&self) -> &str {
        self.message.event_name().unwrap_or_default()
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.message.get(key)
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
                .is_none_or(|key| key == &*event.server_key)
            && self
                .headers
                .iter()
                .all(|(key, value)| event.message.get_all(key).any(|v| v == value))
    }
}

/// Counters of the event queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// Events queued in all.
    pub queued: u64,
    /// Events dropped because the queue was full (oldest first).
    pub dropped: u64,
    /// Events dropped on arrival because their name is blocked.
    pub blocked: u64,
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
    warn_interval: Duration,
    last_warning: Option<Instant>,
    dropped_since_warning: u64,
}

/// What [`EventQueue::push`] did, for the caller's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            warn_interval,
            last_warning: None,
            dropped_since_warning: 0,
        }
    }

    /// Queues `event` (or drops it if blocked), dropping the oldest if full.
    pub fn push(&mut self, event: Event, now: Instant) -> Pushed {
        let name = event.name();
        if self
            .blocked_names
            .iter()
            .any(|blocked| blocked.eq_ignore_ascii_case(name))
        {
            self.counters.blocked += 1;
            return Pushed::Blocked;
        }
        let is_priority = self
            .priority_names
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name));
        let mut dropped = false;
        if self.len() >= self.capacity {
            // Ordinary events go first; priority ones only when nothing else is left.
            if self.normal.pop_front().is_none() {
                self.priority.pop_front();
            }
            dropped = true;
        }
        let index = self.counters.queued;
        if is_priority {
            self.priority.push_back((index, event));
        } else {
            self.normal.push_back((index, event));
        }
        self.counters.queued += 1;
        if !dropped {
            return Pushed::Queued;
        }
        self.counters.dropped += 1;
        self.dropped_since_warning += 1;
        let warn = self
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= self.warn_interval);
        let dropped_since_warning = self.dropped_since_warning;
        if warn {
            self.last_warning = Some(now);
            self.dropped_since_warning = 0;
        }
        Pushed::DroppedOldest {
            warn,
            dropped_since_warning,
        }
    }

    /// The next event: priority events first, then the others, each in arrival order.
    pub fn pop(&mut self) -> Option<Event> {
        self.priority
            .pop_front()
            .or_else(|| self.normal.pop_front())
            .map(|(_, event)| event)
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
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests need a starting instant
mod tests {
    use super::*;
    use crate::parser::{Limits, Parsed, Parser};

    fn event(name: &str, at: Instant) -> Event {
        let mut parser = Parser::new(Limits::default());
        let mut message = None;
        parser.feed(format!("Event: {name}\r\n\r\n").as_bytes(), &mut |item| {
            if let Parsed::Message(m) = item {
                message = Some(m);
            }
        });
        Event {
            server_key: "s".into(),
            received_at: at,
            message: message.unwrap(),
        }
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
        let names: Vec<String> = std::iter::from_fn(|| queue.pop())
            .map(|e| e.name().to_owned())
            .collect();
        assert_eq!(names, ["E2", "E3", "E4"]);
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
        let names: Vec<String> = std::iter::from_fn(|| queue.pop())
            .map(|e| e.name().to_owned())
            .collect();
        assert_eq!(names, ["DialBegin", "Newexten", "Hangup"]);
    }
}
