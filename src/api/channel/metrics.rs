//! The stream's own metrics, recorded through the `metrics` facade under the names
//! `telemetry::metrics` declares (a no-op without a recorder).

use std::time::Duration;

use ::metrics::{counter, gauge, histogram};

use crate::proto::EndReason;
use crate::telemetry::metrics::{
    CHANNEL_EVENTS_TOTAL, CHANNEL_PUSHED_ENDS_TOTAL, CHANNEL_STREAMS_OPEN, QUEUE_WAIT_SECONDS,
};

pub fn stream_opened() {
    gauge!(CHANNEL_STREAMS_OPEN).increment(1.0);
}

pub fn stream_closed() {
    gauge!(CHANNEL_STREAMS_OPEN).decrement(1.0);
}

/// An event was queued for a stream's engine.
pub fn event_sent() {
    counter!(CHANNEL_EVENTS_TOTAL).increment(1);
}

/// The end of a lease was pushed to the stream holding it.
pub fn pushed_end(reason: EndReason) {
    counter!(CHANNEL_PUSHED_ENDS_TOTAL, "reason" => reason.as_str_name()).increment(1);
}

/// A queued acquire left the queue (granted, refused, cancelled or out of time).
pub fn waited(waited: Duration) {
    histogram!(QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
}
