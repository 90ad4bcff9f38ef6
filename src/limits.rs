//! Every bound of the broker in one place. Names carry the unit and end with the
//! qualifier (`_max`, `_min`), so a reader sees what is bounded and by how much.
//! The README lists these; `const` assertions below keep their relations true.

/// Organization ids: lowercase letters, digits and '-', starting with a letter.
pub const ORG_ID_BYTES_MAX: usize = 63;
/// Display names of organizations.
pub const DISPLAY_NAME_BYTES_MAX: usize = 200;
/// Email addresses (RFC 5321 path limit).
pub const EMAIL_BYTES_MAX: usize = 254;
/// The local part of an email address.
pub const EMAIL_LOCAL_BYTES_MAX: usize = 64;
/// Engine ids, hostnames and labels sent by runtime engines.
pub const ENGINE_ID_BYTES_MAX: usize = 128;
pub const HOSTNAME_BYTES_MAX: usize = 253;
pub const LABEL_BYTES_MAX: usize = 128;
/// Emails in one AssignLicenses or UnassignLicenses call.
pub const EMAILS_PER_REQUEST_MAX: usize = 1000;

/// Quota values an operator may set.
pub const KSE_SEATS_MAX: u32 = 1_000_000;
pub const KRE_SESSIONS_MAX: u32 = 1_000_000;
/// Live leases (KSE and KRE together) of one organization: KRE is bounded by its quota,
/// KSE by its seats, and this bounds the sum whatever the quota says.
pub const LEASES_PER_ORG_MAX: usize = 2_000_000;

/// Lease time-to-live bounds for the daemon's configuration.
pub const LEASE_TTL_MS_MIN: u32 = 100;
pub const LEASE_TTL_MS_MAX: u32 = 3_600_000;
pub const LEASE_TTL_MS_DEFAULT: u32 = 30_000;
/// How often the expiry sweeper runs. A lease expires at most this long after its
/// deadline (plus scheduling), which keeps expiry within `ttl + 1 s`.
pub const EXPIRY_TICK_MS: u64 = 100;
/// Expired leases handled per sweep of one expiry shard before yielding.
pub const EXPIRIES_PER_SWEEP_MAX: usize = 65_536;

/// gRPC request size: the largest legitimate request is an assignment batch of
/// `EMAILS_PER_REQUEST_MAX` emails.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// gRPC responses (listings of members, keys and sessions).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Items in one listing response (members, keys, sessions, assignments).
pub const LIST_ITEMS_MAX: usize = 100_000;
/// Concurrent HTTP/2 streams per client connection.
pub const CONCURRENT_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// Concurrent client connections; further clients wait in the listen backlog
/// (`connections.rs`).
pub const CONNECTIONS_MAX: usize = 10_000;

// ----- Operational limits: configurable within hard bounds (see `config`). -----
// A configurable limit has its default here under its plain name (as above, e.g.
// `REQUEST_BYTES_MAX`) and the range an operator may choose, `..._FLOOR` to `..._CEILING`.

/// The request size may not go below what the largest legitimate request needs.
pub const REQUEST_BYTES_MAX_FLOOR: usize = 512 * 1024;
pub const REQUEST_BYTES_MAX_CEILING: usize = 16 * 1024 * 1024;
pub const CONCURRENT_STREAMS_PER_CONNECTION_MAX_FLOOR: u32 = 1;
pub const CONCURRENT_STREAMS_PER_CONNECTION_MAX_CEILING: u32 = 65_536;
/// HTTP/2 keepalive: a ping after this much idleness, and the connection is dropped
/// when the answer takes longer than the timeout.
pub const KEEPALIVE_INTERVAL_MS_DEFAULT: u64 = 30_000;
pub const KEEPALIVE_INTERVAL_MS_MIN: u64 = 1_000;
pub const KEEPALIVE_INTERVAL_MS_MAX: u64 = 3_600_000;
pub const KEEPALIVE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const KEEPALIVE_TIMEOUT_MS_MIN: u64 = 1_000;
pub const KEEPALIVE_TIMEOUT_MS_MAX: u64 = 600_000;
/// The per-organization lease cap (default `LEASES_PER_ORG_MAX`) an operator may set.
pub const LEASES_PER_ORG_MAX_FLOOR: usize = 1;
pub const LEASES_PER_ORG_MAX_CEILING: usize = 10_000_000;
/// How long a stopping daemon lets in-flight calls finish before it cuts them.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 10_000;
pub const SHUTDOWN_GRACE_MS_MAX: u64 = 600_000;
/// The configuration file is read whole; larger files are refused.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// TLS certificate, key and CA files are read whole.
pub const TLS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// How often the metrics sampler copies the gauges (active sessions, quotas) out of the
/// broker. Its work is proportional to the organizations.
pub const METRICS_SAMPLE_INTERVAL_MS: u64 = 1_000;
/// The `/metrics` HTTP listener: concurrent scrapes, request head size, and how long a
/// scrape connection may take.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 * 1024;
pub const METRICS_REQUEST_MS_MAX: u64 = 5_000;

/// Usage windows: one bucket per minute with activity, per organization and product,
/// kept for the longest window a `GetUsage` may ask about (at most 1440 buckets of
/// 16 bytes, 23 KiB, per organization and product).
pub const USAGE_BUCKET_MS: u64 = 60_000;
pub const USAGE_WINDOW_SECONDS_MAX: u32 = 24 * 3600;
pub const USAGE_WINDOW_SECONDS_DEFAULT: u32 = 3600;
pub const USAGE_BUCKETS_MAX: usize =
    (USAGE_WINDOW_SECONDS_MAX as u64 * 1000 / USAGE_BUCKET_MS) as usize;

/// Audit events waiting for the audit writer. When full, events are dropped (and
/// counted): the audit record never slows or blocks an RPC.
pub const AUDIT_QUEUE_EVENTS_MAX: usize = 65_536;
/// Events the writer takes from the queue per write.
pub const AUDIT_BATCH_EVENTS_MAX: usize = 8192;
/// The audit writer rests this long after each batch, so events arrive in batches.
/// At the queue bound this leaves room for over 6 million events per second.
pub const AUDIT_WRITER_PAUSE_MS: u64 = 10;
/// Audit files rotate at this size; the oldest are deleted past the file count.
pub const AUDIT_FILE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
pub const AUDIT_FILE_BYTES_MAX_FLOOR: u64 = 4 * 1024;
pub const AUDIT_FILE_BYTES_MAX_CEILING: u64 = 1024 * 1024 * 1024;
pub const AUDIT_FILES_MAX_DEFAULT: u32 = 16;
pub const AUDIT_FILES_MAX_CEILING: u32 = 1024;
/// One audit line; longer events are cut (labels and engine ids are bounded anyway).
pub const AUDIT_LINE_BYTES_MAX: usize = 4 * 1024;
/// Audit bytes written between two fsyncs of the current file. Small flushes keep
/// the disk from being busy long enough to delay the log's fsyncs: flushing a whole
/// 64 MiB file at rotation held one grant's fsync for 25-50 ms.
pub const AUDIT_SYNC_BYTES: u64 = 1024 * 1024;
/// Events in one `ListAuditEvents` answer.
pub const AUDIT_EVENTS_PER_QUERY_MAX: u32 = 5_000;
/// `ListAuditEvents` calls reading the files at once; more are refused with
/// RESOURCE_EXHAUSTED. A query may scan every audit file (up to 16 x 64 MiB by
/// default) on the blocking pool.
pub const AUDIT_QUERIES_MAX: usize = 4;
/// A `ListAuditEvents` page token (the daemon's own are about 30 bytes).
pub const PAGE_TOKEN_BYTES_MAX: usize = 64;

const _: () = assert!(EMAILS_PER_REQUEST_MAX * (EMAIL_BYTES_MAX + 8) < REQUEST_BYTES_MAX_FLOOR);
const _: () = assert!(REQUEST_BYTES_MAX_FLOOR <= REQUEST_BYTES_MAX);
const _: () = assert!(REQUEST_BYTES_MAX <= REQUEST_BYTES_MAX_CEILING);
const _: () =
    assert!(CONCURRENT_STREAMS_PER_CONNECTION_MAX <= CONCURRENT_STREAMS_PER_CONNECTION_MAX_CEILING);
const _: () = assert!(LEASES_PER_ORG_MAX <= LEASES_PER_ORG_MAX_CEILING);
const _: () = assert!(KEEPALIVE_INTERVAL_MS_MIN <= KEEPALIVE_INTERVAL_MS_DEFAULT);
const _: () = assert!(KEEPALIVE_INTERVAL_MS_DEFAULT <= KEEPALIVE_INTERVAL_MS_MAX);
const _: () = assert!(KEEPALIVE_TIMEOUT_MS_MIN <= KEEPALIVE_TIMEOUT_MS_DEFAULT);
const _: () = assert!(KEEPALIVE_TIMEOUT_MS_DEFAULT <= KEEPALIVE_TIMEOUT_MS_MAX);
const _: () = assert!(SHUTDOWN_GRACE_MS_DEFAULT <= SHUTDOWN_GRACE_MS_MAX);
const _: () = assert!(USAGE_WINDOW_SECONDS_DEFAULT <= USAGE_WINDOW_SECONDS_MAX);
const _: () = assert!(USAGE_BUCKETS_MAX <= 1440);
const _: () = assert!(AUDIT_LINE_BYTES_MAX as u64 <= AUDIT_FILE_BYTES_MAX_FLOOR);
const _: () = assert!(AUDIT_FILE_BYTES_MAX_DEFAULT <= AUDIT_FILE_BYTES_MAX_CEILING);
const _: () = assert!(AUDIT_FILES_MAX_DEFAULT <= AUDIT_FILES_MAX_CEILING);
const _: () = assert!(AUDIT_BATCH_EVENTS_MAX <= AUDIT_QUEUE_EVENTS_MAX);
const _: () = assert!(AUDIT_WRITER_PAUSE_MS <= 100, "queries wait for a flush");
const _: () =
    assert!((AUDIT_EVENTS_PER_QUERY_MAX as usize) * AUDIT_LINE_BYTES_MAX <= RESPONSE_BYTES_MAX);

/// The operator key, when given by the environment, must be at least this long.
pub const OPERATOR_KEY_BYTES_MIN: usize = 32;
pub const OPERATOR_KEY_BYTES_MAX: usize = 256;
/// Bearer tokens longer than this are refused before any parsing.
pub const BEARER_TOKEN_BYTES_MAX: usize = 512;

const _: () = assert!(EMAIL_LOCAL_BYTES_MAX < EMAIL_BYTES_MAX);
const _: () = assert!(LEASE_TTL_MS_MIN as u64 >= EXPIRY_TICK_MS);
const _: () = assert!(EXPIRY_TICK_MS <= 1000, "expiry must stay within ttl + 1 s");
const _: () = assert!(LEASE_TTL_MS_MIN <= LEASE_TTL_MS_DEFAULT);
const _: () = assert!(LEASE_TTL_MS_DEFAULT <= LEASE_TTL_MS_MAX);
const _: () = assert!(KRE_SESSIONS_MAX as usize + KSE_SEATS_MAX as usize <= LEASES_PER_ORG_MAX);
const _: () = assert!(EMAILS_PER_REQUEST_MAX * (EMAIL_BYTES_MAX + 8) < REQUEST_BYTES_MAX);
const _: () = assert!(OPERATOR_KEY_BYTES_MAX <= BEARER_TOKEN_BYTES_MAX);

/// Records (admin commands, lease grants) applied in memory and waiting for the log to
/// make them durable. Past it, calls get UNAVAILABLE until the disk catches up.
pub const LOG_QUEUE_RECORDS_MAX: usize = 16_384;

// ----- Per-tenant resource bounds (issue 10 item 10). -----
// What one organization may hold, so one tenant's Admin cannot take the daemon's
// memory. Checked when a command is submitted (`AdminState::admit`), never on replay:
// a log written under larger caps still loads. Refused with RESOURCE_EXHAUSTED.

/// Organizations in one daemon (created by the operator only). An empty one costs
/// about 1 KiB, plus its usage windows when active (at most 2 x 23 KiB).
pub const ORGANIZATIONS_MAX: usize = 100_000;
/// Resident bytes of one member with one API key and a KRE license, rounded up from
/// the 936 B `benches/admin_state.rs` measures with 1,000,000 of them (persistent
/// maps; 468 B with the `BTreeMap`s they replaced).
pub const MEMBER_RESIDENT_BYTES_MAX: usize = 1024;
/// Members of one organization: 100,000 x 1 KiB is at most 100 MiB for a tenant, and
/// a 100,000-user organization is already larger than any customer we serve.
pub const MEMBERS_PER_ORG_MAX: usize = 100_000;
/// Live API keys of one organization: two per member on average (a laptop and a CI
/// runner); a key record is about 200 B plus its label.
pub const API_KEYS_PER_ORG_MAX: usize = 2 * MEMBERS_PER_ORG_MAX;
/// Live API keys of one member.
pub const API_KEYS_PER_MEMBER_MAX: usize = 100;

const _: () = assert!(API_KEYS_PER_MEMBER_MAX <= API_KEYS_PER_ORG_MAX);
const _: () = assert!(
    MEMBERS_PER_ORG_MAX * MEMBER_RESIDENT_BYTES_MAX <= 128 * 1024 * 1024,
    "one tenant's members stay within 128 MiB"
);
const _: () = assert!(KSE_SEATS_MAX as usize >= MEMBERS_PER_ORG_MAX);
