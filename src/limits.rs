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

/// Organizations in one daemon.
pub const ORGANIZATIONS_MAX: usize = 100_000;
/// Members of one organization.
pub const MEMBERS_PER_ORG_MAX: usize = 1_000_000;
/// Live API keys of one organization.
pub const API_KEYS_PER_ORG_MAX: usize = 1_000_000;
/// Live API keys of one member.
pub const API_KEYS_PER_MEMBER_MAX: usize = 100;

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
/// Concurrent client connections.
pub const CONNECTIONS_MAX: usize = 10_000;

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
