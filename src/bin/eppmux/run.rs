//! `eppmux [run]`: the proxy, until SIGINT/SIGTERM (a second one exits at once); SIGHUP re-reads
//! the configuration and applies what can change without a restart.

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use eppmux::config::Config;
use eppmux::Proxy;

use crate::{init_logging, Invocation};

pub async fn run(invocation: Invocation) -> Result<()> {
    let cfg = invocation.load()?;
    if invocation.print_config {
        return invocation.print(&cfg);
    }
    init_logging(cfg.log_format, &cfg.log_level)?;
    serve(cfg, Some(invocation)).await
}

/// Runs the proxy until a signal; with `invocation`, SIGHUP reloads what it names.
pub async fn serve(cfg: Config, invocation: Option<Invocation>) -> Result<()> {
    let shutdown = CancellationToken::new();
    let proxy = Proxy::start(&cfg, shutdown.clone()).await?;
    for r in &proxy.registries {
        info!(
            registry = r.name.as_deref().unwrap_or(""),
            plain = ?r.plain_addr,
            tls = ?r.tls_addr,
            accounts = r.pools.len(),
            "eppmux started"
        );
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = wait_for_signal() => break,
                _ = hup.recv() => match &invocation {
                    Some(invocation) => reload(invocation, &cfg, &proxy),
                    None => info!("SIGHUP ignored: nothing to reload"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    wait_for_signal().await;
    let _ = &invocation;
    info!("shutting down: stopping listeners, logging out of upstream sessions");
    tokio::select! {
        complete = proxy.shutdown() => if complete {
            info!("shutdown complete");
        } else {
            warn!("exiting with work unfinished");
        },
        _ = wait_for_signal() => warn!("second signal: exiting at once"),
    }
    Ok(())
}

/// SIGHUP: read the configuration again and apply what can change without a restart (pool
/// sizes). An invalid configuration is refused and the running one kept.
fn reload(invocation: &Invocation, running: &Config, proxy: &Proxy) {
    let new = match invocation.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            proxy.metrics.count_reload(false);
            return warn!(
                error = format!("{e:#}"),
                "SIGHUP: configuration refused; keeping the running one"
            );
        }
    };
    proxy.metrics.count_reload(true);
    for r in &new.registries {
        for acc in &r.accounts {
            let pool = proxy
                .pools
                .iter()
                .find(|p| p.registry() == r.label() && p.clid() == acc.clid);
            match pool {
                Some(pool) => {
                    let stats = pool.stats();
                    if (stats.pool_min, stats.pool_max) != (acc.pool_min, acc.pool_max) {
                        pool.resize(acc.pool_min, acc.pool_max);
                    }
                }
                None => {
                    warn!(registry = r.label(), account = %acc.clid, "SIGHUP: new accounts and registries need a restart")
                }
            }
        }
    }
    if restart_needed(running, &new) {
        warn!("SIGHUP: listener, upstream, registry or account changes take effect at the next restart");
    }
    info!("SIGHUP: configuration reloaded");
}

fn restart_needed(running: &Config, new: &Config) -> bool {
    let shape = |c: &Config| -> Vec<_> {
        c.registries
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.listen,
                    r.listen_tls,
                    r.upstream.addr.clone(),
                    r.accounts.len(),
                )
            })
            .collect()
    };
    new.admin != running.admin || shape(new) != shape(running)
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
