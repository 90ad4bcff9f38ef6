//! Listings page (AIP-158) over real gRPC: every List call covers each item exactly
//! once and in order across pages, a request without `page_size` gets the default page
//! and a token, a larger one is lowered to the maximum, a garbled token or one reused
//! with other filters is INVALID_ARGUMENT, and the CLI pages through by itself. The
//! walk through the pages, and the bound on each page, are the harness's
//! ([`crate::harness::listing`]), which every other test's listings go through too.

use std::collections::HashSet;

use crate::harness::listing::{List, page, walk};
use crate::harness::*;
use seatbroker::client::Authorized;
use seatbroker::limits;
use seatbroker::proto::{self, admin_service_client::AdminServiceClient};
use tokio::task::JoinSet;
use tonic::Code;

type Admin = AdminServiceClient<Authorized>;

fn all_organizations() -> proto::ListOrganizationsRequest {
    proto::ListOrganizationsRequest::default()
}

fn members_of(org: &str) -> proto::ListMembersRequest {
    proto::ListMembersRequest {
        org_id: org.into(),
        ..Default::default()
    }
}

fn assignments_of(org: &str, product: i32) -> proto::ListAssignmentsRequest {
    proto::ListAssignmentsRequest {
        org_id: org.into(),
        product,
        ..Default::default()
    }
}

fn keys_of(org: &str) -> proto::ListApiKeysRequest {
    proto::ListApiKeysRequest {
        org_id: org.into(),
        ..Default::default()
    }
}

/// The sessions of `org` (of `product`; 0 for both).
fn sessions_of(org: &str, product: i32) -> proto::ListSessionsRequest {
    proto::ListSessionsRequest {
        org_id: org.into(),
        product,
        ..Default::default()
    }
}

/// What the walk of `request` by pages of `page_size` lists, each item by `name`, in
/// the order listed; asserts none is listed twice.
async fn listed<L: List>(
    admin: &Admin,
    request: &L,
    page_size: i32,
    name: impl Fn(L::Item) -> String,
) -> Vec<String> {
    let pages = walk(admin, request, page_size).await;
    let all: Vec<String> = pages.into_iter().flatten().map(name).collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "an item was listed twice");
    all
}

fn email(member: proto::Member) -> String {
    member.email
}

fn key_id(key: proto::ApiKey) -> String {
    key.key_id
}

fn lease_id(lease: proto::Lease) -> String {
    lease.lease_id
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

/// Adds `count` members `m<i>@<org>.test` over 32 concurrent calls; returns their emails.
async fn add_members(server: &TestServer, org: &str, count: usize) -> Vec<String> {
    let operator = server.operator().await;
    let emails: Vec<String> = (0..count).map(|i| format!("m{i:05}@{org}.test")).collect();
    let mut tasks = JoinSet::new();
    for chunk in emails.chunks(count.div_ceil(32).max(1)) {
        let (mut operator, chunk, org) = (operator.clone(), chunk.to_vec(), org.to_string());
        tasks.spawn(async move {
            for email in chunk {
                add_member(&mut operator, &org, &email)
                    .await
                    .expect("add member");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("adding members");
    }
    emails
}

/// Acquires `count` sessions of `product` with one key, over 32 concurrent calls;
/// returns their lease ids.
async fn acquire_many(server: &TestServer, key: &str, product: i32, count: usize) -> Vec<String> {
    let engine = server.session(key).await;
    let mut tasks = JoinSet::new();
    for task in 0..32.min(count) {
        let mut engine = engine.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in (task..count).step_by(32) {
                let engine_id = format!("engine-{product}-{i}");
                ids.push(
                    acquire_lease(&mut engine, product, &engine_id)
                        .await
                        .lease_id,
                );
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ids.extend(done.expect("acquiring"));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_every_listing_cover_each_item_once_in_order() {
    let server = start().await;
    let locals = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let org = server.organization("acme", 5, 100, &locals).await;
    for other in ["bravo", "charlie", "delta", "echo"] {
        server.organization(other, 1, 1, &[]).await;
    }
    let operator = server.operator().await;
    let owner = server.admin(&org.owner_key).await;

    let ids = listed(&operator, &all_organizations(), 3, |o| o.org_id).await;
    assert_eq!(ids, ["acme", "bravo", "charlie", "delta", "echo"]);

    let mut expected = org.emails();
    expected.push(org.owner.clone());
    let emails = listed(&owner, &members_of("acme"), 3, email).await;
    assert_eq!(emails, sorted(expected.clone()));

    org.assign(&server, KRE, expected.clone()).await.unwrap();
    org.assign(&server, KSE, vec![org.email(1).into()])
        .await
        .unwrap();
    let kre = listed(&owner, &assignments_of("acme", KRE), 3, String::from).await;
    assert_eq!(kre, sorted(expected.clone()));
    let kse = listed(&owner, &assignments_of("acme", KSE), 3, String::from).await;
    assert_eq!(kse, [org.email(1)]);

    // The owner's key and one per member, in key id order.
    let keys = listed(&owner, &keys_of("acme"), 3, key_id).await;
    assert_eq!(keys.len(), 11);
    assert_eq!(keys, sorted(keys.clone()));
    // A member sees only their own keys, however the others fall across pages.
    let mut member = server.admin(org.key(3)).await;
    for _ in 0..2 {
        create_key(&mut member, "acme", org.email(3)).await;
    }
    let own = listed(&member, &keys_of("acme"), 1, key_id).await;
    assert_eq!(own.len(), 3);
    let all_keys = listed(&owner, &keys_of("acme"), 1000, key_id).await;
    assert_eq!(all_keys.len(), 13);
    assert!(own.iter().all(|id| all_keys.contains(id)));

    // Sessions are listed in the lease table's order: the same by pages of 3 as in one
    // page, each live session exactly once; the product filter holds across pages.
    let mut granted = acquire_many(&server, org.key(0), KRE, 7).await;
    let kse_lease = acquire_lease(&mut server.session(org.key(1)).await, KSE, "kse-1").await;
    granted.push(kse_lease.lease_id.clone());
    let by_three = listed(&owner, &sessions_of("acme", 0), 3, lease_id).await;
    let in_one = listed(&owner, &sessions_of("acme", 0), 1000, lease_id).await;
    assert_eq!(by_three, in_one);
    assert_eq!(sorted(by_three), sorted(granted.clone()));
    let only_kre = listed(&owner, &sessions_of("acme", KRE), 2, lease_id).await;
    assert_eq!(only_kre.len(), 7);
    assert!(!only_kre.contains(&kse_lease.lease_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_listing_pages_by_default_and_the_cli_prints_every_item() {
    let server = start().await;
    let org = server.organization("big", 1, 1, &[]).await;
    let mut expected = add_members(&server, "big", 2_500).await;
    expected.push(org.owner.clone());
    let expected = sorted(expected);
    let mut operator = server.operator().await;

    // No page_size (an older client): the default page, and a token to go on.
    let (first, token) = page(&operator, &members_of("big"), 0, String::new())
        .await
        .unwrap();
    let first: Vec<String> = first.into_iter().map(email).collect();
    assert_eq!(first.len(), limits::LIST_PAGE_SIZE_DEFAULT);
    assert_eq!(first, expected[..limits::LIST_PAGE_SIZE_DEFAULT]);
    assert!(!token.is_empty());
    let pages = walk(&operator, &members_of("big"), 0).await;
    assert_eq!(
        pages.len(),
        2_501_usize.div_ceil(limits::LIST_PAGE_SIZE_DEFAULT)
    );
    let emails: Vec<String> = pages.into_iter().flatten().map(email).collect();
    assert_eq!(emails, expected);

    // A page_size past the maximum is lowered to it, and the answer stays in its bound.
    let request = proto::ListMembersRequest {
        page_size: i32::MAX,
        ..members_of("big")
    };
    let answer = operator.list_members(request).await.unwrap().into_inner();
    assert_eq!(answer.members.len(), limits::LIST_PAGE_SIZE_MAX);
    assert!(prost::Message::encoded_len(&answer) <= limits::LIST_RESPONSE_BYTES_MAX);
    let negative = page(&operator, &members_of("big"), -1, String::new()).await;
    assert_status(negative, Code::InvalidArgument, "page_size");

    // The CLI walks the pages itself (1000 at a time) and prints every member, as a
    // table and as one JSON answer.
    let table = cli(&server, &["member", "list", "big"]).await;
    let printed: Vec<String> = table
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|cell| cell.contains('@'))
        .map(str::to_string)
        .collect();
    assert_eq!(printed, expected);
    let json = cli(&server, &["member", "list", "big", "--json"]).await;
    let answer: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let listed = answer["members"].as_array().expect("a members array");
    assert_eq!(listed.len(), expected.len());
    assert_eq!(listed[2_500]["email"], expected[2_500]);
}

/// Runs the real binary as a client of `server` with the operator key; returns its
/// standard output, asserting it succeeded.
async fn cli(server: &TestServer, args: &[&str]) -> String {
    let output = tokio::process::Command::from(daemon::command())
        .args(args)
        .args(["--addr", &server.url(), "--key", OPERATOR_KEY])
        .output()
        .await
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "seatbroker {args:?}: {stderr}");
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_tokens_and_tokens_reused_elsewhere_are_invalid_argument() {
    let server = start().await;
    let org = server.organization("acme", 2, 10, &["a", "b", "c"]).await;
    server.organization("other", 1, 1, &["x", "y", "z"]).await;
    let operator = server.operator().await;
    let (_, token) = page(&operator, &members_of("acme"), 1, String::new())
        .await
        .unwrap();
    assert!(!token.is_empty());

    let reused = page(&operator, &members_of("other"), 1, token.clone()).await;
    assert_status(reused, Code::InvalidArgument, "another org_id");
    let elsewhere = page(&operator, &keys_of("acme"), 1, token.clone()).await;
    assert_status(elsewhere, Code::InvalidArgument, "another List call");

    let mut flipped = token.clone().into_bytes();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    let garbled = [
        "hello".to_string(),
        String::from_utf8(flipped).unwrap(),
        token[..token.len() - 3].to_string(),
        "A".repeat(limits::LIST_PAGE_TOKEN_BYTES_MAX + 1),
        "%%%".to_string(),
    ];
    for bad in &garbled {
        let answer = page(&operator, &members_of("acme"), 1, bad.clone()).await;
        assert_status(
            answer,
            Code::InvalidArgument,
            "not a token this daemon issued",
        );
        let answer = page(&operator, &all_organizations(), 1, bad.clone()).await;
        assert_status(
            answer,
            Code::InvalidArgument,
            "not a token this daemon issued",
        );
    }

    org.assign(&server, KRE, org.emails()).await.unwrap();
    let (_, kre_token) = page(&operator, &assignments_of("acme", KRE), 1, String::new())
        .await
        .unwrap();
    let as_kse = page(&operator, &assignments_of("acme", KSE), 1, kre_token).await;
    assert_status(as_kse, Code::InvalidArgument, "another org_id or product");

    acquire_many(&server, org.key(0), KRE, 3).await;
    let (_, any_token) = page(&operator, &sessions_of("acme", 0), 1, String::new())
        .await
        .unwrap();
    let as_kre = page(&operator, &sessions_of("acme", KRE), 1, any_token.clone()).await;
    assert_status(as_kre, Code::InvalidArgument, "another org_id or product");
    let other_org = page(&operator, &sessions_of("other", 0), 1, any_token).await;
    assert_status(
        other_org,
        Code::InvalidArgument,
        "another org_id or product",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_sessions_list_completely_by_pages() {
    let server = start().await;
    let org = server
        .licensed_organization("fleet", 1, 5_000, &["runner"])
        .await;
    let granted = acquire_many(&server, org.key(0), KRE, 3_000).await;
    let owner = server.admin(&org.owner_key).await;
    let pages = walk(&owner, &sessions_of("fleet", 0), 0).await;
    assert!(pages.len() >= 3_000_usize.div_ceil(limits::LIST_PAGE_SIZE_DEFAULT));
    let granted = sorted(granted);
    let ids: Vec<String> = pages.into_iter().flatten().map(lease_id).collect();
    assert_eq!(ids.len(), granted.len(), "each session listed once");
    assert_eq!(sorted(ids), granted);

    let table = cli(&server, &["session", "list", "fleet"]).await;
    let printed: Vec<String> = table
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|cell| cell.starts_with("ls_"))
        .map(str::to_string)
        .collect();
    assert_eq!(printed.len(), granted.len(), "the CLI prints every session");
    assert!(
        sorted(printed) == granted,
        "the CLI prints the sessions listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_token_from_before_a_restart_is_refused_with_what_to_do() {
    let server = start().await;
    let org = server.licensed_organization("acme", 1, 10, &["a"]).await;
    acquire_many(&server, org.key(0), KRE, 3).await;
    let operator = server.operator().await;
    let (_, token) = page(&operator, &sessions_of("acme", 0), 1, String::new())
        .await
        .unwrap();
    let data_dir = server.stop().await;

    let server = start_in(data_dir, std::time::Duration::from_secs(30)).await;
    let operator = server.operator().await;
    let stale = page(&operator, &sessions_of("acme", 0), 1, token).await;
    assert_status(
        stale,
        Code::FailedPrecondition,
        "list again from the first page",
    );
    let again = listed(&operator, &sessions_of("acme", 0), 1, lease_id).await;
    assert_eq!(again.len(), 3, "the restored sessions are listed");
}
