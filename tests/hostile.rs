//! Bad input and hostile peers: every limit and every class of hostile input gets its documented
//! outcome, nothing hostile reaches the registry, and another client on the same proxy keeps
//! being served meanwhile.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use eppmux::epp::EPP_NS;
use eppmux_mock::{Fault, MockConfig, MockRegistry};
use tokio::io::AsyncWriteExt;

fn hello_xml() -> String {
    r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><hello/></epp>"#.to_string()
}

/// A logged-in client that must keep working whatever the others do.
async fn still_served(bystander: &mut Client, tag: &str) {
    let r = bystander
        .command(&domain_cmd("check", &format!("{tag}.gov"), tag))
        .await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (1000, Some(tag)),
        "the bystander was disturbed"
    );
}

fn reached_registry(mock: &MockRegistry, needle: &str) -> bool {
    mock.transcript()
        .iter()
        .any(|x| String::from_utf8_lossy(&x.command).contains(needle))
}

#[tokio::test]
async fn hostile_xml_gets_2001_with_its_cltrid_and_is_never_forwarded() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let mut bystander = h.logged_in().await;
    let mut c = h.logged_in().await;
    let deep = format!(
        "<epp xmlns=\"{EPP_NS}\"><command><check>{}</check><clTRID>DEEP-1</clTRID></command></epp>",
        "<a>".repeat(500) + &"</a>".repeat(500)
    );
    let cases: Vec<(&str, Bytes, Option<&str>)> = vec![
        ("entities", sample("hostile-entities.xml"), Some("EVIL-1")),
        ("two commands", sample("hostile-two-commands.xml"), Some("T-1")),
        ("not well-formed", Bytes::from(format!("<epp xmlns=\"{EPP_NS}\"><command><check></command><clTRID>BROKEN-1</clTRID></epp>")), None),
        ("not UTF-8", Bytes::from_static(b"<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command>\xff\xfe</command></epp>"), None),
        ("wrong namespace", Bytes::from_static(b"<epp xmlns=\"urn:example:not-epp\"><command><check/><clTRID>NS-1</clTRID></command></epp>"), Some("NS-1")),
        ("not XML", Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), None),
        ("absurd nesting", Bytes::from(deep), Some("DEEP-1")),
        ("external entity", Bytes::from(format!("<?xml version=\"1.0\"?><!DOCTYPE epp [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><epp xmlns=\"{EPP_NS}\"><command><info><domain:info xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"><domain:name>&x;</domain:name></domain:info></info><clTRID>XXE-1</clTRID></command></epp>")), Some("XXE-1")),
    ];
    let before = h.mock.transcript().len();
    for (what, frame, cltrid) in cases {
        c.send(frame).await;
        let r = c.recv_response().await;
        assert_eq!(r.code, 2001, "{what}: {}", r.msg);
        assert_eq!(
            r.cltrid.as_deref(),
            cltrid,
            "{what}: clTRID when it can be read"
        );
        still_served(&mut bystander, &format!("after-{}", what.replace(' ', "-"))).await;
    }
    // Only the bystander's checks reached the registry.
    let forwarded = h.mock.transcript().len() - before;
    assert_eq!(forwarded, 8, "no hostile frame was forwarded");
    assert!(!reached_registry(&h.mock, "ENTITY"));
    // The hostile client's session goes on too.
    assert_eq!(
        c.command(&domain_cmd("check", "fine.gov", "OK-1"))
            .await
            .code,
        1000
    );
    h.stop().await;
}

#[tokio::test]
async fn a_frame_that_never_completes_is_cut_off() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.limits.frame_timeout = Duration::from_millis(200)
    })
    .await;
    let mut bystander = h.logged_in().await;
    let mut slow = h.logged_in().await;
    let wire = eppmux::frame::encode_frame(domain_cmd("create", "slow.gov", "SLOW-1").as_bytes());
    slow.framed.get_mut().write_all(&wire[..30]).await.unwrap();
    slow.framed.get_mut().flush().await.unwrap();
    still_served(&mut bystander, "during-slowloris").await;
    slow.expect_closed().await;
    assert!(!reached_registry(&h.mock, "slow.gov"));
    still_served(&mut bystander, "after-slowloris").await;
    h.stop().await;
}

#[tokio::test]
async fn idle_clients_are_closed_between_frames() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.limits.idle_timeout = Duration::from_millis(200)
    })
    .await;
    let mut idle = h.plain_client().await;
    idle.greeting().await;
    idle.expect_closed().await;
    // An active client is not idle: each frame restarts its clock.
    let mut active = h.logged_in().await;
    still_served(&mut active, "active").await;
    h.stop().await;
}

#[tokio::test]
async fn at_max_clients_the_oldest_connection_not_logged_in_makes_room() {
    let h = Harness::start(MockConfig::default(), |cfg| cfg.limits.max_clients = 2).await;
    let mut bystander = h.logged_in().await;
    let mut idle = h.plain_client().await;
    idle.greeting().await;
    // A third connection: the one that never logged in is closed to admit it.
    let mut third = h.plain_client().await;
    third.greeting().await;
    idle.expect_closed().await;
    assert_eq!(
        third.command(&login_xml(CLID, PASSWORD, "L3")).await.code,
        1000
    );
    // Everyone logged in now: a fourth is refused.
    let mut fourth = h.plain_client().await;
    fourth.expect_closed().await;
    still_served(&mut bystander, "at-capacity").await;
    still_served(&mut third, "third").await;
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_log_in_in_time_is_closed() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.limits.login_timeout = Duration::from_millis(200);
    })
    .await;
    let mut lingering = h.plain_client().await;
    lingering.greeting().await;
    lingering.send(Bytes::from(hello_xml())).await;
    lingering.greeting().await;
    lingering.expect_closed().await;
    // Logged-in clients are not bound by it.
    let mut c = h.logged_in().await;
    h.mock
        .wait_until(|m| m.stats().logins.load(std::sync::atomic::Ordering::Relaxed) >= 1)
        .await;
    still_served(&mut c, "after-login-deadline").await;
    h.stop().await;
}

#[tokio::test]
async fn before_login_frames_are_limited_to_a_login_s_size() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let mut c = h.plain_client().await;
    c.greeting().await;
    // 20 KiB: far beyond any login, below the 1 MiB allowed after one.
    let padded = login_xml(CLID, PASSWORD, "BIG")
        .replace("<clID>", &format!("<!--{}--><clID>", "x".repeat(20 * 1024)));
    c.send(Bytes::from(padded.clone())).await;
    let r = c.recv_response().await;
    assert_eq!(r.code, 2001);
    assert!(r.msg.contains("16384"), "{}", r.msg);
    c.expect_closed().await;
    // After login, the same size is fine.
    let mut c = h.logged_in().await;
    let big_check = domain_cmd("check", "big.gov", "BIG-2").replace(
        "<check>",
        &format!("<!--{}--><check>", "x".repeat(20 * 1024)),
    );
    assert_eq!(c.command(&big_check).await.code, 1000);
    h.stop().await;
}

#[tokio::test]
async fn pipelined_frames_are_read_one_at_a_time_and_answered_in_order() {
    use eppmux::epp::{sniff, Message};
    use eppmux::frame::{encode_frame, EppCodec};
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::{FramedRead, FramedWrite};

    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_max = 2
    })
    .await;
    let mut bystander = h.logged_in().await;
    let tcp = tokio::net::TcpStream::connect(h.proxy.plain_addr.unwrap())
        .await
        .unwrap();
    let (read_half, mut write_half) = tcp.into_split();
    let mut reader = FramedRead::new(read_half, EppCodec::default());
    reader.next().await.unwrap().unwrap(); // greeting
    FramedWrite::new(&mut write_half, EppCodec::default())
        .send(Bytes::from(login_xml(CLID, PASSWORD, "L")))
        .await
        .unwrap();
    reader.next().await.unwrap().unwrap();
    // ~150 KiB of commands in one write: eppmux reads them as it answers them and TCP holds back
    // the rest, so a flooding client costs one frame of memory, not its whole backlog.
    let mut wire = Vec::new();
    for i in 0..300 {
        wire.extend(encode_frame(
            domain_cmd("check", &format!("f{i}.gov"), &format!("F{i}")).as_bytes(),
        ));
    }
    let send = tokio::spawn(async move { write_half.write_all(&wire).await.unwrap() });
    still_served(&mut bystander, "during-flood").await;
    for i in 0..300 {
        let frame = reader.next().await.unwrap().unwrap();
        let Ok(Message::Response(r)) = sniff(&frame) else {
            panic!("not a response")
        };
        assert_eq!(r.cltrid, Some(format!("F{i}")));
    }
    send.await.unwrap();
    still_served(&mut bystander, "after-flood").await;
    h.stop().await;
}

#[tokio::test]
async fn a_client_with_a_stale_password_does_not_lock_out_the_others_on_its_host() {
    // The old limiter counted every failure per source address: 21 failures from one local
    // worker with an old password made the right password get 2501 for everyone on the host.
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.limits.login_failures_per_minute = 3;
    })
    .await;
    for round in 0..10 {
        let mut stale = h.plain_client().await;
        stale.greeting().await;
        for i in 0..3 {
            let r = stale
                .command(&login_xml(
                    CLID,
                    "the-old-password",
                    &format!("S{round}-{i}"),
                ))
                .await;
            assert_eq!(r.code, if i < 2 { 2200 } else { 2501 });
        }
        stale.expect_closed().await;
    }
    let mut good = h.plain_client().await;
    good.greeting().await;
    assert_eq!(
        good.command(&login_xml(CLID, PASSWORD, "OK")).await.code,
        1000
    );
    still_served(&mut good, "after-stale-client").await;
    h.stop().await;
}

#[tokio::test]
async fn a_guesser_is_slowed_and_every_loopback_address_counts_as_one_host() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.limits.login_failures_per_minute = 3;
        cfg.limits.max_login_failures = 100;
    })
    .await;
    let plain = h.proxy.plain_addr.unwrap();
    let from = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let tcp = socket.connect(plain).await.unwrap();
        let mut c = Client {
            framed: tokio_util::codec::Framed::new(
                Box::new(tcp) as Box<dyn Io>,
                eppmux::frame::EppCodec::default(),
            ),
            server_cert: None,
        };
        c.greeting().await;
        c
    };
    let mut a = from("127.0.0.1").await;
    let mut b = from("127.0.0.2").await;
    for i in 0..3 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let r = c
            .command(&login_xml(CLID, &format!("guess-{i}"), "G"))
            .await;
        assert_eq!(r.code, 2200);
    }
    // Three distinct wrong passwords from this host: the next guesses, from either loopback
    // address, are answered only after a delay, one at a time.
    let started = tokio::time::Instant::now();
    let r = b.command(&login_xml(CLID, "guess-3", "G")).await;
    assert_eq!(r.code, 2200);
    let r = a.command(&login_xml(CLID, "guess-4", "G")).await;
    assert_eq!(r.code, 2200);
    assert!(
        started.elapsed() >= Duration::from_millis(250 + 500),
        "not slowed: {:?}",
        started.elapsed()
    );
    // The right password still gets in (after its turn), even from the guessing host.
    let mut good = from("127.0.0.3").await;
    assert_eq!(
        good.command(&login_xml(CLID, PASSWORD, "OK")).await.code,
        1000
    );
    h.stop().await;
}

#[tokio::test]
async fn hostile_registry_responses_retire_the_session_only() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.limits.max_frame = 64 * 1024;
    })
    .await;
    h.proxy.pools()[0].wait_for(|s| s.live == 2).await;
    let mut bystander = h.logged_in().await;
    let mut c = h.logged_in().await;
    for (i, fault) in [
        Fault::OversizeResponse,
        Fault::MalformedResponse,
        Fault::Unsolicited,
    ]
    .into_iter()
    .enumerate()
    {
        h.mock.push_fault(fault);
        // A query: retried on a healthy session, so the client still gets its own answer.
        let r = c
            .command(&domain_cmd(
                "check",
                &format!("hostile-{i}.gov"),
                &format!("H{i}"),
            ))
            .await;
        assert_eq!(
            (r.code, r.cltrid),
            (1000, Some(format!("H{i}"))),
            "{fault:?}"
        );
        still_served(&mut bystander, &format!("after-{}", fault.name())).await;
    }
    // A transform meeting a broken response is not replayed: its client is closed between frames.
    h.mock.push_fault(Fault::MalformedResponse);
    c.send(Bytes::from(domain_cmd("create", "broken-answer.gov", "HC")))
        .await;
    c.expect_closed().await;
    still_served(&mut bystander, "after-transform").await;
    let counters = h.proxy.pools()[0].counters();
    assert!(counters.sessions_lost >= 4, "{counters:?}");
    h.proxy.pools()[0].wait_for(|s| s.live == 2).await;
    assert!(h.mock.stats().logins.load(Relaxed) >= 6);
    h.stop().await;
}

#[tokio::test]
async fn local_client_certificates_can_be_pinned_by_fingerprint() {
    let client_der = eppmux::tls::load_certs(&cert("client.pem"))
        .unwrap()
        .remove(0);
    let server_der = eppmux::tls::load_certs(&cert("server.pem"))
        .unwrap()
        .remove(0);
    for (allowed, expect_ok) in [
        (eppmux::fingerprint(&client_der), true),
        (eppmux::fingerprint(&server_der), false),
    ] {
        let h = Harness::start(MockConfig::default(), |cfg| {
            let tls = cfg.registries[0].tls.as_mut().unwrap();
            tls.client_ca = Some(cert("ca.pem"));
            tls.client_allow = vec![allowed.clone()];
        })
        .await;
        let mut c = Client::tls(
            h.proxy.tls_addr.unwrap(),
            Some(("client.pem", "client-key.pem")),
        )
        .await;
        if expect_ok {
            c.greeting().await;
            assert_eq!(
                c.command(&login_xml(CLID, PASSWORD, "PIN")).await.code,
                1000
            );
        } else {
            c.expect_closed().await;
        }
        h.stop().await;
    }
}

#[tokio::test]
async fn client_namespaces_never_become_metric_labels() {
    // Before: the raw object namespace was the `command` label — a quote broke the scrape and
    // every distinct namespace added a series for the life of the process.
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let mut c = h.logged_in().await;
    for i in 0..60 {
        let ns = format!("urn:x\" 1 eppmux_fake_total 999 # {i}{}", "y".repeat(1000));
        let frame = format!(
            r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><check><x:check xmlns:x='{ns}'><x:name>m.gov</x:name></x:check></check><clTRID>NS-{i}</clTRID></command></epp>"#
        );
        c.send(Bytes::from(frame)).await;
        assert_eq!(
            c.recv_response().await.cltrid.as_deref(),
            Some(&*format!("NS-{i}"))
        );
    }
    let admin = h.proxy.admin_addr.unwrap();
    let (_, metrics) = eppmux::admin::get(admin, "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!metrics.contains("eppmux_fake_total"), "{metrics}");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("eppmux_commands_forwarded_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{series:#?}");
    assert!(
        series[0].contains("command=\"other:check\""),
        "{}",
        series[0]
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unreadable_command_between_pipelined_creates_costs_no_other_client_its_answer() {
    // Security item 4, from the correctness angle (defect 2): a frame the registry's parser
    // rejects is answered 2001 without clTRID; with pipelining that used to drop another client
    // whose create did run.
    let mock_cfg = MockConfig {
        strict_cltrid: true,
        ..MockConfig::default()
    };
    let h = Harness::start(mock_cfg, |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 1;
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = 3;
    })
    .await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    let mut c = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("create", "hold-sec-a.gov", "SA-1")))
        .await;
    h.mock.wait_held(1).await;
    b.send(Bytes::from(domain_cmd("create", "sec-b.gov", "B")))
        .await;
    c.send(Bytes::from(domain_cmd("create", "sec-c.gov", "SC-1")))
        .await;
    h.mock
        .wait_until(|m| m.stats().peak_in_flight.load(Relaxed) >= 3)
        .await;
    h.mock.release_held(1);
    assert_eq!(a.recv_response().await.code, 1000);
    assert_eq!(b.recv_response().await.code, 2001);
    let r = c.recv_response().await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("SC-1")));
    for (name, runs) in [("hold-sec-a.gov", 1), ("sec-b.gov", 0), ("sec-c.gov", 1)] {
        let ran = h
            .mock
            .ledger()
            .iter()
            .filter(|e| e.names.iter().any(|n| n == name))
            .count();
        assert_eq!(ran, runs, "{name}");
    }
    assert_eq!(h.mock.stats().logins.load(Relaxed), 1, "no login spent");
    h.stop().await;
}

#[tokio::test]
async fn a_1500_from_the_registry_is_relayed_and_retires_its_session() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 1;
    })
    .await;
    let mut c = h.logged_in().await;
    h.mock.push_fault(Fault::EndSession);
    let r = c.command(&domain_cmd("check", "ended.gov", "E-1")).await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1500, Some("E-1")));
    c.expect_closed().await;
    h.proxy.pools()[0]
        .wait_for(|s| s.live == 1 && s.connecting == 0)
        .await;
    assert_eq!(
        h.mock.stats().logins.load(Relaxed),
        2,
        "the session was replaced"
    );
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "after.gov", "E-2"))
            .await
            .code,
        1000
    );
    h.stop().await;
}

#[tokio::test]
async fn local_credentials_keep_the_registry_password_away_from_applications() {
    let client_der = eppmux::tls::load_certs(&cert("client.pem"))
        .unwrap()
        .remove(0);
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].tls.as_mut().unwrap().client_ca = Some(cert("ca.pem"));
        let local = &mut cfg.registries[0].accounts[0].local;
        local.clid = Some("app1".into());
        local.password = Some(eppmux::secret::Secret::new("app-local-pw"));
        local.client_certs = vec![eppmux::fingerprint(&client_der)];
    })
    .await;
    let tls = h.proxy.tls_addr.unwrap();
    // The registry's own credentials no longer log in locally, nor its password with the
    // local clID.
    let mut c = h.plain_client().await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "R")).await.code, 2200);
    assert_eq!(
        c.command(&login_xml("app1", PASSWORD, "R2")).await.code,
        2200
    );
    // The local ones do, and commands go to the registry under the registry's clID.
    let mut c = h.plain_client().await;
    c.greeting().await;
    let r = c.command(&login_xml("app1", "app-local-pw", "L")).await;
    assert_eq!(r.code, 1000);
    assert_eq!(
        c.command(&domain_cmd("check", "local.gov", "LC"))
            .await
            .code,
        1000
    );
    // A client certificate mapped to the account stands in for the password.
    let mut c = Client::tls(tls, Some(("client.pem", "client-key.pem"))).await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml("app1", "anything", "CERT")).await.code,
        1000
    );
    // Without that certificate, a wrong password is still wrong.
    let mut c = h.plain_client().await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml("app1", "anything", "NOCERT"))
            .await
            .code,
        2200
    );
    h.stop().await;
}
