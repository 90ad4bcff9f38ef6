//! The test harness, one for every integration test: a daemon reached over real gRPC
//! on 127.0.0.1, either in this process ([`TestServer`]) or as a child process of the
//! real binary ([`Daemon`]), both ready by one rule ([`wait_for_health`]: health
//! SERVING for the whole server); and helpers that set up organizations and sessions
//! through the real API.

pub mod certs;
pub mod daemon;
pub mod etcd;
pub mod http;
pub mod listing;
pub mod server;

use std::time::{Duration, Instant};

use seatbroker::client::{self, Authorized, BearerKey};
use seatbroker::loadgen::provision;
use seatbroker::proto::{
    self, admin_service_client::AdminServiceClient, session_service_client::SessionServiceClient,
};
use seatbroker::tls::ClientTlsFiles;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub use daemon::{Daemon, Serve};
pub use etcd::{EtcdServer, EtcdTls, TcpProxy, etcd_binary};
pub use listing::{
    api_keys, assigned_emails, audit_page, audit_record, member_emails, members, organizations,
    sessions,
};
pub use server::{
    TestServer, refused_start, start, start_configured, start_in, start_tls, start_with_config,
    start_with_ttl, test_settings, ttl_ms,
};

pub const OPERATOR_KEY: &str = "test-operator-key-0123456789abcdef0123456789";
pub const KSE: i32 = proto::Product::Kse as i32;
pub const KRE: i32 = proto::Product::Kre as i32;
/// The health service names of the broker's two services ("" is the whole server).
pub const SESSION_SERVICE: &str = "seatbroker.v1.SessionService";
pub const ADMIN_SERVICE: &str = "seatbroker.v1.AdminService";
/// How long a daemon may take to become ready (or to report any health status).
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// A daemon the tests reach over gRPC: its URL and what its clients present; channels
/// and authorized clients from them.
pub trait DaemonApi: Sized {
    fn url(&self) -> String;

    fn client_tls(&self) -> &ClientTlsFiles;

    async fn channel(&self) -> tonic::transport::Channel {
        client::connect_with(&self.url(), self.client_tls())
            .await
            .expect("connect to the daemon")
    }

    async fn admin(&self, key: &str) -> AdminServiceClient<Authorized> {
        client::admin(self.channel().await, bearer(key))
    }

    async fn session(&self, key: &str) -> SessionServiceClient<Authorized> {
        client::session(self.channel().await, bearer(key))
    }

    async fn operator(&self) -> AdminServiceClient<Authorized> {
        self.admin(OPERATOR_KEY).await
    }

    /// Creates an organization whose owner is `owner@<org>.test`, adds `members`
    /// (local parts), and returns the owner's key and one key per member.
    async fn organization(
        &self,
        org: &str,
        kse_seats: u32,
        kre_sessions: u32,
        members: &[&str],
    ) -> Org {
        let mut operator = self.operator().await;
        let owner = format!("owner@{org}.test");
        let organization = provision::NewOrganization {
            org_id: org.into(),
            display_name: format!("{org} Inc."),
            owner_email: owner.clone(),
            quota: proto::Quota {
                kse_seats,
                kre_sessions,
                expires_at_unix_ms: 0,
            },
        };
        provision::create_organization(&mut operator, organization)
            .await
            .expect("create organization");
        let owner_key = create_key(&mut operator, org, &owner).await;
        let mut member_keys = Vec::new();
        for local in members {
            let email = format!("{local}@{org}.test");
            add_member(&mut operator, org, &email)
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

    /// Like [`DaemonApi::organization`], with every member (not the owner) holding a
    /// KRE license, as the engines of most tests do.
    async fn licensed_organization(&self, org: &str, kse: u32, kre: u32, members: &[&str]) -> Org {
        let org = self.organization(org, kse, kre, members).await;
        org.assign(self, KRE, org.emails())
            .await
            .expect("assign KRE to every member");
        org
    }

    /// The health `service` reports now ("" for the whole server).
    async fn health(&self, service: &str) -> ServingStatus {
        health_status(&self.url(), self.client_tls(), service)
            .await
            .unwrap_or_else(|| panic!("no health answer from {} for {service:?}", self.url()))
    }

    /// Polls health until `service` reports `status`.
    async fn wait_health(&self, service: &str, status: ServingStatus) {
        wait_for_health(&self.url(), self.client_tls(), service, status).await;
    }
}

fn bearer(key: &str) -> BearerKey {
    BearerKey::new(Some(key)).expect("a key that can be sent")
}

/// What health reports for `service` at `url` now; `None` when it does not answer (not
/// listening yet, or a connection handed over between the recovery-time server and
/// the serving one).
pub async fn health_status(
    url: &str,
    tls: &ClientTlsFiles,
    service: &str,
) -> Option<ServingStatus> {
    let channel = client::connect_with(url, tls).await.ok()?;
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let answer = HealthClient::new(channel).check(request).await.ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}

/// The one readiness rule and the one health poller: polls (a new connection each
/// time, as a client of a restarting daemon would) until `service` reports `status`.
/// A daemon is ready when `""` (the whole server) reports SERVING: it refuses broker
/// calls while it starts and recovers its log.
pub async fn wait_for_health(
    url: &str,
    tls: &ClientTlsFiles,
    service: &str,
    status: ServingStatus,
) {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let now = health_status(url, tls, service).await;
        if now == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: health of {service:?} never said {status:?} (last: {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn create_key(
    admin: &mut AdminServiceClient<Authorized>,
    org: &str,
    email: &str,
) -> String {
    provision::create_api_key(admin, org, email, "test")
        .await
        .expect("create API key")
}

/// Adds `email` to `org` as a Member.
pub async fn add_member(
    admin: &mut AdminServiceClient<Authorized>,
    org: &str,
    email: &str,
) -> Result<proto::Member, tonic::Status> {
    provision::add_member(admin, org, email, proto::Role::Member).await
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

    /// Assigns `product` to `emails`, as the organization's Owner.
    pub async fn assign(
        &self,
        daemon: &impl DaemonApi,
        product: i32,
        emails: Vec<String>,
    ) -> Result<proto::AssignLicensesResponse, tonic::Status> {
        let product = proto::Product::try_from(product).expect("a known product");
        let mut owner = daemon.admin(&self.owner_key).await;
        provision::assign(&mut owner, &self.id, product, emails).await
    }

    pub async fn usage(&self, daemon: &impl DaemonApi, product: i32) -> proto::ProductUsage {
        daemon
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

    /// The emails holding a license of `product`, as the Owner sees them.
    pub async fn assigned(&self, daemon: &impl DaemonApi, product: i32) -> Vec<String> {
        let owner = daemon.admin(&self.owner_key).await;
        assigned_emails(&owner, &self.id, product).await
    }
}

pub fn acquire_request(product: i32, engine: &str) -> proto::AcquireRequest {
    proto::AcquireRequest {
        product,
        engine_id: engine.into(),
        hostname: "test-host".into(),
        label: String::new(),
        wait_ms: 0,
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

/// Heartbeats `lease` with its own generation.
pub async fn heartbeat(
    engine: &mut SessionServiceClient<Authorized>,
    lease: &proto::Lease,
) -> Result<proto::HeartbeatResponse, tonic::Status> {
    let (lease_id, generation) = lease_and_generation(lease);
    let request = proto::HeartbeatRequest {
        lease_id,
        generation,
    };
    Ok(engine.heartbeat(request).await?.into_inner())
}

/// Releases `lease` with its own generation.
pub async fn release(
    engine: &mut SessionServiceClient<Authorized>,
    lease: &proto::Lease,
) -> Result<proto::ReleaseResponse, tonic::Status> {
    let (lease_id, generation) = lease_and_generation(lease);
    Ok(engine
        .release(proto::ReleaseRequest {
            lease_id,
            generation,
        })
        .await?
        .into_inner())
}

/// What names `lease` in a heartbeat or a release: its id and its generation.
fn lease_and_generation(lease: &proto::Lease) -> (String, u64) {
    (lease.lease_id.clone(), lease.generation)
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
