//! An audit query that cannot open a file because the daemon is out of file
//! descriptors answers UNAVAILABLE, saying so, and works again once descriptors are
//! free. The daemon is the real binary in a process of its own, so that its
//! descriptors run out and this test process's do not.

use std::time::Duration;

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

/// Attempts while the daemon may still be closing the sockets of earlier clients
/// (each frees a descriptor below the limit, which the next attempt takes first).
const ATTEMPTS_MAX: usize = 50;
/// How long one query may take before the daemon is taken for stuck.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

fn acme_events() -> proto::ListAuditEventsRequest {
    proto::ListAuditEventsRequest {
        org_id: "acme".into(),
        ..Default::default()
    }
}

/// The number of events of acme's record, on a connection of its own.
async fn query(daemon: &Daemon, key: &str) -> Result<usize, tonic::Status> {
    let answer = daemon
        .admin(key)
        .await
        .list_audit_events(acme_events())
        .await?;
    Ok(answer.into_inner().events.len())
}

#[tokio::test]
async fn an_audit_query_out_of_descriptors_answers_unavailable_then_works_again() {
    let daemon = Serve::new().start().await;
    let org = daemon.organization("acme", 0, 1, &[]).await;
    // A call over the connection first: once it is answered, the daemon has accepted
    // the connection (a descriptor of its own), and only the audit files need one.
    let mut admin = daemon.admin(&org.owner_key).await;
    let events = admin.list_audit_events(acme_events()).await.unwrap();
    let events = events.into_inner().events.len();
    assert!(events > 0);

    let original = daemon.soft_descriptor_limit();
    let mut answer = None;
    for _ in 0..ATTEMPTS_MAX {
        // Every descriptor number below the daemon's soft limit is taken.
        daemon.set_soft_descriptor_limit(daemon.lowest_free_descriptor());
        let attempt = tokio::time::timeout(ANSWER_DEADLINE, admin.list_audit_events(acme_events()))
            .await
            .expect("the daemon answers while out of descriptors");
        if attempt.is_err() {
            answer = Some(attempt);
            break;
        }
    }
    daemon.set_soft_descriptor_limit(original);
    let answer = answer.expect("a query failed while no descriptor was free");
    assert_status(answer, Code::Unavailable, "out of file descriptors");
    assert_eq!(query(&daemon, &org.owner_key).await.unwrap(), events);
}
