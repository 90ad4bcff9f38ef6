//! TLS from PEM files, for the daemon (certificate and key, and a CA bundle to verify
//! client certificates with for mTLS) and for clients (the CA that signed the daemon's
//! certificate, and a client certificate and key for mTLS). rustls with ring. The
//! daemon's handshakes run in `connections` with [`server_acceptor`]'s configuration
//! (so that a refused one is logged with its reason); clients go through tonic.
//!
//! Also what a person can fix: [`explain_client_failure`] turns a client's failure
//! (rustls's error or alert deep in a transport error) into its cause and what to do,
//! [`refusal_reason`] names why the daemon refused a handshake, and
//! [`inspect_server_files`] checks the certificates for `--check-config`.

use std::error::Error as StdError;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::limits;

/// The daemon's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// A client's TLS files; all optional, but a certificate needs its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA bundle that signed the daemon's certificate.
    pub ca: Option<PathBuf>,
    /// A client certificate and key, for a daemon that requires mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {max} bytes; is it a PEM file?", max = limits::TLS_FILE_BYTES_MAX)]
    TooLarge { path: PathBuf },
    #[error("{0}")]
    Incomplete(&'static str),
    #[error("TLS configuration: {0}")]
    Invalid(String),
}

/// Reads a PEM file whole, refusing anything implausibly large.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut contents = Vec::new();
    file.take(limits::TLS_FILE_BYTES_MAX + 1)
        .read_to_end(&mut contents)
        .map_err(read)?;
    if contents.len() as u64 > limits::TLS_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(contents)
}

/// The certificates of a PEM file, in order.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Invalid(format!("{}: {error}", path.display())))?;
    if certificates.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// The daemon's TLS configuration (HTTP/2 by ALPN; with a client CA, a client
/// certificate signed by it is required). Built once at load, so that bad
/// certificates or keys are reported before the daemon binds anything.
pub fn server_acceptor(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let invalid = |error: &dyn StdError| TlsError::Invalid(source_chain(error));
    let certificates = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&files.key)?)
        .map_err(|error| TlsError::Invalid(format!("{}: {error}", files.key.display())))?;
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(ca)? {
                roots.add(certificate).map_err(|e| invalid(&e))?;
            }
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| invalid(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(Arc::new(config))
}

/// A client's TLS configuration, for an `https://` address.
pub fn client_config(files: &ClientTlsFiles) -> Result<ClientTlsConfig, TlsError> {
    let ca = files.ca.as_ref().ok_or(TlsError::Incomplete(
        "an https:// address needs --tls-ca: the CA certificate that signed the daemon's certificate",
    ))?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?));
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(TlsError::Incomplete(
                "--tls-cert and --tls-key go together (a client certificate and its key)",
            ));
        }
    }
    Ok(config)
}

/// A rustls client configuration from the client's files, for the handshake of
/// `client::explain_refusal` (tonic builds its own for the calls).
pub fn client_probe_config(files: &ClientTlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let invalid = |error: &dyn StdError| TlsError::Invalid(source_chain(error));
    let ca = files
        .ca
        .as_ref()
        .ok_or(TlsError::Incomplete("no --tls-ca"))?;
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca)? {
        roots.add(certificate).map_err(|e| invalid(&e))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_slice(&read_pem(key)?).map_err(|e| invalid(&e))?;
            builder
                .with_client_auth_cert(read_certificates(cert)?, key)
                .map_err(|e| invalid(&e))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(Arc::new(config))
}

/// An error with its sources, which is where rustls says what is wrong; each cause
/// once (tonic and hyper wrap errors whose text repeats their source's).
pub fn source_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The errors of a chain, an `io::Error`'s inner error included (its `source` skips
/// it: rustls's error travels inside one).
fn causes<'a>(error: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut causes = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        causes.push(cause);
        next = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => cause.source(),
        };
    }
    causes
}

/// The rustls error somewhere in `error`'s chain.
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    causes(error)
        .into_iter()
        .find_map(|cause| cause.downcast_ref::<rustls::Error>())
}

/// The TLS failure in `error`'s chain, in rustls's words (an alert the peer sent
/// included), for a client of another server (etcd) whose messages name their own
/// settings; `None` when the chain shows none.
pub fn tls_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(tls) = rustls_error(error) {
        return Some(tls.to_string());
    }
    let chain = source_chain(error);
    chain.contains("received fatal alert").then_some(chain)
}

/// What a client's failure to talk to the daemon means and what to do about it, when
/// its chain shows a TLS failure or a TLS/plaintext mismatch; `None` otherwise.
pub fn explain_client_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(tls) = rustls_error(error) {
        return Some(explain_rustls_client_error(tls));
    }
    let chain = source_chain(error);
    // hyper's connection errors carry the alert only as text.
    for alert in [
        AlertDescription::CertificateRequired,
        AlertDescription::HandshakeFailure,
        AlertDescription::UnknownCA,
        AlertDescription::DecryptError,
        AlertDescription::CertificateExpired,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::BadCertificate,
    ] {
        if chain.contains(&format!("received fatal alert: {alert:?}")) {
            return Some(explain_rustls_client_error(&rustls::Error::AlertReceived(
                alert,
            )));
        }
    }
    // A plaintext client's HTTP/2 preface makes a TLS daemon answer with a TLS alert
    // (or close), which HTTP/2 reads as a frame of absurd size.
    if chain.contains("frame with invalid size") || chain.contains("FRAME_SIZE_ERROR") {
        return Some(format!(
            "the daemon's answer is not HTTP/2 ({chain}): the daemon speaks TLS: use an \
             https:// address and --tls-ca (the CA that signed its certificate)"
        ));
    }
    None
}

fn explain_rustls_client_error(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::AlertReceived(AlertDescription::CertificateRequired)
        | E::AlertReceived(AlertDescription::HandshakeFailure) => {
            "the daemon requires a client certificate (mTLS) and none was given: pass \
             --tls-cert and --tls-key (a certificate signed by the daemon's client CA)"
                .to_owned()
        }
        E::AlertReceived(AlertDescription::UnknownCA | AlertDescription::DecryptError) => {
            "the daemon does not trust the client certificate: it is not signed by the \
             daemon's client CA (tls.client_ca); use a certificate that CA signed"
                .to_owned()
        }
        E::AlertReceived(AlertDescription::CertificateExpired) => {
            "the daemon refused the client certificate: it has expired, or is not valid yet; \
             renew it (and check the clocks)"
                .to_owned()
        }
        E::AlertReceived(AlertDescription::UnsupportedCertificate) => {
            "the daemon refused the client certificate: it is not meant for client \
             authentication (its extended key usage lacks clientAuth)"
                .to_owned()
        }
        E::AlertReceived(AlertDescription::BadCertificate) => {
            "the daemon refused the client certificate as bad (not one it can verify); check \
             --tls-cert and --tls-key"
                .to_owned()
        }
        E::AlertReceived(alert) => {
            format!("the daemon refused the TLS handshake (alert {alert:?})")
        }
        E::InvalidCertificate(certificate) => explain_server_certificate(certificate),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the daemon does not speak TLS (its answer is not a TLS record): use an http:// \
             address without --tls-ca, --tls-cert, --tls-key, or enable TLS on the daemon"
                .to_owned()
        }
        E::PeerIncompatible(incompatible) => format!(
            "the daemon and this client have no TLS version or algorithm in common ({incompatible:?})"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Why the client refused the daemon's certificate.
fn explain_server_certificate(error: &CertificateError) -> String {
    use CertificateError as C;
    match error {
        // A CA of the same name but another key: not the CA that signed it either.
        C::UnknownIssuer | C::BadSignature => {
            "the daemon's certificate is not signed by the CA in --tls-ca: \
             pass the CA that signed it (or ask its operator which one)"
                .to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => {
            "the daemon's certificate has expired: its operator must renew it (or check this \
             machine's clock)"
                .to_owned()
        }
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "the daemon's certificate is not valid yet: check the clocks, or wait".to_owned()
        }
        C::NotValidForName => "the daemon's certificate does not name the host in the address: \
             connect by a name it holds"
            .to_owned(),
        C::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the daemon's certificate does not name {}: it names {}; connect by one of those \
             names, or have the certificate reissued",
            expected.to_str(),
            if presented.is_empty() {
                "nothing".to_owned()
            } else {
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "the daemon's certificate is not meant for a TLS server (its extended key usage \
             lacks serverAuth)"
                .to_owned()
        }
        other => format!("the daemon's certificate was refused: {other:?}"),
    }
}

/// `localhost` from rustls's `DnsName("localhost")` (its names come as Debug text).
fn plain_name(presented: &str) -> &str {
    presented
        .split_once('(')
        .and_then(|(_, inner)| inner.strip_suffix(')'))
        .map_or(presented, |inner| inner.trim_matches('"'))
}

/// Why the daemon refused a client's handshake, for its log.
pub fn refusal_reason(error: &std::io::Error) -> String {
    use rustls::Error as E;
    let Some(tls) = rustls_error(error) else {
        return match error.kind() {
            std::io::ErrorKind::TimedOut => "no handshake within the handshake timeout".to_owned(),
            std::io::ErrorKind::UnexpectedEof => "the client closed the connection".to_owned(),
            _ => error.to_string(),
        };
    };
    match tls {
        E::NoCertificatesPresented => "no client certificate".to_owned(),
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "unknown CA: the client certificate is not signed by the client CA".to_owned()
        }
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired client certificate".to_owned(),
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "client certificate not valid yet".to_owned(),
        E::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "client certificate not meant for client authentication".to_owned(),
        E::InvalidCertificate(other) => format!("bad client certificate ({other:?})"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "not a TLS handshake (a plaintext client on the TLS port?)".to_owned()
        }
        E::AlertReceived(alert) => format!("the client aborted the handshake (alert {alert:?})"),
        E::PeerIncompatible(incompatible) => {
            format!("no TLS version or algorithm in common ({incompatible:?})")
        }
        other => other.to_string(),
    }
}

/// The subject of a DER certificate (`CN=engine.test` style), when it parses.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, certificate)| certificate.subject().to_string())
}

/// What `--check-config` finds in the daemon's TLS files beyond what rustls checks:
/// errors make the configuration unusable, warnings are printed.
#[derive(Debug, Default)]
pub struct Inspection {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// A certificate expiring sooner than this is warned about.
const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;

/// Checks the server certificate's validity window at `now_unix` (error when expired
/// or not yet valid, warning when expiring within 30 days), that it names
/// `listen_host` (warning; skipped for an unspecified address), and that the client
/// CA file holds CA certificates (basicConstraints CA:TRUE).
pub fn inspect_server_files(
    files: &ServerTlsFiles,
    listen_host: IpAddr,
    now_unix: i64,
) -> Result<Inspection, TlsError> {
    let mut found = Inspection::default();
    let certificates = read_certificates(&files.cert)?;
    let cert_path = files.cert.display();
    let (_, leaf) = x509_parser::parse_x509_certificate(&certificates[0])
        .map_err(|error| TlsError::Invalid(format!("{cert_path}: {error}")))?;
    let validity = leaf.validity();
    let (not_before, not_after) = (validity.not_before, validity.not_after);
    if now_unix > not_after.timestamp() {
        found.errors.push(format!(
            "{cert_path}: the certificate expired on {not_after}; renew it"
        ));
    } else if now_unix < not_before.timestamp() {
        found.errors.push(format!(
            "{cert_path}: the certificate is not valid before {not_before}"
        ));
    } else if not_after.timestamp() - now_unix < EXPIRY_WARNING_SECS {
        found.warnings.push(format!(
            "{cert_path}: the certificate expires on {not_after} (within 30 days)"
        ));
    }
    if !listen_host.is_unspecified() {
        let names = certificate_names(&leaf);
        let host = listen_host.to_string();
        if !names.contains(&host) {
            found.warnings.push(format!(
                "{cert_path}: the certificate does not name the listen host {host} (it names {}); \
                 clients connecting by that address will refuse it",
                if names.is_empty() {
                    "nothing".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    if let Some(ca) = &files.client_ca {
        for (index, der) in read_certificates(ca)?.iter().enumerate() {
            let (_, certificate) = x509_parser::parse_x509_certificate(der)
                .map_err(|error| TlsError::Invalid(format!("{}: {error}", ca.display())))?;
            if !certificate.is_ca() {
                found.errors.push(format!(
                    "{}: certificate {} ({}) is not a CA certificate (no basicConstraints \
                     CA:TRUE): tls.client_ca takes the CA that signs the client certificates",
                    ca.display(),
                    index + 1,
                    certificate.subject()
                ));
            }
        }
    }
    Ok(found)
}

/// The DNS names and IP addresses a certificate's subjectAltName holds.
fn certificate_names(certificate: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}
