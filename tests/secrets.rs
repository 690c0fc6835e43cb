//! Secrets never leave: a full session, with wrong passwords, a password change attempt and an
//! authInfo password, runs with every log at TRACE level (eppmux, rustls, tokio-util) captured;
//! no password and no `<pw>` content may appear. Its own test binary, so that the global
//! subscriber installed here sees everything.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use eppmux_mock::MockConfig;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    let capture = Capture::default();
    let sink = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init()
        .expect("this test binary installs the only subscriber");

    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let mut c = h.tls_client().await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml(CLID, "wrong-guess-pw", "W1"))
            .await
            .code,
        2200
    );
    c.send(sample("login-newpw-epp-prefix.xml")).await; // pw s3cret-Pw, newPW n3w-s3cret
    assert_eq!(c.recv_response().await.code, 2102);
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L1")).await.code, 1000);
    c.send(sample("domain-create-secdns.xml")).await; // authInfo pw 2fooBAR
    assert_eq!(c.recv_response().await.code, 1000);
    assert_eq!(
        c.command(&domain_cmd("check", "example.gov", "C1"))
            .await
            .code,
        1000
    );
    assert_eq!(c.command(&logout_xml("O1")).await.code, 1500);
    let cfg = proxy_config(h.mock.addr);
    tracing::trace!(config = ?cfg, "effective configuration");
    h.stop().await;

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("forwarded") && log.contains("TRACE"),
        "the capture saw the session at trace level"
    );
    assert!(log.contains("effective configuration"));
    for secret in [
        PASSWORD,
        "wrong-guess-pw",
        "n3w-s3cret",
        "2fooBAR",
        "<pw>",
        ":pw>",
        "newPW>",
    ] {
        assert!(!log.contains(secret), "`{secret}` appears in the log");
    }
}
