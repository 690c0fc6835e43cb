//! Several registries in one eppmux: two mock registries, one eppmux with two `[[registry]]`
//! tables. Clients on each registry's listener get that registry's greeting, log in to that
//! registry's accounts (the same clID at both is two accounts), and their commands reach only
//! that registry (each mock's ledger proves it); metrics, `/status` and `/readyz` name both; and
//! SIGHUP still applies pool sizes, per registry.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use eppmux::config::{Config, EnvSecrets, Explicit};
use eppmux::Proxy;
use eppmux_mock::{MockConfig, MockRegistry};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

const OTHER_PASSWORD: &str = "0ther-Pw";

async fn two_mocks() -> (MockRegistry, MockRegistry) {
    let a = start_mock(MockConfig {
        sv_id: "Registry A".into(),
        ..MockConfig::default()
    })
    .await;
    let b = start_mock(MockConfig {
        sv_id: "Registry B".into(),
        accounts: HashMap::from([(CLID.to_string(), OTHER_PASSWORD.to_string())]),
        ..MockConfig::default()
    })
    .await;
    (a, b)
}

/// A configuration file with registry `a` (TLS listener) and `b` (plain listener).
fn two_registries(
    a: SocketAddr,
    b: SocketAddr,
    listen_a: SocketAddr,
    listen_b: SocketAddr,
    pool_max_b: usize,
) -> String {
    let ca = cert("ca.pem");
    let common = format!(
        "upstream_server_name = \"localhost\"\nupstream_ca = \"{}\"\nupstream_cert = \"{}\"\nupstream_key = \"{}\"\nmax_logins_per_minute = 6000\n",
        ca.display(),
        cert("client.pem").display(),
        cert("client-key.pem").display()
    );
    format!(
        "[[registry]]\nname = \"a\"\nlisten_tls = \"{listen_a}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nupstream = \"{a}\"\n{common}\
         [[registry.account]]\nclid = \"{CLID}\"\npassword = \"{PASSWORD}\"\n\
         [[registry]]\nname = \"b\"\nlisten = \"{listen_b}\"\nupstream = \"{b}\"\n{common}\
         [[registry.account]]\nclid = \"{CLID}\"\npassword = \"{OTHER_PASSWORD}\"\npool_max = {pool_max_b}\n",
        cert("server.pem").display(),
        cert("server-key.pem").display(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn ledger_names(mock: &MockRegistry) -> Vec<String> {
    mock.ledger().into_iter().flat_map(|e| e.names).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_registry_has_its_own_listeners_accounts_and_sessions() {
    init_tracing();
    let (mock_a, mock_b) = two_mocks().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eppmux.toml");
    write(
        &file,
        &format!(
            "admin = \"127.0.0.1:0\"\n{}",
            two_registries(mock_a.addr, mock_b.addr, loopback(), loopback(), 2)
        ),
    );
    let cfg =
        Config::from_sources(&Explicit::default(), Some(&file), &EnvSecrets::default()).unwrap();
    let proxy = Proxy::start(&cfg, CancellationToken::new()).await.unwrap();
    let (ra, rb) = (
        &proxy.registries()[0].clone(),
        &proxy.registries()[1].clone(),
    );
    for pool in &proxy.pools() {
        pool.wait_for(|s| s.live >= 1).await;
    }

    let mut a = Client::tls(ra.tls_addr.unwrap(), None).await;
    let greeting = String::from_utf8_lossy(&a.greeting().await).into_owned();
    assert!(greeting.contains("Registry A"), "{greeting}");
    let mut b = Client::plain(rb.plain_addr.unwrap()).await;
    let greeting = String::from_utf8_lossy(&b.greeting().await).into_owned();
    assert!(greeting.contains("Registry B"), "{greeting}");
    // The same clID at both registries: two accounts, each with its own password.
    assert_eq!(
        a.command(&login_xml(CLID, OTHER_PASSWORD, "L")).await.code,
        2200
    );
    assert_eq!(a.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    assert_eq!(
        b.command(&login_xml(CLID, OTHER_PASSWORD, "L")).await.code,
        1000
    );

    assert_eq!(
        a.command(&domain_cmd("create", "via-a.gov", "A1"))
            .await
            .code,
        1000
    );
    assert_eq!(
        b.command(&domain_cmd("create", "via-b.gov", "B1"))
            .await
            .code,
        1000
    );
    assert_eq!(ledger_names(&mock_a), vec!["via-a.gov"]);
    assert_eq!(ledger_names(&mock_b), vec!["via-b.gov"]);

    let admin = proxy.admin_addr.unwrap();
    let wait = Duration::from_secs(5);
    let (_, metrics) = eppmux::admin::get(admin, "/metrics", wait).await.unwrap();
    for registry in ["a", "b"] {
        let series = format!(
            "eppmux_commands_forwarded_total{{registry=\"{registry}\",account=\"{CLID}\",command=\"domain:create\",code=\"1000\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} not in:\n{metrics}");
    }
    let (_, status) = eppmux::admin::get(admin, "/status", wait).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let names: Vec<&str> = status["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["registry"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    let (code, _) = eppmux::admin::get(admin, "/readyz", wait).await.unwrap();
    assert_eq!(code, 200);

    // Registry b stops answering logins: /readyz names it, and only it.
    mock_b.shutdown().await;
    proxy.pools()[1].wait_for(|s| s.live == 0).await;
    let (code, body) = eppmux::admin::get(admin, "/readyz", wait).await.unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("registry b, account registrar1") && !body.contains("registry a"),
        "{body}"
    );
    proxy.shutdown().await;
    mock_a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_pool_sizes_per_registry() {
    let (mock_a, mock_b) = two_mocks().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eppmux.toml");
    let (listen_a, listen_b) = (free_addr(), free_addr());
    write(
        &file,
        &two_registries(mock_a.addr, mock_b.addr, listen_a, listen_b, 2),
    );
    let mut child = tokio::process::Command::from(eppmux_command())
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = read_log_until(&mut lines, "registry=\"b\"").await;
    assert!(started.contains("registry=\"a\""), "{started}");
    let mut b = Client::plain(listen_b).await;
    b.greeting().await;
    assert_eq!(
        b.command(&login_xml(CLID, OTHER_PASSWORD, "L")).await.code,
        1000
    );

    // Registry b's pool grows to three at start; a's is untouched.
    let text = two_registries(mock_a.addr, mock_b.addr, listen_a, listen_b, 3)
        .replace("pool_max = 3", "pool_max = 3\npool_min = 3");
    write(&file, &text);
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    read_log_until(&mut lines, "configuration reloaded").await;
    mock_b
        .wait_until(|m| m.stats().active_sessions.load(Relaxed) == 3)
        .await;
    assert_eq!(mock_a.stats().active_sessions.load(Relaxed), 1);
    assert_eq!(
        b.command(&domain_cmd("check", "after-hup.gov", "H"))
            .await
            .code,
        1000,
        "the client connected before the reload is still served"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(child.wait().await.unwrap().success());
    mock_a.shutdown().await;
    mock_b.shutdown().await;
}
