//! Test certificates made with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost (or the names given), and a client certificate, all signed by the CA,
//! written as PEM files; more certificates of that CA on demand (expired, for
//! another purpose) for the TLS diagnostics.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use seatbroker::tls::{ClientTlsFiles, ServerTlsFiles};

pub struct TestCerts {
    /// Where the PEM files are, removed when the certificates are dropped.
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn leaf(names: &[&str], usage: ExtendedKeyUsagePurpose) -> (CertificateParams, KeyPair) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("certificate names");
    params.extended_key_usages = vec![usage];
    (params, KeyPair::generate().expect("key pair"))
}

pub fn generate() -> TestCerts {
    generate_for(&["localhost", "127.0.0.1"])
}

/// Like [`generate`], with a server certificate naming only `server_names`.
pub fn generate_for(server_names: &[&str]) -> TestCerts {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "seatbroker test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let (server_params, server_key) = leaf(server_names, ExtendedKeyUsagePurpose::ServerAuth);
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let (mut client_params, client_key) =
        leaf(&["engine.test"], ExtendedKeyUsagePurpose::ClientAuth);
    client_params
        .distinguished_name
        .push(DnType::CommonName, "engine.test");
    let client_cert = client_params
        .signed_by(&client_key, &ca)
        .expect("client certificate");

    let dir = tempfile::tempdir().expect("certificate directory");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    TestCerts {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        dir,
        issuer: ca,
    }
}

/// How a further certificate of the test CA differs from the usual ones.
pub enum Flaw {
    /// Valid in 2001 only.
    Expired,
    /// Its extended key usage is the other side's.
    WrongPurpose,
}

impl TestCerts {
    /// A further certificate and key signed by the CA, written as `<name>.pem` and
    /// `<name>.key`: a client certificate, or a server one for `localhost` and
    /// 127.0.0.1 when `server`, with `flaw`.
    pub fn flawed(&self, name: &str, server: bool, flaw: Flaw) -> (PathBuf, PathBuf) {
        let (names, purpose, other) = if server {
            (
                vec!["localhost", "127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        } else {
            (
                vec!["engine.test"],
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            )
        };
        let (mut params, key) = leaf(&names, purpose);
        match flaw {
            Flaw::Expired => {
                params.not_before = rcgen::date_time_ymd(2001, 1, 1);
                params.not_after = rcgen::date_time_ymd(2001, 12, 31);
            }
            Flaw::WrongPurpose => params.extended_key_usages = vec![other],
        }
        let certificate = params.signed_by(&key, &self.issuer).expect("certificate");
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key_path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, certificate.pem()).expect("write PEM");
        std::fs::write(&key_path, key.serialize_pem()).expect("write PEM");
        (cert, key_path)
    }
}

impl TestCerts {
    /// The client files with a further client certificate of the CA whose subject is
    /// `CN=<common_name>` (written as `<common_name>.pem` and `.key`).
    pub fn another_client(&self, common_name: &str) -> ClientTlsFiles {
        let (mut params, key) = leaf(&[common_name], ExtendedKeyUsagePurpose::ClientAuth);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let certificate = params.signed_by(&key, &self.issuer).expect("certificate");
        let cert = self.dir.path().join(format!("{common_name}.pem"));
        let key_path = self.dir.path().join(format!("{common_name}.key"));
        std::fs::write(&cert, certificate.pem()).expect("write PEM");
        std::fs::write(&key_path, key.serialize_pem()).expect("write PEM");
        ClientTlsFiles {
            ca: Some(self.ca.clone()),
            cert: Some(cert),
            key: Some(key_path),
        }
    }

    pub fn server(&self, require_client_certificates: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: require_client_certificates.then(|| self.ca.clone()),
        }
    }

    /// The client's files: the CA, and the client certificate when `with_certificate`.
    pub fn client(&self, with_certificate: bool) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: Some(self.ca.clone()),
            cert: with_certificate.then(|| self.client_cert.clone()),
            key: with_certificate.then(|| self.client_key.clone()),
        }
    }
}
