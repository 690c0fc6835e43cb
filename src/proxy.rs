//! Wiring of one running proxy: for each registry of a validated [`Config`], its upstream target,
//! its pools (one per account) and its listeners; then the admin endpoint; and one
//! `CancellationToken` that shuts it all down. `main` and the tests both start eppmux through
//! [`Proxy::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::admin::{AdminState, CertificateExpiry};
use crate::client_session::{Account, ClientContext, ClientShared};
use crate::config::{Config, RegistryConfig};
use crate::listener::ListenerTls;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolParts, PoolSettings};
use crate::tls::TlsError;
use crate::upstream::UpstreamTarget;

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
    pub registries: Vec<RegistryHandle>,
    /// The first registry's plain-TCP listener (the only registry of the flat form); the bound
    /// address, useful with port 0.
    pub plain_addr: Option<SocketAddr>,
    /// The first registry's TLS listener.
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    /// Every pool of every registry.
    pub pools: Vec<Pool>,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes: whatever still waits gives up.
    abort: CancellationToken,
    shutdown_timeout: Duration,
    tasks: TaskTracker,
}

/// One running registry: its listeners' bound addresses and its pools.
pub struct RegistryHandle {
    pub name: Option<String>,
    pub plain_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub pools: Vec<Pool>,
}

/// After the deadline, how long tasks get to log what they abandon and close their connections.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// What starting one registry needs from the whole.
struct Common {
    shared: Arc<ClientShared>,
    slots: Arc<Semaphore>,
    max_frame: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    abort: CancellationToken,
    tasks: TaskTracker,
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
            max_frame: cfg.limits.max_frame,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            abort: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let mut registries = Vec::new();
        for (r, (plain, tls)) in cfg.registries.iter().zip(bound) {
            registries.push(start_registry(r, plain, tls, &common)?);
        }
        let pools: Vec<Pool> = registries.iter().flat_map(|r| r.pools.clone()).collect();
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = admin {
            let state = Arc::new(AdminState {
                metrics: metrics.clone(),
                pools: pools.clone(),
                token: cfg.admin_token.clone(),
                certificates: certificate_expiry(cfg),
            });
            common.tasks.spawn(crate::admin::serve(
                listener,
                state,
                common.tasks.clone(),
                shutdown.clone(),
            ));
        }
        Ok(Proxy {
            plain_addr: registries.first().and_then(|r| r.plain_addr),
            tls_addr: registries.first().and_then(|r| r.tls_addr),
            registries,
            admin_addr,
            pools,
            metrics,
            shutdown,
            abort: common.abort,
            shutdown_timeout: cfg.shutdown_timeout,
            tasks: common.tasks,
        })
    }

    /// Stops accepting, closes idle clients, lets in-flight commands finish, logs out of every
    /// upstream session, and returns when all of that is done — or, past the configured shutdown
    /// timeout, abandons what is left (each task logs what it gives up) and returns false.
    pub async fn shutdown(self) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tasks.wait())
            .await
            .is_ok()
        {
            return true;
        }
        warn!(deadline = ?self.shutdown_timeout, "shutdown deadline passed: abandoning what is still in flight");
        self.abort.cancel();
        let _ = tokio::time::timeout(ABORT_GRACE, self.tasks.wait()).await;
        false
    }
}

/// Starts one registry's pools and listeners.
fn start_registry(
    r: &RegistryConfig,
    plain: Option<TcpListener>,
    tls: Option<TcpListener>,
    c: &Common,
) -> Result<RegistryHandle, StartError> {
    let target = Arc::new(UpstreamTarget::new(&r.upstream, c.max_frame)?);
    let listener_tls = match &r.tls {
        Some(t) => Some(ListenerTls {
            acceptor: TlsAcceptor::from(crate::tls::server_config(
                &t.cert,
                &t.key,
                t.client_ca.as_deref(),
            )?),
            client_allow: Arc::new(t.client_allow.clone()),
        }),
        None => None,
    };
    let (greeting_tx, greeting_rx) = watch::channel(None);
    let settings = PoolSettings {
        queue_max: r.queue_max,
        queue_max_bytes: r.queue_max_bytes,
        session_limit_hold: r.session_limit_hold,
    };
    let accounts: Vec<Account> = r
        .accounts
        .iter()
        .map(|acc| Account {
            config: acc.clone(),
            pool: Pool::start(PoolParts {
                registry: r.label().to_string(),
                account: acc.clone(),
                settings,
                target: target.clone(),
                greeting: greeting_tx.clone(),
                metrics: c.metrics.clone(),
                shutdown: c.shutdown.clone(),
                abort: c.abort.clone(),
                tasks: c.tasks.clone(),
            }),
        })
        .collect();
    let pools: Vec<Pool> = accounts.iter().map(|a| a.pool.clone()).collect();
    let ctx = Arc::new(ClientContext::new(
        r,
        accounts,
        greeting_rx,
        c.shared.clone(),
    ));
    let handle = RegistryHandle {
        name: r.name.clone(),
        plain_addr: plain.as_ref().and_then(|l| l.local_addr().ok()),
        tls_addr: tls.as_ref().and_then(|l| l.local_addr().ok()),
        pools,
    };
    for (listener, tls) in [(plain, None), (tls, listener_tls)] {
        if let Some(listener) = listener {
            c.tasks.spawn(crate::listener::serve(
                listener,
                tls,
                ctx.clone(),
                c.slots.clone(),
                c.tasks.clone(),
                c.shutdown.clone(),
            ));
        }
    }
    Ok(handle)
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
