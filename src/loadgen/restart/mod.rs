//! `seatbroker bench-restart`: the restart benchmark. It owns its daemon from start to
//! end: it starts `seatbroker serve` on a data directory of its own, provisions
//! organizations, members and keys through the API, builds N live sessions (after an
//! optional churn of acquire+release pairs, so the log holds history), reads the
//! settled daemon's memory, kills it with SIGKILL, starts it again on the same
//! directory and measures time to SERVING, the recovery, memory after recovery against
//! before the kill, the reconnect storm, retried acquires and acquires past the quota.
//! A lost seat, an over-admission, or a storm lease never renewed fails the run.
//!
//! The bench talks to the daemon only from outside (gRPC, health, `/metrics`, `/proc`,
//! its log), so it measures the daemon as it is and as it will be.
//!
//! - `plan`: `RestartArgs` and their validation into a `RestartPlan`.
//! - `daemon`: the child process, its health, memory, metrics and log; the data directory.
//! - `sessions`: the engines, their compact leases, building them, the server's seat count.
//! - `storm`: the reconnect storm, the retried acquires, the quota probes.
//! - `report`: `RestartReport`, its checks and renderings.
//!
//! Bounds: every phase has one (`limits`: provisioning, building, SERVING, the storm
//! plus its drain, the settles), and the daemon is killed on every path out, by the
//! process id the bench started.

mod daemon;
mod plan;
mod report;
mod sessions;
mod storm;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::tls::ClientTlsFiles;

use super::bounds::{RESTART_PHASE_MS_MAX, RSS_SAMPLE_INTERVAL_MS};
use super::channels::{connect_all, lazy_plaintext};
use super::config::Progress;
use super::error::LoadgenError;
use super::quota_check::Verdict;
use super::setup;
use super::stats::report_progress;
use daemon::{BenchDataDir, Daemon, DaemonSpec};
use plan::{DataDirChoice, RestartPlan};
use report::{BuildFigures, DaemonFigures, RestartFigures};
use sessions::{Engines, HeldLease, Recorder, SeatCount, count_seats};
use storm::StormSettings;

pub use plan::RestartArgs;
pub use report::RestartReport;

/// Runs `seatbroker bench-restart`: validates, runs, prints the report (text or one
/// JSON object), and fails with `RestartChecks` (after printing) when a check failed.
pub async fn run(args: RestartArgs) -> Result<RestartReport, LoadgenError> {
    let plan = RestartPlan::from_args(args)?;
    let report = execute(&plan).await?;
    super::print_report(&report, RestartReport::to_text, plan.output)?;
    if report.verdict == Verdict::Fail {
        return Err(LoadgenError::RestartChecks(report.failures.clone()));
    }
    Ok(report)
}

/// The whole run; the data directory is removed when this returns (unless kept), and
/// each daemon is killed before it, on success and on error alike.
async fn execute(plan: &RestartPlan) -> Result<RestartReport, LoadgenError> {
    let data_dir = match &plan.data_dir {
        DataDirChoice::Temporary => {
            BenchDataDir::temporary(&plan.layout.run_id, plan.keep_data_dir)?
        }
        DataDirChoice::Given(path) => BenchDataDir::create(path.clone(), plan.keep_data_dir)?,
    };
    let spec = DaemonSpec {
        data_dir: data_dir.path().to_owned(),
        lease_ttl_ms: plan.lease_ttl_ms,
        operator_key: new_operator_key()?,
        extra_args: plan.daemon_args.clone(),
        binary: plan.daemon_binary.clone(),
    };
    let any_port: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut first = Daemon::start(&spec, any_port).await?;
    first.wait_serving().await?;
    say(
        plan,
        format!("daemon pid {} serving on {}", first.pid(), first.addr),
    );
    let (engines, leases, build) = build(plan, &spec, &first).await?;
    let before_kill = settled_figures(&first, &engines, &spec, plan).await?;
    say(plan, format!("killing pid {} (SIGKILL)", first.pid()));
    let listen = first.addr;
    first.kill().await?;
    let disk = data_dir.disk_use();
    let (second, restart) = restart(&spec, listen, &engines, plan, &before_kill).await?;
    let engines = Arc::new(reconnect(engines, &second, plan).await?);
    let leases = Arc::new(leases);
    let quota_probes = storm::probe_quotas(&engines).await?;
    say(
        plan,
        format!(
            "storm: {} engines for {:?}",
            plan.storm_engines, plan.storm_duration
        ),
    );
    let storm = run_storm(plan, &engines, &leases, second.pid()).await?;
    let retried_acquires = storm::retry_acquires(
        &engines,
        &leases,
        plan.retry_sample,
        plan.storm_engines,
        plan.in_flight,
    )
    .await?;
    second.kill().await?;
    let mut report = RestartReport {
        sessions: plan.layout.engines,
        orgs: plan.layout.orgs,
        members: plan.layout.members,
        quota_per_org: plan.quota_per_org,
        churn: plan.churn,
        lease_ttl_ms: plan.lease_ttl_ms,
        in_flight: plan.in_flight,
        connections: plan.connections,
        settle_s: plan.settle.as_secs_f64(),
        data_dir: data_dir.path().display().to_string(),
        data_dir_kept: plan.keep_data_dir,
        build,
        before_kill,
        disk,
        restart,
        storm,
        retried_acquires,
        quota_probes,
        verdict: Verdict::Ok,
        failures: Vec::new(),
    };
    report.check();
    Ok(report)
}

/// Starts the daemon again on the same data directory and port, and measures its way
/// to SERVING and its memory until it has settled.
async fn restart(
    spec: &DaemonSpec,
    listen: SocketAddr,
    engines: &Engines,
    plan: &RestartPlan,
    before_kill: &DaemonFigures,
) -> Result<(Daemon, RestartFigures), LoadgenError> {
    let mut daemon = Daemon::start(spec, listen).await?;
    let serving = daemon.wait_serving().await?;
    let memory_at_serving = daemon.memory()?;
    let cpu_s_at_serving = daemon.cpu_seconds();
    say(
        plan,
        format!(
            "restarted as pid {}: SERVING after {serving:?}",
            daemon.pid()
        ),
    );
    // Nothing is asked of the daemon until it has settled: its memory comes back by
    // itself, or not at all.
    let settled = settled_figures(&daemon, engines, spec, plan).await?;
    let rss_before = before_kill.memory.rss_mib;
    let figures = RestartFigures {
        listening_ms: daemon.listening_after.as_secs_f64() * 1e3,
        serving_ms: serving.as_secs_f64() * 1e3,
        cpu_s_at_serving,
        recovery_log: daemon.recovery_line(),
        rss_ratio: ratio(settled.memory.rss_mib, rss_before),
        hwm_ratio: ratio(
            memory_at_serving.hwm_mib.max(settled.memory.hwm_mib),
            rss_before,
        ),
        memory_at_serving,
        settled,
    };
    Ok((daemon, figures))
}

/// Provisions, runs the churn, then acquires every engine's session.
async fn build(
    plan: &RestartPlan,
    spec: &DaemonSpec,
    daemon: &Daemon,
) -> Result<(Engines, Vec<HeldLease>, BuildFigures), LoadgenError> {
    let channels = connect_all(&daemon.uri(), &ClientTlsFiles::default(), plan.connections).await?;
    let layout = &plan.layout;
    say(
        plan,
        format!(
            "provisioning {} organizations and {} members (run {})",
            layout.orgs, layout.members, layout.run_id
        ),
    );
    let member_keys = setup::provision_members(
        channels[0].clone(),
        &spec.operator_key,
        layout,
        plan.quota_per_org,
    )
    .await?;
    let engines = Arc::new(Engines::new(layout.clone(), member_keys, channels));
    let churn_recorder = Arc::new(Recorder::starting_now(Duration::from_millis(
        RESTART_PHASE_MS_MAX,
    ))?);
    let progress = watch(plan, &churn_recorder, "restart churn");
    // No more pairs in flight than half the seats, so the churn rarely waits for one.
    let churn_workers = plan.in_flight.min((layout.engines / 2).max(1));
    let churned = sessions::churn(&engines, plan.churn, churn_workers, &churn_recorder).await;
    stop(progress);
    churned?;
    let churn_s = churn_recorder.phases.start.elapsed().as_secs_f64();
    let fill_recorder = Arc::new(Recorder::starting_now(Duration::from_millis(
        RESTART_PHASE_MS_MAX,
    ))?);
    let progress = watch(plan, &fill_recorder, "restart sessions");
    let filled = sessions::fill(&engines, plan.in_flight, &fill_recorder).await;
    stop(progress);
    let leases = filled?;
    let sessions_s = fill_recorder.phases.start.elapsed().as_secs_f64();
    let fill = fill_recorder.stats.snapshot()?;
    let mut errors = churn_recorder.stats.snapshot()?.errors;
    for (code, count) in fill.errors {
        *errors.entry(code).or_default() += count;
    }
    let build = BuildFigures {
        churn_s,
        sessions_s,
        acquires_per_sec: f64::from(layout.engines) / sessions_s.max(1e-9),
        acquire_latency_us: fill.methods.get("acquire").copied().unwrap_or_default(),
        errors,
        snapshots: daemon.snapshot_lines(),
    };
    let engines = Arc::into_inner(engines)
        .ok_or_else(|| LoadgenError::Internal("a build worker outlived its phase".to_owned()))?;
    Ok((engines, leases, build))
}

/// The same engines on fresh connections to the restarted daemon.
async fn reconnect(
    engines: Engines,
    daemon: &Daemon,
    plan: &RestartPlan,
) -> Result<Engines, LoadgenError> {
    let channels = connect_all(&daemon.uri(), &ClientTlsFiles::default(), plan.connections).await?;
    Ok(engines.reconnected(channels))
}

/// Waits `--settle` asking nothing of the daemon (its resident memory read once a
/// second), then reads its memory, CPU, metrics and seat count.
async fn settled_figures(
    daemon: &Daemon,
    engines: &Engines,
    spec: &DaemonSpec,
    plan: &RestartPlan,
) -> Result<DaemonFigures, LoadgenError> {
    let settling_from = Instant::now();
    let mut rss_settling_mib = Vec::new();
    let sample_every = Duration::from_millis(RSS_SAMPLE_INTERVAL_MS);
    let samples = plan.settle.as_millis() / sample_every.as_millis();
    for sample in 1..=samples as u32 {
        tokio::time::sleep_until(settling_from + sample_every * sample).await;
        rss_settling_mib.push(daemon.memory()?.rss_mib);
    }
    tokio::time::sleep_until(settling_from + plan.settle).await;
    // Read first: the calls below must not count in it.
    let memory = daemon.memory()?;
    let cpu_s = daemon.cpu_seconds();
    let metrics = daemon.scrape().await;
    let seats = seat_count(daemon, engines, spec, plan).await?;
    Ok(DaemonFigures {
        memory,
        rss_settling_mib,
        cpu_s,
        metrics,
        seats,
    })
}

/// The daemon's own count of sessions per organization, asked on a connection of its own.
async fn seat_count(
    daemon: &Daemon,
    engines: &Engines,
    spec: &DaemonSpec,
    plan: &RestartPlan,
) -> Result<SeatCount, LoadgenError> {
    count_seats(
        lazy_plaintext(&daemon.uri())?,
        &spec.operator_key,
        &engines.layout,
        plan.quota_per_org,
    )
    .await
}

async fn run_storm(
    plan: &RestartPlan,
    engines: &Arc<Engines>,
    leases: &Arc<Vec<HeldLease>>,
    daemon_pid: u32,
) -> Result<storm::StormReport, LoadgenError> {
    // The lease's own interval bounds the period: a longer one would let leases lapse.
    let lease_interval = engines.lease_heartbeat_interval();
    let interval = if lease_interval.is_zero() {
        plan.storm_interval
    } else {
        plan.storm_interval.min(lease_interval)
    };
    let settings = StormSettings {
        engines: plan.storm_engines,
        duration: plan.storm_duration,
        interval,
        workers: plan.in_flight,
        progress: plan.progress,
        daemon_pid,
    };
    storm::storm(Arc::clone(engines), Arc::clone(leases), settings).await
}

fn ratio(after: f64, before: f64) -> f64 {
    if before > 0.0 { after / before } else { 0.0 }
}

/// 48 hex digits from the system's random source: the daemon's operator key, which
/// the bench passes in the daemon's environment and uses for provisioning.
fn new_operator_key() -> Result<String, LoadgenError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| {
        LoadgenError::Internal(format!("no random bytes for the operator key: {e}"))
    })?;
    Ok(hex::encode(bytes))
}

/// A progress line on stderr, unless `--quiet`.
fn say(plan: &RestartPlan, line: String) {
    if plan.progress == Progress::Stderr {
        eprintln!("bench-restart: {line}");
    }
}

/// The generator's progress line every second while a phase runs.
fn watch(
    plan: &RestartPlan,
    recorder: &Recorder,
    label: &str,
) -> Option<tokio::task::JoinHandle<()>> {
    (plan.progress == Progress::Stderr).then(|| {
        tokio::spawn(report_progress(
            Arc::clone(&recorder.stats),
            recorder.phases,
            label.to_owned(),
        ))
    })
}

fn stop(progress: Option<tokio::task::JoinHandle<()>>) {
    if let Some(task) = progress {
        task.abort();
    }
}
