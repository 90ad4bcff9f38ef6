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

use super::error::WalError;
use super::fatal::{FsyncFailpoint, fatal_io};
use super::format::{self, BLOCK_BYTES, RecordPrefix};
use super::fs::{self, FileSystem, WalFile};
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
        }
    }

    /// Queues a record (the caller assigned its LSN). `now` is read by the caller
    /// before it takes the lock, which every submitter shares.
    pub fn push(&mut self, pending: Pending, now: Instant) {
        if self.pending.is_empty() {
            self.oldest_queued_at = Some(now);
        }
        self.newest_queued_at = Some(now);
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
    /// LSN of the installed snapshot, 0 when none.
    pub snapshot_lsn: AtomicU64,
}

/// Appends commit groups to the active segment. Owned by the writer thread.
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
    /// Writing zeros ahead failed in this segment (a full disk, say): appends grow
    /// the file instead until the next segment.
    preallocation_failed: bool,
    /// The injected fsync failure, in `failpoints` builds.
    failpoint: FsyncFailpoint,
    /// Reused encoding buffer; the whole group goes out in one append.
    buffer: Vec<u8>,
}

impl SegmentWriter {
    /// Opens the active segment left by recovery.
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
        Ok(Self {
            shared,
            file,
            path,
            length: active.length,
            allocated: active.allocated.max(active.length),
            preallocation_failed: false,
            failpoint,
            buffer: Vec::new(),
        })
    }

    /// Writes one commit group (rotating first if the segment is full), without syncing.
    pub(crate) fn write_group(&mut self, group: &[Pending]) {
        assert!(!group.is_empty());
        assert!(group.len() <= self.shared.options.batch_records_max);
        if self.length >= self.shared.options.segment_bytes_max {
            self.rotate(group[0].lsn);
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
        if let Err(error) = self.file.append(&self.buffer) {
            fatal_io("append", &self.path, &error);
        }
        self.length += self.buffer.len() as u64;
        self.allocated = self.allocated.max(self.length);
        self.preallocate_ahead();
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
    }

    /// Keeps zeros written ahead of the appends, up to the segment's size limit, so
    /// that most groups' fdatasync finds the file size unchanged and flushes data
    /// only (an append that grows the file also makes fdatasync write its inode).
    /// The zeros are extended by at least half of `preallocate_bytes` at a time;
    /// they go to disk with this group's fdatasync. Readers treat a remainder of
    /// zeros as the end of the segment.
    ///
    /// A failure here is not fatal, unlike a failed append: the zeros are only an
    /// optimisation, and a partial run of them still reads as the end. The writer
    /// then stops preallocating until the next segment.
    fn preallocate_ahead(&mut self) {
        let ahead = self.shared.options.preallocate_bytes;
        if ahead == 0 || self.preallocation_failed || self.allocated >= self.length + ahead / 2 {
            return;
        }
        let target = (self.length + ahead).min(self.shared.options.segment_bytes_max);
        if target <= self.allocated {
            return;
        }
        if let Err(error) = self.file.preallocate(self.allocated..target) {
            tracing::warn!(
                segment = %self.path.display(),
                %error,
                "could not write zeros ahead of the log; appends grow the segment instead"
            );
            self.preallocation_failed = true;
            return;
        }
        self.allocated = target;
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

    /// Starts a new segment whose first record is `first_lsn`. The old one was synced
    /// with its last group, so it is complete on disk.
    fn rotate(&mut self, first_lsn: Lsn) {
        // A full segment keeps no zeros after its records (a recovered one may, if it
        // was preallocated under other options): readers may then take any zeros
        // after the records of a segment that is not the last for damage.
        if self.allocated > self.length || self.preallocation_failed {
            let trimmed = self
                .file
                .set_len(self.length)
                .and_then(|()| self.file.sync_data());
            if let Err(error) = trimmed {
                fatal_io("trimming a full segment", &self.path, &error);
            }
        }
        let (file, path) =
            match create_segment(self.shared.fs.as_ref(), &self.shared.dir, first_lsn) {
                Ok(created) => created,
                Err(error) => {
                    let path = self.shared.dir.join(format::segment_file_name(first_lsn));
                    fatal_io(
                        "segment rotation",
                        &path,
                        &std::io::Error::other(error.to_string()),
                    );
                }
            };
        tracing::debug!(segment = %path.display(), "rotated WAL segment");
        self.shared.segments.lock().push(first_lsn);
        self.shared
            .counters
            .rotations
            .fetch_add(1, Ordering::Relaxed);
        self.file = file;
        self.path = path;
        self.length = format::SEGMENT_HEADER_BYTES as u64;
        self.allocated = self.length;
        self.preallocation_failed = false;
    }
}

/// Creates the segment file for `first_lsn` durably (header only) and returns it
/// open for appending.
pub(crate) fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    first_lsn: Lsn,
) -> Result<(Box<dyn WalFile>, PathBuf), WalError> {
    let path = dir.join(format::segment_file_name(first_lsn));
    let file = create_durable_file(fs, &path, &format::encode_segment_header(first_lsn))?;
    Ok((file, path))
}

/// Creates `path` with `content` so that after a crash it either does not exist or
/// holds exactly `content`: write a temporary, fsync it, rename, fsync the directory.
/// Write and fsync failures abort; other failures are returned.
pub(crate) fn create_durable_file(
    fs: &dyn FileSystem,
    path: &Path,
    content: &[u8],
) -> Result<Box<dyn WalFile>, WalError> {
    let tmp = fs::tmp_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = fs
        .create(&tmp)
        .map_err(|error| WalError::io("creating", &tmp, error))?;
    if let Err(error) = file.append(content).and_then(|()| file.sync_data()) {
        fatal_io("write and fsync of a new file", &tmp, &error);
    }
    fs.rename(&tmp, path)
        .map_err(|error| WalError::io("renaming into place", path, error))?;
    if let Err(error) = fs.sync_dir(dir) {
        fatal_io("directory fsync", dir, &error);
    }
    Ok(file)
}

/// Takes the next commit group, up to `batch_records_max` queued records, when
/// `Queue::group_due` says. Waits for that; returns `None` once the WAL is closing and
/// the queue is drained.
pub(crate) fn take_group(shared: &Shared) -> Option<Vec<Pending>> {
    let mut queue = shared.queue.lock();
    loop {
        let Some(due) = queue.group_due(&shared.options) else {
            if queue.closing {
                return None;
            }
            shared.work_ready.wait(&mut queue);
            continue;
        };
        if Instant::now() >= due {
            return Some(queue.take(shared.options.batch_records_max));
        }
        shared.work_ready.wait_until(&mut queue, due);
    }
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

/// The writer thread's body: commit groups until closed.
pub(crate) fn run(mut writer: SegmentWriter) {
    let shared = Arc::clone(&writer.shared);
    let _stopped = StoppedGuard(Arc::clone(&shared));
    while let Some(group) = take_group(&shared) {
        writer.write_group(&group);
        let sync_started = std::time::Instant::now();
        writer.sync();
        crate::telemetry::metrics::wal_fsync(sync_started.elapsed(), group.len());
        publish_durable(&shared, group);
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
