//! Measurement: the phases of a run (warmup, measured window, deadline), sharded
//! latency histograms per RPC method, error counts by gRPC status code, and the live
//! counters the progress line reads.
//!
//! An RPC counts in the report when it completed inside the measured window
//! [`measure_from`, `deadline`]. Unpaced, latency is timed from the send to the answer
//! (a closed loop: the generator sends only as fast as answers come). Paced
//! (`--rate`), it is timed from the call's intended start on the schedule
//! (`pacer::Schedule`), corrected for coordinated omission as wrk2 does, and the start
//! lag (send minus intended start) gets a histogram of its own. Successful calls and
//! expected denials go into the histograms; errors are only counted.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::{Code, Status};

use super::bounds::{LATENCY_SIGNIFICANT_DIGITS, LATENCY_US_MAX, RPC_TIMEOUT_MS, STATS_SHARDS};
use super::error::LoadgenError;
use super::quota_check::Interval;
use crate::client::code_name;

/// The RPCs engines make; the index of each is its histogram slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Acquire = 0,
    Heartbeat = 1,
    Release = 2,
    /// A stream's renewal, which extends every lease the stream holds.
    Renew = 3,
    /// The `admin` workload's operator changes.
    AddMember = 4,
    RemoveMember = 5,
}

const METHODS: [Method; 6] = [
    Method::Acquire,
    Method::Heartbeat,
    Method::Release,
    Method::Renew,
    Method::AddMember,
    Method::RemoveMember,
];
/// gRPC status codes are 0..=16.
const CODES: usize = 17;

impl Method {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Acquire => "acquire",
            Self::Heartbeat => "heartbeat",
            Self::Release => "release",
            Self::Renew => "renew",
            Self::AddMember => "add-member",
            Self::RemoveMember => "remove-member",
        }
    }
}

/// How a call ended, as the statistics see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Ok,
    /// RESOURCE_EXHAUSTED on acquire in `contention`: the expected answer to a full quota.
    Denied,
    Failed(Code),
}

/// The time line of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phases {
    /// Engines start; interval timestamps count from here.
    pub start: Instant,
    /// End of the warmup, start of the measured window.
    pub measure_from: Instant,
    /// End of the measured window; engines start no new work after it.
    pub deadline: Instant,
}

impl Phases {
    pub(crate) fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now();
        Self {
            start,
            measure_from: start + warmup,
            deadline: start + warmup + duration,
        }
    }

    fn measures(&self, finished: Instant) -> bool {
        finished >= self.measure_from && finished <= self.deadline
    }

    /// A lease interval in run-relative nanoseconds, or `None` when it is empty.
    pub(crate) fn interval(&self, from: Instant, to: Option<Instant>) -> Option<Interval> {
        let to = to.filter(|to| *to >= from)?;
        let nanos = |t: Instant| t.duration_since(self.start).as_nanos() as u64;
        Some(Interval {
            start_ns: nanos(from),
            end_ns: nanos(to),
        })
    }
}

/// Awaits one call and returns its answer with the instants it was sent and answered.
/// Timed from the send, not from a scheduled start: a start the client could not make
/// on time is the generator's lateness, not the server's. A call unanswered after
/// `RPC_TIMEOUT_MS` is DEADLINE_EXCEEDED.
pub(crate) async fn timed<T>(
    call: impl Future<Output = Result<T, Status>>,
) -> (Result<T, Status>, (Instant, Instant)) {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "no answer within the bench's RPC timeout",
            ))
        });
    (answer, (started, Instant::now()))
}

/// Counters and histograms shared by all engines of one run.
pub(crate) struct Stats {
    /// Latency histograms per method, sharded by engine index. A `std::sync::Mutex`:
    /// it is held only to record one value, never across an `.await`.
    shards: Box<[Mutex<[Histogram<u64>; METHODS.len()]>]>,
    /// Failed calls in the measured window, indexed by status code.
    errors: [AtomicU64; CODES],
    /// Expected denials in the measured window.
    denials: AtomicU64,
    /// Calls answered (OK or denied) since the start, warmup included: for progress.
    answered_live: AtomicU64,
    /// Failed calls since the start, warmup included: for progress.
    errors_live: AtomicU64,
    /// How late paced calls were sent after their intended start (`--rate` only).
    start_lag: Mutex<Histogram<u64>>,
    /// Leases extended by stream renewals answered in the measured window.
    leases_renewed: AtomicU64,
}

/// Latency percentiles in microseconds.
#[derive(serde::Serialize, Clone, Copy, Debug, Default)]
pub struct Latency {
    /// Calls recorded.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest call (saturates at `LATENCY_US_MAX`).
    pub max: u64,
}

/// The measured figures of one run.
pub(crate) struct Snapshot {
    pub overall: Latency,
    pub methods: BTreeMap<&'static str, Latency>,
    pub errors: BTreeMap<&'static str, u64>,
    pub denials: u64,
    /// Paced runs: how late calls were sent after their intended start.
    pub start_lag: Option<Latency>,
    /// Leases extended by stream renewals in the measured window.
    pub leases_renewed: u64,
}

impl Stats {
    pub(crate) fn new() -> Result<Self, LoadgenError> {
        let shards = (0..STATS_SHARDS)
            .map(|_| Ok(Mutex::new(histogram_per_method()?)))
            .collect::<Result<Vec<_>, LoadgenError>>()?;
        Ok(Self {
            shards: shards.into_boxed_slice(),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            denials: AtomicU64::new(0),
            answered_live: AtomicU64::new(0),
            errors_live: AtomicU64::new(0),
            start_lag: Mutex::new(new_histogram()?),
            leases_renewed: AtomicU64::new(0),
        })
    }

    /// Records one completed call of engine `engine_index`.
    pub(crate) fn record(
        &self,
        engine_index: u32,
        method: Method,
        answer: Answer,
        span: (Instant, Instant),
        phases: &Phases,
    ) {
        let (started, finished) = span;
        let live = match answer {
            Answer::Failed(_) => &self.errors_live,
            Answer::Ok | Answer::Denied => &self.answered_live,
        };
        live.fetch_add(1, Ordering::Relaxed);
        if !phases.measures(finished) {
            return;
        }
        match answer {
            Answer::Failed(code) => self.count_error(code),
            Answer::Denied => {
                self.denials.fetch_add(1, Ordering::Relaxed);
                self.record_latency(engine_index, method, finished - started);
            }
            Answer::Ok => self.record_latency(engine_index, method, finished - started),
        }
    }

    /// Records how late a paced call answered at `answered` was sent after its slot.
    pub(crate) fn record_start_lag(&self, lag: Duration, answered: Instant, phases: &Phases) {
        if !phases.measures(answered) {
            return;
        }
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1);
        self.start_lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(micros);
    }

    /// Counts the leases one stream renewal answered at `answered` extended.
    pub(crate) fn count_renewed(&self, leases: u32, answered: Instant, phases: &Phases) {
        if phases.measures(answered) {
            self.leases_renewed
                .fetch_add(u64::from(leases), Ordering::Relaxed);
        }
    }

    /// Counts a failed call (or stream operation) answered at `answered`, if in the
    /// measured window.
    pub(crate) fn count_error_at(&self, code: Code, answered: Instant, phases: &Phases) {
        self.errors_live.fetch_add(1, Ordering::Relaxed);
        if phases.measures(answered) {
            self.count_error(code);
        }
    }

    /// Counts a failed call in the measured window (also used for malformed answers).
    pub(crate) fn count_error(&self, code: Code) {
        let slot = (code as usize).min(CODES - 1);
        self.errors[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn record_latency(&self, engine_index: u32, method: Method, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let shard = &self.shards[engine_index as usize % self.shards.len()];
        let mut histograms = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        histograms[method as usize].saturating_record(micros);
    }

    /// Calls answered and calls failed so far, warmup included.
    pub(crate) fn live_counts(&self) -> (u64, u64) {
        (
            self.answered_live.load(Ordering::Relaxed),
            self.errors_live.load(Ordering::Relaxed),
        )
    }

    /// Merges the shards into per-method and overall figures.
    pub(crate) fn snapshot(&self) -> Result<Snapshot, LoadgenError> {
        let mut per_method = histogram_per_method()?;
        for shard in self.shards.iter() {
            let histograms = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (merged, part) in per_method.iter_mut().zip(histograms.iter()) {
                merged
                    .add(part)
                    .map_err(|e| LoadgenError::Internal(format!("histogram merge: {e:?}")))?;
            }
        }
        let mut overall = new_histogram()?;
        let mut methods = BTreeMap::new();
        for (method, histogram) in METHODS.iter().zip(per_method.iter()) {
            overall
                .add(histogram)
                .map_err(|e| LoadgenError::Internal(format!("histogram merge: {e:?}")))?;
            if !histogram.is_empty() {
                methods.insert(method.name(), latency_of(histogram));
            }
        }
        Ok(Snapshot {
            overall: latency_of(&overall),
            methods,
            errors: self.error_counts(),
            denials: self.denials.load(Ordering::Relaxed),
            start_lag: {
                let lag = self
                    .start_lag
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (!lag.is_empty()).then(|| latency_of(&lag))
            },
            leases_renewed: self.leases_renewed.load(Ordering::Relaxed),
        })
    }

    fn error_counts(&self) -> BTreeMap<&'static str, u64> {
        (0..CODES)
            .filter_map(|slot| {
                let count = self.errors[slot].load(Ordering::Relaxed);
                (count > 0).then(|| (code_name(Code::from_i32(slot as i32)), count))
            })
            .collect()
    }
}

/// One empty histogram per method, in `METHODS` order.
fn histogram_per_method() -> Result<[Histogram<u64>; METHODS.len()], LoadgenError> {
    let mut histograms = Vec::with_capacity(METHODS.len());
    for _ in METHODS {
        histograms.push(new_histogram()?);
    }
    histograms
        .try_into()
        .map_err(|_| LoadgenError::Internal("one histogram per method".into()))
}

pub(crate) fn new_histogram() -> Result<Histogram<u64>, LoadgenError> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .map_err(|e| LoadgenError::Internal(format!("histogram bounds: {e:?}")))
}

pub(crate) fn latency_of(histogram: &Histogram<u64>) -> Latency {
    if histogram.is_empty() {
        return Latency::default();
    }
    Latency {
        count: histogram.len(),
        mean: histogram.mean(),
        p50: histogram.value_at_quantile(0.50),
        p90: histogram.value_at_quantile(0.90),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    }
}

/// Writes one progress line to stderr every `PROGRESS_INTERVAL_MS` until the deadline.
pub(crate) async fn report_progress(stats: std::sync::Arc<Stats>, phases: Phases, label: String) {
    let period = Duration::from_millis(super::bounds::PROGRESS_INTERVAL_MS);
    let mut ticks = tokio::time::interval_at(phases.start + period, period);
    let mut previous = (0, 0);
    let mut previous_cpu = super::cpu::own_cpu_seconds();
    while Instant::now() < phases.deadline {
        let tick = ticks.tick().await;
        let (answered, errors) = stats.live_counts();
        let rate = (answered - previous.0) as f64 / period.as_secs_f64();
        let phase = if tick <= phases.measure_from {
            "warmup"
        } else {
            "measure"
        };
        let elapsed = tick.duration_since(phases.start).as_secs();
        let cpu = super::cpu::own_cpu_seconds();
        let client_cpu = match (previous_cpu, cpu) {
            (Some(before), Some(now)) => {
                format!("{:.0}%", (now - before) * 100.0 / period.as_secs_f64())
            }
            _ => "n/a".to_owned(),
        };
        eprintln!(
            "bench {label} {phase} t={elapsed}s ops/s {rate:.0} errors {} (total {errors}) client cpu {client_cpu}",
            errors - previous.1
        );
        previous = (answered, errors);
        previous_cpu = cpu;
    }
}
