//! End-to-end checks of every workload against the in-process no-op server, and of
//! the contention check against a server that keeps the quota and one that over-grants.

use std::time::Duration;

use clap::Parser;

use super::args::{BenchArgs, Workload};
use super::config::{BenchConfig, Mode, Output, Plan, Progress, StreamConfig, Target};
use super::error::LoadgenError;
use super::noop::NoopOptions;
use super::quota_check::Verdict;
use super::report::Outcome;
use super::report::Report;
use super::runner::execute_noop;

fn config(workload: Workload) -> BenchConfig {
    BenchConfig {
        workload,
        orgs: 1,
        engines: 32,
        members: 32,
        in_flight: 16,
        connections: 2,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(800),
        quota: 32,
        hold_min: Duration::from_millis(20),
        hold_max: Duration::from_millis(60),
        think_max: Duration::from_millis(20),
        backoff: Duration::from_millis(1),
        progress: Progress::Off,
        seed: 42,
        rate: None,
        stream: None,
    }
}

fn fast_heartbeats(seats: Option<u32>) -> NoopOptions {
    NoopOptions {
        seats,
        ttl_ms: 300,
        heartbeat_interval_ms: 10,
    }
}

async fn check(config: BenchConfig, options: NoopOptions) -> Report {
    let report = execute_noop(&config, options)
        .await
        .expect("the run completes");
    assert!(report.ops > 0, "no ops: {report:?}");
    assert_eq!(report.errors_total, 0, "errors: {:?}", report.errors);
    assert_eq!(report.engines_unfinished, 0);
    assert!(report.ops_per_sec > 0.0);
    let latency = report.latency_us;
    assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max && latency.p50 >= 1);
    assert_eq!(latency.count, report.ops);
    let json = serde_json::to_value(&report).expect("reports serialize");
    assert_eq!(json["workload"], config.workload.name());
    report
}

fn method_ops(report: &Report, method: &str) -> u64 {
    report
        .methods
        .get(method)
        .map_or(0, |latency| latency.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_release_alternates() {
    let report = check(config(Workload::AcquireRelease), fast_heartbeats(None)).await;
    let (acquires, releases) = (
        method_ops(&report, "acquire"),
        method_ops(&report, "release"),
    );
    assert!(acquires > 0 && acquires.abs_diff(releases) <= u64::from(report.engines));
    assert_eq!(method_ops(&report, "heartbeat"), 0);
    assert!(report.quota_check.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_mostly_heartbeats() {
    let report = check(config(Workload::Heartbeat), fast_heartbeats(None)).await;
    assert!(method_ops(&report, "heartbeat") > 10 * method_ops(&report, "acquire"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_acquires_heartbeats_and_releases() {
    let config = BenchConfig {
        orgs: 4,
        engines: 64,
        members: 64,
        ..config(Workload::Realistic)
    };
    let report = check(config, fast_heartbeats(None)).await;
    for method in ["acquire", "heartbeat", "release"] {
        assert!(
            method_ops(&report, method) > 0,
            "{method}: {:?}",
            report.methods
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_within_quota_passes() {
    let config = BenchConfig {
        quota: 4,
        hold_min: Duration::from_millis(1),
        hold_max: Duration::from_millis(3),
        ..config(Workload::Contention)
    };
    let report = check(config, fast_heartbeats(Some(4))).await;
    let quota_check = report
        .quota_check
        .as_ref()
        .expect("contention checks the quota");
    assert_eq!(
        quota_check.verdict,
        Verdict::Ok,
        "{}",
        quota_check.summary()
    );
    assert!(quota_check.max_concurrent >= 1 && quota_check.max_concurrent <= 4);
    assert!(quota_check.intervals_checked > 0);
    assert!(
        report.denials > 0,
        "32 engines on 4 seats are denied sometimes"
    );
    assert!(report.quota_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_on_an_over_granting_server_fails() {
    let config = BenchConfig {
        quota: 4,
        hold_min: Duration::from_millis(2),
        hold_max: Duration::from_millis(5),
        ..config(Workload::Contention)
    };
    // The broken server grants twice the quota the checker verifies.
    let report = check(config, fast_heartbeats(Some(8))).await;
    let quota_check = report
        .quota_check
        .as_ref()
        .expect("contention checks the quota");
    assert_eq!(
        quota_check.verdict,
        Verdict::Fail,
        "{}",
        quota_check.summary()
    );
    assert!(quota_check.max_concurrent > 4 && quota_check.max_concurrent <= 8);
    assert!(!report.quota_ok());
    let verdict = super::check_quota(&Outcome::Single(Box::new(report)));
    assert!(matches!(
        verdict,
        Err(LoadgenError::QuotaViolated { quota: 4, .. })
    ));
    assert_eq!(verdict.map_err(|e| e.exit_code()), Err(1));
}

fn streamed(workload: Workload, batch: u32, streams_per_connection: u32) -> BenchConfig {
    BenchConfig {
        // One member per host (2 connections).
        members: 2 * streams_per_connection,
        stream: Some(StreamConfig {
            batch,
            streams_per_connection,
            renew_interval: None,
            terminate_rate: None,
        }),
        ..config(workload)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_acquire_release_batches_operations_over_the_hosts_streams() {
    // 2 connections x 4 streams: 8 hosts cycling 4 leases each, 2 in flight each.
    let report = check(
        streamed(Workload::AcquireRelease, 8, 4),
        fast_heartbeats(None),
    )
    .await;
    let shape = report.stream.expect("a streamed run says its shape");
    assert_eq!((shape.hosts, shape.leases_per_host, shape.batch), (8, 4, 8));
    let (acquires, releases) = (
        method_ops(&report, "acquire"),
        method_ops(&report, "release"),
    );
    assert!(acquires > 0 && acquires.abs_diff(releases) <= u64::from(report.engines));
    assert_eq!(method_ops(&report, "renew"), 0);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["protocol"], "stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_heartbeats_renew_every_lease_of_the_stream_at_once() {
    let report = check(streamed(Workload::Heartbeat, 4, 2), fast_heartbeats(None)).await;
    let renewals = method_ops(&report, "renew");
    assert!(renewals > 0, "{:?}", report.methods);
    // 32 engines over 4 hosts: each renewal extends the 8 leases of its stream.
    assert_eq!(report.leases_renewed, Some(renewals * 8));
    assert!(report.leases_renewed_per_sec.unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_renew_once_per_interval_and_hold_their_leases() {
    let config = BenchConfig {
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(1_000),
        members: 8,
        stream: Some(StreamConfig {
            batch: 64,
            streams_per_connection: 4,
            renew_interval: Some(Duration::from_millis(100)),
            terminate_rate: None,
        }),
        ..config(Workload::Hosts)
    };
    let report = check(config, fast_heartbeats(None)).await;
    let renewals = method_ops(&report, "renew");
    // 8 hosts renewing every 100 ms for 1 s: about 80; never one per operation slot.
    assert!((40..=100).contains(&renewals), "{renewals} renewals");
    assert_eq!(report.leases_renewed, Some(renewals * 4));
    assert_eq!(
        method_ops(&report, "acquire") + method_ops(&report, "release"),
        0,
        "the leases were acquired in the warmup and are released after the deadline"
    );
}

/// `seatbroker bench` flattens `BenchArgs` the same way.
#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn plan(args: &[&str]) -> Result<Plan, LoadgenError> {
    let argv = std::iter::once("bench").chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).map_err(|e| LoadgenError::Usage(e.to_string()))?;
    Plan::from_args(cli.bench)
}

#[test]
fn arguments_resolve_per_workload_defaults() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let contention = plan(&[
        "--target",
        "noop",
        "--workload",
        "contention",
        "--engines",
        "64",
    ])
    .expect("valid");
    assert_eq!((contention.config.quota, contention.config.orgs), (16, 1));
    assert_eq!(contention.config.hold_max, Duration::from_millis(5));
    let realistic =
        plan(&["--target", "noop", "--workload", "realistic", "--json"]).expect("valid");
    assert_eq!(
        (
            realistic.config.orgs,
            realistic.config.engines,
            realistic.config.quota
        ),
        (20, 2000, 100)
    );
    assert_eq!(realistic.output, Output::Json);
    assert!(matches!(
        realistic.mode,
        Mode::Single(Target::Noop | Target::NoopProcess)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_peak_finds_the_peak_then_runs_paced_at_half_of_it() {
    let argv = [
        "bench",
        "--target",
        "noop",
        "--noop-in-process",
        "--half-peak",
        "--engines",
        "16",
        "--duration",
        "400ms",
        "--warmup",
        "0s",
        "--quiet",
    ];
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    let outcome = super::run(cli.bench).await.expect("the runs complete");
    let Outcome::Single(report) = outcome else {
        panic!("one target, one report")
    };
    let rate = report.rate.expect("the reported run was paced");
    assert!(rate >= 1);
    // Paced runs never go faster than asked (plus calls due in the warmup answered
    // late), and say how late the generator sent its calls.
    assert!(report.start_lag_us.is_some_and(|lag| lag.count > 0));
    assert!(
        report.ops_per_sec <= f64::from(rate) * 1.1 + 100.0,
        "paced at {rate} ops/s, ran at {:.0}",
        report.ops_per_sec
    );
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    for args in [
        &["--target", "noop", "--addr", "http://10.0.0.1:50051"][..],
        &["--operator-key", "", "--workload", "acquire-release"],
        &["--operator-key", "k", "--addr", "https://127.0.0.1:1"],
        &[
            "--target",
            "noop",
            "--workload",
            "contention",
            "--quota",
            "256",
        ],
        &["--target", "noop", "--in-flight", "0"],
        &["--target", "noop", "--duration", "61m"],
        &["--compare-noop", "--target", "noop"],
        &["--target", "noop", "--half-peak", "--rate", "100"],
        &["--target", "noop", "--workload", "hosts"],
        &[
            "--target",
            "noop",
            "--protocol",
            "stream",
            "--workload",
            "realistic",
        ],
        &["--target", "noop", "--protocol", "stream", "--rate", "100"],
        &["--target", "noop", "--protocol", "stream", "--batch", "0"],
        &[
            "--target",
            "noop",
            "--protocol",
            "stream",
            "--connections",
            "4",
            "--streams",
            "100",
            "--engines",
            "256",
        ],
        &["--target", "noop", "--engines", "10", "--members", "11"],
        // Terminations need the hosts workload over streams, on a broker, at a rate.
        &["--operator-key", "k", "--terminate-rate", "20/s"],
        &[
            "--operator-key",
            "k",
            "--protocol",
            "stream",
            "--workload",
            "heartbeat",
            "--terminate-rate",
            "20",
        ],
        &[
            "--target",
            "noop",
            "--protocol",
            "stream",
            "--workload",
            "hosts",
            "--terminate-rate",
            "20/s",
        ],
        &[
            "--operator-key",
            "k",
            "--protocol",
            "stream",
            "--workload",
            "hosts",
            "--terminate-rate",
            "0/s",
        ],
        &["--operator-key", "k", "--terminate-rate", "fast"],
        &[
            "--target",
            "noop",
            "--orgs",
            "4",
            "--engines",
            "10",
            "--members",
            "2",
        ],
    ] {
        let error = plan(args).expect_err("refused");
        assert_eq!(error.exit_code(), 64, "{args:?}: {error}");
    }
    let hosts = plan(&[
        "--operator-key",
        "k",
        "--protocol",
        "stream",
        "--workload",
        "hosts",
        "--terminate-rate",
        "20/s",
    ])
    .expect("valid");
    assert_eq!(
        hosts.config.stream.and_then(|stream| stream.terminate_rate),
        Some(20)
    );
    let compare = plan(&["--compare-noop", "--operator-key", "secret-key"]).expect("valid");
    assert!(matches!(compare.mode, Mode::CompareNoop(..)));
    assert!(
        !format!("{compare:?}").contains("secret-key"),
        "the operator key is redacted"
    );
}
