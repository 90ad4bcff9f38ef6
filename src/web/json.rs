//! The JSON form of `AdminService`: the unary form of the Connect protocol
//! (`POST /seatbroker.v1.AdminService/<Method>`, a proto3-JSON body and answer, errors
//! as `{"code": "...", "message": "..."}` with Connect's HTTP status for each code).
//!
//! Nothing here knows a method: the request and answer types come from the descriptor
//! set `build.rs` writes ([`crate::proto::FILE_DESCRIPTOR_SET`]), through
//! `prost-reflect`. A JSON call becomes a gRPC call to the SAME stack (the RPC layer's
//! phase gate, span and metrics; the body budget; authentication from the headers; the
//! service's size limits; the handler and its audit), with the `authorization` header
//! carried over and the connection's extensions kept. The JSON body is read and
//! transcoded only when the service reads its message, so a call without a valid key
//! is refused before any byte of its body is read, as over gRPC.
//!
//! The raw JSON is charged to the same budget as a gRPC body (its connection's share
//! and the daemon's, [`crate::connections::BodyCharge`]): by its announced length
//! (`Content-Length`) before any byte of it is read, as a gRPC body is by its 5-byte
//! prefix, and by the bytes received when it announces none (chunked). A body that
//! announces more than the admin service's message limit is refused 413 at once; one
//! that streams past it is refused 413 as soon as it does, never buffered whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, Method, StatusCode, header};
use tonic::{Code, Status};
use tower::{Service, ServiceExt};

use crate::connections::{BodyCharge, ConnectionInfo, RequestBodies};

/// The path of every JSON method: the gRPC path of `AdminService`.
pub const ADMIN_PATH_PREFIX: &str = "/seatbroker.v1.AdminService/";
const ADMIN_SERVICE: &str = "seatbroker.v1.AdminService";
/// The content type of a JSON call and of its answer.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The descriptors of our protos, decoded once.
fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set build.rs writes decodes")
    })
}

/// The request and answer types of an `AdminService` method, by name.
fn method_types(name: &str) -> Option<(MessageDescriptor, MessageDescriptor)> {
    let service = descriptors().get_service_by_name(ADMIN_SERVICE)?;
    let method = service.methods().find(|method| method.name() == name)?;
    // A streaming method has no unary JSON form.
    if method.is_client_streaming() || method.is_server_streaming() {
        return None;
    }
    Some((method.input(), method.output()))
}

/// The names of the methods the JSON API answers, for the refusal of an unknown one.
fn method_names() -> String {
    descriptors()
        .get_service_by_name(ADMIN_SERVICE)
        .map(|service| {
            service
                .methods()
                .map(|method| method.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Connect's HTTP status for each gRPC code (connectrpc.com/docs/protocol, "Error
/// Codes"), and the code's name in an error body.
pub fn http_status_of(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "ok"),
        Code::Cancelled => (StatusCode::from_u16(499).expect("valid"), "canceled"),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "failed_precondition"),
        Code::Aborted => (StatusCode::CONFLICT, "aborted"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
    }
}

/// A Connect error answer.
pub fn error_response(status: &Status) -> http::Response<Body> {
    error_with_http_status(status, http_status_of(status.code()).0)
}

fn error_with_http_status(status: &Status, http_status: StatusCode) -> http::Response<Body> {
    let body = serde_json::json!({
        "code": http_status_of(status.code()).1,
        "message": status.message(),
    });
    json_response(http_status, Bytes::from(body.to_string()))
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(http_body_util::Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The bounds of a JSON call's body.
#[derive(Debug, Clone)]
pub struct JsonBounds {
    /// The largest body: the admin service's message limit (a JSON body is never
    /// smaller than the protobuf it encodes, see `limits`).
    pub body_bytes_max: usize,
    /// The daemon's budget of request bodies, shared with gRPC.
    pub bodies: Arc<RequestBodies>,
}

/// Answers one JSON call through `inner` (the server's stack below this layer), with
/// its body within `bounds`.
pub async fn call<S>(
    inner: S,
    request: http::Request<Body>,
    bounds: JsonBounds,
) -> http::Response<Body>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Error: std::fmt::Display + Send,
{
    let (parts, body) = request.into_parts();
    let name = parts
        .uri
        .path()
        .strip_prefix(ADMIN_PATH_PREFIX)
        .unwrap_or_default();
    if parts.method != Method::POST {
        let status = Status::unimplemented(format!(
            "the JSON API takes POST with a JSON body, not {}",
            parts.method
        ));
        return error_with_http_status(&status, StatusCode::METHOD_NOT_ALLOWED);
    }
    if !is_json(&parts.headers) {
        let status = Status::invalid_argument(format!(
            "send the body as Content-Type: {JSON_CONTENT_TYPE} (or application/grpc for gRPC)"
        ));
        return error_with_http_status(&status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let Some((input, output)) = method_types(name) else {
        let status = Status::unimplemented(format!(
            "AdminService has no method {name:?}; it has {}",
            method_names()
        ));
        return error_with_http_status(&status, StatusCode::NOT_FOUND);
    };
    let body_bytes_max = bounds.body_bytes_max;
    let announced = content_length(&parts.headers);
    if announced.is_some_and(|announced| announced > body_bytes_max as u64) {
        return error_with_http_status(&too_large(body_bytes_max), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let connection = parts
        .extensions
        .get::<ConnectionInfo>()
        .map(|info| Arc::clone(&info.state));
    let oversized = Arc::new(AtomicBool::new(false));
    let json = JsonToGrpcBody {
        json: Some(body),
        received: BytesMut::new(),
        input,
        body_bytes_max,
        announced_bytes: announced.map_or(0, |announced| announced as usize),
        charge: Some(BodyCharge::new(bounds.bodies, connection)),
        oversized: Arc::clone(&oversized),
    };
    let mut grpc_request = http::Request::new(Body::new(json));
    *grpc_request.method_mut() = Method::POST;
    *grpc_request.uri_mut() = parts.uri;
    *grpc_request.version_mut() = http::Version::HTTP_2;
    *grpc_request.extensions_mut() = parts.extensions;
    let headers = grpc_request.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(authorization) = parts.headers.get(header::AUTHORIZATION) {
        headers.insert(header::AUTHORIZATION, authorization.clone());
    }
    let answer = match inner.oneshot(grpc_request).await {
        Ok(response) => answer_as_json(response, output).await,
        Err(error) => error_response(&Status::internal(format!("the call failed: {error}"))),
    };
    if oversized.load(Ordering::Relaxed) {
        let mut answer = answer;
        *answer.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        return answer;
    }
    answer
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(JSON_CONTENT_TYPE))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(body_bytes_max: usize) -> Status {
    Status::resource_exhausted(format!(
        "the JSON body is larger than {body_bytes_max} bytes: split the request (at most {} emails a call)",
        crate::limits::EMAILS_PER_REQUEST_MAX
    ))
}

/// The gRPC answer as JSON: the message, or the status of the headers (an error
/// answered at once) or of the trailers.
async fn answer_as_json(
    response: http::Response<Body>,
    output: MessageDescriptor,
) -> http::Response<Body> {
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != Code::Ok
    {
        return error_response(&status);
    }
    // The answer is the service's own, bounded by its encoding limit.
    let collected = match response.into_body().collect().await {
        Ok(collected) => collected,
        Err(status) => return error_response(&status),
    };
    if let Some(status) = collected.trailers().and_then(Status::from_header_map)
        && status.code() != Code::Ok
    {
        return error_response(&status);
    }
    let mut framed = collected.to_bytes();
    if framed.len() < GRPC_PREFIX_BYTES {
        return error_response(&Status::internal("the service answered without a message"));
    }
    let _compressed = framed.get_u8();
    let length = framed.get_u32() as usize;
    let message = match DynamicMessage::decode(output, framed.slice(..length.min(framed.len()))) {
        Ok(message) => message,
        Err(error) => {
            return error_response(&Status::internal(format!(
                "the service's answer did not decode: {error}"
            )));
        }
    };
    match to_json(&message) {
        Ok(body) => json_response(StatusCode::OK, Bytes::from(body)),
        Err(error) => error_response(&Status::internal(format!(
            "the answer did not encode as JSON: {error}"
        ))),
    }
}

/// Proto3 JSON with every field present (defaults too), so a reader never has to know
/// a field's default.
fn to_json(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message.serialize_with_options(
        &mut serializer,
        &SerializeOptions::new().skip_default_fields(false),
    )?;
    Ok(serializer.into_inner())
}

/// The 5 bytes before a gRPC message: the compression flag and the length.
const GRPC_PREFIX_BYTES: usize = 5;

/// The protobuf message of a JSON body, framed for gRPC. The JSON is read (up to its
/// bound) and transcoded on the first poll, that is once the service reads the
/// message: a call refused from its headers never reads it.
struct JsonToGrpcBody {
    json: Option<Body>,
    received: BytesMut,
    input: MessageDescriptor,
    body_bytes_max: usize,
    /// The `Content-Length`, at most `body_bytes_max` (0 when none was given).
    announced_bytes: usize,
    /// The JSON's bytes against the budget, given back once it is transcoded (the
    /// protobuf is charged below, as any gRPC body).
    charge: Option<BodyCharge>,
    /// Set when the body streamed past `body_bytes_max`: the answer is then a 413.
    oversized: Arc<AtomicBool>,
}

impl JsonToGrpcBody {
    /// Raises the JSON's charge to what it announced or holds with `incoming` more.
    fn charge_received(&mut self, incoming: usize) -> Result<(), Status> {
        let due = self.announced_bytes.max(self.received.len() + incoming);
        match self.charge.as_mut() {
            Some(charge) => charge.charge_up_to(due),
            None => Ok(()),
        }
    }

    /// The body ends with `status`: nothing more is read, and its bytes go back.
    fn refuse(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.json = None;
        self.received = BytesMut::new();
        self.charge = None;
        Poll::Ready(Some(Err(status)))
    }

    /// The whole JSON body as one gRPC message, or why it is not one.
    fn transcode(&self) -> Result<Bytes, Status> {
        let text: &[u8] = if self.received.iter().all(u8::is_ascii_whitespace) {
            // An empty body is the empty message, as in Connect.
            b"{}"
        } else {
            &self.received
        };
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let message = DynamicMessage::deserialize(self.input.clone(), &mut deserializer)
            .and_then(|message| deserializer.end().map(|()| message))
            .map_err(|error| {
                Status::invalid_argument(format!(
                    "the body is not a JSON {} (proto3 JSON, field names in lowerCamelCase or as in the proto): {error}",
                    self.input.name()
                ))
            })?;
        let length = message.encoded_len();
        let mut framed = BytesMut::with_capacity(GRPC_PREFIX_BYTES + length);
        framed.put_u8(0);
        framed.put_u32(u32::try_from(length).map_err(|_| too_large(self.body_bytes_max))?);
        message
            .encode(&mut framed)
            .map_err(|error| Status::internal(error.to_string()))?;
        Ok(framed.freeze())
    }
}

impl HttpBody for JsonToGrpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.json.is_none() {
            return Poll::Ready(None);
        }
        // Charged its announced length before any byte is read, as a gRPC body is
        // charged by its prefix.
        if let Err(status) = this.charge_received(0) {
            return this.refuse(status);
        }
        loop {
            let json = this.json.as_mut().expect("checked above");
            match std::task::ready!(Pin::new(json).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if this.received.len() + data.len() > this.body_bytes_max {
                            this.oversized.store(true, Ordering::Relaxed);
                            return this.refuse(too_large(this.body_bytes_max));
                        }
                        if let Err(status) = this.charge_received(data.len()) {
                            return this.refuse(status);
                        }
                        this.received.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return this.refuse(status),
                None => {
                    this.json = None;
                    let framed = this.transcode();
                    this.received = BytesMut::new();
                    this.charge = None;
                    return Poll::Ready(Some(framed.map(Frame::data)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.json.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_method_has_json_types_and_strangers_none() {
        let (input, output) = method_types("AssignLicenses").expect("a method");
        assert_eq!(input.name(), "AssignLicensesRequest");
        assert_eq!(output.name(), "AssignLicensesResponse");
        assert!(method_types("Nope").is_none());
        assert!(method_names().contains("ListAuditEvents"));
    }

    #[test]
    fn each_code_has_connects_http_status() {
        assert_eq!(
            http_status_of(Code::Unauthenticated).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            http_status_of(Code::PermissionDenied).0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            http_status_of(Code::ResourceExhausted),
            (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted")
        );
        assert_eq!(
            http_status_of(Code::FailedPrecondition).0,
            StatusCode::BAD_REQUEST
        );
    }
}
