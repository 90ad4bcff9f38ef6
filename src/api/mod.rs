//! The gRPC edge: turns wire messages into validated domain values, resolves the
//! caller from the `authorization` metadata, calls the broker, and turns the answer
//! (or the domain error, through [`status`]) back into wire messages. No license rule
//! lives here.

pub mod admin;
pub mod convert;
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
    let Some(value) = request.metadata().get("authorization") else {
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

/// Resolves the caller of a request, and names a member's organization on the call's
/// span (the operator's calls name theirs when the request's `org_id` is parsed).
pub fn principal<T>(broker: &Broker, request: &Request<T>) -> Result<Principal, Status> {
    let token = bearer_token(request)?;
    let principal = broker.authenticate(token).map_err(status::to_status)?;
    if let Some(org) = principal.org() {
        crate::telemetry::rpc::record_org(org.as_str());
    }
    Ok(principal)
}
