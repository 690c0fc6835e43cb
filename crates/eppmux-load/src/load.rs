//! The two workloads and their measurement.
//!
//! - `steady`: every client of every worker sends one command after another; a window of
//!   `--duration` is measured once every client has done its warm-up commands.
//! - `burst`: every `--burst-every`, `--burst` commands arrive at once at one worker (the next
//!   one each time), whose clients work through them; each command's latency runs from the
//!   burst's arrival to its answer, and each burst's completion time from its arrival to its
//!   last answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;

use crate::arch::{Client, Worker};
use crate::conn::Mix;
use crate::report::{Outcome, Sampler};

/// How a run is shaped (from the command line).
pub struct Plan {
    pub workers: Vec<Arc<Worker>>,
    pub clients_per_worker: usize,
    pub mix: Mix,
    pub warmup: u64,
    pub duration: Duration,
    pub commands: Option<u64>,
    pub burst: usize,
    pub burst_every: Duration,
    pub bursts: usize,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// What every client of a steady run shares.
struct Steady {
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Told when `--commands` were reached, so the window closes at once.
    reached: Notify,
    sent: AtomicU64,
    /// One permit per client that has done its warm-up commands.
    warmed: Semaphore,
    warmup: u64,
    commands: Option<u64>,
    mix: Mix,
}

struct Tally {
    hist: Histogram<u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: histogram(),
            errors: 0,
        }
    }

    fn record(&mut self, who: &str, took: Duration, result: &Result<u16>) {
        match result {
            Ok(_) => {
                let _ = self.hist.record(took.as_micros().max(1) as u64);
            }
            Err(e) => {
                self.errors += 1;
                if self.errors <= 3 {
                    eprintln!("client {who}: {e:#}");
                }
            }
        }
    }
}

async fn steady_client(run: Arc<Steady>, worker: Arc<Worker>, key: String) -> Tally {
    let mut tally = Tally::new();
    let mut client = Client::default();
    if let Err(e) = worker.prepare(&mut client).await {
        eprintln!("client {key}: {e:#}");
    }
    let mut n = 0u64;
    while !run.stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let result = worker.run(&mut client, run.mix.command(&key, n)).await;
        let took = started.elapsed();
        if n == run.warmup.max(1) {
            run.warmed.add_permits(1);
        }
        // Commands completing after the window closed are not counted: those in flight when it
        // opened were, so in steady state the two edges cancel out.
        if run.measuring.load(Ordering::Relaxed) {
            tally.record(&key, took, &result);
            let total = run.sent.fetch_add(1, Ordering::Relaxed) + 1;
            if run.commands.is_some_and(|max| total >= max) {
                run.stop.store(true, Ordering::Relaxed);
                run.reached.notify_one();
            }
        }
        if result.is_ok() {
            if let Err(e) = worker.completed().await {
                eprintln!("recycling worker: {e:#}");
            }
        }
    }
    tally
}

/// Every client sends commands back to back; a window of steady state is measured.
pub async fn steady(plan: &Plan, sampler: &Sampler) -> Result<Outcome> {
    // No warm-up: every command is measured, and `--commands` is then exact (callgrind.sh).
    let run = Arc::new(Steady {
        measuring: AtomicBool::new(plan.warmup == 0),
        stop: AtomicBool::new(false),
        reached: Notify::new(),
        sent: AtomicU64::new(0),
        warmed: Semaphore::new(0),
        warmup: plan.warmup,
        commands: plan.commands,
        mix: plan.mix,
    });
    let mut tasks = Vec::new();
    for (w, worker) in plan.workers.iter().enumerate() {
        for k in 0..plan.clients_per_worker {
            let key = format!("{w}-{k}");
            tasks.push(tokio::spawn(steady_client(
                run.clone(),
                worker.clone(),
                key,
            )));
        }
    }
    // The window opens once every client has done its warm-up commands (connections and
    // sessions established), so it holds steady state only.
    let clients = u32::try_from(tasks.len())?;
    if plan.warmup > 0 {
        // A client stuck in its warm-up (a command that never returns) must not keep the window
        // shut: after this guard it opens anyway.
        let _ =
            tokio::time::timeout(Duration::from_secs(120), run.warmed.acquire_many(clients)).await;
    }
    let before = sampler.sample().await;
    let started = Instant::now();
    run.measuring.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(plan.duration, run.reached.notified()).await;
    run.measuring.store(false, Ordering::Relaxed);
    run.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    // After the clients stopped: a recycle under way at the window's end is counted whole, its
    // logins with it.
    let (hist, errors) = gather(tasks).await?;
    let after = sampler.sample().await;
    Ok(Outcome {
        hist,
        errors,
        elapsed,
        before,
        after,
        bursts: Vec::new(),
    })
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Result<(Histogram<u64>, u64)> {
    let mut hist = histogram();
    let mut errors = 0;
    for t in tasks {
        let tally = t.await?;
        errors += tally.errors;
        hist.add(tally.hist)?;
    }
    Ok((hist, errors))
}

/// A command of a burst: when the burst arrived, and which burst it was.
struct Job {
    arrived: Instant,
    burst: usize,
}

type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>;

/// One client of a burst run, its connection made.
struct BurstClient {
    worker: Arc<Worker>,
    client: Client,
    queue: Queue,
    ends: Arc<Mutex<Vec<Option<Instant>>>>,
    mix: Mix,
    key: String,
}

async fn burst_client(c: BurstClient) -> Tally {
    let BurstClient {
        worker,
        mut client,
        queue,
        ends,
        mix,
        key,
    } = c;
    let mut tally = Tally::new();
    let mut n = 0u64;
    loop {
        let Some(job) = queue.lock().await.recv().await else {
            break;
        };
        n += 1;
        let result = worker.run(&mut client, mix.command(&key, n)).await;
        let now = Instant::now();
        tally.record(&key, now - job.arrived, &result);
        {
            let mut ends = ends.lock().unwrap_or_else(PoisonError::into_inner);
            let end = &mut ends[job.burst];
            *end = Some(end.map_or(now, |e| e.max(now)));
        }
        if result.is_ok() {
            if let Err(e) = worker.completed().await {
                eprintln!("recycling worker: {e:#}");
            }
        }
    }
    tally
}

/// Bursts land on one worker at a time; every command of every burst is measured.
pub async fn bursts(plan: &Plan, sampler: &Sampler) -> Result<Outcome> {
    let ends = Arc::new(Mutex::new(vec![None; plan.bursts]));
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for (w, worker) in plan.workers.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let queue: Queue = Arc::new(tokio::sync::Mutex::new(rx));
        for k in 0..plan.clients_per_worker {
            let mut c = BurstClient {
                worker: worker.clone(),
                client: Client::default(),
                queue: queue.clone(),
                ends: ends.clone(),
                mix: plan.mix,
                key: format!("{w}-{k}"),
            };
            // Connections are made before the first burst, as a running worker has them.
            ready.push(async move {
                c.worker.prepare(&mut c.client).await?;
                Ok::<_, anyhow::Error>(c)
            });
        }
    }
    for c in futures_util::future::join_all(ready).await {
        tasks.push(tokio::spawn(burst_client(c?)));
    }
    let before = sampler.sample().await;
    let start = Instant::now();
    let mut arrivals = Vec::with_capacity(plan.bursts);
    for b in 0..plan.bursts {
        tokio::time::sleep_until(start + plan.burst_every * b as u32).await;
        let arrived = Instant::now();
        arrivals.push(arrived);
        for _ in 0..plan.burst {
            let _ = senders[b % senders.len()].send(Job { arrived, burst: b });
        }
    }
    drop(senders);
    let (hist, errors) = gather(tasks).await?;
    let after = sampler.sample().await;
    let ends = ends.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let completions: Vec<Duration> = ends
        .iter()
        .zip(&arrivals)
        .filter_map(|(end, arrived)| Some(*end.as_ref()? - *arrived))
        .collect();
    let last = ends.iter().flatten().max().copied().unwrap_or(start);
    Ok(Outcome {
        hist,
        errors,
        elapsed: last - start,
        before,
        after,
        bursts: completions,
    })
}
