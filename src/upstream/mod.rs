//! Registry sessions. [`session`] speaks the protocol of one session (connect, mutual TLS,
//! greeting, `<login>`, frames, `<hello>`, `<logout>`) over the stream [`handshake`] opens with
//! the registry's TLS stack (rustls, or OpenSSL with the `openssl` feature); [`answer`] decides
//! which command an answer belongs to; [`run`] is the life of one pooled session, from opening to
//! logout, with several commands in flight when pipelining is on. When sessions open and what
//! they carry is the pool's business (`crate::pool`), which drives `run` through its
//! [`run::Owner`] trait.

pub mod answer;
pub mod handshake;
pub mod password;
pub mod run;
pub mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::config::{AccountConfig, UpstreamConfig};
use crate::tls::TlsError;

pub use handshake::NoCommonTls;
pub use password::Passwords;
pub use session::Session;

/// What every session of every account shares: where the registry is and how to reach it.
pub struct UpstreamTarget {
    /// A digest of everything that decides which registry this is and how eppmux proves who it
    /// is: address, server name, TLS stack, and the bytes of the CA, certificate and key. A reload compares
    /// it to tell whether sessions must be replaced (certificate files are often rewritten in
    /// place, so paths alone say nothing).
    pub identity: [u8; 32],
    pub addr: String,
    pub tls: handshake::Connector,
    pub step_timeout: Duration,
    pub response_timeout: Duration,
    pub max_frame: usize,
}

impl UpstreamTarget {
    pub fn new(cfg: &UpstreamConfig, max_frame: usize) -> Result<Self, TlsError> {
        Ok(Self {
            identity: identity(cfg)?,
            addr: cfg.addr.clone(),
            tls: handshake::Connector::new(cfg)?,
            step_timeout: cfg.step_timeout,
            response_timeout: cfg.response_timeout,
            max_frame,
        })
    }
}

/// See [`UpstreamTarget::identity`].
fn identity(cfg: &UpstreamConfig) -> Result<[u8; 32], TlsError> {
    let read = |source: &crate::keys::PemSource| {
        source
            .read()
            .map_err(|e| TlsError::Config(format!("{source}: {e}")))
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let stack = format!("{:?}", cfg.tls);
    for part in [
        cfg.addr.as_bytes(),
        cfg.server_name.as_bytes(),
        stack.as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let ca = match &cfg.ca {
        Some(path) => read(&path.into())?,
        None => Vec::new(),
    };
    for part in [ca, read(&cfg.cert)?, read(&cfg.key.pem)?] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(&part);
    }
    if let Some(p) = &cfg.key.passphrase {
        ctx.update(p.expose().as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// What a session logs in with, taken whole when it opens: a reload that changes any of it
/// swaps in a new one for the sessions that open next.
pub struct Credentials {
    pub target: Arc<UpstreamTarget>,
    pub account: AccountConfig,
    /// Shared by the sessions of one set of credentials: a password change one of them makes
    /// is what the next ones log in with.
    pub passwords: Arc<Mutex<Passwords>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(String),
    /// The registry and eppmux have no cipher suite or TLS version in common: the message says
    /// what eppmux offered and how to see what the registry offers.
    #[error(transparent)]
    NoCommonTls(Box<NoCommonTls>),
    #[error("{step} timed out after {after:?}")]
    Timeout { step: &'static str, after: Duration },
    #[error("registry closed the connection during {0}")]
    Closed(&'static str),
    #[error("reading {step}: {source}")]
    Frame {
        step: &'static str,
        source: crate::frame::FrameError,
    },
    #[error("{step}: unexpected message from the registry: {detail}")]
    Unexpected { step: &'static str, detail: String },
    #[error("login refused by the registry: {code} {msg}")]
    LoginRefused {
        code: u16,
        msg: String,
        /// How many `<login>`s of this open the registry answered 2200 (a second one on the
        /// same connection included): each counts towards the stop after repeated 2200s.
        failed_logins: u32,
    },
}

impl OpenError {
    pub fn login_code(&self) -> Option<u16> {
        self.login_refusal().map(|(code, _)| code)
    }

    /// The refused login's answer and the 2200s of this open, if the registry refused it.
    pub fn login_refusal(&self) -> Option<(u16, u32)> {
        match self {
            OpenError::LoginRefused {
                code,
                failed_logins,
                ..
            } => Some((*code, *failed_logins)),
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
        expected: Option<String>,
        got: Option<String>,
    },
}

/// A registry response, with its result code already read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub frame: Bytes,
    pub code: u16,
    pub msg: String,
    /// The registry's transaction id: what its support desk keys every answer by (audit trail).
    pub svtrid: Option<String>,
    /// The upstream session that carried the command (audit trail).
    pub session: u64,
}
