//! `--rate`: call starts on an absolute schedule, corrected for coordinated omission
//! as wrk2 does.
//!
//! Slot `n` of the run is due at `start + n / rate`. An engine about to call claims
//! the next slot (one atomic add), sleeps on a tokio timer until it is due, and the
//! call's latency is then counted from that *intended* start, not from the send. The
//! schedule never slips: a slot claimed late (every engine was busy waiting for a slow
//! server) is due in the past, is sent at once, and the time it waited counts in its
//! latency, which is what a client arriving at that moment would have seen. This is
//! deliberately tokio's `MissedTickBehavior::Burst` and not `Delay` or `Skip`: those
//! move the schedule back when the server stalls, and so hide the stall from the
//! percentiles (the coordinated omission of a closed-loop generator).
//!
//! Nothing spins: a waiting engine is a timer entry, so the generator's own CPU per
//! call is the call's. Tokio's timer wheel wakes at 1 ms resolution, so starts due
//! within one millisecond leave together; how late each call was sent after its
//! intended start (the start lag) is reported beside the latency, so the generator's
//! own lateness is visible and not mistaken for the server's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The run's start schedule at `rate` calls per second.
pub(crate) struct Schedule {
    start: Instant,
    rate: u32,
    /// No slot is due at or after this instant (the run's deadline).
    until: Instant,
    next_slot: AtomicU64,
}

impl Schedule {
    /// A schedule whose slot 0 is due at `start`; `rate` is at least 1.
    pub(crate) fn new(rate: u32, start: Instant, until: Instant) -> Self {
        Self {
            start,
            rate: rate.max(1),
            until,
            next_slot: AtomicU64::new(0),
        }
    }

    /// When slot `slot` is due: `start + slot / rate`, exact to the nanosecond (no
    /// accumulated rounding: slot a million is as exact as slot one).
    pub(crate) fn due(&self, slot: u64) -> Instant {
        let nanos = u128::from(slot) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Claims the next slot and returns when it is due, or `None` when the schedule
    /// has no slot left before its end.
    pub(crate) fn claim(&self) -> Option<Instant> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let due = self.due(slot);
        (due < self.until).then_some(due)
    }

    /// Waits for the next slot and returns its intended start, or `None` (at once)
    /// when the schedule is over: the caller then sends unpaced, after the deadline.
    pub(crate) async fn wait_turn(&self) -> Option<Instant> {
        let due = self.claim()?;
        tokio::time::sleep_until(due).await;
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rate: u32, seconds: u64) -> (Schedule, Instant) {
        let start = Instant::now();
        (
            Schedule::new(rate, start, start + Duration::from_secs(seconds)),
            start,
        )
    }

    #[test]
    fn slots_are_due_at_exact_multiples_of_the_period() {
        let (schedule, start) = schedule(3, 10);
        // 1/3 s does not divide into nanoseconds: each slot is computed from the
        // start, so the error never accumulates.
        assert_eq!(schedule.due(0), start);
        assert_eq!(schedule.due(1), start + Duration::from_nanos(333_333_333));
        assert_eq!(schedule.due(2), start + Duration::from_nanos(666_666_666));
        assert_eq!(schedule.due(3), start + Duration::from_secs(1));
        assert_eq!(
            schedule.due(3_000_000),
            start + Duration::from_secs(1_000_000)
        );
    }

    #[test]
    fn claims_hand_out_consecutive_slots_and_stop_at_the_end() {
        let (schedule, start) = schedule(1_000, 1);
        let due: Vec<Instant> = std::iter::from_fn(|| schedule.claim()).collect();
        assert_eq!(due.len(), 1_000, "slots 0..999 are due within one second");
        for (slot, due) in due.iter().enumerate() {
            assert_eq!(*due, start + Duration::from_millis(slot as u64));
        }
        assert_eq!(schedule.claim(), None, "and stays over");
    }

    #[test]
    fn a_late_claim_is_due_in_the_past_so_its_wait_counts_as_latency() {
        // The schedule does not slip when nobody claims: the slot claimed after a
        // stall is the one that was due, and latency from it includes the stall.
        let start = Instant::now() - Duration::from_secs(2);
        let schedule = Schedule::new(10, start, start + Duration::from_secs(60));
        let due = schedule.claim().unwrap();
        assert_eq!(due, start);
        assert!(Instant::now().duration_since(due) >= Duration::from_secs(2));
        assert_eq!(schedule.claim(), Some(start + Duration::from_millis(100)));
    }

    #[test]
    fn a_zero_rate_is_read_as_one_per_second() {
        let (schedule, start) = schedule(0, 5);
        assert_eq!(schedule.due(2), start + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_waits_until_its_slot_is_due_on_the_timer() {
        let (schedule, start) = schedule(100, 1);
        for slot in 0..5u64 {
            let due = schedule.wait_turn().await.expect("within the schedule");
            assert_eq!(due, start + Duration::from_millis(10 * slot));
            assert!(Instant::now() >= due, "no call starts before it is due");
        }
    }
}
