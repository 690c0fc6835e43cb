//! eppmux driven by EPP clients the project did not write. They are installed by
//! scripts/install-test-deps.sh (called from .ci/run); a missing client fails the test loudly
//! instead of skipping it.

mod common;

use common::*;
use eppmux_mock::MockConfig;
use tokio::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Fails with an install hint when `program -e/-c probe` does not succeed.
fn require(program: &str, probe: &[&str], what: &str) {
    let ok = std::process::Command::new(program)
        .args(probe)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{what} is missing: run scripts/install-test-deps.sh");
}

/// Runs a client script to completion and checks that it printed `OK <step>` for every step.
async fn run_client(label: &str, cmd: &mut Command, steps: &[&str]) -> String {
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("{label}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{label} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in steps {
        assert!(
            stdout.contains(&format!("OK {step}")),
            "{label}: step {step} missing:\n{stdout}"
        );
    }
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perl_net_epp_simple_over_tls_and_plain_tcp() {
    require(
        "perl",
        &["-MNet::EPP::Simple", "-e1"],
        "perl module Net::EPP::Simple (Debian libnet-epp-perl)",
    );
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_max = 1
    })
    .await;
    let tls_port = h.proxy.tls_addr.unwrap().port();
    let plain_port = h.proxy.plain_addr.unwrap().port();
    for (host, port, mode, domain) in [
        ("localhost", tls_port, "tls", "perl-tls.gov"),
        ("127.0.0.1", plain_port, "plain", "perl-plain.gov"),
    ] {
        let mut cmd = Command::new("perl");
        cmd.arg(format!("{ROOT}/tests/interop/net_epp_simple.pl"))
            .args([host, &port.to_string(), mode])
            .arg(cert("ca.pem"))
            .args([CLID, PASSWORD, domain]);
        let steps = [
            "login",
            "check-available",
            "create",
            "info",
            "check-taken",
            "delete",
            "logout",
        ];
        run_client(&format!("Net::EPP::Simple over {mode}"), &mut cmd, &steps).await;
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
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_max = 1
    })
    .await;
    let port = h.proxy.tls_addr.unwrap().port();
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{ROOT}/tests/interop/epplib_transport.py"))
        .args(["localhost", &port.to_string(), CLID, PASSWORD, "epplib.gov"])
        .env("SSL_CERT_FILE", cert("ca.pem"));
    let steps = [
        "greeting", "login", "check", "create", "info", "delete", "logout", "closed",
    ];
    run_client("epplib-style client", &mut cmd, &steps).await;
    assert!(!h.mock.domain_exists("epplib.gov"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_epptools_over_tls() {
    require(
        "python3",
        &["-c", "import epptools"],
        "the Python package epptools",
    );
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_max = 1
    })
    .await;
    let port = h.proxy.tls_addr.unwrap().port();
    let mut cmd = Command::new("python3");
    cmd.arg(format!("{ROOT}/tests/interop/epptools_client.py"))
        .args(["localhost", &port.to_string()])
        .arg(cert("ca.pem"))
        .args([CLID, PASSWORD, "epptools.gov"]);
    let steps = [
        "greeting", "login", "check", "create", "info", "delete", "logout",
    ];
    run_client("epptools", &mut cmd, &steps).await;
    assert!(!h.mock.domain_exists("epptools.gov"));
    h.stop().await;
}

/// `openssl s_client` fed pre-framed example files by scripts/epp-send.sh, as the README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_the_example_frames() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let port = h.proxy.tls_addr.unwrap().port();
    epp_send_examples(
        port,
        &["login", "check", "create", "info", "delete", "logout"],
    )
    .await;
    h.stop().await;
}
