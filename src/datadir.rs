//! The data directory's exclusive lock: one process at a time owns a data directory
//! (its log, snapshots, audit record and operator key hash).
//!
//! As LevelDB and etcd do, the owner holds an exclusive `flock` on a file named `LOCK`
//! in the directory, taken before anything else in it is read and held for the life
//! of the daemon. The kernel releases it when the file is closed or the process dies
//! (kill -9 included), so a `LOCK` file left behind by a dead process never blocks a
//! start; only a live holder does. The holder writes its pid into the file, for the
//! message a second process prints; the pid is informational, the lock is the flock.
//!
//! `flock` is advisory and per open file: a second open of `LOCK` in the same process
//! conflicts too, which is what a second daemon in one test process needs. It does not
//! work across hosts on every network file system; keep a data directory on local disk.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// The lock on a data directory, held until this value is dropped.
#[derive(Debug)]
pub struct DataDirLock {
    /// The open `LOCK` file; closing it releases the flock.
    _file: File,
}

/// Why a data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds the lock.
    #[error(
        "data directory {} is in use by another seatbroker process{}: two daemons on one \
         directory would corrupt its log. Stop the other daemon, or give this one its own \
         --data-dir",
        dir.display(),
        holder_pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Held {
        dir: PathBuf,
        /// The pid the holder wrote into `LOCK`, if it could be read.
        holder_pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock the data directory ({}): {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes the exclusive lock on `data_dir` (which must exist) without waiting, and
/// records this process's pid in the lock file.
pub fn lock(data_dir: &Path) -> Result<DataDirLock, LockError> {
    let path = data_dir.join(LOCK_FILE);
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    // Never truncate on open: before the lock is ours the content is the holder's pid.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error)?;
    if let Err(error) = try_lock_exclusive(&file) {
        if error.kind() == std::io::ErrorKind::WouldBlock {
            return Err(LockError::Held {
                dir: data_dir.to_path_buf(),
                holder_pid: read_pid(&mut file),
            });
        }
        return Err(io_error(error));
    }
    file.set_len(0).map_err(io_error)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_error)?;
    Ok(DataDirLock { _file: file })
}

/// `flock(LOCK_EX | LOCK_NB)`: `WouldBlock` when another open file holds the lock.
fn try_lock_exclusive(file: &File) -> std::io::Result<()> {
    // SAFETY: flock only reads the descriptor, which `file` owns and keeps open.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The pid in a lock file, if it holds one (the holder may not have written it yet).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    // A pid is a few digits; a larger file is not ours to trust.
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_pid_and_a_dropped_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).expect("the first lock");
        match lock(dir.path()) {
            Err(LockError::Held {
                dir: named,
                holder_pid,
            }) => {
                assert_eq!(named, dir.path());
                assert_eq!(holder_pid, Some(std::process::id()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        let again = lock(dir.path()).expect("free after the holder dropped it");
        drop(again);
    }

    #[test]
    fn a_stale_lock_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "4194303\n").unwrap();
        let _held = lock(dir.path()).expect("nobody holds the flock");
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
