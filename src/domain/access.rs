//! Who may do what. A [`Principal`] is the resolved caller; [`authorize`] decides
//! from the caller's *current* role in the state, so a demotion takes effect at once.
//! A member's key never reaches another organization: every check starts by
//! comparing organizations.

use super::command::Command;
use super::error::DomainError;
use super::state::AdminState;
use super::types::{Email, OrgId, Role};

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The daemon's operator: creates organizations and sets quotas, and may act as the
    /// Owner of any organization.
    Operator,
    /// A member of one organization, identified by one of their API keys.
    Member { org: OrgId, email: Email },
}

/// What an admin request wants to do, for the permission check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Operator only: create, rename and delete organizations, set quotas, list
    /// organizations.
    Operate,
    /// Owner or Admin: members, assignments, usage, sessions.
    Administer,
    /// Any member, for their own API keys; Owner or Admin for anyone's.
    ManageKeysOf,
}

impl Principal {
    /// The organization of a member; `None` for the operator.
    pub fn org(&self) -> Option<&OrgId> {
        match self {
            Principal::Operator => None,
            Principal::Member { org, .. } => Some(org),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Principal::Operator => "the operator".to_owned(),
            Principal::Member { org, email } => format!("{email} of organization {org}"),
        }
    }
}

/// Checks that `principal` may perform `action` on `org`. `subject` is the member the
/// action is about, where it matters (API keys of whom).
pub fn authorize(
    state: &AdminState,
    principal: &Principal,
    action: Action,
    org: &OrgId,
    subject: Option<&Email>,
) -> Result<(), DomainError> {
    let caller = match principal {
        Principal::Operator => return Ok(()),
        Principal::Member { email, .. } => email,
    };
    if action == Action::Operate {
        return Err(DomainError::PermissionDenied(
            "only the operator may create, rename and delete organizations and set quotas".into(),
        ));
    }
    check_same_organization(principal, org)?;
    let role = state.organization(org)?.role_of(caller).ok_or_else(|| {
        DomainError::Unauthenticated(format!("{caller} is no longer a member of {org}"))
    })?;
    let acting_on_self = subject.is_none_or(|s| s == caller);
    match action {
        Action::ManageKeysOf if acting_on_self => Ok(()),
        _ if role.administers() => Ok(()),
        _ => Err(DomainError::PermissionDenied(format!(
            "{caller} has the {role} role in {org}; only an Owner or Admin may do this"
        ))),
    }
}

/// A member's key reaches its own organization only. Checked before anything is
/// looked up, so that answers never reveal what another organization holds.
fn check_same_organization(principal: &Principal, org: &OrgId) -> Result<(), DomainError> {
    match principal {
        Principal::Member {
            org: caller_org, ..
        } if caller_org != org => Err(DomainError::PermissionDenied(format!(
            "this API key belongs to organization {caller_org}, not {org}"
        ))),
        _ => Ok(()),
    }
}

/// Whether `command` is a member setting their own role to one that grants no more
/// than the role they hold. Anyone may step down (an Admin to Member, an Owner who is
/// not the last to Admin; `apply` keeps the last Owner), and asking again for the role
/// one holds changes nothing, so a retry of a step-down answers like the first call
/// even though the caller no longer administers.
fn steps_down(state: &AdminState, principal: &Principal, command: &Command) -> bool {
    let (Principal::Member { email: caller, .. }, Command::SetRole { org, email, role }) =
        (principal, command)
    else {
        return false;
    };
    let current = state
        .organization(org)
        .ok()
        .and_then(|organization| organization.role_of(caller));
    email == caller && current.is_some_and(|current| !role.outranks(current))
}

/// Extra rules on roles beyond "Owner or Admin": only an Owner (or the operator) may
/// create another Owner or change or remove an existing one.
pub fn authorize_command(
    state: &AdminState,
    principal: &Principal,
    command: &Command,
) -> Result<(), DomainError> {
    let org = command.org();
    check_same_organization(principal, org)?;
    if steps_down(state, principal, command) {
        return Ok(());
    }
    let action = match command {
        Command::CreateOrganization { .. }
        | Command::SetQuota { .. }
        | Command::UpdateQuota { .. }
        | Command::RenameOrganization { .. }
        | Command::DeleteOrganization { .. } => Action::Operate,
        Command::CreateApiKey { .. } | Command::RevokeApiKey { .. } => Action::ManageKeysOf,
        _ => Action::Administer,
    };
    let subject = match command {
        Command::CreateApiKey { email, .. } => Some(email.clone()),
        Command::RevokeApiKey { key_id, .. } => {
            let organization = state.organization(org)?;
            let record = organization
                .api_keys
                .get(key_id)
                .ok_or_else(|| DomainError::ApiKeyNotFound(key_id.to_string()))?;
            Some(record.email.clone())
        }
        _ => None,
    };
    authorize(state, principal, action, org, subject.as_ref())?;
    let Principal::Member { email: caller, .. } = principal else {
        return Ok(());
    };
    let organization = state.organization(org)?;
    let caller_is_owner = organization.role_of(caller) == Some(Role::Owner);
    let is_owner = |email: &Email| organization.role_of(email) == Some(Role::Owner);
    // An Owner's API key acts as that Owner, so minting or revoking one is an Owner's
    // business too (an Admin could otherwise become an Owner through a key).
    let key_subject_is_owner = |key_id| {
        organization
            .api_keys
            .get(key_id)
            .is_some_and(|record| is_owner(&record.email))
    };
    let touches_owner = match command {
        Command::AddMember { role, .. } => *role == Role::Owner,
        Command::SetRole { email, role, .. } => *role == Role::Owner || is_owner(email),
        Command::RemoveMember { email, .. } => is_owner(email),
        Command::CreateApiKey { email, .. } => is_owner(email) && email != caller,
        Command::RevokeApiKey { key_id, .. } => key_subject_is_owner(key_id),
        _ => false,
    };
    if touches_owner && !caller_is_owner {
        return Err(DomainError::PermissionDenied(format!(
            "only an Owner of {org} may grant, change or remove the Owner role"
        )));
    }
    Ok(())
}
