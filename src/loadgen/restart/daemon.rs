//! The daemon the restart bench owns: this very binary's `serve` as a child process on
//! a loopback port and the bench's data directory. The bench knows it only from
//! outside, as an operator would: health over gRPC, its memory and CPU from `/proc`,
//! `/metrics`, and the figures its JSON log gives. It is stopped with SIGKILL by the
//! process id the bench started, and killed when dropped (an error anywhere).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::super::bounds::{
    DAEMON_EXIT_MS_MAX, DAEMON_LISTEN_MS_MAX, DAEMON_LOG_LINES_MAX, DAEMON_SERVING_MS_MAX,
    HEALTH_CHECK_MS_MAX, HEALTH_POLL_MS, METRICS_RESPONSE_BYTES_MAX, METRICS_SCRAPE_MS_MAX,
};
use super::super::channels::lazy_plaintext;
use super::super::error::LoadgenError;

/// The daemon's log: warnings, plus the info lines of the two modules whose lines
/// carry figures (recovery and snapshots in `server`, the serving line in `cli`).
/// Every other module stays at `warn`, so no call opens a tracing span.
const LOG_FILTER: &str = "warn,seatbroker::server=info,seatbroker::cli=info";
/// The first line the daemon prints on stdout once its socket is bound.
const LISTENING_PREFIX: &str = "seatbroker listening on ";
/// The environment variable the daemon reads its operator key from.
const OPERATOR_KEY_ENV: &str = "SEATBROKER_OPERATOR_KEY";

/// How to start the daemon; the same for its first start and its restart.
pub(crate) struct DaemonSpec {
    /// The data directory, kept across the restart.
    pub data_dir: PathBuf,
    /// `--lease-ttl-ms`.
    pub lease_ttl_ms: u32,
    /// The operator key, passed in the environment (never on the command line).
    pub operator_key: String,
    /// More `serve` flags from the bench's command line.
    pub extra_args: Vec<String>,
    /// The binary to run (`None`: this one).
    pub binary: Option<PathBuf>,
}

/// A running daemon the bench started.
pub(crate) struct Daemon {
    /// Killed on drop (`kill_on_drop`), so no error path leaves it running.
    child: Child,
    pid: u32,
    /// The gRPC address it listens on.
    pub addr: SocketAddr,
    /// When it was spawned: the origin of the times to listening and to SERVING.
    spawned_at: Instant,
    /// From spawning to the listening line on stdout.
    pub listening_after: Duration,
    /// What its log said so far; filled by a task reading its stderr.
    log: Arc<Mutex<DaemonLog>>,
}

/// The figures the daemon's log gives, and its last lines for error messages.
#[derive(Default)]
struct DaemonLog {
    /// The last `DAEMON_LOG_LINES_MAX` lines.
    tail: VecDeque<String>,
    recovery: Option<RecoveryLine>,
    snapshots: SnapshotLines,
    metrics_addr: Option<SocketAddr>,
}

/// The daemon's "recovered the data directory" line.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryLine {
    /// Loading the snapshot and replaying the log, as the daemon timed it.
    pub millis: u64,
    /// Log records replayed after the snapshot.
    pub records: u64,
    /// Leases live after recovery.
    pub live_leases: u64,
}

/// The daemon's "snapshot written" lines since it started.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotLines {
    /// Snapshots written.
    pub count: u64,
    /// Their time, in all.
    pub millis: u64,
    /// The last one's size.
    pub last_bytes: u64,
}

/// Resident memory of the daemon, from `/proc/PID/status`.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// VmRSS, MiB.
    pub rss_mib: f64,
    /// VmHWM: the highest resident size since the process started, MiB.
    pub hwm_mib: f64,
}

/// The figures read from `/metrics`; `None` where a series was absent.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct MetricsSample {
    /// `seatbroker_active_sessions{product="kre"}`.
    pub active_kre_sessions: Option<f64>,
    /// `seatbroker_wal_recovery_seconds`.
    pub recovery_seconds: Option<f64>,
    /// `seatbroker_wal_recovery_records`.
    pub recovery_records: Option<f64>,
}

/// Files and bytes under one entry of the data directory.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUse {
    /// Files, counted recursively.
    pub files: u64,
    /// Their sizes, in all.
    pub bytes: u64,
}

impl Daemon {
    /// Spawns `serve` on `listen` (port 0 for any) and waits for its listening line.
    pub(crate) async fn start(spec: &DaemonSpec, listen: SocketAddr) -> Result<Self, LoadgenError> {
        let exe = match &spec.binary {
            Some(binary) => binary.clone(),
            None => std::env::current_exe()
                .map_err(|e| LoadgenError::Daemon(format!("cannot find this binary: {e}")))?,
        };
        let mut command = Command::new(exe);
        // The daemon's settings are the bench's alone: none of this shell's.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SEATBROKER_") {
                command.env_remove(name);
            }
        }
        command
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--lease-ttl-ms", &spec.lease_ttl_ms.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(&spec.extra_args)
            .env(OPERATOR_KEY_ENV, &spec.operator_key)
            .env("SEATBROKER_LOG", LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| LoadgenError::Daemon(format!("cannot start `serve`: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| LoadgenError::Daemon("the daemon exited at once".to_owned()))?;
        let log = Arc::new(Mutex::new(DaemonLog::default()));
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect_log(stderr, Arc::clone(&log)));
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LoadgenError::Daemon("the daemon's stdout is not piped".to_owned()))?;
        let listened = tokio::time::timeout(
            Duration::from_millis(DAEMON_LISTEN_MS_MAX),
            listening_address(stdout),
        )
        .await;
        let mut daemon = Self {
            child,
            pid,
            addr: listen,
            spawned_at,
            listening_after: spawned_at.elapsed(),
            log,
        };
        match listened {
            Ok(Some(addr)) => {
                daemon.addr = addr;
                Ok(daemon)
            }
            Ok(None) => Err(daemon.failure("exited before listening").await),
            Err(_) => Err(daemon.failure("did not listen in time").await),
        }
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://ADDR` of its gRPC socket.
    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Polls health until SERVING and returns the time from the spawn. A daemon that
    /// exits or takes longer than `DAEMON_SERVING_MS_MAX` is an error.
    pub(crate) async fn wait_serving(&mut self) -> Result<Duration, LoadgenError> {
        let deadline = self.spawned_at + Duration::from_millis(DAEMON_SERVING_MS_MAX);
        // Lazy: a refused or broken connection is retried at the next check.
        let mut health = HealthClient::new(lazy_plaintext(&self.uri())?);
        loop {
            if self.exited() {
                return Err(self.failure("exited before SERVING").await);
            }
            let check = health.check(HealthCheckRequest {
                service: String::new(),
            });
            let answer =
                tokio::time::timeout(Duration::from_millis(HEALTH_CHECK_MS_MAX), check).await;
            let serving = matches!(answer, Ok(Ok(response))
                if response.get_ref().status == ServingStatus::Serving as i32);
            if serving {
                return Ok(self.spawned_at.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(self.failure("did not report SERVING in time").await);
            }
            tokio::time::sleep(Duration::from_millis(HEALTH_POLL_MS)).await;
        }
    }

    /// VmRSS and VmHWM now.
    pub(crate) fn memory(&self) -> Result<Memory, LoadgenError> {
        let status = self
            .process()?
            .status()
            .map_err(|e| LoadgenError::Daemon(format!("reading /proc/{}/status: {e}", self.pid)))?;
        let mib = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
        Ok(Memory {
            rss_mib: mib(status.vmrss),
            hwm_mib: mib(status.vmhwm),
        })
    }

    /// CPU seconds (user and system, all threads) the daemon used since it started.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        super::super::cpu::cpu_seconds(&self.process().ok()?)
    }

    fn process(&self) -> Result<procfs::process::Process, LoadgenError> {
        let pid = i32::try_from(self.pid)
            .map_err(|_| LoadgenError::Daemon(format!("process id {} out of range", self.pid)))?;
        procfs::process::Process::new(pid)
            .map_err(|e| LoadgenError::Daemon(format!("reading /proc/{pid}: {e}")))
    }

    /// The recovery line of the log, once it was written.
    pub(crate) fn recovery_line(&self) -> Option<RecoveryLine> {
        self.lock_log().recovery
    }

    /// The snapshot lines of the log so far.
    pub(crate) fn snapshot_lines(&self) -> SnapshotLines {
        self.lock_log().snapshots
    }

    /// Reads `/metrics`, when the serving line named its listener; `None` otherwise.
    pub(crate) async fn scrape(&self) -> Option<MetricsSample> {
        let addr = self.lock_log().metrics_addr?;
        let scrape = tokio::time::timeout(
            Duration::from_millis(METRICS_SCRAPE_MS_MAX),
            get_metrics(addr),
        );
        let text = scrape.await.ok()?.ok()?;
        Some(MetricsSample::parse(&text))
    }

    /// SIGKILL (no chance to flush anything), then waits for the exit.
    pub(crate) async fn kill(mut self) -> Result<(), LoadgenError> {
        // `start_kill` sends SIGKILL to this child's pid, the process the bench started.
        self.child
            .start_kill()
            .map_err(|e| LoadgenError::Daemon(format!("SIGKILL to pid {}: {e}", self.pid)))?;
        tokio::time::timeout(Duration::from_millis(DAEMON_EXIT_MS_MAX), self.child.wait())
            .await
            .map_err(|_| LoadgenError::Daemon(format!("pid {} outlived SIGKILL", self.pid)))?
            .map_err(|e| LoadgenError::Daemon(format!("waiting for pid {}: {e}", self.pid)))?;
        Ok(())
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// An error naming what went wrong, the exit status if it exited, and its last lines.
    async fn failure(&mut self, what: &str) -> LoadgenError {
        // Its stderr may still hold the lines that explain the exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        };
        let tail: Vec<String> = self.lock_log().tail.iter().cloned().collect();
        LoadgenError::Daemon(format!(
            "pid {} {what}{status}; its last log lines:\n{}",
            self.pid,
            tail.join("\n")
        ))
    }

    fn lock_log(&self) -> std::sync::MutexGuard<'_, DaemonLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reads stdout until the listening line and returns its address (`None` at EOF:
/// the daemon exited), then keeps draining stdout so the daemon never blocks on it.
async fn listening_address(stdout: ChildStdout) -> Option<SocketAddr> {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
            let addr = addr.trim().parse().ok();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return addr;
        }
    }
    None
}

/// Reads the daemon's JSON log lines until it exits, keeping its figures and its tail.
async fn collect_log(stderr: tokio::process::ChildStderr, log: Arc<Mutex<DaemonLog>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.read_line(&line);
        if log.tail.len() == DAEMON_LOG_LINES_MAX {
            log.tail.pop_front();
        }
        log.tail.push_back(line);
    }
}

impl DaemonLog {
    /// Takes the figures of the lines it knows; any other line is only kept in the tail.
    fn read_line(&mut self, line: &str) {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let fields = &json["fields"];
        let number = |name: &str| fields[name].as_u64().unwrap_or(0);
        match fields["message"].as_str() {
            Some("recovered the data directory") => {
                self.recovery = Some(RecoveryLine {
                    millis: number("millis"),
                    records: number("records"),
                    live_leases: number("live_leases"),
                });
            }
            Some("snapshot written") => {
                self.snapshots.count += 1;
                self.snapshots.millis += number("millis");
                self.snapshots.last_bytes = number("bytes");
            }
            Some("seatbroker serving") => {
                self.metrics_addr = fields["metrics_addr"]
                    .as_str()
                    .and_then(|addr| addr.parse().ok());
            }
            _ => {}
        }
    }
}

/// `GET /metrics` over HTTP/1.1, the body at most `METRICS_RESPONSE_BYTES_MAX`.
async fn get_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream
        .take(METRICS_RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

impl MetricsSample {
    /// Reads the series it knows from the Prometheus text format.
    fn parse(text: &str) -> Self {
        let mut sample = Self::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            match name {
                "seatbroker_active_sessions" if labels.contains("product=\"kre\"") => {
                    sample.active_kre_sessions = Some(value);
                }
                "seatbroker_wal_recovery_seconds" => sample.recovery_seconds = Some(value),
                "seatbroker_wal_recovery_records" => sample.recovery_records = Some(value),
                _ => {}
            }
        }
        sample
    }
}

/// The bench's data directory: made for the run, removed at the end unless kept.
pub(crate) struct BenchDataDir {
    path: PathBuf,
    remove_at_end: bool,
}

impl BenchDataDir {
    /// A new directory under the system's temporary directory, named for this process.
    pub(crate) fn temporary(run_id: &str, keep: bool) -> Result<Self, LoadgenError> {
        let path = std::env::temp_dir().join(format!(
            "seatbroker-bench-restart-{}-{run_id}",
            std::process::id()
        ));
        Self::create(path, keep)
    }

    /// The directory given (missing or empty, checked by the plan).
    pub(crate) fn create(path: PathBuf, keep: bool) -> Result<Self, LoadgenError> {
        std::fs::create_dir_all(&path).map_err(|source| LoadgenError::DataDir {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            remove_at_end: !keep,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Files and bytes under each top-level entry (`wal`, `audit`, ...): the log's
    /// segments and snapshots show under `wal`, whatever their names.
    pub(crate) fn disk_use(&self) -> BTreeMap<String, DiskUse> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return BTreeMap::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, disk_use_under(&entry.path()))
            })
            .collect()
    }
}

impl Drop for BenchDataDir {
    fn drop(&mut self) {
        if self.remove_at_end {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Files and bytes at or under `path`; the data directory holds no links to follow.
fn disk_use_under(path: &Path) -> DiskUse {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return DiskUse::default();
    };
    if !metadata.is_dir() {
        return DiskUse {
            files: 1,
            bytes: metadata.len(),
        };
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return DiskUse::default();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| disk_use_under(&entry.path()))
        .fold(DiskUse::default(), |total, part| DiskUse {
            files: total.files + part.files,
            bytes: total.bytes + part.bytes,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_the_prometheus_text() {
        let text = "HTTP/1.1 200 OK\r\n\r\n# TYPE seatbroker_active_sessions gauge\n\
            seatbroker_active_sessions{product=\"kse\"} 3\n\
            seatbroker_active_sessions{product=\"kre\"} 1000000\n\
            seatbroker_wal_recovery_seconds 2.8\n\
            seatbroker_wal_recovery_records 1273564\n";
        assert_eq!(
            MetricsSample::parse(text),
            MetricsSample {
                active_kre_sessions: Some(1_000_000.0),
                recovery_seconds: Some(2.8),
                recovery_records: Some(1_273_564.0),
            }
        );
    }

    #[test]
    fn the_log_lines_with_figures_are_read() {
        let mut log = DaemonLog::default();
        log.read_line(r#"{"fields":{"message":"recovered the data directory","records":12,"boot_epoch":2,"live_leases":7,"millis":30}}"#);
        log.read_line(
            r#"{"fields":{"message":"snapshot written","lsn":5,"bytes":900,"millis":4}}"#,
        );
        log.read_line(r#"{"fields":{"message":"seatbroker serving","addr":"127.0.0.1:1","metrics_addr":"127.0.0.1:9"}}"#);
        log.read_line("not json");
        assert_eq!(
            log.recovery,
            Some(RecoveryLine {
                millis: 30,
                records: 12,
                live_leases: 7
            })
        );
        assert_eq!(log.snapshots.count, 1);
        assert_eq!(log.snapshots.last_bytes, 900);
        assert_eq!(log.metrics_addr, Some("127.0.0.1:9".parse().unwrap()));
    }
}
