//! The TLS handshake with a registry, by the stack its `upstream_tls` names: rustls (always
//! built) or OpenSSL (the `openssl` cargo feature, for registries whose TLS rustls does not speak).
//! Either hands back the same boxed [`Stream`], so that everything after the handshake — framing,
//! the session, the pool — is one code path whatever the stack.
//!
//! A handshake that fails because the two sides have no cipher suite or TLS version in common
//! becomes [`NoCommonTls`] (see [`diagnosis`]): what eppmux offered and how to see what the
//! registry offers, instead of a bare alert name.

pub mod diagnosis;
#[cfg(feature = "openssl")]
mod openssl;
#[cfg(all(test, feature = "openssl"))]
mod tests;

use std::sync::{Mutex, PoisonError};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::OpenError;
use crate::config::{UpstreamConfig, UpstreamTls};
use crate::tls::TlsError;
pub use diagnosis::NoCommonTls;

/// A registry connection after its handshake, whichever stack made it. A trait object rather than
/// a type parameter: the session, its owner and the pool stay one type, and one virtual call per
/// read or write is nothing beside the TLS record work it stands in front of.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// How sessions of one registry make their TLS connection.
pub struct Connector {
    stack: Stack,
    /// HOST:PORT and the name verified, for the diagnosis.
    addr: String,
    server_name: String,
    /// The last handshake's diagnosis when it found nothing in common with the registry; any
    /// other outcome clears it.
    mismatch: Mutex<Option<NoCommonTls>>,
}

enum Stack {
    Rustls {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    },
    #[cfg(feature = "openssl")]
    Openssl(openssl::Connector),
}

impl Connector {
    /// Reads the CA, the client certificate and its key (decrypting it) once, for every session.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, TlsError> {
        let stack = match cfg.tls {
            UpstreamTls::Rustls => {
                let tls =
                    crate::tls::client_config(cfg.ca.as_deref(), Some((&cfg.cert, &cfg.key)))?;
                let server_name = ServerName::try_from(cfg.server_name.clone()).map_err(|e| {
                    TlsError::Config(format!("upstream_server_name `{}`: {e}", cfg.server_name))
                })?;
                Stack::Rustls {
                    connector: TlsConnector::from(tls),
                    server_name,
                }
            }
            #[cfg(feature = "openssl")]
            UpstreamTls::Openssl => Stack::Openssl(openssl::Connector::new(cfg)?),
            // Configuration validation refuses this already, naming the key; kept as an error
            // rather than a panic for callers that build an `UpstreamConfig` themselves.
            #[cfg(not(feature = "openssl"))]
            UpstreamTls::Openssl => {
                return Err(TlsError::Config(
                    "upstream_tls = \"openssl\" needs an eppmux built with `--features openssl`"
                        .into(),
                ))
            }
        };
        Ok(Self {
            stack,
            addr: cfg.addr.clone(),
            server_name: cfg.server_name.clone(),
            mismatch: Mutex::new(None),
        })
    }

    /// What the last handshake said, when it failed for want of a common suite or version.
    pub fn last_mismatch(&self) -> Option<NoCommonTls> {
        self.mismatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The stack's name, for messages.
    pub fn stack(&self) -> &'static str {
        match self.stack {
            Stack::Rustls { .. } => "rustls",
            #[cfg(feature = "openssl")]
            Stack::Openssl(_) => "OpenSSL",
        }
    }

    /// Runs the handshake on `tcp` (certificate verification, SNI, the client certificate).
    pub async fn handshake(&self, tcp: TcpStream) -> Result<Box<dyn Stream>, OpenError> {
        let result = self.stack_handshake(tcp).await;
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = match &result {
            Err(OpenError::NoCommonTls(d)) => Some(NoCommonTls::clone(d)),
            _ => None,
        };
        result
    }

    async fn stack_handshake(&self, tcp: TcpStream) -> Result<Box<dyn Stream>, OpenError> {
        match &self.stack {
            Stack::Rustls {
                connector,
                server_name,
            } => match connector.connect(server_name.clone(), tcp).await {
                Ok(tls) => Ok(Box::new(tls)),
                Err(e) => Err(match diagnosis::rustls_mismatch(&e) {
                    Some(cause) => self.no_common_tls(cause, diagnosis::rustls_offer()),
                    None => OpenError::Tls(e.to_string()),
                }),
            },
            #[cfg(feature = "openssl")]
            Stack::Openssl(connector) => match connector.handshake(tcp).await {
                Ok(tls) => Ok(Box::new(tls)),
                Err(openssl::Failure::Mismatch { cause, offer }) => {
                    Err(self.no_common_tls(cause, offer))
                }
                Err(openssl::Failure::Other(why)) => Err(OpenError::Tls(why)),
            },
        }
    }

    fn no_common_tls(&self, cause: diagnosis::Cause, offer: String) -> OpenError {
        OpenError::NoCommonTls(Box::new(NoCommonTls {
            addr: self.addr.clone(),
            server_name: self.server_name.clone(),
            cause,
            offer,
            stack: self.stack(),
        }))
    }
}
