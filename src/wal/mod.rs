//! The write-ahead log: makes the broker's commands durable, in order, before
//! they are acknowledged, and gives them back after a restart.
//!
//! # Files
//!
//! A WAL directory holds three kinds of files, nothing else of ours:
//!
//! - `NNNNNNNNNNNNNNNNNNNN.wal`, a **segment**: 20 decimal digits naming the LSN of
//!   its first record. Records are appended to the newest segment only; once it is
//!   `segment_bytes_max` long, the next commit group starts a new segment.
//! - `snapshot-NNNNNNNNNNNNNNNNNNNN.snap`, a **snapshot** of the broker's state as
//!   of that LSN (opaque bytes given to [`Wal::install_snapshot`]).
//! - `*.tmp`, a file being created. Every new file is written under a temporary
//!   name, fsynced, renamed into place and then the directory is fsynced, so after
//!   a crash a file either exists with its full content or not at all. Recovery
//!   deletes leftover temporaries. `next-segment.wal.tmp` is the next segment,
//!   created (zeros, fsync) and kept open once the active one is half full; rotation
//!   writes its header, fsyncs it and renames it into place.
//!
//! # Segment format
//!
//! A segment starts with a 24-byte header: magic `SBWALSG1`, the first LSN (u64
//! LE), a masked CRC-32C of those 16 bytes (u32 LE) and 4 zero bytes.
//!
//! The file is then read as LevelDB does (`log_format.md`): as a sequence of
//! 32 KiB **blocks** (the header occupies the start of block 0). A record is
//! stored as one or more **fragments**, and a fragment never crosses a block
//! boundary: `FULL` for a record that fits, else `FIRST`, `MIDDLE`..., `LAST`.
//! A block tail of fewer than 7 bytes is filled with zeros and skipped. A fragment
//! is
//!
//! ```text
//! masked crc32c (u32 LE) | length (u16 LE) | type (u8: 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST) | data[length]
//! ```
//!
//! with the CRC-32C computed over type, length and data and masked like LevelDB
//! (`rotate_right(15) + 0xa282ead8`). Why blocks: a length is never half written
//! at a place a reader must trust, since every block begins with a fragment
//! header; damage in one block never hides the records of the next; and a record
//! of any size is framed with 16-bit lengths.
//!
//! The data of a record's fragments, concatenated, is its **body**:
//!
//! ```text
//! lsn (u64 LE) | lsn - group_first_lsn (u32 LE) | group_last_lsn - lsn (u32 LE) | payload
//! ```
//!
//! A segment may end in zeros: the writer keeps up to `preallocate_bytes` of zeros
//! written ahead of its appends (never past `segment_bytes_max`) and overwrites them
//! with later groups, so that most fdatasyncs find the file size unchanged and flush
//! data only. A zero fragment type is never written, so where a record cannot be read
//! and only zeros follow to the end of the file, the segment ends cleanly there, and
//! appends continue at that offset. Zeros followed by anything else are damage (see
//! Recovery).
//!
//! LSNs start at 1 and increase by one, without gaps, across segments: a segment
//! named `N` holds records `N, N+1, ...`, and the next segment starts where it
//! ends. The **commit group** bounds say which records were written by the same
//! append and made durable by the same fdatasync; recovery uses them to tell a
//! torn tail from corruption (below).
//!
//! # Snapshot format
//!
//! Magic `SBSNAPS1`, the LSN (u64 LE), the payload length (u64 LE), the masked
//! CRC-32C of the payload (u32 LE), the masked CRC-32C of the preceding 28 header
//! bytes (u32 LE), then the payload.
//!
//! # Durability contract
//!
//! - [`Wal::submit`] assigns the next LSN and queues the record, without I/O. The
//!   returned [`DurableTicket`] resolves only after that record and every record
//!   before it are on disk: written and `fdatasync`ed.
//! - One writer thread does all log I/O (group commit): it takes everything
//!   queued (at most `batch_records_max` records), encodes it into one buffer,
//!   appends it with one write, calls fdatasync once and then resolves all the
//!   tickets of that group. Records nobody awaits ([`Wal::submit_unawaited`]) do
//!   not start a group by themselves: they ride with the next awaited record, or
//!   go out `unawaited_delay` after they were queued. When the log is busy (an
//!   awaited record arrived during the previous group's write and fdatasync), a
//!   group waits for more: up to `commit_delay` after its oldest record, at most
//!   `COMMIT_GAP` after its newest, never once a batch is full (see
//!   `writer::Queue::group_due`). It writes a group only after the previous group's
//!   fdatasync returned, so at any moment at most one commit group is unsynced.
//! - The writer appends only into zeros it wrote ahead (with `preallocate_bytes`
//!   above 0): room for a group is reserved before the group is written, and the
//!   next segment exists, preallocated and open, before the rotation; the directory
//!   is kept open for its fsyncs. So a full disk (ENOSPC) or a process out of
//!   descriptors (EMFILE) is met by a reservation, never by an append. A failed
//!   reservation raises the [`Alarm`]: [`Wal::admission`] refuses new awaited
//!   records (the broker answers UNAVAILABLE, "disk full"), records nobody awaits are
//!   queued only while they fit in the room left, and the writer retries every
//!   [`ROOM_RETRY_INTERVAL`] and clears the alarm on the first success. A group
//!   admitted before the alarm that does not fit waits, unacknowledged, for that
//!   retry; at close it is abandoned (its tickets fail).
//! - A failed write or fdatasync aborts the process (see `fatal.rs`): never
//!   retried, never acknowledged. With the `failpoints` feature,
//!   `SEATBROKER_FAILPOINT=wal-fsync-fail-after:N` makes the fdatasync after the
//!   first `N` fail.
//! - [`Wal::install_snapshot`] first waits until the snapshot's LSN is durable, so
//!   a snapshot never gets ahead of the log; it writes the snapshot file durably,
//!   then deletes the segments whose records are all covered by it (never the
//!   active one) and older snapshots.
//!
//! # Recovery
//!
//! [`Wal::open`] picks the newest snapshot whose checksums hold. If a newer one is
//! invalid, the older one is used only if the segments still reach back to the
//! record after it; otherwise open refuses. Then it replays the segments from the
//! one holding the record after the snapshot, checking that LSNs continue without
//! gaps across segments and after the snapshot.
//!
//! Damage found in a segment that is not the last one is corruption: that
//! segment was fully synced before the next was created, and trimmed to its
//! records, so there even zeros after the records are damage. In the last segment,
//! damage at offset `X` is a **torn tail**, truncated (logged, reported in
//! [`Recovered::truncated_tail`] and cut from the file so appends follow valid
//! data), when either nothing valid follows `X`, or everything valid after `X`
//! belongs to the commit group the damage is in and the damage holds a zeroed
//! sector (a write that never reached the disk, as in etcd's torn-entry check,
//! rather than a flipped bit). Since the writer syncs a group before writing the
//! next, such records were never acknowledged. Anything else, for example a
//! flipped bit followed by valid records, or valid records of a later group, is
//! corruption: open returns [`WalError::Corrupt`] naming the file and offset and
//! how to proceed. Nothing acknowledged is ever dropped, and nothing but zeros
//! is dropped without a report: a commit group of which no byte reached the disk
//! leaves the preallocated zeros as they were and reads as the end.
//!
//! The active segment is fdatasynced when the log opens, before anything new is
//! acknowledged: records replayed from the page cache of a killed process would
//! otherwise rest on a later fsync of that segment, which rotation may skip.
//!
//! Known limit: payloads are opaque, so a payload that itself contains a
//! well-formed fragment (with a valid CRC) could be mistaken for a record while
//! searching past damage; the outcome is a refusal to open, never silent loss.

mod error;
mod fatal;
mod format;
pub mod fs;
pub mod metrics;
mod reader;
mod recovery;
mod snapshot;
mod writer;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

pub use error::{Alarm, WalError};
pub use fatal::FAILPOINT_ENV;
#[cfg(feature = "failpoints")]
pub use fatal::set_abort_hook;
pub use format::{BLOCK_BYTES, RECORD_BYTES_LIMIT};
pub use fs::{FileSystem, RealFs, SimulatedDisk, WalDir, WalFile, bench_raw_fsync_rate};
pub use recovery::{Recovered, RecoveryReport, ReplayError, Replayed, TailTruncation};
pub use snapshot::SnapshotWriter;

use fatal::FsyncFailpoint;
use recovery::RecoveryOutcome;
use writer::{Counters, Pending, Queue, SegmentWriter, Shared, segment_bytes_max_of};

/// Log sequence number: 1-based, strictly increasing, never reused.
pub type Lsn = u64;

/// Default `WalOptions::preallocate_bytes`: 1 MiB, flushed in about 1 ms here, once
/// per MiB of log.
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Upper bound of `WalOptions::preallocate_bytes`.
pub const PREALLOCATE_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Default `WalOptions::segment_bytes_max`: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default `WalOptions::snapshot_log_bytes`: 256 MiB.
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default `WalOptions::batch_records_max`.
pub const BATCH_RECORDS_MAX_DEFAULT: usize = 1024;
/// Default `WalOptions::queue_records_max`.
pub const QUEUE_RECORDS_MAX_DEFAULT: usize = 65_536;
/// Default `WalOptions::record_bytes_max`: 2 MiB (the broker's largest request is 1 MiB).
pub const RECORD_BYTES_MAX_DEFAULT: usize = 2 * 1024 * 1024;
/// Default `WalOptions::unawaited_delay`: a lease end reaches the disk within 20 ms
/// even when no grant carries it sooner.
pub const UNAWAITED_DELAY_DEFAULT: Duration = Duration::from_millis(20);
/// Upper bound of `WalOptions::unawaited_delay`.
pub const UNAWAITED_DELAY_LIMIT: Duration = Duration::from_secs(60);
/// Default `WalOptions::commit_delay`: 0.5 ms, waited only by a busy log and only
/// while records keep arriving (see the README's "Tuning the log").
pub const COMMIT_DELAY_DEFAULT: Duration = Duration::from_micros(500);
/// Upper bound of `WalOptions::commit_delay`.
pub const COMMIT_DELAY_LIMIT: Duration = Duration::from_millis(10);
/// Hard bound on `batch_records_max`: the commit-group bounds are stored as u32 deltas.
pub const BATCH_RECORDS_LIMIT: usize = 1 << 20;
/// Hard lower bound on `segment_bytes_max` (small segments are for tests).
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// How often the writer retries a failed reservation of room ahead of its appends
/// (zeros in the active segment, the next segment created ahead of time), and how
/// long a commit group that found no room waits between tries. While one fails,
/// [`Wal::admission`] refuses awaited records; the first success resumes them.
pub const ROOM_RETRY_INTERVAL: Duration = Duration::from_secs(1);

const _: () = assert!(BATCH_RECORDS_LIMIT <= u32::MAX as usize);
const _: () = assert!(BATCH_RECORDS_MAX_DEFAULT <= QUEUE_RECORDS_MAX_DEFAULT);
const _: () = assert!(RECORD_BYTES_MAX_DEFAULT <= RECORD_BYTES_LIMIT);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX_DEFAULT);

/// The WAL's bounds. Every one is checked by `Wal::open`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment at least this long (bytes) gets no more commit groups; the next one
    /// starts a new segment. A group is never split, so a segment can exceed it by
    /// one group.
    pub segment_bytes_max: u64,
    /// Once the records appended since the last snapshot pass this many bytes,
    /// `snapshot_due` returns true.
    pub snapshot_log_bytes: u64,
    /// Records per commit group (one write, one fdatasync) at most.
    pub batch_records_max: usize,
    /// Records submitted but not yet durable at most; `submit` past it returns
    /// `WalError::Overloaded`.
    pub queue_records_max: usize,
    /// Payload bytes per record at most; a bigger record gets `WalError::RecordTooLarge`.
    pub record_bytes_max: usize,
    /// Zeros the writer keeps written ahead of its appends in the active segment
    /// (0: none). See `SegmentWriter::preallocate_ahead`.
    pub preallocate_bytes: u64,
    /// Records nobody waits for ([`Wal::submit_unawaited`]) do not start a commit
    /// group of their own: they go out with the next awaited record, with a full
    /// batch, at close, or at the latest this long after they were queued. Saves an
    /// fdatasync per lone lease end, and the grant queued behind it the wait.
    pub unawaited_delay: Duration,
    /// How long the commit group of a busy log may wait for more records after its
    /// oldest (0: not at all; default 0.5 ms), as MySQL's
    /// `binlog_group_commit_sync_delay`; it goes sooner when a batch fills or when
    /// no record came for 50 us (`writer::COMMIT_GAP`). The log is busy when an
    /// awaited record arrived while the previous group was written and synced
    /// (PostgreSQL's `commit_siblings` asks the same of concurrent transactions); a
    /// record reaching an idle log goes out at once. Under load each awaited record
    /// may answer up to this much later, and the log makes fewer, bigger fdatasyncs,
    /// whose CPU and interrupts are what a small machine runs short of first.
    pub commit_delay: Duration,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            snapshot_log_bytes: SNAPSHOT_LOG_BYTES_DEFAULT,
            batch_records_max: BATCH_RECORDS_MAX_DEFAULT,
            queue_records_max: QUEUE_RECORDS_MAX_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
            unawaited_delay: UNAWAITED_DELAY_DEFAULT,
            commit_delay: COMMIT_DELAY_DEFAULT,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        let problem = if self.segment_bytes_max < SEGMENT_BYTES_MIN {
            format!("segment_bytes_max must be at least {SEGMENT_BYTES_MIN}")
        } else if self.snapshot_log_bytes == 0 {
            "snapshot_log_bytes must be positive".to_string()
        } else if !(1..=BATCH_RECORDS_LIMIT).contains(&self.batch_records_max) {
            format!("batch_records_max must be in 1..={BATCH_RECORDS_LIMIT}")
        } else if self.queue_records_max == 0 {
            "queue_records_max must be positive".to_string()
        } else if !(1..=RECORD_BYTES_LIMIT).contains(&self.record_bytes_max) {
            format!("record_bytes_max must be in 1..={RECORD_BYTES_LIMIT}")
        } else if self.preallocate_bytes > PREALLOCATE_BYTES_LIMIT {
            format!("preallocate_bytes must be at most {PREALLOCATE_BYTES_LIMIT}")
        } else if self.unawaited_delay > UNAWAITED_DELAY_LIMIT {
            format!("unawaited_delay must be at most {UNAWAITED_DELAY_LIMIT:?}")
        } else if self.commit_delay > COMMIT_DELAY_LIMIT {
            format!("commit_delay must be at most {COMMIT_DELAY_LIMIT:?}")
        } else {
            return Ok(());
        };
        Err(WalError::InvalidOptions(problem))
    }
}

/// A snapshot of the WAL's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable since open.
    pub records_durable: u64,
    /// Bytes appended to segments since open, framing included.
    pub bytes_written: u64,
    /// Commit-group fdatasyncs since open (one per commit group; file creation
    /// and directory syncs are not counted).
    pub fsyncs: u64,
    /// Records in the most recent commit group.
    pub last_group_records: u64,
    /// Segments started by rotation since open.
    pub rotations: u64,
    /// Every record up to this LSN is durable.
    pub durable_lsn: Lsn,
    /// The LSN of the most recently submitted record (0 when none ever).
    pub last_assigned_lsn: Lsn,
    /// Records submitted but not yet durable.
    pub pending_records: u64,
    /// Approximate bytes of log since the installed snapshot.
    pub log_bytes_since_snapshot: u64,
    /// Records written since the installed snapshot (approximate: those written while
    /// it was being installed are not counted), so what a restart would replay.
    pub records_since_snapshot: u64,
    /// LSN of the installed snapshot, 0 when none.
    pub snapshot_lsn: Lsn,
    /// Segment files on disk.
    pub segments: usize,
}

/// The write-ahead log. `Send + Sync`; share it as `Arc<Wal>`.
#[derive(Debug)]
pub struct Wal {
    /// State shared with the writer thread.
    shared: Arc<Shared>,
    /// The writer, until `close` takes it.
    writer: Mutex<WriterSlot>,
    /// Serializes `install_snapshot` calls.
    snapshot_lock: Mutex<()>,
}

/// Who runs the writer.
enum WriterSlot {
    /// The writer thread.
    Thread(JoinHandle<()>),
    /// Tests drive the writer step by step (`manual_write`, `manual_sync`).
    #[cfg(test)]
    Manual {
        /// The writer, run on the test's thread.
        writer: Box<SegmentWriter>,
        /// The group written but not yet synced.
        written: Vec<Pending>,
    },
    /// Closed.
    Stopped,
}

impl std::fmt::Debug for WriterSlot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            WriterSlot::Thread(_) => "Thread",
            #[cfg(test)]
            WriterSlot::Manual { .. } => "Manual",
            WriterSlot::Stopped => "Stopped",
        };
        formatter.write_str(name)
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovers it and starts the
    /// writer thread, returning everything recovered at once (tests and tools).
    pub fn open(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        options: WalOptions,
    ) -> Result<(Wal, Recovered), WalError> {
        let mut recovered = None;
        let opened = Self::open_with(dir, fs, options, |dir, fs| {
            let (outcome, collected) = recovery::recover_collected(dir, fs)?;
            recovered = Some(collected);
            Ok::<_, ReplayError<std::convert::Infallible>>(outcome)
        });
        match opened {
            Ok(wal) => Ok((wal, recovered.expect("recovery ran"))),
            Err(ReplayError::Wal(error)) => Err(error),
            Err(ReplayError::Visit(never)) => match never {},
        }
    }

    /// Opens the log as [`Wal::open`] does, handing the snapshot and each record
    /// after it to `visit` as they are read ([`Replayed`]), so a replay holds one
    /// segment file in memory at a time and no copy of any record. An error from
    /// `visit` stops the open.
    pub fn open_replaying<E>(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        options: WalOptions,
        mut visit: impl FnMut(Replayed<'_>) -> Result<(), E>,
    ) -> Result<(Wal, RecoveryReport), ReplayError<E>> {
        let mut report = None;
        let wal = Self::open_with(dir, fs, options, |dir, fs| {
            let outcome = recovery::recover(dir, fs, &mut visit)?;
            report = Some(outcome.report.clone());
            Ok(outcome)
        })?;
        Ok((wal, report.expect("recovery ran")))
    }

    /// Recovers with `recover`, then builds the log and starts its writer thread.
    /// Reads `SEATBROKER_FAILPOINT` in `failpoints` builds.
    fn open_with<E>(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        options: WalOptions,
        recover: impl FnOnce(&Path, &dyn FileSystem) -> Result<RecoveryOutcome, ReplayError<E>>,
    ) -> Result<Wal, ReplayError<E>> {
        let options = fatal::segment_bytes_failpoint(options);
        let fs = fatal::disk_full_failpoint(fs);
        options.validate()?;
        let outcome = recover(dir, fs.as_ref())?;
        let (wal, writer) = Self::build(dir, fs, options, outcome, FsyncFailpoint::from_env())?;
        let thread = std::thread::Builder::new()
            .name("wal-writer".to_string())
            .spawn(move || writer::run(writer))
            .map_err(|error| WalError::io("spawning the writer thread for", dir, error))?;
        *wal.writer.lock() = WriterSlot::Thread(thread);
        Ok(wal)
    }

    /// Builds everything but the writer thread from what recovery found.
    fn build(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        options: WalOptions,
        outcome: RecoveryOutcome,
        failpoint: FsyncFailpoint,
    ) -> Result<(Wal, SegmentWriter), WalError> {
        let counters = Counters::default();
        counters
            .snapshot_lsn
            .store(outcome.snapshot_lsn, Ordering::Relaxed);
        counters
            .log_bytes_since_snapshot
            .store(outcome.log_bytes_since_snapshot, Ordering::Relaxed);
        counters
            .records_since_snapshot
            .store(outcome.report.records, Ordering::Relaxed);
        let queue = Queue::new(outcome.next_lsn);
        let dir_handle = fs
            .open_dir(dir)
            .map_err(|error| WalError::io("opening", dir, error))?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fs,
            options,
            queue: Mutex::new(queue),
            work_ready: Condvar::new(),
            durable_advanced: Condvar::new(),
            segments: Mutex::new(outcome.segments),
            counters,
            dir_handle,
            room_bytes: AtomicU64::new(0),
        });
        let writer = SegmentWriter::open(Arc::clone(&shared), &outcome.active, failpoint)?;
        let wal = Wal {
            shared,
            writer: Mutex::new(WriterSlot::Stopped),
            snapshot_lock: Mutex::new(()),
        };
        Ok((wal, writer))
    }

    /// Assigns the next LSN and queues `record`, without blocking or I/O (safe
    /// under the caller's lock). The ticket resolves once the record and all
    /// before it are durable.
    pub fn submit(&self, record: Vec<u8>) -> Result<DurableTicket, WalError> {
        self.submit_within(record, self.shared.options.queue_records_max)
    }

    /// Like [`Wal::submit`], but refuses with `Overloaded` once `queue_records_max`
    /// records are pending, a bound below the log's own: records nobody waits for use
    /// it to leave room for those somebody does.
    pub fn submit_within(
        &self,
        record: Vec<u8>,
        queue_records_max: usize,
    ) -> Result<DurableTicket, WalError> {
        let (done, receiver) = oneshot::channel();
        let lsn = self.enqueue(record, queue_records_max, Some(done))?;
        Ok(DurableTicket { lsn, receiver })
    }

    /// Queues a record nobody waits for, within `queue_records_max` like
    /// [`Wal::submit_within`]; returns its LSN. It is written with the next awaited
    /// record's commit group, or within `WalOptions::unawaited_delay` (see there),
    /// always in LSN order. Saves the ticket's channel on a path that would drop it.
    pub fn submit_unawaited(
        &self,
        record: Vec<u8>,
        queue_records_max: usize,
    ) -> Result<Lsn, WalError> {
        self.enqueue(record, queue_records_max, None)
    }

    fn enqueue(
        &self,
        record: Vec<u8>,
        queue_records_max: usize,
        done: Option<oneshot::Sender<()>>,
    ) -> Result<Lsn, WalError> {
        let record_bytes_max = self.shared.options.record_bytes_max;
        if record.len() > record_bytes_max {
            return Err(WalError::RecordTooLarge {
                record_bytes: record.len(),
                record_bytes_max,
            });
        }
        let queued_at = std::time::Instant::now();
        let (lsn, worth_a_group) = {
            let mut queue = self.shared.queue.lock();
            if queue.closing {
                return Err(WalError::Closed);
            }
            if !queue.writer_running {
                return Err(WalError::WriterStopped);
            }
            let pending_records = queue.next_lsn - 1 - queue.durable_lsn;
            let queue_records_max = queue_records_max.min(self.shared.options.queue_records_max);
            if pending_records >= queue_records_max as u64 {
                return Err(WalError::Overloaded {
                    pending_records,
                    queue_records_max,
                });
            }
            // Under the alarm, a record nobody awaits is queued only while the room
            // left ahead of the appends holds it and everything queued before it.
            if done.is_none()
                && let Some(alarm) = &queue.alarm
            {
                let room = self.shared.room_bytes.load(Ordering::Relaxed);
                if queue.pending_bytes + segment_bytes_max_of(&record) > room {
                    return Err(WalError::Alarm(alarm.clone()));
                }
            }
            let lsn = queue.next_lsn;
            queue.next_lsn += 1;
            let awaited = done.is_some();
            queue.push(Pending { lsn, record, done }, queued_at);
            // The writer is told of what moves its deadline: the first record of an
            // empty queue (it may be waiting without one), an awaited record (each
            // without a commit delay, else the first), and a full batch.
            let options = &self.shared.options;
            let moves_deadline = queue.pending.len() == 1
                || (awaited && (options.commit_delay.is_zero() || queue.awaited == 1));
            let worth_a_group = moves_deadline || queue.pending.len() == options.batch_records_max;
            (lsn, worth_a_group)
        };
        if worth_a_group {
            self.shared.work_ready.notify_one();
        }
        Ok(lsn)
    }

    /// Installs a snapshot of the state as of `lsn` (the caller guarantees `bytes`
    /// reflect exactly records `1..=lsn`). Blocks: waits until `lsn` is durable,
    /// writes the snapshot file durably, then deletes the segments wholly covered
    /// by it and older snapshots. Call it from a blocking context
    /// (`tokio::task::spawn_blocking`), never from the writer's own callbacks.
    pub fn install_snapshot(&self, lsn: Lsn, bytes: &[u8]) -> Result<(), WalError> {
        self.install_snapshot_with(lsn, |writer: &mut SnapshotWriter| {
            writer
                .write(bytes)
                .map_err(|error| WalError::io("writing", &self.shared.dir, error))
        })
    }

    /// Installs a snapshot as [`Wal::install_snapshot`] does, its payload written
    /// piece by piece by `write_payload` (called once `lsn` is durable), so that it
    /// is never held in memory whole. An error from `write_payload` abandons the
    /// snapshot (its temporary file is removed) and is returned.
    pub fn install_snapshot_with<E: From<WalError>>(
        &self,
        lsn: Lsn,
        write_payload: impl FnOnce(&mut SnapshotWriter) -> Result<(), E>,
    ) -> Result<(), E> {
        let _one_at_a_time = self.snapshot_lock.lock();
        let refuse = |reason: String| Err(WalError::SnapshotRefused { lsn, reason }.into());
        let installed = self.shared.counters.snapshot_lsn.load(Ordering::Acquire);
        if lsn == 0 {
            return refuse("lsn 0 is before the first record".to_string());
        }
        if lsn < installed {
            return refuse(format!("a newer snapshot (lsn {installed}) is installed"));
        }
        self.wait_durable(lsn)?;
        snapshot::write_snapshot(&self.shared, lsn, write_payload)?;
        Ok(snapshot::remove_covered(&self.shared, lsn)?)
    }

    /// Blocks until every record up to `lsn` is durable.
    fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut queue = self.shared.queue.lock();
        if lsn >= queue.next_lsn {
            let reason = format!(
                "lsn {lsn} has not been assigned (next is {})",
                queue.next_lsn
            );
            return Err(WalError::SnapshotRefused { lsn, reason });
        }
        while queue.durable_lsn < lsn {
            if !queue.writer_running {
                return Err(WalError::WriterStopped);
            }
            self.shared.durable_advanced.wait(&mut queue);
        }
        Ok(())
    }

    /// True once the log since the last snapshot is longer than `snapshot_log_bytes`.
    pub fn snapshot_due(&self) -> bool {
        let since = self
            .shared
            .counters
            .log_bytes_since_snapshot
            .load(Ordering::Relaxed);
        since >= self.shared.options.snapshot_log_bytes
    }

    /// Stops accepting records, lets the writer make everything queued durable,
    /// and joins it. Idempotent. `Err(WriterStopped)` if the writer had panicked.
    pub fn close(&self) -> Result<(), WalError> {
        self.shared.queue.lock().closing = true;
        self.shared.work_ready.notify_all();
        let slot = std::mem::replace(&mut *self.writer.lock(), WriterSlot::Stopped);
        match slot {
            WriterSlot::Thread(thread) => thread.join().map_err(|_| WalError::WriterStopped),
            #[cfg(test)]
            WriterSlot::Manual { writer, written } => {
                // A test's simulated crash: nothing more is written or synced.
                drop((writer, written));
                Ok(())
            }
            WriterSlot::Stopped => Ok(()),
        }
    }

    /// Records submitted but not yet durable; `Err(Closed)` once the log is closing.
    /// One short lock, cheap enough for every admitted call.
    pub fn pending_records(&self) -> Result<u64, WalError> {
        let queue = self.shared.queue.lock();
        if queue.closing {
            return Err(WalError::Closed);
        }
        Ok(queue.next_lsn - 1 - queue.durable_lsn)
    }

    /// Whether a new awaited record may be admitted: the records submitted but not yet
    /// durable, `Err(Closed)` once the log is closing, `Err(Alarm)` while the writer
    /// cannot reserve room ahead of its appends (see [`Alarm`]). One short lock.
    /// [`Wal::submit`] itself never refuses for the alarm: what a caller admitted
    /// before it was raised must still be logged, since it is applied in memory.
    pub fn admission(&self) -> Result<u64, WalError> {
        let queue = self.shared.queue.lock();
        if queue.closing {
            return Err(WalError::Closed);
        }
        if let Some(alarm) = &queue.alarm {
            return Err(WalError::Alarm(alarm.clone()));
        }
        Ok(queue.next_lsn - 1 - queue.durable_lsn)
    }

    /// The alarm, while the log cannot reserve room for new records.
    pub fn alarm(&self) -> Option<Alarm> {
        self.shared.queue.lock().alarm.clone()
    }

    /// The current counters.
    pub fn stats(&self) -> WalStats {
        let counters = &self.shared.counters;
        let (durable_lsn, next_lsn) = {
            let queue = self.shared.queue.lock();
            (queue.durable_lsn, queue.next_lsn)
        };
        WalStats {
            records_durable: counters.records_durable.load(Ordering::Relaxed),
            bytes_written: counters.bytes_written.load(Ordering::Relaxed),
            fsyncs: counters.fsyncs.load(Ordering::Relaxed),
            last_group_records: counters.last_group_records.load(Ordering::Relaxed),
            rotations: counters.rotations.load(Ordering::Relaxed),
            durable_lsn,
            last_assigned_lsn: next_lsn - 1,
            pending_records: next_lsn - 1 - durable_lsn,
            log_bytes_since_snapshot: counters.log_bytes_since_snapshot.load(Ordering::Relaxed),
            records_since_snapshot: counters.records_since_snapshot.load(Ordering::Relaxed),
            snapshot_lsn: counters.snapshot_lsn.load(Ordering::Relaxed),
            segments: self.shared.segments.lock().len(),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!(%error, "WAL writer had stopped abnormally");
        }
    }
}

/// Test-only: a WAL whose writer is driven step by step, so a test decides exactly
/// what is written and synced before a simulated crash.
#[cfg(test)]
impl Wal {
    pub(crate) fn open_manual(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        options: WalOptions,
        failpoint: FsyncFailpoint,
    ) -> Result<(Wal, Recovered), WalError> {
        let (wal, recovered, writer) = Self::open_parts(dir, fs, options, failpoint)?;
        *wal.writer.lock() = WriterSlot::Manual {
            writer: Box::new(writer),
            written: Vec::new(),
        };
        Ok((wal, recovered))
    }

    /// Recovers and builds everything but the writer thread, which the test runs.
    pub(crate) fn open_parts(
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        options: WalOptions,
        failpoint: FsyncFailpoint,
    ) -> Result<(Wal, Recovered, SegmentWriter), WalError> {
        options.validate()?;
        let (outcome, recovered) = recovery::recover_collected(dir, fs.as_ref())?;
        let (wal, writer) = Self::build(dir, fs, options, outcome, failpoint)?;
        Ok((wal, recovered, writer))
    }

    /// Writes (without syncing) up to `records_max` queued records as one group.
    /// Does nothing if a written group awaits its sync or nothing is queued.
    pub(crate) fn manual_write(&self, records_max: usize) {
        let mut slot = self.writer.lock();
        let WriterSlot::Manual { writer, written } = &mut *slot else {
            panic!("not a manual WAL")
        };
        if !written.is_empty() {
            return;
        }
        *written = writer::take_group_now(&self.shared, records_max);
        if !written.is_empty()
            && let Err(alarm) = writer.write_group(written)
        {
            panic!("no room for a manual group: {alarm}");
        }
    }

    /// Syncs the written group and resolves its tickets.
    pub(crate) fn manual_sync(&self) {
        let mut slot = self.writer.lock();
        let WriterSlot::Manual { writer, written } = &mut *slot else {
            panic!("not a manual WAL")
        };
        if written.is_empty() {
            return;
        }
        writer.sync();
        writer::publish_durable(&self.shared, std::mem::take(written));
    }
}

/// Resolves to the record's LSN once it (and every record before it) is durable.
#[derive(Debug)]
pub struct DurableTicket {
    /// The record's LSN, known at submit time.
    lsn: Lsn,
    /// Fired by the writer after the fdatasync covering the record.
    receiver: oneshot::Receiver<()>,
}

impl DurableTicket {
    /// The LSN assigned to the record.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Blocks the calling thread until the record is durable. Panics if called
    /// from inside an async runtime (use `.await` there).
    pub fn wait_blocking(self) -> Result<Lsn, WalError> {
        self.receiver
            .blocking_recv()
            .map(|()| self.lsn)
            .map_err(|_| WalError::WriterStopped)
    }

    /// Without waiting: `Some(Ok(lsn))` once durable, `Some(Err)` if the writer
    /// stopped first, `None` while pending. Stop polling after the first `Some`:
    /// the signal is consumed, and a later call reports `WriterStopped`.
    pub fn try_durable(&mut self) -> Option<Result<Lsn, WalError>> {
        match self.receiver.try_recv() {
            Ok(()) => Some(Ok(self.lsn)),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(WalError::WriterStopped)),
        }
    }
}

impl Future for DurableTicket {
    type Output = Result<Lsn, WalError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let lsn = self.lsn;
        Pin::new(&mut self.receiver)
            .poll(context)
            .map(|result| result.map(|()| lsn).map_err(|_| WalError::WriterStopped))
    }
}
