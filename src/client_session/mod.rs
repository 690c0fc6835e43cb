//! One local client connection: the EPP session state machine a client sees.
//!
//! greeting → (hello | login) → logged in: commands forwarded to the account's pool → logout.
//! Login, logout and hello are answered here; everything else goes to the registry byte for byte.
//! Frames are handled one at a time, so a client that pipelines gets its answers in order. The
//! connection is only ever closed between frames.
//!
//! Before login a client is held to less: frames of at most `max_frame_before_login` bytes, a
//! login deadline, and eviction (oldest first) when `max_clients` is reached and a new connection
//! arrives. Values a client chose are logged through [`crate::shown`].

use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::access::Admission;
use crate::audit;
use crate::epp::{self, code, Command, Message};
use crate::frame::{ClientCodec, FrameError, Incoming};
use crate::metrics::CommandLabel;
use crate::pool::PoolError;
use crate::shown::shown;

mod context;

pub use context::{Account, ClientContext, ClientShared, RegistryLive};

/// Where a connection comes from.
#[derive(Debug, Clone)]
pub struct Peer {
    pub conn: u64,
    pub ip: IpAddr,
    /// SHA-256 fingerprint of the client certificate, when the client presented one.
    pub cert: Option<String>,
}

/// A peer that does not take our TLS close_notify within this long is simply dropped.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Read and write buffers above this size are given back after the frame that needed them.
const SHRINK_ABOVE: usize = 64 * 1024;

/// What to do with a frame once handled.
enum Answer {
    Reply(Bytes),
    /// Reply, then close.
    Last(Bytes),
    /// Close without a word (a transform's response was lost).
    Close,
}

enum State {
    Greeted {
        failures: u32,
    },
    /// The account it logged in as, kept for the life of the connection: a reload that changes
    /// passwords or removes the account does not log it out (a removed account's pool refuses).
    LoggedIn {
        account: Account,
    },
}

/// One client connection being served.
struct Conn<'a, S> {
    framed: Framed<S, ClientCodec>,
    peer: Peer,
    ctx: &'a ClientContext,
    state: State,
    /// Cancelled to evict this connection while it has not logged in.
    evict: CancellationToken,
    login_deadline: Instant,
}

/// Serves one client connection until it logs out, closes, misbehaves or eppmux shuts down.
/// `evict` closes it if it has not logged in yet.
pub async fn serve<S>(stream: S, peer: Peer, ctx: &ClientContext, evict: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn_id = peer.conn;
    let mut conn = Conn {
        framed: Framed::new(
            stream,
            ClientCodec::new(ctx.shared.limits().pre_login_max_frame()),
        ),
        peer,
        ctx,
        state: State::Greeted { failures: 0 },
        evict,
        login_deadline: Instant::now() + ctx.shared.limits().login_timeout,
    };
    conn.run().await;
    ctx.shared.leave_pre_login(conn_id);
    // Always between frames here. A TLS close_notify (or a TCP FIN) tells clients such as Python's
    // ssl module that the close is deliberate, not a truncation attack.
    let _ = timeout(CLOSE_WAIT, conn.framed.close()).await;
}

impl<'a, S> Conn<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) {
        let Some(greeting) = wait_for_greeting(self.ctx).await else {
            info!(waited = ?self.ctx.live().greeting_wait, "closing: no registry greeting yet (is the registry reachable?)");
            return;
        };
        if let Err(e) = self.send(greeting).await {
            debug!(error = %e, "client went away before the greeting");
            return;
        }
        let limits = self.ctx.shared.limits();
        // Between frames the idle timeout (and the login deadline) runs; within a frame, the
        // frame timeout.
        let mut frame_deadline = None;
        loop {
            let logged_in = matches!(self.state, State::LoggedIn { .. });
            let idle_deadline = Instant::now() + limits.idle_timeout;
            let deadline = match (frame_deadline, logged_in) {
                (Some(d), _) => d,
                (None, true) => idle_deadline,
                (None, false) => idle_deadline.min(self.login_deadline),
            };
            let next = tokio::select! {
                f = self.framed.next() => f,
                _ = sleep_until(deadline) => return self.timed_out(frame_deadline.is_some(), logged_in),
                _ = self.ctx.shared.shutdown.cancelled() => {
                    return info!("closing client connection: eppmux is shutting down");
                }
                _ = self.evict.cancelled(), if !logged_in => {
                    return warn!("closing: evicted to admit a new connection (max_clients reached and this one had not logged in)");
                }
            };
            let frame = match next {
                None => return debug!("client closed the connection"),
                Some(Ok(Incoming::Begun)) => {
                    frame_deadline = Some(Instant::now() + limits.frame_timeout);
                    continue;
                }
                Some(Ok(Incoming::Frame(frame))) => frame,
                Some(Err(e)) => return self.refuse_frame(e).await,
            };
            frame_deadline = None;
            let (reply, close) = match self.handle(&frame).await {
                Answer::Reply(r) => (Some(r), false),
                Answer::Last(r) => (Some(r), true),
                Answer::Close => (None, true),
            };
            if let Some(reply) = reply {
                if let Err(e) = self.send(reply).await {
                    return debug!(error = %e, "client did not take its answer");
                }
            }
            if close {
                return;
            }
        }
    }

    fn timed_out(&self, mid_frame: bool, logged_in: bool) {
        let limits = self.ctx.shared.limits();
        if mid_frame {
            self.ctx.shared.reject("frame_timeout");
            warn!(timeout = ?limits.frame_timeout, "closing: frame not completed in time (slow or stalled client)");
        } else if !logged_in && Instant::now() >= self.login_deadline {
            self.ctx.shared.reject("login_timeout");
            warn!(timeout = ?limits.login_timeout, "closing: no login in time");
        } else {
            info!(timeout = ?limits.idle_timeout, "closing idle client connection");
        }
    }

    /// Writes one frame to the client. A client that stops reading would hold the write (and so
    /// eppmux's shutdown) forever: once eppmux is shutting down, it gets [`CLOSE_WAIT`] more.
    async fn send(&mut self, frame: Bytes) -> Result<(), FrameError> {
        let shutdown = &self.ctx.shared.shutdown;
        let sent = tokio::select! {
            sent = self.framed.send(frame) => sent,
            _ = async {
                shutdown.cancelled().await;
                tokio::time::sleep(CLOSE_WAIT).await;
            } => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "eppmux is shutting down and the client is not reading",
            ))),
        };
        // One large answer must not keep its buffer for the life of the connection.
        if self.framed.write_buffer().capacity() > SHRINK_ABOVE {
            *self.framed.write_buffer_mut() = BytesMut::new();
        }
        sent
    }

    /// A frame the codec refused: say why (when the frame boundary is still known) and close,
    /// since the stream cannot be re-synchronised after a bad header.
    async fn refuse_frame(&mut self, e: FrameError) {
        match &e {
            FrameError::TooShort(_) | FrameError::TooLarge { .. } => {
                self.ctx
                    .shared
                    .reject(if matches!(e, FrameError::TooShort(_)) {
                        "too_short"
                    } else {
                        "too_large"
                    });
                let before_login = matches!(self.state, State::Greeted { .. });
                warn!(reason = %e, before_login, "closing client connection: bad frame header");
                let answer = self.ctx.shared.answer(
                    code::SYNTAX_ERROR,
                    &format!("Command syntax error: {e}"),
                    None,
                );
                let _ = self.send(answer).await;
            }
            FrameError::Truncated(_) => {
                self.ctx.shared.reject("truncated");
                info!(reason = %e, "client closed the connection mid-frame")
            }
            FrameError::Io(err) => debug!(error = %err, "client connection failed"),
        }
    }

    async fn handle(&mut self, frame: &Bytes) -> Answer {
        let ctx = self.ctx;
        let cmd = match epp::sniff(frame) {
            Ok(Message::Command(cmd)) => cmd,
            Ok(Message::Hello) => {
                return match ctx.greeting.borrow().clone() {
                    Some(g) => Answer::Reply(g),
                    None => Answer::Close,
                }
            }
            Ok(other) => {
                ctx.shared.reject("not_a_command");
                warn!(
                    got = kind_name(&other),
                    "refusing frame: clients send commands, not this"
                );
                let msg = "Command syntax error: expected <command> or <hello>";
                return Answer::Reply(ctx.shared.answer(code::SYNTAX_ERROR, msg, None));
            }
            Err(e) => {
                ctx.shared.reject(sniff_reason(&e));
                let cltrid = epp::salvage_cltrid(frame);
                let shown_cltrid = shown(cltrid.as_deref().unwrap_or(""));
                warn!(reason = %shown(&e.to_string()), cltrid = %shown_cltrid, "refusing frame; nothing forwarded");
                let msg = format!("Command syntax error: {e}");
                return Answer::Reply(ctx.shared.answer(
                    code::SYNTAX_ERROR,
                    &msg,
                    cltrid.as_deref(),
                ));
            }
        };
        let cltrid = cmd.cltrid.as_deref();
        match (&self.state, cmd.verb.as_str()) {
            (State::LoggedIn { .. }, "login") => {
                let msg = "Command use error: already logged in";
                Answer::Reply(ctx.shared.answer(code::USE_ERROR, msg, cltrid))
            }
            (State::Greeted { .. }, "login") => self.login(&cmd).await,
            (State::Greeted { .. }, _) => {
                info!(command = cmd.metric_name(), "refusing command before login");
                let msg = "Command use error: log in first";
                Answer::Reply(ctx.shared.answer(code::USE_ERROR, msg, cltrid))
            }
            (State::LoggedIn { account }, "logout") => {
                info!("client logged out");
                let clid = &account.config.clid;
                let client = ctx.audit_client(&self.peer);
                audit::session(&client, audit::Session::LoggedOut, clid, Some(clid));
                let msg = "Command completed successfully; ending session";
                Answer::Last(ctx.shared.answer(code::ENDING_SESSION, msg, cltrid))
            }
            (State::LoggedIn { account }, _) => {
                forward(frame, &cmd, account, ctx, &self.peer).await
            }
        }
    }

    /// A `<login>` from a client that has not logged in: checked against the local credentials
    /// of every account, within the login limiter's pace.
    async fn login(&mut self, cmd: &Command) -> Answer {
        let ctx = self.ctx;
        let cltrid = cmd.cltrid.as_deref();
        let login = cmd.login.clone().unwrap_or_default();
        let clid = shown(&login.clid);
        if login.has_new_pw {
            warn!(%clid, "refusing login with newPW: password changes are not made through eppmux");
            let msg = "Unimplemented option: newPW: eppmux shares this account's registry sessions among all its clients, so one client cannot change the password; the operator sets new_password in eppmux's configuration";
            return Answer::Reply(ctx.shared.answer(code::UNIMPLEMENTED_OPTION, msg, cltrid));
        }
        let ip = self.peer.ip;
        match ctx
            .shared
            .login_limiter
            .admit(ip, &login.clid, Instant::now())
        {
            Admission::Now => {}
            Admission::At(turn) => {
                debug!(%clid, "many failed logins from this host for this clID: waiting for a turn");
                if !self.wait_until(turn).await {
                    return Answer::Close;
                }
            }
            Admission::Refused => {
                warn!(%clid, source = %ip, "closing: too many login attempts from this host for this clID");
                let client = ctx.audit_client(&self.peer);
                audit::session(&client, audit::Session::RefusedClosing, &login.clid, None);
                return self.auth_closing(cltrid);
            }
        }
        if let Some(account) = ctx.authenticate(&login.clid, &login.pw, self.peer.cert.as_deref()) {
            info!(%clid, account = %account.config.clid, "client logged in");
            let client = ctx.audit_client(&self.peer);
            let acc = Some(account.config.clid.as_str());
            audit::session(&client, audit::Session::LoggedIn, &login.clid, acc);
            self.state = State::LoggedIn { account };
            ctx.shared.leave_pre_login(self.peer.conn);
            self.framed
                .codec_mut()
                .set_max_frame(ctx.shared.limits().max_frame);
            let msg = "Command completed successfully";
            return Answer::Reply(ctx.shared.answer(code::COMPLETED, msg, cltrid));
        }
        let pause =
            ctx.shared
                .login_limiter
                .failed(ip, &login.clid, login.pw.expose(), Instant::now());
        if !pause.is_zero() && !self.wait_until(Instant::now() + pause).await {
            return Answer::Close;
        }
        let State::Greeted { failures } = &mut self.state else {
            return Answer::Close;
        };
        *failures += 1;
        let client = ctx.audit_client(&self.peer);
        if *failures >= ctx.shared.limits().max_login_failures {
            warn!(%clid, failures = *failures, "closing: too many failed logins on this connection");
            audit::session(&client, audit::Session::RefusedClosing, &login.clid, None);
            return self.auth_closing(cltrid);
        }
        warn!(%clid, failures = *failures, "client login refused: wrong clID or password");
        audit::session(&client, audit::Session::Refused, &login.clid, None);
        Answer::Reply(
            ctx.shared
                .answer(code::AUTHENTICATION_ERROR, "Authentication error", cltrid),
        )
    }

    fn auth_closing(&self, cltrid: Option<&str>) -> Answer {
        let msg = "Authentication error; server closing connection";
        Answer::Last(
            self.ctx
                .shared
                .answer(code::AUTHENTICATION_CLOSING, msg, cltrid),
        )
    }

    /// Waits until `at`; false when eppmux shuts down (or the connection is evicted) meanwhile.
    async fn wait_until(&self, at: Instant) -> bool {
        tokio::select! {
            _ = sleep_until(at) => true,
            _ = self.ctx.shared.shutdown.cancelled() => false,
            _ = self.evict.cancelled() => false,
        }
    }
}

async fn wait_for_greeting(ctx: &ClientContext) -> Option<Bytes> {
    let mut rx = ctx.greeting.clone();
    let got = timeout(ctx.live().greeting_wait, rx.wait_for(Option::is_some)).await;
    match got {
        Ok(Ok(g)) => g.clone(),
        _ => None,
    }
}

async fn forward(
    frame: &Bytes,
    cmd: &Command,
    account: &Account,
    ctx: &ClientContext,
    peer: &Peer,
) -> Answer {
    let started = Instant::now();
    let cltrid = cmd.cltrid.as_deref();
    let clid = &account.config.clid;
    // From a fixed set: a client's own namespace never becomes a label or a log field.
    let name = cmd.metric_name();
    let result = account
        .pool
        .forward(frame.clone(), cltrid, cmd.is_query(), ctx.live().queue_wait)
        .await;
    let audit = |outcome| {
        audit::command(&audit::CommandEvent {
            client: ctx.audit_client(peer),
            account: clid,
            command: name,
            objects: &cmd.objects,
            cltrid,
            outcome,
            latency: started.elapsed(),
        })
    };
    let reply = match result {
        Ok(reply) => reply,
        Err(PoolError::Lost(e)) => {
            audit(audit::Outcome::Lost);
            // The registry may have executed it: only the client can decide whether to retry, and a
            // dropped connection is the signal it already handles for a registry that vanishes.
            warn!(command = name, cltrid = %shown(cltrid.unwrap_or("")), reason = %e, "response lost; closing the client connection without replaying the command");
            return Answer::Close;
        }
        Err(e) => {
            audit(audit::Outcome::NotSent);
            return refused(&e, name, cltrid, ctx);
        }
    };
    audit(audit::Outcome::Answered {
        code: reply.code,
        svtrid: reply.svtrid.as_deref(),
        session: reply.session,
    });
    let elapsed = started.elapsed();
    ctx.shared
        .metrics
        .commands
        .get_or_create(&CommandLabel {
            registry: ctx.registry.clone(),
            account: clid.clone(),
            command: name,
            code: reply.code,
        })
        .inc();
    ctx.shared
        .metrics
        .command_duration
        .get_or_create(&crate::metrics::account(&ctx.registry, clid))
        .observe(elapsed.as_secs_f64());
    debug!(
        command = name,
        cltrid = %shown(cltrid.unwrap_or("")),
        result_code = reply.code,
        latency_us = elapsed.as_micros() as u64,
        "forwarded"
    );
    // 1500 means the registry ended the session (a logout it read differently from us): the
    // client asked for that, so its connection ends too.
    if reply.code == code::ENDING_SESSION {
        Answer::Last(reply.frame)
    } else {
        Answer::Reply(reply.frame)
    }
}

/// The 2400 answer for a command the pool could not send; nothing was executed.
fn refused(e: &PoolError, name: &str, cltrid: Option<&str>, ctx: &ClientContext) -> Answer {
    let msg = match e {
        PoolError::Exhausted(waited) => format!(
            "Command failed: no registry session became free within {} ms (eppmux pool exhausted); nothing was executed",
            waited.as_millis()
        ),
        PoolError::QueueFull { commands, bytes } => format!("Command failed: {commands} commands ({bytes} bytes) already wait for a registry session (eppmux pool exhausted); nothing was sent"),
        PoolError::Unavailable(reason) => format!("Command failed: eppmux has no registry session for this account ({reason}); nothing was sent"),
        PoolError::ShuttingDown => "Command failed: eppmux is shutting down; nothing was sent".to_string(),
        PoolError::Lost(e) => format!("Command failed: {e}"),
    };
    warn!(command = name, cltrid = %shown(cltrid.unwrap_or("")), reason = %e, "answering 2400; command not executed");
    let reply = ctx.shared.answer(code::COMMAND_FAILED, &msg, cltrid);
    if matches!(e, PoolError::ShuttingDown) {
        Answer::Last(reply)
    } else {
        Answer::Reply(reply)
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
