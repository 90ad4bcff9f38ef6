//! Validated value types. A value of these types is well-formed by construction, so
//! code past the edge never re-checks a name or an email.

use std::fmt;
use std::sync::Arc;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

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
        check_visible(field, raw)?;
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

/// An email address in one normal form, so that one person is one member: trimmed,
/// NFKC-normalized and case-folded (Unicode default case folding), the
/// "compatibility caseless" identity of Unicode 3.13 that PRECIS (RFC 8264/8265)
/// builds on. `ÄLICE@example.com`, `älice@example.com` and the fullwidth
/// `ａｌｉｃｅ@example.com` name one member. Invisible, control and bidirectional
/// formatting characters are refused rather than removed, so that what a person reads
/// is what the daemon stores. The syntax check is deliberately simple (one '@', a
/// dotted domain, no spaces): the broker names users, it does not deliver mail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(Arc<str>);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        Self::parse_field("email", raw)
    }

    /// Parses an email sent by a client, naming `field` in any refusal.
    pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, DomainError> {
        let trimmed = raw.trim();
        check_visible(field, trimmed)?;
        let normalized = normalize_identity(trimmed);
        Self::check_syntax(field, raw, normalized)
    }

    /// An email as stored in the log or a snapshot by any version: kept as it was
    /// (earlier versions lowercased ASCII only), so that recovery rebuilds exactly the
    /// members it acknowledged. Only the syntax of the time is checked.
    pub fn from_stored(stored: &str) -> Result<Self, DomainError> {
        Self::check_syntax("email", stored, stored.trim().to_ascii_lowercase())
    }

    fn check_syntax(
        field: &'static str,
        raw: &str,
        normalized: String,
    ) -> Result<Self, DomainError> {
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

/// A change to some fields of a quota; `None` keeps the current value. Merged with the
/// current quota when applied (under the admin lock, and again on replay), so two
/// partial updates never undo each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaUpdate {
    pub kse_seats: Option<u32>,
    pub kre_sessions: Option<u32>,
    /// `Some(None)` removes the expiry.
    pub expires_at_unix_ms: Option<Option<i64>>,
}

impl QuotaUpdate {
    /// True when it changes no field: a request for it is refused (nothing to do).
    pub fn is_empty(self) -> bool {
        self == QuotaUpdate::default()
    }

    /// Checks each field it sets as `Quota::validate` does.
    pub fn validate(self) -> Result<Self, DomainError> {
        self.applied_to(Quota::default())?;
        Ok(self)
    }

    /// The quota `current` becomes, checked as any quota is.
    pub fn applied_to(self, current: Quota) -> Result<Quota, DomainError> {
        Quota {
            kse_seats: self.kse_seats.unwrap_or(current.kse_seats),
            kre_sessions: self.kre_sessions.unwrap_or(current.kre_sessions),
            expires_at_unix_ms: self
                .expires_at_unix_ms
                .unwrap_or(current.expires_at_unix_ms),
        }
        .validate()
    }
}

/// Whether a new license expiry may lie in the past (the caller forced it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastExpiry {
    Refuse,
    Allow,
}

/// The rules a license expiry given now must meet, besides `Quota::validate`: not
/// before 2000-01-01 (seconds given as milliseconds), and not in the past unless
/// forced. For new requests only: a log holding such a value still loads.
pub fn check_new_expiry(
    field: &'static str,
    at_unix_ms: i64,
    now_unix_ms: i64,
    past: PastExpiry,
) -> Result<(), DomainError> {
    if at_unix_ms < limits::LICENSE_EXPIRY_UNIX_MS_MIN {
        return Err(DomainError::invalid(
            field,
            format!(
                "{at_unix_ms} is before 2000-01-01T00:00:00Z ({} ms): it looks like seconds \
                 given as milliseconds; send Unix milliseconds (seconds x 1000)",
                limits::LICENSE_EXPIRY_UNIX_MS_MIN
            ),
        ));
    }
    if at_unix_ms <= now_unix_ms && past == PastExpiry::Refuse {
        return Err(DomainError::invalid(
            field,
            format!(
                "{at_unix_ms} is in the past (now is {now_unix_ms}): the licenses would stop \
                 granting at once; give a later time, or force it (allow_past_expiry)"
            ),
        ));
    }
    Ok(())
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

/// Checks a free-text field (display names, labels, hostnames, engine ids) against its
/// bound and refuses invisible characters (see [`check_visible`]).
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
    check_visible(field, value)
}

/// Checks the client certificate subject an API key is bound to: not blank, within
/// `limits::CLIENT_CERT_SUBJECT_BYTES_MAX`, visible characters only.
pub fn check_client_cert_subject(subject: &str) -> Result<(), DomainError> {
    check_required_text(
        "client_cert_subject",
        subject,
        limits::CLIENT_CERT_SUBJECT_BYTES_MAX,
    )
}

/// The identity form of a text: NFKC, then Unicode default case folding, then NFKC
/// again (folding can leave a string that is not in NFKC). ASCII takes a fast path
/// with the same result.
fn normalize_identity(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let compatible: String = text.nfkc().collect();
    caseless::default_case_fold_str(&compatible)
        .nfkc()
        .collect()
}

/// Refuses the characters a reader cannot see or that change how the text around them
/// is displayed: controls (Cc), format characters (Cf: zero-width spaces and joiners,
/// bidirectional embeddings, overrides, isolates and marks, the BOM, tag characters),
/// line and paragraph separators, private-use, surrogate and unassigned code points,
/// and the other default-ignorable code points (variation selectors, Hangul fillers,
/// the combining grapheme joiner). Such characters let two identities look the same
/// or one text display as another (CVE-2021-42574, "Trojan Source"). The refusal
/// names the field and the code point.
pub fn check_visible(field: &'static str, value: &str) -> Result<(), DomainError> {
    match value
        .chars()
        .enumerate()
        .find_map(|(at, c)| Some((at, c, invisible_kind(c)?)))
    {
        None => Ok(()),
        Some((at, c, kind)) => Err(DomainError::invalid(
            field,
            format!(
                "character {} is U+{:04X}, {kind}; remove it (invisible, control and bidirectional formatting characters are refused)",
                at + 1,
                c as u32
            ),
        )),
    }
}

/// What makes `c` unfit for an identifier or a label, if anything.
fn invisible_kind(c: char) -> Option<&'static str> {
    if c.is_ascii() {
        return c.is_ascii_control().then_some("a control character");
    }
    if is_bidi_control(c) {
        return Some("a bidirectional formatting character");
    }
    let kind = match c.general_category() {
        GeneralCategory::Control => "a control character",
        GeneralCategory::Format => "an invisible format character",
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            "a line or paragraph separator"
        }
        GeneralCategory::PrivateUse => "a private-use character",
        GeneralCategory::Surrogate | GeneralCategory::Unassigned => "an unassigned code point",
        _ if is_default_ignorable(c) => "an invisible (default-ignorable) character",
        _ => return None,
    };
    Some(kind)
}

/// The bidirectional formatting characters (Unicode 9.2, UAX #9): ALM, LRM, RLM, the
/// embeddings and overrides LRE..RLO with PDF, and the isolates LRI..PDI.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Default_Ignorable_Code_Point (DerivedCoreProperties.txt) outside the categories
/// refused above: characters that render as nothing.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{034F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_expiry_is_refused_in_seconds_or_in_the_past_unless_forced() {
        let now = 1_796_083_200_000;
        let seconds = check_new_expiry("e", 1_798_761_600, now, PastExpiry::Allow).unwrap_err();
        assert!(seconds.to_string().contains("seconds"), "{seconds}");
        let past = check_new_expiry("e", now - 1, now, PastExpiry::Refuse).unwrap_err();
        assert!(past.to_string().contains("in the past"), "{past}");
        assert!(check_new_expiry("e", now - 1, now, PastExpiry::Allow).is_ok());
        assert!(check_new_expiry("e", now + 1, now, PastExpiry::Refuse).is_ok());
    }

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
    fn one_person_is_one_email_whatever_the_case_or_width() {
        let normal = |raw: &str| Email::parse(raw).unwrap().as_str().to_owned();
        assert_eq!(normal("ÄLICE@example.com"), "älice@example.com");
        assert_eq!(normal("älice@example.com"), "älice@example.com");
        // A decomposed 'a' + combining diaeresis composes to the same member.
        assert_eq!(normal("A\u{0308}lice@Example.com"), "älice@example.com");
        assert_eq!(
            normal("ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
            "alice@example.com"
        );
        assert_eq!(normal("STRASSE@example.com"), normal("Straße@example.com"));
        assert_eq!(normal("ΣΊΣΥΦΟΣ@example.gr"), normal("σίσυφος@example.gr"));
    }

    /// Characters that must never reach an identifier or a label, one per kind.
    const INVISIBLE: [char; 14] = [
        '\u{0007}',  // BEL (Cc)
        '\u{0085}',  // NEXT LINE (Cc)
        '\u{00AD}',  // SOFT HYPHEN (Cf)
        '\u{200B}',  // ZERO WIDTH SPACE (Cf)
        '\u{200D}',  // ZERO WIDTH JOINER (Cf)
        '\u{200F}',  // RIGHT-TO-LEFT MARK
        '\u{202E}',  // RIGHT-TO-LEFT OVERRIDE
        '\u{2066}',  // LEFT-TO-RIGHT ISOLATE
        '\u{2028}',  // LINE SEPARATOR (Zl)
        '\u{FEFF}',  // ZERO WIDTH NO-BREAK SPACE, BOM (Cf)
        '\u{E0041}', // TAG LATIN CAPITAL LETTER A (Cf)
        '\u{FE0F}',  // VARIATION SELECTOR-16 (Mn, default-ignorable)
        '\u{3164}',  // HANGUL FILLER (Lo, default-ignorable)
        '\u{E000}',  // private use (Co)
    ];

    #[test]
    fn invisible_characters_are_refused_naming_the_code_point() {
        for c in INVISIBLE {
            let code = format!("U+{:04X}", c as u32);
            let email = format!("al{c}ice@example.com");
            let refused = Email::parse_field("owner_email", &email).unwrap_err();
            let text = refused.to_string();
            assert!(
                text.contains("owner_email") && text.contains(&code),
                "{text}"
            );
            let label = format!("laptop{c}");
            let refused = check_optional_text("label", &label, 128).unwrap_err();
            assert!(refused.to_string().contains(&code), "{refused}");
            assert!(OrgId::parse(&format!("acme{c}")).is_err());
        }
        assert!(check_optional_text("label", "Büro-Laptop 2 (Zürich) 東京", 128).is_ok());
    }

    #[test]
    fn stored_emails_are_kept_as_they_were() {
        // Earlier versions lowercased ASCII only; recovery keeps their members apart.
        let stored = Email::from_stored("Älice@example.com").unwrap();
        assert_eq!(stored.as_str(), "Älice@example.com");
        assert_ne!(stored, Email::parse("älice@example.com").unwrap());
    }

    proptest::proptest! {
        #[test]
        fn normalization_is_idempotent(raw in "\\PC{1,40}@[a-zA-Z\u{00C0}-\u{024F}]{1,8}\\.com") {
            if let Ok(email) = Email::parse(&raw) {
                proptest::prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email);
            }
        }
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
