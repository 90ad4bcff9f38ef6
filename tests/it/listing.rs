//! Listings page (AIP-158) over real gRPC: every List call covers each item exactly
//! once and in order across pages, a request without `page_size` gets the default page
//! and a token, a larger one is lowered to the maximum, a garbled token or one reused
//! with other filters is INVALID_ARGUMENT, and the CLI pages through by itself.

use std::collections::HashSet;
use std::future::Future;

use crate::harness::*;
use seatbroker::client::Authorized;
use seatbroker::limits;
use seatbroker::proto::{self, admin_service_client::AdminServiceClient};
use tokio::task::JoinSet;
use tonic::{Code, Status};

type Admin = AdminServiceClient<Authorized>;
type Page<T> = Result<(Vec<T>, String), Status>;

/// Walks a listing from its first page with `page_size` until `next_page_token` is
/// empty; returns the pages. Every page holds at most `page_size` items (0: the
/// default).
async fn walk<T, F, Fut>(page_size: i32, mut call: F) -> Vec<Vec<T>>
where
    F: FnMut(i32, String) -> Fut,
    Fut: Future<Output = Page<T>>,
{
    let size_max = match page_size {
        0 => limits::LIST_PAGE_SIZE_DEFAULT,
        size => (size as usize).min(limits::LIST_PAGE_SIZE_MAX),
    };
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let (items, next) = call(page_size, token).await.expect("a page");
        assert!(items.len() <= size_max, "a page past its size");
        pages.push(items);
        if next.is_empty() {
            return pages;
        }
        token = next;
    }
    panic!("the listing never ended");
}

async fn members(
    mut admin: Admin,
    org: String,
    page_size: i32,
    page_token: String,
) -> Page<String> {
    let request = proto::ListMembersRequest {
        org_id: org,
        page_size,
        page_token,
    };
    let page = admin.list_members(request).await?.into_inner();
    let emails = page.members.into_iter().map(|m| m.email).collect();
    Ok((emails, page.next_page_token))
}

async fn organizations(mut admin: Admin, page_size: i32, page_token: String) -> Page<String> {
    let request = proto::ListOrganizationsRequest {
        page_size,
        page_token,
    };
    let page = admin.list_organizations(request).await?.into_inner();
    let ids = page.organizations.into_iter().map(|o| o.org_id).collect();
    Ok((ids, page.next_page_token))
}

async fn assignments(
    mut admin: Admin,
    org: String,
    product: i32,
    page_size: i32,
    page_token: String,
) -> Page<String> {
    let request = proto::ListAssignmentsRequest {
        org_id: org,
        product,
        page_size,
        page_token,
    };
    let page = admin.list_assignments(request).await?.into_inner();
    Ok((page.emails, page.next_page_token))
}

async fn api_keys(
    mut admin: Admin,
    org: String,
    page_size: i32,
    page_token: String,
) -> Page<String> {
    let request = proto::ListApiKeysRequest {
        org_id: org,
        page_size,
        page_token,
    };
    let page = admin.list_api_keys(request).await?.into_inner();
    let ids = page.keys.into_iter().map(|k| k.key_id).collect();
    Ok((ids, page.next_page_token))
}

async fn sessions(
    mut admin: Admin,
    org: String,
    product: i32,
    page_size: i32,
    page_token: String,
) -> Page<String> {
    let request = proto::ListSessionsRequest {
        org_id: org,
        product,
        page_size,
        page_token,
    };
    let page = admin.list_sessions(request).await?.into_inner();
    let ids = page.sessions.into_iter().map(|s| s.lease_id).collect();
    Ok((ids, page.next_page_token))
}

/// The items of a walk in the order listed; asserts none is listed twice.
#[track_caller]
fn concat_once(pages: Vec<Vec<String>>) -> Vec<String> {
    let all: Vec<String> = pages.into_iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "an item was listed twice");
    all
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
                let request = proto::AddMemberRequest {
                    org_id: org.clone(),
                    email,
                    role: 0,
                };
                operator.add_member(request).await.expect("add member");
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
    let acme = || org.id.clone();

    let listed = concat_once(
        walk(3, |size, token| {
            organizations(operator.clone(), size, token)
        })
        .await,
    );
    assert_eq!(listed, ["acme", "bravo", "charlie", "delta", "echo"]);

    let mut expected = org.emails();
    expected.push(org.owner.clone());
    let listed =
        concat_once(walk(3, |size, token| members(owner.clone(), acme(), size, token)).await);
    assert_eq!(listed, sorted(expected.clone()));

    org.assign(&server, KRE, expected.clone()).await.unwrap();
    org.assign(&server, KSE, vec![org.email(1).into()])
        .await
        .unwrap();
    let kre = |size, token| assignments(owner.clone(), acme(), KRE, size, token);
    assert_eq!(concat_once(walk(3, kre).await), sorted(expected.clone()));
    let kse = |size, token| assignments(owner.clone(), acme(), KSE, size, token);
    assert_eq!(concat_once(walk(3, kse).await), [org.email(1)]);

    // The owner's key and one per member, in key id order.
    let keys = concat_once(
        walk(3, |size, token| {
            api_keys(owner.clone(), acme(), size, token)
        })
        .await,
    );
    assert_eq!(keys.len(), 11);
    assert_eq!(keys, sorted(keys.clone()));
    // A member sees only their own keys, however the others fall across pages.
    let mut member = server.admin(org.key(3)).await;
    for _ in 0..2 {
        create_key(&mut member, "acme", org.email(3)).await;
    }
    let own = concat_once(
        walk(1, |size, token| {
            api_keys(member.clone(), acme(), size, token)
        })
        .await,
    );
    assert_eq!(own.len(), 3);
    let all_keys = concat_once(
        walk(1000, |size, token| {
            api_keys(owner.clone(), acme(), size, token)
        })
        .await,
    );
    assert_eq!(all_keys.len(), 13);
    assert!(own.iter().all(|id| all_keys.contains(id)));

    // Sessions are listed in the lease table's order: the same by pages of 3 as in one
    // page, each live session exactly once; the product filter holds across pages.
    let mut granted = acquire_many(&server, org.key(0), KRE, 7).await;
    let kse_lease = acquire_lease(&mut server.session(org.key(1)).await, KSE, "kse-1").await;
    granted.push(kse_lease.lease_id.clone());
    let any = |size, token| sessions(owner.clone(), acme(), 0, size, token);
    let by_three = concat_once(walk(3, any).await);
    let in_one = concat_once(walk(1000, any).await);
    assert_eq!(by_three, in_one);
    assert_eq!(sorted(by_three), sorted(granted.clone()));
    let only_kre = concat_once(
        walk(2, |size, token| {
            sessions(owner.clone(), acme(), KRE, size, token)
        })
        .await,
    );
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
    let big = || "big".to_string();

    // No page_size (an older client): the default page, and a token to go on.
    let (first, token) = members(operator.clone(), big(), 0, String::new())
        .await
        .unwrap();
    assert_eq!(first.len(), limits::LIST_PAGE_SIZE_DEFAULT);
    assert_eq!(first, expected[..limits::LIST_PAGE_SIZE_DEFAULT]);
    assert!(!token.is_empty());
    let pages = walk(0, |size, token| {
        members(operator.clone(), big(), size, token)
    })
    .await;
    assert_eq!(
        pages.len(),
        2_501_usize.div_ceil(limits::LIST_PAGE_SIZE_DEFAULT)
    );
    assert_eq!(concat_once(pages), expected);

    // A page_size past the maximum is lowered to it, and the answer stays in its bound.
    let request = proto::ListMembersRequest {
        org_id: big(),
        page_size: i32::MAX,
        page_token: String::new(),
    };
    let page = operator.list_members(request).await.unwrap().into_inner();
    assert_eq!(page.members.len(), limits::LIST_PAGE_SIZE_MAX);
    assert!(prost::Message::encoded_len(&page) <= limits::LIST_RESPONSE_BYTES_MAX);
    let negative = members(operator.clone(), big(), -1, String::new()).await;
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
    let page_one = |org: &str| members(operator.clone(), org.into(), 1, String::new());
    let (_, token) = page_one("acme").await.unwrap();
    assert!(!token.is_empty());

    let reused = members(operator.clone(), "other".into(), 1, token.clone()).await;
    assert_status(reused, Code::InvalidArgument, "another org_id");
    let elsewhere = api_keys(operator.clone(), "acme".into(), 1, token.clone()).await;
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
        let answer = members(operator.clone(), "acme".into(), 1, bad.clone()).await;
        assert_status(
            answer,
            Code::InvalidArgument,
            "not a token this daemon issued",
        );
        let answer = organizations(operator.clone(), 1, bad.clone()).await;
        assert_status(
            answer,
            Code::InvalidArgument,
            "not a token this daemon issued",
        );
    }

    org.assign(&server, KRE, org.emails()).await.unwrap();
    let (_, kre_token) = assignments(operator.clone(), "acme".into(), KRE, 1, String::new())
        .await
        .unwrap();
    let as_kse = assignments(operator.clone(), "acme".into(), KSE, 1, kre_token).await;
    assert_status(as_kse, Code::InvalidArgument, "another org_id or product");

    acquire_many(&server, org.key(0), KRE, 3).await;
    let (_, any_token) = sessions(operator.clone(), "acme".into(), 0, 1, String::new())
        .await
        .unwrap();
    let as_kre = sessions(operator.clone(), "acme".into(), KRE, 1, any_token.clone()).await;
    assert_status(as_kre, Code::InvalidArgument, "another org_id or product");
    let other_org = sessions(operator.clone(), "other".into(), 0, 1, any_token).await;
    assert_status(
        other_org,
        Code::InvalidArgument,
        "another org_id or product",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_sessions_list_completely_by_pages() {
    let server = start().await;
    let org = server.organization("fleet", 1, 5_000, &["runner"]).await;
    org.assign(&server, KRE, org.emails()).await.unwrap();
    let granted = acquire_many(&server, org.key(0), KRE, 3_000).await;
    let owner = server.admin(&org.owner_key).await;
    let pages = walk(0, |size, token| {
        sessions(owner.clone(), "fleet".into(), 0, size, token)
    })
    .await;
    assert!(pages.len() >= 3_000_usize.div_ceil(limits::LIST_PAGE_SIZE_DEFAULT));
    assert!(
        pages
            .iter()
            .all(|p| p.len() <= limits::LIST_PAGE_SIZE_DEFAULT)
    );
    let granted = sorted(granted);
    assert_eq!(sorted(concat_once(pages)), granted);

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
    let org = server.organization("acme", 1, 10, &["a"]).await;
    org.assign(&server, KRE, org.emails()).await.unwrap();
    acquire_many(&server, org.key(0), KRE, 3).await;
    let operator = server.operator().await;
    let (_, token) = sessions(operator, "acme".into(), 0, 1, String::new())
        .await
        .unwrap();
    let data_dir = server.stop().await;

    let server = start_in(data_dir, std::time::Duration::from_secs(30)).await;
    let operator = server.operator().await;
    let stale = sessions(operator.clone(), "acme".into(), 0, 1, token).await;
    assert_status(
        stale,
        Code::FailedPrecondition,
        "list again from the first page",
    );
    let again = concat_once(
        walk(1, |size, token| {
            sessions(operator.clone(), "acme".into(), 0, size, token)
        })
        .await,
    );
    assert_eq!(again.len(), 3, "the restored sessions are listed");
}
