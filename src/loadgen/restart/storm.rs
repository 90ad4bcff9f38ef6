//! After the restart: the reconnect storm, the retried acquires and the quota probes.
//!
//! The storm: engines `0..storm_engines` heartbeat their recovered lease all at once
//! (as many at a time as there are workers), each retried on a transient error until
//! answered, then again every period, each round spread evenly over the period, until
//! the storm's end. A fixed pool of workers owns the engines (worker `w` owns engines
//! `w`, `w + workers`, ...): no task per engine. A heartbeat answered NOT_FOUND or
//! FAILED_PRECONDITION means the engine's seat is gone.
//!
//! Then a sample of the storm engines send Acquire again with their engine id (an
//! engine that lost its answer does): each must get its own lease back, `resumed`, with
//! its generation. Last, one new engine per organization asks for a seat past the
//! quota, which recovered leases fill exactly: each must be refused RESOURCE_EXHAUSTED.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tonic::{Code, Status};

use crate::proto::HeartbeatRequest;

use super::super::bounds::{
    DRAIN_MS_MAX, ERROR_BACKOFF_MS, LOST_ENGINES_LISTED_MAX, RESTART_PHASE_MS_MAX,
};
use super::super::config::Progress;
use super::super::cpu::{self, CpuPerOp, CpuUsed};
use super::super::engine::lease_is_gone;
use super::super::error::LoadgenError;
use super::super::stats::{Latency, Method, report_progress, timed};
use super::sessions::{Engines, HeldLease, Recorder, is_transient, on_every_index, with_retries};
use crate::client::code_name;

/// How the storm runs.
pub(crate) struct StormSettings {
    /// Engines `0..engines` take part.
    pub engines: u32,
    /// From the first heartbeat to the end.
    pub duration: Duration,
    /// Each engine's period after the first wave.
    pub interval: Duration,
    /// Heartbeats in flight at most.
    pub workers: u32,
    /// Whether the generator's progress line is written every second.
    pub progress: Progress,
    /// The daemon's process, for its CPU per heartbeat.
    pub daemon_pid: u32,
}

/// What the storm measured.
#[derive(Serialize, Clone, Debug)]
pub struct StormReport {
    /// Engines that took part.
    pub engines: u32,
    /// Heartbeats in flight at most.
    pub in_flight: u32,
    /// The storm's length, seconds.
    pub duration_s: f64,
    /// Each engine's period after the first wave, milliseconds.
    pub interval_ms: u64,
    /// Engines whose lease was renewed at least once.
    pub renewed: u32,
    /// From the storm's start until the last engine's first renewal, milliseconds;
    /// absent when some engine was never renewed.
    pub all_renewed_ms: Option<f64>,
    /// Engines told their lease is gone (NOT_FOUND, FAILED_PRECONDITION): seats lost.
    pub lost: u32,
    /// The first of them, by engine index.
    pub lost_engines: Vec<u32>,
    /// Heartbeats answered OK, first wave included.
    pub heartbeats_ok: u64,
    /// Latency of the first wave's answered heartbeats, microseconds.
    pub first_wave_latency_us: Latency,
    /// Latency of every answered heartbeat of the storm, microseconds.
    pub latency_us: Latency,
    /// CPU per answered heartbeat over the storm, of the daemon and of this bench
    /// (both on the same cores): which side the storm's time went to.
    pub cpu_per_heartbeat: CpuPerOp,
    /// Failed heartbeats by gRPC code (retried ones included).
    pub errors: BTreeMap<&'static str, u64>,
    /// Workers still running after the storm's end and the drain, aborted.
    pub workers_unfinished: u64,
}

/// What every storm worker shares.
struct Storm {
    engines: Arc<Engines>,
    leases: Arc<Vec<HeldLease>>,
    settings: StormSettings,
    /// Every heartbeat; its deadline is the storm's end.
    all: Recorder,
    /// The first wave's heartbeats only.
    first_wave: Recorder,
}

/// One worker's share of the outcome.
#[derive(Default)]
struct WorkerOutcome {
    renewed: u32,
    last_first_renewal: Option<Instant>,
    lost: u32,
    lost_engines: Vec<u32>,
    heartbeats_ok: u64,
}

/// How an engine's first renewal ended.
enum FirstRenewal {
    Renewed,
    Lost,
    /// The storm ended first.
    Unanswered,
}

/// Runs the storm against the restarted daemon and reports it.
pub(crate) async fn storm(
    engines: Arc<Engines>,
    leases: Arc<Vec<HeldLease>>,
    settings: StormSettings,
) -> Result<StormReport, LoadgenError> {
    let storm = Arc::new(Storm {
        all: Recorder::starting_now(settings.duration)?,
        first_wave: Recorder::starting_now(settings.duration)?,
        engines,
        leases,
        settings,
    });
    let started = storm.all.phases.start;
    let deadline = storm.all.phases.deadline;
    let progress = (storm.settings.progress == Progress::Stderr).then(|| {
        let stats = Arc::clone(&storm.all.stats);
        tokio::spawn(report_progress(
            stats,
            storm.all.phases,
            "restart storm".to_owned(),
        ))
    });
    let cpu = cpu::measure(Some(storm.settings.daemon_pid), started, deadline);
    let mut workers = JoinSet::new();
    for worker in 0..storm.settings.workers.min(storm.settings.engines) {
        workers.spawn(run_worker(Arc::clone(&storm), worker));
    }
    let mut total = WorkerOutcome::default();
    let drained = tokio::time::timeout_at(deadline + Duration::from_millis(DRAIN_MS_MAX), async {
        while let Some(joined) = workers.join_next().await {
            let outcome =
                joined.map_err(|e| LoadgenError::Internal(format!("storm worker: {e}")))?;
            total.add(outcome);
        }
        Ok::<(), LoadgenError>(())
    })
    .await;
    let workers_unfinished = workers.len() as u64;
    workers.abort_all();
    if let Some(progress) = progress {
        progress.abort();
    }
    if let Ok(result) = drained {
        result?;
    }
    let cpu_used = match tokio::time::timeout(cpu::SAMPLER_WAIT_MAX, cpu).await {
        Ok(Ok(used)) => used,
        _ => CpuUsed::default(),
    };
    let settings = &storm.settings;
    let all = storm.all.stats.snapshot()?;
    let first_wave = storm.first_wave.stats.snapshot()?;
    Ok(StormReport {
        engines: settings.engines,
        in_flight: settings.workers.min(settings.engines),
        duration_s: settings.duration.as_secs_f64(),
        interval_ms: settings.interval.as_millis() as u64,
        renewed: total.renewed,
        all_renewed_ms: total
            .last_first_renewal
            .filter(|_| total.renewed == settings.engines)
            .map(|last| last.duration_since(started).as_secs_f64() * 1e3),
        lost: total.lost,
        lost_engines: total.lost_engines,
        heartbeats_ok: total.heartbeats_ok,
        first_wave_latency_us: first_wave.overall,
        cpu_per_heartbeat: cpu_used.per_op(all.overall.count),
        latency_us: all.overall,
        errors: all.errors,
        workers_unfinished,
    })
}

impl WorkerOutcome {
    fn add(&mut self, other: WorkerOutcome) {
        self.renewed += other.renewed;
        self.last_first_renewal = self.last_first_renewal.max(other.last_first_renewal);
        self.lost += other.lost;
        let room = LOST_ENGINES_LISTED_MAX.saturating_sub(self.lost_engines.len());
        self.lost_engines
            .extend(other.lost_engines.into_iter().take(room));
        self.heartbeats_ok += other.heartbeats_ok;
    }

    fn lose(&mut self, engine: u32) {
        self.lost += 1;
        if self.lost_engines.len() < LOST_ENGINES_LISTED_MAX {
            self.lost_engines.push(engine);
        }
    }
}

/// The first wave over the worker's engines, then rounds until the storm's end.
async fn run_worker(storm: Arc<Storm>, worker: u32) -> WorkerOutcome {
    let stride = storm.settings.workers.min(storm.settings.engines) as usize;
    let own: Vec<u32> = (worker..storm.settings.engines).step_by(stride).collect();
    let mut gone = vec![false; own.len()];
    let mut outcome = WorkerOutcome::default();
    if own.is_empty() {
        return outcome;
    }
    for (slot, &engine) in own.iter().enumerate() {
        match storm.renew_first(engine).await {
            FirstRenewal::Renewed => {
                outcome.renewed += 1;
                outcome.heartbeats_ok += 1;
                outcome.last_first_renewal = Some(Instant::now());
            }
            FirstRenewal::Lost => {
                gone[slot] = true;
                outcome.lose(engine);
            }
            FirstRenewal::Unanswered => {}
        }
    }
    let (start, deadline) = (storm.all.phases.start, storm.all.phases.deadline);
    let interval = storm.settings.interval;
    for round in 1.. {
        let round_start = start + interval * round;
        for (slot, &engine) in own.iter().enumerate() {
            // Each engine keeps its place in the period, so the load is even.
            let at = round_start + interval.mul_f64(slot as f64 / own.len() as f64);
            if at >= deadline {
                return outcome;
            }
            if gone[slot] {
                continue;
            }
            sleep_until(at).await;
            match storm.heartbeat(engine, Wave::Later).await {
                Ok(()) => outcome.heartbeats_ok += 1,
                Err(status) if lease_is_gone(&status) => {
                    gone[slot] = true;
                    outcome.lose(engine);
                }
                Err(_) => {}
            }
        }
    }
    outcome
}

/// Which histogram a heartbeat also goes into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wave {
    First,
    Later,
}

impl Storm {
    /// Heartbeats until answered other than transiently, or until the storm's end.
    async fn renew_first(&self, engine: u32) -> FirstRenewal {
        while Instant::now() < self.all.phases.deadline {
            match self.heartbeat(engine, Wave::First).await {
                Ok(()) => return FirstRenewal::Renewed,
                Err(status) if lease_is_gone(&status) => return FirstRenewal::Lost,
                Err(_) => tokio::time::sleep(Duration::from_millis(ERROR_BACKOFF_MS)).await,
            }
        }
        FirstRenewal::Unanswered
    }

    async fn heartbeat(&self, engine: u32, wave: Wave) -> Result<(), Status> {
        let lease = &self.leases[engine as usize];
        let message = HeartbeatRequest {
            lease_id: lease.lease_id(),
            generation: lease.generation,
        };
        let mut client = self.engines.client(engine);
        let rpc = client.heartbeat(message);
        let (result, span) = timed(rpc).await;
        self.all.record(engine, Method::Heartbeat, &result, span);
        if wave == Wave::First {
            self.first_wave
                .record(engine, Method::Heartbeat, &result, span);
        }
        result.map(drop)
    }
}

/// What the retried acquires found.
#[derive(Serialize, Clone, Debug, Default)]
pub struct RetriedAcquires {
    /// Storm engines that sent Acquire again.
    pub sampled: u32,
    /// Answered with their own lease, `resumed`, same generation.
    pub same_lease: u32,
    /// Answered with another lease or generation, or not `resumed`: the old lease was
    /// gone.
    pub other_lease: u32,
    /// Refused, by gRPC code (RESOURCE_EXHAUSTED: the engine's seat was lost).
    pub refused: BTreeMap<&'static str, u64>,
    /// Latency of the answered acquires, microseconds.
    pub latency_us: Latency,
}

/// How one retried acquire ended.
enum Retried {
    Same,
    Other,
    Refused(Code),
}

/// `sample` storm engines, spread evenly over `0..storm_engines`, acquire again.
pub(crate) async fn retry_acquires(
    engines: &Arc<Engines>,
    leases: &Arc<Vec<HeldLease>>,
    sample: u32,
    storm_engines: u32,
    workers: u32,
) -> Result<RetriedAcquires, LoadgenError> {
    let recorder = Arc::new(Recorder::starting_now(Duration::from_millis(
        RESTART_PHASE_MS_MAX,
    ))?);
    let job = {
        let (engines, leases, recorder) = (
            Arc::clone(engines),
            Arc::clone(leases),
            Arc::clone(&recorder),
        );
        move |pick: u32| {
            let (engines, leases, recorder) = (
                Arc::clone(&engines),
                Arc::clone(&leases),
                Arc::clone(&recorder),
            );
            async move {
                let engine =
                    (u64::from(pick) * u64::from(storm_engines) / u64::from(sample)) as u32;
                let engine_id = engines.layout.engine_id(engine);
                let answer = with_retries(is_transient, || {
                    engines.acquire_as(engine, engine_id.clone(), &recorder)
                })
                .await;
                let held = leases[engine as usize];
                let retried = match answer {
                    Ok((lease, resumed)) => match HeldLease::of(&lease) {
                        Ok(again) if resumed && again == held => Retried::Same,
                        _ => Retried::Other,
                    },
                    Err(status) => Retried::Refused(status.code()),
                };
                Ok(Some(retried))
            }
        }
    };
    let answers = on_every_index(sample, workers, recorder.phases.deadline, job).await?;
    let mut report = RetriedAcquires {
        sampled: sample,
        latency_us: recorder.stats.snapshot()?.overall,
        ..RetriedAcquires::default()
    };
    for (_, answer) in answers {
        match answer {
            Retried::Same => report.same_lease += 1,
            Retried::Other => report.other_lease += 1,
            Retried::Refused(code) => *report.refused.entry(code_name(code)).or_default() += 1,
        }
    }
    Ok(report)
}

/// One acquire past the quota in every organization.
#[derive(Serialize, Clone, Debug, Default)]
pub struct QuotaProbes {
    /// Organizations probed.
    pub orgs: u32,
    /// Refused RESOURCE_EXHAUSTED, as they must be.
    pub refused: u32,
    /// Granted: over-admission.
    pub granted: u32,
    /// Answered with any other error, by gRPC code: the probe says nothing.
    pub other: BTreeMap<&'static str, u64>,
}

/// A new engine in each organization asks for one seat more than the quota.
pub(crate) async fn probe_quotas(engines: &Engines) -> Result<QuotaProbes, LoadgenError> {
    let recorder = Recorder::starting_now(Duration::from_millis(RESTART_PHASE_MS_MAX))?;
    let mut probes = QuotaProbes::default();
    for org in 0..engines.layout.orgs {
        // Engine `org` acts as member `org`, who belongs to organization `org`.
        debug_assert_eq!(engines.layout.org_of(org), org);
        let engine_id = format!("bench-{}-past-quota-{org}", engines.layout.run_id);
        let answer = with_retries(is_transient, || {
            engines.acquire_as(org, engine_id.clone(), &recorder)
        })
        .await;
        probes.orgs += 1;
        match answer {
            Ok(_) => probes.granted += 1,
            Err(status) if status.code() == Code::ResourceExhausted => probes.refused += 1,
            Err(status) => *probes.other.entry(code_name(status.code())).or_default() += 1,
        }
    }
    Ok(probes)
}
