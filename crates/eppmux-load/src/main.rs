//! `eppmux-load`: the load generator of `scripts/bench.sh`. It plays W application workers, each
//! with K clients (greenlets), in one of the architectures compared ([`arch`]): no pool, a pool
//! inside each worker, eppmux, or one direct session per client. Workers are recycled every R
//! commands. The workload is steady (every client busy) or bursty (bursts of commands landing on
//! one worker at a time) ([`load`]). It reports throughput, latency percentiles, the worst
//! single command, logins at the registry, 2502s and recycles, as a table line and a JSON line
//! ([`report`]). With `--pid` it also reads that process's CPU time and memory (the proxy under
//! test), and with `--idle-clients` it holds that many extra logged-in connections open.

#![forbid(unsafe_code)]

mod arch;
mod conn;
mod load;
mod logins;
mod pool;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use arch::{Arch, Worker, WorkerSpec};
use conn::{exchange, login_frame, Login, Mix, Target};
use load::Plan;
use logins::Counters;
use report::{Labels, Sampler};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Steady,
    Burst,
}

#[derive(Debug, Parser)]
#[command(
    name = "eppmux-load",
    about = "EPP load generator (for scripts/bench.sh)"
)]
struct Args {
    /// Where to send: eppmux (arch eppmux) or the registry itself.
    #[arg(long)]
    target: SocketAddr,
    /// Name for the report.
    #[arg(long, default_value = "load")]
    scenario: String,
    #[arg(long, value_enum, default_value = "direct")]
    arch: Arch,
    #[arg(long, value_enum, default_value = "steady")]
    load: Workload,
    /// Speak TLS (verifying against --ca).
    #[arg(long)]
    tls: bool,
    #[arg(long, default_value = "certs-example/ca.pem")]
    ca: PathBuf,
    /// Client certificate (a registry requires one).
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value = "registrar1")]
    clid: String,
    #[arg(long, default_value = "s3cret-Pw")]
    password: String,
    /// Application workers (W).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Clients (greenlets) per worker (K).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Sessions in each worker's pool (P, arch worker-pool).
    #[arg(long, default_value_t = 3)]
    pool: usize,
    /// A borrow from a worker's pool gives up after this long (getgov: 10 s).
    #[arg(long, default_value = "10s", value_parser = eppmux::config::parse_duration)]
    borrow_timeout: Duration,
    /// Recycle a worker after this many of its commands (R; 0: never).
    #[arg(long, default_value_t = 0)]
    recycle: u64,
    /// Steady: run this long (after warm-up)...
    #[arg(long, default_value = "5s", value_parser = eppmux::config::parse_duration)]
    duration: Duration,
    /// ...or stop after this many commands in all.
    #[arg(long)]
    commands: Option<u64>,
    /// Steady: commands per client before measuring starts.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Burst: commands arriving at once at one worker.
    #[arg(long, default_value_t = 300)]
    burst: usize,
    /// Burst: time between bursts.
    #[arg(long, default_value = "4s", value_parser = eppmux::config::parse_duration)]
    burst_every: Duration,
    /// Burst: how many bursts (they go to the workers in turn).
    #[arg(long, default_value_t = 3)]
    bursts: usize,
    /// Relative weights of check, info and create.
    #[arg(long, default_value = "8,1,1")]
    mix: String,
    /// Extra clients that log in and then stay idle during the run (and are checked at the end).
    #[arg(long, default_value_t = 0)]
    idle_clients: usize,
    /// PID of the proxy: report its CPU time per command and its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// eppmux admin endpoint: report its upstream logins (and 2502s) during the run.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let target = Arc::new(target(&args)?);
    let counters = Arc::new(Counters {
        via_eppmux: args.arch == Arch::Eppmux,
        ..Counters::default()
    });
    // Idle clients first: they log in and then hold their connection.
    let mut idle = Vec::with_capacity(args.idle_clients);
    for _ in 0..args.idle_clients {
        match target.open().await.context("idle client")? {
            Login::Ok(conn) => idle.push(conn),
            Login::Refused(code) => bail!("idle client: login answered {code}"),
        }
    }
    let idle_usage = args.pid.and_then(report::proc_usage);
    let plan = plan(&args, &target, &counters).await?;
    let sampler = Sampler {
        counters,
        admin: args.admin,
        pid: args.pid,
    };
    let outcome = match args.load {
        Workload::Steady => load::steady(&plan, &sampler).await?,
        Workload::Burst => load::bursts(&plan, &sampler).await?,
    };
    // Every idle client must still be served.
    let mut idle_served = 0;
    for (i, conn) in idle.iter_mut().enumerate() {
        let frame = plan.mix.command(&format!("idle-{i}"), 0);
        if exchange(conn, frame).await.is_ok() {
            idle_served += 1;
        }
    }
    let labels = Labels {
        scenario: &args.scenario,
        arch: arch_name(args.arch),
        load: if args.load == Workload::Steady {
            "steady"
        } else {
            "burst"
        },
        workers: args.workers,
        pool: if args.arch == Arch::WorkerPool {
            args.pool
        } else {
            0
        },
        clients: args.workers * args.clients,
        idle_clients: args.idle_clients,
        idle_served,
        idle_usage,
    };
    report::report(&labels, &outcome);
    if outcome.errors > 0 && outcome.hist.is_empty() {
        bail!("no command succeeded");
    }
    Ok(())
}

fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Direct => "direct",
        Arch::NoPool => "no-pool",
        Arch::WorkerPool => "worker-pool",
        Arch::Eppmux => "eppmux",
    }
}

/// Where connections go, from the command line.
fn target(args: &Args) -> Result<Target> {
    let connector = if args.tls {
        let identity = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        Some(TlsConnector::from(eppmux::tls::client_config(
            Some(&args.ca),
            identity,
        )?))
    } else {
        None
    };
    Ok(Target {
        addr: args.target,
        connector,
        server_name: ServerName::try_from(args.server_name.clone())?,
        login: login_frame(&args.clid, &args.password),
    })
}

/// The workers (their pools logged in) and the shape of the run.
async fn plan(args: &Args, target: &Arc<Target>, counters: &Arc<Counters>) -> Result<Plan> {
    let weights: Vec<u32> = args
        .mix
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()
        .context("--mix")?;
    let weights: [u32; 3] = weights
        .try_into()
        .map_err(|_| anyhow::anyhow!("--mix takes three weights: check,info,create"))?;
    let spec = WorkerSpec {
        arch: args.arch,
        pool_size: args.pool,
        borrow_timeout: args.borrow_timeout,
        recycle_every: args.recycle,
    };
    let mut workers = Vec::with_capacity(args.workers);
    for _ in 0..args.workers.max(1) {
        let worker = Worker::start(&spec, target.clone(), counters.clone()).await?;
        workers.push(Arc::new(worker));
    }
    Ok(Plan {
        workers,
        clients_per_worker: args.clients,
        mix: Mix(weights),
        warmup: args.warmup,
        duration: args.duration,
        commands: args.commands,
        burst: args.burst,
        burst_every: args.burst_every,
        bursts: args.bursts,
    })
}
