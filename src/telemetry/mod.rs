//! What the daemon tells its operators: logs ([`logging`]: text or JSON through
//! tracing), Prometheus metrics ([`metrics`]: the recorder, the `/metrics` listener,
//! the gauge sampler, and the recording functions other modules call), and the RPC
//! layer ([`rpc`]: one span, one latency sample and one readiness check per call).

pub mod logging;
pub mod metrics;
pub mod rpc;
