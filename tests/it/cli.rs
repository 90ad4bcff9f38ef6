//! The client commands of the real binary as a script sees them: exit codes by class
//! of failure (README's table), timeouts that end a command talking to a silent
//! server, and the JSON shape of answers and errors.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::harness::*;

/// What one run of `seatbroker ARGS` said, and how long it took.
pub(crate) struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `seatbroker ARGS` (the test's `SEATBROKER_*` variables removed) to its end,
/// without blocking the runtime that serves the in-process daemon.
pub(crate) async fn seatbroker(args: &[&str]) -> Outcome {
    let started = Instant::now();
    let output = tokio::process::Command::from(daemon::command())
        .args(args)
        .output()
        .await
        .expect("run the seatbroker binary");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// Runs a client command against `server` with `key`.
pub(crate) async fn as_caller(server: &TestServer, key: &str, args: &[&str]) -> Outcome {
    let url = server.url();
    let mut all = args.to_vec();
    all.extend(["--addr", &url, "--key", key]);
    seatbroker(&all).await
}

/// The command exited with `code`, `needle` in its standard error; a failure prints
/// nothing on standard output.
pub(crate) fn assert_exit(outcome: &Outcome, code: i32, needle: &str) {
    assert_eq!(outcome.code, code, "{}", outcome.stderr);
    if code != 0 {
        assert_eq!(outcome.stdout, "", "a failure printed on standard output");
    }
    assert!(
        outcome.stderr.contains(needle),
        "{needle:?} not in {}",
        outcome.stderr
    );
}

/// A TCP port on 127.0.0.1 with nothing listening.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A server that accepts connections and never says a word; its connections stay open
/// until the test ends.
fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming().take(16) {
            held.push(connection);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_of_failure_exits_with_its_own_code() {
    let server = start().await;
    let org = server.organization("acme", 1, 1, &["a"]).await;

    let ok = as_caller(&server, OPERATOR_KEY, &["usage", "acme"]).await;
    assert_exit(&ok, 0, "");
    let unknown_org = as_caller(&server, OPERATOR_KEY, &["usage", "nosuch"]).await;
    assert_exit(&unknown_org, 10, "NOT_FOUND");
    let exists = as_caller(
        &server,
        OPERATOR_KEY,
        &[
            "org",
            "create",
            "acme",
            "--name",
            "A",
            "--owner",
            "o@acme.test",
        ],
    )
    .await;
    assert_exit(&exists, 11, "ALREADY_EXISTS");
    let wrong_key = as_caller(&server, "sbk_not-a-key", &["usage", "acme"]).await;
    assert_exit(&wrong_key, 77, "UNAUTHENTICATED");
    let member = as_caller(&server, org.key(0), &["org", "list"]).await;
    assert_exit(&member, 77, "PERMISSION_DENIED");
    let bad_email = as_caller(&server, OPERATOR_KEY, &["member", "add", "acme", "no-at"]).await;
    assert_exit(&bad_email, 13, "INVALID_ARGUMENT");

    let unreachable = format!("http://{}", closed_port());
    let refused = seatbroker(&["org", "list", "--addr", &unreachable]).await;
    assert_exit(&refused, 75, "UNAVAILABLE");
    let tls_files_for_plaintext = seatbroker(&["org", "list", "--tls-ca", "/no/ca.pem"]).await;
    assert_exit(&tls_files_for_plaintext, 78, "CONFIGURATION");
    let bad_time = as_caller(
        &server,
        OPERATOR_KEY,
        &["audit", "export", "acme", "--from", "soon"],
    )
    .await;
    assert_exit(&bad_time, 64, "USAGE");
    let unknown_flag = seatbroker(&["org", "list", "--no-such-flag"]).await;
    assert_exit(&unknown_flag, 2, "--no-such-flag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_ends_the_command_at_its_timeout_with_retry_later() {
    let silent = silent_server();
    let plaintext = format!("http://{silent}");
    let call = seatbroker(&["org", "list", "--addr", &plaintext, "--timeout", "1s"]).await;
    assert_exit(&call, 75, "DEADLINE_EXCEEDED");
    assert!(call.took < Duration::from_secs(15), "took {:?}", call.took);

    // Over TLS the handshake itself waits for the server: the connect timeout ends it.
    let certs = certs::generate();
    let tls = format!("https://localhost:{}", silent.port());
    let handshake = seatbroker(&[
        "org",
        "list",
        "--addr",
        &tls,
        "--tls-ca",
        certs.ca.to_str().unwrap(),
        "--connect-timeout",
        "1s",
    ])
    .await;
    assert_exit(&handshake, 75, "did not answer within 1s");
    assert!(
        handshake.took < Duration::from_secs(15),
        "took {:?}",
        handshake.took
    );
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// Runs a command that must succeed and returns its standard output as JSON.
async fn json_answer(server: &TestServer, key: &str, args: &[&str]) -> serde_json::Value {
    let outcome = as_caller(server, key, args).await;
    assert_exit(&outcome, 0, "");
    json(&outcome.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_answers_and_errors_have_one_shape() {
    let server = start().await;
    let org = server.licensed_organization("acme", 1, 2, &["a"]).await;

    // Before or after the subcommand; enum values as the tables and flags name them.
    let members = json_answer(&server, OPERATOR_KEY, &["--json", "member", "list", "acme"]).await;
    let roles: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["member", "owner"], "{members}");
    assert!(members.get("next_page_token").is_none(), "{members}");
    let assigned = json_answer(
        &server,
        OPERATOR_KEY,
        &["license", "assign", "acme", "kse", org.email(0), "--json"],
    )
    .await;
    assert_eq!(assigned["results"][0]["outcome"], "assigned", "{assigned}");

    // Times in RFC 3339 beside Unix ms; the 64-bit generation as a string.
    let acquired = json_answer(
        &server,
        org.key(0),
        &["--json", "session", "acquire", "kre", "--engine-id", "e1"],
    )
    .await;
    let lease = &acquired["lease"];
    assert_eq!(lease["product"], "kre");
    let generation = lease["generation"]
        .as_str()
        .expect("generation as a string");
    assert!(generation.parse::<u64>().is_ok(), "{lease}");
    let expires_ms = lease["expires_at_unix_ms"].as_i64().unwrap();
    let expires_at = lease["expires_at"].as_str().expect("an RFC 3339 time");
    let parsed = humantime::parse_rfc3339(expires_at).unwrap();
    let parsed_ms = parsed
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert_eq!(parsed_ms as i64, expires_ms);

    // An answer without fields of its own says what was done.
    let lease_id = lease["lease_id"].as_str().unwrap();
    let released = json_answer(
        &server,
        org.key(0),
        &["--json", "session", "release", lease_id, generation],
    )
    .await;
    assert_eq!(released, serde_json::json!({ "released": lease_id }));

    // `audit export` writes the same shape, one object a line.
    let export = as_caller(
        &server,
        OPERATOR_KEY,
        &["--json", "audit", "export", "acme"],
    )
    .await;
    assert_exit(&export, 0, "");
    let events: Vec<serde_json::Value> = export.stdout.lines().map(json).collect();
    let granted = events
        .iter()
        .find(|e| e["kind"] == "lease_granted")
        .unwrap();
    assert_eq!(granted["product"], "kre");
    assert!(
        granted["generation"].is_string() && granted["at"].is_string(),
        "{granted}"
    );

    // Errors: one JSON object on standard error, nothing on standard output.
    let unknown = as_caller(&server, OPERATOR_KEY, &["--json", "usage", "nosuch"]).await;
    assert_exit(&unknown, 10, "");
    let error = json(unknown.stderr.trim());
    assert_eq!(error["code"], "NOT_FOUND");
    assert!(
        error["message"].as_str().unwrap().contains("nosuch"),
        "{error}"
    );
}

/// `status` names what each address of `--addr` is, without a key: the daemon's role
/// and the health of the server and of each broker service; an address that does not
/// answer is reported and the others still asked. Exits 0 when one serves, 75 when
/// none does (its report is still printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_each_address_and_exits_75_when_none_serves() {
    let server = start().await;
    let closed = format!("http://{}", closed_port());
    let list = format!("{},{closed}", server.url());

    let table = seatbroker(&["status", "--addr", &list]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let serving_row = table
        .stdout
        .lines()
        .find(|line| line.contains(&server.url()) && line.contains("serving"))
        .unwrap_or_else(|| panic!("no serving row: {}", table.stdout));
    assert_eq!(serving_row.matches("SERVING").count(), 3, "{serving_row}");
    assert!(
        table.stdout.contains(&format!("{closed}: cannot reach")),
        "{}",
        table.stdout
    );

    let shown = seatbroker(&["--json", "status", "--addr", &list]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let answer = json(&shown.stdout);
    assert_eq!(answer["serving"], server.url().as_str());
    let nodes = answer["nodes"].as_array().expect("nodes");
    assert_eq!(nodes[0]["role"], "serving");
    let health: Vec<(&str, &str)> = nodes[0]["health"]
        .as_array()
        .expect("health")
        .iter()
        .map(|h| {
            (
                h["service"].as_str().unwrap(),
                h["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        health,
        [
            ("", "SERVING"),
            ("seatbroker.v1.SessionService", "SERVING"),
            ("seatbroker.v1.AdminService", "SERVING")
        ]
    );
    assert_eq!(nodes[1]["role"], "unreachable");

    // A silent server (it accepts and never answers) is reported at the end of
    // --timeout, beside the serving one.
    let silent = format!("http://{}", silent_server());
    let with_silent = format!("{silent},{}", server.url());
    let waited = seatbroker(&[
        "--json",
        "status",
        "--addr",
        &with_silent,
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(waited.code, 0, "{}", waited.stderr);
    assert!(
        waited.took < Duration::from_secs(15),
        "took {:?}",
        waited.took
    );
    let answer = json(&waited.stdout);
    assert_eq!(answer["nodes"][0]["role"], "unanswered", "{answer}");
    assert!(
        answer["nodes"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("DEADLINE_EXCEEDED"),
        "{answer}"
    );
    assert_eq!(answer["nodes"][1]["role"], "serving", "{answer}");

    let none = seatbroker(&["status", "--addr", &closed]).await;
    assert_eq!(none.code, 75, "{}", none.stderr);
    assert!(none.stdout.contains("unreachable"), "{}", none.stdout);
    let no_address = seatbroker(&["status", "--addr", ","]).await;
    assert_exit(&no_address, 64, "--addr names no address");
    // A malformed address is the command's own configuration error, whatever the
    // other addresses answer.
    let malformed = format!("{},http://[::1", server.url());
    let bad = seatbroker(&["status", "--addr", &malformed]).await;
    assert_exit(&bad, 78, "");
}

/// A daemon still recovering its log is `starting`, its server NOT_SERVING.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_daemon_recovering_its_log_as_starting() {
    let daemon = Serve::new()
        .env("SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS", "20000")
        .spawn();
    let url = daemon.url();
    let shown = seatbroker(&["--json", "status", "--addr", &url]).await;
    assert_eq!(shown.code, 75, "{}", shown.stderr);
    let answer = json(&shown.stdout);
    assert_eq!(answer["nodes"][0]["role"], "starting", "{answer}");
    assert_eq!(
        answer["nodes"][0]["health"][0]["status"], "NOT_SERVING",
        "{answer}"
    );
    assert!(answer["serving"].is_null(), "{answer}");
}
