//! The memory budget: one cap on the bytes the client holds, for every server together
//! (`options.memory_limit`, 128 MiB by default, as the seeds).
//!
//! A [`MemoryBudget`] is a limit and a shared count of the bytes in use. It is cheap to
//! clone (the clones share one counter) and `Send + Sync`, so connections on several
//! threads can charge the same budget. Bytes are charged by RAII: a [`Charge`] holds
//! them until it is dropped, and the charge of an [`Event`](crate::Event) travels with
//! the event, so an event the application holds (a driver's stream buffer, an outlet
//! queue) stays charged until it is dropped. The count is only ever raised by a check
//! that keeps it within the limit, so `used() <= limit()` holds at every instant,
//! seen from any thread, except for the tiny documented exemptions below.
//!
//! # What a connection charges, and what happens at the limit
//!
//! Each [`Connection`](crate::Connection) charges its [`Config::budget`](crate::Config::budget):
//!
//! | what | charged | at the limit |
//! |---|---|---|
//! | a queued event | its message's bytes (text and header table) + [`MESSAGE_OVERHEAD`] | the oldest queued events of that connection are dropped (ordinary before priority, as for a full queue) until it fits, each counted in [`EventCounters::dropped_memory`](crate::events::EventCounters::dropped_memory); when it cannot fit even with that queue empty, the incoming event is dropped and counted the same way |
//! | an action sent with [`send`](crate::Connection::send) | its encoded bytes while they wait in the write buffer, and [`ACTION_OVERHEAD`] while it is pending and then while its completion exists | refused with [`SendError::MemoryLimit`](crate::SendError::MemoryLimit), counted as refused; nothing is dropped to make room |
//! | a response, list item, list end or `OriginateResponse` collected for a pending action | its message's bytes + [`MESSAGE_OVERHEAD`], until the [`Completion`](crate::Completion) is dropped | the action fails at once with [`ActionError::MemoryLimit`](crate::ActionError::MemoryLimit) (never a list with items missing); the rest of its list is counted as late replies |
//! | the parser's buffered input (the start of a message cut across reads) | its length, after each read | the oldest queued events of that connection are dropped to make room (they are older than the message), counted as above; when that is not enough, the message is discarded up to its end and reported as a [`Discard`](crate::Discard) with [`ParseError::MemoryLimit`](crate::ParseError::MemoryLimit) (failing the action it answers, if its ActionID was read already) |
//! | a queued report ([`Output::Unmatched`](crate::Output::Unmatched), [`Output::Discarded`](crate::Output::Discarded)) | its message's bytes + [`MESSAGE_OVERHEAD`] | the report is dropped and counted in `reports_dropped` |
//!
//! # Exemptions
//!
//! - The connection's own actions (`Login`, `Challenge`, heartbeat `Ping`, `Logoff`)
//!   are never refused for memory: their encoded bytes (under 200 each, a few per
//!   connection at a time, until written) are charged without a check. Their replies
//!   are consumed at once and never charged.
//! - So that such a reply cut across two reads is never lost to memory, input the
//!   parser holds is charged without a check when the budget is short and making room
//!   did not help, if it is at most [`INPUT_EXEMPTION`] bytes and one of those actions
//!   awaits its reply.
//!
//! `used()` may pass the limit by those bytes, and by nothing else.
//!
//! # What is not counted
//!
//! `used()` counts the bytes held, not allocator slack: a buffer that grew keeps some
//! capacity (the parser's buffer frees capacity above twice the frame limit when it
//! empties, the write buffer capacity above [`TRIM_CAPACITY`]), and the fixed-size
//! parts of a connection (its tables, timers, the connection itself) are not counted.
//! The overhead constants cover the structs that hold each message. While one read is
//! parsed, the message it completes is held twice for a moment (in the parser and in
//! its own buffer) and charged once.
//!
//! # Sharing
//!
//! [`Config::new`](crate::Config::new) gives every configuration a fresh 128 MiB budget,
//! a cap per server. Drivers and clusters give every server's `Config` the **same**
//! budget (`config.budget = shared.clone()`) to make it one cap for the whole client.
//! `used()` returns to 0 once every connection, event and completion charged to it is
//! dropped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default limit: 128 MiB, the seeds' `memory_limit` (134,217,728 bytes).
pub const DEFAULT_MEMORY_LIMIT: usize = 128 * 1024 * 1024;

/// Bytes charged on top of a message's own bytes for every message the client holds
/// (a queued event, a list item, a collected response, a queued report): the struct
/// that holds it (an [`Event`](crate::Event) is 104 bytes on 64-bit targets, a
/// [`Message`](crate::Message) 56) in its queue or list, and the allocator's
/// bookkeeping for its buffer.
pub const MESSAGE_OVERHEAD: usize = 128;

/// Bytes charged for each action sent with [`send`](crate::Connection::send), from the
/// send until its [`Completion`](crate::Completion) is dropped: its entry in the
/// registry of pending actions (ActionID, deadline, strategy), then the completion
/// (208 bytes on 64-bit targets, without the messages it carries, charged apart).
pub const ACTION_OVERHEAD: usize = 256;

/// Input held by the parser that is charged without a check when the budget is short
/// and one of the connection's own actions awaits its reply: at most this many bytes
/// (every reply to a `Login`, `Challenge`, `Ping` or `Logoff` is shorter), so that such
/// a reply cut across two reads is never lost to memory.
pub const INPUT_EXEMPTION: usize = 256;

/// Capacity the write buffer keeps when it empties; above this it is freed, so that
/// a burst of sends does not hold uncounted memory for good.
pub const TRIM_CAPACITY: usize = 64 * 1024;

/// A budget could not take more bytes: `requested` more would pass `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory budget exhausted: {requested} more bytes would pass the limit ({used} of {limit} in use)"
)]
#[non_exhaustive]
pub struct BudgetExceeded {
    /// The bytes asked for.
    pub requested: usize,
    /// Bytes in use when it was refused.
    pub used: usize,
    /// The limit.
    pub limit: usize,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
}

/// A limit in bytes and the shared count of bytes in use under it. See the
/// [module documentation](self) for what is charged and what happens at the limit.
///
/// Clones share the count (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none in use.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes in use now, by every holder of this budget.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Bytes that can still be charged (0 at or past the limit).
    pub fn available(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Whether `self` and `other` are the same budget (clones of one another).
    pub fn same_as(&self, other: &MemoryBudget) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Charges `bytes`, held until the returned [`Charge`] is dropped; refused without
    /// changing anything when they would take the count past the limit.
    pub fn try_charge(&self, bytes: usize) -> Result<Charge, BudgetExceeded> {
        self.try_reserve(bytes)?;
        Ok(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    /// A charge of no bytes, to grow later.
    pub fn empty_charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Adds `bytes` to the count if it stays within the limit: one compare-and-swap
    /// when nobody else charges at the same instant. Pair with [`release`](Self::release).
    #[inline]
    pub(crate) fn try_reserve(&self, bytes: usize) -> Result<(), BudgetExceeded> {
        let limit = self.inner.limit;
        let mut used = self.inner.used.load(Ordering::Relaxed);
        loop {
            let new = match used.checked_add(bytes) {
                Some(new) if new <= limit => new,
                _ => {
                    return Err(BudgetExceeded {
                        requested: bytes,
                        used,
                        limit,
                    });
                }
            };
            match self.inner.used.compare_exchange_weak(
                used,
                new,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Adds `bytes` to the count without a check (the documented exemptions only).
    pub(crate) fn reserve_unchecked(&self, bytes: usize) {
        self.inner.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Gives back `bytes` reserved earlier.
    #[inline]
    pub(crate) fn release(&self, bytes: usize) {
        let before = self.inner.used.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "released {bytes} of {before} bytes");
    }
}

impl Default for MemoryBudget {
    /// A fresh budget of [`DEFAULT_MEMORY_LIMIT`].
    fn default() -> Self {
        MemoryBudget::new(DEFAULT_MEMORY_LIMIT)
    }
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit())
            .field("used", &self.used())
            .finish()
    }
}

/// Bytes charged to a [`MemoryBudget`], given back when the charge is dropped.
///
/// Not `Clone`: each charged byte is given back exactly once.
pub struct Charge {
    budget: MemoryBudget,
    bytes: usize,
}

impl Charge {
    /// Takes over `bytes` already reserved on `budget`.
    pub(crate) fn adopt(budget: MemoryBudget, bytes: usize) -> Self {
        Charge { budget, bytes }
    }

    /// Bytes held by this charge.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The budget charged.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Charges `bytes` more; refused without changing anything past the limit.
    pub fn try_grow(&mut self, bytes: usize) -> Result<(), BudgetExceeded> {
        self.budget.try_reserve(bytes)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Gives back `bytes` of this charge (all of it if it holds fewer).
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        if bytes > 0 {
            self.budget.release(bytes);
            self.bytes -= bytes;
        }
    }

    /// Gives back whatever this charge holds above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        self.shrink(self.bytes.saturating_sub(bytes));
    }

    /// Charges `bytes` more without a check (the documented exemptions only).
    pub(crate) fn grow_unchecked(&mut self, bytes: usize) {
        self.budget.reserve_unchecked(bytes);
        self.bytes += bytes;
    }

    /// Moves `bytes` of this charge (at most all of it) to `to`, a charge of the same
    /// budget; the count does not change.
    pub(crate) fn move_to(&mut self, to: &mut Charge, bytes: usize) {
        debug_assert!(self.budget.same_as(&to.budget));
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        to.bytes += bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charge")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_within_the_limit_and_gives_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_charge(60).unwrap();
        assert_eq!(budget.used(), 60);
        let refused = budget.try_charge(41).unwrap_err();
        assert_eq!(
            refused,
            BudgetExceeded {
                requested: 41,
                used: 60,
                limit: 100
            }
        );
        assert_eq!(budget.used(), 60, "a refusal changes nothing");
        let mut b = budget.try_charge(40).unwrap();
        assert_eq!(budget.available(), 0);
        assert!(b.try_grow(1).is_err());
        b.shrink(15);
        assert_eq!((b.bytes(), budget.used()), (25, 85));
        drop(a);
        assert_eq!(budget.used(), 25);
        b.shrink_to(5);
        assert_eq!(budget.used(), 5);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_charge(usize::MAX).is_err(), "no overflow");
    }

    #[test]
    fn clones_share_one_count_across_threads() {
        let budget = MemoryBudget::new(1000);
        let other = budget.clone();
        assert!(budget.same_as(&other));
        assert!(!budget.same_as(&MemoryBudget::new(1000)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut granted = 0;
                    let mut held = Vec::new();
                    for _ in 0..10_000 {
                        if let Ok(charge) = budget.try_charge(7) {
                            granted += 1;
                            held.push(charge);
                        }
                        assert!(budget.used() <= budget.limit());
                        if held.len() > 20 {
                            held.clear();
                        }
                    }
                    granted
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap() > 0);
        }
        assert_eq!(other.used(), 0);
    }

    #[test]
    fn what_travels_between_threads_can() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<MemoryBudget>();
        send_and_sync::<Charge>();
        send_and_sync::<crate::Event>();
        send_and_sync::<crate::Completion>();
        send_and_sync::<crate::Config>();
    }

    #[test]
    fn moving_between_charges_keeps_the_count() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.try_charge(70).unwrap();
        let mut b = budget.empty_charge();
        a.move_to(&mut b, 50);
        assert_eq!((a.bytes(), b.bytes(), budget.used()), (20, 50, 70));
        drop(b);
        assert_eq!(budget.used(), 20);
        a.grow_unchecked(200);
        assert_eq!(budget.used(), 220);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}
