//! The mock registry's model is what the benchmark's ceilings are computed from: each frame must
//! leave when the model says (not at the next millisecond tick), and `eppmux mock-registry` must
//! apply the login time and the session cap it is given.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const IDENTITY: Option<(&str, &str)> = Some(("client.pem", "client-key.pem"));

#[tokio::test]
async fn the_mock_registry_command_takes_its_login_time_and_keeps_its_session_cap() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::from(eppmux_command())
        .args([
            "mock-registry",
            "--listen",
            &addr,
            "--login-latency",
            "150ms",
        ])
        .args(["--session-cap", "1", "--cert"])
        .arg(cert("server.pem"))
        .arg("--key")
        .arg(cert("server-key.pem"))
        .arg("--client-ca")
        .arg(cert("ca.pem"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    read_log_until(&mut log, "mock registry ready").await;
    let addr = addr.parse().unwrap();
    let mut first = Client::tls(addr, IDENTITY).await;
    first.greeting().await;
    let started = Instant::now();
    assert_eq!(
        first.command(&login_xml(CLID, PASSWORD, "a")).await.code,
        1000
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    // The cap is one session: the second login is checked (and takes as long), then refused.
    let mut second = Client::tls(addr, IDENTITY).await;
    second.greeting().await;
    let started = Instant::now();
    assert_eq!(
        second.command(&login_xml(CLID, PASSWORD, "b")).await.code,
        2502
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    second.expect_closed().await;
    child.kill().await.unwrap();
}
