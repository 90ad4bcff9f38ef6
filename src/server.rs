//! The daemon: prepares the data directory and the operator key, builds the broker,
//! serves gRPC (sessions, admin, health) and runs the expiry sweeper until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::{AdminApi, SessionApi};
use crate::auth::{self, OperatorKey};
use crate::broker::Broker;
use crate::clock::{Clock, SystemClock};
use crate::leases::{LeaseTable, LeaseTiming};
use crate::limits;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::session_service_server::SessionServiceServer;
use crate::storage::durable::{self, OpenError, SnapshotCut, WalJournal};
use crate::wal::{RealFs, WalOptions};

/// Where the operator key comes from.
#[derive(Debug, Clone)]
pub enum OperatorKeySource {
    /// A key given in full (the `SEATBROKER_OPERATOR_KEY` environment variable).
    Given(String),
    /// The hash kept in the data directory; generated and printed on first start.
    DataDir,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub lease_ttl: Duration,
    pub operator_key: OperatorKeySource,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("operator key: {0}")]
    OperatorKey(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot recover the data directory: {0}")]
    Recovery(#[from] OpenError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

const OPERATOR_KEY_HASH_FILE: &str = "operator-key.sha256";

/// A daemon ready to serve: its broker and the operator key it generated, if any
/// (printed once by the caller, never stored).
pub struct Prepared {
    pub broker: Arc<Broker>,
    pub generated_operator_key: Option<String>,
    journal: Arc<WalJournal>,
    boot_epoch: u64,
    config: ServerConfig,
}

/// The log lives in this subdirectory of the data directory.
const WAL_DIR: &str = "wal";

/// Validates the configuration, opens the data directory, recovers the state from the
/// log and builds the broker.
pub async fn prepare(config: ServerConfig) -> Result<Prepared, ServerError> {
    let ttl_ms = config.lease_ttl.as_millis();
    if !(u128::from(limits::LEASE_TTL_MS_MIN)..=u128::from(limits::LEASE_TTL_MS_MAX))
        .contains(&ttl_ms)
    {
        return Err(ServerError::Config(format!(
            "lease TTL {ttl_ms} ms is outside {}..={} ms",
            limits::LEASE_TTL_MS_MIN,
            limits::LEASE_TTL_MS_MAX
        )));
    }
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let (operator, generated_operator_key) = operator_key(&config.operator_key, data_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let leases = LeaseTable::new(LeaseTiming::from_ttl(config.lease_ttl), 0);
    let opened = durable::open(
        &data_dir.join(WAL_DIR),
        Arc::new(RealFs),
        WalOptions::default(),
        leases,
    )
    .await?;
    tracing::info!(
        records = opened.records_replayed,
        boot_epoch = opened.boot_epoch,
        live_leases = opened.leases.live_count(),
        millis = opened.recovery_time.as_millis() as u64,
        "recovered the data directory"
    );
    let journal = opened.journal;
    let broker = Arc::new(Broker::new(
        opened.admin,
        opened.leases,
        operator,
        journal.clone(),
        clock,
    ));
    Ok(Prepared {
        broker,
        generated_operator_key,
        journal,
        boot_epoch: opened.boot_epoch,
        config,
    })
}

fn operator_key(
    source: &OperatorKeySource,
    data_dir: &Path,
) -> Result<(OperatorKey, Option<String>), ServerError> {
    if let OperatorKeySource::Given(text) = source {
        return Ok((
            OperatorKey::from_text(text).map_err(ServerError::OperatorKey)?,
            None,
        ));
    }
    let path = data_dir.join(OPERATOR_KEY_HASH_FILE);
    let io_error = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    ServerError::OperatorKey(format!("{} is not a SHA-256 in hex", path.display()))
                })?;
            Ok((OperatorKey::from_sha256(bytes), None))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = auth::generate_operator_key();
            let operator = OperatorKey::from_text(&key).map_err(ServerError::OperatorKey)?;
            write_durably(
                &path,
                format!("{}\n", hex::encode(operator.sha256())).as_bytes(),
            )
            .map_err(io_error)?;
            Ok((operator, Some(key)))
        }
        Err(error) => Err(io_error(error)),
    }
}

/// Writes a small file so that it is either absent or complete after a crash:
/// temporary file, fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(directory)?.sync_all()
}

impl Prepared {
    pub async fn bind(self) -> Result<(Bound, SocketAddr), ServerError> {
        let addr = self.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok((
            Bound {
                broker: self.broker,
                journal: self.journal,
                boot_epoch: self.boot_epoch,
                listener,
            },
            local,
        ))
    }
}

/// A daemon with its socket bound.
pub struct Bound {
    pub broker: Arc<Broker>,
    journal: Arc<WalJournal>,
    boot_epoch: u64,
    listener: TcpListener,
}

impl Bound {
    /// Serves until `shutdown` resolves, then stops accepting and finishes in-flight calls.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let broker = self.broker;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<SessionServiceServer<SessionApi>>()
            .await;
        health_reporter
            .set_serving::<AdminServiceServer<AdminApi>>()
            .await;

        let sweeper = tokio::spawn(sweep_expired_leases(Arc::clone(&broker)));
        let snapshotter = tokio::spawn(take_snapshots(
            Arc::clone(&broker),
            Arc::clone(&self.journal),
            self.boot_epoch,
        ));
        let sessions = SessionServiceServer::new(SessionApi::new(Arc::clone(&broker)))
            .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
            .max_encoding_message_size(limits::RESPONSE_BYTES_MAX);
        let admin = AdminServiceServer::new(AdminApi::new(Arc::clone(&broker)))
            .max_decoding_message_size(limits::REQUEST_BYTES_MAX)
            .max_encoding_message_size(limits::RESPONSE_BYTES_MAX);
        let result = Server::builder()
            .tcp_nodelay(true)
            .max_concurrent_streams(limits::CONCURRENT_STREAMS_PER_CONNECTION_MAX)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(sessions)
            .add_service(admin)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
            .await;
        sweeper.abort();
        snapshotter.abort();
        // Everything acknowledged is durable already; this flushes lease ends too.
        if let Err(error) = self.journal.wal().close() {
            tracing::error!(%error, "closing the log");
        }
        result.map_err(ServerError::from)
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
    }
}

/// How often the snapshot task asks the log whether a snapshot is due.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Writes a snapshot whenever the log has grown past its bound, so that disk use and
/// recovery time stay bounded under endless churn.
async fn take_snapshots(broker: Arc<Broker>, journal: Arc<WalJournal>, boot_epoch: u64) {
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !journal.wal().snapshot_due() {
            continue;
        }
        if let Err(error) = snapshot_now(&broker, &journal, boot_epoch).await {
            tracing::error!(%error, "snapshot failed; the log keeps growing until one succeeds");
        }
    }
}

/// Cuts the state at the current end of the log and installs it as a snapshot.
pub async fn snapshot_now(
    broker: &Arc<Broker>,
    journal: &Arc<WalJournal>,
    boot_epoch: u64,
) -> Result<usize, String> {
    let started = std::time::Instant::now();
    let wal = Arc::clone(journal.wal());
    let (admin, lsn) = broker.admin_cut(|| wal.stats().last_assigned_lsn);
    let leases = broker.leases().copy_all();
    let cut = SnapshotCut {
        lsn,
        admin,
        leases,
        boot_epoch,
    };
    let bytes = tokio::task::spawn_blocking(move || durable::install_snapshot(&wal, cut))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    tracing::info!(
        lsn,
        bytes,
        millis = started.elapsed().as_millis() as u64,
        "snapshot written"
    );
    Ok(bytes)
}
