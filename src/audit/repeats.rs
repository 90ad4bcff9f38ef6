//! Aggregation of repeated refused acquires, as syslog's "last message repeated N
//! times": per organization, member, product and reason, the first refusal of a
//! period (`limits::AUDIT_DENIAL_REPEAT_MS`, a minute) is written as an
//! `acquire_denied` event and the others are only counted; the count is written as one
//! `acquire_denied_repeated` event (detail `reason=<reason> count=<n>`, the time of
//! the last one counted) when the period ends, when the organization's record is
//! queried (so a query sees every refusal recorded before it, as a line or in a
//! count), when the table is full, and at shutdown.
//!
//! The table lives in the audit writer thread, which alone touches it: the acquire
//! path still only queues the event (`try_send`), with no lock of its own. It holds
//! at most `limits::AUDIT_DENIAL_SERIES_MAX` series; a new series past that first
//! writes every count out and empties the table, so each refusal is still either
//! written or counted exactly once.

use std::collections::HashMap;

use super::{AuditEvent, AuditKind, AuditLine, AuditRecord};
use crate::domain::{Email, Product};
use crate::limits;

/// What repeats: a member refused one product for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Series {
    email: Email,
    product: Product,
    reason: Box<str>,
}

/// The refusals of a series in one period after the first (which was written).
#[derive(Debug, Clone, Copy)]
struct Count {
    period: i64,
    repeated: u64,
    last_unix_ms: i64,
}

/// The counting table, by organization.
#[derive(Debug, Default)]
pub struct DenialRepeats {
    orgs: HashMap<Box<str>, HashMap<Series, Count>>,
    series: usize,
    /// The period of the last sweep: the table is swept once per period, not per call.
    swept_period: Option<i64>,
}

fn period_of(at_unix_ms: i64) -> i64 {
    at_unix_ms.div_euclid(limits::AUDIT_DENIAL_REPEAT_MS)
}

fn summary(org: &str, series: &Series, count: &Count) -> AuditRecord {
    let email = series.email.to_string();
    AuditRecord {
        at_unix_ms: count.last_unix_ms,
        org: org.to_owned(),
        kind: AuditKind::AcquireDeniedRepeated.as_str().into(),
        product: Some(series.product.name().to_owned()),
        email: Some(email.clone()),
        lease_id: None,
        generation: None,
        engine_id: None,
        actor: email,
        detail: Some(format!("reason={} count={}", series.reason, count.repeated)),
        client_cert: None,
    }
}

impl DenialRepeats {
    /// Series counted now (at most `limits::AUDIT_DENIAL_SERIES_MAX`).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.series
    }

    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// Takes a refused acquire: `write` gets the lines to write now (the event itself
    /// when it starts a period, the count of the period it ends), or none when it is
    /// counted. Other events are passed through.
    pub fn record(&mut self, event: &AuditEvent, write: &mut impl FnMut(&AuditLine)) {
        let (AuditKind::AcquireDenied, Some(product), Some(email), Some(reason)) =
            (event.kind, event.product, &event.email, &event.detail)
        else {
            event.write_line(write);
            return;
        };
        let org = event.org.as_str();
        let series = Series {
            email: email.clone(),
            product,
            reason: reason.as_str().into(),
        };
        let period = period_of(event.at_unix_ms);
        if let Some(count) = self.orgs.get_mut(org).and_then(|o| o.get_mut(&series)) {
            if count.period == period {
                count.repeated += 1;
                count.last_unix_ms = count.last_unix_ms.max(event.at_unix_ms);
                return;
            }
            // Another period (a minute passed before the sweep, or the clock stepped):
            // the old count is written and this refusal starts the new period.
            if count.repeated > 0 {
                write(&summary(org, &series, count).line());
            }
            *count = Count {
                period,
                repeated: 0,
                last_unix_ms: event.at_unix_ms,
            };
            event.write_line(write);
            return;
        }
        if self.series >= limits::AUDIT_DENIAL_SERIES_MAX {
            self.write_all(write);
        }
        self.orgs.entry(org.into()).or_default().insert(
            series,
            Count {
                period,
                repeated: 0,
                last_unix_ms: event.at_unix_ms,
            },
        );
        self.series += 1;
        event.write_line(write);
    }

    /// Writes the counts of periods that ended before `now_unix_ms` and forgets them.
    pub fn end_periods_before(&mut self, now_unix_ms: i64, write: &mut impl FnMut(&AuditLine)) {
        let now = period_of(now_unix_ms);
        if self.swept_period.is_some_and(|swept| swept >= now) {
            return;
        }
        self.swept_period = Some(now);
        let mut ended = 0;
        self.orgs.retain(|org, counts| {
            counts.retain(|series, count| {
                if count.period >= now {
                    return true;
                }
                if count.repeated > 0 {
                    write(&summary(org, series, count).line());
                }
                ended += 1;
                false
            });
            !counts.is_empty()
        });
        self.series -= ended;
    }

    /// Writes `org`'s counts so far (before a query reads its record); later refusals
    /// of the same periods keep being counted, from zero.
    pub fn write_org(&mut self, org: &str, write: &mut impl FnMut(&AuditLine)) {
        let Some(counts) = self.orgs.get_mut(org) else {
            return;
        };
        for (series, count) in counts.iter_mut() {
            if count.repeated > 0 {
                write(&summary(org, series, count).line());
                count.repeated = 0;
            }
        }
    }

    /// Writes every count and empties the table (table full, shutdown).
    pub fn write_all(&mut self, write: &mut impl FnMut(&AuditLine)) {
        for (org, counts) in self.orgs.drain() {
            for (series, count) in &counts {
                if count.repeated > 0 {
                    write(&summary(&org, series, count).line());
                }
            }
        }
        self.series = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrgId;

    fn denied(at: i64, org: &str, member: &str, reason: &'static str) -> AuditEvent {
        let email = Email::parse(&format!("{member}@{org}.test")).unwrap();
        AuditEvent::denied(
            at,
            &OrgId::parse(org).unwrap(),
            &email,
            Product::Kre,
            reason,
        )
    }

    /// A written line as the reader gets it back.
    fn owned(line: &AuditLine) -> AuditRecord {
        serde_json::from_str(&serde_json::to_string(line).unwrap()).unwrap()
    }

    /// Runs `steps` and returns the lines written.
    fn lines(repeats: &mut DenialRepeats, events: &[AuditEvent]) -> Vec<AuditRecord> {
        let mut written = Vec::new();
        for event in events {
            repeats.record(event, &mut |r| written.push(owned(r)));
        }
        written
    }

    fn total_refusals(lines: &[AuditRecord]) -> u64 {
        lines
            .iter()
            .map(|line| match line.kind.as_str() {
                "acquire_denied" => 1,
                "acquire_denied_repeated" => line
                    .detail
                    .as_deref()
                    .and_then(|d| d.rsplit("count=").next())
                    .and_then(|n| n.parse().ok())
                    .unwrap(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn repeats_in_a_minute_are_one_line_and_one_count() {
        let mut repeats = DenialRepeats::default();
        let minute = limits::AUDIT_DENIAL_REPEAT_MS;
        let mut events: Vec<AuditEvent> = (0..1000)
            .map(|i| denied(minute + i, "acme", "a", "quota_exhausted"))
            .collect();
        events.push(denied(minute + 5, "acme", "b", "quota_exhausted"));
        events.push(denied(minute + 6, "acme", "a", "not_licensed"));
        let mut written = lines(&mut repeats, &events);
        assert_eq!(written.len(), 3, "one line per series");
        repeats.end_periods_before(2 * minute - 1, &mut |r| written.push(owned(r)));
        assert_eq!(written.len(), 3, "the minute has not ended");
        repeats.end_periods_before(2 * minute, &mut |r| written.push(owned(r)));
        assert_eq!(written.len(), 4);
        let count = &written[3];
        assert_eq!(count.kind, "acquire_denied_repeated");
        assert_eq!(
            count.detail.as_deref(),
            Some("reason=quota_exhausted count=999")
        );
        assert_eq!(count.at_unix_ms, minute + 999);
        assert_eq!(total_refusals(&written), 1002);
        assert!(repeats.is_empty());
    }

    #[test]
    fn a_query_a_new_minute_and_a_full_table_write_the_counts_so_far() {
        let mut repeats = DenialRepeats::default();
        let minute = limits::AUDIT_DENIAL_REPEAT_MS;
        let mut written = lines(
            &mut repeats,
            &[
                denied(0, "acme", "a", "quota_exhausted"),
                denied(1, "acme", "a", "quota_exhausted"),
                denied(2, "other", "a", "quota_exhausted"),
                denied(3, "other", "a", "quota_exhausted"),
            ],
        );
        repeats.write_org("acme", &mut |r| written.push(owned(r)));
        assert_eq!(written.len(), 3, "acme's count only");
        written.extend(lines(
            &mut repeats,
            &[
                denied(4, "acme", "a", "quota_exhausted"),
                denied(minute, "acme", "a", "quota_exhausted"),
            ],
        ));
        assert_eq!(total_refusals(&written), 5, "other's count is pending");
        // Fill the table with new series: the first past the bound writes every count.
        let members: Vec<AuditEvent> = (0..limits::AUDIT_DENIAL_SERIES_MAX)
            .flat_map(|i| {
                let member = format!("m{i}");
                [
                    denied(minute + 1, "big", &member, "quota_exhausted"),
                    denied(minute + 2, "big", &member, "quota_exhausted"),
                ]
            })
            .collect();
        written.extend(lines(&mut repeats, &members));
        assert!(repeats.len() <= limits::AUDIT_DENIAL_SERIES_MAX);
        repeats.write_all(&mut |r| written.push(owned(r)));
        assert_eq!(
            total_refusals(&written),
            6 + 2 * limits::AUDIT_DENIAL_SERIES_MAX as u64
        );
    }
}
