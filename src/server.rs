//! The daemon's assembly: [`run`] starts it in one order, for the binary and the tests
//! alike, serves until its shutdown future resolves, and stops it in order.
//!
//! The start order: the `/metrics` socket and recorder (before the broker registers
//! its handles); one gRPC server on the caller's socket with health NOT_SERVING and
//! broker calls answered UNAVAILABLE ([`Phase::Starting`]); the data directory locked
//! and the log recovered ([`prepare`]) while that server already answers; the broker
//! services put behind their routes ([`AfterRecovery`]); SERVING. Connections accepted
//! while recovering stay open and go on being served: there is one server for the
//! daemon's whole life, so no call races a handover.
//!
//! The stop order: NOT_SERVING, stop accepting, let in-flight calls finish within the
//! grace period, make the log durable ([`Broker::close`]), close the audit record.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::activity::Activity;
use crate::api::channel::StreamRegistry;
use crate::api::guard::{AuthLayer, AuthService, BodyBudgetLayer, GuardFuture, RequestBodies};
use crate::api::{AdminApi, SessionApi};
use crate::audit::{AuditAdmission, AuditError, AuditLog, AuditOptions};
use crate::auth::{self, OperatorKeyError};
use crate::broker::{AdminObserver, Broker};
use crate::clock::{Clock, SystemClock};
use crate::cluster::election::{self, Leadership};
use crate::cluster::etcd::{Etcd, EtcdError};
use crate::cluster::journal::EtcdJournal;
use crate::cluster::recovery::Follower;
use crate::cluster::{ClusterError, Keys, NodeOptions, recovery, snapshot};
use crate::datadir::{self, DataDirLock, LockError};
use crate::domain::journal::Journal;
use crate::domain::{AdminState, Command, DomainError, OrgId, Principal};
use crate::leases::{LeaseEnd, LeaseObserver, LeaseRef, LeaseTable, LeaseTiming, RecoveringLeases};
use crate::limits;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::session_service_server::SessionServiceServer;
use crate::storage::durable::{self, OpenError, WalJournal};
use crate::telemetry::metrics::{self, MetricsError};
use crate::telemetry::rpc::{Phase, PhaseCell, RpcLayer};
use crate::tls::{self, TlsError};
use crate::wal::{RealFs, WalOptions};
use crate::web::WebLayer;

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
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("audit record: {0}")]
    Audit(#[from] AuditError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("making the log durable at shutdown: {0}")]
    Close(#[from] crate::broker::CloseError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the gRPC server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cluster mode: {0}")]
    Cluster(#[from] ClusterError),
    #[error(
        "this node stopped leading its cluster ({0}); it exits so that its supervisor restarts it as a standby"
    )]
    LeadershipLost(String),
    /// etcd refused this node: its certificate, or its user and password; the message
    /// names the setting to fix.
    #[error("cluster mode: {0}")]
    EtcdRefused(String),
}

/// What [`run`] tells its caller as the daemon starts.
#[derive(Debug)]
pub enum Started<'a> {
    /// The log is recovered. A key made for a new data directory is here once, for
    /// the caller to show; only its hash is kept, and it is never logged.
    Recovered {
        generated_operator_key: Option<&'a str>,
    },
    /// Broker calls are answered, and health says SERVING.
    Serving {
        addr: SocketAddr,
        metrics_addr: Option<SocketAddr>,
    },
}

/// Binds a socket of the daemon. The caller binds the gRPC socket before [`run`], so
/// that it knows the address at once (port 0) and clients reach health (NOT_SERVING)
/// rather than a refused connection while the log is recovered.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Runs the daemon on `listener` (see the module's start and stop order), telling
/// `started` of each step, until `shutdown` resolves. Process-wide setup (logging, the
/// descriptor limit behind `Config::lower_connections_max`) is the caller's.
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut started: impl FnMut(Started<'_>) + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let settings = config.settings();
    let addr = local_addr(&listener, settings.listen)?;
    if config.tls().is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "serving plaintext gRPC on a non-loopback address (--insecure): API keys cross the network in the clear"
        );
    }
    let metrics_export = match settings.metrics.listen {
        Some(metrics_addr) => Some((bind(metrics_addr).await?, metrics::install()?)),
        None => None,
    };
    let metrics_addr = match &metrics_export {
        Some((listener, _)) => Some(local_addr(listener, addr)?),
        None => None,
    };
    let edge = Edge::start(&config, listener).await?;
    // `/metrics` answers from the start: a cluster's standby, which may wait for ever,
    // reports how far it follows the log.
    let sampled = metrics_export.is_some();
    let metrics_http = metrics_export.map(|(listener, handle)| {
        AbortOnDrop(tokio::spawn(metrics::serve_http(
            listener,
            handle,
            settings.metrics.per_org,
        )))
    });

    // A stop signal during recovery is acted on once recovery is done (a second one
    // exits at once, see `shutdown`): the daemon then stops without serving.
    let mut shutdown = std::pin::pin!(shutdown);
    let phase = Arc::clone(&edge.phase);
    let mut recovery = std::pin::pin!(prepare(&config, &phase, addr));
    let (recovered, stop_requested) = tokio::select! {
        recovered = &mut recovery => (recovered, false),
        () = &mut shutdown => {
            if settings.cluster.enabled() {
                // A standby may wait for ever: it stops at once, holding nothing.
                return edge.drain(Duration::from_millis(settings.shutdown_grace_ms)).await;
            }
            (recovery.await, true)
        }
    };
    let prepared = match recovered {
        Ok(prepared) => prepared,
        Err(error) => {
            edge.server.abort();
            return Err(error);
        }
    };
    // The usage series know each quota from now on (later changes come from
    // `admin_changed`).
    prepared.activity.quotas_at_start(&prepared.broker.quotas());
    edge.services.install(
        &config,
        &prepared.broker,
        &prepared.activity,
        &prepared.streams,
    );
    started(Started::Recovered {
        generated_operator_key: prepared.generated_operator_key.as_deref(),
    });
    let mut background = spawn_background(&prepared.broker, settings.metrics.per_org, sampled);
    let snapshots = match &prepared.log {
        Log::Local(journal) => SnapshotTarget::Local(Arc::clone(journal)),
        Log::Cluster(term) => SnapshotTarget::Cluster(Box::new(ClusterSnapshots {
            etcd: term.etcd.clone(),
            keys: term.keys.clone(),
            fence_revision: term.leadership.revision,
            journal: Arc::clone(&term.journal),
            records_min: term.snapshot_records,
            compacted_at: None,
        })),
    };
    background.push(tokio::spawn(take_snapshots(
        Arc::clone(&prepared.broker),
        snapshots,
        prepared.boot_epoch,
    )));
    let grace = Duration::from_millis(settings.shutdown_grace_ms);
    let result = if stop_requested {
        edge.drain(grace).await
    } else {
        edge.report_serving(&prepared.log).await;
        // Only now: whoever waits for this line may call at once.
        log_serving(addr, config.tls().is_some(), metrics_addr);
        started(Started::Serving { addr, metrics_addr });
        let audit = prepared.activity.audit().admission();
        edge.serve_until(shutdown, &prepared.log, audit, grace)
            .await
    };
    for task in background {
        task.abort();
    }
    // The write-ahead log's final flush and fsync happen in `close`.
    prepared.broker.close().await?;
    if let Log::Cluster(term) = prepared.log {
        // A standby takes over at once rather than one election TTL later.
        term.leadership.resign(&term.etcd).await;
    }
    if let Err(error) = prepared.activity.audit().close(grace).await {
        tracing::warn!(%error, "audit record not closed cleanly");
    }
    drop(metrics_http);
    // The data directory's lock is let go of last, with `prepared`.
    drop(prepared.data_dir_lock);
    result
}

/// The gRPC server of the daemon's whole life, and what steers it.
struct Edge {
    phase: Arc<PhaseCell>,
    health: HealthReporter,
    services: BrokerServices,
    server: ServerTask,
    /// Stops accepting and lets the connections finish their calls.
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Edge {
    /// Serves health (NOT_SERVING), reflection, and broker calls answered UNAVAILABLE
    /// (phase Starting) on `listener`.
    async fn start(config: &Config, listener: TcpListener) -> Result<Edge, ServerError> {
        let phase = Arc::new(PhaseCell::new(Phase::Starting));
        let (health, health_service) = tonic_health::server::health_reporter();
        report_health(&health, ServingStatus::NotServing).await;
        let services = BrokerServices::default();
        let router = router(config, Arc::clone(&phase), health_service, &services)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The handshakes run in `connections`, which logs the refused ones.
        let tls = config.tls().map(tls::server_acceptor).transpose()?;
        let incoming =
            connections::limited_incoming(Arc::new(listener), connection_limits(config), tls);
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            incoming.connections,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Edge {
            phase,
            health,
            services,
            server,
            stop,
        })
    }

    /// Phase Serving, and health as the log's alarm says.
    async fn report_serving(&self, log: &Log) {
        self.phase.set(Phase::Serving);
        let alarm = match log {
            Log::Local(journal) => journal.alarm(),
            Log::Cluster(_) => None,
        };
        report_serving(&self.health, alarm.as_ref(), false).await;
    }

    /// Serves until `shutdown` resolves (then drains) or the server fails, following
    /// the log's alarm and the audit record's admission meanwhile.
    ///
    /// A cluster's leader serves until its leadership is lost too: it then refuses
    /// every broker call at once (the journal already refuses writes), cuts the calls
    /// in flight, and returns [`ServerError::LeadershipLost`].
    async fn serve_until(
        mut self,
        shutdown: impl Future<Output = ()>,
        log: &Log,
        audit: AuditAdmission,
        grace: Duration,
    ) -> Result<(), ServerError> {
        let journal = match log {
            Log::Local(journal) => Some(Arc::clone(journal)),
            Log::Cluster(_) => None,
        };
        let degradations = tokio::spawn(watch_degradations(journal, audit, self.health.clone()));
        let lost = async {
            match log {
                Log::Cluster(term) => term.leadership.signal().lost().await,
                Log::Local(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            () = shutdown => {
                // Nothing may report SERVING once the drain said NOT_SERVING.
                degradations.abort();
                self.drain(grace).await
            }
            reason = lost => {
                // The journal already refuses: calls in flight get their UNAVAILABLE.
                self.drain(LEADERSHIP_LOST_GRACE).await?;
                Err(ServerError::LeadershipLost(reason))
            }
            joined = &mut self.server => flatten(joined),
        };
        degradations.abort();
        result
    }

    /// The first half of shutdown: NOT_SERVING, refuse new broker calls, stop
    /// accepting, and give in-flight calls `grace` to finish before cutting them.
    async fn drain(mut self, grace: Duration) -> Result<(), ServerError> {
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "draining: NOT_SERVING, finishing in-flight calls"
        );
        self.phase.set(Phase::Draining);
        report_health(&self.health, ServingStatus::NotServing).await;
        let _ = self.stop.send(());
        // Open session streams hear `draining` and close, so they do not hold the
        // drain; their leases stay live for their TTL.
        if let Some(streams) = self.services.streams.get() {
            streams.drain(u32::try_from(grace.as_millis()).unwrap_or(u32::MAX));
        }
        match tokio::time::timeout(grace, &mut self.server).await {
            Ok(joined) => flatten(joined),
            Err(_) => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "calls still in flight at the end of the grace period were cut"
                );
                self.server.abort();
                Ok(())
            }
        }
    }
}

/// How long a leader that lost its leadership lets calls in flight take to be
/// answered (UNAVAILABLE, from the journal) before it cuts them and exits.
const LEADERSHIP_LOST_GRACE: Duration = Duration::from_millis(250);

/// A recovered daemon: its broker and the operator key it generated, if any.
struct Prepared {
    broker: Arc<Broker>,
    activity: Arc<Activity>,
    /// The open session streams (told of lease ends and admin changes).
    streams: Arc<StreamRegistry>,
    generated_operator_key: Option<String>,
    log: Log,
    boot_epoch: u64,
    /// Held until the daemon stops (see [`datadir`]).
    data_dir_lock: DataDirLock,
}

/// Where the daemon's log lives.
enum Log {
    /// The local write-ahead log (a single node).
    Local(Arc<WalJournal>),
    /// etcd, while this node leads its cluster.
    Cluster(Box<ClusterTerm>),
}

/// A cluster leader's term: its etcd client, its leadership and its journal.
struct ClusterTerm {
    etcd: Etcd,
    keys: Keys,
    leadership: Leadership,
    journal: Arc<EtcdJournal>,
    snapshot_records: u64,
}

/// What either recovery rebuilt.
struct Rebuilt {
    admin: AdminState,
    leases: LeaseTable,
    journal: Arc<dyn Journal>,
    log: Log,
    boot_epoch: u64,
}

/// The log lives in this subdirectory of the data directory.
const WAL_DIR: &str = "wal";

/// Opens the data directory and the audit record, recovers the state from the log and
/// builds the broker (the configuration was checked when it was made). The metrics
/// recorder, if any, is installed before.
///
/// In cluster mode the node first campaigns (a standby meanwhile, naming the leader
/// through `phase`), then rebuilds the state from etcd's log once elected.
async fn prepare(
    config: &Config,
    phase: &Arc<PhaseCell>,
    addr: SocketAddr,
) -> Result<Prepared, ServerError> {
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
    let streams = Arc::new(StreamRegistry::new());
    let observers = Arc::new(DaemonObservers {
        activity: Arc::clone(&activity),
        streams: Arc::clone(&streams),
    });
    let leases_per_org_max = settings.limits.leases_per_org_max;
    let fresh_leases = move || RecoveringLeases::new(timing, leases_per_org_max);
    let observer = Arc::clone(&observers) as Arc<dyn LeaseObserver>;
    let rebuilt = if settings.cluster.enabled() {
        lead_cluster(config, phase, addr, fresh_leases, observer).await?
    } else {
        recover_local(config, fresh_leases(), observer).await?
    };
    let broker = Arc::new(Broker::new(
        rebuilt.admin,
        rebuilt.leases,
        operator,
        rebuilt.journal,
        clock,
        observers as _,
    ));
    Ok(Prepared {
        broker,
        activity,
        streams,
        generated_operator_key,
        log: rebuilt.log,
        boot_epoch: rebuilt.boot_epoch,
        data_dir_lock,
    })
}

/// Recovers the data directory's log.
async fn recover_local(
    config: &Config,
    leases: RecoveringLeases,
    observer: Arc<dyn LeaseObserver>,
) -> Result<Rebuilt, ServerError> {
    let settings = config.settings();
    let opened = durable::open(
        &settings.data_dir.join(WAL_DIR),
        Arc::new(RealFs),
        WalOptions {
            commit_delay: Duration::from_micros(settings.wal.commit_delay_us.into()),
            ..WalOptions::default()
        },
        leases,
        observer,
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
    Ok(Rebuilt {
        admin: opened.admin,
        leases: opened.leases,
        journal: opened.journal.clone(),
        log: Log::Local(opened.journal),
        boot_epoch: opened.boot_epoch,
    })
}

/// The options of this node of a cluster, from its settings and bound address.
fn node_options(config: &Config, addr: SocketAddr) -> NodeOptions {
    let cluster = &config.settings().cluster;
    NodeOptions {
        endpoints: cluster.etcd_endpoints.clone(),
        cluster_name: cluster.cluster_name.clone(),
        node_name: cluster.node_name.clone(),
        advertise_addr: cluster
            .advertise_addr
            .clone()
            .unwrap_or_else(|| addr.to_string()),
        election_ttl: Duration::from_secs(cluster.election_ttl_s.into()),
        snapshot_records: cluster.snapshot_records,
    }
}

/// Stands by until this node is elected, following etcd's log meanwhile (a hot
/// standby), then catches up its tail and leads.
async fn lead_cluster(
    config: &Config,
    phase: &Arc<PhaseCell>,
    addr: SocketAddr,
    fresh_leases: impl Fn() -> RecoveringLeases + Send + Sync + 'static,
    observer: Arc<dyn LeaseObserver>,
) -> Result<Rebuilt, ServerError> {
    let options = node_options(config, addr);
    let keys = Keys::new(&options.cluster_name);
    let access = config
        .etcd_access()
        .map_err(|error| ServerError::EtcdRefused(error.to_string()))?;
    let etcd = Etcd::connect(&options.endpoints, options.request_timeout(), access)
        .map_err(ClusterError::from)?;
    first_contact(&etcd, &keys, &options, &etcd_tls_files(config)).await?;
    tracing::info!(node = %options.node_name, cluster = %options.cluster_name, advertise = %options.advertise_addr, "seatbroker standing by");
    let on_leader = |leader: &str| phase.stand_by(leader);
    let mut follower = Follower::new(fresh_leases);
    // Following never ends by itself: the campaign's end stops it, between two
    // groups.
    let leadership = tokio::select! {
        leadership = election::campaign(&etcd, &keys, &options, &on_leader) => leadership,
        () = follower.follow(&etcd, &keys) => unreachable!("following ends only when dropped"),
    };
    phase.set(Phase::Starting);
    tracing::info!(
        applied_seq = follower.applied_seq(),
        live_leases = follower.live_leases(),
        "elected: catching up the tail of the cluster's log"
    );
    let recovered = match recovery::recover(&etcd, &keys, &leadership, follower, observer).await {
        Ok(recovered) => recovered,
        Err(ClusterError::LeadershipLost(reason)) => {
            return Err(ServerError::LeadershipLost(reason));
        }
        Err(error) => return Err(error.into()),
    };
    metrics::recovery(recovered.recovery_time, recovered.records_replayed);
    tracing::info!(
        groups = recovered.groups_replayed,
        records = recovered.records_replayed,
        boot_epoch = recovered.boot_epoch,
        live_leases = recovered.leases.live_count(),
        millis = recovered.recovery_time.as_millis() as u64,
        "recovered the cluster's log from etcd"
    );
    let journal: Arc<EtcdJournal> = recovered.journal;
    Ok(Rebuilt {
        admin: recovered.admin,
        leases: recovered.leases,
        journal: journal.clone(),
        log: Log::Cluster(Box::new(ClusterTerm {
            etcd,
            keys,
            leadership,
            journal,
            snapshot_records: options.snapshot_records,
        })),
        boot_epoch: recovered.boot_epoch,
    })
}

/// Waits until etcd answers this node's first call, retrying while etcd cannot be
/// reached (as the campaign would); refuses to start when etcd refuses the node: a
/// certificate that does not verify, or a user or password it does not know.
async fn first_contact(
    etcd: &Etcd,
    keys: &Keys,
    options: &NodeOptions,
    tls_files: &tls::ClientTlsFiles,
) -> Result<(), ServerError> {
    let mut warned_at: Option<tokio::time::Instant> = None;
    loop {
        let error = match etcd.check_access(&keys.election).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if let Some(refusal) = etcd_refusal(&error, tls_files) {
            return Err(ServerError::EtcdRefused(refusal));
        }
        if let Some(refusal) =
            client_certificate_refusal(&error, &options.endpoints, tls_files).await
        {
            return Err(ServerError::EtcdRefused(refusal));
        }
        if warned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
            tracing::warn!(%error, "etcd does not answer; retrying");
            warned_at = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(options.standby_poll_interval()).await;
    }
}

/// The TLS files of `[cluster]` (`etcd_ca`, `etcd_cert`, `etcd_key`).
fn etcd_tls_files(config: &Config) -> tls::ClientTlsFiles {
    let cluster = &config.settings().cluster;
    tls::ClientTlsFiles {
        ca: cluster.etcd_ca.clone(),
        cert: cluster.etcd_cert.clone(),
        key: cluster.etcd_key.clone(),
    }
}

/// Whether etcd refused this node's client certificate (or its absence), when a call
/// failed as if the connection broke. A TLS 1.3 server refuses a client certificate
/// only after the client's side of the handshake is done: the alert that says why
/// comes with the first request, and hyper may drop it, so the call shows only a
/// closed connection. One probe handshake per `https://` endpoint with the node's own
/// files reads the alert (as the CLI's `client::explain_refusal` does). `None` when no
/// endpoint refused (etcd down or unreachable: retrying may cure it).
async fn client_certificate_refusal(
    error: &EtcdError,
    endpoints: &[String],
    tls_files: &tls::ClientTlsFiles,
) -> Option<String> {
    let EtcdError::Call(status) = error else {
        return None;
    };
    let transport_failure = matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    );
    if !transport_failure || tls_files.ca.is_none() {
        return None;
    }
    let config = tls::client_probe_config(tls_files).ok()?;
    for endpoint in endpoints.iter().filter(|e| e.starts_with("https://")) {
        let Some(failure) = crate::client::probe_handshake(endpoint, config.clone()).await else {
            continue;
        };
        if let Some(cause) = tls::tls_failure(&failure) {
            return Some(tls_refusal_message(
                &format!("etcd at {endpoint}: {cause}"),
                tls_files,
            ));
        }
    }
    None
}

/// What an operator fixes after a TLS failure with etcd, naming the settings: an alert
/// etcd sent is its refusal of this node's client certificate (or of its absence);
/// any other failure is this node's refusal of etcd's certificate.
fn tls_refusal_message(cause: &str, tls_files: &tls::ClientTlsFiles) -> String {
    if !cause.contains("received fatal alert") {
        return format!(
            "the TLS handshake with etcd failed ({cause}): check cluster.etcd_ca (--etcd-ca: the CA that signed etcd's certificate), and cluster.etcd_cert and etcd_key when etcd requires client certificates"
        );
    }
    let refused = match (&tls_files.cert, &tls_files.key) {
        (Some(_), Some(_)) => "etcd does not accept this node's client certificate",
        _ => "etcd requires a client certificate and this node gives none",
    };
    format!(
        "{refused} ({cause}): set cluster.etcd_cert and cluster.etcd_key (--etcd-cert, \
         --etcd-key) to a certificate and key signed by the CA etcd trusts for clients (its \
         --trusted-ca-file), and cluster.etcd_ca (--etcd-ca) to the CA that signed etcd's \
         certificate"
    )
}

/// What an operator must fix when etcd refused this node, naming the setting; `None`
/// for a failure that retrying may cure (etcd down, unreachable).
fn etcd_refusal(error: &EtcdError, tls_files: &tls::ClientTlsFiles) -> Option<String> {
    match error {
        EtcdError::AuthFailed { .. } => Some(format!(
            "{error}: check cluster.etcd_user (--etcd-user) and its password ({} or cluster.etcd_password_file)",
            crate::config::ETCD_PASSWORD_ENV
        )),
        EtcdError::Call(status) => {
            let source = std::error::Error::source(status);
            let chain = match source {
                Some(source) => tls::source_chain(source),
                None => status.message().to_owned(),
            };
            let cause = source.and_then(tls::tls_failure).or_else(|| {
                chain
                    .contains("invalid peer certificate")
                    .then(|| chain.clone())
            });
            if let Some(cause) = cause {
                return Some(tls_refusal_message(&cause, tls_files));
            }
            (chain.contains("frame with invalid size") || chain.contains("FRAME_SIZE_ERROR")).then(|| {
                "etcd answers in TLS: give https:// cluster.etcd_endpoints and cluster.etcd_ca (--etcd-ca)".to_owned()
            })
        }
        EtcdError::Endpoint { .. } => Some(error.to_string()),
    }
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

/// A server builder with every HTTP/2 bound of the daemon (TLS is `connections`'):
/// concurrent streams per connection, flow-control windows (what a client can make
/// the daemon buffer before it reads), frame and header sizes, the rapid-reset
/// guards, keepalive. HTTP/1.1 is accepted too, for browsers and `curl` (the console
/// and the JSON API, see `web`), one request at a time per connection; the bounds of
/// `connections` apply to both: the cap, the handshake deadline (which bounds the
/// first request's headers) and the idle deadline, which for an HTTP/1 connection is
/// the handshake timeout too and so bounds later requests' headers (tonic 0.14.5 gives
/// hyper no timer, so hyper's own HTTP/1 header-read timeout is off).
fn http2_server(config: &Config) -> Result<Server, ServerError> {
    let limits = &config.settings().limits;
    Ok(Server::builder()
        .accept_http1(true)
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

/// Every service behind the layers: the phase gate and telemetry, the request-body
/// budget; the broker services behind authentication from the headers. Each service
/// refuses requests past its own size from their 5-byte prefix: health and reflection
/// (open to callers without a key) 16 KiB, engine calls small, admin calls up to
/// `request_bytes_max` (1,000 emails).
fn router<H: Health>(
    config: &Config,
    phase: Arc<PhaseCell>,
    health_service: HealthServer<H>,
    services: &BrokerServices,
) -> Result<Router<EdgeLayers>, ServerError> {
    let limits = &config.settings().limits;
    let bodies = Arc::new(RequestBodies::new(
        limits.request_bodies_bytes_max,
        limits.request_bytes_max,
    ));
    let open = limits::UNAUTHENTICATED_REQUEST_BYTES_MAX;
    Ok(http2_server(config)?
        // Outermost: the console's files, and JSON calls sent down as gRPC calls (their
        // JSON charged to the same budget as gRPC bodies).
        .layer(WebLayer::new(limits.request_bytes_max, Arc::clone(&bodies)))
        .layer(RpcLayer::new(phase))
        .layer(BodyBudgetLayer::new(bodies))
        .add_service(health_service.max_decoding_message_size(open))
        .add_service(reflection().build_v1()?.max_decoding_message_size(open))
        .add_service(
            reflection()
                .build_v1alpha()?
                .max_decoding_message_size(open),
        )
        .add_service(services.sessions.clone())
        .add_service(services.admin.clone()))
}

/// The layers of the router, outermost first: the web (console and JSON), the phase
/// gate and telemetry, then the request-body budget.
type EdgeLayers = Stack<BodyBudgetLayer, Stack<RpcLayer, Stack<WebLayer, Identity>>>;

/// The broker services, served from the start but built only once the log is
/// recovered (they need the broker).
#[derive(Default)]
struct BrokerServices {
    sessions: AfterRecovery<AuthService<SessionServiceServer<SessionApi>>>,
    admin: AfterRecovery<AuthService<AdminServiceServer<AdminApi>>>,
    /// The session streams, drained at shutdown.
    streams: OnceLock<Arc<StreamRegistry>>,
}

impl BrokerServices {
    /// Puts the services of `broker` behind their routes.
    fn install(
        &self,
        config: &Config,
        broker: &Arc<Broker>,
        activity: &Arc<Activity>,
        streams: &Arc<StreamRegistry>,
    ) {
        let limits = &config.settings().limits;
        let auth = AuthLayer::new(Arc::clone(broker));
        let api = SessionApi::new(
            Arc::clone(broker),
            Arc::clone(activity),
            Arc::clone(streams),
        );
        // A streamed batch of events is larger than any unary answer.
        let sessions = SessionServiceServer::new(api)
            .max_decoding_message_size(limits::CHANNEL_REQUEST_BYTES_MAX)
            .max_encoding_message_size(limits::CHANNEL_RESPONSE_BYTES_MAX);
        let _ = self.streams.set(Arc::clone(streams));
        let admin =
            AdminServiceServer::new(AdminApi::new(Arc::clone(broker), Arc::clone(activity)))
                .max_decoding_message_size(limits.request_bytes_max)
                .max_encoding_message_size(limits::ADMIN_RESPONSE_BYTES_MAX);
        self.sessions.install(auth.layer(sessions));
        self.admin.install(auth.layer(admin));
    }
}

/// A service routed from the start whose implementation arrives after recovery. The
/// phase gate answers every broker call UNAVAILABLE until then, so its own refusal is
/// only a fallback.
struct AfterRecovery<S> {
    service: Arc<OnceLock<S>>,
}

impl<S> Default for AfterRecovery<S> {
    fn default() -> Self {
        AfterRecovery {
            service: Arc::new(OnceLock::new()),
        }
    }
}

impl<S> Clone for AfterRecovery<S> {
    fn clone(&self) -> Self {
        AfterRecovery {
            service: Arc::clone(&self.service),
        }
    }
}

impl<S> AfterRecovery<S> {
    fn install(&self, service: S) {
        assert!(
            self.service.set(service).is_ok(),
            "a broker service is installed once"
        );
    }
}

impl<S: NamedService> NamedService for AfterRecovery<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for AfterRecovery<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = GuardFuture<Oneshot<S, http::Request<Body>>, http::Response<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the installed service's, asked by `oneshot` with each call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.service.get() {
            Some(service) => GuardFuture::Called {
                inner: service.clone().oneshot(request),
            },
            None => GuardFuture::Refused {
                response: Some(
                    tonic::Status::unavailable(
                        "seatbroker is starting: it is recovering its log; retry shortly",
                    )
                    .into_http(),
                ),
            },
        }
    }
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })
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

/// The "seatbroker serving" log line, said once calls are answered (the child-process
/// harnesses and `bench-restart` read the addresses from it).
fn log_serving(addr: SocketAddr, tls: bool, metrics_addr: Option<SocketAddr>) {
    tracing::info!(
        addr = addr.to_string(),
        tls,
        metrics_addr = metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        "seatbroker serving"
    );
}

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
        Err(error) => Err(ServerError::Task(error)),
    }
}

/// Health while serving. With the log's alarm on (a full disk), the daemon is
/// read-only: the whole server ("") and AdminService report NOT_SERVING, as etcd's
/// `/health` reports false with "ALARM NOSPACE" while it keeps serving reads;
/// SessionService stays SERVING because heartbeats and releases, which keep engines'
/// seats, still work (acquires answer UNAVAILABLE "disk full").
///
/// While the audit record refuses admin changes (it cannot write their events),
/// `AdminService` alone reports NOT_SERVING: engines are served as before, and an
/// admin client or load balancer watching the admin service sees why its changes fail.
async fn report_serving(
    reporter: &HealthReporter,
    alarm: Option<&crate::wal::Alarm>,
    audit_refuses: bool,
) {
    let status_if = |down: bool| {
        if down {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        }
    };
    let [whole, sessions, admin] = HEALTH_SERVICES;
    reporter
        .set_service_status(whole, status_if(alarm.is_some()))
        .await;
    reporter
        .set_service_status(admin, status_if(alarm.is_some() || audit_refuses))
        .await;
    reporter
        .set_service_status(sessions, ServingStatus::Serving)
        .await;
}

/// How often the daemon looks at the log's alarm and the audit record's admission, for
/// health and the metrics.
const LOG_ALARM_CHECK_INTERVAL: Duration = Duration::from_millis(limits::LOG_ALARM_CHECK_MS);

/// What makes the daemon serve less than everything: the local log's read-only alarm
/// (raised and cleared by the WAL writer, which retries the reservation by itself) and
/// the audit record's refusal of admin changes (lifted by its writer once it can
/// write again).
#[derive(Clone, Debug, Default, PartialEq)]
struct Degradations {
    alarm: Option<crate::wal::Alarm>,
    /// Why the audit record refuses admin changes, while it does.
    audit_refusal: Option<String>,
}

impl Degradations {
    fn now(journal: Option<&WalJournal>, audit: &AuditAdmission) -> Self {
        Degradations {
            alarm: journal.and_then(WalJournal::alarm),
            audit_refusal: audit.admit().err().map(|refusal| refusal.to_string()),
        }
    }
}

/// Follows the degradations: metrics, health and a log line on each change.
async fn watch_degradations(
    journal: Option<Arc<WalJournal>>,
    audit: AuditAdmission,
    health: HealthReporter,
) {
    let mut reported = Degradations {
        alarm: journal.as_deref().and_then(WalJournal::alarm),
        audit_refusal: None,
    };
    metrics::log_alarm(reported.alarm.as_ref());
    let mut tick = tokio::time::interval(LOG_ALARM_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Degradations::now(journal.as_deref(), &audit);
        if now == reported {
            continue;
        }
        if now.alarm != reported.alarm {
            match &now.alarm {
                Some(alarm) => tracing::error!(
                    %alarm,
                    "read-only: grants and admin changes answer UNAVAILABLE until the log can reserve room"
                ),
                None => {
                    tracing::warn!("the log reserved room again: serving grants and admin changes")
                }
            }
            metrics::log_alarm(now.alarm.as_ref());
        }
        if now.audit_refusal.is_some() != reported.audit_refusal.is_some() {
            match &now.audit_refusal {
                Some(refusal) => tracing::error!(
                    %refusal,
                    "AdminService NOT_SERVING: admin changes are refused while the audit record cannot keep their events"
                ),
                None => tracing::warn!(
                    "the audit record writes again: AdminService SERVING, admin changes accepted"
                ),
            }
        }
        report_serving(&health, now.alarm.as_ref(), now.audit_refusal.is_some()).await;
        reported = now;
    }
}

/// Everyone told of lease events and admin changes: the account of them (`Activity`)
/// and the session streams holding the leases (`StreamRegistry`).
struct DaemonObservers {
    activity: Arc<Activity>,
    streams: Arc<StreamRegistry>,
}

impl LeaseObserver for DaemonObservers {
    fn granted(&self, org: &OrgId, lease: LeaseRef<'_>, active: u32) {
        self.activity.granted(org, lease, active);
    }

    fn renewed(&self, lease: LeaseRef<'_>, since_last_renewal: Duration) {
        self.activity.renewed(lease, since_last_renewal);
    }

    fn ended(
        &self,
        org: &OrgId,
        lease: LeaseRef<'_>,
        why: LeaseEnd,
        by: Option<&Principal>,
        active: u32,
    ) {
        self.activity.ended(org, lease, why, by, active);
        self.streams.ended(org, lease, why, by, active);
    }
}

impl AdminObserver for DaemonObservers {
    fn admit(&self) -> Result<(), DomainError> {
        self.activity.admit()
    }

    fn admin_changed(&self, principal: &Principal, command: &Command) {
        self.activity.admin_changed(principal, command);
        self.streams.admin_changed(command);
    }
}

/// The tasks that live as long as the broker: expiry and metrics sampling (the export
/// runs from the start, see [`run`]).
fn spawn_background(broker: &Arc<Broker>, per_org: bool, sampled: bool) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(sweep_expired_leases(Arc::clone(broker)))];
    if sampled {
        tasks.push(tokio::spawn(metrics::sample_forever(
            Arc::clone(broker),
            per_org,
        )));
    }
    tasks
}

/// A task aborted when its handle is dropped, on every way out of [`run`].
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        // Streams hear of an expired license within a tick.
        let ended = broker.end_expired_licenses();
        if ended > 0 {
            tracing::info!(
                ended,
                "sessions ended: their organization's license expired"
            );
        }
    }
}

/// How often the snapshot task asks the log whether a snapshot is due.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where the snapshot task writes: the local log's directory, or etcd.
enum SnapshotTarget {
    Local(Arc<WalJournal>),
    Cluster(Box<ClusterSnapshots>),
}

/// A cluster leader's snapshots (`cluster::snapshot`) and etcd's compaction.
struct ClusterSnapshots {
    etcd: Etcd,
    keys: Keys,
    fence_revision: i64,
    journal: Arc<EtcdJournal>,
    records_min: u64,
    /// When etcd's history was last compacted by this leader.
    compacted_at: Option<tokio::time::Instant>,
}

impl SnapshotTarget {
    fn due(&self, live_leases: u64) -> bool {
        match self {
            SnapshotTarget::Local(journal) => journal.snapshot_due(live_leases),
            SnapshotTarget::Cluster(cluster) => cluster
                .journal
                .snapshot_due(live_leases, cluster.records_min),
        }
    }

    async fn take(
        &mut self,
        broker: &Arc<Broker>,
        boot_epoch: u64,
    ) -> Result<crate::broker::SnapshotTaken, String> {
        match self {
            SnapshotTarget::Local(journal) => broker
                .snapshot_now(journal, boot_epoch)
                .await
                .map_err(|error| error.to_string()),
            SnapshotTarget::Cluster(cluster) => cluster.take(broker, boot_epoch).await,
        }
    }
}

impl ClusterSnapshots {
    /// Cuts the state at the journal's current end, writes the snapshot to etcd (which
    /// deletes the log it covers), then compacts etcd's history if it was not compacted
    /// for `limits::CLUSTER_COMPACTION_INTERVAL_MS`.
    async fn take(
        &mut self,
        broker: &Arc<Broker>,
        boot_epoch: u64,
    ) -> Result<crate::broker::SnapshotTaken, String> {
        let started = std::time::Instant::now();
        let (admin, cut) = broker.admin_cut(|| self.journal.cut());
        let cut = cut
            .await
            .map_err(|_| "the journal closed before the cut was durable".to_owned())?;
        let Some(seq) = cut.seq else {
            return Err("nothing is logged yet".into());
        };
        let broker = Arc::clone(broker);
        let written = snapshot::write(
            &self.etcd,
            &self.keys,
            self.fence_revision,
            seq,
            Box::new(move |sink| {
                durable::encode_snapshot(&admin, broker.leases(), boot_epoch, sink)
            }),
        )
        .await
        .map_err(|error| error.to_string())?;
        self.journal.snapshot_written(cut);
        let interval = Duration::from_millis(limits::CLUSTER_COMPACTION_INTERVAL_MS);
        if self.compacted_at.is_none_or(|at| at.elapsed() >= interval) {
            match self.etcd.compact(written.revision).await {
                Ok(()) => {
                    self.compacted_at = Some(tokio::time::Instant::now());
                    tracing::info!(revision = written.revision, "compacted etcd's history");
                }
                Err(error) => {
                    tracing::warn!(%error, "compacting etcd's history failed; retried after the next snapshot")
                }
            }
        }
        Ok(crate::broker::SnapshotTaken {
            lsn: seq,
            bytes: written.manifest.bytes as usize,
            leases: written.manifest.leases,
            took: started.elapsed(),
        })
    }
}

/// Writes a snapshot whenever the log has grown past its bounds (bytes, or records a
/// restart would replay), so that disk use (etcd's space, in cluster mode) and restart
/// time stay bounded under endless churn. A failed one (no space, no descriptor, etcd
/// away) is retried after `SNAPSHOT_RETRY_MS_MIN`, doubling up to
/// `SNAPSHOT_RETRY_MS_MAX`: each try copies the admin state.
async fn take_snapshots(broker: Arc<Broker>, mut target: SnapshotTarget, boot_epoch: u64) {
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retry_min = Duration::from_millis(limits::SNAPSHOT_RETRY_MS_MIN);
    let retry_max = Duration::from_millis(limits::SNAPSHOT_RETRY_MS_MAX);
    let mut backoff = retry_min;
    let mut next_try = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let live_leases = broker.leases().live_count() as u64;
        if !target.due(live_leases) || tokio::time::Instant::now() < next_try {
            continue;
        }
        match target.take(&broker, boot_epoch).await {
            Ok(taken) => {
                metrics::snapshot(taken.took, taken.bytes as u64);
                tracing::info!(
                    lsn = taken.lsn,
                    bytes = taken.bytes,
                    leases = taken.leases,
                    millis = taken.took.as_millis() as u64,
                    "snapshot written"
                );
                backoff = retry_min;
            }
            Err(error) => {
                tracing::error!(%error, retry_in_ms = backoff.as_millis() as u64, "snapshot failed; the log keeps growing until one succeeds");
                next_try = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(retry_max);
            }
        }
    }
}
