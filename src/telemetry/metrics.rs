//! Prometheus metrics: their names, the recorder, the `/metrics` HTTP listener, the
//! sampler that copies gauges out of the broker, and the functions the rest of the
//! daemon calls to record.
//!
//! Cardinality is bounded by construction: label values are `&'static str` from fixed
//! sets (product, method, status code, reason), never a user, key or lease. Per
//! organization series exist only with `--metrics-per-org`, and only as sampled
//! gauges and counters (`seatbroker_org_*`), so the hot path never formats an
//! organization id. Hot-path handles are registered once ([`LeaseMetrics`]); without
//! an installed recorder (unit and in-process tests) every call is a no-op.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Histogram, counter, gauge, histogram};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::broker::Broker;
use crate::connections::AcceptErrors;
use crate::domain::{OrgId, Product, Termination};
use crate::leases::{LeaseEnd, ProductCounters};
use crate::limits;

/// Latency of one RPC, by `method` and gRPC status `code` (for streams: time to the
/// response headers).
pub const RPC_DURATION_SECONDS: &str = "seatbroker_rpc_duration_seconds";
/// Session streams (`SessionService.Channel`) open now.
pub const CHANNEL_STREAMS_OPEN: &str = "seatbroker_channel_streams_open";
/// Events queued for the engines of session streams.
pub const CHANNEL_EVENTS_TOTAL: &str = "seatbroker_channel_events_total";
/// Lease ends pushed to the stream holding the lease, by `reason` (the wire `EndReason`).
pub const CHANNEL_PUSHED_ENDS_TOTAL: &str = "seatbroker_channel_pushed_ends_total";
/// Acquires waiting in the wait queues now, all organizations (sampled).
pub const QUEUE_WAITING: &str = "seatbroker_queue_waiting";
/// How long a queued acquire waited, whatever its outcome.
pub const QUEUE_WAIT_SECONDS: &str = "seatbroker_queue_wait_seconds";
/// Sessions granted, by `product`.
pub const LEASE_GRANTS_TOTAL: &str = "seatbroker_lease_grants_total";
/// Sessions ended, by `product` and `reason` ([`END_REASONS`]: released, expired, or
/// the `Termination` that ended it, the reason the stream pushes).
pub const LEASE_ENDS_TOTAL: &str = "seatbroker_lease_ends_total";
/// Acquires refused, by `product` and `reason`.
pub const ACQUIRE_DENIALS_TOTAL: &str = "seatbroker_acquire_denials_total";
/// How much later than the heartbeat interval a heartbeat arrived, by `product`
/// (0 for one on time).
pub const HEARTBEAT_LATENESS_SECONDS: &str = "seatbroker_heartbeat_lateness_seconds";
/// Active sessions and quotas summed over organizations, by `product` (sampled).
pub const ACTIVE_SESSIONS: &str = "seatbroker_active_sessions";
pub const QUOTA: &str = "seatbroker_quota";
pub const ORGANIZATIONS: &str = "seatbroker_organizations";
/// The same per organization, by `org` and `product`, with `--metrics-per-org`.
pub const ORG_ACTIVE_SESSIONS: &str = "seatbroker_org_active_sessions";
pub const ORG_QUOTA: &str = "seatbroker_org_quota";
pub const ORG_LEASE_GRANTS_TOTAL: &str = "seatbroker_org_lease_grants_total";
pub const ORG_QUOTA_DENIALS_TOTAL: &str = "seatbroker_org_quota_denials_total";
pub const ORG_LEASE_EXPIRIES_TOTAL: &str = "seatbroker_org_lease_expiries_total";
/// Audit events of leases and refused acquires dropped because the audit queue was
/// full or a write failed (an admin change's events are never dropped).
pub const AUDIT_EVENTS_DROPPED_TOTAL: &str = "seatbroker_audit_events_dropped_total";
/// Events of admin changes recorded and not yet written to the audit files.
pub const AUDIT_ADMIN_EVENTS_PENDING: &str = "seatbroker_audit_admin_events_pending";
/// 1 while the audit record cannot be written and admin changes are refused, else 0.
pub const AUDIT_ADMIN_REFUSED: &str = "seatbroker_audit_admin_changes_refused";
/// The write-ahead log: fsync latency, records per fsync, snapshot and recovery time.
/// (The log records its fsyncs itself: `wal::metrics`.)
pub const WAL_FSYNC_SECONDS: &str = crate::wal::metrics::FSYNC_SECONDS;
pub const WAL_BATCH_RECORDS: &str = crate::wal::metrics::BATCH_RECORDS;
pub const WAL_SNAPSHOT_SECONDS: &str = "seatbroker_wal_snapshot_seconds";
pub const WAL_SNAPSHOT_BYTES: &str = "seatbroker_wal_snapshot_bytes";
pub const WAL_RECOVERY_SECONDS: &str = "seatbroker_wal_recovery_seconds";
pub const WAL_RECOVERY_RECORDS: &str = "seatbroker_wal_recovery_records";
/// 1 while the log cannot reserve disk space (ENOSPC) and the daemon is read-only, else 0.
pub const DISK_FULL: &str = "seatbroker_disk_full";
/// 1 while the log refuses grants and admin changes for any reason it cannot reserve
/// room (a full disk, no descriptor for the next segment), else 0.
pub const WAL_READ_ONLY: &str = "seatbroker_wal_read_only";

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const LATENESS_BUCKETS_SECONDS: &[f64] = &[0.0, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const BATCH_BUCKETS_RECORDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];
/// How often histogram buckets are folded (the exporter needs it run).
const UPKEEP_INTERVAL_MS: u64 = 5_000;

/// What can go wrong setting up metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// Installs the process-wide Prometheus recorder, once: a later call (a daemon run
/// again in the same process) gets the installed recorder's handle. Call before the
/// broker is built, so that the handles it registers are live.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    static INSTALLED: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = install_recorder()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(RPC_DURATION_SECONDS.into()),
            LATENCY_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Prefix("seatbroker_wal_".into()),
            LATENCY_BUCKETS_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(WAL_BATCH_RECORDS.into()),
            BATCH_BUCKETS_RECORDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(HEARTBEAT_LATENESS_SECONDS.into()),
            LATENESS_BUCKETS_SECONDS,
        )?;
    Ok(builder.install_recorder()?)
}

// ----- The write-ahead log's snapshots, recovery and alarm (its fsyncs: `wal::metrics`). -----

/// Records one snapshot: how long writing it took (through the directory fsync) and
/// its size.
pub fn snapshot(duration: Duration, bytes: u64) {
    histogram!(WAL_SNAPSHOT_SECONDS).record(duration.as_secs_f64());
    gauge!(WAL_SNAPSHOT_BYTES).set(bytes as f64);
}

/// Records the recovery at start: how long loading the snapshot and replaying the
/// log took, and how many log records were replayed.
pub fn recovery(duration: Duration, records: u64) {
    gauge!(WAL_RECOVERY_SECONDS).set(duration.as_secs_f64());
    gauge!(WAL_RECOVERY_RECORDS).set(records as f64);
}

/// Records the log's alarm: read-only or not, and whether for a full disk.
pub fn log_alarm(alarm: Option<&crate::wal::Alarm>) {
    let disk_full = alarm.is_some_and(crate::wal::Alarm::is_disk_full);
    gauge!(DISK_FULL).set(if disk_full { 1.0 } else { 0.0 });
    gauge!(WAL_READ_ONLY).set(if alarm.is_some() { 1.0 } else { 0.0 });
}

// ----- Everything else. -----

/// One audit event was lost (queue full, or a write failed).
pub fn audit_event_dropped() {
    counter!(AUDIT_EVENTS_DROPPED_TOTAL).increment(1);
}

/// The audit writer's account of admin changes' events: pending, and whether admin
/// changes are refused for want of a writable record.
pub fn audit_admin_events(pending: usize, refused: bool) {
    gauge!(AUDIT_ADMIN_EVENTS_PENDING).set(pending as f64);
    gauge!(AUDIT_ADMIN_REFUSED).set(if refused { 1.0 } else { 0.0 });
}

/// The latency histogram of one method and status code; the RPC layer keeps it.
pub fn rpc_duration(method: &'static str, code: &'static str) -> Histogram {
    histogram!(RPC_DURATION_SECONDS, "method" => method, "code" => code)
}

/// Why an acquire was refused, as a label value.
pub const DENIAL_REASONS: [&str; 7] = [
    "quota_exhausted",
    "kse_session_in_use",
    "not_licensed",
    "license_expired",
    "limit_reached",
    "unavailable",
    "other",
];

/// Why a session ended, as a label value: released, expired, then each
/// `Termination`'s name in its order (`end_index`).
pub const END_REASONS: [&str; 8] = [
    "released",
    "expired",
    "terminated",
    "unassigned",
    "member_removed",
    "key_revoked",
    "license_expired",
    "organization_deleted",
];

const PRODUCTS: [Product; 2] = [Product::Kse, Product::Kre];

fn product_label(product: Product) -> &'static str {
    match product {
        Product::Kse => "kse",
        Product::Kre => "kre",
    }
}

fn product_index(product: Product) -> usize {
    match product {
        Product::Kse => 0,
        Product::Kre => 1,
    }
}

/// `why`'s slot in [`END_REASONS`] (a termination's label is its `name()`).
fn end_index(why: LeaseEnd) -> usize {
    match why {
        LeaseEnd::Released => 0,
        LeaseEnd::Expired => 1,
        LeaseEnd::Terminated(cause) => match cause {
            Termination::Admin => 2,
            Termination::Unassigned => 3,
            Termination::MemberRemoved => 4,
            Termination::KeyRevoked => 5,
            Termination::LicenseExpired => 6,
            Termination::OrganizationDeleted => 7,
        },
    }
}

/// The hot path's metric handles, registered once so that recording is an atomic
/// operation with no lookup and no allocation.
pub struct LeaseMetrics {
    grants: [Counter; 2],
    ends: [[Counter; END_REASONS.len()]; 2],
    denials: [[Counter; DENIAL_REASONS.len()]; 2],
    heartbeat_lateness: [Histogram; 2],
}

impl LeaseMetrics {
    /// Registers the handles with the installed recorder (no-ops without one).
    pub fn register() -> Self {
        let per_product =
            |f: &dyn Fn(&'static str) -> Counter| PRODUCTS.map(|p| f(product_label(p)));
        LeaseMetrics {
            grants: per_product(&|p| counter!(LEASE_GRANTS_TOTAL, "product" => p)),
            ends: PRODUCTS.map(|p| {
                END_REASONS.map(|reason| {
                    counter!(LEASE_ENDS_TOTAL, "product" => product_label(p), "reason" => reason)
                })
            }),
            denials: PRODUCTS.map(|p| {
                DENIAL_REASONS.map(|reason| {
                    counter!(ACQUIRE_DENIALS_TOTAL, "product" => product_label(p), "reason" => reason)
                })
            }),
            heartbeat_lateness: PRODUCTS
                .map(|p| histogram!(HEARTBEAT_LATENESS_SECONDS, "product" => product_label(p))),
        }
    }

    pub fn granted(&self, product: Product) {
        self.grants[product_index(product)].increment(1);
    }

    pub fn ended(&self, product: Product, why: LeaseEnd) {
        self.ends[product_index(product)][end_index(why)].increment(1);
    }

    /// `reason` indexes [`DENIAL_REASONS`].
    pub fn denied(&self, product: Product, reason: usize) {
        self.denials[product_index(product)][reason.min(DENIAL_REASONS.len() - 1)].increment(1);
    }

    pub fn heartbeat_late_by(&self, product: Product, late_by: Duration) {
        self.heartbeat_lateness[product_index(product)].record(late_by.as_secs_f64());
    }
}

/// Copies gauges (active sessions, quotas) and, with `per_org`, per organization
/// series out of the broker every `limits::METRICS_SAMPLE_INTERVAL_MS`. Its work is
/// proportional to the organizations; it never touches the hot path. At most
/// `limits::METRICS_ORGS_MAX` organizations get series of their own ([`OrgSeries`]).
pub async fn sample_forever(broker: Arc<Broker>, per_org: bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(limits::METRICS_SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut org_series = per_org.then(|| OrgSeries::new(limits::METRICS_ORGS_MAX));
    loop {
        tick.tick().await;
        sample(&broker, org_series.as_mut());
    }
}

/// One organization's figures at a sample, per product.
struct OrgSample {
    org: OrgId,
    figures: OrgFigures,
}

#[derive(Default)]
struct OrgFigures {
    quota: [u32; 2],
    counters: [ProductCounters; 2],
}

fn sample(broker: &Broker, org_series: Option<&mut OrgSeries>) {
    gauge!(QUEUE_WAITING).set(broker.leases().waiting_count() as f64);
    let samples: Vec<OrgSample> = broker
        .quotas()
        .into_iter()
        .map(|(org, quota)| OrgSample {
            figures: OrgFigures {
                counters: PRODUCTS.map(|product| broker.leases().counters(&org, product)),
                quota: PRODUCTS.map(|product| quota.for_product(product)),
            },
            org,
        })
        .collect();
    for product in PRODUCTS {
        let i = product_index(product);
        let active: u64 = samples
            .iter()
            .map(|s| u64::from(s.figures.counters[i].active))
            .sum();
        let quota: u64 = samples.iter().map(|s| u64::from(s.figures.quota[i])).sum();
        gauge!(ACTIVE_SESSIONS, "product" => product_label(product)).set(active as f64);
        gauge!(QUOTA, "product" => product_label(product)).set(quota as f64);
    }
    gauge!(ORGANIZATIONS).set(samples.len() as f64);
    if let Some(org_series) = org_series {
        org_series.admit(&samples);
        org_series.record(&samples);
    }
}

/// The organizations that have series of their own with `--metrics-per-org`: at most
/// `max`, the rest summed into `org="_other"`. The recorder cannot remove a series, so
/// an organization keeps its series once it has them (no series is left stale at an
/// old value); new ones are admitted largest first, by active sessions, while room is
/// left.
struct OrgSeries {
    exported: HashSet<OrgId>,
    max: usize,
    /// Whether `_other` has been recorded: then it is kept current.
    other_recorded: bool,
}

/// The `org` label of the organizations beyond the cap.
const OTHER_ORGS: &str = "_other";

impl OrgSeries {
    fn new(max: usize) -> Self {
        OrgSeries {
            exported: HashSet::new(),
            max,
            other_recorded: false,
        }
    }

    fn admit(&mut self, samples: &[OrgSample]) {
        let room = self.max.saturating_sub(self.exported.len());
        if room == 0 {
            return;
        }
        let mut candidates: Vec<(u64, &OrgId)> = samples
            .iter()
            .filter(|s| !self.exported.contains(&s.org))
            .map(|s| {
                let active = s.figures.counters.iter().map(|c| u64::from(c.active));
                (active.sum(), &s.org)
            })
            .collect();
        // Largest first; ties by id, so the choice does not depend on map order.
        candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        self.exported.extend(
            candidates
                .into_iter()
                .take(room)
                .map(|(_, org)| org.clone()),
        );
    }

    fn record(&mut self, samples: &[OrgSample]) {
        let mut other = OrgFigures::default();
        let mut folded = 0usize;
        for sample in samples {
            if self.exported.contains(&sample.org) {
                record_org(sample.org.as_str(), &sample.figures);
                continue;
            }
            folded += 1;
            for i in 0..PRODUCTS.len() {
                other.quota[i] += sample.figures.quota[i];
                let (sum, add) = (&mut other.counters[i], &sample.figures.counters[i]);
                sum.active += add.active;
                sum.grants += add.grants;
                sum.denials += add.denials;
                sum.expiries += add.expiries;
            }
        }
        if folded > 0 || self.other_recorded {
            record_org(OTHER_ORGS, &other);
            self.other_recorded = true;
        }
    }
}

fn record_org(org: &str, figures: &OrgFigures) {
    for product in PRODUCTS {
        let i = product_index(product);
        let labels = [
            ("org", org.to_owned()),
            ("product", product_label(product).into()),
        ];
        let counters = &figures.counters[i];
        gauge!(ORG_ACTIVE_SESSIONS, &labels).set(counters.active);
        gauge!(ORG_QUOTA, &labels).set(figures.quota[i]);
        counter!(ORG_LEASE_GRANTS_TOTAL, &labels).absolute(counters.grants);
        counter!(ORG_QUOTA_DENIALS_TOTAL, &labels).absolute(counters.denials);
        counter!(ORG_LEASE_EXPIRIES_TOTAL, &labels).absolute(counters.expiries);
    }
}

/// Serves `GET /metrics` on `listener` with hyper (HTTP/1.1, one request per
/// connection) and keeps the histograms folded.
///
/// At most `limits::METRICS_CONNECTIONS_MAX` connections are served at once; each must
/// send its request head within `limits::METRICS_HEADER_READ_MS_MAX` and is closed
/// after `limits::METRICS_REQUEST_MS_MAX`, so idle or trickling clients give their
/// slot back within a second. While every slot is held, further connections are
/// answered `503 Service Unavailable` (up to `limits::METRICS_REFUSALS_MAX` at once,
/// past which they are closed), so a scraper learns to retry rather than seeing a
/// reset. Failed accepts are paced and their warnings rate-limited
/// ([`AcceptErrors`]).
///
/// Folding and rendering run on the blocking pool: at 100k calls a second, folding
/// five seconds of latency samples takes milliseconds, which on one of the two
/// async workers would stall every call queued behind it.
pub async fn serve_http(listener: TcpListener, handle: PrometheusHandle, per_org: bool) {
    if let Ok(addr) = listener.local_addr()
        && let Some(warning) = exposure_warning(addr, per_org)
    {
        tracing::warn!(%addr, "{warning}");
    }
    tokio::spawn(keep_histograms_folded(handle.clone()));
    let scrapes = Arc::new(Semaphore::new(limits::METRICS_CONNECTIONS_MAX));
    let refusals = Arc::new(Semaphore::new(limits::METRICS_REFUSALS_MAX));
    let mut accept_errors = AcceptErrors::new("metrics");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                accept_errors.succeeded();
                stream
            }
            Err(error) => {
                accept_errors.failed(&error).await;
                continue;
            }
        };
        if let Ok(slot) = Arc::clone(&scrapes).try_acquire_owned() {
            let handle = handle.clone();
            let service = service_fn(move |request| answer(request, handle.clone()));
            tokio::spawn(serve_connection(stream, service, slot));
        } else if let Ok(slot) = Arc::clone(&refusals).try_acquire_owned() {
            let service = service_fn(|_| std::future::ready(Ok::<_, Infallible>(busy())));
            tokio::spawn(serve_connection(stream, service, slot));
        }
        // Else the stream is dropped: closed unanswered.
    }
}

/// The warning for a `/metrics` listener others can reach, if `addr` is not loopback.
fn exposure_warning(addr: SocketAddr, per_org: bool) -> Option<&'static str> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(if per_org {
        "serving /metrics on a non-loopback address: it is plaintext and unauthenticated, \
         and with --metrics-per-org it lists customer organization ids"
    } else {
        "serving /metrics on a non-loopback address: it is plaintext and unauthenticated"
    })
}

async fn keep_histograms_folded(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_millis(UPKEEP_INTERVAL_MS));
    loop {
        tick.tick().await;
        let handle = handle.clone();
        let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
    }
}

/// Serves one request on `stream` under the listener's deadlines, then gives `slot` back.
async fn serve_connection<S>(stream: TcpStream, service: S, slot: OwnedSemaphorePermit)
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits::METRICS_HEADER_READ_MS_MAX))
        .keep_alive(false)
        .max_buf_size(limits::METRICS_REQUEST_BYTES_MAX)
        .serve_connection(TokioIo::new(stream), service);
    let deadline = Duration::from_millis(limits::METRICS_REQUEST_MS_MAX);
    let _ = tokio::time::timeout(deadline, connection).await;
    drop(slot);
}

/// `GET /metrics` renders; any other path is 404, any other method 405.
async fn answer(
    request: Request<Incoming>,
    handle: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    if request.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "see /metrics\n".into()));
    }
    Ok(
        match tokio::task::spawn_blocking(move || handle.render()).await {
            Ok(rendered) => text(StatusCode::OK, rendered),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering failed\n".into(),
            ),
        },
    )
}

/// The answer while every scrape slot is held.
fn busy() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many /metrics connections at once; retry\n".into(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(id: &str, kre_active: u32) -> OrgSample {
        let mut figures = OrgFigures::default();
        figures.counters[product_index(Product::Kre)].active = kre_active;
        OrgSample {
            org: OrgId::parse(id).unwrap(),
            figures,
        }
    }

    fn exported(series: &OrgSeries) -> Vec<&str> {
        let mut ids: Vec<&str> = series.exported.iter().map(OrgId::as_str).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn every_end_has_its_own_reason_label_and_a_termination_is_labelled_by_its_name() {
        let terminations = [
            Termination::Admin,
            Termination::Unassigned,
            Termination::MemberRemoved,
            Termination::KeyRevoked,
            Termination::LicenseExpired,
            Termination::OrganizationDeleted,
        ];
        let mut slots: Vec<usize> = terminations
            .iter()
            .map(|cause| {
                let slot = end_index(LeaseEnd::Terminated(*cause));
                assert_eq!(END_REASONS[slot], cause.name());
                slot
            })
            .collect();
        slots.extend([end_index(LeaseEnd::Released), end_index(LeaseEnd::Expired)]);
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), END_REASONS.len(), "one label per reason");
    }

    #[test]
    fn per_org_series_go_to_the_largest_organizations_up_to_the_cap_and_keep_them() {
        let mut series = OrgSeries::new(2);
        series.admit(&[org("small", 1), org("large", 9), org("middle", 5)]);
        assert_eq!(exported(&series), ["large", "middle"]);
        // A newcomer larger than every exported one is folded: the cap is reached and
        // an exported organization keeps its series (none is left stale).
        series.admit(&[
            org("small", 1),
            org("large", 0),
            org("middle", 0),
            org("huge", 99),
        ]);
        assert_eq!(exported(&series), ["large", "middle"]);
    }

    #[test]
    fn per_org_series_are_admitted_while_room_is_left() {
        let mut series = OrgSeries::new(3);
        series.admit(&[org("first", 1)]);
        series.admit(&[
            org("first", 1),
            org("second", 0),
            org("third", 7),
            org("fourth", 3),
        ]);
        assert_eq!(exported(&series), ["first", "fourth", "third"]);
    }

    #[test]
    fn a_listener_others_can_reach_is_warned_about_and_per_org_series_named() {
        let loopback: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        assert_eq!(exposure_warning(loopback, true), None);
        assert!(
            exposure_warning(any, false)
                .unwrap()
                .contains("unauthenticated")
        );
        assert!(
            exposure_warning(any, true)
                .unwrap()
                .contains("organization ids")
        );
        assert!(
            !exposure_warning(any, false)
                .unwrap()
                .contains("organization ids")
        );
    }
}
