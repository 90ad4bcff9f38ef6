//! The load generator behind `seatbroker bench`. It drives a broker on this machine
//! (or an in-process no-op SessionService, the ceiling of the client) with many
//! simulated runtime engines over gRPC, and reports throughput, latency percentiles,
//! errors by status code and, for `contention`, a check that granted sessions never
//! exceeded the quota.
//!
//! Entry points: [`run`] (validate, run, print, exit status) and [`execute`] (one
//! target, no printing). The only dependency on the rest of the crate is the
//! generated protobuf code at `crate::proto`.
//!
//! Modules:
//! - `args`: `BenchArgs`, the command-line surface, flattened into `seatbroker bench`.
//! - `config`: validation into a `Plan`; per-workload defaults; loopback-only targets.
//! - `bounds`: every bound of the load generator, with `const` assertions on how they
//!   relate (the broker's own come from `crate::limits`).
//! - `error`: `LoadgenError` and its exit codes.
//! - `channels`: one tonic `Channel` per HTTP/2 connection, TLS, the auth metadata.
//! - `setup`: provisioning organizations, members, licenses and API keys on the broker.
//! - `engine`: one task per simulated engine; the unary workloads.
//! - `stream`: `--protocol stream`, one task per simulated host driving one session
//!   channel with batches of operations; acquire-release, heartbeat and hosts.
//! - `terminate`: `--terminate-rate`, an admin terminating held sessions while the
//!   hosts run, and the time each `ended` event took to reach its stream.
//! - `pacer`: `--rate`, the absolute start schedule (coordinated omission corrected).
//! - `runner`: one run against one target, bounded by the deadline and the drain.
//! - `stats`: phases, sharded latency histograms, error counts, the progress line.
//! - `quota_check`: the sweep over client-side lease intervals.
//! - `noop`: the in-process no-op server.
//! - `restart`: `seatbroker bench-restart`, which owns its daemon: builds N live
//!   sessions, kills it, restarts it, and measures recovery and the reconnect storm.
//! - `report`: `Report`, `Comparison`, and their text and JSON renderings.
//! - `rng`: SplitMix64 for hold times and jitter.
//!
//! Invariants: every loop stops at the run's deadline; every RPC is bounded by the
//! channel timeout; engines still running `DRAIN_MS_MAX` after the deadline are
//! aborted; nothing but loopback addresses is ever contacted.

mod args;
pub mod bounds;
mod channels;
mod config;
mod cpu;
mod engine;
mod error;
mod noop;
mod pacer;
pub mod provision;
mod quota_check;
mod report;
mod restart;
mod rng;
mod runner;
mod setup;
mod stats;
mod stream;
mod terminate;

#[cfg(test)]
mod tests;

use std::io::Write as _;

pub use args::{BenchArgs, OperatorKeyText, Protocol, TargetKind, Workload};
pub use config::{
    BenchConfig, BrokerTarget, Mode, Output, Plan, Progress, StreamConfig, Target, check_loopback,
};
pub use cpu::{CpuCores, CpuPerOp};
pub use error::LoadgenError;
pub use noop::serve_standalone as serve_noop;
pub use quota_check::{QuotaCheck, Verdict};
pub use report::{Comparison, Outcome, Ratio, Report};
pub use restart::{RestartArgs, RestartReport, run as run_restart};
pub use stats::Latency;
pub use terminate::TerminationReport;

/// Runs `seatbroker bench`: validates the arguments, runs the plan, prints the human
/// report or one JSON object to stdout, and fails with `QuotaViolated` (after
/// printing) when a contention check saw more sessions than the quota.
pub async fn run(args: BenchArgs) -> Result<Outcome, LoadgenError> {
    let plan = Plan::from_args(args)?;
    let config = if plan.half_peak {
        paced_at_half_peak(&plan).await?
    } else {
        plan.config.clone()
    };
    let outcome = match &plan.mode {
        Mode::Single(target) => Outcome::Single(Box::new(execute(&config, target).await?)),
        Mode::CompareNoop(broker, noop) => {
            let server_pid = broker.server_pid;
            let broker = execute(&config, &Target::Broker(broker.clone())).await?;
            let noop = match noop {
                // The ceiling runs on the broker's cores (`taskset` pinning included).
                Target::NoopProcess => runner::execute_noop_process(&config, server_pid).await?,
                other => execute(&config, other).await?,
            };
            Outcome::Compare(Box::new(Comparison::new(broker, noop)))
        }
    };
    print_outcome(&outcome, plan.output)?;
    check_quota(&outcome)?;
    check_terminations(&outcome)?;
    Ok(outcome)
}

/// `TerminationsMissing` when an acknowledged termination's event never arrived.
fn check_terminations(outcome: &Outcome) -> Result<(), LoadgenError> {
    for report in outcome.reports() {
        if let Some(terminations) = report.terminations.as_ref().filter(|t| t.missing > 0) {
            return Err(LoadgenError::TerminationsMissing {
                missing: terminations.missing,
                acknowledged: terminations.acknowledged,
            });
        }
    }
    Ok(())
}

/// Runs the plan's first target unpaced and returns its config paced at half the
/// rate it reached. The second run gets another seed, hence fresh organizations on
/// a broker.
async fn paced_at_half_peak(plan: &Plan) -> Result<BenchConfig, LoadgenError> {
    let first = match &plan.mode {
        Mode::Single(target) => target.clone(),
        Mode::CompareNoop(broker, _) => Target::Broker(broker.clone()),
    };
    let peak = execute(&plan.config, &first).await?;
    let rate = (peak.ops_per_sec / 2.0).round().max(1.0) as u32;
    if plan.config.progress == Progress::Stderr {
        eprintln!(
            "bench: peak {:.0} ops/s; measuring paced at half of it, {rate} ops/s",
            peak.ops_per_sec
        );
    }
    Ok(BenchConfig {
        rate: Some(rate),
        seed: plan.config.seed.wrapping_add(1),
        ..plan.config.clone()
    })
}

/// `QuotaViolated` when any report's contention check failed.
fn check_quota(outcome: &Outcome) -> Result<(), LoadgenError> {
    match outcome
        .reports()
        .into_iter()
        .find(|report| !report.quota_ok())
    {
        Some(failed) => Err(LoadgenError::QuotaViolated {
            max_concurrent: failed.quota_check.as_ref().map_or(0, |c| c.max_concurrent),
            quota: failed.quota,
        }),
        None => Ok(()),
    }
}

/// Runs `config` against one target and returns its report without printing it
/// (progress lines still go to stderr when `config.progress` says so).
pub async fn execute(config: &BenchConfig, target: &Target) -> Result<Report, LoadgenError> {
    match target {
        Target::Broker(broker) => runner::execute_broker(config, broker).await,
        Target::Noop => runner::execute_noop(config, noop::NoopOptions::for_config(config)).await,
        Target::NoopProcess => runner::execute_noop_process(config, None).await,
    }
}

fn print_outcome(outcome: &Outcome, output: Output) -> Result<(), LoadgenError> {
    print_report(outcome, Outcome::to_text, output)
}

/// Writes `report` to stdout as its human text or as one JSON object on one line.
pub(crate) fn print_report<R: serde::Serialize>(
    report: &R,
    to_text: impl FnOnce(&R) -> String,
    output: Output,
) -> Result<(), LoadgenError> {
    let text = match output {
        Output::Human => to_text(report),
        Output::Json => {
            let json = serde_json::to_string(report)
                .map_err(|e| LoadgenError::Internal(format!("report to JSON: {e}")))?;
            json + "\n"
        }
    };
    // Written rather than `print!`ed: a closed stdout (a pipe to `head`) is an error to
    // report, not a panic.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(LoadgenError::Stdout)
}
