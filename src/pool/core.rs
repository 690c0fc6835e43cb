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

use serde::Serialize;
use tokio::time::Instant;
use tracing::{error, info, warn};

pub type SessionId = u64;
pub type WaiterId = u64;

/// Consecutive 2200 login answers after which the account stops trying.
const MAX_LOGIN_REFUSALS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long after eppmux dropped a session (closed it without `<logout>`) a 2502 is presumed to
/// be the registry still counting that session rather than a cap below `pool_max`: registries
/// free a session when they notice its TCP connection closed, which can take a while when the
/// registry was busy with the command that timed out.
const DROP_MEMORY: Duration = Duration::from_secs(60);
/// 2502s in a row retried with backoff (about 6 s in all) before the account is held anyway.
const TRANSIENT_2502_RETRIES: u32 = 6;
/// Token counts within this of a whole token count as one: float refill arithmetic must not
/// leave a wake-up that finds 0.999999 tokens and schedules itself again.
const EPSILON: f64 = 1e-9;

/// The limits the bookkeeping enforces; see `config::AccountConfig` for what each means.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub min: usize,
    pub max: usize,
    pub depth: usize,
    pub max_commands: Option<u64>,
    pub queue_max: usize,
    /// Bytes of commands waiting, at most (commands are held in memory while they wait).
    pub queue_max_bytes: usize,
    pub session_limit_hold: Duration,
    /// Login budget refill; `None`: twice `max` per minute.
    pub logins_per_minute: Option<u32>,
    pub commands_per_second: Option<f64>,
}

impl Limits {
    fn login_rate(&self) -> u32 {
        self.logins_per_minute.unwrap_or(2 * self.max as u32).max(1)
    }
}

/// Why a session did not open, as far as the bookkeeping cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// Shutting down: not a failure.
    Cancelled,
    /// The registry answered the login with this code.
    Refused(u16),
    /// Anything else: connect, TLS, a timeout, a broken greeting.
    Error,
}

/// How a logged-in session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Logged out after retiring.
    Retired,
    /// Lost: closed without `<logout>` (by eppmux after a fault, or by the registry).
    Lost,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start opening session `id`; `reconnect` when it replaces one that ended or failed.
    Open { id: SessionId, reconnect: bool },
    /// Give waiter `waiter` one command slot on `session`.
    Hand {
        waiter: WaiterId,
        session: SessionId,
    },
    /// The waiter will not get a session (the account stopped while it waited).
    Refuse { waiter: WaiterId, why: Refusal },
    /// The session has nothing in flight and takes nothing new: log it out.
    Retire(SessionId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Session(SessionId),
    /// Queued: an [`Action::Hand`] or [`Action::Refuse`] for this waiter comes later, unless it
    /// withdraws first.
    Queued,
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This many commands (of this many bytes) already wait.
    QueueFull { commands: usize, bytes: usize },
    /// The account cannot log in (repeated 2200).
    Unavailable(String),
}

/// Event counts since start, for `/status`, logs and tests. The one list of pool counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub forwarded: u64,
    /// Commands handed to another session because theirs ended before sending them.
    pub handoffs: u64,
    /// Commands sent again because the registry certainly did not run them ("not logged in").
    pub resent_not_executed: u64,
    /// Queries sent again after their response was lost.
    pub resent_queries: u64,
    /// Transforms whose response was lost and that were not replayed.
    pub refused_replays: u64,
    /// 2400 answers: no session within the wait, or the queue full.
    pub exhausted: u64,
    /// Answers the registry sent twice (same svTRID), dropped.
    pub duplicate_answers: u64,
    pub sessions_opened: u64,
    pub open_failures: u64,
    pub sessions_lost: u64,
    pub sessions_retired: u64,
    /// Sessions opened to replace one that ended or failed to open.
    pub reconnects: u64,
    pub keepalives: u64,
    /// Times opening a session had to wait for the login budget.
    pub login_budget_waits: u64,
    /// Commands that waited for the command rate limit.
    pub commands_throttled: u64,
}

/// A snapshot of the pool, for `/status`, `/readyz`, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
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
    /// Whole logins the budget allows right now.
    pub login_tokens: u32,
    /// When the budget allows the next login, if opening is waiting for it.
    pub login_budget_wait: Option<Duration>,
}

/// One session as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub id: SessionId,
    pub age: Duration,
    /// Commands handed to it (what `max_commands` counts).
    pub commands: u64,
    pub in_flight: usize,
    pub retiring: bool,
}

#[derive(Debug, Clone)]
enum Slot {
    Opening,
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
}

/// A token bucket: `capacity` at once, refilled at `per_sec`.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, per_sec: f64, now: Instant) -> Bucket {
        Bucket {
            capacity,
            per_sec,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.at {
            let earned = (now - self.at).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + earned).min(self.capacity);
            self.at = now;
        }
    }

    fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0 - EPSILON
    }

    fn take(&mut self, now: Instant) -> bool {
        let ok = self.available(now);
        if ok {
            self.tokens = (self.tokens - 1.0).max(0.0);
        }
        ok
    }

    /// When the next whole token is there.
    fn ready_at(&self) -> Instant {
        if self.tokens >= 1.0 - EPSILON {
            return self.at;
        }
        self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }

    fn reshape(&mut self, capacity: f64, per_sec: f64, now: Instant) {
        self.refill(now);
        self.capacity = capacity;
        self.per_sec = per_sec;
        self.tokens = self.tokens.min(capacity);
    }
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
        self.dead = self.dead.saturating_sub(1);
        let max = self.effective_max(now);
        // A shrink while it was opening: log it out again rather than exceed the maximum.
        let surplus = self.live() >= max;
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
        match why {
            OpenFailure::Refused(2200) => {
                self.login_refusals += 1;
                if self.login_refusals >= MAX_LOGIN_REFUSALS {
                    let reason = format!(
                        "the registry refused login with 2200 {} times in a row; not retrying until the password changes (check it, then SIGHUP or restart)",
                        self.login_refusals
                    );
                    error!("{reason}");
                    self.unhealthy = Some(reason.clone());
                    if self.live() == 0 {
                        self.waiting_bytes = 0;
                        for (waiter, _) in self.waiters.drain(..) {
                            out.push(Action::Refuse {
                                waiter,
                                why: Refusal::Unavailable(reason.clone()),
                            });
                        }
                    }
                }
            }
            OpenFailure::Refused(2502) => self.on_session_limit(now),
            _ => {}
        }
        let pause = backoff(self.failures, &mut self.rng);
        self.backoff_until = Some(now + pause);
        self.settled(now, out)
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

    /// New pool sizes: sessions above the new maximum retire (the least busy first, each after
    /// what it has in flight); below the new minimum, sessions open.
    pub fn resize(&mut self, now: Instant, min: usize, max: usize) -> Vec<Action> {
        self.limits.min = min;
        self.limits.max = max;
        let rate = f64::from(self.limits.login_rate()) / 60.0;
        self.logins.reshape(max.max(1) as f64, rate, now);
        let mut active: Vec<(usize, SessionId)> = self
            .sessions
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Live(s) if !s.retiring => Some((s.in_flight, *id)),
                _ => None,
            })
            .collect();
        active.sort_unstable();
        let excess = active.len().saturating_sub(max);
        for (_, id) in active.into_iter().take(excess) {
            if let Some(Slot::Live(s)) = self.sessions.get_mut(&id) {
                s.retiring = true;
            }
        }
        info!(min, max, retiring = excess, "pool resized");
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
        Stats {
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
                }),
                Slot::Opening => None,
            })
            .collect()
    }

    // --- internals -------------------------------------------------------------------------

    fn live_sessions(&self) -> impl Iterator<Item = &Live> {
        self.sessions.values().filter_map(|slot| match slot {
            Slot::Live(s) => Some(s),
            Slot::Opening => None,
        })
    }

    fn live(&self) -> usize {
        self.live_sessions().count()
    }

    fn opening(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| matches!(s, Slot::Opening))
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

    /// After every event: hand free slots to waiters, open what is missing, retire what is done,
    /// and work out when to look again.
    fn settled(&mut self, now: Instant, mut out: Vec<Action>) -> Vec<Action> {
        self.dispatch(now, &mut out);
        let open_wait = self.maintain(now, &mut out);
        for (id, slot) in self.sessions.iter_mut() {
            if let Slot::Live(s) = slot {
                if s.retiring && s.in_flight == 0 && !s.retire_sent {
                    s.retire_sent = true;
                    out.push(Action::Retire(*id));
                }
            }
        }
        let token_wait = match &self.commands {
            Some(bucket) if !self.waiters.is_empty() && self.pick().is_some() => {
                Some(bucket.ready_at())
            }
            _ => None,
        };
        let hold_end = self.capped.map(|(_, until)| until);
        self.wake = [open_wait, token_wait, hold_end]
            .into_iter()
            .flatten()
            .filter(|_| !self.closing)
            .min();
        out
    }

    fn dispatch(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(&(waiter, bytes)) = self.waiters.front() {
            let Some(id) = self.pick() else { break };
            if !self.take_command_token(now) {
                // A session is free, so this command waits for the rate limit: count it once.
                if self.throttled_head != Some(waiter) {
                    self.throttled_head = Some(waiter);
                    self.counters.commands_throttled += 1;
                }
                break;
            }
            self.waiters.pop_front();
            self.waiting_bytes -= bytes;
            self.assign(id);
            out.push(Action::Hand {
                waiter,
                session: id,
            });
        }
    }

    /// Opens what is missing; returns when opening more may become possible without an event.
    fn maintain(&mut self, now: Instant, out: &mut Vec<Action>) -> Option<Instant> {
        if self.closing || self.unhealthy.is_some() {
            return None;
        }
        let max = self.effective_max(now);
        let opening = self.opening();
        let live = self.live();
        let active = self.live_sessions().filter(|s| !s.retiring).count();
        // Retiring sessions still count against the maximum until they have logged out: the
        // registry counts them too.
        let total = opening + live;
        let room = max.saturating_sub(total);
        let for_min = self.limits.min.min(max).saturating_sub(total);
        // Waiters held back by the command rate limit do not need more sessions.
        let throttled = match self.commands.as_mut() {
            Some(bucket) => !bucket.available(now),
            None => false,
        };
        let waiting = if throttled { 0 } else { self.waiters.len() };
        let load: usize = self.live_sessions().map(|s| s.in_flight).sum::<usize>() + waiting;
        let for_demand = load.saturating_sub(active + opening);
        let mut want = for_min.max(for_demand).min(room);
        if self.failures > 0 {
            // While failing, probe with one session at a time.
            want = want.min(1usize.saturating_sub(opening));
        }
        if want == 0 {
            self.budget_blocked = false;
            if opening == 0 {
                // Nothing will replace what was lost: it is no longer "dead", just gone.
                self.dead = 0;
                self.to_replace = 0;
            }
            return None;
        }
        if let Some(until) = self.backoff_until {
            if now < until {
                return Some(until);
            }
        }
        for _ in 0..want {
            if !self.logins.take(now) {
                if !self.budget_blocked {
                    self.budget_blocked = true;
                    self.counters.login_budget_waits += 1;
                    warn!(
                        per_minute = self.limits.login_rate(),
                        "login budget exhausted: the next upstream login waits"
                    );
                }
                return Some(self.logins.ready_at());
            }
            self.budget_blocked = false;
            let id = self.next_id;
            self.next_id += 1;
            self.sessions.insert(id, Slot::Opening);
            let reconnect = self.to_replace > 0;
            if reconnect {
                self.to_replace -= 1;
                self.counters.reconnects += 1;
            }
            out.push(Action::Open { id, reconnect });
        }
        None
    }
}

/// No pause before the first attempt; then 100 ms doubling up to a cap, each drawn between half
/// and all of that so that sessions lost together do not reconnect in lockstep.
fn backoff(failures: u32, rng: &mut fastrand::Rng) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    backoff_ceiling(failures).mul_f64(0.5 + rng.f64() * 0.5)
}

fn backoff_ceiling(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min: usize, max: usize) -> Limits {
        Limits {
            min,
            max,
            depth: 1,
            max_commands: None,
            queue_max: 100,
            queue_max_bytes: 1 << 20,
            session_limit_hold: Duration::from_secs(300),
            logins_per_minute: Some(6000),
            commands_per_second: None,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn opens(actions: &[Action]) -> Vec<SessionId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Open { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn hands(actions: &[Action]) -> Vec<(WaiterId, SessionId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Hand { waiter, session } => Some((*waiter, *session)),
                _ => None,
            })
            .collect()
    }

    fn retires(actions: &[Action]) -> Vec<SessionId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Retire(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// A core with `n` logged-in sessions (ids 1..=n).
    fn with_live(lim: Limits, n: usize, t0: Instant) -> PoolCore {
        let mut core = PoolCore::new(lim, t0, 7);
        let ids = opens(&core.start(t0));
        assert!(ids.len() >= n, "start opened {ids:?}");
        for id in ids.into_iter().take(n) {
            core.ready(t0, id);
        }
        core
    }

    #[test]
    fn start_opens_pool_min_at_once() {
        let t0 = Instant::now();
        let mut core = PoolCore::new(limits(3, 5), t0, 1);
        assert_eq!(opens(&core.start(t0)), vec![1, 2, 3]);
        assert_eq!(core.stats(t0).connecting, 3);
    }

    #[test]
    fn demand_grows_the_pool_to_its_max_and_no_further() {
        let t0 = Instant::now();
        let mut core = with_live(limits(1, 3), 1, t0);
        assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
        let (g, actions) = core.request(t0, 2, 100, false);
        assert_eq!(g, Grant::Queued);
        assert_eq!(opens(&actions), vec![2], "one more session for the waiter");
        let (_, actions) = core.request(t0, 3, 100, false);
        assert_eq!(opens(&actions), vec![3]);
        let (_, actions) = core.request(t0, 4, 100, false);
        assert!(opens(&actions).is_empty(), "at pool_max: {actions:?}");
        assert_eq!(
            hands(&core.ready(t0, 2)),
            vec![(2, 2)],
            "first come first served"
        );
        assert_eq!(hands(&core.ready(t0, 3)), vec![(3, 3)]);
        assert_eq!(hands(&core.answered(t0, 1)), vec![(4, 1)]);
    }

    #[test]
    fn waiters_are_served_first_come_first_served_and_retries_go_first() {
        let t0 = Instant::now();
        let mut core = with_live(limits(1, 1), 1, t0);
        assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
        core.request(t0, 2, 100, false);
        core.request(t0, 3, 100, false);
        let (g, _) = core.request(t0, 9, 100, true);
        assert_eq!(g, Grant::Queued);
        assert_eq!(
            hands(&core.answered(t0, 1)),
            vec![(9, 1)],
            "the retry first"
        );
        assert_eq!(hands(&core.answered(t0, 1)), vec![(2, 1)]);
        assert!(core.withdraw(3), "a waiter that gives up leaves the queue");
        assert!(hands(&core.answered(t0, 1)).is_empty());
        assert!(!core.withdraw(3));
    }

    #[test]
    fn the_queue_is_bounded_but_retries_are_not_refused() {
        let t0 = Instant::now();
        let mut lim = limits(1, 1);
        lim.queue_max = 1;
        let mut core = with_live(lim, 1, t0);
        core.request(t0, 1, 100, false);
        assert_eq!(core.request(t0, 2, 100, false).0, Grant::Queued);
        assert_eq!(
            core.request(t0, 3, 100, false).0,
            Grant::Refused(Refusal::QueueFull {
                commands: 1,
                bytes: 100
            })
        );
        assert_eq!(core.request(t0, 4, 100, true).0, Grant::Queued);
        // And bounded in bytes.
        let mut lim = limits(1, 1);
        lim.queue_max_bytes = 1000;
        let mut core = with_live(lim, 1, t0);
        core.request(t0, 1, 10, false);
        assert_eq!(core.request(t0, 2, 600, false).0, Grant::Queued);
        assert!(matches!(
            core.request(t0, 3, 600, false).0,
            Grant::Refused(Refusal::QueueFull {
                commands: 1,
                bytes: 600
            })
        ));
        assert!(core.withdraw(2));
        assert_eq!(core.request(t0, 4, 600, false).0, Grant::Queued);
    }

    #[test]
    fn an_idle_session_is_preferred_to_a_busy_sessions_free_slot() {
        // Defect 4: with depth 4, four commands at once went to one session while three idled.
        let t0 = Instant::now();
        let mut lim = limits(4, 4);
        lim.depth = 4;
        let mut core = with_live(lim, 4, t0);
        let mut got: Vec<SessionId> = (1..=4)
            .map(|w| match core.request(t0, w, 100, false).0 {
                Grant::Session(id) => id,
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3, 4], "one command per session");
        assert!(
            matches!(core.request(t0, 5, 100, false).0, Grant::Session(_)),
            "then pipelining slots"
        );
    }

    #[test]
    fn among_idle_sessions_the_longest_idle_goes_first() {
        let t0 = Instant::now();
        let mut core = with_live(limits(2, 2), 2, t0);
        assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
        core.answered(t0 + secs(1.0), 1);
        assert_eq!(
            core.request(t0 + secs(2.0), 2, 100, false).0,
            Grant::Session(2)
        );
    }

    #[test]
    fn max_commands_counts_commands_written_not_answered() {
        // Defect 5: with depth 4 and a limit of 2, four commands ran on one session.
        let t0 = Instant::now();
        let mut lim = limits(1, 1);
        lim.depth = 4;
        lim.max_commands = Some(2);
        let mut core = with_live(lim, 1, t0);
        assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
        assert_eq!(core.request(t0, 2, 100, false).0, Grant::Session(1));
        assert_eq!(core.request(t0, 3, 100, false).0, Grant::Queued);
        assert!(
            retires(&core.answered(t0, 1)).is_empty(),
            "one still in flight"
        );
        let actions = core.answered(t0, 1);
        assert_eq!(
            retires(&actions),
            vec![1],
            "retired once nothing is in flight"
        );
        assert!(
            opens(&actions).is_empty(),
            "its replacement waits for the logout (pool_max 1)"
        );
        let t1 = t0 + secs(1.0);
        let actions = core.ended(t1, 1, Ended::Retired, None);
        assert_eq!(opens(&actions), vec![2]);
        assert_eq!(hands(&core.ready(t1, 2)), vec![(3, 2)]);
    }

    #[test]
    fn a_retiring_session_takes_nothing_new() {
        // Defect 11: the free pipeline slots of a retiring session stayed in the idle queue.
        let t0 = Instant::now();
        let mut lim = limits(2, 2);
        lim.depth = 2;
        let mut core = with_live(lim, 2, t0);
        assert_eq!(core.request(t0, 1, 100, false).0, Grant::Session(1));
        assert_eq!(core.request(t0, 2, 100, false).0, Grant::Session(2));
        assert_eq!(core.request(t0, 3, 100, false).0, Grant::Session(1));
        core.retiring(t0, 2);
        assert_eq!(
            core.request(t0, 4, 100, false).0,
            Grant::Queued,
            "not session 2"
        );
        assert_eq!(retires(&core.answered(t0, 2)), vec![2]);
        assert_eq!(hands(&core.answered(t0, 1)), vec![(4, 1)]);
    }

    #[test]
    fn shrinking_retires_the_least_busy_sessions_after_their_commands() {
        let t0 = Instant::now();
        let mut core = with_live(limits(3, 3), 3, t0);
        core.request(t0, 1, 100, false);
        let actions = core.resize(t0, 1, 1);
        let mut retired = retires(&actions);
        retired.sort_unstable();
        assert_eq!(retired, vec![2, 3], "the idle ones at once");
        let actions = core.resize(t0, 0, 0);
        assert!(retires(&actions).is_empty(), "session 1 is busy");
        assert_eq!(retires(&core.answered(t0, 1)), vec![1]);
    }

    #[test]
    fn a_session_that_logs_in_after_a_shrink_is_retired_at_once() {
        // Defect 3: a reload to 1/1 while four sessions were connecting left four live.
        let t0 = Instant::now();
        let mut core = PoolCore::new(limits(4, 4), t0, 1);
        assert_eq!(opens(&core.start(t0)).len(), 4);
        core.resize(t0, 1, 1);
        assert!(retires(&core.ready(t0, 1)).is_empty());
        for id in 2..=4 {
            assert_eq!(retires(&core.ready(t0, id)), vec![id]);
        }
        for id in 2..=4 {
            core.ended(t0, id, Ended::Retired, None);
        }
        let stats = core.stats(t0);
        assert_eq!((stats.live, stats.connecting), (1, 0));
    }

    #[test]
    fn failed_opens_back_off_with_jitter_and_probe_one_at_a_time() {
        let t0 = Instant::now();
        let mut core = PoolCore::new(limits(3, 3), t0, 1);
        let ids = opens(&core.start(t0));
        for id in &ids {
            let actions = core.open_failed(t0, *id, OpenFailure::Error, Some("refused".into()));
            assert!(
                opens(&actions).is_empty(),
                "nothing opens during the backoff"
            );
        }
        // Three failures: a backoff between 200 and 400 ms.
        let wake = core.next_wakeup().expect("a wake-up for the backoff");
        assert!(
            wake >= t0 + secs(0.2) && wake <= t0 + secs(0.4),
            "{:?}",
            wake - t0
        );
        assert!(opens(&core.tick(wake - secs(0.001))).is_empty());
        assert_eq!(opens(&core.tick(wake)).len(), 1, "one probe while failing");
        assert_eq!(core.stats(wake).consecutive_failures, 3);
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let mut rng = fastrand::Rng::with_seed(3);
        assert_eq!(backoff(0, &mut rng), Duration::ZERO);
        assert_eq!(backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(backoff_ceiling(40), Duration::from_secs(30));
        for failures in 1..20 {
            let b = backoff(failures, &mut rng);
            let ceiling = backoff_ceiling(failures);
            assert!(b >= ceiling / 2 && b <= ceiling, "{b:?} vs {ceiling:?}");
        }
    }

    #[test]
    fn three_2200s_stop_the_account_and_refuse_its_waiters() {
        let t0 = Instant::now();
        let mut core = PoolCore::new(limits(1, 1), t0, 1);
        let mut id = opens(&core.start(t0))[0];
        core.request(t0, 1, 100, false);
        let mut now = t0;
        for round in 1..=3 {
            let actions =
                core.open_failed(now, id, OpenFailure::Refused(2200), Some("2200".into()));
            if round == 3 {
                assert_eq!(
                    actions,
                    vec![Action::Refuse {
                        waiter: 1,
                        why: Refusal::Unavailable(core.stats(now).unhealthy.unwrap())
                    }]
                );
                break;
            }
            now += secs(60.0);
            id = opens(&core.tick(now))[0];
        }
        now += secs(3600.0);
        assert!(core.tick(now).is_empty(), "no more attempts");
        assert!(matches!(
            core.request(now, 2, 100, false).0,
            Grant::Refused(Refusal::Unavailable(_))
        ));
    }

    #[test]
    fn a_2502_holds_the_account_at_its_live_count_until_the_hold_ends() {
        let t0 = Instant::now();
        let mut core = PoolCore::new(limits(2, 2), t0, 1);
        let ids = opens(&core.start(t0));
        core.ready(t0, ids[0]);
        core.open_failed(t0, ids[1], OpenFailure::Refused(2502), None);
        assert_eq!(core.stats(t0).effective_max, 1);
        assert!(opens(&core.tick(t0 + secs(299.0))).is_empty());
        assert_eq!(core.next_wakeup(), Some(t0 + secs(300.0)));
        assert_eq!(opens(&core.tick(t0 + secs(300.0))).len(), 1);
    }

    #[test]
    fn a_2502_right_after_an_own_drop_is_retried_not_held() {
        // Defect 10: one response timeout halved the pool for five minutes.
        let t0 = Instant::now();
        let mut core = with_live(limits(2, 2), 2, t0);
        let mut now = t0 + secs(1.0);
        let actions = core.ended(now, 1, Ended::Lost, Some("no response".into()));
        let mut id = opens(&actions)[0];
        for _ in 0..TRANSIENT_2502_RETRIES {
            core.open_failed(now, id, OpenFailure::Refused(2502), None);
            assert_eq!(core.stats(now).effective_max, 2, "not held");
            now = core.next_wakeup().expect("a backoff");
            id = opens(&core.tick(now))[0];
        }
        // Still refused after that: the cap is real.
        core.open_failed(now, id, OpenFailure::Refused(2502), None);
        assert_eq!(core.stats(now).effective_max, 1);
    }

    #[test]
    fn the_login_budget_bounds_logins_whatever_happens() {
        let t0 = Instant::now();
        let mut lim = limits(2, 2);
        lim.logins_per_minute = Some(4);
        let mut core = PoolCore::new(lim, t0, 1);
        let mut logins = 0;
        let mut now = t0;
        let mut pending = opens(&core.start(t0));
        // A registry that drops every session right after login, for ten simulated minutes.
        while now < t0 + secs(600.0) {
            for id in pending.drain(..) {
                logins += 1;
                core.ready(now, id);
                core.ended(now, id, Ended::Lost, None);
            }
            now = core.next_wakeup().unwrap_or(now + secs(1.0)).max(now);
            pending = opens(&core.tick(now));
        }
        // Burst of pool_max, then 4 a minute.
        assert!(logins <= 2 + 4 * 10, "{logins} logins");
        assert!(
            logins >= 4 * 10,
            "{logins} logins: the budget is used, not starved"
        );
        assert!(core.counters().login_budget_waits > 0);
        assert!(core.stats(now).login_budget_wait.is_some());
    }

    #[test]
    fn the_command_rate_limit_queues_commands_instead_of_refusing_them() {
        let t0 = Instant::now();
        let mut lim = limits(2, 2);
        lim.commands_per_second = Some(2.0);
        let mut core = with_live(lim, 2, t0);
        assert!(matches!(
            core.request(t0, 1, 100, false).0,
            Grant::Session(_)
        ));
        assert!(matches!(
            core.request(t0, 2, 100, false).0,
            Grant::Session(_)
        ));
        core.answered(t0, 1);
        core.answered(t0, 2);
        let (g, actions) = core.request(t0, 3, 100, false);
        assert_eq!(
            g,
            Grant::Queued,
            "sessions are free but the second's tokens are spent"
        );
        assert!(
            opens(&actions).is_empty(),
            "throttled commands open no session"
        );
        assert_eq!(core.next_wakeup(), Some(t0 + secs(0.5)));
        assert_eq!(hands(&core.tick(t0 + secs(0.5))).len(), 1);
        assert_eq!(core.counters().commands_throttled, 1);
    }

    #[test]
    fn a_slot_given_back_unused_is_handed_on() {
        let t0 = Instant::now();
        let mut core = with_live(limits(1, 1), 1, t0);
        core.request(t0, 1, 100, false);
        core.request(t0, 2, 100, false);
        assert_eq!(hands(&core.unused(t0, 1)), vec![(2, 1)]);
        assert_eq!(
            core.sessions(t0)[0].commands,
            1,
            "the unused slot is not counted"
        );
    }

    #[test]
    fn nothing_opens_once_closing() {
        let t0 = Instant::now();
        let mut core = with_live(limits(2, 2), 2, t0);
        core.close();
        assert!(core.ended(t0, 1, Ended::Shutdown, None).is_empty());
        assert_eq!(core.next_wakeup(), None);
    }
}
