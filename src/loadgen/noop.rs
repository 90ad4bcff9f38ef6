//! The in-process no-op SessionService: the ceiling the broker is compared with. It
//! listens on 127.0.0.1:0, accepts any key, and answers with messages of the size the
//! broker sends (a `Lease` with realistic field lengths, echoing the engine's fields).
//! Optionally it enforces a seat count with a semaphore, so `contention` behaves as on
//! a broker; tests give it more seats than the checked quota to play a broken server.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use crate::proto::session_service_server::{SessionService, SessionServiceServer};
use crate::proto::{
    AcquireDenied, AcquireRequest, AcquireResponse, ChannelRequest, ChannelResponse, EndReason,
    HeartbeatRequest, HeartbeatResponse, Lease, LeaseAttached, LeaseEnded, LeaseGranted,
    LeasesRenewed, Product, ReleaseRequest, ReleaseResponse, StreamEvent, StreamRenew,
    stream_event, stream_operation,
};

use super::args::Workload;
use super::bounds::{NOOP_CHANNEL_OUTBOX, NOOP_STOP_MS_MAX, NOOP_STREAMS_PER_CONNECTION_MAX};
use super::config::BenchConfig;
use super::error::LoadgenError;

/// How the no-op server behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoopOptions {
    /// When set, at most this many leases are live; further acquires answer
    /// RESOURCE_EXHAUSTED. When unset every acquire succeeds.
    pub seats: Option<u32>,
    pub ttl_ms: u32,
    pub heartbeat_interval_ms: u32,
}

impl NoopOptions {
    /// Seats equal to the quota for `contention`, unlimited otherwise; the broker's
    /// default lease timing (30 s TTL, heartbeat every 10 s).
    pub(crate) fn for_config(config: &BenchConfig) -> Self {
        Self {
            seats: (config.workload == Workload::Contention).then_some(config.quota),
            ttl_ms: 30_000,
            heartbeat_interval_ms: 10_000,
        }
    }
}

/// A running no-op server; `stop` shuts it down.
pub(crate) struct NoopServer {
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl NoopServer {
    /// Binds 127.0.0.1:0 and serves in a task of the current runtime.
    pub(crate) async fn start(options: NoopOptions) -> Result<Self, LoadgenError> {
        let bind_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let incoming = TcpIncoming::bind(bind_addr)
            .map_err(LoadgenError::NoopServer)?
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().map_err(LoadgenError::NoopServer)?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let service = SessionServiceServer::new(NoopSessions::new(options));
        let server = Server::builder()
            .max_concurrent_streams(Some(NOOP_STREAMS_PER_CONNECTION_MAX))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                // An error means the sender is gone, which also means stop.
                let _ = stopped.await;
            });
        let task = tokio::spawn(server);
        Ok(Self {
            addr,
            shutdown,
            task,
        })
    }

    /// The `http://` URI clients connect to.
    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the server to stop and waits for it, at most `NOOP_STOP_MS_MAX`.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_millis(NOOP_STOP_MS_MAX), &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "no-op server stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "no-op server task failed"),
            Err(_) => task.abort(),
        }
    }
}

/// The no-op server as a child process of this binary (`seatbroker bench-noop-server`).
pub(crate) struct ChildNoopServer {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl ChildNoopServer {
    /// Spawns the child and reads the address it listens on from its first line. With
    /// `cpus_of`, the child runs on the CPUs that process may run on (the broker it is
    /// compared with, pinned with `taskset`): the ceiling gets the same cores.
    pub(crate) async fn spawn(
        options: NoopOptions,
        cpus_of: Option<u32>,
    ) -> Result<Self, LoadgenError> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().map_err(LoadgenError::NoopServer)?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("bench-noop-server")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(seats) = options.seats {
            command.args(["--seats", &seats.to_string()]);
        }
        let mut child = command.spawn().map_err(LoadgenError::NoopServer)?;
        if let (Some(model), Some(pid)) = (cpus_of, child.id()) {
            copy_cpu_affinity(model, pid).map_err(LoadgenError::NoopServer)?;
        }
        let stdout = child.stdout.take().ok_or_else(|| {
            LoadgenError::NoopServer(std::io::Error::other("no-op child has no stdout"))
        })?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first =
            tokio::time::timeout(Duration::from_millis(NOOP_STOP_MS_MAX), lines.next_line())
                .await
                .map_err(|_| {
                    LoadgenError::NoopServer(std::io::Error::other(
                        "no-op child did not start in time",
                    ))
                })?
                .map_err(LoadgenError::NoopServer)?
                .unwrap_or_default();
        let addr = first
            .strip_prefix(NOOP_LISTENING_PREFIX)
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| {
                LoadgenError::NoopServer(std::io::Error::other(format!(
                    "unexpected first line from the no-op child: {first:?}"
                )))
            })?;
        Ok(Self { child, addr })
    }

    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Lets process `to` run on exactly the CPUs process `from` may run on.
fn copy_cpu_affinity(from: u32, to: u32) -> std::io::Result<()> {
    let pid = |id: u32| {
        libc::pid_t::try_from(id).map_err(|_| std::io::Error::other("process id out of range"))
    };
    let (from, to) = (pid(from)?, pid(to)?);
    // SAFETY: `cpu_set_t` is plain data (all zeroes is the empty set), and both calls
    // get its true size and a pointer valid for the call.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(from, size, &mut set) == 0 {
            libc::sched_setaffinity(to, size, &set)
        } else {
            -1
        }
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const NOOP_LISTENING_PREFIX: &str = "noop listening on ";

/// `seatbroker bench-noop-server`: serves the no-op SessionService on 127.0.0.1:0,
/// prints its address, and runs until killed (the bench stops it) or for at most an hour.
pub async fn serve_standalone(seats: Option<u32>) -> Result<(), LoadgenError> {
    let options = NoopOptions {
        seats,
        ttl_ms: 30_000,
        heartbeat_interval_ms: 10_000,
    };
    let server = NoopServer::start(options).await?;
    println!("{NOOP_LISTENING_PREFIX}{}", server.addr);
    let _ = tokio::time::timeout(Duration::from_secs(3600), tokio::signal::ctrl_c()).await;
    server.stop().await;
    Ok(())
}

/// The no-op handlers.
struct NoopSessions {
    /// Copied into every answer; engine fields are replaced by the request's.
    template: Lease,
    /// Source of generations and lease ids; strictly increasing; shared with the
    /// channels' tasks.
    generation: Arc<AtomicU64>,
    seats: Option<Seats>,
}

/// Seat accounting when `NoopOptions::seats` is set.
struct Seats {
    free: Semaphore,
    /// Live lease ids. A `std::sync::Mutex`: held for one set operation, never across
    /// an `.await`.
    live: Mutex<HashSet<String>>,
}

impl NoopSessions {
    fn new(options: NoopOptions) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let template = Lease {
            lease_id: lease_id(0),
            generation: 1,
            product: Product::Kre as i32,
            org_id: "bench-00000000-0".to_owned(),
            email: "engine0@bench.example".to_owned(),
            ttl_ms: options.ttl_ms,
            heartbeat_interval_ms: options.heartbeat_interval_ms,
            expires_at_unix_ms: now_ms + i64::from(options.ttl_ms),
            acquired_at_unix_ms: now_ms,
            ..Lease::default()
        };
        let seats = options.seats.map(|count| Seats {
            free: Semaphore::new(count as usize),
            live: Mutex::new(HashSet::new()),
        });
        Self {
            template,
            generation: Arc::new(AtomicU64::new(1)),
            seats,
        }
    }

    fn take_seat(&self, lease_id: &str) -> Result<(), Status> {
        let Some(seats) = &self.seats else {
            return Ok(());
        };
        let permit = seats
            .free
            .try_acquire()
            .map_err(|_| Status::resource_exhausted("no KRE session free"))?;
        permit.forget();
        seats.live_set().insert(lease_id.to_owned());
        Ok(())
    }

    fn check_live(&self, lease_id: &str) -> Result<(), Status> {
        match &self.seats {
            Some(seats) if !seats.live_set().contains(lease_id) => {
                Err(Status::not_found("no such lease"))
            }
            _ => Ok(()),
        }
    }

    fn give_back(&self, lease_id: &str) -> Result<(), Status> {
        let Some(seats) = &self.seats else {
            return Ok(());
        };
        if !seats.live_set().remove(lease_id) {
            return Err(Status::not_found("no such lease"));
        }
        seats.free.add_permits(1);
        Ok(())
    }
}

impl Seats {
    fn live_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The no-op session channel: answers each batch of operations with one batch of
/// events of the broker's shapes (granted, ended as released, renewed with the count
/// of leases the stream holds, attached, denied for a cancel). It keeps no quota
/// (`NoopOptions::seats` is for the unary calls): it is the ceiling of the protocol.
async fn answer_channel(
    mut inbound: tonic::Streaming<ChannelRequest>,
    outbox: mpsc::Sender<Result<ChannelResponse, Status>>,
    template: Lease,
    generation: Arc<AtomicU64>,
) {
    let mut held: HashSet<String> = HashSet::new();
    while let Ok(Some(request)) = inbound.message().await {
        let events = request
            .operations
            .into_iter()
            .filter_map(|operation| operation.operation)
            .map(|operation| StreamEvent {
                event: Some(noop_event(operation, &template, &generation, &mut held)),
            })
            .collect();
        if outbox.send(Ok(ChannelResponse { events })).await.is_err() {
            return;
        }
    }
}

fn noop_event(
    operation: stream_operation::Operation,
    template: &Lease,
    generation: &AtomicU64,
    held: &mut HashSet<String>,
) -> stream_event::Event {
    use stream_event::Event;
    use stream_operation::Operation;
    match operation {
        Operation::Acquire(acquire) => {
            let generation = generation.fetch_add(1, Ordering::Relaxed) + 1;
            let lease = Lease {
                lease_id: lease_id(generation),
                generation,
                engine_id: acquire.engine_id,
                hostname: acquire.hostname,
                label: acquire.label,
                ..template.clone()
            };
            held.insert(lease.lease_id.clone());
            Event::Granted(LeaseGranted {
                request_id: acquire.request_id,
                lease: Some(lease),
                resumed: false,
            })
        }
        Operation::Release(release) => {
            let reason = if held.remove(&release.lease_id) {
                EndReason::Released
            } else {
                EndReason::NotFound
            };
            Event::Ended(LeaseEnded {
                lease_id: release.lease_id,
                generation: release.generation,
                reason: reason as i32,
                message: String::new(),
            })
        }
        Operation::Renew(StreamRenew {}) => Event::Renewed(LeasesRenewed {
            expires_at_unix_ms: template.expires_at_unix_ms,
            ttl_ms: template.ttl_ms,
            lease_count: u32::try_from(held.len()).unwrap_or(u32::MAX),
        }),
        Operation::Attach(attach) => {
            // One event per message is enough for a ceiling: attach the first.
            let lease = attach.leases.into_iter().next().map(|handle| {
                held.insert(handle.lease_id.clone());
                Lease {
                    lease_id: handle.lease_id,
                    generation: handle.generation,
                    ..template.clone()
                }
            });
            Event::Attached(LeaseAttached { lease })
        }
        Operation::Cancel(cancel) => Event::Denied(AcquireDenied {
            request_id: cancel.request_id,
            code: Code::Cancelled as i32,
            message: "cancelled".to_owned(),
        }),
    }
}

/// Lease ids of a fixed length, like the broker's.
fn lease_id(generation: u64) -> String {
    format!("lse_{generation:024x}")
}

#[tonic::async_trait]
impl SessionService for NoopSessions {
    type ChannelStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ChannelResponse, Status>> + Send>>;

    async fn channel(
        &self,
        request: Request<tonic::Streaming<ChannelRequest>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let inbound = request.into_inner();
        let (outbox, events) = mpsc::channel(NOOP_CHANNEL_OUTBOX);
        tokio::spawn(answer_channel(
            inbound,
            outbox,
            self.template.clone(),
            Arc::clone(&self.generation),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(events))))
    }

    async fn acquire(
        &self,
        request: Request<AcquireRequest>,
    ) -> Result<Response<AcquireResponse>, Status> {
        let request = request.into_inner();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let lease_id = lease_id(generation);
        self.take_seat(&lease_id)?;
        let lease = Lease {
            lease_id,
            generation,
            engine_id: request.engine_id,
            hostname: request.hostname,
            label: request.label,
            ..self.template.clone()
        };
        Ok(Response::new(AcquireResponse {
            lease: Some(lease),
            resumed: false,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.check_live(&request.get_ref().lease_id)?;
        Ok(Response::new(HeartbeatResponse {
            expires_at_unix_ms: self.template.expires_at_unix_ms,
            ttl_ms: self.template.ttl_ms,
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.give_back(&request.get_ref().lease_id)?;
        Ok(Response::new(ReleaseResponse {}))
    }
}
