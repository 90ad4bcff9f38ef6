//! Reading one segment file from bytes: the valid prefix of records, where it ends
//! and why, and (for the tail classification in `recovery.rs`) the valid records
//! that can still be found after a damaged spot. Pure: no I/O, no policy.

use std::borrow::Cow;

use super::Lsn;
use super::format::{
    self, BLOCK_BYTES, FRAGMENT_HEADER_BYTES, FragmentError, FragmentType, RECORD_BYTES_LIMIT,
    RECORD_PREFIX_BYTES, RecordPrefix, SECTOR_BYTES,
};

/// One record read back from a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScannedRecord<'a> {
    /// LSN and commit-group bounds.
    pub prefix: RecordPrefix,
    /// File offset of the record's first fragment header.
    pub offset: u64,
    /// File offset just past its last fragment.
    pub end: u64,
    /// The payload the caller submitted: a slice of the file when the record is one
    /// fragment (almost always), assembled when it crosses blocks. Recovery replays
    /// millions of records, and a copy of each would interleave short-lived
    /// allocations with the leases being rebuilt, which pins the allocator's pages.
    pub payload: Cow<'a, [u8]>,
}

/// How the valid prefix of a segment ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// The file ends after a record, or only zeros follow it (a block trailer or
    /// the preallocated rest of the segment).
    Clean,
    /// No valid record starts at `offset`.
    Damaged {
        /// Offset of the first byte that is not part of a valid record.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
}

/// A segment read from the start.
#[derive(Clone, Debug)]
pub(crate) struct SegmentScan<'a> {
    /// First LSN, from the header.
    pub first_lsn: Lsn,
    /// The valid records, in file order.
    pub records: Vec<ScannedRecord<'a>>,
    /// Where the valid records end: the damaged offset, or where appends continue.
    pub valid_end: u64,
    /// Why reading stopped.
    pub end: ScanEnd,
}

/// Reads a whole segment; `Err` when its header itself is invalid.
pub(crate) fn scan_segment(file: &[u8]) -> Result<SegmentScan<'_>, format::FormatError> {
    let first_lsn = format::decode_segment_header(file)?;
    let mut records = Vec::new();
    let mut offset = format::SEGMENT_HEADER_BYTES;
    let end = loop {
        offset = skip_trailer(offset);
        if offset >= file.len() {
            break ScanEnd::Clean;
        }
        match read_record(file, offset) {
            Ok(record) => {
                offset = to_usize(record.end);
                records.push(record);
            }
            Err(_) if file[offset..].iter().all(|&byte| byte == 0) => break ScanEnd::Clean,
            Err(reason) => {
                break ScanEnd::Damaged {
                    offset: offset as u64,
                    reason,
                };
            }
        }
    };
    Ok(SegmentScan {
        first_lsn,
        records,
        valid_end: offset.min(file.len()) as u64,
        end,
    })
}

/// Every valid record that starts after `damaged_offset`, found by trying each byte
/// offset (a damaged header's length cannot be trusted, so there is no faster
/// resynchronisation inside a block). A false match needs a CRC-32C collision.
pub(crate) fn records_after(file: &[u8], damaged_offset: u64) -> Vec<ScannedRecord<'_>> {
    let mut found = Vec::new();
    let mut offset = to_usize(damaged_offset) + 1;
    while offset < file.len() {
        offset = skip_trailer(offset);
        let starts_record = matches!(file.get(offset + 6), Some(1 | 2));
        match starts_record.then(|| read_record(file, offset)) {
            Some(Ok(record)) => {
                offset = to_usize(record.end);
                found.push(record);
            }
            _ => offset += 1,
        }
    }
    found
}

/// Whether `file[start..end]`, cut at sector boundaries, has a piece that is all
/// zeros: the mark of a write that never reached the disk (etcd's torn-entry test),
/// as opposed to a flipped bit.
pub(crate) fn has_zeroed_sector(file: &[u8], start: u64, end: u64) -> bool {
    let (mut start, end) = (to_usize(start), to_usize(end).min(file.len()));
    while start < end {
        let piece_end = ((start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
        if file[start..piece_end].iter().all(|&byte| byte == 0) {
            return true;
        }
        start = piece_end;
    }
    false
}

/// Moves past a block trailer too small to hold a fragment header.
fn skip_trailer(offset: usize) -> usize {
    let left = BLOCK_BYTES - offset % BLOCK_BYTES;
    if left < FRAGMENT_HEADER_BYTES {
        offset + left
    } else {
        offset
    }
}

/// Reads the logical record whose first fragment starts at `start`.
fn read_record(file: &[u8], start: usize) -> Result<ScannedRecord<'_>, String> {
    let fragment_at = |offset: usize| {
        format::decode_fragment(file, offset).map_err(|error| match error {
            FragmentError::Incomplete => "the file ends inside the record".to_string(),
            FragmentError::Invalid(reason) => format!("{reason} at offset {offset}"),
        })
    };
    let offset = skip_trailer(start);
    let first = fragment_at(offset)?;
    let mut end = offset + FRAGMENT_HEADER_BYTES + first.data.len();
    let body = match first.fragment_type {
        FragmentType::Full => Cow::Borrowed(first.data),
        FragmentType::First => {
            let mut body = first.data.to_vec();
            loop {
                let offset = skip_trailer(end);
                let fragment = fragment_at(offset)?;
                let done = match fragment.fragment_type {
                    FragmentType::Last => true,
                    FragmentType::Middle => false,
                    other => {
                        return Err(format!("unexpected {other:?} fragment at offset {offset}"));
                    }
                };
                body.extend_from_slice(fragment.data);
                if body.len() > RECORD_PREFIX_BYTES + RECORD_BYTES_LIMIT {
                    return Err("record longer than the hard record limit".to_string());
                }
                end = offset + FRAGMENT_HEADER_BYTES + fragment.data.len();
                if done {
                    break;
                }
            }
            Cow::Owned(body)
        }
        other => return Err(format!("unexpected {other:?} fragment at offset {offset}")),
    };
    let (prefix, _) = format::decode_record_body(&body)?;
    // The payload is what follows the prefix.
    let payload = match body {
        Cow::Borrowed(body) => Cow::Borrowed(&body[RECORD_PREFIX_BYTES..]),
        Cow::Owned(mut body) => {
            body.drain(..RECORD_PREFIX_BYTES);
            Cow::Owned(body)
        }
    };
    Ok(ScannedRecord {
        prefix,
        offset: start as u64,
        end: end as u64,
        payload,
    })
}

fn to_usize(offset: u64) -> usize {
    usize::try_from(offset).expect("offsets of in-memory files fit usize")
}
