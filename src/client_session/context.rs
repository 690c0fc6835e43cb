//! What client sessions share: across registries ([`ClientShared`]: limits, the login limiter,
//! connections not yet logged in, connections per host), and within one registry
//! ([`ClientContext`]: its accounts and its greeting).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
pub struct Account {
    pub config: AccountConfig,
    pub pool: Pool,
}

/// What every client session of every registry shares.
pub struct ClientShared {
    pub limits: ClientLimits,
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
    pub accounts: Vec<Account>,
    pub greeting: watch::Receiver<Option<Bytes>>,
    pub greeting_wait: Duration,
    pub queue_wait: Duration,
    pub shared: Arc<ClientShared>,
}

impl ClientContext {
    pub fn new(
        registry: &RegistryConfig,
        accounts: Vec<Account>,
        greeting: watch::Receiver<Option<Bytes>>,
        shared: Arc<ClientShared>,
    ) -> Self {
        Self {
            registry: registry.label().to_string(),
            accounts,
            greeting,
            greeting_wait: registry.greeting_wait,
            queue_wait: registry.queue_wait,
            shared,
        }
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
    ) -> Option<&Account> {
        let mut found = None;
        for acc in &self.accounts {
            let local = &acc.config;
            let clid_ok = Secret::new(local.local_clid()).ct_eq(clid);
            let pw_ok = local.local_password().ct_eq(pw.expose());
            let cert_ok = cert.is_some_and(|fp| local.local.client_certs.iter().any(|c| c == fp));
            if clid_ok & (pw_ok | cert_ok) {
                found = Some(acc);
            }
        }
        found
    }
}

impl ClientShared {
    pub fn new(limits: ClientLimits, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        Self {
            limits,
            login_limiter: LoginLimiter::new(limits.login_failures_per_minute),
            metrics,
            shutdown,
            pre_login: Mutex::new(BTreeMap::new()),
            sources: Mutex::new(HashMap::new()),
            svtrid: AtomicU64::new(1),
        }
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
        if *n >= self.limits.max_clients_per_source {
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
