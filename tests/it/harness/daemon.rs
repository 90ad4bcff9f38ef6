//! The real `seatbroker` binary as a child process, for what the in-process
//! [`super::TestServer`] cannot show: signals, kill -9 and restarts, the command line,
//! descriptor limits, failpoints, the process's own memory. It runs on 127.0.0.1:0
//! with JSON logs, with none of the test's own `SEATBROKER_*` variables, its standard
//! output and error collected line by line; [`Serve::start`] returns once it is ready
//! by the one rule of [`super::wait_for_health`].

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use seatbroker::tls::ClientTlsFiles;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{DaemonApi, OPERATOR_KEY, certs::TestCerts};

pub const BINARY: &str = env!("CARGO_BIN_EXE_seatbroker");
/// Every wait on the process (its first line, its exit) is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);
/// The default log filter: warnings, and the lines that say where the daemon serves.
pub const QUIET_LOG: &str = "warn,seatbroker::cli=info,seatbroker::server=info";
/// The lines of a failed test's daemon log shown with the failure.
const LOG_LINES_SHOWN_MAX: usize = 200;

/// A `seatbroker` command without the `SEATBROKER_*` variables of the test's own
/// environment (a developer's `SEATBROKER_KEY` must not reach the daemon under test).
pub fn command() -> Command {
    let mut command = Command::new(BINARY);
    clear_our_variables(&mut command);
    command
}

fn clear_our_variables(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SEATBROKER_") {
            command.env_remove(name);
        }
    }
}

/// What `seatbroker ARGS` run to its end said.
pub struct Finished {
    /// The exit code (-1 for a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `seatbroker ARGS` with `envs` to its end (a client command, a check).
pub fn run(args: &[&str], envs: &[(&str, &str)]) -> Finished {
    let output = command()
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run the seatbroker binary");
    Finished {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// How to start `seatbroker serve`: on 127.0.0.1:0 with JSON logs, the test operator
/// key and a temporary data directory unless told otherwise.
pub struct Serve {
    /// `--listen`: 127.0.0.1:0 unless a test needs the address of an earlier daemon.
    listen: SocketAddr,
    args: Vec<OsString>,
    envs: Vec<(String, OsString)>,
    data_dir: Option<PathBuf>,
    log_filter: String,
    descriptors_max: Option<u32>,
    operator_key: Option<String>,
    client_tls: ClientTlsFiles,
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            args: Vec::new(),
            envs: Vec::new(),
            data_dir: None,
            log_filter: QUIET_LOG.into(),
            descriptors_max: None,
            operator_key: Some(OPERATOR_KEY.into()),
            client_tls: ClientTlsFiles::default(),
        }
    }
}

impl Serve {
    pub fn new() -> Serve {
        Serve::default()
    }

    /// Listen on `addr` (say, the address of the daemon this one restarts, so that its
    /// clients reconnect to the same place).
    pub fn listen(mut self, addr: SocketAddr) -> Serve {
        self.listen = addr;
        self
    }

    /// Extra flags of `serve`.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Serve {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable (a failpoint, say) of the daemon.
    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Serve {
        self.envs.push((name.into(), value.as_ref().to_owned()));
        self
    }

    /// Serves from `dir` (kept after the daemon stops, for restarts) instead of a
    /// temporary directory of its own.
    pub fn data_dir(mut self, dir: &Path) -> Serve {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// The `SEATBROKER_LOG` filter ([`QUIET_LOG`] by default).
    pub fn log(mut self, filter: &str) -> Serve {
        self.log_filter = filter.into();
        self
    }

    /// Under a limit of `descriptors` open files (soft and hard, set by the shell that
    /// then becomes the daemon: the pid stays the daemon's).
    pub fn descriptors_max(mut self, descriptors: u32) -> Serve {
        self.descriptors_max = Some(descriptors);
        self
    }

    /// Without `SEATBROKER_OPERATOR_KEY`: the daemon takes the key of its data
    /// directory, or makes and prints one.
    pub fn without_operator_key(mut self) -> Serve {
        self.operator_key = None;
        self
    }

    /// Over TLS with the test certificates; the harness's own clients trust the CA.
    pub fn tls(mut self, certs: &TestCerts) -> Serve {
        let server = certs.server(false);
        self.args.extend([
            "--tls-cert".into(),
            server.cert.into_os_string(),
            "--tls-key".into(),
            server.key.into_os_string(),
        ]);
        self.client_tls = certs.client(false);
        self
    }

    /// Over TLS requiring client certificates of the test CA (mTLS); the harness's
    /// own clients present the usual client certificate.
    pub fn mtls(self, certs: &TestCerts) -> Serve {
        let mut serve = self
            .tls(certs)
            .args(["--tls-client-ca", certs.ca.to_str().expect("a UTF-8 path")]);
        serve.client_tls = certs.client(true);
        serve
    }

    /// Starts the process and returns at once: it may not listen yet, may be
    /// recovering its log, or may be about to refuse to start.
    pub fn spawn(self) -> Daemon {
        let (owned_data_dir, data_dir) = match self.data_dir {
            Some(dir) => (None, dir),
            None => {
                let dir = tempfile::tempdir().expect("a temporary data directory");
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        let mut command = match self.descriptors_max {
            None => Command::new(BINARY),
            Some(descriptors) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {descriptors} && exec \"$0\" \"$@\""))
                    .arg(BINARY);
                shell
            }
        };
        clear_our_variables(&mut command);
        command
            .args(["serve", "--log-format", "json"])
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(key) = &self.operator_key {
            command.env("SEATBROKER_OPERATOR_KEY", key);
        }
        command
            .env("SEATBROKER_LOG", &self.log_filter)
            .envs(self.envs);
        let mut child = command.spawn().expect("start the seatbroker binary");
        let stdout = Lines::collect(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::collect(child.stderr.take().expect("piped stderr"));
        Daemon {
            child,
            data_dir,
            _owned_data_dir: owned_data_dir,
            client_tls: self.client_tls,
            addr: OnceLock::new(),
            stdout,
            stderr,
        }
    }

    /// Starts the process and waits until it is ready: health SERVING.
    pub async fn start(self) -> Daemon {
        let daemon = self.spawn();
        daemon.wait_health("", ServingStatus::Serving).await;
        daemon
    }
}

/// A running `seatbroker serve`; killed when dropped (its log shown if the test failed).
pub struct Daemon {
    child: Child,
    data_dir: PathBuf,
    _owned_data_dir: Option<tempfile::TempDir>,
    client_tls: ClientTlsFiles,
    /// Read from its "seatbroker listening on" line, printed once the socket is bound.
    addr: OnceLock<SocketAddr>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

impl DaemonApi for Daemon {
    fn url(&self) -> String {
        let scheme = if self.client_tls.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.addr())
    }

    fn client_tls(&self) -> &ClientTlsFiles {
        &self.client_tls
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory it serves from.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The gRPC address; waits for the line that says the socket is bound.
    pub fn addr(&self) -> SocketAddr {
        *self.addr.get_or_init(|| {
            let listening = self.stdout.find(|line| {
                let addr = line.strip_prefix("seatbroker listening on ")?;
                Some(addr.parse().expect("an address"))
            });
            listening.unwrap_or_else(|| panic!("the daemon never listened; {}", self.tail()))
        })
    }

    /// The fields of the first JSON log line whose message is `message`, waiting for
    /// it until the daemon exits; `None` if it never came.
    pub fn wait_for_log(&self, message: &str) -> Option<serde_json::Value> {
        self.stderr.find(|line| {
            let json: serde_json::Value = serde_json::from_str(line).ok()?;
            (json["fields"]["message"] == message).then(|| json["fields"].clone())
        })
    }

    /// The `/metrics` address (from the "seatbroker serving" line: start the daemon
    /// with `--metrics-listen 127.0.0.1:0` and a log filter that keeps that line).
    pub fn metrics_addr(&self) -> SocketAddr {
        let serving = self
            .wait_for_log("seatbroker serving")
            .unwrap_or_else(|| panic!("no \"seatbroker serving\" line; {}", self.tail()));
        let addr = serving["metrics_addr"].as_str().unwrap_or_default();
        addr.parse()
            .unwrap_or_else(|_| panic!("no metrics listener: {serving}"))
    }

    /// `GET /metrics` from the metrics listener.
    pub fn scrape(&self) -> String {
        let mut stream =
            std::net::TcpStream::connect(self.metrics_addr()).expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// Every line the daemon wrote to standard error so far (its log).
    pub fn log_lines(&self) -> Vec<String> {
        self.stderr.all()
    }

    /// Every line the daemon wrote to standard error so far, as one text.
    pub fn stderr(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Every line the daemon wrote to standard output so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.all()
    }

    /// The operator key the daemon printed when it made one; waits for it until the
    /// daemon exits (`None`: it printed none).
    pub fn printed_operator_key(&self) -> Option<String> {
        self.stdout.find(|line| {
            let line = line.trim();
            line.starts_with("sbo_").then(|| line.to_owned())
        })
    }

    /// Sends a signal (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (it must, within the deadline), and for what it
    /// wrote to be read.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                self.stdout.wait_closed();
                self.stderr.wait_closed();
                return status;
            }
            assert!(
                Instant::now() < until,
                "the daemon did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (0 for a clean stop).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The lowest descriptor number the daemon does not hold.
    pub fn lowest_free_descriptor(&self) -> u64 {
        let held = self.held_descriptors();
        (0..).find(|fd| !held.contains(fd)).expect("a free number")
    }

    /// The descriptor numbers the daemon holds now.
    pub fn held_descriptors(&self) -> std::collections::BTreeSet<u64> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the daemon's descriptors")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// The daemon's soft descriptor limit now.
    pub fn soft_descriptor_limit(&self) -> u64 {
        self.descriptor_limits().rlim_cur
    }

    /// Sets the daemon's soft descriptor limit from outside (as `prlimit` does),
    /// keeping its hard limit, so that it can be raised back without privileges. Set
    /// to [`Daemon::lowest_free_descriptor`], the daemon can open nothing more.
    pub fn set_soft_descriptor_limit(&self, soft: u64) {
        let wanted = libc::rlimit {
            rlim_cur: soft,
            rlim_max: self.descriptor_limits().rlim_max,
        };
        let pid = self.pid() as libc::pid_t;
        // SAFETY: a plain system call reading a local struct.
        let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &wanted, std::ptr::null_mut()) };
        assert_eq!(set, 0, "prlimit (set): {}", std::io::Error::last_os_error());
    }

    fn descriptor_limits(&self) -> libc::rlimit {
        let mut limits = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let pid = self.pid() as libc::pid_t;
        // SAFETY: a plain system call writing a local struct.
        let read =
            unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limits) };
        assert_eq!(
            read,
            0,
            "prlimit (read): {}",
            std::io::Error::last_os_error()
        );
        limits
    }

    /// The exit status if the process has exited, without waiting for it.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the daemon")
    }

    #[track_caller]
    pub fn assert_alive(&mut self) {
        let status = self.exited();
        assert!(status.is_none(), "the daemon exited: {status:?}");
    }

    /// The last lines of the daemon's output, for a failure message.
    fn tail(&self) -> String {
        let lines = self.log_lines();
        let shown = &lines[lines.len().saturating_sub(LOG_LINES_SHOWN_MAX)..];
        format!(
            "its standard output:\n{}\nthe end of its log:\n{}",
            self.stdout_lines().join("\n"),
            shown.join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill_now();
        }
        if std::thread::panicking() {
            eprintln!(
                "daemon {} on {}: {}",
                self.pid(),
                self.data_dir.display(),
                self.tail()
            );
        }
    }
}

/// The lines a pipe of the daemon delivered so far, read by a thread of its own (so
/// that the daemon never blocks on a full pipe).
struct Lines {
    received: Mutex<Received>,
    grew: Condvar,
}

#[derive(Default)]
struct Received {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines {
            received: Mutex::default(),
            grew: Condvar::new(),
        });
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.received.lock().unwrap().lines.push(line);
                sink.grew.notify_all();
            }
            sink.received.lock().unwrap().closed = true;
            sink.grew.notify_all();
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.received.lock().unwrap().lines.clone()
    }

    /// Waits until the pipe is closed and read to its end (or the deadline passes).
    fn wait_closed(&self) {
        self.find(|_| None::<()>);
    }

    /// What `find` makes of the first line it accepts, waiting for more lines until
    /// the pipe closes or the deadline passes (`None` then).
    fn find<T>(&self, find: impl Fn(&str) -> Option<T>) -> Option<T> {
        let until = Instant::now() + DEADLINE;
        let mut read = self.received.lock().unwrap();
        let mut looked_at = 0;
        loop {
            if let Some(found) = read.lines[looked_at..].iter().find_map(|l| find(l)) {
                return Some(found);
            }
            looked_at = read.lines.len();
            let left = until.saturating_duration_since(Instant::now());
            if read.closed || left.is_zero() {
                return None;
            }
            read = self.grew.wait_timeout(read, left).unwrap().0;
        }
    }
}
