//! Event streams: one bounded, drop-oldest buffer per subscriber.
//!
//! The connection task never waits for a subscriber: it pushes each event into the
//! buffer of every stream whose [`Filter`] matches and moves on. A full buffer drops
//! its oldest event and counts it ([`EventStream::dropped`]), like the core's own event
//! queue; a slow consumer loses events, never the connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use ami_proto::{Event, Filter};
use futures_core::Stream;
use futures_util::task::AtomicWaker;

/// Events a stream buffers by default before it drops the oldest.
pub const DEFAULT_STREAM_CAPACITY: usize = 10_000;

/// The buffer shared by a stream and the connection task.
#[derive(Debug)]
pub(crate) struct Subscriber {
    filter: Filter,
    capacity: usize,
    queue: Mutex<VecDeque<Event>>,
    dropped: AtomicU64,
    delivered: AtomicU64,
    /// The client's task has ended: no more events will come.
    finished: AtomicBool,
    waker: AtomicWaker,
}

impl Subscriber {
    /// Offers an event; returns whether the filter took it.
    pub(crate) fn offer(&self, event: &Event) -> bool {
        if !self.filter.matches(event) {
            return false;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= self.capacity {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(event.clone());
        drop(queue);
        self.waker.wake();
        true
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
            capacity: capacity.max(1),
            queue: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
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

    /// Hands `events` to every live stream; forgets streams that were dropped.
    pub(crate) fn dispatch(&self, events: &[Event]) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|s| Arc::strong_count(s) > 1);
        for subscriber in list.iter() {
            for event in events {
                subscriber.offer(event);
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
        self.subscriber.dropped.load(Ordering::Relaxed)
    }

    /// Events this stream has handed out.
    pub fn delivered(&self) -> u64 {
        self.subscriber.delivered.load(Ordering::Relaxed)
    }

    /// Events waiting in the buffer.
    pub fn queued(&self) -> usize {
        self.subscriber
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let subscriber = &self.subscriber;
        let take = || {
            subscriber
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
        };
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
