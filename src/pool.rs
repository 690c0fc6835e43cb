//! The upstream sessions of one registrar account: `pool_min` opened at start, more opened on
//! demand up to `pool_max`, each one a task that owns its TLS stream and takes one job at a time.
//!
//! Idle sessions wait in a queue; commands that find none wait, first come first served across
//! all clients, for the next session that frees up — for at most the queue wait, and at most
//! `queue_max` of them. The bookkeeping lives under one std `Mutex` never held across an `.await`.
//!
//! Sessions are kept alive with `<hello>`, retired gracefully at a maximum age or command count,
//! replaced with jittered exponential backoff when lost, not retried after repeated 2200 login
//! refusals, and held below `pool_max` for a while after a 2502 (session limit).
//!
//! The safety rule: a command is sent again on another session only when the registry certainly
//! did not execute it — it never left eppmux, or the registry answered that the session was not
//! logged in. A query may also be sent again when its response was lost. A transform whose
//! response was lost is never replayed; the caller gets [`PoolError::Lost`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::AccountConfig;
use crate::epp;
use crate::metrics::{self, Metrics, ResultLabel, RetryLabel};
use crate::upstream::{
    as_response, describe_unsolicited, ExchangeError, Reply, Session, UpstreamTarget,
};

/// Attempts for one command: hand-offs of commands that never left, re-sends after "not logged
/// in", and re-sends of lost queries all count.
const MAX_ATTEMPTS: usize = 3;
/// Consecutive 2200 login answers after which the account stops trying.
const MAX_LOGIN_REFUSALS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const LOGOUT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no registry session became free within {0:?}")]
    Exhausted(Duration),
    #[error("{0} commands are already waiting for a registry session")]
    QueueFull(usize),
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
    pub session_limit_hold: Duration,
}

/// Why a session gives a job back without a response.
#[derive(Debug)]
enum JobError {
    /// The session ended before writing the command.
    NotSent,
    /// The registry answered that the session is not logged in: it processed nothing.
    NotExecuted(String),
    Exchange(ExchangeError),
}

struct Job {
    frame: Bytes,
    cltrid: Option<String>,
    reply: oneshot::Sender<Result<Reply, JobError>>,
}

#[derive(Clone)]
struct SessionHandle {
    id: u64,
    jobs: mpsc::Sender<Job>,
}

/// What the pool knows of one logged-in session, for `/status` and for shrinking.
struct SessionInfo {
    born: Instant,
    served: Arc<AtomicU64>,
    /// Commands written and not yet answered.
    in_flight: Arc<AtomicUsize>,
    /// Cancelled to make the session retire after its current command.
    retire: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Current pool_min and pool_max (changed by a configuration reload).
    min: usize,
    max: usize,
    idle: VecDeque<SessionHandle>,
    waiters: VecDeque<oneshot::Sender<SessionHandle>>,
    /// Sessions being opened (including those waiting out a backoff).
    connecting: usize,
    /// Sessions logged in, idle or busy.
    live: usize,
    /// Consecutive failures to open a session; drives the backoff.
    failures: u32,
    /// Consecutive 2200 answers to our login.
    login_refusals: u32,
    /// Set when the account must not try again (repeated 2200).
    unhealthy: Option<String>,
    /// After a 2502: at most this many sessions until the instant.
    capped: Option<(usize, Instant)>,
    /// Sessions that ended abnormally and are not yet replaced.
    dead: usize,
    /// Sessions that ended or failed to open; the next ones opened are reconnects.
    to_replace: usize,
    sessions: HashMap<u64, SessionInfo>,
    last_error: Option<String>,
}

/// Event counts since start, for logs, tests, the chaos test's report and metrics.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    handoffs: AtomicU64,
    resent_not_executed: AtomicU64,
    resent_queries: AtomicU64,
    refused_replays: AtomicU64,
    exhausted: AtomicU64,
    sessions_opened: AtomicU64,
    open_failures: AtomicU64,
    sessions_lost: AtomicU64,
    sessions_retired: AtomicU64,
    keepalives: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounters {
    pub forwarded: u64,
    /// Commands handed to another session because theirs ended before sending them.
    pub handoffs: u64,
    /// Commands sent again after the registry answered "not logged in".
    pub resent_not_executed: u64,
    /// Queries sent again after their response was lost.
    pub resent_queries: u64,
    /// Transforms whose response was lost and that were not replayed.
    pub refused_replays: u64,
    /// 2400 answers: no session within the wait, or the queue full.
    pub exhausted: u64,
    pub sessions_opened: u64,
    pub open_failures: u64,
    pub sessions_lost: u64,
    pub sessions_retired: u64,
    pub keepalives: u64,
}

struct Inner {
    account: AccountConfig,
    settings: PoolSettings,
    target: Arc<UpstreamTarget>,
    greeting: watch::Sender<Option<Bytes>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    state: Mutex<State>,
    next_id: AtomicU64,
    counters: Counters,
    metrics: Arc<Metrics>,
    /// Bumped whenever sessions or waiters change, for [`Pool::wait_for`].
    changed: watch::Sender<()>,
}

/// A snapshot of a pool's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub live: usize,
    /// Logged-in sessions with nothing in flight.
    pub idle: usize,
    pub connecting: usize,
    pub waiting: usize,
    /// `pool_max`, or less while held down after a 2502.
    pub effective_max: usize,
    /// Failed attempts to open a session since the last success.
    pub consecutive_failures: u32,
    /// Sessions that ended abnormally and are not yet replaced.
    pub dead: usize,
    pub pool_min: usize,
    pub pool_max: usize,
    pub unhealthy: Option<String>,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// Creates the pool and starts opening its `pool_min` sessions. Session tasks are spawned on
    /// `tasks` and end when `shutdown` is cancelled (after a `<logout>`).
    pub fn start(
        account: AccountConfig,
        settings: PoolSettings,
        target: Arc<UpstreamTarget>,
        greeting: watch::Sender<Option<Bytes>>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Pool {
        let state = State {
            min: account.pool_min,
            max: account.pool_max,
            ..State::default()
        };
        let inner = Arc::new(Inner {
            account,
            settings,
            target,
            greeting,
            shutdown,
            tasks,
            state: Mutex::new(state),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            metrics,
            changed: watch::Sender::new(()),
        });
        inner.maintain();
        Pool { inner }
    }

    pub fn clid(&self) -> &str {
        &self.inner.account.clid
    }

    pub fn stats(&self) -> PoolStats {
        let mut st = self.inner.state();
        let effective_max = self.inner.effective_max(&mut st);
        PoolStats {
            live: st.live,
            idle: st
                .sessions
                .values()
                .filter(|s| s.in_flight.load(Ordering::Relaxed) == 0)
                .count(),
            connecting: st.connecting,
            waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
            effective_max,
            consecutive_failures: st.failures,
            dead: st.dead,
            pool_min: st.min,
            pool_max: st.max,
            unhealthy: st.unhealthy.clone(),
        }
    }

    /// The pool as JSON, for the admin endpoint's `/status`.
    pub fn status(&self) -> serde_json::Value {
        let stats = self.stats();
        let counters = self.counters();
        let st = self.inner.state();
        let mut sessions: Vec<_> = st
            .sessions
            .iter()
            .map(|(id, info)| {
                serde_json::json!({
                    "id": id,
                    "age_seconds": info.born.elapsed().as_secs(),
                    "commands": info.served.load(Ordering::Relaxed),
                    "in_flight": info.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect();
        sessions.sort_by_key(|v| v["id"].as_u64());
        serde_json::json!({
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
            "last_error": st.last_error,
            "sessions": sessions,
            "counters": {
                "forwarded": counters.forwarded,
                "handoffs": counters.handoffs,
                "resent_not_executed": counters.resent_not_executed,
                "resent_queries": counters.resent_queries,
                "refused_replays": counters.refused_replays,
                "exhausted": counters.exhausted,
                "sessions_opened": counters.sessions_opened,
                "open_failures": counters.open_failures,
                "sessions_lost": counters.sessions_lost,
                "sessions_retired": counters.sessions_retired,
                "keepalives": counters.keepalives,
            },
        })
    }

    /// Applies new pool sizes: opens sessions up to the new minimum at once, and retires sessions
    /// above the new maximum (idle ones first, busy ones after their current command).
    pub fn resize(&self, min: usize, max: usize) {
        {
            let mut st = self.inner.state();
            st.min = min;
            st.max = max;
            let excess = st.live.saturating_sub(max);
            let idle: Vec<u64> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.in_flight.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id)
                .collect();
            let mut victims: Vec<u64> = idle.into_iter().take(excess).collect();
            let mut others: Vec<u64> = st
                .sessions
                .keys()
                .copied()
                .filter(|id| !victims.contains(id))
                .collect();
            others.sort_unstable();
            victims.extend(others.into_iter().take(excess - victims.len()));
            for id in victims {
                if let Some(info) = st.sessions.get(&id) {
                    info.retire.cancel();
                }
            }
            info!(account = %self.inner.account.clid, min, max, retiring = excess, "pool resized");
        }
        self.inner.changed.send_replace(());
        self.inner.maintain();
    }

    pub fn counters(&self) -> PoolCounters {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolCounters {
            forwarded: get(&c.forwarded),
            handoffs: get(&c.handoffs),
            resent_not_executed: get(&c.resent_not_executed),
            resent_queries: get(&c.resent_queries),
            refused_replays: get(&c.refused_replays),
            exhausted: get(&c.exhausted),
            sessions_opened: get(&c.sessions_opened),
            open_failures: get(&c.open_failures),
            sessions_lost: get(&c.sessions_lost),
            sessions_retired: get(&c.sessions_retired),
            keepalives: get(&c.keepalives),
        }
    }

    /// Waits until the pool's sessions satisfy `pred` (e.g. "at least one logged in").
    pub async fn wait_for(&self, pred: impl Fn(&PoolStats) -> bool) {
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

    /// Sends `frame` on a free session and returns the registry's response, following the
    /// module's safety rule. `cltrid` is the command's clTRID, checked against the response;
    /// `is_query` says whether it may be sent again after a lost response. Each attempt waits at
    /// most `wait` for a free session.
    pub async fn forward(
        &self,
        frame: Bytes,
        cltrid: Option<&str>,
        is_query: bool,
        wait: Duration,
    ) -> Result<Reply, PoolError> {
        let counters = &self.inner.counters;
        let mut last_loss = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let mut lease = self.acquire(Instant::now() + wait, wait).await?;
            let (tx, rx) = oneshot::channel();
            let job = Job {
                frame: frame.clone(),
                cltrid: cltrid.map(str::to_owned),
                reply: tx,
            };
            let outcome = if lease.send(job).await {
                // Only a panicking session task drops a job it took: assume the worst.
                rx.await.unwrap_or_else(|_| {
                    Err(JobError::Exchange(ExchangeError::Lost(
                        "upstream session task ended".into(),
                    )))
                })
            } else {
                Err(JobError::NotSent)
            };
            match outcome {
                Ok(reply) => {
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(JobError::NotSent) => {
                    counters.handoffs.fetch_add(1, Ordering::Relaxed);
                    self.inner.count_retry("handoff");
                }
                Err(JobError::NotExecuted(why)) => {
                    counters.resent_not_executed.fetch_add(1, Ordering::Relaxed);
                    self.inner.count_retry("not_logged_in");
                    info!(cltrid = cltrid.unwrap_or(""), attempt, reason = %why, "command not executed; sending it on another session");
                }
                Err(JobError::Exchange(e)) if is_query => {
                    counters.resent_queries.fetch_add(1, Ordering::Relaxed);
                    self.inner.count_retry("lost_query");
                    warn!(cltrid = cltrid.unwrap_or(""), attempt, reason = %e, "query response lost; sending the query again");
                    last_loss = Some(e);
                }
                Err(JobError::Exchange(e)) => {
                    counters.refused_replays.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .metrics
                        .retries_refused
                        .get_or_create(&metrics::account(self.clid()))
                        .inc();
                    return Err(PoolError::Lost(e));
                }
            }
        }
        match last_loss {
            Some(e) => Err(PoolError::Lost(e)),
            None => {
                self.inner.count_exhausted();
                Err(PoolError::Exhausted(wait))
            }
        }
    }

    async fn acquire(&self, deadline: Instant, wait: Duration) -> Result<Lease, PoolError> {
        let asked = Instant::now();
        let result = self.acquire_inner(deadline, wait).await;
        if result.is_ok() {
            self.inner
                .metrics
                .queue_wait
                .get_or_create(&metrics::account(self.clid()))
                .observe(asked.elapsed().as_secs_f64());
        }
        result
    }

    async fn acquire_inner(&self, deadline: Instant, wait: Duration) -> Result<Lease, PoolError> {
        let mut rx = {
            let mut st = self.inner.state();
            if st.live == 0 {
                if let Some(reason) = &st.unhealthy {
                    return Err(PoolError::Unavailable(reason.clone()));
                }
            }
            while let Some(handle) = st.idle.pop_front() {
                if !handle.jobs.is_closed() {
                    return Ok(self.lease(handle));
                }
            }
            st.waiters.retain(|w| !w.is_closed());
            if st.waiters.len() >= self.inner.settings.queue_max {
                let waiting = st.waiters.len();
                drop(st);
                self.inner.count_exhausted();
                return Err(PoolError::QueueFull(waiting));
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            drop(st);
            self.inner.changed.send_replace(());
            self.inner.maintain();
            rx
        };
        tokio::select! {
            got = &mut rx => got.map(|h| self.lease(h)).map_err(|_| PoolError::ShuttingDown),
            _ = sleep_until(deadline) => {
                // A session may have been handed over just as the wait ran out: use it.
                rx.close();
                rx.try_recv().map(|h| self.lease(h)).map_err(|_| {
                    self.inner.count_exhausted();
                    PoolError::Exhausted(wait)
                })
            }
            _ = self.inner.shutdown.cancelled() => Err(PoolError::ShuttingDown),
        }
    }

    fn lease(&self, handle: SessionHandle) -> Lease {
        Lease {
            handle: Some(handle),
            pool: self.inner.clone(),
        }
    }
}

/// A session handed to one caller. Dropped unused (e.g. the caller was cancelled), it goes back to
/// the pool instead of being lost.
struct Lease {
    handle: Option<SessionHandle>,
    pool: Arc<Inner>,
}

impl Lease {
    /// False when the session ended before it could take the job (nothing was sent).
    async fn send(&mut self, job: Job) -> bool {
        match self.handle.take() {
            Some(handle) => handle.jobs.send(job).await.is_ok(),
            None => false,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.pool.release(handle);
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind; keep serving with them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn effective_max(&self, st: &mut State) -> usize {
        match st.capped {
            Some((cap, until)) if Instant::now() < until => cap.min(st.max),
            Some(_) => {
                st.capped = None;
                st.max
            }
            None => st.max,
        }
    }

    fn count_exhausted(&self) {
        self.counters.exhausted.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .pool_exhausted
            .get_or_create(&metrics::account(&self.account.clid))
            .inc();
    }

    fn count_retry(&self, kind: &'static str) {
        self.metrics
            .retries
            .get_or_create(&RetryLabel {
                account: self.account.clid.clone(),
                kind,
            })
            .inc();
    }

    fn count_login(&self, result: String) {
        self.metrics
            .logins
            .get_or_create(&ResultLabel {
                account: self.account.clid.clone(),
                result,
            })
            .inc();
    }

    /// Hands a free session to the longest waiting caller, or puts it back in the idle queue.
    fn release(&self, mut handle: SessionHandle) {
        let mut st = self.state();
        while let Some(waiter) = st.waiters.pop_front() {
            match waiter.send(handle) {
                Ok(()) => return,
                Err(back) => handle = back,
            }
        }
        st.idle.push_back(handle);
    }

    /// Opens sessions until `pool_min` exist, and more (up to the effective max) while callers
    /// wait and no session being opened would serve them.
    fn maintain(self: &Arc<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let (count, delay) = {
            let mut st = self.state();
            if st.unhealthy.is_some() {
                return;
            }
            let max = self.effective_max(&mut st);
            st.waiters.retain(|w| !w.is_closed());
            let total = st.connecting + st.live;
            let for_min = st.min.min(max).saturating_sub(total);
            let room = max.saturating_sub(total);
            let for_demand = st.waiters.len().saturating_sub(st.connecting).min(room);
            let count = for_min.max(for_demand);
            st.connecting += count;
            let reconnects = count.min(st.to_replace);
            st.to_replace -= reconnects;
            if count == 0 && st.connecting == 0 {
                // Nothing will replace what was lost: it is no longer "dead", just gone.
                st.dead = 0;
                st.to_replace = 0;
            }
            if reconnects > 0 {
                self.metrics
                    .reconnects
                    .get_or_create(&metrics::account(&self.account.clid))
                    .inc_by(reconnects as u64);
            }
            (count, backoff(st.failures))
        };
        for _ in 0..count {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let span = info_span!("upstream", account = %self.account.clid, session = id);
            self.tasks
                .spawn(run_session(self.clone(), id, delay).instrument(span));
        }
    }

    fn on_open_failed(self: &Arc<Self>, code: Option<u16>, error: Option<String>) {
        self.counters.open_failures.fetch_add(1, Ordering::Relaxed);
        if error.is_some() {
            self.count_login(code.map_or_else(|| "error".to_string(), |c| c.to_string()));
        }
        let mut hold_until = None;
        {
            let mut st = self.state();
            st.connecting -= 1;
            st.failures = st.failures.saturating_add(1);
            if error.is_some() {
                st.to_replace += 1;
                st.last_error = error;
            }
            match code {
                Some(2200) => {
                    st.login_refusals += 1;
                    if st.login_refusals >= MAX_LOGIN_REFUSALS {
                        let reason = format!(
                            "the registry refused login with 2200 {} times in a row; not retrying until restart (check the password)",
                            st.login_refusals
                        );
                        error!(account = %self.account.clid, "{reason}");
                        st.unhealthy = Some(reason);
                    }
                }
                Some(2502) => {
                    let cap = st.live.max(1);
                    let hold = self.settings.session_limit_hold;
                    warn!(account = %self.account.clid, cap, ?hold, "registry session limit reached (2502): holding the account at {cap} session(s)");
                    st.capped = Some((cap, Instant::now() + hold));
                    hold_until = Some(hold);
                }
                _ => {}
            }
        }
        if let Some(hold) = hold_until {
            // Nothing else may happen when the hold ends: look at the pool again then.
            let pool = self.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = sleep(hold) => pool.maintain(),
                    _ = pool.shutdown.cancelled() => {}
                }
            });
        }
        self.changed.send_replace(());
        self.maintain();
    }

    /// A session logged in; it offers `slots` places for commands (its pipeline depth).
    fn on_ready(self: &Arc<Self>, handle: SessionHandle, slots: usize, info: SessionInfo) {
        self.counters
            .sessions_opened
            .fetch_add(1, Ordering::Relaxed);
        self.count_login("1000".to_string());
        let first = {
            let mut st = self.state();
            st.connecting -= 1;
            st.live += 1;
            st.failures = 0;
            st.login_refusals = 0;
            st.dead = st.dead.saturating_sub(1);
            st.sessions.insert(handle.id, info);
            st.live == 1
        };
        if first {
            info!(account = %self.account.clid, "account ready: an upstream session is logged in");
        }
        for _ in 0..slots {
            self.release(handle.clone());
        }
        self.changed.send_replace(());
    }

    /// A logged-in session ended; `error` when it ended abnormally.
    fn on_gone(self: &Arc<Self>, id: u64, error: Option<String>) {
        let none_left = {
            let mut st = self.state();
            st.live -= 1;
            st.sessions.remove(&id);
            st.idle.retain(|h| !h.jobs.is_closed());
            st.to_replace += 1;
            if error.is_some() {
                st.dead += 1;
                st.last_error = error;
            }
            st.live == 0
        };
        if none_left && !self.shutdown.is_cancelled() {
            warn!(account = %self.account.clid, "account has no logged-in upstream session");
        }
        self.changed.send_replace(());
        self.maintain();
    }
}

/// No pause for the first attempt; then 100 ms doubling up to a cap, each drawn between half and
/// all of that so that sessions lost together do not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    backoff_ceiling(failures).mul_f64(0.5 + fastrand::f64() * 0.5)
}

fn backoff_ceiling(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_BACKOFF)
}

/// A command written on a session and not yet answered.
struct InFlight {
    reply: oneshot::Sender<Result<Reply, JobError>>,
    cltrid: Option<String>,
    /// When its answer is overdue.
    due: Instant,
}

/// The session is over with these commands written and unanswered: each may have run. The
/// caller re-sends queries and refuses to replay transforms.
fn fail_in_flight(in_flight: &mut VecDeque<InFlight>, why: &str) {
    for f in in_flight.drain(..) {
        let _ = f
            .reply
            .send(Err(JobError::Exchange(ExchangeError::Lost(format!(
                "session ended with the command in flight: {why}"
            )))));
    }
}

/// How a session's life ended.
enum End {
    Shutdown,
    Retire(&'static str),
    Dead(String),
}

/// The life of one upstream session: open (after `delay`), serve jobs one at a time, keep alive,
/// end.
async fn run_session(pool: Arc<Inner>, id: u64, delay: Duration) {
    if !delay.is_zero() {
        debug!(?delay, "waiting before reconnecting");
        tokio::select! {
            _ = sleep(delay) => {}
            _ = pool.shutdown.cancelled() => return pool.on_open_failed(None, None),
        }
    }
    let login_cltrid = format!("eppmux-login-{id}");
    let publish = |frame: Bytes| {
        pool.greeting.send_replace(Some(frame));
    };
    let opened = tokio::select! {
        r = Session::open(&pool.target, &pool.account, &login_cltrid, publish) => r,
        _ = pool.shutdown.cancelled() => return pool.on_open_failed(None, None),
    };
    let mut session = match opened {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, result_code = e.login_code(), "upstream session could not be opened");
            return pool.on_open_failed(e.login_code(), Some(e.to_string()));
        }
    };
    info!(peer = ?session.peer, "upstream session logged in");

    let lifecycle = pool.account.lifecycle;
    let depth = lifecycle.pipeline_depth.max(1);
    let (tx, mut rx) = mpsc::channel::<Job>(depth);
    let handle = SessionHandle { id, jobs: tx };
    let born = Instant::now();
    let served_counter = Arc::new(AtomicU64::new(0));
    let in_flight_gauge = Arc::new(AtomicUsize::new(0));
    let retire = CancellationToken::new();
    pool.on_ready(
        handle.clone(),
        depth,
        SessionInfo {
            born,
            served: served_counter.clone(),
            in_flight: in_flight_gauge.clone(),
            retire: retire.clone(),
        },
    );
    let wait = pool.target.response_timeout;
    let far = born + Duration::from_secs(100 * 365 * 86_400);
    let mut last_used = born;
    let mut served = 0u64;
    // Commands written and not yet answered, oldest first: the registry answers in order.
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(depth);
    // Set when the session should end once nothing is in flight.
    let mut retiring: Option<&'static str> = None;
    let end = loop {
        in_flight_gauge.store(in_flight.len(), Ordering::Relaxed);
        let idle = in_flight.is_empty();
        if idle {
            if let Some(why) = retiring {
                break End::Retire(why);
            }
        }
        let keepalive_at = lifecycle.keepalive.map_or(far, |k| last_used + k);
        let retire_at = lifecycle.max_age.map_or(far, |a| born + a);
        let answer_due = in_flight.front().map_or(far, |f| f.due);
        let taking = in_flight.len() < depth && retiring.is_none() && !pool.shutdown.is_cancelled();
        tokio::select! {
            biased;
            // Shutdown waits for what is in flight (each answer within the response timeout).
            _ = pool.shutdown.cancelled(), if idle => break End::Shutdown,
            next = session.read_frame() => {
                // Nothing asked: whatever the registry sends ends the session.
                let Some(front) = in_flight.pop_front() else {
                    break End::Dead(describe_unsolicited(next));
                };
                last_used = Instant::now();
                match as_response(next, front.cltrid.as_deref()) {
                    Ok(reply) if epp::is_not_logged_in(reply.code, &reply.msg) => {
                        let why = format!("registry answered {} {:?}: it has forgotten this session", reply.code, reply.msg);
                        let _ = front.reply.send(Err(JobError::NotExecuted(why.clone())));
                        fail_in_flight(&mut in_flight, &why);
                        break End::Dead(why);
                    }
                    Ok(reply) if epp::is_closing(reply.code) => {
                        // A definite answer for the command (it failed); the session is over.
                        let why = format!("registry closed the session with {} {:?}", reply.code, reply.msg);
                        let _ = front.reply.send(Ok(reply));
                        fail_in_flight(&mut in_flight, &why);
                        break End::Dead(why);
                    }
                    Ok(reply) => {
                        let _ = front.reply.send(Ok(reply));
                        served += 1;
                        served_counter.store(served, Ordering::Relaxed);
                        if lifecycle.max_commands.is_some_and(|max| served >= max) {
                            retiring = Some("served its maximum number of commands");
                        } else {
                            pool.release(handle.clone());
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        let _ = front.reply.send(Err(JobError::Exchange(e)));
                        fail_in_flight(&mut in_flight, &why);
                        break End::Dead(why);
                    }
                }
            }
            _ = sleep_until(answer_due), if !idle => {
                let why = format!("no response within {wait:?}");
                fail_in_flight(&mut in_flight, &why);
                break End::Dead(why);
            }
            job = rx.recv(), if taking => {
                // We hold a sender ourselves, so the channel cannot close under us.
                let Some(job) = job else { break End::Shutdown };
                if in_flight.is_empty() {
                    if let Some(why) = session.pending_unsolicited() {
                        let _ = job.reply.send(Err(JobError::NotSent));
                        break End::Dead(why);
                    }
                }
                match session.send_command(job.frame).await {
                    Ok(()) => in_flight.push_back(InFlight {
                        reply: job.reply,
                        cltrid: job.cltrid,
                        due: Instant::now() + wait,
                    }),
                    Err(e) => {
                        let why = e.to_string();
                        let _ = job.reply.send(Err(JobError::Exchange(e)));
                        fail_in_flight(&mut in_flight, &why);
                        break End::Dead(why);
                    }
                }
            }
            _ = sleep_until(keepalive_at), if idle && lifecycle.keepalive.is_some() => match session.keepalive(wait).await {
                Ok(greeting) => {
                    last_used = Instant::now();
                    pool.counters.keepalives.fetch_add(1, Ordering::Relaxed);
                    pool.metrics.keepalives.get_or_create(&metrics::account(&pool.account.clid)).inc();
                    pool.greeting.send_replace(Some(greeting));
                    debug!("keepalive <hello> answered");
                }
                Err(e) => break End::Dead(e.to_string()),
            },
            _ = sleep_until(retire_at), if retiring.is_none() && lifecycle.max_age.is_some() => {
                retiring = Some("reached its maximum age");
            }
            _ = retire.cancelled(), if retiring.is_none() => retiring = Some("the pool was made smaller"),
        }
    };
    in_flight_gauge.store(0, Ordering::Relaxed);
    // Jobs handed over while we were ending were never written: their callers send them elsewhere.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(JobError::NotSent));
    }
    drop(handle);
    let logout_cltrid = format!("eppmux-logout-{id}");
    match end {
        End::Shutdown => {
            pool.on_gone(id, None);
            session.logout(&logout_cltrid, LOGOUT_WAIT).await;
            info!("upstream session logged out");
        }
        End::Retire(why) => {
            // Logged out before it stops counting, so the replacement never exceeds pool_max.
            info!(reason = why, served, age = ?born.elapsed(), "retiring upstream session");
            session.logout(&logout_cltrid, LOGOUT_WAIT).await;
            pool.counters
                .sessions_retired
                .fetch_add(1, Ordering::Relaxed);
            pool.on_gone(id, None);
        }
        End::Dead(why) => {
            warn!(reason = %why, served, "upstream session ended; it will be replaced");
            pool.counters.sessions_lost.fetch_add(1, Ordering::Relaxed);
            pool.on_gone(id, Some(why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{backoff, backoff_ceiling};
    use std::time::Duration;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(backoff_ceiling(40), Duration::from_secs(30));
        for failures in 1..20 {
            let b = backoff(failures);
            let ceiling = backoff_ceiling(failures);
            assert!(
                b >= ceiling / 2 && b <= ceiling,
                "{b:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }
}
