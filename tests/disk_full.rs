//! The log when the disk fills up or the process runs out of descriptors, with the
//! real binary: the daemon never aborts, turns read-only (grants and admin changes
//! answer UNAVAILABLE, heartbeats, releases and reads work, health and a metric say
//! so), resumes by itself once the log can reserve room again, and loses nothing it
//! acknowledged.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{KRE, OPERATOR_KEY, acquire_request};
use seatbroker::client::{self, Authorized, BearerKey};
use seatbroker::proto::{
    self, admin_service_client::AdminServiceClient, session_service_client::SessionServiceClient,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SESSIONS: &str = "seatbroker.v1.SessionService";
const ADMIN: &str = "seatbroker.v1.AdminService";
/// Every wait of these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);

/// The real binary, started through `sh` so that a descriptor limit can be set first.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl Daemon {
    fn spawn(data_dir: &Path, descriptors_max: Option<u32>, envs: &[(&str, &str)]) -> Daemon {
        let limit = descriptors_max.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(common::daemon::BINARY)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY)
            .env("SEATBROKER_LOG", "warn,seatbroker=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start the daemon");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, serving) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = serving.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not start");
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &json["fields"];
            if fields["message"] == "seatbroker serving" {
                // Keep draining its log so that it never blocks on a full pipe.
                std::thread::spawn(move || for _ in serving {});
                return Daemon {
                    child,
                    addr: fields["addr"].as_str().unwrap().parse().unwrap(),
                    metrics_addr: fields["metrics_addr"].as_str().unwrap().parse().unwrap(),
                };
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn assert_alive(&mut self) {
        let status = self.child.try_wait().expect("wait");
        assert!(status.is_none(), "the daemon exited: {status:?}");
    }

    /// Descriptors the daemon holds now.
    #[cfg(feature = "failpoints")]
    /// The lowest descriptor number the daemon does not hold.
    #[cfg(feature = "failpoints")]
    fn lowest_free_descriptor(&self) -> u64 {
        let held: std::collections::BTreeSet<u64> =
            std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
                .expect("the daemon's descriptors")
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect();
        (0..).find(|fd| !held.contains(fd)).expect("a free number")
    }

    #[cfg(feature = "failpoints")]
    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    fn scrape(&self) -> String {
        let mut stream = TcpStream::connect(self.metrics_addr).expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    async fn channel(&self) -> tonic::transport::Channel {
        client::connect(&self.url()).await.expect("connect")
    }

    async fn health(&self, service: &str) -> i32 {
        let mut health = HealthClient::new(self.channel().await);
        let request = HealthCheckRequest {
            service: service.into(),
        };
        health
            .check(request)
            .await
            .expect("health")
            .into_inner()
            .status
    }

    /// Waits until health reports `status` for `service`.
    async fn wait_health(&self, service: &str, status: ServingStatus) {
        let deadline = Instant::now() + DEADLINE;
        while self.health(service).await != status as i32 {
            assert!(
                Instant::now() < deadline,
                "{service:?} never became {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn admin(&self, key: &str) -> AdminServiceClient<Authorized> {
        client::admin(self.channel().await, BearerKey::new(Some(key)).unwrap())
    }

    async fn session(&self, key: &str) -> SessionServiceClient<Authorized> {
        client::session(self.channel().await, BearerKey::new(Some(key)).unwrap())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates organization `acme` (10 KRE sessions) with one member holding a KRE
/// license; returns the member's key.
async fn provision(admin: &mut AdminServiceClient<Authorized>) -> String {
    admin
        .create_organization(proto::CreateOrganizationRequest {
            org_id: "acme".into(),
            display_name: "Acme".into(),
            owner_email: "owner@acme.test".into(),
            quota: Some(proto::Quota {
                kse_seats: 0,
                kre_sessions: 10,
                expires_at_unix_ms: 0,
            }),
        })
        .await
        .expect("create organization");
    add_member(admin, "engine@acme.test")
        .await
        .expect("add member");
    admin
        .assign_licenses(proto::AssignLicensesRequest {
            org_id: "acme".into(),
            product: KRE,
            emails: vec!["engine@acme.test".into()],
        })
        .await
        .expect("assign");
    common::create_key(admin, "acme", "engine@acme.test").await
}

async fn add_member(
    admin: &mut AdminServiceClient<Authorized>,
    email: &str,
) -> Result<(), tonic::Status> {
    admin
        .add_member(proto::AddMemberRequest {
            org_id: "acme".into(),
            email: email.into(),
            role: 0,
        })
        .await
        .map(|_| ())
}

async fn members(admin: &mut AdminServiceClient<Authorized>) -> Vec<String> {
    let mut emails = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_members(proto::ListMembersRequest {
                org_id: "acme".into(),
                page_token,
                ..Default::default()
            })
            .await
            .expect("list members")
            .into_inner();
        emails.extend(page.members.into_iter().map(|m| m.email));
        if page.next_page_token.is_empty() {
            return emails;
        }
        page_token = page.next_page_token;
    }
}

async fn heartbeat(
    engine: &mut SessionServiceClient<Authorized>,
    lease: &proto::Lease,
) -> Result<(), tonic::Status> {
    engine
        .heartbeat(proto::HeartbeatRequest {
            lease_id: lease.lease_id.clone(),
            generation: lease.generation,
        })
        .await
        .map(|_| ())
}

#[track_caller]
fn assert_disk_full(result: Result<impl std::fmt::Debug, tonic::Status>) {
    common::assert_status(result, Code::Unavailable, "disk full");
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
        engine
            .release(proto::ReleaseRequest {
                lease_id: lease.lease_id,
                generation: lease.generation,
            })
            .await
            .expect("release");
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
    let envs = disk.envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut daemon = Daemon::spawn(&disk.data_dir(), None, &envs);
    daemon.wait_health("", ServingStatus::Serving).await;
    let mut operator = daemon.admin(OPERATOR_KEY).await;
    let key = provision(&mut operator).await;
    let mut engine = daemon.session(&key).await;
    let held = common::acquire_lease(&mut engine, KRE, "held").await;
    let to_release = common::acquire_lease(&mut engine, KRE, "to-release").await;

    disk.fill();
    // Grants go on into the room the log reserved, until it cannot reserve more.
    let refused = churn_until_refused(&mut engine).await;
    assert_disk_full(Err::<(), _>(refused));
    // Read-only: grants and admin changes refused; heartbeats, releases, reads work.
    assert_disk_full(engine.acquire(acquire_request(KRE, "new")).await);
    assert_disk_full(add_member(&mut operator, "late@acme.test").await);
    heartbeat(&mut engine, &held).await.expect("heartbeat");
    engine
        .release(proto::ReleaseRequest {
            lease_id: to_release.lease_id.clone(),
            generation: to_release.generation,
        })
        .await
        .expect("release while the disk is full");
    assert!(
        members(&mut operator)
            .await
            .contains(&"engine@acme.test".to_string())
    );
    daemon.wait_health("", ServingStatus::NotServing).await;
    daemon.wait_health(ADMIN, ServingStatus::NotServing).await;
    assert_eq!(daemon.health(SESSIONS).await, ServingStatus::Serving as i32);
    assert!(daemon.scrape().contains("seatbroker_disk_full 1"));
    daemon.assert_alive();

    // A restart on the still-full disk comes up read-only rather than crash-looping.
    daemon.kill();
    let mut daemon = Daemon::spawn(&disk.data_dir(), None, &envs);
    daemon.wait_health(SESSIONS, ServingStatus::Serving).await;
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
    let mut operator = daemon.admin(OPERATOR_KEY).await;
    add_member(&mut operator, "late@acme.test")
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
    let segment_bytes = [("SEATBROKER_FAILPOINT_WAL_SEGMENT_BYTES", SEGMENT_BYTES)];
    let mut daemon = Daemon::spawn(data_dir.path(), Some(DESCRIPTORS_MAX), &segment_bytes);
    daemon.wait_health("", ServingStatus::Serving).await;
    // Connected before the descriptors run out, and kept.
    let mut operator = daemon.admin(OPERATOR_KEY).await;
    provision(&mut operator).await;
    let mut acknowledged = Vec::new();
    let mut write = 0;
    // Past half of a segment the log opens the next one ahead of time.
    while !wal_files(data_dir.path())
        .iter()
        .any(|f| f.starts_with("next-segment"))
    {
        assert!(write < 1000, "no segment was opened ahead");
        let email = format!("m{write}@acme.test");
        add_member(&mut operator, &email).await.expect("add member");
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
    let lowest_free = daemon.lowest_free_descriptor();
    set_soft_descriptor_limit(daemon.child.id(), lowest_free);
    // Writes under pressure: the rotation uses the segment opened ahead; when the
    // next one cannot be opened, writes are refused with UNAVAILABLE, never an abort.
    let mut refusals = 0;
    for _ in 0..1000 {
        let email = format!("m{write}@acme.test");
        write += 1;
        match add_member(&mut operator, &email).await {
            Ok(()) => acknowledged.push(email),
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
        daemon.descriptors(),
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
    set_soft_descriptor_limit(daemon.child.id(), DESCRIPTORS_MAX as u64);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let email = format!("m{write}@acme.test");
        write += 1;
        match add_member(&mut operator, &email).await {
            Ok(()) => {
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
    let daemon = Daemon::spawn(data_dir.path(), None, &[]);
    daemon.wait_health("", ServingStatus::Serving).await;
    let members = members(&mut daemon.admin(OPERATOR_KEY).await).await;
    for email in &acknowledged {
        assert!(members.contains(email), "acknowledged {email} was lost");
    }
}

/// Sets the soft descriptor limit of process `pid`, keeping its hard limit (so it can
/// be raised back without privileges).
#[cfg(feature = "failpoints")]
fn set_soft_descriptor_limit(pid: u32, soft: u64) {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = pid as libc::pid_t;
    // SAFETY: plain system calls on valid pointers to local structs.
    let read = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut current) };
    assert_eq!(
        read,
        0,
        "prlimit (read): {}",
        std::io::Error::last_os_error()
    );
    let wanted = libc::rlimit {
        rlim_cur: soft,
        rlim_max: current.rlim_max,
    };
    // SAFETY: as above.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &wanted, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit (set): {}", std::io::Error::last_os_error());
}
