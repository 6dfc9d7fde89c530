//! Which servers of a [`ClientCore`](crate::ClientCore) need their driver, found
//! without visiting every server: a loop over a thousand servers costs what the few
//! with something to do cost.
//!
//! Three structures, each kept up to date by the core after every input it takes for
//! a server (its deadline recomputed, its outputs looked at):
//!
//! - the deadlines, ordered by instant: each server at most once, at the earliest
//!   instant its node or its dialer needs a timeout (the earliest of all is the first
//!   entry; the due ones are a range from the start);
//! - the turns: the servers with outputs waiting, in the order they take turns
//!   handing them out (a server cut short goes to the back, so the next one goes
//!   first next time);
//! - the changed servers: every server an input, a send, a timeout or a polled output
//!   changed since the driver last asked, so that it writes what they queued.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

/// The per-server bookkeeping of the core. See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// `(deadline, server)` for every server with a deadline.
    by_time: BTreeSet<(Instant, usize)>,
    /// Each server's entry in `by_time`.
    deadline: Vec<Option<Instant>>,
    /// Servers with outputs waiting, in turn order.
    turns: VecDeque<usize>,
    /// Whether a server is in `turns`.
    in_turns: Vec<bool>,
    /// Servers changed since [`Schedule::take_changed`].
    changed: Vec<usize>,
    /// Whether a server is in `changed`.
    in_changed: Vec<bool>,
}

impl Schedule {
    /// Makes room for `servers` servers.
    pub(crate) fn grow(&mut self, servers: usize) {
        if self.deadline.len() < servers {
            self.deadline.resize(servers, None);
            self.in_turns.resize(servers, false);
            self.in_changed.resize(servers, false);
        }
    }

    /// Sets a server's next deadline.
    pub(crate) fn set_deadline(&mut self, server: usize, at: Option<Instant>) {
        let entry = &mut self.deadline[server];
        if *entry == at {
            return;
        }
        if let Some(old) = entry.take() {
            self.by_time.remove(&(old, server));
        }
        if let Some(at) = at {
            self.by_time.insert((at, server));
        }
        *entry = at;
    }

    /// The earliest deadline of all.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.by_time.first().map(|&(at, _)| at)
    }

    /// Every server whose deadline is at or before `now`, earliest first.
    pub(crate) fn due(&self, now: Instant) -> impl Iterator<Item = usize> + '_ {
        self.by_time
            .iter()
            .take_while(move |&&(at, _)| at <= now)
            .map(|&(_, server)| server)
    }

    /// Gives a server with outputs a turn (at the back), unless it has one.
    pub(crate) fn add_turn(&mut self, server: usize) {
        if !self.in_turns[server] {
            self.in_turns[server] = true;
            self.turns.push_back(server);
        }
    }

    /// Servers waiting for a turn.
    pub(crate) fn turns(&self) -> usize {
        self.turns.len()
    }

    /// The server whose turn it is; it leaves the queue.
    pub(crate) fn take_turn(&mut self) -> Option<usize> {
        let server = self.turns.pop_front()?;
        self.in_turns[server] = false;
        Some(server)
    }

    /// Notes that a server changed.
    pub(crate) fn change(&mut self, server: usize) {
        if !self.in_changed[server] {
            self.in_changed[server] = true;
            self.changed.push(server);
        }
    }

    /// The servers changed since the last call, each once.
    pub(crate) fn take_changed(&mut self, mut each: impl FnMut(usize)) {
        for server in self.changed.drain(..) {
            self.in_changed[server] = false;
            each(server);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a test: any instant will do
    fn deadlines_move_and_the_due_ones_come_in_order() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut schedule = Schedule::default();
        schedule.grow(4);
        schedule.set_deadline(0, Some(at(30)));
        schedule.set_deadline(1, Some(at(10)));
        schedule.set_deadline(2, Some(at(20)));
        assert_eq!(schedule.next_deadline(), Some(at(10)));
        // A deadline moved later leaves no trace at its old instant.
        schedule.set_deadline(1, Some(at(40)));
        assert_eq!(schedule.next_deadline(), Some(at(20)));
        assert_eq!(schedule.due(at(30)).collect::<Vec<_>>(), [2, 0]);
        schedule.set_deadline(2, None);
        assert_eq!(schedule.due(at(100)).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(schedule.by_time.len(), 2);
    }

    #[test]
    fn turns_and_changes_hold_each_server_once() {
        let mut schedule = Schedule::default();
        schedule.grow(3);
        schedule.add_turn(2);
        schedule.add_turn(0);
        schedule.add_turn(2);
        assert_eq!(schedule.turns(), 2);
        assert_eq!(schedule.take_turn(), Some(2));
        schedule.add_turn(2);
        assert_eq!(schedule.take_turn(), Some(0));
        assert_eq!(schedule.take_turn(), Some(2));
        assert_eq!(schedule.take_turn(), None);
        schedule.change(1);
        schedule.change(1);
        schedule.change(0);
        let mut changed = Vec::new();
        schedule.take_changed(|s| changed.push(s));
        assert_eq!(changed, [1, 0]);
        schedule.take_changed(|s| changed.push(s));
        assert_eq!(changed, [1, 0]);
    }
}
