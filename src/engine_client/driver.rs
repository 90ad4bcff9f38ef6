//! The engine client's task: it owns the stream, the pending acquires (by request id)
//! and the held seats (by lease id), routes the broker's events to the handles, renews,
//! and on a broken stream reconnects with backoff and re-attaches every held seat. A
//! cluster's standby that refuses the stream naming the leader
//! (`client::leader_redirect`) is followed to it at once, without a backoff, at most
//! `limits::LEADER_REDIRECTS_MAX` standbys in a row; then the list goes on.
//! The routing of events ([`Book`]) is kept apart from the I/O so that it is tested
//! without a broker.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::{
    AcquireSpec, ClientOptions, Command, ConnectError, Keepalive, LostReason, NewAcquire,
    QueuePosition, Seat, SeatLost,
};
use crate::client::{self, BearerKey, ClientError};
use crate::limits;
use crate::proto::{
    self, ChannelRequest, ChannelResponse, EndReason, LeaseHandle, StreamAcquire, StreamAttach,
    StreamCancel, StreamOperation, StreamRelease, StreamRenew, stream_event::Event,
    stream_operation::Operation,
};

/// Whether a stream that ended with `status` is worth reconnecting: `UNAVAILABLE`, or
/// a connection that broke without the broker sending a status (the status then
/// carries the transport's error as its source). Any other status is the broker's
/// final answer.
pub(super) fn is_retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// An acquire sent (or to be sent once a stream is up) and not yet answered.
#[derive(Debug)]
struct PendingAcquire {
    spec: AcquireSpec,
    engine_id: String,
    /// When the broker's wait passes; the acquire is sent again with what is left.
    wait_until: Instant,
    /// While no stream is up: when the acquire fails with `UNAVAILABLE`.
    give_up_at: Instant,
    queue: watch::Sender<Option<QueuePosition>>,
    answer: oneshot::Sender<Result<Seat, Status>>,
}

/// A seat the client holds, as its task sees it.
#[derive(Debug)]
struct HeldSeat {
    generation: u64,
    /// The latest the lease can be live without a renewal we know the broker
    /// received (measured from when the renewal, grant or attach was sent).
    deadline: Instant,
    heartbeat_interval: Duration,
    ttl: Duration,
    lost: watch::Sender<Option<SeatLost>>,
    /// Set once the engine released the seat: answered when the broker ends the lease.
    releasing: Option<Vec<oneshot::Sender<Result<(), Status>>>>,
}

/// The bookkeeping of the client: pending acquires, held seats, and the operations
/// waiting for the stream; pure state, fed commands and events, tested alone.
#[derive(Debug)]
pub(super) struct Book {
    pending: HashMap<u64, PendingAcquire>,
    seats: HashMap<String, HeldSeat>,
    outbox: VecDeque<StreamOperation>,
    /// When each renewal not yet answered was queued, oldest first.
    renewals_sent: VecDeque<Instant>,
    /// A sender for the [`Seat`]s made from grants (their drop and release go through it).
    commands: mpsc::WeakSender<Command>,
    unreachable_patience: Duration,
}

impl Book {
    fn new(commands: mpsc::WeakSender<Command>, unreachable_patience: Duration) -> Self {
        Book {
            pending: HashMap::new(),
            seats: HashMap::new(),
            outbox: VecDeque::new(),
            renewals_sent: VecDeque::new(),
            commands,
            unreachable_patience,
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.seats.is_empty()
    }

    /// A command of a handle. `connected`: whether operations can go out now (else
    /// they are made when the next stream opens, by [`Book::reopen`]).
    fn command(&mut self, command: Command, connected: bool, now: Instant) {
        match command {
            Command::Acquire(acquire) => self.acquire(acquire, connected, now),
            Command::Cancel { request_id } => {
                if let Some(pending) = self.pending.remove(&request_id) {
                    drop(pending);
                    if connected {
                        self.push(Operation::Cancel(StreamCancel { request_id }));
                    }
                }
            }
            Command::Release {
                lease_id,
                generation,
                done,
            } => self.release(lease_id, generation, done, connected),
        }
    }

    fn acquire(&mut self, acquire: NewAcquire, connected: bool, now: Instant) {
        let NewAcquire {
            request_id,
            spec,
            queue,
            answer,
        } = acquire;
        if self.pending.len() >= limits::ENGINE_PENDING_ACQUIRES_MAX
            || self.outbox.len() >= limits::ENGINE_OPERATIONS_BUFFERED_MAX
        {
            let message = format!(
                "{} acquires are pending already (or the stream's buffer is full); wait for some to be answered",
                self.pending.len()
            );
            let _ = answer.send(Err(Status::resource_exhausted(message)));
            return;
        }
        let engine_id = spec.engine_id.clone().unwrap_or_else(random_engine_id);
        let pending = PendingAcquire {
            engine_id,
            wait_until: now + spec.wait,
            give_up_at: now + spec.wait + self.unreachable_patience,
            spec,
            queue,
            answer,
        };
        if connected {
            self.push(acquire_operation(request_id, &pending, now));
        }
        self.pending.insert(request_id, pending);
    }

    fn release(
        &mut self,
        lease_id: String,
        generation: u64,
        done: Option<oneshot::Sender<Result<(), Status>>>,
        connected: bool,
    ) {
        let Some(seat) = self
            .seats
            .get_mut(&lease_id)
            .filter(|seat| seat.generation == generation)
        else {
            // Lost already: nothing to give back.
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        };
        let first = seat.releasing.is_none();
        seat.releasing.get_or_insert_with(Vec::new).extend(done);
        if first && connected {
            self.push(Operation::Release(StreamRelease {
                lease_id,
                generation,
            }));
        }
    }

    fn push(&mut self, operation: Operation) {
        self.outbox.push_back(StreamOperation {
            operation: Some(operation),
        });
    }

    /// Queues one renewal of every seat of the stream, unless one is queued already.
    fn renew(&mut self, now: Instant) {
        let queued = self
            .outbox
            .iter()
            .any(|op| matches!(op.operation, Some(Operation::Renew(_))));
        if !queued && !self.seats.is_empty() {
            self.push(Operation::Renew(StreamRenew {}));
            self.renewals_sent.push_back(now);
        }
    }

    /// The operations of a new stream: attach every held seat (a seat being released
    /// is attached and released), then every pending acquire again with the wait it
    /// has left. Whatever the broken stream had not sent is dropped: this replaces it.
    fn reopen(&mut self, now: Instant) {
        self.outbox.clear();
        self.renewals_sent.clear();
        let mut handles: Vec<LeaseHandle> = self
            .seats
            .iter()
            .map(|(lease_id, seat)| LeaseHandle {
                lease_id: lease_id.clone(),
                generation: seat.generation,
            })
            .collect();
        handles.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
        for chunk in handles.chunks(limits::ENGINE_ATTACH_LEASES_PER_OPERATION_MAX) {
            self.push(Operation::Attach(StreamAttach {
                leases: chunk.to_vec(),
            }));
        }
        let releases: Vec<StreamRelease> = self
            .seats
            .iter()
            .filter(|(_, seat)| seat.releasing.is_some())
            .map(|(lease_id, seat)| StreamRelease {
                lease_id: lease_id.clone(),
                generation: seat.generation,
            })
            .collect();
        for release in releases {
            self.push(Operation::Release(release));
        }
        let mut request_ids: Vec<u64> = self.pending.keys().copied().collect();
        request_ids.sort_unstable();
        for request_id in request_ids {
            let operation = acquire_operation(request_id, &self.pending[&request_id], now);
            self.push(operation);
        }
    }

    /// Takes up to one message's worth of operations from the outbox (by count and
    /// by encoded bytes; one operation always fits, see `limits`).
    fn next_batch(&mut self) -> Option<ChannelRequest> {
        let mut operations = Vec::new();
        let mut bytes = 0;
        while let Some(operation) = self.outbox.front() {
            let size = prost::Message::encoded_len(operation) + 4;
            let full = operations.len() == limits::ENGINE_OPERATIONS_PER_MESSAGE_MAX
                || bytes + size > limits::ENGINE_MESSAGE_BYTES_MAX;
            if full && !operations.is_empty() {
                break;
            }
            bytes += size;
            operations.extend(self.outbox.pop_front());
        }
        (!operations.is_empty()).then_some(ChannelRequest { operations })
    }

    /// Routes one event of the broker; `now` is when it arrived.
    fn event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Granted(granted) => self.granted(granted, now),
            Event::Denied(denied) => {
                if let Some(pending) = self.pending.remove(&denied.request_id) {
                    let status = Status::new(Code::from_i32(denied.code), denied.message);
                    let _ = pending.answer.send(Err(status));
                }
            }
            Event::Queued(queued) => {
                if let Some(pending) = self.pending.get(&queued.request_id) {
                    pending.queue.send_replace(Some(QueuePosition {
                        position: queued.position,
                        queue_length: queued.queue_length,
                    }));
                }
            }
            Event::Renewed(renewed) => {
                let Some(sent) = self.renewals_sent.pop_front() else {
                    return;
                };
                let ttl = Duration::from_millis(u64::from(renewed.ttl_ms));
                for seat in self.seats.values_mut() {
                    if seat.releasing.is_none() {
                        seat.ttl = ttl;
                        seat.deadline = seat.deadline.max(sent + ttl);
                    }
                }
            }
            Event::Ended(ended) => self.ended(ended),
            Event::Attached(attached) => {
                let Some(lease) = attached.lease else { return };
                if let Some(seat) = self.seats.get_mut(&lease.lease_id)
                    && seat.generation == lease.generation
                {
                    seat.ttl = Duration::from_millis(u64::from(lease.ttl_ms));
                    seat.deadline = seat.deadline.max(now + seat.ttl);
                    seat.heartbeat_interval = heartbeat_interval(&lease);
                }
            }
            // The driver reconnects; nothing changes in the book.
            Event::Draining(_) => {}
        }
    }

    fn granted(&mut self, granted: proto::LeaseGranted, now: Instant) {
        let Some(lease) = granted.lease else { return };
        let Some(pending) = self.pending.remove(&granted.request_id) else {
            // Nobody waits for it any more (cancelled): give it back.
            self.push(Operation::Release(StreamRelease {
                lease_id: lease.lease_id,
                generation: lease.generation,
            }));
            return;
        };
        if self.seats.contains_key(&lease.lease_id) {
            let message = format!(
                "this client holds lease {} already (engine id {:?} twice); give each acquire its own engine id",
                lease.lease_id, pending.engine_id
            );
            let _ = pending.answer.send(Err(Status::already_exists(message)));
            return;
        }
        let Some(commands) = self.commands.upgrade() else {
            return;
        };
        let ttl = Duration::from_millis(u64::from(lease.ttl_ms));
        let (lost, lost_receiver) = watch::channel(None);
        let held = HeldSeat {
            generation: lease.generation,
            deadline: now + ttl,
            heartbeat_interval: heartbeat_interval(&lease),
            ttl,
            lost,
            releasing: None,
        };
        let lease_id = lease.lease_id.clone();
        let generation = lease.generation;
        let seat = Seat {
            lease,
            resumed: granted.resumed,
            lost: lost_receiver,
            commands,
            released: false,
        };
        self.seats.insert(lease_id.clone(), held);
        if pending.answer.send(Ok(seat)).is_err() {
            // The waiter went away between the grant and now: the seat's drop queued
            // its release already (as a command); make sure it goes out.
            self.release(lease_id, generation, None, true);
        }
    }

    fn ended(&mut self, ended: proto::LeaseEnded) {
        let holds = self
            .seats
            .get(&ended.lease_id)
            .is_some_and(|seat| seat.generation == ended.generation);
        if !holds {
            return;
        }
        let seat = self.seats.remove(&ended.lease_id).expect("checked above");
        if let Some(waiters) = seat.releasing {
            for done in waiters {
                let _ = done.send(Ok(()));
            }
            return;
        }
        let reason = EndReason::try_from(ended.reason).unwrap_or(EndReason::Unspecified);
        let lost = SeatLost {
            reason: lost_reason(reason),
            message: ended.message,
        };
        seat.lost.send_replace(Some(lost));
    }

    /// The earliest instant at which [`Book::expire`] has something to do.
    fn next_deadline(&self, connected: bool) -> Option<Instant> {
        let seats = self.seats.values().map(|seat| seat.deadline);
        let acquires = self
            .pending
            .values()
            .filter(|_| !connected)
            .map(|pending| pending.give_up_at);
        seats.chain(acquires).min()
    }

    /// Ends what the broker cannot have kept: seats past their deadline (lost, or
    /// released when they were being released), and, while no stream is up, acquires
    /// past their patience.
    fn expire(&mut self, now: Instant, connected: bool) {
        let expired: Vec<String> = self
            .seats
            .iter()
            .filter(|(_, seat)| seat.deadline <= now)
            .map(|(lease_id, _)| lease_id.clone())
            .collect();
        for lease_id in expired {
            let seat = self.seats.remove(&lease_id).expect("listed above");
            if let Some(waiters) = seat.releasing {
                for done in waiters {
                    let _ = done.send(Ok(()));
                }
                continue;
            }
            let (reason, message) = if connected {
                (
                    LostReason::Expired,
                    "the broker did not confirm a renewal within the lease's TTL",
                )
            } else {
                (
                    LostReason::Unreachable,
                    "the broker was unreachable until the lease's deadline passed",
                )
            };
            seat.lost.send_replace(Some(SeatLost {
                reason,
                message: message.into(),
            }));
        }
        if connected {
            return;
        }
        let given_up: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.give_up_at <= now)
            .map(|(request_id, _)| *request_id)
            .collect();
        for request_id in given_up {
            let pending = self.pending.remove(&request_id).expect("listed above");
            let status = Status::unavailable("no broker could be reached in time");
            let _ = pending.answer.send(Err(status));
        }
    }

    /// The stream failed for good: every acquire fails and every seat is lost.
    fn fail_all(&mut self, status: &Status) {
        for (_, pending) in self.pending.drain() {
            let _ = pending.answer.send(Err(status.clone()));
        }
        for (_, seat) in self.seats.drain() {
            if let Some(waiters) = seat.releasing {
                for done in waiters {
                    let _ = done.send(Err(status.clone()));
                }
                continue;
            }
            seat.lost.send_replace(Some(SeatLost {
                reason: LostReason::Refused,
                message: format!("{}: {}", client::code_name(status.code()), status.message()),
            }));
        }
    }

    /// How often to renew: the shortest heartbeat interval of the seats held.
    fn renew_interval(&self) -> Option<Duration> {
        self.seats
            .values()
            .map(|seat| seat.heartbeat_interval)
            .min()
    }
}

fn heartbeat_interval(lease: &proto::Lease) -> Duration {
    let interval = if lease.heartbeat_interval_ms > 0 {
        lease.heartbeat_interval_ms
    } else {
        lease.ttl_ms / 3
    };
    Duration::from_millis(u64::from(interval.max(1)))
}

fn acquire_operation(request_id: u64, pending: &PendingAcquire, now: Instant) -> Operation {
    let wait_left = pending.wait_until.saturating_duration_since(now);
    Operation::Acquire(StreamAcquire {
        request_id,
        product: pending.spec.product as i32,
        engine_id: pending.engine_id.clone(),
        hostname: pending.spec.hostname.clone(),
        label: pending.spec.label.clone(),
        wait_ms: wait_left.as_millis().min(u128::from(u32::MAX)) as u32,
    })
}

fn lost_reason(reason: EndReason) -> LostReason {
    match reason {
        EndReason::Expired => LostReason::Expired,
        EndReason::Terminated => LostReason::Terminated,
        EndReason::Unassigned => LostReason::Unassigned,
        EndReason::MemberRemoved => LostReason::MemberRemoved,
        EndReason::KeyRevoked => LostReason::KeyRevoked,
        EndReason::LicenseExpired => LostReason::LicenseExpired,
        EndReason::OrganizationDeleted => LostReason::OrganizationDeleted,
        EndReason::Released => LostReason::ReleasedElsewhere,
        EndReason::NotFound | EndReason::Unspecified => LostReason::NotFound,
    }
}

/// An engine id of its own for an acquire that names none: `engine-` and 16 hex digits.
fn random_engine_id() -> String {
    let random = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    });
    format!("engine-{random:016x}")
}

/// An open stream: where to send, what comes back, and the broker's address.
struct Stream {
    outbound: mpsc::Sender<ChannelRequest>,
    inbound: Streaming<ChannelResponse>,
    addr: String,
}

/// How a stream ended.
enum StreamEnd {
    /// Broken or draining: reconnect (`failed`: count it for the backoff).
    Reconnect { failed: bool },
    /// A status that is not retried.
    Final(Status),
    /// Every handle is gone and nothing is held: the task ends.
    Done,
}

/// The client's task: the book, the options, the stream.
pub(super) struct Driver {
    options: ClientOptions,
    key: BearerKey,
    commands: mpsc::Receiver<Command>,
    book: Book,
    stopped: Arc<std::sync::OnceLock<Status>>,
    /// The address of the next attempt from the list (index into `options.addrs`).
    next_addr: usize,
    /// The leader a standby named: the next attempt goes there instead.
    leader: Option<String>,
    /// Standbys followed in a row (reset when the list is taken up again).
    redirects: usize,
    stream: Option<Stream>,
}

impl Driver {
    pub(super) fn new(
        options: ClientOptions,
        key: BearerKey,
        commands: mpsc::Receiver<Command>,
        // The task holds a weak sender only: the channel closes when the last handle goes.
        weak: mpsc::WeakSender<Command>,
        stopped: Arc<std::sync::OnceLock<Status>>,
    ) -> Self {
        let book = Book::new(weak, options.unreachable_patience);
        Driver {
            options,
            key,
            commands,
            book,
            stopped,
            next_addr: 0,
            leader: None,
            redirects: 0,
            stream: None,
        }
    }

    /// Opens the first stream: each address of the list once, in order, and the
    /// leaders standbys name on the way.
    pub(super) async fn open_first(mut self) -> Result<Self, ConnectError> {
        let mut listed_tried = 0;
        loop {
            listed_tried += usize::from(self.leader.is_none());
            match self.open().await {
                Ok(stream) => {
                    self.stream = Some(stream);
                    return Ok(self);
                }
                Err(error) if self.leader.is_none() && listed_tried == self.options.addrs.len() => {
                    return Err(error);
                }
                Err(_) => {}
            }
        }
    }

    /// The address of the next attempt: the leader a standby named, else the next of
    /// the list.
    fn next_target(&mut self) -> String {
        if let Some(leader) = self.leader.take() {
            return leader;
        }
        self.redirects = 0;
        let addr = self.options.addrs[self.next_addr].clone();
        self.next_addr = (self.next_addr + 1) % self.options.addrs.len();
        addr
    }

    /// Remembers the leader that `status`, the answer of `addr`, names, for the next
    /// attempt (unless the standbys followed in a row are at their bound).
    fn follow_leader(&mut self, status: &Status, addr: &str) {
        if self.redirects >= limits::LEADER_REDIRECTS_MAX {
            return;
        }
        if let Some(leader) = client::leader_redirect(status, addr) {
            tracing::debug!(standby = %addr, %leader, "following a standby to the leader");
            self.leader = Some(leader);
            self.redirects += 1;
        }
    }

    /// One attempt at the next address: connect, send what the book has to say to a
    /// new stream, and wait for the stream's headers.
    async fn open(&mut self) -> Result<Stream, ConnectError> {
        let addr = self.next_target();
        let timeout = self.options.connect_timeout;
        let keepalive = self.keepalive();
        let connecting = client::connect_tuned(&addr, &self.options.tls, |endpoint| {
            keepalive.apply(endpoint)
        });
        let channel = match tokio::time::timeout(timeout, connecting).await {
            Ok(channel) => channel?,
            Err(_) => {
                return Err(ConnectError::Client(ClientError::Unreachable {
                    addr,
                    reason: format!(
                        "no connection within {}",
                        humantime::format_duration(timeout)
                    ),
                }));
            }
        };
        let mut session = client::session(channel, self.key.clone());
        let (outbound, requests) = mpsc::channel(limits::ENGINE_MESSAGES_IN_FLIGHT_MAX);
        self.book.reopen(Instant::now());
        // What does not fit goes out from `serve`, as the stream drains.
        while !self.book.outbox.is_empty() {
            let Ok(permit) = outbound.try_reserve() else {
                break;
            };
            permit.send(self.book.next_batch().expect("not empty"));
        }
        let opening = session.channel(ReceiverStream::new(requests));
        let refused = |status| ConnectError::Refused {
            addr: addr.clone(),
            status,
        };
        match tokio::time::timeout(timeout, opening).await {
            Ok(Ok(response)) => Ok(Stream {
                outbound,
                inbound: response.into_inner(),
                addr,
            }),
            Ok(Err(status)) => {
                self.follow_leader(&status, &addr);
                Err(refused(status))
            }
            Err(_) => Err(refused(Status::unavailable(format!(
                "the stream did not open within {}",
                humantime::format_duration(timeout)
            )))),
        }
    }

    /// The options' keepalive, no slower than the held seats' heartbeat interval asks.
    fn keepalive(&self) -> Keepalive {
        match self.book.renew_interval() {
            Some(every) => self
                .options
                .keepalive
                .at_most(Keepalive::for_heartbeat_interval(every)),
            None => self.options.keepalive,
        }
    }

    /// Runs until every handle is gone with nothing held, or a final status.
    pub(super) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let end = match self.stream.take() {
                Some(stream) => self.serve(stream).await,
                None => self.reconnect(&mut failures).await,
            };
            match end {
                StreamEnd::Reconnect { failed } => {
                    // A hop to a named leader neither counts nor resets the failures.
                    if failed {
                        failures += 1;
                    } else if self.leader.is_none() {
                        failures = 0;
                    }
                }
                StreamEnd::Final(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "the engine client stops");
                    self.book.fail_all(&status);
                    let _ = self.stopped.set(status);
                    return;
                }
                StreamEnd::Done => return,
            }
        }
    }

    /// Waits out the backoff (serving commands and deadlines meanwhile), then one
    /// attempt at the next address; a leader just named is tried at once.
    async fn reconnect(&mut self, failures: &mut u32) -> StreamEnd {
        let pause = match self.leader {
            Some(_) => Duration::ZERO,
            None => self.options.backoff.next_delay(*failures),
        };
        let attempt_at = Instant::now() + pause;
        loop {
            let deadline = self.book.next_deadline(false);
            tokio::select! {
                _ = tokio::time::sleep_until(attempt_at) => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.book.command(command, false, Instant::now()),
                    // Every handle is gone; what is being released ends at its deadline.
                    None => return StreamEnd::Done,
                },
                _ = sleep_until_some(deadline) => self.book.expire(Instant::now(), false),
            }
        }
        match self.open().await {
            Ok(stream) => {
                self.stream = Some(stream);
                StreamEnd::Reconnect { failed: false }
            }
            Err(ConnectError::Refused { status, .. }) if !is_retryable(&status) => {
                StreamEnd::Final(status)
            }
            Err(error) => {
                tracing::debug!(%error, "reconnect failed");
                // A standby that named the leader answered: no failure to back off from.
                StreamEnd::Reconnect {
                    failed: self.leader.is_none(),
                }
            }
        }
    }

    /// Serves one open stream until it ends.
    async fn serve(&mut self, mut stream: Stream) -> StreamEnd {
        let mut renew_at = self
            .book
            .renew_interval()
            .map(|every| Instant::now() + every);
        let mut commands_open = true;
        loop {
            if !commands_open && self.book.is_idle() && self.book.outbox.is_empty() {
                return StreamEnd::Done;
            }
            let deadline = self.book.next_deadline(true);
            let has_output = !self.book.outbox.is_empty();
            tokio::select! {
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => self.book.command(command, true, Instant::now()),
                    None => commands_open = false,
                },
                message = stream.inbound.message() => match message {
                    Ok(Some(response)) => {
                        let now = Instant::now();
                        let mut draining = false;
                        for event in response.events.into_iter().filter_map(|e| e.event) {
                            draining |= matches!(event, Event::Draining(_));
                            self.book.event(event, now);
                        }
                        if draining {
                            return StreamEnd::Reconnect { failed: false };
                        }
                    }
                    Ok(None) => return StreamEnd::Reconnect { failed: true },
                    Err(status) if is_retryable(&status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "the stream broke");
                        self.follow_leader(&status, &stream.addr);
                        return StreamEnd::Reconnect { failed: true };
                    }
                    Err(status) => return StreamEnd::Final(status),
                },
                permit = stream.outbound.reserve(), if has_output => match permit {
                    Ok(permit) => permit.send(self.book.next_batch().expect("has output")),
                    Err(_) => return StreamEnd::Reconnect { failed: true },
                },
                _ = sleep_until_some(renew_at) => {
                    self.book.renew(Instant::now());
                    renew_at = None;
                },
                _ = sleep_until_some(deadline) => self.book.expire(Instant::now(), true),
            }
            if renew_at.is_none() {
                renew_at = self
                    .book
                    .renew_interval()
                    .map(|every| Instant::now() + every);
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{AcquireDenied, AcquireQueued, LeaseAttached, LeaseEnded, LeaseGranted};

    struct Waiter {
        queue: watch::Receiver<Option<QueuePosition>>,
        answer: oneshot::Receiver<Result<Seat, Status>>,
    }

    fn book() -> (Book, mpsc::Sender<Command>, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(64);
        (
            Book::new(commands.downgrade(), Duration::from_secs(10)),
            commands,
            receiver,
        )
    }

    fn acquire(book: &mut Book, request_id: u64, wait: Duration, connected: bool) -> Waiter {
        let (queue, queue_receiver) = watch::channel(None);
        let (answer, answer_receiver) = oneshot::channel();
        let spec = AcquireSpec {
            product: proto::Product::Kre,
            engine_id: None,
            hostname: "ci-7".into(),
            label: String::new(),
            wait,
        };
        let command = Command::Acquire(NewAcquire {
            request_id,
            spec,
            queue,
            answer,
        });
        book.command(command, connected, Instant::now());
        Waiter {
            queue: queue_receiver,
            answer: answer_receiver,
        }
    }

    fn lease(lease_id: &str, generation: u64) -> proto::Lease {
        proto::Lease {
            lease_id: lease_id.into(),
            generation,
            ttl_ms: 3_000,
            heartbeat_interval_ms: 1_000,
            ..Default::default()
        }
    }

    fn grant(book: &mut Book, request_id: u64, lease_id: &str, generation: u64) {
        let granted = LeaseGranted {
            request_id,
            lease: Some(lease(lease_id, generation)),
            resumed: false,
        };
        book.event(Event::Granted(granted), Instant::now());
    }

    fn ended(lease_id: &str, generation: u64, reason: EndReason) -> Event {
        Event::Ended(LeaseEnded {
            lease_id: lease_id.into(),
            generation,
            reason: reason as i32,
            message: format!("{reason:?}"),
        })
    }

    fn operations(book: &mut Book) -> Vec<Operation> {
        let mut operations = Vec::new();
        while let Some(batch) = book.next_batch() {
            operations.extend(batch.operations.into_iter().filter_map(|op| op.operation));
        }
        operations
    }

    #[test]
    fn events_reach_the_acquire_they_name_by_request_id() {
        let (mut book, _commands, _receiver) = book();
        let mut first = acquire(&mut book, 1, Duration::from_secs(60), true);
        let mut second = acquire(&mut book, 2, Duration::ZERO, true);
        let sent = operations(&mut book);
        let ids: Vec<u64> = sent
            .iter()
            .map(|op| match op {
                Operation::Acquire(acquire) => acquire.request_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2]);
        if let Operation::Acquire(acquire) = &sent[0] {
            assert!(acquire.wait_ms > 59_000 && acquire.wait_ms <= 60_000);
            assert!(acquire.engine_id.starts_with("engine-"));
        }

        let queued = AcquireQueued {
            request_id: 1,
            position: 2,
            queue_length: 3,
        };
        book.event(Event::Queued(queued), Instant::now());
        let position = QueuePosition {
            position: 2,
            queue_length: 3,
        };
        assert_eq!(*first.queue.borrow(), Some(position));
        assert_eq!(*second.queue.borrow(), None);

        let denied = AcquireDenied {
            request_id: 2,
            code: Code::ResourceExhausted as i32,
            message: "quota full".into(),
        };
        book.event(Event::Denied(denied), Instant::now());
        let status = second.answer.try_recv().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(first.answer.try_recv().is_err(), "not answered yet");

        grant(&mut book, 1, "lease-a", 7);
        let seat = first.answer.try_recv().unwrap().unwrap();
        assert_eq!((seat.lease_id(), seat.generation()), ("lease-a", 7));
        assert!(book.pending.is_empty());
        assert_eq!(book.renew_interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn an_end_reaches_the_seat_it_names_with_its_reason() {
        let (mut book, _commands, _receiver) = book();
        let mut a = acquire(&mut book, 1, Duration::ZERO, true);
        let mut b = acquire(&mut book, 2, Duration::ZERO, true);
        grant(&mut book, 1, "lease-a", 7);
        grant(&mut book, 2, "lease-b", 8);
        let a = a.answer.try_recv().unwrap().unwrap();
        let b = b.answer.try_recv().unwrap().unwrap();

        // A stale generation is not this seat.
        book.event(ended("lease-a", 6, EndReason::Terminated), Instant::now());
        assert_eq!(a.lost_now(), None);
        book.event(ended("lease-a", 7, EndReason::Terminated), Instant::now());
        let lost = a.lost_now().expect("lost");
        assert_eq!(lost.reason, LostReason::Terminated);
        assert_eq!(b.lost_now(), None);
        assert_eq!(book.seats.len(), 1);
        std::mem::forget(a); // its drop would queue a release command; not under test here
        std::mem::forget(b);
    }

    #[test]
    fn a_release_is_answered_by_the_end_it_asked_for() {
        let (mut book, _commands, _receiver) = book();
        let mut a = acquire(&mut book, 1, Duration::ZERO, true);
        grant(&mut book, 1, "lease-a", 7);
        let seat = a.answer.try_recv().unwrap().unwrap();
        operations(&mut book);
        let (done, mut answer) = oneshot::channel();
        let release = Command::Release {
            lease_id: "lease-a".into(),
            generation: 7,
            done: Some(done),
        };
        book.command(release, true, Instant::now());
        assert!(matches!(&operations(&mut book)[..], [Operation::Release(r)] if r.generation == 7));
        assert!(answer.try_recv().is_err(), "not before the broker ends it");
        book.event(ended("lease-a", 7, EndReason::Released), Instant::now());
        assert!(answer.try_recv().unwrap().is_ok());
        assert_eq!(seat.lost_now(), None, "a release is not a loss");
        std::mem::forget(seat);
    }

    #[test]
    fn a_new_stream_attaches_every_seat_and_resends_every_pending_acquire() {
        let (mut book, _commands, _receiver) = book();
        let mut seats = Vec::new();
        for request_id in 1..=3 {
            let mut waiter = acquire(&mut book, request_id, Duration::ZERO, true);
            grant(
                &mut book,
                request_id,
                &format!("lease-{request_id}"),
                request_id + 10,
            );
            seats.push(waiter.answer.try_recv().unwrap().unwrap());
        }
        let _waiting = acquire(&mut book, 4, Duration::from_secs(30), true);
        let (done, _answer) = oneshot::channel();
        let release = Command::Release {
            lease_id: "lease-3".into(),
            generation: 13,
            done: Some(done),
        };
        book.command(release, true, Instant::now());
        book.renew(Instant::now());

        book.reopen(Instant::now());
        let sent = operations(&mut book);
        let [
            Operation::Attach(attach),
            Operation::Release(release),
            Operation::Acquire(acquire),
        ] = &sent[..]
        else {
            panic!("{sent:?}")
        };
        let attached: Vec<(&str, u64)> = attach
            .leases
            .iter()
            .map(|handle| (handle.lease_id.as_str(), handle.generation))
            .collect();
        assert_eq!(
            attached,
            [("lease-1", 11), ("lease-2", 12), ("lease-3", 13)]
        );
        assert_eq!(
            (release.lease_id.as_str(), release.generation),
            ("lease-3", 13)
        );
        assert_eq!(acquire.request_id, 4);
        assert!(acquire.wait_ms <= 30_000);
        assert!(
            book.renewals_sent.is_empty(),
            "the old stream's renewal is gone with it"
        );
        seats.into_iter().for_each(std::mem::forget);
    }

    #[test]
    fn renewals_and_attaches_move_deadlines_forward_and_unreachable_seats_are_lost() {
        let (mut book, _commands, _receiver) = book();
        let mut a = acquire(&mut book, 1, Duration::ZERO, true);
        let start = Instant::now();
        grant(&mut book, 1, "lease-a", 7);
        let seat = a.answer.try_recv().unwrap().unwrap();
        let granted_deadline = book.seats["lease-a"].deadline;
        assert!(granted_deadline >= start + Duration::from_secs(3));

        let later = start + Duration::from_secs(2);
        book.renew(later);
        let renewed = proto::LeasesRenewed {
            expires_at_unix_ms: 0,
            ttl_ms: 3_000,
            lease_count: 1,
        };
        book.event(Event::Renewed(renewed), later);
        assert_eq!(
            book.seats["lease-a"].deadline,
            later + Duration::from_secs(3)
        );

        let attached = LeaseAttached {
            lease: Some(lease("lease-a", 7)),
        };
        let reattached = later + Duration::from_secs(1);
        book.event(Event::Attached(attached), reattached);
        assert_eq!(
            book.seats["lease-a"].deadline,
            reattached + Duration::from_secs(3)
        );

        book.expire(reattached + Duration::from_millis(2_999), false);
        assert_eq!(seat.lost_now(), None);
        book.expire(reattached + Duration::from_secs(3), false);
        assert_eq!(seat.lost_now().unwrap().reason, LostReason::Unreachable);
        assert!(book.is_idle());
        std::mem::forget(seat);
    }

    #[test]
    fn a_grant_nobody_waits_for_is_given_back() {
        let (mut book, _commands, _receiver) = book();
        let waiter = acquire(&mut book, 1, Duration::from_secs(5), true);
        operations(&mut book);
        book.command(Command::Cancel { request_id: 1 }, true, Instant::now());
        assert!(matches!(&operations(&mut book)[..], [Operation::Cancel(c)] if c.request_id == 1));
        drop(waiter);
        grant(&mut book, 1, "lease-a", 7);
        assert!(
            matches!(&operations(&mut book)[..], [Operation::Release(r)] if r.lease_id == "lease-a")
        );
        assert!(book.seats.is_empty());
    }

    #[test]
    fn acquires_past_the_bound_are_refused_at_once() {
        let (mut book, _commands, _receiver) = book();
        let waiters: Vec<Waiter> = (0..limits::ENGINE_PENDING_ACQUIRES_MAX as u64)
            .map(|request_id| acquire(&mut book, request_id, Duration::ZERO, false))
            .collect();
        let mut refused = acquire(&mut book, u64::MAX, Duration::ZERO, false);
        let status = refused.answer.try_recv().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(book.pending.len(), waiters.len());
    }

    #[test]
    fn while_disconnected_acquires_give_up_after_their_patience() {
        let (mut book, _commands, _receiver) = book();
        let mut waiter = acquire(&mut book, 1, Duration::from_secs(1), false);
        assert!(
            book.next_batch().is_none(),
            "nothing goes out without a stream"
        );
        let give_up = book.next_deadline(false).unwrap();
        book.expire(give_up - Duration::from_millis(1), false);
        assert!(waiter.answer.try_recv().is_err());
        book.expire(give_up, false);
        let status = waiter.answer.try_recv().unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let (mut book, _commands, _receiver) = book();
        for _ in 0..limits::ENGINE_OPERATIONS_PER_MESSAGE_MAX + 5 {
            book.push(Operation::Renew(StreamRenew {}));
        }
        let first = book.next_batch().unwrap();
        assert_eq!(
            first.operations.len(),
            limits::ENGINE_OPERATIONS_PER_MESSAGE_MAX
        );
        assert_eq!(book.next_batch().unwrap().operations.len(), 5);
        let leases: Vec<LeaseHandle> = (0..limits::ENGINE_ATTACH_LEASES_PER_OPERATION_MAX)
            .map(|i| LeaseHandle {
                lease_id: format!("{i:032x}"),
                generation: u64::MAX,
            })
            .collect();
        for _ in 0..8 {
            book.push(Operation::Attach(StreamAttach {
                leases: leases.clone(),
            }));
        }
        while let Some(batch) = book.next_batch() {
            let bytes = prost::Message::encoded_len(&batch);
            assert!(bytes <= limits::ENGINE_MESSAGE_BYTES_MAX, "{bytes}");
        }
    }

    #[test]
    fn only_unavailable_and_broken_connections_are_retried() {
        assert!(is_retryable(&Status::unavailable("restarting")));
        for final_status in [
            Status::unauthenticated("bad key"),
            Status::permission_denied("not yours"),
            Status::unimplemented("no channel"),
            Status::resource_exhausted("slow reader"),
            Status::invalid_argument("bad"),
            Status::unknown("no transport cause"),
        ] {
            assert!(!is_retryable(&final_status), "{final_status:?}");
        }
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        // A connection that broke: no status from the broker, the cause as the source.
        assert!(std::error::Error::source(&broken).is_some());
        assert!(is_retryable(&broken), "{broken:?}");
    }
}
