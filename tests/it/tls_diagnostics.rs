//! TLS failures a person can fix: the CLI and `client::connect_with` name the cause
//! (no client certificate, unknown CA, expired certificate, a name the certificate
//! lacks, plaintext against TLS and back) and what to do, as a configuration failure
//! (exit 78); the daemon logs each refused handshake with the peer and the reason; and
//! `--check-config` refuses an expired certificate and warns about one that does not
//! name the listen host.

use std::time::Duration;

use crate::harness::certs::{self, Flaw};
use crate::harness::daemon::{self, Finished};
use crate::harness::*;
use seatbroker::client::{self, ClientError};
use seatbroker::tls::ClientTlsFiles;

/// `seatbroker org list --addr ADDR` with the TLS flags `tls`.
/// The CLI's flags for `tls`'s files, added to `args`.
fn add_tls_flags(args: &mut Vec<String>, tls: &ClientTlsFiles) {
    for (flag, path) in [
        ("--tls-ca", &tls.ca),
        ("--tls-cert", &tls.cert),
        ("--tls-key", &tls.key),
    ] {
        if let Some(path) = path {
            args.extend([flag.to_owned(), path.display().to_string()]);
        }
    }
}

fn org_list(addr: &str, tls: &ClientTlsFiles) -> Finished {
    let mut args = vec![
        "org".to_owned(),
        "list".to_owned(),
        "--addr".to_owned(),
        addr.to_owned(),
    ];
    add_tls_flags(&mut args, tls);
    args.extend(["--key".to_owned(), OPERATOR_KEY.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon::run(&args, &[])
}

fn assert_refused(finished: &Finished, code: i32, needle: &str) {
    assert_eq!(finished.code, code, "{}", finished.stderr);
    assert!(
        finished.stderr.contains(needle),
        "wanted {needle:?} in: {}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("transport error: transport error"),
        "{}",
        finished.stderr
    );
}

/// The first log line of a refused handshake with this reason, waiting past the
/// once-a-second rate limit.
fn refusal_logged(daemon: &Daemon, reason: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = daemon.log_lines().iter().find_map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).ok()?;
            let fields = &json["fields"];
            (fields["message"]
                .as_str()?
                .starts_with("refused a TLS handshake")
                && fields["reason"].as_str()?.contains(reason))
            .then(|| fields.clone())
        });
        if let Some(fields) = found {
            return fields;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal {reason:?}: {}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_client_tls_failure_names_its_cause_and_the_daemon_logs_the_refusal() {
    // The daemon's certificate names only localhost; it requires client certificates.
    let certs = certs::generate_for(&["localhost"]);
    let daemon = Serve::new()
        .tls(&certs)
        .args(["--tls-client-ca", certs.ca.to_str().unwrap()])
        .spawn();
    let port = daemon.addr().port();
    let by_name = format!("https://localhost:{port}");

    let no_certificate = org_list(&by_name, &certs.client(false));
    assert_refused(&no_certificate, 78, "requires a client certificate");
    let refusal = refusal_logged(&daemon, "no client certificate");
    assert!(
        refusal["remote"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{refusal}"
    );

    let stranger = certs::generate();
    let unknown_ca = org_list(&by_name, &stranger.client(true));
    assert_refused(&unknown_ca, 78, "not signed by the CA in --tls-ca");

    let (expired_cert, expired_key) = certs.flawed("expired", false, Flaw::Expired);
    let expired = ClientTlsFiles {
        cert: Some(expired_cert),
        key: Some(expired_key),
        ..certs.client(false)
    };
    std::thread::sleep(Duration::from_millis(1100));
    assert_refused(&org_list(&by_name, &expired), 78, "expired");
    refusal_logged(&daemon, "expired client certificate");

    let (server_purpose_cert, server_purpose_key) =
        certs.flawed("server-purpose", false, Flaw::WrongPurpose);
    let wrong_purpose = ClientTlsFiles {
        cert: Some(server_purpose_cert),
        key: Some(server_purpose_key),
        ..certs.client(false)
    };
    assert_refused(
        &org_list(&by_name, &wrong_purpose),
        78,
        "not meant for client authentication",
    );

    let by_address = format!("https://127.0.0.1:{port}");
    assert_refused(
        &org_list(&by_address, &certs.client(true)),
        78,
        "does not name 127.0.0.1: it names localhost",
    );

    let plaintext = format!("http://127.0.0.1:{port}");
    assert_refused(
        &org_list(&plaintext, &ClientTlsFiles::default()),
        78,
        "the daemon speaks TLS: use an https:// address and --tls-ca",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let probe = std::net::TcpStream::connect(daemon.addr()).unwrap();
    {
        use std::io::Write;
        (&probe)
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
    }
    refusal_logged(&daemon, "plaintext client");

    // With everything right, the call goes through.
    let fine = org_list(&by_name, &certs.client(true));
    assert_eq!(fine.code, 0, "{}", fine.stderr);

    // `status` names the same causes, per address, and says which address serves.
    let status = |addr: &str, tls: &ClientTlsFiles| {
        let mut args = vec![
            "--json".to_owned(),
            "status".to_owned(),
            "--addr".to_owned(),
            addr.to_owned(),
        ];
        add_tls_flags(&mut args, tls);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let finished = daemon::run(&args, &[]);
        let answer: serde_json::Value = serde_json::from_str(&finished.stdout)
            .unwrap_or_else(|_| panic!("JSON: {}", finished.stderr));
        (finished.code, answer)
    };
    let (code, answer) = status(&by_name, &certs.client(false));
    assert_eq!(code, 75, "{answer}");
    assert_eq!(answer["nodes"][0]["role"], "refused", "{answer}");
    let error = answer["nodes"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("requires a client certificate"), "{answer}");
    let (code, answer) = status(&plaintext, &ClientTlsFiles::default());
    assert_eq!(code, 75, "{answer}");
    let error = answer["nodes"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the daemon speaks TLS"), "{answer}");
    let (code, answer) = status(&by_name, &certs.client(true));
    assert_eq!(code, 0, "{answer}");
    assert_eq!(answer["nodes"][0]["role"], "serving", "{answer}");
}

#[tokio::test]
async fn connect_with_explains_a_tls_client_against_a_plaintext_daemon_and_an_unknown_ca() {
    let plaintext = start().await;
    let certs = certs::generate();
    let tls_to_plaintext = format!("https://localhost:{}", plaintext.addr.port());
    match client::connect_with(&tls_to_plaintext, &certs.client(false)).await {
        Err(ClientError::Handshake { cause, .. }) => {
            assert!(cause.contains("does not speak TLS"), "{cause}")
        }
        other => panic!("not a handshake failure: {other:?}"),
    }

    let tls = start_tls(&certs, false).await;
    let stranger = certs::generate();
    match client::connect_with(&tls.url(), &stranger.client(false)).await {
        Err(error @ ClientError::Handshake { .. }) => {
            let text = error.to_string();
            assert!(text.contains("not signed by the CA in --tls-ca"), "{text}");
        }
        other => panic!("not a handshake failure: {other:?}"),
    }
}

#[test]
fn check_config_refuses_an_expired_certificate_and_warns_of_a_missing_host() {
    let certs = certs::generate_for(&["localhost"]);
    let check = |cert: &std::path::Path, key: &std::path::Path, listen: &str| {
        daemon::run(
            &[
                "serve",
                "--check-config",
                "--listen",
                listen,
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            &[],
        )
    };
    let lacking_host = check(&certs.server_cert, &certs.server_key, "127.0.0.1:50051");
    assert_eq!(lacking_host.code, 0, "{}", lacking_host.stderr);
    assert!(
        lacking_host
            .stderr
            .contains("does not name the listen host 127.0.0.1 (it names localhost)"),
        "{}",
        lacking_host.stderr
    );
    let unspecified = check(&certs.server_cert, &certs.server_key, "0.0.0.0:50051");
    assert_eq!(unspecified.code, 0, "{}", unspecified.stderr);
    assert!(
        !unspecified.stderr.contains("warning"),
        "{}",
        unspecified.stderr
    );

    let (expired_cert, expired_key) = certs.flawed("expired-server", true, Flaw::Expired);
    let expired = check(&expired_cert, &expired_key, "127.0.0.1:50051");
    assert_eq!(expired.code, 64, "{}", expired.stderr);
    assert!(
        expired.stderr.contains("the certificate expired on"),
        "{}",
        expired.stderr
    );

    // A client CA file must hold a CA, not a leaf certificate.
    let leaf_as_ca = daemon::run(
        &[
            "serve",
            "--check-config",
            "--tls-cert",
            certs.server_cert.to_str().unwrap(),
            "--tls-key",
            certs.server_key.to_str().unwrap(),
            "--tls-client-ca",
            certs.client_cert.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(leaf_as_ca.code, 64, "{}", leaf_as_ca.stderr);
    assert!(
        leaf_as_ca.stderr.contains("is not a CA certificate"),
        "{}",
        leaf_as_ca.stderr
    );
}
