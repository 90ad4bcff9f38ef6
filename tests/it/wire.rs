//! The wire, secured and discoverable: TLS and mTLS with rcgen certificates, health
//! per service (and NOT_SERVING while draining), reflection in v1 and v1alpha.

use crate::harness::*;
use std::time::Duration;

use seatbroker::client::{self, Authorized};
use seatbroker::config::Config;
use seatbroker::proto;
use seatbroker::proto::admin_service_client::AdminServiceClient;
use seatbroker::tls::ClientTlsFiles;
use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVICES: [&str; 3] = [
    "",
    "seatbroker.v1.SessionService",
    "seatbroker.v1.AdminService",
];
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// True when a client with `tls` cannot complete a call to `url`.
async fn refused(url: &str, tls: &ClientTlsFiles) -> bool {
    let Ok(channel) = client::connect_with(url, tls).await else {
        return true;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_err()
}

#[tokio::test]
async fn tls_serves_the_api_and_refuses_plaintext_and_strangers() {
    let certs = certs::generate();
    let server = start_tls(&certs, false).await;
    let org = server.licensed_organization("acme", 1, 1, &["a"]).await;
    server
        .session(org.key(0))
        .await
        .acquire(acquire_request(KRE, "engine-1"))
        .await
        .expect("acquire over TLS");

    let plaintext = format!("http://{}", server.addr);
    assert!(refused(&plaintext, &ClientTlsFiles::default()).await);
    let other_ca = certs::generate();
    assert!(refused(&server.url(), &other_ca.client(false)).await);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let certs = certs::generate();
    let server = start_tls(&certs, true).await;
    server.organization("acme", 1, 1, &[]).await;

    assert!(refused(&server.url(), &certs.client(false)).await);
    let stranger = certs::generate();
    let foreign_certificate = ClientTlsFiles {
        ca: Some(certs.ca.clone()),
        cert: Some(stranger.client_cert.clone()),
        key: Some(stranger.client_key.clone()),
    };
    assert!(refused(&server.url(), &foreign_certificate).await);
}

#[tokio::test]
async fn health_reports_each_service_and_not_serving_while_draining() {
    let server = start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in SERVICES {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(answer.into_inner().status, SERVING, "{service:?}");
    }
    assert_status(
        health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await,
        tonic::Code::NotFound,
        "",
    );

    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, SERVING);
    let stopping = tokio::spawn(server.stop());
    assert_eq!(watch.next().await.unwrap().unwrap().status, NOT_SERVING);
    // The watch is the call in flight: the server stops once it ends.
    drop(watch);
    stopping.await.unwrap();
}

/// The services that reflection lists on `channel`, asked through version `$version`
/// of the reflection API (`v1` and `v1alpha` have the same messages in two packages).
macro_rules! reflected_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match answers.next().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => list
                .service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let server = start().await;
    for services in [
        reflected_services!(v1, server.channel().await),
        reflected_services!(v1alpha, server.channel().await),
    ] {
        for expected in [
            "seatbroker.v1.SessionService",
            "seatbroker.v1.AdminService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
    // Reflection answers while broker calls still work on the same server.
    organizations(&server.operator().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_wait_until_one_closes() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = Config::resolve(test_settings(data_dir.path())).unwrap();
    config.lower_connections_max(2);
    let server = start_with_config(data_dir, Default::default(), config).await;
    let list = |mut client: AdminServiceClient<Authorized>| async move {
        client
            .list_organizations(proto::ListOrganizationsRequest::default())
            .await
            .map(|answer| answer.into_inner().organizations.len())
    };
    // Two connections, each answered and kept open.
    let first = server.operator().await;
    let second = server.operator().await;
    assert!(list(first.clone()).await.is_ok());
    assert!(list(second.clone()).await.is_ok());
    // A third waits in the listen backlog: no answer while the two stay open.
    let third = tokio::time::timeout(Duration::from_millis(500), async {
        list(server.operator().await).await
    })
    .await;
    assert!(
        third.is_err(),
        "a third connection was served while two were open: {third:?}"
    );
    // Closing one lets the next connection in.
    drop(first);
    let fourth = tokio::time::timeout(Duration::from_secs(20), async {
        list(server.operator().await).await
    })
    .await
    .expect("a connection is served once another one closed");
    assert!(fourth.is_ok(), "{fourth:?}");
    drop(second);
}
