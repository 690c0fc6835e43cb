//! What a run reports beyond latencies: the counters at the edges of the measured part (logins
//! at the registry and at eppmux, 2502s, recycles), eppmux's own counts from its admin endpoint,
//! the CPU time and memory of a process under test; one line for people, one JSON line for
//! scripts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::logins::Counters;

/// What one run measured.
pub struct Outcome {
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub elapsed: Duration,
    /// Counters at the start and the end of the measured part.
    pub before: Sample,
    pub after: Sample,
    /// Each burst's completion time (burst workload only).
    pub bursts: Vec<Duration>,
}

/// The counters at one moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    pub registry_logins: u64,
    pub local_logins: u64,
    pub refused_2502: u64,
    pub recycles: u64,
    pub borrow_timeouts: u64,
    /// eppmux's upstream logins answered 1000, and 2502 (from its /metrics).
    pub upstream_logins: Option<f64>,
    pub upstream_2502: Option<f64>,
    /// (CPU seconds, RSS KiB, peak RSS KiB) of the process under test.
    pub usage: Option<(f64, u64, u64)>,
}

/// Takes samples.
pub struct Sampler {
    pub counters: Arc<Counters>,
    pub admin: Option<SocketAddr>,
    pub pid: Option<u32>,
}

impl Sampler {
    pub async fn sample(&self) -> Sample {
        let c = &self.counters;
        let (upstream_logins, upstream_2502) = match self.admin {
            Some(a) => upstream_logins(a).await,
            None => (None, None),
        };
        Sample {
            registry_logins: c.registry_logins.load(Ordering::Relaxed),
            local_logins: c.local_logins.load(Ordering::Relaxed),
            refused_2502: c.refused_2502.load(Ordering::Relaxed),
            recycles: c.recycles.load(Ordering::Relaxed),
            borrow_timeouts: c.borrow_timeouts.load(Ordering::Relaxed),
            upstream_logins,
            upstream_2502,
            usage: self.pid.and_then(proc_usage),
        }
    }
}

/// (CPU seconds, RSS KiB, peak RSS KiB) of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64, u64)> {
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

/// eppmux's upstream logins by result: (answered 1000, answered 2502).
async fn upstream_logins(admin: SocketAddr) -> (Option<f64>, Option<f64>) {
    let Ok((_, body)) = eppmux::admin::get(admin, "/metrics", Duration::from_secs(3)).await else {
        return (None, None);
    };
    let sum = |code: &str| -> f64 {
        let label = format!("result=\"{code}\"");
        body.lines()
            .filter(|l| l.starts_with("eppmux_upstream_logins_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (Some(sum("1000")), Some(sum("2502")))
}

/// What the report names the run by.
pub struct Labels<'a> {
    pub scenario: &'a str,
    pub arch: &'a str,
    pub load: &'a str,
    pub workers: usize,
    pub pool: usize,
    pub clients: usize,
    pub idle_clients: usize,
    pub idle_served: usize,
    pub idle_usage: Option<(f64, u64, u64)>,
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

/// One line for people (stdout), one JSON line for scripts (stderr, prefixed `JSON `).
pub fn report(l: &Labels, o: &Outcome) {
    let hist = &o.hist;
    let count = hist.len();
    let throughput = count as f64 / o.elapsed.as_secs_f64().max(1e-9);
    let q = |p: f64| hist.value_at_quantile(p);
    let (b, a) = (&o.before, &o.after);
    let cpu_per_cmd_us = match (b.usage, a.usage) {
        (Some((cb, _, _)), Some((ca, _, _))) if count > 0 => Some((ca - cb) * 1e6 / count as f64),
        _ => None,
    };
    let registry_logins = (a.registry_logins - b.registry_logins) as f64
        + delta(b.upstream_logins, a.upstream_logins).unwrap_or(0.0);
    let refused = (a.refused_2502 - b.refused_2502) as f64
        + delta(b.upstream_2502, a.upstream_2502).unwrap_or(0.0);
    let mut bursts: Vec<u64> = o.bursts.iter().map(|d| d.as_micros() as u64).collect();
    bursts.sort_unstable();
    println!(
        "{:<24} {:>7} {:>7} {:>9.1} {:>9} {:>9} {:>9} {:>10} {:>7} {:>6} {:>6}",
        l.scenario,
        l.clients,
        count,
        throughput,
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max(),
        registry_logins,
        refused,
        o.errors
    );
    let json = serde_json::json!({
        "scenario": l.scenario,
        "arch": l.arch,
        "load": l.load,
        "workers": l.workers,
        "pool": l.pool,
        "clients": l.clients,
        "idle_clients": l.idle_clients,
        "idle_clients_served": l.idle_served,
        "commands": count,
        "errors": o.errors,
        "seconds": o.elapsed.as_secs_f64(),
        "throughput": throughput,
        "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": hist.max(),
        "registry_logins": registry_logins,
        "refused_2502": refused,
        "local_logins": a.local_logins - b.local_logins,
        "recycles": a.recycles - b.recycles,
        "borrow_timeouts": a.borrow_timeouts - b.borrow_timeouts,
        "upstream_logins": delta(b.upstream_logins, a.upstream_logins),
        "burst_completion_us": bursts,
        "proxy_cpu_us_per_command": cpu_per_cmd_us,
        "proxy_rss_kib": a.usage.map(|u| u.1),
        "proxy_peak_rss_kib": a.usage.map(|u| u.2),
        "proxy_rss_kib_with_idle_clients": l.idle_usage.map(|u| u.1),
    });
    eprintln!("JSON {json}");
}
