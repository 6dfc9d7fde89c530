//! A tiny seedable pseudo-random generator (SplitMix64).
//!
//! Not cryptographic. It exists so that jitter is reproducible: the same seed gives the
//! same delays, so a failing simulation can be replayed from its seed. It is the one
//! generator of the workspace: `ami-cluster` draws its jitter from it, `ami-sim` its
//! test data, and the drivers their seeds from [`random_seed`].

/// A SplitMix64 generator. Create one per driver (or per test) with [`Rng::new`] and
/// pass it to the methods that need randomness.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`. Equal seeds give equal sequences.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value uniformly distributed in `lo..=hi` (returns `lo` when `hi <= lo`).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        let n = span + 1;
        // Rejection sampling: no modulo bias.
        let zone = u64::MAX - (u64::MAX % n) - 1;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return lo + x % n;
            }
        }
    }

    /// A number in `0..n` (`n` > 0); uniform, without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        self.range_inclusive(0, n.max(1) - 1)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 64 bits that differ between processes and between calls, for ActionID instance tags
/// and jitter seeds when the application gives none. Not cryptographic; reads no clock
/// and does no I/O (std's per-process random hash keys, the pid and a counter).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn range_inclusive_stays_in_bounds_and_hits_both_ends() {
        let mut rng = Rng::new(7);
        let (mut lo_seen, mut hi_seen) = (false, false);
        for _ in 0..10_000 {
            let x = rng.range_inclusive(3, 9);
            assert!((3..=9).contains(&x));
            lo_seen |= x == 3;
            hi_seen |= x == 9;
        }
        assert!(lo_seen && hi_seen);
        assert_eq!(rng.range_inclusive(5, 5), 5);
        assert_eq!(rng.range_inclusive(5, 1), 5);
        for _ in 0..1000 {
            assert!((0.0..1.0).contains(&rng.unit()));
            assert!(rng.below(10) < 10);
        }
        assert_ne!(random_seed(), random_seed());
    }
}
