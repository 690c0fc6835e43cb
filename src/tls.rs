//! TLS configuration, built once at start-up and shared through `Arc`: the local listener's server
//! config, the upstream client config (mutual TLS towards the registry) and the mock registry's.
//! Errors name the file (or environment variable) that is wrong, so a bad path, a key that does
//! not match its certificate or a wrong passphrase stops eppmux at start with a message an
//! operator can act on. Certificates and keys arrive as [`PemSource`]/[`KeySource`] (a file or an
//! `EPPMUX_*_PEM` variable; keys possibly encrypted, see the `keys` module); plain paths convert.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::warn;

use crate::keys::{KeyError, KeyInput, KeySource, PemInput, PemSource};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Config(String),
}

/// `source` is a path or a [`PemSource`]: what the message names.
fn file_err(source: &impl std::fmt::Display, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: source.to_string(),
        message: message.to_string(),
    }
}

/// Which options set a key's passphrase, for the message when an encrypted key has none.
#[derive(Clone, Copy)]
enum KeyRole {
    Listener,
    Upstream,
}

impl KeyRole {
    fn passphrase_options(self) -> &'static str {
        match self {
            KeyRole::Listener => "--tls-key-passphrase-file or EPPMUX_TLS_KEY_PASSPHRASE",
            KeyRole::Upstream => "--upstream-key-passphrase-file or EPPMUX_UPSTREAM_KEY_PASSPHRASE",
        }
    }
}

/// The provider named in Cargo.toml (ring), passed explicitly so that nothing depends on a
/// process-wide default being installed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3 only (rustls offers nothing older), with rustls' default suites.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Warn this long before a certificate of ours expires.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Refuses a certificate that is expired or not yet valid, naming the file and the dates, and
/// warns when it expires soon: better to stop at start than to fail every handshake later.
fn check_validity(path: &PemSource, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
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
            warn!(path = %path, expires = %validity.not_after, "certificate expires within 30 days");
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
pub fn load_leaf_chain(
    source: &(impl PemInput + ?Sized),
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let source = source.pem_source();
    let certs = load_certs(&source)?;
    check_validity(&source, &certs[0])?;
    Ok(certs)
}

pub fn load_certs(
    source: &(impl PemInput + ?Sized),
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let source = source.pem_source();
    let pem = source.read().map_err(|e| file_err(&source, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&source, e))?;
    if certs.is_empty() {
        return Err(file_err(&source, "no PEM certificate found"));
    }
    Ok(certs)
}

/// When the earliest certificate in `source` expires, as seconds since the Unix epoch: the leaf of
/// a chain, or the first CA of a bundle to go. For the expiry gauge and its alert.
pub fn expires_at(source: &(impl PemInput + ?Sized)) -> Result<i64, TlsError> {
    let source = source.pem_source();
    let mut earliest = i64::MAX;
    for cert in load_certs(&source)? {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| file_err(&source, format!("unreadable certificate: {e}")))?;
        earliest = earliest.min(parsed.validity().not_after.timestamp());
    }
    Ok(earliest)
}

/// The private key, decrypted if it is encrypted (PKCS#8 or the legacy OpenSSL form).
pub fn load_key(key: &(impl KeyInput + ?Sized)) -> Result<PrivateKeyDer<'static>, TlsError> {
    load_key_for(&key.key_source(), None)
}

fn load_key_for(
    key: &KeySource,
    role: Option<KeyRole>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    if let Some(path) = key.pem.path() {
        warn_if_readable_by_others(path);
    }
    key.decode().map_err(|e| match (&e, role) {
        (KeyError::NoPassphrase { .. }, Some(role)) => {
            file_err(&key.pem, format!("{e}: set {}", role.passphrase_options()))
        }
        (KeyError::NoKey(_) | KeyError::NotPem(_), _) => {
            file_err(&key.pem, format!("no usable private key: {e}"))
        }
        _ => file_err(&key.pem, e),
    })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_err(&path.display(), e))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(system_roots_der()?);
    if added == 0 {
        return Err(TlsError::Config(
            "no usable system CA certificate found; set --upstream-ca".into(),
        ));
    }
    Ok(roots)
}

/// The platform's root certificates as rustls-native-certs finds them (`SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, the distribution's bundle): the one source of "the system roots" for both
/// upstream TLS stacks.
pub(crate) fn system_roots_der() -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(TlsError::Config(format!(
            "no system CA certificates found ({:?}); set --upstream-ca",
            found.errors.first().map(|e| e.to_string())
        )));
    }
    Ok(found.certs)
}

/// The client certificate chain (leaf valid now) and its key, decrypted if need be, that eppmux
/// presents to a registry: read once here for whichever TLS stack presents them.
pub(crate) fn upstream_identity<C: PemInput + ?Sized, K: KeyInput + ?Sized>(
    cert: &C,
    key: &K,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_leaf_chain(&cert.pem_source())?;
    let key_der = load_key_for(&key.key_source(), Some(KeyRole::Upstream))?;
    Ok((chain, key_der))
}

/// What [`write_ca_bundle`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleSummary {
    pub system_roots: usize,
    pub added: usize,
}

/// Writes `out`: the system's root certificates (from `system_roots`, or the platform's store as
/// rustls-native-certs finds it) followed by the CA certificates in `cas`, each once, as PEM.
///
/// Python (and OpenSSL generally) takes a process's default trust from one file,
/// `SSL_CERT_FILE`; pointing it at eppmux's CA alone would make every other TLS connection of the
/// process fail. This bundle keeps both. It is written next to `out` and renamed into place, so a
/// process starting meanwhile reads the old file or the new one, never half of one.
pub fn write_ca_bundle(
    cas: &[std::path::PathBuf],
    system_roots: Option<&Path>,
    out: &Path,
) -> Result<BundleSummary, TlsError> {
    let system = match system_roots {
        Some(path) => load_certs(path)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(TlsError::Config(format!(
                    "no system CA certificates found ({:?}); give --system-roots FILE",
                    found.errors.first().map(|e| e.to_string())
                )));
            }
            found.certs
        }
    };
    let mut seen = std::collections::HashSet::new();
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let encode = |cert: &CertificateDer<'_>| {
        pem::encode_config(&pem::Pem::new("CERTIFICATE", cert.as_ref()), lf)
    };
    let mut text = String::from(
        "# Trust bundle written by `eppmux ca-bundle`: the system's root CAs, then eppmux's CA.\n",
    );
    let mut summary = BundleSummary {
        system_roots: 0,
        added: 0,
    };
    for cert in &system {
        if seen.insert(cert.as_ref().to_vec()) {
            text.push_str(&encode(cert));
            summary.system_roots += 1;
        }
    }
    for ca in cas {
        for (i, cert) in load_certs(ca)?.iter().enumerate() {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
                .map_err(|e| file_err(&ca.display(), format!("unreadable certificate: {e}")))?;
            // OpenSSL only anchors trust in CA certificates: a leaf here would verify nothing.
            if !parsed.is_ca() {
                return Err(file_err(
                    &ca.display(),
                    format!(
                        "certificate {} ({}) is not a CA certificate; give the CA that signed eppmux's listener certificate",
                        i + 1,
                        parsed.subject()
                    ),
                ));
            }
            if seen.insert(cert.as_ref().to_vec()) {
                text.push_str(&format!(
                    "# eppmux CA from {}: {}\n",
                    ca.display(),
                    parsed.subject()
                ));
                text.push_str(&encode(cert));
                summary.added += 1;
            }
        }
    }
    let file_name = out
        .file_name()
        .ok_or_else(|| TlsError::Config(format!("--out {}: not a file name", out.display())))?;
    let tmp = out.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            file_err(&out.display(), e)
        })?;
    Ok(summary)
}

/// Server side of a TLS listener; with `client_ca`, clients must present a certificate it signed.
pub fn server_config(
    cert: &(impl PemInput + ?Sized),
    key: &(impl KeyInput + ?Sized),
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = (cert.pem_source(), key.key_source());
    let certs = load_leaf_chain(&cert)?;
    let key_der = load_key_for(&key, Some(KeyRole::Listener))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| file_err(&ca.display(), e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| file_err(&key.pem, format!("does not fit certificate {cert}: {e}")))?;
    Ok(Arc::new(config))
}

/// Client side towards a registry: verification is always on (against `ca`, or the system roots);
/// `identity` is the client certificate and key (paths, or a [`PemSource`] and [`KeySource`]).
pub fn client_config<C: PemInput + ?Sized, K: KeyInput + ?Sized>(
    ca: Option<&Path>,
    identity: Option<(&C, &K)>,
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
        Some((cert, key)) => {
            let (cert, key) = (cert.pem_source(), key.key_source());
            let (chain, key_der) = upstream_identity(&cert, &key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| file_err(&key.pem, format!("does not fit certificate {cert}: {e}")))?
        }
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
    fn key_with(name: &str, passphrase: Option<&str>) -> KeySource {
        KeySource {
            pem: file(&format!("tests/fixtures/keys/{name}")).into(),
            passphrase: passphrase.map(crate::secret::Secret::new),
        }
    }

    const PASS: &str = "eppmux fixture passphrase";

    #[test]
    fn encrypted_keys_load_with_their_passphrase_in_every_supported_form() {
        for (cert, key) in crate::keys::tests::ENCRYPTED_FIXTURES {
            let cert = file(&format!("tests/fixtures/keys/{cert}"));
            // Both sides: the listener's key, and the client key presented to the registry.
            server_config(&cert, &key_with(key, Some(PASS)), None)
                .unwrap_or_else(|e| panic!("listener with {key}: {e}"));
            client_config(
                Some(&file("certs-example/ca.pem")),
                Some((&cert, &key_with(key, Some(PASS)))),
            )
            .unwrap_or_else(|e| panic!("upstream with {key}: {e}"));
        }
    }

    #[test]
    fn encrypted_key_errors_name_the_file_the_cause_and_the_option_to_set() {
        let cert = file("tests/fixtures/keys/rsa.pem");
        let ca = file("certs-example/ca.pem");
        // These two were "no usable private key: no items found" and "base64 decode error".
        for key in ["rsa-key-pkcs8-aes256.pem", "rsa-key-legacy-aes256.pem"] {
            let err = server_config(&cert, &key_with(key, None), None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key)
                    && err.contains("encrypted")
                    && err.contains("no passphrase")
                    && err.contains("EPPMUX_TLS_KEY_PASSPHRASE"),
                "{err}"
            );
            let err = client_config(Some(&ca), Some((&cert, &key_with(key, None))))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("--upstream-key-passphrase-file"),
                "{err}"
            );
            let err = client_config(Some(&ca), Some((&cert, &key_with(key, Some("wrong")))))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("wrong passphrase"),
                "{err}"
            );
        }
        let err = server_config(
            &cert,
            &key_with("rsa-key-pkcs12-3des.pem", Some(PASS)),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("rsa-key-pkcs12-3des.pem") && err.contains("cannot decrypt"),
            "{err}"
        );
        // A decrypted key that belongs to another certificate is still caught.
        let err = server_config(
            &file("tests/fixtures/keys/ec.pem"),
            &key_with("rsa-key-pkcs8-aes256.pem", Some(PASS)),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn certificates_and_keys_from_environment_values_are_named_by_variable() {
        let pem = |name: &str| std::fs::read_to_string(file(name)).unwrap();
        let cert =
            PemSource::from_env_value("EPPMUX_TLS_CERT_PEM", &pem("certs-example/server.pem"))
                .unwrap();
        let key =
            PemSource::from_env_value("EPPMUX_TLS_KEY_PEM", &pem("certs-example/server-key.pem"))
                .unwrap();
        assert!(server_config(&cert, &key, None).is_ok());
        let wrong =
            PemSource::from_env_value("EPPMUX_TLS_KEY_PEM", &pem("certs-example/client-key.pem"))
                .unwrap();
        let err = server_config(&cert, &wrong, None).unwrap_err().to_string();
        assert!(
            err.contains("<from EPPMUX_TLS_KEY_PEM>")
                && err.contains("does not fit certificate <from EPPMUX_TLS_CERT_PEM>"),
            "{err}"
        );
    }
}
