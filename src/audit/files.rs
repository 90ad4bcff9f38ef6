//! The audit files: one directory per organization,
//! `<data dir>/audit/<org>/<seq>-<first_unix_ms>.jsonl`, one JSON object per line (an
//! [`AuditRecord`]), appended in the order events were recorded.
//!
//! `seq` (ten digits) is one numbering shared by every organization, so it orders an
//! organization's files and a page token (file `seq`, byte offset) names one file;
//! `first_unix_ms` is the time of the file's first event, so a query skips files that
//! end before its range. A query reads only its organization's directory. Writing,
//! rotation and retention (a budget shared fairly by the organizations) are in
//! [`super::writer`]. A torn last line (a crash mid-write) is skipped when reading,
//! and cut off before the file is appended to again.
//!
//! **Older layout.** Daemons before per-organization directories wrote every
//! organization into files directly under `audit/`, named the same way. They are kept
//! and read, not rewritten: a query reads them (keeping its organization's lines)
//! before the organization's own files. Numbering continues after them, so page
//! tokens issued by the older daemon stay valid. They count towards the record's
//! budget and are the first deleted when it is over, as they hold the oldest events.
//!
//! **Descriptors.** A query holds one descriptor at a time (a directory listing or a
//! file). Out of descriptors, it gives up one of the readers' spare descriptors
//! ([`super::descriptors`]) and tries again; only when none is left does it fail with
//! [`AuditError::OutOfDescriptors`], which the edge answers as UNAVAILABLE.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::descriptors::{SpareDescriptors, is_out_of_descriptors};
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
    pub(super) options: AuditOptions,
    /// The sequence number of the next file to create, for every organization.
    next_seq: AtomicU64,
    /// Shared by the queries (a mutex held only to open a file when out of
    /// descriptors, and to take spares back after a query).
    reader_spares: parking_lot::Mutex<SpareDescriptors>,
}

/// One audit file, as listed.
#[derive(Debug, Clone)]
pub(super) struct FileEntry {
    pub seq: u64,
    pub first_unix_ms: i64,
    pub path: PathBuf,
}

fn parse_name(path: &Path) -> Option<(u64, i64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".jsonl")?;
    let (seq, first) = name.split_once('-')?;
    Some((seq.parse().ok()?, first.parse().ok()?))
}

/// Whether `name` can be an organization's directory: an organization id's shape
/// (lowercase letters, digits and '-', starting with a letter), so no name reaches
/// outside `audit/` and other entries (`lost+found`) are left alone.
pub(super) fn is_org_dir_name(name: &str) -> bool {
    name.len() <= limits::ORG_ID_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The audit files directly in `dir`, oldest first; none when `dir` does not exist.
pub(super) fn list_files(dir: &Path) -> std::io::Result<Vec<FileEntry>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut entries = Vec::new();
    for entry in listing {
        let path = entry?.path();
        if let Some((seq, first_unix_ms)) = parse_name(&path) {
            entries.push(FileEntry {
                seq,
                first_unix_ms,
                path,
            });
        }
    }
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

impl AuditFiles {
    /// Creates the directory if needed and finds where numbering continues (after
    /// every organization's files and the older layout's).
    pub fn open(dir: PathBuf, options: AuditOptions) -> Result<Self, AuditError> {
        std::fs::create_dir_all(&dir).map_err(|source| AuditError::io(&dir, source))?;
        let files = AuditFiles {
            next_seq: AtomicU64::new(0),
            dir,
            options,
            reader_spares: parking_lot::Mutex::new(SpareDescriptors::new(
                limits::AUDIT_READER_SPARE_DESCRIPTORS,
            )),
        };
        let mut next = 0;
        for org in files.org_names()? {
            let org_files = files.org_files(&org)?;
            next = next.max(org_files.last().map_or(0, |f| f.seq + 1));
        }
        let legacy = files.legacy_files()?;
        next = next.max(legacy.last().map_or(0, |f| f.seq + 1));
        files.next_seq.store(next, Ordering::Relaxed);
        Ok(files)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `open` for a reader; out of descriptors, with a spare given up.
    fn reading<T>(&self, mut open: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
        match open() {
            Err(error) if is_out_of_descriptors(&error) => {
                self.reader_spares.lock().open_with(open)
            }
            result => result,
        }
    }

    /// A new file's sequence number, larger than every file's so far.
    pub(super) fn take_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The directory of `org`'s files; `None` for a name that cannot be an
    /// organization id.
    pub(super) fn org_dir(&self, org: &str) -> Option<PathBuf> {
        is_org_dir_name(org).then(|| self.dir.join(org))
    }

    /// The organizations that have a directory.
    pub(super) fn org_names(&self) -> Result<Vec<String>, AuditError> {
        let io = |source| AuditError::io(&self.dir, source);
        let mut names = Vec::new();
        for entry in self.reading(|| std::fs::read_dir(&self.dir)).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if is_org_dir_name(&name) && entry.file_type().map_err(io)?.is_dir() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// `org`'s own files, oldest first.
    pub(super) fn org_files(&self, org: &str) -> Result<Vec<FileEntry>, AuditError> {
        let Some(dir) = self.org_dir(org) else {
            return Ok(Vec::new());
        };
        self.reading(|| list_files(&dir))
            .map_err(|source| AuditError::io(&dir, source))
    }

    /// The older layout's files (every organization mixed), oldest first.
    pub(super) fn legacy_files(&self) -> Result<Vec<FileEntry>, AuditError> {
        self.reading(|| list_files(&self.dir))
            .map_err(|source| AuditError::io(&self.dir, source))
    }

    /// What a query of `org` reads: the older layout's files, then `org`'s, in
    /// numbering order.
    fn files_of(&self, org: &str) -> Result<Vec<FileEntry>, AuditError> {
        let mut entries = self.legacy_files()?;
        entries.extend(self.org_files(org)?);
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    /// Reads the events of `query.org` in its time range, in file order, from where
    /// `query.after` says a previous page stopped; at most `query.limit`. A page that
    /// is cut says where the next one starts.
    pub fn query(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let page = self.query_files(query);
        // Every file of the query is closed: take back the spares it gave up.
        self.reader_spares.lock().refill();
        page
    }

    fn query_files(&self, query: &AuditQuery) -> Result<AuditPage, AuditError> {
        let entries = self.files_of(&query.org)?;
        // A page continues in the file it stopped in; if retention deleted that file,
        // events were lost to the reader, and it is told rather than given a gap. A
        // token naming another organization's file finds nothing here either.
        if let Some(after) = query.after
            && !entries.iter().any(|entry| entry.seq == after.seq)
        {
            return Err(AuditError::PageGone);
        }
        let lines = LineFilter::of(query);
        let mut records = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let resume_at = match query.after {
                Some(after) if entry.seq < after.seq => continue,
                Some(after) if entry.seq == after.seq => after.offset,
                _ => 0,
            };
            if outside_range(&entries, i, query) {
                continue;
            }
            let Some(file) = self.open_for_page(entry, query)? else {
                continue; // Deleted since it was listed.
            };
            let next = read_page(file, entry, resume_at, &lines, query.limit, &mut records)?;
            if next.is_some() {
                return Ok(AuditPage { records, next });
            }
        }
        Ok(AuditPage {
            records,
            next: None,
        })
    }

    /// Opens a file of the query; `None` when it was deleted since it was listed,
    /// unless the page continues in it (then the page is gone).
    fn open_for_page(
        &self,
        entry: &FileEntry,
        query: &AuditQuery,
    ) -> Result<Option<File>, AuditError> {
        match self.reading(|| File::open(&entry.path)) {
            Ok(file) => Ok(Some(file)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if query.after.is_some_and(|after| after.seq == entry.seq) {
                    return Err(AuditError::PageGone);
                }
                Ok(None)
            }
            Err(error) => Err(AuditError::io(&entry.path, error)),
        }
    }
}

/// Whether file `i` of `entries` holds nothing of the query's time range, by the
/// first times of it and of the next file (with the slack of their order).
fn outside_range(entries: &[FileEntry], i: usize, query: &AuditQuery) -> bool {
    let next_starts_before_range = entries
        .get(i + 1)
        .is_some_and(|next| next.first_unix_ms + FILE_ORDER_SLACK_MS < query.from_unix_ms);
    let starts_after_range = query.to_unix_ms != 0
        && entries[i].first_unix_ms > query.to_unix_ms.saturating_add(FILE_ORDER_SLACK_MS);
    next_starts_before_range || starts_after_range
}

/// Which lines of the files belong to a query: its organization and time range.
struct LineFilter<'q> {
    query: &'q AuditQuery,
    /// A cheap test before parsing: the line names the organization.
    org_field: String,
}

impl<'q> LineFilter<'q> {
    fn of(query: &'q AuditQuery) -> Self {
        let org_field = format!("\"org\":{}", serde_json::Value::from(query.org.as_str()));
        LineFilter { query, org_field }
    }

    fn record_of(&self, line: &[u8]) -> Option<AuditRecord> {
        let text = std::str::from_utf8(line).ok()?;
        if !text.contains(&self.org_field) {
            return None;
        }
        let record = serde_json::from_str::<AuditRecord>(text).ok()?;
        let at = record.at_unix_ms;
        let in_range = at >= self.query.from_unix_ms
            && (self.query.to_unix_ms == 0 || at < self.query.to_unix_ms);
        (record.org == self.query.org && in_range).then_some(record)
    }
}

/// Reads the query's records of one file from `resume_at` into `records`; once the
/// page holds `limit`, returns where the next page starts.
fn read_page(
    file: File,
    entry: &FileEntry,
    resume_at: u64,
    lines: &LineFilter<'_>,
    limit: usize,
    records: &mut Vec<AuditRecord>,
) -> Result<Option<AuditCursor>, AuditError> {
    let io = |source| AuditError::io(&entry.path, source);
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(resume_at)).map_err(io)?;
    let mut offset = resume_at;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io)?;
        let line_start = offset;
        offset += read as u64;
        // The end, or a line still being written or torn by a crash: never step past
        // it, so a later page reads it once it is whole.
        if line.last() != Some(&b'\n') {
            return Ok(None);
        }
        let Some(record) = lines.record_of(&line) else {
            continue;
        };
        if records.len() == limit {
            return Ok(Some(AuditCursor {
                seq: entry.seq,
                offset: line_start,
            }));
        }
        records.push(record);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::audit::writer::AuditWriter;

    use crate::audit::sample_record as record;

    fn open(dir: &Path, file_bytes_max: u64, files_max: u32) -> Arc<AuditFiles> {
        let options = AuditOptions {
            file_bytes_max,
            files_max,
        };
        Arc::new(AuditFiles::open(dir.join("audit"), options).unwrap())
    }

    fn check(
        file_bytes_max: u64,
        files_max: u32,
        events: i64,
    ) -> (Arc<AuditFiles>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let files = open(dir.path(), file_bytes_max, files_max);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        for at in 0..events {
            writer.append(&record(at, if at % 2 == 0 { "acme" } else { "other" }).line());
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
        let files = open(dir.path(), 4096, 100);
        let mut writer = AuditWriter::new(Arc::clone(&files)).unwrap();
        // 300 events in write order: ten share each millisecond, and every seventh
        // carries an earlier time than the one before it (two threads read the clock
        // in one order and queued in the other).
        let mut written = Vec::new();
        for i in 0..300i64 {
            let at = 1_000 + i / 10 - if i % 7 == 0 { 3 } else { 0 };
            let mut event = record(at, "acme");
            event.generation = Some(i as u64);
            writer.append(&event.line());
            writer.append(&record(at, "other").line());
            written.push(event);
        }
        writer.flush(true);
        drop(writer);
        assert!(
            files.org_files("acme").unwrap().len() > 5,
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
        let path = files.org_files("acme").unwrap()[0].path.clone();
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
        let entries = files.org_files("acme").unwrap();
        assert!(entries.len() > 2);
        let first = files.query(&query("acme", 0, 0, 1)).unwrap();
        let cursor = first.next.expect("more events");
        assert_eq!(cursor.seq, entries[0].seq);
        std::fs::remove_file(&entries[0].path).unwrap();
        let mut next = query("acme", 0, 0, 10);
        next.after = Some(cursor);
        assert!(matches!(files.query(&next), Err(AuditError::PageGone)));
        // A token naming another organization's file reads nothing of it.
        let theirs = files.org_files("other").unwrap()[1].seq;
        next.after = Some(AuditCursor {
            seq: theirs,
            offset: 0,
        });
        assert!(matches!(files.query(&next), Err(AuditError::PageGone)));
    }

    #[test]
    fn files_rotate_by_size_and_the_oldest_are_deleted() {
        let (files, _dir) = check(4096, 3, 200);
        let entries = [
            files.org_files("acme").unwrap(),
            files.org_files("other").unwrap(),
        ];
        assert!(entries.iter().map(Vec::len).sum::<usize>() <= 4);
        for entry in entries.iter().flatten() {
            assert!(std::fs::metadata(&entry.path).unwrap().len() <= 4096);
        }
        let page = files.query(&query("acme", 0, 0, 1000)).unwrap();
        assert!(page.records.len() < 100, "the oldest events were deleted");
        assert_eq!(page.records.last().unwrap().at_unix_ms, 198);
    }

    #[test]
    fn a_torn_line_is_skipped_and_numbering_continues_after_a_restart() {
        let (files, dir) = check(1 << 20, 4, 4);
        let path = &files.org_files("acme").unwrap()[0].path;
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(b"{\"at_unix_ms\":9,\"org\":\"acme\",\"ki")
            .unwrap();
        assert_eq!(
            files.query(&query("acme", 0, 0, 10)).unwrap().records.len(),
            2
        );
        let reopened = AuditFiles::open(dir.path().join("audit"), files.options).unwrap();
        assert_eq!(
            reopened.next_seq.load(Ordering::Relaxed),
            2,
            "acme's and other's"
        );
    }
}
