//! Validated value types. A value of these types is well-formed by construction, so
//! code past the edge never re-checks a name or an email.

use std::fmt;
use std::sync::Arc;

use super::error::DomainError;
use crate::limits;

/// An organization id: lowercase ASCII letters, digits and '-', starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(Arc<str>);

impl OrgId {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let field = "org_id";
        if raw.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if raw.len() > limits::ORG_ID_BYTES_MAX {
            return Err(DomainError::invalid(
                field,
                format!(
                    "is {} bytes; at most {} are allowed",
                    raw.len(),
                    limits::ORG_ID_BYTES_MAX
                ),
            ));
        }
        let starts_with_letter = raw.as_bytes()[0].is_ascii_lowercase();
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if !starts_with_letter || !raw.chars().all(allowed) {
            return Err(DomainError::invalid(
                field,
                format!(
                    "{raw:?} must start with a lowercase letter and hold only lowercase letters, digits and '-'"
                ),
            ));
        }
        Ok(OrgId(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, trimmed and lowercased, so that one person is one key.
/// The check is deliberately simple (one '@', a dotted domain, no spaces or controls):
/// the broker names users, it does not deliver mail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(Arc<str>);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        Self::parse_field("email", raw)
    }

    pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, DomainError> {
        let normalized = raw.trim().to_ascii_lowercase();
        if normalized.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if normalized.len() > limits::EMAIL_BYTES_MAX {
            return Err(DomainError::invalid(
                field,
                format!(
                    "is {} bytes; at most {} are allowed",
                    normalized.len(),
                    limits::EMAIL_BYTES_MAX
                ),
            ));
        }
        let invalid = || {
            DomainError::invalid(
                field,
                format!("{raw:?} is not an email address like name@example.com"),
            )
        };
        let (local, domain) = normalized.split_once('@').ok_or_else(invalid)?;
        let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '@';
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty()
            || local.len() > limits::EMAIL_LOCAL_BYTES_MAX
            || !domain_ok
            || normalized.chars().filter(|c| *c == '@').count() != 1
            || local.chars().any(bad_char)
            || domain.chars().any(bad_char)
        {
            return Err(invalid());
        }
        Ok(Email(normalized.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two kinds of license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    /// Named seat: assigned users never exceed the quota; one session per user.
    Kse,
    /// Floating: any number of assigned users; parallel sessions never exceed the quota.
    Kre,
}

impl Product {
    pub const ALL: [Product; 2] = [Product::Kse, Product::Kre];

    pub fn name(self) -> &'static str {
        match self {
            Product::Kse => "KSE",
            Product::Kre => "KRE",
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A member's role in an organization. Owners and Admins administer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn administers(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// Whether this role grants more than `other` (Owner > Admin > Member).
    pub fn outranks(self, other: Role) -> bool {
        self.rights() > other.rights()
    }

    fn rights(self) -> u8 {
        match self {
            Role::Owner => 2,
            Role::Admin => 1,
            Role::Member => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The licenses an organization bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub kse_seats: u32,
    pub kre_sessions: u32,
    /// Unix milliseconds after which nothing is granted; `None` for no expiry.
    pub expires_at_unix_ms: Option<i64>,
}

impl Quota {
    pub fn validate(self) -> Result<Self, DomainError> {
        if self.kse_seats > limits::KSE_SEATS_MAX {
            return Err(DomainError::invalid(
                "quota.kse_seats",
                format!(
                    "{} is above the maximum {}",
                    self.kse_seats,
                    limits::KSE_SEATS_MAX
                ),
            ));
        }
        if self.kre_sessions > limits::KRE_SESSIONS_MAX {
            return Err(DomainError::invalid(
                "quota.kre_sessions",
                format!(
                    "{} is above the maximum {}",
                    self.kre_sessions,
                    limits::KRE_SESSIONS_MAX
                ),
            ));
        }
        if let Some(at) = self.expires_at_unix_ms
            && at <= 0
        {
            return Err(DomainError::invalid(
                "quota.expires_at_unix_ms",
                "must be a positive Unix time in milliseconds, or 0 for none",
            ));
        }
        Ok(self)
    }

    pub fn for_product(self, product: Product) -> u32 {
        match product {
            Product::Kse => self.kse_seats,
            Product::Kre => self.kre_sessions,
        }
    }

    pub fn expired_at(self, unix_ms: i64) -> bool {
        self.expires_at_unix_ms.is_some_and(|at| unix_ms >= at)
    }
}

/// The public id of an API key (the `<id>` part of `sbk_<id>_<secret><crc>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyId(pub Arc<str>);

impl ApiKeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ApiKeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a required free-text field (a display name): not blank, then as
/// [`check_optional_text`].
pub fn check_required_text(
    field: &'static str,
    value: &str,
    bytes_max: usize,
) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    check_optional_text(field, value, bytes_max)
}

/// Checks a free-text field (labels, hostnames) against its bound and refuses control
/// characters, which would corrupt tables and logs.
pub fn check_optional_text(
    field: &'static str,
    value: &str,
    bytes_max: usize,
) -> Result<(), DomainError> {
    if value.len() > bytes_max {
        return Err(DomainError::invalid(
            field,
            format!("is {} bytes; at most {bytes_max} are allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not hold control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            Email::parse(" Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@@example.com",
            "a@example..com",
            "a@.example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[test]
    fn org_ids_are_checked() {
        assert!(OrgId::parse("acme-2").is_ok());
        for bad in ["", "Acme", "2acme", "acme_corp", "acme corp"] {
            assert!(OrgId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(OrgId::parse(&"a".repeat(64)).is_err());
        assert!(OrgId::parse(&"a".repeat(63)).is_ok());
    }
}
