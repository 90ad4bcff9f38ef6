//! `AdminService`: organizations, quotas, members, roles, license assignments, usage,
//! sessions and API keys. Mutations become domain commands and go through
//! [`Broker::execute`]; reads go through the broker's authorized read helpers.

use std::ops::Bound;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, QuotaChange};
use super::paging::{Listing, Pager, SlotPosition, take_page};
use super::status::to_status;
use crate::activity::Activity;
use crate::audit::{AuditCursor, AuditError, AuditQuery};
use crate::broker::{Broker, Executed};
use crate::domain::LeaseId;
use crate::domain::types::{check_client_cert_subject, check_optional_text, check_required_text};
use crate::domain::{
    Action, Command, CommandOutcome, DomainError, Email, OrgId, Principal, Product, Role,
};
use crate::limits;
use crate::proto::{self, admin_service_server::AdminService};

pub struct AdminApi {
    broker: Arc<Broker>,
    /// Holds usage windows and the audit record for `GetUsage` and `ListAuditEvents`
    /// (admin changes reach the audit record from `Broker::execute`).
    activity: Arc<Activity>,
}

type Answer<T> = Result<Response<T>, Status>;

impl AdminApi {
    pub fn new(broker: Arc<Broker>, activity: Arc<Activity>) -> Self {
        AdminApi { broker, activity }
    }

    /// Resolves the caller, then parses the body into a command and executes it.
    async fn run<T>(
        &self,
        request: Request<T>,
        to_command: impl FnOnce(T) -> Result<Command, DomainError>,
    ) -> Result<(Principal, Command, Executed), Status> {
        let principal = super::principal(&self.broker, &request)?;
        let command = to_command(request.into_inner()).map_err(to_status)?;
        let outcome = self
            .broker
            .execute(&principal, command.clone())
            .await
            .map_err(to_status)?;
        Ok((principal, command, outcome))
    }

    fn organization_answer(
        &self,
        org: &crate::domain::OrgId,
    ) -> Result<proto::Organization, Status> {
        let organization = self.broker.organization(org).map_err(to_status)?;
        Ok(convert::organization_to_wire(&organization))
    }
}

/// The member record a command left: built from the command itself, so a caller who
/// stepped down (and may no longer read the organization) still learns what was done.
fn member_answer(email: &Email, role: Role) -> proto::Member {
    proto::Member {
        email: email.to_string(),
        role: convert::role_to_wire(role),
    }
}

/// An organization's display name, at creation or renaming: required, bounded.
fn display_name(name: String) -> Result<String, DomainError> {
    check_required_text("display_name", &name, limits::DISPLAY_NAME_BYTES_MAX)?;
    Ok(name)
}

fn assignments(outcome: CommandOutcome) -> (Vec<proto::AssignmentResult>, u32) {
    match outcome {
        CommandOutcome::Assignments {
            results,
            assigned_total,
        } => (convert::assignment_results(&results), assigned_total),
        _ => (Vec::new(), 0),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_organization(
        &self,
        request: Request<proto::CreateOrganizationRequest>,
    ) -> Answer<proto::CreateOrganizationResponse> {
        let now_unix_ms = self.broker.clock().unix_ms();
        let (_, command, _) = self
            .run(request, |body| {
                let past = convert::past_expiry(body.allow_past_expiry);
                Ok(Command::CreateOrganization {
                    org: convert::org_id(&body.org_id)?,
                    display_name: display_name(body.display_name)?,
                    owner: Email::parse_field("owner_email", &body.owner_email)?,
                    quota: convert::new_quota(body.quota, now_unix_ms, past)?,
                })
            })
            .await?;
        Ok(Response::new(proto::CreateOrganizationResponse {
            organization: Some(self.organization_answer(command.org())?),
        }))
    }

    async fn set_quota(
        &self,
        request: Request<proto::SetQuotaRequest>,
    ) -> Answer<proto::SetQuotaResponse> {
        let now_unix_ms = self.broker.clock().unix_ms();
        let (_, command, executed) = self
            .run(request, |body| {
                let org = convert::org_id(&body.org_id)?;
                Ok(match convert::quota_change(&body, now_unix_ms)? {
                    QuotaChange::Replace(quota) => Command::SetQuota { org, quota },
                    QuotaChange::Update(update) => Command::UpdateQuota { org, update },
                })
            })
            .await?;
        let CommandOutcome::QuotaSet { before, after } = executed.outcome else {
            return Err(Status::internal(
                "a quota change answered without its quota",
            ));
        };
        // The quota as this change left it, whatever changed since.
        let mut organization = self.organization_answer(command.org())?;
        organization.quota = Some(convert::quota_to_wire(after));
        Ok(Response::new(proto::SetQuotaResponse {
            organization: Some(organization),
            previous_quota: Some(convert::quota_to_wire(before)),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<proto::ListOrganizationsRequest>,
    ) -> Answer<proto::ListOrganizationsResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let pager = Pager::new(Listing::Organizations, "filters", &[]);
        let page = pager
            .page(body.page_size, &body.page_token)
            .map_err(to_status)?;
        let after = page.after_key(OrgId::parse).map_err(to_status)?;
        let (organizations, last) = self
            .broker
            .read_organizations(&principal, |state| {
                let entries = state
                    .organizations_after(after.as_ref())
                    .map(|o| (&o.id, Some(o)));
                let (page_items, last) = take_page(entries, page.size);
                let wire: Vec<_> = page_items
                    .into_iter()
                    .map(convert::organization_to_wire)
                    .collect();
                (wire, last.cloned())
            })
            .map_err(to_status)?;
        Ok(Response::new(proto::ListOrganizationsResponse {
            organizations,
            next_page_token: pager.next_token(last.as_ref().map(|id| id.as_str().as_bytes())),
        }))
    }

    async fn get_organization(
        &self,
        request: Request<proto::GetOrganizationRequest>,
    ) -> Answer<proto::GetOrganizationResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let org = convert::org_id(&request.get_ref().org_id).map_err(to_status)?;
        let organization = self
            .broker
            .read_organization(
                &principal,
                Action::Administer,
                &org,
                convert::organization_to_wire,
            )
            .map_err(to_status)?;
        Ok(Response::new(proto::GetOrganizationResponse {
            organization: Some(organization),
        }))
    }

    async fn rename_organization(
        &self,
        request: Request<proto::RenameOrganizationRequest>,
    ) -> Answer<proto::RenameOrganizationResponse> {
        let (_, command, _) = self
            .run(request, |body| {
                Ok(Command::RenameOrganization {
                    org: convert::org_id(&body.org_id)?,
                    display_name: display_name(body.display_name)?,
                })
            })
            .await?;
        Ok(Response::new(proto::RenameOrganizationResponse {
            organization: Some(self.organization_answer(command.org())?),
        }))
    }

    async fn delete_organization(
        &self,
        request: Request<proto::DeleteOrganizationRequest>,
    ) -> Answer<proto::DeleteOrganizationResponse> {
        let (_, _, executed) = self
            .run(request, |body| {
                Ok(Command::DeleteOrganization {
                    org: convert::org_id(&body.org_id)?,
                })
            })
            .await?;
        let (keys_revoked, members_removed) = match executed.outcome {
            CommandOutcome::OrganizationDeleted {
                keys_revoked,
                members_removed,
            } => (keys_revoked, members_removed),
            _ => (0, 0),
        };
        Ok(Response::new(proto::DeleteOrganizationResponse {
            sessions_ended: executed.sessions_ended,
            keys_revoked,
            members_removed,
        }))
    }

    async fn add_member(
        &self,
        request: Request<proto::AddMemberRequest>,
    ) -> Answer<proto::AddMemberResponse> {
        let (_, command, _) = self
            .run(request, |body| {
                Ok(Command::AddMember {
                    org: convert::org_id(&body.org_id)?,
                    email: Email::parse(&body.email)?,
                    role: convert::role(body.role, Some(Role::Member))?,
                })
            })
            .await?;
        let Command::AddMember { email, role, .. } = &command else {
            unreachable!()
        };
        Ok(Response::new(proto::AddMemberResponse {
            member: Some(member_answer(email, *role)),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Answer<proto::RemoveMemberResponse> {
        let (_, _, executed) = self
            .run(request, |body| {
                Ok(Command::RemoveMember {
                    org: convert::org_id(&body.org_id)?,
                    email: Email::parse(&body.email)?,
                })
            })
            .await?;
        let keys_revoked = match executed.outcome {
            CommandOutcome::MemberRemoved { keys_revoked } => keys_revoked,
            _ => 0,
        };
        Ok(Response::new(proto::RemoveMemberResponse {
            sessions_ended: executed.sessions_ended,
            keys_revoked,
        }))
    }

    async fn set_role(
        &self,
        request: Request<proto::SetRoleRequest>,
    ) -> Answer<proto::SetRoleResponse> {
        let (_, command, _) = self
            .run(request, |body| {
                Ok(Command::SetRole {
                    org: convert::org_id(&body.org_id)?,
                    email: Email::parse(&body.email)?,
                    role: convert::role(body.role, None)?,
                })
            })
            .await?;
        let Command::SetRole { email, role, .. } = &command else {
            unreachable!()
        };
        Ok(Response::new(proto::SetRoleResponse {
            member: Some(member_answer(email, *role)),
        }))
    }

    async fn list_members(
        &self,
        request: Request<proto::ListMembersRequest>,
    ) -> Answer<proto::ListMembersResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let pager = Pager::new(Listing::Members, "org_id", &[org.as_str()]);
        let page = pager
            .page(body.page_size, &body.page_token)
            .map_err(to_status)?;
        let after = page.after_key(Email::from_stored).map_err(to_status)?;
        let (members, last) = self
            .broker
            .read_organization(&principal, Action::Administer, &org, |o| {
                let start = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
                let entries = o
                    .members
                    .range::<_, Email>((start, Bound::Unbounded))
                    .map(|(email, role)| (email, Some((email, *role))));
                let (page_items, last) = take_page(entries, page.size);
                let wire: Vec<_> = page_items
                    .into_iter()
                    .map(|(email, role)| proto::Member {
                        email: email.to_string(),
                        role: convert::role_to_wire(role),
                    })
                    .collect();
                (wire, last.cloned())
            })
            .map_err(to_status)?;
        Ok(Response::new(proto::ListMembersResponse {
            members,
            next_page_token: pager.next_token(last.as_ref().map(|e| e.as_str().as_bytes())),
        }))
    }

    async fn assign_licenses(
        &self,
        request: Request<proto::AssignLicensesRequest>,
    ) -> Answer<proto::AssignLicensesResponse> {
        let (_, _, executed) = self
            .run(request, |body| {
                Ok(Command::AssignLicenses {
                    org: convert::org_id(&body.org_id)?,
                    product: convert::product(body.product)?,
                    emails: convert::email_batch(&body.emails)?,
                })
            })
            .await?;
        let (results, assigned_total) = assignments(executed.outcome);
        Ok(Response::new(proto::AssignLicensesResponse {
            results,
            assigned_total,
        }))
    }

    async fn unassign_licenses(
        &self,
        request: Request<proto::UnassignLicensesRequest>,
    ) -> Answer<proto::UnassignLicensesResponse> {
        let (_, _, executed) = self
            .run(request, |body| {
                Ok(Command::UnassignLicenses {
                    org: convert::org_id(&body.org_id)?,
                    product: convert::product(body.product)?,
                    emails: convert::email_batch(&body.emails)?,
                })
            })
            .await?;
        let sessions_ended = executed.sessions_ended;
        let (results, assigned_total) = assignments(executed.outcome);
        Ok(Response::new(proto::UnassignLicensesResponse {
            results,
            sessions_ended,
            assigned_total,
        }))
    }

    async fn transfer_license(
        &self,
        request: Request<proto::TransferLicenseRequest>,
    ) -> Answer<proto::TransferLicenseResponse> {
        let (_, _, executed) = self
            .run(request, |body| {
                Ok(Command::TransferLicense {
                    org: convert::org_id(&body.org_id)?,
                    product: convert::product(body.product)?,
                    from: Email::parse_field("from_email", &body.from_email)?,
                    to: Email::parse_field("to_email", &body.to_email)?,
                })
            })
            .await?;
        Ok(Response::new(proto::TransferLicenseResponse {
            sessions_ended: executed.sessions_ended,
        }))
    }

    async fn list_assignments(
        &self,
        request: Request<proto::ListAssignmentsRequest>,
    ) -> Answer<proto::ListAssignmentsResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let product = convert::product(body.product).map_err(to_status)?;
        let pager = Pager::new(
            Listing::Assignments,
            "org_id or product",
            &[org.as_str(), product.name()],
        );
        let page = pager
            .page(body.page_size, &body.page_token)
            .map_err(to_status)?;
        let after = page.after_key(Email::from_stored).map_err(to_status)?;
        let (emails, quota, last) = self
            .broker
            .read_organization(&principal, Action::Administer, &org, |o| {
                let start = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
                let entries = o
                    .assigned(product)
                    .range::<_, Email>((start, Bound::Unbounded))
                    .map(|email| (email, Some(email)));
                let (page_items, last) = take_page(entries, page.size);
                let emails: Vec<_> = page_items.into_iter().map(Email::to_string).collect();
                (emails, o.quota.for_product(product), last.cloned())
            })
            .map_err(to_status)?;
        Ok(Response::new(proto::ListAssignmentsResponse {
            emails,
            quota,
            next_page_token: pager.next_token(last.as_ref().map(|e| e.as_str().as_bytes())),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<proto::GetUsageRequest>,
    ) -> Answer<proto::GetUsageResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let window_seconds =
            convert::usage_window_seconds(body.window_seconds).map_err(to_status)?;
        let (usage, expires_at) = self.broker.usage(&principal, &org).map_err(to_status)?;
        let products = usage
            .iter()
            .map(|u| {
                let window = self.activity.usage_window(&org, u.product, window_seconds);
                proto::ProductUsage {
                    product: convert::product_to_wire(u.product),
                    quota: u.quota,
                    assigned: u.assigned,
                    active_sessions: u.counters.active,
                    peak_sessions: u.counters.peak,
                    denials: u.counters.denials,
                    grants: u.counters.grants,
                    expiries: u.counters.expiries,
                    window_peak_sessions: window.peak_sessions.max(u.counters.active),
                    window_denials: window.denials,
                    window_grants: window.grants,
                }
            })
            .collect();
        Ok(Response::new(proto::GetUsageResponse {
            products,
            license_expires_at_unix_ms: expires_at.unwrap_or(0),
            window_seconds,
        }))
    }

    async fn get_usage_series(
        &self,
        request: Request<proto::GetUsageSeriesRequest>,
    ) -> Answer<proto::GetUsageSeriesResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let product = convert::product(body.product).map_err(to_status)?;
        // One `now` for the range and the series: a day's range must be found within
        // the day of minutes however late in the millisecond the series is cut.
        let now_unix_ms = self.broker.clock().unix_ms();
        let (start_ms, end_ms) = convert::usage_series_range(
            body.range,
            body.start_unix_ms,
            body.end_unix_ms,
            now_unix_ms,
        )
        .map_err(to_status)?;
        // Authorized as GetUsage: the operator, or an Owner or Admin of the organization.
        let (usage, _) = self.broker.usage(&principal, &org).map_err(to_status)?;
        let now = usage
            .iter()
            .find(|u| u.product == product)
            .expect("usage has every product");
        let series = self
            .activity
            .usage_series(&org, product, start_ms, end_ms, now_unix_ms);
        let resolution_ms = series.resolution_ms as i64;
        let mut points: Vec<proto::UsagePoint> = series
            .points
            .iter()
            .map(|point| proto::UsagePoint {
                start_unix_ms: point.start_unix_ms,
                peak_sessions: point.peak_sessions,
                denials: point.denials,
                quota: point.quota,
                grants: point.grants,
            })
            .collect();
        // Sessions restored at a restart are active before any event counted them.
        if let Some(last) = points.last_mut()
            && last.start_unix_ms + resolution_ms >= end_ms
        {
            last.peak_sessions = last.peak_sessions.max(now.counters.active);
        }
        let start_unix_ms = points.first().map_or(start_ms, |p| p.start_unix_ms);
        let end_unix_ms = points
            .last()
            .map_or(end_ms, |p| p.start_unix_ms + resolution_ms);
        Ok(Response::new(proto::GetUsageSeriesResponse {
            product: convert::product_to_wire(product),
            resolution_ms,
            start_unix_ms,
            end_unix_ms,
            points,
            kept_since_unix_ms: self.activity.usage_kept_since_unix_ms(),
            quota: now.quota,
            active_sessions: now.counters.active,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Answer<proto::ListSessionsResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let product = convert::product_filter(body.product).map_err(to_status)?;
        let product_name = product.map_or("any", Product::name);
        let pager = Pager::new(
            Listing::Sessions,
            "org_id or product",
            &[org.as_str(), product_name],
        );
        let page = pager
            .page(body.page_size, &body.page_token)
            .map_err(to_status)?;
        let boot_epoch = self.broker.leases().boot_epoch();
        let from = SlotPosition::first_slot(&page, boot_epoch).map_err(to_status)?;
        let (leases, next_slot) = self
            .broker
            .list_sessions(&principal, &org, product, from, page.size)
            .map_err(to_status)?;
        let timing = self.broker.leases().timing();
        let now = self.broker.clock().now();
        let unix_now = self.broker.clock().unix_ms();
        let sessions = leases
            .iter()
            .map(|lease| {
                let remaining = lease.deadline.saturating_duration_since(now);
                convert::lease_to_wire(
                    lease,
                    &org,
                    timing.ttl.as_millis() as u32,
                    timing.heartbeat_interval.as_millis() as u32,
                    unix_now + remaining.as_millis() as i64,
                )
            })
            .collect();
        let next = next_slot.map(|slot| SlotPosition { boot_epoch, slot }.to_bytes());
        Ok(Response::new(proto::ListSessionsResponse {
            sessions,
            next_page_token: pager.next_token(next.as_ref().map(|bytes| &bytes[..])),
        }))
    }

    async fn terminate_session(
        &self,
        request: Request<proto::TerminateSessionRequest>,
    ) -> Answer<proto::TerminateSessionResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let id = LeaseId::parse(&body.lease_id).map_err(to_status)?;
        self.broker
            .terminate_session(&principal, &org, id)
            .map_err(to_status)?;
        Ok(Response::new(proto::TerminateSessionResponse {}))
    }

    async fn create_api_key(
        &self,
        request: Request<proto::CreateApiKeyRequest>,
    ) -> Answer<proto::CreateApiKeyResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.into_inner();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let email = if body.email.is_empty() {
            None
        } else {
            Some(Email::parse(&body.email).map_err(to_status)?)
        };
        check_optional_text("label", &body.label, limits::LABEL_BYTES_MAX).map_err(to_status)?;
        if let Some(subject) = &body.client_cert_subject {
            check_client_cert_subject(subject).map_err(to_status)?;
        }
        let created = self
            .broker
            .create_api_key(&principal, org, email, body.label, body.client_cert_subject)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::CreateApiKeyResponse {
            key: Some(convert::api_key_to_wire(&created.record)),
            secret: created.full_text,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<proto::ListApiKeysRequest>,
    ) -> Answer<proto::ListApiKeysResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.get_ref();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        let pager = Pager::new(Listing::ApiKeys, "org_id", &[org.as_str()]);
        let page = pager
            .page(body.page_size, &body.page_token)
            .map_err(to_status)?;
        let after = page
            .after_key(|text| Ok(text.to_owned()))
            .map_err(to_status)?;
        let (keys, last) = self
            .broker
            .read_api_keys(&principal, &org, |o, only_of| {
                let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                let entries = o
                    .api_keys
                    .range::<_, str>((start, Bound::Unbounded))
                    .map(|(id, key)| (id, only_of.is_none_or(|e| *e == key.email).then_some(key)));
                let (page_items, last) = take_page(entries, page.size);
                let wire: Vec<_> = page_items
                    .into_iter()
                    .map(convert::api_key_to_wire)
                    .collect();
                (wire, last.cloned())
            })
            .map_err(to_status)?;
        Ok(Response::new(proto::ListApiKeysResponse {
            keys,
            next_page_token: pager.next_token(last.as_ref().map(|id| id.as_str().as_bytes())),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<proto::RevokeApiKeyRequest>,
    ) -> Answer<proto::RevokeApiKeyResponse> {
        self.run(request, |body| {
            let key_id = body.key_id.trim();
            if key_id.is_empty() || key_id.len() > 64 {
                return Err(DomainError::invalid(
                    "key_id",
                    "name the key id shown by ListApiKeys",
                ));
            }
            Ok(Command::RevokeApiKey {
                org: convert::org_id(&body.org_id)?,
                key_id: crate::domain::ApiKeyId(key_id.into()),
            })
        })
        .await?;
        Ok(Response::new(proto::RevokeApiKeyResponse {}))
    }

    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Answer<proto::ListAuditEventsResponse> {
        let principal = super::principal(&self.broker, &request)?;
        let body = request.into_inner();
        let org = convert::org_id(&body.org_id).map_err(to_status)?;
        // The operator reads the record of any organization id, a deleted one's too
        // (its events stay); a member, only that of their existing organization.
        if principal != Principal::Operator {
            self.broker
                .read_organization(&principal, Action::Administer, &org, |_| ())
                .map_err(to_status)?;
        }
        let range = convert::time_range(body.from_unix_ms, body.to_unix_ms).map_err(to_status)?;
        let limit = match body.limit {
            0 => limits::AUDIT_EVENTS_PER_QUERY_MAX,
            n => n.min(limits::AUDIT_EVENTS_PER_QUERY_MAX),
        };
        let after = match body.page_token.as_str() {
            "" => None,
            token => Some(
                AuditCursor::from_token(token)
                    .filter(|_| token.len() <= limits::PAGE_TOKEN_BYTES_MAX)
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "page_token: not a token this daemon issued; send the next_page_token of the previous answer, or none for the first page",
                        )
                    })?,
            ),
        };
        let query = AuditQuery {
            org: org.to_string(),
            from_unix_ms: range.0,
            to_unix_ms: range.1,
            limit: limit as usize,
            after,
        };
        let page = self
            .activity
            .audit()
            .query(query)
            .await
            .map_err(|error| match error {
                AuditError::Busy(_) | AuditError::BusyOrganization(_) => {
                    Status::resource_exhausted(error.to_string())
                }
                AuditError::PageGone => Status::failed_precondition(error.to_string()),
                // A passing shortage of the process, not a broken record: retry.
                AuditError::OutOfDescriptors { .. } => Status::unavailable(error.to_string()),
                error => Status::internal(format!("reading the audit record: {error}")),
            })?;
        Ok(Response::new(proto::ListAuditEventsResponse {
            events: page
                .records
                .iter()
                .map(convert::audit_event_to_wire)
                .collect(),
            truncated: page.next.is_some(),
            next_page_token: page.next.map(AuditCursor::to_token).unwrap_or_default(),
        }))
    }
}
