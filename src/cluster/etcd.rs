//! The etcd v3 client of cluster mode, on the vendored subset of etcd's API
//! (`proto/etcd/rpc.proto`, compiled by `build.rs` with protox). One balanced channel
//! over every endpoint; every unary call has a deadline, so a partitioned etcd shows
//! as an error in bounded time rather than a call that hangs.
//!
//! [`EtcdAccess`] says how etcd is reached beyond its URLs: TLS for `https://`
//! endpoints (the CA, and a client certificate when etcd requires one: a tonic
//! configuration the server builds from the PEM files), and a user. With a user, the
//! client gets a token from etcd's `Authenticate` and sends it in the `token` metadata
//! of every call, as etcd's own client does; a call that etcd refuses because the
//! token is missing, expired or stale gets a new token (one `Authenticate` at a time)
//! and is sent once more. [`Etcd::check_access`] is a node's first call: a refused
//! certificate or password shows at start rather than as endless retries.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

/// The generated messages and client stubs (etcd's names).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::auth_client::AuthClient;
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
    /// etcd refused the user or its password.
    #[error("etcd refused user {user:?}: {detail}")]
    AuthFailed { user: String, detail: String },
    #[error("{0}")]
    Call(#[from] tonic::Status),
}

/// How etcd is reached beyond its URLs.
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    /// TLS for `https://` endpoints: the CA that signed etcd's certificate, and a
    /// client certificate for an etcd that requires one.
    pub tls: Option<ClientTlsConfig>,
    /// The etcd user this node authenticates as (`None`: etcd's authentication off).
    pub credentials: Option<Credentials>,
}

/// An etcd user and its password; `Debug` hides the password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// The token every call carries, shared by the clients' interceptor and the code that
/// renews it.
#[derive(Clone, Default)]
pub struct Token(Arc<parking_lot::RwLock<Option<AsciiMetadataValue>>>);

impl Token {
    fn current(&self) -> Option<AsciiMetadataValue> {
        self.0.read().clone()
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.current() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

/// A channel to etcd whose calls carry the token.
pub type TokenChannel = InterceptedService<Channel, Token>;

/// What authenticates the client: the user, and one `Authenticate` at a time.
struct Authenticator {
    client: AuthClient<Channel>,
    credentials: Credentials,
    one_at_a_time: tokio::sync::Mutex<()>,
    authentications: AtomicU64,
}

/// A client of one etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    kv: KvClient<TokenChannel>,
    lease: LeaseClient<TokenChannel>,
    watch: WatchClient<TokenChannel>,
    maintenance: MaintenanceClient<TokenChannel>,
    token: Token,
    authenticator: Option<Arc<Authenticator>>,
}

impl Etcd {
    /// A client over `endpoints` (`http://host:port`, or `https://` with `access.tls`);
    /// connects lazily, so a node starts while etcd is down and its calls fail until
    /// etcd is back.
    pub fn connect(
        endpoints: &[String],
        request_timeout: Duration,
        access: EtcdAccess,
    ) -> Result<Etcd, EtcdError> {
        let endpoints = endpoints
            .iter()
            .map(|endpoint| -> Result<Endpoint, EtcdError> {
                let invalid = |detail: String| EtcdError::Endpoint {
                    endpoint: endpoint.clone(),
                    detail,
                };
                let mut built = Endpoint::from_shared(endpoint.clone())
                    .map_err(|error| invalid(error.to_string()))?
                    .connect_timeout(request_timeout)
                    .timeout(request_timeout)
                    .http2_keep_alive_interval(request_timeout)
                    .keep_alive_timeout(request_timeout)
                    .keep_alive_while_idle(true);
                if let Some(tls) = &access.tls {
                    built = built
                        .tls_config(tls.clone())
                        .map_err(|error| invalid(error.to_string()))?;
                }
                Ok(built)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        let token = Token::default();
        let authenticated = InterceptedService::new(channel.clone(), token.clone());
        let authenticator = access.credentials.map(|credentials| {
            Arc::new(Authenticator {
                client: AuthClient::new(channel),
                credentials,
                one_at_a_time: tokio::sync::Mutex::new(()),
                authentications: AtomicU64::new(0),
            })
        });
        Ok(Etcd {
            kv: KvClient::new(authenticated.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX),
            lease: LeaseClient::new(authenticated.clone()),
            watch: WatchClient::new(authenticated.clone())
                .max_decoding_message_size(RESPONSE_BYTES_MAX),
            maintenance: MaintenanceClient::new(authenticated),
            token,
            authenticator,
        })
    }

    /// A node's first call: authenticates (with a user) and reads `key`. A refused
    /// password is [`EtcdError::AuthFailed`]; a refused certificate shows in the
    /// call's status (its source is the TLS error).
    pub async fn check_access(&self, key: &[u8]) -> Result<(), EtcdError> {
        if let Some(authenticator) = &self.authenticator {
            let _one = authenticator.one_at_a_time.lock().await;
            match self.authenticate(authenticator).await {
                Err(EtcdError::Call(status)) if auth_not_enabled(&status) => {
                    tracing::warn!(
                        user = %authenticator.credentials.user,
                        "etcd's authentication is off: the etcd user is not used"
                    );
                }
                other => other?,
            }
        }
        self.get(key).await.map(drop)
    }

    /// How many tokens the client got from etcd so far.
    pub fn authentications(&self) -> u64 {
        self.authenticator
            .as_ref()
            .map_or(0, |a| a.authentications.load(Ordering::Relaxed))
    }

    /// Gets a token and keeps it for the calls. The caller holds `one_at_a_time`.
    async fn authenticate(&self, authenticator: &Authenticator) -> Result<(), EtcdError> {
        let Credentials { user, password } = &authenticator.credentials;
        let request = pb::AuthenticateRequest {
            name: user.clone(),
            password: password.clone(),
        };
        let answer = authenticator.client.clone().authenticate(request).await;
        let token = match answer {
            Ok(answer) => answer.into_inner().token,
            Err(status) if status.code() == Code::InvalidArgument => {
                return Err(EtcdError::AuthFailed {
                    user: user.clone(),
                    detail: status.message().to_owned(),
                });
            }
            Err(status) => return Err(status.into()),
        };
        let token = token
            .parse()
            .map_err(|_| EtcdError::Call(Status::internal("etcd's token is not valid metadata")))?;
        *self.token.0.write() = Some(token);
        authenticator
            .authentications
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gets a new token after `refused` was refused, unless another call got one
    /// meanwhile.
    async fn renew_token(&self, refused: Option<AsciiMetadataValue>) -> Result<(), EtcdError> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(());
        };
        let _one = authenticator.one_at_a_time.lock().await;
        if self.token.current() != refused {
            return Ok(());
        }
        tracing::info!("etcd refused the token; authenticating again");
        self.authenticate(authenticator).await
    }

    /// Makes a unary call, once more with a new token when etcd refused the token.
    async fn call<T, Call, Answer>(&self, mut call: Call) -> Result<T, EtcdError>
    where
        Call: FnMut() -> Answer,
        Answer: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let token = self.token.current();
        match call().await {
            Err(status) if self.authenticator.is_some() && token_refused(&status) => {
                self.renew_token(token).await?;
                Ok(call().await?.into_inner())
            }
            answer => Ok(answer?.into_inner()),
        }
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<pb::KeyValue>, EtcdError> {
        let request = pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let response = self.range_request(request).await?;
        Ok(response.kvs.into_iter().next())
    }

    /// At most `limit` keys of `[start, end)` in key order, as of `revision` (0: now).
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
    ) -> Result<pb::RangeResponse, EtcdError> {
        self.range_request(pb::RangeRequest {
            key: start.to_vec(),
            range_end: end.to_vec(),
            revision,
            limit,
            ..Default::default()
        })
        .await
    }

    async fn range_request(
        &self,
        request: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, EtcdError> {
        self.call(|| {
            let mut kv = self.kv.clone();
            let request = request.clone();
            async move { kv.range(request).await }
        })
        .await
    }

    pub async fn txn(&self, txn: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.call(|| {
            let mut kv = self.kv.clone();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// A new lease of `ttl` (whole seconds, at least one).
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let ttl = ttl.as_secs().max(1) as i64;
        let response = self
            .call(|| {
                let mut lease = self.lease.clone();
                async move {
                    lease
                        .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                        .await
                }
            })
            .await?;
        Ok(response.id)
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(|| {
            let mut client = self.lease.clone();
            async move {
                client
                    .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Opens etcd's lease keepalive stream over `requests`. A refused token is
    /// renewed before the error is returned: the caller opens another stream (the
    /// requests of this one are spent).
    pub async fn lease_keep_alive(
        &self,
        requests: impl tonic::IntoStreamingRequest<Message = pb::LeaseKeepAliveRequest>,
    ) -> Result<Streaming<pb::LeaseKeepAliveResponse>, EtcdError> {
        let token = self.token.current();
        match self.lease.clone().lease_keep_alive(requests).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if self.authenticator.is_some() && token_refused(&status) {
                    self.renew_token(token).await?;
                }
                Err(status.into())
            }
        }
    }

    /// The watch stream's client (a standby following the log; no deadline: the
    /// channel's keepalive ends a stream to an etcd that went away).
    pub fn watch_client(&self) -> WatchClient<TokenChannel> {
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

/// Whether etcd refused a call for its token (missing, expired, or issued before an
/// auth change), which a new token fixes; etcd's own client renews on these.
fn token_refused(status: &Status) -> bool {
    match status.code() {
        // "etcdserver: invalid auth token"
        Code::Unauthenticated => true,
        Code::InvalidArgument => {
            let message = status.message();
            message.contains("user name is empty") || message.contains("auth store is old")
        }
        _ => false,
    }
}

/// "etcdserver: authentication is not enabled".
fn auth_not_enabled(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition && status.message().contains("not enabled")
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
