//! `seatbroker run` against the real binary: COMMAND's exit status passes through, a
//! second `run` waits in the queue until the first's COMMAND exits, a lost seat stops
//! COMMAND (SIGTERM) and exits 21, SIGTERM to `run` reaches COMMAND and the seat is
//! released after, the seat is free right after `run` exits, and a daemon killed and
//! restarted within the TTL does not disturb COMMAND (the same lease continues).
//!
//! COMMAND is a small shell script that reports through files in a temporary
//! directory: `started` (its lease id) when it runs, `term` when it gets SIGTERM; it
//! runs until the test creates `done`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use seatbroker::proto;

use crate::harness::daemon::command;
use crate::harness::*;

/// Every wait on a `run` process or its COMMAND is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);

/// The script every test runs as COMMAND (see the module's doc); exits with `$1`.
const SCRIPT: &str = r#"trap 'echo TERM > "$DIR/term"; exit 143' TERM
echo "$SEATBROKER_LEASE_ID $SEATBROKER_LEASE_GENERATION" > "$DIR/started.tmp"
mv "$DIR/started.tmp" "$DIR/started"
while [ ! -e "$DIR/done" ]; do sleep 0.05; done
exit "$1""#;

/// One `seatbroker run` child process, and its COMMAND's report directory.
struct Run {
    child: Child,
    dir: tempfile::TempDir,
}

impl Run {
    /// Starts `seatbroker run --product kre EXTRA -- sh -c SCRIPT sh EXIT`.
    fn start(daemon: &Daemon, key: &str, extra: &[&str], exit: u8) -> Run {
        let dir = tempfile::tempdir().expect("a directory for COMMAND's reports");
        let child = command()
            .args(["run", "--product", "kre", "--addr", &daemon.url()])
            .args(extra)
            .args(["--", "sh", "-c", SCRIPT, "sh", &exit.to_string()])
            .env("SEATBROKER_KEY", key)
            .env("DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start seatbroker run");
        Run { child, dir }
    }

    fn report(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits until COMMAND runs; its lease id and generation.
    fn started(&mut self) -> (String, u64) {
        let started = self.report("started");
        self.wait_for(|| started.exists(), "COMMAND to start");
        let text = std::fs::read_to_string(started).expect("read the report");
        let (id, generation) = text.trim().split_once(' ').expect("id and generation");
        (id.to_owned(), generation.parse().expect("a generation"))
    }

    fn has_started(&self) -> bool {
        self.report("started").exists()
    }

    /// Lets COMMAND exit.
    fn finish(&self) {
        std::fs::write(self.report("done"), "").expect("write done");
    }

    /// Waits for `run` to exit: its exit code and standard error.
    fn exit(mut self) -> (i32, String) {
        let until = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for run") {
                break status;
            }
            assert!(
                Instant::now() < until,
                "run did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        use std::io::Read;
        if let Some(mut piped) = self.child.stderr.take() {
            let _ = piped.read_to_string(&mut stderr);
        }
        (status.code().unwrap_or(-1), stderr)
    }

    /// Polls `condition` while `run` lives, until the deadline.
    fn wait_for(&mut self, condition: impl Fn() -> bool, what: &str) {
        let until = Instant::now() + DEADLINE;
        while !condition() {
            if let Some(status) = self.child.try_wait().expect("wait for run") {
                let mut stderr = String::new();
                use std::io::Read;
                let _ = self
                    .child
                    .stderr
                    .take()
                    .map(|mut e| e.read_to_string(&mut stderr));
                panic!("run exited ({status}) while waiting for {what}: {stderr}");
            }
            assert!(Instant::now() < until, "no {what} within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::write(self.report("done"), "");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn daemon_with_ttl(ttl_ms: &str, data_dir: Option<&Path>) -> Daemon {
    let mut serve = Serve::new().args(["--lease-ttl-ms", ttl_ms]);
    if let Some(dir) = data_dir {
        serve = serve.data_dir(dir);
    }
    serve.start().await
}

async fn active(daemon: &Daemon, org: &Org) -> u32 {
    org.usage(daemon, KRE).await.active_sessions
}

#[tokio::test]
async fn commands_exit_status_passes_through_and_the_seat_is_free_right_after() {
    let daemon = daemon_with_ttl("30000", None).await;
    let org = daemon
        .licensed_organization("passthrough", 0, 1, &["eve"])
        .await;
    let mut run = Run::start(&daemon, org.key(0), &[], 7);
    let (lease_id, _) = run.started();
    assert!(!lease_id.is_empty(), "COMMAND sees SEATBROKER_LEASE_ID");
    assert_eq!(active(&daemon, &org).await, 1);
    run.finish();
    let (code, stderr) = run.exit();
    assert_eq!(code, 7, "{stderr}");
    assert_eq!(active(&daemon, &org).await, 0, "released before run exits");
}

#[tokio::test]
async fn without_a_wait_a_full_quota_exits_20_and_with_one_the_second_run_queues() {
    let daemon = daemon_with_ttl("30000", None).await;
    let org = daemon
        .licensed_organization("queue", 0, 1, &["eve", "bob"])
        .await;
    let mut first = Run::start(&daemon, org.key(0), &[], 0);
    first.started();

    let refused = Run::start(&daemon, org.key(1), &[], 0);
    let (code, stderr) = refused.exit();
    assert_eq!(code, 20, "{stderr}");
    assert!(stderr.contains("quota is full"), "{stderr}");

    let mut second = Run::start(&daemon, org.key(1), &["--wait", "60s"], 3);
    let stderr_lines = second.child.stderr.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr_lines));
    let queued = lines.next().expect("a line").expect("text");
    assert!(queued.contains("position 1 of 1"), "{queued}");
    assert!(!second.has_started(), "no seat while the first holds it");
    first.finish();
    assert_eq!(first.exit().0, 0);
    second.started();
    second.finish();
    assert_eq!(second.exit().0, 3);
}

#[tokio::test]
async fn a_terminated_seat_stops_command_and_exits_21() {
    let daemon = daemon_with_ttl("30000", None).await;
    let org = daemon
        .licensed_organization("lostseat", 0, 1, &["eve"])
        .await;
    let mut run = Run::start(&daemon, org.key(0), &["--grace", "20s"], 0);
    let (lease_id, _) = run.started();
    daemon
        .admin(&org.owner_key)
        .await
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id,
        })
        .await
        .expect("terminate");
    let term = run.report("term");
    run.wait_for(|| term.exists(), "SIGTERM to COMMAND");
    let (code, stderr) = run.exit();
    assert_eq!(code, 21, "{stderr}");
    assert!(stderr.contains("terminated"), "{stderr}");
}

#[tokio::test]
async fn sigterm_to_run_reaches_command_and_the_seat_is_released_after() {
    let daemon = daemon_with_ttl("30000", None).await;
    let org = daemon
        .licensed_organization("signals", 0, 1, &["eve"])
        .await;
    let mut run = Run::start(&daemon, org.key(0), &[], 0);
    run.started();
    run.signal(libc::SIGTERM);
    let term = run.report("term");
    run.wait_for(|| term.exists(), "SIGTERM forwarded to COMMAND");
    let (code, stderr) = run.exit();
    assert_eq!(code, 143, "COMMAND's own status: {stderr}");
    assert_eq!(
        active(&daemon, &org).await,
        0,
        "released after COMMAND exited"
    );
}

#[tokio::test]
async fn command_keeps_running_across_a_daemon_restart_within_the_ttl() {
    let data_dir = tempfile::tempdir().expect("a data directory");
    let daemon = daemon_with_ttl("8000", Some(data_dir.path())).await;
    let org = daemon
        .licensed_organization("survive", 0, 1, &["eve"])
        .await;
    let mut run = Run::start(&daemon, org.key(0), &[], 5);
    let (lease_id, generation) = run.started();
    let addr = daemon.addr();
    daemon.kill();
    let daemon = Serve::new()
        .listen(addr)
        .data_dir(data_dir.path())
        .args(["--lease-ttl-ms", "8000"])
        .start()
        .await;
    // Longer than the TTL: only the re-attached stream's renewals keep the seat.
    tokio::time::sleep(Duration::from_millis(9_000)).await;
    assert!(!run.report("term").exists(), "COMMAND was not disturbed");
    assert!(
        run.child.try_wait().expect("poll").is_none(),
        "run still runs"
    );
    let listed = sessions(&daemon.admin(&org.owner_key).await, &org.id, KRE).await;
    let listed: Vec<(String, u64)> = listed
        .into_iter()
        .map(|lease| (lease.lease_id, lease.generation))
        .collect();
    assert_eq!(listed, [(lease_id, generation)], "the same lease continues");
    run.finish();
    assert_eq!(run.exit().0, 5);
    assert_eq!(active(&daemon, &org).await, 0);
}

#[test]
fn without_a_key_or_a_command_run_is_a_usage_error() {
    let finished = crate::harness::daemon::run(&["run", "--product", "kre", "--", "true"], &[]);
    assert_eq!(finished.code, 64, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("SEATBROKER_KEY"),
        "{}",
        finished.stderr
    );
    let finished = crate::harness::daemon::run(&["run", "--product", "kre"], &[]);
    assert_eq!(finished.code, 2, "COMMAND is required: {}", finished.stderr);
}
