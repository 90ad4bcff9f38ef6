//! CPU time spent by the processes of a run, read from `/proc`: this load generator,
//! and the server it drives when its process id is known (the no-op child always;
//! the broker with `--server-pid`). On a shared, noisy machine the CPU a server
//! spends per operation moves much less from one minute to the next than its
//! throughput does, so it is the steadier figure to compare two builds by.

use std::time::Duration;

use procfs::process::Process;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// CPU microseconds per answered call in the measured window; `None` where a
/// process could not be read.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuPerOp {
    /// The server driven (broker or no-op).
    pub server_us: Option<f64>,
    /// This load generator.
    pub client_us: Option<f64>,
}

/// Cores' worth of CPU each process used over the measured window (1.0 is one core
/// busy all the time); `None` where a process could not be read.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuCores {
    /// The server driven (broker or no-op).
    pub server: Option<f64>,
    /// This load generator: beside every figure, so that a generator that is itself
    /// the bottleneck is seen to be.
    pub client: Option<f64>,
}

/// CPU seconds used so far by `process` (user and system, all threads).
pub(crate) fn cpu_seconds(process: &Process) -> Option<f64> {
    let stat = process.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// CPU seconds each process used between two instants.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuUsed {
    server_s: Option<f64>,
    client_s: Option<f64>,
}

impl CpuUsed {
    /// Divides by the calls answered in the same window.
    pub(crate) fn per_op(self, ops: u64) -> CpuPerOp {
        let per_op =
            |seconds: Option<f64>| seconds.filter(|_| ops > 0).map(|s| s * 1e6 / ops as f64);
        CpuPerOp {
            server_us: per_op(self.server_s),
            client_us: per_op(self.client_s),
        }
    }
}

impl CpuUsed {
    /// Divides by the window's length in seconds.
    pub(crate) fn cores(self, window_s: f64) -> CpuCores {
        let share = |seconds: Option<f64>| seconds.filter(|_| window_s > 0.0).map(|s| s / window_s);
        CpuCores {
            server: share(self.server_s),
            client: share(self.client_s),
        }
    }
}

/// CPU seconds this process has used so far, for the progress line.
pub(crate) fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(&Process::myself().ok()?)
}

/// Samples both processes at `from` and at `to` (the measured window) in a task.
pub(crate) fn measure(server_pid: Option<u32>, from: Instant, to: Instant) -> JoinHandle<CpuUsed> {
    tokio::spawn(async move {
        let server = server_pid.and_then(|pid| Process::new(i32::try_from(pid).ok()?).ok());
        let client = Process::myself().ok();
        let sample = || {
            (
                server.as_ref().and_then(cpu_seconds),
                client.as_ref().and_then(cpu_seconds),
            )
        };
        tokio::time::sleep_until(from).await;
        let (server_from, client_from) = sample();
        tokio::time::sleep_until(to).await;
        let (server_to, client_to) = sample();
        let used = |from: Option<f64>, to: Option<f64>| Some(to? - from?);
        CpuUsed {
            server_s: used(server_from, server_to),
            client_s: used(client_from, client_to),
        }
    })
}

/// How long after the window's end the sampler may still be waited for.
pub(crate) const SAMPLER_WAIT_MAX: Duration = Duration::from_secs(5);
