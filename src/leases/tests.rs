//! Unit tests of the lease table, on tokio's paused clock: time moves only when a
//! test advances it, so expiry is exact and nothing sleeps.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

const TTL: Duration = Duration::from_secs(10);

fn table() -> LeaseTable {
    LeaseTable::new(LeaseTiming::from_ttl(TTL), 1)
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
        .release(&org(), &email(1), first.lease.id, first.lease.generation)
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
    let stale = table.release(&org(), &email(1), old.id, old.generation);
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
    let other = table.release(&org(), &email(2), lease.id, lease.generation);
    assert!(matches!(other, Err(DomainError::LeaseNotFound(_))));
}

#[tokio::test(start_paused = true)]
async fn ending_a_users_sessions_frees_their_seats() {
    let table = table();
    acquire(&table, 1, "e1", Product::Kre, 10).unwrap();
    acquire(&table, 1, "e2", Product::Kre, 10).unwrap();
    acquire(&table, 1, "e3", Product::Kse, 10).unwrap();
    acquire(&table, 2, "e4", Product::Kre, 10).unwrap();
    assert_eq!(
        table.end_sessions_of(&org(), &[(email(1), Some(Product::Kre))]),
        2
    );
    assert_eq!(table.counters(&org(), Product::Kre).active, 1);
    assert_eq!(table.end_sessions_of(&org(), &[(email(1), None)]), 1);
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
