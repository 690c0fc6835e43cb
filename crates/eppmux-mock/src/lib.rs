//! A small EPP registry for the demo, the tests, the benchmarks and docker-compose. It speaks real
//! TLS and requires a client certificate, like a real registry, and keeps domains in memory.
//!
//! It implements greeting, hello, login (with `<newPW>` changing the password, and a per-clID
//! session cap answered by 2502 and a close), logout, domain check/info/create/delete, poll
//! (always empty), a per-command processing time and an idle timeout (close, or "forget" the
//! session and answer 2002 "not logged in"). It counts logins per client certificate.
//!
//! For resilience tests it injects faults — queued ones for deterministic tests
//! ([`MockRegistry::push_fault`], [`MockRegistry::push_login_refusal`]) or random ones
//! ([`Chaos`]) — and keeps a ledger of every transform it processed, so a test can prove that
//! nothing ran twice. Commands on domains named `hold-*` wait until the test releases them (a
//! deterministic "busy session"), and commands on `mismatch-*` are answered with a wrong clTRID.
//!
//! Read it top-down: [`MockRegistry`] (here) accepts connections; `session` models the network
//! and the faults of one connection (its waits go through `clock`, finer than tokio's timer);
//! `commands` answers each command; `state` is what sessions share; `config` is what the registry
//! is told to be.

#![forbid(unsafe_code)]

mod clock;
mod commands;
mod config;
mod session;
mod state;

pub use commands::greeting;
pub use config::{Chaos, Fault, MockConfig, NOT_LOGGED_IN};
pub use state::{Exchange, LedgerEntry, MockStats};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use session::serve_session;
use state::{Shared, State};

/// A running mock registry.
pub struct MockRegistry {
    /// Where it listens (the ephemeral port a test asked for, resolved).
    pub addr: SocketAddr,
    /// What its sessions share; the handle reads and steers it.
    shared: Arc<Shared>,
    /// Stops the accept loop and every session.
    shutdown: CancellationToken,
    /// The accept loop and sessions, waited for at shutdown.
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
        let passwords = cfg.accounts.clone();
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                chaos,
                passwords,
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

    /// Its counters.
    pub fn stats(&self) -> &MockStats {
        &self.shared.stats
    }

    /// Every command received so far, with the response sent, in order.
    pub fn transcript(&self) -> Vec<Exchange> {
        self.shared.state().transcript.clone()
    }

    /// Every frame the registry read so far, processed or not, as (connection, frame), in order.
    /// Frames that reached it but that it never read are in [`Self::unprocessed`].
    pub fn received(&self) -> Vec<(u64, Bytes)> {
        self.shared.state().received.clone()
    }

    /// Frames that reached a connection and were never processed, as (connection, frame): read
    /// but still queued when the registry stopped reading or closed the session (these are in
    /// [`Self::received`] too), or arriving after that (never read). With [`Self::received`],
    /// every frame a client wrote that reached the registry.
    pub fn unprocessed(&self) -> Vec<(u64, Bytes)> {
        self.shared.state().unprocessed.clone()
    }

    /// Every transform processed so far, in order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.shared.state().ledger.clone()
    }

    /// How long after its time on the network model's clock each frame left, in order: how far
    /// the achieved round trip is from the configured one.
    pub fn lateness(&self) -> Vec<Duration> {
        self.shared.state().lateness.clone()
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

    /// Random faults from now on (None: none).
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

    /// Sees every counted event (a login, a session's end, a command), for a test that samples
    /// a counter as it moves.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.shared.changed.subscribe()
    }

    /// An account's password now (a login with `<newPW>` changes it).
    pub fn password(&self, clid: &str) -> Option<String> {
        self.shared.state().passwords.get(clid).cloned()
    }

    /// Changes an account's password, as another client of the registry would.
    pub fn set_password(&self, clid: &str, password: &str) {
        let mut st = self.shared.state();
        st.passwords.insert(clid.to_string(), password.to_string());
    }

    /// Successful logins so far per client-certificate fingerprint (`sha256:hex`).
    pub fn logins_by_certificate(&self) -> HashMap<String, usize> {
        self.shared.state().logins_by_cert.clone()
    }

    /// Logged-in sessions now per client-certificate fingerprint (`sha256:hex`).
    pub fn sessions_by_certificate(&self) -> HashMap<String, usize> {
        let st = self.shared.state();
        st.live_by_cert
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }

    /// Whether a domain is registered (names are case-insensitive).
    pub fn domain_exists(&self, name: &str) -> bool {
        self.shared
            .state()
            .domains
            .contains_key(&name.to_ascii_lowercase())
    }

    /// Stops accepting, ends every session (held commands are let go) and waits for them.
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
                clock::sleep(shared.cfg.rtt).await;
                let accepted = acceptor.accept(tcp).await;
                clock::sleep(shared.cfg.rtt).await;
                match accepted {
                    Ok(tls) => {
                        let cert = tls.get_ref().1.peer_certificates();
                        let cert = cert.and_then(|c| c.first()).map(|c| state::fingerprint(c));
                        serve_session(tls, id, cert, shared, shutdown).await
                    }
                    Err(e) => info!(error = %e, "mock registry: TLS handshake refused"),
                }
            }
            .instrument(span),
        );
    }
}
