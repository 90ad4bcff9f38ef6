//! The stream's own metrics, recorded through the `metrics` facade under the names
//! `telemetry::metrics` declares (a no-op without a recorder).

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Counter, counter, gauge, histogram};

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

/// An event was queued for a stream's engine. Counted on every event, so through a
/// handle registered once (after `telemetry::metrics::install`, like every handle),
/// without looking the series up each time.
pub fn event_sent() {
    static EVENTS: OnceLock<Counter> = OnceLock::new();
    EVENTS
        .get_or_init(|| counter!(CHANNEL_EVENTS_TOTAL))
        .increment(1);
}

/// The end of a lease was pushed to the stream holding it (a handle per reason,
/// registered once, as for `event_sent`).
pub fn pushed_end(reason: EndReason) {
    const REASONS: usize = 16;
    static BY_REASON: [OnceLock<Counter>; REASONS] = [const { OnceLock::new() }; REASONS];
    let register = || counter!(CHANNEL_PUSHED_ENDS_TOTAL, "reason" => reason.as_str_name());
    match BY_REASON.get(reason as usize) {
        Some(handle) => handle.get_or_init(register).increment(1),
        None => register().increment(1),
    }
}

/// A queued acquire left the queue (granted, refused, cancelled or out of time).
pub fn waited(waited: Duration) {
    histogram!(QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
}
