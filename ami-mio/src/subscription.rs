//! Event subscriptions: by name, catch-all, per server, with header filters.
//!
//! Listeners run inside the tick, after every socket has been read. A listener that
//! panics is caught, counted and logged; it never takes the worker down.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ami_cluster::{CallEnded, Health};
pub use ami_proto::events::Filter;
use ami_proto::{Event, State};

/// Identifies a listener, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type EventListener = Box<dyn FnMut(&Event)>;
type StateListener = Box<dyn FnMut(&str, State, State)>;
type HealthListener = Box<dyn FnMut(&str, Health, Health)>;
type EventSink = Box<dyn FnMut(Event)>;
type CallListener = Box<dyn FnMut(&str, &CallEnded)>;

/// Every listener of a driver.
#[derive(Default)]
pub(crate) struct Listeners {
    events: Vec<(SubscriptionId, Filter, EventListener)>,
    states: Vec<(SubscriptionId, StateListener)>,
    healths: Vec<(SubscriptionId, HealthListener)>,
    calls: Vec<(SubscriptionId, CallListener)>,
    /// Takes every event by value after the listeners.
    sink: Option<EventSink>,
    next_id: u64,
    /// Listener calls that panicked.
    pub(crate) panics: u64,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("events", &self.events.len())
            .field("states", &self.states.len())
            .field("healths", &self.healths.len())
            .field("calls", &self.calls.len())
            .field("sink", &self.sink.is_some())
            .field("panics", &self.panics)
            .finish()
    }
}

impl Listeners {
    fn next_id(&mut self) -> SubscriptionId {
        self.next_id += 1;
        SubscriptionId(self.next_id)
    }

    pub(crate) fn add_event(&mut self, filter: Filter, listener: EventListener) -> SubscriptionId {
        let id = self.next_id();
        self.events.push((id, filter, listener));
        id
    }

    pub(crate) fn add_state(&mut self, listener: StateListener) -> SubscriptionId {
        let id = self.next_id();
        self.states.push((id, listener));
        id
    }

    pub(crate) fn add_health(&mut self, listener: HealthListener) -> SubscriptionId {
        let id = self.next_id();
        self.healths.push((id, listener));
        id
    }

    pub(crate) fn add_call(&mut self, listener: CallListener) -> SubscriptionId {
        let id = self.next_id();
        self.calls.push((id, listener));
        id
    }

    /// Removes a listener; false if there was none with this id.
    pub(crate) fn remove(&mut self, id: SubscriptionId) -> bool {
        let count = |l: &Self| l.events.len() + l.states.len() + l.healths.len() + l.calls.len();
        let before = count(self);
        self.events.retain(|(i, _, _)| *i != id);
        self.states.retain(|(i, _)| *i != id);
        self.healths.retain(|(i, _)| *i != id);
        self.calls.retain(|(i, _)| *i != id);
        before != count(self)
    }

    pub(crate) fn set_sink(&mut self, sink: EventSink) {
        self.sink = Some(sink);
    }

    /// Whether any event listener or sink exists (events are dropped unseen otherwise).
    pub(crate) fn has_event_listeners(&self) -> bool {
        !self.events.is_empty() || self.sink.is_some()
    }

    /// Whether any event listener (not the sink) exists.
    pub(crate) fn has_listeners(&self) -> bool {
        !self.events.is_empty()
    }

    /// Runs the matching listeners on `event`, then hands it to the sink.
    /// `server_key` is the key of the server it came from, for the logs.
    pub(crate) fn dispatch_event(&mut self, server_key: &str, event: Event) {
        for (_, filter, listener) in &mut self.events {
            if filter.matches(&event)
                && catch_unwind(AssertUnwindSafe(|| listener(&event))).is_err()
            {
                self.panics += 1;
                tracing::error!(server_key = %event.server_key(), event = event.name(), "event listener panicked");
            }
        }
        if let Some(sink) = &mut self.sink
            && catch_unwind(AssertUnwindSafe(|| sink(event))).is_err()
        {
            self.panics += 1;
            tracing::error!(server_key, "event sink panicked");
        }
    }

    pub(crate) fn dispatch_state(&mut self, server_key: &str, from: State, to: State) {
        for (_, listener) in &mut self.states {
            if catch_unwind(AssertUnwindSafe(|| listener(server_key, from, to))).is_err() {
                self.panics += 1;
                tracing::error!(server_key, "state listener panicked");
            }
        }
    }

    pub(crate) fn dispatch_health(&mut self, server_key: &str, from: Health, to: Health) {
        for (_, listener) in &mut self.healths {
            if catch_unwind(AssertUnwindSafe(|| listener(server_key, from, to))).is_err() {
                self.panics += 1;
                tracing::error!(server_key, "health listener panicked");
            }
        }
    }

    pub(crate) fn dispatch_call(&mut self, server_key: &str, call: &CallEnded) {
        for (_, listener) in &mut self.calls {
            if catch_unwind(AssertUnwindSafe(|| listener(server_key, call))).is_err() {
                self.panics += 1;
                tracing::error!(server_key, "call listener panicked");
            }
        }
    }
}
