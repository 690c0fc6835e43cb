//! The accounts of one registry: `[[account]]` tables and the single `--clid` account, their
//! passwords, local credentials and session options (each unset one taken from the registry's).

use std::time::Duration;

use super::options::{AccountOptions, RegistryOptions, SessionOptions};
use super::validate::{fingerprints, read_secret_file, At};
use super::{
    AccountConfig, ConfigError, EnvSecrets, LocalLogin, ServerTls, SessionLifecycle,
    SUSPECT_2002_AFTER,
};
use crate::secret::Secret;

pub(super) fn accounts(
    o: &RegistryOptions,
    at: &At<'_>,
    env: &EnvSecrets,
    tls: Option<&ServerTls>,
) -> Result<Vec<AccountConfig>, ConfigError> {
    let mut accounts = Vec::new();
    for (i, acc) in o.accounts.iter().enumerate() {
        let inner = at.within(
            &["account".into(), i.to_string()],
            format!("account {}", acc.clid),
        );
        accounts.push(account(acc, o, &inner)?);
    }
    if let Some(clid) = &o.clid {
        let password = match (at.file("password_file", &o.password_file), &env.password) {
            (Some(path), _) => read_secret_file(at, "password_file", &path)?,
            (None, Some(p)) => p.clone(),
            (None, None) => {
                return Err(at.invalid(
                    "password",
                    "--clid needs --password-file or EPPMUX_PASSWORD",
                ))
            }
        };
        let new_password = match (
            at.file("new_password_file", &o.new_password_file),
            &env.new_password,
        ) {
            (Some(path), _) => Some(read_secret_file(at, "new_password_file", &path)?),
            (None, p) => p.clone(),
        };
        let single = AccountOptions {
            clid: clid.clone(),
            ..AccountOptions::default()
        };
        let mut acc = account_with(&single, password, o, at)?;
        acc.new_password = checked_new_password(new_password, &acc.password, at)?;
        acc.local = LocalLogin::default();
        accounts.push(acc);
    }
    if accounts.is_empty() {
        return Err(at.invalid(
            "clid",
            "no registrar account: set --clid or add [[account]] tables to the file",
        ));
    }
    for (i, acc) in accounts.iter().enumerate() {
        if accounts[..i].iter().any(|a| a.clid == acc.clid) {
            return Err(at.invalid("clid", format!("account {} is configured twice", acc.clid)));
        }
        if accounts[..i]
            .iter()
            .any(|a| a.local_clid() == acc.local_clid())
        {
            return Err(at.invalid(
                "local_clid",
                format!(
                    "local clID {} is used by two accounts: a local login must name one",
                    acc.local_clid()
                ),
            ));
        }
        if !acc.local.client_certs.is_empty() && tls.is_none_or(|t| t.client_ca.is_none()) {
            return Err(at.invalid(
                "local_client_certs",
                "needs tls_client_ca (client certificates are only asked for then)",
            ));
        }
    }
    Ok(accounts)
}

/// One `[[account]]` table, its unset options taken from its registry's.
pub(super) fn account(
    acc: &AccountOptions,
    r: &RegistryOptions,
    at: &At<'_>,
) -> Result<AccountConfig, ConfigError> {
    let password = secret_or_file(at, "password", &acc.password, &acc.password_file)?
        .ok_or_else(|| at.invalid("password", "password or password_file is required"))?;
    let new_password = secret_or_file(
        at,
        "new_password",
        &acc.new_password,
        &acc.new_password_file,
    )?;
    let mut out = account_with(acc, password, r, at)?;
    out.new_password = checked_new_password(new_password, &out.password, at)?;
    out.local = LocalLogin {
        clid: acc.local_clid.clone(),
        password: secret_or_file(
            at,
            "local_password",
            &acc.local_password,
            &acc.local_password_file,
        )?,
        client_certs: fingerprints(at, "local_client_certs", acc.local_client_certs.as_deref())?,
    };
    Ok(out)
}

/// A new password is one to change to: empty or equal to the current one is a mistake.
fn checked_new_password(
    new: Option<Secret>,
    current: &Secret,
    at: &At<'_>,
) -> Result<Option<Secret>, ConfigError> {
    match new {
        Some(n) if n.is_empty() => Err(at.invalid("new_password", "the new password is empty")),
        Some(n) if n.ct_eq(current.expose()) => Err(at.invalid(
            "new_password",
            "equals the password: once the change is done, move new_password into password and remove new_password",
        )),
        other => Ok(other),
    }
}

fn account_with(
    acc: &AccountOptions,
    password: Secret,
    r: &RegistryOptions,
    at: &At<'_>,
) -> Result<AccountConfig, ConfigError> {
    if acc.clid.is_empty() {
        return Err(at.invalid("clid", "must not be empty"));
    }
    if password.is_empty() {
        return Err(at.invalid("password", "the password is empty"));
    }
    let pool_min = at.required("pool_min", &acc.pool_min.or(r.pool_min))?;
    let pool_max = at.at_least("pool_max", &acc.pool_max.or(r.pool_max), 1)?;
    if pool_min > pool_max {
        return Err(at.invalid(
            "pool_min",
            format!("pool_min ({pool_min}) exceeds pool_max ({pool_max})"),
        ));
    }
    let s = SessionOptions::or(&acc.session, &r.session);
    let keepalive = at.required("keepalive", &s.keepalive)?;
    let lifecycle = SessionLifecycle {
        keepalive: (!keepalive.is_zero()).then_some(keepalive),
        max_age: s.max_session_age,
        max_commands: s.max_session_commands,
        pipeline_depth: at.required("pipeline_depth", &s.pipeline_depth)?,
        suspect_2002_after: SUSPECT_2002_AFTER,
    };
    if lifecycle.max_commands == Some(0) || lifecycle.max_age == Some(Duration::ZERO) {
        return Err(at.invalid("max_session_commands", "session limits must be above zero"));
    }
    if !(1..=64).contains(&lifecycle.pipeline_depth) {
        return Err(at.invalid("pipeline_depth", "must be between 1 and 64"));
    }
    if s.max_logins_per_minute == Some(0) {
        return Err(at.invalid("max_logins_per_minute", "must be at least 1"));
    }
    if s.max_commands_per_second
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return Err(at.invalid("max_commands_per_second", "must be a number above zero"));
    }
    Ok(AccountConfig {
        clid: acc.clid.clone(),
        password,
        new_password: None,
        pool_min,
        pool_max,
        obj_uris: acc.obj_uris.clone(),
        ext_uris: acc.ext_uris.clone(),
        lifecycle,
        max_logins_per_minute: s.max_logins_per_minute,
        max_commands_per_second: s.max_commands_per_second,
        local: LocalLogin::default(),
    })
}

impl SessionOptions {
    /// `own`'s options, each unset one taken from `inherited`.
    fn or(own: &SessionOptions, inherited: &SessionOptions) -> SessionOptions {
        SessionOptions {
            keepalive: own.keepalive.or(inherited.keepalive),
            max_session_age: own.max_session_age.or(inherited.max_session_age),
            max_session_commands: own.max_session_commands.or(inherited.max_session_commands),
            pipeline_depth: own.pipeline_depth.or(inherited.pipeline_depth),
            max_logins_per_minute: own
                .max_logins_per_minute
                .or(inherited.max_logins_per_minute),
            max_commands_per_second: own
                .max_commands_per_second
                .or(inherited.max_commands_per_second),
        }
    }
}

/// A secret given inline (`key`) or as a file (`key_file`), at most one of the two.
fn secret_or_file(
    at: &At<'_>,
    key: &str,
    inline: &Option<Secret>,
    file: &Option<std::path::PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    let file_key = format!("{key}_file");
    match (inline, at.file(&file_key, file)) {
        (Some(_), Some(_)) => Err(at.invalid(key, format!("set {key} or {file_key}, not both"))),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(path)) => read_secret_file(at, &file_key, &path).map(Some),
        (None, None) => Ok(None),
    }
}
