//! Configuration: command-line flags (each also read from an `EPPMUX_*` environment variable), an
//! optional TOML file, and their validation into one [`Config`] at start-up. A flag or variable
//! wins over the file; the file wins over defaults. Every error names the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize, Serializer};

use crate::frame::DEFAULT_MAX_FRAME;
use crate::keys::{KeySource, PemSource};
use crate::secret::Secret;

#[derive(Debug, Parser)]
#[command(
    name = "eppmux",
    version,
    about = "Pools EPP registry sessions for local clients"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default when no command is given).
    Run(Box<RunArgs>),
    /// Start the embedded mock registry and eppmux in front of it, with certs-example.
    Demo(DemoArgs),
    /// Run only the mock EPP registry (for tests, benchmarks and docker-compose).
    MockRegistry(MockArgs),
    /// Connect to the registry once with this configuration: greeting, login, hello, logout, timings.
    Check(Box<RunArgs>),
    /// Exit 0 when the admin endpoint says eppmux is ready (for container healthchecks).
    Healthcheck(HealthArgs),
    /// Write one PEM file with the system's root CAs and eppmux's CA, for clients that take their
    /// trust from one file (Python's SSL_CERT_FILE): they then trust eppmux and everything else.
    CaBundle(CaBundleArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CaBundleArgs {
    /// The CA certificate that signed eppmux's listener certificate (repeatable).
    #[arg(long = "ca", value_name = "FILE", required = true)]
    pub ca: Vec<PathBuf>,
    /// Where to write the bundle; replaced atomically, so readers never see half a file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Take the system roots from this PEM file instead of the platform's store. By default the
    /// platform's store is read with SSL_CERT_FILE and SSL_CERT_DIR ignored, so that a bundle
    /// is never built from a previous bundle.
    #[arg(long, value_name = "FILE")]
    pub system_roots: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The admin endpoint of the eppmux to ask.
    #[arg(long, env = "EPPMUX_ADMIN", default_value = "127.0.0.1:9700")]
    pub admin: SocketAddr,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Proxy options. Every one is optional here so that the file can supply it; defaults are applied
/// in [`Config::from_sources`].
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of these options and a list of [[account]] tables.
    #[arg(long, env = "EPPMUX_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Plain-TCP listener address (e.g. 127.0.0.1:1700).
    #[arg(long, env = "EPPMUX_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// TLS listener address (e.g. 127.0.0.1:700); needs --tls-cert and --tls-key.
    #[arg(long, env = "EPPMUX_LISTEN_TLS", value_name = "ADDR")]
    pub listen_tls: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener (or its content in EPPMUX_TLS_CERT_PEM).
    #[arg(long, env = "EPPMUX_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener (or its content in EPPMUX_TLS_KEY_PEM).
    #[arg(long, env = "EPPMUX_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted --tls-key (or set EPPMUX_TLS_KEY_PASSPHRASE).
    #[arg(long, env = "EPPMUX_TLS_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    pub tls_key_passphrase_file: Option<PathBuf>,
    /// PEM CA bundle: when set, local TLS clients must present a certificate it signed.
    #[arg(long, env = "EPPMUX_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Registry address.
    #[arg(long, env = "EPPMUX_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// PEM CA bundle that signed the registry's certificate (default: the system roots).
    #[arg(long, env = "EPPMUX_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to the registry (or its content in EPPMUX_UPSTREAM_CERT_PEM).
    #[arg(long, env = "EPPMUX_UPSTREAM_CERT", value_name = "FILE")]
    pub upstream_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (or its content in EPPMUX_UPSTREAM_KEY_PEM).
    #[arg(long, env = "EPPMUX_UPSTREAM_KEY", value_name = "FILE")]
    pub upstream_key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted --upstream-key (or set EPPMUX_UPSTREAM_KEY_PASSPHRASE).
    #[arg(long, env = "EPPMUX_UPSTREAM_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    pub upstream_key_passphrase_file: Option<PathBuf>,
    /// Name to verify the registry certificate against (and send as SNI) instead of HOST.
    #[arg(long, env = "EPPMUX_UPSTREAM_SERVER_NAME", value_name = "NAME")]
    pub upstream_server_name: Option<String>,
    /// Registrar account (clID) for the single-account form.
    #[arg(long, env = "EPPMUX_CLID", value_name = "CLID")]
    pub clid: Option<String>,
    /// File holding the account's password (or set EPPMUX_PASSWORD).
    #[arg(long, env = "EPPMUX_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Upstream sessions opened at start [default: 1].
    #[arg(long, env = "EPPMUX_POOL_MIN", value_name = "N")]
    pub pool_min: Option<usize>,
    /// Most upstream sessions this account may hold [default: 4].
    #[arg(long, env = "EPPMUX_POOL_MAX", value_name = "N")]
    pub pool_max: Option<usize>,
    /// Largest EPP frame accepted or sent, header included [default: 1048576].
    #[arg(long, env = "EPPMUX_MAX_FRAME_SIZE", value_name = "BYTES")]
    pub max_frame_size: Option<usize>,
    /// How long a new client waits for a first registry greeting before being closed [default: 3s].
    #[arg(long, env = "EPPMUX_GREETING_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    pub greeting_wait: Option<Duration>,
    /// How long a command waits for a free upstream session before a 2400 answer [default: 2s].
    #[arg(long, env = "EPPMUX_QUEUE_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    pub queue_wait: Option<Duration>,
    /// Failed local logins on one connection before 2501 and close [default: 3].
    #[arg(long, env = "EPPMUX_MAX_LOGIN_FAILURES", value_name = "N")]
    pub max_login_failures: Option<u32>,
    /// Timeout for each step of opening an upstream session: connect, TLS, greeting, login [default: 10s].
    #[arg(long, env = "EPPMUX_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// How long to wait for a registry response to a forwarded command [default: 60s].
    #[arg(long, env = "EPPMUX_RESPONSE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub response_timeout: Option<Duration>,
    /// Send <hello> on an upstream session idle this long, before the registry drops it; 0s turns it off [default: 60s].
    #[arg(long, env = "EPPMUX_KEEPALIVE", value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive: Option<Duration>,
    /// Retire (finish, <logout>, replace) upstream sessions older than this [default: never].
    #[arg(long, env = "EPPMUX_MAX_SESSION_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub max_session_age: Option<Duration>,
    /// Retire upstream sessions after this many commands [default: never].
    #[arg(long, env = "EPPMUX_MAX_SESSION_COMMANDS", value_name = "N")]
    pub max_session_commands: Option<u64>,
    /// Commands in flight at once on one upstream session (RFC 5734 §3 pipelining) [default: 1].
    #[arg(long, env = "EPPMUX_PIPELINE_DEPTH", value_name = "N")]
    pub pipeline_depth: Option<usize>,
    /// Upstream logins allowed per account per minute, after a burst of pool_max; whatever goes
    /// wrong, eppmux never logs in faster [default: 2 × pool_max].
    #[arg(long, env = "EPPMUX_MAX_LOGINS_PER_MINUTE", value_name = "N")]
    pub max_logins_per_minute: Option<u32>,
    /// Commands sent to the registry per account per second; more wait in the queue (within the
    /// queue wait) [default: off].
    #[arg(long, env = "EPPMUX_MAX_COMMANDS_PER_SECOND", value_name = "RATE")]
    pub max_commands_per_second: Option<f64>,
    /// Most commands waiting for a free session per account; more get 2400 at once [default: 1000].
    #[arg(long, env = "EPPMUX_QUEUE_MAX", value_name = "N")]
    pub queue_max: Option<usize>,
    /// After 2502 (session limit), hold the account below its pool_max this long [default: 5m].
    #[arg(long, env = "EPPMUX_SESSION_LIMIT_HOLD", value_name = "DURATION", value_parser = parse_duration)]
    pub session_limit_hold: Option<Duration>,
    /// On SIGTERM/SIGINT, let in-flight commands finish for at most this long [default: 10s].
    #[arg(long, env = "EPPMUX_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// A client that starts a frame must finish it within this long [default: 30s].
    #[arg(long, env = "EPPMUX_FRAME_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub frame_timeout: Option<Duration>,
    /// Close client connections idle (between frames) this long [default: 1h].
    #[arg(long, env = "EPPMUX_CLIENT_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub client_idle_timeout: Option<Duration>,
    /// Most client connections at once, over all listeners [default: 4096].
    #[arg(long, env = "EPPMUX_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,
    /// Distinct wrong passwords per source and clID per minute before logins from there are
    /// slowed (delayed, one at a time) [default: 20].
    #[arg(long, env = "EPPMUX_LOGIN_FAILURES_PER_MINUTE", value_name = "N")]
    pub login_failures_per_minute: Option<u32>,
    /// Largest frame accepted from a client that has not logged in [default: 16384].
    #[arg(long, env = "EPPMUX_MAX_FRAME_SIZE_BEFORE_LOGIN", value_name = "BYTES")]
    pub max_frame_size_before_login: Option<usize>,
    /// A client that has not logged in this long after connecting is closed [default: 30s].
    #[arg(long, env = "EPPMUX_LOGIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub login_timeout: Option<Duration>,
    /// Client connections at once from one non-loopback host (an IPv6 /64 counts as one) [default: 256].
    #[arg(long, env = "EPPMUX_MAX_CLIENTS_PER_SOURCE", value_name = "N")]
    pub max_clients_per_source: Option<usize>,
    /// Bytes of commands waiting for a session per account; more get 2400 at once [default: 67108864].
    #[arg(long, env = "EPPMUX_QUEUE_MAX_BYTES", value_name = "BYTES")]
    pub queue_max_bytes: Option<usize>,
    /// File with a bearer token the admin endpoint requires for /metrics and /status (or set
    /// EPPMUX_ADMIN_TOKEN); /healthz and /readyz stay open [default: none].
    #[arg(long, env = "EPPMUX_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Allow --listen (plain TCP, no encryption) on a non-loopback address.
    #[arg(long, env = "EPPMUX_ALLOW_INSECURE_PLAIN")]
    pub allow_insecure_plain: bool,
    /// With --tls-client-ca: only client certificates with these SHA-256 fingerprints (repeatable).
    #[arg(
        long,
        env = "EPPMUX_TLS_CLIENT_ALLOW",
        value_name = "SHA256",
        value_delimiter = ','
    )]
    pub tls_client_allow: Vec<String>,
    /// Admin endpoint (HTTP: /metrics, /healthz, /readyz, /status), e.g. 127.0.0.1:9700 [default: off].
    #[arg(long, env = "EPPMUX_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log format.
    #[arg(long, env = "EPPMUX_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing's EnvFilter syntax, e.g. `info` or `eppmux=debug`) [default: info].
    #[arg(long, env = "EPPMUX_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// What only the environment may carry; the binary fills it from its environment.
    #[arg(skip)]
    pub env_secrets: EnvSecrets,
}

/// Certificate and key contents and key passphrases: taken from the environment only, never from
/// a flag (which `ps` and shell histories show) — the form Cloud Foundry and container platforms
/// hand secrets to a process in. Read by [`EnvSecrets::from_env`]; tests build it directly, so
/// that they do not depend on the process environment. Empty variables count as unset.
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    /// EPPMUX_UPSTREAM_CERT_PEM: PEM text or its base64.
    pub upstream_cert_pem: Option<Secret>,
    /// EPPMUX_UPSTREAM_KEY_PEM: PEM text or its base64.
    pub upstream_key_pem: Option<Secret>,
    /// EPPMUX_UPSTREAM_KEY_PASSPHRASE.
    pub upstream_key_passphrase: Option<Secret>,
    /// EPPMUX_TLS_CERT_PEM: PEM text or its base64.
    pub tls_cert_pem: Option<Secret>,
    /// EPPMUX_TLS_KEY_PEM: PEM text or its base64.
    pub tls_key_pem: Option<Secret>,
    /// EPPMUX_TLS_KEY_PASSPHRASE.
    pub tls_key_passphrase: Option<Secret>,
}

impl EnvSecrets {
    pub fn from_env() -> EnvSecrets {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> EnvSecrets {
        let get = |var: &str| get(var).filter(|v| !v.is_empty()).map(Secret::new);
        EnvSecrets {
            upstream_cert_pem: get("EPPMUX_UPSTREAM_CERT_PEM"),
            upstream_key_pem: get("EPPMUX_UPSTREAM_KEY_PEM"),
            upstream_key_passphrase: get("EPPMUX_UPSTREAM_KEY_PASSPHRASE"),
            tls_cert_pem: get("EPPMUX_TLS_CERT_PEM"),
            tls_key_pem: get("EPPMUX_TLS_KEY_PEM"),
            tls_key_passphrase: get("EPPMUX_TLS_KEY_PASSPHRASE"),
        }
    }
}

/// A file option and the `_PEM` variable that may replace it: one or the other, never both.
fn pem_input(
    key: &'static str,
    file: Option<PathBuf>,
    var: &str,
    value: &Option<Secret>,
) -> Result<Option<PemSource>, ConfigError> {
    match (file, value) {
        (Some(path), Some(_)) => Err(invalid(
            key,
            format!(
                "both a file ({}) and {var} are set; give one of them",
                path.display()
            ),
        )),
        (Some(path), None) => Ok(Some(PemSource::File(path))),
        (None, Some(v)) => PemSource::from_env_value(var, v.expose())
            .map(Some)
            .map_err(|e| invalid(key, format!("{var}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// A key passphrase from its file option or its variable (not both).
fn passphrase_input(
    key: &'static str,
    file: Option<PathBuf>,
    var: &str,
    value: &Option<Secret>,
) -> Result<Option<Secret>, ConfigError> {
    match (file, value) {
        (Some(path), Some(_)) => Err(invalid(
            key,
            format!(
                "both a passphrase file ({}) and {var} are set; give one of them",
                path.display()
            ),
        )),
        (Some(path), None) => Ok(Some(read_password_file(key, &path)?).filter(|p| !p.is_empty())),
        (None, value) => Ok(value.clone()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where eppmux's TLS listener binds.
    #[arg(long, env = "EPPMUX_LISTEN_TLS", default_value = "127.0.0.1:1700")]
    pub listen_tls: SocketAddr,
    /// Where eppmux's plain-TCP listener binds.
    #[arg(long, env = "EPPMUX_LISTEN", default_value = "127.0.0.1:1701")]
    pub listen: SocketAddr,
    /// Where the mock registry binds.
    #[arg(long, default_value = "127.0.0.1:1799")]
    pub registry: SocketAddr,
    /// Where eppmux's admin endpoint binds.
    #[arg(long, env = "EPPMUX_ADMIN", default_value = "127.0.0.1:1790")]
    pub admin: SocketAddr,
    /// Directory with the example certificates.
    #[arg(long, default_value = "certs-example")]
    pub certs: PathBuf,
    /// Simulated processing time of each registry command.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    #[arg(long, env = "EPPMUX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Address the mock registry listens on (TLS, client certificate required).
    #[arg(long, env = "EPPMUX_MOCK_LISTEN", default_value = "127.0.0.1:1799")]
    pub listen: SocketAddr,
    #[arg(
        long,
        env = "EPPMUX_MOCK_CERT",
        default_value = "certs-example/server.pem"
    )]
    pub cert: PathBuf,
    #[arg(
        long,
        env = "EPPMUX_MOCK_KEY",
        default_value = "certs-example/server-key.pem"
    )]
    pub key: PathBuf,
    /// CA that must have signed the client certificates of registry sessions.
    #[arg(
        long,
        env = "EPPMUX_MOCK_CLIENT_CA",
        default_value = "certs-example/ca.pem"
    )]
    pub client_ca: PathBuf,
    /// Accounts as CLID:PASSWORD (repeatable).
    #[arg(
        long = "account",
        env = "EPPMUX_MOCK_ACCOUNTS",
        value_delimiter = ',',
        default_value = "registrar1:s3cret-Pw"
    )]
    pub accounts: Vec<String>,
    /// Simulated processing time of each command (serial per session).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Simulated network round trip: half on every frame each way, two before the greeting.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub rtt: Duration,
    /// Sessions allowed per clID; a login beyond it gets 2502 and a close.
    #[arg(long, default_value_t = 100)]
    pub session_cap: usize,
    /// Idle time after which the registry closes a session.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    #[arg(long, env = "EPPMUX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_str("off"),
    }
}

impl Config {
    /// The effective configuration as TOML, passwords shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 3s or 2m: {e}"))
}

/// The same options as they may appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    listen_tls: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_key_passphrase_file: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    upstream: Option<String>,
    upstream_ca: Option<PathBuf>,
    upstream_cert: Option<PathBuf>,
    upstream_key: Option<PathBuf>,
    upstream_key_passphrase_file: Option<PathBuf>,
    upstream_server_name: Option<String>,
    max_frame_size: Option<usize>,
    greeting_wait: Option<String>,
    queue_wait: Option<String>,
    max_login_failures: Option<u32>,
    upstream_timeout: Option<String>,
    response_timeout: Option<String>,
    keepalive: Option<String>,
    max_session_age: Option<String>,
    max_session_commands: Option<u64>,
    pipeline_depth: Option<usize>,
    max_logins_per_minute: Option<u32>,
    max_commands_per_second: Option<f64>,
    queue_max: Option<usize>,
    session_limit_hold: Option<String>,
    shutdown_timeout: Option<String>,
    frame_timeout: Option<String>,
    client_idle_timeout: Option<String>,
    max_clients: Option<usize>,
    login_failures_per_minute: Option<u32>,
    max_frame_size_before_login: Option<usize>,
    login_timeout: Option<String>,
    max_clients_per_source: Option<usize>,
    queue_max_bytes: Option<usize>,
    admin_token_file: Option<PathBuf>,
    allow_insecure_plain: Option<bool>,
    tls_client_allow: Option<Vec<String>>,
    admin: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    #[serde(default, rename = "account")]
    accounts: Vec<FileAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    clid: String,
    password: Option<String>,
    password_file: Option<PathBuf>,
    pool_min: Option<usize>,
    pool_max: Option<usize>,
    obj_uris: Option<Vec<String>>,
    ext_uris: Option<Vec<String>>,
    keepalive: Option<String>,
    max_session_age: Option<String>,
    max_session_commands: Option<u64>,
    pipeline_depth: Option<usize>,
    max_logins_per_minute: Option<u32>,
    max_commands_per_second: Option<f64>,
    local_clid: Option<String>,
    local_password: Option<String>,
    local_password_file: Option<PathBuf>,
    local_client_certs: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerTls {
    pub cert: PemSource,
    pub key: KeySource,
    pub client_ca: Option<PathBuf>,
    /// Canonical SHA-256 fingerprints (`access::fingerprint`); empty: any certificate the CA signed.
    pub client_allow: Vec<String>,
}

/// The defaults of [`ClientLimits`].
const LIMITS: ClientLimits = ClientLimits {
    max_frame: DEFAULT_MAX_FRAME,
    // A login is well under 4 KiB; nothing bigger is needed before one.
    max_frame_before_login: 16 * 1024,
    frame_timeout: Duration::from_secs(30),
    idle_timeout: Duration::from_secs(3600),
    login_timeout: Duration::from_secs(30),
    max_clients: 4096,
    max_clients_per_source: 256,
    max_login_failures: 3,
    login_failures_per_minute: 20,
};

impl Default for ClientLimits {
    fn default() -> Self {
        LIMITS
    }
}

impl ClientLimits {
    /// The frame limit before login: never above the limit after it.
    pub fn pre_login_max_frame(&self) -> usize {
        self.max_frame_before_login.min(self.max_frame)
    }
}

/// Limits on what local clients may do.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClientLimits {
    pub max_frame: usize,
    pub max_frame_before_login: usize,
    #[serde(serialize_with = "ser_duration")]
    pub frame_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub login_timeout: Duration,
    pub max_clients: usize,
    /// Per non-loopback host (see `access::Source`).
    pub max_clients_per_source: usize,
    pub max_login_failures: u32,
    pub login_failures_per_minute: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// HOST:PORT as given.
    pub addr: String,
    /// Name the registry's certificate is verified against and sent as SNI.
    pub server_name: String,
    pub ca: Option<PathBuf>,
    pub cert: PemSource,
    pub key: KeySource,
    #[serde(serialize_with = "ser_duration")]
    pub step_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub response_timeout: Duration,
}

impl AccountConfig {
    /// The clID local clients log in with.
    pub fn local_clid(&self) -> &str {
        self.local.clid.as_deref().unwrap_or(&self.clid)
    }

    /// The password local clients log in with.
    pub fn local_password(&self) -> &Secret {
        self.local.password.as_ref().unwrap_or(&self.password)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountConfig {
    pub clid: String,
    pub password: Secret,
    pub pool_min: usize,
    pub pool_max: usize,
    /// Login services; `None` means "what the greeting advertises".
    pub obj_uris: Option<Vec<String>>,
    pub ext_uris: Option<Vec<String>>,
    pub lifecycle: SessionLifecycle,
    /// The login budget's refill per minute (after a burst of `pool_max`); `None`: 2 × pool_max.
    pub max_logins_per_minute: Option<u32>,
    /// Commands sent per second at most; `None`: no limit.
    pub max_commands_per_second: Option<f64>,
    /// What local clients log in with, when it should not be the registry's credentials.
    pub local: LocalLogin,
}

/// Local credentials of an account, apart from the registry's, so that an application need not
/// hold the registry password.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LocalLogin {
    /// The clID local clients use; `None`: the registry clID.
    pub clid: Option<String>,
    /// The password local clients use; `None`: the registry password.
    pub password: Option<Secret>,
    /// Client certificates (SHA-256 fingerprints) that log in as this account whatever password
    /// they send (needs `tls_client_ca`).
    pub client_certs: Vec<String>,
}

/// How long an upstream session lives and how it is kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionLifecycle {
    /// Idle time after which a `<hello>` is sent; `None`: never.
    #[serde(serialize_with = "ser_opt_duration")]
    pub keepalive: Option<Duration>,
    #[serde(serialize_with = "ser_opt_duration")]
    pub max_age: Option<Duration>,
    pub max_commands: Option<u64>,
    /// Commands in flight at once on one session; 1 = no pipelining.
    pub pipeline_depth: usize,
    /// A 2002 in a wording not known to mean "not logged in", to the first command after the
    /// session carried nothing for this long, is taken as a possibly forgotten session: the
    /// command is sent again on another session and this one retires. Not an option: a constant
    /// that tests lower.
    #[serde(serialize_with = "ser_duration")]
    pub suspect_2002_after: Duration,
}

impl Default for SessionLifecycle {
    fn default() -> Self {
        Self {
            keepalive: Some(DEFAULT_KEEPALIVE),
            max_age: None,
            max_commands: None,
            pipeline_depth: 1,
            suspect_2002_after: SUSPECT_2002_AFTER,
        }
    }
}

/// Registries forget sessions after minutes of idleness, never seconds; a busy session's 2002
/// is an ordinary "command use error" and is relayed as it is.
pub const SUSPECT_2002_AFTER: Duration = Duration::from_secs(10);

/// Half the smallest idle timeout registries publish (.no: 120 s), so one lost hello still leaves
/// time for the next.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// Validated configuration of the proxy.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub listen_tls: Option<SocketAddr>,
    pub tls: Option<ServerTls>,
    pub upstream: UpstreamConfig,
    pub accounts: Vec<AccountConfig>,
    pub limits: ClientLimits,
    pub admin: Option<SocketAddr>,
    #[serde(serialize_with = "ser_duration")]
    pub greeting_wait: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub queue_wait: Duration,
    /// Most commands waiting for a session, per account.
    pub queue_max: usize,
    /// Most bytes of commands waiting for a session, per account.
    pub queue_max_bytes: usize,
    /// Bearer token for the admin endpoint's /metrics and /status.
    pub admin_token: Option<Secret>,
    #[serde(serialize_with = "ser_duration")]
    pub session_limit_hold: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

const DEFAULT_POOL_MIN: usize = 1;
/// 64 full-size frames: far above what a burst of real commands (a few KiB each) needs, and a
/// bound on what a logged-in client can make eppmux hold.
const DEFAULT_QUEUE_MAX_BYTES: usize = 64 * 1024 * 1024;
const DEFAULT_POOL_MAX: usize = 4;

impl Config {
    /// Builds the configuration from flags/environment (`args`), the file they name, and
    /// `EPPMUX_PASSWORD` (passed in so that tests do not depend on the process environment).
    pub fn from_sources(
        args: &RunArgs,
        env_password: Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let base_dir = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        // Relative paths in the file are relative to the file, so a config directory can be moved.
        let rel = |p: Option<PathBuf>| -> Option<PathBuf> {
            p.map(|p| match &base_dir {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p,
            })
        };
        let dur =
            |key: &'static str, flag: Option<Duration>, file: Option<String>, default: Duration| {
                match (flag, file) {
                    (Some(d), _) => Ok(d),
                    (None, Some(s)) => parse_duration(&s).map_err(|m| invalid(key, m)),
                    (None, None) => Ok(default),
                }
            };

        let listen = args.listen.or(file.listen);
        let listen_tls = args.listen_tls.or(file.listen_tls);
        if listen.is_none() && listen_tls.is_none() {
            return Err(invalid(
                "listen",
                "no listener: set --listen and/or --listen-tls",
            ));
        }
        let allow_insecure_plain =
            args.allow_insecure_plain || file.allow_insecure_plain.unwrap_or(false);
        if let Some(addr) = listen {
            if !addr.ip().is_loopback() && !allow_insecure_plain {
                return Err(invalid(
                    "listen",
                    format!("{addr} is not a loopback address: plain TCP carries registry passwords unencrypted; use --listen-tls, or --allow-insecure-plain if the network is private"),
                ));
            }
        }
        let allow_list = if args.tls_client_allow.is_empty() {
            file.tls_client_allow.clone().unwrap_or_default()
        } else {
            args.tls_client_allow.clone()
        };
        let mut client_allow = Vec::new();
        for fp in &allow_list {
            client_allow.push(crate::access::normalise_fingerprint(fp).ok_or_else(|| {
                invalid(
                    "tls_client_allow",
                    format!("`{fp}` is not a SHA-256 fingerprint (64 hex digits)"),
                )
            })?);
        }
        let tls_cert = args.tls_cert.clone().or(rel(file.tls_cert));
        let tls_key = args.tls_key.clone().or(rel(file.tls_key));
        let env = &args.env_secrets;
        let tls_cert = pem_input(
            "tls_cert",
            tls_cert,
            "EPPMUX_TLS_CERT_PEM",
            &env.tls_cert_pem,
        )?;
        let tls_key = pem_input("tls_key", tls_key, "EPPMUX_TLS_KEY_PEM", &env.tls_key_pem)?;
        let tls_key_passphrase = passphrase_input(
            "tls_key_passphrase_file",
            args.tls_key_passphrase_file
                .clone()
                .or(rel(file.tls_key_passphrase_file)),
            "EPPMUX_TLS_KEY_PASSPHRASE",
            &env.tls_key_passphrase,
        )?;
        let tls_client_ca = args.tls_client_ca.clone().or(rel(file.tls_client_ca));
        if !client_allow.is_empty() && tls_client_ca.is_none() {
            return Err(invalid(
                "tls_client_allow",
                "needs --tls-client-ca (client certificates are only asked for then)",
            ));
        }
        let tls = match (listen_tls, tls_cert, tls_key) {
            (Some(_), Some(cert), Some(key)) => Some(ServerTls {
                cert,
                key: KeySource {
                    pem: key,
                    passphrase: tls_key_passphrase,
                },
                client_ca: tls_client_ca,
                client_allow,
            }),
            (Some(_), None, _) => {
                return Err(invalid(
                    "tls_cert",
                    "--listen-tls needs --tls-cert (or EPPMUX_TLS_CERT_PEM)",
                ))
            }
            (Some(_), _, None) => {
                return Err(invalid(
                    "tls_key",
                    "--listen-tls needs --tls-key (or EPPMUX_TLS_KEY_PEM)",
                ))
            }
            (None, _, _) => None,
        };

        let addr = args.upstream.clone().or(file.upstream).ok_or_else(|| {
            invalid(
                "upstream",
                "the registry address is required (--upstream HOST:PORT)",
            )
        })?;
        let host = split_host_port(&addr)
            .ok_or_else(|| invalid("upstream", format!("`{addr}` is not HOST:PORT")))?;
        let server_name = args
            .upstream_server_name
            .clone()
            .or(file.upstream_server_name)
            .unwrap_or_else(|| host.to_string());
        if rustls_pki_types::ServerName::try_from(server_name.clone()).is_err() {
            return Err(invalid(
                "upstream_server_name",
                format!("`{server_name}` is not a DNS name or IP address"),
            ));
        }
        let upstream_key_passphrase = passphrase_input(
            "upstream_key_passphrase_file",
            args.upstream_key_passphrase_file
                .clone()
                .or(rel(file.upstream_key_passphrase_file)),
            "EPPMUX_UPSTREAM_KEY_PASSPHRASE",
            &env.upstream_key_passphrase,
        )?;
        let upstream = UpstreamConfig {
            addr,
            server_name,
            ca: args.upstream_ca.clone().or(rel(file.upstream_ca)),
            cert: pem_input(
                "upstream_cert",
                args.upstream_cert.clone().or(rel(file.upstream_cert)),
                "EPPMUX_UPSTREAM_CERT_PEM",
                &env.upstream_cert_pem,
            )?
            .ok_or_else(|| {
                invalid(
                    "upstream_cert",
                    "a client certificate for the registry is required (RFC 5734 §9): --upstream-cert or EPPMUX_UPSTREAM_CERT_PEM",
                )
            })?,
            key: KeySource {
                pem: pem_input(
                    "upstream_key",
                    args.upstream_key.clone().or(rel(file.upstream_key)),
                    "EPPMUX_UPSTREAM_KEY_PEM",
                    &env.upstream_key_pem,
                )?
                .ok_or_else(|| {
                    invalid(
                        "upstream_key",
                        "the client certificate's private key is required: --upstream-key or EPPMUX_UPSTREAM_KEY_PEM",
                    )
                })?,
                passphrase: upstream_key_passphrase,
            },
            step_timeout: dur(
                "upstream_timeout",
                args.upstream_timeout,
                file.upstream_timeout,
                Duration::from_secs(10),
            )?,
            response_timeout: dur(
                "response_timeout",
                args.response_timeout,
                file.response_timeout,
                Duration::from_secs(60),
            )?,
        };

        let keepalive = dur(
            "keepalive",
            args.keepalive,
            file.keepalive,
            DEFAULT_KEEPALIVE,
        )?;
        let lifecycle = SessionLifecycle {
            keepalive: (!keepalive.is_zero()).then_some(keepalive),
            max_age: match (args.max_session_age, file.max_session_age) {
                (Some(d), _) => Some(d),
                (None, Some(s)) => {
                    Some(parse_duration(&s).map_err(|m| invalid("max_session_age", m))?)
                }
                (None, None) => None,
            },
            max_commands: args.max_session_commands.or(file.max_session_commands),
            pipeline_depth: args.pipeline_depth.or(file.pipeline_depth).unwrap_or(1),
            suspect_2002_after: SUSPECT_2002_AFTER,
        };
        let logins_per_minute = args.max_logins_per_minute.or(file.max_logins_per_minute);
        let commands_per_second = args
            .max_commands_per_second
            .or(file.max_commands_per_second);
        let mut accounts = Vec::new();
        for acc in file.accounts {
            let mut own = lifecycle;
            if let Some(k) = &acc.keepalive {
                let k = parse_duration(k).map_err(|m| invalid("account.keepalive", m))?;
                own.keepalive = (!k.is_zero()).then_some(k);
            }
            if let Some(a) = &acc.max_session_age {
                own.max_age =
                    Some(parse_duration(a).map_err(|m| invalid("account.max_session_age", m))?);
            }
            if acc.max_session_commands.is_some() {
                own.max_commands = acc.max_session_commands;
            }
            if let Some(depth) = acc.pipeline_depth {
                own.pipeline_depth = depth;
            }
            let password = match (acc.password, rel(acc.password_file)) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "account.password",
                        format!(
                            "account {}: set password or password_file, not both",
                            acc.clid
                        ),
                    ))
                }
                (Some(p), None) => Secret::new(p),
                (None, Some(path)) => read_password_file("account.password_file", &path)?,
                (None, None) => {
                    return Err(invalid(
                        "account.password",
                        format!(
                            "account {}: password or password_file is required",
                            acc.clid
                        ),
                    ))
                }
            };
            let local_password = match (acc.local_password, rel(acc.local_password_file)) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "account.local_password",
                        format!(
                            "account {}: set local_password or local_password_file, not both",
                            acc.clid
                        ),
                    ))
                }
                (Some(p), None) => Some(Secret::new(p)),
                (None, Some(path)) => {
                    Some(read_password_file("account.local_password_file", &path)?)
                }
                (None, None) => None,
            };
            let mut local_client_certs = Vec::new();
            for fp in acc.local_client_certs.unwrap_or_default() {
                local_client_certs.push(crate::access::normalise_fingerprint(&fp).ok_or_else(
                    || {
                        invalid(
                            "account.local_client_certs",
                            format!("`{fp}` is not a SHA-256 fingerprint (64 hex digits)"),
                        )
                    },
                )?);
            }
            accounts.push(AccountConfig {
                clid: acc.clid,
                password,
                local: LocalLogin {
                    clid: acc.local_clid,
                    password: local_password,
                    client_certs: local_client_certs,
                },
                pool_min: acc.pool_min.unwrap_or(DEFAULT_POOL_MIN),
                pool_max: acc.pool_max.unwrap_or(DEFAULT_POOL_MAX),
                obj_uris: acc.obj_uris,
                ext_uris: acc.ext_uris,
                lifecycle: own,
                max_logins_per_minute: acc.max_logins_per_minute.or(logins_per_minute),
                max_commands_per_second: acc.max_commands_per_second.or(commands_per_second),
            });
        }
        if let Some(clid) = &args.clid {
            let password = match (&args.password_file, env_password) {
                (Some(path), _) => read_password_file("password_file", path)?,
                (None, Some(p)) => Secret::new(p),
                (None, None) => {
                    return Err(invalid(
                        "password",
                        "--clid needs --password-file or EPPMUX_PASSWORD",
                    ))
                }
            };
            accounts.push(AccountConfig {
                clid: clid.clone(),
                password,
                local: LocalLogin::default(),
                pool_min: args.pool_min.unwrap_or(DEFAULT_POOL_MIN),
                pool_max: args.pool_max.unwrap_or(DEFAULT_POOL_MAX),
                obj_uris: None,
                ext_uris: None,
                lifecycle,
                max_logins_per_minute: logins_per_minute,
                max_commands_per_second: commands_per_second,
            });
        } else if args.pool_min.is_some() || args.pool_max.is_some() {
            return Err(invalid(
                "pool_min",
                "--pool-min/--pool-max apply to --clid; set pool sizes per [[account]] in the file",
            ));
        }
        if accounts.is_empty() {
            return Err(invalid(
                "clid",
                "no registrar account: set --clid or add [[account]] tables to the file",
            ));
        }
        for (i, acc) in accounts.iter().enumerate() {
            if acc.clid.is_empty() {
                return Err(invalid("clid", "must not be empty"));
            }
            if acc.password.is_empty() {
                return Err(invalid(
                    "password",
                    format!("account {}: the password is empty", acc.clid),
                ));
            }
            if acc.pool_max == 0 {
                return Err(invalid(
                    "pool_max",
                    format!("account {}: must be at least 1", acc.clid),
                ));
            }
            if acc.pool_min > acc.pool_max {
                return Err(invalid(
                    "pool_min",
                    format!(
                        "account {}: pool_min ({}) exceeds pool_max ({})",
                        acc.clid, acc.pool_min, acc.pool_max
                    ),
                ));
            }
            if acc.lifecycle.max_commands == Some(0)
                || acc.lifecycle.max_age == Some(Duration::ZERO)
            {
                return Err(invalid(
                    "max_session_commands",
                    format!("account {}: session limits must be above zero", acc.clid),
                ));
            }
            if !(1..=64).contains(&acc.lifecycle.pipeline_depth) {
                return Err(invalid(
                    "pipeline_depth",
                    format!("account {}: must be between 1 and 64", acc.clid),
                ));
            }
            if acc.max_logins_per_minute == Some(0) {
                return Err(invalid(
                    "max_logins_per_minute",
                    format!("account {}: must be at least 1", acc.clid),
                ));
            }
            if acc
                .max_commands_per_second
                .is_some_and(|r| !(r.is_finite() && r > 0.0))
            {
                return Err(invalid(
                    "max_commands_per_second",
                    format!("account {}: must be a number above zero", acc.clid),
                ));
            }
            if accounts[..i].iter().any(|a| a.clid == acc.clid) {
                return Err(invalid(
                    "clid",
                    format!("account {} is configured twice", acc.clid),
                ));
            }
            if accounts[..i]
                .iter()
                .any(|a| a.local_clid() == acc.local_clid())
            {
                return Err(invalid(
                    "account.local_clid",
                    format!(
                        "local clID {} is used by two accounts: a local login must name one",
                        acc.local_clid()
                    ),
                ));
            }
            if !acc.local.client_certs.is_empty()
                && tls.as_ref().is_none_or(|t| t.client_ca.is_none())
            {
                return Err(invalid(
                    "account.local_client_certs",
                    "needs tls_client_ca (client certificates are only asked for then)",
                ));
            }
        }

        let max_frame = args
            .max_frame_size
            .or(file.max_frame_size)
            .unwrap_or(DEFAULT_MAX_FRAME);
        if max_frame < 64 || max_frame > u32::MAX as usize {
            return Err(invalid(
                "max_frame_size",
                format!("{max_frame} is outside 64..=4294967295"),
            ));
        }
        let max_login_failures = args
            .max_login_failures
            .or(file.max_login_failures)
            .unwrap_or(LIMITS.max_login_failures);
        if max_login_failures == 0 {
            return Err(invalid("max_login_failures", "must be at least 1"));
        }
        let max_frame_before_login = args
            .max_frame_size_before_login
            .or(file.max_frame_size_before_login)
            .unwrap_or(LIMITS.max_frame_before_login)
            .min(max_frame);
        if max_frame_before_login < 64 {
            return Err(invalid(
                "max_frame_size_before_login",
                "must be at least 64",
            ));
        }
        let admin_token = match (
            args.admin_token_file.clone().or(rel(file.admin_token_file)),
            std::env::var("EPPMUX_ADMIN_TOKEN").ok(),
        ) {
            (Some(path), _) => Some(read_password_file("admin_token_file", &path)?),
            (None, Some(token)) => Some(Secret::new(token)),
            (None, None) => None,
        };
        if admin_token.as_ref().is_some_and(Secret::is_empty) {
            return Err(invalid("admin_token_file", "the admin token is empty"));
        }
        Ok(Config {
            listen,
            listen_tls,
            tls,
            upstream,
            accounts,
            limits: ClientLimits {
                max_frame,
                max_frame_before_login,
                login_timeout: dur(
                    "login_timeout",
                    args.login_timeout,
                    file.login_timeout,
                    LIMITS.login_timeout,
                )?,
                max_clients_per_source: match args
                    .max_clients_per_source
                    .or(file.max_clients_per_source)
                    .unwrap_or(LIMITS.max_clients_per_source)
                {
                    0 => return Err(invalid("max_clients_per_source", "must be at least 1")),
                    n => n,
                },
                frame_timeout: dur(
                    "frame_timeout",
                    args.frame_timeout,
                    file.frame_timeout,
                    LIMITS.frame_timeout,
                )?,
                idle_timeout: dur(
                    "client_idle_timeout",
                    args.client_idle_timeout,
                    file.client_idle_timeout,
                    LIMITS.idle_timeout,
                )?,
                max_clients: match args
                    .max_clients
                    .or(file.max_clients)
                    .unwrap_or(LIMITS.max_clients)
                {
                    0 => return Err(invalid("max_clients", "must be at least 1")),
                    n => n,
                },
                max_login_failures,
                login_failures_per_minute: args
                    .login_failures_per_minute
                    .or(file.login_failures_per_minute)
                    .unwrap_or(LIMITS.login_failures_per_minute),
            },
            admin: args.admin.or(file.admin),
            greeting_wait: dur(
                "greeting_wait",
                args.greeting_wait,
                file.greeting_wait,
                Duration::from_secs(3),
            )?,
            queue_wait: dur(
                "queue_wait",
                args.queue_wait,
                file.queue_wait,
                Duration::from_secs(2),
            )?,
            queue_max: match args.queue_max.or(file.queue_max).unwrap_or(1000) {
                0 => return Err(invalid("queue_max", "must be at least 1")),
                n => n,
            },
            queue_max_bytes: match args
                .queue_max_bytes
                .or(file.queue_max_bytes)
                .unwrap_or(DEFAULT_QUEUE_MAX_BYTES)
            {
                n if n < max_frame => {
                    return Err(invalid(
                        "queue_max_bytes",
                        format!("{n} is below max_frame_size ({max_frame}): no command could wait"),
                    ))
                }
                n => n,
            },
            admin_token,
            session_limit_hold: dur(
                "session_limit_hold",
                args.session_limit_hold,
                file.session_limit_hold,
                Duration::from_secs(300),
            )?,
            shutdown_timeout: dur(
                "shutdown_timeout",
                args.shutdown_timeout,
                file.shutdown_timeout,
                Duration::from_secs(10),
            )?,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.into(),
        message: e.to_string(),
    })
}

fn read_password_file(key: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    // Files written by `echo` or editors end with a newline that is not part of the password.
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

/// The host part of HOST:PORT or [V6]:PORT, if the port is a number.
fn split_host_port(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RunArgs {
        RunArgs {
            listen: Some("127.0.0.1:1700".parse().unwrap()),
            upstream: Some("epp.example.net:700".into()),
            upstream_cert: Some("c.pem".into()),
            upstream_key: Some("k.pem".into()),
            clid: Some("r1".into()),
            ..RunArgs::default()
        }
    }

    fn err_key(args: &RunArgs, pw: Option<&str>) -> String {
        match Config::from_sources(args, pw.map(String::from)) {
            Err(ConfigError::Invalid { key, .. }) => key.to_string(),
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn single_account_from_flags() {
        let cfg = Config::from_sources(&base(), Some("pw".into())).unwrap();
        assert_eq!(cfg.upstream.server_name, "epp.example.net");
        assert_eq!(cfg.accounts.len(), 1);
        assert_eq!((cfg.accounts[0].pool_min, cfg.accounts[0].pool_max), (1, 4));
        assert!(
            !format!("{cfg:?}").contains("pw\""),
            "password must not be in Debug output"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(err_key(&base(), None), "password");
        let mut a = base();
        a.pool_min = Some(5);
        a.pool_max = Some(2);
        assert_eq!(err_key(&a, Some("pw")), "pool_min");
        let mut a = base();
        a.listen = None;
        assert_eq!(err_key(&a, Some("pw")), "listen");
        let mut a = base();
        a.listen_tls = Some("127.0.0.1:700".parse().unwrap());
        assert_eq!(err_key(&a, Some("pw")), "tls_cert");
        let mut a = base();
        a.upstream = Some("no-port".into());
        assert_eq!(err_key(&a, Some("pw")), "upstream");
        let mut a = base();
        a.upstream_cert = None;
        assert_eq!(err_key(&a, Some("pw")), "upstream_cert");
        let mut a = base();
        a.listen = Some("0.0.0.0:1700".parse().unwrap());
        assert_eq!(
            err_key(&a, Some("pw")),
            "listen",
            "plain TCP off loopback needs an explicit opt-in"
        );
        a.allow_insecure_plain = true;
        assert!(Config::from_sources(&a, Some("pw".into())).is_ok());
        let mut a = base();
        a.tls_client_allow = vec!["sha256:1234".into()];
        assert_eq!(err_key(&a, Some("pw")), "tls_client_allow");
    }

    #[test]
    fn the_example_file_is_valid_and_names_every_option() {
        use clap::CommandFactory;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("eppmux.example.toml")).unwrap();
        // Every option a file can hold appears in the example, at least as a comment.
        let cli = Cli::command();
        for arg in cli.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if [
                "config",
                "print-config",
                "clid",
                "password-file",
                "pool-min",
                "pool-max",
                "help",
                "version",
            ]
            .contains(&long)
            {
                continue;
            }
            let key = long.replace('-', "_");
            assert!(
                text.contains(&format!("{key} =")),
                "eppmux.example.toml lacks `{key}`"
            );
        }
        // And it parses, once its password file is a real one.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "x\n").unwrap();
        let text = text.replace(
            "/run/secrets/registrar1",
            &dir.path().join("pw").display().to_string(),
        );
        let path = dir.path().join("eppmux.toml");
        std::fs::write(&path, text).unwrap();
        let args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        let cfg = Config::from_sources(&args, None).unwrap();
        assert_eq!(cfg.accounts[0].clid, "registrar1");
        assert_eq!(cfg.queue_wait, Duration::from_secs(2));
        assert_eq!(cfg.accounts[0].lifecycle.keepalive, Some(DEFAULT_KEEPALIVE));
    }

    #[test]
    fn file_with_accounts_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw2"), "second\n").unwrap();
        let path = dir.path().join("eppmux.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:1701"
upstream = "127.0.0.1:700"
upstream_server_name = "registry.example"
upstream_cert = "client.pem"
upstream_key = "client-key.pem"
queue_wait = "250ms"
[[account]]
clid = "a1"
password = "first"
pool_max = 2
[[account]]
clid = "a2"
password_file = "pw2"
pool_min = 0
"#,
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        };
        let cfg = Config::from_sources(&args, None).unwrap();
        assert_eq!(cfg.accounts.len(), 2);
        assert!(cfg.accounts[1].password.ct_eq("second"));
        assert_eq!(cfg.upstream.cert, dir.path().join("client.pem"));
        assert_eq!(cfg.queue_wait, Duration::from_millis(250));
        // A flag beats the file.
        let args = RunArgs {
            config: Some(path.clone()),
            queue_wait: Some(Duration::from_secs(1)),
            ..RunArgs::default()
        };
        assert_eq!(
            Config::from_sources(&args, None).unwrap().queue_wait,
            Duration::from_secs(1)
        );
        // Unknown keys are refused, by name.
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nbogus_key = 1\n").unwrap();
        let args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        let msg = Config::from_sources(&args, None).unwrap_err().to_string();
        assert!(msg.contains("bogus_key"), "{msg}");
    }
    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    #[test]
    fn certificate_and_key_may_come_from_the_environment_and_never_show() {
        let key_pem = std::fs::read_to_string(fixture("rsa-key-pkcs8-aes256.pem")).unwrap();
        let cert_pem = std::fs::read_to_string(fixture("rsa.pem")).unwrap();
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let mut a = base();
        a.upstream_cert = None;
        a.upstream_key = None;
        // getgov keeps both base64-encoded; the passphrase as plain text.
        a.env_secrets = EnvSecrets::from_lookup(|var| match var {
            "EPPMUX_UPSTREAM_CERT_PEM" => Some(b64(&cert_pem)),
            "EPPMUX_UPSTREAM_KEY_PEM" => Some(key_pem.clone()),
            "EPPMUX_UPSTREAM_KEY_PASSPHRASE" => Some("eppmux fixture passphrase".into()),
            "EPPMUX_TLS_KEY_PASSPHRASE" => Some(String::new()),
            _ => None,
        });
        let cfg = Config::from_sources(&a, Some("pw".into())).unwrap();
        assert_eq!(
            cfg.upstream.cert.to_string(),
            "<from EPPMUX_UPSTREAM_CERT_PEM>"
        );
        assert!(
            cfg.upstream.key.decode().is_ok(),
            "decrypts with the passphrase"
        );
        let shown = cfg.to_redacted_toml();
        assert!(
            shown.contains("key = \"<from EPPMUX_UPSTREAM_KEY_PEM> (passphrase <redacted>)\""),
            "{shown}"
        );
        for secret in [
            "PRIVATE KEY",
            "CERTIFICATE",
            "fixture passphrase",
            &b64(&cert_pem)[..20],
        ] {
            assert!(!shown.contains(secret), "{secret} in:\n{shown}");
            assert!(!format!("{cfg:?}").contains(secret), "{secret} in Debug");
        }
    }

    #[test]
    fn a_file_and_its_environment_variable_together_are_refused_naming_both() {
        let mut a = base();
        a.env_secrets.upstream_key_pem = Some(Secret::new("-----BEGIN PRIVATE KEY-----"));
        let msg = Config::from_sources(&a, Some("pw".into()))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("upstream_key:")
                && msg.contains("k.pem")
                && msg.contains("EPPMUX_UPSTREAM_KEY_PEM"),
            "{msg}"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pass"), "p\n").unwrap();
        let mut a = base();
        a.upstream_key_passphrase_file = Some(dir.path().join("pass"));
        a.env_secrets.upstream_key_passphrase = Some(Secret::new("p"));
        let msg = Config::from_sources(&a, Some("pw".into()))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("upstream_key_passphrase_file:")
                && msg.contains("pass")
                && msg.contains("EPPMUX_UPSTREAM_KEY_PASSPHRASE"),
            "{msg}"
        );

        let mut a = base();
        a.env_secrets.upstream_cert_pem = Some(Secret::new("%% not base64 %%"));
        a.upstream_cert = None;
        let msg = Config::from_sources(&a, Some("pw".into()))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("upstream_cert: EPPMUX_UPSTREAM_CERT_PEM") && msg.contains("not PEM"),
            "{msg}"
        );
    }

    #[test]
    fn passphrase_files_in_the_config_file_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("up-pass"), "upstream pass\n").unwrap();
        std::fs::write(dir.path().join("tls-pass"), "listener pass\n").unwrap();
        let path = dir.path().join("eppmux.toml");
        std::fs::write(
            &path,
            r#"
listen_tls = "127.0.0.1:1700"
tls_cert = "c.pem"
tls_key = "k.pem"
tls_key_passphrase_file = "tls-pass"
upstream = "127.0.0.1:700"
upstream_cert = "client.pem"
upstream_key = "client-key.pem"
upstream_key_passphrase_file = "up-pass"
[[account]]
clid = "a1"
password = "first"
"#,
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        let cfg = Config::from_sources(&args, None).unwrap();
        let pass = |k: &KeySource| k.passphrase.as_ref().map(|p| p.expose().to_string());
        assert_eq!(pass(&cfg.upstream.key).as_deref(), Some("upstream pass"));
        assert_eq!(
            pass(&cfg.tls.as_ref().unwrap().key).as_deref(),
            Some("listener pass")
        );
    }
}
