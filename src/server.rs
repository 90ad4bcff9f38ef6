//! The daemon: prepares the data directory, the operator key, the audit record and the
//! broker; serves gRPC (sessions, admin, health, reflection) with TLS when configured,
//! the `/metrics` listener, the expiry sweeper and the metrics sampler; and shuts down
//! in order: NOT_SERVING, stop accepting, let in-flight calls finish within the grace
//! period, make the log durable ([`Broker::close`]), close the audit record.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::activity::Activity;
use crate::api::guard::{AuthLayer, BodyBudgetLayer, RequestBodies};
use crate::api::{AdminApi, SessionApi};
use crate::audit::{AuditError, AuditLog, AuditOptions};
use crate::auth::{self, OperatorKeyError};
use crate::broker::Broker;
use crate::clock::{Clock, SystemClock};
use crate::datadir::{self, DataDirLock, LockError};
use crate::leases::{LeaseTable, LeaseTiming};
use crate::limits;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::session_service_server::SessionServiceServer;
use crate::storage::durable::{self, OpenError, WalJournal};
use crate::telemetry::metrics;
use crate::telemetry::rpc::{Phase, PhaseCell, RpcLayer};
use crate::tls::{self, TlsError};
use crate::wal::{RealFs, WalOptions};

use crate::config::{Config, OperatorKeySource};
use crate::connections::{self, ConnectionLimits};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    OperatorKey(#[from] OperatorKeyError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot recover the data directory: {0}")]
    Recovery(#[from] OpenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("audit record: {0}")]
    Audit(#[from] AuditError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("making the log durable at shutdown: {0}")]
    Close(crate::domain::DomainError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the gRPC server task failed: {0}")]
    Task(String),
}

/// A daemon ready to serve: its broker and the operator key it generated, if any
/// (printed once by the caller, never stored).
pub struct Prepared {
    pub broker: Arc<Broker>,
    pub activity: Arc<Activity>,
    pub generated_operator_key: Option<String>,
    journal: Arc<WalJournal>,
    boot_epoch: u64,
    config: Config,
    /// Held until the daemon stops (see [`datadir`]).
    data_dir_lock: DataDirLock,
}

/// The log lives in this subdirectory of the data directory.
const WAL_DIR: &str = "wal";

/// Opens the data directory and the audit record, recovers the state from the log and
/// builds the broker (the configuration was checked when it was made). Install the
/// metrics recorder before, if there is one.
pub async fn prepare(config: Config) -> Result<Prepared, ServerError> {
    let settings = config.settings();
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    // Before anything in the directory is read: one daemon per data directory.
    let data_dir_lock = datadir::lock(data_dir)?;
    let (operator, generated_operator_key) = match config.operator_key() {
        OperatorKeySource::Given(key) => (key.clone(), None),
        OperatorKeySource::DataDir => {
            auth::data_dir_operator_key(data_dir, &data_dir.join(WAL_DIR))?
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    #[cfg(feature = "failpoints")]
    recovery_delay_failpoint().await;
    let timing = LeaseTiming::from_ttl(Duration::from_millis(settings.lease_ttl_ms.into()));
    let audit = AuditLog::open(
        data_dir,
        AuditOptions {
            file_bytes_max: settings.audit.file_bytes_max,
            files_max: settings.audit.files_max,
        },
    )?;
    let activity = Arc::new(Activity::new(Arc::clone(&clock), timing, audit));
    let mut leases = LeaseTable::new(timing, 0);
    leases.set_leases_per_org_max(settings.limits.leases_per_org_max);
    let opened = durable::open(
        &data_dir.join(WAL_DIR),
        Arc::new(RealFs),
        WalOptions {
            commit_delay: Duration::from_micros(settings.wal.commit_delay_us.into()),
            ..WalOptions::default()
        },
        leases,
    )
    .await?;
    // The replay's files and scans were freed on this thread.
    crate::allocator::collect_this_thread();
    metrics::recovery(opened.recovery_time, opened.records_replayed);
    tracing::info!(
        snapshot_leases = opened.snapshot_leases,
        records = opened.records_replayed,
        boot_epoch = opened.boot_epoch,
        live_leases = opened.leases.live_count(),
        millis = opened.recovery_time.as_millis() as u64,
        "recovered the data directory"
    );
    let journal = opened.journal;
    let mut leases = opened.leases;
    // Only now: replaying the log must not reach the audit record or the metrics.
    leases.set_observer(Arc::clone(&activity) as _);
    let broker = Arc::new(
        Broker::new(opened.admin, leases, operator, journal.clone(), clock)
            .with_audit_admission(activity.audit().admission()),
    );
    Ok(Prepared {
        broker,
        activity,
        generated_operator_key,
        journal,
        boot_epoch: opened.boot_epoch,
        config,
        data_dir_lock,
    })
}

/// With the `failpoints` feature, `SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS=N` makes
/// recovery take N ms longer, so tests can watch health during recovery.
#[cfg(feature = "failpoints")]
async fn recovery_delay_failpoint() {
    let delay_ms = std::env::var("SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS")
        .ok()
        .and_then(|text| text.parse::<u64>().ok());
    if let Some(delay_ms) = delay_ms {
        tokio::time::sleep(Duration::from_millis(delay_ms.min(60_000))).await;
    }
}

impl Prepared {
    /// Binds the gRPC socket and, when configured, the metrics socket.
    pub async fn bind(self) -> Result<(Bound, SocketAddr), ServerError> {
        let listener = bind(self.config.settings().listen).await?;
        self.bind_with(listener).await
    }

    /// Like [`Prepared::bind`], on a gRPC socket bound earlier (see
    /// [`serve_health_while`]).
    pub async fn bind_with(
        self,
        listener: TcpListener,
    ) -> Result<(Bound, SocketAddr), ServerError> {
        let local = local_addr(&listener, self.config.settings().listen)?;
        let metrics_listener = match self.config.settings().metrics.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        if self.config.tls().is_none() && !local.ip().is_loopback() {
            tracing::warn!(
                addr = %local,
                "serving plaintext gRPC on a non-loopback address (--insecure): API keys cross the network in the clear"
            );
        }
        let bound = Bound {
            broker: self.broker,
            activity: self.activity,
            journal: self.journal,
            boot_epoch: self.boot_epoch,
            listener,
            metrics_listener,
            metrics_handle: None,
            config: self.config,
            _data_dir_lock: self.data_dir_lock,
        };
        Ok((bound, local))
    }
}

/// Binds the gRPC socket before recovery, so that clients reach health (NOT_SERVING)
/// instead of a refused connection while the log is replayed.
pub async fn bind_early(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = bind(addr).await?;
    let local = local_addr(&listener, addr)?;
    Ok((listener, local))
}

/// How long the recovery-time health server may take to hand the socket over.
const RECOVERY_SERVER_STOP: Duration = Duration::from_secs(2);

/// Serves only health (NOT_SERVING for every service) and reflection on `listener`
/// while `work` (recovery) runs, then stops that server and hands the socket back.
/// Broker calls answer UNAVAILABLE ("recovering") from their headers, so clients
/// retry rather than give up, and no body of theirs is read; connections have the
/// same bounds as later.
pub async fn serve_health_while<T>(
    listener: TcpListener,
    config: &Config,
    work: impl Future<Output = T>,
) -> Result<(T, TcpListener), ServerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    report_health(&health, ServingStatus::NotServing).await;
    let bodies = Arc::new(RequestBodies::new(
        config.settings().limits.request_bodies_bytes_max,
        limits::UNAUTHENTICATED_REQUEST_BYTES_MAX,
    ));
    let router = with_health_and_reflection(
        http2_server(config)?
            .layer(RpcLayer::new(Arc::new(PhaseCell::new(Phase::Starting))))
            .layer(BodyBudgetLayer::new(bodies)),
        health_service,
    )?;
    let listener = Arc::new(listener);
    let incoming = connections::limited_incoming(Arc::clone(&listener), connection_limits(config));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(
        incoming.connections,
        async {
            let _ = stopped.await;
        },
    ));
    let result = work.await;
    let _ = stop.send(());
    if tokio::time::timeout(RECOVERY_SERVER_STOP, &mut server)
        .await
        .is_err()
    {
        server.abort();
        let _ = server.await;
    }
    // The accept task ends once the server dropped its connections' receiver.
    let _ = incoming.task.await;
    let listener = Arc::try_unwrap(listener)
        .map_err(|_| ServerError::Task("the recovery-time server kept the socket".into()))?;
    Ok((result, listener))
}

/// The connection bounds of the configuration (see `connections`).
fn connection_limits(config: &Config) -> ConnectionLimits {
    let limits = &config.settings().limits;
    ConnectionLimits {
        connections_max: config.connections_max(),
        handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
        request_bodies_bytes_max: limits
            .request_bytes_max
            .saturating_mul(limits::REQUEST_BODIES_PER_CONNECTION_REQUESTS_MAX)
            .min(limits.request_bodies_bytes_max),
    }
}

/// A server builder with TLS when configured and every HTTP/2 bound of the daemon:
/// concurrent streams per connection, flow-control windows (what a client can make
/// the daemon buffer before it reads), frame and header sizes, the rapid-reset
/// guards, keepalive.
fn http2_server(config: &Config) -> Result<Server, ServerError> {
    let limits = &config.settings().limits;
    let mut builder = Server::builder();
    if let Some(files) = config.tls() {
        builder = builder.tls_config(
            tls::server_config(files)?.timeout(Duration::from_millis(limits.handshake_timeout_ms)),
        )?;
    }
    Ok(builder
        .max_concurrent_streams(limits.concurrent_streams_per_connection_max)
        .initial_stream_window_size(limits::HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::HTTP2_CONNECTION_WINDOW_BYTES)
        .max_frame_size(limits::HTTP2_FRAME_BYTES_MAX)
        .http2_max_header_list_size(limits::HTTP2_HEADER_LIST_BYTES_MAX)
        .http2_max_pending_accept_reset_streams(Some(
            limits::HTTP2_PENDING_ACCEPT_RESET_STREAMS_MAX,
        ))
        .http2_max_local_error_reset_streams(Some(limits::HTTP2_LOCAL_ERROR_RESET_STREAMS_MAX))
        .http2_keepalive_interval(Some(Duration::from_millis(limits.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(limits.keepalive_timeout_ms))))
}

/// Adds health and reflection, the services open to callers without a key, with
/// their small request bound.
fn with_health_and_reflection<L, H: Health>(
    mut server: Server<L>,
    health_service: HealthServer<H>,
) -> Result<Router<L>, ServerError>
where
    L: Clone,
{
    let open = limits::UNAUTHENTICATED_REQUEST_BYTES_MAX;
    Ok(server
        .add_service(health_service.max_decoding_message_size(open))
        .add_service(reflection().build_v1()?.max_decoding_message_size(open))
        .add_service(
            reflection()
                .build_v1alpha()?
                .max_decoding_message_size(open),
        ))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
}

/// A daemon with its sockets bound.
pub struct Bound {
    pub broker: Arc<Broker>,
    pub activity: Arc<Activity>,
    journal: Arc<WalJournal>,
    boot_epoch: u64,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    metrics_handle: Option<PrometheusHandle>,
    config: Config,
    /// Released when the daemon has stopped: `serve_after` consumes `self`.
    _data_dir_lock: DataDirLock,
}

/// The names health reports on: the whole server ("") and each broker service.
const HEALTH_SERVICES: [&str; 3] = [
    "",
    <SessionServiceServer<SessionApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
];

async fn report_health(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

impl Bound {
    /// The address of the metrics listener, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    fn serving_line(&self) -> ServingLine {
        ServingLine {
            addr: self.listener.local_addr().ok(),
            tls: self.config.tls().is_some(),
            metrics_addr: self.metrics_addr(),
        }
    }

    /// Serves `/metrics` from `handle` (the installed recorder) on the metrics socket.
    pub fn export_metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics_handle = Some(handle);
        self
    }

    /// Serves until `shutdown` resolves; see [`Bound::serve_after`].
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.serve_after(async { Ok(()) }, shutdown).await
    }

    /// Starts serving with health NOT_SERVING and broker calls refused (UNAVAILABLE)
    /// while `startup` runs (recovery belongs there), then serves until `shutdown`
    /// resolves, then drains: health NOT_SERVING, new broker calls refused, the
    /// listener closed, in-flight calls given the grace period; then the log is made
    /// durable and the audit record closed. Clients should wait for SERVING.
    pub async fn serve_after(
        self,
        startup: impl Future<Output = Result<(), ServerError>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let phase = Arc::new(PhaseCell::new(Phase::Starting));
        let (health, health_service) = tonic_health::server::health_reporter();
        report_health(&health, ServingStatus::NotServing).await;
        let router = self.router(Arc::clone(&phase), health_service)?;
        let serving_line = self.serving_line();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming =
            connections::limited_incoming(Arc::new(self.listener), connection_limits(&self.config));
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(
            incoming.connections,
            async {
                let _ = stopped.await;
            },
        ));
        let mut background = spawn_background(
            &self.broker,
            self.config.settings().metrics.per_org,
            self.metrics_listener.zip(self.metrics_handle),
        );
        background.push(tokio::spawn(take_snapshots(
            Arc::clone(&self.broker),
            Arc::clone(&self.journal),
            self.boot_epoch,
        )));
        if let Err(error) = startup.await {
            server.abort();
            return Err(error);
        }
        phase.set(Phase::Serving);
        let alarm = self.journal.alarm();
        report_serving(&health, alarm.as_ref()).await;
        // Only now: whoever waits for this line may call at once.
        serving_line.log();
        let alarm_watch = tokio::spawn(watch_log_alarm(
            Arc::clone(&self.journal),
            health.clone(),
            alarm,
        ));

        let result = tokio::select! {
            () = shutdown => {
                // Nothing may report SERVING once the drain said NOT_SERVING.
                alarm_watch.abort();
                let grace = Duration::from_millis(self.config.settings().shutdown_grace_ms);
                drain(&phase, &health, stop, &mut server, grace).await
            }
            joined = &mut server => flatten(joined),
        };
        alarm_watch.abort();
        for task in background {
            task.abort();
        }
        // The write-ahead log's final flush and fsync happen in `close`.
        self.broker.close().await.map_err(ServerError::Close)?;
        let grace = Duration::from_millis(self.config.settings().shutdown_grace_ms);
        if let Err(error) = self.activity.audit().close(grace).await {
            tracing::warn!(%error, "audit record not closed cleanly");
        }
        result
    }

    /// Every service behind the layers: the phase gate and telemetry, authentication
    /// from the headers, the request-body budget. Each service refuses requests past
    /// its own size from their 5-byte prefix: engine calls are small, admin calls up
    /// to `request_bytes_max` (1,000 emails).
    fn router<H: Health>(
        &self,
        phase: Arc<PhaseCell>,
        health_service: HealthServer<H>,
    ) -> Result<Router<EdgeLayers>, ServerError> {
        let limits = &self.config.settings().limits;
        let activity = &self.activity;
        let sessions = SessionServiceServer::new(SessionApi::new(
            Arc::clone(&self.broker),
            Arc::clone(activity),
        ))
        .max_decoding_message_size(limits::SESSION_REQUEST_BYTES_MAX)
        .max_encoding_message_size(limits::SESSION_RESPONSE_BYTES_MAX);
        let admin = AdminServiceServer::new(AdminApi::new(
            Arc::clone(&self.broker),
            Arc::clone(activity),
        ))
        .max_decoding_message_size(limits.request_bytes_max)
        .max_encoding_message_size(limits::ADMIN_RESPONSE_BYTES_MAX);
        let bodies = Arc::new(RequestBodies::new(
            limits.request_bodies_bytes_max,
            limits.request_bytes_max,
        ));
        let server = http2_server(&self.config)?
            .layer(RpcLayer::new(phase))
            .layer(AuthLayer::new(Arc::clone(&self.broker)))
            .layer(BodyBudgetLayer::new(bodies));
        Ok(with_health_and_reflection(server, health_service)?
            .add_service(sessions)
            .add_service(admin))
    }
}

/// The "seatbroker serving" log line, said once calls are answered.
struct ServingLine {
    addr: Option<SocketAddr>,
    tls: bool,
    metrics_addr: Option<SocketAddr>,
}

impl ServingLine {
    fn log(&self) {
        tracing::info!(
            addr = self.addr.map(|a| a.to_string()).unwrap_or_default(),
            tls = self.tls,
            metrics_addr = self.metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
            "seatbroker serving"
        );
    }
}

/// The layers of the serving router, outermost first.
type EdgeLayers = Stack<BodyBudgetLayer, Stack<AuthLayer, Stack<RpcLayer, Identity>>>;

/// Server reflection over our protos and health's; v1 and v1alpha are built from it.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

fn flatten(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match joined {
        Ok(result) => result.map_err(ServerError::from),
        Err(error) => Err(ServerError::Task(error.to_string())),
    }
}

/// The first half of shutdown: NOT_SERVING, refuse new broker calls, stop accepting,
/// and give in-flight calls `grace` to finish before cutting them.
async fn drain(
    phase: &PhaseCell,
    health: &HealthReporter,
    stop: tokio::sync::oneshot::Sender<()>,
    server: &mut ServerTask,
    grace: Duration,
) -> Result<(), ServerError> {
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "draining: NOT_SERVING, finishing in-flight calls"
    );
    phase.set(Phase::Draining);
    report_health(health, ServingStatus::NotServing).await;
    let _ = stop.send(());
    match tokio::time::timeout(grace, &mut *server).await {
        Ok(joined) => flatten(joined),
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "calls still in flight at the end of the grace period were cut"
            );
            server.abort();
            Ok(())
        }
    }
}

/// Health while serving. With the log's alarm on (a full disk), the daemon is
/// read-only: the whole server ("") and AdminService report NOT_SERVING, as etcd's
/// `/health` reports false with "ALARM NOSPACE" while it keeps serving reads;
/// SessionService stays SERVING because heartbeats and releases, which keep engines'
/// seats, still work (acquires answer UNAVAILABLE "disk full").
async fn report_serving(reporter: &HealthReporter, alarm: Option<&crate::wal::Alarm>) {
    let degraded = if alarm.is_some() {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    };
    let [whole, sessions, admin] = HEALTH_SERVICES;
    reporter.set_service_status(whole, degraded).await;
    reporter.set_service_status(admin, degraded).await;
    reporter
        .set_service_status(sessions, ServingStatus::Serving)
        .await;
}

/// How often the daemon looks at the log's alarm, for health and the metrics.
const LOG_ALARM_CHECK_INTERVAL: Duration = Duration::from_millis(limits::LOG_ALARM_CHECK_MS);

/// Follows the log's alarm (raised and cleared by the WAL writer, which retries the
/// reservation by itself): metrics, health and a log line on each change.
async fn watch_log_alarm(
    journal: Arc<WalJournal>,
    health: HealthReporter,
    mut reported: Option<crate::wal::Alarm>,
) {
    metrics::log_alarm(reported.as_ref());
    let mut tick = tokio::time::interval(LOG_ALARM_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let alarm = journal.alarm();
        if alarm == reported {
            continue;
        }
        match &alarm {
            Some(alarm) => tracing::error!(
                %alarm,
                "read-only: grants and admin changes answer UNAVAILABLE until the log can reserve room"
            ),
            None => tracing::warn!("the log reserved room again: serving grants and admin changes"),
        }
        metrics::log_alarm(alarm.as_ref());
        report_serving(&health, alarm.as_ref()).await;
        reported = alarm;
    }
}

/// The tasks that live as long as the server: expiry, metrics sampling and export.
fn spawn_background(
    broker: &Arc<Broker>,
    per_org: bool,
    metrics_export: Option<(TcpListener, PrometheusHandle)>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(sweep_expired_leases(Arc::clone(broker)))];
    if let Some((listener, handle)) = metrics_export {
        tasks.push(tokio::spawn(metrics::sample_forever(
            Arc::clone(broker),
            per_org,
        )));
        tasks.push(tokio::spawn(metrics::serve_http(listener, handle)));
    }
    tasks
}

/// Expires leases every [`limits::EXPIRY_TICK_MS`]. The work per tick is bounded by the
/// organizations plus the leases that expire, never by the live leases.
async fn sweep_expired_leases(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(limits::EXPIRY_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let expired = broker.leases().expire_due(broker.clock().now());
        if expired > 0 {
            tracing::debug!(expired, "leases expired");
        }
    }
}

/// How often the snapshot task asks the log whether a snapshot is due.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Writes a snapshot whenever the log has grown past its bounds (bytes, or records a
/// restart would replay), so that disk use and restart time stay bounded under endless
/// churn. A failed one (no space, no
/// descriptor) is retried after `SNAPSHOT_RETRY_MS_MIN`, doubling up to
/// `SNAPSHOT_RETRY_MS_MAX`: each try copies the admin state.
async fn take_snapshots(broker: Arc<Broker>, journal: Arc<WalJournal>, boot_epoch: u64) {
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retry_min = Duration::from_millis(limits::SNAPSHOT_RETRY_MS_MIN);
    let retry_max = Duration::from_millis(limits::SNAPSHOT_RETRY_MS_MAX);
    let mut backoff = retry_min;
    let mut next_try = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let live_leases = broker.leases().live_count() as u64;
        if !journal.snapshot_due(live_leases) || tokio::time::Instant::now() < next_try {
            continue;
        }
        match snapshot_now(&broker, &journal, boot_epoch).await {
            Ok(_) => backoff = retry_min,
            Err(error) => {
                tracing::error!(%error, retry_in_ms = backoff.as_millis() as u64, "snapshot failed; the log keeps growing until one succeeds");
                next_try = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(retry_max);
            }
        }
    }
}

/// Cuts the state at the current end of the log and installs it as a snapshot. All of
/// it runs on the blocking pool: the cut takes the admin write lock (for O(1)), and
/// encoding a million leases takes a good part of a second.
pub async fn snapshot_now(
    broker: &Arc<Broker>,
    journal: &Arc<WalJournal>,
    boot_epoch: u64,
) -> Result<usize, String> {
    let started = std::time::Instant::now();
    let wal = Arc::clone(journal.wal());
    let broker = Arc::clone(broker);
    let (lsn, bytes, leases) = tokio::task::spawn_blocking(move || {
        let (admin, lsn) = broker.admin_cut(|| wal.stats().last_assigned_lsn);
        durable::write_snapshot(&wal, lsn, &admin, broker.leases(), boot_epoch)
            .map(|(bytes, leases)| (lsn, bytes, leases))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    metrics::snapshot(started.elapsed(), bytes as u64);
    tracing::info!(
        lsn,
        bytes,
        leases,
        millis = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(bytes)
}
