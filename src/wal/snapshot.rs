//! Installing a snapshot: write the snapshot file durably, then delete what it
//! makes redundant (segments wholly covered by it, older snapshots). The order is
//! the safety argument: nothing is deleted before the new snapshot is durable, and
//! the active segment is never deleted. A snapshot that cannot be written (no space,
//! no descriptor) is an error returned to the caller, who retries later: nothing
//! depends on it until it is renamed into place.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::Lsn;
use super::error::WalError;
use super::fatal::fatal_io;
use super::format::{self, FileKind};
use super::fs::{self, WalFile};
use super::writer::Shared;

/// Where a snapshot's payload is written, piece by piece, so that a snapshot of a
/// million leases never sits in memory whole.
pub struct SnapshotWriter {
    file: Box<dyn WalFile>,
    length: u64,
    crc: u32,
}

impl SnapshotWriter {
    /// Appends the next piece of the payload.
    pub fn write(&mut self, piece: &[u8]) -> io::Result<()> {
        self.file.append(piece)?;
        self.length += piece.len() as u64;
        self.crc = format::snapshot_crc_append(self.crc, piece);
        Ok(())
    }
}

/// Writes the snapshot file for `lsn`, its payload from `write_payload`: a temporary
/// with room for the header, the payload, the header (its length and checksum now
/// known) at the front, fsync, rename, fsync the directory.
pub(crate) fn write_snapshot<E: From<WalError>>(
    shared: &Shared,
    lsn: Lsn,
    write_payload: impl FnOnce(&mut SnapshotWriter) -> Result<(), E>,
) -> Result<(), E> {
    let path = shared.dir.join(format::snapshot_file_name(lsn));
    let tmp = fs::tmp_path(&path);
    let fs = shared.fs.as_ref();
    let file = fs
        .create(&tmp)
        .map_err(|error| WalError::io("creating", &tmp, error))?;
    let mut writer = SnapshotWriter {
        file,
        length: 0,
        crc: 0,
    };
    let written = writer
        .file
        .append(&[0; format::SNAPSHOT_HEADER_BYTES])
        .map_err(|error| WalError::io("writing", &tmp, error).into())
        .and_then(|()| write_payload(&mut writer))
        .and_then(|()| {
            let header = format::snapshot_header(lsn, writer.length, writer.crc);
            let file = &mut writer.file;
            file.write_at(0, &header)
                .and_then(|()| file.sync_data())
                .map_err(|error| WalError::io("writing and syncing", &tmp, error).into())
        });
    if let Err(error) = written {
        // Nothing refers to the temporary: a failed snapshot loses nothing.
        drop(writer);
        let _ = fs.remove(&tmp);
        return Err(error);
    }
    drop(writer);
    fs.rename(&tmp, &path)
        .map_err(|error| WalError::io("renaming into place", &path, error))?;
    if let Err(error) = shared.dir_handle.sync() {
        fatal_io("directory fsync", &shared.dir, &error);
    }
    shared.counters.snapshot_lsn.store(lsn, Ordering::Release);
    // The records after `lsn` written meanwhile are not counted: `snapshot_due` is a hint.
    shared
        .counters
        .log_bytes_since_snapshot
        .store(0, Ordering::Relaxed);
    shared
        .counters
        .records_since_snapshot
        .store(0, Ordering::Relaxed);
    Ok(())
}

/// Deletes the segments whose records are all at or below `lsn`, and snapshots
/// older than `lsn`, then syncs the directory. A lost delete only leaves a
/// redundant file behind, which recovery ignores and the next snapshot deletes.
pub(crate) fn remove_covered(shared: &Shared, lsn: Lsn) -> Result<(), WalError> {
    let dir = shared.dir.as_path();
    let fs = shared.fs.as_ref();
    {
        let mut segments = shared.segments.lock();
        // Segment i is covered when segment i+1 starts at or before lsn + 1.
        let covered = segments
            .windows(2)
            .take_while(|pair| pair[1] <= lsn + 1)
            .count();
        for &first_lsn in &segments[..covered] {
            remove(fs, &dir.join(format::segment_file_name(first_lsn)))?;
        }
        segments.drain(..covered);
        assert!(!segments.is_empty(), "the active segment is never deleted");
    }
    let names = fs
        .list(dir)
        .map_err(|error| WalError::io("listing", dir, error))?;
    for name in names {
        if let FileKind::Snapshot(older) = format::classify_file_name(&name)
            && older < lsn
        {
            remove(fs, &dir.join(name))?;
        }
    }
    shared
        .dir_handle
        .sync()
        .map_err(|error| WalError::io("syncing", dir, error))
}

fn remove(fs: &dyn super::fs::FileSystem, path: &Path) -> Result<(), WalError> {
    fs.remove(path)
        .map_err(|error| WalError::io("removing", path, error))
}
