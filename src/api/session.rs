//! `SessionService`: acquire, heartbeat and release, for runtime engines.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::channel::{self, EventStream, StreamRegistry};
use super::convert;
use super::status::to_status;
use crate::activity::Activity;
use crate::broker::{Broker, EngineRequest};
use crate::domain::DomainError;
use crate::domain::LeaseId;
use crate::domain::types::{check_optional_text, check_required_text};
use crate::limits;
use crate::proto::{self, session_service_server::SessionService};

pub struct SessionApi {
    broker: Arc<Broker>,
    /// Told of refused acquires (metrics, usage windows, audit).
    activity: Arc<Activity>,
    /// The open session streams and the leases they hold.
    streams: Arc<StreamRegistry>,
}

impl SessionApi {
    pub fn new(broker: Arc<Broker>, activity: Arc<Activity>, streams: Arc<StreamRegistry>) -> Self {
        SessionApi {
            broker,
            activity,
            streams,
        }
    }

    fn expires_at_unix_ms(&self, remaining: Duration) -> i64 {
        self.broker.clock().unix_ms() + remaining.as_millis() as i64
    }
}

/// The validated fields of an acquire, unary or streamed.
pub(super) fn engine_fields(
    product: i32,
    engine_id: &str,
    hostname: &str,
    label: &str,
) -> Result<EngineRequest, DomainError> {
    let product = convert::product(product)?;
    check_required_text("engine_id", engine_id, limits::ENGINE_ID_BYTES_MAX)?;
    check_optional_text("hostname", hostname, limits::HOSTNAME_BYTES_MAX)?;
    check_optional_text("label", label, limits::LABEL_BYTES_MAX)?;
    Ok(EngineRequest {
        product,
        engine_id: engine_id.to_owned(),
        hostname: hostname.to_owned(),
        label: label.to_owned(),
    })
}

/// The validated acquire and its wait (`wait_ms`, at most `limits::ACQUIRE_WAIT_MS_MAX`).
fn engine_request(raw: &proto::AcquireRequest) -> Result<(EngineRequest, Duration), DomainError> {
    if raw.wait_ms > limits::ACQUIRE_WAIT_MS_MAX {
        return Err(DomainError::invalid(
            "wait_ms",
            format!(
                "{} ms is longer than the longest wait, {} ms",
                raw.wait_ms,
                limits::ACQUIRE_WAIT_MS_MAX
            ),
        ));
    }
    let engine = engine_fields(raw.product, &raw.engine_id, &raw.hostname, &raw.label)?;
    Ok((engine, Duration::from_millis(raw.wait_ms.into())))
}

fn duration_ms(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    type ChannelStream = EventStream;

    async fn channel(
        &self,
        request: Request<tonic::Streaming<proto::ChannelRequest>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        channel::open(&self.broker, &self.activity, &self.streams, request)
    }

    async fn acquire(
        &self,
        request: Request<proto::AcquireRequest>,
    ) -> Result<Response<proto::AcquireResponse>, Status> {
        let principal = super::principal(&self.broker, &request)?;
        let (engine, wait) = engine_request(request.get_ref()).map_err(to_status)?;
        let granted = if wait.is_zero() {
            self.broker.acquire(&principal, &engine).await
        } else {
            // A long poll: dropping this future (the call cancelled) leaves the queue.
            self.broker.acquire_waiting(&principal, &engine, wait).await
        };
        let granted = match granted {
            Ok(granted) => granted,
            Err(error) => {
                self.activity
                    .acquire_denied(&principal, engine.product, &error);
                return Err(to_status(error));
            }
        };
        let timing = self.broker.leases().timing();
        let org = principal
            .org()
            .expect("the broker grants leases to members only");
        let lease = convert::lease_to_wire(
            &granted.lease,
            org,
            duration_ms(timing.ttl),
            duration_ms(timing.heartbeat_interval),
            self.expires_at_unix_ms(timing.ttl),
        );
        Ok(Response::new(proto::AcquireResponse {
            lease: Some(lease),
            resumed: granted.resumed,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.into_inner();
        let id = LeaseId::parse(&body.lease_id).map_err(to_status)?;
        let remaining = self
            .broker
            .heartbeat(&principal, id, body.generation)
            .map_err(to_status)?;
        Ok(Response::new(proto::HeartbeatResponse {
            expires_at_unix_ms: self.expires_at_unix_ms(remaining),
            ttl_ms: duration_ms(self.broker.leases().timing().ttl),
        }))
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseResponse>, Status> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.into_inner();
        let id = LeaseId::parse(&body.lease_id).map_err(to_status)?;
        self.broker
            .release(&principal, id, body.generation)
            .map_err(to_status)?;
        Ok(Response::new(proto::ReleaseResponse {}))
    }
}
