//! `eppmux demo` (the mock registry and eppmux in front of it, with the example certificates) and
//! `eppmux mock-registry` (the mock registry alone, for docker-compose and benchmarks).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::info;

use eppmux::cli::{DemoArgs, MockArgs};
use eppmux::config::{Config, EnvSecrets, Options};
use eppmux::secret::Secret;
use eppmux_mock::{MockConfig, MockRegistry};

use crate::init_logging;
use crate::run::{serve, wait_for_signal};

/// Runs only the mock registry.
pub async fn mock(args: MockArgs) -> Result<()> {
    init_logging(args.log_format, "info", None)?;
    let tls = eppmux::tls::server_config(&args.cert, &args.key, Some(&args.client_ca))?;
    let mut accounts = HashMap::new();
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
        login_latency: args.login_latency,
        session_cap: args.session_cap,
        idle_timeout: args.idle_timeout,
        sv_id: args.sv_id,
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
    ("ca.pem", include_str!("../../../certs-example/ca.pem")),
    (
        "server.pem",
        include_str!("../../../certs-example/server.pem"),
    ),
    (
        "server-key.pem",
        include_str!("../../../certs-example/server-key.pem"),
    ),
    (
        "client.pem",
        include_str!("../../../certs-example/client.pem"),
    ),
    (
        "client-key.pem",
        include_str!("../../../certs-example/client-key.pem"),
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
pub async fn demo(args: DemoArgs) -> Result<()> {
    init_logging(args.log_format, "info", None)?;
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
    let mut o = Options::default();
    o.process.admin = Some(args.admin);
    o.process.log_format = Some(args.log_format);
    let r = &mut o.registry;
    r.listen = Some(args.listen);
    r.listen_tls = Some(args.listen_tls);
    r.tls_cert = Some(certs.join("server.pem"));
    r.tls_key = Some(certs.join("server-key.pem"));
    r.upstream = Some(registry.addr.to_string());
    r.upstream_server_name = Some("localhost".into());
    r.upstream_ca = Some(certs.join("ca.pem"));
    r.upstream_cert = Some(certs.join("client.pem"));
    r.upstream_key = Some(certs.join("client-key.pem"));
    r.clid = Some(clid.into());
    r.pool_min = Some(2);
    let env = EnvSecrets {
        password: Some(Secret::new(password)),
        ..EnvSecrets::default()
    };
    let cfg = Config::from_options(o, &env)?;
    print_banner(&args, &registry, &certs, clid, password);
    let res = serve(cfg, None).await;
    registry.shutdown().await;
    res
}

fn print_banner(
    args: &DemoArgs,
    registry: &MockRegistry,
    certs: &Path,
    clid: &str,
    password: &str,
) {
    let ca = certs.join("ca.pem");
    let tls_port = args.listen_tls.port();
    eprintln!(
        "\neppmux demo: mock registry on {reg}, eppmux TLS on {tls}, plain TCP on {plain}\n\
         account: clID {clid}, password {password}\n\n\
         See the greeting:\n  openssl s_client -connect localhost:{tls_port} -CAfile {ca} -quiet\n\
         Send example commands (login, check, logout):\n  scripts/epp-send.sh localhost:{tls_port} examples/login.xml examples/check.xml examples/logout.xml\n\
         From epplib (Python): SSL_CERT_FILE=<a bundle of the system roots and {ca}> (eppmux ca-bundle), host \"localhost\", port {tls_port}\n\
         Metrics and status: curl http://{admin}/metrics  (/readyz, /status)\n\
         Stop with Ctrl-C.\n",
        reg = registry.addr,
        admin = args.admin,
        tls = args.listen_tls,
        plain = args.listen,
        ca = ca.display(),
    );
}
