//! The daemon in this process: `server::run`, as the binary starts it, on 127.0.0.1:0
//! with a temporary data directory and the test operator key, stopped through its
//! shutdown future. Most tests use it; [`super::Daemon`] is for what needs the real
//! binary (signals, kill -9, the command line, descriptor limits, failpoints).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use seatbroker::config::{Config, Settings, TlsSettings};
use seatbroker::datadir::LockError;
use seatbroker::server::{self, ServerError, Started};
use seatbroker::tls::ClientTlsFiles;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{DaemonApi, OPERATOR_KEY, certs};

/// How long a restart waits for the data directory's lock to be let go of.
const LOCK_RELEASE_DEADLINE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    /// What clients of this server present: empty for plaintext.
    pub client_tls: ClientTlsFiles,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub async fn start() -> TestServer {
    start_with_ttl(Duration::from_secs(30)).await
}

pub async fn start_with_ttl(ttl: Duration) -> TestServer {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    start_in(data_dir, ttl).await
}

/// Starts a daemon on an existing data directory (for restarts).
pub async fn start_in(data_dir: tempfile::TempDir, ttl: Duration) -> TestServer {
    start_configured(data_dir, |settings| settings.lease_ttl_ms = ttl_ms(ttl)).await
}

/// A lease TTL as the setting `lease_ttl_ms`.
pub fn ttl_ms(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_millis()).expect("a TTL within the setting's range")
}

/// The settings of every test daemon: an ephemeral loopback port, `data_dir`, and the
/// test operator key.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    Settings {
        operator_key: Some(OPERATOR_KEY.into()),
        ..Settings::for_data_dir(data_dir)
    }
}

/// Starts a daemon with the test settings changed by `configure`.
pub async fn start_configured(
    data_dir: tempfile::TempDir,
    configure: impl FnOnce(&mut Settings),
) -> TestServer {
    start_with_clients(data_dir, ClientTlsFiles::default(), configure).await
}

/// Starts a daemon over TLS with the test certificates; clients present the client
/// certificate when `mtls`, and the daemon then requires one.
pub async fn start_tls(certs: &certs::TestCerts, mtls: bool) -> TestServer {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    start_with_clients(data_dir, certs.client(mtls), |settings| {
        let files = certs.server(mtls);
        settings.tls = TlsSettings {
            cert: Some(files.cert),
            key: Some(files.key),
            client_ca: files.client_ca,
        };
    })
    .await
}

async fn start_with_clients(
    data_dir: tempfile::TempDir,
    client_tls: ClientTlsFiles,
    configure: impl FnOnce(&mut Settings),
) -> TestServer {
    let mut settings = test_settings(data_dir.path());
    configure(&mut settings);
    let config = Config::resolve(settings).expect("a valid test configuration");
    start_with_config(data_dir, client_tls, config).await
}

/// Starts a daemon with a configuration the test resolved itself (to change what no
/// setting does, such as `Config::lower_connections_max`), once it says SERVING.
pub async fn start_with_config(
    data_dir: tempfile::TempDir,
    client_tls: ClientTlsFiles,
    config: Config,
) -> TestServer {
    let running = run_until_serving(config)
        .await
        .unwrap_or_else(|error| panic!("the daemon did not start: {error}"));
    TestServer {
        addr: running.addr,
        data_dir,
        client_tls,
        shutdown: Some(running.shutdown),
        task: Some(running.task),
    }
}

/// Why a daemon with `config` refuses to start.
pub async fn refused_start(config: Config) -> ServerError {
    match run_until_serving(config).await {
        Ok(_) => panic!("the daemon started"),
        Err(error) => error,
    }
}

/// A daemon task that said SERVING, and what stops it.
struct Running {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// `server::run` until it says SERVING, or its error.
///
/// A start refused because the data directory's lock is held by this very process is
/// tried again: a child process that another test is starting holds a copy of every
/// open descriptor of this process from its fork until its exec closes them, the
/// `LOCK` of a daemon stopped a moment ago included; the flock lives as long as any
/// copy does.
async fn run_until_serving(config: Config) -> Result<Running, ServerError> {
    let deadline = Instant::now() + LOCK_RELEASE_DEADLINE;
    loop {
        let listener = server::bind(config.settings().listen).await?;
        let addr = listener.local_addr().expect("a bound address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let (serving, is_serving) = oneshot::channel::<()>();
        let mut serving = Some(serving);
        let mut task = tokio::spawn(server::run(
            config.clone(),
            listener,
            move |started| {
                if let Started::Serving { .. } = started {
                    if let Some(serving) = serving.take() {
                        let _ = serving.send(());
                    }
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        tokio::select! {
            Ok(()) = is_serving => {
                let task = tokio::spawn(async move {
                    task.await.expect("daemon task").expect("daemon serves");
                });
                return Ok(Running { addr, shutdown, task });
            }
            joined = &mut task => match joined.expect("daemon task") {
                Err(ServerError::Lock(LockError::Held {
                    holder_pid: Some(holder),
                    ..
                })) if holder == std::process::id() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => return Err(error),
                Ok(()) => panic!("the daemon stopped before it served"),
            },
        }
    }
}

impl DaemonApi for TestServer {
    fn url(&self) -> String {
        let scheme = if self.client_tls.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.addr)
    }

    fn client_tls(&self) -> &ClientTlsFiles {
        &self.client_tls
    }
}

impl TestServer {
    /// Stops the daemon and returns its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data_dir, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
