//! A small EPP registry for the demo, the tests, the benchmarks and docker-compose. It speaks real
//! TLS and requires a client certificate, like a real registry, and keeps domains in memory.
//!
//! It implements: greeting, hello, login (per-clID session cap: 2502 and close), logout,
//! domain check/info/create/delete, poll (always empty), a per-command processing time and an
//! idle timeout. For tests it records every exchange, can hold commands on domains named
//! `hold-*` until the test releases them (which makes "a session is busy" deterministic), and
//! answers commands on domains named `mismatch-*` with a wrong clTRID (a registry out of step).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quick_xml::events::Event;
use quick_xml::NsReader;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::epp::{self, Message, EPP_NS};
use crate::frame::EppCodec;

const DOMAIN_NS: &str = "urn:ietf:params:xml:ns:domain-1.0";

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// clID → password.
    pub accounts: HashMap<String, String>,
    /// Processing time of each command, serial per session.
    pub latency: Duration,
    /// Logged-in sessions allowed per clID.
    pub session_cap: usize,
    /// A session idle this long is closed by the registry.
    pub idle_timeout: Duration,
    pub max_frame: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            accounts: HashMap::from([("registrar1".to_string(), "s3cret-Pw".to_string())]),
            latency: Duration::ZERO,
            session_cap: 100,
            idle_timeout: Duration::from_secs(3600),
            max_frame: crate::frame::DEFAULT_MAX_FRAME,
        }
    }
}

/// One command as the registry received it and the response it sent.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub connection: u64,
    pub command: Bytes,
    pub response: Bytes,
}

#[derive(Debug, Clone)]
struct DomainRecord {
    owner: String,
    roid: String,
}

#[derive(Default)]
struct State {
    domains: HashMap<String, DomainRecord>,
    sessions: HashMap<String, usize>,
    transcript: Vec<Exchange>,
}

/// Counters a test or benchmark can read.
#[derive(Debug, Default)]
pub struct MockStats {
    pub connections: AtomicUsize,
    pub logins: AtomicUsize,
    pub active_sessions: AtomicUsize,
    pub peak_sessions: AtomicUsize,
    pub commands: AtomicUsize,
}

struct Shared {
    cfg: MockConfig,
    state: Mutex<State>,
    stats: MockStats,
    held: watch::Sender<usize>,
    release: Semaphore,
    svtrid: AtomicU64,
    roid: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn svtrid(&self) -> String {
        format!("mock-{}", self.svtrid.fetch_add(1, Ordering::Relaxed))
    }
}

/// A running mock registry.
pub struct MockRegistry {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl MockRegistry {
    /// Listens on `addr` (port 0 for an ephemeral port) with the given TLS server config (which
    /// should require client certificates, as `tls::server_config` does with a client CA).
    pub async fn start(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        cfg: MockConfig,
    ) -> std::io::Result<MockRegistry> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State::default()),
            stats: MockStats::default(),
            held: watch::Sender::new(0),
            release: Semaphore::new(0),
            svtrid: AtomicU64::new(1),
            roid: AtomicU64::new(1),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            shared.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        info!(%addr, "mock registry listening");
        Ok(MockRegistry {
            addr,
            shared,
            shutdown,
            tasks,
        })
    }

    pub fn stats(&self) -> &MockStats {
        &self.shared.stats
    }

    /// Every command received so far, with the response sent, in order.
    pub fn transcript(&self) -> Vec<Exchange> {
        self.shared.state().transcript.clone()
    }

    /// Waits until at least `n` commands are being held (see the module docs).
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.shared.held.subscribe();
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// Lets `n` held commands complete.
    pub fn release_held(&self, n: usize) {
        self.shared.release.add_permits(n);
    }

    pub fn domain_exists(&self, name: &str) -> bool {
        self.shared
            .state()
            .domains
            .contains_key(&name.to_ascii_lowercase())
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.shared.release.close();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut next = 1u64;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "mock registry accept failed");
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let id = next;
        next += 1;
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let span = info_span!("mock", conn = id, %peer);
        tasks.spawn(
            async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => serve_session(tls, id, shared, shutdown).await,
                    Err(e) => info!(error = %e, "mock registry: TLS handshake refused"),
                }
            }
            .instrument(span),
        );
    }
}

/// What the session loop should do after answering.
enum After {
    Continue,
    Close,
}

async fn serve_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    id: u64,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut framed = Framed::new(stream, EppCodec::new(shared.cfg.max_frame));
    if framed.send(greeting()).await.is_err() {
        return;
    }
    let mut clid: Option<String> = None;
    loop {
        let next = tokio::select! {
            n = timeout(shared.cfg.idle_timeout, framed.next()) => n,
            _ = shutdown.cancelled() => break,
        };
        let frame = match next {
            Err(_) => {
                info!("mock registry: closing idle session");
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(frame))) => frame,
        };
        if !shared.cfg.latency.is_zero() {
            sleep(shared.cfg.latency).await;
        }
        let (response, after) = answer(&frame, &mut clid, &shared).await;
        shared.stats.commands.fetch_add(1, Ordering::Relaxed);
        shared.state().transcript.push(Exchange {
            connection: id,
            command: frame,
            response: response.clone(),
        });
        if framed.send(response).await.is_err() {
            break;
        }
        if let After::Close = after {
            break;
        }
    }
    let _ = timeout(Duration::from_secs(1), framed.close()).await;
    if let Some(clid) = clid {
        if let Some(n) = shared.state().sessions.get_mut(&clid) {
            *n = n.saturating_sub(1);
        }
        shared.stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
    }
    debug!("mock registry session ended");
}

async fn answer(frame: &[u8], clid: &mut Option<String>, shared: &Shared) -> (Bytes, After) {
    let sv = shared.svtrid();
    let reply = |code: u16, msg: &str, cltrid: Option<&str>| epp::response(code, msg, cltrid, &sv);
    let cmd = match epp::sniff(frame) {
        Ok(Message::Hello) => return (greeting(), After::Continue),
        Ok(Message::Command(c)) => c,
        Ok(_) => return (reply(2001, "Command syntax error", None), After::Continue),
        Err(e) => {
            return (
                reply(2001, &format!("Command syntax error: {e}"), None),
                After::Continue,
            )
        }
    };
    let wrong_cltrid = cmd.cltrid.as_ref().map(|c| format!("not-{c}"));
    let names = if clid.is_some() {
        domain_names(frame)
    } else {
        Vec::new()
    };
    let cltrid = if names.iter().any(|n| n.starts_with("mismatch-")) {
        wrong_cltrid.as_deref()
    } else {
        cmd.cltrid.as_deref()
    };
    let Some(owner) = clid.clone() else {
        if cmd.verb != "login" {
            return (reply(2002, "Command use error", cltrid), After::Continue);
        }
        let login = cmd.login.clone().unwrap_or_default();
        let ok = shared
            .cfg
            .accounts
            .get(&login.clid)
            .is_some_and(|pw| login.pw.ct_eq(pw));
        if !ok {
            return (reply(2200, "Authentication error", cltrid), After::Continue);
        }
        {
            let mut st = shared.state();
            let n = st.sessions.entry(login.clid.clone()).or_default();
            if *n >= shared.cfg.session_cap {
                warn!(clid = %login.clid, cap = shared.cfg.session_cap, "mock registry: session limit reached");
                return (
                    reply(
                        2502,
                        "Session limit exceeded; server closing connection",
                        cltrid,
                    ),
                    After::Close,
                );
            }
            *n += 1;
        }
        shared.stats.logins.fetch_add(1, Ordering::Relaxed);
        let active = shared.stats.active_sessions.fetch_add(1, Ordering::Relaxed) + 1;
        shared
            .stats
            .peak_sessions
            .fetch_max(active, Ordering::Relaxed);
        *clid = Some(login.clid);
        return (
            reply(1000, "Command completed successfully", cltrid),
            After::Continue,
        );
    };
    if names.iter().any(|n| n.starts_with("hold-")) {
        shared.held.send_modify(|n| *n += 1);
        if let Ok(permit) = shared.release.acquire().await {
            permit.forget();
        }
        shared.held.send_modify(|n| *n -= 1);
    }
    match (cmd.verb.as_str(), cmd.object.as_deref()) {
        ("login", _) => (reply(2002, "Command use error", cltrid), After::Continue),
        ("logout", _) => (
            reply(
                1500,
                "Command completed successfully; ending session",
                cltrid,
            ),
            After::Close,
        ),
        ("poll", _) => (
            reply(1300, "Command completed successfully; no messages", cltrid),
            After::Continue,
        ),
        ("check", Some("domain")) => {
            let st = shared.state();
            let mut cds = String::new();
            for name in &names {
                let avail = !st.domains.contains_key(name);
                cds.push_str(&format!(
                    "<domain:cd><domain:name avail=\"{}\">{}</domain:name></domain:cd>",
                    u8::from(avail),
                    esc(name)
                ));
            }
            let res = format!("<resData><domain:chkData xmlns:domain=\"{DOMAIN_NS}\">{cds}</domain:chkData></resData>");
            (
                epp::response_with_data(1000, "Command completed successfully", &res, cltrid, &sv),
                After::Continue,
            )
        }
        ("info", Some("domain")) => {
            let Some(name) = names.first() else {
                return (
                    reply(2003, "Required parameter missing", cltrid),
                    After::Continue,
                );
            };
            let st = shared.state();
            match st.domains.get(name) {
                None => (
                    reply(2303, "Object does not exist", cltrid),
                    After::Continue,
                ),
                Some(rec) => {
                    let res = format!(
                        "<resData><domain:infData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>{}</domain:name>\
                         <domain:roid>{}</domain:roid><domain:status s=\"ok\"/><domain:clID>{}</domain:clID>\
                         </domain:infData></resData>",
                        esc(name),
                        esc(&rec.roid),
                        esc(&rec.owner)
                    );
                    (
                        epp::response_with_data(
                            1000,
                            "Command completed successfully",
                            &res,
                            cltrid,
                            &sv,
                        ),
                        After::Continue,
                    )
                }
            }
        }
        ("create", Some("domain")) => {
            let Some(name) = names.first() else {
                return (
                    reply(2003, "Required parameter missing", cltrid),
                    After::Continue,
                );
            };
            let mut st = shared.state();
            if st.domains.contains_key(name) {
                return (reply(2302, "Object exists", cltrid), After::Continue);
            }
            let roid = format!("D{}-MOCK", shared.roid.fetch_add(1, Ordering::Relaxed));
            st.domains.insert(
                name.clone(),
                DomainRecord {
                    owner: owner.clone(),
                    roid,
                },
            );
            let res = format!(
                "<resData><domain:creData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>{}</domain:name>\
                 <domain:crDate>{}</domain:crDate></domain:creData></resData>",
                esc(name),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            (
                epp::response_with_data(1000, "Command completed successfully", &res, cltrid, &sv),
                After::Continue,
            )
        }
        ("delete", Some("domain")) => {
            let Some(name) = names.first() else {
                return (
                    reply(2003, "Required parameter missing", cltrid),
                    After::Continue,
                );
            };
            let mut st = shared.state();
            match st.domains.get(name) {
                None => (
                    reply(2303, "Object does not exist", cltrid),
                    After::Continue,
                ),
                Some(rec) if rec.owner != owner => {
                    (reply(2201, "Authorization error", cltrid), After::Continue)
                }
                Some(_) => {
                    st.domains.remove(name);
                    (
                        reply(1000, "Command completed successfully", cltrid),
                        After::Continue,
                    )
                }
            }
        }
        _ => (
            reply(2101, "Unimplemented command", cltrid),
            After::Continue,
        ),
    }
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

pub fn greeting() -> Bytes {
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?><epp xmlns=\"{EPP_NS}\"><greeting>\
         <svID>eppmux mock registry</svID><svDate>{}</svDate><svcMenu><version>1.0</version><lang>en</lang>\
         <objURI>{DOMAIN_NS}</objURI><objURI>urn:ietf:params:xml:ns:contact-1.0</objURI>\
         <objURI>urn:ietf:params:xml:ns:host-1.0</objURI><svcExtension>\
         <extURI>urn:ietf:params:xml:ns:secDNS-1.1</extURI></svcExtension></svcMenu>\
         <dcp><access><all/></access><statement><purpose><admin/><prov/></purpose>\
         <recipient><ours/><public/></recipient><retention><stated/></retention></statement></dcp>\
         </greeting></epp>",
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
    ))
}

/// The `<domain:name>` values of a command, lower-cased (domain names are case-insensitive).
fn domain_names(frame: &[u8]) -> Vec<String> {
    let mut reader = NsReader::from_reader(frame);
    let mut names = Vec::new();
    let mut in_name = false;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, Event::Start(e))) => {
                in_name = e.local_name().as_ref() == b"name"
                    && matches!(ns, quick_xml::name::ResolveResult::Bound(quick_xml::name::Namespace(n)) if n == DOMAIN_NS.as_bytes());
                if in_name {
                    names.push(String::new());
                }
            }
            Ok((_, Event::Text(t))) if in_name => {
                if let (Some(last), Ok(text)) = (names.last_mut(), t.decode()) {
                    last.push_str(text.trim());
                }
            }
            Ok((_, Event::End(_))) => in_name = false,
            Ok((_, Event::Eof)) | Err(_) => break,
            _ => {}
        }
    }
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}
