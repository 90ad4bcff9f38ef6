//! Resident memory of one million live leases in the broker's lease table, as the
//! daemon holds them (engine ids of UUID length, hostnames, 1,000 organizations).
//!
//! Run: `cargo bench --bench memory`. Prints the resident set before and after, and
//! the bytes per lease.

use std::time::Duration;

use seatbroker::domain::{Email, OrgId, Product};
use seatbroker::leases::{AcquireRequest, LeaseTable, LeaseTiming, Now};
use tokio::time::Instant;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let leases_total: usize = if quick { 20_000 } else { 1_000_000 };
    let organizations = 1000;
    let table = LeaseTable::new(LeaseTiming::from_ttl(Duration::from_secs(30)), 1);
    let orgs: Vec<OrgId> = (0..organizations)
        .map(|n| OrgId::parse(&format!("org-{n}")).unwrap())
        .collect();
    // One user per 10 engines, as CI fleets share service accounts.
    let users: Vec<Email> = (0..leases_total / 10)
        .map(|n| Email::parse(&format!("runner{n}@example.com")).unwrap())
        .collect();
    let before = resident_bytes();
    let now = Now {
        instant: Instant::now(),
        unix_ms: 1_764_000_000_000,
    };
    for n in 0..leases_total {
        let engine_id = format!("{n:08x}-7d3c-4f1e-9a2b-{:012x}", n * 7919);
        let request = AcquireRequest {
            org: &orgs[n % organizations],
            email: &users[n / 10],
            product: Product::Kre,
            engine_id: &engine_id,
            hostname: "ci-runner-042",
            label: "nightly",
            quota: u32::MAX,
        };
        let _ = table.acquire(request, now).expect("granted");
    }
    let after = resident_bytes();
    assert_eq!(table.live_count(), leases_total);
    let per_lease = (after - before) as f64 / leases_total as f64;
    println!(
        "memory benchmark{}",
        if quick { " [quick mode]" } else { "" }
    );
    println!("  live leases            {leases_total:>12}");
    println!(
        "  resident before        {:>12.1} MiB",
        before as f64 / 1048576.0
    );
    println!(
        "  resident after         {:>12.1} MiB",
        after as f64 / 1048576.0
    );
    println!("  per lease              {per_lease:>12.0} bytes");
    println!(
        "  1,000,000 leases       {:>12.1} MiB (bound: 256 MiB)",
        per_lease * 1_000_000.0 / 1048576.0
    );
}
