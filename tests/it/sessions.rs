//! Engine sessions over real gRPC: quotas, the acquire race, idempotent retries,
//! fencing, expiry and the end of sessions by admin action.

use std::time::{Duration, Instant};

use crate::harness::*;
use seatbroker::client::Authorized;
use seatbroker::proto::{self, session_service_client::SessionServiceClient};
use tonic::Code;

/// A daemon; organization acme with `kre_sessions` KRE sessions and one member, `a`,
/// holding a KRE license; and a's engine.
async fn one_engine(kre_sessions: u32) -> (TestServer, Org, SessionServiceClient<Authorized>) {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, kre_sessions, &["a"])
        .await;
    let engine = server.session(org.key(0)).await;
    (server, org, engine)
}

/// Sets `org`'s quota to `kre_sessions` KRE sessions and no KSE seat, the license
/// expiring at `expires_at_unix_ms` (0: never), as the operator.
async fn set_quota(server: &TestServer, org: &Org, kre_sessions: u32, expires_at_unix_ms: i64) {
    let quota = proto::Quota {
        kse_seats: 0,
        kre_sessions,
        expires_at_unix_ms,
    };
    let request = proto::SetQuotaRequest {
        org_id: org.id.clone(),
        quota: Some(quota),
        // Tests set expiries in the past on purpose.
        allow_past_expiry: true,
        ..Default::default()
    };
    server.operator().await.set_quota(request).await.unwrap();
}

#[tokio::test]
async fn kre_quota_is_a_hard_boundary() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 2, &["a", "b", "c"])
        .await;
    let mut a = server.session(org.key(0)).await;
    let mut b = server.session(org.key(1)).await;
    let mut c = server.session(org.key(2)).await;
    let lease_a = acquire_lease(&mut a, KRE, "engine-a").await;
    b.acquire(acquire_request(KRE, "engine-b")).await.unwrap();
    assert_status(
        c.acquire(acquire_request(KRE, "engine-c")).await,
        Code::ResourceExhausted,
        "2 of 2",
    );
    release(&mut a, &lease_a).await.unwrap();
    c.acquire(acquire_request(KRE, "engine-c")).await.unwrap();
    let usage = org.usage(&server, KRE).await;
    assert_eq!(
        (usage.active_sessions, usage.peak_sessions, usage.denials),
        (2, 2, 1)
    );
}

// Several worker threads so that the server really serves the acquires in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_acquires_against_quota_ten_grant_exactly_ten() {
    let server = start().await;
    let engines = 64;
    let names: Vec<String> = (0..engines).map(|i| format!("e{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let org = server.licensed_organization("race", 0, 10, &names).await;
    let mut clients = Vec::new();
    for i in 0..engines {
        clients.push(server.session(org.key(i)).await);
    }
    for round in 0..25 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(engines));
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut client)| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    client
                        .acquire(acquire_request(KRE, &format!("engine-{i}")))
                        .await
                        .map(|r| (client, r.into_inner()))
                })
            })
            .collect();
        let mut granted = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(ok) => granted.push(ok),
                Err(status) => assert_eq!(
                    status.code(),
                    Code::ResourceExhausted,
                    "round {round}: {status:?}"
                ),
            }
        }
        assert_eq!(granted.len(), 10, "round {round} granted {}", granted.len());
        for (mut client, response) in granted {
            let lease = response.lease.unwrap();
            release(&mut client, &lease).await.unwrap();
        }
    }
    let usage = org.usage(&server, KRE).await;
    assert_eq!(usage.active_sessions, 0);
    assert_eq!(usage.peak_sessions, 10);
}

#[tokio::test]
async fn acquire_is_idempotent_per_engine() {
    let (server, org, mut engine) = one_engine(1).await;
    let first = engine
        .acquire(acquire_request(KRE, "engine-1"))
        .await
        .unwrap()
        .into_inner();
    let retry = engine
        .acquire(acquire_request(KRE, "engine-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.resumed && retry.resumed);
    let (first, retry) = (first.lease.unwrap(), retry.lease.unwrap());
    assert_eq!(
        (first.lease_id, first.generation),
        (retry.lease_id, retry.generation)
    );
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 1);
    // A second engine of the same user is a second session, refused by the quota of 1.
    assert_status(
        engine.acquire(acquire_request(KRE, "engine-2")).await,
        Code::ResourceExhausted,
        "quota",
    );
}

#[tokio::test]
async fn generations_increase_and_stale_ones_are_refused() {
    let (_server, _, mut engine) = one_engine(5).await;
    let mut last = 0;
    for _ in 0..5 {
        let lease = acquire_lease(&mut engine, KRE, "engine").await;
        assert!(lease.generation > last);
        last = lease.generation;
        let stale = proto::HeartbeatRequest {
            lease_id: lease.lease_id.clone(),
            generation: lease.generation - 1,
        };
        assert_status(
            engine.heartbeat(stale).await,
            Code::FailedPrecondition,
            "superseded",
        );
        release(&mut engine, &lease).await.unwrap();
        assert_status(
            heartbeat(&mut engine, &lease).await,
            Code::NotFound,
            "expired, was released or was terminated",
        );
    }
}

#[tokio::test]
async fn kse_sessions_need_a_seat_and_allow_one_engine_per_user() {
    let server = start().await;
    let org = server.organization("acme", 1, 0, &["a", "b"]).await;
    org.assign(&server, KSE, vec![org.email(0).into()])
        .await
        .unwrap();
    let mut a = server.session(org.key(0)).await;
    let mut b = server.session(org.key(1)).await;
    a.acquire(acquire_request(KSE, "laptop")).await.unwrap();
    assert_status(
        a.acquire(acquire_request(KSE, "desktop")).await,
        Code::FailedPrecondition,
        "one engine at a time",
    );
    assert_status(
        b.acquire(acquire_request(KSE, "laptop")).await,
        Code::FailedPrecondition,
        "no KSE license",
    );
    assert_status(
        b.acquire(acquire_request(KRE, "runner")).await,
        Code::FailedPrecondition,
        "no KRE license",
    );
}

#[tokio::test]
async fn a_lease_lives_while_heartbeating_and_expires_within_ttl_plus_a_second_after() {
    let ttl = Duration::from_millis(600);
    let server = start_with_ttl(ttl).await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut a = server.session(org.key(0)).await;
    let lease = acquire_lease(&mut a, KRE, "engine").await;
    assert_eq!(lease.heartbeat_interval_ms, 200);
    // Heartbeating at the advertised interval over several TTLs keeps the lease.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(u64::from(
            lease.heartbeat_interval_ms,
        )))
        .await;
        heartbeat(&mut a, &lease)
            .await
            .expect("a heartbeating engine keeps its lease");
    }
    let last_heartbeat = Instant::now();
    let mut b = server.session(org.key(1)).await;
    // Once heartbeats stop, the seat comes free within ttl + 1 s (with slack for a loaded machine).
    let freed_at = loop {
        if b.acquire(acquire_request(KRE, "engine-b")).await.is_ok() {
            break Instant::now();
        }
        assert!(
            last_heartbeat.elapsed() < ttl + Duration::from_secs(3),
            "lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        freed_at - last_heartbeat >= ttl,
        "expired before ttl had passed"
    );
    let heartbeat = heartbeat(&mut a, &lease).await;
    assert_status(heartbeat, Code::NotFound, "stop the engine");
    assert_eq!(org.usage(&server, KRE).await.expiries, 1);
}

#[tokio::test]
async fn removing_a_member_or_a_license_ends_their_sessions() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 2, 5, &["a", "b"])
        .await;
    org.assign(&server, KSE, org.emails()).await.unwrap();
    let mut a = server.session(org.key(0)).await;
    let mut b = server.session(org.key(1)).await;
    a.acquire(acquire_request(KRE, "a-1")).await.unwrap();
    a.acquire(acquire_request(KRE, "a-2")).await.unwrap();
    let kse_lease = acquire_lease(&mut a, KSE, "a-studio").await;
    b.acquire(acquire_request(KRE, "b-1")).await.unwrap();
    let mut owner = server.admin(&org.owner_key).await;

    let unassigned = owner
        .unassign_licenses(proto::UnassignLicensesRequest {
            org_id: org.id.clone(),
            product: KRE,
            emails: vec![org.email(0).into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unassigned.sessions_ended, 2);
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 1);
    // The KSE session of the same user is untouched.
    heartbeat(&mut a, &kse_lease).await.unwrap();

    let removed = owner
        .remove_member(proto::RemoveMemberRequest {
            org_id: org.id.clone(),
            email: org.email(0).into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((removed.sessions_ended, removed.keys_revoked), (1, 1));
    assert_eq!(org.usage(&server, KSE).await.active_sessions, 0);
    // The removed member's key no longer works at all.
    assert_status(
        a.acquire(acquire_request(KRE, "a-3")).await,
        Code::Unauthenticated,
        "unknown or was revoked",
    );
}

#[tokio::test]
async fn lowering_the_kre_quota_grants_nothing_new_until_under_it() {
    let (server, org, mut a) = one_engine(3).await;
    let mut leases = Vec::new();
    for i in 0..3 {
        leases.push(acquire_lease(&mut a, KRE, &format!("e{i}")).await);
    }
    set_quota(&server, &org, 1, 0).await;
    // Running sessions keep going; new ones wait until the count is under the quota.
    for lease in &leases {
        heartbeat(&mut a, lease).await.unwrap();
    }
    assert_status(
        a.acquire(acquire_request(KRE, "new")).await,
        Code::ResourceExhausted,
        "3 of 1",
    );
    for lease in leases.drain(..2) {
        release(&mut a, &lease).await.unwrap();
    }
    assert_status(
        a.acquire(acquire_request(KRE, "new")).await,
        Code::ResourceExhausted,
        "1 of 1",
    );
    let last = leases.pop().unwrap();
    release(&mut a, &last).await.unwrap();
    a.acquire(acquire_request(KRE, "new")).await.unwrap();
}

#[tokio::test]
async fn an_expired_license_grants_nothing() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    // A license that ran out at the start of 2000.
    set_quota(&server, &org, 3, 946_684_800_000).await;
    let mut a = server.session(org.key(0)).await;
    assert_status(
        a.acquire(acquire_request(KRE, "e")).await,
        Code::FailedPrecondition,
        "expired",
    );
}

#[tokio::test]
async fn an_admin_can_list_and_terminate_sessions() {
    let (server, org, mut a) = one_engine(3).await;
    let lease = acquire_lease(&mut a, KRE, "e").await;
    let mut owner = server.admin(&org.owner_key).await;
    let listed = sessions(&owner, &org.id, 0).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].lease_id, lease.lease_id);
    owner
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .unwrap();
    let heartbeat = heartbeat(&mut a, &lease).await;
    assert_status(heartbeat, Code::NotFound, "terminated");
}
