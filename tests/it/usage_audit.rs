//! Usage reports for admins: peak, grants and denials over a window, and the audit
//! record of grants, releases, expiries, denials, terminations and admin changes,
//! queried by time range.

use std::time::{Duration, Instant};

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

fn usage_request(org: &str, window_seconds: u32) -> proto::GetUsageRequest {
    proto::GetUsageRequest {
        org_id: org.into(),
        window_seconds,
    }
}

/// The third member's acquire, refused: two of two KRE sessions are taken.
async fn deny_the_third(server: &TestServer, org: &Org) {
    assert_status(
        server
            .session(org.key(2))
            .await
            .acquire(acquire_request(KRE, "e-c"))
            .await,
        Code::ResourceExhausted,
        "2 of 2",
    );
}

#[tokio::test]
async fn usage_reports_peak_grants_and_denials_over_a_window() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 2, &["a", "b", "c"])
        .await;
    let lease = acquire_lease(&mut server.session(org.key(0)).await, KRE, "e-a").await;
    server
        .session(org.key(1))
        .await
        .acquire(acquire_request(KRE, "e-b"))
        .await
        .unwrap();
    deny_the_third(&server, &org).await;
    release(&mut server.session(org.key(0)).await, &lease)
        .await
        .unwrap();

    let mut admin = server.admin(&org.owner_key).await;
    let answer = admin
        .get_usage(usage_request("acme", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.window_seconds, 3600, "0 asks for the default window");
    let kre = answer.products.iter().find(|p| p.product == KRE).unwrap();
    assert_eq!(
        (
            kre.active_sessions,
            kre.window_peak_sessions,
            kre.window_grants,
            kre.window_denials
        ),
        (1, 2, 2, 1)
    );
    let kse = answer.products.iter().find(|p| p.product == KSE).unwrap();
    assert_eq!((kse.window_peak_sessions, kse.window_grants), (0, 0));
    assert_status(
        admin.get_usage(usage_request("acme", 86_401)).await,
        Code::InvalidArgument,
        "window_seconds",
    );
}

fn series_request(org: &str, range: proto::UsageRange) -> proto::GetUsageSeriesRequest {
    proto::GetUsageSeriesRequest {
        org_id: org.into(),
        product: KRE,
        range: range as i32,
        ..Default::default()
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// The usage series of an hour, a day and a week: by the minute, ten minutes and the
/// hour, within the bound of points, holding the peak against the quota and the
/// denials; a range past what the daemon keeps is cut to it, a nonsensical one refused;
/// read by whoever may read `GetUsage` only.
#[tokio::test]
async fn the_usage_series_charts_an_hour_a_day_and_a_week_within_bounds_for_admins_only() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 2, &["a", "b", "c"])
        .await;
    let other = server.organization("other", 1, 1, &[]).await;
    let before = now_unix_ms();
    acquire_lease(&mut server.session(org.key(0)).await, KRE, "e-a").await;
    acquire_lease(&mut server.session(org.key(1)).await, KRE, "e-b").await;
    deny_the_third(&server, &org).await;
    let mut owner = server.admin(&org.owner_key).await;
    for (range, resolution_ms, length_ms) in [
        (proto::UsageRange::Hour, 60_000, 3_600_000),
        (proto::UsageRange::Day, 600_000, 86_400_000),
        (proto::UsageRange::Week, 3_600_000, 7 * 86_400_000),
    ] {
        let series = owner
            .get_usage_series(series_request("acme", range))
            .await
            .unwrap()
            .into_inner();
        let points = &series.points;
        assert_eq!(series.resolution_ms, resolution_ms, "{range:?}");
        assert!(
            points.len() <= seatbroker::limits::USAGE_SERIES_POINTS_MAX
                && points.len() as i64 >= length_ms / resolution_ms,
            "{range:?}: {} points",
            points.len()
        );
        let answered = now_unix_ms();
        assert!(
            series.start_unix_ms <= answered - length_ms,
            "{range:?}: the whole range"
        );
        assert!(series.end_unix_ms >= before, "{range:?}: up to now");
        assert!(series.kept_since_unix_ms > 0 && series.kept_since_unix_ms <= before);
        assert!(
            points
                .windows(2)
                .all(|pair| pair[1].start_unix_ms - pair[0].start_unix_ms == resolution_ms),
            "{range:?}: points follow each other"
        );
        let last = points.last().unwrap();
        assert_eq!(
            (last.peak_sessions, last.quota),
            (2, Some(2)),
            "{range:?}: the peak against the quota"
        );
        assert_eq!(
            points.iter().map(|p| p.denials).sum::<u64>(),
            1,
            "{range:?}"
        );
        assert_eq!(points.iter().map(|p| p.grants).sum::<u64>(), 2, "{range:?}");
        assert_eq!((series.quota, series.active_sessions), (2, 2));
        // Before the daemon started, nothing is known.
        assert_eq!(points[0].quota, None, "{range:?}");
    }
    // A raised quota shows from its period on.
    server
        .operator()
        .await
        .set_quota(proto::SetQuotaRequest {
            org_id: "acme".into(),
            kre_sessions: Some(5),
            ..Default::default()
        })
        .await
        .unwrap();
    let hour = owner
        .get_usage_series(series_request("acme", proto::UsageRange::Hour))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hour.points.last().unwrap().quota, Some(5));
    assert_eq!(hour.quota, 5);
    // A range reaching back past the week kept is cut to it; by the hour.
    let long_ago = proto::GetUsageSeriesRequest {
        start_unix_ms: now_unix_ms() - 30 * 86_400_000,
        ..series_request("acme", proto::UsageRange::Unspecified)
    };
    let cut = owner.get_usage_series(long_ago).await.unwrap().into_inner();
    assert_eq!(cut.resolution_ms, 3_600_000);
    assert!(cut.start_unix_ms >= before - 7 * 86_400_000 - 3_600_000);
    assert!(cut.points.len() <= seatbroker::limits::USAGE_SERIES_POINTS_MAX);
    // Nonsense is refused, saying what would do.
    for (request, field) in [
        (
            proto::GetUsageSeriesRequest {
                product: 0,
                ..series_request("acme", proto::UsageRange::Hour)
            },
            "product",
        ),
        (
            proto::GetUsageSeriesRequest {
                range: 9,
                ..series_request("acme", proto::UsageRange::Hour)
            },
            "USAGE_RANGE_HOUR",
        ),
        (
            proto::GetUsageSeriesRequest {
                start_unix_ms: 5,
                ..series_request("acme", proto::UsageRange::Hour)
            },
            "not both",
        ),
        (
            proto::GetUsageSeriesRequest {
                start_unix_ms: now_unix_ms() - 60_000,
                end_unix_ms: now_unix_ms() - 120_000,
                ..series_request("acme", proto::UsageRange::Unspecified)
            },
            "start must be before end",
        ),
    ] {
        assert_status(
            owner.get_usage_series(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    // Authorized as GetUsage: not a plain member, not another organization's owner.
    for key in [org.key(0), other.owner_key.as_str()] {
        let mut caller = server.admin(key).await;
        assert_eq!(
            caller
                .get_usage_series(series_request("acme", proto::UsageRange::Day))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            caller
                .get_usage(usage_request("acme", 0))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
    }
    let operator = server
        .operator()
        .await
        .get_usage_series(series_request("acme", proto::UsageRange::Week))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(operator.active_sessions, 2);
}

/// The first page of acme's audit record in `[from, to)`, as the holder of `key`
/// reads it.
async fn audit(
    server: &TestServer,
    key: &str,
    from: i64,
    to: i64,
    limit: u32,
) -> Result<proto::ListAuditEventsResponse, tonic::Status> {
    let reader = server.admin(key).await;
    audit_page(&reader, "acme", (from, to), limit, String::new()).await
}

/// Polls the audit record until an event of `kind` shows up.
async fn wait_for_event(server: &TestServer, key: &str, kind: &str) -> Vec<proto::AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = audit(server, key, 0, 0, 0).await.unwrap().events;
        if events.iter().any(|e| e.kind == kind) {
            return events;
        }
        assert!(Instant::now() < deadline, "no {kind} event in {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_audit_record_tells_the_story_of_an_organization() {
    let server = start_with_ttl(Duration::from_millis(300)).await;
    let org = server
        .licensed_organization("acme", 1, 1, &["a", "b"])
        .await;
    let mut a = server.session(org.key(0)).await;
    let mut b = server.session(org.key(1)).await;
    let first = acquire_lease(&mut a, KRE, "e-1").await;
    assert_status(
        b.acquire(acquire_request(KRE, "e-b")).await,
        Code::ResourceExhausted,
        "",
    );
    release(&mut a, &first).await.unwrap();
    let second = acquire_lease(&mut a, KRE, "e-2").await;
    server
        .admin(&org.owner_key)
        .await
        .terminate_session(proto::TerminateSessionRequest {
            org_id: "acme".into(),
            lease_id: second.lease_id.clone(),
        })
        .await
        .unwrap();
    b.acquire(acquire_request(KRE, "e-b")).await.unwrap();

    let events = wait_for_event(&server, &org.owner_key, "lease_expired").await;
    let lease_story: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind.starts_with("lease_") || e.kind == "acquire_denied")
        .map(|e| (e.kind.as_str(), e.email.split('@').next().unwrap()))
        .collect();
    assert_eq!(
        lease_story,
        [
            ("lease_granted", "a"),
            ("acquire_denied", "b"),
            ("lease_released", "a"),
            ("lease_granted", "a"),
            ("lease_terminated", "a"),
            ("lease_granted", "b"),
            ("lease_expired", "b"),
        ]
    );
    let terminated = events
        .iter()
        .find(|e| e.kind == "lease_terminated")
        .unwrap();
    assert_eq!(
        terminated.actor, org.owner,
        "the termination names who ended it"
    );
    let released = events.iter().find(|e| e.kind == "lease_released").unwrap();
    assert_eq!(released.actor, org.email(0));
    let denial = events.iter().find(|e| e.kind == "acquire_denied").unwrap();
    assert_eq!(
        (denial.detail.as_str(), denial.product),
        ("quota_exhausted", KRE)
    );
    let granted = events.iter().find(|e| e.kind == "lease_granted").unwrap();
    assert_eq!(
        (granted.lease_id.as_str(), granted.engine_id.as_str()),
        (first.lease_id.as_str(), "e-1")
    );
    for kind in [
        "organization_created",
        "member_added",
        "api_key_created",
        "licenses_assigned",
    ] {
        assert!(events.iter().any(|e| e.kind == kind), "no {kind} event");
    }
    let assigned: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "licenses_assigned")
        .map(|e| e.email.as_str())
        .collect();
    assert_eq!(assigned, [org.email(0), org.email(1)]);
    assert!(
        events
            .iter()
            .all(|e| e.at_unix_ms > 0 && e.org_id == "acme")
    );

    // A time range selects by time; a limit cuts and says so.
    let at = denial.at_unix_ms;
    let in_that_ms = audit(&server, &org.owner_key, at, at + 1, 0).await.unwrap();
    assert!(in_that_ms.events.iter().all(|e| e.at_unix_ms == at));
    assert!(in_that_ms.events.iter().any(|e| e.kind == "acquire_denied"));
    let cut = audit(&server, &org.owner_key, 0, 0, 2).await.unwrap();
    assert_eq!((cut.events.len(), cut.truncated), (2, true));

    // Page tokens walk the record exactly once, in pages of two.
    let whole = audit(&server, &org.owner_key, 0, 0, 0)
        .await
        .unwrap()
        .events;
    let owner = server.admin(&org.owner_key).await;
    assert_eq!(audit_record(&owner, "acme", 2).await, whole);
    assert_status(
        audit_page(&owner, "acme", (0, 0), 2, "not-a-token".into()).await,
        Code::InvalidArgument,
        "page_token",
    );

    // The record on disk holds no secret: API keys appear by id only.
    let audit_dir = server.data_dir.path().join("audit");
    let org_dirs = std::fs::read_dir(audit_dir).unwrap();
    let files = org_dirs.flat_map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap());
    for entry in files {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (_, key) in &org.members {
            assert!(
                !text.contains(key.as_str()),
                "a member key is in the audit record"
            );
        }
        assert!(!text.contains(&org.owner_key) && !text.contains(OPERATOR_KEY));
    }
}

#[tokio::test]
async fn only_owners_admins_and_the_operator_read_the_audit_record() {
    let server = start().await;
    let org = server.organization("acme", 1, 1, &["a"]).await;
    let other = server.organization("globex", 1, 1, &[]).await;
    assert!(audit(&server, &org.owner_key, 0, 0, 0).await.is_ok());
    assert!(audit(&server, OPERATOR_KEY, 0, 0, 0).await.is_ok());
    assert_status(
        audit(&server, org.key(0), 0, 0, 0).await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        audit(&server, &other.owner_key, 0, 0, 0).await,
        Code::PermissionDenied,
        "",
    );
    assert_status(
        audit(&server, &org.owner_key, 10, 5, 0).await,
        Code::InvalidArgument,
        "to_unix_ms",
    );
}

/// `usage --series` prints the console's verdict and a row per point since the daemon
/// started, for one product or both; `--json` one object holding the answers; a member
/// is refused as through the API, and `--product` without `--series` is a usage error.
#[tokio::test]
async fn the_cli_prints_the_usage_series_with_the_consoles_verdict() {
    use crate::cli::{as_caller, assert_exit};
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 2, &["a", "b", "c"])
        .await;
    acquire_lease(&mut server.session(org.key(0)).await, KRE, "e-a").await;
    acquire_lease(&mut server.session(org.key(1)).await, KRE, "e-b").await;
    deny_the_third(&server, &org).await;

    let hour = as_caller(
        &server,
        &org.owner_key,
        &["usage", "acme", "--series", "hour", "--product", "kre"],
    )
    .await;
    assert_exit(&hour, 0, "");
    assert!(
        hour.stdout
            .starts_with("KRE: now 2 active of a quota of 2; a point every 1m\n"),
        "{}",
        hour.stdout
    );
    assert!(
        hour.stdout
            .contains("Sessions reached the quota and 1 acquire(s) were refused"),
        "{}",
        hour.stdout
    );
    assert!(!hour.stdout.contains("KSE"), "{}", hour.stdout);
    // The daemon started within the last minute or two: a row or two, not sixty.
    let rows = hour
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("20"))
        .count();
    assert!((1..=3).contains(&rows), "{rows} rows: {}", hour.stdout);

    let both = as_caller(
        &server,
        &org.owner_key,
        &["--json", "usage", "acme", "--series", "week"],
    )
    .await;
    assert_exit(&both, 0, "");
    let answer: serde_json::Value = serde_json::from_str(&both.stdout).expect("one JSON object");
    let series = answer["series"].as_array().expect("series");
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["product"], "kse");
    assert_eq!(series[1]["product"], "kre");
    assert_eq!(series[1]["resolution_ms"], 3_600_000);
    let denials: u64 = series[1]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["denials"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(denials, 1, "{answer}");
    assert!(
        series[1]["kept_since"].is_string(),
        "RFC 3339 twin: {answer}"
    );

    let member = as_caller(&server, org.key(0), &["usage", "acme", "--series", "day"]).await;
    assert_exit(&member, 77, "PERMISSION_DENIED");
    let without_series = as_caller(
        &server,
        &org.owner_key,
        &["usage", "acme", "--product", "kre"],
    )
    .await;
    assert_exit(&without_series, 2, "--series");
    let with_window = as_caller(
        &server,
        &org.owner_key,
        &["usage", "acme", "--series", "day", "--window", "1h"],
    )
    .await;
    assert_exit(&with_window, 2, "--window");
}
