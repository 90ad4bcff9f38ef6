//! The `/metrics` listener of the real binary under abuse: idle and trickling clients
//! cannot starve scrapes, and a full listener answers 503 instead of resetting.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Slow clients held open during the test.
const SLOW_CLIENTS: usize = 100;
/// Attempts one scrape may take (503, or a connection closed while the listener is
/// busy) before it counts as failed; 100 ms apart, so about 3 s, three times the
/// header-read deadline.
const SCRAPE_ATTEMPTS_MAX: u32 = 30;

/// One `GET /metrics`: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// Scrapes until a 200, and returns the attempts it took and the statuses seen before.
fn scrape_with_retries(addr: SocketAddr) -> (u32, Vec<String>) {
    let mut seen = Vec::new();
    for attempt in 1..=SCRAPE_ATTEMPTS_MAX {
        match get(addr, "/metrics") {
            Ok((status, body)) if status.contains(" 200 ") => {
                assert!(body.contains("seatbroker_organizations"), "{body}");
                return (attempt, seen);
            }
            Ok((status, _)) => seen.push(status),
            Err(error) => seen.push(error.to_string()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no scrape succeeded in {SCRAPE_ATTEMPTS_MAX} attempts: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_succeed_while_a_hundred_idle_and_trickling_clients_hold_connections() {
    let daemon = Serve::new()
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start()
        .await;
    let addr = daemon.metrics_addr();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        // Half send nothing, half trickle a request head one byte at a time.
        let mut slow: Vec<TcpStream> = (0..SLOW_CLIENTS)
            .map(|_| TcpStream::connect(addr).expect("connect a slow client"))
            .collect();
        let mut scrape_attempts = Vec::new();
        let head = b"GET /metrics HTTP/1.1\r\n";
        for round in 0..5 {
            for stream in slow.iter_mut().skip(1).step_by(2) {
                let _ = stream.write_all(&head[round..round + 1]);
            }
            scrape_attempts.push(scrape_with_retries(addr));
        }
        let worst = scrape_attempts.iter().map(|(n, _)| *n).max().unwrap();
        let refusals: Vec<&String> = scrape_attempts.iter().flat_map(|(_, s)| s).collect();
        assert!(
            refusals.iter().all(|s| s.contains(" 503 ")),
            "a busy listener answers 503, never resets: {refusals:?}"
        );
        assert!(worst <= SCRAPE_ATTEMPTS_MAX, "{scrape_attempts:?}");
        drop(slow);
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_answers_503_with_retry_after() {
    let daemon = Serve::new()
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start()
        .await;
    let addr = daemon.metrics_addr();
    tokio::task::spawn_blocking(move || {
        // 16 idle connections hold every scrape slot for up to a second.
        let _idle: Vec<TcpStream> = (0..16)
            .map(|_| TcpStream::connect(addr).expect("connect an idle client"))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(
            response.to_ascii_lowercase().contains("retry-after: 1"),
            "{response}"
        );
        // Within the header-read deadline the idle ones are closed: scrapes work again.
        std::thread::sleep(Duration::from_millis(1_200));
        let (status, _) = get(addr, "/metrics").unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let (status, _) = get(addr, "/other").unwrap();
        assert!(status.contains(" 404 "), "{status}");
    })
    .await
    .unwrap();
}
