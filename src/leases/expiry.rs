//! The expiry index of one organization: a min-heap of `(deadline, lease, generation)`.
//!
//! Heartbeats do not touch it: they only move the lease's own deadline. When an entry
//! comes due, the sweeper checks the lease: gone or re-granted means a stale entry
//! (dropped), a later deadline means it is pushed again at that deadline, otherwise the
//! lease expires. So each lease costs O(log n) once per TTL, whatever the number of
//! live leases, and a heartbeat costs nothing here.
//!
//! Released leases leave stale entries behind; when they outnumber the live leases the
//! heap is compacted, which keeps its size within twice the live count (plus a small
//! constant) at an amortised O(1) per release.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

use super::LeaseId;

/// Stale entries tolerated before compaction is considered at all.
const COMPACTION_SLACK_ENTRIES: usize = 1024;

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    heap: BinaryHeap<Reverse<(Instant, LeaseId, u64)>>,
}

impl ExpiryIndex {
    pub fn schedule(&mut self, deadline: Instant, id: LeaseId, generation: u64) {
        self.heap.push(Reverse((deadline, id, generation)));
    }

    /// Pops the earliest entry if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(LeaseId, u64)> {
        let Reverse((deadline, _, _)) = self.heap.peek()?;
        if *deadline > now {
            return None;
        }
        let Reverse((_, id, generation)) = self.heap.pop()?;
        Some((id, generation))
    }

    /// True when stale entries have grown past the live leases and are worth dropping.
    pub fn needs_compaction(&self, live_leases: usize) -> bool {
        self.heap.len() > 2 * live_leases + COMPACTION_SLACK_ENTRIES
    }

    /// Keeps only the entries for which `is_live` holds.
    pub fn compact(&mut self, mut is_live: impl FnMut(LeaseId, u64) -> bool) {
        self.heap
            .retain(|Reverse((_, id, generation))| is_live(*id, *generation));
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
