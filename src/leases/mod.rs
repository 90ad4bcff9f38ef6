//! The lease table: every live session, sharded by organization so that organizations
//! never contend with one another. One mutex per organization makes check-and-grant a
//! single atomic step: the count of active sessions is read and raised under it.
//!
//! A lease's id is derived from (organization, user, product, engine id), so an engine
//! that retries `Acquire` finds its live lease again instead of taking a second seat,
//! and every grant gets a fresh `generation` from one strictly increasing counter, so a
//! superseded engine is fenced off. Expiry is an ordered index per organization (see
//! [`expiry`]); the table reads no clock: callers pass `now`.
//!
//! Leases are kept in a compact form (see `store`: a slab of 80-byte slots, deadlines
//! in whole milliseconds rounded up), about 175 bytes a lease in all; [`Lease`] is the
//! owned view handed to callers (`domain::lease`) and [`LeaseRef`] the borrowed one handed to observers,
//! both built on demand.
//!
//! - `expiry`: the per-organization heap of deadlines.
//! - `store`: the per-organization slab, id index and millisecond clock.
//! - `queue`: the per-organization wait queues of acquires that found the quota full.

pub mod expiry;
mod queue;
mod store;

pub use queue::{Acquired, WaitAnswer, WaitTicket};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::domain::journal::{Durable, Journal, LogPermit, VolatileJournal};
use crate::domain::{
    Command, DomainError, Email, Lease, LeaseId, OrgId, Principal, Product, Termination, Withdrawal,
};
use crate::limits;
use expiry::ExpiryIndex;
use queue::WaitQueues;
use store::{LeaseStore, MsClock, Slot, StoredLease};

/// One live session, borrowed from the table (under its organization's lock) or from a
/// [`Lease`]: what observers are given, so that telling them costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRef<'a> {
    pub id: LeaseId,
    pub generation: u64,
    pub product: Product,
    pub email: &'a Email,
    pub engine_id: &'a str,
    pub hostname: &'a str,
    pub label: &'a str,
    pub deadline: Instant,
    pub acquired_at_unix_ms: i64,
}

impl LeaseRef<'_> {
    pub fn to_lease(&self) -> Lease {
        Lease {
            id: self.id,
            generation: self.generation,
            product: self.product,
            email: self.email.clone(),
            engine_id: self.engine_id.into(),
            hostname: self.hostname.into(),
            label: self.label.into(),
            deadline: self.deadline,
            acquired_at_unix_ms: self.acquired_at_unix_ms,
        }
    }
}

impl<'a> From<&'a Lease> for LeaseRef<'a> {
    fn from(lease: &'a Lease) -> Self {
        LeaseRef {
            id: lease.id,
            generation: lease.generation,
            product: lease.product,
            email: &lease.email,
            engine_id: &lease.engine_id,
            hostname: &lease.hostname,
            label: &lease.label,
            deadline: lease.deadline,
            acquired_at_unix_ms: lease.acquired_at_unix_ms,
        }
    }
}

/// What an engine asks for.
#[derive(Debug, Clone, Copy)]
pub struct AcquireRequest<'a> {
    pub org: &'a OrgId,
    pub email: &'a Email,
    pub product: Product,
    pub engine_id: &'a str,
    pub hostname: &'a str,
    pub label: &'a str,
    /// The organization's quota for `product`, read from the admin state by the caller.
    pub quota: u32,
}

/// The times of a call, injected so tests control them.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Granted {
    pub lease: Lease,
    /// The engine already held this lease; nothing new was granted.
    pub resumed: bool,
}

/// Counters of one product in one organization since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProductCounters {
    pub active: u32,
    pub peak: u32,
    pub grants: u64,
    pub denials: u64,
    pub expiries: u64,
    pub releases: u64,
    pub terminations: u64,
}

/// Leases a renewal found gone or superseded: id, generation presented, and why.
pub type GoneLeases = Vec<(LeaseId, u64, DomainError)>;

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The engine released it.
    Released,
    /// Its heartbeats stopped and its deadline passed.
    Expired,
    /// Someone else ended it: an admin, an admin command's withdrawal, the license's
    /// expiry or a revoked key (the cause, as its engine is told).
    Terminated(Termination),
}

/// Told of each step of a lease's life (metrics, usage windows, the audit record); each
/// step is ignored unless implemented.
/// Called under the organization's lock: an observer must be quick and never block.
pub trait LeaseObserver: Send + Sync + 'static {
    /// A new lease; `active` is the product's active count with it.
    fn granted(&self, org: &OrgId, lease: LeaseRef<'_>, active: u32) {
        let _ = (org, lease, active);
    }
    /// A heartbeat arrived `since_last_renewal` after the previous one (or the grant),
    /// to the millisecond.
    fn renewed(&self, lease: LeaseRef<'_>, since_last_renewal: Duration) {
        let _ = (lease, since_last_renewal);
    }
    /// A lease ended; `active` is the product's active count without it. `by` names
    /// who terminated it, when it was terminated by a caller the table was told of.
    fn ended(
        &self,
        org: &OrgId,
        lease: LeaseRef<'_>,
        why: LeaseEnd,
        by: Option<&Principal>,
        active: u32,
    ) {
        let _ = (org, lease, why, by, active);
    }
}

/// The observer of a table nobody watches.
pub struct UnobservedLeases;

/// Every step ignored (the trait's defaults).
impl LeaseObserver for UnobservedLeases {}

/// The sessions of one organization.
#[derive(Debug)]
struct OrgLeases {
    id: OrgId,
    /// Converts deadlines to the milliseconds the store and the expiry heap keep; its
    /// base is the `now` of the call that first saw the organization.
    clock: MsClock,
    leases: LeaseStore,
    /// The KSE lease of each user holding one: a KSE license runs one engine at a time.
    kse_holders: HashMap<Email, Slot>,
    /// Ends the journal could not take (the log was far behind). A seat they freed is
    /// granted again only once they are logged, or a restart could bring back both the
    /// old lease and the new one (see `log_unlogged_ends`).
    unlogged_ends: Vec<(LeaseId, u64)>,
    counters: [ProductCounters; 2],
    expiry: ExpiryIndex,
    /// Acquires waiting for a seat (see `queue`).
    waiters: WaitQueues,
}

fn product_index(product: Product) -> usize {
    match product {
        Product::Kse => 0,
        Product::Kre => 1,
    }
}

impl OrgLeases {
    fn new(id: OrgId, now: Instant) -> Self {
        OrgLeases {
            id,
            clock: MsClock::new(now),
            leases: LeaseStore::default(),
            kse_holders: HashMap::new(),
            unlogged_ends: Vec::new(),
            counters: Default::default(),
            expiry: ExpiryIndex::default(),
            waiters: WaitQueues::default(),
        }
    }

    /// Stores a lease whose id is not live yet.
    fn insert(&mut self, lease: StoredLease) {
        let counters = self.counters_mut(lease.product);
        counters.active += 1;
        counters.peak = counters.peak.max(counters.active);
        let (product, deadline_ms, generation) =
            (lease.product, lease.deadline_ms, lease.generation);
        let email = (product == Product::Kse).then(|| lease.email.clone());
        let slot = self.leases.insert(lease);
        if let Some(email) = email {
            self.kse_holders.insert(email, slot);
        }
        self.expiry.schedule(deadline_ms, slot, generation);
    }

    /// Removes a lease and journals its end (or keeps it to journal before the next
    /// grant, when the log cannot take it now).
    fn end(&mut self, slot: Slot, journal: &dyn Journal) -> StoredLease {
        let lease = self.remove(slot);
        if !journal.append_lease_ended(&self.id, lease.id(), lease.generation) {
            // Bounded by the organization's leases: no grant happens while any is held.
            self.unlogged_ends.push((lease.id(), lease.generation));
        }
        lease
    }

    /// Journals the ends that could not be journaled before; refuses a new grant while
    /// it cannot. Otherwise a crash could restore both an ended lease (its end lost)
    /// and the grant that reused its seat, and the quota would be exceeded.
    fn log_unlogged_ends(&mut self, journal: &dyn Journal) -> Result<(), DomainError> {
        while let Some(&(id, generation)) = self.unlogged_ends.last() {
            if !journal.append_lease_ended(&self.id, id, generation) {
                return Err(DomainError::Unavailable(
                    "the durable log is far behind; retry shortly".into(),
                ));
            }
            self.unlogged_ends.pop();
        }
        Ok(())
    }

    /// Ends the lease in `slot` for `why`: removes and journals it, counts the end and
    /// tells the observer (with the product's count after it). Every lease end but a
    /// replayed one takes this path.
    fn end_observed(
        &mut self,
        slot: Slot,
        why: LeaseEnd,
        by: Option<&Principal>,
        sinks: Sinks<'_>,
    ) -> StoredLease {
        let lease = self.end(slot, sinks.journal);
        let counters = self.counters_mut(lease.product);
        match why {
            LeaseEnd::Released => counters.releases += 1,
            LeaseEnd::Expired => counters.expiries += 1,
            LeaseEnd::Terminated(_) => counters.terminations += 1,
        }
        let active = counters.active;
        sinks
            .observer
            .ended(&self.id, lease.view(self.clock), why, by, active);
        lease
    }

    fn counters_mut(&mut self, product: Product) -> &mut ProductCounters {
        &mut self.counters[product_index(product)]
    }

    /// Shrinks the storage to the live leases: a dense slab and index, the KSE
    /// holders and an expiry heap of one entry per lease (see
    /// `LeaseTable::compact_after_recovery`).
    fn compact(&mut self) {
        self.leases.compact();
        let mut kse_holders = HashMap::new();
        let mut entries = Vec::with_capacity(self.leases.len());
        for (slot, lease) in self.leases.iter() {
            if lease.product == Product::Kse {
                kse_holders.insert(lease.email.clone(), slot);
            }
            entries.push((lease.deadline_ms, slot, lease.generation));
        }
        self.kse_holders = kse_holders;
        self.expiry = ExpiryIndex::from_entries(entries);
        // The peak so far is the replay's, of records from before this boot.
        for counters in &mut self.counters {
            counters.peak = counters.active;
        }
    }

    /// Removes the lease in an occupied slot.
    fn remove(&mut self, slot: Slot) -> StoredLease {
        let lease = self.leases.remove(slot);
        if lease.product == Product::Kse && self.kse_holders.get(&lease.email) == Some(&slot) {
            self.kse_holders.remove(&lease.email);
        }
        self.counters_mut(lease.product).active -= 1;
        if self.expiry.needs_compaction(self.leases.len()) {
            let leases = &self.leases;
            self.expiry.compact(|slot, generation| {
                leases.get(slot).is_some_and(|l| l.generation == generation)
            });
        }
        lease
    }

    /// The slot of a live lease of `email` (of anyone's when `None`) at `generation`.
    fn find(
        &self,
        id: LeaseId,
        email: Option<&Email>,
        generation: u64,
    ) -> Result<Slot, DomainError> {
        let (slot, lease) = self
            .leases
            .find(id)
            .and_then(|slot| Some((slot, self.leases.get(slot)?)))
            .filter(|(_, lease)| email.is_none_or(|e| *e == lease.email))
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        if lease.generation != generation {
            return Err(DomainError::StaleGeneration {
                lease_id: id.to_string(),
                current: lease.generation,
                presented: generation,
            });
        }
        Ok(slot)
    }
}

/// Where a lease's end goes besides memory: the journal and the observer.
#[derive(Clone, Copy)]
struct Sinks<'t> {
    journal: &'t dyn Journal,
    observer: &'t dyn LeaseObserver,
}

/// Lease timing, fixed for the daemon's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub heartbeat_interval: Duration,
}

impl LeaseTiming {
    /// Engines heartbeat three times per TTL, so two lost heartbeats in a row are survived.
    pub fn from_ttl(ttl: Duration) -> Self {
        LeaseTiming {
            ttl,
            heartbeat_interval: ttl / 3,
        }
    }
}

pub struct LeaseTable {
    organizations: DashMap<OrgId, Arc<Mutex<OrgLeases>>>,
    /// Where grants and ends are made durable.
    journal: Arc<dyn Journal>,
    /// Who hears of grants, heartbeats and ends (metrics, usage, audit).
    observer: Arc<dyn LeaseObserver>,
    /// Live leases of one organization, at most (configuration; default
    /// `limits::LEASES_PER_ORG_MAX`).
    leases_per_org_max: usize,
    /// The next generation to grant. Its high bits hold the boot epoch, so generations
    /// keep increasing across restarts.
    next_generation: AtomicU64,
    /// Numbers queue places in arrival order (see `queue`).
    next_ticket: AtomicU64,
    timing: LeaseTiming,
}

/// What [`LeaseTable::visit_live`] hands the live leases to.
pub trait LiveLeaseVisitor {
    /// A live lease, under its organization's lock: keep this cheap.
    fn lease(&mut self, org: &OrgId, lease: LeaseRef<'_>);
    /// The lock was let go of between two holds: the place for slower work (I/O).
    fn lock_released(&mut self) {}
}

impl<F: FnMut(&OrgId, LeaseRef<'_>)> LiveLeaseVisitor for F {
    fn lease(&mut self, org: &OrgId, lease: LeaseRef<'_>) {
        self(org, lease)
    }
}

/// Slots [`LeaseTable::visit_live`] reads under one hold of an organization's lock:
/// about 0.2 ms of encoding.
const LIVE_SLOTS_PER_LOCK: usize = 1024;

/// Bits of a generation below the boot epoch: 2^40 grants per boot.
pub const GENERATION_EPOCH_SHIFT: u32 = 40;

/// What a recovered table needs to serve: the boot epoch its grants draw generations
/// from (already durable, above every restored generation), where grants and ends are
/// journaled, and who hears of them. Given all at once, so no table serves with a
/// part missing.
pub struct Serving {
    pub boot_epoch: u64,
    pub journal: Arc<dyn Journal>,
    pub observer: Arc<dyn LeaseObserver>,
}

impl Serving {
    /// A table that journals nothing and tells no one: for tests and benchmarks.
    pub fn volatile(boot_epoch: u64) -> Self {
        Serving {
            boot_epoch,
            journal: Arc::new(VolatileJournal::new()),
            observer: Arc::new(UnobservedLeases),
        }
    }
}

/// A lease table being rebuilt from the log, before it serves: it restores and forgets
/// leases and ends a replayed command's withdrawals, and it has no journal and no
/// observer, so a replay reaches neither the log nor the audit record or the metrics.
/// [`RecoveringLeases::serve`] is the only way to a [`LeaseTable`], and a serving
/// table cannot restore: recovery, then serving, in that order.
pub struct RecoveringLeases {
    table: LeaseTable,
}

impl RecoveringLeases {
    /// An empty table with at most `leases_per_org_max` live leases per organization
    /// (configuration; default `limits::LEASES_PER_ORG_MAX`).
    pub fn new(timing: LeaseTiming, leases_per_org_max: usize) -> Self {
        RecoveringLeases {
            table: LeaseTable {
                organizations: DashMap::new(),
                journal: Arc::new(VolatileJournal::new()),
                observer: Arc::new(UnobservedLeases),
                leases_per_org_max,
                next_generation: AtomicU64::new(1),
                next_ticket: AtomicU64::new(0),
                timing,
            },
        }
    }

    /// Puts back a lease found in the log or a snapshot, live for one TTL from `now`
    /// so that its engine can keep it by heartbeating. A record of an older generation
    /// than the lease already held is ignored (records may overlap a snapshot).
    pub fn restore(&self, org: &OrgId, lease: LeaseRef<'_>, now: Instant) {
        self.table.restore(org, lease, now);
    }

    /// Removes a lease whose end was logged, if it is that generation.
    pub fn forget(&self, org: &OrgId, id: LeaseId, generation: u64) {
        self.table.forget(org, id, generation);
    }

    /// Ends the sessions a replayed command withdrew (see
    /// [`LeaseTable::end_sessions_withdrawn_by`]).
    pub fn end_sessions_withdrawn_by(&self, command: &Command) -> u32 {
        self.table.end_sessions_withdrawn_by(command, None, None)
    }

    /// Live leases restored so far.
    pub fn live_count(&self) -> usize {
        self.table.live_count()
    }

    /// Gives every restored lease a full TTL from `now`: a standby that followed the
    /// log restored its leases as their grants came, and takes over later.
    pub fn live_from(&self, now: Instant) {
        let ttl = self.table.timing.ttl;
        for entry in self.table.organizations.iter() {
            let mut org = entry.value().lock();
            let deadline_ms = org.clock.deadline_ms(now + ttl);
            let slots: Vec<Slot> = org.leases.iter().map(|(slot, _)| slot).collect();
            for slot in slots {
                if let Some(lease) = org.leases.get_mut(slot) {
                    lease.deadline_ms = lease.deadline_ms.max(deadline_ms);
                }
            }
            // `serve` rebuilds the expiry heap from these deadlines.
        }
    }

    /// Recovery is over: gives each organization's storage the size of its live
    /// leases (`compact_after_recovery`), and serves with `serving`'s journal and
    /// observer, granting generations of its boot epoch.
    pub fn serve(self, serving: Serving) -> LeaseTable {
        assert!(
            serving.boot_epoch < (1 << (64 - GENERATION_EPOCH_SHIFT)),
            "boot epoch out of range"
        );
        let mut table = self.table;
        table.compact_after_recovery();
        table.next_generation = AtomicU64::new((serving.boot_epoch << GENERATION_EPOCH_SHIFT) + 1);
        table.journal = serving.journal;
        table.observer = serving.observer;
        table
    }
}

impl LeaseTable {
    /// An empty table that serves at once, journaling nothing and telling no one: for
    /// tests and benchmarks (the daemon's comes from recovery, [`RecoveringLeases`]).
    pub fn new(timing: LeaseTiming, boot_epoch: u64) -> Self {
        RecoveringLeases::new(timing, limits::LEASES_PER_ORG_MAX)
            .serve(Serving::volatile(boot_epoch))
    }

    /// The generation the next grant will carry.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.load(Ordering::Relaxed)
    }

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// The organization's leases, created if need be with its clock based at `now`.
    fn organization(&self, org: &OrgId, now: Instant) -> Arc<Mutex<OrgLeases>> {
        if let Some(existing) = self.organizations.get(org) {
            return Arc::clone(&existing);
        }
        Arc::clone(
            &self
                .organizations
                .entry(org.clone())
                .or_insert_with(|| Arc::new(Mutex::new(OrgLeases::new(org.clone(), now)))),
        )
    }

    fn existing_organization(&self, org: &OrgId) -> Option<Arc<Mutex<OrgLeases>>> {
        self.organizations.get(org).map(|o| Arc::clone(&o))
    }

    fn sinks(&self) -> Sinks<'_> {
        Sinks {
            journal: self.journal.as_ref(),
            observer: self.observer.as_ref(),
        }
    }

    /// Grants a lease, or returns the engine's live one. Check and grant are one step
    /// under the organization's lock. The grant may be answered once `Durable` resolves.
    pub fn acquire(
        &self,
        request: AcquireRequest<'_>,
        now: Now,
    ) -> Result<(Granted, Durable), DomainError> {
        let id = LeaseId::derive(
            request.org,
            request.email,
            request.product,
            request.engine_id,
        );
        let permit = self.journal.admit()?;
        let cell = self.organization(request.org, now.instant);
        let mut guard = cell.lock();
        let org = &mut *guard;
        let deadline_ms = org.clock.deadline_ms(now.instant + self.timing.ttl);
        if let Some(slot) = org.leases.find(id) {
            return Ok(self.resume(org, slot, deadline_ms, permit, request.org));
        }
        org.waiters.set_quota(request.product, request.quota);
        self.check_new_grant(org, &request)?;
        Ok(self.grant(org, id, &request, deadline_ms, now.unix_ms, permit))
    }

    /// A retry of the same engine: same lease, extended like a heartbeat (never
    /// backwards). Its grant is appended again and awaited, because the first answer
    /// may not have been durable yet; replaying it twice changes nothing.
    fn resume(
        &self,
        org: &mut OrgLeases,
        slot: Slot,
        deadline_ms: u64,
        permit: LogPermit,
        org_id: &OrgId,
    ) -> (Granted, Durable) {
        let lease = org.leases.get_mut(slot).expect("found slots are occupied");
        lease.deadline_ms = lease.deadline_ms.max(deadline_ms);
        let lease = lease.view(org.clock).to_lease();
        let durable = self.journal.append_lease_granted(permit, org_id, &lease);
        let granted = Granted {
            lease,
            resumed: true,
        };
        (granted, durable)
    }

    /// The rules a new request must meet: no barging past the product's waiters (a
    /// seat freed while they wait is theirs, see `queue`), then those of
    /// [`LeaseTable::check_grant`].
    fn check_new_grant(
        &self,
        org: &mut OrgLeases,
        request: &AcquireRequest<'_>,
    ) -> Result<(), DomainError> {
        check_kse_holder(org, request)?;
        if org.waiters.waiting(request.product) > 0 {
            return Err(quota_exhausted(org, request));
        }
        self.check_grant(org, request)
    }

    /// The rules a new lease must meet, in order: one KSE engine per user, the
    /// product's quota (a refusal is counted), every earlier end journaled, and the
    /// organization's cap on live leases.
    fn check_grant(
        &self,
        org: &mut OrgLeases,
        request: &AcquireRequest<'_>,
    ) -> Result<(), DomainError> {
        check_kse_holder(org, request)?;
        if org.counters_mut(request.product).active >= request.quota {
            return Err(quota_exhausted(org, request));
        }
        org.log_unlogged_ends(self.journal.as_ref())?;
        if org.leases.len() >= self.leases_per_org_max {
            return Err(DomainError::LimitReached {
                what: "leases per organization",
                limit: self.leases_per_org_max,
            });
        }
        Ok(())
    }

    /// Grants a new lease that passed `check_grant`: a fresh generation, appended to
    /// the journal, stored, scheduled for expiry, and told to the observer.
    fn grant(
        &self,
        org: &mut OrgLeases,
        id: LeaseId,
        request: &AcquireRequest<'_>,
        deadline_ms: u64,
        unix_ms: i64,
        permit: LogPermit,
    ) -> (Granted, Durable) {
        org.counters_mut(request.product).grants += 1;
        let lease = Lease {
            id,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            product: request.product,
            email: request.email.clone(),
            engine_id: request.engine_id.into(),
            hostname: request.hostname.into(),
            label: request.label.into(),
            deadline: org.clock.instant(deadline_ms),
            acquired_at_unix_ms: unix_ms,
        };
        let durable = self
            .journal
            .append_lease_granted(permit, request.org, &lease);
        org.insert(StoredLease::new((&lease).into(), deadline_ms));
        let active = org.counters[product_index(lease.product)].active;
        self.observer.granted(request.org, (&lease).into(), active);
        let granted = Granted {
            lease,
            resumed: false,
        };
        (granted, durable)
    }

    /// Extends a lease of `email` to `now + ttl`; returns the new deadline.
    pub fn heartbeat(
        &self,
        org: &OrgId,
        email: &Email,
        id: LeaseId,
        generation: u64,
        now: Instant,
    ) -> Result<Instant, DomainError> {
        let cell = self
            .existing_organization(org)
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        let mut guard = cell.lock();
        let org = &mut *guard;
        let slot = org.find(id, Some(email), generation)?;
        let renewed_ms = org.clock.deadline_ms(now + self.timing.ttl);
        let lease = org.leases.get_mut(slot).expect("found slots are occupied");
        self.observer.renewed(
            lease.view(org.clock),
            Duration::from_millis(renewed_ms.saturating_sub(lease.deadline_ms)),
        );
        // A deadline never moves back: a late, reordered heartbeat cannot shorten it.
        lease.deadline_ms = lease.deadline_ms.max(renewed_ms);
        Ok(org.clock.instant(lease.deadline_ms))
    }

    /// Extends every lease of `held` (one stream's, all of `email`) to `now + ttl`
    /// under one hold of the organization's lock: memory only, O(leases). Returns the
    /// leases that are gone or superseded, with why.
    pub fn heartbeat_all(
        &self,
        org: &OrgId,
        email: &Email,
        held: &[(LeaseId, u64)],
        now: Instant,
    ) -> GoneLeases {
        let Some(cell) = self.existing_organization(org) else {
            let gone = |&(id, generation): &(LeaseId, u64)| {
                (id, generation, DomainError::LeaseNotFound(id.to_string()))
            };
            return held.iter().map(gone).collect();
        };
        let mut guard = cell.lock();
        let org = &mut *guard;
        let renewed_ms = org.clock.deadline_ms(now + self.timing.ttl);
        let mut gone = Vec::new();
        for &(id, generation) in held {
            let slot = match org.find(id, Some(email), generation) {
                Ok(slot) => slot,
                Err(error) => {
                    gone.push((id, generation, error));
                    continue;
                }
            };
            let lease = org.leases.get_mut(slot).expect("found slots are occupied");
            self.observer.renewed(
                lease.view(org.clock),
                Duration::from_millis(renewed_ms.saturating_sub(lease.deadline_ms)),
            );
            lease.deadline_ms = lease.deadline_ms.max(renewed_ms);
        }
        gone
    }

    /// The live lease `id` of `email` at `generation` (fenced like a heartbeat).
    pub fn live_lease(
        &self,
        org: &OrgId,
        email: &Email,
        id: LeaseId,
        generation: u64,
    ) -> Result<Lease, DomainError> {
        let cell = self
            .existing_organization(org)
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        let org = cell.lock();
        let slot = org.find(id, Some(email), generation)?;
        let lease = org.leases.get(slot).expect("found slots are occupied");
        Ok(lease.view(org.clock).to_lease())
    }

    /// Whether the lease `id` of `email` is live at `generation` (fenced like a
    /// heartbeat), without copying it out.
    pub fn check_live(
        &self,
        org: &OrgId,
        email: &Email,
        id: LeaseId,
        generation: u64,
    ) -> Result<(), DomainError> {
        let cell = self
            .existing_organization(org)
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        let org = cell.lock();
        org.find(id, Some(email), generation).map(|_| ())
    }

    /// Ends a lease of `email` at the engine's request; its seat goes to the head of
    /// the queue, granted as of `now`.
    pub fn release(
        &self,
        org: &OrgId,
        email: &Email,
        id: LeaseId,
        generation: u64,
        now: Instant,
    ) -> Result<(), DomainError> {
        self.end_held(org, email, id, generation, LeaseEnd::Released, now)
    }

    /// Ends a lease of `email` at `generation` for `why` (a release, or a cause its
    /// holder learns of, such as its key's revocation), then serves the waiters.
    pub fn end_held(
        &self,
        org: &OrgId,
        email: &Email,
        id: LeaseId,
        generation: u64,
        why: LeaseEnd,
        now: Instant,
    ) -> Result<(), DomainError> {
        let cell = self
            .existing_organization(org)
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        let mut org = cell.lock();
        let slot = org.find(id, Some(email), generation)?;
        let ended = org.end_observed(slot, why, None, self.sinks());
        self.serve_waiters(&mut org, ended.product, now);
        Ok(())
    }

    /// Ends a lease at the request of admin `by`, whoever holds it.
    pub fn terminate(
        &self,
        org: &OrgId,
        id: LeaseId,
        by: &Principal,
        now: Instant,
    ) -> Result<Lease, DomainError> {
        let cell = self
            .existing_organization(org)
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        let mut org = cell.lock();
        let slot = org
            .leases
            .find(id)
            .ok_or_else(|| DomainError::LeaseNotFound(id.to_string()))?;
        let why = LeaseEnd::Terminated(Termination::Admin);
        let lease = org.end_observed(slot, why, Some(by), self.sinks());
        self.serve_waiters(&mut org, lease.product, now);
        Ok(lease.view(org.clock).to_lease())
    }

    /// Ends the sessions `command` withdraws (a removed member's, those of a license
    /// unassigned or transferred away), for admin `by` (`None` when replaying the
    /// log): the one path of both, so a replay ends exactly what the live command
    /// ended. Call it once the command applied, under the admin lock. Admin commands
    /// are rare, so this scans the organization's leases once per command rather than
    /// keeping a per-user index on the hot path.
    ///
    /// A deleted organization's sessions all end, and its leases are forgotten with it
    /// (counters included), so an organization created again under its id starts
    /// afresh; ends the journal could not take are covered by the logged deletion,
    /// whose replay ends the same sessions.
    ///
    /// Waiters the command withdraws are refused; the seats freed go to the others,
    /// granted as of `now` (`None` when replaying: nobody waits during recovery).
    pub fn end_sessions_withdrawn_by(
        &self,
        command: &Command,
        by: Option<&Principal>,
        now: Option<Instant>,
    ) -> u32 {
        let withdrawn = match command.sessions_to_end() {
            Withdrawal::Sessions(withdrawn) if withdrawn.is_empty() => return 0,
            Withdrawal::Sessions(withdrawn) => withdrawn,
            Withdrawal::WholeOrganization => return self.end_organization(command.org(), by),
        };
        let why = LeaseEnd::Terminated(command.termination());
        let Some(cell) = self.existing_organization(command.org()) else {
            return 0;
        };
        let ending_products: HashMap<&Email, Option<Product>> = withdrawn
            .iter()
            .map(|sessions| (&sessions.email, sessions.product))
            .collect();
        let mut guard = cell.lock();
        let org = &mut *guard;
        let withdraws = |product: Product, email: &Email| {
            ending_products
                .get(email)
                .is_some_and(|ending| ending.is_none_or(|p| p == product))
        };
        let org_id = org.id.clone();
        org.waiters.refuse_where(|product, email| {
            withdraws(product, email).then(|| match command.termination() {
                Termination::MemberRemoved => DomainError::NotAMember {
                    org: org_id.clone(),
                    email: email.clone(),
                },
                _ => DomainError::NotLicensed {
                    org: org_id.clone(),
                    email: email.clone(),
                    product,
                },
            })
        });
        let ending: Vec<Slot> = org
            .leases
            .iter()
            .filter(|(_, lease)| withdraws(lease.product, &lease.email))
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &ending {
            org.end_observed(slot, why, by, self.sinks());
        }
        if let Some(now) = now {
            for product in Product::ALL {
                self.serve_waiters(org, product, now);
            }
        }
        ending.len() as u32
    }

    /// Ends every session of a deleted organization and forgets its leases.
    fn end_organization(&self, org: &OrgId, by: Option<&Principal>) -> u32 {
        let Some((_, cell)) = self.organizations.remove(org) else {
            return 0;
        };
        let mut org = cell.lock();
        let org_id = org.id.clone();
        org.waiters
            .refuse_where(|_, _| Some(DomainError::OrganizationNotFound(org_id.clone())));
        let ending: Vec<Slot> = org.leases.iter().map(|(slot, _)| slot).collect();
        let why = LeaseEnd::Terminated(Termination::OrganizationDeleted);
        for &slot in &ending {
            org.end_observed(slot, why, by, self.sinks());
        }
        ending.len() as u32
    }

    /// See [`RecoveringLeases::restore`].
    fn restore(&self, org: &OrgId, lease: LeaseRef<'_>, now: Instant) {
        let cell = self.organization(org, now);
        let mut org = cell.lock();
        if let Some(slot) = org.leases.find(lease.id) {
            let existing = org.leases.get(slot).expect("found slots are occupied");
            if existing.generation >= lease.generation {
                return;
            }
            org.remove(slot);
        }
        if lease.product == Product::Kse
            && let Some(&holder) = org.kse_holders.get(lease.email)
        {
            // One KSE engine per user: the newer grant wins, as it did when it was made.
            let held = org
                .leases
                .get(holder)
                .expect("KSE holders are live")
                .generation;
            if held > lease.generation {
                return;
            }
            org.remove(holder);
        }
        let deadline_ms = org.clock.deadline_ms(now + self.timing.ttl);
        org.insert(StoredLease::new(lease, deadline_ms));
    }

    /// Gives each organization's storage the size of its live leases. Replay grows the slab, the index and the expiry heap to the peak of
    /// leases live at once in the replayed records and leaves stale heap entries; a
    /// daemon sized for its steady state must not keep that peak after a restart.
    /// Slots are renumbered, which is safe only before anything (a listing's page
    /// token) refers to one.
    fn compact_after_recovery(&self) {
        for entry in self.organizations.iter() {
            entry.value().lock().compact();
        }
    }

    /// See [`RecoveringLeases::forget`].
    fn forget(&self, org: &OrgId, id: LeaseId, generation: u64) {
        let Some(cell) = self.existing_organization(org) else {
            return;
        };
        let mut org = cell.lock();
        let live = org.leases.find(id).filter(|&slot| {
            org.leases
                .get(slot)
                .is_some_and(|l| l.generation == generation)
        });
        if let Some(slot) = live {
            org.remove(slot);
        }
    }

    /// Hands every live lease to `visit`, organization by organization, for a
    /// snapshot. An organization's lock is held for at most `LIVE_SLOTS_PER_LOCK`
    /// slots at a time, so a snapshot of a million leases never stalls a grant or a
    /// heartbeat for long. A lease that lives through the whole walk is visited
    /// exactly once (slots are stable while their lease lives); one granted or ended
    /// during it may or may not be: see `storage` for why a snapshot that is not one
    /// instant is still exact after replay.
    pub fn visit_live(&self, visitor: &mut impl LiveLeaseVisitor) {
        let cells: Vec<Arc<Mutex<OrgLeases>>> = self
            .organizations
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        for cell in cells {
            let mut from = 0;
            loop {
                let org = cell.lock();
                let mut examined = 0;
                for (_, stored) in org.leases.slots_from(from).take(LIVE_SLOTS_PER_LOCK) {
                    examined += 1;
                    if let Some(stored) = stored {
                        visitor.lease(&org.id, stored.view(org.clock));
                    }
                }
                drop(org);
                visitor.lock_released();
                if examined < LIVE_SLOTS_PER_LOCK {
                    break;
                }
                from += examined as u32;
            }
        }
    }

    /// Removes every lease whose deadline has passed; returns how many. The cost is
    /// proportional to the number of organizations plus the leases that expire, never
    /// to the number of live leases.
    pub fn expire_due(&self, now: Instant) -> usize {
        let cells: Vec<Arc<Mutex<OrgLeases>>> = self
            .organizations
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        cells
            .iter()
            .map(|cell| {
                let mut org = cell.lock();
                let expired = expire_org(&mut org, now, self.sinks());
                if expired > 0 {
                    for product in Product::ALL {
                        self.serve_waiters(&mut org, product, now);
                    }
                }
                expired
            })
            .sum()
    }

    pub fn counters(&self, org: &OrgId, product: Product) -> ProductCounters {
        self.existing_organization(org)
            .map(|cell| cell.lock().counters[product_index(product)])
            .unwrap_or_default()
    }

    /// A page of an organization's live leases of `product` (both when `None`) in slot
    /// order, from slot `from`: at most `size` leases, examining at most
    /// `limits::LIST_ENTRIES_SCANNED_PER_PAGE_MAX` slots under the organization's lock,
    /// and copying only the leases returned. Returns them and, when slots remain, the
    /// slot the next page starts at. A lease keeps its slot while it lives, so a lease
    /// that lives through a whole listing is listed exactly once; a grant made meanwhile
    /// may take a vacant slot already passed and then is not listed.
    pub fn list_page(
        &self,
        org: &OrgId,
        product: Option<Product>,
        from: u32,
        size: usize,
    ) -> (Vec<Lease>, Option<u32>) {
        let Some(cell) = self.existing_organization(org) else {
            return (Vec::new(), None);
        };
        let org = cell.lock();
        let mut leases = Vec::with_capacity(size.min(limits::LIST_PAGE_SIZE_MAX));
        for (examined, (slot, stored)) in org.leases.slots_from(from).enumerate() {
            if leases.len() == size || examined == limits::LIST_ENTRIES_SCANNED_PER_PAGE_MAX {
                return (leases, Some(slot.0));
            }
            let listed = stored.filter(|l| product.is_none_or(|p| p == l.product));
            leases.extend(listed.map(|l| l.view(org.clock).to_lease()));
        }
        (leases, None)
    }

    /// The boot epoch of the generations this table grants (their high bits).
    pub fn boot_epoch(&self) -> u64 {
        self.next_generation() >> GENERATION_EPOCH_SHIFT
    }

    /// Live leases across all organizations.
    pub fn live_count(&self) -> usize {
        self.organizations
            .iter()
            .map(|o| o.lock().leases.len())
            .sum()
    }
}

/// One KSE engine per user: refuses a second KSE session of a user holding one.
fn check_kse_holder(org: &OrgLeases, request: &AcquireRequest<'_>) -> Result<(), DomainError> {
    if request.product == Product::Kse
        && let Some(&holder) = org.kse_holders.get(request.email)
    {
        let other = org.leases.get(holder).expect("KSE holders are live");
        return Err(DomainError::KseSessionInUse {
            email: request.email.clone(),
            engine_id: other.engine_id().to_string(),
            lease_id: other.id().to_string(),
        });
    }
    Ok(())
}

/// The refusal of a full quota (or of a free seat that waiters are owed), counted.
fn quota_exhausted(org: &mut OrgLeases, request: &AcquireRequest<'_>) -> DomainError {
    let counters = org.counters_mut(request.product);
    counters.denials += 1;
    DomainError::QuotaExhausted {
        org: request.org.clone(),
        product: request.product,
        active: counters.active,
        quota: request.quota,
        unit: match request.product {
            Product::Kse => "KSE sessions",
            Product::Kre => "parallel sessions",
        },
    }
}

fn expire_org(org: &mut OrgLeases, now: Instant, sinks: Sinks<'_>) -> usize {
    let Some(now_ms) = org.clock.elapsed_ms(now) else {
        return 0; // Before the organization's clock began: nothing can be due.
    };
    let mut expired = 0;
    while let Some((slot, generation)) = org.expiry.pop_due(now_ms) {
        let Some(lease) = org.leases.get(slot).filter(|l| l.generation == generation) else {
            continue; // Released, or the slot re-granted since: a stale entry.
        };
        if lease.deadline_ms > now_ms {
            // Heartbeats moved it on; look again at its current deadline.
            let deadline_ms = lease.deadline_ms;
            org.expiry.schedule(deadline_ms, slot, generation);
            continue;
        }
        org.end_observed(slot, LeaseEnd::Expired, None, sinks);
        expired += 1;
        if expired >= limits::EXPIRIES_PER_SWEEP_MAX {
            break;
        }
    }
    expired
}

#[cfg(test)]
mod tests;
