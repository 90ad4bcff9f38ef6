//! Writing the audit files (see [`super::files`] for the layout): one stream of files
//! per organization, rotated by size, a bounded number of them open, and retention
//! that no organization can use to delete another's events.
//!
//! **Retention.** The whole record holds at most `budget = files_max * file_bytes_max`
//! bytes (the configured `audit.files_max` and `audit.file_bytes_max`; 1 GiB by
//! default), plus the line being written. When it is over, whole files are deleted,
//! oldest first: the older layout's files first, then files of the organization that
//! holds the most bytes (max-min fairness, as a fair queue drops from its longest
//! queue). An organization's events are therefore deleted only while it holds more of
//! the record than any other: a flood deletes the flooding organization's own oldest
//! events, and every organization keeps at least `min(its bytes, budget / N) -
//! file_bytes_max`, N being the organizations with a record. One organization alone
//! may use the whole budget. Finding the largest is a scan of the organizations, once
//! per deleted file.
//!
//! **Descriptors.** At most `limits::AUDIT_OPEN_FILES_MAX` files are open for writing
//! (the organizations written to most recently); the least recently used is flushed
//! to the operating system and closed to make room. When the process is out of
//! descriptors (EMFILE, ENFILE), an open closes the writer's own least recently used
//! files one at a time and tries again, and when none is left to close gives up one
//! of the writer's spare descriptors ([`super::descriptors`]); so a writer that holds
//! a file or a spare always gets the one file it needs, whoever else took the rest.
//!
//! **Durability** (best effort, as before): open files are fsynced each time
//! `limits::AUDIT_SYNC_BYTES` have been written since the last fsync (small flushes
//! that never hold the disk long enough to delay the log's fsyncs), at rotation and at
//! shutdown. A file closed to make room is flushed, not fsynced (an fsync per switch
//! would cost one per event when many organizations take turns); the kernel writes it
//! back within its dirty-page interval. A torn last line left by a crash is cut off
//! before a file is appended to again.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::descriptors::{SpareDescriptors, is_out_of_descriptors};
use super::files::{AuditFiles, FileEntry};
use super::{AuditError, AuditLine};
use crate::limits;
use crate::telemetry::metrics;

/// A file and the bytes in it.
#[derive(Debug)]
struct StoredFile {
    seq: u64,
    path: PathBuf,
    bytes: u64,
}

/// One organization's files, oldest first; the last is the one appended to.
#[derive(Debug, Default)]
struct OrgFiles {
    files: VecDeque<StoredFile>,
    bytes: u64,
}

/// A file open for appending.
struct OpenFile {
    seq: u64,
    file: BufWriter<File>,
    /// When it was last written to (a counter), for closing the least recent.
    last_used: u64,
    /// Written to since its last fsync.
    unsynced: bool,
}

/// Appends lines to each organization's current file and keeps the record within its
/// budget. Failures are logged and counted, never returned: the audit record must not
/// stop the broker.
pub struct AuditWriter {
    files: Arc<AuditFiles>,
    budget_bytes: u64,
    orgs: HashMap<Box<str>, OrgFiles>,
    /// The older layout's files, oldest first: only read and deleted.
    legacy: VecDeque<StoredFile>,
    total_bytes: u64,
    /// At most `limits::AUDIT_OPEN_FILES_MAX`, by organization.
    open: HashMap<Box<str>, OpenFile>,
    uses: u64,
    /// Bytes written since the open files were last fsynced.
    unsynced_bytes: u64,
    /// Given up to open a file when the process is out of descriptors and the writer
    /// has no file of its own left to close; taken back after each batch.
    spares: SpareDescriptors,
    /// Paces the warning of a failed write (one per event would flood the log).
    write_warnings: super::Warnings,
    /// The line being written, kept between lines so that encoding one allocates
    /// nothing.
    line: Vec<u8>,
}

fn stored(entries: Vec<FileEntry>) -> VecDeque<StoredFile> {
    entries
        .into_iter()
        .map(|entry| StoredFile {
            seq: entry.seq,
            bytes: std::fs::metadata(&entry.path).map_or(0, |m| m.len()),
            path: entry.path,
        })
        .collect()
}

/// Puts the JSON line of `line`, with its end, into `buffer` (emptied first), with
/// the detail cut when the line would be too long; `false` when it cannot be made.
fn encode_line(line: &AuditLine, buffer: &mut Vec<u8>) -> bool {
    let encode = |line: &AuditLine, buffer: &mut Vec<u8>| {
        buffer.clear();
        serde_json::to_writer(&mut *buffer, line).is_ok()
            && buffer.len() < limits::AUDIT_LINE_BYTES_MAX
    };
    let fits = encode(line, buffer) || {
        let detail = line.detail.unwrap_or_default();
        let mut cut = (limits::AUDIT_LINE_BYTES_MAX / 2).min(detail.len());
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        let shorter_detail = format!("{}...", &detail[..cut]);
        let shorter = AuditLine {
            detail: Some(&shorter_detail),
            ..*line
        };
        encode(&shorter, buffer)
    };
    buffer.push(b'\n');
    fits
}

/// Cuts a torn last line (a crash mid-write) off `path`, so the next line starts
/// clean; returns the file's length after.
fn trim_torn_tail(path: &std::path::Path) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let length = file.metadata()?.len();
    if length == 0 {
        return Ok(0);
    }
    let window = length.min(limits::AUDIT_LINE_BYTES_MAX as u64);
    file.seek(SeekFrom::Start(length - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    Read::by_ref(&mut file)
        .take(window)
        .read_to_end(&mut tail)?;
    if tail.last() == Some(&b'\n') {
        return Ok(length);
    }
    let whole = match tail.iter().rposition(|&b| b == b'\n') {
        Some(newline) => length - window + newline as u64 + 1,
        // No line end in the last line's bound: nothing before it is whole either.
        None => length - window,
    };
    file.set_len(whole)?;
    Ok(whole)
}

impl AuditWriter {
    /// Takes stock of the files on disk (sizes, per organization) and deletes what is
    /// over the budget.
    pub fn new(files: Arc<AuditFiles>) -> Result<Self, AuditError> {
        let options = files.options;
        let mut orgs = HashMap::new();
        for org in files.org_names()? {
            let org_files = stored(files.org_files(&org)?);
            if !org_files.is_empty() {
                let bytes = org_files.iter().map(|f| f.bytes).sum();
                orgs.insert(
                    org.into_boxed_str(),
                    OrgFiles {
                        files: org_files,
                        bytes,
                    },
                );
            }
        }
        let legacy = stored(files.legacy_files()?);
        let total_bytes = orgs.values().map(|o: &OrgFiles| o.bytes).sum::<u64>()
            + legacy.iter().map(|f| f.bytes).sum::<u64>();
        let mut writer = AuditWriter {
            files,
            budget_bytes: options.file_bytes_max * u64::from(options.files_max),
            orgs,
            legacy,
            total_bytes,
            open: HashMap::new(),
            uses: 0,
            unsynced_bytes: 0,
            spares: SpareDescriptors::new(limits::AUDIT_WRITER_SPARE_DESCRIPTORS),
            write_warnings: super::Warnings::default(),
            line: Vec::with_capacity(limits::AUDIT_LINE_BYTES_MAX),
        };
        writer.enforce_budget();
        Ok(writer)
    }

    /// The audit directory.
    pub fn dir(&self) -> &std::path::Path {
        self.files.dir()
    }

    /// The bytes of the record on disk, as accounted.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends a line of a lease event or a refused acquire: buffered, and dropped
    /// (counted, with a rate-limited warning) when it cannot be written.
    pub fn append(&mut self, record: &AuditLine) {
        let mut line = std::mem::take(&mut self.line);
        if !encode_line(record, &mut line) {
            self.line = line;
            metrics::audit_event_dropped();
            return;
        }
        let written = self.write(record.org, record.at_unix_ms, &line);
        self.line = line;
        if let Err(error) = written {
            if let Some(left_out) = self.write_warnings.due() {
                tracing::warn!(%error, org = %record.org, dir = %self.files.dir().display(), warnings_left_out = left_out, "audit record write failed; the event is dropped");
            }
            metrics::audit_event_dropped();
            // Reopened (and its torn tail cut) at the next line.
            self.open.remove(record.org);
        }
        self.enforce_budget();
    }

    /// Appends the line of an admin change's event and hands it to the operating
    /// system before returning, so that a failure is known for this line: the caller
    /// keeps the event and tries again. A line the kernel took before reporting an
    /// error may then be written twice, never lost.
    pub fn append_now(&mut self, record: &AuditLine) -> std::io::Result<()> {
        let mut line = Vec::new();
        if !encode_line(record, &mut line) {
            // Cannot happen for an admin change's event (its fields are bounded);
            // said loudly rather than retried forever.
            tracing::error!(
                ?record,
                "an admin change's audit event cannot be made a line; not written"
            );
            metrics::audit_event_dropped();
            return Ok(());
        }
        let org = record.org;
        let written =
            self.write(org, record.at_unix_ms, &line)
                .and_then(|()| match self.open.get_mut(org) {
                    Some(open) => open.file.flush(),
                    None => Ok(()), // Closed (and flushed) by a fsync's rotation.
                });
        if written.is_err() {
            self.open.remove(org);
        }
        self.enforce_budget();
        written
    }

    fn write(&mut self, org: &str, at_unix_ms: i64, line: &[u8]) -> std::io::Result<()> {
        let length = line.len() as u64;
        let full = self
            .orgs
            .get(org)
            .and_then(|o| o.files.back())
            .is_none_or(|current| current.bytes + length > self.files.options.file_bytes_max);
        if full {
            self.rotate(org, at_unix_ms)?;
        }
        let open = self.handle(org)?;
        open.file.write_all(line)?;
        open.unsynced = true;
        let files = self.orgs.get_mut(org).expect("opened above");
        files.files.back_mut().expect("opened above").bytes += length;
        files.bytes += length;
        self.total_bytes += length;
        self.unsynced_bytes += length;
        if self.unsynced_bytes >= limits::AUDIT_SYNC_BYTES {
            self.flush(true);
        }
        Ok(())
    }

    /// Closes `org`'s current file (fsynced) and starts a new one.
    fn rotate(&mut self, org: &str, first_unix_ms: i64) -> std::io::Result<()> {
        if let Some(mut open) = self.open.remove(org) {
            open.file.flush()?;
            open.file.get_ref().sync_data()?;
        }
        let dir = self.files.org_dir(org).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{org:?} is not an organization id"),
            )
        })?;
        std::fs::create_dir_all(&dir)?;
        let seq = self.files.take_seq();
        let path = dir.join(format!("{seq:010}-{}.jsonl", first_unix_ms.max(0)));
        self.make_room();
        let file = self.with_descriptor(org, || {
            OpenOptions::new().create_new(true).append(true).open(&path)
        })?;
        self.uses += 1;
        self.open.insert(
            org.into(),
            OpenFile {
                seq,
                file: BufWriter::new(file),
                last_used: self.uses,
                unsynced: false,
            },
        );
        let files = self.orgs.entry(org.into()).or_default();
        files.files.push_back(StoredFile {
            seq,
            path,
            bytes: 0,
        });
        Ok(())
    }

    /// `org`'s current file, opened (its torn tail cut) if it is not open.
    fn handle(&mut self, org: &str) -> std::io::Result<&mut OpenFile> {
        self.uses += 1;
        let uses = self.uses;
        if !self.open.contains_key(org) {
            self.make_room();
            let path = self.orgs[org]
                .files
                .back()
                .expect("rotate made one")
                .path
                .clone();
            let length = self.with_descriptor(org, || trim_torn_tail(&path))?;
            let file = self.with_descriptor(org, || OpenOptions::new().append(true).open(&path))?;
            let files = self.orgs.get_mut(org).expect("rotate made one");
            let current = files.files.back_mut().expect("rotate made one");
            // Correct the account with what the disk holds (a failed write may have
            // left less, or a torn line more).
            files.bytes = files.bytes - current.bytes + length;
            self.total_bytes = self.total_bytes - current.bytes + length;
            current.bytes = length;
            let seq = current.seq;
            self.open.insert(
                org.into(),
                OpenFile {
                    seq,
                    file: BufWriter::new(file),
                    last_used: uses,
                    unsynced: false,
                },
            );
        }
        let open = self.open.get_mut(org).expect("opened above");
        open.last_used = uses;
        Ok(open)
    }

    /// Closes the least recently used file when `limits::AUDIT_OPEN_FILES_MAX` are open
    /// (before opening another, so that never more are open).
    fn make_room(&mut self) {
        while self.open.len() >= limits::AUDIT_OPEN_FILES_MAX {
            if !self.close_least_recent_except("") {
                return;
            }
        }
    }

    /// Flushes and closes the least recently used open file other than `org`'s;
    /// `false` when there is none.
    fn close_least_recent_except(&mut self, org: &str) -> bool {
        let Some(oldest) = self
            .open
            .iter()
            .filter(|(open_org, _)| open_org.as_ref() != org)
            .min_by_key(|(_, open)| open.last_used)
            .map(|(org, _)| org.clone())
        else {
            return false;
        };
        if let Some(mut open) = self.open.remove(&oldest)
            && let Err(error) = open.file.flush()
        {
            tracing::warn!(%error, org = %oldest, "audit record flush failed");
        }
        true
    }

    /// Runs `open` for `org`'s file; out of descriptors, frees the writer's own: its
    /// other files, least recently used first, then its spares.
    fn with_descriptor<T>(
        &mut self,
        org: &str,
        mut open: impl FnMut() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        loop {
            match open() {
                Err(error) if is_out_of_descriptors(&error) => {
                    if !self.close_least_recent_except(org) {
                        return self.spares.open_with(open);
                    }
                }
                result => return result,
            }
        }
    }

    /// Deletes files while the record is over its budget: the older layout's first,
    /// then the oldest file of the organization holding the most bytes.
    fn enforce_budget(&mut self) {
        while self.total_bytes > self.budget_bytes {
            let deleted = match self.legacy.pop_front() {
                Some(file) => file,
                None => match self.take_oldest_of_largest() {
                    Some(file) => file,
                    None => return,
                },
            };
            self.total_bytes -= deleted.bytes;
            match std::fs::remove_file(&deleted.path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, path = %deleted.path.display(), "audit file not deleted")
                }
            }
        }
    }

    /// Takes the oldest file of the organization with the most bytes (the oldest
    /// events break a tie) out of the account.
    fn take_oldest_of_largest(&mut self) -> Option<StoredFile> {
        let (org, _) = self.orgs.iter().max_by_key(|(_, files)| {
            let oldest = files.files.front().map_or(u64::MAX, |f| f.seq);
            (files.bytes, std::cmp::Reverse(oldest))
        })?;
        let org = org.clone();
        let files = self.orgs.get_mut(&org)?;
        let file = files.files.pop_front()?;
        files.bytes -= file.bytes;
        if files.files.is_empty() {
            self.orgs.remove(&org);
        }
        if self.open.get(&org).is_some_and(|open| open.seq == file.seq) {
            self.open.remove(&org);
        }
        Some(file)
    }

    /// Hands buffered lines to the operating system, and fsyncs the files written
    /// since their last fsync when `sync`.
    pub fn flush(&mut self, sync: bool) {
        for (org, open) in &mut self.open {
            let result = open.file.flush().and_then(|()| {
                if sync && open.unsynced {
                    open.unsynced = false;
                    open.file.get_ref().sync_data()
                } else {
                    Ok(())
                }
            });
            if let Err(error) = result {
                tracing::warn!(%error, %org, "audit record flush failed");
            }
        }
        if sync {
            self.unsynced_bytes = 0;
        }
        self.spares.refill();
    }

    /// Files open for writing (at most `limits::AUDIT_OPEN_FILES_MAX`).
    pub fn open_files(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditOptions, AuditQuery};

    use crate::audit::sample_record as record;

    fn open(dir: &std::path::Path, file_bytes_max: u64, files_max: u32) -> Arc<AuditFiles> {
        let options = AuditOptions {
            file_bytes_max,
            files_max,
        };
        Arc::new(AuditFiles::open(dir.join("audit"), options).unwrap())
    }

    fn count(files: &AuditFiles, org: &str) -> usize {
        let query = AuditQuery {
            org: org.into(),
            from_unix_ms: 0,
            to_unix_ms: 0,
            limit: 1_000_000,
            after: None,
        };
        files.query(&query).unwrap().records.len()
    }

    fn disk_bytes(dir: &std::path::Path) -> u64 {
        let mut total = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            total += if path.is_dir() {
                disk_bytes(&path)
            } else {
                std::fs::metadata(&path).unwrap().len()
            };
        }
        total
    }

    #[test]
    fn a_flood_of_one_organization_deletes_its_own_oldest_events_only() {
        let dir = tempfile::tempdir().unwrap();
        let files = open(dir.path(), 4096, 8);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        for at in 0..20 {
            writer.append(&record(at, "victim").line());
        }
        for at in 0..5_000 {
            writer.append(&record(at, "attacker").line());
        }
        writer.flush(true);
        assert_eq!(count(&files, "victim"), 20, "the victim keeps every event");
        let kept = count(&files, "attacker");
        assert!(kept > 0 && kept < 5_000, "{kept}");
        let budget = 4096 * 8;
        let on_disk = disk_bytes(&dir.path().join("audit"));
        assert!(on_disk <= budget, "{on_disk} bytes on disk");
        assert_eq!(on_disk, writer.total_bytes());
    }

    #[test]
    fn under_pressure_the_largest_organization_loses_first_and_handles_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let orgs: Vec<String> = (0..limits::AUDIT_OPEN_FILES_MAX * 2)
            .map(|i| format!("org-{i}"))
            .collect();
        // 256 KiB: room for the small organizations' 88 KiB, not for the big one's
        // 460 KiB besides.
        let files_max = (orgs.len() / 2) as u32;
        let files = open(dir.path(), 4096, files_max);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        for round in 0..3 {
            for org in &orgs {
                writer.append(&record(round, org).line());
                assert!(writer.open_files() <= limits::AUDIT_OPEN_FILES_MAX);
            }
        }
        for at in 0..2_000 {
            writer.append(&record(at, "big").line());
        }
        writer.flush(true);
        for org in &orgs {
            assert_eq!(count(&files, org), 3, "{org}");
        }
        assert!(count(&files, "big") < 2_000);
        assert!(writer.total_bytes() <= 4096 * u64::from(files_max));
    }

    #[test]
    fn a_restart_appends_after_a_torn_line_and_continues_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let files = open(dir.path(), 1 << 20, 4);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        writer.append(&record(1, "acme").line());
        writer.flush(true);
        drop(writer);
        let path = files.org_files("acme").unwrap()[0].path.clone();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"at_unix_ms\":9,\"org\":\"acme\",\"ki")
            .unwrap();
        let files = open(dir.path(), 1 << 20, 4);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        writer.append(&record(2, "acme").line());
        writer.append(&record(3, "other").line());
        writer.flush(true);
        assert_eq!(count(&files, "acme"), 2, "the torn line was cut, not glued");
        assert_eq!(files.org_files("acme").unwrap().len(), 1, "appended");
        assert_eq!(files.org_files("other").unwrap()[0].seq, 1);
    }

    #[test]
    fn files_of_the_older_layout_are_read_and_deleted_first() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        std::fs::create_dir_all(&audit).unwrap();
        let mut old = String::new();
        for at in 0..3 {
            old.push_str(&serde_json::to_string(&record(at, "acme")).unwrap());
            old.push('\n');
            old.push_str(&serde_json::to_string(&record(at, "other")).unwrap());
            old.push('\n');
        }
        std::fs::write(audit.join("0000000041-0.jsonl"), old).unwrap();
        let files = open(dir.path(), 4096, 2);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        writer.append(&record(10, "acme").line());
        writer.flush(true);
        assert_eq!(count(&files, "acme"), 4, "three old events and the new one");
        assert_eq!(count(&files, "other"), 3);
        assert_eq!(files.org_files("acme").unwrap()[0].seq, 42);
        for at in 0..60 {
            writer.append(&record(at, "acme").line());
        }
        assert!(files.legacy_files().unwrap().is_empty(), "deleted first");
    }
}
