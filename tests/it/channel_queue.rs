//! The wait queue over real gRPC: a freed seat goes to the head of the queue, waiters
//! are served in arrival order with the quota never exceeded and no newcomer barging
//! past them (a history checker over the recorded grants and releases), deadlines,
//! cancels and broken streams leave the queue without leaking a seat, the bounds of a
//! stream's pending acquires, and the unary long poll (`AcquireRequest.wait_ms`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::channel::{Stream, acquire_op, release_op};
use crate::harness::*;
use parking_lot::Mutex;
use seatbroker::limits;
use seatbroker::proto::{self, stream_event::Event, stream_operation::Operation};
use tonic::Code;

/// Waits until the next `queued` event of the stream and returns (position, length).
async fn queued(stream: &mut Stream, request_id: u64) -> (u32, u32) {
    match stream.next().await {
        Event::Queued(queued) if queued.request_id == request_id => {
            (queued.position, queued.queue_length)
        }
        other => panic!("expected request {request_id} queued, got {other:?}"),
    }
}

/// Reads events, skipping position updates, until the answer of `request_id`.
async fn answer(stream: &mut Stream, request_id: u64) -> Event {
    loop {
        match stream.next().await {
            Event::Queued(queued) if queued.request_id == request_id => continue,
            Event::Granted(g) if g.request_id == request_id => return Event::Granted(g),
            Event::Denied(d) if d.request_id == request_id => return Event::Denied(d),
            other => panic!("expected the answer of {request_id}, got {other:?}"),
        }
    }
}

#[track_caller]
fn assert_denied(event: &Event, code: Code, needle: &str) {
    match event {
        Event::Denied(denied) => {
            assert_eq!(denied.code, code as i32, "{}", denied.message);
            assert!(denied.message.contains(needle), "{}", denied.message);
        }
        other => panic!("expected a {code:?} denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_freed_seat_goes_to_the_head_of_the_queue() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut holder = Stream::open(&server, org.key(0)).await;
    let held = holder.acquire(1, "holder").await;
    let mut waiter = Stream::open(&server, org.key(1)).await;
    waiter
        .send(vec![acquire_op(5, KRE, "waiter", 60_000)])
        .await;
    assert_eq!(queued(&mut waiter, 5).await, (1, 1));
    // A newcomer that does not wait is refused while the seat is taken.
    let mut unary = server.session(org.key(1)).await;
    assert_status(
        unary.acquire(acquire_request(KRE, "newcomer")).await,
        Code::ResourceExhausted,
        "1 of 1",
    );
    holder.send(vec![release_op(&held)]).await;
    match answer(&mut waiter, 5).await {
        Event::Granted(granted) => assert_eq!(granted.lease.unwrap().engine_id, "waiter"),
        other => panic!("expected the grant, got {other:?}"),
    }
    let usage = org.usage(&server, KRE).await;
    assert_eq!((usage.active_sessions, usage.peak_sessions), (1, 1));
}

/// What one engine of the fairness run saw: when it was granted and when it released.
#[derive(Debug, Clone, Copy)]
struct Interval {
    arrival: usize,
    granted: Instant,
    released: Instant,
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order_and_the_quota_is_never_exceeded() {
    const QUOTA: u32 = 3;
    const WAITERS: usize = 12;
    let server = start().await;
    let members: Vec<String> = (0..WAITERS + 1).map(|i| format!("m{i}")).collect();
    let locals: Vec<&str> = members.iter().map(String::as_str).collect();
    let org = server
        .licensed_organization("acme", 0, QUOTA, &locals)
        .await;
    // The quota is taken before anyone queues.
    let mut holder = Stream::open(&server, org.key(WAITERS)).await;
    let mut held = Vec::new();
    for i in 0..QUOTA {
        held.push(holder.acquire(i as u64, &format!("holder-{i}")).await);
    }
    // Waiters arrive in a known order: each is queued before the next asks.
    let mut waiters = Vec::new();
    for arrival in 0..WAITERS {
        let mut stream = Stream::open(&server, org.key(arrival)).await;
        stream
            .send(vec![acquire_op(
                1,
                KRE,
                &format!("waiter-{arrival}"),
                120_000,
            )])
            .await;
        let (position, length) = queued(&mut stream, 1).await;
        assert_eq!((position, length), (arrival as u32 + 1, arrival as u32 + 1));
        waiters.push(stream);
    }
    let history = Arc::new(Mutex::new(Vec::<Interval>::new()));
    let mut engines = Vec::new();
    for (arrival, mut stream) in waiters.into_iter().enumerate() {
        let history = Arc::clone(&history);
        engines.push(tokio::spawn(async move {
            let lease = match answer(&mut stream, 1).await {
                Event::Granted(granted) => granted.lease.unwrap(),
                other => panic!("waiter {arrival} refused: {other:?}"),
            };
            let granted = Instant::now();
            // Hold the seat a little, a different time for each, then give it back.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(1..30))).await;
            let released = Instant::now();
            stream.send(vec![release_op(&lease)]).await;
            history.lock().push(Interval {
                arrival,
                granted,
                released,
            });
            stream
        }));
    }
    // Newcomers that do not wait keep asking meanwhile: none may barge in.
    let barging = {
        let mut unary = server.session(org.key(0)).await;
        tokio::spawn(async move {
            let mut granted = 0;
            for _ in 0..50 {
                if unary.acquire(acquire_request(KRE, "barger")).await.is_ok() {
                    granted += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            granted
        })
    };
    for lease in &held {
        holder.send(vec![release_op(lease)]).await;
    }
    let mut streams = Vec::new();
    for engine in engines {
        streams.push(
            tokio::time::timeout(Duration::from_secs(60), engine)
                .await
                .expect("every waiter served")
                .unwrap(),
        );
    }
    let barged = barging.await.unwrap();
    let mut history = history.lock().clone();
    history.sort_by_key(|interval| interval.granted);
    let order: Vec<usize> = history.iter().map(|i| i.arrival).collect();
    assert_eq!(
        order,
        (0..WAITERS).collect::<Vec<_>>(),
        "served in arrival order"
    );
    // Each recorded interval lies inside the server's (granted before it was heard,
    // released after it was sent), so overlapping recorded ones overlap on the server.
    for interval in &history {
        let overlapping = history
            .iter()
            .filter(|other| other.granted <= interval.granted && interval.granted < other.released)
            .count();
        assert!(
            overlapping <= QUOTA as usize,
            "{overlapping} seats held at once, more than {QUOTA}: {history:?}"
        );
    }
    let usage = org.usage(&server, KRE).await;
    assert!(usage.peak_sessions <= QUOTA, "peak {}", usage.peak_sessions);
    // The barger got a seat only once the queue was empty, if at all.
    assert!(barged <= 1);
    drop(streams);
}

#[tokio::test]
async fn a_wait_that_passes_is_denied_with_deadline_exceeded() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut holder = Stream::open(&server, org.key(0)).await;
    holder.acquire(1, "holder").await;
    let mut waiter = Stream::open(&server, org.key(1)).await;
    waiter.send(vec![acquire_op(2, KRE, "waiter", 300)]).await;
    assert_eq!(queued(&mut waiter, 2).await, (1, 1));
    assert_denied(
        &answer(&mut waiter, 2).await,
        Code::DeadlineExceeded,
        "300 ms",
    );
    let mut unary = server.session(org.key(1)).await;
    let refused = unary
        .acquire(proto::AcquireRequest {
            wait_ms: 200,
            ..acquire_request(KRE, "unary-waiter")
        })
        .await;
    assert_status(refused, Code::DeadlineExceeded, "200 ms");
}

#[tokio::test]
async fn a_cancelled_or_broken_waiter_leaves_the_queue_and_no_seat_is_leaked() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b", "c"])
        .await;
    let mut holder = Stream::open(&server, org.key(0)).await;
    let held = holder.acquire(1, "holder").await;
    let mut cancelling = Stream::open(&server, org.key(1)).await;
    cancelling
        .send(vec![acquire_op(3, KRE, "cancelling", 60_000)])
        .await;
    assert_eq!(queued(&mut cancelling, 3).await, (1, 1));
    let mut breaking = Stream::open(&server, org.key(2)).await;
    breaking
        .send(vec![acquire_op(4, KRE, "breaking", 60_000)])
        .await;
    assert_eq!(queued(&mut breaking, 4).await, (2, 2));
    cancelling
        .send(vec![Operation::Cancel(proto::StreamCancel {
            request_id: 3,
        })])
        .await;
    assert_denied(
        &answer(&mut cancelling, 3).await,
        Code::Cancelled,
        "cancelled",
    );
    drop(breaking);
    // The seat freed now is nobody's: a newcomer gets it.
    holder.send(vec![release_op(&held)]).await;
    let mut unary = server.session(org.key(0)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match unary.acquire(acquire_request(KRE, "newcomer")).await {
            Ok(_) => break,
            // The broken stream's waiter may still be leaving (its task ends when the
            // server notices the reset); a seat granted to it is given back.
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the seat leaked: {status:?}"),
        }
    }
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 1);
}

#[tokio::test]
async fn too_many_pending_acquires_on_one_stream_are_denied() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut holder = Stream::open(&server, org.key(0)).await;
    holder.acquire(1, "holder").await;
    let mut waiter = Stream::open(&server, org.key(1)).await;
    let pending = limits::PENDING_ACQUIRES_PER_STREAM_MAX as u64;
    let acquire = |i: u64| acquire_op(i, KRE, &format!("engine-{i}"), 60_000);
    waiter.send((0..pending).map(acquire).collect()).await;
    waiter.send(vec![acquire(pending)]).await;
    loop {
        match waiter.next().await {
            Event::Queued(_) => continue,
            Event::Denied(denied) => {
                assert_eq!(denied.request_id, pending, "the one past the bound");
                assert_eq!(denied.code, Code::ResourceExhausted as i32);
                assert!(denied.message.contains("pending"), "{}", denied.message);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_unary_long_poll_is_granted_when_a_seat_frees() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut holder = server.session(org.key(0)).await;
    let held = acquire_lease(&mut holder, KRE, "holder").await;
    let mut waiter = server.session(org.key(1)).await;
    let polling = tokio::spawn(async move {
        waiter
            .acquire(proto::AcquireRequest {
                wait_ms: 60_000,
                ..acquire_request(KRE, "long-poll")
            })
            .await
    });
    // A stream waiter that finds itself second proves the long poll waits first.
    let mut behind = Stream::open(&server, org.key(1)).await;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        behind
            .send(vec![acquire_op(attempt, KRE, "behind", 60_000)])
            .await;
        match queued(&mut behind, attempt).await {
            (2, 2) => break,
            _ => {
                behind
                    .send(vec![Operation::Cancel(proto::StreamCancel {
                        request_id: attempt,
                    })])
                    .await;
                assert_denied(&answer(&mut behind, attempt).await, Code::Cancelled, "");
                assert!(attempt < 1000, "the long poll never queued");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    release(&mut holder, &held).await.unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(20), polling)
        .await
        .expect("the long poll answers once the seat frees")
        .unwrap()
        .expect("granted");
    assert_eq!(granted.into_inner().lease.unwrap().engine_id, "long-poll");
    // The stream waiter moved up to the head (told within a position update).
    assert_eq!(queued(&mut behind, attempt).await, (1, 1));
}

#[tokio::test]
async fn the_queue_of_an_organization_is_bounded() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut holder = Stream::open(&server, org.key(0)).await;
    holder.acquire(1, "holder").await;
    let per_stream = 1_000;
    let streams_needed = limits::WAITERS_PER_ORG_MAX / per_stream;
    let mut waiters = Vec::new();
    for s in 0..streams_needed {
        let mut stream = Stream::open(&server, org.key(1)).await;
        let acquires = (0..per_stream as u64)
            .map(|i| acquire_op(i, KRE, &format!("e-{s}-{i}"), 600_000))
            .collect();
        stream.send(acquires).await;
        let mut queued = 0;
        while queued < per_stream {
            match stream.next().await {
                Event::Queued(_) => queued += 1,
                other => panic!("expected queued, got {other:?}"),
            }
        }
        waiters.push(stream);
    }
    let mut last = Stream::open(&server, org.key(1)).await;
    last.send(vec![acquire_op(1, KRE, "one-too-many", 600_000)])
        .await;
    assert_denied(
        &answer(&mut last, 1).await,
        Code::ResourceExhausted,
        "queued acquires per organization",
    );
    // A waiter that does not wait is refused as before, a quota matter.
    last.send(vec![acquire_op(2, KRE, "no-wait", 0)]).await;
    assert_denied(
        &answer(&mut last, 2).await,
        Code::ResourceExhausted,
        "1 of 1",
    );
}
