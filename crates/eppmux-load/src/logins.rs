//! Logging in to the registry (or to eppmux) the way getgov does, and the counters of a run.
//!
//! getgov's retry rule: a login refused with 2502 (the session cap) or a broken connection is
//! tried again after `attempt × 50 ms`, at most 4 attempts for a command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::conn::{Conn, Login, Target};

/// What a run counts besides latencies (shared by every worker).
#[derive(Debug, Default)]
pub struct Counters {
    /// Logins answered 1000 by the registry itself (not by eppmux).
    pub registry_logins: AtomicU64,
    /// Logins answered 1000 by eppmux (local; they cost the registry nothing).
    pub local_logins: AtomicU64,
    /// Logins refused with 2502 (the registry's session cap).
    pub refused_2502: AtomicU64,
    /// Workers recycled.
    pub recycles: AtomicU64,
    /// Borrows from a worker's pool that timed out.
    pub borrow_timeouts: AtomicU64,
    /// Whether logins go to eppmux (counted as local) or to the registry.
    pub via_eppmux: bool,
}

/// getgov's rule: attempt `n` failed, wait `n × 50 ms`, at most 4 attempts.
pub const ATTEMPTS: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(50);

/// Connects and logs in; a 2502 or a broken connection is retried with getgov's backoff.
/// `patience` bounds the attempts (pools keep trying longer than a single command would).
pub async fn open(target: &Target, counters: &Counters, patience: u32) -> Result<Conn> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let why = match target.open().await {
            Ok(Login::Ok(conn)) => {
                let who = match counters.via_eppmux {
                    true => &counters.local_logins,
                    false => &counters.registry_logins,
                };
                who.fetch_add(1, Ordering::Relaxed);
                return Ok(conn);
            }
            Ok(Login::Refused(2502)) => {
                counters.refused_2502.fetch_add(1, Ordering::Relaxed);
                anyhow::anyhow!("login refused with 2502")
            }
            Ok(Login::Refused(code)) => bail!("login answered {code}"),
            Err(e) => e,
        };
        if attempt >= patience {
            return Err(why.context(format!("{attempt} attempts")));
        }
        tokio::time::sleep(BACKOFF * attempt.min(ATTEMPTS)).await;
    }
}

/// A pool's login: retried like a command's, but up to 40 times (a pool being filled waits for
/// the cap to free up rather than giving up after four).
pub async fn open_with_retry(target: &Target, counters: &Counters) -> Result<Conn> {
    open(target, counters, 40).await
}
