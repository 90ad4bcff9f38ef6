//! The daemon's configuration: where each setting comes from, its default, its
//! bounds, and the check that runs before anything is bound.
//!
//! Precedence, highest first: command-line flags, environment variables
//! (`SEATBROKER_*`), the TOML file given with `--config`, the defaults. Each source is
//! read into a [`ConfigLayer`] (every field optional); layers are merged field by
//! field ([`ConfigLayer::or`]) and the result is resolved into a [`Config`] with the
//! defaults of `limits` and checked against its bounds. A bad configuration is a
//! [`ConfigError`]; the daemon exits with code 64 before binding anything.
//!
//! The operator key is a secret: it comes from the environment or the file, and every
//! printout of the configuration ([`Config::to_toml_redacted`]) hides it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit::AuditOptions;
use crate::auth::OperatorKey;
use crate::limits;
use crate::telemetry::logging::{self, LogFormat};
use crate::tls::{self, ServerTlsFiles};

/// What replaces a secret in printouts.
pub const REDACTED: &str = "<redacted>";

/// One source of settings: every field optional. Field names are the TOML keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_key: Option<SecretText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_ms: Option<u64>,
    pub tls: TlsLayer,
    pub log: LogLayer,
    pub metrics: MetricsLayer,
    pub limits: LimitsLayer,
    pub audit: AuditLayer,
    pub wal: WalLayer,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_org: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_streams_per_connection_max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases_per_org_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_bodies_bytes_max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes_max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_max: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalLayer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_delay_us: Option<u32>,
}

impl ConfigLayer {
    /// Reads a TOML file (at most `limits::CONFIG_FILE_BYTES_MAX`).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > limits::CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "{} is {size} bytes; a configuration file holds at most {}",
                path.display(),
                limits::CONFIG_FILE_BYTES_MAX
            )));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// This layer over `lower`: each field set here wins.
    pub fn or(self, lower: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            insecure: self.insecure.or(lower.insecure),
            operator_key: self.operator_key.or(lower.operator_key),
            lease_ttl_ms: self.lease_ttl_ms.or(lower.lease_ttl_ms),
            shutdown_grace_ms: self.shutdown_grace_ms.or(lower.shutdown_grace_ms),
            tls: TlsLayer {
                cert: self.tls.cert.or(lower.tls.cert),
                key: self.tls.key.or(lower.tls.key),
                client_ca: self.tls.client_ca.or(lower.tls.client_ca),
            },
            log: LogLayer {
                format: self.log.format.or(lower.log.format),
                filter: self.log.filter.or(lower.log.filter),
            },
            metrics: MetricsLayer {
                listen: self.metrics.listen.or(lower.metrics.listen),
                per_org: self.metrics.per_org.or(lower.metrics.per_org),
            },
            limits: LimitsLayer {
                request_bytes_max: self
                    .limits
                    .request_bytes_max
                    .or(lower.limits.request_bytes_max),
                concurrent_streams_per_connection_max: self
                    .limits
                    .concurrent_streams_per_connection_max
                    .or(lower.limits.concurrent_streams_per_connection_max),
                keepalive_interval_ms: self
                    .limits
                    .keepalive_interval_ms
                    .or(lower.limits.keepalive_interval_ms),
                keepalive_timeout_ms: self
                    .limits
                    .keepalive_timeout_ms
                    .or(lower.limits.keepalive_timeout_ms),
                leases_per_org_max: self
                    .limits
                    .leases_per_org_max
                    .or(lower.limits.leases_per_org_max),
                request_bodies_bytes_max: self
                    .limits
                    .request_bodies_bytes_max
                    .or(lower.limits.request_bodies_bytes_max),
                handshake_timeout_ms: self
                    .limits
                    .handshake_timeout_ms
                    .or(lower.limits.handshake_timeout_ms),
                idle_timeout_ms: self.limits.idle_timeout_ms.or(lower.limits.idle_timeout_ms),
            },
            audit: AuditLayer {
                file_bytes_max: self.audit.file_bytes_max.or(lower.audit.file_bytes_max),
                files_max: self.audit.files_max.or(lower.audit.files_max),
            },
            wal: WalLayer {
                commit_delay_us: self.wal.commit_delay_us.or(lower.wal.commit_delay_us),
            },
        }
    }
}

/// Why a configuration was refused.
/// A secret held in the configuration (the operator key): its `Debug` never shows it,
/// so no `{:?}` of a configuration can leak it into a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for SecretText {
    fn from(text: &str) -> Self {
        SecretText(text.to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
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

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing-subscriber filter directive, e.g. `info,seatbroker=debug`.
    pub filter: String,
}

/// The Prometheus listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `None`: no metrics listener.
    pub listen: Option<SocketAddr>,
    /// Series per organization (`seatbroker_org_*`); off by default, as their number
    /// grows with the organizations.
    pub per_org: bool,
}

/// Limits an operator may tune, each within the bounds of `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    pub request_bytes_max: usize,
    pub concurrent_streams_per_connection_max: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub leases_per_org_max: usize,
    /// Client connections open at once; more wait in the listen backlog. At most
    /// `limits::CONNECTIONS_MAX`, lowered at start to fit the descriptor limit
    /// (`connections::connections_cap_for_descriptors`); tests lower it.
    pub connections_max: usize,
    /// Bytes held in request bodies not yet complete, across the daemon.
    pub request_bodies_bytes_max: usize,
    /// Time from accepting a connection to its first call's headers.
    pub handshake_timeout: Duration,
    /// A connection with no call for a whole period of this is closed.
    pub idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            request_bytes_max: limits::REQUEST_BYTES_MAX,
            concurrent_streams_per_connection_max: limits::CONCURRENT_STREAMS_PER_CONNECTION_MAX,
            keepalive_interval: Duration::from_millis(limits::KEEPALIVE_INTERVAL_MS_DEFAULT),
            keepalive_timeout: Duration::from_millis(limits::KEEPALIVE_TIMEOUT_MS_DEFAULT),
            leases_per_org_max: limits::LEASES_PER_ORG_MAX,
            connections_max: limits::CONNECTIONS_MAX,
            request_bodies_bytes_max: limits::REQUEST_BODIES_BYTES_MAX,
            handshake_timeout: Duration::from_millis(limits::HANDSHAKE_TIMEOUT_MS_DEFAULT),
            idle_timeout: Duration::from_millis(limits::IDLE_TIMEOUT_MS_DEFAULT),
        }
    }
}

/// The effective configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Plaintext on a non-loopback address was allowed explicitly.
    pub insecure: bool,
    pub operator_key: OperatorKeySource,
    pub lease_ttl: Duration,
    /// How long in-flight calls may take to finish at shutdown.
    pub shutdown_grace: Duration,
    pub tls: Option<ServerTlsFiles>,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    pub audit: AuditOptions,
    /// How long a commit group of the log may wait for more records (see
    /// `WalOptions::commit_delay`).
    pub commit_delay: Duration,
}

/// The default listen address: loopback, where plaintext is allowed.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:50051";
pub const DATA_DIR_DEFAULT: &str = "./data";
pub const LOG_FILTER_DEFAULT: &str = "info";

fn check_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Invalid(format!(
            "{name} = {value} is outside {min}..={max}"
        )));
    }
    Ok(value)
}

impl Config {
    /// Defaults for a daemon on an ephemeral loopback port over `data_dir` (tests).
    pub fn for_data_dir(data_dir: &Path) -> Self {
        Config::resolve(ConfigLayer {
            listen: Some("127.0.0.1:0".parse().expect("a literal address")),
            data_dir: Some(data_dir.to_path_buf()),
            ..ConfigLayer::default()
        })
        .expect("the defaults are valid")
    }

    /// Fills in the defaults and checks every bound and rule.
    pub fn resolve(layer: ConfigLayer) -> Result<Config, ConfigError> {
        let listen = layer
            .listen
            .unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("a literal address"));
        let insecure = layer.insecure.unwrap_or(false);
        let tls = tls_files(layer.tls)?;
        if tls.is_none() && !listen.ip().is_loopback() && !insecure {
            return Err(ConfigError::Invalid(format!(
                "listen = {listen} is not a loopback address: give tls.cert and tls.key \
                 (--tls-cert, --tls-key), or allow plaintext with --insecure"
            )));
        }
        let operator_key = match layer.operator_key {
            Some(SecretText(text)) => OperatorKeySource::Given(
                OperatorKey::from_text(&text).map_err(ConfigError::Invalid)?,
            ),
            None => OperatorKeySource::DataDir,
        };
        let lease_ttl_ms = check_range(
            "lease_ttl_ms",
            layer.lease_ttl_ms.unwrap_or(limits::LEASE_TTL_MS_DEFAULT),
            limits::LEASE_TTL_MS_MIN,
            limits::LEASE_TTL_MS_MAX,
        )?;
        let shutdown_grace_ms = check_range(
            "shutdown_grace_ms",
            layer
                .shutdown_grace_ms
                .unwrap_or(limits::SHUTDOWN_GRACE_MS_DEFAULT),
            0,
            limits::SHUTDOWN_GRACE_MS_MAX,
        )?;
        let filter = layer
            .log
            .filter
            .unwrap_or_else(|| LOG_FILTER_DEFAULT.into());
        logging::check_filter(&filter).map_err(ConfigError::Invalid)?;
        Ok(Config {
            listen,
            data_dir: layer.data_dir.unwrap_or_else(|| DATA_DIR_DEFAULT.into()),
            insecure,
            operator_key,
            lease_ttl: Duration::from_millis(u64::from(lease_ttl_ms)),
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
            tls,
            log: LogConfig {
                format: layer.log.format.unwrap_or_default(),
                filter,
            },
            metrics: MetricsConfig {
                listen: layer.metrics.listen,
                per_org: layer.metrics.per_org.unwrap_or(false),
            },
            limits: limits_config(layer.limits)?,
            audit: audit_options(layer.audit)?,
            commit_delay: Duration::from_micros(u64::from(check_range(
                "wal.commit_delay_us",
                layer
                    .wal
                    .commit_delay_us
                    .unwrap_or(crate::wal::COMMIT_DELAY_DEFAULT.as_micros() as u32),
                0,
                crate::wal::COMMIT_DELAY_LIMIT.as_micros() as u32,
            )?)),
        })
    }

    /// Proves the TLS files load, beyond what [`Config::resolve`] checks.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if let Some(files) = &self.tls {
            tls::check_server(files)?;
        }
        Ok(())
    }

    /// The configuration as a layer: every setting explicit, secrets redacted.
    fn to_layer_redacted(&self) -> ConfigLayer {
        ConfigLayer {
            listen: Some(self.listen),
            data_dir: Some(self.data_dir.clone()),
            insecure: Some(self.insecure),
            operator_key: match self.operator_key {
                OperatorKeySource::Given(_) => Some(REDACTED.into()),
                OperatorKeySource::DataDir => None,
            },
            lease_ttl_ms: Some(self.lease_ttl.as_millis() as u32),
            shutdown_grace_ms: Some(self.shutdown_grace.as_millis() as u64),
            tls: TlsLayer {
                cert: self.tls.as_ref().map(|t| t.cert.clone()),
                key: self.tls.as_ref().map(|t| t.key.clone()),
                client_ca: self.tls.as_ref().and_then(|t| t.client_ca.clone()),
            },
            log: LogLayer {
                format: Some(self.log.format),
                filter: Some(self.log.filter.clone()),
            },
            metrics: MetricsLayer {
                listen: self.metrics.listen,
                per_org: Some(self.metrics.per_org),
            },
            limits: LimitsLayer {
                request_bytes_max: Some(self.limits.request_bytes_max),
                concurrent_streams_per_connection_max: Some(
                    self.limits.concurrent_streams_per_connection_max,
                ),
                keepalive_interval_ms: Some(self.limits.keepalive_interval.as_millis() as u64),
                keepalive_timeout_ms: Some(self.limits.keepalive_timeout.as_millis() as u64),
                leases_per_org_max: Some(self.limits.leases_per_org_max),
                request_bodies_bytes_max: Some(self.limits.request_bodies_bytes_max),
                handshake_timeout_ms: Some(self.limits.handshake_timeout.as_millis() as u64),
                idle_timeout_ms: Some(self.limits.idle_timeout.as_millis() as u64),
            },
            audit: AuditLayer {
                file_bytes_max: Some(self.audit.file_bytes_max),
                files_max: Some(self.audit.files_max),
            },
            wal: WalLayer {
                commit_delay_us: Some(self.commit_delay.as_micros() as u32),
            },
        }
    }

    /// The effective configuration as a TOML file (usable with `--config`), with the
    /// operator key replaced by [`REDACTED`].
    pub fn to_toml_redacted(&self) -> String {
        toml::to_string(&self.to_layer_redacted())
            .unwrap_or_else(|error| format!("# cannot print the configuration: {error}\n"))
    }
}

fn tls_files(layer: TlsLayer) -> Result<Option<ServerTlsFiles>, ConfigError> {
    match (layer.cert, layer.key, layer.client_ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), client_ca) => Ok(Some(ServerTlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None, Some(_)) => Err(ConfigError::Invalid(
            "tls.client_ca (--tls-client-ca) needs tls.cert and tls.key: mTLS runs over TLS".into(),
        )),
        _ => Err(ConfigError::Invalid(
            "tls.cert and tls.key (--tls-cert, --tls-key) go together".into(),
        )),
    }
}

fn limits_config(layer: LimitsLayer) -> Result<LimitsConfig, ConfigError> {
    let defaults = LimitsConfig::default();
    let ms = |name, value: Option<u64>, default: Duration, min, max| {
        check_range(name, value.unwrap_or(default.as_millis() as u64), min, max)
            .map(Duration::from_millis)
    };
    let request_bytes_max = check_range(
        "limits.request_bytes_max",
        layer
            .request_bytes_max
            .unwrap_or(defaults.request_bytes_max),
        limits::REQUEST_BYTES_MAX_FLOOR,
        limits::REQUEST_BYTES_MAX_CEILING,
    )?;
    Ok(LimitsConfig {
        request_bytes_max,
        // A whole request of the largest size must fit in the daemon's budget.
        request_bodies_bytes_max: check_range(
            "limits.request_bodies_bytes_max",
            layer
                .request_bodies_bytes_max
                .unwrap_or(defaults.request_bodies_bytes_max),
            request_bytes_max,
            limits::REQUEST_BODIES_BYTES_MAX_CEILING,
        )?,
        handshake_timeout: ms(
            "limits.handshake_timeout_ms",
            layer.handshake_timeout_ms,
            defaults.handshake_timeout,
            limits::HANDSHAKE_TIMEOUT_MS_MIN,
            limits::HANDSHAKE_TIMEOUT_MS_MAX,
        )?,
        idle_timeout: ms(
            "limits.idle_timeout_ms",
            layer.idle_timeout_ms,
            defaults.idle_timeout,
            limits::IDLE_TIMEOUT_MS_MIN,
            limits::IDLE_TIMEOUT_MS_MAX,
        )?,
        concurrent_streams_per_connection_max: check_range(
            "limits.concurrent_streams_per_connection_max",
            layer
                .concurrent_streams_per_connection_max
                .unwrap_or(defaults.concurrent_streams_per_connection_max),
            limits::CONCURRENT_STREAMS_PER_CONNECTION_MAX_FLOOR,
            limits::CONCURRENT_STREAMS_PER_CONNECTION_MAX_CEILING,
        )?,
        keepalive_interval: ms(
            "limits.keepalive_interval_ms",
            layer.keepalive_interval_ms,
            defaults.keepalive_interval,
            limits::KEEPALIVE_INTERVAL_MS_MIN,
            limits::KEEPALIVE_INTERVAL_MS_MAX,
        )?,
        keepalive_timeout: ms(
            "limits.keepalive_timeout_ms",
            layer.keepalive_timeout_ms,
            defaults.keepalive_timeout,
            limits::KEEPALIVE_TIMEOUT_MS_MIN,
            limits::KEEPALIVE_TIMEOUT_MS_MAX,
        )?,
        leases_per_org_max: check_range(
            "limits.leases_per_org_max",
            layer
                .leases_per_org_max
                .unwrap_or(defaults.leases_per_org_max),
            limits::LEASES_PER_ORG_MAX_FLOOR,
            limits::LEASES_PER_ORG_MAX_CEILING,
        )?,
        connections_max: defaults.connections_max,
    })
}

fn audit_options(layer: AuditLayer) -> Result<AuditOptions, ConfigError> {
    let defaults = AuditOptions::default();
    Ok(AuditOptions {
        file_bytes_max: check_range(
            "audit.file_bytes_max",
            layer.file_bytes_max.unwrap_or(defaults.file_bytes_max),
            limits::AUDIT_FILE_BYTES_MAX_FLOOR,
            limits::AUDIT_FILE_BYTES_MAX_CEILING,
        )?,
        files_max: check_range(
            "audit.files_max",
            layer.files_max.unwrap_or(defaults.files_max),
            1,
            limits::AUDIT_FILES_MAX_CEILING,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(layer: ConfigLayer) -> Result<Config, String> {
        Config::resolve(layer).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = ConfigLayer::parse(
            "lease_ttl_ms = 5000\nshutdown_grace_ms = 100\n[limits]\nleases_per_org_max = 10\n",
        )
        .unwrap();
        let flags = ConfigLayer {
            lease_ttl_ms: Some(9000),
            ..ConfigLayer::default()
        };
        let config = check(flags.or(file)).unwrap();
        assert_eq!(config.lease_ttl, Duration::from_millis(9000));
        assert_eq!(config.shutdown_grace, Duration::from_millis(100));
        assert_eq!(config.limits.leases_per_org_max, 10);
        assert_eq!(config.limits.request_bytes_max, limits::REQUEST_BYTES_MAX);
    }

    #[test]
    fn plaintext_off_loopback_needs_insecure() {
        let public = ConfigLayer {
            listen: Some("0.0.0.0:50051".parse().unwrap()),
            ..ConfigLayer::default()
        };
        assert!(check(public.clone()).unwrap_err().contains("--insecure"));
        let insecure = ConfigLayer {
            insecure: Some(true),
            ..public
        };
        assert!(check(insecure).is_ok());
    }

    #[test]
    fn bounds_unknown_keys_and_half_tls_are_refused() {
        assert!(
            check(ConfigLayer::parse("lease_ttl_ms = 1").unwrap())
                .unwrap_err()
                .contains("lease_ttl_ms")
        );
        assert!(
            ConfigLayer::parse("listne = \"127.0.0.1:1\"")
                .unwrap_err()
                .contains("listne")
        );
        let half = ConfigLayer::parse("[tls]\ncert = \"a.pem\"").unwrap();
        assert!(check(half).unwrap_err().contains("go together"));
        let bad_filter = ConfigLayer::parse("[log]\nfilter = \"info,[\"").unwrap();
        assert!(check(bad_filter).is_err());
    }

    #[test]
    fn edge_bounds_are_checked_and_the_body_budget_holds_a_whole_request() {
        let config = check(ConfigLayer::default()).unwrap();
        assert_eq!(config.limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            config.limits.request_bodies_bytes_max,
            limits::REQUEST_BODIES_BYTES_MAX
        );
        let small_budget = ConfigLayer::parse(
            "[limits]\nrequest_bytes_max = 2097152\nrequest_bodies_bytes_max = 1048576\n",
        )
        .unwrap();
        assert!(
            check(small_budget)
                .unwrap_err()
                .contains("limits.request_bodies_bytes_max")
        );
        let fast = ConfigLayer::parse("[limits]\nhandshake_timeout_ms = 1\n").unwrap();
        assert!(check(fast).unwrap_err().contains("handshake_timeout_ms"));
        let idle = ConfigLayer::parse("[limits]\nidle_timeout_ms = 1000\n").unwrap();
        assert_eq!(
            check(idle).unwrap().limits.idle_timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_printout_hides_the_operator_key_and_reads_back_as_the_same_configuration() {
        let secret = "a-very-secret-operator-key-0123456789abcdef";
        let layer = ConfigLayer {
            operator_key: Some(secret.into()),
            metrics: MetricsLayer {
                listen: Some("127.0.0.1:9100".parse().unwrap()),
                per_org: Some(true),
            },
            ..ConfigLayer::default()
        };
        let config = check(layer).unwrap();
        let printed = config.to_toml_redacted();
        assert!(!printed.contains(secret));
        assert!(printed.contains(REDACTED));
        let mut reread = ConfigLayer::parse(&printed).unwrap();
        reread.operator_key = None;
        let mut original = config.to_layer_redacted();
        original.operator_key = None;
        assert_eq!(check(reread).unwrap().to_layer_redacted(), original);
    }
}
