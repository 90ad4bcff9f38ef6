//! The tower layer around every gRPC call: it refuses broker calls while the daemon is
//! starting, draining or a cluster's standby (naming the leader; health and reflection
//! stay reachable), opens the call's span
//! (`rpc` with `method`, `org` and `code`; the edge records `org` once it knows it),
//! records the call's latency by method and status code, and counts the call in and
//! out of its connection (for the connection's handshake and idle deadlines).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::time::Instant;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use super::metrics;
use crate::connections::{CallInFlight, ConnectionInfo};

/// Where the daemon is in its life, as the RPC layer and health see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Recovering the log: broker calls answer UNAVAILABLE.
    Starting = 0,
    Serving = 1,
    /// Shutting down: new broker calls answer UNAVAILABLE; calls in flight finish.
    Draining = 2,
    /// A standby of a cluster: broker calls answer UNAVAILABLE with the leader's
    /// address, when known, in the [`LEADER_METADATA`] trailer.
    Standby = 3,
}

/// The trailer in which a standby names the leader's address (`host:port`).
pub use crate::proto::LEADER_METADATA;

/// The phase, shared by the server and the layer, and the leader a standby names.
#[derive(Debug)]
pub struct PhaseCell {
    phase: AtomicU8,
    leader: parking_lot::RwLock<Option<tonic::metadata::AsciiMetadataValue>>,
}

impl PhaseCell {
    pub fn new(phase: Phase) -> Self {
        PhaseCell {
            phase: AtomicU8::new(phase as u8),
            leader: parking_lot::RwLock::new(None),
        }
    }

    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn get(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            3 => Phase::Standby,
            _ => Phase::Draining,
        }
    }

    /// A standby, naming `leader` (an address that is not valid metadata is left
    /// out).
    pub fn stand_by(&self, leader: &str) {
        *self.leader.write() = leader.parse().ok();
        self.set(Phase::Standby);
    }

    fn standby_status(&self) -> tonic::Status {
        let leader = self.leader.read().clone();
        let Some(leader) = leader else {
            return tonic::Status::unavailable(format!(
                "{STANDBY_REFUSAL} and knows no leader yet; retry shortly"
            ));
        };
        let mut status = tonic::Status::unavailable(format!(
            "{STANDBY_REFUSAL}; the cluster's leader is at {} (trailer {LEADER_METADATA})",
            leader.to_str().unwrap_or_default()
        ));
        status.metadata_mut().insert(LEADER_METADATA, leader);
        status
    }
}

/// How a broker call is refused in each phase but `Serving`: the gate answers before
/// authentication, so a call without a key tells any client the phase
/// ([`refused_in_phase`], for `seatbroker status`).
const STARTING_REFUSAL: &str = "seatbroker is starting: it is recovering its log; retry shortly";
const DRAINING_REFUSAL: &str =
    "seatbroker is shutting down; retry on another instance or after the restart";
const STANDBY_REFUSAL: &str = "this seatbroker node is a standby";

/// The phase a broker call's UNAVAILABLE answer says the daemon is in, and the leader
/// a standby names (the inverse of the gate in [`RpcService`]); `None` for
/// any other answer.
pub fn refused_in_phase(status: &tonic::Status) -> Option<(Phase, Option<String>)> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let message = status.message();
    if message == STARTING_REFUSAL {
        Some((Phase::Starting, None))
    } else if message == DRAINING_REFUSAL {
        Some((Phase::Draining, None))
    } else if message.starts_with(STANDBY_REFUSAL) {
        let leader = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|leader| leader.to_str().ok())
            .map(str::to_owned);
        Some((Phase::Standby, leader))
    } else {
        None
    }
}

/// The path prefix of the broker calls: the phase gates them, and they need a key
/// (`api::guard`).
pub const BROKER_PATH_PREFIX: &str = "/seatbroker.";
/// The label of a path that names no known method (bounded cardinality).
const UNKNOWN_METHOD: &str = "unknown";

/// A served method: its label (`Service/Method`) and its latency histogram for each
/// status code. Handles are registered on first use, after `metrics::install`
/// (like every handle), so recording a call is a push into the histogram, without
/// hashing labels or looking the series up.
pub struct MethodMetrics {
    label: &'static str,
    by_code: [OnceLock<::metrics::Histogram>; CODES],
}

impl MethodMetrics {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            by_code: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn record(&self, code: usize, elapsed: Duration) {
        self.by_code[code]
            .get_or_init(|| metrics::rpc_duration(self.label, CODE_NAMES[code]))
            .record(elapsed.as_secs_f64());
    }
}

/// Every method the daemon serves, from the descriptor sets, by `/pkg.Service/Method`.
/// Built once; the leaked entries are a few dozen.
fn served_methods() -> &'static HashMap<String, &'static MethodMetrics> {
    static METHODS: OnceLock<HashMap<String, &'static MethodMetrics>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let sets = [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashMap::new();
        for encoded in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        let path =
                            format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        let label = format!("{}/{}", service.name(), method.name());
                        let label: &'static str = Box::leak(label.into_boxed_str());
                        methods.insert(path, &*Box::leak(Box::new(MethodMetrics::new(label))));
                    }
                }
            }
        }
        methods
    })
}

/// The metrics of the method at `path`; strangers share one label (bounded cardinality).
fn method_metrics(path: &str) -> &'static MethodMetrics {
    static UNKNOWN: OnceLock<MethodMetrics> = OnceLock::new();
    served_methods()
        .get(path)
        .copied()
        .unwrap_or_else(|| UNKNOWN.get_or_init(|| MethodMetrics::new(UNKNOWN_METHOD)))
}

#[cfg(test)]
fn method_label(path: &str) -> &'static str {
    method_metrics(path).label
}

/// gRPC status codes, by number.
const CODES: usize = 17;
const CODE_NAMES: [&str; CODES] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CODE_UNKNOWN: usize = 2;
const CODE_UNAVAILABLE: usize = 14;

/// The status code of a unary answer: in the headers of an error (trailers-only),
/// absent (sent in the trailers) for a success.
fn status_code(headers: &http::HeaderMap) -> usize {
    let Some(value) = headers.get("grpc-status") else {
        return 0;
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|code| *code < CODES)
        .unwrap_or(CODE_UNKNOWN)
}

/// Adds [`RpcService`] around the server's routes.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    phase: Arc<PhaseCell>,
}

impl RpcLayer {
    pub fn new(phase: Arc<PhaseCell>) -> Self {
        RpcLayer { phase }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            phase: Arc::clone(&self.phase),
        }
    }
}

/// One span, one latency sample and one phase check per call.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    phase: Arc<PhaseCell>,
}

pin_project_lite::pin_project! {
    /// One call through the layer: the refusal of the phase, or the inner call in its
    /// span followed by the latency sample. Not boxed: the inner future is polled in
    /// place rather than moved into another allocation.
    #[project = RpcFutureProjection]
    pub enum RpcFuture<F, T> {
        Refused { response: Option<T> },
        Called {
            #[pin]
            inner: Instrumented<F>,
            method: &'static MethodMetrics,
            started: Instant,
            call: Option<CallInFlight>,
        },
    }
}

impl<F, R, E> Future for RpcFuture<F, http::Response<R>>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RpcFutureProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            RpcFutureProjection::Called {
                mut inner,
                method,
                started,
                call,
            } => {
                let response = std::task::ready!(inner.as_mut().poll(cx))?;
                let code = status_code(response.headers());
                let elapsed = started.elapsed();
                let span = inner.span();
                span.record("code", CODE_NAMES[code]);
                tracing::debug!(parent: span, elapsed_us = elapsed.as_micros() as u64, "rpc finished");
                method.record(code, elapsed);
                call.take();
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<S, B, R> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RpcFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = method_metrics(path);
        let phase = self.phase.get();
        let info = request.extensions().get::<ConnectionInfo>();
        let connection = info.map(|info| &info.state);
        // The mTLS identity: which client certificate made the call.
        let client_cert = info.and_then(|info| info.client_subject.clone());
        if path.starts_with(BROKER_PATH_PREFIX) && phase != Phase::Serving {
            if let Some(connection) = connection {
                connection.call_answered();
            }
            let status = match phase {
                Phase::Starting => tonic::Status::unavailable(STARTING_REFUSAL),
                Phase::Standby => self.phase.standby_status(),
                _ => tonic::Status::unavailable(DRAINING_REFUSAL),
            };
            method.record(CODE_UNAVAILABLE, Duration::ZERO);
            return RpcFuture::Refused {
                response: Some(status.into_http()),
            };
        }
        let span = tracing::info_span!(
            "rpc",
            method = method.label,
            org = tracing::field::Empty,
            code = tracing::field::Empty,
            client_cert = client_cert.as_deref()
        );
        let call = connection.map(|connection| connection.call_started());
        let started = Instant::now();
        // `inner` was polled ready by `poll_ready`, so it takes the call now.
        let inner = span.in_scope(|| self.inner.call(request)).instrument(span);
        RpcFuture::Called {
            inner,
            method,
            started,
            call,
        }
    }
}

/// Names the organization of the current call on its span.
pub fn record_org(org: &str) {
    tracing::Span::current().record("org", org);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_a_label_and_strangers_share_one() {
        assert_eq!(
            method_label("/seatbroker.v1.SessionService/Acquire"),
            "SessionService/Acquire"
        );
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "Health/Check");
        assert_eq!(
            method_label("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(method_label("/x.Y/Z"), UNKNOWN_METHOD);
    }
}
