//! The state of a cluster rebuilt from etcd, one path for standbys and new leaders.
//!
//! [`Follower`] holds a `storage::durable::Replayer` (the local recovery's code path:
//! `AdminState::apply`, lease restore) and the last commit group it applied. Its
//! [`Follower::catch_up`] reads etcd at one revision: the newest complete snapshot
//! (`super::snapshot`) when the follower is behind it (or has nothing), then every
//! commit group after the last one applied, in key order. A standby calls
//! [`Follower::follow`]: catch up, then apply each group as a watch from that revision
//! delivers it; a watch etcd cancelled (its revision compacted away) or a group that
//! skips one ends in a new catch-up, which reloads the snapshot if the log the
//! follower needs is gone. A failure to follow (etcd away, a group that does not
//! replay: the follower then starts again from the snapshot) is retried after a
//! pause that doubles with the failures in a row, up to a bound, and logged once per
//! failing spell (`FollowFailures`), with the count in `FOLLOW_FAILURES_METRIC`.
//!
//! [`recover`], once elected: the catch-up of the tail (a standby that followed has
//! only the groups written since its watch last delivered), every restored lease given
//! a full TTL from the takeover, and a new boot epoch made durable through the fenced
//! journal before the lease table serves, so generations keep strictly increasing
//! across leaders. Every recovered lease counts against its quota: it is in the table
//! before any grant. No group is written meanwhile: this node holds the election key,
//! and every write is fenced on it.

use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::election::Leadership;
use super::etcd::{self, Etcd, EtcdError, pb};
use super::journal::{self, EtcdJournal, Writer};
use super::snapshot;
use super::{APPLIED_SEQ_METRIC, ClusterError, FOLLOW_FAILURES_METRIC, Keys};
use crate::domain::AdminState;
use crate::leases::{LeaseObserver, LeaseTable, RecoveringLeases, Serving};
use crate::limits;
use crate::storage::codec;
use crate::storage::durable::{self, Replayer};

/// Commit groups read per etcd call: at most this many MiB in one answer (within
/// `etcd::RESPONSE_BYTES_MAX`).
const PAGE_GROUPS: i64 = 16;
const _: () =
    assert!(PAGE_GROUPS as usize * journal::GROUP_BYTES_MAX * 2 <= etcd::RESPONSE_BYTES_MAX);

/// A failed read of etcd is tried again after this pause.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A standby's failures in a row to follow the log: the pause before the next try
/// (doubling, `limits::CLUSTER_FOLLOW_RETRY_MS_MIN` to `_MAX`), and what was logged,
/// so that a log line marks a change of state (failing, following again) plus a
/// reminder at most every `limits::CLUSTER_FOLLOW_REMINDER_MS`, never one per retry.
#[derive(Debug, Default)]
struct FollowFailures {
    /// Failures since the follower last caught up.
    in_a_row: u32,
    /// When the first of them happened.
    since: Option<WallInstant>,
    /// When the last line about them was logged.
    logged_at: Option<WallInstant>,
}

impl FollowFailures {
    /// Counts a failure, logs it if it starts a failing spell (or a reminder is due),
    /// and returns the pause before the next try.
    fn failed(&mut self, error: &ClusterError) -> Duration {
        self.in_a_row = self.in_a_row.saturating_add(1);
        let now = WallInstant::now();
        let since = *self.since.get_or_insert(now);
        metrics::gauge!(FOLLOW_FAILURES_METRIC).set(f64::from(self.in_a_row));
        let pause = follow_retry_pause(self.in_a_row);
        let reminder_due = self.logged_at.is_none_or(|at| {
            now.duration_since(at) >= Duration::from_millis(limits::CLUSTER_FOLLOW_REMINDER_MS)
        });
        if reminder_due {
            self.logged_at = Some(now);
            let failures = self.in_a_row;
            let failing_ms = now.duration_since(since).as_millis() as u64;
            let retry_ms = pause.as_millis() as u64;
            match error {
                ClusterError::Etcd(_) => tracing::warn!(
                    %error, failures, failing_ms, retry_ms,
                    "a standby cannot follow the cluster's log (etcd); retrying with backoff"
                ),
                _ => tracing::error!(
                    %error, failures, failing_ms, retry_ms,
                    "a standby cannot replay the cluster's log; reloading it from the snapshot with backoff until the leader rewrites or snapshots past it"
                ),
            }
        }
        pause
    }

    /// The follower caught up and watches: a failing spell, if any, is over.
    fn caught_up(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failures = self.in_a_row,
                failing_ms = since.elapsed().as_millis() as u64,
                "the standby follows the cluster's log again"
            );
            metrics::gauge!(FOLLOW_FAILURES_METRIC).set(0.0);
        }
        self.in_a_row = 0;
        self.logged_at = None;
    }
}

/// The pause after `failures` failures in a row: the least, doubled for each failure
/// after the first, at most the most.
fn follow_retry_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let pause_ms = limits::CLUSTER_FOLLOW_RETRY_MS_MIN.saturating_mul(1 << doublings);
    Duration::from_millis(pause_ms.min(limits::CLUSTER_FOLLOW_RETRY_MS_MAX))
}

/// The state rebuilt from etcd so far, and where in the log it is.
pub struct Follower {
    replayer: Replayer,
    /// An empty lease table, for a reload from the snapshot.
    fresh: Box<dyn Fn() -> RecoveringLeases + Send + Sync>,
    /// The last commit group applied (`None`: none, nor a snapshot).
    applied: Option<u64>,
    /// Records and bytes applied after the snapshot loaded (they are in etcd's log).
    log_records: u64,
    log_bytes: u64,
    /// Commit groups and records applied in all.
    groups: u64,
    records: u64,
}

/// What a commit group delivered by the watch is to a follower.
enum Delivered {
    /// The next one: applied.
    Applied,
    /// One already applied (a retried write puts the same value again).
    Stale,
    /// One past the next: a group was missed, catch up.
    Gap,
}

impl Follower {
    /// A follower that has read nothing yet; `fresh` makes the empty lease table it
    /// starts from (and restarts from, to reload a snapshot).
    pub fn new(fresh: impl Fn() -> RecoveringLeases + Send + Sync + 'static) -> Follower {
        Follower {
            replayer: Replayer::new(fresh(), Instant::now()),
            fresh: Box::new(fresh),
            applied: None,
            log_records: 0,
            log_bytes: 0,
            groups: 0,
            records: 0,
        }
    }

    /// The last commit group applied.
    pub fn applied_seq(&self) -> Option<u64> {
        self.applied
    }

    /// Live leases rebuilt so far.
    pub fn live_leases(&self) -> usize {
        self.replayer.leases().live_count()
    }

    /// Starts again from nothing (after a group that did not replay: what it applied
    /// of it is unknown).
    fn reset(&mut self) {
        self.replayer = Replayer::new((self.fresh)(), Instant::now());
        self.applied = None;
        self.log_records = 0;
        self.log_bytes = 0;
    }

    /// Brings the state up to etcd's log as of now, reading at one revision: the
    /// snapshot if the follower is behind it, then the groups after the last applied.
    /// Returns that revision. State is consistent at every await: a catch-up cancelled
    /// or failed midway can be run again.
    pub async fn catch_up(&mut self, etcd: &Etcd, keys: &Keys) -> Result<i64, ClusterError> {
        let (manifest, revision) = snapshot::read_manifest(etcd, keys).await?;
        if let Some(manifest) = manifest
            && self.applied.is_none_or(|applied| applied < manifest.seq)
        {
            let payload = snapshot::read_chunks(etcd, keys, &manifest, revision).await?;
            let mut replayer = Replayer::new((self.fresh)(), Instant::now());
            replayer.snapshot(manifest.seq, &payload)?;
            self.replayer = replayer;
            self.applied = Some(manifest.seq);
            self.log_records = 0;
            self.log_bytes = 0;
            tracing::info!(
                seq = manifest.seq,
                leases = manifest.leases,
                bytes = manifest.bytes,
                "loaded the cluster's snapshot from etcd"
            );
        }
        let end = etcd::prefix_end(&keys.log_prefix);
        let mut start = keys.log_key(self.next_seq());
        loop {
            let page = etcd.range(&start, &end, revision, PAGE_GROUPS).await?;
            for group in &page.kvs {
                let damaged = |detail: String| ClusterError::Damaged {
                    key: String::from_utf8_lossy(&group.key).into_owned(),
                    detail,
                };
                let seq = keys
                    .log_seq(&group.key)
                    .ok_or_else(|| damaged("not a log key".into()))?;
                if seq != self.next_seq() {
                    return Err(damaged(format!(
                        "commit group {} is missing before it",
                        self.next_seq()
                    )));
                }
                self.apply(seq, group)?;
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
        metrics::gauge!(APPLIED_SEQ_METRIC).set(self.applied.map_or(-1.0, |seq| seq as f64));
        Ok(revision)
    }

    fn next_seq(&self) -> u64 {
        self.applied.map_or(0, |applied| applied + 1)
    }

    /// Replays commit group `seq` (the next one).
    fn apply(&mut self, seq: u64, group: &pb::KeyValue) -> Result<(), ClusterError> {
        let records = journal::unframe(&group.value).map_err(|detail| ClusterError::Damaged {
            key: String::from_utf8_lossy(&group.key).into_owned(),
            detail,
        })?;
        for record in &records {
            self.replayer.record(seq, record)?;
        }
        self.applied = Some(seq);
        self.groups += 1;
        self.records += records.len() as u64;
        self.log_records += records.len() as u64;
        self.log_bytes += group.value.len() as u64;
        Ok(())
    }

    /// A group the watch delivered.
    fn deliver(&mut self, seq: u64, group: &pb::KeyValue) -> Result<Delivered, ClusterError> {
        let next = self.next_seq();
        if seq < next {
            return Ok(Delivered::Stale);
        }
        if seq > next {
            return Ok(Delivered::Gap);
        }
        self.apply(seq, group)?;
        metrics::gauge!(APPLIED_SEQ_METRIC).set(seq as f64);
        Ok(Delivered::Applied)
    }

    /// Follows the log for as long as it is polled (a standby: until it is elected).
    /// A failure is tried again after a pause that grows with the failures in a row
    /// (see [`FollowFailures`]); a group that does not replay makes the follower start
    /// again from the snapshot, which succeeds once the leader rewrote the group or a
    /// snapshot covers it.
    pub async fn follow(&mut self, etcd: &Etcd, keys: &Keys) {
        let mut failures = FollowFailures::default();
        metrics::gauge!(FOLLOW_FAILURES_METRIC).set(0.0);
        loop {
            let error = match self.follow_once(etcd, keys, &mut failures).await {
                Ok(()) => continue,
                Err(error) => error,
            };
            let pause = failures.failed(&error);
            if !matches!(error, ClusterError::Etcd(_)) {
                self.reset();
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Catches up, then applies what a watch from there delivers, until the watch
    /// ends, is cancelled, or skips a group.
    async fn follow_once(
        &mut self,
        etcd: &Etcd,
        keys: &Keys,
        failures: &mut FollowFailures,
    ) -> Result<(), ClusterError> {
        let revision = self.catch_up(etcd, keys).await?;
        // The request side stays open while the watch runs: etcd ends a watch whose
        // client closed it.
        let (requests, receiver) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: keys.log_prefix.clone(),
                    range_end: etcd::prefix_end(&keys.log_prefix),
                    start_revision: revision + 1,
                },
            )),
        };
        let _ = requests.try_send(create);
        let mut responses = etcd
            .watch_client()
            .watch(ReceiverStream::new(receiver))
            .await
            .map_err(EtcdError::from)?
            .into_inner();
        while let Some(response) = responses.message().await.map_err(EtcdError::from)? {
            // Caught up and watching (etcd's first answer says the watch is made): a
            // failing spell is over. Not before: a watch that fails right after each
            // catch-up keeps the spell, its backoff and its one log line.
            failures.caught_up();
            if response.canceled || response.compact_revision > 0 {
                tracing::info!(
                    compact_revision = response.compact_revision,
                    reason = %response.cancel_reason,
                    "the watch of the cluster's log ended; catching up again"
                );
                return Ok(());
            }
            for event in &response.events {
                if event.r#type != pb::event::EventType::Put as i32 {
                    continue;
                }
                let Some(group) = &event.kv else { continue };
                let Some(seq) = keys.log_seq(&group.key) else {
                    continue;
                };
                if let Delivered::Gap = self.deliver(seq, group)? {
                    return Ok(());
                }
            }
        }
        drop(requests);
        Ok(())
    }
}

/// What a new leader rebuilt.
pub struct Recovered {
    pub admin: AdminState,
    pub leases: LeaseTable,
    pub journal: Arc<EtcdJournal>,
    /// This term's boot epoch, already durable in etcd.
    pub boot_epoch: u64,
    /// Commit groups and records read after the election (the tail a standby had not
    /// applied yet, or the whole log after the snapshot).
    pub groups_replayed: u64,
    pub records_replayed: u64,
    pub recovery_time: std::time::Duration,
}

/// Catches `follower` up with the tail of the log and starts this leader's journal.
pub async fn recover(
    etcd: &Etcd,
    keys: &Keys,
    leadership: &Leadership,
    mut follower: Follower,
    observer: Arc<dyn LeaseObserver>,
) -> Result<Recovered, ClusterError> {
    let started = WallInstant::now();
    // A leader follows no more: failures of its standby days are history.
    metrics::gauge!(FOLLOW_FAILURES_METRIC).set(0.0);
    let (groups_before, records_before) = (follower.groups, follower.records);
    loop {
        if leadership.signal().is_lost() {
            return Err(ClusterError::LeadershipLost(
                "lost while reading the log from etcd".into(),
            ));
        }
        match follower.catch_up(etcd, keys).await {
            Ok(_) => break,
            Err(ClusterError::Etcd(error)) => {
                tracing::warn!(%error, "reading the cluster's log from etcd failed; retrying");
                tokio::time::sleep(READ_RETRY_PAUSE).await;
            }
            Err(error) => return Err(error),
        }
    }
    let next_seq = follower.next_seq();
    let (log_records, log_bytes) = (follower.log_records, follower.log_bytes);
    let (groups, records) = (
        follower.groups - groups_before,
        follower.records - records_before,
    );
    let (admin, boot_epoch, leases) = follower.replayer.finish();
    let boot_epoch =
        durable::checked_boot_epoch(boot_epoch).map_err(|e| ClusterError::Damaged {
            key: "a boot record".into(),
            detail: e.to_string(),
        })? + 1;
    // A standby restored its leases as their grants came: each gets a full TTL from now.
    leases.live_from(Instant::now());
    let journal = EtcdJournal::start(
        Writer {
            etcd: etcd.clone(),
            keys: keys.clone(),
            fence_revision: leadership.revision,
            next_seq,
            log_records,
            log_bytes,
        },
        Arc::clone(leadership.signal()),
    );
    journal
        .append_and_wait(codec::encode_boot(boot_epoch))
        .await?;
    let leases = leases.serve(Serving {
        boot_epoch,
        journal: journal.clone(),
        observer,
    });
    Ok(Recovered {
        admin,
        leases,
        journal,
        boot_epoch,
        groups_replayed: groups,
        records_replayed: records,
        recovery_time: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseTiming;

    fn follower() -> Follower {
        Follower::new(|| {
            RecoveringLeases::new(
                LeaseTiming::from_ttl(Duration::from_secs(10)),
                limits::LEASES_PER_ORG_MAX,
            )
        })
    }

    fn group(keys: &Keys, seq: u64, epoch: u64) -> pb::KeyValue {
        pb::KeyValue {
            key: keys.log_key(seq),
            value: journal::frame([codec::encode_boot(epoch)]),
            ..Default::default()
        }
    }

    #[test]
    fn a_watched_group_applies_once_in_order_and_a_skipped_one_asks_for_a_catch_up() {
        let keys = Keys::new("c");
        let mut follower = follower();
        assert!(matches!(
            follower.deliver(0, &group(&keys, 0, 1)),
            Ok(Delivered::Applied)
        ));
        // A retried write puts the same group again.
        assert!(matches!(
            follower.deliver(0, &group(&keys, 0, 1)),
            Ok(Delivered::Stale)
        ));
        assert!(matches!(
            follower.deliver(2, &group(&keys, 2, 3)),
            Ok(Delivered::Gap)
        ));
        assert_eq!(follower.applied_seq(), Some(0));
        assert!(matches!(
            follower.deliver(1, &group(&keys, 1, 2)),
            Ok(Delivered::Applied)
        ));
        let (_, epoch, _) = follower.replayer.finish();
        assert_eq!(epoch, 2);
    }

    #[test]
    fn a_standby_retries_following_after_a_pause_doubling_to_a_bound() {
        let pauses: Vec<u64> = (1..=10)
            .map(|failures| follow_retry_pause(failures).as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(
            follow_retry_pause(u32::MAX),
            Duration::from_millis(limits::CLUSTER_FOLLOW_RETRY_MS_MAX)
        );
        // A failing spell is logged once, not per retry, and ends when caught up.
        let mut failures = FollowFailures::default();
        let damaged = ClusterError::Damaged {
            key: "k".into(),
            detail: "d".into(),
        };
        failures.failed(&damaged);
        let first_logged = failures.logged_at;
        failures.failed(&damaged);
        assert_eq!(failures.logged_at, first_logged);
        assert_eq!(failures.in_a_row, 2);
        failures.caught_up();
        assert_eq!(failures.in_a_row, 0);
        assert!(failures.since.is_none() && failures.logged_at.is_none());
    }

    #[test]
    fn a_damaged_group_is_refused_with_its_key() {
        let keys = Keys::new("c");
        let mut follower = follower();
        let damaged = pb::KeyValue {
            key: keys.log_key(0),
            value: vec![9, 0, 0, 0, 1],
            ..Default::default()
        };
        let refused = follower.deliver(0, &damaged).err().expect("refused");
        assert!(
            refused.to_string().contains("/seatbroker/c/log/"),
            "{refused}"
        );
        assert_eq!(follower.applied_seq(), None);
    }
}
