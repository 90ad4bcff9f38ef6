//! The WAL's error type: every way `open`, `submit`, `install_snapshot` and a
//! `DurableTicket` can fail. Write and fsync failures are not here: they abort the
//! process (see `fatal.rs`), because an unacknowledged state after a failed fsync
//! cannot be trusted.

use std::io;
use std::path::{Path, PathBuf};

use super::Lsn;

/// Why a WAL operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Too many records are submitted but not yet durable; the caller should shed load.
    #[error(
        "WAL overloaded: {pending_records} records are waiting to be made durable (bound {queue_records_max})"
    )]
    Overloaded {
        /// Records assigned an LSN whose fsync has not completed yet.
        pending_records: u64,
        /// The configured bound, `WalOptions::queue_records_max`.
        queue_records_max: usize,
    },
    /// A record is bigger than `WalOptions::record_bytes_max`.
    #[error("WAL record of {record_bytes} bytes exceeds the bound of {record_bytes_max} bytes")]
    RecordTooLarge {
        /// Size of the refused record.
        record_bytes: usize,
        /// The configured bound.
        record_bytes_max: usize,
    },
    /// The log cannot reserve room for what comes next (a full disk, no descriptor
    /// for the next segment): new awaited records are not admitted until it can.
    #[error(transparent)]
    Alarm(#[from] Alarm),
    /// `close` was called; no record is accepted any more.
    #[error("WAL is closed")]
    Closed,
    /// The writer thread stopped without making this record durable (it panicked).
    #[error("WAL writer stopped before the record was made durable")]
    WriterStopped,
    /// The options are inconsistent or outside the hard limits.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// `install_snapshot` was called with an LSN that cannot be snapshotted.
    #[error("cannot install a snapshot at lsn {lsn}: {reason}")]
    SnapshotRefused {
        /// The LSN passed by the caller.
        lsn: Lsn,
        /// Why it was refused.
        reason: String,
    },
    /// The on-disk log is damaged in a way that is not a torn tail. Recovery refuses
    /// to guess; the message tells the operator where and how to proceed.
    #[error(
        "WAL corruption in {file} at byte offset {offset}: {detail}. Refusing to start, because \
         replaying past this point could silently drop acknowledged records. To proceed: restore \
         the WAL directory from a backup; or, if you accept losing every record from this point \
         on, keep a copy of the directory, truncate {file} to {offset} bytes \
         (`truncate -s {offset} <file>`) and move any later segment files aside, then restart."
    )]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first damaged or unexpected byte in `file`.
        offset: u64,
        /// What exactly is wrong.
        detail: String,
    },
    /// An I/O operation other than a write or fsync failed (open, list, rename, remove).
    #[error("WAL I/O error while {context} {path}: {source}")]
    Io {
        /// What the WAL was doing.
        context: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl WalError {
    /// Wraps an I/O error with what was being done and on which path.
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// A corruption error at `offset` of `file`.
    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        WalError::Corrupt {
            file: file.into(),
            offset,
            detail: detail.into(),
        }
    }
}

/// Why the log refuses new records for now. The writer raises it when it cannot
/// reserve room on disk ahead of the appends (the zeros written ahead of them, the
/// next segment), and clears it by itself once a retry succeeds, like etcd's NOSPACE
/// alarm but without an operator's disarm.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Alarm {
    /// The file system is full (ENOSPC or EDQUOT).
    #[error(
        "disk full: the log cannot reserve space for new records ({detail}); free space on \
         the data directory's file system and writes resume by themselves"
    )]
    DiskFull {
        /// The failed operation, path and error.
        detail: String,
    },
    /// Any other failure to reserve room, such as no descriptor left for the next
    /// segment (EMFILE).
    #[error(
        "the log cannot reserve room for new records ({detail}); writes resume by themselves \
         once it can"
    )]
    NoRoom {
        /// The failed operation, path and error.
        detail: String,
    },
}

impl Alarm {
    /// The alarm for a failed reservation: `DiskFull` for ENOSPC and EDQUOT.
    pub(crate) fn from_io(operation: &str, path: &Path, error: &io::Error) -> Self {
        let detail = format!("{operation} {}: {error}", path.display());
        match error.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Alarm::DiskFull { detail },
            _ => Alarm::NoRoom { detail },
        }
    }

    /// True for a full disk.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Alarm::DiskFull { .. })
    }
}
