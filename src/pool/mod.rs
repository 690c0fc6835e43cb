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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use self::core::{
    Action, Counters, Ended, Grant, Limits, OpenFailure, PoolCore, Refusal, SessionId, Stats,
    WaiterId,
};
use crate::config::AccountConfig;
use crate::metrics::{self, Metrics, ResultLabel, RetryLabel, SessionStateLabel};
use crate::upstream::run::{Ending, Job, JobError, Owner};
use crate::upstream::{ExchangeError, Reply, UpstreamTarget};

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
        let acc = &parts.account;
        let limits = Limits {
            min: acc.pool_min,
            max: acc.pool_max,
            depth: acc.lifecycle.pipeline_depth.max(1),
            max_commands: acc.lifecycle.max_commands,
            queue_max: parts.settings.queue_max,
            queue_max_bytes: parts.settings.queue_max_bytes,
            session_limit_hold: parts.settings.session_limit_hold,
            logins_per_minute: acc.max_logins_per_minute,
            commands_per_second: acc.max_commands_per_second,
        };
        let now = Instant::now();
        let inner = Arc::new(Inner {
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
        inner.parts.tasks.spawn(timer(inner.clone()));
        inner.event(|core, now| core.start(now));
        Pool { inner }
    }

    pub fn clid(&self) -> &str {
        &self.inner.parts.account.clid
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

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.used {
            let session = self.session;
            self.inner.event(|core, now| core.unused(now, session));
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain bookkeeping behind; keep serving with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds the core one event and carries out what it answers.
    fn event(self: &Arc<Self>, f: impl FnOnce(&mut PoolCore, Instant) -> Vec<Action>) {
        self.with_state(|st, now| ((), f(&mut st.core, now)));
    }

    /// [`Inner::event`] with the driver's state at hand too; returns what `f` returns.
    fn with_state<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State, Instant) -> (T, Vec<Action>),
    ) -> T {
        let now = Instant::now();
        let mut st = self.state();
        let before = (st.core.next_wakeup(), st.core.counters());
        let (value, actions) = f(&mut st, now);
        self.apply(&mut st, actions, now);
        let after = (st.core.next_wakeup(), st.core.counters());
        drop(st);
        self.export_counts(&before.1, &after.1);
        if before.0 != after.0 {
            self.wake.notify_one();
        }
        self.changed.send_replace(());
        value
    }

    /// Counts an event of the driver's own in the pool's counters.
    fn count(self: &Arc<Self>, f: impl FnOnce(&mut Counters)) {
        self.event(|core, _| {
            f(core.counters_mut());
            Vec::new()
        });
    }

    fn apply(self: &Arc<Self>, st: &mut State, actions: Vec<Action>, now: Instant) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Open { id, .. } => self.spawn_session(id),
                Action::Hand { waiter, session } => {
                    let delivered = st
                        .waiters
                        .remove(&waiter)
                        .is_some_and(|tx| tx.send(Ok(session)).is_ok());
                    if !delivered {
                        // Its caller gave up in the meantime: the slot goes to the next one.
                        queue.extend(st.core.unused(now, session));
                    }
                }
                Action::Refuse { waiter, why } => {
                    if let Some(tx) = st.waiters.remove(&waiter) {
                        let _ = tx.send(Err(why));
                    }
                }
                Action::Retire(id) => {
                    if let Some(link) = st.links.get(&id) {
                        link.retire.cancel();
                    }
                }
            }
        }
    }

    fn spawn_session(self: &Arc<Self>, id: SessionId) {
        // A root span: a session opened while another's (or a client's) span is current must not
        // nest under it, or every replacement adds a level to every log line.
        let span =
            info_span!(parent: None, "upstream", account = %self.parts.account.clid, session = id);
        self.parts
            .tasks
            .spawn(crate::upstream::run::run(id, self.clone()).instrument(span));
    }

    /// Mirrors what changed in the pool's counters into the Prometheus metrics.
    fn export_counts(&self, before: &Counters, after: &Counters) {
        let m = &self.parts.metrics;
        let clid = &self.parts.account.clid;
        let registry = &self.parts.registry;
        let label = metrics::account(registry, clid);
        let delta = |f: fn(&Counters) -> u64| f(after).saturating_sub(f(before));
        for (kind, n) in [
            ("handoff", delta(|c| c.handoffs)),
            ("not_logged_in", delta(|c| c.resent_not_executed)),
            ("lost_query", delta(|c| c.resent_queries)),
        ] {
            if n > 0 {
                m.retries
                    .get_or_create(&RetryLabel {
                        registry: registry.clone(),
                        account: clid.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        for (family, n) in [
            (&m.retries_refused, delta(|c| c.refused_replays)),
            (&m.pool_exhausted, delta(|c| c.exhausted)),
            (&m.keepalives, delta(|c| c.keepalives)),
            (&m.reconnects, delta(|c| c.reconnects)),
            (&m.duplicate_answers, delta(|c| c.duplicate_answers)),
            (&m.login_budget_waits, delta(|c| c.login_budget_waits)),
            (&m.commands_throttled, delta(|c| c.commands_throttled)),
        ] {
            if n > 0 {
                family.get_or_create(&label).inc_by(n);
            }
        }
    }

    fn count_login(&self, result: String) {
        self.parts
            .metrics
            .logins
            .get_or_create(&ResultLabel {
                registry: self.parts.registry.clone(),
                account: self.parts.account.clid.clone(),
                result,
            })
            .inc();
    }

    fn observe_wait(&self, asked: Instant) {
        self.parts
            .metrics
            .queue_wait
            .get_or_create(&metrics::account(
                &self.parts.registry,
                &self.parts.account.clid,
            ))
            .observe(asked.elapsed().as_secs_f64());
    }

    fn refused(self: &Arc<Self>, why: Refusal) -> PoolError {
        match why {
            Refusal::QueueFull { commands, bytes } => {
                self.count(|c| c.exhausted += 1);
                PoolError::QueueFull { commands, bytes }
            }
            Refusal::Unavailable(reason) => PoolError::Unavailable(reason),
        }
    }

    /// Takes waiter `waiter` out of the queue; false when a session was handed to it already.
    fn withdraw(&self, waiter: WaiterId) -> bool {
        let mut st = self.state();
        let queued = st.core.withdraw(waiter);
        if queued {
            st.waiters.remove(&waiter);
        }
        queued
    }
}

/// Ticks the core when it asked to be looked at again (a backoff ended, the login budget or the
/// command rate allows more, a hold is over).
async fn timer(inner: Arc<Inner>) {
    loop {
        let next = inner.state().core.next_wakeup();
        tokio::select! {
            _ = inner.parts.shutdown.cancelled() => {
                inner.state().core.close();
                return;
            }
            _ = inner.wake.notified() => {}
            _ = async { sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {
                inner.event(|core, now| core.tick(now));
            }
        }
    }
}

impl Owner for Inner {
    fn target(&self) -> &UpstreamTarget {
        &self.parts.target
    }

    fn account(&self) -> &AccountConfig {
        &self.parts.account
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.parts.shutdown
    }

    fn abort(&self) -> &CancellationToken {
        &self.parts.abort
    }

    fn greeting(&self, frame: Bytes) {
        self.parts.greeting.send_replace(Some(frame));
    }

    fn opened(self: &Arc<Self>, id: u64, jobs: mpsc::Sender<Job>, retire: CancellationToken) {
        self.count_login("1000".into());
        self.with_state(|st, now| {
            st.links.insert(id, Link { jobs, retire });
            ((), st.core.ready(now, id))
        });
    }

    fn open_failed(self: &Arc<Self>, id: u64, login_code: Option<u16>, error: Option<String>) {
        let why = match (login_code, &error) {
            (Some(code), _) => OpenFailure::Refused(code),
            (None, Some(_)) => OpenFailure::Error,
            (None, None) => OpenFailure::Cancelled,
        };
        if why != OpenFailure::Cancelled {
            self.count_login(login_code.map_or_else(|| "error".into(), |c| c.to_string()));
        }
        self.event(|core, now| core.open_failed(now, id, why, error));
    }

    fn answered(self: &Arc<Self>, id: u64) {
        self.event(|core, now| core.answered(now, id));
    }

    fn retiring(self: &Arc<Self>, id: u64) {
        self.event(|core, now| core.retiring(now, id));
    }

    fn ended(self: &Arc<Self>, id: u64, how: Ending) {
        let (how, error) = match how {
            Ending::Retired => (Ended::Retired, None),
            Ending::Shutdown => (Ended::Shutdown, None),
            Ending::Lost(why) => (Ended::Lost, Some(why)),
        };
        self.with_state(|st, now| {
            st.links.remove(&id);
            ((), st.core.ended(now, id, how, error))
        });
    }

    fn keepalive_done(self: &Arc<Self>) {
        self.count(|c| c.keepalives += 1);
    }

    fn duplicate_dropped(self: &Arc<Self>) {
        self.count(|c| c.duplicate_answers += 1);
    }
}
