//! `--terminate-rate` (the `hosts` workload over streams): an admin terminating held
//! sessions at a steady pace while the hosts keep their leases alive, and how long
//! each termination takes to reach the engine: from just before its
//! `AdminService.TerminateSession` call is sent to the `ended` (TERMINATED) event's
//! arrival on the stream of the host holding the lease. Both ends are in this
//! process, so one clock times them.
//!
//! The hosts tell [`Terminations`] which leases they hold (`held`, `ended`); the
//! terminator ([`run`]) takes one held lease per tick, so a lease is never terminated
//! twice, and the host acquires its slot again after the event. A termination the
//! broker acknowledged whose event never arrived is *missing*, and a run with a
//! missing one fails (`LoadgenError::TerminationsMissing`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::Authorized;
use crate::proto::TerminateSessionRequest;
use crate::proto::admin_service_client::AdminServiceClient;

use super::bounds::{RPC_TIMEOUT_MS, TERMINATION_PICK_TRIES_MAX, TERMINATIONS_IN_FLIGHT_MAX};
use super::error::LoadgenError;
use super::rng::Rng;
use super::setup::Layout;
use super::stats::{Latency, Phases, latency_of, new_histogram};

/// What a run with `--terminate-rate` reports.
#[derive(Serialize, Clone, Debug)]
pub struct TerminationReport {
    /// The pace asked for, terminations per second.
    pub rate_per_sec: u32,
    /// `TerminateSession` calls the broker acknowledged.
    pub acknowledged: u64,
    /// Calls the broker refused or that failed (a lease that ended meanwhile).
    pub refused: u64,
    /// Ticks that found no held lease to terminate.
    pub skipped: u64,
    /// Acknowledged terminations whose `ended` (TERMINATED) event reached the host's
    /// stream.
    pub delivered: u64,
    /// Acknowledged terminations whose event never arrived: a failed run.
    pub missing: u64,
    /// From just before the admin call to the event's arrival, microseconds.
    pub latency_us: Latency,
}

/// One termination sent and not settled yet.
struct Sent {
    at: Instant,
    /// The broker acknowledged the call (a refused one is forgotten at once).
    acknowledged: bool,
    /// When the `ended` (TERMINATED) event arrived.
    arrived: Option<Instant>,
}

/// A lease a host holds, as the terminator names it.
#[derive(Clone)]
struct HeldLease {
    host: u32,
    lease_id: String,
}

/// Shared by the hosts (which report what they hold and the ends they hear) and the
/// terminator. `std::sync::Mutex`es: held to change one entry, never across an `.await`.
pub(crate) struct Terminations {
    rate_per_sec: u32,
    /// Held leases by engine index; `None` when not held, or taken for a termination.
    held: Mutex<Vec<Option<HeldLease>>>,
    /// Terminations not settled yet, by lease id.
    sent: Mutex<HashMap<String, Sent>>,
    /// Woken when an event settles a termination (the final wait awaits it).
    settled: Notify,
    latency: Mutex<Histogram<u64>>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    acknowledged: u64,
    refused: u64,
    skipped: u64,
    delivered: u64,
}

impl Terminations {
    pub(crate) fn new(rate_per_sec: u32, engines: u32) -> Result<Self, LoadgenError> {
        Ok(Self {
            rate_per_sec,
            held: Mutex::new(vec![None; engines as usize]),
            sent: Mutex::new(HashMap::new()),
            settled: Notify::new(),
            latency: Mutex::new(new_histogram()?),
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Host `host` holds `lease_id` for engine `engine`.
    pub(crate) fn held(&self, engine: u32, host: u32, lease_id: &str) {
        let mut held = lock(&self.held);
        if let Some(entry) = held.get_mut(engine as usize) {
            *entry = Some(HeldLease {
                host,
                lease_id: lease_id.to_owned(),
            });
        }
    }

    /// Engine `engine`'s lease ended or its stream broke: nothing to terminate there.
    pub(crate) fn not_held(&self, engine: u32) {
        if let Some(entry) = lock(&self.held).get_mut(engine as usize) {
            *entry = None;
        }
    }

    /// A lease's `ended` event with reason TERMINATED arrived at `arrived`.
    pub(crate) fn terminated(&self, lease_id: &str, arrived: Instant) {
        let mut sent = lock(&self.sent);
        let Some(entry) = sent.get_mut(lease_id) else {
            return;
        };
        entry.arrived.get_or_insert(arrived);
        if entry.acknowledged {
            let entry = sent.remove(lease_id).expect("present");
            drop(sent);
            self.deliver(&entry);
        }
    }

    /// Takes a held lease, starting at a random engine, and marks it sent at `now`.
    fn take(&self, rng: &mut Rng) -> Option<HeldLease> {
        let mut held = lock(&self.held);
        let engines = held.len();
        if engines == 0 {
            return None;
        }
        let start = (rng.next_u64() % engines as u64) as usize;
        let mut sent = lock(&self.sent);
        for step in 0..engines.min(TERMINATION_PICK_TRIES_MAX) {
            let index = (start + step) % engines;
            let Some(lease) = &held[index] else { continue };
            if sent.contains_key(&lease.lease_id) {
                continue;
            }
            let lease = held[index].take().expect("checked");
            sent.insert(
                lease.lease_id.clone(),
                Sent {
                    at: Instant::now(),
                    acknowledged: false,
                    arrived: None,
                },
            );
            return Some(lease);
        }
        None
    }

    /// The call for `lease_id` was answered.
    fn answered(&self, lease_id: &str, acknowledged: bool) {
        {
            let mut counts = lock(&self.counts);
            if acknowledged {
                counts.acknowledged += 1;
            } else {
                counts.refused += 1;
            }
        }
        let mut sent = lock(&self.sent);
        if !acknowledged {
            sent.remove(lease_id);
            return;
        }
        let Some(entry) = sent.get_mut(lease_id) else {
            return;
        };
        entry.acknowledged = true;
        if entry.arrived.is_some() {
            let entry = sent.remove(lease_id).expect("present");
            drop(sent);
            self.deliver(&entry);
        }
    }

    fn deliver(&self, entry: &Sent) {
        let arrived = entry.arrived.expect("delivered entries have arrived");
        let micros = u64::try_from(arrived.saturating_duration_since(entry.at).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        lock(&self.latency).saturating_record(micros);
        lock(&self.counts).delivered += 1;
        self.settled.notify_waiters();
    }

    /// Acknowledged terminations still waiting for their event.
    fn undelivered(&self) -> u64 {
        lock(&self.sent)
            .values()
            .filter(|entry| entry.acknowledged)
            .count() as u64
    }

    fn report(&self) -> TerminationReport {
        let missing = self.undelivered();
        let counts = lock(&self.counts);
        TerminationReport {
            rate_per_sec: self.rate_per_sec,
            acknowledged: counts.acknowledged,
            refused: counts.refused,
            skipped: counts.skipped,
            delivered: counts.delivered,
            missing,
            latency_us: latency_of(&lock(&self.latency)),
        }
    }
}

/// Terminates one held lease per tick through the measured window, then waits (at
/// most `RPC_TIMEOUT_MS`) for the events of the acknowledged ones, and reports.
pub(crate) async fn run(
    terminations: std::sync::Arc<Terminations>,
    admin: AdminServiceClient<Authorized>,
    layout: Layout,
    phases: Phases,
    mut rng: Rng,
) -> TerminationReport {
    let period = Duration::from_secs_f64(1.0 / f64::from(terminations.rate_per_sec.max(1)));
    let mut ticks = tokio::time::interval_at(phases.measure_from, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut calls = JoinSet::new();
    loop {
        let tick = ticks.tick().await;
        if tick >= phases.deadline {
            break;
        }
        while calls.len() >= TERMINATIONS_IN_FLIGHT_MAX {
            calls.join_next().await;
        }
        let Some(lease) = terminations.take(&mut rng) else {
            lock(&terminations.counts).skipped += 1;
            continue;
        };
        let request = TerminateSessionRequest {
            org_id: layout.org_id(layout.org_of(lease.host)),
            lease_id: lease.lease_id.clone(),
        };
        let mut admin = admin.clone();
        let terminations = terminations.clone();
        calls.spawn(async move {
            let call = admin.terminate_session(request);
            let answer = tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), call).await;
            terminations.answered(&lease.lease_id, matches!(answer, Ok(Ok(_))));
        });
    }
    while calls.join_next().await.is_some() {}
    let wait_until = Instant::now() + Duration::from_millis(RPC_TIMEOUT_MS);
    while terminations.undelivered() > 0 {
        let settled = terminations.settled.notified();
        // Checked again after registering, so an event in between is not missed.
        if terminations.undelivered() == 0
            || tokio::time::timeout_at(wait_until, settled).await.is_err()
        {
            break;
        }
    }
    terminations.report()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
