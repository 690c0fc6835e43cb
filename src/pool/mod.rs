//! The upstream sessions of one registrar account, as a service to client sessions:
//! [`Pool::forward`] sends a command on a session and returns the registry's answer.
//!
//! The bookkeeping — which session a command goes to, when sessions open, retire, back off or
//! are held — is the pure state machine in [`core`]. This module is its driver: it feeds the core
//! events (a command asks, a session logged in, answered, ended…), carries out the actions it
//! returns (spawn a session task from `crate::upstream::run`, hand a session to a waiting command,
//! tell a session to retire), and runs one timer per pool for what the core schedules (backoff,
//! holds, the login budget, the command rate). Its state sits under one std `Mutex`, never held
//! across an `.await`.
//!
//! The safety rule: a command is sent again on another session only when the registry certainly
//! did not execute it — it never left eppmux, or the registry answered that the session was not
//! logged in (or the command was behind one so answered). A query may also be sent again when its
//! response was lost. A transform whose response was lost is never replayed; the caller gets
//! [`PoolError::Lost`]. A command sent again waits at the head of the queue.

pub mod core;
mod driver;
mod reload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use self::core::{Counters, Grant, Limits, PoolCore, Refusal, SessionId, Stats, WaiterId};
use crate::config::AccountConfig;
use crate::metrics::{self, Metrics, SessionStateLabel};
use crate::upstream::run::{Job, JobError};
use crate::upstream::{Credentials, ExchangeError, Passwords, Reply, UpstreamTarget};

/// Attempts for one command: hand-offs of commands that never left, re-sends after "not logged
/// in", and re-sends of lost queries all count.
const MAX_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no registry session became free within {0:?}")]
    Exhausted(Duration),
    #[error("{commands} commands ({bytes} bytes) are already waiting for a registry session")]
    QueueFull { commands: usize, bytes: usize },
    #[error("account unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Lost(#[from] ExchangeError),
    #[error("shutting down")]
    ShuttingDown,
}

/// Pool-wide settings that do not belong to one account's configuration.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub queue_max: usize,
    pub queue_max_bytes: usize,
    pub session_limit_hold: Duration,
    pub rotation_interval: Duration,
}

impl PoolSettings {
    /// The limits the bookkeeping enforces for `acc`.
    fn limits(&self, acc: &AccountConfig) -> Limits {
        Limits {
            min: acc.pool_min,
            max: acc.pool_max,
            depth: acc.lifecycle.pipeline_depth.max(1),
            max_commands: acc.lifecycle.max_commands,
            queue_max: self.queue_max,
            queue_max_bytes: self.queue_max_bytes,
            session_limit_hold: self.session_limit_hold,
            logins_per_minute: acc.max_logins_per_minute,
            commands_per_second: acc.max_commands_per_second,
            rotation_interval: self.rotation_interval,
        }
    }
}

/// What a pool is started with.
pub struct PoolParts {
    /// The registry's name, for metrics, logs and `/status` ("" for the unnamed one).
    pub registry: String,
    pub account: AccountConfig,
    pub settings: PoolSettings,
    pub target: Arc<UpstreamTarget>,
    /// Where the latest registry greeting is published, for clients.
    pub greeting: watch::Sender<Option<Bytes>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline passes.
    pub abort: CancellationToken,
    pub tasks: TaskTracker,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    parts: PoolParts,
    /// The account's clID: what identifies the pool (its credentials may change, not this).
    clid: String,
    /// What sessions log in with; replaced whole by a reload (see [`Pool::reconfigure`]).
    creds: std::sync::RwLock<Arc<Credentials>>,
    state: Mutex<State>,
    /// Bumped after every event, for [`Pool::wait_for`].
    changed: watch::Sender<()>,
    /// Tells the timer task that the core's next wake-up moved.
    wake: Notify,
    next_waiter: AtomicU64,
}

struct State {
    core: PoolCore,
    /// Commands queued in the core, and where their session goes.
    waiters: HashMap<WaiterId, oneshot::Sender<Result<SessionId, Refusal>>>,
    /// Logged-in sessions' job channels and retire signals.
    links: HashMap<SessionId, Link>,
}

struct Link {
    jobs: mpsc::Sender<Job>,
    retire: CancellationToken,
}

impl Pool {
    /// Creates the pool and starts opening its `pool_min` sessions. Session tasks are spawned on
    /// `parts.tasks` and end when `parts.shutdown` is cancelled (after a `<logout>`).
    pub fn start(parts: PoolParts) -> Pool {
        let limits = parts.settings.limits(&parts.account);
        let now = Instant::now();
        let creds = Arc::new(Credentials {
            target: parts.target.clone(),
            passwords: Arc::new(Mutex::new(Passwords::new(
                parts.account.password.clone(),
                parts.account.new_password.clone(),
            ))),
            account: parts.account.clone(),
        });
        let inner = Arc::new(Inner {
            clid: parts.account.clid.clone(),
            creds: std::sync::RwLock::new(creds),
            state: Mutex::new(State {
                core: PoolCore::new(limits, now, fastrand::u64(..)),
                waiters: HashMap::new(),
                links: HashMap::new(),
            }),
            parts,
            changed: watch::Sender::new(()),
            wake: Notify::new(),
            next_waiter: AtomicU64::new(1),
        });
        inner.parts.tasks.spawn(driver::timer(inner.clone()));
        inner.login_event(|st, now| ((), st.core.start(now)));
        Pool { inner }
    }

    pub fn clid(&self) -> &str {
        &self.inner.clid
    }

    /// The registry's name ("" for the single registry of the flat form).
    pub fn registry(&self) -> &str {
        &self.inner.parts.registry
    }

    pub fn stats(&self) -> Stats {
        self.inner.state().core.stats(Instant::now())
    }

    pub fn counters(&self) -> Counters {
        self.inner.state().core.counters()
    }

    /// While handshakes with the registry fail for want of a common cipher suite or TLS
    /// version: what the last one said (for `/readyz`).
    pub fn tls_mismatch(&self) -> Option<crate::upstream::NoCommonTls> {
        self.inner.credentials().target.tls.last_mismatch()
    }

    /// The pool as JSON, for the admin endpoint's `/status`.
    pub fn status(&self) -> serde_json::Value {
        let now = Instant::now();
        let mut st = self.inner.state();
        let stats = st.core.stats(now);
        let sessions: Vec<_> = st
            .core
            .sessions(now)
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "age_seconds": s.age.as_secs(),
                    "commands": s.commands,
                    "in_flight": s.in_flight,
                    "retiring": s.retiring,
                    "old_credentials": s.stale,
                })
            })
            .collect();
        serde_json::json!({
            "registry": self.registry(),
            "account": self.clid(),
            "pool_min": stats.pool_min,
            "pool_max": stats.pool_max,
            "effective_max": stats.effective_max,
            "live": stats.live,
            "idle": stats.idle,
            "busy": stats.live.saturating_sub(stats.idle),
            "connecting": stats.connecting,
            "dead": stats.dead,
            "waiting": stats.waiting,
            "unhealthy": stats.unhealthy,
            "login_tokens": stats.login_tokens,
            "login_budget_wait_ms": stats.login_budget_wait.map(|d| d.as_millis() as u64),
            "last_error": st.core.last_error(),
            "old_credential_sessions": stats.stale,
            "password": self.inner.credentials().passwords_in_use(),
            "sessions": sessions,
            "counters": st.core.counters(),
        })
    }

    /// Sets this pool's gauges (sessions by state, queue length, login budget) for a scrape.
    pub fn export_gauges(&self) {
        let stats = self.stats();
        let m = &self.inner.parts.metrics;
        let account = self.clid().to_string();
        let registry = self.registry().to_string();
        let busy = stats.live.saturating_sub(stats.idle);
        for (state, n) in [
            ("connecting", stats.connecting),
            ("idle", stats.idle),
            ("busy", busy),
            ("dead", stats.dead),
        ] {
            m.sessions
                .get_or_create(&SessionStateLabel {
                    registry: registry.clone(),
                    account: account.clone(),
                    state,
                })
                .set(n as i64);
        }
        let label = metrics::account(&registry, &account);
        m.queue_length
            .get_or_create(&label)
            .set(stats.waiting as i64);
        m.login_tokens
            .get_or_create(&label)
            .set(i64::from(stats.login_tokens));
    }

    /// Applies new pool sizes: opens sessions up to the new minimum at once, and retires sessions
    /// above the new maximum (idle ones first, busy ones after what they have in flight).
    pub fn resize(&self, min: usize, max: usize) {
        info!(account = %self.clid(), min, max, "resizing pool");
        self.inner.event(|core, now| core.resize(now, min, max));
    }

    /// Waits until the pool's sessions satisfy `pred` (e.g. "at least one logged in").
    pub async fn wait_for(&self, pred: impl Fn(&Stats) -> bool) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if pred(&self.stats()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Sends `frame` on a session and returns the registry's response, following the module's
    /// safety rule. `cltrid` is the command's clTRID, checked against the response; `is_query`
    /// says whether it may be sent again after a lost response. Each attempt waits at most
    /// `wait` for a session.
    pub async fn forward(
        &self,
        frame: Bytes,
        cltrid: Option<&str>,
        is_query: bool,
        wait: Duration,
    ) -> Result<Reply, PoolError> {
        let mut last_loss = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let lease = self.acquire(wait, frame.len(), attempt > 1).await?;
            let (tx, rx) = oneshot::channel();
            let job = Job {
                frame: frame.clone(),
                cltrid: cltrid.map(str::to_owned),
                reply: tx,
            };
            let outcome = if lease.send(job).await {
                // Only a panicking session task drops a job it took: assume the worst.
                rx.await.unwrap_or_else(|_| {
                    Err(JobError::Lost(ExchangeError::Lost(
                        "upstream session task ended".into(),
                    )))
                })
            } else {
                Err(JobError::NotSent)
            };
            let cltrid = cltrid.unwrap_or("");
            match outcome {
                Ok(reply) => {
                    self.inner.count(|c| c.forwarded += 1);
                    return Ok(reply);
                }
                Err(JobError::NotSent) => self.inner.count(|c| c.handoffs += 1),
                Err(JobError::NotExecuted(why)) => {
                    self.inner.count(|c| c.resent_not_executed += 1);
                    info!(cltrid, attempt, reason = %why, "command not executed; sending it on another session");
                }
                Err(JobError::Lost(e)) if is_query => {
                    self.inner.count(|c| c.resent_queries += 1);
                    warn!(cltrid, attempt, reason = %e, "query response lost; sending the query again");
                    last_loss = Some(e);
                }
                Err(JobError::Lost(e)) => {
                    self.inner.count(|c| c.refused_replays += 1);
                    return Err(PoolError::Lost(e));
                }
            }
        }
        match last_loss {
            Some(e) => Err(PoolError::Lost(e)),
            None => {
                self.inner.count(|c| c.exhausted += 1);
                Err(PoolError::Exhausted(wait))
            }
        }
    }

    /// One command slot on a session: at once, or after waiting (at the head of the queue when
    /// `retry`) at most `wait`.
    async fn acquire(&self, wait: Duration, bytes: usize, retry: bool) -> Result<Lease, PoolError> {
        let asked = Instant::now();
        let inner = &self.inner;
        let waiter = inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        let grant = inner.with_state(|st, now| {
            // Registered first, so that a hand-off within this very event finds it.
            st.waiters.insert(waiter, tx);
            let (grant, actions) = st.core.request(now, waiter, bytes, retry);
            if grant != Grant::Queued {
                st.waiters.remove(&waiter);
            }
            (grant, actions)
        });
        let session = match grant {
            Grant::Session(id) => id,
            Grant::Refused(r) => return Err(inner.refused(r)),
            Grant::Queued => {
                let mut queued = Queued {
                    inner,
                    waiter,
                    done: false,
                };
                let got = tokio::select! {
                    got = &mut rx => got.map_err(|_| PoolError::ShuttingDown),
                    _ = sleep_until(asked + wait) => Err(PoolError::Exhausted(wait)),
                    _ = inner.parts.shutdown.cancelled() => Err(PoolError::ShuttingDown),
                };
                queued.done = true;
                match got {
                    Ok(Ok(id)) => id,
                    Ok(Err(refusal)) => return Err(inner.refused(refusal)),
                    Err(e) => {
                        if inner.withdraw(waiter) {
                            if matches!(e, PoolError::Exhausted(_)) {
                                inner.count(|c| c.exhausted += 1);
                            }
                            return Err(e);
                        }
                        // Handed a session just as the wait ended: use it.
                        match rx.try_recv() {
                            Ok(Ok(id)) => id,
                            Ok(Err(refusal)) => return Err(inner.refused(refusal)),
                            Err(_) => return Err(e),
                        }
                    }
                }
            }
        };
        inner.observe_wait(asked);
        Ok(Lease::new(inner.clone(), session))
    }
}

/// A queued command; dropped before it got a session (its caller was cancelled), it leaves the
/// queue instead of holding a place and asking for sessions.
struct Queued<'a> {
    inner: &'a Arc<Inner>,
    waiter: WaiterId,
    done: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.withdraw(self.waiter);
        }
    }
}

/// A command slot on a session, handed to one caller. Dropped unused (the caller was cancelled),
/// it is given back to the pool.
struct Lease {
    inner: Arc<Inner>,
    session: SessionId,
    used: bool,
}

impl Lease {
    fn new(inner: Arc<Inner>, session: SessionId) -> Lease {
        Lease {
            inner,
            session,
            used: false,
        }
    }

    /// False when the session ended before it could take the job (nothing was sent).
    async fn send(mut self, job: Job) -> bool {
        self.used = true;
        let jobs = self
            .inner
            .state()
            .links
            .get(&self.session)
            .map(|l| l.jobs.clone());
        match jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        }
    }
}

fn lock(passwords: &Mutex<Passwords>) -> std::sync::MutexGuard<'_, Passwords> {
    passwords.lock().unwrap_or_else(|p| p.into_inner())
}

impl Credentials {
    /// For `/status`.
    fn passwords_in_use(&self) -> &'static str {
        lock(&self.passwords).describe()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.used {
            let session = self.session;
            self.inner.event(|core, now| core.unused(now, session));
        }
    }
}
