//! The bookkeeping of one account's upstream sessions, with no I/O and no clock of its own: every
//! event takes `now` and returns the [`Action`]s the driver (`pool/mod.rs`) carries out — open a
//! session, hand a session to a waiting command, refuse a waiter, retire a session. Keeping it
//! pure makes each rule below a unit test with explicit instants (at the end of this file).
//!
//! What it decides:
//! - **where a command goes**: the eligible session with the fewest commands in flight (an idle
//!   session before a busy session's free pipeline slot), the longest-idle one among equals.
//!   Eligible means logged in, not retiring, below its pipeline depth and below its command
//!   limit. Commands that find none wait first come first served; retries wait at the front.
//! - **when sessions open**: up to `pool_min` at once, more while commands outnumber sessions (up
//!   to the effective maximum), one at a time after a failure and only after a jittered backoff,
//!   and never faster than the login budget allows.
//! - **when sessions retire**: after `max_commands` commands *written*, when the pool shrinks,
//!   and when a session finishes logging in above the maximum (a shrink while it was opening).
//!   A retiring session takes nothing new and is told to log out once nothing is in flight.
//! - **what login refusals mean**: three 2200s in a row stop the account; a 2502 shortly after
//!   eppmux itself dropped a session is the registry still counting that session (retried with
//!   backoff), otherwise the registry's cap is below `pool_max` and the account is held at its
//!   live count for `session_limit_hold`.
//! - **the command rate limit**: commands wait in the queue for a token, never refused for it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

mod reconfigure;
mod settle;
#[cfg(test)]
mod tests;
mod timing;
mod types;

use reconfigure::Rotation;
use timing::{backoff, Bucket, EPSILON};
pub use types::{Action, Counters, Ended, Grant, Limits, OpenFailure, Refusal, SessionView, Stats};

pub type SessionId = u64;
pub type WaiterId = u64;

/// Consecutive 2200 login answers after which the account stops trying (each `<login>` answered
/// 2200 counts, the second one a session may send on the same connection included).
const MAX_LOGIN_REFUSALS: u32 = 3;
/// How long after eppmux dropped a session (closed it without `<logout>`) a 2502 is presumed to
/// be the registry still counting that session rather than a cap below `pool_max`: registries
/// free a session when they notice its TCP connection closed, which can take a while when the
/// registry was busy with the command that timed out.
const DROP_MEMORY: Duration = Duration::from_secs(60);
/// 2502s in a row retried with backoff (about 6 s in all) before the account is held anyway.
const TRANSIENT_2502_RETRIES: u32 = 6;

#[derive(Debug, Clone)]
enum Slot {
    /// Logging in; true when with credentials a reload has replaced since.
    Opening(bool),
    Live(Live),
}

#[derive(Debug, Clone)]
struct Live {
    born: Instant,
    /// Commands handed to it and not yet answered (a handed slot not yet written counts).
    in_flight: usize,
    /// Commands handed to it in all: `max_commands` limits what is written, not what is answered.
    written: u64,
    /// Takes nothing new; logs out once `in_flight` is 0.
    retiring: bool,
    /// The [`Action::Retire`] was given.
    retire_sent: bool,
    /// When `in_flight` last fell to 0: among idle sessions the longest idle goes first, which
    /// spreads commands (and so keepalive needs) over the sessions.
    free_since: Instant,
    /// Logged in with credentials a reload has replaced since: replaced in turn.
    stale: bool,
}

/// The bookkeeping of one account's sessions. See the module docs.
#[derive(Debug)]
pub struct PoolCore {
    limits: Limits,
    sessions: BTreeMap<SessionId, Slot>,
    /// Commands waiting, oldest first, with their size.
    waiters: VecDeque<(WaiterId, usize)>,
    waiting_bytes: usize,
    next_id: SessionId,
    /// Failed opens since the last success: drives the backoff, and while non-zero at most one
    /// session opens at a time.
    failures: u32,
    /// No session opens before this (the backoff after a failure).
    backoff_until: Option<Instant>,
    login_refusals: u32,
    unhealthy: Option<String>,
    /// After a 2502 with no own drop to explain it: at most this many sessions until then.
    capped: Option<(usize, Instant)>,
    /// When eppmux last lost a session without logging it out.
    last_drop: Option<Instant>,
    transient_2502: u32,
    logins: Bucket,
    /// Set while opening waits for the budget (counted once per wait).
    budget_blocked: bool,
    commands: Option<Bucket>,
    /// The waiter last counted as held back by the command rate limit.
    throttled_head: Option<WaiterId>,
    closing: bool,
    /// While sessions opened with replaced credentials remain.
    rotation: Option<Rotation>,
    /// Open one session at a time (a password change is pending): see [`PoolCore::set_serial_logins`].
    serial_logins: bool,
    dead: usize,
    /// Sessions that ended or failed to open: the next ones opened are reconnects.
    to_replace: usize,
    last_error: Option<String>,
    counters: Counters,
    /// Earliest moment at which something may change without an event: backoff over, budget
    /// refilled, hold over, a command token. The driver ticks then.
    wake: Option<Instant>,
    rng: fastrand::Rng,
}

impl PoolCore {
    /// A pool with no session yet; call [`PoolCore::start`] to open the first ones. `seed` feeds
    /// the backoff jitter.
    pub fn new(limits: Limits, now: Instant, seed: u64) -> PoolCore {
        let logins = Bucket::new(
            limits.max.max(1) as f64,
            f64::from(limits.login_rate()) / 60.0,
            now,
        );
        let commands = limits
            .commands_per_second
            .map(|rate| Bucket::new(rate.max(1.0), rate, now));
        PoolCore {
            limits,
            sessions: BTreeMap::new(),
            waiters: VecDeque::new(),
            waiting_bytes: 0,
            next_id: 1,
            failures: 0,
            backoff_until: None,
            login_refusals: 0,
            unhealthy: None,
            capped: None,
            last_drop: None,
            transient_2502: 0,
            logins,
            budget_blocked: false,
            commands,
            throttled_head: None,
            closing: false,
            rotation: None,
            serial_logins: false,
            dead: 0,
            to_replace: 0,
            last_error: None,
            counters: Counters::default(),
            wake: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.settled(now, Vec::new())
    }

    /// A command of `bytes` bytes wants a session. `front`: it is a retry, which has waited
    /// already and goes to the head of the queue (and is not refused for a full queue).
    pub fn request(
        &mut self,
        now: Instant,
        waiter: WaiterId,
        bytes: usize,
        front: bool,
    ) -> (Grant, Vec<Action>) {
        if self.live() == 0 {
            if let Some(reason) = &self.unhealthy {
                return (
                    Grant::Refused(Refusal::Unavailable(reason.clone())),
                    Vec::new(),
                );
            }
        }
        if front || self.waiters.is_empty() {
            if let Some(id) = self.pick() {
                if self.take_command_token(now) {
                    self.assign(id);
                    return (Grant::Session(id), self.settled(now, Vec::new()));
                }
            }
        }
        let full = self.waiters.len() >= self.limits.queue_max
            || self.waiting_bytes + bytes > self.limits.queue_max_bytes;
        if !front && full {
            let why = Refusal::QueueFull {
                commands: self.waiters.len(),
                bytes: self.waiting_bytes,
            };
            return (Grant::Refused(why), Vec::new());
        }
        self.waiting_bytes += bytes;
        if front {
            self.waiters.push_front((waiter, bytes));
        } else {
            self.waiters.push_back((waiter, bytes));
        }
        (Grant::Queued, self.settled(now, Vec::new()))
    }

    /// The waiter gave up (its wait ran out, or its client left). False when it was no longer
    /// queued: a session was handed to it already and must be used or given back.
    pub fn withdraw(&mut self, waiter: WaiterId) -> bool {
        match self.waiters.iter().position(|(w, _)| *w == waiter) {
            Some(i) => {
                if let Some((_, bytes)) = self.waiters.remove(i) {
                    self.waiting_bytes -= bytes;
                }
                true
            }
            None => false,
        }
    }

    /// A slot handed out was given back without a command written on it.
    pub fn unused(&mut self, now: Instant, id: SessionId) -> Vec<Action> {
        if let Some(Slot::Live(s)) = self.sessions.get_mut(&id) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.written = s.written.saturating_sub(1);
            if s.in_flight == 0 {
                s.free_since = now;
            }
        }
        self.settled(now, Vec::new())
    }

    /// A command on `id` is done (answered, or given up while the session goes on).
    pub fn answered(&mut self, now: Instant, id: SessionId) -> Vec<Action> {
        if let Some(Slot::Live(s)) = self.sessions.get_mut(&id) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.free_since = now;
            }
        }
        self.settled(now, Vec::new())
    }

    /// Session `id` logged in.
    pub fn ready(&mut self, now: Instant, id: SessionId) -> Vec<Action> {
        self.counters.sessions_opened += 1;
        self.failures = 0;
        self.backoff_until = None;
        self.login_refusals = 0;
        self.transient_2502 = 0;
        // A login went through: whatever stopped the account after repeated 2200s is over.
        if self.unhealthy.take().is_some() {
            info!("a login went through: the account opens sessions again");
        }
        self.dead = self.dead.saturating_sub(1);
        let max = self.effective_max(now);
        // A shrink while it was opening: log it out again rather than exceed the maximum.
        let surplus = self.live() >= max;
        let stale = matches!(self.sessions.get(&id), Some(Slot::Opening(true)));
        if surplus {
            info!(
                session = id,
                max, "session logged in above the pool maximum (the pool shrank); retiring it"
            );
        } else if self.live() == 0 {
            info!("account ready: an upstream session is logged in");
        }
        self.sessions.insert(
            id,
            Slot::Live(Live {
                born: now,
                in_flight: 0,
                written: 0,
                retiring: surplus,
                retire_sent: false,
                free_since: now,
                stale,
            }),
        );
        self.settled(now, Vec::new())
    }

    /// Session `id` did not open; `error` says why (None when cancelled).
    pub fn open_failed(
        &mut self,
        now: Instant,
        id: SessionId,
        why: OpenFailure,
        error: Option<String>,
    ) -> Vec<Action> {
        self.sessions.remove(&id);
        let mut out = Vec::new();
        if why == OpenFailure::Cancelled {
            return self.settled(now, out);
        }
        self.counters.open_failures += 1;
        self.failures = self.failures.saturating_add(1);
        self.to_replace += 1;
        if error.is_some() {
            self.last_error = error;
        }
        if let OpenFailure::Refused {
            code,
            failed_logins,
        } = why
        {
            self.login_refusals += failed_logins;
            if failed_logins > 0 && self.login_refusals >= MAX_LOGIN_REFUSALS {
                out.extend(self.stop_account());
            }
            if code == 2502 {
                self.on_session_limit(now);
            }
        }
        let pause = backoff(self.failures, &mut self.rng);
        self.backoff_until = Some(now + pause);
        self.settled(now, out)
    }

    /// Repeated 2200s: no more logins until the password changes (registries lock accounts
    /// after a few failed logins). Waiters are refused when no session is left to serve them.
    fn stop_account(&mut self) -> Vec<Action> {
        let reason = format!(
            "the registry refused login with 2200 {} times in a row; not retrying until the password changes (check it, then SIGHUP or restart)",
            self.login_refusals
        );
        error!("{reason}");
        self.unhealthy = Some(reason.clone());
        if self.live() > 0 {
            return Vec::new();
        }
        self.waiting_bytes = 0;
        let refusal = Refusal::Unavailable(reason);
        self.waiters
            .drain(..)
            .map(|(waiter, _)| Action::Refuse {
                waiter,
                why: refusal.clone(),
            })
            .collect()
    }

    /// A 2502 at login: the registry counts as many sessions of ours as it allows.
    fn on_session_limit(&mut self, now: Instant) {
        let own_drop = self
            .last_drop
            .is_some_and(|at| now.saturating_duration_since(at) < DROP_MEMORY);
        if own_drop && self.transient_2502 < TRANSIENT_2502_RETRIES {
            self.transient_2502 += 1;
            warn!(
                attempt = self.transient_2502,
                "registry session limit (2502) shortly after eppmux dropped a session: the registry still counts it; retrying with backoff"
            );
            return;
        }
        self.transient_2502 = 0;
        let cap = self.live().max(1);
        let hold = self.limits.session_limit_hold;
        warn!(
            cap,
            ?hold,
            "registry session limit reached (2502): holding the account at {cap} session(s)"
        );
        self.capped = Some((cap, now + hold));
    }

    /// A login outside the pool's sessions (a reload's trial of new credentials) takes from the
    /// same budget: whatever logs in as this account counts. Err: when the next one is there.
    pub fn take_login(&mut self, now: Instant) -> Result<(), Instant> {
        if self.logins.take(now) {
            return Ok(());
        }
        self.counters.login_budget_waits += 1;
        Err(self.logins.ready_at())
    }

    /// A session's `<login>` was answered `code` and its passwords say to try the other one on
    /// the same connection. That second `<login>` is a login like any other: it takes from the
    /// budget, and it is not sent when a 2200 to it would pass the stop after repeated 2200s.
    /// True: send it. (The 2200s are counted when the open ends, by [`PoolCore::open_failed`].)
    ///
    /// # Race window
    /// Sessions opening together each get their first answer before any open has ended and been
    /// counted: only a session opening alone tries the other password, or several would each
    /// spend two failed logins. The others fail with their first answer; the failure makes the
    /// next opens one at a time, and the first of them tries it.
    pub fn login_again(&mut self, now: Instant, code: u16) -> bool {
        // The refusals so far, this open's 2200 and one to the second `<login>` must not pass
        // the stop between them.
        if self.login_refusals + u32::from(code == 2200) + 1 > MAX_LOGIN_REFUSALS {
            return false;
        }
        if self.opening() > 1 {
            return false;
        }
        if !self.logins.take(now) {
            self.counters.login_budget_waits += 1;
            return false;
        }
        true
    }

    /// Logins one at a time (a password change is pending: see `upstream::password`).
    pub fn set_serial_logins(&mut self, on: bool) {
        self.serial_logins = on;
    }

    /// Session `id` decided to retire by itself (maximum age).
    pub fn retiring(&mut self, now: Instant, id: SessionId) -> Vec<Action> {
        if let Some(Slot::Live(s)) = self.sessions.get_mut(&id) {
            s.retiring = true;
        }
        self.settled(now, Vec::new())
    }

    /// Logged-in session `id` is over.
    pub fn ended(
        &mut self,
        now: Instant,
        id: SessionId,
        how: Ended,
        error: Option<String>,
    ) -> Vec<Action> {
        if self.sessions.remove(&id).is_none() {
            return Vec::new();
        }
        match how {
            Ended::Retired => self.counters.sessions_retired += 1,
            Ended::Lost => {
                self.counters.sessions_lost += 1;
                self.dead += 1;
                self.last_drop = Some(now);
            }
            Ended::Shutdown => {}
        }
        if how != Ended::Shutdown {
            self.to_replace += 1;
        }
        if error.is_some() {
            self.last_error = error;
        }
        if self.live() == 0 && !self.closing {
            warn!("account has no logged-in upstream session");
        }
        self.settled(now, Vec::new())
    }

    /// Time passed: backoffs, holds and buckets may allow something now.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.settled(now, Vec::new())
    }

    /// Shutting down: nothing opens any more.
    pub fn close(&mut self) {
        self.closing = true;
        self.wake = None;
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        self.wake
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The driver's own counts (forwarded, re-sent, exhausted…) are kept here too, so that every
    /// pool counter lives in one struct.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn stats(&mut self, now: Instant) -> Stats {
        let effective_max = self.effective_max(now);
        let idle = self
            .live_sessions()
            .filter(|s| s.in_flight == 0 && !s.retiring)
            .count();
        self.logins.refill(now);
        let login_budget_wait = self
            .budget_blocked
            .then(|| self.logins.ready_at().saturating_duration_since(now));
        let stale = self
            .sessions
            .values()
            .filter(|slot| {
                matches!(
                    slot,
                    Slot::Opening(true) | Slot::Live(Live { stale: true, .. })
                )
            })
            .count();
        Stats {
            stale,
            live: self.live(),
            idle,
            connecting: self.opening(),
            waiting: self.waiters.len(),
            effective_max,
            consecutive_failures: self.failures,
            dead: self.dead,
            pool_min: self.limits.min,
            pool_max: self.limits.max,
            unhealthy: self.unhealthy.clone(),
            login_tokens: (self.logins.tokens + EPSILON).floor() as u32,
            login_budget_wait,
        }
    }

    pub fn sessions(&self, now: Instant) -> Vec<SessionView> {
        self.sessions
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Live(s) => Some(SessionView {
                    id: *id,
                    age: now.saturating_duration_since(s.born),
                    commands: s.written,
                    in_flight: s.in_flight,
                    retiring: s.retiring,
                    stale: s.stale,
                }),
                Slot::Opening(_) => None,
            })
            .collect()
    }

    // --- internals -------------------------------------------------------------------------

    fn live_sessions(&self) -> impl Iterator<Item = &Live> {
        self.sessions.values().filter_map(|slot| match slot {
            Slot::Live(s) => Some(s),
            Slot::Opening(_) => None,
        })
    }

    fn live(&self) -> usize {
        self.live_sessions().count()
    }

    fn opening(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| matches!(s, Slot::Opening(_)))
            .count()
    }

    fn effective_max(&mut self, now: Instant) -> usize {
        match self.capped {
            Some((cap, until)) if now < until => cap.min(self.limits.max),
            Some(_) => {
                self.capped = None;
                self.limits.max
            }
            None => self.limits.max,
        }
    }

    /// The session the next command goes to: eligible, fewest in flight, longest idle.
    fn pick(&self) -> Option<SessionId> {
        self.sessions
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Live(s)
                    if !s.retiring
                        && s.in_flight < self.limits.depth
                        && self.limits.max_commands.is_none_or(|m| s.written < m) =>
                {
                    Some((s.in_flight, s.free_since, *id))
                }
                _ => None,
            })
            .min()
            .map(|(_, _, id)| id)
    }

    fn assign(&mut self, id: SessionId) {
        let max_commands = self.limits.max_commands;
        if let Some(Slot::Live(s)) = self.sessions.get_mut(&id) {
            s.in_flight += 1;
            s.written += 1;
            if max_commands.is_some_and(|m| s.written >= m) {
                s.retiring = true;
            }
        }
    }

    fn take_command_token(&mut self, now: Instant) -> bool {
        self.commands.as_mut().is_none_or(|b| b.take(now))
    }
}
