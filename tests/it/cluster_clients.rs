//! Clients reach a cluster's leader from any node's address, against real processes
//! (one etcd, three nodes): the CLI pointed at a standby, or given a list whose first
//! address is down, makes its change on the leader; `seatbroker bench` pointed at a
//! standby drives the leader; `seatbroker run` pointed at a standby holds its seat
//! through a kill -9 of the leader, renewing it on the new leader; the engine client
//! given every node's address rides the same failover.
//!
//! And etcd reached over mTLS, and with a user and password: a node serves through
//! each; a wrong CA or password, or a client certificate etcd refuses (signed by
//! another CA, or none), stops its start (exit 64) with a message naming the setting,
//! the password never printed; an expired token is renewed.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use seatbroker::cluster::etcd::{Credentials, Etcd, EtcdAccess};
use seatbroker::engine_client::{ClientOptions, EngineClient};
use seatbroker::proto;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::cluster::{FOLLOW_DEADLINE, leader_named_by, leader_of, node, spawn_node};
use crate::harness::daemon;
use crate::harness::*;

/// `http://` and a port of 127.0.0.1 nobody listens on.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    format!("http://{}", listener.local_addr().expect("its address"))
}

fn path(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// The expiry the daemon lists for `lease_id` of `org`, if it holds the lease.
async fn expiry_on(daemon: &Daemon, org: &str, lease_id: &str) -> Option<i64> {
    let admin = daemon.operator().await;
    sessions(&admin, org, KRE)
        .await
        .into_iter()
        .find(|lease| lease.lease_id == lease_id)
        .map(|lease| lease.expires_at_unix_ms)
}

/// Waits until the leader at `daemon` has heard a renewal of `lease_id`: its expiry
/// moves past the first one seen there (a recovered lease's is fixed at the takeover
/// until its engine renews).
async fn wait_renewed_on(daemon: &Daemon, org: &str, lease_id: &str) {
    let until = Instant::now() + FOLLOW_DEADLINE;
    let first = loop {
        if let Some(expiry) = expiry_on(daemon, org, lease_id).await {
            break expiry;
        }
        assert!(
            Instant::now() < until,
            "lease {lease_id} is not on the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        let expiry = expiry_on(daemon, org, lease_id)
            .await
            .unwrap_or_else(|| panic!("lease {lease_id} ended on the new leader"));
        if expiry > first {
            return;
        }
        assert!(
            Instant::now() < until,
            "lease {lease_id} was never renewed on the new leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `child` to exit (it must, within the deadline); its output.
fn wait_output(mut child: Child) -> std::process::Output {
    let until = Instant::now() + FOLLOW_DEADLINE;
    while child.try_wait().expect("wait for the child").is_none() {
        assert!(Instant::now() < until, "the child did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("its output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_nodes_address_reaches_the_leader_and_clients_ride_a_failover() {
    let Some(binary) = etcd_binary() else { return };
    let etcd = EtcdServer::start(binary).await;
    let mut nodes: Vec<Daemon> = (0..3)
        .map(|i| spawn_node(&etcd.url(), &format!("c{i}")))
        .collect();
    let leader = leader_of(&nodes).await;
    let standby_url = nodes[(leader + 1) % 3].url();
    assert_eq!(
        leader_named_by(&nodes[(leader + 1) % 3]).await,
        nodes[leader].addr().to_string()
    );

    // `status` over the three nodes: the leader serves, each standby names it.
    let all = nodes.iter().map(Daemon::url).collect::<Vec<_>>().join(",");
    let shown =
        tokio::task::block_in_place(|| daemon::run(&["--json", "status", "--addr", &all], &[]));
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let answer: serde_json::Value = serde_json::from_str(&shown.stdout).expect("JSON");
    assert_eq!(answer["serving"], nodes[leader].url().as_str(), "{answer}");
    for (index, node) in answer["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .enumerate()
    {
        if index == leader {
            assert_eq!(node["role"], "serving", "{answer}");
        } else {
            assert_eq!(node["role"], "standby", "{answer}");
            assert_eq!(node["leader"], nodes[leader].addr().to_string(), "{answer}");
            for service in 0..3 {
                assert_eq!(node["health"][service]["status"], "NOT_SERVING", "{answer}");
            }
        }
    }

    // The CLI: at a standby, and through a list whose first address is down (also
    // from SEATBROKER_ADDR).
    let list = format!("{},{standby_url}", closed_address());
    for (org, addr) in [("cli-a", standby_url.as_str()), ("cli-b", list.as_str())] {
        let owner = format!("owner@{org}.test");
        let args = [
            "org",
            "create",
            org,
            "--name",
            org,
            "--owner",
            owner.as_str(),
            "--kre",
            "1",
            "--addr",
            addr,
            "--key",
            OPERATOR_KEY,
        ];
        let created = tokio::task::block_in_place(|| daemon::run(&args, &[]));
        assert_eq!(created.code, 0, "org create at {addr}: {}", created.stderr);
    }
    let shown = tokio::task::block_in_place(|| {
        daemon::run(
            &["org", "show", "cli-b", "--json", "--key", OPERATOR_KEY],
            &[("SEATBROKER_ADDR", list.as_str())],
        )
    });
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(shown.stdout.contains("cli-b"), "{}", shown.stdout);
    let on_leader = nodes[leader]
        .operator()
        .await
        .get_organization(proto::GetOrganizationRequest {
            org_id: "cli-a".into(),
        })
        .await;
    assert!(
        on_leader.is_ok(),
        "the change is on the leader: {on_leader:?}"
    );

    // The load generator, at a standby, drives the leader.
    let bench = tokio::task::block_in_place(|| {
        daemon::command()
            .args([
                "bench",
                "--addr",
                &standby_url,
                "--operator-key",
                OPERATOR_KEY,
            ])
            .args(["--engines", "2", "--warmup", "0s", "--duration", "300ms"])
            .args(["--json", "--quiet"])
            .output()
            .expect("the bench runs")
    });
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let driven = format!("\"addr\":\"{}\"", nodes[leader].url());
    assert!(report.contains(&driven), "{report}");

    // `seatbroker run` at a standby, and the engine client with every address.
    let org = nodes[leader]
        .licensed_organization("acme", 0, 4, &["run", "lib"])
        .await;
    let flags = tempfile::tempdir().expect("a directory");
    let done = flags.path().join("done");
    let wait_for_done = format!("while [ ! -e '{}' ]; do sleep 0.1; done", done.display());
    let run = daemon::command()
        .args(["run", "--product", "kre", "--addr", &standby_url])
        .args(["--key", org.key(0), "--", "sh", "-c", &wait_for_done])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start seatbroker run");
    let urls: Vec<String> = nodes.iter().map(|node| node.url()).collect();
    let engine = EngineClient::connect(ClientOptions::new(urls, org.key(1)))
        .await
        .expect("the engine client connects");
    let seat = engine
        .acquire(proto::Product::Kre)
        .hostname("lib")
        .await
        .expect("a seat");
    let admin = nodes[leader].operator().await;
    let until = Instant::now() + FOLLOW_DEADLINE;
    let run_lease = loop {
        let held = sessions(&admin, "acme", KRE).await;
        if let Some(lease) = held.iter().find(|lease| lease.email == org.email(0)) {
            break lease.lease_id.clone();
        }
        assert!(Instant::now() < until, "`run` never held a seat: {held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let killed_at = Instant::now();
    nodes.remove(leader).kill();
    let new_leader = leader_of(&nodes).await;
    let elected_after = killed_at.elapsed();
    for lease in [run_lease.as_str(), seat.lease_id()] {
        wait_renewed_on(&nodes[new_leader], "acme", lease).await;
    }
    eprintln!(
        "cluster clients: kill -9 of the leader to a new leader {} ms, to both seats renewed there {} ms",
        elected_after.as_millis(),
        killed_at.elapsed().as_millis()
    );
    assert_eq!(seat.lost_now(), None, "the engine client kept its seat");

    // COMMAND ends: `run` releases its seat and exits with COMMAND's status.
    std::fs::write(&done, b"").expect("write the flag");
    let ran = tokio::task::block_in_place(|| wait_output(run));
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    seat.release().await.expect("the engine client releases");
    let left = sessions(&nodes[new_leader].operator().await, "acme", KRE).await;
    assert!(left.is_empty(), "both seats were released: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_through_etcd_over_mtls_and_a_wrong_ca_or_a_refused_client_certificate_stops_its_start()
 {
    let Some(binary) = etcd_binary() else { return };
    let certs = certs::generate();
    let tls = EtcdTls {
        certs: &certs,
        client_cert_auth: true,
    };
    let etcd = EtcdServer::start_with(binary, Some(tls), &[]).await;
    let client_files = [
        "--etcd-cert".to_owned(),
        path(&certs.client_cert),
        "--etcd-key".to_owned(),
        path(&certs.client_key),
    ];
    let serving = node(&etcd.url(), "mtls")
        .args(["--etcd-ca", &path(&certs.ca)])
        .args(&client_files)
        .spawn();
    serving
        .wait_health(SESSION_SERVICE, ServingStatus::Serving)
        .await;
    // A write goes through etcd.
    serving
        .licensed_organization("over-mtls", 0, 1, &["e0"])
        .await;

    let another_ca = certs::generate();
    let mut refused = node(&etcd.url(), "wrong-ca")
        .args(["--etcd-ca", &path(&another_ca.ca)])
        .args(&client_files)
        .spawn();
    // etcd refuses a client certificate another CA signed, and none at all; with TLS
    // 1.3 it says so only after the handshake, in an alert the first call never
    // shows (hyper drops it), so the node probes to read it.
    let foreign_client_files = [
        "--etcd-cert".to_owned(),
        path(&another_ca.client_cert),
        "--etcd-key".to_owned(),
        path(&another_ca.client_key),
    ];
    let mut untrusted_cert = node(&etcd.url(), "untrusted-cert")
        .args(["--etcd-ca", &path(&certs.ca)])
        .args(&foreign_client_files)
        .spawn();
    let mut no_cert = node(&etcd.url(), "no-cert")
        .args(["--etcd-ca", &path(&certs.ca)])
        .spawn();
    let status = refused.wait_exit();
    let log = refused.stderr();
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(
        log.contains("cluster.etcd_ca") && log.contains("TLS handshake with etcd"),
        "the message names the setting: {log}"
    );
    for (node, given) in [
        (
            &mut untrusted_cert,
            "does not accept this node's client certificate",
        ),
        (
            &mut no_cert,
            "requires a client certificate and this node gives none",
        ),
    ] {
        let status = node.wait_exit();
        let log = node.stderr();
        assert_eq!(status.code(), Some(64), "{log}");
        assert!(
            log.contains(given)
                && log.contains("cluster.etcd_cert")
                && log.contains("cluster.etcd_key"),
            "the message says what etcd refused and names the settings: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_authenticates_to_etcd_and_a_wrong_password_stops_its_start() {
    let Some(binary) = etcd_binary() else { return };
    // Tokens unused for a second are dropped, so the renewal below is seen soon.
    let etcd_args = ["--auth-token-ttl", "1", "--bcrypt-cost", "4"];
    let etcd = EtcdServer::start_with(binary, None, &etcd_args).await;
    const PASSWORD: &str = "etcd-root-password-7f3a";
    etcd.enable_auth(PASSWORD).await;
    let files = tempfile::tempdir().expect("a directory");
    let password_file = files.path().join("etcd-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password");
    let serving = node(&etcd.url(), "auth")
        .args(["--etcd-user", "root", "--etcd-password-file"])
        .args([path(&password_file)])
        .spawn();
    serving
        .wait_health(SESSION_SERVICE, ServingStatus::Serving)
        .await;
    serving
        .licensed_organization("with-auth", 0, 1, &["e0"])
        .await;

    const WRONG: &str = "not-the-password-91c2";
    let mut refused = node(&etcd.url(), "wrong-password")
        .args(["--etcd-user", "root"])
        .env("SEATBROKER_ETCD_PASSWORD", WRONG)
        .spawn();
    let status = refused.wait_exit();
    let log = refused.stderr();
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(
        log.contains("cluster.etcd_user"),
        "the message names the setting: {log}"
    );
    assert!(!log.contains(WRONG), "the password was logged: {log}");
    let printed = tokio::task::block_in_place(|| {
        daemon::run(
            &[
                "serve",
                "--check-config",
                "--etcd-endpoints",
                &etcd.url(),
                "--node-name",
                "n",
                "--etcd-user",
                "root",
            ],
            &[
                ("SEATBROKER_ETCD_PASSWORD", WRONG),
                ("SEATBROKER_OPERATOR_KEY", OPERATOR_KEY),
            ],
        )
    });
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert!(
        !printed.stdout.contains(WRONG) && printed.stdout.contains("etcd password is set"),
        "{}",
        printed.stdout
    );

    // A token that expired unused is renewed, and the call goes through.
    let credentials = Credentials {
        user: "root".into(),
        password: PASSWORD.into(),
    };
    let access = EtcdAccess {
        tls: None,
        credentials: Some(credentials),
    };
    let client = Etcd::connect(&[etcd.url()], Duration::from_secs(2), access).expect("a client");
    client.check_access(b"/probe").await.expect("authenticated");
    assert_eq!(client.authentications(), 1);
    // etcd sweeps tokens unused for their TTL once a second.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    client
        .get(b"/probe")
        .await
        .expect("a call after the token expired");
    assert_eq!(
        client.authentications(),
        2,
        "the expired token was renewed once"
    );
}
