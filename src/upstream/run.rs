//! The life of one pooled registry session: open it (connect, greeting, `<login>`), carry the
//! commands its [`Owner`] hands it — up to the pipeline depth in flight, answered in order — keep
//! it alive with `<hello>` while idle, and end it: logged out when retiring or shutting down,
//! simply closed when it broke.
//!
//! The safety rule lives here, where outcomes are known: each command in flight ends as an answer,
//! as [`JobError::NotSent`] (never written), as [`JobError::NotExecuted`] (the registry certainly
//! did not run it), or as [`JobError::Lost`] (written, outcome unknown). Only the last may have
//! run, and the pool never replays it unless it is a query.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::answer::{Expect, Verdict};
use super::session::{connect, Session};
use super::{Credentials, ExchangeError, Reply};
use crate::config::SessionLifecycle;
use crate::epp;

const LOGOUT_WAIT: Duration = Duration::from_secs(2);

/// A command for the session to write, and where its outcome goes.
pub struct Job {
    pub frame: Bytes,
    pub cltrid: Option<String>,
    pub reply: oneshot::Sender<Result<Reply, JobError>>,
}

/// Why a job has no answer.
#[derive(Debug)]
pub enum JobError {
    /// The session ended before writing it: send it elsewhere.
    NotSent,
    /// The registry certainly did not run it (it answered "not logged in", or it was behind a
    /// command so answered, on the same session).
    NotExecuted(String),
    /// Written, and no usable answer: the registry may have run it.
    Lost(ExchangeError),
}

/// How a logged-in session ended.
#[derive(Debug)]
pub enum Ending {
    /// Logged out after retiring.
    Retired,
    Shutdown,
    /// Closed without `<logout>`; the registry may still count it for a while.
    Lost(String),
}

/// The owner of a session: what it reads, and what it is told. The pool implements it.
pub trait Owner: Send + Sync + 'static {
    /// What the next session logs in with (taken once, when it opens).
    fn credentials(&self) -> Arc<Credentials>;
    fn shutdown(&self) -> &CancellationToken;
    /// Cancelled when the shutdown deadline passes: give up on whatever is still pending.
    fn abort(&self) -> &CancellationToken;
    /// A greeting arrived (at connect, or as a keepalive's answer).
    fn greeting(&self, frame: Bytes);
    /// Session `id` logged in: jobs go to `jobs`; `retire` is cancelled when it should log out.
    fn opened(self: &Arc<Self>, id: u64, jobs: mpsc::Sender<Job>, retire: CancellationToken);
    /// A `<login>` was refused with `code`. When the passwords offer another on the same
    /// connection (`offered`), whether to send it (it counts like any login).
    fn login_refused(self: &Arc<Self>, code: u16, offered: bool) -> bool;
    /// Session `id` did not open: its login refused (the answer, and how many `<login>`s were
    /// answered 2200), or failed with `error`, or (both None) cancelled by shutdown.
    fn open_failed(self: &Arc<Self>, id: u64, refused: Option<(u16, u32)>, error: Option<String>);
    /// One job of session `id` is done and the session goes on.
    fn answered(self: &Arc<Self>, id: u64);
    /// Session `id` takes no new jobs (it reached its maximum age or suspects it was forgotten).
    fn retiring(self: &Arc<Self>, id: u64);
    fn ended(self: &Arc<Self>, id: u64, how: Ending);
    fn keepalive_done(self: &Arc<Self>);
    fn duplicate_dropped(self: &Arc<Self>);
}

/// Runs session `id` from opening to its end.
pub async fn run<O: Owner>(id: u64, owner: Arc<O>) {
    let creds = owner.credentials();
    let Some(session) = open(id, &owner, &creds).await else {
        return;
    };
    info!(peer = ?session.peer, "upstream session logged in");
    let lifecycle = creds.account.lifecycle;
    let depth = lifecycle.pipeline_depth.max(1);
    let (tx, rx) = mpsc::channel::<Job>(depth);
    let retire = CancellationToken::new();
    owner.opened(id, tx, retire.clone());
    let now = Instant::now();
    let mut live = Live {
        id,
        wait: creds.target.response_timeout,
        owner,
        session,
        rx,
        retire,
        lifecycle,
        depth,
        in_flight: Default::default(),
        born: now,
        last_activity: now,
        last_answer: now,
        retiring: false,
        served: 0,
    };
    let end = live.serve().await;
    live.finish(end).await;
}

/// Opens the session. Until `<login>` is written, shutdown simply stops it; once written, the
/// registry may count a session, so its answer is awaited (bounded by the step timeout) and a
/// session that logged in is logged out again — unless the shutdown deadline passes first.
async fn open<O: Owner>(id: u64, owner: &Arc<O>, creds: &Credentials) -> Option<Session> {
    let target = &creds.target;
    let connected = tokio::select! {
        biased;
        _ = owner.shutdown().cancelled() => None,
        r = connect(target, |g| owner.greeting(g)) => Some(r),
    };
    let connected = match connected {
        None => return fail_open(owner, id, None, None),
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            warn!(error = %e, "upstream session could not be opened");
            return fail_open(owner, id, None, Some(e.to_string()));
        }
    };
    let cltrid = format!("eppmux-login-{id}");
    let login = connected.login(
        &creds.account,
        &creds.passwords,
        &cltrid,
        target.step_timeout,
        |code, offered| owner.login_refused(code, offered),
    );
    let result = tokio::select! {
        r = login => r,
        _ = owner.abort().cancelled() => {
            warn!("shutdown deadline passed with <login> unanswered: closing the registry connection without <logout> (the registry may count this session until it notices)");
            return fail_open(owner, id, None, None);
        }
    };
    match result {
        Ok(session) if owner.shutdown().is_cancelled() => {
            info!("logged in while shutting down: logging out again");
            session
                .logout(&format!("eppmux-logout-{id}"), LOGOUT_WAIT)
                .await;
            fail_open(owner, id, None, None)
        }
        Ok(session) => Some(session),
        Err(e) => {
            warn!(error = %e, result_code = e.login_code(), "upstream session could not be opened");
            fail_open(owner, id, e.login_refusal(), Some(e.to_string()))
        }
    }
}

fn fail_open<O: Owner>(
    owner: &Arc<O>,
    id: u64,
    refused: Option<(u16, u32)>,
    error: Option<String>,
) -> Option<Session> {
    owner.open_failed(id, refused, error);
    None
}

/// A command written and not yet answered.
struct InFlight {
    reply: oneshot::Sender<Result<Reply, JobError>>,
    cltrid: Option<String>,
    /// When its answer is overdue (the write counts against the same deadline).
    due: Instant,
    /// How long the session had carried no command when this one was written.
    idle_before: Duration,
}

/// How the serving loop ended.
enum End {
    Shutdown,
    Retire(&'static str),
    Dead(String),
}

/// A logged-in session and what it carries.
struct Live<O: Owner> {
    id: u64,
    owner: Arc<O>,
    session: Session,
    rx: mpsc::Receiver<Job>,
    retire: CancellationToken,
    lifecycle: SessionLifecycle,
    depth: usize,
    wait: Duration,
    /// Oldest first: the registry answers in order.
    in_flight: std::collections::VecDeque<InFlight>,
    born: Instant,
    /// Last frame either way, for the keepalive.
    last_activity: Instant,
    /// Last answer to a command (hellos prove nothing about being logged in).
    last_answer: Instant,
    retiring: bool,
    served: u64,
}

impl<O: Owner> Live<O> {
    async fn serve(&mut self) -> End {
        let far = self.born + Duration::from_secs(100 * 365 * 86_400);
        loop {
            let idle = self.in_flight.is_empty();
            if idle && self.retire.is_cancelled() {
                return End::Retire(if self.retiring {
                    "it reached its limit or was suspected forgotten"
                } else {
                    "the pool was made smaller"
                });
            }
            let keepalive_at = self
                .lifecycle
                .keepalive
                .map_or(far, |k| self.last_activity + k);
            let retire_at = self.lifecycle.max_age.map_or(far, |a| self.born + a);
            let answer_due = self.in_flight.front().map_or(far, |f| f.due);
            let taking = self.in_flight.len() < self.depth;
            let expect = match self.in_flight.front() {
                Some(f) => Expect::Answer(f.cltrid.as_deref()),
                None => Expect::Nothing,
            };
            tokio::select! {
                biased;
                _ = self.owner.abort().cancelled() => {
                    return self.fail_all("the shutdown deadline passed".into());
                }
                _ = self.owner.shutdown().cancelled(), if idle => return End::Shutdown,
                verdict = self.session.next_answer(expect) => {
                    if let Some(end) = self.on_frame(verdict) {
                        return end;
                    }
                }
                _ = sleep_until(answer_due), if !idle => {
                    return self.fail_all(format!("no response within {:?}", self.wait));
                }
                job = self.rx.recv(), if taking => match job {
                    // We never drop our sender before the loop ends; the owner's went with it.
                    None => return End::Shutdown,
                    Some(job) => if let Some(end) = self.write(job).await {
                        return end;
                    },
                },
                _ = sleep_until(keepalive_at), if idle && self.lifecycle.keepalive.is_some() => {
                    if let Err(e) = self.keepalive().await {
                        return End::Dead(e.to_string());
                    }
                }
                _ = sleep_until(retire_at), if !self.retiring && self.lifecycle.max_age.is_some() => {
                    info!("upstream session reached its maximum age; retiring after what is in flight");
                    self.start_retiring();
                }
                _ = self.retire.cancelled(), if idle => {}
            }
        }
    }

    fn start_retiring(&mut self) {
        self.retiring = true;
        self.owner.retiring(self.id);
    }

    /// Writes a job, bounded by its response deadline: a registry that stopped reading must not
    /// hold the session (and the client) beyond it.
    async fn write(&mut self, job: Job) -> Option<End> {
        let now = Instant::now();
        let mut idle_before = Duration::ZERO;
        if self.in_flight.is_empty() {
            if let Some(why) = self.drain_pending() {
                let _ = job.reply.send(Err(JobError::NotSent));
                return Some(End::Dead(why));
            }
            idle_before = now.saturating_duration_since(self.last_answer);
        }
        let due = now + self.wait;
        let outcome = timeout_at(due, self.session.write(job.frame)).await;
        let failure = match outcome {
            Ok(Ok(())) => {
                self.last_activity = Instant::now();
                self.in_flight.push_back(InFlight {
                    reply: job.reply,
                    cltrid: job.cltrid,
                    due,
                    idle_before,
                });
                return None;
            }
            Ok(Err(e)) => format!("write failed: {e}"),
            Err(_) => format!(
                "the registry did not take the command within {:?} (it stopped reading)",
                self.wait
            ),
        };
        let _ = job
            .reply
            .send(Err(JobError::Lost(ExchangeError::Lost(failure.clone()))));
        Some(self.fail_all(failure))
    }

    /// Frames that arrived while nothing was in flight: duplicates are dropped; anything else
    /// means the session is out of step (returned as the reason).
    fn drain_pending(&mut self) -> Option<String> {
        while let Some(verdict) = self.session.pending() {
            match verdict {
                Verdict::Duplicate { svtrid } => self.duplicate(&svtrid),
                Verdict::Broken(e) => return Some(e.to_string()),
                Verdict::Answer(r) => return Some(format!("unsolicited answer {}", r.code)),
            }
        }
        None
    }

    fn duplicate(&self, svtrid: &str) {
        warn!(
            svtrid,
            "the registry sent an answer twice; dropped the duplicate"
        );
        self.owner.duplicate_dropped();
    }

    fn on_frame(&mut self, verdict: Verdict) -> Option<End> {
        match verdict {
            Verdict::Duplicate { svtrid } => {
                self.duplicate(&svtrid);
                None
            }
            Verdict::Broken(e) => {
                let why = e.to_string();
                match self.in_flight.pop_front() {
                    Some(front) => {
                        let _ = front.reply.send(Err(JobError::Lost(e)));
                        Some(self.fail_all(why))
                    }
                    None => Some(End::Dead(why)),
                }
            }
            Verdict::Answer(reply) => self.on_answer(reply),
        }
    }

    fn on_answer(&mut self, mut reply: Reply) -> Option<End> {
        reply.session = self.id;
        let now = Instant::now();
        self.last_answer = now;
        self.last_activity = now;
        let front = self.in_flight.pop_front()?;
        if epp::is_not_logged_in(reply.code, &reply.msg) {
            let why = format!(
                "registry answered {} {:?}: it has forgotten this session",
                reply.code, reply.msg
            );
            let _ = front.reply.send(Err(JobError::NotExecuted(why.clone())));
            // The registry answers in order and processes nothing on a forgotten session, so the
            // commands behind this one were not run either.
            for rest in self.in_flight.drain(..) {
                let _ = rest.reply.send(Err(JobError::NotExecuted(why.clone())));
            }
            return Some(End::Dead(why));
        }
        if reply.code == 2002 && front.idle_before >= self.lifecycle.suspect_2002_after {
            // A 2002 in a wording not known to mean "not logged in", on a session that had been
            // idle: it may have been forgotten. A 2002 means nothing ran, so the command is sent
            // again on another session, and this one logs out after what is in flight.
            let why = format!(
                "registry answered 2002 {:?} on a session idle for {:?}; it may have forgotten the session",
                reply.msg, front.idle_before
            );
            info!(reason = %why, "re-sending on another session and retiring this one");
            let _ = front.reply.send(Err(JobError::NotExecuted(why)));
            self.owner.answered(self.id);
            self.start_retiring();
            return None;
        }
        let code = reply.code;
        let _ = front.reply.send(Ok(reply));
        if epp::is_closing(code) || code == epp::code::ENDING_SESSION {
            return Some(self.fail_all(format!("the registry ended the session with {code}")));
        }
        self.served += 1;
        self.owner.answered(self.id);
        None
    }

    async fn keepalive(&mut self) -> Result<(), ExchangeError> {
        let (greeting, duplicates) = self.session.keepalive(self.wait).await?;
        for _ in 0..duplicates {
            self.owner.duplicate_dropped();
        }
        self.last_activity = Instant::now();
        self.owner.greeting(greeting);
        self.owner.keepalive_done();
        debug!("keepalive <hello> answered");
        Ok(())
    }

    /// The session is over with these commands written and unanswered: each may have run.
    fn fail_all(&mut self, why: String) -> End {
        for f in self.in_flight.drain(..) {
            let _ = f.reply.send(Err(JobError::Lost(ExchangeError::Lost(format!(
                "session ended with the command in flight: {why}"
            )))));
        }
        End::Dead(why)
    }

    async fn finish(mut self, end: End) {
        let id = self.id;
        let logout_cltrid = format!("eppmux-logout-{id}");
        match end {
            End::Shutdown => {
                self.owner.ended(id, Ending::Shutdown);
                self.refuse_queued();
                self.session.logout(&logout_cltrid, LOGOUT_WAIT).await;
                info!("upstream session logged out");
            }
            End::Retire(why) => {
                info!(reason = why, served = self.served, age = ?self.born.elapsed(), "retiring upstream session");
                // Logged out before it stops counting, so the replacement never exceeds pool_max.
                self.refuse_queued();
                self.session.logout(&logout_cltrid, LOGOUT_WAIT).await;
                self.owner.ended(id, Ending::Retired);
            }
            End::Dead(why) => {
                warn!(reason = %why, served = self.served, "upstream session ended; it will be replaced");
                self.owner.ended(id, Ending::Lost(why));
                self.refuse_queued();
            }
        }
    }

    /// Jobs handed over but not yet taken were never written: their callers send them elsewhere.
    fn refuse_queued(&mut self) {
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            let _ = job.reply.send(Err(JobError::NotSent));
        }
    }
}
