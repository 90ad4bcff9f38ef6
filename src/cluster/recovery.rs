//! A new leader's state: the cluster's log read from etcd, commit group by commit
//! group in key order, and replayed through `storage::durable::Replayer`, the local
//! recovery's path (`AdminState::apply`, lease restore); then a new boot epoch made
//! durable through the fenced journal before the lease table serves, so generations
//! keep strictly increasing across leaders; every recovered lease counts against its
//! quota (it is in the table before any grant) and lives a full TTL from the takeover.
//!
//! The log is read at one etcd revision, a page of [`PAGE_GROUPS`] groups at a time.
//! Nothing is written to it meanwhile: this node holds the election key, and every
//! write is fenced on it.

use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use tokio::time::Instant;

use super::election::Leadership;
use super::etcd::{self, Etcd};
use super::journal::{self, EtcdJournal, Writer};
use super::{ClusterError, Keys};
use crate::domain::AdminState;
use crate::leases::{LeaseObserver, LeaseTable, RecoveringLeases, Serving};
use crate::storage::codec;
use crate::storage::durable::{self, Replayer};

/// Commit groups read per etcd call: at most this many MiB in one answer (within
/// `etcd::RESPONSE_BYTES_MAX`).
const PAGE_GROUPS: i64 = 16;
const _: () =
    assert!(PAGE_GROUPS as usize * journal::GROUP_BYTES_MAX * 2 <= etcd::RESPONSE_BYTES_MAX);

/// A failed read of the log is tried again after this pause, while this node leads.
const READ_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a new leader rebuilt.
pub struct Recovered {
    pub admin: AdminState,
    pub leases: LeaseTable,
    pub journal: Arc<EtcdJournal>,
    /// This term's boot epoch, already durable in etcd.
    pub boot_epoch: u64,
    pub groups_replayed: u64,
    pub records_replayed: u64,
    pub recovery_time: std::time::Duration,
}

/// Replays the cluster's log into `leases` and starts this leader's journal.
pub async fn recover(
    etcd: &Etcd,
    keys: &Keys,
    leadership: &Leadership,
    leases: RecoveringLeases,
    observer: Arc<dyn LeaseObserver>,
) -> Result<Recovered, ClusterError> {
    let started = WallInstant::now();
    let mut replayer = Replayer::new(&leases, Instant::now());
    let end = etcd::prefix_end(&keys.log_prefix);
    let mut start = keys.log_prefix.clone();
    let mut revision = 0;
    let mut last_seq = None;
    let (mut groups, mut records) = (0u64, 0u64);
    loop {
        let page = read_page(etcd, leadership, (&start, &end), revision).await?;
        if revision == 0 {
            revision = page.header.as_ref().map(|h| h.revision).unwrap_or_default();
        }
        for group in &page.kvs {
            let damaged = |detail: String| ClusterError::Damaged {
                key: String::from_utf8_lossy(&group.key).into_owned(),
                detail,
            };
            let seq = keys
                .log_seq(&group.key)
                .ok_or_else(|| damaged("not a log key".into()))?;
            if last_seq.is_some_and(|last| seq <= last) {
                return Err(damaged("out of order".into()));
            }
            for record in journal::unframe(&group.value).map_err(damaged)? {
                replayer.record(seq, record)?;
                records += 1;
            }
            last_seq = Some(seq);
            groups += 1;
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                start = last.key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    let (admin, boot_epoch) = replayer.finish();
    let boot_epoch =
        durable::checked_boot_epoch(boot_epoch).map_err(|e| ClusterError::Damaged {
            key: "a boot record".into(),
            detail: e.to_string(),
        })? + 1;
    let journal = EtcdJournal::start(
        Writer {
            etcd: etcd.clone(),
            keys: keys.clone(),
            fence_revision: leadership.revision,
            next_seq: last_seq.map_or(0, |last| last + 1),
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

/// One page of the log at `revision` (0: now), retried while this node leads.
async fn read_page(
    etcd: &Etcd,
    leadership: &Leadership,
    (start, end): (&[u8], &[u8]),
    revision: i64,
) -> Result<etcd::pb::RangeResponse, ClusterError> {
    loop {
        if leadership.signal().is_lost() {
            return Err(ClusterError::LeadershipLost(
                "lost while reading the log from etcd".into(),
            ));
        }
        match etcd.range(start, end, revision, PAGE_GROUPS).await {
            Ok(page) => return Ok(page),
            Err(error) => {
                tracing::warn!(%error, "reading the cluster's log from etcd failed; retrying");
                tokio::time::sleep(READ_RETRY_PAUSE).await;
            }
        }
    }
}
