//! The `eppmux` binary: parses the command line and wires the library's pieces together.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use eppmux::config::{
    AccountConfig, Cli, Command, Config, DemoArgs, EnvSecrets, LogFormat, MockArgs, RunArgs,
    ServerTls, UpstreamConfig,
};
use eppmux::mock_registry::{MockConfig, MockRegistry};
use eppmux::proxy::Proxy;
use eppmux::secret::Secret;

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::CaBundle(args)) = &cli.command {
        // Before the runtime starts any thread: ca_bundle changes this process's environment.
        return ca_bundle(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        None => runtime.block_on(run(cli.run)),
        Some(Command::Run(args)) => runtime.block_on(run(*args)),
        Some(Command::Demo(args)) => runtime.block_on(demo(args)),
        Some(Command::MockRegistry(args)) => runtime.block_on(mock(args)),
        Some(Command::Check(args)) => runtime.block_on(check(*args)),
        Some(Command::Healthcheck(args)) => runtime.block_on(healthcheck(args)),
        Some(Command::CaBundle(_)) => unreachable!("handled before the runtime starts"),
    }
}

/// `eppmux ca-bundle`: the system roots plus eppmux's CA in one file, for `SSL_CERT_FILE`.
fn ca_bundle(args: &eppmux::config::CaBundleArgs) -> Result<()> {
    if args.system_roots.is_none() {
        // The platform store, not whatever these point at: in an app whose SSL_CERT_FILE is the
        // previous bundle (or eppmux's CA alone), the bundle must still start from the system.
        // Single-threaded here, so changing the environment is sound.
        for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
            if let Some(value) = std::env::var_os(var) {
                eprintln!(
                    "eppmux ca-bundle: ignoring {var}={} (reading the platform's store; --system-roots FILE to choose)",
                    value.to_string_lossy()
                );
                std::env::remove_var(var);
            }
        }
    }
    let summary = eppmux::tls::write_ca_bundle(&args.ca, args.system_roots.as_deref(), &args.out)?;
    eprintln!(
        "eppmux ca-bundle: wrote {} system root(s) and {} eppmux CA certificate(s) to {}",
        summary.system_roots,
        summary.added,
        args.out.display()
    );
    Ok(())
}

fn init_logging(format: LogFormat, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("log_level: `{filter}` is not a valid filter"))?;
    // Colour codes only for a person at a terminal, not in docker or journald logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    Ok(())
}

fn load(args: &RunArgs) -> Result<Config> {
    let args = RunArgs {
        env_secrets: EnvSecrets::from_env(),
        ..args.clone()
    };
    Config::from_sources(&args, std::env::var("EPPMUX_PASSWORD").ok())
        .context("invalid configuration")
}

async fn run(args: RunArgs) -> Result<()> {
    let cfg = load(&args)?;
    if args.print_config {
        print!("{}", cfg.to_redacted_toml());
        return Ok(());
    }
    init_logging(cfg.log_format, &cfg.log_level)?;
    serve(cfg, Some(args)).await
}

/// SIGHUP: read the configuration again and apply what can change without a restart (pool
/// sizes). An invalid configuration is refused and the running one kept.
fn reload(args: &RunArgs, running: &Config, proxy: &Proxy) {
    let count = |result| {
        proxy
            .metrics
            .reloads
            .get_or_create(&eppmux::metrics::OutcomeLabel { result })
            .inc();
    };
    let new = match load(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            count("failed");
            return warn!(
                error = format!("{e:#}"),
                "SIGHUP: configuration refused; keeping the running one"
            );
        }
    };
    count("ok");
    for acc in &new.accounts {
        match proxy.pools.iter().find(|p| p.clid() == acc.clid) {
            Some(pool) => {
                let stats = pool.stats();
                if (stats.pool_min, stats.pool_max) != (acc.pool_min, acc.pool_max) {
                    pool.resize(acc.pool_min, acc.pool_max);
                }
            }
            None => warn!(account = %acc.clid, "SIGHUP: new accounts need a restart"),
        }
    }
    let restart_needed = new.listen != running.listen
        || new.listen_tls != running.listen_tls
        || new.admin != running.admin
        || new.upstream.addr != running.upstream.addr
        || new.accounts.len() != running.accounts.len();
    if restart_needed {
        warn!("SIGHUP: listener, upstream or account changes take effect at the next restart");
    }
    info!("SIGHUP: configuration reloaded");
}

/// Runs the proxy until SIGINT/SIGTERM; a second signal exits at once. With `args`, SIGHUP
/// reloads the configuration they name.
async fn serve(cfg: Config, args: Option<RunArgs>) -> Result<()> {
    let shutdown = CancellationToken::new();
    let proxy = Proxy::start(&cfg, shutdown.clone()).await?;
    info!(
        plain = ?proxy.plain_addr,
        tls = ?proxy.tls_addr,
        upstream = %cfg.upstream.addr,
        accounts = cfg.accounts.len(),
        "eppmux started"
    );
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = wait_for_signal() => break,
                _ = hup.recv() => match &args {
                    Some(args) => reload(args, &cfg, &proxy),
                    None => info!("SIGHUP ignored: nothing to reload"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    wait_for_signal().await;
    let _ = &args;
    info!("shutting down: stopping listeners, logging out of upstream sessions");
    tokio::select! {
        complete = proxy.shutdown() => if complete {
            info!("shutdown complete");
        } else {
            warn!("exiting with work unfinished");
        },
        _ = wait_for_signal() => warn!("second signal: exiting at once"),
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs only the mock registry.
async fn mock(args: MockArgs) -> Result<()> {
    init_logging(args.log_format, "info")?;
    let tls = eppmux::tls::server_config(&args.cert, &args.key, Some(&args.client_ca))?;
    let mut accounts = std::collections::HashMap::new();
    for entry in &args.accounts {
        let (clid, pw) = entry
            .split_once(':')
            .with_context(|| format!("--account `{entry}` is not CLID:PASSWORD"))?;
        accounts.insert(clid.to_string(), pw.to_string());
    }
    let cfg = MockConfig {
        accounts,
        latency: args.latency,
        rtt: args.rtt,
        session_cap: args.session_cap,
        idle_timeout: args.idle_timeout,
        ..MockConfig::default()
    };
    let registry = MockRegistry::start(args.listen, tls, cfg).await?;
    info!(addr = %registry.addr, "mock registry ready (client certificate required)");
    wait_for_signal().await;
    registry.shutdown().await;
    Ok(())
}

/// The example certificates, compiled in so that `eppmux demo` also works outside a checkout.
const EMBEDDED_CERTS: &[(&str, &str)] = &[
    ("ca.pem", include_str!("../certs-example/ca.pem")),
    ("server.pem", include_str!("../certs-example/server.pem")),
    (
        "server-key.pem",
        include_str!("../certs-example/server-key.pem"),
    ),
    ("client.pem", include_str!("../certs-example/client.pem")),
    (
        "client-key.pem",
        include_str!("../certs-example/client-key.pem"),
    ),
];

fn demo_certs(dir: &Path) -> Result<PathBuf> {
    if dir.join("ca.pem").is_file() {
        return Ok(dir.to_path_buf());
    }
    let out = std::env::temp_dir().join(format!("eppmux-demo-certs-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    for (name, pem) in EMBEDDED_CERTS {
        std::fs::write(out.join(name), pem)?;
    }
    Ok(out)
}

/// The mock registry on loopback and eppmux in front of it, with the example certificates.
async fn demo(args: DemoArgs) -> Result<()> {
    init_logging(args.log_format, "info")?;
    let certs = demo_certs(&args.certs)?;
    let (clid, password) = ("registrar1", "s3cret-Pw");
    let registry_tls = eppmux::tls::server_config(
        &certs.join("server.pem"),
        &certs.join("server-key.pem"),
        Some(&certs.join("ca.pem")),
    )?;
    let mock_cfg = MockConfig {
        latency: args.latency,
        ..MockConfig::default()
    };
    let registry = MockRegistry::start(args.registry, registry_tls, mock_cfg)
        .await
        .with_context(|| format!("mock registry on {}", args.registry))?;

    let cfg = Config {
        admin: Some(args.admin),
        listen: Some(args.listen),
        listen_tls: Some(args.listen_tls),
        tls: Some(ServerTls {
            cert: certs.join("server.pem").into(),
            key: certs.join("server-key.pem").into(),
            client_ca: None,
            client_allow: Vec::new(),
        }),
        upstream: UpstreamConfig {
            addr: registry.addr.to_string(),
            server_name: "localhost".into(),
            ca: Some(certs.join("ca.pem")),
            cert: certs.join("client.pem").into(),
            key: certs.join("client-key.pem").into(),
            step_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
        },
        accounts: vec![AccountConfig {
            clid: clid.into(),
            password: Secret::new(password),
            pool_min: 2,
            pool_max: 4,
            obj_uris: None,
            ext_uris: None,
            lifecycle: Default::default(),
            max_logins_per_minute: None,
            max_commands_per_second: None,
            local: Default::default(),
        }],
        limits: Default::default(),
        greeting_wait: Duration::from_secs(3),
        queue_wait: Duration::from_secs(2),
        queue_max: 1000,
        queue_max_bytes: 64 << 20,
        admin_token: None,
        session_limit_hold: Duration::from_secs(300),
        shutdown_timeout: Duration::from_secs(10),
        log_format: args.log_format,
        log_level: "info".into(),
    };
    let ca = certs.join("ca.pem");
    let tls_port = args.listen_tls.port();
    eprintln!(
        "\neppmux demo: mock registry on {reg}, eppmux TLS on {tls}, plain TCP on {plain}\n\
         account: clID {clid}, password {password}\n\n\
         See the greeting:\n  openssl s_client -connect localhost:{tls_port} -CAfile {ca} -quiet\n\
         Send example commands (login, check, logout):\n  scripts/epp-send.sh localhost:{tls_port} examples/login.xml examples/check.xml examples/logout.xml\n\
         From epplib (Python): SSL_CERT_FILE={ca} and host \"localhost\", port {tls_port}\n\
         Metrics and status: curl http://{admin}/metrics  (/readyz, /status)\n\
         Stop with Ctrl-C.\n",
        reg = registry.addr,
        admin = args.admin,
        tls = args.listen_tls,
        plain = args.listen,
        ca = ca.display(),
    );
    let res = serve(cfg, None).await;
    registry.shutdown().await;
    res
}

/// `eppmux check`: one session with the configured registry and account, step by step.
async fn check(mut args: RunArgs) -> Result<()> {
    init_logging(LogFormat::Text, "warn")?;
    // Listeners are irrelevant here; let a configuration without them pass validation.
    if args.listen.is_none() && args.listen_tls.is_none() && args.config.is_none() {
        args.listen = Some("127.0.0.1:0".parse()?);
    }
    let cfg = load(&args)?;
    let target = eppmux::upstream::UpstreamTarget::new(&cfg.upstream, cfg.limits.max_frame)
        .context("TLS configuration for the registry")?;
    let mut failed = false;
    for account in &cfg.accounts {
        println!(
            "account {} at {} (verifying {})",
            account.clid, cfg.upstream.addr, cfg.upstream.server_name
        );
        let session =
            match eppmux::upstream::Session::open(&target, account, "eppmux-check-1", |_| {}).await
            {
                Ok(s) => s,
                Err(e) => {
                    println!("  FAILED: {e}");
                    failed = true;
                    continue;
                }
            };
        let g = &session.greeting;
        let t = session.timings;
        println!("  greeting: svID {:?}, svDate {}", g.sv_id, g.sv_date);
        println!("    objURIs: {}", g.obj_uris.join(" "));
        println!(
            "    extURIs: {}",
            if g.ext_uris.is_empty() {
                "-".to_string()
            } else {
                g.ext_uris.join(" ")
            }
        );
        println!("  connect   {:>9.3} ms", ms(t.connect));
        println!("  TLS       {:>9.3} ms", ms(t.tls));
        println!("  greeting  {:>9.3} ms", ms(t.greeting));
        println!("  login     {:>9.3} ms  (1000)", ms(t.login));
        let mut session = session;
        let started = std::time::Instant::now();
        match session.keepalive(cfg.upstream.response_timeout).await {
            Ok(_) => println!("  hello     {:>9.3} ms", ms(started.elapsed())),
            Err(e) => {
                println!("  hello FAILED: {e}");
                failed = true;
            }
        }
        let started = std::time::Instant::now();
        session
            .logout("eppmux-check-2", cfg.upstream.step_timeout)
            .await;
        println!("  logout    {:>9.3} ms", ms(started.elapsed()));
    }
    if failed {
        anyhow::bail!("check failed");
    }
    println!("OK");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `eppmux healthcheck`: 0 when /readyz answers 200.
async fn healthcheck(args: eppmux::config::HealthArgs) -> Result<()> {
    let (status, body) = eppmux::admin::get(args.admin, "/readyz", args.timeout).await?;
    print!("{body}");
    if status != 200 {
        anyhow::bail!("not ready (HTTP {status})");
    }
    Ok(())
}
