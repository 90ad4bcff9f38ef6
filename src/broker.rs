//! The broker: the admin state, the lease table and the command log put together.
//! Every admin mutation takes one path, [`Broker::execute`]: admit into the log queue,
//! lock, authorize, apply, append, unlock, wait until durable, answer. Engine calls
//! take a read lock on the admin state (licenses and quotas) and then the one
//! organization's lease lock; the lock order is always admin state, then lease table.
//! A snapshot is cut here too ([`Broker::snapshot_now`]): it needs the admin lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::auth::{self, OperatorKey};
use crate::clock::Clock;
use crate::domain::journal::{Durable, Journal};
use crate::domain::{
    Action, AdminState, ApiKeyRecord, Command, CommandOutcome, DomainError, Email, OrgId,
    Organization, Principal, Product, Quota, Role, Termination, authorize, authorize_command,
};
use crate::domain::{Lease, LeaseId};
use crate::leases::{
    AcquireRequest, Acquired, GoneLeases, Granted, LeaseEnd, LeaseTable, Now, ProductCounters,
    WaitTicket,
};
use crate::limits;
use crate::storage::durable::{self, WalJournal};
use crate::wal::{Lsn, WalError};
use tokio::time::Instant;

/// Why [`Broker::close`] could not make the log durable: the journal's answer, or the
/// task that asked it failing (an infrastructure failure, not a domain error).
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error(transparent)]
    Log(DomainError),
    #[error("the task closing the log failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What an engine sends to acquire a session (already validated by the edge).
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub product: Product,
    pub engine_id: String,
    pub hostname: String,
    pub label: String,
}

/// Usage of one product in one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductUsage {
    pub product: Product,
    pub quota: u32,
    pub assigned: u32,
    pub counters: ProductCounters,
}

/// The answer of an executed admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub outcome: CommandOutcome,
    /// Sessions the command ended (a removed member's, a withdrawn license's).
    pub sessions_ended: u32,
}

/// A key created for a member: the full text is returned exactly once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub record: ApiKeyRecord,
    pub full_text: String,
}

/// Told of every admin command once it is applied and durable (the audit record),
/// whoever called [`Broker::execute`].
pub trait AdminObserver: Send + Sync + 'static {
    /// Whether a new admin change may be made now: the audit record refuses changes
    /// while it cannot keep their events (`Err(Unavailable)`, saying why).
    fn admit(&self) -> Result<(), DomainError> {
        Ok(())
    }

    fn admin_changed(&self, principal: &Principal, command: &Command);
}

/// The observer of a broker nobody audits (benchmarks, tools).
pub struct UnobservedAdmin;

impl AdminObserver for UnobservedAdmin {
    fn admin_changed(&self, _principal: &Principal, _command: &Command) {}
}

/// A snapshot [`Broker::snapshot_now`] installed.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotTaken {
    /// The log position it was cut at.
    pub lsn: Lsn,
    /// Its payload's size.
    pub bytes: usize,
    /// The live leases it holds.
    pub leases: u64,
    /// From the cut through the directory fsync.
    pub took: std::time::Duration,
}

/// Why [`Broker::snapshot_now`] wrote no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The log could not write or install it (no space, no descriptor, I/O).
    #[error("writing the snapshot: {0}")]
    Log(#[from] WalError),
    /// Its task on the blocking pool panicked or was cancelled.
    #[error("the snapshot task ended early: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub struct Broker {
    admin: RwLock<AdminState>,
    /// Counts the changes of `admin`: bumped under its write lock by every change
    /// ([`Broker::admin_for_change`]), so a value read under a read lock names the
    /// state that lock shows. The verified keys' cache is valid for one value only.
    admin_generation: AtomicU64,
    /// Keys verified against the admin state of one generation ([`auth::VerifiedKeys`]).
    verified_keys: auth::VerifiedKeys,
    leases: LeaseTable,
    operator: OperatorKey,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    /// Hears of every executed command (the audit record).
    admin_observer: Arc<dyn AdminObserver>,
}

impl Broker {
    pub fn new(
        admin: AdminState,
        leases: LeaseTable,
        operator: OperatorKey,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        admin_observer: Arc<dyn AdminObserver>,
    ) -> Self {
        Broker {
            admin: RwLock::new(admin),
            admin_generation: AtomicU64::new(0),
            verified_keys: auth::VerifiedKeys::default(),
            leases,
            operator,
            journal,
            clock,
            admin_observer,
        }
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    fn now(&self) -> Now {
        Now {
            instant: self.clock.now(),
            unix_ms: self.clock.unix_ms(),
        }
    }

    /// A copy of the admin state for a snapshot, with `mark` (the log position) read
    /// under the same write lock, so that the copy reflects exactly the admin commands
    /// up to that mark. The copy shares the state's structure (persistent maps), so
    /// the lock is held for O(1) whatever the state's size; encoding it happens after.
    /// (Cluster mode's snapshots mark the etcd journal with `EtcdJournal::cut`.)
    pub fn admin_cut<T>(&self, mark: impl FnOnce() -> T) -> (AdminState, T) {
        // The write lock only excludes changes while `mark` is read: nothing changes
        // here, so the generation stays.
        let admin = self.admin.write();
        let marked = mark();
        (admin.clone(), marked)
    }

    /// Cuts the state at the current end of `journal`'s log and installs it as a
    /// snapshot (`durable::write_snapshot`). All of it runs on the blocking pool: the
    /// cut takes the admin write lock (for O(1)), and encoding a million leases takes
    /// a good part of a second.
    pub async fn snapshot_now(
        self: &Arc<Self>,
        journal: &WalJournal,
        boot_epoch: u64,
    ) -> Result<SnapshotTaken, SnapshotError> {
        let started = std::time::Instant::now();
        let wal = Arc::clone(journal.wal());
        let broker = Arc::clone(self);
        let (lsn, (bytes, leases)) = tokio::task::spawn_blocking(move || {
            let (admin, lsn) = broker.admin_cut(|| wal.stats().last_assigned_lsn);
            durable::write_snapshot(&wal, lsn, &admin, broker.leases(), boot_epoch)
                .map(|written| (lsn, written))
        })
        .await??;
        Ok(SnapshotTaken {
            lsn,
            bytes,
            leases,
            took: started.elapsed(),
        })
    }

    /// Resolves `token` into the caller, over a connection whose verified client
    /// certificate has `client_subject` (see [`auth::authenticate`]). A key verified
    /// since the admin state last changed is taken from the cache, without its SHA-256.
    pub fn authenticate(
        &self,
        token: &str,
        client_subject: Option<&str>,
    ) -> Result<Principal, DomainError> {
        auth::check_token_length(token)?;
        let generation = self.admin_generation.load(Ordering::SeqCst);
        if let Some(verified) = self.verified_keys.lookup(token, generation) {
            return verified.admit(client_subject);
        }
        let verified = {
            let admin = self.admin.read();
            // Read under the lock: the generation of the state verified against.
            let generation = self.admin_generation.load(Ordering::SeqCst);
            let verified = auth::verify(&admin, &self.operator, token)?;
            self.verified_keys.remember(token, generation, &verified);
            verified
        };
        verified.admit(client_subject)
    }

    /// The admin state for a change: every change takes it here, which counts it (and
    /// so empties the verified keys' cache before the next call is authenticated).
    fn admin_for_change(&self) -> parking_lot::RwLockWriteGuard<'_, AdminState> {
        let admin = self.admin.write();
        self.admin_generation.fetch_add(1, Ordering::SeqCst);
        admin
    }

    /// Called once at shutdown, after the last in-flight call finished: makes every
    /// record appended so far durable (the log's final flush and fsync).
    pub async fn close(&self) -> Result<(), CloseError> {
        let journal = Arc::clone(&self.journal);
        tokio::task::spawn_blocking(move || journal.close())
            .await?
            .map_err(CloseError::Log)
    }

    // ----- Admin mutations: the single path. -----

    /// Authorizes, applies and makes durable one command; answers only once durable,
    /// after telling the admin observer (so every caller's change is audited).
    pub async fn execute(
        &self,
        principal: &Principal,
        command: Command,
    ) -> Result<Executed, DomainError> {
        self.admin_observer.admit()?;
        let permit = self.journal.admit()?;
        let (executed, durable) = {
            let mut admin = self.admin_for_change();
            authorize_command(&admin, principal, &command)?;
            admin.admit(&command)?;
            let outcome = admin.apply(&command)?;
            let durable = self.journal.append_command(permit, &command);
            // Ending sessions under the admin lock keeps an acquire that checked the
            // old assignment from slipping in after the cleanup.
            let now = self.clock.now();
            let sessions_ended =
                self.leases
                    .end_sessions_withdrawn_by(&command, Some(principal), Some(now));
            if let CommandOutcome::QuotaSet { after, .. } = &outcome {
                // A raise frees seats: the waiters get them before anyone new.
                let quotas = Product::ALL.map(|product| (product, after.for_product(product)));
                self.leases.quota_changed(command.org(), quotas, now);
            }
            let executed = Executed {
                outcome,
                sessions_ended,
            };
            (executed, durable)
        };
        durable.await?;
        self.admin_observer.admin_changed(principal, &command);
        Ok(executed)
    }

    /// Creates an API key for `email` (the caller when `None`).
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        org: OrgId,
        email: Option<Email>,
        label: String,
        client_cert_subject: Option<String>,
    ) -> Result<CreatedKey, DomainError> {
        let email = match (email, principal) {
            (Some(email), _) => email,
            (None, Principal::Member { email, .. }) => email.clone(),
            (None, Principal::Operator) => {
                return Err(DomainError::invalid(
                    "email",
                    "the operator must name the member the key is for",
                ));
            }
        };
        let generated = auth::generate_member_key();
        let record = ApiKeyRecord {
            id: generated.id.clone(),
            email: email.clone(),
            label: label.clone(),
            secret_sha256: generated.sha256,
            created_at_unix_ms: self.clock.unix_ms(),
            client_cert_subject: client_cert_subject.clone(),
        };
        let command = Command::CreateApiKey {
            org,
            key_id: record.id.clone(),
            email,
            label,
            secret_sha256: record.secret_sha256,
            created_at_unix_ms: record.created_at_unix_ms,
            client_cert_subject,
        };
        self.execute(principal, command).await?;
        Ok(CreatedKey {
            record,
            full_text: generated.full_text,
        })
    }

    // ----- Admin reads. -----

    /// Runs `read` on an organization after checking that `principal` may `action` it.
    pub fn read_organization<T>(
        &self,
        principal: &Principal,
        action: Action,
        org: &OrgId,
        read: impl FnOnce(&Organization) -> T,
    ) -> Result<T, DomainError> {
        let admin = self.admin.read();
        authorize(&admin, principal, action, org, None)?;
        Ok(read(admin.organization(org)?))
    }

    /// Runs `read` on the admin state after checking that the caller is the operator
    /// (who alone sees every organization).
    pub fn read_organizations<T>(
        &self,
        principal: &Principal,
        read: impl FnOnce(&AdminState) -> T,
    ) -> Result<T, DomainError> {
        if *principal != Principal::Operator {
            return Err(DomainError::PermissionDenied(
                "only the operator may list organizations".into(),
            ));
        }
        Ok(read(&self.admin.read()))
    }

    /// Each organization's quota, for the metrics sampler (no members or keys copied).
    pub fn quotas(&self) -> Vec<(OrgId, Quota)> {
        self.admin
            .read()
            .organizations()
            .map(|o| (o.id.clone(), o.quota))
            .collect()
    }

    pub fn organization(&self, org: &OrgId) -> Result<Organization, DomainError> {
        self.admin.read().organization(org).cloned()
    }

    /// Runs `read` on the organization whose API keys the caller may see: all of them
    /// for Owners, Admins and the operator (`read` is given `None`), only their own for
    /// members (`read` is given their email).
    pub fn read_api_keys<T>(
        &self,
        principal: &Principal,
        org: &OrgId,
        read: impl FnOnce(&Organization, Option<&Email>) -> T,
    ) -> Result<T, DomainError> {
        let admin = self.admin.read();
        authorize(&admin, principal, Action::ManageKeysOf, org, None)?;
        let organization = admin.organization(org)?;
        let only_of = match principal {
            Principal::Operator => None,
            Principal::Member { email, .. } => {
                let administers = organization.role_of(email).is_some_and(Role::administers);
                (!administers).then_some(email)
            }
        };
        Ok(read(organization, only_of))
    }

    pub fn usage(
        &self,
        principal: &Principal,
        org: &OrgId,
    ) -> Result<(Vec<ProductUsage>, Option<i64>), DomainError> {
        let (quota, assigned) =
            self.read_organization(principal, Action::Administer, org, |o| {
                (
                    o.quota,
                    [o.kse_assigned.len() as u32, o.kre_assigned.len() as u32],
                )
            })?;
        let usage = Product::ALL
            .iter()
            .zip(assigned)
            .map(|(product, assigned)| ProductUsage {
                product: *product,
                quota: quota.for_product(*product),
                assigned,
                counters: self.leases.counters(org, *product),
            })
            .collect();
        Ok((usage, quota.expires_at_unix_ms))
    }

    /// A page of the organization's live sessions in the lease table's slot order,
    /// from slot `from`; see [`LeaseTable::list_page`].
    pub fn list_sessions(
        &self,
        principal: &Principal,
        org: &OrgId,
        product: Option<Product>,
        from: u32,
        size: usize,
    ) -> Result<(Vec<Lease>, Option<u32>), DomainError> {
        self.read_organization(principal, Action::Administer, org, |_| ())?;
        Ok(self.leases.list_page(org, product, from, size))
    }

    pub fn terminate_session(
        &self,
        principal: &Principal,
        org: &OrgId,
        id: LeaseId,
    ) -> Result<Lease, DomainError> {
        let admin = self.admin.read();
        authorize(&admin, principal, Action::Administer, org, None)?;
        admin.organization(org)?;
        self.leases.terminate(org, id, principal, self.clock.now())
    }

    // ----- Engine calls: the hot path. -----

    fn engine_identity(principal: &Principal) -> Result<(&OrgId, &Email), DomainError> {
        match principal {
            Principal::Member { org, email } => Ok((org, email)),
            Principal::Operator => Err(DomainError::PermissionDenied(
                "the operator key cannot hold sessions; use a member's API key".into(),
            )),
        }
    }

    /// Grants a session; answers once the grant is durable.
    pub async fn acquire(
        &self,
        principal: &Principal,
        request: &EngineRequest,
    ) -> Result<Granted, DomainError> {
        let (granted, durable) = self.acquire_now(principal, request)?;
        durable.await?;
        Ok(granted)
    }

    /// Grants a session in memory without waiting: the grant may be told to the
    /// engine once its `Durable` resolves (a stream's task waits for many at once).
    pub fn acquire_now(
        &self,
        principal: &Principal,
        request: &EngineRequest,
    ) -> Result<(Granted, Durable), DomainError> {
        self.with_license(principal, request, |acquire, now| {
            self.leases.acquire(acquire, now)
        })
    }

    /// Extends a lease; returns its remaining time.
    pub fn heartbeat(
        &self,
        principal: &Principal,
        id: LeaseId,
        generation: u64,
    ) -> Result<std::time::Duration, DomainError> {
        let (org, email) = Self::engine_identity(principal)?;
        let license_expired = {
            let admin = self.admin.read();
            admin
                .organization(org)?
                .quota
                .expired_at(self.clock.unix_ms())
        };
        if license_expired {
            // The license ran out: the caller's own session ends now rather than at its
            // deadline (checked like a release: same user, same generation), unless
            // the license sweep ended it already; either way the engine hears why.
            let why = LeaseEnd::Terminated(Termination::LicenseExpired);
            let now = self.clock.now();
            let _ = self.leases.end_held(org, email, id, generation, why, now);
            return Err(DomainError::LicenseExpired(org.clone()));
        }
        // Read after any wait for the admin lock: the heartbeat counts from now.
        let now = self.clock.now();
        let deadline = self.leases.heartbeat(org, email, id, generation, now)?;
        Ok(deadline.saturating_duration_since(now))
    }

    pub fn release(
        &self,
        principal: &Principal,
        id: LeaseId,
        generation: u64,
    ) -> Result<(), DomainError> {
        let (org, email) = Self::engine_identity(principal)?;
        self.leases
            .release(org, email, id, generation, self.clock.now())
    }

    /// Grants a session, or queues the request when the quota is full (see
    /// [`Waiting`]); a grant may be answered once its `Durable` resolves.
    pub fn acquire_or_queue(
        self: &Arc<Self>,
        principal: &Principal,
        request: &EngineRequest,
    ) -> Result<Acquisition, DomainError> {
        let acquired = self.with_license(principal, request, |acquire, now| {
            self.leases.acquire_or_queue(acquire, now)
        })?;
        Ok(match acquired {
            Acquired::Granted(granted, durable) => Acquisition::Granted(granted, durable),
            Acquired::Queued {
                ticket,
                position,
                length,
            } => Acquisition::Queued(Waiting {
                broker: Arc::clone(self),
                org: Self::engine_identity(principal)?.0.clone(),
                ticket: Some(ticket),
                unclaimed: None,
                position: (position, length),
            }),
        })
    }

    /// A unary acquire that waits up to `wait` for a seat (a long poll); answers once
    /// the grant is durable. Dropping the future leaves the queue.
    pub async fn acquire_waiting(
        self: &Arc<Self>,
        principal: &Principal,
        request: &EngineRequest,
        wait: std::time::Duration,
    ) -> Result<Granted, DomainError> {
        let started = self.clock.now();
        match self.acquire_or_queue(principal, request)? {
            Acquisition::Granted(granted, durable) => {
                durable.await?;
                Ok(granted)
            }
            Acquisition::Queued(mut waiting) => {
                waiting
                    .granted_within(started, wait, std::future::pending(), |_, _| {})
                    .await
            }
        }
    }

    /// Renews every lease in `held` (one stream's) to now + TTL with one admin read and
    /// one lock of the organization (to now + TTL); returns the leases that are gone
    /// (with why), which the caller stops holding.
    pub fn renew_all(
        &self,
        principal: &Principal,
        held: &[(LeaseId, u64)],
    ) -> Result<GoneLeases, DomainError> {
        let (org, email) = Self::engine_identity(principal)?;
        let license_expired = {
            let admin = self.admin.read();
            admin
                .organization(org)?
                .quota
                .expired_at(self.clock.unix_ms())
        };
        if license_expired {
            self.leases.end_expired_license(org);
            return Err(DomainError::LicenseExpired(org.clone()));
        }
        let now = self.clock.now();
        Ok(self.leases.heartbeat_all(org, email, held, now))
    }

    /// The lease `id` of the caller at `generation`, extended like a heartbeat: what a
    /// stream attaching it answers (fenced: another user's lease is not found, a stale
    /// generation refused).
    pub fn attach(
        &self,
        principal: &Principal,
        id: LeaseId,
        generation: u64,
    ) -> Result<Lease, DomainError> {
        let (org, email) = Self::engine_identity(principal)?;
        self.heartbeat(principal, id, generation)?;
        self.leases.live_lease(org, email, id, generation)
    }

    /// Ends a lease of the caller for `why` (its stream's key was revoked).
    pub fn end_held(
        &self,
        principal: &Principal,
        id: LeaseId,
        generation: u64,
        why: Termination,
    ) -> Result<(), DomainError> {
        let (org, email) = Self::engine_identity(principal)?;
        let why = LeaseEnd::Terminated(why);
        self.leases
            .end_held(org, email, id, generation, why, self.clock.now())
    }

    /// Ends the sessions of every organization whose license has expired, so that the
    /// streams holding them hear it at once (a unary engine hears it at its next
    /// heartbeat, as before); called by the expiry sweep. Returns the sessions ended.
    pub fn end_expired_licenses(&self) -> u32 {
        let now_unix_ms = self.clock.unix_ms();
        let expired: Vec<OrgId> = self
            .admin
            .read()
            .organizations()
            .filter(|o| o.quota.expired_at(now_unix_ms) && self.leases.is_occupied(&o.id))
            .map(|o| o.id.clone())
            .collect();
        expired
            .iter()
            .map(|org| self.leases.end_expired_license(org))
            .sum()
    }

    /// Checks the license of `principal` for `request` under the admin read lock and
    /// hands the lease table's request to `take`.
    fn with_license<T>(
        &self,
        principal: &Principal,
        request: &EngineRequest,
        take: impl FnOnce(AcquireRequest<'_>, Now) -> Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        let (org, email) = Self::engine_identity(principal)?;
        let now = self.now();
        let admin = self.admin.read();
        let organization = admin.organization(org)?;
        if organization.quota.expired_at(now.unix_ms) {
            return Err(DomainError::LicenseExpired(org.clone()));
        }
        if !organization.assigned(request.product).contains(email) {
            return Err(DomainError::NotLicensed {
                org: org.clone(),
                email: email.clone(),
                product: request.product,
            });
        }
        let acquire = AcquireRequest {
            org,
            email,
            product: request.product,
            engine_id: &request.engine_id,
            hostname: &request.hostname,
            label: &request.label,
            quota: organization.quota.for_product(request.product),
        };
        take(acquire, now)
    }
}

/// What [`Broker::acquire_or_queue`] did.
pub enum Acquisition {
    /// A seat at once; answer once `Durable` resolves.
    Granted(Granted, Durable),
    /// Queued: wait with [`Waiting::granted_within`].
    Queued(Waiting),
}

/// A queued acquire. Dropped before it was answered, it leaves the queue, and a seat
/// granted to it meanwhile (or whose grant it was still making durable) is ended, so
/// no seat is held by a waiter that went away.
pub struct Waiting {
    broker: Arc<Broker>,
    org: OrgId,
    /// `None` once answered.
    ticket: Option<WaitTicket>,
    /// A grant taken from the queue and not yet handed to the engine.
    unclaimed: Option<Granted>,
    /// The position and queue length last told.
    position: (u32, u32),
}

impl Waiting {
    /// The place in the queue when it was queued (1 is the head) and the queue's length.
    pub fn position(&self) -> (u32, u32) {
        self.position
    }

    /// Waits for a seat until `wait` after `started` (`WaitExpired` then) or until `cancelled`
    /// resolves (`WaitCancelled`), telling `moved` of each change of position (checked
    /// every `limits::QUEUE_POSITION_UPDATE_MS`, so coalesced). A grant is returned once
    /// durable; one made in the same instant as the deadline or the cancel is kept.
    pub async fn granted_within(
        &mut self,
        started: Instant,
        wait: std::time::Duration,
        cancelled: impl Future<Output = ()>,
        mut moved: impl FnMut(u32, u32),
    ) -> Result<Granted, DomainError> {
        let Some(ticket) = self.ticket.as_mut() else {
            return Err(DomainError::FailedPrecondition("already answered".into()));
        };
        let product = ticket.product();
        let deadline = started + wait;
        let mut cancelled = std::pin::pin!(cancelled);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(
            limits::QUEUE_POSITION_UPDATE_MS,
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let left_because = loop {
            tokio::select! {
                answer = ticket.answered() => break Ok(answer),
                () = tokio::time::sleep_until(deadline) => break Err(DomainError::WaitExpired {
                    product,
                    waited_ms: wait.as_millis() as u64,
                }),
                () = &mut cancelled => break Err(DomainError::WaitCancelled),
                _ = tick.tick() => {
                    if let Some(position) = self.broker.leases.queue_position(ticket)
                        && position != self.position
                    {
                        self.position = position;
                        moved(position.0, position.1);
                    }
                }
            }
        };
        let answer = match left_because {
            Ok(answer) => answer,
            Err(why) => match self.broker.leases.leave_queue(ticket) {
                Some(answer) => answer,
                None => {
                    self.ticket = None;
                    return Err(why);
                }
            },
        };
        self.ticket = None;
        let (granted, durable) = answer?;
        if !granted.resumed {
            self.unclaimed = Some(granted.clone());
        }
        durable.await?;
        self.unclaimed = None;
        Ok(granted)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let leases = &self.broker.leases;
        let granted = match self.ticket.as_mut() {
            Some(ticket) => match leases.leave_queue(ticket) {
                Some(Ok((granted, _))) if !granted.resumed => Some(granted),
                _ => None,
            },
            None => self.unclaimed.take(),
        };
        if let Some(granted) = granted {
            leases.end_unclaimed(&self.org, &granted, self.broker.clock.now());
        }
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::journal::VolatileJournal;
    use crate::leases::LeaseTiming;

    /// Keeps the commands it is told of.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Command>>);

    impl AdminObserver for Recorded {
        fn admin_changed(&self, _principal: &Principal, command: &Command) {
            self.0.lock().push(command.clone());
        }
    }

    #[tokio::test]
    async fn every_executed_command_is_observed_whoever_calls_execute() {
        let recorded = Arc::new(Recorded::default());
        let broker = Broker::new(
            AdminState::default(),
            LeaseTable::new(LeaseTiming::from_ttl(std::time::Duration::from_secs(30)), 1),
            OperatorKey::from_text("test-operator-key-0123456789abcdef").unwrap(),
            Arc::new(VolatileJournal::new()),
            Arc::new(SystemClock),
            recorded.clone(),
        );
        let create = Command::CreateOrganization {
            org: OrgId::parse("acme").unwrap(),
            display_name: "Acme".into(),
            owner: Email::parse("owner@acme.com").unwrap(),
            quota: Quota::default(),
        };
        broker
            .execute(&Principal::Operator, create.clone())
            .await
            .unwrap();
        let refused = broker.execute(&Principal::Operator, create.clone()).await;
        assert!(refused.is_err(), "a second organization of the same id");
        assert_eq!(*recorded.0.lock(), [create], "only what was applied");
    }
}
