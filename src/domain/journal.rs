//! The durability port: the one narrow interface ([`Journal`]) through which the
//! broker and the lease table make changes durable, so that a replicated log could
//! replace the local one (`storage::durable::WalJournal`) without touching the domain
//! or the lease table.
//!
//! What is journaled: every admin command, and every lease grant and end. The contract:
//! - An admin command is applied to memory and appended while the admin lock is held,
//!   so the log order is the apply order; the caller is answered only after the
//!   returned [`Durable`] resolves.
//! - A lease grant is appended under its organization's lock and the engine is answered
//!   only once it is durable, so a restart never forgets a seat it handed out.
//! - A lease end (release, expiry, termination) is appended without waiting: if it is
//!   lost in a crash, recovery brings the lease back and it expires one TTL later. Every
//!   end is in the log before any grant that reuses its seat (an end the log could not
//!   take is held back and appended before that organization's next grant), so a
//!   restart never restores both and never over-admits.
//!
//! Readers may briefly see a change that is not yet durable; if the process dies
//! before it is, nobody was answered, and recovery rebuilds the state from what is.

use std::future::Future;
use std::pin::Pin;

use super::{Command, DomainError, Lease, LeaseId, OrgId};

/// Resolves once the appended record is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), DomainError>> + Send>>;

/// Proof that the queue of records awaiting durability had room, taken before any lock
/// so that a full queue refuses a change before it is applied. Between admission and
/// append there is no `.await`, so the queue can overshoot its bound by at most one
/// record per thread.
pub struct LogPermit {
    _admitted: (),
}

pub trait Journal: Send + Sync + 'static {
    /// Takes a place in the queue, or refuses with UNAVAILABLE when it is full or closed,
    /// or while the log cannot reserve room for new records (a full disk: the daemon is
    /// read-only until the log's writer reserves room again).
    fn admit(&self) -> Result<LogPermit, DomainError>;
    /// Appends an admin command after every earlier record. Called with the admin lock
    /// held, right after the command applied; it must not block on I/O.
    fn append_command(&self, permit: LogPermit, command: &Command) -> Durable;
    /// Appends a lease grant; called under the organization's lock; must not block.
    fn append_lease_granted(&self, permit: LogPermit, org: &OrgId, lease: &Lease) -> Durable;
    /// Appends a lease end; nobody waits for it. Returns false when the log is too far
    /// behind to take it; the lease table then holds it back and journals it before it
    /// grants that organization's next seat.
    fn append_lease_ended(&self, org: &OrgId, id: LeaseId, generation: u64) -> bool;
    /// Makes everything appended so far durable and stops; blocking. Called once at
    /// shutdown, after the last call finished.
    fn close(&self) -> Result<(), DomainError>;
}

/// Admits a record when fewer than `records_max` are waiting for the disk.
pub fn admit(pending_records: u64, records_max: usize) -> Result<LogPermit, DomainError> {
    if pending_records >= records_max as u64 {
        return Err(DomainError::Unavailable(format!(
            "the durable log has {pending_records} records waiting for disk; retry shortly"
        )));
    }
    Ok(LogPermit { _admitted: () })
}

/// A journal that keeps nothing: for benchmarks of the in-memory path and for unit
/// tests that do not concern durability.
pub struct VolatileJournal;

impl VolatileJournal {
    pub fn new() -> Self {
        VolatileJournal
    }
}

impl Default for VolatileJournal {
    fn default() -> Self {
        Self::new()
    }
}

fn already_durable() -> Durable {
    Box::pin(std::future::ready(Ok(())))
}

impl Journal for VolatileJournal {
    fn admit(&self) -> Result<LogPermit, DomainError> {
        Ok(LogPermit { _admitted: () })
    }

    fn append_command(&self, _permit: LogPermit, _command: &Command) -> Durable {
        already_durable()
    }

    fn append_lease_granted(&self, _permit: LogPermit, _org: &OrgId, _lease: &Lease) -> Durable {
        already_durable()
    }

    fn append_lease_ended(&self, _org: &OrgId, _id: LeaseId, _generation: u64) -> bool {
        true
    }

    fn close(&self) -> Result<(), DomainError> {
        Ok(())
    }
}
