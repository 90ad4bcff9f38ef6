//! The broker: the admin state, the lease table and the command log put together.
//! Every admin mutation takes one path, [`Broker::execute`]: admit into the log queue,
//! lock, authorize, apply, append, unlock, wait until durable, answer. Engine calls
//! take a read lock on the admin state (licenses and quotas) and then the one
//! organization's lease lock; the lock order is always admin state, then lease table.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::audit::AuditAdmission;
use crate::auth::{self, OperatorKey};
use crate::clock::Clock;
use crate::domain::{
    Action, AdminState, ApiKeyRecord, Command, CommandOutcome, DomainError, Email, OrgId,
    Organization, Principal, Product, Quota, Role, authorize, authorize_command,
};
use crate::leases::{AcquireRequest, Granted, Lease, LeaseId, LeaseTable, Now, ProductCounters};
use crate::storage::{Durable, Journal};

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
    /// The command that created it (for the audit record).
    pub command: Command,
}

pub struct Broker {
    admin: RwLock<AdminState>,
    leases: LeaseTable,
    operator: OperatorKey,
    journal: Arc<dyn Journal>,
    clock: Arc<dyn Clock>,
    /// Refuses admin changes while the audit record cannot keep their events.
    audit: AuditAdmission,
}

impl Broker {
    pub fn new(
        admin: AdminState,
        leases: LeaseTable,
        operator: OperatorKey,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Broker {
            admin: RwLock::new(admin),
            leases,
            operator,
            journal,
            clock,
            audit: AuditAdmission::default(),
        }
    }

    /// Admin changes are admitted only while `audit` can keep their events.
    pub fn with_audit_admission(mut self, audit: AuditAdmission) -> Self {
        self.audit = audit;
        self
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
    pub fn admin_cut<T>(&self, mark: impl FnOnce() -> T) -> (AdminState, T) {
        let admin = self.admin.write();
        let marked = mark();
        (admin.clone(), marked)
    }

    pub fn authenticate(&self, token: &str) -> Result<Principal, DomainError> {
        auth::authenticate(&self.admin.read(), &self.operator, token)
    }

    /// Called once at shutdown, after the last in-flight call finished: makes every
    /// record appended so far durable (the log's final flush and fsync).
    pub async fn close(&self) -> Result<(), DomainError> {
        let journal = Arc::clone(&self.journal);
        tokio::task::spawn_blocking(move || journal.close())
            .await
            .map_err(|error| DomainError::Unavailable(format!("closing the log: {error}")))?
    }

    // ----- Admin mutations: the single path. -----

    /// Authorizes, applies and makes durable one command; answers only once durable.
    pub async fn execute(
        &self,
        principal: &Principal,
        command: Command,
    ) -> Result<Executed, DomainError> {
        self.audit.admit()?;
        let permit = self.journal.admit()?;
        let (executed, durable) = {
            let mut admin = self.admin.write();
            authorize_command(&admin, principal, &command)?;
            admin.admit(&command)?;
            let outcome = admin.apply(&command)?;
            let durable = self.journal.append_command(permit, &command);
            // Ending sessions under the admin lock keeps an acquire that checked the
            // old assignment from slipping in after the cleanup.
            let sessions_ended = self.end_sessions_for(principal, &command);
            let executed = Executed {
                outcome,
                sessions_ended,
            };
            (executed, durable)
        };
        durable.await?;
        Ok(executed)
    }

    fn end_sessions_for(&self, principal: &Principal, command: &Command) -> u32 {
        let users: Vec<(Email, Option<Product>)> = command
            .sessions_to_end()
            .into_iter()
            .map(|s| (s.email, s.product))
            .collect();
        self.leases
            .end_sessions_of(command.org(), &users, Some(principal))
    }

    /// Creates an API key for `email` (the caller when `None`).
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        org: OrgId,
        email: Option<Email>,
        label: String,
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
        };
        let command = Command::CreateApiKey {
            org,
            key_id: record.id.clone(),
            email,
            label,
            secret_sha256: record.secret_sha256,
            created_at_unix_ms: record.created_at_unix_ms,
        };
        self.execute(principal, command.clone()).await?;
        Ok(CreatedKey {
            record,
            full_text: generated.full_text,
            command,
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
        self.leases.terminate(org, id, principal)
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
        let (granted, durable) = self.grant(principal, request)?;
        durable.await?;
        Ok(granted)
    }

    /// Checks the license and takes the seat, under the admin read lock.
    fn grant(
        &self,
        principal: &Principal,
        request: &EngineRequest,
    ) -> Result<(Granted, Durable), DomainError> {
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
        self.leases.acquire(acquire, now)
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
            // deadline (checked like a release: same user, same generation).
            self.leases.release(org, email, id, generation)?;
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
        self.leases.release(org, email, id, generation)
    }
}
