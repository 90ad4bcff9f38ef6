//! Attacks on the HTTP/1 edge, where browsers and `curl` reach the console and the
//! JSON API: many large JSON bodies at once are held within the daemon's budget of
//! request bodies (the calls past it refused from their announced length, before any
//! byte of their body is read), a chunked body without a length is bounded by the
//! budget and by the message limit, and a client dribbling its request headers is
//! closed within the handshake deadline while a steady client on a kept-alive
//! connection is served. The refusals are checked, never timings.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::harness::*;

/// The smallest message limit and a daemon budget of four such bodies.
const REQUEST_BYTES_MAX: usize = 512 * 1024;
const REQUEST_BODIES_BYTES_MAX: usize = 2 * 1024 * 1024;
/// The body each large call announces: four fit in the budget, a fifth does not.
const BODY_BYTES: usize = 500 * 1024;
const HELD_MAX: usize = REQUEST_BODIES_BYTES_MAX / BODY_BYTES;
/// A generous bound on what the test waits for (the machine is shared).
const WAIT_MAX: Duration = Duration::from_secs(60);

async fn start_with_small_budget() -> TestServer {
    start_configured(tempfile::tempdir().expect("a data directory"), |settings| {
        settings.limits.request_bytes_max = REQUEST_BYTES_MAX;
        settings.limits.request_bodies_bytes_max = REQUEST_BODIES_BYTES_MAX;
    })
    .await
}

/// The head of a JSON `ListMembers` call announcing `length` bytes, or chunked.
fn call_head(key: &str, length: Option<usize>) -> String {
    let framing = match length {
        Some(length) => format!("content-length: {length}"),
        None => "transfer-encoding: chunked".into(),
    };
    format!(
        "POST /seatbroker.v1.AdminService/ListMembers HTTP/1.1\r\nhost: seatbroker\r\n\
         content-type: application/json\r\nauthorization: Bearer {key}\r\n{framing}\r\n\r\n"
    )
}

/// A `ListMembers` body of exactly `length` bytes: the JSON, then spaces.
fn padded_body(org: &str, length: usize) -> Vec<u8> {
    let mut body = format!("{{\"orgId\": \"{org}\"}}").into_bytes();
    body.resize(length, b' ');
    body
}

/// One chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed
}

/// Reads one HTTP/1 answer (its length announced): its status and body; `None` when
/// the connection closed first.
async fn read_answer(reader: &mut OwnedReadHalf) -> Option<(u16, String)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while received.len() < head_end + 4 + length {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
    Some((
        status,
        String::from_utf8_lossy(&received[head_end + 4..]).into_owned(),
    ))
}

type Answers = mpsc::UnboundedReceiver<(usize, Option<(u16, String)>)>;

/// Opens `calls` connections, each sending the head of a call announcing `length`
/// bytes and no byte of its body; their answers arrive on the receiver, by index.
async fn announce_calls(
    server: &TestServer,
    key: &str,
    calls: usize,
) -> (Vec<OwnedWriteHalf>, Answers) {
    let (answered, answers) = mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for call in 0..calls {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(call_head(key, Some(BODY_BYTES)).as_bytes())
            .await
            .expect("send the head");
        let answered = answered.clone();
        tokio::spawn(async move {
            let answer = read_answer(&mut reader).await;
            let _ = answered.send((call, answer));
        });
        writers.push(writer);
    }
    (writers, answers)
}

/// A new connection that has sent the head of a chunked call.
async fn chunked_call(server: &TestServer, key: &str) -> (OwnedReadHalf, OwnedWriteHalf) {
    let (reader, mut writer) = TcpStream::connect(server.addr)
        .await
        .expect("connect")
        .into_split();
    writer
        .write_all(call_head(key, None).as_bytes())
        .await
        .expect("send the head");
    (reader, writer)
}

/// Waits for `count` answers, each a refusal for the daemon's full budget.
async fn budget_refusals(answers: &mut Answers, count: usize) -> BTreeSet<usize> {
    let mut refused = BTreeSet::new();
    while refused.len() < count {
        let (call, answer) = tokio::time::timeout(WAIT_MAX, answers.recv())
            .await
            .expect("the calls past the budget are refused before their bodies are sent")
            .expect("an answer");
        let (status, body) = answer.expect("an answer, not a closed connection");
        assert_eq!(status, 429, "call {call}: {body}");
        assert!(
            body.contains("resource_exhausted") && body.contains("request_bodies_bytes_max"),
            "call {call}: {body}"
        );
        refused.insert(call);
    }
    refused
}

/// Twelve calls announce 500 KiB each at once: four are held (2 MiB, the daemon's
/// budget), eight are refused 429 from their headers without a byte of their body
/// read; a chunked body is refused once its first chunk would pass the full budget.
/// The held calls are answered once their bodies come, the budget is given back, and a
/// chunked body past the message limit is refused 413 before it is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_json_bodies_are_held_within_the_daemons_budget_and_chunked_ones_too() {
    const CALLS: usize = 12;
    let server = start_with_small_budget().await;
    let acme = server.organization("acme", 1, 1, &[]).await;
    let (mut writers, mut answers) = announce_calls(&server, &acme.owner_key, CALLS).await;
    let refused = budget_refusals(&mut answers, CALLS - HELD_MAX).await;

    // The budget is full: a chunked body is refused at its first chunk.
    let (mut reader, mut writer) = chunked_call(&server, &acme.owner_key).await;
    writer.write_all(&chunk(&[b' '; 64 * 1024])).await.unwrap();
    let (status, body) = tokio::time::timeout(WAIT_MAX, read_answer(&mut reader))
        .await
        .expect("the chunked call is answered")
        .expect("an answer");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("request_bodies_bytes_max"), "{body}");

    // The held calls read their bodies and answer.
    for (call, writer) in writers.iter_mut().enumerate() {
        if !refused.contains(&call) {
            writer
                .write_all(&padded_body("acme", BODY_BYTES))
                .await
                .expect("a held call reads its body");
        }
    }
    for _ in 0..HELD_MAX {
        let (call, answer) = tokio::time::timeout(WAIT_MAX, answers.recv())
            .await
            .expect("the held calls are answered")
            .expect("an answer");
        assert!(!refused.contains(&call));
        let (status, body) = answer.expect("an answer");
        assert_eq!(status, 200, "call {call}: {body}");
        assert!(body.contains("owner@acme.test"), "{body}");
    }

    // The budget is back: a chunked body past the message limit streams until it
    // passes it, and is refused 413 then, not buffered whole.
    let (mut reader, mut writer) = chunked_call(&server, &acme.owner_key).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let piece = chunk(&[b' '; 64 * 1024]);
            for _ in 0..(4 * REQUEST_BYTES_MAX / (64 * 1024)) {
                if writer.write_all(&piece).await.is_err() {
                    return;
                }
                sent.fetch_add(64 * 1024, Ordering::Relaxed);
            }
        })
    };
    let (status, body) = tokio::time::timeout(WAIT_MAX, read_answer(&mut reader))
        .await
        .expect("the oversized chunked call is answered")
        .expect("an answer");
    sender.abort();
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("resource_exhausted") && body.contains("larger than"),
        "{body}"
    );
    // And the daemon serves on.
    let answer = crate::harness::http::post_json(
        server.addr,
        "ListMembers",
        Some(&acme.owner_key),
        &serde_json::json!({"orgId": "acme"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// Reads `reader` until the daemon closes the connection.
async fn until_closed(reader: &mut OwnedReadHalf) {
    let mut buffer = [0u8; 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Sends `headers` one byte a second (a slowloris), counting the bytes sent.
async fn dribble(mut writer: OwnedWriteHalf, headers: &'static [u8], sent: Arc<AtomicUsize>) {
    for byte in headers {
        if writer.write_all(&[*byte]).await.is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Headers that take a minute and a half at a byte a second.
const SLOW_HEADERS: &[u8] = b"GET / HTTP/1.1\r\nhost: seatbroker\r\n\
    x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

/// With a 1 s handshake timeout: a client that dribbles its first request's headers,
/// and one that dribbles its second request's after a first one was answered, are
/// closed before their headers are complete (without the HTTP/1 bound the second one
/// would stay until the 5 minute idle deadline); a steady client making a request
/// every 300 ms on one kept-alive connection is answered all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dribbling_http1_headers_is_closed_and_a_steady_one_is_served() {
    let server = start_configured(tempfile::tempdir().expect("a data directory"), |settings| {
        settings.limits.handshake_timeout_ms = 1000;
    })
    .await;
    let addr = server.addr;
    let steady = tokio::spawn(async move {
        let (mut reader, mut writer) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_millis(3500) {
            writer
                .write_all(b"GET /console/style.css HTTP/1.1\r\nhost: seatbroker\r\n\r\n")
                .await
                .expect("the steady connection stays open");
            let (status, _) = read_answer(&mut reader)
                .await
                .expect("the steady client is answered");
            assert_eq!(status, 200);
            answered += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answered
    });

    let mut slow = Vec::new();
    for first_answered in [false, true] {
        let (mut reader, mut writer) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        if first_answered {
            writer
                .write_all(b"GET / HTTP/1.1\r\nhost: seatbroker\r\n\r\n")
                .await
                .unwrap();
            let (status, _) = read_answer(&mut reader)
                .await
                .expect("the first request is answered");
            assert_eq!(status, 200);
        }
        let sent = Arc::new(AtomicUsize::new(0));
        let sender = tokio::spawn(dribble(writer, SLOW_HEADERS, Arc::clone(&sent)));
        slow.push((first_answered, reader, sent, sender));
    }
    for (first_answered, mut reader, sent, sender) in slow {
        tokio::time::timeout(Duration::from_secs(30), until_closed(&mut reader))
            .await
            .unwrap_or_else(|_| {
                panic!("a slow client (first request answered: {first_answered}) is still open")
            });
        sender.abort();
        assert!(
            sent.load(Ordering::Relaxed) < SLOW_HEADERS.len(),
            "closed before its headers were complete"
        );
    }
    let answered = steady.await.expect("the steady client");
    assert!(
        answered >= 3,
        "the steady client was answered {answered} times"
    );
}
