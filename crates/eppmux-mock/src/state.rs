//! What a mock registry remembers and shares between its sessions: the domains, the sessions per
//! clID, the transcript and ledger a test reads, the queued faults, and the counters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};

use crate::config::{Chaos, Fault, MockConfig};

/// One transform the registry processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Which connection sent it (tests check which session a command ran on).
    pub connection: u64,
    /// `create`, `delete`, …
    pub verb: String,
    /// The domain names it named, lower-cased.
    pub names: Vec<String>,
    /// Its clTRID as sent, to match it to the client that sent it.
    pub cltrid: Option<String>,
    /// The result code it was answered with (a refused transform is still in the ledger).
    pub code: u16,
}

/// One command as the registry received it and the response it sent.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Which connection sent it.
    pub connection: u64,
    /// The frame as received.
    pub command: Bytes,
    /// The answer as made (before any fault broke it on the way out).
    pub response: Bytes,
    /// The fault this command met, if any (its [`Fault::name`]).
    pub fault: Option<&'static str>,
}

/// One registered domain.
#[derive(Debug, Clone)]
pub(crate) struct DomainRecord {
    /// The clID that created it: only it may delete it.
    pub(crate) owner: String,
    /// Its repository object id, for `<info>`.
    pub(crate) roid: String,
}

/// What sessions change together, under one lock.
#[derive(Default)]
pub(crate) struct State {
    /// The registry's objects, by lower-cased name.
    pub(crate) domains: HashMap<String, DomainRecord>,
    /// Logged-in sessions per clID, against the session cap.
    pub(crate) sessions: HashMap<String, usize>,
    /// clID → current password: starts as configured, changed by a login with `<newPW>` (or
    /// by a test standing in for another client of the registry).
    pub(crate) passwords: HashMap<String, String>,
    /// Successful logins per client-certificate fingerprint (`sha256:hex`), to tell which
    /// certificate a registrar used.
    pub(crate) logins_by_cert: HashMap<String, usize>,
    /// Logged-in sessions now, per client-certificate fingerprint.
    pub(crate) live_by_cert: HashMap<String, usize>,
    /// Every command processed (or refused by a fault) with its answer.
    pub(crate) transcript: Vec<Exchange>,
    /// Every frame the registry read off a connection, processed or not: (connection, frame).
    pub(crate) received: Vec<(u64, Bytes)>,
    /// Frames that reached a connection and were never processed: read but still queued when the
    /// registry stopped reading or closed the session (in `received` too), or never read (they
    /// arrived after that): (connection, frame).
    pub(crate) unprocessed: Vec<(u64, Bytes)>,
    /// Every transform processed, to prove none ran twice.
    pub(crate) ledger: Vec<LedgerEntry>,
    /// Faults a test queued for the next commands.
    pub(crate) faults: VecDeque<Fault>,
    /// Codes a test queued for the next logins.
    pub(crate) login_refusals: VecDeque<u16>,
    /// How many of each fault struck, by name (a soak reports it).
    pub(crate) faults_injected: HashMap<&'static str, usize>,
    /// How long after its time on the model's clock each frame left (greetings included).
    pub(crate) lateness: Vec<Duration>,
    /// Random faults, with a seeded generator so a failing soak can be replayed.
    pub(crate) chaos: Option<(Chaos, fastrand::Rng)>,
}

/// Counters a test or benchmark can read.
#[derive(Debug, Default)]
pub struct MockStats {
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// `<login>` commands received, answered or refused.
    pub login_attempts: AtomicUsize,
    /// Logins that succeeded.
    pub logins: AtomicUsize,
    /// Sessions logged in now.
    pub active_sessions: AtomicUsize,
    /// Most sessions logged in at once (against a registry's session cap).
    pub peak_sessions: AtomicUsize,
    /// Commands answered (other than the greeting).
    pub commands: AtomicUsize,
    /// `<hello>`s answered (keepalives).
    pub hellos: AtomicUsize,
    /// Sessions closed or forgotten for idleness.
    pub idle_timeouts: AtomicUsize,
    /// Most commands one session had received and not yet answered (pipelining depth seen).
    pub peak_in_flight: AtomicUsize,
    /// Frames received on all connections (counted as they arrive, before processing).
    pub frames_received: AtomicUsize,
}

/// Everything a mock registry's sessions share.
pub(crate) struct Shared {
    /// What the registry was told to be.
    pub(crate) cfg: MockConfig,
    /// Held only for short bookkeeping, never across an await.
    pub(crate) state: Mutex<State>,
    /// Counters read without the lock.
    pub(crate) stats: MockStats,
    /// Bumped after every counted event, for [`crate::MockRegistry::wait_until`].
    pub(crate) changed: watch::Sender<()>,
    /// Commands on `hold-*` domains waiting now, for [`crate::MockRegistry::wait_held`].
    pub(crate) held: watch::Sender<usize>,
    /// Permits that let held commands go on ([`crate::MockRegistry::release_held`]).
    pub(crate) release: Semaphore,
    /// False: every session stops reading from its connection (see [`crate::MockRegistry::stop_reading`]).
    pub(crate) reading: watch::Sender<bool>,
    /// The next svTRID's number: unique across sessions, as a registry's are.
    pub(crate) svtrid: AtomicU64,
    /// The next created domain's roid number.
    pub(crate) roid: AtomicU64,
}

/// A certificate's fingerprint as eppmux writes it: `sha256:` and the hex of the DER's SHA-256.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn svtrid(&self) -> String {
        format!("mock-{}", self.svtrid.fetch_add(1, Ordering::Relaxed))
    }

    /// A frame that reached connection `id` will never be processed.
    pub(crate) fn unprocessed(&self, id: u64, frame: Bytes) {
        self.state().unprocessed.push((id, frame));
        self.changed.send_replace(());
    }

    pub(crate) fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    /// The fault for the next command: a queued one first, else a random one in chaos mode.
    pub(crate) fn next_fault(&self) -> Option<Fault> {
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

    pub(crate) fn next_login_refusal(&self) -> Option<u16> {
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

/// One registry session's state.
pub(crate) struct Session {
    /// The connection's number, for the ledger and transcript.
    pub(crate) id: u64,
    /// Who logged in, once someone has.
    pub(crate) clid: Option<String>,
    /// The fingerprint of the client certificate its TLS handshake presented.
    pub(crate) cert: Option<String>,
    /// The registry has forgotten the login (idle, or an injected fault).
    pub(crate) forgotten: bool,
}
