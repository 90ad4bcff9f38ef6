//! The session channel (`SessionService.Channel`) over real gRPC: acquire, renew and
//! release on one stream, leases held by the key's user only, re-attach after a
//! dropped stream (fenced by generation), pushed ends for every reason, the bounds of
//! a stream, draining at shutdown and a slow reader. [`Stream`] is the test client
//! the other `channel_*` areas use too.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::harness::*;
use seatbroker::clock::Clock;
use seatbroker::proto::{
    self, ChannelRequest, StreamOperation, stream_event::Event, stream_operation::Operation,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// How long a test waits for an event it expects before failing.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(20);

/// One session stream, as an engine host holds it.
pub struct Stream {
    operations: mpsc::Sender<ChannelRequest>,
    events: tonic::Streaming<proto::ChannelResponse>,
    buffered: VecDeque<Event>,
}

impl Stream {
    /// Opens a stream with `key`; panics if refused.
    pub async fn open(daemon: &impl DaemonApi, key: &str) -> Stream {
        Stream::try_open(daemon, key)
            .await
            .unwrap_or_else(|status| panic!("stream refused: {status:?}"))
    }

    pub async fn try_open(daemon: &impl DaemonApi, key: &str) -> Result<Stream, tonic::Status> {
        let mut client = daemon.session(key).await;
        let (operations, outgoing) = mpsc::channel(64);
        let events = client
            .channel(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        Ok(Stream {
            operations,
            events,
            buffered: VecDeque::new(),
        })
    }

    /// Sends one batch of operations.
    pub async fn send(&self, operations: Vec<Operation>) {
        assert!(
            self.try_send(operations).await,
            "the stream takes operations"
        );
    }

    /// Sends one batch; false when the broker no longer takes operations.
    pub async fn try_send(&self, operations: Vec<Operation>) -> bool {
        let request = ChannelRequest {
            operations: operations
                .into_iter()
                .map(|operation| StreamOperation {
                    operation: Some(operation),
                })
                .collect(),
        };
        let sent = tokio::time::timeout(Duration::from_secs(5), self.operations.send(request));
        matches!(sent.await, Ok(Ok(())))
    }

    /// The next event; panics when none comes within [`EVENT_DEADLINE`] or the stream ends.
    pub async fn next(&mut self) -> Event {
        match self.next_or_end().await {
            Ok(event) => event,
            Err(status) => panic!("the stream ended while an event was expected: {status:?}"),
        }
    }

    /// The next event, or how the stream ended (`Ok` status when it ended cleanly).
    pub async fn next_or_end(&mut self) -> Result<Event, tonic::Status> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(event);
            }
            let message = tokio::time::timeout(EVENT_DEADLINE, self.events.message())
                .await
                .expect("an event within the deadline")?;
            let Some(message) = message else {
                return Err(tonic::Status::ok("the stream ended"));
            };
            self.buffered
                .extend(message.events.into_iter().filter_map(|e| e.event));
        }
    }

    /// Reads events until the stream ends; returns them and the end's status.
    pub async fn until_end(&mut self) -> (Vec<Event>, tonic::Status) {
        let mut events = Vec::new();
        loop {
            match self.next_or_end().await {
                Ok(event) => events.push(event),
                Err(status) => return (events, status),
            }
        }
    }

    /// Acquires on the stream and returns the lease granted at once.
    pub async fn acquire(&mut self, request_id: u64, engine_id: &str) -> proto::Lease {
        self.send(vec![acquire_op(request_id, KRE, engine_id, 0)])
            .await;
        match self.next().await {
            Event::Granted(granted) if granted.request_id == request_id => {
                granted.lease.expect("a granted event carries its lease")
            }
            other => panic!("expected the grant of request {request_id}, got {other:?}"),
        }
    }

    /// Renews the stream's leases; returns how many it holds.
    pub async fn renew(&mut self) -> u32 {
        self.send(vec![Operation::Renew(proto::StreamRenew {})])
            .await;
        loop {
            match self.next().await {
                Event::Renewed(renewed) => return renewed.lease_count,
                Event::Ended(_) | Event::Queued(_) => continue,
                other => panic!("expected renewed, got {other:?}"),
            }
        }
    }
}

pub fn acquire_op(request_id: u64, product: i32, engine_id: &str, wait_ms: u32) -> Operation {
    Operation::Acquire(proto::StreamAcquire {
        request_id,
        product,
        engine_id: engine_id.into(),
        hostname: "test-host".into(),
        label: String::new(),
        wait_ms,
    })
}

pub fn attach_op(leases: &[(&str, u64)]) -> Operation {
    Operation::Attach(proto::StreamAttach {
        leases: leases
            .iter()
            .map(|(lease_id, generation)| proto::LeaseHandle {
                lease_id: lease_id.to_string(),
                generation: *generation,
            })
            .collect(),
    })
}

pub fn release_op(lease: &proto::Lease) -> Operation {
    Operation::Release(proto::StreamRelease {
        lease_id: lease.lease_id.clone(),
        generation: lease.generation,
    })
}

/// Asserts `event` is the end of `lease` for `reason`.
#[track_caller]
pub fn assert_ended(event: &Event, lease: &proto::Lease, reason: proto::EndReason) {
    match event {
        Event::Ended(ended) => {
            assert_eq!(ended.lease_id, lease.lease_id, "the ended lease");
            assert_eq!(ended.generation, lease.generation);
            assert_eq!(
                ended.reason,
                reason as i32,
                "reason {:?} ({})",
                proto::EndReason::try_from(ended.reason),
                ended.message
            );
        }
        other => panic!("expected the end of {}, got {other:?}", lease.lease_id),
    }
}

#[tokio::test]
async fn one_stream_acquires_renews_and_releases_many_leases() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    stream
        .send(vec![
            acquire_op(1, KRE, "engine-1", 0),
            acquire_op(2, KRE, "engine-2", 0),
        ])
        .await;
    let mut leases = Vec::new();
    for _ in 0..2 {
        match stream.next().await {
            Event::Granted(granted) => leases.push(granted.lease.unwrap()),
            other => panic!("expected grants, got {other:?}"),
        }
    }
    assert_eq!(
        stream.renew().await,
        2,
        "one renew extends every lease held"
    );
    stream.send(vec![release_op(&leases[0])]).await;
    assert_ended(&stream.next().await, &leases[0], proto::EndReason::Released);
    assert_eq!(stream.renew().await, 1);
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 1);
    // A retried acquire of the same engine gets the same lease back.
    stream.send(vec![acquire_op(3, KRE, "engine-2", 0)]).await;
    match stream.next().await {
        Event::Granted(granted) => {
            assert!(granted.resumed, "the engine's live lease, resumed");
            assert_eq!(granted.lease.unwrap().lease_id, leases[1].lease_id);
        }
        other => panic!("expected a resumed grant, got {other:?}"),
    }
}

#[tokio::test]
async fn a_full_quota_is_denied_at_once_without_a_wait() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 1, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    stream.acquire(1, "engine-1").await;
    stream.send(vec![acquire_op(2, KRE, "engine-2", 0)]).await;
    match stream.next().await {
        Event::Denied(denied) => {
            assert_eq!(denied.request_id, 2);
            assert_eq!(denied.code, Code::ResourceExhausted as i32);
            assert!(denied.message.contains("1 of 1"), "{}", denied.message);
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_is_reattached_after_its_stream_dropped_and_a_stale_generation_is_refused() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut first = Stream::open(&server, org.key(0)).await;
    let lease = first.acquire(1, "engine-1").await;
    drop(first);
    // The lease outlives its stream.
    let mut unary = server.session(org.key(0)).await;
    heartbeat(&mut unary, &lease).await.expect("still live");
    let mut second = Stream::open(&server, org.key(0)).await;
    second
        .send(vec![attach_op(&[
            (&lease.lease_id, lease.generation),
            (&lease.lease_id, lease.generation - 1),
        ])])
        .await;
    match second.next().await {
        Event::Attached(attached) => {
            let attached = attached.lease.unwrap();
            assert_eq!(attached.lease_id, lease.lease_id);
            assert_eq!(attached.generation, lease.generation);
        }
        other => panic!("expected attached, got {other:?}"),
    }
    match second.next().await {
        Event::Ended(ended) => {
            assert_eq!(ended.reason, proto::EndReason::NotFound as i32);
            assert!(ended.message.contains("generation"), "{}", ended.message);
        }
        other => panic!("expected the stale generation refused, got {other:?}"),
    }
    assert_eq!(second.renew().await, 1, "the attached lease is held");
    // A lease acquired over unary Acquire may be attached too.
    let unary_lease = acquire_lease(&mut unary, KRE, "engine-unary").await;
    second
        .send(vec![attach_op(&[(
            &unary_lease.lease_id,
            unary_lease.generation,
        )])])
        .await;
    assert!(matches!(second.next().await, Event::Attached(_)));
    assert_eq!(second.renew().await, 2);
}

#[tokio::test]
async fn a_stream_holds_leases_of_its_users_only() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 3, &["a", "b"])
        .await;
    let other = server.licensed_organization("globex", 0, 3, &["a"]).await;
    let mut a = Stream::open(&server, org.key(0)).await;
    let lease = a.acquire(1, "engine-a").await;
    for key in [org.key(1), other.key(0)] {
        let mut intruder = Stream::open(&server, key).await;
        intruder
            .send(vec![
                attach_op(&[(&lease.lease_id, lease.generation)]),
                release_op(&lease),
            ])
            .await;
        for _ in 0..2 {
            match intruder.next().await {
                Event::Ended(ended) => {
                    assert_eq!(ended.reason, proto::EndReason::NotFound as i32);
                    assert!(
                        ended.message.contains("does not exist"),
                        "{}",
                        ended.message
                    );
                }
                other => panic!("another user's lease must not be found, got {other:?}"),
            }
        }
    }
    assert_eq!(a.renew().await, 1, "the owner still holds its lease");
}

#[tokio::test]
async fn the_operator_key_and_no_key_open_no_stream() {
    let server = start().await;
    let refused = Stream::try_open(&server, OPERATOR_KEY).await;
    assert_status(refused.map(|_| ()), Code::PermissionDenied, "member");
    let refused = Stream::try_open(&server, "sbk_not_a_key").await;
    assert_eq!(
        refused.map(|_| ()).unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn an_admin_termination_is_pushed_to_the_holding_stream() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    let lease = stream.acquire(1, "engine-1").await;
    let mut owner = server.admin(&org.owner_key).await;
    let asked = Instant::now();
    owner
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id: lease.lease_id.clone(),
        })
        .await
        .unwrap();
    assert_ended(&stream.next().await, &lease, proto::EndReason::Terminated);
    // Reported, not asserted: the machine is shared.
    eprintln!(
        "termination pushed {:?} after the admin call was sent",
        asked.elapsed()
    );
}

#[tokio::test]
async fn withdrawals_are_pushed_with_their_reason() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 9, &["a", "b", "c", "d"])
        .await;
    let mut owner = server.admin(&org.owner_key).await;
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut stream = Stream::open(&server, org.key(i)).await;
        let lease = stream.acquire(1, "engine").await;
        streams.push((stream, lease));
    }
    owner
        .unassign_licenses(proto::UnassignLicensesRequest {
            org_id: org.id.clone(),
            product: KRE,
            emails: vec![org.email(0).into()],
        })
        .await
        .unwrap();
    owner
        .transfer_license(proto::TransferLicenseRequest {
            org_id: org.id.clone(),
            product: KRE,
            from_email: org.email(1).into(),
            to_email: org.owner.clone(),
        })
        .await
        .unwrap();
    owner
        .remove_member(proto::RemoveMemberRequest {
            org_id: org.id.clone(),
            email: org.email(2).into(),
        })
        .await
        .unwrap();
    let reasons = [
        proto::EndReason::Unassigned,
        proto::EndReason::Unassigned,
        proto::EndReason::MemberRemoved,
    ];
    for ((stream, lease), reason) in streams.iter_mut().zip(reasons) {
        assert_ended(&stream.next().await, lease, reason);
    }
    // The removed member's key is revoked with it: its stream closes.
    let (_, status) = streams[2].0.until_end().await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    server
        .operator()
        .await
        .delete_organization(proto::DeleteOrganizationRequest {
            org_id: org.id.clone(),
        })
        .await
        .unwrap();
    let (stream, lease) = &mut streams[3];
    assert_ended(
        &stream.next().await,
        lease,
        proto::EndReason::OrganizationDeleted,
    );
}

#[tokio::test]
async fn a_revoked_key_ends_its_streams_leases_and_closes_them() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut owner = server.admin(&org.owner_key).await;
    let second_key = create_key(&mut owner, &org.id, org.email(0)).await;
    let mut revoked = Stream::open(&server, &second_key).await;
    let lease = revoked.acquire(1, "engine-1").await;
    let mut kept = Stream::open(&server, org.key(0)).await;
    let kept_lease = kept.acquire(1, "engine-2").await;
    let keys = owner
        .list_api_keys(proto::ListApiKeysRequest {
            org_id: org.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    let key_id = keys
        .iter()
        .find(|k| second_key.contains(&k.key_id))
        .expect("the second key listed")
        .key_id
        .clone();
    owner
        .revoke_api_key(proto::RevokeApiKeyRequest {
            org_id: org.id.clone(),
            key_id,
        })
        .await
        .unwrap();
    let (events, status) = revoked.until_end().await;
    assert_ended(&events[0], &lease, proto::EndReason::KeyRevoked);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        kept.renew().await,
        1,
        "the same user's other key keeps its stream"
    );
    let mut unary = server.session(org.key(0)).await;
    heartbeat(&mut unary, &kept_lease).await.unwrap();
}

#[tokio::test]
async fn an_expired_license_is_pushed_and_unary_heartbeats_still_hear_it() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    let lease = stream.acquire(1, "engine-1").await;
    let mut unary = server.session(org.key(0)).await;
    let unary_lease = acquire_lease(&mut unary, KRE, "engine-unary").await;
    let past = seatbroker::clock::SystemClock.unix_ms() - 1;
    server
        .operator()
        .await
        .set_quota(proto::SetQuotaRequest {
            org_id: org.id.clone(),
            expires_at_unix_ms: Some(past),
            allow_past_expiry: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_ended(
        &stream.next().await,
        &lease,
        proto::EndReason::LicenseExpired,
    );
    assert_status(
        heartbeat(&mut unary, &unary_lease).await,
        Code::FailedPrecondition,
        "expired",
    );
}

#[tokio::test]
async fn an_oversized_batch_closes_the_stream_with_invalid_argument() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    let renews = (0..=seatbroker::limits::CHANNEL_OPERATIONS_PER_MESSAGE_MAX)
        .map(|_| Operation::Renew(proto::StreamRenew {}))
        .collect();
    stream.send(renews).await;
    let (_, status) = stream.until_end().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("split the batch"), "{status:?}");
}

#[tokio::test]
async fn duplicate_and_malformed_acquires_are_denied_and_the_stream_goes_on() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut holder = Stream::open(&server, org.key(1)).await;
    holder.acquire(1, "holder").await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    stream
        .send(vec![
            acquire_op(7, KRE, "waiting", 60_000),
            acquire_op(7, KRE, "other", 60_000),
            acquire_op(8, KRE, "", 0),
            acquire_op(
                9,
                KRE,
                "too-long",
                seatbroker::limits::ACQUIRE_WAIT_MS_MAX + 1,
            ),
        ])
        .await;
    let mut denials = Vec::new();
    while denials.len() < 3 {
        match stream.next().await {
            Event::Denied(denied) => denials.push((denied.request_id, denied.code)),
            Event::Queued(queued) => assert_eq!(queued.request_id, 7),
            other => panic!("unexpected {other:?}"),
        }
    }
    denials.sort();
    assert_eq!(
        denials,
        [
            (7, Code::InvalidArgument as i32),
            (8, Code::InvalidArgument as i32),
            (9, Code::InvalidArgument as i32)
        ]
    );
    assert_eq!(stream.renew().await, 0, "the stream goes on");
}

#[tokio::test]
async fn streams_get_draining_at_shutdown_and_their_leases_stay_live() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    let lease = stream.acquire(1, "engine-1").await;
    let stopping = tokio::spawn(server.stop());
    let (events, status) = stream.until_end().await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Draining(_))),
        "draining before the end: {events:?}"
    );
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let data_dir = tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the stream does not hold the shutdown")
        .unwrap();
    // The lease is in the log: a daemon on the same directory still has it.
    let server = start_in(data_dir, Duration::from_secs(30)).await;
    let mut next = Stream::open(&server, org.key(0)).await;
    next.send(vec![attach_op(&[(&lease.lease_id, lease.generation)])])
        .await;
    assert!(matches!(next.next().await, Event::Attached(_)));
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_and_others_go_on() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 3, &["a", "b"])
        .await;
    let mut slow = Stream::open(&server, org.key(0)).await;
    let lease = slow.acquire(1, "slow-engine").await;
    let mut other = Stream::open(&server, org.key(1)).await;
    other.acquire(1, "other-engine").await;
    // Renews whose answers nobody reads: past the HTTP/2 window and the outbox.
    let renews: Vec<Operation> = (0..seatbroker::limits::CHANNEL_OPERATIONS_PER_MESSAGE_MAX)
        .map(|_| Operation::Renew(proto::StreamRenew {}))
        .collect();
    for _ in 0..400 {
        if !slow.try_send(renews.clone()).await {
            break; // The broker stopped reading this stream.
        }
        // The other stream is served meanwhile.
    }
    assert_eq!(other.renew().await, 1, "another stream is not harmed");
    let (events, status) = slow.until_end().await;
    assert!(
        !events.is_empty(),
        "the events buffered before the close are delivered"
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("attach"), "{status:?}");
    // Its lease survives, for a new stream to attach.
    let mut next = Stream::open(&server, org.key(0)).await;
    next.send(vec![attach_op(&[(&lease.lease_id, lease.generation)])])
        .await;
    assert!(matches!(next.next().await, Event::Attached(_)));
}

#[tokio::test]
async fn streams_per_key_are_bounded() {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut open = Vec::new();
    for _ in 0..seatbroker::limits::STREAMS_PER_KEY_MAX {
        open.push(Stream::open(&server, org.key(0)).await);
    }
    let refused = Stream::try_open(&server, org.key(0)).await;
    assert_status(
        refused.map(|_| ()),
        Code::ResourceExhausted,
        "open session streams",
    );
    // Closing one makes room (the broker notices the end of its request side).
    drop(open.pop());
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        match Stream::try_open(&server, org.key(0)).await {
            Ok(stream) => {
                open.push(stream);
                break;
            }
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("a closed stream still counts: {status:?}"),
        }
    }
}

#[tokio::test]
async fn a_long_stream_sends_many_times_the_body_budget_and_unary_calls_beside_it_are_served() {
    // The smallest budget an operator may set: one message limit for the whole daemon.
    const BUDGET: usize = seatbroker::limits::REQUEST_BYTES_MAX_FLOOR;
    let server = start_configured(tempfile::tempdir().expect("a data directory"), |settings| {
        settings.limits.request_bytes_max = BUDGET;
        settings.limits.request_bodies_bytes_max = BUDGET;
    })
    .await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    // Retried acquires of one engine (each resumes the same lease), with the longest
    // label and hostname: about 24 KiB a message, 8x the whole budget in all.
    let batch = 64;
    let acquire = |request_id: u64| {
        Operation::Acquire(proto::StreamAcquire {
            request_id,
            product: KRE,
            engine_id: "engine-1".into(),
            hostname: "h".repeat(seatbroker::limits::HOSTNAME_BYTES_MAX),
            label: "l".repeat(seatbroker::limits::LABEL_BYTES_MAX),
            wait_ms: 0,
        })
    };
    let message_bytes = batch * (seatbroker::limits::HOSTNAME_BYTES_MAX + 128 + 20);
    let messages = 8 * BUDGET / message_bytes + 1;
    let mut request_id = 0;
    for _ in 0..messages {
        let operations = (0..batch)
            .map(|_| {
                request_id += 1;
                acquire(request_id)
            })
            .collect();
        stream.send(operations).await;
        for _ in 0..batch {
            match stream.next_or_end().await {
                Ok(Event::Granted(_)) => {}
                Ok(other) => panic!("expected a grant, got {other:?}"),
                Err(status) => panic!(
                    "the stream ended after {request_id} acquires (~{} KiB sent): {status:?}",
                    request_id as usize * message_bytes / batch / 1024
                ),
            }
        }
    }
    assert_eq!(
        stream.renew().await,
        1,
        "the stream is open and holds its lease"
    );
    // The stream holds none of the budget between messages: a unary call is served.
    let mut engine = server.session(org.key(0)).await;
    acquire_lease(&mut engine, KRE, "engine-2").await;
}

#[tokio::test]
async fn operations_of_one_message_apply_in_order_and_a_grant_ended_before_it_was_durable_is_denied()
 {
    let server = start().await;
    let org = server.licensed_organization("acme", 0, 3, &["a"]).await;
    let mut stream = Stream::open(&server, org.key(0)).await;
    let lease = stream.acquire(1, "engine-1").await;
    // The acquire resumes the live lease (its grant appended again and awaited), then
    // the release ends it before the resumed grant is durable and announced: the end
    // comes first, and the acquire is refused, never announced after its lease ended.
    stream
        .send(vec![acquire_op(2, KRE, "engine-1", 0), release_op(&lease)])
        .await;
    assert_ended(&stream.next().await, &lease, proto::EndReason::Released);
    match stream.next().await {
        Event::Denied(denied) => {
            assert_eq!(denied.request_id, 2);
            assert_eq!(denied.code, Code::NotFound as i32, "{}", denied.message);
        }
        other => panic!("expected the resumed acquire refused, got {other:?}"),
    }
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 0);
    assert_eq!(stream.renew().await, 0, "the stream holds nothing");
    // The stream goes on: a new acquire of the same engine is a new grant.
    let again = stream.acquire(3, "engine-1").await;
    assert!(again.generation > lease.generation);
}

#[tokio::test]
async fn a_stream_closed_while_its_grants_wait_for_the_log_leaves_them_to_be_resumed() {
    const ENGINES: u64 = 200;
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, ENGINES as u32, &["a"])
        .await;
    let engine = |n: u64| format!("engine-{n}");
    let acquires = |first_request: u64| {
        (0..ENGINES)
            .map(|n| acquire_op(first_request + n, KRE, &engine(n), 0))
            .collect::<Vec<_>>()
    };
    // Every acquire is granted inline; the stream goes away before reading a thing,
    // so some grants at least are still waiting for the log (or unannounced) then.
    let first = Stream::open(&server, org.key(0)).await;
    first.send(acquires(1)).await;
    drop(first);
    // A new stream acquiring the same engines gets the same leases back: no seat was
    // taken twice, none was lost.
    let mut second = Stream::open(&server, org.key(0)).await;
    second.send(acquires(1_000)).await;
    let mut granted = Vec::new();
    while granted.len() < ENGINES as usize {
        match second.next().await {
            Event::Granted(grant) => granted.push(grant.lease.unwrap()),
            other => panic!("expected grants, got {other:?}"),
        }
    }
    let mut ids: Vec<&str> = granted.iter().map(|l| l.lease_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ENGINES as usize, "one lease per engine");
    assert_eq!(
        org.usage(&server, KRE).await.active_sessions,
        ENGINES as u32
    );
    second.send(granted.iter().map(release_op).collect()).await;
    for _ in 0..ENGINES {
        match second.next().await {
            Event::Ended(ended) => assert_eq!(ended.reason, proto::EndReason::Released as i32),
            other => panic!("expected releases, got {other:?}"),
        }
    }
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 0);
}
