//! A gRPC client of our own API, for the CLI, the load generator and the tests: a
//! channel (plaintext, TLS or mTLS) plus an interceptor that sends
//! `authorization: Bearer <key>`, marked sensitive so that HTTP/2 never indexes it.
//!
//! And the one rule by which every client of ours reaches a cluster's leader from any
//! node: a standby answers broker calls UNAVAILABLE naming the leader (`host:port`)
//! in the `seatbroker-leader` trailer; [`leader_redirect`] turns that answer into the
//! address to call instead (with the caller's scheme, so the same TLS files), and
//! [`at_leader`] runs a call again there, at most `limits::LEADER_REDIRECTS_MAX`
//! standbys in a row. Nothing else is retried: a standby refuses before doing
//! anything, so its refusal is the only failure after which a call is surely safe to
//! send again.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::session_service_client::SessionServiceClient;
use crate::tls::{ClientTlsFiles, TlsError, source_chain};

/// Why a client could not be set up or reach the daemon. The messages carry their
/// causes (a transport error's whole chain), so they print as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad address {addr}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error(transparent)]
    TlsFiles(#[from] TlsError),
    #[error("TLS for {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("TLS files were given but {addr} is not an https:// address")]
    TlsFilesWithoutHttps { addr: String },
    #[error("cannot reach seatbroker at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The connection was made but TLS (or plaintext against TLS) failed: `cause`
    /// says why in plain words and what to do ([`crate::tls::explain_client_failure`]).
    #[error("cannot talk to seatbroker at {addr}: {cause}")]
    Handshake { addr: String, cause: String },
    #[error("the API key holds characters that cannot be sent")]
    UnsendableKey,
}

/// A channel that authenticates every call with one key.
pub type Authorized = InterceptedService<Channel, BearerKey>;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct BearerKey(Option<MetadataValue<Ascii>>);

impl BearerKey {
    pub fn new(key: Option<&str>) -> Result<Self, ClientError> {
        key.map(|key| {
            let mut value: MetadataValue<Ascii> = format!("Bearer {key}")
                .parse()
                .map_err(|_| ClientError::UnsendableKey)?;
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
pub async fn connect(addr: &str) -> Result<Channel, ClientError> {
    connect_with(addr, &ClientTlsFiles::default()).await
}

/// Opens a channel to `addr`: `http://` in plaintext, `https://` over TLS with the CA
/// (and, for mTLS, the client certificate and key) in `tls`.
pub async fn connect_with(addr: &str, tls: &ClientTlsFiles) -> Result<Channel, ClientError> {
    connect_tuned(addr, tls, |endpoint| endpoint).await
}

/// [`connect_with`], the endpoint tuned by `tune` before it connects (the engine
/// client's HTTP/2 keepalive).
pub async fn connect_tuned(
    addr: &str,
    tls: &ClientTlsFiles,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, ClientError> {
    let mut endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| ClientError::BadAddress {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    if addr.starts_with("https://") {
        let config = crate::tls::client_config(tls)?;
        endpoint = endpoint.tls_config(config).map_err(|e| ClientError::Tls {
            addr: addr.to_owned(),
            reason: source_chain(&e),
        })?;
    } else if !tls.is_empty() {
        return Err(ClientError::TlsFilesWithoutHttps {
            addr: addr.to_owned(),
        });
    }
    tune(endpoint.tcp_nodelay(true))
        .connect()
        .await
        .map_err(|e| match crate::tls::explain_client_failure(&e) {
            Some(cause) => ClientError::Handshake {
                addr: addr.to_owned(),
                cause,
            },
            None => ClientError::Unreachable {
                addr: addr.to_owned(),
                reason: source_chain(&e),
            },
        })
}

/// Why the daemon at an `https://` `addr` closed a call's connection (`status`, a
/// transport failure): with TLS 1.3 the daemon refuses a client certificate (or its
/// absence) after the client's side of the handshake, and hyper drops the alert that
/// says why. So this makes one handshake of its own with the same files and
/// reads the daemon's first answer: an alert is explained
/// ([`crate::tls::explain_client_failure`]). `None` for other failures.
pub async fn explain_refusal(addr: &str, tls: &ClientTlsFiles, status: &Status) -> Option<String> {
    // A closed connection reaches the call as CANCELLED, sometimes without a source.
    let transport_failure = matches!(
        status.code(),
        tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::Unavailable
    );
    if !transport_failure {
        return None;
    }
    if addr.starts_with("http://") {
        return probe_plaintext(addr).await;
    }
    if !addr.starts_with("https://") {
        return None;
    }
    let config = crate::tls::client_probe_config(tls).ok()?;
    let refusal = probe_handshake(addr, config).await?;
    crate::tls::explain_client_failure(&refusal)
}

/// One TLS handshake of its own with the server at the `https://` `addr`, and a read
/// of the server's first answer: the error that ended it (a handshake failure, or an
/// alert the server sent after the handshake, as a TLS 1.3 server does when it refuses
/// the client's certificate or its absence). `None` when the server answered with
/// data, could not be reached, or kept silent for two seconds. Shared by the CLI's
/// [`explain_refusal`] and a cluster node's first contact with etcd.
pub async fn probe_handshake(
    addr: &str,
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> Option<std::io::Error> {
    use tokio::io::AsyncReadExt;
    let (host, port) = host_and_port(addr)?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone()).ok()?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut stream = match connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(error) => return Some(error),
        };
        // Nothing is written: a write to a connection the server closed draws a
        // reset, which discards the alert unread. On success the server's HTTP/2
        // SETTINGS arrive; on refusal, its alert.
        let mut answer = [0u8; 64];
        stream.read(&mut answer).await.err()
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
}

/// A call's status with its transport cause explained: with TLS 1.3 a daemon refuses
/// a client certificate (or its absence) only after the client's side of the
/// handshake is done, so the refusal reaches the first call, not `connect_with`. The
/// status is rebuilt with its message naming the cause (each once); `None` when the
/// status carries no transport cause.
pub fn explain_status(status: &Status) -> Option<Status> {
    let source = std::error::Error::source(status)?;
    let message = match crate::tls::explain_client_failure(source) {
        Some(cause) => cause,
        None => source_chain(source),
    };
    Some(Status::new(status.code(), message))
}

/// Where a call that `addr` answered with `status` should go instead: the leader a
/// standby names in the `seatbroker-leader` metadata of an UNAVAILABLE answer, as a
/// URL with `addr`'s scheme (the leader is reached with the same TLS files, and its
/// certificate must name the host it advertises). `None` for any other answer, for a
/// value that is not `host:port`, and for a leader at `addr` itself.
pub fn leader_redirect(status: &Status, addr: &str) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let named = status
        .metadata()
        .get(crate::proto::LEADER_METADATA)?
        .to_str()
        .ok()?;
    let authority: tonic::codegen::http::uri::Authority = named.trim().parse().ok()?;
    // `host:port` and nothing else: no user part, a port.
    if authority.as_str().contains('@') || authority.port_u16().is_none() {
        return None;
    }
    let scheme = if addr.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let leader = format!("{scheme}://{authority}");
    let same = host_and_port(&leader)
        .zip(host_and_port(addr))
        .is_some_and(|(leader, addr)| leader.0.eq_ignore_ascii_case(&addr.0) && leader.1 == addr.1);
    (!same).then_some(leader)
}

/// Runs `attempt` against `addr`, and again against the leader each time a standby
/// answers naming it ([`leader_redirect`]), at most `limits::LEADER_REDIRECTS_MAX`
/// times; returns the last outcome. `status_of` finds the call's status in an
/// attempt's error (`None`: a failure that is no call's answer, never followed).
/// `attempt` is given the address to use; it connects and calls.
pub async fn at_leader<T, E, Attempt>(
    addr: &str,
    mut attempt: impl FnMut(String) -> Attempt,
    status_of: impl Fn(&E) -> Option<&Status>,
) -> Result<T, E>
where
    Attempt: std::future::Future<Output = Result<T, E>>,
{
    let mut target = addr.to_owned();
    let mut redirects = 0;
    loop {
        let outcome = attempt(target.clone()).await;
        let Err(error) = &outcome else {
            return outcome;
        };
        let leader = status_of(error).and_then(|status| leader_redirect(status, &target));
        match leader {
            Some(leader) if redirects < crate::limits::LEADER_REDIRECTS_MAX => {
                tracing::debug!(standby = %target, %leader, "following a standby to the leader");
                target = leader;
                redirects += 1;
            }
            _ => return outcome,
        }
    }
}

pub fn admin(channel: Channel, key: BearerKey) -> AdminServiceClient<Authorized> {
    AdminServiceClient::with_interceptor(channel, key)
}

pub fn session(channel: Channel, key: BearerKey) -> SessionServiceClient<Authorized> {
    SessionServiceClient::with_interceptor(channel, key)
}

/// The host (without IPv6 brackets) and port of a daemon's address; the scheme's port
/// when none is given.
fn host_and_port(addr: &str) -> Option<(String, u16)> {
    let uri: tonic::codegen::http::Uri = addr.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    Some((host.to_owned(), uri.port_u16().unwrap_or(default_port)))
}

/// Whether a daemon reached over `http://` speaks TLS: a plaintext call to it fails with
/// whatever the connection's end looked like (a frame of absurd size, a broken pipe, a
/// reset). Five bytes that are no TLS record draw a TLS daemon's alert (a record of
/// type 21) without leaving unread bytes that would turn its close into a reset.
async fn probe_plaintext(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port) = host_and_port(addr)?;
    let probe = async {
        let mut tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        tcp.write_all(b"PRI *").await.ok()?;
        let mut answer = [0u8; 2];
        tcp.read_exact(&mut answer).await.ok()?;
        // A TLS alert record: content type 21, protocol version 3.x.
        (answer == [0x15, 0x03]).then(|| {
            "the daemon speaks TLS: use an https:// address and --tls-ca (the CA that signed \
             its certificate)"
                .to_owned()
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
}

/// The canonical upper-case name of a gRPC status code, as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby_answer(leader: &str) -> Status {
        let mut status = Status::unavailable("a standby");
        status
            .metadata_mut()
            .insert(crate::proto::LEADER_METADATA, leader.parse().unwrap());
        status
    }

    #[test]
    fn a_standby_answer_names_the_leader_with_the_callers_scheme() {
        let named = standby_answer("10.0.0.2:50051");
        assert_eq!(
            leader_redirect(&named, "http://10.0.0.1:50051").as_deref(),
            Some("http://10.0.0.2:50051")
        );
        assert_eq!(
            leader_redirect(&named, "https://b.example:443").as_deref(),
            Some("https://10.0.0.2:50051")
        );
    }

    #[test]
    fn only_unavailable_with_a_plain_other_address_is_followed() {
        let other_code = Status::with_metadata(
            Code::PermissionDenied,
            "no",
            standby_answer("10.0.0.2:50051").metadata().clone(),
        );
        assert_eq!(leader_redirect(&other_code, "http://a:1"), None);
        assert_eq!(
            leader_redirect(&Status::unavailable("x"), "http://a:1"),
            None
        );
        for bad in ["no-port", "u@h:1", "h:1/path", "http://h:1", ""] {
            assert_eq!(
                leader_redirect(&standby_answer(bad), "http://a:1"),
                None,
                "{bad:?}"
            );
        }
        // A node naming itself is not followed.
        assert_eq!(
            leader_redirect(&standby_answer("LOCALHOST:7"), "https://localhost:7"),
            None
        );
    }

    #[tokio::test]
    async fn at_leader_follows_a_bounded_chain_of_standbys() {
        use std::cell::RefCell;
        // Two nodes naming each other: followed LEADER_REDIRECTS_MAX times, then the
        // refusal is the answer.
        let calls = RefCell::new(Vec::new());
        let answer: Result<(), Status> = at_leader(
            "http://a:1",
            |addr| {
                calls.borrow_mut().push(addr.clone());
                let other = if addr == "http://a:1" { "b:1" } else { "a:1" };
                async move { Err(standby_answer(other)) }
            },
            |status| Some(status),
        )
        .await;
        assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
        assert_eq!(
            calls.borrow().len(),
            1 + crate::limits::LEADER_REDIRECTS_MAX
        );
        assert_eq!(calls.borrow()[1], "http://b:1");
        // A leader's answer ends the chain.
        let answer = at_leader(
            "http://a:1",
            |addr| async move {
                if addr == "http://a:1" {
                    Err(standby_answer("b:1"))
                } else {
                    Ok::<_, Status>(addr)
                }
            },
            |status| Some(status),
        )
        .await;
        assert_eq!(answer.unwrap(), "http://b:1");
    }
}
