//! Bad input gets a precise status and message, and changes nothing.

use crate::harness::*;
use seatbroker::limits;
use seatbroker::proto;
use tonic::Code;

fn organization(org_id: &str, name: &str, owner: &str) -> proto::CreateOrganizationRequest {
    proto::CreateOrganizationRequest {
        org_id: org_id.into(),
        display_name: name.into(),
        owner_email: owner.into(),
        quota: Some(proto::Quota::default()),
        ..Default::default()
    }
}

#[tokio::test]
async fn organization_fields_are_checked() {
    let server = start().await;
    let mut operator = server.operator().await;
    let cases = [
        (
            organization("", "Acme", "o@acme.test"),
            "org_id: must not be empty",
        ),
        (
            organization(
                &"a".repeat(limits::ORG_ID_BYTES_MAX + 1),
                "Acme",
                "o@acme.test",
            ),
            "at most 63",
        ),
        (
            organization("Acme Corp", "Acme", "o@acme.test"),
            "lowercase",
        ),
        (
            organization("acme", "", "o@acme.test"),
            "display_name: must not be empty",
        ),
        (
            organization(
                "acme",
                &"n".repeat(limits::DISPLAY_NAME_BYTES_MAX + 1),
                "o@acme.test",
            ),
            "display_name",
        ),
        (organization("acme", "Acme", "not-an-email"), "owner_email"),
    ];
    for (request, needle) in cases {
        assert_status(
            operator.create_organization(request).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let mut no_quota = organization("acme", "Acme", "o@acme.test");
    no_quota.quota = None;
    assert_status(
        operator.create_organization(no_quota).await,
        Code::InvalidArgument,
        "quota: is required",
    );
    let mut huge_quota = organization("acme", "Acme", "o@acme.test");
    huge_quota.quota = Some(proto::Quota {
        kse_seats: limits::KSE_SEATS_MAX + 1,
        kre_sessions: 0,
        expires_at_unix_ms: 0,
    });
    assert_status(
        operator.create_organization(huge_quota).await,
        Code::InvalidArgument,
        "kse_seats",
    );
    let listed = organizations(&operator).await;
    assert!(listed.is_empty(), "nothing was created");
    operator
        .create_organization(organization("acme", "Acme", "o@acme.test"))
        .await
        .unwrap();
    assert_status(
        operator
            .create_organization(organization("acme", "Acme", "o@acme.test"))
            .await,
        Code::AlreadyExists,
        "already exists",
    );
}

#[tokio::test]
async fn assignment_batches_are_checked() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &["a"]).await;
    let batch = |product: i32, emails: Vec<String>| proto::AssignLicensesRequest {
        org_id: org.id.clone(),
        product,
        emails,
    };
    let mut owner = server.admin(&org.owner_key).await;
    let too_many: Vec<String> = (0..=limits::EMAILS_PER_REQUEST_MAX)
        .map(|i| format!("u{i}@acme.test"))
        .collect();
    let cases = [
        (batch(KSE, vec![]), "at least one email"),
        (batch(KSE, too_many), "split the batch"),
        (
            batch(KSE, vec![org.email(0).into(), org.email(0).to_uppercase()]),
            "more than once",
        ),
        (
            batch(KSE, vec!["not an email".into()]),
            "not an email address",
        ),
        (batch(0, vec![org.email(0).into()]), "PRODUCT_KSE"),
        (batch(7, vec![org.email(0).into()]), "not a product"),
    ];
    for (request, needle) in cases {
        assert_status(
            owner.assign_licenses(request).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let usage = org.usage(&server, KSE).await;
    assert_eq!(usage.assigned, 0, "nothing was assigned");
}

#[tokio::test]
async fn unknown_things_are_not_found() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &["a"]).await;
    let mut operator = server.operator().await;
    let usage = operator
        .get_usage(proto::GetUsageRequest {
            org_id: "nowhere".into(),
            window_seconds: 0,
        })
        .await;
    assert_status(usage, Code::NotFound, "organization nowhere does not exist");
    let revoke = proto::RevokeApiKeyRequest {
        org_id: org.id.clone(),
        key_id: "000000000000".into(),
    };
    assert_status(
        operator.revoke_api_key(revoke).await,
        Code::NotFound,
        "does not exist",
    );
    let mut engine = server.session(org.key(0)).await;
    let unknown = proto::HeartbeatRequest {
        lease_id: format!("ls_{}", "f".repeat(32)),
        generation: 1,
    };
    assert_status(
        engine.heartbeat(unknown).await,
        Code::NotFound,
        "does not exist",
    );
    let malformed = proto::ReleaseRequest {
        lease_id: "lease-1".into(),
        generation: 1,
    };
    assert_status(
        engine.release(malformed).await,
        Code::InvalidArgument,
        "not a lease id",
    );
}

#[tokio::test]
async fn engine_fields_are_checked() {
    let server = start().await;
    let org = server.licensed_organization("acme", 5, 5, &["a"]).await;
    let mut engine = server.session(org.key(0)).await;
    let mut request = acquire_request(KRE, "");
    assert_status(
        engine.acquire(request.clone()).await,
        Code::InvalidArgument,
        "engine_id: must not be empty",
    );
    request.engine_id = "e".repeat(limits::ENGINE_ID_BYTES_MAX + 1);
    assert_status(
        engine.acquire(request.clone()).await,
        Code::InvalidArgument,
        "engine_id",
    );
    request.engine_id = "e".into();
    request.hostname = "h\u{0}".into();
    assert_status(
        engine.acquire(request.clone()).await,
        Code::InvalidArgument,
        "hostname: character 2 is U+0000, a control character",
    );
    request.hostname = "h".into();
    request.product = 0;
    assert_status(
        engine.acquire(request).await,
        Code::InvalidArgument,
        "product",
    );
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 0);
}

#[tokio::test]
async fn oversized_requests_are_refused_by_the_transport() {
    let server = start().await;
    let mut operator = server.operator().await;
    let mut request = organization("acme", "Acme", "o@acme.test");
    request.display_name = "x".repeat(limits::REQUEST_BYTES_MAX + 1);
    assert_status(
        operator.create_organization(request).await,
        Code::OutOfRange,
        "",
    );
}

#[tokio::test]
async fn unicode_spellings_of_one_email_are_one_member() {
    let server = start().await;
    let org = server.organization("acme", 5, 5, &[]).await;
    let mut owner = server.admin(&org.owner_key).await;
    let add = |email: &str| proto::AddMemberRequest {
        org_id: org.id.clone(),
        email: email.into(),
        role: 0,
    };
    let added = owner
        .add_member(add("ÄLICE@Example.com"))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(added.email, "älice@example.com");
    // Lowercase, decomposed (A + U+0308) and fullwidth spellings are the same person.
    for spelling in [
        "älice@example.com",
        "A\u{0308}lice@example.com",
        "ＡＬＩＣＥ@example.com".replace('Ａ', "Ä").as_str(),
    ] {
        assert_status(
            owner.add_member(add(spelling)).await,
            Code::AlreadyExists,
            "älice@example.com is already a member",
        );
    }
    owner.add_member(add("ｂｏｂ＠example.com")).await.unwrap();
    assert_status(
        owner.add_member(add("BOB@example.com")).await,
        Code::AlreadyExists,
        "bob@example.com is already a member",
    );
    let organizations = organizations(&server.operator().await).await;
    assert_eq!(organizations[0].member_count, 3, "the owner, älice and bob");
}

/// One character of each kind that must never reach an identifier: zero-width,
/// bidirectional controls (override, isolate, mark), the BOM, a soft hyphen, a tag
/// character and a C1 control.
const INVISIBLE: [char; 9] = [
    '\u{200B}',
    '\u{200D}',
    '\u{202E}',
    '\u{2066}',
    '\u{200F}',
    '\u{FEFF}',
    '\u{00AD}',
    '\u{E0041}',
    '\u{0085}',
];

/// Asserts INVALID_ARGUMENT naming `field` and the code point of `c`.
#[track_caller]
fn refused_naming<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str, c: char) {
    let needle = format!("{field}: character");
    let code = format!("U+{:04X}", c as u32);
    match &result {
        Err(status) if status.message().contains(&code) => {}
        _ => panic!("{field} with {code}: expected a refusal naming it, got {result:?}"),
    }
    assert_status(result, Code::InvalidArgument, &needle);
}

#[tokio::test]
async fn invisible_and_bidi_characters_are_refused_in_every_identifier() {
    let server = start().await;
    let org = server.licensed_organization("acme", 5, 5, &["a"]).await;
    let mut operator = server.operator().await;
    let mut owner = server.admin(&org.owner_key).await;
    let mut engine = server.session(org.key(0)).await;
    for c in INVISIBLE {
        let sneaky = |text: &str| format!("{text}{c}x");
        let create = |org_id: &str, name: &str, owner: &str| organization(org_id, name, owner);
        let request = create(&sneaky("evil"), "Evil", "o@evil.test");
        refused_naming(operator.create_organization(request).await, "org_id", c);
        let request = create("evil", &sneaky("Evil"), "o@evil.test");
        refused_naming(
            operator.create_organization(request).await,
            "display_name",
            c,
        );
        let request = create("evil", "Evil", &format!("o{c}@evil.test"));
        refused_naming(
            operator.create_organization(request).await,
            "owner_email",
            c,
        );
        let member = proto::AddMemberRequest {
            org_id: org.id.clone(),
            email: format!("a{c}@acme.test"),
            role: 0,
        };
        refused_naming(owner.add_member(member).await, "email", c);
        let key = proto::CreateApiKeyRequest {
            org_id: org.id.clone(),
            email: String::new(),
            label: sneaky("laptop"),
            ..Default::default()
        };
        refused_naming(owner.create_api_key(key).await, "label", c);
        let acquire = |engine_id: String, hostname: String, label: String| proto::AcquireRequest {
            engine_id,
            hostname,
            label,
            ..acquire_request(KRE, "")
        };
        let fine = || "e1".to_owned();
        let request = acquire(sneaky("e"), fine(), fine());
        refused_naming(engine.acquire(request).await, "engine_id", c);
        let request = acquire(fine(), sneaky("host"), fine());
        refused_naming(engine.acquire(request).await, "hostname", c);
        let request = acquire(fine(), fine(), sneaky("l"));
        refused_naming(engine.acquire(request).await, "label", c);
    }
    // Nothing was created along the way.
    assert_eq!(organizations(&operator).await.len(), 1);
    assert_eq!(org.usage(&server, KRE).await.active_sessions, 0);
}
