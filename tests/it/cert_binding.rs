//! The mTLS identity beyond the handshake: every audit event of a call names the
//! client certificate's subject, and an API key bound to a subject
//! (`key create --client-cert-subject`) works only over a connection presenting a
//! certificate with that subject: another certificate, plaintext, or TLS without a
//! client certificate are refused with PERMISSION_DENIED, which never names the
//! bound subject. The binding is in the log and in snapshots, so it survives restarts.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::certs::{self, TestCerts};
use crate::harness::daemon;
use crate::harness::*;
use seatbroker::client;
use seatbroker::proto;
use seatbroker::tls::ClientTlsFiles;
use tonic::Code;

const ORG: &str = "bind";
const ENGINE: &str = "engine@bind.test";

/// `seatbroker --json key create bind --email engine@bind.test --client-cert-subject
/// SUBJECT` over mTLS; the key's secret.
fn create_bound_key_with_the_cli(daemon: &Daemon, certs: &TestCerts, subject: &str) -> String {
    let tls = certs.client(true);
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().unwrap().display().to_string();
    let (ca, cert, key) = (path(&tls.ca), path(&tls.cert), path(&tls.key));
    let addr = daemon.url();
    let finished = daemon::run(
        &[
            "--json",
            "key",
            "create",
            ORG,
            "--email",
            ENGINE,
            "--label",
            "bound",
            "--client-cert-subject",
            subject,
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--key",
            OPERATOR_KEY,
        ],
        &[],
    );
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let answer: serde_json::Value = serde_json::from_str(&finished.stdout).unwrap();
    assert_eq!(answer["key"]["client_cert_subject"], subject, "{answer}");
    answer["secret"].as_str().unwrap().to_owned()
}

/// An acquire and release with `key` over a connection presenting `tls`.
async fn lease_with(url: &str, tls: &ClientTlsFiles, key: &str) -> Result<(), tonic::Status> {
    let channel = client::connect_with(url, tls).await.expect("connect");
    let bearer = client::BearerKey::new(Some(key)).unwrap();
    let mut session = client::session(channel, bearer);
    let lease = session
        .acquire(acquire_request(KRE, "engine-1"))
        .await?
        .into_inner()
        .lease
        .expect("a granted lease");
    session
        .release(proto::ReleaseRequest {
            lease_id: lease.lease_id,
            generation: lease.generation,
        })
        .await?;
    Ok(())
}

fn assert_denied(answer: Result<(), tonic::Status>, needle: &str, bound: &str) {
    let status = answer.expect_err("a bound key over the wrong connection is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(needle), "{status:?}");
    assert!(
        !status.message().contains(bound),
        "the bound subject leaked: {status:?}"
    );
}

/// `bound` (bound to `subject`, the usual client certificate's) works with that
/// certificate and is refused with `stranger`'s.
async fn works_only_with_its_certificate(
    url: &str,
    certs: &TestCerts,
    stranger: &ClientTlsFiles,
    bound: &str,
    subject: &str,
) {
    lease_with(url, &certs.client(true), bound).await.unwrap();
    assert_denied(
        lease_with(url, stranger, bound).await,
        "has another subject",
        subject,
    );
}

async fn wait_for_a_snapshot(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snapshots = std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".snap")
            })
            .count();
        if snapshots > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no snapshot was taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_key_bound_to_a_client_certificate_works_only_with_it_across_restarts() {
    let certs = certs::generate();
    let stranger = certs.another_client("stranger.test");
    let dir = tempfile::tempdir().unwrap();
    let mtls = || Serve::new().data_dir(dir.path()).mtls(&certs);

    let daemon = mtls().start().await;
    let org = daemon.licensed_organization(ORG, 0, 4, &["engine"]).await;
    // The subject as the daemon writes it, from the audit event of the organization's
    // creation (the operator's call over mTLS).
    let mut operator = daemon.operator().await;
    let events = audit_record(&operator, ORG, 100).await;
    let created = events
        .iter()
        .find(|event| event.kind == "organization_created")
        .expect("the creation is audited");
    let subject = created.client_cert.clone();
    assert!(subject.contains("CN=engine.test"), "{created:?}");

    let bound = create_bound_key_with_the_cli(&daemon, &certs, &subject);
    let bound_elsewhere = operator
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: ORG.into(),
            email: ENGINE.into(),
            label: "elsewhere".into(),
            client_cert_subject: Some("CN=stranger.test".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let url = daemon.url();
    works_only_with_its_certificate(&url, &certs, &stranger, &bound, &subject).await;
    assert_denied(
        lease_with(&url, &certs.client(true), &bound_elsewhere).await,
        "has another subject",
        "stranger",
    );
    lease_with(&url, &stranger, &bound_elsewhere).await.unwrap();
    // An unbound key works with any certificate the CA signed.
    lease_with(&url, &stranger, org.key(0)).await.unwrap();

    // Every event of a call names its certificate: the key's creation, the grants.
    let events = audit_record(&operator, ORG, 100).await;
    let of_kind = |kind: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|event| event.kind == kind)
            .map(|event| event.client_cert.as_str())
            .collect()
    };
    assert_eq!(of_kind("api_key_created").len(), 4, "{events:?}");
    assert!(
        of_kind("api_key_created").iter().all(|c| *c == subject),
        "{events:?}"
    );
    let granted = of_kind("lease_granted");
    assert_eq!(granted.len(), 3, "{events:?}");
    assert_eq!(granted.iter().filter(|c| **c == subject).count(), 1);
    assert_eq!(
        granted
            .iter()
            .filter(|c| c.contains("CN=stranger.test"))
            .count(),
        2
    );
    let creation_of_bound = events
        .iter()
        .find(|event| event.detail.contains("label=\"bound\""))
        .unwrap();
    assert!(
        creation_of_bound
            .detail
            .contains(&format!("bound_to_client_cert={subject:?}")),
        "{creation_of_bound:?}"
    );
    // The binding is listed (the key list's client_cert_subject).
    let keys = api_keys(&operator, ORG).await;
    let listed = keys.iter().find(|key| key.label == "bound").unwrap();
    assert_eq!(listed.client_cert_subject, subject);
    drop(operator);
    daemon.kill();

    // Plaintext, from the log's replay, and taking a snapshot (in `failpoints`
    // builds, whose record trigger makes one due after a few records): refused, as no
    // certificate is presented; unbound keys work.
    let daemon = Serve::new()
        .data_dir(dir.path())
        .env("SEATBROKER_FAILPOINT_SNAPSHOT_RECORDS", "5")
        .start()
        .await;
    let url = daemon.url();
    let plaintext = ClientTlsFiles::default();
    assert_denied(
        lease_with(&url, &plaintext, &bound).await,
        "presented no client certificate",
        &subject,
    );
    for _ in 0..4 {
        lease_with(&url, &plaintext, org.key(0)).await.unwrap();
    }
    if cfg!(feature = "failpoints") {
        wait_for_a_snapshot(dir.path()).await;
    }
    daemon.kill();

    // From the snapshot (or the log again), over mTLS: the binding holds.
    let daemon = mtls().start().await;
    let url = daemon.url();
    works_only_with_its_certificate(&url, &certs, &stranger, &bound, &subject).await;
    daemon.kill();
}

#[tokio::test]
async fn a_binding_that_breaks_a_bound_is_refused_naming_the_field() {
    let server = start().await;
    let org = server.organization("bindbad", 0, 1, &[]).await;
    let mut owner = server.admin(&org.owner_key).await;
    for (subject, needle) in [
        (String::new(), "must not be empty"),
        ("CN=x".repeat(200), "at most 512"),
        ("CN=a\u{200b}b".to_owned(), "client_cert_subject"),
    ] {
        let answer = owner
            .create_api_key(proto::CreateApiKeyRequest {
                org_id: org.id.clone(),
                label: "bad".into(),
                client_cert_subject: Some(subject),
                ..Default::default()
            })
            .await;
        assert_status(answer, Code::InvalidArgument, needle);
    }
    // An Owner may bind the keys of their organization; the key then refuses this
    // plaintext connection.
    let bound = owner
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: org.id.clone(),
            label: "bound".into(),
            client_cert_subject: Some("CN=ci.bindbad.test".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut bound_admin = server.admin(&bound).await;
    let answer = bound_admin
        .get_organization(proto::GetOrganizationRequest {
            org_id: org.id.clone(),
        })
        .await;
    assert_status(
        answer,
        Code::PermissionDenied,
        "presented no client certificate",
    );
}
