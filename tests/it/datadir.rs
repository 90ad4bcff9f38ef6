//! The data directory as two careless operators would treat it, with the real binary:
//! a second daemon on a directory in use is refused (exit 75) while the first keeps
//! serving, and a lock left by a stopped daemon does not block; a used directory that
//! lost its operator key file refuses to start (exit 78) until the key is rotated
//! explicitly, and rotation keeps the state and retires the old key.

use std::path::Path;

use crate::harness::daemon::{self, Finished};
use crate::harness::{Daemon, DaemonApi, OPERATOR_KEY, Serve, assert_status};
use seatbroker::proto;

const EXIT_DATA_DIR_LOCKED: i32 = 75;
const EXIT_OPERATOR_KEY_MISSING: i32 = 78;

/// `seatbroker serve` on `data_dir` with the test operator key.
fn serve(data_dir: &Path) -> Serve {
    Serve::new().data_dir(data_dir)
}

/// Runs `seatbroker operator-key rotate --data-dir DIR`.
fn rotate(data_dir: &Path) -> Finished {
    let data_dir = data_dir.to_str().expect("a UTF-8 path");
    daemon::run(&["operator-key", "rotate", "--data-dir", data_dir], &[])
}

async fn create_org(daemon: &Daemon, key: &str, org: &str) {
    daemon
        .admin(key)
        .await
        .create_organization(proto::CreateOrganizationRequest {
            org_id: org.into(),
            display_name: format!("{org} Inc."),
            owner_email: format!("owner@{org}.test"),
            quota: Some(proto::Quota {
                kse_seats: 1,
                kre_sessions: 1,
                expires_at_unix_ms: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("create {org}: {status:?}"));
}

async fn org_ids(daemon: &Daemon, key: &str) -> Result<Vec<String>, tonic::Status> {
    let answer = daemon
        .admin(key)
        .await
        .list_organizations(proto::ListOrganizationsRequest::default())
        .await?;
    let mut ids: Vec<String> = answer
        .into_inner()
        .organizations
        .into_iter()
        .map(|org| org.org_id)
        .collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_data_directory_in_use_exits_75_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(dir.path()).start().await;
    create_org(&first, OPERATOR_KEY, "before").await;

    let mut second = serve(dir.path()).spawn();
    let status = second.wait_exit();
    assert_eq!(
        status.code(),
        Some(EXIT_DATA_DIR_LOCKED),
        "{}",
        second.stderr()
    );
    let message = second.stderr();
    assert!(
        message.contains(&dir.path().display().to_string())
            && message.contains(&format!("pid {}", first.pid()))
            && message.contains("in use by another seatbroker process"),
        "the refusal names the directory and the holder: {message}"
    );

    // The first daemon never noticed: it serves, and its data is whole.
    create_org(&first, OPERATOR_KEY, "after").await;
    assert_eq!(
        org_ids(&first, OPERATOR_KEY).await.unwrap(),
        ["after", "before"]
    );
    assert!(first.stop().success(), "{}", first.stderr());

    // The LOCK file still names the stopped daemon; it does not block a new one.
    let lock = std::fs::read_to_string(dir.path().join("LOCK")).unwrap();
    assert_eq!(lock.trim(), first.pid().to_string());
    let mut third = serve(dir.path()).start().await;
    assert_eq!(
        org_ids(&third, OPERATOR_KEY).await.unwrap(),
        ["after", "before"]
    );
    assert!(third.stop().success(), "{}", third.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_data_directory_without_its_operator_key_file_starts_only_after_an_explicit_rotation()
 {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("operator-key.sha256");

    // A fresh directory: the key is made and printed once, as on a first start.
    let mut first = serve(dir.path()).without_operator_key().start().await;
    let old_key = first
        .printed_operator_key()
        .expect("a generated operator key");
    create_org(&first, &old_key, "kept").await;
    assert!(first.stop().success(), "{}", first.stderr());

    // The key file is lost: no silent new key, a refusal that says what to do.
    std::fs::remove_file(&key_file).unwrap();
    let mut refused = serve(dir.path()).without_operator_key().spawn();
    let status = refused.wait_exit();
    assert_eq!(
        status.code(),
        Some(EXIT_OPERATOR_KEY_MISSING),
        "{}",
        refused.stderr()
    );
    let message = refused.stderr();
    assert!(
        message.contains(&format!(
            "seatbroker operator-key rotate --data-dir {}",
            dir.path().display()
        )) && message.contains("SEATBROKER_OPERATOR_KEY"),
        "the refusal says how to proceed: {message}"
    );
    assert_eq!(refused.printed_operator_key(), None, "no key was printed");
    assert!(!key_file.exists(), "no key file was made");

    // An explicit rotation makes a new key; the state is intact and the old key is dead.
    let rotated = rotate(dir.path());
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let new_key = rotated
        .stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("sbo_"))
        .expect("the new key is printed")
        .to_string();
    assert_ne!(new_key, old_key);
    let mut second = serve(dir.path()).without_operator_key().start().await;
    assert_eq!(org_ids(&second, &new_key).await.unwrap(), ["kept"]);
    assert_status(
        org_ids(&second, &old_key).await,
        tonic::Code::Unauthenticated,
        "",
    );

    // Rotation is refused while a daemon holds the directory, and changes nothing.
    let hash_before = std::fs::read(&key_file).unwrap();
    let refused_rotation = rotate(dir.path());
    assert_eq!(
        refused_rotation.code, EXIT_DATA_DIR_LOCKED,
        "{}",
        refused_rotation.stderr
    );
    assert!(
        refused_rotation
            .stderr
            .contains(&format!("pid {}", second.pid())),
        "{}",
        refused_rotation.stderr
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), hash_before);
    assert_eq!(org_ids(&second, &new_key).await.unwrap(), ["kept"]);
    assert!(second.stop().success(), "{}", second.stderr());
    // Its whole output, now that it has exited: no new key was made or printed.
    assert_eq!(second.printed_operator_key(), None);
}
