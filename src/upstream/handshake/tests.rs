//! The OpenSSL stack's guarantees, against real servers on loopback: a rustls server that requires
//! a client certificate (verification, hostname, SNI, mutual TLS, encrypted keys) and OpenSSL
//! servers set up as old registries (a TLS 1.1 one: the minimum version; one with a suite outside
//! eppmux's list: the diagnosis).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::openssl::ssl::{SslAcceptor, SslAcceptorBuilder, SslMethod, SslVersion};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Connector;
use crate::config::{UpstreamConfig, UpstreamTls};
use crate::keys::KeySource;
use crate::upstream::OpenError;

fn file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

const PASS: &str = "eppmux fixture passphrase";

/// An OpenSSL upstream for `addr`, presenting the fixture RSA certificate with its key encrypted
/// as `key`.
fn upstream(addr: &str, server_name: &str, ca: &str, key: &str) -> UpstreamConfig {
    UpstreamConfig {
        addr: addr.into(),
        server_name: server_name.into(),
        tls: UpstreamTls::Openssl,
        ca: Some(file(ca)),
        cert: file("tests/fixtures/keys/rsa.pem").into(),
        key: KeySource {
            pem: file(&format!("tests/fixtures/keys/{key}")).into(),
            passphrase: Some(crate::secret::Secret::new(PASS)),
        },
        step_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(5),
    }
}

/// What a server saw of one handshake.
struct Seen {
    sni: Option<String>,
    client_cert: Option<CertificateDer<'static>>,
}

/// A rustls server with the example registry certificate that requires a client certificate
/// signed by the example CA, for one connection; it echoes one line and reports what it saw.
async fn rustls_registry() -> (String, tokio::task::JoinHandle<Result<Seen, String>>) {
    let tls = crate::tls::server_config(
        &file("certs-example/server.pem"),
        &file("certs-example/server-key.pem"),
        Some(&file("certs-example/ca.pem")),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            sni: conn.server_name().map(str::to_string),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned()),
        };
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok(seen)
    });
    (addr, task)
}

async fn handshake(cfg: &UpstreamConfig) -> Result<Box<dyn super::Stream>, OpenError> {
    let connector = Connector::new(cfg).expect("the OpenSSL configuration");
    let tcp = TcpStream::connect(&cfg.addr).await.unwrap();
    connector.handshake(tcp).await
}

#[tokio::test]
async fn the_openssl_stack_verifies_the_registry_sends_sni_and_presents_the_client_certificate() {
    let (addr, server) = rustls_registry().await;
    let cfg = upstream(
        &addr,
        "localhost",
        "certs-example/ca.pem",
        "rsa-key-pkcs8-aes256.pem",
    );
    let mut tls = handshake(&cfg).await.expect("a verified handshake");
    tls.write_all(b"hello").await.unwrap();
    tls.flush().await.unwrap();
    let mut echo = [0u8; 5];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");
    let seen = server.await.unwrap().expect("the server's side");
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    let ours = crate::tls::load_certs(&file("tests/fixtures/keys/rsa.pem")).unwrap();
    assert_eq!(
        seen.client_cert.as_ref(),
        Some(&ours[0]),
        "the configured client certificate"
    );
}

#[tokio::test]
async fn the_openssl_stack_refuses_a_registry_it_cannot_verify_or_whose_name_does_not_match() {
    // The CA file holds a certificate that did not sign the registry's.
    let (addr, server) = rustls_registry().await;
    let cfg = upstream(
        &addr,
        "localhost",
        "tests/fixtures/keys/ec.pem",
        "rsa-key-legacy-aes256.pem",
    );
    let err = handshake(&cfg)
        .await
        .err()
        .expect("an unverifiable registry");
    assert!(
        matches!(&err, OpenError::Tls(m) if m.contains("certificate verify failed")),
        "{err}"
    );
    let _ = server.await;

    // The right CA, but the certificate is not for the name eppmux verifies.
    let (addr, server) = rustls_registry().await;
    let cfg = upstream(
        &addr,
        "registry.invalid",
        "certs-example/ca.pem",
        "rsa-key-legacy-des3.pem",
    );
    let err = handshake(&cfg).await.err().expect("a name mismatch");
    assert!(
        matches!(&err, OpenError::Tls(m) if m.contains("hostname mismatch")),
        "{err}"
    );
    let _ = server.await;
}

/// An OpenSSL server with the fixture RSA certificate, set up by `old` as an old registry would
/// be, for one connection; it reports whether a handshake succeeded.
async fn openssl_registry(
    old: impl FnOnce(&mut SslAcceptorBuilder),
) -> (String, tokio::task::JoinHandle<bool>) {
    let mut b = SslAcceptor::mozilla_intermediate(SslMethod::tls_server()).unwrap();
    old(&mut b);
    b.set_certificate_chain_file(file("tests/fixtures/keys/rsa.pem"))
        .unwrap();
    b.set_private_key_file(
        file("tests/fixtures/keys/rsa-key.pem"),
        ::openssl::ssl::SslFiletype::PEM,
    )
    .unwrap();
    let acceptor = Arc::new(b.build());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ssl = ::openssl::ssl::Ssl::new(acceptor.context()).unwrap();
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut tls).accept().await.is_ok()
    });
    (addr, server)
}

#[tokio::test]
async fn the_openssl_stack_refuses_tls_1_1_and_says_neither_stack_reaches_such_a_registry() {
    // An old registry: TLS 1.1 at most, which today's OpenSSL allows only at security level 0.
    let (addr, server) = openssl_registry(|b| {
        b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
        b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1_1)).unwrap();
    })
    .await;
    let cfg = upstream(
        &addr,
        "localhost",
        "certs-example/ca.pem",
        "rsa-key-pkcs8-sha1.pem",
    );
    // OpenSSL 3 refuses TLS 1.1 at its default security level anyway: the configured minimum is
    // read back too, so that this test also holds on a library that would not.
    let mut configured = super::openssl::configure(&cfg).unwrap();
    assert_eq!(configured.min_proto_version(), Some(SslVersion::TLS1_2));
    let err = handshake(&cfg).await.err().expect("no TLS 1.1");
    let OpenError::NoCommonTls(diagnosis) = &err else {
        panic!("not the diagnosis: {err}");
    };
    assert!(diagnosis.cause.version, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("eppmux (OpenSSL) offers TLS 1.2 and 1.3 with OpenSSL ")
            && text.contains("cannot be reached with either stack"),
        "{text}"
    );
    assert!(
        !server.await.unwrap(),
        "the server saw no handshake succeed"
    );
}

#[tokio::test]
async fn the_openssl_stack_says_what_it_offers_when_the_registry_has_no_suite_in_its_list() {
    // Camellia is outside OpenSSL's DEFAULT list, so outside what eppmux offers.
    let (addr, server) = openssl_registry(|b| {
        b.set_cipher_list("ECDHE-RSA-CAMELLIA256-SHA384").unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    })
    .await;
    let cfg = upstream(
        &addr,
        "localhost",
        "certs-example/ca.pem",
        "rsa-key-pkcs8-aes256.pem",
    );
    let err = handshake(&cfg).await.err().expect("no suite in common");
    let OpenError::NoCommonTls(diagnosis) = &err else {
        panic!("not the diagnosis: {err}");
    };
    assert!(!diagnosis.cause.version, "{err}");
    let text = err.to_string();
    for part in [
        &format!("TLS handshake with {addr}: the registry and eppmux share no cipher suite or TLS version (sslv3 alert handshake failure)"),
        "eppmux (OpenSSL) offers TLS 1.2 and 1.3 with OpenSSL ",
        "the cipher list `DEFAULT:!aNULL:",
        &format!("`openssl s_client -connect {addr} -servername localhost -tls1_2 -cipher SUITE`"),
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    // The hint to switch stacks is for rustls only.
    assert!(!text.contains("upstream_tls"), "{text}");
    assert!(
        !server.await.unwrap(),
        "the server saw no handshake succeed"
    );
}

#[test]
fn encrypted_keys_work_with_the_openssl_stack_and_a_key_of_another_certificate_does_not() {
    for (cert, key) in crate::keys::tests::ENCRYPTED_FIXTURES {
        let mut cfg = upstream("127.0.0.1:700", "localhost", "certs-example/ca.pem", key);
        cfg.cert = file(&format!("tests/fixtures/keys/{cert}")).into();
        if let Err(e) = Connector::new(&cfg) {
            panic!("{cert} with {key}: {e}");
        }
    }
    let mut cfg = upstream(
        "127.0.0.1:700",
        "localhost",
        "certs-example/ca.pem",
        "rsa-key-pkcs8-aes256.pem",
    );
    cfg.cert = file("tests/fixtures/keys/ec.pem").into();
    let err = Connector::new(&cfg).err().expect("a mismatched key");
    assert!(err.to_string().contains("does not fit"), "{err}");
}
