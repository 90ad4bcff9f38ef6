//! The load generator's own bounds (its engines, connections, phases and reports).
//! The broker's bounds it must respect (quota, organization id, emails per request,
//! TLS files) are imported from [`crate::limits`], never restated. Names carry the
//! unit and end with the qualifier (`_max`, `_min`); the `const` assertions at the
//! bottom keep their relations true.

use crate::limits::{CHANNEL_OPERATIONS_PER_MESSAGE_MAX, KRE_SESSIONS_MAX, ORGANIZATIONS_MAX};

/// Simulated runtime engines in one run; each is one task holding at most one lease.
pub const ENGINES_MAX: u32 = 1_000_000;
/// Organizations provisioned for one run.
pub const ORGS_MAX: u32 = 10_000;
/// Outstanding RPCs across all engines (the `--in-flight` semaphore).
pub const IN_FLIGHT_MAX: u32 = 10_000;
/// HTTP/2 connections (one tonic `Channel` each).
pub const CONNECTIONS_MAX: u32 = 256;
/// Shortest measured phase of one run.
pub const DURATION_MS_MIN: u64 = 100;
/// Longest measured phase.
pub const DURATION_MS_MAX: u64 = 3_600_000;
/// Warmup before measuring; zero is allowed.
pub const WARMUP_MS_MAX: u64 = 600_000;
/// How long an engine holds a lease (`realistic`, `contention`).
pub const HOLD_MS_MAX: u64 = 600_000;
/// Idle time between a release and the next acquire (`realistic`).
pub const THINK_MS_MAX: u64 = 600_000;
/// Base retry delay after RESOURCE_EXHAUSTED (`contention`); jittered up to twice this.
pub const BACKOFF_MS_MAX: u64 = 10_000;
/// Pause after an unexpected error, so a failing broker is not spun against.
pub const ERROR_BACKOFF_MS: u64 = 10;
/// Heartbeat intervals sent by the server are clamped up to this, so a bad value
/// cannot turn `realistic` into a busy loop.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 10;

/// Operations in one message of a session channel (`--batch`): the broker closes a
/// stream whose message carries more.
pub const STREAM_BATCH_MAX: u32 = CHANNEL_OPERATIONS_PER_MESSAGE_MAX as u32;
/// Session channels per connection (`--streams`); each is one simulated host.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 100_000;
/// Messages a host's stream queues before its sender waits for the connection.
pub const STREAM_OUTBOX: usize = 16;

/// Terminations per second (`--terminate-rate`).
pub const TERMINATE_RATE_MAX: u32 = 10_000;
/// `TerminateSession` calls outstanding at once; the schedule waits past it.
pub const TERMINATIONS_IN_FLIGHT_MAX: usize = 64;
/// Held-lease slots one termination looks at, from a random start, before the tick
/// counts as skipped (so a nearly empty table costs a bounded scan).
pub const TERMINATION_PICK_TRIES_MAX: usize = 4_096;

/// Client-side timeout of one measured RPC (`stats::timed_rpc`).
pub const RPC_TIMEOUT_MS: u64 = 10_000;
/// Timeout of establishing one connection.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// After the deadline, engines get this long to finish their last RPC and release;
/// engines still running then are aborted and reported as unfinished.
pub const DRAIN_MS_MAX: u64 = 2 * RPC_TIMEOUT_MS + 1_000;
/// Provisioning organizations, members, licenses and keys on the broker.
pub const SETUP_MS_MAX: u64 = 600_000;
/// Outstanding setup RPCs.
pub const SETUP_IN_FLIGHT_MAX: usize = 64;

/// Lease intervals kept for the quota check, across all engines (16 bytes each).
pub const INTERVALS_MAX: usize = 4_000_000;
/// Highest latency the histograms track; longer calls saturate here.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits of the latency histograms.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Histogram shards: engines record into `engine % STATS_SHARDS`, so a lock is rarely contended.
pub const STATS_SHARDS: usize = 8;
/// How often the progress line is written to stderr.
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Concurrent streams per connection the in-process no-op server accepts.
pub const NOOP_STREAMS_PER_CONNECTION_MAX: u32 = IN_FLIGHT_MAX;
/// Batches of events the no-op server's channel queues for a slow reader.
pub const NOOP_CHANNEL_OUTBOX: usize = 64;
/// How long stopping the no-op server may take.
pub const NOOP_STOP_MS_MAX: u64 = 5_000;

// ----- The restart benchmark (`seatbroker bench-restart`). -----

/// Acquire+release pairs made before the live sessions, so the log holds history.
pub const RESTART_CHURN_MAX: u32 = 10_000_000;
/// Shortest lease TTL the restart bench gives its daemon: it holds the sessions without
/// heartbeats while it builds them and while the daemon is down and recovers.
pub const RESTART_LEASE_TTL_MS_MIN: u32 = 60_000;
/// One phase of the restart bench that runs until its work is done: the churn, the
/// live sessions, the retried acquires.
pub const RESTART_PHASE_MS_MAX: u64 = 3_600_000;
/// Indices a build worker takes at a time from the shared counter.
pub const RESTART_BUILD_CHUNK: u32 = 64;
/// Attempts at one call answered UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED or ABORTED
/// while building, before the run gives up.
pub const RESTART_ATTEMPTS_MAX: u32 = 50;
/// Waits after building and after SERVING before memory is read.
pub const RESTART_SETTLE_MS_MAX: u64 = 600_000;
/// How often the daemon's resident memory is read while it settles.
pub const RSS_SAMPLE_INTERVAL_MS: u64 = 1_000;
/// Storm engines that retry Acquire after the storm.
pub const RESTART_RETRY_SAMPLE_MAX: u32 = 100_000;
/// Shortest heartbeat period of the storm engines after their first renewal.
pub const STORM_INTERVAL_MS_MIN: u64 = 100;
/// Longest heartbeat period of the storm engines.
pub const STORM_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Engines listed by index in the report when their seat was lost (the count is exact).
pub const LOST_ENGINES_LISTED_MAX: usize = 16;
/// From spawning the daemon to its listening line.
pub const DAEMON_LISTEN_MS_MAX: u64 = 30_000;
/// From spawning the daemon to health SERVING, recovery of the largest log included.
pub const DAEMON_SERVING_MS_MAX: u64 = 600_000;
/// Period of the health checks while waiting for SERVING: the resolution of the time
/// to SERVING.
pub const HEALTH_POLL_MS: u64 = 2;
/// One health check: a daemon that is starting (or stuck) must not hold the poll up.
pub const HEALTH_CHECK_MS_MAX: u64 = 1_000;
/// Waiting for a killed daemon to be reaped.
pub const DAEMON_EXIT_MS_MAX: u64 = 10_000;
/// Lines of the daemon's log kept to explain a failure.
pub const DAEMON_LOG_LINES_MAX: usize = 40;
/// Bytes of one `/metrics` answer read.
pub const METRICS_RESPONSE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// One `/metrics` scrape.
pub const METRICS_SCRAPE_MS_MAX: u64 = 10_000;

const _: () = assert!(DURATION_MS_MIN <= DURATION_MS_MAX);
const _: () = assert!(CHANNEL_OPERATIONS_PER_MESSAGE_MAX <= u32::MAX as usize);
const _: () = assert!(ORGS_MAX <= ENGINES_MAX);
const _: () = assert!(
    KRE_SESSIONS_MAX >= ENGINES_MAX,
    "a quota can cover every engine"
);
const _: () = assert!(ORGS_MAX as usize <= ORGANIZATIONS_MAX);
const _: () = assert!(
    DRAIN_MS_MAX > RPC_TIMEOUT_MS,
    "an engine's last RPC fits in the drain"
);
const _: () = assert!(
    INTERVALS_MAX / (ENGINES_MAX as usize) >= 4,
    "every engine keeps intervals"
);
const _: () = assert!(NOOP_STREAMS_PER_CONNECTION_MAX >= IN_FLIGHT_MAX);
const _: () = assert!(
    LATENCY_US_MAX >= RPC_TIMEOUT_MS * 1_000,
    "timeouts fit the histogram"
);
const _: () = assert!(ERROR_BACKOFF_MS >= 1 && HEARTBEAT_INTERVAL_MS_MIN >= 1);
const _: () = assert!(STORM_INTERVAL_MS_MIN >= HEARTBEAT_INTERVAL_MS_MIN);
const _: () = assert!(STORM_INTERVAL_MS_MIN <= STORM_INTERVAL_MS_MAX);
const _: () = assert!(RESTART_RETRY_SAMPLE_MAX <= ENGINES_MAX);
const _: () =
    assert!(HEALTH_POLL_MS < HEALTH_CHECK_MS_MAX && HEALTH_CHECK_MS_MAX < DAEMON_LISTEN_MS_MAX);
const _: () = assert!(DAEMON_LISTEN_MS_MAX <= DAEMON_SERVING_MS_MAX);
const _: () = assert!(RESTART_BUILD_CHUNK >= 1 && RESTART_ATTEMPTS_MAX >= 1);
