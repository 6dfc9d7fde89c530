//! Exponential backoff with full jitter.
//!
//! Attempt `n` (counting from 0) waits a delay drawn uniformly from
//! `[min, min(cap, base * 2^n)]`. Whatever the configuration, a delay is never below
//! [`MIN_DELAY`] (100 ms) and never above [`MAX_DELAY`] (30 s) (plan §15). Full jitter
//! is what spreads a reconnect storm: servers that fail together retry apart.

use std::time::Duration;

use crate::rng::Rng;

/// The smallest delay [`Backoff`] ever returns: 100 ms.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// The largest delay [`Backoff`] ever returns: 30 s.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The shape of a [`Backoff`]. Values outside [`MIN_DELAY`]..=[`MAX_DELAY`] are clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The lower end of every draw (default 100 ms).
    pub min: Duration,
    /// The upper end of the first draw; it doubles with every attempt (default 1 s,
    /// so the first retries of servers that failed together spread over 900 ms).
    pub base: Duration,
    /// The largest upper end (default 30 s).
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min: MIN_DELAY,
            base: Duration::from_secs(1),
            cap: MAX_DELAY,
        }
    }
}

/// Exponential backoff state for one server: how many attempts have failed in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BackoffConfig::default())
    }
}

impl Backoff {
    /// A backoff at attempt 0, with `config` clamped to [`MIN_DELAY`]..=[`MAX_DELAY`].
    pub fn new(config: BackoffConfig) -> Self {
        let min = config.min.clamp(MIN_DELAY, MAX_DELAY);
        let cap = config.cap.clamp(min, MAX_DELAY);
        Backoff {
            min,
            base: config.base,
            cap,
            attempt: 0,
        }
    }

    /// How many delays have been drawn since creation or the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper end of the range the next draw comes from.
    pub fn current_ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(31);
        self.base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .clamp(self.min, self.cap)
    }

    /// Draws the delay before the next attempt and advances to the next attempt.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        let hi = duration_nanos(self.current_ceiling());
        let lo = duration_nanos(self.min);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(rng.range_inclusive(lo, hi))
    }

    /// Back to attempt 0 (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Nanoseconds of a duration already clamped to at most [`MAX_DELAY`] (fits in `u64`).
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_draw_is_within_100ms_and_30s() {
        let mut rng = Rng::new(1);
        let mut backoff = Backoff::default();
        for i in 0..10_000 {
            if i % 40 == 0 {
                backoff.reset();
            }
            let d = backoff.next_delay(&mut rng);
            assert!((MIN_DELAY..=MAX_DELAY).contains(&d), "draw {i}: {d:?}");
        }
    }

    #[test]
    fn silly_configs_are_clamped() {
        let mut rng = Rng::new(2);
        let mut backoff = Backoff::new(BackoffConfig {
            min: Duration::ZERO,
            base: Duration::from_secs(3600),
            cap: Duration::from_secs(86_400),
        });
        for _ in 0..10_000 {
            let d = backoff.next_delay(&mut rng);
            assert!((MIN_DELAY..=MAX_DELAY).contains(&d), "{d:?}");
        }
        let mut zero = Backoff::new(BackoffConfig {
            min: Duration::ZERO,
            base: Duration::ZERO,
            cap: Duration::ZERO,
        });
        assert_eq!(zero.next_delay(&mut rng), MIN_DELAY);
    }

    #[test]
    fn ceiling_grows_exponentially_up_to_the_cap() {
        let mut rng = Rng::new(3);
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(backoff.current_ceiling());
            let d = backoff.next_delay(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        let secs: Vec<u64> = ceilings.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        // After many attempts (no overflow) the ceiling stays at the cap.
        for _ in 0..100 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.current_ceiling(), MAX_DELAY);
    }

    #[test]
    fn mean_delay_grows_with_attempts() {
        let mut rng = Rng::new(4);
        let mean_at = |attempt: u32, rng: &mut Rng| {
            let mut total = Duration::ZERO;
            for _ in 0..1000 {
                let mut b = Backoff::default();
                for _ in 0..attempt {
                    b.next_delay(rng);
                }
                total += b.next_delay(rng);
            }
            total / 1000
        };
        let means: Vec<Duration> = (0..6).map(|a| mean_at(a, &mut rng)).collect();
        for pair in means.windows(2) {
            assert!(pair[1] > pair[0], "{means:?}");
        }
    }

    #[test]
    fn jitter_actually_varies() {
        let mut rng = Rng::new(5);
        let draws: Vec<Duration> = (0..100)
            .map(|_| Backoff::default().next_delay(&mut rng))
            .collect();
        let mut distinct = draws.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 90,
            "only {} distinct draws",
            distinct.len()
        );
        let lowest = distinct.first().unwrap();
        let highest = distinct.last().unwrap();
        assert!(*highest - *lowest > Duration::from_millis(500));
    }

    #[test]
    fn reset_returns_to_attempt_zero() {
        let mut rng = Rng::new(6);
        let mut backoff = Backoff::default();
        for _ in 0..10 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.attempt(), 10);
        assert_eq!(backoff.current_ceiling(), MAX_DELAY);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.current_ceiling(), Duration::from_secs(1));
        assert!(backoff.next_delay(&mut rng) <= Duration::from_secs(1));
    }
}
