//! The one error type of the domain. Each variant says what a person can do about it;
//! `api::status` maps each to exactly one gRPC status code.

use super::types::{Email, OrgId, Product};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A field of the request is malformed or out of bounds.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// No credential, or one that is malformed, unknown or revoked.
    #[error("{0}")]
    Unauthenticated(String),

    /// The caller is known but its role does not allow this.
    #[error("{0}")]
    PermissionDenied(String),

    #[error("organization {0} does not exist")]
    OrganizationNotFound(OrgId),

    #[error("organization {0} already exists")]
    OrganizationExists(OrgId),

    #[error("{email} is not a member of organization {org}; add them with AddMember first")]
    NotAMember { org: OrgId, email: Email },

    #[error("{email} is already a member of organization {org}")]
    AlreadyAMember { org: OrgId, email: Email },

    #[error("API key {0} does not exist in this organization")]
    ApiKeyNotFound(String),

    #[error(
        "lease {0} does not exist: it expired, was released or was terminated; stop the engine or acquire again"
    )]
    LeaseNotFound(String),

    #[error(
        "lease {lease_id} has generation {current}, the request carried {presented}: this engine's lease was superseded; stop and acquire again"
    )]
    StaleGeneration {
        lease_id: String,
        current: u64,
        presented: u64,
    },

    #[error(
        "{product} quota of organization {org} is full: {active} of {quota} {unit} in use; retry later or ask an Owner to raise the quota"
    )]
    QuotaExhausted {
        org: OrgId,
        product: Product,
        active: u32,
        quota: u32,
        unit: &'static str,
    },

    #[error(
        "assigning {requested} more KSE seats would exceed the quota of organization {org}: {assigned} of {quota} seats are assigned; nothing was changed"
    )]
    SeatQuotaExceeded {
        org: OrgId,
        assigned: u32,
        requested: u32,
        quota: u32,
    },

    #[error(
        "{email} has no {product} license in organization {org}; an Owner or Admin must assign one"
    )]
    NotLicensed {
        org: OrgId,
        email: Email,
        product: Product,
    },

    #[error(
        "{email} already holds a KSE session on engine {engine_id} (lease {lease_id}); a KSE license allows one engine at a time: release that session or wait for it to expire"
    )]
    KseSessionInUse {
        email: Email,
        engine_id: String,
        lease_id: String,
    },

    #[error("the licenses of organization {0} expired; ask the vendor to renew them")]
    LicenseExpired(OrgId),

    #[error(
        "{email} would be left as the last Owner of {org} changing role; make another member Owner first"
    )]
    LastOwner { org: OrgId, email: Email },

    #[error("{0}")]
    FailedPrecondition(String),

    #[error("{what} limit reached: {limit}")]
    LimitReached { what: &'static str, limit: usize },

    /// A per-tenant cap of `limits` (members, API keys, organizations).
    #[error("{holder} already holds {limit} {what}, the most allowed; {remedy}")]
    CapReached {
        holder: String,
        what: &'static str,
        limit: usize,
        remedy: &'static str,
    },

    #[error(
        "{assigned} users hold KSE seats in organization {org}, more than the {kse_seats} asked for: unassign at least {} of them first (UnassignLicenses), then lower the quota; nothing was changed",
        .assigned - .kse_seats
    )]
    SeatsBelowAssigned {
        org: OrgId,
        kse_seats: u32,
        assigned: u32,
    },

    /// A queued acquire's wait passed with no seat freed.
    #[error(
        "no {product} seat freed within the wait of {waited_ms} ms; retry later, wait longer, or ask an Owner to raise the quota"
    )]
    WaitExpired { product: Product, waited_ms: u64 },

    /// A queued acquire left the queue at its engine's request.
    #[error("the queued acquire was cancelled by its engine")]
    WaitCancelled,

    /// The durable log could not take the command (overloaded or shutting down).
    #[error("{0}")]
    Unavailable(String),
}

impl DomainError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DomainError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
