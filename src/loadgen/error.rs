//! `LoadgenError`: everything that can stop a benchmark run, and the process exit code
//! each maps to (64 for bad arguments, as sysexits' EX_USAGE).

use std::path::PathBuf;

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The arguments are invalid or inconsistent; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The TLS files were refused (unreadable, incomplete, not PEM).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A connection to the target could not be established (the shared client's
    /// message, each cause once).
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// Connecting (TCP, TLS, HTTP/2) took longer than `CONNECT_TIMEOUT_MS`.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout { addr: String },
    /// A provisioning RPC on the broker failed; the run did not start.
    #[error("setup failed at {step}: {code:?}: {message}")]
    Setup {
        /// The RPC that failed, e.g. `AddMember`.
        step: &'static str,
        code: tonic::Code,
        message: String,
    },
    /// Provisioning took longer than `SETUP_MS_MAX`.
    #[error("setup took longer than its bound; is the broker up?")]
    SetupTimeout,
    /// The in-process no-op server could not be started.
    #[error("cannot start the no-op server: {0}")]
    NoopServer(#[source] std::io::Error),
    /// Writing the report to stdout failed.
    #[error("cannot write the report to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    /// The contention check saw more concurrent granted sessions than the quota.
    #[error("quota check failed: {max_concurrent} concurrent sessions > quota {quota}")]
    QuotaViolated {
        /// Highest number of overlapping client-side lease intervals.
        max_concurrent: u32,
        /// The organization's KRE quota.
        quota: u32,
    },
    /// `--terminate-rate`: terminations the broker acknowledged whose `ended` event
    /// never reached the holding host's stream.
    #[error("{missing} of {acknowledged} acknowledged terminations never reached their stream")]
    TerminationsMissing { missing: u64, acknowledged: u64 },
    /// The restart bench's own daemon could not be started, answered what a broker
    /// never answers, died, or took longer than its bound.
    #[error("the bench's daemon: {0}")]
    Daemon(String),
    /// The restart bench's data directory could not be made, read or removed.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The restart bench saw a lost seat, an over-admission, a lease the storm could
    /// not renew, or a retried acquire that did not find its lease.
    #[error("restart checks failed: {}", .0.join("; "))]
    RestartChecks(Vec<String>),
    /// A bug in the load generator (a panicked engine task, an impossible histogram error).
    #[error("internal error: {0}")]
    Internal(String),
}

impl LoadgenError {
    /// The process exit code for this error: 64 usage, 69 target unavailable,
    /// 1 quota violated, terminations missing or restart checks failed, 70 internal, 73 data directory,
    /// 74 stdout unwritable.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Tls(_) => 64,
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Setup { .. }
            | Self::SetupTimeout
            | Self::Daemon(_) => 69,
            Self::QuotaViolated { .. }
            | Self::RestartChecks(_)
            | Self::TerminationsMissing { .. } => 1,
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
