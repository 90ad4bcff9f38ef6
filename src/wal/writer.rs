//! The single writer: the queue submitters push to, the commit-group loop of the
//! writer thread (take everything queued up to `batch_records_max`, one append,
//! one fdatasync, then resolve every ticket of the group), segment rotation, and
//! the creation of new files (temporary, write, fsync, rename, fsync directory).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::error::{Alarm, WalError};
use super::fatal::{FsyncFailpoint, fatal_io};
use super::format::{self, BLOCK_BYTES, RecordPrefix};
use super::fs::{self, FileSystem, WalDir, WalFile};
use super::recovery::{ActiveSegment, framed_bytes};
use super::{Lsn, WalOptions};

/// State shared by the `Wal` handle, the writer and snapshot installation.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The WAL directory.
    pub dir: PathBuf,
    /// Where the files live.
    pub fs: Arc<dyn FileSystem>,
    /// The bounds, validated at open.
    pub options: WalOptions,
    /// Submitted records and LSN bookkeeping. A parking_lot mutex held only for
    /// queue operations, never across I/O, so `submit` never blocks on the disk.
    pub queue: Mutex<Queue>,
    /// Wakes the writer when records are queued or the WAL closes.
    pub work_ready: Condvar,
    /// Wakes `install_snapshot` when `durable_lsn` advances or the writer stops.
    pub durable_advanced: Condvar,
    /// First LSNs of the segment files, ascending; the last one is being appended to.
    pub segments: Mutex<Vec<Lsn>>,
    /// Counters for `Wal::stats`.
    pub counters: Counters,
    /// The WAL directory, kept open from `Wal::open` on, so that syncing it after a
    /// rotation or a snapshot never needs a descriptor the process may not have.
    pub dir_handle: Box<dyn WalDir>,
    /// Zeros left ahead of the appends in the active segment (published by the
    /// writer): under the alarm, records nobody awaits are queued only while they fit.
    pub room_bytes: AtomicU64,
}

/// The submit queue, guarded by `Shared::queue`.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Records waiting for the writer, in LSN order.
    pub pending: VecDeque<Pending>,
    /// How many of `pending` somebody awaits (`Pending::done` is set).
    pub awaited: usize,
    /// When the oldest record of `pending` was queued, or earlier; `None` when
    /// `pending` is empty. Bounds how long unawaited records wait.
    pub oldest_queued_at: Option<Instant>,
    /// When the newest record of `pending` (awaited or not: a lease end is a sign of
    /// a busy broker too) was queued; `None` when it is empty.
    pub newest_queued_at: Option<Instant>,
    /// An awaited record arrived while the last group was written and synced: the
    /// log is busy, and the next group may wait `commit_delay` for company. At an
    /// idle log a record goes out at once.
    pub busy: bool,
    /// The LSN the next submitted record gets.
    pub next_lsn: Lsn,
    /// Every record up to this LSN is durable.
    pub durable_lsn: Lsn,
    /// Set by `close`: no new records; the writer drains and exits.
    pub closing: bool,
    /// Cleared when the writer exits (normally or by panic).
    pub writer_running: bool,
    /// Set by the writer while it cannot reserve room ahead of the appends: new
    /// awaited records are not admitted (`Wal::admission`).
    pub alarm: Option<Alarm>,
    /// Bytes the queued records take in a segment at most (framing included).
    pub pending_bytes: u64,
}

impl Queue {
    /// An empty queue whose next record gets `next_lsn`, everything before it durable.
    pub fn new(next_lsn: Lsn) -> Self {
        Queue {
            pending: VecDeque::new(),
            next_lsn,
            durable_lsn: next_lsn - 1,
            awaited: 0,
            oldest_queued_at: None,
            newest_queued_at: None,
            busy: false,
            closing: false,
            writer_running: true,
            alarm: None,
            pending_bytes: 0,
        }
    }

    /// Queues a record (the caller assigned its LSN). `now` is read by the caller
    /// before it takes the lock, which every submitter shares.
    pub fn push(&mut self, pending: Pending, now: Instant) {
        if self.pending.is_empty() {
            self.oldest_queued_at = Some(now);
        }
        self.newest_queued_at = Some(now);
        self.pending_bytes += segment_bytes_max_of(&pending.record);
        self.awaited += usize::from(pending.done.is_some());
        self.pending.push_back(pending);
    }

    /// When the next group is due, `None` while nothing is queued: at once for a full
    /// batch or a closing log; when a record is awaited, at once at an idle log, and
    /// at a busy one `commit_delay` after the oldest record or `COMMIT_GAP` after the
    /// newest, whichever comes first (records stopped coming: waiting longer gains
    /// nothing); `unawaited_delay` after the oldest when none is awaited.
    pub fn group_due(&self, options: &WalOptions) -> Option<Instant> {
        let oldest_queued_at = self.oldest_queued_at?;
        if self.closing || self.pending.len() >= options.batch_records_max {
            return Some(oldest_queued_at);
        }
        Some(match (self.awaited > 0, self.busy) {
            (true, true) => {
                let newest_queued_at = self.newest_queued_at.unwrap_or(oldest_queued_at);
                (oldest_queued_at + options.commit_delay)
                    .min(newest_queued_at + COMMIT_GAP.min(options.commit_delay))
            }
            (true, false) => oldest_queued_at,
            (false, _) => oldest_queued_at + options.unawaited_delay,
        })
    }

    /// Takes up to `count` records from the front.
    pub(crate) fn take(&mut self, count: usize) -> Vec<Pending> {
        let count = count.min(self.pending.len());
        let group: Vec<Pending> = self.pending.drain(..count).collect();
        self.awaited -= group.iter().filter(|p| p.done.is_some()).count();
        self.pending_bytes -= group
            .iter()
            .map(|p| segment_bytes_max_of(&p.record))
            .sum::<u64>();
        if self.pending.is_empty() {
            self.oldest_queued_at = None;
            self.newest_queued_at = None;
        }
        // Otherwise the old instant stays: it is no later than the new front's, so the
        // rest of a cut batch goes out at once rather than late (under overload the
        // queue never empties and groups simply stay full).
        group
    }
}

/// The most bytes `record` can take in a segment: its framed size, one more
/// fragment header per block it may cross, and a skipped block tail.
pub(crate) fn segment_bytes_max_of(record: &[u8]) -> u64 {
    let fragments = (record.len() / BLOCK_BYTES + 2) as u64;
    framed_bytes(record) + fragments * format::FRAGMENT_HEADER_BYTES as u64
}

/// A busy log's group waits no longer than this after its newest record: a pause in
/// arrivals means the callers are all waiting in the group already (a closed loop of
/// a few), where more delay is dead time.
pub(crate) const COMMIT_GAP: Duration = Duration::from_micros(50);

/// A record waiting to be written.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its payload.
    pub record: Vec<u8>,
    /// Resolves its `DurableTicket` once the record is durable; `None` when nobody
    /// waits (`Wal::submit_unawaited`).
    pub done: Option<oneshot::Sender<()>>,
}

/// Monotonic counters, updated by the writer and read by `stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Records made durable since open.
    pub records_durable: AtomicU64,
    /// Bytes appended to segments since open (framing included).
    pub bytes_written: AtomicU64,
    /// Commit-group fdatasyncs since open.
    pub fsyncs: AtomicU64,
    /// Records in the most recent commit group.
    pub last_group_records: AtomicU64,
    /// Segments created by rotation since open.
    pub rotations: AtomicU64,
    /// Approximate framed bytes of the records after the installed snapshot.
    pub log_bytes_since_snapshot: AtomicU64,
    /// Records written after the installed snapshot (approximately).
    pub records_since_snapshot: AtomicU64,
    /// LSN of the installed snapshot, 0 when none.
    pub snapshot_lsn: AtomicU64,
}

/// Appends commit groups to the active segment. Owned by the writer thread.
///
/// It never appends past the zeros it wrote ahead (when `preallocate_bytes` is not 0):
/// room for a group is reserved before the group is written, and the next segment is
/// created, preallocated and kept open before it is needed, so neither a full disk
/// nor a process out of descriptors can make an append fail. When a reservation
/// fails, the writer raises the [`Alarm`] (new awaited records are no longer
/// admitted) and retries every `RESERVE_RETRY_INTERVAL`; a group that does not fit
/// in the room left waits, unacknowledged, for the retry to succeed.
pub(crate) struct SegmentWriter {
    /// Shared state.
    shared: Arc<Shared>,
    /// The active segment, open for appending.
    file: Box<dyn WalFile>,
    /// Its path, for error messages.
    path: PathBuf,
    /// Its length in bytes, which is where the next append lands.
    length: u64,
    /// Its size on disk: `length` plus the zeros written ahead of it.
    allocated: u64,
    /// A failed extension may have left zeros past `allocated`: trim at rotation
    /// (belt and braces: the targets of extensions only grow, so a later success or
    /// the appends that fill the segment cover them).
    zeros_past_allocated: bool,
    /// The next segment, created ahead of its rotation.
    next: Option<NextSegment>,
    /// No attempt to create the next segment before this, after a failed one.
    next_retry_at: Option<Instant>,
    /// Why the last attempt to create the next segment failed.
    next_failure: Option<Alarm>,
    /// Why the last reservation failed, as published in the queue.
    alarm: Option<Alarm>,
    /// The injected fsync failure, in `failpoints` builds.
    failpoint: FsyncFailpoint,
    /// Reused encoding buffer; the whole group goes out in one append.
    buffer: Vec<u8>,
}

/// A segment created before it is needed: a temporary file of zeros, fsynced and
/// kept open, so that rotation needs no new descriptor and no new space. Rotation
/// writes its header, syncs it and renames it into place.
struct NextSegment {
    /// The open file, append position at 0.
    file: Box<dyn WalFile>,
    /// Its temporary name ([`NEXT_SEGMENT_TMP`] in the WAL directory).
    tmp: PathBuf,
    /// Zeros written in it.
    allocated: u64,
}

/// Name of the next segment while it waits for its rotation; recovery deletes it
/// like any temporary file.
pub(crate) const NEXT_SEGMENT_TMP: &str = "next-segment.wal.tmp";

/// How often a failed reservation (space ahead, the next segment) is retried.
pub(crate) const RESERVE_RETRY_INTERVAL: Duration = super::ROOM_RETRY_INTERVAL;

impl SegmentWriter {
    /// Opens the active segment left by recovery and reserves room ahead of it (a
    /// failure raises the alarm before anything is admitted).
    pub(crate) fn open(
        shared: Arc<Shared>,
        active: &ActiveSegment,
        failpoint: FsyncFailpoint,
    ) -> Result<Self, WalError> {
        let path = shared.dir.join(format::segment_file_name(active.first_lsn));
        let mut file = shared
            .fs
            .open_at(&path, active.length)
            .map_err(|error| WalError::io("opening", &path, error))?;
        // Records just replayed may sit in the page cache only (the last process was
        // killed, the machine was not): make them durable before anything after them
        // is acknowledged, since a later fsync may go to a new segment.
        if let Err(error) = file.sync_data() {
            fatal_io("fdatasync of the recovered segment", &path, &error);
        }
        let mut writer = Self {
            shared,
            file,
            path,
            length: active.length,
            allocated: active.allocated.max(active.length),
            zeros_past_allocated: false,
            next: None,
            next_retry_at: None,
            next_failure: None,
            alarm: None,
            failpoint,
            buffer: Vec::new(),
        };
        writer.maintain();
        Ok(writer)
    }

    /// Writes one commit group (rotating first if the segment is full), without
    /// syncing. `Err` when there is no room for it (no next segment, no space): nothing
    /// was written, and the caller retries later.
    pub(crate) fn write_group(&mut self, group: &[Pending]) -> Result<(), Alarm> {
        assert!(!group.is_empty());
        assert!(group.len() <= self.shared.options.batch_records_max);
        if self.length >= self.shared.options.segment_bytes_max {
            self.rotate(group[0].lsn)?;
        }
        self.buffer.clear();
        let group_first_lsn = group[0].lsn;
        let group_last_lsn = group[group.len() - 1].lsn;
        let mut block_offset = (self.length % BLOCK_BYTES as u64) as usize;
        for pending in group {
            let prefix = RecordPrefix {
                lsn: pending.lsn,
                group_first_lsn,
                group_last_lsn,
            };
            block_offset =
                format::encode_record(&mut self.buffer, block_offset, prefix, &pending.record);
        }
        self.reserve(self.buffer.len() as u64)?;
        if let Err(error) = self.file.append(&self.buffer) {
            fatal_io("append", &self.path, &error);
        }
        self.length += self.buffer.len() as u64;
        self.allocated = self.allocated.max(self.length);
        if let Err(alarm) = self.preallocate_ahead() {
            self.raise(alarm);
        }
        self.publish_room();
        assert_eq!(
            self.length % BLOCK_BYTES as u64,
            block_offset as u64 % BLOCK_BYTES as u64
        );
        let counters = &self.shared.counters;
        counters
            .bytes_written
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        let framed: u64 = group
            .iter()
            .map(|pending| framed_bytes(&pending.record))
            .sum();
        counters
            .log_bytes_since_snapshot
            .fetch_add(framed, Ordering::Relaxed);
        counters
            .records_since_snapshot
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Makes sure `bytes` can be appended into zeros already written: extends them
    /// (with `preallocate_bytes` more) if needed. Without preallocation appends grow
    /// the file, and a full disk makes them fail (fatal).
    fn reserve(&mut self, bytes: u64) -> Result<(), Alarm> {
        let ahead = self.shared.options.preallocate_bytes;
        let needed = self.length + bytes;
        if ahead == 0 || self.allocated >= needed {
            return Ok(());
        }
        let target = (needed + ahead).min(self.shared.options.segment_bytes_max.max(needed));
        self.extend_zeros(target)
    }

    /// Keeps zeros written ahead of the appends, up to the segment's size limit, so
    /// that most groups' fdatasync finds the file size unchanged and flushes data
    /// only (an append that grows the file also makes fdatasync write its inode), and
    /// so that a full disk is found here, ahead of the appends, where it is not fatal.
    /// The zeros are extended by at least half of `preallocate_bytes` at a time;
    /// they go to disk with this group's fdatasync. Readers treat a remainder of
    /// zeros as the end of the segment.
    fn preallocate_ahead(&mut self) -> Result<(), Alarm> {
        let ahead = self.shared.options.preallocate_bytes;
        if ahead == 0 || self.allocated >= self.length + ahead / 2 {
            return Ok(());
        }
        let target = (self.length + ahead).min(self.shared.options.segment_bytes_max);
        if target <= self.allocated {
            return Ok(());
        }
        self.extend_zeros(target)
    }

    /// Writes zeros from `allocated` to `target`. On failure `allocated` stays (some
    /// zeros may be written past it: harmless, they read as the end).
    fn extend_zeros(&mut self, target: u64) -> Result<(), Alarm> {
        match self.file.preallocate(self.allocated..target) {
            Ok(()) => {
                self.allocated = target;
                Ok(())
            }
            Err(error) => {
                self.zeros_past_allocated = true;
                Err(Alarm::from_io(
                    "writing zeros ahead of the log in",
                    &self.path,
                    &error,
                ))
            }
        }
    }

    /// Makes everything written so far durable. A failure aborts the process.
    pub(crate) fn sync(&mut self) {
        if let Some(error) = self.failpoint.before_sync() {
            fatal_io("fdatasync", &self.path, &error);
        }
        if let Err(error) = self.file.sync_data() {
            fatal_io("fdatasync", &self.path, &error);
        }
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// The reservations that are due, between groups and on the retry interval:
    /// zeros ahead of the appends, and the next segment once the active one is half
    /// full. Raises or clears the alarm by the outcome. Returns when to run again.
    pub(crate) fn maintain(&mut self) -> Option<Instant> {
        // Zeros written here reach the disk with the next group's fdatasync; the
        // space is taken at write time, which is what the reservation is for.
        let room_zeros = self.preallocate_ahead();
        let rotation_due = self.length >= self.shared.options.segment_bytes_max;
        let next_wanted = self.length >= self.shared.options.segment_bytes_max / 2;
        let retry_passed = self.next_retry_at.is_none_or(|at| Instant::now() >= at);
        if self.next.is_none() && next_wanted && (retry_passed || rotation_due) {
            match self.create_next() {
                Ok(next) => {
                    self.next = Some(next);
                    self.next_retry_at = None;
                    self.next_failure = None;
                }
                Err(alarm) => {
                    tracing::warn!(error = %alarm, "could not create the next WAL segment ahead of time; retrying");
                    self.next_retry_at = Some(Instant::now() + RESERVE_RETRY_INTERVAL);
                    self.next_failure = Some(alarm);
                }
            }
        }
        let next_missing = rotation_due && self.next.is_none();
        let alarm = match room_zeros {
            Err(alarm) => Some(alarm),
            Ok(()) if next_missing => Some(self.next_failure.clone().unwrap_or(Alarm::NoRoom {
                detail: "the next segment could not be created".to_string(),
            })),
            Ok(()) => None,
        };
        match alarm {
            Some(alarm) => self.raise(alarm),
            None => self.clear(),
        }
        self.publish_room();
        let retry = self.alarm.is_some() || (next_wanted && self.next.is_none());
        retry.then(|| Instant::now() + RESERVE_RETRY_INTERVAL)
    }

    /// Publishes the alarm: admission stops for awaited records.
    fn raise(&mut self, alarm: Alarm) {
        if self.alarm.as_ref() != Some(&alarm) {
            tracing::error!(error = %alarm, "the log refuses new records until it can reserve room");
            self.shared.queue.lock().alarm = Some(alarm.clone());
            self.alarm = Some(alarm);
        }
    }

    /// Clears the alarm: admission resumes.
    fn clear(&mut self) {
        if self.alarm.take().is_some() {
            tracing::warn!("the log reserved room again; new records are admitted");
            self.shared.queue.lock().alarm = None;
        }
    }

    /// Publishes how many bytes of zeros are left ahead of the appends.
    fn publish_room(&self) {
        self.shared
            .room_bytes
            .store(self.allocated - self.length, Ordering::Relaxed);
    }

    /// Creates the next segment under its temporary name: zeros, fsync, kept open.
    fn create_next(&mut self) -> Result<NextSegment, Alarm> {
        let fs = self.shared.fs.as_ref();
        let tmp = self.shared.dir.join(NEXT_SEGMENT_TMP);
        let zeros = self
            .shared
            .options
            .preallocate_bytes
            .min(self.shared.options.segment_bytes_max);
        let mut file = fs
            .create(&tmp)
            .map_err(|error| Alarm::from_io("creating", &tmp, &error))?;
        let written = file
            .preallocate(0..zeros)
            .and_then(|()| file.sync_data())
            .map_err(|error| Alarm::from_io("writing zeros to", &tmp, &error));
        if let Err(alarm) = written {
            // Nothing refers to it; the space goes back now, or at the next recovery.
            drop(file);
            let _ = fs.remove(&tmp);
            return Err(alarm);
        }
        Ok(NextSegment {
            file,
            tmp,
            allocated: zeros,
        })
    }

    /// Starts a new segment whose first record is `first_lsn`. The old one was synced
    /// with its last group, so it is complete on disk. `Err` (nothing changed) when
    /// no next segment exists and none can be created now.
    fn rotate(&mut self, first_lsn: Lsn) -> Result<(), Alarm> {
        let next = match self.next.take() {
            Some(next) => next,
            None => self.create_next()?,
        };
        // A full segment keeps no zeros after its records (a recovered one may, if it
        // was preallocated under other options): readers may then take any zeros
        // after the records of a segment that is not the last for damage.
        if self.allocated > self.length || self.zeros_past_allocated {
            let trimmed = self
                .file
                .set_len(self.length)
                .and_then(|()| self.file.sync_data());
            if let Err(error) = trimmed {
                fatal_io("trimming a full segment", &self.path, &error);
            }
            self.allocated = self.length;
        }
        let NextSegment {
            mut file,
            tmp,
            allocated,
        } = next;
        let path = self.shared.dir.join(format::segment_file_name(first_lsn));
        let header = format::encode_segment_header(first_lsn);
        if let Err(error) = file.append(&header).and_then(|()| file.sync_data()) {
            fatal_io("write and fsync of a new segment's header", &tmp, &error);
        }
        if let Err(error) = self.shared.fs.rename(&tmp, &path) {
            // Not renamed: nothing refers to it; a new one is made on the retry.
            let alarm = Alarm::from_io("renaming the next segment to", &path, &error);
            drop(file);
            let _ = self.shared.fs.remove(&tmp);
            return Err(alarm);
        }
        if let Err(error) = self.shared.dir_handle.sync() {
            fatal_io("directory fsync", &self.shared.dir, &error);
        }
        tracing::debug!(segment = %path.display(), "rotated WAL segment");
        self.shared.segments.lock().push(first_lsn);
        self.shared
            .counters
            .rotations
            .fetch_add(1, Ordering::Relaxed);
        self.file = file;
        self.path = path;
        self.length = format::SEGMENT_HEADER_BYTES as u64;
        self.allocated = allocated.max(self.length);
        self.zeros_past_allocated = false;
        self.next_retry_at = None;
        Ok(())
    }
}

/// Creates the segment file for `first_lsn` durably (header only) and returns it
/// open for appending; the first segment of a new log.
pub(crate) fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    first_lsn: Lsn,
) -> Result<(Box<dyn WalFile>, PathBuf), WalError> {
    let path = dir.join(format::segment_file_name(first_lsn));
    let sync_dir = || fs.sync_dir(dir);
    let file = create_durable_file(
        fs,
        &sync_dir,
        &path,
        &[&format::encode_segment_header(first_lsn)],
    )?;
    Ok((file, path))
}

/// Creates `path` with `content` (its pieces back to back) so that after a crash it
/// either does not exist or holds exactly `content`
/// ([`fs::write_through_temporary`]), then syncs the directory (with `sync_dir`). A
/// failure before the rename is returned; a failed directory fsync aborts.
pub(crate) fn create_durable_file(
    fs: &dyn FileSystem,
    sync_dir: &dyn Fn() -> std::io::Result<()>,
    path: &Path,
    content: &[&[u8]],
) -> Result<Box<dyn WalFile>, WalError> {
    let file = fs::write_through_temporary(fs, path, content)
        .map_err(|failed| WalError::io(failed.step, failed.path, failed.source))?;
    if let Err(error) = sync_dir() {
        let dir = path.parent().unwrap_or(Path::new("."));
        fatal_io("directory fsync", dir, &error);
    }
    Ok(file)
}

/// Takes the next commit group, up to `batch_records_max` queued records, when
/// `Queue::group_due` says. Waits for that, or until `retry_at` (then returns an
/// empty group, so the writer can retry a reservation); returns `None` once the WAL
/// is closing and the queue is drained.
pub(crate) fn take_group(shared: &Shared, retry_at: Option<Instant>) -> Option<Vec<Pending>> {
    let mut queue = shared.queue.lock();
    loop {
        let due = queue.group_due(&shared.options);
        if due.is_none() && queue.closing {
            return None;
        }
        let now = Instant::now();
        if due.is_some_and(|due| now >= due) {
            return Some(queue.take(shared.options.batch_records_max));
        }
        if retry_at.is_some_and(|at| now >= at) {
            return Some(Vec::new());
        }
        match due.into_iter().chain(retry_at).min() {
            Some(wake_at) => {
                shared.work_ready.wait_until(&mut queue, wake_at);
            }
            None => shared.work_ready.wait(&mut queue),
        }
    }
}

/// Waits `RESERVE_RETRY_INTERVAL` (a group that found no room waits for a retry);
/// false once the WAL is closing.
fn wait_to_retry(shared: &Shared) -> bool {
    let until = Instant::now() + RESERVE_RETRY_INTERVAL;
    let mut queue = shared.queue.lock();
    while !queue.closing && Instant::now() < until {
        shared.work_ready.wait_until(&mut queue, until);
    }
    !queue.closing
}

/// Takes at most `records_max` queued records without waiting (tests drive the
/// writer by hand with this).
#[cfg(test)]
pub(crate) fn take_group_now(shared: &Shared, records_max: usize) -> Vec<Pending> {
    let mut queue = shared.queue.lock();
    queue.take(records_max.min(shared.options.batch_records_max))
}

/// Publishes a synced group: advances `durable_lsn`, then resolves its tickets.
pub(crate) fn publish_durable(shared: &Shared, group: Vec<Pending>) {
    let Some(last) = group.last() else { return };
    {
        let mut queue = shared.queue.lock();
        assert!(last.lsn > queue.durable_lsn && last.lsn < queue.next_lsn);
        assert_eq!(
            group[0].lsn,
            queue.durable_lsn + 1,
            "groups are synced in LSN order"
        );
        queue.durable_lsn = last.lsn;
        // What arrived during this group's write and fdatasync says how busy the log is.
        queue.busy = queue.awaited > 0;
    }
    shared.durable_advanced.notify_all();
    let counters = &shared.counters;
    counters
        .records_durable
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    counters
        .last_group_records
        .store(group.len() as u64, Ordering::Relaxed);
    for pending in group {
        // A dropped ticket is fine: the caller stopped waiting, the record is durable anyway.
        if let Some(done) = pending.done {
            let _ = done.send(());
        }
    }
}

/// The writer thread's body: commit groups until closed. A group that finds no room
/// waits for a retry; at close it is abandoned, never written and never acknowledged
/// (its callers get `WriterStopped`).
pub(crate) fn run(mut writer: SegmentWriter) {
    let shared = Arc::clone(&writer.shared);
    let _stopped = StoppedGuard(Arc::clone(&shared));
    let mut retry_at = writer.maintain();
    while let Some(group) = take_group(&shared, retry_at) {
        if group.is_empty() {
            retry_at = writer.maintain();
            continue;
        }
        while let Err(alarm) = writer.write_group(&group) {
            writer.raise(alarm);
            if !wait_to_retry(&shared) {
                tracing::error!(
                    records = group.len(),
                    "closing with records the log found no room for; they were never acknowledged"
                );
                return;
            }
        }
        let sync_started = std::time::Instant::now();
        writer.sync();
        super::metrics::fsynced(sync_started.elapsed(), group.len());
        publish_durable(&shared, group);
        retry_at = writer.maintain();
    }
}

/// Marks the writer stopped when its thread ends, also by panic, and fails every
/// record still queued (their tickets resolve to `WriterStopped`).
pub(crate) struct StoppedGuard(pub Arc<Shared>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        let abandoned: Vec<Pending> = {
            let mut queue = self.0.queue.lock();
            queue.writer_running = false;
            let all = queue.pending.len();
            queue.take(all)
        };
        self.0.durable_advanced.notify_all();
        drop(abandoned);
    }
}
