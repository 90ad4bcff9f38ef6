//! One run against one target: connect, provision (broker only), start the engines,
//! wait for them under the deadline plus the drain bound, and build the report.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::client::{Authorized, BearerKey};
use crate::proto::admin_service_client::AdminServiceClient;
use crate::tls::ClientTlsFiles;

use super::args::Workload;
use super::bounds::{DRAIN_MS_MAX, INTERVALS_MAX};
use super::channels::{self, bearer, connect_all};
use super::config::{BenchConfig, BrokerTarget, Progress};
use super::cpu::{self, CpuUsed};
use super::engine::{self, AdminMember, Engine, EngineOutcome, Shared};
use super::error::LoadgenError;
use super::noop::{NoopOptions, NoopServer};
use super::quota_check::{Interval, QuotaCheck};
use super::report::{Report, TargetLabel};
use super::rng::{Rng, engine_seed};
use super::setup::{self, Layout};
use super::stats::{Phases, Stats, report_progress};
use super::stream;
use super::terminate::{self, Terminations};

/// Provisions the broker, then drives it.
pub(crate) async fn execute_broker(
    config: &BenchConfig,
    target: &BrokerTarget,
) -> Result<Report, LoadgenError> {
    config.validate()?;
    // A cluster's standby names its leader: the load goes there.
    let uri = channels::leader_uri(target).await?;
    let channels = connect_all(&uri, &target.tls, config.connections).await?;
    let layout = layout_for(config);
    if config.progress == Progress::Stderr {
        eprintln!(
            "bench: provisioning {} organizations and {} members on {} (run {})",
            config.orgs, config.members, uri, layout.run_id
        );
    }
    let keys = setup::provision(
        channels[0].clone(),
        &target.operator_key.0,
        &layout,
        config.quota,
    )
    .await?;
    let label = TargetLabel {
        kind: "broker",
        addr: uri,
    };
    // The terminating admin speaks on the first connection, beside the hosts' streams.
    let admin = channels::admin(&channels[0], &bearer(&target.operator_key.0)?);
    let target = DriveTarget {
        label,
        server_pid: target.server_pid,
        admin: Some(admin),
        operator: Some(bearer(&target.operator_key.0)?),
    };
    drive(config, &layout, channels, keys, target).await
}

/// Starts the in-process no-op server, drives it, and stops it.
pub(crate) async fn execute_noop(
    config: &BenchConfig,
    options: NoopOptions,
) -> Result<Report, LoadgenError> {
    config.validate()?;
    let server = NoopServer::start(options).await?;
    // The server runs in this process: its CPU is not told apart from the client's.
    let result = drive_noop_at(config, server.uri(), None).await;
    server.stop().await;
    result
}

/// Starts the no-op server as a child process of this binary (on the CPUs of process
/// `cpus_of` when given: the broker it is compared with), drives it, and stops it.
pub(crate) async fn execute_noop_process(
    config: &BenchConfig,
    cpus_of: Option<u32>,
) -> Result<Report, LoadgenError> {
    config.validate()?;
    let options = NoopOptions::for_config(config);
    let mut child = super::noop::ChildNoopServer::spawn(options, cpus_of).await?;
    let result = drive_noop_at(config, child.uri(), child.pid()).await;
    child.stop().await;
    result
}

async fn drive_noop_at(
    config: &BenchConfig,
    uri: String,
    server_pid: Option<u32>,
) -> Result<Report, LoadgenError> {
    let channels = connect_all(&uri, &ClientTlsFiles::default(), config.connections).await?;
    let key = bearer("noop")?;
    let keys = vec![key; config.key_holders() as usize];
    let target = DriveTarget {
        label: TargetLabel {
            kind: "noop",
            addr: uri,
        },
        server_pid,
        admin: None,
        operator: None,
    };
    drive(config, &layout_for(config), channels, keys, target).await
}

/// The server a run drives, as `drive` needs it.
struct DriveTarget {
    label: TargetLabel,
    /// Its process, for its CPU.
    server_pid: Option<u32>,
    /// The operator's admin client (a broker only): `--terminate-rate` calls through it.
    admin: Option<AdminServiceClient<Authorized>>,
    /// The operator's key (a broker only): the `admin` workload's engines call with it.
    operator: Option<BearerKey>,
}

fn layout_for(config: &BenchConfig) -> Layout {
    Layout {
        run_id: format!("{:08x}", Rng::new(config.seed).next_u64() as u32),
        orgs: config.orgs,
        // Over streams, one key per host: the layout's "engines" are the hosts.
        engines: config.key_holders(),
        members: config.members,
    }
}

/// Runs the engines from now for warmup + duration and reports.
async fn drive(
    config: &BenchConfig,
    layout: &Layout,
    channels: Vec<Channel>,
    keys: Vec<BearerKey>,
    target: DriveTarget,
) -> Result<Report, LoadgenError> {
    debug_assert_eq!(keys.len(), config.key_holders() as usize);
    let DriveTarget {
        label,
        server_pid,
        admin,
        operator,
    } = target;
    let stats = Arc::new(Stats::new()?);
    let phases = Phases::starting_now(config.warmup, config.duration);
    let cpu = cpu::measure(server_pid, phases.measure_from, phases.deadline);
    let terminate_rate = config.stream.and_then(|stream| stream.terminate_rate);
    let terminations = match (terminate_rate, &admin) {
        (Some(rate), Some(_)) => Some(Arc::new(Terminations::new(rate, config.engines)?)),
        _ => None,
    };
    let terminator = terminations
        .clone()
        .zip(admin)
        .map(|(terminations, admin)| {
            let rng = Rng::new(engine_seed(config.seed, u32::MAX));
            tokio::spawn(terminate::run(
                terminations,
                admin,
                layout.clone(),
                phases,
                rng,
            ))
        });
    let progress = (config.progress == Progress::Stderr).then(|| {
        let name = format!("{} {}", label.kind, config.workload.name());
        tokio::spawn(report_progress(stats.clone(), phases, name))
    });
    let engines = if config.stream.is_some() {
        stream::spawn_hosts(
            config,
            layout,
            &channels,
            keys,
            stats.clone(),
            phases,
            terminations,
        )
    } else {
        let intervals_per_engine_max = INTERVALS_MAX / config.engines as usize;
        let shared = Arc::new(Shared::new(
            config,
            stats.clone(),
            phases,
            intervals_per_engine_max,
        ));
        spawn_engines(config, layout, &channels, keys, operator.as_ref(), &shared)
    };
    let collected = collect(
        engines,
        phases.deadline + Duration::from_millis(DRAIN_MS_MAX),
    )
    .await;
    if let Some(progress) = progress {
        progress.abort();
    }
    let collected = collected?;
    let terminations = match terminator {
        // It waits at most `RPC_TIMEOUT_MS` for its last calls and again for their events.
        Some(terminator) => Some(
            terminator
                .await
                .map_err(|e| LoadgenError::Internal(format!("terminator task: {e}")))?,
        ),
        None => None,
    };
    let cpu_used = match tokio::time::timeout(cpu::SAMPLER_WAIT_MAX, cpu).await {
        Ok(Ok(used)) => used,
        _ => CpuUsed::default(),
    };
    let quota_check = (config.workload == Workload::Contention).then(|| {
        QuotaCheck::run(
            &collected.intervals,
            collected.intervals_dropped,
            config.quota,
        )
    });
    let mut report = Report::new(
        config,
        label,
        stats.snapshot()?,
        cpu_used,
        collected.unfinished,
        quota_check,
    );
    report.terminations = terminations;
    Ok(report)
}

fn spawn_engines(
    config: &BenchConfig,
    layout: &Layout,
    channels: &[Channel],
    keys: Vec<BearerKey>,
    operator: Option<&BearerKey>,
    shared: &Arc<Shared>,
) -> JoinSet<EngineOutcome> {
    let mut engines = JoinSet::new();
    for (index, key) in (0..config.engines).zip(keys) {
        let channel = &channels[index as usize % channels.len()];
        let admin = operator
            .filter(|_| config.workload == Workload::Admin)
            .map(|operator| AdminMember {
                client: channels::admin(channel, operator),
                org_id: layout.org_id(layout.org_of(index)),
                email: layout.admin_email(index),
            });
        let engine = Engine {
            index,
            client: channels::session(channel, &key),
            engine_id: layout.engine_id(index),
            hostname: Layout::engine_hostname(index),
            rng: Rng::new(engine_seed(config.seed, index)),
            shared: shared.clone(),
            admin,
        };
        engines.spawn(engine::run(engine));
    }
    engines
}

/// What the engines handed back.
#[derive(Default)]
struct Collected {
    intervals: Vec<Interval>,
    intervals_dropped: u64,
    /// Engines aborted because they had not stopped by the drain bound.
    unfinished: u64,
}

async fn collect(
    mut engines: JoinSet<EngineOutcome>,
    drain_until: Instant,
) -> Result<Collected, LoadgenError> {
    let mut collected = Collected::default();
    let joined_all = tokio::time::timeout_at(drain_until, async {
        while let Some(joined) = engines.join_next().await {
            let outcome =
                joined.map_err(|e| LoadgenError::Internal(format!("engine task: {e}")))?;
            collected.intervals.extend(outcome.intervals);
            collected.intervals_dropped += outcome.intervals_dropped;
        }
        Ok::<(), LoadgenError>(())
    })
    .await;
    match joined_all {
        Ok(result) => result?,
        Err(_elapsed) => {
            collected.unfinished = engines.len() as u64;
            engines.abort_all();
        }
    }
    Ok(collected)
}
