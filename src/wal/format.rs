//! The on-disk encoding, and nothing else: pure functions from values to bytes and
//! back. Segment headers, the LevelDB-style block/fragment framing of log records,
//! the record body (LSN and commit-group bounds), snapshot files and file names.
//! `mod.rs` describes the format in prose; this file is its executable form.

use super::Lsn;

/// Size of a block. A fragment never crosses a block boundary, so a reader can always
/// find the next fragment header at a block start (LevelDB `log_format.md`).
pub const BLOCK_BYTES: usize = 32 * 1024;
/// Fragment header: masked CRC-32C (4), payload length (2, LE), fragment type (1).
pub const FRAGMENT_HEADER_BYTES: usize = 7;
/// Segment header: magic (8), first LSN (8, LE), masked CRC-32C of the previous 16 bytes (4), zero (4).
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Record body prefix: LSN (8), LSN minus the first LSN of its commit group (4),
/// last LSN of its commit group minus LSN (4); all little endian.
pub const RECORD_PREFIX_BYTES: usize = 16;
/// Snapshot header: magic (8), LSN (8), payload length (8), payload CRC (4), header CRC (4).
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Sector size assumed for torn-write detection: a write that did not reach the
/// disk shows up as whole zeroed sectors (the unit a disk writes atomically).
pub const SECTOR_BYTES: usize = 512;
/// Hard upper bound on one record's payload, whatever the options say; it also
/// bounds how much memory a damaged length can make the reader assemble.
pub const RECORD_BYTES_LIMIT: usize = 64 * 1024 * 1024;

const SEGMENT_MAGIC: [u8; 8] = *b"SBWALSG1";
const SNAPSHOT_MAGIC: [u8; 8] = *b"SBSNAPS1";
/// LevelDB's CRC mask delta: masking keeps a CRC of data that itself contains CRCs
/// from being trivially valid.
const CRC_MASK_DELTA: u32 = 0xa282_ead8;

const _: () = assert!(FRAGMENT_HEADER_BYTES + RECORD_PREFIX_BYTES < BLOCK_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES + FRAGMENT_HEADER_BYTES < BLOCK_BYTES);
const _: () = assert!(BLOCK_BYTES <= u16::MAX as usize + 1);
const _: () = assert!(BLOCK_BYTES % SECTOR_BYTES == 0);

/// Suffix of files being created; recovery deletes leftovers.
pub const TMP_SUFFIX: &str = ".tmp";
const SEGMENT_SUFFIX: &str = ".wal";
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";

/// The type byte of a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentType {
    /// A whole record in one fragment.
    Full = 1,
    /// The first fragment of a record that continues in the next block.
    First = 2,
    /// A middle fragment.
    Middle = 3,
    /// The last fragment.
    Last = 4,
}

impl FragmentType {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(FragmentType::Full),
            2 => Some(FragmentType::First),
            3 => Some(FragmentType::Middle),
            4 => Some(FragmentType::Last),
            _ => None,
        }
    }
}

/// CRC-32C, masked as in LevelDB.
pub fn masked_crc(parts: &[&[u8]]) -> u32 {
    let crc = parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
    crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA)
}

/// File name of the segment whose first record has LSN `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// File name of the snapshot as of `lsn`.
pub fn snapshot_file_name(lsn: Lsn) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:020}{SNAPSHOT_SUFFIX}")
}

/// What a directory entry is, judged by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A log segment starting at this LSN.
    Segment(Lsn),
    /// A snapshot as of this LSN.
    Snapshot(Lsn),
    /// A leftover of an interrupted create.
    Temporary,
    /// Not ours.
    Unknown,
}

/// Classifies a file name (the inverse of the `*_file_name` functions).
pub fn classify_file_name(name: &str) -> FileKind {
    if name.ends_with(TMP_SUFFIX) {
        return FileKind::Temporary;
    }
    let parse = |digits: &str| {
        (digits.len() == 20)
            .then(|| digits.parse::<Lsn>().ok())
            .flatten()
    };
    if let Some(lsn) = name.strip_suffix(SEGMENT_SUFFIX).and_then(parse) {
        return FileKind::Segment(lsn);
    }
    let snapshot = name
        .strip_prefix(SNAPSHOT_PREFIX)
        .and_then(|rest| rest.strip_suffix(SNAPSHOT_SUFFIX));
    match snapshot.and_then(parse) {
        Some(lsn) => FileKind::Snapshot(lsn),
        None => FileKind::Unknown,
    }
}

/// Encodes the header of a segment whose first record will be `first_lsn`.
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = masked_crc(&[&header[0..16]]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header or a snapshot file is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{what} truncated to {bytes} bytes")]
    Truncated { what: &'static str, bytes: usize },
    #[error("bad {what} magic")]
    BadMagic { what: &'static str },
    #[error("{what} checksum mismatch")]
    ChecksumMismatch { what: &'static str },
    #[error("snapshot payload is {actual} bytes, header says {announced}")]
    PayloadLength { actual: usize, announced: u64 },
}

/// Decodes a segment header, returning its first LSN, or why it is invalid.
pub fn decode_segment_header(bytes: &[u8]) -> Result<Lsn, FormatError> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(FormatError::Truncated {
            what: "segment header",
            bytes: bytes.len(),
        });
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic { what: "segment" });
    }
    let crc = u32::from_le_bytes(le4(&bytes[16..20]));
    if crc != masked_crc(&[&bytes[0..16]]) || bytes[20..24] != [0; 4] {
        return Err(FormatError::ChecksumMismatch {
            what: "segment header",
        });
    }
    Ok(u64::from_le_bytes(le8(&bytes[8..16])))
}

/// The body prefix of one record: where it sits in the LSN order and in its commit group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPrefix {
    /// The record's LSN.
    pub lsn: Lsn,
    /// First LSN of the commit group (one write + one fdatasync) the record was written in.
    pub group_first_lsn: Lsn,
    /// Last LSN of that commit group.
    pub group_last_lsn: Lsn,
}

impl RecordPrefix {
    /// The first LSN of the commit group that follows this record, or of its own
    /// group if the group continues after it.
    pub fn next_expected_group_first(&self) -> Lsn {
        if self.lsn == self.group_last_lsn {
            self.lsn + 1
        } else {
            self.group_first_lsn
        }
    }
}

/// Appends the encoded fragments of one record to `out`. `block_offset` is the
/// position inside the current block where `out` continues; the new position is returned.
pub fn encode_record(
    out: &mut Vec<u8>,
    block_offset: usize,
    prefix: RecordPrefix,
    payload: &[u8],
) -> usize {
    assert!(block_offset <= BLOCK_BYTES);
    assert!(prefix.group_first_lsn <= prefix.lsn && prefix.lsn <= prefix.group_last_lsn);
    let back =
        u32::try_from(prefix.lsn - prefix.group_first_lsn).expect("commit group bounded by u32");
    let forward =
        u32::try_from(prefix.group_last_lsn - prefix.lsn).expect("commit group bounded by u32");
    let mut body = Vec::with_capacity(RECORD_PREFIX_BYTES + payload.len());
    body.extend_from_slice(&prefix.lsn.to_le_bytes());
    body.extend_from_slice(&back.to_le_bytes());
    body.extend_from_slice(&forward.to_le_bytes());
    body.extend_from_slice(payload);
    encode_fragments(out, block_offset, &body)
}

fn encode_fragments(out: &mut Vec<u8>, mut block_offset: usize, body: &[u8]) -> usize {
    let mut rest = body;
    let mut first = true;
    loop {
        let leftover = BLOCK_BYTES - block_offset;
        if leftover < FRAGMENT_HEADER_BYTES {
            // Too small for a header: zero-fill the block trailer, as LevelDB does.
            out.resize(out.len() + leftover, 0);
            block_offset = 0;
        }
        let available = BLOCK_BYTES - block_offset - FRAGMENT_HEADER_BYTES;
        let fragment_len = rest.len().min(available);
        let last = fragment_len == rest.len();
        let fragment_type = match (first, last) {
            (true, true) => FragmentType::Full,
            (true, false) => FragmentType::First,
            (false, false) => FragmentType::Middle,
            (false, true) => FragmentType::Last,
        };
        let length = u16::try_from(fragment_len)
            .expect("fragment fits a block")
            .to_le_bytes();
        let type_byte = [fragment_type as u8];
        let crc = masked_crc(&[&type_byte, &length, &rest[..fragment_len]]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&length);
        out.extend_from_slice(&type_byte);
        out.extend_from_slice(&rest[..fragment_len]);
        block_offset += FRAGMENT_HEADER_BYTES + fragment_len;
        rest = &rest[fragment_len..];
        first = false;
        if last {
            return block_offset;
        }
    }
}

/// One fragment as found in a file.
#[derive(Clone, Copy, Debug)]
pub struct Fragment<'a> {
    /// Its type.
    pub fragment_type: FragmentType,
    /// Its payload (a slice of the record body).
    pub data: &'a [u8],
}

/// Why no valid fragment starts at an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragmentError {
    /// The file ends inside the fragment (header or payload).
    Incomplete,
    /// The bytes are not a valid fragment (type, length or checksum).
    Invalid(&'static str),
}

/// Decodes the fragment at `offset` of `file`. The caller guarantees that at least a
/// header fits in the block at `offset` (trailers are skipped before calling).
pub fn decode_fragment(file: &[u8], offset: usize) -> Result<Fragment<'_>, FragmentError> {
    let block_left = BLOCK_BYTES - offset % BLOCK_BYTES;
    debug_assert!(block_left >= FRAGMENT_HEADER_BYTES);
    let Some(header) = file.get(offset..offset + FRAGMENT_HEADER_BYTES) else {
        return Err(FragmentError::Incomplete);
    };
    let Some(fragment_type) = FragmentType::from_byte(header[6]) else {
        return Err(FragmentError::Invalid("unknown fragment type"));
    };
    let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
    if FRAGMENT_HEADER_BYTES + length > block_left {
        return Err(FragmentError::Invalid(
            "fragment length crosses the block boundary",
        ));
    }
    let start = offset + FRAGMENT_HEADER_BYTES;
    let Some(data) = file.get(start..start + length) else {
        return Err(FragmentError::Incomplete);
    };
    let crc = u32::from_le_bytes(le4(&header[0..4]));
    if crc != masked_crc(&[&header[6..7], &header[4..6], data]) {
        return Err(FragmentError::Invalid("fragment checksum mismatch"));
    }
    Ok(Fragment {
        fragment_type,
        data,
    })
}

/// Splits an assembled record body into its prefix and payload.
pub fn decode_record_body(body: &[u8]) -> Result<(RecordPrefix, &[u8]), &'static str> {
    if body.len() < RECORD_PREFIX_BYTES {
        return Err("record body shorter than its prefix");
    }
    let lsn = u64::from_le_bytes(le8(&body[0..8]));
    let back = u64::from(u32::from_le_bytes(le4(&body[8..12])));
    let forward = u64::from(u32::from_le_bytes(le4(&body[12..16])));
    let (Some(group_first_lsn), Some(group_last_lsn)) =
        (lsn.checked_sub(back), lsn.checked_add(forward))
    else {
        return Err("record commit-group bounds overflow");
    };
    let prefix = RecordPrefix {
        lsn,
        group_first_lsn,
        group_last_lsn,
    };
    Ok((prefix, &body[RECORD_PREFIX_BYTES..]))
}

/// Encodes a complete snapshot file (tests; the log writes header and payload apart).
#[cfg(test)]
pub fn encode_snapshot(lsn: Lsn, payload: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    file.extend_from_slice(&encode_snapshot_header(lsn, payload));
    file.extend_from_slice(payload);
    file
}

/// Encodes the header of the snapshot file of `payload` as of `lsn`; the payload
/// follows it.
#[cfg(test)]
pub fn encode_snapshot_header(lsn: Lsn, payload: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let crc = crc32c::crc32c_append(0, payload);
    snapshot_header(lsn, payload.len() as u64, crc)
}

/// The CRC-32C of a snapshot payload, extended by its next piece (start from 0).
pub fn snapshot_crc_append(crc: u32, piece: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, piece)
}

/// The header of a snapshot of `length` payload bytes whose CRC-32C (unmasked, see
/// [`snapshot_crc_append`]) is `payload_crc`.
pub fn snapshot_header(lsn: Lsn, length: u64, payload_crc: u32) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let masked = payload_crc.rotate_right(15).wrapping_add(CRC_MASK_DELTA);
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16..24].copy_from_slice(&length.to_le_bytes());
    header[24..28].copy_from_slice(&masked.to_le_bytes());
    let header_crc = masked_crc(&[&header[0..28]]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
    header
}

/// Decodes a snapshot file, returning its LSN and payload, or why it is invalid.
pub fn decode_snapshot(file: &[u8]) -> Result<(Lsn, &[u8]), FormatError> {
    if file.len() < SNAPSHOT_HEADER_BYTES {
        return Err(FormatError::Truncated {
            what: "snapshot",
            bytes: file.len(),
        });
    }
    if file[0..8] != SNAPSHOT_MAGIC {
        return Err(FormatError::BadMagic { what: "snapshot" });
    }
    if u32::from_le_bytes(le4(&file[28..32])) != masked_crc(&[&file[0..28]]) {
        return Err(FormatError::ChecksumMismatch {
            what: "snapshot header",
        });
    }
    let lsn = u64::from_le_bytes(le8(&file[8..16]));
    let length = u64::from_le_bytes(le8(&file[16..24]));
    let payload = &file[SNAPSHOT_HEADER_BYTES..];
    if payload.len() as u64 != length {
        return Err(FormatError::PayloadLength {
            actual: payload.len(),
            announced: length,
        });
    }
    if u32::from_le_bytes(le4(&file[24..28])) != masked_crc(&[payload]) {
        return Err(FormatError::ChecksumMismatch {
            what: "snapshot payload",
        });
    }
    Ok((lsn, payload))
}

fn le4(bytes: &[u8]) -> [u8; 4] {
    bytes.try_into().expect("caller slices 4 bytes")
}

fn le8(bytes: &[u8]) -> [u8; 8] {
    bytes.try_into().expect("caller slices 8 bytes")
}
