//! `quota set` through the real binary: it changes only the fields given and keeps the
//! others (also across a restart, which replays the partial update), refuses to run
//! with nothing to change, prints the quota before and after; expiries typed as dates,
//! durations or `none`; expiries in the past refused unless forced, and seconds given
//! as milliseconds refused with a message saying so. And `SetQuotaRequest` on the wire:
//! a whole `quota` still replaces it, as older clients expect.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::{Outcome, as_caller, assert_exit};
use crate::harness::*;
use seatbroker::proto;

/// 2099-06-30T00:00:00Z.
const JUNE_2099_MS: i64 = 4_086_460_800_000;
/// 2001-01-01T00:00:00Z: after 2000, so not seconds, but in the past.
const JANUARY_2001_MS: i64 = 978_307_200_000;
const DAY_MS: i64 = 86_400_000;

/// `quota set ORG ARGS` as the operator.
async fn quota_set(server: &TestServer, org: &str, args: &[&str]) -> Outcome {
    let mut all = vec!["quota", "set", org];
    all.extend(args);
    as_caller(server, OPERATOR_KEY, &all).await
}

/// `quota set ORG ARGS --json`, which must succeed: its answer.
async fn quota_set_json(server: &TestServer, org: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let outcome = quota_set(server, org, &all).await;
    assert_exit(&outcome, 0, "");
    serde_json::from_str(&outcome.stdout).expect("one JSON object")
}

/// (KSE seats, KRE sessions, expiry ms) of a quota as the JSON answer shows it.
fn figures(quota: &serde_json::Value) -> (u64, u64, i64) {
    (
        quota["kse_seats"].as_u64().unwrap(),
        quota["kre_sessions"].as_u64().unwrap(),
        quota["expires_at_unix_ms"].as_i64().unwrap(),
    )
}

/// The organization's quota as the daemon holds it.
async fn stored_quota(server: &TestServer, org: &str) -> proto::Quota {
    let listing = server
        .operator()
        .await
        .list_organizations(proto::ListOrganizationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let organization = listing
        .organizations
        .into_iter()
        .find(|o| o.org_id == org)
        .expect("the organization is listed");
    organization.quota.expect("a quota")
}

fn quota(kse_seats: u32, kre_sessions: u32, expires_at_unix_ms: i64) -> proto::Quota {
    proto::Quota {
        kse_seats,
        kre_sessions,
        expires_at_unix_ms,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_set_changes_only_the_fields_given_and_a_restart_keeps_them() {
    let server = start().await;
    server.organization("beta", 3, 2, &[]).await;

    let answer = quota_set_json(&server, "beta", &["--expires", "2099-06-30"]).await;
    assert_eq!(figures(&answer["previous_quota"]), (3, 2, 0));
    assert_eq!(
        figures(&answer["organization"]["quota"]),
        (3, 2, JUNE_2099_MS)
    );

    let answer = quota_set_json(&server, "beta", &["--kre", "4"]).await;
    assert_eq!(figures(&answer["previous_quota"]), (3, 2, JUNE_2099_MS));
    assert_eq!(
        figures(&answer["organization"]["quota"]),
        (3, 4, JUNE_2099_MS),
        "KSE and the expiry kept"
    );
    assert_eq!(
        answer["organization"]["quota"]["expires_at"],
        "2099-06-30T00:00:00.000Z"
    );

    // Nothing to change: a usage error, and nothing changed.
    let bare = quota_set(&server, "beta", &[]).await;
    assert_exit(&bare, 2, "--kse");
    assert_eq!(
        stored_quota(&server, "beta").await,
        quota(3, 4, JUNE_2099_MS)
    );

    // The table shows the quota before and after.
    let table = quota_set(&server, "beta", &["--kse", "5"]).await;
    assert_exit(&table, 0, "");
    let rows: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["before", "3", "4", "2099-06-30T00:00:00Z"]),
        "{}",
        table.stdout
    );
    assert!(
        rows.contains(&vec!["after", "5", "4", "2099-06-30T00:00:00Z"]),
        "{}",
        table.stdout
    );

    // The log holds the partial updates; replaying them gives the same quota.
    let data_dir = server.stop().await;
    let server = start_in(data_dir, Duration::from_secs(30)).await;
    assert_eq!(
        stored_quota(&server, "beta").await,
        quota(5, 4, JUNE_2099_MS)
    );

    let before = now_ms();
    let answer = quota_set_json(&server, "beta", &["--expires", "+365d"]).await;
    let (kse, kre, expires) = figures(&answer["organization"]["quota"]);
    assert_eq!((kse, kre), (5, 4));
    assert!(
        (before + 365 * DAY_MS..=now_ms() + 365 * DAY_MS).contains(&expires),
        "+365d gave {expires}"
    );

    let answer = quota_set_json(&server, "beta", &["--expires", "none"]).await;
    assert_eq!(figures(&answer["organization"]["quota"]), (5, 4, 0));
    assert_eq!(
        answer["organization"]["quota"]["expires_at"],
        serde_json::Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_in_the_past_need_force_and_seconds_are_refused() {
    let server = start().await;
    server.organization("beta", 3, 2, &[]).await;

    let past = quota_set(&server, "beta", &["--expires", "2001-01-01"]).await;
    assert_exit(&past, 13, "in the past");
    let earlier = quota_set(&server, "beta", &["--expires", "-1d"]).await;
    assert_exit(&earlier, 13, "in the past");
    assert_eq!(stored_quota(&server, "beta").await, quota(3, 2, 0));

    let forced = quota_set_json(&server, "beta", &["--expires", "2001-01-01", "--force"]).await;
    assert_eq!(
        figures(&forced["organization"]["quota"]),
        (3, 2, JANUARY_2001_MS)
    );

    // Seconds given where milliseconds are due: 2027-01-01 in seconds.
    let seconds = quota_set(&server, "beta", &["--expires", "1798761600", "--force"]).await;
    assert_exit(&seconds, 13, "looks like seconds");
    assert_eq!(
        stored_quota(&server, "beta").await,
        quota(3, 2, JANUARY_2001_MS)
    );

    let create = as_caller(
        &server,
        OPERATOR_KEY,
        &[
            "org",
            "create",
            "gamma",
            "--name",
            "Gamma",
            "--owner",
            "o@gamma.test",
            "--kre",
            "1",
            "--expires",
            "2001-01-01",
        ],
    )
    .await;
    assert_exit(&create, 13, "in the past");
}

#[tokio::test]
async fn set_quota_on_the_wire_replaces_a_whole_quota_and_refuses_both_or_neither() {
    let server = start().await;
    server.organization("beta", 3, 2, &[]).await;
    let mut operator = server.operator().await;

    // What clients before the partial fields send: a replacement.
    let answer = operator
        .set_quota(proto::SetQuotaRequest {
            org_id: "beta".into(),
            quota: Some(quota(1, 7, 0)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.previous_quota, Some(quota(3, 2, 0)));
    assert_eq!(stored_quota(&server, "beta").await, quota(1, 7, 0));

    let neither = operator
        .set_quota(proto::SetQuotaRequest {
            org_id: "beta".into(),
            ..Default::default()
        })
        .await;
    assert_status(neither, tonic::Code::InvalidArgument, "nothing to change");
    let both = operator
        .set_quota(proto::SetQuotaRequest {
            org_id: "beta".into(),
            quota: Some(quota(1, 7, 0)),
            kse_seats: Some(2),
            ..Default::default()
        })
        .await;
    assert_status(both, tonic::Code::InvalidArgument, "not both");
    assert_eq!(stored_quota(&server, "beta").await, quota(1, 7, 0));
}
