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

use hashbrown::HashMap;

use super::codec::{
    self, DecodeError, LeaseEndRecord, LeaseRecord, LogBody, LogScratch, ReusedLogBody,
    SnapshotEncoder,
};
use crate::domain::journal::{self, Durable, Journal, LogPermit};
use crate::domain::{AdminState, Command, DomainError, Email, Lease, LeaseId, OrgId};
use crate::leases::{
    LeaseObserver, LeaseRef, LeaseTable, LiveLeaseVisitor, RecoveringLeases, Serving,
};
use crate::limits;
use crate::wal::{
    self, FileSystem, Lsn, ReplayError, Replayed, SnapshotWriter, Wal, WalError, WalOptions,
};

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
    /// The fewest records after a snapshot that make the next one due
    /// (`limits::SNAPSHOT_REPLAY_RECORDS_MIN`, or its failpoint in tests).
    replay_records_min: u64,
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

    /// Whether a new snapshot is due: the log since the last one has grown past its
    /// byte bound (disk use), or holds more records than a restart should replay for
    /// a state of `live_leases` (time to serve after a restart): half the live leases,
    /// at least `limits::SNAPSHOT_REPLAY_RECORDS_MIN`. Replaying a record costs about
    /// what loading a lease from a snapshot does, so a restart costs at most 1.5
    /// snapshot loads, whatever the log's history; and each snapshot is paid for by at
    /// least half as many records as it holds leases (the snapshot of a million
    /// leases, under a second of one core, at most every 500,000 grants and ends).
    pub fn snapshot_due(&self, live_leases: u64) -> bool {
        self.wal.snapshot_due()
            || replay_due(
                self.wal.stats().records_since_snapshot,
                live_leases,
                self.replay_records_min,
            )
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

/// Whether `records` logged since the last snapshot are more than a restart should
/// replay for a state of `live_leases`: half the live leases, at least `records_min`
/// (see [`WalJournal::snapshot_due`]; cluster mode's snapshots in etcd follow the same
/// rule).
pub fn replay_due(records: u64, live_leases: u64, records_min: u64) -> bool {
    records >= (live_leases / 2).max(records_min)
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
        journal::admit(pending, limits::LOG_QUEUE_RECORDS_MAX)
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
    /// Leases restored from the snapshot.
    pub snapshot_leases: u64,
    /// Records replayed after the snapshot.
    pub records_replayed: u64,
    pub recovery_time: std::time::Duration,
}

/// Opens (or creates) the log in `dir`, rebuilds the admin state and the live leases
/// into `leases`, makes a new boot epoch durable, and returns the lease table serving
/// on the log, telling `observer` (which the replay never reaches).
///
/// The log hands over the snapshot and then one record at a time, each borrowed from
/// the file being read; leases are decoded into reused records and stored directly,
/// and their organization ids and emails are shared as they are when granted. So
/// what stays allocated after a replay is the live state and nothing else, and
/// serving compacts the lease storage to the size of the live leases.
pub async fn open(
    dir: &Path,
    fs: Arc<dyn FileSystem>,
    options: WalOptions,
    leases: RecoveringLeases,
    observer: Arc<dyn LeaseObserver>,
) -> Result<Opened, OpenError> {
    let started = WallInstant::now();
    let mut replayer = Replayer::new(leases, Instant::now());
    let (wal, report) = Wal::open_replaying(dir, fs, options, |replayed| match replayed {
        Replayed::Snapshot { lsn, payload } => replayer.snapshot(lsn, payload),
        Replayed::Record { lsn, payload } => replayer.record(lsn, payload),
    })
    .map_err(|error| match error {
        ReplayError::Wal(error) => OpenError::Wal(error),
        ReplayError::Visit(error) => error,
    })?;
    if let Some(tail) = &report.truncated_tail {
        tracing::warn!(file = %tail.file.display(), offset = tail.offset, bytes = tail.bytes_dropped, reason = %tail.reason, "truncated a torn record at the end of the log");
    }
    let snapshot_leases = replayer.snapshot_leases();
    let (admin, boot_epoch, leases) = replayer.finish();
    let (journal, leases) = start_boot(wal, leases, boot_epoch + 1, observer).await?;
    Ok(Opened {
        admin,
        journal,
        leases,
        boot_epoch: boot_epoch + 1,
        snapshot_leases,
        records_replayed: report.records,
        recovery_time: started.elapsed(),
    })
}

/// Makes `boot_epoch` durable before any grant of this boot can carry it, then serves
/// the recovered leases on the log.
async fn start_boot(
    wal: Wal,
    leases: RecoveringLeases,
    boot_epoch: u64,
    observer: Arc<dyn LeaseObserver>,
) -> Result<(Arc<WalJournal>, LeaseTable), OpenError> {
    let wal = Arc::new(wal);
    wal.submit(codec::encode_boot(boot_epoch))?.await?;
    let journal = Arc::new(WalJournal {
        wal,
        replay_records_min: snapshot_records_failpoint()
            .unwrap_or(limits::SNAPSHOT_REPLAY_RECORDS_MIN),
        dropped_lease_ends: AtomicU64::new(0),
    });
    let leases = leases.serve(Serving {
        boot_epoch,
        journal: journal.clone(),
        observer,
    });
    Ok((journal, leases))
}

/// Name of the environment variable that, in `failpoints` builds, replaces
/// `limits::SNAPSHOT_REPLAY_RECORDS_MIN`, so that tests of the real binary take
/// snapshots after a few records.
pub const SNAPSHOT_RECORDS_FAILPOINT_ENV: &str = "SEATBROKER_FAILPOINT_SNAPSHOT_RECORDS";

fn snapshot_records_failpoint() -> Option<u64> {
    if !cfg!(feature = "failpoints") {
        return None;
    }
    let records = std::env::var(SNAPSHOT_RECORDS_FAILPOINT_ENV).ok()?;
    records.trim().parse().ok()
}

/// Rebuilds the admin state and the live leases from what a log hands over: the local
/// log's snapshot and records here, cluster mode's snapshot and records read from etcd
/// (`cluster::recovery`, by a new leader and by a standby following the log), through
/// the same decoding, `AdminState::apply` and lease restore.
pub struct Replayer {
    admin: AdminState,
    leases: RecoveringLeases,
    /// The highest boot epoch seen so far.
    boot_epoch: u64,
    /// Every restored lease lives one TTL from here.
    now: Instant,
    names: SharedNames,
    /// Lease grants and ends are decoded into these, reused.
    scratch: LogScratch,
    snapshot_leases: u64,
}

impl Replayer {
    /// A replay into `leases`, each restored lease live one TTL from `now`.
    pub fn new(leases: RecoveringLeases, now: Instant) -> Self {
        Replayer {
            admin: AdminState::default(),
            leases,
            boot_epoch: 0,
            now,
            names: SharedNames::default(),
            scratch: LogScratch::default(),
            snapshot_leases: 0,
        }
    }

    /// The admin state rebuilt, the highest boot epoch seen (the next boot's is one
    /// more), and the leases.
    pub fn finish(self) -> (AdminState, u64, RecoveringLeases) {
        (self.admin, self.boot_epoch, self.leases)
    }

    /// The leases rebuilt so far.
    pub fn leases(&self) -> &RecoveringLeases {
        &self.leases
    }

    /// Leases the snapshot held.
    pub fn snapshot_leases(&self) -> u64 {
        self.snapshot_leases
    }

    /// Loads a snapshot (`codec`'s encoding, as `write_snapshot` and
    /// [`encode_snapshot`] make it) into an empty replay; `lsn` names it in errors.
    pub fn snapshot(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), OpenError> {
        let refused = |detail: String| OpenError::Replay {
            what: "the snapshot",
            lsn,
            detail,
        };
        let (state, epoch) =
            codec::decode_snapshot_head(payload).map_err(|e| refused(e.to_string()))?;
        self.admin = state;
        self.boot_epoch = checked_boot_epoch(epoch).map_err(|e| refused(e.to_string()))?;
        let (leases, names, now) = (&self.leases, &mut self.names, self.now);
        let mut restored = 0;
        codec::for_each_snapshot_lease(payload, |record| {
            restore(leases, names, record, now)?;
            restored += 1;
            Ok(())
        })
        .map_err(|e| refused(e.to_string()))?;
        self.snapshot_leases = restored;
        Ok(())
    }

    /// Replays one log record (`codec`'s encoding); `lsn` names its place in errors.
    pub fn record(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), OpenError> {
        let refused = |what, detail: String| OpenError::Replay { what, lsn, detail };
        let body = codec::decode_log_record_reusing(payload, &mut self.scratch)
            .map_err(|e| refused("a record", e.to_string()))?;
        let (leases, names, now) = (&self.leases, &mut self.names, self.now);
        match body {
            ReusedLogBody::LeaseGranted => restore(leases, names, &self.scratch.granted, now)
                .map_err(|e| refused("a lease grant", e.to_string())),
            ReusedLogBody::LeaseEnded => forget(leases, names, &self.scratch.ended)
                .map_err(|e| refused("a lease end", e.to_string())),
            ReusedLogBody::Other(body) => self.apply(*body).map_err(|(what, e)| refused(what, e)),
        }
    }

    /// Replays an admin command: the state change, and the sessions it ends.
    fn replay_command(
        &mut self,
        command: Result<Command, codec::DecodeError>,
    ) -> Result<(), (&'static str, String)> {
        let what = "an admin command";
        let command = command.map_err(|e| (what, e.to_string()))?;
        self.admin
            .apply(&command)
            .map_err(|e| (what, e.to_string()))?;
        self.leases.end_sessions_withdrawn_by(&command);
        Ok(())
    }

    /// Replays a record the allocation-free decoder left to the plain one.
    fn apply(&mut self, body: LogBody) -> Result<(), (&'static str, String)> {
        let (leases, names, now) = (&self.leases, &mut self.names, self.now);
        match body {
            LogBody::LeaseGranted(record) => {
                restore(leases, names, &record, now).map_err(|e| ("a lease grant", e.to_string()))
            }
            LogBody::LeaseEnded(record) => {
                forget(leases, names, &record).map_err(|e| ("a lease end", e.to_string()))
            }
            LogBody::Command(record) => self.replay_command(codec::decode_command(&record)),
            LogBody::LegacyAdmin(record) => {
                self.replay_command(codec::legacy::decode_command(&record))
            }
            LogBody::Boot(record) => {
                let epoch = checked_boot_epoch(record.epoch)
                    .map_err(|e| ("a boot record", e.to_string()))?;
                self.boot_epoch = self.boot_epoch.max(epoch);
                Ok(())
            }
        }
    }
}

/// The organization ids and emails of restored leases, one allocation each however
/// many leases name them, as when leases are granted (from the caller's key): a
/// million restored leases would otherwise hold a million copies of a few thousand
/// emails.
///
/// The maps use hashbrown's default (unkeyed) hasher: the text comes from our own
/// log, and a replay hashes every lease's email.
#[derive(Default)]
struct SharedNames {
    /// The organization named last: a snapshot's leases come organization by
    /// organization.
    last_org: Option<OrgId>,
    orgs: HashMap<Box<str>, OrgId>,
    emails: HashMap<Box<str>, Email>,
}

impl SharedNames {
    fn org(&mut self, text: &str) -> Result<OrgId, DecodeError> {
        if let Some(org) = self.last_org.as_ref().filter(|org| org.as_str() == text) {
            return Ok(org.clone());
        }
        let org = match self.orgs.get(text) {
            Some(org) => org.clone(),
            None => {
                let org = codec::org_from(text)?;
                self.orgs.insert(text.into(), org.clone());
                org
            }
        };
        self.last_org = Some(org.clone());
        Ok(org)
    }

    fn email(&mut self, text: &str) -> Result<Email, DecodeError> {
        if let Some(email) = self.emails.get(text) {
            return Ok(email.clone());
        }
        let email = codec::email_from(text)?;
        self.emails.insert(text.into(), email.clone());
        Ok(email)
    }
}

/// Puts back the lease of a grant record or a snapshot, live for one TTL from `now`.
fn restore(
    leases: &RecoveringLeases,
    names: &mut SharedNames,
    record: &LeaseRecord,
    now: Instant,
) -> Result<(), DecodeError> {
    let org = names.org(&record.org)?;
    let email = names.email(&record.email)?;
    let lease = LeaseRef {
        id: codec::lease_id_from(&record.lease_id)?,
        generation: record.generation,
        product: codec::product_from(record.product)?,
        email: &email,
        engine_id: &record.engine_id,
        hostname: &record.hostname,
        label: &record.label,
        deadline: now,
        acquired_at_unix_ms: record.acquired_at_unix_ms,
    };
    leases.restore(&org, lease, now);
    Ok(())
}

/// Removes the lease of an end record, if that generation is live.
fn forget(
    leases: &RecoveringLeases,
    names: &mut SharedNames,
    record: &LeaseEndRecord,
) -> Result<(), DecodeError> {
    let org = names.org(&record.org)?;
    leases.forget(
        &org,
        codec::lease_id_from(&record.lease_id)?,
        record.generation,
    );
    Ok(())
}

/// A logged boot epoch whose next one would not fit in a generation's high bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("boot epoch {epoch} is out of range (below {})", BOOT_EPOCHS - 1)]
pub struct BootEpochOutOfRange {
    pub epoch: u64,
}

/// Boot epochs a generation's high bits hold.
const BOOT_EPOCHS: u64 = 1 << (64 - crate::leases::GENERATION_EPOCH_SHIFT);

/// A logged boot epoch, if the next boot's epoch still fits in a generation's high
/// bits (a larger one can only come from damage that kept its checksum, or forgery).
pub fn checked_boot_epoch(epoch: u64) -> Result<u64, BootEpochOutOfRange> {
    if epoch >= BOOT_EPOCHS - 1 {
        return Err(BootEpochOutOfRange { epoch });
    }
    Ok(epoch)
}

/// Writes a snapshot of the admin state `admin`, cut under the admin write lock at
/// log position `lsn`, and of the leases live now, then installs it (deleting the
/// segments it covers). Blocking: it waits until `lsn` is durable, then encodes
/// every live lease into the file a piece at a time (`SNAPSHOT_PIECE_BYTES`), so run
/// it off the async threads. Returns the snapshot's payload size in bytes and its
/// leases.
///
/// The leases are read after the cut, a few at a time (`LeaseTable::visit_live`), so
/// the snapshot may hold grants logged after `lsn` and miss leases ended after it.
/// Replay makes that exact: the records after `lsn` are replayed over the snapshot,
/// and replaying a grant already held or an end of a lease not held changes nothing.
pub fn write_snapshot(
    wal: &Wal,
    lsn: Lsn,
    admin: &AdminState,
    leases: &LeaseTable,
    boot_epoch: u64,
) -> Result<(usize, u64), WalError> {
    let to_file = |error| WalError::io("writing", Path::new("the snapshot"), error);
    let mut totals = (0, 0);
    wal.install_snapshot_with(lsn, |file: &mut SnapshotWriter| {
        totals = encode_snapshot(admin, leases, boot_epoch, |piece| file.write(piece))
            .map_err(to_file)?;
        Ok::<(), WalError>(())
    })?;
    Ok(totals)
}

/// Encodes a snapshot of `admin` and of the leases live now (see [`write_snapshot`]
/// for why that is exact after replay) and hands it to `write` in pieces of about
/// `SNAPSHOT_PIECE_BYTES`, between holds of the organizations' locks: the local log's
/// snapshot file, or cluster mode's chunks in etcd. Returns the payload's size in
/// bytes and its leases; stops at the first failed write.
pub fn encode_snapshot(
    admin: &AdminState,
    leases: &LeaseTable,
    boot_epoch: u64,
    write: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<(usize, u64)> {
    let mut pieces = SnapshotPieces {
        encoder: SnapshotEncoder::new(admin, boot_epoch),
        write,
        written: 0,
        failed: None,
    };
    leases.visit_live(&mut pieces);
    if let Some(error) = pieces.failed {
        return Err(error);
    }
    pieces.write_pending()?;
    Ok((pieces.written, pieces.encoder.leases()))
}

/// Encodes the leases of a snapshot under each organization's lock, and writes them
/// out only between holds, so no engine's call waits on a write.
struct SnapshotPieces<W> {
    encoder: SnapshotEncoder,
    write: W,
    /// Payload bytes written so far.
    written: usize,
    /// The first write that failed; the rest of the walk does nothing.
    failed: Option<std::io::Error>,
}

impl<W: FnMut(&[u8]) -> std::io::Result<()>> SnapshotPieces<W> {
    fn write_pending(&mut self) -> std::io::Result<()> {
        self.written += self.encoder.pending_bytes();
        self.encoder.drain_into(&mut self.write)
    }
}

impl<W: FnMut(&[u8]) -> std::io::Result<()>> LiveLeaseVisitor for SnapshotPieces<W> {
    fn lease(&mut self, org: &OrgId, lease: LeaseRef<'_>) {
        if self.failed.is_none() {
            self.encoder.push_lease(org, lease);
        }
    }

    fn lock_released(&mut self) {
        if self.failed.is_none() && self.encoder.pending_bytes() >= SNAPSHOT_PIECE_BYTES {
            self.failed = self.write_pending().err();
        }
    }
}

/// A snapshot is written in pieces of about this size (plus at most one lock hold's
/// worth of leases): what it holds in memory whatever the number of leases.
const SNAPSHOT_PIECE_BYTES: usize = 1024 * 1024;

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
