//! The expiry index of one organization: a min-heap of `(deadline, slot, generation)`,
//! 16 bytes an entry.
//!
//! Heartbeats do not touch it: they only move the lease's own deadline. When an entry
//! comes due, the sweeper checks the slot: vacant, or holding another grant (a different
//! generation: the slot was freed and reused), means a stale entry (dropped); a later
//! deadline means it is pushed again at that deadline; otherwise the lease expires. So
//! each lease costs O(log n) once per TTL, whatever the number of live leases, and a
//! heartbeat costs nothing here. The invariant: every live lease has an entry at or
//! before its deadline, so no lease outlives its deadline by more than a sweep.
//!
//! Released leases leave stale entries behind; when they outnumber the live leases the
//! heap is compacted, which keeps its size within twice the live count (plus a small
//! constant) at an amortised O(1) per release.
//!
//! An entry packs the deadline (milliseconds since the organization's clock base, see
//! `store::MsClock`) and the slot into one `u64`, deadline in the high bits, so that
//! entries order by deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::store::Slot;

/// Stale entries tolerated before compaction is considered at all.
const COMPACTION_SLACK_ENTRIES: usize = 1024;

/// Bits of an entry's key that hold the slot.
const SLOT_BITS: u32 = 24;
/// Slots of one organization, at most: 16,777,216.
pub const SLOTS_PER_ORG_MAX: usize = 1 << SLOT_BITS;
/// The latest deadline an entry can hold: 2^40 ms, 34.8 years after the organization
/// was first seen. Later deadlines saturate (see `MsClock::deadline_ms`).
pub const DEADLINE_MS_MAX: u64 = (1 << (64 - SLOT_BITS)) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    /// `deadline_ms << SLOT_BITS | slot`.
    key: u64,
    /// The grant the entry was made for.
    generation: u64,
}

const _: () = assert!(size_of::<Entry>() == 16);

#[derive(Debug, Default)]
pub struct ExpiryIndex {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl ExpiryIndex {
    pub fn schedule(&mut self, deadline_ms: u64, slot: Slot, generation: u64) {
        self.heap
            .push(Reverse(entry(deadline_ms, slot, generation)));
    }

    /// An index of exactly these `(deadline_ms, slot, generation)` entries, built in
    /// linear time.
    pub fn from_entries(entries: Vec<(u64, Slot, u64)>) -> Self {
        let entries: Vec<Reverse<Entry>> = entries
            .into_iter()
            .map(|(deadline_ms, slot, generation)| Reverse(entry(deadline_ms, slot, generation)))
            .collect();
        ExpiryIndex {
            heap: BinaryHeap::from(entries),
        }
    }

    /// Pops the earliest entry if its deadline is at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(Slot, u64)> {
        let Reverse(earliest) = self.heap.peek()?;
        if earliest.key >> SLOT_BITS > now_ms {
            return None;
        }
        let Reverse(entry) = self.heap.pop()?;
        Some((slot_of(entry.key), entry.generation))
    }

    /// True when stale entries have grown past the live leases and are worth dropping.
    pub fn needs_compaction(&self, live_leases: usize) -> bool {
        self.heap.len() > 2 * live_leases + COMPACTION_SLACK_ENTRIES
    }

    /// Keeps only the entries for which `is_live` holds.
    pub fn compact(&mut self, mut is_live: impl FnMut(Slot, u64) -> bool) {
        self.heap
            .retain(|Reverse(entry)| is_live(slot_of(entry.key), entry.generation));
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

fn entry(deadline_ms: u64, slot: Slot, generation: u64) -> Entry {
    assert!(deadline_ms <= DEADLINE_MS_MAX, "deadline out of range");
    assert!((slot.0 as usize) < SLOTS_PER_ORG_MAX, "slot out of range");
    let key = (deadline_ms << SLOT_BITS) | u64::from(slot.0);
    Entry { key, generation }
}

fn slot_of(key: u64) -> Slot {
    Slot((key & ((1 << SLOT_BITS) - 1)) as u32)
}
