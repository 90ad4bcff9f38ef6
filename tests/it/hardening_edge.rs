//! The gRPC edge against hostile and careless clients, on the real binary: slow
//! request bodies with and without a key, HTTP/2 rapid reset, silent sockets under a
//! low descriptor limit, idle connections, and broker calls during recovery. Memory
//! is the daemon's resident set (`VmRSS`), with generous stated bounds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;
use h2::client::{ResponseFuture, SendRequest};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::codegen::{Bytes, http};

const MIB: u64 = 1024 * 1024;
/// How much the daemon's resident memory may grow under an attack.
const RSS_GROWTH_BYTES_MAX: u64 = 64 * MIB;
/// How far above its level before the attack the daemon's memory must come back
/// once the attackers are gone.
const RSS_RETURN_BYTES_MAX: u64 = 16 * MIB;
/// What each slow stream announces in its 5-byte gRPC prefix.
const DECLARED_MESSAGE_BYTES: usize = 1024 * 1024;
/// Streams each attacking connection tries to open (the daemon may allow fewer).
const STREAMS_PER_CONNECTION: usize = 200;
/// No phase of a test waits longer than this.
const WAIT_MAX: Duration = Duration::from_secs(60);

const CREATE_ORGANIZATION: &str = "/seatbroker.v1.AdminService/CreateOrganization";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The daemon's resident memory, from `/proc/PID/status`.
fn resident_bytes(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .expect("the daemon's /proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in kB");
    kib * 1024
}

/// A raw HTTP/2 connection and the task that drives it (it ends when the connection
/// closes, from either side).
async fn h2_connect(addr: SocketAddr) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the daemon");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    (send, tokio::spawn(connection))
}

fn grpc_request(addr: SocketAddr, path: &str, key: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    request.body(()).expect("a request")
}

/// The 5-byte gRPC prefix of an uncompressed message of `len` bytes.
fn grpc_prefix(len: usize) -> Bytes {
    let mut prefix = vec![0u8];
    prefix.extend((len as u32).to_be_bytes());
    Bytes::from(prefix)
}

/// Sends `len` zero bytes as the daemon's flow control allows; false when the
/// daemon reset the stream (or the connection) first.
async fn send_zeros(stream: &mut h2::SendStream<Bytes>, mut len: usize) -> bool {
    while len > 0 {
        stream.reserve_capacity(len.min(ZEROS.len()));
        match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(0)) => continue,
            Some(Ok(granted)) => {
                let n = granted.min(len).min(ZEROS.len());
                if stream
                    .send_data(Bytes::from_static(&ZEROS[..n]), false)
                    .is_err()
                {
                    return false;
                }
                len -= n;
            }
            _ => return false,
        }
    }
    true
}

/// Connections that each open streams announcing a large message and send all of it
/// but its last byte, never finishing.
struct SlowBodies {
    /// The gRPC status of every stream the daemon answered.
    codes: Arc<Mutex<Vec<String>>>,
    streams_opened: usize,
    tasks: Vec<JoinHandle<()>>,
    connections: Vec<JoinHandle<Result<(), h2::Error>>>,
    /// Streams kept open (dropping one would reset it).
    held: Arc<Mutex<Vec<h2::SendStream<Bytes>>>>,
}

impl SlowBodies {
    async fn start(addr: SocketAddr, key: Option<&str>, connections: usize) -> SlowBodies {
        let mut attack = SlowBodies {
            codes: Arc::default(),
            streams_opened: 0,
            tasks: Vec::new(),
            connections: Vec::new(),
            held: Arc::default(),
        };
        for _ in 0..connections {
            let (mut send, driver) = h2_connect(addr).await;
            attack.connections.push(driver);
            for _ in 0..STREAMS_PER_CONNECTION {
                // The daemon's stream limit stops this connection's new streams.
                let ready = tokio::time::timeout(Duration::from_secs(1), send.clone().ready());
                let Ok(Ok(ready)) = ready.await else { break };
                send = ready;
                let request = grpc_request(addr, CREATE_ORGANIZATION, key);
                let Ok((response, stream)) = send.send_request(request, false) else {
                    break;
                };
                attack.streams_opened += 1;
                attack.tasks.push(tokio::spawn(record_code(
                    response,
                    Arc::clone(&attack.codes),
                )));
                attack.tasks.push(tokio::spawn(send_all_but_last_byte(
                    stream,
                    Arc::clone(&attack.held),
                )));
            }
        }
        attack
    }

    /// Waits until every stream has sent all it will (or a bounded time passed).
    async fn sent(&mut self) {
        let deadline = Instant::now() + WAIT_MAX;
        while self.held.lock().unwrap().len() + self.codes.lock().unwrap().len()
            < self.streams_opened
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn codes(&self) -> Vec<String> {
        self.codes.lock().unwrap().clone()
    }
}

impl Drop for SlowBodies {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for connection in &self.connections {
            connection.abort();
        }
    }
}

async fn send_all_but_last_byte(
    mut stream: h2::SendStream<Bytes>,
    held: Arc<Mutex<Vec<h2::SendStream<Bytes>>>>,
) {
    if stream
        .send_data(grpc_prefix(DECLARED_MESSAGE_BYTES), false)
        .is_ok()
        && send_zeros(&mut stream, DECLARED_MESSAGE_BYTES - 1).await
    {
        held.lock().unwrap().push(stream);
    }
}

/// Records the `grpc-status` the daemon answered a stream with.
async fn record_code(response: ResponseFuture, codes: Arc<Mutex<Vec<String>>>) {
    let code = match response.await {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned(),
        Err(error) => format!("reset: {error}"),
    };
    codes.lock().unwrap().push(code);
}

/// An organization and its owner's key, through the real API.
/// Its owner holds a KRE license, so the owner's key also serves as an engine's.
async fn owner_key(daemon: &Daemon) -> String {
    let org = daemon.organization("acme", 0, 1000, &[]).await;
    org.assign(daemon, KRE, vec![org.owner.clone()])
        .await
        .expect("assign a KRE license");
    org.owner_key
}

/// A legitimate client's round: an admin listing and an engine's acquire, heartbeat
/// and release, each on its own connection as real clients do.
async fn legitimate_calls(daemon: &Daemon, key: &str, round: usize) {
    // The operator's listing works.
    organizations(&daemon.operator().await).await;
    let mut engine = daemon.session(key).await;
    let lease = acquire_lease(&mut engine, KRE, &format!("engine-{round}")).await;
    heartbeat(&mut engine, &lease)
        .await
        .expect("the engine's heartbeat works");
    release(&mut engine, &lease)
        .await
        .expect("the engine's release works");
}

/// Waits, while a legitimate client keeps calling, until the daemon's memory is back
/// within `bound` of `level`; returns the last reading.
async fn memory_returns(daemon: &Daemon, key: &str, level: u64, bound: u64) -> u64 {
    let deadline = Instant::now() + WAIT_MAX;
    for round in 100.. {
        let now = resident_bytes(daemon);
        if now <= level + bound || Instant::now() > deadline {
            return now;
        }
        legitimate_calls(daemon, key, round).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_with_and_without_a_key_hold_bounded_memory_and_others_keep_working() {
    let daemon = Serve::new().start().await;
    let key = owner_key(&daemon).await;
    for round in 0..3 {
        legitimate_calls(&daemon, &key, round).await;
    }
    let before = resident_bytes(&daemon);

    let mut strangers = SlowBodies::start(daemon.addr(), None, 2).await;
    let mut members = SlowBodies::start(daemon.addr(), Some(&key), 4).await;
    let mut peak = resident_bytes(&daemon);
    strangers.sent().await;
    members.sent().await;
    for round in 3..13 {
        legitimate_calls(&daemon, &key, round).await;
        peak = peak.max(resident_bytes(&daemon));
    }
    peak = peak.max(resident_bytes(&daemon));
    let growth = peak.saturating_sub(before);
    eprintln!(
        "resident before {} MiB, peak {} MiB; {} streams without a key, {} with one ({} held open)",
        before / MIB,
        peak / MIB,
        strangers.streams_opened,
        members.streams_opened,
        members.held.lock().unwrap().len(),
    );
    assert!(
        growth <= RSS_GROWTH_BYTES_MAX,
        "the daemon grew by {} MiB under slow bodies (bound {} MiB)",
        growth / MIB,
        RSS_GROWTH_BYTES_MAX / MIB
    );
    let unauthenticated = (Code::Unauthenticated as i32).to_string();
    // Streams past the limit, opened before the client learnt it, are reset.
    assert!(
        strangers
            .codes()
            .iter()
            .all(|code| *code == unauthenticated || code.starts_with("reset")),
        "every call without a key is refused UNAUTHENTICATED: {:?}",
        strangers.codes()
    );
    assert!(strangers.codes().contains(&unauthenticated));
    assert_eq!(strangers.codes().len(), strangers.streams_opened);
    let exhausted = (Code::ResourceExhausted as i32).to_string();
    assert!(
        members.codes().contains(&exhausted),
        "slow bodies past the budget are refused RESOURCE_EXHAUSTED: {:?}",
        members.codes()
    );

    drop(strangers);
    drop(members);
    let after = memory_returns(&daemon, &key, before, RSS_RETURN_BYTES_MAX).await;
    assert!(
        after <= before + RSS_RETURN_BYTES_MAX,
        "memory did not come back after the attackers left: {} MiB, {} MiB before",
        after / MIB,
        before / MIB
    );
    legitimate_calls(&daemon, &key, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_streams_cost_bounded_memory_and_the_daemon_stays_responsive() {
    const STREAMS: usize = 20_000;
    let daemon = Serve::new().start().await;
    let key = owner_key(&daemon).await;
    legitimate_calls(&daemon, &key, 0).await;
    let before = resident_bytes(&daemon);
    let mut peak = before;
    let mut reset = 0;
    let mut connections = 0;
    let started = Instant::now();
    while reset < STREAMS && started.elapsed() < WAIT_MAX {
        let (mut send, driver) = h2_connect(daemon.addr()).await;
        connections += 1;
        while reset < STREAMS {
            let ready = tokio::time::timeout(Duration::from_secs(5), send.clone().ready());
            let Ok(Ok(ready)) = ready.await else { break };
            send = ready;
            let request = grpc_request(daemon.addr(), HEALTH_CHECK, None);
            let Ok((_response, mut stream)) = send.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            reset += 1;
            if reset % 1000 == 0 {
                peak = peak.max(resident_bytes(&daemon));
            }
        }
        driver.abort();
    }
    eprintln!(
        "{reset} streams opened and reset over {connections} connections; resident {} MiB before, peak {} MiB",
        before / MIB,
        peak / MIB
    );
    assert_eq!(reset, STREAMS, "the attack ran to its end");
    assert!(
        connections > 1,
        "the daemon closes connections that reset streams in a loop (GOAWAY)"
    );
    assert!(
        peak.saturating_sub(before) <= RSS_GROWTH_BYTES_MAX,
        "the daemon grew by {} MiB under rapid reset",
        peak.saturating_sub(before) / MIB
    );
    legitimate_calls(&daemon, &key, 1).await;
}

/// Waits until the daemon closes `socket` (end of file or reset), reading what it
/// sends meanwhile (its HTTP/2 settings); false if it is still open after the
/// bounded wait.
async fn closed_by_daemon(mut socket: tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let until_closed = async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), until_closed)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_past_the_connection_cap_are_closed_and_new_clients_get_in() {
    const DESCRIPTORS: u32 = 256;
    const SILENT_SOCKETS: usize = 200;
    let daemon = Serve::new()
        .descriptors_max(DESCRIPTORS)
        .args(["--handshake-timeout-ms", "1000"])
        .log("info")
        .start()
        .await;
    // More silent sockets than the daemon has connection slots.
    let mut silent = Vec::new();
    for _ in 0..SILENT_SOCKETS {
        silent.push(
            tokio::net::TcpStream::connect(daemon.addr())
                .await
                .expect("the kernel accepts into the backlog"),
        );
    }
    let closed = futures_all(silent.into_iter().map(closed_by_daemon)).await;
    let still_open = closed.iter().filter(|closed| !**closed).count();
    assert_eq!(
        still_open, 0,
        "silent sockets still open after the handshake deadline"
    );
    // New clients get in, and calls work.
    organizations(&daemon.operator().await).await;
    // The daemon says what it has: the descriptor limit and the cap it derived.
    let fields = daemon
        .wait_for_log("connection cap set from the descriptor limit")
        .expect("the daemon logs its descriptor limit and connection cap");
    assert_eq!(fields["descriptors_limit"], u64::from(DESCRIPTORS));
    let cap = fields["connections_max"].as_u64().unwrap();
    assert!(
        cap < SILENT_SOCKETS as u64 && cap + 64 <= u64::from(DESCRIPTORS),
        "the cap {cap} keeps a reserve of the {DESCRIPTORS} descriptors"
    );
}

/// Runs every future to its end, concurrently, and returns their outputs in order.
async fn futures_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.expect("task"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let daemon = Serve::new()
        .args([
            "--handshake-timeout-ms",
            "1000",
            "--idle-timeout-ms",
            "1000",
        ])
        .start()
        .await;
    let key = owner_key(&daemon).await;
    // An idle connection: one health check, then nothing.
    let (idle, idle_driver) = h2_connect(daemon.addr()).await;
    let (response, mut stream) = idle
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(grpc_request(daemon.addr(), HEALTH_CHECK, None), false)
        .unwrap();
    stream.send_data(grpc_prefix(0), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // A busy one: a call whose body is still coming.
    let (busy, _busy_driver) = h2_connect(daemon.addr()).await;
    let (busy_response, mut busy_stream) = busy
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(
            grpc_request(daemon.addr(), CREATE_ORGANIZATION, Some(&key)),
            false,
        )
        .unwrap();
    busy_stream.send_data(grpc_prefix(100), false).unwrap();
    assert!(send_zeros(&mut busy_stream, 50).await);

    tokio::time::timeout(WAIT_MAX, idle_driver)
        .await
        .expect("the daemon closes the idle connection")
        .unwrap()
        .unwrap();
    // Two more idle periods pass; the call in flight keeps its connection open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(send_zeros(&mut busy_stream, 49).await);
    busy_stream
        .send_data(Bytes::from_static(&[0]), true)
        .unwrap();
    let answer = tokio::time::timeout(WAIT_MAX, busy_response)
        .await
        .expect("an answer")
        .expect("the busy connection stayed open");
    assert_eq!(answer.status(), 200);
    drop(idle);
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_calls_during_recovery_answer_unavailable_then_ok_never_unimplemented() {
    // Recovery made to take two seconds longer, so calls land in it.
    let daemon = Serve::new()
        .env("SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS", "2000")
        .spawn();
    // The port accepts during recovery.
    let mut operator = daemon.operator().await;
    let mut unavailable = 0;
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let answer = operator
            .list_organizations(seatbroker::proto::ListOrganizationsRequest::default())
            .await;
        match answer {
            Ok(_) => break,
            // One server answers from recovery to shutdown, so no call races a
            // handover: every answer is UNAVAILABLE until it is OK (never CANCELLED).
            Err(status) => {
                assert_ne!(status.code(), Code::Unimplemented, "{status:?}");
                assert_status::<()>(Err(status), Code::Unavailable, "");
                unavailable += 1;
            }
        }
        assert!(Instant::now() < deadline, "the daemon never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unavailable > 0, "some calls landed during recovery");
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_during_recovery_stops_the_daemon_cleanly_without_serving() {
    let mut daemon = Serve::new()
        .env("SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS", "1500")
        .log("info")
        .spawn();
    // Bound: the stop-signal handlers are installed before recovery starts.
    daemon.addr();
    daemon.signal("TERM");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    let lines = daemon.log_lines().join("\n");
    assert!(lines.contains("recovered the data directory"), "{lines}");
    assert!(!lines.contains("seatbroker serving"), "{lines}");
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_recovery_a_broker_call_is_refused_unavailable_saying_so() {
    let daemon = Serve::new()
        .env("SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS", "3000")
        .spawn();
    let mut engine = daemon.session(OPERATOR_KEY).await;
    assert_status(
        engine.acquire(acquire_request(KRE, "engine-1")).await,
        Code::Unavailable,
        "recovering",
    );
}
