//! The driver of the pool's bookkeeping: feeds the core its events under the pool's lock, carries
//! out the actions it returns (spawn a session task, hand a session to a waiting command, tell a
//! session to retire), mirrors its counters into the metrics, runs the timer the core asks for,
//! and is the [`Owner`] every session task reports to.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use super::core::{Action, Counters, Ended, OpenFailure, PoolCore, Refusal, SessionId, WaiterId};
use super::{Inner, Link, PoolError, State};
use crate::metrics::{self, ResultLabel, RetryLabel};
use crate::upstream::run::{Ending, Job, Owner};
use crate::upstream::Credentials;

impl Inner {
    pub(super) fn credentials(&self) -> Arc<Credentials> {
        self.creds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain bookkeeping behind; keep serving with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds the core one event and carries out what it answers.
    pub(super) fn event(self: &Arc<Self>, f: impl FnOnce(&mut PoolCore, Instant) -> Vec<Action>) {
        self.with_state(|st, now| ((), f(&mut st.core, now)));
    }

    /// [`Inner::event`] for an event after which the passwords may have changed: a login was
    /// answered (it can accomplish a password change), or the credentials were replaced. Only
    /// then is whether a change is pending read into the core (logins one at a time while it
    /// is), which keeps the passwords' lock off the path of every command.
    pub(super) fn login_event<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State, Instant) -> (T, Vec<Action>),
    ) -> T {
        // Read before the state lock: the passwords are never locked inside it.
        let change_pending = {
            let creds = self.credentials();
            let passwords = creds.passwords.lock().unwrap_or_else(|p| p.into_inner());
            passwords.change_pending()
        };
        self.with_state(|st, now| {
            st.core.set_serial_logins(change_pending);
            f(st, now)
        })
    }

    /// [`Inner::event`] with the driver's state at hand too; returns what `f` returns.
    pub(super) fn with_state<T>(
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
    pub(super) fn count(self: &Arc<Self>, f: impl FnOnce(&mut Counters)) {
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
        let span = info_span!(parent: None, "upstream", account = %self.clid, session = id);
        self.parts
            .tasks
            .spawn(crate::upstream::run::run(id, self.clone()).instrument(span));
    }

    /// Mirrors what changed in the pool's counters into the Prometheus metrics.
    fn export_counts(&self, before: &Counters, after: &Counters) {
        let m = &self.parts.metrics;
        let clid = &self.clid;
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
                account: self.clid.clone(),
                result,
            })
            .inc();
    }

    pub(super) fn observe_wait(&self, asked: Instant) {
        self.parts
            .metrics
            .queue_wait
            .get_or_create(&metrics::account(&self.parts.registry, &self.clid))
            .observe(asked.elapsed().as_secs_f64());
    }

    pub(super) fn refused(self: &Arc<Self>, why: Refusal) -> PoolError {
        match why {
            Refusal::QueueFull { commands, bytes } => {
                self.count(|c| c.exhausted += 1);
                PoolError::QueueFull { commands, bytes }
            }
            Refusal::Unavailable(reason) => PoolError::Unavailable(reason),
        }
    }

    /// Takes waiter `waiter` out of the queue; false when a session was handed to it already.
    pub(super) fn withdraw(&self, waiter: WaiterId) -> bool {
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
pub(super) async fn timer(inner: Arc<Inner>) {
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
    fn credentials(&self) -> Arc<Credentials> {
        Inner::credentials(self)
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
        self.login_event(|st, now| {
            st.links.insert(id, Link { jobs, retire });
            ((), st.core.ready(now, id))
        });
    }

    fn login_refused(self: &Arc<Self>, code: u16, offered: bool) -> bool {
        self.count_login(code.to_string());
        offered && self.with_state(|st, now| (st.core.login_again(now, code), Vec::new()))
    }

    fn open_failed(self: &Arc<Self>, id: u64, refused: Option<(u16, u32)>, error: Option<String>) {
        let why = match (refused, &error) {
            (Some((code, failed_logins)), _) => OpenFailure::Refused {
                code,
                failed_logins,
            },
            (None, Some(_)) => OpenFailure::Error,
            (None, None) => OpenFailure::Cancelled,
        };
        // Refusals were counted as they came (`login_refused`); left to count is an open that
        // ended with no answer to its `<login>`.
        if why == OpenFailure::Error {
            self.count_login("error".into());
        }
        self.login_event(|st, now| ((), st.core.open_failed(now, id, why, error)));
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
