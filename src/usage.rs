//! Usage over a window, for `GetUsage`: per organization and product, one bucket per
//! minute in which something happened, holding the peak of active sessions in that
//! minute, the active count at its end, and the grants and denials in it.
//!
//! Minutes without events have no bucket: their active count is the one at the end of
//! the bucket before them, so the peak over a window is the highest bucket peak in the
//! window or the count carried into it. Buckets older than the longest window
//! (`limits::USAGE_WINDOW_SECONDS_MAX`) are dropped, so memory per organization and
//! product stays within `limits::USAGE_BUCKETS_MAX` buckets. Windows are rounded out to
//! whole minutes, and cover only the time since the daemon started.

use std::collections::VecDeque;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::domain::{OrgId, Product};
use crate::limits;

/// What a window says about one product of one organization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowUsage {
    pub peak_sessions: u32,
    pub grants: u64,
    pub denials: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Minutes since the Unix epoch.
    minute: u32,
    peak: u32,
    active_at_end: u32,
    grants: u32,
    denials: u32,
}

#[derive(Debug, Default)]
struct Ring {
    buckets: VecDeque<Bucket>,
    /// The active count at the end of the newest bucket dropped.
    carried: u32,
}

impl Ring {
    /// The bucket of `minute`, created with the count carried from the one before. A
    /// wall clock that stepped back keeps using the newest bucket.
    fn bucket(&mut self, minute: u32) -> &mut Bucket {
        let newest = self.buckets.back().map(|b| (b.minute, b.active_at_end));
        let active = match newest {
            Some((newest_minute, _)) if newest_minute >= minute => {
                return self.buckets.back_mut().expect("checked above");
            }
            Some((_, active)) => active,
            None => self.carried,
        };
        self.buckets.push_back(Bucket {
            minute,
            peak: active,
            active_at_end: active,
            grants: 0,
            denials: 0,
        });
        while self.buckets.len() > limits::USAGE_BUCKETS_MAX {
            if let Some(dropped) = self.buckets.pop_front() {
                self.carried = dropped.active_at_end;
            }
        }
        self.buckets.back_mut().expect("just pushed")
    }

    fn window(&self, first_minute: u32) -> WindowUsage {
        let carried_in = self
            .buckets
            .iter()
            .rev()
            .find(|b| b.minute < first_minute)
            .map_or(self.carried, |b| b.active_at_end);
        self.buckets
            .iter()
            .filter(|b| b.minute >= first_minute)
            .fold(
                WindowUsage {
                    peak_sessions: carried_in,
                    ..WindowUsage::default()
                },
                |usage, b| WindowUsage {
                    peak_sessions: usage.peak_sessions.max(b.peak),
                    grants: usage.grants + u64::from(b.grants),
                    denials: usage.denials + u64::from(b.denials),
                },
            )
    }
}

fn minute_of(unix_ms: i64) -> u32 {
    let minute = unix_ms.max(0) as u64 / limits::USAGE_BUCKET_MS;
    u32::try_from(minute).unwrap_or(u32::MAX)
}

/// The per-minute rings of every organization and product with activity.
#[derive(Debug, Default)]
pub struct UsageWindows {
    /// One small mutex per ring: only the events of one organization and product
    /// contend for it, and no `.await` happens while it is held.
    rings: DashMap<(OrgId, Product), Mutex<Ring>>,
}

impl UsageWindows {
    pub fn new() -> Self {
        Self::default()
    }

    fn update(
        &self,
        org: &OrgId,
        product: Product,
        unix_ms: i64,
        change: impl FnOnce(&mut Bucket),
    ) {
        let minute = minute_of(unix_ms);
        if let Some(ring) = self.rings.get(&(org.clone(), product)) {
            change(ring.lock().bucket(minute));
            return;
        }
        let ring = self.rings.entry((org.clone(), product)).or_default();
        change(ring.lock().bucket(minute));
    }

    /// A session was granted; `active` is the count with it.
    pub fn granted(&self, org: &OrgId, product: Product, active: u32, unix_ms: i64) {
        self.update(org, product, unix_ms, |b| {
            b.peak = b.peak.max(active);
            b.active_at_end = active;
            b.grants = b.grants.saturating_add(1);
        });
    }

    /// A session ended; `active` is the count without it.
    pub fn ended(&self, org: &OrgId, product: Product, active: u32, unix_ms: i64) {
        self.update(org, product, unix_ms, |b| b.active_at_end = active);
    }

    /// An acquire was refused for lack of a seat.
    pub fn denied(&self, org: &OrgId, product: Product, unix_ms: i64) {
        self.update(org, product, unix_ms, |b| {
            b.denials = b.denials.saturating_add(1)
        });
    }

    /// Usage over the `window_seconds` ending at `now_unix_ms`, in whole minutes.
    pub fn window(
        &self,
        org: &OrgId,
        product: Product,
        window_seconds: u32,
        now_unix_ms: i64,
    ) -> WindowUsage {
        let start_ms = now_unix_ms.saturating_sub(i64::from(window_seconds) * 1000);
        self.rings
            .get(&(org.clone(), product))
            .map(|ring| ring.lock().window(minute_of(start_ms)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = limits::USAGE_BUCKET_MS as i64;

    fn check(events: &[(&str, i64, u32)], window_minutes: i64, now_minute: i64) -> WindowUsage {
        let usage = UsageWindows::new();
        let org = OrgId::parse("acme").unwrap();
        for (kind, minute, active) in events {
            let at = minute * MINUTE_MS + 1;
            match *kind {
                "grant" => usage.granted(&org, Product::Kre, *active, at),
                "end" => usage.ended(&org, Product::Kre, *active, at),
                _ => usage.denied(&org, Product::Kre, at),
            }
        }
        let window_seconds = u32::try_from(window_minutes * 60).unwrap();
        usage.window(
            &org,
            Product::Kre,
            window_seconds,
            now_minute * MINUTE_MS + 1,
        )
    }

    #[test]
    fn a_peak_inside_the_window_counts_and_one_before_it_does_not() {
        let events = [
            ("grant", 0, 1),
            ("grant", 0, 2),
            ("end", 0, 1),
            ("end", 0, 0),
        ];
        assert_eq!(check(&events, 5, 3).peak_sessions, 2);
        assert_eq!(check(&events, 5, 30).peak_sessions, 0);
    }

    #[test]
    fn sessions_that_outlive_the_window_start_count_as_active_in_it() {
        let events = [
            ("grant", 0, 1),
            ("grant", 1, 2),
            ("grant", 2, 3),
            ("end", 2, 2),
        ];
        let usage = check(&events, 10, 100);
        assert_eq!(usage.peak_sessions, 2);
        assert_eq!(usage.grants, 0);
    }

    #[test]
    fn denials_and_grants_count_within_the_window_only() {
        let events = [
            ("deny", 0, 0),
            ("grant", 5, 1),
            ("deny", 6, 0),
            ("deny", 6, 0),
        ];
        assert_eq!(
            check(&events, 3, 7),
            WindowUsage {
                peak_sessions: 1,
                grants: 1,
                denials: 2
            }
        );
        assert_eq!(check(&events, 60, 7).denials, 3);
    }

    #[test]
    fn buckets_stay_bounded_and_carry_their_count() {
        let usage = UsageWindows::new();
        let org = OrgId::parse("acme").unwrap();
        let minutes = limits::USAGE_BUCKETS_MAX as i64 + 100;
        usage.granted(&org, Product::Kse, 7, 0);
        for minute in 1..minutes {
            usage.denied(&org, Product::Kse, minute * MINUTE_MS);
        }
        let ring = usage.rings.get(&(org.clone(), Product::Kse)).unwrap();
        assert_eq!(ring.lock().buckets.len(), limits::USAGE_BUCKETS_MAX);
        drop(ring);
        let window = usage.window(&org, Product::Kse, 60, minutes * MINUTE_MS);
        assert_eq!(window.peak_sessions, 7);
    }
}
