//! Durability over real processes, files and fsync: acknowledged admin changes survive
//! restarts and SIGKILL, held sessions survive a restart without over-admission,
//! generations keep increasing, and damaged logs are truncated or refused as they must.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::*;
use seatbroker::proto;
use tonic::Code;

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn acknowledged_admin_state_survives_a_restart() {
    let server = start().await;
    let org = server.organization("acme", 2, 3, &["a", "b", "c"]).await;
    org.assign(&server, KSE, vec![org.email(0).into(), org.email(1).into()])
        .await
        .unwrap();
    org.assign(&server, KRE, org.emails()).await.unwrap();
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .transfer_license(proto::TransferLicenseRequest {
            org_id: org.id.clone(),
            product: KSE,
            from_email: org.email(1).into(),
            to_email: org.email(2).into(),
        })
        .await
        .unwrap();
    owner
        .set_role(proto::SetRoleRequest {
            org_id: org.id.clone(),
            email: org.email(0).into(),
            role: proto::Role::Admin as i32,
        })
        .await
        .unwrap();
    let before = members(&owner, &org.id).await;
    let dir = server.stop().await;

    let server = start_in(dir, TTL).await;
    let mut owner = server.admin(&org.owner_key).await;
    assert_eq!(members(&owner, &org.id).await, before);
    let kse = owner
        .list_assignments(proto::ListAssignmentsRequest {
            org_id: org.id.clone(),
            product: KSE,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kse.emails,
        vec![org.email(0).to_string(), org.email(2).to_string()]
    );
    assert_eq!(kse.quota, 2);
    // API keys survive too: a member's key still authenticates after the restart.
    let mut engine = server.session(org.key(0)).await;
    engine
        .acquire(acquire_request(KRE, "after-restart"))
        .await
        .unwrap();
}

#[tokio::test]
async fn held_sessions_survive_a_restart_and_the_quota_holds() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 5, &["a", "b", "c", "d", "e", "f"])
        .await;
    let mut leases = Vec::new();
    for i in 0..5 {
        let mut engine = server.session(org.key(i)).await;
        leases.push(acquire_lease(&mut engine, KRE, &format!("engine-{i}")).await);
    }
    let dir = server.stop().await;
    let server = start_in(dir, TTL).await;
    // No new engine gets in while the five old ones may still come back.
    let mut newcomer = server.session(org.key(5)).await;
    assert_status(
        newcomer.acquire(acquire_request(KRE, "engine-new")).await,
        Code::ResourceExhausted,
        "5 of 5",
    );
    for (i, lease) in leases.iter().enumerate() {
        let mut engine = server.session(org.key(i)).await;
        heartbeat(&mut engine, lease)
            .await
            .expect("a held session survives the restart");
        // The engine's retry of Acquire finds the same lease, not a second seat.
        let again = engine
            .acquire(acquire_request(KRE, &format!("engine-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert!(again.resumed);
        assert_eq!(again.lease.unwrap().generation, lease.generation);
    }
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 5);
    // A release after the restart frees the seat for the newcomer.
    let mut first = server.session(org.key(0)).await;
    release(&mut first, &leases[0]).await.unwrap();
    newcomer
        .acquire(acquire_request(KRE, "engine-new"))
        .await
        .unwrap();
}

#[tokio::test]
async fn ended_sessions_stay_ended_after_a_restart() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 0, 5, &["a", "b", "c"])
        .await;
    let mut leases = Vec::new();
    for i in 0..3 {
        let mut engine = server.session(org.key(i)).await;
        leases.push(acquire_lease(&mut engine, KRE, "e").await);
    }
    let mut owner = server.admin(&org.owner_key).await;
    owner
        .terminate_session(proto::TerminateSessionRequest {
            org_id: org.id.clone(),
            lease_id: leases[0].lease_id.clone(),
        })
        .await
        .unwrap();
    release(&mut server.session(org.key(1)).await, &leases[1])
        .await
        .unwrap();
    let dir = server.stop().await;
    let server = start_in(dir, TTL).await;
    let sessions = sessions(&server.admin(&org.owner_key).await, &org.id, 0).await;
    let ids: Vec<&str> = sessions.iter().map(|s| s.lease_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![leases[2].lease_id.as_str()],
        "only the held lease came back"
    );
}

#[tokio::test]
async fn generations_strictly_increase_across_a_hundred_restarts() {
    let mut server = start().await;
    let org = server.licensed_organization("acme", 0, 1, &["a"]).await;
    let restarts = std::env::var("SEATBROKER_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut last = 0;
    for round in 0..restarts {
        let mut engine = server.session(org.key(0)).await;
        let lease = acquire_lease(&mut engine, KRE, &format!("e{round}")).await;
        assert!(
            lease.generation > last,
            "round {round}: {} after {last}",
            lease.generation
        );
        last = lease.generation;
        release(&mut engine, &lease).await.unwrap();
        let dir = server.stop().await;
        server = start_in(dir, TTL).await;
    }
}

/// One client's members and what it knows of their KRE assignment.
struct Toggler {
    members: Vec<String>,
    assigned: BTreeSet<String>,
}

/// An operation in flight when the daemon died: it may or may not have happened.
type InFlight = Option<(String, bool)>;

async fn toggle_until_error(
    daemon_url: String,
    org: String,
    mut model: Toggler,
    seed: u64,
) -> (Toggler, InFlight) {
    let channel = seatbroker::client::connect(&daemon_url)
        .await
        .expect("connect");
    let mut admin = seatbroker::client::admin(
        channel,
        seatbroker::client::BearerKey::new(Some(OPERATOR_KEY)).unwrap(),
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    loop {
        let email = model.members[rng.usize(..model.members.len())].clone();
        let assign = !model.assigned.contains(&email);
        let result = if assign {
            admin
                .assign_licenses(proto::AssignLicensesRequest {
                    org_id: org.clone(),
                    product: KRE,
                    emails: vec![email.clone()],
                })
                .await
                .map(|_| ())
        } else {
            admin
                .unassign_licenses(proto::UnassignLicensesRequest {
                    org_id: org.clone(),
                    product: KRE,
                    emails: vec![email.clone()],
                })
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {
                if assign {
                    model.assigned.insert(email);
                } else {
                    model.assigned.remove(&email);
                }
            }
            Err(_) => return (model, Some((email, assign))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let cycles: usize = std::env::var("SEATBROKER_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("SEATBROKER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    println!(
        "crash loop: {cycles} cycles, seed {seed} (SEATBROKER_CRASH_CYCLES, SEATBROKER_CRASH_SEED)"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let clients = 4;
    let org = "crash".to_string();
    let mut models: Vec<Toggler> = (0..clients)
        .map(|c| Toggler {
            members: (0..6).map(|m| format!("c{c}m{m}@crash.test")).collect(),
            assigned: BTreeSet::new(),
        })
        .collect();
    {
        let daemon = Serve::new().data_dir(dir.path()).start().await;
        let mut operator = daemon.operator().await;
        operator
            .create_organization(proto::CreateOrganizationRequest {
                org_id: org.clone(),
                display_name: "Crash".into(),
                owner_email: "owner@crash.test".into(),
                quota: Some(proto::Quota::default()),
                ..Default::default()
            })
            .await
            .unwrap();
        for email in models.iter().flat_map(|m| m.members.iter()) {
            operator
                .add_member(proto::AddMemberRequest {
                    org_id: org.clone(),
                    email: email.clone(),
                    role: 0,
                })
                .await
                .unwrap();
        }
        daemon.kill();
    }
    for cycle in 0..cycles {
        let daemon = Serve::new().data_dir(dir.path()).start().await;
        // Check what survived the previous kill against what was acknowledged.
        let recovered = assigned_emails(&daemon.operator().await, &org, KRE).await;
        for model in &models {
            let mine: BTreeSet<String> = recovered
                .iter()
                .filter(|e| model.members.contains(e))
                .cloned()
                .collect();
            assert_eq!(
                mine, model.assigned,
                "cycle {cycle}, seed {seed}: recovered state differs from the acknowledged one"
            );
        }
        let tasks: Vec<_> = models
            .drain(..)
            .enumerate()
            .map(|(c, model)| {
                tokio::spawn(toggle_until_error(
                    daemon.url(),
                    org.clone(),
                    model,
                    seed ^ ((cycle * 31 + c) as u64),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(1..40))).await;
        daemon.kill();
        for task in tasks {
            let (mut model, in_flight) = task.await.unwrap();
            // An operation cut off by the kill may or may not have been made durable;
            // the next cycle's check decides which, and both are allowed.
            if let Some((email, assign)) = in_flight {
                let probe = Serve::new().data_dir(dir.path()).start().await;
                let listed = assigned_emails(&probe.operator().await, &org, KRE).await;
                probe.kill();
                if listed.contains(&email) == assign {
                    if assign {
                        model.assigned.insert(email);
                    } else {
                        model.assigned.remove(&email);
                    }
                }
            }
            models.push(model);
        }
    }
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_corruption_before_valid_records_refuses_to_start() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 5, 5, &["a", "b", "c"])
        .await;
    let dir = server.stop().await;
    let segment = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a segment");
    let original = std::fs::read(&segment).unwrap();

    // Damage in the middle of the log, with valid records after it: refuse, naming the file.
    let mut damaged = original.clone();
    let middle = 24 + 7 + 40;
    damaged[middle] ^= 0x40;
    std::fs::write(&segment, &damaged).unwrap();
    let mut settings = test_settings(dir.path());
    settings.lease_ttl_ms = ttl_ms(TTL);
    let config = seatbroker::config::Config::resolve(settings).unwrap();
    let refused = refused_start(config.clone()).await;
    let message = refused.to_string();
    let file_name = segment.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        message.contains(&file_name),
        "the error names the file: {message}"
    );
    assert!(
        message.contains("offset"),
        "the error names the offset: {message}"
    );

    // A cut through the last record: the prefix before it is recovered. The segment
    // ends in preallocated zeros, so the last record ends at the last nonzero byte
    // (or after it, if the record itself ends in zeros: the cut is inside it anyway).
    let data_end = original
        .iter()
        .rposition(|&byte| byte != 0)
        .expect("records")
        + 1;
    assert!(data_end < original.len(), "the segment is preallocated");
    // Zeros follow the cut, as they follow the records of a preallocated segment.
    let mut cut = original[..data_end - 3].to_vec();
    cut.resize(cut.len() + 64 * 1024, 0);
    std::fs::write(&segment, &cut).unwrap();
    let server = start_in(dir, TTL).await;
    let assigned = org.assigned(&server, KRE).await;
    // The torn record was the last one written, the assignment: it is gone, and
    // everything before it (the organization, its members) is there.
    assert!(assigned.is_empty(), "recovered {assigned:?}");
    let members = members(&server.admin(&org.owner_key).await, &org.id).await;
    assert_eq!(members.len(), 4, "the owner and three members survive");
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_failed_fsync_aborts_and_nothing_unacknowledged_appears() {
    let dir = tempfile::tempdir().unwrap();
    // Fsyncs: 1 boot record, 1 create organization, then one per add-member.
    let mut daemon = Serve::new()
        .data_dir(dir.path())
        .env("SEATBROKER_FAILPOINT", "wal-fsync-fail-after:5")
        .start()
        .await;
    let mut operator = daemon.operator().await;
    operator
        .create_organization(proto::CreateOrganizationRequest {
            org_id: "acme".into(),
            display_name: "Acme".into(),
            owner_email: "owner@acme.test".into(),
            quota: Some(proto::Quota::default()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut failed = None;
    for n in 0..10 {
        let email = format!("m{n}@acme.test");
        let result = operator
            .add_member(proto::AddMemberRequest {
                org_id: "acme".into(),
                email: email.clone(),
                role: 0,
            })
            .await;
        match result {
            Ok(_) => acknowledged.push(email),
            Err(_) => {
                failed = Some(email);
                break;
            }
        }
    }
    let failed = failed.expect("the failpoint fired");
    let status = daemon.wait_exit();
    assert!(!status.success(), "the daemon aborted: {status}");
    assert_eq!(acknowledged.len(), 3);
    let daemon = Serve::new().data_dir(dir.path()).start().await;
    let members = member_emails(&daemon.operator().await, "acme").await;
    for email in &acknowledged {
        assert!(members.contains(email), "acknowledged {email} was lost");
    }
    // The failed write was written but never synced: the page cache may or may not
    // have kept it (fsyncgate), so it may appear, but nothing after it can.
    for email in &members {
        assert!(
            acknowledged.contains(email) || *email == failed || email == "owner@acme.test",
            "{email} appeared though it was never even attempted before the abort"
        );
    }
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn health_is_not_serving_while_the_log_is_recovered() {
    use tonic_health::pb::health_check_response::ServingStatus;

    // Recovery made to take two seconds longer, so it can be watched.
    let daemon = Serve::new()
        .env("SEATBROKER_FAILPOINT_RECOVERY_DELAY_MS", "2000")
        .spawn();
    assert_eq!(
        daemon.health("").await,
        ServingStatus::NotServing,
        "NOT_SERVING while recovering"
    );
    daemon
        .wait_health(SESSION_SERVICE, ServingStatus::Serving)
        .await;
    // And it works.
    organizations(&daemon.operator().await).await;
}

/// Sessions live for a long time across snapshots taken after a few records (the
/// `failpoints` build's record trigger), a kill -9 and a restart that loads the
/// snapshot and replays only the records after it: every held session keeps its seat
/// and generation, ended ones stay ended, and the quota holds from the first moment.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn held_sessions_survive_restarts_through_snapshots_of_the_lease_table() {
    const QUOTA: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let with_snapshots_every_25_records = || {
        Serve::new()
            .data_dir(dir.path())
            .env("SEATBROKER_FAILPOINT_SNAPSHOT_RECORDS", "25")
    };
    let daemon = with_snapshots_every_25_records().start().await;
    let mut operator = daemon.admin(OPERATOR_KEY).await;
    let org = "snap".to_string();
    operator
        .create_organization(proto::CreateOrganizationRequest {
            org_id: org.clone(),
            display_name: "Snap".into(),
            owner_email: "owner@snap.test".into(),
            quota: Some(proto::Quota {
                kre_sessions: QUOTA as u32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    operator
        .assign_licenses(proto::AssignLicensesRequest {
            org_id: org.clone(),
            product: KRE,
            emails: vec!["owner@snap.test".into()],
        })
        .await
        .unwrap();
    let key = operator
        .create_api_key(proto::CreateApiKeyRequest {
            org_id: org.clone(),
            email: "owner@snap.test".into(),
            label: "engines".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut engine = daemon.session(&key).await;
    let mut held = Vec::new();
    let mut ended = Vec::new();
    let mut next_engine = 0;
    // Three rounds of grants and releases, each long enough to make a snapshot due,
    // with time for the once-a-second snapshot task to take it.
    for round in 0..3 {
        while held.len() < QUOTA {
            let lease = acquire_lease(&mut engine, KRE, &format!("engine-{next_engine}")).await;
            held.push(lease);
            next_engine += 1;
        }
        for lease in held.drain(..(10 + 5 * round)) {
            engine
                .release(proto::ReleaseRequest {
                    lease_id: lease.lease_id.clone(),
                    generation: lease.generation,
                })
                .await
                .unwrap();
            ended.push(lease);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let snapshots = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".snap")
        })
        .count();
    assert_eq!(
        snapshots, 1,
        "a snapshot was taken (and older ones deleted)"
    );
    daemon.kill();

    let daemon = with_snapshots_every_25_records().start().await;
    let mut engine = daemon.session(&key).await;
    // The seats of the held sessions are taken from the first moment.
    let free = QUOTA - held.len();
    for n in 0..free {
        acquire_lease(&mut engine, KRE, &format!("newcomer-{n}")).await;
    }
    assert_status(
        engine.acquire(acquire_request(KRE, "one-too-many")).await,
        Code::ResourceExhausted,
        "of 60",
    );
    for lease in &held {
        engine
            .heartbeat(proto::HeartbeatRequest {
                lease_id: lease.lease_id.clone(),
                generation: lease.generation,
            })
            .await
            .unwrap_or_else(|status| panic!("a held session was lost: {status:?}"));
    }
    for lease in &ended {
        let heartbeat = engine
            .heartbeat(proto::HeartbeatRequest {
                lease_id: lease.lease_id.clone(),
                generation: lease.generation,
            })
            .await;
        assert_eq!(
            heartbeat.map(|_| ()).map_err(|s| s.code()),
            Err(Code::NotFound),
            "an ended session came back"
        );
    }
}
