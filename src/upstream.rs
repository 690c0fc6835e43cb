//! One registry session: TCP + mutual TLS, the greeting, `<login>`, and then one command at a time
//! (RFC 5730 processes commands in order; pipelining is left for later). This module knows the
//! protocol of a single session; when sessions are opened, handed out and replaced is the pool's.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use crate::config::{AccountConfig, UpstreamConfig};
use crate::epp::{self, Message};
use crate::frame::{EppCodec, FrameError};
use crate::tls::TlsError;

/// What every session of every account shares: where the registry is and how to reach it.
pub struct UpstreamTarget {
    pub addr: String,
    pub server_name: ServerName<'static>,
    pub connector: TlsConnector,
    pub step_timeout: Duration,
    pub response_timeout: Duration,
    pub max_frame: usize,
}

impl UpstreamTarget {
    pub fn new(cfg: &UpstreamConfig, max_frame: usize) -> Result<Self, TlsError> {
        let tls = crate::tls::client_config(cfg.ca.as_deref(), Some((&cfg.cert, &cfg.key)))?;
        let server_name = ServerName::try_from(cfg.server_name.clone()).map_err(|e| {
            TlsError::Config(format!("upstream_server_name `{}`: {e}", cfg.server_name))
        })?;
        Ok(Self {
            addr: cfg.addr.clone(),
            server_name,
            connector: TlsConnector::from(tls),
            step_timeout: cfg.step_timeout,
            response_timeout: cfg.response_timeout,
            max_frame,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("{step} timed out after {after:?}")]
    Timeout { step: &'static str, after: Duration },
    #[error("registry closed the connection during {0}")]
    Closed(&'static str),
    #[error("reading {step}: {source}")]
    Frame {
        step: &'static str,
        source: FrameError,
    },
    #[error("{step}: unexpected message from the registry: {detail}")]
    Unexpected { step: &'static str, detail: String },
    #[error("login refused by the registry: {code} {msg}")]
    LoginRefused { code: u16, msg: String },
}

impl OpenError {
    pub fn login_code(&self) -> Option<u16> {
        match self {
            OpenError::LoginRefused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Why a forwarded command has no response for its client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExchangeError {
    /// The command was written (or may have been): the registry may have executed it.
    #[error("response lost: {0}")]
    Lost(String),
    /// A response came back but is not this command's: the session is out of step.
    #[error("registry answered clTRID {got:?} to a command with clTRID {expected:?}")]
    OutOfStep {
        expected: String,
        got: Option<String>,
    },
}

/// A registry response, with its result code already read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub frame: Bytes,
    pub code: u16,
    pub msg: String,
}

pub struct Session {
    framed: Framed<TlsStream<TcpStream>, EppCodec>,
    pub peer: Option<SocketAddr>,
    /// How long each step of opening took, for `eppmux check`.
    pub timings: OpenTimings,
    /// The greeting the session started with.
    pub greeting: epp::Greeting,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTimings {
    pub connect: Duration,
    pub tls: Duration,
    pub greeting: Duration,
    pub login: Duration,
}

impl Session {
    /// Connects, reads the greeting (handed to `on_greeting` as it came) and logs in.
    pub async fn open(
        target: &UpstreamTarget,
        account: &AccountConfig,
        login_cltrid: &str,
        on_greeting: impl FnOnce(Bytes),
    ) -> Result<Session, OpenError> {
        let step = target.step_timeout;
        let mut timings = OpenTimings::default();
        let mut clock = Instant::now();
        let mut lap = || {
            let now = Instant::now();
            let d = now - clock;
            clock = now;
            d
        };
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
        timings.connect = lap();
        // Every frame is one small write followed by a wait for the answer: Nagle only adds delay.
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().ok();
        let tls = timeout(
            step,
            target.connector.connect(target.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| OpenError::Timeout {
            step: "TLS handshake",
            after: step,
        })?
        .map_err(OpenError::Tls)?;
        timings.tls = lap();
        let mut framed = Framed::new(tls, EppCodec::new(target.max_frame));

        let greeting_frame = read_frame(&mut framed, "greeting", step).await?;
        let greeting = match epp::sniff(&greeting_frame) {
            Ok(Message::Greeting(g)) => g,
            Ok(other) => return Err(unexpected("greeting", format!("{other:?}"))),
            Err(e) => return Err(unexpected("greeting", e.to_string())),
        };
        on_greeting(greeting_frame);
        timings.greeting = lap();

        let obj_uris = account
            .obj_uris
            .clone()
            .unwrap_or_else(|| greeting.obj_uris.clone());
        let ext_uris = account
            .ext_uris
            .clone()
            .unwrap_or_else(|| greeting.ext_uris.clone());
        let login = epp::login(
            &account.clid,
            &account.password,
            &obj_uris,
            &ext_uris,
            login_cltrid,
        );
        framed
            .send(login)
            .await
            .map_err(|source| OpenError::Frame {
                step: "login",
                source,
            })?;
        let answer = read_frame(&mut framed, "login", step).await?;
        match epp::sniff(&answer) {
            Ok(Message::Response(r)) if r.code == 1000 => {
                timings.login = lap();
                Ok(Session {
                    framed,
                    peer,
                    timings,
                    greeting,
                })
            }
            Ok(Message::Response(r)) => Err(OpenError::LoginRefused {
                code: r.code,
                msg: r.msg,
            }),
            Ok(other) => Err(unexpected("login", format!("{other:?}"))),
            Err(e) => Err(unexpected("login", e.to_string())),
        }
    }

    /// Something the registry sent that nobody asked for and that is waiting to be read, if any.
    /// With clTRIDs chosen by clients (and not unique across them), such a frame read as the next
    /// command's answer could hand one client another's response: check before writing on a
    /// session with nothing in flight.
    pub fn pending_unsolicited(&mut self) -> Option<String> {
        self.framed.next().now_or_never().map(describe_unsolicited)
    }

    /// Writes one command. An error leaves the session unusable, and the command may have left.
    pub async fn send_command(&mut self, frame: Bytes) -> Result<(), ExchangeError> {
        self.framed
            .send(frame)
            .await
            .map_err(|e| ExchangeError::Lost(format!("write failed: {e}")))
    }

    /// The next frame from the registry, or its end (cancel-safe: nothing is lost when dropped).
    pub async fn read_frame(&mut self) -> Option<Result<Bytes, FrameError>> {
        self.framed.next().await
    }

    /// Sends `<hello>` and waits for the greeting, which is returned (its svDate is fresh).
    pub async fn keepalive(&mut self, wait: Duration) -> Result<Bytes, ExchangeError> {
        self.framed
            .send(epp::hello())
            .await
            .map_err(|e| ExchangeError::Lost(format!("keepalive write failed: {e}")))?;
        match timeout(wait, self.framed.next()).await {
            Err(_) => Err(ExchangeError::Lost(format!(
                "no greeting within {wait:?} after <hello>"
            ))),
            Ok(None) => Err(ExchangeError::Lost("registry closed the connection".into())),
            Ok(Some(Err(e))) => Err(ExchangeError::Lost(format!("keepalive read failed: {e}"))),
            Ok(Some(Ok(frame))) => match epp::sniff(&frame) {
                Ok(Message::Greeting(_)) => Ok(frame),
                Ok(Message::Response(r)) => Err(ExchangeError::Lost(format!(
                    "answered <hello> with {} {}",
                    r.code, r.msg
                ))),
                _ => Err(ExchangeError::Lost(
                    "answered <hello> with something else than a greeting".into(),
                )),
            },
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

/// What the registry sent, read as the answer to a command with clTRID `cltrid` (when it had
/// one): a response carrying another clTRID means the session is out of step.
pub fn as_response(
    next: Option<Result<Bytes, FrameError>>,
    cltrid: Option<&str>,
) -> Result<Reply, ExchangeError> {
    let answer = match next {
        None => return Err(ExchangeError::Lost("registry closed the connection".into())),
        Some(Err(e)) => return Err(ExchangeError::Lost(format!("read failed: {e}"))),
        Some(Ok(frame)) => frame,
    };
    match epp::sniff(&answer) {
        Ok(Message::Response(r)) => {
            if let Some(expected) = cltrid {
                if r.cltrid.as_deref() != Some(expected) {
                    return Err(ExchangeError::OutOfStep {
                        expected: expected.to_string(),
                        got: r.cltrid,
                    });
                }
            }
            Ok(Reply {
                frame: answer,
                code: r.code,
                msg: r.msg,
            })
        }
        Ok(other) => Err(ExchangeError::Lost(format!(
            "registry sent {other:?} instead of a response"
        ))),
        Err(e) => Err(ExchangeError::Lost(format!(
            "registry response unreadable: {e}"
        ))),
    }
}

/// What the registry sent while nothing was asked, for the log line that ends the session.
pub fn describe_unsolicited(next: Option<Result<Bytes, FrameError>>) -> String {
    match next {
        None => "registry closed the idle session".into(),
        Some(Err(e)) => format!("idle session failed: {e}"),
        Some(Ok(frame)) => match epp::sniff(&frame) {
            Ok(Message::Response(r)) => format!("unsolicited response {} {}", r.code, r.msg),
            _ => "unsolicited frame from the registry".into(),
        },
    }
}

fn unexpected(step: &'static str, detail: String) -> OpenError {
    OpenError::Unexpected { step, detail }
}

async fn read_frame(
    framed: &mut Framed<TlsStream<TcpStream>, EppCodec>,
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
