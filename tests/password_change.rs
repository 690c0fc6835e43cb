//! Changing the registry password through eppmux (`new_password`): the next session's login
//! carries `<newPW>`, later ones use the new password alone, a second instance sharing the
//! account (or a restart) follows a change already made, and a change the registry refuses
//! leaves the old password in force. Against the mock registry, whose password really changes.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use eppmux::config::Config;
use eppmux::secret::Secret;
use eppmux::Proxy;
use eppmux_mock::{MockConfig, MockRegistry};
use tokio_util::sync::CancellationToken;

const NEW: &str = "New-Pw-2026";

/// A proxy for the mock whose account carries `new_password`.
async fn with_new_password(mock: &MockRegistry, new_password: &str, pool: (usize, usize)) -> Proxy {
    let mut cfg: Config = proxy_config(mock.addr);
    let acc = &mut cfg.registries[0].accounts[0];
    acc.new_password = Some(Secret::new(new_password));
    acc.pool_min = pool.0;
    acc.pool_max = pool.1;
    Proxy::start(&cfg, CancellationToken::new()).await.unwrap()
}

/// Login frames the registry received, and how many of them asked for a change.
fn logins_sent(mock: &MockRegistry) -> (usize, usize) {
    let frames: Vec<String> = mock
        .received()
        .iter()
        .map(|(_, f)| String::from_utf8_lossy(f).into_owned())
        .filter(|f| f.contains("<login>"))
        .collect();
    let changes = frames.iter().filter(|f| f.contains("<newPW>")).count();
    (frames.len(), changes)
}

/// Waits until the proxy's account has `n` logged-in sessions (the logins' answers handled).
async fn live(proxy: &Proxy, n: usize) {
    proxy.pools()[0].wait_for(|s| s.live >= n).await;
}

fn password_state(proxy: &Proxy) -> String {
    let status = proxy.pools()[0].status();
    status["password"].as_str().unwrap_or_default().to_string()
}

async fn login(proxy: &Proxy, pw: &str) -> Client {
    let mut c = Client::plain(proxy.plain_addr.unwrap()).await;
    c.greeting().await;
    let r = c.command(&login_xml(CLID, pw, "L")).await;
    assert_eq!(r.code, 1000, "local login with {pw}: {r:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_login_changes_the_password_and_every_later_session_uses_the_new_one() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let proxy = with_new_password(&mock, NEW, (1, 2)).await;
    live(&proxy, 1).await;
    assert_eq!(mock.password(CLID).as_deref(), Some(NEW));
    assert_eq!(logins_sent(&mock), (1, 1), "one login, with <newPW>");
    assert_eq!(
        password_state(&proxy),
        "new_password (changed at the registry)"
    );

    // Both local passwords log in while both are configured.
    let mut a = login(&proxy, PASSWORD).await;
    let mut b = login(&proxy, NEW).await;
    // A command held at the registry keeps the first session busy: the second command needs a
    // second session, which logs in with the new password alone.
    a.send(domain_cmd("check", "hold-1.gov", "A")).await;
    mock.wait_held(1).await;
    assert_eq!(
        b.command(&domain_cmd("check", "free.gov", "B")).await.code,
        1000
    );
    assert_eq!(mock.stats().logins.load(Relaxed), 2);
    assert_eq!(
        logins_sent(&mock),
        (2, 1),
        "the second login asked for no change"
    );
    mock.release_held(1);
    assert_eq!(a.recv_response().await.code, 1000);

    // A client's own <newPW> is refused: the account's sessions are shared.
    let mut c = Client::plain(proxy.plain_addr.unwrap()).await;
    c.greeting().await;
    let with_new_pw = format!(
        r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><login><clID>{CLID}</clID><pw>{PASSWORD}</pw><newPW>Mine-Pw-99</newPW><options><version>1.0</version><lang>en</lang></options><svcs><objURI>urn:ietf:params:xml:ns:domain-1.0</objURI></svcs></login><clTRID>NP</clTRID></command></epp>"#
    );
    let r = c.command(&with_new_pw).await;
    assert_eq!(r.code, 2102, "{r:?}");
    assert!(
        r.msg.contains("newPW") && r.msg.contains("shares"),
        "the message says why: {}",
        r.msg
    );
    assert_eq!(
        mock.password(CLID).as_deref(),
        Some(NEW),
        "unchanged by the client"
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_sharing_the_account_and_a_restart_follow_a_change_already_made() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let first = with_new_password(&mock, NEW, (1, 1)).await;
    live(&first, 1).await;
    assert_eq!(mock.password(CLID).as_deref(), Some(NEW));

    // The second replica has the same configuration: its change is answered 2200 (the old
    // password is gone), and it logs in with the new one, once.
    let attempts = mock.stats().login_attempts.load(Relaxed);
    let second = with_new_password(&mock, NEW, (1, 1)).await;
    live(&second, 1).await;
    assert_eq!(mock.stats().login_attempts.load(Relaxed), attempts + 2);
    assert_eq!(
        password_state(&second),
        "new_password (changed at the registry)"
    );
    let mut c = login(&second, PASSWORD).await;
    assert_eq!(
        c.command(&domain_cmd("check", "second.gov", "S"))
            .await
            .code,
        1000
    );

    // A restart with new_password still set behaves the same way.
    first.shutdown().await;
    let restarted = with_new_password(&mock, NEW, (1, 1)).await;
    live(&restarted, 1).await;
    let mut c = login(&restarted, NEW).await;
    assert_eq!(
        c.command(&domain_cmd("check", "restarted.gov", "R"))
            .await
            .code,
        1000
    );
    assert_eq!(mock.password(CLID).as_deref(), Some(NEW));
    assert_eq!(
        logins_sent(&mock).1,
        3,
        "each instance asked once, none looped"
    );
    second.shutdown().await;
    restarted.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_registry_refuses_keeps_the_old_password_in_force() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    // The mock's policy, like the EPP schema's: 6 to 16 characters.
    let proxy = with_new_password(&mock, "short", (1, 1)).await;
    live(&proxy, 1).await;
    assert_eq!(mock.password(CLID).as_deref(), Some(PASSWORD));
    assert_eq!(
        logins_sent(&mock),
        (2, 1),
        "the change, refused; then the old password"
    );
    assert_eq!(
        password_state(&proxy),
        "password (the registry refused new_password)"
    );
    let mut c = login(&proxy, PASSWORD).await;
    assert_eq!(
        c.command(&domain_cmd("check", "kept.gov", "K")).await.code,
        1000
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_passwords_wrong_the_account_stops_after_three_failed_logins() {
    // Each session tries the other password after a 2200 on the same connection: two failed
    // logins a session. Registries lock accounts after a few; the stop counts logins.
    init_tracing();
    let mut mock_cfg = MockConfig::default();
    mock_cfg.accounts.insert(CLID.into(), "Neither-Pw-9".into());
    let mock = start_mock(mock_cfg).await;
    let proxy = with_new_password(&mock, NEW, (1, 1)).await;
    let pool = proxy.pools()[0].clone();
    within(
        60,
        "the account stopped",
        pool.wait_for(|s| s.unhealthy.is_some()),
    )
    .await;
    assert_eq!(
        mock.stats().login_attempts.load(Relaxed),
        3,
        "failed logins at the registry"
    );
    assert_eq!(mock.password(CLID).as_deref(), Some("Neither-Pw-9"));
    // The metric counts each of them once.
    let admin = proxy.admin_addr.unwrap();
    let (_, metrics) = eppmux::admin::get(admin, "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    let line = format!(
        "eppmux_upstream_logins_total{{registry=\"\",account=\"{CLID}\",result=\"2200\"}} 3"
    );
    assert!(metrics.contains(&line), "{metrics}");
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_opening_together_ask_for_the_change_once_and_fail_no_login() {
    init_tracing();
    // A registry slow to check passwords: without one login at a time, every session opening
    // at start would send the old password before the first learned it had changed.
    let mock = start_mock(MockConfig {
        login_latency: std::time::Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await;
    let proxy = with_new_password(&mock, NEW, (3, 3)).await;
    live(&proxy, 3).await;
    assert_eq!(
        logins_sent(&mock),
        (3, 1),
        "one change, then the new password"
    );
    assert_eq!(
        mock.stats().login_attempts.load(Relaxed),
        3,
        "no login was refused"
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_leaves_the_registry_password_as_it_was() {
    init_tracing();
    let mut mock_cfg = MockConfig::default();
    mock_cfg
        .accounts
        .insert("registrar2".into(), "other-Pw-1".into());
    let mock = start_mock(mock_cfg).await;
    let mut cfg: Config = proxy_config(mock.addr);
    let mut second = cfg.registries[0].accounts[0].clone();
    second.clid = "registrar2".into();
    second.password = Secret::new("other-Pw-1");
    second.local.clid = None;
    cfg.registries[0].accounts.push(second);
    let proxy = Proxy::start(&cfg, CancellationToken::new()).await.unwrap();
    for pool in proxy.pools() {
        pool.wait_for(|s| s.live >= 1).await;
    }
    // One reload: a password change for the first account, a wrong password for the second.
    let mut next = cfg.clone();
    next.registries[0].accounts[0].new_password = Some(Secret::new(NEW));
    next.registries[0].accounts[1].password = Secret::new("wrong-Pw-2");
    let err = proxy.reload(&next).await.unwrap_err().to_string();
    assert!(err.contains("registrar2") && err.contains("2200"), "{err}");
    assert_eq!(
        mock.password(CLID).as_deref(),
        Some(PASSWORD),
        "the trial of the first account changed nothing at the registry"
    );
    assert_eq!(logins_sent(&mock).1, 0, "no <newPW> was sent");
    proxy.shutdown().await;
    mock.shutdown().await;
}
