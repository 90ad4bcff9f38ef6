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

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::domain::Product;
use crate::leases::LeaseEnd;
use crate::limits;

/// Latency of one RPC, by `method` and gRPC status `code` (for streams: time to the
/// response headers).
pub const RPC_DURATION_SECONDS: &str = "seatbroker_rpc_duration_seconds";
/// Sessions granted, by `product`.
pub const LEASE_GRANTS_TOTAL: &str = "seatbroker_lease_grants_total";
/// Sessions ended, by `product` and `reason` (released, expired, terminated).
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
pub const WAL_FSYNC_SECONDS: &str = "seatbroker_wal_fsync_seconds";
pub const WAL_BATCH_RECORDS: &str = "seatbroker_wal_batch_records";
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

/// Installs the process-wide Prometheus recorder. Call once, before the broker is
/// built, so that the handles it registers are live.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
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

// ----- The write-ahead log's hooks. -----

/// Records one fsync of the write-ahead log: how long it took and how many records
/// it made durable (the group-commit batch).
pub fn wal_fsync(duration: Duration, batch_records: usize) {
    histogram!(WAL_FSYNC_SECONDS).record(duration.as_secs_f64());
    histogram!(WAL_BATCH_RECORDS).record(batch_records as f64);
}

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

fn end_index(why: LeaseEnd) -> usize {
    match why {
        LeaseEnd::Released => 0,
        LeaseEnd::Expired => 1,
        LeaseEnd::Terminated => 2,
    }
}

/// The hot path's metric handles, registered once so that recording is an atomic
/// operation with no lookup and no allocation.
pub struct LeaseMetrics {
    grants: [Counter; 2],
    ends: [[Counter; 3]; 2],
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
                ["released", "expired", "terminated"].map(|reason| {
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
/// proportional to the organizations; it never touches the hot path.
pub async fn sample_forever(broker: Arc<Broker>, per_org: bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(limits::METRICS_SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample(&broker, per_org);
    }
}

fn sample(broker: &Broker, per_org: bool) {
    let quotas = broker.quotas();
    let mut active_sum = [0u64; 2];
    let mut quota_sum = [0u64; 2];
    for (org, quota) in &quotas {
        for product in PRODUCTS {
            let counters = broker.leases().counters(org, product);
            let i = product_index(product);
            active_sum[i] += u64::from(counters.active);
            quota_sum[i] += u64::from(quota.for_product(product));
            if per_org {
                let labels = [
                    ("org", org.to_string()),
                    ("product", product_label(product).into()),
                ];
                gauge!(ORG_ACTIVE_SESSIONS, &labels).set(counters.active);
                gauge!(ORG_QUOTA, &labels).set(quota.for_product(product));
                counter!(ORG_LEASE_GRANTS_TOTAL, &labels).absolute(counters.grants);
                counter!(ORG_QUOTA_DENIALS_TOTAL, &labels).absolute(counters.denials);
                counter!(ORG_LEASE_EXPIRIES_TOTAL, &labels).absolute(counters.expiries);
            }
        }
    }
    for product in PRODUCTS {
        let i = product_index(product);
        gauge!(ACTIVE_SESSIONS, "product" => product_label(product)).set(active_sum[i] as f64);
        gauge!(QUOTA, "product" => product_label(product)).set(quota_sum[i] as f64);
    }
    gauge!(ORGANIZATIONS).set(quotas.len() as f64);
}

/// Serves `GET /metrics` on `listener` (HTTP/1.1, one request per connection, at most
/// `limits::METRICS_CONNECTIONS_MAX` at once) and keeps the histograms folded.
///
/// Folding and rendering run on the blocking pool: at 100k calls a second, folding
/// five seconds of latency samples takes milliseconds, which on one of the two
/// async workers would stall every call queued behind it.
pub async fn serve_http(listener: TcpListener, handle: PrometheusHandle) {
    let upkeep_handle = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(UPKEEP_INTERVAL_MS));
        loop {
            tick.tick().await;
            let handle = upkeep_handle.clone();
            let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
        }
    });
    let slots = Arc::new(Semaphore::new(limits::METRICS_CONNECTIONS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics listener cannot accept");
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // Too many scrapes at once: drop the connection.
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let deadline = Duration::from_millis(limits::METRICS_REQUEST_MS_MAX);
            let _ = tokio::time::timeout(deadline, answer(stream, &handle)).await;
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 || head.len() + read > limits::METRICS_REQUEST_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let handle = handle.clone();
            let rendered = tokio::task::spawn_blocking(move || handle.render())
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", rendered)
        }
        (Some(b"GET"), _) => ("404 Not Found", "see /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
