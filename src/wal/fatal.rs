//! The one way out after a failed write or fsync: log, then abort the process.
//!
//! After a failed fsync the kernel may have dropped the dirty pages and cleared the
//! error (PostgreSQL's "fsyncgate"), so a retry can report success for data that is
//! gone. The WAL therefore never retries and never acknowledges: it aborts, and
//! recovery on restart decides from what is really on disk.
//!
//! With the cargo feature `failpoints`, two test hooks exist:
//! - `SEATBROKER_FAILPOINT=wal-fsync-fail-after:N` (read by `Wal::open`): the first
//!   `N` commit-group fdatasyncs succeed and every later one fails, so the process
//!   aborts on sync number `N + 1` (`N = 0`: the first record submitted aborts).
//! - `set_abort_hook`: a function called instead of aborting right away (a test can
//!   record the message and panic to unwind the writer thread).
//! - `SEATBROKER_FAILPOINT_WAL_SEGMENT_BYTES=N` (read by `Wal::open`): segments of `N`
//!   bytes instead of the default, so that tests of the real binary rotate often.
//! - `SEATBROKER_FAILPOINT_WAL_DISK_FULL_WHILE=PATH` (read by `Wal::open`): while a
//!   file exists at `PATH`, writing zeros ahead and creating files in the WAL fail
//!   with ENOSPC, as on a full disk (for machines where a test cannot mount a small
//!   file system).
//!
//! Only a failed write or fsync of data is fatal. Failing to reserve room ahead of
//! the appends (zeros, the next segment: ENOSPC, EMFILE) raises the log's `Alarm`
//! instead (see `writer.rs`), and a failed snapshot is retried later.

use std::io;
use std::path::Path;

/// Logs the failed operation and aborts the process. Never returns.
pub(crate) fn fatal_io(operation: &str, path: &Path, error: &io::Error) -> ! {
    let message = format!(
        "WAL {operation} failed on {}: {error}; aborting",
        path.display()
    );
    tracing::error!(operation, path = %path.display(), %error, "WAL write or fsync failed; aborting the process (never retried, never acknowledged)");
    #[cfg(feature = "failpoints")]
    hook::run(&message);
    let _ = message;
    std::process::abort()
}

/// Name of the environment variable that sets the segment size in `failpoints` builds.
pub const SEGMENT_BYTES_FAILPOINT_ENV: &str = "SEATBROKER_FAILPOINT_WAL_SEGMENT_BYTES";

/// `options` with `segment_bytes_max` from `SEATBROKER_FAILPOINT_WAL_SEGMENT_BYTES`, in
/// `failpoints` builds only (`Wal::open` validates it like any option).
pub(crate) fn segment_bytes_failpoint(mut options: super::WalOptions) -> super::WalOptions {
    if !cfg!(feature = "failpoints") {
        return options;
    }
    let bytes = std::env::var(SEGMENT_BYTES_FAILPOINT_ENV)
        .ok()
        .and_then(|text| text.trim().parse().ok());
    if let Some(bytes) = bytes {
        options.segment_bytes_max = bytes;
    }
    options
}

/// Name of the environment variable of the simulated full disk.
#[cfg(feature = "failpoints")]
pub const DISK_FULL_FAILPOINT_ENV: &str = "SEATBROKER_FAILPOINT_WAL_DISK_FULL_WHILE";

/// `fs`, wrapped to fail like a full disk while the file named by
/// `SEATBROKER_FAILPOINT_WAL_DISK_FULL_WHILE` exists, in `failpoints` builds only.
pub(crate) fn disk_full_failpoint(
    fs: std::sync::Arc<dyn super::FileSystem>,
) -> std::sync::Arc<dyn super::FileSystem> {
    #[cfg(feature = "failpoints")]
    if let Ok(marker) = std::env::var(DISK_FULL_FAILPOINT_ENV) {
        return std::sync::Arc::new(full_disk::FullWhile {
            inner: fs,
            marker: marker.into(),
        });
    }
    fs
}

#[cfg(feature = "failpoints")]
mod full_disk {
    use std::io;
    use std::ops::Range;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use crate::wal::fs::{FileSystem, WalDir, WalFile};

    /// A file system that is full while `marker` exists.
    #[derive(Debug)]
    pub(super) struct FullWhile {
        pub inner: Arc<dyn FileSystem>,
        pub marker: PathBuf,
    }

    fn check(marker: &Path) -> io::Result<()> {
        if marker.exists() {
            // Linux's ENOSPC.
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    /// A file whose zeros ahead fail while the disk is "full"; appends (into zeros
    /// already written, as the writer makes sure) go through.
    struct FullWhileFile {
        inner: Box<dyn WalFile>,
        marker: PathBuf,
    }

    impl WalFile for FullWhileFile {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.inner.append(bytes)
        }
        fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
            self.inner.write_at(offset, bytes)
        }
        fn preallocate(&mut self, range: Range<u64>) -> io::Result<()> {
            check(&self.marker)?;
            self.inner.preallocate(range)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn set_len(&mut self, length: u64) -> io::Result<()> {
            self.inner.set_len(length)
        }
    }

    impl FullWhile {
        fn wrap(&self, inner: Box<dyn WalFile>) -> Box<dyn WalFile> {
            Box::new(FullWhileFile {
                inner,
                marker: self.marker.clone(),
            })
        }
    }

    impl FileSystem for FullWhile {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.inner.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.inner.list(dir)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.inner.read(path)
        }
        fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
            check(&self.marker)?;
            Ok(self.wrap(self.inner.create(path)?))
        }
        fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WalFile>> {
            Ok(self.wrap(self.inner.open_at(path, offset)?))
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.inner.rename(from, to)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.inner.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.inner.sync_dir(dir)
        }
        fn open_dir(&self, dir: &Path) -> io::Result<Box<dyn WalDir>> {
            self.inner.open_dir(dir)
        }
    }
}

/// The fsync failpoint of one WAL: which commit-group sync fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FsyncFailpoint {
    /// Syncs that succeed before every later one fails; `None`: never fail.
    pub syncs_ok_max: Option<u64>,
    /// Syncs done so far.
    pub syncs_done: u64,
}

/// Name of the environment variable read by `Wal::open` in `failpoints` builds.
pub const FAILPOINT_ENV: &str = "SEATBROKER_FAILPOINT";
const FSYNC_FAILPOINT_PREFIX: &str = "wal-fsync-fail-after:";

impl FsyncFailpoint {
    /// The failpoint configured by `SEATBROKER_FAILPOINT`, in `failpoints` builds only.
    pub(crate) fn from_env() -> Self {
        if !cfg!(feature = "failpoints") {
            return Self::default();
        }
        match std::env::var(FAILPOINT_ENV) {
            Ok(value) => Self::parse(&value),
            Err(_) => Self::default(),
        }
    }

    /// Parses `wal-fsync-fail-after:N`; anything else disables the failpoint.
    pub(crate) fn parse(value: &str) -> Self {
        let syncs_ok_max = value
            .strip_prefix(FSYNC_FAILPOINT_PREFIX)
            .and_then(|n| n.trim().parse().ok());
        if syncs_ok_max.is_none() {
            tracing::warn!(value, "ignoring unrecognised {FAILPOINT_ENV}");
        }
        Self {
            syncs_ok_max,
            syncs_done: 0,
        }
    }

    /// Called before each commit-group sync: the injected error, if this one must fail.
    pub(crate) fn before_sync(&mut self) -> Option<io::Error> {
        let limit = self.syncs_ok_max?;
        if self.syncs_done >= limit {
            return Some(io::Error::other(format!(
                "failpoint {FSYNC_FAILPOINT_PREFIX}{limit}"
            )));
        }
        self.syncs_done += 1;
        None
    }
}

#[cfg(feature = "failpoints")]
pub use hook::set_abort_hook;

#[cfg(feature = "failpoints")]
mod hook {
    use parking_lot::Mutex;

    /// The installed hook, if any.
    static ABORT_HOOK: Mutex<Option<fn(&str)>> = Mutex::new(None);

    /// Installs a function that `fatal_io` calls with its message before aborting.
    /// If it panics, the panic unwinds the failing thread instead of aborting.
    /// Only in `failpoints` builds; for tests.
    pub fn set_abort_hook(hook: fn(&str)) {
        *ABORT_HOOK.lock() = Some(hook);
    }

    pub(super) fn run(message: &str) {
        let hook = *ABORT_HOOK.lock();
        if let Some(hook) = hook {
            hook(message);
        }
    }
}
