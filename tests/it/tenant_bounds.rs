//! What one tenant may hold, over real gRPC: a KSE quota never falls below the seats
//! assigned (while a log of an older version that let it still loads), and the
//! per-member API key cap is counted without a scan and follows revocations and
//! removals. The caps of thousands of members are covered by `domain::state`'s tests.

use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use seatbroker::domain::{Command, Email, OrgId, Product, Quota, Role};
use seatbroker::limits;
use seatbroker::proto;
use seatbroker::storage::codec;
use seatbroker::wal::{RealFs, Wal, WalOptions};
use tonic::Code;

fn set_quota(org: &str, kse_seats: u32) -> proto::SetQuotaRequest {
    proto::SetQuotaRequest {
        org_id: org.into(),
        quota: Some(proto::Quota {
            kse_seats,
            kre_sessions: 5,
            expires_at_unix_ms: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_kse_quota_below_the_seats_assigned_is_refused() {
    let server = start().await;
    let org = server.organization("acme", 3, 5, &["a", "b", "c"]).await;
    org.assign(&server, KSE, org.emails()).await.unwrap();
    let mut operator = server.operator().await;
    assert_status(
        operator.set_quota(set_quota("acme", 1)).await,
        Code::FailedPrecondition,
        "unassign at least 2 of them first",
    );
    let usage = org.usage(&server, KSE).await;
    assert_eq!((usage.quota, usage.assigned), (3, 3), "nothing changed");
    // Down to exactly the seats assigned is allowed, and so is any KRE change.
    operator.set_quota(set_quota("acme", 3)).await.unwrap();
    // Once seats are given back, the quota may follow.
    server
        .admin(&org.owner_key)
        .await
        .unassign_licenses(proto::UnassignLicensesRequest {
            org_id: org.id.clone(),
            product: KSE,
            emails: vec![org.email(1).into(), org.email(2).into()],
        })
        .await
        .unwrap();
    operator.set_quota(set_quota("acme", 1)).await.unwrap();
    assert_eq!(org.usage(&server, KSE).await.quota, 1);
}

/// Writes the log an older version left when it accepted `SetQuota` below the seats
/// assigned: an organization with 3 KSE seats assigned and a quota of 1.
fn write_log_of_an_older_version(wal_dir: &std::path::Path) {
    let (wal, _) = Wal::open(wal_dir, Arc::new(RealFs), WalOptions::default()).unwrap();
    let org = OrgId::parse("acme").unwrap();
    let email = |local: &str| Email::parse(&format!("{local}@acme.test")).unwrap();
    let quota = |kse_seats| Quota {
        kse_seats,
        kre_sessions: 5,
        expires_at_unix_ms: None,
    };
    let mut commands = vec![Command::CreateOrganization {
        org: org.clone(),
        display_name: "Acme".into(),
        owner: email("owner"),
        quota: quota(3),
    }];
    for local in ["a", "b", "c"] {
        commands.push(Command::AddMember {
            org: org.clone(),
            email: email(local),
            role: Role::Member,
        });
    }
    commands.push(Command::AssignLicenses {
        org: org.clone(),
        product: Product::Kse,
        emails: vec![email("a"), email("b"), email("c")],
    });
    commands.push(Command::SetQuota {
        org,
        quota: quota(1),
    });
    let mut last = None;
    for command in &commands {
        last = Some(wal.submit(codec::encode_command(command)).unwrap());
    }
    last.unwrap().wait_blocking().unwrap();
    wal.close().unwrap();
}

#[tokio::test]
async fn a_log_holding_a_quota_below_the_seats_assigned_still_loads() {
    let data_dir = tempfile::tempdir().unwrap();
    let wal_dir = data_dir.path().join("wal");
    std::thread::scope(|s| s.spawn(|| write_log_of_an_older_version(&wal_dir)).join()).unwrap();
    let server = start_in(data_dir, Duration::from_secs(30)).await;
    // The state is what the older version acknowledged.
    let mut operator = server.operator().await;
    let usage = operator
        .get_usage(proto::GetUsageRequest {
            org_id: "acme".into(),
            window_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .products
        .into_iter()
        .find(|p| p.product == KSE)
        .unwrap();
    assert_eq!((usage.quota, usage.assigned), (1, 3));
    // New commands meet today's rule.
    assert_status(
        operator.set_quota(set_quota("acme", 2)).await,
        Code::FailedPrecondition,
        "unassign at least 1 of them first",
    );
}

async fn create_key_for(
    server: &TestServer,
    key: &str,
    org: &Org,
    email: &str,
) -> Result<proto::CreateApiKeyResponse, tonic::Status> {
    server
        .admin(key)
        .await
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: org.id.clone(),
            email: email.into(),
            label: String::new(),
            ..Default::default()
        })
        .await
        .map(|answer| answer.into_inner())
}

#[tokio::test]
async fn api_keys_per_member_are_capped_and_counted_through_revocations() {
    let server = start().await;
    let org = server.organization("acme", 1, 1, &["a"]).await;
    let member = org.email(0);
    // The member has one key from the setup; fill up to the cap.
    let mut last = None;
    for _ in 1..limits::API_KEYS_PER_MEMBER_MAX {
        last = Some(
            create_key_for(&server, &org.owner_key, &org, member)
                .await
                .unwrap(),
        );
    }
    assert_status(
        create_key_for(&server, &org.owner_key, &org, member).await,
        Code::ResourceExhausted,
        "already holds 100 API keys",
    );
    // Another member's keys are counted apart.
    create_key_for(&server, &org.owner_key, &org, &org.owner)
        .await
        .unwrap();
    // Revoking one makes room for one.
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .revoke_api_key(proto::RevokeApiKeyRequest {
            org_id: org.id.clone(),
            key_id: last.unwrap().key.unwrap().key_id,
        })
        .await
        .unwrap();
    create_key_for(&server, &org.owner_key, &org, member)
        .await
        .unwrap();
    // Removing the member revokes every key; added again, they start from none.
    let removed = owner
        .remove_member(proto::RemoveMemberRequest {
            org_id: org.id.clone(),
            email: member.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        removed.keys_revoked as usize,
        limits::API_KEYS_PER_MEMBER_MAX
    );
    owner
        .add_member(proto::AddMemberRequest {
            org_id: org.id.clone(),
            email: member.into(),
            role: 0,
        })
        .await
        .unwrap();
    for _ in 0..limits::API_KEYS_PER_MEMBER_MAX {
        create_key_for(&server, &org.owner_key, &org, member)
            .await
            .unwrap();
    }
    assert_status(
        create_key_for(&server, &org.owner_key, &org, member).await,
        Code::ResourceExhausted,
        "revoke that member's unused keys",
    );
}
