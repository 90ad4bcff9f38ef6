//! The audit record: an append-only account of lease grants, releases, expiries,
//! terminations, refused acquires and admin changes, with their times, kept as JSON
//! lines in rotating files, one directory per organization under `<data dir>/audit/`
//! (see [`files`] for the format, [`writer`] for retention).
//!
//! Recording never slows an RPC: [`AuditLog::record`] puts the event on a bounded
//! queue (`limits::AUDIT_QUEUE_EVENTS_MAX`) with `try_send`, and a writer thread turns
//! events into lines. When the queue is full (or a write fails) a lease event or a
//! refused acquire is dropped and counted in the
//! `seatbroker_audit_events_dropped_total` metric.
//!
//! **Admin changes are never dropped.** Their events take another way
//! ([`AuditLog::record_admin_change`]): an inbox the writer empties before each batch,
//! written line by line and kept (in order) when a write fails, to be tried again
//! every `limits::AUDIT_ADMIN_RETRY_MS`. While the writer holds events it could not
//! write, or more than `limits::AUDIT_ADMIN_EVENTS_PENDING_MAX` wait, new admin
//! changes are refused with UNAVAILABLE before they are applied
//! ([`AuditAdmission::admit`], called by `Broker::execute`), as the write-ahead log
//! refuses them while the disk is full: an admin change is acknowledged only while its
//! event can be kept. The `seatbroker_audit_admin_events_pending` and
//! `seatbroker_audit_admin_changes_refused` gauges and a rate-limited error say so. At
//! shutdown the writer retries them for the grace period; any it still cannot write is
//! logged as an error with its whole content. Repeated refused acquires are
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

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::domain::{
    ApiKeyId, Command, DomainError, Email, LeaseId, LeaseIdText, OrgId, Principal, Product,
    Termination,
};
use crate::leases::{LeaseEnd, LeaseRef};
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
    OrganizationRenamed,
    /// The organization's state was removed; its earlier events stay in the record.
    OrganizationDeleted,
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
            AuditKind::OrganizationRenamed => "organization_renamed",
            AuditKind::OrganizationDeleted => "organization_deleted",
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

    fn as_str(&self) -> &str {
        match self {
            Actor::Operator => "operator",
            Actor::Member(email) => email.as_str(),
            Actor::Admin => "admin",
            Actor::Daemon => "daemon",
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
    /// The subject of the client certificate (mTLS) of the call that caused the event.
    pub client_cert: Option<Arc<str>>,
}

impl AuditEvent {
    /// The event, caused by a call over a connection with this client certificate.
    pub fn with_client_cert(mut self, subject: Option<Arc<str>>) -> Self {
        self.client_cert = subject;
        self
    }

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
            Some(LeaseEnd::Terminated(_)) => (
                AuditKind::LeaseTerminated,
                terminated_by.map_or(Actor::Admin, Actor::of),
            ),
        };
        // The cause of a termination other than an admin's own (a withdrawal, the
        // license's expiry, a revoked key): rare, so its text is allocated.
        let detail = match ended {
            Some(LeaseEnd::Terminated(cause)) if cause != Termination::Admin => {
                Some(cause.name().to_string())
            }
            _ => None,
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
            detail,
            client_cert: None,
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
            client_cert: None,
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
            client_cert: None,
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
        Command::UpdateQuota { update, .. } => {
            (K::QuotaSet, None, None, Some(quota_update_text(update)))
        }
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
            client_cert_subject,
            ..
        } => {
            let mut detail = format!("{} label={label:?}", key_id(id));
            if let Some(subject) = client_cert_subject {
                detail.push_str(&format!(" bound_to_client_cert={subject:?}"));
            }
            (K::ApiKeyCreated, None, Some(email.clone()), Some(detail))
        }
        Command::RevokeApiKey { key_id: id, .. } => {
            (K::ApiKeyRevoked, None, None, Some(key_id(id)))
        }
        Command::RenameOrganization { display_name, .. } => (
            K::OrganizationRenamed,
            None,
            None,
            Some(format!("name={display_name:?}")),
        ),
        Command::DeleteOrganization { .. } => (K::OrganizationDeleted, None, None, None),
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

/// The fields a partial quota update set, in `quota_text`'s form (the others kept).
fn quota_update_text(update: &crate::domain::QuotaUpdate) -> String {
    let mut fields = Vec::new();
    if let Some(kse_seats) = update.kse_seats {
        fields.push(format!("kse_seats={kse_seats}"));
    }
    if let Some(kre_sessions) = update.kre_sessions {
        fields.push(format!("kre_sessions={kre_sessions}"));
    }
    if let Some(expires) = update.expires_at_unix_ms {
        fields.push(format!("expires_at_unix_ms={}", expires.unwrap_or(0)));
    }
    fields.join(" ")
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
    /// The subject of the client certificate of the call's connection (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
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
            actor: event.actor.as_str().to_owned(),
            detail: event.detail.clone(),
            client_cert: event.client_cert.as_deref().map(str::to_owned),
        }
    }
}

/// One line as the writer serializes it: [`AuditRecord`]'s fields, in its order and
/// with its names, borrowed from an event or a record, so that making a line of a lease
/// event allocates nothing (the writer serializes it into a buffer it reuses).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AuditLine<'a> {
    pub at_unix_ms: i64,
    pub org: &'a str,
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_id: Option<&'a str>,
    pub actor: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<&'a str>,
}

impl AuditRecord {
    /// The record as a line to write.
    pub fn line(&self) -> AuditLine<'_> {
        AuditLine {
            at_unix_ms: self.at_unix_ms,
            org: &self.org,
            kind: &self.kind,
            product: self.product.as_deref(),
            email: self.email.as_deref(),
            lease_id: self.lease_id.as_deref(),
            generation: self.generation,
            engine_id: self.engine_id.as_deref(),
            actor: &self.actor,
            detail: self.detail.as_deref(),
            client_cert: self.client_cert.as_deref(),
        }
    }
}

impl AuditEvent {
    /// The event as a line to write; `lease_id` is the text of its lease's id
    /// ([`LeaseId::text`]), made by the caller on its stack.
    pub fn line<'a>(&'a self, lease_id: Option<&'a LeaseIdText>) -> AuditLine<'a> {
        AuditLine {
            at_unix_ms: self.at_unix_ms,
            org: self.org.as_str(),
            kind: self.kind.as_str(),
            product: self.product.map(Product::name),
            email: self.email.as_ref().map(Email::as_str),
            lease_id: lease_id.map(LeaseIdText::as_str),
            generation: self.lease.map(|(_, generation)| generation),
            engine_id: self.engine_id.as_deref(),
            actor: self.actor.as_str(),
            detail: self.detail.as_deref(),
            client_cert: self.client_cert.as_deref(),
        }
    }

    /// Hands the event's line to `write`.
    pub fn write_line(&self, write: &mut impl FnMut(&AuditLine)) {
        let lease_id = self.lease.map(|(id, _)| id.text());
        write(&self.line(lease_id.as_ref()));
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
    /// Events of an admin change wait in the inbox (a wake-up; when the queue is full
    /// the writer is busy and empties the inbox before its next batch anyway).
    AdminEvents,
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
    /// Every count, and fsync (at shutdown); admin changes' events are retried until
    /// the deadline.
    Everything { deadline: Instant },
}

/// The events of admin changes on their way to the files, shared by the handle, the
/// broker's admission and the writer thread.
#[derive(Default)]
struct AdminEvents {
    /// Recorded and not yet taken by the writer.
    inbox: parking_lot::Mutex<VecDeque<AuditEvent>>,
    /// Recorded and not yet written (the inbox and the writer's unwritten ones).
    pending: AtomicUsize,
    /// Why the writer could not write the oldest unwritten event; `None` while it
    /// holds none.
    failing: parking_lot::Mutex<Option<String>>,
}

/// The audit record's say on admin changes: refused while their events cannot be
/// kept. Cheap to clone; the default (no audit record) admits every change.
#[derive(Clone, Default)]
pub struct AuditAdmission(Option<Arc<AdminEvents>>);

impl AuditAdmission {
    /// `Err(Unavailable)`, with what the operator can do, while the writer holds
    /// events of admin changes it cannot write or more than
    /// `limits::AUDIT_ADMIN_EVENTS_PENDING_MAX` wait to be written.
    pub fn admit(&self) -> Result<(), DomainError> {
        let Some(admin) = &self.0 else {
            return Ok(());
        };
        if let Some(reason) = admin.failing.lock().as_deref() {
            return Err(DomainError::Unavailable(format!(
                "the audit record cannot be written: {reason}; admin changes are refused until it can (they resume by themselves; see the daemon's log)"
            )));
        }
        let pending = admin.pending.load(Ordering::Relaxed);
        if pending >= limits::AUDIT_ADMIN_EVENTS_PENDING_MAX {
            return Err(DomainError::Unavailable(format!(
                "the audit record cannot keep up: {pending} events of admin changes wait to be written; admin changes are refused until they are, retry shortly"
            )));
        }
        Ok(())
    }
}

/// Paces a repeated warning: due at most once per `limits::AUDIT_WARNING_INTERVAL_MS`.
#[derive(Debug, Default)]
struct Warnings {
    last: Option<Instant>,
    left_out: u64,
}

impl Warnings {
    /// `Some(warnings left out since the last one)` when one is due now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        let interval = Duration::from_millis(limits::AUDIT_WARNING_INTERVAL_MS);
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < interval)
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

/// The handle of the audit record: record events, flush, query.
pub struct AuditLog {
    sender: mpsc::Sender<Message>,
    files: Arc<AuditFiles>,
    queries: QueryAdmission,
    admin: Arc<AdminEvents>,
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
        let admin = Arc::new(AdminEvents::default());
        let writer = AdminWriter {
            writer,
            admin: Arc::clone(&admin),
            unwritten: VecDeque::new(),
            refusal_warnings: Warnings::default(),
            retry_at: None,
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_until_closed(receiver, writer, &timer))
            .map_err(io)?;
        metrics::audit_admin_events(0, false);
        Ok(AuditLog {
            sender,
            files,
            queries: QueryAdmission::new(),
            admin,
        })
    }

    /// Queues an event; never waits. A full queue drops the event and counts it.
    pub fn record(&self, event: AuditEvent) {
        if self.sender.try_send(Message::Event(event)).is_err() {
            metrics::audit_event_dropped();
        }
    }

    /// Hands over the events of an admin change that was admitted
    /// ([`AuditAdmission::admit`]) and made durable; never waits, never drops them.
    pub fn record_admin_change(&self, events: Vec<AuditEvent>) {
        let count = events.len();
        self.admin.inbox.lock().extend(events);
        self.admin.pending.fetch_add(count, Ordering::Relaxed);
        let _ = self.sender.try_send(Message::AdminEvents);
    }

    /// What `Broker::execute` asks before an admin change.
    pub fn admission(&self) -> AuditAdmission {
        AuditAdmission(Some(Arc::clone(&self.admin)))
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
    /// shutdown); events of admin changes the writer cannot write are tried again
    /// for up to `grace`, then logged as errors with their content.
    pub async fn close(&self, grace: Duration) -> Result<(), AuditError> {
        let deadline = Instant::now() + grace;
        self.flush_with(FlushScope::Everything { deadline }).await
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

/// The writer and the events of admin changes it has not written yet.
struct AdminWriter {
    writer: writer::AuditWriter,
    admin: Arc<AdminEvents>,
    /// Taken from the inbox and not yet written, oldest first.
    unwritten: VecDeque<AuditRecord>,
    /// Paces the error that says admin changes are refused.
    refusal_warnings: Warnings,
    /// After a failed attempt, the next is not made before this (each attempt out of
    /// descriptors closes the writer's files to find one).
    retry_at: Option<Instant>,
}

impl AdminWriter {
    /// Takes the inbox and writes every unwritten admin event in order, up to the
    /// first that fails (kept, with the later ones, for the next attempt).
    fn write_admin_events(&mut self) {
        let taken = std::mem::take(&mut *self.admin.inbox.lock());
        self.unwritten.extend(taken.iter().map(AuditRecord::from));
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let was_failing = self.admin.failing.lock().is_some();
        let mut failure = None;
        while let Some(record) = self.unwritten.front() {
            match self.writer.append_now(&record.line()) {
                Ok(()) => {
                    self.unwritten.pop_front();
                    self.admin.pending.fetch_sub(1, Ordering::Relaxed);
                }
                Err(error) => {
                    failure = Some(if descriptors::is_out_of_descriptors(&error) {
                        "too many open files: the daemon is out of file descriptors".to_owned()
                    } else if error.kind() == std::io::ErrorKind::StorageFull {
                        // Said as the log says it, since a full disk stops both.
                        format!(
                            "disk full: free space on the disk of {} ({error})",
                            self.writer.dir().display()
                        )
                    } else {
                        format!("{error} (in {})", self.writer.dir().display())
                    });
                    break;
                }
            }
        }
        let pending = self.admin.pending.load(Ordering::Relaxed);
        metrics::audit_admin_events(pending, failure.is_some());
        match &failure {
            Some(reason) => {
                if let Some(left_out) = self.refusal_warnings.due() {
                    tracing::error!(
                        reason = %reason,
                        unwritten = self.unwritten.len(),
                        warnings_left_out = left_out,
                        "the audit record cannot be written: admin changes are refused until it can"
                    );
                }
            }
            None if was_failing => {
                tracing::warn!("the audit record is written again: admin changes are accepted");
            }
            None => {}
        }
        self.retry_at = failure
            .is_some()
            .then(|| Instant::now() + Duration::from_millis(limits::AUDIT_ADMIN_RETRY_MS));
        *self.admin.failing.lock() = failure;
    }

    /// Retries the unwritten admin events until none is left or `deadline` passes.
    fn write_admin_events_until(&mut self, deadline: Instant) {
        self.retry_at = None;
        self.write_admin_events();
        while !self.unwritten.is_empty() && Instant::now() < deadline {
            let retry = Duration::from_millis(limits::AUDIT_ADMIN_RETRY_MS);
            std::thread::sleep(retry.min(deadline.saturating_duration_since(Instant::now())));
            self.retry_at = None;
            self.write_admin_events();
        }
    }

    /// Logs every admin event still unwritten as an error with its content (the
    /// daemon stops: nothing is left to retry them).
    fn report_unwritten(&mut self) {
        self.unwritten.extend(
            self.admin
                .inbox
                .lock()
                .drain(..)
                .map(|e| AuditRecord::from(&e)),
        );
        for record in self.unwritten.drain(..) {
            let event = serde_json::to_string(&record).unwrap_or_else(|_| format!("{record:?}"));
            tracing::error!(
                %event,
                "an admin change's audit event could not be written before the daemon stopped; it is only in this log"
            );
        }
        self.admin.pending.store(0, Ordering::Relaxed);
    }

    fn has_unwritten(&self) -> bool {
        !self.unwritten.is_empty()
    }
}

/// The writer thread: takes events in batches and appends them, writes the counts of
/// repeated refusals when their minute ends, retries admin changes' events it could
/// not write; ends when every sender is gone.
fn write_until_closed(
    mut receiver: mpsc::Receiver<Message>,
    admin_writer: AdminWriter,
    timer: &tokio::runtime::Runtime,
) {
    let mut writing = Writing {
        admin_writer,
        repeats: repeats::DenialRepeats::default(),
    };
    loop {
        let wait = writing.end_periods_and_wait(unix_ms_now());
        let first = match wait {
            None => timer.block_on(receiver.recv()),
            // The timer is made inside the runtime, which it needs.
            Some(wait) => {
                match timer.block_on(async { tokio::time::timeout(wait, receiver.recv()).await }) {
                    Ok(message) => message,
                    Err(_) => {
                        // A minute ended (its counts are written above), or a retry is due.
                        writing.admin_writer.write_admin_events();
                        continue;
                    }
                }
            }
        };
        let Some(first) = first else {
            break;
        };
        writing.admin_writer.write_admin_events();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next.take() {
            writing.handle(message);
            taken += 1;
            if taken < limits::AUDIT_BATCH_EVENTS_MAX {
                next = receiver.try_recv().ok();
            }
        }
        writing.admin_writer.writer.flush(false);
        // Let the next batch gather: one wake-up per pause instead of one per event
        // keeps the writer from competing with the RPC threads for the cores.
        std::thread::sleep(std::time::Duration::from_millis(
            limits::AUDIT_WRITER_PAUSE_MS,
        ));
    }
    writing.write_everything(None);
}

/// The writer thread's state: the files with the admin events they owe, and the
/// refused acquires being counted.
struct Writing {
    admin_writer: AdminWriter,
    repeats: repeats::DenialRepeats,
}

impl Writing {
    /// Writes the counts of the minutes that ended before `now`; returns how long the
    /// thread may wait for a message (`None`: until one comes).
    fn end_periods_and_wait(&mut self, now: i64) -> Option<Duration> {
        let writer = &mut self.admin_writer.writer;
        self.repeats
            .end_periods_before(now, &mut |record| writer.append(record));
        let retry = Duration::from_millis(limits::AUDIT_ADMIN_RETRY_MS);
        match (self.repeats.is_empty(), self.admin_writer.has_unwritten()) {
            (true, false) => None,
            (true, true) => Some(retry),
            (false, false) => Some(until_period_end(now)),
            (false, true) => Some(until_period_end(now).min(retry)),
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Event(event) => {
                let writer = &mut self.admin_writer.writer;
                self.repeats
                    .record(&event, &mut |record| writer.append(record));
            }
            Message::AdminEvents => {}
            Message::Flush { scope, done } => {
                match scope {
                    FlushScope::Organization(org) => {
                        self.admin_writer.write_admin_events();
                        let writer = &mut self.admin_writer.writer;
                        self.repeats
                            .write_org(&org, &mut |record| writer.append(record));
                        writer.flush(false);
                    }
                    FlushScope::Everything { deadline } => self.write_everything(Some(deadline)),
                }
                let _ = done.send(());
            }
        }
    }

    /// Writes and fsyncs everything held: the admin events (retried until `deadline`,
    /// else tried once) and every count; says loudly what could not be written.
    fn write_everything(&mut self, deadline: Option<Instant>) {
        match deadline {
            Some(deadline) => self.admin_writer.write_admin_events_until(deadline),
            None => self.admin_writer.write_admin_events(),
        }
        let writer = &mut self.admin_writer.writer;
        self.repeats.write_all(&mut |record| writer.append(record));
        writer.flush(true);
        self.admin_writer.report_unwritten();
    }
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
        client_cert: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease event's line, made by borrowing, is byte for byte the line the record's
    /// owned form serializes to (the reader's form), for every kind of lease event.
    #[test]
    fn a_lease_events_borrowed_line_is_its_records_line() {
        let org = OrgId::parse("acme").unwrap();
        let email = Email::parse("ann@acme.test").unwrap();
        let lease = LeaseRef {
            id: LeaseId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            generation: 7,
            product: Product::Kre,
            email: &email,
            engine_id: "engine \"7\"\n\u{1}",
            hostname: "host",
            label: "",
            deadline: tokio::time::Instant::now(),
            acquired_at_unix_ms: 1,
        };
        let admin = Principal::Member {
            org: org.clone(),
            email: email.clone(),
        };
        let ends = [
            (None, None),
            (Some(LeaseEnd::Released), None),
            (Some(LeaseEnd::Expired), None),
            (Some(LeaseEnd::Terminated(Termination::Admin)), Some(&admin)),
            (Some(LeaseEnd::Terminated(Termination::Admin)), None),
            (Some(LeaseEnd::Terminated(Termination::KeyRevoked)), None),
        ];
        for (ended, by) in ends {
            let event = AuditEvent::lease(1_700_000_000_123, &org, lease, ended, by)
                .with_client_cert(Some("CN=engine, O=\"Acme\"".into()));
            let mut lines = Vec::new();
            event.write_line(&mut |line| lines.push(serde_json::to_string(line).unwrap()));
            let owned = serde_json::to_string(&AuditRecord::from(&event)).unwrap();
            assert_eq!(lines, vec![owned.clone()]);
            let back: AuditRecord = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(back, AuditRecord::from(&event));
            assert_eq!(
                back.lease_id.as_deref(),
                Some(lease.id.to_string().as_str())
            );
        }
    }

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
