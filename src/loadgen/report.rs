//! The result of a run (`Report`), the broker/noop `Comparison`, and their renderings:
//! a human text block or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::args::{Protocol, Workload};
use super::config::BenchConfig;
use super::cpu::{CpuCores, CpuPerOp, CpuUsed};
use super::quota_check::{QuotaCheck, Verdict};
use super::stats::{Latency, Snapshot};
use super::terminate::TerminationReport;

/// The figures of one run against one target.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// `broker` or `noop`.
    pub target: &'static str,
    /// The address driven.
    pub addr: String,
    /// The workload run.
    pub workload: Workload,
    /// Unary calls or session channels.
    pub protocol: Protocol,
    /// Over streams: the simulated hosts (one stream each), operations per message,
    /// and leases per host.
    pub stream: Option<StreamShape>,
    /// Simulated engines.
    pub engines: u32,
    /// Organizations.
    pub orgs: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// Bound on outstanding RPCs.
    pub in_flight: u32,
    /// KRE sessions per organization.
    pub quota: u32,
    /// Warmup, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub measured_s: f64,
    /// The pace asked for (`--rate`, `--half-peak`), calls per second; none when unpaced.
    pub rate: Option<u32>,
    /// Calls answered in the measured window (successes and expected denials).
    pub ops: u64,
    /// `ops / measured_s`.
    pub ops_per_sec: f64,
    /// Latency of answered calls, microseconds.
    pub latency_us: Latency,
    /// The same per method (`acquire`, `heartbeat`, `release`, `renew`, `add-member`,
    /// `remove-member`), for methods called.
    pub methods: BTreeMap<&'static str, Latency>,
    /// Failed calls in the measured window.
    pub errors_total: u64,
    /// Failed calls by gRPC status code name.
    pub errors: BTreeMap<&'static str, u64>,
    /// RESOURCE_EXHAUSTED answers to acquire in `contention` (expected; retried).
    pub denials: u64,
    /// Engines that had not stopped by the end of the drain and were aborted.
    pub engines_unfinished: u64,
    /// Present for `contention`.
    pub quota_check: Option<QuotaCheck>,
    /// CPU per answered call in the measured window.
    pub cpu_per_op: CpuPerOp,
    /// Over streams: leases extended by renewals in the measured window (each
    /// renewal extends every lease of its stream), and per second.
    pub leases_renewed: Option<u64>,
    pub leases_renewed_per_sec: Option<f64>,
    /// CPU over the measured window, in cores (server and this generator).
    pub cpu_cores: CpuCores,
    /// Paced runs: how late calls were sent after their intended start (the
    /// generator's own lateness, microseconds; latency counts from the intended start).
    pub start_lag_us: Option<Latency>,
    /// `--terminate-rate`: the admin's terminations and how long each took to reach
    /// the holding host's stream.
    pub terminations: Option<TerminationReport>,
}

/// How a streamed run spread its operations.
#[derive(Serialize, Clone, Copy, Debug)]
pub struct StreamShape {
    /// Streams, one per simulated host (connections x streams per connection).
    pub hosts: u32,
    /// Streams per connection.
    pub streams_per_connection: u32,
    /// Operations per message, at most.
    pub batch: u32,
    /// Leases each host holds or cycles (engines / hosts, rounded up).
    pub leases_per_host: u32,
}

/// Where a report's target was.
pub(crate) struct TargetLabel {
    pub kind: &'static str,
    pub addr: String,
}

impl Report {
    pub(crate) fn new(
        config: &BenchConfig,
        target: TargetLabel,
        snapshot: Snapshot,
        cpu_used: CpuUsed,
        engines_unfinished: u64,
        quota_check: Option<QuotaCheck>,
    ) -> Self {
        let measured_s = config.duration.as_secs_f64();
        let cpu_per_op = cpu_used.per_op(snapshot.overall.count);
        let cpu_cores = cpu_used.cores(measured_s);
        Self {
            target: target.kind,
            addr: target.addr,
            workload: config.workload,
            protocol: if config.stream.is_some() {
                Protocol::Stream
            } else {
                Protocol::Unary
            },
            stream: config.stream.map(|stream| StreamShape {
                hosts: config.hosts(),
                streams_per_connection: stream.streams_per_connection,
                batch: stream.batch,
                leases_per_host: config.engines.div_ceil(config.hosts().max(1)),
            }),
            engines: config.engines,
            orgs: config.orgs,
            connections: config.connections,
            in_flight: config.in_flight,
            quota: config.quota,
            warmup_s: config.warmup.as_secs_f64(),
            measured_s,
            rate: config.rate,
            ops: snapshot.overall.count,
            ops_per_sec: snapshot.overall.count as f64 / measured_s,
            latency_us: snapshot.overall,
            methods: snapshot.methods,
            errors_total: snapshot.errors.values().sum(),
            errors: snapshot.errors,
            denials: snapshot.denials,
            engines_unfinished,
            quota_check,
            cpu_per_op,
            cpu_cores,
            start_lag_us: snapshot.start_lag,
            terminations: None,
            leases_renewed: config.stream.map(|_| snapshot.leases_renewed),
            leases_renewed_per_sec: config
                .stream
                .map(|_| snapshot.leases_renewed as f64 / measured_s),
        }
    }

    /// True unless the quota check ran and failed.
    pub fn quota_ok(&self) -> bool {
        self.quota_check
            .as_ref()
            .is_none_or(|check| check.verdict == Verdict::Ok)
    }

    /// The human report, several lines.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "seatbroker bench: {} {}  workload {}",
            self.target,
            self.addr,
            self.workload.name()
        );
        let _ = writeln!(
            text,
            "  engines {}  orgs {}  connections {}  in-flight {}  quota {}  warmup {:.1}s  measured {:.1}s",
            self.engines,
            self.orgs,
            self.connections,
            self.in_flight,
            self.quota,
            self.warmup_s,
            self.measured_s
        );
        if let Some(shape) = &self.stream {
            let _ = writeln!(
                text,
                "  protocol    stream: {} hosts ({} per connection), {} leases each, up to {} operations per message",
                shape.hosts, shape.streams_per_connection, shape.leases_per_host, shape.batch
            );
        }
        if let Some(rate) = self.rate {
            let _ = writeln!(
                text,
                "  paced at    {rate} ops/s on an absolute schedule; latency from each call's intended start"
            );
        }
        let _ = writeln!(
            text,
            "  throughput  {:.0} ops/s  ({} ops)",
            self.ops_per_sec, self.ops
        );
        let _ = writeln!(text, "  latency us  {}", latency_text(&self.latency_us));
        for (method, latency) in &self.methods {
            let _ = writeln!(
                text,
                "  {method:<10}  {} ops  {}",
                latency.count,
                latency_text(latency)
            );
        }
        if let (Some(renewed), Some(per_sec)) = (self.leases_renewed, self.leases_renewed_per_sec) {
            let _ = writeln!(
                text,
                "  renewed     {per_sec:.0} leases/s  ({renewed} lease renewals)"
            );
        }
        if let Some(lag) = &self.start_lag_us {
            let _ = writeln!(text, "  start lag   {}", latency_text(lag));
        }
        if let Some(terminations) = &self.terminations {
            let _ = writeln!(
                text,
                "  terminated  {}/s asked: {} acknowledged, {} delivered, {} missing, {} refused, {} ticks without a held lease",
                terminations.rate_per_sec,
                terminations.acknowledged,
                terminations.delivered,
                terminations.missing,
                terminations.refused,
                terminations.skipped
            );
            let _ = writeln!(
                text,
                "  pushed end  admin call to ended event, us: {}",
                latency_text(&terminations.latency_us)
            );
        }
        let _ = writeln!(text, "  errors      {}", errors_text(&self.errors));
        let _ = writeln!(text, "  {}", cpu_text(&self.cpu_cores, &self.cpu_per_op));
        if self.workload == Workload::Contention {
            let _ = writeln!(
                text,
                "  denials     {} (RESOURCE_EXHAUSTED, retried)",
                self.denials
            );
        }
        if self.engines_unfinished > 0 {
            let _ = writeln!(
                text,
                "  unfinished  {} engines aborted after the drain",
                self.engines_unfinished
            );
        }
        if let Some(check) = &self.quota_check {
            let _ = writeln!(text, "{}", check.summary());
        }
        text
    }
}

/// `cpu  server 0.93 core (21.3 us/op)  client 0.41 core (9.1 us/op)`.
pub(crate) fn cpu_text(cores: &CpuCores, per_op: &CpuPerOp) -> String {
    let side = |cores: Option<f64>, us: Option<f64>| match (cores, us) {
        (Some(cores), Some(us)) => format!("{cores:.2} core ({us:.1} us/op)"),
        (Some(cores), None) => format!("{cores:.2} core"),
        _ => "n/a".to_owned(),
    };
    format!(
        "cpu         server {}  client {}",
        side(cores.server, per_op.server_us),
        side(cores.client, per_op.client_us)
    )
}

pub(crate) fn latency_text(latency: &Latency) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
        latency.p50, latency.p90, latency.p99, latency.p999, latency.max, latency.mean
    )
}

pub(crate) fn errors_text(errors: &BTreeMap<&'static str, u64>) -> String {
    if errors.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|(code, count)| format!("{code} {count}"))
        .collect();
    parts.join(", ")
}

/// Broker divided by noop, for throughput and latency percentiles; `None` when the
/// noop figure is zero.
#[derive(Serialize, Clone, Debug)]
pub struct Ratio {
    /// Throughput ratio: below 1 means the broker is slower than the ceiling.
    pub ops_per_sec: Option<f64>,
    /// Median latency ratio.
    pub p50: Option<f64>,
    /// 99th percentile latency ratio.
    pub p99: Option<f64>,
    /// 99.9th percentile latency ratio.
    pub p999: Option<f64>,
    /// Server CPU per call: above 1 means the broker spends more than the ceiling.
    pub server_cpu_per_op: Option<f64>,
}

/// The same workload against the broker and against the no-op server.
#[derive(Serialize, Clone, Debug)]
pub struct Comparison {
    /// The run against the broker.
    pub broker: Report,
    /// The same load against the in-process no-op server.
    pub noop: Report,
    /// broker / noop.
    pub ratio: Ratio,
}

impl Comparison {
    /// Computes the ratios of two reports of the same load.
    pub fn new(broker: Report, noop: Report) -> Self {
        let divide = |b: f64, n: f64| (n > 0.0).then(|| b / n);
        let ratio = Ratio {
            ops_per_sec: divide(broker.ops_per_sec, noop.ops_per_sec),
            p50: divide(broker.latency_us.p50 as f64, noop.latency_us.p50 as f64),
            p99: divide(broker.latency_us.p99 as f64, noop.latency_us.p99 as f64),
            p999: divide(broker.latency_us.p999 as f64, noop.latency_us.p999 as f64),
            server_cpu_per_op: broker
                .cpu_per_op
                .server_us
                .zip(noop.cpu_per_op.server_us)
                .and_then(|(b, n)| divide(b, n)),
        };
        Self {
            broker,
            noop,
            ratio,
        }
    }

    /// Both reports and the ratio line.
    pub fn to_text(&self) -> String {
        let show = |value: Option<f64>| value.map_or("n/a".to_owned(), |v| format!("{v:.2}x"));
        format!(
            "{}\n{}\nbroker/noop: throughput {}  p50 {}  p99 {}  p99.9 {}  server cpu/op {}\n",
            self.broker.to_text(),
            self.noop.to_text(),
            show(self.ratio.ops_per_sec),
            show(self.ratio.p50),
            show(self.ratio.p99),
            show(self.ratio.p999),
            show(self.ratio.server_cpu_per_op)
        )
    }
}

/// What `run` produced: one report, or a broker/noop comparison.
#[derive(Serialize, Clone, Debug)]
#[serde(untagged)]
pub enum Outcome {
    /// One target.
    Single(Box<Report>),
    /// Broker and no-op server.
    Compare(Box<Comparison>),
}

impl Outcome {
    /// The reports in run order.
    pub fn reports(&self) -> Vec<&Report> {
        match self {
            Self::Single(report) => vec![report],
            Self::Compare(comparison) => vec![&comparison.broker, &comparison.noop],
        }
    }

    /// The human rendering.
    pub fn to_text(&self) -> String {
        match self {
            Self::Single(report) => report.to_text(),
            Self::Compare(comparison) => comparison.to_text(),
        }
    }
}
