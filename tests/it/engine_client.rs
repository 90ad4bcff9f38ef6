//! The engine client library (`seatbroker::engine_client`) against the real broker:
//! many seats share one stream, a lost seat says why, seats survive a daemon restart
//! (SIGKILL included) by re-attaching, and only UNAVAILABLE is retried.

use std::time::Duration;

use seatbroker::engine_client::{ClientOptions, ConnectError, EngineClient, LostReason};
use seatbroker::proto::{self, Product};
use tonic::Code;

use crate::harness::*;

/// Every wait of these tests on the broker is bounded by this.
const DEADLINE: Duration = Duration::from_secs(20);

async fn engine(daemon: &impl DaemonApi, key: &str) -> EngineClient {
    let options = ClientOptions::new([daemon.url()], key);
    EngineClient::connect(options)
        .await
        .expect("open the stream")
}

async fn active(daemon: &impl DaemonApi, org: &Org) -> u32 {
    org.usage(daemon, KRE).await.active_sessions
}

#[tokio::test]
async fn many_seats_share_one_stream_up_to_the_quota() {
    let server = start().await;
    let org = server.licensed_organization("many", 0, 5, &["eve"]).await;
    let client = engine(&server, org.key(0)).await;
    let mut seats = Vec::new();
    for n in 0..5 {
        let seat = client
            .acquire(Product::Kre)
            .label(format!("seat {n}"))
            .await;
        seats.push(seat.expect("a seat within the quota"));
    }
    let mut ids: Vec<&str> = seats.iter().map(|seat| seat.lease_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "five leases, not one lease five times");
    assert_eq!(active(&server, &org).await, 5);

    let refused = client
        .acquire(Product::Kre)
        .await
        .expect_err("the quota is full");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    for seat in seats.drain(..3) {
        seat.release().await.expect("released");
    }
    assert_eq!(
        active(&server, &org).await,
        2,
        "released seats are free at once"
    );
    drop(seats);
    tokio::time::timeout(DEADLINE, async {
        while active(&server, &org).await != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("dropped seats are released");
}

#[tokio::test]
async fn a_terminated_seat_is_lost_with_the_reason_and_the_others_are_kept() {
    let server = start().await;
    let org = server.licensed_organization("lost", 0, 2, &["eve"]).await;
    let client = engine(&server, org.key(0)).await;
    let terminated = client.acquire(Product::Kre).await.expect("a seat");
    let kept = client.acquire(Product::Kre).await.expect("a seat");
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id: terminated.lease_id().to_owned(),
        })
        .await
        .expect("terminate");
    let lost = tokio::time::timeout(DEADLINE, terminated.lost())
        .await
        .expect("the termination is pushed");
    assert_eq!(lost.reason, LostReason::Terminated, "{lost}");
    assert_eq!(kept.lost_now(), None);
    kept.release().await.expect("released");
}

#[tokio::test]
async fn seats_are_reattached_after_the_daemon_is_killed_and_restarted() {
    let ttl = "6000";
    let data_dir = tempfile::tempdir().expect("a data directory");
    let serve = || {
        Serve::new()
            .data_dir(data_dir.path())
            .args(["--lease-ttl-ms", ttl])
    };
    let daemon = serve().start().await;
    let org = daemon
        .licensed_organization("restart", 0, 2, &["eve"])
        .await;
    let client = engine(&daemon, org.key(0)).await;
    let seats = [
        client.acquire(Product::Kre).await.expect("a seat"),
        client.acquire(Product::Kre).await.expect("a seat"),
    ];
    let addr = daemon.addr();
    daemon.kill();
    let daemon = serve().listen(addr).start().await;
    // Past the whole TTL: only renewals on the new stream keep the seats.
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    for seat in &seats {
        assert_eq!(seat.lost_now(), None, "the seat survived the restart");
    }
    let listed = sessions(&daemon.admin(&org.owner_key).await, &org.id, KRE).await;
    let mut listed: Vec<(String, u64)> = listed
        .into_iter()
        .map(|lease| (lease.lease_id, lease.generation))
        .collect();
    let mut held: Vec<(String, u64)> = seats
        .iter()
        .map(|seat| (seat.lease_id().to_owned(), seat.generation()))
        .collect();
    listed.sort();
    held.sort();
    assert_eq!(listed, held, "the same leases continue, same generations");
}

#[tokio::test]
async fn a_refused_key_is_final_and_an_unreachable_broker_is_retryable() {
    let server = start().await;
    let options = ClientOptions::new([server.url()], "sbk_not_a_real_key");
    let refused = EngineClient::connect(options).await.expect_err("a bad key");
    match &refused {
        ConnectError::Refused { status, .. } => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}")
        }
        other => panic!("{other}"),
    }
    assert!(!refused.is_retryable(), "a bad key is not retried");

    let nobody = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = nobody.local_addr().expect("its address");
    drop(nobody);
    let mut options = ClientOptions::new([format!("http://{addr}")], "sbk_key");
    options.connect_timeout = Duration::from_secs(2);
    let unreachable = EngineClient::connect(options)
        .await
        .expect_err("nothing listens");
    assert!(unreachable.is_retryable(), "{unreachable}");
}
