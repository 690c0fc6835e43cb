//! Time in the pool's bookkeeping: token buckets (the login budget, the command rate) and the
//! jittered backoff after failures.

use std::time::Duration;

use tokio::time::Instant;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Token counts within this of a whole token count as one: float refill arithmetic must not
/// leave a wake-up that finds 0.999999 tokens and schedules itself again.
pub(super) const EPSILON: f64 = 1e-9;

/// A token bucket: `capacity` at once, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    capacity: f64,
    per_sec: f64,
    pub(super) tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(capacity: f64, per_sec: f64, now: Instant) -> Bucket {
        Bucket {
            capacity,
            per_sec,
            tokens: capacity,
            at: now,
        }
    }

    pub(super) fn refill(&mut self, now: Instant) {
        if now > self.at {
            let earned = (now - self.at).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + earned).min(self.capacity);
            self.at = now;
        }
    }

    pub(super) fn available(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0 - EPSILON
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        let ok = self.available(now);
        if ok {
            self.tokens = (self.tokens - 1.0).max(0.0);
        }
        ok
    }

    /// When the next whole token is there.
    pub(super) fn ready_at(&self) -> Instant {
        if self.tokens >= 1.0 - EPSILON {
            return self.at;
        }
        self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }

    pub(super) fn reshape(&mut self, capacity: f64, per_sec: f64, now: Instant) {
        self.refill(now);
        self.capacity = capacity;
        self.per_sec = per_sec;
        self.tokens = self.tokens.min(capacity);
    }
}

/// No pause before the first attempt; then 100 ms doubling up to a cap, each drawn between half
/// and all of that so that sessions lost together do not reconnect in lockstep.
pub(super) fn backoff(failures: u32, rng: &mut fastrand::Rng) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    backoff_ceiling(failures).mul_f64(0.5 + rng.f64() * 0.5)
}

pub(super) fn backoff_ceiling(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(MAX_BACKOFF)
}
