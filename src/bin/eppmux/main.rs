//! The `eppmux` binary: parses the command line and runs a subcommand: the proxy (`run.rs`),
//! `check` (`check.rs`), `demo` and `mock-registry` (`demo.rs`), `healthcheck`, `ca-bundle`.

#![forbid(unsafe_code)]

mod check;
mod demo;
mod run;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use eppmux::audit::AuditFile;
use eppmux::cli::{CaBundleArgs, Cli, Command, HealthArgs, RunArgs};
use eppmux::config::{Config, EnvSecrets, Explicit, LogFormat};

fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some(Command::CaBundle(args)) = &cli.command {
        // Before the runtime starts any thread: ca_bundle changes this process's environment.
        return ca_bundle(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sub = |name: &str| matches.subcommand_matches(name).unwrap_or(&matches);
    match cli.command {
        None => runtime.block_on(run::run(Invocation::new(&cli.run, &matches)?)),
        Some(Command::Run(args)) => runtime.block_on(run::run(Invocation::new(&args, sub("run"))?)),
        Some(Command::Check(args)) => {
            let invocation = Invocation::new(&args.run, sub("check"))?;
            runtime.block_on(check::check(invocation, args.registry.as_deref()))
        }
        Some(Command::Demo(args)) => runtime.block_on(demo::demo(args)),
        Some(Command::MockRegistry(args)) => runtime.block_on(demo::mock(args)),
        Some(Command::Healthcheck(args)) => runtime.block_on(healthcheck(args)),
        Some(Command::CaBundle(_)) => unreachable!("handled before the runtime starts"),
    }
}

/// What the command line asked for: its explicit options, the file, and whether only to print.
pub struct Invocation {
    explicit: Explicit,
    file: Option<PathBuf>,
    print_config: bool,
}

impl Invocation {
    fn new(args: &RunArgs, matches: &ArgMatches) -> Result<Invocation> {
        Ok(Invocation {
            explicit: args.explicit(matches).context("invalid configuration")?,
            file: args.config.clone(),
            print_config: args.print_config,
        })
    }

    /// Reads the file and the environment's secrets (again, on SIGHUP) and validates it all.
    pub fn load(&self) -> Result<Config> {
        Config::from_sources(
            &self.explicit,
            self.file.as_deref(),
            &EnvSecrets::from_env(),
        )
        .context("invalid configuration")
    }

    /// `--print-config`: the options in effect in the file's syntax, then where certificates
    /// and keys come from when not from files; secrets redacted.
    fn print(&self, cfg: &Config) -> Result<()> {
        let resolved = eppmux::config::resolve(&self.explicit, self.file.as_deref())
            .context("invalid configuration")?;
        print!("{}{}", resolved.to_redacted_toml(), cfg.sources_summary());
        Ok(())
    }
}

/// The log as set up at start, and what a SIGHUP may change in it.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    level: String,
    format: LogFormat,
    audit: AuditFile,
    audit_path: Option<PathBuf>,
}

/// Logs to stderr in `format`, filtered by `filter`; audit events also to `audit_log`.
pub fn init_logging(format: LogFormat, filter: &str, audit_log: Option<&Path>) -> Result<Logging> {
    let env_filter = EnvFilter::try_new(filter)
        .with_context(|| format!("log_level: `{filter}` is not a valid filter"))?;
    let (reloadable, handle) = reload::Layer::new(env_filter);
    let audit = AuditFile::open(audit_log).with_context(|| {
        format!(
            "audit_log: cannot open {}",
            audit_log
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        )
    })?;
    // Colour codes only for a person at a terminal, not in docker or journald logs.
    let main = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The audit file has the audit events only, whatever the log level; with no file open the
    // layer turns them down before they are formatted.
    let open = audit.clone();
    let audit_filter = Targets::new()
        .with_target(eppmux::audit::TARGET, Level::INFO)
        .and(filter_fn(move |_| open.is_open()));
    let audit_layer = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(audit.clone())
        .with_filter(audit_filter);
    tracing_subscriber::registry()
        .with(main.with_filter(reloadable))
        .with(audit_layer)
        .init();
    Ok(Logging {
        filter: handle,
        level: filter.to_string(),
        format,
        audit,
        audit_path: audit_log.map(Path::to_path_buf),
    })
}

impl Logging {
    /// SIGHUP, whatever else happens: the audit file is opened again at its path, so that
    /// logrotate's `postrotate` signal moves writing to the new file.
    pub fn reopen_audit(&self) {
        if let Err(e) = self.audit.reopen(self.audit_path.as_deref()) {
            tracing::warn!(error = %e, "SIGHUP: cannot reopen the audit log; writing on to the old file");
        }
    }

    /// A reload that went through: the new log level and audit file. The format needs a restart.
    pub fn apply(&mut self, cfg: &Config) {
        if cfg.log_level != self.level {
            let applied = EnvFilter::try_new(&cfg.log_level)
                .ok()
                .is_some_and(|f| self.filter.reload(f).is_ok());
            if applied {
                tracing::info!(log_level = %cfg.log_level, "SIGHUP: log level changed");
                self.level = cfg.log_level.clone();
            } else {
                tracing::warn!(log_level = %cfg.log_level, "SIGHUP: log level not applied");
            }
        }
        if cfg.audit_log != self.audit_path {
            match self.audit.reopen(cfg.audit_log.as_deref()) {
                Ok(()) => self.audit_path = cfg.audit_log.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: cannot open the new audit log; keeping the old one")
                }
            }
        }
        if cfg.log_format != self.format {
            tracing::warn!("SIGHUP: log_format changes take effect at the next restart");
        }
    }
}

/// `eppmux ca-bundle`: the system roots plus eppmux's CA in one file, for `SSL_CERT_FILE`.
fn ca_bundle(args: &CaBundleArgs) -> Result<()> {
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

/// `eppmux healthcheck`: 0 when /readyz answers 200.
async fn healthcheck(args: HealthArgs) -> Result<()> {
    let (status, body) = eppmux::admin::get(args.admin, "/readyz", args.timeout).await?;
    print!("{body}");
    if status != 200 {
        anyhow::bail!("not ready (HTTP {status})");
    }
    Ok(())
}
