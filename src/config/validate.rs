//! From the options in effect to the [`Config`] eppmux runs with, one section at a time: the
//! process, each registry (listeners, TLS, upstream, accounts), then what spans registries
//! (listener addresses, names). Each error names the key, where its value came from, and for a
//! registry or account option which one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::layers::{Origin, Origins, Resolved};
use super::options::{NamedRegistry, ProcessOptions, RegistryOptions, UpstreamTls};
use super::{
    ClientLimits, Config, ConfigError, EnvSecrets, RegistryConfig, ServerTls, UpstreamConfig,
};
use crate::keys::{KeySource, PemSource};
use crate::secret::Secret;

/// A place in the resolved options — the top level, a `[[registry]]` table, an account — for
/// reading a key's origin and naming it in errors.
#[derive(Clone)]
pub(super) struct At<'a> {
    origins: &'a Origins,
    prefix: Vec<String>,
    /// "registry gov, account r1" for messages; empty at the top.
    context: String,
    /// Where unset options are inherited from (an account's registry).
    parent: Option<Box<At<'a>>>,
}

impl<'a> At<'a> {
    fn top(origins: &'a Origins) -> At<'a> {
        At {
            origins,
            prefix: Vec::new(),
            context: String::new(),
            parent: None,
        }
    }

    pub(super) fn within(&self, path: &[String], what: String) -> At<'a> {
        let mut prefix = self.prefix.clone();
        prefix.extend_from_slice(path);
        let context = match (self.context.is_empty(), what.is_empty()) {
            (true, _) => what,
            (false, true) => self.context.clone(),
            (false, false) => format!("{}, {what}", self.context),
        };
        At {
            origins: self.origins,
            prefix,
            context,
            parent: Some(Box::new(self.clone())),
        }
    }

    pub(super) fn path(&self, key: &str) -> Vec<String> {
        let mut path = self.prefix.clone();
        path.push(key.to_string());
        path
    }

    /// Where `key`'s value came from: here, or where it was inherited from.
    pub(super) fn origin(&self, key: &str) -> Origin {
        match (self.origins.of(&self.path(key)), &self.parent) {
            (Origin::Default, Some(parent)) => parent.origin(key),
            (origin, _) => origin,
        }
    }

    pub(super) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let message = if self.context.is_empty() {
            message
        } else {
            format!("{}: {message}", self.context)
        };
        ConfigError::invalid(key, self.origin(key), message)
    }

    /// A path option, relative to the file's directory when it came from the file.
    pub(super) fn file(&self, key: &str, value: &Option<PathBuf>) -> Option<PathBuf> {
        let value = value.clone()?;
        match self.origins.base_dir(&self.path(key)) {
            Some(dir) if value.is_relative() => Some(dir.join(value)),
            _ => Some(value),
        }
    }

    /// A value every declaration gives a default to.
    pub(super) fn required<T: Clone>(
        &self,
        key: &str,
        value: &Option<T>,
    ) -> Result<T, ConfigError> {
        value
            .clone()
            .ok_or_else(|| self.invalid(key, "missing (and it has no default)"))
    }

    pub(super) fn at_least<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        key: &str,
        value: &Option<T>,
        min: T,
    ) -> Result<T, ConfigError> {
        let v = self.required(key, value)?;
        if v < min {
            return Err(self.invalid(key, format!("must be at least {min}")));
        }
        Ok(v)
    }
}

pub(super) fn config(resolved: &Resolved, env: &EnvSecrets) -> Result<Config, ConfigError> {
    let at = At::top(&resolved.origins);
    let o = &resolved.options;
    let limits = limits(&o.process, &at)?;
    let registries = if o.registries.is_empty() {
        vec![registry(None, &o.registry, &at, env, limits.max_frame)?]
    } else {
        if let Some(var) = env.registry_vars().first() {
            return Err(ConfigError::invalid(
                "registry",
                Origin::Env(var.to_string()),
                "variables set the flat form only, and the file has [[registry]] tables",
            ));
        }
        let none = EnvSecrets::default();
        let mut out = Vec::new();
        for (i, named) in o.registries.iter().enumerate() {
            let inner = at.within(
                &["registry".into(), i.to_string()],
                format!("registry {}", named.name),
            );
            check_name(named, &inner, &out)?;
            out.push(registry(
                Some(named.name.clone()),
                &named.options,
                &inner,
                &none,
                limits.max_frame,
            )?);
        }
        out
    };
    check_listeners(&registries)?;
    let p = &o.process;
    let admin_token = match (
        at.file("admin_token_file", &p.admin_token_file),
        &env.admin_token,
    ) {
        (Some(path), _) => Some(read_secret_file(&at, "admin_token_file", &path)?),
        (None, token) => token.clone(),
    };
    if admin_token.as_ref().is_some_and(Secret::is_empty) {
        return Err(at.invalid("admin_token_file", "the admin token is empty"));
    }
    Ok(Config {
        registries,
        limits,
        admin: p.admin,
        admin_token,
        shutdown_timeout: at.required("shutdown_timeout", &p.shutdown_timeout)?,
        log_format: at.required("log_format", &p.log_format)?,
        log_level: at.required("log_level", &p.log_level)?,
        audit_log: at.file("audit_log", &p.audit_log),
    })
}

fn limits(p: &ProcessOptions, at: &At<'_>) -> Result<ClientLimits, ConfigError> {
    let max_frame = at.at_least("max_frame_size", &p.max_frame_size, 64)?;
    if max_frame > u32::MAX as usize {
        return Err(at.invalid("max_frame_size", "must fit the 32-bit frame header"));
    }
    Ok(ClientLimits {
        max_frame,
        max_frame_before_login: at
            .at_least(
                "max_frame_size_before_login",
                &p.max_frame_size_before_login,
                64,
            )?
            .min(max_frame),
        frame_timeout: at.required("frame_timeout", &p.frame_timeout)?,
        idle_timeout: at.required("client_idle_timeout", &p.client_idle_timeout)?,
        login_timeout: at.required("login_timeout", &p.login_timeout)?,
        max_clients: at.at_least("max_clients", &p.max_clients, 1)?,
        max_clients_per_source: at.at_least(
            "max_clients_per_source",
            &p.max_clients_per_source,
            1,
        )?,
        max_login_failures: at.at_least("max_login_failures", &p.max_login_failures, 1)?,
        login_failures_per_minute: at.at_least(
            "login_failures_per_minute",
            &p.login_failures_per_minute,
            1,
        )?,
    })
}

fn check_name(
    named: &NamedRegistry,
    at: &At<'_>,
    before: &[RegistryConfig],
) -> Result<(), ConfigError> {
    let name = &named.name;
    let usable = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !usable {
        return Err(at.invalid(
            "name",
            format!("`{name}` is not a name (letters, digits, - _ .)"),
        ));
    }
    if before.iter().any(|r| r.name.as_deref() == Some(name)) {
        return Err(at.invalid("name", format!("two [[registry]] tables are named {name}")));
    }
    Ok(())
}

/// No two listeners on one address: a client must know which registry it reaches.
fn check_listeners(registries: &[RegistryConfig]) -> Result<(), ConfigError> {
    let mut seen: Vec<(SocketAddr, &RegistryConfig)> = Vec::new();
    for r in registries {
        // Port 0 asks the system for a free port: those never collide.
        for addr in r
            .listen
            .into_iter()
            .chain(r.listen_tls)
            .filter(|a| a.port() != 0)
        {
            if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr) {
                return Err(ConfigError::invalid(
                    "listen",
                    Origin::Default,
                    format!(
                        "{addr} is the listener of two registries ({} and {})",
                        display_name(other),
                        display_name(r)
                    ),
                ));
            }
            seen.push((addr, r));
        }
    }
    Ok(())
}

fn display_name(r: &RegistryConfig) -> &str {
    r.name.as_deref().unwrap_or("the unnamed registry")
}

fn registry(
    name: Option<String>,
    o: &RegistryOptions,
    at: &At<'_>,
    env: &EnvSecrets,
    max_frame: usize,
) -> Result<RegistryConfig, ConfigError> {
    let (listen, listen_tls) = listeners(o, at)?;
    let tls = listener_tls(o, listen_tls, at, env)?;
    let upstream = upstream(o, at, env)?;
    let accounts = super::accounts::accounts(o, at, env, tls.as_ref())?;
    let queue_max_bytes = at.required("queue_max_bytes", &o.queue_max_bytes)?;
    if queue_max_bytes < max_frame {
        return Err(at.invalid(
            "queue_max_bytes",
            format!(
                "{queue_max_bytes} is below max_frame_size ({max_frame}): no command could wait"
            ),
        ));
    }
    Ok(RegistryConfig {
        name,
        listen,
        listen_tls,
        tls,
        upstream,
        accounts,
        greeting_wait: at.required("greeting_wait", &o.greeting_wait)?,
        queue_wait: at.required("queue_wait", &o.queue_wait)?,
        queue_max: at.at_least("queue_max", &o.queue_max, 1)?,
        queue_max_bytes,
        session_limit_hold: at.required("session_limit_hold", &o.session_limit_hold)?,
        rotation_interval: at.required("rotation_interval", &o.rotation_interval)?,
    })
}

fn listeners(
    o: &RegistryOptions,
    at: &At<'_>,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ConfigError> {
    if o.listen.is_none() && o.listen_tls.is_none() {
        return Err(at.invalid("listen", "no listener: set --listen and/or --listen-tls"));
    }
    if let Some(addr) = o.listen {
        if !addr.ip().is_loopback() && !o.allow_insecure_plain.unwrap_or(false) {
            return Err(at.invalid(
                "listen",
                format!("{addr} is not a loopback address: plain TCP carries registry passwords unencrypted; use --listen-tls, or --allow-insecure-plain if the network is private"),
            ));
        }
    }
    Ok((o.listen, o.listen_tls))
}

fn listener_tls(
    o: &RegistryOptions,
    listen_tls: Option<SocketAddr>,
    at: &At<'_>,
    env: &EnvSecrets,
) -> Result<Option<ServerTls>, ConfigError> {
    let client_allow = fingerprints(at, "tls_client_allow", o.tls_client_allow.as_deref())?;
    let client_ca = at.file("tls_client_ca", &o.tls_client_ca);
    if !client_allow.is_empty() && client_ca.is_none() {
        return Err(at.invalid(
            "tls_client_allow",
            "needs --tls-client-ca (client certificates are only asked for then)",
        ));
    }
    let cert = pem_input(
        at,
        "tls_cert",
        &o.tls_cert,
        "EPPMUX_TLS_CERT_PEM",
        &env.tls_cert_pem,
    )?;
    let key = pem_input(
        at,
        "tls_key",
        &o.tls_key,
        "EPPMUX_TLS_KEY_PEM",
        &env.tls_key_pem,
    )?;
    let passphrase = passphrase_input(
        at,
        "tls_key_passphrase_file",
        &o.tls_key_passphrase_file,
        "EPPMUX_TLS_KEY_PASSPHRASE",
        &env.tls_key_passphrase,
    )?;
    match (listen_tls, cert, key) {
        (Some(_), Some(cert), Some(pem)) => Ok(Some(ServerTls {
            cert,
            key: KeySource { pem, passphrase },
            client_ca,
            client_allow,
        })),
        (Some(_), None, _) => Err(at.invalid(
            "tls_cert",
            "--listen-tls needs --tls-cert (or EPPMUX_TLS_CERT_PEM)",
        )),
        (Some(_), _, None) => Err(at.invalid(
            "tls_key",
            "--listen-tls needs --tls-key (or EPPMUX_TLS_KEY_PEM)",
        )),
        (None, _, _) => Ok(None),
    }
}

fn upstream(
    o: &RegistryOptions,
    at: &At<'_>,
    env: &EnvSecrets,
) -> Result<UpstreamConfig, ConfigError> {
    let addr = o.upstream.clone().ok_or_else(|| {
        at.invalid(
            "upstream",
            "the registry address is required (--upstream HOST:PORT)",
        )
    })?;
    let host = split_host_port(&addr)
        .ok_or_else(|| at.invalid("upstream", format!("`{addr}` is not HOST:PORT")))?;
    let server_name = o
        .upstream_server_name
        .clone()
        .unwrap_or_else(|| host.to_string());
    if rustls_pki_types::ServerName::try_from(server_name.clone()).is_err() {
        return Err(at.invalid(
            "upstream_server_name",
            format!("`{server_name}` is not a DNS name or IP address"),
        ));
    }
    let tls = at.required("upstream_tls", &o.upstream_tls)?;
    if tls == UpstreamTls::Openssl && !cfg!(feature = "openssl") {
        return Err(at.invalid(
            "upstream_tls",
            "\"openssl\" needs an eppmux built with the openssl feature: `cargo build --release --features openssl` (with Debian's libssl-dev and pkg-config installed); this build has only rustls",
        ));
    }
    let cert = pem_input(at, "upstream_cert", &o.upstream_cert, "EPPMUX_UPSTREAM_CERT_PEM", &env.upstream_cert_pem)?
        .ok_or_else(|| at.invalid("upstream_cert", "a client certificate for the registry is required (RFC 5734 §9): --upstream-cert or EPPMUX_UPSTREAM_CERT_PEM"))?;
    let pem = pem_input(at, "upstream_key", &o.upstream_key, "EPPMUX_UPSTREAM_KEY_PEM", &env.upstream_key_pem)?
        .ok_or_else(|| at.invalid("upstream_key", "the client certificate's private key is required: --upstream-key or EPPMUX_UPSTREAM_KEY_PEM"))?;
    let passphrase = passphrase_input(
        at,
        "upstream_key_passphrase_file",
        &o.upstream_key_passphrase_file,
        "EPPMUX_UPSTREAM_KEY_PASSPHRASE",
        &env.upstream_key_passphrase,
    )?;
    Ok(UpstreamConfig {
        addr,
        server_name,
        tls,
        ca: at.file("upstream_ca", &o.upstream_ca),
        cert,
        key: KeySource { pem, passphrase },
        step_timeout: at.required("upstream_timeout", &o.upstream_timeout)?,
        response_timeout: at.required("response_timeout", &o.response_timeout)?,
    })
}

pub(super) fn fingerprints(
    at: &At<'_>,
    key: &str,
    given: Option<&[String]>,
) -> Result<Vec<String>, ConfigError> {
    given
        .unwrap_or_default()
        .iter()
        .map(|fp| {
            crate::access::normalise_fingerprint(fp).ok_or_else(|| {
                at.invalid(
                    key,
                    format!("`{fp}` is not a SHA-256 fingerprint (64 hex digits)"),
                )
            })
        })
        .collect()
}

/// A file option and the `_PEM` variable that may replace it: one or the other, never both.
fn pem_input(
    at: &At<'_>,
    key: &str,
    file: &Option<PathBuf>,
    var: &str,
    value: &Option<Secret>,
) -> Result<Option<PemSource>, ConfigError> {
    match (at.file(key, file), value) {
        (Some(path), Some(_)) => Err(at.invalid(
            key,
            format!(
                "both a file ({}) and {var} are set; give one of them",
                path.display()
            ),
        )),
        (Some(path), None) => Ok(Some(PemSource::File(path))),
        (None, Some(v)) => PemSource::from_env_value(var, v.expose())
            .map(Some)
            .map_err(|e| at.invalid(key, format!("{var}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// A key passphrase from its file option or its variable (not both).
fn passphrase_input(
    at: &At<'_>,
    key: &str,
    file: &Option<PathBuf>,
    var: &str,
    value: &Option<Secret>,
) -> Result<Option<Secret>, ConfigError> {
    match (at.file(key, file), value) {
        (Some(path), Some(_)) => Err(at.invalid(
            key,
            format!(
                "both a passphrase file ({}) and {var} are set; give one of them",
                path.display()
            ),
        )),
        (Some(path), None) => Ok(Some(read_secret_file(at, key, &path)?).filter(|p| !p.is_empty())),
        (None, value) => Ok(value.clone()),
    }
}

pub(super) fn read_secret_file(at: &At<'_>, key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| at.invalid(key, format!("{}: {e}", path.display())))?;
    // Files written by `echo` or editors end with a newline that is not part of the secret.
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
