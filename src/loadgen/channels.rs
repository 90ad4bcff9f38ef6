//! Connections to the target through the shared client ([`crate::client`]: plaintext,
//! TLS or mTLS, `TCP_NODELAY`, the bearer-key interceptor): one tonic `Channel` per
//! HTTP/2 connection (a `Channel` multiplexes, so distinct connections need distinct
//! connects), each under `CONNECT_TIMEOUT_MS`; and the engines' keys as
//! [`BearerKey`]s, each engine calling through a client of its own key.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::client::{self, Authorized, BearerKey};
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::session_service_client::SessionServiceClient;
use crate::tls::ClientTlsFiles;

use super::bounds::CONNECT_TIMEOUT_MS;
use super::config::{BrokerTarget, check_loopback};
use super::error::LoadgenError;

/// The address to drive: the target's, or, when it is a cluster's standby, the leader
/// it names (followed by the one rule of every client of ours, `client::at_leader`),
/// found with one listing call with the operator key. A leader off this machine is
/// refused unless `--allow-remote`.
pub(crate) async fn leader_uri(target: &BrokerTarget) -> Result<String, LoadgenError> {
    enum Failed {
        Loadgen(LoadgenError),
        Call(tonic::Status),
    }
    let key = bearer(&target.operator_key.0)?;
    let found = client::at_leader(
        &target.uri,
        |addr| {
            let key = key.clone();
            async move {
                let channel = connect_all(&addr, &target.tls, 1)
                    .await
                    .map_err(Failed::Loadgen)?
                    .remove(0);
                let request = crate::proto::ListOrganizationsRequest {
                    page_size: 1,
                    ..Default::default()
                };
                let mut client = admin(&channel, &key);
                let call = client.list_organizations(request);
                match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), call).await {
                    Ok(Ok(_)) => Ok(addr),
                    Ok(Err(status)) => Err(Failed::Call(status)),
                    Err(_) => Err(Failed::Loadgen(LoadgenError::SetupTimeout)),
                }
            }
        },
        |failed| match failed {
            Failed::Call(status) => Some(status),
            Failed::Loadgen(_) => None,
        },
    )
    .await;
    let leader = match found {
        Ok(leader) => leader,
        Err(Failed::Loadgen(error)) => return Err(error),
        Err(Failed::Call(status)) => return Err(LoadgenError::setup("ListOrganizations", status)),
    };
    if leader != target.uri && !target.allow_remote {
        check_loopback(&leader)?;
    }
    Ok(leader)
}

/// Opens `count` distinct HTTP/2 connections to `addr`, one after the other.
pub(crate) async fn connect_all(
    addr: &str,
    tls: &ClientTlsFiles,
    count: u32,
) -> Result<Vec<Channel>, LoadgenError> {
    let mut channels = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let connect = client::connect_with(addr, tls);
        let channel = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connect)
            .await
            .map_err(|_| LoadgenError::ConnectTimeout {
                addr: addr.to_owned(),
            })?
            .map_err(|error| LoadgenError::Connect {
                addr: addr.to_owned(),
                message: error.to_string(),
            })?;
        channels.push(channel);
    }
    Ok(channels)
}

/// A plaintext channel to the restart bench's own daemon (on 127.0.0.1) that connects
/// at its first call and again after a broken connection: the daemon is polled before
/// it listens, and restarted.
pub(crate) fn lazy_plaintext(uri: &str) -> Result<Channel, LoadgenError> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| LoadgenError::Usage(format!("bad address {uri}: {e}")))?;
    Ok(endpoint.tcp_nodelay(true).connect_lazy())
}

/// `key` as the `authorization` every call of its clients carries.
pub(crate) fn bearer(key: &str) -> Result<BearerKey, LoadgenError> {
    BearerKey::new(Some(key)).map_err(|error| LoadgenError::Usage(error.to_string()))
}

/// A session client on `channel` that authenticates with `key`.
pub(crate) fn session(channel: &Channel, key: &BearerKey) -> SessionServiceClient<Authorized> {
    client::session(channel.clone(), key.clone())
}

/// An admin client on `channel` that authenticates with `key`.
pub(crate) fn admin(channel: &Channel, key: &BearerKey) -> AdminServiceClient<Authorized> {
    client::admin(channel.clone(), key.clone())
}
