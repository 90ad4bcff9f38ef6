//! The journal on the local write-ahead log: encodes records with [`codec`], submits
//! them to the [`Wal`], and turns the WAL's tickets into [`Durable`] futures. Also
//! opening a data directory (recovery) and taking snapshots.
//!
//! A record that was applied in memory but cannot be submitted (the log closed or
//! refused it) would leave memory ahead of the log, and later records could depend on
//! it; the process aborts rather than go on with a state the log cannot reproduce.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant as WallInstant;

use tokio::time::Instant;

use super::codec::{self, LogBody, RecoveredLease};
use super::{Durable, Journal, LogPermit};
use crate::domain::{AdminState, Command, DomainError, OrgId};
use crate::leases::{Lease, LeaseId, LeaseTable};
use crate::limits;
use crate::wal::{self, FileSystem, Lsn, Wal, WalError, WalOptions};

/// Lease ends are not queued past this many pending records, which leaves room in the
/// log's queue for every admitted record (admission stops at
/// `limits::LOG_QUEUE_RECORDS_MAX`, overshooting by at most one record per thread).
const PENDING_RECORDS_FOR_ENDS_MAX: usize =
    wal::QUEUE_RECORDS_MAX_DEFAULT - limits::LOG_QUEUE_RECORDS_MAX - ADMISSION_OVERSHOOT_MAX;
/// More than the threads that can be between admission and append at once.
const ADMISSION_OVERSHOOT_MAX: usize = 1024;
const _: () = assert!(limits::LOG_QUEUE_RECORDS_MAX < PENDING_RECORDS_FOR_ENDS_MAX);

pub struct WalJournal {
    wal: Arc<Wal>,
    /// Lease ends the log could not take at once (held back by the lease table and
    /// appended before the organization's next grant).
    dropped_lease_ends: AtomicU64,
}

impl WalJournal {
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    pub fn dropped_lease_ends(&self) -> u64 {
        self.dropped_lease_ends.load(Ordering::Relaxed)
    }

    /// Why the log refuses new grants and admin changes, while it does (a full disk).
    pub fn alarm(&self) -> Option<wal::Alarm> {
        self.wal.alarm()
    }

    fn submit(&self, _admitted: LogPermit, record: Vec<u8>) -> Durable {
        match self.wal.submit(record) {
            Ok(ticket) => Box::pin(async move {
                ticket.await.map(|_| ()).map_err(|error| {
                    DomainError::Unavailable(format!(
                        "the log could not make the change durable: {error}"
                    ))
                })
            }),
            // Shutting down: nothing more will be persisted and the process is about to
            // exit, so the unlogged change dies with it; the caller gets UNAVAILABLE.
            Err(WalError::Closed) => Box::pin(std::future::ready(Err(DomainError::Unavailable(
                "seatbroker is shutting down; retry against the restarted daemon".into(),
            )))),
            Err(error) => log_diverged(&error),
        }
    }
}

/// Memory now holds a change the log does not: stop before anything builds on it.
fn log_diverged(error: &WalError) -> ! {
    tracing::error!(%error, "a change applied in memory could not be logged; aborting");
    std::process::abort()
}

impl Journal for WalJournal {
    fn admit(&self) -> Result<LogPermit, DomainError> {
        let pending = self.wal.admission().map_err(|error| match error {
            // Read-only until the log can reserve room again: reads, heartbeats and
            // releases go on; grants and admin changes are refused before they apply.
            WalError::Alarm(alarm) => {
                DomainError::Unavailable(format!("seatbroker is read-only for now: {alarm}"))
            }
            _ => DomainError::Unavailable(
                "seatbroker is shutting down; retry against the restarted daemon".into(),
            ),
        })?;
        super::admit(pending, limits::LOG_QUEUE_RECORDS_MAX)
    }

    fn append_command(&self, permit: LogPermit, command: &Command) -> Durable {
        self.submit(permit, codec::encode_command(command))
    }

    fn append_lease_granted(&self, permit: LogPermit, org: &OrgId, lease: &Lease) -> Durable {
        self.submit(permit, codec::encode_lease_granted(org, lease))
    }

    fn append_lease_ended(&self, org: &OrgId, id: LeaseId, generation: u64) -> bool {
        // Nobody waits; the record goes out with the next commit group.
        let record = codec::encode_lease_ended(org, id, generation);
        let taken = self
            .wal
            .submit_unawaited(record, PENDING_RECORDS_FOR_ENDS_MAX)
            .is_ok();
        if !taken {
            self.dropped_lease_ends.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    fn close(&self) -> Result<(), DomainError> {
        self.wal
            .close()
            .map_err(|error| DomainError::Unavailable(format!("closing the log: {error}")))
    }
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "{what} at log sequence number {lsn} cannot be replayed: {detail}. The log is not one this version wrote, or it is damaged; restore the data directory from a backup"
    )]
    Replay {
        what: &'static str,
        lsn: Lsn,
        detail: String,
    },
}

/// What recovery rebuilt.
pub struct Opened {
    pub admin: AdminState,
    pub leases: LeaseTable,
    pub journal: Arc<WalJournal>,
    /// This boot's epoch, already durable in the log.
    pub boot_epoch: u64,
    pub records_replayed: usize,
    pub recovery_time: std::time::Duration,
}

/// Opens (or creates) the log in `dir`, rebuilds the admin state and the live leases,
/// and makes a new boot epoch durable before returning.
pub async fn open(
    dir: &Path,
    fs: Arc<dyn FileSystem>,
    options: WalOptions,
    mut leases: LeaseTable,
) -> Result<Opened, OpenError> {
    let started = WallInstant::now();
    let (wal, recovered) = Wal::open(dir, fs, options)?;
    if let Some(tail) = &recovered.truncated_tail {
        tracing::warn!(file = %tail.file.display(), offset = tail.offset, bytes = tail.bytes_dropped, reason = %tail.reason, "truncated a torn record at the end of the log");
    }
    let now = Instant::now();
    let mut admin = AdminState::default();
    let mut boot_epoch = 0;
    if let Some((lsn, bytes)) = &recovered.snapshot {
        let (state, snapshot_leases, epoch) =
            codec::decode_snapshot(bytes).map_err(|e| OpenError::Replay {
                what: "the snapshot",
                lsn: *lsn,
                detail: e.to_string(),
            })?;
        admin = state;
        boot_epoch = checked_boot_epoch(epoch).map_err(|detail| OpenError::Replay {
            what: "the snapshot",
            lsn: *lsn,
            detail,
        })?;
        for lease in snapshot_leases {
            restore(&leases, lease, now);
        }
    }
    for (lsn, bytes) in &recovered.records {
        let replay_error = |what, detail: String| OpenError::Replay {
            what,
            lsn: *lsn,
            detail,
        };
        match codec::decode_log_record(bytes)
            .map_err(|e| replay_error("a record", e.to_string()))?
        {
            LogBody::Admin(record) => {
                let command = codec::decode_command(&record)
                    .map_err(|e| replay_error("an admin command", e.to_string()))?;
                admin
                    .apply(&command)
                    .map_err(|e| replay_error("an admin command", e.to_string()))?;
                let users: Vec<_> = command
                    .sessions_to_end()
                    .into_iter()
                    .map(|s| (s.email, s.product))
                    .collect();
                leases.end_sessions_of(command.org(), &users, None);
            }
            LogBody::LeaseGranted(record) => {
                let lease = codec::lease_from(&record)
                    .map_err(|e| replay_error("a lease grant", e.to_string()))?;
                restore(&leases, lease, now);
            }
            LogBody::LeaseEnded(record) => {
                let org = OrgId::parse(&record.org)
                    .map_err(|e| replay_error("a lease end", e.to_string()))?;
                let id = codec::lease_id_from(&record.lease_id)
                    .map_err(|e| replay_error("a lease end", e.to_string()))?;
                leases.forget(&org, id, record.generation);
            }
            LogBody::Boot(record) => {
                let epoch = checked_boot_epoch(record.epoch)
                    .map_err(|detail| replay_error("a boot record", detail))?;
                boot_epoch = boot_epoch.max(epoch);
            }
        }
    }
    let wal = Arc::new(wal);
    let boot_epoch = boot_epoch + 1;
    // The new epoch is durable before any grant of this boot can carry it.
    wal.submit(codec::encode_boot(boot_epoch))?.await?;
    leases.start_epoch(boot_epoch);
    let journal = Arc::new(WalJournal {
        wal,
        dropped_lease_ends: AtomicU64::new(0),
    });
    leases.set_journal(journal.clone());
    Ok(Opened {
        admin,
        leases,
        journal,
        boot_epoch,
        records_replayed: recovered.records.len(),
        recovery_time: started.elapsed(),
    })
}

/// A logged boot epoch, if the next boot's epoch still fits in a generation's high
/// bits (a larger one can only come from damage that kept its checksum, or forgery).
fn checked_boot_epoch(epoch: u64) -> Result<u64, String> {
    const EPOCHS: u64 = 1 << (64 - crate::leases::GENERATION_EPOCH_SHIFT);
    if epoch >= EPOCHS - 1 {
        return Err(format!(
            "boot epoch {epoch} is out of range (below {})",
            EPOCHS - 1
        ));
    }
    Ok(epoch)
}

fn restore(leases: &LeaseTable, recovered: RecoveredLease, now: Instant) {
    let lease = Lease {
        id: recovered.id,
        generation: recovered.generation,
        product: recovered.product,
        email: recovered.email,
        engine_id: recovered.engine_id.into(),
        hostname: recovered.hostname.into(),
        label: recovered.label.into(),
        deadline: now,
        acquired_at_unix_ms: recovered.acquired_at_unix_ms,
    };
    leases.restore(&recovered.org, lease, now);
}

/// The pieces of a snapshot, cut while the admin state was locked at `lsn`.
pub struct SnapshotCut {
    pub lsn: Lsn,
    pub admin: AdminState,
    pub leases: Vec<(OrgId, Lease)>,
    pub boot_epoch: u64,
}

/// Encodes and installs a snapshot; blocking (it waits until `lsn` is durable and
/// writes a file), so run it off the async threads.
pub fn install_snapshot(wal: &Wal, cut: SnapshotCut) -> Result<usize, WalError> {
    let leases = cut
        .leases
        .iter()
        .map(|(org, lease)| codec::lease_record(org, lease))
        .collect();
    let bytes = codec::encode_snapshot(&cut.admin, leases, cut.boot_epoch);
    wal.install_snapshot(cut.lsn, &bytes)?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arithmetic behind `limits::LOG_LEASE_ENDS_IN_RESERVE_MIN`: the longest
    /// lease end, framed and split across a block, fits `LOG_LEASE_END_BYTES_MAX`.
    #[test]
    fn the_longest_lease_end_fits_its_bound_in_the_log() {
        let org = OrgId::parse(&"a".repeat(limits::ORG_ID_BYTES_MAX)).unwrap();
        let id = codec::lease_id_from(&[0xff; 16]).unwrap();
        let record = codec::encode_lease_ended(&org, id, u64::MAX);
        // Fragment header and record prefix, one more fragment header and a skipped
        // block tail where it crosses a block.
        let in_log = record.len() + 7 + 16 + 7 + 6;
        assert!(
            in_log as u64 <= limits::LOG_LEASE_END_BYTES_MAX,
            "{in_log} bytes"
        );
    }
}
