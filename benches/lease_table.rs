//! Criterion benchmarks of the broker's in-memory core: the lease table (acquire +
//! release, heartbeat, two threads on one organization, expiry among a million live
//! leases), API key verification, and one admin command applied to the state.
//!
//! Run: `cargo bench --bench lease_table`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use seatbroker::auth::{self, OperatorKey};
use seatbroker::domain::{AdminState, Command, Email, OrgId, Product, Quota, Role};
use seatbroker::leases::{AcquireRequest, LeaseTable, LeaseTiming, Now};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(30);

fn table() -> LeaseTable {
    LeaseTable::new(LeaseTiming::from_ttl(TTL), 1)
}

fn now_at(instant: Instant) -> Now {
    Now {
        instant,
        unix_ms: 0,
    }
}

fn acquire(
    table: &LeaseTable,
    org: &OrgId,
    email: &Email,
    engine: &str,
    at: Instant,
) -> (seatbroker::domain::LeaseId, u64) {
    let request = AcquireRequest {
        org,
        email,
        product: Product::Kre,
        engine_id: engine,
        hostname: "host",
        label: "",
        quota: u32::MAX,
    };
    let (granted, _durable) = table.acquire(request, now_at(at)).expect("granted");
    (granted.lease.id, granted.lease.generation)
}

fn lease_table(c: &mut Criterion) {
    let org = OrgId::parse("bench").unwrap();
    let email = Email::parse("engine@bench.example").unwrap();

    c.bench_function("acquire_release/uncontended", |b| {
        let table = table();
        b.iter(|| {
            let (id, generation) = acquire(&table, &org, &email, "engine-1", Instant::now());
            table
                .release(&org, &email, id, generation, Instant::now())
                .unwrap();
        })
    });

    c.bench_function("heartbeat/uncontended", |b| {
        let table = table();
        let (id, generation) = acquire(&table, &org, &email, "engine-1", Instant::now());
        b.iter(|| {
            black_box(
                table
                    .heartbeat(&org, &email, id, generation, Instant::now())
                    .unwrap(),
            )
        })
    });

    c.bench_function("acquire_release/two_threads_one_org", |b| {
        let table = Arc::new(table());
        b.iter_custom(|iterations| {
            let started = std::time::Instant::now();
            std::thread::scope(|scope| {
                for thread in 0..2 {
                    let table = Arc::clone(&table);
                    let (org, email) = (org.clone(), email.clone());
                    scope.spawn(move || {
                        let engine = format!("engine-{thread}");
                        for _ in 0..iterations / 2 {
                            let (id, generation) =
                                acquire(&table, &org, &email, &engine, Instant::now());
                            table
                                .release(&org, &email, id, generation, Instant::now())
                                .unwrap();
                        }
                    });
                }
            });
            started.elapsed()
        })
    });

    // Expiry cost per expired lease, with no other leases and among 1,000,000 live
    // ones: the same figure means the sweep does not scan live leases.
    let expiring = 1000;
    // Under `cargo test --benches` (no `--bench` flag) keep the live table small.
    let many = if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    };
    for live in [0usize, many] {
        let table = table();
        let base = Instant::now();
        let far = base + Duration::from_secs(3600);
        for n in 0..live {
            acquire(&table, &org, &email, &format!("live-{n}"), far);
        }
        c.bench_function(&format!("expire_1000_due/live_{live}"), |b| {
            b.iter_batched(
                || {
                    for n in 0..expiring {
                        acquire(&table, &org, &email, &format!("due-{n}"), base);
                    }
                },
                |()| assert_eq!(table.expire_due(base + TTL), expiring),
                BatchSize::PerIteration,
            )
        });
    }
}

fn authentication(c: &mut Criterion) {
    let mut state = AdminState::default();
    let org = OrgId::parse("bench").unwrap();
    let email = Email::parse("engine@bench.example").unwrap();
    state
        .apply(&Command::CreateOrganization {
            org: org.clone(),
            display_name: "Bench".into(),
            owner: email.clone(),
            quota: Quota::default(),
        })
        .unwrap();
    let key = auth::generate_member_key();
    state
        .apply(&Command::CreateApiKey {
            org,
            key_id: key.id.clone(),
            email,
            label: String::new(),
            secret_sha256: key.sha256,
            created_at_unix_ms: 0,
            client_cert_subject: None,
        })
        .unwrap();
    let operator = OperatorKey::from_text(&auth::generate_operator_key()).unwrap();
    c.bench_function("authenticate/member_key", |b| {
        b.iter(|| {
            black_box(
                auth::authenticate(&state, &operator, black_box(&key.full_text), None).unwrap(),
            )
        })
    });
}

fn admin_command(c: &mut Criterion) {
    let org = OrgId::parse("bench").unwrap();
    let mut state = AdminState::default();
    state
        .apply(&Command::CreateOrganization {
            org: org.clone(),
            display_name: "Bench".into(),
            owner: Email::parse("owner@bench.example").unwrap(),
            quota: Quota {
                kse_seats: 10,
                kre_sessions: 10,
                expires_at_unix_ms: None,
            },
        })
        .unwrap();
    for n in 0..1000 {
        state
            .apply(&Command::AddMember {
                org: org.clone(),
                email: Email::parse(&format!("m{n}@bench.example")).unwrap(),
                role: Role::Member,
            })
            .unwrap();
    }
    let email = Email::parse("m7@bench.example").unwrap();
    let assign = Command::AssignLicenses {
        org: org.clone(),
        product: Product::Kse,
        emails: vec![email.clone()],
    };
    let unassign = Command::UnassignLicenses {
        org,
        product: Product::Kse,
        emails: vec![email],
    };
    c.bench_function("admin/assign_then_unassign_one_seat", |b| {
        b.iter(|| {
            state.apply(&assign).unwrap();
            state.apply(&unassign).unwrap();
        })
    });
}

criterion_group!(benches, lease_table, authentication, admin_command);
criterion_main!(benches);
