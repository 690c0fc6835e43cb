//! The `eppmux` binary as an operator meets it: flags, environment variables, error messages.

mod common;

use std::process::Command;

fn eppmux() -> Command {
    common::eppmux_command()
}

/// Runs `cmd`, which must fail at start, and checks that its error names `what`.
fn fails_naming(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "expected a start-up failure naming {what}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(what), "the error does not name {what}: {err}");
}

#[test]
fn invalid_configuration_fails_fast_naming_the_key() {
    let upstream = ["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:700"];
    fails_naming(
        eppmux()
            .args(upstream)
            .args([
                "--upstream-cert",
                "c.pem",
                "--upstream-key",
                "k.pem",
                "--clid",
                "r1",
            ])
            .args(["--pool-min", "5", "--pool-max", "2"])
            .env("EPPMUX_PASSWORD", "pw"),
        "pool_min",
    );
    // The same through environment variables only, with a missing password.
    fails_naming(
        eppmux()
            .env("EPPMUX_LISTEN", "127.0.0.1:0")
            .env("EPPMUX_UPSTREAM", "127.0.0.1:700")
            .env("EPPMUX_UPSTREAM_CERT", "c.pem")
            .env("EPPMUX_UPSTREAM_KEY", "k.pem")
            .env("EPPMUX_CLID", "r1"),
        "password",
    );
    // A certificate that does not exist is named at start, before anything listens.
    fails_naming(
        eppmux()
            .args(upstream)
            .args([
                "--upstream-cert",
                "/nonexistent/c.pem",
                "--upstream-key",
                "k.pem",
                "--clid",
                "r1",
            ])
            .env("EPPMUX_PASSWORD", "pw"),
        "/nonexistent/c.pem",
    );
}

#[test]
fn help_lists_the_documented_flags_and_no_secret() {
    let out = eppmux()
        .arg("--help")
        .env("EPPMUX_PASSWORD", "very-secret-value")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen ",
        "--listen-tls",
        "--tls-cert",
        "--tls-key",
        "--tls-client-ca",
        "--upstream ",
        "--upstream-ca",
        "--upstream-cert",
        "--upstream-key",
        "--upstream-server-name",
        "--clid",
        "--password-file",
        "--pool-min",
        "--pool-max",
        "--log-format",
        "EPPMUX_PASSWORD",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(!help.contains("very-secret-value"));
}

/// The real binary against the mock registry: it becomes ready, serves, and on SIGTERM logs out
/// of every upstream session and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_logs_out_upstream_and_exits_zero() {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mock = common::start_mock(eppmux_mock::MockConfig::default()).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen_addr = listen.local_addr().unwrap();
    drop(listen);
    let mut child = tokio::process::Command::from(eppmux())
        .args([
            "--listen",
            &listen_addr.to_string(),
            "--upstream",
            &mock.addr.to_string(),
        ])
        .args([
            "--upstream-server-name",
            "localhost",
            "--clid",
            common::CLID,
            "--pool-min",
            "2",
        ])
        .arg("--upstream-ca")
        .arg(common::cert("ca.pem"))
        .arg("--upstream-cert")
        .arg(common::cert("client.pem"))
        .arg("--upstream-key")
        .arg(common::cert("client-key.pem"))
        .env("EPPMUX_PASSWORD", common::PASSWORD)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Panics (with everything read) if eppmux exits before becoming ready.
    let mut log = common::read_log_until(&mut lines, "account ready").await;
    let mut c = common::Client::plain(listen_addr).await;
    c.greeting().await;
    assert_eq!(
        c.command(&common::login_xml(common::CLID, common::PASSWORD, "L"))
            .await
            .code,
        1000
    );
    assert_eq!(
        c.command(&common::domain_cmd("check", "bin.gov", "B"))
            .await
            .code,
        1000
    );
    mock.wait_until(|m| m.stats().logins.load(Relaxed) == 2)
        .await;

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().await.unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        log.push_str(&line);
        log.push('\n');
    }
    assert!(exit.success(), "exit status {exit:?}\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    c.expect_closed().await;
    let logouts = common::commands_named(&mock, "logout");
    assert_eq!(logouts, 2, "both upstream sessions logged out");
    assert!(
        !log.contains(common::PASSWORD),
        "the password never appears in the log"
    );
    mock.shutdown().await;
}
