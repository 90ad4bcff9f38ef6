//! The narrow storage interface the WAL is written against, and its real
//! implementation on `std::fs`. `simulated.rs` holds the power-loss simulator used
//! by the tests. Only these operations exist, so every durability step is visible
//! at the call site: data is durable after `WalFile::sync_data`, a directory
//! entry (create, rename, remove) after `FileSystem::sync_dir` or
//! `WalDir::sync` (a directory kept open, so that syncing it needs no new
//! descriptor when the process has none left).

mod simulated;

pub use simulated::SimulatedDisk;

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// An open file the WAL appends to.
pub trait WalFile: Send {
    /// Writes all of `bytes` at the append position and moves it past them (not
    /// durable yet). The position starts where the file was opened or created.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Writes all of `bytes` at `offset`, before the append position, without moving
    /// it (not durable yet): a header filled in once what follows it is known.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Writes zeros over `range`, which lies at or after the append position, without
    /// moving it (not durable until `sync_data`). Appends that later overwrite these
    /// zeros leave the file size unchanged, so their fdatasync flushes data only.
    fn preallocate(&mut self, range: Range<u64>) -> io::Result<()>;
    /// Makes the file's data and size durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Truncates (or extends with zeros) the file to `length` bytes; later appends
    /// continue at `length`. Not durable until `sync_data`.
    fn set_len(&mut self, length: u64) -> io::Result<()>;
}

/// A directory kept open for syncing its entries.
pub trait WalDir: Send + Sync + Debug {
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync(&self) -> io::Result<()>;
}

/// The directory operations the WAL needs.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates (or truncates) the file at `path` for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Opens the existing file at `path` with the append position at `offset`; what
    /// follows it is overwritten by appends.
    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WalFile>>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory entries of `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Opens `dir` and keeps it open for [`WalDir::sync`].
    fn open_dir(&self, dir: &Path) -> io::Result<Box<dyn WalDir>>;
}

/// An open directory of the real file system.
#[derive(Debug)]
struct RealDir {
    /// The directory, opened read-only (fsync works on it all the same).
    file: File,
}

impl WalDir for RealDir {
    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// The real file system, with real `fdatasync` and directory `fsync`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

/// A `std::fs::File` behind the `WalFile` interface.
struct RealFile {
    /// The open file; appends go to its cursor, the append position.
    file: File,
}

impl WalFile for RealFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        // Positional writes leave the cursor, which is the append position.
        self.file.write_all_at(bytes, offset)
    }

    fn preallocate(&mut self, range: Range<u64>) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = range.start;
        while at < range.end {
            let piece = (range.end - at).min(ZEROS.len() as u64);
            // Positional writes leave the cursor, which is the append position.
            self.file.write_all_at(&ZEROS[..piece as usize], at)?;
            at += piece;
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&mut self, length: u64) -> io::Result<()> {
        self.file.set_len(length)?;
        self.file.seek(SeekFrom::Start(length)).map(|_| ())
    }
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(RealFile { file }))
    }

    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WalFile>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(RealFile { file }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn open_dir(&self, dir: &Path) -> io::Result<Box<dyn WalDir>> {
        Ok(Box::new(RealDir {
            file: File::open(dir)?,
        }))
    }
}

/// Path of the temporary file a new `path` is written to before its rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(super::format::TMP_SUFFIX);
    PathBuf::from(name)
}

/// A failed step of [`write_through_temporary`]: what was being done, to which file.
#[derive(Debug)]
pub struct WriteStepError {
    pub step: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Writes `content` (its pieces back to back) to a temporary beside `path`, makes it
/// durable and renames it to `path`, so that after a crash `path` holds either what it
/// held before (or nothing) or exactly `content`. The rename is durable once the
/// caller has synced the directory. A failure before the rename removes the
/// temporary (nothing refers to it). The one way the daemon writes a whole file: the
/// log's segments, the operator key's hash.
pub fn write_through_temporary(
    fs: &dyn FileSystem,
    path: &Path,
    content: &[&[u8]],
) -> Result<Box<dyn WalFile>, WriteStepError> {
    let tmp = tmp_path(path);
    let failed = |step, path: &Path, source| WriteStepError {
        step,
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs
        .create(&tmp)
        .map_err(|error| failed("creating", &tmp, error))?;
    let written = content.iter().try_for_each(|piece| file.append(piece));
    if let Err(error) = written.and_then(|()| file.sync_data()) {
        drop(file);
        let _ = fs.remove(&tmp);
        return Err(failed("writing and syncing", &tmp, error));
    }
    fs.rename(&tmp, path)
        .map_err(|error| failed("renaming into place", path, error))?;
    Ok(file)
}

/// Measures the raw `write(512 bytes) + fdatasync` rate of the file system holding
/// `dir`, in syncs per second, over `syncs` iterations. The ceiling for a WAL that
/// syncs once per record; a baseline for the benchmark ratios.
pub fn bench_raw_fsync_rate(dir: &Path, syncs: u32) -> io::Result<f64> {
    assert!(syncs > 0);
    let path = dir.join("raw-fsync-probe.tmp");
    let mut file = RealFs.create(&path)?;
    let block = [0x5au8; 512];
    let started = Instant::now();
    for _ in 0..syncs {
        file.append(&block)?;
        file.sync_data()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(f64::from(syncs) / seconds.max(f64::MIN_POSITIVE))
}
