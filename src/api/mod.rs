//! The gRPC edge: turns wire messages into validated domain values, resolves the
//! caller from the `authorization` metadata (once per call, in [`guard::AuthLayer`]),
//! calls the broker, and turns the answer (or the domain error, through [`status`])
//! back into wire messages. No license rule lives here.

pub mod admin;
pub mod channel;
pub mod convert;
pub mod guard;
pub mod paging;
pub mod session;
pub mod status;

use tonic::{Request, Status};

use crate::broker::Broker;
use crate::domain::Principal;

pub use admin::AdminApi;
pub use session::SessionApi;

/// Reads the bearer token from the request's metadata.
pub fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    bearer_token_of(request.metadata().as_ref())
}

/// Reads the bearer token from a request's headers.
pub fn bearer_token_of(headers: &tonic::codegen::http::HeaderMap) -> Result<&str, Status> {
    let Some(value) = headers.get("authorization") else {
        return Err(Status::unauthenticated(
            "missing API key: send metadata 'authorization: Bearer <key>'",
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not ASCII"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be 'Bearer <key>'")
        })?;
    Ok(token.trim())
}

/// The caller of a request: the one [`guard::AuthLayer`] resolved from its headers
/// and left in its extensions, or (for a request that did not pass the layer)
/// resolved now. Names a member's organization on the call's span (the operator's
/// calls name theirs when the request's `org_id` is parsed).
pub fn principal<T>(broker: &Broker, request: &Request<T>) -> Result<Principal, Status> {
    if let Some(principal) = request.extensions().get::<Principal>() {
        return Ok(principal.clone());
    }
    guard::authenticate(broker, request.metadata().as_ref(), request.extensions())
}
