//! Conversions between wire messages and domain values. Parsing a request field is
//! where bad input is caught: each function names the field it refuses.

use std::collections::HashSet;

use crate::audit::AuditRecord;
use crate::domain::Lease;
use crate::domain::{
    ApiKeyRecord, AssignmentOutcome, DomainError, Email, OrgId, Organization, PastExpiry, Product,
    Quota, QuotaUpdate, Role, check_new_expiry,
};
use crate::limits;
use crate::proto;

pub fn product(raw: i32) -> Result<Product, DomainError> {
    match proto::Product::try_from(raw) {
        Ok(proto::Product::Kse) => Ok(Product::Kse),
        Ok(proto::Product::Kre) => Ok(Product::Kre),
        _ => Err(DomainError::invalid(
            "product",
            format!("{raw} is not a product; use PRODUCT_KSE (1) or PRODUCT_KRE (2)"),
        )),
    }
}

/// A product filter: unspecified means both.
pub fn product_filter(raw: i32) -> Result<Option<Product>, DomainError> {
    if raw == proto::Product::Unspecified as i32 {
        return Ok(None);
    }
    product(raw).map(Some)
}

pub fn product_to_wire(product: Product) -> i32 {
    match product {
        Product::Kse => proto::Product::Kse as i32,
        Product::Kre => proto::Product::Kre as i32,
    }
}

/// A role; unspecified takes `default`.
pub fn role(raw: i32, default: Option<Role>) -> Result<Role, DomainError> {
    match (proto::Role::try_from(raw), default) {
        (Ok(proto::Role::Owner), _) => Ok(Role::Owner),
        (Ok(proto::Role::Admin), _) => Ok(Role::Admin),
        (Ok(proto::Role::Member), _) => Ok(Role::Member),
        (Ok(proto::Role::Unspecified), Some(default)) => Ok(default),
        _ => Err(DomainError::invalid(
            "role",
            format!("{raw} is not a role; use ROLE_OWNER, ROLE_ADMIN or ROLE_MEMBER"),
        )),
    }
}

pub fn role_to_wire(role: Role) -> i32 {
    match role {
        Role::Owner => proto::Role::Owner as i32,
        Role::Admin => proto::Role::Admin as i32,
        Role::Member => proto::Role::Member as i32,
    }
}

/// The organization a request names; it is also recorded on the call's span.
pub fn org_id(raw: &str) -> Result<OrgId, DomainError> {
    let org = OrgId::parse(raw)?;
    crate::telemetry::rpc::record_org(org.as_str());
    Ok(org)
}

/// A batch of emails: bounded, each valid, none repeated.
pub fn email_batch(raw: &[String]) -> Result<Vec<Email>, DomainError> {
    if raw.is_empty() {
        return Err(DomainError::invalid("emails", "name at least one email"));
    }
    if raw.len() > limits::EMAILS_PER_REQUEST_MAX {
        return Err(DomainError::invalid(
            "emails",
            format!(
                "{} emails in one call; at most {} are allowed, split the batch",
                raw.len(),
                limits::EMAILS_PER_REQUEST_MAX
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(raw.len());
    raw.iter()
        .map(|text| {
            let email = Email::parse_field("emails", text)?;
            if !seen.insert(email.clone()) {
                return Err(DomainError::invalid(
                    "emails",
                    format!("{email} appears more than once"),
                ));
            }
            Ok(email)
        })
        .collect()
}

/// The window of `GetUsage`: 0 means the default; beyond the longest kept, refused.
pub fn usage_window_seconds(raw: u32) -> Result<u32, DomainError> {
    match raw {
        0 => Ok(limits::USAGE_WINDOW_SECONDS_DEFAULT),
        seconds if seconds <= limits::USAGE_WINDOW_SECONDS_MAX => Ok(seconds),
        seconds => Err(DomainError::invalid(
            "window_seconds",
            format!(
                "{seconds} s is longer than the {} s the daemon keeps",
                limits::USAGE_WINDOW_SECONDS_MAX
            ),
        )),
    }
}

/// The range of `GetUsageSeries`, `[start, end)` in Unix milliseconds, within the
/// week the daemon keeps and ending by `now_unix_ms`: a named range ends now; a given
/// one has its start moved up to a week ago and its end back to now (end 0 is now).
pub fn usage_series_range(
    range: i32,
    start_unix_ms: i64,
    end_unix_ms: i64,
    now_unix_ms: i64,
) -> Result<(i64, i64), DomainError> {
    const HOUR_MS: i64 = 3_600_000;
    let kept_ms = limits::USAGE_SERIES_RANGE_MS_MAX as i64;
    let named_ms = match proto::UsageRange::try_from(range) {
        Ok(proto::UsageRange::Hour) => Some(HOUR_MS),
        Ok(proto::UsageRange::Day) => Some(24 * HOUR_MS),
        Ok(proto::UsageRange::Week) => Some(kept_ms),
        Ok(proto::UsageRange::Unspecified) => None,
        Err(_) => {
            return Err(DomainError::invalid(
                "range",
                format!(
                    "{range} is not a range; use USAGE_RANGE_HOUR, USAGE_RANGE_DAY, USAGE_RANGE_WEEK, or USAGE_RANGE_UNSPECIFIED with start_unix_ms and end_unix_ms"
                ),
            ));
        }
    };
    if let Some(length_ms) = named_ms {
        if start_unix_ms != 0 || end_unix_ms != 0 {
            return Err(DomainError::invalid(
                "range",
                "give either a named range or start_unix_ms and end_unix_ms, not both",
            ));
        }
        return Ok((now_unix_ms - length_ms, now_unix_ms));
    }
    if start_unix_ms < 0 || end_unix_ms < 0 {
        return Err(DomainError::invalid(
            "start_unix_ms",
            "times are Unix milliseconds, not negative",
        ));
    }
    let end = if end_unix_ms == 0 {
        now_unix_ms
    } else {
        end_unix_ms.min(now_unix_ms)
    };
    let start = start_unix_ms.max(now_unix_ms - kept_ms);
    if start >= end {
        return Err(DomainError::invalid(
            "start_unix_ms",
            format!(
                "the range [{start_unix_ms}, {end_unix_ms}) holds nothing the daemon keeps: start must be before end, end after {}, the start of the week kept",
                now_unix_ms - kept_ms
            ),
        ));
    }
    Ok((start, end))
}

/// A time range in Unix milliseconds, `[from, to)`; 0 leaves an end open.
pub fn time_range(from_unix_ms: i64, to_unix_ms: i64) -> Result<(i64, i64), DomainError> {
    if from_unix_ms < 0 || to_unix_ms < 0 {
        return Err(DomainError::invalid(
            "from_unix_ms",
            "times are Unix milliseconds, not negative",
        ));
    }
    if to_unix_ms != 0 && to_unix_ms <= from_unix_ms {
        return Err(DomainError::invalid(
            "to_unix_ms",
            "must be after from_unix_ms (or 0 for now)",
        ));
    }
    Ok((from_unix_ms, to_unix_ms))
}

pub fn audit_event_to_wire(record: &AuditRecord) -> proto::AuditEvent {
    let product = match record.product.as_deref() {
        Some("KSE") => proto::Product::Kse,
        Some("KRE") => proto::Product::Kre,
        _ => proto::Product::Unspecified,
    };
    proto::AuditEvent {
        at_unix_ms: record.at_unix_ms,
        org_id: record.org.clone(),
        kind: record.kind.clone(),
        product: product as i32,
        email: record.email.clone().unwrap_or_default(),
        lease_id: record.lease_id.clone().unwrap_or_default(),
        generation: record.generation.unwrap_or_default(),
        engine_id: record.engine_id.clone().unwrap_or_default(),
        actor: record.actor.clone(),
        detail: record.detail.clone().unwrap_or_default(),
        client_cert: record.client_cert.clone().unwrap_or_default(),
    }
}

/// A whole quota given now: its expiry (0 for none) must meet `check_new_expiry`.
pub fn new_quota(
    raw: Option<proto::Quota>,
    now_unix_ms: i64,
    past: PastExpiry,
) -> Result<Quota, DomainError> {
    let raw = raw.ok_or_else(|| DomainError::invalid("quota", "is required"))?;
    let quota = Quota {
        kse_seats: raw.kse_seats,
        kre_sessions: raw.kre_sessions,
        expires_at_unix_ms: (raw.expires_at_unix_ms != 0).then_some(raw.expires_at_unix_ms),
    }
    .validate()?;
    if let Some(at) = quota.expires_at_unix_ms {
        check_new_expiry("quota.expires_at_unix_ms", at, now_unix_ms, past)?;
    }
    Ok(quota)
}

/// `SetQuotaRequest`'s change: a partial update from the optional fields, or the
/// replacement `quota` that clients before the optional fields send; both or neither
/// is refused. A new expiry must meet `check_new_expiry`.
pub fn quota_change(
    body: &proto::SetQuotaRequest,
    now_unix_ms: i64,
) -> Result<QuotaChange, DomainError> {
    let past = past_expiry(body.allow_past_expiry);
    let update = QuotaUpdate {
        kse_seats: body.kse_seats,
        kre_sessions: body.kre_sessions,
        expires_at_unix_ms: body.expires_at_unix_ms.map(|at| (at != 0).then_some(at)),
    };
    match (body.quota, update.is_empty()) {
        (Some(_), false) => Err(DomainError::invalid(
            "quota",
            "set either quota (to replace the whole quota) or the fields to change \
             (kse_seats, kre_sessions, expires_at_unix_ms), not both",
        )),
        (None, true) => Err(DomainError::invalid(
            "quota",
            "nothing to change: set kse_seats, kre_sessions or expires_at_unix_ms \
             (0 removes the expiry), or quota to replace the whole quota",
        )),
        (Some(raw), true) => new_quota(Some(raw), now_unix_ms, past).map(QuotaChange::Replace),
        (None, false) => {
            let update = update.validate()?;
            if let Some(Some(at)) = update.expires_at_unix_ms {
                check_new_expiry("expires_at_unix_ms", at, now_unix_ms, past)?;
            }
            Ok(QuotaChange::Update(update))
        }
    }
}

/// What a `SetQuotaRequest` asks for.
pub enum QuotaChange {
    Replace(Quota),
    Update(QuotaUpdate),
}

pub fn past_expiry(allow_past_expiry: bool) -> PastExpiry {
    if allow_past_expiry {
        PastExpiry::Allow
    } else {
        PastExpiry::Refuse
    }
}

pub fn quota_to_wire(quota: Quota) -> proto::Quota {
    proto::Quota {
        kse_seats: quota.kse_seats,
        kre_sessions: quota.kre_sessions,
        expires_at_unix_ms: quota.expires_at_unix_ms.unwrap_or(0),
    }
}

pub fn organization_to_wire(org: &Organization) -> proto::Organization {
    proto::Organization {
        org_id: org.id.to_string(),
        display_name: org.display_name.clone(),
        quota: Some(quota_to_wire(org.quota)),
        member_count: org.members.len() as u32,
    }
}

pub fn lease_to_wire(
    lease: &Lease,
    org: &OrgId,
    ttl_ms: u32,
    heartbeat_interval_ms: u32,
    expires_at_unix_ms: i64,
) -> proto::Lease {
    proto::Lease {
        lease_id: lease.id.to_string(),
        generation: lease.generation,
        product: product_to_wire(lease.product),
        org_id: org.to_string(),
        email: lease.email.to_string(),
        engine_id: lease.engine_id.to_string(),
        hostname: lease.hostname.to_string(),
        label: lease.label.to_string(),
        ttl_ms,
        heartbeat_interval_ms,
        expires_at_unix_ms,
        acquired_at_unix_ms: lease.acquired_at_unix_ms,
    }
}

pub fn api_key_to_wire(record: &ApiKeyRecord) -> proto::ApiKey {
    proto::ApiKey {
        key_id: record.id.to_string(),
        email: record.email.to_string(),
        label: record.label.clone(),
        created_at_unix_ms: record.created_at_unix_ms,
        client_cert_subject: record.client_cert_subject.clone().unwrap_or_default(),
    }
}

pub fn assignment_results(results: &[(Email, AssignmentOutcome)]) -> Vec<proto::AssignmentResult> {
    results
        .iter()
        .map(|(email, outcome)| proto::AssignmentResult {
            email: email.to_string(),
            outcome: match outcome {
                AssignmentOutcome::Assigned => proto::AssignmentOutcome::Assigned,
                AssignmentOutcome::AlreadyAssigned => proto::AssignmentOutcome::AlreadyAssigned,
                AssignmentOutcome::Unassigned => proto::AssignmentOutcome::Unassigned,
                AssignmentOutcome::NotAssigned => proto::AssignmentOutcome::NotAssigned,
            } as i32,
        })
        .collect()
}
