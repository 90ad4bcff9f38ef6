//! The daemon's configuration: every setting declared once, in [`Settings`], with its
//! flag, environment variable, TOML key, default and help text; the order in which
//! its sources are read; and the check that runs before anything is bound.
//!
//! Precedence, highest first: command-line flags, environment variables
//! (`SEATBROKER_*`), the TOML file given with `--config`, the defaults. A setting's
//! default is the `default_value` of its clap attribute, from a constant of `limits`
//! (so `--help` shows it); both clap and serde fill it in ([`Settings::default`] asks
//! clap for them). [`Config::load`] is the one place that layers the sources: it reads
//! the file over the defaults, then applies what the command line and the environment
//! gave ([`CommandLine`]: clap's matches without the defaults clap filled in).
//! [`Config::resolve`] checks the result against the bounds of `limits`, and is the
//! only way to make a [`Config`]. A bad configuration is a [`ConfigError`]; the daemon
//! exits with code 64 before binding anything.
//!
//! The operator key is a secret: it comes from the environment or the file, never a
//! flag, and every printout of the configuration ([`Config::to_toml_redacted`]) hides
//! it.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::auth::OperatorKey;
use crate::cluster::etcd::{Credentials, EtcdAccess};
use crate::limits;
use crate::telemetry::logging::{self, LogFormat};
use crate::tls::{self, ServerTlsFiles};

/// What replaces a secret in printouts.
pub const REDACTED: &str = "<redacted>";
/// Where `--check-config` would print the operator key.
const OPERATOR_KEY_NOT_SHOWN: &str = "# operator_key is set but not shown: give it again (SEATBROKER_OPERATOR_KEY) when\n# loading this file.\n";
/// The environment variable of the operator key; it has no flag, so that it never
/// shows in a process listing.
pub const OPERATOR_KEY_ENV: &str = "SEATBROKER_OPERATOR_KEY";
/// The environment variable of the etcd user's password (no flag, not in the file;
/// or `[cluster] etcd_password_file`).
pub const ETCD_PASSWORD_ENV: &str = "SEATBROKER_ETCD_PASSWORD";
/// Where `--check-config` would print the etcd password.
const ETCD_PASSWORD_NOT_SHOWN: &str =
    "# the etcd password is set but not shown: give it again (SEATBROKER_ETCD_PASSWORD).\n";
/// The default listen address: loopback, where plaintext is allowed.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:50051";
pub const DATA_DIR_DEFAULT: &str = "./data";
pub const LOG_FILTER_DEFAULT: &str = "info";

/// Every setting of the daemon, one field each: its doc comment is the help text, the
/// field name the TOML key (in the table of its section), the clap attribute the flag,
/// the environment variable and the default. A setting of a section names its flag
/// (`--tls-cert`) and the flag's value (`TLS_CERT`) in full, as clap has no prefix for
/// flattened arguments. A source that leaves a setting out gets its default. Bounds are
/// checked by [`Config::resolve`], not here.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "SEATBROKER_LISTEN", default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// Directory for the log, snapshots, the audit record and the operator key hash.
    #[arg(long, env = "SEATBROKER_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// Allow plaintext gRPC on a non-loopback address.
    #[arg(
        long,
        env = "SEATBROKER_INSECURE",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false
    )]
    pub insecure: bool,
    /// The operator key in full, from `SEATBROKER_OPERATOR_KEY` or the file (no flag).
    /// `None`: the hash kept in the data directory.
    #[arg(skip)]
    pub operator_key: Option<SecretText>,
    /// Lease time-to-live in milliseconds; engines heartbeat every third of it.
    #[arg(long, env = "SEATBROKER_LEASE_TTL_MS", default_value_t = limits::LEASE_TTL_MS_DEFAULT)]
    pub lease_ttl_ms: u32,
    /// How long in-flight calls may take to finish at shutdown, in milliseconds.
    #[arg(
        long,
        env = "SEATBROKER_SHUTDOWN_GRACE_MS",
        default_value_t = limits::SHUTDOWN_GRACE_MS_DEFAULT
    )]
    pub shutdown_grace_ms: u64,
    #[command(flatten)]
    pub tls: TlsSettings,
    #[command(flatten)]
    pub log: LogSettings,
    #[command(flatten)]
    pub metrics: MetricsSettings,
    #[command(flatten)]
    pub limits: LimitsSettings,
    #[command(flatten)]
    pub audit: AuditSettings,
    #[command(flatten)]
    pub wal: WalSettings,
    #[command(flatten)]
    pub cluster: ClusterSettings,
}

/// `[tls]`: the daemon's certificate and key, both or neither (plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// The daemon's TLS certificate chain (PEM).
    #[arg(
        long = "tls-cert",
        value_name = "TLS_CERT",
        env = "SEATBROKER_TLS_CERT"
    )]
    pub cert: Option<PathBuf>,
    /// The daemon's TLS private key (PEM).
    #[arg(long = "tls-key", value_name = "TLS_KEY", env = "SEATBROKER_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to: enables mTLS.
    #[arg(
        long = "tls-client-ca",
        value_name = "TLS_CLIENT_CA",
        env = "SEATBROKER_TLS_CLIENT_CA"
    )]
    pub client_ca: Option<PathBuf>,
}

/// `[log]`: log output.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Log format.
    #[arg(
        long = "log-format",
        value_name = "LOG_FORMAT",
        env = "SEATBROKER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::default()
    )]
    pub format: LogFormat,
    /// Log filter, e.g. `info,seatbroker=debug` (a tracing-subscriber directive).
    #[arg(
        long = "log-filter",
        value_name = "LOG_FILTER",
        env = "SEATBROKER_LOG",
        default_value = LOG_FILTER_DEFAULT
    )]
    pub filter: String,
}

/// `[metrics]`: the Prometheus listener.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Serve Prometheus metrics at http://ADDR/metrics (none when not given).
    #[arg(
        id = "metrics_listen",
        long = "metrics-listen",
        value_name = "METRICS_LISTEN",
        env = "SEATBROKER_METRICS_LISTEN"
    )]
    pub listen: Option<SocketAddr>,
    /// Also export series per organization (their number grows with organizations).
    #[arg(
        long = "metrics-per-org",
        value_name = "METRICS_PER_ORG",
        env = "SEATBROKER_METRICS_PER_ORG",
        action = ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false
    )]
    pub per_org: bool,
}

/// `[limits]`: bounds an operator may tune, each within the range of `limits`.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Largest gRPC request in bytes.
    #[arg(long, env = "SEATBROKER_REQUEST_BYTES_MAX", default_value_t = limits::REQUEST_BYTES_MAX)]
    pub request_bytes_max: usize,
    /// Concurrent HTTP/2 streams per client connection.
    #[arg(
        long,
        env = "SEATBROKER_CONCURRENT_STREAMS_PER_CONNECTION_MAX",
        default_value_t = limits::CONCURRENT_STREAMS_PER_CONNECTION_MAX
    )]
    pub concurrent_streams_per_connection_max: u32,
    /// HTTP/2 keepalive ping interval, in milliseconds.
    #[arg(
        long,
        env = "SEATBROKER_KEEPALIVE_INTERVAL_MS",
        default_value_t = limits::KEEPALIVE_INTERVAL_MS_DEFAULT
    )]
    pub keepalive_interval_ms: u64,
    /// HTTP/2 keepalive ping timeout, in milliseconds.
    #[arg(
        long,
        env = "SEATBROKER_KEEPALIVE_TIMEOUT_MS",
        default_value_t = limits::KEEPALIVE_TIMEOUT_MS_DEFAULT
    )]
    pub keepalive_timeout_ms: u64,
    /// Live leases of one organization, at most.
    #[arg(
        long,
        env = "SEATBROKER_LEASES_PER_ORG_MAX",
        default_value_t = limits::LEASES_PER_ORG_MAX
    )]
    pub leases_per_org_max: usize,
    /// Bytes held in request bodies not yet complete, across the daemon; past it,
    /// calls get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "SEATBROKER_REQUEST_BODIES_BYTES_MAX",
        default_value_t = limits::REQUEST_BODIES_BYTES_MAX
    )]
    pub request_bodies_bytes_max: usize,
    /// A connection must start its first call (TLS, HTTP/2 preface, headers) within
    /// this many milliseconds, or it is closed.
    #[arg(
        long,
        env = "SEATBROKER_HANDSHAKE_TIMEOUT_MS",
        default_value_t = limits::HANDSHAKE_TIMEOUT_MS_DEFAULT
    )]
    pub handshake_timeout_ms: u64,
    /// A connection with no call in flight and none started for a whole period of
    /// this many milliseconds is closed.
    #[arg(
        long,
        env = "SEATBROKER_IDLE_TIMEOUT_MS",
        default_value_t = limits::IDLE_TIMEOUT_MS_DEFAULT
    )]
    pub idle_timeout_ms: u64,
}

/// `[audit]`: the sizes of the audit record's files.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Audit files rotate at this size, in bytes.
    #[arg(
        long = "audit-file-bytes-max",
        value_name = "AUDIT_FILE_BYTES_MAX",
        env = "SEATBROKER_AUDIT_FILE_BYTES_MAX",
        default_value_t = limits::AUDIT_FILE_BYTES_MAX_DEFAULT
    )]
    pub file_bytes_max: u64,
    /// Audit files kept, at most: the record holds at most this many times the file
    /// size in all, shared fairly by organizations.
    #[arg(
        long = "audit-files-max",
        value_name = "AUDIT_FILES_MAX",
        env = "SEATBROKER_AUDIT_FILES_MAX",
        default_value_t = limits::AUDIT_FILES_MAX_DEFAULT
    )]
    pub files_max: u32,
}

/// `[wal]`: the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalSettings {
    /// How long a commit group of a busy log may wait for more records, in
    /// microseconds (0: never): fewer fsyncs under load, each grant answered up to this
    /// much later; an idle log never waits.
    #[arg(
        long,
        env = "SEATBROKER_COMMIT_DELAY_US",
        default_value_t = limits::COMMIT_DELAY_US_DEFAULT
    )]
    pub commit_delay_us: u32,
}

/// `[cluster]`: a node of a cluster sharing its log in etcd (cluster mode). Without
/// `etcd_endpoints` the daemon is a single node on its local log.
#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// etcd's client URLs, comma-separated (`http://host:2379,...`): starts this daemon
    /// as a node of a cluster whose log lives in etcd.
    #[arg(
        long,
        env = "SEATBROKER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub etcd_endpoints: Vec<String>,
    /// The cluster's name: the nodes of one cluster share it (their etcd keys are under
    /// `/seatbroker/<name>/`).
    #[arg(long, env = "SEATBROKER_CLUSTER_NAME", default_value = "seatbroker")]
    pub cluster_name: String,
    /// This node's name, in its logs (required in cluster mode).
    #[arg(long, env = "SEATBROKER_NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Where clients reach this node (`host:port`); standbys tell clients the
    /// leader's. Default: the address the daemon listens on.
    #[arg(long, env = "SEATBROKER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// The election lease's time-to-live in seconds: a crashed leader is replaced
    /// about this long after it died; a leader cut from etcd steps down after half of
    /// it.
    #[arg(
        long,
        env = "SEATBROKER_ELECTION_TTL_S",
        default_value_t = limits::ELECTION_TTL_S_DEFAULT
    )]
    pub election_ttl_s: u32,
    /// The fewest log records after a snapshot in etcd that make the leader write the
    /// next one (or half the live leases, if more), deleting the log it covers.
    #[arg(
        long = "cluster-snapshot-records",
        env = "SEATBROKER_CLUSTER_SNAPSHOT_RECORDS",
        default_value_t = limits::CLUSTER_SNAPSHOT_RECORDS_DEFAULT
    )]
    pub snapshot_records: u64,
    /// CA certificate (PEM) that signed etcd's certificate, for https:// endpoints.
    #[arg(long, env = "SEATBROKER_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd that requires one (its
    /// `--client-cert-auth`).
    #[arg(long, env = "SEATBROKER_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// The etcd client certificate's private key (PEM).
    #[arg(long, env = "SEATBROKER_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user, when etcd's authentication is on; its password comes from
    /// `SEATBROKER_ETCD_PASSWORD` or `etcd_password_file`.
    #[arg(long, env = "SEATBROKER_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// A file whose first line is the etcd user's password.
    #[arg(long, env = "SEATBROKER_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// The etcd user's password, from `SEATBROKER_ETCD_PASSWORD` only: no flag, not in
    /// the file, never printed.
    #[arg(skip)]
    #[serde(skip)]
    pub etcd_password: Option<SecretText>,
}

impl ClusterSettings {
    /// Whether the daemon runs as a node of a cluster.
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }
}

/// The defaults of a group of settings, as clap fills them in when nothing is given:
/// an empty command line, with the environment variables left unread.
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("defaults")).mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("an empty command line, and no setting is required");
    T::from_arg_matches(&matches).expect("every default parses as its setting's type")
}

/// Each group of settings defaults to what clap fills in, so that the file and the
/// command line leave a setting out alike.
macro_rules! default_from_clap {
    ($($settings:ty),*) => {
        $(impl Default for $settings {
            fn default() -> Self {
                clap_defaults()
            }
        })*
    };
}

default_from_clap!(
    Settings,
    LogSettings,
    MetricsSettings,
    LimitsSettings,
    AuditSettings,
    WalSettings,
    ClusterSettings
);

impl Settings {
    /// The defaults for a daemon on an ephemeral loopback port over `data_dir` (tests).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Settings {
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            data_dir: data_dir.to_path_buf(),
            ..Settings::default()
        }
    }

    /// Reads a TOML file (at most `limits::CONFIG_FILE_BYTES_MAX`); the keys it leaves
    /// out get their defaults.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = read_small_file(path, limits::CONFIG_FILE_BYTES_MAX, "a configuration file")?;
        let parse_error = |source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let mut settings = Self::parse(&text).map_err(parse_error)?;
        let given = text.parse::<toml::Table>().map_err(parse_error)?;
        if let Some(directory) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            settings.resolve_paths_against(directory, given.contains_key("data_dir"));
        }
        Ok(settings)
    }

    /// Makes relative paths relative to `directory`: the data directory (when
    /// `data_dir_given`) and the TLS files. A configuration file's are relative to
    /// its own directory, as its reader expects whatever the daemon's working
    /// directory.
    fn resolve_paths_against(&mut self, directory: &Path, data_dir_given: bool) {
        let resolve = |path: &Path| -> PathBuf {
            // Without the `.` components: `./data` reads as `<directory>/data`.
            directory
                .join(path)
                .components()
                .filter(|part| *part != std::path::Component::CurDir)
                .collect()
        };
        if data_dir_given {
            self.data_dir = resolve(&self.data_dir);
        }
        let TlsSettings {
            cert,
            key,
            client_ca,
        } = &mut self.tls;
        let ClusterSettings {
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_password_file,
            ..
        } = &mut self.cluster;
        let paths = [
            cert,
            key,
            client_ca,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_password_file,
        ];
        for path in paths.into_iter().flatten() {
            *path = resolve(path);
        }
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

/// What the command line and the environment gave: clap's matches of the [`Settings`]
/// flags without the defaults clap filled in (so that the file comes between), and the
/// operator key's environment variable. Parsed as part of `seatbroker serve`.
#[derive(Debug, Clone)]
pub struct CommandLine {
    given: ArgMatches,
    operator_key: Option<SecretText>,
    etcd_password: Option<SecretText>,
}

impl Args for CommandLine {
    fn augment_args(command: Command) -> Command {
        Settings::augment_args(command)
    }

    fn augment_args_for_update(command: Command) -> Command {
        Settings::augment_args_for_update(command)
    }
}

impl FromArgMatches for CommandLine {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = matches.clone();
        let defaulted: Vec<String> = given
            .ids()
            .map(|id| id.as_str().to_owned())
            .filter(|id| given.value_source(id) == Some(ValueSource::DefaultValue))
            .collect();
        for id in &defaulted {
            given
                .try_clear_id(id)
                .expect("the id comes from these matches");
        }
        Ok(CommandLine {
            given,
            operator_key: std::env::var(OPERATOR_KEY_ENV).ok().map(SecretText),
            etcd_password: std::env::var(ETCD_PASSWORD_ENV).ok().map(SecretText),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = CommandLine::from_arg_matches(matches)?;
        Ok(())
    }
}

impl CommandLine {
    /// `error`, naming the flag or environment variable that gave a value out of its
    /// bounds (the TOML key alone would send the operator to a file that may not even
    /// hold it). A setting's clap id is the last part of its TOML key.
    fn name_source(&self, error: ConfigError) -> ConfigError {
        let ConfigError::OutOfBounds {
            key,
            value,
            range,
            given_by: None,
        } = error
        else {
            return error;
        };
        let id = key.rsplit('.').next().unwrap_or(key);
        let command = Settings::augment_args(Command::new("serve"));
        let arg = command.get_arguments().find(|arg| arg.get_id() == id);
        // Ids cleared of clap's defaults have no source: the file or the defaults.
        let source = self
            .given
            .try_contains_id(id)
            .unwrap_or(false)
            .then(|| self.given.value_source(id))
            .flatten();
        let given_by = match (source, arg) {
            (Some(ValueSource::EnvVariable), Some(arg)) => arg
                .get_env()
                .map(|env| format!("the environment variable {}", env.to_string_lossy())),
            (Some(ValueSource::CommandLine), Some(arg)) => {
                arg.get_long().map(|long| format!("--{long}"))
            }
            _ => None,
        };
        ConfigError::OutOfBounds {
            key,
            value,
            range,
            given_by,
        }
    }

    /// Sets in `settings` what the command line and the environment gave.
    fn apply_to(&self, settings: &mut Settings) {
        settings
            .update_from_arg_matches(&self.given)
            .expect("the matches were parsed for these settings");
        if let Some(key) = &self.operator_key {
            settings.operator_key = Some(key.clone());
        }
        if let Some(password) = &self.etcd_password {
            settings.cluster.etcd_password = Some(password.clone());
        }
    }
}

/// A secret held in the configuration (the operator key): its `Debug` never shows it,
/// so no `{:?}` of a configuration can leak it into a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<&str> for SecretText {
    fn from(text: &str) -> Self {
        SecretText(text.to_owned())
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A setting outside its bounds; `key` is its TOML key, `given_by` the flag or
    /// environment variable that gave the value (`None`: the file or the defaults).
    #[error("{key} = {value} is outside {range}{}", given_by.as_deref().map(|by| format!(" (given by {by})")).unwrap_or_default())]
    OutOfBounds {
        key: &'static str,
        value: String,
        range: String,
        given_by: Option<String>,
    },
    #[error(transparent)]
    OperatorKey(#[from] crate::auth::OperatorKeyLengthError),
    #[error(transparent)]
    Logging(#[from] logging::LoggingError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Where the operator key comes from. Its `Debug` shows no key.
#[derive(Clone)]
pub enum OperatorKeySource {
    /// A key given in full (`SEATBROKER_OPERATOR_KEY`, or `operator_key` in the file),
    /// checked and hashed once, when the configuration was resolved.
    Given(OperatorKey),
    /// The hash kept in the data directory; made and printed on the first start
    /// (`auth::data_dir_operator_key`).
    DataDir,
}

impl std::fmt::Debug for OperatorKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorKeySource::Given(_) => f.write_str("Given(<redacted>)"),
            OperatorKeySource::DataDir => f.write_str("DataDir"),
        }
    }
}

/// The effective configuration of the daemon: every setting within its bounds. Made
/// only by [`Config::resolve`] (or [`Config::load`]), and read-only after, so no
/// caller can skip a check.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every setting, checked; printed by [`Config::to_toml_redacted`].
    settings: Settings,
    /// `settings.operator_key`, checked and hashed.
    operator_key: OperatorKeySource,
    /// `settings.tls`, when it names a certificate and key.
    tls: Option<ServerTlsFiles>,
    /// Client connections open at once; more wait in the listen backlog. At most
    /// `limits::CONNECTIONS_MAX`, lowered at start to fit the descriptor limit
    /// (`connections::connections_cap_for_descriptors`); tests lower it.
    connections_max: usize,
}

impl Config {
    /// The configuration of `seatbroker serve`, checked (TLS files included). The one
    /// place where the sources are layered: the file (or nothing) over the defaults,
    /// then the environment and the flags over both (clap puts flags over the
    /// environment).
    pub fn load(command_line: &CommandLine, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut settings = match file {
            Some(path) => Settings::read(path)?,
            None => Settings::default(),
        };
        command_line.apply_to(&mut settings);
        let config = Config::resolve(settings).map_err(|error| command_line.name_source(error))?;
        if let Some(files) = &config.tls {
            tls::server_acceptor(files)?;
        }
        // The etcd files and password are read now, so that a bad one stops the start.
        config.etcd_access()?;
        Ok(config)
    }

    /// Checks every bound and rule.
    pub fn resolve(settings: Settings) -> Result<Config, ConfigError> {
        let tls = tls_files(&settings.tls)?;
        let listen = settings.listen;
        if tls.is_none() && !listen.ip().is_loopback() && !settings.insecure {
            return Err(ConfigError::Invalid(format!(
                "listen = {listen} is not a loopback address: give tls.cert and tls.key \
                 (--tls-cert, --tls-key), or allow plaintext with --insecure"
            )));
        }
        let operator_key = match &settings.operator_key {
            Some(SecretText(text)) => OperatorKeySource::Given(OperatorKey::from_text(text)?),
            None => OperatorKeySource::DataDir,
        };
        check_bounds(&settings)?;
        Ok(Config {
            settings,
            operator_key,
            tls,
            connections_max: limits::CONNECTIONS_MAX,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn operator_key(&self) -> &OperatorKeySource {
        &self.operator_key
    }

    pub fn tls(&self) -> Option<&ServerTlsFiles> {
        self.tls.as_ref()
    }

    pub fn connections_max(&self) -> usize {
        self.connections_max
    }

    /// How a node reaches etcd beyond its URLs: TLS from `etcd_ca` (and `etcd_cert`,
    /// `etcd_key`), and the user with its password (read from `etcd_password_file`
    /// now). Each error names its setting.
    pub fn etcd_access(&self) -> Result<EtcdAccess, ConfigError> {
        let cluster = &self.settings.cluster;
        let tls = match &cluster.etcd_ca {
            None => None,
            Some(ca) => {
                let files = tls::ClientTlsFiles {
                    ca: Some(ca.clone()),
                    cert: cluster.etcd_cert.clone(),
                    key: cluster.etcd_key.clone(),
                };
                let config = tls::client_config(&files).map_err(|error| {
                    ConfigError::Invalid(format!(
                        "cluster.etcd_ca, etcd_cert, etcd_key (--etcd-ca, --etcd-cert, --etcd-key): {error}"
                    ))
                })?;
                Some(config)
            }
        };
        let credentials = match &cluster.etcd_user {
            None => None,
            Some(user) => Some(Credentials {
                user: user.clone(),
                password: etcd_password(cluster)?.0,
            }),
        };
        Ok(EtcdAccess { tls, credentials })
    }

    /// Lowers the bound on client connections to `max` (it is never raised).
    pub fn lower_connections_max(&mut self, max: usize) {
        self.connections_max = self.connections_max.min(max);
    }

    /// The effective configuration as a TOML file (usable with `--config` from any
    /// directory: its paths are absolute), without the operator key: a comment says
    /// whether one is set.
    pub fn to_toml_redacted(&self) -> String {
        let mut printed = self.settings.clone();
        if let Ok(working_directory) = std::env::current_dir() {
            printed.resolve_paths_against(&working_directory, true);
        }
        let mut note = match printed.operator_key.take() {
            Some(_) => OPERATOR_KEY_NOT_SHOWN.to_owned(),
            None => String::new(),
        };
        if printed.cluster.etcd_password.take().is_some() {
            note.push_str(ETCD_PASSWORD_NOT_SHOWN);
        }
        match toml::to_string(&printed) {
            Ok(toml) => format!("{note}{toml}"),
            Err(error) => format!("# cannot print the configuration: {error}\n"),
        }
    }
}

fn tls_files(settings: &TlsSettings) -> Result<Option<ServerTlsFiles>, ConfigError> {
    match settings.clone() {
        TlsSettings {
            cert: None,
            key: None,
            client_ca: None,
        } => Ok(None),
        TlsSettings {
            cert: Some(cert),
            key: Some(key),
            client_ca,
        } => Ok(Some(ServerTlsFiles {
            cert,
            key,
            client_ca,
        })),
        TlsSettings {
            cert: None,
            key: None,
            client_ca: Some(_),
        } => Err(ConfigError::Invalid(
            "tls.client_ca (--tls-client-ca) needs tls.cert and tls.key: mTLS runs over TLS".into(),
        )),
        _ => Err(ConfigError::Invalid(
            "tls.cert and tls.key (--tls-cert, --tls-key) go together".into(),
        )),
    }
}

/// The text of `path`, refused past `max_bytes` (`what` names the file in the error).
fn read_small_file(path: &Path, max_bytes: u64, what: &str) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > max_bytes {
        return Err(ConfigError::Invalid(format!(
            "{} is {size} bytes; {what} holds at most {max_bytes}",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(read)
}

/// The etcd user's password: `SEATBROKER_ETCD_PASSWORD`, or the first line of
/// `etcd_password_file` (at most `limits::ETCD_PASSWORD_FILE_BYTES_MAX` bytes).
fn etcd_password(cluster: &ClusterSettings) -> Result<SecretText, ConfigError> {
    if let Some(password) = &cluster.etcd_password {
        return Ok(password.clone());
    }
    let Some(path) = &cluster.etcd_password_file else {
        return Err(ConfigError::Invalid(format!(
            "cluster.etcd_user needs its password: {ETCD_PASSWORD_ENV} or cluster.etcd_password_file (--etcd-password-file)"
        )));
    };
    let text = read_small_file(
        path,
        limits::ETCD_PASSWORD_FILE_BYTES_MAX,
        "cluster.etcd_password_file",
    )?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "cluster.etcd_password_file {} holds no password on its first line",
            path.display()
        )));
    }
    Ok(SecretText(password.to_owned()))
}

/// The rules of cluster mode's etcd connection: one scheme for every endpoint, a CA for
/// `https://`, TLS files only with it, a user with one source of its password.
fn check_etcd_access(cluster: &ClusterSettings) -> Result<(), ConfigError> {
    let invalid = |text: &str| Err(ConfigError::Invalid(text.to_owned()));
    let https = cluster
        .etcd_endpoints
        .iter()
        .filter(|url| url.starts_with("https://"))
        .count();
    if https != 0 && https != cluster.etcd_endpoints.len() {
        return invalid(
            "cluster.etcd_endpoints mixes http:// and https://: give every endpoint of one etcd cluster the same scheme",
        );
    }
    let tls_files_given =
        cluster.etcd_ca.is_some() || cluster.etcd_cert.is_some() || cluster.etcd_key.is_some();
    if https > 0 && cluster.etcd_ca.is_none() {
        return invalid(
            "https:// etcd endpoints need cluster.etcd_ca (--etcd-ca): the CA certificate that signed etcd's certificate",
        );
    }
    if https == 0 && tls_files_given {
        return invalid(
            "cluster.etcd_ca, etcd_cert and etcd_key (--etcd-ca, --etcd-cert, --etcd-key) need https:// etcd endpoints",
        );
    }
    if cluster.etcd_cert.is_some() != cluster.etcd_key.is_some() {
        return invalid(
            "cluster.etcd_cert and cluster.etcd_key (--etcd-cert, --etcd-key) go together",
        );
    }
    let password_given = cluster.etcd_password.is_some() || cluster.etcd_password_file.is_some();
    match &cluster.etcd_user {
        None if password_given => invalid(&format!(
            "an etcd password ({ETCD_PASSWORD_ENV} or cluster.etcd_password_file) needs cluster.etcd_user (--etcd-user)"
        )),
        Some(user) if user.is_empty() => invalid("cluster.etcd_user is empty"),
        Some(_) if cluster.etcd_password.is_some() && cluster.etcd_password_file.is_some() => {
            invalid(&format!(
                "the etcd password is given twice ({ETCD_PASSWORD_ENV} and cluster.etcd_password_file): give one"
            ))
        }
        Some(_) if !password_given => invalid(&format!(
            "cluster.etcd_user needs its password: {ETCD_PASSWORD_ENV} or cluster.etcd_password_file (--etcd-password-file)"
        )),
        _ => Ok(()),
    }
}

/// The rules of cluster mode, when it is on.
fn check_cluster(settings: &Settings) -> Result<(), ConfigError> {
    use crate::limits::*;
    let cluster = &settings.cluster;
    if !cluster.enabled() {
        return Ok(());
    }
    let invalid = |text: String| Err(ConfigError::Invalid(text));
    if cluster.etcd_endpoints.len() > ETCD_ENDPOINTS_MAX {
        return invalid(format!(
            "cluster.etcd_endpoints names {} endpoints; at most {ETCD_ENDPOINTS_MAX}",
            cluster.etcd_endpoints.len()
        ));
    }
    if let Some(bad) = cluster.etcd_endpoints.iter().find(|url| {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        rest.is_none_or(str::is_empty)
    }) {
        return invalid(format!(
            "cluster.etcd_endpoints: {bad:?} is not an etcd client URL such as http://127.0.0.1:2379 or https://etcd-1:2379"
        ));
    }
    check_etcd_access(cluster)?;
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if !name_ok(&cluster.cluster_name) || !name_ok(&cluster.node_name) {
        return invalid(format!(
            "cluster mode needs --cluster-name and --node-name of 1 to 64 letters, digits, '-', '_' or '.' (given {:?} and {:?})",
            cluster.cluster_name, cluster.node_name
        ));
    }
    if settings.operator_key.is_none() {
        return invalid(
            "cluster mode needs the operator key given (SEATBROKER_OPERATOR_KEY or operator_key in the file), the same on every node: a node's data directory is its own".into(),
        );
    }
    if settings.limits.request_bytes_max > CLUSTER_REQUEST_BYTES_MAX {
        return invalid(format!(
            "limits.request_bytes_max = {} is over {CLUSTER_REQUEST_BYTES_MAX} in cluster mode: an admin command must fit in one etcd value",
            settings.limits.request_bytes_max
        ));
    }
    check(
        "cluster.election_ttl_s",
        cluster.election_ttl_s,
        ELECTION_TTL_S_MIN..=ELECTION_TTL_S_MAX,
    )?;
    check(
        "cluster.snapshot_records",
        cluster.snapshot_records,
        CLUSTER_SNAPSHOT_RECORDS_MIN..=CLUSTER_SNAPSHOT_RECORDS_MAX,
    )
}

fn check_bounds(settings: &Settings) -> Result<(), ConfigError> {
    use crate::limits::*;
    let Settings { limits, audit, .. } = settings;
    check_cluster(settings)?;
    check(
        "lease_ttl_ms",
        settings.lease_ttl_ms,
        LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX,
    )?;
    check(
        "shutdown_grace_ms",
        settings.shutdown_grace_ms,
        0..=SHUTDOWN_GRACE_MS_MAX,
    )?;
    logging::check_filter(&settings.log.filter)?;
    check(
        "limits.request_bytes_max",
        limits.request_bytes_max,
        REQUEST_BYTES_MAX_FLOOR..=REQUEST_BYTES_MAX_CEILING,
    )?;
    // A whole request of the largest size must fit in the daemon's budget.
    check(
        "limits.request_bodies_bytes_max",
        limits.request_bodies_bytes_max,
        limits.request_bytes_max..=REQUEST_BODIES_BYTES_MAX_CEILING,
    )?;
    check(
        "limits.handshake_timeout_ms",
        limits.handshake_timeout_ms,
        HANDSHAKE_TIMEOUT_MS_MIN..=HANDSHAKE_TIMEOUT_MS_MAX,
    )?;
    check(
        "limits.idle_timeout_ms",
        limits.idle_timeout_ms,
        IDLE_TIMEOUT_MS_MIN..=IDLE_TIMEOUT_MS_MAX,
    )?;
    check(
        "limits.concurrent_streams_per_connection_max",
        limits.concurrent_streams_per_connection_max,
        CONCURRENT_STREAMS_PER_CONNECTION_MAX_FLOOR..=CONCURRENT_STREAMS_PER_CONNECTION_MAX_CEILING,
    )?;
    check(
        "limits.keepalive_interval_ms",
        limits.keepalive_interval_ms,
        KEEPALIVE_INTERVAL_MS_MIN..=KEEPALIVE_INTERVAL_MS_MAX,
    )?;
    check(
        "limits.keepalive_timeout_ms",
        limits.keepalive_timeout_ms,
        KEEPALIVE_TIMEOUT_MS_MIN..=KEEPALIVE_TIMEOUT_MS_MAX,
    )?;
    check(
        "limits.leases_per_org_max",
        limits.leases_per_org_max,
        LEASES_PER_ORG_MAX_FLOOR..=LEASES_PER_ORG_MAX_CEILING,
    )?;
    check(
        "audit.file_bytes_max",
        audit.file_bytes_max,
        AUDIT_FILE_BYTES_MAX_FLOOR..=AUDIT_FILE_BYTES_MAX_CEILING,
    )?;
    check(
        "audit.files_max",
        audit.files_max,
        1..=AUDIT_FILES_MAX_CEILING,
    )?;
    check(
        "wal.commit_delay_us",
        settings.wal.commit_delay_us,
        0..=COMMIT_DELAY_US_MAX,
    )
}

/// Refuses `value` outside `range`, naming the setting `key` (its TOML key; the
/// command line's [`CommandLine::name_source`] adds its flag or variable).
fn check<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if !range.contains(&value) {
        return Err(ConfigError::OutOfBounds {
            key,
            value: value.to_string(),
            range: format!("{}..={}", range.start(), range.end()),
            given_by: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(settings: Settings) -> Result<Config, String> {
        Config::resolve(settings).map_err(|e| e.to_string())
    }

    /// `seatbroker serve ARGS` as `Config::load` sees it (the environment is left as it
    /// is: no test here sets a `SEATBROKER_*` variable).
    fn command_line(args: &[&str]) -> CommandLine {
        let command = CommandLine::augment_args(Command::new("serve"));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap();
        CommandLine::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn the_defaults_are_those_of_limits_and_within_their_bounds() {
        let settings = Settings::default();
        assert_eq!(settings.lease_ttl_ms, limits::LEASE_TTL_MS_DEFAULT);
        assert_eq!(
            settings.limits.request_bodies_bytes_max,
            limits::REQUEST_BODIES_BYTES_MAX
        );
        assert_eq!(settings.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(settings.log.format, LogFormat::Text);
        assert_eq!(settings.tls, TlsSettings::default());
        assert_eq!(Settings::parse("").unwrap(), settings);
        let config = check(settings).unwrap();
        assert_eq!(config.connections_max(), limits::CONNECTIONS_MAX);
        assert!(matches!(config.operator_key(), OperatorKeySource::DataDir));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seatbroker.toml");
        std::fs::write(
            &file,
            "lease_ttl_ms = 5000\nshutdown_grace_ms = 100\n[limits]\nleases_per_org_max = 10\n",
        )
        .unwrap();
        let flags = command_line(&["--lease-ttl-ms", "9000", "--metrics-per-org"]);
        let config = Config::load(&flags, Some(&file)).unwrap();
        let settings = config.settings();
        assert_eq!(settings.lease_ttl_ms, 9000);
        assert_eq!(settings.shutdown_grace_ms, 100);
        assert_eq!(settings.limits.leases_per_org_max, 10);
        assert!(settings.metrics.per_org);
        assert_eq!(settings.limits.request_bytes_max, limits::REQUEST_BYTES_MAX);
        // A flag left out does not bring its default back over the file.
        let config = Config::load(&command_line(&[]), Some(&file)).unwrap();
        assert_eq!(config.settings().lease_ttl_ms, 5000);
    }

    #[test]
    fn plaintext_off_loopback_needs_insecure() {
        let public = Settings {
            listen: "0.0.0.0:50051".parse().unwrap(),
            ..Settings::default()
        };
        assert!(check(public.clone()).unwrap_err().contains("--insecure"));
        let insecure = Settings {
            insecure: true,
            ..public
        };
        assert!(check(insecure).is_ok());
    }

    #[test]
    fn bounds_unknown_keys_and_half_tls_are_refused() {
        assert!(
            check(Settings::parse("lease_ttl_ms = 1").unwrap())
                .unwrap_err()
                .contains("lease_ttl_ms")
        );
        assert!(
            Settings::parse("listne = \"127.0.0.1:1\"")
                .unwrap_err()
                .to_string()
                .contains("listne")
        );
        let half = Settings::parse("[tls]\ncert = \"a.pem\"").unwrap();
        assert!(check(half).unwrap_err().contains("go together"));
        let bad_filter = Settings::parse("[log]\nfilter = \"info,[\"").unwrap();
        assert!(check(bad_filter).is_err());
        let short_key = Settings {
            operator_key: Some("short".into()),
            ..Settings::default()
        };
        assert!(check(short_key).unwrap_err().contains("operator key"));
    }

    #[test]
    fn cluster_mode_needs_names_the_operator_key_and_etcd_urls() {
        let key = "a-very-secret-operator-key-0123456789abcdef";
        let toml = |extra: &str| {
            Settings::parse(&format!(
                "operator_key = \"{key}\"\n[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n{extra}"
            ))
            .unwrap()
        };
        let node = check(toml("node_name = \"a\"\n")).unwrap();
        assert!(node.settings().cluster.enabled());
        assert_eq!(
            node.settings().cluster.election_ttl_s,
            limits::ELECTION_TTL_S_DEFAULT
        );
        assert!(check(toml("")).unwrap_err().contains("--node-name"));
        let no_key = Settings {
            operator_key: None,
            ..toml("node_name = \"a\"\n")
        };
        assert!(check(no_key).unwrap_err().contains("operator key given"));
        let mut bad_url = toml("node_name = \"a\"\n");
        bad_url.cluster.etcd_endpoints = vec!["127.0.0.1:2379".into()];
        assert!(
            check(bad_url)
                .unwrap_err()
                .contains("not an etcd client URL")
        );
        let short_ttl = toml("node_name = \"a\"\nelection_ttl_s = 1\n");
        assert!(
            check(short_ttl)
                .unwrap_err()
                .contains("cluster.election_ttl_s")
        );
        let big_requests = Settings::parse(&format!(
            "operator_key = \"{key}\"\n[limits]\nrequest_bytes_max = 2097152\nrequest_bodies_bytes_max = 4194304\n[cluster]\netcd_endpoints = [\"http://e:2379\"]\nnode_name = \"a\"\n"
        ))
        .unwrap();
        assert!(check(big_requests).unwrap_err().contains("one etcd value"));
        // Without endpoints nothing of the section is checked: a single node.
        assert!(
            !check(Settings::default())
                .unwrap()
                .settings()
                .cluster
                .enabled()
        );
    }

    #[test]
    fn etcd_tls_and_user_settings_are_checked_and_the_password_never_printed() {
        let key = "a-very-secret-operator-key-0123456789abcdef";
        let toml = |cluster: &str| {
            Settings::parse(&format!(
                "operator_key = \"{key}\"\n[cluster]\nnode_name = \"a\"\n{cluster}"
            ))
            .unwrap()
        };
        let refused = |cluster: &str| check(toml(cluster)).unwrap_err();
        let https = "etcd_endpoints = [\"https://e:2379\"]\n";
        let http = "etcd_endpoints = [\"http://e:2379\"]\n";
        assert!(refused(https).contains("cluster.etcd_ca"));
        let mixed = "etcd_endpoints = [\"https://e:2379\", \"http://f:2379\"]\netcd_ca = \"c\"\n";
        assert!(refused(mixed).contains("mixes"));
        assert!(refused(&format!("{http}etcd_ca = \"c\"\n")).contains("need https://"));
        let half = format!("{https}etcd_ca = \"c\"\netcd_cert = \"c.pem\"\n");
        assert!(refused(&half).contains("go together"));
        assert!(refused(&format!("{http}etcd_user = \"u\"\n")).contains("needs its password"));
        let no_user = format!("{http}etcd_password_file = \"p\"\n");
        assert!(refused(&no_user).contains("needs cluster.etcd_user"));
        // The password itself is no key of the file.
        assert!(Settings::parse("[cluster]\netcd_password = \"x\"\n").is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret-etcd\nignored\n").unwrap();
        let mut settings = toml(&format!("{http}etcd_user = \"u\"\n"));
        settings.cluster.etcd_password_file = Some(file);
        let config = check(settings.clone()).unwrap();
        let access = config.etcd_access().unwrap();
        assert_eq!(access.credentials.as_ref().unwrap().password, "s3cret-etcd");
        assert!(!format!("{access:?}").contains("s3cret"));
        settings.cluster.etcd_password_file = None;
        settings.cluster.etcd_password = Some("from-env-secret".into());
        let config = check(settings).unwrap();
        let printed = config.to_toml_redacted();
        assert!(!printed.contains("from-env-secret"), "{printed}");
        assert!(printed.contains("etcd password is set"), "{printed}");
        assert!(!format!("{config:?}").contains("from-env-secret"));
    }

    #[test]
    fn edge_bounds_are_checked_and_the_body_budget_holds_a_whole_request() {
        let config = check(Settings::default()).unwrap();
        assert_eq!(config.settings().limits.handshake_timeout_ms, 10_000);
        assert_eq!(config.settings().limits.idle_timeout_ms, 300_000);
        let small_budget = Settings::parse(
            "[limits]\nrequest_bytes_max = 2097152\nrequest_bodies_bytes_max = 1048576\n",
        )
        .unwrap();
        assert!(
            check(small_budget)
                .unwrap_err()
                .contains("limits.request_bodies_bytes_max")
        );
        let fast = Settings::parse("[limits]\nhandshake_timeout_ms = 1\n").unwrap();
        assert!(check(fast).unwrap_err().contains("handshake_timeout_ms"));
        let idle = Settings::parse("[limits]\nidle_timeout_ms = 1000\n").unwrap();
        assert_eq!(check(idle).unwrap().settings().limits.idle_timeout_ms, 1000);
    }

    #[test]
    fn the_printout_hides_the_operator_key_and_reads_back_as_the_same_configuration() {
        let secret = "a-very-secret-operator-key-0123456789abcdef";
        let settings = Settings {
            operator_key: Some(secret.into()),
            metrics: MetricsSettings {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                per_org: true,
            },
            ..Settings::default()
        };
        let config = check(settings.clone()).unwrap();
        let printed = config.to_toml_redacted();
        assert!(!printed.contains(secret));
        assert!(printed.starts_with(OPERATOR_KEY_NOT_SHOWN));
        assert!(!format!("{config:?}").contains(secret));
        let mut reread = Settings::parse(&printed).unwrap();
        assert_eq!(reread.operator_key, None);
        assert!(reread.data_dir.is_absolute(), "{printed}");
        reread.data_dir = settings.data_dir.clone();
        reread.operator_key = settings.operator_key.clone();
        assert_eq!(reread, settings);
    }

    #[test]
    fn connections_are_only_ever_lowered() {
        let mut config = check(Settings::default()).unwrap();
        config.lower_connections_max(2);
        config.lower_connections_max(limits::CONNECTIONS_MAX);
        assert_eq!(config.connections_max(), 2);
    }
}
