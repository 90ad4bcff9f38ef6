//! `--rate`: calls started evenly at sub-millisecond resolution.
//!
//! Tokio's timer wheel ticks once per millisecond, so engines that each sleep until
//! their reserved start wake together, `rate / 1000` at a time, and the run then
//! measures the generator's own bursts queueing in front of the server. Instead a
//! pacing thread (std sleeps have microsecond resolution) releases start permits
//! every `PACER_TICK_US` in proportion to the time elapsed, and engines wait for a
//! permit before each call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::bounds::{PACER_BANKED_TICKS, PACER_TICK_US};
use super::error::LoadgenError;

/// Releases start permits at `rate` per second until `until` or until dropped.
pub(crate) struct Pacer {
    permits: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    /// Starts the pacing thread.
    pub(crate) fn start(rate: u32, until: Instant) -> Result<Self, LoadgenError> {
        let permits = Arc::new(Semaphore::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn({
                let permits = Arc::clone(&permits);
                let stop = Arc::clone(&stop);
                move || release_permits(rate, until, &permits, &stop)
            })
            .map_err(|e| LoadgenError::Internal(format!("starting the pacer thread: {e}")))?;
        Ok(Self {
            permits,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits for this call's start time; returns at once after the pacer stopped.
    pub(crate) async fn wait_turn(&self) {
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Bounded: the thread checks `stop` every tick.
            let _ = thread.join();
        }
    }
}

/// The thread's body. Starts owed while every engine was busy are not banked beyond
/// `PACER_BANKED_TICKS` ticks' worth: a client that fell behind does not catch up
/// in a burst (the achieved rate in the report then shows it fell short).
fn release_permits(rate: u32, until: Instant, permits: &Semaphore, stop: &AtomicBool) {
    let started = Instant::now();
    let tick = Duration::from_micros(PACER_TICK_US);
    let per_tick = (u64::from(rate) * PACER_TICK_US).div_ceil(1_000_000);
    let banked_max = (per_tick * PACER_BANKED_TICKS).max(1) as usize;
    let mut released: u64 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(tick);
        let due = (started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000) as u64;
        let owed = due.saturating_sub(released) as usize;
        let room = banked_max.saturating_sub(permits.available_permits());
        permits.add_permits(owed.min(room));
        released = due;
    }
    // Engines waiting now proceed and see the deadline themselves.
    permits.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn releases_about_rate_permits_per_second_and_closes_at_the_end() {
        let window = Duration::from_millis(300);
        let pacer = Pacer::start(10_000, Instant::now() + window).unwrap();
        let counted = tokio::time::timeout(window * 10, async {
            let mut count = 0u32;
            while !pacer.permits.is_closed() {
                pacer.wait_turn().await;
                count += 1;
            }
            count
        })
        .await
        .expect("the pacer closes by itself after its window");
        // 3,000 starts are due in 300 ms; scheduling noise may cost some, never add.
        assert!(
            counted <= 3_000 + 2,
            "released {counted} starts for 3,000 due"
        );
        assert!(
            counted >= 1_000,
            "released only {counted} starts for 3,000 due"
        );
    }
}
