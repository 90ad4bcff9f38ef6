//! The `seatbroker` command line: `serve` runs the daemon; the other subcommands are a
//! gRPC client for people at a terminal, one subcommand per RPC, printing tables (or
//! JSON with `--json`).

mod audit;
mod client;
mod commands;
mod failure;
mod output;
mod plan;
mod run;
mod status;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use commands::{ClientArgs, ClientCommand, command_tree};

use crate::auth::OperatorKeyError;
use crate::config::{CommandLine, Config, DATA_DIR_DEFAULT, OPERATOR_KEY_ENV};
use crate::datadir::LockError;
use crate::server::{ServerError, Started};
use crate::telemetry::logging;

#[derive(Debug, Parser)]
#[command(
    name = "seatbroker",
    version,
    about = "Floating-license session broker: named KSE seats and concurrent KRE sessions over gRPC"
)]
pub struct Cli {
    /// The client arguments given before the subcommand, merged with those after it.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the daemon.
    Serve(ServeArgs),
    /// The operator key of a data directory (run where the daemon's files are).
    #[command(subcommand)]
    OperatorKey(OperatorKeyCommand),
    /// The client of a running daemon: one subcommand per RPC.
    #[command(flatten)]
    Client(ClientCommand),
    /// Load-test a running broker with simulated engines (or the built-in no-op ceiling).
    Bench(crate::loadgen::BenchArgs),
    /// Start a daemon of its own, build N live sessions, SIGKILL it, restart it on the
    /// same data directory, and measure recovery, memory and the reconnect storm.
    BenchRestart(crate::loadgen::RestartArgs),
    /// Print a shell completion script, e.g. `seatbroker completions bash >
    /// /etc/bash_completion.d/seatbroker`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// The no-op gRPC ceiling as its own process (started by `bench`).
    #[command(hide = true)]
    BenchNoopServer {
        /// Seats to enforce, as for the `contention` workload.
        #[arg(long)]
        seats: Option<u32>,
    },
}

/// The daemon's command line: the configuration file, `--check-config`, and every
/// setting (`config::Settings`); each setting can also come from its environment
/// variable and from the file: flags win over the environment, which wins over the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see README: Configuration).
    #[arg(long, env = "SEATBROKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the configuration, print it with secrets redacted, and exit (64 if invalid).
    #[arg(long)]
    pub check_config: bool,
    #[command(flatten)]
    pub settings: CommandLine,
}

/// A shell `seatbroker completions` writes a script for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    /// Bash: source the script, or put it in a bash-completion directory.
    Bash,
    /// Zsh: put the script, named `_seatbroker`, in a directory of `$fpath`.
    Zsh,
    /// Fish: put the script in `~/.config/fish/completions/seatbroker.fish`.
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum OperatorKeyCommand {
    /// Replace the operator key with a new one, printed once (the old key stops
    /// working). Refused while a daemon runs on the directory: stop it first.
    Rotate {
        /// The daemon's data directory.
        #[arg(long, env = "SEATBROKER_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
        data_dir: PathBuf,
    },
}

// Exit codes of `serve` and `operator-key rotate`, from sysexits.h where one fits.

/// Any other failure (recovery, the log, the data directory's files, the network).
const EXIT_FAILURE: u8 = 1;
/// A bad configuration or command line (EX_USAGE), found when it is loaded or when
/// the daemon binds: an address this host cannot listen on, TLS files that do not
/// make a server configuration.
const EXIT_CONFIG: u8 = 64;
/// Another live process holds what the daemon needs: the data directory's lock, or
/// a listen address (EX_TEMPFAIL: not an error of this process or its configuration;
/// the same command succeeds once the holder has stopped, so a supervisor may retry).
const EXIT_IN_USE: u8 = 75;
/// The data directory holds a log but no operator key, and none was given
/// (EX_CONFIG: state found unconfigured; the operator must choose how to proceed).
const EXIT_OPERATOR_KEY_MISSING: u8 = 78;

/// A cluster's leader that lost its leadership (cut from etcd, or deposed) and
/// stopped (EX_TEMPFAIL): its supervisor restarts it, and it rejoins as a standby.
const EXIT_LEADERSHIP_LOST: u8 = 75;

/// The exit code for a daemon that could not start or run.
fn exit_code(error: &ServerError) -> u8 {
    match error {
        ServerError::Lock(LockError::Held { .. }) => EXIT_IN_USE,
        ServerError::OperatorKey(OperatorKeyError::Lock(LockError::Held { .. })) => EXIT_IN_USE,
        ServerError::OperatorKey(OperatorKeyError::Missing { .. }) => EXIT_OPERATOR_KEY_MISSING,
        ServerError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
            EXIT_IN_USE
        }
        ServerError::Bind { .. } | ServerError::Tls(_) | ServerError::EtcdRefused(_) => EXIT_CONFIG,
        ServerError::DataDir { .. }
        | ServerError::OperatorKey(_)
        | ServerError::Lock(_)
        | ServerError::Recovery(_)
        | ServerError::Metrics(_)
        | ServerError::Audit(_)
        | ServerError::Reflection(_)
        | ServerError::Close(_)
        | ServerError::Transport(_)
        | ServerError::Task(_)
        | ServerError::Cluster(_) => EXIT_FAILURE,
        ServerError::LeadershipLost(_) => EXIT_LEADERSHIP_LOST,
    }
}

/// Why `run_daemon` failed, and the exit code that says so.
struct DaemonError {
    message: String,
    exit_code: u8,
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
    let cli = commands::parse();
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
        CliCommand::Serve(args) => runtime.block_on(serve(args)),
        CliCommand::OperatorKey(OperatorKeyCommand::Rotate { data_dir }) => {
            rotate_operator_key(data_dir)
        }
        CliCommand::Bench(args) => bench_exit(runtime.block_on(crate::loadgen::run(args))),
        CliCommand::BenchRestart(args) => {
            bench_exit(runtime.block_on(crate::loadgen::run_restart(args)))
        }
        CliCommand::BenchNoopServer { seats } => {
            bench_exit(runtime.block_on(crate::loadgen::serve_noop(seats)))
        }
        CliCommand::Completions { shell } => print_completions(shell),
        CliCommand::Client(command) => runtime.block_on(client::run(cli.client, command)),
    }
}

/// Writes the completion script of the whole command tree ([`command_tree`], client
/// arguments included) for `shell` to standard output.
fn print_completions(shell: CompletionShell) -> ExitCode {
    let generator = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut tree = command_tree();
    clap_complete::generate(generator, &mut tree, "seatbroker", &mut std::io::stdout());
    ExitCode::SUCCESS
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args.settings, args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        if let Err(code) = inspect_tls_files(&config) {
            return code;
        }
        print!("{}", config.to_toml_redacted());
        return ExitCode::SUCCESS;
    }
    let log = &config.settings().log;
    if let Err(error) = logging::init(log.format, &log.filter) {
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

/// `--check-config`'s look at the TLS certificates (validity window, the listen host,
/// a CA as client CA): warnings on standard error, errors fail the check.
fn inspect_tls_files(config: &Config) -> Result<(), ExitCode> {
    let Some(files) = config.tls() else {
        return Ok(());
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    let found = match crate::tls::inspect_server_files(files, config.settings().listen.ip(), now) {
        Ok(found) => found,
        Err(error) => {
            eprintln!("error: configuration: {error}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    for warning in &found.warnings {
        eprintln!("warning: {warning}");
    }
    for error in &found.errors {
        eprintln!("error: configuration: {error}");
    }
    if found.errors.is_empty() {
        Ok(())
    } else {
        Err(ExitCode::from(EXIT_CONFIG))
    }
}

/// The environment variable an invalid value came from, when the flag it stands for
/// was not on the command line: clap's message names only the flag.
/// Exits for a command line clap refused; when the bad value came from an environment
/// variable, says which.
fn exit_refused(error: clap::Error) -> ! {
    if let Some(variable) = environment_source_of(&error) {
        eprintln!("{}", error.render().to_string().trim_end());
        eprintln!("  (the value came from the environment variable {variable})");
        std::process::exit(error.exit_code());
    }
    error.exit()
}

fn environment_source_of(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(invalid)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--lease-ttl-ms <LEASE_TTL_MS>": the long flag is the first word.
    let flag = invalid.split_whitespace().next()?.strip_prefix("--")?;
    let on_command_line = std::env::args().skip(1).any(|arg| {
        arg.strip_prefix("--")
            .is_some_and(|given| given.split('=').next() == Some(flag))
    });
    if on_command_line {
        return None;
    }
    let command = command_tree();
    let mut commands = vec![&command];
    while let Some(command) = commands.pop() {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag));
        if let Some(variable) = arg.and_then(|arg| arg.get_env()) {
            return Some(variable.to_string_lossy().into_owned());
        }
        commands.extend(command.get_subcommands());
    }
    None
}

fn rotate_operator_key(data_dir: PathBuf) -> ExitCode {
    match crate::auth::rotate_operator_key(&data_dir) {
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
            ExitCode::from(exit_code(&ServerError::from(error)))
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

/// The process's own setup (the descriptor limit and the connection cap it allows,
/// returning freed memory, the stop-signal handlers), then the gRPC socket and
/// [`crate::server::run`] until a stop signal.
async fn run_daemon(mut config: Config) -> Result<(), DaemonError> {
    config.lower_connections_max(crate::connections::connections_cap_for_descriptors(
        config.connections_max(),
    ));
    tokio::spawn(crate::allocator::collect_freed_memory_forever());
    // Before anything is announced: a signal from then on stops the daemon cleanly.
    let shutdown = crate::shutdown::stop_signal();
    // Listen first: while the log is replayed, health answers NOT_SERVING.
    let listener = crate::server::bind(config.settings().listen).await?;
    if let Ok(addr) = listener.local_addr() {
        println!("seatbroker listening on {addr}");
    }
    let scheme = if config.tls().is_some() {
        "https"
    } else {
        "http"
    };
    let announce = |started: Started<'_>| print_start(scheme, started);
    crate::server::run(config, listener, announce, shutdown).await?;
    Ok(())
}

/// Shows a key made for a new data directory, once (only its hash is kept), and the
/// console's address once the daemon serves.
fn print_start(scheme: &str, started: Started<'_>) {
    match started {
        Started::Recovered {
            generated_operator_key: Some(key),
        } => {
            println!(
                "Generated the operator key. It is shown once; only its hash is kept:\n\n    {key}\n"
            );
            println!("Use it with: export SEATBROKER_KEY={key}\n");
        }
        Started::Recovered { .. } => {}
        Started::Serving { addr, .. } => {
            // A wildcard address is not one a browser can open: show loopback.
            let host = if addr.ip().is_unspecified() {
                std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
            } else {
                addr
            };
            println!(
                "Admin console: {scheme}://{host}/ (sign in with the operator key, or an Owner's or Admin's API key)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        super::command_tree().debug_assert();
    }
}
