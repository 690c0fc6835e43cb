//! The load generator's architectures do what the benchmark says they do, checked against a real
//! mock registry (TLS, client certificates, a session cap) by what the registry itself counted.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use eppmux_mock::{MockConfig, MockRegistry};
use serde_json::Value;

fn cert(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../certs-example")
        .join(name)
}

async fn mock(cfg: MockConfig) -> MockRegistry {
    let tls = eppmux::tls::server_config(
        &cert("server.pem"),
        &cert("server-key.pem"),
        Some(&cert("ca.pem")),
    )
    .expect("the example certificates");
    MockRegistry::start("127.0.0.1:0".parse().unwrap(), tls, cfg)
        .await
        .expect("a mock registry")
}

/// Runs eppmux-load against the registry; its JSON report.
async fn load(registry: &MockRegistry, args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eppmux-load"));
    cmd.arg("--target")
        .arg(registry.addr.to_string())
        .arg("--tls")
        .arg("--ca")
        .arg(cert("ca.pem"))
        .arg("--cert")
        .arg(cert("client.pem"))
        .arg("--key")
        .arg(cert("client-key.pem"))
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("eppmux-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "eppmux-load failed: {stderr}");
    let json = stderr
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .unwrap_or_else(|| panic!("no JSON line in: {stderr}"));
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn a_recycled_worker_logs_its_whole_pool_out_and_in_again() {
    let registry = mock(MockConfig {
        session_cap: 3,
        rtt: Duration::from_millis(2),
        ..MockConfig::default()
    })
    .await;
    // One worker, its pool of 3 at the cap of 3: a recycle must log out before it logs in.
    let r = load(
        &registry,
        &[
            "--arch",
            "worker-pool",
            "--workers",
            "1",
            "--pool",
            "3",
            "--clients",
            "5",
            "--recycle",
            "40",
            "--commands",
            "200",
            "--warmup",
            "0",
        ],
    )
    .await;
    let recycles = r["recycles"].as_u64().unwrap();
    assert!(recycles >= 4, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["refused_2502"], 0.0, "{r}");
    // Counted by the generator during the run, and by the registry over the whole process (the
    // first pool's logins included).
    assert_eq!(
        r["registry_logins"].as_f64().unwrap(),
        3.0 * recycles as f64,
        "{r}"
    );
    let at_registry = registry.stats().logins.load(Relaxed) as u64;
    assert_eq!(
        at_registry,
        3 * (recycles + 1),
        "logins at the registry: {r}"
    );
    assert!(registry.stats().peak_sessions.load(Relaxed) <= 3);
    registry.shutdown().await;
}

#[tokio::test]
async fn without_a_pool_clients_past_the_cap_get_2502_and_retry_after_a_backoff() {
    let registry = mock(MockConfig {
        session_cap: 2,
        login_latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let r = load(
        &registry,
        &[
            "--arch",
            "no-pool",
            "--workers",
            "2",
            "--clients",
            "4",
            "--commands",
            "60",
            "--warmup",
            "0",
        ],
    )
    .await;
    assert!(r["refused_2502"].as_f64().unwrap() > 0.0, "{r}");
    // Every command either got through or failed after getgov's four attempts, as a command
    // can when eight clients contend for two sessions (how many do is up to the scheduler).
    let done = r["commands"].as_u64().unwrap() + r["errors"].as_u64().unwrap();
    assert!(done >= 60, "{r}");
    // One registry login per command that got through; no more sessions than the cap.
    let through = r["commands"].as_f64().unwrap();
    assert!(r["registry_logins"].as_f64().unwrap() >= through, "{r}");
    assert!(registry.stats().peak_sessions.load(Relaxed) <= 2);
    registry.shutdown().await;
}

#[tokio::test]
async fn a_burst_lands_on_one_worker_and_is_timed_from_its_arrival() {
    let registry = mock(MockConfig {
        rtt: Duration::from_millis(10),
        ..MockConfig::default()
    })
    .await;
    // 20 commands on a worker with 2 pooled sessions: 10 round trips of 10 ms at least.
    let r = load(
        &registry,
        &[
            "--arch",
            "worker-pool",
            "--load",
            "burst",
            "--workers",
            "2",
            "--pool",
            "2",
            "--clients",
            "4",
            "--burst",
            "20",
            "--bursts",
            "2",
            "--burst-every",
            "50ms",
        ],
    )
    .await;
    assert_eq!(r["commands"], 40, "{r}");
    let done = r["burst_completion_us"].as_array().unwrap();
    assert_eq!(done.len(), 2, "{r}");
    for d in done {
        assert!(d.as_u64().unwrap() >= 100_000, "{r}");
    }
    // The last command of a burst waited for the nine before it on its session.
    assert!(r["max_us"].as_u64().unwrap() >= 100_000, "{r}");
    registry.shutdown().await;
}
