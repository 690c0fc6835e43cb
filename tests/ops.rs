//! What operators touch: the admin endpoint (metrics, health, readiness, status), `eppmux check`,
//! `eppmux healthcheck`, `--print-config` and SIGHUP reloads — through the real binary where the
//! binary is what they run.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use eppmux_mock::{Fault, MockConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

fn eppmux_bin() -> tokio::process::Command {
    tokio::process::Command::from(eppmux_command())
}

fn upstream_flags(cmd: &mut tokio::process::Command, registry: std::net::SocketAddr) {
    cmd.args([
        "--upstream",
        &registry.to_string(),
        "--upstream-server-name",
        "localhost",
        "--clid",
        CLID,
    ])
    .arg("--upstream-ca")
    .arg(cert("ca.pem"))
    .arg("--upstream-cert")
    .arg(cert("client.pem"))
    .arg("--upstream-key")
    .arg(cert("client-key.pem"));
}

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn sample_value(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_during_a_workload() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 1;
        cfg.registries[0].accounts[0].lifecycle.keepalive = Some(Duration::from_millis(50));
        cfg.registries[0].queue_max = 1;
        cfg.limits.max_clients = 7;
    })
    .await;
    let admin = h.proxy.admin_addr.unwrap();
    let pool = &h.proxy.pools()[0];
    // Keepalives.
    h.mock
        .wait_until(|m| m.stats().hellos.load(Relaxed) >= 1)
        .await;
    // Forwarded commands on both listeners, queue wait, durations.
    let mut a = h.logged_in().await;
    let mut p = h.plain_client().await;
    p.greeting().await;
    assert_eq!(p.command(&login_xml(CLID, PASSWORD, "P")).await.code, 1000);
    assert_eq!(
        p.command(&domain_cmd("check", "m1.gov", "M1")).await.code,
        1000
    );
    // Retries: a forgotten session (re-sent), a lost query (re-sent), a lost transform (refused).
    h.mock.push_fault(Fault::NotLoggedIn);
    assert_eq!(
        a.command(&domain_cmd("create", "m2.gov", "M2")).await.code,
        1000
    );
    h.mock.push_fault(Fault::DropAfterExecute);
    assert_eq!(
        a.command(&domain_cmd("check", "m3.gov", "M3")).await.code,
        1000
    );
    h.mock.push_fault(Fault::DropAfterExecute);
    a.send(Bytes::from(domain_cmd("create", "m4.gov", "M4")))
        .await;
    a.expect_closed().await;
    // A refused login upstream, and the reconnect after it.
    h.mock.push_login_refusal(2501);
    h.mock.push_fault(Fault::Close2500);
    let mut b = h.logged_in().await;
    assert_eq!(
        b.command(&domain_cmd("check", "m5.gov", "M5")).await.code,
        2500
    );
    pool.wait_for(|s| s.live == 1).await;
    // The only session held, one command waiting (the queue's limit), one more refused.
    let mut holder = h.logged_in().await;
    holder
        .send(Bytes::from(domain_cmd("check", "hold-m.gov", "HOLD")))
        .await;
    h.mock.wait_held(1).await;
    let mut waiter = h.logged_in().await;
    waiter
        .send(Bytes::from(domain_cmd("check", "m7.gov", "M7")))
        .await;
    pool.wait_for(|s| s.waiting == 1).await;
    assert_eq!(
        b.command(&domain_cmd("check", "m6.gov", "M6")).await.code,
        2400
    );
    // Rejected frames, and a connection refused at the client limit.
    b.send(sample("hostile-entities.xml")).await;
    assert_eq!(b.recv_response().await.code, 2001);
    // Fill the remaining client slots with logged-in clients until one connection is refused
    // (connections that have not logged in would be evicted to make room instead).
    let mut extra = Vec::new();
    loop {
        let mut c = Client::plain(h.proxy.plain_addr.unwrap()).await;
        match c.recv().await {
            Some(_greeting) => {
                assert_eq!(c.command(&login_xml(CLID, PASSWORD, "X")).await.code, 1000);
                extra.push(c);
            }
            None => break,
        }
        assert!(extra.len() <= 7, "max_clients was not enforced");
    }
    let (_, metrics) = eppmux::admin::get(admin, "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    h.mock.release_held(1);
    assert_eq!(holder.recv_response().await.code, 1000);
    assert_eq!(waiter.recv_response().await.code, 1000);

    let acc = "account=\"registrar1\"";
    for (name, labels) in [
        ("eppmux_upstream_sessions", vec![acc, "state=\"busy\""]),
        ("eppmux_upstream_logins_total", vec![acc, "result=\"1000\""]),
        ("eppmux_upstream_logins_total", vec![acc, "result=\"2501\""]),
        ("eppmux_upstream_reconnects_total", vec![acc]),
        (
            "eppmux_commands_forwarded_total",
            vec![acc, "command=\"domain:check\"", "code=\"1000\""],
        ),
        (
            "eppmux_commands_forwarded_total",
            vec![acc, "command=\"domain:check\"", "code=\"2500\""],
        ),
        ("eppmux_command_duration_seconds_count", vec![acc]),
        ("eppmux_queue_wait_seconds_count", vec![acc]),
        ("eppmux_queue_length", vec![acc]),
        ("eppmux_pool_exhausted_total", vec![acc]),
        ("eppmux_client_connections", vec!["listener=\"tls\""]),
        (
            "eppmux_client_connections_accepted_total",
            vec!["listener=\"plain\""],
        ),
        (
            "eppmux_client_connections_refused_total",
            vec!["reason=\"max_clients\""],
        ),
        ("eppmux_frames_rejected_total", vec!["reason=\"doctype\""]),
        ("eppmux_keepalive_hellos_total", vec![acc]),
        ("eppmux_retries_total", vec![acc, "kind=\"not_logged_in\""]),
        ("eppmux_retries_total", vec![acc, "kind=\"lost_query\""]),
        ("eppmux_retries_refused_total", vec![acc]),
    ] {
        let v = sample_value(&metrics, name, &labels);
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{name}{labels:?} did not move: {v:?}\n{metrics}"
        );
    }
    for state in ["connecting", "idle", "busy", "dead"] {
        assert!(
            sample_value(
                &metrics,
                "eppmux_upstream_sessions",
                &[acc, &format!("state=\"{state}\"")]
            )
            .is_some(),
            "state {state}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn healthz_readyz_and_status() {
    init_tracing();
    // No registry yet: alive but not ready, with a reason.
    let probe = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let registry = probe.local_addr().unwrap();
    drop(probe);
    let proxy = eppmux::Proxy::start(
        &proxy_config(registry),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let admin = proxy.admin_addr.unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(
        eppmux::admin::get(admin, "/healthz", wait).await.unwrap().0,
        200
    );
    let (code, body) = eppmux::admin::get(admin, "/readyz", wait).await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("registrar1") && body.contains("\"ready\":false"),
        "{body}"
    );
    // The registry comes up: ready.
    let tls = eppmux::tls::server_config(
        &cert("server.pem"),
        &cert("server-key.pem"),
        Some(&cert("ca.pem")),
    )
    .unwrap();
    let mock = eppmux_mock::MockRegistry::start(registry, tls, MockConfig::default())
        .await
        .unwrap();
    proxy.pools()[0].wait_for(|s| s.live >= 1).await;
    let (code, body) = eppmux::admin::get(admin, "/readyz", wait).await.unwrap();
    assert_eq!(
        (code, body.trim()),
        (200, "{\"ready\":true,\"reasons\":[]}")
    );
    let (code, body) = eppmux::admin::get(admin, "/status", wait).await.unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let acc = &status["accounts"][0];
    assert_eq!(acc["account"], "registrar1");
    assert!(acc["live"].as_u64().unwrap() >= 1);
    assert!(acc["sessions"][0]["age_seconds"].is_u64());
    assert!(
        acc["last_error"].as_str().is_some(),
        "the failures before the registry came up: {acc}"
    );
    assert!(!body.contains(PASSWORD));
    assert_eq!(
        eppmux::admin::get(admin, "/nope", wait).await.unwrap().0,
        404
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_healthcheck_commands() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let mut cmd = eppmux_bin();
    cmd.arg("check");
    upstream_flags(&mut cmd, mock.addr);
    let out = cmd.env("EPPMUX_PASSWORD", PASSWORD).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "svID \"eppmux mock registry\"",
        "objURIs: urn:ietf:params:xml:ns:domain-1.0",
        "extURIs: urn:ietf:params:xml:ns:secDNS-1.1",
        "connect",
        "TLS",
        "login",
        "hello",
        "logout",
        "OK",
    ] {
        assert!(stdout.contains(want), "missing {want}:\n{stdout}");
    }
    let mut cmd = eppmux_bin();
    cmd.arg("check");
    upstream_flags(&mut cmd, mock.addr);
    let out = cmd.env("EPPMUX_PASSWORD", "wrong").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("2200"));

    // healthcheck: not ready without a proxy, ready against one.
    let out = eppmux_bin()
        .args(["healthcheck", "--admin", "127.0.0.1:9", "--timeout", "2s"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let proxy = eppmux::Proxy::start(
        &proxy_config(mock.addr),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    proxy.pools()[0].wait_for(|s| s.live >= 1).await;
    let out = eppmux_bin()
        .args([
            "healthcheck",
            "--admin",
            &proxy.admin_addr.unwrap().to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn print_config_shows_effective_values_and_no_secret() {
    let mut cmd = eppmux_bin();
    cmd.args([
        "--listen",
        "127.0.0.1:1701",
        "--print-config",
        "--pool-max",
        "7",
    ]);
    upstream_flags(&mut cmd, "127.0.0.1:700".parse().unwrap());
    let out = cmd
        .env("EPPMUX_PASSWORD", "top-secret-pw")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pool_max = 7") && text.contains("queue_wait = \"2s\""),
        "{text}"
    );
    assert!(
        text.contains("<redacted>") && !text.contains("top-secret-pw"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_pool_sizes_and_refuses_bad_configs_without_dropping_clients() {
    let mock = start_mock(MockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eppmux.toml");
    let listen = free_addr();
    let write = |pool_min: usize, extra: &str| {
        let mut f = std::fs::File::create(&file).unwrap();
        writeln!(
            f,
            "listen = \"{listen}\"\nupstream = \"{}\"\nupstream_server_name = \"localhost\"\nupstream_ca = \"{}\"\nupstream_cert = \"{}\"\nupstream_key = \"{}\"\n{extra}\n[[account]]\nclid = \"{CLID}\"\npassword = \"{PASSWORD}\"\npool_min = {pool_min}\npool_max = 4",
            mock.addr,
            cert("ca.pem").display(),
            cert("client.pem").display(),
            cert("client-key.pem").display()
        )
        .unwrap();
    };
    write(1, "");
    let mut child = eppmux_bin()
        .arg("--config")
        .arg(&file)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    read_log_until(&mut lines, "account ready").await;
    let mut c = Client::plain(listen).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    let pid = child.id().unwrap().to_string();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
    };

    write(3, "");
    assert!(hup().success());
    read_log_until(&mut lines, "configuration reloaded").await;
    mock.wait_until(|m| m.stats().active_sessions.load(Relaxed) == 3)
        .await;

    write(3, "bogus_key = 1");
    assert!(hup().success());
    let log = read_log_until(&mut lines, "configuration refused").await;
    assert!(log.contains("bogus_key"), "{log}");

    // The client connected before both reloads is still served.
    assert_eq!(
        c.command(&domain_cmd("check", "after-hup.gov", "H"))
            .await
            .code,
        1000
    );
    assert!(child.try_wait().unwrap().is_none(), "eppmux kept running");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(child.wait().await.unwrap().success());
    mock.shutdown().await;
}

#[tokio::test]
async fn an_admin_token_guards_metrics_and_status_but_not_the_probes() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.admin_token = Some(eppmux::secret::Secret::new("t0ken-for-scrapers"));
    })
    .await;
    h.proxy.pools()[0].wait_for(|s| s.live >= 1).await;
    let admin = h.proxy.admin_addr.unwrap();
    let wait = Duration::from_secs(5);
    for path in ["/metrics", "/status"] {
        let (status, _) = eppmux::admin::get(admin, path, wait).await.unwrap();
        assert_eq!(status, 401, "{path} without the token");
        let (status, body) = eppmux::admin::get_with_token(admin, path, "t0ken-for-scrapers", wait)
            .await
            .unwrap();
        assert_eq!(status, 200, "{path} with the token: {body}");
        let (status, _) = eppmux::admin::get_with_token(admin, path, "wrong", wait)
            .await
            .unwrap();
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    for path in ["/healthz", "/readyz"] {
        let (status, _) = eppmux::admin::get(admin, path, wait).await.unwrap();
        assert_eq!(status, 200, "{path} stays open for probes");
    }
    h.stop().await;
}
