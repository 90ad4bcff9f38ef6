//! `--protocol stream`: the engines' operations over session channels
//! (`SessionService.Channel`), spoken with the raw generated client so that what is
//! measured is the protocol itself.
//!
//! Every stream is one simulated host with one member's key (a stream holds one
//! user's leases); host `h` of `H` (= connections x `--streams`) drives the leases of
//! engines `h, h + H, h + 2H, ...`, each with its own engine id. A host keeps at most
//! its share of `--in-flight` operations outstanding and packs up to `--batch` of
//! them into each message. Its workloads:
//! - `acquire-release`: every lease slot acquires, then releases, back to back;
//! - `heartbeat`: the host acquires its leases, then renews back to back (each
//!   renewal extends every lease of the stream: the report counts leases renewed);
//! - `hosts`: the host acquires its leases, then renews once per `--renew-interval`
//!   (first at a random offset, so hosts do not renew in step): the steady cost of
//!   keeping many leases alive.
//!
//! Latency of an operation runs from the send of its message to the event answering
//! it. Releases are answered by `ended` (RELEASED), renewals by `renewed`, in order. A
//! stream that breaks, or stays silent with operations outstanding for
//! `RPC_TIMEOUT_MS`, is counted as one error and reopened; the leases are acquired
//! again by the same engine ids (the broker hands a live lease back to its engine).
//! After the deadline a host releases what it holds (unmeasured) and closes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::client::{Authorized, BearerKey};
use crate::proto::session_service_client::SessionServiceClient;
use crate::proto::{
    ChannelRequest, ChannelResponse, EndReason, Product, StreamAcquire, StreamOperation,
    StreamRelease, StreamRenew, stream_event, stream_operation,
};

use super::args::Workload;
use super::bounds::{ERROR_BACKOFF_MS, HEARTBEAT_INTERVAL_MS_MIN, RPC_TIMEOUT_MS, STREAM_OUTBOX};
use super::channels;
use super::config::BenchConfig;
use super::engine::EngineOutcome;
use super::rng::{Rng, engine_seed};
use super::setup::{Layout, kre_acquire_request};
use super::stats::{Answer, Method, Phases, Stats};
use super::terminate::Terminations;

/// What every host of one run shares.
pub(crate) struct HostShared {
    pub stats: Arc<Stats>,
    pub phases: Phases,
    pub workload: Workload,
    /// Operations per message, at most.
    pub batch: usize,
    /// Operations outstanding per host, at most (its share of `--in-flight`).
    pub window: usize,
    pub renew_interval: Option<Duration>,
    /// Hosts in the run: engine `h + slot * hosts` is host `h`'s lease slot `slot`.
    pub hosts: u32,
    /// `--terminate-rate`: where hosts report the leases they hold and the
    /// terminations they hear.
    pub terminations: Option<Arc<Terminations>>,
}

/// Spawns one task per host, host `h` on connection `h % connections` with key
/// `keys[h]`.
pub(crate) fn spawn_hosts(
    config: &BenchConfig,
    layout: &Layout,
    channels: &[Channel],
    keys: Vec<BearerKey>,
    stats: Arc<Stats>,
    phases: Phases,
    terminations: Option<Arc<Terminations>>,
) -> JoinSet<EngineOutcome> {
    let hosts = config.hosts();
    let stream = config
        .stream
        .expect("spawn_hosts runs with --protocol stream");
    let shared = Arc::new(HostShared {
        stats,
        phases,
        workload: config.workload,
        batch: stream.batch as usize,
        window: config.in_flight.div_ceil(hosts).max(1) as usize,
        renew_interval: stream.renew_interval,
        hosts,
        terminations,
    });
    let mut tasks = JoinSet::new();
    for (index, key) in (0..hosts).zip(keys) {
        let engine_ids = (index..config.engines)
            .step_by(hosts as usize)
            .map(|engine| layout.engine_id(engine))
            .collect();
        let host = Host {
            index,
            client: channels::session(&channels[index as usize % channels.len()], &key),
            hostname: Layout::engine_hostname(index),
            engine_ids,
            rng: Rng::new(engine_seed(config.seed, index)),
            shared: shared.clone(),
        };
        tasks.spawn(host.run());
    }
    tasks
}

/// One simulated host: one stream at a time, the leases of its engines.
struct Host {
    index: u32,
    client: SessionServiceClient<Authorized>,
    hostname: String,
    /// One per lease slot.
    engine_ids: Vec<String>,
    rng: Rng,
    shared: Arc<HostShared>,
}

/// Where one lease slot stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    Idle,
    Acquiring,
    Held { lease_id: String, generation: u64 },
    Releasing { lease_id: String },
}

/// An open stream: the sending half and the events.
struct Session {
    outbox: mpsc::Sender<ChannelRequest>,
    events: Streaming<ChannelResponse>,
}

/// The operations of one stream awaiting their events.
#[derive(Default)]
struct Outstanding {
    /// Acquires by request id: the slot and the send.
    acquires: HashMap<u64, (usize, Instant)>,
    /// Releases by lease id: the slot and the send.
    releases: HashMap<String, (usize, Instant)>,
    /// Renewals in the order sent (answered in order).
    renewals: VecDeque<Instant>,
}

impl Outstanding {
    fn len(&self) -> usize {
        self.acquires.len() + self.releases.len() + self.renewals.len()
    }
}

/// Why driving a stream stopped.
enum StreamEnd {
    /// The run is over and the host released what it held.
    Done,
    /// The stream broke or went silent; open another.
    Broken,
}

impl Host {
    async fn run(mut self) -> EngineOutcome {
        let mut slots = vec![Slot::Idle; self.engine_ids.len()];
        while self.running() {
            let session = match self.open().await {
                Ok(session) => session,
                Err(status) => {
                    self.error(status.code());
                    self.pause().await;
                    continue;
                }
            };
            match self.drive(session, &mut slots).await {
                StreamEnd::Done => break,
                StreamEnd::Broken => {
                    // The new stream does not hold the old one's leases: acquire
                    // them again (the same engine ids get the same live leases).
                    slots.fill(Slot::Idle);
                    if let Some(terminations) = &self.shared.terminations {
                        for slot in 0..slots.len() {
                            terminations.not_held(self.engine_of(slot));
                        }
                    }
                    self.pause().await;
                }
            }
        }
        EngineOutcome::default()
    }

    async fn open(&mut self) -> Result<Session, Status> {
        let (outbox, requests) = mpsc::channel(STREAM_OUTBOX);
        let call = self.client.channel(ReceiverStream::new(requests));
        let events = tokio::time::timeout(Duration::from_millis(RPC_TIMEOUT_MS), call)
            .await
            .map_err(|_| Status::deadline_exceeded("the stream did not open in time"))??
            .into_inner();
        Ok(Session { outbox, events })
    }

    /// Runs the workload over one stream until the run is over or the stream breaks.
    async fn drive(&mut self, mut session: Session, slots: &mut [Slot]) -> StreamEnd {
        let shared = Arc::clone(&self.shared);
        let mut outstanding = Outstanding::default();
        let mut next_request_id: u64 = 1;
        let mut paused_until: Option<Instant> = None;
        let mut renew_every: Option<Duration> = shared.renew_interval;
        let mut next_renewal: Option<Instant> = None;
        let drain_until = shared.phases.deadline + Duration::from_millis(RPC_TIMEOUT_MS);
        loop {
            let now = Instant::now();
            let over = now >= shared.phases.deadline;
            if over && outstanding.len() == 0 && !slots.iter().any(is_held) {
                return StreamEnd::Done;
            }
            if now >= drain_until {
                return StreamEnd::Done;
            }
            let acquiring_allowed = !over && paused_until.is_none_or(|until| now >= until);
            // The operations of the next message.
            let mut operations = Vec::new();
            let room = shared.window.saturating_sub(outstanding.len());
            for (slot_index, slot) in slots.iter_mut().enumerate() {
                if operations.len() >= room.min(shared.batch) {
                    break;
                }
                match slot.clone() {
                    Slot::Idle if acquiring_allowed => {
                        let request_id = next_request_id;
                        next_request_id += 1;
                        outstanding.acquires.insert(request_id, (slot_index, now));
                        operations.push(self.acquire(slot_index, request_id));
                        *slot = Slot::Acquiring;
                    }
                    Slot::Held {
                        lease_id,
                        generation,
                    } if over || shared.workload == Workload::AcquireRelease => {
                        outstanding
                            .releases
                            .insert(lease_id.clone(), (slot_index, now));
                        operations.push(operation(stream_operation::Operation::Release(
                            StreamRelease {
                                lease_id: lease_id.clone(),
                                generation,
                            },
                        )));
                        *slot = Slot::Releasing { lease_id };
                    }
                    _ => {}
                }
            }
            let all_held = slots.iter().all(is_held);
            if !over && all_held {
                let renewals = match shared.workload {
                    // Back to back: fill the window.
                    Workload::Heartbeat => room.min(shared.batch),
                    Workload::Hosts => {
                        let every = renew_every.unwrap_or(Duration::from_secs(1));
                        let due = *next_renewal.get_or_insert_with(|| {
                            now + self.rng.duration_between(Duration::ZERO, every)
                        });
                        if now >= due && outstanding.renewals.is_empty() {
                            next_renewal = Some(due + every);
                            1
                        } else {
                            0
                        }
                    }
                    _ => 0,
                };
                for _ in 0..renewals {
                    outstanding.renewals.push_back(now);
                    operations.push(operation(stream_operation::Operation::Renew(
                        StreamRenew {},
                    )));
                }
            }
            if !operations.is_empty() {
                let message = ChannelRequest { operations };
                let sent = tokio::time::timeout(
                    Duration::from_millis(RPC_TIMEOUT_MS),
                    session.outbox.send(message),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    self.error(Code::Unavailable);
                    return StreamEnd::Broken;
                }
                continue;
            }
            // Nothing to send: wait for events, or for the next thing due.
            let mut wake = drain_until;
            if !over {
                wake = wake.min(shared.phases.deadline);
                if let Some(until) = paused_until.filter(|until| *until > now) {
                    wake = wake.min(until);
                }
                if let Some(due) = next_renewal {
                    wake = wake.min(due);
                }
            }
            if outstanding.len() > 0 {
                wake = wake.min(now + Duration::from_millis(RPC_TIMEOUT_MS));
            }
            let message = tokio::select! {
                message = session.events.message() => message,
                () = sleep_until(wake) => {
                    if outstanding.len() > 0 && Instant::now() >= now + Duration::from_millis(RPC_TIMEOUT_MS) {
                        self.error(Code::DeadlineExceeded);
                        return StreamEnd::Broken;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(response)) => {
                    let answered = Instant::now();
                    let mut denied = false;
                    for event in response.events.into_iter().filter_map(|e| e.event) {
                        denied |=
                            self.apply(event, answered, slots, &mut outstanding, &mut renew_every);
                    }
                    if denied {
                        paused_until = Some(answered + Duration::from_millis(ERROR_BACKOFF_MS));
                    }
                }
                Ok(None) => {
                    if over && outstanding.len() == 0 {
                        return StreamEnd::Done;
                    }
                    self.error(Code::Unavailable);
                    return StreamEnd::Broken;
                }
                Err(status) => {
                    self.error(status.code());
                    return StreamEnd::Broken;
                }
            }
        }
    }

    /// Applies one event; true when it denied an acquire (the host then backs off).
    fn apply(
        &self,
        event: stream_event::Event,
        answered: Instant,
        slots: &mut [Slot],
        outstanding: &mut Outstanding,
        renew_every: &mut Option<Duration>,
    ) -> bool {
        use stream_event::Event;
        let shared = Arc::clone(&self.shared);
        let record = |method: Method, sent: Instant| {
            shared.stats.record(
                self.index,
                method,
                Answer::Ok,
                (sent, answered),
                &shared.phases,
            );
        };
        match event {
            Event::Granted(granted) => {
                let Some((slot, sent)) = outstanding.acquires.remove(&granted.request_id) else {
                    return false;
                };
                let Some(lease) = granted.lease else {
                    self.error_at(Code::Internal, answered);
                    slots[slot] = Slot::Idle;
                    return true;
                };
                record(Method::Acquire, sent);
                if let Some(terminations) = &shared.terminations {
                    terminations.held(self.engine_of(slot), self.index, &lease.lease_id);
                }
                if renew_every.is_none() {
                    let interval_ms =
                        u64::from(lease.heartbeat_interval_ms).max(HEARTBEAT_INTERVAL_MS_MIN);
                    *renew_every = Some(Duration::from_millis(interval_ms));
                }
                slots[slot] = Slot::Held {
                    lease_id: lease.lease_id,
                    generation: lease.generation,
                };
            }
            Event::Denied(denied) => {
                if let Some((slot, _sent)) = outstanding.acquires.remove(&denied.request_id) {
                    slots[slot] = Slot::Idle;
                }
                self.error_at(Code::from_i32(denied.code), answered);
                return true;
            }
            Event::Ended(ended) => {
                let terminated = ended.reason == EndReason::Terminated as i32;
                let lost = |slot: usize| {
                    if let Some(terminations) = &shared.terminations {
                        terminations.not_held(self.engine_of(slot));
                        if terminated {
                            terminations.terminated(&ended.lease_id, answered);
                        }
                    }
                };
                if let Some((slot, sent)) = outstanding.releases.remove(&ended.lease_id) {
                    if ended.reason == EndReason::Released as i32 {
                        record(Method::Release, sent);
                    } else if !(terminated && shared.terminations.is_some()) {
                        self.error_at(Code::NotFound, answered);
                    }
                    lost(slot);
                    slots[slot] = Slot::Idle;
                } else if let Some(slot) = slots.iter().position(|slot| {
                    matches!(slot, Slot::Held { lease_id, .. } if *lease_id == ended.lease_id)
                }) {
                    // Lost (expired, terminated): acquire it again.
                    lost(slot);
                    slots[slot] = Slot::Idle;
                }
            }
            Event::Renewed(renewed) => {
                if let Some(sent) = outstanding.renewals.pop_front() {
                    record(Method::Renew, sent);
                    shared
                        .stats
                        .count_renewed(renewed.lease_count, answered, &shared.phases);
                }
            }
            Event::Queued(_) | Event::Attached(_) | Event::Draining(_) => {}
        }
        false
    }

    fn acquire(&self, slot: usize, request_id: u64) -> StreamOperation {
        let unary = kre_acquire_request(self.engine_ids[slot].clone(), self.hostname.clone());
        operation(stream_operation::Operation::Acquire(StreamAcquire {
            request_id,
            product: Product::Kre as i32,
            engine_id: unary.engine_id,
            hostname: unary.hostname,
            label: unary.label,
            wait_ms: unary.wait_ms,
        }))
    }

    /// The run-wide engine index of lease slot `slot`.
    fn engine_of(&self, slot: usize) -> u32 {
        self.index + slot as u32 * self.shared.hosts
    }

    fn error(&self, code: Code) {
        self.error_at(code, Instant::now());
    }

    fn error_at(&self, code: Code, at: Instant) {
        self.shared
            .stats
            .count_error_at(code, at, &self.shared.phases);
    }

    fn running(&self) -> bool {
        Instant::now() < self.shared.phases.deadline
    }

    async fn pause(&self) {
        let until = Instant::now() + Duration::from_millis(ERROR_BACKOFF_MS);
        sleep_until(until.min(self.shared.phases.deadline)).await;
    }
}

fn is_held(slot: &Slot) -> bool {
    matches!(slot, Slot::Held { .. })
}

fn operation(operation: stream_operation::Operation) -> StreamOperation {
    StreamOperation {
        operation: Some(operation),
    }
}
