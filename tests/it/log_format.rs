//! Logs and snapshots written by earlier versions still load. `tests/fixtures/data-v1/`
//! is a data directory written by the version whose admin records were one flattened
//! message with a `kind` field (before the oneof of `storage::codec`): a snapshot
//! taken part-way and a log tail after it, ended by a kill -9. It was made by
//! `writes_the_data_v1_fixture` below (ignored; run it only to make a new fixture for
//! a new format, never to overwrite an old one).

use std::path::Path;

use seatbroker::proto;

use crate::harness::*;

const FIXTURE: &str = "tests/fixtures/data-v1";
/// 2100-01-01T00:00:00Z, the license expiry the fixture sets.
const EXPIRES_AT_UNIX_MS: i64 = 4_102_444_800_000;

/// What the fixture's writer kept: the keys and the leases held at the kill.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    ann_key: String,
    dan_key: String,
    eve_key: String,
    ann_lease: HeldLease,
    eve_lease: HeldLease,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HeldLease {
    lease_id: String,
    generation: String,
    engine_id: String,
}

/// Copies the fixture's log into a fresh data directory (recovery writes to it).
fn copy_of_fixture() -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    for entry in std::fs::read_dir(fixture.join("wal")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join("wal").join(entry.file_name())).unwrap();
    }
    dir
}

/// The fixture's writer: kept with the fixture to say how it was made.
#[cfg(feature = "failpoints")]
mod writer {
    use std::path::{Path, PathBuf};

    use seatbroker::proto;

    use super::*;

    impl HeldLease {
        fn of(lease: &proto::Lease) -> HeldLease {
            HeldLease {
                lease_id: lease.lease_id.clone(),
                generation: lease.generation.to_string(),
                engine_id: lease.engine_id.clone(),
            }
        }
    }

    /// Every kind of admin command, a held and a released lease, a snapshot after the
    /// first dozen records (the `failpoints` build's trigger), a second organization in
    /// the log after it, then kill -9.
    #[tokio::test]
    #[ignore = "writes a fixture: SEATBROKER_FIXTURE_OUT=<dir> cargo test --all-features --test it -- --ignored writes_the_data_v1_fixture"]
    async fn writes_the_data_v1_fixture() {
        let out = PathBuf::from(std::env::var("SEATBROKER_FIXTURE_OUT").expect("an output dir"));
        let daemon = Serve::new()
            .data_dir(&out)
            .env("SEATBROKER_FAILPOINT_SNAPSHOT_RECORDS", "12")
            .start()
            .await;
        let mut operator = daemon.operator().await;
        let alpha = "alpha".to_string();
        let quota = |kse_seats, kre_sessions, expires_at_unix_ms| {
            Some(proto::Quota {
                kse_seats,
                kre_sessions,
                expires_at_unix_ms,
            })
        };
        operator
            .create_organization(proto::CreateOrganizationRequest {
                org_id: alpha.clone(),
                display_name: "Alpha Ltd.".into(),
                owner_email: "owner@alpha.test".into(),
                quota: quota(2, 2, 0),
                ..Default::default()
            })
            .await
            .unwrap();
        operator
            .set_quota(proto::SetQuotaRequest {
                org_id: alpha.clone(),
                quota: quota(3, 2, EXPIRES_AT_UNIX_MS),
                ..Default::default()
            })
            .await
            .unwrap();
        for local in ["ann", "bob", "cat", "dan"] {
            add_member(&mut operator, &alpha, &format!("{local}@alpha.test"))
                .await
                .unwrap();
        }
        for local in ["cat", "dan"] {
            operator
                .set_role(proto::SetRoleRequest {
                    org_id: alpha.clone(),
                    email: format!("{local}@alpha.test"),
                    role: proto::Role::Admin as i32,
                })
                .await
                .unwrap();
        }
        let assign = |product, emails: &[&str]| proto::AssignLicensesRequest {
            org_id: alpha.clone(),
            product,
            emails: emails.iter().map(|e| format!("{e}@alpha.test")).collect(),
        };
        operator
            .assign_licenses(assign(KSE, &["ann", "bob"]))
            .await
            .unwrap();
        operator
            .assign_licenses(assign(KRE, &["ann", "cat"]))
            .await
            .unwrap();
        operator
            .unassign_licenses(proto::UnassignLicensesRequest {
                org_id: alpha.clone(),
                product: KSE,
                emails: vec!["bob@alpha.test".into()],
            })
            .await
            .unwrap();
        operator
            .transfer_license(proto::TransferLicenseRequest {
                org_id: alpha.clone(),
                product: KSE,
                from_email: "ann@alpha.test".into(),
                to_email: "cat@alpha.test".into(),
            })
            .await
            .unwrap();
        let ann_key = create_key(&mut operator, &alpha, "ann@alpha.test").await;
        let dan_key = create_key(&mut operator, &alpha, "dan@alpha.test").await;
        let dan_key_id = api_keys(&operator, &alpha)
            .await
            .into_iter()
            .find(|key| key.email == "dan@alpha.test")
            .unwrap()
            .key_id;
        operator
            .revoke_api_key(proto::RevokeApiKeyRequest {
                org_id: alpha.clone(),
                key_id: dan_key_id,
            })
            .await
            .unwrap();
        operator
            .remove_member(proto::RemoveMemberRequest {
                org_id: alpha.clone(),
                email: "bob@alpha.test".into(),
            })
            .await
            .unwrap();
        let mut ann = daemon.session(&ann_key).await;
        let ann_lease = acquire_lease(&mut ann, KRE, "engine-held").await;
        let released = acquire_lease(&mut ann, KRE, "engine-released").await;
        release(&mut ann, &released).await.unwrap();
        // The snapshot task looks once a second.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert!(snapshots_in(&out.join("wal")) > 0, "a snapshot was taken");

        let beta = daemon.organization("beta", 1, 1, &["eve"]).await;
        beta.assign(&daemon, KRE, beta.emails()).await.unwrap();
        let eve_key = beta.key(0).to_string();
        let mut eve = daemon.session(&eve_key).await;
        let eve_lease = acquire_lease(&mut eve, KRE, "engine-eve").await;
        daemon.kill();

        let kept = Kept {
            ann_key,
            dan_key,
            eve_key,
            ann_lease: HeldLease::of(&ann_lease),
            eve_lease: HeldLease::of(&eve_lease),
        };
        std::fs::write(
            out.join("kept.json"),
            serde_json::to_string_pretty(&kept).unwrap(),
        )
        .unwrap();
    }

    fn snapshots_in(wal: &Path) -> usize {
        std::fs::read_dir(wal)
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".snap")
            })
            .count()
    }
}

fn kept() -> Kept {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURE)
        .join("kept.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_data_directory_written_by_version_1_loads_with_every_command_and_lease() {
    let kept = kept();
    let server = start_in(copy_of_fixture(), std::time::Duration::from_secs(30)).await;
    let operator = server.operator().await;

    let orgs: Vec<String> = organizations(&operator)
        .await
        .into_iter()
        .map(|org| org.org_id)
        .collect();
    assert_eq!(orgs, ["alpha", "beta"]);
    let mut members: Vec<(String, i32)> = members(&operator, "alpha")
        .await
        .into_iter()
        .map(|member| (member.email, member.role))
        .collect();
    members.sort();
    let role = |role: proto::Role| role as i32;
    assert_eq!(
        members,
        [
            ("ann@alpha.test".to_string(), role(proto::Role::Member)),
            ("cat@alpha.test".to_string(), role(proto::Role::Admin)),
            ("dan@alpha.test".to_string(), role(proto::Role::Admin)),
            ("owner@alpha.test".to_string(), role(proto::Role::Owner)),
        ],
        "bob was removed, cat and dan made Admins"
    );
    assert_eq!(
        assigned_emails(&operator, "alpha", KSE).await,
        ["cat@alpha.test"],
        "KSE: assigned to ann and bob, bob's unassigned, ann's transferred to cat"
    );
    assert_eq!(
        assigned_emails(&operator, "alpha", KRE).await,
        ["ann@alpha.test", "cat@alpha.test"]
    );
    let usage = operator
        .clone()
        .get_usage(proto::GetUsageRequest {
            org_id: "alpha".into(),
            window_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.license_expires_at_unix_ms, EXPIRES_AT_UNIX_MS);
    let kse = usage.products.iter().find(|p| p.product == KSE).unwrap();
    let kre = usage.products.iter().find(|p| p.product == KRE).unwrap();
    assert_eq!(
        (kse.quota, kre.quota),
        (3, 2),
        "the quota set after creation"
    );

    // ann's key (created) works, dan's (revoked) does not.
    let dan_refused = server
        .session(&kept.dan_key)
        .await
        .acquire(acquire_request(KRE, "engine-dan"))
        .await;
    assert_status(dan_refused, tonic::Code::Unauthenticated, "");
    let sessions_of_alpha = sessions(&operator, "alpha", KRE).await;
    assert_eq!(sessions_of_alpha.len(), 1, "the released lease stays ended");
    for (key, held) in [
        (&kept.ann_key, &kept.ann_lease),
        (&kept.eve_key, &kept.eve_lease),
    ] {
        let again = server
            .session(key)
            .await
            .acquire(acquire_request(KRE, &held.engine_id))
            .await
            .unwrap()
            .into_inner();
        let lease = again.lease.unwrap();
        assert!(
            again.resumed,
            "{}: the held lease is resumed",
            held.engine_id
        );
        assert_eq!(
            (lease.lease_id, lease.generation.to_string()),
            (held.lease_id.clone(), held.generation.clone())
        );
    }
}
