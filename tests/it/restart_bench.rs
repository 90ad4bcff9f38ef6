//! `seatbroker bench-restart` at a small scale, as a user runs it: the real binary
//! starts its own daemon on 127.0.0.1, builds live sessions through the API, kills the
//! daemon with SIGKILL, restarts it on the same data directory and storms it. Its JSON
//! report must show every seat kept, none granted past the quota, every storm lease
//! renewed, and figures that make sense; bad inputs are refused before anything starts.

use std::process::{Command, Output};

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_seatbroker");

fn bench_restart(args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("SEATBROKER_") {
            command.env_remove(name);
        }
    }
    command
        .arg("bench-restart")
        .args(args)
        .output()
        .expect("run seatbroker bench-restart")
}

fn number(report: &Value, path: &str) -> f64 {
    report
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is not a number in {report:#}"))
}

#[test]
fn a_restart_keeps_every_seat_and_admits_none_past_the_quota() {
    let output = bench_restart(&[
        "--sessions",
        "3000",
        "--orgs",
        "3",
        "--members",
        "30",
        "--churn",
        "600",
        "--storm-engines",
        "1000",
        "--storm-duration",
        "3s",
        "--storm-interval",
        "1s",
        "--retry-sample",
        "50",
        "--in-flight",
        "64",
        "--connections",
        "2",
        "--settle",
        "1s",
        "--json",
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");

    assert_eq!(report["verdict"], "ok", "{:#}", report["failures"]);
    assert_eq!(report["failures"], Value::Array(Vec::new()));
    for seats in ["/before_kill/seats", "/restart/settled/seats"] {
        assert_eq!(
            number(&report, &format!("{seats}/active")),
            3000.0,
            "{seats}"
        );
        assert_eq!(
            number(&report, &format!("{seats}/orgs_short")),
            0.0,
            "{seats}"
        );
        assert_eq!(
            number(&report, &format!("{seats}/orgs_over")),
            0.0,
            "{seats}"
        );
    }

    // The storm: every engine renewed once, none lost, then heartbeats every second.
    assert_eq!(number(&report, "/storm/renewed"), 1000.0);
    assert_eq!(number(&report, "/storm/lost"), 0.0);
    let all_renewed_ms = number(&report, "/storm/all_renewed_ms");
    assert!(
        all_renewed_ms > 0.0 && all_renewed_ms < 3000.0,
        "{all_renewed_ms}"
    );
    assert_eq!(number(&report, "/storm/interval_ms"), 1000.0);
    assert!(
        number(&report, "/storm/heartbeats_ok") >= 2000.0,
        "two rounds at least"
    );
    let p99 = number(&report, "/storm/latency_us/p99");
    assert!(p99 > 0.0 && p99 <= number(&report, "/storm/latency_us/max"));
    assert_eq!(report["storm"]["errors"], Value::Object(Default::default()));
    assert!(number(&report, "/storm/cpu_per_heartbeat/server_us") > 0.0);

    // Retried acquires find their lease; one more seat per organization is refused.
    assert_eq!(number(&report, "/retried_acquires/same_lease"), 50.0);
    assert_eq!(number(&report, "/retried_acquires/other_lease"), 0.0);
    assert_eq!(number(&report, "/quota_probes/refused"), 3.0);
    assert_eq!(number(&report, "/quota_probes/granted"), 0.0);

    // The restart: recovery read from the log and from /metrics, memory from /proc.
    let serving_ms = number(&report, "/restart/serving_ms");
    let listening_ms = number(&report, "/restart/listening_ms");
    assert!(
        0.0 < listening_ms && listening_ms <= serving_ms,
        "{listening_ms} {serving_ms}"
    );
    assert_eq!(number(&report, "/restart/recovery_log/live_leases"), 3000.0);
    // Churn pairs and sessions are all in the log (besides admin commands).
    assert!(number(&report, "/restart/recovery_log/records") >= 3000.0 + 2.0 * 600.0);
    assert!(number(&report, "/restart/settled/metrics/recovery_seconds") >= 0.0);
    assert_eq!(
        number(&report, "/restart/settled/metrics/active_kre_sessions"),
        3000.0
    );
    for memory in [
        "/before_kill/memory",
        "/restart/memory_at_serving",
        "/restart/settled/memory",
    ] {
        let rss = number(&report, &format!("{memory}/rss_mib"));
        assert!(
            rss > 1.0 && rss <= number(&report, &format!("{memory}/hwm_mib")),
            "{memory}"
        );
    }
    assert!(number(&report, "/restart/rss_ratio") > 0.0);
    // Memory read once a second while the daemon settles, asked nothing.
    for settling in [
        &report["before_kill"]["rss_settling_mib"],
        &report["restart"]["settled"]["rss_settling_mib"],
    ] {
        assert_eq!(settling.as_array().map(Vec::len), Some(1), "{settling}");
    }
    assert!(number(&report, "/disk/wal/bytes") > 0.0);
    assert!(number(&report, "/build/acquire_latency_us/count") >= 3000.0);

    // The temporary data directory is gone.
    let data_dir = report["data_dir"].as_str().expect("data_dir");
    assert!(
        !std::path::Path::new(data_dir).exists(),
        "{data_dir} was left behind"
    );
}

#[test]
fn bad_inputs_are_refused_before_anything_starts() {
    for (args, needle) in [
        (&["--sessions", "0"][..], "--sessions 0 is outside 1..="),
        (
            &["--sessions", "1000", "--storm-engines", "2000"],
            "--storm-engines 2000 exceeds --sessions 1000",
        ),
        (&["--sessions", "1001"], "multiple of --orgs"),
    ] {
        let output = bench_restart(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}
