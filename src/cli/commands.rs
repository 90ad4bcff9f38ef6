//! The client subcommands of the command line (one per RPC, grouped as `org`, `quota`,
//! `member`, `key`, `license`, `usage`, `audit`, `session`) and the arguments every one
//! of them takes ([`ClientArgs`]: where the daemon is, who is calling, how to print).
//!
//! [`ClientArgs`] is declared once. It is accepted before the subcommand
//! (`seatbroker --json org list`) as arguments of the top-level command, and after it
//! (`seatbroker org list --json`) as global arguments of each client group: not global
//! on the top-level command, since `serve` and `bench` have flags of their own with the
//! same names (`--tls-cert`, `--addr`, `--json`). Clap merges the two places into one
//! value, the one given on the command line winning over the environment and defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Subcommand, ValueEnum};

use super::Cli;
use super::time::{Expiry, parse_expiry};

// Where the daemon is, who is calling, and how to print the answer. (A plain comment:
// clap would show a doc comment here as the description of every group it is added to.)
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Daemon address; several, comma-separated, for the nodes of a cluster: each is
    /// tried in turn until one answers, and a standby's answer naming the leader is
    /// followed to it.
    #[arg(
        long,
        env = "SEATBROKER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// API key (a member's `sbk_...` key, or the operator key).
    #[arg(long, env = "SEATBROKER_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// CA certificate (PEM) that signed the daemon's certificate, for https:// addresses.
    #[arg(long, env = "SEATBROKER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a daemon that requires mTLS.
    #[arg(long = "tls-cert", env = "SEATBROKER_CLIENT_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "tls-key", env = "SEATBROKER_CLIENT_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How long to wait for the connection to the daemon (TCP and TLS), e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to wait for each call's answer, e.g. 30s (a listing makes one call a page).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl ClientArgs {
    /// The addresses of `--addr`, in order (empty when it names none).
    pub fn addrs(&self) -> Vec<String> {
        self.addr
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn tls_files(&self) -> crate::tls::ClientTlsFiles {
        crate::tls::ClientTlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }
}

/// The command tree: [`Cli`] with [`ClientArgs`] added, as global arguments, to each
/// client group (see the module's doc).
pub fn command_tree() -> clap::Command {
    let mut tree = Cli::command();
    for group in client_group_names() {
        tree = tree.mut_subcommand(group, |group| {
            let mut group = ClientArgs::augment_args(group);
            for arg in client_args().get_arguments() {
                group = group.mut_arg(arg.get_id(), |arg| arg.global(true));
            }
            group
        });
    }
    tree
}

/// [`ClientArgs`] alone, to list its arguments.
fn client_args() -> clap::Command {
    ClientArgs::augment_args(clap::Command::new("client"))
}

fn client_group_names() -> Vec<String> {
    let groups = ClientCommand::augment_subcommands(clap::Command::new("client"));
    let names = groups
        .get_subcommands()
        .map(|group| group.get_name().to_owned());
    names.collect()
}

/// Parses the process's arguments with [`command_tree`]; exits on a usage error (2) or
/// for `--help` and `--version` (0), as clap does. A client argument given before a
/// subcommand that is not a client (`seatbroker --json serve`) is a usage error rather
/// than silently ignored.
pub fn parse() -> Cli {
    let matches = command_tree()
        .try_get_matches()
        .unwrap_or_else(|error| super::exit_refused(error));
    if let Some((name, _)) = matches.subcommand()
        && !client_group_names().iter().any(|group| group == name)
    {
        for arg in client_args().get_arguments() {
            let given = matches.value_source(arg.get_id().as_str());
            if given == Some(clap::parser::ValueSource::CommandLine) {
                let flag = arg.get_long().unwrap_or_default();
                let message =
                    format!("--{flag} is an argument of the client commands, not of `{name}`");
                command_tree()
                    .error(clap::error::ErrorKind::ArgumentConflict, message)
                    .exit();
            }
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The subcommands that are a client of a running daemon.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Organizations (operator).
    #[command(subcommand)]
    Org(OrgCommand),
    /// Quotas (operator).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Members and roles (Owner or Admin).
    #[command(subcommand)]
    Member(MemberCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// License assignments (Owner or Admin).
    #[command(subcommand)]
    License(LicenseCommand),
    /// Usage per product: quota, assigned, active, peak, denials, and over a window.
    Usage(UsageArgs),
    /// The audit record (Owner or Admin).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Sessions: what an engine does, and what an admin sees.
    #[command(subcommand)]
    Session(SessionCommand),
    /// What each address of --addr is: serving, a standby naming its leader, starting,
    /// draining or unreachable, with the gRPC health of the server and of each broker
    /// service. Needs no key. Exits 0 when an address serves, 75 when none does.
    Status,
    /// Hold a seat while a command runs: acquire (waiting in the queue up to --wait),
    /// run COMMAND with the lease in its environment, keep the seat alive, release it
    /// when COMMAND exits. Exits with COMMAND's status; 20 when no seat is granted, 21
    /// when the broker ended the seat and 22 when it expired while COMMAND ran.
    Run(RunArgs),
}

/// `seatbroker run`: what to acquire, and the command to run while it is held.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The product to take a seat or session of.
    #[arg(long, value_enum)]
    pub product: ProductArg,
    /// How long to wait in the broker's queue when the quota is full, e.g. 10m
    /// [default: do not wait].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// The engine's own id (an acquire with the id of a live lease gets it back)
    /// [default: a random one].
    #[arg(long)]
    pub engine_id: Option<String>,
    /// The machine the command runs on, shown to admins [default: this host's name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// A note shown to admins (e.g. the job).
    #[arg(long, default_value = "")]
    pub label: String,
    /// When the seat is lost: how long COMMAND has to exit after SIGTERM before it gets
    /// SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

/// A product: `kse` (named seats) or `kre` (parallel sessions).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProductArg {
    /// Named KSE seats.
    Kse,
    /// Parallel KRE sessions.
    Kre,
}

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Administers the organization, and alone grants, changes or removes the Owner role.
    Owner,
    /// Administers members, licenses, keys, sessions and the audit record.
    Admin,
    /// Runs sessions and makes API keys for themself.
    Member,
}

/// A new organization's quota, as `org create` takes it.
#[derive(Debug, Args, Clone)]
pub struct QuotaArgs {
    /// Named KSE seats.
    #[arg(long, default_value_t = 0)]
    pub kse: u32,
    /// Parallel KRE sessions.
    #[arg(long, default_value_t = 0)]
    pub kre: u32,
    /// License expiry: a date (2027-06-30, midnight UTC), RFC 3339, a duration from now
    /// (+365d), Unix ms, or `none` [default: none].
    #[arg(
        long,
        alias = "expires-at-unix-ms",
        allow_hyphen_values = true,
        value_parser = parse_expiry
    )]
    pub expires: Option<Expiry>,
    /// Accept an expiry in the past (the licenses grant nothing from the start).
    #[arg(long)]
    pub force: bool,
}

/// The quota fields `quota set` changes: only those given, at least one.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = true)]
pub struct QuotaChangeArgs {
    /// New number of named KSE seats.
    #[arg(long)]
    pub kse: Option<u32>,
    /// New number of parallel KRE sessions.
    #[arg(long)]
    pub kre: Option<u32>,
    /// New license expiry: a date (2027-06-30, midnight UTC), RFC 3339, a duration from
    /// now (+365d), Unix ms, or `none` to remove it.
    #[arg(
        long,
        alias = "expires-at-unix-ms",
        allow_hyphen_values = true,
        value_parser = parse_expiry
    )]
    pub expires: Option<Expiry>,
}

/// The flags of a command that ends or removes something (README: destructive
/// actions). On a terminal the command shows what it will end and asks first; when
/// standard input is not a terminal it proceeds as it always did, so scripts keep
/// working.
#[derive(Debug, Args, Clone, Copy)]
pub struct DestructiveArgs {
    /// Print what the command would end or remove (with --json, as JSON) and change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum OrgCommand {
    /// Create an organization with its quota and its first owner.
    Create {
        /// The organization's id, as every other command names it (e.g. `acme`).
        org_id: String,
        /// The display name (e.g. "Acme Corp").
        #[arg(long)]
        name: String,
        /// The first member, with the Owner role.
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// List every organization with its quota and member count.
    List,
    /// Show one organization (the operator, or its Owner or Admin).
    Show {
        /// The organization.
        org_id: String,
    },
    /// Change an organization's display name (operator).
    Rename {
        /// The organization.
        org_id: String,
        /// The new display name (e.g. "Acme Corporation").
        #[arg(long)]
        name: String,
    },
    /// Delete an organization for good (operator): ends its sessions, revokes its API
    /// keys and removes its members and licenses; its audit events are kept, and its
    /// id may be created again.
    Delete {
        /// The organization.
        org_id: String,
        #[command(flatten)]
        destructive: DestructiveArgs,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCommand {
    /// Change an organization's seats, sessions or expiry; what is not given is kept.
    /// Prints the quota before and after.
    Set {
        /// The organization.
        org_id: String,
        #[command(flatten)]
        change: QuotaChangeArgs,
        /// Accept an expiry in the past (the licenses stop granting at once).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum MemberCommand {
    /// Add a member to an organization.
    Add {
        /// The organization.
        org_id: String,
        /// The member's email.
        email: String,
        /// The member's role.
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
    },
    /// Remove a member: revokes their API keys and ends their sessions.
    Remove {
        /// The organization.
        org_id: String,
        /// The member's email.
        email: String,
        #[command(flatten)]
        destructive: DestructiveArgs,
    },
    /// Change a member's role.
    Role {
        /// The organization.
        org_id: String,
        /// The member's email.
        email: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// List an organization's members and their roles.
    List {
        /// The organization.
        org_id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; the key is printed once.
    Create {
        /// The organization.
        org_id: String,
        /// Whose key (default: the caller).
        #[arg(long)]
        email: Option<String>,
        /// A note to tell keys apart (e.g. the machine that uses it).
        #[arg(long, default_value = "")]
        label: String,
        /// Bind the key to this client certificate subject (mTLS), as the daemon logs
        /// it (e.g. "CN=engine-7, O=Acme"): calls with the key over any other
        /// connection are refused. Fixed for the key's life.
        #[arg(long, value_name = "SUBJECT")]
        client_cert_subject: Option<String>,
    },
    /// List an organization's API keys (ids and labels, never the keys).
    List {
        /// The organization.
        org_id: String,
    },
    /// Revoke an API key: it stops working at once.
    Revoke {
        /// The organization.
        org_id: String,
        /// The key's id, as `key list` shows it.
        key_id: String,
        #[command(flatten)]
        destructive: DestructiveArgs,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum LicenseCommand {
    /// Assign a product to one or more members (all or nothing).
    Assign {
        /// The organization.
        org_id: String,
        /// The product to assign.
        #[arg(value_enum)]
        product: ProductArg,
        /// The members' emails.
        #[arg(required = true)]
        emails: Vec<String>,
    },
    /// Take a product from one or more members; their sessions of it end.
    Unassign {
        /// The organization.
        org_id: String,
        /// The product to take back.
        #[arg(value_enum)]
        product: ProductArg,
        /// The members' emails.
        #[arg(required = true)]
        emails: Vec<String>,
        #[command(flatten)]
        destructive: DestructiveArgs,
    },
    /// Move a product from one member to another; the first one's sessions end.
    Transfer {
        /// The organization.
        org_id: String,
        /// The product to move.
        #[arg(value_enum)]
        product: ProductArg,
        /// The email of the member who holds it.
        from: String,
        /// The email of the member who gets it.
        to: String,
        #[command(flatten)]
        destructive: DestructiveArgs,
    },
    /// List the members a product is assigned to, and the quota.
    List {
        /// The organization.
        org_id: String,
        /// The product.
        #[arg(value_enum)]
        product: ProductArg,
    },
}

/// `usage`: one organization's figures per product.
#[derive(Debug, Clone, Args)]
pub struct UsageArgs {
    /// The organization.
    pub org_id: String,
    /// The window of the peak and denial figures, e.g. 15m, 1h, 24h (at most 24h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, conflicts_with = "series")]
    pub window: Duration,
    /// Instead of the figures now, each product's usage over the last hour (a point a
    /// minute), day (ten minutes) or week (an hour): the peak sessions against the
    /// quota, the grants and the refusals, as the console's Usage page charts them.
    #[arg(long, value_enum)]
    pub series: Option<SeriesRange>,
    /// With --series: only this product's series (both when left out).
    #[arg(long, value_enum, requires = "series")]
    pub product: Option<ProductArg>,
}

/// The range of `usage --series`; the daemon picks the resolution.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SeriesRange {
    /// The last hour, a point a minute.
    Hour,
    /// The last day, a point every ten minutes.
    Day,
    /// The last week, a point an hour.
    Week,
}

/// How `audit export` writes events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Comma-separated values with a header line, for spreadsheets.
    Csv,
    /// One JSON object a line.
    Jsonl,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Write an organization's audit events to standard output, oldest first.
    Export {
        /// The organization.
        org_id: String,
        /// Start of the range, inclusive: RFC 3339 (2026-11-29T10:00:00Z), a date
        /// (2026-11-29, midnight UTC), a duration from now (-7d) or Unix ms.
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// End of the range, exclusive, in the same forms as --from [default: now].
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// The output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SessionCommand {
    /// Acquire a session with a member's key (as an engine would).
    Acquire {
        /// The product to take a seat or session of.
        #[arg(value_enum)]
        product: ProductArg,
        /// The engine's own id, stable across its restarts.
        #[arg(long)]
        engine_id: String,
        /// The machine the engine runs on, shown to admins.
        #[arg(long, default_value = "")]
        hostname: String,
        /// A note shown to admins (e.g. the job).
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Extend a session, as an engine does every heartbeat interval.
    Heartbeat {
        /// The lease id `session acquire` printed.
        lease_id: String,
        /// The lease's generation, as `session acquire` printed it.
        generation: u64,
    },
    /// End a session and free its seat.
    Release {
        /// The lease id `session acquire` printed.
        lease_id: String,
        /// The lease's generation, as `session acquire` printed it.
        generation: u64,
    },
    /// List an organization's live sessions (Owner or Admin).
    List {
        /// The organization.
        org_id: String,
        /// Only the sessions of this product.
        #[arg(long, value_enum)]
        product: Option<ProductArg>,
    },
    /// End another member's session (Owner or Admin).
    Terminate {
        /// The organization.
        org_id: String,
        /// The lease id, as `session list` shows it.
        lease_id: String,
        #[command(flatten)]
        destructive: DestructiveArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subcommands and arguments under `command` (its path in `path`) that have no
    /// help text of their own; hidden ones are left out.
    fn without_help(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments().filter(|arg| !arg.is_hide_set()) {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} <{}>", arg.get_id()));
            }
        }
        for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            without_help(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_subcommand_and_argument_has_its_own_help() {
        let mut tree = command_tree();
        tree.build();
        let mut missing = Vec::new();
        without_help(&tree, "seatbroker", &mut missing);
        assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn no_group_takes_the_client_arguments_description_as_its_own() {
        let tree = command_tree();
        let abouts: Vec<String> = tree
            .get_subcommands()
            .filter_map(|sub| sub.get_about().map(|about| about.to_string()))
            .collect();
        let mut unique = abouts.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), abouts.len(), "{abouts:#?}");
    }
}
