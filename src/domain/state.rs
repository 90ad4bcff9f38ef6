//! The admin state: organizations with their quota, members and roles, license
//! assignments and API key records. `apply` is the single function that changes it;
//! it checks every rule first and changes nothing when one fails, so each command is
//! all-or-nothing. The live path and recovery both call it.
//!
//! Rules that only new commands must meet (the per-tenant caps of `limits`, a quota
//! not below the seats assigned) live in [`AdminState::admit`], which the broker calls
//! before `apply` and recovery does not: a log written by an older version, under
//! other caps or rules, still replays to the state it acknowledged.
//!
//! The collections are persistent maps (`imbl`): cloning the state shares its
//! structure, so a snapshot cut costs O(1) under the write lock whatever the size,
//! and a change copies only the O(log n) nodes on its path. They iterate in key order,
//! as `BTreeMap` does, and offer the same `range` reads.

use std::ops::Bound;

use imbl::{HashMap, OrdMap, OrdSet};

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
    /// The only client certificate subject (mTLS) the key may be used with, if bound.
    pub client_cert_subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: OrgId,
    pub display_name: String,
    pub quota: Quota,
    pub members: OrdMap<Email, Role>,
    /// Users holding a named KSE seat; never more than `quota.kse_seats` (a log of an
    /// older version may hold more, see [`AdminState::admit`]).
    pub kse_assigned: OrdSet<Email>,
    /// Users allowed to run KRE sessions; any number.
    pub kre_assigned: OrdSet<Email>,
    pub api_keys: OrdMap<ApiKeyId, ApiKeyRecord>,
}

impl Organization {
    pub fn assigned(&self, product: Product) -> &OrdSet<Email> {
        match product {
            Product::Kse => &self.kse_assigned,
            Product::Kre => &self.kre_assigned,
        }
    }

    fn assigned_mut(&mut self, product: Product) -> &mut OrdSet<Email> {
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
    organizations: OrdMap<OrgId, Organization>,
    /// Which organization holds each API key; the key record itself lives there.
    key_index: HashMap<ApiKeyId, OrgId>,
    /// Live API keys per member that has any, so the per-member cap is checked
    /// without scanning the organization's keys under the write lock.
    keys_per_member: HashMap<(OrgId, Email), u32>,
}

impl AdminState {
    /// Rebuilds the state from its organizations (a snapshot), with its key indexes.
    pub fn from_organizations(organizations: Vec<Organization>) -> Self {
        let mut state = AdminState::default();
        for org in organizations {
            for record in org.api_keys.values() {
                state.key_index.insert(record.id.clone(), org.id.clone());
                state.count_key(&org.id, &record.email, 1);
            }
            state.organizations.insert(org.id.clone(), org);
        }
        state
    }

    /// Live API keys of one member.
    pub fn keys_of(&self, org: &OrgId, email: &Email) -> u32 {
        self.keys_per_member
            .get(&(org.clone(), email.clone()))
            .copied()
            .unwrap_or(0)
    }

    fn count_key(&mut self, org: &OrgId, email: &Email, added: i32) {
        let member = (org.clone(), email.clone());
        let count = self.keys_per_member.get(&member).copied().unwrap_or(0);
        match count.saturating_add_signed(added) {
            0 => self.keys_per_member.remove(&member),
            count => self.keys_per_member.insert(member, count),
        };
    }

    /// The rules a command submitted now must meet besides those of `apply`: the
    /// per-tenant caps and the quota rules that an older version did not enforce.
    /// Called by the broker before `apply`, never on replay, so that a log written
    /// under other caps or rules still loads. Reads only.
    pub fn admit(&self, command: &Command) -> Result<(), DomainError> {
        match command {
            Command::CreateOrganization { .. } => check_cap(
                || "this daemon".to_owned(),
                self.organizations.len(),
                limits::ORGANIZATIONS_MAX,
                "organizations",
                "run another daemon for further organizations",
            ),
            Command::SetQuota { org, quota } => self.admit_quota(org, *quota),
            Command::UpdateQuota { org, update } => {
                let current = self.organization(org)?.quota;
                self.admit_quota(org, update.applied_to(current)?)
            }
            Command::AddMember { org, .. } => check_cap(
                || format!("organization {org}"),
                self.organization(org)?.members.len(),
                limits::MEMBERS_PER_ORG_MAX,
                "members",
                "remove members who left before adding more",
            ),
            Command::CreateApiKey { org, email, .. } => {
                check_cap(
                    || format!("organization {org}"),
                    self.organization(org)?.api_keys.len(),
                    limits::API_KEYS_PER_ORG_MAX,
                    "API keys",
                    "revoke unused keys (ListApiKeys names them) before creating more",
                )?;
                check_cap(
                    || format!("{email} in organization {org}"),
                    self.keys_of(org, email) as usize,
                    limits::API_KEYS_PER_MEMBER_MAX,
                    "API keys",
                    "revoke that member's unused keys before creating more",
                )
            }
            _ => Ok(()),
        }
    }

    /// A new quota may not hold fewer KSE seats than are assigned.
    fn admit_quota(&self, org: &OrgId, quota: Quota) -> Result<(), DomainError> {
        let assigned = self.organization(org)?.kse_assigned.len() as u32;
        if quota.kse_seats < assigned {
            return Err(DomainError::SeatsBelowAssigned {
                org: org.clone(),
                kse_seats: quota.kse_seats,
                assigned,
            });
        }
        Ok(())
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
            .range::<_, OrgId>((start, Bound::Unbounded))
            .map(|(_, org)| org)
    }

    /// Finds an API key record by id, across organizations.
    pub fn api_key(&self, key_id: &str) -> Option<(&Organization, &ApiKeyRecord)> {
        let org_id = self.key_index.get(key_id)?;
        let org = self.organizations.get(org_id)?;
        let record = org.api_keys.get(key_id)?;
        Some((org, record))
    }

    /// Replaces the quota with what `new` makes of the current one.
    fn set_quota(
        &mut self,
        org: &OrgId,
        new: impl FnOnce(Quota) -> Result<Quota, DomainError>,
    ) -> Result<CommandOutcome, DomainError> {
        let organization = self.organization_mut(org)?;
        let before = organization.quota;
        let after = new(before)?;
        organization.quota = after;
        Ok(CommandOutcome::QuotaSet { before, after })
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
            Command::SetQuota { org, quota } => self.set_quota(org, |_| Ok(*quota)),
            Command::UpdateQuota { org, update } => {
                self.set_quota(org, |current| update.applied_to(current))
            }
            Command::AddMember { org, email, role } => self.add_member(org, email, *role),
            Command::RemoveMember { org, email } => self.remove_member(org, email),
            Command::SetRole { org, email, role } => self.set_role(org, email, *role),
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
                client_cert_subject,
            } => {
                let record = ApiKeyRecord {
                    id: key_id.clone(),
                    email: email.clone(),
                    label: label.clone(),
                    secret_sha256: *secret_sha256,
                    created_at_unix_ms: *created_at_unix_ms,
                    client_cert_subject: client_cert_subject.clone(),
                };
                self.create_api_key(org, record)
            }
            Command::RevokeApiKey { org, key_id } => self.revoke_api_key(org, key_id),
            Command::RenameOrganization { org, display_name } => {
                self.organization_mut(org)?.display_name = display_name.clone();
                Ok(CommandOutcome::Done)
            }
            Command::DeleteOrganization { org } => self.delete_organization(org),
        }
    }

    /// Removes the organization and its keys from the indexes; its id is free again.
    fn delete_organization(&mut self, org: &OrgId) -> Result<CommandOutcome, DomainError> {
        let organization = self
            .organizations
            .remove(org)
            .ok_or_else(|| DomainError::OrganizationNotFound(org.clone()))?;
        for record in organization.api_keys.values() {
            self.key_index.remove(&record.id);
            self.keys_per_member
                .remove(&(org.clone(), record.email.clone()));
        }
        Ok(CommandOutcome::OrganizationDeleted {
            keys_revoked: organization.api_keys.len() as u32,
            members_removed: organization.members.len() as u32,
        })
    }

    fn add_member(
        &mut self,
        org: &OrgId,
        email: &Email,
        role: Role,
    ) -> Result<CommandOutcome, DomainError> {
        let org = self.organization_mut(org)?;
        if org.members.contains_key(email) {
            return Err(DomainError::AlreadyAMember {
                org: org.id.clone(),
                email: email.clone(),
            });
        }
        org.members.insert(email.clone(), role);
        Ok(CommandOutcome::Done)
    }

    /// A member's new role; the last Owner stays one.
    fn set_role(
        &mut self,
        org: &OrgId,
        email: &Email,
        role: Role,
    ) -> Result<CommandOutcome, DomainError> {
        let org = self.organization_mut(org)?;
        let current = org.require_member(email)?;
        if current == Role::Owner && role != Role::Owner && org.owner_count() == 1 {
            return Err(DomainError::LastOwner {
                org: org.id.clone(),
                email: email.clone(),
            });
        }
        org.members.insert(email.clone(), role);
        Ok(CommandOutcome::Done)
    }

    /// A key for a member of `org`, under an id no organization uses.
    fn create_api_key(
        &mut self,
        org: &OrgId,
        record: ApiKeyRecord,
    ) -> Result<CommandOutcome, DomainError> {
        if self.key_index.contains_key(&record.id) {
            return Err(DomainError::FailedPrecondition(format!(
                "API key id {} is already in use",
                record.id
            )));
        }
        let organization = self.organization_mut(org)?;
        organization.require_member(&record.email)?;
        let (key_id, email) = (record.id.clone(), record.email.clone());
        organization.api_keys.insert(key_id.clone(), record);
        self.key_index.insert(key_id, org.clone());
        self.count_key(org, &email, 1);
        Ok(CommandOutcome::Done)
    }

    fn revoke_api_key(
        &mut self,
        org: &OrgId,
        key_id: &ApiKeyId,
    ) -> Result<CommandOutcome, DomainError> {
        let organization = self.organization_mut(org)?;
        let Some(record) = organization.api_keys.remove(key_id) else {
            return Err(DomainError::ApiKeyNotFound(key_id.to_string()));
        };
        self.key_index.remove(key_id);
        self.count_key(org, &record.email, -1);
        Ok(CommandOutcome::Done)
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
        let organization = Organization {
            id: org.clone(),
            display_name: display_name.to_owned(),
            quota,
            members: OrdMap::unit(owner.clone(), Role::Owner),
            kse_assigned: OrdSet::new(),
            kre_assigned: OrdSet::new(),
            api_keys: OrdMap::new(),
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
        // The member's keys are found by a scan of the organization's keys, skipped
        // for a member with none; removing members is rare.
        let mut revoked = Vec::new();
        if self.keys_of(org, email) > 0 {
            let organization = self.organization_mut(org)?;
            revoked = organization
                .api_keys
                .values()
                .filter(|k| &k.email == email)
                .map(|k| k.id.clone())
                .collect();
            for key_id in &revoked {
                organization.api_keys.remove(key_id);
            }
        }
        for key_id in &revoked {
            self.key_index.remove(key_id);
        }
        self.keys_per_member.remove(&(org.clone(), email.clone()));
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
                let outcome = if assigned.insert(email.clone()).is_none() {
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
                let outcome = if assigned.remove(email).is_some() {
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

/// Refuses growth past a per-tenant cap, saying what to do about it.
fn check_cap(
    holder: impl FnOnce() -> String,
    current: usize,
    limit: usize,
    what: &'static str,
    remedy: &'static str,
) -> Result<(), DomainError> {
    if current >= limit {
        return Err(DomainError::CapReached {
            holder: holder(),
            what,
            limit,
            remedy,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::QuotaUpdate;

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

    fn add_member(org: &OrgId, address: &str) -> Command {
        Command::AddMember {
            org: org.clone(),
            email: email(address),
            role: Role::Member,
        }
    }

    #[test]
    fn caps_hold_for_new_commands_but_not_on_replay() {
        let (mut state, org) = org_with_members(1, &[]);
        for n in 1..limits::MEMBERS_PER_ORG_MAX {
            state
                .apply(&add_member(&org, &format!("m{n}@acme.com")))
                .unwrap();
        }
        let one_more = add_member(&org, "late@acme.com");
        let refused = state.admit(&one_more).unwrap_err();
        assert!(
            matches!(refused, DomainError::CapReached { .. }),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains("organization acme already holds 100000 members"),
            "{refused}"
        );
        // A log written under a larger cap replays past this one.
        state.apply(&one_more).unwrap();
        assert_eq!(
            state.organization(&org).unwrap().members.len(),
            limits::MEMBERS_PER_ORG_MAX + 1
        );
    }

    #[test]
    fn a_quota_below_the_seats_assigned_is_not_admitted_but_replays() {
        let (mut state, org) = org_with_members(2, &["a@acme.com", "b@acme.com"]);
        state
            .apply(&Command::AssignLicenses {
                org: org.clone(),
                product: Product::Kse,
                emails: vec![email("a@acme.com"), email("b@acme.com")],
            })
            .unwrap();
        let lower = |kse_seats| Command::SetQuota {
            org: org.clone(),
            quota: Quota {
                kse_seats,
                ..Quota::default()
            },
        };
        assert!(state.admit(&lower(2)).is_ok());
        let refused = state.admit(&lower(1)).unwrap_err();
        assert!(
            matches!(
                refused,
                DomainError::SeatsBelowAssigned {
                    kse_seats: 1,
                    assigned: 2,
                    ..
                }
            ),
            "{refused}"
        );
        state.apply(&lower(1)).unwrap();
        assert_eq!(state.organization(&org).unwrap().quota.kse_seats, 1);
    }

    #[test]
    fn a_quota_update_changes_only_its_fields_and_is_admitted_on_the_merged_quota() {
        let (mut state, org) = org_with_members(2, &["a@acme.com"]);
        state
            .apply(&Command::AssignLicenses {
                org: org.clone(),
                product: Product::Kse,
                emails: vec![email("a@acme.com")],
            })
            .unwrap();
        let update = |update| Command::UpdateQuota {
            org: org.clone(),
            update,
        };
        let expires = update(QuotaUpdate {
            expires_at_unix_ms: Some(Some(2_000_000_000_000)),
            ..QuotaUpdate::default()
        });
        state.apply(&expires).unwrap();
        let more_kre = update(QuotaUpdate {
            kre_sessions: Some(4),
            ..QuotaUpdate::default()
        });
        let outcome = state.apply(&more_kre).unwrap();
        let after = Quota {
            kse_seats: 2,
            kre_sessions: 4,
            expires_at_unix_ms: Some(2_000_000_000_000),
        };
        assert_eq!(
            outcome,
            CommandOutcome::QuotaSet {
                before: Quota {
                    kre_sessions: 1,
                    ..after
                },
                after,
            }
        );
        let no_seats = update(QuotaUpdate {
            kse_seats: Some(0),
            ..QuotaUpdate::default()
        });
        assert!(matches!(
            state.admit(&no_seats),
            Err(DomainError::SeatsBelowAssigned { assigned: 1, .. })
        ));
        let never = update(QuotaUpdate {
            expires_at_unix_ms: Some(None),
            ..QuotaUpdate::default()
        });
        state.apply(&never).unwrap();
        assert_eq!(
            state.organization(&org).unwrap().quota,
            Quota {
                expires_at_unix_ms: None,
                ..after
            }
        );
    }

    fn create_key(org: &OrgId, id: &str, address: &str) -> Command {
        Command::CreateApiKey {
            org: org.clone(),
            key_id: ApiKeyId(id.into()),
            email: email(address),
            label: String::new(),
            secret_sha256: [0; 32],
            created_at_unix_ms: 0,
            client_cert_subject: None,
        }
    }

    #[test]
    fn keys_per_member_follow_creation_revocation_and_removal() {
        let (mut state, org) = org_with_members(1, &["a@acme.com", "b@acme.com"]);
        for n in 0..3 {
            state
                .apply(&create_key(&org, &format!("a{n}"), "a@acme.com"))
                .unwrap();
        }
        state.apply(&create_key(&org, "b0", "b@acme.com")).unwrap();
        let a = email("a@acme.com");
        assert_eq!(state.keys_of(&org, &a), 3);
        state
            .apply(&Command::RevokeApiKey {
                org: org.clone(),
                key_id: ApiKeyId("a1".into()),
            })
            .unwrap();
        assert_eq!(state.keys_of(&org, &a), 2);
        // A snapshot rebuilds the same counts.
        let reloaded =
            AdminState::from_organizations(state.organizations().cloned().collect::<Vec<_>>());
        assert_eq!(reloaded, state);
        state
            .apply(&Command::RemoveMember {
                org: org.clone(),
                email: a.clone(),
            })
            .unwrap();
        assert_eq!(state.keys_of(&org, &a), 0);
        assert_eq!(state.keys_of(&org, &email("b@acme.com")), 1);
        assert!(state.api_key("a0").is_none() && state.api_key("b0").is_some());
    }

    #[test]
    fn a_cut_is_unaffected_by_later_commands() {
        let (mut state, org) = org_with_members(1, &["a@acme.com"]);
        let cut = state.clone();
        state.apply(&add_member(&org, "b@acme.com")).unwrap();
        state.apply(&create_key(&org, "k", "a@acme.com")).unwrap();
        assert_eq!(cut.organization(&org).unwrap().members.len(), 2);
        assert!(cut.api_key("k").is_none());
        assert_eq!(state.organization(&org).unwrap().members.len(), 3);
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
