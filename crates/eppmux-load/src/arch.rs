//! The architectures under comparison, as one application worker sees them: how it gets a
//! command answered, and what recycling the worker costs.
//!
//! - `direct`: each client keeps one logged-in registry session (the probe of the model's round
//!   trip; not an architecture a capped registry allows at scale);
//! - `no-pool`: every command connects, logs in, runs and logs out; a login refused with 2502
//!   (the cap) or a broken connection is retried after `attempt × 50 ms`, at most 4 attempts
//!   (getgov's retry rule);
//! - `worker-pool`: the worker's clients share its own pool of P registry sessions ([`Pool`]);
//! - `eppmux`: each client keeps a connection to eppmux; a recycled worker's clients reconnect to
//!   eppmux (never to the registry).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::ValueEnum;

use crate::conn::{exchange, logout, Conn, Target};
use crate::logins::{open, Counters, ATTEMPTS};
use crate::pool::Pool;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    Direct,
    NoPool,
    WorkerPool,
    Eppmux,
}

/// One application worker: its clients share this.
pub struct Worker {
    pub arch: Arch,
    target: Arc<Target>,
    pool: Option<Pool>,
    /// Bumped at each recycle; a client whose connection is older reconnects.
    generation: AtomicU64,
    /// Commands this worker completed.
    done: AtomicU64,
    /// Recycle after this many commands (0: never).
    recycle_every: u64,
    pub counters: Arc<Counters>,
}

/// One client of a worker (a greenlet): its own connection, where the architecture keeps one.
#[derive(Default)]
pub struct Client {
    conn: Option<(u64, Conn)>,
}

/// What a worker is told.
pub struct WorkerSpec {
    pub arch: Arch,
    pub pool_size: usize,
    pub borrow_timeout: Duration,
    pub recycle_every: u64,
}

impl Worker {
    /// Starts a worker: a `worker-pool` worker logs its pool in first.
    pub async fn start(
        spec: &WorkerSpec,
        target: Arc<Target>,
        counters: Arc<Counters>,
    ) -> Result<Worker> {
        let pool = match spec.arch {
            Arch::WorkerPool => Some(
                Pool::start(
                    spec.pool_size,
                    spec.borrow_timeout,
                    target.clone(),
                    counters.clone(),
                )
                .await?,
            ),
            _ => None,
        };
        Ok(Worker {
            arch: spec.arch,
            target,
            pool,
            generation: AtomicU64::new(0),
            done: AtomicU64::new(0),
            recycle_every: spec.recycle_every,
            counters,
        })
    }

    /// Gets the client's connection ready before it is measured.
    pub async fn prepare(&self, client: &mut Client) -> Result<()> {
        if matches!(self.arch, Arch::Direct | Arch::Eppmux) {
            self.own_connection(client).await?;
        }
        Ok(())
    }

    /// Sends one command the architecture's way; the answer's result code.
    pub async fn run(&self, client: &mut Client, frame: Bytes) -> Result<u16> {
        match self.arch {
            Arch::Direct | Arch::Eppmux => {
                let conn = self.own_connection(client).await?;
                let answer = exchange(conn, frame).await;
                if answer.is_err() {
                    client.conn = None;
                }
                answer
            }
            Arch::NoPool => {
                let mut conn = open(&self.target, &self.counters, ATTEMPTS).await?;
                let code = exchange(&mut conn, frame).await?;
                logout(conn).await?;
                Ok(code)
            }
            Arch::WorkerPool => self.pooled(frame).await,
        }
    }

    async fn pooled(&self, frame: Bytes) -> Result<u16> {
        let Some(pool) = &self.pool else {
            bail!("a worker-pool worker without its pool");
        };
        let mut conn = pool.borrow().await?;
        match exchange(&mut conn, frame).await {
            Ok(code) => {
                pool.give_back(conn);
                Ok(code)
            }
            Err(e) => {
                pool.replace().await?;
                Err(e)
            }
        }
    }

    /// The client's connection of this worker generation: a recycled worker's clients log out
    /// and connect again.
    async fn own_connection<'c>(&self, client: &'c mut Client) -> Result<&'c mut Conn> {
        let now = self.generation.load(Ordering::Relaxed);
        if let Some((born, _)) = &client.conn {
            if *born != now {
                if let Some((_, old)) = client.conn.take() {
                    let _ = logout(old).await;
                }
            }
        }
        if client.conn.is_none() {
            let conn = open(&self.target, &self.counters, ATTEMPTS).await?;
            client.conn = Some((now, conn));
        }
        match &mut client.conn {
            Some((_, conn)) => Ok(conn),
            None => bail!("no connection"),
        }
    }

    /// Counts a completed command; every `recycle_every`th one recycles the worker.
    pub async fn completed(&self) -> Result<()> {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if self.recycle_every == 0 || n % self.recycle_every != 0 {
            return Ok(());
        }
        self.counters.recycles.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        match &self.pool {
            Some(pool) => pool.recycle().await,
            None => Ok(()),
        }
    }
}
