//! HTTP/1.1 to the daemon's listener, as a browser or `curl` speaks it: the JSON API
//! (`POST /seatbroker.v1.AdminService/<Method>`) and the console's files.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An answer: its status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` over a new HTTP/1.1 connection to `addr`.
pub async fn send<B>(request: Request<B>) -> Answer
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    try_send(request).await.expect("an HTTP answer")
}

/// [`send`], with the client's error when no answer could be read: a server that
/// refuses a body from its headers answers and closes, and a client still writing the
/// body may see the closed connection before the answer.
pub async fn try_send<B>(request: Request<B>) -> Result<Answer, hyper_util::client::legacy::Error>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let response =
        tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
            .await
            .expect("an answer within 30 s")?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the whole body").to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `POST /seatbroker.v1.AdminService/<method>` with `body` as JSON, authorized by
/// `key` when given.
pub async fn post_json(
    addr: SocketAddr,
    method: &str,
    key: Option<&str>,
    body: &serde_json::Value,
) -> Answer {
    post_raw(addr, method, key, Bytes::from(body.to_string())).await
}

/// Like [`post_json`], with the body's bytes as given.
pub async fn post_raw(addr: SocketAddr, method: &str, key: Option<&str>, body: Bytes) -> Answer {
    try_post_raw(addr, method, key, body)
        .await
        .expect("an HTTP answer")
}

/// [`post_raw`], with the client's error when no answer could be read (see
/// [`try_send`]).
pub async fn try_post_raw(
    addr: SocketAddr,
    method: &str,
    key: Option<&str>,
    body: Bytes,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let mut request = Request::post(format!("http://{addr}/seatbroker.v1.AdminService/{method}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    try_send(request.body(Full::new(body)).expect("a request")).await
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("a request");
    send(request).await
}
