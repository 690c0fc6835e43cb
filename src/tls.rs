//! TLS configuration, built once at start-up and shared through `Arc`: the local listener's server
//! config, the upstream client config (mutual TLS towards the registry) and the mock registry's.
//! Errors name the file that is wrong, so a bad path or a key that does not match its certificate
//! stops eppmux at start with a message an operator can act on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The provider named in Cargo.toml (ring), passed explicitly so that nothing depends on a
/// process-wide default being installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3 only (rustls offers nothing older), with rustls' default suites.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Warn this long before a certificate of ours expires.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Refuses a certificate that is expired or not yet valid, naming the file and the dates, and
/// warns when it expires soon: better to stop at start than to fail every handshake later.
fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| file_err(path, format!("unreadable certificate: {e}")))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now < validity.not_before {
        return Err(file_err(
            path,
            format!("certificate is not valid before {}", validity.not_before),
        ));
    }
    if now > validity.not_after {
        return Err(file_err(
            path,
            format!("certificate expired on {}", validity.not_after),
        ));
    }
    if let Some(left) = validity.time_to_expiration() {
        if left.whole_seconds() < EXPIRY_WARNING.as_secs() as i64 {
            warn!(path = %path.display(), expires = %validity.not_after, "certificate expires within 30 days");
        }
    }
    Ok(())
}

/// A private key that other users can read is someone else's key too.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "private key file is readable by other users; chmod 600 it");
            }
        }
    }
}

/// A certificate chain whose first (leaf) certificate is valid now.
pub fn load_leaf_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = load_certs(path)?;
    check_validity(path, &certs[0])?;
    Ok(certs)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_readable_by_others(path);
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("no usable private key: {e}")))
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Config(format!(
            "no system CA certificates found ({:?}); set --upstream-ca",
            found.errors.first().map(|e| e.to_string())
        )));
    }
    Ok(roots)
}

/// Server side of a TLS listener; with `client_ca`, clients must present a certificate it signed.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_leaf_chain(cert)?;
    let key_der = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key_der).map_err(|e| {
        file_err(
            key,
            format!("does not fit certificate {}: {e}", cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}

/// Client side towards a registry: verification is always on (against `ca`, or the system roots);
/// `identity` is the client certificate and key.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(ca) => load_roots(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_leaf_chain(cert)?, load_key(key)?)
            .map_err(|e| {
                file_err(
                    key,
                    format!("does not fit certificate {}: {e}", cert.display()),
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn startup_errors_name_the_file_and_the_problem() {
        let ca = file("certs-example/ca.pem");
        let (cert, key) = (
            file("certs-example/server.pem"),
            file("certs-example/server-key.pem"),
        );
        assert!(server_config(&cert, &key, Some(&ca)).is_ok());

        let err = server_config(
            &file("tests/fixtures/expired.pem"),
            &file("tests/fixtures/expired-key.pem"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("expired.pem") && err.contains("expired on"),
            "{err}"
        );

        let err = server_config(&cert, &file("certs-example/client-key.pem"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client-key.pem") && err.contains("does not fit"),
            "{err}"
        );

        let err = server_config(&file("nope/missing.pem"), &key, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");

        let err = client_config(
            Some(&ca),
            Some((
                &file("tests/fixtures/expired.pem"),
                &file("tests/fixtures/expired-key.pem"),
            )),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expired on"), "{err}");

        // A key file is not a certificate.
        let err = server_config(&key, &key, None).unwrap_err().to_string();
        assert!(err.contains("server-key.pem"), "{err}");
    }
}
