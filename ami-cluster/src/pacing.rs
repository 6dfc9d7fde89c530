//! Pacing of calls, per server: how fast new calls may start and how many may be up
//! at once. Sans-IO: the caller passes the time and the number of calls up now (the
//! [`CallTracker`](crate::CallTracker)'s live calls, which count the Originates still
//! in flight), and is told whether a call may start or when to ask again.
//!
//! - `max_calls_per_second`: a token bucket holding at most `calls_burst` tokens,
//!   refilled at that rate; each call takes one.
//! - `max_concurrent_calls`: no call starts while that many are up.

use std::time::{Duration, Instant};

/// The limits of one server (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacingConfig {
    /// New calls per second, at most.
    pub max_calls_per_second: Option<f64>,
    /// Calls that may start at once after a quiet spell (the bucket's size, 1+).
    pub calls_burst: u32,
    /// Calls up at once, at most.
    pub max_concurrent_calls: Option<usize>,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            max_calls_per_second: None,
            calls_burst: 1,
            max_concurrent_calls: None,
        }
    }
}

/// Whether a call may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start it (a token was taken).
    Go,
    /// Not before this instant (the rate).
    WaitUntil(Instant),
    /// Not before a call ends (the concurrency).
    WaitForCall,
}

/// The pacer of one server (see the module documentation).
#[derive(Debug, Clone)]
pub struct Pacer {
    config: PacingConfig,
    tokens: f64,
    refilled: Option<Instant>,
    /// Calls admitted, and the time they waited for it in all.
    admitted: u64,
    waited: Duration,
}

impl Pacer {
    /// A pacer with `config`'s limits, its bucket full.
    pub fn new(config: PacingConfig) -> Pacer {
        Pacer {
            config,
            tokens: f64::from(config.calls_burst.max(1)),
            refilled: None,
            admitted: 0,
            waited: Duration::ZERO,
        }
    }

    /// The limits.
    pub fn config(&self) -> PacingConfig {
        self.config
    }

    /// Whether a call may start at `now` with `active` calls up; on [`Admission::Go`]
    /// it counts as started. `since` is when the call began to wait (for the metrics).
    pub fn admit(&mut self, now: Instant, active: usize, since: Instant) -> Admission {
        if self
            .config
            .max_concurrent_calls
            .is_some_and(|max| active >= max)
        {
            return Admission::WaitForCall;
        }
        if let Some(rate) = self.config.max_calls_per_second.filter(|r| *r > 0.0) {
            let burst = f64::from(self.config.calls_burst.max(1));
            if let Some(at) = self.refilled {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                self.tokens = (self.tokens + elapsed * rate).min(burst);
            }
            self.refilled = Some(now);
            if self.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
                return Admission::WaitUntil(now + wait);
            }
            self.tokens -= 1.0;
        }
        self.admitted += 1;
        self.waited += now.saturating_duration_since(since);
        Admission::Go
    }

    /// Undoes an [`Admission::Go`] given at `at` to a call waiting since `since`, when
    /// the call could not start after all: its token goes back and it is not counted.
    pub fn refund(&mut self, since: Instant, at: Instant) {
        if self.config.max_calls_per_second.is_some_and(|r| r > 0.0) {
            self.tokens = (self.tokens + 1.0).min(f64::from(self.config.calls_burst.max(1)));
        }
        self.admitted = self.admitted.saturating_sub(1);
        self.waited = self
            .waited
            .saturating_sub(at.saturating_duration_since(since));
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.config.max_calls_per_second.is_some_and(|r| r > 0.0)
            || self.config.max_concurrent_calls.is_some()
    }

    /// Calls admitted so far, and the time they waited for it in all.
    pub fn totals(&self) -> (u64, Duration) {
        (self.admitted, self.waited)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests make their own start instant
mod tests {
    use super::*;

    #[test]
    fn the_rate_spaces_calls_after_the_burst() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(PacingConfig {
            max_calls_per_second: Some(5.0),
            calls_burst: 2,
            max_concurrent_calls: None,
        });
        assert_eq!(pacer.admit(t0, 0, t0), Admission::Go);
        assert_eq!(pacer.admit(t0, 0, t0), Admission::Go);
        let Admission::WaitUntil(at) = pacer.admit(t0, 0, t0) else {
            panic!("the burst is spent")
        };
        assert_eq!(at - t0, Duration::from_millis(200));
        assert_eq!(pacer.admit(at, 0, t0), Admission::Go);
        assert_eq!(pacer.totals(), (3, Duration::from_millis(200)));
    }

    #[test]
    fn concurrency_holds_calls_until_one_ends() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(PacingConfig {
            max_concurrent_calls: Some(3),
            ..PacingConfig::default()
        });
        assert_eq!(pacer.admit(t0, 2, t0), Admission::Go);
        assert_eq!(pacer.admit(t0, 3, t0), Admission::WaitForCall);
    }
}
