//! The `seatbroker` command line: `serve` runs the daemon; the other subcommands are a
//! gRPC client for people at a terminal, one subcommand per RPC, printing tables (or
//! JSON with `--json`).

mod client;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::limits;

#[derive(Debug, Parser)]
#[command(
    name = "seatbroker",
    version,
    about = "Floating-license session broker: named KSE seats and concurrent KRE sessions over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
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
    /// Usage per product: quota, assigned, active, peak, denials.
    Usage(UsageArgs),
    /// Sessions: what an engine does, and what an admin sees.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Load-test a running broker with simulated engines (or the built-in no-op ceiling).
    Bench(crate::loadgen::BenchArgs),
    /// The no-op gRPC ceiling as its own process (started by `bench`).
    #[command(hide = true)]
    BenchNoopServer {
        /// Seats to enforce, as for the `contention` workload.
        #[arg(long)]
        seats: Option<u32>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SEATBROKER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: std::net::SocketAddr,
    /// Directory for the log, snapshots and the operator key hash.
    #[arg(long, env = "SEATBROKER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Lease time-to-live in milliseconds; engines heartbeat every third of it.
    #[arg(long, env = "SEATBROKER_LEASE_TTL_MS", default_value_t = limits::LEASE_TTL_MS_DEFAULT)]
    pub lease_ttl_ms: u32,
}

/// Where the daemon is and who is calling.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Daemon address.
    #[arg(
        long,
        global = true,
        env = "SEATBROKER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// API key (a member's `sbk_...` key, or the operator key).
    #[arg(long, global = true, env = "SEATBROKER_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    Set {
        org_id: String,
        #[command(flatten)]
        quota: QuotaArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    Add {
        org_id: String,
        email: String,
        #[arg(long, value_enum, default_value = "member")]
        role: RoleArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    Remove {
        org_id: String,
        email: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Role {
        org_id: String,
        email: String,
        #[arg(value_enum)]
        role: RoleArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        org_id: String,
        #[command(flatten)]
        client: ClientArgs,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        org_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    Revoke {
        org_id: String,
        key_id: String,
        #[command(flatten)]
        client: ClientArgs,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    Unassign {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
        #[arg(required = true)]
        emails: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    Transfer {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
        from: String,
        to: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    List {
        org_id: String,
        #[arg(value_enum)]
        product: ProductArg,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    pub org_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
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
        #[command(flatten)]
        client: ClientArgs,
    },
    Heartbeat {
        lease_id: String,
        generation: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    Release {
        lease_id: String,
        generation: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List an organization's live sessions (Owner or Admin).
    List {
        org_id: String,
        #[arg(long, value_enum)]
        product: Option<ProductArg>,
        #[command(flatten)]
        client: ClientArgs,
    },
    Terminate {
        org_id: String,
        lease_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Exit code for a bad configuration (EX_USAGE / EX_CONFIG family).
const EXIT_CONFIG: u8 = 64;
const EXIT_FAILURE: u8 = 1;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => runtime.block_on(bench(args)),
        Command::BenchNoopServer { seats } => {
            match runtime.block_on(crate::loadgen::serve_noop(seats)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(error.exit_code())
                }
            }
        }
        other => runtime.block_on(client::run(other)),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_tracing();
    let operator_key = match std::env::var("SEATBROKER_OPERATOR_KEY") {
        Ok(text) => crate::server::OperatorKeySource::Given(text),
        Err(_) => crate::server::OperatorKeySource::DataDir,
    };
    let config = crate::server::ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        lease_ttl: std::time::Duration::from_millis(u64::from(args.lease_ttl_ms)),
        operator_key,
    };
    let prepared = match crate::server::prepare(config).await {
        Ok(prepared) => prepared,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(key) = &prepared.generated_operator_key {
        println!(
            "Generated the operator key. It is shown once; only its hash is kept:\n\n    {key}\n"
        );
        println!("Use it with: export SEATBROKER_KEY={key}\n");
    }
    let (bound, addr) = match prepared.bind().await {
        Ok(bound) => bound,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    tracing::info!(%addr, "seatbroker serving");
    // One plain line on stdout for scripts and supervisors (the port may have been 0).
    println!("seatbroker listening on {addr}");
    match bound.serve(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("seatbroker stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn bench(args: crate::loadgen::BenchArgs) -> ExitCode {
    match crate::loadgen::run(args).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEATBROKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received; finishing in-flight calls");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
