//! The `eppmux` binary as an operator meets it: flags, environment variables, error messages.

use std::process::Command;

fn eppmux() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eppmux"));
    // Start from a clean slate: no EPPMUX_* from the developer's shell.
    for (key, _) in std::env::vars() {
        if key.starts_with("EPPMUX_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn invalid_configuration_fails_fast_naming_the_key() {
    let out = eppmux()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:700",
            "--upstream-cert",
            "c.pem",
        ])
        .args([
            "--upstream-key",
            "k.pem",
            "--clid",
            "r1",
            "--pool-min",
            "5",
            "--pool-max",
            "2",
        ])
        .env("EPPMUX_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool_min"), "{err}");

    // The same through environment variables only, with a missing password.
    let out = eppmux()
        .env("EPPMUX_LISTEN", "127.0.0.1:0")
        .env("EPPMUX_UPSTREAM", "127.0.0.1:700")
        .env("EPPMUX_UPSTREAM_CERT", "c.pem")
        .env("EPPMUX_UPSTREAM_KEY", "k.pem")
        .env("EPPMUX_CLID", "r1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password"), "{err}");

    // A certificate that does not exist is named at start, before anything listens.
    let out = eppmux()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:700",
            "--upstream-cert",
            "/nonexistent/c.pem",
        ])
        .args(["--upstream-key", "k.pem", "--clid", "r1"])
        .env("EPPMUX_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
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
