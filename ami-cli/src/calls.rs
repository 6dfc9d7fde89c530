//! Call records in the loop of `ami listen --calls`, `ami calls` and `ami gateway`:
//! one [`CallTracker`] per server fed from the event sink, its ended calls turned into
//! [`Record::Call`]s each tick, and after a reconnect the live calls reseeded from
//! `CoreShowChannels`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ami_mio::Driver;
use ami_mio::ami_cluster::{CallTracker, TrackerConfig};
use ami_proto::action::CoreShowChannels;
use ami_proto::{Event, Message};

use crate::json::WallClock;
use crate::outlet::Record;

/// `CoreShowChannels` answers (their `CoreShowChannel` events) per server.
type Reseeds = Rc<RefCell<Vec<(Arc<str>, Vec<Message>)>>>;

/// The trackers of every server, shared by the event sink and the loop.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    trackers: Rc<RefCell<HashMap<Arc<str>, CallTracker>>>,
    /// `CoreShowChannels` answers waiting to reseed their server's tracker.
    reseeds: Reseeds,
    /// When the trackers' timeouts last ran.
    timeouts_ran: Rc<Cell<Option<Instant>>>,
}

/// How often the trackers' timeouts run (each run looks at every call; the nearest
/// timeout is 2 s away, the grace for an `OriginateResponse`).
const TIMEOUT_CADENCE: Duration = Duration::from_millis(250);

impl Calls {
    /// Feeds one event to its server's tracker.
    pub fn handle(&self, event: &Event) {
        let mut trackers = self.trackers.borrow_mut();
        let tracker = match trackers.get_mut(event.server_key()) {
            Some(tracker) => tracker,
            None => trackers
                .entry(event.server_key().clone())
                .or_insert_with(|| CallTracker::new(TrackerConfig::default())),
        };
        tracker.handle_event(&event.message, event.received_at);
    }

    /// A session of `server` is back: asks it for its live channels, to reseed.
    pub fn session_back(&self, driver: &mut Driver, server: &str) {
        let Some(id) = driver.server_id(server) else {
            return;
        };
        let reseeds = self.reseeds.clone();
        let key: Arc<str> = server.into();
        let sent = driver.send(id, CoreShowChannels, move |result| match result {
            Ok(reply) => reseeds.borrow_mut().push((key, reply.events)),
            Err(error) => {
                tracing::warn!(server_key = %key, %error, "CoreShowChannels failed: calls not reseeded")
            }
        });
        if let Err(error) = sent {
            tracing::warn!(server_key = server, %error, "cannot reseed the calls");
        }
    }

    /// Applies the reseeds that came, runs the trackers' timeouts (every
    /// [`TIMEOUT_CADENCE`]), and adds a record for every call that ended.
    pub fn report(&self, clock: &WallClock, batch: &mut Vec<Record>) {
        let now = Instant::now();
        let mut trackers = self.trackers.borrow_mut();
        for (server, live) in self.reseeds.borrow_mut().drain(..) {
            trackers
                .entry(server)
                .or_insert_with(|| CallTracker::new(TrackerConfig::default()))
                .reseed(&live, now);
        }
        let timeouts = self
            .timeouts_ran
            .get()
            .is_none_or(|at| now.saturating_duration_since(at) >= TIMEOUT_CADENCE);
        if timeouts {
            self.timeouts_ran.set(Some(now));
        }
        for (server, tracker) in trackers.iter_mut() {
            if timeouts {
                tracker.handle_timeout(now);
            }
            while let Some(call) = tracker.poll_ended() {
                batch.push(Record::Call {
                    server: server.clone(),
                    created_at: clock.unix_seconds(call.created),
                    answered_at: call.answered.map(|at| clock.unix_seconds(at)),
                    ended_at: clock.unix_seconds(call.ended),
                    call: Box::new(call),
                });
            }
        }
    }

    /// Calls followed now, and calls evicted so far, over every server.
    pub fn totals(&self) -> (usize, u64) {
        let trackers = self.trackers.borrow();
        (
            trackers.values().map(CallTracker::live_calls).sum(),
            trackers.values().map(|t| t.counters().evicted).sum(),
        )
    }
}
