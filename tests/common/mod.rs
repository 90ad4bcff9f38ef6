//! The test harness: a real daemon on 127.0.0.1:0 with a temporary data directory,
//! and helpers that set up organizations through the real gRPC API.

#![allow(dead_code)]

pub mod certs;
pub mod daemon;

use std::net::SocketAddr;
use std::time::Duration;

use seatbroker::client::{self, Authorized, BearerKey};
use seatbroker::config::{Config, Settings, TlsSettings};
use seatbroker::proto::{
    self, admin_service_client::AdminServiceClient, session_service_client::SessionServiceClient,
};
use seatbroker::server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OPERATOR_KEY: &str = "test-operator-key-0123456789abcdef0123456789";
pub const KSE: i32 = proto::Product::Kse as i32;
pub const KRE: i32 = proto::Product::Kre as i32;

pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    /// What clients of this server present: empty for plaintext.
    pub client_tls: seatbroker::tls::ClientTlsFiles,
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
    start_with_clients(data_dir, Default::default(), configure).await
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
    client_tls: seatbroker::tls::ClientTlsFiles,
    configure: impl FnOnce(&mut Settings),
) -> TestServer {
    let mut settings = test_settings(data_dir.path());
    configure(&mut settings);
    let config = Config::resolve(settings).expect("a valid test configuration");
    start_with_config(data_dir, client_tls, config).await
}

/// Starts a daemon with a configuration the test resolved itself (to change what no
/// setting does, such as `Config::lower_connections_max`).
pub async fn start_with_config(
    data_dir: tempfile::TempDir,
    client_tls: seatbroker::tls::ClientTlsFiles,
    config: Config,
) -> TestServer {
    let prepared = prepare_when_unlocked(config).await;
    let (bound, addr) = prepared.bind().await.expect("daemon binds");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        bound
            .serve(async {
                let _ = stopped.await;
            })
            .await
            .expect("daemon serves");
    });
    let server = TestServer {
        addr,
        data_dir,
        client_tls,
        shutdown: Some(shutdown),
        task: Some(task),
    };
    wait_until_serving(&server.url(), &server.client_tls).await;
    server
}

/// Prepares the daemon, waiting while the data directory's lock is still held: a
/// restart in the same process can race the stopped daemon's last file descriptor,
/// which a child process forked meanwhile by another test holds until it execs.
async fn prepare_when_unlocked(config: Config) -> server::Prepared {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match server::prepare(config.clone()).await {
            Err(server::ServerError::Lock(seatbroker::datadir::LockError::Held { .. }))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            prepared => return prepared.expect("daemon prepares"),
        }
    }
}

/// Polls health until the daemon says SERVING (it refuses calls while starting).
pub async fn wait_until_serving(url: &str, tls: &seatbroker::tls::ClientTlsFiles) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = client::connect_with(url, tls).await {
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == 1) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon at {url} never said SERVING"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestServer {
    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        client::connect_with(&self.url(), &self.client_tls)
            .await
            .expect("connect")
    }

    pub async fn admin(&self, key: &str) -> AdminServiceClient<Authorized> {
        client::admin(self.channel().await, BearerKey::new(Some(key)).unwrap())
    }

    pub async fn session(&self, key: &str) -> SessionServiceClient<Authorized> {
        client::session(self.channel().await, BearerKey::new(Some(key)).unwrap())
    }

    pub async fn operator(&self) -> AdminServiceClient<Authorized> {
        self.admin(OPERATOR_KEY).await
    }

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

    /// Creates an organization whose owner is `owner@<org>.test`, adds `members`
    /// (local parts), and returns the owner's key and one key per member.
    pub async fn organization(
        &self,
        org: &str,
        kse_seats: u32,
        kre_sessions: u32,
        members: &[&str],
    ) -> Org {
        let mut operator = self.operator().await;
        let owner = format!("owner@{org}.test");
        operator
            .create_organization(proto::CreateOrganizationRequest {
                org_id: org.into(),
                display_name: format!("{org} Inc."),
                owner_email: owner.clone(),
                quota: Some(proto::Quota {
                    kse_seats,
                    kre_sessions,
                    expires_at_unix_ms: 0,
                }),
            })
            .await
            .expect("create organization");
        let owner_key = create_key(&mut operator, org, &owner).await;
        let mut member_keys = Vec::new();
        for local in members {
            let email = format!("{local}@{org}.test");
            operator
                .add_member(proto::AddMemberRequest {
                    org_id: org.into(),
                    email: email.clone(),
                    role: 0,
                })
                .await
                .expect("add member");
            member_keys.push((email.clone(), create_key(&mut operator, org, &email).await));
        }
        Org {
            id: org.into(),
            owner,
            owner_key,
            members: member_keys,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub async fn create_key(
    admin: &mut AdminServiceClient<Authorized>,
    org: &str,
    email: &str,
) -> String {
    admin
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: org.into(),
            email: email.into(),
            label: "test".into(),
        })
        .await
        .expect("create API key")
        .into_inner()
        .secret
}

pub struct Org {
    pub id: String,
    pub owner: String,
    pub owner_key: String,
    /// (email, API key) of each member, in the order given.
    pub members: Vec<(String, String)>,
}

impl Org {
    pub fn email(&self, i: usize) -> &str {
        &self.members[i].0
    }

    pub fn key(&self, i: usize) -> &str {
        &self.members[i].1
    }

    pub fn emails(&self) -> Vec<String> {
        self.members.iter().map(|(e, _)| e.clone()).collect()
    }

    pub async fn assign(
        &self,
        server: &TestServer,
        product: i32,
        emails: Vec<String>,
    ) -> Result<proto::AssignLicensesResponse, tonic::Status> {
        server
            .admin(&self.owner_key)
            .await
            .assign_licenses(proto::AssignLicensesRequest {
                org_id: self.id.clone(),
                product,
                emails,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn usage(&self, server: &TestServer, product: i32) -> proto::ProductUsage {
        server
            .admin(&self.owner_key)
            .await
            .get_usage(proto::GetUsageRequest {
                org_id: self.id.clone(),
                window_seconds: 0,
            })
            .await
            .expect("usage")
            .into_inner()
            .products
            .into_iter()
            .find(|p| p.product == product)
            .expect("product usage")
    }
}

pub fn acquire_request(product: i32, engine: &str) -> proto::AcquireRequest {
    proto::AcquireRequest {
        product,
        engine_id: engine.into(),
        hostname: "test-host".into(),
        label: String::new(),
    }
}

/// Acquires a session for `engine_id` and returns its lease; panics if refused.
pub async fn acquire_lease(
    engine: &mut SessionServiceClient<Authorized>,
    product: i32,
    engine_id: &str,
) -> proto::Lease {
    engine
        .acquire(acquire_request(product, engine_id))
        .await
        .unwrap_or_else(|status| panic!("acquire for {engine_id} refused: {status:?}"))
        .into_inner()
        .lease
        .expect("a granted acquire carries its lease")
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match result {
        Ok(value) => panic!("expected {code:?} ({needle}), got Ok({value:?})"),
        Err(status) => {
            assert_eq!(
                status.code(),
                code,
                "unexpected status: {}",
                status.message()
            );
            assert!(
                status.message().contains(needle),
                "message {:?} should mention {needle:?}",
                status.message()
            );
        }
    }
}

/// A daemon run as a child process of the real binary, for crash and signal tests.
pub struct ChildDaemon {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildDaemon {
    /// Starts `seatbroker serve` on `data_dir` and waits for its listening line.
    pub fn spawn(
        data_dir: &std::path::Path,
        envs: &[(&str, &str)],
    ) -> std::io::Result<ChildDaemon> {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_seatbroker"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY)
            .env("SEATBROKER_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("seatbroker listening on ") {
                        break addr.parse().expect("an address");
                    }
                }
                _ => {
                    let status = child.wait()?;
                    return Err(std::io::Error::other(format!(
                        "daemon exited before listening: {status}"
                    )));
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(ChildDaemon { child, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A channel to the daemon once its health says SERVING (it listens before it is
    /// ready, answering UNAVAILABLE meanwhile).
    async fn ready_channel(&self) -> tonic::transport::Channel {
        let channel = client::connect(&self.url()).await.expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let request = tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            };
            let serving = health.check(request).await.is_ok_and(|r| {
                r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            });
            if serving {
                return channel;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon never became SERVING"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn admin(&self, key: &str) -> AdminServiceClient<Authorized> {
        client::admin(
            self.ready_channel().await,
            BearerKey::new(Some(key)).unwrap(),
        )
    }

    pub async fn session(&self, key: &str) -> SessionServiceClient<Authorized> {
        client::session(
            self.ready_channel().await,
            BearerKey::new(Some(key)).unwrap(),
        )
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
