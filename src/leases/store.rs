//! The compact storage of one organization's live leases: a slab of 80-byte
//! [`StoredLease`] slots, a free list of vacant slots, and an index from lease id to slot.
//!
//! The public [`Lease`](super::Lease) is a view built on demand; what stays resident is
//! this form, sized for a million live leases in well under 256 MB:
//! - a slot holds the id as two `u64`s (8-byte alignment, where `u128` would pad every
//!   slot to 16), the deadline as milliseconds since the organization's [`MsClock`]
//!   base, and the engine id, hostname and label back to back in one allocation;
//! - the index is a `hashbrown::HashTable<u32>` of slot numbers: a bucket costs 5 bytes
//!   whatever the size of a lease, and ids are compared through the slab;
//! - a slot's number is stable while its lease lives, so the expiry heap and the KSE
//!   holders refer to leases by slot. A freed slot is reused by a later grant; the
//!   grant's generation tells its entries from those of the slot's earlier tenants.
//!
//! The slab grows by doubling and never shrinks while the daemon serves (as the hash
//! map before it): an organization keeps the memory of its peak until the daemon
//! restarts, and recovery ends with `compact`, which sizes it to the live leases.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::time::Instant;

use super::expiry::{DEADLINE_MS_MAX, SLOTS_PER_ORG_MAX};
use super::{LeaseId, LeaseRef};
use crate::domain::{Email, Product};
use crate::limits;

// Every configurable per-organization cap fits the slot numbers the expiry heap packs.
const _: () = assert!(limits::LEASES_PER_ORG_MAX_CEILING <= SLOTS_PER_ORG_MAX);
// Text lengths are kept as `u16`.
const _: () = assert!(limits::ENGINE_ID_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(limits::HOSTNAME_BYTES_MAX <= u16::MAX as usize);
// The whole point of this module: a vacant slot costs no more than an occupied one, and
// a slot is 80 bytes on 64-bit targets.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Option<StoredLease>>() == 80);

/// How far before the first instant an organization is seen at its clock begins: the
/// calls of other threads, and callers that schedule from an earlier instant (tests,
/// benchmarks), may pass instants before it. One year, which leaves 33 years of range.
const CLOCK_BASE_BEFORE_FIRST_SEEN_MS: u64 = 366 * 24 * 3600 * 1000;
const _: () = assert!(CLOCK_BASE_BEFORE_FIRST_SEEN_MS < DEADLINE_MS_MAX / 32);

/// The millisecond clock of one organization: deadlines are stored as whole
/// milliseconds since `base`, which lies `CLOCK_BASE_BEFORE_FIRST_SEEN_MS` before the
/// first instant the organization was seen at.
#[derive(Debug, Clone, Copy)]
pub struct MsClock {
    base: Instant,
}

impl MsClock {
    pub fn new(first_seen: Instant) -> Self {
        // Linux instants go below the boot time; where they cannot (a platform counting
        // ticks from boot), the clock starts as far back as the uptime allows.
        let base = [CLOCK_BASE_BEFORE_FIRST_SEEN_MS, 3_600_000, 1_000]
            .into_iter()
            .find_map(|ms| first_seen.checked_sub(Duration::from_millis(ms)))
            .unwrap_or(first_seen);
        MsClock { base }
    }

    /// A deadline in milliseconds, rounded up: a lease never expires before the
    /// instant it was given. An instant before the base counts as the base (also
    /// later, never earlier). Past `DEADLINE_MS_MAX` (33 years on) deadlines saturate.
    pub fn deadline_ms(self, deadline: Instant) -> u64 {
        let since = deadline.saturating_duration_since(self.base);
        let ms = since
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(since.subsec_nanos().div_ceil(1_000_000)));
        ms.min(DEADLINE_MS_MAX)
    }

    /// Whole milliseconds from the base to `now`, rounded down, so that a deadline
    /// of `ms` is due when `ms <= elapsed_ms(now)`, that is when `base + ms <= now`.
    /// `None` before the base: nothing can be due then.
    pub fn elapsed_ms(self, now: Instant) -> Option<u64> {
        let since = now.checked_duration_since(self.base)?;
        Some(
            since
                .as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(since.subsec_millis())),
        )
    }

    pub fn instant(self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }
}

/// A lease as the table keeps it: 80 bytes plus one text allocation.
#[derive(Debug)]
pub struct StoredLease {
    /// The lease id's high and low halves.
    id: [u64; 2],
    pub generation: u64,
    /// Milliseconds since the organization's [`MsClock`] base, rounded up.
    pub deadline_ms: u64,
    pub acquired_at_unix_ms: i64,
    /// Shared with every other lease of the user (an `Arc`).
    pub email: Email,
    /// The engine id, hostname and label, back to back.
    texts: Box<str>,
    engine_id_len: u16,
    hostname_len: u16,
    pub product: Product,
}

impl StoredLease {
    /// Panics when a text is longer than a `u16` can say: the API bounds them far
    /// below (`limits::ENGINE_ID_BYTES_MAX`, `HOSTNAME_BYTES_MAX`).
    pub fn new(lease: LeaseRef<'_>, deadline_ms: u64) -> Self {
        let engine_id_len = u16::try_from(lease.engine_id.len()).expect("engine id too long");
        let hostname_len = u16::try_from(lease.hostname.len()).expect("hostname too long");
        let mut texts =
            String::with_capacity(lease.engine_id.len() + lease.hostname.len() + lease.label.len());
        texts.push_str(lease.engine_id);
        texts.push_str(lease.hostname);
        texts.push_str(lease.label);
        StoredLease {
            id: [(lease.id.0 >> 64) as u64, lease.id.0 as u64],
            generation: lease.generation,
            deadline_ms,
            acquired_at_unix_ms: lease.acquired_at_unix_ms,
            email: lease.email.clone(),
            texts: texts.into_boxed_str(),
            engine_id_len,
            hostname_len,
            product: lease.product,
        }
    }

    pub fn id(&self) -> LeaseId {
        LeaseId((u128::from(self.id[0]) << 64) | u128::from(self.id[1]))
    }

    pub fn engine_id(&self) -> &str {
        &self.texts[..usize::from(self.engine_id_len)]
    }

    /// The lease as callers see it, its deadline read through the organization's clock.
    pub fn view(&self, clock: MsClock) -> LeaseRef<'_> {
        let engine_end = usize::from(self.engine_id_len);
        let hostname_end = engine_end + usize::from(self.hostname_len);
        LeaseRef {
            id: self.id(),
            generation: self.generation,
            product: self.product,
            email: &self.email,
            engine_id: &self.texts[..engine_end],
            hostname: &self.texts[engine_end..hostname_end],
            label: &self.texts[hostname_end..],
            deadline: clock.instant(self.deadline_ms),
            acquired_at_unix_ms: self.acquired_at_unix_ms,
        }
    }
}

/// A slot of the slab; stable while its lease lives. Below `SLOTS_PER_ORG_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub u32);

/// The live leases of one organization.
#[derive(Debug, Default)]
pub struct LeaseStore {
    /// Occupied and vacant slots; at most `SLOTS_PER_ORG_MAX`, and never more than the
    /// organization's peak count of live leases.
    slots: Vec<Option<StoredLease>>,
    /// Vacant slots, reused last freed first (its memory is the likeliest in cache).
    vacant: Vec<u32>,
    /// The slot of each live lease, found by the hash of its id.
    index: HashTable<u32>,
    /// Keyed per organization: ids are derived from what engines send, so an
    /// unkeyed hash would let them choose collisions.
    hasher: RandomState,
}

impl LeaseStore {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn find(&self, id: LeaseId) -> Option<Slot> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(id), |&slot| {
                slots[slot as usize]
                    .as_ref()
                    .is_some_and(|lease| lease.id() == id)
            })
            .map(|&slot| Slot(slot))
    }

    pub fn get(&self, slot: Slot) -> Option<&StoredLease> {
        self.slots.get(slot.0 as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut StoredLease> {
        self.slots.get_mut(slot.0 as usize)?.as_mut()
    }

    /// Stores a lease whose id is not in the store yet.
    pub fn insert(&mut self, lease: StoredLease) -> Slot {
        let hash = self.hasher.hash_one(lease.id());
        let slot = match self.vacant.pop() {
            Some(slot) => {
                let vacant = &mut self.slots[slot as usize];
                assert!(vacant.is_none(), "the free list holds an occupied slot");
                *vacant = Some(lease);
                slot
            }
            None => {
                assert!(
                    self.slots.len() < SLOTS_PER_ORG_MAX,
                    "more live leases than slots"
                );
                self.slots.push(Some(lease));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        // Growing the index rehashes every entry through its lease's id.
        self.index.insert_unique(hash, slot, |&other| {
            let lease = slots[other as usize].as_ref();
            hasher.hash_one(lease.expect("indexed slots are occupied").id())
        });
        Slot(slot)
    }

    /// Takes the lease out of an occupied slot and frees the slot.
    pub fn remove(&mut self, slot: Slot) -> StoredLease {
        let lease = self.slots[slot.0 as usize]
            .take()
            .expect("removing a vacant slot");
        match self
            .index
            .find_entry(self.hasher.hash_one(lease.id()), |&other| other == slot.0)
        {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("an occupied slot is indexed"),
        }
        self.vacant.push(slot.0);
        lease
    }

    /// Drops the vacant slots and sizes the slab and the index to the live leases.
    /// Renumbers the slots: callers rebuild whatever refers to one.
    pub fn compact(&mut self) {
        self.slots.retain(Option::is_some);
        self.slots.shrink_to_fit();
        self.vacant = Vec::new();
        let (slots, hasher) = (&self.slots, &self.hasher);
        let hash_of = |slot: u32| {
            let lease = slots[slot as usize].as_ref();
            hasher.hash_one(lease.expect("only occupied slots are kept").id())
        };
        let mut index = HashTable::with_capacity(slots.len());
        for slot in 0..slots.len() as u32 {
            index.insert_unique(hash_of(slot), slot, |&other| hash_of(other));
        }
        self.index = index;
    }

    /// Every slot from `from` on, vacant ones as `None`, in slot order: a range read
    /// for pages of a listing.
    pub fn slots_from(&self, from: u32) -> impl Iterator<Item = (Slot, Option<&StoredLease>)> {
        let from = (from as usize).min(self.slots.len());
        self.slots[from..]
            .iter()
            .enumerate()
            .map(move |(offset, lease)| (Slot((from + offset) as u32), lease.as_ref()))
    }

    /// The live leases with their slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &StoredLease)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, lease)| Some((Slot(slot as u32), lease.as_ref()?)))
    }
}
