//! API keys and the operator key: their format, generation, hashing and verification.
//!
//! A member key looks like `sbk_<id>_<secret><crc>`: `id` is 12 hex digits (public,
//! used to find the record), `secret` is 48 hex digits (192 random bits) and `crc` is
//! 8 hex digits of CRC-32C over everything before it, so a mistyped key is refused
//! without a lookup and secret scanners can recognise leaked keys by shape. The broker
//! keeps only the SHA-256 of the whole key and compares digests in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{AdminState, ApiKeyId, DomainError, Principal};
use crate::limits;

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

/// The operator's credential: only its hash is held.
#[derive(Clone)]
pub struct OperatorKey {
    sha256: [u8; 32],
}

impl OperatorKey {
    pub fn from_sha256(sha256: [u8; 32]) -> Self {
        OperatorKey { sha256 }
    }

    /// Takes an operator key given in full (from the environment); checks its length.
    pub fn from_text(text: &str) -> Result<Self, String> {
        if !(limits::OPERATOR_KEY_BYTES_MIN..=limits::OPERATOR_KEY_BYTES_MAX).contains(&text.len())
        {
            return Err(format!(
                "the operator key must be {} to {} characters long, got {}",
                limits::OPERATOR_KEY_BYTES_MIN,
                limits::OPERATOR_KEY_BYTES_MAX,
                text.len()
            ));
        }
        Ok(OperatorKey {
            sha256: sha256(text),
        })
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    fn matches(&self, token: &str) -> bool {
        bool::from(sha256(token).ct_eq(&self.sha256))
    }
}

/// Resolves a bearer token into the caller. Unknown, revoked and malformed keys are
/// all UNAUTHENTICATED; which one is said only where it helps an honest caller.
pub fn authenticate(
    state: &AdminState,
    operator: &OperatorKey,
    token: &str,
) -> Result<Principal, DomainError> {
    if token.is_empty() {
        return Err(DomainError::Unauthenticated(
            "missing API key: send metadata 'authorization: Bearer <key>'".into(),
        ));
    }
    if token.len() > limits::BEARER_TOKEN_BYTES_MAX {
        return Err(DomainError::Unauthenticated("API key is too long".into()));
    }
    if let Some(parsed) = parse_member_key(token) {
        let key_id = parsed?;
        if let Some((org, record)) = state.api_key(key_id)
            && bool::from(sha256(token).ct_eq(&record.secret_sha256))
        {
            return Ok(Principal::Member {
                org: org.id.clone(),
                email: record.email.clone(),
            });
        }
        // An operator key set by the environment may look like a member key.
        if operator.matches(token) {
            return Ok(Principal::Operator);
        }
        return Err(DomainError::Unauthenticated(format!(
            "API key {key_id} is unknown or was revoked"
        )));
    }
    if operator.matches(token) {
        return Ok(Principal::Operator);
    }
    Err(DomainError::Unauthenticated(
        "unrecognised API key: member keys start with sbk_".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
