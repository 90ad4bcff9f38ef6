//! One simulated runtime engine per task, and the unary workloads it can run (the
//! `admin` one as the operator rather than an engine). Every
//! loop checks the run's deadline before starting new work, and every RPC is bounded
//! bounded by the bench's RPC timeout (`stats::timed`), so an engine ends soon after the deadline; a lease still
//! held then is released (outside the measured window).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};
use tonic::{Code, Response, Status};

use crate::client::Authorized;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::session_service_client::SessionServiceClient;
use crate::proto::{
    AddMemberRequest, HeartbeatRequest, Lease, ReleaseRequest, RemoveMemberRequest, Role,
};

use super::args::Workload;
use super::bounds::{ERROR_BACKOFF_MS, HEARTBEAT_INTERVAL_MS_MIN};
use super::config::BenchConfig;
use super::pacer::Schedule;
use super::quota_check::Interval;
use super::rng::Rng;
use super::setup::kre_acquire_request;
use super::stats::{Answer, Method, Phases, Stats, timed};

/// What all engines of one run share.
pub(crate) struct Shared {
    pub stats: Arc<Stats>,
    /// Bounds outstanding RPCs across all engines (`--in-flight`).
    pub in_flight: Semaphore,
    pub phases: Phases,
    pub workload: Workload,
    pub hold_min: Duration,
    pub hold_max: Duration,
    pub think_max: Duration,
    pub backoff: Duration,
    /// Each engine keeps at most this many lease intervals for the quota check.
    pub intervals_per_engine_max: usize,
    /// The absolute start schedule when `--rate` is set.
    pub schedule: Option<Schedule>,
}

impl Shared {
    pub(crate) fn new(
        config: &BenchConfig,
        stats: Arc<Stats>,
        phases: Phases,
        intervals_per_engine_max: usize,
    ) -> Self {
        let schedule = config
            .rate
            .map(|rate| Schedule::new(rate, phases.start, phases.deadline));
        Self {
            stats,
            in_flight: Semaphore::new(config.in_flight as usize),
            phases,
            workload: config.workload,
            hold_min: config.hold_min,
            hold_max: config.hold_max,
            think_max: config.think_max,
            backoff: config.backoff,
            intervals_per_engine_max,
            schedule,
        }
    }

    /// Makes one RPC under the in-flight bound and records it. Paced, the call first
    /// waits for its slot of the schedule, and its latency counts from when the slot
    /// was due (the wait for an in-flight permit included), so a stalled server shows
    /// in the percentiles instead of silently slowing the generator down.
    async fn call<T>(
        &self,
        engine_index: u32,
        method: Method,
        rpc: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        let intended = match &self.schedule {
            Some(schedule) => schedule.wait_turn().await,
            None => None,
        };
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Status::cancelled("the in-flight semaphore was closed"))?;
        let (result, (sent, answered)) = timed(rpc).await;
        let answer = self.classify(method, &result);
        if let Some(intended) = intended {
            self.stats
                .record_start_lag(sent - intended, answered, &self.phases);
        }
        let span = (intended.unwrap_or(sent), answered);
        self.stats
            .record(engine_index, method, answer, span, &self.phases);
        result.map(Response::into_inner)
    }

    fn classify<T>(&self, method: Method, result: &Result<T, Status>) -> Answer {
        match result {
            Ok(_) => Answer::Ok,
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && method == Method::Acquire
                    && self.workload == Workload::Contention =>
            {
                Answer::Denied
            }
            Err(status) => Answer::Failed(status.code()),
        }
    }
}

/// What an engine hands back when it stops.
#[derive(Default)]
pub(crate) struct EngineOutcome {
    /// Client-side lease intervals (`contention` only).
    pub intervals: Vec<Interval>,
    /// Intervals not kept because the engine's share was full.
    pub intervals_dropped: u64,
}

/// One simulated runtime engine.
pub(crate) struct Engine {
    pub index: u32,
    /// A client on the engine's connection that sends its member's key.
    pub client: SessionServiceClient<Authorized>,
    pub engine_id: String,
    pub hostname: String,
    pub rng: Rng,
    pub shared: Arc<Shared>,
    /// The `admin` workload: the operator's client on the engine's connection, and
    /// the organization and email of the member the engine adds and removes.
    pub admin: Option<AdminMember>,
}

/// What an engine of the `admin` workload changes, and through which client.
pub(crate) struct AdminMember {
    pub client: AdminServiceClient<Authorized>,
    pub org_id: String,
    pub email: String,
}

/// A lease the engine holds.
struct HeldLease {
    lease_id: String,
    generation: u64,
    heartbeat_interval: Duration,
    /// When the acquire response was received.
    granted_at: Instant,
}

/// How holding a lease ended.
enum HoldEnd {
    /// Still held; the engine should release it.
    Kept { last_alive_sent: Option<Instant> },
    /// The server said the lease is gone; nothing to release.
    Lost { last_alive_sent: Option<Instant> },
}

/// Runs the engine's workload until the deadline.
pub(crate) async fn run(mut engine: Engine) -> EngineOutcome {
    match engine.shared.workload {
        Workload::AcquireRelease => engine.acquire_release().await,
        Workload::Heartbeat => engine.heartbeat_fast().await,
        Workload::Realistic => engine.realistic().await,
        Workload::Contention => engine.contend().await,
        // Refused by `BenchConfig::validate` without streams (`stream.rs` runs it).
        Workload::Hosts => EngineOutcome::default(),
        Workload::Admin => engine.add_and_remove_members().await,
    }
}

impl Engine {
    /// Adds the engine's own member, then removes it, back to back: two admin
    /// commands a cycle, each answered once durable. A failed call (the member may or
    /// may not be there) is followed by a pause and the next cycle, whose add or
    /// remove then fails once (ALREADY_EXISTS, NOT_FOUND) and is counted as failed.
    async fn add_and_remove_members(&mut self) -> EngineOutcome {
        let Some(AdminMember {
            client,
            org_id,
            email,
        }) = self.admin.take()
        else {
            // `runner::spawn_engines` gives every admin engine its member.
            return EngineOutcome::default();
        };
        while self.running() {
            let add = AddMemberRequest {
                org_id: org_id.clone(),
                email: email.clone(),
                role: Role::Member as i32,
            };
            let mut adding = client.clone();
            let added = self
                .shared
                .call(self.index, Method::AddMember, adding.add_member(add))
                .await;
            let remove = RemoveMemberRequest {
                org_id: org_id.clone(),
                email: email.clone(),
            };
            let mut removing = client.clone();
            let removed = self
                .shared
                .call(
                    self.index,
                    Method::RemoveMember,
                    removing.remove_member(remove),
                )
                .await;
            if added.is_err() || removed.is_err() {
                self.pause(Duration::from_millis(ERROR_BACKOFF_MS)).await;
            }
        }
        EngineOutcome::default()
    }

    async fn acquire_release(&mut self) -> EngineOutcome {
        while self.running() {
            let released = match self.acquire().await {
                Ok(lease) => self.release(&lease).await,
                Err(status) => Err(status),
            };
            if released.is_err() {
                self.pause(Duration::from_millis(ERROR_BACKOFF_MS)).await;
            }
        }
        EngineOutcome::default()
    }

    async fn heartbeat_fast(&mut self) -> EngineOutcome {
        let mut held: Option<HeldLease> = None;
        while self.running() {
            let result = match &held {
                None => self.acquire().await.map(|lease| held = Some(lease)),
                Some(lease) => self.heartbeat(lease).await,
            };
            if let Err(status) = result {
                if lease_is_gone(&status) {
                    held = None;
                }
                self.pause(Duration::from_millis(ERROR_BACKOFF_MS)).await;
            }
        }
        if let Some(lease) = held {
            let _ = self.release(&lease).await;
        }
        EngineOutcome::default()
    }

    async fn realistic(&mut self) -> EngineOutcome {
        // Staggered start, so thousands of engines do not acquire in one burst.
        let first_think = self.random_think();
        self.pause(first_think).await;
        while self.running() {
            let Ok(lease) = self.acquire().await else {
                self.pause(Duration::from_millis(ERROR_BACKOFF_MS)).await;
                continue;
            };
            let hold_until = Instant::now() + self.random_hold();
            if let HoldEnd::Kept { .. } = self.hold(&lease, hold_until).await {
                let _ = self.release(&lease).await;
            }
            let think = self.random_think();
            self.pause(think).await;
        }
        EngineOutcome::default()
    }

    async fn contend(&mut self) -> EngineOutcome {
        let mut outcome = EngineOutcome::default();
        while self.running() {
            let lease = match self.acquire().await {
                Ok(lease) => lease,
                Err(status) => {
                    let retry_in = self.retry_delay(&status);
                    self.pause(retry_in).await;
                    continue;
                }
            };
            let hold_until = Instant::now() + self.random_hold();
            let last_proof = match self.hold(&lease, hold_until).await {
                HoldEnd::Kept { last_alive_sent } => {
                    let release_sent = Instant::now();
                    self.release(&lease)
                        .await
                        .map_or(last_alive_sent, |()| Some(release_sent))
                }
                HoldEnd::Lost { last_alive_sent } => last_alive_sent,
            };
            let interval = self.shared.phases.interval(lease.granted_at, last_proof);
            self.keep_interval(&mut outcome, interval);
        }
        outcome
    }

    /// Holds `lease` until `until` (or the deadline), heartbeating at its interval.
    async fn hold(&mut self, lease: &HeldLease, until: Instant) -> HoldEnd {
        let until = until.min(self.shared.phases.deadline);
        let mut last_alive_sent = None;
        let mut next_beat = lease.granted_at + lease.heartbeat_interval;
        while next_beat < until {
            sleep_until(next_beat).await;
            let sent = Instant::now();
            match self.heartbeat(lease).await {
                Ok(()) => last_alive_sent = Some(sent),
                Err(status) if lease_is_gone(&status) => return HoldEnd::Lost { last_alive_sent },
                Err(_) => {}
            }
            next_beat += lease.heartbeat_interval;
        }
        sleep_until(until).await;
        HoldEnd::Kept { last_alive_sent }
    }

    async fn acquire(&mut self) -> Result<HeldLease, Status> {
        let message = kre_acquire_request(self.engine_id.clone(), self.hostname.clone());
        let rpc = self.client.acquire(message);
        let response = self.shared.call(self.index, Method::Acquire, rpc).await?;
        let granted_at = Instant::now();
        let Some(lease) = response.lease else {
            self.shared.stats.count_error(Code::Internal);
            return Err(Status::internal("Acquire answered without a lease"));
        };
        Ok(HeldLease::new(lease, granted_at))
    }

    async fn heartbeat(&mut self, lease: &HeldLease) -> Result<(), Status> {
        let message = HeartbeatRequest {
            lease_id: lease.lease_id.clone(),
            generation: lease.generation,
        };
        let rpc = self.client.heartbeat(message);
        self.shared
            .call(self.index, Method::Heartbeat, rpc)
            .await
            .map(drop)
    }

    async fn release(&mut self, lease: &HeldLease) -> Result<(), Status> {
        let message = ReleaseRequest {
            lease_id: lease.lease_id.clone(),
            generation: lease.generation,
        };
        let rpc = self.client.release(message);
        self.shared
            .call(self.index, Method::Release, rpc)
            .await
            .map(drop)
    }

    fn keep_interval(&self, outcome: &mut EngineOutcome, interval: Option<Interval>) {
        let Some(interval) = interval else { return };
        if outcome.intervals.len() < self.shared.intervals_per_engine_max {
            outcome.intervals.push(interval);
        } else {
            outcome.intervals_dropped += 1;
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.shared.phases.deadline
    }

    /// Sleeps for `duration`, but not past the deadline.
    async fn pause(&self, duration: Duration) {
        sleep_until((Instant::now() + duration).min(self.shared.phases.deadline)).await;
    }

    fn retry_delay(&mut self, status: &Status) -> Duration {
        if status.code() == Code::ResourceExhausted {
            let base = self.shared.backoff;
            self.rng.duration_between(base, base * 2)
        } else {
            Duration::from_millis(ERROR_BACKOFF_MS)
        }
    }

    fn random_hold(&mut self) -> Duration {
        self.rng
            .duration_between(self.shared.hold_min, self.shared.hold_max)
    }

    fn random_think(&mut self) -> Duration {
        self.rng
            .duration_between(Duration::ZERO, self.shared.think_max)
    }
}

impl HeldLease {
    fn new(lease: Lease, granted_at: Instant) -> Self {
        let interval_ms = u64::from(lease.heartbeat_interval_ms).max(HEARTBEAT_INTERVAL_MS_MIN);
        Self {
            lease_id: lease.lease_id,
            generation: lease.generation,
            heartbeat_interval: Duration::from_millis(interval_ms),
            granted_at,
        }
    }
}

/// NOT_FOUND and FAILED_PRECONDITION on a heartbeat mean the lease ended: stop using it.
pub(crate) fn lease_is_gone(status: &Status) -> bool {
    matches!(status.code(), Code::NotFound | Code::FailedPrecondition)
}
