//! The upstream sessions of one registrar account: `pool_min` opened at start, more opened on
//! demand up to `pool_max`, each one a task that owns its TLS stream and takes one job at a time.
//!
//! Idle sessions wait in a queue; commands that find none wait, first come first served, for the
//! next session that frees up, for at most the configured queue wait. The bookkeeping lives under
//! one std `Mutex` that is never held across an `.await`.
//!
//! Safety rule carried by [`ForwardError`]: a command is handed to another session only when it
//! certainly never reached the registry ([`ForwardError::NotSent`]); a command whose response was
//! lost is reported to the caller and never re-sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::config::AccountConfig;
use crate::upstream::{ExchangeError, Reply, Session, UpstreamTarget};

/// How often a command is moved to another session because the one it was handed to died before
/// taking it. More than this in one wait means the registry is failing faster than we can use it.
const MAX_HANDOFFS: usize = 3;
/// Cap of the pause between failed attempts to open a session.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const LOGOUT_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no registry session became free within {0:?}")]
    Exhausted(Duration),
    #[error(transparent)]
    Lost(#[from] ExchangeError),
    #[error("shutting down")]
    ShuttingDown,
}

/// What a session answers to a job.
#[derive(Debug)]
enum ForwardError {
    /// The session ended before writing the command: it is safe to send it elsewhere.
    NotSent,
    Exchange(ExchangeError),
}

struct Job {
    frame: Bytes,
    cltrid: Option<String>,
    reply: oneshot::Sender<Result<Reply, ForwardError>>,
}

#[derive(Clone)]
struct SessionHandle {
    jobs: mpsc::Sender<Job>,
}

#[derive(Default)]
struct State {
    idle: VecDeque<SessionHandle>,
    waiters: VecDeque<oneshot::Sender<SessionHandle>>,
    /// Sessions being opened (including those waiting out a backoff).
    connecting: usize,
    /// Sessions logged in, idle or busy.
    live: usize,
    /// Consecutive failures to open a session; drives the backoff.
    failures: u32,
}

struct Inner {
    account: AccountConfig,
    target: Arc<UpstreamTarget>,
    greeting: watch::Sender<Option<Bytes>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Bumped whenever a session opens, fails to open or ends, for [`Pool::wait_for`].
    changed: watch::Sender<()>,
}

/// A snapshot of a pool's sessions, for logs, tests and (later) metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub live: usize,
    pub idle: usize,
    pub connecting: usize,
    pub waiting: usize,
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
        target: Arc<UpstreamTarget>,
        greeting: watch::Sender<Option<Bytes>>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Pool {
        let inner = Arc::new(Inner {
            account,
            target,
            greeting,
            shutdown,
            tasks,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            changed: watch::Sender::new(()),
        });
        inner.maintain();
        Pool { inner }
    }

    pub fn clid(&self) -> &str {
        &self.inner.account.clid
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.inner.state();
        PoolStats {
            live: st.live,
            idle: st.idle.len(),
            connecting: st.connecting,
            waiting: st.waiters.iter().filter(|w| !w.is_closed()).count(),
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

    /// Sends `frame` on a free session and returns the registry's response. Waits at most
    /// `wait` for a free session. `cltrid` is the command's clTRID, checked against the response.
    pub async fn forward(
        &self,
        frame: Bytes,
        cltrid: Option<&str>,
        wait: Duration,
    ) -> Result<Reply, PoolError> {
        let deadline = Instant::now() + wait;
        for _ in 0..MAX_HANDOFFS {
            let mut lease = self.acquire(deadline, wait).await?;
            let (tx, rx) = oneshot::channel();
            let job = Job {
                frame: frame.clone(),
                cltrid: cltrid.map(str::to_owned),
                reply: tx,
            };
            if !lease.send(job).await {
                continue;
            }
            match rx.await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(ForwardError::NotSent)) => continue,
                Ok(Err(ForwardError::Exchange(e))) => return Err(PoolError::Lost(e)),
                // Only a panicking session task drops a job it took: assume the worst.
                Err(_) => {
                    return Err(PoolError::Lost(ExchangeError::Lost(
                        "upstream session task ended".into(),
                    )))
                }
            }
        }
        Err(PoolError::Exhausted(wait))
    }

    async fn acquire(&self, deadline: Instant, wait: Duration) -> Result<Lease, PoolError> {
        let mut rx = {
            let mut st = self.inner.state();
            while let Some(handle) = st.idle.pop_front() {
                if !handle.jobs.is_closed() {
                    return Ok(self.lease(handle));
                }
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            drop(st);
            self.inner.maintain();
            rx
        };
        tokio::select! {
            got = &mut rx => got.map(|h| self.lease(h)).map_err(|_| PoolError::ShuttingDown),
            _ = sleep_until(deadline) => {
                // A session may have been handed over just as the wait ran out: use it.
                rx.close();
                rx.try_recv().map(|h| self.lease(h)).map_err(|_| PoolError::Exhausted(wait))
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

    /// Opens sessions until `pool_min` exist, and more (up to `pool_max`) while callers wait and
    /// no session being opened would serve them.
    fn maintain(self: &Arc<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let (count, delay) = {
            let mut st = self.state();
            st.waiters.retain(|w| !w.is_closed());
            let total = st.connecting + st.live;
            let for_min = self.account.pool_min.saturating_sub(total);
            let room = self.account.pool_max.saturating_sub(total);
            let for_demand = st.waiters.len().saturating_sub(st.connecting).min(room);
            let count = for_min.max(for_demand);
            st.connecting += count;
            (count, backoff(st.failures))
        };
        for _ in 0..count {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let span = info_span!("upstream", account = %self.account.clid, session = id);
            self.tasks
                .spawn(run_session(self.clone(), id, delay).instrument(span));
        }
    }

    fn on_open_failed(self: &Arc<Self>) {
        {
            let mut st = self.state();
            st.connecting -= 1;
            st.failures = st.failures.saturating_add(1);
        }
        self.changed.send_replace(());
        self.maintain();
    }

    fn on_ready(self: &Arc<Self>, handle: SessionHandle) {
        {
            let mut st = self.state();
            st.connecting -= 1;
            st.live += 1;
            st.failures = 0;
        }
        self.release(handle);
        self.changed.send_replace(());
    }

    fn on_gone(self: &Arc<Self>) {
        {
            let mut st = self.state();
            st.live -= 1;
            st.idle.retain(|h| !h.jobs.is_closed());
        }
        self.changed.send_replace(());
        self.maintain();
    }
}

/// No pause for the first attempt; then 100 ms, doubling, capped.
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = (failures - 1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_BACKOFF)
}

/// The life of one upstream session: open (after `delay`), serve jobs one at a time, end.
async fn run_session(pool: Arc<Inner>, id: u64, delay: Duration) {
    if !delay.is_zero() {
        tokio::select! {
            _ = sleep(delay) => {}
            _ = pool.shutdown.cancelled() => return pool.on_open_failed(),
        }
    }
    let login_cltrid = format!("eppmux-login-{id}");
    let publish = |frame: Bytes| {
        pool.greeting.send_replace(Some(frame));
    };
    let opened = tokio::select! {
        r = Session::open(&pool.target, &pool.account, &login_cltrid, publish) => r,
        _ = pool.shutdown.cancelled() => return pool.on_open_failed(),
    };
    let mut session = match opened {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, result_code = e.login_code(), "upstream session could not be opened");
            return pool.on_open_failed();
        }
    };
    info!(peer = ?session.peer, "upstream session logged in");

    let (tx, mut rx) = mpsc::channel::<Job>(1);
    let handle = SessionHandle { jobs: tx };
    pool.on_ready(handle.clone());
    let wait = pool.target.response_timeout;
    let ended = loop {
        tokio::select! {
            biased;
            _ = pool.shutdown.cancelled() => break None,
            job = rx.recv() => {
                // We hold a sender ourselves, so the channel cannot close under us.
                let Some(job) = job else { break None };
                match session.exchange(job.frame, job.cltrid.as_deref(), wait).await {
                    Ok(reply) => {
                        let _ = job.reply.send(Ok(reply));
                        pool.release(handle.clone());
                    }
                    Err(e) => {
                        let why = e.to_string();
                        let _ = job.reply.send(Err(ForwardError::Exchange(e)));
                        break Some(why);
                    }
                }
            }
            why = session.unsolicited() => break Some(why),
        }
    };
    // Jobs handed over while we were ending were never written: their callers may send them elsewhere.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(ForwardError::NotSent));
    }
    drop(handle);
    pool.on_gone();
    match ended {
        None => {
            session
                .logout(&format!("eppmux-logout-{id}"), LOGOUT_WAIT)
                .await;
            info!("upstream session logged out");
        }
        Some(why) => warn!(reason = %why, "upstream session ended; it will be replaced"),
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
