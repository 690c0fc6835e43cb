//! Wiring of one running proxy: for each registry of a validated [`Config`], its upstream target,
//! its pools (one per account) and its listeners; then the admin endpoint; and one
//! `CancellationToken` that shuts it all down. `main` and the tests both start eppmux through
//! [`Proxy::start`]; a SIGHUP goes through [`Proxy::reload`] (in `reload.rs`), which changes what
//! runs here without dropping a client.

mod reload;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::admin::{AdminLive, AdminState, CertificateExpiry};
use crate::client_session::{Account, ClientContext, ClientShared, RegistryLive};
use crate::config::{AccountConfig, Config, RegistryConfig, ServerTls};
use crate::listener::ListenerTls;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolParts, PoolSettings};
use crate::tls::TlsError;
use crate::upstream::UpstreamTarget;

pub use reload::ReloadError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Proxy {
    /// The first registry's plain-TCP listener as started (the only registry of the flat form);
    /// the bound address, useful with port 0. [`Proxy::registries`] has the current ones.
    pub plain_addr: Option<SocketAddr>,
    /// The first registry's TLS listener as started.
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// What runs now; replaced piecewise by a reload. Held briefly, never across an `.await`.
    running: Mutex<Running>,
    /// One reload at a time (a reload awaits the registry while it tries new credentials).
    reloading: tokio::sync::Mutex<()>,
    common: Common,
    admin: Option<Arc<AdminState>>,
}

/// One running registry, as [`Proxy::registries`] shows it.
#[derive(Clone)]
pub struct RegistryHandle {
    pub name: Option<String>,
    pub plain_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub pools: Vec<Pool>,
}

/// What runs now.
struct Running {
    config: Config,
    registries: Vec<LiveRegistry>,
}

/// A running registry and what a reload needs to change it.
struct LiveRegistry {
    config: RegistryConfig,
    ctx: Arc<ClientContext>,
    target: Arc<UpstreamTarget>,
    /// Each account with the token that closes its pool (a child of `stop`).
    accounts: Vec<(Account, CancellationToken)>,
    /// Where pools publish the registry's greeting, for new pools.
    greeting: watch::Sender<Option<Bytes>>,
    plain: Option<LiveListener>,
    tls: Option<LiveListener>,
    /// Where new connections of the TLS listener find its current certificate.
    listener_tls: Option<watch::Sender<ListenerTls>>,
    /// Stops this registry's listeners and pools (a child of the shutdown token).
    stop: CancellationToken,
}

/// A listener's accept loop.
struct LiveListener {
    /// As configured (port 0 included): what a reload compares.
    configured: SocketAddr,
    bound: Option<SocketAddr>,
    stop: CancellationToken,
}

/// After the deadline, how long tasks get to log what they abandon and close their connections.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// What starting a registry (at start or in a reload) needs from the whole.
struct Common {
    shared: Arc<ClientShared>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes: whatever still waits gives up.
    abort: CancellationToken,
    tasks: TaskTracker,
    /// Changed by a reload.
    shutdown_timeout: Mutex<Duration>,
    /// The client slots `slots` was sized for (a reload adds or forgets the difference).
    max_clients: Mutex<usize>,
}

impl Proxy {
    /// Binds every listener and starts the pools; returns once eppmux is accepting clients.
    pub async fn start(cfg: &Config, shutdown: CancellationToken) -> Result<Proxy, StartError> {
        check_fd_limit(cfg);
        // Every address is bound before anything starts: one that is taken stops eppmux at once.
        let mut bound = Vec::new();
        for r in &cfg.registries {
            bound.push((bind_opt(r.listen).await?, bind_opt(r.listen_tls).await?));
        }
        let admin = bind_opt(cfg.admin).await?;
        let metrics = Arc::new(Metrics::new());
        let common = Common {
            shared: Arc::new(ClientShared::new(
                cfg.limits,
                metrics.clone(),
                shutdown.clone(),
            )),
            slots: Arc::new(Semaphore::new(cfg.limits.max_clients)),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
            shutdown_timeout: Mutex::new(cfg.shutdown_timeout),
            max_clients: Mutex::new(cfg.limits.max_clients),
        };
        let mut registries = Vec::new();
        for (r, (plain, tls)) in cfg.registries.iter().zip(bound) {
            let target = Arc::new(UpstreamTarget::new(&r.upstream, cfg.limits.max_frame)?);
            let listener_tls = listener_tls(r.tls.as_ref())?;
            registries.push(common.start_registry(r, target, listener_tls, plain, tls));
        }
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let admin_state = admin
            .as_ref()
            .map(|_| Arc::new(AdminState::new(metrics.clone(), AdminLive::default())));
        let proxy = Proxy {
            plain_addr: registries.first().and_then(|r| r.plain.as_ref()?.bound),
            tls_addr: registries.first().and_then(|r| r.tls.as_ref()?.bound),
            admin_addr,
            metrics,
            running: Mutex::new(Running {
                config: cfg.clone(),
                registries,
            }),
            reloading: tokio::sync::Mutex::new(()),
            common,
            admin: admin_state.clone(),
        };
        proxy.publish_admin(None);
        // Served only once it knows the pools and the token: before, /readyz would answer
        // "ready" for want of any pool, and /status would be open to anyone.
        if let (Some(listener), Some(state)) = (admin, admin_state) {
            let tasks = proxy.common.tasks.clone();
            let serve = crate::admin::serve(listener, state, tasks.clone(), shutdown.clone());
            tasks.spawn(serve);
        }
        Ok(proxy)
    }

    /// Every pool of every registry, as they run now.
    pub fn pools(&self) -> Vec<Pool> {
        self.running()
            .registries
            .iter()
            .flat_map(|r| r.accounts.iter().map(|(a, _)| a.pool.clone()))
            .collect()
    }

    /// The registries as they run now: names, bound listener addresses, pools.
    pub fn registries(&self) -> Vec<RegistryHandle> {
        self.running()
            .registries
            .iter()
            .map(|r| RegistryHandle {
                name: r.config.name.clone(),
                plain_addr: r.plain.as_ref().and_then(|l| l.bound),
                tls_addr: r.tls.as_ref().and_then(|l| l.bound),
                pools: r.accounts.iter().map(|(a, _)| a.pool.clone()).collect(),
            })
            .collect()
    }

    fn running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the admin endpoint what runs now (and how the last reload went).
    fn publish_admin(&self, last_reload: Option<serde_json::Value>) {
        let Some(admin) = &self.admin else { return };
        let running = self.running();
        let previous = admin.live();
        admin.set_live(AdminLive {
            pools: running
                .registries
                .iter()
                .flat_map(|r| r.accounts.iter().map(|(a, _)| a.pool.clone()))
                .collect(),
            token: running.config.admin_token.clone(),
            certificates: certificate_expiry(&running.config),
            last_reload: last_reload.or_else(|| previous.last_reload.clone()),
        });
    }

    /// Stops accepting, closes idle clients, lets in-flight commands finish, logs out of every
    /// upstream session, and returns when all of that is done — or, past the configured shutdown
    /// timeout, abandons what is left (each task logs what it gives up) and returns false.
    pub async fn shutdown(self) -> bool {
        let c = &self.common;
        let deadline = *c.shutdown_timeout.lock().unwrap_or_else(|p| p.into_inner());
        c.shutdown.cancel();
        c.tasks.close();
        if tokio::time::timeout(deadline, c.tasks.wait()).await.is_ok() {
            return true;
        }
        warn!(
            ?deadline,
            "shutdown deadline passed: abandoning what is still in flight"
        );
        c.abort.cancel();
        let _ = tokio::time::timeout(ABORT_GRACE, c.tasks.wait()).await;
        false
    }
}

impl Common {
    /// Starts one registry's pools and listeners (the listeners bound already).
    fn start_registry(
        &self,
        r: &RegistryConfig,
        target: Arc<UpstreamTarget>,
        listener_tls: Option<ListenerTls>,
        plain: Option<TcpListener>,
        tls: Option<TcpListener>,
    ) -> LiveRegistry {
        let stop = self.shutdown.child_token();
        let (greeting, greeting_rx) = watch::channel(None);
        let accounts: Vec<(Account, CancellationToken)> = r
            .accounts
            .iter()
            .map(|acc| self.start_account(r, acc, &target, &greeting, &stop))
            .collect();
        let live = RegistryLive::new(r, accounts.iter().map(|(a, _)| a.clone()).collect());
        let ctx = Arc::new(ClientContext::new(
            r,
            live,
            greeting_rx,
            self.shared.clone(),
        ));
        let listener_tls = listener_tls.map(watch::Sender::new);
        let mut registry = LiveRegistry {
            config: r.clone(),
            ctx,
            target,
            accounts,
            greeting,
            plain: None,
            tls: None,
            listener_tls,
            stop,
        };
        registry.plain = r
            .listen
            .zip(plain)
            .map(|(addr, l)| self.listen(&registry, addr, l, false));
        registry.tls = r
            .listen_tls
            .zip(tls)
            .map(|(addr, l)| self.listen(&registry, addr, l, true));
        registry
    }

    /// Starts the pool of one account; the token closes it (its sessions log out).
    fn start_account(
        &self,
        r: &RegistryConfig,
        acc: &AccountConfig,
        target: &Arc<UpstreamTarget>,
        greeting: &watch::Sender<Option<Bytes>>,
        stop: &CancellationToken,
    ) -> (Account, CancellationToken) {
        let close = stop.child_token();
        let pool = Pool::start(PoolParts {
            registry: r.label().to_string(),
            account: acc.clone(),
            settings: pool_settings(r),
            target: target.clone(),
            greeting: greeting.clone(),
            metrics: self.metrics.clone(),
            shutdown: close.clone(),
            abort: self.abort.clone(),
            tasks: self.tasks.clone(),
        });
        let account = Account {
            config: Arc::new(acc.clone()),
            pool,
        };
        (account, close)
    }

    /// Starts an accept loop on a bound listener of `registry`.
    fn listen(
        &self,
        registry: &LiveRegistry,
        configured: SocketAddr,
        listener: TcpListener,
        tls: bool,
    ) -> LiveListener {
        let stop = registry.stop.child_token();
        let bound = listener.local_addr().ok();
        let tls = if tls {
            registry.listener_tls.as_ref().map(|t| t.subscribe())
        } else {
            None
        };
        self.tasks.spawn(crate::listener::serve(
            listener,
            tls,
            registry.ctx.clone(),
            self.slots.clone(),
            self.tasks.clone(),
            stop.clone(),
        ));
        LiveListener {
            configured,
            bound,
            stop,
        }
    }
}

fn pool_settings(r: &RegistryConfig) -> PoolSettings {
    PoolSettings {
        queue_max: r.queue_max,
        queue_max_bytes: r.queue_max_bytes,
        session_limit_hold: r.session_limit_hold,
        rotation_interval: r.rotation_interval,
    }
}

/// The listener's TLS, from its files (read again at each reload).
fn listener_tls(t: Option<&ServerTls>) -> Result<Option<ListenerTls>, TlsError> {
    let Some(t) = t else { return Ok(None) };
    Ok(Some(ListenerTls {
        acceptor: TlsAcceptor::from(crate::tls::server_config(
            &t.cert,
            &t.key,
            t.client_ca.as_deref(),
        )?),
        client_allow: Arc::new(t.client_allow.clone()),
    }))
}

async fn bind_opt(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    match addr {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| StartError::Bind { addr, source }),
        None => Ok(None),
    }
}

/// When each configured certificate expires; one that cannot be read was refused at start already.
fn certificate_expiry(cfg: &Config) -> Vec<CertificateExpiry> {
    let mut out = Vec::new();
    for r in &cfg.registries {
        let mut add = |certificate: &'static str, expires: Result<i64, TlsError>| {
            if let Ok(at) = expires {
                out.push(CertificateExpiry {
                    registry: r.label().to_string(),
                    certificate,
                    expires: at,
                });
            }
        };
        add("upstream_client", crate::tls::expires_at(&r.upstream.cert));
        if let Some(ca) = &r.upstream.ca {
            add("upstream_ca", crate::tls::expires_at(ca.as_path()));
        }
        if let Some(tls) = &r.tls {
            add("listener", crate::tls::expires_at(&tls.cert));
            if let Some(ca) = &tls.client_ca {
                add("listener_client_ca", crate::tls::expires_at(ca.as_path()));
            }
        }
    }
    out
}

/// Descriptors eppmux needs besides client connections: upstream sessions, listeners, the admin
/// endpoint, files.
const FD_HEADROOM: u64 = 256;

/// Makes sure `max_clients` connections fit under the open-file limit: raises the soft limit up to
/// the hard one if needed (as most servers do), and warns when even that is too low — accepting
/// would otherwise fail with EMFILE under load, long after start.
fn check_fd_limit(cfg: &Config) {
    let upstream: usize = cfg
        .registries
        .iter()
        .flat_map(|r| &r.accounts)
        .map(|a| a.pool_max)
        .sum();
    let needed = (cfg.limits.max_clients + upstream) as u64 + FD_HEADROOM;
    match rlimit::increase_nofile_limit(needed) {
        Ok(got) if got < needed => warn!(
            max_clients = cfg.limits.max_clients,
            open_files = got,
            needed,
            "the open-file limit is below what max_clients needs: raise it (systemd LimitNOFILE=, ulimit -n, docker --ulimit nofile=) or lower max_clients"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open-file limit"),
    }
}
