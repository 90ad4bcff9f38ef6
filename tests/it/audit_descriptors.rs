//! The audit record under descriptor pressure: the writer keeps the descriptors it
//! needs, so every acknowledged admin change reaches the record; while it truly has
//! none, admin changes are refused with UNAVAILABLE (never acknowledged and missing),
//! health says `AdminService` NOT_SERVING meanwhile, and they resume by themselves, and what cannot be written by shutdown is logged with
//! its content. A query answers from the readers' spare descriptors, or says
//! UNAVAILABLE (never INTERNAL) when there is truly none, and works again once
//! descriptors are free. The daemon is the real
//! binary in a process of its own, so that its descriptors run out and this test
//! process's do not; its soft limit is lowered from outside (as `prlimit` does).

use std::time::Duration;

use crate::harness::*;
use seatbroker::client;
use seatbroker::proto;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long one call may take before the daemon is taken for stuck.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Admin changes of each kind made while the daemon is out of descriptors.
const CHANGES_OF_EACH_KIND: usize = 30;
/// A soft limit below every descriptor the daemon holds but its standard streams:
/// nothing can be opened, spare descriptors included.
const NO_DESCRIPTOR_AT_ALL: u64 = 3;
/// Bounds the attempts of the tests that wait for the daemon to change its mind (each
/// a call and a pause of `ATTEMPT_PAUSE`): 5 s in all.
const ATTEMPTS_MAX: usize = 100;
const ATTEMPT_PAUSE: Duration = Duration::from_millis(50);
const REFUSED: &str = "the audit record cannot be written";

/// A health client on a connection opened while descriptors were free: a daemon out
/// of them cannot accept a new one.
async fn health_client(daemon: &Daemon) -> HealthClient<tonic::transport::Channel> {
    let channel = client::connect_with(&daemon.url(), daemon.client_tls())
        .await
        .expect("connect for health");
    HealthClient::new(channel)
}

async fn status_of(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let answer = tokio::time::timeout(ANSWER_DEADLINE, health.check(request))
        .await
        .expect("health answers in time")
        .expect("health answers");
    ServingStatus::try_from(answer.into_inner().status).expect("a known status")
}

/// Polls `service`'s health on `health` until it is `wanted` (the daemon looks at the
/// audit record's admission every quarter second).
async fn wait_status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    wanted: ServingStatus,
) {
    for _ in 0..ATTEMPTS_MAX {
        if status_of(health, service).await == wanted {
            return;
        }
        tokio::time::sleep(ATTEMPT_PAUSE).await;
    }
    panic!("{service:?} never reported {wanted:?}");
}

fn events_of(org: &str) -> proto::ListAuditEventsRequest {
    proto::ListAuditEventsRequest {
        org_id: org.into(),
        ..Default::default()
    }
}

/// The events of `org`'s record, as the operator reads them over `admin`.
async fn events(admin: &mut Admin, org: &str) -> Result<Vec<proto::AuditEvent>, tonic::Status> {
    let answer = tokio::time::timeout(ANSWER_DEADLINE, admin.list_audit_events(events_of(org)))
        .await
        .expect("the daemon answers while out of descriptors")?;
    Ok(answer.into_inner().events)
}

type Admin = proto::admin_service_client::AdminServiceClient<seatbroker::client::Authorized>;

/// Creates the organization `org` with no quota.
async fn create(admin: &mut Admin, org: &str) -> Result<(), tonic::Status> {
    let request = proto::CreateOrganizationRequest {
        org_id: org.into(),
        display_name: format!("{org} Inc."),
        owner_email: format!("owner@{org}.test"),
        quota: Some(proto::Quota::default()),
        ..Default::default()
    };
    let answer = tokio::time::timeout(ANSWER_DEADLINE, admin.create_organization(request))
        .await
        .expect("the daemon answers while out of descriptors")?;
    answer.into_inner();
    Ok(())
}

/// Has the daemon accept connections until no descriptor number is free below the
/// audit record's own (its spares on `/dev/null`, its open files): a limit lowered to
/// the lowest free number then leaves it exactly those to give up, as a limit the
/// process ran into would. Numbers freed since they were taken (closed connections)
/// would otherwise let it open files as if it had spares. The connections are held
/// until dropped.
async fn fill_descriptor_holes(daemon: &Daemon) -> Vec<std::net::TcpStream> {
    let fd_dir = format!("/proc/{}/fd", daemon.pid());
    let audit_dir = std::fs::canonicalize(daemon.data_dir().join("audit")).unwrap();
    let highest_own = daemon
        .held_descriptors()
        .into_iter()
        .filter(|fd| {
            let target = std::fs::read_link(format!("{fd_dir}/{fd}")).unwrap_or_default();
            *fd > 2
                && (target == std::path::Path::new("/dev/null") || target.starts_with(&audit_dir))
        })
        .max()
        .expect("the audit record holds descriptors");
    let mut held = Vec::new();
    for _ in 0..ATTEMPTS_MAX {
        let lowest_free = daemon.lowest_free_descriptor();
        if lowest_free > highest_own {
            return held;
        }
        held.push(std::net::TcpStream::connect(daemon.addr()).unwrap());
        while daemon.lowest_free_descriptor() == lowest_free {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    panic!("descriptor numbers below {highest_own} stay free");
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
    let _held = fill_descriptor_holes(&daemon).await;
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

    let _held = fill_descriptor_holes(&daemon).await;
    daemon.set_soft_descriptor_limit(daemon.lowest_free_descriptor());
    // Changes of an organization whose file is open, and of new organizations, each
    // of which needs a file of its own.
    let mut members_added = 0;
    let mut created = Vec::new();
    for i in 0..CHANGES_OF_EACH_KIND {
        let added = add_member(&mut admin, "acme", &format!("m{i}@acme.test")).await;
        members_added += usize::from(added.is_ok());
        let org = format!("org-{i}");
        if create(&mut admin, &org).await.is_ok() {
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

#[tokio::test]
async fn while_no_audit_event_can_be_written_admin_changes_are_refused_and_none_acknowledged_is_lost()
 {
    let daemon = Serve::new().start().await;
    let mut admin = daemon.operator().await;
    create(&mut admin, "acme").await.unwrap();
    events(&mut admin, "acme").await.unwrap();
    let original = daemon.soft_descriptor_limit();
    let mut health = health_client(&daemon).await;
    assert_eq!(
        status_of(&mut health, ADMIN_SERVICE).await,
        ServingStatus::Serving
    );

    daemon.set_soft_descriptor_limit(NO_DESCRIPTOR_AT_ALL);
    let mut acknowledged = Vec::new();
    let mut refusals = Vec::new();
    // Acknowledged until the writer has failed to write one (its next batch), then
    // refused; a few refusals show it stays so.
    for i in 0..ATTEMPTS_MAX {
        let org = format!("org-{i}");
        match create(&mut admin, &org).await {
            Ok(()) => acknowledged.push(org),
            Err(status) => refusals.push(status),
        }
        if refusals.len() == 3 {
            break;
        }
        tokio::time::sleep(ATTEMPT_PAUSE).await;
    }
    // While it refuses, health says so for the admin service only: engines are served.
    if refusals.len() == 3 {
        wait_status(&mut health, ADMIN_SERVICE, ServingStatus::NotServing).await;
        assert_eq!(
            status_of(&mut health, SESSION_SERVICE).await,
            ServingStatus::Serving
        );
        assert_eq!(status_of(&mut health, "").await, ServingStatus::Serving);
    }
    daemon.set_soft_descriptor_limit(original);

    assert_eq!(
        refusals.len(),
        3,
        "refused while the record cannot be written"
    );
    for refusal in refusals {
        assert_status(Err::<(), _>(refusal), Code::Unavailable, REFUSED);
    }
    // Admin changes resume by themselves once the record can be written again.
    let mut resumed = false;
    for _ in 0..ATTEMPTS_MAX {
        match create(&mut admin, "after").await {
            Ok(()) => {
                resumed = true;
                break;
            }
            Err(status) => assert_status(Err::<(), _>(status), Code::Unavailable, REFUSED),
        }
        tokio::time::sleep(ATTEMPT_PAUSE).await;
    }
    assert!(resumed, "admin changes accepted again");
    wait_status(&mut health, ADMIN_SERVICE, ServingStatus::Serving).await;
    assert!(!acknowledged.is_empty());
    for org in &acknowledged {
        let events = events(&mut admin, org).await.unwrap();
        assert_eq!(count_of(&events, "organization_created"), 1, "{org}");
    }
}

#[tokio::test]
async fn an_admin_event_still_unwritable_at_shutdown_is_logged_with_its_content() {
    let mut daemon = Serve::new()
        .args(["--shutdown-grace-ms", "300"])
        .start()
        .await;
    let mut admin = daemon.operator().await;
    create(&mut admin, "acme").await.unwrap();
    // Written (a query flushes first): the writer holds no event when squeezed.
    events(&mut admin, "acme").await.unwrap();

    daemon.set_soft_descriptor_limit(NO_DESCRIPTOR_AT_ALL);
    create(&mut admin, "lost")
        .await
        .expect("admitted: nothing failed yet");
    assert!(daemon.stop().success());

    let reported = daemon
        .wait_for_log("an admin change's audit event could not be written before the daemon stopped; it is only in this log")
        .expect("the unwritten event is reported");
    let event = reported["event"].as_str().unwrap_or_default();
    assert!(
        event.contains("\"org\":\"lost\"") && event.contains("organization_created"),
        "{event}"
    );
}

/// The warning of a failed accept (`connections::AcceptErrors`).
const ACCEPT_FAILED: &str = "accepting a connection failed";
/// Clients knocking while the daemon can open no descriptor: each waits in the listen
/// backlog, so every accept the daemon tries fails with EMFILE.
const KNOCKING_CLIENTS: usize = 8;
/// How long the daemon is watched failing its accepts.
const STARVED_FOR: Duration = Duration::from_secs(3);

fn suppressed_of(line: &str) -> u64 {
    let Some((_, rest)) = line
        .split_once("\"suppressed\":")
        .or_else(|| line.split_once("suppressed="))
    else {
        return 0;
    };
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_pauses_and_warns_once_a_second_then_serves_again() {
    let daemon = Serve::new().start().await;
    daemon.organization("acme", 0, 1, &[]).await;
    let mut admin = daemon.operator().await;
    events(&mut admin, "acme").await.unwrap();
    let original = daemon.soft_descriptor_limit();

    let _held = fill_descriptor_holes(&daemon).await;
    daemon.set_soft_descriptor_limit(daemon.lowest_free_descriptor());
    let knocking: Vec<_> = (0..KNOCKING_CLIENTS)
        .map(|_| std::net::TcpStream::connect(daemon.addr()).unwrap())
        .collect();
    tokio::time::sleep(STARVED_FOR).await;
    let warnings: Vec<String> = daemon
        .log_lines()
        .into_iter()
        .filter(|line| line.contains(ACCEPT_FAILED))
        .collect();
    daemon.set_soft_descriptor_limit(original);

    // An unpaced loop fails its accepts as fast as it can retry them (over a million
    // warnings in 3 s were seen before pacing); paced and rate-limited, at most one
    // warning a second, each counting the failures it stands for.
    assert!(!warnings.is_empty(), "the failed accepts are reported");
    let seconds = STARVED_FOR.as_secs() as usize;
    assert!(
        warnings.len() <= seconds + 2,
        "at most one warning a second: {}",
        warnings.join("\n")
    );
    assert!(
        warnings.iter().any(|line| suppressed_of(line) > 0),
        "the repeats are counted, not logged: {}",
        warnings.join("\n")
    );
    // Descriptors free again: the knocking clients are accepted and a new one served.
    drop(knocking);
    let mut fresh = daemon.operator().await;
    events(&mut fresh, "acme")
        .await
        .expect("served once descriptors are free");
}
