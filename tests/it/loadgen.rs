//! The load generator against a real broker: it provisions organizations, members,
//! licenses and keys through the real API, drives engines with their own keys, and its
//! contention check confirms the broker never granted past the quota.

use std::time::Duration;

use crate::harness::*;
use seatbroker::loadgen::{self, BrokerTarget, Config, OperatorKey, Progress, Target, Workload};

fn config(workload: Workload, orgs: u32, engines: u32, quota: u32) -> Config {
    Config {
        workload,
        orgs,
        engines,
        members: engines,
        in_flight: 64,
        connections: 2,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(1_500),
        quota,
        hold_min: Duration::from_millis(1),
        hold_max: Duration::from_millis(3),
        think_max: Duration::ZERO,
        backoff: Duration::from_millis(1),
        progress: Progress::Off,
        seed: 7,
        rate: None,
    }
}

fn target(server: &TestServer) -> Target {
    Target::Broker(BrokerTarget {
        uri: server.url(),
        tls: None,
        operator_key: OPERATOR_KEY.parse::<OperatorKey>().unwrap(),
        // The test broker runs in this process.
        server_pid: Some(std::process::id()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_release_provisions_through_the_real_api_and_runs_clean() {
    let server = start().await;
    let report = loadgen::execute(
        &config(Workload::AcquireRelease, 2, 300, 150),
        &target(&server),
    )
    .await
    .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    assert!(report.ops > 0);
    let cpu = report.cpu_per_op;
    assert!(
        cpu.server_us.is_some_and(|us| us > 0.0) && cpu.client_us.is_some_and(|us| us > 0.0),
        "CPU per call read from /proc: {cpu:?}"
    );
    let organizations = organizations(&server.operator().await).await;
    assert_eq!(organizations.len(), 2);
    for org in &organizations {
        assert!(org.org_id.starts_with("bench-"));
        // 150 engines, one member each, plus the owner.
        assert_eq!(org.member_count, 151);
        assert_eq!(org.quota.unwrap().kre_sessions, 150);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_sharing_members_hold_separate_sessions_on_their_keys() {
    let server = start().await;
    let config = Config {
        members: 8,
        hold_min: Duration::from_secs(60),
        hold_max: Duration::from_secs(60),
        ..config(Workload::Realistic, 2, 100, 50)
    };
    let report = loadgen::execute(&config, &target(&server))
        .await
        .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    let organizations = organizations(&server.operator().await).await;
    assert_eq!(organizations.len(), 2);
    for org in &organizations {
        // 8 members over 2 organizations, plus the owner.
        assert_eq!(org.member_count, 5);
    }
    assert_eq!(
        report.methods["acquire"].count, 100,
        "every engine holds its own session though members are shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_never_sees_more_sessions_than_the_quota() {
    let server = start().await;
    let report = loadgen::execute(&config(Workload::Contention, 1, 64, 8), &target(&server))
        .await
        .expect("the run completes");
    let check = report
        .quota_check
        .as_ref()
        .expect("contention checks the quota");
    assert!(
        report.quota_ok(),
        "max concurrent {} > quota 8",
        check.max_concurrent
    );
    assert!(check.max_concurrent <= 8);
    assert!(check.max_concurrent > 0, "the run granted sessions");
}

#[test]
fn the_noop_server_runs_as_its_own_process_and_its_cpu_per_call_is_reported() {
    let output = daemon::command()
        .args([
            "bench",
            "--target",
            "noop",
            "--workload",
            "acquire-release",
            "--engines",
            "16",
            "--warmup",
            "200ms",
            "--duration",
            "1s",
            "--json",
        ])
        .output()
        .expect("the bench runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(
        report["ops"].as_u64().is_some_and(|ops| ops > 0),
        "{report}"
    );
    for side in ["server_us", "client_us"] {
        assert!(
            report["cpu_per_op"][side]
                .as_f64()
                .is_some_and(|us| us > 0.0),
            "{side} in {report}"
        );
    }
}
