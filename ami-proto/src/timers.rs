//! The connection's fixed timers: one small enum indexing a table, the next deadline
//! being their minimum (with the earliest pending-action deadline, kept by the
//! correlation registry).

use std::time::Instant;

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
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
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
