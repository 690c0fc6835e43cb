//! `eppmux [run]`: the proxy, until SIGINT/SIGTERM (a second one exits at once); SIGHUP reopens
//! the audit log, re-reads the configuration and applies it without dropping a client.

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use eppmux::config::Config;
use eppmux::Proxy;

use crate::{init_logging, Invocation, Logging};

pub async fn run(invocation: Invocation) -> Result<()> {
    let cfg = invocation.load()?;
    if invocation.print_config {
        return invocation.print(&cfg);
    }
    let logging = init_logging(cfg.log_format, &cfg.log_level, cfg.audit_log.as_deref())?;
    serve(cfg, Some((invocation, logging))).await
}

/// Runs the proxy until a signal; with an invocation, SIGHUP reloads what it names.
pub async fn serve(cfg: Config, mut reloadable: Option<(Invocation, Logging)>) -> Result<()> {
    let shutdown = CancellationToken::new();
    let proxy = Proxy::start(&cfg, shutdown.clone()).await?;
    for r in &proxy.registries() {
        info!(
            registry = r.name.as_deref().unwrap_or(""),
            plain = ?r.plain_addr,
            tls = ?r.tls_addr,
            accounts = r.pools.len(),
            "eppmux started"
        );
    }
    let mut running = cfg;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        // Made once: its listeners stay registered while a reload runs, so a SIGTERM sent then
        // is not lost (tokio drops a signal that finds no listener). It also ends a reload that
        // is still trying credentials: nothing has changed before the reload's apply step.
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = hup.recv() => match &mut reloadable {
                    Some((invocation, logging)) => tokio::select! {
                        _ = reload(invocation, logging, &mut running, &proxy) => {}
                        _ = &mut stop => break,
                    },
                    None => info!("SIGHUP ignored: nothing to reload"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    wait_for_signal().await;
    let _ = (&reloadable, &running);
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

/// SIGHUP: reopen the audit log; read the configuration again and apply it (see
/// `Proxy::reload`). An invalid configuration, or new credentials the registry refuses, change
/// nothing.
async fn reload(
    invocation: &Invocation,
    logging: &mut Logging,
    running: &mut Config,
    proxy: &Proxy,
) {
    logging.reopen_audit();
    let new = match invocation.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            let error = format!("{e:#}");
            proxy.reload_refused(&error);
            return warn!(
                error,
                "SIGHUP: configuration refused; keeping the running one"
            );
        }
    };
    match proxy.reload(&new).await {
        Ok(changes) => {
            logging.apply(&new);
            if new.admin != running.admin {
                warn!("SIGHUP: the admin address changes at the next restart");
            }
            info!(changes = changes.len(), "SIGHUP: configuration reloaded");
            *running = new;
        }
        Err(e) => warn!(
            error = %e,
            "SIGHUP: reload failed; nothing changed, the running configuration stays"
        ),
    }
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
