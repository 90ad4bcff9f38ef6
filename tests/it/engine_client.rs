//! The engine client library (`seatbroker::engine_client`) against the real broker:
//! many seats share one stream, a lost seat says why, seats survive a daemon restart
//! (SIGKILL included) by re-attaching, a connection gone silent is noticed by the
//! HTTP/2 keepalive and the seats move to the next address, and only UNAVAILABLE is
//! retried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use seatbroker::engine_client::{
    ClientOptions, ConnectError, EngineClient, Keepalive, LostReason, Seat,
};
use seatbroker::proto::{self, Product};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
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

/// The owner terminates `seat`'s session; the seat hears it, with that reason.
async fn terminate_and_hear(daemon: &impl DaemonApi, org: &Org, seat: &Seat) {
    daemon
        .admin(&org.owner_key)
        .await
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id: seat.lease_id().to_owned(),
        })
        .await
        .expect("terminate");
    let lost = tokio::time::timeout(DEADLINE, seat.lost())
        .await
        .expect("the termination is pushed to the seat's stream");
    assert_eq!(lost.reason, LostReason::Terminated, "{lost}");
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
    terminate_and_hear(&server, &org, &terminated).await;
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

/// A TCP proxy of the test's own in front of `upstream`: it forwards both ways until
/// [`BlackHole::silence`], and from then on reads and drops every byte of every
/// connection, old and new, without closing one: a peer that vanished without a FIN.
struct BlackHole {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    /// Dropped with the proxy: its tasks stop with the test.
    _tasks: JoinSet<()>,
}

impl BlackHole {
    async fn start(upstream: SocketAddr) -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let silent = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let (accepting_silent, accepted) = (silent.clone(), connections.clone());
        tasks.spawn(async move {
            // The pumps live as long as the accept loop: aborted with it.
            let mut pumps = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pumps.spawn(pump(client_read, server_write, accepting_silent.clone()));
                pumps.spawn(pump(server_read, client_write, accepting_silent.clone()));
            }
        });
        BlackHole {
            addr,
            silent,
            connections,
            _tasks: tasks,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while the proxy is not silent; silent, it reads and drops.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    if !silent.load(Ordering::SeqCst) {
        let _ = to.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_noticed_by_keepalive_and_the_seat_moves_to_the_next_address() {
    let ttl = Duration::from_millis(3_000);
    let server = start_with_ttl(ttl).await;
    let org = server.licensed_organization("silent", 0, 1, &["eve"]).await;
    let proxy = BlackHole::start(server.addr).await;
    let mut options = ClientOptions::new([proxy.url(), server.url()], org.key(0));
    options.keepalive = Keepalive {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(300),
    };
    let client = EngineClient::connect(options)
        .await
        .expect("open the stream through the proxy");
    let seat = client.acquire(Product::Kre).await.expect("a seat");
    // Pinged every 200 ms for a while, the connection is kept: the daemon does not
    // send GOAWAY to a client for pinging often.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        1,
        "one connection"
    );
    assert_eq!(seat.lost_now(), None);

    proxy.silence();
    // Past the whole TTL from the silence: only renewals on a stream to the second
    // address (re-attached there) keep the seat.
    tokio::time::sleep(ttl + Duration::from_millis(1_000)).await;
    assert_eq!(
        seat.lost_now(),
        None,
        "the seat survived the silent connection"
    );
    let listed = sessions(&server.admin(&org.owner_key).await, &org.id, KRE).await;
    let listed: Vec<(String, u64)> = listed
        .into_iter()
        .map(|lease| (lease.lease_id, lease.generation))
        .collect();
    assert_eq!(
        listed,
        [(seat.lease_id().to_owned(), seat.generation())],
        "the same lease continues, same generation"
    );
    // The lease is held by the new stream: a termination is pushed there.
    terminate_and_hear(&server, &org, &seat).await;
}
