//! Destructive commands say what they will do: the [`Plan`] of what one would end or
//! remove (sessions, API keys, members), computed on the client from the listing RPCs
//! as the caller may see them, printed by `--dry-run` (and nothing changes) or shown
//! before the confirmation asked on a terminal ([`go_ahead`]). When standard input is
//! not a terminal, or with `--yes`, the command proceeds without a listing, as scripts
//! expect.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use serde::Serialize;

use super::client::{fetch_keys, fetch_members, fetch_sessions};
use super::commands::DestructiveArgs;
use super::failure::Failure;
use super::output::{self, Table};
use crate::client::Authorized;
use crate::domain::Email;
use crate::proto::{self, admin_service_client::AdminServiceClient};

/// A destructive command, as its plan is computed.
pub enum Destructive<'a> {
    MemberRemove {
        org_id: &'a str,
        email: &'a str,
    },
    LicenseUnassign {
        org_id: &'a str,
        product: i32,
        emails: &'a [String],
    },
    LicenseTransfer {
        org_id: &'a str,
        product: i32,
        from: &'a str,
    },
    SessionTerminate {
        org_id: &'a str,
        lease_id: &'a str,
    },
    KeyRevoke {
        org_id: &'a str,
        key_id: &'a str,
    },
    OrgDelete {
        org_id: &'a str,
    },
}

/// What a destructive command would end or remove; its JSON is what `--dry-run
/// --json` prints.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// Always true: nothing was changed.
    pub dry_run: bool,
    /// The command, as typed (`member remove`).
    pub command: &'static str,
    pub org_id: String,
    /// The sessions that would end.
    pub sessions_ending: Vec<proto::Lease>,
    /// The API keys that would be revoked.
    pub keys_revoked: Vec<proto::ApiKey>,
    /// The members that would be removed.
    pub members_removed: Vec<proto::Member>,
}

impl Plan {
    fn new(command: &'static str, org_id: &str) -> Self {
        Plan {
            dry_run: true,
            command,
            org_id: org_id.to_owned(),
            sessions_ending: Vec::new(),
            keys_revoked: Vec::new(),
            members_removed: Vec::new(),
        }
    }

    /// One line: `member remove in acme would end 2 sessions, revoke 1 API key`.
    pub fn summary(&self) -> String {
        let counts = [
            (self.sessions_ending.len(), "end", "session"),
            (self.keys_revoked.len(), "revoke", "API key"),
            (self.members_removed.len(), "remove", "member"),
        ];
        let parts: Vec<String> = counts
            .iter()
            .filter(|(count, ..)| *count > 0)
            .map(|(count, verb, noun)| {
                let plural = if *count == 1 { "" } else { "s" };
                format!("{verb} {count} {noun}{plural}")
            })
            .collect();
        let what = match parts.is_empty() {
            true => "end no session and revoke no key".to_owned(),
            false => parts.join(", "),
        };
        format!("{} in {} would {what}", self.command, self.org_id)
    }

    /// The summary and a table of each kind of item that would end.
    fn text(&self) -> String {
        let mut text = self.summary();
        if !self.sessions_ending.is_empty() {
            let mut table = Table::new(&["LEASE", "PRODUCT", "EMAIL", "ENGINE", "HOST"]);
            for lease in &self.sessions_ending {
                table.row(vec![
                    lease.lease_id.clone(),
                    output::product_name(lease.product).into(),
                    lease.email.clone(),
                    lease.engine_id.clone(),
                    lease.hostname.clone(),
                ]);
            }
            text.push_str(&format!("\n\nsessions that would end:\n{}", table.render()));
        }
        if !self.keys_revoked.is_empty() {
            let mut table = Table::new(&["KEY ID", "EMAIL", "LABEL"]);
            for key in &self.keys_revoked {
                table.row(vec![
                    key.key_id.clone(),
                    key.email.clone(),
                    key.label.clone(),
                ]);
            }
            text.push_str(&format!(
                "\n\nAPI keys that would be revoked:\n{}",
                table.render()
            ));
        }
        if !self.members_removed.is_empty() {
            let mut table = Table::new(&["EMAIL", "ROLE"]);
            for member in &self.members_removed {
                table.row(vec![
                    member.email.clone(),
                    output::role_name(member.role).into(),
                ]);
            }
            text.push_str(&format!(
                "\n\nmembers that would be removed:\n{}",
                table.render()
            ));
        }
        text
    }
}

/// An email as the daemon stores it (normalized), to match listings against what was
/// typed; as typed when it does not parse (the daemon will refuse it).
fn normalized(email: &str) -> String {
    Email::parse(email).map_or_else(|_| email.to_owned(), |email| email.to_string())
}

/// Lists what `command` would end or remove, with the listing RPCs.
pub async fn plan(
    admin: &AdminServiceClient<Authorized>,
    timeout: Duration,
    command: Destructive<'_>,
) -> Result<Plan, Failure> {
    let plan = match command {
        Destructive::MemberRemove { org_id, email } => {
            let email = normalized(email);
            let mut plan = Plan::new("member remove", org_id);
            plan.sessions_ending = fetch_sessions(admin, timeout, org_id, 0).await?;
            plan.sessions_ending.retain(|lease| lease.email == email);
            plan.keys_revoked = fetch_keys(admin, timeout, org_id).await?;
            plan.keys_revoked.retain(|key| key.email == email);
            plan
        }
        Destructive::LicenseUnassign {
            org_id,
            product,
            emails,
        } => {
            let emails: Vec<String> = emails.iter().map(|email| normalized(email)).collect();
            let mut plan = Plan::new("license unassign", org_id);
            plan.sessions_ending = fetch_sessions(admin, timeout, org_id, product).await?;
            plan.sessions_ending
                .retain(|lease| emails.contains(&lease.email));
            plan
        }
        Destructive::LicenseTransfer {
            org_id,
            product,
            from,
        } => {
            let from = normalized(from);
            let mut plan = Plan::new("license transfer", org_id);
            plan.sessions_ending = fetch_sessions(admin, timeout, org_id, product).await?;
            plan.sessions_ending.retain(|lease| lease.email == from);
            plan
        }
        Destructive::SessionTerminate { org_id, lease_id } => {
            let mut plan = Plan::new("session terminate", org_id);
            plan.sessions_ending = fetch_sessions(admin, timeout, org_id, 0).await?;
            plan.sessions_ending
                .retain(|lease| lease.lease_id == lease_id);
            plan
        }
        Destructive::KeyRevoke { org_id, key_id } => {
            let mut plan = Plan::new("key revoke", org_id);
            plan.keys_revoked = fetch_keys(admin, timeout, org_id).await?;
            plan.keys_revoked.retain(|key| key.key_id == key_id);
            plan
        }
        Destructive::OrgDelete { org_id } => {
            let mut plan = Plan::new("org delete", org_id);
            plan.sessions_ending = fetch_sessions(admin, timeout, org_id, 0).await?;
            plan.keys_revoked = fetch_keys(admin, timeout, org_id).await?;
            plan.members_removed = fetch_members(admin, timeout, org_id).await?;
            plan
        }
    };
    Ok(plan)
}

/// Whether a destructive command goes ahead. With `--dry-run` it prints the plan (as
/// JSON with `--json`) and does not. On a terminal without `--yes` it shows the plan
/// on standard error and asks; an answer other than yes is [`Failure::Declined`].
/// Otherwise (a script: standard input not a terminal, or `--yes`) it goes ahead
/// without listing anything.
pub async fn go_ahead(
    admin: &AdminServiceClient<Authorized>,
    timeout: Duration,
    flags: DestructiveArgs,
    json: bool,
    command: Destructive<'_>,
) -> Result<bool, Failure> {
    let asks = !flags.yes && std::io::stdin().is_terminal();
    if !flags.dry_run && !asks {
        return Ok(true);
    }
    let plan = plan(admin, timeout, command).await?;
    if flags.dry_run {
        output::message(json, &plan, plan.text());
        return Ok(false);
    }
    eprint!("{}\n\nProceed? [y/N] ", plan.text());
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|error| Failure::Usage(format!("cannot read the answer: {error}")))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(true),
        _ => Err(Failure::Declined),
    }
}
