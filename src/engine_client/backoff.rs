//! The pause between reconnection attempts: exponential, capped, with jitter so that
//! the engines of a restarted broker do not all come back in the same millisecond
//! ("equal jitter": half the step fixed, half random, as in AWS's backoff study).

use std::time::Duration;

/// How long to wait before the attempt after `failures` failed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The step after the first failure.
    pub initial: Duration,
    /// No step is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(crate::limits::ENGINE_RECONNECT_BACKOFF_MS_INITIAL),
            max: Duration::from_millis(crate::limits::ENGINE_RECONNECT_BACKOFF_MS_MAX),
        }
    }
}

impl Backoff {
    /// The pause after `failures` consecutive failures (0: none, reconnect at once),
    /// drawn from `random`: in `[step / 2, step]` where the step doubles from
    /// `initial` up to `max`.
    pub fn delay(&self, failures: u32, random: u64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(20);
        let step = self.initial.saturating_mul(1 << doublings).min(self.max);
        let step_ms = step.as_millis() as u64;
        let half = step_ms / 2;
        let jitter = if half == 0 { 0 } else { random % (half + 1) };
        Duration::from_millis(step_ms - half + jitter)
    }

    /// [`Backoff::delay`] with a random draw from the operating system.
    pub fn next_delay(&self, failures: u32) -> Duration {
        let random = getrandom::u64().unwrap_or(u64::from(failures).wrapping_mul(0x9e37_79b9));
        self.delay(failures, random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_first_attempt_does_not_wait() {
        assert_eq!(backoff().delay(0, 12345), Duration::ZERO);
    }

    #[test]
    fn steps_double_up_to_the_cap_and_stay_within_half_to_whole() {
        let backoff = backoff();
        let mut previous_step = Duration::ZERO;
        for failures in 1..40 {
            let lowest = backoff.delay(failures, 0);
            let highest = backoff.delay(failures, u64::MAX - 1);
            let step = (lowest * 2).max(highest);
            assert!(lowest <= highest, "{failures}: {lowest:?} > {highest:?}");
            assert!(highest <= backoff.max, "{failures}: {highest:?}");
            assert!(step >= previous_step, "{failures}: the step shrank");
            assert!(lowest >= step / 2 - Duration::from_millis(1));
            previous_step = step;
        }
        assert_eq!(backoff.delay(1, 0), Duration::from_millis(50));
        assert_eq!(backoff.delay(1, 50), Duration::from_millis(100));
        assert_eq!(backoff.delay(3, 0), Duration::from_millis(200));
        assert_eq!(backoff.delay(39, 0), Duration::from_millis(2500));
    }

    #[test]
    fn draws_spread_over_the_jitter_window() {
        let backoff = backoff();
        let draws: std::collections::BTreeSet<Duration> =
            (0..64).map(|_| backoff.next_delay(4)).collect();
        assert!(
            draws
                .iter()
                .all(|delay| *delay >= Duration::from_millis(400))
        );
        assert!(
            draws
                .iter()
                .all(|delay| *delay <= Duration::from_millis(800))
        );
        assert!(draws.len() > 8, "jitter spreads the attempts: {draws:?}");
    }
}
