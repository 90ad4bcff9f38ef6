//! Provisioning through the real admin API, written once for the load generator
//! (`setup.rs`, many organizations at once), the restart bench and the integration
//! tests' harness: an organization with its owner and quota, its members, their
//! licenses and API keys. Each function is one call, authenticated by the client's
//! key; the caller chooses names, order and concurrency. Benchmarks of the broker
//! without a server (`benches/durability.rs`) take the same organization as domain
//! commands ([`organization_commands`]).

use tonic::Status;

use crate::client::Authorized;
use crate::domain::{self, Command, Email, OrgId};
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::{
    AddMemberRequest, AssignLicensesRequest, AssignLicensesResponse, CreateApiKeyRequest,
    CreateOrganizationRequest, Member, Product, Quota, Role,
};

/// An organization to create.
#[derive(Clone, Debug)]
pub struct NewOrganization {
    pub org_id: String,
    pub display_name: String,
    /// Its first Owner.
    pub owner_email: String,
    pub quota: Quota,
}

type Admin = AdminServiceClient<Authorized>;

/// Creates `organization` (the operator's call).
pub async fn create_organization(
    admin: &mut Admin,
    organization: NewOrganization,
) -> Result<(), Status> {
    let request = CreateOrganizationRequest {
        org_id: organization.org_id,
        display_name: organization.display_name,
        owner_email: organization.owner_email,
        quota: Some(organization.quota),
        allow_past_expiry: false,
    };
    admin.create_organization(request).await.map(drop)
}

/// Adds `email` to `org_id` with `role`, and returns the member as stored.
pub async fn add_member(
    admin: &mut Admin,
    org_id: &str,
    email: &str,
    role: Role,
) -> Result<Member, Status> {
    let request = AddMemberRequest {
        org_id: org_id.to_owned(),
        email: email.to_owned(),
        role: role as i32,
    };
    let answer = admin.add_member(request).await?.into_inner();
    answer
        .member
        .ok_or_else(|| Status::internal("AddMember answered without the member"))
}

/// Assigns `product` to `emails` in `org_id`.
pub async fn assign(
    admin: &mut Admin,
    org_id: &str,
    product: Product,
    emails: Vec<String>,
) -> Result<AssignLicensesResponse, Status> {
    let request = AssignLicensesRequest {
        org_id: org_id.to_owned(),
        product: product as i32,
        emails,
    };
    Ok(admin.assign_licenses(request).await?.into_inner())
}

/// Creates an API key for `email` in `org_id` and returns its secret.
pub async fn create_api_key(
    admin: &mut Admin,
    org_id: &str,
    email: &str,
    label: &str,
) -> Result<String, Status> {
    let request = CreateApiKeyRequest {
        org_id: org_id.to_owned(),
        email: email.to_owned(),
        label: label.to_owned(),
        client_cert_subject: None,
    };
    Ok(admin.create_api_key(request).await?.into_inner().secret)
}

/// The commands that make an organization with its owner, quota and members (as
/// Members), for a caller of `Broker::execute` with the operator's principal.
pub fn organization_commands(
    org: &OrgId,
    display_name: &str,
    owner: Email,
    quota: domain::Quota,
    members: impl IntoIterator<Item = Email>,
) -> Vec<Command> {
    let create = Command::CreateOrganization {
        org: org.clone(),
        display_name: display_name.to_owned(),
        owner,
        quota,
    };
    let add = members.into_iter().map(|email| Command::AddMember {
        org: org.clone(),
        email,
        role: domain::Role::Member,
    });
    std::iter::once(create).chain(add).collect()
}
