//! Wiring of one running proxy: builds TLS configs and pools from a validated [`Config`], binds
//! the listeners, and shuts everything down through one `CancellationToken`. `main` and the
//! tests both start eppmux through [`Proxy::start`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::admin::AdminState;
use crate::client_session::{Account, ClientContext};
use crate::config::Config;
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
    /// Bound address of the plain-TCP listener (useful with port 0).
    pub plain_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub pools: Vec<Pool>,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes: whatever still waits gives up.
    abort: CancellationToken,
    shutdown_timeout: Duration,
    tasks: TaskTracker,
}

/// After the deadline, how long tasks get to log what they abandon and close their connections.
const ABORT_GRACE: Duration = Duration::from_secs(1);

impl Proxy {
    /// Binds the listeners and starts the pools; returns once eppmux is accepting clients.
    pub async fn start(cfg: &Config, shutdown: CancellationToken) -> Result<Proxy, StartError> {
        check_fd_limit(cfg);
        let target = Arc::new(UpstreamTarget::new(&cfg.upstream, cfg.limits.max_frame)?);
        let listener_tls = match &cfg.tls {
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
        let plain = match cfg.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let tls = match cfg.listen_tls {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let admin = match cfg.admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };

        let tasks = TaskTracker::new();
        let abort = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let (greeting_tx, greeting_rx) = watch::channel(None);
        let settings = PoolSettings {
            queue_max: cfg.queue_max,
            queue_max_bytes: cfg.queue_max_bytes,
            session_limit_hold: cfg.session_limit_hold,
        };
        let accounts: Vec<Account> = cfg
            .accounts
            .iter()
            .map(|acc| Account {
                config: acc.clone(),
                pool: Pool::start(PoolParts {
                    account: acc.clone(),
                    settings,
                    target: target.clone(),
                    greeting: greeting_tx.clone(),
                    metrics: metrics.clone(),
                    shutdown: shutdown.clone(),
                    abort: abort.clone(),
                    tasks: tasks.clone(),
                }),
            })
            .collect();
        let pools: Vec<Pool> = accounts.iter().map(|a| a.pool.clone()).collect();
        let ctx = Arc::new(ClientContext::new(
            accounts,
            greeting_rx,
            cfg,
            metrics.clone(),
            shutdown.clone(),
        ));

        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = admin {
            let state = Arc::new(AdminState {
                metrics: metrics.clone(),
                pools: pools.clone(),
                token: cfg.admin_token.clone(),
                certificates: certificate_expiry(cfg),
            });
            tasks.spawn(crate::admin::serve(
                listener,
                state,
                tasks.clone(),
                shutdown.clone(),
            ));
        }
        let slots = Arc::new(Semaphore::new(cfg.limits.max_clients));
        let plain_addr = plain.as_ref().and_then(|l| l.local_addr().ok());
        let tls_addr = tls.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = plain {
            tasks.spawn(crate::listener::serve(
                listener,
                None,
                ctx.clone(),
                slots.clone(),
                tasks.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = tls {
            tasks.spawn(crate::listener::serve(
                listener,
                listener_tls,
                ctx,
                slots,
                tasks.clone(),
                shutdown.clone(),
            ));
        }
        Ok(Proxy {
            plain_addr,
            tls_addr,
            admin_addr,
            pools,
            metrics,
            shutdown,
            abort,
            shutdown_timeout: cfg.shutdown_timeout,
            tasks,
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// When each configured certificate expires; one that cannot be read was refused at start already.
fn certificate_expiry(cfg: &Config) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, expires: Result<i64, TlsError>| {
        if let Ok(at) = expires {
            out.push((name, at));
        }
    };
    add(
        "upstream_client",
        crate::tls::expires_at(&cfg.upstream.cert),
    );
    if let Some(ca) = &cfg.upstream.ca {
        add("upstream_ca", crate::tls::expires_at(ca.as_path()));
    }
    if let Some(tls) = &cfg.tls {
        add("listener", crate::tls::expires_at(&tls.cert));
        if let Some(ca) = &tls.client_ca {
            add("listener_client_ca", crate::tls::expires_at(ca.as_path()));
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
    let upstream: usize = cfg.accounts.iter().map(|a| a.pool_max).sum();
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
