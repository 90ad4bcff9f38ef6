//! The JSON form of `AdminService` (`POST /seatbroker.v1.AdminService/<Method>` over
//! HTTP/1.1 on the gRPC port): every method answers what gRPC answers for the same
//! request; errors carry the same code and message, with Connect's HTTP status;
//! callers without a key, with a bad key or with another organization's key are
//! refused as over gRPC; the body's size is bounded as gRPC messages are.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::StatusCode;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;

use crate::harness::http::{self, post_json, post_raw, try_post_raw};
use crate::harness::*;

fn descriptors() -> DescriptorPool {
    DescriptorPool::decode(seatbroker::proto::FILE_DESCRIPTOR_SET).expect("our descriptors")
}

/// Encoded messages in and out: the test's gRPC client needs no type per method.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What a call answered, in one form for both encodings: the message as proto3 JSON
/// (every field present), or the error's Connect code name and message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Answer(Value),
    Error { code: String, message: String },
}

fn to_json(message: &DynamicMessage) -> Value {
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(
            &mut serializer,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .expect("serializable");
    serde_json::from_slice(&serializer.into_inner()).expect("JSON")
}

/// Connect's name of a gRPC code.
fn code_name(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut snake = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake.replace("cancelled", "canceled")
}

/// `method` with `body` over gRPC: the body is made into the request message from its
/// JSON by the test's own descriptors.
async fn grpc_call(server: &TestServer, method: &str, key: &str, body: &Value) -> Outcome {
    let pool = descriptors();
    let service = pool
        .get_service_by_name("seatbroker.v1.AdminService")
        .expect("AdminService");
    let descriptor = service
        .methods()
        .find(|m| m.name() == method)
        .expect("a method of AdminService");
    let request = DynamicMessage::deserialize(descriptor.input(), body).expect("a valid request");
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(Bytes::from(request.encode_to_vec()));
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).expect("ASCII"),
    );
    let path = format!("/seatbroker.v1.AdminService/{method}")
        .parse()
        .expect("a path");
    match grpc.unary(request, path, RawCodec).await {
        Ok(answer) => {
            let message = DynamicMessage::decode(descriptor.output(), answer.into_inner())
                .expect("an answer of the output type");
            Outcome::Answer(to_json(&message))
        }
        Err(status) => Outcome::Error {
            code: code_name(status.code()),
            message: status.message().to_owned(),
        },
    }
}

/// `method` with `body` over the JSON API; also checks that an error's HTTP status is
/// Connect's for its code.
async fn json_call(server: &TestServer, method: &str, key: &str, body: &Value) -> Outcome {
    let answer = post_json(server.addr, method, Some(key), body).await;
    assert_eq!(
        answer.headers["content-type"],
        "application/json",
        "{method}: {}",
        answer.text()
    );
    let json = answer.json();
    if answer.status == StatusCode::OK {
        return Outcome::Answer(json);
    }
    let code = json["code"].as_str().expect("an error code").to_owned();
    assert_eq!(
        answer.status,
        connect_http_status(&code),
        "{method}: HTTP status of {code}"
    );
    Outcome::Error {
        code,
        message: json["message"].as_str().expect("a message").to_owned(),
    }
}

/// The HTTP status the Connect protocol gives each code (the table in the README).
fn connect_http_status(code: &str) -> StatusCode {
    let status = match code {
        "canceled" => 499,
        "unknown" | "internal" | "data_loss" => 500,
        "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
        "deadline_exceeded" => 504,
        "not_found" => 404,
        "already_exists" | "aborted" => 409,
        "permission_denied" => 403,
        "resource_exhausted" => 429,
        "unimplemented" => 501,
        "unavailable" => 503,
        "unauthenticated" => 401,
        other => panic!("no such code {other}"),
    };
    StatusCode::from_u16(status).expect("a status")
}

/// Fields that differ between two daemons given the same requests: secrets, ids drawn
/// at random, clocks, page tokens.
const VOLATILE_FIELDS: [&str; 14] = [
    // A usage series' clock-bound figures (the test of its own checks them).
    "points",
    "startUnixMs",
    "endUnixMs",
    "keptSinceUnixMs",
    "generation",
    "secret",
    "keyId",
    "createdAtUnixMs",
    "atUnixMs",
    "acquiredAtUnixMs",
    "expiresAtUnixMs",
    "nextPageToken",
    "detail",
    "leaseId",
];

fn without_volatile(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, field)| {
                    if VOLATILE_FIELDS.contains(&name.as_str()) {
                        (name.clone(), Value::String("…".into()))
                    } else {
                        (name.clone(), without_volatile(field))
                    }
                })
                .collect(),
        ),
        // Listings ordered by an id drawn at random differ in order only.
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(without_volatile).collect();
            items.sort_by_key(|item| item.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

/// The outcome with what each daemon draws for itself masked (also in messages).
fn comparable(outcome: &Outcome, drawn: &Drawn) -> Outcome {
    match outcome {
        Outcome::Answer(value) => Outcome::Answer(without_volatile(value)),
        Outcome::Error { code, message } => Outcome::Error {
            code: code.clone(),
            message: drawn.mask(message),
        },
    }
}

/// Per daemon: what a step needs from earlier answers (the key and lease ids, which
/// each daemon draws for itself).
#[derive(Default)]
struct Drawn {
    key_id: String,
    lease_id: String,
}

impl Drawn {
    fn fill(&self, body: &Value) -> Value {
        let text = body
            .to_string()
            .replace("$KEY_ID", &self.key_id)
            .replace("$LEASE_ID", &self.lease_id);
        serde_json::from_str(&text).expect("JSON")
    }

    fn mask(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for drawn in [&self.key_id, &self.lease_id] {
            if !drawn.is_empty() {
                text = text.replace(drawn.as_str(), "…");
            }
        }
        text
    }

    fn learn(&mut self, outcome: &Outcome) {
        if let Outcome::Answer(value) = outcome {
            if let Some(key_id) = value["key"]["keyId"].as_str() {
                self.key_id = key_id.to_owned();
            }
            if let Some(lease_id) = value["sessions"][0]["leaseId"].as_str() {
                self.lease_id = lease_id.to_owned();
            }
        }
    }
}

/// Every `AdminService` method, as the operator (`op`) or the owner of `acme`, in an
/// order where each finds what it needs; some steps fail on purpose.
fn script() -> Vec<(&'static str, &'static str, Value)> {
    let org = "acme";
    vec![
        (
            "op",
            "CreateOrganization",
            json!({"orgId": org, "displayName": "Acme", "ownerEmail": "owner@acme.test", "quota": {"kseSeats": 2, "kreSessions": 3}}),
        ),
        (
            "op",
            "CreateOrganization",
            json!({"orgId": "other", "displayName": "Other", "ownerEmail": "owner@other.test", "quota": {"kseSeats": 1, "kreSessions": 1}}),
        ),
        (
            "op",
            "CreateOrganization",
            json!({"orgId": org, "ownerEmail": "x@acme.test"}),
        ),
        ("op", "GetOrganization", json!({"orgId": org})),
        ("op", "SetQuota", json!({"orgId": org, "kreSessions": 4})),
        ("op", "ListOrganizations", json!({"pageSize": 1})),
        (
            "op",
            "RenameOrganization",
            json!({"orgId": "other", "displayName": "Other Ltd"}),
        ),
        (
            "owner",
            "AddMember",
            json!({"orgId": org, "email": "ann@acme.test"}),
        ),
        (
            "owner",
            "AddMember",
            json!({"orgId": org, "email": "bob@acme.test", "role": "ROLE_MEMBER"}),
        ),
        (
            "owner",
            "AddMember",
            json!({"orgId": org, "email": "cid@acme.test", "role": 3}),
        ),
        (
            "owner",
            "SetRole",
            json!({"orgId": org, "email": "cid@acme.test", "role": "ROLE_ADMIN"}),
        ),
        ("owner", "ListMembers", json!({"orgId": org})),
        (
            "owner",
            "AssignLicenses",
            json!({"orgId": org, "product": "PRODUCT_KSE", "emails": ["ann@acme.test", "bob@acme.test"]}),
        ),
        (
            "owner",
            "AssignLicenses",
            json!({"orgId": org, "product": "PRODUCT_KSE", "emails": ["cid@acme.test"]}),
        ),
        (
            "owner",
            "AssignLicenses",
            json!({"orgId": org, "product": "PRODUCT_KSE", "emails": ["nobody@acme.test"]}),
        ),
        (
            "owner",
            "AssignLicenses",
            json!({"orgId": org, "product": "PRODUCT_KRE", "emails": ["owner@acme.test", "ann@acme.test"]}),
        ),
        (
            "owner",
            "TransferLicense",
            json!({"orgId": org, "product": "PRODUCT_KSE", "fromEmail": "bob@acme.test", "toEmail": "cid@acme.test"}),
        ),
        (
            "owner",
            "UnassignLicenses",
            json!({"orgId": org, "product": "PRODUCT_KSE", "emails": ["ann@acme.test", "dan@acme.test"]}),
        ),
        (
            "owner",
            "ListAssignments",
            json!({"orgId": org, "product": "PRODUCT_KSE"}),
        ),
        (
            "owner",
            "GetUsage",
            json!({"orgId": org, "windowSeconds": 3600}),
        ),
        (
            "owner",
            "GetUsageSeries",
            json!({"orgId": org, "product": "PRODUCT_KRE", "range": "USAGE_RANGE_DAY"}),
        ),
        (
            "owner",
            "CreateApiKey",
            json!({"orgId": org, "email": "ann@acme.test", "label": "laptop"}),
        ),
        ("owner", "ListApiKeys", json!({"orgId": org})),
        (
            "owner",
            "RevokeApiKey",
            json!({"orgId": org, "keyId": "$KEY_ID"}),
        ),
        (
            "owner",
            "RevokeApiKey",
            json!({"orgId": org, "keyId": "$KEY_ID"}),
        ),
        ("owner", "ListSessions", json!({"orgId": org})),
        (
            "owner",
            "TerminateSession",
            json!({"orgId": org, "leaseId": "$LEASE_ID"}),
        ),
        (
            "owner",
            "TerminateSession",
            json!({"orgId": org, "leaseId": "no-such-lease"}),
        ),
        (
            "owner",
            "RemoveMember",
            json!({"orgId": org, "email": "bob@acme.test"}),
        ),
        ("owner", "ListMembers", json!({"orgId": "other"})),
        (
            "owner",
            "ListAuditEvents",
            json!({"orgId": org, "limit": 5}),
        ),
        ("op", "DeleteOrganization", json!({"orgId": "other"})),
    ]
}

/// Two daemons given the same script, one through gRPC and one through JSON, answer
/// the same at each step (volatile fields aside), and the script reaches every
/// method of the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_answers_json_as_it_answers_grpc() {
    let servers = [start().await, start().await];
    let mut owner_keys: Vec<String> = Vec::new();
    let mut drawn = [Drawn::default(), Drawn::default()];
    let mut methods = std::collections::BTreeSet::new();
    for (step, (caller, method, body)) in script().into_iter().enumerate() {
        if caller == "owner" && owner_keys.is_empty() {
            // The owner's key (made by the operator, the same on both daemons) and a
            // KRE session of the owner's for ListSessions and TerminateSession.
            for server in &servers {
                let mut operator = server.operator().await;
                owner_keys.push(create_key(&mut operator, "acme", "owner@acme.test").await);
            }
        }
        if method == "ListSessions" {
            for (server, owner_key) in servers.iter().zip(&owner_keys) {
                let mut engine = server.session(owner_key).await;
                acquire_lease(&mut engine, KRE, "engine-1").await;
            }
        }
        methods.insert(method);
        let key = |i: usize| {
            if caller == "op" {
                OPERATOR_KEY
            } else {
                owner_keys[i].as_str()
            }
        };
        let by_grpc = grpc_call(&servers[0], method, key(0), &drawn[0].fill(&body)).await;
        let by_json = json_call(&servers[1], method, key(1), &drawn[1].fill(&body)).await;
        drawn[0].learn(&by_grpc);
        drawn[1].learn(&by_json);
        assert_eq!(
            comparable(&by_grpc, &drawn[0]),
            comparable(&by_json, &drawn[1]),
            "step {step}: {method} {body}"
        );
    }
    let all: std::collections::BTreeSet<String> = descriptors()
        .get_service_by_name("seatbroker.v1.AdminService")
        .expect("AdminService")
        .methods()
        .map(|m| m.name().to_owned())
        .collect();
    let covered: std::collections::BTreeSet<String> =
        methods.into_iter().map(str::to_owned).collect();
    assert_eq!(covered, all, "the script calls every AdminService method");
}

/// No key, a malformed key, an unknown key and another organization's key are refused
/// as over gRPC: 401 or 403, with the gRPC message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_key_or_of_another_organization_are_refused() {
    let server = start().await;
    let acme = server.organization("acme", 1, 1, &["ann"]).await;
    let other = server.organization("other", 1, 1, &[]).await;
    let list = json!({"orgId": "acme"});
    let answer = post_json(server.addr, "ListMembers", None, &list).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text());
    assert_eq!(answer.json()["code"], "unauthenticated");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("missing API key")
    );
    for bad in [
        "nonsense",
        "sbk_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let answer = post_json(server.addr, "ListMembers", Some(bad), &list).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{bad}: {}",
            answer.text()
        );
    }
    let answer = post_json(server.addr, "ListMembers", Some(&other.owner_key), &list).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("belongs to organization other")
    );
    // A member's key reads no admin listing.
    let answer = post_json(server.addr, "ListMembers", Some(acme.key(0)), &list).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
    // Only the operator makes organizations.
    let create = json!({"orgId": "mine", "displayName": "Mine", "ownerEmail": "x@mine.test", "quota": {"kseSeats": 1}});
    let answer = post_json(
        server.addr,
        "CreateOrganization",
        Some(&acme.owner_key),
        &create,
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
}

/// What is not a JSON call of a known method is refused with a message saying what
/// would be: a body that is not the request message, an unknown field, an unknown
/// method, GET, another content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_are_refused_with_what_would_be_accepted() {
    let server = start().await;
    let op = Some(OPERATOR_KEY);
    let answer = post_raw(
        server.addr,
        "ListOrganizations",
        op,
        Bytes::from_static(b"{\"pageSize\": "),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    assert_eq!(answer.json()["code"], "invalid_argument");
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("ListOrganizationsRequest")
    );
    let answer = post_json(
        server.addr,
        "ListOrganizations",
        op,
        &json!({"pageSise": 3}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("pageSise")
    );
    // An empty body is the empty message.
    let answer = post_raw(server.addr, "ListOrganizations", op, Bytes::new()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["organizations"], json!([]));
    let answer = post_json(server.addr, "Nope", op, &json!({})).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.text());
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("AssignLicenses")
    );
    let answer = http::get(server.addr, "/seatbroker.v1.AdminService/ListOrganizations").await;
    assert_eq!(
        answer.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "{}",
        answer.text()
    );
    let request = hyper::Request::post(format!(
        "http://{}/seatbroker.v1.AdminService/ListOrganizations",
        server.addr
    ))
    .header("content-type", "text/plain")
    .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
    .expect("a request");
    let answer = http::send(request).await;
    assert_eq!(
        answer.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        answer.text()
    );
    // gRPC on the same port still answers.
    assert!(organizations(&server.operator().await).await.is_empty());
}

/// A JSON body over the admin service's message limit is refused whether it announces
/// its length or streams it, and a call without a key is refused before its body is
/// read; the daemon serves on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_message_limit_are_refused() {
    let server = start().await;
    let limit = seatbroker::limits::REQUEST_BYTES_MAX;
    let mut huge = BytesMut::new();
    huge.put_slice(b"{\"orgId\": \"");
    huge.put_bytes(b'a', limit);
    huge.put_slice(b"\"}");
    let huge = huge.freeze();
    // Announced past the limit: refused before a byte of it is read.
    if let Some(answer) = refused_early(
        try_post_raw(server.addr, "ListMembers", Some(OPERATOR_KEY), huge.clone()).await,
    ) {
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            answer.text()
        );
        assert_eq!(answer.json()["code"], "resource_exhausted");
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .contains("larger than")
        );
    }
    // Streamed (chunked, no length announced): refused once past the limit.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = huge
        .chunks(64 * 1024)
        .map(|chunk| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
    let request = hyper::Request::post(format!(
        "http://{}/seatbroker.v1.AdminService/ListMembers",
        server.addr
    ))
    .header("content-type", "application/json")
    .header("authorization", format!("Bearer {OPERATOR_KEY}"))
    .body(body)
    .expect("a request");
    if let Some(answer) = refused_early(http::try_send(request).await) {
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            answer.text()
        );
        assert_eq!(answer.json()["code"], "resource_exhausted");
    }
    // Without a key: refused from the headers.
    if let Some(answer) = refused_early(try_post_raw(server.addr, "ListMembers", None, huge).await)
    {
        assert!(
            answer.status == StatusCode::UNAUTHORIZED
                || answer.status == StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            answer.text()
        );
    }
    let answer = post_json(
        server.addr,
        "ListOrganizations",
        Some(OPERATOR_KEY),
        &json!({}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// The answer to a body the daemon refuses from its headers or its first bytes, or
/// `None` when the client was still writing the body as the daemon answered and closed
/// the connection (a broken pipe or reset before the answer was read): refused either
/// way, never served. Any other failure fails the test.
fn refused_early(
    answer: Result<http::Answer, hyper_util::client::legacy::Error>,
) -> Option<http::Answer> {
    match answer {
        Ok(answer) => Some(answer),
        Err(error) => {
            let text = format!("{error:?}");
            assert!(
                text.contains("BodyWrite")
                    || text.contains("BrokenPipe")
                    || text.contains("ConnectionReset"),
                "neither an answer nor a refused body: {text}"
            );
            None
        }
    }
}

/// The usage series in JSON: the range by its name, int64 figures as strings (proto3
/// JSON), every point with its start, peak and denials, the quota once known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_series_answers_in_json() {
    let server = start().await;
    let acme = server.licensed_organization("acme", 0, 1, &["ann"]).await;
    acquire_lease(&mut server.session(acme.key(0)).await, KRE, "e-1").await;
    let answer = post_json(
        server.addr,
        "GetUsageSeries",
        Some(&acme.owner_key),
        &json!({"orgId": "acme", "product": "PRODUCT_KRE", "range": "USAGE_RANGE_WEEK"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let series = answer.json();
    assert_eq!(series["resolutionMs"], "3600000");
    assert_eq!(series["product"], "PRODUCT_KRE");
    let points = series["points"].as_array().expect("points");
    assert!(
        (168..=seatbroker::limits::USAGE_SERIES_POINTS_MAX).contains(&points.len()),
        "{} points",
        points.len()
    );
    let last = points.last().unwrap();
    assert_eq!(last["peakSessions"], 1);
    assert_eq!(last["quota"], 1);
    assert!(
        last["startUnixMs"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > 0
    );
    assert_eq!(series["activeSessions"], 1);
    // A member's key is refused as over gRPC.
    let answer = post_json(
        server.addr,
        "GetUsageSeries",
        Some(acme.key(0)),
        &json!({"orgId": "acme", "product": "PRODUCT_KRE", "range": "USAGE_RANGE_HOUR"}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
}

/// The console's page and files come with a strict policy: no inline script or style,
/// nothing from another origin, no framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let server = start().await;
    let page = http::get(server.addr, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("<title>seatbroker console</title>"));
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert!(
        !page.text().contains("<script>") && !page.text().contains("style="),
        "no inline script or style"
    );
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let file = http::get(server.addr, path).await;
        assert_eq!(file.status, StatusCode::OK, "{path}");
        assert!(
            file.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        // The SVG namespace is a name, not a place the page loads from.
        let text = file.text().replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path} names no other host"
        );
    }
    assert_eq!(
        http::get(server.addr, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
}
