//! `SimulatedDisk`: an in-memory file system that remembers, for every file and
//! directory entry, what is durable and what is only in the (simulated) page cache,
//! and can produce a post-power-loss state from a seed. Used by the tests to check
//! the WAL's durability contract without real crashes.
//!
//! The crash model is deliberately harsher than most real disks: every write not
//! covered by a later `sync_data` survives or not independently per aligned
//! 512-byte sector (so a later sector may survive where an earlier one did not, and
//! a lost sector inside the new file size reads as zeros); an unsynced `set_len`
//! survives or not; every directory operation not covered by a later `sync_dir`
//! survives or not, independently, applied in order (impossible ones are skipped).
//! The same state and seed always give the same result.
//!
//! Two faults of a running system can be switched on: a capacity (writes that would
//! make the files longer than it fail with ENOSPC, as on a full disk) and descriptor
//! exhaustion (opening a file or directory fails with EMFILE).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{FileSystem, WalDir, WalFile};
use crate::wal::format::SECTOR_BYTES;

/// The simulated disk. Cloning shares the disk.
#[derive(Clone, Debug, Default)]
pub struct SimulatedDisk {
    /// All state behind one lock: the simulator favours obviousness over speed.
    state: Arc<Mutex<DiskState>>,
}

/// Everything the disk knows.
#[derive(Debug, Default)]
struct DiskState {
    /// File contents, indexed by inode number; never shrinks (inodes are not reused).
    inodes: Vec<Inode>,
    /// Directory entries as the running system sees them.
    volatile_entries: BTreeMap<PathBuf, usize>,
    /// Directory entries that survive a crash.
    durable_entries: BTreeMap<PathBuf, usize>,
    /// Directory operations since the last `sync_dir` of their directory, in order.
    pending_dir_ops: Vec<DirOp>,
    /// Incremented by every crash; handles opened before it are dead.
    epoch: u64,
    /// `sync_data` calls so far, for tests.
    syncs: u64,
    /// Bytes the named files may hold together; `None`: unbounded.
    capacity_bytes: Option<usize>,
    /// Every open fails with EMFILE while set.
    descriptors_exhausted: bool,
}

impl DiskState {
    /// Bytes held by the files that have a name.
    fn used_bytes(&self) -> usize {
        let mut inodes: Vec<usize> = self.volatile_entries.values().copied().collect();
        inodes.sort_unstable();
        inodes.dedup();
        inodes.iter().map(|&i| self.inodes[i].volatile.len()).sum()
    }

    /// ENOSPC when growing `inode` to `length` bytes would pass the capacity.
    fn check_growth(&self, inode: usize, length: usize) -> io::Result<()> {
        let Some(capacity) = self.capacity_bytes else {
            return Ok(());
        };
        let growth = length.saturating_sub(self.inodes[inode].volatile.len());
        if growth > 0 && self.used_bytes() + growth > capacity {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }

    /// EMFILE while descriptors are exhausted.
    fn check_open(&self) -> io::Result<()> {
        if self.descriptors_exhausted {
            return Err(io::Error::from_raw_os_error(EMFILE));
        }
        Ok(())
    }
}

/// Linux's "No space left on device".
const ENOSPC: i32 = 28;
/// Linux's "Too many open files".
const EMFILE: i32 = 24;

/// One file's content.
#[derive(Debug, Default)]
struct Inode {
    /// Content as the running system reads it.
    volatile: Vec<u8>,
    /// Content that survives a crash.
    durable: Vec<u8>,
    /// Changes since the last `sync_data`, in order.
    pending: Vec<PendingWrite>,
}

/// An unsynced change to a file.
#[derive(Clone, Debug)]
enum PendingWrite {
    /// `bytes` written at `offset`.
    Write { offset: usize, bytes: Vec<u8> },
    /// Size set to `length`.
    SetLen { length: usize },
}

/// An unsynced directory operation.
#[derive(Clone, Debug)]
enum DirOp {
    /// `path` now names `inode`.
    Link { path: PathBuf, inode: usize },
    /// `path` removed.
    Unlink { path: PathBuf },
    /// `from` renamed to `to`.
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => path.parent(),
            DirOp::Rename { to, .. } => to.parent(),
        }
    }

    fn apply(&self, entries: &mut BTreeMap<PathBuf, usize>) {
        match self {
            DirOp::Link { path, inode } => {
                entries.insert(path.clone(), *inode);
            }
            DirOp::Unlink { path } => {
                entries.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = entries.remove(from) {
                    entries.insert(to.clone(), inode);
                }
            }
        }
    }
}

impl PendingWrite {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            PendingWrite::Write { offset, bytes } => write_at(content, *offset, bytes),
            PendingWrite::SetLen { length } => content.resize(*length, 0),
        }
    }
}

fn write_at(content: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    let end = offset + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset..end].copy_from_slice(bytes);
}

/// SplitMix64: a tiny deterministic generator, so a crash depends only on its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// How the unsynced writes of one crash are treated, chosen per crash so that
/// "nothing survived" and "everything survived" are as likely as a random mix.
#[derive(Clone, Copy)]
enum Survival {
    None,
    All,
    PerSector,
}

impl SimulatedDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: replaces the whole state with what survives, decided
    /// by `seed`. Handles opened before the crash become inert (their writes and
    /// syncs do nothing), like a process that died with the machine.
    pub fn crash(&self, seed: u64) {
        let mut state = self.state.lock();
        let mut rng = SplitMix64(seed);
        let survival = match rng.next() % 3 {
            0 => Survival::None,
            1 => Survival::All,
            _ => Survival::PerSector,
        };
        let mut entries = state.durable_entries.clone();
        for op in std::mem::take(&mut state.pending_dir_ops) {
            if survives(survival, &mut rng) {
                op.apply(&mut entries);
            }
        }
        for inode in &mut state.inodes {
            let mut content = std::mem::take(&mut inode.durable);
            for pending in std::mem::take(&mut inode.pending) {
                apply_after_crash(&pending, &mut content, survival, &mut rng);
            }
            inode.volatile = content.clone();
            inode.durable = content;
        }
        state.volatile_entries = entries.clone();
        state.durable_entries = entries;
        state.epoch += 1;
    }

    /// Total `sync_data` calls made on this disk.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Bounds the bytes the files may hold together (`None`: unbounded); a write that
    /// would pass it fails with ENOSPC, as on a full disk.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity_bytes = bytes.map(|b| usize::try_from(b).unwrap_or(usize::MAX));
    }

    /// Bytes the named files hold now.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used_bytes() as u64
    }

    /// While `exhausted`, opening a file or directory fails with EMFILE, as in a
    /// process out of descriptors.
    pub fn set_descriptors_exhausted(&self, exhausted: bool) {
        self.state.lock().descriptors_exhausted = exhausted;
    }

    /// Overwrites bytes of an existing file, durably, bypassing the page-cache model:
    /// for tests that damage a log on purpose.
    pub fn corrupt(&self, path: &Path, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        let inode = lookup(&state, path)?;
        let file = &mut state.inodes[inode];
        write_at(&mut file.volatile, offset, bytes);
        write_at(&mut file.durable, offset, bytes);
        Ok(())
    }

    /// Durably truncates an existing file, for tests that cut a log on purpose.
    pub fn cut(&self, path: &Path, length: usize) -> io::Result<()> {
        let mut state = self.state.lock();
        let inode = lookup(&state, path)?;
        let file = &mut state.inodes[inode];
        file.volatile.truncate(length);
        file.durable.truncate(length);
        Ok(())
    }
}

fn survives(survival: Survival, rng: &mut SplitMix64) -> bool {
    match survival {
        Survival::None => false,
        Survival::All => true,
        Survival::PerSector => rng.coin(),
    }
}

fn apply_after_crash(
    pending: &PendingWrite,
    content: &mut Vec<u8>,
    survival: Survival,
    rng: &mut SplitMix64,
) {
    let PendingWrite::Write { offset, bytes } = pending else {
        if survives(survival, rng) {
            pending.apply(content);
        }
        return;
    };
    // Split the write at absolute sector boundaries; each piece lives or dies alone.
    let mut start = *offset;
    let end = offset + bytes.len();
    while start < end {
        let piece_end = ((start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
        if survives(survival, rng) {
            write_at(content, start, &bytes[start - offset..piece_end - offset]);
        }
        start = piece_end;
    }
}

fn lookup(state: &DiskState, path: &Path) -> io::Result<usize> {
    state.volatile_entries.get(path).copied().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        )
    })
}

/// An open file on the simulated disk.
struct SimFile {
    /// The disk.
    state: Arc<Mutex<DiskState>>,
    /// Which file.
    inode: usize,
    /// The disk epoch at open; a crash makes the handle inert.
    epoch: u64,
    /// Where the next append lands.
    position: usize,
}

impl SimFile {
    fn with_live_inode(&self, change: impl FnOnce(&mut DiskState)) {
        let mut state = self.state.lock();
        if state.epoch == self.epoch {
            change(&mut state);
        }
    }

    /// ENOSPC when writing up to `end` would pass the disk's capacity.
    fn check_growth(&self, end: usize) -> io::Result<()> {
        let state = self.state.lock();
        if state.epoch != self.epoch {
            return Ok(());
        }
        state.check_growth(self.inode, end)
    }
}

impl SimFile {
    /// Writes `bytes` at `offset` into the volatile content, pending until a sync.
    fn write_volatile(&mut self, offset: usize, bytes: &[u8]) {
        let inode = self.inode;
        self.with_live_inode(|state| {
            let file = &mut state.inodes[inode];
            write_at(&mut file.volatile, offset, bytes);
            file.pending.push(PendingWrite::Write {
                offset,
                bytes: bytes.to_vec(),
            });
        });
    }
}

impl WalFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check_growth(self.position + bytes.len())?;
        let offset = self.position;
        self.position += bytes.len();
        self.write_volatile(offset, bytes);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        assert!(
            offset + bytes.len() <= self.position,
            "write_at is for bytes before the append position"
        );
        self.write_volatile(offset, bytes);
        Ok(())
    }

    fn preallocate(&mut self, range: std::ops::Range<u64>) -> io::Result<()> {
        let start = usize::try_from(range.start).map_err(io::Error::other)?;
        let requested_end = usize::try_from(range.end).map_err(io::Error::other)?;
        let inode = self.inode;
        let mut outcome = Ok(());
        self.with_live_inode(|state| {
            // Like a real write on a disk that fills up: the zeros that fit are
            // written, then ENOSPC.
            let mut end = requested_end;
            if let Err(error) = state.check_growth(inode, end) {
                let others = state.used_bytes() - state.inodes[inode].volatile.len();
                let capacity = state.capacity_bytes.unwrap_or(usize::MAX);
                end = capacity.saturating_sub(others).max(start).min(end);
                outcome = Err(error);
            }
            let file = &mut state.inodes[inode];
            let zeros = vec![0; end.saturating_sub(start)];
            write_at(&mut file.volatile, start, &zeros);
            file.pending.push(PendingWrite::Write {
                offset: start,
                bytes: zeros,
            });
        });
        outcome
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let inode = self.inode;
        self.with_live_inode(|state| {
            state.syncs += 1;
            let file = &mut state.inodes[inode];
            for pending in std::mem::take(&mut file.pending) {
                pending.apply(&mut file.durable);
            }
            debug_assert_eq!(file.durable, file.volatile);
        });
        Ok(())
    }

    fn set_len(&mut self, length: u64) -> io::Result<()> {
        let length = usize::try_from(length).map_err(io::Error::other)?;
        self.check_growth(length)?;
        let inode = self.inode;
        self.position = length;
        self.with_live_inode(|state| {
            let file = &mut state.inodes[inode];
            file.volatile.resize(length, 0);
            file.pending.push(PendingWrite::SetLen { length });
        });
        Ok(())
    }
}

impl FileSystem for SimulatedDisk {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        let names = state
            .volatile_entries
            .keys()
            .filter(|path| path.parent() == Some(dir));
        Ok(names
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state.lock();
        let inode = lookup(&state, path)?;
        Ok(state.inodes[inode].volatile.clone())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut state = self.state.lock();
        state.check_open()?;
        let inode = state.inodes.len();
        state.inodes.push(Inode::default());
        state.volatile_entries.insert(path.to_path_buf(), inode);
        let op = DirOp::Link {
            path: path.to_path_buf(),
            inode,
        };
        state.pending_dir_ops.push(op);
        let epoch = state.epoch;
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            epoch,
            position: 0,
        }))
    }

    fn open_at(&self, path: &Path, offset: u64) -> io::Result<Box<dyn WalFile>> {
        let state = self.state.lock();
        state.check_open()?;
        let inode = lookup(&state, path)?;
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            inode,
            epoch: state.epoch,
            position: usize::try_from(offset).map_err(io::Error::other)?,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        let inode = lookup(&state, from)?;
        state.volatile_entries.remove(from);
        state.volatile_entries.insert(to.to_path_buf(), inode);
        let op = DirOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        };
        state.pending_dir_ops.push(op);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        lookup(&state, path)?;
        state.volatile_entries.remove(path);
        state.pending_dir_ops.push(DirOp::Unlink {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        let (synced, kept): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut state.pending_dir_ops)
            .into_iter()
            .partition(|op| op.dir() == Some(dir));
        for op in &synced {
            op.apply(&mut state.durable_entries);
        }
        state.pending_dir_ops = kept;
        Ok(())
    }

    fn open_dir(&self, dir: &Path) -> io::Result<Box<dyn WalDir>> {
        let state = self.state.lock();
        state.check_open()?;
        Ok(Box::new(SimDir {
            disk: self.clone(),
            dir: dir.to_path_buf(),
            epoch: state.epoch,
        }))
    }
}

/// A directory of the simulated disk, kept open.
#[derive(Debug)]
struct SimDir {
    /// The disk.
    disk: SimulatedDisk,
    /// Which directory.
    dir: PathBuf,
    /// The disk epoch at open; a crash makes the handle inert.
    epoch: u64,
}

impl WalDir for SimDir {
    fn sync(&self) -> io::Result<()> {
        if self.disk.state.lock().epoch != self.epoch {
            return Ok(());
        }
        self.disk.sync_dir(&self.dir)
    }
}
