//! An organization's whole life over gRPC: read by the operator or its Owner and
//! Admins, renamed and deleted by the operator only; a deletion ends its sessions,
//! revokes its keys, survives a restart and keeps its audit events; its id may be
//! created again, afresh.

use std::time::Duration;

use seatbroker::proto;
use tonic::Code;

use crate::harness::*;

const TTL: Duration = Duration::from_secs(30);

fn get(org: &str) -> proto::GetOrganizationRequest {
    proto::GetOrganizationRequest { org_id: org.into() }
}

fn delete(org: &str) -> proto::DeleteOrganizationRequest {
    proto::DeleteOrganizationRequest { org_id: org.into() }
}

#[tokio::test]
async fn the_operator_and_the_organizations_administrators_read_it_and_only_the_operator_renames_it()
 {
    let server = start().await;
    let org = server
        .organization("acme", 1, 2, &["admin", "member"])
        .await;
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .set_role(proto::SetRoleRequest {
            org_id: org.id.clone(),
            email: org.email(0).into(),
            role: proto::Role::Admin as i32,
        })
        .await
        .unwrap();
    let mut operator = server.operator().await;
    let shown = operator.get_organization(get("acme")).await.unwrap();
    let shown = shown.into_inner().organization.unwrap();
    assert_eq!(
        (shown.display_name.as_str(), shown.member_count),
        ("acme Inc.", 3)
    );
    let mut admin = server.admin(org.key(0)).await;
    admin.get_organization(get("acme")).await.unwrap();
    let mut member = server.admin(org.key(1)).await;
    assert_status(
        member.get_organization(get("acme")).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
    assert_status(
        operator.get_organization(get("nowhere")).await,
        Code::NotFound,
        "nowhere",
    );

    let rename = |name: &str| proto::RenameOrganizationRequest {
        org_id: "acme".into(),
        display_name: name.into(),
    };
    assert_status(
        owner.rename_organization(rename("Mine")).await,
        Code::PermissionDenied,
        "only the operator",
    );
    assert_status(
        operator.rename_organization(rename("")).await,
        Code::InvalidArgument,
        "display_name",
    );
    assert_status(
        operator.rename_organization(rename(&"n".repeat(201))).await,
        Code::InvalidArgument,
        "display_name",
    );
    let renamed = operator
        .rename_organization(rename("Acme Corporation"))
        .await
        .unwrap()
        .into_inner()
        .organization
        .unwrap();
    assert_eq!(renamed.display_name, "Acme Corporation");
    let shown = owner.get_organization(get("acme")).await.unwrap();
    assert_eq!(
        shown.into_inner().organization.unwrap().display_name,
        "Acme Corporation"
    );
    let kinds: Vec<String> = audit_record(&operator, "acme", 100)
        .await
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert!(
        kinds.contains(&"organization_renamed".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn deleting_an_organization_ends_its_sessions_revokes_its_keys_and_survives_a_restart() {
    let server = start_with_ttl(TTL).await;
    let org = server
        .licensed_organization("acme", 1, 3, &["a", "b"])
        .await;
    let other = server.licensed_organization("other", 1, 3, &["c"]).await;
    let mut engine = server.session(org.key(0)).await;
    let lease = acquire_lease(&mut engine, KRE, "engine-a").await;
    let mut other_engine = server.session(other.key(0)).await;
    let other_lease = acquire_lease(&mut other_engine, KRE, "engine-c").await;

    let mut owner = server.admin(&org.owner_key).await;
    assert_status(
        owner.delete_organization(delete("acme")).await,
        Code::PermissionDenied,
        "only the operator",
    );
    let mut operator = server.operator().await;
    let deleted = operator
        .delete_organization(delete("acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            deleted.sessions_ended,
            deleted.keys_revoked,
            deleted.members_removed
        ),
        (1, 3, 3)
    );
    // The engine's key went with its organization: its heartbeat is refused before the
    // (ended) lease is looked up.
    assert_status(
        heartbeat(&mut engine, &lease).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
    assert_status(
        engine.acquire(acquire_request(KRE, "engine-a")).await,
        Code::Unauthenticated,
        "",
    );
    assert_status(
        owner.get_organization(get("acme")).await,
        Code::Unauthenticated,
        "",
    );
    assert_status(
        operator.get_organization(get("acme")).await,
        Code::NotFound,
        "acme",
    );
    assert_status(
        operator.delete_organization(delete("acme")).await,
        Code::NotFound,
        "acme",
    );
    heartbeat(&mut other_engine, &other_lease)
        .await
        .expect("another organization's session goes on");
    let kinds_before: Vec<String> = audit_record(&operator, "acme", 100)
        .await
        .into_iter()
        .map(|event| event.kind)
        .collect();
    for kind in [
        "organization_created",
        "lease_granted",
        "organization_deleted",
    ] {
        assert!(
            kinds_before.contains(&kind.to_owned()),
            "{kind} in {kinds_before:?}"
        );
    }

    let dir = server.stop().await;
    let server = start_in(dir, TTL).await;
    let mut operator = server.operator().await;
    assert_status(
        operator.get_organization(get("acme")).await,
        Code::NotFound,
        "acme",
    );
    let ids: Vec<String> = organizations(&operator)
        .await
        .into_iter()
        .map(|o| o.org_id)
        .collect();
    assert_eq!(ids, vec!["other".to_owned()]);
    assert_status(
        server
            .session(org.key(1))
            .await
            .acquire(acquire_request(KRE, "engine-b"))
            .await,
        Code::Unauthenticated,
        "",
    );
    assert_eq!(other.usage(&server, KRE).await.active_sessions, 1);
    let kinds_after: Vec<String> = audit_record(&operator, "acme", 100)
        .await
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(kinds_after, kinds_before, "the audit events are kept");

    // The id may be created again: a new organization, nothing of the old one.
    let again = server.organization("acme", 1, 3, &[]).await;
    let mut new_owner = server.admin(&again.owner_key).await;
    assert_eq!(
        member_emails(&new_owner, "acme").await,
        vec![again.owner.clone()]
    );
    assert_eq!(again.usage(&server, KRE).await.active_sessions, 0);
    assert!(sessions(&new_owner, "acme", 0).await.is_empty());
    new_owner.get_organization(get("acme")).await.unwrap();
    let dir = server.stop().await;
    let server = start_in(dir, TTL).await;
    let operator = server.operator().await;
    assert_eq!(organizations(&operator).await.len(), 2, "both replayed");
    assert_eq!(member_emails(&operator, "acme").await, vec![again.owner]);
}
