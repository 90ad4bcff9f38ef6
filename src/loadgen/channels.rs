//! Connections to the target: one tonic `Channel` per HTTP/2 connection (a `Channel`
//! multiplexes, so distinct connections need distinct `Endpoint::connect` calls),
//! `TCP_NODELAY`, client TLS, and the `authorization` metadata every call carries.

use std::time::Duration;

use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::config::BrokerTarget;
use super::error::LoadgenError;
use super::limits::{CONNECT_TIMEOUT_MS, RPC_TIMEOUT_MS};

/// How to reach the target; `connect_all` opens connections from it.
pub(crate) struct ChannelSpec {
    endpoint: Endpoint,
    /// The address as given, for messages and the report.
    pub addr: String,
}

impl ChannelSpec {
    /// A plaintext `http://` target (the no-op server).
    pub(crate) fn plaintext(addr: String) -> Result<Self, LoadgenError> {
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| LoadgenError::Usage(format!("bad address {addr}: {e}")))?;
        Ok(Self {
            endpoint: tune(endpoint),
            addr,
        })
    }

    /// The broker, with TLS when its settings carry a CA.
    pub(crate) fn for_broker(target: &BrokerTarget) -> Result<Self, LoadgenError> {
        let spec = Self::plaintext(target.uri.clone())?;
        let Some(tls) = &target.tls else {
            return Ok(spec);
        };
        let tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .domain_name(tls.domain.clone())
            .timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
        let endpoint = spec
            .endpoint
            .tls_config(tls_config)
            .map_err(|e| LoadgenError::Tls(e.to_string()))?;
        Ok(Self { endpoint, ..spec })
    }

    /// A channel that connects at its first call and reconnects after a broken
    /// connection (a daemon that restarts).
    pub(crate) fn lazy_channel(&self) -> Channel {
        self.endpoint.connect_lazy()
    }
}

fn tune(endpoint: Endpoint) -> Endpoint {
    endpoint
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(RPC_TIMEOUT_MS))
        .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
}

/// Opens `count` distinct HTTP/2 connections, one after the other.
pub(crate) async fn connect_all(
    spec: &ChannelSpec,
    count: u32,
) -> Result<Vec<Channel>, LoadgenError> {
    let mut channels = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let channel = spec
            .endpoint
            .connect()
            .await
            .map_err(|source| LoadgenError::Connect {
                addr: spec.addr.clone(),
                source,
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The `authorization: Bearer <key>` value, parsed once and cloned per call.
pub(crate) fn bearer(key: &str) -> Result<MetadataValue<Ascii>, LoadgenError> {
    format!("Bearer {key}").parse().map_err(|_| {
        LoadgenError::Usage("an API key holds characters not allowed in metadata".to_owned())
    })
}

/// Wraps `message` in a request that carries `authorization`.
pub(crate) fn authorized<T>(authorization: &MetadataValue<Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}
