//! Tenant isolation: a key of one organization can never read or change another's
//! data. Every RPC is tried across the boundary.

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

#[track_caller]
fn denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    assert_status(result, Code::PermissionDenied, "");
}

#[tokio::test]
async fn every_admin_rpc_refuses_another_organizations_key() {
    let server = start().await;
    let a = server.organization("alpha", 5, 5, &["a"]).await;
    let b = server.organization("beta", 5, 5, &["b"]).await;
    let target = b.id.clone();
    let someone = b.email(0).to_string();
    for key in [a.owner_key.as_str(), a.key(0)] {
        let mut admin = server.admin(key).await;
        denied(
            admin
                .add_member(proto::AddMemberRequest {
                    org_id: target.clone(),
                    email: "x@alpha.test".into(),
                    role: 0,
                })
                .await,
        );
        denied(
            admin
                .remove_member(proto::RemoveMemberRequest {
                    org_id: target.clone(),
                    email: someone.clone(),
                })
                .await,
        );
        denied(
            admin
                .set_role(proto::SetRoleRequest {
                    org_id: target.clone(),
                    email: someone.clone(),
                    role: proto::Role::Admin as i32,
                })
                .await,
        );
        denied(
            admin
                .list_members(proto::ListMembersRequest {
                    org_id: target.clone(),
                    ..Default::default()
                })
                .await,
        );
        denied(
            admin
                .assign_licenses(proto::AssignLicensesRequest {
                    org_id: target.clone(),
                    product: KRE,
                    emails: vec![someone.clone()],
                })
                .await,
        );
        denied(
            admin
                .unassign_licenses(proto::UnassignLicensesRequest {
                    org_id: target.clone(),
                    product: KRE,
                    emails: vec![someone.clone()],
                })
                .await,
        );
        denied(
            admin
                .transfer_license(proto::TransferLicenseRequest {
                    org_id: target.clone(),
                    product: KSE,
                    from_email: someone.clone(),
                    to_email: b.owner.clone(),
                })
                .await,
        );
        denied(
            admin
                .list_assignments(proto::ListAssignmentsRequest {
                    org_id: target.clone(),
                    product: KSE,
                    ..Default::default()
                })
                .await,
        );
        denied(
            admin
                .get_usage(proto::GetUsageRequest {
                    org_id: target.clone(),
                    window_seconds: 0,
                })
                .await,
        );
        denied(
            admin
                .list_sessions(proto::ListSessionsRequest {
                    org_id: target.clone(),
                    product: 0,
                    ..Default::default()
                })
                .await,
        );
        denied(
            admin
                .terminate_session(proto::TerminateSessionRequest {
                    org_id: target.clone(),
                    lease_id: format!("ls_{}", "0".repeat(32)),
                })
                .await,
        );
        denied(
            admin
                .create_api_key(proto::CreateApiKeyRequest {
                    org_id: target.clone(),
                    email: someone.clone(),
                    label: String::new(),
                })
                .await,
        );
        denied(
            admin
                .list_api_keys(proto::ListApiKeysRequest {
                    org_id: target.clone(),
                    ..Default::default()
                })
                .await,
        );
        denied(
            admin
                .revoke_api_key(proto::RevokeApiKeyRequest {
                    org_id: target.clone(),
                    key_id: "000000000000".into(),
                })
                .await,
        );
        denied(
            admin
                .create_organization(proto::CreateOrganizationRequest {
                    org_id: "gamma".into(),
                    display_name: "Gamma".into(),
                    owner_email: "o@gamma.test".into(),
                    quota: Some(proto::Quota::default()),
                })
                .await,
        );
        denied(
            admin
                .set_quota(proto::SetQuotaRequest {
                    org_id: target.clone(),
                    quota: Some(proto::Quota::default()),
                })
                .await,
        );
        denied(
            admin
                .list_organizations(proto::ListOrganizationsRequest::default())
                .await,
        );
    }
    // Nothing of beta changed.
    let members = server
        .admin(&b.owner_key)
        .await
        .list_members(proto::ListMembersRequest {
            org_id: b.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 2);
    assert!(
        members
            .iter()
            .all(|m| m.role != proto::Role::Admin as i32 || m.email == b.owner)
    );
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
    let heartbeat = proto::HeartbeatRequest {
        lease_id: lease_b.lease_id.clone(),
        generation: lease_b.generation,
    };
    assert_status(
        engine_a.heartbeat(heartbeat).await,
        Code::NotFound,
        "does not exist",
    );
    let release = proto::ReleaseRequest {
        lease_id: lease_b.lease_id.clone(),
        generation: lease_b.generation,
    };
    assert_status(
        engine_a.release(release).await,
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
    let sessions = owner_a
        .list_sessions(proto::ListSessionsRequest {
            org_id: a.id.clone(),
            product: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].org_id, a.id);
    assert_eq!(b.usage(&server, KRE).await.active_sessions, 1);
    // Beta's engine still holds its lease.
    engine_b
        .heartbeat(proto::HeartbeatRequest {
            lease_id: lease_b.lease_id,
            generation: lease_b.generation,
        })
        .await
        .unwrap();
}
