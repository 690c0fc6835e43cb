//! The command line: `eppmux [run]` with the options of [`crate::config::options`], and the other
//! subcommands (`check`, `demo`, `mock-registry`, `healthcheck`, `ca-bundle`).

// The doc comments here are `--help` text first: they name TOML tables as `[[account]]` and
// EPP elements as `<hello>`, which rustdoc would read as links and HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, Parser, Subcommand};

use crate::config::{parse_duration, ConfigError, Explicit, LogFormat, Options};

#[derive(Debug, Parser)]
#[command(
    name = "eppmux",
    version,
    about = "Pools EPP registry sessions for local clients"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default when no command is given).
    Run(Box<RunArgs>),
    /// Start the embedded mock registry and eppmux in front of it, with certs-example.
    Demo(DemoArgs),
    /// Run only the mock EPP registry (for tests, benchmarks and docker-compose).
    MockRegistry(MockArgs),
    /// Connect to each registry once with this configuration: greeting, login, hello, logout, timings.
    Check(Box<CheckArgs>),
    /// Exit 0 when the admin endpoint says eppmux is ready (for container healthchecks).
    Healthcheck(HealthArgs),
    /// Write one PEM file with the system's root CAs and eppmux's CA, for clients that take their
    /// trust from one file (Python's SSL_CERT_FILE): they then trust eppmux and everything else.
    CaBundle(CaBundleArgs),
}

/// The proxy's options: a configuration file and every option as a flag.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of these options, [[account]] tables, or [[registry]] tables.
    #[arg(long, env = "EPPMUX_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: Options,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl RunArgs {
    /// The options the command line set, flag or variable, with where each came from.
    pub fn explicit(&self, matches: &ArgMatches) -> Result<Explicit, ConfigError> {
        Explicit::from_matches(&self.options, matches)
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct CheckArgs {
    /// Check only the registry of this name (of the [[registry]] tables); default: every one.
    #[arg(long, value_name = "NAME")]
    pub registry: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CaBundleArgs {
    /// The CA certificate that signed eppmux's listener certificate (repeatable).
    #[arg(long = "ca", value_name = "FILE", required = true)]
    pub ca: Vec<PathBuf>,
    /// Where to write the bundle; replaced atomically, so readers never see half a file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Take the system roots from this PEM file instead of the platform's store. By default the
    /// platform's store is read with SSL_CERT_FILE and SSL_CERT_DIR ignored, so that a bundle
    /// is never built from a previous bundle.
    #[arg(long, value_name = "FILE")]
    pub system_roots: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The admin endpoint of the eppmux to ask.
    #[arg(long, env = "EPPMUX_ADMIN", default_value = "127.0.0.1:9700")]
    pub admin: SocketAddr,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where eppmux's TLS listener binds.
    #[arg(long, env = "EPPMUX_LISTEN_TLS", default_value = "127.0.0.1:1700")]
    pub listen_tls: SocketAddr,
    /// Where eppmux's plain-TCP listener binds.
    #[arg(long, env = "EPPMUX_LISTEN", default_value = "127.0.0.1:1701")]
    pub listen: SocketAddr,
    /// Where the mock registry binds.
    #[arg(long, default_value = "127.0.0.1:1799")]
    pub registry: SocketAddr,
    /// Where eppmux's admin endpoint binds.
    #[arg(long, env = "EPPMUX_ADMIN", default_value = "127.0.0.1:1790")]
    pub admin: SocketAddr,
    /// Directory with the example certificates.
    #[arg(long, default_value = "certs-example")]
    pub certs: PathBuf,
    /// Simulated processing time of each registry command.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    #[arg(long, env = "EPPMUX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct MockArgs {
    /// Address the mock registry listens on (TLS, client certificate required).
    #[arg(long, env = "EPPMUX_MOCK_LISTEN", default_value = "127.0.0.1:1799")]
    pub listen: SocketAddr,
    #[arg(
        long,
        env = "EPPMUX_MOCK_CERT",
        default_value = "certs-example/server.pem"
    )]
    pub cert: PathBuf,
    #[arg(
        long,
        env = "EPPMUX_MOCK_KEY",
        default_value = "certs-example/server-key.pem"
    )]
    pub key: PathBuf,
    /// CA that must have signed the client certificates of registry sessions.
    #[arg(
        long,
        env = "EPPMUX_MOCK_CLIENT_CA",
        default_value = "certs-example/ca.pem"
    )]
    pub client_ca: PathBuf,
    /// Accounts as CLID:PASSWORD (repeatable).
    #[arg(
        long = "account",
        env = "EPPMUX_MOCK_ACCOUNTS",
        value_delimiter = ',',
        default_value = "registrar1:s3cret-Pw"
    )]
    pub accounts: Vec<String>,
    /// Simulated processing time of each command (serial per session).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Simulated network round trip: half on every frame each way, two before the greeting.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub rtt: Duration,
    /// Time the registry spends checking each login (passwords, audit rows), on top of the
    /// processing time.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub login_latency: Duration,
    /// Sessions allowed per clID; a login beyond it gets 2502 and a close.
    #[arg(long, default_value_t = 100)]
    pub session_cap: usize,
    /// Idle time after which the registry closes a session.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// The registry's name in its greeting (svID).
    #[arg(long, default_value = "eppmux mock registry")]
    pub sv_id: String,
    #[arg(long, env = "EPPMUX_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}
