//! Chaos soak: many clients issue unique creates and checks through eppmux while the mock registry
//! injects every fault at random (drops before and after executing, 2002 "not logged in", 2500,
//! delays, stalls mid-frame, answers sent twice, answers without clTRID, registries that stop
//! reading, refused logins). At the end, from the registry's ledger and transcript and the
//! clients' own logs: no transform ran twice, every client got its own answer or a clean close
//! between frames, nothing was misrouted, a create was reported lost only when the registry did
//! not answer it as not executed, eppmux never held more than pool_max sessions nor logged in
//! faster than its budget, and the pool recovered to its configured size.
//!
//! Bounded by command count (CHAOS_CLIENTS × CHAOS_COMMANDS, defaults 32 × 100) and by a
//! two-minute guard. Figures are printed at the end:
//!     EPPMUX_TEST_LOG=error cargo test --release --test chaos -- --nocapture

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use eppmux::epp::{self, Message};
use eppmux_mock::{Chaos, MockConfig};
use futures_util::{SinkExt, StreamExt};

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default, Debug)]
struct ClientLog {
    sent: usize,
    answered: usize,
    clean_closes: usize,
    unclean: usize,
    misrouted: usize,
    exhausted_2400: usize,
    relayed_2500: usize,
    /// Answers without clTRID to a command the registry could not read, relayed.
    unreadable_2001: usize,
    unexpected: Vec<String>,
    /// Creates the client saw succeed.
    created: Vec<String>,
    /// Creates answered with a failure that means "not executed" (2400, 2500, 2001).
    not_executed: Vec<String>,
    /// Creates whose connection closed before an answer: the client does not know.
    unknown: Vec<String>,
}

async fn connect(h_tls: std::net::SocketAddr, h_plain: std::net::SocketAddr, tls: bool) -> Client {
    let mut c = if tls {
        Client::tls(h_tls, None).await
    } else {
        Client::plain(h_plain).await
    };
    c.greeting().await;
    let r = c.command(&login_xml(CLID, PASSWORD, "T-login")).await;
    assert_eq!(r.code, 1000, "local login never fails");
    c
}

async fn run_client(
    id: usize,
    commands: usize,
    tls_addr: std::net::SocketAddr,
    plain_addr: std::net::SocketAddr,
) -> ClientLog {
    let mut log = ClientLog::default();
    let tls = id % 2 == 0;
    let mut c = connect(tls_addr, plain_addr, tls).await;
    for i in 0..commands {
        let create = i % 2 == 0;
        let name = format!("{}-{id}-{i}.gov", if create { "c" } else { "k" });
        // clTRIDs are deliberately the same across clients: correlation must be by order.
        let cltrid = format!("T-{i}");
        let verb = if create { "create" } else { "check" };
        c.framed
            .send(Bytes::from(domain_cmd(verb, &name, &cltrid)))
            .await
            .expect("send");
        log.sent += 1;
        match c.framed.next().await {
            None => {
                log.clean_closes += 1;
                if create {
                    log.unknown.push(name);
                }
                c = connect(tls_addr, plain_addr, tls).await;
            }
            Some(Err(e)) => {
                log.unclean += 1;
                log.unexpected
                    .push(format!("{name}: connection broke mid-frame: {e}"));
                c = connect(tls_addr, plain_addr, tls).await;
            }
            Some(Ok(frame)) => {
                log.answered += 1;
                let text = String::from_utf8_lossy(&frame).into_owned();
                let r = match epp::sniff(&frame) {
                    Ok(Message::Response(r)) => r,
                    other => {
                        log.unexpected
                            .push(format!("{name}: not a response: {other:?}"));
                        continue;
                    }
                };
                // A registry that could not read a command answers 2001 without its clTRID.
                let unreadable = r.code == 2001 && r.cltrid.is_none();
                if r.cltrid.as_deref() != Some(cltrid.as_str()) && !unreadable {
                    log.misrouted += 1;
                    continue;
                }
                match r.code {
                    1000 => {
                        if !text.contains(&format!(">{name}<")) {
                            log.misrouted += 1;
                        } else if create {
                            log.created.push(name);
                        }
                    }
                    2400 | 2500 | 2001 => {
                        match r.code {
                            2400 => log.exhausted_2400 += 1,
                            2500 => log.relayed_2500 += 1,
                            _ => log.unreadable_2001 += 1,
                        }
                        if create {
                            log.not_executed.push(name);
                        }
                    }
                    code => log
                        .unexpected
                        .push(format!("{name}: unexpected {code} {}", r.msg)),
                }
            }
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    soak(1, 32, 100).await;
}

/// The same with four commands in flight per upstream session: every in-flight command of a
/// failing session must follow the same safety rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_pipelined() {
    soak(4, 24, 60).await;
}

/// The login budget of the soak: a burst of pool_max, then this many a minute.
const LOGINS_PER_MINUTE: u32 = 1200;

async fn soak(depth: usize, default_clients: u64, default_commands: u64) {
    let clients = env_or("CHAOS_CLIENTS", default_clients) as usize;
    let commands = env_or("CHAOS_COMMANDS", default_commands) as usize;
    let seed = env_or("CHAOS_SEED", 2026);
    let chaos = Chaos {
        command_fault_probability: 0.08,
        login_refusal_probability: 0.05,
        max_delay: Duration::from_millis(30),
        seed,
    };
    let mock_cfg = MockConfig {
        chaos: Some(chaos),
        latency: Duration::from_millis(1),
        // Sessions that stopped reading are closed by the registry after this.
        idle_timeout: Duration::from_secs(3),
        ..MockConfig::default()
    };
    let (pool_min, pool_max) = (3, 5);
    let h = Harness::start(mock_cfg, |cfg| {
        cfg.registries[0].accounts[0].pool_min = pool_min;
        cfg.registries[0].accounts[0].pool_max = pool_max;
        cfg.registries[0].accounts[0].lifecycle.keepalive = Some(Duration::from_millis(200));
        cfg.registries[0].accounts[0].lifecycle.pipeline_depth = depth;
        cfg.registries[0].accounts[0].max_logins_per_minute = Some(LOGINS_PER_MINUTE);
        cfg.registries[0].upstream.response_timeout = Duration::from_millis(500);
        cfg.registries[0].upstream.step_timeout = Duration::from_secs(2);
        cfg.registries[0].queue_wait = Duration::from_secs(3);
        cfg.registries[0].session_limit_hold = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    // The most sessions eppmux held or was opening at any moment.
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let pool = h.proxy.pools()[0].clone();
        let peak = peak.clone();
        tokio::spawn(async move {
            pool.wait_for(|s| {
                peak.fetch_max(s.live + s.connecting, Relaxed);
                false
            })
            .await
        })
    };
    let (tls, plain) = (h.proxy.tls_addr.unwrap(), h.proxy.plain_addr.unwrap());
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(run_client(id, commands, tls, plain)))
        .collect();
    let mut logs = Vec::new();
    let guard = tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            logs.push(t.await.expect("client task"));
        }
    });
    guard
        .await
        .expect("chaos clients finished within two minutes");
    let elapsed = started.elapsed();
    let logins = h.mock.stats().login_attempts.load(Relaxed);
    let budget = pool_max as f64 + f64::from(LOGINS_PER_MINUTE) * elapsed.as_secs_f64() / 60.0;

    // Faults off: the pool must come back to its configured size by itself.
    h.mock.set_chaos(None);
    let pool = &h.proxy.pools()[0];
    tokio::time::timeout(
        Duration::from_secs(60),
        pool.wait_for(|s| s.live >= pool_min && s.connecting == 0),
    )
    .await
    .expect("pool recovered to pool_min");
    let stats = pool.stats();

    // The registry's ledger: how often each create ran.
    let mut executed: HashMap<String, usize> = HashMap::new();
    for e in h.mock.ledger().iter().filter(|e| e.verb == "create") {
        for n in &e.names {
            *executed.entry(n.clone()).or_default() += 1;
        }
    }
    let duplicates = executed.values().filter(|&&n| n > 1).count();
    let total = |f: fn(&ClientLog) -> usize| logs.iter().map(f).sum::<usize>();
    let misrouted = total(|l| l.misrouted);
    let unclean = total(|l| l.unclean);
    let mut problems: Vec<String> = logs.iter().flat_map(|l| l.unexpected.clone()).collect();
    for l in &logs {
        for name in &l.created {
            if executed.get(name) != Some(&1) {
                problems.push(format!(
                    "{name}: answered 1000 but ran {:?} times",
                    executed.get(name)
                ));
            }
        }
        for name in &l.not_executed {
            if executed.contains_key(name) {
                problems.push(format!("{name}: answered 2400/2500 but ran"));
            }
        }
    }
    let unknown_ran = logs
        .iter()
        .flat_map(|l| &l.unknown)
        .filter(|n| executed.contains_key(*n))
        .count();
    // A create reported lost must be one whose outcome eppmux could not know: its last attempt
    // must not have been answered "not executed" (2002 not logged in, 2001) in a frame eppmux
    // could read. An attempt the registry received but never answered (it stopped reading, or
    // dropped the connection) is unknown, and so is one that reached it only after that (the
    // mock's unprocessed frames: eppmux wrote it before it could see the registry had stopped,
    // and the registry's host took it); frames after a broken or stray one on the same
    // connection are not readable in order: once a session is out of step, nothing on it can be
    // attributed any more.
    let unknown: HashSet<&String> = logs.iter().flat_map(|l| &l.unknown).collect();
    let name_in = |frame: &[u8]| -> Option<String> {
        let text = String::from_utf8_lossy(frame);
        unknown
            .iter()
            .find(|n| text.contains(&format!(">{n}<")))
            .map(|n| (*n).clone())
    };
    // Attempts that reached the registry, once each: a frame queued when it stopped is in both
    // lists (and a command is never sent twice on one connection).
    let attempts: HashSet<(u64, String)> = h
        .mock
        .received()
        .into_iter()
        .chain(h.mock.unprocessed())
        .filter_map(|(conn, frame)| Some((conn, name_in(&frame)?)))
        .collect();
    let mut received: HashMap<String, usize> = HashMap::new();
    for (_, name) in attempts {
        *received.entry(name).or_default() += 1;
    }
    let mut answered: HashMap<String, (usize, bool)> = HashMap::new();
    let mut broken_connections = HashSet::new();
    for x in h.mock.transcript() {
        let readable = !broken_connections.contains(&x.connection);
        if matches!(
            x.fault,
            Some(
                "malformed-response"
                    | "unsolicited-response"
                    | "oversize-response"
                    | "stall-mid-frame"
            )
        ) {
            broken_connections.insert(x.connection);
        }
        let Some(name) = name_in(&x.command) else {
            continue;
        };
        let not_executed = matches!(epp::sniff(&x.response), Ok(Message::Response(r)) if r.code == 2002 || r.code == 2001);
        let entry = answered.entry(name).or_default();
        *entry = (entry.0 + 1, readable && not_executed);
    }
    for (name, (count, readable_not_executed)) in &answered {
        let last_attempt_answered = received.get(name) == Some(count);
        if last_attempt_answered && *readable_not_executed {
            problems.push(format!(
                "{name}: reported lost, but the registry answered it as not executed"
            ));
        }
    }
    let counters = pool.counters();
    let faults = h.mock.faults_injected();
    let mut fault_list: Vec<_> = faults.iter().collect();
    fault_list.sort();
    println!(
        "\n== chaos soak (seed {seed}, pipeline depth {depth}, {clients} clients x {commands} commands, {:.1} s) ==",
        elapsed.as_secs_f64()
    );
    println!("commands sent            {}", total(|l| l.sent));
    println!("answered                 {}", total(|l| l.answered));
    println!("  of which 2400          {}", total(|l| l.exhausted_2400));
    println!("  of which 2500 relayed  {}", total(|l| l.relayed_2500));
    println!(
        "clean closes             {} (creates among them that ran: {unknown_ran})",
        total(|l| l.clean_closes)
    );
    println!(
        "faults injected          {} {:?}",
        faults.values().sum::<usize>(),
        fault_list
    );
    println!(
        "replays done             {} (not-logged-in re-sends {}, lost-query re-sends {}, hand-offs of unsent commands {})",
        counters.resent_not_executed + counters.resent_queries + counters.handoffs,
        counters.resent_not_executed,
        counters.resent_queries,
        counters.handoffs
    );
    println!("replays refused          {}", counters.refused_replays);
    println!("relayed 2001 (no clTRID)  {}", total(|l| l.unreadable_2001));
    println!("duplicate answers dropped {}", counters.duplicate_answers);
    println!("duplicates               {duplicates}");
    println!("misrouted                {misrouted}");
    println!("unclean closes           {unclean}");
    println!(
        "sessions opened / lost   {} / {}",
        counters.sessions_opened, counters.sessions_lost
    );
    println!(
        "pool after recovery      live {} (pool_min {pool_min}, pool_max {pool_max}); peak live+opening {}",
        stats.live,
        peak.load(Relaxed)
    );
    println!(
        "registry logins          {logins} (budget {budget:.0}; budget waits {})",
        counters.login_budget_waits
    );

    assert_eq!(duplicates, 0, "a transform ran twice");
    assert_eq!(misrouted, 0, "a client got another client's answer");
    assert_eq!(unclean, 0, "a connection broke mid-frame");
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        faults.values().sum::<usize>() > 0,
        "the soak injected no fault"
    );
    assert!(stats.live >= pool_min && stats.live <= pool_max);
    assert!(
        peak.load(Relaxed) <= pool_max,
        "eppmux held more than pool_max sessions"
    );
    assert!(
        logins as f64 <= budget.floor() + 1.0,
        "logins above the budget"
    );
    watcher.abort();
    h.stop().await;
}
