//! A small EPP registry for the demo, the tests, the benchmarks and docker-compose. It speaks real
//! TLS and requires a client certificate, like a real registry, and keeps domains in memory.
//!
//! It implements greeting, hello, login (with a per-clID session cap answered by 2502 and a
//! close), logout, domain check/info/create/delete, poll (always empty), a per-command processing
//! time and an idle timeout (close, or "forget" the session and answer 2002 "not logged in").
//!
//! For resilience tests it injects faults — queued ones for deterministic tests
//! ([`MockRegistry::push_fault`], [`MockRegistry::push_login_refusal`]) or random ones
//! ([`Chaos`]) — and keeps a ledger of every transform it processed, so a test can prove that
//! nothing ran twice. Commands on domains named `hold-*` wait until the test releases them (a
//! deterministic "busy session"), and commands on `mismatch-*` are answered with a wrong clTRID.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use eppmux_wire::epp::{self, Command, Message, EPP_NS};
use eppmux_wire::frame::{encode_frame, EppCodec};

const DOMAIN_NS: &str = "urn:ietf:params:xml:ns:domain-1.0";
pub const NOT_LOGGED_IN: &str = "Registrar is not logged in.";

#[derive(Debug, Clone)]
pub struct MockConfig {
    /// clID → password.
    pub accounts: HashMap<String, String>,
    /// Processing time of each command, serial per session.
    pub latency: Duration,
    /// Network round trip: every frame takes half of it each way, and opening a connection
    /// (TCP, then TLS) takes two of it before the greeting leaves.
    pub rtt: Duration,
    /// Logged-in sessions allowed per clID.
    pub session_cap: usize,
    /// A session idle this long is closed by the registry (or forgotten, see `idle_forget`).
    pub idle_timeout: Duration,
    /// At the idle timeout, keep the connection but answer every command with 2002
    /// "Registrar is not logged in." (as the .gov registry does) instead of closing.
    pub idle_forget: bool,
    pub chaos: Option<Chaos>,
    pub max_frame: usize,
    /// What a forgotten session answers (with 2002); registries word it differently.
    pub forgotten_message: String,
    /// Answer commands whose clTRID the EPP schema refuses (shorter than 3 or longer than 64
    /// characters) with 2001 and no clTRID, as schema-validating registries do.
    pub strict_cltrid: bool,
    /// Time the registry takes to check a login (passwords, audit rows), before answering it.
    pub login_latency: Duration,
    /// The svID of its greeting (tests tell registries apart by it).
    pub sv_id: String,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            accounts: HashMap::from([("registrar1".to_string(), "s3cret-Pw".to_string())]),
            latency: Duration::ZERO,
            rtt: Duration::ZERO,
            session_cap: 100,
            idle_timeout: Duration::from_secs(3600),
            idle_forget: false,
            chaos: None,
            max_frame: eppmux_wire::frame::DEFAULT_MAX_FRAME,
            forgotten_message: NOT_LOGGED_IN.to_string(),
            strict_cltrid: false,
            login_latency: Duration::ZERO,
            sv_id: "eppmux mock registry".to_string(),
        }
    }
}

/// Something going wrong with one command, after login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without processing the command.
    DropBeforeExecute,
    /// Process the command, then close without answering.
    DropAfterExecute,
    /// Forget the session: this and every later command get 2002 "Registrar is not logged in."
    /// and are not processed.
    NotLoggedIn,
    /// Answer 2500 without processing, then close.
    Close2500,
    /// Answer after an extra delay.
    Delay(Duration),
    /// Process the command, send half of the answer, then go silent.
    StallMidFrame,
    /// Process the command, then answer with a header claiming a 64 MiB frame.
    OversizeResponse,
    /// Process the command, then answer with a frame that is not well-formed XML.
    MalformedResponse,
    /// Answer normally, then send a second response that nothing asked for (no clTRID).
    Unsolicited,
    /// Process the command and answer, then send the very same answer again after this delay
    /// (same clTRID, same svTRID), as a registry that retransmits does.
    AnswerTwice(Duration),
    /// Answer 2001 without clTRID and without processing, as a registry does to a command it
    /// cannot read.
    NoClTrid,
    /// Answer 2002 "Command use error" without processing; the session stays logged in.
    UseError,
    /// Stop reading from the connection and answer nothing more; close after the idle timeout.
    StopReading,
    /// Answer 1500 (session ended) without processing, and forget the session without closing
    /// the connection: a registry that read the command as a `<logout>` (and is slow to close).
    EndSession,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::DropBeforeExecute => "drop-before-execute",
            Fault::DropAfterExecute => "drop-after-execute",
            Fault::NotLoggedIn => "2002-not-logged-in",
            Fault::Close2500 => "2500-close",
            Fault::Delay(_) => "delay",
            Fault::StallMidFrame => "stall-mid-frame",
            Fault::OversizeResponse => "oversize-response",
            Fault::MalformedResponse => "malformed-response",
            Fault::Unsolicited => "unsolicited-response",
            Fault::AnswerTwice(_) => "answer-twice",
            Fault::NoClTrid => "no-cltrid-2001",
            Fault::UseError => "2002-use-error",
            Fault::StopReading => "stop-reading",
            Fault::EndSession => "1500-end-session",
        }
    }
}

/// Random faults: each command (after login) meets a fault with `command_fault_probability`,
/// drawn evenly from every [`Fault`]; each login is refused (2502 or 2501, with a close) with
/// `login_refusal_probability`.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    pub command_fault_probability: f64,
    pub login_refusal_probability: f64,
    pub max_delay: Duration,
    pub seed: u64,
}

/// One transform the registry processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub connection: u64,
    pub verb: String,
    pub names: Vec<String>,
    pub cltrid: Option<String>,
    pub code: u16,
}

/// One command as the registry received it and the response it sent.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub connection: u64,
    pub command: Bytes,
    pub response: Bytes,
    /// The fault this command met, if any (its [`Fault::name`]).
    pub fault: Option<&'static str>,
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
    /// Every frame received, processed or not: (connection, frame).
    received: Vec<(u64, Bytes)>,
    ledger: Vec<LedgerEntry>,
    faults: VecDeque<Fault>,
    login_refusals: VecDeque<u16>,
    faults_injected: HashMap<&'static str, usize>,
    chaos: Option<(Chaos, fastrand::Rng)>,
}

/// Counters a test or benchmark can read.
#[derive(Debug, Default)]
pub struct MockStats {
    pub connections: AtomicUsize,
    pub login_attempts: AtomicUsize,
    pub logins: AtomicUsize,
    pub active_sessions: AtomicUsize,
    pub peak_sessions: AtomicUsize,
    pub commands: AtomicUsize,
    pub hellos: AtomicUsize,
    pub idle_timeouts: AtomicUsize,
    /// Most commands one session had received and not yet answered (pipelining depth seen).
    pub peak_in_flight: AtomicUsize,
    /// Frames received on all connections (counted as they arrive, before processing).
    pub frames_received: AtomicUsize,
}

struct Shared {
    cfg: MockConfig,
    state: Mutex<State>,
    stats: MockStats,
    /// Bumped after every counted event, for [`MockRegistry::wait_until`].
    changed: watch::Sender<()>,
    held: watch::Sender<usize>,
    release: Semaphore,
    /// False: every session stops reading from its connection (see [`MockRegistry::stop_reading`]).
    reading: watch::Sender<bool>,
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

    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    /// The fault for the next command: a queued one first, else a random one in chaos mode.
    fn next_fault(&self) -> Option<Fault> {
        let mut st = self.state();
        let fault = match st.faults.pop_front() {
            Some(f) => Some(f),
            None => match st.chaos.as_mut() {
                Some((chaos, rng)) => {
                    (rng.f64() < chaos.command_fault_probability).then(|| match rng.u8(0..12) {
                        0 => Fault::DropBeforeExecute,
                        1 => Fault::DropAfterExecute,
                        2 => Fault::NotLoggedIn,
                        3 => Fault::Close2500,
                        4 => Fault::Delay(chaos.max_delay.mul_f64(rng.f64())),
                        5 => Fault::StallMidFrame,
                        6 => Fault::OversizeResponse,
                        7 => Fault::MalformedResponse,
                        8 => Fault::Unsolicited,
                        9 => Fault::AnswerTwice(chaos.max_delay.mul_f64(rng.f64())),
                        10 => Fault::NoClTrid,
                        _ => Fault::StopReading,
                    })
                }
                None => None,
            },
        };
        if let Some(f) = fault {
            *st.faults_injected.entry(f.name()).or_default() += 1;
        }
        fault
    }

    fn next_login_refusal(&self) -> Option<u16> {
        let mut st = self.state();
        let code =
            match st.login_refusals.pop_front() {
                Some(code) => Some(code),
                None => match st.chaos.as_mut() {
                    Some((chaos, rng)) => (rng.f64() < chaos.login_refusal_probability)
                        .then(|| if rng.bool() { 2502 } else { 2501 }),
                    None => None,
                },
            };
        if code.is_some() {
            *st.faults_injected.entry("login-refused").or_default() += 1;
        }
        code
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
        let chaos = cfg.chaos.map(|c| (c, fastrand::Rng::with_seed(c.seed)));
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                chaos,
                ..State::default()
            }),
            stats: MockStats::default(),
            changed: watch::Sender::new(()),
            held: watch::Sender::new(0),
            release: Semaphore::new(0),
            reading: watch::Sender::new(true),
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

    /// Every frame received so far, processed or not, as (connection, frame), in order.
    pub fn received(&self) -> Vec<(u64, Bytes)> {
        self.shared.state().received.clone()
    }

    /// Every transform processed so far, in order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.shared.state().ledger.clone()
    }

    /// How many faults of each kind were injected.
    pub fn faults_injected(&self) -> HashMap<&'static str, usize> {
        self.shared.state().faults_injected.clone()
    }

    /// The next command (after login, other than hello/logout) on any session meets `fault`.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.state().faults.push_back(fault);
    }

    /// The next login attempt is answered with `code` (2200, 2501, 2502, …).
    pub fn push_login_refusal(&self, code: u16) {
        self.shared.state().login_refusals.push_back(code);
    }

    pub fn set_chaos(&self, chaos: Option<Chaos>) {
        self.shared.state().chaos = chaos.map(|c| (c, fastrand::Rng::with_seed(c.seed)));
    }

    /// Waits until `pred` holds; re-checked after every counted event.
    pub async fn wait_until(&self, pred: impl Fn(&MockRegistry) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        while !pred(self) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until at least `n` commands are being held (see the module docs).
    pub async fn wait_held(&self, n: usize) {
        let mut rx = self.shared.held.subscribe();
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// From now on no session reads from its connection (a registry that stopped reading:
    /// writes to it stall once the socket buffers are full).
    pub fn stop_reading(&self) {
        self.shared.reading.send_replace(false);
    }

    /// Sessions read from their connections again (new ones, and those not stopped by a fault).
    pub fn resume_reading(&self) {
        self.shared.reading.send_replace(true);
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
        shared.bump(&shared.stats.connections);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let span = info_span!("mock", conn = id, %peer);
        tasks.spawn(
            async move {
                // The TCP handshake's round trip, then the TLS handshake's.
                let rtt = shared.cfg.rtt;
                if !rtt.is_zero() {
                    sleep(rtt).await;
                }
                let accepted = acceptor.accept(tcp).await;
                if !rtt.is_zero() {
                    sleep(rtt).await;
                }
                match accepted {
                    Ok(tls) => serve_session(tls, id, shared, shutdown).await,
                    Err(e) => info!(error = %e, "mock registry: TLS handshake refused"),
                }
            }
            .instrument(span),
        );
    }
}

/// Waits until the reading switch is `want` (forever if the registry is gone).
async fn until(switch: &mut watch::Receiver<bool>, want: bool) {
    while *switch.borrow_and_update() != want {
        if switch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What the session loop does after answering.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Close,
}

/// One registry session's state.
struct Session {
    id: u64,
    clid: Option<String>,
    /// The registry has forgotten the login (idle, or an injected fault).
    forgotten: bool,
}

/// `sleep_until`, except that a moment already past costs nothing: tokio's timer has millisecond
/// ticks, so even a zero sleep would add up to a millisecond per frame with no RTT configured.
async fn delay_until(at: Instant) {
    if at > Instant::now() {
        sleep_until(at).await;
    }
}

/// What the session sends, through the network model.
enum Out {
    Frame(Bytes),
    /// Bytes written as they are (for faults that break framing).
    Raw(Vec<u8>),
}

/// One registry session. Three tasks model the network: a reader stamps each frame with the time
/// it would arrive (now + RTT/2), the session itself processes frames in order (each taking the
/// processing time), and a writer sends each answer RTT/2 after it was made. With an RTT of zero
/// this is a plain read-process-write loop; with one, pipelined commands overlap in flight the
/// way they do on a real network.
async fn serve_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    id: u64,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let half_rtt = shared.cfg.rtt / 2;
    let codec = EppCodec::new(shared.cfg.max_frame);
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FramedRead::new(rd, codec.clone());
    let mut writer = FramedWrite::new(wr, codec);
    let done = CancellationToken::new();
    // Cancelled when this session stops reading (a fault).
    let mute = CancellationToken::new();

    let (in_tx, mut inbox) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    // Received and not yet answered, for the pipelining statistics.
    let unanswered = Arc::new(AtomicUsize::new(0));
    let reading = {
        let done = done.clone();
        let mute = mute.clone();
        let unanswered = unanswered.clone();
        let shared = shared.clone();
        let mut switch = shared.reading.subscribe();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = reader.next() => n,
                    _ = done.cancelled() => break,
                    // Stopped reading, the connection stays open: writes to it stall once the
                    // socket buffers are full, as they do with a registry that stopped reading.
                    _ = mute.cancelled() => {
                        done.cancelled().await;
                        break;
                    }
                    _ = until(&mut switch, false) => {
                        tokio::select! {
                            _ = until(&mut switch, true) => continue,
                            _ = done.cancelled() => break,
                        }
                    }
                };
                match next {
                    Some(Ok(frame)) => {
                        shared.state().received.push((id, frame.clone()));
                        shared.bump(&shared.stats.frames_received);
                        let n = unanswered.fetch_add(1, Ordering::Relaxed) + 1;
                        if shared.stats.peak_in_flight.fetch_max(n, Ordering::Relaxed) < n {
                            shared.changed.send_replace(());
                        }
                        if in_tx.send((Instant::now() + half_rtt, frame)).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        })
    };
    let (out, mut outbox) = mpsc::unbounded_channel::<(Instant, Out)>();
    let writing = tokio::spawn(async move {
        while let Some((at, item)) = outbox.recv().await {
            delay_until(at).await;
            let ok = match item {
                Out::Frame(frame) => writer.send(frame).await.is_ok(),
                Out::Raw(bytes) => {
                    let io = writer.get_mut();
                    io.write_all(&bytes).await.is_ok() && io.flush().await.is_ok()
                }
            };
            if !ok {
                break;
            }
        }
        let _ = timeout(Duration::from_secs(1), writer.close()).await;
    });
    // When the answer being made counts as made: the end of the (virtual) processing of the
    // current frame. Answers leave RTT/2 after it.
    let mut made = Instant::now();
    let send = |made: Instant, item: Out| {
        let _ = out.send((made.max(Instant::now()) + half_rtt, item));
    };

    send(made, Out::Frame(greeting(&shared.cfg.sv_id)));
    let mut session = Session {
        id,
        clid: None,
        forgotten: false,
    };
    loop {
        // A forgotten session has nothing left to time out.
        let idle = if session.forgotten {
            Duration::from_secs(365 * 86_400)
        } else {
            shared.cfg.idle_timeout
        };
        let next = tokio::select! {
            n = timeout(idle, inbox.recv()) => n,
            _ = shutdown.cancelled() => break,
        };
        let frame = match next {
            Err(_) => {
                shared.bump(&shared.stats.idle_timeouts);
                if shared.cfg.idle_forget {
                    info!("mock registry: idle session forgotten");
                    session.forgotten = true;
                    continue;
                }
                info!("mock registry: closing idle session");
                break;
            }
            Ok(None) => break,
            Ok(Some((arrives, frame))) => {
                // Processing is serial: it starts when the frame has arrived and the previous
                // one is done, and takes the processing time. Only a non-zero processing time is
                // waited out here; otherwise the writer's single wait covers the whole round
                // trip (each timer wait costs up to a millisecond tick).
                made = arrives.max(Instant::now()) + shared.cfg.latency;
                if !shared.cfg.latency.is_zero() {
                    delay_until(made).await;
                }
                frame
            }
        };
        let sniffed = epp::sniff(&frame);
        let fault = match &sniffed {
            Ok(Message::Command(c)) if session.clid.is_some() && c.verb != "logout" => {
                shared.next_fault()
            }
            _ => None,
        };
        match fault {
            Some(Fault::DropBeforeExecute) => break,
            Some(Fault::NotLoggedIn) => session.forgotten = true,
            Some(Fault::Delay(d)) => sleep(d).await,
            Some(Fault::StopReading) => {
                mute.cancel();
                tokio::select! {
                    _ = sleep(shared.cfg.idle_timeout) => {}
                    _ = shutdown.cancelled() => {}
                }
                break;
            }
            Some(Fault::NoClTrid) | Some(Fault::UseError) => {
                let (code, msg, cltrid) = if fault == Some(Fault::NoClTrid) {
                    (2001, "Command syntax error", None)
                } else {
                    (2002, "Command use error", command_cltrid(&sniffed))
                };
                let response = epp::response(code, msg, cltrid.as_deref(), &shared.svtrid());
                shared.state().transcript.push(Exchange {
                    connection: id,
                    command: frame,
                    response: response.clone(),
                    fault: fault.map(|f| f.name()),
                });
                shared.bump(&shared.stats.commands);
                send(made, Out::Frame(response));
                unanswered.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            Some(Fault::Close2500) | Some(Fault::EndSession) => {
                let (code, msg) = if fault == Some(Fault::Close2500) {
                    (2500, "Command failed; server closing connection")
                } else {
                    (1500, "Command completed successfully; ending session")
                };
                let cltrid = command_cltrid(&sniffed);
                let answer = epp::response(code, msg, cltrid.as_deref(), &shared.svtrid());
                send(made, Out::Frame(answer));
                if fault == Some(Fault::Close2500) {
                    break;
                }
                session.forgotten = true;
                unanswered.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            _ => {}
        }
        let (response, after) = answer(&frame, sniffed, &mut session, &shared).await;
        shared.state().transcript.push(Exchange {
            connection: id,
            command: frame,
            response: response.clone(),
            fault: fault.map(|f| f.name()),
        });
        shared.bump(&shared.stats.commands);
        match fault {
            Some(Fault::DropAfterExecute) => break,
            Some(Fault::OversizeResponse) | Some(Fault::StallMidFrame) => {
                let raw = if fault == Some(Fault::OversizeResponse) {
                    let mut raw = (64u32 << 20).to_be_bytes().to_vec();
                    raw.extend_from_slice(&response);
                    raw
                } else {
                    let wire = encode_frame(&response);
                    wire[..wire.len() / 2].to_vec()
                };
                send(made, Out::Raw(raw));
                // Silent until the peer gives up or the registry stops.
                tokio::select! {
                    _ = async { while inbox.recv().await.is_some() {} } => {}
                    _ = shutdown.cancelled() => {}
                }
                break;
            }
            Some(Fault::MalformedResponse) => {
                send(made, Out::Frame(Bytes::from_static(
                    b"<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><response><result code=\"1000\">",
                )));
                continue;
            }
            _ => {}
        }
        if let Some(Fault::AnswerTwice(after_delay)) = fault {
            send(made, Out::Frame(response.clone()));
            send(made + after_delay, Out::Frame(response));
        } else {
            send(made, Out::Frame(response));
        }
        unanswered.fetch_sub(1, Ordering::Relaxed);
        if after == After::Close {
            break;
        }
        if fault == Some(Fault::Unsolicited) {
            send(
                made,
                Out::Frame(epp::response(1000, "Unsolicited", None, &shared.svtrid())),
            );
        }
    }
    // Let the writer finish what was sent (and close with close_notify), then stop reading.
    drop(out);
    let _ = writing.await;
    done.cancel();
    let _ = reading.await;
    if let Some(clid) = session.clid {
        if let Some(n) = shared.state().sessions.get_mut(&clid) {
            *n = n.saturating_sub(1);
        }
        shared.stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
        shared.changed.send_replace(());
    }
    debug!("mock registry session ended");
}

fn command_cltrid(sniffed: &Result<Message, epp::SniffError>) -> Option<String> {
    match sniffed {
        Ok(Message::Command(c)) => c.cltrid.clone(),
        _ => None,
    }
}

async fn answer(
    frame: &[u8],
    sniffed: Result<Message, epp::SniffError>,
    session: &mut Session,
    shared: &Shared,
) -> (Bytes, After) {
    let sv = shared.svtrid();
    let reply = |code: u16, msg: &str, cltrid: Option<&str>| epp::response(code, msg, cltrid, &sv);
    let cmd = match sniffed {
        Ok(Message::Hello) => {
            shared.bump(&shared.stats.hellos);
            return (greeting(&shared.cfg.sv_id), After::Continue);
        }
        Ok(Message::Command(c)) => c,
        Ok(_) => return (reply(2001, "Command syntax error", None), After::Continue),
        Err(e) => {
            return (
                reply(2001, &format!("Command syntax error: {e}"), None),
                After::Continue,
            )
        }
    };
    let cltrid_ok = cmd
        .cltrid
        .as_ref()
        .is_none_or(|c| (3..=64).contains(&c.chars().count()));
    if shared.cfg.strict_cltrid && !cltrid_ok {
        // The schema refuses the frame, so its clTRID is not "read" either.
        return (
            reply(2001, "Command syntax error: clTRID length", None),
            After::Continue,
        );
    }
    let Some(owner) = session.clid.clone() else {
        if cmd.verb == "login" && !shared.cfg.login_latency.is_zero() {
            sleep(shared.cfg.login_latency).await;
        }
        return login(&cmd, session, shared, &sv);
    };
    if cmd.verb == "logout" {
        return (
            reply(
                1500,
                "Command completed successfully; ending session",
                cmd.cltrid.as_deref(),
            ),
            After::Close,
        );
    }
    if session.forgotten {
        return (
            reply(2002, &shared.cfg.forgotten_message, cmd.cltrid.as_deref()),
            After::Continue,
        );
    }
    let names = domain_names(frame);
    let wrong_cltrid = cmd.cltrid.as_ref().map(|c| format!("not-{c}"));
    let cltrid = if names.iter().any(|n| n.starts_with("mismatch-")) {
        wrong_cltrid.as_deref()
    } else {
        cmd.cltrid.as_deref()
    };
    if names.iter().any(|n| n.starts_with("hold-")) {
        shared.held.send_modify(|n| *n += 1);
        if let Ok(permit) = shared.release.acquire().await {
            permit.forget();
        }
        shared.held.send_modify(|n| *n -= 1);
    }
    let (code, msg, res_data) = execute(&cmd, &names, &owner, shared);
    if !cmd.is_query() {
        shared.state().ledger.push(LedgerEntry {
            connection: session.id,
            verb: cmd.verb.clone(),
            names: names.clone(),
            cltrid: cmd.cltrid.clone(),
            code,
        });
    }
    (
        epp::response_with_data(code, msg, &res_data, cltrid, &sv),
        After::Continue,
    )
}

fn login(cmd: &Command, session: &mut Session, shared: &Shared, sv: &str) -> (Bytes, After) {
    let cltrid = cmd.cltrid.as_deref();
    let reply = |code: u16, msg: &str| epp::response(code, msg, cltrid, sv);
    if cmd.verb != "login" {
        return (reply(2002, "Command use error"), After::Continue);
    }
    shared.bump(&shared.stats.login_attempts);
    if let Some(code) = shared.next_login_refusal() {
        let msg = match code {
            2200 => "Authentication error",
            2501 => "Authentication error; server closing connection",
            2502 => "Session limit exceeded; server closing connection",
            _ => "Command failed",
        };
        let after = if code >= 2500 {
            After::Close
        } else {
            After::Continue
        };
        return (reply(code, msg), after);
    }
    let login = cmd.login.clone().unwrap_or_default();
    let ok = shared
        .cfg
        .accounts
        .get(&login.clid)
        .is_some_and(|pw| login.pw.ct_eq(pw));
    if !ok {
        return (reply(2200, "Authentication error"), After::Continue);
    }
    {
        let mut st = shared.state();
        let n = st.sessions.entry(login.clid.clone()).or_default();
        if *n >= shared.cfg.session_cap {
            warn!(clid = %login.clid, cap = shared.cfg.session_cap, "mock registry: session limit reached");
            return (
                reply(2502, "Session limit exceeded; server closing connection"),
                After::Close,
            );
        }
        *n += 1;
    }
    let active = shared.stats.active_sessions.fetch_add(1, Ordering::Relaxed) + 1;
    shared
        .stats
        .peak_sessions
        .fetch_max(active, Ordering::Relaxed);
    shared.bump(&shared.stats.logins);
    session.clid = Some(login.clid);
    (
        reply(1000, "Command completed successfully"),
        After::Continue,
    )
}

/// Runs a command against the in-memory registry: (result code, message, resData).
fn execute(
    cmd: &Command,
    names: &[String],
    owner: &str,
    shared: &Shared,
) -> (u16, &'static str, String) {
    const OK: &str = "Command completed successfully";
    let first = names.first();
    let mut st = shared.state();
    match (cmd.verb.as_str(), cmd.object.as_deref(), first) {
        ("poll", _, _) => (
            1300,
            "Command completed successfully; no messages",
            String::new(),
        ),
        ("check", Some("domain"), _) => {
            let mut cds = String::new();
            for name in names {
                let avail = !st.domains.contains_key(name);
                cds.push_str(&format!(
                    "<domain:cd><domain:name avail=\"{}\">{}</domain:name></domain:cd>",
                    u8::from(avail),
                    esc(name)
                ));
            }
            let res = format!(
                "<resData><domain:chkData xmlns:domain=\"{DOMAIN_NS}\">{cds}</domain:chkData></resData>"
            );
            (1000, OK, res)
        }
        ("info" | "create" | "delete", Some("domain"), None) => {
            (2003, "Required parameter missing", String::new())
        }
        ("info", Some("domain"), Some(name)) => match st.domains.get(name) {
            None => (2303, "Object does not exist", String::new()),
            Some(rec) => {
                let res = format!(
                    "<resData><domain:infData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>{}</domain:name>\
                     <domain:roid>{}</domain:roid><domain:status s=\"ok\"/><domain:clID>{}</domain:clID>\
                     </domain:infData></resData>",
                    esc(name),
                    esc(&rec.roid),
                    esc(&rec.owner)
                );
                (1000, OK, res)
            }
        },
        ("create", Some("domain"), Some(name)) => {
            if st.domains.contains_key(name) {
                return (2302, "Object exists", String::new());
            }
            let roid = format!("D{}-MOCK", shared.roid.fetch_add(1, Ordering::Relaxed));
            st.domains.insert(
                name.clone(),
                DomainRecord {
                    owner: owner.to_string(),
                    roid,
                },
            );
            let res = format!(
                "<resData><domain:creData xmlns:domain=\"{DOMAIN_NS}\"><domain:name>{}</domain:name>\
                 <domain:crDate>{}</domain:crDate></domain:creData></resData>",
                esc(name),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            (1000, OK, res)
        }
        ("delete", Some("domain"), Some(name)) => match st.domains.get(name) {
            None => (2303, "Object does not exist", String::new()),
            Some(rec) if rec.owner != owner => (2201, "Authorization error", String::new()),
            Some(_) => {
                st.domains.remove(name);
                (1000, OK, String::new())
            }
        },
        _ => (2101, "Unimplemented command", String::new()),
    }
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

pub fn greeting(sv_id: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?><epp xmlns=\"{EPP_NS}\"><greeting>\
         <svID>{}</svID><svDate>{}</svDate><svcMenu><version>1.0</version><lang>en</lang>\
         <objURI>{DOMAIN_NS}</objURI><objURI>urn:ietf:params:xml:ns:contact-1.0</objURI>\
         <objURI>urn:ietf:params:xml:ns:host-1.0</objURI><svcExtension>\
         <extURI>urn:ietf:params:xml:ns:secDNS-1.1</extURI></svcExtension></svcMenu>\
         <dcp><access><all/></access><statement><purpose><admin/><prov/></purpose>\
         <recipient><ours/><public/></recipient><retention><stated/></retention></statement></dcp>\
         </greeting></epp>",
        esc(sv_id),
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
                    && matches!(ns, ResolveResult::Bound(Namespace(n)) if n == DOMAIN_NS.as_bytes());
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
