//! The client half of the CLI: one function per command group, each subcommand one
//! RPC (a listing: one RPC a page until the last).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tonic::Status;
use tonic::transport::Channel;

use super::commands::{
    AuditCommand, ClientArgs, ClientCommand, DestructiveArgs, ExportFormat, KeyCommand,
    LicenseCommand, MemberCommand, OrgCommand, ProductArg, QuotaArgs, QuotaCommand, RoleArg,
    SeriesRange, SessionCommand, UsageArgs,
};
use super::failure::Failure;
use super::output::{self, Table};
use super::plan::{self, Destructive};
use super::time::Expiry;
use crate::client::{self, Authorized, BearerKey, ClientError};
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

/// What every client command holds: the daemon's two services with the caller's key,
/// the per-call deadline, and the output mode.
struct Clients {
    admin: AdminServiceClient<Authorized>,
    session: SessionServiceClient<Authorized>,
    /// How long one call may wait for its answer (`--timeout`).
    call_timeout: Duration,
    json: bool,
}

impl Clients {
    /// Whether a destructive command goes ahead (see [`plan::go_ahead`]).
    async fn go_ahead(
        &self,
        flags: DestructiveArgs,
        command: Destructive<'_>,
    ) -> Result<bool, Failure> {
        plan::go_ahead(&self.admin, self.call_timeout, flags, self.json, command).await
    }
}

async fn connect(args: &ClientArgs, addr: &str) -> Result<Clients, Failure> {
    let key = BearerKey::new(args.key.as_deref()).map_err(|e| Failure::Usage(e.to_string()))?;
    let channel = open_channel(args, addr).await?;
    Ok(Clients {
        admin: client::admin(channel.clone(), key.clone()),
        session: client::session(channel, key),
        call_timeout: args.timeout,
        json: args.json,
    })
}

/// A channel to `addr` with the command's TLS files, connected within
/// `--connect-timeout`.
pub(super) async fn open_channel(args: &ClientArgs, addr: &str) -> Result<Channel, Failure> {
    let tls = args.tls_files();
    let connecting = client::connect_with(addr, &tls);
    match tokio::time::timeout(args.connect_timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(connect_failure(error)),
        Err(_) => {
            let waited = humantime::format_duration(args.connect_timeout);
            let message = format!("{addr} did not answer within {waited}");
            Err(Failure::Unreachable(message))
        }
    }
}

/// A failure to connect: the command's own setup (an address that does not parse, TLS
/// files that cannot be used) is a configuration error; only a daemon that could not
/// be reached is worth a retry.
pub(super) fn connect_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Unreachable { .. } => Failure::Unreachable(error.to_string()),
        ClientError::UnsendableKey => Failure::Usage(error.to_string()),
        ClientError::BadAddress { .. }
        | ClientError::TlsFiles(_)
        | ClientError::Tls { .. }
        | ClientError::Handshake { .. }
        | ClientError::TlsFilesWithoutHttps { .. } => Failure::Configuration(error.to_string()),
    }
}

/// Waits at most `timeout` for a call's answer; a daemon that accepted the connection
/// but does not answer gives DEADLINE_EXCEEDED rather than a command that hangs.
pub(super) async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {} (--timeout)",
            humantime::format_duration(timeout)
        ))),
    }
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
        expires_at_unix_ms: args.expires.map_or(0, Expiry::unix_ms),
    }
}

/// Runs one client subcommand and prints its answer, or the failure on standard error
/// (as a JSON object with `--json`); returns the failure's exit code.
pub async fn run(args: ClientArgs, command: ClientCommand) -> ExitCode {
    let command = match command {
        ClientCommand::Run(run) => return super::run::run(args, run).await,
        ClientCommand::Status => return super::status::status(&args).await,
        command => command,
    };
    let (answered, outcome) = on_leader(&args, command).await;
    let outcome = match outcome {
        // A connection closed at the first call may be the daemon refusing the client
        // certificate (TLS 1.3 says so only then, and hyper drops the alert): ask.
        Err(Failure::Call(status)) if status.code() != tonic::Code::Ok => {
            match client::explain_refusal(&answered, &args.tls_files(), &status).await {
                Some(cause) => Err(Failure::Configuration(cause)),
                None => Err(Failure::Call(status)),
            }
        }
        other => other,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            output::failure(args.json, &failure);
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Runs `command` on the daemon at `--addr`, or on a cluster's leader: each address in
/// turn while it cannot be reached (nothing was sent to it), and from a standby to the
/// leader it names (`client::at_leader`: the standby refused the command's first call
/// before doing anything, so the whole command runs again there). Returns the outcome
/// and the address that gave it.
async fn on_leader(args: &ClientArgs, command: ClientCommand) -> (String, Result<(), Failure>) {
    let addrs = args.addrs();
    let Some(last) = addrs.len().checked_sub(1) else {
        let failure = Failure::Usage("--addr names no address".into());
        return (args.addr.clone(), Err(failure));
    };
    for (index, addr) in addrs.into_iter().enumerate() {
        let mut answered = addr.clone();
        let outcome = client::at_leader(
            &addr,
            |target| {
                answered.clone_from(&target);
                let command = command.clone();
                async move {
                    let mut clients = connect(args, &target).await?;
                    dispatch(&mut clients, command).await
                }
            },
            Failure::call_status,
        )
        .await;
        match outcome {
            Err(Failure::Unreachable(_)) if index < last => continue,
            outcome => return (answered, outcome),
        }
    }
    unreachable!("the last address returns")
}

async fn dispatch(c: &mut Clients, command: ClientCommand) -> Result<(), Failure> {
    match command {
        ClientCommand::Org(command) => org(c, command).await,
        ClientCommand::Quota(command) => quota_command(c, command).await,
        ClientCommand::Member(command) => member(c, command).await,
        ClientCommand::Key(command) => key(c, command).await,
        ClientCommand::License(command) => license(c, command).await,
        ClientCommand::Usage(args) => usage(c, args).await,
        ClientCommand::Audit(command) => audit(c, command).await,
        ClientCommand::Session(command) => session(c, command).await,
        ClientCommand::Run(_) => unreachable!("`run` holds a stream of its own, see run()"),
        ClientCommand::Status => unreachable!("`status` asks every address, see run()"),
    }
}

async fn org(c: &mut Clients, command: OrgCommand) -> Result<(), Failure> {
    match command {
        OrgCommand::Create {
            org_id,
            name,
            owner,
            quota: q,
        } => {
            let request = proto::CreateOrganizationRequest {
                org_id,
                display_name: name,
                owner_email: owner,
                quota: Some(quota(&q)),
                allow_past_expiry: q.force,
            };
            let answer = within(c.call_timeout, c.admin.create_organization(request)).await?;
            output::organizations(c.json, answer.organization.as_slice(), &answer);
        }
        OrgCommand::List => {
            let (admin, timeout) = (c.admin.clone(), c.call_timeout);
            let organizations = all_pages(|page_token| {
                let mut admin = admin.clone();
                async move {
                    let request = proto::ListOrganizationsRequest {
                        page_size: PAGE_SIZE,
                        page_token,
                    };
                    let page = within(timeout, admin.list_organizations(request)).await?;
                    Ok((page.organizations, page.next_page_token))
                }
            })
            .await?;
            let answer = proto::ListOrganizationsResponse {
                organizations,
                next_page_token: String::new(),
            };
            output::organizations(c.json, &answer.organizations, &answer);
        }
        OrgCommand::Show { org_id } => {
            let request = proto::GetOrganizationRequest { org_id };
            let answer = within(c.call_timeout, c.admin.get_organization(request)).await?;
            output::organizations(c.json, answer.organization.as_slice(), &answer);
        }
        OrgCommand::Rename { org_id, name } => {
            let request = proto::RenameOrganizationRequest {
                org_id,
                display_name: name,
            };
            let answer = within(c.call_timeout, c.admin.rename_organization(request)).await?;
            output::organizations(c.json, answer.organization.as_slice(), &answer);
        }
        OrgCommand::Delete {
            org_id,
            destructive,
        } => {
            let planned = Destructive::OrgDelete { org_id: &org_id };
            if !c.go_ahead(destructive, planned).await? {
                return Ok(());
            }
            let request = proto::DeleteOrganizationRequest {
                org_id: org_id.clone(),
            };
            let answer = within(c.call_timeout, c.admin.delete_organization(request)).await?;
            let text = format!(
                "deleted; {} sessions ended, {} API keys revoked, {} members removed (its audit events are kept)",
                answer.sessions_ended, answer.keys_revoked, answer.members_removed
            );
            let said = json!({
                "deleted": org_id,
                "sessions_ended": answer.sessions_ended,
                "keys_revoked": answer.keys_revoked,
                "members_removed": answer.members_removed,
            });
            output::message(c.json, &said, text);
        }
    }
    Ok(())
}

async fn quota_command(c: &mut Clients, command: QuotaCommand) -> Result<(), Failure> {
    let QuotaCommand::Set {
        org_id,
        change,
        force,
    } = command;
    // Only the fields given: the daemon keeps the others.
    let request = proto::SetQuotaRequest {
        org_id,
        quota: None,
        kse_seats: change.kse,
        kre_sessions: change.kre,
        expires_at_unix_ms: change.expires.map(Expiry::unix_ms),
        allow_past_expiry: force,
    };
    let answer = within(c.call_timeout, c.admin.set_quota(request)).await?;
    output::quota_change(c.json, &answer);
    Ok(())
}

async fn member(c: &mut Clients, command: MemberCommand) -> Result<(), Failure> {
    match command {
        MemberCommand::Add {
            org_id,
            email,
            role: r,
        } => {
            let request = proto::AddMemberRequest {
                org_id,
                email,
                role: role(r),
            };
            let answer = within(c.call_timeout, c.admin.add_member(request)).await?;
            output::members(c.json, answer.member.as_slice(), &answer);
        }
        MemberCommand::Remove {
            org_id,
            email,
            destructive,
        } => {
            let planned = Destructive::MemberRemove {
                org_id: &org_id,
                email: &email,
            };
            if !c.go_ahead(destructive, planned).await? {
                return Ok(());
            }
            let request = proto::RemoveMemberRequest {
                org_id,
                email: email.clone(),
            };
            let answer = within(c.call_timeout, c.admin.remove_member(request)).await?;
            let (sessions_ended, keys_revoked) = (answer.sessions_ended, answer.keys_revoked);
            let text = format!(
                "removed; {sessions_ended} sessions ended, {keys_revoked} API keys revoked"
            );
            let said = json!({"removed": email, "sessions_ended": sessions_ended, "keys_revoked": keys_revoked});
            output::message(c.json, &said, text);
        }
        MemberCommand::Role {
            org_id,
            email,
            role: r,
        } => {
            let request = proto::SetRoleRequest {
                org_id,
                email,
                role: role(r),
            };
            let answer = within(c.call_timeout, c.admin.set_role(request)).await?;
            output::members(c.json, answer.member.as_slice(), &answer);
        }
        MemberCommand::List { org_id } => list_members(c, org_id).await?,
    }
    Ok(())
}

async fn list_members(c: &mut Clients, org_id: String) -> Result<(), Failure> {
    let members = fetch_members(&c.admin, c.call_timeout, &org_id).await?;
    let answer = proto::ListMembersResponse {
        members,
        next_page_token: String::new(),
    };
    output::members(c.json, &answer.members, &answer);
    Ok(())
}

async fn key(c: &mut Clients, command: KeyCommand) -> Result<(), Failure> {
    match command {
        KeyCommand::Create {
            org_id,
            email,
            label,
            client_cert_subject,
        } => {
            let request = proto::CreateApiKeyRequest {
                org_id,
                email: email.unwrap_or_default(),
                label,
                client_cert_subject,
            };
            let answer = within(c.call_timeout, c.admin.create_api_key(request)).await?;
            let key_id = answer.key.as_ref().map(|k| k.key_id.as_str()).unwrap_or("");
            let text = format!(
                "API key {key_id} created. It is shown once; store it now:\n\n    {}\n",
                answer.secret
            );
            output::message(c.json, &answer, text);
        }
        KeyCommand::List { org_id } => list_keys(c, org_id).await?,
        KeyCommand::Revoke {
            org_id,
            key_id,
            destructive,
        } => {
            let planned = Destructive::KeyRevoke {
                org_id: &org_id,
                key_id: &key_id,
            };
            if !c.go_ahead(destructive, planned).await? {
                return Ok(());
            }
            let said = json!({ "revoked": key_id });
            let request = proto::RevokeApiKeyRequest { org_id, key_id };
            within(c.call_timeout, c.admin.revoke_api_key(request)).await?;
            output::message(c.json, &said, "revoked".into());
        }
    }
    Ok(())
}

async fn list_keys(c: &mut Clients, org_id: String) -> Result<(), Failure> {
    let keys = fetch_keys(&c.admin, c.call_timeout, &org_id).await?;
    let answer = proto::ListApiKeysResponse {
        keys,
        next_page_token: String::new(),
    };
    let mut table = Table::new(&["KEY ID", "EMAIL", "LABEL", "CREATED", "CLIENT CERT"]);
    for key in &answer.keys {
        table.row(vec![
            key.key_id.clone(),
            key.email.clone(),
            key.label.clone(),
            output::time(key.created_at_unix_ms),
            key.client_cert_subject.clone(),
        ]);
    }
    output::table(c.json, &answer, table);
    Ok(())
}

async fn license(c: &mut Clients, command: LicenseCommand) -> Result<(), Failure> {
    match command {
        LicenseCommand::Assign {
            org_id,
            product: p,
            emails,
        } => {
            let request = proto::AssignLicensesRequest {
                org_id,
                product: product(p),
                emails,
            };
            let answer = within(c.call_timeout, c.admin.assign_licenses(request)).await?;
            output::assignments(c.json, &answer.results, answer.assigned_total, &answer);
        }
        LicenseCommand::Unassign {
            org_id,
            product: p,
            emails,
            destructive,
        } => {
            let planned = Destructive::LicenseUnassign {
                org_id: &org_id,
                product: product(p),
                emails: &emails,
            };
            if !c.go_ahead(destructive, planned).await? {
                return Ok(());
            }
            let request = proto::UnassignLicensesRequest {
                org_id,
                product: product(p),
                emails,
            };
            let answer = within(c.call_timeout, c.admin.unassign_licenses(request)).await?;
            output::assignments(c.json, &answer.results, answer.assigned_total, &answer);
        }
        LicenseCommand::Transfer {
            org_id,
            product: p,
            from,
            to,
            destructive,
        } => {
            let planned = Destructive::LicenseTransfer {
                org_id: &org_id,
                product: product(p),
                from: &from,
            };
            if !c.go_ahead(destructive, planned).await? {
                return Ok(());
            }
            let mut said = json!({ "transferred": { "from": from, "to": to } });
            let request = proto::TransferLicenseRequest {
                org_id,
                product: product(p),
                from_email: from,
                to_email: to,
            };
            let answer = within(c.call_timeout, c.admin.transfer_license(request)).await?;
            said["sessions_ended"] = answer.sessions_ended.into();
            let text = format!("transferred; {} sessions ended", answer.sessions_ended);
            output::message(c.json, &said, text);
        }
        LicenseCommand::List { org_id, product: p } => list_assignments(c, org_id, p).await?,
    }
    Ok(())
}

async fn list_assignments(c: &mut Clients, org_id: String, p: ProductArg) -> Result<(), Failure> {
    let (admin, timeout) = (c.admin.clone(), c.call_timeout);
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
            let page = within(timeout, admin.list_assignments(request)).await?;
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
    if !c.json {
        println!("{} of {} assigned", answer.emails.len(), answer.quota);
    }
    output::table(c.json, &answer, table);
    Ok(())
}

async fn usage(c: &mut Clients, args: UsageArgs) -> Result<(), Failure> {
    if let Some(range) = args.series {
        return usage_series(c, args.org_id, range, args.product).await;
    }
    let window_seconds = u32::try_from(args.window.as_secs()).unwrap_or(u32::MAX);
    let request = proto::GetUsageRequest {
        org_id: args.org_id,
        window_seconds,
    };
    let answer = within(c.call_timeout, c.admin.get_usage(request)).await?;
    output::usage(c.json, &answer);
    Ok(())
}

/// `usage --series`: one series per product asked for, KSE first.
async fn usage_series(
    c: &mut Clients,
    org_id: String,
    range: SeriesRange,
    only: Option<ProductArg>,
) -> Result<(), Failure> {
    let range = match range {
        SeriesRange::Hour => proto::UsageRange::Hour,
        SeriesRange::Day => proto::UsageRange::Day,
        SeriesRange::Week => proto::UsageRange::Week,
    };
    let products = match only {
        Some(one) => vec![one],
        None => vec![ProductArg::Kse, ProductArg::Kre],
    };
    let mut series = Vec::with_capacity(products.len());
    for p in products {
        let request = proto::GetUsageSeriesRequest {
            org_id: org_id.clone(),
            product: product(p),
            range: range as i32,
            start_unix_ms: 0,
            end_unix_ms: 0,
        };
        series.push(within(c.call_timeout, c.admin.get_usage_series(request)).await?);
    }
    output::usage_series(c.json, &series);
    Ok(())
}

async fn audit(c: &mut Clients, command: AuditCommand) -> Result<(), Failure> {
    let AuditCommand::Export {
        org_id,
        from,
        to,
        format,
    } = command;
    if c.json && matches!(format, ExportFormat::Csv) {
        let message = "--json writes JSON lines; leave out --format csv".to_owned();
        return Err(Failure::Usage(message));
    }
    let range = super::audit::range(from.as_deref(), to.as_deref()).map_err(Failure::Usage)?;
    let timeout = c.call_timeout;
    Ok(super::audit::export(&mut c.admin, timeout, org_id, range, format).await?)
}

async fn session(c: &mut Clients, command: SessionCommand) -> Result<(), Failure> {
    match command {
        SessionCommand::Acquire {
            product: p,
            engine_id,
            hostname,
            label,
        } => {
            let request = proto::AcquireRequest {
                product: product(p),
                engine_id,
                hostname,
                label,
                wait_ms: 0,
            };
            let answer = within(c.call_timeout, c.session.acquire(request)).await?;
            output::leases(c.json, answer.lease.as_slice(), &answer);
        }
        SessionCommand::Heartbeat {
            lease_id,
            generation,
        } => {
            let request = proto::HeartbeatRequest {
                lease_id: lease_id.clone(),
                generation,
            };
            let answer = within(c.call_timeout, c.session.heartbeat(request)).await?;
            let text = format!("extended until {}", output::time(answer.expires_at_unix_ms));
            let said = json!({
                "extended": lease_id,
                "generation": generation,
                "expires_at_unix_ms": answer.expires_at_unix_ms,
            });
            output::message(c.json, &said, text);
        }
        SessionCommand::Release {
            lease_id,
            generation,
        } => {
            let said = json!({ "released": lease_id });
            let request = proto::ReleaseRequest {
                lease_id,
                generation,
            };
            within(c.call_timeout, c.session.release(request)).await?;
            output::message(c.json, &said, "released".into());
        }
        SessionCommand::List { org_id, product: p } => list_sessions(c, org_id, p).await?,
        SessionCommand::Terminate {
            org_id,
            lease_id,
            destructive,
        } => {
            let planned = Destructive::SessionTerminate {
                org_id: &org_id,
                lease_id: &lease_id,
            };
            if !c.go_ahead(destructive, planned).await? {
                return Ok(());
            }
            let said = json!({ "terminated": lease_id });
            let request = proto::TerminateSessionRequest { org_id, lease_id };
            within(c.call_timeout, c.admin.terminate_session(request)).await?;
            output::message(c.json, &said, "terminated".into());
        }
    }
    Ok(())
}

async fn list_sessions(
    c: &mut Clients,
    org_id: String,
    p: Option<ProductArg>,
) -> Result<(), Failure> {
    let product = p.map(product).unwrap_or_default();
    let sessions = fetch_sessions(&c.admin, c.call_timeout, &org_id, product).await?;
    let answer = proto::ListSessionsResponse {
        sessions,
        next_page_token: String::new(),
    };
    output::leases(c.json, &answer.sessions, &answer);
    Ok(())
}

/// Every member of `org_id`, page after page.
pub(super) async fn fetch_members(
    admin: &AdminServiceClient<Authorized>,
    timeout: Duration,
    org_id: &str,
) -> Result<Vec<proto::Member>, Status> {
    all_pages(|page_token| {
        let mut admin = admin.clone();
        let request = proto::ListMembersRequest {
            org_id: org_id.to_owned(),
            page_size: PAGE_SIZE,
            page_token,
        };
        async move {
            let page = within(timeout, admin.list_members(request)).await?;
            Ok((page.members, page.next_page_token))
        }
    })
    .await
}

/// Every API key of `org_id`, page after page.
pub(super) async fn fetch_keys(
    admin: &AdminServiceClient<Authorized>,
    timeout: Duration,
    org_id: &str,
) -> Result<Vec<proto::ApiKey>, Status> {
    all_pages(|page_token| {
        let mut admin = admin.clone();
        let request = proto::ListApiKeysRequest {
            org_id: org_id.to_owned(),
            page_size: PAGE_SIZE,
            page_token,
        };
        async move {
            let page = within(timeout, admin.list_api_keys(request)).await?;
            Ok((page.keys, page.next_page_token))
        }
    })
    .await
}

/// Every live session of `org_id` (of `product`; 0: both), page after page.
pub(super) async fn fetch_sessions(
    admin: &AdminServiceClient<Authorized>,
    timeout: Duration,
    org_id: &str,
    product: i32,
) -> Result<Vec<proto::Lease>, Status> {
    all_pages(|page_token| {
        let mut admin = admin.clone();
        let request = proto::ListSessionsRequest {
            org_id: org_id.to_owned(),
            product,
            page_size: PAGE_SIZE,
            page_token,
        };
        async move {
            let page = within(timeout, admin.list_sessions(request)).await?;
            Ok((page.sessions, page.next_page_token))
        }
    })
    .await
}
