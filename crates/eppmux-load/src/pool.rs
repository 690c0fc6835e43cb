//! A pool inside one application worker, as getgov keeps one per gunicorn worker: P sessions
//! logged in to the registry when the worker starts, lent last-in first-out, a borrow that waits
//! at most the borrow timeout (getgov: 10 s), a session that broke replaced by a fresh login, and
//! the whole pool logged out and logged in again when the worker is recycled.
//!
//! Hand-written rather than taken from a pool crate (deadpool, bb8) because what is measured is
//! this exact policy: LIFO lending, getgov's login retry on 2502, and a recycle that logs every
//! session out before the new worker's sessions log in (the cap is counted per credential).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures_util::future::join_all;
use tokio::sync::Semaphore;

use crate::conn::{logout, Conn, Target};
use crate::logins::{open_with_retry, Counters};

pub struct Pool {
    /// Idle sessions; the last one given back is lent first.
    idle: Mutex<Vec<Conn>>,
    /// One permit per idle session: waiting for one is waiting for a session, in arrival order.
    permits: Semaphore,
    size: usize,
    borrow_timeout: Duration,
    target: Arc<Target>,
    counters: Arc<Counters>,
}

impl Pool {
    /// A pool of `size` sessions, all logged in before it returns (as a worker starts).
    pub async fn start(
        size: usize,
        borrow_timeout: Duration,
        target: Arc<Target>,
        counters: Arc<Counters>,
    ) -> Result<Pool> {
        let pool = Pool {
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(0),
            size,
            borrow_timeout,
            target,
            counters,
        };
        pool.fill().await?;
        Ok(pool)
    }

    async fn fill(&self) -> Result<()> {
        let opened =
            join_all((0..self.size).map(|_| open_with_retry(&self.target, &self.counters)));
        for conn in opened.await {
            self.give_back(conn?);
        }
        Ok(())
    }

    /// A session, waiting at most the borrow timeout for one.
    pub async fn borrow(&self) -> Result<Conn> {
        let permit = tokio::time::timeout(self.borrow_timeout, self.permits.acquire())
            .await
            .map_err(|_| {
                self.counters
                    .borrow_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                anyhow!("no pooled session within {:?}", self.borrow_timeout)
            })??;
        permit.forget();
        self.idle_sessions()
            .pop()
            .ok_or_else(|| anyhow!("a permit without an idle session"))
    }

    pub fn give_back(&self, conn: Conn) {
        self.idle_sessions().push(conn);
        self.permits.add_permits(1);
    }

    /// A borrowed session broke: a fresh one takes its place.
    pub async fn replace(&self) -> Result<()> {
        let conn = open_with_retry(&self.target, &self.counters).await?;
        self.give_back(conn);
        Ok(())
    }

    /// The worker is recycled: once every session is back, all log out, then a fresh pool logs
    /// in (gunicorn starts the new worker after the old one exited). Borrowers wait meanwhile.
    pub async fn recycle(&self) -> Result<()> {
        let all = self.permits.acquire_many(self.size as u32).await?;
        all.forget();
        let old: Vec<Conn> = std::mem::take(&mut *self.idle_sessions());
        join_all(old.into_iter().map(logout)).await;
        self.fill().await
    }

    fn idle_sessions(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
