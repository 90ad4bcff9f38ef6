//! The contention check: from client-side lease intervals, the highest number of
//! sessions that were granted at the same moment, compared with the quota.
//!
//! The server holds a lease over [grant, release processed]. The client knows only
//! [acquire response received, release request sent], which lies inside the server's
//! interval (the grant happened before the response arrived; the release is processed
//! after it was sent). So every overlap seen client-side also existed on the server,
//! and a count above the quota is a real violation, never a false alarm. Intervals are
//! closed: two that touch at one instant did overlap on the server.
//!
//! When a release fails, or a heartbeat says the lease is gone, the lease may have
//! ended earlier on the server; the engine then ends the interval at the send time of
//! its last successful heartbeat (or drops it) so containment still holds.

use serde::Serialize;

/// A lease as the client saw it, in nanoseconds since the run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Interval {
    /// When the acquire response was received.
    pub start_ns: u64,
    /// When the release was sent (or the last proof of life was sent).
    pub end_ns: u64,
}

/// Whether the check passed.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Never more concurrent sessions than the quota.
    Ok,
    /// More concurrent sessions than the quota at some moment: a broker bug.
    Fail,
}

/// The outcome of the contention check.
#[derive(Serialize, Clone, Debug)]
pub struct QuotaCheck {
    /// OK or FAIL.
    pub verdict: Verdict,
    /// The organization's KRE quota.
    pub quota: u32,
    /// Highest number of intervals covering one instant.
    pub max_concurrent: u32,
    /// Nanoseconds since the run started at which `max_concurrent` was first reached.
    pub max_at_ns: u64,
    /// Lease intervals swept.
    pub intervals_checked: u64,
    /// Intervals not kept because an engine reached its share of `INTERVALS_MAX`;
    /// the check is then partial (it can miss violations, never invent one).
    pub intervals_dropped: u64,
}

impl QuotaCheck {
    /// Sweeps `intervals` and compares the peak with `quota`.
    pub(crate) fn run(intervals: &[Interval], intervals_dropped: u64, quota: u32) -> Self {
        let peak = max_concurrent(intervals);
        let verdict = if peak.count <= quota {
            Verdict::Ok
        } else {
            Verdict::Fail
        };
        Self {
            verdict,
            quota,
            max_concurrent: peak.count,
            max_at_ns: peak.at_ns,
            intervals_checked: intervals.len() as u64,
            intervals_dropped,
        }
    }

    /// The one-line summary, `quota check: OK max concurrent N <= quota Q` or FAIL.
    pub fn summary(&self) -> String {
        match self.verdict {
            Verdict::Ok => format!(
                "quota check: OK max concurrent {} <= quota {}",
                self.max_concurrent, self.quota
            ),
            Verdict::Fail => format!(
                "quota check: FAIL max concurrent {} > quota {} (at +{:.3}s)",
                self.max_concurrent,
                self.quota,
                self.max_at_ns as f64 / 1e9
            ),
        }
    }
}

/// The highest overlap and where it was first reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peak {
    pub count: u32,
    pub at_ns: u64,
}

/// Sweeps the sorted interval endpoints. At equal times starts are taken before ends,
/// so closed intervals that touch count as overlapping.
pub(crate) fn max_concurrent(intervals: &[Interval]) -> Peak {
    // (time, 0) is a start and (time, 1) an end: starts sort first at equal times.
    let mut events: Vec<(u64, u8)> = Vec::with_capacity(intervals.len() * 2);
    for interval in intervals {
        debug_assert!(interval.start_ns <= interval.end_ns);
        events.push((interval.start_ns, 0));
        events.push((interval.end_ns, 1));
    }
    events.sort_unstable();
    let mut open: u32 = 0;
    let mut peak = Peak { count: 0, at_ns: 0 };
    for (time_ns, kind) in events {
        if kind == 0 {
            open += 1;
            if open > peak.count {
                peak = Peak {
                    count: open,
                    at_ns: time_ns,
                };
            }
        } else {
            open -= 1;
        }
    }
    debug_assert_eq!(open, 0);
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(intervals: &[(u64, u64)]) -> Peak {
        let intervals: Vec<Interval> = intervals
            .iter()
            .map(|&(start_ns, end_ns)| Interval { start_ns, end_ns })
            .collect();
        max_concurrent(&intervals)
    }

    #[test]
    fn no_intervals_no_sessions() {
        assert_eq!(check(&[]), Peak { count: 0, at_ns: 0 });
    }

    #[test]
    fn disjoint_intervals_never_overlap() {
        assert_eq!(check(&[(0, 10), (11, 20), (21, 30)]).count, 1);
    }

    #[test]
    fn nested_and_staggered_intervals_overlap() {
        assert_eq!(
            check(&[(0, 100), (10, 20), (15, 30), (40, 50)]),
            Peak {
                count: 3,
                at_ns: 15
            }
        );
        assert_eq!(check(&[(5, 6), (0, 10), (1, 9), (2, 8)]).count, 4);
    }

    #[test]
    fn touching_intervals_count_as_overlapping() {
        assert_eq!(
            check(&[(0, 10), (10, 20)]),
            Peak {
                count: 2,
                at_ns: 10
            }
        );
        assert_eq!(check(&[(7, 7)]).count, 1);
        assert_eq!(check(&[(7, 7), (7, 7)]).count, 2);
    }

    #[test]
    fn verdict_compares_with_quota() {
        let intervals = [
            Interval {
                start_ns: 0,
                end_ns: 10,
            },
            Interval {
                start_ns: 5,
                end_ns: 15,
            },
        ];
        assert_eq!(QuotaCheck::run(&intervals, 0, 2).verdict, Verdict::Ok);
        let failed = QuotaCheck::run(&intervals, 0, 1);
        assert_eq!(failed.verdict, Verdict::Fail);
        assert!(
            failed
                .summary()
                .starts_with("quota check: FAIL max concurrent 2 > quota 1")
        );
    }
}
