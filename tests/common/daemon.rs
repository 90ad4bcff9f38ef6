//! The real `seatbroker` binary as a child process: started on 127.0.0.1:0 with JSON
//! logs, its standard error collected line by line, its addresses read from the
//! "seatbroker serving" log line, stopped with signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::OPERATOR_KEY;

pub const BINARY: &str = env!("CARGO_BIN_EXE_seatbroker");
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub data_dir: tempfile::TempDir,
    /// Every line the daemon wrote to standard error so far.
    log: Arc<Mutex<Vec<String>>>,
}

/// A `seatbroker` command with a clean environment of our own variables.
pub fn command() -> Command {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("SEATBROKER_") {
            command.env_remove(name);
        }
    }
    command
}

/// Starts `seatbroker serve` with `args` (after `--listen 127.0.0.1:0`, a temporary
/// data directory and JSON logs filtered by `log_filter`), and waits until it serves.
pub fn start(args: &[&str], log_filter: &str) -> Daemon {
    start_from(command(), args, log_filter)
}

/// Like [`start`], under a limit of `descriptors` open files (soft and hard, set by
/// the shell that then becomes the daemon: the pid stays the daemon's).
pub fn start_with_descriptor_limit(descriptors: u32, args: &[&str], log_filter: &str) -> Daemon {
    let mut shell = Command::new("sh");
    for (name, _) in std::env::vars() {
        if name.starts_with("SEATBROKER_") {
            shell.env_remove(name);
        }
    }
    shell
        .arg("-c")
        .arg(format!("ulimit -n {descriptors} && exec \"$0\" \"$@\""))
        .arg(BINARY);
    start_from(shell, args, log_filter)
}

fn start_from(mut command: Command, args: &[&str], log_filter: &str) -> Daemon {
    let data_dir = tempfile::tempdir().expect("data directory");
    let mut child = command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .args(args)
        .env("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY)
        .env("SEATBROKER_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the seatbroker binary");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (lines, serving) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    let collected = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line.clone());
            let _ = lines.send(line);
        }
    });
    let (addr, metrics_addr) = wait_for_serving_line(&serving, &log);
    Daemon {
        child,
        addr,
        metrics_addr,
        data_dir,
        log,
    }
}

fn wait_for_serving_line(
    lines: &mpsc::Receiver<String>,
    log: &Mutex<Vec<String>>,
) -> (SocketAddr, Option<SocketAddr>) {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            panic!(
                "the daemon did not start; its log:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &json["fields"];
        if fields["message"] == "seatbroker serving" {
            let addr = fields["addr"].as_str().unwrap().parse().unwrap();
            let metrics = fields["metrics_addr"].as_str().unwrap_or_default();
            return (addr, metrics.parse().ok());
        }
    }
}

impl Daemon {
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, polling up to `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "the daemon did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /metrics` from the metrics listener.
    pub fn scrape(&self) -> String {
        let addr = self.metrics_addr.expect("a metrics listener");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
