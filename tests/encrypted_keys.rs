//! eppmux started with an encrypted registry-client key in each form it reads — PKCS#8
//! (PBES2 with PBKDF2 or scrypt) and legacy OpenSSL PEM, RSA and EC — its passphrase from
//! `upstream_key_passphrase_file` or from `EPPMUX_UPSTREAM_KEY_PASSPHRASE`, logs in at the mock
//! registry with it and serves a client.

mod common;

use std::path::PathBuf;

use common::*;
use eppmux::config::{Config, EnvSecrets};
use eppmux::secret::Secret;
use eppmux::Proxy;
use eppmux_mock::MockConfig;
use tokio_util::sync::CancellationToken;

fn key_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eppmux_serves_with_an_encrypted_key_in_every_form_and_either_passphrase_source() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let forms = [
        ("rsa.pem", "rsa-key-pkcs8-aes256.pem", true),
        ("rsa.pem", "rsa-key-pkcs8-sha1.pem", false),
        ("rsa.pem", "rsa-key-legacy-aes256.pem", true),
        ("rsa.pem", "rsa-key-legacy-des3.pem", false),
        ("ec.pem", "ec-key-pkcs8-scrypt.pem", false),
        ("ec.pem", "ec-key-legacy-aes128.pem", true),
    ];
    for (cert, key, from_file) in forms {
        let mut o = proxy_options(mock.addr);
        o.registry.upstream_cert = Some(key_fixture(cert));
        o.registry.upstream_key = Some(key_fixture(key));
        let mut env = EnvSecrets {
            password: Some(Secret::new(PASSWORD)),
            ..EnvSecrets::default()
        };
        if from_file {
            o.registry.upstream_key_passphrase_file = Some(key_fixture("passphrase.txt"));
        } else {
            env.upstream_key_passphrase = Some(Secret::new("eppmux fixture passphrase"));
        }
        let cfg = Config::from_options(o, &env).unwrap_or_else(|e| panic!("{key}: {e}"));
        let proxy = Proxy::start(&cfg, CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        proxy.pools()[0].wait_for(|s| s.live >= 1).await;
        let mut c = Client::plain(proxy.plain_addr.unwrap()).await;
        c.greeting().await;
        assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
        let r = c
            .command(&domain_cmd("check", "encrypted-key.gov", key))
            .await;
        assert_eq!(r.code, 1000, "{key}");
        proxy.shutdown().await;
    }
    // Each run logged in once, with its form's certificate; none with the example one.
    let by_cert = mock.logins_by_certificate();
    let fingerprint =
        |cert: &str| eppmux::fingerprint(&eppmux::tls::load_certs(&key_fixture(cert)).unwrap()[0]);
    assert_eq!(by_cert.len(), 2, "{by_cert:?}");
    assert_eq!(
        by_cert.get(&fingerprint("rsa.pem")),
        Some(&4),
        "{by_cert:?}"
    );
    assert_eq!(by_cert.get(&fingerprint("ec.pem")), Some(&2), "{by_cert:?}");
    mock.shutdown().await;
}
