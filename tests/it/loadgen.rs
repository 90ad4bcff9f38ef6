//! The load generator against a real broker: it provisions organizations, members,
//! licenses and keys through the real API, drives engines with their own keys, and its
//! contention check confirms the broker never granted past the quota.

use std::time::Duration;

use crate::harness::*;
use seatbroker::loadgen::{
    self, BenchConfig, BrokerTarget, OperatorKeyText, Progress, StreamConfig, Target, Workload,
};
use seatbroker::tls::ClientTlsFiles;

fn config(workload: Workload, orgs: u32, engines: u32, quota: u32) -> BenchConfig {
    BenchConfig {
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
        stream: None,
    }
}

fn target(server: &TestServer) -> Target {
    Target::Broker(BrokerTarget {
        uri: server.url(),
        tls: ClientTlsFiles::default(),
        operator_key: OPERATOR_KEY.parse::<OperatorKeyText>().unwrap(),
        // The test broker runs in this process.
        server_pid: Some(std::process::id()),
        allow_remote: false,
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
    let config = BenchConfig {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mtls_it_connects_through_the_shared_client_with_a_client_certificate() {
    let certs = certs::generate();
    let server = start_tls(&certs, true).await;
    let target = Target::Broker(BrokerTarget {
        uri: server.url(),
        tls: certs.client(true),
        operator_key: OPERATOR_KEY.parse::<OperatorKeyText>().unwrap(),
        server_pid: None,
        allow_remote: false,
    });
    let report = loadgen::execute(&config(Workload::AcquireRelease, 1, 8, 8), &target)
        .await
        .expect("the run completes over mTLS");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    assert!(report.ops > 0);
    let without_certificate = Target::Broker(BrokerTarget {
        tls: certs.client(false),
        ..match target {
            Target::Broker(broker) => broker,
            _ => unreachable!(),
        }
    });
    let refused = loadgen::execute(
        &config(Workload::AcquireRelease, 1, 8, 8),
        &without_certificate,
    )
    .await;
    assert!(
        refused.is_err(),
        "a daemon requiring mTLS refuses the bench without a certificate"
    );
}

/// `bench` against `addr` for a short run; its exit status and standard error.
fn bench_at(addr: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let output = daemon::command()
        .args(["bench", "--addr", addr, "--operator-key", OPERATOR_KEY])
        .args([
            "--engines",
            "4",
            "--warmup",
            "0s",
            "--duration",
            "300ms",
            "--quiet",
        ])
        .args(extra)
        .output()
        .expect("the bench runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_target_that_is_not_loopback_is_refused_without_allow_remote() {
    // 192.0.2.1 is TEST-NET-1: refused before anything is sent, so never reached.
    let (status, stderr) = bench_at("http://192.0.2.1:50051", &[]);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("refusing to load 192.0.2.1") && stderr.contains("--allow-remote"),
        "the message names the flag: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_remote_a_target_that_is_not_loopback_is_benchmarked() {
    // "Remote" is any address that is not loopback. 0.0.0.0 is not loopback (the rule
    // refuses it), yet on Linux a connection to it reaches this machine: the broker
    // listening on 127.0.0.1 is reached through a non-loopback target address.
    let server = start().await;
    let port = server.url().rsplit(':').next().unwrap().to_owned();
    let addr = format!("http://0.0.0.0:{port}");
    let (status, stderr) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || bench_at(&addr, &[])
    })
    .await
    .unwrap();
    assert_eq!(
        status.code(),
        Some(64),
        "refused without the flag: {stderr}"
    );
    let (status, stderr) =
        tokio::task::spawn_blocking(move || bench_at(&addr, &["--allow-remote"]))
            .await
            .unwrap();
    assert!(status.success(), "{stderr}");
    let organizations = organizations(&server.operator().await).await;
    assert!(
        organizations
            .iter()
            .any(|org| org.org_id.starts_with("bench-")),
        "the run provisioned the broker: {organizations:?}"
    );
}

/// `engines` leases over `hosts` streams (2 connections), one member per host.
fn streamed(workload: Workload, engines: u32, hosts: u32, quota: u32) -> BenchConfig {
    BenchConfig {
        members: hosts,
        stream: Some(StreamConfig {
            batch: 16,
            streams_per_connection: hosts / 2,
            renew_interval: None,
            terminate_rate: None,
        }),
        ..config(workload, 1, engines, quota)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_acquire_release_cycles_leases_in_batches_over_the_real_channel() {
    let server = start().await;
    let report = loadgen::execute(
        &streamed(Workload::AcquireRelease, 64, 4, 64),
        &target(&server),
    )
    .await
    .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    let count = |method: &str| report.methods.get(method).map_or(0, |l| l.count);
    let (acquires, releases) = (count("acquire"), count("release"));
    assert!(acquires > 0, "{:?}", report.methods);
    assert!(
        acquires.abs_diff(releases) <= 64,
        "{acquires} vs {releases}"
    );
    let shape = report.stream.expect("streamed");
    assert_eq!((shape.hosts, shape.leases_per_host), (4, 16));
    assert!(report.cpu_cores.server.is_some_and(|cores| cores > 0.0));
    let usage = kre_usage(&server).await;
    assert_eq!(usage.active_sessions, 0, "every lease released: {usage:?}");
    assert!(usage.peak_sessions <= 64, "{usage:?}");
}

/// The KRE usage of the run's one organization, as the operator sees it.
async fn kre_usage(server: &TestServer) -> seatbroker::proto::ProductUsage {
    let mut operator = server.operator().await;
    let org_id = organizations(&operator).await[0].org_id.clone();
    operator
        .get_usage(seatbroker::proto::GetUsageRequest {
            org_id,
            window_seconds: 0,
        })
        .await
        .expect("usage")
        .into_inner()
        .products
        .into_iter()
        .find(|usage| usage.product == seatbroker::proto::Product::Kre as i32)
        .expect("KRE usage")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_acquires_past_the_quota_are_denied_and_counted() {
    let server = start().await;
    // 32 lease slots on 4 streams, 8 seats.
    let report = loadgen::execute(
        &streamed(Workload::AcquireRelease, 32, 4, 8),
        &target(&server),
    )
    .await
    .expect("the run completes");
    assert!(
        report
            .errors
            .get("RESOURCE_EXHAUSTED")
            .is_some_and(|n| *n > 0),
        "a full quota denies: {:?}",
        report.errors
    );
    assert!(report.methods.get("acquire").is_some_and(|l| l.count > 0));
    let usage = kre_usage(&server).await;
    assert!(
        usage.peak_sessions == 8 && usage.denials > 0,
        "the seats were used, never past the quota: {usage:?}"
    );
    assert_eq!(usage.active_sessions, 0, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_keep_every_lease_of_their_stream_alive_with_one_renewal() {
    let server = start().await;
    let config = BenchConfig {
        warmup: Duration::from_millis(1_000),
        stream: Some(StreamConfig {
            batch: 64,
            streams_per_connection: 2,
            renew_interval: Some(Duration::from_millis(100)),
            terminate_rate: None,
        }),
        ..streamed(Workload::Hosts, 200, 4, 200)
    };
    let report = loadgen::execute(&config, &target(&server))
        .await
        .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    let renewals = report.methods.get("renew").map_or(0, |l| l.count);
    assert!(renewals > 0, "{:?}", report.methods);
    // 200 leases over 4 hosts: every renewal extended the 50 leases of its stream.
    assert_eq!(report.leases_renewed, Some(renewals * 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminations_under_the_hosts_load_all_reach_their_streams() {
    let server = start().await;
    // 2,000 leases held by 20 hosts; an admin terminates 40 a second for 2 s.
    let config = BenchConfig {
        warmup: Duration::from_millis(2_000),
        duration: Duration::from_millis(2_000),
        stream: Some(StreamConfig {
            batch: 64,
            streams_per_connection: 10,
            renew_interval: Some(Duration::from_millis(500)),
            terminate_rate: Some(40),
        }),
        ..streamed(Workload::Hosts, 2_000, 20, 2_000)
    };
    let report = loadgen::execute(&config, &target(&server))
        .await
        .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    let terminations = report.terminations.expect("terminations reported");
    assert!(terminations.acknowledged > 0, "{terminations:?}");
    assert_eq!(terminations.missing, 0, "{terminations:?}");
    assert_eq!(
        terminations.delivered, terminations.acknowledged,
        "every acknowledged termination's event arrived: {terminations:?}"
    );
    assert_eq!(terminations.latency_us.count, terminations.delivered);
    // Terminated hosts acquired their slots again and released everything at the end.
    let usage = kre_usage(&server).await;
    assert_eq!(usage.active_sessions, 0, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_workload_adds_and_removes_members_each_answered_once_durable() {
    let server = start().await;
    const ENGINES: u32 = 8;
    let report = loadgen::execute(
        &config(Workload::Admin, 2, ENGINES, ENGINES),
        &target(&server),
    )
    .await
    .expect("the run completes");
    assert_eq!(report.errors_total, 0, "{:?}", report.errors);
    let count = |method: &str| {
        report
            .methods
            .get(method)
            .map_or(0, |latency| latency.count)
    };
    let (added, removed) = (count("add-member"), count("remove-member"));
    assert!(added > 0 && removed > 0, "{:?}", report.methods);
    // Each engine adds then removes: the measured window cuts at most one cycle of
    // each engine at either end.
    assert!(
        added.abs_diff(removed) <= u64::from(ENGINES),
        "{added} adds, {removed} removals"
    );
    assert_eq!(report.ops, added + removed, "only admin commands were sent");
    assert!(!report.methods.contains_key("acquire"));
    // Every engine finished its last cycle: only the provisioned members are left.
    for org in &organizations(&server.operator().await).await {
        assert_eq!(org.member_count, ENGINES / 2 + 1, "{org:?}");
    }
}

#[test]
fn the_admin_workload_is_refused_against_the_noop_server() {
    for extra in [
        ["--workload", "admin", "--target", "noop"].as_slice(),
        ["--workload", "admin", "--compare-noop"].as_slice(),
        ["--workload", "admin", "--protocol", "stream"].as_slice(),
    ] {
        let (status, stderr) = bench_at("http://127.0.0.1:9", extra);
        assert_eq!(status.code(), Some(64), "{extra:?}: {stderr}");
        assert!(stderr.contains("admin"), "{extra:?}: {stderr}");
    }
}
