//! The data directory as two careless operators would treat it, with the real binary:
//! a second daemon on a directory in use is refused (exit 75) while the first keeps
//! serving, and a lock left by a stopped daemon does not block; a used directory that
//! lost its operator key file refuses to start (exit 78) until the key is rotated
//! explicitly, and rotation keeps the state and retires the old key.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon;
use common::{OPERATOR_KEY, assert_status, wait_until_serving};
use seatbroker::client::{self, BearerKey};
use seatbroker::proto;

/// How long a start or a stop may take, at most.
const DEADLINE: Duration = Duration::from_secs(30);
const EXIT_DATA_DIR_LOCKED: i32 = 75;
const EXIT_OPERATOR_KEY_MISSING: i32 = 78;

/// `seatbroker serve` on a given data directory, its output collected line by line.
struct Serve {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout_lines: mpsc::Receiver<String>,
}

/// Starts `seatbroker serve` on `data_dir`, with `SEATBROKER_OPERATOR_KEY` set to
/// `operator_key` when given; does not wait.
fn spawn_serve(data_dir: &Path, operator_key: Option<&str>) -> Serve {
    let mut command = daemon::command();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("SEATBROKER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(key) = operator_key {
        command.env("SEATBROKER_OPERATOR_KEY", key);
    }
    let mut child = command.spawn().expect("start the seatbroker binary");
    let (stdout_sender, stdout_lines) = mpsc::channel();
    let stdout = collect(child.stdout.take().unwrap(), Some(stdout_sender));
    let stderr = collect(child.stderr.take().unwrap(), None);
    Serve {
        child,
        stdout,
        stderr,
        stdout_lines,
    }
}

fn collect(
    pipe: impl std::io::Read + Send + 'static,
    lines: Option<mpsc::Sender<String>>,
) -> Arc<Mutex<Vec<String>>> {
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&collected);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line.clone());
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    });
    collected
}

impl Serve {
    /// Waits for the "listening on" line, and for the printed operator key when
    /// `expect_generated_key`; then for health SERVING.
    async fn serving(&self, expect_generated_key: bool) -> (SocketAddr, Option<String>) {
        let until = Instant::now() + DEADLINE;
        let mut addr = None;
        let mut key = None;
        while addr.is_none() || (expect_generated_key && key.is_none()) {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = self.stdout_lines.recv_timeout(left) else {
                panic!("the daemon did not start; stderr:\n{}", self.stderr());
            };
            if let Some(text) = line.strip_prefix("seatbroker listening on ") {
                addr = Some(text.parse().expect("an address"));
            } else if line.trim().starts_with("sbo_") {
                key = Some(line.trim().to_string());
            }
        }
        let addr = addr.unwrap();
        wait_until_serving(&format!("http://{addr}"), &Default::default()).await;
        (addr, key)
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Waits up to [`DEADLINE`] for the process to exit; kills it and fails if not.
    fn exit_status(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return status;
            }
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the daemon did not exit within {DEADLINE:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (0 for a clean stop).
    fn stop(&mut self) -> ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.exit_status()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `seatbroker operator-key rotate --data-dir DIR`: (exit code, stdout, stderr).
fn rotate(data_dir: &Path) -> (i32, String, String) {
    let output = daemon::command()
        .args(["operator-key", "rotate", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run the seatbroker binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn admin(
    addr: SocketAddr,
    key: &str,
) -> proto::admin_service_client::AdminServiceClient<client::Authorized> {
    let channel = client::connect(&format!("http://{addr}"))
        .await
        .expect("connect");
    client::admin(channel, BearerKey::new(Some(key)).unwrap())
}

async fn create_org(addr: SocketAddr, key: &str, org: &str) {
    admin(addr, key)
        .await
        .create_organization(proto::CreateOrganizationRequest {
            org_id: org.into(),
            display_name: format!("{org} Inc."),
            owner_email: format!("owner@{org}.test"),
            quota: Some(proto::Quota {
                kse_seats: 1,
                kre_sessions: 1,
                expires_at_unix_ms: 0,
            }),
        })
        .await
        .unwrap_or_else(|status| panic!("create {org}: {status:?}"));
}

async fn org_ids(addr: SocketAddr, key: &str) -> Result<Vec<String>, tonic::Status> {
    let answer = admin(addr, key)
        .await
        .list_organizations(proto::ListOrganizationsRequest::default())
        .await?;
    let mut ids: Vec<String> = answer
        .into_inner()
        .organizations
        .into_iter()
        .map(|org| org.org_id)
        .collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_data_directory_in_use_exits_75_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_serve(dir.path(), Some(OPERATOR_KEY));
    let (first_addr, _) = first.serving(false).await;
    create_org(first_addr, OPERATOR_KEY, "before").await;

    let mut second = spawn_serve(dir.path(), Some(OPERATOR_KEY));
    let status = second.exit_status();
    assert_eq!(
        status.code(),
        Some(EXIT_DATA_DIR_LOCKED),
        "{}",
        second.stderr()
    );
    let message = second.stderr();
    assert!(
        message.contains(&dir.path().display().to_string())
            && message.contains(&format!("pid {}", first.child.id()))
            && message.contains("in use by another seatbroker process"),
        "the refusal names the directory and the holder: {message}"
    );

    // The first daemon never noticed: it serves, and its data is whole.
    create_org(first_addr, OPERATOR_KEY, "after").await;
    assert_eq!(
        org_ids(first_addr, OPERATOR_KEY).await.unwrap(),
        ["after", "before"]
    );
    assert!(first.stop().success(), "{}", first.stderr());

    // The LOCK file still names the stopped daemon; it does not block a new one.
    let lock = std::fs::read_to_string(dir.path().join("LOCK")).unwrap();
    assert_eq!(lock.trim(), first.child.id().to_string());
    let mut third = spawn_serve(dir.path(), Some(OPERATOR_KEY));
    let (third_addr, _) = third.serving(false).await;
    assert_eq!(
        org_ids(third_addr, OPERATOR_KEY).await.unwrap(),
        ["after", "before"]
    );
    assert!(third.stop().success(), "{}", third.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_data_directory_without_its_operator_key_file_starts_only_after_an_explicit_rotation()
 {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("operator-key.sha256");

    // A fresh directory: the key is made and printed once, as on a first start.
    let mut first = spawn_serve(dir.path(), None);
    let (addr, old_key) = first.serving(true).await;
    let old_key = old_key.expect("a generated operator key");
    create_org(addr, &old_key, "kept").await;
    assert!(first.stop().success(), "{}", first.stderr());

    // The key file is lost: no silent new key, a refusal that says what to do.
    std::fs::remove_file(&key_file).unwrap();
    let mut refused = spawn_serve(dir.path(), None);
    let status = refused.exit_status();
    assert_eq!(
        status.code(),
        Some(EXIT_OPERATOR_KEY_MISSING),
        "{}",
        refused.stderr()
    );
    let message = refused.stderr();
    assert!(
        message.contains(&format!(
            "seatbroker operator-key rotate --data-dir {}",
            dir.path().display()
        )) && message.contains("SEATBROKER_OPERATOR_KEY"),
        "the refusal says how to proceed: {message}"
    );
    assert!(!refused.stdout().contains("sbo_"), "no key was printed");
    assert!(!key_file.exists(), "no key file was made");

    // An explicit rotation makes a new key; the state is intact and the old key is dead.
    let (code, stdout, stderr) = rotate(dir.path());
    assert_eq!(code, 0, "{stderr}");
    let new_key = stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("sbo_"))
        .expect("the new key is printed")
        .to_string();
    assert_ne!(new_key, old_key);
    let mut second = spawn_serve(dir.path(), None);
    let (addr, printed) = second.serving(false).await;
    assert_eq!(printed, None);
    assert_eq!(org_ids(addr, &new_key).await.unwrap(), ["kept"]);
    assert_status(
        org_ids(addr, &old_key).await,
        tonic::Code::Unauthenticated,
        "",
    );

    // Rotation is refused while a daemon holds the directory, and changes nothing.
    let hash_before = std::fs::read(&key_file).unwrap();
    let (code, _, stderr) = rotate(dir.path());
    assert_eq!(code, EXIT_DATA_DIR_LOCKED, "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", second.child.id())),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), hash_before);
    assert_eq!(org_ids(addr, &new_key).await.unwrap(), ["kept"]);
    assert!(second.stop().success(), "{}", second.stderr());
}
