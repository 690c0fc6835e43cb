//! Live operations through the real binary: SIGHUP rotating the upstream client certificate and
//! the listener certificate under load, a new password the registry refuses, a corrected one, and
//! the audit file logrotate moves away.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use eppmux_mock::{MockConfig, MockRegistry};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// When a certificate expires (seconds since the epoch), read by OpenSSL, not by eppmux.
fn not_after(pem: &Path) -> i64 {
    let script = format!(
        "date -d \"$(openssl x509 -noout -enddate -in '{}' | cut -d= -f2)\" +%s",
        pem.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The listener certificate's expiry gauge is the seconds left until `pem` expires.
fn assert_listener_expiry(metrics: &str, pem: &Path) {
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("eppmux_certificate_expiry_seconds{")
                && l.contains(r#"certificate="listener""#)
        })
        .unwrap_or_else(|| panic!("no listener expiry gauge:\n{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let want = (not_after(pem) - now) as f64;
    assert!((value - want).abs() < 120.0, "{line}: want about {want}");
}

fn cert_fingerprint(pem: &Path) -> String {
    let certs = eppmux::tls::load_certs(pem).unwrap();
    eppmux::fingerprint(&certs[0])
}

/// A mock registry that trusts client certificates of both the example CA and the second CA, as
/// a registry does while its registrars move from one to the other.
async fn mock_trusting_both_cas(cfg: MockConfig) -> MockRegistry {
    let tls = eppmux::tls::server_config(
        &cert("server.pem"),
        &cert("server-key.pem"),
        Some(&fixture("rotation/both-cas.pem")),
    )
    .unwrap();
    MockRegistry::start(loopback(), tls, cfg).await.unwrap()
}

/// What changes between the configuration files of one test.
#[derive(Clone)]
struct Files {
    upstream_cert: PathBuf,
    upstream_key: PathBuf,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    password: String,
    pool_min: usize,
    pool_max: usize,
    extra: String,
}

impl Default for Files {
    fn default() -> Self {
        Files {
            upstream_cert: cert("client.pem"),
            upstream_key: cert("client-key.pem"),
            tls_cert: cert("server.pem"),
            tls_key: cert("server-key.pem"),
            password: PASSWORD.to_string(),
            pool_min: 2,
            pool_max: 3,
            extra: String::new(),
        }
    }
}

/// The real binary, run from a TOML file that the test rewrites before each SIGHUP.
struct Eppmux {
    child: tokio::process::Child,
    log: LogLines,
    file: PathBuf,
    _dir: tempfile::TempDir,
    plain: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    registry: SocketAddr,
}

impl Eppmux {
    /// Starts it and waits until its log says `ready` (e.g. "account ready").
    async fn start(registry: SocketAddr, files: &Files, args: &[&str], ready: &str) -> Eppmux {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eppmux.toml");
        let (plain, tls, admin) = (free_addr(), free_addr(), free_addr());
        write_config(&file, registry, (plain, tls, admin), files);
        let mut child = tokio::process::Command::from(eppmux_command())
            .arg("--config")
            .arg(&file)
            .args(args)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
        read_log_until(&mut log, ready).await;
        Eppmux {
            child,
            log,
            file,
            _dir: dir,
            plain,
            tls,
            admin,
            registry,
        }
    }

    /// Rewrites the configuration file and sends SIGHUP; returns the log up to the reload's
    /// outcome (`configuration reloaded`, or `reload failed`/`configuration refused`).
    async fn reload(&mut self, files: &Files) -> String {
        let addrs = (self.plain, self.tls, self.admin);
        write_config(&self.file, self.registry, addrs, files);
        self.signal("-HUP");
        let mut seen = String::new();
        loop {
            let line = read_log_until(&mut self.log, "SIGHUP").await;
            seen.push_str(&line);
            if line.contains("reloaded") || line.contains("failed") || line.contains("refused") {
                return seen;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn get(&self, path: &str) -> String {
        let wait = Duration::from_secs(5);
        let (code, body) = eppmux::admin::get(self.admin, path, wait).await.unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        body
    }

    async fn stop(mut self) -> String {
        self.signal("-TERM");
        let mut rest = String::new();
        while let Some(line) = self.log.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        assert!(self.child.wait().await.unwrap().success(), "{rest}");
        rest
    }
}

fn write_config(
    file: &Path,
    registry: SocketAddr,
    addrs: (SocketAddr, SocketAddr, SocketAddr),
    f: &Files,
) {
    let (plain, tls, admin) = addrs;
    let text = format!(
        r#"listen = "{plain}"
listen_tls = "{tls}"
admin = "{admin}"
tls_cert = "{tls_cert}"
tls_key = "{tls_key}"
upstream = "{registry}"
upstream_server_name = "localhost"
upstream_ca = "{ca}"
upstream_cert = "{upstream_cert}"
upstream_key = "{upstream_key}"
rotation_interval = "20ms"
max_logins_per_minute = 6000
{extra}
[[account]]
clid = "{CLID}"
password = "{password}"
pool_min = {pool_min}
pool_max = {pool_max}
"#,
        tls_cert = f.tls_cert.display(),
        tls_key = f.tls_key.display(),
        ca = cert("ca.pem").display(),
        upstream_cert = f.upstream_cert.display(),
        upstream_key = f.upstream_key.display(),
        extra = f.extra,
        password = f.password,
        pool_min = f.pool_min,
        pool_max = f.pool_max,
    );
    let mut out = std::fs::File::create(file).unwrap();
    out.write_all(text.as_bytes()).unwrap();
}

/// Clients that each send `<check>` after `<check>` until told to stop, counting the answers by
/// result code. A closed connection panics the client's task, which fails the test at `finish`.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    /// Commands answered so far, by every client.
    answered: Arc<watch::Sender<usize>>,
    tasks: Vec<tokio::task::JoinHandle<HashMap<u16, usize>>>,
}

impl SteadyLoad {
    async fn start(addr: SocketAddr, clients: usize) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(watch::Sender::new(0));
        let mut tasks = Vec::new();
        for n in 0..clients {
            let mut c = Client::plain(addr).await;
            c.greeting().await;
            assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
            let (stop, answered) = (stop.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let mut codes = HashMap::new();
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    i += 1;
                    let name = format!("load-{n}-{i}.gov");
                    let r = c
                        .command(&domain_cmd("check", &name, &format!("C{n}-{i}")))
                        .await;
                    *codes.entry(r.code).or_default() += 1;
                    answered.send_modify(|n| *n += 1);
                }
                assert_eq!(c.command(&logout_xml("BYE")).await.code, 1500);
                codes
            }));
        }
        SteadyLoad {
            stop,
            answered,
            tasks,
        }
    }

    /// Waits until `n` more commands were answered than now (the load is flowing).
    async fn wait_answers(&self, n: usize) {
        let target = *self.answered.borrow() + n;
        let mut rx = self.answered.subscribe();
        rx.wait_for(|done| *done >= target).await.unwrap();
    }

    /// Stops the clients and returns every answer's code with its count.
    async fn finish(self) -> HashMap<u16, usize> {
        self.stop.store(true, Relaxed);
        let mut all = HashMap::new();
        for t in self.tasks {
            for (code, n) in t.await.expect("a client kept its connection") {
                *all.entry(code).or_default() += n;
            }
        }
        all
    }
}

/// The fewest sessions the registry had logged in at once while `until` was pending, sampled at
/// every change the mock registry reports.
async fn fewest_sessions_during<F: std::future::Future>(
    mock: &MockRegistry,
    until: F,
) -> (usize, F::Output) {
    let mut fewest = usize::MAX;
    let mut changed = mock.changes();
    tokio::pin!(until);
    loop {
        fewest = fewest.min(mock.stats().active_sessions.load(Relaxed));
        tokio::select! {
            out = &mut until => return (fewest, out),
            _ = changed.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_upstream_certificate_under_load_replaces_every_session_and_no_client_notices()
{
    init_tracing();
    let mock = mock_trusting_both_cas(MockConfig::default()).await;
    let old = cert_fingerprint(&cert("client.pem"));
    let new = cert_fingerprint(&fixture("rotation/client2.pem"));
    let mut files = Files {
        pool_min: 3,
        pool_max: 4,
        ..Files::default()
    };
    let mut e = Eppmux::start(mock.addr, &files, &[], "account ready").await;
    mock.wait_until(|m| m.stats().active_sessions.load(Relaxed) >= 3)
        .await;
    let load = SteadyLoad::start(e.plain, 6).await;
    load.wait_answers(100).await;
    let old_logins = mock.logins_by_certificate()[&old];

    files.upstream_cert = fixture("rotation/client2.pem");
    files.upstream_key = fixture("rotation/client2-key.pem");
    let (fewest, log) = fewest_sessions_during(&mock, async {
        let log = e.reload(&files).await;
        mock.wait_until(|m| !m.sessions_by_certificate().contains_key(&old))
            .await;
        log
    })
    .await;
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("new credentials"), "{log}");
    load.wait_answers(100).await;
    let codes = load.finish().await;

    assert_eq!(
        codes.keys().copied().collect::<Vec<_>>(),
        vec![1000],
        "every command answered 1000: {codes:?}"
    );
    let by_cert = mock.sessions_by_certificate();
    assert!(
        by_cert[&new] >= 3,
        "the sessions now use the new certificate: {by_cert:?}"
    );
    assert_eq!(
        mock.logins_by_certificate()[&old],
        old_logins,
        "no login with the old certificate after the reload"
    );
    let status: serde_json::Value = serde_json::from_str(&e.get("/status").await).unwrap();
    assert_eq!(
        status["accounts"][0]["old_credential_sessions"], 0,
        "{status}"
    );
    let rest = e.stop().await;
    let sessions: Vec<&str> = [log.as_str(), rest.as_str()]
        .into_iter()
        .flat_map(str::lines)
        .filter(|l| l.contains("upstream") && !l.contains("eppmux::audit"))
        .collect();
    assert!(
        fewest >= 3,
        "the account kept pool_min live sessions throughout: fewest {fewest}\n{}",
        sessions.join("\n")
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_listener_certificate_and_address_keeps_connected_clients_and_new_ones_see_the_new_ones(
) {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let mut files = Files::default();
    let mut e = Eppmux::start(mock.addr, &files, &[], "account ready").await;
    let mut tls_before = Client::tls(e.tls, None).await;
    assert_eq!(
        tls_before.server_cert,
        Some(cert_fingerprint(&cert("server.pem")))
    );
    tls_before.greeting().await;
    assert_eq!(
        tls_before
            .command(&login_xml(CLID, PASSWORD, "L1"))
            .await
            .code,
        1000
    );
    assert_listener_expiry(&e.get("/metrics").await, &cert("server.pem"));
    let old_plain = e.plain;
    let mut plain_before = Client::plain(old_plain).await;
    plain_before.greeting().await;
    assert_eq!(
        plain_before
            .command(&login_xml(CLID, PASSWORD, "L2"))
            .await
            .code,
        1000
    );

    files.tls_cert = fixture("keys/ec.pem");
    files.tls_key = fixture("keys/ec-key.pem");
    e.plain = free_addr();
    let log = e.reload(&files).await;
    assert!(log.contains("configuration reloaded"), "{log}");

    for (c, id) in [(&mut tls_before, "T"), (&mut plain_before, "P")] {
        let r = c
            .command(&domain_cmd("check", "after-rotation.gov", id))
            .await;
        assert_eq!(
            r.code, 1000,
            "a client connected before the reload is still served"
        );
    }
    assert_listener_expiry(&e.get("/metrics").await, &fixture("keys/ec.pem"));
    let mut tls_after = Client::tls(e.tls, None).await;
    assert_eq!(
        tls_after.server_cert,
        Some(cert_fingerprint(&fixture("keys/ec.pem")))
    );
    tls_after.greeting().await;
    assert_eq!(
        tls_after
            .command(&login_xml(CLID, PASSWORD, "L3"))
            .await
            .code,
        1000
    );
    let mut plain_after = Client::plain(e.plain).await;
    plain_after.greeting().await;
    assert!(
        tokio::net::TcpStream::connect(old_plain).await.is_err(),
        "the old address no longer accepts"
    );
    for c in [&mut tls_before, &mut plain_before, &mut tls_after] {
        assert_eq!(c.command(&logout_xml("BYE")).await.code, 1500);
    }
    e.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_the_registry_refuses_keeps_the_old_sessions_and_reports_the_reload_failed()
{
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let mut files = Files::default();
    let mut e = Eppmux::start(mock.addr, &files, &[], "account ready").await;
    mock.wait_until(|m| m.stats().active_sessions.load(Relaxed) == 2)
        .await;
    let logins = mock.stats().logins.load(Relaxed);
    let mut c = Client::plain(e.plain).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);

    files.password = "Wrong-Pw-77".into();
    let log = e.reload(&files).await;
    assert!(log.contains("reload failed"), "{log}");
    assert!(log.contains("2200"), "the log says why: {log}");

    assert_eq!(
        mock.stats().logins.load(Relaxed),
        logins,
        "no session replaced"
    );
    assert_eq!(
        mock.stats().active_sessions.load(Relaxed),
        2,
        "the old sessions kept"
    );
    assert_eq!(
        c.command(&domain_cmd("check", "kept.gov", "K")).await.code,
        1000
    );
    let mut fresh = Client::plain(e.plain).await;
    fresh.greeting().await;
    let r = fresh.command(&login_xml(CLID, PASSWORD, "L2")).await;
    assert_eq!(
        r.code, 1000,
        "the old password still logs in: nothing changed"
    );
    let status: serde_json::Value = serde_json::from_str(&e.get("/status").await).unwrap();
    assert_eq!(status["last_reload"]["result"], "failed", "{status}");
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("2200"), "{error}");
    assert!(!error.contains("Wrong-Pw-77"), "{error}");
    let metrics = e.get("/metrics").await;
    assert!(
        metrics.contains(r#"eppmux_config_reloads_total{result="failed"} 1"#),
        "{metrics}"
    );
    let rest = e.stop().await;
    assert!(!rest.contains("Wrong-Pw-77") && !log.contains("Wrong-Pw-77"));
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_corrected_password_clears_the_stop_after_repeated_2200s() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let mut files = Files {
        password: "Wrong-Pw-77".into(),
        pool_min: 1,
        ..Files::default()
    };
    let mut e = Eppmux::start(
        mock.addr,
        &files,
        &[],
        "not retrying until the password changes",
    )
    .await;
    let (code, _) = eppmux::admin::get(e.admin, "/readyz", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, 503, "stopped: not ready");

    files.password = PASSWORD.into();
    let log = e.reload(&files).await;
    assert!(log.contains("configuration reloaded"), "{log}");
    let logged_in = mock.wait_until(|m| m.stats().active_sessions.load(Relaxed) >= 1);
    tokio::time::timeout(Duration::from_secs(30), logged_in)
        .await
        .expect("the account logs in again after the reload");
    let mut c = Client::plain(e.plain).await;
    c.greeting().await;
    assert_eq!(c.command(&login_xml(CLID, PASSWORD, "L")).await.code, 1000);
    assert_eq!(
        c.command(&domain_cmd("check", "fixed.gov", "F")).await.code,
        1000
    );
    let (code, body) = eppmux::admin::get(e.admin, "/readyz", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    e.stop().await;
    mock.shutdown().await;
}

/// The audit events of a JSON-lines file.
fn audit_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_and_login_leaves_one_audit_event_with_its_fields_and_never_a_secret() {
    init_tracing();
    let mock = start_mock(MockConfig::default()).await;
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let args = [
        "--log-format",
        "json",
        "--log-level",
        "trace",
        "--audit-log",
    ];
    let mut args: Vec<&str> = args.to_vec();
    args.push(audit.to_str().unwrap());
    let files = Files::default();
    let mut e = Eppmux::start(mock.addr, &files, &args, "account ready").await;

    let mut c = Client::plain(e.plain).await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml(CLID, "Wrong-Pw-77", "BAD")).await.code,
        2200
    );
    assert_eq!(
        c.command(&login_xml(CLID, PASSWORD, "GOOD")).await.code,
        1000
    );
    let check = r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><check><domain:check xmlns:domain="urn:ietf:params:xml:ns:domain-1.0"><domain:name>a.gov</domain:name><domain:name>b.gov</domain:name><domain:name>c.gov</domain:name></domain:check></check><clTRID>CHECK-3</clTRID></command></epp>"#;
    let checked = c.command(check).await;
    assert_eq!(checked.code, 1000);
    let create = r#"<epp xmlns="urn:ietf:params:xml:ns:epp-1.0"><command><create><domain:create xmlns:domain="urn:ietf:params:xml:ns:domain-1.0"><domain:name>audited.gov</domain:name><domain:authInfo><domain:pw>Auth-Secret-42</domain:pw></domain:authInfo></domain:create></create><clTRID>CREATE-1</clTRID></command></epp>"#;
    let created = c.command(create).await;
    assert_eq!(created.code, 1000);
    assert_eq!(c.command(&logout_xml("OUT")).await.code, 1500);

    // logrotate moves the file away; SIGHUP opens it again at its path.
    let rotated = audit_dir.path().join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    let mut log = e.reload(&files).await;
    let mut c = Client::plain(e.plain).await;
    c.greeting().await;
    assert_eq!(
        c.command(&login_xml(CLID, PASSWORD, "AGAIN")).await.code,
        1000
    );
    let after = c
        .command(&domain_cmd("check", "after-rotate.gov", "AFTER"))
        .await;
    assert_eq!(after.code, 1000);
    log.push_str(&e.stop().await);

    let before = audit_events(&rotated);
    let events: Vec<&str> = before
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["login_refused", "login", "command", "command", "logout"],
        "{before:#?}"
    );
    for ev in &before {
        assert_eq!(ev["target"], "eppmux::audit");
        assert_eq!(ev["peer"], "127.0.0.1");
        assert!(ev["conn"].as_u64().is_some(), "{ev}");
    }
    assert_eq!(before[0]["clid"], CLID);
    assert_eq!(before[1]["account"], CLID);
    let check_ev = &before[2];
    assert_eq!(check_ev["command"], "domain:check");
    assert_eq!(check_ev["account"], CLID);
    let objects: Vec<String> = serde_json::from_str(check_ev["objects"].as_str().unwrap()).unwrap();
    assert_eq!(objects, ["a.gov", "b.gov", "c.gov"]);
    assert_eq!(check_ev["object_count"], 3);
    assert_eq!(check_ev["cltrid"], "CHECK-3");
    assert_eq!(check_ev["svtrid"].as_str(), checked.svtrid.as_deref());
    assert_eq!(check_ev["outcome"], "answered");
    assert_eq!(check_ev["code"], 1000);
    assert!(check_ev["session"].as_u64().is_some(), "{check_ev}");
    assert!(check_ev["latency_us"].as_u64().is_some(), "{check_ev}");
    let create_ev = &before[3];
    assert_eq!(create_ev["command"], "domain:create");
    assert_eq!(create_ev["objects"], r#"["audited.gov"]"#);
    assert_eq!(create_ev["svtrid"].as_str(), created.svtrid.as_deref());

    let after_events = audit_events(&audit);
    let events: Vec<&str> = after_events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["login", "command"], "{after_events:#?}");
    assert_eq!(after_events[1]["objects"], r#"["after-rotate.gov"]"#);
    assert_eq!(after_events[1]["svtrid"].as_str(), after.svtrid.as_deref());

    // At trace level, in the log and in both audit files: no password, no authInfo.
    let everything = [
        log,
        std::fs::read_to_string(&rotated).unwrap(),
        std::fs::read_to_string(&audit).unwrap(),
    ]
    .concat();
    assert!(everything.contains("audited.gov"), "the log was read");
    assert!(
        everything.contains(r#""level":"TRACE""#) || everything.contains(r#""level":"DEBUG""#),
        "the log was at its most verbose"
    );
    for secret in [PASSWORD, "Wrong-Pw-77", "Auth-Secret-42"] {
        assert!(!everything.contains(secret), "{secret} appears");
    }
    mock.shutdown().await;
}
