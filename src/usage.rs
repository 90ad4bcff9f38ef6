//! Usage over time, for `GetUsage` and `GetUsageSeries`: per organization and
//! product, one bucket per minute in which something happened (kept for a day) and one
//! per hour (kept for a week), each holding the peak of active sessions in its period,
//! the active count and the quota at its end, and the grants and denials in it.
//!
//! Periods without events have no bucket: their active count and quota are those at
//! the end of the bucket before them, so the peak over a window is the highest bucket
//! peak in the window or the count carried into it. The oldest buckets are dropped past
//! `limits::USAGE_BUCKETS_MAX` minutes and `limits::USAGE_COARSE_BUCKETS_MAX` hours, so
//! an organization and product costs at most 1,440 x 24 + 168 x 24 bytes (38 KiB), and
//! organizations are bounded by `limits::ORGANIZATIONS_MAX`; a deleted organization's
//! buckets go with it. Windows are rounded out to whole periods.
//!
//! The figures live in memory only: they cover the time since the daemon started
//! ([`UsageWindows::kept_since_unix_ms`]) and start from zero after a restart. Quotas
//! are known from the start (the server tells [`UsageWindows::quota_at_start`] each
//! organization's), then from every quota change (`Activity::admin_changed`).

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

/// One point of a series: the figures of one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesPoint {
    pub start_unix_ms: i64,
    /// The highest number of active sessions in the period.
    pub peak_sessions: u32,
    pub grants: u64,
    /// Acquires refused for lack of a seat in the period.
    pub denials: u64,
    /// The quota in force at the end of the period; `None` before the daemon started.
    pub quota: Option<u32>,
}

/// A series of points of `resolution_ms` each, the first starting at the first
/// point's `start_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub resolution_ms: u64,
    pub points: Vec<SeriesPoint>,
}

/// The quota of a bucket the daemon did not know (never a real quota: those are at
/// most `limits::KSE_SEATS_MAX`).
const QUOTA_UNKNOWN: u32 = u32::MAX;
const _: () =
    assert!(limits::KSE_SEATS_MAX < QUOTA_UNKNOWN && limits::KRE_SESSIONS_MAX < QUOTA_UNKNOWN);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Periods (minutes or hours) since the Unix epoch.
    period: u32,
    peak: u32,
    active_at_end: u32,
    grants: u32,
    denials: u32,
    /// The quota at the end of the period, or `QUOTA_UNKNOWN`.
    quota: u32,
}

#[derive(Debug)]
struct Ring {
    buckets: VecDeque<Bucket>,
    /// The active count at the end of the newest bucket dropped.
    carried: u32,
    /// The quota at the end of the newest bucket dropped (or the one known at start).
    carried_quota: u32,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buckets: VecDeque::new(),
            carried: 0,
            carried_quota: QUOTA_UNKNOWN,
        }
    }
}

impl Ring {
    /// The bucket of `period`, created with the count and quota carried from the one
    /// before; at most `buckets_max` are kept. A wall clock that stepped back keeps
    /// using the newest bucket.
    fn bucket(&mut self, period: u32, buckets_max: usize) -> &mut Bucket {
        let newest = self
            .buckets
            .back()
            .map(|b| (b.period, b.active_at_end, b.quota));
        let (active, quota) = match newest {
            Some((newest_period, _, _)) if newest_period >= period => {
                return self.buckets.back_mut().expect("checked above");
            }
            Some((_, active, quota)) => (active, quota),
            None => (self.carried, self.carried_quota),
        };
        self.buckets.push_back(Bucket {
            period,
            peak: active,
            active_at_end: active,
            grants: 0,
            denials: 0,
            quota,
        });
        while self.buckets.len() > buckets_max {
            if let Some(dropped) = self.buckets.pop_front() {
                self.carried = dropped.active_at_end;
                self.carried_quota = dropped.quota;
            }
        }
        self.buckets.back_mut().expect("just pushed")
    }

    /// The active count and quota at the start of `period`.
    fn carried_into(&self, period: u32) -> (u32, u32) {
        let before = self.buckets.partition_point(|b| b.period < period);
        match before.checked_sub(1).and_then(|i| self.buckets.get(i)) {
            Some(b) => (b.active_at_end, b.quota),
            None => (self.carried, self.carried_quota),
        }
    }

    fn window(&self, first_period: u32) -> WindowUsage {
        let (carried_in, _) = self.carried_into(first_period);
        self.buckets
            .iter()
            .filter(|b| b.period >= first_period)
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

    /// `count` points of `periods_per_point` periods each, from `first_period`: one
    /// pass over the buckets from there.
    fn points(&self, first_period: u32, periods_per_point: u32, count: usize) -> Vec<RingPoint> {
        let (mut active, mut quota) = self.carried_into(first_period);
        let mut next = self.buckets.partition_point(|b| b.period < first_period);
        (0..count)
            .map(|i| {
                let end =
                    first_period.saturating_add(periods_per_point.saturating_mul(i as u32 + 1));
                let mut point = RingPoint {
                    peak: active,
                    grants: 0,
                    denials: 0,
                    quota,
                };
                while let Some(b) = self.buckets.get(next).filter(|b| b.period < end) {
                    point.peak = point.peak.max(b.peak);
                    point.grants += u64::from(b.grants);
                    point.denials += u64::from(b.denials);
                    (active, quota) = (b.active_at_end, b.quota);
                    next += 1;
                }
                point.quota = quota;
                point
            })
            .collect()
    }
}

/// A point as a ring computes it, in its own periods.
struct RingPoint {
    peak: u32,
    grants: u64,
    denials: u64,
    quota: u32,
}

/// The minutes and the hours of one organization and product.
#[derive(Debug, Default)]
struct Figures {
    minutes: Ring,
    hours: Ring,
}

impl Figures {
    fn change(&mut self, unix_ms: i64, change: impl Fn(&mut Bucket)) {
        change(self.minutes.bucket(
            period_of(unix_ms, limits::USAGE_BUCKET_MS),
            limits::USAGE_BUCKETS_MAX,
        ));
        change(self.hours.bucket(
            period_of(unix_ms, limits::USAGE_COARSE_BUCKET_MS),
            limits::USAGE_COARSE_BUCKETS_MAX,
        ));
    }
}

fn period_of(unix_ms: i64, period_ms: u64) -> u32 {
    let period = unix_ms.max(0) as u64 / period_ms;
    u32::try_from(period).unwrap_or(u32::MAX)
}

/// Resolutions a series may have, finest first, in minutes: the finest whose points
/// fit in `limits::USAGE_SERIES_POINTS_MAX` is chosen.
const RESOLUTIONS_MINUTES: [u64; 12] = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440];

/// The usage figures of every organization and product with activity or a known quota.
#[derive(Debug)]
pub struct UsageWindows {
    /// One small mutex per organization and product: only its events contend for it,
    /// and no `.await` happens while it is held.
    figures: DashMap<(OrgId, Product), Mutex<Figures>>,
    /// When the figures start: the daemon's start.
    kept_since_unix_ms: i64,
}

impl UsageWindows {
    /// Figures kept from `now_unix_ms` on.
    pub fn new(now_unix_ms: i64) -> Self {
        UsageWindows {
            figures: DashMap::new(),
            kept_since_unix_ms: now_unix_ms,
        }
    }

    /// Figures before this time are not known (the daemon had not started).
    pub fn kept_since_unix_ms(&self) -> i64 {
        self.kept_since_unix_ms
    }

    fn update(&self, org: &OrgId, product: Product, unix_ms: i64, change: impl Fn(&mut Bucket)) {
        if let Some(figures) = self.figures.get(&(org.clone(), product)) {
            figures.lock().change(unix_ms, change);
            return;
        }
        let figures = self.figures.entry((org.clone(), product)).or_default();
        figures.lock().change(unix_ms, change);
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

    /// The quota of `product` became `quota`.
    pub fn quota_set(&self, org: &OrgId, product: Product, quota: u32, unix_ms: i64) {
        self.update(org, product, unix_ms, |b| b.quota = quota);
    }

    /// The quota in force when the daemon started (no bucket is made for it).
    pub fn quota_at_start(&self, org: &OrgId, product: Product, quota: u32) {
        let entry = self.figures.entry((org.clone(), product)).or_default();
        let mut guard = entry.lock();
        let figures = &mut *guard;
        for ring in [&mut figures.minutes, &mut figures.hours] {
            if ring.buckets.is_empty() {
                ring.carried_quota = quota;
            }
        }
    }

    /// The organization was deleted: its figures go (its id may be created again).
    pub fn forget(&self, org: &OrgId) {
        for product in Product::ALL {
            self.figures.remove(&(org.clone(), product));
        }
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
        self.figures
            .get(&(org.clone(), product))
            .map(|figures| {
                figures
                    .lock()
                    .minutes
                    .window(period_of(start_ms, limits::USAGE_BUCKET_MS))
            })
            .unwrap_or_default()
    }

    /// The series over `[start_ms, end_ms)` (the caller keeps it within the week the
    /// daemon keeps, ending by `now_unix_ms`), at the finest resolution whose points fit
    /// in `limits::USAGE_SERIES_POINTS_MAX`: by the minute while the range lies within
    /// the day of minutes, else by the hour. Points start at whole multiples of the
    /// resolution (UTC).
    pub fn series(
        &self,
        org: &OrgId,
        product: Product,
        start_ms: i64,
        end_ms: i64,
        now_unix_ms: i64,
    ) -> Series {
        let day_ms = i64::from(limits::USAGE_WINDOW_SECONDS_MAX) * 1000;
        let bucket_ms = if start_ms >= now_unix_ms.saturating_sub(day_ms) {
            limits::USAGE_BUCKET_MS
        } else {
            limits::USAGE_COARSE_BUCKET_MS
        };
        let (start, end) = (start_ms.max(0) as u64, end_ms.max(start_ms).max(0) as u64);
        let points_of = |resolution_ms: u64| end.div_ceil(resolution_ms) - start / resolution_ms;
        let resolution_ms = RESOLUTIONS_MINUTES
            .iter()
            .map(|minutes| minutes * 60_000)
            .filter(|resolution| resolution % bucket_ms == 0)
            .find(|resolution| points_of(*resolution) <= limits::USAGE_SERIES_POINTS_MAX as u64)
            .unwrap_or(RESOLUTIONS_MINUTES[RESOLUTIONS_MINUTES.len() - 1] * 60_000);
        let count = (points_of(resolution_ms) as usize).min(limits::USAGE_SERIES_POINTS_MAX);
        let periods_per_point = (resolution_ms / bucket_ms) as u32;
        let first_period =
            u32::try_from(start / resolution_ms * periods_per_point as u64).unwrap_or(u32::MAX);
        let ring_points = match self.figures.get(&(org.clone(), product)) {
            Some(figures) => {
                let figures = figures.lock();
                let ring = if bucket_ms == limits::USAGE_BUCKET_MS {
                    &figures.minutes
                } else {
                    &figures.hours
                };
                ring.points(first_period, periods_per_point, count)
            }
            None => Ring::default().points(first_period, periods_per_point, count),
        };
        let first_ms = (start / resolution_ms * resolution_ms) as i64;
        let points = ring_points
            .into_iter()
            .enumerate()
            .map(|(i, point)| SeriesPoint {
                start_unix_ms: first_ms + i as i64 * resolution_ms as i64,
                peak_sessions: point.peak,
                grants: point.grants,
                denials: point.denials,
                quota: (point.quota != QUOTA_UNKNOWN).then_some(point.quota),
            })
            .collect();
        Series {
            resolution_ms,
            points,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = limits::USAGE_BUCKET_MS as i64;

    fn check(events: &[(&str, i64, u32)], window_minutes: i64, now_minute: i64) -> WindowUsage {
        let usage = UsageWindows::new(0);
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
        let usage = UsageWindows::new(0);
        let org = OrgId::parse("acme").unwrap();
        let minutes = limits::USAGE_BUCKETS_MAX as i64 + 100;
        usage.granted(&org, Product::Kse, 7, 0);
        for minute in 1..minutes {
            usage.denied(&org, Product::Kse, minute * MINUTE_MS);
        }
        let figures = usage.figures.get(&(org.clone(), Product::Kse)).unwrap();
        assert_eq!(
            figures.lock().minutes.buckets.len(),
            limits::USAGE_BUCKETS_MAX
        );
        assert!(figures.lock().hours.buckets.len() <= limits::USAGE_COARSE_BUCKETS_MAX);
        drop(figures);
        let window = usage.window(&org, Product::Kse, 60, minutes * MINUTE_MS);
        assert_eq!(window.peak_sessions, 7);
    }

    const HOUR_MS: i64 = 3_600_000;

    #[test]
    fn a_series_is_by_the_minute_for_an_hour_by_ten_minutes_for_a_day_and_by_the_hour_for_a_week() {
        let usage = UsageWindows::new(0);
        let org = OrgId::parse("acme").unwrap();
        let now = 1_000 * 24 * HOUR_MS + 30 * MINUTE_MS + 5;
        for (range_ms, resolution_ms, points) in [
            (HOUR_MS, MINUTE_MS, 61),
            (24 * HOUR_MS, 10 * MINUTE_MS, 145),
            (7 * 24 * HOUR_MS, HOUR_MS, 169),
        ] {
            let series = usage.series(&org, Product::Kre, now - range_ms, now, now);
            assert_eq!(series.resolution_ms, resolution_ms as u64, "{range_ms}");
            assert_eq!(series.points.len(), points, "{range_ms}");
            assert!(series.points.len() <= limits::USAGE_SERIES_POINTS_MAX);
            let first = series.points[0].start_unix_ms;
            assert!(first <= now - range_ms && first % resolution_ms == 0);
            assert!(
                series
                    .points
                    .iter()
                    .all(|p| p.quota.is_none() && p.peak_sessions == 0)
            );
        }
    }

    #[test]
    fn series_points_hold_each_periods_peak_denials_and_quota_at_its_end() {
        let usage = UsageWindows::new(0);
        let org = OrgId::parse("acme").unwrap();
        let at = |minute: i64| 500 * 24 * HOUR_MS + minute * MINUTE_MS + 1;
        usage.quota_at_start(&org, Product::Kre, 2);
        usage.granted(&org, Product::Kre, 1, at(1));
        usage.granted(&org, Product::Kre, 2, at(1));
        usage.denied(&org, Product::Kre, at(2));
        usage.quota_set(&org, Product::Kre, 5, at(3));
        usage.ended(&org, Product::Kre, 1, at(4));
        let now = at(10);
        let series = usage.series(&org, Product::Kre, at(0), now, now);
        let figures: Vec<(u32, u64, Option<u32>)> = series
            .points
            .iter()
            .map(|p| (p.peak_sessions, p.denials, p.quota))
            .collect();
        assert_eq!(
            &figures[..6],
            [
                (0, 0, Some(2)),
                (2, 0, Some(2)),
                (2, 1, Some(2)),
                (2, 0, Some(5)),
                (2, 0, Some(5)),
                (1, 0, Some(5)),
            ]
        );
        // The week's hourly point holds the same events.
        let week = usage.series(&org, Product::Kre, now - 7 * 24 * HOUR_MS, now, now);
        let last = week.points.last().unwrap();
        assert_eq!(
            (last.peak_sessions, last.denials, last.quota),
            (2, 1, Some(5))
        );
        usage.forget(&org);
        let gone = usage.series(&org, Product::Kre, at(0), now, now);
        assert!(gone.points.iter().all(|p| p.quota.is_none()));
    }
}
