//! What eppmux logs, read back: lines stay the same length over any number of session rotations
//! (upstream session spans are roots: before, every replacement nested under the last and lines
//! reached 8 KB after 200 rotations), and nothing a client sends can forge a line or flood the
//! log. Its own test binary, so that the global subscriber installed here sees everything.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

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

/// The log of this test binary, in the text format (where forged lines would show).
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let sink = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter("eppmux=info")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .try_init()
            .expect("this test binary installs the only subscriber");
        capture
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&capture().0.lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_stay_flat_over_many_session_rotations() {
    capture();

    const ROTATIONS: usize = 200;
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 1;
        cfg.registries[0].accounts[0].lifecycle.max_commands = Some(1);
        // Replacements open straight from the retiring session's own events (as they do
        // whenever the budget has room), not later from the pool's timer.
        cfg.registries[0].accounts[0].max_logins_per_minute = Some(1_000_000);
    })
    .await;
    let mut c = h.logged_in().await;
    for i in 0..ROTATIONS {
        let r = c
            .command(&domain_cmd(
                "check",
                &format!("rot-{i}.gov"),
                &format!("R-{i}"),
            ))
            .await;
        assert_eq!(r.code, 1000);
    }
    h.stop().await;

    let log = log_text();
    let logged_in: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream session logged in"))
        .collect();
    assert!(logged_in.len() >= ROTATIONS, "{} sessions", logged_in.len());
    let first = logged_in[0].len();
    let last = logged_in[logged_in.len() - 1].len();
    // Session ids and timestamps grow by a few digits; a nested span chain grows by ~40 per level.
    assert!(
        last <= first + 16,
        "log lines grew from {first} to {last} bytes:\n{}",
        logged_in[logged_in.len() - 1]
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "longest log line {longest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_values_can_neither_forge_log_lines_nor_flood_the_log() {
    capture();
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    // A clID with a newline and a fake log line after it.
    let forged =
        "x\n2026-11-27T00:00:00.000000Z  INFO eppmux::client_session: client logged in clid=FORGED";
    let mut c = h.tls_client().await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml(forged, "wrong", "F-1")).await.code,
        2200
    );
    // After login, commands whose object namespace is 100 KB long, each a different one.
    let mut c = h.logged_in().await;
    let before = log_text().len();
    for i in 0..20 {
        let ns = format!("urn:flood:{i}:{}", "n".repeat(100_000));
        let frame = format!(
            r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><check><x:check xmlns:x="{ns}"><x:name>f.gov</x:name></x:check></check><clTRID>FLOOD-{i}</clTRID></command></epp>"#
        );
        c.send(Bytes::from(frame)).await;
        c.recv_response().await;
    }
    let log = log_text();
    let flood: Vec<&str> = log[before..]
        .lines()
        .filter(|l| l.contains("FLOOD-"))
        .collect();
    assert_eq!(flood.len(), 20, "one line per command");
    let longest = flood.iter().map(|l| l.len()).max().unwrap_or(0);
    assert!(longest < 600, "a command's log line took {longest} bytes");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-11-27T00:00:00.000000Z")),
        "a client forged a log line"
    );
    assert!(
        log.contains("clid=x\\n2026-11-27T00:00:00"),
        "the clID was logged, escaped"
    );
    h.stop().await;
}
