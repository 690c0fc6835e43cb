//! The multiplexer's two promises, tried against registries that misbehave the way real ones do:
//! every answer reaches the client that asked, and the registry never sees more than the clients
//! asked for. One test per defect found from outside (answers sent twice or without clTRID,
//! forgotten sessions, registries that stall or stop reading, shrinks and shutdowns at awkward
//! moments), plus the login budget and the command rate limit. Every wait is on an event; the
//! only timeouts are guards that turn a hang into a failure.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use eppmux::epp::{self, Message};
use eppmux::secret::Secret;
use eppmux::Proxy;
use eppmux_mock::{Fault, MockConfig, MockRegistry};
use tokio_util::sync::CancellationToken;

fn one_session(cfg: &mut eppmux::config::Config) {
    cfg.registries[0].accounts[0].pool_min = 1;
    cfg.registries[0].accounts[0].pool_max = 1;
}

fn no_cltrid(verb: &str, name: &str) -> String {
    format!(
        r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><{verb}><domain:{verb} xmlns:domain="urn:ietf:params:xml:ns:domain-1.0"><domain:name>{name}</domain:name></domain:{verb}></{verb}></command></epp>"#
    )
}

/// The connection each command naming `name` reached, in order.
fn connections_of(mock: &MockRegistry, name: &str) -> Vec<u64> {
    let needle = format!(">{name}<");
    mock.transcript()
        .iter()
        .filter(|x| String::from_utf8_lossy(&x.command).contains(&needle))
        .map(|x| x.connection)
        .collect()
}

fn creates_of(mock: &MockRegistry, name: &str) -> usize {
    mock.ledger()
        .iter()
        .filter(|e| e.verb == "create" && e.names.iter().any(|n| n == name))
        .count()
}

/// Commands (not login, logout or hello) each connection received.
fn commands_per_connection(mock: &MockRegistry) -> HashMap<u64, usize> {
    let mut per = HashMap::new();
    for x in mock.transcript() {
        if let Ok(Message::Command(c)) = epp::sniff(&x.command) {
            if c.verb != "login" && c.verb != "logout" {
                *per.entry(x.connection).or_default() += 1;
            }
        }
    }
    per
}

#[tokio::test]
async fn an_answer_sent_twice_never_reaches_a_client_without_cltrid() {
    // Defect 1: B's command (no clTRID) was written while A's answer was on its way again.
    let h = Harness::start(MockConfig::default(), one_session).await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    h.mock
        .push_fault(Fault::AnswerTwice(Duration::from_millis(500)));
    let r = a.command(&domain_cmd("check", "a-data.gov", "A-1")).await;
    assert_eq!(r.cltrid.as_deref(), Some("A-1"));
    b.send(Bytes::from(no_cltrid("check", "b-data.gov"))).await;
    let frame = within(10, "B's answer", b.recv()).await.expect("an answer");
    let text = String::from_utf8_lossy(&frame);
    assert!(
        text.contains("b-data.gov") && !text.contains("a-data.gov") && !text.contains("A-1"),
        "B received someone else's answer: {text}"
    );
    let counters = h.proxy.pools()[0].counters();
    assert_eq!(counters.duplicate_answers, 1, "the duplicate was dropped");
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        1,
        "a duplicate recognised by its svTRID costs no session"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_answer_without_cltrid_to_an_unreadable_command_is_delivered_and_costs_no_login() {
    // Defect 2: a schema-invalid clTRID (2 characters) made the registry answer 2001 without
    // clTRID; eppmux took that as out of step, lost sessions and re-sent the query three times.
    let mock_cfg = MockConfig {
        strict_cltrid: true,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, one_session).await;
    let mut c = h.logged_in().await;
    let r = c.command(&domain_cmd("check", "short.gov", "AB")).await;
    assert_eq!(r.code, 2001, "the registry's own answer: {}", r.msg);
    assert_eq!(commands_named(&h.mock, "check"), 1, "sent once");
    let r = c.command(&domain_cmd("check", "next.gov", "OK-1")).await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("OK-1")));
    assert_eq!(h.mock.stats().logins.load(Relaxed), 1, "no login spent");
    assert_eq!(h.proxy.pools()[0].counters().sessions_lost, 0);
    h.stop().await;
}

#[tokio::test]
async fn pipelined_commands_around_an_unreadable_one_each_get_their_own_answer() {
    // Defect 2 with pipelining: the registry answers in order, so the clTRID-less 2001 belongs to
    // the command in its place; duplicates aside (svTRID), nothing else can take its place.
    let mock_cfg = MockConfig {
        strict_cltrid: true,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 3;
    })
    .await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    let mut c = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("check", "hold-first.gov", "A-1")))
        .await;
    h.mock.wait_held(1).await;
    b.send(Bytes::from(domain_cmd("check", "bad.gov", "B")))
        .await;
    c.send(Bytes::from(domain_cmd("check", "third.gov", "C-1")))
        .await;
    h.mock
        .wait_until(|m| m.stats().peak_in_flight.load(Relaxed) >= 3)
        .await;
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.cltrid.as_deref(), Some("A-1"));
    assert_eq!(b.recv_response().await.code, 2001);
    let r = c.recv_response().await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("C-1")));
    assert_eq!(h.mock.stats().logins.load(Relaxed), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_shrink_while_sessions_are_opening_ends_at_the_new_maximum() {
    // Defect 3: pool 4/4 reloaded to 1/1 while the four were logging in stayed at four.
    let mock_cfg = MockConfig {
        login_latency: Duration::from_millis(300),
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        cfg.registries[0].accounts[0].pool_min = 4;
        cfg.registries[0].accounts[0].pool_max = 4;
    })
    .await;
    // All four logins have reached the registry and wait for its answer.
    h.mock
        .wait_until(|m| m.stats().frames_received.load(Relaxed) >= 4)
        .await;
    let pool = &h.proxy.pools()[0];
    pool.resize(1, 1);
    within(
        20,
        "the pool back at one session",
        pool.wait_for(|s| s.live == 1 && s.connecting == 0),
    )
    .await;
    within(
        20,
        "the registry down to one session",
        h.mock.wait_until(|m| {
            m.stats().logins.load(Relaxed) == 4 && m.stats().active_sessions.load(Relaxed) == 1
        }),
    )
    .await;
    assert_eq!(
        commands_named(&h.mock, "logout"),
        3,
        "the surplus logged out"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_idle_session_is_preferred_to_a_busy_sessions_free_slot() {
    // Defect 4: with four live sessions and depth 4, four commands went to one session.
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 4;
        cfg.registries[0].accounts[0].pool_max = 4;
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 4;
    })
    .await;
    h.proxy.pools()[0].wait_for(|s| s.live == 4).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = h.logged_in().await;
        c.send(Bytes::from(domain_cmd(
            "check",
            &format!("hold-spread-{i}.gov"),
            &format!("S-{i}"),
        )))
        .await;
        clients.push(c);
    }
    // Four logins and four checks have arrived at the registry.
    h.mock
        .wait_until(|m| m.stats().frames_received.load(Relaxed) >= 8)
        .await;
    assert_eq!(
        h.mock.stats().peak_in_flight.load(Relaxed),
        1,
        "no session carried two commands at once"
    );
    h.mock.release_held(4);
    for c in &mut clients {
        assert_eq!(c.recv_response().await.code, 1000);
    }
    let served: HashSet<u64> = (0..4)
        .flat_map(|i| connections_of(&h.mock, &format!("hold-spread-{i}.gov")))
        .collect();
    assert_eq!(served.len(), 4, "one session each");
    h.stop().await;
}

#[tokio::test]
async fn max_session_commands_counts_commands_written_not_answered() {
    // Defect 5: limit 2 with depth 4 let four commands run on one session.
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 4;
        cfg.registries[0].accounts[0].lifecycle.max_commands = Some(2);
    })
    .await;
    let mut clients = Vec::new();
    let mut first = h.logged_in().await;
    first
        .send(Bytes::from(domain_cmd("check", "hold-limit.gov", "L-0")))
        .await;
    h.mock.wait_held(1).await;
    for i in 1..4 {
        let mut c = h.logged_in().await;
        c.send(Bytes::from(domain_cmd(
            "check",
            &format!("limit-{i}.gov"),
            &format!("L-{i}"),
        )))
        .await;
        clients.push(c);
    }
    h.mock.release_held(1);
    assert_eq!(first.recv_response().await.code, 1000);
    for c in &mut clients {
        assert_eq!(within(20, "an answer", c.recv_response()).await.code, 1000);
    }
    let per = commands_per_connection(&h.mock);
    assert!(per.values().all(|&n| n <= 2), "{per:?}");
    assert_eq!(h.mock.stats().logins.load(Relaxed), 2);
    h.stop().await;
}

#[tokio::test]
async fn commands_pipelined_behind_a_not_logged_in_answer_are_resent_not_lost() {
    // Defect 6: three creates behind a 2002 were reported lost although none ran.
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 4;
    })
    .await;
    let mut a = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("create", "hold-before.gov", "F-0")))
        .await;
    h.mock.wait_held(1).await;
    let mut others = Vec::new();
    for i in 1..4 {
        let mut c = h.logged_in().await;
        c.send(Bytes::from(domain_cmd(
            "create",
            &format!("behind-{i}.gov"),
            &format!("F-{i}"),
        )))
        .await;
        others.push(c);
    }
    h.mock
        .wait_until(|m| m.stats().peak_in_flight.load(Relaxed) >= 4)
        .await;
    // The registry forgets the session just after the held create: the three behind it get 2002.
    h.mock.push_fault(Fault::NotLoggedIn);
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.code, 1000);
    for (i, c) in others.iter_mut().enumerate() {
        let r = within(20, "an answer", c.recv()).await;
        let r = r.unwrap_or_else(|| panic!("create {} was reported lost", i + 1));
        assert!(String::from_utf8_lossy(&r).contains("result code=\"1000\""));
    }
    for i in 1..4 {
        assert_eq!(creates_of(&h.mock, &format!("behind-{i}.gov")), 1);
    }
    assert_eq!(h.proxy.pools()[0].counters().refused_replays, 0);
    h.stop().await;
}

#[tokio::test]
async fn a_registry_that_stops_reading_cannot_hold_a_command_beyond_the_response_timeout() {
    // Defect 8: a 12 MB create to a registry that stopped reading hung the client and the pool.
    const BIG: usize = 16 << 20;
    let mock_cfg = MockConfig {
        max_frame: BIG,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        one_session(cfg);
        cfg.limits.max_frame = BIG;
        cfg.registries[0].upstream.response_timeout = Duration::from_millis(800);
    })
    .await;
    let mut c = h.logged_in().await.with_max_frame(BIG);
    h.mock.stop_reading();
    let pw = "x".repeat(12 << 20);
    let create = format!(
        r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><create><domain:create xmlns:domain="urn:ietf:params:xml:ns:domain-1.0"><domain:name>stalled.gov</domain:name><domain:authInfo><domain:pw>{pw}</domain:pw></domain:authInfo></domain:create></create><clTRID>BIG-1</clTRID></command></epp>"#
    );
    c.send(Bytes::from(create)).await;
    within(20, "the client closed (outcome unknown)", c.expect_closed()).await;
    h.mock.resume_reading();
    let pool = &h.proxy.pools()[0];
    within(20, "a replacement session", pool.wait_for(|s| s.live == 1)).await;
    assert!(pool.counters().sessions_lost >= 1);
    assert_eq!(creates_of(&h.mock, "stalled.gov"), 0);
    assert!(
        within(20, "shutdown", h.proxy.shutdown()).await,
        "shutdown completed within its deadline"
    );
    h.mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_during_an_upstream_login_still_logs_out() {
    // Defect 9: the open was dropped after <login> was written; the registry saw no logout.
    let mock_cfg = MockConfig {
        login_latency: Duration::from_millis(300),
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |_| {}).await;
    h.mock
        .wait_until(|m| m.stats().frames_received.load(Relaxed) >= 1)
        .await;
    let Harness { mock, proxy } = h;
    assert!(within(20, "shutdown", proxy.shutdown()).await);
    within(
        20,
        "the login answered and the session over",
        mock.wait_until(|m| {
            m.stats().logins.load(Relaxed) == 1 && m.stats().active_sessions.load(Relaxed) == 0
        }),
    )
    .await;
    assert_eq!(
        commands_named(&mock, "logout"),
        1,
        "every login the registry counted got its logout"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn a_response_timeout_does_not_halve_the_pool() {
    // Defect 10: the dropped session's replacement met 2502 (the registry still counted the
    // dropped one) and the account was held at one session for five minutes.
    let mock_cfg = MockConfig {
        session_cap: 2,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.registries[0].upstream.response_timeout = Duration::from_millis(300);
    })
    .await;
    let pool = &h.proxy.pools()[0];
    pool.wait_for(|s| s.live == 2).await;
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::Delay(Duration::from_millis(1200)));
    let r = c.command(&domain_cmd("check", "slow.gov", "T-1")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (1000, Some("T-1")),
        "re-sent"
    );
    within(
        30,
        "back to two sessions",
        pool.wait_for(|s| s.live == 2 && s.connecting == 0),
    )
    .await;
    assert_eq!(pool.stats().effective_max, 2, "not held below pool_max");
    assert!(
        h.mock.stats().login_attempts.load(Relaxed) >= 4,
        "a 2502 was met and retried"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_retiring_session_is_never_given_a_command() {
    // Defect 11: the free pipeline slot of a retiring session took a command while another
    // session could serve it, and the command waited behind the retiring one.
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 2;
        cfg.registries[0].accounts[0].lifecycle.max_commands = Some(1);
    })
    .await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    a.send(Bytes::from(domain_cmd(
        "create",
        "hold-retiring.gov",
        "R-A",
    )))
    .await;
    h.mock.wait_held(1).await;
    // The held create was the session's last command: B's check must go elsewhere, and be
    // answered while the create is still held.
    let r = within(
        20,
        "B served by another session",
        b.command(&domain_cmd("check", "elsewhere.gov", "R-B")),
    )
    .await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("R-B")));
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.code, 1000);
    assert_ne!(
        connections_of(&h.mock, "hold-retiring.gov"),
        connections_of(&h.mock, "elsewhere.gov")
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_stuck_in_its_tls_handshake() {
    // Defect 12: one silent TCP connection on the TLS listener held the exit for 10 s.
    let h = Harness::start(MockConfig::default(), |cfg| cfg.limits.max_clients = 1).await;
    let _silent = tokio::net::TcpStream::connect(h.proxy.tls_addr.unwrap())
        .await
        .unwrap();
    // With one client slot, a second connection is refused at once exactly when the silent one
    // has been accepted (and a task waits on its handshake).
    let mut probe = tokio::net::TcpStream::connect(h.proxy.tls_addr.unwrap())
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let n = within(
        10,
        "the probe refused",
        tokio::io::AsyncReadExt::read(&mut probe, &mut byte),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0, "the probe was closed unanswered");
    let Harness { mock, proxy } = h;
    assert!(
        within(5, "shutdown", proxy.shutdown()).await,
        "shutdown completed"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_stopped_reading() {
    // Defect 12: a client that stops reading while its answer is written held the exit.
    const BIG: usize = 16 << 20;
    let mock_cfg = MockConfig {
        max_frame: BIG,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| cfg.limits.max_frame = BIG).await;
    // A client with a tiny receive window that sends one check whose answer is bigger than any
    // socket buffer, and never reads it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(h.proxy.plain_addr.unwrap()).await.unwrap();
    let mut c = Client {
        framed: tokio_util::codec::Framed::new(
            Box::new(tcp) as Box<dyn Io>,
            eppmux::frame::EppCodec::new(BIG),
        ),
        server_cert: None,
    };
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    let names: String = (0..150_000)
        .map(|i| format!("<domain:name>n{i}.gov</domain:name>"))
        .collect();
    let check = format!(
        r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><check><domain:check xmlns:domain="urn:ietf:params:xml:ns:domain-1.0">{names}</domain:check></check><clTRID>WIDE-1</clTRID></command></epp>"#
    );
    c.send(Bytes::from(check)).await;
    h.mock.wait_until(|m| commands_named(m, "check") == 1).await;
    let Harness { mock, proxy } = h;
    assert!(
        within(8, "shutdown", proxy.shutdown()).await,
        "shutdown completed"
    );
    drop(c);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_2002_in_an_unknown_wording_after_idleness_is_resent_on_a_fresh_session() {
    // Decision: registries word "not logged in" in ways no list can hold. A 2002 to the first
    // command after the session idled is taken as a possibly forgotten session: nothing ran, so
    // the command goes to another session and this one retires.
    let mock_cfg = MockConfig {
        idle_timeout: Duration::from_millis(200),
        idle_forget: true,
        forgotten_message: "Command use error".into(),
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.registries[0].accounts[0].lifecycle.keepalive = None;
        cfg.registries[0].accounts[0].lifecycle.suspect_2002_after = Duration::from_millis(100);
    })
    .await;
    let mut c = h.logged_in().await;
    h.mock
        .wait_until(|m| m.stats().idle_timeouts.load(Relaxed) >= 1)
        .await;
    let r = c
        .command(&domain_cmd("create", "after-idle.gov", "U-1"))
        .await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("U-1")));
    assert_eq!(creates_of(&h.mock, "after-idle.gov"), 1);
    assert_eq!(h.proxy.pools()[0].counters().resent_not_executed, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_2002_on_a_busy_session_is_relayed_as_it_is() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "warm.gov", "W-1"))
            .await
            .code,
        1000
    );
    h.mock.push_fault(Fault::UseError);
    let r = c.command(&domain_cmd("create", "used.gov", "W-2")).await;
    assert_eq!((r.code, r.cltrid.as_deref()), (2002, Some("W-2")));
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        1,
        "the session is kept"
    );
    assert_eq!(h.proxy.pools()[0].counters().resent_not_executed, 0);
    h.stop().await;
}

#[tokio::test]
async fn a_reload_cannot_try_new_credentials_beyond_the_login_budget() {
    // Reloads with a wrong password, one after another, must not become failed logins at the
    // registry faster than the budget allows (registries lock accounts after a few): the trial
    // takes its login from the account's budget like any session.
    let mock = start_mock(MockConfig::default()).await;
    let mut cfg = proxy_config(mock.addr);
    cfg.registries[0].upstream.step_timeout = Duration::from_secs(2);
    let acc = &mut cfg.registries[0].accounts[0];
    acc.pool_min = 1;
    acc.pool_max = 1;
    // One login at once, then one a minute: the pool's first session takes it.
    acc.max_logins_per_minute = Some(1);
    let proxy = Proxy::start(&cfg, CancellationToken::new()).await.unwrap();
    let pool = proxy.pools()[0].clone();
    within(20, "the first session", pool.wait_for(|s| s.live == 1)).await;
    let mut next = cfg.clone();
    next.registries[0].accounts[0].password = Secret::new("Wrong-Pw-1");
    for _ in 0..3 {
        let err = proxy.reload(&next).await.unwrap_err().to_string();
        assert!(err.contains("login budget"), "{err}");
    }
    assert_eq!(
        mock.stats().login_attempts.load(Relaxed),
        1,
        "no trial login reached the registry"
    );
    assert!(pool.counters().login_budget_waits >= 3);
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn a_registry_that_drops_every_session_cannot_make_eppmux_exceed_the_login_budget() {
    const PER_MINUTE: u32 = 30;
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.registries[0].accounts[0].max_logins_per_minute = Some(PER_MINUTE);
        cfg.registries[0].queue_wait = Duration::from_millis(300);
    })
    .await;
    let started = tokio::time::Instant::now();
    h.proxy.pools()[0].wait_for(|s| s.live == 2).await;
    for _ in 0..200 {
        h.mock.push_fault(Fault::DropAfterExecute);
    }
    let (tls, plain) = (h.proxy.tls_addr.unwrap(), h.proxy.plain_addr.unwrap());
    let clients: Vec<_> = (0..3)
        .map(|id| {
            tokio::spawn(async move {
                for i in 0..4 {
                    let mut c = if id % 2 == 0 {
                        Client::tls(tls, None).await
                    } else {
                        Client::plain(plain).await
                    };
                    c.greeting().await;
                    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
                    c.send(Bytes::from(domain_cmd(
                        "check",
                        &format!("churn-{id}-{i}.gov"),
                        &format!("C-{i}"),
                    )))
                    .await;
                    // An answer (2400 when no session could be had) or a close: both are fine.
                    let _ = c.recv().await;
                }
            })
        })
        .collect();
    for c in clients {
        within(60, "the churning clients", c).await.unwrap();
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let logins = h.mock.stats().login_attempts.load(Relaxed) as f64;
    let budget = 2.0 + f64::from(PER_MINUTE) * minutes;
    assert!(
        logins <= budget.floor() + 1.0,
        "{logins} logins in {:.1} s, budget {budget:.1}",
        minutes * 60.0
    );
    let pool = &h.proxy.pools()[0];
    assert!(pool.counters().login_budget_waits >= 1);
    let admin = h.proxy.admin_addr.unwrap();
    let (_, metrics) = eppmux::admin::get(admin, "/metrics", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        metrics.contains("eppmux_login_budget_waits_total{registry=\"\",account=\"registrar1\"}"),
        "{metrics}"
    );
    let stats = pool.stats();
    if stats.live == 0 && stats.login_budget_wait.is_some() {
        let (_, reasons) = eppmux::admin::readiness(&h.proxy.pools());
        assert!(reasons[0].contains("login budget"), "{reasons:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn commands_beyond_the_rate_limit_wait_in_the_queue_instead_of_being_refused() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.registries[0].accounts[0].max_commands_per_second = Some(10.0);
        cfg.registries[0].queue_wait = Duration::from_secs(10);
    })
    .await;
    h.proxy.pools()[0].wait_for(|s| s.live == 2).await;
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = h.logged_in().await;
        c.send(Bytes::from(domain_cmd(
            "check",
            &format!("rate-{i}.gov"),
            &format!("Q-{i}"),
        )))
        .await;
        clients.push(c);
    }
    for c in &mut clients {
        assert_eq!(within(20, "an answer", c.recv_response()).await.code, 1000);
    }
    // A burst of ten, then ten a second: the last ten cannot all be through in under ~0.9 s.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(h.proxy.pools()[0].counters().commands_throttled >= 5);
    assert_eq!(h.proxy.pools()[0].counters().exhausted, 0);
    h.stop().await;
}
