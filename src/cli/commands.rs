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

use clap::{Args, CommandFactory, FromArgMatches, Subcommand, ValueEnum};

use super::Cli;

// Where the daemon is, who is calling, and how to print the answer. (A plain comment:
// clap would show a doc comment here as the description of every group it is added to.)
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Daemon address.
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
}

impl ClientArgs {
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
    let matches = command_tree().get_matches();
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
#[derive(Debug, Subcommand)]
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProductArg {
    Kse,
    Kre,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Owner,
    Admin,
    Member,
}

#[derive(Debug, Args, Clone)]
pub struct QuotaArgs {
    /// Named KSE seats.
    #[arg(long, default_value_t = 0)]
    pub kse: u32,
    /// Parallel KRE sessions.
    #[arg(long, default_value_t = 0)]
    pub kre: u32,
    /// License expiry, Unix milliseconds (0: none).
    #[arg(long, default_value_t = 0)]
    pub expires_at_unix_ms: i64,
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    Create {
        org_id: String,
        #[arg(long)]
        name: String,
        /// The first member, with the Owner role.
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    Set {
        org_id: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    Add {
        org_id: String,
        email: String,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
    },
    Remove {
        org_id: String,
        email: String,
    },
    Role {
        org_id: String,
        email: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
    List {
        org_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; the key is printed once.
    Create {
        org_id: String,
        /// Whose key (default: the caller).
        #[arg(long)]
        email: Option<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    List {
        org_id: String,
    },
    Revoke {
        org_id: String,
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// Assign a product to one or more members (all or nothing).
    Assign {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
        #[arg(required = true)]
        emails: Vec<String>,
    },
    Unassign {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
        #[arg(required = true)]
        emails: Vec<String>,
    },
    Transfer {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
        from: String,
        to: String,
    },
    List {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
    },
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    pub org_id: String,
    /// The window of the peak and denial figures, e.g. 15m, 1h, 24h (at most 24h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write an organization's audit events to standard output, oldest first.
    Export {
        org_id: String,
        /// Start of the range, inclusive: RFC 3339 (2026-11-29T10:00:00Z) or Unix ms.
        #[arg(long)]
        from: Option<String>,
        /// End of the range, exclusive: RFC 3339 or Unix ms [default: now].
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Acquire a session with a member's key (as an engine would).
    Acquire {
        #[arg(value_enum)]
        product: ProductArg,
        #[arg(long)]
        engine_id: String,
        #[arg(long, default_value = "")]
        hostname: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    Heartbeat {
        lease_id: String,
        generation: u64,
    },
    Release {
        lease_id: String,
        generation: u64,
    },
    /// List an organization's live sessions (Owner or Admin).
    List {
        org_id: String,
        #[arg(long, value_enum)]
        product: Option<ProductArg>,
    },
    Terminate {
        org_id: String,
        lease_id: String,
    },
}
