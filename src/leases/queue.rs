//! The wait queue: acquires that found the quota full and asked to wait, first come
//! first served per organization and product, kept under the organization's lock with
//! its leases so that check-and-grant stays one atomic step.
//!
//! - **No barging.** While a product has waiters, a new acquire of it is queued (or
//!   denied, when it does not wait) even if a seat is free at that instant: seats go
//!   to the head of the queue first. The table keeps the invariant that a queue is
//!   non-empty only while its product's active count is at the quota (or while a grant
//!   is held back by the log), so this refuses nothing the quota would allow.
//! - **Served on every free.** Each end of a lease (release, expiry, termination, a
//!   withdrawal) and each quota change grants seats to the head of the queue while the
//!   quota allows ([`LeaseTable::serve_waiters`]). The grant is journaled like any
//!   other; the waiter gets it with its `Durable` through a oneshot channel and answers
//!   its engine only once that resolves.
//! - **Nobody lost, no seat leaked.** A waiter whose receiver is gone (its call was
//!   cancelled, its stream broke) is skipped; a grant sent to a receiver dropped before
//!   reading it is ended by [`LeaseTable::leave_queue`], which every waiter calls when
//!   it stops waiting (deadline, cancel, drop).
//! - **Not durable.** The queue lives in memory only: after a restart, waiters retry.
//!
//! Queue places are numbered by `ticket`, increasing in arrival order, so a waiter's
//! position is a binary search.

use std::collections::VecDeque;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{AcquireRequest, Granted, LeaseEnd, LeaseTable, OrgLeases, product_index};
use crate::domain::journal::Durable;
use crate::domain::{DomainError, Email, LeaseId, OrgId, Product, Termination};
use crate::limits;

/// What a waiter is answered: a grant to await, or why it left the queue.
pub type WaitAnswer = Result<(Granted, Durable), DomainError>;

/// One queued acquire.
pub(super) struct Waiter {
    ticket: u64,
    email: Email,
    engine_id: Box<str>,
    hostname: Box<str>,
    label: Box<str>,
    /// When it was queued, to give the grant a wall-clock time without a clock read.
    queued_at: Instant,
    queued_at_unix_ms: i64,
    answer: oneshot::Sender<WaitAnswer>,
}

/// The waiters of one organization, one queue per product.
#[derive(Default)]
pub(super) struct WaitQueues {
    queues: [VecDeque<Waiter>; 2],
    /// The last quota of each product the table was told of (by an acquire or a quota
    /// change): what seats freed later are granted against.
    quotas: [u32; 2],
}

impl std::fmt::Debug for WaitQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitQueues")
            .field("kse", &self.queues[0].len())
            .field("kre", &self.queues[1].len())
            .field("quotas", &self.quotas)
            .finish()
    }
}

impl WaitQueues {
    pub(super) fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    pub(super) fn waiting(&self, product: Product) -> usize {
        self.queues[product_index(product)].len()
    }

    pub(super) fn set_quota(&mut self, product: Product, quota: u32) {
        self.quotas[product_index(product)] = quota;
    }

    fn position(&self, product: Product, ticket: u64) -> Option<(u32, u32)> {
        let queue = &self.queues[product_index(product)];
        let index = queue.binary_search_by_key(&ticket, |w| w.ticket).ok()?;
        Some((index as u32 + 1, queue.len() as u32))
    }

    fn remove(&mut self, product: Product, ticket: u64) -> Option<Waiter> {
        let queue = &mut self.queues[product_index(product)];
        let index = queue.binary_search_by_key(&ticket, |w| w.ticket).ok()?;
        queue.remove(index)
    }

    /// Answers and removes every waiter `refuse` picks, with the error it gives.
    pub(super) fn refuse_where(
        &mut self,
        mut refuse: impl FnMut(Product, &Email) -> Option<DomainError>,
    ) {
        for product in Product::ALL {
            self.queues[product_index(product)].retain_mut(|waiter| {
                match refuse(product, &waiter.email) {
                    Some(error) => {
                        let (closed, _) = oneshot::channel();
                        let answer = std::mem::replace(&mut waiter.answer, closed);
                        let _ = answer.send(Err(error));
                        false
                    }
                    None => true,
                }
            });
        }
    }
}

/// A place in the queue, held by the waiting call or stream. It must be given back
/// through [`LeaseTable::leave_queue`] when the waiter stops waiting without an answer,
/// so that a grant made meanwhile is ended rather than leaked (the broker's waiting
/// guard does it on drop).
pub struct WaitTicket {
    org: OrgId,
    product: Product,
    ticket: u64,
    answer: oneshot::Receiver<WaitAnswer>,
}

impl WaitTicket {
    /// The answer: a grant (to await) or the reason the waiter was refused. An error
    /// from the channel means the organization was forgotten with its queue.
    pub async fn answered(&mut self) -> WaitAnswer {
        match (&mut self.answer).await {
            Ok(answer) => answer,
            Err(_) => Err(DomainError::OrganizationNotFound(self.org.clone())),
        }
    }

    pub fn product(&self) -> Product {
        self.product
    }
}

/// What [`LeaseTable::acquire_or_queue`] did.
pub enum Acquired {
    /// A seat (or the engine's live lease) at once.
    Granted(Granted, Durable),
    /// The quota is full: queued at this position (1 is the head) of this length.
    Queued {
        ticket: WaitTicket,
        position: u32,
        length: u32,
    },
}

impl LeaseTable {
    /// Grants a lease as [`LeaseTable::acquire`] does, or, when the quota is full (or
    /// earlier waiters are queued for the product), queues the request at the tail.
    /// The queue of the organization is bounded (`limits::WAITERS_PER_ORG_MAX`).
    pub fn acquire_or_queue(
        &self,
        request: AcquireRequest<'_>,
        now: super::Now,
    ) -> Result<Acquired, DomainError> {
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
        org.waiters.set_quota(request.product, request.quota);
        let deadline_ms = org.clock.deadline_ms(now.instant + self.timing.ttl);
        if let Some(slot) = org.leases.find(id) {
            let (granted, durable) = self.resume(org, slot, deadline_ms, permit, request.org);
            return Ok(Acquired::Granted(granted, durable));
        }
        match self.check_new_grant(org, &request) {
            Ok(()) => {
                let (granted, durable) =
                    self.grant(org, id, &request, deadline_ms, now.unix_ms, permit);
                return Ok(Acquired::Granted(granted, durable));
            }
            Err(DomainError::QuotaExhausted { .. }) => {}
            Err(other) => return Err(other),
        }
        // The denial `check_grant` counted is a wait, not a refusal.
        org.counters_mut(request.product).denials -= 1;
        if org.waiters.len() >= limits::WAITERS_PER_ORG_MAX {
            return Err(DomainError::LimitReached {
                what: "queued acquires per organization",
                limit: limits::WAITERS_PER_ORG_MAX,
            });
        }
        let (sender, receiver) = oneshot::channel();
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queue = &mut org.waiters.queues[product_index(request.product)];
        queue.push_back(Waiter {
            ticket,
            email: request.email.clone(),
            engine_id: request.engine_id.into(),
            hostname: request.hostname.into(),
            label: request.label.into(),
            queued_at: now.instant,
            queued_at_unix_ms: now.unix_ms,
            answer: sender,
        });
        let length = queue.len() as u32;
        Ok(Acquired::Queued {
            ticket: WaitTicket {
                org: request.org.clone(),
                product: request.product,
                ticket,
                answer: receiver,
            },
            position: length,
            length,
        })
    }

    /// The waiter's place (1 is the head) and the queue's length; `None` once it left
    /// the queue (answered).
    pub fn queue_position(&self, ticket: &WaitTicket) -> Option<(u32, u32)> {
        let cell = self.existing_organization(&ticket.org)?;
        let org = cell.lock();
        org.waiters.position(ticket.product, ticket.ticket)
    }

    /// The waiter stops waiting (its deadline passed, it cancelled, its call or stream
    /// went away): takes it out of the queue, or, when it was answered meanwhile,
    /// returns that answer. A caller that will not use a returned grant must end it
    /// ([`LeaseTable::end_unclaimed`]).
    pub fn leave_queue(&self, ticket: &mut WaitTicket) -> Option<WaitAnswer> {
        if let Some(cell) = self.existing_organization(&ticket.org) {
            let mut org = cell.lock();
            if org.waiters.remove(ticket.product, ticket.ticket).is_some() {
                return None;
            }
        }
        ticket.answer.try_recv().ok()
    }

    /// Ends a lease granted to a waiter that went away before it took the answer, so
    /// the seat is not held for a whole TTL by nobody; serves the next waiter.
    pub fn end_unclaimed(&self, org: &OrgId, granted: &Granted, now: Instant) {
        let Some(cell) = self.existing_organization(org) else {
            return;
        };
        let mut org = cell.lock();
        let lease = &granted.lease;
        if let Ok(slot) = org.find(lease.id, Some(&lease.email), lease.generation) {
            org.end_observed(slot, LeaseEnd::Released, None, self.sinks());
            self.serve_waiters(&mut org, lease.product, now);
        }
    }

    /// Grants freed seats of `product` to the head of its queue while the quota allows.
    /// Called under the organization's lock after every end and quota change.
    pub(super) fn serve_waiters(&self, org: &mut OrgLeases, product: Product, now: Instant) {
        let index = product_index(product);
        while let Some(head) = org.waiters.queues[index].front() {
            if head.answer.is_closed() {
                org.waiters.queues[index].pop_front();
                continue; // Its call or stream is gone.
            }
            let quota = org.waiters.quotas[index];
            if org.counters[index].active >= quota {
                return;
            }
            let permit = match self.journal.admit() {
                Ok(permit) => permit,
                // The log is far behind: the next free or quota change tries again.
                Err(_) => return,
            };
            let waiter = org.waiters.queues[index].pop_front().expect("a head");
            let request = AcquireRequest {
                org: &org.id.clone(),
                email: &waiter.email,
                product,
                engine_id: &waiter.engine_id,
                hostname: &waiter.hostname,
                label: &waiter.label,
                quota,
            };
            let id = LeaseId::derive(request.org, request.email, product, request.engine_id);
            let deadline_ms = org.clock.deadline_ms(now + self.timing.ttl);
            let answer = if let Some(slot) = org.leases.find(id) {
                Ok(self.resume(org, slot, deadline_ms, permit, request.org))
            } else {
                match self.check_grant(org, &request) {
                    Ok(()) => {
                        let since = now.saturating_duration_since(waiter.queued_at);
                        let unix_ms = waiter.queued_at_unix_ms + since.as_millis() as i64;
                        Ok(self.grant(org, id, &request, deadline_ms, unix_ms, permit))
                    }
                    Err(error @ DomainError::Unavailable(_)) => {
                        // The log holds back an end: keep the place, try again later.
                        org.waiters.queues[index].push_front(waiter);
                        let _ = error;
                        return;
                    }
                    Err(error) => Err(error),
                }
            };
            let new_grant = matches!(&answer, Ok((granted, _)) if !granted.resumed);
            if let Err(Ok((granted, _))) = waiter.answer.send(answer)
                && new_grant
            {
                // The waiter went away between the check and the send: give it back.
                let lease = &granted.lease;
                if let Ok(slot) = org.find(lease.id, Some(&lease.email), lease.generation) {
                    org.end_observed(slot, LeaseEnd::Released, None, self.sinks());
                }
            }
        }
    }

    /// A quota of the organization changed (`SetQuota`, `UpdateQuota`): remembers it
    /// and grants the seats a raise freed to the waiters.
    pub fn quota_changed(&self, org: &OrgId, quotas: [(Product, u32); 2], now: Instant) {
        let Some(cell) = self.existing_organization(org) else {
            return;
        };
        let mut org = cell.lock();
        for (product, quota) in quotas {
            org.waiters.set_quota(product, quota);
            self.serve_waiters(&mut org, product, now);
        }
    }

    /// Ends every session of an organization whose license expired, and refuses its
    /// waiters; returns the sessions ended.
    pub fn end_expired_license(&self, org: &OrgId) -> u32 {
        let Some(cell) = self.existing_organization(org) else {
            return 0;
        };
        let mut guard = cell.lock();
        let org = &mut *guard;
        let org_id = org.id.clone();
        org.waiters
            .refuse_where(|_, _| Some(DomainError::LicenseExpired(org_id.clone())));
        let ending: Vec<_> = org.leases.iter().map(|(slot, _)| slot).collect();
        for &slot in &ending {
            org.end_observed(
                slot,
                LeaseEnd::Terminated(Termination::LicenseExpired),
                None,
                self.sinks(),
            );
        }
        ending.len() as u32
    }

    /// Whether the organization holds sessions or waiters (the license sweep skips
    /// those that hold neither).
    pub fn is_occupied(&self, org: &OrgId) -> bool {
        self.existing_organization(org).is_some_and(|cell| {
            let org = cell.lock();
            org.leases.len() > 0 || org.waiters.len() > 0
        })
    }

    /// Requests waiting for a seat, all organizations and products (a gauge).
    pub fn waiting_count(&self) -> usize {
        self.organizations
            .iter()
            .map(|o| o.lock().waiters.len())
            .sum()
    }
}
