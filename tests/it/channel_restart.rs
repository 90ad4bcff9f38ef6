//! Session streams across daemon restarts, against the real binary: after SIGKILL and
//! after a clean stop (`draining`), a new stream attaches the same lease at the same
//! generation, a stale generation is refused, and a retried acquire resumes the lease.

use std::time::Duration;

use crate::channel::{Stream, assert_ended, attach_op};
use crate::harness::*;
use seatbroker::proto::{self, stream_event::Event};

/// Attaches `lease` and a stale generation of it on `stream`: the first is attached,
/// the second refused.
async fn attach_and_fence(stream: &mut Stream, lease: &proto::Lease) {
    stream
        .send(vec![attach_op(&[
            (&lease.lease_id, lease.generation),
            (&lease.lease_id, lease.generation - 1),
        ])])
        .await;
    match stream.next().await {
        Event::Attached(attached) => {
            let attached = attached.lease.unwrap();
            assert_eq!(
                (attached.lease_id.as_str(), attached.generation),
                (lease.lease_id.as_str(), lease.generation),
                "the same lease continues"
            );
        }
        other => panic!("expected attached, got {other:?}"),
    }
    let stale = proto::Lease {
        generation: lease.generation - 1,
        ..lease.clone()
    };
    assert_ended(&stream.next().await, &stale, proto::EndReason::NotFound);
    assert_eq!(stream.renew().await, 1);
}

#[tokio::test]
async fn a_lease_continues_on_a_new_stream_after_sigkill_and_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Serve::new().data_dir(dir.path()).start().await;
    let org = daemon
        .licensed_organization("acme", 0, 1, &["a", "b"])
        .await;
    let mut stream = Stream::open(&daemon, org.key(0)).await;
    let lease = stream.acquire(1, "engine-1").await;
    daemon.kill();
    let (_, status) = stream.until_end().await;
    assert_ne!(
        status.code(),
        tonic::Code::Ok,
        "the stream broke with the daemon"
    );

    let mut daemon = Serve::new().data_dir(dir.path()).start().await;
    let mut stream = Stream::open(&daemon, org.key(0)).await;
    attach_and_fence(&mut stream, &lease).await;
    // The recovered lease holds the only seat: another user's acquire is refused.
    let mut other = Stream::open(&daemon, org.key(1)).await;
    other
        .send(vec![crate::channel::acquire_op(1, KRE, "engine-b", 0)])
        .await;
    assert!(matches!(other.next().await, Event::Denied(_)));
    // A retried acquire of the same engine resumes the same lease.
    stream
        .send(vec![crate::channel::acquire_op(2, KRE, "engine-1", 0)])
        .await;
    match stream.next().await {
        Event::Granted(granted) => {
            assert!(granted.resumed);
            let resumed = granted.lease.unwrap();
            assert_eq!(
                (resumed.lease_id.as_str(), resumed.generation),
                (lease.lease_id.as_str(), lease.generation)
            );
        }
        other => panic!("expected a resumed grant, got {other:?}"),
    }

    // A clean stop: the stream hears `draining`, then a new daemon takes it back.
    let stopping = tokio::task::spawn_blocking(move || daemon.stop());
    let (events, _) = stream.until_end().await;
    assert!(
        events.iter().any(|e| matches!(e, Event::Draining(_))),
        "{events:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("the daemon stops within its grace")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let daemon = Serve::new().data_dir(dir.path()).start().await;
    let mut stream = Stream::open(&daemon, org.key(0)).await;
    attach_and_fence(&mut stream, &lease).await;
}
