//! `RestartArgs`, the command line of `seatbroker bench-restart`, and its validation
//! into a `RestartPlan`: every figure bounded, the organizations' quotas exactly their
//! sessions, the data directory new or empty. Nothing is started before this succeeds.

use std::path::PathBuf;
use std::time::Duration;

use super::super::bounds::*;
use super::super::config::{Output, Progress, check_millis, check_range, clock_seed, usage};
use super::super::error::LoadgenError;
use super::super::rng::Rng;
use super::super::setup::Layout;

/// Storm engines when `--storm-engines` is not given (or all sessions, when fewer).
const STORM_ENGINES_DEFAULT: u32 = 100_000;

/// Arguments of `seatbroker bench-restart`.
#[derive(clap::Args, Clone, Debug)]
pub struct RestartArgs {
    /// Live KRE sessions built through the daemon before it is killed, one engine each.
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: u32,
    /// Organizations. Each one's KRE quota is exactly its sessions, so any grant past
    /// them is over-admission; must divide --sessions and --members.
    #[arg(long, default_value_t = 10)]
    pub orgs: u32,
    /// Members with one API key each, shared round robin by the engines (each engine
    /// with its own session); a multiple of --orgs.
    #[arg(long, default_value_t = 1_000)]
    pub members: u32,
    /// Acquire+release pairs made before the sessions, so that the log holds history
    /// beyond the live state.
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Engines that heartbeat their recovered lease all at once after the restart
    /// [default: 100000, or --sessions when fewer].
    #[arg(long)]
    pub storm_engines: Option<u32>,
    /// How long the storm engines keep heartbeating after the restart.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub storm_duration: Duration,
    /// Heartbeat period of the storm engines after their first renewal: a production
    /// lease (30 s TTL) heartbeats every 10 s. Never longer than the lease's own interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub storm_interval: Duration,
    /// Storm engines that send Acquire again after the storm; each must get its own
    /// lease back.
    #[arg(long, default_value_t = 1_000)]
    pub retry_sample: u32,
    /// Bound on outstanding RPCs while building and during the storm.
    #[arg(long, default_value_t = 512)]
    pub in_flight: u32,
    /// HTTP/2 connections (the daemon takes 128 streams on each by default).
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// The daemon's lease TTL in milliseconds: sessions are held without heartbeats
    /// while they are built and while the daemon is down, so it must outlast that.
    #[arg(long, default_value_t = 3_600_000)]
    pub lease_ttl_ms: u32,
    /// Wait after building and after SERVING before memory is read (the daemon hands
    /// freed memory back once a second).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The daemon's data directory, missing or empty [default: a new directory under
    /// the system's temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Leave the data directory in place at the end (it is removed by default).
    #[arg(long)]
    pub keep_data_dir: bool,
    /// Print one JSON object to stdout instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of the run id (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The `seatbroker` binary whose `serve` is measured [default: this one], so that
    /// one bench compares two builds in the same sitting.
    #[arg(long)]
    pub daemon_binary: Option<PathBuf>,
    /// More flags for the daemon's `serve`, after `--` (e.g. `-- --commit-delay-us 0`).
    /// The daemon gets none of this shell's SEATBROKER_* variables.
    #[arg(last = true)]
    pub daemon_args: Vec<String>,
}

/// Where the daemon keeps its files.
#[derive(Clone, Debug)]
pub(crate) enum DataDirChoice {
    /// A new directory under the system's temporary directory.
    Temporary,
    /// The directory given, missing or empty.
    Given(PathBuf),
}

/// The validated run.
#[derive(Clone, Debug)]
pub(crate) struct RestartPlan {
    /// Organizations, members and engines (`layout.engines` is the live sessions).
    pub layout: Layout,
    /// KRE quota of each organization: exactly its sessions.
    pub quota_per_org: u32,
    /// Acquire+release pairs before the sessions.
    pub churn: u32,
    /// Engines `0..storm_engines` heartbeat after the restart.
    pub storm_engines: u32,
    /// How long the storm lasts, from its first heartbeat.
    pub storm_duration: Duration,
    /// The storm engines' period after the first wave (the lease's own may be shorter).
    pub storm_interval: Duration,
    /// Storm engines that retry Acquire after the storm.
    pub retry_sample: u32,
    /// Outstanding RPCs.
    pub in_flight: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// The daemon's `--lease-ttl-ms`.
    pub lease_ttl_ms: u32,
    /// Wait before memory is read.
    pub settle: Duration,
    /// Where the daemon keeps its files.
    pub data_dir: DataDirChoice,
    /// Leave the data directory at the end.
    pub keep_data_dir: bool,
    /// Human text or JSON.
    pub output: Output,
    /// Progress lines on stderr or none.
    pub progress: Progress,
    /// The binary whose `serve` is measured (`None`: this one).
    pub daemon_binary: Option<PathBuf>,
    /// Passed to `serve` after the bench's own flags.
    pub daemon_args: Vec<String>,
}

impl RestartPlan {
    /// Checks every bound and relation; the errors name the flag and the fix.
    pub(crate) fn from_args(args: RestartArgs) -> Result<Self, LoadgenError> {
        check_layout(&args)?;
        let storm_engines = storm_engines(&args)?;
        check_load(&args)?;
        check_times(&args)?;
        let data_dir = data_dir_choice(args.data_dir)?;
        let seed = args.seed.unwrap_or_else(clock_seed);
        Ok(Self {
            layout: Layout {
                run_id: format!("{:08x}", Rng::new(seed).next_u64() as u32),
                orgs: args.orgs,
                engines: args.sessions,
                members: args.members,
            },
            quota_per_org: args.sessions / args.orgs,
            churn: args.churn,
            storm_engines,
            storm_duration: args.storm_duration,
            storm_interval: args.storm_interval,
            retry_sample: args.retry_sample,
            in_flight: args.in_flight,
            connections: args.connections,
            lease_ttl_ms: args.lease_ttl_ms,
            settle: args.settle,
            data_dir,
            keep_data_dir: args.keep_data_dir,
            output: if args.json {
                Output::Json
            } else {
                Output::Human
            },
            progress: if args.quiet {
                Progress::Off
            } else {
                Progress::Stderr
            },
            daemon_binary: args.daemon_binary,
            daemon_args: args.daemon_args,
        })
    }
}

/// The storm engines (default `STORM_ENGINES_DEFAULT`, or every session when fewer)
/// and the retried acquires among them.
fn storm_engines(args: &RestartArgs) -> Result<u32, LoadgenError> {
    let storm_engines = args
        .storm_engines
        .unwrap_or(STORM_ENGINES_DEFAULT.min(args.sessions));
    if storm_engines > args.sessions {
        return Err(usage(format!(
            "--storm-engines {storm_engines} exceeds --sessions {}: the storm heartbeats recovered sessions",
            args.sessions
        )));
    }
    check_range(
        "--storm-engines",
        storm_engines.into(),
        1,
        args.sessions.into(),
    )?;
    check_range(
        "--retry-sample",
        args.retry_sample.into(),
        0,
        RESTART_RETRY_SAMPLE_MAX.min(storm_engines).into(),
    )?;
    Ok(storm_engines)
}

/// The churn, the calls in flight and the connections.
fn check_load(args: &RestartArgs) -> Result<(), LoadgenError> {
    check_range("--churn", args.churn.into(), 0, RESTART_CHURN_MAX.into())?;
    check_range(
        "--in-flight",
        args.in_flight.into(),
        1,
        IN_FLIGHT_MAX.into(),
    )?;
    check_range(
        "--connections",
        args.connections.into(),
        1,
        CONNECTIONS_MAX.into(),
    )
}

/// The storm's duration and period, the settling wait and the daemon's lease TTL.
fn check_times(args: &RestartArgs) -> Result<(), LoadgenError> {
    check_millis(
        "--storm-duration",
        args.storm_duration,
        DURATION_MS_MIN,
        DURATION_MS_MAX,
    )?;
    check_millis(
        "--storm-interval",
        args.storm_interval,
        STORM_INTERVAL_MS_MIN,
        STORM_INTERVAL_MS_MAX,
    )?;
    check_millis("--settle", args.settle, 0, RESTART_SETTLE_MS_MAX)?;
    // The daemon checks the upper bound itself and says so.
    if args.lease_ttl_ms < RESTART_LEASE_TTL_MS_MIN {
        return Err(usage(format!(
            "--lease-ttl-ms {} is below {RESTART_LEASE_TTL_MS_MIN}: the bench holds sessions without heartbeats while it builds them and restarts the daemon",
            args.lease_ttl_ms
        )));
    }
    Ok(())
}

fn data_dir_choice(given: Option<PathBuf>) -> Result<DataDirChoice, LoadgenError> {
    match given {
        Some(path) => {
            check_empty_or_missing(&path)?;
            Ok(DataDirChoice::Given(path))
        }
        None => Ok(DataDirChoice::Temporary),
    }
}

/// Sessions, organizations and members such that engine `g` lives in organization
/// `g % orgs` and every organization holds exactly `sessions / orgs` of them.
fn check_layout(args: &RestartArgs) -> Result<(), LoadgenError> {
    check_range("--sessions", args.sessions.into(), 1, ENGINES_MAX.into())?;
    check_range(
        "--orgs",
        args.orgs.into(),
        1,
        ORGS_MAX.min(args.sessions).into(),
    )?;
    check_range(
        "--members",
        args.members.into(),
        args.orgs.into(),
        args.sessions.into(),
    )?;
    if args.sessions % args.orgs != 0 {
        return Err(usage(format!(
            "--sessions {} must be a multiple of --orgs {}, so that each organization's quota is exactly its sessions",
            args.sessions, args.orgs
        )));
    }
    if args.members % args.orgs != 0 {
        return Err(usage(format!(
            "--members {} must be a multiple of --orgs {}, so that each organization has as many engines",
            args.members, args.orgs
        )));
    }
    Ok(())
}

/// The bench builds its data directory from nothing: an existing log would hold
/// another operator key and other sessions.
fn check_empty_or_missing(path: &std::path::Path) -> Result<(), LoadgenError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(usage(format!(
                "--data-dir {} is not empty: the bench builds its data directory from nothing",
                path.display()
            ))),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoadgenError::DataDir {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: RestartArgs,
    }

    fn check(line: &[&str]) -> Result<RestartPlan, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench-restart").chain(line.iter().copied()))
            .map_err(|e| e.to_string())?;
        RestartPlan::from_args(cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_million_sessions_and_a_storm_of_a_hundred_thousand() {
        let plan = check(&[]).unwrap();
        assert_eq!(plan.layout.engines, 1_000_000);
        assert_eq!(plan.quota_per_org, 100_000);
        assert_eq!(plan.storm_engines, 100_000);
        assert_eq!(plan.storm_duration, Duration::from_secs(60));
        assert!(matches!(plan.data_dir, DataDirChoice::Temporary));
    }

    #[test]
    fn the_storm_defaults_to_every_session_when_there_are_fewer() {
        let plan = check(&["--sessions", "2000", "--orgs", "2", "--members", "20"]).unwrap();
        assert_eq!(plan.storm_engines, 2000);
        assert_eq!(plan.quota_per_org, 1000);
    }

    #[test]
    fn bad_inputs_are_refused_with_the_flag_named() {
        for (line, needle) in [
            (&["--sessions", "0"][..], "--sessions 0 is outside"),
            (
                &["--sessions", "1000", "--storm-engines", "1001"],
                "exceeds --sessions",
            ),
            (&["--sessions", "1001"], "multiple of --orgs"),
            (&["--members", "1005"], "multiple of --orgs"),
            (&["--lease-ttl-ms", "30000"], "below 60000"),
            (&["--storm-interval", "10ms"], "--storm-interval 10ms"),
            (&["--retry-sample", "100001"], "--retry-sample"),
        ] {
            let error = check(line).expect_err(needle);
            assert!(error.contains(needle), "{line:?}: {error}");
        }
    }

    #[test]
    fn a_data_directory_with_files_is_refused() {
        let dir = std::env::temp_dir().join(format!("seatbroker-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.to_str().unwrap().to_owned();
        assert!(check(&["--data-dir", &path]).is_ok(), "empty is fine");
        std::fs::write(dir.join("LOCK"), b"").unwrap();
        let error = check(&["--data-dir", &path]).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("is not empty"), "{error}");
    }
}
