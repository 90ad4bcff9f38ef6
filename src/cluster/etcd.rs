//! The etcd v3 client of cluster mode, on the vendored subset of etcd's API
//! (`proto/etcd/rpc.proto`, compiled by `build.rs` with protox). One balanced channel
//! over every endpoint; every unary call has a deadline, so a partitioned etcd shows
//! as an error in bounded time rather than a call that hangs.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// The generated messages and client stubs (etcd's names).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;

/// The largest answer read from etcd: a page of log values (see `recovery`).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd endpoint {endpoint:?} is not a URL: {detail}")]
    Endpoint { endpoint: String, detail: String },
    #[error("{0}")]
    Call(#[from] tonic::Status),
}

/// A client of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
}

impl Etcd {
    /// A client over `endpoints` (`http://host:port`); connects lazily, so a node
    /// starts while etcd is down and its calls fail until etcd is back.
    pub fn connect(endpoints: &[String], request_timeout: Duration) -> Result<Etcd, EtcdError> {
        let endpoints = endpoints
            .iter()
            .map(|endpoint| {
                Endpoint::from_shared(endpoint.clone())
                    .map(|built| {
                        built
                            .connect_timeout(request_timeout)
                            .timeout(request_timeout)
                            .http2_keep_alive_interval(request_timeout)
                            .keep_alive_timeout(request_timeout)
                            .keep_alive_while_idle(true)
                    })
                    .map_err(|error| EtcdError::Endpoint {
                        endpoint: endpoint.clone(),
                        detail: error.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Etcd {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
            maintenance: MaintenanceClient::new(channel),
        })
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<pb::KeyValue>, EtcdError> {
        let response = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner().kvs.into_iter().next())
    }

    /// At most `limit` keys of `[start, end)` in key order, as of `revision` (0: now).
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
    ) -> Result<pb::RangeResponse, EtcdError> {
        let response = self
            .kv
            .clone()
            .range(pb::RangeRequest {
                key: start.to_vec(),
                range_end: end.to_vec(),
                revision,
                limit,
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn txn(&self, txn: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        Ok(self.kv.clone().txn(txn).await?.into_inner())
    }

    /// A new lease of `ttl` (whole seconds, at least one).
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let response = self
            .lease
            .clone()
            .lease_grant(pb::LeaseGrantRequest {
                ttl: ttl.as_secs().max(1) as i64,
                id: 0,
            })
            .await?;
        Ok(response.into_inner().id)
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.lease
            .clone()
            .lease_revoke(pb::LeaseRevokeRequest { id: lease })
            .await?;
        Ok(())
    }

    pub fn lease_client(&self) -> LeaseClient<Channel> {
        self.lease.clone()
    }

    /// The watch stream's client (a standby following the log; no deadline: the
    /// channel's keepalive ends a stream to an etcd that went away).
    pub fn watch_client(&self) -> WatchClient<Channel> {
        self.watch.clone()
    }

    /// Compacts etcd's history up to `revision`: older versions of keys are forgotten
    /// (and their room reused), the current ones stay.
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.kv
            .clone()
            .compact(pb::CompactionRequest {
                revision,
                physical: false,
            })
            .await?;
        Ok(())
    }

    /// The answering member's status (its database's size and the part in use).
    pub async fn status(&self) -> Result<pb::StatusResponse, EtcdError> {
        Ok(self
            .maintenance
            .clone()
            .status(pb::StatusRequest {})
            .await?
            .into_inner())
    }
}

/// The end of the range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A transaction's compare: `key` exists with this create revision (0: is absent).
pub fn created_at(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
    }
}

pub fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key,
            value,
            lease,
        })),
    }
}

/// Deletes every key of `[start, end)`.
pub fn delete_range(start: Vec<u8>, end: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: start,
                range_end: end,
            },
        )),
    }
}

pub fn get(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// The key-values of a transaction's first answer, when it is a range.
pub fn first_range(response: &pb::TxnResponse) -> &[pb::KeyValue] {
    match response
        .responses
        .first()
        .and_then(|op| op.response.as_ref())
    {
        Some(pb::response_op::Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
