//! A fake broker for tests of the broker path: an AdminService that records what
//! provisioning asked for and hands out keys, and a SessionService that accepts only
//! those keys, so a run proves every engine called with a key made for it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::proto::admin_service_server::{AdminService, AdminServiceServer};
use crate::proto::session_service_server::{SessionService, SessionServiceServer};
use crate::proto::*;

use super::args::{OperatorKey, Workload};
use super::config::{BrokerTarget, Config, Progress};
use super::noop::NoopOptions;
use super::report::{Comparison, Outcome};
use super::runner::{execute_broker, execute_noop};

const OPERATOR_KEY: &str = "sbk_operator_test";

/// What provisioning created, as the fake saw it.
#[derive(Default)]
struct Books {
    /// org id -> KRE quota.
    orgs: HashMap<String, u32>,
    /// (org id, email).
    members: HashSet<(String, String)>,
    /// Sizes of AssignLicenses batches, and the emails assigned KRE.
    assign_batches: Vec<usize>,
    assigned: HashSet<(String, String)>,
    /// `Bearer <secret>` -> (org id, email).
    keys: HashMap<String, (String, String)>,
    /// Keys seen on session calls.
    keys_used: HashSet<String>,
}

#[derive(Clone, Default)]
struct FakeBroker {
    /// A `std::sync::Mutex`: never held across an `.await`.
    books: Arc<Mutex<Books>>,
}

impl FakeBroker {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().expect("not poisoned")
    }
}

fn authorization<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn operator_only<T>(request: &Request<T>) -> Result<(), Status> {
    if authorization(request) == format!("Bearer {OPERATOR_KEY}") {
        Ok(())
    } else {
        Err(Status::unauthenticated("operator key expected"))
    }
}

/// Methods provisioning never calls. Written in the shape `async_trait` expands to,
/// because `async_trait` does not see `async fn`s produced by a macro inside its impl.
macro_rules! unimplemented_admin {
    ($($method:ident($request:ty) -> $response:ty;)*) => {
        $(fn $method<'life0, 'async_trait>(
            &'life0 self,
            _: Request<$request>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<$response>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(Status::unimplemented(stringify!($method))) })
        })*
    };
}

#[tonic::async_trait]
impl AdminService for FakeBroker {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        operator_only(&request)?;
        let request = request.into_inner();
        let quota = request.quota.map_or(0, |q| q.kre_sessions);
        self.books().orgs.insert(request.org_id, quota);
        Ok(Response::new(CreateOrganizationResponse::default()))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        operator_only(&request)?;
        let request = request.into_inner();
        let mut books = self.books();
        if !books.orgs.contains_key(&request.org_id) {
            return Err(Status::not_found("no such organization"));
        }
        books.members.insert((request.org_id, request.email));
        Ok(Response::new(AddMemberResponse::default()))
    }

    async fn assign_licenses(
        &self,
        request: Request<AssignLicensesRequest>,
    ) -> Result<Response<AssignLicensesResponse>, Status> {
        operator_only(&request)?;
        let request = request.into_inner();
        let mut books = self.books();
        books.assign_batches.push(request.emails.len());
        for email in request.emails {
            if !books
                .members
                .contains(&(request.org_id.clone(), email.clone()))
            {
                return Err(Status::failed_precondition("not a member"));
            }
            books.assigned.insert((request.org_id.clone(), email));
        }
        Ok(Response::new(AssignLicensesResponse::default()))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        operator_only(&request)?;
        let request = request.into_inner();
        let mut books = self.books();
        let secret = format!("sbk_{}", books.keys.len());
        books
            .keys
            .insert(format!("Bearer {secret}"), (request.org_id, request.email));
        Ok(Response::new(CreateApiKeyResponse { key: None, secret }))
    }

    unimplemented_admin! {
        set_quota(SetQuotaRequest) -> SetQuotaResponse;
        list_organizations(ListOrganizationsRequest) -> ListOrganizationsResponse;
        remove_member(RemoveMemberRequest) -> RemoveMemberResponse;
        set_role(SetRoleRequest) -> SetRoleResponse;
        list_members(ListMembersRequest) -> ListMembersResponse;
        unassign_licenses(UnassignLicensesRequest) -> UnassignLicensesResponse;
        transfer_license(TransferLicenseRequest) -> TransferLicenseResponse;
        list_assignments(ListAssignmentsRequest) -> ListAssignmentsResponse;
        get_usage(GetUsageRequest) -> GetUsageResponse;
        list_sessions(ListSessionsRequest) -> ListSessionsResponse;
        terminate_session(TerminateSessionRequest) -> TerminateSessionResponse;
        list_api_keys(ListApiKeysRequest) -> ListApiKeysResponse;
        revoke_api_key(RevokeApiKeyRequest) -> RevokeApiKeyResponse;
    }
}

impl FakeBroker {
    /// Accepts a session call only with a key made by `create_api_key` for a member
    /// holding KRE.
    fn engine_key<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let key = authorization(request);
        let mut books = self.books();
        let owner = books
            .keys
            .get(&key)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown key"))?;
        if !books.assigned.contains(&owner) {
            return Err(Status::permission_denied("no KRE license"));
        }
        books.keys_used.insert(key);
        Ok(())
    }
}

#[tonic::async_trait]
impl SessionService for FakeBroker {
    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        self.engine_key(&request)?;
        let lease = Lease {
            lease_id: format!("lse_{}", request.get_ref().engine_id),
            generation: 1,
            heartbeat_interval_ms: 10_000,
            ttl_ms: 30_000,
            ..Lease::default()
        };
        Ok(Response::new(AcquireResponse {
            lease: Some(lease),
            resumed: false,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.engine_key(&request)?;
        Ok(Response::new(HeartbeatResponse::default()))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.engine_key(&request)?;
        Ok(Response::new(ReleaseResponse {}))
    }
}

/// Serves the fake on 127.0.0.1:0 until the returned sender is dropped.
fn start(fake: FakeBroker) -> (SocketAddr, oneshot::Sender<()>) {
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = incoming.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(AdminServiceServer::new(fake.clone()))
        .add_service(SessionServiceServer::new(fake))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_runs_provision_then_use_each_engines_own_key() {
    let fake = FakeBroker::default();
    let (addr, _stop) = start(fake.clone());
    let config = Config {
        workload: Workload::AcquireRelease,
        orgs: 2,
        engines: 2_100,
        in_flight: 64,
        connections: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(1_500),
        quota: 1_050,
        hold_min: Duration::ZERO,
        hold_max: Duration::ZERO,
        think_max: Duration::ZERO,
        backoff: Duration::from_millis(1),
        progress: Progress::Off,
        seed: 7,
    };
    let target = BrokerTarget {
        uri: format!("http://{addr}"),
        tls: None,
        operator_key: OperatorKey(OPERATOR_KEY.to_owned()),
    };
    let report = execute_broker(&config, &target)
        .await
        .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    assert!(report.ops > 0);
    assert_eq!(report.target, "broker");

    check_books(&fake);

    // `--compare-noop`: the same load against the no-op server, and the ratio.
    let noop = execute_noop(&config, NoopOptions::for_config(&config))
        .await
        .expect("the noop run completes");
    let comparison = Comparison::new(report, noop);
    assert!(
        comparison
            .ratio
            .ops_per_sec
            .is_some_and(|ratio| ratio > 0.0)
    );
    let json = serde_json::to_value(Outcome::Compare(Box::new(comparison))).expect("serializes");
    assert_eq!(
        (
            json["broker"]["target"].as_str(),
            json["noop"]["target"].as_str()
        ),
        (Some("broker"), Some("noop"))
    );
    assert!(json["ratio"]["p99"].is_number());
}

/// What provisioning must have created for 2 organizations of 1050 engines.
fn check_books(fake: &FakeBroker) {
    let books = fake.books();
    assert_eq!(books.orgs.len(), 2);
    assert!(
        books
            .orgs
            .iter()
            .all(|(id, quota)| id.starts_with("bench-") && *quota == 1_050)
    );
    assert_eq!(books.members.len(), 2_100);
    assert_eq!(books.assigned.len(), 2_100);
    let mut batches = books.assign_batches.clone();
    batches.sort_unstable();
    assert_eq!(
        batches,
        [50, 50, 1_000, 1_000],
        "1050 emails per org in batches of at most 1000"
    );
    assert_eq!(books.keys.len(), 2_100);
    assert!(
        books.keys_used.len() > 500,
        "engines call with their own keys"
    );
}
