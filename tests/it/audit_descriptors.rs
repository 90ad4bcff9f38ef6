//! The audit record under descriptor pressure: the writer keeps the descriptors it
//! needs, so every acknowledged admin change reaches the record; a query answers from
//! the readers' spare descriptors, or says UNAVAILABLE (never INTERNAL) when there is
//! truly none, and works again once descriptors are free. The daemon is the real
//! binary in a process of its own, so that its descriptors run out and this test
//! process's do not; its soft limit is lowered from outside (as `prlimit` does).

use std::time::Duration;

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

/// How long one call may take before the daemon is taken for stuck.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Admin changes of each kind made while the daemon is out of descriptors.
const CHANGES_OF_EACH_KIND: usize = 30;
/// A soft limit below every descriptor the daemon holds but its standard streams:
/// nothing can be opened, spare descriptors included.
const NO_DESCRIPTOR_AT_ALL: u64 = 3;

fn events_of(org: &str) -> proto::ListAuditEventsRequest {
    proto::ListAuditEventsRequest {
        org_id: org.into(),
        ..Default::default()
    }
}

/// The events of `org`'s record, as the operator reads them over `admin`.
async fn events(
    admin: &mut proto::admin_service_client::AdminServiceClient<seatbroker::client::Authorized>,
    org: &str,
) -> Result<Vec<proto::AuditEvent>, tonic::Status> {
    let answer = tokio::time::timeout(ANSWER_DEADLINE, admin.list_audit_events(events_of(org)))
        .await
        .expect("the daemon answers while out of descriptors")?;
    Ok(answer.into_inner().events)
}

fn count_of(events: &[proto::AuditEvent], kind: &str) -> usize {
    events.iter().filter(|event| event.kind == kind).count()
}

#[tokio::test]
async fn an_audit_query_out_of_descriptors_answers_from_a_spare_or_says_unavailable() {
    let daemon = Serve::new().start().await;
    daemon.organization("acme", 0, 1, &[]).await;
    // A call over the connection first: once it is answered, the daemon has accepted
    // the connection (a descriptor of its own), and only the audit files need one.
    let mut admin = daemon.operator().await;
    let recorded = events(&mut admin, "acme").await.unwrap().len();
    assert!(recorded > 0);
    let original = daemon.soft_descriptor_limit();

    // Every descriptor number below the daemon's soft limit is taken: a spare serves.
    daemon.set_soft_descriptor_limit(daemon.lowest_free_descriptor());
    let squeezed = events(&mut admin, "acme").await;
    daemon.set_soft_descriptor_limit(NO_DESCRIPTOR_AT_ALL);
    let starved = events(&mut admin, "acme").await;
    daemon.set_soft_descriptor_limit(original);

    assert_eq!(squeezed.expect("answered with a spare").len(), recorded);
    assert_status(starved, Code::Unavailable, "out of file descriptors");
    assert_eq!(events(&mut admin, "acme").await.unwrap().len(), recorded);
}

#[tokio::test]
async fn every_admin_change_acknowledged_out_of_descriptors_is_in_the_audit_record() {
    let daemon = Serve::new().start().await;
    daemon.organization("acme", 0, 1, &[]).await;
    let mut admin = daemon.operator().await;
    let before = events(&mut admin, "acme").await.unwrap();
    let original = daemon.soft_descriptor_limit();

    daemon.set_soft_descriptor_limit(daemon.lowest_free_descriptor());
    // Changes of an organization whose file is open, and of new organizations, each
    // of which needs a file of its own.
    let mut members_added = 0;
    let mut created = Vec::new();
    for i in 0..CHANGES_OF_EACH_KIND {
        let added = add_member(&mut admin, "acme", &format!("m{i}@acme.test")).await;
        members_added += usize::from(added.is_ok());
        let org = format!("org-{i}");
        let request = proto::CreateOrganizationRequest {
            org_id: org.clone(),
            display_name: format!("{org} Inc."),
            owner_email: format!("owner@{org}.test"),
            quota: Some(proto::Quota::default()),
        };
        if admin.create_organization(request).await.is_ok() {
            created.push(org);
        }
    }
    daemon.set_soft_descriptor_limit(original);

    assert_eq!(members_added, CHANGES_OF_EACH_KIND, "acknowledged");
    assert_eq!(created.len(), CHANGES_OF_EACH_KIND, "acknowledged");
    let after = events(&mut admin, "acme").await.unwrap();
    assert_eq!(
        count_of(&after, "member_added") - count_of(&before, "member_added"),
        members_added,
        "every member added is in the record"
    );
    for org in &created {
        let events = events(&mut admin, org).await.unwrap();
        assert_eq!(count_of(&events, "organization_created"), 1, "{org}");
    }
}
