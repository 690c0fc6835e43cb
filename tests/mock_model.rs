//! The mock registry's model is what the benchmark's ceilings are computed from: each frame must
//! leave when the model says (not at the next millisecond tick), and `eppmux mock-registry` must
//! apply the login time and the session cap it is given. And it is what the chaos soak's verdicts
//! are computed from: a frame that reached the registry after it stopped reading or closed the
//! session must be on record as unprocessed, or a command eppmux rightly reported lost looks like
//! one it could have known was not executed.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use eppmux_mock::{Fault, MockConfig, MockRegistry};
use futures_util::SinkExt;
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

async fn logged_in_to(mock: &MockRegistry) -> Client {
    let mut c = Client::tls(mock.addr, IDENTITY).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    c
}

fn names_in(frames: &[(u64, Bytes)]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|(_, f)| {
            let text = String::from_utf8_lossy(f);
            let name = text.split("<domain:name>").nth(1)?.split('<').next()?;
            Some(name.to_string())
        })
        .collect()
}

#[tokio::test]
async fn frames_sent_to_a_registry_that_stopped_reading_are_on_record_as_unprocessed() {
    let mock = start_mock(MockConfig::default()).await;
    let mut c = logged_in_to(&mock).await;
    mock.push_fault(Fault::StopReading);
    // In one write: the first meets the fault; the ones after it are read with it, or reach the
    // registry's host only. Either way they are never processed.
    for name in ["first.gov", "second.gov", "third.gov"] {
        let frame = Bytes::from(domain_cmd("create", name, name));
        c.framed.feed(frame).await.unwrap();
    }
    c.framed.flush().await.unwrap();
    within(
        20,
        "both later frames on record",
        mock.wait_until(|m| m.unprocessed().len() == 2),
    )
    .await;
    assert_eq!(names_in(&mock.unprocessed()), ["second.gov", "third.gov"]);
    assert!(names_in(&mock.received()).contains(&"first.gov".to_string()));
    assert!(mock.ledger().is_empty(), "nothing was processed");
    mock.shutdown().await;
}

#[tokio::test]
async fn frames_sent_to_a_session_the_registry_closed_are_on_record_as_unprocessed() {
    let mock = start_mock(MockConfig::default()).await;
    let mut c = logged_in_to(&mock).await;
    mock.push_fault(Fault::DropBeforeExecute);
    c.send(domain_cmd("create", "dropped.gov", "D-1")).await;
    c.expect_closed().await;
    // Written after the registry closed, before this side did: it arrives, unread.
    c.send(domain_cmd("create", "late.gov", "D-2")).await;
    within(
        20,
        "the late frame on record",
        mock.wait_until(|m| !m.unprocessed().is_empty()),
    )
    .await;
    assert_eq!(names_in(&mock.unprocessed()), ["late.gov"]);
    assert!(mock.ledger().is_empty(), "nothing was processed");
    mock.shutdown().await;
}
