//! HTTP for people and scripts on the daemon's one listener, beside gRPC: the admin
//! web console ([`console`]: static files embedded in the binary) and the JSON form
//! of `AdminService` ([`json`]).
//!
//! [`WebLayer`] is the outermost layer of the gRPC server, which accepts HTTP/1.1 as
//! well as HTTP/2 (`server::http2_server`). A request whose content type is
//! `application/grpc…` passes through untouched (the hot path costs one header
//! look-up). A JSON call is transcoded and sent down the same stack as a gRPC call;
//! a console file is answered here; anything else is a plain 404, rather than a gRPC
//! status a browser would not show. An HTTP/1 request marks its connection as HTTP/1
//! (`ConnectionState::mark_http1`), whose idle deadline then bounds the next
//! request's headers, which hyper under tonic does not.

pub mod console;
pub mod json;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{self, header};
use tower::{Layer, Service};

use crate::connections::{ConnectionInfo, RequestBodies};

/// Adds [`WebService`] around the server's stack.
#[derive(Debug, Clone)]
pub struct WebLayer {
    /// The largest JSON body a call may send: the admin service's message limit.
    json_body_bytes_max: usize,
    /// The daemon's budget of request bodies, which a JSON body is charged to as it
    /// is read (its connection's share too).
    bodies: Arc<RequestBodies>,
}

impl WebLayer {
    pub fn new(json_body_bytes_max: usize, bodies: Arc<RequestBodies>) -> Self {
        WebLayer {
            json_body_bytes_max,
            bodies,
        }
    }
}

impl<S> Layer<S> for WebLayer {
    type Service = WebService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WebService {
            inner,
            json_body_bytes_max: self.json_body_bytes_max,
            bodies: Arc::clone(&self.bodies),
        }
    }
}

/// Routes each request: gRPC on, JSON transcoded, console files answered.
#[derive(Debug, Clone)]
pub struct WebService<S> {
    inner: S,
    json_body_bytes_max: usize,
    bodies: Arc<RequestBodies>,
}

type JsonCall = Pin<Box<dyn Future<Output = http::Response<Body>> + Send>>;

pin_project_lite::pin_project! {
    /// A request through the layer: the gRPC call in place (unboxed), a JSON call
    /// (boxed: it is not the hot path), or an answer ready now.
    #[project = WebFutureProjection]
    pub enum WebFuture<F> {
        Grpc { #[pin] inner: F },
        Json { call: JsonCall },
        Answered { response: Option<http::Response<Body>> },
    }
}

impl<F, E> Future for WebFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WebFutureProjection::Grpc { inner } => inner.poll(cx),
            WebFutureProjection::Json { call } => call.as_mut().poll(cx).map(Ok),
            WebFutureProjection::Answered { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

impl<S> Service<http::Request<Body>> for WebService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display + Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = WebFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // An HTTP/1 connection gets the shorter idle deadline that bounds its next
        // request's headers (see `connections`).
        if request.version() < http::Version::HTTP_2
            && let Some(info) = request.extensions().get::<ConnectionInfo>()
        {
            info.state.mark_http1();
        }
        if is_grpc(request.headers()) {
            return WebFuture::Grpc {
                inner: self.inner.call(request),
            };
        }
        if request.uri().path().starts_with(json::ADMIN_PATH_PREFIX) {
            // The service polled ready is the one that takes the call (tower's
            // clone-and-swap); the clone left behind is polled ready before the next.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            return WebFuture::Json {
                call: Box::pin(json::call(
                    ready,
                    request,
                    json::JsonBounds {
                        body_bytes_max: self.json_body_bytes_max,
                        bodies: Arc::clone(&self.bodies),
                    },
                )),
            };
        }
        // The console's answers count as calls on their connection, so a browser's
        // connection is not closed as idle while it fetches files.
        let _call = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.state.call_started());
        WebFuture::Answered {
            response: Some(console::answer(&request)),
        }
    }
}

/// gRPC (and gRPC-Web) requests say so in their content type.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}
