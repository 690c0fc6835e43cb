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
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::access::Source;
use crate::client_session::{self, ClientContext, Peer, CLOSE_WAIT};
use crate::metrics::{ListenerLabel, RefusedLabel};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (typically EMFILE), wait this long before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// TLS for a listener: the acceptor, and the fingerprints allowed to connect (empty: any
/// certificate the client CA signed, or no client certificate when none is asked for).
#[derive(Clone)]
pub struct ListenerTls {
    pub acceptor: TlsAcceptor,
    pub client_allow: Arc<Vec<String>>,
}

/// Accepts connections until `stop` is cancelled (eppmux shuts down, or a reload moved or removed
/// the listener; connections already accepted go on). `slots` is shared by all listeners: one
/// permit per connected client. When none is left, the oldest connection that has not logged in
/// is closed to make room (a flood of idle connections cannot lock out clients that log in).
/// `tls` is read at each accept, so a reload's new certificate serves new connections at once.
pub async fn serve(
    listener: TcpListener,
    tls: Option<watch::Receiver<ListenerTls>>,
    ctx: Arc<ClientContext>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let kind = if tls.is_some() { "tls" } else { "plain" };
    let local = listener.local_addr().ok();
    info!(listener = kind, addr = ?local, "listening");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: pause instead of spinning, the backlog keeps the rest.
                error!(listener = kind, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(admitted) = admit(&ctx, &slots, kind, peer) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let span = if ctx.registry.is_empty() {
            info_span!("client", conn = id, listener = kind, %peer)
        } else {
            info_span!("client", registry = %ctx.registry, conn = id, listener = kind, %peer)
        };
        let tls = tls.as_ref().map(|t| t.borrow().clone());
        let (ctx, slots) = (ctx.clone(), slots.clone());
        tasks.spawn(
            async move {
                let source = admitted.source;
                match admitted.slot(&slots).await {
                    Some(slot) => {
                        let label = ListenerLabel { listener: kind };
                        let metrics = &ctx.shared.metrics;
                        metrics.clients_total.get_or_create(&label).inc();
                        metrics.clients_current.get_or_create(&label).inc();
                        handle(stream, id, peer, tls, &ctx).await;
                        metrics.clients_current.get_or_create(&label).dec();
                        drop(slot);
                    }
                    None => {
                        refused(&ctx, kind, "max_clients");
                        warn!("refusing connection: no client slot freed up");
                    }
                }
                ctx.shared.leave_source(source);
            }
            .instrument(span),
        );
    }
    info!(listener = kind, addr = ?local, "stopped accepting");
}

/// A connection let in: its host counted, and its client slot (or the promise of the slot an
/// evicted connection is giving back).
struct Admitted {
    source: Source,
    slot: Option<OwnedSemaphorePermit>,
}

impl Admitted {
    async fn slot(self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        match self.slot {
            Some(slot) => Some(slot),
            // The evicted connection gives its slot back as it closes.
            None => timeout(CLOSE_WAIT * 2, slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        }
    }
}

/// Lets a new connection in, or refuses it (per-host cap, or every slot held by a client that
/// logged in).
fn admit(
    ctx: &ClientContext,
    slots: &Arc<Semaphore>,
    kind: &'static str,
    peer: SocketAddr,
) -> Option<Admitted> {
    let source = Source::of(peer.ip());
    if !ctx.shared.enter_source(source) {
        refused(ctx, kind, "per_source");
        warn!(listener = kind, %peer, max = ctx.shared.limits().max_clients_per_source, "refusing connection: too many from this host");
        return None;
    }
    let slot = match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) if ctx.shared.evict_oldest_pre_login() => None,
        Err(_) => {
            ctx.shared.leave_source(source);
            refused(ctx, kind, "max_clients");
            warn!(listener = kind, %peer, max_clients = ctx.shared.limits().max_clients, "refusing connection: too many clients connected, all logged in");
            return None;
        }
    };
    Some(Admitted { source, slot })
}

async fn handle(
    stream: TcpStream,
    conn: u64,
    peer: SocketAddr,
    tls: Option<ListenerTls>,
    ctx: &ClientContext,
) {
    debug!("accepted");
    let evict = ctx.shared.enter_pre_login(conn);
    let mut who = Peer {
        conn,
        ip: peer.ip(),
        cert: None,
    };
    let Some(tls) = tls else {
        return client_session::serve(stream, who, ctx, evict).await;
    };
    // Raced with shutdown and eviction: a client that never finishes its handshake must hold
    // neither eppmux's exit nor a client slot.
    let handshake = tokio::select! {
        h = timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)) => h,
        _ = ctx.shared.shutdown.cancelled() => {
            ctx.shared.leave_pre_login(conn);
            return debug!("closing: eppmux is shutting down during the client's TLS handshake");
        }
        _ = evict.cancelled() => {
            ctx.shared.leave_pre_login(conn);
            return warn!("closing: evicted during its TLS handshake to admit a new connection");
        }
    };
    let mut tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.shared.leave_pre_login(conn);
            refused(ctx, "tls", "tls_handshake");
            return warn!(error = %e, "TLS handshake with client failed");
        }
        Err(_) => {
            ctx.shared.leave_pre_login(conn);
            refused(ctx, "tls", "tls_handshake");
            return warn!("TLS handshake with client timed out");
        }
    };
    who.cert = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| crate::access::fingerprint(cert));
    if !tls.client_allow.is_empty() {
        match &who.cert {
            Some(fp) if tls.client_allow.contains(fp) => debug!(%fp, "client certificate allowed"),
            other => {
                ctx.shared.leave_pre_login(conn);
                refused(ctx, "tls", "not_allowed");
                warn!(
                    fingerprint = other.as_deref().unwrap_or("none"),
                    "closing: client certificate is not on the allow-list"
                );
                // A clean TLS close, before any frame: the client sees no greeting.
                let _ = timeout(CLOSE_WAIT, tls_stream.shutdown()).await;
                return;
            }
        }
    }
    client_session::serve(tls_stream, who, ctx, evict).await;
    debug!("connection done");
}

fn refused(ctx: &ClientContext, listener: &'static str, reason: &'static str) {
    ctx.shared
        .metrics
        .connections_refused
        .get_or_create(&RefusedLabel { listener, reason })
        .inc();
}
