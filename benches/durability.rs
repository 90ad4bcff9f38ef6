//! The durability benchmark program: durable assignment commands per second at 1 and
//! at 64 in flight, beside the raw append+fdatasync rate of the same disk measured by
//! the same program; and recovery time for a log of 1,000,000 records and for a
//! snapshot of 100,000 assignments.
//!
//! Run: `cargo bench --bench durability` (prints a table; set
//! `SEATBROKER_BENCH_SECONDS` to change the measuring time per figure, default 3).
//! The data lives under `target/bench-durability`, on the same disk as the build.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seatbroker::auth::OperatorKey;
use seatbroker::broker::{Broker, UnobservedAdmin};
use seatbroker::clock::SystemClock;
use seatbroker::domain::LeaseId;
use seatbroker::domain::{Command, Email, OrgId, Principal, Product, Quota, Role};
use seatbroker::leases::{LeaseRef, LeaseTiming, RecoveringLeases, Serving, UnobservedLeases};
use seatbroker::loadgen::provision;
use seatbroker::storage::codec;
use seatbroker::storage::durable;
use seatbroker::wal::{self, RealFs, Wal, WalOptions};

fn bench_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-durability")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    dir
}

fn leases() -> RecoveringLeases {
    RecoveringLeases::new(
        LeaseTiming::from_ttl(Duration::from_secs(30)),
        seatbroker::limits::LEASES_PER_ORG_MAX,
    )
}

/// Recovers the data directory's log in `dir`, unobserved.
async fn open(dir: &Path) -> durable::Opened {
    durable::open(
        dir,
        Arc::new(RealFs),
        WalOptions::default(),
        leases(),
        Arc::new(UnobservedLeases),
    )
    .await
    .unwrap()
}

fn email(n: usize) -> Email {
    Email::parse(&format!("member{n}@bench.example")).unwrap()
}

fn org() -> OrgId {
    OrgId::parse("bench").unwrap()
}

async fn open_broker(dir: &Path) -> Arc<Broker> {
    let opened = open(dir).await;
    let operator = OperatorKey::from_text("bench-operator-key-0123456789abcdef").unwrap();
    Arc::new(Broker::new(
        opened.admin,
        opened.leases,
        operator,
        opened.journal,
        Arc::new(SystemClock),
        Arc::new(UnobservedAdmin),
    ))
}

async fn setup(broker: &Broker, members: usize) {
    let commands = provision::organization_commands(
        &org(),
        "Bench",
        email(usize::MAX),
        Quota::default(),
        (0..members).map(email),
    );
    for command in commands {
        broker.execute(&Principal::Operator, command).await.unwrap();
    }
}

/// Durable assign/unassign commands per second with `in_flight` concurrent callers.
async fn durable_commands_per_second(in_flight: usize, seconds: u64) -> f64 {
    let dir = bench_dir(&format!("commands-{in_flight}"));
    let broker = open_broker(&dir).await;
    setup(&broker, in_flight).await;
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..in_flight)
        .map(|n| {
            let (broker, done) = (Arc::clone(&broker), Arc::clone(&done));
            tokio::spawn(async move {
                let mut assign = true;
                while Instant::now() < deadline {
                    let emails = vec![email(n)];
                    let command = if assign {
                        Command::AssignLicenses {
                            org: org(),
                            product: Product::Kre,
                            emails,
                        }
                    } else {
                        Command::UnassignLicenses {
                            org: org(),
                            product: Product::Kre,
                            emails,
                        }
                    };
                    broker.execute(&Principal::Operator, command).await.unwrap();
                    assign = !assign;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Writes a log of `records` assign/unassign commands straight into the WAL.
fn write_log(dir: &Path, records: usize) {
    let (wal, _) = Wal::open(dir, Arc::new(RealFs), WalOptions::default()).unwrap();
    let mut setup = vec![codec::encode_command(&Command::CreateOrganization {
        org: org(),
        display_name: "Bench".into(),
        owner: email(usize::MAX),
        quota: Quota::default(),
    })];
    let members = 1000;
    for n in 0..members {
        setup.push(codec::encode_command(&Command::AddMember {
            org: org(),
            email: email(n),
            role: Role::Member,
        }));
    }
    let mut last = None;
    for record in setup {
        last = Some(wal.submit(record).unwrap());
    }
    for i in 0..records.saturating_sub(members + 1) {
        let emails = vec![email(i % members)];
        let command = if (i / members) % 2 == 0 {
            Command::AssignLicenses {
                org: org(),
                product: Product::Kre,
                emails,
            }
        } else {
            Command::UnassignLicenses {
                org: org(),
                product: Product::Kre,
                emails,
            }
        };
        let ticket = loop {
            match wal.submit(codec::encode_command(&command)) {
                Ok(ticket) => break ticket,
                Err(wal::WalError::Overloaded { .. }) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(error) => panic!("{error}"),
            }
        };
        last = Some(ticket);
    }
    last.unwrap().wait_blocking().unwrap();
    wal.close().unwrap();
}

async fn recovery_of_log(records: usize) -> Duration {
    let dir = bench_dir("recovery-log");
    std::thread::scope(|s| s.spawn(|| write_log(&dir, records)).join().unwrap());
    let started = Instant::now();
    let opened = open(&dir).await;
    let elapsed = started.elapsed();
    assert!(opened.records_replayed >= records as u64);
    elapsed
}

/// Writes a snapshot holding `assignments` KSE seats and `live_leases` KRE sessions of
/// those members; returns its size in bytes.
fn write_snapshot(dir: &Path, assignments: usize, live_leases: usize) -> usize {
    let mut admin = seatbroker::domain::AdminState::default();
    admin
        .apply(&Command::CreateOrganization {
            org: org(),
            display_name: "Bench".into(),
            owner: email(usize::MAX),
            quota: Quota {
                kse_seats: assignments as u32,
                kre_sessions: 0,
                expires_at_unix_ms: None,
            },
        })
        .unwrap();
    for chunk in (0..assignments).collect::<Vec<_>>().chunks(1000) {
        for n in chunk {
            admin
                .apply(&Command::AddMember {
                    org: org(),
                    email: email(*n),
                    role: Role::Member,
                })
                .unwrap();
        }
        let emails = chunk.iter().map(|n| email(*n)).collect();
        admin
            .apply(&Command::AssignLicenses {
                org: org(),
                product: Product::Kse,
                emails,
            })
            .unwrap();
    }
    let (wal, _) = Wal::open(dir, Arc::new(RealFs), WalOptions::default()).unwrap();
    let lsn = wal
        .submit(codec::encode_boot(1))
        .unwrap()
        .wait_blocking()
        .unwrap();
    let table = leases();
    let now = tokio::time::Instant::now();
    let emails: Vec<Email> = (0..assignments.max(1)).map(email).collect();
    for n in 0..live_leases {
        let engine_id = format!("engine-{n}");
        let lease = LeaseRef {
            id: LeaseId(n as u128 + 1),
            generation: n as u64 + 1,
            product: Product::Kre,
            email: &emails[n % emails.len()],
            engine_id: &engine_id,
            hostname: "host.bench.example",
            label: "bench",
            deadline: now,
            acquired_at_unix_ms: 1_700_000_000_000,
        };
        table.restore(&org(), lease, now);
    }
    let table = table.serve(Serving::volatile(1));
    let (bytes, leases) = durable::write_snapshot(&wal, lsn, &admin, &table, 1).unwrap();
    assert_eq!(leases, live_leases as u64);
    wal.close().unwrap();
    bytes
}

async fn recovery_of_snapshot(assignments: usize, live_leases: usize) -> (Duration, usize) {
    let dir = bench_dir("recovery-snapshot");
    let bytes = std::thread::scope(|s| {
        s.spawn(|| write_snapshot(&dir, assignments, live_leases))
            .join()
            .unwrap()
    });
    let started = Instant::now();
    let opened = open(&dir).await;
    let elapsed = started.elapsed();
    assert_eq!(
        opened
            .admin
            .organization(&org())
            .unwrap()
            .kse_assigned
            .len(),
        assignments
    );
    assert_eq!(opened.snapshot_leases, live_leases as u64);
    assert_eq!(opened.leases.live_count(), live_leases);
    (elapsed, bytes)
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: stay quick there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = std::env::var("SEATBROKER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (seconds, log_records, snapshot_assignments, snapshot_leases) = if quick {
        (1, 20_000, 10_000, 10_000)
    } else {
        (seconds, 1_000_000, 100_000, 1_000_000)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw_dir = bench_dir("raw-fsync");
    let raw = wal::bench_raw_fsync_rate(&raw_dir, if quick { 50 } else { 1000 }).unwrap();
    let (one, sixty_four, log, (snapshot, snapshot_bytes), (lease_snapshot, lease_snapshot_bytes)) =
        runtime.block_on(async {
            let one = durable_commands_per_second(1, seconds).await;
            let sixty_four = durable_commands_per_second(64, seconds).await;
            (
                one,
                sixty_four,
                recovery_of_log(log_records).await,
                recovery_of_snapshot(snapshot_assignments, 0).await,
                recovery_of_snapshot(1000, snapshot_leases).await,
            )
        });
    println!(
        "durability benchmark ({} s per rate){}",
        seconds,
        if quick { " [quick mode]" } else { "" }
    );
    println!("  raw append+fdatasync (4 KiB)          {raw:>10.0} /s");
    println!(
        "  durable assign commands, 1 in flight  {one:>10.0} /s  ({:.2}x raw)",
        one / raw
    );
    println!(
        "  durable assign commands, 64 in flight {sixty_four:>10.0} /s  ({:.2}x raw, {:.1}x 1 in flight)",
        sixty_four / raw,
        sixty_four / one
    );
    println!(
        "  recovery of a {log_records}-record log     {:>10.0} ms",
        log.as_secs_f64() * 1000.0
    );
    println!(
        "  recovery of a {snapshot_assignments}-assignment snapshot ({snapshot_bytes} bytes) {:>6.0} ms",
        snapshot.as_secs_f64() * 1000.0
    );
    println!(
        "  recovery of a snapshot of {snapshot_leases} live leases ({lease_snapshot_bytes} bytes) {:>6.0} ms",
        lease_snapshot.as_secs_f64() * 1000.0
    );
}
