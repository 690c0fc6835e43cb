//! What eppmux logs over a long life: upstream session spans are roots, so a session opened while
//! another session's (or a client's) span is current does not nest under it — before, every
//! replacement added a level to every later log line (8 KB lines after 200 rotations). Its own
//! test binary, so that the global subscriber installed here sees everything.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use eppmux::mock_registry::MockConfig;

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
async fn log_lines_stay_flat_over_many_session_rotations() {
    let capture = Capture::default();
    let sink = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("eppmux=info")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .try_init()
        .expect("this test binary installs the only subscriber");

    const ROTATIONS: usize = 200;
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.accounts[0].pool_min = 1;
        cfg.accounts[0].pool_max = 1;
        cfg.accounts[0].lifecycle.max_commands = Some(1);
        // Replacements open straight from the retiring session's own events (as they do
        // whenever the budget has room), not later from the pool's timer.
        cfg.accounts[0].max_logins_per_minute = Some(1_000_000);
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

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
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
