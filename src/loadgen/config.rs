//! Validation of `BenchArgs` into a `Plan`: typed, bounded settings with the
//! per-workload defaults resolved, the TLS files checked, and the target address
//! checked to be a loopback host (a workplace rule: load goes to this machine only,
//! unless `--allow-remote` says the broker is the user's own on another machine).

use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limits::{KRE_SESSIONS_MAX, STREAMS_PER_KEY_MAX};
use crate::tls::ClientTlsFiles;

use super::args::{BenchArgs, OperatorKeyText, Protocol, TargetKind, Workload};
use super::bounds::*;
use super::error::LoadgenError;

/// What to run and how to print it.
#[derive(Debug)]
pub struct Plan {
    /// The load, shared by every target of the plan.
    pub config: BenchConfig,
    /// One target, or the broker followed by the no-op server.
    pub mode: Mode,
    /// Human text or one JSON object on stdout.
    pub output: Output,
    /// Measure the peak first, then run paced at half of it (`--half-peak`).
    pub half_peak: bool,
}

/// One target, or a broker run followed by the same load against the no-op server.
#[derive(Debug)]
pub enum Mode {
    /// Run against this target only.
    Single(Target),
    /// Run against the broker, then the no-op server, and compare.
    CompareNoop(BrokerTarget, Target),
}

/// The server the engines drive.
#[derive(Clone, Debug)]
pub enum Target {
    /// A broker, provisioned first with the operator key.
    Broker(BrokerTarget),
    /// The in-process no-op SessionService; it needs no provisioning and accepts any key.
    Noop,
    /// The same no-op service in a child process (`seatbroker bench-noop-server`), so
    /// that client and server are separate processes as with a broker.
    NoopProcess,
}

impl Target {
    fn noop(args: &BenchArgs) -> Target {
        if args.noop_in_process {
            Target::Noop
        } else {
            Target::NoopProcess
        }
    }
}

/// A running broker: on this machine, or another with `--allow-remote`.
#[derive(Clone, Debug)]
pub struct BrokerTarget {
    /// `http://` or `https://` URI.
    pub uri: String,
    /// The CA, and the client certificate and key for mTLS (`https://` only).
    pub tls: ClientTlsFiles,
    /// Provisions organizations, members, licenses and API keys.
    pub operator_key: OperatorKeyText,
    /// The daemon's process, for its CPU per operation.
    pub server_pid: Option<u32>,
    /// `--allow-remote`: a cluster's leader named by a standby may be on another
    /// machine.
    pub allow_remote: bool,
}

/// Where the report goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Several lines of text.
    Human,
    /// One JSON object on one line.
    Json,
}

/// Whether a progress line is written to stderr every second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A line every second while the engines run (and one before provisioning).
    Stderr,
    /// Nothing on stderr.
    Off,
}

/// The validated load: every field is within `limits`.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// What the engines do.
    pub workload: Workload,
    /// Organizations; engine `i` belongs to organization `i % orgs`.
    pub orgs: u32,
    /// Simulated engines, one task each.
    pub engines: u32,
    /// Members with an API key each; engine `g` acts as member `g % members`.
    pub members: u32,
    /// Bound on outstanding RPCs.
    pub in_flight: u32,
    /// HTTP/2 connections; engine `i` uses connection `i % connections`.
    pub connections: u32,
    /// Unmeasured time after the engines start.
    pub warmup: Duration,
    /// Measured time after the warmup; the deadline is warmup + duration.
    pub duration: Duration,
    /// KRE sessions per organization (and the bound the contention check verifies).
    pub quota: u32,
    /// Shortest lease hold (`realistic`, `contention`).
    pub hold_min: Duration,
    /// Longest lease hold (`realistic`, `contention`).
    pub hold_max: Duration,
    /// Longest idle time between release and acquire (`realistic`).
    pub think_max: Duration,
    /// Base retry delay after RESOURCE_EXHAUSTED (`contention`).
    pub backoff: Duration,
    /// Whether progress lines go to stderr.
    pub progress: Progress,
    /// Seeds every engine's random generator.
    pub seed: u64,
    /// Total RPCs per second to pace to; `None` runs unpaced.
    pub rate: Option<u32>,
    /// `--protocol stream`: operations go over session channels; `None` is unary.
    pub stream: Option<StreamConfig>,
}

/// The session-channel settings (`--protocol stream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Operations per message, at most.
    pub batch: u32,
    /// Streams per connection; each is one simulated host.
    pub streams_per_connection: u32,
    /// `hosts`: period of each host's renewal; `None` uses the leases' heartbeat interval.
    pub renew_interval: Option<Duration>,
    /// `hosts`: sessions an admin terminates per second through the measured window
    /// (the pushed termination's latency); `None` terminates nothing.
    pub terminate_rate: Option<u32>,
}

impl Plan {
    /// Validates the arguments; nothing is sent before this succeeds.
    pub fn from_args(args: BenchArgs) -> Result<Self, LoadgenError> {
        if !args.allow_remote {
            check_loopback(&args.addr)?;
        }
        let config = BenchConfig::from_args(&args)?;
        if args.workload == Workload::Admin
            && (args.compare_noop || args.target != TargetKind::Broker)
        {
            return Err(usage(
                "the admin workload changes a broker's members: it does not run against the no-op server",
            ));
        }
        if args.terminate_rate.is_some() && (args.compare_noop || args.target != TargetKind::Broker)
        {
            return Err(usage(
                "--terminate-rate terminates sessions on a broker: it does not run against the no-op server",
            ));
        }
        let mode = if args.compare_noop {
            Mode::CompareNoop(BrokerTarget::from_args(&args)?, Target::noop(&args))
        } else {
            match args.target {
                TargetKind::Broker => Mode::Single(Target::Broker(BrokerTarget::from_args(&args)?)),
                TargetKind::Noop => Mode::Single(Target::noop(&args)),
            }
        };
        let output = if args.json {
            Output::Json
        } else {
            Output::Human
        };
        Ok(Self {
            config,
            mode,
            output,
            half_peak: args.half_peak,
        })
    }
}

impl BenchConfig {
    fn from_args(args: &BenchArgs) -> Result<Self, LoadgenError> {
        let defaults = Defaults::for_workload(args.workload);
        let orgs = args.orgs.unwrap_or(defaults.orgs);
        let engines = args.engines.unwrap_or(defaults.engines);
        check_range("--engines", engines.into(), 1, ENGINES_MAX.into())?;
        check_range("--orgs", orgs.into(), 1, u64::from(ORGS_MAX.min(engines)))?;
        if args.terminate_rate.is_some() && args.protocol != Protocol::Stream {
            return Err(usage(
                "--terminate-rate runs with --protocol stream --workload hosts",
            ));
        }
        let stream = (args.protocol == Protocol::Stream).then_some(StreamConfig {
            batch: args.batch,
            streams_per_connection: args.streams,
            renew_interval: args.renew_interval,
            terminate_rate: args.terminate_rate,
        });
        let hosts = args.connections.saturating_mul(args.streams);
        // Over streams the members are the hosts' (a stream holds one user's leases).
        let members = args.members.unwrap_or(if stream.is_some() {
            hosts.min(engines)
        } else {
            engines
        });
        let engines_per_org = engines.div_ceil(orgs);
        let quota = match args.workload {
            Workload::Contention => args.quota.unwrap_or((engines / 4).max(1)),
            // Hosts spread over organizations by member: the quota covers any split.
            _ if stream.is_some() => args.quota.unwrap_or(engines),
            _ => args.quota.unwrap_or(engines_per_org),
        };
        let config = Self {
            workload: args.workload,
            orgs,
            engines,
            members,
            in_flight: args.in_flight,
            connections: args.connections,
            warmup: args.warmup,
            duration: args.duration,
            quota,
            hold_min: args.hold_min.unwrap_or(defaults.hold_min),
            hold_max: args.hold_max.unwrap_or(defaults.hold_max),
            think_max: args.think_max,
            backoff: args.backoff,
            progress: if args.quiet {
                Progress::Off
            } else {
                Progress::Stderr
            },
            seed: args.seed.unwrap_or_else(clock_seed),
            rate: args.rate.filter(|r| *r > 0),
            stream,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every bound; `BenchConfig` built by hand (tests, callers) goes through this too.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        check_range("--engines", self.engines.into(), 1, ENGINES_MAX.into())?;
        check_range(
            "--orgs",
            self.orgs.into(),
            1,
            u64::from(ORGS_MAX.min(self.engines)),
        )?;
        // Every organization needs a member; a member's engines share its key.
        check_range(
            "--members",
            self.members.into(),
            self.orgs.into(),
            self.engines.into(),
        )?;
        check_range(
            "--in-flight",
            self.in_flight.into(),
            1,
            IN_FLIGHT_MAX.into(),
        )?;
        check_range(
            "--connections",
            self.connections.into(),
            1,
            CONNECTIONS_MAX.into(),
        )?;
        check_range("--quota", self.quota.into(), 1, KRE_SESSIONS_MAX.into())?;
        check_millis(
            "--duration",
            self.duration,
            DURATION_MS_MIN,
            DURATION_MS_MAX,
        )?;
        check_millis("--warmup", self.warmup, 0, WARMUP_MS_MAX)?;
        check_millis("--hold-min", self.hold_min, 0, HOLD_MS_MAX)?;
        check_millis("--hold-max", self.hold_max, 0, HOLD_MS_MAX)?;
        check_millis("--think-max", self.think_max, 0, THINK_MS_MAX)?;
        check_millis("--backoff", self.backoff, 1, BACKOFF_MS_MAX)?;
        if self.hold_min > self.hold_max {
            return Err(usage("--hold-min must not exceed --hold-max"));
        }
        if self.workload == Workload::Contention {
            self.validate_contention()?;
        }
        match &self.stream {
            Some(stream) => self.validate_stream(stream)?,
            None if self.workload == Workload::Hosts => {
                return Err(usage("the hosts workload needs --protocol stream"));
            }
            None => {}
        }
        Ok(())
    }

    /// Simulated hosts: one stream each (`--protocol stream`), else none.
    pub fn hosts(&self) -> u32 {
        self.stream.map_or(0, |stream| {
            self.connections
                .saturating_mul(stream.streams_per_connection)
        })
    }

    /// What is provisioned one member's key at a time: the hosts over streams (a
    /// stream holds one user's leases), else the engines.
    pub(crate) fn key_holders(&self) -> u32 {
        if self.stream.is_some() {
            self.hosts()
        } else {
            self.engines
        }
    }

    fn validate_stream(&self, stream: &StreamConfig) -> Result<(), LoadgenError> {
        if !matches!(
            self.workload,
            Workload::AcquireRelease | Workload::Heartbeat | Workload::Hosts
        ) {
            return Err(usage(format!(
                "--protocol stream runs acquire-release, heartbeat and hosts, not {}",
                self.workload.name()
            )));
        }
        if self.rate.is_some() {
            return Err(usage(
                "--rate paces unary calls; over streams use the hosts workload's --renew-interval",
            ));
        }
        check_range("--batch", stream.batch.into(), 1, STREAM_BATCH_MAX.into())?;
        check_range(
            "--streams",
            stream.streams_per_connection.into(),
            1,
            STREAMS_PER_CONNECTION_MAX.into(),
        )?;
        let hosts = self.hosts();
        if hosts > self.engines {
            return Err(usage(format!(
                "{hosts} hosts (--connections x --streams) need at least as many --engines, \
                 the leases they hold; got {}",
                self.engines
            )));
        }
        check_range(
            "--members",
            self.members.into(),
            self.orgs.into(),
            hosts.into(),
        )?;
        let streams_per_key = hosts.div_ceil(self.members);
        if streams_per_key as usize > STREAMS_PER_KEY_MAX {
            return Err(usage(format!(
                "{hosts} hosts on {} members open {streams_per_key} streams per key; the broker \
                 allows {STREAMS_PER_KEY_MAX}: raise --members",
                self.members
            )));
        }
        if let Some(rate) = stream.terminate_rate {
            if self.workload != Workload::Hosts {
                return Err(usage("--terminate-rate runs with the hosts workload"));
            }
            check_range(
                "--terminate-rate",
                rate.into(),
                1,
                TERMINATE_RATE_MAX.into(),
            )?;
        }
        if let Some(every) = stream.renew_interval {
            check_millis(
                "--renew-interval",
                every,
                HEARTBEAT_INTERVAL_MS_MIN,
                HOLD_MS_MAX,
            )?;
        }
        Ok(())
    }

    fn validate_contention(&self) -> Result<(), LoadgenError> {
        if self.orgs != 1 {
            return Err(usage("contention runs in one organization: use --orgs 1"));
        }
        if self.quota >= self.engines {
            return Err(usage(format!(
                "contention needs --quota ({}) below --engines ({})",
                self.quota, self.engines
            )));
        }
        Ok(())
    }
}

/// Per-workload defaults for the options left unset.
struct Defaults {
    orgs: u32,
    engines: u32,
    hold_min: Duration,
    hold_max: Duration,
}

impl Defaults {
    fn for_workload(workload: Workload) -> Self {
        match workload {
            Workload::Realistic => Self {
                orgs: 20,
                engines: 2_000,
                hold_min: Duration::from_secs(1),
                hold_max: Duration::from_secs(10),
            },
            Workload::Contention => Self {
                orgs: 1,
                engines: 256,
                hold_min: Duration::from_millis(1),
                hold_max: Duration::from_millis(5),
            },
            Workload::AcquireRelease | Workload::Heartbeat | Workload::Hosts | Workload::Admin => {
                Self {
                    orgs: 1,
                    engines: 256,
                    hold_min: Duration::ZERO,
                    hold_max: Duration::ZERO,
                }
            }
        }
    }
}

impl BrokerTarget {
    fn from_args(args: &BenchArgs) -> Result<Self, LoadgenError> {
        let operator_key = args.operator_key.clone().ok_or_else(|| {
            usage("the broker target needs --operator-key or SEATBROKER_OPERATOR_KEY")
        })?;
        if operator_key.0.is_empty() {
            return Err(usage("the operator key is empty"));
        }
        let tls = ClientTlsFiles {
            ca: args.tls_ca.clone(),
            cert: args.tls_cert.clone(),
            key: args.tls_key.clone(),
        };
        if args.addr.starts_with("https://") {
            // Read and checked now, so a bad file is a usage error before any load.
            crate::tls::client_config(&tls).map_err(|e| LoadgenError::Tls(e.to_string()))?;
        } else if !tls.is_empty() {
            return Err(usage(
                "--tls-ca, --tls-cert and --tls-key need an https:// --addr",
            ));
        }
        Ok(Self {
            uri: args.addr.clone(),
            tls,
            operator_key,
            server_pid: args.server_pid,
            allow_remote: args.allow_remote,
        })
    }
}

/// Refuses any address whose host is not on this machine's loopback.
pub fn check_loopback(addr: &str) -> Result<(), LoadgenError> {
    let host = host_of(addr)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let is_loopback = if bare.eq_ignore_ascii_case("localhost") {
        resolves_to_loopback_only(bare)
    } else {
        bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    };
    if is_loopback {
        Ok(())
    } else {
        Err(usage(format!(
            "refusing to load {host}: only 127.0.0.1, ::1 and localhost are benchmarked by default; \
             to benchmark your own broker on another machine, add --allow-remote"
        )))
    }
}

/// `localhost` is a name: it counts only when every address it resolves to is loopback.
fn resolves_to_loopback_only(host: &str) -> bool {
    match (host, 0).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|addr| addr.ip().is_loopback())
        }
        Err(_) => false,
    }
}

fn host_of(addr: &str) -> Result<String, LoadgenError> {
    let uri: tonic::transport::Uri = addr
        .parse()
        .map_err(|e| usage(format!("--addr `{addr}` is not a URI: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(usage(format!(
                "--addr `{addr}` must start with http:// or https://"
            )));
        }
    }
    uri.host()
        .map(str::to_owned)
        .ok_or_else(|| usage(format!("--addr `{addr}` has no host")))
}

pub(crate) fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<(), LoadgenError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(usage(format!("{name} {value} is outside {min}..={max}")))
    }
}

pub(crate) fn check_millis(
    name: &str,
    value: Duration,
    min_ms: u64,
    max_ms: u64,
) -> Result<(), LoadgenError> {
    let ms = u64::try_from(value.as_millis()).unwrap_or(u64::MAX);
    if (min_ms..=max_ms).contains(&ms) {
        Ok(())
    } else {
        Err(usage(format!(
            "{name} {ms}ms is outside {min_ms}..={max_ms} ms"
        )))
    }
}

pub(crate) fn usage(message: impl Into<String>) -> LoadgenError {
    LoadgenError::Usage(message.into())
}

pub(crate) fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        for addr in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "https://LOCALHOST:443",
            "http://[::1]:50051",
            "http://127.3.2.1",
        ] {
            assert!(check_loopback(addr).is_ok(), "{addr}");
        }
    }

    #[test]
    fn other_hosts_are_refused() {
        for addr in [
            "http://10.0.0.1:50051",
            "http://192.168.1.2:1",
            "http://example.com",
            "http://[::2]:1",
            "127.0.0.1:50051",
            "ftp://127.0.0.1",
        ] {
            assert!(check_loopback(addr).is_err(), "{addr}");
        }
    }
}
