//! `LoadgenError`: everything that can stop a benchmark run, and the process exit code
//! each maps to (64 for bad arguments, as sysexits' EX_USAGE).

use std::fmt;
use std::path::PathBuf;

/// Why a benchmark run failed.
#[derive(Debug)]
pub enum LoadgenError {
    /// The arguments are invalid or inconsistent; nothing was sent.
    Usage(String),
    /// Reading a file named by an argument (the TLS CA) failed.
    Io {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The TLS configuration was refused by tonic.
    Tls(String),
    /// A connection to the target could not be established.
    Connect {
        /// The address as given.
        addr: String,
        /// tonic's error, with its causes.
        source: tonic::transport::Error,
    },
    /// Connecting (TCP, TLS, HTTP/2) took longer than `CONNECT_TIMEOUT_MS`.
    ConnectTimeout {
        /// The address as given.
        addr: String,
    },
    /// A provisioning RPC on the broker failed; the run did not start.
    Setup {
        /// The RPC that failed, e.g. `AddMember`.
        step: &'static str,
        /// The status code the broker answered.
        code: tonic::Code,
        /// The status message the broker answered.
        message: String,
    },
    /// Provisioning took longer than `SETUP_MS_MAX`.
    SetupTimeout,
    /// The in-process no-op server could not be started.
    NoopServer(std::io::Error),
    /// Writing the report to stdout failed.
    Stdout(std::io::Error),
    /// The contention check saw more concurrent granted sessions than the quota.
    QuotaViolated {
        /// Highest number of overlapping client-side lease intervals.
        max_concurrent: u32,
        /// The organization's KRE quota.
        quota: u32,
    },
    /// The restart bench's own daemon could not be started, answered what a broker
    /// never answers, died, or took longer than its bound.
    Daemon(String),
    /// The restart bench's data directory could not be made, read or removed.
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The restart bench saw a lost seat, an over-admission, a lease the storm could
    /// not renew, or a retried acquire that did not find its lease.
    RestartChecks(Vec<String>),
    /// A bug in the load generator (a panicked engine task, an impossible histogram error).
    Internal(String),
}

impl LoadgenError {
    /// The process exit code for this error: 64 usage, 69 target unavailable,
    /// 1 quota violated or restart checks failed, 70 internal, 73 data directory,
    /// 74 stdout unwritable.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Io { .. } | Self::Tls(_) => 64,
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Setup { .. }
            | Self::SetupTimeout
            | Self::Daemon(_) => 69,
            Self::QuotaViolated { .. } | Self::RestartChecks(_) => 1,
            Self::DataDir { .. } => 73,
            Self::Stdout(_) => 74,
            Self::NoopServer(_) | Self::Internal(_) => 70,
        }
    }

    pub(crate) fn setup(step: &'static str, status: tonic::Status) -> Self {
        Self::Setup {
            step,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

impl fmt::Display for LoadgenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) => write!(f, "{message}"),
            Self::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Tls(message) => write!(f, "TLS configuration: {message}"),
            Self::Connect { addr, source } => {
                // tonic's errors repeat their cause in their own text: keep each once.
                let mut text = source.to_string();
                let mut cause = std::error::Error::source(source);
                while let Some(error) = cause {
                    let part = error.to_string();
                    if !text.contains(&part) {
                        text = format!("{text}: {part}");
                    }
                    cause = error.source();
                }
                write!(f, "cannot connect to {addr}: {text}")
            }
            Self::ConnectTimeout { addr } => write!(f, "connecting to {addr} timed out"),
            Self::Setup {
                step,
                code,
                message,
            } => write!(f, "setup failed at {step}: {code:?}: {message}"),
            Self::SetupTimeout => write!(f, "setup took longer than its bound; is the broker up?"),
            Self::NoopServer(source) => write!(f, "cannot start the no-op server: {source}"),
            Self::QuotaViolated {
                max_concurrent,
                quota,
            } => write!(
                f,
                "quota check failed: {max_concurrent} concurrent sessions > quota {quota}"
            ),
            Self::Daemon(message) => write!(f, "the bench's daemon: {message}"),
            Self::DataDir { path, source } => {
                write!(f, "data directory {}: {source}", path.display())
            }
            Self::RestartChecks(failures) => {
                write!(f, "restart checks failed: {}", failures.join("; "))
            }
            Self::Stdout(source) => write!(f, "cannot write the report to stdout: {source}"),
            Self::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for LoadgenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. }
            | Self::DataDir { source, .. }
            | Self::NoopServer(source)
            | Self::Stdout(source) => Some(source),
            Self::Connect { source, .. } => Some(source),
            _ => None,
        }
    }
}
