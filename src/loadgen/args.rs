//! `BenchArgs`: the command-line surface of the load generator, flattened into the
//! `seatbroker bench` subcommand. Only parsing lives here; `config` validates.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// What the simulated engines do.
#[derive(clap::ValueEnum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Each engine acquires then releases, back to back.
    AcquireRelease,
    /// Engines hold one lease each and heartbeat it as fast as possible.
    Heartbeat,
    /// Engines acquire, heartbeat at the lease's interval and release after a random
    /// hold; thousands of engines over many organizations.
    Realistic,
    /// Many engines in one organization with a quota below the engine count; engines
    /// retry on RESOURCE_EXHAUSTED after a jittered backoff, and the run checks that
    /// granted sessions never exceeded the quota.
    Contention,
    /// `--protocol stream` only: every stream is a host holding its share of the
    /// engines' leases, renewed all at once by one renewal per `--renew-interval`
    /// (default: the leases' heartbeat interval). Measures renewals per second and
    /// the server's CPU to keep many leases alive.
    Hosts,
    /// Operator changes instead of sessions, each durable before it is answered (on a
    /// cluster: written to etcd): every engine adds a member of its own to its
    /// organization, then removes it, back to back, with the operator key. Measures
    /// admin commands per second (`add-member`, `remove-member`); unary, on a broker.
    Admin,
}

/// How engines send their operations.
#[derive(clap::ValueEnum, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// One unary RPC per operation (Acquire, Heartbeat, Release).
    Unary,
    /// `SessionService.Channel`: batches of operations over one stream per host.
    Stream,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::AcquireRelease => "acquire-release",
            Self::Heartbeat => "heartbeat",
            Self::Realistic => "realistic",
            Self::Contention => "contention",
            Self::Hosts => "hosts",
            Self::Admin => "admin",
        }
    }
}

/// Which server the engines drive.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// The broker at `--addr`; organizations, members and keys are provisioned first.
    Broker,
    /// An in-process no-op SessionService on 127.0.0.1 (the ceiling of this client).
    Noop,
}

/// `20/s` or `20`: a count per second.
fn parse_per_second(text: &str) -> Result<u32, String> {
    let count = text.strip_suffix("/s").unwrap_or(text);
    count
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate: give a count per second, e.g. 20/s"))
}

/// The operator key; its `Debug` output is redacted so it never reaches a log.
#[derive(Clone)]
pub struct OperatorKeyText(pub(crate) String);

impl FromStr for OperatorKeyText {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Debug for OperatorKeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OperatorKeyText(<redacted>)")
    }
}

/// Arguments of `seatbroker bench`. Options left unset get per-workload defaults
/// (see `config::Defaults`).
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Broker address, http:// or https://; only loopback hosts (127.0.0.0/8, ::1,
    /// localhost) are accepted unless `--allow-remote` is given.
    #[arg(
        long,
        env = "SEATBROKER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// Accept a target address that is not loopback: benchmark your own broker on
    /// another machine. Without it, load goes to this machine only.
    #[arg(long)]
    pub allow_remote: bool,
    /// The workload to run.
    #[arg(long, value_enum, default_value_t = Workload::AcquireRelease)]
    pub workload: Workload,
    /// How operations are sent: unary RPCs, or batches over session channels (one
    /// stream per simulated host; the engines' leases are spread over the hosts).
    #[arg(long, value_enum, default_value_t = Protocol::Unary)]
    pub protocol: Protocol,
    /// `--protocol stream`: operations per message, at most.
    #[arg(long, default_value_t = 64)]
    pub batch: u32,
    /// `--protocol stream`: streams per connection, each one simulated host with its
    /// own member's key (hosts = connections x streams; engines are leases spread
    /// over the hosts).
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// `hosts`: how often each host renews its stream (default: the heartbeat
    /// interval the broker gives its leases).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub renew_interval: Option<Duration>,
    /// `hosts`: an admin terminates held sessions at this pace through the measured
    /// window (`20/s` or `20`), and the report gives the time from just before each
    /// `TerminateSession` call to the `ended` event on the holding host's stream. A
    /// termination acknowledged whose event never arrives fails the run.
    #[arg(long, value_parser = parse_per_second)]
    pub terminate_rate: Option<u32>,
    /// The server to drive.
    #[arg(long, value_enum, default_value_t = TargetKind::Broker)]
    pub target: TargetKind,
    /// Run against the broker, then the same workload against the no-op server, and
    /// report the broker/noop ratio.
    #[arg(long, conflicts_with = "target")]
    pub compare_noop: bool,
    /// Serve the no-op target inside the bench process instead of in a child process.
    /// By default it runs as its own process (`seatbroker bench-noop-server`), so that
    /// it shares the machine with the load generator exactly as the broker does.
    #[arg(long)]
    pub noop_in_process: bool,
    /// Organizations to create (default 20 for `realistic`, else 1; `contention` uses 1).
    #[arg(long)]
    pub orgs: Option<u32>,
    /// Simulated engines (default 2000 for `realistic`, else 256).
    #[arg(long)]
    pub engines: Option<u32>,
    /// Members provisioned, each with one API key, shared round robin by the engines
    /// as separate KRE sessions (default: one member per engine). Fewer members let
    /// a run hold a million sessions without a million members and keys.
    #[arg(long)]
    pub members: Option<u32>,
    /// Bound on outstanding RPCs across all engines.
    #[arg(long, default_value_t = 256)]
    pub in_flight: u32,
    /// HTTP/2 connections; engines are spread over them round robin.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Measured time, e.g. `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before the measurement.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// KRE sessions per organization (default: the engines of the organization; for
    /// `contention` a quarter of the engines).
    #[arg(long)]
    pub quota: Option<u32>,
    /// Shortest lease hold (`realistic` default 1s, `contention` 1ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold_min: Option<Duration>,
    /// Longest lease hold (`realistic` default 10s, `contention` 5ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold_max: Option<Duration>,
    /// Longest idle time between a release and the next acquire (`realistic`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub think_max: Duration,
    /// Base retry delay after RESOURCE_EXHAUSTED (`contention`), jittered up to twice.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    /// Operator key for provisioning on the broker.
    #[arg(long, env = "SEATBROKER_OPERATOR_KEY", hide_env_values = true)]
    pub operator_key: Option<OperatorKeyText>,
    /// CA certificate (PEM) that signed the broker's certificate, for https://
    /// addresses (the broker's name is checked against the host of `--addr`).
    #[arg(long, env = "SEATBROKER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a broker that requires mTLS.
    #[arg(
        long = "tls-cert",
        env = "SEATBROKER_CLIENT_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "tls-key", env = "SEATBROKER_CLIENT_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Print one JSON object to stdout instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// The broker daemon's process id: the report then gives its CPU per operation
    /// (read from /proc; the no-op server's is always given).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of hold times and jitter (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pace all RPCs to this many per second in total, on an absolute schedule
    /// (default: as fast as the in-flight bound allows). Latency is measured from
    /// each call's intended start, so a stalled server shows in the percentiles
    /// (corrected for coordinated omission, as wrk2 does); the start lag shows the
    /// generator's own lateness and the achieved rate whether the server kept up.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Find the target's peak first (an unpaced run of the same workload), then
    /// measure paced at half of it: the "p99 at half the peak" figure in one command.
    /// The reports are of the paced runs (with `--compare-noop`, broker and no-op
    /// both at half the broker's peak).
    #[arg(long, conflicts_with = "rate")]
    pub half_peak: bool,
}
