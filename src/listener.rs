//! Local listeners: accept loops for the plain-TCP and the TLS listener. Each accepted connection
//! becomes one task (with its own tracing span) that runs the client session; the TLS handshake
//! happens inside that task so a slow handshake never holds up accepting others. This module also
//! enforces the connection limit and the client-certificate allow-list.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::client_session::{self, ClientContext, Peer};
use crate::metrics::{ListenerLabel, RefusedLabel};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// TLS for a listener: the acceptor, and the fingerprints allowed to connect (empty: any
/// certificate the client CA signed, or no client certificate when none is asked for).
#[derive(Clone)]
pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    pub client_allow: Arc<Vec<String>>,
}

/// Accepts connections until `shutdown` is cancelled. `slots` is shared by all listeners: one
/// permit per connected client.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ListenerTls>,
    ctx: Arc<ClientContext>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let kind = if tls.is_some() { "tls" } else { "plain" };
    let local = listener.local_addr().ok();
    info!(listener = kind, addr = ?local, "listening");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: pause instead of spinning, the backlog keeps the rest.
                error!(listener = kind, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(&ctx, kind, "max_clients");
            warn!(listener = kind, %peer, max_clients = ctx.limits.max_clients, "refusing connection: too many clients connected");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("client", conn = id, listener = kind, %peer);
        let label = ListenerLabel { listener: kind };
        ctx.metrics.clients_total.get_or_create(&label).inc();
        ctx.metrics.clients_current.get_or_create(&label).inc();
        let ctx = ctx.clone();
        let tls = tls.clone();
        tasks.spawn(
            async move {
                handle(stream, peer, tls, ctx.clone(), slot).await;
                ctx.metrics.clients_current.get_or_create(&label).dec();
            }
            .instrument(span),
        );
    }
    info!(listener = kind, "stopped accepting");
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<ListenerTls>,
    ctx: Arc<ClientContext>,
    _slot: OwnedSemaphorePermit,
) {
    debug!("accepted");
    let who = Peer { ip: peer.ip() };
    let Some(tls) = tls else {
        return client_session::serve(stream, who, ctx).await;
    };
    // Raced with shutdown: a client that never finishes its handshake must not hold eppmux's exit.
    let handshake = tokio::select! {
        h = timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)) => h,
        _ = ctx.shutdown.cancelled() => {
            return debug!("closing: eppmux is shutting down during the client's TLS handshake");
        }
    };
    let mut tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            refused(&ctx, "tls", "tls_handshake");
            return warn!(error = %e, "TLS handshake with client failed");
        }
        Err(_) => {
            refused(&ctx, "tls", "tls_handshake");
            return warn!("TLS handshake with client timed out");
        }
    };
    if !tls.client_allow.is_empty() {
        let fingerprint = tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| crate::access::fingerprint(cert));
        match fingerprint {
            Some(fp) if tls.client_allow.contains(&fp) => debug!(%fp, "client certificate allowed"),
            other => {
                refused(&ctx, "tls", "not_allowed");
                warn!(
                    fingerprint = other.as_deref().unwrap_or("none"),
                    "closing: client certificate is not on the allow-list"
                );
                // A clean TLS close, before any frame: the client sees no greeting.
                let _ = timeout(Duration::from_secs(1), tls_stream.shutdown()).await;
                return;
            }
        }
    }
    client_session::serve(tls_stream, who, ctx).await;
    debug!("connection done");
}

fn refused(ctx: &ClientContext, listener: &'static str, reason: &'static str) {
    ctx.metrics
        .connections_refused
        .get_or_create(&RefusedLabel { listener, reason })
        .inc();
}
