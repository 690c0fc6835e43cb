//! Why a registry handshake failed, when the cause is that the two TLS stacks have nothing in
//! common: the alerts and errors that mean it ([`rustls_mismatch`]), what eppmux offered (read
//! from the rustls provider in use, [`rustls_offer`], not kept by hand), and the `openssl
//! s_client` lines that show what the registry offers. One text for `eppmux check`, the log line
//! of a failed open and `/readyz`, which all print the [`NoCommonTls`] error.

use std::fmt;

use rustls::{AlertDescription, Error as RustlsError, PeerIncompatible, PeerMisbehaved};

/// What the stack reported, and whether it was about TLS versions rather than suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The stack's own words (e.g. "received fatal alert: HandshakeFailure").
    pub text: String,
    /// A protocol-version alert or error: the registry may speak only TLS 1.0/1.1.
    pub version: bool,
}

/// A handshake that failed because the registry and eppmux share no cipher suite or TLS version.
#[derive(Debug, Clone, thiserror::Error)]
pub struct NoCommonTls {
    /// HOST:PORT as configured.
    pub addr: String,
    /// The name verified and sent as SNI.
    pub server_name: String,
    pub cause: Cause,
    /// What eppmux's stack offered, in words.
    pub offer: String,
    /// "rustls" or "OpenSSL".
    pub stack: &'static str,
}

impl fmt::Display for NoCommonTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s_client = self.s_client();
        write!(
            f,
            "TLS handshake with {}: the registry and eppmux share no cipher suite or TLS version ({}). \
             eppmux ({}) offers {}. \
             To see what the registry offers: `{s_client} -tls1_2` names the suite it picks from OpenSSL's list (the \"Cipher is\" line); \
             `{s_client} -tls1_2 -cipher SUITE` tries one suite at a time (`openssl ciphers -v` lists them, e.g. ECDHE-RSA-AES256-SHA384, AES256-GCM-SHA384); \
             `{s_client} -tls1_3` tries TLS 1.3.",
            self.addr, self.cause.text, self.stack, self.offer
        )?;
        if self.stack == "rustls" {
            f.write_str(
                " rustls implements no CBC suite and no RSA key exchange: a registry that offers only those needs \
                 upstream_tls = \"openssl\" (an eppmux built with `--features openssl`).",
            )?;
        }
        if self.cause.version {
            f.write_str(
                " A registry that speaks only TLS 1.0 or 1.1 cannot be reached with either stack: eppmux requires TLS 1.2 or later.",
            )?;
        }
        Ok(())
    }
}

impl NoCommonTls {
    /// `openssl s_client -connect HOST:PORT`, with `-servername` when eppmux verifies (and sends
    /// as SNI) another name than HOST.
    fn s_client(&self) -> String {
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host == self.server_name {
            format!("openssl s_client -connect {}", self.addr)
        } else {
            format!(
                "openssl s_client -connect {} -servername {}",
                self.addr, self.server_name
            )
        }
    }
}

/// The cause, when a rustls handshake error means the two stacks have nothing in common: a
/// handshake-failure, protocol-version or insufficient-security alert from the registry, or a
/// registry rustls finds incompatible (no common suite, group or version; a suite it never
/// offered). Anything else (certificates, a reset) is `None`: another diagnosis.
pub fn rustls_mismatch(e: &std::io::Error) -> Option<Cause> {
    let inner = e.get_ref()?.downcast_ref::<RustlsError>()?;
    let version = match inner {
        RustlsError::AlertReceived(AlertDescription::ProtocolVersion) => true,
        RustlsError::AlertReceived(
            AlertDescription::HandshakeFailure | AlertDescription::InsufficientSecurity,
        ) => false,
        RustlsError::PeerIncompatible(p) => matches!(
            p,
            PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
        ),
        RustlsError::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedCipherSuite) => false,
        _ => return None,
    };
    Some(Cause {
        text: inner.to_string(),
        version,
    })
}

/// What the rustls client offers, from the provider and versions it is built with: suites by
/// version, then the key-exchange groups.
pub fn rustls_offer() -> String {
    let provider = crate::tls::provider();
    let mut by_version = Vec::new();
    for version in crate::tls::VERSIONS {
        let suites: Vec<String> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == *version)
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        if !suites.is_empty() {
            by_version.push(format!(
                "{} ({})",
                version_name(version.version),
                suites.join(", ")
            ));
        }
    }
    let groups: Vec<String> = provider
        .kx_groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect();
    format!(
        "{}, key exchange {}",
        by_version.join(" and "),
        groups.join(", ")
    )
}

fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(e: RustlsError) -> std::io::Error {
        // As tokio-rustls hands handshake errors over.
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    fn diagnosis(cause: Cause, addr: &str, server_name: &str) -> String {
        NoCommonTls {
            addr: addr.into(),
            server_name: server_name.into(),
            cause,
            offer: rustls_offer(),
            stack: "rustls",
        }
        .to_string()
    }

    #[test]
    fn alerts_and_errors_that_mean_no_common_suite_or_version_are_told_apart_from_the_rest() {
        let suites = rustls_mismatch(&io(RustlsError::AlertReceived(
            AlertDescription::HandshakeFailure,
        )))
        .expect("a handshake-failure alert is a mismatch");
        assert_eq!(
            suites,
            Cause {
                text: "received fatal alert: HandshakeFailure".into(),
                version: false
            }
        );
        for version in [
            RustlsError::AlertReceived(AlertDescription::ProtocolVersion),
            RustlsError::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
        ] {
            assert!(rustls_mismatch(&io(version)).unwrap().version);
        }
        for other in [
            RustlsError::AlertReceived(AlertDescription::InsufficientSecurity),
            RustlsError::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon),
            RustlsError::PeerMisbehaved(PeerMisbehaved::SelectedUnofferedCipherSuite),
        ] {
            assert!(!rustls_mismatch(&io(other)).unwrap().version);
        }
        // Certificates, an unknown CA, a reset: not this diagnosis.
        for unrelated in [
            io(RustlsError::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
            io(RustlsError::AlertReceived(AlertDescription::BadCertificate)),
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        ] {
            assert_eq!(rustls_mismatch(&unrelated), None, "{unrelated}");
        }
    }

    #[test]
    fn the_offer_is_read_from_the_rustls_provider_in_use() {
        let offer = rustls_offer();
        let provider = crate::tls::provider();
        for suite in &provider.cipher_suites {
            assert!(offer.contains(&format!("{:?}", suite.suite())), "{offer}");
        }
        for group in &provider.kx_groups {
            assert!(offer.contains(&format!("{:?}", group.name())), "{offer}");
        }
        assert!(
            offer.starts_with("TLS 1.3 (TLS13_") && offer.contains(" and TLS 1.2 (TLS_ECDHE_"),
            "{offer}"
        );
    }

    #[test]
    fn the_diagnosis_says_what_is_wrong_what_eppmux_offers_and_how_to_probe_the_registry() {
        let suites = Cause {
            text: "received fatal alert: HandshakeFailure".into(),
            version: false,
        };
        let text = diagnosis(suites.clone(), "epp.example.net:700", "epp.example.net");
        for part in [
            "TLS handshake with epp.example.net:700: the registry and eppmux share no cipher suite or TLS version (received fatal alert: HandshakeFailure)",
            &format!("eppmux (rustls) offers {}", rustls_offer()),
            "`openssl s_client -connect epp.example.net:700 -tls1_2`",
            "`openssl s_client -connect epp.example.net:700 -tls1_2 -cipher SUITE`",
            "`openssl s_client -connect epp.example.net:700 -tls1_3`",
            "upstream_tls = \"openssl\"",
            "--features openssl",
        ] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert!(!text.contains("TLS 1.0 or 1.1"), "{text}");
        assert!(!text.contains('\n'), "one log line: {text}");

        // A registry reached by address, verified by name: s_client must send that name too.
        let text = diagnosis(suites, "192.0.2.7:700", "epp.example.net");
        assert!(
            text.contains(
                "`openssl s_client -connect 192.0.2.7:700 -servername epp.example.net -tls1_2`"
            ),
            "{text}"
        );
        let version = Cause {
            text: "received fatal alert: ProtocolVersion".into(),
            version: true,
        };
        let text = diagnosis(version, "[2001:db8::7]:700", "2001:db8::7");
        assert!(
            text.contains("`openssl s_client -connect [2001:db8::7]:700 -tls1_3`")
                && text.contains("only TLS 1.0 or 1.1 cannot be reached with either stack"),
            "{text}"
        );
    }
}
