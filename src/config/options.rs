//! Every option of eppmux, declared once. Each field is at the same time a flag (with its
//! `EPPMUX_*` variable and its default, shown by `--help`), a key of the TOML file, a line of
//! `--print-config`, and a key the example file must name. Fields are `Option`s: "not given" is
//! different from any value, so that the layers (defaults, file, flags) can be stacked in
//! `layers.rs`; the defaults are the clap `default_value`s below, and nothing else.
//!
//! Three levels: [`ProcessOptions`] for the eppmux process as a whole, [`RegistryOptions`] for one
//! registry (the flat form of the file and every flag set the single unnamed registry;
//! `[[registry]]` tables name several), and [`SessionOptions`], which accounts may override.
//! Accounts ([`AccountOptions`]) and named registries are file-only.

// The doc comments here are `--help` text first: they name TOML tables as `[[account]]` and
// EPP elements as `<hello>`, which rustdoc would read as links and HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Everything the command line and the file can hold.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
pub struct Options {
    #[command(flatten)]
    #[serde(flatten)]
    pub process: ProcessOptions,
    /// The flat form: the single unnamed registry.
    #[command(flatten)]
    #[serde(flatten)]
    pub registry: RegistryOptions,
    /// `[[registry]]` tables: several registries, each with its own listeners.
    #[arg(skip)]
    #[serde(default, rename = "registry", skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<NamedRegistry>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NamedRegistry {
    /// Names it in logs, metrics, `/status` and `eppmux check --registry`.
    pub name: String,
    #[serde(flatten)]
    pub options: RegistryOptions,
}

/// Options of the eppmux process as a whole (never per registry).
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
pub struct ProcessOptions {
    /// Admin endpoint (HTTP: /metrics, /healthz, /readyz, /status), e.g. 127.0.0.1:9700 [default: off].
    #[arg(long, env = "EPPMUX_ADMIN", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// File with a bearer token the admin endpoint requires for /metrics and /status (or set
    /// EPPMUX_ADMIN_TOKEN); /healthz and /readyz stay open [default: none].
    #[arg(long, env = "EPPMUX_ADMIN_TOKEN_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Largest EPP frame accepted or sent, header included.
    #[arg(
        long,
        env = "EPPMUX_MAX_FRAME_SIZE",
        value_name = "BYTES",
        default_value = "1048576"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_size: Option<usize>,
    /// Largest frame accepted from a client that has not logged in (a login is well under 4 KiB).
    #[arg(
        long,
        env = "EPPMUX_MAX_FRAME_SIZE_BEFORE_LOGIN",
        value_name = "BYTES",
        default_value = "16384"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_size_before_login: Option<usize>,
    /// A client that starts a frame must finish it within this long.
    #[arg(long, env = "EPPMUX_FRAME_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub frame_timeout: Option<Duration>,
    /// Close client connections idle (between frames) this long.
    #[arg(long, env = "EPPMUX_CLIENT_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_idle_timeout: Option<Duration>,
    /// A client that has not logged in this long after connecting is closed.
    #[arg(long, env = "EPPMUX_LOGIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub login_timeout: Option<Duration>,
    /// Most client connections at once, over all listeners; at the limit the oldest connection
    /// that has not logged in makes room for a new one.
    #[arg(
        long,
        env = "EPPMUX_MAX_CLIENTS",
        value_name = "N",
        default_value = "4096"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<usize>,
    /// Client connections at once from one non-loopback host (an IPv6 /64 counts as one).
    #[arg(
        long,
        env = "EPPMUX_MAX_CLIENTS_PER_SOURCE",
        value_name = "N",
        default_value = "256"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients_per_source: Option<usize>,
    /// Failed local logins on one connection before 2501 and close.
    #[arg(
        long,
        env = "EPPMUX_MAX_LOGIN_FAILURES",
        value_name = "N",
        default_value = "3"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_login_failures: Option<u32>,
    /// Distinct wrong passwords per source host and clID per minute before logins from there are
    /// slowed (delayed, then taken one at a time).
    #[arg(
        long,
        env = "EPPMUX_LOGIN_FAILURES_PER_MINUTE",
        value_name = "N",
        default_value = "20"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_failures_per_minute: Option<u32>,
    /// On SIGTERM/SIGINT, let in-flight commands finish for at most this long.
    #[arg(long, env = "EPPMUX_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub shutdown_timeout: Option<Duration>,
    /// Log format.
    #[arg(long, env = "EPPMUX_LOG_FORMAT", value_enum, default_value = "text")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing's EnvFilter syntax, e.g. `info` or `eppmux=debug`).
    #[arg(
        long,
        env = "EPPMUX_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Also write the audit events (one per command, login and logout) as JSON lines to this
    /// file; reopened on SIGHUP, for logrotate.
    #[arg(long, env = "EPPMUX_AUDIT_LOG", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TLS stack of a registry's upstream sessions. Both variants exist in every build, so that a
/// configuration asking for openssl in a build without it gets an error naming the key, not
/// "unknown variant".
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    #[default]
    Rustls,
    Openssl,
}

/// Options of one registry: its local listeners, the registry itself, waiting and sessions.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
pub struct RegistryOptions {
    /// Plain-TCP listener address (e.g. 127.0.0.1:1701); loopback only unless allowed below.
    #[arg(long, env = "EPPMUX_LISTEN", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Allow --listen (plain TCP, no encryption) on a non-loopback address.
    #[arg(long, env = "EPPMUX_ALLOW_INSECURE_PLAIN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure_plain: Option<bool>,
    /// TLS listener address (e.g. 127.0.0.1:700); needs --tls-cert and --tls-key.
    #[arg(long, env = "EPPMUX_LISTEN_TLS", value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_tls: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener (or its content in EPPMUX_TLS_CERT_PEM).
    #[arg(long, env = "EPPMUX_TLS_CERT", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener (or its content in EPPMUX_TLS_KEY_PEM).
    #[arg(long, env = "EPPMUX_TLS_KEY", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted --tls-key (or set EPPMUX_TLS_KEY_PASSPHRASE).
    #[arg(long, env = "EPPMUX_TLS_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_passphrase_file: Option<PathBuf>,
    /// PEM CA bundle: when set, local TLS clients must present a certificate it signed.
    #[arg(long, env = "EPPMUX_TLS_CLIENT_CA", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: only client certificates with these SHA-256 fingerprints (repeatable).
    #[arg(
        long,
        env = "EPPMUX_TLS_CLIENT_ALLOW",
        value_name = "SHA256",
        value_delimiter = ','
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_allow: Option<Vec<String>>,
    /// Registry address.
    #[arg(long, env = "EPPMUX_UPSTREAM", value_name = "HOST:PORT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// PEM CA bundle that signed the registry's certificate [default: the system roots].
    #[arg(long, env = "EPPMUX_UPSTREAM_CA", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to the registry (or its content in EPPMUX_UPSTREAM_CERT_PEM).
    #[arg(long, env = "EPPMUX_UPSTREAM_CERT", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (or its content in EPPMUX_UPSTREAM_KEY_PEM).
    #[arg(long, env = "EPPMUX_UPSTREAM_KEY", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted --upstream-key (or set EPPMUX_UPSTREAM_KEY_PASSPHRASE).
    #[arg(long, env = "EPPMUX_UPSTREAM_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_key_passphrase_file: Option<PathBuf>,
    /// Name to verify the registry certificate against (and send as SNI) instead of HOST.
    #[arg(long, env = "EPPMUX_UPSTREAM_SERVER_NAME", value_name = "NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_server_name: Option<String>,
    /// TLS stack towards the registry: rustls, or openssl for a registry whose TLS rustls does not
    /// speak (TLS 1.2 with only CBC suites or RSA key exchange); openssl needs eppmux built with
    /// `--features openssl`.
    #[arg(
        long,
        env = "EPPMUX_UPSTREAM_TLS",
        value_enum,
        value_name = "STACK",
        default_value = "rustls"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// Timeout for each step of opening an upstream session: connect, TLS, greeting, login.
    #[arg(long, env = "EPPMUX_UPSTREAM_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub upstream_timeout: Option<Duration>,
    /// How long to wait for a registry response to a forwarded command (the write included).
    #[arg(long, env = "EPPMUX_RESPONSE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_timeout: Option<Duration>,
    /// How long a new client waits for a first registry greeting before being closed.
    #[arg(long, env = "EPPMUX_GREETING_WAIT", value_name = "DURATION", value_parser = parse_duration, default_value = "3s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub greeting_wait: Option<Duration>,
    /// How long a command waits for a free upstream session before a 2400 answer.
    #[arg(long, env = "EPPMUX_QUEUE_WAIT", value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub queue_wait: Option<Duration>,
    /// Most commands waiting for a free session per account; more get 2400 at once.
    #[arg(
        long,
        env = "EPPMUX_QUEUE_MAX",
        value_name = "N",
        default_value = "1000"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max: Option<usize>,
    /// Bytes of commands waiting for a session per account; more get 2400 at once.
    #[arg(
        long,
        env = "EPPMUX_QUEUE_MAX_BYTES",
        value_name = "BYTES",
        default_value = "67108864"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max_bytes: Option<usize>,
    /// After a 2502 (session limit) not explained by a session eppmux dropped, hold the account
    /// below its pool_max this long.
    #[arg(long, env = "EPPMUX_SESSION_LIMIT_HOLD", value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_limit_hold: Option<Duration>,
    /// Registrar account (clID) for the single-account form; the file's [[account]] tables name more.
    #[arg(long, env = "EPPMUX_CLID", value_name = "CLID")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clid: Option<String>,
    /// File holding the account's password (or set EPPMUX_PASSWORD).
    #[arg(long, env = "EPPMUX_PASSWORD_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding a new password for the account (or set EPPMUX_NEW_PASSWORD): the next session
    /// logs in with <newPW> to change it at the registry, later ones use it.
    #[arg(long, env = "EPPMUX_NEW_PASSWORD_FILE", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_password_file: Option<PathBuf>,
    /// After a reload changed an account's credentials (certificate, key, password, address),
    /// replace its sessions one at a time, this long apart.
    #[arg(long, env = "EPPMUX_ROTATION_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub rotation_interval: Option<Duration>,
    /// Upstream sessions opened at start, per account.
    #[arg(long, env = "EPPMUX_POOL_MIN", value_name = "N", default_value = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_min: Option<usize>,
    /// Most upstream sessions per account (keep it below the registry's cap).
    #[arg(long, env = "EPPMUX_POOL_MAX", value_name = "N", default_value = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_max: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub session: SessionOptions,
    /// `[[account]]` tables.
    #[arg(skip)]
    #[serde(default, rename = "account", skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountOptions>,
}

/// How upstream sessions live; per registry, and per account in `[[account]]` tables.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
pub struct SessionOptions {
    /// Send <hello> on an upstream session idle this long, before the registry drops it; 0s turns it off.
    #[arg(long, env = "EPPMUX_KEEPALIVE", value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub keepalive: Option<Duration>,
    /// Retire (finish, <logout>, replace) upstream sessions older than this [default: never].
    #[arg(long, env = "EPPMUX_MAX_SESSION_AGE", value_name = "DURATION", value_parser = parse_duration)]
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_session_age: Option<Duration>,
    /// Retire upstream sessions after this many commands [default: never].
    #[arg(long, env = "EPPMUX_MAX_SESSION_COMMANDS", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_commands: Option<u64>,
    /// Commands in flight at once on one upstream session (RFC 5734 §3 pipelining).
    #[arg(
        long,
        env = "EPPMUX_PIPELINE_DEPTH",
        value_name = "N",
        default_value = "1"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_depth: Option<usize>,
    /// Upstream logins per account per minute after a burst of pool_max; whatever goes wrong,
    /// eppmux never logs in faster [default: 2 × pool_max].
    #[arg(long, env = "EPPMUX_MAX_LOGINS_PER_MINUTE", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_logins_per_minute: Option<u32>,
    /// Commands sent to the registry per account per second; more wait in the queue (within the
    /// queue wait) [default: off].
    #[arg(long, env = "EPPMUX_MAX_COMMANDS_PER_SECOND", value_name = "RATE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_commands_per_second: Option<f64>,
}

/// One `[[account]]` table: a registrar account of a registry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AccountOptions {
    pub clid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// A new password: changed at the registry with <newPW> by the next session opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_min: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_max: Option<usize>,
    /// Login services; default: what the greeting advertises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obj_uris: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_uris: Option<Vec<String>>,
    /// The clID local clients log in with, when not the registry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_clid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_password_file: Option<PathBuf>,
    /// Client certificate fingerprints that log in as this account whatever password they send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_client_certs: Option<Vec<String>>,
    #[serde(flatten)]
    pub session: SessionOptions,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 3s or 2m: {e}"))
}
