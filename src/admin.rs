//! The admin endpoint: a separate HTTP/1 listener (off unless `--admin` is set) with
//! `GET /metrics` (Prometheus/OpenMetrics text), `GET /healthz` (the process is up),
//! `GET /readyz` (every account has a logged-in upstream session; 503 with a JSON reason
//! otherwise) and `GET /status` (each pool as JSON). It exposes no secret and changes nothing.
//! Also the client side of `/readyz`, for `eppmux healthcheck`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::secret::Secret;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// What a reload replaces.
    live: RwLock<Arc<AdminLive>>,
}

/// The part of the admin endpoint's state that a reload replaces.
#[derive(Default)]
pub struct AdminLive {
    pub pools: Vec<Pool>,
    /// When set, `/metrics` and `/status` need `Authorization: Bearer <token>`; the probes
    /// (`/healthz`, `/readyz`) stay open for orchestrators.
    pub token: Option<Secret>,
    /// When each configured certificate expires, for the expiry gauge.
    pub certificates: Vec<CertificateExpiry>,
    /// How the last SIGHUP went, for `/status`.
    pub last_reload: Option<serde_json::Value>,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>, live: AdminLive) -> AdminState {
        AdminState {
            metrics,
            live: RwLock::new(Arc::new(live)),
        }
    }

    pub fn live(&self) -> Arc<AdminLive> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_live(&self, live: AdminLive) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }
}

/// One configured certificate and when it expires (Unix seconds).
pub struct CertificateExpiry {
    pub registry: String,
    pub certificate: &'static str,
    pub expires: i64,
}

/// Serves the admin endpoint until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    info!(addr = ?listener.local_addr().ok(), "admin endpoint listening");
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(crate::listener::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "admin connection ended") },
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let live = state.live();
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let path = req.uri().path();
    if matches!(path, "/metrics" | "/status") && !authorised(req, &live) {
        let mut resp = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "a bearer token is required\n".into(),
        );
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    match path {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            {
                for pool in &live.pools {
                    pool.export_gauges();
                }
                export_expiry(state, &live);
                state.metrics.render()
            },
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, reasons) = readiness(&live.pools);
            let body = serde_json::json!({ "ready": ready, "reasons": reasons }).to_string() + "\n";
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "application/json", body)
        }
        "/status" => {
            let pools: Vec<_> = live.pools.iter().map(Pool::status).collect();
            let status = serde_json::json!({ "accounts": pools, "last_reload": live.last_reload });
            let body = serde_json::to_string_pretty(&status).unwrap_or_default() + "\n";
            reply(StatusCode::OK, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics /healthz /readyz /status\n".into(),
        ),
    }
}

/// Sets the certificate expiry gauges to the seconds left from now.
fn export_expiry(state: &AdminState, live: &AdminLive) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Certificates a reload removed must not linger with their last value.
    state.metrics.certificate_expiry.clear();
    for c in &live.certificates {
        let label = crate::metrics::CertificateLabel {
            registry: c.registry.clone(),
            certificate: c.certificate,
        };
        state
            .metrics
            .certificate_expiry
            .get_or_create(&label)
            .set(c.expires - now);
    }
}

/// True when no token is configured, or the request carries it (compared in constant time).
fn authorised(req: &Request<Incoming>, live: &AdminLive) -> bool {
    let Some(token) = &live.token else {
        return true;
    };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| token.ct_eq(given.trim()))
}

/// Ready when every account has at least one logged-in session.
pub fn readiness(pools: &[Pool]) -> (bool, Vec<String>) {
    if pools.is_empty() {
        // Never the case once started (every configuration has an account): not ready.
        return (false, vec!["starting: no account's pool yet".to_string()]);
    }
    let mut reasons = Vec::new();
    for pool in pools {
        let stats = pool.stats();
        if stats.live == 0 {
            let mut why = match (stats.unhealthy, stats.login_budget_wait) {
                (Some(reason), _) => reason,
                (None, Some(wait)) => format!(
                    "login budget exhausted (max_logins_per_minute): the next upstream login is allowed in {} ms",
                    wait.as_millis()
                ),
                (None, None) => format!(
                    "{} upstream session(s) connecting, none logged in yet",
                    stats.connecting
                ),
            };
            // What keeps the sessions from opening, when the registry and eppmux have no TLS in
            // common. Only this failure is told here, the endpoint being open to anyone who can
            // reach it (other errors are on the token-guarded /status): it names no secret, and
            // without it the operator would see "connecting" for ever.
            if let Some(mismatch) = pool.tls_mismatch() {
                why.push_str(&format!(": {mismatch}"));
            }
            let registry = match pool.registry() {
                "" => String::new(),
                name => format!("registry {name}, "),
            };
            reasons.push(format!("{registry}account {}: {why}", pool.clid()));
        }
    }
    (reasons.is_empty(), reasons)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach the admin endpoint at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("`{0}` is not a request path")]
    BadPath(String),
}

/// `GET path` on the admin endpoint: (status code, body).
pub async fn get(
    addr: SocketAddr,
    path: &str,
    wait: Duration,
) -> Result<(u16, String), ProbeError> {
    request(addr, path, None, wait).await
}

/// `GET path` with `Authorization: Bearer token`, for endpoints behind the admin token.
pub async fn get_with_token(
    addr: SocketAddr,
    path: &str,
    token: &str,
    wait: Duration,
) -> Result<(u16, String), ProbeError> {
    request(addr, path, Some(token), wait).await
}

async fn request(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    wait: Duration,
) -> Result<(u16, String), ProbeError> {
    tokio::time::timeout(wait, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = Request::get(path).header(hyper::header::HOST, addr.to_string());
        if let Some(token) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|_| ProbeError::BadPath(path.to_string()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| ProbeError::Timeout(wait))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_no_pool_yet_eppmux_is_not_ready() {
        // What the endpoint held before the proxy published its pools: it read "ready".
        let (ready, reasons) = readiness(&[]);
        assert!(!ready);
        assert_eq!(reasons, ["starting: no account's pool yet"]);
    }
}
