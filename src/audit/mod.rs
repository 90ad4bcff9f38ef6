//! The audit record: an append-only account of lease grants, releases, expiries,
//! terminations, refused acquires and admin changes, with their times, kept as JSON
//! lines in rotating files, one directory per organization under `<data dir>/audit/`
//! (see [`files`] for the format, [`writer`] for retention).
//!
//! Recording never slows an RPC: [`AuditLog::record`] puts the event on a bounded
//! queue (`limits::AUDIT_QUEUE_EVENTS_MAX`) with `try_send`, and a writer thread turns
//! events into lines. When the queue is full the event is dropped and counted in the
//! `seatbroker_audit_events_dropped_total` metric. Repeated refused acquires are
//! counted rather than written one by one ([`repeats`]). The record is best effort: it
//! is flushed to the operating system after every batch and fsynced every MiB
//! (`limits::AUDIT_SYNC_BYTES`), at rotation and at shutdown, so a power loss may
//! lose the last moments; the write-ahead log, not this
//! record, is what the broker's state rests on. Secrets never enter it: API key
//! events carry the key id and label only.
//!
//! One organization cannot crowd out another: retention deletes from the organization
//! holding the most of the record ([`writer`]), and queries are admitted at most
//! `limits::AUDIT_QUERIES_PER_ORG_MAX` per organization within the daemon's
//! `limits::AUDIT_QUERIES_MAX` ([`AuditLog::query`]); a query reads only its
//! organization's files.

mod descriptors;
pub mod files;
mod repeats;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::domain::{ApiKeyId, Command, Email, OrgId, Principal, Product};
use crate::leases::{LeaseEnd, LeaseId, LeaseRef};
use crate::limits;
use crate::telemetry::metrics;

pub use files::AuditFiles;

/// What went wrong with the audit record.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process (or the system) has no file descriptor left to open an audit file:
    /// a passing condition, not a broken record.
    #[error(
        "cannot open the audit record ({path}): the daemon is out of file descriptors; retry shortly"
    )]
    OutOfDescriptors {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit writer has stopped")]
    WriterStopped,
    #[error(
        "{0} audit queries of this organization are running, the most allowed at once; retry when one has finished"
    )]
    BusyOrganization(usize),
    #[error("{0} audit queries are running, the most allowed at once; retry shortly")]
    Busy(usize),
    #[error(
        "the audit events after this page token are gone (deleted to keep the record within audit.files_max x audit.file_bytes_max), or the token is of another organization; export again from a later time"
    )]
    PageGone,
}

impl AuditError {
    /// The error of an I/O call on `path`, telling descriptor exhaustion (EMFILE,
    /// ENFILE) apart.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        let path = path.to_path_buf();
        if descriptors::is_out_of_descriptors(&source) {
            AuditError::OutOfDescriptors { path, source }
        } else {
            AuditError::Io { path, source }
        }
    }
}

/// What happened, as it is named in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    LeaseGranted,
    LeaseReleased,
    LeaseExpired,
    LeaseTerminated,
    AcquireDenied,
    /// The count of refused acquires after the first of a minute ([`repeats`]).
    AcquireDeniedRepeated,
    OrganizationCreated,
    QuotaSet,
    MemberAdded,
    MemberRemoved,
    RoleSet,
    LicensesAssigned,
    LicensesUnassigned,
    LicenseTransferred,
    ApiKeyCreated,
    ApiKeyRevoked,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::LeaseGranted => "lease_granted",
            AuditKind::LeaseReleased => "lease_released",
            AuditKind::LeaseExpired => "lease_expired",
            AuditKind::LeaseTerminated => "lease_terminated",
            AuditKind::AcquireDenied => "acquire_denied",
            AuditKind::AcquireDeniedRepeated => "acquire_denied_repeated",
            AuditKind::OrganizationCreated => "organization_created",
            AuditKind::QuotaSet => "quota_set",
            AuditKind::MemberAdded => "member_added",
            AuditKind::MemberRemoved => "member_removed",
            AuditKind::RoleSet => "role_set",
            AuditKind::LicensesAssigned => "licenses_assigned",
            AuditKind::LicensesUnassigned => "licenses_unassigned",
            AuditKind::LicenseTransferred => "license_transferred",
            AuditKind::ApiKeyCreated => "api_key_created",
            AuditKind::ApiKeyRevoked => "api_key_revoked",
        }
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Member(Email),
    /// An Owner or Admin whom the lease table was not told of ended a session.
    Admin,
    /// The daemon itself (expiries).
    Daemon,
}

impl Actor {
    fn of(principal: &Principal) -> Self {
        match principal {
            Principal::Operator => Actor::Operator,
            Principal::Member { email, .. } => Actor::Member(email.clone()),
        }
    }

    fn text(&self) -> String {
        match self {
            Actor::Operator => "operator".into(),
            Actor::Member(email) => email.to_string(),
            Actor::Admin => "admin".into(),
            Actor::Daemon => "daemon".into(),
        }
    }
}

/// One event, as recorded on the hot path: cheap to build (shared strings, no
/// formatting); the writer thread turns it into a line.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at_unix_ms: i64,
    pub org: OrgId,
    pub kind: AuditKind,
    pub product: Option<Product>,
    pub email: Option<Email>,
    pub lease: Option<(LeaseId, u64)>,
    pub engine_id: Option<Box<str>>,
    pub actor: Actor,
    pub detail: Option<String>,
}

impl AuditEvent {
    /// A grant, or the end of a lease; `terminated_by` names the admin who ended it.
    pub fn lease(
        at_unix_ms: i64,
        org: &OrgId,
        lease: LeaseRef<'_>,
        ended: Option<LeaseEnd>,
        terminated_by: Option<&Principal>,
    ) -> Self {
        let (kind, actor) = match ended {
            None => (AuditKind::LeaseGranted, Actor::Member(lease.email.clone())),
            Some(LeaseEnd::Released) => {
                (AuditKind::LeaseReleased, Actor::Member(lease.email.clone()))
            }
            Some(LeaseEnd::Expired) => (AuditKind::LeaseExpired, Actor::Daemon),
            Some(LeaseEnd::Terminated) => (
                AuditKind::LeaseTerminated,
                terminated_by.map_or(Actor::Admin, Actor::of),
            ),
        };
        AuditEvent {
            at_unix_ms,
            org: org.clone(),
            kind,
            product: Some(lease.product),
            email: Some(lease.email.clone()),
            lease: Some((lease.id, lease.generation)),
            engine_id: Some(lease.engine_id.into()),
            actor,
            detail: None,
        }
    }

    /// An acquire the broker refused, with the reason's metric name.
    pub fn denied(
        at_unix_ms: i64,
        org: &OrgId,
        email: &Email,
        product: Product,
        reason: &'static str,
    ) -> Self {
        AuditEvent {
            at_unix_ms,
            org: org.clone(),
            kind: AuditKind::AcquireDenied,
            product: Some(product),
            email: Some(email.clone()),
            lease: None,
            engine_id: None,
            actor: Actor::Member(email.clone()),
            detail: Some(reason.into()),
        }
    }

    /// The events of an admin change: one, or one per email of an assignment batch.
    /// Admin calls are rare, so formatting details here is fine.
    pub fn of_command(at_unix_ms: i64, principal: &Principal, command: &Command) -> Vec<Self> {
        let event = |(kind, product, email, detail): Described| AuditEvent {
            at_unix_ms,
            org: command.org().clone(),
            kind,
            product,
            email,
            lease: None,
            engine_id: None,
            actor: Actor::of(principal),
            detail,
        };
        match command {
            Command::AssignLicenses {
                product, emails, ..
            } => emails
                .iter()
                .map(|email| {
                    event((
                        AuditKind::LicensesAssigned,
                        Some(*product),
                        Some(email.clone()),
                        None,
                    ))
                })
                .collect(),
            Command::UnassignLicenses {
                product, emails, ..
            } => emails
                .iter()
                .map(|email| {
                    event((
                        AuditKind::LicensesUnassigned,
                        Some(*product),
                        Some(email.clone()),
                        None,
                    ))
                })
                .collect(),
            _ => vec![event(describe(command))],
        }
    }
}

fn key_id(id: &ApiKeyId) -> String {
    format!("key_id={id}")
}

type Described = (AuditKind, Option<Product>, Option<Email>, Option<String>);

/// The kind and details of an admin command, without anything secret (assignment
/// batches are split per email by [`AuditEvent::of_command`]).
fn describe(command: &Command) -> Described {
    use AuditKind as K;
    match command {
        Command::CreateOrganization {
            display_name,
            owner,
            quota,
            ..
        } => (
            K::OrganizationCreated,
            None,
            Some(owner.clone()),
            Some(format!("name={display_name:?} {}", quota_text(quota))),
        ),
        Command::SetQuota { quota, .. } => (K::QuotaSet, None, None, Some(quota_text(quota))),
        Command::AddMember { email, role, .. } => (
            K::MemberAdded,
            None,
            Some(email.clone()),
            Some(format!("role={role}")),
        ),
        Command::RemoveMember { email, .. } => (K::MemberRemoved, None, Some(email.clone()), None),
        Command::SetRole { email, role, .. } => (
            K::RoleSet,
            None,
            Some(email.clone()),
            Some(format!("role={role}")),
        ),
        Command::AssignLicenses { product, .. } => {
            (K::LicensesAssigned, Some(*product), None, None)
        }
        Command::UnassignLicenses { product, .. } => {
            (K::LicensesUnassigned, Some(*product), None, None)
        }
        Command::TransferLicense {
            product, from, to, ..
        } => (
            K::LicenseTransferred,
            Some(*product),
            Some(to.clone()),
            Some(format!("from={from} to={to}")),
        ),
        Command::CreateApiKey {
            key_id: id,
            email,
            label,
            ..
        } => (
            K::ApiKeyCreated,
            None,
            Some(email.clone()),
            Some(format!("{} label={label:?}", key_id(id))),
        ),
        Command::RevokeApiKey { key_id: id, .. } => {
            (K::ApiKeyRevoked, None, None, Some(key_id(id)))
        }
    }
}

fn quota_text(quota: &crate::domain::Quota) -> String {
    format!(
        "kse_seats={} kre_sessions={} expires_at_unix_ms={}",
        quota.kse_seats,
        quota.kre_sessions,
        quota.expires_at_unix_ms.unwrap_or(0)
    )
}

/// One line of the audit record, as written and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at_unix_ms: i64,
    pub org: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<String>,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&AuditEvent> for AuditRecord {
    fn from(event: &AuditEvent) -> Self {
        AuditRecord {
            at_unix_ms: event.at_unix_ms,
            org: event.org.to_string(),
            kind: event.kind.as_str().into(),
            product: event.product.map(|p| p.name().to_owned()),
            email: event.email.as_ref().map(Email::to_string),
            lease_id: event.lease.map(|(id, _)| id.to_string()),
            generation: event.lease.map(|(_, generation)| generation),
            engine_id: event.engine_id.as_deref().map(str::to_owned),
            actor: event.actor.text(),
            detail: event.detail.clone(),
        }
    }
}

/// Sizes of the audit files (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// A file is closed and a new one started past this size.
    pub file_bytes_max: u64,
    /// The oldest files are deleted past this count.
    pub files_max: u32,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            file_bytes_max: limits::AUDIT_FILE_BYTES_MAX_DEFAULT,
            files_max: limits::AUDIT_FILES_MAX_DEFAULT,
        }
    }
}

/// What the writer thread is asked to do.
enum Message {
    Event(AuditEvent),
    /// Write out everything queued before this, then answer.
    Flush {
        scope: FlushScope,
        done: oneshot::Sender<()>,
    },
}

/// What a flush writes out besides the queued events.
enum FlushScope {
    /// The counts of one organization's repeated refusals (before a query of it).
    Organization(String),
    /// Every count, and fsync (at shutdown).
    Everything,
}

/// The handle of the audit record: record events, flush, query.
pub struct AuditLog {
    sender: mpsc::Sender<Message>,
    files: Arc<AuditFiles>,
    queries: QueryAdmission,
}

/// Admission of queries: at most `limits::AUDIT_QUERIES_PER_ORG_MAX` of one
/// organization and `limits::AUDIT_QUERIES_MAX` in all (as a fair queue gives each
/// flow its share, and the total only protects the daemon). Never waits: a query over
/// either bound is refused at once.
#[derive(Clone)]
struct QueryAdmission {
    all: Arc<Semaphore>,
    /// Running queries per organization; an entry exists only while one runs, so
    /// it holds at most `limits::AUDIT_QUERIES_MAX` entries.
    per_org: Arc<parking_lot::Mutex<HashMap<String, usize>>>,
}

/// A query's place; gives it back when dropped.
struct QueryPermit {
    _all: tokio::sync::OwnedSemaphorePermit,
    org: String,
    per_org: Arc<parking_lot::Mutex<HashMap<String, usize>>>,
}

impl Drop for QueryPermit {
    fn drop(&mut self) {
        let mut per_org = self.per_org.lock();
        if let Some(running) = per_org.get_mut(&self.org) {
            *running -= 1;
            if *running == 0 {
                per_org.remove(&self.org);
            }
        }
    }
}

impl QueryAdmission {
    fn new() -> Self {
        QueryAdmission {
            all: Arc::new(Semaphore::new(limits::AUDIT_QUERIES_MAX)),
            per_org: Arc::default(),
        }
    }

    /// A place for a query of `org`, taken from its organization's share first so
    /// that an organization at its bound takes nothing from the others.
    fn admit(&self, org: &str) -> Result<QueryPermit, AuditError> {
        let mut per_org = self.per_org.lock();
        let running = per_org.get(org).copied().unwrap_or(0);
        if running >= limits::AUDIT_QUERIES_PER_ORG_MAX {
            return Err(AuditError::BusyOrganization(
                limits::AUDIT_QUERIES_PER_ORG_MAX,
            ));
        }
        let all = Arc::clone(&self.all)
            .try_acquire_owned()
            .map_err(|_| AuditError::Busy(limits::AUDIT_QUERIES_MAX))?;
        per_org.insert(org.to_owned(), running + 1);
        Ok(QueryPermit {
            _all: all,
            org: org.to_owned(),
            per_org: Arc::clone(&self.per_org),
        })
    }
}

/// What to read: the events of one organization in `[from_unix_ms, to_unix_ms)`
/// (0: unbounded), at most `limit`, after `after` when continuing a previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub org: String,
    pub from_unix_ms: i64,
    pub to_unix_ms: i64,
    pub limit: usize,
    pub after: Option<AuditCursor>,
}

/// A page of events of one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Where the next page starts, when more events of the range exist past the limit.
    pub next: Option<AuditCursor>,
}

/// A position in the audit files: the line a page stopped before. Pages follow the
/// files' order, so a range is read exactly once however many events share a
/// millisecond and however the clock ordered them. Handed to clients as an opaque
/// page token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    /// The file's sequence number.
    pub seq: u64,
    /// The byte offset of the line in that file.
    pub offset: u64,
}

impl AuditCursor {
    const TOKEN_PREFIX: &str = "a1.";

    pub fn to_token(self) -> String {
        format!("{}{}.{}", Self::TOKEN_PREFIX, self.seq, self.offset)
    }

    /// `None` for a token this daemon did not issue (it is checked for shape only: a
    /// forged position reads nothing it could not read from the start of the range).
    pub fn from_token(token: &str) -> Option<Self> {
        let (seq, offset) = token.strip_prefix(Self::TOKEN_PREFIX)?.split_once('.')?;
        let offset: u64 = offset.parse().ok()?;
        // A file offset is an i64 to the operating system.
        i64::try_from(offset).ok()?;
        Some(AuditCursor {
            seq: seq.parse().ok()?,
            offset,
        })
    }
}

impl AuditLog {
    /// Opens (or creates) `<data_dir>/audit` and starts the writer thread.
    /// Files of the older layout are kept and read (see [`files`]).
    pub fn open(data_dir: &std::path::Path, options: AuditOptions) -> Result<Self, AuditError> {
        let files = Arc::new(AuditFiles::open(data_dir.join("audit"), options)?);
        let writer = writer::AuditWriter::new(Arc::clone(&files))?;
        let io = |source| AuditError::io(files.dir(), source);
        // The writer waits for events or the end of a minute of counted refusals.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(io)?;
        let (sender, receiver) = mpsc::channel(limits::AUDIT_QUEUE_EVENTS_MAX);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_until_closed(receiver, writer, &timer))
            .map_err(io)?;
        Ok(AuditLog {
            sender,
            files,
            queries: QueryAdmission::new(),
        })
    }

    /// Queues an event; never waits. A full queue drops the event and counts it.
    pub fn record(&self, event: AuditEvent) {
        if self.sender.try_send(Message::Event(event)).is_err() {
            metrics::audit_event_dropped();
        }
    }

    async fn flush_with(&self, scope: FlushScope) -> Result<(), AuditError> {
        let (done, written) = oneshot::channel();
        self.sender
            .send(Message::Flush { scope, done })
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        written.await.map_err(|_| AuditError::WriterStopped)
    }

    /// Waits until every event of `org` recorded before the call is in the files,
    /// with the counts of its repeated refusals so far.
    pub async fn flush(&self, org: &str) -> Result<(), AuditError> {
        self.flush_with(FlushScope::Organization(org.to_owned()))
            .await
    }

    /// Writes out and fsyncs everything recorded so far, every count included (at
    /// shutdown).
    pub async fn close(&self) -> Result<(), AuditError> {
        self.flush_with(FlushScope::Everything).await
    }

    /// Runs `query` (see [`AuditFiles::query`]). Flushes first, so an event recorded
    /// before the call is found. `Err(BusyOrganization)` while
    /// `limits::AUDIT_QUERIES_PER_ORG_MAX` queries of the organization run,
    /// `Err(Busy)` while `limits::AUDIT_QUERIES_MAX` run in all.
    pub async fn query(&self, query: AuditQuery) -> Result<AuditPage, AuditError> {
        let running = self.queries.admit(&query.org)?;
        self.flush(&query.org).await?;
        let files = Arc::clone(&self.files);
        // The permit goes with the scan: a caller that gives up (and drops this
        // future) does not free a slot while its scan still runs.
        tokio::task::spawn_blocking(move || {
            let _running = running;
            files.query(&query)
        })
        .await
        .map_err(|_| AuditError::WriterStopped)?
    }
}

/// The wall clock of the writer thread (the daemon's events carry the same clock's
/// times).
fn unix_ms_now() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.unix_ms()
}

/// How long until the minute of `now_unix_ms` ends.
fn until_period_end(now_unix_ms: i64) -> std::time::Duration {
    let period = limits::AUDIT_DENIAL_REPEAT_MS;
    let left = period - now_unix_ms.rem_euclid(period);
    std::time::Duration::from_millis(left as u64)
}

/// The writer thread: takes events in batches and appends them, writes the counts of
/// repeated refusals when their minute ends; ends when every sender is gone.
fn write_until_closed(
    mut receiver: mpsc::Receiver<Message>,
    mut writer: writer::AuditWriter,
    timer: &tokio::runtime::Runtime,
) {
    let mut repeats = repeats::DenialRepeats::default();
    loop {
        let now = unix_ms_now();
        repeats.end_periods_before(now, &mut |record| writer.append(record));
        let first = if repeats.is_empty() {
            timer.block_on(receiver.recv())
        } else {
            let wait = until_period_end(now);
            // The timer is made inside the runtime, which it needs.
            match timer.block_on(async { tokio::time::timeout(wait, receiver.recv()).await }) {
                Ok(message) => message,
                Err(_) => continue, // A minute ended: write its counts.
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => {
                    repeats.record(&event, &mut |record| writer.append(record));
                }
                Message::Flush { scope, done } => {
                    match scope {
                        FlushScope::Organization(org) => {
                            repeats.write_org(&org, &mut |record| writer.append(record));
                            writer.flush(false);
                        }
                        FlushScope::Everything => {
                            repeats.write_all(&mut |record| writer.append(record));
                            writer.flush(true);
                        }
                    }
                    let _ = done.send(());
                }
            }
            taken += 1;
            if taken < limits::AUDIT_BATCH_EVENTS_MAX {
                next = receiver.try_recv().ok();
            }
        }
        writer.flush(false);
        // Let the next batch gather: one wake-up per pause instead of one per event
        // keeps the writer from competing with the RPC threads for the cores.
        std::thread::sleep(std::time::Duration::from_millis(
            limits::AUDIT_WRITER_PAUSE_MS,
        ));
    }
    repeats.write_all(&mut |record| writer.append(record));
    writer.flush(true);
}

/// A lease grant of `org` at `at`, with a 100-byte detail: the unit tests' record.
#[cfg(test)]
pub(crate) fn sample_record(at: i64, org: &str) -> AuditRecord {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn query(org: &str) -> AuditQuery {
        AuditQuery {
            org: org.into(),
            from_unix_ms: 0,
            to_unix_ms: 0,
            limit: 10,
            after: None,
        }
    }

    #[tokio::test]
    async fn queries_past_an_organizations_share_or_the_total_are_refused_until_one_finishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = AuditLog::open(dir.path(), AuditOptions::default()).expect("open");
        let acme: Vec<_> = (0..limits::AUDIT_QUERIES_PER_ORG_MAX)
            .map(|_| audit.queries.admit("acme").expect("acme's share"))
            .collect();
        let refused = audit.query(query("acme")).await;
        assert!(
            matches!(refused, Err(AuditError::BusyOrganization(_))),
            "{refused:?}"
        );
        // Another organization is not affected by acme's queries.
        assert!(audit.query(query("globex")).await.is_ok());
        // Fill the daemon's bound with other organizations' shares.
        let mut others = Vec::new();
        for i in 0.. {
            match audit.queries.admit(&format!("org-{i}")) {
                Ok(permit) => others.push(permit),
                Err(AuditError::Busy(limits::AUDIT_QUERIES_MAX)) => break,
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(acme.len() + others.len(), limits::AUDIT_QUERIES_MAX);
        let refused = audit.query(query("globex")).await;
        assert!(matches!(refused, Err(AuditError::Busy(_))), "{refused:?}");
        drop(acme);
        let page = audit.query(query("acme")).await.expect("answered");
        assert!(page.records.is_empty());
        assert!(audit.queries.per_org.lock().len() <= limits::AUDIT_QUERIES_MAX);
    }

    #[test]
    fn running_out_of_descriptors_is_told_apart_from_a_broken_disk() {
        let path = Path::new("audit");
        for errno in [libc::EMFILE, libc::ENFILE] {
            let error = AuditError::io(path, std::io::Error::from_raw_os_error(errno));
            assert!(
                matches!(error, AuditError::OutOfDescriptors { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("out of file descriptors"));
        }
        let error = AuditError::io(path, std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(error, AuditError::Io { .. }), "{error}");
    }
}
