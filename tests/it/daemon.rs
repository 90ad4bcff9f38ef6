//! The real binary, as an operator runs it: configuration checks, TLS with metrics and
//! JSON logs, the CLI's usage view and audit export, no secret in any log line, and a
//! clean stop on SIGTERM (an immediate one on a second signal).

use std::time::Duration;

use crate::harness::daemon::{self, Finished};
use crate::harness::*;
use seatbroker::client::{self, BearerKey};
use seatbroker::proto;
use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[test]
fn check_config_prints_the_effective_configuration_redacted_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seatbroker.toml");
    std::fs::write(
        &file,
        "lease_ttl_ms = 5000\nshutdown_grace_ms = 999\n[metrics]\nlisten = \"127.0.0.1:9464\"\n[limits]\nleases_per_org_max = 500\n[wal]\ncommit_delay_us = 250\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let secret = "operator-key-that-must-not-be-printed-0123456789";
    let Finished {
        code,
        stdout: out,
        stderr: err,
    } = daemon::run(
        &[
            "serve",
            "--check-config",
            "--config",
            file,
            "--lease-ttl-ms",
            "7000",
        ],
        &[
            ("SEATBROKER_OPERATOR_KEY", secret),
            ("SEATBROKER_SHUTDOWN_GRACE_MS", "1234"),
            ("SEATBROKER_LEASE_TTL_MS", "6000"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "lease_ttl_ms = 7000",         // the flag beats the environment and the file
        "shutdown_grace_ms = 1234",    // the environment beats the file
        "leases_per_org_max = 500",    // the file beats the default
        "request_bytes_max = 1048576", // the default
        "listen = \"127.0.0.1:9464\"",
        "# operator_key is set but not shown",
        "commit_delay_us = 250",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    assert!(!out.contains(secret) && !err.contains(secret));

    for (args, needle) in [
        (vec!["--lease-ttl-ms", "1"], "lease_ttl_ms"),
        (vec!["--listen", "0.0.0.0:50051"], "--insecure"),
        (
            vec!["--tls-cert", "/no/such.pem", "--tls-key", "/no/such.key"],
            "/no/such.pem",
        ),
        (vec!["--config", "/no/such.toml"], "/no/such.toml"),
        (vec!["--commit-delay-us", "10001"], "wal.commit_delay_us"),
    ] {
        let mut all = vec!["serve", "--check-config"];
        all.extend(args);
        let refused = daemon::run(&all, &[]);
        assert_eq!(refused.code, 64, "{all:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(needle),
            "{all:?}: {}",
            refused.stderr
        );
    }
    let insecure = daemon::run(
        &[
            "serve",
            "--check-config",
            "--listen",
            "0.0.0.0:50051",
            "--insecure",
        ],
        &[],
    );
    assert_eq!(insecure.code, 0, "{}", insecure.stderr);
    assert!(insecure.stdout.contains("insecure = true"));
}

/// The binary as a client: `seatbroker ARGS --addr URL --tls-ca CA --key KEY`.
fn cli(daemon: &Daemon, certs: &certs::TestCerts, key: &str, args: &[&str]) -> String {
    let url = daemon.url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--addr",
        &url,
        "--tls-ca",
        certs.ca.to_str().unwrap(),
        "--key",
        key,
    ]);
    let finished = daemon::run(&all, &[]);
    assert_eq!(finished.code, 0, "seatbroker {args:?}: {}", finished.stderr);
    finished.stdout
}

fn has_series(metrics: &str, name: &str, labels: &[&str]) -> bool {
    metrics
        .lines()
        .any(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
}

/// Polls `/metrics` until every `(series, labels)` has a line, for at most 10 s
/// (sampled gauges lag up to a second).
fn scrape_until_all(daemon: &Daemon, expected: &[(&str, Vec<&str>)]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = daemon.scrape();
        let missing = expected
            .iter()
            .find(|(name, labels)| !has_series(&text, name, labels));
        let Some((name, labels)) = missing else {
            return text;
        };
        assert!(
            std::time::Instant::now() < deadline,
            "no {name} with {labels:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ends_are_counted_by_their_reason() {
    let daemon = Serve::new()
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start()
        .await;
    let org = daemon
        .licensed_organization("acme", 0, 9, &["a", "b", "c", "d"])
        .await;
    let mut leases = Vec::new();
    for member in 0..4 {
        let mut engine = daemon.session(org.key(member)).await;
        leases.push(acquire_lease(&mut engine, KRE, "engine").await);
    }
    let mut owner = daemon.admin(&org.owner_key).await;
    release(&mut daemon.session(org.key(0)).await, &leases[0])
        .await
        .unwrap();
    owner
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id: leases[1].lease_id.clone(),
        })
        .await
        .unwrap();
    owner
        .unassign_licenses(proto::UnassignLicensesRequest {
            org_id: org.id.clone(),
            product: KRE,
            emails: vec![org.email(2).into()],
        })
        .await
        .unwrap();
    owner
        .remove_member(proto::RemoveMemberRequest {
            org_id: org.id.clone(),
            email: org.email(3).into(),
        })
        .await
        .unwrap();
    let labels: Vec<String> = ["released", "terminated", "unassigned", "member_removed"]
        .iter()
        .map(|reason| format!("reason=\"{reason}\""))
        .collect();
    let expected: Vec<(&str, Vec<&str>)> = labels
        .iter()
        .map(|label| {
            let series = vec!["product=\"kre\"", label.as_str(), "} 1"];
            ("seatbroker_lease_ends_total", series)
        })
        .collect();
    let metrics = scrape_until_all(&daemon, &expected);
    // Every reason has its series from the start, at zero until it happens.
    assert!(
        has_series(
            &metrics,
            "seatbroker_lease_ends_total",
            &["product=\"kre\"", "reason=\"organization_deleted\"", "} 0"]
        ),
        "{metrics}"
    );
}

struct Walkthrough {
    owner_key: String,
    member_keys: Vec<String>,
}

/// The README walkthrough over the daemon's TLS port, with one refused acquire.
async fn walkthrough(daemon: &Daemon) -> Walkthrough {
    let channel = daemon.channel().await;
    let operator_key = BearerKey::new(Some(OPERATOR_KEY)).unwrap();
    let mut operator = client::admin(channel.clone(), operator_key);
    operator
        .create_organization(proto::CreateOrganizationRequest {
            org_id: "acme".into(),
            display_name: "Acme".into(),
            owner_email: "owner@acme.test".into(),
            quota: Some(proto::Quota {
                kse_seats: 1,
                kre_sessions: 1,
                expires_at_unix_ms: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let owner_key = create_key(&mut operator, "acme", "owner@acme.test").await;
    let mut member_keys = Vec::new();
    for email in ["alice@acme.test", "bob@acme.test"] {
        operator
            .add_member(proto::AddMemberRequest {
                org_id: "acme".into(),
                email: email.into(),
                role: 0,
            })
            .await
            .unwrap();
        member_keys.push(create_key(&mut operator, "acme", email).await);
    }
    let mut owner = client::admin(channel.clone(), BearerKey::new(Some(&owner_key)).unwrap());
    owner
        .assign_licenses(proto::AssignLicensesRequest {
            org_id: "acme".into(),
            product: KRE,
            emails: vec!["alice@acme.test".into(), "bob@acme.test".into()],
        })
        .await
        .unwrap();
    let engine = |i: usize| {
        client::session(
            channel.clone(),
            BearerKey::new(Some(&member_keys[i])).unwrap(),
        )
    };
    let lease = engine(0)
        .acquire(acquire_request(KRE, "runner-1"))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    heartbeat(&mut engine(0), &lease).await.unwrap();
    assert!(
        engine(1)
            .acquire(acquire_request(KRE, "runner-2"))
            .await
            .is_err()
    );
    // A mistyped key is refused; it must not be logged either.
    let mistyped = format!("{}x", &member_keys[1]);
    let mut stranger = client::session(channel.clone(), BearerKey::new(Some(&mistyped)).unwrap());
    assert!(
        stranger
            .acquire(acquire_request(KRE, "runner-3"))
            .await
            .is_err()
    );
    release(&mut engine(0), &lease).await.unwrap();
    engine(1)
        .acquire(acquire_request(KRE, "runner-2"))
        .await
        .unwrap();
    Walkthrough {
        owner_key,
        member_keys,
    }
}

fn check_metrics(daemon: &Daemon) {
    let codes: Vec<String> = ["OK", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"]
        .iter()
        .map(|code| format!("code=\"{code}\""))
        .collect();
    let mut expected: Vec<(&str, Vec<&str>)> = vec![
        (
            "seatbroker_org_active_sessions",
            vec!["org=\"acme\"", "product=\"kre\""],
        ),
        ("seatbroker_active_sessions", vec!["product=\"kre\"", "} 1"]),
        ("seatbroker_quota", vec!["product=\"kre\"", "} 1"]),
        (
            "seatbroker_lease_grants_total",
            vec!["product=\"kre\"", "} 2"],
        ),
        (
            "seatbroker_lease_ends_total",
            vec!["product=\"kre\"", "reason=\"released\"", "} 1"],
        ),
        (
            "seatbroker_acquire_denials_total",
            vec!["reason=\"quota_exhausted\"", "} 1"],
        ),
        (
            "seatbroker_heartbeat_lateness_seconds_bucket",
            vec!["product=\"kre\""],
        ),
    ];
    for code in &codes {
        expected.push((
            "seatbroker_rpc_duration_seconds_bucket",
            vec!["method=\"SessionService/Acquire\"", code],
        ));
    }
    // Gauges are sampled periodically: scrape until a sample after the walkthrough.
    let metrics = scrape_until_all(daemon, &expected);
    assert!(
        !metrics.contains('@') && !metrics.contains("lease_id"),
        "per-user or per-lease labels"
    );
}

fn check_cli(daemon: &Daemon, certs: &certs::TestCerts, owner_key: &str) {
    let usage = cli(
        daemon,
        certs,
        owner_key,
        &["usage", "acme", "--window", "15m"],
    );
    assert!(
        usage.contains("PEAK (15m)") && usage.contains("DENIALS (15m)"),
        "{usage}"
    );
    let csv = cli(
        daemon,
        certs,
        owner_key,
        &["audit", "export", "acme", "--format", "csv"],
    );
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("at_unix_ms,time,org_id,kind")
    );
    let kinds: Vec<&str> = lines.map(|l| l.split(',').nth(3).unwrap()).collect();
    for kind in [
        "lease_granted",
        "lease_released",
        "acquire_denied",
        "licenses_assigned",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in:\n{csv}");
    }
    let jsonl = cli(
        daemon,
        certs,
        owner_key,
        &[
            "audit", "export", "acme", "--format", "jsonl", "--from", "0",
        ],
    );
    let events: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), kinds.len());
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "lease_granted" && e["product"] == "kre")
    );
}

/// Every line is JSON, no secret appears, and each call has its span.
fn check_logs(lines: &[String], secrets: &[&str]) {
    let mut acquire_spans = 0;
    for line in lines {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        for secret in secrets {
            assert!(!line.contains(secret), "a secret is in the log: {line}");
        }
        assert!(
            !line.contains("sbk_") && !line.contains("sbo_"),
            "key text in the log: {line}"
        );
        let span = &json["span"];
        if span["method"] == "SessionService/Acquire" && json["fields"]["message"] == "rpc finished"
        {
            if span["code"] != "UNAUTHENTICATED" {
                assert_eq!(span["org"], "acme", "{line}");
            }
            assert!(span["code"].is_string(), "{line}");
            acquire_spans += 1;
        }
    }
    assert!(acquire_spans >= 3, "rpc spans missing from the log");
}

type HealthWatch = tonic::Streaming<tonic_health::pb::HealthCheckResponse>;

/// Opens a health watch of the whole server and waits until it says SERVING.
async fn watch_health(channel: tonic::transport::Channel) -> HealthWatch {
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(reports_status(&mut watch, 1).await, "never SERVING");
    watch
}

/// Reads the watch until it reports `status`; false if it does not within 30 s.
async fn reports_status(watch: &mut HealthWatch, status: i32) -> bool {
    let reported = async { while watch.next().await.unwrap().unwrap().status != status {} };
    tokio::time::timeout(Duration::from_secs(30), reported)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_metrics_and_json_logs_it_serves_and_stops_cleanly_on_sigterm() {
    let certs = certs::generate();
    let mut daemon = Serve::new()
        .tls(&certs)
        .args(["--metrics-listen", "127.0.0.1:0", "--metrics-per-org"])
        .log("debug")
        .start()
        .await;
    let story = walkthrough(&daemon).await;
    check_metrics(&daemon);
    check_cli(&daemon, &certs, &story.owner_key);

    let mut watch = watch_health(daemon.channel().await).await;
    daemon.signal("TERM");
    assert!(
        reports_status(&mut watch, 2).await,
        "no NOT_SERVING while draining; log:\n{}",
        daemon.log_lines().join("\n")
    );
    drop(watch);
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    assert!(
        client::connect_with(&daemon.url(), daemon.client_tls())
            .await
            .is_err(),
        "it stopped listening"
    );

    let lines = daemon.log_lines();
    assert!(lines.iter().any(|l| l.contains("seatbroker stopped")));
    let mut secrets: Vec<&str> = story.member_keys.iter().map(String::as_str).collect();
    secrets.extend([story.owner_key.as_str(), OPERATOR_KEY]);
    check_logs(&lines, &secrets);
}

#[test]
fn check_config_output_loads_as_a_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let envs = [("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY)];
    let first = daemon::run(
        &["serve", "--check-config", "--lease-ttl-ms", "7000"],
        &envs,
    );
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(!first.stdout.contains(OPERATOR_KEY));
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &first.stdout).unwrap();
    let file = file.to_str().unwrap();
    let again = daemon::run(&["serve", "--check-config", "--config", file], &envs);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.stdout, first.stdout, "the printout round-trips");
}

#[test]
fn relative_paths_in_a_configuration_file_are_relative_to_the_file() {
    let config_dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let file = config_dir.path().join("seatbroker.toml");
    // `--check-config` of `contents`, run from another directory.
    let check_from_elsewhere = |contents: &str| {
        std::fs::write(&file, contents).unwrap();
        daemon::command()
            .current_dir(elsewhere.path())
            .args(["serve", "--check-config", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };

    let output = check_from_elsewhere(
        "data_dir = \"state\"\n[tls]\ncert = \"certs/server.pem\"\nkey = \"certs/server.key\"\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The TLS files are looked for beside the file, not in the working directory.
    let cert = config_dir.path().join("certs/server.pem");
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(cert.to_str().unwrap()), "{stderr}");

    let output = check_from_elsewhere("data_dir = \"state\"\n");
    let printed = String::from_utf8_lossy(&output.stdout);
    let state = config_dir.path().join("state");
    assert!(
        printed.contains(&format!("data_dir = \"{}\"", state.display())),
        "{printed}"
    );
}

#[test]
fn a_bad_environment_value_is_refused_naming_the_variable() {
    let refused = daemon::run(
        &["serve", "--check-config"],
        &[("SEATBROKER_LEASE_TTL_MS", "soon")],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("SEATBROKER_LEASE_TTL_MS"),
        "{}",
        refused.stderr
    );
    // Given as a flag, the flag is the culprit.
    let refused = daemon::run(&["serve", "--check-config", "--lease-ttl-ms", "soon"], &[]);
    assert!(
        !refused.stderr.contains("SEATBROKER_LEASE_TTL_MS"),
        "{}",
        refused.stderr
    );
}

/// A value that parses but breaks a bound names where it came from: the environment
/// variable or the flag, beside the TOML key; from a file, the key alone.
#[test]
fn an_environment_value_out_of_bounds_is_refused_naming_the_variable() {
    for (variable, value, shown) in [
        (
            "SEATBROKER_LEASE_TTL_MS",
            "1",
            "lease_ttl_ms = 1 is outside",
        ),
        (
            "SEATBROKER_AUDIT_FILES_MAX",
            "0",
            "audit.files_max = 0 is outside",
        ),
    ] {
        let refused = daemon::run(&["serve", "--check-config"], &[(variable, value)]);
        assert_eq!(refused.code, 64, "{}", refused.stderr);
        let wanted = format!("(given by the environment variable {variable})");
        assert!(
            refused.stderr.contains(shown) && refused.stderr.contains(&wanted),
            "{}",
            refused.stderr
        );
    }
    let refused = daemon::run(&["serve", "--check-config", "--lease-ttl-ms", "1"], &[]);
    assert_eq!(refused.code, 64, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("(given by --lease-ttl-ms)"),
        "{}",
        refused.stderr
    );
    // From a file, the TOML key is where to look.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seatbroker.toml");
    std::fs::write(&file, "lease_ttl_ms = 1\n").unwrap();
    let refused = daemon::run(
        &[
            "serve",
            "--check-config",
            "--config",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(refused.code, 64, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("lease_ttl_ms = 1 is outside")
            && !refused.stderr.contains("given by"),
        "{}",
        refused.stderr
    );
}

#[test]
fn text_logs_carry_no_colour_codes_when_standard_error_is_not_a_terminal() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap().to_string();
    let data_dir = tempfile::tempdir().unwrap();
    let failed = daemon::run(
        &[
            "serve",
            "--log-format",
            "text",
            "--listen",
            &held,
            "--data-dir",
            data_dir.path().to_str().unwrap(),
        ],
        &[("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY)],
    );
    assert!(
        failed.stderr.contains("seatbroker failed"),
        "{}",
        failed.stderr
    );
    assert!(!failed.stderr.contains('\u{1b}'), "{:?}", failed.stderr);
}

#[test]
fn failures_at_bind_time_exit_with_their_documented_codes() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = held.local_addr().unwrap().to_string();
    let data_dir = tempfile::tempdir().unwrap();
    let data_dir = data_dir.path().to_str().unwrap();
    // (arguments, exit code, what the message names)
    let cases: [(&[&str], i32, &str); 3] = [
        // Another process holds the address: retry later (75), like the data directory.
        (&["--listen", held.as_str()], 75, held.as_str()),
        (
            &["--listen", "127.0.0.1:0", "--metrics-listen", held.as_str()],
            75,
            held.as_str(),
        ),
        // An address this host does not have (TEST-NET-1): the configuration's (64).
        (
            &["--listen", "192.0.2.1:50051", "--insecure"],
            64,
            "192.0.2.1:50051",
        ),
    ];
    for (args, code, needle) in cases {
        let mut all = vec!["serve", "--data-dir", data_dir];
        all.extend(args);
        let refused = daemon::run(&all, &[("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY)]);
        assert_eq!(refused.code, code, "{all:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("cannot listen on") && refused.stderr.contains(needle),
            "{all:?}: {}",
            refused.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut daemon = Serve::new()
        .args(["--shutdown-grace-ms", "600000"])
        .log("info")
        .start()
        .await;
    let mut watch = watch_health(daemon.channel().await).await;
    daemon.signal("INT");
    // The open watch keeps the daemon draining, for up to the ten-minute grace.
    assert!(
        reports_status(&mut watch, 2).await,
        "no NOT_SERVING after SIGINT; log:\n{}",
        daemon.log_lines().join("\n")
    );
    daemon.signal("INT");
    let status = daemon.wait_exit();
    assert_eq!(
        status.code(),
        Some(128 + 2),
        "the second SIGINT exits at once, non-zero"
    );
}
