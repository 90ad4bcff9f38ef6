//! `SessionService.Channel`: one bidirectional stream per engine host. The engine sends
//! batches of operations (acquire, release, renew, attach, cancel), the broker answers
//! with batches of events (granted, denied, queued, renewed, ended, attached,
//! draining), and pushes the end of any lease the stream holds the moment it ends.
//!
//! - The call is authenticated from its headers by `guard::AuthLayer` like every other
//!   call; a stream holds leases of its key's user only (the lease table looks leases
//!   up by user, so another user's lease is simply not found).
//! - One task per stream ([`StreamTask`]) reads the operations in order. An acquire
//!   that finds a seat is granted inline, and its `granted` is sent once its record is
//!   durable ([`grants`]: the task wakes once per commit group, not per grant); one
//!   that waits in the queue runs in a task of its own, so a batch is never held up
//!   by one of its acquires. Everything the engine is told goes through the stream's
//!   bounded [`Outbox`].
//! - Liveness is the stream's: one `renew` extends every lease it holds
//!   (`Broker::renew_all`, one lock of the organization). A broken stream leaves its
//!   leases to their deadline; a new stream attaches them by id and generation.
//! - [`StreamRegistry`] routes the end of a held lease to its stream (as a
//!   `LeaseObserver`), counts streams per key, drains them at shutdown, and wakes
//!   them to check their key after an admin change that may have revoked it.
//!
//! Bounds (`limits`): operations per message, message size (the service's decoding
//! limit), leases per stream, pending acquires per stream, streams per key (streams
//! per connection: HTTP/2's concurrent streams), the outbox.

mod grants;
mod metrics;
mod outbox;
mod registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status, Streaming};

pub use outbox::{EventStream, Outbox};
pub use registry::{StreamRegistry, StreamShared};

use super::convert;
use super::status::{code_of, to_status};
use crate::activity::Activity;
use crate::auth;
use crate::broker::{Acquisition, Broker, EngineRequest};
use crate::connections::with_call_client_subject;
use crate::domain::{DomainError, LeaseId, Principal, Termination};
use crate::limits;
use crate::proto::{self, stream_event::Event, stream_operation::Operation};
use grants::{Settled, UnannouncedGrants};

/// What a stream's tasks share.
struct StreamContext {
    broker: Arc<Broker>,
    activity: Arc<Activity>,
    registry: Arc<StreamRegistry>,
    principal: Principal,
    stream: Arc<StreamShared>,
}

/// Opens a stream for the authenticated caller (a member: the operator holds no
/// sessions) and starts its task; the answer is the stream of event batches.
pub fn open(
    broker: &Arc<Broker>,
    activity: &Arc<Activity>,
    registry: &Arc<StreamRegistry>,
    request: Request<Streaming<proto::ChannelRequest>>,
) -> Result<Response<EventStream>, Status> {
    let principal = super::principal(broker, &request)?;
    let Principal::Member { org, .. } = &principal else {
        return Err(Status::permission_denied(
            "the operator key cannot hold sessions; open the stream with a member's API key",
        ));
    };
    let token = super::bearer_token(&request)?.to_owned();
    let client_subject = super::guard::client_subject(request.extensions());
    let (outbox, events) = Outbox::new();
    let stream = registry
        .open(org.clone(), auth::sha256(&token), outbox)
        .map_err(to_status)?;
    metrics::stream_opened();
    let context = Arc::new(StreamContext {
        broker: Arc::clone(broker),
        activity: Arc::clone(activity),
        registry: Arc::clone(registry),
        principal,
        stream,
    });
    let task = StreamTask {
        context,
        token,
        client_subject: client_subject.clone(),
        pending: HashMap::new(),
        waiting: JoinSet::new(),
        unannounced: UnannouncedGrants::default(),
    };
    // The stream's events are audited with its connection's client certificate
    // subject, as a unary call's are.
    tokio::spawn(with_call_client_subject(
        client_subject,
        task.run(request.into_inner()),
    ));
    Ok(Response::new(events))
}

/// The task of one stream: reads its operations in order and applies them.
struct StreamTask {
    context: Arc<StreamContext>,
    /// The key the stream was opened with, checked again when it may be revoked.
    token: String,
    /// The connection's client certificate subject, for a key bound to one.
    client_subject: Option<Arc<str>>,
    /// Acquires not answered yet, by request id: the cancel signal of one waiting in
    /// the queue, `None` for a grant waiting for the log (a cancel cannot take back).
    pending: HashMap<u64, Option<oneshot::Sender<()>>>,
    /// The tasks of the acquires waiting in the queue; each returns its request id.
    waiting: JoinSet<u64>,
    /// Grants made inline, to announce once durable, oldest first.
    unannounced: UnannouncedGrants,
}

impl StreamTask {
    async fn run(mut self, mut inbound: Streaming<proto::ChannelRequest>) {
        let context = Arc::clone(&self.context);
        let outbox = &context.stream.outbox;
        let mut drained = context.registry.drained();
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if let Err(status) = self.apply(request) {
                            outbox.close(Err(status));
                            break;
                        }
                    }
                    // The engine closed its side: the stream is over.
                    Ok(None) => {
                        outbox.close(Ok(()));
                        break;
                    }
                    // The engine went away (or sent what could not be decoded).
                    Err(status) => {
                        outbox.close(Err(status));
                        break;
                    }
                },
                Some(finished) = self.waiting.join_next() => {
                    if let Ok(request_id) = finished {
                        self.pending.remove(&request_id);
                    }
                }
                settled = self.unannounced.settled() => self.announce(settled),
                () = context.stream.recheck_key.notified() => {
                    if let Err(error) = context
                        .broker
                        .authenticate(&self.token, self.client_subject.as_deref()) {
                        self.key_revoked(error);
                        break;
                    }
                }
                Ok(()) = drained.changed() => {
                    let reconnect_within_ms = drained.borrow().unwrap_or_default();
                    outbox.push(event(Event::Draining(proto::Draining { reconnect_within_ms })));
                    outbox.close(Ok(()));
                    break;
                }
                () = outbox.closed() => break,
            }
        }
        // Waiting acquires leave the queue (a seat granted meanwhile is given back);
        // the leases held stay live until their deadline, for a new stream to attach,
        // and so do the grants not announced yet (an acquire again resumes them).
        self.waiting.shutdown().await;
        context.registry.close(&context.stream);
        metrics::stream_closed();
    }

    /// The stream's key was revoked: the leases it holds end (KEY_REVOKED) and the
    /// stream closes with UNAUTHENTICATED.
    fn key_revoked(&self, error: DomainError) {
        let context = &self.context;
        for (id, generation) in context.stream.held_now() {
            let _ = context.broker.end_held(
                &context.principal,
                id,
                generation,
                Termination::KeyRevoked,
            );
        }
        context.stream.outbox.close(Err(to_status(error)));
    }

    /// Applies one batch in order. An error closes the stream (a malformed batch);
    /// an operation's own failure is an event.
    fn apply(&mut self, request: proto::ChannelRequest) -> Result<(), Status> {
        if request.operations.len() > limits::CHANNEL_OPERATIONS_PER_MESSAGE_MAX {
            return Err(Status::invalid_argument(format!(
                "a ChannelRequest carries at most {} operations, this one {}: split the batch",
                limits::CHANNEL_OPERATIONS_PER_MESSAGE_MAX,
                request.operations.len()
            )));
        }
        for operation in request.operations {
            match operation.operation {
                Some(Operation::Acquire(acquire)) => self.acquire(acquire),
                Some(Operation::Release(release)) => self.release(release),
                Some(Operation::Renew(_)) => self.renew()?,
                Some(Operation::Attach(attach)) => self.attach(attach),
                Some(Operation::Cancel(cancel)) => {
                    if let Some(Some(_)) = self.pending.get(&cancel.request_id)
                        && let Some(Some(cancel)) = self.pending.remove(&cancel.request_id)
                    {
                        let _ = cancel.send(());
                    }
                }
                None => {
                    return Err(Status::invalid_argument(
                        "a StreamOperation names no operation (acquire, release, renew, attach or cancel)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn acquire(&mut self, raw: proto::StreamAcquire) {
        let context = &self.context;
        let request_id = raw.request_id;
        let deny = |code: tonic::Code, message: String| {
            context
                .stream
                .outbox
                .push(denied(request_id, code, message));
        };
        if self.pending.contains_key(&request_id) {
            return deny(
                tonic::Code::InvalidArgument,
                format!(
                    "request_id {request_id} is already used by a pending acquire of this stream"
                ),
            );
        }
        debug_assert!(self.unannounced.len() <= self.pending.len());
        if self.pending.len() >= limits::PENDING_ACQUIRES_PER_STREAM_MAX {
            return deny(
                tonic::Code::ResourceExhausted,
                format!(
                    "this stream already has {} acquires pending, the most allowed; wait for their answers",
                    limits::PENDING_ACQUIRES_PER_STREAM_MAX
                ),
            );
        }
        let held = context.stream.held.lock().len();
        if held + self.pending.len() >= limits::LEASES_PER_STREAM_MAX {
            return deny(
                tonic::Code::ResourceExhausted,
                format!(
                    "this stream holds {held} leases and {} acquires are pending, the most allowed is {}; use another stream",
                    self.pending.len(),
                    limits::LEASES_PER_STREAM_MAX
                ),
            );
        }
        let engine = match stream_engine_request(&raw) {
            Ok(engine) => engine,
            Err(error) => return deny(code_of(&error), error.to_string()),
        };
        let broker = &context.broker;
        let started = broker.clock().now();
        let acquired = if raw.wait_ms == 0 {
            broker
                .acquire_now(&context.principal, &engine)
                .map(|(granted, durable)| Acquisition::Granted(granted, durable))
        } else {
            broker.acquire_or_queue(&context.principal, &engine)
        };
        match acquired {
            Ok(Acquisition::Granted(granted, durable)) => {
                self.pending.insert(request_id, None);
                self.unannounced
                    .push(request_id, engine.product, granted, durable);
            }
            Ok(Acquisition::Queued(waiting)) => {
                let wait = Duration::from_millis(raw.wait_ms.into());
                self.wait_in_queue(request_id, engine, waiting, (started, wait));
            }
            Err(error) => answer_acquire(context, request_id, engine.product, Err(error)),
        }
    }

    /// Waits in a task of its own for a seat of the queue, telling the engine its
    /// position, and answers the acquire.
    fn wait_in_queue(
        &mut self,
        request_id: u64,
        engine: EngineRequest,
        waiting: crate::broker::Waiting,
        (started, wait): (tokio::time::Instant, Duration),
    ) {
        let (cancel, cancelled) = oneshot::channel();
        self.pending.insert(request_id, Some(cancel));
        let context = Arc::clone(&self.context);
        let acquire = async move {
            let outcome =
                wait_for_seat(&context, request_id, waiting, started, wait, cancelled).await;
            answer_acquire(&context, request_id, engine.product, outcome);
            request_id
        };
        self.waiting.spawn(with_call_client_subject(
            self.client_subject.clone(),
            acquire,
        ));
    }

    /// Announces the grants whose records are now durable, in the order they were made.
    fn announce(&mut self, settled: Vec<Settled>) {
        for grant in settled {
            self.pending.remove(&grant.request_id);
            answer_acquire(
                &self.context,
                grant.request_id,
                grant.product,
                grant.outcome,
            );
        }
    }

    fn release(&mut self, raw: proto::StreamRelease) {
        let context = &self.context;
        let outbox = &context.stream.outbox;
        let id = match LeaseId::parse(&raw.lease_id) {
            Ok(id) => id,
            Err(error) => return outbox.push(ended_error(&raw.lease_id, raw.generation, &error)),
        };
        // A held lease's end reaches the stream through the registry, like any end.
        let held = context.registry.holds(&context.stream, id);
        match context
            .broker
            .release(&context.principal, id, raw.generation)
        {
            Ok(()) if held => {}
            Ok(()) => outbox.push(ended_event(
                id,
                raw.generation,
                proto::EndReason::Released,
                String::new(),
            )),
            Err(error) => {
                if held {
                    context.registry.let_go(&context.stream, id);
                }
                outbox.push(ended_error(&raw.lease_id, raw.generation, &error));
            }
        }
    }

    /// Renews every lease the stream holds; answers one `renewed`, and an `ended`
    /// for each lease found gone.
    fn renew(&mut self) -> Result<(), Status> {
        let context = &self.context;
        let outbox = &context.stream.outbox;
        let held = context.stream.held_now();
        match context.broker.renew_all(&context.principal, &held) {
            Ok(gone) => {
                for (id, generation, error) in &gone {
                    context.registry.let_go(&context.stream, *id);
                    outbox.push(ended_error(&id.to_string(), *generation, error));
                }
                let ttl = context.broker.leases().timing().ttl;
                outbox.push(event(Event::Renewed(proto::LeasesRenewed {
                    expires_at_unix_ms: context.broker.clock().unix_ms() + ttl.as_millis() as i64,
                    ttl_ms: duration_ms(ttl),
                    lease_count: (held.len() - gone.len()) as u32,
                })));
                Ok(())
            }
            // The leases ended with LICENSE_EXPIRED, pushed by the registry.
            Err(DomainError::LicenseExpired(_)) => Ok(()),
            Err(error) => Err(to_status(error)),
        }
    }

    /// Takes over leases (of this user) by id and generation, fenced like Heartbeat.
    fn attach(&mut self, raw: proto::StreamAttach) {
        let context = &self.context;
        let outbox = &context.stream.outbox;
        for handle in raw.leases {
            let id = match LeaseId::parse(&handle.lease_id) {
                Ok(id) => id,
                Err(error) => {
                    outbox.push(ended_error(&handle.lease_id, handle.generation, &error));
                    continue;
                }
            };
            let attached = context
                .broker
                .attach(&context.principal, id, handle.generation)
                .and_then(|lease| hold_live(context, &lease).map(|()| lease));
            match attached {
                Ok(lease) => outbox.push(event(Event::Attached(proto::LeaseAttached {
                    lease: Some(wire_lease(context, &lease)),
                }))),
                Err(error) => outbox.push(ended_error(&handle.lease_id, handle.generation, &error)),
            }
        }
    }
}

/// Waits in the queue (telling the engine its position) until a seat is granted, the
/// wait runs out or the engine cancels. Returns the grant once durable.
async fn wait_for_seat(
    context: &StreamContext,
    request_id: u64,
    mut waiting: crate::broker::Waiting,
    started: tokio::time::Instant,
    wait: Duration,
    cancelled: oneshot::Receiver<()>,
) -> Result<crate::leases::Granted, DomainError> {
    let broker = &context.broker;
    let outbox = &context.stream.outbox;
    let (position, length) = waiting.position();
    outbox.push(queued(request_id, position, length));
    let waited_from = broker.clock().now();
    let cancelled = async {
        let _ = cancelled.await;
    };
    let granted = waiting
        .granted_within(started, wait, cancelled, |position, length| {
            outbox.push(queued(request_id, position, length))
        })
        .await;
    metrics::waited(broker.clock().now().saturating_duration_since(waited_from));
    granted
}

/// Tells the engine the outcome of its acquire: a granted lease is held by the stream
/// first, so that its end is routed here from then on.
fn answer_acquire(
    context: &StreamContext,
    request_id: u64,
    product: crate::domain::Product,
    outcome: Result<crate::leases::Granted, DomainError>,
) {
    let outbox = &context.stream.outbox;
    let granted = outcome.and_then(|granted| hold_live(context, &granted.lease).map(|()| granted));
    match granted {
        Ok(granted) => outbox.push(event(Event::Granted(proto::LeaseGranted {
            request_id,
            lease: Some(wire_lease(context, &granted.lease)),
            resumed: granted.resumed,
        }))),
        Err(error) => {
            context
                .activity
                .acquire_denied(&context.principal, product, &error);
            outbox.push(denied(request_id, code_of(&error), error.to_string()));
        }
    }
}

/// Makes the stream the holder of `lease`, then checks that it is still live: an end
/// before the registration was not routed here, so it is reported as gone.
fn hold_live(context: &StreamContext, lease: &crate::domain::Lease) -> Result<(), DomainError> {
    if !context
        .registry
        .hold(&context.stream, lease.id, lease.generation)
    {
        return Err(DomainError::LimitReached {
            what: "leases per stream",
            limit: limits::LEASES_PER_STREAM_MAX,
        });
    }
    let Principal::Member { org, email } = &context.principal else {
        unreachable!("streams are opened by members only");
    };
    let live = context
        .broker
        .leases()
        .check_live(org, email, lease.id, lease.generation);
    if let Err(error) = live {
        context.registry.let_go(&context.stream, lease.id);
        return Err(error);
    }
    Ok(())
}

fn stream_engine_request(raw: &proto::StreamAcquire) -> Result<EngineRequest, DomainError> {
    if raw.wait_ms > limits::ACQUIRE_WAIT_MS_MAX {
        return Err(DomainError::invalid(
            "wait_ms",
            format!(
                "{} ms is longer than the longest wait, {} ms",
                raw.wait_ms,
                limits::ACQUIRE_WAIT_MS_MAX
            ),
        ));
    }
    super::session::engine_fields(raw.product, &raw.engine_id, &raw.hostname, &raw.label)
}

fn wire_lease(context: &StreamContext, lease: &crate::domain::Lease) -> proto::Lease {
    let timing = context.broker.leases().timing();
    let Principal::Member { org, .. } = &context.principal else {
        unreachable!("streams are opened by members only");
    };
    let remaining = lease
        .deadline
        .saturating_duration_since(context.broker.clock().now());
    convert::lease_to_wire(
        lease,
        org,
        duration_ms(timing.ttl),
        duration_ms(timing.heartbeat_interval),
        context.broker.clock().unix_ms() + remaining.as_millis() as i64,
    )
}

fn duration_ms(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

fn event(event: Event) -> proto::StreamEvent {
    proto::StreamEvent { event: Some(event) }
}

fn denied(request_id: u64, code: tonic::Code, message: String) -> proto::StreamEvent {
    event(Event::Denied(proto::AcquireDenied {
        request_id,
        code: code as i32,
        message,
    }))
}

fn queued(request_id: u64, position: u32, queue_length: u32) -> proto::StreamEvent {
    event(Event::Queued(proto::AcquireQueued {
        request_id,
        position,
        queue_length,
    }))
}

/// An `ended` event.
pub(crate) fn ended_event(
    id: LeaseId,
    generation: u64,
    reason: proto::EndReason,
    message: String,
) -> proto::StreamEvent {
    event(Event::Ended(proto::LeaseEnded {
        lease_id: id.to_string(),
        generation,
        reason: reason as i32,
        message,
    }))
}

/// The `ended` answer of an operation on a lease that is gone, superseded, malformed
/// or not the caller's: NOT_FOUND, with the reason in words.
fn ended_error(lease_id: &str, generation: u64, error: &DomainError) -> proto::StreamEvent {
    event(Event::Ended(proto::LeaseEnded {
        lease_id: lease_id.to_string(),
        generation,
        reason: proto::EndReason::NotFound as i32,
        message: error.to_string(),
    }))
}
