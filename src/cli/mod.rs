//! The `seatbroker` command line: `serve` runs the daemon; the other subcommands are a
//! gRPC client for people at a terminal, one subcommand per RPC, printing tables (or
//! JSON with `--json`).

mod audit;
mod client;
mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{
    AuditLayer, Config, ConfigError, ConfigLayer, LimitsLayer, LogLayer, MetricsLayer, TlsLayer,
    WalLayer,
};
use crate::datadir::LockError;
use crate::server::ServerError;
use crate::telemetry::logging::{self, LogFormat};
use crate::telemetry::metrics;

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
    /// The operator key of a data directory (run where the daemon's files are).
    #[command(subcommand)]
    OperatorKey(OperatorKeyCommand),
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
    /// Load-test a running broker with simulated engines (or the built-in no-op ceiling).
    Bench(crate::loadgen::BenchArgs),
    /// Start a daemon of its own, build N live sessions, SIGKILL it, restart it on the
    /// same data directory, and measure recovery, memory and the reconnect storm.
    BenchRestart(crate::loadgen::RestartArgs),
    /// The no-op gRPC ceiling as its own process (started by `bench`).
    #[command(hide = true)]
    BenchNoopServer {
        /// Seats to enforce, as for the `contention` workload.
        #[arg(long)]
        seats: Option<u32>,
    },
}

/// The daemon's flags. Each one can also come from its environment variable, and
/// from the `--config` file; flags win over the environment, which wins over the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see README: Configuration).
    #[arg(long, env = "SEATBROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration, print it with secrets redacted, and exit (64 if invalid).
    #[arg(long)]
    pub check_config: bool,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "SEATBROKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the log, snapshots, the audit record and the operator key hash
    /// [default: ./data].
    #[arg(long, env = "SEATBROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Lease time-to-live in milliseconds; engines heartbeat every third of it
    /// [default: 30000].
    #[arg(long, env = "SEATBROKER_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u32>,
    /// Allow plaintext gRPC on a non-loopback address.
    #[arg(long, env = "SEATBROKER_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// The daemon's TLS certificate chain (PEM).
    #[arg(long, env = "SEATBROKER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The daemon's TLS private key (PEM).
    #[arg(long, env = "SEATBROKER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to: enables mTLS.
    #[arg(long, env = "SEATBROKER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "SEATBROKER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info,seatbroker=debug` [default: info].
    #[arg(long, env = "SEATBROKER_LOG")]
    pub log_filter: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "SEATBROKER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also export series per organization (their number grows with organizations).
    #[arg(long, env = "SEATBROKER_METRICS_PER_ORG", num_args = 0..=1, default_missing_value = "true")]
    pub metrics_per_org: Option<bool>,
    /// How long in-flight calls may take to finish at shutdown [default: 10000].
    #[arg(long, env = "SEATBROKER_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Largest gRPC request in bytes [default: 1048576].
    #[arg(long, env = "SEATBROKER_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// Concurrent HTTP/2 streams per client connection [default: 128].
    #[arg(long, env = "SEATBROKER_CONCURRENT_STREAMS_PER_CONNECTION_MAX")]
    pub concurrent_streams_per_connection_max: Option<u32>,
    /// HTTP/2 keepalive ping interval [default: 30000].
    #[arg(long, env = "SEATBROKER_KEEPALIVE_INTERVAL_MS")]
    pub keepalive_interval_ms: Option<u64>,
    /// HTTP/2 keepalive ping timeout [default: 10000].
    #[arg(long, env = "SEATBROKER_KEEPALIVE_TIMEOUT_MS")]
    pub keepalive_timeout_ms: Option<u64>,
    /// Live leases of one organization, at most [default: 2000000].
    #[arg(long, env = "SEATBROKER_LEASES_PER_ORG_MAX")]
    pub leases_per_org_max: Option<usize>,
    /// Bytes held in request bodies not yet complete, across the daemon; past it,
    /// calls get RESOURCE_EXHAUSTED [default: 33554432].
    #[arg(long, env = "SEATBROKER_REQUEST_BODIES_BYTES_MAX")]
    pub request_bodies_bytes_max: Option<usize>,
    /// A connection must start its first call (TLS, HTTP/2 preface, headers) within
    /// this many milliseconds, or it is closed [default: 10000].
    #[arg(long, env = "SEATBROKER_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// A connection with no call in flight and none started for a whole period of
    /// this many milliseconds is closed [default: 300000].
    #[arg(long, env = "SEATBROKER_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Audit files rotate at this size [default: 67108864].
    #[arg(long, env = "SEATBROKER_AUDIT_FILE_BYTES_MAX")]
    pub audit_file_bytes_max: Option<u64>,
    /// Audit files kept, at most: the record holds at most this many times the file
    /// size in all, shared fairly by organizations [default: 16].
    #[arg(long, env = "SEATBROKER_AUDIT_FILES_MAX")]
    pub audit_files_max: Option<u32>,
    /// How long a commit group of a busy log may wait for more records, in
    /// microseconds, at most 10000 (0: never): fewer fsyncs under load, each grant
    /// answered up to this much later; an idle log never waits [default: 500].
    #[arg(long, env = "SEATBROKER_COMMIT_DELAY_US")]
    pub commit_delay_us: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum OperatorKeyCommand {
    /// Replace the operator key with a new one, printed once (the old key stops
    /// working). Refused while a daemon runs on the directory: stop it first.
    Rotate {
        /// The daemon's data directory [default: ./data].
        #[arg(long, env = "SEATBROKER_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// The environment variable of the operator key; it has no flag, so that it never
/// shows in a process listing.
pub const OPERATOR_KEY_ENV: &str = "SEATBROKER_OPERATOR_KEY";

impl ServeArgs {
    /// The flags (and, through clap, their environment variables) as a layer.
    fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            insecure: self.insecure,
            operator_key: std::env::var(OPERATOR_KEY_ENV)
                .ok()
                .map(crate::config::SecretText),
            lease_ttl_ms: self.lease_ttl_ms,
            shutdown_grace_ms: self.shutdown_grace_ms,
            tls: TlsLayer {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                client_ca: self.tls_client_ca.clone(),
            },
            log: LogLayer {
                format: self.log_format,
                filter: self.log_filter.clone(),
            },
            metrics: MetricsLayer {
                listen: self.metrics_listen,
                per_org: self.metrics_per_org,
            },
            limits: LimitsLayer {
                request_bytes_max: self.request_bytes_max,
                concurrent_streams_per_connection_max: self.concurrent_streams_per_connection_max,
                keepalive_interval_ms: self.keepalive_interval_ms,
                keepalive_timeout_ms: self.keepalive_timeout_ms,
                leases_per_org_max: self.leases_per_org_max,
                request_bodies_bytes_max: self.request_bodies_bytes_max,
                handshake_timeout_ms: self.handshake_timeout_ms,
                idle_timeout_ms: self.idle_timeout_ms,
            },
            audit: AuditLayer {
                file_bytes_max: self.audit_file_bytes_max,
                files_max: self.audit_files_max,
            },
            wal: WalLayer {
                commit_delay_us: self.commit_delay_us,
            },
        }
    }

    /// Flags and environment over the file over the defaults, checked.
    fn config(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => ConfigLayer::read(path)?,
            None => ConfigLayer::default(),
        };
        let config = Config::resolve(self.layer().or(file))?;
        config.check_files()?;
        Ok(config)
    }
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
    /// CA certificate (PEM) that signed the daemon's certificate, for https:// addresses.
    #[arg(long, global = true, env = "SEATBROKER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a daemon that requires mTLS.
    #[arg(long = "tls-cert", global = true, env = "SEATBROKER_CLIENT_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "tls-key", global = true, env = "SEATBROKER_CLIENT_KEY")]
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
    /// The window of the peak and denial figures, e.g. 15m, 1h, 24h (at most 24h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
    #[command(flatten)]
    pub client: ClientArgs,
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
        #[command(flatten)]
        client: ClientArgs,
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

// Exit codes of `serve` and `operator-key rotate`, from sysexits.h where one fits.

/// Any other failure (recovery, the log, the network).
const EXIT_FAILURE: u8 = 1;
/// A bad configuration or command line (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// The data directory is locked by another live process (EX_TEMPFAIL: not an error
/// of this process or its configuration; the same command succeeds once the holder
/// has stopped, so a supervisor may retry it).
const EXIT_DATA_DIR_LOCKED: u8 = 75;
/// The data directory holds a log but no operator key, and none was given
/// (EX_CONFIG: state found unconfigured; the operator must choose how to proceed).
const EXIT_OPERATOR_KEY_MISSING: u8 = 78;

/// The exit code for a daemon that could not start or run.
fn exit_code(error: &ServerError) -> u8 {
    match error {
        ServerError::Lock(LockError::Held { .. }) => EXIT_DATA_DIR_LOCKED,
        ServerError::OperatorKeyMissing { .. } => EXIT_OPERATOR_KEY_MISSING,
        _ => EXIT_FAILURE,
    }
}

/// Why `run_daemon` failed, and the exit code that says so.
struct DaemonError {
    message: String,
    exit_code: u8,
}

impl From<String> for DaemonError {
    fn from(message: String) -> Self {
        DaemonError {
            message,
            exit_code: EXIT_FAILURE,
        }
    }
}

impl From<ServerError> for DaemonError {
    fn from(error: ServerError) -> Self {
        DaemonError {
            exit_code: exit_code(&error),
            message: error.to_string(),
        }
    }
}

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
        Command::OperatorKey(OperatorKeyCommand::Rotate { data_dir }) => {
            rotate_operator_key(data_dir)
        }
        Command::Bench(args) => bench_exit(runtime.block_on(crate::loadgen::run(args))),
        Command::BenchRestart(args) => {
            bench_exit(runtime.block_on(crate::loadgen::run_restart(args)))
        }
        Command::BenchNoopServer { seats } => {
            bench_exit(runtime.block_on(crate::loadgen::serve_noop(seats)))
        }
        other => runtime.block_on(client::run(other)),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        print!("{}", config.to_toml_redacted());
        return ExitCode::SUCCESS;
    }
    if let Err(error) = logging::init(config.log.format, &config.log.filter) {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match run_daemon(config).await {
        Ok(()) => {
            tracing::info!("seatbroker stopped");
            ExitCode::SUCCESS
        }
        Err(DaemonError { message, exit_code }) => {
            tracing::error!(error = %message, exit_code, "seatbroker failed");
            eprintln!("error: {message}");
            ExitCode::from(exit_code)
        }
    }
}

fn rotate_operator_key(data_dir: Option<PathBuf>) -> ExitCode {
    let data_dir = data_dir.unwrap_or_else(|| crate::config::DATA_DIR_DEFAULT.into());
    match crate::server::rotate_operator_key(&data_dir) {
        Ok(key) => {
            println!(
                "Made a new operator key for {}. It is shown once; only its hash is kept:\n\n    {key}\n",
                data_dir.display()
            );
            println!("The previous operator key no longer works once the daemon starts.");
            if std::env::var_os(OPERATOR_KEY_ENV).is_some() {
                println!(
                    "Note: {OPERATOR_KEY_ENV} is set here; a daemon started with it uses that key, not this one."
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// The exit status of a load generator command (`bench`, `bench-restart`, the no-op
/// server); a report is already printed.
fn bench_exit<T>(result: Result<T, crate::loadgen::LoadgenError>) -> ExitCode {
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// Installs metrics (before the broker registers its handles), prepares, binds, and
/// serves until a stop signal.
async fn run_daemon(mut config: Config) -> Result<(), DaemonError> {
    config.limits.connections_max =
        crate::connections::connections_cap_for_descriptors(config.limits.connections_max);
    tokio::spawn(crate::allocator::collect_freed_memory_forever());
    let metrics_handle = match config.metrics.listen {
        Some(_) => Some(metrics::install().map_err(|e| e.to_string())?),
        None => None,
    };
    let tls = config.tls.is_some();
    // Listen first: while the log is replayed, health answers NOT_SERVING.
    let (listener, addr) = crate::server::bind_early(config.listen)
        .await
        .map_err(|e| e.to_string())?;
    println!("seatbroker listening on {addr}");
    let recovery_config = config.clone();
    let (prepared, listener) = crate::server::serve_health_while(
        listener,
        &recovery_config,
        crate::server::prepare(config),
    )
    .await
    .map_err(|e| e.to_string())?;
    let prepared = prepared?;
    if let Some(key) = &prepared.generated_operator_key {
        println!(
            "Generated the operator key. It is shown once; only its hash is kept:\n\n    {key}\n"
        );
        println!("Use it with: export SEATBROKER_KEY={key}\n");
    }
    let (mut bound, addr) = prepared
        .bind_with(listener)
        .await
        .map_err(|e| e.to_string())?;
    let metrics_addr = bound.metrics_addr();
    if let Some(handle) = metrics_handle {
        bound = bound.export_metrics(handle);
    }
    tracing::info!(
        %addr,
        tls,
        metrics_addr = metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        "seatbroker serving"
    );
    bound
        .serve(crate::shutdown::stop_signal())
        .await
        .map_err(DaemonError::from)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
