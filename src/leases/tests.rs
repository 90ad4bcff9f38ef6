//! Unit tests of the lease table, on tokio's paused clock: time moves only when a
//! test advances it, so expiry is exact and nothing sleeps.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

const TTL: Duration = Duration::from_secs(10);

fn table() -> LeaseTable {
    LeaseTable::new(LeaseTiming::from_ttl(TTL), 1)
}

fn recovering() -> RecoveringLeases {
    RecoveringLeases::new(LeaseTiming::from_ttl(TTL), limits::LEASES_PER_ORG_MAX)
}

fn org() -> OrgId {
    OrgId::parse("acme").unwrap()
}

fn email(n: usize) -> Email {
    Email::parse(&format!("user{n}@acme.com")).unwrap()
}

fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_ms: 0,
    }
}

fn acquire(
    table: &LeaseTable,
    user: usize,
    engine: &str,
    product: Product,
    quota: u32,
) -> Result<Granted, DomainError> {
    let org = org();
    let email = email(user);
    let request = AcquireRequest {
        org: &org,
        email: &email,
        product,
        engine_id: engine,
        hostname: "host",
        label: "",
        quota,
    };
    table
        .acquire(request, now())
        .map(|(granted, _durable)| granted)
}

#[tokio::test(start_paused = true)]
async fn quota_bounds_grants_and_release_frees_a_seat() {
    let table = table();
    let first = acquire(&table, 1, "e1", Product::Kre, 2).unwrap();
    acquire(&table, 2, "e2", Product::Kre, 2).unwrap();
    let refused = acquire(&table, 3, "e3", Product::Kre, 2).unwrap_err();
    assert!(matches!(
        refused,
        DomainError::QuotaExhausted {
            active: 2,
            quota: 2,
            ..
        }
    ));
    table
        .release(
            &org(),
            &email(1),
            first.lease.id,
            first.lease.generation,
            Instant::now(),
        )
        .unwrap();
    acquire(&table, 3, "e3", Product::Kre, 2).unwrap();
    let counters = table.counters(&org(), Product::Kre);
    assert_eq!(
        (
            counters.active,
            counters.peak,
            counters.grants,
            counters.denials
        ),
        (2, 2, 3, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_same_engine_gets_the_same_lease_back() {
    let table = table();
    let first = acquire(&table, 1, "e1", Product::Kre, 1).unwrap();
    let again = acquire(&table, 1, "e1", Product::Kre, 1).unwrap();
    assert!(!first.resumed && again.resumed);
    assert_eq!(first.lease.id, again.lease.id);
    assert_eq!(first.lease.generation, again.lease.generation);
    assert_eq!(table.counters(&org(), Product::Kre).active, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_lives_exactly_ttl_after_its_last_heartbeat() {
    let table = table();
    let lease = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    advance(TTL / 2).await;
    table
        .heartbeat(
            &org(),
            &email(1),
            lease.id,
            lease.generation,
            Instant::now(),
        )
        .unwrap();
    // The original deadline passes: the heartbeat moved it on.
    advance(TTL / 2 + Duration::from_millis(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    // Just before ttl since the heartbeat: still alive.
    advance(TTL / 2 - Duration::from_millis(2)).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    advance(Duration::from_millis(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 1);
    let gone = table.heartbeat(
        &org(),
        &email(1),
        lease.id,
        lease.generation,
        Instant::now(),
    );
    assert!(matches!(gone, Err(DomainError::LeaseNotFound(_))));
    assert_eq!(table.counters(&org(), Product::Kre).expiries, 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_grant_fences_off_the_old_generation() {
    let table = table();
    let old = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    advance(TTL).await;
    assert_eq!(table.expire_due(Instant::now()), 1);
    let new = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    assert_eq!(old.id, new.id);
    assert!(new.generation > old.generation);
    let stale = table.heartbeat(&org(), &email(1), old.id, old.generation, Instant::now());
    assert!(matches!(stale, Err(DomainError::StaleGeneration { .. })));
    let stale = table.release(&org(), &email(1), old.id, old.generation, Instant::now());
    assert!(matches!(stale, Err(DomainError::StaleGeneration { .. })));
}

#[tokio::test(start_paused = true)]
async fn kse_allows_one_engine_per_user() {
    let table = table();
    acquire(&table, 1, "e1", Product::Kse, 5).unwrap();
    let second = acquire(&table, 1, "e2", Product::Kse, 5).unwrap_err();
    assert!(matches!(second, DomainError::KseSessionInUse { .. }));
    acquire(&table, 2, "e2", Product::Kse, 5).unwrap();
}

#[tokio::test(start_paused = true)]
async fn another_user_cannot_touch_a_lease() {
    let table = table();
    let lease = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    let other = table.release(
        &org(),
        &email(2),
        lease.id,
        lease.generation,
        Instant::now(),
    );
    assert!(matches!(other, Err(DomainError::LeaseNotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn ending_a_users_sessions_frees_their_seats() {
    let table = table();
    acquire(&table, 1, "e1", Product::Kre, 10).unwrap();
    acquire(&table, 1, "e2", Product::Kre, 10).unwrap();
    acquire(&table, 1, "e3", Product::Kse, 10).unwrap();
    acquire(&table, 2, "e4", Product::Kre, 10).unwrap();
    let unassign = Command::UnassignLicenses {
        org: org(),
        product: Product::Kre,
        emails: vec![email(1)],
    };
    assert_eq!(table.end_sessions_withdrawn_by(&unassign, None, None), 2);
    assert_eq!(table.counters(&org(), Product::Kre).active, 1);
    let remove = Command::RemoveMember {
        org: org(),
        email: email(1),
    };
    assert_eq!(table.end_sessions_withdrawn_by(&remove, None, None), 1);
    assert_eq!(table.counters(&org(), Product::Kse).active, 0);
}

#[tokio::test(start_paused = true)]
async fn expiry_pops_only_what_is_due_and_stale_entries_are_compacted() {
    let table = table();
    for n in 0..3000 {
        let granted = acquire(&table, n, "e", Product::Kre, 100_000).unwrap();
        if n % 3 != 0 {
            table
                .release(
                    &org(),
                    &email(n),
                    granted.lease.id,
                    granted.lease.generation,
                    Instant::now(),
                )
                .unwrap();
        }
    }
    let cell = table.existing_organization(&org()).unwrap();
    let index_len = cell.lock().expiry.len();
    assert!(
        index_len <= 2 * 1000 + 1024,
        "stale entries were not compacted: {index_len}"
    );
    advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    advance(Duration::from_millis(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 1000);
    assert_eq!(table.live_count(), 0);
    assert!(cell.lock().expiry.is_empty());
}

#[test]
fn lease_ids_round_trip_through_text() {
    let id = LeaseId::derive(&org(), &email(1), Product::Kre, "engine");
    assert_eq!(LeaseId::parse(&id.to_string()).unwrap(), id);
    assert!(LeaseId::parse("ls_123").is_err());
    assert!(LeaseId::parse("xx_00000000000000000000000000000000").is_err());
}

fn slot_of(table: &LeaseTable, id: LeaseId) -> Option<store::Slot> {
    let cell = table.existing_organization(&org()).unwrap();
    cell.lock().leases.find(id)
}

#[tokio::test(start_paused = true)]
async fn a_reused_slot_ignores_the_stale_entry_of_its_earlier_lease() {
    let table = table();
    let first = acquire(&table, 1, "e1", Product::Kre, 10).unwrap().lease;
    let first_slot = slot_of(&table, first.id).unwrap();
    table
        .release(
            &org(),
            &email(1),
            first.id,
            first.generation,
            Instant::now(),
        )
        .unwrap();
    advance(TTL / 2).await;
    // The next grant takes the freed slot; the first lease's heap entry is still there.
    let second = acquire(&table, 2, "e2", Product::Kre, 10).unwrap().lease;
    assert_eq!(slot_of(&table, second.id), Some(first_slot));
    let cell = table.existing_organization(&org()).unwrap();
    assert_eq!(cell.lock().expiry.len(), 2);
    // The first lease's deadline passes: its entry is stale, the slot's new tenant lives.
    advance(TTL / 2).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    assert_eq!(cell.lock().expiry.len(), 1);
    table
        .heartbeat(
            &org(),
            &email(2),
            second.id,
            second.generation,
            Instant::now(),
        )
        .unwrap();
    advance(TTL - Duration::from_millis(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    advance(Duration::from_millis(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 1);
    assert_eq!(table.live_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn deadlines_round_up_to_the_millisecond_so_a_lease_never_expires_early() {
    let ttl = Duration::from_micros(10_000_400);
    let table = LeaseTable::new(LeaseTiming::from_ttl(ttl), 1);
    let granted_at = Instant::now();
    let lease = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    assert_eq!(lease.deadline, granted_at + Duration::from_millis(10_001));
    // At the exact deadline the stored one (rounded up) has not passed yet.
    advance(ttl).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    advance(Duration::from_micros(599)).await;
    assert_eq!(table.expire_due(Instant::now()), 0);
    advance(Duration::from_micros(1)).await;
    assert_eq!(table.expire_due(Instant::now()), 1);

    // A heartbeat's deadline rounds up the same way.
    let lease = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    advance(Duration::from_micros(300)).await;
    let beat_at = Instant::now();
    let deadline = table
        .heartbeat(&org(), &email(1), lease.id, lease.generation, beat_at)
        .unwrap();
    assert!(deadline >= beat_at + ttl);
    assert!(deadline < beat_at + ttl + Duration::from_millis(1));
}

#[test]
fn the_millisecond_clock_rounds_deadlines_up_and_elapsed_time_down() {
    let clock = store::MsClock::new(Instant::now());
    let base = clock.instant(0);
    let before = base - Duration::from_secs(1);
    let ms = Duration::from_millis;
    let us = Duration::from_micros;
    assert_eq!(clock.deadline_ms(base), 0);
    assert_eq!(clock.deadline_ms(base + us(1)), 1);
    assert_eq!(clock.deadline_ms(base + ms(2)), 2);
    assert_eq!(clock.deadline_ms(base + us(2001)), 3);
    // Before the base counts as the base: later, never earlier.
    assert_eq!(clock.deadline_ms(before), 0);
    assert_eq!(clock.elapsed_ms(before), None);
    assert_eq!(clock.elapsed_ms(base + us(1999)), Some(1));
    assert_eq!(clock.elapsed_ms(base + ms(2)), Some(2));
    assert_eq!(
        clock.instant(clock.deadline_ms(base + us(1500))),
        base + ms(2)
    );
    assert_eq!(
        clock.deadline_ms(base + ms(expiry::DEADLINE_MS_MAX + 5)),
        expiry::DEADLINE_MS_MAX
    );
    // The clock begins well before the first instant it is given.
    let first_seen = Instant::now();
    let clock = store::MsClock::new(first_seen);
    assert!(clock.instant(0) + Duration::from_secs(3600) <= first_seen);
}

#[tokio::test(start_paused = true)]
async fn the_store_finds_every_live_lease_through_growth_and_slot_reuse() {
    let clock = store::MsClock::new(Instant::now());
    let mut store = store::LeaseStore::default();
    let stored = |n: usize, generation: u64| {
        let email = email(n);
        let lease = Lease {
            id: LeaseId::derive(&org(), &email, Product::Kre, &format!("engine-{n}")),
            generation,
            product: Product::Kre,
            email,
            engine_id: format!("engine-{n}").into(),
            hostname: "host".into(),
            label: "label".into(),
            deadline: clock.instant(n as u64),
            acquired_at_unix_ms: n as i64,
        };
        (store::StoredLease::new((&lease).into(), n as u64), lease)
    };
    let mut slots = Vec::new();
    for n in 0..5000 {
        slots.push(store.insert(stored(n, 1).0));
    }
    for n in (0..5000).step_by(2) {
        let removed = store.remove(slots[n]);
        assert_eq!(removed.view(clock).to_lease(), stored(n, 1).1);
    }
    assert_eq!(store.len(), 2500);
    for n in (0..5000).step_by(2) {
        assert_eq!(store.find(stored(n, 1).1.id), None);
        // Freed slots are reused before the slab grows.
        let slot = store.insert(stored(n, 2).0);
        assert!((slot.0 as usize) < 5000);
        slots[n] = slot;
    }
    for (n, slot) in slots.iter().enumerate() {
        let (_, lease) = stored(n, if n % 2 == 0 { 2 } else { 1 });
        assert_eq!(store.find(lease.id), Some(*slot));
        assert_eq!(store.get(*slot).unwrap().view(clock).to_lease(), lease);
    }
    assert_eq!(store.iter().count(), 5000);
}

#[tokio::test(start_paused = true)]
async fn leases_granted_before_the_organization_was_first_seen_expire_on_time() {
    let table = table();
    let earlier = Instant::now();
    let (org, email) = (org(), email(1));
    let request = |engine_id| AcquireRequest {
        org: &org,
        email: &email,
        product: Product::Kre,
        engine_id,
        hostname: "host",
        label: "",
        quota: 10,
    };
    // The organization is first seen an hour later than the next grant claims to be.
    let later = Now {
        instant: earlier + Duration::from_secs(3600),
        unix_ms: 0,
    };
    let (_granted, _durable) = table.acquire(request("late"), later).unwrap();
    let early = Now {
        instant: earlier,
        unix_ms: 0,
    };
    let (granted, _) = table.acquire(request("early"), early).unwrap();
    assert_eq!(granted.lease.deadline, earlier + TTL);
    assert_eq!(
        table.expire_due(earlier + TTL - Duration::from_millis(1)),
        0
    );
    assert_eq!(table.expire_due(earlier + TTL), 1);
    assert_eq!(table.live_count(), 1);
}

/// A journal that records what it is given and can refuse lease ends, standing in
/// for a log that has fallen far behind.
#[derive(Default)]
struct RecordingJournal {
    grants: std::sync::atomic::AtomicUsize,
    ends: parking_lot::Mutex<Vec<(LeaseId, u64)>>,
    refuse_ends: std::sync::atomic::AtomicBool,
}

impl Journal for RecordingJournal {
    fn admit(&self) -> Result<crate::domain::journal::LogPermit, DomainError> {
        crate::domain::journal::admit(0, 1)
    }

    fn append_command(
        &self,
        _permit: crate::domain::journal::LogPermit,
        _command: &crate::domain::Command,
    ) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }

    fn append_lease_granted(
        &self,
        _permit: crate::domain::journal::LogPermit,
        _org: &OrgId,
        _lease: &Lease,
    ) -> Durable {
        self.grants.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }

    fn append_lease_ended(&self, _org: &OrgId, id: LeaseId, generation: u64) -> bool {
        if self.refuse_ends.load(Ordering::Relaxed) {
            return false;
        }
        self.ends.lock().push((id, generation));
        true
    }

    fn close(&self) -> Result<(), DomainError> {
        Ok(())
    }
}

fn journaled_table() -> (LeaseTable, Arc<RecordingJournal>) {
    let journal = Arc::new(RecordingJournal::default());
    let table = recovering().serve(Serving {
        boot_epoch: 1,
        journal: journal.clone(),
        observer: Arc::new(UnobservedLeases),
    });
    (table, journal)
}

#[tokio::test(start_paused = true)]
async fn a_retried_acquire_journals_its_grant_again_and_never_shortens_the_lease() {
    let (table, journal) = journaled_table();
    let first = acquire(&table, 1, "e1", Product::Kre, 1).unwrap();
    let again = acquire(&table, 1, "e1", Product::Kre, 1).unwrap();
    assert!(again.resumed);
    // The retry waits on its own durable record: the first answer may not have been.
    assert_eq!(journal.grants.load(Ordering::Relaxed), 2);
    assert!(again.lease.deadline >= first.lease.deadline);
}

#[tokio::test(start_paused = true)]
async fn an_end_the_log_could_not_take_is_journaled_before_its_seat_is_granted_again() {
    let (table, journal) = journaled_table();
    let old = acquire(&table, 1, "e1", Product::Kre, 1).unwrap().lease;
    journal.refuse_ends.store(true, Ordering::Relaxed);
    table
        .release(&org(), &email(1), old.id, old.generation, Instant::now())
        .unwrap();
    // The seat is free in memory, but granting it now could over-admit after a crash.
    let refused = acquire(&table, 2, "e2", Product::Kre, 1).unwrap_err();
    assert!(
        matches!(refused, DomainError::Unavailable(_)),
        "{refused:?}"
    );
    journal.refuse_ends.store(false, Ordering::Relaxed);
    acquire(&table, 2, "e2", Product::Kre, 1).unwrap();
    assert_eq!(*journal.ends.lock(), vec![(old.id, old.generation)]);
}

#[tokio::test(start_paused = true)]
async fn recovery_keeps_the_newest_kse_session_of_a_user() {
    let newer = acquire(&table(), 1, "e2", Product::Kse, 5).unwrap().lease;
    let older = Lease {
        id: LeaseId::derive(&org(), &email(1), Product::Kse, "e1"),
        generation: newer.generation - 1,
        engine_id: "e1".into(),
        ..newer.clone()
    };
    // The newer lease in a snapshot, then log records after it: the older grant,
    // then its end.
    let recovering = recovering();
    recovering.restore(&org(), (&newer).into(), Instant::now());
    recovering.restore(&org(), (&older).into(), Instant::now());
    recovering.forget(&org(), older.id, older.generation);
    assert_eq!(recovering.live_count(), 1);
    let table = recovering.serve(Serving::volatile(2));
    let second = acquire(&table, 1, "e3", Product::Kse, 5).unwrap_err();
    assert!(
        matches!(second, DomainError::KseSessionInUse { .. }),
        "{second:?}"
    );
}

/// Walks `list_page` from the first slot; returns each page's lease ids.
fn pages_of(table: &LeaseTable, product: Option<Product>, size: usize) -> Vec<Vec<LeaseId>> {
    let mut pages = Vec::new();
    let mut from = Some(0);
    while let Some(slot) = from {
        let (leases, next) = table.list_page(&org(), product, slot, size);
        assert!(leases.len() <= size);
        pages.push(leases.iter().map(|l| l.id).collect());
        assert!(next.is_none_or(|next| next > slot), "a page must move on");
        from = next;
    }
    pages
}

#[tokio::test(start_paused = true)]
async fn pages_list_each_live_lease_once_and_examine_boundedly_many_slots() {
    let table = table();
    let scanned_max = limits::LIST_ENTRIES_SCANNED_PER_PAGE_MAX;
    let kre: Vec<Granted> = (0..scanned_max + 10)
        .map(|i| acquire(&table, 0, &format!("e{i}"), Product::Kre, u32::MAX).unwrap())
        .collect();
    let kse: Vec<LeaseId> = (1..=3)
        .map(|user| {
            acquire(&table, user, "kse", Product::Kse, 10)
                .unwrap()
                .lease
                .id
        })
        .collect();
    // Every other KRE lease ends: its slot stays vacant until a grant reuses it.
    for granted in kre.iter().step_by(2) {
        let lease = &granted.lease;
        table
            .release(
                &org(),
                &email(0),
                lease.id,
                lease.generation,
                Instant::now(),
            )
            .unwrap();
    }

    // The KSE leases sit past more KRE slots than one page examines: the first page
    // comes back empty, with where to go on, and the next one finds them all.
    let pages = pages_of(&table, Some(Product::Kse), 1000);
    assert_eq!(pages.len(), 2);
    assert!(pages[0].is_empty());
    assert_eq!(pages[1], kse);

    let listed: Vec<LeaseId> = pages_of(&table, Some(Product::Kre), 1000)
        .into_iter()
        .flatten()
        .collect();
    let live: Vec<LeaseId> = kre.iter().skip(1).step_by(2).map(|g| g.lease.id).collect();
    assert_eq!(listed, live, "each live lease once, in slot order");
    let both = pages_of(&table, None, 7).into_iter().flatten().count();
    assert_eq!(both, live.len() + kse.len());
}

/// Restores `count` KRE leases of user 0 (engines `r0`, `r1`, ...) as recovery does.
fn restore_many(table: &RecoveringLeases, count: usize) -> Vec<Lease> {
    let email = email(0);
    (0..count)
        .map(|n| {
            let engine_id = format!("r{n}");
            let lease = Lease {
                id: LeaseId::derive(&org(), &email, Product::Kre, &engine_id),
                generation: n as u64 + 1,
                product: Product::Kre,
                email: email.clone(),
                engine_id: engine_id.into(),
                hostname: "host".into(),
                label: "".into(),
                deadline: Instant::now(),
                acquired_at_unix_ms: 0,
            };
            table.restore(&org(), (&lease).into(), Instant::now());
            lease
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn compaction_after_recovery_keeps_only_the_live_leases_and_their_rules() {
    let table = recovering();
    let restored = restore_many(&table, 1000);
    // The log ended most of them: the slab, index and heap keep the replay's peak.
    for lease in restored.iter().filter(|l| l.generation % 10 != 0) {
        table.forget(&org(), lease.id, lease.generation);
    }
    let kse = Lease {
        id: LeaseId::derive(&org(), &email(7), Product::Kse, "kse"),
        generation: 5000,
        product: Product::Kse,
        email: email(7),
        engine_id: "kse".into(),
        hostname: "host".into(),
        label: "".into(),
        deadline: Instant::now(),
        acquired_at_unix_ms: 0,
    };
    table.restore(&org(), (&kse).into(), Instant::now());
    let live: Vec<LeaseId> = restored
        .iter()
        .filter(|l| l.generation % 10 == 0)
        .map(|l| l.id)
        .chain([kse.id])
        .collect();
    let cell = table.table.existing_organization(&org()).unwrap();
    assert!(cell.lock().expiry.len() > live.len());

    let table = table.serve(Serving::volatile(1));

    {
        let org = cell.lock();
        assert_eq!(
            org.leases.slots_from(0).count(),
            live.len(),
            "no vacant slot"
        );
        assert_eq!(org.expiry.len(), live.len(), "one heap entry per lease");
    }
    let mut listed: Vec<LeaseId> = pages_of(&table, None, 1000).into_iter().flatten().collect();
    let mut expected = live.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    // Every lease is still found by id, the KSE rule still holds, and new grants
    // take fresh slots.
    for id in &live {
        assert!(slot_of(&table, *id).is_some());
    }
    let second_kse = acquire(&table, 7, "other", Product::Kse, 10).unwrap_err();
    assert!(
        matches!(second_kse, DomainError::KseSessionInUse { .. }),
        "{second_kse:?}"
    );
    acquire(&table, 1, "fresh", Product::Kre, u32::MAX).unwrap();
    // Expiry still finds every lease: all of them, at one TTL from the restore.
    advance(TTL).await;
    assert_eq!(table.expire_due(Instant::now()), live.len() + 1);
    assert_eq!(table.live_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn visiting_live_leases_sees_each_once_across_lock_holds() {
    let recovering = recovering();
    let restored = restore_many(&recovering, 3 * LIVE_SLOTS_PER_LOCK + 5);
    for lease in restored.iter().step_by(3) {
        recovering.forget(&org(), lease.id, lease.generation);
    }
    let table = recovering.serve(Serving::volatile(1));
    let mut visited = Vec::new();
    table.visit_live(&mut |org_id: &OrgId, lease: LeaseRef<'_>| {
        assert_eq!(org_id, &org());
        visited.push(lease.id);
    });
    let live: Vec<LeaseId> = restored.iter().map(|l| l.id).collect::<Vec<_>>();
    let live: Vec<LeaseId> = live
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 3 != 0)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(visited, live, "in slot order, each once");
}
