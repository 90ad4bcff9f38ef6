//! The sessions of the restart bench: the engines' keys and connections (`Engines`),
//! the compact lease each engine holds (`HeldLease`, 24 bytes, so a million cost 24 MB
//! and no task each), building the churn and the live sessions from a fixed pool of
//! workers, and the server's own count of seats per organization (`count_seats`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::client::{Authorized, BearerKey};
use crate::proto::session_service_client::SessionServiceClient;
use crate::proto::{GetUsageRequest, Lease, Product, ReleaseRequest};

use super::super::bounds::{
    ERROR_BACKOFF_MS, RESTART_ATTEMPTS_MAX, RESTART_BUILD_CHUNK, RESTART_PHASE_MS_MAX,
};
use super::super::channels::{self, bearer};
use super::super::error::LoadgenError;
use super::super::setup::{Layout, kre_acquire_request};
use super::super::stats::{Answer, Method, Phases, Stats, timed};

/// A lease as the bench keeps it for its engine: the id's 128 bits and the
/// generation. The engine's index (its place in the vector) gives its organization,
/// member, key and engine id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeldLease {
    /// The 32 hex digits of `ls_<32 hex digits>`, big-endian.
    id: [u8; 16],
    pub generation: u64,
}

const _: () = assert!(std::mem::size_of::<HeldLease>() == 24);

/// The prefix of the broker's lease ids.
const LEASE_ID_PREFIX: &str = "ls_";

impl HeldLease {
    /// The compact form of a granted lease; an id of another form is an error, since
    /// the bench could not send it back.
    pub(crate) fn of(lease: &Lease) -> Result<Self, LoadgenError> {
        let digits = lease
            .lease_id
            .strip_prefix(LEASE_ID_PREFIX)
            .filter(|digits| digits.len() == 32 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                LoadgenError::Daemon(format!(
                    "lease id {:?} is not ls_<32 hex digits>; the bench keeps ids in 16 bytes",
                    lease.lease_id
                ))
            })?;
        let id = u128::from_str_radix(digits, 16)
            .map_err(|e| LoadgenError::Daemon(format!("lease id {digits}: {e}")))?;
        Ok(Self {
            id: id.to_be_bytes(),
            generation: lease.generation,
        })
    }

    /// The id as the broker spells it.
    pub(crate) fn lease_id(&self) -> String {
        format!("{LEASE_ID_PREFIX}{:032x}", u128::from_be_bytes(self.id))
    }
}

/// What the engines' calls need: who they are, their keys, their connections.
pub(crate) struct Engines {
    pub layout: Layout,
    /// One key per member; engine `g` uses member `g % members`'s.
    member_keys: Vec<BearerKey>,
    /// The connections; engine `g` uses `g % channels`.
    channels: Vec<Channel>,
    /// The heartbeat interval the daemon gave with the grants (a third of the TTL).
    heartbeat_interval_ms: AtomicU32,
}

impl Engines {
    pub(crate) fn new(layout: Layout, member_keys: Vec<BearerKey>, channels: Vec<Channel>) -> Self {
        debug_assert_eq!(member_keys.len(), layout.members as usize);
        Self {
            layout,
            member_keys,
            channels,
            heartbeat_interval_ms: AtomicU32::new(0),
        }
    }

    /// The same engines on new connections (to the restarted daemon).
    pub(crate) fn reconnected(self, channels: Vec<Channel>) -> Self {
        Self { channels, ..self }
    }

    /// The heartbeat interval of the leases granted, as the daemon said.
    pub(crate) fn lease_heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.load(Ordering::Relaxed).into())
    }

    /// A client for engine `engine`: its connection, its member's key.
    pub(crate) fn client(&self, engine: u32) -> SessionServiceClient<Authorized> {
        let channel = &self.channels[engine as usize % self.channels.len()];
        channels::session(
            channel,
            &self.member_keys[self.layout.member_of(engine) as usize],
        )
    }

    /// Acquire for `engine_id` with the key of engine `engine`'s member, once.
    pub(crate) async fn acquire_as(
        &self,
        engine: u32,
        engine_id: String,
        recorder: &Recorder,
    ) -> Result<(Lease, bool), Status> {
        let message = kre_acquire_request(engine_id, Layout::engine_hostname(engine));
        let mut client = self.client(engine);
        let rpc = client.acquire(message);
        let response = recorder.call(engine, Method::Acquire, rpc).await?;
        let lease = response
            .lease
            .ok_or_else(|| Status::internal("Acquire answered without a lease"))?;
        self.heartbeat_interval_ms
            .fetch_max(lease.heartbeat_interval_ms, Ordering::Relaxed);
        Ok((lease, response.resumed))
    }

    async fn release(&self, engine: u32, lease: &Lease, recorder: &Recorder) -> Result<(), Status> {
        let message = ReleaseRequest {
            lease_id: lease.lease_id.clone(),
            generation: lease.generation,
        };
        let mut client = self.client(engine);
        let rpc = client.release(message);
        recorder.call(engine, Method::Release, rpc).await.map(drop)
    }
}

/// Latency histograms and error counts of one phase, with its time line.
pub(crate) struct Recorder {
    pub stats: Arc<Stats>,
    pub phases: Phases,
}

impl Recorder {
    /// A phase starting now and measured until `bound` from now (its calls must end
    /// by then to count).
    pub(crate) fn starting_now(bound: Duration) -> Result<Self, LoadgenError> {
        Ok(Self {
            stats: Arc::new(Stats::new()?),
            phases: Phases::starting_now(Duration::ZERO, bound),
        })
    }

    /// Makes one call and records its latency or its error code.
    pub(crate) async fn call<T>(
        &self,
        engine: u32,
        method: Method,
        rpc: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        let (result, span) = timed(rpc).await;
        self.record(engine, method, &result, span);
        result.map(Response::into_inner)
    }

    /// Records a call made elsewhere: its latency, or its error code.
    pub(crate) fn record<T>(
        &self,
        engine: u32,
        method: Method,
        result: &Result<T, Status>,
        span: (Instant, Instant),
    ) {
        let answer = match result {
            Ok(_) => Answer::Ok,
            Err(status) => Answer::Failed(status.code()),
        };
        self.stats
            .record(engine, method, answer, span, &self.phases);
    }
}

/// Codes that say nothing about the lease: the call may be made again.
pub(crate) fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
    )
}

/// Makes `call` again after `ERROR_BACKOFF_MS` while `retry` says so of its error, at
/// most `RESTART_ATTEMPTS_MAX` times in all.
pub(crate) async fn with_retries<T, Fut>(
    retry: fn(Code) -> bool,
    mut call: impl FnMut() -> Fut,
) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let mut attempts = 1;
    loop {
        match call().await {
            Err(status) if retry(status.code()) && attempts < RESTART_ATTEMPTS_MAX => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await;
            }
            answered => return answered,
        }
    }
}

/// `count` acquire+release pairs, each with an engine id of its own, spread over the
/// organizations like the engines: history in the log that leaves no live lease.
pub(crate) async fn churn(
    engines: &Arc<Engines>,
    count: u32,
    workers: u32,
    recorder: &Arc<Recorder>,
) -> Result<(), LoadgenError> {
    let job = {
        let (engines, recorder) = (Arc::clone(engines), Arc::clone(recorder));
        move |pair: u32| {
            let (engines, recorder) = (Arc::clone(&engines), Arc::clone(&recorder));
            async move {
                let engine_id = format!("bench-{}-churn-{pair}", engines.layout.run_id);
                // Seats are shared with the other workers' pairs: a full quota is
                // waited out like a transient error.
                let retry = |code| is_transient(code) || code == Code::ResourceExhausted;
                let (lease, _) = with_retries(retry, || {
                    engines.acquire_as(pair, engine_id.clone(), &recorder)
                })
                .await
                .map_err(|status| failed("Acquire (churn)", pair, &status))?;
                with_retries(is_transient, || engines.release(pair, &lease, &recorder))
                    .await
                    .map_err(|status| failed("Release (churn)", pair, &status))?;
                Ok(None::<()>)
            }
        }
    };
    on_every_index(count, workers, recorder.phases.deadline, job)
        .await
        .map(drop)
}

/// Acquires one live session for every engine and returns the leases by engine.
pub(crate) async fn fill(
    engines: &Arc<Engines>,
    workers: u32,
    recorder: &Arc<Recorder>,
) -> Result<Vec<HeldLease>, LoadgenError> {
    let job = {
        let (engines, recorder) = (Arc::clone(engines), Arc::clone(recorder));
        move |engine: u32| {
            let (engines, recorder) = (Arc::clone(&engines), Arc::clone(&recorder));
            async move {
                let engine_id = engines.layout.engine_id(engine);
                let (lease, _) = with_retries(is_transient, || {
                    engines.acquire_as(engine, engine_id.clone(), &recorder)
                })
                .await
                .map_err(|status| failed("Acquire", engine, &status))?;
                HeldLease::of(&lease).map(Some)
            }
        }
    };
    let count = engines.layout.engines;
    let granted = on_every_index(count, workers, recorder.phases.deadline, job).await?;
    let mut leases = vec![HeldLease::default(); count as usize];
    for (engine, lease) in &granted {
        leases[*engine as usize] = *lease;
    }
    // Every index was handed to exactly one worker, and each returned its lease.
    if granted.len() != count as usize {
        return Err(LoadgenError::Internal(format!(
            "{} of {count} sessions came back from the workers",
            granted.len()
        )));
    }
    Ok(leases)
}

fn failed(call: &str, engine: u32, status: &Status) -> LoadgenError {
    LoadgenError::Daemon(format!(
        "{call} for engine {engine} failed: {:?}: {}",
        status.code(),
        status.message()
    ))
}

/// Runs `job` on every index of `0..count` from `workers` tasks, each taking
/// `RESTART_BUILD_CHUNK` indices at a time, and returns what the jobs returned with
/// their index. The first error stops every worker; so does `deadline`.
pub(crate) async fn on_every_index<T, F, Fut>(
    count: u32,
    workers: u32,
    deadline: Instant,
    job: F,
) -> Result<Vec<(u32, T)>, LoadgenError>
where
    T: Send + 'static,
    F: Fn(u32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Option<T>, LoadgenError>> + Send + 'static,
{
    let next = Arc::new(AtomicU32::new(0));
    let mut running = JoinSet::new();
    for _ in 0..workers.min(count) {
        let (next, job) = (Arc::clone(&next), job.clone());
        running.spawn(async move {
            let mut outputs = Vec::new();
            loop {
                let first = next.fetch_add(RESTART_BUILD_CHUNK, Ordering::Relaxed);
                if first >= count {
                    return Ok::<_, LoadgenError>(outputs);
                }
                for index in first..first.saturating_add(RESTART_BUILD_CHUNK).min(count) {
                    if let Some(output) = job(index).await? {
                        outputs.push((index, output));
                    }
                }
            }
        });
    }
    let joined = tokio::time::timeout_at(deadline, async {
        let mut outputs = Vec::new();
        while let Some(worker) = running.join_next().await {
            let worker = worker.map_err(|e| LoadgenError::Internal(format!("worker: {e}")))?;
            outputs.extend(worker?);
        }
        Ok(outputs)
    })
    .await;
    // Whatever ended the wait (an error, the deadline), no worker outlives it.
    running.abort_all();
    joined.map_err(|_| {
        LoadgenError::Daemon(format!(
            "a phase took longer than {RESTART_PHASE_MS_MAX} ms"
        ))
    })?
}

/// The daemon's own count of live KRE sessions, against each organization's quota.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeatCount {
    /// Live KRE sessions over all organizations (`GetUsage`'s `active_sessions`).
    pub active: u64,
    /// Organizations holding fewer sessions than their quota: seats lost.
    pub orgs_short: u32,
    /// Organizations holding more sessions than their quota: over-admission.
    pub orgs_over: u32,
}

/// Asks `GetUsage` of every organization, with the operator key.
pub(crate) async fn count_seats(
    channel: Channel,
    operator_key: &str,
    layout: &Layout,
    quota_per_org: u32,
) -> Result<SeatCount, LoadgenError> {
    let mut admin = channels::admin(&channel, &bearer(operator_key)?);
    let mut count = SeatCount::default();
    for org in 0..layout.orgs {
        let request = GetUsageRequest {
            org_id: layout.org_id(org),
            window_seconds: 0,
        };
        let usage = admin
            .get_usage(request)
            .await
            .map_err(|status| LoadgenError::setup("GetUsage", status))?
            .into_inner();
        let active = usage
            .products
            .iter()
            .find(|product| product.product == Product::Kre as i32)
            .map_or(0, |product| product.active_sessions);
        count.active += u64::from(active);
        count.orgs_short += u32::from(active < quota_per_org);
        count.orgs_over += u32::from(active > quota_per_org);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_id_survives_its_compact_form() {
        let lease = Lease {
            lease_id: "ls_00ff0123456789abcdef0123456789ab".to_owned(),
            generation: 7,
            ..Lease::default()
        };
        let held = HeldLease::of(&lease).unwrap();
        assert_eq!(held.lease_id(), lease.lease_id);
        assert_eq!(held.generation, 7);
    }

    #[test]
    fn lease_ids_of_another_form_are_refused() {
        for id in [
            "",
            "ls_12",
            "lse_00ff0123456789abcdef0123456789ab",
            "ls_+0ff0123456789abcdef0123456789ab",
        ] {
            let lease = Lease {
                lease_id: id.to_owned(),
                ..Lease::default()
            };
            assert!(HeldLease::of(&lease).is_err(), "{id}");
        }
    }
}
