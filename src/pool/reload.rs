//! What a reload asks of a pool: whether the new configuration needs new credentials, a trial
//! of them (its login taken from the account's budget) before the reload commits, and the
//! reconfiguration itself — new limits at once, new credentials for the sessions that open next.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tracing::warn;

use super::{lock, Pool, PoolSettings};
use crate::config::AccountConfig;
use crate::secret::Secret;
use crate::upstream::{Credentials, Passwords, UpstreamTarget};

impl Pool {
    /// Whether sessions opened with the running credentials must be replaced to use `account`
    /// at `target`: another registry address or TLS identity, or another password than the one
    /// in force (a password change asked for counts; moving an accomplished change from
    /// `new_password` into `password` does not).
    pub fn needs_new_credentials(&self, account: &AccountConfig, target: &UpstreamTarget) -> bool {
        let creds = self.inner.credentials();
        if creds.target.identity != target.identity {
            return true;
        }
        let passwords = lock(&creds.passwords);
        let same = |a: Option<&Secret>, b: Option<&Secret>| match (a, b) {
            (Some(a), Some(b)) => a.ct_eq(b.expose()),
            (None, None) => true,
            _ => false,
        };
        let current = passwords.current();
        match &account.new_password {
            None => !account.password.ct_eq(current.expose()),
            Some(new) => {
                !same(Some(new), passwords.requested())
                    || !(account.password.ct_eq(current.expose()) || new.ct_eq(current.expose()))
            }
        }
    }

    /// Takes one login from the account's budget for a login outside the pool's sessions (a
    /// reload's trial), waiting at most `wait` for it. Err: how long until the next one.
    pub async fn take_login(&self, wait: Duration) -> Result<(), Duration> {
        let deadline = Instant::now() + wait;
        loop {
            let next = match self.take_login_now() {
                Ok(()) => return Ok(()),
                Err(next) => next,
            };
            if next > deadline {
                return Err(next.saturating_duration_since(Instant::now()));
            }
            sleep_until(next).await;
        }
    }

    /// One login from the budget now, or when the next one is there.
    fn take_login_now(&self) -> Result<(), Instant> {
        let inner = &self.inner;
        inner.with_state(|st, now| (st.core.take_login(now), Vec::new()))
    }

    /// Tries `account` at `target` with one session of its own (connect, log in, log out)
    /// before a reload commits to it. The trial never asks for a password change: a reload that
    /// fails later (another account's trial) must leave the registry as it found it; the change
    /// is made by the first session that opens after the reload applied. Returns the credentials
    /// to adopt, with what the login taught about the passwords.
    pub async fn try_credentials(
        &self,
        account: &AccountConfig,
        target: Arc<UpstreamTarget>,
    ) -> Result<Arc<Credentials>, crate::upstream::OpenError> {
        let (password, new_password) = (&account.password, &account.new_password);
        let trial = Mutex::new(Passwords::without_change(
            password.clone(),
            new_password.clone(),
        ));
        let cltrid = format!("eppmux-reload-{}", fastrand::u32(..));
        let connected = crate::upstream::session::connect(&target, |_| {}).await?;
        let session = match connected
            .login(
                account,
                &trial,
                &cltrid,
                target.step_timeout,
                // The other password, on the same connection, only with a login in the budget.
                |_, offered| offered && self.take_login_now().is_ok(),
            )
            .await
        {
            Ok(session) => session,
            // The pool fills the registry's session limit: no room for a trial. Refusing the
            // reload would make rotation at pool_max impossible; the rotation itself tries the
            // credentials, one session at a time, and stops at repeated 2200s.
            Err(crate::upstream::OpenError::LoginRefused { code: 2502, .. }) => {
                warn!(
                    account = %account.clid,
                    "reload: no room at the registry to try the new credentials first (2502); applying them, the rotation tries them one session at a time"
                );
                let passwords = Passwords::new(password.clone(), new_password.clone());
                return Ok(Arc::new(Credentials {
                    target,
                    account: account.clone(),
                    passwords: Arc::new(Mutex::new(passwords)),
                }));
            }
            Err(e) => return Err(e),
        };
        session
            .logout(&format!("{cltrid}-out"), target.step_timeout)
            .await;
        let trial = trial.into_inner().unwrap_or_else(|p| p.into_inner());
        let changed_already = new_password
            .as_ref()
            .is_some_and(|new| trial.current().ct_eq(new.expose()));
        let passwords = if changed_already {
            trial
        } else {
            Passwords::new(password.clone(), new_password.clone())
        };
        Ok(Arc::new(Credentials {
            target,
            account: account.clone(),
            passwords: Arc::new(Mutex::new(passwords)),
        }))
    }

    /// Applies a reload to this pool: new limits and session options at once; with `creds`
    /// (tried already), new credentials for the sessions that open next and every current session
    /// replaced in turn (see `PoolCore::rotate`). Without, the running credentials stay — only
    /// their account options are refreshed.
    pub fn reconfigure(
        &self,
        account: &AccountConfig,
        settings: PoolSettings,
        target: &Arc<UpstreamTarget>,
        creds: Option<Arc<Credentials>>,
    ) {
        let rotate = creds.is_some();
        let next = creds.unwrap_or_else(|| {
            let running = self.inner.credentials();
            // The same passwords in force: keep what is known about them, unless the
            // configuration now names them differently (an accomplished change moved into
            // `password`).
            let passwords = if account.new_password.is_none()
                && lock(&running.passwords).requested().is_some()
            {
                Arc::new(Mutex::new(Passwords::new(account.password.clone(), None)))
            } else {
                running.passwords.clone()
            };
            // Same identity (else there would be new credentials): the sessions stay, and the
            // ones that open next take the new timeouts and frame limit.
            Arc::new(Credentials {
                target: target.clone(),
                account: account.clone(),
                passwords,
            })
        });
        *self.inner.creds.write().unwrap_or_else(|p| p.into_inner()) = next;
        let limits = settings.limits(account);
        self.inner.login_event(|st, now| {
            let core = &mut st.core;
            let mut actions = core.set_limits(now, limits);
            if rotate {
                actions.extend(core.rotate(now));
            } else {
                actions.extend(core.resume(now));
            }
            ((), actions)
        });
    }
}
