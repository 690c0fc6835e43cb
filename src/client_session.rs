//! One local client connection: the EPP session state machine a client sees.
//!
//! greeting → (hello | login) → logged in: commands forwarded to the account's pool → logout.
//! Login, logout and hello are answered here; everything else goes to the registry byte for byte.
//! Frames are handled one at a time, so a client that pipelines gets its answers in order. The
//! connection is only ever closed between frames.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::access::LoginLimiter;
use crate::config::ClientLimits;
use crate::epp::{self, Command, Message};
use crate::frame::{ClientCodec, FrameError, Incoming};
use crate::metrics::{CommandLabel, Metrics, ReasonLabel};
use crate::pool::{Pool, PoolError};
use crate::secret::Secret;

/// An account clients may log in as, and the pool its commands go to.
pub struct Account {
    pub clid: String,
    pub password: Secret,
    pub pool: Pool,
}

/// What every client session shares.
pub struct ClientContext {
    pub accounts: Vec<Account>,
    pub greeting: watch::Receiver<Option<Bytes>>,
    pub greeting_wait: Duration,
    pub queue_wait: Duration,
    pub limits: ClientLimits,
    pub login_limiter: LoginLimiter,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    svtrid: AtomicU64,
}

impl ClientContext {
    pub fn new(
        accounts: Vec<Account>,
        greeting: watch::Receiver<Option<Bytes>>,
        cfg: &crate::config::Config,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            accounts,
            greeting,
            greeting_wait: cfg.greeting_wait,
            queue_wait: cfg.queue_wait,
            limits: cfg.limits,
            login_limiter: LoginLimiter::new(cfg.limits.login_failures_per_minute),
            metrics,
            shutdown,
            svtrid: AtomicU64::new(1),
        }
    }

    fn reject(&self, reason: &'static str) {
        self.metrics
            .frames_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Server transaction id for the answers eppmux gives itself.
    fn next_svtrid(&self) -> String {
        format!("eppmux-{}", self.svtrid.fetch_add(1, Ordering::Relaxed))
    }

    /// Finds the account these credentials belong to. Every account is compared, each in constant
    /// time, so the answer time says nothing about which part was wrong.
    fn authenticate(&self, clid: &str, pw: &Secret) -> Option<&Account> {
        let mut found = None;
        for acc in &self.accounts {
            let clid_ok = Secret::new(acc.clid.as_str()).ct_eq(clid);
            let pw_ok = acc.password.ct_eq(pw.expose());
            if clid_ok & pw_ok {
                found = Some(acc);
            }
        }
        found
    }
}

enum State<'a> {
    Greeted { failures: u32 },
    LoggedIn { account: &'a Account },
}

/// Where a connection comes from, for per-source limits.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
}

/// What to do after a frame has been answered.
enum Next {
    Continue,
    Close,
}

/// A peer that does not take our TLS close_notify within this long is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Serves one client connection until it logs out, closes, misbehaves or eppmux shuts down.
pub async fn serve<S>(stream: S, peer: Peer, ctx: Arc<ClientContext>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::new(stream, ClientCodec::new(ctx.limits.max_frame));
    run(&mut framed, peer, &ctx).await;
    // Always between frames here. A TLS close_notify (or a TCP FIN) tells clients such as Python's
    // ssl module that the close is deliberate, not a truncation attack.
    let _ = timeout(CLOSE_WAIT, framed.close()).await;
}

async fn run<S>(framed: &mut Framed<S, ClientCodec>, peer: Peer, ctx: &ClientContext)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(greeting) = wait_for_greeting(ctx).await else {
        info!(waited = ?ctx.greeting_wait, "closing: no registry greeting yet (is the registry reachable?)");
        return;
    };
    if let Err(e) = framed.send(greeting).await {
        debug!(error = %e, "client went away before the greeting");
        return;
    }
    let mut state = State::Greeted { failures: 0 };
    let limits = ctx.limits;
    // Between frames the idle timeout runs; once a frame has begun, the frame timeout.
    let mut deadline = Instant::now() + limits.idle_timeout;
    loop {
        let frame = tokio::select! {
            f = framed.next() => f,
            _ = sleep_until(deadline) => {
                if framed.codec().mid_frame() {
                    ctx.reject("frame_timeout");
                    warn!(timeout = ?limits.frame_timeout, "closing: frame not completed in time (slow or stalled client)");
                } else {
                    info!(timeout = ?limits.idle_timeout, "closing idle client connection");
                }
                return;
            }
            _ = ctx.shutdown.cancelled() => {
                info!("closing client connection: eppmux is shutting down");
                return;
            }
        };
        let frame = match frame {
            None => {
                debug!("client closed the connection");
                return;
            }
            Some(Ok(Incoming::Begun)) => {
                deadline = Instant::now() + limits.frame_timeout;
                continue;
            }
            Some(Ok(Incoming::Frame(frame))) => frame,
            Some(Err(e)) => return refuse_frame(framed, ctx, e).await,
        };
        let (answer, next) = handle_frame(&frame, &mut state, peer, ctx).await;
        deadline = Instant::now() + limits.idle_timeout;
        if let Some(answer) = answer {
            if let Err(e) = framed.send(answer).await {
                debug!(error = %e, "client went away before its answer");
                return;
            }
        }
        if let Next::Close = next {
            return;
        }
    }
}

async fn wait_for_greeting(ctx: &ClientContext) -> Option<Bytes> {
    let mut rx = ctx.greeting.clone();
    let got = timeout(ctx.greeting_wait, rx.wait_for(Option::is_some)).await;
    match got {
        Ok(Ok(g)) => g.clone(),
        _ => None,
    }
}

/// A frame the codec refused: say why (when the frame boundary is still known) and close, since
/// the stream cannot be re-synchronised after a bad header.
async fn refuse_frame<S>(framed: &mut Framed<S, ClientCodec>, ctx: &ClientContext, e: FrameError)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match &e {
        FrameError::TooShort(_) | FrameError::TooLarge { .. } => {
            ctx.reject(if matches!(e, FrameError::TooShort(_)) {
                "too_short"
            } else {
                "too_large"
            });
            warn!(reason = %e, "closing client connection: bad frame header");
            let answer = epp::response(
                2001,
                &format!("Command syntax error: {e}"),
                None,
                &ctx.next_svtrid(),
            );
            let _ = framed.send(answer).await;
        }
        FrameError::Truncated(_) => {
            ctx.reject("truncated");
            info!(reason = %e, "client closed the connection mid-frame")
        }
        FrameError::Io(err) => debug!(error = %err, "client connection failed"),
    }
}

async fn handle_frame<'a>(
    frame: &Bytes,
    state: &mut State<'a>,
    peer: Peer,
    ctx: &'a ClientContext,
) -> (Option<Bytes>, Next) {
    let local = |code: u16, msg: &str, cltrid: Option<&str>| {
        Some(epp::response(code, msg, cltrid, &ctx.next_svtrid()))
    };
    let cmd = match epp::sniff(frame) {
        Ok(Message::Command(cmd)) => cmd,
        Ok(Message::Hello) => return (ctx.greeting.borrow().clone(), Next::Continue),
        Ok(other) => {
            ctx.reject("not_a_command");
            warn!(
                got = kind_name(&other),
                "refusing frame: clients send commands, not this"
            );
            return (
                local(
                    2001,
                    "Command syntax error: expected <command> or <hello>",
                    None,
                ),
                Next::Continue,
            );
        }
        Err(e) => {
            ctx.reject(sniff_reason(&e));
            let cltrid = epp::salvage_cltrid(frame);
            warn!(reason = %e, cltrid = cltrid.as_deref().unwrap_or(""), "refusing frame; nothing forwarded");
            return (
                local(
                    2001,
                    &format!("Command syntax error: {e}"),
                    cltrid.as_deref(),
                ),
                Next::Continue,
            );
        }
    };
    let cltrid = cmd.cltrid.as_deref();
    match (&mut *state, cmd.verb.as_str()) {
        (State::LoggedIn { .. }, "login") => (
            local(2002, "Command use error: already logged in", cltrid),
            Next::Continue,
        ),
        (State::Greeted { failures }, "login") => {
            let login = cmd.login.clone().unwrap_or_default();
            if login.has_new_pw {
                warn!(clid = %login.clid, "refusing login with newPW: password changes are not made through eppmux");
                return (
                    local(
                        2102,
                        "Unimplemented option: password change (newPW) is not done through eppmux",
                        cltrid,
                    ),
                    Next::Continue,
                );
            }
            if ctx.login_limiter.is_blocked(peer.ip) {
                warn!(clid = %login.clid, source = %peer.ip, "closing: too many failed logins from this address in the last minute");
                return (
                    local(
                        2501,
                        "Authentication error; server closing connection",
                        cltrid,
                    ),
                    Next::Close,
                );
            }
            match ctx.authenticate(&login.clid, &login.pw) {
                Some(account) => {
                    info!(clid = %account.clid, "client logged in");
                    *state = State::LoggedIn { account };
                    (
                        local(1000, "Command completed successfully", cltrid),
                        Next::Continue,
                    )
                }
                None => {
                    *failures += 1;
                    ctx.login_limiter.record_failure(peer.ip);
                    if *failures >= ctx.limits.max_login_failures {
                        warn!(clid = %login.clid, failures = *failures, "closing: too many failed logins");
                        (
                            local(
                                2501,
                                "Authentication error; server closing connection",
                                cltrid,
                            ),
                            Next::Close,
                        )
                    } else {
                        warn!(clid = %login.clid, failures = *failures, "client login refused: wrong clID or password");
                        (local(2200, "Authentication error", cltrid), Next::Continue)
                    }
                }
            }
        }
        (State::Greeted { .. }, _) => {
            info!(command = %cmd.display_name(), "refusing command before login");
            (
                local(2002, "Command use error: log in first", cltrid),
                Next::Continue,
            )
        }
        (State::LoggedIn { .. }, "logout") => {
            info!("client logged out");
            (
                local(
                    1500,
                    "Command completed successfully; ending session",
                    cltrid,
                ),
                Next::Close,
            )
        }
        (State::LoggedIn { account }, _) => forward(frame, &cmd, account, ctx).await,
    }
}

async fn forward(
    frame: &Bytes,
    cmd: &Command,
    account: &Account,
    ctx: &ClientContext,
) -> (Option<Bytes>, Next) {
    let started = Instant::now();
    let cltrid = cmd.cltrid.as_deref();
    match account
        .pool
        .forward(frame.clone(), cltrid, cmd.is_query(), ctx.queue_wait)
        .await
    {
        Ok(reply) => {
            let elapsed = started.elapsed();
            ctx.metrics
                .commands
                .get_or_create(&CommandLabel {
                    account: account.clid.clone(),
                    command: cmd.display_name(),
                    code: reply.code,
                })
                .inc();
            ctx.metrics
                .command_duration
                .get_or_create(&crate::metrics::account(&account.clid))
                .observe(elapsed.as_secs_f64());
            info!(
                command = %cmd.display_name(),
                cltrid = cltrid.unwrap_or(""),
                result_code = reply.code,
                latency_us = started.elapsed().as_micros() as u64,
                "forwarded"
            );
            (Some(reply.frame), Next::Continue)
        }
        Err(PoolError::Lost(e)) => {
            // The registry may have executed it: only the client can decide whether to retry, and a
            // dropped connection is the signal it already handles for a registry that vanishes.
            warn!(
                command = %cmd.display_name(),
                cltrid = cltrid.unwrap_or(""),
                reason = %e,
                "response lost; closing the client connection without replaying the command"
            );
            (None, Next::Close)
        }
        Err(e) => {
            let (msg, next) = match &e {
                PoolError::Exhausted(waited) => (
                    format!(
                        "Command failed: no registry session became free within {} ms (eppmux pool exhausted); nothing was executed",
                        waited.as_millis()
                    ),
                    Next::Continue,
                ),
                PoolError::QueueFull(n) => (
                    format!("Command failed: {n} commands already wait for a registry session (eppmux pool exhausted); nothing was sent"),
                    Next::Continue,
                ),
                PoolError::Unavailable(reason) => (
                    format!("Command failed: eppmux has no registry session for this account ({reason}); nothing was sent"),
                    Next::Continue,
                ),
                PoolError::ShuttingDown => (
                    "Command failed: eppmux is shutting down; nothing was sent".to_string(),
                    Next::Close,
                ),
                PoolError::Lost(_) => unreachable!("handled above"),
            };
            warn!(command = %cmd.display_name(), cltrid = cltrid.unwrap_or(""), reason = %e, "answering 2400; command not executed");
            (
                Some(epp::response(2400, &msg, cltrid, &ctx.next_svtrid())),
                next,
            )
        }
    }
}

fn sniff_reason(e: &epp::SniffError) -> &'static str {
    use epp::SniffError::*;
    match e {
        NotUtf8 => "not_utf8",
        Encoding => "encoding",
        Malformed(_) => "malformed_xml",
        DocType => "doctype",
        Entity(_) => "entity",
        Namespace(_) => "namespace",
        DuplicateAttribute => "duplicate_attribute",
        TooManyAttributes => "too_many_attributes",
        NotEpp => "not_epp",
        Several => "several_commands",
        Empty => "no_command",
        UnknownCommand => "unknown_command",
        BadOp => "bad_op",
        Structure(_) => "structure",
        TooDeep => "too_deep",
        BadResultCode => "malformed_xml",
    }
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Hello => "hello",
        Message::Greeting(_) => "greeting",
        Message::Command(_) => "command",
        Message::Response(_) => "response",
    }
}
