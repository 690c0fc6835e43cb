//! `eppmux-load`: an EPP load generator for the benchmarks. N concurrent clients, each logging in
//! once (`persistent`) or connecting, logging in and out around every command (`fresh`), send a
//! mix of domain check/info/create over TLS or plain TCP for a duration or a command count.
//! Reports throughput, latency percentiles, errors and logins as a table and as one JSON line.
//! With `--pid` it also reads that process's CPU time and memory (the proxy under test), and with
//! `--idle-clients` it holds that many extra logged-in connections open during the run.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use eppmux::epp::{self, Message};
use eppmux::frame::EppCodec;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Log in once per client, then send commands on that session.
    Persistent,
    /// Connect + TLS + greeting + login + command + logout for every command.
    Fresh,
}

#[derive(Debug, Parser)]
#[command(
    name = "eppmux-load",
    about = "EPP load generator (for scripts/bench.sh)"
)]
struct Args {
    /// Where to send: eppmux or the registry itself.
    #[arg(long)]
    target: SocketAddr,
    /// Name for the report.
    #[arg(long, default_value = "load")]
    scenario: String,
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
    #[arg(long, value_enum, default_value = "persistent")]
    mode: Mode,
    /// Concurrent active clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Run this long (after warm-up)...
    #[arg(long, default_value = "5s", value_parser = eppmux::config::parse_duration)]
    duration: Duration,
    /// ...or stop after this many commands in all.
    #[arg(long)]
    commands: Option<u64>,
    /// Commands per client before measuring starts (connections and sessions warm up).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Relative weights of check, info and create.
    #[arg(long, default_value = "8,1,1")]
    mix: String,
    /// Extra clients that log in and then stay idle during the run (and are checked at the end).
    #[arg(long, default_value_t = 0)]
    idle_clients: usize,
    /// PID of the proxy: report its CPU time per command and its memory.
    #[arg(long)]
    pid: Option<u32>,
    /// eppmux admin endpoint: report how many upstream logins happened during the run.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Framed<Box<dyn Io>, EppCodec>;

struct Ctx {
    args: Args,
    connector: Option<TlsConnector>,
    weights: [u32; 3],
    measuring: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    logins: AtomicU64,
    /// Clients done with their warm-up commands.
    warmed: AtomicU64,
}

async fn connect(ctx: &Ctx) -> Result<Conn> {
    let tcp = TcpStream::connect(ctx.args.target).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match &ctx.connector {
        Some(c) => Box::new(
            c.connect(ServerName::try_from(ctx.args.server_name.clone())?, tcp)
                .await?,
        ),
        None => Box::new(tcp),
    };
    let mut conn = Framed::new(io, EppCodec::default());
    let greeting = next(&mut conn).await?;
    if !matches!(epp::sniff(&greeting), Ok(Message::Greeting(_))) {
        bail!("first frame is not a greeting");
    }
    let login = format!(
        "<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command><login><clID>{}</clID><pw>{}</pw>\
         <options><version>1.0</version><lang>en</lang></options><svcs>\
         <objURI>urn:ietf:params:xml:ns:domain-1.0</objURI></svcs></login><clTRID>load-login</clTRID></command></epp>",
        ctx.args.clid, ctx.args.password
    );
    let code = exchange(&mut conn, Bytes::from(login)).await?;
    if code != 1000 {
        bail!("login answered {code}");
    }
    ctx.logins.fetch_add(1, Ordering::Relaxed);
    Ok(conn)
}

async fn next(conn: &mut Conn) -> Result<Bytes> {
    match conn.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(e.into()),
        None => bail!("connection closed"),
    }
}

async fn exchange(conn: &mut Conn, frame: Bytes) -> Result<u16> {
    conn.send(frame).await?;
    let answer = next(conn).await?;
    match epp::sniff(&answer) {
        Ok(Message::Response(r)) => Ok(r.code),
        other => bail!("not a response: {other:?}"),
    }
}

fn command(ctx: &Ctx, client: usize, n: u64) -> Bytes {
    let [c, i, _] = ctx.weights;
    let total: u32 = ctx.weights.iter().sum();
    let pick = (n.wrapping_mul(2654435761) % u64::from(total.max(1))) as u32;
    let verb = if pick < c {
        "check"
    } else if pick < c + i {
        "info"
    } else {
        "create"
    };
    Bytes::from(format!(
        "<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command><{verb}><domain:{verb} \
         xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"><domain:name>l{client}-{n}.bench</domain:name>\
         </domain:{verb}></{verb}><clTRID>L{client}-{n}</clTRID></command></epp>"
    ))
}

#[derive(Default)]
struct ClientResult {
    hist: Option<Histogram<u64>>,
    errors: u64,
}

async fn run_client(ctx: Arc<Ctx>, id: usize) -> ClientResult {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    let mut conn = None;
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let result: Result<()> = async {
            if ctx.args.mode == Mode::Fresh || conn.is_none() {
                conn = Some(connect(&ctx).await?);
            }
            let c = conn.as_mut().expect("connected above");
            exchange(c, command(&ctx, id, n)).await?;
            if ctx.args.mode == Mode::Fresh {
                let logout = "<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command><logout/><clTRID>load-out</clTRID></command></epp>";
                exchange(c, Bytes::from_static(logout.as_bytes())).await?;
                let _ = c.close().await;
                conn = None;
            }
            Ok(())
        }
        .await;
        if n == ctx.args.warmup.max(1) {
            ctx.warmed.fetch_add(1, Ordering::Relaxed);
        }
        if !ctx.measuring.load(Ordering::Relaxed) {
            if result.is_err() {
                conn = None;
            }
            continue;
        }
        match result {
            Ok(()) if !ctx.measuring.load(Ordering::Relaxed) => {}
            Ok(()) => {
                let us = started.elapsed().as_micros().max(1) as u64;
                let _ = hist.record(us);
                let total = ctx.sent.fetch_add(1, Ordering::Relaxed) + 1;
                if ctx.args.commands.is_some_and(|max| total >= max) {
                    ctx.stop.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("client {id}: {e:#}");
                }
                conn = None;
            }
        }
    }
    ClientResult {
        hist: Some(hist),
        errors,
    }
}

/// (CPU seconds, RSS KiB, peak RSS KiB) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the comm).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    // USER_HZ is 100 on Linux.
    Some((ticks / 100.0, kib("VmRSS:")?, kib("VmHWM:")?))
}

async fn upstream_logins(admin: SocketAddr) -> Option<f64> {
    let (_, body) = eppmux::admin::get(admin, "/metrics", Duration::from_secs(3))
        .await
        .ok()?;
    Some(
        body.lines()
            .filter(|l| {
                l.starts_with("eppmux_upstream_logins_total{") && l.contains("result=\"1000\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// What one run measured.
struct Outcome {
    hist: Histogram<u64>,
    errors: u64,
    elapsed: Duration,
    cpu_before: Option<(f64, u64, u64)>,
    cpu_after: Option<(f64, u64, u64)>,
    idle_usage: Option<(f64, u64, u64)>,
    idle_served: usize,
    upstream_logins: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let ctx = context(Args::parse())?;
    // Idle clients first: they log in and then hold their connection.
    let mut idle = Vec::with_capacity(ctx.args.idle_clients);
    for _ in 0..ctx.args.idle_clients {
        idle.push(connect(&ctx).await.context("idle client")?);
    }
    let idle_usage = ctx.args.pid.and_then(proc_usage);
    let logins_before = match ctx.args.admin {
        Some(a) => upstream_logins(a).await,
        None => None,
    };
    let mut outcome = measure(&ctx).await?;
    outcome.idle_usage = idle_usage;
    let logins_after = match ctx.args.admin {
        Some(a) => upstream_logins(a).await,
        None => None,
    };
    outcome.upstream_logins = match (logins_before, logins_after) {
        (Some(b), Some(e)) => Some(e - b),
        _ => None,
    };
    // Every idle client must still be served.
    for (i, conn) in idle.iter_mut().enumerate() {
        if exchange(conn, command(&ctx, 1_000_000 + i, 0))
            .await
            .is_ok()
        {
            outcome.idle_served += 1;
        }
    }
    report(&ctx, &outcome);
    if outcome.errors > 0 && outcome.hist.is_empty() {
        bail!("no command succeeded");
    }
    Ok(())
}

/// The shared state of a run, from the command line.
fn context(args: Args) -> Result<Arc<Ctx>> {
    let weights: Vec<u32> = args
        .mix
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()
        .context("--mix")?;
    let weights: [u32; 3] = weights
        .try_into()
        .map_err(|_| anyhow::anyhow!("--mix takes three weights: check,info,create"))?;
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
    Ok(Arc::new(Ctx {
        args,
        connector,
        weights,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        logins: AtomicU64::new(0),
        warmed: AtomicU64::new(0),
    }))
}

/// Runs the clients, measures a window of steady state, and gathers their latencies.
async fn measure(ctx: &Arc<Ctx>) -> Result<Outcome> {
    let tasks: Vec<_> = (0..ctx.args.clients)
        .map(|id| tokio::spawn(run_client(ctx.clone(), id)))
        .collect();
    // Measuring starts once every client has done its warm-up commands (connections, TLS
    // sessions and upstream sessions all established), so the window holds steady state only.
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while ctx.warmed.load(Ordering::Relaxed) < ctx.args.clients as u64
        && Instant::now() < warm_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_before = ctx.args.pid.and_then(proc_usage);
    let started = Instant::now();
    ctx.measuring.store(true, Ordering::Relaxed);
    let deadline = started + ctx.args.duration;
    while Instant::now() < deadline && !ctx.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands completing after this moment are not counted: those in flight at the start of
    // the window were, so in steady state the two edges cancel out.
    ctx.measuring.store(false, Ordering::Relaxed);
    ctx.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = ctx.args.pid.and_then(proc_usage);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let r = t.await?;
        errors += r.errors;
        if let Some(h) = r.hist {
            hist.add(h)?;
        }
    }
    Ok(Outcome {
        hist,
        errors,
        elapsed,
        cpu_before,
        cpu_after,
        idle_usage: None,
        idle_served: 0,
        upstream_logins: None,
    })
}

/// One line for people, one JSON line for scripts.
fn report(ctx: &Ctx, o: &Outcome) {
    let a = &ctx.args;
    let hist = &o.hist;
    let count = hist.len();
    let throughput = count as f64 / o.elapsed.as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p);
    let cpu_per_cmd_us = match (o.cpu_before, o.cpu_after) {
        (Some((b, _, _)), Some((e, _, _))) if count > 0 => Some((e - b) * 1e6 / count as f64),
        _ => None,
    };
    let rss = o.cpu_after.map(|(_, rss, hwm)| (rss, hwm));
    println!(
        "{:<22} {:>7} {:>6} {:>10.1} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}",
        a.scenario,
        a.clients,
        count,
        throughput,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        hist.max(),
        o.errors
    );
    let json = serde_json::json!({
        "scenario": a.scenario,
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "tls": a.tls,
        "clients": a.clients,
        "idle_clients": a.idle_clients,
        "idle_clients_served": o.idle_served,
        "commands": count,
        "errors": o.errors,
        "seconds": o.elapsed.as_secs_f64(),
        "throughput": throughput,
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": hist.max(),
        "client_logins": ctx.logins.load(Ordering::Relaxed),
        "upstream_logins": o.upstream_logins,
        "proxy_cpu_us_per_command": cpu_per_cmd_us,
        "proxy_rss_kib": rss.map(|r| r.0),
        "proxy_peak_rss_kib": rss.map(|r| r.1),
        "proxy_rss_kib_with_idle_clients": o.idle_usage.map(|u| u.1),
    });
    eprintln!("JSON {json}");
}
