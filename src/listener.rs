//! Local listeners: accept loops for the plain-TCP and the TLS listener. Each accepted connection
//! becomes one task (with its own tracing span) that runs the client session; the TLS handshake
//! happens inside that task so a slow handshake never holds up accepting others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::client_session::{self, ClientContext};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Accepts connections until `shutdown` is cancelled. With `tls`, each connection is a TLS server
/// session; without, plain TCP.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ClientContext>,
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
        let _ = stream.set_nodelay(true);
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("client", conn = id, listener = kind, %peer);
        tasks.spawn(handle(stream, peer, tls.clone(), ctx.clone()).instrument(span));
    }
    info!(listener = kind, "stopped accepting");
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ClientContext>,
) {
    debug!(%peer, "accepted");
    match tls {
        None => client_session::serve(stream, ctx).await,
        Some(acceptor) => match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => client_session::serve(tls_stream, ctx).await,
            Ok(Err(e)) => warn!(error = %e, "TLS handshake with client failed"),
            Err(_) => warn!("TLS handshake with client timed out"),
        },
    }
    debug!("connection done");
}
