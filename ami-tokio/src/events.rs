//! Event streams: one bounded, drop-oldest buffer per subscriber.
//!
//! The connection task never waits for a subscriber: it pushes each event into the
//! buffer of every stream whose [`Filter`] matches and moves on. The buffer is the
//! core's own drop-oldest [`EventQueue`]: a full buffer drops its oldest event, counts
//! it ([`EventStream::dropped`]) and logs a rate-limited warning; a slow consumer loses
//! events, never the connection. An event in a buffer keeps its charge of the memory
//! budget (shared with the copies in other streams) until the stream hands it out and
//! the consumer drops it, so streams that fall behind make the connection drop new
//! events for memory rather than let the client grow.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ami_proto::events::{EventQueue, Pushed};
use ami_proto::{Event, Filter};
use futures_core::Stream;
use futures_util::task::AtomicWaker;

/// Events a stream buffers by default before it drops the oldest.
pub const DEFAULT_STREAM_CAPACITY: usize = 10_000;

/// At most one warning per this interval about one stream's drops.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// The buffer shared by a stream and the connection task.
#[derive(Debug)]
pub(crate) struct Subscriber {
    filter: Filter,
    queue: Mutex<EventQueue>,
    delivered: AtomicU64,
    /// The client's task has ended: no more events will come.
    finished: AtomicBool,
    waker: AtomicWaker,
}

impl Subscriber {
    fn queue(&self) -> MutexGuard<'_, EventQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event the filter took.
    fn push(&self, event: Event, now: Instant) {
        let mut queue = self.queue();
        // The key is only needed for a warning, which only a full buffer can cause.
        let server_key = (queue.len() >= queue.capacity()).then(|| event.server_key().clone());
        let pushed = queue.push(event, now);
        drop(queue);
        if let (
            Some(server_key),
            Pushed::DroppedOldest {
                warn: true,
                dropped_since_warning,
            },
        ) = (server_key, pushed)
        {
            tracing::warn!(
                server_key = %server_key,
                dropped = dropped_since_warning,
                "event stream full: its consumer fell behind, oldest events dropped"
            );
        }
        self.waker.wake();
    }

    /// No more events: the stream ends once its buffer is empty.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The subscribers of one client.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    list: Mutex<Vec<Arc<Subscriber>>>,
}

impl Subscribers {
    /// A new stream for `filter`.
    /// Streams dropped since are forgotten here, so the list never holds more than
    /// the live streams and those dropped since the last event or subscription.
    pub(crate) fn subscribe(&self, filter: Filter, capacity: usize) -> EventStream {
        let subscriber = Arc::new(Subscriber {
            filter,
            queue: Mutex::new(EventQueue::new(capacity, &[], &[], DROP_WARNING_INTERVAL)),
            delivered: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|s| Arc::strong_count(s) > 1);
        list.push(subscriber.clone());
        drop(list);
        EventStream { subscriber }
    }

    /// Hands `events` to every live stream whose filter takes them, emptying
    /// `events`; forgets streams that were dropped. The last stream that takes an
    /// event gets the event itself, the others a copy (which shares its charge).
    pub(crate) fn dispatch(&self, events: &mut Vec<Event>, now: Instant) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|s| Arc::strong_count(s) > 1);
        for event in events.drain(..) {
            let mut taker: Option<&Subscriber> = None;
            for subscriber in list.iter().filter(|s| s.filter.matches(&event)) {
                if let Some(previous) = taker.replace(subscriber) {
                    previous.push(event.clone(), now);
                }
            }
            if let Some(last) = taker {
                last.push(event, now);
            }
        }
    }

    /// Ends every stream (the task is gone).
    pub(crate) fn finish_all(&self) {
        for subscriber in self
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            subscriber.finish();
        }
    }

    /// Live streams.
    pub(crate) fn len(&self) -> usize {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| Arc::strong_count(s) > 1)
            .count()
    }
}

/// A `Stream` of the events that pass a [`Filter`], from one client (or, merged, from a
/// cluster). It ends when its client's connection task ends.
#[derive(Debug)]
pub struct EventStream {
    subscriber: Arc<Subscriber>,
}

impl EventStream {
    /// Events this stream dropped (oldest first) because its consumer fell behind.
    pub fn dropped(&self) -> u64 {
        self.subscriber.queue().counters().dropped
    }

    /// Events this stream has handed out.
    pub fn delivered(&self) -> u64 {
        self.subscriber.delivered.load(Ordering::Relaxed)
    }

    /// Events waiting in the buffer.
    pub fn queued(&self) -> usize {
        self.subscriber.queue().len()
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let subscriber = &self.subscriber;
        let take = || subscriber.queue().pop();
        if let Some(event) = take() {
            subscriber.delivered.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(event));
        }
        subscriber.waker.register(cx.waker());
        // An event (or the end) may have come between the check and the registration.
        if let Some(event) = take() {
            subscriber.delivered.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Some(event));
        }
        if subscriber.finished.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
