//! What follows every event of the pool's bookkeeping: free slots go to waiting commands, missing
//! sessions open (within the backoff and the login budget), finished ones retire, and the next
//! moment to look again is worked out.

use tokio::time::Instant;
use tracing::warn;

use super::{Action, PoolCore, Slot};

impl PoolCore {
    /// After every event: hand free slots to waiters, open what is missing, retire what is done,
    /// and work out when to look again.
    pub(super) fn settled(&mut self, now: Instant, mut out: Vec<Action>) -> Vec<Action> {
        self.dispatch(now, &mut out);
        let open_wait = self.maintain(now, &mut out);
        let rotation_wait = self.rotate_step(now, &mut out);
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
        self.wake = [open_wait, token_wait, hold_end, rotation_wait]
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
        if self.failures > 0 || self.serial_logins {
            // While failing, probe with one session at a time; while a password change is
            // pending, let the first login decide it before others try.
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
            self.sessions.insert(id, Slot::Opening(false));
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
