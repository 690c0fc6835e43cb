//! End-to-end tests of the proxy: real sockets on loopback, real TLS, the project's mock registry.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use eppmux::epp::{self, Message};
use eppmux::Proxy;
use eppmux_mock::MockConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn greeting_at_once_and_hello_on_both_listeners() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    for mut c in [h.tls_client().await, h.plain_client().await] {
        let g = c.greeting().await;
        let Ok(Message::Greeting(greeting)) = epp::sniff(&g) else {
            panic!()
        };
        assert_eq!(
            greeting.sv_id, "eppmux mock registry",
            "the registry's own greeting is relayed"
        );
        c.send(sample("hello.xml")).await;
        assert_eq!(
            c.recv().await.unwrap(),
            g,
            "<hello> is answered with the cached greeting"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn login_rules() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let mut c = h.tls_client().await;
    c.greeting().await;

    let r = c.command(&domain_cmd("check", "a.gov", "BEFORE-1")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2002, Some("BEFORE-1")),
        "command before login"
    );

    let r = c.command(&login_xml(CLID, "wrong-password", "BAD-1")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2200, Some("BAD-1")),
        "wrong password"
    );

    c.send(sample("login-newpw-epp-prefix.xml")).await;
    let r = c.recv_response().await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2102, Some("PW-CHANGE-1")),
        "newPW is refused: {}",
        r.msg
    );
    assert!(r.msg.contains("newPW"), "{}", r.msg);

    // epplib's style: ns0: prefixes on every element.
    c.send(sample("login-epplib.xml")).await;
    let r = c.recv_response().await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (1000, Some("tj2a5q#2026-11-24T16:00:41.090077"))
    );

    let r = c.command(&login_xml(CLID, PASSWORD, "AGAIN-1")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2002, Some("AGAIN-1")),
        "second login"
    );

    let r = c.command(&domain_cmd("check", "a.gov", "AFTER-1")).await;
    assert_eq!(r.code, 1000, "forwarded once logged in");

    let r = c.command(&logout_xml("OUT-1")).await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1500, Some("OUT-1")));
    c.expect_closed().await;

    // The client's logout is answered locally: the upstream session is still logged in.
    assert!(h
        .mock
        .transcript()
        .iter()
        .all(|x| !String::from_utf8_lossy(&x.command).contains("OUT-1")));
    let mut c2 = h.logged_in().await;
    assert_eq!(
        c2.command(&domain_cmd("check", "b.gov", "C2")).await.code,
        1000
    );
    assert_eq!(
        h.mock.stats().logins.load(Ordering::Relaxed),
        1,
        "one upstream login served both clients"
    );
    h.stop().await;
}

#[tokio::test]
async fn too_many_failed_logins_close_with_2501() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.limits.max_login_failures = 2
    })
    .await;
    let mut c = h.plain_client().await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, "nope", "F1")).await.code, 2200);
    assert_eq!(
        c.command(&login_xml("someone-else", PASSWORD, "F2"))
            .await
            .code,
        2501
    );
    c.expect_closed().await;
    h.stop().await;
}

#[tokio::test]
async fn frames_are_forwarded_byte_for_byte() {
    let h = Harness::start(MockConfig::default(), |_| {}).await;
    let mut c = h.logged_in().await;
    let mut got = Vec::new();
    let frames = [
        "domain-check.xml",
        "domain-create-secdns.xml",
        "domain-info-no-cltrid.xml",
        "domain-delete.xml",
    ];
    for name in frames {
        c.send(sample(name)).await;
        got.push(c.recv().await.unwrap());
    }
    let transcript = h.mock.transcript();
    // The mock saw the upstream login, then exactly our frames, and we got exactly its answers.
    let forwarded: Vec<_> = transcript.iter().skip(1).collect();
    assert_eq!(forwarded.len(), frames.len());
    for ((name, exchange), response) in frames.iter().zip(forwarded).zip(&got) {
        assert_eq!(
            exchange.command,
            sample(name),
            "{name} reached the registry unchanged"
        );
        assert_eq!(
            &exchange.response, response,
            "{name}: the registry's answer reached the client unchanged"
        );
    }
    let codes: Vec<u16> = got
        .iter()
        .map(|f| match epp::sniff(f) {
            Ok(Message::Response(r)) => r.code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![1000, 1000, 1000, 1000],
        "check, create, info, delete"
    );
    h.stop().await;
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_max = 3
    })
    .await;
    let mut c = h.logged_in().await;
    // All frames in one write: the proxy must still answer each, in order.
    let mut wire = Vec::new();
    for i in 0..20 {
        wire.extend(eppmux::frame::encode_frame(
            domain_cmd("check", &format!("pipe-{i}.gov"), &format!("P-{i}")).as_bytes(),
        ));
    }
    c.framed.get_mut().write_all(&wire).await.unwrap();
    for i in 0..20 {
        let r = c.recv_response().await;
        assert_eq!(r.cltrid, Some(format!("P-{i}")));
    }
    h.stop().await;
}

/// Many clients, fewer upstream sessions, identical clTRIDs everywhere (clients do not coordinate
/// them): every client must get the answer to its own command, proven by unique domain names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_few_sessions_and_each_gets_its_own_answers() {
    const CLIENTS: usize = 40;
    const COMMANDS: usize = 10;
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 3;
    })
    .await;
    let addr = h.proxy.tls_addr.unwrap();
    let plain = h.proxy.plain_addr.unwrap();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let mut c = if client % 2 == 0 {
                Client::tls(addr, None).await
            } else {
                Client::plain(plain).await
            };
            c.greeting().await;
            assert_eq!(
                c.command(&login_xml(CLID, PASSWORD, "SAME")).await.code,
                1000
            );
            for i in 0..COMMANDS {
                let name = format!("c{client}-n{i}.gov");
                c.send(Bytes::from(domain_cmd("check", &name, "SAME")))
                    .await;
                let frame = c.recv().await.unwrap();
                let text = String::from_utf8_lossy(&frame);
                assert!(
                    text.contains(&format!(">{name}<")),
                    "client {client} got someone else's answer: {text}"
                );
            }
            assert_eq!(c.command(&logout_xml("SAME")).await.code, 1500);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = h.mock.stats().peak_sessions.load(Ordering::Relaxed);
    assert!(
        (1..=3).contains(&peak),
        "upstream sessions stayed within pool_max: {peak}"
    );
    assert_eq!(
        h.mock.transcript().len() - h.mock.stats().logins.load(Ordering::Relaxed),
        CLIENTS * COMMANDS
    );
    h.stop().await;
}

#[tokio::test]
async fn pool_grows_to_max_then_answers_2400_without_sending() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 2;
        cfg.registries[0].queue_wait = Duration::from_millis(200);
    })
    .await;
    let mut a = h.logged_in().await;
    let mut b = h.logged_in().await;
    let mut c = h.logged_in().await;
    a.send(Bytes::from(domain_cmd("check", "hold-a.gov", "A-1")))
        .await;
    h.mock.wait_held(1).await;
    b.send(Bytes::from(domain_cmd("check", "hold-b.gov", "B-1")))
        .await;
    h.mock.wait_held(2).await; // only possible if the pool opened a second session
    assert_eq!(h.mock.stats().peak_sessions.load(Ordering::Relaxed), 2);

    let r = c.command(&domain_cmd("check", "c.gov", "C-1")).await;
    assert_eq!(
        (r.code, r.cltrid.as_deref()),
        (2400, Some("C-1")),
        "pool exhausted: {}",
        r.msg
    );
    assert!(r.msg.contains("pool exhausted"), "{}", r.msg);
    assert!(
        h.mock
            .transcript()
            .iter()
            .all(|x| !String::from_utf8_lossy(&x.command).contains("c.gov")),
        "nothing was sent upstream"
    );
    assert_eq!(
        h.mock.stats().peak_sessions.load(Ordering::Relaxed),
        2,
        "never more than pool_max"
    );

    h.mock.release_held(2);
    assert_eq!(a.recv_response().await.cltrid.as_deref(), Some("A-1"));
    assert_eq!(b.recv_response().await.cltrid.as_deref(), Some("B-1"));
    assert_eq!(
        c.command(&domain_cmd("check", "c.gov", "C-2")).await.code,
        1000,
        "served once a session is free"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_response_with_the_wrong_cltrid_retires_the_session() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 1;
        cfg.registries[0].accounts[0].pool_max = 1;
    })
    .await;
    let mut bad = h.logged_in().await;
    bad.send(Bytes::from(domain_cmd("create", "mismatch-1.gov", "M-1")))
        .await;
    // Its answer is not its own: the client is closed between frames and never sees it.
    bad.expect_closed().await;
    let mut good = h.logged_in().await;
    let r = good.command(&domain_cmd("check", "fine.gov", "G-1")).await;
    assert_eq!((r.code, r.cltrid.as_deref()), (1000, Some("G-1")));
    assert_eq!(
        h.mock.stats().logins.load(Ordering::Relaxed),
        2,
        "the out-of-step session was replaced, not reused"
    );
    let creates = h
        .mock
        .transcript()
        .iter()
        .filter(|x| String::from_utf8_lossy(&x.command).contains("mismatch-1.gov"))
        .count();
    assert_eq!(creates, 1, "the create was not replayed");
    h.stop().await;
}

#[tokio::test]
async fn no_greeting_means_a_clean_close_after_the_wait() {
    init_tracing();
    // A "registry" that accepts TCP but never completes TLS: no greeting can ever arrive.
    let silent = TcpListener::bind(loopback()).await.unwrap();
    let mut cfg = proxy_config(silent.local_addr().unwrap());
    cfg.registries[0].greeting_wait = Duration::from_millis(100);
    let proxy = Proxy::start(&cfg, CancellationToken::new()).await.unwrap();
    let mut c = Client::plain(proxy.plain_addr.unwrap()).await;
    c.expect_closed().await;
    let mut c = Client::tls(proxy.tls_addr.unwrap(), None).await;
    c.expect_closed().await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_requires_mutual_tls() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    // Without a client certificate the registry refuses the session: no greeting ever comes.
    let tcp = TcpStream::connect(mock.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls_config(None));
    let refused = match connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
    {
        Err(_) => true,
        Ok(mut tls) => {
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.is_err()
        }
    };
    assert!(
        refused,
        "the mock registry must refuse clients without a certificate"
    );
    assert_eq!(mock.stats().logins.load(Ordering::Relaxed), 0);

    // eppmux presents its client certificate and logs in.
    let proxy = Proxy::start(&proxy_config(mock.addr), CancellationToken::new())
        .await
        .unwrap();
    let mut c = Client::tls(proxy.tls_addr.unwrap(), None).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    assert_eq!(
        c.command(&domain_cmd("check", "x.gov", "X")).await.code,
        1000
    );
    proxy.shutdown().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn local_mutual_tls_when_a_client_ca_is_set() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].tls.as_mut().unwrap().client_ca = Some(cert("ca.pem"));
    })
    .await;
    let addr = h.proxy.tls_addr.unwrap();
    // No certificate: the handshake or the first read fails, and no greeting is seen.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls_config(None));
    if let Ok(mut tls) = connector
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
    {
        let mut buf = [0u8; 4];
        assert!(
            tls.read_exact(&mut buf).await.is_err(),
            "a client without a certificate must not get a greeting"
        );
    }
    let mut c = Client::tls(addr, Some(("client.pem", "client-key.pem"))).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    h.stop().await;
}

#[tokio::test]
async fn framing_edge_cases_through_the_proxy() {
    let h = Harness::start(MockConfig::default(), |cfg| cfg.limits.max_frame = 4096).await;
    let addr = h.proxy.plain_addr.unwrap();
    let mut bystander = h.logged_in().await;

    // A header split over several writes, one byte at a time, then the body in two pieces.
    let raw = TcpStream::connect(addr).await.unwrap();
    raw.set_nodelay(true).unwrap();
    let mut c = Client {
        framed: tokio_util::codec::Framed::new(Box::new(raw), eppmux::frame::EppCodec::default()),
        server_cert: None,
    };
    c.greeting().await;
    let wire = eppmux::frame::encode_frame(login_xml(CLID, PASSWORD, "SPLIT").as_bytes());
    let stream = c.framed.get_mut();
    for b in &wire[..4] {
        stream.write_all(&[*b]).await.unwrap();
        stream.flush().await.unwrap();
    }
    stream.write_all(&wire[4..40]).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(&wire[40..]).await.unwrap();
    assert_eq!(c.recv_response().await.cltrid.as_deref(), Some("SPLIT"));

    // Lengths below 5 and above the maximum: 2001 naming the reason, then a close.
    for (header, reason) in [
        (4u32, "below the minimum"),
        (0, "below the minimum"),
        (5000, "exceeds the maximum"),
    ] {
        let mut c = Client::plain(addr).await;
        c.greeting().await;
        c.framed
            .get_mut()
            .write_all(&header.to_be_bytes())
            .await
            .unwrap();
        let r = c.recv_response().await;
        assert_eq!(r.code, 2001);
        assert!(r.msg.contains(reason), "{}", r.msg);
        c.expect_closed().await;
    }

    // EOF in the middle of a frame: the proxy closes quietly.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let mut hdr = [0u8; 4];
    raw.read_exact(&mut hdr).await.unwrap();
    let mut greeting = vec![0u8; u32::from_be_bytes(hdr) as usize - 4];
    raw.read_exact(&mut greeting).await.unwrap();
    raw.write_all(&wire[..20]).await.unwrap();
    raw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "nothing is sent back for a truncated frame"
    );

    // Malformed XML inside a valid frame: 2001, and the session goes on.
    let mut c = h.logged_in().await;
    c.send(sample("hostile-two-commands.xml")).await;
    assert_eq!(c.recv_response().await.code, 2001);
    assert_eq!(
        c.command(&domain_cmd("check", "still.gov", "S")).await.code,
        1000
    );

    // None of this disturbed another client.
    assert_eq!(
        bystander
            .command(&domain_cmd("check", "ok.gov", "OK"))
            .await
            .code,
        1000
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_logs_out_upstream_sessions() {
    let h = Harness::start(MockConfig::default(), |cfg| {
        cfg.registries[0].accounts[0].pool_min = 2
    })
    .await;
    let mut c = h.logged_in().await;
    assert_eq!(
        c.command(&domain_cmd("check", "a.gov", "A")).await.code,
        1000
    );
    h.proxy.pools()[0].wait_for(|s| s.live == 2).await;
    let Harness { mock, proxy } = h;
    proxy.shutdown().await;
    c.expect_closed().await;
    let logouts = commands_named(&mock, "logout");
    assert_eq!(
        logouts,
        mock.stats().logins.load(Ordering::Relaxed),
        "every upstream session logged out"
    );
    mock.shutdown().await;
}
