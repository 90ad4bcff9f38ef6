//! The admin state at scale: how long a snapshot cut holds the admin write lock, the
//! longest stall it causes to concurrent authentications, and the cost of the hot-path
//! reads (`api_key` during authentication, `role_of`, `assigned`).
//!
//! A small timing program rather than a criterion bench: the figure that matters is
//! the longest stall, not a mean. Run:
//! `cargo bench --bench admin_state` (1,000,000 members and keys in 10 organizations;
//! `cargo test --benches` runs it with 10,000).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use seatbroker::domain::{
    AdminState, ApiKeyId, ApiKeyRecord, Email, OrgId, Organization, Product, Quota, Role,
};

const ORGANIZATIONS: usize = 10;
const READER_THREADS: usize = 2;
const CUTS: usize = 5;

fn email(org: usize, n: usize) -> Email {
    Email::parse(&format!("member{n}@org{org}.example")).unwrap()
}

fn org_id(org: usize) -> OrgId {
    OrgId::parse(&format!("org{org}")).unwrap()
}

fn key_id(org: usize, n: usize) -> ApiKeyId {
    ApiKeyId(format!("k{org}x{n:07}").into())
}

/// `members` members (each with one API key and a KRE license) spread over
/// `ORGANIZATIONS` organizations. Built as a snapshot is loaded (the collections'
/// types are inferred, so this compiles whatever maps `Organization` uses).
fn build(members: usize) -> AdminState {
    let per_org = members / ORGANIZATIONS;
    let organizations = (0..ORGANIZATIONS)
        .map(|org| {
            let owner = Email::parse(&format!("owner@org{org}.example")).unwrap();
            let emails = || (0..per_org).map(move |n| email(org, n));
            Organization {
                id: org_id(org),
                display_name: format!("Organization {org}"),
                quota: Quota {
                    kse_seats: 10,
                    kre_sessions: 10,
                    expires_at_unix_ms: None,
                },
                members: emails()
                    .map(|e| (e, Role::Member))
                    .chain([(owner, Role::Owner)])
                    .collect(),
                kse_assigned: Default::default(),
                kre_assigned: emails().collect(),
                api_keys: (0..per_org)
                    .map(|n| {
                        let record = ApiKeyRecord {
                            id: key_id(org, n),
                            email: email(org, n),
                            label: "laptop".into(),
                            secret_sha256: [7; 32],
                            created_at_unix_ms: 0,
                            client_cert_subject: None,
                        };
                        (record.id.clone(), record)
                    })
                    .collect(),
            }
        })
        .collect();
    AdminState::from_organizations(organizations)
}

/// Resident set size of this process, from /proc (0 where there is none).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One authentication's reads: the key record, the member's role, the license.
fn hot_path(state: &AdminState, org: usize, n: usize) -> bool {
    let key = key_id(org, n);
    let (organization, record) = state.api_key(key.as_str()).expect("key");
    organization.role_of(&record.email).is_some()
        && organization.assigned(Product::Kre).contains(&record.email)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let members = if full { 1_000_000 } else { 10_000 };
    let per_org = members / ORGANIZATIONS;
    let started = Instant::now();
    let resident_before = resident_bytes();
    let state = build(members);
    let resident = resident_bytes().saturating_sub(resident_before);
    println!(
        "built {members} members and keys in {ORGANIZATIONS} organizations in {:.1?}: {} resident bytes per member (with one key and a KRE license)",
        started.elapsed(),
        resident / members
    );

    // Hot-path reads, single thread, keys in a scattered order.
    let lookups = members.min(200_000);
    let order: Vec<(usize, usize)> = (0..lookups)
        .map(|i| (i % ORGANIZATIONS, (i * 7919) % per_org))
        .collect();
    let started = Instant::now();
    for (org, n) in &order {
        black_box(hot_path(&state, *org, *n));
    }
    let per_lookup = started.elapsed() / lookups as u32;
    // The key id is formatted inside `hot_path`; subtract that part.
    let started = Instant::now();
    for (org, n) in &order {
        black_box(key_id(*org, *n));
    }
    let formatting = started.elapsed() / lookups as u32;
    println!(
        "hot path (api_key + role_of + assigned): {:?} per call ({:?} of it formatting the id)",
        per_lookup, formatting
    );

    // Cuts under the write lock while readers authenticate in a loop.
    let shared = Arc::new(RwLock::new(state));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READER_THREADS)
        .map(|thread| {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut longest = Duration::ZERO;
                let mut calls = 0usize;
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let (org, n) = (calls % ORGANIZATIONS, (calls * 31 + thread) % per_org);
                    black_box(hot_path(&shared.read(), org, n));
                    let now = Instant::now();
                    longest = longest.max(now - last);
                    last = now;
                    calls += 1;
                }
                (longest, calls)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut held = Vec::new();
    let mut copies = Vec::new();
    for _ in 0..CUTS {
        let started = Instant::now();
        let copy = {
            let guard = shared.write();
            guard.clone()
        };
        held.push(started.elapsed());
        copies.push(copy);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dropping a deep copy is work too, but outside the lock (as the daemon does).
    drop(copies);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let mut longest_stall = Duration::ZERO;
    let mut calls = 0;
    for reader in readers {
        let (longest, n) = reader.join().unwrap();
        longest_stall = longest_stall.max(longest);
        calls += n;
    }
    held.sort();
    println!(
        "cut (clone under the write lock), {CUTS} times: median {:?}, longest {:?}",
        held[CUTS / 2],
        held[CUTS - 1]
    );
    println!(
        "longest gap between two authentications of {READER_THREADS} reader threads: {longest_stall:?} ({calls} calls)"
    );
}
