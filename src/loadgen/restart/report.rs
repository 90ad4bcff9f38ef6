//! `RestartReport`: the figures of one restart bench, the checks that failed, and
//! their renderings (a text block, or one JSON object).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::super::quota_check::Verdict;
use super::super::report::{errors_text, latency_text};
use super::super::stats::Latency;
use super::daemon::{DiskUse, Memory, MetricsSample, RecoveryLine, SnapshotLines};
use super::sessions::SeatCount;
use super::storm::{QuotaProbes, RetriedAcquires, StormReport};

/// Everything one run measured.
#[derive(Serialize, Clone, Debug)]
pub struct RestartReport {
    /// Live sessions built, one engine each.
    pub sessions: u32,
    /// Organizations.
    pub orgs: u32,
    /// Members (and API keys) shared by the engines.
    pub members: u32,
    /// KRE quota of each organization: exactly its sessions.
    pub quota_per_org: u32,
    /// Acquire+release pairs made before the sessions.
    pub churn: u32,
    /// The daemon's lease TTL, milliseconds.
    pub lease_ttl_ms: u32,
    /// Outstanding RPCs at most.
    pub in_flight: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// The wait before memory was read, seconds.
    pub settle_s: f64,
    /// The daemon's data directory.
    pub data_dir: String,
    /// Whether it was left in place.
    pub data_dir_kept: bool,
    /// Building the log through the first daemon.
    pub build: BuildFigures,
    /// The first daemon, settled, before SIGKILL.
    pub before_kill: DaemonFigures,
    /// The data directory after the kill, per top-level entry.
    pub disk: BTreeMap<String, DiskUse>,
    /// The second daemon, on the same data directory.
    pub restart: RestartFigures,
    /// The reconnect storm.
    pub storm: StormReport,
    /// Storm engines that sent Acquire again.
    pub retried_acquires: RetriedAcquires,
    /// One acquire past the quota per organization, right after SERVING.
    pub quota_probes: QuotaProbes,
    /// OK when no check failed.
    pub verdict: Verdict,
    /// The checks that failed, one sentence each.
    pub failures: Vec<String>,
}

/// Building the churn and the live sessions.
#[derive(Serialize, Clone, Debug)]
pub struct BuildFigures {
    /// The churn's acquire+release pairs, seconds.
    pub churn_s: f64,
    /// The live sessions, seconds.
    pub sessions_s: f64,
    /// Sessions granted per second while building them.
    pub acquires_per_sec: f64,
    /// Latency of those acquires, microseconds.
    pub acquire_latency_us: Latency,
    /// Failed calls while building (churn included; all were retried), by gRPC code.
    pub errors: BTreeMap<&'static str, u64>,
    /// Snapshots the first daemon wrote while the log grew.
    pub snapshots: SnapshotLines,
}

/// A daemon's state read from outside.
#[derive(Serialize, Clone, Debug)]
pub struct DaemonFigures {
    /// From /proc/PID/status, after the settle.
    pub memory: Memory,
    /// VmRSS once a second while it settled (nothing asked of it meanwhile), MiB.
    pub rss_settling_mib: Vec<f64>,
    /// CPU seconds since it started.
    pub cpu_s: Option<f64>,
    /// From /metrics.
    pub metrics: Option<MetricsSample>,
    /// Its own count of sessions per organization.
    pub seats: SeatCount,
}

/// The restart on the same data directory.
#[derive(Serialize, Clone, Debug)]
pub struct RestartFigures {
    /// From spawning to the listening line (health answers NOT_SERVING from then on).
    pub listening_ms: f64,
    /// From spawning to health SERVING.
    pub serving_ms: f64,
    /// CPU seconds the daemon had used at SERVING: how much of the wait was work.
    pub cpu_s_at_serving: Option<f64>,
    /// The daemon's "recovered the data directory" line.
    pub recovery_log: Option<RecoveryLine>,
    /// Memory right after SERVING (VmHWM: the peak of the recovery).
    pub memory_at_serving: Memory,
    /// After the settle (nothing asked of the daemon since SERVING), before the storm.
    pub settled: DaemonFigures,
    /// Settled resident memory after the restart / before the kill.
    pub rss_ratio: f64,
    /// Peak resident memory of the restart (VmHWM) / settled resident before the kill.
    pub hwm_ratio: f64,
}

impl RestartReport {
    /// The human report.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        self.write_setting(&mut text);
        self.write_build(&mut text);
        self.write_restart(&mut text);
        self.write_storm(&mut text);
        self.write_checks(&mut text);
        text
    }

    fn write_setting(&self, text: &mut String) {
        let _ = writeln!(
            text,
            "seatbroker bench-restart: {} sessions in {} orgs (quota {} each), {} members, churn {}, TTL {} ms",
            self.sessions,
            self.orgs,
            self.quota_per_org,
            self.members,
            self.churn,
            self.lease_ttl_ms
        );
        let _ = writeln!(
            text,
            "  in-flight {}  connections {}  settle {:.1}s  data dir {}{}",
            self.in_flight,
            self.connections,
            self.settle_s,
            self.data_dir,
            if self.data_dir_kept { " (kept)" } else { "" }
        );
    }

    fn write_build(&self, text: &mut String) {
        let build = &self.build;
        let _ = writeln!(
            text,
            "build       churn {:.1}s, sessions {:.1}s ({:.0} acquires/s), acquire us {}",
            build.churn_s,
            build.sessions_s,
            build.acquires_per_sec,
            latency_text(&build.acquire_latency_us)
        );
        let _ = writeln!(
            text,
            "            errors {}; snapshots {} ({} ms in all)",
            errors_text(&build.errors),
            build.snapshots.count,
            build.snapshots.millis
        );
        let before = &self.before_kill;
        let _ = writeln!(
            text,
            "before kill RSS {:.1} MiB  HWM {:.1} MiB  active {}; while settling, MiB: {}",
            before.memory.rss_mib,
            before.memory.hwm_mib,
            before.seats.active,
            samples_text(&before.rss_settling_mib)
        );
        let disk: Vec<String> = self
            .disk
            .iter()
            .map(|(name, used)| {
                format!(
                    "{name} {} files {:.1} MiB",
                    used.files,
                    used.bytes as f64 / 1_048_576.0
                )
            })
            .collect();
        let _ = writeln!(text, "disk        {}", disk.join(", "));
    }

    fn write_restart(&self, text: &mut String) {
        let restart = &self.restart;
        let recovery = restart
            .recovery_log
            .map_or("no recovery line".to_owned(), |line| {
                format!(
                    "recovery {} ms, {} records, {} live leases",
                    line.millis, line.records, line.live_leases
                )
            });
        let cpu = restart
            .cpu_s_at_serving
            .map_or(String::new(), |cpu| format!(" (CPU {cpu:.2}s)"));
        let _ = writeln!(
            text,
            "restart     listening {:.0} ms, SERVING {:.0} ms{cpu}; {recovery}",
            restart.listening_ms, restart.serving_ms
        );
        let _ = writeln!(
            text,
            "            RSS at SERVING {:.1} MiB, settled {:.1} MiB ({:.2}x before), HWM {:.1} MiB ({:.2}x); active {}",
            restart.memory_at_serving.rss_mib,
            restart.settled.memory.rss_mib,
            restart.rss_ratio,
            restart
                .memory_at_serving
                .hwm_mib
                .max(restart.settled.memory.hwm_mib),
            restart.hwm_ratio,
            restart.settled.seats.active
        );
        let _ = writeln!(
            text,
            "            RSS while settling, MiB: {}",
            samples_text(&restart.settled.rss_settling_mib)
        );
    }

    fn write_storm(&self, text: &mut String) {
        let storm = &self.storm;
        let renewed = storm.all_renewed_ms.map_or(
            format!("{} of {} renewed", storm.renewed, storm.engines),
            |ms| format!("all {} renewed after {ms:.0} ms", storm.engines),
        );
        let _ = writeln!(
            text,
            "storm       {renewed} (in flight {}); then every {} ms for {:.0}s: {} heartbeats OK",
            storm.in_flight, storm.interval_ms, storm.duration_s, storm.heartbeats_ok
        );
        let _ = writeln!(
            text,
            "            first wave us  {}",
            latency_text(&storm.first_wave_latency_us)
        );
        let _ = writeln!(
            text,
            "            whole storm us {}",
            latency_text(&storm.latency_us)
        );
        let show = |us: Option<f64>| us.map_or("n/a".to_owned(), |us| format!("{us:.1} us"));
        let _ = writeln!(
            text,
            "            errors {}; lost {}; CPU per heartbeat: daemon {}, bench {}",
            errors_text(&storm.errors),
            storm.lost,
            show(storm.cpu_per_heartbeat.server_us),
            show(storm.cpu_per_heartbeat.client_us)
        );
        let retried = &self.retried_acquires;
        let _ = writeln!(
            text,
            "retried     {} acquires: {} same lease, {} other, refused {}; us {}",
            retried.sampled,
            retried.same_lease,
            retried.other_lease,
            errors_text(&retried.refused),
            latency_text(&retried.latency_us)
        );
        let probes = &self.quota_probes;
        let _ = writeln!(
            text,
            "past quota  {} probes: {} refused RESOURCE_EXHAUSTED, {} granted, other {}",
            probes.orgs,
            probes.refused,
            probes.granted,
            errors_text(&probes.other)
        );
    }

    /// Fills `failures` and `verdict` from the figures: a lost seat, an over-admission,
    /// a storm lease never renewed, a retried acquire that did not find its lease.
    pub(crate) fn check(&mut self) {
        let mut failures = Vec::new();
        let before = self.before_kill.seats;
        if before.orgs_short + before.orgs_over > 0 {
            failures.push(format!(
                "before the kill {} organizations held fewer sessions than built and {} more",
                before.orgs_short, before.orgs_over
            ));
        }
        let after = self.restart.settled.seats;
        if after.orgs_short > 0 {
            failures.push(format!(
                "after the restart {} organizations held fewer sessions than their quota ({} of {} in all): seats lost",
                after.orgs_short,
                after.active,
                u64::from(self.sessions)
            ));
        }
        if after.orgs_over > 0 || self.quota_probes.granted > 0 {
            failures.push(format!(
                "over-admission: {} organizations past their quota after the restart, {} acquires past the quota granted",
                after.orgs_over, self.quota_probes.granted
            ));
        }
        if !self.quota_probes.other.is_empty() {
            failures.push(format!(
                "acquires past the quota were answered {} instead of RESOURCE_EXHAUSTED",
                errors_text(&self.quota_probes.other)
            ));
        }
        let storm = &self.storm;
        if storm.lost > 0 {
            failures.push(format!(
                "{} storm engines were told their lease is gone (first: {:?}): seats lost",
                storm.lost, storm.lost_engines
            ));
        }
        let unanswered = storm.engines - storm.renewed - storm.lost;
        if unanswered > 0 {
            failures.push(format!(
                "{unanswered} storm engines were never renewed within {:.0}s",
                storm.duration_s
            ));
        }
        let retried = &self.retried_acquires;
        if retried.other_lease > 0 || !retried.refused.is_empty() {
            failures.push(format!(
                "{} retried acquires got another lease and {} were refused ({})",
                retried.other_lease,
                retried.refused.values().sum::<u64>(),
                errors_text(&retried.refused)
            ));
        }
        self.verdict = if failures.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Fail
        };
        self.failures = failures;
    }

    fn write_checks(&self, text: &mut String) {
        if self.failures.is_empty() {
            let _ = writeln!(
                text,
                "checks: OK (no seat lost, no over-admission, every storm lease renewed)"
            );
        }
        for failure in &self.failures {
            let _ = writeln!(text, "checks: FAIL {failure}");
        }
    }
}

/// Memory samples in whole MiB.
fn samples_text(samples: &[f64]) -> String {
    let parts: Vec<String> = samples.iter().map(|mib| format!("{mib:.0}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}
