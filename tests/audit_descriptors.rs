//! An audit query that cannot open a file because the process is out of file
//! descriptors answers UNAVAILABLE, saying so, and works again once descriptors are
//! free. Alone in its own test binary: it lowers this process's descriptor limit.

mod common;

use common::*;
use seatbroker::proto;
use tonic::Code;

/// The soft descriptor limit while the test exhausts it.
const DESCRIPTORS_MAX: libc::rlim_t = 2048;

async fn query(server: &TestServer, key: &str) -> Result<usize, tonic::Status> {
    server
        .admin(key)
        .await
        .list_audit_events(proto::ListAuditEventsRequest {
            org_id: "acme".into(),
            ..Default::default()
        })
        .await
        .map(|answer| answer.into_inner().events.len())
}

fn descriptor_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_descriptor_limit(limit: libc::rlimit) {
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Opens files until the process has no descriptor left; they are freed when dropped.
fn hog_descriptors() -> Vec<std::fs::File> {
    let mut hogs = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(error) => break error,
        }
        assert!(
            hogs.len() <= DESCRIPTORS_MAX as usize,
            "no descriptor limit"
        );
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE));
    hogs
}

/// Attempts while the daemon may still be closing the sockets of earlier clients
/// (each frees a descriptor that the next attempt takes first).
const ATTEMPTS_MAX: usize = 50;

#[tokio::test]
async fn an_audit_query_out_of_descriptors_answers_unavailable_then_works_again() {
    let server = start().await;
    let org = server.organization("acme", 0, 1, &[]).await;
    let events = query(&server, &org.owner_key).await.unwrap();
    assert!(events > 0);
    let mut admin = server.admin(&org.owner_key).await;

    let original = descriptor_limit();
    set_descriptor_limit(libc::rlimit {
        rlim_cur: original.rlim_cur.min(DESCRIPTORS_MAX),
        rlim_max: original.rlim_max,
    });
    let mut hogs = Vec::new();
    let mut answer = None;
    for _ in 0..ATTEMPTS_MAX {
        hogs.extend(hog_descriptors());
        // The connection is open already: only the audit files need a descriptor.
        let attempt = admin
            .list_audit_events(proto::ListAuditEventsRequest {
                org_id: "acme".into(),
                ..Default::default()
            })
            .await;
        if attempt.is_err() {
            answer = Some(attempt);
            break;
        }
    }
    drop(hogs);
    set_descriptor_limit(original);
    let answer = answer.expect("a query failed while no descriptor was free");
    assert_status(answer, Code::Unavailable, "out of file descriptors");
    assert_eq!(query(&server, &org.owner_key).await.unwrap(), events);
}
