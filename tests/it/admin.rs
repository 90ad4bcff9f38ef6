//! Admin rules over real gRPC: named-seat quotas, atomic transfer, roles, membership,
//! API keys and authentication.

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

#[tokio::test]
async fn kse_assignment_is_all_or_nothing_within_the_quota() {
    let server = start().await;
    let org = server.organization("acme", 2, 0, &["a", "b", "c"]).await;
    // Two at once, within the quota.
    let answer = org
        .assign(&server, KSE, vec![org.email(0).into(), org.email(1).into()])
        .await
        .unwrap();
    assert_eq!(answer.assigned_total, 2);
    assert!(
        answer
            .results
            .iter()
            .all(|r| r.outcome == proto::AssignmentOutcome::Assigned as i32)
    );
    // Past the quota: refused, and nothing changes.
    let past = org.assign(&server, KSE, vec![org.email(2).into()]).await;
    assert_status(past, Code::ResourceExhausted, "2 of 2 seats");
    // Re-assigning holders is not growth: allowed and reported as such.
    let again = org
        .assign(&server, KSE, vec![org.email(0).into()])
        .await
        .unwrap();
    assert_eq!(
        again.results[0].outcome,
        proto::AssignmentOutcome::AlreadyAssigned as i32
    );
    // A batch mixing a holder and a newcomer past the quota changes nothing either.
    let mixed = org
        .assign(&server, KSE, vec![org.email(0).into(), org.email(2).into()])
        .await;
    assert_status(mixed, Code::ResourceExhausted, "nothing was changed");
    assert_eq!(
        org.assigned(&server, KSE).await,
        vec![org.email(0).to_string(), org.email(1).to_string()]
    );
    // A batch naming a non-member changes nothing.
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .unassign_licenses(proto::UnassignLicensesRequest {
            org_id: org.id.clone(),
            product: KSE,
            emails: vec![org.email(1).into()],
        })
        .await
        .unwrap();
    let stranger = org
        .assign(
            &server,
            KSE,
            vec![org.email(2).into(), "stranger@else.test".into()],
        )
        .await;
    assert_status(stranger, Code::FailedPrecondition, "not a member");
    assert_eq!(
        org.assigned(&server, KSE).await,
        vec![org.email(0).to_string()]
    );
}

#[tokio::test]
async fn kre_allows_any_number_of_assigned_members() {
    let server = start().await;
    let org = server.organization("acme", 0, 1, &["a", "b", "c"]).await;
    let answer = org.assign(&server, KRE, org.emails()).await.unwrap();
    assert_eq!(answer.assigned_total, 3);
}

#[tokio::test]
async fn transfer_moves_a_seat_atomically() {
    let server = start().await;
    let org = server.organization("acme", 1, 0, &["a", "b", "c"]).await;
    org.assign(&server, KSE, vec![org.email(0).into()])
        .await
        .unwrap();
    let mut a = server.session(org.key(0)).await;
    a.acquire(acquire_request(KSE, "studio")).await.unwrap();
    let mut owner = server.admin(&org.owner_key).await;
    let transfer = |from: &str, to: &str| proto::TransferLicenseRequest {
        org_id: org.id.clone(),
        product: KSE,
        from_email: from.into(),
        to_email: to.into(),
    };
    let moved = owner
        .transfer_license(transfer(org.email(0), org.email(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        moved.sessions_ended, 1,
        "the old holder's session ends with the seat"
    );
    assert_eq!(
        org.assigned(&server, KSE).await,
        vec![org.email(1).to_string()]
    );
    // From someone without the seat, or to someone holding one: refused, nothing moves.
    assert_status(
        owner
            .transfer_license(transfer(org.email(0), org.email(2)))
            .await,
        Code::FailedPrecondition,
        "no KSE license",
    );
    assert_status(
        owner
            .transfer_license(transfer(org.email(1), "stranger@x.test"))
            .await,
        Code::FailedPrecondition,
        "not a member",
    );
    assert_eq!(
        org.assigned(&server, KSE).await,
        vec![org.email(1).to_string()]
    );
    assert_eq!(org.usage(&server, KSE).await.assigned, 1);
}

#[tokio::test]
async fn only_owners_and_admins_administer() {
    let server = start().await;
    let org = server
        .organization("acme", 5, 5, &["member", "admin"])
        .await;
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .set_role(proto::SetRoleRequest {
            org_id: org.id.clone(),
            email: org.email(1).into(),
            role: proto::Role::Admin as i32,
        })
        .await
        .unwrap();
    let mut member = server.admin(org.key(0)).await;
    let assign = proto::AssignLicensesRequest {
        org_id: org.id.clone(),
        product: KSE,
        emails: vec![org.email(0).into()],
    };
    assert_status(
        member.assign_licenses(assign.clone()).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
    let mut admin = server.admin(org.key(1)).await;
    admin.assign_licenses(assign).await.unwrap();
    // An Admin cannot make Owners or touch one.
    let promote = proto::SetRoleRequest {
        org_id: org.id.clone(),
        email: org.email(0).into(),
        role: proto::Role::Owner as i32,
    };
    assert_status(
        admin.set_role(promote.clone()).await,
        Code::PermissionDenied,
        "Owner role",
    );
    let remove_owner = proto::RemoveMemberRequest {
        org_id: org.id.clone(),
        email: org.owner.clone(),
    };
    assert_status(
        admin.remove_member(remove_owner.clone()).await,
        Code::PermissionDenied,
        "Owner role",
    );
    // Nor mint a key that acts as the Owner.
    let owner_key = proto::CreateApiKeyRequest {
        org_id: org.id.clone(),
        email: org.owner.clone(),
        label: String::new(),
        ..Default::default()
    };
    assert_status(
        admin.create_api_key(owner_key).await,
        Code::PermissionDenied,
        "Owner role",
    );
    // The last Owner cannot leave, even by their own hand.
    assert_status(
        owner.remove_member(remove_owner).await,
        Code::FailedPrecondition,
        "last Owner",
    );
    owner.set_role(promote).await.unwrap();
    // Operator-only calls stay operator-only.
    let quota = proto::SetQuotaRequest {
        org_id: org.id.clone(),
        quota: Some(proto::Quota::default()),
        ..Default::default()
    };
    assert_status(
        owner.set_quota(quota).await,
        Code::PermissionDenied,
        "only the operator",
    );
    assert_status(
        owner
            .list_organizations(proto::ListOrganizationsRequest::default())
            .await,
        Code::PermissionDenied,
        "operator",
    );
    // A demoted Admin loses the rights at once.
    owner
        .set_role(proto::SetRoleRequest {
            org_id: org.id.clone(),
            email: org.email(1).into(),
            role: proto::Role::Member as i32,
        })
        .await
        .unwrap();
    let list = proto::ListMembersRequest {
        org_id: org.id.clone(),
        ..Default::default()
    };
    assert_status(
        admin.list_members(list).await,
        Code::PermissionDenied,
        "member role",
    );
}

#[tokio::test]
async fn members_must_exist_before_licenses_and_keys() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &[]).await;
    let stranger = org
        .assign(&server, KRE, vec!["nobody@acme.test".into()])
        .await;
    assert_status(
        stranger,
        Code::FailedPrecondition,
        "add them with AddMember first",
    );
    let mut owner = server.admin(&org.owner_key).await;
    let key = owner
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: org.id.clone(),
            email: "nobody@acme.test".into(),
            label: String::new(),
            ..Default::default()
        })
        .await;
    assert_status(key, Code::FailedPrecondition, "not a member");
    let twice = owner
        .add_member(proto::AddMemberRequest {
            org_id: org.id.clone(),
            email: org.owner.clone(),
            role: 0,
        })
        .await;
    assert_status(twice, Code::AlreadyExists, "already a member");
}

#[tokio::test]
async fn members_manage_their_own_keys_only() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &["a", "b"]).await;
    let mut a = server.admin(org.key(0)).await;
    let own = a
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: org.id.clone(),
            email: String::new(),
            label: "laptop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(own.secret.starts_with("sbk_"));
    assert_eq!(own.key.as_ref().unwrap().email, org.email(0));
    let for_b = proto::CreateApiKeyRequest {
        org_id: org.id.clone(),
        email: org.email(1).into(),
        label: String::new(),
        ..Default::default()
    };
    assert_status(
        a.create_api_key(for_b).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
    let listed = api_keys(&a, &org.id).await;
    assert_eq!(listed.len(), 2, "a member sees their own two keys only");
    assert!(listed.iter().all(|k| k.email == org.email(0)));
    let all = api_keys(&server.admin(&org.owner_key).await, &org.id).await;
    assert_eq!(all.len(), 4, "the owner sees every key");
    let b_key_id = all
        .iter()
        .find(|k| k.email == org.email(1))
        .unwrap()
        .key_id
        .clone();
    let revoke_b = proto::RevokeApiKeyRequest {
        org_id: org.id.clone(),
        key_id: b_key_id,
    };
    assert_status(
        a.revoke_api_key(revoke_b).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
    // Revoking one's own key works, and the key stops working at once.
    let mut with_new_key = server.admin(&own.secret).await;
    with_new_key
        .revoke_api_key(proto::RevokeApiKeyRequest {
            org_id: org.id.clone(),
            key_id: own.key.unwrap().key_id,
        })
        .await
        .unwrap();
    let after = with_new_key
        .list_api_keys(proto::ListApiKeysRequest {
            org_id: org.id.clone(),
            ..Default::default()
        })
        .await;
    assert_status(after, Code::Unauthenticated, "unknown or was revoked");
}

#[tokio::test]
async fn bad_credentials_are_unauthenticated() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &["a"]).await;
    let request = || proto::ListMembersRequest {
        org_id: org.id.clone(),
        ..Default::default()
    };
    let mut no_key = seatbroker::client::admin(
        seatbroker::client::connect(&server.url()).await.unwrap(),
        seatbroker::client::BearerKey::new(None).unwrap(),
    );
    assert_status(
        no_key.list_members(request()).await,
        Code::Unauthenticated,
        "missing API key",
    );
    let mut garbage = server.admin("not-a-key").await;
    assert_status(
        garbage.list_members(request()).await,
        Code::Unauthenticated,
        "unrecognised",
    );
    // One character changed: the checksum catches it before any lookup.
    let mut typo = org.owner_key.clone().into_bytes();
    typo[10] = if typo[10] == b'0' { b'1' } else { b'0' };
    let mut typo = server.admin(&String::from_utf8(typo).unwrap()).await;
    assert_status(
        typo.list_members(request()).await,
        Code::Unauthenticated,
        "checksum",
    );
    // A well-formed key that the server never issued.
    let forged = seatbroker::auth::generate_member_key();
    let mut forged = server.admin(&forged.full_text).await;
    assert_status(
        forged.list_members(request()).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
    // The operator key cannot hold sessions.
    let mut operator_engine = server.session(OPERATOR_KEY).await;
    assert_status(
        operator_engine.acquire(acquire_request(KRE, "e")).await,
        Code::PermissionDenied,
        "operator key cannot hold sessions",
    );
}

async fn set_role(
    server: &TestServer,
    key: &str,
    org: &Org,
    email: &str,
    role: proto::Role,
) -> Result<proto::Member, tonic::Status> {
    server
        .admin(key)
        .await
        .set_role(proto::SetRoleRequest {
            org_id: org.id.clone(),
            email: email.into(),
            role: role as i32,
        })
        .await
        .map(|answer| answer.into_inner().member.expect("a member record"))
}

async fn role_in(server: &TestServer, org: &Org, email: &str) -> i32 {
    let members = members(&server.admin(&org.owner_key).await, &org.id).await;
    let member = members.into_iter().find(|m| m.email == email);
    member.expect("still a member").role
}

#[tokio::test]
async fn stepping_down_answers_with_the_new_role_and_retries_agree() {
    let server = start().await;
    let org = server
        .organization("acme", 5, 5, &["admin", "owner2"])
        .await;
    let (admin, owner2) = (org.email(0), org.email(1));
    set_role(&server, &org.owner_key, &org, admin, proto::Role::Admin)
        .await
        .unwrap();
    set_role(&server, &org.owner_key, &org, owner2, proto::Role::Owner)
        .await
        .unwrap();
    // An Admin steps down to Member: the answer says what was done, and so does a
    // retry (the caller may not have seen the first answer).
    let expected = proto::Member {
        email: admin.into(),
        role: proto::Role::Member as i32,
    };
    for attempt in ["first call", "retry"] {
        let answer = set_role(&server, org.key(0), &org, admin, proto::Role::Member).await;
        assert_eq!(
            answer.as_ref().ok(),
            Some(&expected),
            "{attempt}: {answer:?}"
        );
    }
    assert_eq!(
        role_in(&server, &org, admin).await,
        proto::Role::Member as i32
    );
    // Stepping down never opens a way back up.
    assert_status(
        set_role(&server, org.key(0), &org, admin, proto::Role::Admin).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
    // An Owner who is not the last one steps down to Admin, and again on retry.
    for attempt in ["first call", "retry"] {
        let answer = set_role(&server, org.key(1), &org, owner2, proto::Role::Admin).await;
        let role = answer.as_ref().map(|m| m.role).ok();
        assert_eq!(
            role,
            Some(proto::Role::Admin as i32),
            "{attempt}: {answer:?}"
        );
    }
    assert_eq!(
        role_in(&server, &org, owner2).await,
        proto::Role::Admin as i32
    );
    // The last Owner still cannot step down.
    assert_status(
        set_role(
            &server,
            &org.owner_key,
            &org,
            &org.owner,
            proto::Role::Admin,
        )
        .await,
        Code::FailedPrecondition,
        "last Owner",
    );
}
