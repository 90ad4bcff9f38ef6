//! The cache of verified keys (`auth::VerifiedKeys`), attacked from outside: a key
//! that worked a moment ago (so it is cached) stops working on the very next call
//! after its revocation, its member's removal or its organization's deletion; a role
//! change takes effect at once; a forged key that shares a cached key's id is refused.

use crate::harness::*;

use seatbroker::proto;
use tonic::Code;

fn list_members(org: &Org) -> proto::ListMembersRequest {
    proto::ListMembersRequest {
        org_id: org.id.clone(),
        ..Default::default()
    }
}

fn list_keys(org: &Org) -> proto::ListApiKeysRequest {
    proto::ListApiKeysRequest {
        org_id: org.id.clone(),
        ..Default::default()
    }
}

/// Calls with `key` until it is surely cached: the first call verifies it, the next
/// ones are served from the cache.
async fn use_key(server: &TestServer, key: &str) {
    let mut engine = server.session(key).await;
    for i in 0..3 {
        let lease = acquire_lease(&mut engine, KRE, &format!("warm-{i}")).await;
        release(&mut engine, &lease).await.expect("release");
    }
}

#[tokio::test]
async fn a_cached_key_revoked_is_refused_on_the_next_call() {
    let server = start().await;
    let org = server.licensed_organization("acme", 5, 5, &["a"]).await;
    use_key(&server, org.key(0)).await;
    let mut engine = server.session(org.key(0)).await;
    let lease = acquire_lease(&mut engine, KRE, "held").await;

    let mut owner = server.admin(&org.owner_key).await;
    let key_id = owner
        .list_api_keys(proto::ListApiKeysRequest {
            org_id: org.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .find(|k| k.email == org.email(0))
        .expect("the member's key")
        .key_id;
    owner
        .revoke_api_key(proto::RevokeApiKeyRequest {
            org_id: org.id.clone(),
            key_id,
        })
        .await
        .expect("revoke");
    assert_status(
        heartbeat(&mut engine, &lease).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
    assert_status(
        engine.acquire(acquire_request(KRE, "again")).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
}

#[tokio::test]
async fn a_removed_members_cached_key_is_refused_on_the_next_call() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 5, 5, &["a", "b"])
        .await;
    use_key(&server, org.key(0)).await;
    use_key(&server, org.key(1)).await;

    server
        .admin(&org.owner_key)
        .await
        .remove_member(proto::RemoveMemberRequest {
            org_id: org.id.clone(),
            email: org.email(0).into(),
        })
        .await
        .expect("remove member");
    let mut removed = server.session(org.key(0)).await;
    assert_status(
        removed.acquire(acquire_request(KRE, "after")).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
    // The cache was emptied, not poisoned: the other member's key still works.
    let mut other = server.session(org.key(1)).await;
    acquire_lease(&mut other, KRE, "still").await;
}

#[tokio::test]
async fn a_role_change_takes_effect_on_the_next_call() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &["a"]).await;
    let mut member = server.admin(org.key(0)).await;
    for _ in 0..3 {
        member
            .list_api_keys(list_keys(&org))
            .await
            .expect("a member lists their own keys");
    }
    let set_role = |role: proto::Role| proto::SetRoleRequest {
        org_id: org.id.clone(),
        email: org.email(0).into(),
        role: role as i32,
    };
    let add = |email: &str| proto::AddMemberRequest {
        org_id: org.id.clone(),
        email: email.into(),
        role: proto::Role::Member as i32,
    };
    assert_status(
        member.add_member(add("x@acme.test")).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
    let mut owner = server.admin(&org.owner_key).await;
    owner.set_role(set_role(proto::Role::Admin)).await.unwrap();
    member
        .add_member(add("x@acme.test"))
        .await
        .expect("an Admin adds a member");
    owner.set_role(set_role(proto::Role::Member)).await.unwrap();
    assert_status(
        member.add_member(add("y@acme.test")).await,
        Code::PermissionDenied,
        "only an Owner or Admin",
    );
}

#[tokio::test]
async fn a_deleted_organizations_cached_keys_are_refused_on_the_next_call() {
    let server = start().await;
    let org = server.licensed_organization("acme", 5, 5, &["a"]).await;
    use_key(&server, org.key(0)).await;
    let mut owner = server.admin(&org.owner_key).await;
    owner.list_members(list_members(&org)).await.unwrap();
    server
        .operator()
        .await
        .delete_organization(proto::DeleteOrganizationRequest {
            org_id: org.id.clone(),
        })
        .await
        .expect("delete");
    assert_status(
        server
            .session(org.key(0))
            .await
            .acquire(acquire_request(KRE, "after"))
            .await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
    assert_status(
        owner.list_members(list_members(&org)).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
}

#[tokio::test]
async fn a_forged_secret_beside_a_cached_key_is_refused() {
    let server = start().await;
    let org = server.licensed_organization("acme", 5, 5, &["a"]).await;
    use_key(&server, org.key(0)).await;
    // The cached key's id with another secret (and a valid checksum): same shape, same
    // record looked up, another token.
    let genuine = org.key(0);
    let body = &genuine[..genuine.len() - 8];
    let mut secret = body.as_bytes().to_vec();
    let last = secret.len() - 1;
    secret[last] = if secret[last] == b'0' { b'1' } else { b'0' };
    let body = String::from_utf8(secret).unwrap();
    let forged = format!("{body}{:08x}", crc32c::crc32c(body.as_bytes()));
    for _ in 0..3 {
        assert_status(
            server
                .session(&forged)
                .await
                .acquire(acquire_request(KRE, "forged"))
                .await,
            Code::Unauthenticated,
            "unknown or was revoked",
        );
    }
    // The genuine key, cached, still works afterwards.
    acquire_lease(&mut server.session(genuine).await, KRE, "genuine").await;
}
