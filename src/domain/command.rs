//! Commands: the only way admin state changes. A command holds validated values and
//! everything `apply` needs to be deterministic (ids, hashes and times are chosen before
//! the command is made), so replaying the log reproduces the state exactly.

use super::lease::Termination;
use super::types::{ApiKeyId, Email, OrgId, Product, Quota, QuotaUpdate, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateOrganization {
        org: OrgId,
        display_name: String,
        owner: Email,
        quota: Quota,
    },
    /// Replaces the whole quota.
    SetQuota {
        org: OrgId,
        quota: Quota,
    },
    /// Changes some fields of the quota and keeps the others: merged with the quota of
    /// the moment in `apply`, so replay reproduces it.
    UpdateQuota {
        org: OrgId,
        update: QuotaUpdate,
    },
    AddMember {
        org: OrgId,
        email: Email,
        role: Role,
    },
    RemoveMember {
        org: OrgId,
        email: Email,
    },
    SetRole {
        org: OrgId,
        email: Email,
        role: Role,
    },
    AssignLicenses {
        org: OrgId,
        product: Product,
        emails: Vec<Email>,
    },
    UnassignLicenses {
        org: OrgId,
        product: Product,
        emails: Vec<Email>,
    },
    TransferLicense {
        org: OrgId,
        product: Product,
        from: Email,
        to: Email,
    },
    CreateApiKey {
        org: OrgId,
        key_id: ApiKeyId,
        email: Email,
        label: String,
        secret_sha256: [u8; 32],
        created_at_unix_ms: i64,
        /// The only client certificate subject the key may be used with, if bound.
        client_cert_subject: Option<String>,
    },
    RevokeApiKey {
        org: OrgId,
        key_id: ApiKeyId,
    },
    /// A new display name (validated at the edge: required, bounded).
    RenameOrganization {
        org: OrgId,
        display_name: String,
    },
    /// The organization's state removed for good: members, assignments, keys, quota,
    /// and (through [`Command::sessions_to_end`]) its sessions. Its id may be created
    /// again; its audit events are the audit record's and stay.
    DeleteOrganization {
        org: OrgId,
    },
}

/// Sessions that a command ends once applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawal {
    /// Some members' sessions (a removed member's, a license taken away).
    Sessions(Vec<SessionsToEnd>),
    /// Every session of the organization (it was deleted).
    WholeOrganization,
}

/// Sessions that a command ends once applied: a removed member's sessions, and the
/// sessions of a license taken away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionsToEnd {
    pub email: Email,
    /// `None` ends the sessions of both products.
    pub product: Option<Product>,
}

impl Command {
    pub fn org(&self) -> &OrgId {
        match self {
            Command::CreateOrganization { org, .. }
            | Command::SetQuota { org, .. }
            | Command::UpdateQuota { org, .. }
            | Command::AddMember { org, .. }
            | Command::RemoveMember { org, .. }
            | Command::SetRole { org, .. }
            | Command::AssignLicenses { org, .. }
            | Command::UnassignLicenses { org, .. }
            | Command::TransferLicense { org, .. }
            | Command::CreateApiKey { org, .. }
            | Command::RevokeApiKey { org, .. }
            | Command::RenameOrganization { org, .. }
            | Command::DeleteOrganization { org } => org,
        }
    }

    /// The sessions this command ends; derived from the command alone, so recovery and
    /// the live path agree.
    pub fn sessions_to_end(&self) -> Withdrawal {
        match self {
            Command::DeleteOrganization { .. } => Withdrawal::WholeOrganization,
            _ => Withdrawal::Sessions(self.members_sessions_to_end()),
        }
    }

    /// Why the sessions this command withdraws end, as their engines are told.
    pub fn termination(&self) -> Termination {
        match self {
            Command::DeleteOrganization { .. } => Termination::OrganizationDeleted,
            Command::RemoveMember { .. } => Termination::MemberRemoved,
            Command::UnassignLicenses { .. } | Command::TransferLicense { .. } => {
                Termination::Unassigned
            }
            _ => Termination::Admin,
        }
    }

    fn members_sessions_to_end(&self) -> Vec<SessionsToEnd> {
        match self {
            Command::RemoveMember { email, .. } => vec![SessionsToEnd {
                email: email.clone(),
                product: None,
            }],
            Command::UnassignLicenses {
                product, emails, ..
            } => emails
                .iter()
                .map(|email| SessionsToEnd {
                    email: email.clone(),
                    product: Some(*product),
                })
                .collect(),
            Command::TransferLicense { product, from, .. } => vec![SessionsToEnd {
                email: from.clone(),
                product: Some(*product),
            }],
            _ => Vec::new(),
        }
    }
}

/// What happened to one email of an assignment batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentOutcome {
    Assigned,
    AlreadyAssigned,
    Unassigned,
    NotAssigned,
}

/// The answer of a successfully applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Done,
    /// A quota set or updated: the quota before and after, read under the same lock.
    QuotaSet {
        before: Quota,
        after: Quota,
    },
    MemberRemoved {
        keys_revoked: u32,
    },
    OrganizationDeleted {
        keys_revoked: u32,
        members_removed: u32,
    },
    Assignments {
        results: Vec<(Email, AssignmentOutcome)>,
        assigned_total: u32,
    },
}
