//! The vocabulary of the pool's bookkeeping: its limits, the events sessions report, the actions it
//! returns, and what it shows (counters, stats, sessions).

use std::time::Duration;

use serde::Serialize;

use super::{SessionId, WaiterId};

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
    /// After new credentials, how far apart the sessions opened with the old ones are replaced.
    pub rotation_interval: Duration,
}

impl Limits {
    pub(super) fn login_rate(&self) -> u32 {
        self.logins_per_minute.unwrap_or(2 * self.max as u32).max(1)
    }
}

/// Why a session did not open, as far as the bookkeeping cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// Shutting down: not a failure.
    Cancelled,
    /// The registry answered the login with `code`; `failed_logins` of this open's `<login>`s
    /// (one, or two with the other password on the same connection) were answered 2200.
    Refused { code: u16, failed_logins: u32 },
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
    /// Sessions (logged in or opening) opened with credentials a reload has replaced.
    pub stale: usize,
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
    /// Opened with credentials a reload has replaced: it will be replaced.
    pub stale: bool,
}
