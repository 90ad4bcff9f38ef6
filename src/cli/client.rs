//! The client half of the CLI: one function per subcommand, each one RPC.

use std::process::ExitCode;

use tonic::Status;

use super::output::{self, Table};
use super::{
    AuditCommand, ClientArgs, Command, KeyCommand, LicenseCommand, MemberCommand, OrgCommand,
    ProductArg, QuotaArgs, QuotaCommand, RoleArg, SessionCommand,
};
use crate::client::{self, Authorized, BearerKey};
use crate::proto::{
    self, admin_service_client::AdminServiceClient, session_service_client::SessionServiceClient,
};

/// The page size the CLI asks for: the daemon's largest, so a listing takes the fewest
/// calls.
const PAGE_SIZE: i32 = crate::limits::LIST_PAGE_SIZE_MAX as i32;

/// Calls a List RPC page after page, from the first, until its `next_page_token` is
/// empty, and returns every item. `call` takes the page token and returns the page's
/// items and the next token.
async fn all_pages<T, Page>(mut call: impl FnMut(String) -> Page) -> Result<Vec<T>, Status>
where
    Page: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let (page, next) = call(page_token.clone()).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        if next == page_token {
            return Err(Status::internal(
                "the daemon answered the same page token twice; the listing would not end",
            ));
        }
        page_token = next;
    }
}

struct Clients {
    admin: AdminServiceClient<Authorized>,
    session: SessionServiceClient<Authorized>,
    json: bool,
}

async fn connect(args: &ClientArgs) -> Result<Clients, String> {
    let channel = client::connect_with(&args.addr, &args.tls_files())
        .await
        .map_err(|e| e.to_string())?;
    let key = BearerKey::new(args.key.as_deref()).map_err(|e| e.to_string())?;
    Ok(Clients {
        admin: client::admin(channel.clone(), key.clone()),
        session: client::session(channel, key),
        json: args.json,
    })
}

fn product(arg: ProductArg) -> i32 {
    match arg {
        ProductArg::Kse => proto::Product::Kse as i32,
        ProductArg::Kre => proto::Product::Kre as i32,
    }
}

fn role(arg: RoleArg) -> i32 {
    match arg {
        RoleArg::Owner => proto::Role::Owner as i32,
        RoleArg::Admin => proto::Role::Admin as i32,
        RoleArg::Member => proto::Role::Member as i32,
    }
}

fn quota(args: &QuotaArgs) -> proto::Quota {
    proto::Quota {
        kse_seats: args.kse,
        kre_sessions: args.kre,
        expires_at_unix_ms: args.expires_at_unix_ms,
    }
}

fn client_args(command: &Command) -> &ClientArgs {
    match command {
        Command::Serve(_)
        | Command::OperatorKey(_)
        | Command::Bench(_)
        | Command::BenchRestart(_)
        | Command::BenchNoopServer { .. } => {
            unreachable!("not a client command")
        }
        Command::Org(OrgCommand::Create { client, .. } | OrgCommand::List { client })
        | Command::Quota(QuotaCommand::Set { client, .. })
        | Command::Member(
            MemberCommand::Add { client, .. }
            | MemberCommand::Remove { client, .. }
            | MemberCommand::Role { client, .. }
            | MemberCommand::List { client, .. },
        )
        | Command::Key(
            KeyCommand::Create { client, .. }
            | KeyCommand::List { client, .. }
            | KeyCommand::Revoke { client, .. },
        )
        | Command::License(
            LicenseCommand::Assign { client, .. }
            | LicenseCommand::Unassign { client, .. }
            | LicenseCommand::Transfer { client, .. }
            | LicenseCommand::List { client, .. },
        )
        | Command::Session(
            SessionCommand::Acquire { client, .. }
            | SessionCommand::Heartbeat { client, .. }
            | SessionCommand::Release { client, .. }
            | SessionCommand::List { client, .. }
            | SessionCommand::Terminate { client, .. },
        ) => client,
        Command::Usage(args) => &args.client,
        Command::Audit(AuditCommand::Export { client, .. }) => client,
    }
}

/// Runs one client subcommand and prints its answer.
pub async fn run(command: Command) -> ExitCode {
    let mut clients = match connect(client_args(&command)).await {
        Ok(clients) => clients,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match dispatch(&mut clients, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(status) => {
            eprintln!("error: {:?}: {}", status.code(), status.message());
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

async fn dispatch(c: &mut Clients, command: Command) -> Result<(), Status> {
    let json = c.json;
    match command {
        Command::Serve(_)
        | Command::OperatorKey(_)
        | Command::Bench(_)
        | Command::BenchRestart(_)
        | Command::BenchNoopServer { .. } => {
            unreachable!("not a client command")
        }
        Command::Org(OrgCommand::Create {
            org_id,
            name,
            owner,
            quota: q,
            ..
        }) => {
            let request = proto::CreateOrganizationRequest {
                org_id,
                display_name: name,
                owner_email: owner,
                quota: Some(quota(&q)),
            };
            let answer = c.admin.create_organization(request).await?.into_inner();
            output::organizations(json, answer.organization.as_slice(), &answer);
        }
        Command::Org(OrgCommand::List { .. }) => {
            let admin = c.admin.clone();
            let organizations = all_pages(|page_token| {
                let mut admin = admin.clone();
                async move {
                    let request = proto::ListOrganizationsRequest {
                        page_size: PAGE_SIZE,
                        page_token,
                    };
                    let page = admin.list_organizations(request).await?.into_inner();
                    Ok((page.organizations, page.next_page_token))
                }
            })
            .await?;
            let answer = proto::ListOrganizationsResponse {
                organizations,
                next_page_token: String::new(),
            };
            output::organizations(json, &answer.organizations, &answer);
        }
        Command::Quota(QuotaCommand::Set {
            org_id, quota: q, ..
        }) => {
            let request = proto::SetQuotaRequest {
                org_id,
                quota: Some(quota(&q)),
            };
            let answer = c.admin.set_quota(request).await?.into_inner();
            output::organizations(json, answer.organization.as_slice(), &answer);
        }
        Command::Member(MemberCommand::Add {
            org_id,
            email,
            role: r,
            ..
        }) => {
            let request = proto::AddMemberRequest {
                org_id,
                email,
                role: role(r),
            };
            let answer = c.admin.add_member(request).await?.into_inner();
            output::members(json, answer.member.as_slice(), &answer);
        }
        Command::Member(MemberCommand::Remove { org_id, email, .. }) => {
            let answer = c
                .admin
                .remove_member(proto::RemoveMemberRequest { org_id, email })
                .await?
                .into_inner();
            output::message(
                json,
                &answer,
                format!(
                    "removed; {} sessions ended, {} API keys revoked",
                    answer.sessions_ended, answer.keys_revoked
                ),
            );
        }
        Command::Member(MemberCommand::Role {
            org_id,
            email,
            role: r,
            ..
        }) => {
            let request = proto::SetRoleRequest {
                org_id,
                email,
                role: role(r),
            };
            let answer = c.admin.set_role(request).await?.into_inner();
            output::members(json, answer.member.as_slice(), &answer);
        }
        Command::Member(MemberCommand::List { org_id, .. }) => {
            let admin = c.admin.clone();
            let members = all_pages(|page_token| {
                let (mut admin, org_id) = (admin.clone(), org_id.clone());
                async move {
                    let request = proto::ListMembersRequest {
                        org_id,
                        page_size: PAGE_SIZE,
                        page_token,
                    };
                    let page = admin.list_members(request).await?.into_inner();
                    Ok((page.members, page.next_page_token))
                }
            })
            .await?;
            let answer = proto::ListMembersResponse {
                members,
                next_page_token: String::new(),
            };
            output::members(json, &answer.members, &answer);
        }
        Command::Key(KeyCommand::Create {
            org_id,
            email,
            label,
            ..
        }) => {
            let request = proto::CreateApiKeyRequest {
                org_id,
                email: email.unwrap_or_default(),
                label,
            };
            let answer = c.admin.create_api_key(request).await?.into_inner();
            let key_id = answer
                .key
                .as_ref()
                .map(|k| k.key_id.clone())
                .unwrap_or_default();
            output::message(
                json,
                &answer,
                format!(
                    "API key {key_id} created. It is shown once; store it now:\n\n    {}\n",
                    answer.secret
                ),
            );
        }
        Command::Key(KeyCommand::List { org_id, .. }) => {
            let admin = c.admin.clone();
            let keys = all_pages(|page_token| {
                let (mut admin, org_id) = (admin.clone(), org_id.clone());
                async move {
                    let request = proto::ListApiKeysRequest {
                        org_id,
                        page_size: PAGE_SIZE,
                        page_token,
                    };
                    let page = admin.list_api_keys(request).await?.into_inner();
                    Ok((page.keys, page.next_page_token))
                }
            })
            .await?;
            let answer = proto::ListApiKeysResponse {
                keys,
                next_page_token: String::new(),
            };
            let mut table = Table::new(&["KEY ID", "EMAIL", "LABEL", "CREATED"]);
            for key in &answer.keys {
                table.row(vec![
                    key.key_id.clone(),
                    key.email.clone(),
                    key.label.clone(),
                    output::time(key.created_at_unix_ms),
                ]);
            }
            output::table(json, &answer, table);
        }
        Command::Key(KeyCommand::Revoke { org_id, key_id, .. }) => {
            let answer = c
                .admin
                .revoke_api_key(proto::RevokeApiKeyRequest { org_id, key_id })
                .await?
                .into_inner();
            output::message(json, &answer, "revoked".into());
        }
        Command::License(LicenseCommand::Assign {
            org_id,
            product: p,
            emails,
            ..
        }) => {
            let request = proto::AssignLicensesRequest {
                org_id,
                product: product(p),
                emails,
            };
            let answer = c.admin.assign_licenses(request).await?.into_inner();
            output::assignments(json, &answer.results, answer.assigned_total, &answer);
        }
        Command::License(LicenseCommand::Unassign {
            org_id,
            product: p,
            emails,
            ..
        }) => {
            let request = proto::UnassignLicensesRequest {
                org_id,
                product: product(p),
                emails,
            };
            let answer = c.admin.unassign_licenses(request).await?.into_inner();
            output::assignments(json, &answer.results, answer.assigned_total, &answer);
        }
        Command::License(LicenseCommand::Transfer {
            org_id,
            product: p,
            from,
            to,
            ..
        }) => {
            let request = proto::TransferLicenseRequest {
                org_id,
                product: product(p),
                from_email: from,
                to_email: to,
            };
            let answer = c.admin.transfer_license(request).await?.into_inner();
            output::message(
                json,
                &answer,
                format!("transferred; {} sessions ended", answer.sessions_ended),
            );
        }
        Command::License(LicenseCommand::List {
            org_id, product: p, ..
        }) => {
            let admin = c.admin.clone();
            let quota = std::cell::Cell::new(0);
            let emails = all_pages(|page_token| {
                let (mut admin, org_id, quota) = (admin.clone(), org_id.clone(), &quota);
                async move {
                    let request = proto::ListAssignmentsRequest {
                        org_id,
                        product: product(p),
                        page_size: PAGE_SIZE,
                        page_token,
                    };
                    let page = admin.list_assignments(request).await?.into_inner();
                    quota.set(page.quota);
                    Ok((page.emails, page.next_page_token))
                }
            })
            .await?;
            let answer = proto::ListAssignmentsResponse {
                emails,
                quota: quota.get(),
                next_page_token: String::new(),
            };
            let mut table = Table::new(&["EMAIL"]);
            for email in &answer.emails {
                table.row(vec![email.clone()]);
            }
            if !json {
                println!("{} of {} assigned", answer.emails.len(), answer.quota);
            }
            output::table(json, &answer, table);
        }
        Command::Usage(args) => {
            let window_seconds = u32::try_from(args.window.as_secs()).unwrap_or(u32::MAX);
            let answer = c
                .admin
                .get_usage(proto::GetUsageRequest {
                    org_id: args.org_id,
                    window_seconds,
                })
                .await?
                .into_inner();
            output::usage(json, &answer);
        }
        Command::Audit(AuditCommand::Export {
            org_id,
            from,
            to,
            format,
            ..
        }) => {
            let range = super::audit::range(from.as_deref(), to.as_deref())
                .map_err(Status::invalid_argument)?;
            super::audit::export(&mut c.admin, org_id, range, format).await?;
        }
        Command::Session(SessionCommand::Acquire {
            product: p,
            engine_id,
            hostname,
            label,
            ..
        }) => {
            let request = proto::AcquireRequest {
                product: product(p),
                engine_id,
                hostname,
                label,
            };
            let answer = c.session.acquire(request).await?.into_inner();
            output::leases(json, answer.lease.as_slice(), &answer);
        }
        Command::Session(SessionCommand::Heartbeat {
            lease_id,
            generation,
            ..
        }) => {
            let answer = c
                .session
                .heartbeat(proto::HeartbeatRequest {
                    lease_id,
                    generation,
                })
                .await?
                .into_inner();
            output::message(
                json,
                &answer,
                format!("extended until {}", output::time(answer.expires_at_unix_ms)),
            );
        }
        Command::Session(SessionCommand::Release {
            lease_id,
            generation,
            ..
        }) => {
            let answer = c
                .session
                .release(proto::ReleaseRequest {
                    lease_id,
                    generation,
                })
                .await?
                .into_inner();
            output::message(json, &answer, "released".into());
        }
        Command::Session(SessionCommand::List {
            org_id, product: p, ..
        }) => {
            let admin = c.admin.clone();
            let sessions = all_pages(|page_token| {
                let (mut admin, org_id) = (admin.clone(), org_id.clone());
                async move {
                    let request = proto::ListSessionsRequest {
                        org_id,
                        product: p.map(product).unwrap_or_default(),
                        page_size: PAGE_SIZE,
                        page_token,
                    };
                    let page = admin.list_sessions(request).await?.into_inner();
                    Ok((page.sessions, page.next_page_token))
                }
            })
            .await?;
            let answer = proto::ListSessionsResponse {
                sessions,
                next_page_token: String::new(),
            };
            output::leases(json, &answer.sessions, &answer);
        }
        Command::Session(SessionCommand::Terminate {
            org_id, lease_id, ..
        }) => {
            let answer = c
                .admin
                .terminate_session(proto::TerminateSessionRequest { org_id, lease_id })
                .await?
                .into_inner();
            output::message(json, &answer, "terminated".into());
        }
    }
    Ok(())
}
