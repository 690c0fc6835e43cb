//! A registry with a legacy TLS stack (issue 16): `tests/interop/legacy_tls_front.py`, Python's
//! `ssl` (OpenSSL) offering only TLS 1.2 with `ECDHE-RSA-AES256-SHA384` and requiring a client
//! certificate, in front of the mock registry. With rustls, eppmux cannot connect and says why —
//! in `eppmux check`, its log and `/readyz`; with `upstream_tls = "openssl"` (a build with
//! `--features openssl`) a real client logs in, checks and logs out through it.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use eppmux_mock::{MockConfig, MockRegistry};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// How long a step may take before the test fails (a guard, never a pause).
const GUARD: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(ROOT).join("tests/fixtures/keys").join(name)
}

/// The legacy front and the mock registry behind it.
struct LegacyRegistry {
    mock: MockRegistry,
    front: Child,
    events: Lines<BufReader<ChildStdout>>,
    addr: String,
}

impl LegacyRegistry {
    async fn start() -> LegacyRegistry {
        init_tracing();
        let mock = start_mock(MockConfig::default()).await;
        let mut front = Command::new("python3")
            .arg(format!("{ROOT}/tests/interop/legacy_tls_front.py"))
            .args(["--upstream", &mock.addr.to_string()])
            // The registry's certificate: RSA, as ECDHE-RSA suites need.
            .arg("--cert")
            .arg(fixture("rsa.pem"))
            .arg("--key")
            .arg(fixture("rsa-key.pem"))
            .arg("--ca")
            .arg(cert("ca.pem"))
            .arg("--upstream-cert")
            .arg(cert("client.pem"))
            .arg("--upstream-key")
            .arg(cert("client-key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the legacy TLS front");
        let events = BufReader::new(front.stdout.take().unwrap()).lines();
        let mut registry = LegacyRegistry {
            mock,
            front,
            events,
            addr: String::new(),
        };
        let port = registry.event().await;
        let port = port.strip_prefix("LISTENING ").expect("LISTENING <port>");
        registry.addr = format!("127.0.0.1:{port}");
        registry
    }

    /// The front's next event line (HANDSHAKE …, HANDSHAKE-FAILED …).
    async fn event(&mut self) -> String {
        let line = tokio::time::timeout(GUARD, self.events.next_line())
            .await
            .expect("the legacy front reports within the guard");
        line.expect("read the front's output")
            .expect("the legacy front exited")
    }

    async fn stop(mut self) {
        let _ = self.front.kill().await;
        self.mock.shutdown().await;
    }
}

/// `eppmux [check]` with the legacy registry's address and a client certificate it accepts; the key is
/// encrypted (PKCS#8), so both stacks go through eppmux's own decryption.
fn eppmux_for(subcommand: &[&str], registry: &str, stack: &str) -> Command {
    let mut cmd = Command::from(eppmux_command());
    cmd.args(subcommand)
        .args(["--upstream", registry])
        .args([
            "--upstream-server-name",
            "localhost",
            "--upstream-tls",
            stack,
        ])
        .args(["--clid", CLID])
        .arg("--upstream-cert")
        .arg(fixture("rsa.pem"))
        .arg("--upstream-key")
        .arg(fixture("rsa-key-pkcs8-aes256.pem"))
        .env(
            "EPPMUX_UPSTREAM_KEY_PASSPHRASE",
            "eppmux fixture passphrase",
        )
        .env("EPPMUX_PASSWORD", PASSWORD)
        .kill_on_drop(true);
    cmd
}

/// Asserts the diagnosis: what is wrong, every suite and group the rustls provider offers (read
/// from the provider itself, as eppmux does), and the s_client lines for this registry.
fn assert_diagnosis(text: &str, addr: &str) {
    let provider = rustls::crypto::ring::default_provider();
    let mut parts = vec![
        format!("TLS handshake with {addr}: the registry and eppmux share no cipher suite or TLS version (received fatal alert: HandshakeFailure)"),
        "eppmux (rustls) offers TLS 1.3 (".into(),
        format!("`openssl s_client -connect {addr} -servername localhost -tls1_2`"),
        format!("`openssl s_client -connect {addr} -servername localhost -tls1_2 -cipher SUITE`"),
        format!("`openssl s_client -connect {addr} -servername localhost -tls1_3`"),
        "upstream_tls = \"openssl\"".into(),
    ];
    parts.extend(
        provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite())),
    );
    parts.extend(provider.kx_groups.iter().map(|g| format!("{:?}", g.name())));
    for part in parts {
        assert!(text.contains(&part), "{part:?} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eppmux_check_says_a_cbc_only_registry_shares_no_suite_with_rustls_and_how_to_see_what_it_offers(
) {
    let mut registry = LegacyRegistry::start().await;
    let mut cmd = eppmux_for(&["check"], &registry.addr, "rustls");
    cmd.arg("--upstream-ca").arg(cert("ca.pem"));
    let out = tokio::time::timeout(GUARD, cmd.output())
        .await
        .expect("eppmux check ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("(verifying localhost, rustls)\n  FAILED: TLS handshake with "),
        "{stdout}"
    );
    assert_diagnosis(&stdout, &registry.addr);
    // The registry's side of it, in OpenSSL's words.
    assert_eq!(registry.event().await, "HANDSHAKE-FAILED NO_SHARED_CIPHER");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_eppmux_logs_the_diagnosis_and_readyz_gives_it_as_the_reason() {
    let mut registry = LegacyRegistry::start().await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = eppmux_for(&[], &registry.addr, "rustls");
    cmd.args(["--listen", "127.0.0.1:0", "--admin", &admin.to_string()])
        .arg("--upstream-ca")
        .arg(cert("ca.pem"))
        .args(["--log-format", "text", "--log-level", "warn"])
        // Failed handshakes take login tokens; the reason asserted is the connecting one.
        .args(["--max-logins-per-minute", "6000"])
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let seen = tokio::time::timeout(
        GUARD,
        read_log_until(&mut log, "upstream session could not be opened"),
    )
    .await
    .expect("a failed open is logged");
    let line = seen.lines().last().unwrap();
    assert!(line.contains(" WARN "), "{line}");
    assert_diagnosis(line, &registry.addr);
    assert_eq!(registry.event().await, "HANDSHAKE-FAILED NO_SHARED_CIPHER");

    // The handshake that was just logged has set the reason: /readyz gives it.
    let (code, body) = eppmux::admin::get(admin, "/readyz", GUARD).await.unwrap();
    assert_eq!(code, 503, "{body}");
    let reasons: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = reasons["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("account registrar1: ")
            && reason.contains("none logged in yet: TLS handshake with"),
        "{reason}"
    );
    assert_diagnosis(reason, &registry.addr);
    child.kill().await.unwrap();
    registry.stop().await;
}

#[cfg(not(feature = "openssl"))]
#[tokio::test]
async fn asking_for_openssl_in_a_build_without_it_stops_eppmux_naming_the_key_and_the_build() {
    let mut cmd = eppmux_for(&["check"], "127.0.0.1:700", "openssl");
    cmd.arg("--upstream-ca").arg(cert("ca.pem"));
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("upstream_tls (flag --upstream-tls): \"openssl\" needs an eppmux built with the openssl feature: `cargo build --release --features openssl`"),
        "{stderr}"
    );
}

#[cfg(feature = "openssl")]
mod with_openssl {
    use super::*;

    /// eppmux in-process, with the legacy registry as its upstream over OpenSSL.
    async fn proxy_over_openssl(registry: &LegacyRegistry) -> eppmux::Proxy {
        let mut o = proxy_options(registry.mock.addr);
        let r = &mut o.registry;
        r.upstream = Some(registry.addr.clone());
        r.upstream_tls = Some(eppmux::config::UpstreamTls::Openssl);
        r.upstream_cert = Some(fixture("rsa.pem"));
        r.upstream_key = Some(fixture("rsa-key-pkcs8-aes256.pem"));
        let env = eppmux::config::EnvSecrets {
            upstream_key_passphrase: Some(eppmux::secret::Secret::new("eppmux fixture passphrase")),
            ..test_env()
        };
        let cfg = eppmux::config::Config::from_options(o, &env).unwrap();
        eppmux::Proxy::start(&cfg, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    }

    /// `HANDSHAKE TLSv1.2 ECDHE-RSA-AES256-SHA384 <eppmux's client certificate> localhost`.
    fn expected_handshake() -> String {
        let ours = eppmux::tls::load_certs(&fixture("rsa.pem")).unwrap();
        format!(
            "HANDSHAKE TLSv1.2 ECDHE-RSA-AES256-SHA384 {} localhost",
            eppmux::fingerprint(&ours[0])
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_openssl_openssl_s_client_logs_in_checks_and_logs_out_through_a_cbc_only_registry()
    {
        let mut registry = LegacyRegistry::start().await;
        let proxy = proxy_over_openssl(&registry).await;
        // The pool's first session: the only TLS 1.2 suite the registry has, our certificate, SNI.
        assert_eq!(registry.event().await, expected_handshake());
        proxy.pools()[0].wait_for(|s| s.live >= 1).await;

        let port = proxy.tls_addr.unwrap().port();
        epp_send_examples(port, &["login", "check", "logout"]).await;
        // The check went through the legacy front to the registry, on the session opened above.
        assert_eq!(commands_named(&registry.mock, "check"), 1);
        proxy.shutdown().await;
        registry.stop().await;
    }

    /// `eppmux check` over OpenSSL: the configured CA is the only anchor (the `SSL_CERT_FILE`
    /// that would make OpenSSL's default paths trust the registry is ignored), and without one
    /// the system roots apply, which `SSL_CERT_FILE` sets here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eppmux_check_over_openssl_trusts_the_configured_ca_alone_or_else_the_system_roots() {
        let mut registry = LegacyRegistry::start().await;
        for (ca, succeeds) in [
            (Some(cert("ca.pem")), true),
            (None, true),
            (Some(fixture("ec.pem")), false),
        ] {
            let mut cmd = eppmux_for(&["check"], &registry.addr, "openssl");
            cmd.env("SSL_CERT_FILE", cert("ca.pem"));
            if let Some(ca) = &ca {
                cmd.arg("--upstream-ca").arg(ca);
            }
            let out = tokio::time::timeout(GUARD, cmd.output())
                .await
                .expect("eppmux check ends")
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.success(), succeeds, "CA {ca:?}:\n{stdout}");
            assert!(
                stdout.contains("(verifying localhost, OpenSSL)"),
                "{stdout}"
            );
            if succeeds {
                assert!(
                    stdout.contains("login") && stdout.ends_with("OK\n"),
                    "{stdout}"
                );
                assert_eq!(registry.event().await, expected_handshake());
            } else {
                assert!(
                    stdout.contains("FAILED: TLS handshake: ")
                        && stdout.contains("certificate verify failed"),
                    "{stdout}"
                );
            }
        }
        registry.stop().await;
    }
}
