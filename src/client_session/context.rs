//! What client sessions share: across registries ([`ClientShared`]: limits, the login limiter,
//! connections not yet logged in, connections per host), and within one registry
//! ([`ClientContext`]: its accounts and its greeting).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::access::{LoginLimiter, Source};
use crate::config::AccountConfig;
use crate::config::{ClientLimits, RegistryConfig};
use crate::epp;
use crate::metrics::{Metrics, ReasonLabel};
use crate::pool::Pool;
use crate::secret::Secret;

/// An account clients may log in as, and the pool its commands go to.
#[derive(Clone)]
pub struct Account {
    /// Shared, not copied: every logged-in client connection keeps its account for its lifetime.
    pub config: Arc<AccountConfig>,
    pub pool: Pool,
}

/// What every client session of every registry shares.
pub struct ClientShared {
    /// Replaced whole by a reload; read per connection and per frame.
    limits: RwLock<ClientLimits>,
    pub login_limiter: LoginLimiter,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Connections that have not logged in, oldest first, and how to close each.
    pre_login: Mutex<BTreeMap<u64, CancellationToken>>,
    /// Connections per non-loopback source.
    sources: Mutex<HashMap<Source, usize>>,
    svtrid: AtomicU64,
}

/// What the client sessions of one registry share: its accounts and its greeting.
pub struct ClientContext {
    /// The registry's name for logs and metrics ("" for the unnamed one).
    pub registry: String,
    /// What a reload may change, replaced whole: a client reads it when it logs in and per
    /// command, so that new logins see new accounts and passwords at once while clients already
    /// logged in keep their account (and its pool).
    live: RwLock<Arc<RegistryLive>>,
    pub greeting: watch::Receiver<Option<Bytes>>,
    pub shared: Arc<ClientShared>,
}

/// The part of a registry's client context that a reload replaces.
pub struct RegistryLive {
    pub accounts: Vec<Account>,
    /// How long a new client waits for a first registry greeting.
    pub greeting_wait: Duration,
    /// How long a command waits for a free session.
    pub queue_wait: Duration,
}

impl RegistryLive {
    pub fn new(registry: &RegistryConfig, accounts: Vec<Account>) -> Self {
        RegistryLive {
            accounts,
            greeting_wait: registry.greeting_wait,
            queue_wait: registry.queue_wait,
        }
    }
}

impl ClientContext {
    pub fn new(
        registry: &RegistryConfig,
        live: RegistryLive,
        greeting: watch::Receiver<Option<Bytes>>,
        shared: Arc<ClientShared>,
    ) -> Self {
        Self {
            registry: registry.label().to_string(),
            live: RwLock::new(Arc::new(live)),
            greeting,
            shared,
        }
    }

    pub fn live(&self) -> Arc<RegistryLive> {
        read(&self.live).clone()
    }

    /// Replaces what a reload changes; connections already logged in keep their account.
    pub fn set_live(&self, live: RegistryLive) {
        *write(&self.live) = Arc::new(live);
    }

    /// Who a client is, for its audit events.
    pub(super) fn audit_client(&self, peer: &super::Peer) -> crate::audit::Client<'_> {
        crate::audit::Client {
            registry: &self.registry,
            conn: peer.conn,
            peer: peer.ip,
        }
    }

    /// Finds the account these local credentials belong to. Every account is compared, each in
    /// constant time, so the answer time says nothing about which part was wrong. A client
    /// certificate listed for an account stands in for its password.
    pub(super) fn authenticate(
        &self,
        clid: &str,
        pw: &Secret,
        cert: Option<&str>,
    ) -> Option<Account> {
        let mut found = None;
        for acc in &self.live().accounts {
            let local = &acc.config;
            let clid_ok = Secret::new(local.local_clid()).ct_eq(clid);
            let pw_ok = local.local_password_matches(pw);
            let cert_ok = cert.is_some_and(|fp| local.local.client_certs.iter().any(|c| c == fp));
            if clid_ok & (pw_ok | cert_ok) {
                found = Some(acc.clone());
            }
        }
        found
    }
}

impl ClientShared {
    pub fn new(limits: ClientLimits, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        Self {
            limits: RwLock::new(limits),
            login_limiter: LoginLimiter::new(limits.login_failures_per_minute),
            metrics,
            shutdown,
            pre_login: Mutex::new(BTreeMap::new()),
            sources: Mutex::new(HashMap::new()),
            svtrid: AtomicU64::new(1),
        }
    }

    pub fn limits(&self) -> ClientLimits {
        *read(&self.limits)
    }

    /// New limits for what follows: connections admitted and frames read from now on. The login
    /// limiter keeps its memory of failures and takes the new rate.
    pub fn set_limits(&self, limits: ClientLimits) {
        self.login_limiter
            .set_failures_per_minute(limits.login_failures_per_minute);
        *write(&self.limits) = limits;
    }

    pub(super) fn reject(&self, reason: &'static str) {
        self.metrics
            .frames_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Server transaction id for the answers eppmux gives itself.
    pub(super) fn next_svtrid(&self) -> String {
        format!("eppmux-{}", self.svtrid.fetch_add(1, Ordering::Relaxed))
    }

    pub(super) fn answer(&self, code: u16, msg: &str, cltrid: Option<&str>) -> Bytes {
        epp::response(code, msg, cltrid, &self.next_svtrid())
    }

    /// Registers a connection that has not logged in; the token closes it when it is evicted.
    pub fn enter_pre_login(&self, conn: u64) -> CancellationToken {
        let token = CancellationToken::new();
        lock(&self.pre_login).insert(conn, token.clone());
        token
    }

    pub fn leave_pre_login(&self, conn: u64) {
        lock(&self.pre_login).remove(&conn);
    }

    /// Closes the oldest connection that has not logged in, to make room; false if there is none.
    pub fn evict_oldest_pre_login(&self) -> bool {
        let oldest = lock(&self.pre_login).pop_first();
        match oldest {
            Some((conn, token)) => {
                warn!(
                    evicted = conn,
                    "max_clients reached: closing the oldest connection that has not logged in"
                );
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Counts a connection from `source` unless that host already has `max_clients_per_source`
    /// (loopback is never capped here: every local client shares it).
    pub fn enter_source(&self, source: Source) -> bool {
        if source.is_loopback() {
            return true;
        }
        let mut sources = lock(&self.sources);
        let n = sources.entry(source).or_default();
        if *n >= self.limits().max_clients_per_source {
            return false;
        }
        *n += 1;
        true
    }

    pub fn leave_source(&self, source: Source) {
        if source.is_loopback() {
            return;
        }
        let mut sources = lock(&self.sources);
        if let Some(n) = sources.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&source);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
