//! One organization can neither erase nor starve another's audit record: a flood of
//! refused acquires and lease churn deletes only the flooding organization's own oldest
//! events (retention deletes from the organization holding the most), repeated refusals
//! become one line and one count, and a loop of queries by one organization's Owner
//! leaves every other organization its share of the query slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

/// A small record: 8 files of 4 KiB, 32 KiB in all (the floor of a file's size).
const FILE_BYTES_MAX: u64 = 4096;
const FILES_MAX: u32 = 8;

async fn start_small() -> TestServer {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    start_configured(data_dir, |settings| {
        settings.audit.file_bytes_max = FILE_BYTES_MAX;
        settings.audit.files_max = FILES_MAX;
    })
    .await
}

/// The whole record of `org`, page by page, as the holder of `key` reads it.
async fn record_of(server: &TestServer, key: &str, org: &str) -> Vec<proto::AuditEvent> {
    audit_record(&server.admin(key).await, org, 100).await
}

/// The refusals a record accounts for: one per `acquire_denied` line, plus the count
/// of each `acquire_denied_repeated` line.
fn refusals(events: &[proto::AuditEvent]) -> u64 {
    events
        .iter()
        .map(|event| match event.kind.as_str() {
            "acquire_denied" => 1,
            "acquire_denied_repeated" => {
                let count = event.detail.rsplit("count=").next().unwrap();
                count.parse().unwrap()
            }
            _ => 0,
        })
        .sum()
}

fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                bytes_under(&path)
            } else {
                std::fs::metadata(&path).unwrap().len()
            }
        })
        .sum()
}

const DENIALS_PER_CLIENT: u64 = 750;
const FLOOD_CLIENTS: u64 = 4;
const CHURN_SESSIONS: usize = 150;

#[tokio::test]
async fn a_flood_of_refusals_and_churn_by_one_organization_leaves_anothers_record_whole() {
    let server = start_small().await;
    let victim = server.licensed_organization("victim", 0, 1, &["v"]).await;
    let mut engine = server.session(victim.key(0)).await;
    let lease = acquire_lease(&mut engine, KRE, "e-v").await;
    release(&mut engine, &lease).await.unwrap();
    acquire_lease(&mut engine, KRE, "e-v2").await;
    let before = record_of(&server, &victim.owner_key, "victim").await;
    assert!(before.len() >= 7, "{before:#?}");

    // The attacker turns sessions over (two lines each, 75 KB in all, more than the
    // whole record's 32 KiB), then holds its only session and floods refusals.
    let attacker = server
        .organization("attacker", 0, 1, &["churn", "flood"])
        .await;
    attacker
        .assign(&server, KRE, attacker.emails())
        .await
        .unwrap();
    let mut churn = server.session(attacker.key(0)).await;
    for i in 0..CHURN_SESSIONS {
        let lease = acquire_lease(&mut churn, KRE, &format!("e-{i}")).await;
        release(&mut churn, &lease).await.unwrap();
    }
    acquire_lease(&mut churn, KRE, "e-held").await;
    let mut flooders = Vec::new();
    for client in 0..FLOOD_CLIENTS {
        let mut flood = server.session(attacker.key(1)).await;
        flooders.push(tokio::spawn(async move {
            for _ in 0..DENIALS_PER_CLIENT {
                let refused = flood
                    .acquire(acquire_request(KRE, &format!("f-{client}")))
                    .await;
                assert_eq!(refused.unwrap_err().code(), Code::ResourceExhausted);
            }
        }));
    }
    for flooder in flooders {
        flooder.await.unwrap();
    }

    let after = record_of(&server, &victim.owner_key, "victim").await;
    assert_eq!(after, before, "every event of the victim is still there");

    let flooded = record_of(&server, &attacker.owner_key, "attacker").await;
    let denial_lines = flooded
        .iter()
        .filter(|e| e.kind.starts_with("acquire_denied"))
        .count();
    // One line and one count per minute the flood spanned (at most two).
    assert!(denial_lines <= 4, "{denial_lines} lines for the refusals");
    assert_eq!(refusals(&flooded), FLOOD_CLIENTS * DENIALS_PER_CLIENT);
    let leases = flooded
        .iter()
        .filter(|e| e.kind.starts_with("lease_"))
        .count();
    assert!(
        leases < 2 * CHURN_SESSIONS,
        "the churn went past the record's budget: the attacker's oldest events were deleted ({leases} left)"
    );
    let on_disk = bytes_under(&server.data_dir.path().join("audit"));
    eprintln!(
        "attacker: {} refusals in {denial_lines} lines, {leases} lease events kept; {on_disk} bytes on disk",
        FLOOD_CLIENTS * DENIALS_PER_CLIENT
    );
    assert!(
        on_disk <= FILE_BYTES_MAX * u64::from(FILES_MAX),
        "{on_disk} bytes on disk"
    );

    // A page token of the attacker's record reads nothing of it as the victim's.
    let attacker_owner = server.admin(&attacker.owner_key).await;
    let attackers_page = audit_page(&attacker_owner, "attacker", (0, 0), 1, String::new())
        .await
        .unwrap();
    assert!(attackers_page.truncated);
    let victim_owner = server.admin(&victim.owner_key).await;
    let token = attackers_page.next_page_token;
    assert_status(
        audit_page(&victim_owner, "victim", (0, 0), 10, token).await,
        Code::FailedPrecondition,
        "page token",
    );
}

/// Queries of the victim, one at a time, while the attacker keeps many in flight.
const VICTIM_QUERIES: usize = 100;
const ATTACKER_LOOPS: usize = 16;

/// The victim's queries cannot be refused: the attacker's organization holds at most
/// `AUDIT_QUERIES_PER_ORG_MAX` (2) of the daemon's `AUDIT_QUERIES_MAX` (8) places and
/// the victim asks one at a time, so a place is always free for it whatever the
/// timing. The attacker is served too, within its share.
#[tokio::test]
async fn an_organization_looping_queries_never_refuses_another_organizations() {
    let server = Arc::new(start().await);
    let attacker = server.organization("attacker", 0, 1, &[]).await;
    let victim = server.organization("victim", 0, 1, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loops = Vec::new();
    for _ in 0..ATTACKER_LOOPS {
        let mut admin = server.admin(&attacker.owner_key).await;
        let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = admin
                    .list_audit_events(proto::ListAuditEventsRequest {
                        org_id: "attacker".into(),
                        limit: 1,
                        ..Default::default()
                    })
                    .await;
                match answer {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(status) => panic!("{status:?}"),
                };
            }
        }));
    }
    let mut admin = server.admin(&victim.owner_key).await;
    for _ in 0..VICTIM_QUERIES {
        admin
            .list_audit_events(proto::ListAuditEventsRequest {
                org_id: "victim".into(),
                ..Default::default()
            })
            .await
            .expect("the victim's query is answered");
    }
    stop.store(true, Ordering::Relaxed);
    for attacker_loop in loops {
        attacker_loop.await.unwrap();
    }
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    eprintln!("attacker: {served} served, {refused} refused");
    assert!(served > 0, "the attacker is served within its share");
}

/// A data directory written before per-organization directories (every organization
/// in `audit/<seq>-<first_unix_ms>.jsonl`) starts; its events are read before the
/// organization's new ones, and a page token into the old file still works.
#[tokio::test]
async fn a_record_of_the_older_layout_is_read_and_its_page_tokens_still_work() {
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let audit = data_dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let line = |at: i64, org: &str| {
        format!(
            "{{\"at_unix_ms\":{at},\"org\":\"{org}\",\"kind\":\"quota_set\",\"actor\":\"operator\",\"detail\":\"old {at}\"}}\n"
        )
    };
    let old = [line(1, "acme"), line(2, "other"), line(3, "acme")].concat();
    std::fs::write(audit.join("0000000007-1.jsonl"), &old).unwrap();
    let server = start_configured(data_dir, |_| {}).await;
    let org = server.organization("acme", 0, 1, &[]).await;

    let whole = record_of(&server, &org.owner_key, "acme").await;
    let details: Vec<&str> = whole.iter().take(2).map(|e| e.detail.as_str()).collect();
    assert_eq!(details, ["old 1", "old 3"]);
    assert!(whole[2..].iter().any(|e| e.kind == "organization_created"));
    // The older daemon's token for the line of `old 3`: file 7, after two lines.
    let offset = line(1, "acme").len() + line(2, "other").len();
    let owner = server.admin(&org.owner_key).await;
    let token = format!("a1.7.{offset}");
    let page = audit_page(&owner, "acme", (0, 0), 100, token)
        .await
        .unwrap();
    assert_eq!(page.events, whole[1..]);
}
