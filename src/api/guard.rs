//! The edge's guards around every call, inside the RPC layer and before any byte of a
//! request body is read (as qdrant's `src/tonic/auth.rs` and tonic's authentication
//! example do):
//!
//! - [`AuthLayer`] authenticates each broker call (`/seatbroker.…`) from its
//!   `authorization` header. A call without a valid key is answered UNAUTHENTICATED at
//!   once, so its body is never buffered; a valid one carries its [`Principal`] in the
//!   request's extensions, where [`super::principal`] takes it (one authentication per
//!   call). Health and reflection stay open to everyone. A key bound to a client
//!   certificate subject is refused here (PERMISSION_DENIED) over a connection
//!   without that subject, and each call runs with its connection's subject as
//!   [`crate::connections::call_client_subject`], for the audit record.
//! - [`BodyBudgetLayer`] charges every request body against the connection's share
//!   ([`crate::connections::ConnectionState`]) and the daemon's budget ([`RequestBodies`])
//!   for the message it is still receiving: the length its 5-byte gRPC prefix
//!   announces as soon as the prefix arrives (tonic's decoder reserves that much at
//!   once), or the bytes read when more. The charge is given back as each message
//!   completes (it is then tonic's to decode) and when the body is dropped, so a
//!   session stream that sends messages for days holds only its current one. A body
//!   that would pass either bound ends the call with RESOURCE_EXHAUSTED, so clients
//!   that open many streams, announce large messages and never finish them hold a
//!   bounded amount of memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::task::futures::TaskLocalFuture;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::broker::Broker;
use crate::connections::{BodyCharge, ConnectionInfo, with_call_client_subject};
use crate::domain::Principal;
use crate::telemetry::rpc::BROKER_PATH_PREFIX;

/// The bytes before each gRPC message: a compression flag and the length.
const GRPC_PREFIX_BYTES: usize = 5;

/// Authenticates the caller of a request with `headers` (the bearer token of
/// `authorization`) and `extensions` (the connection's client certificate, for keys
/// bound to one).
pub fn authenticate(
    broker: &Broker,
    headers: &http::HeaderMap,
    extensions: &http::Extensions,
) -> Result<Principal, Status> {
    let token = super::bearer_token_of(headers)?;
    let principal = broker
        .authenticate(token, client_subject(extensions).as_deref())
        .map_err(super::status::to_status)?;
    if let Some(org) = principal.org() {
        crate::telemetry::rpc::record_org(org.as_str());
    }
    Ok(principal)
}

/// The subject of the client certificate the request's connection presented.
pub(crate) fn client_subject(extensions: &http::Extensions) -> Option<Arc<str>> {
    extensions
        .get::<ConnectionInfo>()
        .and_then(|info| info.client_subject.clone())
}

/// Adds [`AuthService`] around a broker service (the daemon puts it around each).
#[derive(Clone)]
pub struct AuthLayer {
    broker: Arc<Broker>,
}

impl AuthLayer {
    pub fn new(broker: Arc<Broker>) -> Self {
        AuthLayer { broker }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            broker: Arc::clone(&self.broker),
        }
    }
}

/// Refuses broker calls without a valid key from their headers.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    broker: Arc<Broker>,
}

/// Routed under the name of the service it guards.
impl<S: tonic::server::NamedService> tonic::server::NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

pin_project_lite::pin_project! {
    /// A call through a guard: answered at once, or passed on.
    #[project = GuardFutureProjection]
    pub enum GuardFuture<F, T> {
        Refused { response: Option<T> },
        Called { #[pin] inner: F },
    }
}

impl<F, T, E> Future for GuardFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardFutureProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            GuardFutureProjection::Called { inner } => inner.poll(cx),
        }
    }
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GuardFuture<TaskLocalFuture<Option<Arc<str>>, S::Future>, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(BROKER_PATH_PREFIX) {
            match authenticate(&self.broker, request.headers(), request.extensions()) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(status) => {
                    return GuardFuture::Refused {
                        response: Some(status.into_http()),
                    };
                }
            }
        }
        // The audit record names the client certificate of each event's call.
        let subject = client_subject(request.extensions());
        GuardFuture::Called {
            inner: with_call_client_subject(subject, self.inner.call(request)),
        }
    }
}

pub use crate::connections::RequestBodies;

/// Adds [`BodyBudgetService`] around the routes.
#[derive(Clone)]
pub struct BodyBudgetLayer {
    bodies: Arc<RequestBodies>,
}

impl BodyBudgetLayer {
    pub fn new(bodies: Arc<RequestBodies>) -> Self {
        BodyBudgetLayer { bodies }
    }
}

impl<S> Layer<S> for BodyBudgetLayer {
    type Service = BodyBudgetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyBudgetService {
            inner,
            bodies: Arc::clone(&self.bodies),
        }
    }
}

/// Wraps each request body in a [`ChargedBody`].
#[derive(Clone)]
pub struct BodyBudgetService<S> {
    inner: S,
    bodies: Arc<RequestBodies>,
}

impl<S> Service<http::Request<Body>> for BodyBudgetService<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let connection = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| Arc::clone(&info.state));
        let message_bytes_max = self.bodies.message_bytes_max();
        let charge = BodyCharge::new(Arc::clone(&self.bodies), connection);
        let request = request.map(|body| {
            Body::new(ChargedBody {
                inner: body,
                charge,
                message_bytes_max,
                message: MessageFraming::default(),
            })
        });
        self.inner.call(request)
    }
}

/// A request body charged for the message it is receiving, as its bytes are read;
/// given back as each message completes and when the body is dropped.
pub struct ChargedBody {
    inner: Body,
    charge: BodyCharge,
    /// A larger announcement is not charged (see [`RequestBodies`]).
    message_bytes_max: usize,
    message: MessageFraming,
}

/// Where a body is in its sequence of gRPC messages: the 5-byte prefix of the
/// current one (a flag, then the length, big-endian) and its bytes read so far.
#[derive(Default)]
struct MessageFraming {
    prefix: [u8; GRPC_PREFIX_BYTES],
    prefix_read: usize,
    /// Bytes of the current message read, its prefix included.
    received: usize,
}

impl MessageFraming {
    /// The current message's length with its prefix, once the prefix is complete.
    fn announced_bytes(&self) -> Option<usize> {
        if self.prefix_read < GRPC_PREFIX_BYTES {
            return None;
        }
        let [_, length @ ..] = self.prefix;
        Some(u32::from_be_bytes(length) as usize + GRPC_PREFIX_BYTES)
    }

    /// Reads `data` (which may end one message and start others); a message read
    /// to its end starts the next afresh.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let taken = match self.announced_bytes() {
                None => {
                    let taken = (GRPC_PREFIX_BYTES - self.prefix_read).min(data.len());
                    self.prefix[self.prefix_read..self.prefix_read + taken]
                        .copy_from_slice(&data[..taken]);
                    self.prefix_read += taken;
                    taken
                }
                Some(announced) => (announced - self.received).min(data.len()),
            };
            self.received += taken;
            data = &data[taken..];
            if self
                .announced_bytes()
                .is_some_and(|announced| self.received >= announced)
            {
                *self = MessageFraming::default();
            }
        }
    }

    /// The bytes the incomplete message holds or announced (an announcement past
    /// `message_bytes_max` is refused by the decoder, so it is not charged).
    fn held_bytes(&self, message_bytes_max: usize) -> usize {
        let announced = self
            .announced_bytes()
            .filter(|announced| *announced <= message_bytes_max + GRPC_PREFIX_BYTES)
            .unwrap_or(0);
        self.received.max(announced)
    }
}

impl ChargedBody {
    /// Charges what the incomplete message holds or announced after `data` arrived.
    fn charge_frame(&mut self, data: &[u8]) -> Result<(), Status> {
        self.message.advance(data);
        self.charge
            .charge_exactly(self.message.held_bytes(self.message_bytes_max))
    }
}

impl HttpBody for ChargedBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = this.charge_frame(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 22;

    #[test]
    fn the_announced_length_is_read_from_a_prefix_split_across_frames() {
        let mut message = MessageFraming::default();
        message.advance(&[0, 0]);
        assert_eq!(message.held_bytes(MAX), 2);
        message.advance(&[0x10, 0x00]);
        assert_eq!(message.held_bytes(MAX), 4);
        // The last byte of the length, then the message's first bytes.
        message.advance(&[0x01, 7, 7, 7]);
        assert_eq!(message.held_bytes(MAX), 0x10_0001 + 5);
        // Later frames of the same message change nothing.
        message.advance(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(message.held_bytes(MAX), 0x10_0001 + 5);
    }

    #[test]
    fn a_completed_message_holds_nothing_and_the_next_one_starts_afresh() {
        let mut message = MessageFraming::default();
        // Two whole messages (3 and 0 bytes) and the first 2 bytes of a third.
        message.advance(&[0, 0, 0, 0, 3, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(message.held_bytes(MAX), 2);
        message.advance(&[0, 0, 2, 1]);
        assert_eq!(message.held_bytes(MAX), 7);
        message.advance(&[1]);
        assert_eq!(message.held_bytes(MAX), 0);
        // A stream of many messages never holds more than the one being read.
        for _ in 0..10_000 {
            message.advance(&[0, 0, 0, 0, 4, 1, 2, 3, 4]);
            assert_eq!(message.held_bytes(MAX), 0);
        }
    }

    #[test]
    fn an_announcement_past_the_message_bound_is_charged_only_what_arrived() {
        let mut message = MessageFraming::default();
        message.advance(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(message.held_bytes(MAX), 7);
    }

    #[test]
    fn a_charge_past_the_bound_takes_nothing() {
        use crate::connections::charge;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let held = AtomicUsize::new(0);
        assert!(charge(&held, 10, 6));
        assert!(!charge(&held, 10, 5));
        assert_eq!(held.load(Ordering::Relaxed), 6);
        assert!(charge(&held, 10, 4));
        assert_eq!(held.load(Ordering::Relaxed), 10);
    }
}
