//! The organization commands and the destructive actions of the real binary: `org
//! show`, `org rename`, `org delete`; `--dry-run` lists what would end and changes
//! nothing (as JSON with `--json`), and without a terminal on standard input the
//! command proceeds without asking, as scripts expect; on a real pseudo-terminal the
//! command shows its plan and asks, and only "y" goes ahead; shell completions.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{as_caller, seatbroker};
use crate::harness::*;

fn json_of(outcome: &crate::cli::Outcome) -> Value {
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("{e}: {}", outcome.stdout))
}

fn count(plan: &Value, field: &str) -> usize {
    plan[field].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_show_rename_and_delete_from_the_command_line() {
    let server = start().await;
    let org = server.licensed_organization("acme", 1, 3, &["a"]).await;
    let shown =
        json_of(&as_caller(&server, OPERATOR_KEY, &["org", "show", "acme", "--json"]).await);
    assert_eq!(shown["organization"]["display_name"], "acme Inc.");
    let by_member = as_caller(&server, org.key(0), &["org", "show", "acme"]).await;
    assert_eq!(by_member.code, 77, "{}", by_member.stderr);
    let renamed = as_caller(
        &server,
        OPERATOR_KEY,
        &["org", "rename", "acme", "--name", "Acme Corp"],
    )
    .await;
    assert_eq!(renamed.code, 0, "{}", renamed.stderr);
    assert!(renamed.stdout.contains("Acme Corp"), "{}", renamed.stdout);
    let by_owner = as_caller(&server, &org.owner_key, &["org", "delete", "acme", "--yes"]).await;
    assert_eq!(by_owner.code, 77, "{}", by_owner.stderr);

    let mut engine = server.session(org.key(0)).await;
    let lease = acquire_lease(&mut engine, KRE, "engine-a").await;
    let plan = json_of(
        &as_caller(
            &server,
            OPERATOR_KEY,
            &["org", "delete", "acme", "--dry-run", "--json"],
        )
        .await,
    );
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["sessions_ending"][0]["lease_id"],
        lease.lease_id.as_str()
    );
    assert_eq!(
        (
            count(&plan, "sessions_ending"),
            count(&plan, "keys_revoked"),
            count(&plan, "members_removed")
        ),
        (1, 2, 2)
    );
    let text = as_caller(
        &server,
        OPERATOR_KEY,
        &["org", "delete", "acme", "--dry-run"],
    )
    .await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains(
            "org delete in acme would end 1 session, revoke 2 API keys, remove 2 members"
        ),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(&lease.lease_id), "{}", text.stdout);
    heartbeat(&mut engine, &lease)
        .await
        .expect("a dry run ends nothing");

    // Standard input is not a terminal here: the deletion proceeds without asking.
    let deleted =
        json_of(&as_caller(&server, OPERATOR_KEY, &["org", "delete", "acme", "--json"]).await);
    assert_eq!(
        (
            &deleted["sessions_ended"],
            &deleted["keys_revoked"],
            &deleted["members_removed"]
        ),
        (&Value::from(1), &Value::from(2), &Value::from(2))
    );
    let gone = as_caller(&server, OPERATOR_KEY, &["org", "show", "acme"]).await;
    assert_eq!(gone.code, 10, "{}", gone.stderr);
    assert!(heartbeat(&mut engine, &lease).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_what_would_end_and_changes_nothing() {
    let server = start().await;
    let org = server
        .licensed_organization("acme", 1, 3, &["a", "b"])
        .await;
    let (a, b) = (org.email(0).to_owned(), org.email(1).to_owned());
    let mut engine_a = server.session(org.key(0)).await;
    let lease_a = acquire_lease(&mut engine_a, KRE, "engine-a").await;
    let mut engine_b = server.session(org.key(1)).await;
    let lease_b = acquire_lease(&mut engine_b, KRE, "engine-b").await;
    let owner = server.admin(&org.owner_key).await;
    let keys_before = api_keys(&owner, "acme").await;
    let key_of_a = keys_before
        .iter()
        .find(|key| key.email == a)
        .unwrap()
        .key_id
        .clone();
    let members_before = members(&owner, "acme").await;
    let dry = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--dry-run", "--json"]);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let key = org.owner_key.clone();
    let plan_of = |args: Vec<String>| {
        let (server, key) = (&server, key.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            json_of(&as_caller(server, &key, &args).await)
        }
    };

    let remove = plan_of(dry(&["member", "remove", "acme", &a])).await;
    assert_eq!(
        remove["sessions_ending"][0]["lease_id"],
        lease_a.lease_id.as_str()
    );
    assert_eq!(remove["keys_revoked"][0]["key_id"], key_of_a.as_str());
    assert_eq!(
        (
            count(&remove, "sessions_ending"),
            count(&remove, "keys_revoked")
        ),
        (1, 1)
    );
    let unassign = plan_of(dry(&["license", "unassign", "acme", "kre", &a, &b])).await;
    assert_eq!(count(&unassign, "sessions_ending"), 2);
    let unassign_kse = plan_of(dry(&["license", "unassign", "acme", "kse", &a])).await;
    assert_eq!(count(&unassign_kse, "sessions_ending"), 0);
    let transfer = plan_of(dry(&["license", "transfer", "acme", "kre", &b, &org.owner])).await;
    assert_eq!(
        transfer["sessions_ending"][0]["lease_id"],
        lease_b.lease_id.as_str()
    );
    assert_eq!(count(&transfer, "sessions_ending"), 1);
    let terminate = plan_of(dry(&["session", "terminate", "acme", &lease_b.lease_id])).await;
    assert_eq!(terminate["sessions_ending"][0]["email"], b.as_str());
    assert_eq!(count(&terminate, "sessions_ending"), 1);
    let revoke = plan_of(dry(&["key", "revoke", "acme", &key_of_a])).await;
    assert_eq!(revoke["keys_revoked"][0]["email"], a.as_str());

    heartbeat(&mut engine_a, &lease_a)
        .await
        .expect("nothing ended");
    heartbeat(&mut engine_b, &lease_b)
        .await
        .expect("nothing ended");
    assert_eq!(api_keys(&owner, "acme").await, keys_before);
    assert_eq!(members(&owner, "acme").await, members_before);
    assert_eq!(org.assigned(&server, KRE).await.len(), 2);

    // Without a terminal on standard input, the command proceeds as it always did.
    let removed = as_caller(&server, &org.owner_key, &["member", "remove", "acme", &a]).await;
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(
        removed
            .stdout
            .contains("1 sessions ended, 1 API keys revoked"),
        "{}",
        removed.stdout
    );
    assert!(heartbeat(&mut engine_a, &lease_a).await.is_err());
}

/// Bounds one command run on the pseudo-terminal.
const TERMINAL_RUN_MAX: Duration = Duration::from_secs(30);

/// Runs a client command against `server` with `key`, its standard input a real
/// pseudo-terminal on which `answer` and a newline are already typed (the terminal
/// holds the line until the command reads it); standard output and error piped.
async fn on_terminal(
    server: &TestServer,
    key: &str,
    args: &[&str],
    answer: &str,
) -> crate::cli::Outcome {
    let (mut controller, terminal) = {
        let (mut controller, mut terminal) = (-1, -1);
        // SAFETY: openpty writes two descriptors it opened into the two integers; the
        // name, termios and window size pointers may be null.
        let opened = unsafe {
            libc::openpty(
                &mut controller,
                &mut terminal,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        unsafe {
            (
                std::fs::File::from(OwnedFd::from_raw_fd(controller)),
                OwnedFd::from_raw_fd(terminal),
            )
        }
    };
    controller
        .write_all(format!("{answer}\n").as_bytes())
        .expect("type on the pseudo-terminal");
    let url = server.url();
    let mut all = args.to_vec();
    all.extend(["--addr", &url, "--key", key]);
    let mut command = tokio::process::Command::from(daemon::command());
    command
        .args(&all)
        .stdin(Stdio::from(terminal))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TERMINAL_RUN_MAX, command.output())
        .await
        .expect("the command on the terminal ends")
        .expect("run the seatbroker binary");
    // The controller stays open until the command ended: closing it hangs up its terminal.
    drop(controller);
    crate::cli::Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_destructive_command_asks_and_only_yes_goes_ahead() {
    let server = start().await;
    let org = server.licensed_organization("acme", 1, 3, &["a"]).await;
    let mut engine = server.session(org.key(0)).await;
    let lease = acquire_lease(&mut engine, KRE, "engine-a").await;
    let delete = ["org", "delete", "acme"];

    for answer in ["n", "", "yes please"] {
        let declined = on_terminal(&server, OPERATOR_KEY, &delete, answer).await;
        assert_eq!(declined.code, 1, "{answer:?}: {}", declined.stderr);
        for shown in [
            "org delete in acme would end 1 session, revoke 2 API keys, remove 2 members",
            lease.lease_id.as_str(),
            "Proceed? [y/N]",
            "not confirmed; nothing changed",
        ] {
            assert!(
                declined.stderr.contains(shown),
                "{answer:?}: {shown:?} not in {}",
                declined.stderr
            );
        }
        assert_eq!(declined.stdout, "", "{answer:?}");
        heartbeat(&mut engine, &lease)
            .await
            .expect("a declined deletion ends nothing");
        let shown = as_caller(&server, OPERATOR_KEY, &["org", "show", "acme"]).await;
        assert_eq!(shown.code, 0, "{answer:?}: {}", shown.stderr);
    }

    // --yes on a terminal does not ask; a key revoked this way is gone.
    let owner = server.admin(&org.owner_key).await;
    let member_key = api_keys(&owner, "acme")
        .await
        .into_iter()
        .find(|key| key.email == org.email(0))
        .unwrap()
        .key_id;
    let revoked = on_terminal(
        &server,
        OPERATOR_KEY,
        &["key", "revoke", "acme", &member_key, "--yes"],
        "n",
    )
    .await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert!(!revoked.stderr.contains("Proceed?"), "{}", revoked.stderr);
    assert!(
        api_keys(&owner, "acme")
            .await
            .iter()
            .all(|key| key.key_id != member_key)
    );

    let deleted = on_terminal(&server, OPERATOR_KEY, &delete, "Y").await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert!(
        deleted.stderr.contains("Proceed? [y/N]"),
        "{}",
        deleted.stderr
    );
    let gone = as_caller(&server, OPERATOR_KEY, &["org", "show", "acme"]).await;
    assert_eq!(gone.code, 10, "{}", gone.stderr);
}

#[tokio::test]
async fn completions_cover_the_command_tree() {
    let bash = seatbroker(&["completions", "bash"]).await;
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    for word in [
        "seatbroker",
        "serve",
        "org",
        "delete",
        "rename",
        "--dry-run",
        "completions",
    ] {
        assert!(
            bash.stdout.contains(word),
            "{word} not in the bash completions"
        );
    }
    for shell in ["zsh", "fish"] {
        let script = seatbroker(&["completions", shell]).await;
        assert_eq!(script.code, 0, "{}", script.stderr);
        assert!(
            script.stdout.contains("license"),
            "{shell}: {}",
            script.stdout
        );
    }
    let unknown = seatbroker(&["completions", "tcsh"]).await;
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
}
