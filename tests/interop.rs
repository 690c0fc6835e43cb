//! eppmux driven by EPP clients the project did not write. They are installed by
//! scripts/install-test-deps.sh (called from .ci/run); a missing client fails the test loudly
//! instead of skipping it.

mod common;

use common::*;
use eppmux::mock_registry::MockConfig;
use tokio::process::Command;

fn require_perl_module(module: &str) {
    let ok = std::process::Command::new("perl")
        .args([&format!("-M{module}"), "-e1"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "perl module {module} is missing: run scripts/install-test-deps.sh (Debian package libnet-epp-perl)");
}

async fn run_net_epp(host: &str, port: u16, mode: &str, domain: &str) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/net_epp_simple.pl"
    );
    let ca = cert("ca.pem");
    let out = Command::new("perl")
        .arg(script)
        .args([
            host,
            &port.to_string(),
            mode,
            ca.to_str().unwrap(),
            CLID,
            PASSWORD,
            domain,
        ])
        .output()
        .await
        .expect("run perl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "Net::EPP::Simple over {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perl_net_epp_simple_over_tls_and_plain_tcp() {
    require_perl_module("Net::EPP::Simple");
    let h = Harness::start(MockConfig::default(), |cfg| cfg.accounts[0].pool_max = 1).await;
    let tls_port = h.proxy.tls_addr.unwrap().port();
    let plain_port = h.proxy.plain_addr.unwrap().port();
    for (host, port, mode, domain) in [
        ("localhost", tls_port, "tls", "perl-tls.gov"),
        ("127.0.0.1", plain_port, "plain", "perl-plain.gov"),
    ] {
        let out = run_net_epp(host, port, mode, domain).await;
        for step in [
            "login",
            "check-available",
            "create",
            "info",
            "check-taken",
            "delete",
            "logout",
        ] {
            assert!(
                out.contains(&format!("OK {step}")),
                "{mode}: step {step} missing:\n{out}"
            );
        }
        assert!(
            !h.mock.domain_exists(domain),
            "{domain} was created and deleted at the registry"
        );
        let created = h
            .mock
            .transcript()
            .iter()
            .filter(|x| {
                let c = String::from_utf8_lossy(&x.command);
                c.contains(":create") && c.contains(domain)
            })
            .count();
        assert_eq!(
            created, 1,
            "{mode}: exactly one create reached the registry"
        );
    }
    assert_eq!(
        h.mock
            .stats()
            .logins
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "both clients shared one upstream session"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epplib_style_transport_over_tls() {
    let h = Harness::start(MockConfig::default(), |cfg| cfg.accounts[0].pool_max = 1).await;
    let port = h.proxy.tls_addr.unwrap().port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/epplib_transport.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .args(["localhost", &port.to_string(), CLID, PASSWORD, "epplib.gov"])
        .env("SSL_CERT_FILE", cert("ca.pem"))
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "epplib-style client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "greeting", "login", "check", "create", "info", "delete", "logout", "closed",
    ] {
        assert!(
            stdout.contains(&format!("OK {step}")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(!h.mock.domain_exists("epplib.gov"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_epptools_over_tls() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import epptools"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Python package epptools is missing: run scripts/install-test-deps.sh"
    );
    let h = Harness::start(MockConfig::default(), |cfg| cfg.accounts[0].pool_max = 1).await;
    let port = h.proxy.tls_addr.unwrap().port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/epptools_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .args([
            "localhost",
            &port.to_string(),
            cert("ca.pem").to_str().unwrap(),
            CLID,
            PASSWORD,
            "epptools.gov",
        ])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "epptools failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "greeting", "login", "check", "create", "info", "delete", "logout",
    ] {
        assert!(
            stdout.contains(&format!("OK {step}")),
            "step {step} missing:\n{stdout}"
        );
    }
    assert!(!h.mock.domain_exists("epptools.gov"));
    h.stop().await;
}

/// `openssl s_client` fed pre-framed example files by scripts/epp-send.sh, as the README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_the_example_frames() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let port = h.proxy.tls_addr.unwrap().port();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/epp-send.sh"))
        .arg(format!("localhost:{port}"))
        .args(
            ["login", "check", "create", "info", "delete", "logout"]
                .map(|n| format!("{root}/examples/{n}.xml")),
        )
        .output()
        .await
        .expect("run scripts/epp-send.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "epp-send.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("<greeting>"), "{stdout}");
    for (cltrid, code) in [
        ("EXAMPLE-LOGIN-1", 1000),
        ("EXAMPLE-CHECK-1", 1000),
        ("EXAMPLE-CREATE-1", 1000),
        ("EXAMPLE-INFO-1", 1000),
        ("EXAMPLE-DELETE-1", 1000),
        ("EXAMPLE-LOGOUT-1", 1500),
    ] {
        let frame = stdout
            .split("-- frame")
            .find(|f| f.contains(cltrid))
            .unwrap_or_else(|| panic!("no answer for {cltrid}:\n{stdout}"));
        assert!(
            frame.contains(&format!("result code=\"{code}\"")),
            "{cltrid}: {frame}"
        );
    }
    h.stop().await;
}
