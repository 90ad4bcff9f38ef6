//! The admin state: organizations with their quota, members and roles, license
//! assignments and API key records. `apply` is the single function that changes it;
//! it checks every rule first and changes nothing when one fails, so each command is
//! all-or-nothing. The live path and recovery both call it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use super::command::{AssignmentOutcome, Command, CommandOutcome};
use super::error::DomainError;
use super::types::{ApiKeyId, Email, OrgId, Product, Quota, Role};
use crate::limits;

/// A stored API key: only the SHA-256 of the secret part is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub email: Email,
    pub label: String,
    pub secret_sha256: [u8; 32],
    pub created_at_unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrgId,
    pub display_name: String,
    pub quota: Quota,
    pub members: BTreeMap<Email, Role>,
    /// Users holding a named KSE seat; never more than `quota.kse_seats`.
    pub kse_assigned: BTreeSet<Email>,
    /// Users allowed to run KRE sessions; any number.
    pub kre_assigned: BTreeSet<Email>,
    pub api_keys: BTreeMap<ApiKeyId, ApiKeyRecord>,
}

impl Organization {
    pub fn assigned(&self, product: Product) -> &BTreeSet<Email> {
        match product {
            Product::Kse => &self.kse_assigned,
            Product::Kre => &self.kre_assigned,
        }
    }

    fn assigned_mut(&mut self, product: Product) -> &mut BTreeSet<Email> {
        match product {
            Product::Kse => &mut self.kse_assigned,
            Product::Kre => &mut self.kre_assigned,
        }
    }

    pub fn role_of(&self, email: &Email) -> Option<Role> {
        self.members.get(email).copied()
    }

    fn require_member(&self, email: &Email) -> Result<Role, DomainError> {
        self.role_of(email).ok_or_else(|| DomainError::NotAMember {
            org: self.id.clone(),
            email: email.clone(),
        })
    }

    fn owner_count(&self) -> usize {
        self.members.values().filter(|r| **r == Role::Owner).count()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminState {
    organizations: BTreeMap<OrgId, Organization>,
    /// Which organization holds each API key; the key record itself lives there.
    key_index: HashMap<ApiKeyId, OrgId>,
}

impl AdminState {
    /// Rebuilds the state from its organizations (a snapshot), with its key index.
    pub fn from_organizations(organizations: Vec<Organization>) -> Self {
        let mut state = AdminState::default();
        for org in organizations {
            for key_id in org.api_keys.keys() {
                state.key_index.insert(key_id.clone(), org.id.clone());
            }
            state.organizations.insert(org.id.clone(), org);
        }
        state
    }

    pub fn organization(&self, org: &OrgId) -> Result<&Organization, DomainError> {
        self.organizations
            .get(org)
            .ok_or_else(|| DomainError::OrganizationNotFound(org.clone()))
    }

    pub fn organizations(&self) -> impl Iterator<Item = &Organization> {
        self.organizations.values()
    }

    /// The organizations after `after` in id order (all of them for `None`): a range
    /// read for pages of a listing.
    pub fn organizations_after(
        &self,
        after: Option<&OrgId>,
    ) -> impl Iterator<Item = &Organization> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.organizations
            .range((start, Bound::Unbounded))
            .map(|(_, org)| org)
    }

    /// Finds an API key record by id, across organizations.
    pub fn api_key(&self, key_id: &str) -> Option<(&Organization, &ApiKeyRecord)> {
        let org_id = self.key_index.get(key_id)?;
        let org = self.organizations.get(org_id)?;
        let record = org.api_keys.get(key_id)?;
        Some((org, record))
    }

    fn organization_mut(&mut self, org: &OrgId) -> Result<&mut Organization, DomainError> {
        self.organizations
            .get_mut(org)
            .ok_or_else(|| DomainError::OrganizationNotFound(org.clone()))
    }

    /// Checks and applies one command. On error nothing changed.
    pub fn apply(&mut self, command: &Command) -> Result<CommandOutcome, DomainError> {
        match command {
            Command::CreateOrganization {
                org,
                display_name,
                owner,
                quota,
            } => self.create_organization(org, display_name, owner, *quota),
            Command::SetQuota { org, quota } => {
                self.organization_mut(org)?.quota = *quota;
                Ok(CommandOutcome::Done)
            }
            Command::AddMember { org, email, role } => {
                let org = self.organization_mut(org)?;
                if org.members.contains_key(email) {
                    return Err(DomainError::AlreadyAMember {
                        org: org.id.clone(),
                        email: email.clone(),
                    });
                }
                check_room(
                    org.members.len(),
                    limits::MEMBERS_PER_ORG_MAX,
                    "members per organization",
                )?;
                org.members.insert(email.clone(), *role);
                Ok(CommandOutcome::Done)
            }
            Command::RemoveMember { org, email } => self.remove_member(org, email),
            Command::SetRole { org, email, role } => {
                let org = self.organization_mut(org)?;
                let current = org.require_member(email)?;
                if current == Role::Owner && *role != Role::Owner && org.owner_count() == 1 {
                    return Err(DomainError::LastOwner {
                        org: org.id.clone(),
                        email: email.clone(),
                    });
                }
                org.members.insert(email.clone(), *role);
                Ok(CommandOutcome::Done)
            }
            Command::AssignLicenses {
                org,
                product,
                emails,
            } => self.assign(org, *product, emails),
            Command::UnassignLicenses {
                org,
                product,
                emails,
            } => self.unassign(org, *product, emails),
            Command::TransferLicense {
                org,
                product,
                from,
                to,
            } => self.transfer(org, *product, from, to),
            Command::CreateApiKey {
                org,
                key_id,
                email,
                label,
                secret_sha256,
                created_at_unix_ms,
            } => {
                if self.key_index.contains_key(key_id) {
                    return Err(DomainError::FailedPrecondition(format!(
                        "API key id {key_id} is already in use"
                    )));
                }
                let organization = self.organization_mut(org)?;
                organization.require_member(email)?;
                check_room(
                    organization.api_keys.len(),
                    limits::API_KEYS_PER_ORG_MAX,
                    "API keys per organization",
                )?;
                let of_member = organization
                    .api_keys
                    .values()
                    .filter(|k| &k.email == email)
                    .count();
                check_room(
                    of_member,
                    limits::API_KEYS_PER_MEMBER_MAX,
                    "API keys per member",
                )?;
                organization.api_keys.insert(
                    key_id.clone(),
                    ApiKeyRecord {
                        id: key_id.clone(),
                        email: email.clone(),
                        label: label.clone(),
                        secret_sha256: *secret_sha256,
                        created_at_unix_ms: *created_at_unix_ms,
                    },
                );
                self.key_index.insert(key_id.clone(), org.clone());
                Ok(CommandOutcome::Done)
            }
            Command::RevokeApiKey { org, key_id } => {
                let organization = self.organization_mut(org)?;
                if organization.api_keys.remove(key_id).is_none() {
                    return Err(DomainError::ApiKeyNotFound(key_id.to_string()));
                }
                self.key_index.remove(key_id);
                Ok(CommandOutcome::Done)
            }
        }
    }

    fn create_organization(
        &mut self,
        org: &OrgId,
        display_name: &str,
        owner: &Email,
        quota: Quota,
    ) -> Result<CommandOutcome, DomainError> {
        if self.organizations.contains_key(org) {
            return Err(DomainError::OrganizationExists(org.clone()));
        }
        check_room(
            self.organizations.len(),
            limits::ORGANIZATIONS_MAX,
            "organizations",
        )?;
        let organization = Organization {
            id: org.clone(),
            display_name: display_name.to_owned(),
            quota,
            members: BTreeMap::from([(owner.clone(), Role::Owner)]),
            kse_assigned: BTreeSet::new(),
            kre_assigned: BTreeSet::new(),
            api_keys: BTreeMap::new(),
        };
        self.organizations.insert(org.clone(), organization);
        Ok(CommandOutcome::Done)
    }

    fn remove_member(&mut self, org: &OrgId, email: &Email) -> Result<CommandOutcome, DomainError> {
        let organization = self
            .organizations
            .get_mut(org)
            .ok_or_else(|| DomainError::OrganizationNotFound(org.clone()))?;
        let role = organization.require_member(email)?;
        if role == Role::Owner && organization.owner_count() == 1 {
            return Err(DomainError::LastOwner {
                org: org.clone(),
                email: email.clone(),
            });
        }
        organization.members.remove(email);
        organization.kse_assigned.remove(email);
        organization.kre_assigned.remove(email);
        let revoked: Vec<ApiKeyId> = organization
            .api_keys
            .values()
            .filter(|k| &k.email == email)
            .map(|k| k.id.clone())
            .collect();
        for key_id in &revoked {
            organization.api_keys.remove(key_id);
            self.key_index.remove(key_id);
        }
        Ok(CommandOutcome::MemberRemoved {
            keys_revoked: revoked.len() as u32,
        })
    }

    fn assign(
        &mut self,
        org: &OrgId,
        product: Product,
        emails: &[Email],
    ) -> Result<CommandOutcome, DomainError> {
        let organization = self.organization_mut(org)?;
        for email in emails {
            organization.require_member(email)?;
        }
        let assigned = organization.assigned(product);
        let new_count = emails.iter().filter(|e| !assigned.contains(*e)).count() as u32;
        if product == Product::Kse {
            let already = assigned.len() as u32;
            if already + new_count > organization.quota.kse_seats {
                return Err(DomainError::SeatQuotaExceeded {
                    org: org.clone(),
                    assigned: already,
                    requested: new_count,
                    quota: organization.quota.kse_seats,
                });
            }
        }
        let assigned = organization.assigned_mut(product);
        let results = emails
            .iter()
            .map(|email| {
                let outcome = if assigned.insert(email.clone()) {
                    AssignmentOutcome::Assigned
                } else {
                    AssignmentOutcome::AlreadyAssigned
                };
                (email.clone(), outcome)
            })
            .collect();
        Ok(CommandOutcome::Assignments {
            results,
            assigned_total: assigned.len() as u32,
        })
    }

    fn unassign(
        &mut self,
        org: &OrgId,
        product: Product,
        emails: &[Email],
    ) -> Result<CommandOutcome, DomainError> {
        let organization = self.organization_mut(org)?;
        let assigned = organization.assigned_mut(product);
        let results = emails
            .iter()
            .map(|email| {
                let outcome = if assigned.remove(email) {
                    AssignmentOutcome::Unassigned
                } else {
                    AssignmentOutcome::NotAssigned
                };
                (email.clone(), outcome)
            })
            .collect();
        Ok(CommandOutcome::Assignments {
            results,
            assigned_total: assigned.len() as u32,
        })
    }

    /// Moves a license from one member to another in one step: never both, never neither.
    fn transfer(
        &mut self,
        org: &OrgId,
        product: Product,
        from: &Email,
        to: &Email,
    ) -> Result<CommandOutcome, DomainError> {
        let organization = self.organization_mut(org)?;
        organization.require_member(from)?;
        organization.require_member(to)?;
        if from == to {
            return Err(DomainError::invalid(
                "to_email",
                "must differ from from_email",
            ));
        }
        let assigned = organization.assigned_mut(product);
        if !assigned.contains(from) {
            return Err(DomainError::NotLicensed {
                org: org.clone(),
                email: from.clone(),
                product,
            });
        }
        if assigned.contains(to) {
            return Err(DomainError::FailedPrecondition(format!(
                "{to} already holds a {product} license; unassign {from} instead"
            )));
        }
        assigned.remove(from);
        assigned.insert(to.clone());
        Ok(CommandOutcome::Done)
    }
}

fn check_room(current: usize, limit: usize, what: &'static str) -> Result<(), DomainError> {
    if current >= limit {
        return Err(DomainError::LimitReached { what, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    fn org_with_members(seats: u32, members: &[&str]) -> (AdminState, OrgId) {
        let mut state = AdminState::default();
        let org = OrgId::parse("acme").unwrap();
        let quota = Quota {
            kse_seats: seats,
            kre_sessions: 1,
            expires_at_unix_ms: None,
        };
        state
            .apply(&Command::CreateOrganization {
                org: org.clone(),
                display_name: "Acme".into(),
                owner: email("owner@acme.com"),
                quota,
            })
            .unwrap();
        for m in members {
            state
                .apply(&Command::AddMember {
                    org: org.clone(),
                    email: email(m),
                    role: Role::Member,
                })
                .unwrap();
        }
        (state, org)
    }

    #[test]
    fn kse_assignment_past_quota_changes_nothing() {
        let (mut state, org) = org_with_members(2, &["a@acme.com", "b@acme.com", "c@acme.com"]);
        let before = state.clone();
        let too_many = Command::AssignLicenses {
            org: org.clone(),
            product: Product::Kse,
            emails: vec![
                email("a@acme.com"),
                email("b@acme.com"),
                email("c@acme.com"),
            ],
        };
        assert!(matches!(
            state.apply(&too_many),
            Err(DomainError::SeatQuotaExceeded { .. })
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn last_owner_cannot_leave() {
        let (mut state, org) = org_with_members(1, &[]);
        let leave = Command::RemoveMember {
            org,
            email: email("owner@acme.com"),
        };
        assert!(matches!(
            state.apply(&leave),
            Err(DomainError::LastOwner { .. })
        ));
    }
}
