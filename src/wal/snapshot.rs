//! Installing a snapshot: write the snapshot file durably, then delete what it
//! makes redundant (segments wholly covered by it, older snapshots). The order is
//! the safety argument: nothing is deleted before the new snapshot is durable, and
//! the active segment is never deleted. A snapshot that cannot be written (no space,
//! no descriptor) is an error returned to the caller, who retries later: nothing
//! depends on it until it is renamed into place.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::Lsn;
use super::error::WalError;
use super::format::{self, FileKind};
use super::writer::{Shared, create_durable_file};

/// Writes the snapshot file for `lsn` (temporary, write, fsync, rename, fsync dir).
pub(crate) fn write_snapshot(shared: &Shared, lsn: Lsn, bytes: &[u8]) -> Result<(), WalError> {
    let path = shared.dir.join(format::snapshot_file_name(lsn));
    let sync_dir = || shared.dir_handle.sync();
    create_durable_file(
        shared.fs.as_ref(),
        &sync_dir,
        &path,
        // The header and the payload as they are: no copy of a snapshot that can
        // hold a million leases.
        &[&format::encode_snapshot_header(lsn, bytes), bytes],
    )?;
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
