//! Client connections: how many are open at once, how long one may stay silent, and
//! how many the descriptor limit allows.
//!
//! An accept task takes a slot before each `accept`, so once every slot is held the
//! next clients wait in the kernel's listen backlog (and time out there, on their
//! side) instead of each costing the daemon a task, buffers and TLS state. Each
//! accepted stream carries its slot and returns it when the connection closes. The
//! task stops, closing its hold on the listener, as soon as the server stops taking
//! connections.
//!
//! A slot is not held forever by a client that does nothing: each connection has a
//! deadline, checked by its [`LimitedStream`] whenever the server reads from it. A
//! connection whose first call has not started within the handshake timeout (TLS
//! handshake, HTTP/2 preface and the request's headers: nginx's
//! `client_header_timeout`, Envoy's `request_headers_timeout`), or that had no call in
//! flight and none started during a whole idle period (gRPC's `MAX_CONNECTION_IDLE`,
//! Envoy's `idle_timeout`), reads as timed out, and the server closes it. An HTTP/1
//! connection (a browser, `curl`) has the handshake timeout as its idle period: hyper
//! reads its next request's headers through the idle time between requests, and
//! tonic 0.14.5 gives hyper no timer, so hyper bounds no header read of its own; a
//! client dribbling a request's headers is closed within two handshake timeouts of its
//! last answer (Apache's `KeepAliveTimeout` is 5 s; hyper's own header-read timeout,
//! 30 s, runs through the idle time too), while an answer still being written to a slow
//! reader keeps its connection. The RPC
//! layer tells the connection about its calls through [`ConnectionState`], which
//! reaches it in the request's extensions as [`ConnectionInfo`].
//!
//! With TLS, each accepted connection's handshake runs in a task of its own (under the
//! handshake deadline) before the server gets it as a [`ServedStream`]; a refused
//! handshake is logged with the peer's address and the reason, at most once a second
//! with the count of those not logged (a scanner or a misconfigured fleet would
//! otherwise flood the log). The client certificate's subject joins the
//! [`ConnectionInfo`]; while a call is served it is also the call's
//! [`call_client_subject`], which the audit record reads (the lease table tells the
//! audit of a grant synchronously, on the task serving the call).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::limits;

/// The bounds of the connections of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// Time from `accept` to the first call's headers.
    pub handshake_timeout: Duration,
    /// A period with no call in flight and none started closes the connection.
    pub idle_timeout: Duration,
    /// Bytes of unfinished request bodies one connection may hold.
    pub request_bodies_bytes_max: usize,
}

/// What one connection's calls share with the connection: the RPC layer counts calls
/// in, the stream reads the counts at its deadline; the request-body budget charges
/// the connection's share.
#[derive(Debug)]
pub struct ConnectionState {
    calls_started: AtomicU64,
    calls_in_flight: AtomicU32,
    body_bytes_held: AtomicUsize,
    body_bytes_max: usize,
    /// Set at the connection's first HTTP/1 request: its idle deadline is then the
    /// handshake timeout (see [`LimitedStream`]).
    http1: AtomicBool,
}

impl ConnectionState {
    fn new(body_bytes_max: usize) -> Self {
        ConnectionState {
            calls_started: AtomicU64::new(0),
            calls_in_flight: AtomicU32::new(0),
            body_bytes_held: AtomicUsize::new(0),
            body_bytes_max,
            http1: AtomicBool::new(false),
        }
    }

    /// The connection speaks HTTP/1 (a browser or `curl`), where hyper, without a
    /// timer under tonic, bounds no header read: from now on its idle deadline is
    /// the handshake timeout, which then bounds each request's headers.
    pub fn mark_http1(&self) {
        self.http1.store(true, Ordering::Relaxed);
    }

    /// Counts a call in; it is in flight until the guard is dropped.
    pub fn call_started(self: &Arc<Self>) -> CallInFlight {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
        self.calls_in_flight.fetch_add(1, Ordering::Relaxed);
        CallInFlight(Arc::clone(self))
    }

    /// Counts a call that was answered at once (refused) as a sign of life.
    pub fn call_answered(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes `bytes` of this connection's request-body share; false (nothing taken)
    /// when the share is used up.
    pub fn charge_body_bytes(&self, bytes: usize) -> bool {
        charge(&self.body_bytes_held, self.body_bytes_max, bytes)
    }

    pub fn release_body_bytes(&self, bytes: usize) {
        self.body_bytes_held.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn body_bytes_max(&self) -> usize {
        self.body_bytes_max
    }
}

/// Adds `bytes` to `held` unless that passes `max`.
pub fn charge(held: &AtomicUsize, max: usize, bytes: usize) -> bool {
    let after = held.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if after > max {
        held.fetch_sub(bytes, Ordering::Relaxed);
        return false;
    }
    true
}

/// The daemon-wide budget of bytes held in request bodies still being read (gRPC
/// messages and the JSON of JSON calls alike).
#[derive(Debug)]
pub struct RequestBodies {
    held_bytes: AtomicUsize,
    max_bytes: usize,
    /// The largest message any service takes: a larger announcement is not charged,
    /// as the decoder refuses it (OUT_OF_RANGE) before reading on.
    message_bytes_max: usize,
}

impl RequestBodies {
    pub fn new(max_bytes: usize, message_bytes_max: usize) -> Self {
        RequestBodies {
            held_bytes: AtomicUsize::new(0),
            max_bytes,
            message_bytes_max,
        }
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    pub fn message_bytes_max(&self) -> usize {
        self.message_bytes_max
    }
}

/// The bytes one request body holds, charged to its connection's share and to the
/// daemon's budget, and given back when dropped.
#[derive(Debug)]
pub struct BodyCharge {
    bodies: Arc<RequestBodies>,
    /// `None` for streams that are not [`LimitedStream`]s.
    connection: Option<Arc<ConnectionState>>,
    charged_bytes: usize,
}

impl BodyCharge {
    pub fn new(bodies: Arc<RequestBodies>, connection: Option<Arc<ConnectionState>>) -> Self {
        BodyCharge {
            bodies,
            connection,
            charged_bytes: 0,
        }
    }

    /// Raises the charge to `due` bytes (nothing when it is that much already); a
    /// charge past either bound takes nothing and is refused RESOURCE_EXHAUSTED.
    pub fn charge_up_to(&mut self, due: usize) -> Result<(), tonic::Status> {
        let Some(bytes) = due
            .checked_sub(self.charged_bytes)
            .filter(|bytes| *bytes > 0)
        else {
            return Ok(());
        };
        if let Some(connection) = &self.connection
            && !connection.charge_body_bytes(bytes)
        {
            return Err(tonic::Status::resource_exhausted(format!(
                "this connection holds {} bytes of request bodies not yet complete, its \
                 bound (4 of the largest requests); finish or cancel calls, or use \
                 another connection",
                connection.body_bytes_max()
            )));
        }
        if !charge(&self.bodies.held_bytes, self.bodies.max_bytes, bytes) {
            if let Some(connection) = &self.connection {
                connection.release_body_bytes(bytes);
            }
            return Err(tonic::Status::resource_exhausted(format!(
                "the daemon holds {} bytes of request bodies not yet complete, its bound \
                 (limits.request_bodies_bytes_max); retry shortly",
                self.bodies.max_bytes
            )));
        }
        self.charged_bytes += bytes;
        Ok(())
    }

    pub fn charged_bytes(&self) -> usize {
        self.charged_bytes
    }

    /// Sets the charge to exactly `due` bytes: raised as by
    /// [`BodyCharge::charge_up_to`], or lowered (always taken) when the body holds
    /// less than it did, as a stream's body does once a message is complete.
    pub fn charge_exactly(&mut self, due: usize) -> Result<(), tonic::Status> {
        if due >= self.charged_bytes {
            return self.charge_up_to(due);
        }
        self.give_back(self.charged_bytes - due);
        Ok(())
    }

    fn give_back(&mut self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.bodies.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(connection) = &self.connection {
            connection.release_body_bytes(bytes);
        }
        self.charged_bytes -= bytes;
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        self.give_back(self.charged_bytes);
    }
}

/// A call in flight on its connection (see [`ConnectionState::call_started`]).
#[derive(Debug)]
pub struct CallInFlight(Arc<ConnectionState>);

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.calls_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connect info of a [`LimitedStream`], in every request's extensions (also under
/// TLS: tonic inserts the inner stream's info too).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote_addr: Option<SocketAddr>,
    pub state: Arc<ConnectionState>,
    /// The subject of the client certificate the TLS handshake verified (mTLS).
    pub client_subject: Option<Arc<str>>,
}

tokio::task_local! {
    /// The client certificate subject of the connection of the call being served.
    static CALL_CLIENT_SUBJECT: Option<Arc<str>>;
}

/// Runs `call` (a call's whole service future) with `subject` as its
/// [`call_client_subject`].
pub fn with_call_client_subject<F: std::future::Future>(
    subject: Option<Arc<str>>,
    call: F,
) -> tokio::task::futures::TaskLocalFuture<Option<Arc<str>>, F> {
    CALL_CLIENT_SUBJECT.scope(subject, call)
}

/// The client certificate subject of the call this task is serving; `None` without
/// one, and outside calls (expiries).
pub fn call_client_subject() -> Option<Arc<str>> {
    CALL_CLIENT_SUBJECT.try_with(Clone::clone).ok().flatten()
}

/// An accepted connection holding one of the listener's slots until it is dropped,
/// and reading as timed out once past its deadline.
pub struct LimitedStream {
    stream: TcpStream,
    info: ConnectionInfo,
    deadline: Pin<Box<Sleep>>,
    /// `calls_started` when the deadline was last armed.
    calls_seen: u64,
    idle_timeout: Duration,
    /// The idle deadline of an HTTP/1 connection: the handshake timeout.
    http1_idle_timeout: Duration,
    /// Whether the daemon wrote to the connection since the deadline was armed: on an
    /// HTTP/1 connection that is an answer still going out to a slow reader, which is
    /// not idle (HTTP/2 writes pings of its own, so there it counts for nothing).
    wrote_since_armed: bool,
    timed_out: bool,
    _slot: OwnedSemaphorePermit,
}

/// A connection as the server gets it: plaintext, or past its TLS handshake.
pub enum ServedStream {
    Plain(LimitedStream),
    Tls(Box<tokio_rustls::server::TlsStream<LimitedStream>>),
}

/// The accept task of a listener and the connections it hands over.
pub struct Incoming {
    pub connections: ReceiverStream<io::Result<ServedStream>>,
    /// Ends soon after `connections` is dropped, releasing the listener.
    pub task: JoinHandle<()>,
}

/// The accepted connections of `listener`, at most `limits.connections_max` open at
/// once, with `TCP_NODELAY` set and the deadlines of `limits`; past a TLS handshake
/// with `tls` when given.
pub fn limited_incoming(
    listener: Arc<TcpListener>,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerConfig>>,
) -> Incoming {
    // Capacity 1: nothing is accepted ahead of the server asking for it.
    let (accepted, connections) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let task = tokio::spawn(async move {
        let mut accept_errors = AcceptErrors::new("gRPC");
        let refusals = Arc::new(parking_lot::Mutex::new(RepeatedWarning::new(
            Duration::from_millis(limits::WARNING_REPEAT_MS_MIN),
        )));
        loop {
            let slot = tokio::select! {
                () = accepted.closed() => return,
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            };
            let connection = tokio::select! {
                () = accepted.closed() => return,
                connection = listener.accept() => connection,
            };
            let connection = match connection {
                Ok((stream, peer)) => {
                    accept_errors.succeeded();
                    LimitedStream::new(stream, peer, slot, &limits)
                }
                Err(error) => {
                    drop(slot);
                    accept_errors.failed(&error).await;
                    continue;
                }
            };
            let Some(tls) = &tls else {
                if accepted
                    .send(Ok(ServedStream::Plain(connection)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            // Handshakes run side by side: a slow one holds only its own slot.
            let (acceptor, accepted, refusals) = (
                TlsAcceptor::from(Arc::clone(tls)),
                accepted.clone(),
                Arc::clone(&refusals),
            );
            tokio::spawn(async move {
                if let Some(served) = handshake(acceptor, connection, &limits, &refusals).await {
                    let _ = accepted.send(Ok(served)).await;
                }
            });
        }
    });
    Incoming {
        connections: ReceiverStream::new(connections),
        task,
    }
}

/// The TLS handshake of `connection`, within the handshake timeout; a refused one is
/// logged (rate-limited) with the peer and the reason.
async fn handshake(
    acceptor: TlsAcceptor,
    connection: LimitedStream,
    limits: &ConnectionLimits,
    refusals: &parking_lot::Mutex<RepeatedWarning>,
) -> Option<ServedStream> {
    let peer = connection.info.remote_addr;
    let outcome = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(connection))
        .await
        .unwrap_or_else(|_| Err(LimitedStream::timed_out_error()));
    match outcome {
        Ok(mut stream) => {
            let (_, session) = stream.get_ref();
            let subject = session
                .peer_certificates()
                .and_then(|certificates| certificates.first())
                .and_then(|certificate| crate::tls::certificate_subject(certificate));
            stream.get_mut().0.info.client_subject = subject.map(Arc::from);
            Some(ServedStream::Tls(Box::new(stream)))
        }
        Err(error) => {
            let due = refusals.lock().due(Instant::now());
            if let Some(suppressed) = due {
                tracing::warn!(
                    remote = ?peer,
                    reason = %crate::tls::refusal_reason(&error),
                    suppressed,
                    "refused a TLS handshake (suppressed: refusals not logged in the last second)"
                );
            }
            None
        }
    }
}

/// What a listener does after a failed `accept`: the error (out of descriptors, say)
/// usually repeats at once, so it pauses before the next one, from
/// `limits::ACCEPT_ERROR_PAUSE_MS_MIN` doubling to `ACCEPT_ERROR_PAUSE_MS_MAX` while
/// failures repeat, and it warns at most once per `limits::WARNING_REPEAT_MS_MIN` with
/// the count of failures not logged since.
pub struct AcceptErrors {
    listener: &'static str,
    pause: Duration,
    warnings: RepeatedWarning,
}

impl AcceptErrors {
    /// `listener` names the listener in the warnings ("gRPC", "metrics").
    pub fn new(listener: &'static str) -> Self {
        AcceptErrors {
            listener,
            pause: Duration::from_millis(limits::ACCEPT_ERROR_PAUSE_MS_MIN),
            warnings: RepeatedWarning::new(Duration::from_millis(limits::WARNING_REPEAT_MS_MIN)),
        }
    }

    /// An accept succeeded: the next failure pauses the shortest time again.
    pub fn succeeded(&mut self) {
        self.pause = Duration::from_millis(limits::ACCEPT_ERROR_PAUSE_MS_MIN);
    }

    /// An accept failed: warns (rate-limited), then pauses.
    pub async fn failed(&mut self, error: &io::Error) {
        if let Some(suppressed) = self.warnings.due(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                %error,
                suppressed,
                pause_ms = self.pause.as_millis() as u64,
                "accepting a connection failed (suppressed: failures not logged in the last second)"
            );
        }
        tokio::time::sleep(self.next_pause()).await;
    }

    /// The pause before the next accept, doubling the one after.
    fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (pause * 2).min(Duration::from_millis(limits::ACCEPT_ERROR_PAUSE_MS_MAX));
        pause
    }
}

/// A warning that may repeat fast: logged at most once per period, with the count of
/// the repeats not logged since (syslog's "last message repeated N times").
#[derive(Debug)]
pub struct RepeatedWarning {
    period: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl RepeatedWarning {
    pub fn new(period: Duration) -> Self {
        RepeatedWarning {
            period,
            last_logged: None,
            suppressed: 0,
        }
    }

    /// The warning happened at `now`: `Some(repeats not logged before it)` when it is
    /// to be logged, `None` when it is only counted.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last_logged {
            Some(last) if now.duration_since(last) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl LimitedStream {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        limits: &ConnectionLimits,
    ) -> Self {
        let _ = stream.set_nodelay(true);
        LimitedStream {
            stream,
            info: ConnectionInfo {
                remote_addr: Some(peer),
                state: Arc::new(ConnectionState::new(limits.request_bodies_bytes_max)),
                client_subject: None,
            },
            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            calls_seen: 0,
            idle_timeout: limits.idle_timeout,
            http1_idle_timeout: limits.handshake_timeout,
            wrote_since_armed: false,
            timed_out: false,
            _slot: slot,
        }
    }

    /// Whether the connection is past its deadline: its timer fired, no call is in
    /// flight and none started since the timer was armed. Otherwise re-arms the timer
    /// for one idle period (and registers `cx` with it when given).
    fn past_deadline(&mut self, cx: Option<&mut Context<'_>>) -> bool {
        let state = &self.info.state;
        let fired = match cx {
            Some(cx) => self.deadline.as_mut().poll(cx).is_ready(),
            // The timer may never have been polled (reads that never wait): the clock.
            None => Instant::now() >= self.deadline.deadline(),
        };
        if !fired {
            return false;
        }
        let started = state.calls_started.load(Ordering::Relaxed);
        let http1 = state.http1.load(Ordering::Relaxed);
        let answering = http1 && std::mem::take(&mut self.wrote_since_armed);
        if started == self.calls_seen
            && state.calls_in_flight.load(Ordering::Relaxed) == 0
            && !answering
        {
            tracing::debug!(
                remote = ?self.info.remote_addr,
                calls = started,
                "closing a connection past its handshake or idle deadline"
            );
            return true;
        }
        self.calls_seen = started;
        let idle_timeout = if http1 {
            self.http1_idle_timeout
        } else {
            self.idle_timeout
        };
        self.deadline.as_mut().reset(Instant::now() + idle_timeout);
        false
    }

    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(bytes)) if *bytes > 0) {
            self.wrote_since_armed = true;
        }
    }

    fn timed_out_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no call started within the handshake timeout or the idle timeout",
        )
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(Err(Self::timed_out_error()));
        }
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            // A client that keeps sending (pings, say) without ever starting a call
            // is closed too: the deadline is checked on every read.
            Poll::Ready(Ok(())) if this.past_deadline(None) => {
                this.timed_out = true;
                Poll::Ready(Err(Self::timed_out_error()))
            }
            Poll::Pending if this.past_deadline(Some(cx)) => {
                this.timed_out = true;
                Poll::Ready(Err(Self::timed_out_error()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for ServedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            ServedStream::Plain(stream) => stream.info.clone(),
            ServedStream::Tls(stream) => stream.get_ref().0.info.clone(),
        }
    }
}

/// Forwards to the plaintext or the TLS stream.
macro_rules! served {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            ServedStream::Plain($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            ServedStream::Tls($stream) => {
                let $stream = Pin::new(&mut **$stream);
                $call
            }
        }
    };
}

impl AsyncRead for ServedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        served!(self, stream => stream.poll_read(cx, buf))
    }
}

impl AsyncWrite for ServedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        served!(self, stream => stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        served!(self, stream => stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServedStream::Plain(stream) => stream.is_write_vectored(),
            ServedStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        served!(self, stream => stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        served!(self, stream => stream.poll_shutdown(cx))
    }
}

/// Raises the soft limit on open file descriptors to the hard limit, and returns the
/// connection cap that fits in it: at most `configured`, and at most the limit minus
/// [`limits::DESCRIPTORS_RESERVED`] (never below [`limits::CONNECTIONS_MIN`]). Logs
/// the limit and the cap.
pub fn connections_cap_for_descriptors(configured: usize) -> usize {
    let (soft_before, descriptors) = raise_descriptor_limit();
    let available = descriptors.saturating_sub(limits::DESCRIPTORS_RESERVED);
    let cap = usize::try_from(available)
        .unwrap_or(usize::MAX)
        .min(configured)
        .max(limits::CONNECTIONS_MIN);
    tracing::info!(
        descriptors_soft_limit_at_start = soft_before,
        descriptors_limit = descriptors,
        descriptors_reserved = limits::DESCRIPTORS_RESERVED,
        connections_max = cap,
        connections_max_configured = configured,
        "connection cap set from the descriptor limit"
    );
    if available < limits::CONNECTIONS_MIN as u64 {
        tracing::warn!(
            descriptors_limit = descriptors,
            "the descriptor limit is too low for the daemon's reserve and its minimum of connections; raise `ulimit -n` (LimitNOFILE= under systemd)"
        );
    }
    cap
}

/// The soft `RLIMIT_NOFILE` before, and after raising it to the hard limit (unchanged
/// when that fails).
fn raise_descriptor_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot read the descriptor limit");
        return (1024, 1024);
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot raise the descriptor limit");
        }
    }
    (before, limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_accept_pauses_longer_each_time_up_to_the_longest_pause_then_resets() {
        let mut errors = AcceptErrors::new("test");
        let pauses: Vec<u64> = (0..6)
            .map(|_| errors.next_pause().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 100, 100]);
        errors.succeeded();
        assert_eq!(errors.next_pause(), Duration::from_millis(10));
    }

    #[test]
    fn a_repeated_warning_is_logged_once_per_period_with_the_count_of_the_others() {
        let mut warning = RepeatedWarning::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(warning.due(start), Some(0));
        let logged: Vec<Option<u64>> = (1..=999)
            .map(|ms| warning.due(start + Duration::from_millis(ms)))
            .collect();
        assert!(logged.iter().all(Option::is_none), "{logged:?}");
        assert_eq!(warning.due(start + Duration::from_millis(1_000)), Some(999));
        assert_eq!(warning.due(start + Duration::from_millis(1_001)), None);
        assert_eq!(warning.due(start + Duration::from_millis(2_500)), Some(1));
    }
}
