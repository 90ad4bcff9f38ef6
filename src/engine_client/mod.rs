//! The engine client library: what an engine embeds to hold seats through the
//! broker's session channel (`SessionService.Channel`), so that it never writes a
//! heartbeat loop, a retry or a re-attach of its own.
//!
//! One [`EngineClient`] is one stream to one broker at a time, shared by every seat it
//! holds (one client per engine host):
//! - [`EngineClient::acquire`] builds an acquire (engine id, hostname, label, how long
//!   to wait in the broker's queue) and answers a [`Seat`]; [`PendingSeat`] shows the
//!   queue position while it waits.
//! - Renewal is automatic: one `renew` per heartbeat interval for all the seats of the
//!   stream.
//! - A broken stream (the broker restarting, a network failure, a draining broker, a
//!   connection whose HTTP/2 keepalive PING went unanswered: [`Keepalive`]) is
//!   reconnected with exponential backoff and jitter ([`Backoff`]), trying the next
//!   address each time (or, at once, the leader a cluster's standby names in its
//!   refusal: any node's address reaches the leader), and every held seat is attached
//!   to the new stream by lease id and generation. Only `UNAVAILABLE` (and a connection that broke without a status)
//!   is retried; any other status is final and surfaced to every seat and acquire.
//! - [`Seat::lost`] says when and why a seat was lost: ended by the broker (an admin
//!   terminated it, the product was unassigned, ...) or expired because the broker
//!   stayed unreachable past the lease's deadline.
//! - [`Seat::release`] gives the seat back and waits for the broker's answer; dropping
//!   a [`Seat`] releases it too, best effort.
//!
//! Every queue is bounded (`limits::ENGINE_*`): pending acquires, the operations
//! buffered for the stream, the commands from the handles to the client's task.
//!
//! ```no_run
//! # async fn engine() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use seatbroker::engine_client::{ClientOptions, EngineClient};
//! use seatbroker::proto::Product;
//!
//! let options = ClientOptions::new(["http://127.0.0.1:50051"], "sbk_...");
//! let client = EngineClient::connect(options).await?;
//! let seat = client
//!     .acquire(Product::Kre)
//!     .hostname("ci-7")
//!     .wait(Duration::from_secs(600))
//!     .await?;
//! tokio::select! {
//!     lost = seat.lost() => eprintln!("seat lost: {lost}"),
//!     _ = tokio::time::sleep(Duration::from_secs(60)) => seat.release().await?,
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod driver;
mod keepalive;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

pub use backoff::Backoff;
pub use keepalive::Keepalive;

use crate::client::{BearerKey, ClientError};
use crate::limits;
use crate::proto::{self, Product};
use crate::tls::ClientTlsFiles;

/// Where the brokers are, who the engine is, and how patient it is.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker addresses (`http://` or `https://`), tried in turn: the first at
    /// connect, the next one after each failure or a draining broker.
    pub addrs: Vec<String>,
    /// The member's API key (`sbk_...`).
    pub key: String,
    /// CA and client certificate for `https://` addresses (mTLS when a certificate is
    /// given).
    pub tls: ClientTlsFiles,
    /// How long one connection attempt (TCP, TLS, the stream's opening) may take.
    pub connect_timeout: Duration,
    /// The pause between reconnection attempts.
    pub backoff: Backoff,
    /// The connection's HTTP/2 keepalive, so a broker that vanished without closing
    /// the connection is noticed before the seats' deadline (shortened to the held
    /// seats' heartbeat interval on each reconnect: see [`Keepalive`]).
    pub keepalive: Keepalive,
    /// How long an acquire made while no stream is up waits for one (on top of its own
    /// wait) before it fails with `UNAVAILABLE`.
    pub unreachable_patience: Duration,
}

impl ClientOptions {
    /// Options for `addrs` with `key`, plaintext or TLS with the system's defaults,
    /// and the library's default timings.
    pub fn new<A: Into<String>>(addrs: impl IntoIterator<Item = A>, key: &str) -> Self {
        ClientOptions {
            addrs: addrs.into_iter().map(Into::into).collect(),
            key: key.to_owned(),
            tls: ClientTlsFiles::default(),
            connect_timeout: Duration::from_millis(limits::ENGINE_CONNECT_TIMEOUT_MS_DEFAULT),
            backoff: Backoff::default(),
            keepalive: Keepalive::default(),
            unreachable_patience: Duration::from_millis(
                limits::ENGINE_UNREACHABLE_PATIENCE_MS_DEFAULT,
            ),
        }
    }
}

/// Why [`EngineClient::connect`] could not open the first stream.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no broker address was given")]
    NoAddress,
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The broker answered the stream with a status (a bad key: `UNAUTHENTICATED`; a
    /// broker without the channel: `UNIMPLEMENTED`; `UNAVAILABLE` from each address).
    #[error("{addr}: {}: {}", crate::client::code_name(.status.code()), .status.message())]
    Refused { addr: String, status: Status },
}

impl ConnectError {
    /// Whether trying again later may help (the brokers were unreachable or
    /// unavailable), as opposed to a configuration or a key to fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::NoAddress => false,
            ConnectError::Client(error) => matches!(error, ClientError::Unreachable { .. }),
            ConnectError::Refused { status, .. } => driver::is_retryable(status),
        }
    }
}

/// A connection to the broker shared by any number of seats: one stream, renewed,
/// reconnected and re-attached by a task of its own.
#[derive(Debug, Clone)]
pub struct EngineClient {
    commands: mpsc::Sender<Command>,
    next_request_id: Arc<AtomicU64>,
    /// The final status once the client's task has stopped (a status that is not
    /// retried), for the acquires made after.
    stopped: Arc<std::sync::OnceLock<Status>>,
}

impl EngineClient {
    /// Opens the stream to the first address that answers (each tried once, in
    /// order), then keeps it up from a task of its own on the current runtime.
    pub async fn connect(options: ClientOptions) -> Result<EngineClient, ConnectError> {
        if options.addrs.is_empty() {
            return Err(ConnectError::NoAddress);
        }
        let key = BearerKey::new(Some(&options.key))?;
        let (commands, receiver) = mpsc::channel(limits::ENGINE_COMMANDS_QUEUED_MAX);
        let stopped = Arc::new(std::sync::OnceLock::new());
        let driver = driver::Driver::new(
            options,
            key,
            receiver,
            commands.downgrade(),
            Arc::clone(&stopped),
        );
        let driver = driver.open_first().await?;
        tokio::spawn(driver.run());
        Ok(EngineClient {
            commands,
            next_request_id: Arc::new(AtomicU64::new(1)),
            stopped,
        })
    }

    /// An acquire of a seat of `product`: set its engine id, hostname, label and wait,
    /// then `.await` it (or [`Acquire::start`] it to watch its queue position).
    pub fn acquire(&self, product: Product) -> Acquire<'_> {
        Acquire {
            client: self,
            spec: AcquireSpec {
                product,
                engine_id: None,
                hostname: String::new(),
                label: String::new(),
                wait: Duration::ZERO,
            },
        }
    }

    fn stopped_status(&self) -> Status {
        match self.stopped.get() {
            Some(status) => status.clone(),
            None => Status::cancelled("the engine client has stopped"),
        }
    }
}

/// What to acquire; the engine id defaults to a random one per acquire, so that many
/// seats of one host are many leases.
#[derive(Debug, Clone)]
struct AcquireSpec {
    product: Product,
    engine_id: Option<String>,
    hostname: String,
    label: String,
    wait: Duration,
}

/// An acquire being built: [`EngineClient::acquire`], then `.await`.
#[must_use = "an acquire does nothing until it is awaited or started"]
pub struct Acquire<'a> {
    client: &'a EngineClient,
    spec: AcquireSpec,
}

impl Acquire<'_> {
    /// The engine's own id, stable across its restarts: an acquire with the id of a
    /// live lease of the same user and product gets that lease back (resumed).
    /// Default: a random id per acquire.
    pub fn engine_id(mut self, engine_id: impl Into<String>) -> Self {
        self.spec.engine_id = Some(engine_id.into());
        self
    }

    /// The machine the engine runs on, shown to admins.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.spec.hostname = hostname.into();
        self
    }

    /// A note shown to admins (e.g. the job).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.spec.label = label.into();
        self
    }

    /// When the quota is full, wait in the broker's queue up to `wait` for a seat
    /// (default: do not wait; a full quota answers `RESOURCE_EXHAUSTED`). A wait that
    /// passes answers `DEADLINE_EXCEEDED`.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.spec.wait = wait.min(Duration::from_millis(u64::from(u32::MAX)));
        self
    }

    /// Sends the acquire and returns at once: [`PendingSeat`] shows the queue
    /// position and answers the seat. Fails when the client has stopped, or
    /// with `RESOURCE_EXHAUSTED` when `limits::ENGINE_PENDING_ACQUIRES_MAX` acquires
    /// are pending already.
    pub async fn start(self) -> Result<PendingSeat, Status> {
        let client = self.client;
        let request_id = client.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (queue, queue_position) = watch::channel(None);
        let (answer, answer_receiver) = oneshot::channel();
        let command = Command::Acquire(NewAcquire {
            request_id,
            spec: self.spec,
            queue,
            answer,
        });
        if client.commands.send(command).await.is_err() {
            return Err(client.stopped_status());
        }
        Ok(PendingSeat {
            request_id,
            queue_position,
            answer: Some(answer_receiver),
            commands: client.commands.clone(),
            stopped: Arc::clone(&client.stopped),
        })
    }
}

impl<'a> IntoFuture for Acquire<'a> {
    type Output = Result<Seat, Status>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.start().await?.seat().await })
    }
}

/// A place in the broker's queue, as the last `queued` event gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePosition {
    /// 1 is the head of the queue.
    pub position: u32,
    pub queue_length: u32,
}

/// An acquire sent and not yet answered. Dropping it cancels the acquire (a seat
/// granted meanwhile is released).
pub struct PendingSeat {
    request_id: u64,
    queue_position: watch::Receiver<Option<QueuePosition>>,
    answer: Option<oneshot::Receiver<Result<Seat, Status>>>,
    commands: mpsc::Sender<Command>,
    stopped: Arc<std::sync::OnceLock<Status>>,
}

impl PendingSeat {
    /// The queue position while the acquire waits (`None` until the broker queues
    /// it); `changed().await` wakes at each update.
    pub fn queue_position(&self) -> watch::Receiver<Option<QueuePosition>> {
        self.queue_position.clone()
    }

    /// Waits for the broker's answer: the seat, or the status that refused it.
    /// Dropping this future before the answer cancels the acquire.
    pub async fn seat(mut self) -> Result<Seat, Status> {
        let answer = self.answer.as_mut().expect("answered once").await;
        // Answered: nothing to cancel any more.
        self.answer = None;
        match answer {
            Ok(answer) => answer,
            Err(_) => Err(match self.stopped.get() {
                Some(status) => status.clone(),
                None => Status::cancelled("the engine client has stopped"),
            }),
        }
    }
}

impl Drop for PendingSeat {
    fn drop(&mut self) {
        if self.answer.is_some() {
            let cancel = Command::Cancel {
                request_id: self.request_id,
            };
            // Best effort: when the command queue is full, a grant that comes later
            // finds nobody waiting and is released by the client's task.
            let _ = self.commands.try_send(cancel);
        }
    }
}

/// Why a seat was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The broker let the lease expire (it heard no renewal within the TTL).
    Expired,
    /// The broker stayed unreachable until the lease's deadline passed.
    Unreachable,
    /// An admin terminated the session.
    Terminated,
    /// The user's license of the product was unassigned or transferred away.
    Unassigned,
    MemberRemoved,
    KeyRevoked,
    LicenseExpired,
    OrganizationDeleted,
    /// The broker no longer knows the lease, or knows a newer generation of it.
    NotFound,
    /// Released by another client (a unary `Release` of the same lease).
    ReleasedElsewhere,
    /// The broker refused the stream with a final status (say, the key was revoked
    /// while the client was disconnected).
    Refused,
}

impl LostReason {
    /// The reason's name, as `seatbroker run` prints it: `terminated`, `expired`, ...
    pub fn name(self) -> &'static str {
        match self {
            LostReason::Expired => "expired",
            LostReason::Unreachable => "broker unreachable",
            LostReason::Terminated => "terminated",
            LostReason::Unassigned => "unassigned",
            LostReason::MemberRemoved => "member removed",
            LostReason::KeyRevoked => "key revoked",
            LostReason::LicenseExpired => "license expired",
            LostReason::OrganizationDeleted => "organization deleted",
            LostReason::NotFound => "not found",
            LostReason::ReleasedElsewhere => "released elsewhere",
            LostReason::Refused => "refused",
        }
    }
}

/// A seat the engine no longer holds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatLost {
    pub reason: LostReason,
    pub message: String,
}

impl std::fmt::Display for SeatLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            f.write_str(self.reason.name())
        } else {
            write!(f, "{}: {}", self.reason.name(), self.message)
        }
    }
}

/// A held seat: kept alive by the client's stream until released, dropped or lost.
#[derive(Debug)]
pub struct Seat {
    lease: proto::Lease,
    resumed: bool,
    lost: watch::Receiver<Option<SeatLost>>,
    commands: mpsc::Sender<Command>,
    released: bool,
}

impl Seat {
    /// The lease as the broker granted it (id, generation, TTL, heartbeat interval,
    /// expiry estimate at the grant).
    pub fn lease(&self) -> &proto::Lease {
        &self.lease
    }

    pub fn lease_id(&self) -> &str {
        &self.lease.lease_id
    }

    pub fn generation(&self) -> u64 {
        self.lease.generation
    }

    /// Whether the broker answered with a live lease this engine id already held.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Waits until the seat is lost, and says why. Never returns while the seat is
    /// held (a reconnection that re-attaches it is not a loss). The future borrows
    /// nothing, so it can be moved to a task of its own.
    pub fn lost(&self) -> impl Future<Output = SeatLost> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            match lost.wait_for(Option::is_some).await {
                Ok(value) => value.clone().expect("waited for a value"),
                Err(_) => SeatLost {
                    reason: LostReason::Refused,
                    message: "the engine client has stopped".into(),
                },
            }
        }
    }

    /// The loss, if the seat is lost already.
    pub fn lost_now(&self) -> Option<SeatLost> {
        self.lost.borrow().clone()
    }

    /// Gives the seat back and waits until the broker has ended the lease (or the
    /// lease's deadline has passed while the broker was unreachable, which frees the
    /// seat as well).
    pub async fn release(mut self) -> Result<(), Status> {
        self.released = true;
        let (done, answer) = oneshot::channel();
        let command = Command::Release {
            lease_id: std::mem::take(&mut self.lease.lease_id),
            generation: self.lease.generation,
            done: Some(done),
        };
        if self.commands.send(command).await.is_err() {
            return Err(Status::cancelled("the engine client has stopped"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::cancelled("the engine client has stopped")))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let command = Command::Release {
            lease_id: std::mem::take(&mut self.lease.lease_id),
            generation: self.lease.generation,
            done: None,
        };
        // Best effort: a full command queue hands the release to a task; outside a
        // runtime the lease ends at its deadline.
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let commands = self.commands.clone();
            runtime.spawn(async move { commands.send(command).await });
        }
    }
}

/// What the handles ask of the client's task.
#[derive(Debug)]
enum Command {
    Acquire(NewAcquire),
    Cancel {
        request_id: u64,
    },
    Release {
        lease_id: String,
        generation: u64,
        done: Option<oneshot::Sender<Result<(), Status>>>,
    },
}

#[derive(Debug)]
struct NewAcquire {
    request_id: u64,
    spec: AcquireSpec,
    queue: watch::Sender<Option<QueuePosition>>,
    answer: oneshot::Sender<Result<Seat, Status>>,
}
