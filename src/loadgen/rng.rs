//! A small deterministic random number generator (SplitMix64) for hold times, think
//! times and jitter. Load shaping needs speed and reproducibility, not cryptography.

use std::time::Duration;

/// SplitMix64: one `u64` of state, good enough statistics for jitter.
pub(crate) struct Rng {
    /// Advanced by the golden-ratio increment on every draw.
    state: u64,
}

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..=max` (multiply-shift; the bias is negligible for load shaping).
    pub(crate) fn up_to(&mut self, max: u64) -> u64 {
        let span = u128::from(max) + 1;
        ((u128::from(self.next_u64()) * span) >> 64) as u64
    }

    /// A duration drawn uniformly from `min..=max`, at microsecond resolution.
    pub(crate) fn duration_between(&mut self, min: Duration, max: Duration) -> Duration {
        let min_us = min.as_micros() as u64;
        let max_us = (max.as_micros() as u64).max(min_us);
        Duration::from_micros(min_us + self.up_to(max_us - min_us))
    }
}

/// Mixes a run seed and an engine index into an independent per-engine seed.
pub(crate) fn engine_seed(run_seed: u64, engine_index: u32) -> u64 {
    Rng::new(run_seed ^ u64::from(engine_index).rotate_left(32)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_range() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            assert!(rng.up_to(9) <= 9);
            let d = rng.duration_between(Duration::from_millis(2), Duration::from_millis(5));
            assert!(d >= Duration::from_millis(2) && d <= Duration::from_millis(5));
        }
        assert_eq!(rng.up_to(0), 0);
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(engine_seed(1, 0), engine_seed(1, 1));
    }
}
