//! A gRPC client of our own API, for the CLI, the load generator and the tests: a
//! channel (plaintext, TLS or mTLS) plus an interceptor that sends
//! `authorization: Bearer <key>`, marked sensitive so that HTTP/2 never indexes it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::session_service_client::SessionServiceClient;
use crate::tls::ClientTlsFiles;

/// A channel that authenticates every call with one key.
pub type Authorized = InterceptedService<Channel, BearerKey>;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl BearerKey {
    pub fn new(key: Option<&str>) -> Result<Self, String> {
        key.map(|key| {
            let mut value: MetadataValue<Ascii> = format!("Bearer {key}")
                .parse()
                .map_err(|_| "the API key holds characters that cannot be sent".to_owned())?;
            value.set_sensitive(true);
            Ok(value)
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

/// Opens a plaintext channel to `addr` (e.g. `http://127.0.0.1:50051`).
pub async fn connect(addr: &str) -> Result<Channel, String> {
    connect_with(addr, &ClientTlsFiles::default()).await
}

/// Opens a channel to `addr`: `http://` in plaintext, `https://` over TLS with the CA
/// (and, for mTLS, the client certificate and key) in `tls`.
pub async fn connect_with(addr: &str, tls: &ClientTlsFiles) -> Result<Channel, String> {
    let mut endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| format!("bad address {addr}: {e}"))?;
    if addr.starts_with("https://") {
        let config = crate::tls::client_config(tls).map_err(|e| e.to_string())?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS for {addr}: {}", crate::tls::source_chain(&e)))?;
    } else if !tls.is_empty() {
        return Err(format!(
            "TLS files were given but {addr} is not an https:// address"
        ));
    }
    endpoint.tcp_nodelay(true).connect().await.map_err(|e| {
        format!(
            "cannot reach seatbroker at {addr}: {}",
            crate::tls::source_chain(&e)
        )
    })
}

pub fn admin(channel: Channel, key: BearerKey) -> AdminServiceClient<Authorized> {
    AdminServiceClient::with_interceptor(channel, key)
}

pub fn session(channel: Channel, key: BearerKey) -> SessionServiceClient<Authorized> {
    SessionServiceClient::with_interceptor(channel, key)
}
