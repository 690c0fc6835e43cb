//! One test per resilience rule: keepalive, reconnect, dead-session detection, command safety on
//! failure, fairness, bounded queues and graceful shutdown. Faults come from the mock registry's
//! queue (deterministic) and every wait is on an event, never on a sleep.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use eppmux::epp::{self, Message};
use eppmux::Proxy;
use eppmux_mock::{Fault, MockConfig, MockRegistry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn one_session(cfg: &mut eppmux::config::Config) {
    cfg.registries[0].accounts[0].pool_min = 1;
    cfg.registries[0].accounts[0].pool_max = 1;
}

fn creates_of(mock: &MockRegistry, name: &str) -> usize {
    mock.ledger()
        .iter()
        .filter(|e| e.verb == "create" && e.names.iter().any(|n| n == name))
        .count()
}

#[tokio::test]
async fn keepalive_hellos_keep_an_idle_session_from_timing_out() {
    let mock_cfg = MockConfig {
        idle_timeout: Duration::from_secs(1),
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.keepalive = Some(Duration::from_millis(100));
    })
    .await;
    // Twelve hellos at 100 ms span longer than the registry's 1 s idle timeout.
    h.mock
        .wait_until(|m| m.stats().hellos.load(Relaxed) >= 12)
        .await;
    assert_eq!(
        h.mock.stats().idle_timeouts.load(Relaxed),
        0,
        "the session never went idle at the registry"
    );
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "alive.gov", "K1"))
            .await
            .code,
        1000
    );
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        1,
        "the same session served throughout"
    );
    assert!(h.proxy.pools()[0].counters().keepalives >= 12);
    h.stop().await;
}

#[tokio::test]
async fn a_session_the_registry_closes_while_idle_is_replaced() {
    let mock_cfg = MockConfig {
        idle_timeout: Duration::from_millis(200),
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.keepalive = None;
    })
    .await;
    h.mock
        .wait_until(|m| {
            m.stats().idle_timeouts.load(Relaxed) >= 1 && m.stats().logins.load(Relaxed) >= 2
        })
        .await;
    h.proxy.pools()[0].wait_for(|s| s.live == 1).await;
    assert!(h.proxy.pools()[0].counters().sessions_lost >= 1);
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "after-idle.gov", "I1"))
            .await
            .code,
        1000
    );
    h.stop().await;
}

#[tokio::test]
async fn not_logged_in_2002_is_resent_on_a_fresh_session() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::NotLoggedIn);
    let r = c
        .command(&domain_cmd("create", "forgotten.gov", "F1"))
        .await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (1000, Some("F1")),
        "the client never sees the 2002"
    );
    assert_eq!(
        creates_of(&h.mock, "forgotten.gov"),
        1,
        "executed exactly once"
    );
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        2,
        "the forgotten session was replaced"
    );
    assert_eq!(h.proxy.pools()[0].counters().resent_not_executed, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_registry_that_forgets_idle_sessions_is_handled_like_gov() {
    let mock_cfg = MockConfig {
        idle_timeout: Duration::from_millis(200),
        idle_forget: true,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.keepalive = None;
    })
    .await;
    let mut c = h.logged_in().await;
    h.mock
        .wait_until(|m| m.stats().idle_timeouts.load(Relaxed) >= 1)
        .await;
    let r = c
        .command(&domain_cmd("create", "gov-style.gov", "G1"))
        .await;
    assert_eq!(r.code, 1000);
    assert_eq!(creates_of(&h.mock, "gov-style.gov"), 1);
    assert_eq!(h.mock.stats().logins.load(Relaxed), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_2500_answer_is_relayed_and_its_session_replaced() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::Close2500);
    let r = c.command(&domain_cmd("create", "closing.gov", "C1")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2500, Some("C1")),
        "the registry's own answer, not replayed"
    );
    assert_eq!(creates_of(&h.mock, "closing.gov"), 0);
    let r = c.command(&domain_cmd("check", "next.gov", "C2")).await;
    assert_eq!(r.code, 1000, "the client's connection to eppmux goes on");
    assert_eq!(h.mock.stats().logins.load(Relaxed), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_query_whose_response_was_lost_is_sent_again() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::DropAfterExecute);
    let r = c.command(&domain_cmd("check", "q1.gov", "Q1")).await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("Q1")));
    h.mock.push_fault(Fault::DropBeforeExecute);
    let r = c.command(&domain_cmd("info", "q2.gov", "Q2")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2303, Some("Q2")),
        "the registry's answer to the info"
    );
    assert_eq!(h.proxy.pools()[0].counters().resent_queries, 2);
    h.stop().await;
}

#[tokio::test]
async fn a_transform_whose_response_was_lost_is_never_replayed() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    // Executed, answer lost: the client is closed between frames; the create ran once.
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::DropAfterExecute);
    c.send(Bytes::from(domain_cmd("create", "lost-after.gov", "T1")))
        .await;
    c.expect_closed().await;
    assert_eq!(creates_of(&h.mock, "lost-after.gov"), 1);
    // Not executed, but eppmux cannot know: same outcome, nothing ran.
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::DropBeforeExecute);
    c.send(Bytes::from(domain_cmd("delete", "lost-after.gov", "T2")))
        .await;
    c.expect_closed().await;
    assert!(
        h.mock.domain_exists("lost-after.gov"),
        "the delete never ran and was not replayed"
    );
    assert_eq!(h.proxy.pools()[0].counters().refused_replays, 2);
    // The client decides: it checks, and finds its create did happen.
    let mut c = h.logged_in().await;
    let frame = {
        c.send(Bytes::from(domain_cmd("check", "lost-after.gov", "T3")))
            .await;
        c.recv().await.unwrap()
    };
    assert!(String::from_utf8_lossy(&frame).contains("avail=\"0\""));
    h.stop().await;
}

#[tokio::test]
async fn a_stalled_response_times_out_queries_retry_transforms_close() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].upstream.response_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::StallMidFrame);
    assert_eq!(
        c.command(&domain_cmd("check", "stall.gov", "S1"))
            .await
            .code,
        1000
    );
    h.mock.push_fault(Fault::StallMidFrame);
    c.send(Bytes::from(domain_cmd("create", "stall.gov", "S2")))
        .await;
    c.expect_closed().await;
    assert_eq!(
        creates_of(&h.mock, "stall.gov"),
        1,
        "it ran once and was not replayed"
    );
    h.stop().await;
}

#[tokio::test]
async fn repeated_2200_stops_reconnecting_and_marks_the_account_unhealthy() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].password =
            eppmux::secret::Secret::new("not-the-registry-password");
    })
    .await;
    let pool = &h.proxy.pools()[0];
    pool.wait_for(|s| s.unhealthy.is_some()).await;
    assert_eq!(
        h.mock.stats().login_attempts.load(Relaxed),
        3,
        "three refusals, then no more attempts"
    );
    // Clients still get the greeting and a clear answer instead of a hang.
    let mut c = h.tls_client().await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml(CLID, "not-the-registry-password", "L"))
            .await
            .code,
        1000
    );
    let r = c.command(&domain_cmd("check", "x.gov", "U1")).await;
    assert_eq!(r.code, 2400);
    assert!(r.msg.contains("2200"), "{}", r.msg);
    assert_eq!(h.mock.stats().login_attempts.load(Relaxed), 3);
    h.stop().await;
}

#[tokio::test]
async fn a_2502_session_limit_holds_the_pool_below_its_max() {
    let mock_cfg = MockConfig {
        session_cap: 1,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2;
        cfg.registries[0].accounts[0].pool_max = 3;
        cfg.registries[0].queue_wait = Duration::from_millis(200);
        cfg.registries[0].session_limit_hold = Duration::from_secs(3600);
    })
    .await;
    let pool = &h.proxy.pools()[0];
    pool.wait_for(|s| s.effective_max == 1 && s.live == 1 && s.connecting == 0)
        .await;
    assert_eq!(h.mock.stats().login_attempts.load(Relaxed), 2);
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("check", "hold-cap.gov", "A")))
        .await;
    h.mock.wait_held(1).await;
    let r = b.command(&domain_cmd("check", "b.gov", "B")).await;
    assert_eq!(
        r.code, 2400,
        "no new session is tried while the registry is at its limit"
    );
    assert_eq!(h.mock.stats().login_attempts.load(Relaxed), 2);
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.code, 1000);
    h.stop().await;
}

#[tokio::test]
async fn eppmux_starts_with_the_registry_down_and_serves_once_it_is_up() {
    init_tracing();
    let probe = TcpListener::bind(loopback()).await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut cfg = proxy_config(addr);
    cfg.registries[0].greeting_wait = Duration::from_secs(30);
    let proxy = Proxy::start(&cfg, CancellationToken::new()).await.unwrap();
    proxy.pools()[0]
        .wait_for(|s| s.consecutive_failures >= 2)
        .await;
    // A client connecting now waits for the first greeting.
    let waiting = tokio::spawn(async move {
        let mut c = Client::tls(proxy.tls_addr.unwrap(), None).await;
        c.greeting().await;
        assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
        assert_eq!(
            c.command(&domain_cmd("check", "late.gov", "LATE"))
                .await
                .code,
            1000
        );
        proxy
    });
    let tls = eppmux::tls::server_config(
        &cert("server.pem"),
        &cert("server-key.pem"),
        Some(&cert("ca.pem")),
    )
    .unwrap();
    let mock = MockRegistry::start(addr, tls, MockConfig::default())
        .await
        .unwrap();
    let proxy = waiting.await.unwrap();
    assert!(
        proxy.pools()[0].counters().open_failures >= 2,
        "it kept retrying while the registry was down"
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn sessions_retire_after_max_commands_without_clients_noticing() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.max_commands = Some(3);
    })
    .await;
    let mut c = h.logged_in().await;
    for i in 0..7 {
        let r = c
            .command(&domain_cmd("check", &format!("r{i}.gov"), &format!("R{i}")))
            .await;
        assert_eq!((r.code, r.cltrid), (1000, Some(format!("R{i}"))));
    }
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        3,
        "sessions for commands 1-3, 4-6 and 7"
    );
    assert_eq!(
        commands_named(&h.mock, "logout"),
        2,
        "each retired session logged out"
    );
    assert_eq!(h.proxy.pools()[0].counters().sessions_retired, 2);
    assert!(
        h.mock.stats().peak_sessions.load(Relaxed) <= 1,
        "never above pool_max while replacing"
    );
    h.stop().await;
}

#[tokio::test]
async fn sessions_retire_at_max_age() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.max_age = Some(Duration::from_millis(200));
    })
    .await;
    h.mock
        .wait_until(|m| m.stats().logins.load(Relaxed) >= 2)
        .await;
    assert!(
        commands_named(&h.mock, "logout") >= 1,
        "the old session logged out"
    );
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "aged.gov", "A1")).await.code,
        1000
    );
    h.stop().await;
}

#[tokio::test]
async fn waiting_commands_are_served_first_come_first_served() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    let pool = &h.proxy.pools()[0];
    // X holds the only session and has three more commands pipelined behind it.
    let mut x = h.logged_in().await;
    x.send(Bytes::from(domain_cmd("check", "hold-x.gov", "X0")))
        .await;
    h.mock.wait_held(1).await;
    for i in 1..=3 {
        x.send(Bytes::from(domain_cmd(
            "check",
            &format!("x{i}.gov"),
            &format!("X{i}"),
        )))
        .await;
    }
    let mut others = Vec::new();
    for (i, name) in ["y.gov", "z.gov"].iter().enumerate() {
        let mut c = h.logged_in().await;
        c.send(Bytes::from(domain_cmd("check", name, name))).await;
        pool.wait_for(|s| s.waiting == i + 1).await;
        others.push(c);
    }
    h.mock.release_held(1);
    for i in 0..=3 {
        assert_eq!(x.recv_response().await.cltrid, Some(format!("X{i}")));
    }
    for c in &mut others {
        assert_eq!(c.recv_response().await.code, 1000);
    }
    let order: Vec<String> = h
        .mock
        .transcript()
        .iter()
        .filter_map(|e| match epp::sniff(&e.command) {
            Ok(Message::Command(c)) if c.verb == "check" => c.cltrid,
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        vec!["X0", "y.gov", "z.gov", "X1", "X2", "X3"],
        "a busy client does not starve others"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_wait_queue_is_bounded() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].queue_max = 1;
    })
    .await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    let mut c = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("check", "hold-q.gov", "A")))
        .await;
    h.mock.wait_held(1).await;
    b.send(Bytes::from(domain_cmd("check", "b.gov", "B"))).await;
    h.proxy.pools()[0].wait_for(|s| s.waiting == 1).await;
    let r = c.command(&domain_cmd("check", "c.gov", "C")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2400, Some("C")),
        "{}",
        r.msg
    );
    assert!(r.msg.contains("already wait"), "{}", r.msg);
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.code, 1000);
    assert_eq!(b.recv_response().await.code, 1000);
    h.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_answers_queued() {
    let h = Harness::start(MockConfig::default(), one_session).await;
    let Harness { mock, proxy } = h;
    let addr = proxy.tls_addr.unwrap();
    let login = |mut c: Client| async move {
        c.greeting().await;
        assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
        c
    };
    let mut a = login(Client::tls(addr, None).await).await;
    let mut b = login(Client::tls(addr, None).await).await;
    a.send(Bytes::from(domain_cmd("create", "hold-inflight.gov", "A")))
        .await;
    mock.wait_held(1).await;
    b.send(Bytes::from(domain_cmd("create", "queued.gov", "B")))
        .await;
    proxy.pools()[0].wait_for(|s| s.waiting == 1).await;
    let pool = proxy.pools()[0].clone();
    let stopping = tokio::spawn(proxy.shutdown());

    let r = b.recv_response().await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2400, Some("B")),
        "{}",
        r.msg
    );
    b.expect_closed().await;
    mock.release_held(1);
    let r = a.recv_response().await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (1000, Some("A")),
        "the in-flight command completed"
    );
    a.expect_closed().await;
    stopping.await.unwrap();

    assert_eq!(creates_of(&mock, "queued.gov"), 0);
    assert_eq!(
        commands_named(&mock, "logout"),
        mock.stats().logins.load(Relaxed)
    );
    assert_eq!(pool.stats().live, 0);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn a_pipelined_session_carries_several_commands_at_once_in_order() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 4;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = h.logged_in().await;
        // The first command holds the registry's (serial) processing; the others queue behind
        // it on the same session, which only pipelining allows.
        let name = if i == 0 {
            "hold-pipe.gov".to_string()
        } else {
            format!("pipe-{i}.gov")
        };
        c.send(Bytes::from(domain_cmd("check", &name, &format!("P{i}"))))
            .await;
        clients.push(c);
    }
    h.mock
        .wait_until(|m| m.stats().peak_in_flight.load(Relaxed) >= 4)
        .await;
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        1,
        "one session carried all four"
    );
    h.mock.release_held(1);
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.recv_response().await;
        assert_eq!((r.code, r.cltrid), (1000, Some(format!("P{i}"))));
    }
    h.stop().await;
}

#[tokio::test]
async fn a_pipelined_session_that_dies_replays_only_queries() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        one_session(cfg);
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 3;
    })
    .await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    let mut c = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("create", "hold-piped.gov", "A")))
        .await;
    h.mock.wait_held(1).await;
    b.send(Bytes::from(domain_cmd("create", "piped-b.gov", "B")))
        .await;
    c.send(Bytes::from(domain_cmd("check", "piped-c.gov", "C")))
        .await;
    h.mock
        .wait_until(|m| m.stats().peak_in_flight.load(Relaxed) >= 3)
        .await;
    // The held create is answered; the next (B's create) runs, then the connection drops with
    // B and C written and unanswered.
    h.mock.push_fault(Fault::DropAfterExecute);
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.cltrid.as_deref(), Some("A"));
    b.expect_closed().await;
    let r = c.recv_response().await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (1000, Some("C")),
        "the query was sent again"
    );
    assert_eq!(creates_of(&h.mock, "hold-piped.gov"), 1);
    assert_eq!(
        creates_of(&h.mock, "piped-b.gov"),
        1,
        "it ran once and was never replayed"
    );
    assert_eq!(h.proxy.pools()[0].counters().resent_queries, 1);
    h.stop().await;
}
