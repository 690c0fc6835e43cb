//! What a reload changes in the bookkeeping: pool sizes and limits (applied at once, excess
//! sessions retiring after their commands) and credentials (every session opened with the old
//! ones replaced, one at a time, without the account ever dropping below its live sessions).

use tokio::time::Instant;
use tracing::info;

use super::timing::Bucket;
use super::{Action, Limits, PoolCore, SessionId, Slot};

/// Replacing the sessions opened with old credentials, one at a time (see [`PoolCore::rotate`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Rotation {
    /// No stale session retires before this.
    pub(super) next_at: Instant,
    /// The fresh session opened to stand in for the next stale one.
    pub(super) spare: Option<SessionId>,
}

impl PoolCore {
    /// New pool sizes: sessions above the new maximum retire (the least busy first, each after
    /// what it has in flight); below the new minimum, sessions open.
    pub fn resize(&mut self, now: Instant, min: usize, max: usize) -> Vec<Action> {
        let limits = Limits {
            min,
            max,
            ..self.limits.clone()
        };
        self.set_limits(now, limits)
    }

    /// New limits (a reload): sizes as [`PoolCore::resize`] says, the login budget and command
    /// rate reshaped (keeping what they hold), the rest for what follows.
    pub fn set_limits(&mut self, now: Instant, limits: Limits) -> Vec<Action> {
        let (min, max) = (limits.min, limits.max);
        self.commands = match (self.commands.take(), limits.commands_per_second) {
            (Some(mut bucket), Some(rate)) => {
                bucket.reshape(rate.max(1.0), rate, now);
                Some(bucket)
            }
            (_, Some(rate)) => Some(Bucket::new(rate.max(1.0), rate, now)),
            (_, None) => None,
        };
        self.limits = limits;
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
        info!(min, max, retiring = excess, "pool limits applied");
        self.settled(now, Vec::new())
    }

    /// A reload without new credentials: an account stopped after repeated 2200s tries again
    /// (the operator was told to check the password, or have the registry unlock the account,
    /// and reload); three more 2200s stop it again.
    pub fn resume(&mut self, now: Instant) -> Vec<Action> {
        if self.unhealthy.take().is_some() {
            info!("reload: the account stopped after repeated 2200s tries to log in again");
            self.login_refusals = 0;
            self.failures = 0;
            self.backoff_until = None;
        }
        self.settled(now, Vec::new())
    }

    /// New credentials (a reload, after they were tried at the registry): every session opened
    /// with the old ones is replaced, one at a time, `rotation_interval` apart — a fresh session
    /// logs in first and the oldest-credential session with the least in flight retires after
    /// its commands, so the account keeps its live sessions (at `pool_max` there is no room for
    /// a spare: a stale session retires first, and only while opening is not failing). A stop
    /// after repeated 2200s, and any backoff, end here: these credentials have not failed yet.
    pub fn rotate(&mut self, now: Instant) -> Vec<Action> {
        for slot in self.sessions.values_mut() {
            match slot {
                Slot::Opening(stale) => *stale = true,
                Slot::Live(s) => s.stale = true,
            }
        }
        if self.unhealthy.take().is_some() {
            info!("new credentials: the account tries to log in again");
        }
        self.login_refusals = 0;
        self.failures = 0;
        self.backoff_until = None;
        self.rotation = Some(Rotation {
            next_at: now,
            spare: None,
        });
        self.settled(now, Vec::new())
    }

    /// One step of replacing stale sessions (see [`PoolCore::rotate`]); returns when to look
    /// again without an event.
    ///
    /// # Race window
    /// The spare may fail to open, or log in while the pool shrank: it is then just another
    /// session (or none), and the next step decides afresh. A stale session may end by itself
    /// meanwhile: fewer left to retire. A session the pool opened for its own reasons may be
    /// logging in when a step comes: it is taken as the spare, since opening another would
    /// overshoot `pool_max` and retiring first would dip below the live count. At `pool_max`, a
    /// stale session retired earlier may still be finishing its commands when the next step
    /// comes: nothing more retires until it has logged out, or two would be gone at once.
    pub(super) fn rotate_step(&mut self, now: Instant, out: &mut Vec<Action>) -> Option<Instant> {
        let mut rotation = self.rotation?;
        // Stopped after repeated 2200s: no more logins until the configuration changes, the
        // rotation's included (a new reload starts it again).
        if self.closing || self.unhealthy.is_some() {
            return None;
        }
        let (stale_live, stale_opening) = self.stale_sessions();
        if stale_live.is_empty() {
            if !stale_opening {
                self.rotation = None;
                info!("every session now uses the new credentials");
            }
            return None;
        }
        match rotation.spare.map(|id| self.sessions.get(&id)) {
            // The spare is still logging in: its `ready` or `open_failed` comes back here.
            Some(Some(Slot::Opening(_))) => return None,
            Some(Some(Slot::Live(_))) => {
                self.retire_least_busy(&stale_live);
                rotation.spare = None;
                rotation.next_at = now + self.limits.rotation_interval;
                self.rotation = Some(rotation);
                return Some(rotation.next_at);
            }
            // It failed to open (the failure backs off) or ended: try again later.
            Some(None) => rotation.spare = None,
            None => {
                // A fresh session already logging in (the pool grew for its queue, or replaces
                // one that ended) stands in as the spare: retiring a stale one now would take the
                // account below its live count until that login lands.
                let fresh = self
                    .sessions
                    .iter()
                    .find_map(|(id, slot)| matches!(slot, Slot::Opening(false)).then_some(*id));
                if fresh.is_some() {
                    rotation.spare = fresh;
                    self.rotation = Some(rotation);
                    return None;
                }
            }
        }
        self.rotation = Some(rotation);
        if now < rotation.next_at {
            return Some(rotation.next_at);
        }
        if let Some(until) = self.backoff_until.filter(|until| now < *until) {
            return Some(until);
        }
        let total = self.opening() + self.live();
        if total < self.effective_max(now) {
            if !self.logins.take(now) {
                return Some(self.logins.ready_at());
            }
            let id = self.next_id;
            self.next_id += 1;
            self.sessions.insert(id, Slot::Opening(false));
            out.push(Action::Open {
                id,
                reconnect: false,
            });
            rotation.spare = Some(id);
        } else if self.failures == 0 && !self.stale_retiring() {
            self.retire_least_busy(&stale_live);
            rotation.next_at = now + self.limits.rotation_interval;
        } else if self.failures == 0 {
            // The slot the last one retired from is not free yet: its end comes back here.
            return None;
        } else {
            return self.backoff_until;
        }
        self.rotation = Some(rotation);
        Some(rotation.next_at).filter(|at| *at > now)
    }

    /// The stale sessions that may still retire (with what each has in flight), and whether a
    /// stale one is still logging in.
    fn stale_sessions(&self) -> (Vec<(usize, SessionId)>, bool) {
        let live = self
            .sessions
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Live(s) if s.stale && !s.retiring => Some((s.in_flight, *id)),
                _ => None,
            })
            .collect();
        let opening = self
            .sessions
            .values()
            .any(|slot| matches!(slot, Slot::Opening(true)));
        (live, opening)
    }

    /// A stale session retired and not yet logged out: it still holds a slot at the registry.
    fn stale_retiring(&self) -> bool {
        self.sessions
            .values()
            .any(|slot| matches!(slot, Slot::Live(s) if s.stale && s.retiring))
    }

    fn retire_least_busy(&mut self, candidates: &[(usize, SessionId)]) {
        if let Some(&(_, id)) = candidates.iter().min() {
            if let Some(Slot::Live(s)) = self.sessions.get_mut(&id) {
                s.retiring = true;
                info!(
                    session = id,
                    "replacing a session opened with the old credentials"
                );
            }
        }
    }
}
