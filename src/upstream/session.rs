//! One registry session's protocol: TCP, mutual TLS, the greeting ([`connect`]), `<login>`
//! ([`Connected::login`]), then frames both ways, `<hello>` keepalives and `<logout>`.
//!
//! Opening is split in two so that the caller can treat the steps differently: until `<login>` is
//! written nothing at the registry counts the connection, so giving up is free; once it is
//! written the registry may count a session, which deserves its answer and a `<logout>`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use tracing::{info, warn};

use super::answer::{Answers, Expect, Verdict};
use super::handshake::Stream;
use super::password::{Attempt, Learned, Passwords};
use super::{ExchangeError, OpenError, UpstreamTarget};
use crate::config::AccountConfig;
use crate::epp::{self, Message};
use crate::frame::{EppCodec, FrameError};

/// The same framing over either TLS stack's stream.
type Wire = Framed<Box<dyn Stream>, EppCodec>;

#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTimings {
    pub connect: Duration,
    pub tls: Duration,
    pub greeting: Duration,
    pub login: Duration,
}

/// A connection that has received the registry's greeting and is not logged in.
pub struct Connected {
    framed: Wire,
    peer: Option<SocketAddr>,
    timings: OpenTimings,
    greeting: epp::Greeting,
}

/// A logged-in registry session.
pub struct Session {
    framed: Wire,
    pub peer: Option<SocketAddr>,
    /// How long each step of opening took, for `eppmux check`.
    pub timings: OpenTimings,
    /// The greeting the session started with.
    pub greeting: epp::Greeting,
    /// Answers delivered so far, to tell duplicates from answers.
    answers: Answers,
}

/// Connects to the registry and reads its greeting (handed to `on_greeting` as it came).
pub async fn connect(
    target: &UpstreamTarget,
    on_greeting: impl FnOnce(Bytes),
) -> Result<Connected, OpenError> {
    let step = target.step_timeout;
    let mut timings = OpenTimings::default();
    let started = Instant::now();
    let tcp = timeout(step, TcpStream::connect(&target.addr))
        .await
        .map_err(|_| OpenError::Timeout {
            step: "connect",
            after: step,
        })?
        .map_err(|source| OpenError::Connect {
            addr: target.addr.clone(),
            source,
        })?;
    timings.connect = started.elapsed();
    // Every frame is one small write followed by a wait for the answer: Nagle only adds delay.
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let tls = timeout(step, target.tls.handshake(tcp))
        .await
        .map_err(|_| OpenError::Timeout {
            step: "TLS handshake",
            after: step,
        })??;
    timings.tls = started.elapsed() - timings.connect;
    let mut framed = Framed::new(tls, EppCodec::new(target.max_frame));
    let greeting_frame = read_step(&mut framed, "greeting", step).await?;
    let greeting = match epp::sniff(&greeting_frame) {
        Ok(Message::Greeting(g)) => g,
        Ok(other) => return Err(unexpected("greeting", format!("{other:?}"))),
        Err(e) => return Err(unexpected("greeting", e.to_string())),
    };
    on_greeting(greeting_frame);
    timings.greeting = started.elapsed() - timings.connect - timings.tls;
    Ok(Connected {
        framed,
        peer,
        timings,
        greeting,
    })
}

impl Connected {
    /// Logs in as `account`, with the password `passwords` says (see `super::password`): a second
    /// login on the same connection when it says so and `again` allows it. Every answer is
    /// reported to `passwords`, and every refusal to `again` (its code, and whether the passwords
    /// offer another login). Services are the account's, or the greeting's.
    pub async fn login(
        mut self,
        account: &AccountConfig,
        passwords: &Mutex<Passwords>,
        cltrid: &str,
        step: Duration,
        mut again: impl FnMut(u16, bool) -> bool,
    ) -> Result<Session, OpenError> {
        let started = Instant::now();
        let mut attempt = lock(passwords).first();
        let mut cltrid = cltrid.to_string();
        let mut refused: Option<(u16, String)> = None;
        let mut failed_logins = 0;
        loop {
            let sent = self.send_login(account, &attempt, &cltrid, step).await;
            let (code, msg) = match (sent, refused) {
                (Ok(answer), _) => answer,
                // The registry closed after refusing the first login: that refusal is what
                // counts (towards the stop after repeated 2200s), not the closed connection.
                (Err(_), Some((code, msg))) => {
                    return Err(OpenError::LoginRefused {
                        code,
                        msg,
                        failed_logins,
                    })
                }
                (Err(e), None) => return Err(e),
            };
            failed_logins += u32::from(code == 2200);
            let refusal = |code, msg| OpenError::LoginRefused {
                code,
                msg,
                failed_logins,
            };
            let learned = lock(passwords).learn(&attempt, code, &msg);
            report(&account.clid, learned);
            if code == 1000 {
                self.timings.login = started.elapsed();
                return Ok(Session {
                    framed: self.framed,
                    peer: self.peer,
                    timings: self.timings,
                    greeting: self.greeting,
                    answers: Answers::default(),
                });
            }
            // One further login at most, and only when the owner, told of every refusal, allows it.
            let next = lock(passwords)
                .after(&attempt, code)
                .filter(|_| !cltrid.ends_with("-again"));
            let retry = again(code, next.is_some());
            match next {
                Some(next) if retry => {
                    attempt = next;
                    cltrid.push_str("-again");
                    refused = Some((code, msg));
                }
                Some(_) => {
                    info!(
                        code,
                        "not trying the other password on this connection: no login left in the budget, or a 2200 to it would pass the stop after repeated 2200s"
                    );
                    return Err(refusal(code, msg));
                }
                None => return Err(refusal(code, msg)),
            }
        }
    }

    /// One `<login>`, and the registry's answer to it.
    async fn send_login(
        &mut self,
        account: &AccountConfig,
        attempt: &Attempt,
        cltrid: &str,
        step: Duration,
    ) -> Result<(u16, String), OpenError> {
        let obj_uris = account.obj_uris.as_ref().unwrap_or(&self.greeting.obj_uris);
        let ext_uris = account.ext_uris.as_ref().unwrap_or(&self.greeting.ext_uris);
        let login = epp::login(
            &account.clid,
            &attempt.pw,
            attempt.new_pw.as_ref(),
            obj_uris,
            ext_uris,
            cltrid,
        );
        self.framed
            .send(login)
            .await
            .map_err(|source| OpenError::Frame {
                step: "login",
                source,
            })?;
        let answer = read_step(&mut self.framed, "login", step).await?;
        match epp::sniff(&answer) {
            Ok(Message::Response(r)) => Ok((r.code, r.msg)),
            Ok(other) => Err(unexpected("login", format!("{other:?}"))),
            Err(e) => Err(unexpected("login", e.to_string())),
        }
    }
}

/// Says in the log what a login taught about the account's passwords.
fn report(clid: &str, learned: Learned) {
    match learned {
        Learned::Nothing => {}
        Learned::Changed => info!(
            account = clid,
            "the registry accepted the new password: every later session logs in with it; move new_password into password (and remove new_password) in the configuration"
        ),
        Learned::AlreadyNew => info!(
            account = clid,
            "the registry already has the new password (changed by another eppmux instance or an earlier run): logging in with it; move new_password into password in the configuration"
        ),
        Learned::ChangeRefused { code, msg } => warn!(
            account = clid,
            code,
            msg = %crate::shown::shown(&msg),
            "the registry refused the password change: keeping the old password (correct new_password, then SIGHUP)"
        ),
    }
}

fn lock(passwords: &Mutex<Passwords>) -> std::sync::MutexGuard<'_, Passwords> {
    passwords.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// Connects, reads the greeting and logs in, in one go (for `eppmux check`): with the
    /// password, or the new password if the registry has it already — never changing it.
    pub async fn open(
        target: &UpstreamTarget,
        account: &AccountConfig,
        login_cltrid: &str,
        on_greeting: impl FnOnce(Bytes),
    ) -> Result<Session, OpenError> {
        let passwords = Mutex::new(Passwords::without_change(
            account.password.clone(),
            account.new_password.clone(),
        ));
        connect(target, on_greeting)
            .await?
            .login(
                account,
                &passwords,
                login_cltrid,
                target.step_timeout,
                // Run by hand, once: no budget to take from; both passwords may be tried.
                |_, offered| offered,
            )
            .await
    }

    /// Writes one frame. An error leaves the session unusable, and the frame may have left.
    pub async fn write(&mut self, frame: Bytes) -> Result<(), FrameError> {
        self.framed.send(frame).await
    }

    /// The next frame from the registry, read against what is expected (cancel-safe: nothing is
    /// lost when the future is dropped before a frame is complete).
    pub async fn next_answer(&mut self, expect: Expect<'_>) -> Verdict {
        let next = self.framed.next().await;
        self.answers.classify(next, expect)
    }

    /// A frame that has arrived unasked and waits to be read, if any. Checked before writing on a
    /// session with nothing in flight, so that no stray is ever read as the next command's answer.
    pub fn pending(&mut self) -> Option<Verdict> {
        let next = self.framed.next().now_or_never()?;
        Some(self.answers.classify(next, Expect::Nothing))
    }

    /// Sends `<hello>` and waits for the greeting, which is returned (its svDate is fresh).
    /// Duplicates of earlier answers that arrive meanwhile are dropped; returns how many.
    pub async fn keepalive(&mut self, wait: Duration) -> Result<(Bytes, usize), ExchangeError> {
        let lost = |why: String| ExchangeError::Lost(why);
        self.framed
            .send(epp::hello())
            .await
            .map_err(|e| lost(format!("keepalive write failed: {e}")))?;
        let deadline = Instant::now() + wait;
        let mut duplicates = 0;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return Err(lost(format!("no greeting within {wait:?} after <hello>"))),
                Ok(next) => next,
            };
            if let Some(Ok(frame)) = &next {
                if let Ok(Message::Greeting(_)) = epp::sniff(frame) {
                    return Ok((frame.clone(), duplicates));
                }
            }
            match self.answers.classify(next, Expect::Nothing) {
                Verdict::Duplicate { .. } => duplicates += 1,
                Verdict::Broken(e) => return Err(lost(format!("answering <hello>: {e}"))),
                // Classified against "nothing expected", so never an answer; kept total anyway.
                Verdict::Answer(r) => {
                    return Err(lost(format!("answered <hello> with {} {}", r.code, r.msg)))
                }
            }
        }
    }

    /// Ends the session politely; errors are irrelevant at this point.
    pub async fn logout(mut self, cltrid: &str, wait: Duration) {
        let _ = timeout(wait, async {
            if self.framed.send(epp::logout(cltrid)).await.is_ok() {
                let _ = self.framed.next().await;
            }
            let _ = self.framed.close().await;
        })
        .await;
    }
}

fn unexpected(step: &'static str, detail: String) -> OpenError {
    OpenError::Unexpected { step, detail }
}

async fn read_step(
    framed: &mut Wire,
    step: &'static str,
    wait: Duration,
) -> Result<Bytes, OpenError> {
    match timeout(wait, framed.next()).await {
        Err(_) => Err(OpenError::Timeout { step, after: wait }),
        Ok(None) => Err(OpenError::Closed(step)),
        Ok(Some(Err(source))) => Err(OpenError::Frame { step, source }),
        Ok(Some(Ok(frame))) => Ok(frame),
    }
}
