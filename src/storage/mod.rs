//! Durability of admin commands, behind one narrow interface ([`CommandLog`]) so that a
//! replicated log could replace the local one without touching the domain.
//!
//! The contract: the broker applies a command to memory and appends it to the log
//! while holding the admin lock, so the log order is the apply order; it answers the
//! caller only after the returned [`Durable`] resolves. Readers may briefly see a
//! command that is not yet durable; if the process dies before it is, the caller was
//! never answered, and recovery rebuilds the state from what is durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::{Command, DomainError};

/// Resolves once the appended command is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), DomainError>> + Send>>;

/// A place in the bounded queue of commands awaiting durability, taken before the
/// admin lock so that a full queue refuses a command before it changes anything.
pub struct LogPermit {
    _permit: OwnedSemaphorePermit,
}

pub trait CommandLog: Send + Sync + 'static {
    /// Takes a place in the queue, or refuses with UNAVAILABLE when it is full or closed.
    fn admit(&self) -> Result<LogPermit, DomainError>;
    /// Appends `command` after every earlier one. Called with the admin lock held,
    /// right after the command applied; it must not block on I/O.
    fn append(&self, permit: LogPermit, command: &Command) -> Durable;
}

/// Bounds the commands awaiting durability.
pub struct AdmissionQueue {
    slots: Arc<Semaphore>,
    capacity: usize,
}

impl AdmissionQueue {
    pub fn new(capacity: usize) -> Self {
        AdmissionQueue {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    pub fn admit(&self) -> Result<LogPermit, DomainError> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            DomainError::Unavailable(format!(
                "the durable log has {} commands waiting for disk; retry shortly",
                self.capacity
            ))
        })?;
        Ok(LogPermit { _permit: permit })
    }
}

/// A log that keeps nothing: for benchmarks of the in-memory path and for tests of
/// the domain that do not concern durability.
pub struct VolatileLog {
    queue: AdmissionQueue,
}

impl VolatileLog {
    pub fn new() -> Self {
        VolatileLog {
            queue: AdmissionQueue::new(crate::limits::LOG_QUEUE_COMMANDS_MAX),
        }
    }
}

impl Default for VolatileLog {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandLog for VolatileLog {
    fn admit(&self) -> Result<LogPermit, DomainError> {
        self.queue.admit()
    }

    fn append(&self, permit: LogPermit, _command: &Command) -> Durable {
        drop(permit);
        Box::pin(std::future::ready(Ok(())))
    }
}
