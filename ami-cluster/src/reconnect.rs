//! Per-server reconnect policy: [`Backoff`] between attempts, a [`CircuitBreaker`]
//! around them.
//!
//! The driver tells a [`Reconnector`] what happened (`on_connect_failed`,
//! `on_connected`, `on_disconnected`) and asks it when to try next (`next_attempt`,
//! `due`, `begin_attempt`). Every delay is a full-jitter backoff draw in
//! [100 ms, 30 s]; after `failure_threshold` consecutive failures the circuit opens
//! and the next attempt is a single half-open probe after the cooldown, itself
//! jittered by up to [`PROBE_JITTER`] so that circuits that opened together do not
//! probe together.
//!
//! Every scheduled instant is computed with `checked_add`; one that overflows an
//! `Instant` means **no deadline** (as in the core): nothing is scheduled, and no
//! attempt is made until [`Reconnector::request_attempt`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, BackoffConfig};
use crate::circuit::{CircuitBreaker, CircuitConfig, CircuitState, Transition};
use crate::health::RetryStatus;
use crate::rng::Rng;

/// The most a half-open probe is delayed past the end of the cooldown: 1 s.
pub const PROBE_JITTER: Duration = Duration::from_secs(1);

/// Circuit transitions kept for [`Reconnector::drain_transitions`]; older ones are
/// dropped if nobody drains them.
const MAX_PENDING_TRANSITIONS: usize = 8;

/// What to do after a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this instant (now plus a backoff delay); `None` when that instant
    /// overflows (no deadline: nothing is scheduled).
    RetryAt(Option<Instant>),
    /// The circuit is open until this instant; the half-open probe is scheduled at
    /// [`Reconnector::next_attempt`], at most [`PROBE_JITTER`] later. `None` when the
    /// cooldown never ends (too long for a deadline): no probe is scheduled.
    CircuitOpenUntil(Option<Instant>),
}

/// The reconnect state of one server.
#[derive(Debug, Clone, Default)]
pub struct Reconnector {
    backoff: Backoff,
    circuit: CircuitBreaker,
    next_attempt: Option<Instant>,
    attempts: u64,
    transitions: VecDeque<Transition>,
}

impl Reconnector {
    /// A reconnector with nothing scheduled.
    pub fn new(backoff: BackoffConfig, circuit: CircuitConfig) -> Self {
        Reconnector {
            backoff: Backoff::new(backoff),
            circuit: CircuitBreaker::new(circuit),
            next_attempt: None,
            attempts: 0,
            transitions: VecDeque::new(),
        }
    }

    /// A connection attempt failed (refused, timed out, login rejected…) at `now`.
    /// Records the failure with the circuit and schedules the next attempt.
    pub fn on_connect_failed(&mut self, now: Instant, rng: &mut Rng) -> Decision {
        let transition = self.circuit.record_failure(now);
        self.push(transition);
        match self.circuit.state(now) {
            CircuitState::Open { until } => {
                let jitter = rng.range_inclusive(0, PROBE_JITTER.as_millis() as u64);
                self.next_attempt =
                    until.and_then(|until| until.checked_add(Duration::from_millis(jitter)));
                Decision::CircuitOpenUntil(until)
            }
            CircuitState::Closed | CircuitState::HalfOpen => {
                let at = now.checked_add(self.backoff.next_delay(rng));
                self.next_attempt = at;
                Decision::RetryAt(at)
            }
        }
    }

    /// A connection was lost after it had been established: schedules a reconnect
    /// after a backoff delay (not counted as a circuit failure) and returns its time
    /// (`None` when it overflows: nothing is scheduled).
    pub fn on_disconnected(&mut self, now: Instant, rng: &mut Rng) -> Option<Instant> {
        let at = now.checked_add(self.backoff.next_delay(rng));
        self.next_attempt = at;
        at
    }

    /// A connection attempt succeeded (logged in) at `now`: resets the backoff,
    /// records a success with the circuit and clears the schedule.
    pub fn on_connected(&mut self, now: Instant) {
        self.backoff.reset();
        let transition = self.circuit.record_success(now);
        self.push(transition);
        self.next_attempt = None;
    }

    /// Asks for an attempt as soon as the policy allows: at `now` when nothing is
    /// scheduled; a scheduled retry or circuit probe keeps its time (an explicit open
    /// never bypasses the backoff or an open circuit).
    pub fn request_attempt(&mut self, now: Instant) {
        if self.next_attempt.is_none() {
            self.next_attempt = Some(now);
        }
    }

    /// Drops the scheduled attempt (the application closed the server on purpose).
    /// The backoff and the circuit keep their state.
    pub fn cancel(&mut self) {
        self.next_attempt = None;
    }

    /// When the next attempt is scheduled, if one is.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// Whether the scheduled attempt is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_some_and(|at| now >= at)
    }

    /// Starts the due attempt if the circuit admits it (in half-open this consumes the
    /// probe). Returns `false`, changing nothing, when nothing is due or the circuit
    /// refuses. The attempt's outcome must be reported with `on_connected` or
    /// `on_connect_failed`.
    pub fn begin_attempt(&mut self, now: Instant) -> bool {
        if !self.due(now) {
            return false;
        }
        let transition = self.circuit.advance(now);
        self.push(transition);
        if !self.circuit.allow_attempt(now) {
            return false;
        }
        self.next_attempt = None;
        self.attempts += 1;
        true
    }

    /// Attempts started with [`Reconnector::begin_attempt`] (the
    /// reconnect-attempts metric).
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The retry side of the server's [`crate::health::Health`] at `now`.
    pub fn status(&self, now: Instant) -> RetryStatus {
        match self.circuit.state(now) {
            CircuitState::Open { .. } => RetryStatus::CircuitOpen,
            CircuitState::Closed | CircuitState::HalfOpen if self.next_attempt.is_some() => {
                RetryStatus::BackingOff
            }
            CircuitState::Closed | CircuitState::HalfOpen => RetryStatus::Idle,
        }
    }

    /// The circuit breaker, for inspection.
    pub fn circuit(&self) -> &CircuitBreaker {
        &self.circuit
    }

    /// Takes the circuit transitions recorded since the last call (oldest first), for
    /// logs and metrics.
    pub fn drain_transitions(&mut self) -> impl Iterator<Item = Transition> + '_ {
        self.transitions.drain(..)
    }

    fn push(&mut self, transition: Option<Transition>) {
        if let Some(t) = transition {
            if self.transitions.len() == MAX_PENDING_TRANSITIONS {
                self.transitions.pop_front();
            }
            self.transitions.push_back(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::{MAX_DELAY, MIN_DELAY};
    use crate::health::{Health, RetryStatus};

    // A base instant for virtual time; the reconnector itself never reads the clock.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn failures_back_off_then_open_the_circuit() {
        let t0 = t0();
        let mut rng = Rng::new(11);
        let mut r = Reconnector::default();
        let mut now = t0;
        for _ in 0..4 {
            let Decision::RetryAt(Some(at)) = r.on_connect_failed(now, &mut rng) else {
                panic!("circuit opened too early");
            };
            assert!((MIN_DELAY..=MAX_DELAY).contains(&(at - now)));
            assert_eq!(r.next_attempt(), Some(at));
            assert!(!r.due(at - Duration::from_millis(1)));
            assert!(r.due(at));
            assert_eq!(r.status(now), RetryStatus::BackingOff);
            assert!(r.begin_attempt(at));
            assert_eq!(r.next_attempt(), None);
            now = at;
        }
        let until = now + Duration::from_secs(30);
        assert_eq!(
            r.on_connect_failed(now, &mut rng),
            Decision::CircuitOpenUntil(Some(until))
        );
        assert_eq!(r.status(now), RetryStatus::CircuitOpen);
        assert_eq!(Health::from_parts(None, r.status(now)), Health::CircuitOpen);
        let probe = r.next_attempt().unwrap();
        assert!(probe >= until && probe <= until + PROBE_JITTER);
        assert!(!r.begin_attempt(until - Duration::from_millis(1)));
        let transitions: Vec<Transition> = r.drain_transitions().collect();
        assert!(matches!(transitions[..], [Transition::Opened { .. }]));

        // Half-open: exactly one probe.
        assert!(r.begin_attempt(probe));
        assert!(
            !r.begin_attempt(probe),
            "nothing scheduled, no second probe"
        );
        // The probe fails: reopened.
        assert_eq!(
            r.on_connect_failed(probe, &mut rng),
            Decision::CircuitOpenUntil(Some(probe + Duration::from_secs(30)))
        );
        let transitions: Vec<Transition> = r.drain_transitions().collect();
        assert!(matches!(
            transitions[..],
            [Transition::HalfOpened, Transition::Reopened { .. }]
        ));
        // The next probe succeeds: closed, backoff reset, nothing scheduled.
        let probe = r.next_attempt().unwrap();
        assert!(r.begin_attempt(probe));
        r.on_connected(probe);
        assert_eq!(r.status(probe), RetryStatus::Idle);
        assert_eq!(r.next_attempt(), None);
        let transitions: Vec<Transition> = r.drain_transitions().collect();
        assert_eq!(transitions, [Transition::HalfOpened, Transition::Closed]);
        assert_eq!(r.attempts(), 6);
        let Decision::RetryAt(Some(at)) = r.on_connect_failed(probe, &mut rng) else {
            panic!("a single failure after closing must not reopen");
        };
        assert!(at - probe <= Duration::from_secs(1), "backoff was reset");
    }

    #[test]
    fn on_connected_resets_backoff() {
        let t0 = t0();
        let mut rng = Rng::new(12);
        let mut r = Reconnector::default();
        for _ in 0..3 {
            r.on_connect_failed(t0, &mut rng);
        }
        r.on_connected(t0);
        assert_eq!(r.circuit().consecutive_failures(), 0);
        let lost = r.on_disconnected(t0, &mut rng).unwrap();
        assert!((MIN_DELAY..=Duration::from_secs(1)).contains(&(lost - t0)));
        assert_eq!(
            r.circuit().consecutive_failures(),
            0,
            "a drop is not a failure"
        );
    }

    /// 100 servers fail together at t=0 and keep failing: their retries must be spread
    /// by jitter (no more than 30 attempts in any 100 ms window over the first 5 s),
    /// and every delay must be within [100 ms, 30 s].
    #[test]
    fn reconnect_storm_is_spread_by_jitter() {
        const SERVERS: usize = 100;
        const WINDOW: Duration = Duration::from_millis(100);
        let t0 = t0();
        let seed = 0x5EED_u64;
        let mut rng = Rng::new(seed);
        let mut servers: Vec<Reconnector> = (0..SERVERS).map(|_| Reconnector::default()).collect();
        for r in &mut servers {
            r.on_connect_failed(t0, &mut rng);
        }
        let horizon = t0 + Duration::from_secs(5);
        let mut attempts: Vec<Instant> = Vec::new();
        loop {
            let (i, at) = servers
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.next_attempt().map(|at| (i, at)))
                .min_by_key(|&(_, at)| at)
                .unwrap();
            if at > horizon {
                break;
            }
            assert!(servers[i].begin_attempt(at), "seed {seed}");
            attempts.push(at);
            match servers[i].on_connect_failed(at, &mut rng) {
                Decision::RetryAt(next) => {
                    let next = next.unwrap();
                    let delay = next - at;
                    assert!(
                        (MIN_DELAY..=MAX_DELAY).contains(&delay),
                        "seed {seed}: {delay:?}"
                    );
                }
                Decision::CircuitOpenUntil(until) => assert!(until.unwrap() > horizon),
            }
        }
        assert!(
            attempts.len() >= SERVERS,
            "every server retried at least once"
        );
        attempts.sort();
        let first = *attempts.first().unwrap();
        assert!(first - t0 >= MIN_DELAY, "no retry sooner than 100 ms");
        let busiest = (0..attempts.len())
            .map(|i| {
                attempts[i..]
                    .iter()
                    .take_while(|&&t| t < attempts[i] + WINDOW)
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            busiest * 100 <= 30 * SERVERS,
            "seed {seed}: {busiest} of {} attempts in one 100 ms window",
            attempts.len()
        );
    }
}
