//! The audit files: `<data dir>/audit/<seq>-<first_unix_ms>.jsonl`, one JSON object
//! per line (an [`AuditRecord`]), appended in the order events were recorded.
//!
//! `seq` (ten digits) orders the files; `first_unix_ms` is the time of the file's first
//! event, so a query skips files that end before its range. The current file is
//! fsynced every `limits::AUDIT_SYNC_BYTES` (small flushes that never hold the disk
//! long enough to delay the log's fsyncs). A file is closed (and fsynced) once it
//! would pass `file_bytes_max`; past `files_max` files the oldest are
//! deleted, which bounds the record to about `file_bytes_max * files_max` bytes. Each
//! daemon start begins a new file. A torn last line (a crash mid-write) is skipped
//! when reading.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{AuditCursor, AuditError, AuditOptions, AuditPage, AuditQuery, AuditRecord};
use crate::limits;

/// Events of one file may be up to this much older than the next file's first event
/// (the clock and the queue do not order them perfectly), so a query keeps a file
/// unless the next one starts at least this long before the range.
const FILE_ORDER_SLACK_MS: i64 = 60_000;

/// The directory of audit files.
#[derive(Debug)]
pub struct AuditFiles {
    dir: PathBuf,
    options: AuditOptions,
    /// The sequence number of the next file to create.
    next_seq: AtomicU64,
}

#[derive(Debug, Clone)]
struct FileEntry {
    seq: u64,
    first_unix_ms: i64,
    path: PathBuf,
}

fn parse_name(path: &Path) -> Option<(u64, i64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".jsonl")?;
    let (seq, first) = name.split_once('-')?;
    Some((seq.parse().ok()?, first.parse().ok()?))
}

impl AuditFiles {
    /// Creates the directory if needed and finds where numbering continues.
    pub fn open(dir: PathBuf, options: AuditOptions) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let files = AuditFiles {
            next_seq: AtomicU64::new(0),
            dir: dir.clone(),
            options,
        };
        let last = files.list().map_err(io)?.last().map_or(0, |f| f.seq + 1);
        files.next_seq.store(last, Ordering::Relaxed);
        Ok(files)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files, oldest first.
    fn list(&self) -> std::io::Result<Vec<FileEntry>> {
        let mut entries: Vec<FileEntry> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let (seq, first_unix_ms) = parse_name(&path)?;
                Some(FileEntry {
                    seq,
                    first_unix_ms,
                    path,
                })
            })
            .collect();
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    /// A writer that starts a new file at its first event.
    pub fn writer(&self) -> AuditWriter<'_> {
        AuditWriter {
            files: self,
            current: None,
            unsynced_bytes: 0,
        }
    }

    /// Deletes the oldest files past `files_max`.
    fn prune(&self) -> std::io::Result<()> {
        let entries = self.list()?;
        let excess = entries
            .len()
            .saturating_sub(self.options.files_max as usize);
        for entry in &entries[..excess] {
            std::fs::remove_file(&entry.path)?;
        }
        Ok(())
    }

    /// Reads the events of `query.org` in its time range, in file order, from where
    /// `query.after` says a previous page stopped; at most `query.limit`. A page that
    /// is cut says where the next one starts.
    pub fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let io = |source| AuditError::Io {
            path: self.dir.clone(),
            source,
        };
        let (from_unix_ms, to_unix_ms) = (query.from_unix_ms, query.to_unix_ms);
        let entries = self.list().map_err(io)?;
        // A page continues in the file it stopped in; if rotation deleted that file,
        // events were lost to the reader, and it is told rather than given a gap.
        if let Some(after) = query.after
            && !entries.iter().any(|entry| entry.seq == after.seq)
        {
            return Err(AuditError::PageGone);
        }
        let in_range = |at: i64| at >= from_unix_ms && (to_unix_ms == 0 || at < to_unix_ms);
        // A cheap test before parsing: the line names the organization.
        let org_field = format!("\"org\":{}", serde_json::Value::from(query.org.as_str()));
        let mut records = Vec::new();
        let mut line = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let resume_at = match query.after {
                Some(after) if entry.seq < after.seq => continue,
                Some(after) if entry.seq == after.seq => after.offset,
                _ => 0,
            };
            let next_starts_before_range = entries
                .get(i + 1)
                .is_some_and(|next| next.first_unix_ms + FILE_ORDER_SLACK_MS < from_unix_ms);
            let starts_after_range = to_unix_ms != 0
                && entry.first_unix_ms > to_unix_ms.saturating_add(FILE_ORDER_SLACK_MS);
            if next_starts_before_range || starts_after_range {
                continue;
            }
            let mut file = match File::open(&entry.path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    if query.after.is_some_and(|after| after.seq == entry.seq) {
                        return Err(AuditError::PageGone);
                    }
                    continue; // Pruned since it was listed.
                }
                Err(error) => return Err(io(error)),
            };
            file.seek(SeekFrom::Start(resume_at)).map_err(io)?;
            let mut reader = BufReader::new(file);
            let mut offset = resume_at;
            loop {
                line.clear();
                let read = reader.read_until(b'\n', &mut line).map_err(io)?;
                let line_start = offset;
                offset += read as u64;
                // The end, or a line still being written or torn by a crash: never
                // step past it, so a later page reads it once it is whole.
                if line.last() != Some(&b'\n') {
                    break;
                }
                let Ok(text) = std::str::from_utf8(&line) else {
                    continue;
                };
                if !text.contains(&org_field) {
                    continue;
                }
                let Ok(record) = serde_json::from_str::<AuditRecord>(text) else {
                    continue;
                };
                if record.org != query.org || !in_range(record.at_unix_ms) {
                    continue;
                }
                if records.len() == query.limit {
                    let next = AuditCursor {
                        seq: entry.seq,
                        offset: line_start,
                    };
                    return Ok(AuditPage {
                        records,
                        next: Some(next),
                    });
                }
                records.push(record);
            }
        }
        Ok(AuditPage {
            records,
            next: None,
        })
    }
}

/// Appends lines to the current file, rotating by size. Failures are logged and
/// counted, never returned: the audit record must not stop the broker.
pub struct AuditWriter<'a> {
    files: &'a AuditFiles,
    /// The open file and the bytes in it.
    current: Option<(BufWriter<File>, u64)>,
    /// Bytes written since the current file was last fsynced.
    unsynced_bytes: u64,
}

/// The JSON line of a record, with its detail cut when the line would be too long.
fn line_of(record: &AuditRecord) -> Option<String> {
    let line = serde_json::to_string(record).ok()?;
    if line.len() < limits::AUDIT_LINE_BYTES_MAX {
        return Some(line);
    }
    let mut shorter = record.clone();
    let detail = shorter.detail.take().unwrap_or_default();
    let mut cut = limits::AUDIT_LINE_BYTES_MAX / 2;
    while !detail.is_char_boundary(cut.min(detail.len())) {
        cut -= 1;
    }
    shorter.detail = Some(format!("{}...", &detail[..cut.min(detail.len())]));
    serde_json::to_string(&shorter)
        .ok()
        .filter(|line| line.len() < limits::AUDIT_LINE_BYTES_MAX)
}

impl AuditWriter<'_> {
    pub fn append(&mut self, record: &AuditRecord) {
        let Some(mut line) = line_of(record) else {
            crate::telemetry::metrics::audit_event_dropped();
            return;
        };
        line.push('\n');
        if let Err(error) = self.write(record.at_unix_ms, line.as_bytes()) {
            tracing::warn!(%error, dir = %self.files.dir.display(), "audit record write failed");
            crate::telemetry::metrics::audit_event_dropped();
            self.current = None;
        }
    }

    fn write(&mut self, at_unix_ms: i64, line: &[u8]) -> std::io::Result<()> {
        let length = line.len() as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, size)| size + length > self.files.options.file_bytes_max);
        if full {
            self.flush(true);
            self.current = None;
        }
        if self.current.is_none() {
            self.current = Some((self.create(at_unix_ms)?, 0));
            self.unsynced_bytes = 0;
        }
        let (file, size) = self.current.as_mut().expect("opened above");
        file.write_all(line)?;
        *size += length;
        self.unsynced_bytes += length;
        if self.unsynced_bytes >= limits::AUDIT_SYNC_BYTES {
            self.flush(true);
        }
        Ok(())
    }

    fn create(&self, first_unix_ms: i64) -> std::io::Result<BufWriter<File>> {
        let seq = self.files.next_seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .files
            .dir
            .join(format!("{seq:010}-{}.jsonl", first_unix_ms.max(0)));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        self.files.prune()?;
        Ok(BufWriter::new(file))
    }

    /// Hands buffered lines to the operating system, and fsyncs when `sync`.
    pub fn flush(&mut self, sync: bool) {
        let Some((file, _)) = self.current.as_mut() else {
            return;
        };
        let result = file.flush().and_then(|()| {
            if sync {
                file.get_ref().sync_data()
            } else {
                Ok(())
            }
        });
        if sync {
            self.unsynced_bytes = 0;
        }
        if let Err(error) = result {
            tracing::warn!(%error, "audit record flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at: i64, org: &str) -> AuditRecord {
        AuditRecord {
            at_unix_ms: at,
            org: org.into(),
            kind: "lease_granted".into(),
            product: Some("KRE".into()),
            email: Some("a@acme.test".into()),
            lease_id: None,
            generation: Some(7),
            engine_id: Some("e-1".into()),
            actor: "a@acme.test".into(),
            detail: Some("x".repeat(100)),
        }
    }

    fn check(file_bytes_max: u64, files_max: u32, events: i64) -> (AuditFiles, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let options = AuditOptions {
            file_bytes_max,
            files_max,
        };
        let files = AuditFiles::open(dir.path().join("audit"), options).unwrap();
        let mut writer = files.writer();
        for at in 0..events {
            writer.append(&record(at, if at % 2 == 0 { "acme" } else { "other" }));
        }
        writer.flush(true);
        drop(writer);
        (files, dir)
    }

    fn query(org: &str, from_unix_ms: i64, to_unix_ms: i64, limit: usize) -> AuditQuery {
        AuditQuery {
            org: org.into(),
            from_unix_ms,
            to_unix_ms,
            limit,
            after: None,
        }
    }

    /// Every page of `query`, following the cursors.
    fn all_pages(files: &AuditFiles, mut query: AuditQuery) -> Vec<Vec<AuditRecord>> {
        let mut pages = Vec::new();
        loop {
            let page = files.query(&query).unwrap();
            assert!(page.records.len() <= query.limit);
            pages.push(page.records);
            match page.next {
                Some(next) => query.after = Some(next),
                None => return pages,
            }
        }
    }

    #[test]
    fn a_query_returns_one_organization_in_its_time_range_and_says_when_it_is_cut() {
        let (files, _dir) = check(1 << 20, 4, 100);
        let page = files.query(&query("acme", 10, 20, 100)).unwrap();
        let times: Vec<i64> = page.records.iter().map(|r| r.at_unix_ms).collect();
        assert_eq!(times, vec![10, 12, 14, 16, 18]);
        assert!(page.next.is_none());
        let page = files.query(&query("acme", 0, 0, 3)).unwrap();
        assert_eq!(page.records.len(), 3);
        assert!(page.next.is_some());
        assert_eq!(page.records[0], record(0, "acme"));
    }

    #[test]
    fn pages_cover_a_range_exactly_once_across_files_shared_milliseconds_and_clock_disorder() {
        let dir = tempfile::tempdir().unwrap();
        let options = AuditOptions {
            file_bytes_max: 4096,
            files_max: 100,
        };
        let files = AuditFiles::open(dir.path().join("audit"), options).unwrap();
        let mut writer = files.writer();
        // 300 events in write order: ten share each millisecond, and every seventh
        // carries an earlier time than the one before it (two threads read the clock
        // in one order and queued in the other).
        let mut written = Vec::new();
        for i in 0..300i64 {
            let at = 1_000 + i / 10 - if i % 7 == 0 { 3 } else { 0 };
            let mut event = record(at, "acme");
            event.generation = Some(i as u64);
            writer.append(&event);
            writer.append(&record(at, "other"));
            written.push(event);
        }
        writer.flush(true);
        drop(writer);
        assert!(
            files.list().unwrap().len() > 5,
            "the events span many files"
        );
        for limit in [1, 7, 10, 64, 1000] {
            let pages = all_pages(&files, query("acme", 0, 0, limit));
            let read: Vec<AuditRecord> = pages.concat();
            assert_eq!(read, written, "limit {limit}");
        }
        // A bounded range: exactly the events inside it, in write order.
        let inside: Vec<AuditRecord> = written
            .iter()
            .filter(|e| (1_005..1_020).contains(&e.at_unix_ms))
            .cloned()
            .collect();
        assert_eq!(
            all_pages(&files, query("acme", 1_005, 1_020, 9)).concat(),
            inside
        );
    }

    #[test]
    fn a_line_still_being_written_is_read_by_a_later_page_once_whole() {
        let (files, _dir) = check(1 << 20, 4, 4);
        let path = files.list().unwrap()[0].path.clone();
        let whole = serde_json::to_string(&record(9, "acme")).unwrap();
        let (head, tail) = whole.split_at(20);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(head.as_bytes()).unwrap();
        let first = files.query(&query("acme", 0, 0, 1)).unwrap();
        assert_eq!(first.records, vec![record(0, "acme")]);
        let cursor = first.next.expect("cut at the limit");
        let mut rest = query("acme", 0, 0, 10);
        rest.after = Some(cursor);
        let page = files.query(&rest).unwrap();
        assert_eq!((page.records, page.next), (vec![record(2, "acme")], None));
        file.write_all(format!("{tail}\n").as_bytes()).unwrap();
        let page = files.query(&rest).unwrap();
        assert_eq!(page.records, vec![record(2, "acme"), record(9, "acme")]);
        assert_eq!(
            AuditCursor::from_token(&cursor.to_token()),
            Some(cursor),
            "the token round-trips"
        );
        assert_eq!(AuditCursor::from_token("a1.x.3"), None);
        assert_eq!(AuditCursor::from_token("a1.0.18446744073709551615"), None);
        assert_eq!(AuditCursor::from_token("12.3"), None);
    }

    #[test]
    fn a_page_token_into_a_deleted_file_is_refused_rather_than_leaving_a_gap() {
        let (files, _dir) = check(4096, 100, 200);
        let entries = files.list().unwrap();
        assert!(entries.len() > 2);
        let first = files.query(&query("acme", 0, 0, 1)).unwrap();
        let cursor = first.next.expect("more events");
        assert_eq!(cursor.seq, entries[0].seq);
        std::fs::remove_file(&entries[0].path).unwrap();
        let mut next = query("acme", 0, 0, 10);
        next.after = Some(cursor);
        assert!(matches!(files.query(&next), Err(AuditError::PageGone)));
    }

    #[test]
    fn files_rotate_by_size_and_the_oldest_are_deleted() {
        let (files, _dir) = check(4096, 3, 200);
        let entries = files.list().unwrap();
        assert_eq!(entries.len(), 3);
        for entry in &entries {
            assert!(std::fs::metadata(&entry.path).unwrap().len() <= 4096);
        }
        let page = files.query(&query("acme", 0, 0, 1000)).unwrap();
        assert!(page.records.len() < 100, "the oldest events were pruned");
        assert_eq!(page.records.last().unwrap().at_unix_ms, 198);
    }

    #[test]
    fn a_torn_line_is_skipped_and_numbering_continues_after_a_restart() {
        let (files, dir) = check(1 << 20, 4, 4);
        let path = &files.list().unwrap()[0].path;
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(b"{\"at_unix_ms\":9,\"org\":\"acme\",\"ki")
            .unwrap();
        assert_eq!(
            files.query(&query("acme", 0, 0, 10)).unwrap().records.len(),
            2
        );
        let reopened = AuditFiles::open(dir.path().join("audit"), files.options).unwrap();
        assert_eq!(reopened.next_seq.load(Ordering::Relaxed), 1);
    }
}
