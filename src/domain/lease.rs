//! A lease as the rest of the daemon sees it: its id (derived from the engine's
//! identity, so a retried acquire finds the same lease) and the owned view of one live
//! session. The lease table (`leases`) keeps them in a compact form of its own; the
//! journal (`domain::journal`) and the log's codec (`storage::codec`) take these.

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{DomainError, Email, OrgId, Product};

/// Why a session was ended by someone other than its engine (an admin action, an admin
/// command's withdrawal, or a rule of the license): told to the observers, and pushed
/// to the stream holding the lease, so an engine learns the precise cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// An admin terminated the session (`TerminateSession`).
    Admin,
    /// The user's license of the product was unassigned or transferred away.
    Unassigned,
    /// The user was removed from the organization.
    MemberRemoved,
    /// The API key the holding stream was authenticated with was revoked.
    KeyRevoked,
    /// The organization's license expired.
    LicenseExpired,
    /// The organization was deleted.
    OrganizationDeleted,
}

impl Termination {
    /// The cause's name in the audit record and the logs.
    pub fn name(self) -> &'static str {
        match self {
            Termination::Admin => "terminated",
            Termination::Unassigned => "unassigned",
            Termination::MemberRemoved => "member_removed",
            Termination::KeyRevoked => "key_revoked",
            Termination::LicenseExpired => "license_expired",
            Termination::OrganizationDeleted => "organization_deleted",
        }
    }
}

/// A lease id: 128 bits derived from the engine's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u128);

impl LeaseId {
    const PREFIX: &'static str = "ls_";

    /// The id of the lease of `engine_id` of `email` for `product` in `org`: the same
    /// for every retry of that engine.
    pub fn derive(org: &OrgId, email: &Email, product: Product, engine_id: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [org.as_str(), email.as_str(), product.name(), engine_id] {
            hasher.update((part.len() as u32).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        LeaseId(u128::from_be_bytes(first))
    }

    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let invalid = || {
            DomainError::invalid(
                "lease_id",
                format!("{text:?} is not a lease id like ls_<32 hex digits>"),
            )
        };
        let digits = text.strip_prefix(Self::PREFIX).ok_or_else(invalid)?;
        // `from_str_radix` alone would also take a leading '+': one id, one spelling.
        if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        u128::from_str_radix(digits, 16)
            .map(LeaseId)
            .map_err(|_| invalid())
    }
}

impl std::fmt::Display for LeaseId {
    /// `ls_` and 32 lowercase hex digits ([`LeaseId::text`]): every event and wire
    /// lease carries one, and the formatter's padded hex costs several times more.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl LeaseId {
    /// The id's text on the stack, as `Display` writes it: for the audit record's
    /// writer, which writes one per lease event, and every wire lease.
    pub fn text(self) -> LeaseIdText {
        let mut bytes = [0u8; LeaseIdText::LEN];
        bytes[..Self::PREFIX.len()].copy_from_slice(Self::PREFIX.as_bytes());
        hex::encode_to_slice(self.0.to_be_bytes(), &mut bytes[Self::PREFIX.len()..])
            .expect("32 hex digits fit after the prefix");
        LeaseIdText(bytes)
    }
}

/// A lease id's text, `ls_` and 32 lowercase hex digits, without an allocation.
#[derive(Debug, Clone, Copy)]
pub struct LeaseIdText([u8; LeaseIdText::LEN]);

impl LeaseIdText {
    const LEN: usize = LeaseId::PREFIX.len() + 32;

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }
}

/// One live session, owned (the table keeps a compact form and builds this on demand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub generation: u64,
    pub product: Product,
    pub email: Email,
    pub engine_id: Box<str>,
    pub hostname: Box<str>,
    pub label: Box<str>,
    /// Monotonic instant after which the lease is gone: last heartbeat received + TTL,
    /// rounded up to the millisecond.
    pub deadline: Instant,
    pub acquired_at_unix_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::LeaseId;

    #[test]
    fn a_lease_id_is_spelled_ls_and_32_lowercase_hex_digits() {
        for id in [
            0,
            1,
            0xabc,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let text = LeaseId(id).to_string();
            assert_eq!(text, format!("ls_{id:032x}"));
            assert_eq!(LeaseId::parse(&text).unwrap(), LeaseId(id));
        }
    }
}
