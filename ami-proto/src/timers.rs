//! The connection's fixed timers: one small enum indexing a table, the next deadline
//! being their minimum (with the earliest pending-action deadline, kept by the
//! correlation registry).
//!
//! A deadline is `now + duration`, computed with [`deadline`]: when that sum does not
//! fit in an `Instant` (e.g. a timeout of `Duration::MAX`), there is **no deadline**:
//! the timer is not armed and never fires. The whole crate gives an overflowing
//! deadline that one meaning.

use std::time::{Duration, Instant};

/// `now + after`, or `None` ("no deadline") when the sum overflows.
pub(crate) fn deadline(now: Instant, after: Duration) -> Option<Instant> {
    now.checked_add(after)
}

/// A connection-level timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The transport must connect before this.
    Connect = 0,
    /// The banner must arrive before this.
    Banner = 1,
    /// The next heartbeat `Ping` is due.
    Heartbeat = 2,
}

const ALL: [Timer; 3] = [Timer::Connect, Timer::Banner, Timer::Heartbeat];

/// Deadlines of the [`Timer`]s; `None` when a timer is not armed.
#[derive(Debug, Default, Clone)]
pub(crate) struct TimerTable([Option<Instant>; 3]);

impl TimerTable {
    /// Arms `timer` to fire `after` from `now`; a deadline that overflows leaves it
    /// unarmed (no deadline).
    pub(crate) fn arm(&mut self, timer: Timer, now: Instant, after: Duration) {
        self.0[timer as usize] = deadline(now, after);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.0 = [None; 3];
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Disarms and returns the first timer due at `now`, if any.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Option<Timer> {
        let timer = ALL
            .into_iter()
            .find(|&t| self.0[t as usize].is_some_and(|at| at <= now))?;
        self.stop(timer);
        Some(timer)
    }
}
