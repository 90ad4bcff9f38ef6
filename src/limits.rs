//! Every bound of the broker in one place (the write-ahead log keeps its own defaults
//! in `wal`, so that it stands alone; those an operator can set are restated here).
//! Names carry the unit and end with the
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
/// The client certificate subject an API key may be bound to (as the daemon writes
/// it, `CN=engine-7, O=Acme`); a longer subject cannot be bound.
pub const CLIENT_CERT_SUBJECT_BYTES_MAX: usize = 512;
/// Emails in one AssignLicenses or UnassignLicenses call.
pub const EMAILS_PER_REQUEST_MAX: usize = 1000;

/// Quota values an operator may set.
pub const KSE_SEATS_MAX: u32 = 1_000_000;
pub const KRE_SESSIONS_MAX: u32 = 1_000_000;
/// The earliest license expiry a new command may set: 2000-01-01T00:00:00Z in Unix
/// milliseconds. Anything smaller is a time in seconds given as milliseconds (seconds
/// of today read as milliseconds fall in January 1970).
pub const LICENSE_EXPIRY_UNIX_MS_MIN: i64 = 946_684_800_000;
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
/// Concurrent HTTP/2 streams per client connection: nginx's `http2_max_concurrent_streams`
/// default (Envoy's edge guidance says 100). More calls wait on the client's side.
pub const CONCURRENT_STREAMS_PER_CONNECTION_MAX: u32 = 128;
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
/// How long a commit group of a busy log may wait for more records (`[wal]
/// commit_delay_us`): the log's own default and limit, in the configuration's unit.
pub const COMMIT_DELAY_US_DEFAULT: u32 = crate::wal::COMMIT_DELAY_DEFAULT.as_micros() as u32;
pub const COMMIT_DELAY_US_MAX: u32 = crate::wal::COMMIT_DELAY_LIMIT.as_micros() as u32;
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
/// A `/metrics` client must send its whole request head within this time (hyper's
/// `header_read_timeout`, nginx's `client_header_timeout`), so idle or trickling
/// connections free their slot quickly.
pub const METRICS_HEADER_READ_MS_MAX: u64 = 1_000;
/// Connections answered `503 Service Unavailable` at once while every scrape slot is
/// held; past this many more are closed unanswered.
pub const METRICS_REFUSALS_MAX: usize = 256;
/// With `--metrics-per-org`, organizations that get series of their own; the others
/// are summed into `org="_other"`. An organization keeps its series once it has them
/// (the recorder cannot remove a series), and new ones are admitted largest first (by
/// active sessions) while room is left. 1,000 organizations make about 10,000 series.
pub const METRICS_ORGS_MAX: usize = 1_000;

/// After a failed `accept` (EMFILE, ENFILE, ENOBUFS...) a listener pauses before the
/// next one, doubling from the shortest pause to the longest while failures repeat, so
/// it never spins on an error that repeats at once.
pub const ACCEPT_ERROR_PAUSE_MS_MIN: u64 = 10;
pub const ACCEPT_ERROR_PAUSE_MS_MAX: u64 = 100;
/// A repeated warning (a failed accept) is logged at most once per this period, with
/// the count of the ones not logged since.
pub const WARNING_REPEAT_MS_MIN: u64 = 1_000;

/// Usage windows: one bucket per minute with activity, per organization and product,
/// kept for the longest window a `GetUsage` may ask about (at most 1440 buckets of
/// 24 bytes, 34 KiB, per organization and product).
pub const USAGE_BUCKET_MS: u64 = 60_000;
pub const USAGE_WINDOW_SECONDS_MAX: u32 = 24 * 3600;
pub const USAGE_WINDOW_SECONDS_DEFAULT: u32 = 3600;
pub const USAGE_BUCKETS_MAX: usize =
    (USAGE_WINDOW_SECONDS_MAX as u64 * 1000 / USAGE_BUCKET_MS) as usize;
/// The coarse usage figures behind `GetUsageSeries`'s longer ranges: one bucket per
/// hour with activity, kept for a week (at most 168 buckets of 24 bytes, 4 KiB, per
/// organization and product, beside the 34 KiB of minutes).
pub const USAGE_COARSE_BUCKET_MS: u64 = 3_600_000;
pub const USAGE_SERIES_RANGE_MS_MAX: u64 = 7 * 24 * 3_600_000;
pub const USAGE_COARSE_BUCKETS_MAX: usize =
    (USAGE_SERIES_RANGE_MS_MAX / USAGE_COARSE_BUCKET_MS) as usize;
/// Points in one `GetUsageSeries` answer: the server picks the finest resolution
/// that fits (an hour by the minute, a day by 10 minutes, a week by the hour).
pub const USAGE_SERIES_POINTS_MAX: usize = 200;

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
/// `ListAuditEvents` calls reading the files at once, all organizations together;
/// more are refused with RESOURCE_EXHAUSTED. This bound only protects the daemon (the
/// blocking pool, descriptors); `AUDIT_QUERIES_PER_ORG_MAX` shares it fairly.
pub const AUDIT_QUERIES_MAX: usize = 8;
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
const _: () = assert!(COMMIT_DELAY_US_DEFAULT <= COMMIT_DELAY_US_MAX);
const _: () = assert!(USAGE_WINDOW_SECONDS_DEFAULT <= USAGE_WINDOW_SECONDS_MAX);
const _: () = assert!(USAGE_BUCKETS_MAX <= 1440);
const _: () = assert!(USAGE_COARSE_BUCKET_MS % USAGE_BUCKET_MS == 0);
const _: () = assert!(USAGE_COARSE_BUCKETS_MAX <= USAGE_SERIES_POINTS_MAX);
const _: () = assert!(
    USAGE_SERIES_RANGE_MS_MAX >= USAGE_WINDOW_SECONDS_MAX as u64 * 1000,
    "the week covers the day of minutes"
);
const _: () = assert!(AUDIT_LINE_BYTES_MAX as u64 <= AUDIT_FILE_BYTES_MAX_FLOOR);
const _: () = assert!(AUDIT_FILE_BYTES_MAX_DEFAULT <= AUDIT_FILE_BYTES_MAX_CEILING);
const _: () = assert!(AUDIT_FILES_MAX_DEFAULT <= AUDIT_FILES_MAX_CEILING);
const _: () = assert!(AUDIT_BATCH_EVENTS_MAX <= AUDIT_QUEUE_EVENTS_MAX);
const _: () = assert!(AUDIT_WRITER_PAUSE_MS <= 100, "queries wait for a flush");
const _: () = assert!(
    (AUDIT_EVENTS_PER_QUERY_MAX as usize) * AUDIT_LINE_BYTES_MAX <= AUDIT_RESPONSE_BYTES_MAX
);

/// The operator key, when given by the environment, must be at least this long.
pub const OPERATOR_KEY_BYTES_MIN: usize = 32;
pub const OPERATOR_KEY_BYTES_MAX: usize = 256;
/// Bearer tokens longer than this are refused before any parsing.
pub const BEARER_TOKEN_BYTES_MAX: usize = 512;
/// Keys remembered as verified (`auth::VerifiedKeys`), so their calls skip the SHA-256;
/// past it the oldest is evicted. Enough for every engine host of a large site; an
/// entry holds the token (at most `BEARER_TOKEN_BYTES_MAX`) and the principal.
pub const VERIFIED_KEYS_CACHED_MAX: usize = 16_384;

const _: () = assert!(EMAIL_LOCAL_BYTES_MAX < EMAIL_BYTES_MAX);
const _: () = assert!(LEASE_TTL_MS_MIN as u64 >= EXPIRY_TICK_MS);
const _: () = assert!(EXPIRY_TICK_MS <= 1000, "expiry must stay within ttl + 1 s");
const _: () = assert!(LEASE_TTL_MS_MIN <= LEASE_TTL_MS_DEFAULT);
const _: () = assert!(LEASE_TTL_MS_DEFAULT <= LEASE_TTL_MS_MAX);
const _: () = assert!(KRE_SESSIONS_MAX as usize + KSE_SEATS_MAX as usize <= LEASES_PER_ORG_MAX);
const _: () = assert!(EMAILS_PER_REQUEST_MAX * (EMAIL_BYTES_MAX + 8) < REQUEST_BYTES_MAX);
const _: () = assert!(OPERATOR_KEY_BYTES_MAX <= BEARER_TOKEN_BYTES_MAX);
// The verified keys' tokens stay within 8 MiB, whatever the callers present.
const _: () = assert!(VERIFIED_KEYS_CACHED_MAX * BEARER_TOKEN_BYTES_MAX <= 8 << 20);

/// Records (admin commands, lease grants) applied in memory and waiting for the log to
/// make them durable. Past it, calls get UNAVAILABLE until the disk catches up.
pub const LOG_QUEUE_RECORDS_MAX: usize = 16_384;

// ----- Listings: every List call pages (AIP-158), and responses are bounded by it. -----

/// Items in a page of ListOrganizations, ListMembers, ListAssignments, ListApiKeys and
/// ListSessions when the request's `page_size` is 0 (AIP-158 leaves the default to the
/// service; etcd's clients page ranges by 500 or so).
pub const LIST_PAGE_SIZE_DEFAULT: usize = 500;
/// Items in one page at most: a larger `page_size` is lowered to it (AIP-158 coerces
/// rather than refuses).
pub const LIST_PAGE_SIZE_MAX: usize = 1000;
/// Entries one page examines at most: keys of other members (a member lists only their
/// own), sessions of the other product, vacant slots of the lease table. Past it the
/// page comes back short, even empty, with a `next_page_token`, so that the admin read
/// lock or an organization's lease lock is held for a bounded time.
pub const LIST_ENTRIES_SCANNED_PER_PAGE_MAX: usize = 65_536;
/// A listing's page token: base64url of version, listing, filter fingerprint, the last
/// key returned (an email at most) and a checksum; the daemon's own are at most 360 bytes.
pub const LIST_PAGE_TOKEN_BYTES_MAX: usize = 512;

/// One length-delimited field of at most `content` bytes on the wire: a tag byte, a
/// length of up to 2 bytes (below 16 KiB), the content.
const fn wire_field_bytes(content: usize) -> usize {
    1 + 2 + content
}
/// One varint field on the wire at most: a tag byte and 10 bytes.
const WIRE_VARINT_FIELD_BYTES_MAX: usize = 11;
/// The largest item a listing returns, a session (`Lease`), on the wire: lease id (35
/// bytes), organization, email, engine id, hostname, label, and six numbers.
pub const LIST_LEASE_WIRE_BYTES_MAX: usize = wire_field_bytes(35)
    + wire_field_bytes(ORG_ID_BYTES_MAX)
    + wire_field_bytes(EMAIL_BYTES_MAX)
    + wire_field_bytes(ENGINE_ID_BYTES_MAX)
    + wire_field_bytes(HOSTNAME_BYTES_MAX)
    + wire_field_bytes(LABEL_BYTES_MAX)
    + 6 * WIRE_VARINT_FIELD_BYTES_MAX;
/// An API key on the wire: key id (at most 64 bytes), email, label, client
/// certificate subject, creation time.
pub const LIST_API_KEY_WIRE_BYTES_MAX: usize = wire_field_bytes(64)
    + wire_field_bytes(EMAIL_BYTES_MAX)
    + wire_field_bytes(LABEL_BYTES_MAX)
    + wire_field_bytes(CLIENT_CERT_SUBJECT_BYTES_MAX)
    + WIRE_VARINT_FIELD_BYTES_MAX;
/// An organization on the wire: id, display name, quota (three numbers), member count.
pub const LIST_ORGANIZATION_WIRE_BYTES_MAX: usize = wire_field_bytes(ORG_ID_BYTES_MAX)
    + wire_field_bytes(DISPLAY_NAME_BYTES_MAX)
    + wire_field_bytes(3 * WIRE_VARINT_FIELD_BYTES_MAX)
    + WIRE_VARINT_FIELD_BYTES_MAX;
/// One listed item on the wire at most, with its own field header in the answer.
pub const LIST_ITEM_BYTES_MAX: usize = 1024;
/// One listing answer on the wire at most: a full page of the largest items, the page
/// token and the few other fields (ListAssignments' quota). 1.0 MiB.
pub const LIST_RESPONSE_BYTES_MAX: usize =
    LIST_PAGE_SIZE_MAX * LIST_ITEM_BYTES_MAX + LIST_PAGE_TOKEN_BYTES_MAX + 1024;
/// One `ListAuditEvents` answer on the wire at most: a full page of events, none
/// longer on the wire than its audit line, and the token. 19.5 MiB.
pub const AUDIT_RESPONSE_BYTES_MAX: usize =
    AUDIT_EVENTS_PER_QUERY_MAX as usize * AUDIT_LINE_BYTES_MAX + 4096;
/// The `AdminService`'s answers (tonic's `max_encoding_message_size`, one value per
/// service): the larger of a listing page and an audit page. An answer past it would be
/// a bug, and tonic turns it into an error rather than send it.
pub const ADMIN_RESPONSE_BYTES_MAX: usize = if LIST_RESPONSE_BYTES_MAX > AUDIT_RESPONSE_BYTES_MAX {
    LIST_RESPONSE_BYTES_MAX
} else {
    AUDIT_RESPONSE_BYTES_MAX
};
/// The `SessionService`'s answers: one lease at most.
pub const SESSION_RESPONSE_BYTES_MAX: usize = 16 * 1024;
/// The listing answers one connection can make the daemon hold while its client reads
/// nothing: a full page on every concurrent stream (128 MiB with the default 128
/// streams, and only with every field at its longest; a page of members with 30-byte
/// emails is about 40 KiB). Before pages, one unread ListMembers answer alone could be
/// 64 MiB.
pub const LIST_RESPONSE_BYTES_PER_CONNECTION_MAX: usize =
    LIST_RESPONSE_BYTES_MAX * CONCURRENT_STREAMS_PER_CONNECTION_MAX as usize;

const _: () = assert!(0 < LIST_PAGE_SIZE_DEFAULT && LIST_PAGE_SIZE_DEFAULT <= LIST_PAGE_SIZE_MAX);
const _: () = assert!(LIST_PAGE_SIZE_MAX <= LIST_ENTRIES_SCANNED_PER_PAGE_MAX);
const _: () = assert!(LIST_LEASE_WIRE_BYTES_MAX + 3 <= LIST_ITEM_BYTES_MAX);
const _: () = assert!(LIST_API_KEY_WIRE_BYTES_MAX + 3 <= LIST_ITEM_BYTES_MAX);
const _: () = assert!(LIST_ORGANIZATION_WIRE_BYTES_MAX + 3 <= LIST_ITEM_BYTES_MAX);
const _: () = assert!(
    wire_field_bytes(EMAIL_BYTES_MAX) + WIRE_VARINT_FIELD_BYTES_MAX + 3 <= LIST_ITEM_BYTES_MAX
);
// Every length above fits the 2-byte length the field sizes assume.
const _: () = assert!(HOSTNAME_BYTES_MAX < 16 * 1024 && DISPLAY_NAME_BYTES_MAX < 16 * 1024);
// A token holds the longest key: an email (the longest), plus 14 bytes, in base64.
const _: () = assert!((EMAIL_BYTES_MAX + 14).div_ceil(3) * 4 <= LIST_PAGE_TOKEN_BYTES_MAX);
const _: () = assert!(LIST_RESPONSE_BYTES_MAX <= ADMIN_RESPONSE_BYTES_MAX);
const _: () = assert!(AUDIT_RESPONSE_BYTES_MAX <= ADMIN_RESPONSE_BYTES_MAX);
const _: () = assert!(LIST_LEASE_WIRE_BYTES_MAX + 64 <= SESSION_RESPONSE_BYTES_MAX);

// ----- Audit isolation between organizations (issue 10, items 5 and 6). -----

/// `ListAuditEvents` calls of one organization reading the files at once: one
/// organization's Owner looping queries holds at most this many of
/// `AUDIT_QUERIES_MAX`, so every other organization still finds a free slot.
pub const AUDIT_QUERIES_PER_ORG_MAX: usize = 2;
/// Audit files the writer keeps open at once (one per organization written lately,
/// least recently used closed first). With `AUDIT_QUERIES_MAX` readers (one file
/// each at a time) and the spares below, the audit record holds at most 64 + 8 + 2
/// + 2 descriptors, within `DESCRIPTORS_RESERVED`.
pub const AUDIT_OPEN_FILES_MAX: usize = 64;
/// Descriptors the audit writer holds in reserve (on `/dev/null`) to open a file when
/// the process has none left and the writer has no file of its own to close.
pub const AUDIT_WRITER_SPARE_DESCRIPTORS: usize = 2;
/// The same for the queries, shared by all of them (each holds one file at a time).
pub const AUDIT_READER_SPARE_DESCRIPTORS: usize = 2;
/// Events of admin changes recorded and not yet written past which new admin changes
/// are refused (UNAVAILABLE) until the writer catches up; the events themselves are
/// never dropped. An assignment of `EMAILS_PER_REQUEST_MAX` emails is that many.
pub const AUDIT_ADMIN_EVENTS_PENDING_MAX: usize = 4_096;
/// How often the audit writer retries the events of admin changes it could not write.
pub const AUDIT_ADMIN_RETRY_MS: u64 = 200;
/// Repeated warnings of the audit writer (a write failed, admin changes refused) are
/// logged at most once per this period, with the count of those left out.
pub const AUDIT_WARNING_INTERVAL_MS: u64 = 10_000;
/// Refused acquires are aggregated per organization, member, product and reason over
/// this period: the first is written, the rest counted and written as one
/// `acquire_denied_repeated` event with the count when the period ends (or when the
/// organization's record is queried).
pub const AUDIT_DENIAL_REPEAT_MS: i64 = 60_000;
/// (organization, member, product, reason) series counted at once; when full, every
/// count is written out and counting starts afresh. About 200 bytes each: 3 MiB.
pub const AUDIT_DENIAL_SERIES_MAX: usize = 16_384;

const _: () = assert!(AUDIT_QUERIES_PER_ORG_MAX >= 1);
const _: () = assert!(
    2 * AUDIT_QUERIES_PER_ORG_MAX <= AUDIT_QUERIES_MAX,
    "one organization at its bound leaves another its whole share"
);
const _: () = assert!(AUDIT_OPEN_FILES_MAX >= 1);
const _: () = assert!(
    EMAILS_PER_REQUEST_MAX <= AUDIT_ADMIN_EVENTS_PENDING_MAX,
    "one admitted assignment fits in the pending bound"
);
const _: () = assert!(
    (AUDIT_OPEN_FILES_MAX
        + AUDIT_QUERIES_MAX
        + AUDIT_WRITER_SPARE_DESCRIPTORS
        + AUDIT_READER_SPARE_DESCRIPTORS) as u64
        <= DESCRIPTORS_RESERVED,
    "the audit record's descriptors fit in the reserve the connection cap leaves"
);
const _: () = assert!(AUDIT_DENIAL_REPEAT_MS >= 1_000);

// ----- The gRPC edge: connections, HTTP/2 and request bodies (issue 10). -----
// Where each is enforced: `connections.rs` (slots, handshake and idle deadlines),
// `server::http2_limits` (HTTP/2 settings, message sizes per service), `api::guard`
// (authentication from headers, the request-body budgets).

/// SessionService requests (engine id, hostname, label: under 1 KiB) are refused past
/// this, from their 5-byte gRPC prefix, before their body is read.
pub const SESSION_REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Health and reflection requests, the calls anyone may make without a key.
pub const UNAUTHENTICATED_REQUEST_BYTES_MAX: usize = 16 * 1024;
/// HTTP/2 flow control: what a client may send on one stream, and on one connection,
/// before the daemon reads it (RFC 9113's default stream window is 64 KiB; hyper's
/// default of 1 MiB per stream would let 128 streams queue 128 MiB unread).
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 64 * 1024;
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// The largest HTTP/2 frame a client may send (the protocol's default and minimum).
pub const HTTP2_FRAME_BYTES_MAX: u32 = 16 * 1024;
/// The request headers (gRPC metadata) of one call, decoded (gRPC's 8 KiB default
/// metadata size, doubled).
pub const HTTP2_HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
/// Streams a client opened and reset before the daemon took them (the rapid-reset
/// attack, CVE-2023-44487): past this the connection gets GOAWAY (h2's default).
pub const HTTP2_PENDING_ACCEPT_RESET_STREAMS_MAX: usize = 20;
/// Streams the daemon reset for protocol errors before it closes the connection.
pub const HTTP2_LOCAL_ERROR_RESET_STREAMS_MAX: usize = 1024;

/// Bytes held in request bodies not yet complete, across the daemon (the body of every
/// call is charged as it is read, until its message is decoded). Past it, calls whose
/// body needs more get RESOURCE_EXHAUSTED.
pub const REQUEST_BODIES_BYTES_MAX: usize = 32 * 1024 * 1024;
pub const REQUEST_BODIES_BYTES_MAX_CEILING: usize = 4 * 1024 * 1024 * 1024;
/// The same, per connection, as a multiple of the largest request: one client cannot
/// take the whole daemon's budget with one connection.
pub const REQUEST_BODIES_PER_CONNECTION_REQUESTS_MAX: usize = 4;

/// A connection must start its first call (TLS handshake, HTTP/2 preface, request
/// headers) within this, or it is closed (nginx `client_header_timeout`, Envoy
/// `request_headers_timeout`).
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const HANDSHAKE_TIMEOUT_MS_MIN: u64 = 100;
pub const HANDSHAKE_TIMEOUT_MS_MAX: u64 = 300_000;
/// A connection with no call in flight and none started for a whole period of this
/// length is closed (gRPC's MAX_CONNECTION_IDLE, Envoy's `idle_timeout`), so it is
/// closed after 1 to 2 periods of idleness.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;
pub const IDLE_TIMEOUT_MS_MIN: u64 = 1_000;
pub const IDLE_TIMEOUT_MS_MAX: u64 = 86_400_000;
/// File descriptors kept for the log, the audit files, snapshots, the metrics listener
/// and the runtime: the connection cap is at most the descriptor limit minus this.
pub const DESCRIPTORS_RESERVED: u64 = 128;
/// The connection cap never goes below this, whatever the descriptor limit.
pub const CONNECTIONS_MIN: usize = 16;
/// How often the daemon asks its allocator to give freed memory back (`allocator`).
pub const ALLOCATOR_COLLECT_INTERVAL_MS: u64 = 1_000;

const _: () = assert!(SESSION_REQUEST_BYTES_MAX <= REQUEST_BYTES_MAX_FLOOR);
const _: () = assert!(UNAUTHENTICATED_REQUEST_BYTES_MAX <= SESSION_REQUEST_BYTES_MAX);
const _: () = assert!(HTTP2_STREAM_WINDOW_BYTES <= HTTP2_CONNECTION_WINDOW_BYTES);
const _: () = assert!(HTTP2_FRAME_BYTES_MAX <= HTTP2_STREAM_WINDOW_BYTES);
const _: () = assert!(
    REQUEST_BODIES_PER_CONNECTION_REQUESTS_MAX * REQUEST_BYTES_MAX <= REQUEST_BODIES_BYTES_MAX
);
const _: () = assert!(REQUEST_BYTES_MAX_CEILING <= REQUEST_BODIES_BYTES_MAX);
const _: () = assert!(REQUEST_BODIES_BYTES_MAX <= REQUEST_BODIES_BYTES_MAX_CEILING);
const _: () = assert!(HANDSHAKE_TIMEOUT_MS_MIN <= HANDSHAKE_TIMEOUT_MS_DEFAULT);
const _: () = assert!(HANDSHAKE_TIMEOUT_MS_DEFAULT <= HANDSHAKE_TIMEOUT_MS_MAX);
const _: () = assert!(IDLE_TIMEOUT_MS_MIN <= IDLE_TIMEOUT_MS_DEFAULT);
const _: () = assert!(IDLE_TIMEOUT_MS_DEFAULT <= IDLE_TIMEOUT_MS_MAX);
const _: () = assert!(CONNECTIONS_MIN <= CONNECTIONS_MAX);

// ----- The log's room on disk: a full disk, descriptor exhaustion (issue 10 items 2, 13). -----

/// How often the WAL writer retries a failed reservation of room ahead of its appends
/// (owned by the log: `wal::ROOM_RETRY_INTERVAL`). While one fails, grants and admin
/// changes answer UNAVAILABLE; the first success resumes them.
pub const LOG_ROOM_RETRY_MS: u64 = crate::wal::ROOM_RETRY_INTERVAL.as_millis() as u64;
/// How often the daemon looks at the log's alarm for health and the metrics.
pub const LOG_ALARM_CHECK_MS: u64 = 250;
/// A snapshot is due once a restart would replay more records than half the live
/// leases, and never for fewer than this many (`WalJournal::snapshot_due`).
pub const SNAPSHOT_REPLAY_RECORDS_MIN: u64 = 100_000;

/// A failed snapshot (no space, no descriptor) is retried after this long, doubling
/// up to the maximum, so that a full disk does not cost a state copy every second.
pub const SNAPSHOT_RETRY_MS_MIN: u64 = 1_000;
pub const SNAPSHOT_RETRY_MS_MAX: u64 = 60_000;
/// A lease-end record in the log at most: org id (63 B), lease id (16 B), generation
/// (10 B varint) and protobuf tags (< 10 B) make under 100 B of payload, plus a
/// fragment header (7 B) and the record prefix (16 B), plus one more fragment header
/// and a skipped block tail (13 B) if it crosses a block.
pub const LOG_LEASE_END_BYTES_MAX: u64 = 160;
/// Lease ends the log takes, at least, once its alarm is up (at default options). The
/// writer extends the zeros ahead of its appends when fewer than half of
/// `wal::PREALLOCATE_BYTES_DEFAULT` (512 KiB) remain, so a failed extension leaves
/// that half less the group just written: a quarter for that group (256 grants of
/// 1 KiB), a quarter for lease ends (queued only while they fit). Records admitted
/// before the alarm that do not fit are never appended past the zeros: their group
/// waits, unacknowledged, until space returns (`wal::writer`).
pub const LOG_LEASE_ENDS_IN_RESERVE_MIN: u64 = 1_000;

const _: () = assert!(LOG_ALARM_CHECK_MS <= LOG_ROOM_RETRY_MS);
const _: () = assert!(SNAPSHOT_RETRY_MS_MIN <= SNAPSHOT_RETRY_MS_MAX);
const _: () = assert!(
    LOG_LEASE_ENDS_IN_RESERVE_MIN * LOG_LEASE_END_BYTES_MAX
        <= crate::wal::PREALLOCATE_BYTES_DEFAULT / 4
);

// ----- Per-tenant resource bounds (issue 10 item 10). -----
// What one organization may hold, so one tenant's Admin cannot take the daemon's
// memory. Checked when a command is submitted (`AdminState::admit`), never on replay:
// a log written under larger caps still loads. Refused with RESOURCE_EXHAUSTED.

/// Organizations in one daemon (created by the operator only). An empty one costs
/// about 1 KiB, plus its usage figures when active (at most 2 x 38 KiB: minutes and hours).
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
const _: () = assert!(
    METRICS_HEADER_READ_MS_MAX < METRICS_REQUEST_MS_MAX,
    "a request head is read well within the connection's deadline"
);
const _: () = assert!(
    METRICS_REQUEST_BYTES_MAX >= 8192,
    "hyper's smallest read buffer"
);
const _: () = assert!(METRICS_ORGS_MAX <= ORGANIZATIONS_MAX);
const _: () = assert!(
    1 <= ACCEPT_ERROR_PAUSE_MS_MIN && ACCEPT_ERROR_PAUSE_MS_MIN <= ACCEPT_ERROR_PAUSE_MS_MAX
);
const _: () = assert!(ACCEPT_ERROR_PAUSE_MS_MAX < WARNING_REPEAT_MS_MIN);

// Cluster mode (`cluster`).

/// The election lease's time-to-live, in seconds (`[cluster] election_ttl_s`): a
/// crashed leader is replaced about this long after its last renewal; it steps down
/// after half of it without one. etcd grants no lease under about 2 s.
pub const ELECTION_TTL_S_MIN: u32 = 2;
pub const ELECTION_TTL_S_MAX: u32 = 60;
pub const ELECTION_TTL_S_DEFAULT: u32 = 4;
/// The largest admin request in cluster mode: one command's record must fit in one
/// etcd value (`cluster::journal::GROUP_BYTES_MAX`, below etcd's 1.5 MiB requests).
pub const CLUSTER_REQUEST_BYTES_MAX: usize = REQUEST_BYTES_MAX;
/// The most etcd endpoints a node is given.
pub const ETCD_ENDPOINTS_MAX: usize = 16;
const _: () = assert!(ELECTION_TTL_S_MIN <= ELECTION_TTL_S_DEFAULT);
const _: () = assert!(ELECTION_TTL_S_DEFAULT <= ELECTION_TTL_S_MAX);
const _: () = assert!(REQUEST_BYTES_MAX_FLOOR <= CLUSTER_REQUEST_BYTES_MAX);
/// `[cluster] snapshot_records`: the fewest log records after a snapshot in etcd that
/// make the next one due (or half the live leases, if more: the local log's rule).
/// Lower keeps etcd smaller and takeovers shorter at the cost of more snapshots.
pub const CLUSTER_SNAPSHOT_RECORDS_MIN: u64 = 100;
pub const CLUSTER_SNAPSHOT_RECORDS_MAX: u64 = 10_000_000;
pub const CLUSTER_SNAPSHOT_RECORDS_DEFAULT: u64 = SNAPSHOT_REPLAY_RECORDS_MIN;
/// A snapshot in etcd is also due once the log after the last one holds this many
/// bytes, so the log's share of etcd's space (2 GiB by default) stays small whatever
/// the records' sizes.
pub const CLUSTER_SNAPSHOT_LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// etcd's history is compacted after a snapshot, at most this often: compaction
/// frees the room of deleted and overwritten keys' old versions.
pub const CLUSTER_COMPACTION_INTERVAL_MS: u64 = 5_000;
const _: () = assert!(CLUSTER_SNAPSHOT_RECORDS_MIN <= CLUSTER_SNAPSHOT_RECORDS_DEFAULT);
const _: () = assert!(CLUSTER_SNAPSHOT_RECORDS_DEFAULT <= CLUSTER_SNAPSHOT_RECORDS_MAX);
/// Standbys followed in a row by a client (`client::at_leader`, the engine client): a
/// standby names the leader in the `seatbroker-leader` trailer of its UNAVAILABLE
/// answer and the client calls it at once; two nodes that name each other (a stale
/// view during an election) are followed this many times, then the client falls back
/// to its own list of addresses and its backoff.
pub const LEADER_REDIRECTS_MAX: usize = 3;
/// A standby whose following of the log fails (etcd away, a commit group that does
/// not replay) tries again after a pause that starts at the least and doubles with
/// each failure in a row up to the most: a damaged log costs a few reads a minute, not
/// two a second. It logs the first failure, a reminder at most this often while it
/// keeps failing, and once more when it follows again.
pub const CLUSTER_FOLLOW_RETRY_MS_MIN: u64 = 500;
pub const CLUSTER_FOLLOW_RETRY_MS_MAX: u64 = 30_000;
pub const CLUSTER_FOLLOW_REMINDER_MS: u64 = 60_000;
const _: () = assert!(
    0 < CLUSTER_FOLLOW_RETRY_MS_MIN
        && CLUSTER_FOLLOW_RETRY_MS_MIN <= CLUSTER_FOLLOW_RETRY_MS_MAX
        && CLUSTER_FOLLOW_RETRY_MS_MAX <= CLUSTER_FOLLOW_REMINDER_MS
);
/// Bytes of a password file (`[cluster] etcd_password_file`).
pub const ETCD_PASSWORD_FILE_BYTES_MAX: u64 = 4_096;
const _: () = assert!(LEADER_REDIRECTS_MAX >= 1);

// ----- The engine client library (`engine_client`), on the engine's side. -----

/// Acquires one client has sent and not yet seen answered; more are refused at once
/// with RESOURCE_EXHAUSTED (the broker's own bound per stream).
pub const ENGINE_PENDING_ACQUIRES_MAX: usize = PENDING_ACQUIRES_PER_STREAM_MAX;
/// Operations waiting for the stream (a broker that reads slowly); acquires past it are
/// refused at once, renewals are never queued twice.
pub const ENGINE_OPERATIONS_BUFFERED_MAX: usize = 8_192;
/// Operations in one `ChannelRequest`.
pub const ENGINE_OPERATIONS_PER_MESSAGE_MAX: usize = 512;
/// Encoded bytes of one `ChannelRequest` (a batch stops before it would pass this).
pub const ENGINE_MESSAGE_BYTES_MAX: usize = CHANNEL_REQUEST_BYTES_MAX / 2;
/// Leases named in one attach operation (a reconnection attaches in chunks).
pub const ENGINE_ATTACH_LEASES_PER_OPERATION_MAX: usize = 256;
/// Messages handed to the transport and not yet written.
pub const ENGINE_MESSAGES_IN_FLIGHT_MAX: usize = 8;
/// Commands of the handles (acquire, release, cancel) waiting for the client's task.
pub const ENGINE_COMMANDS_QUEUED_MAX: usize = 1_024;
/// The defaults of `engine_client::ClientOptions`.
pub const ENGINE_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const ENGINE_UNREACHABLE_PATIENCE_MS_DEFAULT: u64 = 10_000;
pub const ENGINE_RECONNECT_BACKOFF_MS_INITIAL: u64 = 100;
pub const ENGINE_RECONNECT_BACKOFF_MS_MAX: u64 = 5_000;
/// The shortest HTTP/2 keepalive interval and timeout of the engine client
/// (`engine_client::Keepalive`, half and a quarter of the leases' heartbeat interval).
pub const ENGINE_KEEPALIVE_MS_MIN: u64 = 100;

/// A stream acquire's fields at their largest, with room for tags and the numbers.
const ENGINE_ACQUIRE_WIRE_BYTES_MAX: usize =
    ENGINE_ID_BYTES_MAX + HOSTNAME_BYTES_MAX + LABEL_BYTES_MAX + 48;
// What the client sends stays within what the broker's channel accepts.
const _: () = assert!(ENGINE_MESSAGE_BYTES_MAX <= CHANNEL_REQUEST_BYTES_MAX);
const _: () = assert!(ENGINE_OPERATIONS_PER_MESSAGE_MAX <= CHANNEL_OPERATIONS_PER_MESSAGE_MAX);
const _: () = assert!(ENGINE_PENDING_ACQUIRES_MAX <= PENDING_ACQUIRES_PER_STREAM_MAX);
// Every operation fits in a message alone: an acquire, and an attach at its largest
// (a lease id is 32 hex digits; 64 bytes leave room).
const _: () = assert!(ENGINE_ACQUIRE_WIRE_BYTES_MAX <= ENGINE_MESSAGE_BYTES_MAX);
const _: () =
    assert!(ENGINE_ATTACH_LEASES_PER_OPERATION_MAX * (64 + 24) <= ENGINE_MESSAGE_BYTES_MAX);
// A reconnection re-sends every pending acquire, behind the attaches.
const _: () = assert!(ENGINE_PENDING_ACQUIRES_MAX < ENGINE_OPERATIONS_BUFFERED_MAX);
const _: () = assert!(ENGINE_RECONNECT_BACKOFF_MS_INITIAL <= ENGINE_RECONNECT_BACKOFF_MS_MAX);
const _: () = assert!(
    ENGINE_KEEPALIVE_MS_MIN * 4 * 3 <= LEASE_TTL_MS_DEFAULT as u64,
    "the default TTL's keepalive is derived from it, not the floor"
);

// ----- The session channel and the wait queue (issue 16). -----

/// The longest wait an acquire may ask for (`wait_ms`, unary and streamed): an hour.
/// Longer is INVALID_ARGUMENT, so a forgotten waiter cannot hold a queue place for days.
pub const ACQUIRE_WAIT_MS_MAX: u32 = 3_600_000;
/// Queued acquires of one organization, all products together: past it an acquire that
/// would wait is refused with RESOURCE_EXHAUSTED. A waiter costs about 200 bytes.
pub const WAITERS_PER_ORG_MAX: usize = 10_000;
/// A queued acquire hears its position at most this often (coalesced `queued` events;
/// a unary long poll hears nothing).
pub const QUEUE_POSITION_UPDATE_MS: u64 = 250;
/// Operations in one `ChannelRequest`: past it the stream is closed with
/// INVALID_ARGUMENT. Each is a few hundred bytes at most, so a full batch stays under
/// the message bound.
pub const CHANNEL_OPERATIONS_PER_MESSAGE_MAX: usize = 1_024;
/// A `ChannelRequest` over this is refused from its 5-byte prefix (tonic's per-service
/// decoding limit, shared with the unary calls of `SessionService`).
pub const CHANNEL_REQUEST_BYTES_MAX: usize = SESSION_REQUEST_BYTES_MAX;
/// Leases one stream holds (granted on it or attached): further acquires and attaches
/// are refused (RESOURCE_EXHAUSTED) until some are released.
pub const LEASES_PER_STREAM_MAX: usize = 100_000;
/// Acquires of one stream not answered yet (waiting in the queue or for durability):
/// past it an acquire is denied with RESOURCE_EXHAUSTED.
pub const PENDING_ACQUIRES_PER_STREAM_MAX: usize = 1_024;
/// Open streams authenticated by one API key (an engine host needs one): past it a new
/// stream is refused with RESOURCE_EXHAUSTED. Streams per connection are bounded by
/// HTTP/2 (`CONCURRENT_STREAMS_PER_CONNECTION_MAX`).
pub const STREAMS_PER_KEY_MAX: usize = 64;
/// Events waiting for a stream's client to read them. A stream whose outbox is full
/// (its client reads nothing) is closed with RESOURCE_EXHAUSTED; its leases stay live
/// for their TTL, to be attached again.
pub const STREAM_OUTBOX_EVENTS_MAX: usize = 8_192;
/// Events in one `ChannelResponse`: the outbox is drained into batches of this many.
pub const CHANNEL_EVENTS_PER_MESSAGE_MAX: usize = 256;
/// The largest encoded `ChannelResponse`: a full batch of the largest event (a granted
/// lease).
pub const CHANNEL_RESPONSE_BYTES_MAX: usize =
    CHANNEL_EVENTS_PER_MESSAGE_MAX * (LIST_LEASE_WIRE_BYTES_MAX + 64);

const _: () = assert!(PENDING_ACQUIRES_PER_STREAM_MAX <= WAITERS_PER_ORG_MAX);
const _: () = assert!(CHANNEL_EVENTS_PER_MESSAGE_MAX <= STREAM_OUTBOX_EVENTS_MAX);
// A whole batch of operations answered at once fits in the outbox.
const _: () = assert!(CHANNEL_OPERATIONS_PER_MESSAGE_MAX <= STREAM_OUTBOX_EVENTS_MAX);
const _: () = assert!(SESSION_RESPONSE_BYTES_MAX <= CHANNEL_RESPONSE_BYTES_MAX);
