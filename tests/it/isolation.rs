//! Tenant isolation: a key of one organization can never read or change another's
//! data. Every RPC is made by every kind of caller against organization beta, and the
//! code each gets is one cell of [`EXPECTED`]: the Owner, an Admin and a Member of
//! organization alpha, a call without a key, one with a key the daemon never issued,
//! and the operator, who belongs to no organization and reaches every one.

use prost::Message;
use seatbroker::client::{self, Authorized, BearerKey};
use seatbroker::proto::{
    self, admin_service_client::AdminServiceClient, session_service_client::SessionServiceClient,
};
use tonic::{Code, Status};

use crate::harness::*;

/// Who makes the calls; the operator last, as the one caller allowed to change beta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    AlphaOwner,
    AlphaAdmin,
    AlphaMember,
    NoKey,
    ForgedKey,
    Operator,
}

const CALLERS: [Caller; 6] = [
    Caller::AlphaOwner,
    Caller::AlphaAdmin,
    Caller::AlphaMember,
    Caller::NoKey,
    Caller::ForgedKey,
    Caller::Operator,
];

/// Every RPC of the API, named as in the proto.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    CreateOrganization,
    SetQuota,
    ListOrganizations,
    RenameOrganization,
    GetOrganization,
    ListMembers,
    AddMember,
    SetRole,
    AssignLicenses,
    UnassignLicenses,
    TransferLicense,
    ListAssignments,
    GetUsage,
    GetUsageSeries,
    ListSessions,
    TerminateSession,
    CreateApiKey,
    ListApiKeys,
    RevokeApiKey,
    ListAuditEvents,
    RemoveMember,
    Acquire,
    Heartbeat,
    Release,
    DeleteOrganization,
}

const OK: Code = Code::Ok;
const DENIED: Code = Code::PermissionDenied;
const UNAUTHENTICATED: Code = Code::Unauthenticated;
const NOT_FOUND: Code = Code::NotFound;
const FAILED_PRECONDITION: Code = Code::FailedPrecondition;

/// The code of each call, by caller in the order of [`CALLERS`]: alpha's Owner, Admin
/// and Member, no key, a forged key, the operator. The operator's calls run in this
/// order and change beta: RemoveMember, which removes the subject, comes after every
/// other call that names the subject, and DeleteOrganization, which removes beta,
/// comes last.
#[rustfmt::skip]
const EXPECTED: [(Rpc, [Code; 6]); 25] = [
    // Operator-only calls.
    (Rpc::CreateOrganization, [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::SetQuota,           [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::ListOrganizations,  [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::RenameOrganization, [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    // Calls naming beta: refused before anything of beta is looked up, so a real
    // member, key or lease of beta is refused like an invented one.
    (Rpc::GetOrganization,    [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::ListMembers,        [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::AddMember,          [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::SetRole,            [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::AssignLicenses,     [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::UnassignLicenses,   [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    // The subject holds no KSE seat: only a caller let through gets to that rule.
    (Rpc::TransferLicense,    [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, FAILED_PRECONDITION]),
    (Rpc::ListAssignments,    [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::GetUsage,           [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::GetUsageSeries,     [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::ListSessions,       [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::TerminateSession,   [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::CreateApiKey,       [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::ListApiKeys,        [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::RevokeApiKey,       [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::ListAuditEvents,    [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    (Rpc::RemoveMember,       [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
    // Engine calls name no organization: the caller's own is the one charged, and
    // beta's lease is not found there. The operator holds no sessions.
    (Rpc::Acquire,            [OK,        OK,        OK,        UNAUTHENTICATED, UNAUTHENTICATED, DENIED]),
    (Rpc::Heartbeat,          [NOT_FOUND, NOT_FOUND, NOT_FOUND, UNAUTHENTICATED, UNAUTHENTICATED, DENIED]),
    (Rpc::Release,            [NOT_FOUND, NOT_FOUND, NOT_FOUND, UNAUTHENTICATED, UNAUTHENTICATED, DENIED]),
    // Operator only, and last: it removes beta.
    (Rpc::DeleteOrganization, [DENIED, DENIED, DENIED, UNAUTHENTICATED, UNAUTHENTICATED, OK]),
];

/// What the calls aim at: organization beta, a member of it (the subject of the
/// calls about a member), that member's API key, and the lease of beta's engine.
struct Target {
    org: Org,
    subject: String,
    subject_key_id: String,
    lease: proto::Lease,
}

/// The engine id of beta's engine, which alpha's engines use too.
const ENGINE_ID: &str = "shared-name";

/// Makes `rpc`, as `admin` or `engine`, aimed at `beta`.
async fn call(
    rpc: Rpc,
    admin: &mut AdminServiceClient<Authorized>,
    engine: &mut SessionServiceClient<Authorized>,
    beta: &Target,
) -> Result<(), Status> {
    let org_id = beta.org.id.clone();
    let subject = beta.subject.clone();
    match rpc {
        Rpc::CreateOrganization => admin
            .create_organization(proto::CreateOrganizationRequest {
                org_id: "gamma".into(),
                display_name: "Gamma".into(),
                owner_email: "o@gamma.test".into(),
                quota: Some(proto::Quota::default()),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::SetQuota => admin
            .set_quota(proto::SetQuotaRequest {
                org_id,
                quota: Some(proto::Quota::default()),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ListOrganizations => admin
            .list_organizations(proto::ListOrganizationsRequest::default())
            .await
            .map(drop),
        Rpc::RenameOrganization => admin
            .rename_organization(proto::RenameOrganizationRequest {
                org_id,
                display_name: "Beta renamed".into(),
            })
            .await
            .map(drop),
        Rpc::GetOrganization => admin
            .get_organization(proto::GetOrganizationRequest { org_id })
            .await
            .map(drop),
        Rpc::DeleteOrganization => admin
            .delete_organization(proto::DeleteOrganizationRequest { org_id })
            .await
            .map(drop),
        Rpc::ListMembers => admin
            .list_members(proto::ListMembersRequest {
                org_id,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::AddMember => admin
            .add_member(proto::AddMemberRequest {
                org_id,
                email: "x@alpha.test".into(),
                role: 0,
            })
            .await
            .map(drop),
        Rpc::SetRole => admin
            .set_role(proto::SetRoleRequest {
                org_id,
                email: subject,
                role: proto::Role::Admin as i32,
            })
            .await
            .map(drop),
        Rpc::AssignLicenses => admin
            .assign_licenses(proto::AssignLicensesRequest {
                org_id,
                product: KRE,
                emails: vec![subject],
            })
            .await
            .map(drop),
        Rpc::UnassignLicenses => admin
            .unassign_licenses(proto::UnassignLicensesRequest {
                org_id,
                product: KRE,
                emails: vec![subject],
            })
            .await
            .map(drop),
        Rpc::TransferLicense => admin
            .transfer_license(proto::TransferLicenseRequest {
                org_id,
                product: KSE,
                from_email: subject,
                to_email: beta.org.owner.clone(),
            })
            .await
            .map(drop),
        Rpc::ListAssignments => admin
            .list_assignments(proto::ListAssignmentsRequest {
                org_id,
                product: KSE,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::GetUsage => admin
            .get_usage(proto::GetUsageRequest {
                org_id,
                window_seconds: 0,
            })
            .await
            .map(drop),
        Rpc::GetUsageSeries => admin
            .get_usage_series(proto::GetUsageSeriesRequest {
                org_id,
                product: KRE,
                range: proto::UsageRange::Week as i32,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ListSessions => admin
            .list_sessions(proto::ListSessionsRequest {
                org_id,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::TerminateSession => admin
            .terminate_session(proto::TerminateSessionRequest {
                org_id,
                lease_id: beta.lease.lease_id.clone(),
            })
            .await
            .map(drop),
        Rpc::CreateApiKey => admin
            .create_api_key(proto::CreateApiKeyRequest {
                org_id,
                email: subject,
                label: String::new(),
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::ListApiKeys => admin
            .list_api_keys(proto::ListApiKeysRequest {
                org_id,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::RevokeApiKey => admin
            .revoke_api_key(proto::RevokeApiKeyRequest {
                org_id,
                key_id: beta.subject_key_id.clone(),
            })
            .await
            .map(drop),
        Rpc::ListAuditEvents => admin
            .list_audit_events(proto::ListAuditEventsRequest {
                org_id,
                ..Default::default()
            })
            .await
            .map(drop),
        Rpc::RemoveMember => admin
            .remove_member(proto::RemoveMemberRequest {
                org_id,
                email: subject,
            })
            .await
            .map(drop),
        Rpc::Acquire => engine
            .acquire(acquire_request(KRE, ENGINE_ID))
            .await
            .map(drop),
        Rpc::Heartbeat => heartbeat(engine, &beta.lease).await.map(drop),
        Rpc::Release => release(engine, &beta.lease).await.map(drop),
    }
}

/// The key `caller` presents (`None`: no key at all).
fn key_of(caller: Caller, alpha: &Org) -> Option<String> {
    match caller {
        Caller::AlphaOwner => Some(alpha.owner_key.clone()),
        Caller::AlphaAdmin => Some(alpha.key(0).to_owned()),
        Caller::AlphaMember => Some(alpha.key(1).to_owned()),
        Caller::NoKey => None,
        Caller::ForgedKey => Some(seatbroker::auth::generate_member_key().full_text),
        Caller::Operator => Some(OPERATOR_KEY.to_owned()),
    }
}

/// Makes every call of [`EXPECTED`] as `caller`; returns the cells whose code differs.
async fn calls_by(caller: Caller, server: &TestServer, alpha: &Org, beta: &Target) -> Vec<String> {
    let column = CALLERS.iter().position(|c| *c == caller).unwrap();
    let key = BearerKey::new(key_of(caller, alpha).as_deref()).unwrap();
    let channel = server.channel().await;
    let mut admin = client::admin(channel.clone(), key.clone());
    let mut engine = client::session(channel, key);
    let mut wrong = Vec::new();
    for (rpc, codes) in EXPECTED {
        let answer = call(rpc, &mut admin, &mut engine, beta).await;
        let code = answer.as_ref().err().map_or(Code::Ok, Status::code);
        if code != codes[column] {
            wrong.push(format!(
                "{rpc:?} by {caller:?}: expected {:?}, got {answer:?}",
                codes[column]
            ));
        }
    }
    wrong
}

/// Everything of beta a call could have changed, as its Owner reads it (a session by
/// its id and generation: its expiry estimate is computed at each reading).
async fn state_of(server: &TestServer, beta: &Org) -> Vec<String> {
    let mut owner = server.admin(&beta.owner_key).await;
    let sessions: Vec<(String, u64)> = sessions(&owner, &beta.id, 0)
        .await
        .into_iter()
        .map(|lease| (lease.lease_id, lease.generation))
        .collect();
    let usage = owner
        .get_usage(proto::GetUsageRequest {
            org_id: beta.id.clone(),
            window_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    vec![
        format!("{:?}", members(&owner, &beta.id).await),
        format!("{:?}", api_keys(&owner, &beta.id).await),
        format!("{sessions:?}"),
        format!("{usage:?}"),
        format!("{:?}", assigned_emails(&owner, &beta.id, KSE).await),
        format!("{:?}", assigned_emails(&owner, &beta.id, KRE).await),
    ]
}

#[tokio::test]
async fn every_rpc_by_every_caller_reaches_another_organization_only_as_the_operator() {
    let server = start().await;
    let alpha = server
        .organization("alpha", 5, 5, &["admin", "member"])
        .await;
    let mut alpha_owner = server.admin(&alpha.owner_key).await;
    alpha_owner
        .set_role(proto::SetRoleRequest {
            org_id: alpha.id.clone(),
            email: alpha.email(0).into(),
            role: proto::Role::Admin as i32,
        })
        .await
        .unwrap();
    let mut alpha_holders = alpha.emails();
    alpha_holders.push(alpha.owner.clone());
    alpha.assign(&server, KRE, alpha_holders).await.unwrap();

    let beta = server.organization("beta", 5, 5, &["engine", "b"]).await;
    beta.assign(&server, KRE, vec![beta.email(0).into()])
        .await
        .unwrap();
    let mut beta_engine = server.session(beta.key(0)).await;
    let lease = acquire_lease(&mut beta_engine, KRE, ENGINE_ID).await;
    let subject = beta.email(1).to_owned();
    let beta_keys = api_keys(&server.admin(&beta.owner_key).await, &beta.id).await;
    let subject_key_id = beta_keys
        .into_iter()
        .find(|key| key.email == subject)
        .expect("the subject's key")
        .key_id;
    let target = Target {
        org: beta,
        subject,
        subject_key_id,
        lease,
    };

    let before = state_of(&server, &target.org).await;
    let mut wrong = Vec::new();
    for caller in CALLERS.into_iter().filter(|c| *c != Caller::Operator) {
        wrong.extend(calls_by(caller, &server, &alpha, &target).await);
    }
    assert_eq!(
        state_of(&server, &target.org).await,
        before,
        "nothing of beta changed"
    );
    heartbeat(&mut beta_engine, &target.lease)
        .await
        .expect("beta's engine still holds its lease");
    assert_eq!(alpha.usage(&server, KRE).await.active_sessions, 3);

    wrong.extend(calls_by(Caller::Operator, &server, &alpha, &target).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_table_names_every_rpc_of_the_api() {
    let descriptors = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set");
    let mut in_the_api: Vec<String> = descriptors
        .file
        .iter()
        .flat_map(|file| &file.service)
        .flat_map(|service| &service.method)
        // The session channel is a stream of many operations, not one call with one
        // answer: its isolation is tested operation by operation in its own module.
        .filter(|method| !method.client_streaming())
        .map(|method| method.name().to_owned())
        .collect();
    let mut in_the_table: Vec<String> =
        EXPECTED.iter().map(|(rpc, _)| format!("{rpc:?}")).collect();
    in_the_api.sort();
    in_the_table.sort();
    assert_eq!(in_the_table, in_the_api);
}

#[tokio::test]
async fn leases_of_one_organization_are_invisible_to_another() {
    let server = start().await;
    let a = server.organization("alpha", 5, 5, &["a"]).await;
    let b = server.organization("beta", 5, 5, &["b"]).await;
    a.assign(&server, KRE, a.emails()).await.unwrap();
    b.assign(&server, KRE, b.emails()).await.unwrap();
    let mut engine_b = server.session(b.key(0)).await;
    let lease_b = acquire_lease(&mut engine_b, KRE, "shared-name").await;
    // Same engine id in alpha: a different lease, counted against alpha.
    let mut engine_a = server.session(a.key(0)).await;
    let lease_a = acquire_lease(&mut engine_a, KRE, "shared-name").await;
    assert_ne!(lease_a.lease_id, lease_b.lease_id);
    assert_status(
        heartbeat(&mut engine_a, &lease_b).await,
        Code::NotFound,
        "does not exist",
    );
    assert_status(
        release(&mut engine_a, &lease_b).await,
        Code::NotFound,
        "does not exist",
    );
    // Alpha's owner, naming its own organization, cannot reach beta's lease either.
    let mut owner_a = server.admin(&a.owner_key).await;
    let terminate = proto::TerminateSessionRequest {
        org_id: a.id.clone(),
        lease_id: lease_b.lease_id.clone(),
    };
    assert_status(
        owner_a.terminate_session(terminate).await,
        Code::NotFound,
        "does not exist",
    );
    let sessions = sessions(&owner_a, &a.id, 0).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].org_id, a.id);
    assert_eq!(b.usage(&server, KRE).await.active_sessions, 1);
    // Beta's engine still holds its lease.
    heartbeat(&mut engine_b, &lease_b).await.unwrap();
}
