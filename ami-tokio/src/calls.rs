//! Call streams: the ended calls of servers whose calls are tracked
//! ([`ClientSpec::calls`](crate::ClientSpec::calls)), one bounded, drop-oldest buffer
//! per stream, as event streams have.
//!
//! The connection task never waits for a stream: a full buffer drops its oldest record
//! and counts it ([`CallStream::dropped`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use ami_cluster::{CallEnded, ServerId};
use futures_core::Stream;
use futures_util::task::AtomicWaker;

/// Records a call stream buffers by default before it drops the oldest.
pub const DEFAULT_CALL_CAPACITY: usize = 10_000;

/// One ended call and the server it was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The server's key.
    pub server: String,
    /// What the tracker saw of the call.
    pub call: CallEnded,
}

/// The buffer shared by a stream and the connection task.
#[derive(Debug)]
struct CallSubscriber {
    /// Only this server's calls (`None`: every server's).
    server: Option<ServerId>,
    capacity: usize,
    queue: Mutex<VecDeque<CallRecord>>,
    dropped: AtomicU64,
    finished: AtomicBool,
    waker: AtomicWaker,
}

impl CallSubscriber {
    fn queue(&self) -> MutexGuard<'_, VecDeque<CallRecord>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The call streams of one client task.
#[derive(Debug, Default)]
pub(crate) struct CallSubscribers {
    list: Mutex<Vec<Arc<CallSubscriber>>>,
}

impl CallSubscribers {
    fn list(&self) -> MutexGuard<'_, Vec<Arc<CallSubscriber>>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new stream of `server`'s calls (`None`: every server's). Streams dropped
    /// since are forgotten.
    pub(crate) fn subscribe(&self, server: Option<ServerId>, capacity: usize) -> CallStream {
        let subscriber = Arc::new(CallSubscriber {
            server,
            capacity: capacity.max(1),
            queue: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let mut list = self.list();
        list.retain(|s| Arc::strong_count(s) > 1);
        list.push(subscriber.clone());
        CallStream { subscriber }
    }

    /// Hands a record to every live stream that takes its server.
    pub(crate) fn dispatch(&self, id: ServerId, record: CallRecord) {
        let mut list = self.list();
        list.retain(|s| Arc::strong_count(s) > 1);
        for subscriber in list.iter().filter(|s| s.server.is_none_or(|s| s == id)) {
            let mut queue = subscriber.queue();
            if queue.len() >= subscriber.capacity {
                queue.pop_front();
                subscriber.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(server_key = %record.server, "call stream full: its consumer fell behind, oldest record dropped");
            }
            queue.push_back(record.clone());
            drop(queue);
            subscriber.waker.wake();
        }
    }

    /// Ends every stream (the task is gone).
    pub(crate) fn finish_all(&self) {
        for subscriber in self.list().drain(..) {
            subscriber.finished.store(true, Ordering::Release);
            subscriber.waker.wake();
        }
    }
}

/// A `Stream` of ended calls ([`CallRecord`]s). It ends when its client's task ends.
#[derive(Debug)]
pub struct CallStream {
    subscriber: Arc<CallSubscriber>,
}

impl CallStream {
    /// Records this stream dropped (oldest first) because its consumer fell behind.
    pub fn dropped(&self) -> u64 {
        self.subscriber.dropped.load(Ordering::Relaxed)
    }
}

impl Stream for CallStream {
    type Item = CallRecord;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CallRecord>> {
        let subscriber = &self.subscriber;
        if let Some(record) = subscriber.queue().pop_front() {
            return Poll::Ready(Some(record));
        }
        subscriber.waker.register(cx.waker());
        if let Some(record) = subscriber.queue().pop_front() {
            return Poll::Ready(Some(record));
        }
        if subscriber.finished.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}
