//! A gRPC client of our own API, for the CLI, the load generator and the tests: a
//! channel plus an interceptor that sends `authorization: Bearer <key>`.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::session_service_client::SessionServiceClient;

/// A channel that authenticates every call with one key.
pub type Authorized = InterceptedService<Channel, BearerKey>;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl BearerKey {
    pub fn new(key: Option<&str>) -> Result<Self, String> {
        key.map(|key| {
            format!("Bearer {key}")
                .parse()
                .map_err(|_| "the API key holds characters that cannot be sent".to_owned())
        })
        .transpose()
        .map(BearerKey)
    }
}

impl tonic::service::Interceptor for BearerKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Opens a channel to `addr` (e.g. `http://127.0.0.1:50051`).
pub async fn connect(addr: &str) -> Result<Channel, String> {
    let endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| format!("bad address {addr}: {e}"))?;
    endpoint
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot reach seatbroker at {addr}: {e}"))
}

pub fn admin(channel: Channel, key: BearerKey) -> AdminServiceClient<Authorized> {
    AdminServiceClient::with_interceptor(channel, key)
}

pub fn session(channel: Channel, key: BearerKey) -> SessionServiceClient<Authorized> {
    SessionServiceClient::with_interceptor(channel, key)
}
