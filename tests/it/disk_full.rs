//! The log when the disk fills up or the process runs out of descriptors, with the
//! real binary: the daemon never aborts, turns read-only (grants and admin changes
//! answer UNAVAILABLE, heartbeats, releases and reads work, health and a metric say
//! so), resumes by itself once the log can reserve room again, and loses nothing it
//! acknowledged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use seatbroker::client::Authorized;
use seatbroker::proto::session_service_client::SessionServiceClient;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Every wait of these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);

/// The daemon of these tests: metrics on, on `data_dir`, with the disk's `envs`.
fn serve(data_dir: &Path, envs: &[(&'static str, String)]) -> Serve {
    let serve = Serve::new()
        .data_dir(data_dir)
        .args(["--metrics-listen", "127.0.0.1:0"]);
    envs.iter()
        .fold(serve, |serve, (name, value)| serve.env(name, value))
}

/// Creates organization `acme` (10 KRE sessions) with one member holding a KRE
/// license; returns the member's key.
async fn provision(daemon: &Daemon) -> String {
    let org = daemon.organization("acme", 0, 10, &["engine"]).await;
    org.assign(daemon, KRE, org.emails()).await.expect("assign");
    org.key(0).to_owned()
}

#[track_caller]
fn assert_disk_full(result: Result<impl std::fmt::Debug, tonic::Status>) {
    assert_status(result, Code::Unavailable, "disk full");
}

/// A disk that can be filled and freed: a tmpfs of a few MiB mounted for one test
/// (unmounted when dropped), or where mounting is not permitted (not root), the
/// `failpoints` build's simulated full disk (writing zeros ahead and creating files
/// in the WAL fail with ENOSPC while a marker file exists).
struct SmallDisk {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl SmallDisk {
    /// `None` where neither is possible. `DISK_FULL_TEST_NO_MOUNT=1` picks the
    /// failpoint even as root.
    fn new(size_mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("mount point");
        let mounted = std::env::var_os("DISK_FULL_TEST_NO_MOUNT").is_none()
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
                .arg(dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
        (mounted || cfg!(feature = "failpoints")).then_some(SmallDisk { dir, mounted })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }

    /// What the daemon needs to see this disk fill up.
    fn envs(&self) -> Vec<(&'static str, String)> {
        if self.mounted {
            return Vec::new();
        }
        let marker = self.filler().to_string_lossy().into_owned();
        vec![("SEATBROKER_FAILPOINT_WAL_DISK_FULL_WHILE", marker)]
    }

    /// Leaves no byte free (or sets the marker).
    fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).expect("create the filler");
        if !self.mounted {
            return;
        }
        for chunk in [64 * 1024, 4096, 512, 1] {
            let zeros = vec![0u8; chunk];
            while file.write_all(&zeros).is_ok() {}
        }
        let _ = file.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Acquires and releases until an acquire is refused; returns the refusal.
async fn churn_until_refused(engine: &mut SessionServiceClient<Authorized>) -> tonic::Status {
    for _ in 0..20_000 {
        let lease = match engine.acquire(acquire_request(KRE, "churn")).await {
            Ok(granted) => granted.into_inner().lease.unwrap(),
            Err(status) => return status,
        };
        release(engine, &lease).await.expect("release");
    }
    panic!("the log never ran out of room");
}

#[tokio::test]
async fn a_full_disk_makes_the_daemon_read_only_across_a_restart_and_it_resumes_when_space_returns()
{
    let Some(disk) = SmallDisk::new(8) else {
        eprintln!("skipped: mounting a tmpfs needs root, or build with --features failpoints");
        return;
    };
    let mut daemon = serve(&disk.data_dir(), &disk.envs()).start().await;
    let mut operator = daemon.operator().await;
    let key = provision(&daemon).await;
    let mut engine = daemon.session(&key).await;
    let held = acquire_lease(&mut engine, KRE, "held").await;
    let to_release = acquire_lease(&mut engine, KRE, "to-release").await;

    disk.fill();
    // Grants go on into the room the log reserved, until it cannot reserve more.
    let refused = churn_until_refused(&mut engine).await;
    assert_disk_full(Err::<(), _>(refused));
    // Read-only: grants and admin changes refused; heartbeats, releases, reads work.
    assert_disk_full(engine.acquire(acquire_request(KRE, "new")).await);
    assert_disk_full(add_member(&mut operator, "acme", "late@acme.test").await);
    heartbeat(&mut engine, &held).await.expect("heartbeat");
    release(&mut engine, &to_release)
        .await
        .expect("release while the disk is full");
    assert!(
        member_emails(&operator, "acme")
            .await
            .contains(&"engine@acme.test".to_string())
    );
    daemon.wait_health("", ServingStatus::NotServing).await;
    daemon
        .wait_health(ADMIN_SERVICE, ServingStatus::NotServing)
        .await;
    assert_eq!(daemon.health(SESSION_SERVICE).await, ServingStatus::Serving);
    assert!(daemon.scrape().contains("seatbroker_disk_full 1"));
    daemon.assert_alive();

    // A restart on the still-full disk comes up read-only rather than crash-looping.
    daemon.kill();
    // Ready for sessions; the whole server stays NOT_SERVING while the disk is full.
    let mut daemon = serve(&disk.data_dir(), &disk.envs()).spawn();
    daemon
        .wait_health(SESSION_SERVICE, ServingStatus::Serving)
        .await;
    let mut engine = daemon.session(&key).await;
    heartbeat(&mut engine, &held)
        .await
        .expect("the held lease was recovered and heartbeats work");
    // What is left of the room reserved before the restart (if any) is used, then
    // grants are refused again.
    assert_disk_full(Err::<(), _>(churn_until_refused(&mut engine).await));
    assert_disk_full(engine.acquire(acquire_request(KRE, "new")).await);
    daemon.wait_health("", ServingStatus::NotServing).await;
    let deadline = Instant::now() + DEADLINE;
    while !daemon.scrape().contains("seatbroker_disk_full 1") {
        assert!(Instant::now() < deadline, "the metric never said disk full");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.assert_alive();

    // Space returns: the daemon resumes by itself.
    disk.free();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match engine.acquire(acquire_request(KRE, "new")).await {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "grants never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut operator = daemon.operator().await;
    add_member(&mut operator, "acme", "late@acme.test")
        .await
        .expect("admin changes resume");
    daemon.wait_health("", ServingStatus::Serving).await;
    assert!(daemon.scrape().contains("seatbroker_disk_full 0"));
    daemon.assert_alive();
}

/// Segments this small rotate every few dozen records.
#[cfg(feature = "failpoints")]
const SEGMENT_BYTES: &str = "16384";
/// The daemon's descriptor limit in the test below.
#[cfg(feature = "failpoints")]
const DESCRIPTORS_MAX: u32 = 256;

#[cfg(feature = "failpoints")]
fn wal_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("wal"))
        .expect("the WAL directory")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_rotation_under_descriptor_exhaustion_does_not_abort_and_loses_nothing() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut daemon = Serve::new()
        .data_dir(data_dir.path())
        .descriptors_max(DESCRIPTORS_MAX)
        .env("SEATBROKER_FAILPOINT_WAL_SEGMENT_BYTES", SEGMENT_BYTES)
        .start()
        .await;
    // Connected before the descriptors run out, and kept.
    let mut operator = daemon.operator().await;
    provision(&daemon).await;
    let mut acknowledged = Vec::new();
    let mut write = 0;
    // Past half of a segment the log opens the next one ahead of time.
    while !wal_files(data_dir.path())
        .iter()
        .any(|f| f.starts_with("next-segment"))
    {
        assert!(write < 1000, "no segment was opened ahead");
        let email = format!("m{write}@acme.test");
        add_member(&mut operator, "acme", &email)
            .await
            .expect("add member");
        acknowledged.push(email);
        write += 1;
    }
    let segments_before = wal_files(data_dir.path())
        .iter()
        .filter(|f| f.ends_with(".wal"))
        .count();

    // Every descriptor number below the daemon's soft limit is taken: the limit is
    // lowered (from outside, as `prlimit` does) to the lowest free descriptor. Silent
    // client sockets cannot do this any more: the daemon keeps its connections 128
    // descriptors below its limit.
    daemon.set_soft_descriptor_limit(daemon.lowest_free_descriptor());
    // Writes under pressure: the rotation uses the segment opened ahead; when the
    // next one cannot be opened, writes are refused with UNAVAILABLE, never an abort.
    let mut refusals = 0;
    for _ in 0..1000 {
        let email = format!("m{write}@acme.test");
        write += 1;
        match add_member(&mut operator, "acme", &email).await {
            Ok(_) => acknowledged.push(email),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains("Too many open files"),
                    "{status:?}"
                );
                refusals += 1;
                if refusals >= 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    daemon.assert_alive();
    eprintln!(
        "{refusals} writes refused under descriptor exhaustion; {} descriptors held; files {:?}",
        daemon.held_descriptors().len(),
        wal_files(data_dir.path())
    );
    let segments_after = wal_files(data_dir.path())
        .iter()
        .filter(|f| f.ends_with(".wal"))
        .count();
    assert!(
        segments_after > segments_before,
        "a rotation happened under pressure ({segments_before} -> {segments_after} segments)"
    );

    // The pressure goes: writes resume by themselves.
    daemon.set_soft_descriptor_limit(DESCRIPTORS_MAX.into());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let email = format!("m{write}@acme.test");
        write += 1;
        match add_member(&mut operator, "acme", &email).await {
            Ok(_) => {
                acknowledged.push(email);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.assert_alive();

    // Everything acknowledged survives a kill and a restart.
    daemon.kill();
    let daemon = Serve::new().data_dir(data_dir.path()).start().await;
    let members = member_emails(&daemon.operator().await, "acme").await;
    for email in &acknowledged {
        assert!(members.contains(email), "acknowledged {email} was lost");
    }
}
