//! A reload (SIGHUP): the new configuration applied to the running proxy without dropping a
//! client, in two halves.
//!
//! **Prepare** does everything that can fail and changes nothing: it reads every certificate and
//! key again (building the upstream targets and listener TLS), binds the listener addresses that
//! are new, and tries every account whose credentials changed (address, CA, certificate, key,
//! password, a password change asked for) with one session of its own at the registry, its login
//! taken from the account's login budget. Any failure — an unreadable file, a taken port, a 2200,
//! a TLS error, no login left in the budget — fails the reload as a whole:
//! the running configuration stays, every session included, and the failure is logged, counted
//! (`eppmux_config_reloads_total{result="failed"}`) and shown in `/status`.
//!
//! **Apply** cannot fail: limits, listener certificates (new connections get them; connections
//! already made keep theirs), listener addresses (the new one accepts; the old one stops
//! accepting and its clients stay), registries and accounts added (started) or removed (their
//! listeners stop and their sessions log out), pool sizes and session options, and new
//! credentials — handed to the pool, which replaces its sessions one at a time (see
//! `pool::core`'s rotation). Clients already logged in stay logged in, whatever changed in the
//! passwords; new logins check the new ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{listener_tls, pool_settings, Common, LiveListener, LiveRegistry, Proxy};
use crate::client_session::RegistryLive;
use crate::config::{Config, RegistryConfig};
use crate::listener::ListenerTls;
use crate::tls::TlsError;
use crate::upstream::{Credentials, OpenError, UpstreamTarget};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("registry {registry}: {source}")]
    Tls { registry: String, source: TlsError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registry {registry}, account {account}: the new credentials failed at the registry: {source}")]
    Credentials {
        registry: String,
        account: String,
        source: OpenError,
    },
    #[error("registry {registry}, account {account}: the account's login budget (max_logins_per_minute) has no login left to try the new credentials, the next in {next:?}; nothing was changed: reload again then")]
    LoginBudget {
        registry: String,
        account: String,
        next: Duration,
    },
}

/// What prepare made ready for one registry of the new configuration.
struct Prepared {
    target: Arc<UpstreamTarget>,
    listener_tls: Option<ListenerTls>,
    /// Newly bound listeners (None: none configured, or the running one stays).
    plain: Option<TcpListener>,
    tls: Option<TcpListener>,
    /// Accounts whose new credentials the registry accepted, by clID.
    credentials: HashMap<String, Arc<Credentials>>,
}

impl Proxy {
    /// Applies `new` to the running proxy (see the module docs). On success, returns what
    /// changed, one line each; on failure nothing changed.
    pub async fn reload(&self, new: &Config) -> Result<Vec<String>, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = match self.prepare(new).await {
            Ok(prepared) => Ok(self.apply(new, prepared)),
            Err(e) => Err(e),
        };
        self.record_reload(
            result
                .as_ref()
                .map(Vec::as_slice)
                .map_err(|e| e.to_string()),
        );
        result
    }

    /// A reload refused before it reached the proxy (the file did not validate): counted and
    /// shown like one that failed here.
    pub fn reload_refused(&self, error: &str) {
        self.record_reload(Err(error.to_string()));
    }

    fn record_reload(&self, result: Result<&[String], String>) {
        self.metrics.count_reload(result.is_ok());
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = match result {
            Ok(changes) => serde_json::json!({ "result": "ok", "at": at, "changes": changes }),
            Err(error) => serde_json::json!({ "result": "failed", "at": at, "error": error }),
        };
        self.publish_admin(Some(record));
    }

    /// Everything that can fail, nothing that changes what runs.
    async fn prepare(&self, new: &Config) -> Result<Vec<Prepared>, ReloadError> {
        let mut out = Vec::new();
        let mut tries = Vec::new();
        for r in &new.registries {
            let running = self.running_registry(r);
            let tls_err = |source| ReloadError::Tls {
                registry: r.label().to_string(),
                source,
            };
            let built = UpstreamTarget::new(&r.upstream, new.limits.max_frame).map_err(tls_err)?;
            // Always the new one: timeouts and the frame limit apply even when the identity
            // (and so every session) stays.
            let target = Arc::new(built);
            let listener_tls = listener_tls(r.tls.as_ref()).map_err(tls_err)?;
            let (plain, tls) = bind_new(running.as_ref(), r).await?;
            for acc in &r.accounts {
                let pool = running
                    .as_ref()
                    .and_then(|run| run.pools.get(&acc.clid).cloned());
                if let Some(pool) = pool.filter(|p| p.needs_new_credentials(acc, &target)) {
                    tries.push((
                        out.len(),
                        r.label().to_string(),
                        pool,
                        acc.clone(),
                        target.clone(),
                    ));
                }
            }
            out.push(Prepared {
                target,
                listener_tls,
                plain,
                tls,
                credentials: HashMap::new(),
            });
        }
        let results = futures_util::future::join_all(tries.into_iter().map(
            |(i, registry, pool, acc, target)| async move {
                // The trial is a login like any other: a burst of reloads must not log in
                // faster than the budget (registries lock accounts after failed logins).
                let budget = pool.take_login(target.step_timeout).await;
                let tried = match budget {
                    Ok(()) => pool.try_credentials(&acc, target).await.map_err(|source| {
                        ReloadError::Credentials {
                            registry: registry.clone(),
                            account: acc.clid.clone(),
                            source,
                        }
                    }),
                    Err(next) => Err(ReloadError::LoginBudget {
                        registry: registry.clone(),
                        account: acc.clid.clone(),
                        next,
                    }),
                };
                (i, registry, acc.clid, tried)
            },
        ))
        .await;
        for (i, registry, account, tried) in results {
            let creds = tried?;
            info!(
                registry,
                account, "reload: the registry accepted the new credentials"
            );
            out[i].credentials.insert(account, creds);
        }
        Ok(out)
    }

    /// What prepare needs to know of the running registry that `r` names, if it runs.
    fn running_registry(&self, r: &RegistryConfig) -> Option<RunningView> {
        let running = self.running();
        let live = running
            .registries
            .iter()
            .find(|x| x.config.name == r.name)?;
        Some(RunningView {
            plain: live.plain.as_ref().map(|l| (l.configured, l.bound)),
            tls: live.tls.as_ref().map(|l| (l.configured, l.bound)),
            pools: live
                .accounts
                .iter()
                .map(|(a, _)| (a.config.clid.clone(), a.pool.clone()))
                .collect(),
        })
    }

    /// Makes `new` what runs, with what prepare made ready. Cannot fail.
    fn apply(&self, new: &Config, prepared: Vec<Prepared>) -> Vec<String> {
        let c = &self.common;
        let mut changes = Vec::new();
        c.shared.set_limits(new.limits);
        c.resize_slots(new.limits.max_clients);
        *c.shutdown_timeout.lock().unwrap_or_else(|p| p.into_inner()) = new.shutdown_timeout;
        let mut running = self.running();
        let mut old: Vec<LiveRegistry> = std::mem::take(&mut running.registries);
        for (r, p) in new.registries.iter().zip(prepared) {
            let registry = match old.iter().position(|x| x.config.name == r.name) {
                Some(i) => {
                    let mut live = old.swap_remove(i);
                    c.update_registry(&mut live, r, p, &mut changes);
                    live
                }
                None => {
                    changes.push(format!("registry {}: added", r.label()));
                    c.start_registry(r, p.target, p.listener_tls, p.plain, p.tls)
                }
            };
            running.registries.push(registry);
        }
        for gone in old {
            changes.push(format!(
                "registry {}: removed (its listeners stop, its sessions log out)",
                gone.config.label()
            ));
            gone.stop.cancel();
        }
        running.config = new.clone();
        drop(running);
        for change in &changes {
            info!(change = %change, "reload");
        }
        changes
    }
}

/// The running registry, as prepare reads it.
struct RunningView {
    plain: Option<(SocketAddr, Option<SocketAddr>)>,
    tls: Option<(SocketAddr, Option<SocketAddr>)>,
    pools: HashMap<String, crate::pool::Pool>,
}

impl Common {
    /// Applies a reload to one running registry.
    fn update_registry(
        &self,
        live: &mut LiveRegistry,
        r: &RegistryConfig,
        p: Prepared,
        changes: &mut Vec<String>,
    ) {
        let label = r.label().to_string();
        match (&live.listener_tls, p.listener_tls) {
            (Some(sender), Some(tls)) => {
                sender.send_replace(tls);
            }
            (None, Some(tls)) => live.listener_tls = Some(tokio::sync::watch::Sender::new(tls)),
            (_, None) => live.listener_tls = None,
        }
        live.target = p.target;
        live.config = r.clone();
        if let Some(moved) = self.move_listener(live, false, r.listen, p.plain) {
            changes.push(format!("registry {label}: plain listener {moved}"));
        }
        if let Some(moved) = self.move_listener(live, true, r.listen_tls, p.tls) {
            changes.push(format!("registry {label}: TLS listener {moved}"));
        }
        let mut kept = Vec::new();
        for (account, close) in std::mem::take(&mut live.accounts) {
            if r.accounts.iter().any(|a| a.clid == account.config.clid) {
                kept.push((account, close));
            } else {
                changes.push(format!(
                    "registry {label}: account {} removed (its sessions log out)",
                    account.config.clid
                ));
                close.cancel();
            }
        }
        let mut credentials = p.credentials;
        for acc in &r.accounts {
            match kept.iter().position(|(a, _)| a.config.clid == acc.clid) {
                Some(i) => {
                    let (mut account, close) = kept.swap_remove(i);
                    let creds = credentials.remove(&acc.clid);
                    if creds.is_some() {
                        changes.push(format!(
                            "registry {label}: account {}: new credentials; its sessions are replaced one at a time",
                            acc.clid
                        ));
                    }
                    account
                        .pool
                        .reconfigure(acc, pool_settings(r), &live.target, creds);
                    account.config = Arc::new(acc.clone());
                    live.accounts.push((account, close));
                }
                None => {
                    changes.push(format!("registry {label}: account {} added", acc.clid));
                    let started =
                        self.start_account(r, acc, &live.target, &live.greeting, &live.stop);
                    live.accounts.push(started);
                }
            }
        }
        let accounts = live.accounts.iter().map(|(a, _)| a.clone()).collect();
        live.ctx.set_live(RegistryLive::new(r, accounts));
    }

    /// Moves, adds or removes one listener of a running registry; says what it did, if anything.
    fn move_listener(
        &self,
        live: &mut LiveRegistry,
        tls: bool,
        want: Option<SocketAddr>,
        bound: Option<TcpListener>,
    ) -> Option<String> {
        let current = if tls { &mut live.tls } else { &mut live.plain };
        if current.as_ref().map(|l| l.configured) == want {
            return None;
        }
        let old = current.take();
        if let Some(old) = &old {
            // Connections it accepted go on; it only stops accepting.
            old.stop.cancel();
        }
        let started = want
            .zip(bound)
            .map(|(addr, listener)| self.listen(live, addr, listener, tls));
        let said = match (&old, &started) {
            (Some(o), Some(n)) => format!("moved from {} to {:?}", o.configured, n.bound),
            (None, Some(n)) => format!("added on {:?}", n.bound),
            (Some(o), None) => format!("on {} removed", o.configured),
            (None, None) => return None,
        };
        let slot: &mut Option<LiveListener> = if tls { &mut live.tls } else { &mut live.plain };
        *slot = started;
        Some(said)
    }

    /// Grows or shrinks the client slots to `max_clients`. Slots held by connected clients are
    /// not taken from them: a shrink below what is connected completes as they leave.
    fn resize_slots(&self, max_clients: usize) {
        let mut current = self.max_clients.lock().unwrap_or_else(|p| p.into_inner());
        if max_clients > *current {
            self.slots.add_permits(max_clients - *current);
        } else if max_clients < *current {
            let wanted = *current - max_clients;
            let owed = wanted - self.slots.forget_permits(wanted);
            if owed > 0 {
                warn!(
                    max_clients,
                    "max_clients lowered below the clients connected now: they stay; slots are withdrawn as they leave"
                );
                let (slots, stop) = (self.slots.clone(), self.shutdown.clone());
                self.tasks.spawn(async move {
                    for _ in 0..owed {
                        tokio::select! {
                            got = slots.acquire() => match got {
                                Ok(permit) => permit.forget(),
                                Err(_) => return,
                            },
                            _ = stop.cancelled() => return,
                        }
                    }
                });
            }
        }
        *current = max_clients;
    }
}

/// The listeners `r` asks for that do not already run at that address, bound now, so that a
/// port in use refuses the reload before anything changes.
async fn bind_new(
    running: Option<&RunningView>,
    r: &RegistryConfig,
) -> Result<(Option<TcpListener>, Option<TcpListener>), ReloadError> {
    let kept = |l: Option<(SocketAddr, Option<SocketAddr>)>, want: Option<SocketAddr>| {
        l.is_some_and(|(configured, _)| Some(configured) == want)
    };
    let plain = match (kept(running.and_then(|x| x.plain), r.listen), r.listen) {
        (false, Some(addr)) => Some(bind(addr).await?),
        _ => None,
    };
    let tls = match (
        kept(running.and_then(|x| x.tls), r.listen_tls),
        r.listen_tls,
    ) {
        (false, Some(addr)) => Some(bind(addr).await?),
        _ => None,
    };
    Ok((plain, tls))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ReloadError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ReloadError::Bind { addr, source })
}
