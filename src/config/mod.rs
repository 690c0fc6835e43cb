//! Configuration. Every option is declared once, in [`options`]: a field that clap reads from a
//! flag or an `EPPMUX_*` variable and serde reads from the TOML file, with its default beside it.
//! `layers` stacks the defaults, the file and the command line into the options in effect
//! ([`Resolved`], what `--print-config` shows), and `validate` checks them, section by section,
//! into the [`Config`] the proxy runs with. Errors name the key and where its value came from: a
//! flag, a variable, the file and its line, or a default.
//!
//! Secrets never come from a flag (which `ps` and shell histories show): passwords and key
//! passphrases from files or the environment ([`EnvSecrets`]), certificates and keys from files or
//! `EPPMUX_*_PEM` variables.

mod accounts;
mod layers;
pub mod options;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::keys::{KeySource, PemSource};
use crate::secret::Secret;

pub use layers::{Explicit, Origin, Resolved};
pub use options::{parse_duration, LogFormat, Options, UpstreamTls};

/// The validated configuration eppmux runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// One or more registries, each with its own listeners, upstream and accounts.
    pub registries: Vec<RegistryConfig>,
    pub limits: ClientLimits,
    pub admin: Option<SocketAddr>,
    /// Bearer token for the admin endpoint's /metrics and /status.
    pub admin_token: Option<Secret>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where the audit events also go, as JSON lines (relative to the file it was named in).
    pub audit_log: Option<PathBuf>,
}

/// One registry: where its clients connect, how to reach it, its accounts and how commands wait.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryConfig {
    /// `None` for the single registry of the flat form.
    pub name: Option<String>,
    pub listen: Option<SocketAddr>,
    pub listen_tls: Option<SocketAddr>,
    pub tls: Option<ServerTls>,
    pub upstream: UpstreamConfig,
    pub accounts: Vec<AccountConfig>,
    #[serde(serialize_with = "ser_duration")]
    pub greeting_wait: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub queue_wait: Duration,
    /// Most commands waiting for a session, per account.
    pub queue_max: usize,
    /// Most bytes of commands waiting for a session, per account.
    pub queue_max_bytes: usize,
    #[serde(serialize_with = "ser_duration")]
    pub session_limit_hold: Duration,
    /// After a reload changed an account's credentials, its sessions are replaced one at a time,
    /// this long apart.
    #[serde(serialize_with = "ser_duration")]
    pub rotation_interval: Duration,
}

impl RegistryConfig {
    /// The name for logs, metrics and `/status`: empty for the unnamed registry.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("")
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

/// Limits on what local clients may do (process-wide).
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

impl ClientLimits {
    /// The frame limit before login: never above the limit after it.
    pub fn pre_login_max_frame(&self) -> usize {
        self.max_frame_before_login.min(self.max_frame)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// HOST:PORT as given.
    pub addr: String,
    /// Name the registry's certificate is verified against and sent as SNI.
    pub server_name: String,
    /// Which TLS stack opens the sessions (openssl only in a build with that feature).
    pub tls: UpstreamTls,
    pub ca: Option<PathBuf>,
    pub cert: PemSource,
    pub key: KeySource,
    #[serde(serialize_with = "ser_duration")]
    pub step_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub response_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccountConfig {
    pub clid: String,
    pub password: Secret,
    /// A password to change to at the registry (`<newPW>`); while set, either password is
    /// accepted from local clients and tried at the registry.
    pub new_password: Option<Secret>,
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

impl AccountConfig {
    /// The clID local clients log in with.
    pub fn local_clid(&self) -> &str {
        self.local.clid.as_deref().unwrap_or(&self.clid)
    }

    /// Whether `pw` is a password local clients may log in with, compared in constant time: the
    /// local password if one is set, else the registry password — or, while a change is
    /// configured, the new one (local clients hold the registry's password and may have been
    /// given either).
    pub fn local_password_matches(&self, pw: &Secret) -> bool {
        match &self.local.password {
            Some(local) => local.ct_eq(pw.expose()),
            None => {
                let old = self.password.ct_eq(pw.expose());
                let new = self
                    .new_password
                    .as_ref()
                    .is_some_and(|n| n.ct_eq(pw.expose()));
                old | new
            }
        }
    }
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
            keepalive: Some(Duration::from_secs(60)),
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

/// What only the environment may carry: secrets, which a flag would show to `ps` and shell
/// histories. Read by [`EnvSecrets::from_env`]; tests build it directly, so that they do not
/// depend on the process environment. Empty variables count as unset. All but the admin token
/// belong to the flat form's registry.
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    /// EPPMUX_PASSWORD: the password of `--clid`.
    pub password: Option<Secret>,
    /// EPPMUX_NEW_PASSWORD: the new password of `--clid` (see `new_password_file`).
    pub new_password: Option<Secret>,
    /// EPPMUX_ADMIN_TOKEN.
    pub admin_token: Option<Secret>,
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
            password: get("EPPMUX_PASSWORD"),
            new_password: get("EPPMUX_NEW_PASSWORD"),
            admin_token: get("EPPMUX_ADMIN_TOKEN"),
            upstream_cert_pem: get("EPPMUX_UPSTREAM_CERT_PEM"),
            upstream_key_pem: get("EPPMUX_UPSTREAM_KEY_PEM"),
            upstream_key_passphrase: get("EPPMUX_UPSTREAM_KEY_PASSPHRASE"),
            tls_cert_pem: get("EPPMUX_TLS_CERT_PEM"),
            tls_key_pem: get("EPPMUX_TLS_KEY_PEM"),
            tls_key_passphrase: get("EPPMUX_TLS_KEY_PASSPHRASE"),
        }
    }

    /// The variables set that belong to the flat form's registry, by name.
    fn registry_vars(&self) -> Vec<&'static str> {
        [
            ("EPPMUX_PASSWORD", &self.password),
            ("EPPMUX_NEW_PASSWORD", &self.new_password),
            ("EPPMUX_UPSTREAM_CERT_PEM", &self.upstream_cert_pem),
            ("EPPMUX_UPSTREAM_KEY_PEM", &self.upstream_key_pem),
            (
                "EPPMUX_UPSTREAM_KEY_PASSPHRASE",
                &self.upstream_key_passphrase,
            ),
            ("EPPMUX_TLS_CERT_PEM", &self.tls_cert_pem),
            ("EPPMUX_TLS_KEY_PEM", &self.tls_key_pem),
            ("EPPMUX_TLS_KEY_PASSPHRASE", &self.tls_key_passphrase),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(name, _)| name)
        .collect()
    }
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
    #[error("{key} ({origin}): {message}")]
    Invalid {
        key: String,
        origin: Origin,
        message: String,
    },
}

impl ConfigError {
    pub fn invalid(key: &str, origin: Origin, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin,
            message: message.into(),
        }
    }
}

impl Config {
    /// The configuration from the command line (`explicit`), the file it names, and the
    /// environment's secrets.
    pub fn from_sources(
        explicit: &Explicit,
        file: Option<&Path>,
        env: &EnvSecrets,
    ) -> Result<Config, ConfigError> {
        let resolved = layers::resolve(explicit, file)?;
        validate::config(&resolved, env)
    }

    /// The configuration of options set in code (the demo, tests), with every default applied.
    pub fn from_options(options: Options, env: &EnvSecrets) -> Result<Config, ConfigError> {
        Config::from_sources(&Explicit::from_caller(options), None, env)
    }

    /// Every registry's listeners, with the registry they belong to.
    pub fn listeners(&self) -> impl Iterator<Item = (SocketAddr, &RegistryConfig)> {
        self.registries.iter().flat_map(|r| {
            r.listen
                .into_iter()
                .chain(r.listen_tls)
                .map(move |addr| (addr, r))
        })
    }
}

impl Config {
    /// Where certificates and keys come from when not from a file named in the options (which
    /// `--print-config` shows already): environment variables, by name only; and that each
    /// account has a password, redacted.
    pub fn sources_summary(&self) -> String {
        let mut out = String::new();
        for r in &self.registries {
            let mut line = |key: &str, what: String| {
                out.push_str(&format!(
                    "# {}{key} = {what}\n",
                    r.name
                        .as_ref()
                        .map_or(String::new(), |n| format!("registry {n}: "))
                ));
            };
            if !matches!(r.upstream.cert, PemSource::File(_)) {
                line("upstream_cert", r.upstream.cert.to_string());
            }
            if !matches!(r.upstream.key.pem, PemSource::File(_))
                || r.upstream.key.passphrase.is_some()
            {
                line("upstream_key", r.upstream.key.to_string());
            }
            if let Some(tls) = &r.tls {
                if !matches!(tls.cert, PemSource::File(_)) {
                    line("tls_cert", tls.cert.to_string());
                }
                if !matches!(tls.key.pem, PemSource::File(_)) || tls.key.passphrase.is_some() {
                    line("tls_key", tls.key.to_string());
                }
            }
            for acc in &r.accounts {
                line(
                    &format!("account {} password", acc.clid),
                    acc.password.to_string(),
                );
            }
        }
        out
    }
}

impl Resolved {
    /// The options in effect as TOML, in the file's own syntax, secrets shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.options).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Resolves the options in effect (for `--print-config`) without validating them.
pub fn resolve(explicit: &Explicit, file: Option<&Path>) -> Result<Resolved, ConfigError> {
    layers::resolve(explicit, file)
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
