//! A circuit breaker: stop connecting to a server that keeps failing, then probe it.
//!
//! `Closed` → after `failure_threshold` consecutive failures → `Open` until
//! `now + cooldown` → once the cooldown has passed, `HalfOpen`, admitting at most
//! `half_open_max_probes` attempts → a success closes the circuit, a failure opens it
//! again for another cooldown. Authentication failures are ordinary failures, so a
//! server rejecting our credentials is not hammered either.
//!
//! Every state change is returned as a [`Transition`] so callers can log it and count it.
//!
//! A cooldown so long that `now + cooldown` does not fit in an `Instant` (e.g.
//! `Duration::MAX`) means **no deadline**, as everywhere in the workspace: the cooldown
//! never ends, `until` is `None`, and an opened circuit stays open.

use std::time::{Duration, Instant};

/// Circuit breaker settings (config keys `circuit_failure_threshold`,
/// `circuit_cooldown`, `circuit_half_open_max_probes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Consecutive failures that open the circuit (default 5; at least 1).
    pub failure_threshold: u32,
    /// How long the circuit stays open (default 30 s; one too long for a deadline
    /// keeps it open for good).
    pub cooldown: Duration,
    /// Attempts admitted while half-open (default 1; at least 1).
    pub half_open_max_probes: u32,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
            half_open_max_probes: 1,
        }
    }
}

/// Where a circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Attempts are allowed.
    Closed,
    /// No attempt is allowed before `until`.
    Open {
        /// When the cooldown ends; `None` when it never does (the cooldown is too long
        /// for a deadline).
        until: Option<Instant>,
    },
    /// The cooldown has passed; a limited number of probe attempts are allowed.
    HalfOpen,
}

/// A state change of a [`CircuitBreaker`], for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Closed → Open: the failure threshold was reached.
    Opened {
        /// When the cooldown ends (`None`: never).
        until: Option<Instant>,
        /// The consecutive failures that opened it.
        consecutive_failures: u32,
    },
    /// Open → HalfOpen: the cooldown has passed; probes may go.
    HalfOpened,
    /// HalfOpen → Open: a probe failed.
    Reopened {
        /// When the new cooldown ends (`None`: never).
        until: Option<Instant>,
    },
    /// HalfOpen → Closed: a probe succeeded.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed,
    Open { until: Option<Instant> },
    HalfOpen { probes_admitted: u32 },
}

/// The circuit breaker of one server. Time is always passed in.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: CircuitConfig,
    inner: Inner,
    consecutive_failures: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new(CircuitConfig::default())
    }
}

impl CircuitBreaker {
    /// A closed circuit. A threshold or probe limit of 0 is treated as 1.
    pub fn new(config: CircuitConfig) -> Self {
        CircuitBreaker {
            config: CircuitConfig {
                failure_threshold: config.failure_threshold.max(1),
                half_open_max_probes: config.half_open_max_probes.max(1),
                ..config
            },
            inner: Inner::Closed,
            consecutive_failures: 0,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &CircuitConfig {
        &self.config
    }

    /// Failures in a row since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The state at `now` (an open circuit whose cooldown has passed reads as
    /// half-open, even before [`CircuitBreaker::advance`] records it).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.inner {
            Inner::Closed => CircuitState::Closed,
            Inner::Open { until } if until.is_none_or(|until| now < until) => {
                CircuitState::Open { until }
            }
            Inner::Open { .. } | Inner::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Moves Open → HalfOpen once the cooldown has passed, returning the transition.
    /// [`CircuitBreaker::allow_attempt`] calls this itself; call it first when you want
    /// to log the transition.
    pub fn advance(&mut self, now: Instant) -> Option<Transition> {
        match self.inner {
            Inner::Open { until: Some(until) } if now >= until => {
                self.inner = Inner::HalfOpen { probes_admitted: 0 };
                Some(Transition::HalfOpened)
            }
            _ => None,
        }
    }

    /// Whether an attempt may start at `now`. While half-open each `true` consumes one
    /// of the `half_open_max_probes` probes; the probe's outcome must then be recorded.
    pub fn allow_attempt(&mut self, now: Instant) -> bool {
        self.advance(now);
        match &mut self.inner {
            Inner::Closed => true,
            Inner::Open { .. } => false,
            Inner::HalfOpen { probes_admitted } => {
                if *probes_admitted < self.config.half_open_max_probes {
                    *probes_admitted += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records a successful attempt: resets the failure count; a half-open circuit
    /// closes. A success reported while open (an attempt started before the circuit
    /// opened) only resets the count.
    pub fn record_success(&mut self, now: Instant) -> Option<Transition> {
        self.advance(now);
        self.consecutive_failures = 0;
        match self.inner {
            Inner::HalfOpen { .. } => {
                self.inner = Inner::Closed;
                Some(Transition::Closed)
            }
            Inner::Closed | Inner::Open { .. } => None,
        }
    }

    /// Records a failed attempt (connection refused, timeout, authentication failure…):
    /// reaching the threshold opens a closed circuit, any failure reopens a half-open
    /// one. A failure reported while open is counted but does not extend the cooldown.
    pub fn record_failure(&mut self, now: Instant) -> Option<Transition> {
        self.advance(now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let until = now.checked_add(self.config.cooldown);
        match self.inner {
            Inner::Closed if self.consecutive_failures >= self.config.failure_threshold => {
                self.inner = Inner::Open { until };
                Some(Transition::Opened {
                    until,
                    consecutive_failures: self.consecutive_failures,
                })
            }
            Inner::HalfOpen { .. } => {
                self.inner = Inner::Open { until };
                Some(Transition::Reopened { until })
            }
            Inner::Closed | Inner::Open { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A base instant for virtual time; the breaker itself never reads the clock.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn open_at(t0: Instant) -> CircuitBreaker {
        let mut cb = CircuitBreaker::default();
        for i in 1..5 {
            assert!(cb.allow_attempt(t0));
            assert_eq!(cb.record_failure(t0), None, "failure {i} must not open");
        }
        assert!(cb.allow_attempt(t0));
        assert_eq!(
            cb.record_failure(t0),
            Some(Transition::Opened {
                until: Some(t0 + COOLDOWN),
                consecutive_failures: 5
            })
        );
        cb
    }

    #[test]
    fn closed_opens_after_threshold_consecutive_failures() {
        let t0 = t0();
        let cb = open_at(t0);
        assert_eq!(
            cb.state(t0),
            CircuitState::Open {
                until: Some(t0 + COOLDOWN)
            }
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t0 = t0();
        let mut cb = CircuitBreaker::default();
        for _ in 0..4 {
            cb.record_failure(t0);
        }
        assert_eq!(cb.record_success(t0), None);
        assert_eq!(cb.consecutive_failures(), 0);
        for _ in 0..4 {
            assert_eq!(cb.record_failure(t0), None);
        }
        assert_eq!(cb.state(t0), CircuitState::Closed);
    }

    #[test]
    fn open_refuses_until_the_cooldown_passes() {
        let t0 = t0();
        let mut cb = open_at(t0);
        assert!(!cb.allow_attempt(t0));
        assert!(!cb.allow_attempt(t0 + COOLDOWN - Duration::from_millis(1)));
        assert_eq!(cb.advance(t0 + Duration::from_secs(29)), None);
        // Late failures while open neither extend the cooldown nor transition.
        assert_eq!(cb.record_failure(t0 + Duration::from_secs(10)), None);
        assert_eq!(cb.state(t0 + COOLDOWN), CircuitState::HalfOpen);
    }

    #[test]
    fn cooldown_passed_becomes_half_open_and_admits_max_probes() {
        let t0 = t0();
        let mut cb = open_at(t0);
        let t1 = t0 + COOLDOWN;
        assert_eq!(cb.advance(t1), Some(Transition::HalfOpened));
        assert_eq!(cb.advance(t1), None);
        assert!(cb.allow_attempt(t1), "one probe");
        assert!(!cb.allow_attempt(t1), "only one probe");
        assert!(!cb.allow_attempt(t1 + Duration::from_secs(60)));
        assert_eq!(cb.state(t1), CircuitState::HalfOpen);
    }

    #[test]
    fn probe_limit_is_configurable() {
        let t0 = t0();
        let mut cb = CircuitBreaker::new(CircuitConfig {
            failure_threshold: 1,
            cooldown: Duration::from_secs(1),
            half_open_max_probes: 3,
        });
        assert!(cb.record_failure(t0).is_some());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..5).filter(|_| cb.allow_attempt(t1)).count(), 3);
    }

    #[test]
    fn half_open_success_closes() {
        let t0 = t0();
        let mut cb = open_at(t0);
        let t1 = t0 + COOLDOWN;
        assert!(cb.allow_attempt(t1));
        assert_eq!(cb.record_success(t1), Some(Transition::Closed));
        assert_eq!(cb.state(t1), CircuitState::Closed);
        assert!(cb.allow_attempt(t1));
        assert!(cb.allow_attempt(t1));
        assert_eq!(cb.consecutive_failures(), 0);
    }

    #[test]
    fn half_open_failure_reopens_for_another_cooldown() {
        let t0 = t0();
        let mut cb = open_at(t0);
        let t1 = t0 + COOLDOWN + Duration::from_secs(2);
        assert!(cb.allow_attempt(t1));
        assert_eq!(
            cb.record_failure(t1),
            Some(Transition::Reopened {
                until: Some(t1 + COOLDOWN)
            })
        );
        assert!(!cb.allow_attempt(t1 + Duration::from_secs(1)));
        // And the cycle repeats: half-open again after the new cooldown, one probe.
        assert_eq!(cb.advance(t1 + COOLDOWN), Some(Transition::HalfOpened));
        assert!(cb.allow_attempt(t1 + COOLDOWN));
        assert!(!cb.allow_attempt(t1 + COOLDOWN));
    }

    #[test]
    fn outcome_recorded_after_cooldown_without_advance_still_transitions() {
        let t0 = t0();
        let mut cb = open_at(t0);
        // A success reported after the cooldown is treated as the probe's success.
        assert_eq!(cb.record_success(t0 + COOLDOWN), Some(Transition::Closed));
    }

    #[test]
    fn a_cooldown_too_long_for_a_deadline_keeps_the_circuit_open() {
        let t0 = t0();
        let mut cb = CircuitBreaker::new(CircuitConfig {
            failure_threshold: 1,
            cooldown: Duration::MAX,
            half_open_max_probes: 1,
        });
        assert_eq!(
            cb.record_failure(t0),
            Some(Transition::Opened {
                until: None,
                consecutive_failures: 1
            })
        );
        let later = t0 + Duration::from_secs(10 * 365 * 24 * 3600);
        assert_eq!(cb.state(later), CircuitState::Open { until: None });
        assert_eq!(cb.advance(later), None);
        assert!(!cb.allow_attempt(later));
    }

    #[test]
    fn zero_threshold_is_treated_as_one() {
        let t0 = t0();
        let mut cb = CircuitBreaker::new(CircuitConfig {
            failure_threshold: 0,
            half_open_max_probes: 0,
            ..CircuitConfig::default()
        });
        assert!(matches!(
            cb.record_failure(t0),
            Some(Transition::Opened { .. })
        ));
        assert_eq!(cb.config().half_open_max_probes, 1);
    }
}
