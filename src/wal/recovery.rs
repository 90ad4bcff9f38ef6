//! Recovery at `Wal::open`: from a directory listing to the snapshot, the records
//! after it, and the segment to continue appending to. Owns the policy for damage:
//! what is a torn tail (truncated, logged, reported) and what is corruption (refused).

use std::path::{Path, PathBuf};

use super::error::WalError;
use super::fatal::fatal_io;
use super::format::{self, FRAGMENT_HEADER_BYTES, FileKind, RECORD_PREFIX_BYTES};
use super::fs::FileSystem;
use super::reader::{self, ScanEnd, ScannedRecord, SegmentScan};
use super::{Lsn, writer};

/// What `Wal::open` found on disk, collected (tests and tools; the daemon replays
/// through [`Wal::open_replaying`](super::Wal::open_replaying) without holding it all).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The newest valid snapshot: its LSN and the bytes given to `install_snapshot`.
    pub snapshot: Option<(Lsn, Vec<u8>)>,
    /// Every durable record after the snapshot, in LSN order, without gaps.
    pub records: Vec<(Lsn, Vec<u8>)>,
    /// Set when a torn tail was cut off the last segment.
    pub truncated_tail: Option<TailTruncation>,
}

/// What recovery hands to the caller's visitor, in log order: the snapshot (if any)
/// first, then every durable record after it, in LSN order and without gaps. The
/// bytes are borrowed from the file being read, so a replay costs no copy of the log.
#[derive(Debug)]
pub enum Replayed<'a> {
    /// The newest valid snapshot: the bytes given to `install_snapshot` at `lsn`.
    Snapshot { lsn: Lsn, payload: &'a [u8] },
    /// A durable record after the snapshot.
    Record { lsn: Lsn, payload: &'a [u8] },
}

/// Why a replaying open failed: the log itself, or the caller's visitor.
#[derive(Debug)]
pub enum ReplayError<E> {
    Wal(WalError),
    Visit(E),
}

impl<E> From<WalError> for ReplayError<E> {
    fn from(error: WalError) -> Self {
        ReplayError::Wal(error)
    }
}

/// What a replaying open did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// LSN of the snapshot replay started from, 0 when none.
    pub snapshot_lsn: Lsn,
    /// Records replayed after the snapshot.
    pub records: u64,
    /// Set when a torn tail was cut off the last segment.
    pub truncated_tail: Option<TailTruncation>,
}

/// A torn tail that recovery cut off: records whose commit group was never fully
/// synced, so none of them was acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailTruncation {
    /// The segment that was truncated.
    pub file: PathBuf,
    /// Its new length: the offset of the first byte that was not a valid record.
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes_dropped: u64,
    /// What was wrong at `offset`, and what was dropped.
    pub reason: String,
}

/// The segment new records are appended to.
#[derive(Clone, Debug)]
pub(crate) struct ActiveSegment {
    /// Its first LSN (from its name and header).
    pub first_lsn: Lsn,
    /// Its valid length in bytes; appends continue here.
    pub length: u64,
    /// Its size on disk: `length` plus preallocated zeros.
    pub allocated: u64,
}

/// Everything `Wal::open` needs to continue.
#[derive(Debug)]
pub(crate) struct RecoveryOutcome {
    /// Handed to the caller.
    pub report: RecoveryReport,
    /// First LSNs of the segment files on disk, ascending; the last is `active`.
    pub segments: Vec<Lsn>,
    /// Where appending continues.
    pub active: ActiveSegment,
    /// The LSN the next record gets.
    pub next_lsn: Lsn,
    /// LSN of the snapshot used, 0 when none.
    pub snapshot_lsn: Lsn,
    /// Approximate framed size of the records after the snapshot.
    pub log_bytes_since_snapshot: u64,
}

/// The visitor recovery calls for the snapshot and each record.
pub(crate) type Visit<'v, E> = &'v mut dyn FnMut(Replayed<'_>) -> Result<(), E>;

/// The files found in the WAL directory, by kind.
#[derive(Debug, Default)]
struct Listing {
    /// First LSNs of the segments, ascending.
    segments: Vec<Lsn>,
    /// LSNs of the snapshots, newest first.
    snapshots: Vec<Lsn>,
}

/// Recovers the log in `dir`, creating an empty one if there is none, and hands the
/// snapshot and the records after it to `visit` one at a time. Each segment is checked
/// before any of its records is handed over; an error from `visit` stops recovery.
pub(crate) fn recover<E>(
    dir: &Path,
    fs: &dyn FileSystem,
    visit: Visit<'_, E>,
) -> Result<RecoveryOutcome, ReplayError<E>> {
    fs.create_dir_all(dir)
        .map_err(|error| WalError::io("creating", dir, error))?;
    let listing = list_and_clean(dir, fs)?;
    let snapshot = newest_valid_snapshot(dir, fs, &listing.snapshots)?;
    let snapshot_lsn = snapshot.as_ref().map_or(0, |(lsn, _)| *lsn);
    if listing.segments.is_empty() {
        return Ok(start_fresh(dir, fs, &listing, snapshot.is_some())?);
    }
    check_coverage(dir, &listing, snapshot_lsn)?;
    if let Some((lsn, file)) = &snapshot {
        let payload = &file[format::SNAPSHOT_HEADER_BYTES..];
        visit(Replayed::Snapshot { lsn: *lsn, payload }).map_err(ReplayError::Visit)?;
    }
    // The snapshot's file can be large: gone before the records are replayed.
    drop(snapshot);
    let replay = replay_segments(dir, fs, &listing.segments, snapshot_lsn, visit)?;
    let last_lsn = replay.next_lsn - 1;
    if last_lsn < snapshot_lsn {
        let file = dir.join(format::snapshot_file_name(snapshot_lsn));
        let detail =
            format!("the snapshot is at lsn {snapshot_lsn} but the log ends at lsn {last_lsn}");
        return Err(WalError::corrupt(file, 0, detail).into());
    }
    Ok(RecoveryOutcome {
        report: RecoveryReport {
            snapshot_lsn,
            records: replay.records,
            truncated_tail: replay.truncated_tail,
        },
        segments: listing.segments,
        active: replay.active,
        next_lsn: replay.next_lsn,
        snapshot_lsn,
        log_bytes_since_snapshot: replay.log_bytes,
    })
}

/// Recovers as [`recover`] does, collecting what it hands over.
pub(crate) fn recover_collected(
    dir: &Path,
    fs: &dyn FileSystem,
) -> Result<(RecoveryOutcome, Recovered), WalError> {
    let mut recovered = Recovered::default();
    let mut collect = |replayed: Replayed<'_>| -> Result<(), std::convert::Infallible> {
        match replayed {
            Replayed::Snapshot { lsn, payload } => {
                recovered.snapshot = Some((lsn, payload.to_vec()))
            }
            Replayed::Record { lsn, payload } => recovered.records.push((lsn, payload.to_vec())),
        }
        Ok(())
    };
    let outcome = match recover(dir, fs, &mut collect) {
        Ok(outcome) => outcome,
        Err(ReplayError::Wal(error)) => return Err(error),
        Err(ReplayError::Visit(never)) => match never {},
    };
    debug_assert!(
        recovered
            .records
            .windows(2)
            .all(|pair| pair[0].0 + 1 == pair[1].0)
    );
    recovered.truncated_tail = outcome.report.truncated_tail.clone();
    Ok((outcome, recovered))
}

/// Approximate on-disk size of a record (one fragment header; trailers ignored).
pub(crate) fn framed_bytes(payload: &[u8]) -> u64 {
    (FRAGMENT_HEADER_BYTES + RECORD_PREFIX_BYTES + payload.len()) as u64
}

/// The largest LSN a file name may carry: LSNs start at 1 and one a nanosecond would
/// take 292 years to get here, so larger ones are damage or forgery, and refusing
/// them keeps every `lsn + count` and `lsn - 1` of recovery in range.
const LSN_IN_NAME_MAX: Lsn = 1 << 63;

fn list_and_clean(dir: &Path, fs: &dyn FileSystem) -> Result<Listing, WalError> {
    let names = fs
        .list(dir)
        .map_err(|error| WalError::io("listing", dir, error))?;
    let mut listing = Listing::default();
    let mut removed_tmp = false;
    for name in names {
        let kind = format::classify_file_name(&name);
        if let FileKind::Segment(lsn) | FileKind::Snapshot(lsn) = kind
            && !(1..=LSN_IN_NAME_MAX).contains(&lsn)
        {
            let detail = format!(
                "lsn {lsn} in the file name is outside 1..={LSN_IN_NAME_MAX}: this log never wrote it"
            );
            return Err(WalError::corrupt(dir.join(&name), 0, detail));
        }
        match kind {
            FileKind::Segment(lsn) => listing.segments.push(lsn),
            FileKind::Snapshot(lsn) => listing.snapshots.push(lsn),
            FileKind::Temporary => {
                // An interrupted create: the rename never happened, so nothing refers to it.
                let path = dir.join(&name);
                tracing::info!(file = %path.display(), "removing leftover temporary file");
                fs.remove(&path)
                    .map_err(|error| WalError::io("removing", &path, error))?;
                removed_tmp = true;
            }
            FileKind::Unknown => {
                tracing::warn!(file = name, "ignoring unknown file in the WAL directory")
            }
        }
    }
    if removed_tmp {
        fs.sync_dir(dir)
            .map_err(|error| WalError::io("syncing", dir, error))?;
    }
    listing.segments.sort_unstable();
    listing.snapshots.sort_unstable_by(|a, b| b.cmp(a));
    Ok(listing)
}

/// The newest snapshot that passes its checks, as its whole file (the payload
/// follows the header). Invalid newer ones are logged and skipped; `check_coverage` then refuses if the log no longer reaches back far
/// enough for the older one.
fn newest_valid_snapshot(
    dir: &Path,
    fs: &dyn FileSystem,
    lsns: &[Lsn],
) -> Result<Option<(Lsn, Vec<u8>)>, WalError> {
    for &lsn in lsns {
        let path = dir.join(format::snapshot_file_name(lsn));
        let file = fs
            .read(&path)
            .map_err(|error| WalError::io("reading", &path, error))?;
        match format::decode_snapshot(&file) {
            Ok((found_lsn, _)) if found_lsn == lsn => return Ok(Some((lsn, file))),
            Ok((found_lsn, _)) => {
                tracing::error!(file = %path.display(), found_lsn, "snapshot header LSN does not match its name; skipping it");
            }
            Err(reason) => {
                tracing::error!(file = %path.display(), %reason, "invalid snapshot; falling back to an older one")
            }
        }
    }
    Ok(None)
}

/// Refuses when the segments no longer hold the record right after the snapshot.
fn check_coverage(dir: &Path, listing: &Listing, snapshot_lsn: Lsn) -> Result<(), WalError> {
    let first_segment = listing.segments[0];
    if first_segment <= snapshot_lsn + 1 {
        return Ok(());
    }
    let skipped = listing
        .snapshots
        .iter()
        .filter(|&&lsn| lsn > snapshot_lsn)
        .count();
    let detail = format!(
        "the oldest segment starts at lsn {first_segment}, but the newest valid snapshot is at lsn \
         {snapshot_lsn} ({skipped} newer snapshot file(s) are invalid), so records {}..={} are missing",
        snapshot_lsn + 1,
        first_segment - 1
    );
    Err(WalError::corrupt(
        dir.join(format::segment_file_name(first_segment)),
        0,
        detail,
    ))
}

fn start_fresh(
    dir: &Path,
    fs: &dyn FileSystem,
    listing: &Listing,
    has_snapshot: bool,
) -> Result<RecoveryOutcome, WalError> {
    if !listing.snapshots.is_empty() {
        let detail =
            "snapshot files exist but no log segment does: the log after the snapshot is missing";
        let file = dir.join(format::snapshot_file_name(listing.snapshots[0]));
        return Err(WalError::corrupt(file, 0, detail));
    }
    assert!(!has_snapshot);
    writer::create_segment(fs, dir, 1)?;
    Ok(RecoveryOutcome {
        report: RecoveryReport::default(),
        segments: vec![1],
        active: ActiveSegment {
            first_lsn: 1,
            length: format::SEGMENT_HEADER_BYTES as u64,
            allocated: format::SEGMENT_HEADER_BYTES as u64,
        },
        next_lsn: 1,
        snapshot_lsn: 0,
        log_bytes_since_snapshot: 0,
    })
}

/// What replaying the segments found.
struct Replay {
    /// Records handed over (those after the snapshot).
    records: u64,
    /// Their approximate framed size.
    log_bytes: u64,
    /// Set when the last segment had a torn tail.
    truncated_tail: Option<TailTruncation>,
    /// The last segment.
    active: ActiveSegment,
    /// One past the last LSN in the log.
    next_lsn: Lsn,
}

/// Reads the segments from the one holding `snapshot_lsn + 1` to the last, one at a
/// time, and hands the records after the snapshot to `visit`.
fn replay_segments<E>(
    dir: &Path,
    fs: &dyn FileSystem,
    segments: &[Lsn],
    snapshot_lsn: Lsn,
    visit: Visit<'_, E>,
) -> Result<Replay, ReplayError<E>> {
    let start = segments
        .iter()
        .rposition(|&first| first <= snapshot_lsn + 1)
        .unwrap_or(0);
    let (mut records, mut log_bytes) = (0u64, 0u64);
    let mut next_lsn = segments[start];
    for (index, &first_lsn) in segments.iter().enumerate().skip(start) {
        let path = dir.join(format::segment_file_name(first_lsn));
        let file = read_segment(fs, &path, first_lsn, next_lsn)?;
        let scan = scan_checked(&path, &file, first_lsn)?;
        next_lsn = first_lsn + scan.records.len() as u64;
        let length = scan.valid_end;
        let is_last = index + 1 == segments.len();
        let truncated_tail = torn_tail(&path, &file, &scan, is_last)?;
        let after_snapshot = scan
            .records
            .iter()
            .filter(|record| record.prefix.lsn > snapshot_lsn);
        for record in after_snapshot {
            let (lsn, payload) = (record.prefix.lsn, record.payload.as_ref());
            visit(Replayed::Record { lsn, payload }).map_err(ReplayError::Visit)?;
            records += 1;
            log_bytes += framed_bytes(payload);
        }
        if is_last {
            let allocated = match &truncated_tail {
                Some(tail) => {
                    truncate_tail(fs, tail)?;
                    tail.offset
                }
                None => file.len() as u64,
            };
            let active = ActiveSegment {
                first_lsn,
                length,
                allocated,
            };
            return Ok(Replay {
                records,
                log_bytes,
                truncated_tail,
                active,
                next_lsn,
            });
        }
    }
    unreachable!("the loop returns at the last segment")
}

/// Reads the segment starting at `first_lsn`, which must continue the previous one
/// (ending just before `next_lsn`).
fn read_segment(
    fs: &dyn FileSystem,
    path: &Path,
    first_lsn: Lsn,
    next_lsn: Lsn,
) -> Result<Vec<u8>, WalError> {
    if first_lsn != next_lsn {
        let detail = format!(
            "segment starts at lsn {first_lsn} but the previous one ends at lsn {}",
            next_lsn - 1
        );
        return Err(WalError::corrupt(path, 0, detail));
    }
    fs.read(path)
        .map_err(|error| WalError::io("reading", path, error))
}

/// Scans a segment's records; its header must name `first_lsn`, as its file name does,
/// and its records carry consecutive LSNs.
fn scan_checked<'f>(
    path: &Path,
    file: &'f [u8],
    first_lsn: Lsn,
) -> Result<SegmentScan<'f>, WalError> {
    let scan = reader::scan_segment(file)
        .map_err(|reason| WalError::corrupt(path, 0, reason.to_string()))?;
    if scan.first_lsn != first_lsn {
        let detail = format!(
            "header says the first lsn is {}, the name says {first_lsn}",
            scan.first_lsn
        );
        return Err(WalError::corrupt(path, 0, detail));
    }
    check_lsn_order(path, &scan)?;
    Ok(scan)
}

/// Where a segment's records stop short of its end: only the last segment may end in
/// a torn tail (to truncate); any other was fully synced, so damage or missing
/// records there are corruption.
fn torn_tail(
    path: &Path,
    file: &[u8],
    scan: &SegmentScan,
    is_last: bool,
) -> Result<Option<TailTruncation>, WalError> {
    let length = scan.valid_end;
    match (&scan.end, is_last) {
        (ScanEnd::Clean, false) if length < file.len() as u64 => {
            let detail = "zeros where records were expected, in a segment that is not the last \
                          (the writer trims a full segment to its records before the next one starts)";
            Err(WalError::corrupt(path, length, detail))
        }
        (ScanEnd::Clean, _) => Ok(None),
        (ScanEnd::Damaged { offset, reason }, false) => {
            let detail =
                format!("{reason} (in a segment that is not the last, so it was fully synced)");
            Err(WalError::corrupt(path, *offset, detail))
        }
        (ScanEnd::Damaged { offset, reason }, true) => {
            classify_tail(path, file, scan, *offset, reason).map(Some)
        }
    }
}

/// Valid records must carry consecutive LSNs from the segment's first LSN. A record
/// with a valid checksum and a wrong LSN cannot come from a torn write.
fn check_lsn_order(path: &Path, scan: &SegmentScan) -> Result<(), WalError> {
    for (expected, record) in (scan.first_lsn..).zip(&scan.records) {
        if record.prefix.lsn != expected {
            let detail = format!(
                "record has lsn {} where lsn {expected} was expected",
                record.prefix.lsn
            );
            return Err(WalError::corrupt(path, record.offset, detail));
        }
    }
    Ok(())
}

/// Decides whether damage at `offset` of the last segment is a torn tail.
///
/// It is when nothing valid follows it; or when everything valid that follows
/// belongs to the same commit group as the damaged spot and the damage contains a
/// zeroed sector (a lost write, not a flipped bit). The writer syncs each commit
/// group before writing the next, so a later group after the damage proves that
/// the damaged group had been synced: that is corruption.
fn classify_tail(
    path: &Path,
    file: &[u8],
    scan: &SegmentScan,
    offset: u64,
    reason: &str,
) -> Result<TailTruncation, WalError> {
    let expected_lsn = scan.first_lsn + scan.records.len() as u64;
    let damaged_groups = damaged_group_candidates(scan.records.last(), expected_lsn);
    let later = reader::records_after(file, offset);
    // Preallocated zeros at the end are not dropped records.
    let data_end = file
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last as u64 + 1);
    let bytes_dropped = data_end.saturating_sub(offset);
    let Some(first_later) = later.first() else {
        let reason = format!("{reason}; nothing valid follows");
        return Ok(tail(path, offset, bytes_dropped, reason));
    };
    let group_of_first_later = first_later.prefix.group_first_lsn;
    let foreign = later.iter().find(|record| {
        let group = record.prefix.group_first_lsn;
        !damaged_groups.contains(&group)
            || group != group_of_first_later
            || record.prefix.lsn < expected_lsn
    });
    if let Some(record) = foreign {
        let detail = format!(
            "{reason}, followed by a valid record (lsn {}, offset {}) of a later commit group, \
             which the writer only starts after the damaged one was synced",
            record.prefix.lsn, record.offset
        );
        return Err(WalError::corrupt(path, offset, detail));
    }
    if !reader::has_zeroed_sector(file, offset, first_later.offset) {
        let detail = format!(
            "{reason}, followed by a valid record (lsn {}, offset {}), and the damage is not a lost \
             (zeroed) sector",
            first_later.prefix.lsn, first_later.offset
        );
        return Err(WalError::corrupt(path, offset, detail));
    }
    let (low, high) = (later[0].prefix.lsn, later[later.len() - 1].prefix.lsn);
    let reason = format!(
        "{reason}; {} later record(s) (lsn {low}..={high}) of the same never-synced commit group are dropped",
        later.len()
    );
    Ok(tail(path, offset, bytes_dropped, reason))
}

/// The commit groups the damaged record `expected_lsn` can belong to: the group of
/// the last valid record if that group continues past it, or a group starting at
/// `expected_lsn` (always possible: an earlier recovery may have cut the rest of
/// the previous group, and then the writer started a new one there).
fn damaged_group_candidates(last_valid: Option<&ScannedRecord>, expected_lsn: Lsn) -> [Lsn; 2] {
    let continuing = last_valid.map_or(expected_lsn, |record| {
        record.prefix.next_expected_group_first()
    });
    [continuing, expected_lsn]
}

fn tail(path: &Path, offset: u64, bytes_dropped: u64, reason: String) -> TailTruncation {
    TailTruncation {
        file: path.to_path_buf(),
        offset,
        bytes_dropped,
        reason,
    }
}

/// Cuts the torn tail so that new appends follow valid data.
fn truncate_tail(fs: &dyn FileSystem, tail: &TailTruncation) -> Result<(), WalError> {
    tracing::warn!(
        file = %tail.file.display(),
        offset = tail.offset,
        bytes_dropped = tail.bytes_dropped,
        reason = tail.reason,
        "truncating the torn tail of the WAL (records never acknowledged)"
    );
    let mut file = fs
        .open_at(&tail.file, tail.offset)
        .map_err(|error| WalError::io("opening", &tail.file, error))?;
    if let Err(error) = file.set_len(tail.offset).and_then(|()| file.sync_data()) {
        fatal_io("tail truncation", &tail.file, &error);
    }
    Ok(())
}
