//! `eppmux check`: one session with each configured registry and account, step by step, with
//! timings; exits non-zero with the reason when any fails.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use eppmux::config::{AccountConfig, LogFormat, RegistryConfig};
use eppmux::{UpstreamSession as Session, UpstreamTarget};

use crate::{init_logging, Invocation};

pub async fn check(mut invocation: Invocation, only: Option<&str>) -> Result<()> {
    init_logging(LogFormat::Text, "warn", None)?;
    // Listeners are irrelevant here; let a command line without them pass validation.
    let flat = &mut invocation.explicit.options.registry;
    if flat.listen.is_none() && flat.listen_tls.is_none() && invocation.file.is_none() {
        flat.listen = Some("127.0.0.1:0".parse()?);
    }
    let cfg = invocation.load()?;
    let registries: Vec<&RegistryConfig> = cfg
        .registries
        .iter()
        .filter(|r| only.is_none_or(|name| r.name.as_deref() == Some(name)))
        .collect();
    if registries.is_empty() {
        anyhow::bail!(
            "no registry named {:?} in the configuration",
            only.unwrap_or("")
        );
    }
    let mut failed = false;
    for r in registries {
        let target = UpstreamTarget::new(&r.upstream, cfg.limits.max_frame)
            .with_context(|| format!("TLS configuration for registry {}", r.label()))?;
        for account in &r.accounts {
            failed |= !check_account(r, &target, account).await;
        }
    }
    if failed {
        anyhow::bail!("check failed");
    }
    println!("OK");
    Ok(())
}

/// Opens, greets, logs in, says hello and logs out once; false when a step failed.
async fn check_account(
    r: &RegistryConfig,
    target: &UpstreamTarget,
    account: &AccountConfig,
) -> bool {
    let registry = r
        .name
        .as_ref()
        .map_or(String::new(), |n| format!("registry {n}: "));
    println!(
        "{registry}account {} at {} (verifying {}, {})",
        account.clid,
        r.upstream.addr,
        r.upstream.server_name,
        target.tls.stack()
    );
    let mut session = match Session::open(target, account, "eppmux-check-1", |_| {}).await {
        Ok(s) => s,
        Err(e) => {
            println!("  FAILED: {e}");
            return false;
        }
    };
    let g = &session.greeting;
    let t = session.timings;
    println!("  greeting: svID {:?}, svDate {}", g.sv_id, g.sv_date);
    println!("    objURIs: {}", g.obj_uris.join(" "));
    let ext = if g.ext_uris.is_empty() {
        "-".to_string()
    } else {
        g.ext_uris.join(" ")
    };
    println!("    extURIs: {ext}");
    println!("  connect   {:>9.3} ms", ms(t.connect));
    println!("  TLS       {:>9.3} ms", ms(t.tls));
    println!("  greeting  {:>9.3} ms", ms(t.greeting));
    println!("  login     {:>9.3} ms  (1000)", ms(t.login));
    let started = Instant::now();
    let ok = match session.keepalive(r.upstream.response_timeout).await {
        Ok(_) => {
            println!("  hello     {:>9.3} ms", ms(started.elapsed()));
            true
        }
        Err(e) => {
            println!("  hello FAILED: {e}");
            false
        }
    };
    let started = Instant::now();
    session
        .logout("eppmux-check-2", r.upstream.step_timeout)
        .await;
    println!("  logout    {:>9.3} ms", ms(started.elapsed()));
    ok
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
