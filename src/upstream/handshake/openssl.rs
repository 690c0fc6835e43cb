//! The OpenSSL stack (cargo feature `openssl`), for registries whose TLS rustls does not speak:
//! TLS 1.2 with only CBC suites or RSA key exchange. The guarantees are the rustls path's:
//! verification always on, against the configured CA or the same system roots and nothing else;
//! the registry's name checked and sent as SNI (`upstream_server_name`); TLS 1.2 at least; and the
//! same client certificate and key, read and decrypted once by `crate::tls` and `crate::keys`
//! (OpenSSL only ever sees the decrypted DER).

use std::pin::Pin;

use ::openssl::error::ErrorStack;
use ::openssl::pkey::PKey;
use ::openssl::ssl::{
    self, SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode, SslVersion,
};
use ::openssl::x509::store::{X509Store, X509StoreBuilder};
use ::openssl::x509::{X509VerifyResult, X509};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::diagnosis::Cause;
use crate::config::UpstreamConfig;
use crate::tls::TlsError;

/// OpenSSL's default list less anonymous, null and broken ciphers (what rust-openssl's
/// `SslConnector` sets), named here so that the diagnosis can say what was offered.
const CIPHERS: &str = "DEFAULT:!aNULL:!eNULL:!MD5:!3DES:!DES:!RC4:!IDEA:!SEED:!aDSS:!SRP:!PSK";

/// One registry's OpenSSL client configuration, shared by its sessions.
pub struct Connector {
    connector: SslConnector,
    server_name: String,
}

/// Why an OpenSSL handshake failed.
pub enum Failure {
    /// No cipher suite or TLS version in common.
    Mismatch {
        cause: Cause,
        offer: String,
    },
    Other(String),
}

fn config_err(what: &str) -> impl FnOnce(ErrorStack) -> TlsError + '_ {
    move |e| TlsError::Config(format!("OpenSSL upstream TLS: {what}: {e}"))
}

fn file_err(path: &impl std::fmt::Display, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_string(),
        message: message.to_string(),
    }
}

impl Connector {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, TlsError> {
        Ok(Self {
            connector: configure(cfg)?.build(),
            server_name: cfg.server_name.clone(),
        })
    }

    /// The handshake: SNI and the hostname check come from `upstream_server_name` (an IP
    /// address is checked as one, and sent as no SNI, as RFC 6066 wants).
    pub async fn handshake(&self, tcp: TcpStream) -> Result<SslStream<TcpStream>, Failure> {
        let other = |e: ErrorStack| Failure::Other(e.to_string());
        let ssl = self
            .connector
            .configure()
            .and_then(|c| c.into_ssl(&self.server_name))
            .map_err(other)?;
        let mut stream = SslStream::new(ssl, tcp).map_err(other)?;
        match Pin::new(&mut stream).connect().await {
            Ok(()) => Ok(stream),
            Err(e) => Err(classify(&e, stream.ssl().verify_result())),
        }
    }
}

/// The client context: minimum version, ciphers, trust, identity (a test reads it back).
pub(super) fn configure(cfg: &UpstreamConfig) -> Result<SslConnectorBuilder, TlsError> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(config_err("context"))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(config_err("minimum version"))?;
    b.set_cipher_list(CIPHERS)
        .map_err(config_err("cipher list"))?;
    // A store of our own replaces the one the builder filled from OpenSSL's default paths, so
    // that a configured CA is the only anchor, as with rustls.
    b.set_cert_store(trust_store(cfg)?);
    b.set_verify(SslVerifyMode::PEER);
    let (chain, key) = crate::tls::upstream_identity(&cfg.cert, &cfg.key)?;
    let cert_err = |e: ErrorStack| file_err(&cfg.cert, e);
    let leaf = X509::from_der(&chain[0]).map_err(cert_err)?;
    b.set_certificate(&leaf).map_err(cert_err)?;
    for extra in &chain[1..] {
        let extra = X509::from_der(extra).map_err(cert_err)?;
        b.add_extra_chain_cert(extra).map_err(cert_err)?;
    }
    let key_err = |e: ErrorStack| file_err(&cfg.key.pem, e);
    let pkey = PKey::private_key_from_der(key.secret_der()).map_err(key_err)?;
    b.set_private_key(&pkey).map_err(key_err)?;
    b.check_private_key().map_err(|e| {
        file_err(
            &cfg.key.pem,
            format!("does not fit certificate {}: {e}", cfg.cert),
        )
    })?;
    Ok(b)
}

/// The configured CA, or the system roots rustls would trust (skipping, like rustls, what OpenSSL
/// cannot read).
fn trust_store(cfg: &UpstreamConfig) -> Result<X509Store, TlsError> {
    let mut store = X509StoreBuilder::new().map_err(config_err("trust store"))?;
    let mut anchors = 0;
    match &cfg.ca {
        Some(ca) => {
            let ca_err = |e: ErrorStack| file_err(&ca.display(), e);
            for der in crate::tls::load_certs(ca)? {
                store
                    .add_cert(X509::from_der(&der).map_err(ca_err)?)
                    .map_err(ca_err)?;
                anchors += 1;
            }
        }
        None => {
            for der in crate::tls::system_roots_der()? {
                if let Ok(cert) = X509::from_der(&der) {
                    anchors += usize::from(store.add_cert(cert).is_ok());
                }
            }
        }
    }
    if anchors == 0 {
        return Err(TlsError::Config(
            "no CA certificate OpenSSL can use; set --upstream-ca".into(),
        ));
    }
    Ok(store.build())
}

/// OpenSSL's reasons that mean no suite or version in common, as its error strings word them
/// (the alerts the registry sent, or what OpenSSL itself found).
const SUITE_REASONS: &[&str] = &[
    "alert handshake failure",
    "alert insufficient security",
    "no ciphers available",
    "no shared cipher",
];
const VERSION_REASONS: &[&str] = &[
    "alert protocol version",
    "unsupported protocol",
    "no protocols available",
];

fn classify(e: &ssl::Error, verify: X509VerifyResult) -> Failure {
    let reasons: Vec<&str> = e
        .ssl_error()
        .map(|stack| stack.errors().iter().filter_map(|x| x.reason()).collect())
        .unwrap_or_default();
    let any = |list: &[&str]| reasons.iter().any(|r| list.iter().any(|n| r.contains(n)));
    let version = any(VERSION_REASONS);
    if version || any(SUITE_REASONS) {
        return Failure::Mismatch {
            cause: Cause {
                text: reasons.join(", "),
                version,
            },
            offer: offer(),
        };
    }
    Failure::Other(if verify == X509VerifyResult::OK {
        e.to_string()
    } else {
        format!("{e} (certificate: {})", verify.error_string())
    })
}

/// What this stack offers: the linked OpenSSL and the configured list (which suites it names
/// depends on that OpenSSL's build and configuration, so the command to expand it goes along).
fn offer() -> String {
    format!(
        "TLS 1.2 and 1.3 with {} and the cipher list `{CIPHERS}` (`openssl ciphers -v '{CIPHERS}'` expands it)",
        ::openssl::version::version()
    )
}
