//! The metrics the log records itself, through the `metrics` facade: their names are
//! owned here so that the log needs nothing else of the crate. Without an installed
//! recorder (benchmarks, tests, another program reusing the log) every call is a
//! no-op; the daemon's recorder (`telemetry::metrics::install`) picks their buckets by
//! these names.

use std::time::Duration;

use metrics::histogram;

/// Latency of one fdatasync of a commit group, in seconds.
pub const FSYNC_SECONDS: &str = "seatbroker_wal_fsync_seconds";
/// Records made durable by one fdatasync (the group-commit batch).
pub const BATCH_RECORDS: &str = "seatbroker_wal_batch_records";

/// Records one fsync of a commit group: how long it took and how many records it made
/// durable.
pub(crate) fn fsynced(duration: Duration, batch_records: usize) {
    histogram!(FSYNC_SECONDS).record(duration.as_secs_f64());
    histogram!(BATCH_RECORDS).record(batch_records as f64);
}
