//! API keys and the operator key: their format, generation, hashing and verification.
//!
//! A member key looks like `sbk_<id>_<secret><crc>`: `id` is 12 hex digits (public,
//! used to find the record), `secret` is 48 hex digits (192 random bits) and `crc` is
//! 8 hex digits of CRC-32C over everything before it, so a mistyped key is refused
//! without a lookup and secret scanners can recognise leaked keys by shape. The broker
//! keeps only the SHA-256 of the whole key and compares digests in constant time.
//!
//! The operator key is given in full (the configuration's `OperatorKeySource::Given`)
//! or kept as a hash in the data directory ([`OPERATOR_KEY_HASH_FILE`]): made on the
//! first start, read on every later one, replaced only by [`rotate_operator_key`].
//!
//! A key verified once is remembered ([`VerifiedKeys`]) until the admin state changes,
//! so an engine's calls after its first skip the SHA-256.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use hashbrown::HashTable;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::datadir::{self, LockError};
use crate::domain::{AdminState, ApiKeyId, DomainError, Principal};
use crate::limits;
use crate::wal::fs::{self, FileSystem, RealFs};

const MEMBER_KEY_PREFIX: &str = "sbk_";
const OPERATOR_KEY_PREFIX: &str = "sbo_";
const KEY_ID_HEX_LEN: usize = 12;
const SECRET_HEX_LEN: usize = 48;
const CRC_HEX_LEN: usize = 8;

/// A freshly generated member key: the full text is shown once, the hash is stored.
pub struct GeneratedKey {
    pub id: ApiKeyId,
    pub full_text: String,
    pub sha256: [u8; 32],
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system's random source failed");
    hex::encode(buffer)
}

/// Makes a new member key with a random id and secret.
pub fn generate_member_key() -> GeneratedKey {
    let id = random_hex(KEY_ID_HEX_LEN / 2);
    let body = format!("{MEMBER_KEY_PREFIX}{id}_{}", random_hex(SECRET_HEX_LEN / 2));
    let full_text = format!("{body}{:08x}", crc32c::crc32c(body.as_bytes()));
    GeneratedKey {
        id: ApiKeyId(id.into()),
        sha256: sha256(&full_text),
        full_text,
    }
}

/// Makes a new operator key (256 random bits).
pub fn generate_operator_key() -> String {
    format!("{OPERATOR_KEY_PREFIX}{}", random_hex(32))
}

/// Splits a member key into its id, checking shape and checksum. `None` when the text
/// is not a member key at all.
fn parse_member_key(token: &str) -> Option<Result<&str, DomainError>> {
    let rest = token.strip_prefix(MEMBER_KEY_PREFIX)?;
    let malformed = || {
        DomainError::Unauthenticated(
            "malformed API key: expected sbk_<id>_<secret><checksum> as printed by CreateApiKey"
                .into(),
        )
    };
    let Some((id, secret_and_crc)) = rest.split_once('_') else {
        return Some(Err(malformed()));
    };
    let all_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if id.len() != KEY_ID_HEX_LEN
        || secret_and_crc.len() != SECRET_HEX_LEN + CRC_HEX_LEN
        || !all_hex(id)
        || !all_hex(secret_and_crc)
    {
        return Some(Err(malformed()));
    }
    let (body, crc_text) = token.split_at(token.len() - CRC_HEX_LEN);
    // The text is lowercase hex (checked above), so parsing it compares exactly.
    if u32::from_str_radix(crc_text, 16) != Ok(crc32c::crc32c(body.as_bytes())) {
        return Some(Err(DomainError::Unauthenticated(
            "API key checksum does not match: the key was mistyped or truncated".into(),
        )));
    }
    Some(Ok(id))
}

/// An operator key given in full of a length outside the bounds of `limits`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the operator key must be {} to {} characters long, got {length}",
    limits::OPERATOR_KEY_BYTES_MIN,
    limits::OPERATOR_KEY_BYTES_MAX
)]
pub struct OperatorKeyLengthError {
    pub length: usize,
}

/// The operator's credential: only its hash is held.
#[derive(Clone)]
pub struct OperatorKey {
    sha256: [u8; 32],
}

impl OperatorKey {
    pub fn from_sha256(sha256: [u8; 32]) -> Self {
        OperatorKey { sha256 }
    }

    /// Takes an operator key given in full (from the environment or the configuration
    /// file); checks its length.
    pub fn from_text(text: &str) -> Result<Self, OperatorKeyLengthError> {
        if !(limits::OPERATOR_KEY_BYTES_MIN..=limits::OPERATOR_KEY_BYTES_MAX).contains(&text.len())
        {
            return Err(OperatorKeyLengthError { length: text.len() });
        }
        Ok(OperatorKey {
            sha256: sha256(text),
        })
    }

    fn matches(&self, token: &str) -> bool {
        bool::from(sha256(token).ct_eq(&self.sha256))
    }
}

/// The file of the data directory that holds the SHA-256 of the operator key, in hex.
pub const OPERATOR_KEY_HASH_FILE: &str = "operator-key.sha256";

/// Why the operator key of a data directory could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum OperatorKeyError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("operator key: {} is not a SHA-256 in hex", path.display())]
    NotAHash { path: PathBuf },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "data directory {} holds a log but no operator key: {OPERATOR_KEY_HASH_FILE} is missing \
         and SEATBROKER_OPERATOR_KEY is not set. seatbroker will not make a new operator key \
         for existing data on its own. Restore {OPERATOR_KEY_HASH_FILE} from a backup, or set \
         SEATBROKER_OPERATOR_KEY to the key this directory was used with, or make a new key \
         (the old one stops working) with: seatbroker operator-key rotate --data-dir {}",
        data_dir.display(),
        data_dir.display()
    )]
    Missing { data_dir: PathBuf },
}

/// The operator key kept in `data_dir` (locked by the caller) as a hash. A fresh
/// directory gets a new key, returned in full as well, to be shown once; a directory
/// whose log (in `log_dir`) has records but whose hash file is gone is refused
/// ([`OperatorKeyError::Missing`]): a new key then takes an explicit
/// [`rotate_operator_key`].
pub fn data_dir_operator_key(
    data_dir: &Path,
    log_dir: &Path,
) -> Result<(OperatorKey, Option<String>), OperatorKeyError> {
    let path = data_dir.join(OPERATOR_KEY_HASH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let sha256 = hex::decode(text.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or(OperatorKeyError::NotAHash { path })?;
            Ok((OperatorKey::from_sha256(sha256), None))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if holds_log(log_dir)? {
                return Err(OperatorKeyError::Missing {
                    data_dir: data_dir.to_path_buf(),
                });
            }
            let (operator, key) = write_new_operator_key(data_dir)?;
            Ok((operator, Some(key)))
        }
        Err(source) => Err(OperatorKeyError::DataDir { path, source }),
    }
}

/// `seatbroker operator-key rotate`: replaces the operator key of an existing data
/// directory with a new one, returned to be shown once. Takes the directory's lock
/// first, so it is refused while a daemon runs on it. The old key stops working at
/// the next start; the log, members and keys are untouched.
pub fn rotate_operator_key(data_dir: &Path) -> Result<String, OperatorKeyError> {
    if !data_dir.is_dir() {
        return Err(OperatorKeyError::DataDir {
            path: data_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such directory; a first `seatbroker serve` makes the directory and its key",
            ),
        });
    }
    let _lock = datadir::lock(data_dir)?;
    let (_, key) = write_new_operator_key(data_dir)?;
    Ok(key)
}

/// Whether the log directory holds anything (the daemon ran on the data directory).
fn holds_log(log_dir: &Path) -> Result<bool, OperatorKeyError> {
    match std::fs::read_dir(log_dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(OperatorKeyError::DataDir {
            path: log_dir.to_path_buf(),
            source,
        }),
    }
}

/// Makes a new operator key and durably replaces the hash file with its hash.
fn write_new_operator_key(data_dir: &Path) -> Result<(OperatorKey, String), OperatorKeyError> {
    let path = data_dir.join(OPERATOR_KEY_HASH_FILE);
    let key = generate_operator_key();
    let operator = OperatorKey {
        sha256: sha256(&key),
    };
    write_durably(
        &path,
        format!("{}\n", hex::encode(operator.sha256)).as_bytes(),
    )?;
    Ok((operator, key))
}

/// Replaces the file at `path` with `contents`, durably: the log's own way of writing a
/// whole file, then an fsync of the directory.
fn write_durably(path: &Path, contents: &[u8]) -> Result<(), OperatorKeyError> {
    let fs = RealFs;
    fs::write_through_temporary(&fs, path, &[contents]).map_err(|failed| {
        OperatorKeyError::DataDir {
            path: failed.path,
            source: failed.source,
        }
    })?;
    let directory = path.parent().unwrap_or(Path::new("."));
    fs.sync_dir(directory)
        .map_err(|source| OperatorKeyError::DataDir {
            path: directory.to_path_buf(),
            source,
        })
}

/// Resolves a bearer token into the caller. Unknown, revoked and malformed keys are
/// all UNAUTHENTICATED; which one is said only where it helps an honest caller.
///
/// A key bound to a client certificate subject is refused (PERMISSION_DENIED: the key
/// is genuine, this connection may not use it) unless `client_subject`, the subject of
/// the certificate the connection's TLS handshake verified, is that subject. The
/// answer says which kind of mismatch it is, never the expected subject.
pub fn authenticate(
    state: &AdminState,
    operator: &OperatorKey,
    token: &str,
    client_subject: Option<&str>,
) -> Result<Principal, DomainError> {
    check_token_length(token)?;
    verify(state, operator, token)?.admit(client_subject)
}

/// Refuses an empty or oversized token before anything else looks at it.
pub fn check_token_length(token: &str) -> Result<(), DomainError> {
    if token.is_empty() {
        return Err(DomainError::Unauthenticated(
            "missing API key: send metadata 'authorization: Bearer <key>'".into(),
        ));
    }
    if token.len() > limits::BEARER_TOKEN_BYTES_MAX {
        return Err(DomainError::Unauthenticated("API key is too long".into()));
    }
    Ok(())
}

/// A key found genuine: whom it stands for, and the client certificate subject it is
/// bound to (checked on every call, as each call may come over another connection).
#[derive(Debug, Clone)]
pub struct VerifiedKey {
    principal: Principal,
    /// The member key's id (for the binding's refusal); `None` for the operator key.
    key_id: Option<ApiKeyId>,
    bound_subject: Option<Box<str>>,
}

impl VerifiedKey {
    /// The caller, over a connection whose verified client certificate has
    /// `client_subject`.
    pub fn admit(&self, client_subject: Option<&str>) -> Result<Principal, DomainError> {
        if let Some(key_id) = &self.key_id {
            check_client_binding(
                key_id.as_str(),
                self.bound_subject.as_deref(),
                client_subject,
            )?;
        }
        Ok(self.principal.clone())
    }
}

/// The SHA-256 path: finds the key's record and compares digests in constant time.
/// The caller has checked the token's length ([`check_token_length`]).
pub fn verify(
    state: &AdminState,
    operator: &OperatorKey,
    token: &str,
) -> Result<VerifiedKey, DomainError> {
    let operator_key = || VerifiedKey {
        principal: Principal::Operator,
        key_id: None,
        bound_subject: None,
    };
    if let Some(parsed) = parse_member_key(token) {
        let key_id = parsed?;
        if let Some((org, record)) = state.api_key(key_id)
            && bool::from(sha256(token).ct_eq(&record.secret_sha256))
        {
            return Ok(VerifiedKey {
                principal: Principal::Member {
                    org: org.id.clone(),
                    email: record.email.clone(),
                },
                key_id: Some(record.id.clone()),
                bound_subject: record.client_cert_subject.as_deref().map(Box::from),
            });
        }
        // An operator key set by the environment may look like a member key.
        if operator.matches(token) {
            return Ok(operator_key());
        }
        return Err(DomainError::Unauthenticated(format!(
            "API key {key_id} is unknown or was revoked"
        )));
    }
    if operator.matches(token) {
        return Ok(operator_key());
    }
    Err(DomainError::Unauthenticated(
        "unrecognised API key: member keys start with sbk_".into(),
    ))
}

/// Keys verified once, so that later calls with the same key skip the SHA-256 (a
/// tenth of a unary call's instructions before this cache).
///
/// What a security review asks of it:
/// - **Keyed by a secret hash.** An entry is found by SipHash-1-3 of the presented
///   token under a random key of this process (std's `RandomState`), so nobody can
///   aim tokens at one bucket. The hash only finds the entry: the entry holds the
///   verified token's bytes, compared in constant time (`subtle`) with the presented
///   one, so a collision never authenticates; it is a miss, verified the slow way.
/// - **Only what the admin state said at verification.** The cache belongs to one
///   generation of the admin state (`Broker` counts every change under its write
///   lock). A lookup of another generation is a miss, and a newer generation's first
///   verification empties the cache: any admin change (a revoked key, a removed
///   member, a role changed, an organization deleted, a key bound to a client
///   certificate subject, and whatever a later command may change) takes effect on
///   the very next call, with no list of "commands that touch keys" to keep true.
///   Admin changes are rare against engine calls, so emptying on each costs little.
///   The binding to a client certificate subject is checked on every call.
/// - **Bounded.** At most `limits::VERIFIED_KEYS_CACHED_MAX` entries; past it the
///   oldest entry is evicted (first in, first out: a hit changes nothing, so hits
///   share a read lock).
/// - **Secret bytes wiped.** The token's copy is zeroized when its entry is dropped
///   (evicted, replaced, emptied). Nothing here is `Debug` or logged.
/// - Only successes are kept: a refused key pays the full verification each time.
pub struct VerifiedKeys<S = RandomState> {
    hasher: S,
    cached: RwLock<CachedKeys>,
}

#[derive(Default)]
struct CachedKeys {
    /// The admin state's generation the entries were verified against.
    generation: u64,
    /// At most one entry per hash value (a colliding token replaces the other).
    table: HashTable<CachedKey>,
    /// The entries' hashes, oldest first, for eviction.
    order: VecDeque<u64>,
}

struct CachedKey {
    hash: u64,
    token: Zeroizing<Vec<u8>>,
    verified: VerifiedKey,
}

impl Default for VerifiedKeys<RandomState> {
    fn default() -> Self {
        Self::with_hasher(RandomState::new())
    }
}

impl<S: BuildHasher> VerifiedKeys<S> {
    pub fn with_hasher(hasher: S) -> Self {
        VerifiedKeys {
            hasher,
            cached: RwLock::new(CachedKeys::default()),
        }
    }

    /// The verified key `token` is, if it was verified against the admin state of
    /// `generation`.
    pub fn lookup(&self, token: &str, generation: u64) -> Option<VerifiedKey> {
        let hash = self.hasher.hash_one(token.as_bytes());
        let cached = self.cached.read();
        if cached.generation != generation {
            return None;
        }
        let entry = cached.table.find(hash, |entry| entry.hash == hash)?;
        bool::from(entry.token.as_slice().ct_eq(token.as_bytes())).then(|| entry.verified.clone())
    }

    /// Keeps `token`, verified against the admin state of `generation`.
    pub fn remember(&self, token: &str, generation: u64, verified: &VerifiedKey) {
        let hash = self.hasher.hash_one(token.as_bytes());
        let mut cached = self.cached.write();
        if generation < cached.generation {
            return; // Verified against a state that has changed since.
        }
        if generation > cached.generation {
            *cached = CachedKeys {
                generation,
                ..CachedKeys::default()
            };
        }
        let entry = CachedKey {
            hash,
            token: Zeroizing::new(token.as_bytes().to_vec()),
            verified: verified.clone(),
        };
        let CachedKeys { table, order, .. } = &mut *cached;
        if let Some(existing) = table.find_mut(hash, |entry| entry.hash == hash) {
            *existing = entry;
            return;
        }
        if table.len() >= limits::VERIFIED_KEYS_CACHED_MAX
            && let Some(oldest) = order.pop_front()
            && let Ok(evicted) = table.find_entry(oldest, |entry| entry.hash == oldest)
        {
            evicted.remove();
        }
        table.insert_unique(hash, entry, |entry| entry.hash);
        order.push_back(hash);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.cached.read().table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Refuses a key bound to `bound` used over a connection whose client certificate
/// subject is `presented` (none: plaintext, or TLS without a client certificate).
fn check_client_binding(
    key_id: &str,
    bound: Option<&str>,
    presented: Option<&str>,
) -> Result<(), DomainError> {
    let Some(bound) = bound else {
        return Ok(());
    };
    match presented {
        Some(presented) if presented == bound => Ok(()),
        Some(_) => Err(DomainError::PermissionDenied(format!(
            "API key {key_id} is bound to a client certificate subject, and this \
             connection's client certificate has another subject; connect with the \
             certificate the key was bound to"
        ))),
        None => Err(DomainError::PermissionDenied(format!(
            "API key {key_id} is bound to a client certificate subject, and this \
             connection presented no client certificate; connect over TLS with the \
             certificate the key was bound to (--tls-cert and --tls-key)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, OrgId};

    /// Every token hashes to 0: all of them collide in one bucket.
    #[derive(Default)]
    struct Colliding;
    impl std::hash::Hasher for Colliding {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, _: &[u8]) {}
    }
    type CollidingHasher = std::hash::BuildHasherDefault<Colliding>;

    fn member(key_id: &str, bound_subject: Option<&str>) -> VerifiedKey {
        VerifiedKey {
            principal: Principal::Member {
                org: OrgId::parse("acme").unwrap(),
                email: Email::parse("ann@acme.test").unwrap(),
            },
            key_id: Some(ApiKeyId(key_id.into())),
            bound_subject: bound_subject.map(Box::from),
        }
    }

    #[test]
    fn a_colliding_token_never_passes_for_the_cached_one() {
        let keys = VerifiedKeys::with_hasher(CollidingHasher::default());
        let genuine = generate_member_key().full_text;
        keys.remember(&genuine, 1, &member("k", None));
        assert!(keys.lookup(&genuine, 1).is_some());
        // Same bucket, same length, one byte off; and a prefix, and a longer one.
        let mut near = genuine.clone().into_bytes();
        near[20] = if near[20] == b'a' { b'b' } else { b'a' };
        let near = String::from_utf8(near).unwrap();
        for other in [
            near.as_str(),
            &genuine[..genuine.len() - 1],
            &format!("{genuine}0"),
        ] {
            assert!(
                keys.lookup(other, 1).is_none(),
                "{other} taken for the cached key"
            );
        }
        // A second verified key in the same bucket replaces the first, never merges.
        let second = generate_member_key().full_text;
        keys.remember(&second, 1, &member("k2", None));
        assert_eq!(keys.len(), 1);
        assert!(keys.lookup(&genuine, 1).is_none());
        assert!(keys.lookup(&second, 1).is_some());
    }

    #[test]
    fn an_admin_change_empties_the_cache_and_a_stale_verification_is_not_kept() {
        let keys = VerifiedKeys::default();
        let a = generate_member_key().full_text;
        let b = generate_member_key().full_text;
        keys.remember(&a, 5, &member("a", None));
        assert!(keys.lookup(&a, 5).is_some());
        assert!(keys.lookup(&a, 6).is_none(), "a hit of another generation");
        keys.remember(&b, 6, &member("b", None));
        assert_eq!(keys.len(), 1, "the newer generation emptied the cache");
        assert!(keys.lookup(&a, 6).is_none());
        // Verified against generation 5 but remembered after 6 began: not kept.
        keys.remember(&a, 5, &member("a", None));
        assert!(keys.lookup(&a, 6).is_none());
        assert!(keys.lookup(&a, 5).is_none());
    }

    #[test]
    fn the_cache_holds_its_bound_evicting_the_oldest() {
        let keys = VerifiedKeys::default();
        let tokens: Vec<String> = (0..limits::VERIFIED_KEYS_CACHED_MAX + 10)
            .map(|i| format!("sbo_token_{i:08}"))
            .collect();
        for token in &tokens {
            keys.remember(token, 1, &member("k", None));
        }
        assert_eq!(keys.len(), limits::VERIFIED_KEYS_CACHED_MAX);
        assert!(tokens[..10].iter().all(|t| keys.lookup(t, 1).is_none()));
        assert!(tokens[10..].iter().all(|t| keys.lookup(t, 1).is_some()));
    }

    #[test]
    fn a_cached_bound_key_still_needs_its_subject() {
        let keys = VerifiedKeys::default();
        let token = generate_member_key().full_text;
        keys.remember(&token, 1, &member("k", Some("CN=engine-7")));
        let cached = keys.lookup(&token, 1).expect("cached");
        assert!(cached.admit(Some("CN=engine-7")).is_ok());
        assert!(matches!(
            cached.admit(None),
            Err(DomainError::PermissionDenied(_))
        ));
        assert!(matches!(
            cached.admit(Some("CN=engine-8")),
            Err(DomainError::PermissionDenied(_))
        ));
    }

    #[test]
    fn a_bound_key_needs_its_subject() {
        let bound = Some("CN=engine-7, O=Acme");
        assert!(check_client_binding("k", None, None).is_ok());
        assert!(check_client_binding("k", None, Some("CN=x")).is_ok());
        assert!(check_client_binding("k", bound, bound).is_ok());
        let other = check_client_binding("k", bound, Some("CN=engine-8, O=Acme"))
            .unwrap_err()
            .to_string();
        assert!(other.contains("another subject"), "{other}");
        assert!(
            !other.contains("engine-7"),
            "the bound subject leaked: {other}"
        );
        let none = check_client_binding("k", bound, None)
            .unwrap_err()
            .to_string();
        assert!(none.contains("no client certificate"), "{none}");
    }

    #[test]
    fn generated_keys_parse_and_typos_do_not() {
        let key = generate_member_key();
        assert_eq!(
            parse_member_key(&key.full_text).unwrap().unwrap(),
            key.id.as_str()
        );
        let mut typo = key.full_text.clone().into_bytes();
        let i = 20;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert!(parse_member_key(&typo).unwrap().is_err());
        assert!(parse_member_key("sbk_short").unwrap().is_err());
        assert!(parse_member_key("Bearer-nothing").is_none());
    }

    #[test]
    fn operator_key_needs_length() {
        assert!(OperatorKey::from_text("short").is_err());
        let key = generate_operator_key();
        let operator = OperatorKey::from_text(&key).unwrap();
        assert!(operator.matches(&key));
        assert!(!operator.matches("sbo_other"));
    }
}
