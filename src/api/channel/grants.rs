//! The grants a stream's task made inline and has not announced yet: each waits for
//! its record to be durable before its `granted` event may be sent.
//!
//! The task appends its grants one after another, so their records are in the log in
//! the order they are queued here, and the log makes records durable in that order:
//! only the oldest grant's `Durable` is polled, so the task is woken once per commit
//! group (when the oldest one's group is durable), and every grant behind it whose
//! record is durable too is taken in the same wake-up.
//!
//! A stream that ends drops what is queued here: those grants stay in the lease
//! table, live until their deadline, and the engine acquiring again with the same
//! engine id gets the same lease back (`resumed`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::domain::DomainError;
use crate::domain::Product;
use crate::domain::journal::Durable;
use crate::leases::Granted;

/// One grant waiting for its record to be durable.
struct Unannounced {
    request_id: u64,
    product: Product,
    granted: Granted,
    durable: Durable,
}

/// A grant whose record is durable (or could not be made so): what to answer.
pub(super) struct Settled {
    pub request_id: u64,
    pub product: Product,
    pub outcome: Result<Granted, DomainError>,
}

/// The stream's grants waiting for the log, oldest first (bounded by the stream's
/// pending acquires, `limits::PENDING_ACQUIRES_PER_STREAM_MAX`).
#[derive(Default)]
pub(super) struct UnannouncedGrants {
    queue: VecDeque<Unannounced>,
}

impl UnannouncedGrants {
    /// Queues a grant just appended to the log (after every grant queued before).
    pub fn push(&mut self, request_id: u64, product: Product, granted: Granted, durable: Durable) {
        self.queue.push_back(Unannounced {
            request_id,
            product,
            granted,
            durable,
        });
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Resolves with every grant from the oldest on whose record is durable, in
    /// order; pending while the oldest is not (for ever when none is queued).
    pub fn settled(&mut self) -> SettledGrants<'_> {
        SettledGrants { grants: self }
    }

    fn poll_settled(&mut self, context: &mut Context<'_>) -> Poll<Vec<Settled>> {
        let mut settled = Vec::new();
        while let Some(oldest) = self.queue.front_mut() {
            // Only the oldest registers a waker: the ones behind it are durable no
            // earlier, so they are looked at when it is.
            let Poll::Ready(durable) = oldest.durable.as_mut().poll(context) else {
                break;
            };
            let oldest = self.queue.pop_front().expect("the front was just polled");
            settled.push(Settled {
                request_id: oldest.request_id,
                product: oldest.product,
                outcome: durable.map(|()| oldest.granted),
            });
        }
        if settled.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(settled)
        }
    }
}

/// The future of [`UnannouncedGrants::settled`].
pub(super) struct SettledGrants<'a> {
    grants: &'a mut UnannouncedGrants,
}

impl Future for SettledGrants<'_> {
    type Output = Vec<Settled>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        self.grants.poll_settled(context)
    }
}
