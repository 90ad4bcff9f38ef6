//! Time, injected. The lease table measures with the monotonic clock (tokio's
//! `Instant`, so tests can pause and advance it); wall-clock time appears only in
//! answers to people (expiry estimates, creation times) and in log records.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of both clocks. The daemon uses [`SystemClock`]; the monotonic half
/// follows tokio's clock, which `tokio::time::pause()` freezes in tests.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn unix_ms(&self) -> i64;
}

/// The real clocks of the machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> i64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
    }
}
