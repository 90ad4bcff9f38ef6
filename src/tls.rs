//! TLS from PEM files, for the daemon (certificate and key, and a CA bundle to verify
//! client certificates with for mTLS) and for clients (the CA that signed the daemon's
//! certificate, and a client certificate and key for mTLS). rustls with ring, through
//! tonic's `tls-ring` feature.

use std::io::Read;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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

/// The daemon's TLS configuration. [`check_server`] also proves that rustls accepts it.
pub fn server_config(files: &ServerTlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let identity = Identity::from_pem(read_pem(&files.cert)?, read_pem(&files.key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem(ca)?));
    }
    Ok(config)
}

/// Builds the server's TLS acceptor once, to report bad certificates or keys before
/// the daemon binds anything.
pub fn check_server(files: &ServerTlsFiles) -> Result<(), TlsError> {
    tonic::transport::Server::builder()
        .tls_config(server_config(files)?)
        .map(drop)
        .map_err(|error| TlsError::Invalid(source_chain(&error)))
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

/// An error with its sources, which is where rustls says what is wrong.
pub fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
